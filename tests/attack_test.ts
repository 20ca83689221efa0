/**
 * Attacks through the real doors (issue 11): descriptor exhaustion under a low `ulimit -n`,
 * connections past `--max-connections`, and unauthenticated connections holding partial lines.
 * Each runs `server.ts` as a child process and reads its CPU from /proc.
 */
import { assert, assertEquals } from "@std/assert";
import { TextLineStream } from "@std/streams/text-line-stream";
import { type Proc, start } from "./_ulimit.ts";

const enc = new TextEncoder();
const linux = Deno.build.os === "linux";

async function deadline<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  try {
    return await Promise.race([
      p,
      new Promise<never>((_, reject) => {
        timer = setTimeout(() => reject(new Error(`No ${what} within ${ms} ms`)), ms);
      }),
    ]);
  } finally {
    clearTimeout(timer);
  }
}

/** CPU time of the process in clock ticks (utime + stime). */
function cpuTicks(pid: number): number {
  const stat = Deno.readTextFileSync(`/proc/${pid}/stat`);
  const f = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  return Number(f[11]) + Number(f[12]);
}

/** Opens up to `n` connections, sending `first` on each; stops at the first refusal. */
async function hold(port: number, n: number, first: string): Promise<Deno.Conn[]> {
  const conns: Deno.Conn[] = [];
  for (let i = 0; i < n; i++) {
    try {
      const c = await deadline(Deno.connect({ hostname: "127.0.0.1", port }), 5000, "connect");
      conns.push(c);
      if (first) await c.write(enc.encode(first));
    } catch {
      break;
    }
  }
  return conns;
}

/** Sends frames on a new connection and reads `want` replies. */
async function ask(
  port: number,
  frames: object[],
  want: number,
): Promise<Record<string, unknown>[]> {
  const conn = await Deno.connect({ hostname: "127.0.0.1", port });
  try {
    await conn.write(enc.encode(frames.map((f) => JSON.stringify(f) + "\n").join("")));
    const lines = conn.readable.pipeThrough(new TextDecoderStream()).pipeThrough(
      new TextLineStream(),
    ).getReader();
    const got: Record<string, unknown>[] = [];
    await deadline(
      (async () => {
        while (got.length < want) {
          const { value, done } = await lines.read();
          if (done) break;
          got.push(JSON.parse(value));
        }
      })(),
      10_000,
      "replies",
    );
    await lines.cancel();
    return got;
  } catch (e) {
    try {
      conn.close();
    } catch {
      // closed with its readable
    }
    throw e;
  }
}

/** A bystander: a TCP ping and an HTTP health check both answer. */
async function assertServes(p: Proc): Promise<void> {
  assertEquals(await ask(p.tcp, [{ action: "ping", id: 1 }], 1), [{ action: "pong", id: 1 }]);
  const res = await deadline(fetch(`http://127.0.0.1:${p.http}/healthz`), 10_000, "healthz");
  assertEquals(res.status, 200);
  await res.body?.cancel();
}

/** Waits until the process has used no CPU over 300 ms (it may be settling), within 10 s. */
async function assertIdle(pid: number): Promise<void> {
  const until = Date.now() + 10_000;
  let used = 0;
  while (Date.now() < until) {
    const a = cpuTicks(pid);
    await new Promise((r) => setTimeout(r, 300));
    used = cpuTicks(pid) - a;
    if (used <= 3) return;
  }
  throw new Error(`The server keeps using CPU while descriptors are exhausted (${used} ticks)`);
}

const ULIMIT = 128;
const HOLD = 200; // more connections than the server has descriptors

Deno.test({
  name: "Exhausting descriptors on the HTTP port neither ends nor spins the server",
  ignore: !linux,
  async fn() {
    await using p = await start(["--max-connections", "100000", "--log-level", "warn"], ULIMIT);
    const conns = await hold(p.http, HOLD, "GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n");
    try {
      await deadline(
        (async () => {
          while (!p.log.some((l) => l.includes("http accept failed"))) {
            await new Promise((r) => setTimeout(r, 20));
          }
        })(),
        10_000,
        "exhaustion logged",
      );
      assert(!p.exited(), "the server exited");
      await assertIdle(p.pid);
    } finally {
      for (const c of conns) c.close();
    }
    await assertServes(p);
    assert(!p.exited(), "the server exited");
  },
});

Deno.test({
  name: "Exhausting descriptors on the TCP port backs off and resumes by itself",
  ignore: !linux,
  async fn() {
    await using p = await start(["--max-connections", "100000", "--log-level", "warn"], ULIMIT);
    const conns = await hold(p.tcp, HOLD, "");
    try {
      await deadline(
        (async () => {
          while (!p.log.some((l) => l.includes("pausing accepts"))) {
            await new Promise((r) => setTimeout(r, 20));
          }
        })(),
        10_000,
        "exhaustion logged",
      );
      await assertIdle(p.pid);
    } finally {
      for (const c of conns) c.close();
    }
    await assertServes(p);
    assertEquals(p.log.filter((l) => l.includes("pausing accepts")).length, 1, "once per episode");
  },
});

Deno.test("Connections past --max-connections get limit_exceeded on TCP and 503 on HTTP", async () => {
  await using p = await start(["--max-connections", "3", "--log-level", "warn"]);
  const conns = await hold(p.tcp, 3, '{"action":"ping","id":0}\n');
  try {
    const refused = await ask(p.tcp, [], 1);
    assertEquals(refused.map((f) => [f.action, f.code, f.limit]), [
      ["error", "limit_exceeded", "max_connections"],
    ]);
  } finally {
    for (const c of conns) c.close();
  }
  // The HTTP door counts open SSE responses too: hold three.
  const sse = await Promise.all(
    [1, 2, 3].map(() =>
      fetch(`http://127.0.0.1:${p.http}/streams/x`, { headers: { accept: "text/event-stream" } })
    ),
  );
  try {
    const res = await fetch(`http://127.0.0.1:${p.http}/healthz`);
    assertEquals(res.status, 503);
    assertEquals((await res.json()).code, "limit_exceeded");
  } finally {
    for (const r of sse) await r.body?.cancel();
  }
});

Deno.test("Unauthenticated connections are cut at the auth timeout and hold 64 KiB at most", async () => {
  await using p = await start(["--token", "t:s3cret", "--auth-timeout", "300"]);
  // A partial line under the pre-hello bound: kept until the deadline, then cut.
  const quiet = await Deno.connect({ hostname: "127.0.0.1", port: p.tcp });
  await quiet.write(enc.encode("{" + "a".repeat(1000)));
  const lines = quiet.readable.pipeThrough(new TextDecoderStream()).pipeThrough(
    new TextLineStream(),
  ).getReader();
  const got: Record<string, unknown>[] = [];
  await deadline(
    (async () => {
      for (;;) {
        const { value, done } = await lines.read();
        if (done) break;
        got.push(JSON.parse(value));
      }
    })(),
    10_000,
    "the cut",
  );
  assertEquals(got.map((f) => [f.action, f.code]), [["error", "unauthorized"], [
    "close",
    undefined,
  ]]);
  // More than 64 KiB of a line before hello: cut at once.
  const big = await Deno.connect({ hostname: "127.0.0.1", port: p.tcp });
  const reading = new Response(big.readable).text();
  await big.write(enc.encode("{" + "a".repeat(70_000))).catch(() => 0);
  const text = await deadline(reading, 10_000, "the cut of a long line");
  assertEquals(JSON.parse(text.split("\n")[0]!).code, "line_too_long");
  // A client that says hello in time stays.
  const ok = await ask(p.tcp, [{ action: "hello", token: "s3cret", id: 1 }, {
    action: "ping",
    id: 2,
  }], 2);
  assertEquals(ok.map((f) => f.action), ["ok", "pong"]);
});
