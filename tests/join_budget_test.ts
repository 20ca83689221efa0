// A pattern join that would take the memory budget past its maximum mid-way (issue 11, H2
// item 5): refused with limit_exceeded (max_memory), the partial join undone, nobody else
// affected; on the memory core, the durable core and the Redis engine. And joins take turns
// (item 2): one slice of one join per turn of the event loop, however many are in progress.
import { assert, assertEquals } from "@std/assert";
import { FOLLOW_COST, LISTEN_COST, PATTERN_COST } from "../budget.ts";
import { MessageStream, type StreamEvent } from "../mod.ts";
import type { MessageServer, ServeOptions } from "../server.ts";
import { withBystander } from "./_bystander.ts";
import { connectRaw, type Frame } from "./_raw_client.ts";
import { hasRedis, RedisProcess } from "./_redis.ts";
import { deadline } from "./_wait.ts";

/** Streams the holder keeps (by listening): the join walks all of them. */
const N = 680;

/**
 * Fills a 1 MiB budget with N streams held by a listener, then has `bad` listen to the pattern
 * that matches them all: there is room for the pattern and some of its streams, not all.
 */
async function joinPastTheBudget(options: ServeOptions, perFollow: number): Promise<void> {
  await withBystander({ maxMemory: 1 << 20, ...options }, async (server: MessageServer, bad) => {
    const holder = await connectRaw(server.addr.port);
    try {
      for (let i = 0; i < N; i++) {
        await holder.send({ action: "listen", stream: `jobs.${i}`, id: i });
      }
      for (let i = 0; i < N; i++) {
        const f = await holder.next();
        assertEquals([f.action, f.id], ["ok", i]);
      }
      const memory = server.hub.memory;
      const room = memory.max - memory.historyReserve - memory.held;
      assert(room > PATTERN_COST && room < PATTERN_COST + N * perFollow, `room ${room}`);
      const listensBefore = memory.parts().listens;

      await bad.send({ action: "listen", pattern: "jobs.*", id: "p" });
      let joined = 0;
      let answer: Frame;
      for (;;) {
        answer = await bad.next();
        if (answer.id === "p") break;
        assertEquals([answer.action, answer.header], ["put", true]);
        joined++;
      }
      assertEquals([answer.action, answer.code, answer.limit], [
        "error",
        "limit_exceeded",
        "max_memory",
      ]);
      const budget = "the server's memory budget of 1048576 bytes is spent";
      if (options.redis) {
        // The engine joins each stream as a listen of the pattern's proxy.
        assert(
          /^Cannot follow stream "jobs\.\d+" for a pattern: /.test(String(answer.message)) &&
            String(answer.message).endsWith(budget),
          String(answer.message),
        );
      } else assertEquals(answer.message, `Cannot listen to pattern "jobs.*": ${budget}`);
      assert(joined < N, `${joined} joined`);
      // Undone: the budget is as before the join, and the streams it reached do not reach it.
      assertEquals(memory.parts().listens, listensBefore);
      assertEquals(server.metrics.limits.max_memory, 1);
      await holder.send({ action: "put", stream: "jobs.0", message: "after", id: "put" });
      assertEquals((await holder.next()).action, "put"); // its own listen's event
      assertEquals((await holder.next()).id, "put");
      await bad.send({ action: "ping", id: "ping" });
      assertEquals(await bad.next(), { action: "pong", id: "ping" });
      // The connection is still served: a smaller pattern fits.
      await bad.send({ action: "listen", pattern: "jobs.1", id: "small" });
      assertEquals([(await bad.next()).stream, (await bad.next()).id], ["jobs.1", "small"]);
    } finally {
      await holder.close();
    }
  });
}

Deno.test("memory core: a pattern join past the memory budget is refused and undone; a bystander gets every put", async () => {
  await joinPastTheBudget({}, 128);
});

Deno.test("durable core: a pattern join past the memory budget is refused and undone; a bystander gets every put", async () => {
  const dir = await Deno.makeTempDir();
  try {
    await joinPastTheBudget({ data: `${dir}/data.db` }, 128);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test({
  name:
    "Redis engine: a pattern join past the memory budget is refused and undone; a bystander gets every put",
  ignore: !hasRedis,
  async fn() {
    await using redis = await RedisProcess.start();
    await joinPastTheBudget({ redis: redis.url, redisPrefix: "join-budget:" }, 256);
  },
});

Deno.test("Pattern joins take turns: one join's catch-up per turn of the event loop, however many are in progress", async () => {
  const hub = new MessageStream();
  try {
    for (let i = 0; i < 20_000; i++) await hub.put(`jobs.${i}`, i);
    // A turn counter: it moves once per turn of the loop (its timer fires with the joins').
    let turn = 0;
    let ticking = true;
    const tick = () => {
      turn++;
      if (ticking) setTimeout(tick, 0);
    };
    setTimeout(tick, 0);
    const seen: Map<number, Set<number>> = new Map();
    const joins = Array.from({ length: 10 }, (_, k) => {
      const queue = {
        put(_ev: StreamEvent) {
          let s = seen.get(turn);
          if (!s) seen.set(turn, s = new Set());
          s.add(k);
        },
      };
      return hub.listen({ pattern: "jobs.*" }, queue);
    });
    const done = await deadline(Promise.all(joins), "10 joins over 20,000 streams");
    ticking = false;
    assertEquals(done.map((j) => j.streams), Array(10).fill(20_000));
    // Each join took several turns (they yield), and no turn served two joins.
    assert(seen.size >= 10, `${seen.size} turns`);
    const shared = [...seen].filter(([, s]) => s.size > 1);
    assertEquals(shared, []);
  } finally {
    await hub.close();
  }
});

Deno.test("A new stream is admitted with what its pattern listeners' follows cost: past the budget it is refused", async () => {
  const max = 1 << 20;
  const hub = new MessageStream({ maxMemory: max });
  try {
    // 400 listeners of "*": each new stream is followed 400 times (128 bytes each, 51,200 in
    // all) besides its own 1 KiB and the listen that makes it.
    const queues = Array.from({ length: 400 }, () => ({ put(_ev: StreamEvent) {} }));
    for (const q of queues) await hub.listen({ pattern: "*" }, q);
    const memory = hub.memory;
    let made = 0;
    let refused: unknown;
    for (let i = 0; i < 100 && !refused; i++) {
      refused = await hub.listen(`s${i}`, { put() {} }).then(() => void made++, (e) => e);
    }
    assertEquals([(refused as Error)?.name, (refused as { limit?: string })?.limit], [
      "LimitExceededError",
      "max_memory",
    ]);
    // The budget held: what the streams and their follows cost stayed within it.
    assert(memory.held <= memory.max - memory.historyReserve, `${memory.held} held`);
    const room = memory.max - memory.historyReserve - 400 * PATTERN_COST;
    // Each: the stream (1 KiB + 2 bytes a character), its listen, its 400 follows.
    const each = (i: number) => 1024 + 2 * `s${i}`.length + LISTEN_COST + 400 * FOLLOW_COST;
    assertEquals(made, 9);
    assert(each(0) * 9 <= room && each(0) * 10 > room, `${room} room`);
  } finally {
    await hub.close();
  }
});
