/**
 * Several msgstream server processes sharing one real Redis: one order per stream on every
 * node, gapless joins, failover of reconnecting clients to another node, Redis restarts.
 */

import { assert, assertEquals, assertGreater } from "@std/assert";
import type { Position, StreamEvent } from "../mod.ts";
import { RemoteStream } from "../client.ts";
import { ProtocolError } from "../protocol.ts";
import { Recorder } from "./_recorder.ts";
import { TcpProxy } from "./_proxy.ts";
import { hasRedis, RedisProcess } from "./_redis.ts";
import { deadline } from "./_wait.ts";

const serverPath = new URL("../server.ts", import.meta.url).pathname;

/** One `deno run server.ts --redis …` process. */
class Node implements AsyncDisposable {
  readonly child: Deno.ChildProcess;
  readonly port: number;
  #output: Promise<void>;

  private constructor(child: Deno.ChildProcess, port: number, output: Promise<void>) {
    this.child = child;
    this.port = port;
    this.#output = output;
  }

  static async start(redis: RedisProcess, prefix: string, extra: string[] = []): Promise<Node> {
    const child = new Deno.Command(Deno.execPath(), {
      args: [
        "run",
        "-A",
        serverPath,
        "--port",
        "0",
        "--redis",
        redis.url,
        "--redis-prefix",
        prefix,
        "--log-level",
        "error",
        ...extra,
      ],
      stdout: "piped",
      stderr: "inherit",
      stdin: "null",
      env: { NO_COLOR: "1" },
    }).spawn();
    const listening = Promise.withResolvers<number>();
    const output = (async () => {
      let text = "";
      let found = false;
      for await (const chunk of child.stdout.pipeThrough(new TextDecoderStream())) {
        if (found) continue;
        text += chunk;
        const m = text.match(/listening on tcp:\/\/[^\s]+:(\d+)/);
        if (m) {
          found = true;
          listening.resolve(Number(m[1]));
        }
      }
      if (!found) listening.reject(new Error(`Node did not start:\n${text}`));
    })();
    let port: number;
    try {
      port = await deadline(listening.promise, "a cluster node's listening line");
    } catch (e) {
      child.kill("SIGKILL");
      await child.status;
      await output;
      throw e;
    }
    return new Node(child, port, output);
  }

  get address(): string {
    return `127.0.0.1:${this.port}`;
  }

  /** Kills the process at once (no graceful shutdown). */
  async kill(): Promise<void> {
    try {
      this.child.kill("SIGKILL");
    } catch { /* exited */ }
    await this.child.status;
    await this.#output;
  }

  async [Symbol.asyncDispose](): Promise<void> {
    try {
      this.child.kill("SIGTERM");
    } catch { /* exited */ }
    // A node stuck in its shutdown is killed: the test reports its own failure, not a hang.
    await deadline(this.child.status, "a cluster node to exit after SIGTERM").catch(() => {});
    await this.kill();
  }
}

function clusterTest(name: string, fn: (redis: RedisProcess, prefix: string) => Promise<void>) {
  Deno.test({
    name,
    ignore: !hasRedis,
    async fn() {
      await using redis = await RedisProcess.start();
      await fn(redis, `c${crypto.randomUUID().slice(0, 8)}:`);
    },
  });
}

const view = (evs: StreamEvent[]) => evs.map((e) => [e.kind, e.message, e.seq, e.epoch]);

clusterTest(
  "Cluster of 3 nodes: listeners on B and C get A's puts in order, header first",
  async (redis, prefix) => {
    await using a = await Node.start(redis, prefix);
    await using b = await Node.start(redis, prefix);
    await using c = await Node.start(redis, prefix);
    await using pub = await RemoteStream.connect(a.address);
    await using onB = await RemoteStream.connect(b.address);
    await using onC = await RemoteStream.connect(c.address);
    await pub.header("job", { state: "running" });
    const recB = new Recorder("B");
    const recC = new Recorder("C");
    await onB.listen("job", recB);
    await onC.listen("job", recC);
    const puts = Array.from({ length: 500 }, (_, i) => pub.put("job", i));
    assertEquals(
      (await Promise.all(puts)).map((at) => at.seq),
      Array.from({ length: 500 }, (_, i) => i + 1),
    );
    await recB.waitFor(501);
    await recC.waitFor(501);
    assertEquals(recB.events[0]?.kind, "header");
    assertEquals(recB.events[0]?.message, { state: "running" });
    assertEquals(
      recB.events.slice(1).map((e) => e.message),
      Array.from({ length: 500 }, (_, i) => i),
    );
    assertEquals(view(recB.events), view(recC.events));
  },
);

clusterTest(
  "Cluster of 2 nodes: puts from A and B interleave into one order on every listener",
  async (redis, prefix) => {
    await using a = await Node.start(redis, prefix);
    await using b = await Node.start(redis, prefix);
    await using onA = await RemoteStream.connect(a.address);
    await using onB = await RemoteStream.connect(b.address);
    const recA = new Recorder("A");
    const recB = new Recorder("B");
    await onA.listen("job", recA);
    await onB.listen("job", recB);
    const n = 400;
    const seqs = await Promise.all(
      Array.from(
        { length: n },
        (_, i) => (i % 2 ? onA : onB).put("job", `${i % 2 ? "A" : "B"}${i}`),
      ),
    );
    assertEquals(
      seqs.map((at) => at.seq).sort((x, y) => x - y),
      Array.from({ length: n }, (_, i) => i + 1),
    );
    await recA.waitFor(n);
    await recB.waitFor(n);
    assertEquals(view(recA.events), view(recB.events));
    assertEquals(recA.events.map((e) => e.seq), Array.from({ length: n }, (_, i) => i + 1));
    // Each publisher's own puts keep their order.
    const fromA = recA.events.map((e) => e.message as string).filter((m) => m.startsWith("A"));
    assertEquals(fromA, Array.from({ length: n / 2 }, (_, i) => `A${2 * i + 1}`));
  },
);

clusterTest(
  "Cluster join racing a burst on another node has no gap and no duplicate",
  async (redis, prefix) => {
    await using a = await Node.start(redis, prefix);
    await using b = await Node.start(redis, prefix);
    await using pub = await RemoteStream.connect(a.address);
    await pub.header("job", "h");
    const n = 3000;
    const puts: Promise<Position>[] = [];
    for (let i = 0; i < n; i++) puts.push(pub.put("job", i));
    // Join on B while A's burst is under way.
    await puts[n / 3];
    const joiners = await Promise.all([0, 1, 2].map(() => RemoteStream.connect(b.address)));
    const recs = joiners.map((_, i) => new Recorder(`join${i}`));
    const ats = await Promise.all(joiners.map((j, i) => j.listen("job", recs[i] as Recorder)));
    await Promise.all(puts);
    for (const [i, rec] of recs.entries()) {
      const at = ats[i]!;
      await rec.waitForEvent((e) => e.seq === n);
      assertEquals(rec.events[0]?.kind, "header");
      assertEquals(rec.events[0]?.seq, at.seq);
      const seqs = rec.events.slice(1).map((e) => e.seq);
      assertEquals(seqs, Array.from({ length: n - at.seq }, (_, k) => at.seq + k + 1));
      assertEquals(rec.events.slice(1).map((e) => e.message), seqs.map((s) => s - 1));
    }
    await Promise.all(joiners.map((j) => j.close()));
  },
);

clusterTest(
  "Cluster: killing node B moves its listeners to node C with every message exactly once",
  async (redis, prefix) => {
    const extra = ["--history-messages", "20000"];
    await using a = await Node.start(redis, prefix, extra);
    const b = await Node.start(redis, prefix, extra);
    await using c = await Node.start(redis, prefix, extra);
    await using proxy = new TcpProxy(b.port);
    await using pub = await RemoteStream.connect(a.address);
    await pub.header("count", "counting");
    const options = {
      hostname: "127.0.0.1",
      port: proxy.port,
      reconnectTimeWait: 50,
      reconnectJitter: 20,
      maxReconnectAttempts: -1,
    };
    const listeners = await Promise.all([0, 1].map(() => RemoteStream.connect(options)));
    const recs = listeners.map((_, i) => new Recorder(`l${i}`));
    for (const [i, l] of listeners.entries()) await l.listen("count", recs[i] as Recorder);
    const n = 10_000;
    const puts: Promise<Position>[] = [];
    let killed: Promise<void> | undefined;
    for (let i = 0; i < n; i++) {
      puts.push(pub.put("count", i));
      if (i % 500 === 499) await puts[i]; // pace the publisher a little
      if (i === 3000) {
        await recs[0]!.waitFor(1000);
        proxy.target = c.port; // the load balancer now sends new connections to C
        killed = b.kill();
      }
    }
    await Promise.all(puts);
    await killed;
    assert(killed !== undefined);
    for (const rec of recs) {
      await rec.waitForEvent((e) => e.seq === n);
      const puts = rec.events.filter((e) => e.kind === "put");
      assertEquals(rec.events.filter((e) => e.kind === "reset"), []);
      assertEquals(puts.length, n);
      assertEquals(puts.map((e) => e.message), Array.from({ length: n }, (_, i) => i));
    }
    // Both listeners reconnected (through the proxy, now to C).
    assertGreater(proxy.accepted, 3);
    await Promise.all(listeners.map((l) => l.close()));
  },
);

clusterTest(
  "Cluster: a Redis restart fails puts with engine_unavailable, then recovers and tells listeners",
  async (redis, prefix) => {
    await using a = await Node.start(redis, prefix);
    await using b = await Node.start(redis, prefix);
    await using pub = await RemoteStream.connect(a.address);
    await using sub = await RemoteStream.connect(b.address);
    const rec = new Recorder();
    await sub.listen("job", rec);
    const errors: string[] = [];
    let acked = 0;
    const put = async (i: number) => {
      try {
        await pub.put("job", i);
        acked++;
        return true;
      } catch (e) {
        assert(e instanceof ProtocolError, String(e));
        errors.push(e.code);
        return false;
      }
    };
    for (let i = 0; i < 100; i++) assert(await put(i));
    await redis.stop();
    // During the outage: a clear error, nothing silently dropped.
    for (let i = 100; i < 110; i++) assert(!(await put(i)));
    await redis.restart();
    // Redis came back empty: state lost, not a stream deleted (issue 12).
    const reset = await rec.waitForEvent((e) => e.kind === "reset");
    assertEquals(reset.find((ev) => ev.kind === "reset")?.message, { reason: "state_lost" });
    // Publishers retry on engine_unavailable until the node's connection is back.
    let i = 110;
    for (let attempt = 0; !(await put(i)); attempt++) {
      assert(attempt < 200, "node did not recover");
      await new Promise((r) => setTimeout(r, 50));
    }
    for (i = 111; i < 150; i++) assert(await put(i));
    await rec.waitForEvent((e) => e.kind === "put" && e.message === 149);
    assert(
      errors.length >= 10 && errors.every((code) => code === "engine_unavailable"),
      `${errors}`,
    );
    const puts = rec.events.filter((e) => e.kind === "put").map((e) => e.message as number);
    assertEquals(puts, [...Array.from({ length: 100 }, (_, k) => k), ...range(110, 150)]);
    assertEquals(acked, 140);
    const after = rec.events.slice(rec.events.findIndex((e) => e.kind === "reset") + 1)
      .filter((e) => e.kind === "put");
    assertGreater(after.length, 0);
    assertEquals(after.map((e) => e.seq), range(1, after.length + 1));
  },
);

function range(from: number, to: number): number[] {
  return Array.from({ length: to - from }, (_, k) => from + k);
}
