/**
 * Issue 16, item 4: a Redis that goes quiet (a partition that sends no reset: connections stay
 * open, nothing comes back) must not hold writes for as long as it lasts, nor leave listeners
 * silent. Past `commandTimeout` a connection that owes an answer is treated as lost: its writes
 * fail `engine_unavailable` (saying they may have been applied), it is made again, and listeners
 * resync. A subscriber is PINGed, so one that went quiet while writes still work is found too.
 * Red before: the puts waited until forwarding resumed; the listener behind the quiet subscriber
 * got nothing more, ever.
 */
import { assert, assertEquals, assertInstanceOf, assertStringIncludes } from "@std/assert";
import { Inbox, MessageStream } from "../mod.ts";
import { RedisEngine } from "../redis.ts";
import { EngineUnavailableError } from "../engine.ts";
import type { Position } from "../types.ts";
import { hasRedis, RedisProcess } from "./_redis.ts";
import { collect } from "./_recorder.ts";
import { TcpProxy } from "./_proxy.ts";
import { deadline, poll } from "./_wait.ts";

const BOUND = 300;

/** The client port, as Redis sees it, of the connection in subscriber mode (`CLIENT LIST`). */
async function subscriberPort(redis: RedisProcess): Promise<number> {
  const out = await new Deno.Command("redis-cli", {
    args: ["-p", String(redis.port), "CLIENT", "LIST"],
    stdout: "piped",
    stderr: "null",
  }).output();
  const text = new TextDecoder().decode(out.stdout);
  const line = text.split("\n").find((l) => / sub=[1-9]/.test(l));
  const port = Number(/ addr=[^ ]*:(\d+) /.exec(line ?? "")?.[1]);
  assert(port > 0, `no subscriber in CLIENT LIST:\n${text}`);
  return port;
}

/** Puts until one is acknowledged (the link is back), each failure engine_unavailable. */
async function putWhenBack(hub: MessageStream, stream: string, message: unknown) {
  let pos: Position | undefined;
  await poll(
    async () => {
      try {
        pos = await hub.put(stream, message);
        return true;
      } catch (e) {
        assertInstanceOf(e, EngineUnavailableError);
        return false;
      }
    },
    "a put acknowledged once Redis answers again",
    { interval: 50 },
  );
  return pos as Position;
}

Deno.test({
  name:
    "redis: a quiet Redis fails puts engine_unavailable within the bound, then listeners resync",
  ignore: !hasRedis,
  fn: async () => {
    await using redis = await RedisProcess.start();
    await using proxy = new TcpProxy(redis.port);
    const prefix = `q${crypto.randomUUID().slice(0, 8)}:`;
    const engine = new RedisEngine({
      url: `redis://127.0.0.1:${proxy.port}`,
      prefix,
      commandTimeout: BOUND,
    });
    const hub = new MessageStream({ engine });
    try {
      const inbox = new Inbox();
      await hub.listen("job", inbox);
      assertEquals((await hub.put("job", 1)).seq, 1);
      proxy.swallow = true; // nothing reaches Redis, every connection stays open
      const error = await deadline(
        hub.put("job", 2).then(() => undefined, (e) => e),
        "the put to a quiet Redis answered",
      );
      assertInstanceOf(error, EngineUnavailableError);
      assertStringIncludes(error.message, `no answer within ${BOUND} ms`);
      assertStringIncludes(error.message, "may have been applied");
      proxy.swallow = false;
      const back = await putWhenBack(hub, "job", 3);
      assertEquals(back.seq, 2); // put 2 never reached Redis
      const got = (await collect(inbox, 2)).map((e) => `${e.kind} ${e.message} ${e.seq}`);
      assertEquals(got, ["put 1 1", "put 3 2"]);
    } finally {
      await hub.close();
    }
  },
});

Deno.test({
  name: "redis: a subscriber gone quiet while writes work is found by PING, resubscribed, resynced",
  ignore: !hasRedis,
  fn: async () => {
    await using redis = await RedisProcess.start();
    await using proxy = new TcpProxy(redis.port);
    const prefix = `q${crypto.randomUUID().slice(0, 8)}:`;
    const engine = new RedisEngine({
      url: `redis://127.0.0.1:${proxy.port}`,
      prefix,
      commandTimeout: BOUND,
    });
    const hub = new MessageStream({ engine });
    try {
      const inbox = new Inbox();
      await hub.listen("job", inbox);
      assertEquals((await hub.put("job", 1)).seq, 1);
      assertEquals((await collect(inbox, 1)).map((e) => e.seq), [1]);
      const accepted = proxy.accepted;
      assert(proxy.mute(await subscriberPort(redis)), "the subscriber's connection is open");
      // Each put waits for its own event on this node: it is answered once the quiet
      // subscriber is found lost, not when (if ever) it speaks again.
      const acked: number[] = [];
      for (let i = 2; i <= 6; i++) {
        acked.push(
          (await deadline(hub.put("job", i), `put ${i} answered with a quiet subscriber`)).seq,
        );
      }
      assertEquals(acked, [2, 3, 4, 5, 6]);
      const got = (await collect(inbox, 5)).map((e) => `${e.kind} ${e.message} ${e.seq}`);
      assertEquals(got, ["put 2 2", "put 3 3", "put 4 4", "put 5 5", "put 6 6"]);
      assert(proxy.accepted > accepted, "the subscriber connected again");
      await hub.put("job", 7);
      assertEquals((await collect(inbox, 1)).map((e) => `${e.kind} ${e.message} ${e.seq}`), [
        "put 7 7",
      ]);
    } finally {
      await hub.close();
    }
  },
});
