/**
 * Expiry (`streamTtl`, `--stream-ttl`): a stream with no listeners and no puts for that long is
 * removed; pattern listeners get `end`; a stream with a listener stays. No timed assertions:
 * each wait is for an event, with a deadline.
 */
import { assertEquals } from "@std/assert";
import { Inbox, MessageStream } from "../mod.ts";
import { collect } from "./_recorder.ts";

Deno.test("streamTtl removes an unused stream and its pattern listeners get end; a listened one stays", async () => {
  const hub = new MessageStream({ streamTtl: 40 });
  try {
    const inbox = new Inbox();
    await hub.listen({ pattern: "jobs.*" }, inbox);
    const listener = { put() {} };
    const a = await hub.put("jobs.a", 1);
    await hub.put("jobs.b", 1);
    await hub.listen("jobs.b", listener);
    const first = await collect(inbox, 5);
    assertEquals(first.map((e) => `${e.stream} ${e.kind} ${e.seq}`), [
      "jobs.a header 0",
      "jobs.a put 1",
      "jobs.b header 0",
      "jobs.b put 1",
      "jobs.a end 1",
    ]);
    assertEquals(first[4]!.epoch, a.epoch);
    assertEquals(await hub.stat("jobs.a"), undefined);
    assertEquals((await hub.stat("jobs.b"))?.seq, 1);
    // Its last listener gone, the stream expires too.
    hub.hangup("jobs.b", listener);
    assertEquals((await collect(inbox, 1)).map((e) => `${e.stream} ${e.kind}`), ["jobs.b end"]);
    assertEquals(hub.stats().streams, 0);
    inbox.close();
  } finally {
    await hub.close();
  }
});

Deno.test("streamTtl 0 (the default) keeps streams", async () => {
  const hub = new MessageStream();
  await hub.put("jobs.a", 1);
  // Nothing to wait for: without expiry no sweep runs at all (the op sanitizer would see one).
  assertEquals((await hub.stat("jobs.a"))?.seq, 1);
  await hub.close();
});
