#!/usr/bin/env -S deno run -A
// deno-lint-ignore-file no-console -- a program: its output is the table
/**
 * Pattern fanout: one listener follows `jobs.*` while one publisher puts round-robin on 1,000
 * streams, against msgstream (`listen` with `pattern`, and the same streams by name), Redis
 * (`PSUBSCRIBE jobs.*`, the same load as `PUBLISH`es) and NATS (`SUB jobs.*`, when
 * `nats-server` is installed) in the same run; then how long a pattern join over 100,000 existing
 * streams blocks the event loop (a bystander timer measures the longest gap).
 *
 * ```sh
 * deno run -A bench/pattern_bench.ts                     # 5 s per system, 1,000 streams
 * deno run -A bench/pattern_bench.ts --duration 10 --streams 1000 --join 100000
 * ```
 *
 * Both servers run as child processes on free ports (`server.ts`, `redis-server --save ''`); the
 * publisher and the listener share this process and one window of messages in flight, so each
 * system is driven as fast as it delivers. Payload: `S<seq>T<send time ns>K<stream>` padded to
 * 128 bytes; the listener checks that every stream's seqs arrive in order without a gap.
 *
 * @module
 */

import { parseArgs } from "@std/cli/parse-args";
import { MessageStream } from "../mod.ts";

const enc = new TextEncoder();

interface Result {
  system: string;
  delivered: number;
  seconds: number;
  p50: number;
  p99: number;
  gaps: number;
  rssMiB: number | undefined;
  /** Server CPU (user + system) per delivery over the measured window, ns; NaN when unknown. */
  cpuNs: number;
}

/** CPU time (user + system, ms) of one process from /proc, or NaN when unknown. */
function cpuMs(pid: number): number {
  try {
    const f = Deno.readTextFileSync(`/proc/${pid}/stat`).split(") ")[1]!.split(" ");
    return (Number(f[11]) + Number(f[12])) * 10;
  } catch {
    return NaN;
  }
}

function hasNats(): boolean {
  try {
    return new Deno.Command("nats-server", { args: ["--version"], stdout: "null", stderr: "null" })
      .outputSync().success;
  } catch {
    return false;
  }
}

function freePort(): number {
  const l = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (l.addr as Deno.NetAddr).port;
  l.close();
  return port;
}

async function connect(port: number): Promise<Deno.TcpConn> {
  for (let i = 0; i < 200; i++) {
    try {
      return await Deno.connect({ hostname: "127.0.0.1", port });
    } catch {
      await new Promise((r) => setTimeout(r, 25));
    }
  }
  throw new Error(`Nothing listens on ${port}`);
}

function rss(pid: number): number | undefined {
  try {
    const m = /VmRSS:\s+(\d+) kB/.exec(Deno.readTextFileSync(`/proc/${pid}/status`));
    return m ? Number(m[1]) / 1024 : undefined;
  } catch {
    return undefined;
  }
}

function payload(seq: number, stream: number): string {
  const t = String(Math.round(performance.now() * 1e6)).padStart(16, "0");
  const head = `S${String(seq).padStart(10, "0")}T${t}K${String(stream).padStart(6, "0")}`;
  return head + "x".repeat(128 - head.length);
}

/** Drives one system: `frame(stream, payload)` is the publish line; the listener is set up. */
async function drive(
  system: string,
  pid: number,
  pub: Deno.TcpConn,
  sub: Deno.TcpConn,
  frame: (stream: number, text: string) => string,
  streams: number,
  duration: number,
): Promise<Result> {
  const window = 10 * streams;
  const expect = new Int32Array(streams).fill(1);
  let received = 0;
  let gaps = 0;
  const lat: number[] = [];
  let measuring = false;
  let wake: (() => void) | undefined;
  const re = /S(\d{10})T(\d{16})K(\d{6})/g;
  const reading = (async () => {
    const dec = new TextDecoder();
    let rest = "";
    for await (const chunk of sub.readable) {
      const text = rest + dec.decode(chunk, { stream: true });
      const cut = text.lastIndexOf("\n") + 1;
      rest = text.slice(cut);
      const now = performance.now() * 1e6;
      re.lastIndex = 0;
      const whole = text.slice(0, cut);
      for (let m = re.exec(whole); m; m = re.exec(whole)) {
        const seq = Number(m[1]);
        const k = Number(m[3]);
        if (seq !== expect[k]) gaps++;
        expect[k] = seq + 1;
        received++;
        if (measuring && (received & 15) === 0) lat.push((now - Number(m[2])) / 1e6);
      }
      wake?.();
    }
  })();
  // Drain the publisher's replies (Redis answers each PUBLISH).
  const draining = (async () => {
    for await (const _ of pub.readable) { /* discard */ }
  })();
  const w = pub.writable.getWriter();
  const seqs = new Int32Array(streams).fill(1);
  let sent = 0;
  let next = 0;
  const start = performance.now();
  let t0 = 0;
  let r0 = 0;
  let c0 = NaN;
  const warm = start + 1000;
  const end = warm + duration * 1000;
  while (performance.now() < end) {
    if (!measuring && performance.now() >= warm) {
      measuring = true;
      t0 = performance.now();
      r0 = received;
      c0 = cpuMs(pid);
    }
    if (sent - received >= window) {
      await new Promise<void>((r) => wake = r);
      continue;
    }
    let batch = "";
    const n = Math.min(256, window - (sent - received));
    for (let i = 0; i < n; i++) {
      batch += frame(next, payload(seqs[next]!++, next));
      next = (next + 1) % streams;
    }
    sent += n;
    await w.write(enc.encode(batch));
  }
  const seconds = (performance.now() - t0) / 1000;
  const delivered = received - r0;
  const cpuNs = (cpuMs(pid) - c0) * 1e6 / delivered;
  const mem = rss(pid);
  w.releaseLock();
  pub.close();
  sub.close();
  await Promise.allSettled([reading, draining]);
  lat.sort((a, b) => a - b);
  const q = (p: number) => lat[Math.min(lat.length - 1, Math.floor(p * lat.length))] ?? NaN;
  return { system, delivered, seconds, p50: q(0.5), p99: q(0.99), gaps, rssMiB: mem, cpuNs };
}

async function msgstream(streams: number, duration: number, byName = false): Promise<Result> {
  const port = freePort();
  const child = new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", new URL("../server.ts", import.meta.url).pathname, "--port", `${port}`],
    stdout: "null",
    stderr: "null",
  }).spawn();
  try {
    const sub = await connect(port);
    const pub = await connect(port);
    // Every stream exists first, as jobs that are running.
    let lines = "";
    for (let i = 0; i < streams; i++) {
      lines += JSON.stringify({ action: "header", stream: `jobs.${i}`, message: "running" }) +
        "\n";
    }
    lines += '{"action":"ping","id":"ready"}\n';
    await pub.write(enc.encode(lines));
    const r = pub.readable.getReader();
    for (let got = ""; !got.includes('"ready"');) {
      got += new TextDecoder().decode((await r.read()).value);
    }
    r.releaseLock();
    let listen = "";
    if (byName) {
      for (let i = 0; i < streams; i++) listen += `{"action":"listen","stream":"jobs.${i}"}\n`;
    }
    listen += byName
      ? '{"action":"ping","id":1}\n'
      : '{"action":"listen","pattern":"jobs.*","id":1}\n';
    await sub.write(enc.encode(listen));
    // Skip the catch-up (one header per stream) and the ok.
    const rs = sub.readable.getReader();
    for (let got = ""; !got.includes(byName ? '"action":"pong"' : '"action":"ok"');) {
      got = (got + new TextDecoder().decode((await rs.read()).value)).slice(-200);
    }
    rs.releaseLock();
    return await drive(
      byName ? `msgstream ${streams} listens by name` : "msgstream listen pattern",
      child.pid,
      pub,
      sub,
      (k, text) => `{"action":"put","stream":"jobs.${k}","message":"${text}"}\n`,
      streams,
      duration,
    );
  } finally {
    child.kill();
    await child.status;
  }
}

async function redis(streams: number, duration: number): Promise<Result> {
  const port = freePort();
  const child = new Deno.Command("redis-server", {
    args: ["--port", `${port}`, "--save", "", "--appendonly", "no", "--bind", "127.0.0.1"],
    stdout: "null",
    stderr: "null",
  }).spawn();
  try {
    const sub = await connect(port);
    const pub = await connect(port);
    await sub.write(enc.encode("PSUBSCRIBE jobs.*\r\n"));
    const rs = sub.readable.getReader();
    for (let got = ""; !got.includes("psubscribe");) {
      got += new TextDecoder().decode((await rs.read()).value);
    }
    rs.releaseLock();
    return await drive(
      "redis PSUBSCRIBE",
      child.pid,
      pub,
      sub,
      (k, text) => {
        const ch = `jobs.${k}`;
        return `*3\r\n$7\r\nPUBLISH\r\n$${ch.length}\r\n${ch}\r\n$${text.length}\r\n${text}\r\n`;
      },
      streams,
      duration,
    );
  } finally {
    child.kill();
    await child.status;
  }
}

async function nats(streams: number, duration: number): Promise<Result> {
  const port = freePort();
  const child = new Deno.Command("nats-server", {
    args: ["-a", "127.0.0.1", "-p", `${port}`],
    stdout: "null",
    stderr: "null",
  }).spawn();
  try {
    const sub = await connect(port);
    const pub = await connect(port);
    const hello = 'CONNECT {"verbose":false,"pedantic":false}\r\n';
    await pub.write(enc.encode(hello));
    await sub.write(enc.encode(hello + "SUB jobs.* 1\r\nPING\r\n"));
    const rs = sub.readable.getReader();
    for (let got = ""; !got.includes("PONG");) {
      got += new TextDecoder().decode((await rs.read()).value);
    }
    rs.releaseLock();
    return await drive(
      "nats SUB jobs.*",
      child.pid,
      pub,
      sub,
      (k, text) => `PUB jobs.${k} ${text.length}\r\n${text}\r\n`,
      streams,
      duration,
    );
  } finally {
    child.kill();
    await child.status;
  }
}

/** The longest event-loop block while a pattern join catches up on `n` existing streams. */
async function joinBlock(
  n: number,
): Promise<{ ms: number; longest: number; baseline: number; streams: number }> {
  const hub = new MessageStream({ maxStreams: n + 10 });
  for (let i = 0; i < n; i++) await hub.header(`jobs.${i}`, { state: "running" });
  let count = 0;
  let longest = 0;
  let last = performance.now();
  const ticker = setInterval(() => {
    const now = performance.now();
    longest = Math.max(longest, now - last);
    last = now;
  }, 1);
  // Let the ticker settle.
  await new Promise((r) => setTimeout(r, 50));
  longest = 0;
  last = performance.now();
  const t0 = performance.now();
  const joined = await hub.listen({ pattern: "jobs.*" }, { put: () => void count++ });
  const ms = performance.now() - t0;
  await new Promise((r) => setTimeout(r, 5));
  const joinLongest = longest;
  // Baseline: code that allocates as much, in the same 4 ms slices, on the same heap: what the
  // garbage collector alone costs the loop.
  longest = 0;
  last = performance.now();
  const b0 = performance.now();
  let x = 0;
  while (performance.now() - b0 < ms) {
    const s = performance.now();
    while (performance.now() - s < 4) {
      const o = { a: x++, b: `s${x}`, c: new Uint8Array(8) };
      if (o.a < 0) throw new Error("unreachable");
    }
    await new Promise((r) => setTimeout(r, 0));
  }
  await new Promise((r) => setTimeout(r, 5));
  clearInterval(ticker);
  await hub.close();
  if (count !== n || joined.streams !== n) throw new Error(`Joined ${count} of ${n}`);
  return { ms, longest: joinLongest, baseline: longest, streams: joined.streams };
}

if (import.meta.main) {
  const a = parseArgs(Deno.args, {
    string: ["duration", "streams", "join"],
    default: { duration: "5", streams: "1000", join: "100000" },
  });
  const duration = Number(a.duration);
  const streams = Number(a.streams);
  const rows: Result[] = [];
  rows.push(await msgstream(streams, duration));
  rows.push(await msgstream(streams, duration, true));
  rows.push(await redis(streams, duration));
  if (hasNats()) rows.push(await nats(streams, duration));
  else console.log("(nats-server not installed: no NATS row)");
  console.log(`pattern fanout: 1 listener, 1 publisher, ${streams} streams, 128 B, ${duration} s`);
  console.log(
    "| system | msgs/s | server CPU ns/delivery | p50 ms | p99 ms | gaps | server RSS MiB |",
  );
  console.log("|---|---|---|---|---|---|---|");
  for (const r of rows) {
    console.log(
      `| ${r.system} | ${Math.round(r.delivered / r.seconds).toLocaleString("en")} | ${
        Math.round(r.cpuNs).toLocaleString("en")
      } | ${r.p50.toFixed(2)} | ${r.p99.toFixed(2)} | ${r.gaps} | ${r.rssMiB?.toFixed(0) ?? "?"} |`,
    );
  }
  const j = await joinBlock(Number(a.join));
  console.log(
    `pattern join over ${j.streams.toLocaleString("en")} streams: ${
      j.ms.toFixed(0)
    } ms to catch up, longest event-loop block ${j.longest.toFixed(1)} ms (baseline: garbage ` +
      `made in 4 ms slices on the same heap, ${j.baseline.toFixed(1)} ms)`,
  );
}
