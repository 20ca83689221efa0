/**
 * The Redis engine's sharded subscriber (redis_shard.ts): the hash slot of a channel, and one
 * RESP subscriber connection against a real (standalone) Redis 7, which has sharded pub/sub too.
 */

import { assertEquals, assertRejects } from "@std/assert";
import { keySlot, ShardSubscriber } from "../redis_shard.ts";
import { hasRedis, RedisProcess } from "./_redis.ts";
import { deadline, poll } from "./_wait.ts";
import { TcpProxy } from "./_proxy.ts";

Deno.test("keySlot() is Redis Cluster's slot: CRC16 of the hash tag, mod 16384", () => {
  // Values from `redis-cli CLUSTER KEYSLOT`.
  assertEquals(keySlot("foo"), 12182);
  assertEquals(keySlot("bar"), 5061);
  assertEquals(keySlot("msgstream:{job}:c"), keySlot("job"));
  assertEquals(keySlot("{}x"), keySlot("{}x"), "an empty tag hashes the whole key");
  assertEquals(keySlot("a{}b") === keySlot(""), false);
  assertEquals(keySlot("é{ü}"), keySlot("ü"), "UTF-8 bytes");
});

async function spublish(port: number, channel: string, text: string): Promise<string> {
  // The message on stdin (-x): it may be longer than an argument may be.
  const child = new Deno.Command("redis-cli", {
    args: ["-p", String(port), "-x", "SPUBLISH", channel],
    stdin: "piped",
    stdout: "piped",
  }).spawn();
  const w = child.stdin.getWriter();
  await w.write(new TextEncoder().encode(text));
  await w.close();
  const out = await child.output();
  return new TextDecoder().decode(out.stdout).trim();
}

Deno.test({
  name: "ShardSubscriber receives sharded messages whole, in order, and reports its close",
  ignore: !hasRedis,
  fn: async () => {
    await using redis = await RedisProcess.start();
    const got: [string, string][] = [];
    let closed = 0;
    let wake: (() => void) | undefined;
    const s = new ShardSubscriber({
      hostname: "127.0.0.1",
      port: redis.port,
      tls: false,
      username: undefined,
      password: undefined,
      connectTimeout: 5000,
      onMessage: (channel, text) => {
        got.push([channel, text]);
        wake?.();
      },
      onDropped: () => {},
      onClose: () => closed++,
    });
    await s.connect();
    await s.subscribe("c:{a}:c");
    assertEquals([...s.channels], ["c:{a}:c"]);
    // Bigger than one read (64 KiB), multi-byte characters, CR LF inside.
    const big = "é\r\n".repeat(40_000);
    assertEquals(await spublish(redis.port, "c:{a}:c", "one"), "1");
    assertEquals(await spublish(redis.port, "c:{a}:c", big), "1");
    assertEquals(await spublish(redis.port, "c:{b}:c", "not followed"), "0");
    await deadline(
      new Promise<void>((resolve) => {
        wake = () => got.length === 2 && resolve();
        wake();
      }),
      "two messages",
    );
    assertEquals(got.map(([c, t]) => [c, t.length]), [["c:{a}:c", 3], ["c:{a}:c", big.length]]);
    assertEquals(got[1]![1], big);
    s.unsubscribe("c:{a}:c");
    assertEquals(s.channels.size, 0);
    s.close();
    await deadline(
      (async () => {
        while (closed === 0) await new Promise((r) => setTimeout(r, 5));
      })(),
      "onClose",
    );
    assertEquals(closed, 1);
    await assertRejects(() => s.subscribe("c:{a}:c"), Error, "not connected");
  },
});

Deno.test({
  name: "ShardSubscriber authenticates with the URL's password, and a wrong one fails connect()",
  ignore: !hasRedis,
  fn: async () => {
    await using redis = await RedisProcess.start();
    const cli = (...args: string[]) =>
      new Deno.Command("redis-cli", { args: ["-p", String(redis.port), ...args], stdout: "null" })
        .output();
    await cli("CONFIG", "SET", "requirepass", "s3cret");
    const make = (password: string) =>
      new ShardSubscriber({
        hostname: "127.0.0.1",
        port: redis.port,
        tls: false,
        username: undefined,
        password,
        connectTimeout: 5000,
        onMessage: () => {},
        onDropped: () => {},
        onClose: () => {},
      });
    const bad = make("wrong");
    // Refused: its socket is closed too (Redis counts only redis-cli's connection).
    await assertRejects(() => bad.connect(), Error, "WRONGPASS");
    await poll(async () => {
      const out = await new Deno.Command("redis-cli", {
        args: ["-p", String(redis.port), "-a", "s3cret", "--no-auth-warning", "INFO", "clients"],
        stdout: "piped",
      }).output();
      return /connected_clients:1\r?\n/.test(new TextDecoder().decode(out.stdout));
    }, "the refused connection to close");
    const good = make("s3cret");
    await good.connect();
    await good.subscribe("c:{a}:c");
    assertEquals([...good.channels], ["c:{a}:c"]);
    good.close();
    await cli("-a", "s3cret", "--no-auth-warning", "CONFIG", "SET", "requirepass", "");
  },
});

Deno.test({
  name: "ShardSubscriber.ping() keeps a live connection and closes one gone quiet",
  ignore: !hasRedis,
  fn: async () => {
    await using redis = await RedisProcess.start();
    await using proxy = new TcpProxy(redis.port);
    let closed = 0;
    const s = new ShardSubscriber({
      hostname: "127.0.0.1",
      port: proxy.port,
      tls: false,
      username: undefined,
      password: undefined,
      connectTimeout: 5000,
      onMessage: () => {},
      onDropped: () => {},
      onClose: () => closed++,
    });
    try {
      await s.connect();
      await s.subscribe("c:{a}:c");
      // Answered: each later ping finds the PONG (or any byte) came, and sends another.
      for (let i = 0; i < 3; i++) {
        const before = proxy.bytesUp;
        s.ping();
        await proxy.upstreamBytes(before);
        await s.subscribe(`c:{a${i}}:c`); // answered after the PONG: the PONG was read
      }
      assertEquals([s.up, closed], [true, 0]);
      // Quiet: the next ping's PING gets nothing back, so the ping after it closes.
      assertEquals(proxy.mute(await upstreamPortOf(redis)), true);
      s.ping();
      s.ping();
      await poll(() => closed === 1, "the quiet subscriber closed");
      assertEquals([s.up, s.channels.size], [false, 0]);
    } finally {
      s.close();
    }
  },
});

/** The client port, as Redis sees it, of its one client connection in subscriber mode. */
async function upstreamPortOf(redis: RedisProcess): Promise<number> {
  const out = await new Deno.Command("redis-cli", {
    args: ["-p", String(redis.port), "CLIENT", "LIST"],
    stdout: "piped",
  }).output();
  const text = new TextDecoder().decode(out.stdout);
  const line = text.split("\n").find((l) => / ssub=[1-9]/.test(l)) ?? "";
  return Number(/ addr=[^ ]*:(\d+) /.exec(line)?.[1]);
}
