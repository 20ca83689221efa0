#!/usr/bin/env -S deno run -N
/**
 * The msgstream server: one hub served through the TCP (or TLS) door and, when asked, the HTTP
 * door (SSE, WebSocket, REST, metrics, status page), optionally shared with other nodes through
 * Redis. This module is the one place that wires the doors, the hub and the engine together
 * from options, or from flags, `MSGSTREAM_*` variables and a `--config` file (that order of
 * precedence; docs/operations.md). Run it with `deno task start` (which grants the variables),
 * `deno run -N jsr:@x/msgstream/server`, or embed it with {@linkcode serve}.
 *
 * @example Serve on a free port
 * ```ts
 * import { serve } from "@x/msgstream/server";
 * import { assertEquals } from "@std/assert";
 *
 * await using server = serve({ port: 0 });
 * assertEquals(server.addr.hostname, "127.0.0.1");
 * await server.hub.put("job42", { done: 1 });
 * assertEquals(server.hub.info("job42")?.seq, 1);
 * ```
 *
 * @module
 */

/// <reference types="./std_types.d.ts" />
import { MessageStream } from "./mod.ts";
import { Auth } from "./auth.ts";
import { type Door, Metrics } from "./metrics.ts";
import denoJson from "./deno.json" with { type: "json" };
import { RedisEngine } from "./redis.ts";
import { DurableStore } from "./store.ts";
import { type MessageHttpServer, serveHttp } from "./http.ts";
import {
  DEFAULT_PORT,
  defaultMaxConnections,
  intOption,
  LOG_LEVELS,
  type LogLevel,
  UsageError,
} from "./options.ts";
import { TcpDoor } from "./tcp.ts";
import { serveWorkers } from "./workers.ts";
import {
  LOG_FORMATS,
  type LogFormat,
  type ParsedArgs,
  parseServeArgs,
  type ServeOptions,
  usage,
} from "./config.ts";

export { ProtocolError } from "./protocol.ts";
export type { ErrorCode } from "./protocol.ts";
export { Metrics } from "./metrics.ts";
export type { Permissions, Token } from "./auth.ts";
export type { Door } from "./metrics.ts";
export type { LogLevel } from "./options.ts";
export { UNAUTHENTICATED_LINE_BYTES } from "./tcp.ts";
export type { LogFormat, ServeOptions } from "./config.ts";

/** A running server; shaped like `Deno.HttpServer`. */
export interface MessageServer extends AsyncDisposable {
  /** The bound address. */
  readonly addr: Deno.NetAddr;
  /** The hub every connection shares. */
  readonly hub: MessageStream;
  /** Counters for metrics. */
  readonly metrics: Metrics;
  /** Resolves when the server has shut down. */
  readonly finished: Promise<void>;
  /** The HTTP door, when `http` was given. */
  readonly http: MessageHttpServer | undefined;
  /**
   * Stops accepting, tells every listener `close`, flushes, and closes every connection.
   * Safe to call more than once.
   */
  shutdown(): Promise<void>;
}

/**
 * Names the address and the door in an error from opening a door (a port in use, an address
 * not of this machine, a certificate TLS cannot load); an option's own error is left as it is.
 */
function listenError(e: unknown, door: "TCP" | "HTTP", hostname: string, port: number): unknown {
  if (!(e instanceof Error) || e instanceof RangeError || e instanceof TypeError) return e;
  const host = hostname.includes(":") ? `[${hostname}]` : hostname;
  e.message = `Cannot listen on ${host}:${port} (the ${door} door): ${e.message}`;
  return e;
}

/**
 * One log line: `TIME LEVEL message key=value…` (a value with spaces or quotes is JSON-quoted),
 * or one JSON object.
 */
function formatLog(
  format: LogFormat,
  level: LogLevel,
  message: string,
  fields?: Record<string, unknown>,
): string {
  const time = new Date().toISOString();
  if (format === "json") return JSON.stringify({ time, level, msg: message, ...fields });
  let line = `${time} ${level} ${message}`;
  for (const [k, v] of Object.entries(fields ?? {})) {
    const text = typeof v === "string" ? v : JSON.stringify(v);
    line += ` ${k}=${/^[^\s"=]+$/.test(text) ? text : JSON.stringify(text)}`;
  }
  return line;
}

/** Metrics that also say, at debug level, when a connection opens and closes. */
class LoggedMetrics extends Metrics {
  readonly #log: (door: Door, event: "opened" | "closed", open: number) => void;

  constructor(log: (door: Door, event: "opened" | "closed", open: number) => void) {
    super();
    this.#log = log;
  }

  override opened(door: Door): void {
    super.opened(door);
    this.#log(door, "opened", this.connections[door]);
  }

  override closed(door: Door): void {
    super.closed(door);
    this.#log(door, "closed", this.connections[door]);
  }
}

/** The composition: the hub (and its engine, when this server made it), the doors, the log. */
class ServerImpl implements MessageServer {
  readonly addr: Deno.NetAddr;
  readonly hub: MessageStream;
  readonly metrics: Metrics = new LoggedMetrics((door, event, open) =>
    this.log("debug", `${door} connection ${event}`, { open })
  );
  readonly finished: Promise<void>;
  readonly http: MessageHttpServer | undefined;
  readonly #tcp: TcpDoor;
  readonly #logLevel: number;
  #shutdown: Promise<void> | undefined;
  #ownsEngine = false;
  readonly #logFormat: LogFormat;
  /** The engine, for logs: memory, redis, sqlite, or the given hub's. */
  readonly #engine: string;

  constructor(options: ServeOptions) {
    this.#logLevel = LOG_LEVELS.indexOf(options.logLevel ?? "warn");
    if (this.#logLevel === -1) throw new RangeError(`Unknown log level "${options.logLevel}"`);
    this.#logFormat = options.logFormat ?? "text";
    if (!LOG_FORMATS.includes(this.#logFormat)) {
      throw new RangeError(`Unknown log format "${options.logFormat}"`);
    }
    this.#engine = options.hub
      ? "given"
      : options.redis !== undefined
      ? "redis"
      : options.data !== undefined
      ? "sqlite"
      : "memory";
    const shutdownTimeout = intOption("shutdownTimeout", options.shutdownTimeout, 5_000, 0);
    const maxConnections = intOption(
      "maxConnections",
      options.maxConnections,
      defaultMaxConnections(),
      1,
    );
    if (options.hub) {
      this.hub = options.hub;
      this.metrics.engine = { name: "given", up: () => true };
    } else if (options.redis !== undefined) {
      const engine = new RedisEngine({
        url: options.redis,
        ...(options.redisPrefix !== undefined ? { prefix: options.redisPrefix } : {}),
        ...(options.redisCluster ? { cluster: true } : {}),
        ...(options.redisMaxMemoryPercent !== undefined
          ? { maxMemoryPercent: options.redisMaxMemoryPercent }
          : {}),
        ...(options.redisClassicPubSub ? { shardedPubSub: false } : {}),
        ...(options.redisCommandTimeout !== undefined
          ? { commandTimeout: options.redisCommandTimeout }
          : {}),
        ...(options.historyMessages !== undefined
          ? { historyMessages: options.historyMessages }
          : {}),
        onStatus: (up, detail) => {
          if (up) this.log("warn", `engine redis is back: ${detail}`, { engine: "redis" });
          else {
            this.log(
              "warn",
              `engine redis is down: ${detail}; requests get engine_unavailable until it is back`,
              { engine: "redis" },
            );
          }
        },
      });
      this.hub = new MessageStream({ ...options, engine });
      this.metrics.engine = { name: "redis", up: () => engine.up };
      this.#ownsEngine = true;
    } else if (options.data !== undefined) {
      const store = DurableStore.open(options.data, options.fsync ? { fsync: options.fsync } : {});
      try {
        this.hub = new MessageStream({ ...options, store });
        this.metrics.engine = { name: "sqlite", up: () => store.available };
      } catch (e) {
        store.close();
        throw e;
      }
      this.#ownsEngine = true;
    } else this.hub = new MessageStream(options);
    const hostname = options.hostname ?? "127.0.0.1";
    const tcp = {
      hostname,
      port: options.port ?? DEFAULT_PORT,
      reusePort: options.reusePort,
      metrics: this.metrics,
      auth: Auth.from(options.tokens),
      cert: options.cert,
      key: options.key,
      maxLineBytes: options.maxLineBytes,
      maxOutboundBytes: options.maxOutboundBytes,
      pingInterval: options.pingInterval,
      idleTimeout: options.idleTimeout,
      handshakeTimeout: options.handshakeTimeout,
      authTimeout: options.authTimeout,
      maxConnections,
      shutdownTimeout,
      log: (level: LogLevel, message: string) => this.log(level, message),
    };
    // Checked before anything is bound, so that a refused option leaves no port behind (the
    // HTTP door checks the rest of its options itself; the TCP door's port is still free then).
    if (options.http) intOption("http.port", options.http.port, 0, 0, 65535);
    try {
      this.#tcp = new TcpDoor(this.hub, tcp);
    } catch (e) {
      void this.#closeEngine();
      throw listenError(e, "TCP", hostname, tcp.port);
    }
    this.addr = this.#tcp.addr;
    try {
      this.http = options.http && serveHttp(this.hub, {
        hostname: options.http.hostname ?? hostname,
        port: options.http.port,
        metrics: this.metrics,
        tokens: options.tokens,
        maxBodyBytes: this.#tcp.maxLineBytes,
        maxOutboundBytes: this.#tcp.maxOutbound,
        authTimeout: this.#tcp.authTimeout,
        shutdownTimeout,
        maxConnections,
        ...(options.handshakeTimeout !== undefined
          ? { handshakeTimeout: options.handshakeTimeout }
          : {}),
        ...(options.http.headerTimeout !== undefined
          ? { headerTimeout: options.http.headerTimeout }
          : {}),
        ...(options.http.requestTimeout !== undefined
          ? { requestTimeout: options.http.requestTimeout }
          : {}),
        ...(options.http.keepAliveTimeout !== undefined
          ? { keepAliveTimeout: options.http.keepAliveTimeout }
          : {}),
        ...(options.http.maxHeadBytes !== undefined
          ? { maxHeadBytes: options.http.maxHeadBytes }
          : {}),
        ...(options.http.maxPipelined !== undefined
          ? { maxPipelined: options.http.maxPipelined }
          : {}),
        log: (level: LogLevel, message: string) => this.log(level, message),
        ...(options.http.allowedHosts !== undefined
          ? { allowedHosts: options.http.allowedHosts }
          : {}),
        ...(options.http.corsOrigin !== undefined ? { corsOrigin: options.http.corsOrigin } : {}),
        ...(options.http?.cert !== undefined && options.http.key !== undefined
          ? { cert: options.http.cert, key: options.http.key }
          : options.cert !== undefined && options.key !== undefined
          ? { cert: options.cert, key: options.key }
          : {}),
      });
    } catch (e) {
      this.#tcp.shutdown();
      void this.#closeEngine();
      throw options.http
        ? listenError(e, "HTTP", options.http.hostname ?? hostname, options.http.port)
        : e;
    }
    this.finished = this.#tcp.accepting.then(() => this.#shutdown);
    options.signal?.addEventListener("abort", () => this.shutdown(), { once: true });
    const url = (scheme: string, a: Deno.NetAddr) =>
      `${scheme}://${a.hostname.includes(":") ? `[${a.hostname}]` : a.hostname}:${a.port}`;
    const httpTls = options.http?.cert !== undefined || options.cert !== undefined;
    this.log("info", "started", {
      tcp: url(options.cert !== undefined ? "tls" : "tcp", this.addr),
      ...(this.http ? { http: url(httpTls ? "https" : "http", this.http.addr) } : {}),
      engine: this.#engine,
      ...(options.redis !== undefined
        ? { redis: options.redis.replace(/^(rediss?:\/\/)[^@/]*@/, "$1") }
        : {}),
      ...(options.data !== undefined
        ? { data: options.data, fsync: options.fsync ?? "batch" }
        : {}),
      tokens: options.tokens?.length ?? 0,
      max_connections: maxConnections,
      max_line_bytes: this.#tcp.maxLineBytes,
      max_outbound_bytes: this.#tcp.maxOutbound,
      history_messages: options.historyMessages ?? 1000,
      history_bytes: options.historyBytes ?? 1 << 20,
      max_history_bytes: options.maxHistoryBytes ?? 64 << 20,
      ping_interval: options.pingInterval ?? 30_000,
      idle_timeout: options.idleTimeout ?? 90_000,
    });
  }

  log(level: LogLevel, message: string, fields?: Record<string, unknown>): void {
    if (LOG_LEVELS.indexOf(level) >= this.#logLevel) {
      // deno-lint-ignore no-console
      console.error(formatLog(this.#logFormat, level, message, fields));
    }
  }

  shutdown(): Promise<void> {
    this.#shutdown ??= this.#doShutdown();
    return this.#shutdown;
  }

  async #doShutdown(): Promise<void> {
    const start = performance.now();
    const open = { ...this.metrics.connections };
    const sent = this.metrics.bytesOut;
    const http = this.http?.shutdown();
    await this.#tcp.shutdown();
    await http;
    const { puts } = this.hub.stats();
    await this.#closeEngine();
    this.log("info", "stopped", {
      closed_tcp: open.tcp,
      closed_websocket: open.websocket,
      closed_sse: open.sse,
      flushed_bytes: this.metrics.bytesOut - sent,
      puts,
      engine_closed: this.#ownsEngine,
      ms: Math.round(performance.now() - start),
    });
  }

  /** Closes the hub's engine when this server made it. */
  async #closeEngine(): Promise<void> {
    if (this.#ownsEngine) await this.hub.close();
  }

  [Symbol.asyncDispose](): Promise<void> {
    return this.shutdown();
  }
}

/**
 * Starts a msgstream server.
 *
 * @param options Address, limits, auth, TLS.
 * @returns The running server.
 * @throws {RangeError} When an option is out of range.
 * @throws {Deno.errors.AddrInUse} When the port is taken.
 *
 * @example Put and listen through a real socket
 * ```ts
 * import { serve } from "@x/msgstream/server";
 * import { RemoteStream } from "@x/msgstream/client";
 * import { Inbox } from "@x/msgstream";
 * import { assertEquals } from "@std/assert";
 *
 * await using server = serve({ port: 0 });
 * await using client = await RemoteStream.connect(`127.0.0.1:${server.addr.port}`);
 * await client.header("job", "started");
 * const inbox = new Inbox();
 * await client.listen("job", inbox);
 * await client.put("job", 1);
 * const reader = inbox.getReader();
 * assertEquals((await reader.read()).value?.message, "started");
 * assertEquals((await reader.read()).value?.message, 1);
 * reader.releaseLock();
 * ```
 */
export function serve(options?: ServeOptions): MessageServer {
  return new ServerImpl(options ?? {});
}

/**
 * The server's command line: parses `argv`, serves until SIGINT/SIGTERM, then shuts down
 * gracefully and returns the exit code.
 *
 * @param argv Command-line arguments.
 * @returns The process exit code.
 */
export async function main(argv?: string[]): Promise<number> {
  let parsed: ParsedArgs | "help" | "version";
  try {
    parsed = parseServeArgs(argv ?? Deno.args);
  } catch (e) {
    if (!(e instanceof UsageError)) throw e;
    // deno-lint-ignore no-console
    console.error(`msgstream: ${e.message} (see --help)`);
    return 1;
  }
  if (parsed === "help") {
    // deno-lint-ignore no-console
    console.log(usage());
    return 0;
  }
  if (parsed === "version") {
    // deno-lint-ignore no-console
    console.log(`msgstream ${denoJson.version}`);
    return 0;
  }
  const { options, notes } = parsed;
  const level = LOG_LEVELS.indexOf(options.logLevel ?? "info");
  for (const note of notes) {
    if (LOG_LEVELS.indexOf(note.level) >= level) {
      // deno-lint-ignore no-console
      console.error(formatLog(options.logFormat ?? "text", note.level, note.message));
    }
  }
  // The last line of defence: a rejection nobody handled must not end a server that holds
  // every other client's streams. It is a bug, so it is logged (with its stack), never silent.
  globalThis.addEventListener("unhandledrejection", (e) => {
    e.preventDefault();
    const why = e.reason instanceof Error ? e.reason.stack ?? e.reason.message : String(e.reason);
    // deno-lint-ignore no-console
    console.error(formatLog(options.logFormat ?? "text", "error", `unhandled rejection: ${why}`));
  });
  let server: Pick<MessageServer, "addr" | "finished" | "shutdown"> & {
    readonly http: { readonly addr: Deno.NetAddr } | undefined;
  };
  try {
    server = (options.workers ?? 1) > 1 ? await serveWorkers(options) : serve(options);
  } catch (e) {
    const message = (e as Error).message;
    const flag = message.includes("(the HTTP door)") ? "--http-port" : "--port";
    const hint = e instanceof Deno.errors.AddrInUse
      ? `: choose another ${flag}, or stop what holds it`
      : e instanceof Deno.errors.AddrNotAvailable
      ? ": --hostname must be an address of this machine (or 0.0.0.0)"
      : e instanceof Deno.errors.PermissionDenied
      ? `: ports below 1024 need privileges; choose another ${flag}`
      : e instanceof Deno.errors.InvalidData || /certificate|private key|pem/i.test(message)
      ? ": check --cert and --key (see docs/tls.md)"
      : "";
    // deno-lint-ignore no-console
    console.error(`msgstream: ${message.replace(/\s*\n\s*/g, " ")}${hint}`);
    return 2;
  }
  // Signals are handled before the address is printed: whoever reads it may stop us at once.
  const stop = () => server.shutdown();
  const signals: Deno.Signal[] = Deno.build.os === "windows" ? ["SIGINT"] : ["SIGINT", "SIGTERM"];
  for (const s of signals) Deno.addSignalListener(s, stop);
  const scheme = options.cert ? "tls" : "tcp";
  // deno-lint-ignore no-console
  console.log(`msgstream listening on ${scheme}://${server.addr.hostname}:${server.addr.port}`);
  if (server.http) {
    const web = options.http?.cert ?? options.cert ? "https" : "http";
    // deno-lint-ignore no-console
    console.log(`msgstream http on ${web}://${server.http.addr.hostname}:${server.http.addr.port}`);
  }
  await server.finished;
  for (const s of signals) Deno.removeSignalListener(s, stop);
  // With --workers: a worker that failed stopped them all (logged then); say so in the status.
  return "failure" in server && server.failure ? 1 : 0;
}

if (import.meta.main) Deno.exit(await main());
