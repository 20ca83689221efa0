/**
 * A Redis that stops answering without closing the connection (A2's attack: a proxy that forwarded
 * nothing for 45 s held every put for 45 s, none refused): a command not answered within
 * `commandTimeout` fails with `EngineUnavailableError`, and once the connection is replaced the
 * engine serves again.
 */

import { assertEquals, assertInstanceOf } from "@std/assert";
import { EngineUnavailableError, MessageStream } from "../mod.ts";
import { RedisEngine } from "../redis.ts";
import { TcpProxy } from "./_proxy.ts";
import { hasRedis, RedisProcess } from "./_redis.ts";
import { Recorder } from "./_recorder.ts";
import { deadline } from "./_wait.ts";

Deno.test({
  name: "RedisEngine: a command Redis does not answer fails after commandTimeout, not never",
  ignore: !hasRedis,
  fn: async () => {
    await using redis = await RedisProcess.start();
    await using proxy = new TcpProxy(redis.port);
    const hub = new MessageStream({
      engine: new RedisEngine({
        url: `redis://127.0.0.1:${proxy.port}`,
        prefix: `t${crypto.randomUUID()}:`,
        commandTimeout: 300,
      }),
    });
    try {
      const rec = new Recorder();
      await hub.listen("s", rec);
      assertEquals((await hub.put("s", 1)).seq, 1);
      // Nothing reaches Redis any more, and the connection stays open.
      proxy.swallow = true;
      const e = await deadline(
        hub.put("s", 2).then(() => undefined, (e) => e),
        "the put to fail while Redis does not answer",
      );
      assertInstanceOf(e, EngineUnavailableError);
      // The partition ends with the connection gone (its unanswered commands with it): the
      // engine connects again and serves.
      proxy.swallow = false;
      proxy.cut();
      let seq: number | undefined;
      while (seq === undefined) {
        seq = await deadline(hub.put("s", 3), "a put after the partition").then(
          (p) => p.seq,
          (e) => {
            assertInstanceOf(e, EngineUnavailableError);
            return new Promise<undefined>((r) => setTimeout(() => r(undefined), 50));
          },
        );
      }
      assertEquals(seq, 2, "the put that failed was never applied: the next is seq 2");
      await rec.waitForEvent((ev) => ev.message === 3);
    } finally {
      await deadline(hub.close(), "the hub to close");
    }
  },
});
