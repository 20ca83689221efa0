/**
 * Issue 12: every accepted message reaches every door, exactly once, or the listener is told.
 *
 * One publisher on TCP puts numbered messages. Five listeners follow the stream through the other
 * doors and clients: a raw TCP client and a WebSocket that resume with `since` by hand, a real
 * `EventSource` (npm `eventsource`, resuming with `Last-Event-ID`), a `RemoteStream`, and the
 * `msgstream listen` command line. Proxies cut every listener's connection several times, and
 * the service loses its state once: the server restarts (memory engine), or Redis restarts empty
 * (Redis engine). Each listener must end with the published messages in order, no duplicate, and
 * a gap only where a `reset` announced it.
 *
 * @module
 */

import { assert, assertEquals } from "@std/assert";
import { EventSource } from "eventsource";
import { TextLineStream } from "@std/streams/text-line-stream";
import { Inbox } from "../../mod.ts";
import { RemoteStream } from "../../client.ts";
import { TcpProxy } from "../_proxy.ts";
import { connectRaw, type RawClient } from "../_raw_client.ts";
import { hasRedis, RedisProcess } from "../_redis.ts";
import { deadline, Signal } from "../_wait.ts";

const ROOT = new URL("../..", import.meta.url).pathname;
const STREAM = "soak";
/** Messages published; cuts and the restart fall among them. */
const TOTAL = 400;
const SOAK_DEBUG = Deno.env.get("SOAK_DEBUG") === "1";
const CUTS_AT = [60, 140, 260, 340];
const RESTART_AT = 200;

type Frame = Record<string, unknown>;
/** What a listener saw, in order: a put's message number, or a reset. */
type Seen = number | "reset";

function freePort(): number {
  const l = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (l.addr as Deno.NetAddr).port;
  l.close();
  return port;
}

/** The server as a child process on fixed ports, restartable (a crash, then a start). */
class Server implements AsyncDisposable {
  readonly port = freePort();
  readonly httpPort = freePort();
  #child: Deno.ChildProcess | undefined;
  readonly #args: string[];

  constructor(args: string[]) {
    this.#args = args;
  }

  async start(): Promise<void> {
    for (let attempt = 0; attempt < 50; attempt++) {
      const child = new Deno.Command(Deno.execPath(), {
        args: [
          "run",
          "-N",
          "--allow-env",
          "server.ts",
          "--port",
          String(this.port),
          "--http-port",
          String(this.httpPort),
          "--log-level",
          "error",
          ...this.#args,
        ],
        cwd: ROOT,
        env: { NO_COLOR: "1" },
        stdin: "null",
        stdout: "piped",
        stderr: SOAK_DEBUG ? "inherit" : "null",
      }).spawn();
      const reader = child.stdout.pipeThrough(new TextDecoderStream()).getReader();
      let out = "";
      while (!out.includes("\n")) {
        const r = await deadline(reader.read(), "the server's first line");
        if (r.done) break;
        out += r.value;
      }
      reader.releaseLock();
      child.stdout.cancel().catch(() => {});
      if (out.includes("listening")) {
        this.#child = child;
        return;
      }
      await child.status; // the port is still held by the killed one: again
      await new Promise((r) => setTimeout(r, 100));
    }
    throw new Error("The server did not start");
  }

  async kill(): Promise<void> {
    try {
      this.#child?.kill("SIGKILL");
    } catch { /* gone */ }
    await this.#child?.status;
    this.#child = undefined;
  }

  [Symbol.asyncDispose](): Promise<void> {
    return this.kill();
  }
}

/** One listener's record, and a signal for each new event. */
class Follower {
  readonly seen: Seen[] = [];
  readonly signal: Signal = new Signal();
  constructor(readonly name: string) {}

  take(kind: unknown, message: unknown): void {
    if (kind === "reset") this.seen.push("reset");
    else if (kind === "put" && typeof message === "number") this.seen.push(message);
    this.signal.notify();
  }

  has(n: number): boolean {
    return this.seen.includes(n);
  }
}

/**
 * A raw TCP or WebSocket listener that resumes by hand: on every drop it connects again and
 * listens with `since` = the last position it processed.
 */
function resumeByHand(
  f: Follower,
  open: (onFrame: (fr: Frame) => void, onEnd: () => void) => Promise<(fr: Frame) => void>,
): { joined: Promise<void>; stop: () => void } {
  let position: { epoch: string; seq: number } | undefined;
  let stopped = false;
  const joined = Promise.withResolvers<void>();
  const connect = async (): Promise<void> => {
    while (!stopped) {
      try {
        const ended = Promise.withResolvers<void>();
        const send = await open((fr) => {
          if (typeof fr.epoch === "string" && typeof fr.seq === "number") {
            if (fr.action !== "ok") position = { epoch: fr.epoch, seq: fr.seq };
          }
          if (fr.action === "ok" && fr.id === "join") {
            position ??= { epoch: fr.epoch as string, seq: fr.seq as number };
            joined.resolve();
          }
          f.take(fr.action, fr.message);
        }, () => ended.resolve());
        send({
          action: "listen",
          stream: STREAM,
          id: "join",
          ...(position ? { since: position } : {}),
        });
        await ended.promise;
      } catch {
        // refused (the server is restarting): try again
      }
      await new Promise((r) => setTimeout(r, 50));
    }
  };
  connect();
  return { joined: joined.promise, stop: () => stopped = true };
}

/** Checks one listener: published order, no duplicate, a gap only after a reset. */
function check(f: Follower, acked: Set<number>, last: number): void {
  let prev = 0;
  let resetSince = false;
  for (const s of f.seen) {
    if (s === "reset") {
      resetSince = true;
      continue;
    }
    assert(s > prev, `${f.name}: ${s} after ${prev} (duplicate or out of order)`);
    if (!resetSince) {
      for (let m = prev + 1; m < s; m++) {
        assert(!acked.has(m), `${f.name}: ${m} missing between ${prev} and ${s}, no reset`);
      }
    }
    prev = s;
    resetSince = false;
  }
  assertEquals(prev, last, `${f.name}: the last message`);
}

for (const engine of ["memory", "redis"] as const) {
  Deno.test({
    name: `[${engine}] every listener on every door gets each message once, or a reset`,
    ignore: engine === "redis" && !hasRedis,
    sanitizeResources: false,
    sanitizeOps: false,
    async fn() {
      await using redis = engine === "redis" ? await RedisProcess.start() : undefined;
      await using server = new Server(redis ? ["--redis", redis.url] : []);
      await server.start();
      await using tcpProxy = new TcpProxy(server.port);
      await using httpProxy = new TcpProxy(server.httpPort);
      const followers: Follower[] = [];
      const stops: (() => void | Promise<void>)[] = [];

      // 1. Raw TCP, resuming by hand.
      const tcp = new Follower("tcp");
      followers.push(tcp);
      const tcpRun = resumeByHand(tcp, async (onFrame, onEnd) => {
        const raw: RawClient = await connectRaw(tcpProxy.port);
        (async () => {
          for (;;) {
            const fr = await raw.nextOrEnd(120_000).catch(() => undefined);
            if (fr === undefined) break;
            onFrame(fr);
          }
          await raw[Symbol.asyncDispose]().catch(() => {});
          onEnd();
        })();
        return (fr) => void raw.send(fr).catch(() => {});
      });
      stops.push(tcpRun.stop);

      // 2. WebSocket, resuming by hand.
      const ws = new Follower("websocket");
      followers.push(ws);
      const wsRun = resumeByHand(ws, (onFrame, onEnd) =>
        new Promise((resolve, reject) => {
          const socket = new WebSocket(`ws://127.0.0.1:${httpProxy.port}/ws`);
          socket.onmessage = (e) => onFrame(JSON.parse(e.data));
          socket.onopen = () => resolve((fr) => socket.send(JSON.stringify(fr)));
          socket.onerror = () => reject(new Error("WebSocket failed"));
          socket.onclose = () => onEnd();
        }));
      stops.push(wsRun.stop);

      // 3. A real EventSource: it resumes with Last-Event-ID by itself.
      const sse = new Follower("sse");
      followers.push(sse);
      const es = new EventSource(`http://127.0.0.1:${httpProxy.port}/streams/${STREAM}`);
      const sseJoined = Promise.withResolvers<void>();
      es.addEventListener("joined", () => sseJoined.resolve());
      es.addEventListener("error", (e) => {
        // deno-lint-ignore no-console
        if (SOAK_DEBUG) console.error("sse error", (e as { code?: number }).code, e.message);
      });
      for (const kind of ["put", "reset"]) {
        es.addEventListener(kind, (e) => {
          const m = e as MessageEvent;
          // deno-lint-ignore no-console
          if (SOAK_DEBUG && kind === "reset") console.error("sse reset", m.lastEventId, m.data);
          sse.take(kind, JSON.parse(m.data));
        });
      }
      stops.push(() => es.close());

      // 4. RemoteStream: reconnects and resumes by itself.
      const rs = new Follower("RemoteStream");
      followers.push(rs);
      const remote = await RemoteStream.connect({
        port: tcpProxy.port,
        reconnectTimeWait: 50,
        reconnectJitter: 10,
        maxReconnectAttempts: -1,
      });
      const inbox = new Inbox();
      await remote.listen(STREAM, inbox);
      (async () => {
        try {
          for await (const ev of inbox) rs.take(ev.kind, ev.message);
        } catch { /* ends at close */ }
      })();
      stops.push(() => remote.close());

      // 5. The command line.
      const cli = new Follower("cli");
      followers.push(cli);
      const child = new Deno.Command(Deno.execPath(), {
        args: [
          "run",
          "-N",
          "cli.ts",
          "listen",
          STREAM,
          "--server",
          `127.0.0.1:${tcpProxy.port}`,
          "--reconnect-attempts=-1",
          "--reconnect-wait",
          "50",
        ],
        cwd: ROOT,
        env: { NO_COLOR: "1" },
        stdin: "null",
        stdout: "piped",
        stderr: "null",
      }).spawn();
      const cliLines = child.stdout.pipeThrough(new TextDecoderStream()).pipeThrough(
        new TextLineStream(),
      );
      (async () => {
        for await (const line of cliLines) {
          const ev = JSON.parse(line);
          cli.take(ev.kind, ev.message);
        }
      })();
      stops.push(() => {
        try {
          child.kill("SIGTERM");
        } catch { /* gone */ }
      });

      try {
        await deadline(
          Promise.all([tcpRun.joined, wsRun.joined, sseJoined.promise]),
          "every listener to join",
        );
        // The CLI prints nothing until the first event: it has joined once the hub counts it.
        // RemoteStream joined in its listen(). Wait for the hub's count through a stat.
        await using probe = await connectRaw(server.port);
        for (let i = 0;; i++) {
          await probe.send({ action: "stat", stream: STREAM, id: i });
          const ok = await deadline(probe.next(), "stat");
          const stat = ok.stat as { listeners: number } | null;
          if (stat && stat.listeners >= 5) break;
          if (i > 200) throw new Error(`Listeners never joined: ${JSON.stringify(stat)}`);
          await new Promise((r) => setTimeout(r, 25));
        }

        // The publisher: TCP, straight to the server.
        const acked = new Set<number>();
        let pub: RawClient | undefined;
        let n = 0;
        let restarted = false;
        while (n < TOTAL) {
          const next = n + 1;
          if (CUTS_AT.includes(next)) {
            tcpProxy.cut();
            httpProxy.cut();
          }
          if (next === RESTART_AT && !restarted) {
            // Once: a put refused while Redis comes back is retried with the same number.
            restarted = true;
            if (redis) await redis.restart();
            else {
              await server.kill();
              await server.start();
            }
          }
          try {
            pub ??= await connectRaw(server.port);
            await pub.send({ action: "put", stream: STREAM, message: next, id: next });
            const answer = await deadline(pub.next(), `the answer to put ${next}`);
            if (answer.action === "ok") {
              acked.add(next);
              n = next;
            } else if (answer.code === "engine_unavailable") {
              // Not applied: the same message again, once Redis is back.
              await new Promise((r) => setTimeout(r, 50));
            } else throw new Error(`put ${next}: ${JSON.stringify(answer)}`);
          } catch (e) {
            if (e instanceof Error && e.message.startsWith("put ")) throw e;
            // The connection went with the server: the put may or may not have been applied;
            // the next message gets a new number, so none is ever published twice.
            await pub?.[Symbol.asyncDispose]().catch(() => {});
            pub = undefined;
            n = next;
            await new Promise((r) => setTimeout(r, 50));
          }
          await new Promise((r) => setTimeout(r, 3));
        }
        // Tail messages until every listener is live again (each got one of them), so that the
        // last one reaches everyone: a listener that came back behind a reset has no claim on the
        // messages before it, but must have every one after.
        const live = (f: Follower) => f.seen.some((s) => typeof s === "number" && s > TOTAL);
        const tailUntil = Date.now() + 60_000;
        while (!followers.every(live)) {
          if (Date.now() > tailUntil) {
            throw new Error(
              `Not live again: ${followers.filter((f) => !live(f)).map((f) => f.name)} ` +
                `(EventSource state ${es.readyState})`,
            );
          }
          const next = ++n;
          pub ??= await connectRaw(server.port);
          await pub.send({ action: "put", stream: STREAM, message: next, id: next });
          const answer = await deadline(pub.next(), `the answer to put ${next}`);
          assertEquals(answer.action, "ok", JSON.stringify(answer));
          acked.add(next);
          await Promise.race(
            followers.map((f) => f.signal.wait()).concat(
              new Promise<void>((r) => setTimeout(r, 300)),
            ),
          );
        }
        await pub?.[Symbol.asyncDispose]().catch(() => {});
        const last = Math.max(...acked);
        for (const f of followers) {
          await f.signal.until(
            () => f.has(last),
            () => `${f.name} to get ${last}: last seen ${JSON.stringify(f.seen.slice(-4))}`,
            30_000,
          );
        }
        for (const f of followers) check(f, acked, last);
        // The faults happened: each listener that followed through the loss was told.
        for (const f of followers) {
          assert(f.seen.includes("reset"), `${f.name}: no reset after the service lost its state`);
        }
      } finally {
        for (const stop of stops) await stop();
        await child.status;
      }
    },
  });
}
