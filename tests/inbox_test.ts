/** The bounded listener queue, `Inbox` (inbox.ts), and its `SlowConsumerError`. */

import { assert, assertEquals, assertInstanceOf, assertRejects, assertThrows } from "@std/assert";
import { buildEvent } from "../frame.ts";
import { defaultCodec } from "../codec.ts";
import { Inbox, MessageStream, SlowConsumerError, type StreamEvent } from "../mod.ts";
import { collect } from "./_recorder.ts";

Deno.test("Inbox delivers events from many streams in arrival order", async () => {
  const hub = new MessageStream();
  const inbox = new Inbox();
  await hub.listen("a", inbox);
  await hub.listen("b", inbox);
  await hub.put("a", 1);
  await hub.put("b", 2);
  await hub.put("a", 3);
  const got = await collect(inbox, 3);
  assertEquals(got.map((e) => `${e.stream}:${e.message}`), ["a:1", "b:2", "a:3"]);
  inbox.close();
  assertEquals(await Array.fromAsync(inbox), []);
  assertEquals(hub.stats().listeners, 0);
});

Deno.test("Inbox overflow reports SlowConsumerError after the buffered events", async () => {
  const hub = new MessageStream();
  const inbox = new Inbox({ maxEvents: 3 });
  await hub.listen("a", inbox);
  for (let i = 1; i <= 10; i++) await hub.put("a", i);
  assertEquals(hub.stats().listeners, 0);
  const reader = inbox.getReader();
  const got: unknown[] = [];
  const e = await assertRejects(async () => {
    while (true) {
      const r = await reader.read();
      if (r.done) break;
      got.push(r.value.message);
    }
  });
  assertInstanceOf(e, SlowConsumerError);
  assertEquals(e.limit, "events");
  assertEquals(got, [1, 2, 3]);
});

Deno.test("Inbox cancel stops listening everywhere", async () => {
  const hub = new MessageStream();
  const inbox = new Inbox();
  await hub.listen("a", inbox);
  await hub.listen("b", inbox);
  await hub.put("a", 1);
  for await (const ev of inbox) {
    assertEquals(ev.message, 1);
    break;
  }
  assertEquals(hub.stats().listeners, 0);
});

Deno.test("Inbox takes its bounds as options, all optional, and refuses bounds below 1", () => {
  new Inbox().close();
  new Inbox({ maxEvents: 1 }).close();
  new Inbox({ maxBytes: 1 }).close();
  assertThrows(
    () => new Inbox({ maxEvents: 0 }),
    RangeError,
    '"maxEvents" must be an integer of at least 1',
  );
  assertThrows(
    () => new Inbox({ maxBytes: 1.5 }),
    RangeError,
    '"maxBytes" must be an integer of at least 1',
  );
});

Deno.test("Inbox overflow by bytes counts the frames' bytes", async () => {
  const hub = new MessageStream();
  const at = await hub.put("a", 0);
  // Every frame below has the same size: a one-digit message and a one-digit seq.
  const size = buildEvent(defaultCodec, "put", { name: "a" }, 1, 2, at.epoch, "own").frame;
  const inbox = new Inbox({ maxBytes: 2 * size.byteLength });
  await hub.listen("a", inbox, { since: at });
  for (let i = 1; i <= 3; i++) await hub.put("a", i);
  const reader = inbox.getReader();
  assertEquals((await reader.read()).value?.message, 1);
  assertEquals((await reader.read()).value?.message, 2);
  const e = await assertRejects(() => reader.read());
  assertInstanceOf(e, SlowConsumerError);
  assertEquals(e.limit, "bytes");
});

Deno.test("Inbox keeps frames of its own, not views of the hub's shared slab", async () => {
  const hub = new MessageStream();
  const inbox = new Inbox();
  const seen: StreamEvent[] = [];
  await hub.listen("a", { put: (ev) => void seen.push(ev) });
  await hub.listen("a", inbox);
  await hub.put("a", "x");
  assert(seen[0] !== undefined);
  assert(
    seen[0].frame.buffer.byteLength > seen[0].frame.byteLength,
    "the hub's frame is a slab view",
  );
  const [kept] = await collect(inbox, 1);
  assertEquals(kept?.frame.buffer.byteLength, kept?.frame.byteLength);
  assertEquals(kept?.frame, seen[0].frame);
  inbox.close();
});

Deno.test("Inbox<H, M> types its events by kind", async () => {
  type Status = { state: string };
  type Progress = { done: number };
  const hub = new MessageStream();
  const inbox = new Inbox<Status, Progress>();
  await hub.header("job", { state: "running" });
  await hub.listen("job", inbox);
  await hub.put("job", { done: 1 });
  await hub.delete("job");
  const got: (string | number)[] = [];
  for await (const ev of inbox) {
    // Each branch reads the message with its kind's type (checked by deno check).
    if (ev.kind === "header") got.push(ev.message?.state ?? "cleared");
    else if (ev.kind === "put") got.push(ev.message.done);
    else if (ev.kind === "reset") got.push(ev.message.reason);
    else break;
  }
  assertEquals(got, ["running", 1]);
});
