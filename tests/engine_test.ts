/**
 * The engine seam and `EngineCore` (engine.ts), the one class that joins and resyncs listeners
 * for any engine, driven by a scripted in-process engine: every race is placed by the test.
 */

import { assert, assertEquals, assertRejects } from "@std/assert";
import type { Codec } from "../codec.ts";
import type { Engine, EngineEvent, EngineSink, EngineSnapshot } from "../engine.ts";
import {
  LimitExceededError,
  MessageStream,
  type Position,
  type ResetReason,
  type StreamEvent,
} from "../mod.ts";
import { Recorder } from "./_recorder.ts";

const view = (evs: StreamEvent[]) => evs.map((e) => [e.kind, e.message, e.seq]);

interface Kept {
  epoch: string;
  seq: number;
  header: unknown;
  history: EngineEvent[];
  /** Resuming from below this seq is not covered. */
  trimmedTo: number;
}

/**
 * An engine in this process, as one node sees a shared back end: what it publishes reaches this
 * node's sink only for followed streams, and the test can hold snapshots, lose events and trim
 * history.
 */
class ScriptedEngine implements Engine {
  sink: EngineSink | undefined;
  readonly kept = new Map<string, Kept>();
  readonly followed = new Set<string>();
  /** Snapshot requests made. */
  syncs = 0;
  /** While set, snapshots wait for it (a join in flight). */
  gate: Promise<void> | undefined;
  /** While true, published events do not reach this node (a dropped subscription). */
  deaf = false;
  #epochs = 0;

  bind(sink: EngineSink, _codec: Codec): void {
    this.sink = sink;
  }

  #stream(stream: string): Kept {
    let k = this.kept.get(stream);
    if (!k) {
      k = { epoch: `e${++this.#epochs}`, seq: 0, header: undefined, history: [], trimmedTo: 0 };
      this.kept.set(stream, k);
    }
    return k;
  }

  #publish(stream: string, kind: "put" | "header" | "end", message: unknown, k: Kept): void {
    if (this.followed.has(stream) && !this.deaf) {
      this.sink?.event(stream, kind, message, k.seq, k.epoch);
    }
  }

  put(stream: string, message: unknown): Promise<Position> {
    const k = this.#stream(stream);
    k.seq++;
    k.history.push({ kind: "put", message, seq: k.seq });
    this.#publish(stream, "put", message, k);
    return Promise.resolve({ epoch: k.epoch, seq: k.seq });
  }

  header(stream: string, message: unknown): Promise<void> {
    const k = this.#stream(stream);
    k.header = message === null ? undefined : message;
    k.history.push({ kind: "header", message, seq: k.seq });
    this.#publish(stream, "header", message, k);
    return Promise.resolve();
  }

  delete(stream: string): Promise<void> {
    const k = this.kept.get(stream);
    if (k) {
      this.kept.delete(stream);
      this.#publish(stream, "end", null, k);
    }
    return Promise.resolve();
  }

  /** Forgets history up to and including `seq`. */
  trim(stream: string, seq: number): void {
    const k = this.#stream(stream);
    k.history = k.history.filter((e) => e.seq > seq);
    k.trimmedTo = seq + 1;
  }

  async sync(
    stream: string,
    since: Position | undefined,
    onSnapshot: (snapshot: EngineSnapshot) => void,
  ): Promise<void> {
    this.syncs++;
    this.followed.add(stream);
    await this.gate;
    const k = this.#stream(stream);
    let reset: ResetReason | undefined;
    let events: EngineEvent[] | undefined;
    if (since) {
      if (since.epoch !== k.epoch) reset = "epoch_changed";
      else if (since.seq > k.seq) reset = "ahead_of_stream";
      else if (since.seq < k.trimmedTo) reset = "history_trimmed";
      else {
        events = k.history.filter((e) =>
          e.seq > since.seq || (e.kind === "header" && e.seq === since.seq)
        );
      }
    }
    onSnapshot({ epoch: k.epoch, seq: k.seq, header: k.header, reset, events });
  }

  stat(stream: string): Promise<EngineSnapshot | undefined> {
    const k = this.kept.get(stream);
    return Promise.resolve(k && { epoch: k.epoch, seq: k.seq, header: k.header });
  }

  unfollow(stream: string): void {
    this.followed.delete(stream);
  }

  close(): Promise<void> {
    return Promise.resolve();
  }
}

function setup(): { engine: ScriptedEngine; hub: MessageStream } {
  const engine = new ScriptedEngine();
  return { engine, hub: new MessageStream({ engine }) };
}

Deno.test("EngineCore joins from the engine's snapshot, then a second listener from its in-step copy", async () => {
  const { engine, hub } = setup();
  await hub.header("job", "h");
  await hub.put("job", 1);
  const a = new Recorder("a");
  const at = await hub.listen("job", a);
  assertEquals(at, { epoch: "e1", seq: 1 });
  assertEquals(engine.syncs, 1);
  const b = new Recorder("b");
  assertEquals(await hub.listen("job", b), at);
  assertEquals(engine.syncs, 1, "the second join needed no snapshot");
  await hub.put("job", 2);
  assertEquals(view(a.events), [["header", "h", 1], ["put", 2, 2]]);
  assertEquals(view(b.events), view(a.events));
});

Deno.test("EngineCore ignores events that come before its join's snapshot, and delivers those after", async () => {
  const { engine, hub } = setup();
  await hub.header("job", "h");
  const gate = Promise.withResolvers<void>();
  engine.gate = gate.promise;
  const rec = new Recorder();
  const joining = hub.listen("job", rec);
  // Following, not yet in step: this put reaches the node before the snapshot is taken.
  await hub.put("job", 1);
  engine.gate = undefined;
  gate.resolve();
  assertEquals(await joining, { epoch: "e1", seq: 1 });
  await hub.put("job", 2);
  assertEquals(view(rec.events), [["header", "h", 1], ["put", 2, 2]]);
});

Deno.test("EngineCore resyncs every listener when an event arrives out of step: no gap, no duplicate", async () => {
  const { engine, hub } = setup();
  await hub.header("job", "h");
  const a = new Recorder("a");
  const b = new Recorder("b");
  await hub.listen("job", a);
  await hub.listen("job", b);
  await hub.put("job", 1);
  engine.deaf = true;
  await hub.put("job", 2); // lost on the way to this node
  engine.deaf = false;
  await hub.put("job", 3); // seq 3 after 1: out of step
  await a.waitForEvent((e) => e.seq === 3);
  await b.waitForEvent((e) => e.seq === 3);
  assertEquals(engine.syncs, 2, "one snapshot for both listeners");
  const expected = [["header", "h", 0], ["put", 1, 1], ["put", 2, 2], ["put", 3, 3]];
  assertEquals(view(a.events), expected);
  assertEquals(view(b.events), expected);
  await hub.put("job", 4);
  assertEquals(view(a.events).at(-1), ["put", 4, 4]);
  assertEquals(hub.stats().listeners, 2);
});

Deno.test("EngineCore tells listeners it cannot catch up after lost(): reset, then the header", async () => {
  const { engine, hub } = setup();
  await hub.header("job", "h");
  const rec = new Recorder();
  await hub.listen("job", rec);
  engine.deaf = true;
  for (let i = 1; i <= 3; i++) await hub.put("job", i);
  engine.trim("job", 2);
  engine.deaf = false;
  engine.sink?.lost();
  await rec.waitForEvent((e) => e.kind === "header" && e.seq === 3);
  assertEquals(view(rec.events), [
    ["header", "h", 0],
    ["reset", { reason: "history_trimmed" }, 3],
    ["header", "h", 3],
  ]);
  await hub.put("job", 4);
  assertEquals(view(rec.events).at(-1), ["put", 4, 4]);
});

Deno.test("EngineCore resumes a listener from since out of the engine's history, or resets it", async (t) => {
  const { hub } = setup();
  await hub.header("job", "h0");
  await hub.put("job", 1);
  await hub.header("job", "h1");
  await hub.put("job", 2);
  await t.step("covered", async () => {
    const rec = new Recorder();
    assertEquals(await hub.listen("job", rec, { since: { epoch: "e1", seq: 1 } }), {
      epoch: "e1",
      seq: 2,
    });
    assertEquals(view(rec.events), [["header", "h1", 1], ["put", 2, 2]]);
  });
  for (
    const [since, reason] of [
      [{ epoch: "other", seq: 1 }, "epoch_changed"],
      [{ epoch: "e1", seq: 9 }, "ahead_of_stream"],
    ] as const
  ) {
    await t.step(reason, async () => {
      const rec = new Recorder();
      await hub.listen("job", rec, { since });
      assertEquals(view(rec.events), [["reset", { reason }, 2], ["header", "h1", 2]]);
    });
  }
});

Deno.test("EngineCore delivers end on delete and forgets the stream; the last hangup unfollows", async () => {
  const { engine, hub } = setup();
  await hub.put("a", 1);
  const rec = new Recorder();
  await hub.listen("a", rec);
  await hub.listen("b", rec);
  await hub.delete("a");
  assertEquals(view(rec.events), [["end", null, 1]]);
  assertEquals(hub.info("a"), undefined);
  assertEquals([...engine.followed], ["b"]);
  hub.hangup("b", rec);
  assertEquals([...engine.followed], []);
  assertEquals(hub.stats(), { streams: 0, listeners: 0, historyBytes: 0, puts: 1, deliveries: 1 });
});

Deno.test("EngineCore.stat() reads the engine without following or creating; counts this node's listeners", async () => {
  const { engine, hub } = setup();
  assertEquals(await hub.stat("job"), undefined);
  assertEquals(engine.kept.size, 0, "not created");
  assertEquals(engine.followed.size, 0, "not followed");
  await hub.header("job", { s: 1 });
  await hub.put("job", 1);
  assertEquals(await hub.stat("job"), {
    stream: "job",
    header: { s: 1 },
    seq: 1,
    epoch: "e1",
    listeners: 0,
  });
  await hub.listen("job", new Recorder());
  assertEquals((await hub.stat("job"))?.listeners, 1);
  await assertRejects(() => hub.stat(""), TypeError);
});

Deno.test("EngineCore does not register a listener that throws during its catch-up", async () => {
  const { engine, hub } = setup();
  await hub.header("job", "h");
  const bad = {
    put() {
      throw new Error("broken");
    },
  };
  await hub.listen("job", bad);
  assertEquals(hub.stats().listeners, 0);
  assertEquals(engine.followed.size, 0, "the stream was forgotten");
  const good = new Recorder();
  await hub.listen("job", good);
  assert(good.events.length === 1);
});

Deno.test("EngineCore does not join a listener that hung up while its snapshot was on the way", async () => {
  const { engine, hub } = setup();
  await hub.header("job", "h");
  const gate = Promise.withResolvers<void>();
  engine.gate = gate.promise;
  const rec = new Recorder();
  const joining = hub.listen("job", rec);
  hub.hangup("job", rec);
  engine.gate = undefined;
  gate.resolve();
  await joining;
  await hub.put("job", 1);
  assertEquals(rec.events, []);
  assertEquals(hub.stats().listeners, 0);
  assertEquals(engine.followed.size, 0, "the stream was forgotten");
});

Deno.test("An engine hub limits header size and this node's listens (maxHeaderBytes, maxListens, maxStreams)", async () => {
  const engine = new ScriptedEngine();
  const hub = new MessageStream({ engine, maxHeaderBytes: 200, maxListens: 2, maxStreams: 3 });
  await hub.header("job", "small");
  const big = await assertRejects(() => hub.header("job", "x".repeat(200)), LimitExceededError);
  assertEquals(big.limit, "max_header_bytes");
  assertEquals((await hub.stat("job"))?.header, "small");
  const q = new Recorder("q");
  await hub.listen("a", q);
  await hub.listen("b", q);
  const listens = await assertRejects(() => hub.listen("c", q), LimitExceededError);
  assertEquals(listens.limit, "max_listens");
  await hub.listen("c", new Recorder("other"));
  const streams = await assertRejects(() => hub.listen("d", new Recorder("r")), LimitExceededError);
  assertEquals(streams.limit, "max_streams");
  await hub.close();
});
