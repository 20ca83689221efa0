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
import { parseArgs } from "@std/cli/parse-args";
import type { Codec } from "./codec.ts";
import { MessageStream, type MessageStreamOptions } from "./mod.ts";
import { Auth, parseTokenFile, parseTokenSpec, type Token } from "./auth.ts";
import { type Door, Metrics } from "./metrics.ts";
import denoJson from "./deno.json" with { type: "json" };
import { RedisEngine } from "./redis.ts";
import { DurableStore, FSYNC_POLICIES, type FsyncPolicy } from "./store.ts";
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
import { AllowedHosts } from "./hosts.ts";

export { ProtocolError } from "./protocol.ts";
export type { ErrorCode } from "./protocol.ts";
export { Metrics } from "./metrics.ts";
export type { Permissions, Token } from "./auth.ts";
export type { Door } from "./metrics.ts";
export type { LogLevel } from "./options.ts";
export { UNAUTHENTICATED_LINE_BYTES } from "./tcp.ts";

/** Options for {@linkcode serve}. */
export interface ServeOptions extends MessageStreamOptions {
  /**
   * The address to listen on.
   *
   * @default {"127.0.0.1"}
   */
  hostname?: string;
  /**
   * The port to listen on; 0 picks a free one (read it from `server.addr.port`).
   *
   * @default {51932}
   */
  port?: number;
  /** The hub to serve; by default a new one made from these options. */
  hub?: MessageStream;
  /** The codec for a new hub (ignored when `hub` is given: the hub's codec is used). */
  codec?: Codec;
  /**
   * Longest request line in bytes, newline excluded. A longer line gets `line_too_long` and
   * its connection is closed.
   *
   * @default {1048576}
   */
  maxLineBytes?: number;
  /**
   * Most bytes waiting to be sent to one connection (beyond what its socket accepted). A
   * connection over it gets `slow_consumer` and is closed.
   *
   * @default {8388608}
   */
  maxOutboundBytes?: number;
  /**
   * How often, in milliseconds, a silent connection is sent a `ping`.
   *
   * @default {30000}
   */
  pingInterval?: number;
  /**
   * A connection that has sent `hello` or `ping` and then nothing for this many milliseconds
   * is closed as dead (0: never). Connections that never did (clients of the original
   * protocol) are only pinged: a dead one fails on write.
   *
   * @default {90000}
   */
  idleTimeout?: number;
  /** Tokens; when given, each connection must send `hello` with one first. */
  tokens?: Token[];
  /**
   * With tokens, milliseconds a connection has to complete `hello` before it is closed with
   * `unauthorized`. Until then it may hold at most {@linkcode UNAUTHENTICATED_LINE_BYTES} of an
   * unfinished line.
   *
   * @default {10000}
   */
  authTimeout?: number;
  /**
   * Most connections open at once on each door (TCP: beyond it a new connection gets an `error`
   * frame with code `limit_exceeded` and is closed; HTTP: 503). Size it under the process's
   * descriptor limit (`ulimit -n`) with headroom for files, Redis and the HTTP door: about
   * `ulimit -n` minus 10%. When the door runs out of descriptors anyway, it pauses accepting
   * (100 ms, doubling to 1 s) and resumes by itself.
   *
   * @default {15000, or less under a lower readable descriptor limit}
   */
  maxConnections?: number;
  /** TLS certificate chain (PEM); with `key`, the server speaks TLS. */
  cert?: string;
  /** TLS private key (PEM). */
  key?: string;
  /**
   * What to log to stderr.
   *
   * @default {"warn"}
   */
  logLevel?: LogLevel;
  /**
   * How each log line is written: `text` (`TIME LEVEL message key=value…`) or `json` (one
   * object per line with `time`, `level`, `msg` and the fields). Secrets are never logged.
   *
   * @default {"text"}
   */
  logFormat?: LogFormat;
  /** Aborting it shuts the server down. */
  signal?: AbortSignal;
  /**
   * Milliseconds `shutdown()` waits for connections to flush before cutting them.
   *
   * @default {5000}
   */
  shutdownTimeout?: number;
  /**
   * Milliseconds a TLS client has to complete its handshake before it is cut (a plain-TCP
   * client on a TLS port never does).
   *
   * @default {10000}
   */
  handshakeTimeout?: number;
  /**
   * Also serve the HTTP door (SSE, WebSocket, REST, metrics, status page; see `http.ts`) on
   * this port, on the same hub, with the same tokens and metrics. `hostname` defaults to the
   * TCP server's. Off unless given.
   */
  http?: {
    /** The HTTP door's port; 0 picks a free one. */
    port: number;
    /** Its address; the TCP server's `hostname` by default. */
    hostname?: string;
    /**
     * Its TLS certificate chain (PEM), with `key`: HTTPS, WSS and SSE over TLS. By default the
     * server's `cert` and `key`: with TLS on the TCP door, the HTTP door is HTTPS too.
     */
    cert?: string;
    /** Its TLS private key (PEM); by default the server's `key`. */
    key?: string;
    /**
     * The names a request's `Host` header may carry; others get 421 (see `hosts.ts`).
     *
     * @default {loopback names and addresses when bound to a loopback address; any host
     * otherwise}
     */
    allowedHosts?: string[];
    /**
     * The one foreign origin (`https://host[:port]`) whose pages may use REST, SSE and
     * WebSocket; none by default: same origin only.
     */
    corsOrigin?: string;
  };
  /**
   * Share streams with every other node using this Redis (`redis://host:port`): header, seq,
   * epoch and history live in Redis and puts reach every node's listeners (see `redis.ts`).
   * Ignored when `hub` is given. Needs `--allow-env` (the Redis client reads the environment).
   */
  redis?: string;
  /**
   * Prefix of every Redis key and channel, so that several services can share one Redis.
   *
   * @default {"msgstream:"}
   */
  redisPrefix?: string;
  /**
   * With `redis`: the URL is a node of a Redis Cluster (each stream in its hash tag's slot).
   *
   * @default {false}
   */
  redisCluster?: boolean;
  /**
   * Keep every stream's epoch, seq, header and history in this SQLite file and restore them at
   * start (see docs/durability.md); needs read and write permission on it and its `-wal` and
   * `-shm` side files. Ignored when `hub` or `redis` is given. Off (memory only) unless given.
   */
  data?: string;
  /**
   * With `data`: when a write is durable (`always`, `batch` or `never`; see `store.ts`).
   *
   * @default {"batch"}
   */
  fsync?: FsyncPolicy;
}

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

/** How the server writes its log lines. */
export type LogFormat = "text" | "json";

/** Every log format. */
const LOG_FORMATS: readonly LogFormat[] = ["text", "json"];

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

/** How an option's value is read from a flag, a variable or the config file. */
type OptionKind = "int" | "string" | "strings" | "enum" | "bool";

/** A checked option value. */
type OptionValue = number | string | string[] | boolean;

/**
 * One server option, the same under three names: the flag `--NAME`, the environment variable
 * (`MSGSTREAM_` + NAME in capitals unless `env` says otherwise) and the key `NAME` of the
 * `--config` file.
 */
interface OptionSpec {
  /** The flag's name without dashes; also the config file's key. */
  name: string;
  /** How the value is read. */
  kind: OptionKind;
  /** What the flag takes, for the usage ("N", "MS", "FILE"); empty for a bool. */
  arg: string;
  /** The usage text; a "\n" starts a continuation line. */
  help: string;
  /** The smallest integer allowed. */
  min?: number;
  /** The largest integer allowed. */
  max?: number;
  /** The values an enum takes. */
  values?: readonly string[];
  /** The environment variable, or null for none; by default `MSGSTREAM_` + NAME in capitals. */
  env?: string | null;
  /** The {@linkcode ServeOptions} field it sets, when it maps one to one. */
  key?: keyof ServeOptions;
  /** Or how it sets the options; `label` names the value's source for messages. */
  apply?: (options: ServeOptions, value: OptionValue, label: string) => void;
}

/**
 * Every option of the server's command line, its environment and its config file. Add a flag
 * here: the usage, the `MSGSTREAM_*` variable, the config key and `deno task start`'s
 * `--allow-env` list (tests/config_test.ts compares them) follow from this one entry.
 */
const SERVE_OPTIONS: readonly OptionSpec[] = [
  {
    name: "config",
    kind: "string",
    arg: "FILE",
    help: "read options from this JSON file, keyed by flag name\n(needs --allow-read)",
  },
  {
    name: "hostname",
    kind: "string",
    arg: "HOST",
    help: "address to listen on (default 127.0.0.1)",
    key: "hostname",
  },
  {
    name: "port",
    kind: "int",
    arg: "PORT",
    help: "TCP port; 0 picks a free one (default 51932)",
    max: 65535,
    key: "port",
  },
  {
    name: "http-port",
    kind: "int",
    arg: "PORT",
    help: "also serve HTTP (SSE, WebSocket, REST, /metrics, status page)\n" +
      "on this port, same hub; 0 picks a free one (default: off)",
    max: 65535,
    apply: (o, v) => {
      o.http = { ...o.http, port: v as number };
    },
  },
  {
    name: "max-line-bytes",
    kind: "int",
    arg: "N",
    help: "longest request line (default 1048576)",
    key: "maxLineBytes",
  },
  {
    name: "max-message-bytes",
    kind: "int",
    arg: "N",
    help: "largest put or header message, as encoded; a larger one gets\n" +
      "message_too_large (default 1044480: every event fits in 1 MiB)",
    key: "maxMessageBytes",
  },
  {
    name: "max-outbound-bytes",
    kind: "int",
    arg: "N",
    help: "unsent bytes per connection before slow_consumer (default 8388608)",
    key: "maxOutboundBytes",
  },
  {
    name: "history-messages",
    kind: "int",
    arg: "N",
    help: "events kept per stream for resume (default 1000)",
    key: "historyMessages",
  },
  {
    name: "history-bytes",
    kind: "int",
    arg: "N",
    help: "bytes kept per stream for resume (default 1048576)",
    key: "historyBytes",
  },
  {
    name: "max-history-bytes",
    kind: "int",
    arg: "N",
    help: "bytes kept for all streams together (default 67108864)",
    key: "maxHistoryBytes",
  },
  {
    name: "ping-interval",
    kind: "int",
    arg: "MS",
    help: "ping silent connections this often (default 30000)",
    key: "pingInterval",
  },
  {
    name: "auth-timeout",
    kind: "int",
    arg: "MS",
    help: "with tokens, close connections without hello this long\n(default 10000)",
    key: "authTimeout",
  },
  {
    name: "max-connections",
    kind: "int",
    arg: "N",
    help: "open connections per door; size it under ulimit -n\n" +
      "(default 15000, or ulimit -n minus 10% when lower)",
    key: "maxConnections",
  },
  {
    name: "max-memory",
    kind: "int",
    arg: "N",
    help: "bytes kept for clients in all: headers, history, streams,\n" +
      "listens, unfinished lines, unsent frames (default 268435456)",
    key: "maxMemory",
  },
  {
    name: "stream-ttl",
    kind: "int",
    arg: "MS",
    help: "remove a stream with no listeners and no puts for MS milliseconds;\n" +
      "pattern listeners get end (default 0: off; memory and --data only)",
    key: "streamTtl",
  },
  {
    name: "max-streams",
    kind: "int",
    arg: "N",
    help: "streams held at once (default 100000)",
    key: "maxStreams",
  },
  {
    name: "max-header-bytes",
    kind: "int",
    arg: "N",
    help: "largest header, as its event frame's bytes (default 1048576)",
    key: "maxHeaderBytes",
  },
  {
    name: "max-listens",
    kind: "int",
    arg: "N",
    help: "streams and patterns one connection follows at once (default 10000)",
    key: "maxListens",
  },
  {
    name: "idle-timeout",
    kind: "int",
    arg: "MS",
    help: "close pinging clients silent this long; 0 never (default 90000)",
    key: "idleTimeout",
  },
  {
    name: "token",
    kind: "strings",
    arg: "NAME:SECRET",
    help: "require hello with this token (repeatable; all rights)",
    apply: (o, v, label) => {
      for (const spec of v as string[]) {
        try {
          (o.tokens ??= []).push(parseTokenSpec(spec));
        } catch (e) {
          throw new UsageError(`${label}: ${(e as Error).message}`);
        }
      }
    },
  },
  {
    name: "token-file",
    kind: "string",
    arg: "FILE",
    help: "tokens with permissions, JSON (needs --allow-read)",
    apply: (o, v, label) => {
      const file = v as string;
      try {
        (o.tokens ??= []).push(...parseTokenFile(readFile(file, label), file));
      } catch (e) {
        if (e instanceof UsageError) throw e;
        throw new UsageError((e as Error).message);
      }
    },
  },
  {
    name: "cert",
    kind: "string",
    arg: "FILE",
    help: "serve TLS on every door with this PEM certificate chain\nand --key (needs --allow-read)",
    apply: (o, v, label) => {
      o.cert = readFile(v as string, label);
    },
  },
  {
    name: "key",
    kind: "string",
    arg: "FILE",
    help: "the PEM private key of --cert",
    apply: (o, v, label) => {
      o.key = readFile(v as string, label);
    },
  },
  {
    name: "http-cert",
    kind: "string",
    arg: "FILE",
    help: "serve HTTPS with this PEM certificate chain and --http-key instead\n" +
      "of --cert and --key (needs --allow-read)",
    apply: (o, v, label) => {
      (o as HttpFiles).httpCert = readFile(v as string, label);
    },
  },
  {
    name: "http-key",
    kind: "string",
    arg: "FILE",
    help: "the PEM private key of --http-cert",
    apply: (o, v, label) => {
      (o as HttpFiles).httpKey = readFile(v as string, label);
    },
  },
  {
    name: "allowed-hosts",
    kind: "strings",
    arg: "HOSTS",
    help: "Host names the HTTP door answers (comma-separated or repeated;\n" +
      "*.name for a domain, * for any); others get 421. Default: loopback\n" +
      "names when bound to loopback, any host otherwise",
    apply: (o, v, label) => {
      if (!o.http) throw new UsageError(`${label} needs --http-port`);
      const allowedHosts = [...(o.http.allowedHosts ?? []), ...(v as string[])];
      try {
        AllowedHosts.from(allowedHosts, undefined);
      } catch (e) {
        throw new UsageError(`${label}: ${(e as Error).message}`);
      }
      o.http = { ...o.http, allowedHosts };
    },
  },
  {
    name: "cors-origin",
    kind: "string",
    arg: "ORIGIN",
    help: "the one other origin (https://host[:port]) whose pages may use\n" +
      "REST, SSE and WebSocket (default: same origin only)",
    apply: (o, v, label) => {
      if (!o.http) throw new UsageError(`${label} needs --http-port`);
      const origin = v as string;
      let parsed: string | undefined;
      try {
        parsed = new URL(origin).origin;
      } catch {
        // not a URL
      }
      if (origin !== "*" && parsed !== origin) {
        throw new UsageError(
          `${label} must be an origin such as https://app.example.com, got "${origin}"`,
        );
      }
      o.http = { ...o.http, corsOrigin: origin };
    },
  },
  {
    name: "log-level",
    kind: "enum",
    arg: "LEVEL",
    help: "debug, info, warn, error or silent (default info)",
    values: LOG_LEVELS,
    key: "logLevel",
  },
  {
    name: "log-format",
    kind: "enum",
    arg: "FORMAT",
    help: "text (TIME LEVEL message key=value...) or json, one object per\nline (default text)",
    values: LOG_FORMATS,
    key: "logFormat",
  },
  {
    name: "redis",
    kind: "string",
    arg: "URL",
    help: "share streams with other nodes through this Redis, e.g.\n" +
      "redis://127.0.0.1:6379 (needs --allow-env)",
    env: "MSGSTREAM_REDIS_URL",
    apply: (o, v, label) => {
      const url = v as string;
      if (!/^rediss?:\/\//.test(url)) {
        // Never echo a password: what is before an "@" is left out.
        const shown = url.replace(/^([^/]*\/\/)?[^@/]*@/, "$1…@");
        throw new UsageError(`${label} must be a redis:// or rediss:// URL, got "${shown}"`);
      }
      if (Deno.permissions.querySync({ name: "env" }).state !== "granted") {
        throw new UsageError(`${label} needs --allow-env: the Redis client reads the environment`);
      }
      o.redis = url;
    },
  },
  {
    name: "redis-prefix",
    kind: "string",
    arg: "PREFIX",
    help: "prefix of Redis keys and channels (default msgstream:)",
    key: "redisPrefix",
  },
  {
    name: "redis-cluster",
    kind: "bool",
    arg: "",
    help: "with --redis: the URL is a node of a Redis Cluster (see\ndocs/redis.md)",
    env: null,
    key: "redisCluster",
  },
  {
    name: "data",
    kind: "string",
    arg: "PATH",
    help: "keep headers, epochs, seqs and history in this SQLite file and\n" +
      "restore them at start (needs --allow-read and --allow-write on\n" +
      "PATH, PATH-wal and PATH-shm; default: memory only)",
    apply: (o, v, label) => {
      if (v === "") throw new UsageError(`${label} needs a file path`);
      o.data = v as string;
    },
  },
  {
    name: "fsync",
    kind: "enum",
    arg: "POLICY",
    help: "with --data: always (answer a put once on disk), batch (commit\n" +
      "every 50 ms) or never (let the OS flush) (default batch)",
    values: FSYNC_POLICIES,
    key: "fsync",
  },
];

/** The environment variable of an option, or undefined when it has none. */
function envName(spec: OptionSpec): string | undefined {
  if (spec.env === null) return undefined;
  return spec.env ?? `MSGSTREAM_${spec.name.toUpperCase().replaceAll("-", "_")}`;
}

/** Every `MSGSTREAM_*` variable the server reads, in table order. */
function envNames(): string[] {
  return SERVE_OPTIONS.map(envName).filter((n): n is string => n !== undefined);
}

/** Reads a file an option names; a missing permission or file is a one-line usage error. */
function readFile(path: string, label: string): string {
  try {
    return Deno.readTextFileSync(path);
  } catch (e) {
    if (e instanceof Deno.errors.NotCapable || e instanceof Deno.errors.PermissionDenied) {
      throw new UsageError(
        `Cannot read ${label} "${path}": run with --allow-read (or --allow-read=${path}) for ${label}`,
      );
    }
    if (e instanceof Deno.errors.NotFound) {
      throw new UsageError(`Cannot read ${label} "${path}": no such file`);
    }
    throw new UsageError(`Cannot read ${label} "${path}": ${(e as Error).message}`);
  }
}

function usage(): string {
  const lines = [
    "Usage: msgstream serve [options]    (or: deno run -N server.ts [options])",
    "",
    "Options:",
  ];
  for (const spec of SERVE_OPTIONS) {
    const flag = `  --${spec.name}${spec.arg ? ` ${spec.arg}` : ""}`;
    const [first, ...more] = spec.help.split("\n");
    if (flag.length < 28) lines.push(`${flag.padEnd(28)}${first}`);
    else lines.push(flag, `${" ".repeat(28)}${first}`);
    for (const line of more) lines.push(`${" ".repeat(28)}${line}`);
  }
  lines.push(
    `${"  -h, --help".padEnd(28)}show this help`,
    `${"  -V, --version".padEnd(28)}show the version`,
    "",
    "Every option is also an environment variable and a --config key. Precedence: flag, then",
    "environment, then config file. The variables (read only where --allow-env grants them;",
    "`deno task start` grants exactly these):",
  );
  let line = " ";
  for (const name of envNames()) {
    if (line.length + name.length + 2 > 96) {
      lines.push(line);
      line = " ";
    }
    line += ` ${name}`;
  }
  lines.push(
    line,
    "",
    "The config file is a JSON object keyed by flag name, e.g.",
    '  {"port": 51932, "token": ["app:s3cret"], "http-port": 8080}',
  );
  return lines.join("\n");
}

/** The HTTP door's own certificate while the options are read (its port may come later). */
interface HttpFiles {
  httpCert?: string;
  httpKey?: string;
}

/** Something to say once the log is up (the environment that could not be read). */
interface Note {
  level: LogLevel;
  message: string;
}

/** What the server's command line asked for. */
interface ParsedArgs {
  options: ServeOptions;
  /** Log lines about the configuration itself. */
  notes: Note[];
}

/** Reads the `MSGSTREAM_*` variables that are granted; notes those that are not. */
function readEnvironment(notes: Note[]): Map<string, string> {
  const values = new Map<string, string>();
  const unread: string[] = [];
  for (const name of envNames()) {
    let state: Deno.PermissionState;
    try {
      state = Deno.permissions.querySync({ name: "env", variable: name }).state;
    } catch {
      state = "denied";
    }
    if (state !== "granted") {
      unread.push(name);
      continue;
    }
    const value = Deno.env.get(name);
    if (value) values.set(name, value);
  }
  if (unread.length === 0) return values;
  // Deno shows nothing of a variable without permission (not even whether it is set; reading
  // /proc/self/environ needs --allow-all), so what was not read is said once at start.
  if (unread.length === envNames().length) {
    notes.push({
      level: "info",
      message: "MSGSTREAM_* variables not read: no --allow-env " +
        "(deno task start grants them; see --help)",
    });
  } else {
    notes.push({
      level: "info",
      message: `not read (not granted by --allow-env): ${unread.join(", ")}`,
    });
  }
  return values;
}

/** Checks one option's value as the flag, variable or config file gave it. */
function checkValue(spec: OptionSpec, raw: unknown, label: string, json: boolean): OptionValue {
  switch (spec.kind) {
    case "int": {
      const min = spec.min ?? 0;
      const max = spec.max ?? Number.MAX_SAFE_INTEGER;
      const n = json ? raw : typeof raw === "string" && raw.trim() !== "" ? Number(raw) : NaN;
      if (typeof n !== "number" || !Number.isSafeInteger(n) || n < min) {
        const what = min === 0 ? "a non-negative integer" : `an integer of at least ${min}`;
        throw new UsageError(`${label} must be ${what}, got ${JSON.stringify(raw)}`);
      }
      if (n > max) throw new UsageError(`${label} must be at most ${max}, got ${n}`);
      return n;
    }
    case "strings": {
      const list = typeof raw === "string" ? [raw] : raw;
      if (!Array.isArray(list) || !list.every((s) => typeof s === "string")) {
        throw new UsageError(`${label} must be a string or an array of strings`);
      }
      return list as string[];
    }
    case "bool": {
      if (typeof raw === "boolean") return raw;
      if (!json && (raw === "true" || raw === "1")) return true;
      if (!json && (raw === "false" || raw === "0")) return false;
      throw new UsageError(`${label} must be true or false, got ${JSON.stringify(raw)}`);
    }
    case "string":
    case "enum": {
      if (typeof raw !== "string") {
        throw new UsageError(`${label} must be a string, got ${JSON.stringify(raw)}`);
      }
      if (spec.values && !spec.values.includes(raw)) {
        throw new UsageError(`Unknown ${label} "${raw}" (one of ${spec.values.join(", ")})`);
      }
      return raw;
    }
  }
}

/** Reads the `--config` file: a JSON object whose keys are flag names. */
function readConfig(path: string, label: string): Record<string, unknown> {
  const where = `Config file "${path}"`;
  let data: unknown;
  try {
    data = JSON.parse(readFile(path, label));
  } catch (e) {
    if (e instanceof UsageError) throw e;
    throw new UsageError(`${where}: invalid JSON: ${(e as Error).message}`);
  }
  if (data === null || typeof data !== "object" || Array.isArray(data)) {
    throw new UsageError(`${where}: must be a JSON object keyed by flag name`);
  }
  for (const key of Object.keys(data)) {
    if (key === "config" || !SERVE_OPTIONS.some((s) => s.name === key)) {
      throw new UsageError(`${where}: unknown key "${key}"`);
    }
  }
  return data as Record<string, unknown>;
}

/**
 * Builds server options from command-line arguments, the `MSGSTREAM_*` environment and the
 * `--config` file, in that order of precedence.
 *
 * @param argv The arguments.
 * @returns The options, or `help`/`version` when asked.
 */
function parseServeArgs(argv: string[]): ParsedArgs | "help" | "version" {
  const args = parseArgs(argv, {
    string: SERVE_OPTIONS.filter((s) => s.kind !== "bool").map((s) => s.name),
    boolean: [
      "help",
      "version",
      ...SERVE_OPTIONS.filter((s) => s.kind === "bool").map((s) => s.name),
    ],
    collect: SERVE_OPTIONS.filter((s) => s.kind === "strings").map((s) => s.name),
    alias: { h: "help", V: "version" },
    unknown: (arg: string) => {
      throw new UsageError(`Unknown argument "${arg}"`);
    },
  }) as Record<string, unknown>;
  if (args.help) return "help";
  if (args.version) return "version";
  const notes: Note[] = [];
  const environment = readEnvironment(notes);
  const given = (spec: OptionSpec): boolean => {
    const v = args[spec.name];
    if (spec.kind === "bool") return v === true;
    if (spec.kind === "strings") return Array.isArray(v) && v.length > 0;
    return v !== undefined;
  };
  let file: Record<string, unknown> = {};
  let fileName = "";
  const configSpec = SERVE_OPTIONS[0] as OptionSpec;
  const configPath = given(configSpec)
    ? args.config as string
    : environment.get(envName(configSpec) as string);
  if (configPath !== undefined) {
    const label = given(configSpec) ? "--config" : envName(configSpec) as string;
    file = readConfig(configPath, label);
    fileName = configPath;
  }
  const options: ServeOptions = { logLevel: "info" };
  for (const spec of SERVE_OPTIONS) {
    if (spec === configSpec) continue;
    const variable = envName(spec);
    let value: OptionValue;
    let label: string;
    if (given(spec)) {
      label = `--${spec.name}`;
      value = checkValue(spec, args[spec.name], label, false);
    } else if (variable !== undefined && environment.has(variable)) {
      label = variable;
      value = checkValue(spec, environment.get(variable), label, false);
    } else if (Object.hasOwn(file, spec.name)) {
      label = `"${spec.name}" in config file "${fileName}"`;
      value = checkValue(spec, file[spec.name], label, true);
    } else continue;
    if (spec.apply) spec.apply(options, value, label);
    else if (spec.key) (options as Record<string, unknown>)[spec.key] = value;
  }
  if ((options.cert === undefined) !== (options.key === undefined)) {
    throw new UsageError("--cert and --key go together");
  }
  const { httpCert, httpKey } = options as HttpFiles;
  delete (options as HttpFiles).httpCert;
  delete (options as HttpFiles).httpKey;
  if ((httpCert === undefined) !== (httpKey === undefined)) {
    throw new UsageError("--http-cert and --http-key go together");
  }
  if (httpCert !== undefined && httpKey !== undefined) {
    if (!options.http) throw new UsageError("--http-cert needs --http-port");
    options.http = { ...options.http, cert: httpCert, key: httpKey };
  }
  return { options, notes };
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
  let server: MessageServer;
  try {
    server = serve(options);
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
  return 0;
}

if (import.meta.main) Deno.exit(await main());
