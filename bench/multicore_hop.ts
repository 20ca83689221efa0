/**
 * The forwarding hop of `--workers N`, alone (BENCHMARKS.md, "Multi-core"): what it costs to
 * carry one event (`[EVENT, stream, kind, text, seq, epoch]`, a 128-character message) from one
 * thread to another, and have the receiver decode its text, for the transports considered:
 *
 * - `port-arrays`: a `MessagePort` between two Workers, a batch = an array of message arrays
 *   (what partition.ts does);
 * - `port-text`: the same port, a batch = one string of JSON lines (cheaper to clone, costs a
 *   split and a parse per message);
 * - `unix`: a unix socket between two processes, newline-delimited JSON (what processes with
 *   `reusePort` would use).
 *
 * CPU is utime+stime of every process involved (/proc), per message; batches of B messages.
 *
 *   deno run -A --unstable-net bench/multicore_hop.ts            # all transports, B = 1, 16, 256
 *
 * @module
 */

const N = Number(Deno.env.get("HOP_MESSAGES") ?? 200_000);
const TEXT = JSON.stringify("x".repeat(128));
const HZ = 100; // CLK_TCK on Linux

function ticks(pid: number | "self"): number {
  const f = Deno.readTextFileSync(`/proc/${pid}/stat`).split(") ")[1]?.split(" ") ?? [];
  return Number(f[11]) + Number(f[12]);
}

function event(i: number): unknown[] {
  return [6, "job.1", "put", TEXT, i, "e1"];
}

/** The receiving side, in a Worker or a child process. */
async function sink(): Promise<void> {
  const scope = globalThis as unknown as {
    onmessage: ((e: MessageEvent) => void) | null;
    postMessage(m: unknown): void;
  };
  if (Deno.args[0] === "--unix") {
    const conn = await Deno.connect({ transport: "unix", path: Deno.args[1] as string });
    const buf = new Uint8Array(1 << 16);
    const dec = new TextDecoder();
    let partial = "";
    let got = 0;
    let sum = 0;
    for (;;) {
      const n = await conn.read(buf);
      if (n === null) break;
      partial += dec.decode(buf.subarray(0, n), { stream: true });
      let i: number;
      while ((i = partial.indexOf("\n")) >= 0) {
        const m = JSON.parse(partial.slice(0, i)) as unknown[];
        partial = partial.slice(i + 1);
        sum += (JSON.parse(m[3] as string) as string).length;
        if (++got === N) await conn.write(new TextEncoder().encode(`${sum}\n`));
      }
    }
    return;
  }
  let port: MessagePort;
  let got = 0;
  let sum = 0;
  scope.onmessage = (e) => {
    port = e.data.port as MessagePort;
    const mode = e.data.mode as string;
    port.onmessage = (m: MessageEvent) => {
      if (mode === "port-arrays") {
        for (const x of m.data as unknown[][]) sum += (JSON.parse(x[3] as string) as string).length;
        got += (m.data as unknown[]).length;
      } else {
        for (const line of (m.data as string).split("\n")) {
          const x = JSON.parse(line) as unknown[];
          sum += (JSON.parse(x[3] as string) as string).length;
          got++;
        }
      }
      if (got === N) {
        port.postMessage(sum);
        got = 0;
      }
    };
    port.postMessage("ready");
  };
}

async function viaPort(mode: "port-arrays" | "port-text", batch: number): Promise<number> {
  const w = new Worker(import.meta.url, { type: "module" });
  const { port1, port2 } = new MessageChannel();
  w.postMessage({ port: port2, mode }, [port2]);
  await new Promise<void>((r) => port1.onmessage = () => r()); // the worker is up
  const done = new Promise<void>((r) => port1.onmessage = () => r());
  const t0 = ticks("self");
  const start = performance.now();
  for (let i = 0; i < N; i += batch) {
    const b: unknown[][] = [];
    for (let k = i; k < Math.min(N, i + batch); k++) b.push(event(k));
    port1.postMessage(mode === "port-arrays" ? b : b.map((x) => JSON.stringify(x)).join("\n"));
    if ((i / batch) % 64 === 63) await new Promise((r) => setTimeout(r, 0)); // let it drain
  }
  await done;
  const ms = performance.now() - start;
  const cpu = (ticks("self") - t0) / HZ;
  w.terminate();
  port1.close();
  return report(mode, batch, ms, cpu);
}

async function viaUnix(batch: number): Promise<number> {
  const path = await Deno.makeTempFile({ prefix: "hop-" });
  await Deno.remove(path);
  const listener = Deno.listen({ transport: "unix", path });
  const child = new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", new URL(import.meta.url).pathname, "--unix", path],
    env: { HOP_MESSAGES: String(N) },
  }).spawn();
  const conn = await listener.accept();
  const enc = new TextEncoder();
  const t0 = ticks("self") + ticks(child.pid);
  const start = performance.now();
  for (let i = 0; i < N; i += batch) {
    let text = "";
    for (let k = i; k < Math.min(N, i + batch); k++) text += JSON.stringify(event(k)) + "\n";
    const bytes = enc.encode(text);
    let off = 0;
    while (off < bytes.length) off += await conn.write(bytes.subarray(off));
  }
  await conn.read(new Uint8Array(64));
  const ms = performance.now() - start;
  const cpu = (ticks("self") + ticks(child.pid) - t0) / HZ;
  conn.close();
  listener.close();
  await child.status;
  return report("unix", batch, ms, cpu);
}

function report(mode: string, batch: number, ms: number, cpu: number): number {
  const ns = (cpu * 1e9) / N;
  // deno-lint-ignore no-console
  console.log(
    `${mode.padEnd(12)} batch ${String(batch).padStart(4)}: ${
      (N / ms * 1000 / 1e6).toFixed(2)
    }M msg/s, ` +
      `${Math.round(ns)} ns CPU per message (both sides)`,
  );
  return ns;
}

if ("WorkerGlobalScope" in globalThis || Deno.args[0] === "--unix") {
  await sink();
} else if (import.meta.main) {
  for (const batch of [1, 16, 256]) {
    await viaPort("port-arrays", batch);
    await viaPort("port-text", batch);
    await viaUnix(batch);
  }
}
