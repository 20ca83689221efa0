/**
 * Issue 12 on the Redis engine, with a real redis-server: a Redis that comes back with older
 * data never hands out a position again with other content (a reset instead), and the `ok` to
 * `listen` precedes every later put.
 *
 * @module
 */

import { assertEquals } from "@std/assert";
import { serve } from "../server.ts";
import { connectRaw, type RawClient } from "./_raw_client.ts";
import { hasRedis, RedisProcess } from "./_redis.ts";

type Frame = Record<string, unknown>;

/** Rejects with a message when `p` does not settle within `ms`. */
function within<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const late = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`Timed out after ${ms} ms: ${what}`)), ms);
  });
  return Promise.race([p, late]).finally(() => clearTimeout(timer));
}

/** Sends a request with an id and reads frames up to its answer; returns them all. */
async function request(raw: RawClient, frame: Frame, what: string): Promise<Frame[]> {
  await raw.send(frame);
  const out: Frame[] = [];
  for (;;) {
    const f = await within(raw.next(), 5000, what);
    out.push(f);
    if ((f.action === "ok" || f.action === "error") && f.id === frame.id) return out;
  }
}

Deno.test({
  name:
    "Redis restarted from an older dump: a resuming client gets reset state_lost, no reused seq",
  ignore: !hasRedis,
  fn: async () => {
    await using redis = await RedisProcess.start();
    await using server = serve({ port: 0, logLevel: "silent", redis: redis.url });
    await using pub = await connectRaw(server.addr.port);
    let id = 0;
    const put = async (message: string): Promise<Frame> =>
      (await request(pub, { action: "put", stream: "rb", message, id: ++id }, `put ${message}`))
        .at(-1) as Frame;
    for (const m of ["a1", "a2", "a3", "a4", "a5"]) assertEquals((await put(m)).action, "ok");
    assertEquals(await redis.cli("SAVE"), "OK");
    for (const m of ["a6", "a7", "a8"]) assertEquals((await put(m)).action, "ok");
    // A client reads everything, up to seq 8.
    let at: { epoch: string; seq: number };
    {
      await using sub = await connectRaw(server.addr.port);
      const frames = await request(sub, { action: "listen", stream: "rb", id: 1 }, "listen");
      const ok = frames.at(-1) as Frame;
      at = { epoch: ok.epoch as string, seq: ok.seq as number };
    }
    assertEquals(at.seq, 8);
    // kill -9, restart from the dump: Redis holds the stream as of seq 5.
    await redis.restart();
    // More puts once the engine is back: they must not reuse 6, 7, 8 under the old epoch.
    let first: Frame | undefined;
    for (let i = 0; i < 100; i++) {
      first = await put("b1");
      if (first.action === "ok") break;
      assertEquals(first.code, "engine_unavailable");
      await new Promise((r) => setTimeout(r, 50));
    }
    assertEquals(first?.action, "ok");
    for (const m of ["b2", "b3", "b4"]) assertEquals((await put(m)).action, "ok");
    await using sub = await connectRaw(server.addr.port);
    const frames = await request(
      sub,
      { action: "listen", stream: "rb", id: 1, since: at },
      "resume",
    );
    const ok = frames.at(-1) as Frame;
    assertEquals(
      frames.map((f) => [f.action, f.message]),
      [["reset", { reason: "state_lost" }], ["ok", undefined]],
    );
    // The new epoch is not the old one; its seq goes on from what Redis holds.
    assertEquals(ok.epoch === at.epoch, false);
    assertEquals(ok.seq, 9);
  },
});

Deno.test({
  name: "Redis: the ok to listen precedes every later put (400 races with a put flood)",
  ignore: !hasRedis,
  fn: async () => {
    await using redis = await RedisProcess.start();
    await using server = serve({ port: 0, logLevel: "silent", redis: redis.url });
    await using pub = await connectRaw(server.addr.port);
    const late: string[] = [];
    for (let i = 0; i < 400; i++) {
      const stream = `race${i}`;
      await using sub = await connectRaw(server.addr.port);
      // 50 puts race the join, written one by one while the listen goes out.
      let stop = false;
      const flood = (async () => {
        for (let n = 0; n < 50 && !stop; n++) {
          await pub.send({ action: "put", stream, message: n });
        }
      })();
      await sub.send({ action: "listen", stream, id: 1 });
      const before: Frame[] = [];
      for (;;) {
        const f = await within(sub.next(), 5000, `ok of race ${i}`);
        if (f.action === "ok") {
          const wrong = before.filter((b) => (b.seq as number) > (f.seq as number));
          if (wrong.length > 0) late.push(`race ${i}: ok seq ${f.seq} after put ${wrong[0]?.seq}`);
          break;
        }
        before.push(f);
      }
      stop = true;
      await flood;
    }
    assertEquals(late, []);
  },
});

Deno.test({
  name: "Redis down: an SSE request gets an event stream that says retry, not an error status",
  ignore: !hasRedis,
  fn: async () => {
    await using redis = await RedisProcess.start();
    await using server = serve({
      port: 0,
      http: { port: 0 },
      logLevel: "silent",
      redis: redis.url,
    });
    await redis.stop();
    const url = `http://127.0.0.1:${server.http?.addr.port}/streams/s`;
    const res = await fetch(url, { headers: { accept: "text/event-stream" } });
    const text = await res.text();
    // EventSource stops for good on an error status; on an ended stream it reconnects.
    assertEquals([res.status, res.headers.get("content-type")], [
      200,
      "text/event-stream; charset=utf-8",
    ]);
    const [retry, event, data] = text.split("\n");
    assertEquals([retry, event], ["retry: 1000", "event: close"]);
    assertEquals(JSON.parse((data as string).slice("data: ".length)).code, "engine_unavailable");
    // A REST request still gets the status.
    const rest = await fetch(url, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: "1",
    });
    assertEquals([rest.status, (await rest.json()).code], [503, "engine_unavailable"]);
  },
});

Deno.test({
  name:
    "Redis: REST shows the whole service: POST answers the epoch, GET /streams lists every node's",
  ignore: !hasRedis,
  fn: async () => {
    await using redis = await RedisProcess.start();
    await using a = serve({ port: 0, http: { port: 0 }, logLevel: "silent", redis: redis.url });
    await using b = serve({ port: 0, http: { port: 0 }, logLevel: "silent", redis: redis.url });
    const onA = `http://127.0.0.1:${a.http?.addr.port}`;
    const onB = `http://127.0.0.1:${b.http?.addr.port}`;
    const posted = await (await fetch(`${onA}/streams/j`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: "1",
    })).json();
    assertEquals(typeof posted.epoch, "string");
    assertEquals(posted.seq, 1);
    // Node B follows nothing: it answers from Redis.
    const one = await fetch(`${onB}/streams/j`);
    const stream = await one.json();
    assertEquals([one.status, stream.seq, stream.epoch], [200, 1, posted.epoch]);
    const list = await (await fetch(`${onB}/streams`)).json();
    assertEquals(
      list.map((s: { name: string; seq: number; epoch: string }) => [s.name, s.seq, s.epoch]),
      [["j", 1, posted.epoch]],
    );
  },
});
