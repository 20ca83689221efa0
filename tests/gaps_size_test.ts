/**
 * Issue 12: `maxMessageBytes`. Its default keeps every accepted message within every door's
 * default client limits (a WebSocket client's 1 MiB frame, envelope included); a bigger put or
 * header is refused with `message_too_large` at the door where it enters, on both engines.
 *
 * @module
 */

import { assertEquals, assertRejects } from "@std/assert";
import { MessageStream, MessageTooLargeError } from "../mod.ts";
import { serve } from "../server.ts";
import { connectRaw } from "./_raw_client.ts";
import { hasRedis, RedisProcess } from "./_redis.ts";
import { deadline } from "./_wait.ts";

const MAX = (1 << 20) - 4096;
/** A JSON string message whose encoded text is exactly `n` bytes. */
const sized = (n: number) => "x".repeat(n - 2);

for (const engine of ["memory", "redis"] as const) {
  Deno.test({
    name:
      `[${engine}] the largest accepted message reaches a WebSocket within 1 MiB; one byte more is refused`,
    ignore: engine === "redis" && !hasRedis,
    async fn() {
      await using redis = engine === "redis" ? await RedisProcess.start() : undefined;
      await using server = serve({
        port: 0,
        http: { port: 0 },
        logLevel: "silent",
        ...(redis ? { redis: redis.url } : {}),
      });
      // The worst envelope: the longest name, every character escaped in JSON (6 bytes each).
      const name = "\u0001".repeat(server.hub.maxStreamNameLength);
      const ws = new WebSocket(`ws://127.0.0.1:${server.http?.addr.port}/ws`);
      const texts: string[] = [];
      const listened = Promise.withResolvers<void>();
      const got = Promise.withResolvers<void>();
      ws.onmessage = (e) => {
        texts.push(e.data);
        if (texts.length === 1) listened.resolve();
        if (texts.length === 2) got.resolve();
      };
      const closed = new Promise((r) => ws.onclose = r);
      await deadline(new Promise((r) => ws.onopen = r), "WebSocket open");
      ws.send(JSON.stringify({ action: "listen", stream: name, id: 1 }));
      await deadline(listened.promise, "the WebSocket's ok to listen");
      await using raw = await connectRaw(server.addr.port);
      await raw.send({ action: "put", stream: name, message: sized(MAX + 1), id: 1 });
      await raw.send({ action: "header", stream: name, message: sized(MAX + 1), id: 2 });
      await raw.send({ action: "put", stream: name, message: sized(MAX), id: 3 });
      const answers = [];
      for (let i = 0; i < 3; i++) {
        const f = await deadline(raw.next(), `answer ${i}`);
        answers.push([f.action, f.id, f.code ?? f.seq]);
      }
      assertEquals(answers, [
        ["error", 1, "message_too_large"],
        ["error", 2, "message_too_large"],
        ["ok", 3, 1],
      ]);
      await deadline(got.promise, "the WebSocket's ok and put");
      ws.close();
      await closed;
      const bytes = texts.map((t) => new TextEncoder().encode(t).byteLength);
      assertEquals(JSON.parse(texts[1] as string).seq, 1);
      assertEquals(bytes[1]! <= 1 << 20, true, `a ${bytes[1]}-byte WebSocket frame`);
      // REST: the same bound, answered 413 with the code.
      const res = await fetch(`http://127.0.0.1:${server.http?.addr.port}/streams/r`, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify(sized(MAX + 1)),
      });
      assertEquals([res.status, (await res.json()).code], [413, "message_too_large"]);
    },
  });
}

Deno.test("MessageStream maxMessageBytes refuses a larger put or header with MessageTooLargeError", async () => {
  const hub = new MessageStream({ maxMessageBytes: 10 });
  assertEquals((await hub.put("s", sized(10))).seq, 1);
  const e = await assertRejects(() => hub.put("s", sized(11)), MessageTooLargeError);
  assertEquals([e.stream, e.size, e.limit], ["s", 11, 10]);
  await assertRejects(() => hub.header("t", sized(11)), MessageTooLargeError);
  // Nothing of the refused requests stays: no seq taken, no stream created.
  assertEquals([hub.info("s")?.seq, hub.info("t")], [1, undefined]);
  assertEquals((await hub.put("s", 1)).seq, 2);
  await hub.close();
});
