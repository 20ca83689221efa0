/**
 * The server's options: {@linkcode ServeOptions} (what `serve()` in `server.ts` takes), and the one
 * table that reads them from flags, `MSGSTREAM_*` variables and a `--config` file (that order
 * of precedence; docs/operations.md), with the usage text made from it. It imports nothing of
 * `server.ts`: the server re-exports the types and runs {@linkcode parseServeArgs}.
 *
 * @module
 */

/// <reference types="./std_types.d.ts" />
import { parseArgs } from "@std/cli/parse-args";
import type { Codec } from "./codec.ts";
import type { MessageStream, MessageStreamOptions } from "./mod.ts";
import { parseTokenFile, parseTokenSpec, type Token } from "./auth.ts";
import { FSYNC_POLICIES, type FsyncPolicy } from "./store.ts";
import { AllowedHosts } from "./hosts.ts";
import { LOG_LEVELS, type LogLevel, UsageError } from "./options.ts";

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
     * Milliseconds a request's headers have to arrive (408 and close beyond).
     *
     * @default {10000}
     */
    headerTimeout?: number;
    /**
     * Milliseconds a whole request, headers and body, has to arrive (408 and close beyond).
     *
     * @default {30000}
     */
    requestTimeout?: number;
    /**
     * Milliseconds a connection may stay idle between requests.
     *
     * @default {5000}
     */
    keepAliveTimeout?: number;
    /**
     * Most bytes of a request's line and headers (431 and close beyond).
     *
     * @default {16384}
     */
    maxHeadBytes?: number;
    /**
     * Most requests one connection may have under way (responses not yet written); one more
     * closes it.
     *
     * @default {16}
     */
    maxPipelined?: number;
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
   * With `redis`: the share of Redis' `maxmemory`, in percent, past which a header set or a put
   * that would make a new stream is refused with `limit_exceeded` (`redis_memory`); puts to
   * existing streams go on. 0 turns it off (see docs/redis.md).
   *
   * @default {90}
   */
  redisMaxMemoryPercent?: number;
  /**
   * With `redis`: milliseconds before an unanswered Redis command fails `engine_unavailable`;
   * a connection silent that long while it owes an answer is treated as lost (made again,
   * listeners resynced), and subscribers are PINGed at this interval (see `RedisEngineOptions`).
   * 0: wait for ever.
   *
   * @default {10000}
   */
  redisCommandTimeout?: number;
  /**
   * With `redis`: the URL is a node of a Redis Cluster (each stream in its hash tag's slot).
   *
   * @default {false}
   */
  redisCluster?: boolean;
  /**
   * With `redisCluster`: publish events with classic `PUBLISH` (forwarded by the cluster bus to
   * every node) even when the servers have sharded pub/sub (Redis 7), which is used otherwise.
   *
   * @default {false}
   */
  redisClassicPubSub?: boolean;
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
  /**
   * Serve with this many worker threads sharing the TCP port (`reusePort`, Linux), the
   * streams partitioned between them by a hash of their names (`workers.ts`). Only
   * `serveWorkers()` and the command line read it; `serve()` is always one worker.
   *
   * @default {1}
   */
  workers?: number;
  /**
   * Bind the TCP door with `reusePort`, so that other listeners of this process may share the
   * port (what each worker of `serveWorkers()` does; needs `--unstable-net`).
   *
   * @default {false}
   */
  reusePort?: boolean;
}

/** How the server writes its log lines. */
export type LogFormat = "text" | "json";

/** Every log format. */
export const LOG_FORMATS: readonly LogFormat[] = ["text", "json"];

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
    name: "http-header-timeout",
    kind: "int",
    arg: "MS",
    min: 1,
    help: "HTTP: a request's headers must arrive within this; else 408 and\n" +
      "close (default 10000)",
    apply: (o, v, label) => {
      if (!o.http) throw new UsageError(`${label} needs --http-port`);
      o.http = { ...o.http, headerTimeout: v as number };
    },
  },
  {
    name: "http-request-timeout",
    kind: "int",
    arg: "MS",
    min: 1,
    help: "HTTP: a whole request (headers and body) must arrive within\n" +
      "this; else 408 and close (default 30000)",
    apply: (o, v, label) => {
      if (!o.http) throw new UsageError(`${label} needs --http-port`);
      o.http = { ...o.http, requestTimeout: v as number };
    },
  },
  {
    name: "http-keep-alive-timeout",
    kind: "int",
    arg: "MS",
    min: 1,
    help: "HTTP: close a connection idle this long between requests\n" +
      "(default 5000)",
    apply: (o, v, label) => {
      if (!o.http) throw new UsageError(`${label} needs --http-port`);
      o.http = { ...o.http, keepAliveTimeout: v as number };
    },
  },
  {
    name: "http-max-head-bytes",
    kind: "int",
    arg: "N",
    min: 1,
    help: "HTTP: largest request line and headers; else 431 and close\n" +
      "(default 16384)",
    apply: (o, v, label) => {
      if (!o.http) throw new UsageError(`${label} needs --http-port`);
      o.http = { ...o.http, maxHeadBytes: v as number };
    },
  },
  {
    name: "http-max-pipelined",
    kind: "int",
    arg: "N",
    min: 1,
    help: "HTTP: requests one connection may have waiting for their answers;\n" +
      "one more closes it (default 16)",
    apply: (o, v, label) => {
      if (!o.http) throw new UsageError(`${label} needs --http-port`);
      o.http = { ...o.http, maxPipelined: v as number };
    },
  },
  {
    name: "handshake-timeout",
    kind: "int",
    arg: "MS",
    min: 1,
    help: "TLS clients (TCP and HTTPS) must finish their handshake within\n" +
      "this; else they are cut (default 10000)",
    key: "handshakeTimeout",
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
    name: "redis-max-memory-percent",
    kind: "int",
    arg: "N",
    help: "with --redis: past this share of Redis' maxmemory, refuse new\n" +
      "streams and headers with redis_memory (default 90; 0: off)",
    max: 100,
    key: "redisMaxMemoryPercent",
  },
  {
    name: "redis-command-timeout",
    kind: "int",
    arg: "MS",
    help: "with --redis: a command Redis has not answered in MS is\n" +
      "answered engine_unavailable and its silent connection made again\n" +
      "(listeners resync); subscribers PINGed as often (default 10000; 0: for ever)",
    key: "redisCommandTimeout",
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
    name: "redis-classic-pubsub",
    kind: "bool",
    arg: "",
    help: "with --redis-cluster: classic PUBLISH through the cluster bus\n" +
      "instead of sharded pub/sub (Redis 7; see docs/redis.md)",
    env: null,
    key: "redisClassicPubSub",
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
  {
    name: "workers",
    kind: "int",
    arg: "N",
    help: "worker threads sharing the TCP port, streams partitioned\n" +
      "between them (default 1; more needs --unstable-net, no --data/--redis)",
    min: 1,
    max: 64,
    key: "workers",
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

/**
 * The server's `--help` text, made from the option table.
 *
 * @returns The usage, without a trailing newline.
 */
export function usage(): string {
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
export interface Note {
  level: LogLevel;
  message: string;
}

/** What the server's command line asked for. */
export interface ParsedArgs {
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
 * @throws {UsageError} When a flag, variable or config key is unknown or its value is invalid,
 * or a file it names cannot be read.
 */
export function parseServeArgs(argv: string[]): ParsedArgs | "help" | "version" {
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
