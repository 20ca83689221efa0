/**
 * SSE resume when everything to catch up on happened while the client was away: a put the
 * client saw, two header changes at that position, and a put after them. The resumed response
 * must give the newest header (not the stale one), then the missed put: header first, then put,
 * exactly once each.
 *
 * @module
 */

import { assertEquals } from "@std/assert";
import { MessageStream } from "../mod.ts";
import { serveHttp } from "../http.ts";
import { openSse, type SseBlock } from "./_sse.ts";

/** `event data id` of each block, for one exact comparison. */
function shown(blocks: SseBlock[]): string[] {
  return blocks.map((b) => `${b.event} ${b.data} ${b.id}`);
}

/**
 * Opens a first response, puts 1 while it follows, and returns its last event id (`epoch:1`)
 * after it went away.
 */
async function firstVisit(hub: MessageStream, base: string): Promise<string> {
  const first = await openSse(base, "job");
  await hub.put("job", 1);
  const seen = await first.event();
  assertEquals([seen.event, seen.data], ["put", "1"]);
  await first.cancel();
  return seen.id as string;
}

for (const how of ["Last-Event-ID", "?since="] as const) {
  Deno.test(`SSE resume with ${how} after "put; header A; header B; put" sends header B, then the put`, async () => {
    const hub = new MessageStream();
    await using server = serveHttp(hub, { port: 0 });
    const base = `http://127.0.0.1:${server.addr.port}`;
    const lastId = await firstVisit(hub, base);
    const epoch = lastId.split(":")[0];
    assertEquals(lastId, `${epoch}:1`);

    // Everything to catch up on happens before the client comes back.
    await hub.header("job", "A");
    await hub.header("job", "B");
    await hub.put("job", 2);

    const second = how === "Last-Event-ID"
      ? await openSse(base, "job", { "last-event-id": lastId })
      : await openSse(base, "job", {}, `?since=${encodeURIComponent(lastId)}`);
    // A live put after the resume: everything before it is the catch-up.
    await hub.put("job", 3);
    const got = await second.until((b) => b.event === "put" && b.data === "3");
    assertEquals(shown(got), [
      `header "B" ${epoch}:1`,
      `put 2 ${epoch}:2`,
      `put 3 ${epoch}:3`,
    ]);
    await second.cancel();
  });
}
