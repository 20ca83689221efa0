/**
 * A Redis Cluster failover with sharded pub/sub (A2's attack, /work/stage15/a2/cluster_attack.py
 * `failover`): a master demoted by `CLUSTER FAILOVER` keeps its sharded subscribers subscribed
 * and tells them nothing (Redis 7.0), while the stream's events go out on the new master. A node
 * that did not notice waited for its own puts' events for ever (the puts were never answered) and
 * its listeners went silent with no reset. Now every refresh of the slot map (after a `MOVED`, and
 * every `slotsRefreshInterval`) moves such subscriptions to the slot's master, and the hub
 * resyncs its listeners (catch-up from history, or a reset).
 */

import { assertEquals } from "@std/assert";
import { EngineUnavailableError, MessageStream, type StreamEvent } from "../mod.ts";
import { RedisEngine } from "../redis.ts";
import { Recorder } from "./_recorder.ts";
import { freePort, hasRedis } from "./_redis.ts";
import { deadline, poll } from "./_wait.ts";

async function run(cmd: string, args: string[]): Promise<string> {
  const out = await new Deno.Command(cmd, { args, stdout: "piped", stderr: "piped" }).output();
  const text = new TextDecoder().decode(out.stdout) + new TextDecoder().decode(out.stderr);
  if (!out.success) throw new Error(`${cmd} ${args.join(" ")} failed:\n${text}`);
  return text;
}

const cli = async (port: number, ...args: string[]) =>
  (await run("redis-cli", ["-p", String(port), ...args])).trim();

/** Three masters and a replica of the first, each a redis-server of its own. */
class FailoverCluster implements AsyncDisposable {
  readonly ports = [freePort(), freePort(), freePort(), freePort()];
  readonly #children: Deno.ChildProcess[] = [];
  root = "";

  async start(): Promise<void> {
    this.root = await Deno.makeTempDir({ prefix: "msgstream-failover-" });
    for (const [i, port] of this.ports.entries()) {
      await Deno.mkdir(`${this.root}/${i}`);
      this.#children.push(
        new Deno.Command("redis-server", {
          args: [
            ...["--port", String(port), "--cluster-port", String(freePort())],
            ...["--bind", "127.0.0.1", "--cluster-enabled", "yes"],
            ...["--cluster-config-file", "nodes.conf", "--cluster-node-timeout", "5000"],
            ...["--save", "", "--appendonly", "no", "--dir", `${this.root}/${i}`],
          ],
          stdout: "null",
          stderr: "null",
        }).spawn(),
      );
    }
    await poll(async () => {
      const pongs = await Promise.all(this.ports.map((p) => cli(p, "PING").catch(() => "")));
      return pongs.every((p) => p === "PONG");
    }, "the four redis-servers to answer PING");
    const [m0, m1, m2, replica] = this.ports as [number, number, number, number];
    await run("redis-cli", [
      "--cluster",
      "create",
      ...[m0, m1, m2].map((p) => `127.0.0.1:${p}`),
      ...["--cluster-replicas", "0", "--cluster-yes"],
    ]);
    await poll(async () => (await cli(m0, "CLUSTER", "INFO")).includes("cluster_state:ok"), "ok");
    await run("redis-cli", [
      "--cluster",
      "add-node",
      `127.0.0.1:${replica}`,
      `127.0.0.1:${m0}`,
      "--cluster-slave",
      "--cluster-master-id",
      await cli(m0, "CLUSTER", "MYID"),
    ]);
    await poll(
      async () => (await cli(replica, "INFO", "replication")).includes("master_link_status:up"),
      "the replica to be in sync with the first master",
    );
    await poll(async () => {
      const infos = await Promise.all(this.ports.map((p) => cli(p, "CLUSTER", "INFO")));
      return infos.every((i) => i.includes("cluster_state:ok"));
    }, "every node to see the cluster ok");
  }

  /** Names (with the engine's key layout) whose slot the first master serves. */
  async namesOnFirst(count: number): Promise<string[]> {
    const myid = await cli(this.ports[0]!, "CLUSTER", "MYID");
    const names: string[] = [];
    for (let i = 0; names.length < count; i++) {
      const slot = Number(await cli(this.ports[0]!, "CLUSTER", "KEYSLOT", `{f${i}}`));
      const nodes = await cli(this.ports[0]!, "CLUSTER", "NODES");
      const mine = nodes.split("\n").find((l) => l.startsWith(myid))!.split(" ").slice(8);
      if (
        mine.some((r) => {
          const [lo, hi] = r.split("-").map(Number);
          return slot >= lo! && slot <= (hi ?? lo)!;
        })
      ) names.push(`f${i}`);
    }
    return names;
  }

  /** Kills one redis-server for good (`SIGKILL`). */
  async kill(i: number): Promise<void> {
    const c = this.#children[i]!;
    c.kill("SIGKILL");
    await c.status;
  }

  async [Symbol.asyncDispose](): Promise<void> {
    for (const c of this.#children) {
      try {
        c.kill("SIGKILL");
      } catch { /* exited */ }
      await c.status;
    }
    if (this.root) await Deno.remove(this.root, { recursive: true }).catch(() => {});
  }
}

/** Puts until one is acknowledged (a put during the failover may get engine_unavailable). */
async function putUntilOk(hub: MessageStream, stream: string, message: string): Promise<number> {
  for (;;) {
    try {
      return (await deadline(hub.put(stream, message), `the put of ${message}`)).seq;
    } catch (e) {
      if (!(e instanceof EngineUnavailableError)) throw e;
      await new Promise((r) => setTimeout(r, 50));
    }
  }
}

/** A listener's events are in order: each put follows the previous position, or a reset. */
function assertInStep(events: StreamEvent[], name: string): void {
  let at: [string, number] | undefined;
  for (const e of events) {
    if (e.kind === "put" && at) {
      assertEquals([e.epoch, e.seq], [at[0], at[1] + 1], `${name}: a put out of step`);
    }
    at = [e.epoch, e.seq];
  }
}

Deno.test({
  name: "cluster failover (CLUSTER FAILOVER): a node that only listens and a node that also " +
    "puts both follow the stream on its new master; every put is answered",
  ignore: !hasRedis,
  sanitizeOps: false,
  sanitizeResources: false,
  fn: async () => {
    await using cluster = new FailoverCluster();
    await cluster.start();
    const url = `redis://127.0.0.1:${cluster.ports[1]}`;
    const engine = () => new RedisEngine({ url, cluster: true, prefix: "", connectTimeout: 2000 });
    // listener: follows s1 and never writes; writer: follows s2 and puts on both.
    const listener = new MessageStream({ engine: engine() });
    const writer = new MessageStream({ engine: engine() });
    try {
      const [s1, s2] = await cluster.namesOnFirst(2) as [string, string];
      const r1 = new Recorder("listener's s1");
      const r2 = new Recorder("writer's s2");
      await listener.listen(s1, r1);
      await writer.listen(s2, r2);
      await writer.put(s1, "before");
      await writer.put(s2, "before");
      await r1.waitForEvent((e) => e.message === "before");
      await r2.waitForEvent((e) => e.message === "before");

      const replica = cluster.ports[3]!;
      assertEquals(await cli(replica, "CLUSTER", "FAILOVER"), "OK");
      await poll(
        async () => (await cli(replica, "INFO", "replication")).includes("role:master"),
        "the replica to take over",
      );

      // The writer follows s2: its put waits for its own event, which now goes out on the new
      // master. It is answered, and its listener gets it, or a reset at or past it (the new
      // master is another instance: the epoch changes, see docs/redis.md), then every later put.
      // The listener node never writes, so no MOVED tells it of the failover: its periodic
      // refresh of the slot map does.
      for (const [r, s] of [[r2, s2], [r1, s1]] as const) {
        const seq = await putUntilOk(writer, s, "after");
        await r.waitForEvent((e) => e.message === "after" || (e.kind === "reset" && e.seq >= seq));
        await putUntilOk(writer, s, "later");
        await r.waitForEvent((e) => e.message === "later");
      }
      for (const [r, name] of [[r1, "s1"], [r2, "s2"]] as const) {
        assertInStep(r.events, name);
        const kinds = r.events.map((e) => e.kind === "put" ? e.message : e.kind);
        assertEquals(kinds[0], "before", `${name}: ${kinds.join(", ")}`);
        assertEquals(kinds.at(-1), "later", `${name}: ${kinds.join(", ")}`);
      }
    } finally {
      await Promise.all([listener.close(), writer.close()]);
    }
  },
});

Deno.test({
  name: "cluster, classic pub/sub: the subscriber's node killed for good (replica promoted): the " +
    "subscriber moves to another node and the listener gets the later puts or a reset",
  ignore: !hasRedis,
  sanitizeOps: false,
  sanitizeResources: false,
  fn: async () => {
    await using cluster = new FailoverCluster();
    await cluster.start();
    const engine = (port: number) =>
      new RedisEngine({
        url: `redis://127.0.0.1:${port}`,
        cluster: true,
        shardedPubSub: false,
        prefix: "",
        connectTimeout: 2000,
      });
    // The listener's URL (its one classic subscriber) is the first master, which has a replica.
    const listener = new MessageStream({ engine: engine(cluster.ports[0]!) });
    const writer = new MessageStream({ engine: engine(cluster.ports[1]!) });
    try {
      const [s1] = await cluster.namesOnFirst(1) as [string];
      const r1 = new Recorder("listener's s1");
      await listener.listen(s1, r1);
      await writer.put(s1, "before");
      await r1.waitForEvent((e) => e.message === "before");

      await cluster.kill(0);
      const replica = cluster.ports[3]!;
      await poll(
        async () => (await cli(replica, "INFO", "replication")).includes("role:master"),
        "the replica to take over (cluster-node-timeout 5 s)",
      );
      // Before: the subscriber retried the dead node for ever; the listener got nothing more
      // and no reset.
      const seq = await putUntilOk(writer, s1, "after");
      await r1.waitForEvent((e) => e.message === "after" || (e.kind === "reset" && e.seq >= seq));
      await putUntilOk(writer, s1, "later");
      await r1.waitForEvent((e) => e.message === "later");
      assertInStep(r1.events, "s1");
      const kinds = r1.events.map((e) => e.kind === "put" ? e.message : e.kind);
      assertEquals(kinds[0], "before", kinds.join(", "));
      assertEquals(kinds.at(-1), "later", kinds.join(", "));
    } finally {
      await Promise.all([listener.close(), writer.close()]);
    }
  },
});
