#!/usr/bin/env -S deno run -N
/**
 * The msgstream server: one hub served through the TCP (or TLS) door and, when asked, the HTTP
 * door (SSE, WebSocket, REST, metrics, status page), optionally shared with other nodes through
 * Redis. This module is the one place that wires the doors, the hub and the engine together
 * from options, flags and `MSGSTREAM_*` variables. Run it with
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
import { Metrics } from "./metrics.ts";
import denoJson from "./deno.json" with { type: "json" };
import { RedisEngine } from "./redis.ts";
import { DurableStore, FSYNC_POLICIES, type FsyncPolicy } from "./store.ts";
import { type MessageHttpServer, serveHttp } from "./http.ts";
import {
  DEFAULT_PORT,
  defaultMaxConnections,
  env,
  intFlag,
  intOption,
  LOG_LEVELS,
  type LogLevel,
  UsageError,
} from "./options.ts";
import { TcpDoor } from "./tcp.ts";

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
  http?: { port: number; hostname?: string };
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

/** The composition: the hub (and its engine, when this server made it), the doors, the log. */
class ServerImpl implements MessageServer {
  readonly addr: Deno.NetAddr;
  readonly hub: MessageStream;
  readonly metrics: Metrics = new Metrics();
  readonly finished: Promise<void>;
  readonly http: MessageHttpServer | undefined;
  readonly #tcp: TcpDoor;
  readonly #logLevel: number;
  #shutdown: Promise<void> | undefined;
  #ownsEngine = false;

  constructor(options: ServeOptions) {
    this.#logLevel = LOG_LEVELS.indexOf(options.logLevel ?? "warn");
    if (this.#logLevel === -1) throw new RangeError(`Unknown log level "${options.logLevel}"`);
    const shutdownTimeout = intOption("shutdownTimeout", options.shutdownTimeout, 5_000, 0);
    const maxConnections = intOption(
      "maxConnections",
      options.maxConnections,
      defaultMaxConnections(),
      1,
    );
    if (options.hub) this.hub = options.hub;
    else if (options.redis !== undefined) {
      const engine = new RedisEngine({
        url: options.redis,
        ...(options.redisPrefix !== undefined ? { prefix: options.redisPrefix } : {}),
        ...(options.historyMessages !== undefined
          ? { historyMessages: options.historyMessages }
          : {}),
      });
      this.hub = new MessageStream({ ...options, engine });
      this.#ownsEngine = true;
    } else if (options.data !== undefined) {
      const store = DurableStore.open(options.data, options.fsync ? { fsync: options.fsync } : {});
      try {
        this.hub = new MessageStream({ ...options, store });
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
    try {
      this.#tcp = new TcpDoor(this.hub, tcp);
    } catch (e) {
      void this.#closeEngine();
      throw e;
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
        shutdownTimeout,
        maxConnections,
      });
    } catch (e) {
      this.#tcp.shutdown();
      void this.#closeEngine();
      throw e;
    }
    this.finished = this.#tcp.accepting.then(() => this.#shutdown);
    options.signal?.addEventListener("abort", () => this.shutdown(), { once: true });
  }

  log(level: LogLevel, message: string): void {
    if (LOG_LEVELS.indexOf(level) >= this.#logLevel) {
      // deno-lint-ignore no-console
      console.error(`${new Date().toISOString()} ${level} ${message}`);
    }
  }

  shutdown(): Promise<void> {
    this.#shutdown ??= this.#doShutdown();
    return this.#shutdown;
  }

  async #doShutdown(): Promise<void> {
    const http = this.http?.shutdown();
    await this.#tcp.shutdown();
    await http;
    await this.#closeEngine();
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

const USAGE = `Usage: msgstream serve [options]    (or: deno run -N server.ts [options])

Options:
  --hostname HOST           address to listen on (default 127.0.0.1)
  --port PORT               TCP port; 0 picks a free one (default 51932)
  --http-port PORT          also serve HTTP (SSE, WebSocket, REST, /metrics, status page)
                            on this port, same hub; 0 picks a free one (default: off)
  --max-line-bytes N        longest request line (default 1048576)
  --max-outbound-bytes N    unsent bytes per connection before slow_consumer (default 8388608)
  --history-messages N      events kept per stream for resume (default 1000)
  --history-bytes N         bytes kept per stream for resume (default 1048576)
  --max-history-bytes N     bytes kept for all streams together (default 67108864)
  --ping-interval MS        ping silent connections this often (default 30000)
  --auth-timeout MS         with tokens, close connections without hello this long
                            (default 10000)
  --max-connections N       open connections per door; size it under ulimit -n
                            (default 15000, or ulimit -n minus 10% when lower)
  --idle-timeout MS         close pinging clients silent this long; 0 never (default 90000)
  --token NAME:SECRET       require hello with this token (repeatable; all rights)
  --token-file FILE         tokens with permissions, JSON (needs --allow-read)
  --cert FILE --key FILE    serve TLS with these PEM files (needs --allow-read)
  --log-level LEVEL         debug, info, warn, error or silent (default info)
  --redis URL               share streams with other nodes through this Redis, e.g.
                            redis://127.0.0.1:6379 (needs --allow-env)
  --redis-prefix PREFIX     prefix of Redis keys and channels (default msgstream:)
  --data PATH               keep headers, epochs, seqs and history in this SQLite file and
                            restore them at start (needs --allow-read and --allow-write on
                            PATH, PATH-wal and PATH-shm; default: memory only)
  --fsync POLICY            with --data: always (answer a put once on disk), batch (commit
                            every 50 ms) or never (let the OS flush) (default batch)
  -h, --help                show this help
  -V, --version             show the version

Environment (read only when permitted, e.g. --allow-env):
  MSGSTREAM_PORT, MSGSTREAM_HOSTNAME, MSGSTREAM_TOKEN (NAME:SECRET), MSGSTREAM_REDIS_URL,
  MSGSTREAM_DATA, MSGSTREAM_FSYNC`;

/**
 * Builds server options from command-line arguments.
 *
 * @param argv The arguments.
 * @returns The options, or `help`/`version` when asked.
 */
function parseServeArgs(argv: string[]): ServeOptions | "help" | "version" {
  const numeric = [
    "port",
    "max-line-bytes",
    "max-outbound-bytes",
    "history-messages",
    "history-bytes",
    "max-history-bytes",
    "ping-interval",
    "idle-timeout",
    "auth-timeout",
    "max-connections",
    "http-port",
  ];
  const args = parseArgs(argv, {
    string: [
      "hostname",
      "token-file",
      "cert",
      "key",
      "log-level",
      "token",
      "redis",
      "redis-prefix",
      "data",
      "fsync",
      ...numeric,
    ],
    boolean: ["help", "version"],
    collect: ["token"],
    alias: { h: "help", V: "version" },
    unknown: (arg: string) => {
      throw new UsageError(`Unknown argument "${arg}"`);
    },
  });
  if (args.help) return "help";
  if (args.version) return "version";
  const logLevel = (args["log-level"] ?? "info") as LogLevel;
  if (!LOG_LEVELS.includes(logLevel)) throw new UsageError(`Unknown --log-level "${logLevel}"`);
  const options: ServeOptions = { logLevel };
  options.hostname = args.hostname ?? env("MSGSTREAM_HOSTNAME") ?? "127.0.0.1";
  const port = intFlag(args.port ?? env("MSGSTREAM_PORT"), "port", 0, 65535);
  if (port !== undefined) options.port = port;
  const set = (flag: string, key: keyof ServeOptions) => {
    const v = intFlag(args[flag], flag);
    if (v !== undefined) (options as Record<string, unknown>)[key] = v;
  };
  set("max-line-bytes", "maxLineBytes");
  set("max-outbound-bytes", "maxOutboundBytes");
  set("history-messages", "historyMessages");
  set("history-bytes", "historyBytes");
  set("max-history-bytes", "maxHistoryBytes");
  set("ping-interval", "pingInterval");
  set("idle-timeout", "idleTimeout");
  set("auth-timeout", "authTimeout");
  set("max-connections", "maxConnections");
  const httpPort = intFlag(args["http-port"], "http-port", 0, 65535);
  if (httpPort !== undefined) options.http = { port: httpPort };
  const tokens: Token[] = [];
  const specs: string[] = args.token ?? [];
  const envToken = env("MSGSTREAM_TOKEN");
  if (envToken) specs.push(envToken);
  try {
    for (const spec of specs) tokens.push(parseTokenSpec(spec));
    if (args["token-file"]) {
      tokens.push(...parseTokenFile(Deno.readTextFileSync(args["token-file"]), args["token-file"]));
    }
  } catch (e) {
    throw new UsageError((e as Error).message);
  }
  if (tokens.length > 0) options.tokens = tokens;
  const redis = args.redis ?? env("MSGSTREAM_REDIS_URL");
  if (redis !== undefined) {
    if (!/^rediss?:\/\//.test(redis)) {
      throw new UsageError(`--redis must be a redis:// or rediss:// URL, got "${redis}"`);
    }
    if (Deno.permissions.querySync({ name: "env" }).state !== "granted") {
      throw new UsageError("--redis needs --allow-env: the Redis client reads the environment");
    }
    options.redis = redis;
  }
  if (args["redis-prefix"] !== undefined) options.redisPrefix = args["redis-prefix"];
  const data = args.data ?? env("MSGSTREAM_DATA");
  if (data !== undefined) {
    if (data === "") throw new UsageError("--data needs a file path");
    options.data = data;
  }
  const fsync = args.fsync ?? env("MSGSTREAM_FSYNC");
  if (fsync !== undefined) {
    if (!FSYNC_POLICIES.includes(fsync as FsyncPolicy)) {
      throw new UsageError(`--fsync must be always, batch or never, got "${fsync}"`);
    }
    options.fsync = fsync as FsyncPolicy;
  }
  if ((args.cert === undefined) !== (args.key === undefined)) {
    throw new UsageError("--cert and --key go together");
  }
  if (args.cert !== undefined && args.key !== undefined) {
    options.cert = Deno.readTextFileSync(args.cert);
    options.key = Deno.readTextFileSync(args.key);
  }
  return options;
}

/**
 * The server's command line: parses `argv`, serves until SIGINT/SIGTERM, then shuts down
 * gracefully and returns the exit code.
 *
 * @param argv Command-line arguments.
 * @returns The process exit code.
 */
export async function main(argv?: string[]): Promise<number> {
  let options: ServeOptions | "help" | "version";
  try {
    options = parseServeArgs(argv ?? Deno.args);
  } catch (e) {
    if (!(e instanceof UsageError) && !(e instanceof Deno.errors.NotFound)) throw e;
    // deno-lint-ignore no-console
    console.error(`msgstream: ${(e as Error).message}\n\n${USAGE}`);
    return 1;
  }
  if (options === "help") {
    // deno-lint-ignore no-console
    console.log(USAGE);
    return 0;
  }
  if (options === "version") {
    // deno-lint-ignore no-console
    console.log(`msgstream ${denoJson.version}`);
    return 0;
  }
  let server: MessageServer;
  try {
    server = serve(options);
  } catch (e) {
    // deno-lint-ignore no-console
    console.error(`msgstream: cannot listen: ${(e as Error).message}`);
    return 2;
  }
  const scheme = options.cert ? "tls" : "tcp";
  // deno-lint-ignore no-console
  console.log(`msgstream listening on ${scheme}://${server.addr.hostname}:${server.addr.port}`);
  if (server.http) {
    // deno-lint-ignore no-console
    console.log(`msgstream http on http://${server.http.addr.hostname}:${server.http.addr.port}`);
  }
  const stop = () => server.shutdown();
  const signals: Deno.Signal[] = Deno.build.os === "windows" ? ["SIGINT"] : ["SIGINT", "SIGTERM"];
  for (const s of signals) Deno.addSignalListener(s, stop);
  await server.finished;
  for (const s of signals) Deno.removeSignalListener(s, stop);
  return 0;
}

if (import.meta.main) Deno.exit(await main());
