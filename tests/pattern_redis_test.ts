/**
 * Pattern listens on both engines, node to node: a RemoteStream follows a pattern on server B
 * while streams are created and written through server A (for memory, one hub behind both).
 * Header first per stream, a new stream announced before its first put, gapless while puts
 * race, end per stream with the pattern kept, nothing from outside the pattern.
 */
import { assertEquals } from "@std/assert";
import { Inbox, MessageStream, type StreamEvent } from "../mod.ts";
import { RedisEngine } from "../redis.ts";
import { serve } from "../server.ts";
import { RemoteStream } from "../client.ts";
import { collect } from "./_recorder.ts";
import { hasRedis, RedisProcess } from "./_redis.ts";
import { deadline } from "./_wait.ts";

type Kind = "memory" | "redis";

async function hubs(kind: Kind): Promise<[MessageStream, MessageStream, () => Promise<void>]> {
  if (kind === "memory") {
    const hub = new MessageStream();
    return [hub, hub, () => hub.close()];
  }
  const redis = await RedisProcess.start();
  const prefix = `p${crypto.randomUUID().slice(0, 8)}:`;
  const a = new MessageStream({ engine: new RedisEngine({ url: redis.url, prefix }) });
  const b = new MessageStream({ engine: new RedisEngine({ url: redis.url, prefix }) });
  return [a, b, async () => {
    await a.close();
    await b.close();
    await redis[Symbol.asyncDispose]();
  }];
}

const brief = (e: StreamEvent) => `${e.stream} ${e.kind} ${JSON.stringify(e.message)} ${e.seq}`;

for (const kind of ["memory", "redis"] as Kind[]) {
  Deno.test({
    name: `${kind}: a pattern listener on node B gets streams made on node A, header first, no gap`,
    ignore: kind === "redis" && !hasRedis,
    fn: async () => {
      const [a, b, done] = await hubs(kind);
      try {
        await using server = serve({ port: 0, hub: b, logLevel: "silent" });
        await a.header("jobs.old", "h");
        await a.put("jobs.old", 1);
        await a.put("other", 1);
        await using remote = await RemoteStream.connect({ port: server.addr.port });
        const inbox = new Inbox();
        assertEquals(await remote.listen({ pattern: "jobs.*" }, inbox), {
          pattern: "jobs.*",
          streams: 1,
        });
        assertEquals((await collect(inbox, 1)).map(brief), ['jobs.old header "h" 1']);
        // A new stream on node A: announced, then every put, in order.
        await a.put("jobs.new", "a");
        await a.put("other", 2);
        await a.put("jobs.new", "b");
        await a.put("jobs.old", 2);
        const got = (await collect(inbox, 4)).map(brief);
        assertEquals(got.filter((l) => l.startsWith("jobs.new")), [
          "jobs.new header null 0",
          'jobs.new put "a" 1',
          'jobs.new put "b" 2',
        ]);
        assertEquals(got.filter((l) => l.startsWith("jobs.old")), ["jobs.old put 2 2"]);
        // Delete: end for that stream; the pattern stays and sees it made anew.
        await a.delete("jobs.old");
        assertEquals((await collect(inbox, 1)).map(brief), ["jobs.old end null 2"]);
        await a.put("jobs.old", "again");
        assertEquals((await collect(inbox, 2)).map(brief), [
          "jobs.old header null 0",
          'jobs.old put "again" 1',
        ]);
        // Puts racing on many streams: per stream, header first, then every seq.
        const streams = 40;
        const writes: Promise<unknown>[] = [];
        for (let n = 1; n <= 5; n++) {
          for (let i = 0; i < streams; i++) writes.push(a.put(`jobs.r${i}`, n));
        }
        await deadline(Promise.all(writes), "the racing puts");
        const raced = await collect(inbox, streams * 6);
        const last = new Map<string, number>();
        for (const ev of raced) {
          const prev = last.get(ev.stream);
          if (prev === undefined) assertEquals([ev.kind, ev.seq], ["header", 0], ev.stream);
          else assertEquals([ev.kind, ev.seq], ["put", prev + 1], ev.stream);
          last.set(ev.stream, ev.seq);
        }
        assertEquals(last.size, streams);
        for (const seq of last.values()) assertEquals(seq, 5);
        assertEquals(inbox.size, 0, "nothing from outside the pattern");
        inbox.close();
      } finally {
        await done();
      }
    },
  });
}
