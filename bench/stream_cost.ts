// deno-lint-ignore-file no-console -- a program: its output is the figures
/**
 * Heap per stream held by a memory hub, for short and long names, with and without a listener
 * (the figures behind `STREAM_COST` and `STREAM_NAME_FACTOR` in budget.ts).
 *
 * Run: deno run -A --v8-flags=--expose-gc bench/stream_cost.ts
 *
 * @module
 */
import { MessageStream } from "../mod.ts";
import { syncOf } from "../core.ts";

const gc = (globalThis as unknown as { gc: () => void }).gc;
const N = 50_000;

function heap(): number {
  for (let i = 0; i < 3; i++) gc();
  const m = Deno.memoryUsage();
  // The history rings' bytes are outside the V8 heap (array buffers): count both.
  return m.heapUsed + m.external;
}

function run(nameLen: number, listener: boolean): number {
  const hub = new MessageStream({ maxStreams: N * 2, maxListens: N * 2 });
  const sync = syncOf(hub)!;
  const queue = { put() {} };
  const pad = "x".repeat(Math.max(0, nameLen - 12));
  const before = heap();
  for (let i = 0; i < N; i++) {
    const name = `${pad}${String(i).padStart(12, "0")}`;
    if (listener) sync.listenNow(name, queue);
    sync.putNow(name, { n: i });
  }
  const after = heap();
  const per = (after - before) / N;
  // keep the hub alive until measured
  if (hub.stats().streams !== N) throw new Error("streams missing");
  return per;
}

for (const len of [12, 110, 256]) {
  for (const l of [false, true]) {
    console.log(`name ${len} chars, listener ${l}: ${run(len, l).toFixed(0)} bytes/stream`);
  }
}
