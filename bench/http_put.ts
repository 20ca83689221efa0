/**
 * REST put throughput through the HTTP door: `--clients` keep-alive clients (default 16) each
 * `POST /streams/s<i>` small JSON messages back to back for `--duration` seconds, against a
 * server started as a subprocess (`--server`, default ./server.ts). Prints puts/s and the
 * server's CPU time per put (from /proc, Linux).
 *
 * ```sh
 * deno run -A bench/http_put.ts --duration 5
 * deno run -A bench/http_put.ts --server /other/checkout/server.ts
 * ```
 *
 * @module
 */

import { parseArgs } from "@std/cli/parse-args";
import { TextLineStream } from "@std/streams/text-line-stream";

function cpuTicks(pid: number): number {
  const stat = Deno.readTextFileSync(`/proc/${pid}/stat`);
  const f = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  return Number(f[11]) + Number(f[12]);
}

if (import.meta.main) {
  const a = parseArgs(Deno.args, {
    string: ["server", "clients", "duration"],
    default: {
      server: new URL("../server.ts", import.meta.url).pathname,
      clients: "16",
      duration: "5",
    },
  });
  const child = new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", a.server, "--port", "0", "--http-port", "0", "--log-level", "warn"],
    stdout: "piped",
    stderr: "null",
    stdin: "null",
  }).spawn();
  const lines = child.stdout.pipeThrough(new TextDecoderStream()).pipeThrough(
    new TextLineStream(),
  ).getReader();
  let port = 0;
  while (!port) {
    const { value, done } = await lines.read();
    if (done) throw new Error("the server exited");
    port = Number(/http on http:\/\/.*:(\d+)$/.exec(value)?.[1] ?? 0);
  }
  const base = `http://127.0.0.1:${port}`;
  const body = JSON.stringify({ state: "running", done: 42 });
  const clients = Number(a.clients);
  const ms = Number(a.duration) * 1000;
  // Warm up, then measure.
  const run = async (until: number) => {
    let n = 0;
    await Promise.all(Array.from({ length: clients }, async (_, i) => {
      while (performance.now() < until) {
        const res = await fetch(`${base}/streams/s${i}`, {
          method: "POST",
          headers: { "content-type": "application/json" },
          body,
        });
        await res.arrayBuffer();
        if (res.status !== 200) throw new Error(`status ${res.status}`);
        n++;
      }
    }));
    return n;
  };
  await run(performance.now() + 1000);
  const t0 = performance.now();
  const c0 = cpuTicks(child.pid);
  const n = await run(t0 + ms);
  const secs = (performance.now() - t0) / 1000;
  const cpu = (cpuTicks(child.pid) - c0) / 100; // clock ticks of 10 ms
  // deno-lint-ignore no-console
  console.log(JSON.stringify({
    scenario: `REST put, ${clients} keep-alive clients`,
    "puts/s": Math.round(n / secs),
    "server CPU %": Math.round((1000 * cpu) / secs) / 10,
    "server µs/put": Math.round((cpu * 1e7) / n) / 10,
  }));
  child.kill("SIGKILL");
  await child.status;
  await lines.cancel();
}
