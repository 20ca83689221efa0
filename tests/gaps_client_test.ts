/**
 * Issue 12, client faults: concurrent listens, status() after close(), close() during the
 * reconnect backoff.
 *
 * @module
 */

import { assertEquals, assertRejects } from "@std/assert";
import { Inbox } from "../mod.ts";
import { RemoteStream } from "../client.ts";
import { serve } from "../server.ts";
import { collect } from "./_recorder.ts";

/** Rejects with a message when `p` does not settle within `ms`. */
function within<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const late = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`Timed out after ${ms} ms: ${what}`)), ms);
  });
  return Promise.race([p, late]).finally(() => clearTimeout(timer));
}

Deno.test("RemoteStream.listen() twice at once: the second waits for the first's answer", async () => {
  await using server = serve({ port: 0, logLevel: "silent" });
  await server.hub.header("s", "h");
  await server.hub.put("s", 1);
  await using remote = await RemoteStream.connect({ port: server.addr.port });
  const a = new Inbox();
  const b = new Inbox();
  const [pa, pb] = await within(
    Promise.all([remote.listen("s", a), remote.listen("s", b)]),
    5000,
    "both listens",
  );
  const epoch = server.hub.info("s")?.epoch;
  assertEquals(pa, { epoch, seq: 1 });
  assertEquals(pb, { epoch, seq: 1 });
  await remote.put("s", 2);
  const seen = async (inbox: Inbox) =>
    (await within(collect(inbox, 2), 5000, "events")).map((e) => [e.kind, e.message]);
  assertEquals(await seen(a), [["header", "h"], ["put", 2]]);
  assertEquals(await seen(b), [["header", "h"], ["put", 2]]);
});

Deno.test("RemoteStream.listen() twice at once: a refusal reaches both", async () => {
  await using server = serve({ port: 0, logLevel: "silent" });
  await using remote = await RemoteStream.connect({ port: server.addr.port });
  const long = "x".repeat(server.hub.maxStreamNameLength + 1);
  const first = remote.listen(long, new Inbox());
  const second = remote.listen(long, new Inbox());
  await assertRejects(() => within(first, 5000, "first"), Error, "");
  const e = await within(second.then(() => undefined, (e: Error) => e), 5000, "second");
  assertEquals((e as { code?: string } | undefined)?.code, "invalid_stream");
});

Deno.test("RemoteStream.status() taken after close() yields closed, then ends", async () => {
  await using server = serve({ port: 0, logLevel: "silent" });
  const remote = await RemoteStream.connect({ port: server.addr.port });
  await remote.close();
  const seen: string[] = [];
  await within(
    (async () => {
      for await (const s of remote.status()) seen.push(s.type);
    })(),
    5000,
    "status() to end",
  );
  assertEquals(seen, ["closed"]);
});

Deno.test("RemoteStream.close() during the reconnect backoff does not wait it out", async () => {
  const server = serve({ port: 0, logLevel: "silent" });
  // A backoff far beyond the deadline below: close() must cut it short.
  const remote = await RemoteStream.connect({
    port: server.addr.port,
    reconnectTimeWait: 60_000,
    reconnectJitter: 0,
  });
  const statuses = remote.status()[Symbol.asyncIterator]();
  await server.shutdown();
  for (;;) {
    const s = await within(statuses.next(), 5000, "disconnected");
    if (s.value?.type === "disconnected") break;
  }
  await statuses.return?.();
  await within(remote.close(), 5000, "close() during the backoff");
  assertEquals(await remote.closed(), undefined);
});
