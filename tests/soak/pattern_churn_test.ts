/**
 * Issue 13 under churn: node A deletes and makes anew a few streams thousands of times while
 * pattern listeners on node B (Redis) and on one memory hub follow them. Per stream, each
 * listener sees the join frame first, every put in order, `end` at the last position, and a
 * stream made anew announced again with its new epoch (or, where node B missed events, a reset
 * to the new position); at the end each listener stands where the writer stopped. A few
 * seconds.
 */
import { assertEquals } from "@std/assert";
import { Inbox, MessageStream, type StreamEvent } from "../../mod.ts";
import { RedisEngine } from "../../redis.ts";
import { hasRedis, RedisProcess } from "../_redis.ts";
import { prng } from "../_prng.ts";
import { deadline } from "../_wait.ts";

const STREAMS = 50;
const OPS = 3000;

/** Follows an inbox and checks every event; resolves `done` when `until` holds. */
function follow(inbox: Inbox) {
  const at = new Map<string, [string, number]>();
  const bad: string[] = [];
  let events = 0;
  const reading = (async () => {
    for await (const e of inbox as AsyncIterable<StreamEvent>) {
      events++;
      const cur = at.get(e.stream);
      if (e.kind === "header" && !cur) at.set(e.stream, [e.epoch, e.seq]);
      else if (!cur) bad.push(`${e.stream}: ${e.kind} ${e.seq} before its join frame`);
      else if (e.kind === "put") {
        if (cur[0] !== e.epoch || cur[1] + 1 !== e.seq) {
          bad.push(`${e.stream}: put ${e.seq} after ${cur[1]} (same epoch: ${cur[0] === e.epoch})`);
        }
        at.set(e.stream, [e.epoch, e.seq]);
      } else if (e.kind === "end") {
        if (cur[0] !== e.epoch || cur[1] !== e.seq) bad.push(`${e.stream}: end off its position`);
        at.delete(e.stream);
      } else if (e.kind === "reset") {
        // Allowed to a listener already following (PROTOCOL.md: a node that missed events and
        // cannot catch up); the puts after it follow from its position.
        at.set(e.stream, [e.epoch, e.seq]);
      } else if (e.kind === "header") {
        if (cur[0] !== e.epoch || cur[1] !== e.seq) {
          bad.push(`${e.stream}: header off its position`);
        }
      }
    }
  })();
  return { at, bad, reading, events: () => events };
}

for (const kind of ["memory", "redis"] as const) {
  Deno.test({
    name:
      `${kind}: pattern listeners keep every stream's guarantee while streams are deleted and made anew`,
    ignore: kind === "redis" && !hasRedis,
    fn: async () => {
      await using redis = kind === "redis" ? await RedisProcess.start() : undefined;
      const prefix = `p${crypto.randomUUID().slice(0, 8)}:`;
      const hub = () =>
        new MessageStream(redis ? { engine: new RedisEngine({ url: redis.url, prefix }) } : {});
      const a = hub();
      const b = redis ? hub() : a;
      const random = prng(13);
      const followers = Array.from({ length: 3 }, () => {
        const inbox = new Inbox({ maxEvents: 100_000 });
        return { inbox, f: follow(inbox) };
      });
      try {
        const live = new Map<string, [string, number]>();
        for (let i = 0; i < STREAMS; i++) {
          const at = await a.put(`jobs.${i}`, 0);
          live.set(`jobs.${i}`, [at.epoch, at.seq]);
        }
        // Twenty operations at a time (node A keeps their order), so that node B is still
        // joining a stream when it goes and comes back.
        for (let op = 0; op < OPS; op += 20) {
          if (op % 1000 === 0) {
            // Listeners join while the churn goes on.
            await b.listen({ pattern: "jobs.*" }, followers[op / 1000]!.inbox);
          }
          const batch: Promise<[string, [string, number] | undefined]>[] = [];
          for (let i = op; i < op + 20; i++) {
            const name = `jobs.${Math.floor(random() * STREAMS)}`;
            batch.push(
              random() < 0.3
                ? a.delete(name).then(() => [name, undefined])
                : a.put(name, i).then((at) => [name, [at.epoch, at.seq]]),
            );
          }
          for (const [name, at] of await Promise.all(batch)) {
            if (at) live.set(name, at);
            else live.delete(name);
          }
        }
        const want = [...live].sort().map(([s, [e, n]]) => `${s} ${e} ${n}`);
        for (const { f } of followers) {
          const now = () => [...f.at].sort().map(([s, [e, n]]) => `${s} ${e} ${n}`);
          let waiting = true;
          await deadline(
            (async () => {
              while (waiting && JSON.stringify(now()) !== JSON.stringify(want) && !f.bad.length) {
                await new Promise((ok) => setTimeout(ok, 20));
              }
            })(),
            () => `listeners to stand where the writer stopped (${f.events()} events)`,
          ).catch(() => {}).finally(() => waiting = false);
          assertEquals(f.bad.slice(0, 5), []);
          assertEquals(now(), want);
        }
      } finally {
        for (const { inbox } of followers) inbox.close();
        for (const { f } of followers) await f.reading.catch(() => {});
        await a.close();
        if (b !== a) await b.close();
      }
    },
  });
}
