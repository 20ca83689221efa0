/**
 * Issue 12: a listen may ask not to create the stream (`create: false`): a stream that is gone
 * answers `not_found` at once, and a `RemoteStream` that finds it gone after a restart gives its
 * listeners `end` instead of a new, empty stream.
 *
 * @module
 */

import { assertEquals, assertRejects } from "@std/assert";
import { Inbox, MessageStream, StreamNotFoundError } from "../mod.ts";
import { RemoteStream } from "../client.ts";
import { serve } from "../server.ts";
import { connectRaw } from "./_raw_client.ts";
import { hasRedis, RedisProcess } from "./_redis.ts";
import { deadline } from "./_wait.ts";

Deno.test("MessageStream.listen() with create: false refuses a stream that does not exist", async () => {
  const hub = new MessageStream();
  await assertRejects(
    () => hub.listen("gone", new Inbox(), { create: false }),
    StreamNotFoundError,
    'No stream "gone"',
  );
  assertEquals(hub.info("gone"), undefined);
  await hub.put("here", 1);
  assertEquals((await hub.listen("here", new Inbox(), { create: false })).seq, 1);
  await hub.close();
});

for (const engine of ["memory", "redis"] as const) {
  Deno.test({
    name: `[${engine}] listen with "create": false answers not_found at once for a missing stream`,
    ignore: engine === "redis" && !hasRedis,
    async fn() {
      await using redis = engine === "redis" ? await RedisProcess.start() : undefined;
      await using server = serve({
        port: 0,
        logLevel: "silent",
        ...(redis ? { redis: redis.url } : {}),
      });
      await using raw = await connectRaw(server.addr.port);
      await raw.send({ action: "put", stream: "here", message: 1, id: 1 });
      await raw.send({ action: "delete", stream: "here", id: 2 });
      await raw.send({ action: "listen", stream: "here", create: false, id: 3 });
      await raw.send({ action: "put", stream: "other", message: 1, id: 4 });
      await raw.send({ action: "listen", stream: "other", create: false, id: 5 });
      const answers = [];
      for (let i = 0; i < 5; i++) {
        const f = await deadline(raw.next(), `answer ${i + 1}`);
        answers.push([f.action, f.id, f.code ?? f.seq ?? null]);
      }
      assertEquals(answers, [
        ["ok", 1, 1],
        ["ok", 2, null],
        ["error", 3, "not_found"],
        ["ok", 4, 1],
        ["ok", 5, 1],
      ]);
      assertEquals(await server.hub.stat("here"), undefined);
    },
  });
}

Deno.test("RemoteStream listening with create: false gets end when a restart lost the stream", async () => {
  let server = serve({ port: 0, logLevel: "silent" });
  const port = server.addr.port;
  await server.hub.put("job", 1);
  const remote = await RemoteStream.connect({ port, reconnectTimeWait: 20, reconnectJitter: 0 });
  try {
    const inbox = new Inbox();
    await remote.listen("job", inbox, { create: false });
    await server.shutdown();
    server = serve({ port, logLevel: "silent" }); // a restart without --data: "job" is gone
    const reader = inbox.getReader();
    const ev = await deadline(reader.read(), "the end event");
    assertEquals([ev.value?.kind, ev.value?.stream], ["end", "job"]);
    // The stream was not created anew by the listen.
    assertEquals(server.hub.info("job"), undefined);
    reader.releaseLock();
  } finally {
    await remote.close();
    await server.shutdown();
  }
});
