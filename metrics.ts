/**
 * The counters every door updates (connections, frames, bytes, slow consumers, errors by code)
 * and their Prometheus text, which the HTTP door serves at `GET /metrics`. One
 * {@linkcode Metrics} is shared by every door of a server.
 *
 * @example Count a connection and print the text
 * ```ts
 * import { Metrics, prometheus } from "./metrics.ts";
 * import { MessageStream } from "./mod.ts";
 * import { assertStringIncludes } from "@std/assert";
 *
 * const metrics = new Metrics();
 * metrics.opened("tcp");
 * const text = prometheus(metrics, new MessageStream().stats());
 * assertStringIncludes(text, 'msgstream_connections{door="tcp"} 1\n');
 * ```
 *
 * @module
 */

import { type Limit, LIMITS, type MemoryBudget } from "./budget.ts";
import type { HubStats } from "./types.ts";
import denoJson from "./deno.json" with { type: "json" };

/** The doors whose connections are counted. */
export type Door = "tcp" | "websocket" | "sse";

/**
 * Every error code a door answers with (the wire protocol's, the HTTP door's, and
 * `descriptors_exhausted` for a door out of file descriptors): `msgstream_errors_total` has a
 * series for each from the start, at 0.
 */
export const ERROR_CODES: readonly string[] = [
  "invalid_json",
  "invalid_utf8",
  "invalid_frame",
  "unknown_action",
  "invalid_stream",
  "missing_message",
  "invalid_since",
  "invalid_pattern",
  "line_too_long",
  "unauthorized",
  "forbidden",
  "slow_consumer",
  "idle_timeout",
  "engine_unavailable",
  "storage_unavailable",
  "message_too_large",
  "not_connected",
  "limit_exceeded",
  "internal",
  "not_found",
  "method_not_allowed",
  "payload_too_large",
  "unsupported_media_type",
  "upgrade_required",
  "shutting_down",
  "invalid_limit",
  "host_not_allowed",
  "pipeline_too_deep",
  "descriptors_exhausted",
];

/** The hub's engine as metrics and `/healthz` see it. */
export interface EngineStatus {
  /** Its name: `memory`, `redis`, `sqlite`, or `given` (a hub the server did not make). */
  readonly name: string;
  /**
   * Whether it is reachable now (Redis connected, the SQLite store accepting writes).
   *
   * @returns True when up.
   */
  up(): boolean;
}

/** Counters every door updates; `/metrics` reads them. */
export class Metrics {
  /** Open connections by door. */
  readonly connections: Record<Door, number> = { tcp: 0, websocket: 0, sse: 0 };
  /** Connections accepted since start, by door. */
  readonly accepted: Record<Door, number> = { tcp: 0, websocket: 0, sse: 0 };
  /** Request frames received. */
  framesIn = 0;
  /** Bytes received. */
  bytesIn = 0;
  /** Bytes sent. */
  bytesOut = 0;
  /** Connections cut for not reading. */
  slowConsumers = 0;
  /** Errors answered, by code (every code of {@linkcode ERROR_CODES} from 0, and any other). */
  readonly errors: Record<string, number> = Object.fromEntries(ERROR_CODES.map((c) => [c, 0]));
  /**
   * The hub's engine, for `msgstream_engine_up` and `/healthz`; the server sets it.
   *
   * @default {{ name: "memory", up: () => true }}
   */
  engine: EngineStatus = { name: "memory", up: () => true };
  /** Requests refused with `limit_exceeded`, by limit (every limit listed, from 0). */
  readonly limits: Record<Limit, number> = Object.fromEntries(
    LIMITS.map((l) => [l, 0]),
  ) as Record<Limit, number>;

  /**
   * Counts a connection accepted by a door: it is open until {@linkcode Metrics.closed}.
   *
   * @param door The door.
   */
  opened(door: Door): void {
    this.connections[door]++;
    this.accepted[door]++;
  }

  /**
   * Counts an open connection of a door as closed.
   *
   * @param door The door.
   */
  closed(door: Door): void {
    this.connections[door]--;
  }

  /** Counts a connection cut for not reading: a slow consumer, and its `slow_consumer` error. */
  slowConsumer(): void {
    this.slowConsumers++;
    this.error("slow_consumer");
  }

  /**
   * Counts one request refused past a limit. The `limit_exceeded` error itself is counted by
   * {@linkcode Metrics.error} when it is answered.
   *
   * @param limit The limit.
   */
  limitExceeded(limit: Limit): void {
    this.limits[limit]++;
  }

  /**
   * Counts one error answered.
   *
   * @param code The error's code.
   */
  error(code: string): void {
    this.errors[code] = (this.errors[code] ?? 0) + 1;
  }
}

/**
 * The Prometheus text exposition (version 0.0.4) of the doors' counters and the hub's figures.
 *
 * @param metrics The doors' counters.
 * @param stats The hub's figures (`hub.stats()`).
 * @param memory The hub's memory budget (`hub.memory`), for its parts and maximum.
 * @returns The text, one `# HELP`, `# TYPE` and sample lines per metric.
 */
export function prometheus(metrics: Metrics, stats: HubStats, memory?: MemoryBudget): string {
  const lines: string[] = [];
  const metric = (
    name: string,
    type: "gauge" | "counter",
    help: string,
    values: [string, number][],
  ) => {
    lines.push(`# HELP ${name} ${help}`, `# TYPE ${name} ${type}`);
    for (const [labels, v] of values) lines.push(`${name}${labels} ${v}`);
  };
  const one = (v: number): [string, number][] => [["", v]];
  const by = (label: string, r: Record<string, number>): [string, number][] =>
    Object.entries(r).map(([key, v]) => [`{${label}="${key}"}`, v]);
  const m = metrics;
  metric(
    "msgstream_build_info",
    "gauge",
    "Always 1; the labels say which msgstream and which Deno run.",
    [[`{version="${denoJson.version}",deno="${Deno.version.deno}"}`, 1]],
  );
  metric(
    "msgstream_engine_up",
    "gauge",
    "1 while the hub's engine is reachable (Redis connected, the SQLite store writable), else 0.",
    [[`{engine="${m.engine.name}"}`, m.engine.up() ? 1 : 0]],
  );
  metric("msgstream_connections", "gauge", "Open connections, by door.", by("door", m.connections));
  metric(
    "msgstream_accepted_connections_total",
    "counter",
    "Connections accepted, by door.",
    by("door", m.accepted),
  );
  metric("msgstream_streams", "gauge", "Streams the hub holds.", one(stats.streams));
  metric(
    "msgstream_listeners",
    "gauge",
    "Listener registrations over all streams.",
    one(stats.listeners),
  );
  metric("msgstream_received_messages_total", "counter", "Puts accepted.", one(stats.puts));
  metric(
    "msgstream_delivered_messages_total",
    "counter",
    "Events handed to listeners.",
    one(stats.deliveries),
  );
  metric("msgstream_received_frames_total", "counter", "Request frames received.", one(m.framesIn));
  metric("msgstream_received_bytes_total", "counter", "Bytes received.", one(m.bytesIn));
  metric("msgstream_sent_bytes_total", "counter", "Bytes sent.", one(m.bytesOut));
  metric(
    "msgstream_slow_consumer_disconnects_total",
    "counter",
    "Connections cut for not reading.",
    one(m.slowConsumers),
  );
  metric("msgstream_errors_total", "counter", "Errors answered, by code.", by("code", m.errors));
  metric(
    "msgstream_limit_exceeded_total",
    "counter",
    "Requests refused past a limit (limit_exceeded), by limit.",
    by("limit", m.limits),
  );
  metric(
    "msgstream_history_bytes",
    "gauge",
    "Bytes of history over all streams.",
    one(stats.historyBytes),
  );
  if (memory) {
    metric(
      "msgstream_memory_bytes",
      "gauge",
      "Bytes kept for clients, by part (estimates for streams, listens and headers).",
      by("part", { ...memory.parts() }),
    );
    metric(
      "msgstream_memory_limit_bytes",
      "gauge",
      "The memory budget (--max-memory).",
      one(memory.max),
    );
  }
  return lines.join("\n") + "\n";
}
