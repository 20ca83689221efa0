/**
 * The code of one worker thread of `serveWorkers()` (workers.ts): told its index, its options
 * and a port to each other worker, it makes a hub over a {@linkcode PartitionEngine} and
 * serves it with `serve()` on the shared port (`reusePort`). Internal: started by workers.ts
 * only, never imported.
 *
 * @module
 */

import { MessageStream } from "./mod.ts";
import { PartitionEngine } from "./partition.ts";
import { type MessageServer, serve, type ServeOptions } from "./server.ts";

/** The worker's side of its channel to the main thread. */
interface WorkerScope {
  onmessage: ((e: MessageEvent) => void) | null;
  postMessage(message: unknown): void;
  addEventListener(type: "unhandledrejection", f: (e: PromiseRejectionEvent) => void): void;
}

const scope = globalThis as unknown as WorkerScope;
let server: MessageServer | undefined;
let hub: MessageStream | undefined;
let engine: PartitionEngine | undefined;
let index = 0;
let logInfo = false;

// As in the server's main(): a rejection nobody handled is a bug, logged, never the end of a
// worker that holds other clients' streams.
scope.addEventListener("unhandledrejection", (e) => {
  e.preventDefault();
  const why = e.reason instanceof Error ? e.reason.stack ?? e.reason.message : String(e.reason);
  // deno-lint-ignore no-console
  console.error(`msgstream worker: unhandled rejection: ${why}`);
});

scope.onmessage = async (e: MessageEvent) => {
  const m = e.data as {
    type: "start" | "shutdown" | "close";
    index: number;
    options: ServeOptions;
    peers: (MessagePort | undefined)[];
  };
  if (m.type === "shutdown") {
    // First every worker drains its connections (their requests may still need the others)…
    await server?.shutdown();
    scope.postMessage({ type: "drained" });
    return;
  }
  if (m.type === "close") {
    // …then the hubs close, and with them the ports between workers.
    await hub?.close();
    if (logInfo && engine) {
      // deno-lint-ignore no-console
      console.error(
        `${new Date().toISOString()} info worker stopped worker=${index} owned=${engine.owned} ` +
          `forwarded=${engine.forwarded} batches=${engine.batches}`,
      );
    }
    scope.postMessage({ type: "stopped" });
    return;
  }
  try {
    index = m.index;
    logInfo = m.options.logLevel === "info" || m.options.logLevel === "debug";
    engine = new PartitionEngine({
      index: m.index,
      peers: m.peers,
      historyMessages: m.options.historyMessages,
      historyBytes: m.options.historyBytes,
      maxHistoryBytes: m.options.maxHistoryBytes,
      maxStreams: m.options.maxStreams,
    });
    hub = new MessageStream({ ...m.options, engine });
    server = serve({ ...m.options, hub });
    scope.postMessage({
      type: "ready",
      port: server.addr.port,
      hostname: server.addr.hostname,
      ...(server.http
        ? { httpPort: server.http.addr.port, httpHostname: server.http.addr.hostname }
        : {}),
    });
  } catch (error) {
    const err = error instanceof Error ? error : new Error(String(error));
    scope.postMessage({ type: "failed", name: err.name, message: err.message });
  }
};
