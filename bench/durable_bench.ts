/**
 * The durable store's costs: puts per second with group commit (SQLite WAL under each fsync
 * policy, and a plain append-only log for comparison), restore time, and file growth under
 * trimming and deletes.
 *
 * `deno bench -A bench/durable_bench.ts` runs the small benchmarks; `deno run -A
 * bench/durable_bench.ts` prints the measurement table of docs/durability.md (set `STREAMS`,
 * `PUTS` to change the sizes).
 *
 * @module
 */

import { DurableStore, type FsyncPolicy } from "../store.ts";

const enc = new TextEncoder();

function frameOf(stream: string, seq: number): Uint8Array {
  return enc.encode(
    `{"action":"put","stream":"${stream}","message":{"done":${seq},"of":1000000},` +
      `"seq":${seq},"epoch":"0123456789a0"}\n`,
  );
}

/** Puts the hub's write pattern (position + entry + trim past `keep`) through the store. */
function putsIntoStore(
  store: DurableStore,
  puts: number,
  streams: number,
  keep: number,
  batch: number,
  seqs: number[] = new Array<number>(streams).fill(0),
): void {
  for (let i = 0; i < puts; i++) {
    const k = i % streams;
    const name = `job-${k}`;
    const seq = ++seqs[k]!;
    store.append(name, seq - 1, seq, false, frameOf(name, seq));
    if (seq > keep) store.trim(name, seq - keep);
    store.setStream(name, "0123456789a0", seq, '{"state":"running"}', Math.max(0, seq - keep));
    if ((i + 1) % batch === 0) store.commit();
  }
  store.commit();
}

/** The same puts as lines of an append-only log, fsynced per batch. */
function putsIntoLog(path: string, puts: number, streams: number, batch: number, sync: boolean) {
  const file = Deno.openSync(path, { write: true, create: true, append: true });
  const seqs = new Array<number>(streams).fill(0);
  const parts: Uint8Array[] = [];
  let bytes = 0;
  const flush = () => {
    const buf = new Uint8Array(bytes);
    let off = 0;
    for (const p of parts) {
      buf.set(p, off);
      off += p.byteLength;
    }
    let w = 0;
    while (w < buf.byteLength) w += file.writeSync(buf.subarray(w));
    if (sync) file.syncDataSync();
    parts.length = 0;
    bytes = 0;
  };
  for (let i = 0; i < puts; i++) {
    const k = i % streams;
    const name = `job-${k}`;
    const f = frameOf(name, ++seqs[k]!);
    parts.push(f);
    bytes += f.byteLength;
    if ((i + 1) % batch === 0) flush();
  }
  flush();
  file.close();
}

function size(path: string): number {
  try {
    return Deno.statSync(path).size;
  } catch {
    return 0;
  }
}

const mib = (n: number) => (n / (1 << 20)).toFixed(1) + " MiB";

async function measure(): Promise<void> {
  const puts = Number(Deno.env.get("PUTS") ?? 200_000);
  const restartStreams = Number(Deno.env.get("STREAMS") ?? 100_000);
  const dir = await Deno.makeTempDir({ prefix: "msgstream-durable-bench-" });
  const rows: string[] = [];
  try {
    // Puts per second with group commit: 1000 streams, 100 entries kept per stream, one
    // commit per 1000 puts (what a 50 ms interval holds at 20,000 puts/s).
    for (const fsync of ["always", "batch", "never"] as FsyncPolicy[]) {
      for (const batch of fsync === "always" ? [1, 100, 1000] : [1000]) {
        const path = `${dir}/p-${fsync}-${batch}.db`;
        const store = DurableStore.open(path, { fsync, maxPendingWrites: 1_000_000 });
        store.load();
        const n = batch === 1 ? Math.min(puts, 5000) : puts;
        const t0 = performance.now();
        putsIntoStore(store, n, 1000, 100, batch);
        const ms = performance.now() - t0;
        rows.push(
          `sqlite ${fsync} (commit per ${batch}) | ${Math.round(n / ms * 1000)} puts/s | ` +
            `${(ms / (n / batch)).toFixed(2)} ms per commit | file ${mib(size(path))}, ` +
            `wal ${mib(size(path + "-wal"))}`,
        );
        store.close();
      }
    }
    for (const sync of [true, false]) {
      const path = `${dir}/log-${sync}.jsonl`;
      const t0 = performance.now();
      putsIntoLog(path, puts, 1000, 1000, sync);
      const ms = performance.now() - t0;
      rows.push(
        `append-only log, ${sync ? "fdatasync" : "no sync"} per 1000 | ` +
          `${Math.round(puts / ms * 1000)} puts/s | file ${mib(size(path))} (unbounded: ` +
          `it keeps every put until rewritten)`,
      );
    }

    // Restore: streams with a header and one kept put each.
    {
      const path = `${dir}/restart.db`;
      const store = DurableStore.open(path, { maxPendingWrites: 1_000_000 });
      store.load();
      for (let i = 0; i < restartStreams; i++) {
        const name = `job-${i}`;
        store.setStream(name, "0123456789a0", 1, '{"state":"running","done":0}', 0);
        store.append(name, 0, 1, false, frameOf(name, 1));
      }
      store.commit();
      store.close();
      const t0 = performance.now();
      const again = DurableStore.open(path);
      const loaded = again.load();
      const ms = performance.now() - t0;
      rows.push(
        `restore ${loaded.length} streams (header + 1 put each) | ${ms.toFixed(0)} ms | ` +
          `file ${mib(size(path))}`,
      );
      again.close();
    }

    // Growth: many puts through bounded history, then deletes.
    {
      const path = `${dir}/growth.db`;
      const store = DurableStore.open(path, { maxPendingWrites: 1_000_000 });
      store.load();
      const report = (what: string) => {
        const p = store.pages();
        rows.push(
          `${what} | file ${mib(size(path))}, wal ${mib(size(path + "-wal"))}, ` +
            `${p.pages} pages, ${p.freePages} free`,
        );
      };
      const seqs = new Array<number>(1000).fill(0);
      putsIntoStore(store, puts, 1000, 100, 1000, seqs);
      report(`after ${puts} puts, 100 kept per stream`);
      putsIntoStore(store, puts, 1000, 100, 1000, seqs);
      report(`after ${puts} more puts (same streams)`);
      store.compact();
      report("after idle checkpoint (TRUNCATE) + incremental_vacuum");
      for (let i = 0; i < 500; i++) store.delete(`job-${i}`);
      store.commit();
      report("after deleting half the streams");
      store.compact();
      report("after idle checkpoint + incremental_vacuum");
      store.close();
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
  // deno-lint-ignore no-console
  console.log(rows.join("\n"));
}

if (import.meta.main) {
  await measure();
} else {
  const dir = Deno.makeTempDirSync({ prefix: "msgstream-durable-bench-" });
  let n = 0;
  for (const fsync of ["batch", "never"] as FsyncPolicy[]) {
    Deno.bench(`store: 1000 puts, one ${fsync} commit`, { group: "durable" }, () => {
      const store = DurableStore.open(`${dir}/b${n++}.db`, { fsync });
      store.load();
      putsIntoStore(store, 1000, 10, 100, 1000);
      store.close();
    });
  }
  Deno.bench("append-only log: 1000 puts, one fdatasync", { group: "durable" }, () => {
    putsIntoLog(`${dir}/l${n++}.jsonl`, 1000, 10, 1000, true);
  });
  globalThis.addEventListener("unload", () => Deno.removeSync(dir, { recursive: true }));
}
