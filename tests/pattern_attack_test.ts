/**
 * Attacks on pattern listens (issue 13) that broke something, each kept as a test: a stream
 * deleted while a pattern join is under way must stay deleted, and one made anew meanwhile must
 * still be followed.
 */
import { assert, assertEquals, assertThrows } from "@std/assert";
import { Inbox, MessageStream, type StreamEvent } from "../mod.ts";
import { RedisEngine } from "../redis.ts";
import { FOLLOW_COST, PATTERN_COST } from "../budget.ts";
import { joinProbes } from "../engine.ts";
import { RemoteStream } from "../client.ts";
import { ProtocolError } from "../protocol.ts";
import { serve } from "../server.ts";
import { TcpProxy } from "./_proxy.ts";
import { connectRaw } from "./_raw_client.ts";
import { hasRedis, RedisProcess } from "./_redis.ts";
import { collect } from "./_recorder.ts";
import { deadline, poll } from "./_wait.ts";

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

Deno.test({
  name: "redis: a stream made anew while a pattern join finds it deleted is still followed",
  ignore: !hasRedis,
  fn: async () => {
    await using redis = await RedisProcess.start();
    const prefix = `p${crypto.randomUUID().slice(0, 8)}:`;
    const a = new MessageStream({ engine: new RedisEngine({ url: redis.url, prefix }) });
    const announced = Promise.withResolvers<void>();
    // Node B lists jobs.x, then A deletes it: B's catch-up finds it absent. Before B places that
    // answer, A makes jobs.x anew, and B hears of the new stream while the join is in flight.
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
      await a.put("jobs.x", 1);
      const inbox = new Inbox();
      await b.listen({ pattern: "jobs.*" }, inbox);
      await a.put("jobs.x", 3);
      const got = (await collect(inbox, 3)).map(brief);
      assertEquals(got, ["jobs.x header null 0", "jobs.x put 2 1", "jobs.x put 3 2"]);
    } finally {
      await b.close();
      await a.close();
    }
  },
});

Deno.test({
  name: "redis: a stream deleted and made anew while a pattern join catches up is followed again",
  ignore: !hasRedis,
  fn: async () => {
    await using redis = await RedisProcess.start();
    const prefix = `p${crypto.randomUUID().slice(0, 8)}:`;
    const a = new MessageStream({ engine: new RedisEngine({ url: redis.url, prefix }) });
    const announced = Promise.withResolvers<void>();
    class Watching extends RedisEngine {
      override watchCreated(onCreated: (stream: string, epoch: string) => void): Promise<void> {
        return super.watchCreated((stream, epoch) => {
          onCreated(stream, epoch);
          if (stream === "jobs.x") announced.resolve();
        });
      }
    }
    const engine = new Watching({ url: redis.url, prefix });
    let once = true;
    // B has the snapshot of jobs.x; before it places it, A deletes jobs.x and makes it anew,
    // and B hears of the new stream while the join is in flight.
    joinProbes.set(engine, {
      snapshotReplied: async (stream) => {
        if (stream !== "jobs.x" || !once) return;
        once = false;
        await a.delete("jobs.x");
        await a.put("jobs.x", 2);
        await deadline(announced.promise, "node B hears that jobs.x was made anew");
      },
    });
    const b = new MessageStream({ engine });
    try {
      await a.put("jobs.x", 1);
      const inbox = new Inbox();
      await b.listen({ pattern: "jobs.*" }, inbox);
      await a.put("jobs.x", 3);
      const got = (await collect(inbox, 5)).map(brief);
      assertEquals(got, [
        "jobs.x header null 1",
        "jobs.x end null 1",
        "jobs.x header null 0",
        "jobs.x put 2 1",
        "jobs.x put 3 2",
      ]);
    } finally {
      await b.close();
      await a.close();
    }
  },
});

Deno.test({
  name:
    "redis: RemoteStream follows its pattern again when the listen after a reconnect met Redis down",
  ignore: !hasRedis,
  fn: async () => {
    await using redis = await RedisProcess.start();
    const prefix = `p${crypto.randomUUID().slice(0, 8)}:`;
    const a = new MessageStream({ engine: new RedisEngine({ url: redis.url, prefix }) });
    const b = new MessageStream({ engine: new RedisEngine({ url: redis.url, prefix }) });
    try {
      await using server = serve({ port: 0, hub: b, logLevel: "silent" });
      await using proxy = new TcpProxy(server.addr.port);
      await using remote = await RemoteStream.connect({
        port: proxy.port,
        reconnectTimeWait: 20,
        reconnectJitter: 0,
      });
      await a.put("jobs.1", 1);
      const inbox = new Inbox();
      await remote.listen({ pattern: "jobs.*" }, inbox);
      assertEquals((await collect(inbox, 1)).map(brief), ["jobs.1 header null 1"]);
      // Redis goes down, then the connection is cut: the client's listen again is refused.
      await redis.stop();
      proxy.cut();
      await poll(async () => {
        const e = await remote.stat("jobs.1").then(() => undefined, (e) => e);
        return e instanceof ProtocolError && e.code === "engine_unavailable";
      }, "the client reconnected and heard engine_unavailable");
      await redis.restart();
      // Redis came back empty: the stream the client resumes is gone, and it hears so.
      assertEquals((await collect(inbox, 1)).map(brief), ["jobs.1 end null 1"]);
      await poll(() => a.put("jobs.1", 2).then(() => true, () => false), "node A writes again");
      assertEquals((await collect(inbox, 2)).map(brief), [
        "jobs.1 header null 0",
        "jobs.1 put 2 1",
      ]);
    } finally {
      await b.close();
      await a.close();
    }
  },
});

Deno.test({
  name: "redis: a pattern counts as one of maxListens, however many streams it matches",
  ignore: !hasRedis,
  fn: async () => {
    await using redis = await RedisProcess.start();
    const prefix = `p${crypto.randomUUID().slice(0, 8)}:`;
    const a = new MessageStream({ engine: new RedisEngine({ url: redis.url, prefix }) });
    const b = new MessageStream({
      engine: new RedisEngine({ url: redis.url, prefix }),
      maxListens: 2,
    });
    try {
      for (let i = 1; i <= 4; i++) await a.put(`jobs.${i}`, i);
      const inbox = new Inbox();
      assertEquals(await b.listen({ pattern: "jobs.*" }, inbox), {
        pattern: "jobs.*",
        streams: 4,
      });
      await a.put("jobs.5", 5);
      assertEquals((await collect(inbox, 6)).map(brief).sort(), [
        "jobs.1 header null 1",
        "jobs.2 header null 1",
        "jobs.3 header null 1",
        "jobs.4 header null 1",
        "jobs.5 header null 0",
        "jobs.5 put 5 1",
      ]);
      // The pattern is one of the two; one more listen fits, a third does not.
      await b.listen("other.1", inbox);
      const refused = await b.listen("other.2", inbox).then(() => undefined, (e) => e);
      assertEquals([refused?.name, refused?.limit], ["LimitExceededError", "max_listens"]);
    } finally {
      await b.close();
      await a.close();
    }
  },
});

Deno.test("memory: each stream a pattern listener follows counts in the memory budget", async () => {
  const hub = new MessageStream({ maxMemory: 1 << 20 });
  try {
    for (let i = 0; i < 100; i++) await hub.put(`jobs.${i}`, i);
    const inboxes = Array.from({ length: 10 }, () => new Inbox());
    for (const inbox of inboxes) await hub.listen({ pattern: "jobs.*" }, inbox);
    assertEquals(hub.memory.parts().listens, 10 * PATTERN_COST + 10 * 100 * FOLLOW_COST);
    // A new stream is followed by all ten; a deleted one by none; a hangup frees its streams.
    await hub.put("jobs.new", 1);
    await hub.delete("jobs.0");
    hub.hangup({ pattern: "jobs.*" }, inboxes[0]!);
    assertEquals(hub.memory.parts().listens, 9 * PATTERN_COST + 9 * 100 * FOLLOW_COST);
    // Followed streams fill the budget (about 14 KiB a listener here): then a pattern listen
    // is refused mid-way and undone (the budget is as before it, within its maximum), and once
    // new streams (each followed by every pattern listener) fill the rest, a put that would
    // make one more stream is refused.
    let listenRefused: unknown;
    let before = 0;
    for (let i = 0; i < 100 && !listenRefused; i++) {
      before = hub.memory.parts().listens;
      listenRefused = await hub.listen({ pattern: "*" }, new Inbox({ maxEvents: 1000 }))
        .then(() => undefined, (e) => e);
    }
    assertEquals(hub.memory.parts().listens, before);
    assert(hub.memory.held <= hub.memory.max - hub.memory.historyReserve, `${hub.memory.held}`);
    let putRefused: unknown;
    for (let i = 0; i < 1000 && !putRefused; i++) {
      putRefused = await hub.put(`jobs.more${i}`, 1).then(() => undefined, (e) => e);
    }
    assertEquals(
      [listenRefused, putRefused].map((
        e,
      ) => [(e as Error)?.name, (e as { limit?: string })?.limit]),
      [["LimitExceededError", "max_memory"], ["LimitExceededError", "max_memory"]],
    );
  } finally {
    await hub.close();
  }
});

Deno.test("serve refuses --stream-ttl with --redis instead of ignoring it", async () => {
  const out = await new Deno.Command(Deno.execPath(), {
    args: [
      "run",
      "-A",
      new URL("../server.ts", import.meta.url).pathname,
      "--port",
      "0",
      "--redis",
      "redis://127.0.0.1:1",
      "--stream-ttl",
      "100",
    ],
    stdout: "piped",
    stderr: "piped",
  }).output();
  const stderr = new TextDecoder().decode(out.stderr);
  assertEquals([out.code, new TextDecoder().decode(out.stdout)], [2, ""]);
  assertEquals(
    stderr,
    "msgstream: Option streamTtl (100) is not applied with an engine: the engine keeps streams until they are deleted\n",
  );
});

Deno.test("MessageStream refuses streamTtl with an engine", () => {
  assertThrows(
    () =>
      new MessageStream({ engine: new RedisEngine({ url: "redis://127.0.0.1:1" }), streamTtl: 1 }),
    TypeError,
    "Option streamTtl (1) is not applied with an engine",
  );
});

Deno.test("memory: requests after a pattern listen are answered after its ok, in order", async () => {
  const hub = new MessageStream();
  // Enough streams that the join yields to the event loop (it works in slices of a few ms).
  for (let i = 0; i < 20_000; i++) await hub.put(`jobs.${i}`, i);
  await using server = serve({ port: 0, hub, logLevel: "silent" });
  await using raw = await connectRaw(server.addr.port);
  await raw.write(
    JSON.stringify({ action: "listen", pattern: "jobs.*", id: 1 }) + "\n" +
      JSON.stringify({ action: "hangup", pattern: "jobs.*", id: 2 }) + "\n" +
      JSON.stringify({ action: "listen", stream: "other", id: 3 }) + "\n",
  );
  const answers: unknown[] = [];
  while (answers.length < 3) {
    const f = await raw.next();
    if (f.action === "ok" || f.action === "error") answers.push([f.id, f.action, f.streams]);
  }
  assertEquals(answers, [[1, "ok", 20_000], [2, "ok", undefined], [3, "ok", undefined]]);
  await hub.close();
});

for (const kind of ["memory", "redis"] as const) {
  Deno.test({
    name: `${kind}: a pattern resume that gets a reset gets the stream's join frame after it`,
    ignore: kind === "redis" && !hasRedis,
    fn: async () => {
      await using redis = kind === "redis" ? await RedisProcess.start() : undefined;
      const prefix = `p${crypto.randomUUID().slice(0, 8)}:`;
      const hub = () =>
        new MessageStream(redis ? { engine: new RedisEngine({ url: redis.url, prefix }) } : {});
      const a = hub();
      const b = redis ? hub() : a;
      try {
        await a.put("jobs.1", 1);
        const first = await a.stat("jobs.1");
        await a.delete("jobs.1");
        const again = await a.put("jobs.1", 2);
        const inbox = new Inbox();
        await b.listen({ pattern: "jobs.*" }, inbox, {
          since: { "jobs.1": { epoch: first!.epoch, seq: 1 } },
        });
        const got = await collect(inbox, 2);
        assertEquals(got.map(brief), [
          'jobs.1 reset {"reason":"epoch_changed"} 1',
          "jobs.1 header null 1",
        ]);
        assertEquals(got.map((e) => e.epoch), [again.epoch, again.epoch]);
      } finally {
        await a.close();
        if (b !== a) await b.close();
      }
    },
  });
}

Deno.test({
  name: "redis: a stream announced, then made anew before its join, starts with its join frame",
  ignore: !hasRedis,
  fn: async () => {
    await using redis = await RedisProcess.start();
    const prefix = `p${crypto.randomUUID().slice(0, 8)}:`;
    const a = new MessageStream({ engine: new RedisEngine({ url: redis.url, prefix }) });
    let first: Promise<void> | undefined;
    // Node B hears that jobs.x was made; before it joins it, A deletes it and makes it anew (B
    // hears of the new one after it began to join the first).
    class Late extends RedisEngine {
      override watchCreated(onCreated: (stream: string, epoch: string) => void): Promise<void> {
        return super.watchCreated((stream, epoch) => {
          if (stream !== "jobs.x") return onCreated(stream, epoch);
          if (first) return void first.then(() => onCreated(stream, epoch));
          first = (async () => {
            await a.delete("jobs.x");
            await a.put("jobs.x", 2);
            onCreated(stream, epoch);
          })();
        });
      }
    }
    const b = new MessageStream({ engine: new Late({ url: redis.url, prefix }) });
    try {
      const inbox = new Inbox();
      await b.listen({ pattern: "jobs.*" }, inbox);
      await a.put("jobs.x", 1);
      const joined = await collect(inbox, 1);
      await a.put("jobs.x", 3);
      const got = [...joined, ...await collect(inbox, 1)];
      // No reset: the listener never had a position in the stream that went.
      assertEquals(got.map(brief), ["jobs.x header null 1", "jobs.x put 3 2"]);
    } finally {
      await b.close();
      await a.close();
    }
  },
});
