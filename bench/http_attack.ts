/**
 * The HTTP door under the attacks of issue 11, measured on a server started as a subprocess:
 *
 * - `ws-fragments`: N WebSockets (default 20) each send one text message of 32 MiB in 1 MiB
 *   fragments (as fast as the server takes them); reported: the server's RSS before and at its
 *   peak, how many sockets were closed and with which code, and how many bytes each got in.
 * - `slowloris`: N connections (default 500) each send a partial request head and then nothing;
 *   reported: how many the server still holds after the header timeout (plus 1 s), and RSS.
 *
 * ```sh
 * deno run -A bench/http_attack.ts                      # both, against ./server.ts
 * deno run -A bench/http_attack.ts --server /other/checkout/server.ts --scenario ws-fragments
 * ```
 *
 * @module
 */

import { parseArgs } from "@std/cli/parse-args";
import { TextLineStream } from "@std/streams/text-line-stream";

const enc = new TextEncoder();

interface Proc {
  pid: number;
  http: number;
  kill(): Promise<void>;
}

async function start(server: string, args: string[]): Promise<Proc> {
  const child = new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", server, "--port", "0", "--http-port", "0", "--log-level", "warn", ...args],
    stdout: "piped",
    stderr: "null",
    stdin: "null",
  }).spawn();
  const lines = child.stdout.pipeThrough(new TextDecoderStream()).pipeThrough(
    new TextLineStream(),
  ).getReader();
  let http = 0;
  while (!http) {
    const { value, done } = await lines.read();
    if (done) throw new Error("the server exited");
    http = Number(/http on https?:\/\/.*:(\d+)$/.exec(value)?.[1] ?? 0);
  }
  void (async () => {
    while (!(await lines.read()).done) { /* drain */ }
  })();
  return {
    pid: child.pid,
    http,
    async kill() {
      child.kill("SIGKILL");
      await child.status;
    },
  };
}

function rssKiB(pid: number): number {
  const m = /VmRSS:\s+(\d+)/.exec(Deno.readTextFileSync(`/proc/${pid}/status`));
  return Number(m?.[1] ?? 0);
}

/** Descriptors the process holds. */
function fds(pid: number): number {
  return [...Deno.readDirSync(`/proc/${pid}/fd`)].length;
}

async function wsFragments(server: string, n: number, mib: number): Promise<object> {
  const p = await start(server, []);
  try {
    const rss0 = rssKiB(p.pid);
    let peak = rss0;
    const sampler = setInterval(() => {
      try {
        peak = Math.max(peak, rssKiB(p.pid));
      } catch {
        // gone
      }
    }, 20);
    const fragment = new Uint8Array(1 << 20).fill(0x61);
    const results = await Promise.all(Array.from({ length: n }, async () => {
      const conn = await Deno.connect({ hostname: "127.0.0.1", port: p.http });
      await conn.write(enc.encode(
        `GET /ws HTTP/1.1\r\nHost: 127.0.0.1:${p.http}\r\nUpgrade: websocket\r\n` +
          `Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n` +
          `Sec-WebSocket-Version: 13\r\n\r\n`,
      ));
      // Read in the background: the 101, then frames until the close.
      let got = new Uint8Array(0);
      let closed = false;
      const reading = (async () => {
        const buf = new Uint8Array(65536);
        for (;;) {
          let k: number | null;
          try {
            k = await conn.read(buf);
          } catch {
            break;
          }
          if (k === null) break;
          const next = new Uint8Array(got.length + k);
          next.set(got);
          next.set(buf.subarray(0, k), got.length);
          got = next;
        }
        closed = true;
      })();
      let sent = 0;
      for (let i = 0; i < mib && !closed; i++) {
        const h = new Uint8Array(14);
        h[0] = (i === mib - 1 ? 0x80 : 0) | (i === 0 ? 1 : 0);
        h[1] = 0x80 | 127;
        new DataView(h.buffer).setBigUint64(2, BigInt(fragment.length));
        try {
          await conn.write(h);
          let off = 0;
          while (off < fragment.length) off += await conn.write(fragment.subarray(off));
          sent += fragment.length;
        } catch {
          break;
        }
      }
      const timer = setTimeout(() => {
        try {
          conn.close();
        } catch {
          // closed
        }
      }, 5000);
      await reading;
      clearTimeout(timer);
      try {
        conn.close();
      } catch {
        // closed
      }
      // The close code: the last close frame (0x88) in what came back.
      let code = 0;
      const text = got;
      for (let i = 0; i + 3 < text.length; i++) {
        if (text[i] === 0x88 && (text[i + 1] as number) < 126 && (text[i + 1] as number) >= 2) {
          code = ((text[i + 2] as number) << 8) | (text[i + 3] as number);
        }
      }
      return { sent, code };
    }));
    clearInterval(sampler);
    const after = rssKiB(p.pid);
    const codes: Record<string, number> = {};
    for (const r of results) codes[r.code] = (codes[r.code] ?? 0) + 1;
    return {
      scenario: `ws-fragments ${n} × ${mib} MiB`,
      "RSS before KiB": rss0,
      "RSS peak KiB": peak,
      "RSS after KiB": after,
      "close codes": JSON.stringify(codes),
      "MiB sent per socket (max)": Math.max(...results.map((r) => r.sent)) / (1 << 20),
    };
  } finally {
    await p.kill();
  }
}

async function slowloris(server: string, n: number, headerTimeout: number): Promise<object> {
  const p = await start(server, ["--max-connections", String(n * 2)]);
  try {
    const rss0 = rssKiB(p.pid);
    const fd0 = fds(p.pid);
    const conns: Deno.Conn[] = [];
    for (let i = 0; i < n; i++) {
      const c = await Deno.connect({ hostname: "127.0.0.1", port: p.http });
      await c.write(enc.encode("GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nX-A: "));
      conns.push(c);
    }
    const held = fds(p.pid) - fd0;
    await new Promise((r) => setTimeout(r, headerTimeout + 1000));
    const after = fds(p.pid) - fd0;
    const rss = rssKiB(p.pid);
    for (const c of conns) {
      try {
        c.close();
      } catch {
        // closed
      }
    }
    return {
      scenario: `slowloris ${n} partial heads`,
      "held at once": held,
      [`held after ${headerTimeout + 1000} ms`]: after,
      "RSS before KiB": rss0,
      "RSS KiB": rss,
    };
  } finally {
    await p.kill();
  }
}

if (import.meta.main) {
  const a = parseArgs(Deno.args, {
    string: ["server", "scenario", "sockets", "mib", "conns"],
    default: {
      server: new URL("../server.ts", import.meta.url).pathname,
      scenario: "ws-fragments,slowloris",
      sockets: "20",
      mib: "32",
      conns: "500",
    },
  });
  for (const sc of String(a.scenario).split(",")) {
    const row = sc === "ws-fragments"
      ? await wsFragments(a.server, Number(a.sockets), Number(a.mib))
      : sc === "slowloris"
      ? await slowloris(a.server, Number(a.conns), 10_000)
      : undefined;
    if (!row) throw new TypeError(`Unknown scenario "${sc}"`);
    // deno-lint-ignore no-console
    console.log(JSON.stringify(row));
  }
}
