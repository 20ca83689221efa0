/**
 * The original module's demo (`_run_test`), as an ordered script of steps instead of timed
 * threads, run on the in-process hub, through a server with one `RemoteStream` for everything,
 * through a server with one `RemoteStream` connection per queue and per poster, and with the
 * Redis engine: in process, and across two servers sharing one Redis.
 *
 * The expected lists are the original's `seqlines` table, per queue, in order.
 */

import { assertEquals } from "@std/assert";
import { MessageStream, type Streamer, type StreamEvent } from "../mod.ts";
import { serve } from "../server.ts";
import { RemoteStream } from "../client.ts";
import { RedisEngine } from "../redis.ts";
import { Recorder } from "./_recorder.ts";
import { addressOf } from "./_server.ts";
import { hasRedis, RedisProcess } from "./_redis.ts";

type Entry = [stream: string, message: unknown];

/** The original's `seqlines`, per queue, in delivery order. */
function expected(): Record<"Q1" | "Q2" | "Q3", Entry[]> {
  const q1: Entry[] = [];
  const q3: Entry[] = [["M2", ["H2", 25]]];
  for (let k = 0; k <= 2; k++) {
    q1.push(["M1", ["S1", k]], ["M1", ["S2", k]]);
    q3.push(["M1", ["S1", k]], ["M1", ["S2", k]], ["M2", ["S3", k]], ["M2", ["S4", k]]);
  }
  const q2: Entry[] = [["M2", ["H2", 25]]];
  for (let k = 3; k <= 5; k++) q2.push(["M2", ["S3", k]], ["M2", ["S4", k]]);
  return { Q1: q1, Q2: q2, Q3: q3 };
}

const POSTERS: [id: string, stream: string][] = [
  ["S1", "M1"],
  ["S2", "M1"],
  ["S3", "M2"],
  ["S4", "M2"],
];

function isSentinel(ev: StreamEvent): boolean {
  return Array.isArray(ev.message) && ev.message[0] === "sentinel";
}

/** Where each role's calls go. */
interface Setup {
  /** Sets the header and puts sentinels. */
  control: Streamer;
  /** The streamer a poster puts through. */
  poster(id: string): Streamer;
  /** The streamer a queue listens through. */
  listener(queue: string): Streamer;
}

/** Runs the demo's steps; returns what each queue received (sentinels left out). */
async function runDemo(setup: Setup): Promise<Record<"Q1" | "Q2" | "Q3", Entry[]>> {
  const queues = { Q1: new Recorder("Q1"), Q2: new Recorder("Q2"), Q3: new Recorder("Q3") };
  type Q = keyof typeof queues;
  // Which queues listen to which stream, to know whom a sentinel must reach.
  const listening = new Map<string, Set<Q>>([["M1", new Set()], ["M2", new Set()]]);
  let sentinel = 0;

  const listen = async (stream: string, q: Q) => {
    await setup.listener(q).listen(stream, queues[q]);
    listening.get(stream)?.add(q);
  };
  const hangup = (stream: string | null, q: Q) => {
    if (stream === null) {
      setup.listener(q).endqueue(queues[q]);
      for (const set of listening.values()) set.delete(q);
    } else {
      setup.listener(q).hangup(stream, queues[q]);
      listening.get(stream)?.delete(q);
    }
  };
  const post = async (k: number) => {
    // One put at a time, in the order the original's timings gave: S1, S2, S3, S4.
    for (const [id, stream] of POSTERS) await setup.poster(id).put(stream, [id, k]);
  };
  /** Puts a sentinel on every stream and waits until every listening queue has it. */
  const settle = async () => {
    const waits: Promise<unknown>[] = [];
    for (const [stream, qs] of listening) {
      const n = ++sentinel;
      for (const q of qs) {
        waits.push(
          queues[q].waitForEvent((ev) =>
            isSentinel(ev) && ev.stream === stream && (ev.message as unknown[])[1] === n
          ),
        );
      }
      await setup.control.put(stream, ["sentinel", n]);
    }
    await Promise.all(waits);
  };

  await setup.control.header("M2", ["H2", 25]);
  await listen("M1", "Q1");
  await listen("M1", "Q3");
  await listen("M2", "Q3");
  for (let k = 0; k <= 2; k++) await post(k);
  await settle();
  hangup(null, "Q3");
  hangup("M1", "Q1");
  await listen("M2", "Q2");
  for (let k = 3; k <= 5; k++) await post(k);
  await settle();

  const got = {} as Record<Q, Entry[]>;
  for (const q of ["Q1", "Q2", "Q3"] as const) {
    const events = queues[q].events.filter((ev) => !isSentinel(ev));
    got[q] = events.map((ev) => [ev.stream, ev.message]);
    // The header comes first, as a header event; everything after it is a put.
    const kinds = events.map((ev) => ev.kind);
    const headers = q === "Q1" ? 0 : 1;
    assertEquals(kinds, [
      ...Array(headers).fill("header"),
      ...Array(events.length - headers).fill("put"),
    ]);
  }
  return got;
}

Deno.test("MessageStream runs the original demo: each queue gets the seqlines table", async () => {
  const hub = new MessageStream();
  const got = await runDemo({ control: hub, poster: () => hub, listener: () => hub });
  assertEquals(got, expected());
  assertEquals(hub.info("M1")?.listeners ?? 0, 0);
  assertEquals(hub.info("M2")?.listeners, 1);
});

Deno.test("RemoteStream runs the original demo with every queue on one connection", async () => {
  await using server = serve({ port: 0 });
  await using remote = await RemoteStream.connect(addressOf(server));
  const got = await runDemo({ control: remote, poster: () => remote, listener: () => remote });
  assertEquals(got, expected());
});

Deno.test("RemoteStream runs the original demo with one connection per queue and poster", async () => {
  await using server = serve({ port: 0 });
  const remotes = new Map<string, RemoteStream>();
  try {
    for (const name of ["control", "Q1", "Q2", "Q3", "S1", "S2", "S3", "S4"]) {
      remotes.set(name, await RemoteStream.connect(addressOf(server)));
    }
    const get = (name: string) => remotes.get(name) as RemoteStream;
    const got = await runDemo({ control: get("control"), poster: get, listener: get });
    assertEquals(got, expected());
  } finally {
    await Promise.all([...remotes.values()].map((r) => r.close()));
  }
});

Deno.test({
  name: "MessageStream with the Redis engine runs the original demo",
  ignore: !hasRedis,
  async fn() {
    await using redis = await RedisProcess.start();
    const hub = new MessageStream({ engine: new RedisEngine({ url: redis.url }) });
    try {
      const got = await runDemo({ control: hub, poster: () => hub, listener: () => hub });
      assertEquals(got, expected());
    } finally {
      await hub.close();
    }
  },
});

Deno.test({
  name:
    "The original demo runs across two servers sharing one Redis: posters on one, queues on the other",
  ignore: !hasRedis,
  async fn() {
    await using redis = await RedisProcess.start();
    await using a = serve({ port: 0, redis: redis.url, logLevel: "silent" });
    await using b = serve({ port: 0, redis: redis.url, logLevel: "silent" });
    await using queues = await RemoteStream.connect(addressOf(a));
    await using posters = await RemoteStream.connect(addressOf(b));
    const got = await runDemo({ control: posters, poster: () => posters, listener: () => queues });
    assertEquals(got, expected());
  },
});
