/** The in-process hub, `MessageStream` (mod.ts and its memory core, core.ts). */

import {
  assert,
  assertEquals,
  assertNotEquals,
  assertRejects,
  assertStringIncludes,
} from "@std/assert";
import { syncOf } from "../core.ts";
import { MessageStream, type StreamEvent } from "../mod.ts";
import { Recorder } from "./_recorder.ts";

const view = (evs: StreamEvent[]) => evs.map((e) => [e.kind, e.message, e.seq]);

Deno.test("MessageStream.listen() delivers the header first, then later puts in order", async () => {
  const hub = new MessageStream();
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

Deno.test("MessageStream.listen() without a header delivers only puts", async () => {
  const hub = new MessageStream();
  const rec = new Recorder();
  await hub.listen("job", rec);
  await hub.put("job", 1);
  assertEquals(view(rec.events), [["put", 1, 1]]);
});

Deno.test("MessageStream event frames are the wire frames, join header marked header:true", async () => {
  const hub = new MessageStream();
  await hub.header("M2", ["H2", 25]);
  const rec = new Recorder();
  await hub.listen("M2", rec);
  await hub.put("M2", ["S3", 0]);
  await hub.header("M2", ["H2", 26]);
  await hub.delete("M2");
  const frames = rec.events.map((e) => JSON.parse(new TextDecoder().decode(e.frame)));
  const epoch = rec.events[0]?.epoch;
  assertEquals(frames, [
    { action: "put", stream: "M2", message: ["H2", 25], header: true, seq: 0, epoch },
    { action: "put", stream: "M2", message: ["S3", 0], seq: 1, epoch },
    { action: "header", stream: "M2", message: ["H2", 26], seq: 1, epoch },
    { action: "delete", stream: "M2", message: null, seq: 1, epoch },
  ]);
  assert(rec.events.every((e) => e.frame.at(-1) === 0x0a));
});

Deno.test("MessageStream.listen() twice with the same queue delivers once", async () => {
  const hub = new MessageStream();
  await hub.header("job", "h");
  const rec = new Recorder();
  await hub.listen("job", rec);
  await hub.listen("job", rec);
  await hub.put("job", 1);
  assertEquals(view(rec.events), [["header", "h", 0], ["put", 1, 1]]);
  assertEquals(hub.info("job")?.listeners, 1);
});

Deno.test("MessageStream.hangup() stops one stream for one queue", async () => {
  const hub = new MessageStream();
  const a = new Recorder("a");
  const b = new Recorder("b");
  await hub.listen("x", a);
  await hub.listen("y", a);
  await hub.listen("x", b);
  hub.hangup("x", a);
  hub.hangup("x", a); // twice is harmless
  hub.hangup("nope", a);
  await hub.put("x", 1);
  await hub.put("y", 2);
  assertEquals(a.events.map((e) => e.message), [2]);
  assertEquals(b.events.map((e) => e.message), [1]);
});

Deno.test("MessageStream.endqueue() stops every stream for one queue", async () => {
  const hub = new MessageStream();
  const a = new Recorder("a");
  const b = new Recorder("b");
  for (const s of ["x", "y", "z"]) await hub.listen(s, a);
  await hub.listen("y", b);
  hub.endqueue(a);
  for (const s of ["x", "y", "z"]) await hub.put(s, s);
  assertEquals(a.events, []);
  assertEquals(b.events.map((e) => e.message), ["y"]);
  assertEquals(hub.stats().listeners, 1);
});

Deno.test("MessageStream.delete() ends listeners, and the name starts a new epoch", async () => {
  const hub = new MessageStream();
  await hub.header("job", "h");
  const rec = new Recorder();
  const first = await hub.listen("job", rec);
  await hub.put("job", 1);
  await hub.delete("job");
  assertEquals(view(rec.events), [["header", "h", 0], ["put", 1, 1], ["end", null, 1]]);
  assertEquals(hub.info("job"), undefined);
  await hub.put("job", 2); // the old listener is gone
  assertEquals(rec.events.length, 3);
  const again = new Recorder();
  const second = await hub.listen("job", again);
  assertNotEquals(second.epoch, first.epoch);
  assertEquals(second.seq, 1); // the new epoch counts from 1 again
  assertEquals(again.events, []); // the header went with the old stream
});

Deno.test("MessageStream.delete() of an unknown stream does nothing", async () => {
  const hub = new MessageStream();
  await hub.delete("nope");
  assertEquals(hub.stats().streams, 0);
});

Deno.test("MessageStream.header() changes reach current listeners; null clears", async () => {
  const hub = new MessageStream();
  const rec = new Recorder();
  await hub.listen("job", rec);
  await hub.header("job", { done: 1 });
  await hub.put("job", "p");
  await hub.header("job", { done: 2 });
  await hub.header("job", null);
  await hub.header("job", undefined); // already clear: no event
  assertEquals(view(rec.events), [
    ["header", { done: 1 }, 0],
    ["put", "p", 1],
    ["header", { done: 2 }, 1],
    ["header", null, 1],
  ]);
  const late = new Recorder();
  await hub.listen("job", late);
  await hub.put("job", "q");
  assertEquals(view(late.events), [["put", "q", 2]]);
});

Deno.test("MessageStream drops a listener that throws, and the others still get events", async () => {
  const hub = new MessageStream();
  let calls = 0;
  const bad = {
    put() {
      calls++;
      throw new Error("broken");
    },
  };
  const good = new Recorder();
  await hub.listen("a", bad);
  await hub.listen("b", bad);
  await hub.listen("a", good);
  await hub.put("a", 1);
  await hub.put("a", 2);
  await hub.put("b", 3);
  assertEquals(calls, 1);
  assertEquals(good.events.map((e) => e.message), [1, 2]);
  assertEquals(hub.stats().listeners, 1);
});

Deno.test("MessageStream joining during a put's fanout does not get that put twice", async () => {
  const hub = new MessageStream();
  await hub.header("job", "h");
  const late = new Recorder("late");
  let joined: { epoch: string; seq: number } | undefined;
  const trigger = {
    put(ev: StreamEvent) {
      if (ev.kind === "put" && ev.seq === 1) joined = syncOf(hub)?.listenNow("job", late);
    },
  };
  await hub.listen("job", trigger);
  await hub.put("job", "one");
  await hub.put("job", "two");
  assertEquals(joined?.seq, 1);
  // Joined at seq 1: the header as of seq 1, then only later puts.
  assertEquals(view(late.events), [["header", "h", 1], ["put", "two", 2]]);
});

Deno.test("MessageStream refuses bad stream names and undefined messages", async (t) => {
  const hub = new MessageStream({ maxStreamNameLength: 8 });
  await t.step("not a string", async () => {
    await assertRejects(() => hub.put(42 as unknown as string, 1), TypeError, "must be a string");
  });
  await t.step("empty", async () => {
    await assertRejects(() => hub.put("", 1), TypeError, "must not be empty");
  });
  await t.step("too long, stating the limit", async () => {
    const e = await assertRejects(() => hub.listen("123456789", { put() {} }), RangeError);
    assertStringIncludes(e.message, "the limit is 8");
  });
  await t.step("undefined message", async () => {
    await assertRejects(() => hub.put("ok", undefined), TypeError, "no message");
  });
  await t.step("queue without put", async () => {
    await assertRejects(() => hub.listen("ok", {} as never), TypeError, "no put method");
  });
  assertEquals(hub.stats().streams, 0);
});

Deno.test("MessageStream.put() numbers puts from 1 per stream", async () => {
  const hub = new MessageStream();
  assertEquals((await hub.put("a", 1)).seq, 1);
  assertEquals((await hub.put("b", 1)).seq, 1);
  assertEquals((await hub.put("a", 2)).seq, 2);
  assertEquals(hub.stats().puts, 3);
  assertEquals(hub.list().map((s) => [s.stream, s.seq]), [["a", 2], ["b", 1]]);
});

Deno.test("MessageStream.put() of a message the codec cannot encode fails and keeps the seq", async () => {
  const hub = new MessageStream();
  await hub.put("a", 1);
  await assertRejects(() => hub.put("a", 10n), TypeError);
  assertEquals((await hub.put("a", 2)).seq, 2);
});

Deno.test("MessageStream.listen() with since replays what was missed, or resets", async (t) => {
  const hub = new MessageStream({ historyMessages: 3 });
  await hub.header("job", "h");
  const at = await hub.listen("job", { put() {} });
  for (let i = 1; i <= 2; i++) await hub.put("job", i);
  await t.step("from a covered position: exactly the missed puts", async () => {
    const rec = new Recorder();
    await hub.listen("job", rec, { since: at });
    await hub.put("job", 3);
    // A header set at the resumed seq is replayed too: the position cannot tell whether it
    // was seen, and a header is a snapshot, so seeing it again is harmless.
    const want = [["header", "h", 0], ["put", 1, 1], ["put", 2, 2], ["put", 3, 3]];
    assertEquals(view(rec.events), want);
  });
  await t.step("from another epoch: reset, then the header", async () => {
    const rec = new Recorder();
    await hub.listen("job", rec, { since: { epoch: "old", seq: 1 } });
    assertEquals(view(rec.events), [["reset", { reason: "epoch_changed" }, 3], ["header", "h", 3]]);
  });
  await t.step("from a trimmed position: reset, then the header", async () => {
    for (let i = 4; i <= 6; i++) await hub.put("job", i);
    const rec = new Recorder();
    await hub.listen("job", rec, { since: at });
    assertEquals(rec.events[0]?.kind, "reset");
    assertEquals(rec.events[0]?.message, { reason: "history_trimmed" });
    assertEquals(view(rec.events.slice(1)), [["header", "h", 6]]);
  });
});

Deno.test("MessageStream serves 1,000 streams with several listeners each", async () => {
  const hub = new MessageStream();
  const recs = [new Recorder("a"), new Recorder("b"), new Recorder("c")];
  const names = Array.from({ length: 1000 }, (_, i) => `s${i}`);
  for (const s of names) for (const r of recs) await hub.listen(s, r);
  for (let k = 0; k < 3; k++) for (const s of names) await hub.put(s, k);
  for (const r of recs) {
    assertEquals(r.events.length, 3000);
    const perStream = new Map<string, unknown[]>();
    for (const e of r.events) {
      perStream.set(e.stream, [...perStream.get(e.stream) ?? [], e.message]);
    }
    assertEquals(perStream.size, 1000);
    for (const got of perStream.values()) assertEquals(got, [0, 1, 2]);
  }
  assertEquals(hub.stats().listeners, 3000);
  for (const r of recs) hub.endqueue(r);
  assertEquals(hub.stats().listeners, 0);
});

Deno.test("MessageStream replays from history a message nested to the codec's depth limit", async () => {
  const hub = new MessageStream();
  let deep: unknown = 1;
  for (let i = 0; i < 64; i++) deep = [deep]; // 64 levels: the frame around it has 65
  const at = await hub.listen("deep", { put() {} });
  await hub.put("deep", deep);
  const got: unknown[] = [];
  await hub.listen("deep", { put: (ev: StreamEvent) => got.push(ev.message) }, { since: at });
  assertEquals(got, [deep]);
});
