/**
 * The Redis engine's batches (issue 16): the writes of one tick go to Redis as one script call
 * and each stream's events as one message; joins on another node racing those batches stay
 * gapless and duplicate-free, and acknowledgements come only after the script returned.
 */

import { assertEquals, assertInstanceOf, assertThrows } from "@std/assert";
import { EngineUnavailableError, MessageStream, type StreamEvent } from "../mod.ts";
import { RedisEngine, type RedisEngineOptions } from "../redis.ts";
import { Recorder } from "./_recorder.ts";
import { hasRedis, RedisProcess } from "./_redis.ts";
import { deadline } from "./_wait.ts";

type Row = [string, unknown, number];
const view = (evs: StreamEvent[]): Row[] => evs.map((e) => [e.kind, e.message, e.seq]);

const ROUNDS = 40;
const PUTS = 64;
const CHUNK = 8;
const HEADER_EVERY = 10;

/** The events a listener that joined before the burst gets: puts, a header change each 10. */
function burstLog(): Row[] {
  const log: Row[] = [];
  for (let i = 1; i <= PUTS; i++) {
    log.push(["put", i, i]);
    if (i % HEADER_EVERY === 0) log.push(["header", `h${i}`, i]);
  }
  return log;
}

/** The header in effect once `seq` puts were made. */
function headerAt(seq: number): string {
  const last = seq - (seq % HEADER_EVERY);
  return last === 0 ? "h0" : `h${last}`;
}

async function withHubs(
  fn: (a: MessageStream, b: MessageStream, redis: RedisProcess) => Promise<void>,
  options: RedisEngineOptions = {},
): Promise<void> {
  await using redis = await RedisProcess.start();
  const prefix = `b${crypto.randomUUID().slice(0, 8)}:`;
  const a = new MessageStream({ engine: new RedisEngine({ url: redis.url, prefix, ...options }) });
  const b = new MessageStream({ engine: new RedisEngine({ url: redis.url, prefix, ...options }) });
  try {
    await fn(a, b, redis);
  } finally {
    await Promise.all([a.close(), b.close()]);
  }
}

/** Rounds of a burst on `a` racing joins (fresh and resumed) on `b`; every listener is checked. */
function raceRounds(rounds: number, options: RedisEngineOptions = {}): Promise<void> {
  return withHubs(async (a, b) => {
    const log = burstLog();
    for (let round = 0; round < rounds; round++) {
      const stream = `race${round}`;
      await a.header(stream, "h0");
      const first = new Recorder(`first ${round}`);
      await b.listen(stream, first);
      const fresh: { rec: Recorder; joined: Promise<{ seq: number }> }[] = [];
      const resumed: { rec: Recorder; from: number; joined: Promise<unknown> }[] = [];
      const puts: Promise<{ seq: number; epoch: string }>[] = [];
      const headers: Promise<void>[] = [];
      for (let i = 1; i <= PUTS; i++) {
        puts.push(a.put(stream, i));
        if (i % HEADER_EVERY === 0) headers.push(a.header(stream, `h${i}`));
        if (i % CHUNK === 0) {
          const rec = new Recorder(`fresh ${round}.${i}`);
          fresh.push({ rec, joined: b.listen(stream, rec) });
          // Resume from a put acknowledged earlier (its batch is back), while later ones fly.
          if (i > CHUNK) {
            const at = await deadline(puts[i - CHUNK - 1]!, `put ${i - CHUNK} of ${round}`);
            const r = new Recorder(`resumed ${round}.${i}`);
            resumed.push({ rec: r, from: at.seq, joined: b.listen(stream, r, { since: at }) });
          }
        }
      }
      const acks = await deadline(Promise.all(puts), `the burst of round ${round}`);
      await deadline(Promise.all(headers), `the headers of round ${round}`);
      assertEquals(acks.map((p) => p.seq), Array.from({ length: PUTS }, (_, i) => i + 1));
      await first.waitFor(1 + log.length);
      assertEquals(view(first.events), [["header", "h0", 0], ...log], `round ${round}: first`);
      for (const { rec, joined } of fresh) {
        const at = (await deadline(joined, `${rec.name} joined`)).seq;
        // The join header as of the join, then everything after it, in order. A header
        // change at the join's seq falls before or after the join: both are gapless.
        const after = log.filter(([, , seq]) => seq > at);
        const got = view(await rec.waitForEvent((e) => e.kind === "put" && e.seq === PUTS));
        const before = got.length === after.length + 2;
        assertEquals(
          got,
          [
            ["header", headerAt(before ? at - 1 : at), at],
            ...(before ? [["header", `h${at}`, at] as Row] : []),
            ...after,
          ],
          `${rec.name}: joined at ${at}`,
        );
      }
      for (const { rec, from, joined } of resumed) {
        await deadline(joined, `${rec.name} joined`);
        const got = await rec.waitForEvent((e) => e.kind === "put" && e.seq === PUTS);
        assertEquals(
          view(got),
          log.filter(([kind, , seq]) => seq > from || (kind === "header" && seq === from)),
          `${rec.name}: replay and live from ${from}`,
        );
      }
      await a.delete(stream);
    }
  }, options);
}

Deno.test({
  name:
    "RedisEngine: joins on one node racing batched bursts from another lose nothing (40 rounds)",
  ignore: !hasRedis,
  fn: () => raceRounds(ROUNDS),
});

Deno.test({
  name: "RedisEngine: the same race with batches of 3 writes, one batch in flight (20 rounds)",
  ignore: !hasRedis,
  fn: () => raceRounds(20, { maxBatch: 3, maxBatchesInFlight: 1 }),
});

/** Calls of each command Redis counted so far (INFO commandstats), scripts' own calls included. */
async function calls(redis: RedisProcess): Promise<Record<string, number>> {
  const out: Record<string, number> = {};
  for (
    const m of (await redis.cli("INFO", "commandstats")).matchAll(/cmdstat_(\w+):calls=(\d+)/g)
  ) {
    out[m[1] as string] = Number(m[2]);
  }
  return out;
}

Deno.test({
  name: "RedisEngine sends the writes of one tick as one script call, one message per stream",
  ignore: !hasRedis,
  fn: () =>
    withHubs(async (a, b, redis) => {
      const recs = ["x", "y", "z"].map((s) => new Recorder(s));
      for (const [i, s] of ["x", "y", "z"].entries()) await b.listen(s, recs[i]!);
      await a.put("x", 0); // the script is loaded (EVAL once, then EVALSHA)
      await recs[0]!.waitFor(1);
      const before = await calls(redis);
      const writes: Promise<unknown>[] = [];
      for (let i = 1; i <= 100; i++) writes.push(a.put(["x", "y", "z"][i % 3]!, i));
      writes.push(a.header("y", "hy"), a.delete("z"), a.put("z", "again"), a.header("x", null));
      await deadline(Promise.all(writes), "the tick's writes");
      const after = await calls(redis);
      const delta = (c: string) => (after[c] ?? 0) - (before[c] ?? 0);
      assertEquals(delta("evalsha"), 1, "script calls");
      // x and y: one message each; z: one up to its delete, one for the stream made anew, which
      // also announces the new stream on <prefix>created (pattern listens).
      assertEquals(delta("publish"), 5, "messages");
      await recs[2]!.waitForEvent((e) => e.kind === "end");
      assertEquals(
        view(recs[0]!.events).map((r) => r[1]),
        [0, ...Array.from({ length: 33 }, (_, i) => 3 * i + 3)],
      );
      assertEquals(view(recs[1]!.events).at(-1), ["header", "hy", 34]);
      assertEquals(recs[2]!.events.map((e) => e.kind), [...Array(33).fill("put"), "end"]);
    }),
});

Deno.test({
  name: "RedisEngine acknowledges a batch only once its script returned; a lost one is refused",
  ignore: !hasRedis,
  fn: () =>
    withHubs(async (a, _b, redis) => {
      await a.put("job", 0);
      await redis.cli("CLIENT", "PAUSE", "60000", "WRITE");
      let settled = 0;
      const puts = Array.from(
        { length: 20 },
        (_, i) => a.put("job", i + 1).finally(() => settled++),
      );
      // The batch reached Redis and waits there, unexecuted.
      for (let i = 0; !(await redis.cli("CLIENT", "LIST")).includes("cmd=evalsha"); i++) {
        if (i > 200) throw new Error("The batch did not reach Redis");
        await new Promise((r) => setTimeout(r, 10));
      }
      assertEquals(settled, 0, "no put acknowledged before its script ran");
      const settling = Promise.allSettled(puts);
      await redis.restart(); // the paused batch never ran
      const results = await deadline(settling, "the paused batch to fail");
      for (const r of results) {
        assertEquals(r.status, "rejected");
        if (r.status === "rejected") assertInstanceOf(r.reason, EngineUnavailableError);
      }
      assertEquals(settled, 20);
    }),
});

Deno.test("RedisEngine refuses batch bounds that are not positive integers", () => {
  for (
    const [name, value] of [
      ["maxBatch", 0],
      ["maxBatch", 10_001],
      ["maxBatchesInFlight", 0],
      ["maxQueuedChars", -1],
    ]
  ) {
    assertThrows(() => new RedisEngine({ [name as string]: value }), RangeError, name as string);
  }
  new RedisEngine({ maxBatch: 1, maxBatchesInFlight: 1 }); // the smallest bounds are valid
});

Deno.test({
  name: "RedisEngine refuses writes past maxQueuedChars while Redis is slow, and goes on after",
  ignore: !hasRedis,
  fn: () =>
    withHubs(async (a, _b, redis) => {
      await a.put("job", 0);
      await redis.cli("CLIENT", "PAUSE", "60000", "WRITE");
      const first = a.put("job", "x".repeat(10)); // the one batch in flight, held by the pause
      await Promise.resolve(); // its batch goes out (a microtask)
      const queued = a.put("job", "y".repeat(10)); // waits on the node: nothing waited before
      const refused = await a.put("job", "z").then(() => undefined, (e) => e);
      assertInstanceOf(refused, EngineUnavailableError);
      assertEquals(refused.message.includes("maxQueuedChars 12"), true, refused.message);
      await redis.cli("CLIENT", "UNPAUSE");
      const done = await deadline(Promise.all([first, queued]), "the held writes");
      assertEquals(done.map((p) => p.seq), [2, 3]);
      assertEquals((await a.put("job", "after")).seq, 4);
    }, { maxBatchesInFlight: 1, maxQueuedChars: 12 }),
});
