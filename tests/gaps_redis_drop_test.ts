/**
 * Issue 12, attack A12: with Redis, a listener that goes while its join's snapshot is in flight
 * (a client that disconnects during its `listen`) must not take the server down. The engine
 * rejected the snapshot's promise before anyone awaited it: an unhandled rejection, which ends
 * a Deno process (seen under random client cuts: "Uncaught (in promise) EngineUnavailableError:
 * Cannot reach Redis: Redis subscription lost").
 */
import { assertEquals, assertRejects } from "@std/assert";
import { Inbox, MessageStream } from "../mod.ts";
import { RedisEngine } from "../redis.ts";
import { EngineUnavailableError, joinProbes } from "../engine.ts";
import { hasRedis, RedisProcess } from "./_redis.ts";
import { collect } from "./_recorder.ts";

Deno.test({
  name: "redis: a listener that goes while its snapshot is in flight leaves the node running",
  ignore: !hasRedis,
  fn: async () => {
    await using redis = await RedisProcess.start();
    const prefix = `p${crypto.randomUUID().slice(0, 8)}:`;
    const engine = new RedisEngine({ url: redis.url, prefix });
    const gone = new Inbox();
    let once = true;
    joinProbes.set(engine, {
      snapshotReplied: async (stream) => {
        if (stream !== "job" || !once) return;
        once = false;
        // The client goes: its listen's follow is dropped while the reply waits to be placed.
        hub.endqueue(gone);
        // A macrotask: an unhandled rejection would be reported here.
        await new Promise((ok) => setTimeout(ok, 10));
      },
    });
    const hub = new MessageStream({ engine });
    try {
      await hub.put("job", 1);
      await assertRejects(() => hub.listen("job", gone), EngineUnavailableError);
      // The node goes on: a new listener joins and gets what follows.
      const inbox = new Inbox();
      await hub.listen("job", inbox);
      await hub.put("job", 2);
      const got = (await collect(inbox, 1)).map((e) => `${e.kind} ${e.message} ${e.seq}`);
      assertEquals(got, ["put 2 2"]);
    } finally {
      await hub.close();
    }
  },
});
