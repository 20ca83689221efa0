/**
 * Attacks on pattern listens (issue 13) that broke something, each kept as a test: a stream
 * deleted while a pattern join is under way must stay deleted.
 */
import { assertEquals } from "@std/assert";
import { Inbox, MessageStream, type StreamEvent } from "../mod.ts";
import { RedisEngine } from "../redis.ts";
import { hasRedis, RedisProcess } from "./_redis.ts";
import { collect } from "./_recorder.ts";

const brief = (e: StreamEvent) => `${e.stream} ${e.kind} ${JSON.stringify(e.message)} ${e.seq}`;

Deno.test({
  name: "redis: a stream deleted between a pattern join's listing and its catch-up stays deleted",
  ignore: !hasRedis,
  fn: async () => {
    await using redis = await RedisProcess.start();
    const prefix = `p${crypto.randomUUID().slice(0, 8)}:`;
    const a = new MessageStream({ engine: new RedisEngine({ url: redis.url, prefix }) });
    // Node B's engine lists the streams, then node A deletes them before B catches up on them
    // (the window in which a delete on another node lands during a join).
    class DeletingAfterListing extends RedisEngine {
      override async *streams(pattern: string): AsyncIterable<string[]> {
        for await (const names of super.streams(pattern)) {
          for (const name of names) if (name !== "jobs.kept") await a.delete(name);
          yield names;
        }
      }
    }
    const b = new MessageStream({ engine: new DeletingAfterListing({ url: redis.url, prefix }) });
    try {
      await a.put("jobs.gone", 1);
      await a.put("jobs.kept", 1);
      const watcher = new Inbox();
      await a.listen({ pattern: "jobs.*" }, watcher);
      assertEquals((await collect(watcher, 2)).map(brief).sort(), [
        "jobs.gone header null 1",
        "jobs.kept header null 1",
      ]);
      const inbox = new Inbox();
      await b.listen({ pattern: "jobs.*" }, inbox);
      // The deleted stream is not made anew: no Redis keys, no announcement, nothing on B.
      assertEquals(await a.stat("jobs.gone"), undefined);
      assertEquals(await b.stat("jobs.gone"), undefined);
      await a.put("jobs.kept", 2);
      assertEquals((await collect(inbox, 2)).map(brief), [
        "jobs.kept header null 1",
        "jobs.kept put 2 2",
      ]);
      // A's pattern listener saw the delete, then jobs.kept's put: no second jobs.gone.
      assertEquals((await collect(watcher, 2)).map(brief), [
        "jobs.gone end null 1",
        "jobs.kept put 2 2",
      ]);
    } finally {
      await b.close();
      await a.close();
    }
  },
});
