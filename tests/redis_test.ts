/**
 * The hub's engine seam: the core hub behaviours, run against both engines (memory and a real
 * Redis), then what only the Redis engine does (two hubs sharing streams, faults).
 */

import {
  assert,
  assertEquals,
  assertInstanceOf,
  assertNotEquals,
  assertRejects,
} from "@std/assert";
import {
  EngineUnavailableError,
  MessageStream,
  type MessageStreamOptions,
  type StreamEvent,
} from "../mod.ts";
import { JsonCodec } from "../codec.ts";
import { type JoinProbe, joinProbes } from "../engine.ts";
import { RedisEngine } from "../redis.ts";
import { serve } from "../server.ts";
import { connectRaw } from "./_raw_client.ts";
import { Recorder } from "./_recorder.ts";
import { hasRedis, RedisProcess } from "./_redis.ts";
import { deadline, Signal } from "./_wait.ts";

const view = (evs: StreamEvent[]) => evs.map((e) => [e.kind, e.message, e.seq]);

/** Hubs of one engine kind; for Redis, one server and a prefix of its own. */
class Env implements AsyncDisposable {
  readonly kind: "memory" | "redis";
  readonly redis: RedisProcess | undefined;
  readonly prefix = `t${crypto.randomUUID().slice(0, 8)}:`;
  #hubs: MessageStream[] = [];

  private constructor(kind: "memory" | "redis", redis: RedisProcess | undefined) {
    this.kind = kind;
    this.redis = redis;
  }

  static async open(kind: "memory" | "redis"): Promise<Env> {
    return new Env(kind, kind === "redis" ? await RedisProcess.start() : undefined);
  }

  /** A hub of this kind; for Redis, `probe` watches its engine's joins (see engine.ts). */
  hub(options: MessageStreamOptions = {}, probe?: JoinProbe): MessageStream {
    let engine: RedisEngine | undefined;
    if (this.redis) {
      engine = new RedisEngine({
        url: this.redis.url,
        prefix: this.prefix,
        ...(options.historyMessages !== undefined
          ? { historyMessages: options.historyMessages }
          : {}),
      });
      if (probe) joinProbes.set(engine, probe);
    }
    const hub = new MessageStream(engine ? { ...options, engine } : options);
    this.#hubs.push(hub);
    return hub;
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await Promise.all(this.#hubs.map((h) => h.close()));
    await this.redis?.[Symbol.asyncDispose]();
  }
}

const kinds = ["memory", "redis"] as const;

function test(name: string, fn: (env: Env) => Promise<void>): void {
  for (const kind of kinds) {
    Deno.test({
      name: `[${kind}] ${name}`,
      ignore: kind === "redis" && !hasRedis,
      async fn() {
        await using env = await Env.open(kind);
        await fn(env);
      },
    });
  }
}

test("MessageStream.listen() delivers the header first, then later puts in order", async (env) => {
  const hub = env.hub();
  await hub.put("job", "before");
  await hub.header("job", { state: "running" });
  const rec = new Recorder();
  const at = await hub.listen("job", rec);
  assertEquals(at.seq, 1);
  await hub.put("job", "a");
  await hub.put("job", "b");
  assertEquals(view(rec.events), [
    ["header", { state: "running" }, 1],
    ["put", "a", 2],
    ["put", "b", 3],
  ]);
  assert(rec.events.every((e) => e.epoch === at.epoch && e.stream === "job"));
});

test("MessageStream event frames are the wire frames", async (env) => {
  const hub = env.hub();
  await hub.header("job", "h");
  const rec = new Recorder();
  const at = await hub.listen("job", rec);
  await hub.put("job", { n: 1 });
  const frames = rec.events.map((e) => JSON.parse(new TextDecoder().decode(e.frame)));
  assertEquals(frames, [
    { action: "put", stream: "job", message: "h", header: true, seq: 0, epoch: at.epoch },
    { action: "put", stream: "job", message: { n: 1 }, seq: 1, epoch: at.epoch },
  ]);
});

Deno.test({
  name:
    "[redis] messages of every JSON shape and registered classes reach another node as sent, frames as its own",
  ignore: !hasRedis,
  fn: async () => {
    await using env = await Env.open("redis");
    class Progress {
      constructor(public done = 0) {}
    }
    const codec = () =>
      new JsonCodec().register(Progress, { name: "job.progress", version: "1.0" });
    const a = env.hub({ codec: codec() });
    const b = env.hub({ codec: codec() });
    const rec = new Recorder();
    await b.listen("job", rec);
    const messages: unknown[] = [
      { n: 1, s: "é\n\u2028", nested: { list: [1, null, true] } },
      [1, "two", { three: 3 }],
      [],
      {},
      "text",
      0,
      -1.5e-7,
      false,
      new Progress(3),
      { inner: new Progress(4) },
    ];
    for (const m of messages) await a.put("job", m);
    await rec.waitFor(messages.length);
    const own = new MessageStream({ codec: codec() });
    const expected = new Recorder();
    await own.listen("job", expected);
    for (const m of messages) await own.put("job", m);
    await own.close();
    // Values as a listener on the publishing hub reads them; frames byte for byte the same.
    assertEquals(rec.events.map((e) => e.message), expected.events.map((e) => e.message));
    assertInstanceOf(rec.events[8]?.message, Progress);
    assertInstanceOf((rec.events[9]?.message as { inner: unknown }).inner, Progress);
    const text = (e: StreamEvent) =>
      new TextDecoder().decode(e.frame).replace(/"epoch":"[^"]*"/, "");
    assertEquals(rec.events.map(text), expected.events.map(text));
  },
});

test("MessageStream.header() changes reach current listeners; null clears", async (env) => {
  const hub = env.hub();
  const rec = new Recorder();
  await hub.listen("job", rec);
  await hub.header("job", "one");
  await hub.put("job", 1);
  await hub.header("job", null);
  await hub.header("job", null); // clearing nothing sends nothing
  assertEquals(view(rec.events), [["header", "one", 0], ["put", 1, 1], ["header", null, 1]]);
  assertEquals(hub.info("job")?.hasHeader, false);
});

test("MessageStream.delete() ends listeners, and the name starts a new epoch", async (env) => {
  const hub = env.hub();
  await hub.header("job", "h");
  const rec = new Recorder();
  const at = await hub.listen("job", rec);
  await hub.put("job", 1);
  await hub.delete("job");
  assertEquals(view(rec.events), [["header", "h", 0], ["put", 1, 1], ["end", null, 1]]);
  assertEquals(hub.stats().listeners, 0);
  const again = await hub.listen("job", new Recorder());
  assertNotEquals(again.epoch, at.epoch);
  assertEquals(again.seq, 0);
});

test("MessageStream.hangup() and endqueue() stop delivery", async (env) => {
  const hub = env.hub();
  const a = new Recorder("a");
  const b = new Recorder("b");
  await hub.listen("x", a);
  await hub.listen("y", a);
  await hub.listen("x", b);
  hub.hangup("x", b);
  await hub.put("x", 1);
  hub.endqueue(a);
  await hub.put("x", 2);
  await hub.put("y", 3);
  assertEquals(view(a.events), [["put", 1, 1]]);
  assertEquals(b.events, []);
  assertEquals(hub.stats().listeners, 0);
});

test("MessageStream.put() numbers puts from 1 and keeps the seq when encoding fails", async (env) => {
  const hub = env.hub();
  assertEquals((await hub.put("a", 1)).seq, 1);
  assertEquals((await hub.put("b", 1)).seq, 1);
  await assertRejects(() => hub.put("a", 10n), TypeError);
  await assertRejects(() => hub.put("a", undefined), TypeError, "no message");
  assertEquals((await hub.put("a", 2)).seq, 2);
});

test("MessageStream.listen() with since replays what was missed, or resets", async (env) => {
  const hub = env.hub({ historyMessages: 3 });
  await hub.header("job", "h");
  const at = await hub.listen("job", { put() {} });
  for (let i = 1; i <= 2; i++) await hub.put("job", i);
  const covered = new Recorder();
  await hub.listen("job", covered, { since: at });
  await hub.put("job", 3);
  assertEquals(view(covered.events), [["header", "h", 0], ["put", 1, 1], ["put", 2, 2], [
    "put",
    3,
    3,
  ]]);
  const other = new Recorder();
  await hub.listen("job", other, { since: { epoch: "old", seq: 1 } });
  assertEquals(view(other.events), [["reset", { reason: "epoch_changed" }, 3], ["header", "h", 3]]);
  for (let i = 4; i <= 6; i++) await hub.put("job", i);
  const trimmed = new Recorder();
  await hub.listen("job", trimmed, { since: at });
  assertEquals(view(trimmed.events), [["reset", { reason: "history_trimmed" }, 6], [
    "header",
    "h",
    6,
  ]]);
});

test("MessageStream.stat() reads a stream's state without listening or creating it", async (env) => {
  const hub = env.hub();
  assertEquals(await hub.stat("job"), undefined);
  assertEquals(await hub.stat("job"), undefined, "asking did not create it");
  await hub.header("job", { state: "running" });
  const rec = new Recorder();
  await hub.listen("job", rec);
  const at = await hub.put("job", 1);
  assertEquals(await hub.stat("job"), {
    stream: "job",
    header: { state: "running" },
    seq: 1,
    epoch: at.epoch,
    listeners: 1,
  });
  hub.hangup("job", rec);
  await hub.delete("job");
  assertEquals(await hub.stat("job"), undefined, "a deleted stream");
  assertEquals(
    await hub.stat("job"),
    undefined,
    "asking about a deleted stream did not recreate it",
  );
  const again = await hub.put("job", 2);
  assertEquals(again.seq, 1, "the next put starts the stream anew");
  assertNotEquals(again.epoch, at.epoch);
  await assertRejects(() => hub.stat(""), TypeError, "must not be empty");
});

test("MessageStream drops a listener that throws; the others still get events", async (env) => {
  const hub = env.hub();
  const good = new Recorder();
  await hub.listen("a", {
    put: () => {
      throw new Error("broken");
    },
  }).catch(() => {});
  await hub.listen("a", good);
  await hub.put("a", 1);
  await hub.put("a", 2);
  assertEquals(good.events.map((e) => e.message), [1, 2]);
  assertEquals(hub.stats().listeners, 1);
});

// What only the Redis engine does.

function redisTest(name: string, fn: (env: Env) => Promise<void>): void {
  Deno.test({
    name,
    ignore: !hasRedis,
    async fn() {
      await using env = await Env.open("redis");
      await fn(env);
    },
  });
}

redisTest(
  "RedisEngine delivers puts from two hubs in one order to listeners on both",
  async (env) => {
    const a = env.hub();
    const b = env.hub();
    await a.header("job", "h");
    const onA = new Recorder("a");
    const onB = new Recorder("b");
    await a.listen("job", onA);
    await b.listen("job", onB);
    await Promise.all(
      Array.from({ length: 50 }, (_, i) => (i % 2 ? a : b).put("job", i)),
    );
    await onA.waitFor(51);
    await onB.waitFor(51);
    assertEquals(view(onA.events), view(onB.events));
    assertEquals(onA.events.map((e) => e.seq), [0, ...Array.from({ length: 50 }, (_, i) => i + 1)]);
  },
);

redisTest("RedisEngine keeps headers and history when a hub restarts", async (env) => {
  const first = env.hub();
  await first.header("job", "h");
  await first.put("job", 1);
  await first.close();
  const second = env.hub();
  const rec = new Recorder();
  const at = await second.listen("job", rec);
  assertEquals(view(rec.events), [["header", "h", 1]]);
  const resumed = new Recorder();
  await second.listen("job", resumed, { since: { epoch: at.epoch, seq: 0 } });
  assertEquals(view(resumed.events), [["header", "h", 0], ["put", 1, 1]]);
});

redisTest(
  "RedisEngine fails requests with EngineUnavailableError while Redis is down, then recovers",
  async (env) => {
    const redis = env.redis as RedisProcess;
    const hub = env.hub();
    const rec = new Recorder();
    await hub.listen("job", rec);
    await hub.put("job", 1);
    await redis.stop();
    const e = await assertRejects(() => hub.put("job", 2), EngineUnavailableError);
    assertInstanceOf(e, EngineUnavailableError);
    await assertRejects(() => hub.listen("other", new Recorder()), EngineUnavailableError);
    await redis.restart();
    // Redis came back empty: the listener is told (reset, new epoch), then gets new puts. The
    // reason says the state was lost, not that the stream was deleted (issue 12).
    const reset = await rec.waitForEvent((ev) => ev.kind === "reset");
    assertEquals(reset.find((ev) => ev.kind === "reset")?.message, { reason: "state_lost" });
    // The command connection may come back a moment after the subscription: retry as a
    // publisher would on engine_unavailable (bounded).
    for (let attempt = 0;; attempt++) {
      const ok = await hub.put("job", 3).then(() => true, (e) => {
        assertInstanceOf(e, EngineUnavailableError);
        return false;
      });
      if (ok) break;
      assert(attempt < 100, "Redis engine did not recover");
      await new Promise((r) => setTimeout(r, 50));
    }
    await rec.waitForEvent((ev) => ev.kind === "put" && ev.message === 3);
    assertEquals(view(rec.events).filter((e) => e[0] === "put").map((e) => e[1]), [1, 3]);
  },
);

redisTest("Server sends engine_unavailable to a publisher while Redis is down", async (env) => {
  const redis = env.redis as RedisProcess;
  await using server = serve({ port: 0, redis: redis.url, redisPrefix: env.prefix });
  await using raw = await connectRaw(server.addr.port);
  raw.send({ action: "put", stream: "job", message: 1, id: 1 });
  const ok = await raw.next();
  const epoch = (await server.hub.stat("job"))?.epoch;
  assertEquals(ok, { action: "ok", id: 1, stream: "job", seq: 1, epoch });
  await redis.stop();
  raw.send({ action: "put", stream: "job", message: 2, id: 2 });
  const error = await raw.next();
  assertEquals([error.action, error.code, error.id], ["error", "engine_unavailable", 2]);
});

redisTest(
  "RedisEngine: a join with since on a node that follows the stream, during another node's burst, loses nothing",
  async (env) => {
    // The window: B already follows "job" (a live listener), and a second listener joins on B
    // with a position. B's snapshot request publishes a join marker; A's burst is published
    // after it. The probe holds B's snapshot reply until the whole burst has reached B's
    // subscription: an engine that ignored the marker would deliver the burst to B's first
    // listener, then join the second from the older snapshot, and the second would miss it.
    const arrived = new Signal();
    let lastArrived = 0;
    let hold: (() => Promise<void>) | undefined;
    const b = env.hub({}, {
      arrived(stream, seq) {
        if (stream === "job") lastArrived = Math.max(lastArrived, seq);
        arrived.notify();
      },
      snapshotReplied: () => hold?.() ?? Promise.resolve(),
    });
    const a = env.hub();
    await a.header("job", "h");
    const first = new Recorder("first");
    const at = await b.listen("job", first);
    await a.put("job", 1);
    await first.waitForEvent((e) => e.seq === 1);
    const burst = 50;
    hold = async () => {
      hold = undefined;
      const puts = Array.from({ length: burst }, (_, i) => a.put("job", i + 2));
      const last = (await deadline(Promise.all(puts), "A's burst")).at(-1)?.seq;
      assertEquals(last, burst + 1);
      await arrived.until(() => lastArrived === last, "A's burst to reach B's subscription");
    };
    const resumed = new Recorder("resumed");
    const joined = await b.listen("job", resumed, { since: at });
    assertEquals(hold, undefined, "the probe held the snapshot");
    await first.waitForEvent((e) => e.seq === burst + 1);
    const puts = Array.from({ length: burst + 1 }, (_, i) => ["put", i + 1, i + 1]);
    assertEquals(view(first.events), [["header", "h", 0], ...puts]);
    assertEquals(view(resumed.events), [["header", "h", 0], ...puts], "the resumed listener");
    assertEquals(joined, { epoch: at.epoch, seq: 1 }, "joined where the snapshot was taken");
  },
);
