// The Redis engine's memory guard (issue 11, H2 item 4): past --redis-max-memory-percent of
// Redis' maxmemory, a header set and a put that would make a new stream are refused with
// limit_exceeded (redis_memory), while puts to existing streams go on; a real redis-server with
// a small maxmemory, through the TCP door.
import { assert, assertEquals } from "@std/assert";
import { serve } from "../server.ts";
import { connectRaw } from "./_raw_client.ts";
import { hasRedis, RedisProcess } from "./_redis.ts";

async function redisCli(port: number, ...args: string[]): Promise<string> {
  const out = await new Deno.Command("redis-cli", {
    args: ["-p", String(port), ...args],
    stdout: "piped",
    stderr: "piped",
  }).output();
  assert(out.success, new TextDecoder().decode(out.stderr));
  return new TextDecoder().decode(out.stdout).trim();
}

Deno.test({
  name:
    "Redis: a header flood stops at --redis-max-memory-percent with redis_memory; puts to existing streams go on",
  ignore: !hasRedis,
  async fn() {
    await using redis = await RedisProcess.start();
    const info = await redisCli(redis.port, "info", "memory");
    const used = Number(/used_memory:(\d+)/.exec(info)![1]);
    // Room for about 8 MB more; the guard refuses past half of it (used + 4 MB or so).
    const max = used + 8_000_000;
    assertEquals(await redisCli(redis.port, "config", "set", "maxmemory", String(max)), "OK");
    await using server = serve({
      port: 0,
      logLevel: "silent",
      redis: redis.url,
      redisPrefix: "guard:",
      redisMaxMemoryPercent: 50,
    });
    const raw = await connectRaw(server.addr.port);
    try {
      await raw.send({ action: "put", stream: "existing", message: 0, id: "first" });
      assertEquals((await raw.next()).id, "first");
      // 100 headers of 100 KB: about 8 MB in Redis (hash and history), past the share.
      const big = "h".repeat(100_000);
      let ok = 0;
      const refusals: string[] = [];
      for (let i = 0; i < 100; i++) {
        await raw.send({ action: "header", stream: `h${i}`, message: big, id: i });
        const f = await raw.next();
        assertEquals(f.id, i);
        if (f.action === "ok") ok++;
        else refusals.push(`${f.code}:${f.limit}`);
      }
      // Refused before Redis' own limit: every refusal is the guard's, none Redis' OOM.
      assert(ok > 0 && ok < 100, `${ok} headers accepted`);
      assertEquals(refusals, Array(100 - ok).fill("limit_exceeded:redis_memory"));
      const usedNow = Number(
        /used_memory:(\d+)/.exec(await redisCli(redis.port, "info", "memory"))![1],
      );
      assert(usedNow < max, `Redis used ${usedNow} of ${max}`);
      // A put to an existing stream goes on; one to a new stream is refused, naming the limit.
      await raw.send({ action: "put", stream: "existing", message: 1, id: "old" });
      const old = await raw.next();
      assertEquals([old.action, old.id, old.seq], ["ok", "old", 2]);
      await raw.send({ action: "put", stream: "new-one", message: 1, id: "new" });
      const refused = await raw.next();
      assertEquals([refused.code, refused.limit, refused.id], [
        "limit_exceeded",
        "redis_memory",
        "new",
      ]);
      assert(
        String(refused.message).startsWith(
          'Cannot put on stream "new-one": Redis uses about ',
        ) && String(refused.message).endsWith(
          "past 50 % (redis_memory); puts to existing streams go on",
        ),
        String(refused.message),
      );
      // A header clear and a delete free memory: they go on.
      await raw.send({ action: "header", stream: "h0", message: null, id: "clear" });
      assertEquals((await raw.next()).id, "clear");
      await raw.send({ action: "delete", stream: "h1", id: "del" });
      assertEquals((await raw.next()).id, "del");
      assertEquals(server.metrics.limits.redis_memory, 100 - ok + 1);
    } finally {
      await raw.close();
    }
  },
});
