#!/usr/bin/env -S deno run -A
/**
 * Load tool: drives a msgstream server over TCP through the fanout, many-streams, latency,
 * idle-connections and join-storm scenarios, and fanout through the HTTP door (`ws`: WebSocket
 * listeners, `sse`: Server-Sent Events listeners, a TCP publisher; not in the default set), and
 * prints a table. With no `--port` it starts `server.ts` itself, with `--http-port 0` (and reads
 * its RSS and CPU from `/proc`, on Linux); with `--port`, give `--http-port` for `ws`/`sse`.
 *
 * ```sh
 * ulimit -n 30000                       # idle and join-storm open many sockets
 * deno run -A bench/load.ts             # every scenario
 * deno run -A bench/load.ts --scenario fanout --duration 5
 * deno run -A bench/load.ts --scenario fanout,ws,sse --duration 5   # each door, same run
 * deno run -A bench/load.ts --port 51932 --server-pid 1234   # a server you started
 * ```
 *
 * Payload: `S` + 10-digit seq + `T` + 16-digit send time (ns) + `x` padding, 128 bytes.
 * Subscribers find it at a fixed offset of each line (the stream's frame prefix is known), so
 * the load generator costs little per delivery; it checks order and gaps per connection.
 *
 * @module
 */

import { parseArgs } from "@std/cli/parse-args";

const enc = new TextEncoder();
const NL = 0x0a;

interface Options {
  host: string;
  port: number;
  duration: number;
  warmup: number;
  subs: number;
  streams: number;
  conns: number;
  rate: number;
  payload: number;
  follow: number;
  joinRate: number;
  /** The HTTP door's port (WebSocket and SSE scenarios). */
  httpPort: number;
}

/** Server CPU (ticks) and RSS (bytes) from /proc, when the pid is known. */
class Proc {
  constructor(readonly pid: number | undefined) {}
  cpu(): number | undefined {
    if (!this.pid) return undefined;
    try {
      const f = Deno.readTextFileSync(`/proc/${this.pid}/stat`).split(") ")[1]!.split(" ");
      return (Number(f[11]) + Number(f[12])) * 10; // ms, at 100 ticks/s
    } catch {
      return undefined;
    }
  }
  rss(): number | undefined {
    if (!this.pid) return undefined;
    try {
      const m = /VmRSS:\s+(\d+) kB/.exec(Deno.readTextFileSync(`/proc/${this.pid}/status`));
      return m ? Number(m[1]) * 1024 : undefined;
    } catch {
      return undefined;
    }
  }
}

function nowNs(): number {
  return Math.round(performance.now() * 1e6);
}

function payload(seq: number, size: number): string {
  const head = `S${String(seq).padStart(10, "0")}T${String(nowNs()).padStart(16, "0")}`;
  return head + "x".repeat(Math.max(0, size - head.length));
}

function putLine(stream: string, seq: number, size: number): string {
  return `{"action":"put","stream":${JSON.stringify(stream)},"message":"${payload(seq, size)}"}\n`;
}

function digits(b: Uint8Array, at: number, n: number): number {
  let v = 0;
  for (let i = 0; i < n; i++) v = v * 10 + ((b[at + i] as number) - 48);
  return v;
}

/** One listening connection: counts our payloads, checks order, records latency. */
class Sub {
  got = 0;
  last = -1;
  gaps = 0;
  disorder = 0;
  headerFirst: boolean | undefined = undefined;
  headerSeq = -1;
  joinedAt = 0;
  headerAt = 0;
  closed = false;
  lat: number[] | undefined;
  #carry = new Uint8Array(0);
  readonly #offset: number; // where the message's text starts in a put line
  readonly #done: Promise<void>;
  onProgress: (() => void) | undefined;
  onLine: ((sub: Sub, seq: number, isHeader: boolean) => void) | undefined;

  constructor(readonly conn: Deno.TcpConn, readonly stream: string, lat?: number[]) {
    this.lat = lat;
    this.#offset = `{"action":"put","stream":${JSON.stringify(stream)},"message":"`.length;
    this.#done = this.#read();
  }

  listen(): Promise<number> {
    this.joinedAt = performance.now();
    return this.conn.write(
      enc.encode(`{"action":"listen","stream":${JSON.stringify(this.stream)}}\n`),
    );
  }

  async #read(): Promise<void> {
    const buf = new Uint8Array(64 * 1024);
    try {
      while (true) {
        const n = await this.conn.read(buf);
        if (n === null) break;
        let b = buf.subarray(0, n);
        if (this.#carry.byteLength > 0) {
          const j = new Uint8Array(this.#carry.byteLength + n);
          j.set(this.#carry);
          j.set(b, this.#carry.byteLength);
          b = j;
        }
        const t = this.lat ? nowNs() : 0;
        let from = 0;
        for (let nl = b.indexOf(NL); nl !== -1; nl = b.indexOf(NL, from)) {
          this.#line(b, from, nl, t);
          from = nl + 1;
        }
        this.#carry = from < b.byteLength ? b.slice(from) : new Uint8Array(0);
        this.onProgress?.();
      }
    } catch {
      // reset by peer
    }
    this.closed = true;
    this.onProgress?.();
  }

  #line(b: Uint8Array, from: number, end: number, t: number): void {
    const at = from + this.#offset;
    const isPut = b[from + 11] === 0x70; // {"action":"p…
    const ours = isPut && end - from > this.#offset + 28 && b[at - 1] === 0x22 &&
      b[at] === 0x53 && b[at + 11] === 0x54; // "S…T
    // A join header: a put line with "header":true (its message is not one of our payloads).
    const header = isPut && !ours &&
      /"header":true/.test(new TextDecoder().decode(b.subarray(from, end)));
    if (header) {
      if (this.headerFirst === undefined) {
        this.headerFirst = this.got === 0;
        this.headerAt = performance.now();
        const m = /"seq":(\d+)/.exec(new TextDecoder().decode(b.subarray(from, end)));
        this.headerSeq = m ? Number(m[1]) : -1;
        // The put after the header has the server seq headerSeq + 1: our payload seq headerSeq.
        this.last = this.headerSeq - 1;
      }
      this.onLine?.(this, this.headerSeq, true);
      return;
    }
    if (!ours) return;
    const seq = digits(b, at + 1, 10);
    if (this.last >= 0 && seq !== this.last + 1) {
      if (seq > this.last + 1) this.gaps++;
      else this.disorder++;
    }
    this.last = seq;
    this.got++;
    if (this.lat) this.lat.push((t - digits(b, at + 12, 16)) / 1000);
    this.onLine?.(this, seq, false);
  }

  async close(): Promise<void> {
    try {
      this.conn.close();
    } catch {
      // closed
    }
    await this.#done;
  }
}

async function connectMany(o: Options, names: string[], lat?: number[]): Promise<Sub[]> {
  const subs: Sub[] = [];
  for (let i = 0; i < names.length; i += 200) {
    const batch = await Promise.all(
      names.slice(i, i + 200).map(async (name) => {
        const c = await Deno.connect({ hostname: o.host, port: o.port });
        c.setNoDelay(true);
        return new Sub(c, name, lat);
      }),
    );
    subs.push(...batch);
  }
  return subs;
}

async function publisher(o: Options): Promise<Deno.TcpConn> {
  const c = await Deno.connect({ hostname: o.host, port: o.port });
  c.setNoDelay(true);
  // Drain whatever the server says to the publisher.
  (async () => {
    const b = new Uint8Array(16 * 1024);
    try {
      while ((await c.read(b)) !== null) { /* ignore */ }
    } catch { /* closed */ }
  })();
  return c;
}

/** Serialises writes on one connection (overlapping writes could interleave partial lines). */
function writer(c: Deno.Conn): (text: string) => void {
  let queued = "";
  let busy = false;
  const run = async () => {
    busy = true;
    try {
      while (queued) {
        const b = enc.encode(queued);
        queued = "";
        await writeAll(c, b);
      }
    } catch {
      // closed
    }
    busy = false;
  };
  return (text) => {
    queued += text;
    if (!busy) run();
  };
}

async function writeAll(c: Deno.Conn, b: Uint8Array): Promise<void> {
  for (let off = 0; off < b.byteLength;) off += await c.write(b.subarray(off));
}

/** Puts probes until every subscriber has seen at least one of our payloads. */
async function barrier(
  o: Options,
  pub: Deno.Conn,
  subs: Sub[],
  names: string[],
  seq: { n: number },
) {
  for (const s of subs) await s.listen();
  const deadline = performance.now() + 30_000;
  while (subs.some((s) => s.got === 0) && performance.now() < deadline) {
    // Probe only the streams that still have a subscriber waiting, then give them time.
    const waiting = new Set(subs.filter((s) => s.got === 0).map((s) => s.stream));
    let text = "";
    for (const name of names) if (waiting.has(name)) text += putLine(name, seq.n, o.payload);
    seq.n++;
    await writeAll(pub, enc.encode(text));
    await new Promise((r) => setTimeout(r, 200));
  }
}

function pct(sorted: number[], p: number): number {
  return sorted.length === 0
    ? NaN
    : sorted[Math.min(sorted.length - 1, Math.floor(sorted.length * p))]!;
}

type Row = Record<string, string | number | boolean>;

/** Fanout (N subscribers, one stream) or many-streams (S streams, one subscriber each), closed loop. */
async function throughput(o: Options, proc: Proc, kind: "fanout" | "streams"): Promise<Row> {
  const names = kind === "fanout"
    ? Array(o.subs).fill("fanout") as string[]
    : Array.from({ length: o.streams }, (_, i) => `s${i}`);
  const streams = kind === "fanout" ? ["fanout"] : names;
  const subs = await connectMany(o, names);
  const pub = await publisher(o);
  const seq = { n: 0 };
  await barrier(o, pub, subs, streams, seq);
  for (const s of subs) s.last = -1; // probes do not count toward order
  const base = subs.map((s) => s.got);
  const window = kind === "fanout" ? 1000 : 10 * o.streams;
  let sent = 0; // messages (fanout) or deliveries (streams) put since the start
  const delivered = () => {
    let d = 0;
    for (let i = 0; i < subs.length; i++) d += subs[i]!.got - base[i]!;
    return d;
  };
  const done = () =>
    kind === "fanout" ? Math.min(...subs.map((s, i) => s.got - base[i]!)) : delivered();
  let wake: (() => void) | undefined;
  for (const s of subs) s.onProgress = () => wake?.();
  let rr = 0;
  const t0 = performance.now();
  const tWarm = t0 + o.warmup * 1000;
  const tEnd = tWarm + o.duration * 1000;
  let c0 = 0, d0 = 0, cpu0 = 0;
  let warm = false;
  while (performance.now() < tEnd) {
    if (!warm && performance.now() >= tWarm) {
      warm = true;
      d0 = delivered();
      c0 = performance.now();
      cpu0 = proc.cpu() ?? 0;
    }
    const room = window - (sent - done());
    if (room <= 0 || subs.some((s) => s.closed)) {
      if (subs.some((s) => s.closed)) break;
      await new Promise<void>((r) => {
        wake = r;
        setTimeout(r, 50);
      });
      wake = undefined;
      continue;
    }
    let text = "";
    for (let i = 0; i < Math.min(room, 256); i++) {
      text += putLine(streams[rr]!, seq.n, o.payload);
      if (++rr === streams.length) {
        rr = 0;
        seq.n++;
      }
      sent++;
    }
    await writeAll(pub, enc.encode(text));
  }
  const d1 = delivered();
  const c1 = performance.now();
  const cpu1 = proc.cpu();
  const secs = (c1 - c0) / 1000;
  // Drain: wait for the tail, then check completeness.
  const drainEnd = performance.now() + 5000;
  const want = kind === "fanout" ? sent : sent;
  while (done() < want && performance.now() < drainEnd && !subs.some((s) => s.closed)) {
    await new Promise((r) => setTimeout(r, 20));
  }
  const complete = done() >= want &&
    subs.every((s) => s.gaps === 0 && s.disorder === 0 && !s.closed);
  pub.close();
  await Promise.all(subs.map((s) => s.close()));
  const rate = (d1 - d0) / secs;
  const cpuPct = cpu1 === undefined ? undefined : (cpu1 - cpu0) / 10 / secs;
  return {
    scenario: kind === "fanout" ? `fanout 1→${o.subs}` : `many-streams ${o.streams}×1`,
    "delivered msg/s": Math.round(rate),
    "complete+in order": complete,
    "server CPU %": cpuPct === undefined ? "" : +cpuPct.toFixed(1),
    "server ns/delivery": cpu1 === undefined ? "" : Math.round(((cpu1 - cpu0) * 1e6) / (d1 - d0)),
  };
}

/**
 * One listener through the HTTP door (WebSocket or SSE): finds our payloads in the text it
 * gets (`"S<seq>T<time>`, whatever framing is around them), counts them, checks order.
 */
class TextSub {
  got = 0;
  last = -1;
  gaps = 0;
  disorder = 0;
  closed = false;
  onProgress: (() => void) | undefined;
  #carry = "";
  close: () => void = () => {};

  /** Takes text as it arrives (chunks may split a payload; the tail is kept for the next). */
  text(chunk: string): void {
    const t = this.#carry + chunk;
    const re = /"S(\d{10})T\d{16}/g;
    let m: RegExpExecArray | null;
    let end = 0;
    while ((m = re.exec(t)) !== null) {
      const seq = Number(m[1]);
      if (this.last >= 0 && seq !== this.last + 1) {
        if (seq > this.last + 1) this.gaps++;
        else this.disorder++;
      }
      this.last = seq;
      this.got++;
      end = re.lastIndex;
    }
    this.#carry = t.length - end > 40 ? t.slice(t.length - 40) : t.slice(end);
    this.onProgress?.();
  }

  ended(): void {
    this.closed = true;
    this.onProgress?.();
  }
}

/** Opens one WebSocket (`GET /ws`) listener of `stream`. */
async function wsSub(o: Options, stream: string): Promise<TextSub> {
  const sub = new TextSub();
  const ws = new WebSocket(`ws://${o.host}:${o.httpPort}/ws`);
  await new Promise<void>((resolve, reject) => {
    ws.onopen = () => resolve();
    ws.onerror = () => reject(new Error("WebSocket did not open"));
  });
  ws.onmessage = (e) => sub.text(String(e.data));
  ws.onclose = () => sub.ended();
  ws.onerror = () => {};
  ws.send(JSON.stringify({ action: "listen", stream }));
  sub.close = () => ws.close();
  return sub;
}

/** Opens one SSE (`GET /streams/{name}`, `Accept: text/event-stream`) listener of `stream`. */
async function sseSub(o: Options, stream: string): Promise<TextSub> {
  const sub = new TextSub();
  const ac = new AbortController();
  const res = await fetch(`http://${o.host}:${o.httpPort}/streams/${stream}`, {
    headers: { accept: "text/event-stream" },
    signal: ac.signal,
  });
  if (!res.ok || !res.body) throw new Error(`SSE open failed: ${res.status}`);
  (async () => {
    try {
      for await (const chunk of res.body!.pipeThrough(new TextDecoderStream())) sub.text(chunk);
    } catch {
      // aborted
    }
    sub.ended();
  })();
  sub.close = () => ac.abort();
  return sub;
}

/**
 * Fanout through the HTTP door: N WebSocket or SSE listeners of one stream, a TCP publisher,
 * closed loop (at most 1,000 messages in flight by receipts, as `fanout`). Server CPU per
 * delivery beside the TCP door's.
 */
async function doorFanout(o: Options, proc: Proc, door: "ws" | "sse"): Promise<Row> {
  const subs: TextSub[] = [];
  for (let i = 0; i < o.subs; i += 50) {
    const n = Math.min(50, o.subs - i);
    subs.push(
      ...await Promise.all(
        Array.from({ length: n }, () => door === "ws" ? wsSub(o, "fanout") : sseSub(o, "fanout")),
      ),
    );
  }
  const pub = await publisher(o);
  const seq = { n: 0 };
  // Readiness: probe until every listener has one of our payloads (bounded).
  const deadline = performance.now() + 30_000;
  while (subs.some((s) => s.got === 0) && performance.now() < deadline) {
    await writeAll(pub, enc.encode(putLine("fanout", seq.n++, o.payload)));
    await new Promise((r) => setTimeout(r, 200));
  }
  if (subs.some((s) => s.got === 0)) throw new Error(`${door}: a listener got no probe in 30 s`);
  for (const s of subs) s.last = -1;
  const base = subs.map((s) => s.got);
  const delivered = () => {
    let d = 0;
    for (let i = 0; i < subs.length; i++) d += subs[i]!.got - base[i]!;
    return d;
  };
  const done = () => Math.min(...subs.map((s, i) => s.got - base[i]!));
  let wake: (() => void) | undefined;
  for (const s of subs) s.onProgress = () => wake?.();
  let sent = 0;
  const t0 = performance.now();
  const tWarm = t0 + o.warmup * 1000;
  const tEnd = tWarm + o.duration * 1000;
  let c0 = 0, d0 = 0, cpu0 = 0;
  let warm = false;
  while (performance.now() < tEnd && !subs.some((s) => s.closed)) {
    if (!warm && performance.now() >= tWarm) {
      warm = true;
      d0 = delivered();
      c0 = performance.now();
      cpu0 = proc.cpu() ?? 0;
    }
    const room = 1000 - (sent - done());
    if (room <= 0) {
      await new Promise<void>((r) => {
        wake = r;
        setTimeout(r, 50);
      });
      wake = undefined;
      continue;
    }
    let text = "";
    for (let i = 0; i < Math.min(room, 256); i++, sent++) {
      text += putLine("fanout", seq.n++, o.payload);
    }
    await writeAll(pub, enc.encode(text));
  }
  const d1 = delivered();
  const c1 = performance.now();
  const cpu1 = proc.cpu();
  const secs = (c1 - c0) / 1000;
  const drainEnd = performance.now() + 5000;
  while (done() < sent && performance.now() < drainEnd && !subs.some((s) => s.closed)) {
    await new Promise((r) => setTimeout(r, 20));
  }
  const complete = done() >= sent &&
    subs.every((s) => s.gaps === 0 && s.disorder === 0 && !s.closed);
  pub.close();
  for (const s of subs) s.close();
  return {
    scenario: `${door} fanout 1→${o.subs}`,
    "delivered msg/s": Math.round((d1 - d0) / secs),
    "complete+in order": complete,
    "server CPU %": cpu1 === undefined ? "" : +((cpu1 - cpu0) / 10 / secs).toFixed(1),
    "server ns/delivery": cpu1 === undefined ? "" : Math.round(((cpu1 - cpu0) * 1e6) / (d1 - d0)),
  };
}

/** Open-loop publisher at a fixed rate to N subscribers; latency from send to read. */
async function latency(o: Options, proc: Proc): Promise<Row> {
  const lat: number[] = [];
  const subs = await connectMany(o, Array(10).fill("latency"), lat);
  const pub = await publisher(o);
  const seq = { n: 0 };
  await barrier(o, pub, subs, ["latency"], seq);
  for (const s of subs) s.last = -1;
  const send = writer(pub);
  const t0 = performance.now();
  const tWarm = t0 + o.warmup * 1000;
  const tEnd = tWarm + o.duration * 1000;
  let sent = 0;
  let measuring = false;
  let cpu0 = 0;
  await new Promise<void>((resolve) => {
    const timer = setInterval(() => {
      const now = performance.now();
      if (now >= tEnd) {
        clearInterval(timer);
        return resolve();
      }
      if (!measuring && now >= tWarm) {
        measuring = true;
        lat.length = 0;
        cpu0 = proc.cpu() ?? 0;
      }
      const due = Math.floor(((now - t0) / 1000) * o.rate);
      let text = "";
      while (sent < due) {
        text += putLine("latency", seq.n++, o.payload);
        sent++;
      }
      if (text) send(text);
    }, 1);
  });
  const cpu1 = proc.cpu();
  await new Promise((r) => setTimeout(r, 200));
  const complete = subs.every((s) => s.gaps === 0 && s.disorder === 0 && !s.closed);
  pub.close();
  await Promise.all(subs.map((s) => s.close()));
  const sorted = lat.sort((a, b) => a - b);
  return {
    scenario: `latency ${o.rate}/s → 10`,
    "p50 µs": Math.round(pct(sorted, 0.5)),
    "p99 µs": Math.round(pct(sorted, 0.99)),
    "p99.9 µs": Math.round(pct(sorted, 0.999)),
    "complete+in order": complete,
    "server CPU %": cpu1 === undefined ? "" : +((cpu1 - cpu0) / 10 / o.duration).toFixed(1),
  };
}

/** C idle listener connections, one stream each: server RSS growth per connection. */
async function idle(o: Options, proc: Proc): Promise<Row> {
  const before = proc.rss();
  const t0 = performance.now();
  const names = Array.from({ length: o.conns }, (_, i) => `idle${i}`);
  const subs = await connectMany(o, names);
  const pub = await publisher(o);
  await barrier(o, pub, subs, names, { n: 0 });
  const connectMs = performance.now() - t0;
  await new Promise((r) => setTimeout(r, 1000));
  const after = proc.rss();
  pub.close();
  await Promise.all(subs.map((s) => s.close()));
  return {
    scenario: `idle ${o.conns} conns`,
    "bytes/conn": before && after ? Math.round((after - before) / o.conns) : "",
    "RSS before KiB": before ? Math.round(before / 1024) : "",
    "RSS after KiB": after ? Math.round(after / 1024) : "",
    "connect ms": Math.round(connectMs),
    "complete+in order": subs.every((s) => s.got > 0),
  };
}

/**
 * Many streams at rest: `count` streams, each given a 1 KiB header, no listeners. Server RSS
 * growth per stream (the header's own text included).
 */
async function headers(o: Options, proc: Proc, count: number): Promise<Row> {
  const pub = await Deno.connect({ hostname: o.host, port: o.port });
  const before = proc.rss();
  const header = JSON.stringify("h".repeat(1024));
  const t0 = performance.now();
  for (let i = 0; i < count; i += 1000) {
    let text = "";
    for (let j = i; j < Math.min(count, i + 1000); j++) {
      text += `{"action":"header","stream":"job-${j}","message":${header}}\n`;
    }
    await writeAll(pub, enc.encode(text));
  }
  // A request with an id: its reply means every header before it was handled.
  await writeAll(pub, enc.encode('{"action":"ping","id":"done"}\n'));
  const buf = new Uint8Array(4096);
  let got = "";
  while (!got.includes('"done"')) {
    const n = await pub.read(buf);
    if (n === null) break;
    got += new TextDecoder().decode(buf.subarray(0, n));
  }
  const ms = performance.now() - t0;
  await new Promise((r) => setTimeout(r, 1000));
  const after = proc.rss();
  pub.close();
  return {
    scenario: `${count} streams × 1 KiB header`,
    "bytes/stream": before && after ? Math.round((after - before) / count) : "",
    "RSS before KiB": before ? Math.round(before / 1024) : "",
    "RSS after KiB": after ? Math.round(after / 1024) : "",
    "load ms": Math.round(ms),
  };
}

/**
 * Join storm: `conns` listeners join a stream that has a header while puts flow at `rate`/s.
 * Each must get the header first, then the puts after the header's seq with no gap; after
 * `follow` puts it hangs up (so the storm measures joining, not a 10,000-way fanout).
 */
async function joinStorm(o: Options, proc: Proc): Promise<Row> {
  const pub = await publisher(o);
  await writeAll(
    pub,
    enc.encode('{"action":"header","stream":"storm","message":{"state":"running"}}\n'),
  );
  const subs = await connectMany(o, Array(o.conns).fill("storm"));
  let seq = 0;
  const send = writer(pub);
  const t0 = performance.now();
  const timer = setInterval(() => {
    const due = Math.floor(((performance.now() - t0) / 1000) * o.rate);
    let text = "";
    while (seq < due) text += putLine("storm", seq++, o.payload);
    if (text) send(text);
  }, 1);
  const cpu0 = proc.cpu() ?? 0;
  const finished = new Set<Sub>();
  let allDone: () => void = () => {};
  const doneP = new Promise<void>((r) => (allDone = r));
  for (const s of subs) {
    s.onLine = (sub, _seq, isHeader) => {
      if (!isHeader && sub.got >= o.follow && !finished.has(sub)) {
        finished.add(sub);
        sub.conn.write(enc.encode('{"action":"hangup","stream":"storm"}\n')).catch(() => {});
        if (finished.size === subs.length) allDone();
      }
    };
    s.onProgress = () => {
      if (s.closed && !finished.has(s)) {
        finished.add(s);
        if (finished.size === subs.length) allDone();
      }
    };
  }
  const tj = performance.now();
  // Joins go out in batches of 50, paced at joinRate per second (0: as fast as possible).
  for (let i = 0; i < subs.length; i += 50) {
    await Promise.all(subs.slice(i, i + 50).map((s) => s.listen()));
    const due = tj + ((i + 50) / o.joinRate) * 1000;
    if (o.joinRate > 0 && due > performance.now()) {
      await new Promise((r) => setTimeout(r, due - performance.now()));
    }
  }
  await Promise.race([doneP, new Promise((r) => setTimeout(r, 60_000))]);
  clearInterval(timer);
  const cpu1 = proc.cpu();
  const joinMs = subs.map((s) => (s.headerAt ? s.headerAt - s.joinedAt : Infinity)).sort((a, b) =>
    a - b
  );
  const lastHeader = Math.max(...subs.map((s) => s.headerAt));
  if (Deno.env.get("LOAD_DEBUG")) {
    // deno-lint-ignore no-console
    console.error(
      subs.filter((s) => !(s.headerFirst && !s.gaps && !s.disorder && s.got >= o.follow)).slice(
        0,
        5,
      ).map((s) => [s.headerFirst, s.headerSeq, s.gaps, s.disorder, s.got, s.last, s.closed]),
    );
  }
  const ok = subs.filter((s) =>
    s.headerFirst === true && s.gaps === 0 && s.disorder === 0 && s.got >= o.follow
  );
  pub.close();
  await Promise.all(subs.map((s) => s.close()));
  return {
    scenario: `join-storm ${o.conns} @ ${o.rate}/s`,
    "join all ms": Math.round(lastHeader - tj),
    "join p50 ms": +pct(joinMs, 0.5).toFixed(1),
    "join p99 ms": +pct(joinMs, 0.99).toFixed(1),
    "header first, no gap": `${ok.length}/${subs.length}`,
    "complete+in order": ok.length === subs.length,
    "server CPU %": cpu1 === undefined
      ? ""
      : +((cpu1 - cpu0) / 10 / ((performance.now() - tj) / 1000)).toFixed(1),
  };
}

function table(rows: Row[]): string {
  const cols = [...new Set(rows.flatMap((r) => Object.keys(r)))];
  const out = [`| ${cols.join(" | ")} |`, `|${cols.map(() => "---").join("|")}|`];
  for (const r of rows) out.push(`| ${cols.map((c) => String(r[c] ?? "")).join(" | ")} |`);
  return out.join("\n");
}

async function startServer(): Promise<
  { port: number; httpPort: number; pid: number; stop: () => Promise<void> }
> {
  const server = new URL("../server.ts", import.meta.url);
  const child = new Deno.Command(Deno.execPath(), {
    // Scale runs (100,000 headers of 1 KiB: about 430 MB) go past the default memory budget
    // (256 MiB): measure what they cost, uncapped.
    args: [
      "run",
      "-N",
      server.href,
      "--port",
      "0",
      "--log-level",
      "warn",
      "--max-memory",
      "4294967296",
      "--http-port",
      "0",
    ],
    stdout: "piped",
    stderr: "inherit",
  }).spawn();
  const reader = child.stdout.pipeThrough(new TextDecoderStream()).getReader();
  let text = "";
  while (!/http on http:\/\/[^:]+:(\d+)\s/.test(text)) {
    const { value, done } = await reader.read();
    if (done) throw new Error("Server exited before listening");
    text += value;
  }
  reader.releaseLock();
  child.stdout.cancel().catch(() => {});
  const port = Number(/listening on tcp:\/\/[^:]+:(\d+)\s/.exec(text)![1]);
  const httpPort = Number(/http on http:\/\/[^:]+:(\d+)\s/.exec(text)![1]);
  return {
    port,
    httpPort,
    pid: child.pid,
    stop: async () => {
      child.kill("SIGTERM");
      await child.status;
    },
  };
}

/** Runs the chosen scenarios and prints the table. */
export async function main(argv: string[]): Promise<void> {
  const a = parseArgs(argv, {
    string: [
      "host",
      "port",
      "scenario",
      "duration",
      "warmup",
      "subs",
      "streams",
      "conns",
      "rate",
      "payload",
      "server-pid",
      "follow",
      "join-rate",
      "count",
      "http-port",
    ],
    default: { host: "127.0.0.1", scenario: "fanout,streams,latency,idle,join-storm" },
  });
  const num = (k: string, d: number) => (a[k] === undefined ? d : Number(a[k]));
  const o: Options = {
    host: a.host,
    port: num("port", 0),
    duration: num("duration", 5),
    warmup: num("warmup", 1),
    subs: num("subs", 100),
    streams: num("streams", 1000),
    conns: num("conns", 5000),
    rate: num("rate", 2000),
    payload: Math.max(28, num("payload", 128)),
    follow: num("follow", 3),
    joinRate: num("join-rate", 5000),
    httpPort: num("http-port", 0),
  };
  const rows: Row[] = [];
  for (const sc of String(a.scenario).split(",")) {
    const spawned = o.port === 0 || a.port === undefined ? await startServer() : undefined;
    const opts = { ...o, port: spawned?.port ?? o.port, httpPort: spawned?.httpPort ?? o.httpPort };
    const proc = new Proc(spawned?.pid ?? (a["server-pid"] ? Number(a["server-pid"]) : undefined));
    try {
      if (sc === "fanout" || sc === "streams") rows.push(await throughput(opts, proc, sc));
      else if (sc === "ws" || sc === "sse") rows.push(await doorFanout(opts, proc, sc));
      else if (sc === "latency") rows.push(await latency(opts, proc));
      else if (sc === "idle") rows.push(await idle(opts, proc));
      else if (sc === "headers") rows.push(await headers(opts, proc, num("count", 100_000)));
      else if (sc === "join-storm") {
        rows.push(
          await joinStorm(
            { ...opts, conns: num("conns", 10_000), rate: num("rate", 10_000) },
            proc,
          ),
        );
      } else throw new TypeError(`Unknown scenario "${sc}"`);
    } finally {
      await spawned?.stop();
    }
    // deno-lint-ignore no-console
    console.error(JSON.stringify(rows.at(-1)));
  }
  // deno-lint-ignore no-console
  console.log(table(rows));
}

if (import.meta.main) await main(Deno.args);
