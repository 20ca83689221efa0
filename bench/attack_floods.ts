// deno-lint-ignore-file no-console -- a program: its output is the figures
/**
 * The floods of docs/limits.md against a server process, with RSS after each phase and a
 * bystander's longest lag (put to receipt, puts every 20 ms) during the pattern-join flood.
 *
 * Run: deno run -A bench/attack_floods.ts [phase...] [--server path/to/server.ts] [-- server flags]
 * (BENCH_DENO_FLAGS: runtime flags for the server; the server inherits the environment.)
 * Phases (default all, in this order): streams (100,000 streams of 110-character names),
 * headers (800 headers of 1 MB), join1 and join10 (1 and 10 connections looping a pattern
 * listen `jobs.*N*` / `hangup` for 5 s beside the bystander).
 *
 * @module
 */

const enc = new TextEncoder();
const dec = new TextDecoder();

const args = [...Deno.args];
const dash = args.indexOf("--");
const serverFlags = dash >= 0 ? args.splice(dash).slice(1) : [];
const si = args.indexOf("--server");
const serverPath = si >= 0
  ? args.splice(si, 2)[1]!
  : new URL("../server.ts", import.meta.url).pathname;
const phases = args.length > 0 ? args : ["streams", "headers", "join1", "join10"];

function rss(pid: number): number {
  const s = Deno.readTextFileSync(`/proc/${pid}/status`);
  return Number(/VmRSS:\s+(\d+)/.exec(s)![1]) / 1024;
}

/** A line-reading TCP connection. */
class Conn {
  #buf = "";
  lines: string[] = [];
  #wake: (() => void) | undefined;
  closed = false;
  constructor(readonly c: Deno.Conn) {
    this.#read();
  }
  static async open(port: number): Promise<Conn> {
    return new Conn(await Deno.connect({ hostname: "127.0.0.1", port }));
  }
  async #read(): Promise<void> {
    const b = new Uint8Array(1 << 16);
    try {
      for (;;) {
        const n = await this.c.read(b);
        if (n === null) break;
        this.#buf += dec.decode(b.subarray(0, n), { stream: true });
        let i;
        while ((i = this.#buf.indexOf("\n")) >= 0) {
          this.lines.push(this.#buf.slice(0, i));
          this.#buf = this.#buf.slice(i + 1);
        }
        this.#wake?.();
      }
    } catch { /* closed */ }
    this.closed = true;
    this.#wake?.();
  }
  send(o: unknown): Promise<number> {
    return this.c.write(enc.encode(JSON.stringify(o) + "\n"));
  }
  async sendRaw(s: string): Promise<void> {
    const b = enc.encode(s);
    for (let off = 0; off < b.length;) off += await this.c.write(b.subarray(off));
  }
  /** The next frame matching `pred` (frames before it are dropped). */
  async waitFor(pred: (o: Record<string, unknown>) => boolean, ms = 60_000) {
    const end = Date.now() + ms;
    for (;;) {
      const lines = this.lines;
      this.lines = [];
      for (let i = 0; i < lines.length; i++) {
        const o = JSON.parse(lines[i]!);
        if (pred(o)) {
          this.lines = lines.slice(i + 1).concat(this.lines);
          return o;
        }
      }
      if (this.closed) throw new Error("connection closed");
      if (Date.now() > end) throw new Error("timed out");
      await new Promise<void>((r) => {
        this.#wake = r;
        setTimeout(r, 100);
      });
    }
  }
  close() {
    try {
      this.c.close();
    } catch { /* closed */ }
  }
}

const child = new Deno.Command(Deno.execPath(), {
  args: [
    "run",
    "-A",
    // Runtime flags for the server (e.g. --v8-flags=...), space-separated.
    ...(Deno.env.get("BENCH_DENO_FLAGS")?.split(" ").filter(Boolean) ?? []),
    serverPath,
    "--port",
    "0",
    ...serverFlags,
  ],
  stdout: "piped",
  stderr: "null",
}).spawn();
const pid = child.pid;
let port = 0;
{
  const reader = child.stdout.pipeThrough(new TextDecoderStream()).getReader();
  let text = "";
  while (!port) {
    const { value, done } = await reader.read();
    if (done) throw new Error("server exited: " + text);
    text += value;
    const m = /:(\d+)/.exec(text);
    if (m) port = Number(m[1]);
  }
  (async () => {
    while (!(await reader.read()).done) { /* drain */ }
  })();
}
console.log(
  `server ${serverPath} ${serverFlags.join(" ")}: port ${port}, RSS ${rss(pid).toFixed(0)} MB`,
);

async function streams(): Promise<void> {
  const a = await Conn.open(port);
  const N = 100_000;
  const codes: Record<string, number> = {};
  for (let i = 0; i < N; i += 5000) {
    let s = "";
    const last = Math.min(N, i + 5000) - 1;
    for (let j = i; j <= last; j++) {
      // 110 characters: "jobs.<j>." and x padding.
      const name = `jobs.${j}.`.padEnd(110, "x");
      s += JSON.stringify({ action: "put", stream: name, message: j, id: j }) + "\n";
    }
    await a.sendRaw(s);
    for (let j = i; j <= last; j++) {
      const o = await a.waitFor((o) => o.id === j);
      const k = o.action === "ok" ? "ok" : `${o.code}:${o.limit}`;
      codes[k] = (codes[k] ?? 0) + 1;
    }
  }
  // Each stream holds its put in history (history gives way to the rest of the budget).
  console.log(
    `streams: 100,000 puts to new 110-char names ${JSON.stringify(codes)}, RSS ${
      rss(pid).toFixed(0)
    } MB`,
  );
  held.push(a);
}

async function headers(): Promise<void> {
  const c = await Conn.open(port);
  const msg = "h".repeat(1_000_000);
  const codes: Record<string, number> = {};
  for (let i = 0; i < 800; i++) {
    // On the streams held (a new one would pass --max-streams after the streams phase).
    const stream = `jobs.${i}.`.padEnd(110, "x");
    await c.sendRaw(`{"action":"header","stream":"${stream}","message":"${msg}","id":${i}}\n`);
    const o = await c.waitFor((o) => o.id === i);
    const k = o.action === "ok" ? "ok" : `${o.code}:${o.limit}`;
    codes[k] = (codes[k] ?? 0) + 1;
  }
  console.log(`headers: 800 x 1 MB ${JSON.stringify(codes)}, RSS ${rss(pid).toFixed(0)} MB`);
  held.push(c);
}

/** The bystander's listener, joined before any flood (a full budget refuses a new stream). */
const by = await Conn.open(port);
await by.send({ action: "listen", stream: "by", id: "l" });
await by.waitFor((o) => o.id === "l");

async function join(attackers: number): Promise<void> {
  const pub = await Conn.open(port);
  const sent = new Map<number, number>();
  let seq = 0;
  let maxLag = 0;
  let gaps = 0;
  let expect = 1;
  let stop = false;
  const reading = (async () => {
    while (!stop || expect <= seq) {
      const f = await by.waitFor((o) => o.action === "put" && o.stream === "by");
      const m = f.message as number;
      if (m !== expect) gaps++;
      expect = m + 1;
      maxLag = Math.max(maxLag, performance.now() - sent.get(m)!);
    }
  })();
  const iv = setInterval(() => {
    seq++;
    sent.set(seq, performance.now());
    pub.send({ action: "put", stream: "by", message: seq });
  }, 20);
  const conns: Conn[] = [];
  const until = performance.now() + 5000;
  let joins = 0;
  let cut = 0;
  await Promise.all(Array.from({ length: attackers }, async () => {
    let i = 0;
    while (performance.now() < until) {
      // A connection cut (slow_consumer while the budget is spent) is replaced.
      const c = await Conn.open(port);
      conns.push(c);
      try {
        while (performance.now() < until) {
          const p = `jobs.*${i++ % 7}*`;
          await c.send({ action: "listen", pattern: p, id: "p" });
          await c.waitFor((o) => o.id === "p");
          await c.send({ action: "hangup", pattern: p, id: "h" });
          await c.waitFor((o) => o.id === "h");
          joins++;
        }
      } catch {
        cut++;
      }
    }
  }));
  clearInterval(iv);
  stop = true;
  // One last put ends the reader's wait.
  seq++;
  sent.set(seq, performance.now());
  await pub.send({ action: "put", stream: "by", message: seq });
  await reading;
  console.log(
    `join${attackers}: ${attackers} connections, ${joins} joins in 5 s (${cut} cut); bystander got ${seq} puts, ` +
      `gaps ${gaps}, max lag ${maxLag.toFixed(0)} ms; RSS ${rss(pid).toFixed(0)} MB`,
  );
  for (const c of [...conns, pub]) c.close();
}

const held: Conn[] = [];
for (const phase of phases) {
  if (phase === "streams") await streams();
  else if (phase === "headers") await headers();
  else if (phase === "join1") await join(1);
  else if (phase === "join10") await join(10);
  else throw new Error(`Unknown phase ${phase}`);
}
for (const c of held) c.close();
child.kill("SIGTERM");
await child.status;
