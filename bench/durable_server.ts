#!/usr/bin/env -S deno run -A
// deno-lint-ignore-file no-console -- a program: its output is the table
/**
 * What durability costs through the server: puts per second and put latency (send → `ok`) over
 * TCP for the memory engine, `--data` with each `--fsync` policy, and the Redis engine with
 * `appendfsync everysec` and `always`; then the restart time of `--data` with 100,000 streams.
 * Every configuration runs in the same process, interleaved over the repetitions, each with a
 * fresh server (and a fresh `redis-server` in a temp dir, on a free loopback port).
 *
 * ```sh
 * deno run -A bench/durable_server.ts                      # everything (about 4 minutes)
 * deno run -A bench/durable_server.ts --reps 1 --duration 2 --streams 10000
 * deno run -A bench/durable_server.ts --configs memory,data-always --no-restart
 * ```
 *
 * - **saturated**: one connection keeps `--window` puts in flight (128-byte messages,
 *   round-robin over 100 streams, no listener): puts/s, and p50/p99 of each put's latency.
 * - **paced**: the same connection puts `--rate` puts/s: p50/p99 latency when not queueing.
 * - **restart**: `--streams` streams, each with a 64-byte header and one put, through the server
 *   with `--data` (`--fsync batch`); then a clean stop (SIGTERM) and a crash (SIGKILL), each
 *   followed by a start timed from spawn to the listening line (the store is restored before
 *   the server listens) and to the first answered `listen`. A memory start is the baseline.
 *
 * @module
 */

import { parseArgs } from "@std/cli/parse-args";

const enc = new TextEncoder();
const serverPath = new URL("../server.ts", import.meta.url).pathname;

/** A server configuration. */
interface Config {
  name: string;
  args: (dir: string) => string[];
  redis?: "everysec" | "always";
}

const CONFIGS: Config[] = [
  { name: "memory", args: () => [] },
  ...["always", "batch", "never"].map((fsync) => ({
    name: `data-${fsync}`,
    args: (dir: string) => ["--data", `${dir}/msgstream.db`, "--fsync", fsync],
  })),
  ...(["everysec", "always"] as const).map((appendfsync) => ({
    name: `redis-${appendfsync}`,
    args: () => [],
    redis: appendfsync,
  })),
];

/** A port nobody listens on right now. */
function freePort(): number {
  const l = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (l.addr as Deno.NetAddr).port;
  l.close();
  return port;
}

/** Rejects after `ms` with `what`. */
function within<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  return Promise.race([
    p,
    new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new Error(`Timed out: ${what}`)), ms);
    }),
  ]).finally(() => clearTimeout(timer));
}

/** A `redis-server` with AOF on, in its own temp dir. */
async function startRedis(dir: string, appendfsync: string): Promise<{
  url: string;
  pid: number;
  stop: () => Promise<void>;
}> {
  const port = freePort();
  const child = new Deno.Command("redis-server", {
    args: [
      "--port",
      String(port),
      "--bind",
      "127.0.0.1",
      "--dir",
      dir,
      "--save",
      "",
      "--appendonly",
      "yes",
      "--appendfsync",
      appendfsync,
      "--loglevel",
      "warning",
    ],
    stdin: "null",
    stdout: "null",
    stderr: "null",
  }).spawn();
  await within(
    (async () => {
      while (true) {
        try {
          (await Deno.connect({ hostname: "127.0.0.1", port })).close();
          return;
        } catch {
          await new Promise((r) => setTimeout(r, 20));
        }
      }
    })(),
    10_000,
    "redis-server did not start",
  );
  return {
    url: `redis://127.0.0.1:${port}`,
    pid: child.pid,
    stop: async () => {
      child.kill("SIGTERM");
      await child.status;
    },
  };
}

/** A server process; `ready` is the time from spawn to its listening line. */
interface Server {
  port: number;
  ready: number;
  /** The server's CPU time (ms) from spawn to its listening line: less noisy than `ready`. */
  readyCpu: number;
  child: Deno.ChildProcess;
  stop: (signal?: Deno.Signal) => Promise<void>;
}

async function startServer(args: string[]): Promise<Server> {
  const t0 = performance.now();
  const child = new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", serverPath, "--port", "0", "--log-level", "warn", ...args],
    stdin: "null",
    stdout: "piped",
    stderr: "inherit",
  }).spawn();
  const reader = child.stdout.pipeThrough(new TextDecoderStream()).getReader();
  let text = "";
  const port = await within(
    (async () => {
      while (true) {
        const { value, done } = await reader.read();
        if (done) throw new Error(`The server exited: ${text}`);
        text += value;
        const m = /listening on tcp:\/\/[^\s]+:(\d+)/.exec(text);
        if (m) return Number(m[1]);
      }
    })(),
    120_000,
    "the server's listening line",
  );
  const ready = performance.now() - t0;
  const readyCpu = processTicks(child.pid) * 10;
  // Keep draining stdout so the server never blocks on it.
  const draining = (async () => {
    while (!(await reader.read()).done) { /* discard */ }
  })().catch(() => {});
  return {
    port,
    ready,
    readyCpu,
    child,
    stop: async (signal = "SIGTERM") => {
      try {
        child.kill(signal);
      } catch { /* already gone */ }
      await within(child.status, 30_000, "the server's exit");
      await draining;
    },
  };
}

/** One connection that sends puts and times each `ok` (replies come in request order). */
class Putter {
  readonly conn: Deno.TcpConn;
  readonly lat: number[] = [];
  sent = 0;
  acked = 0;
  errors = 0;
  firstError = "";
  recording = false;
  #sentAt: number[] = [];
  #head = 0;
  #partial = "";
  #waiters: (() => void)[] = [];
  readonly #reading: Promise<void>;
  readonly #pad: string;

  constructor(conn: Deno.TcpConn, readonly streams: number) {
    this.conn = conn;
    this.#pad = "x".repeat(128 - 8);
    this.#reading = this.#read();
  }

  static async connect(port: number, streams: number): Promise<Putter> {
    const conn = await Deno.connect({ hostname: "127.0.0.1", port });
    conn.setNoDelay(true);
    return new Putter(conn, streams);
  }

  /** Writes `n` puts (round-robin over the streams) in one write. */
  async put(n: number): Promise<void> {
    let text = "";
    const now = performance.now();
    for (let i = 0; i < n; i++) {
      const k = this.sent++;
      this.#sentAt.push(now);
      text += `{"action":"put","stream":"bench-${k % this.streams}","id":${k},"message":"` +
        `${String(k % 1e8).padStart(8, "0")}${this.#pad}"}\n`;
    }
    await this.conn.write(enc.encode(text));
  }

  /** Writes raw request lines (each with an `id`, so each gets one reply). */
  async send(lines: string[]): Promise<void> {
    const now = performance.now();
    for (let i = 0; i < lines.length; i++) this.#sentAt.push(now);
    this.sent += lines.length;
    await this.conn.write(enc.encode(lines.join("")));
  }

  /** Resolves at the next reply. */
  reply(): Promise<void> {
    return new Promise((resolve) => this.#waiters.push(resolve));
  }

  async #read(): Promise<void> {
    const dec = new TextDecoder();
    const buf = new Uint8Array(256 * 1024);
    try {
      while (true) {
        const n = await this.conn.read(buf);
        if (n === null) break;
        const lines = (this.#partial + dec.decode(buf.subarray(0, n))).split("\n");
        this.#partial = lines.pop()!;
        const now = performance.now();
        for (const line of lines) {
          if (!line.startsWith('{"action":"ok"')) {
            this.errors++;
            if (!this.firstError) this.firstError = line;
          }
          const at = this.#sentAt[this.#head++]!;
          if (this.recording) this.lat.push(now - at);
          this.acked++;
        }
        if (this.#head > 1 << 16) {
          this.#sentAt = this.#sentAt.slice(this.#head);
          this.#head = 0;
        }
        const ws = this.#waiters;
        this.#waiters = [];
        for (const w of ws) w();
      }
    } catch { /* closed */ }
    const ws = this.#waiters;
    this.#waiters = [];
    for (const w of ws) w();
  }

  /** Waits until every request sent so far is answered. */
  async drain(ms = 60_000): Promise<void> {
    await within(
      (async () => {
        while (this.acked < this.sent) await this.reply();
      })(),
      ms,
      `${this.sent - this.acked} unanswered requests`,
    );
  }

  async close(): Promise<void> {
    try {
      this.conn.close();
    } catch { /* closed */ }
    await this.#reading;
  }
}

function pct(sorted: number[], p: number): number {
  if (sorted.length === 0) return NaN;
  return sorted[Math.min(sorted.length - 1, Math.floor(sorted.length * p))]!;
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)]!;
}

/** Busy and total CPU ticks of the whole machine (Linux `/proc/stat`), or zeros elsewhere. */
function machineTicks(): [number, number] {
  try {
    const f = Deno.readTextFileSync("/proc/stat").split("\n")[0]!.trim().split(/\s+/).slice(1)
      .map(Number);
    const total = f.reduce((a, b) => a + b, 0);
    return [total - f[3]! - f[4]!, total]; // minus idle and iowait
  } catch {
    return [0, 0];
  }
}

/** CPU ticks (user + system) of one process, or 0 when unknown. */
function processTicks(pid: number): number {
  try {
    const f = Deno.readTextFileSync(`/proc/${pid}/stat`).split(") ")[1]!.split(" ");
    return Number(f[11]) + Number(f[12]);
  } catch {
    return 0;
  }
}

/**
 * CPU used by processes other than ours (this script, the server, Redis) while a measurement
 * runs, in cores: the machine is shared, and this says how much it was.
 */
class OtherCpu {
  readonly #pids: number[];
  readonly #start: [number, number];
  readonly #own: number;
  readonly #at = performance.now();

  constructor(pids: number[]) {
    this.#pids = [Deno.pid, ...pids];
    this.#start = machineTicks();
    this.#own = this.#ownTicks();
  }

  #ownTicks(): number {
    return this.#pids.reduce((n, pid) => n + processTicks(pid), 0);
  }

  /** Cores used by others since construction (100 ticks a second per core). */
  cores(): number {
    const [busy] = machineTicks();
    const own = this.#ownTicks() - this.#own;
    const secs = (performance.now() - this.#at) / 1000;
    return Math.max(0, (busy - this.#start[0] - own) / 100 / secs);
  }
}

interface Sample {
  /** Cores used by other processes during the measurement. */
  others: number;
  /** Server CPU µs per put, saturated. */
  serverUs: number;
  /** Redis CPU µs per put, saturated (0 without Redis). */
  redisUs: number;
  putsPerSec: number;
  p50: number;
  p99: number;
  pacedP50: number;
  pacedP99: number;
  errors: number;
}

/** Saturated: `window` puts in flight for `duration` s after a 1 s warm-up. */
async function saturated(
  p: Putter,
  window: number,
  duration: number,
  pids: number[],
): Promise<[number, number[]]> {
  const end = performance.now() + (1 + duration) * 1000;
  const warm = performance.now() + 1000;
  let startAcked = 0;
  let startAt = 0;
  let startCpu: number[] = [];
  while (performance.now() < end) {
    if (!p.recording && performance.now() >= warm) {
      p.recording = true;
      startAcked = p.acked;
      startAt = performance.now();
      startCpu = pids.map(processTicks);
    }
    const room = window - (p.sent - p.acked);
    if (room > 0) await p.put(room);
    else await within(p.reply(), 30_000, "a put's ok");
  }
  const puts = p.acked - startAcked;
  const rate = puts / ((performance.now() - startAt) / 1000);
  // CPU µs per put of each process (a tick is 10 ms).
  const cpu = pids.map((pid, i) => ((processTicks(pid) - startCpu[i]!) * 10_000) / puts);
  p.recording = false;
  await p.drain();
  return [rate, cpu];
}

/** Paced: `rate` puts/s for `duration` s, sent every millisecond or so as they fall due. */
async function paced(p: Putter, rate: number, duration: number): Promise<number[]> {
  p.lat.length = 0;
  p.recording = true;
  const start = performance.now();
  let due = 0;
  while (performance.now() - start < duration * 1000) {
    const should = Math.floor(((performance.now() - start) / 1000) * rate);
    if (should > due) {
      await p.put(should - due);
      due = should;
    }
    await new Promise((r) => setTimeout(r, 1));
  }
  await p.drain();
  p.recording = false;
  return [...p.lat].sort((a, b) => a - b);
}

async function measure(
  config: Config,
  o: { window: number; duration: number; rate: number },
): Promise<Sample> {
  const dir = await Deno.makeTempDir({ prefix: "msgstream-durable-bench-" });
  let redis: Awaited<ReturnType<typeof startRedis>> | undefined;
  let server: Server;
  try {
    redis = config.redis ? await startRedis(dir, config.redis) : undefined;
    server = await startServer([...config.args(dir), ...(redis ? ["--redis", redis.url] : [])]);
  } catch (e) {
    await redis?.stop();
    await Deno.remove(dir, { recursive: true });
    throw e;
  }
  const p = await Putter.connect(server.port, 100);
  const others = new OtherCpu([server.child.pid, ...(redis ? [redis.pid] : [])]);
  try {
    const [putsPerSec, cpu] = await saturated(p, o.window, o.duration, [
      server.child.pid,
      ...(redis ? [redis.pid] : []),
    ]);
    const sat = [...p.lat].sort((a, b) => a - b);
    const pacedLat = await paced(p, o.rate, o.duration);
    return {
      others: others.cores(),
      serverUs: cpu[0]!,
      redisUs: cpu[1] ?? 0,
      putsPerSec,
      p50: pct(sat, 0.5),
      p99: pct(sat, 0.99),
      pacedP50: pct(pacedLat, 0.5),
      pacedP99: pct(pacedLat, 0.99),
      errors: p.errors,
    };
  } finally {
    if (p.errors) console.error(`${config.name}: ${p.errors} errors, first: ${p.firstError}`);
    await p.close();
    await server.stop();
    await redis?.stop();
    await Deno.remove(dir, { recursive: true });
  }
}

/** Spawn → listening line, and spawn → the first answered `listen` of a restored stream. */
async function timedStart(
  args: string[],
  stream: string,
): Promise<[string, number, Server]> {
  const t0 = performance.now();
  const server = await startServer(args);
  const p = await Putter.connect(server.port, 1);
  await p.send([`{"action":"listen","stream":"${stream}","id":"probe"}\n`]);
  // The header (a put frame with "header": true) comes first, then the ok.
  await within(
    (async () => {
      while (p.acked < 2) await p.reply();
    })(),
    60_000,
    `the answer to listen ${stream}`,
  );
  const answered = performance.now() - t0;
  // The first reply is the header (not an ok): the stream was restored.
  if (!p.firstError.includes('"header":true')) {
    throw new Error(`The header of ${stream} was not restored: ${p.firstError}`);
  }
  await p.close();
  const ready = `${server.ready.toFixed(0)} ms (server CPU ${server.readyCpu} ms)`;
  return [ready, answered, server];
}

async function restart(streams: number): Promise<string[]> {
  const out: string[] = [];
  const dir = await Deno.makeTempDir({ prefix: "msgstream-restart-bench-" });
  const path = `${dir}/msgstream.db`;
  const args = ["--data", path, "--fsync", "batch"];
  try {
    const base = await startServer([]);
    await base.stop();
    const fill = await startServer(args);
    const p = await Putter.connect(fill.port, streams);
    const t0 = performance.now();
    const header = `{"state":"running","host":"worker-01","pid":4242,"started":1}`; // 64 B
    for (let k = 0; k < streams; k += 500) {
      const lines: string[] = [];
      for (let i = k; i < Math.min(streams, k + 500); i++) {
        lines.push(
          `{"action":"header","stream":"job-${i}","id":"h${i}","message":${header}}\n`,
          `{"action":"put","stream":"job-${i}","id":"p${i}","message":{"done":1}}\n`,
        );
      }
      await p.send(lines);
      if (p.sent - p.acked > 20_000) {
        while (p.sent - p.acked > 5_000) await within(p.reply(), 60_000, "fill replies");
      }
    }
    await p.drain(120_000);
    const fillSecs = (performance.now() - t0) / 1000;
    if (p.errors) throw new Error(`Fill: ${p.errors} errors, first: ${p.firstError}`);
    await p.close();
    await fill.stop("SIGTERM");
    const size = Deno.statSync(path).size;
    out.push(
      `fill: ${streams} streams × (64 B header + 1 put) in ${fillSecs.toFixed(1)} s; ` +
        `file ${(size / 1e6).toFixed(1)} MB`,
    );
    out.push(
      `memory start (no --data), spawn → listening: ${base.ready.toFixed(0)} ms ` +
        `(server CPU ${base.readyCpu} ms)`,
    );
    const probe = `job-${streams - 1}`;
    const [cleanReady, cleanAnswer, s1] = await timedStart(args, probe);
    out.push(
      `after SIGTERM (clean stop): spawn → listening ${cleanReady}, ` +
        `→ first listen answered ${cleanAnswer.toFixed(0)} ms`,
    );
    await s1.stop("SIGKILL");
    const [crashReady, crashAnswer, s2] = await timedStart(args, probe);
    out.push(
      `after SIGKILL: spawn → listening ${crashReady}, ` +
        `→ first listen answered ${crashAnswer.toFixed(0)} ms`,
    );
    await s2.stop("SIGTERM");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
  return out;
}

/** Runs the configurations and the restart, and prints the tables. */
async function main(): Promise<void> {
  const a = parseArgs(Deno.args, {
    string: ["configs", "reps", "duration", "window", "rate", "streams"],
    boolean: ["restart"],
    negatable: ["restart"],
    default: {
      configs: CONFIGS.map((c) => c.name).join(","),
      reps: "3",
      duration: "5",
      window: "256",
      rate: "1000",
      streams: "100000",
      restart: true,
    },
  });
  const names = String(a.configs).split(",");
  const configs = names.map((n) => {
    const c = CONFIGS.find((c) => c.name === n);
    if (!c) throw new TypeError(`Unknown config "${n}"`);
    return c;
  });
  const o = { window: Number(a.window), duration: Number(a.duration), rate: Number(a.rate) };
  const samples = new Map<string, Sample[]>(configs.map((c) => [c.name, []]));
  for (let rep = 0; rep < Number(a.reps); rep++) {
    for (const c of configs) {
      const s = await measure(c, o);
      samples.get(c.name)!.push(s);
      console.error(
        `rep ${rep + 1} ${c.name}: ${Math.round(s.putsPerSec)} puts/s, p99 ${
          s.p99.toFixed(2)
        } ms, ` +
          `paced p99 ${s.pacedP99.toFixed(2)} ms, others ${s.others.toFixed(2)} cores`,
      );
    }
  }
  const ms = (x: number) => x.toFixed(2);
  console.log(
    `| config | puts/s, median (min–max) | p50 / p99 ms (window ${o.window}) | ` +
      `p50 / p99 ms (${o.rate} puts/s) | server (+ Redis) CPU µs/put | others' CPU, cores | errors |`,
  );
  console.log("|---|---|---|---|---|---|---|");
  for (const c of configs) {
    const s = samples.get(c.name)!;
    const rates = s.map((x) => x.putsPerSec);
    const k = (x: number) => `${(x / 1000).toFixed(1)}k`;
    console.log(
      `| ${c.name} | ${k(median(rates))} (${k(Math.min(...rates))}–${k(Math.max(...rates))}) | ` +
        `${ms(median(s.map((x) => x.p50)))} / ${ms(median(s.map((x) => x.p99)))} | ` +
        `${ms(median(s.map((x) => x.pacedP50)))} / ${ms(median(s.map((x) => x.pacedP99)))} | ` +
        `${median(s.map((x) => x.serverUs)).toFixed(1)}` +
        (c.redis ? ` (+ ${median(s.map((x) => x.redisUs)).toFixed(1)})` : "") + " | " +
        `${median(s.map((x) => x.others)).toFixed(2)} | ` +
        `${s.reduce((n, x) => n + x.errors, 0)} |`,
    );
  }
  if (a.restart) { for (const line of await restart(Number(a.streams))) console.log(line); }
}

if (import.meta.main) await main();
