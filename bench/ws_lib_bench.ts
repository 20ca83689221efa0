#!/usr/bin/env -S deno run -A
/**
 * The door's own WebSocket (`ws_wire.ts`) against the npm package `ws` (`noServer` +
 * `handleUpgrade` on a node:http "upgrade", `maxPayload`, `perMessageDeflate: false`), each
 * serving the same small node:http(s) server started as a subprocess (this file with
 * `--serve wire|ws`), with the same message bound (1,044,480 bytes, the door's default).
 * The server answers each message with `len:N`; `GET /fan?count=C&size=S&batch=B` sends C text
 * messages of S bytes to every socket, B of them per macrotask (a hub tick): `wire` builds one
 * frame per message and writes it to every socket (`sendRaw`), `ws` calls each socket's
 * `send(bytes)`; `ws-cork` is `ws` with its socket corked per tick (through a private field; not
 * a way to build on, a measure of what the per-tick write is worth).
 *
 * Scenarios (each run on both, in the same run):
 * - `compat`: plain and TLS: the handshake, a message answered, a fragmented over-limit
 *   message (2 MiB in 64 KiB fragments) refused with which close code.
 * - `fragments`: N sockets (default 20) each send one 32 MiB text message in 64 KiB fragments;
 *   the server's RSS before, at its peak, after; close codes; MiB each got in.
 * - `tiny`: N sockets (`--tiny-sockets`, default 1) each send one 300,000-byte message in
 *   300,000 one-byte fragments; RSS peak, whether and when it is answered.
 * - `pings`: one socket sends 200,000 pings and reads nothing; RSS peak and after, and whether
 *   the server still answers HTTP at once.
 * - `fanout`: 100 raw-TCP listeners; C messages to each; server CPU (from /proc) per delivery.
 *
 * ```sh
 * deno run -A bench/ws_lib_bench.ts                            # every scenario
 * deno run -A bench/ws_lib_bench.ts --scenario fanout --count 20000 --batch 10
 * ```
 *
 * @module
 */

import { parseArgs } from "@std/cli/parse-args";
import { Buffer } from "node:buffer";
import http from "node:http";
import https from "node:https";
import process from "node:process";
import type { Duplex } from "node:stream";
import { WebSocketServer as WsServer } from "ws";
import { textFrame, validKey, WireWebSocket } from "../ws_wire.ts";

const enc = new TextEncoder();
const MAX = 1_044_480;

/** The part of a `ws` socket this bench uses (the package ships no types). */
interface WsSocket {
  send(data: Uint8Array | string, opts?: { binary: boolean }): void;
  on(event: "message", f: (data: Buffer | ArrayBuffer | Buffer[]) => void): void;
  on(event: "error" | "close", f: () => void): void;
}

/** The part of `ws`'s `WebSocketServer` this bench uses. */
interface WsServerLike {
  handleUpgrade(
    req: http.IncomingMessage,
    socket: Duplex,
    head: Buffer,
    cb: (ws: WsSocket) => void,
  ): void;
}
const WebSocketServer = WsServer as unknown as new (o: object) => WsServerLike;

// ---------------------------------------------------------------------------------------------
// The server (subprocess)

function serve(impl: string, certFile?: string, keyFile?: string): void {
  const senders: Array<{ raw(frame: Uint8Array, payload: Uint8Array): void }> = [];
  const wss = new WebSocketServer({ noServer: true, maxPayload: MAX, perMessageDeflate: false });
  const onRequest = (req: http.IncomingMessage, res: http.ServerResponse) => {
    const url = new URL(req.url ?? "/", "http://x");
    if (url.pathname === "/fan") {
      const count = Number(url.searchParams.get("count") ?? 1000);
      const size = Number(url.searchParams.get("size") ?? 200);
      const batch = Number(url.searchParams.get("batch") ?? 10);
      let sent = 0;
      const step = () => {
        for (let k = 0; k < batch && sent < count; k++, sent++) {
          const payload = enc.encode(String(sent).padEnd(size, "x"));
          const frame = impl === "wire" ? textFrame(payload) : payload;
          for (const s of senders) s.raw(frame, payload);
        }
        if (sent < count) setImmediate(step);
        else res.end(`sent ${count} to ${senders.length}\n`);
      };
      step();
      return;
    }
    res.end(JSON.stringify({ sockets: senders.length, rss: process.memoryUsage.rss() }));
  };
  const server = certFile && keyFile
    ? https.createServer(
      { cert: Deno.readTextFileSync(certFile), key: Deno.readTextFileSync(keyFile) },
      onRequest,
    )
    : http.createServer(onRequest);
  server.on("upgrade", (req: http.IncomingMessage, socket: Duplex, head: Uint8Array) => {
    const key = req.headers["sec-websocket-key"];
    if (impl === "wire") {
      if (typeof key !== "string" || !validKey(key)) return void socket.destroy();
      const ws = WireWebSocket.accept(socket, head, key, { maxMessageBytes: MAX });
      const s = { raw: (frame: Uint8Array) => ws.sendRaw(frame) };
      senders.push(s);
      ws.onmessage = (e) => {
        const n = typeof e.data === "string" ? enc.encode(e.data).length : e.data.byteLength;
        ws.send(`len:${n}`);
      };
      ws.onclose = () => senders.splice(senders.indexOf(s), 1);
    } else {
      wss.handleUpgrade(req, socket, Buffer.from(head), (ws: WsSocket) => {
        // `ws-cork`: the same, with the socket under `ws` (its private `_socket`) corked until
        // the end of the tick, as ws_wire.ts does: what the per-tick write is worth on its own.
        const under = (ws as unknown as { _socket: Duplex })._socket;
        let corked = false;
        const uncork = () => {
          corked = false;
          under.uncork();
        };
        const s = {
          raw: (_f: Uint8Array, payload: Uint8Array) => {
            if (impl === "ws-cork" && !corked) {
              corked = true;
              under.cork();
              process.nextTick(uncork);
            }
            ws.send(payload, { binary: false });
          },
        };
        senders.push(s);
        ws.on("message", (data: Buffer | ArrayBuffer | Buffer[]) => {
          const n = Array.isArray(data) ? data.reduce((a, b) => a + b.length, 0) : data.byteLength;
          ws.send(`len:${n}`);
        });
        ws.on("error", () => {});
        ws.on("close", () => senders.splice(senders.indexOf(s), 1));
      });
    }
  });
  server.listen(0, "127.0.0.1", () => {
    const addr = server.address();
    // deno-lint-ignore no-console
    console.log(`port ${typeof addr === "object" && addr ? addr.port : 0}`);
  });
}

// ---------------------------------------------------------------------------------------------
// The driver

interface Proc {
  pid: number;
  port: number;
  kill(): Promise<void>;
}

async function start(impl: string, tls?: { certFile: string; keyFile: string }): Promise<Proc> {
  const args = ["run", "-A", new URL(import.meta.url).pathname, "--serve", impl];
  if (tls) args.push("--cert", tls.certFile, "--key", tls.keyFile);
  const child = new Deno.Command(Deno.execPath(), {
    args,
    stdout: "piped",
    stderr: "inherit",
    stdin: "null",
  }).spawn();
  const reader = child.stdout.pipeThrough(new TextDecoderStream()).getReader();
  let text = "";
  let port = 0;
  while (!port) {
    const { value, done } = await reader.read();
    if (done) throw new Error("the server exited");
    text += value;
    port = Number(/port (\d+)/.exec(text)?.[1] ?? 0);
  }
  void (async () => {
    while (!(await reader.read()).done) { /* drain */ }
  })();
  return {
    pid: child.pid,
    port,
    async kill() {
      child.kill("SIGKILL");
      await child.status;
    },
  };
}

function rssKiB(pid: number): number {
  try {
    return Number(/VmRSS:\s+(\d+)/.exec(Deno.readTextFileSync(`/proc/${pid}/status`))?.[1] ?? 0);
  } catch {
    return 0;
  }
}

/** The process's user + system CPU, in milliseconds (clock ticks of 10 ms). */
function cpuMs(pid: number): number {
  const stat = Deno.readTextFileSync(`/proc/${pid}/stat`);
  const f = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  return (Number(f[11]) + Number(f[12])) * 10;
}

function sampler(pid: number): { stop(): number } {
  let peak = rssKiB(pid);
  const t = setInterval(() => peak = Math.max(peak, rssKiB(pid)), 20);
  return {
    stop() {
      clearInterval(t);
      return Math.max(peak, rssKiB(pid));
    },
  };
}

type Conn = Deno.Conn | Deno.TlsConn;

/** A raw client: the handshake done, and what came after the 101 collected in `got`. */
class Raw {
  got: Uint8Array[] = [];
  bytes = 0;
  closed = false;
  done: Promise<void>;
  #wake: (() => void) | undefined;
  constructor(readonly conn: Conn, readonly status: string, rest: Uint8Array, readAll = true) {
    if (rest.length) this.#push(rest);
    this.done = readAll ? this.#read() : Promise.resolve();
  }
  static async open(port: number, caCert?: string, readAll = true): Promise<Raw> {
    const conn: Conn = caCert
      ? await Deno.connectTls({ hostname: "127.0.0.1", port, caCerts: [caCert] })
      : await Deno.connect({ hostname: "127.0.0.1", port });
    await writeAll(
      conn,
      enc.encode(
        `GET /ws HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\nUpgrade: websocket\r\n` +
          `Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n` +
          `Sec-WebSocket-Version: 13\r\n\r\n`,
      ),
    );
    const buf = new Uint8Array(65536);
    let head: Uint8Array = new Uint8Array(0);
    for (;;) {
      const k = await conn.read(buf);
      if (k === null) throw new Error("closed during the handshake");
      head = concat(head, buf.subarray(0, k));
      const end = indexOfCrlf2(head);
      if (end >= 0) {
        const status = new TextDecoder().decode(head.subarray(0, head.indexOf(13)));
        return new Raw(conn, status, head.slice(end + 4), readAll);
      }
    }
  }
  /** Whether what comes is kept (otherwise only counted). */
  keep = true;
  #push(b: Uint8Array): void {
    if (this.keep) this.got.push(b.slice());
    this.bytes += b.length;
    this.#wake?.();
  }
  async #read(): Promise<void> {
    const buf = new Uint8Array(65536);
    for (;;) {
      let k: number | null;
      try {
        k = await this.conn.read(buf);
      } catch {
        break;
      }
      if (k === null) break;
      this.#push(buf.subarray(0, k));
    }
    this.closed = true;
    this.#wake?.();
  }
  /** Waits until `n` bytes came or the socket closed, or `ms` passed. */
  async until(n: number, ms: number): Promise<boolean> {
    const end = Date.now() + ms;
    while (this.bytes < n && !this.closed && Date.now() < end) {
      await new Promise<void>((r) => {
        this.#wake = r;
        setTimeout(r, Math.min(100, end - Date.now()));
      });
    }
    return this.bytes >= n;
  }
  all(): Uint8Array {
    return concat(...this.got);
  }
  /** The texts of the unfragmented text frames and the close code that came, in order. */
  frames(): { texts: string[]; close: number } {
    const b = this.all();
    const texts: string[] = [];
    let close = 0;
    for (let i = 0; i + 2 <= b.length;) {
      const op = (b[i] as number) & 0x0f;
      let n = (b[i + 1] as number) & 0x7f;
      let h = 2;
      if (n === 126) (n = ((b[i + 2] as number) << 8) | (b[i + 3] as number)), (h = 4);
      else if (n === 127) (n = Number(new DataView(b.buffer, i + 2, 8).getBigUint64(0))), (h = 10);
      const p = b.subarray(i + h, i + h + n);
      if (op === 1) texts.push(new TextDecoder().decode(p));
      if (op === 8 && p.length >= 2) close = ((p[0] as number) << 8) | (p[1] as number);
      i += h + n;
    }
    return { texts, close };
  }
  close(): void {
    try {
      this.conn.close();
    } catch {
      // closed
    }
  }
}

function concat(...parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((a, b) => a + b.length, 0));
  let o = 0;
  for (const p of parts) out.set(p, o), (o += p.length);
  return out;
}

function indexOfCrlf2(b: Uint8Array): number {
  for (let i = 0; i + 3 < b.length; i++) {
    if (b[i] === 13 && b[i + 1] === 10 && b[i + 2] === 13 && b[i + 3] === 10) return i;
  }
  return -1;
}

async function writeAll(conn: Conn, b: Uint8Array): Promise<void> {
  let off = 0;
  while (off < b.length) off += await conn.write(b.subarray(off));
}

/** A client frame header (masked with a zero key, so the payload goes as it is). */
function header(first: number, n: number): Uint8Array {
  if (n < 126) return new Uint8Array([first, 0x80 | n, 0, 0, 0, 0]);
  const h = new Uint8Array(14);
  h[0] = first;
  h[1] = 0x80 | 127;
  new DataView(h.buffer).setBigUint64(2, BigInt(n));
  return h;
}

async function fetchText(port: number, path: string, ca?: string): Promise<string> {
  const client = ca ? Deno.createHttpClient({ caCerts: [ca] }) : undefined;
  const r = await fetch(`${ca ? "https" : "http"}://127.0.0.1:${port}${path}`, {
    ...(client ? { client } : {}),
  });
  const t = await r.text();
  client?.close();
  return t;
}

async function makeCert(): Promise<{ certFile: string; keyFile: string; cert: string }> {
  const dir = await Deno.makeTempDir({ prefix: "ws_lib_bench_" });
  const keyFile = `${dir}/key.pem`, certFile = `${dir}/cert.pem`;
  const out = await new Deno.Command("openssl", {
    args: [
      ...["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=localhost"],
      ...["-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
      ...["-addext", "basicConstraints=critical,CA:FALSE", "-days", "1"],
      ...["-keyout", keyFile, "-out", certFile],
    ],
    stdout: "null",
    stderr: "null",
  }).output();
  if (!out.success) throw new Error("openssl failed");
  return { certFile, keyFile, cert: await Deno.readTextFile(certFile) };
}

type Row = Record<string, string | number>;

async function compat(impl: string, tlsOn: boolean): Promise<Row> {
  const tls = tlsOn ? await makeCert() : undefined;
  const p = await start(impl, tls);
  try {
    const a = await Raw.open(p.port, tls?.cert);
    await writeAll(a.conn, concat(header(0x81, 5), enc.encode("hello")));
    await a.until(7, 5000);
    const answer = a.frames().texts[0] ?? "(none)";
    a.close();
    // 2 MiB in 64 KiB fragments: refused at the fragment that passes the bound.
    const b = await Raw.open(p.port, tls?.cert);
    const frag = new Uint8Array(65536).fill(0x61);
    let sent = 0;
    for (let i = 0; i < 32 && !b.closed; i++) {
      try {
        await writeAll(
          b.conn,
          concat(header((i === 31 ? 0x80 : 0) | (i === 0 ? 1 : 0), 65536), frag),
        );
        sent += 65536;
      } catch {
        break;
      }
    }
    await b.until(Infinity, 3000);
    b.close();
    return {
      scenario: `compat ${tlsOn ? "TLS" : "plain"}`,
      impl,
      handshake: a.status,
      answer,
      "2 MiB close": b.frames().close,
      "KiB sent": sent / 1024,
    };
  } finally {
    await p.kill();
    if (tls) await Deno.remove(tls.certFile.replace(/\/cert.pem$/, ""), { recursive: true });
  }
}

async function fragments(impl: string, n: number, mib: number): Promise<Row> {
  const p = await start(impl);
  try {
    const rss0 = rssKiB(p.pid);
    const s = sampler(p.pid);
    const frag = concat(header(0, 65536), new Uint8Array(65536).fill(0x61));
    const count = mib * 16;
    const results = await Promise.all(Array.from({ length: n }, async () => {
      const c = await Raw.open(p.port);
      let sent = 0;
      for (let i = 0; i < count && !c.closed; i++) {
        frag[0] = (i === count - 1 ? 0x80 : 0) | (i === 0 ? 1 : 0);
        try {
          await writeAll(c.conn, frag);
          sent += 65536;
        } catch {
          break;
        }
      }
      await c.until(Infinity, 5000);
      c.close();
      return { sent, code: c.frames().close };
    }));
    await new Promise((r) => setTimeout(r, 1000));
    const peak = s.stop();
    const codes: Record<string, number> = {};
    for (const r of results) codes[r.code] = (codes[r.code] ?? 0) + 1;
    return {
      scenario: `fragments ${n} × ${mib} MiB / 64 KiB`,
      impl,
      "RSS before KiB": rss0,
      "RSS peak KiB": peak,
      "RSS after KiB": rssKiB(p.pid),
      "close codes": JSON.stringify(codes),
      "MiB sent (max)": Math.max(...results.map((r) => r.sent)) / (1 << 20),
    };
  } finally {
    await p.kill();
  }
}

async function tiny(impl: string, n: number, count: number): Promise<Row> {
  const p = await start(impl);
  try {
    const rss0 = rssKiB(p.pid);
    const s = sampler(p.pid);
    const all = new Uint8Array(count * 7);
    for (let i = 0; i < count; i++) {
      all.set(header((i === count - 1 ? 0x80 : 0) | (i === 0 ? 1 : 0), 1), i * 7);
      all[i * 7 + 6] = 0x61;
    }
    const t0 = performance.now();
    const results = await Promise.all(Array.from({ length: n }, async () => {
      const c = await Raw.open(p.port);
      await writeAll(c.conn, all);
      await c.until(4, 60_000);
      const ms = performance.now() - t0;
      c.close();
      const f = c.frames();
      return { answer: f.texts[0] ?? `close ${f.close}`, ms };
    }));
    const peak = s.stop();
    return {
      scenario: `tiny ${n} × ${count} one-byte fragments`,
      impl,
      "RSS before KiB": rss0,
      "RSS peak KiB": peak,
      "RSS after KiB": rssKiB(p.pid),
      answer: results[0]?.answer ?? "",
      "ms (slowest)": Math.round(Math.max(...results.map((r) => r.ms))),
    };
  } finally {
    await p.kill();
  }
}

async function pings(impl: string, count: number, bytes: number): Promise<Row> {
  const p = await start(impl);
  try {
    const rss0 = rssKiB(p.pid);
    const s = sampler(p.pid);
    const c = await Raw.open(p.port, undefined, false);
    const one = concat(header(0x89, bytes), new Uint8Array(bytes).fill(0x70));
    const all = new Uint8Array(count * one.length);
    for (let i = 0; i < count; i++) all.set(one, i * one.length);
    const t00 = performance.now();
    // The server may stop reading (or close): do not wait for all of it to be taken.
    const writing = writeAll(c.conn, all).then(() => "all", () => "cut");
    const took = await Promise.race([
      writing,
      new Promise<string>((r) => setTimeout(() => r("not all"), 5000)),
    ]);
    const writeMs = performance.now() - t00;
    const t0 = performance.now();
    const stats = JSON.parse(await fetchText(p.port, "/stats"));
    const httpMs = performance.now() - t0;
    const peak = s.stop();
    c.close();
    return {
      scenario: `pings ${count} × ${bytes} B unread`,
      impl,
      "pings taken": took,
      "write ms": Math.round(writeMs),
      "socket still open": stats.sockets,
      "RSS before KiB": rss0,
      "RSS peak KiB": peak,
      "RSS after KiB": rssKiB(p.pid),
      "GET ms after": Math.round(httpMs),
    };
  } finally {
    await p.kill();
  }
}

async function fanout(
  impl: string,
  subs: number,
  count: number,
  size: number,
  batch: number,
): Promise<Row> {
  const p = await start(impl);
  try {
    const clients = await Promise.all(Array.from({ length: subs }, () => Raw.open(p.port)));
    // Each client keeps only a byte count (its frames are of known length).
    for (const c of clients) (c.keep = false), (c.got = []);
    const frameLen = size + (size < 126 ? 2 : size < 65536 ? 4 : 10);
    const base = clients.map((c) => c.bytes);
    // Warm up, then measure.
    await fetchText(p.port, `/fan?count=2000&size=${size}&batch=${batch}`);
    await Promise.all(
      clients.map((c, i) => c.until((base[i] as number) + 2000 * frameLen, 30_000)),
    );
    const start0 = clients.map((c) => c.bytes);
    const cpu0 = cpuMs(p.pid);
    const t0 = performance.now();
    const s = sampler(p.pid);
    await fetchText(p.port, `/fan?count=${count}&size=${size}&batch=${batch}`);
    const ok = await Promise.all(
      clients.map((c, i) => c.until((start0[i] as number) + count * frameLen, 120_000)),
    );
    const ms = performance.now() - t0;
    const cpu = cpuMs(p.pid) - cpu0;
    const peak = s.stop();
    for (const c of clients) c.close();
    const deliveries = subs * count;
    return {
      scenario: `fanout 1→${subs}, ${count} × ${size} B, ${batch}/tick`,
      impl,
      "all delivered": ok.every(Boolean) ? "yes" : "NO",
      "deliveries/s": Math.round(deliveries / (ms / 1000)),
      "server CPU ms": cpu,
      "µs CPU/delivery": Number((cpu * 1000 / deliveries).toFixed(3)),
      "RSS peak KiB": peak,
    };
  } finally {
    await p.kill();
  }
}

async function main(): Promise<void> {
  const a = parseArgs(Deno.args, {
    string: ["serve", "cert", "key", "scenario", "impl", "ping-bytes"],
    default: {
      scenario: "compat,fragments,tiny,pings,fanout",
      impl: "wire,ws",
      sockets: 20,
      mib: 32,
      "tiny-sockets": 1,
      "tiny-count": 300_000,
      pings: 200_000,
      "ping-bytes": "0,125",
      subs: 100,
      count: 20_000,
      size: 200,
      batch: 10,
    },
  });
  if (a.serve) return serve(a.serve, a.cert, a.key);
  const rows: Row[] = [];
  for (const sc of String(a.scenario).split(",")) {
    for (const impl of String(a.impl).split(",")) {
      const before = rows.length;
      if (sc === "compat") rows.push(await compat(impl, false), await compat(impl, true));
      else if (sc === "fragments") {
        rows.push(await fragments(impl, Number(a.sockets), Number(a.mib)));
      } else if (sc === "tiny") {
        rows.push(await tiny(impl, Number(a["tiny-sockets"]), Number(a["tiny-count"])));
      } else if (sc === "pings") {
        for (const b of String(a["ping-bytes"]).split(",")) {
          rows.push(await pings(impl, Number(a.pings), Number(b)));
        }
      } else if (sc === "fanout") {
        rows.push(
          await fanout(impl, Number(a.subs), Number(a.count), Number(a.size), Number(a.batch)),
        );
      } else throw new TypeError(`Unknown scenario "${sc}"`);
      // deno-lint-ignore no-console
      for (const r of rows.slice(before)) console.log(JSON.stringify(r));
    }
  }
}

if (import.meta.main) await main();
