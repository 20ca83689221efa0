/**
 * Resuming from a position: `seq`/`epoch`, replay out of bounded history, and `reset` when the
 * history cannot cover the position — on the hub and over TCP.
 *
 * @module
 */

import { assert, assertEquals, assertNotEquals } from "@std/assert";
import { syncOf } from "../core.ts";
import { MessageStream, type Position, type StreamEvent } from "../mod.ts";
import { serve } from "../server.ts";
import { connectRaw, type Frame } from "./_raw_client.ts";
import { Recorder } from "./_recorder.ts";

/** What a test compares: kind, message and seq of each event. */
function brief(events: StreamEvent[]): [string, unknown, number][] {
  return events.map((e) => [e.kind, e.message, e.seq]);
}

/** Listens with `since` and returns what the listener got synchronously (the catch-up). */
function resume(hub: MessageStream, stream: string, since: Position): Recorder {
  const rec = new Recorder();
  syncOf(hub)?.listenNow(stream, rec, since);
  return rec;
}

Deno.test("MessageStream.put() numbers puts from 1 and a header keeps the seq", async () => {
  const hub = new MessageStream();
  assertEquals((await hub.put("s", "a")).seq, 1);
  assertEquals((await hub.put("s", "b")).seq, 2);
  await hub.header("s", "h");
  assertEquals(hub.info("s")?.seq, 2);
  assertEquals((await hub.put("s", "c")).seq, 3);
  assertEquals((await hub.put("other", "x")).seq, 1, "seqs are per stream");
});

Deno.test("MessageStream epoch changes after delete and differs per hub instance", async () => {
  const hub = new MessageStream();
  await hub.header("s", "h");
  const first = hub.info("s")?.epoch;
  await hub.put("s", 1);
  assertEquals(hub.info("s")?.epoch, first, "puts keep the epoch");
  await hub.delete("s");
  assertEquals((await hub.put("s", 1)).seq, 1, "a recreated stream counts from 1 again");
  const second = hub.info("s")?.epoch;
  assert(first && second);
  assertNotEquals(second, first);

  const other = new MessageStream();
  await other.put("s", 1);
  assertNotEquals(other.info("s")?.epoch, second, "another hub has its own epochs");
});

Deno.test("MessageStream events carry the stream's seq and epoch", async () => {
  const hub = new MessageStream();
  const rec = new Recorder();
  await hub.header("s", "h0");
  const at = await hub.listen("s", rec);
  await hub.put("s", "a");
  await hub.header("s", "h1");
  await hub.put("s", "b");
  assertEquals(at.seq, 0);
  assertEquals(brief(rec.events), [["header", "h0", 0], ["put", "a", 1], ["header", "h1", 1], [
    "put",
    "b",
    2,
  ]]);
  for (const ev of rec.events) assertEquals(ev.epoch, at.epoch);
});

Deno.test("MessageStream.listen() with since replays exactly the missed events, then live ones", async () => {
  const hub = new MessageStream();
  await hub.header("s", "h0");
  await hub.put("s", 1);
  await hub.put("s", 2);
  const at = hub.info("s") as Position;
  await hub.put("s", 3);
  await hub.header("s", "h1");
  await hub.put("s", 4);

  const rec = new Recorder();
  const joined = await hub.listen("s", rec, { since: { epoch: at.epoch, seq: at.seq } });
  assertEquals(joined.seq, 4);
  await hub.put("s", 5);
  assertEquals(brief(rec.events), [
    ["put", 3, 3],
    ["header", "h1", 3],
    ["put", 4, 4],
    ["put", 5, 5],
  ]);
});

Deno.test("MessageStream.listen() with since at the current seq gets only live events", async () => {
  const hub = new MessageStream();
  await hub.put("s", 1);
  const at = hub.info("s") as Position;
  const rec = resume(hub, "s", at);
  assertEquals(rec.events, []);
  await hub.put("s", 2);
  assertEquals(brief(rec.events), [["put", 2, 2]]);
});

Deno.test("MessageStream.listen() with since replays a header change made at that seq", async () => {
  const hub = new MessageStream();
  await hub.put("s", 1);
  const at = hub.info("s") as Position;
  await hub.header("s", "h");
  const rec = resume(hub, "s", at);
  assertEquals(brief(rec.events), [["header", "h", 1]]);
});

Deno.test("MessageStream.listen() with an old epoch gets reset, then the header, then live puts", async () => {
  const hub = new MessageStream();
  await hub.header("s", "h0");
  await hub.put("s", 1);
  const old = hub.info("s") as Position;
  await hub.delete("s");
  await hub.header("s", "h1");
  await hub.put("s", 1);

  const rec = resume(hub, "s", old);
  await hub.put("s", 2);
  assertEquals(brief(rec.events), [
    ["reset", { reason: "epoch_changed" }, 1],
    ["header", "h1", 1],
    ["put", 2, 2],
  ]);
  const now = hub.info("s") as Position;
  for (const ev of rec.events) assertEquals(ev.epoch, now.epoch);
});

Deno.test("MessageStream.listen() with a position of another hub gets reset epoch_changed", async () => {
  const before = new MessageStream();
  await before.put("s", 1);
  const at = before.info("s") as Position;
  const after = new MessageStream(); // a restart: same name, new hub
  await after.put("s", 1);
  const rec = resume(after, "s", at);
  assertEquals(brief(rec.events), [["reset", { reason: "epoch_changed" }, 1]]);
});

Deno.test("MessageStream.listen() with since ahead of the stream gets reset ahead_of_stream", async () => {
  const hub = new MessageStream();
  await hub.header("s", "h");
  await hub.put("s", 1);
  const epoch = hub.info("s")?.epoch as string;
  const rec = resume(hub, "s", { epoch, seq: 7 });
  assertEquals(brief(rec.events), [["reset", { reason: "ahead_of_stream" }, 1], [
    "header",
    "h",
    1,
  ]]);
});

Deno.test("MessageStream history keeps historyMessages events per stream", async (t) => {
  const hub = new MessageStream({ historyMessages: 3 });
  await hub.header("s", "h");
  for (let i = 1; i <= 5; i++) await hub.put("s", i);
  const epoch = hub.info("s")?.epoch as string;
  assertEquals(hub.info("s")?.historyLength, 3);

  await t.step("a position whose next put is still held resumes", () => {
    const rec = resume(hub, "s", { epoch, seq: 2 });
    assertEquals(brief(rec.events), [["put", 3, 3], ["put", 4, 4], ["put", 5, 5]]);
  });
  await t.step("a position whose next put was trimmed gets reset history_trimmed", () => {
    const rec = resume(hub, "s", { epoch, seq: 1 });
    assertEquals(brief(rec.events), [["reset", { reason: "history_trimmed" }, 5], [
      "header",
      "h",
      5,
    ]]);
  });
  await t.step("a header change counts against the bound", async () => {
    await hub.header("s", "h2"); // history now: put 4, put 5, header at 5
    assertEquals(brief(resume(hub, "s", { epoch, seq: 3 }).events), [
      ["put", 4, 4],
      ["put", 5, 5],
      ["header", "h2", 5],
    ]);
    assertEquals(resume(hub, "s", { epoch, seq: 2 }).events[0]?.kind, "reset");
  });
});

Deno.test("MessageStream history keeps at most historyBytes per stream", async () => {
  const hub = new MessageStream({ historyBytes: 1000 });
  await hub.header("s", "h");
  const payload = "x".repeat(200);
  for (let i = 1; i <= 20; i++) await hub.put("s", { i, payload });
  const info = hub.info("s");
  assert(info);
  assert(info.historyBytes <= 1000, `history holds ${info.historyBytes} bytes`);
  assert(info.historyLength >= 3 && info.historyLength < 20, `${info.historyLength} events`);
  const oldestHeld = 20 - info.historyLength + 1;

  const covered = resume(hub, "s", { epoch: info.epoch, seq: oldestHeld - 1 });
  assertEquals(
    covered.events.map((e) => e.seq),
    Array.from({ length: info.historyLength }, (_, k) => oldestHeld + k),
  );
  const trimmed = resume(hub, "s", { epoch: info.epoch, seq: oldestHeld - 2 });
  assertEquals(brief(trimmed.events), [["reset", { reason: "history_trimmed" }, 20], [
    "header",
    "h",
    20,
  ]]);
});

Deno.test("MessageStream history drops an event larger than historyBytes and says so", async () => {
  const hub = new MessageStream({ historyBytes: 500 });
  await hub.header("s", "h"); // keeps the stream once its history is empty
  await hub.put("s", 1);
  const at = hub.info("s") as Position;
  await hub.put("s", "y".repeat(1000));
  assertEquals(hub.info("s")?.historyLength, 0);
  assertEquals(resume(hub, "s", at).events[0]?.message, { reason: "history_trimmed" });
  // The position right after the big put is still good.
  const after = { epoch: at.epoch, seq: 2 };
  await hub.put("s", 3);
  assertEquals(brief(resume(hub, "s", after).events), [["put", 3, 3]]);
});

Deno.test("MessageStream never holds more than maxHistoryBytes over all streams; oldest goes first", async () => {
  const maxHistoryBytes = 20_000;
  const hub = new MessageStream({ maxHistoryBytes, historyBytes: 1 << 20 });
  const payload = "z".repeat(100);
  const streams = 200;
  let peak = 0;
  for (let round = 0; round < 5; round++) {
    for (let s = 0; s < streams; s++) {
      await hub.header(`s${s}`, { s }); // keeps the stream (and its epoch) alive
      await hub.put(`s${s}`, { round, payload });
      const held = hub.stats().historyBytes;
      peak = Math.max(peak, held);
      assert(held <= maxHistoryBytes, `history holds ${held} bytes after s${s} round ${round}`);
    }
  }
  assert(peak > maxHistoryBytes / 2, `the bound was reached (peak ${peak})`);
  // The per-stream numbers add up to the total.
  const list = hub.list();
  assertEquals(list.reduce((n, s) => n + s.historyBytes, 0), hub.stats().historyBytes);
  // What is left is the newest: the last streams written keep history, the first lost theirs.
  const first = hub.info("s0");
  const last = hub.info(`s${streams - 1}`);
  assert(first && last);
  assertEquals(first.historyLength, 0);
  assertEquals(last.historyLength, 2, "header change and put of the last round");
  const trimmed = resume(hub, "s0", { epoch: first.epoch, seq: 4 });
  assertEquals(trimmed.events[0]?.message, { reason: "history_trimmed" });
  const covered = resume(hub, `s${streams - 1}`, { epoch: last.epoch, seq: 4 });
  assertEquals(brief(covered.events), [
    ["header", { s: streams - 1 }, 4],
    ["put", { round: 4, payload }, 5],
  ]);
});

Deno.test("MessageStream global history bound holds with deletes and per-stream trimming", async () => {
  const maxHistoryBytes = 50_000;
  const hub = new MessageStream({ maxHistoryBytes, historyMessages: 7, historyBytes: 3_000 });
  let n = 0;
  for (let i = 0; i < 20_000; i++) {
    const stream = `s${(i * 7919) % 500}`;
    if (i % 97 === 0) await hub.delete(stream);
    else await hub.put(stream, { i, pad: "p".repeat(i % 300) });
    const held = hub.stats().historyBytes;
    assert(held <= maxHistoryBytes, `history holds ${held} bytes after ${i}`);
    if (i % 1000 === 0) {
      const sum = hub.list().reduce((t, s) => t + s.historyBytes, 0);
      assertEquals(sum, held, `per-stream bytes add up after ${i}`);
      for (const s of hub.list()) {
        assert(s.historyLength <= 7 && s.historyBytes <= 3_000, JSON.stringify(s));
      }
      n++;
    }
  }
  assertEquals(n, 20);
});

// Over TCP: the same contract in frames.

/** Reads frames until the `ok` with `id`, returning the frames before it and the ok. */
async function untilOk(
  raw: Awaited<ReturnType<typeof connectRaw>>,
  id: number,
): Promise<{ before: Frame[]; ok: Frame }> {
  const frames = await raw.until((f) => f.id === id);
  const ok = frames.pop() as Frame;
  return { before: frames, ok };
}

function wire(frames: Frame[]): [unknown, unknown, unknown][] {
  return frames.map((f) => [f.action, f.message, f.seq]);
}

Deno.test("server listen with since replays the missed puts before its ok, then live ones", async () => {
  await using server = serve({ port: 0 });
  await using pub = await connectRaw(server.addr.port);
  await using sub = await connectRaw(server.addr.port);
  await pub.send({ action: "header", stream: "job", message: "h0" });
  for (let i = 1; i <= 4; i++) await pub.send({ action: "put", stream: "job", message: i });
  await pub.send({ action: "ping", id: "sync" });
  await pub.until((f) => f.id === "sync");
  const epoch = server.hub.info("job")?.epoch;

  await sub.send({ action: "listen", stream: "job", since: { epoch, seq: 2 }, id: 1 });
  const { before, ok } = await untilOk(sub, 1);
  assertEquals(wire(before), [["put", 3, 3], ["put", 4, 4]]);
  assertEquals(ok, { action: "ok", id: 1, stream: "job", seq: 4, epoch });
  await pub.send({ action: "put", stream: "job", message: 5 });
  const live = await sub.next();
  assertEquals([live.action, live.message, live.seq, live.epoch], ["put", 5, 5, epoch]);
});

Deno.test("server listen with a stale since gets reset with its reason, the header, then live puts", async (t) => {
  await using server = serve({ port: 0, historyMessages: 2 });
  await using pub = await connectRaw(server.addr.port);
  const sync = async (id: string) => {
    await pub.send({ action: "ping", id });
    await pub.until((f) => f.id === id);
  };
  await pub.send({ action: "header", stream: "job", message: "h0" });
  await pub.send({ action: "put", stream: "job", message: 1 });
  await sync("a");
  const old = server.hub.info("job") as Position;
  await pub.send({ action: "delete", stream: "job" });
  await pub.send({ action: "header", stream: "job", message: "h1" });
  for (let i = 1; i <= 5; i++) await pub.send({ action: "put", stream: "job", message: i });
  await sync("b");
  const epoch = server.hub.info("job")?.epoch as string;

  const cases: [string, Position, string][] = [
    ["epoch changed", old, "epoch_changed"],
    ["history trimmed", { epoch, seq: 1 }, "history_trimmed"],
    ["ahead of stream", { epoch, seq: 99 }, "ahead_of_stream"],
  ];
  for (const [name, since, reason] of cases) {
    await t.step(name, async () => {
      const seq = server.hub.info("job")?.seq;
      await using sub = await connectRaw(server.addr.port);
      await sub.send({ action: "listen", stream: "job", since, id: 7 });
      const { before, ok } = await untilOk(sub, 7);
      assertEquals(before, [
        { action: "reset", stream: "job", message: { reason }, seq, epoch },
        { action: "put", stream: "job", message: "h1", header: true, seq, epoch },
      ]);
      assertEquals(ok.epoch, epoch);
      await pub.send({ action: "put", stream: "job", message: "live" });
      const live = await sub.next();
      assertEquals([live.action, live.message], ["put", "live"]);
    });
  }
});

Deno.test("server listen with since from before a restart gets reset epoch_changed", async () => {
  let port: number;
  let old: Position;
  {
    await using first = serve({ port: 0 });
    port = first.addr.port;
    await first.hub.put("job", 1);
    old = first.hub.info("job") as Position;
  }
  await using second = serve({ port });
  await second.hub.header("job", "fresh");
  await using sub = await connectRaw(port);
  await sub.send({ action: "listen", stream: "job", since: old, id: 1 });
  const { before } = await untilOk(sub, 1);
  assertEquals(wire(before), [["reset", { reason: "epoch_changed" }, 0], ["put", "fresh", 0]]);
});
