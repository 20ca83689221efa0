/**
 * Issue 12, attack A12: a pattern listen that resumes (`since` by stream) on the Redis engine
 * while a stream it names is made anew must tell the listener that the stream it followed
 * ended; it went straight on to the new stream's header, without `end` or `reset`.
 */
import { assertEquals } from "@std/assert";
import { Inbox, MessageStream, type StreamEvent } from "../mod.ts";
import { RedisEngine } from "../redis.ts";
import { joinProbes } from "../engine.ts";
import { hasRedis, RedisProcess } from "./_redis.ts";
import { collect } from "./_recorder.ts";
import { deadline } from "./_wait.ts";

const brief = (e: StreamEvent) =>
  `${e.stream} ${e.kind} ${JSON.stringify(e.message)} ${e.epoch}:${e.seq}`;

Deno.test({
  name: "redis: a pattern resume whose stream is made anew during the join gets its end first",
  ignore: !hasRedis,
  fn: async () => {
    await using redis = await RedisProcess.start();
    const prefix = `p${crypto.randomUUID().slice(0, 8)}:`;
    const a = new MessageStream({ engine: new RedisEngine({ url: redis.url, prefix }) });
    const announced = Promise.withResolvers<void>();
    // Node B lists the streams (jobs.x is deleted: not listed), then A makes jobs.x anew and B
    // hears of it before the listing is placed: the join follows the new stream from its start.
    let once = false;
    class Racing extends RedisEngine {
      override async *streams(pattern: string): AsyncIterable<string[]> {
        for await (const names of super.streams(pattern)) {
          if (!once) {
            once = true;
            await a.put("jobs.x", 2);
            await deadline(announced.promise, "node B hears that jobs.x was made anew");
          }
          yield names;
        }
      }
      override watchCreated(onCreated: (stream: string, epoch: string) => void): Promise<void> {
        return super.watchCreated((stream, epoch) => {
          onCreated(stream, epoch);
          if (stream === "jobs.x") announced.resolve();
        });
      }
    }
    const b = new MessageStream({ engine: new Racing({ url: redis.url, prefix }) });
    try {
      // A stream the listing finds, so that it has a page.
      await a.put("jobs.y", 1);
      const old = await a.put("jobs.x", 1);
      await a.delete("jobs.x");
      const inbox = new Inbox();
      await b.listen({ pattern: "jobs.*" }, inbox, { since: { "jobs.x": old } });
      const now = await a.put("jobs.x", 3);
      const got = (await collect(inbox, 5)).filter((e) => e.stream === "jobs.x").map(brief);
      assertEquals(got, [
        `jobs.x end null ${old.epoch}:1`,
        `jobs.x header null ${now.epoch}:0`,
        `jobs.x put 2 ${now.epoch}:1`,
        `jobs.x put 3 ${now.epoch}:2`,
      ]);
    } finally {
      await b.close();
      await a.close();
    }
  },
});

Deno.test({
  name:
    "redis: a pattern resume whose stream is deleted and made anew during its catch-up gets its end first",
  ignore: !hasRedis,
  fn: async () => {
    await using redis = await RedisProcess.start();
    const prefix = `p${crypto.randomUUID().slice(0, 8)}:`;
    const a = new MessageStream({ engine: new RedisEngine({ url: redis.url, prefix }) });
    const announced = Promise.withResolvers<void>();
    // Node B lists jobs.x, then A deletes it: B's resuming catch-up finds it absent. Before B
    // places that answer, A makes jobs.x anew, and B hears of it while the join is in flight.
    class Racing extends RedisEngine {
      override async *streams(pattern: string): AsyncIterable<string[]> {
        for await (const names of super.streams(pattern)) {
          await a.delete("jobs.x");
          yield names;
        }
      }
      override watchCreated(onCreated: (stream: string, epoch: string) => void): Promise<void> {
        return super.watchCreated((stream, epoch) => {
          onCreated(stream, epoch);
          if (stream === "jobs.x") announced.resolve();
        });
      }
    }
    const engine = new Racing({ url: redis.url, prefix });
    let once = true;
    joinProbes.set(engine, {
      snapshotReplied: async (stream) => {
        if (stream !== "jobs.x" || !once) return;
        once = false;
        await a.put("jobs.x", 2);
        await deadline(announced.promise, "node B hears that jobs.x was made anew");
      },
    });
    const b = new MessageStream({ engine });
    try {
      const old = await a.put("jobs.x", 1);
      const inbox = new Inbox();
      await b.listen({ pattern: "jobs.*" }, inbox, { since: { "jobs.x": old } });
      const now = await a.put("jobs.x", 3);
      const got = (await collect(inbox, 4)).map(brief);
      assertEquals(got, [
        `jobs.x end null ${old.epoch}:1`,
        `jobs.x header null ${now.epoch}:0`,
        `jobs.x put 2 ${now.epoch}:1`,
        `jobs.x put 3 ${now.epoch}:2`,
      ]);
    } finally {
      await b.close();
      await a.close();
    }
  },
});
