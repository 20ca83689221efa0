/**
 * Issue 12: stream names must be well-formed Unicode. A lone surrogate gets `invalid_stream` on
 * every door (TCP, WebSocket, REST) and every engine, and the connection goes on serving.
 *
 * @module
 */

import { assertEquals, assertRejects } from "@std/assert";
import { MessageStream } from "../mod.ts";
import { serve } from "../server.ts";
import { connectRaw } from "./_raw_client.ts";
import { hasRedis, RedisProcess } from "./_redis.ts";
import { deadline } from "./_wait.ts";

const LONE = '"x\\ud800"'; // JSON text of "x" + a lone high surrogate

for (const engine of ["memory", "redis"] as const) {
  Deno.test({
    name:
      `[${engine}] a lone surrogate in a stream name: invalid_stream on TCP, WebSocket and REST`,
    ignore: engine === "redis" && !hasRedis,
    async fn() {
      await using redis = engine === "redis" ? await RedisProcess.start() : undefined;
      await using server = serve({
        port: 0,
        http: { port: 0 },
        logLevel: "silent",
        ...(redis ? { redis: redis.url } : {}),
      });
      // TCP: every action that names a stream, then a ping: all answered, in order.
      await using raw = await connectRaw(server.addr.port);
      const actions = ["listen", "put", "header", "delete", "hangup"];
      for (const [i, action] of actions.entries()) {
        await raw.send(`{"action":"${action}","stream":${LONE},"message":1,"id":${i}}`);
      }
      await raw.send({ action: "ping", id: "p" });
      const answers = [];
      for (let i = 0; i <= actions.length; i++) {
        const f = await deadline(raw.next(), `TCP answer ${i}`);
        answers.push([f.action, f.id, f.code]);
      }
      assertEquals(answers, [
        ...actions.map((_, i) => ["error", i, "invalid_stream"]),
        ["pong", "p", undefined],
      ]);
      // WebSocket: the same frame as text (ASCII JSON, so the surrogate survives the send).
      const ws = new WebSocket(`ws://127.0.0.1:${server.http?.addr.port}/ws`);
      const frames: Record<string, unknown>[] = [];
      const got = Promise.withResolvers<void>();
      ws.onmessage = (e) => {
        frames.push(JSON.parse(e.data));
        if (frames.length === 2) got.resolve();
      };
      const closed = new Promise((r) => ws.onclose = r);
      await deadline(new Promise((r) => ws.onopen = r), "WebSocket open");
      ws.send(`{"action":"listen","stream":${LONE},"id":1}`);
      ws.send(JSON.stringify({ action: "ping", id: 2 }));
      await deadline(got.promise, "WebSocket answers");
      ws.close();
      await closed;
      assertEquals(frames.map((f) => [f.action, f.id, f.code]), [
        ["error", 1, "invalid_stream"],
        ["pong", 2, undefined],
      ]);
      // REST: a percent-encoded lone surrogate (CESU-style bytes are not UTF-8 either).
      const res = await fetch(`http://127.0.0.1:${server.http?.addr.port}/streams/x%ED%A0%80`, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: "1",
      });
      assertEquals([res.status, (await res.json()).code], [400, "invalid_stream"]);
      // Nothing was created under a replaced name.
      assertEquals(server.hub.list().map((s) => s.stream), []);
    },
  });
}

Deno.test("MessageStream refuses a lone surrogate in a stream name with a TypeError", async () => {
  const hub = new MessageStream();
  for (const call of [() => hub.put("x\ud800", 1), () => hub.listen("\udc00", { put() {} })]) {
    await assertRejects(call, TypeError, "Stream name must be well-formed Unicode");
  }
  assertEquals(hub.list(), []);
  await hub.close();
});
