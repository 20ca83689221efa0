/**
 * A multi-core server (`--workers N`): N worker threads, each with its own TCP door bound to
 * the same port with `reusePort` (Linux spreads new connections between them), its own hub,
 * and a {@linkcode PartitionEngine} (partition.ts) that gives every stream one owner worker.
 * A connection accepted by one worker for a stream another owns is served by forwarding:
 * puts go to the owner, the owner's events come back once per worker that follows the
 * stream, and that worker fans them out to its connections. Guarantees are the hub's (header
 * first, gapless, ordered, no duplicate, resume by position): see partition.ts for why.
 *
 * What a single worker has and N workers do not (yet): `--data` and `--redis` (refused),
 * pattern listens (refused with `pattern_unsupported`-style errors, as with any engine that
 * cannot list streams), stream TTL at the owner, and one `/metrics` for the whole process
 * (the HTTP door runs on worker 0 only and counts its own connections).
 *
 * Measured on a 2-core machine, and projected for 16 cores: BENCHMARKS.md, "Multi-core".
 *
 * @example Two workers on one port
 * ```ts ignore
 * import { serveWorkers } from "./workers.ts";
 *
 * await using server = await serveWorkers({ port: 0, workers: 2 });
 * console.log(server.addr.port);
 * ```
 *
 * @module
 */

import type { ServeOptions } from "./config.ts";

/** A running multi-worker server; shaped like `MessageServer`, without a hub of its own. */
export interface WorkersServer extends AsyncDisposable {
  /** The bound TCP address, shared by every worker. */
  readonly addr: Deno.NetAddr;
  /** The HTTP door's address (on worker 0), when `http` was given. */
  readonly http: { readonly addr: Deno.NetAddr } | undefined;
  /** How many workers serve. */
  readonly workers: number;
  /** Resolves when every worker has shut down. */
  readonly finished: Promise<void>;
  /** Why the workers stopped on their own (a worker failed), or `undefined`. */
  readonly failure: Error | undefined;
  /** Shuts every worker's server down gracefully; safe to call more than once. */
  shutdown(): Promise<void>;
}

/** What a worker says to the main thread. */
type FromWorker =
  | { type: "ready"; port: number; hostname: string; httpPort?: number; httpHostname?: string }
  | { type: "failed"; name: string; message: string }
  | { type: "drained" }
  | { type: "stopped" };

/** Options a worker gets: cloneable (no hub, codec or signal). */
type WorkerOptions = Omit<ServeOptions, "hub" | "codec" | "signal">;

/** Rebuilds a worker's error in this thread, keeping `Deno.errors` classes (for hints). */
function revive(name: string, message: string): Error {
  if (/Requires (read|import) access/.test(message)) {
    message = `Cannot start a worker: ${message.split("\n")[0]} (a worker loads the server's ` +
      `modules itself: give --allow-read of them, or --allow-import for remote ones)`;
  }
  const errors = Deno.errors as unknown as Record<string, new (m: string) => Error>;
  const Class = name === "RangeError"
    ? RangeError
    : name === "TypeError"
    ? TypeError
    : errors[name] ?? Error;
  const e = new Class(message);
  if (Class === Error) e.name = name;
  return e;
}

/** One worker thread and its next message. */
class Thread {
  readonly worker: Worker;
  #waiters: ((m: FromWorker) => void)[] = [];

  constructor(onError: (e: ErrorEvent) => void) {
    this.worker = new Worker(new URL("./workers_entry.ts", import.meta.url), { type: "module" });
    this.worker.onmessage = (e: MessageEvent<FromWorker>) => this.#waiters.shift()?.(e.data);
    this.worker.onerror = (e) => {
      e.preventDefault();
      const waiting = this.#waiters.splice(0);
      // Still starting: the start fails with the worker's error (a missing permission, say).
      for (const w of waiting) w({ type: "failed", name: "Error", message: e.message });
      if (waiting.length === 0) onError(e);
    };
  }

  next(): Promise<FromWorker> {
    return new Promise((resolve) => this.#waiters.push(resolve));
  }
}

/**
 * Starts a server of `options.workers` worker threads sharing one TCP port; see the module's
 * documentation. The process needs `--unstable-net` (Deno marks `reusePort` unstable).
 *
 * @param options The server's options, as for `serve()`, plus `workers` (≥ 1).
 * @returns The running server, once every worker listens.
 * @throws {RangeError} When `workers` is out of range.
 * @throws {TypeError} With `data`, `redis`, `hub` or `codec` (a worker cannot share them).
 * @throws {Error} What a worker's `serve()` threw (e.g. `Deno.errors.AddrInUse`).
 */
export async function serveWorkers(options: ServeOptions): Promise<WorkersServer> {
  const n = options.workers ?? 1;
  if (!Number.isInteger(n) || n < 1 || n > 64) {
    throw new RangeError(`Invalid workers ${n}: give an integer from 1 to 64`);
  }
  for (const key of ["data", "redis", "hub", "codec"] as const) {
    if (options[key] !== undefined) {
      throw new TypeError(
        `Cannot serve with ${n} workers and "${key}": a worker hub keeps its streams in memory`,
      );
    }
  }
  const { signal, hub: _hub, codec: _codec, ...rest } = options;
  const base: WorkerOptions = rest;
  let failure: Error | undefined;
  let stopAll: () => Promise<void> = () => Promise.resolve();
  const threads: Thread[] = [];
  const onError = (e: ErrorEvent) => {
    // A worker's uncaught error is a bug; its streams are gone: stop every worker, loudly.
    failure ??= new Error(`A worker failed: ${e.message}`);
    // deno-lint-ignore no-console
    console.error(`msgstream: a worker failed: ${e.message}; stopping every worker`);
    void stopAll();
  };
  for (let i = 0; i < n; i++) threads.push(new Thread(onError));
  // A port per pair of workers: worker i talks to worker j over peers[i][j].
  const peers: (MessagePort | undefined)[][] = threads.map(() => threads.map(() => undefined));
  for (let i = 0; i < n; i++) {
    for (let j = i + 1; j < n; j++) {
      const { port1, port2 } = new MessageChannel();
      (peers[i] as (MessagePort | undefined)[])[j] = port1;
      (peers[j] as (MessagePort | undefined)[])[i] = port2;
    }
  }
  const start = async (i: number, opts: WorkerOptions): Promise<FromWorker> => {
    const t = threads[i] as Thread;
    const reply = t.next();
    const ports = peers[i] as (MessagePort | undefined)[];
    t.worker.postMessage(
      { type: "start", index: i, options: opts, peers: ports },
      ports.filter((p): p is MessagePort => p !== undefined),
    );
    return await reply;
  };
  const terminate = () => threads.forEach((t) => t.worker.terminate());
  // Worker 0 binds first (the port may be 0); the others bind the port it got.
  const first = await start(0, { ...base, reusePort: true });
  if (first.type !== "ready") {
    terminate();
    throw first.type === "failed"
      ? revive(first.name, first.message)
      : new Error("Worker 0 stopped");
  }
  const { http: _http, ...others } = base;
  const replies = await Promise.all(
    threads.slice(1).map((_, k) =>
      start(k + 1, {
        ...others,
        port: first.port,
        reusePort: true,
        logLevel: base.logLevel ?? "warn",
      })
    ),
  );
  const bad = replies.find((r) => r.type !== "ready");
  if (bad) {
    // Worker 0 listens already: stop it properly, then the rest.
    await ask(threads[0] as Thread, "shutdown");
    await ask(threads[0] as Thread, "close");
    terminate();
    throw bad.type === "failed" ? revive(bad.name, bad.message) : new Error("A worker stopped");
  }
  let shutdown: Promise<void> | undefined;
  let finish!: () => void;
  const finished = new Promise<void>((resolve) => finish = resolve);
  stopAll = () => {
    shutdown ??= Promise.all(threads.map((t) => ask(t, "shutdown")))
      .then(() => Promise.all(threads.map((t) => ask(t, "close"))))
      .then(() => {
        terminate();
        finish();
      });
    return shutdown;
  };
  signal?.addEventListener("abort", () => void stopAll(), { once: true });
  return {
    get failure() {
      return failure;
    },
    addr: { transport: "tcp", hostname: first.hostname, port: first.port },
    http: first.httpPort !== undefined
      ? { addr: { transport: "tcp", hostname: first.httpHostname ?? "", port: first.httpPort } }
      : undefined,
    workers: n,
    finished,
    shutdown: () => stopAll(),
    [Symbol.asyncDispose]: () => stopAll(),
  };
}

/**
 * Asks one worker to drain its connections (`shutdown`) or, once every worker has, to close its
 * hub (`close`), and waits for its answer (at most 30 s: it may be gone already).
 */
async function ask(t: Thread, type: "shutdown" | "close"): Promise<void> {
  const reply = t.next();
  try {
    t.worker.postMessage({ type });
  } catch {
    return;
  }
  await Promise.race([reply, new Promise<void>((r) => Deno.unrefTimer(setTimeout(r, 30_000)))]);
}
