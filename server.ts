#!/usr/bin/env -S deno run -N
/**
 * The msgstream TCP server: newline-delimited JSON frames over TCP (or TLS), one hub shared by
 * every connection. Run it with `deno run -N jsr:@x/msgstream/server`, or embed it with
 * {@linkcode serve}.
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

import { concat } from "@std/bytes/concat";
import { parseArgs } from "@std/cli/parse-args";
import type { Codec } from "./codec.ts";
import { MessageStream, type MessageStreamOptions } from "./mod.ts";
import { Session, type Transport, unprompted } from "./protocol.ts";
import { Auth, parseTokenFile, parseTokenSpec, type Token } from "./auth.ts";
import { Metrics } from "./metrics.ts";
import denoJson from "./deno.json" with { type: "json" };
import { RedisEngine } from "./redis.ts";
import { LineError, LineFramer } from "./framer.ts";
import { type MessageHttpServer, serveHttp } from "./http.ts";

export { ProtocolError } from "./protocol.ts";
export type { ErrorCode } from "./protocol.ts";
export { Metrics } from "./metrics.ts";
export type { Permissions, Token } from "./auth.ts";

/** Log levels, from most to least verbose. */
export type LogLevel = "debug" | "info" | "warn" | "error" | "silent";
const LEVELS: LogLevel[] = ["debug", "info", "warn", "error", "silent"];

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

/** The smallest and largest read buffer of one connection (it grows on full reads, shrinks when idle). */
const READ_MIN = 1024;
const READ_MAX = 64 * 1024;
const NEWLINE = 0x0a;

/** Most bytes of an unfinished line a connection may hold before its `hello` succeeds. */
export const UNAUTHENTICATED_LINE_BYTES = 64 * 1024;
/** Queued chunks smaller than this are joined into one write. */
const JOIN_BELOW = 4096;
const encoder = new TextEncoder();
/** The ping sent to a silent connection, live or maybe of the original protocol. */
const PING = encoder.encode(JSON.stringify({ action: "ping" }) + "\n");
const LEGACY_PING = encoder.encode(JSON.stringify(unprompted({ action: "ping" }, false)) + "\n");

class Connection implements Transport {
  readonly conn: Deno.Conn;
  readonly session: Session;
  lastHeard = Date.now();
  /** Queued chunks, ending with the open run [#runStart, #runEnd) of #runBuf, if any. */
  #chunks: Uint8Array[] = [];
  #runBuf: ArrayBufferLike | undefined = undefined;
  #runFrame: Uint8Array | undefined = undefined;
  #runStart = 0;
  #runEnd = 0;
  #queued = 0;
  #writing = false;
  #closing = false;
  #closed = false;
  readonly #server: ServerImpl;
  #flushed: PromiseWithResolvers<void> | undefined = undefined;
  #authTimer: ReturnType<typeof setTimeout> | undefined;

  constructor(conn: Deno.Conn, server: ServerImpl) {
    this.conn = conn;
    this.#server = server;
    this.session = new Session(server.hub, this, { auth: server.auth, metrics: server.metrics });
    if (server.auth) this.#authTimer = setTimeout(this.#authExpired, server.authTimeout);
  }

  /** The authentication deadline passed: a connection without a grant goes. */
  #authExpired = (): void => {
    this.#authTimer = undefined;
    if (this.#closing || this.session.authorized) return;
    this.#server.log("info", `${this.#peer()}: no hello within the auth timeout, closing`);
    this.session.error(
      "unauthorized",
      `No valid "hello" within ${this.#server.authTimeout} ms: closing connection`,
    );
    this.session.close();
  };

  /**
   * Queues one frame. Frames that lie back to back in one buffer (the hub encodes consecutive
   * events into a shared slab) join one run: a connection that gets a burst of events writes
   * one view of the slab, without copying.
   */
  send(frame: Uint8Array): void {
    if (this.#closing) return;
    const len = frame.byteLength;
    this.#queued += len;
    if (this.#queued > this.#server.maxOutbound) return this.#slow();
    if (frame.buffer === this.#runBuf && frame.byteOffset === this.#runEnd) {
      this.#runEnd += len;
    } else {
      if (this.#runFrame) this.#chunks.push(this.#closeRun());
      this.#runBuf = frame.buffer;
      this.#runFrame = frame;
      this.#runStart = frame.byteOffset;
      this.#runEnd = frame.byteOffset + len;
    }
    if (!this.#writing) {
      this.#writing = true;
      queueMicrotask(this.#flush);
    }
  }

  #closeRun(): Uint8Array {
    const frame = this.#runFrame as Uint8Array;
    const len = this.#runEnd - this.#runStart;
    const run = len === frame.byteLength
      ? frame
      : new Uint8Array(this.#runBuf as ArrayBuffer, this.#runStart, len);
    this.#runFrame = undefined;
    this.#runBuf = undefined;
    return run;
  }

  /** Takes everything queued, or undefined when nothing is. */
  #take(): Uint8Array[] | undefined {
    if (this.#runFrame) this.#chunks.push(this.#closeRun());
    if (this.#chunks.length === 0) return undefined;
    const chunks = this.#chunks;
    this.#chunks = [];
    this.#queued = 0;
    return chunks;
  }

  #drop(): void {
    this.#chunks = [];
    this.#runFrame = undefined;
    this.#runBuf = undefined;
    this.#queued = 0;
  }

  /** Flushes what is queued, then closes. */
  close(): void {
    if (this.#closing) return;
    this.#closing = true;
    if (!this.#writing) this.#end();
  }

  /** Closes now, dropping what is queued. */
  abort(): void {
    this.#closing = true;
    this.#drop();
    this.#end();
  }

  get flushed(): Promise<void> {
    this.#flushed ??= Promise.withResolvers();
    if (this.#closed) this.#flushed.resolve();
    return this.#flushed.promise;
  }

  #slow(): void {
    this.#server.metrics.slowConsumer();
    this.#server.log("info", `${this.#peer()}: slow consumer, closing`);
    this.session.drop();
    this.#drop();
    this.#closing = true;
    if (this.#writing) {
      // The socket does not take what we have: no frame can get through. Cut it.
      this.#end();
    } else {
      const frame = encoder.encode(
        JSON.stringify(unprompted({
          action: "error",
          code: "slow_consumer",
          message: `More than ${this.#server.maxOutbound} bytes waiting: closing connection`,
        }, this.session.live)) + "\n",
      );
      this.#chunks.push(frame);
      this.#writing = true;
      queueMicrotask(this.#flush);
    }
  }

  #flush = async (): Promise<void> => {
    try {
      let chunks: Uint8Array[] | undefined;
      while (!this.#closed && (chunks = this.#take()) !== undefined) {
        // Small chunks are joined into one write; large ones (slab runs) are written as they
        // are: copying them would cost more than the extra write.
        for (let i = 0; i < chunks.length && !this.#closed;) {
          let j = i + 1;
          let size = (chunks[i] as Uint8Array).byteLength;
          if (size < JOIN_BELOW) {
            while (j < chunks.length && (chunks[j] as Uint8Array).byteLength < JOIN_BELOW) {
              size += (chunks[j++] as Uint8Array).byteLength;
            }
          }
          const buf = j === i + 1 ? chunks[i] as Uint8Array : concat(chunks.slice(i, j));
          i = j;
          let off = 0;
          while (off < buf.byteLength) off += await this.conn.write(buf.subarray(off));
          this.#server.metrics.bytesOut += buf.byteLength;
        }
      }
    } catch {
      // The peer is gone: stop listening; the reader sees the end too.
      this.session.drop();
      this.#closing = true;
    }
    this.#writing = false;
    if (this.#closing) this.#end();
  };

  #end(): void {
    if (this.#closed) return;
    this.#closed = true;
    clearTimeout(this.#authTimer);
    this.session.drop();
    try {
      this.conn.close();
    } catch {
      // already closed
    }
    this.#flushed?.resolve();
  }

  #peer(): string {
    const a = this.conn.remoteAddr as Deno.NetAddr;
    return `${a.hostname}:${a.port}`;
  }

  /** Completes the TLS handshake within the server's handshake timeout; false when cut. */
  async #handshake(): Promise<boolean> {
    const timer = setTimeout(() => this.abort(), this.#server.handshakeTimeout);
    try {
      await (this.conn as Deno.TlsConn).handshake();
      return true;
    } catch {
      this.session.drop();
      this.abort();
      return false;
    } finally {
      clearTimeout(timer);
    }
  }

  /**
   * Reads request lines and hands each to the session. A plain read loop over a small buffer
   * that grows with the traffic: each chunk goes through the connection's {@linkcode LineFramer}
   * (limit-checked as bytes, complete lines decoded with one call), and its lines are handled
   * synchronously, so replies and deliveries caused by one chunk go out in one write per
   * connection (see BENCHMARKS.md for the profiles behind it).
   */
  async serve(): Promise<void> {
    if (this.#server.tls && !(await this.#handshake())) return;
    const server = this.#server;
    const metrics = server.metrics;
    const framer = new LineFramer({ maxLineBytes: server.maxLineBytes });
    const session = this.session;
    let buf = new Uint8Array(READ_MIN);
    let quiet = 0; // consecutive small reads
    let unauthenticated = 0; // bytes of the unfinished line while no hello has succeeded
    try {
      while (!session.closed) {
        const n = await this.conn.read(buf);
        if (n === null) break;
        if (n === 0) continue;
        metrics.bytesIn += n;
        if (!session.authorized) {
          const last = buf.subarray(0, n).lastIndexOf(NEWLINE);
          unauthenticated = last === -1 ? unauthenticated + n : n - last - 1;
          if (unauthenticated > UNAUTHENTICATED_LINE_BYTES) {
            throw new LineError(
              "line_too_long",
              `More than ${UNAUTHENTICATED_LINE_BYTES} bytes of a line before "hello"`,
            );
          }
        }
        const lines = framer.push(buf.subarray(0, n));
        if (lines.length > 0 || framer.error) this.lastHeard = Date.now();
        for (let i = 0; i < lines.length && !session.closed; i++) session.handle(lines[i]!);
        // A bad line: the good lines before it were served; now refuse.
        if (framer.error) throw framer.error;
        if (n === buf.byteLength && n < READ_MAX) {
          buf = new Uint8Array(n * 2);
          quiet = 0;
        } else if (buf.byteLength > READ_MIN && n * 8 < buf.byteLength && ++quiet >= 16) {
          buf = new Uint8Array(buf.byteLength / 2);
          quiet = 0;
        }
      }
      if (!session.closed) {
        // The peer finished with an unterminated line: it counts, as a TextLineStream has it.
        for (const line of framer.end()) {
          this.lastHeard = Date.now();
          session.handle(line);
        }
        if (framer.error) throw framer.error;
      }
    } catch (e) {
      if (e instanceof LineError && !this.#closed) {
        // With an engine, the good lines before the bad one may still be in flight: answer
        // them first.
        const settling = session.settled();
        if (settling) await settling;
        session.error(e.code, `${e.message}: closing connection`);
        session.close();
      }
      // Otherwise the connection failed or was closed: nothing to tell.
    }
    // The peer finished sending: flush what is owed (with an engine, answers still to come
    // too), then close.
    const settling = session.closed ? undefined : session.settled();
    if (settling) await settling;
    session.drop();
    this.close();
    await this.flushed;
  }
}

class ServerImpl implements MessageServer {
  readonly addr: Deno.NetAddr;
  readonly hub: MessageStream;
  readonly metrics: Metrics = new Metrics();
  readonly finished: Promise<void>;
  readonly http: MessageHttpServer | undefined;
  readonly auth: Auth | undefined;
  readonly maxLineBytes: number;
  readonly maxOutbound: number;
  readonly #listener: Deno.Listener;
  readonly tls: boolean;
  readonly handshakeTimeout: number;
  readonly authTimeout: number;
  readonly maxConnections: number;
  readonly #connections = new Set<Connection>();
  readonly #logLevel: number;
  readonly #pingInterval: number;
  readonly #idleTimeout: number;
  readonly #shutdownTimeout: number;
  #sweeper: ReturnType<typeof setInterval> | undefined;
  #shutdown: Promise<void> | undefined;
  #accepting: Promise<void>;
  #ownsEngine = false;

  constructor(options: ServeOptions) {
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
    } else this.hub = new MessageStream(options);
    this.maxLineBytes = checkInt("maxLineBytes", options.maxLineBytes, 1 << 20, 1);
    this.maxOutbound = checkInt("maxOutboundBytes", options.maxOutboundBytes, 8 << 20, 1);
    this.#pingInterval = checkInt("pingInterval", options.pingInterval, 30_000, 0);
    this.#idleTimeout = checkInt("idleTimeout", options.idleTimeout, 90_000, 0);
    this.#shutdownTimeout = checkInt("shutdownTimeout", options.shutdownTimeout, 5_000, 0);
    this.#logLevel = LEVELS.indexOf(options.logLevel ?? "warn");
    if (this.#logLevel === -1) throw new RangeError(`Unknown log level "${options.logLevel}"`);
    this.auth = Auth.from(options.tokens);
    const hostname = options.hostname ?? "127.0.0.1";
    const port = options.port ?? 51932;
    if ((options.cert === undefined) !== (options.key === undefined)) {
      throw new TypeError("Cannot serve TLS: give both cert and key");
    }
    this.#listener = options.cert !== undefined && options.key !== undefined
      ? Deno.listenTls({ hostname, port, cert: options.cert, key: options.key })
      : Deno.listen({ hostname, port });
    this.tls = options.cert !== undefined;
    this.handshakeTimeout = checkInt("handshakeTimeout", options.handshakeTimeout, 10_000, 1);
    this.authTimeout = checkInt("authTimeout", options.authTimeout, 10_000, 1);
    this.maxConnections = checkInt(
      "maxConnections",
      options.maxConnections,
      defaultMaxConnections(),
      1,
    );
    this.addr = this.#listener.addr as Deno.NetAddr;
    try {
      this.http = options.http && serveHttp(this.hub, {
        hostname: options.http.hostname ?? hostname,
        port: options.http.port,
        metrics: this.metrics,
        tokens: options.tokens,
        maxBodyBytes: this.maxLineBytes,
        maxOutboundBytes: this.maxOutbound,
        shutdownTimeout: this.#shutdownTimeout,
        maxConnections: this.maxConnections,
      });
    } catch (e) {
      this.#listener.close();
      throw e;
    }
    this.#accepting = this.#acceptLoop();
    if (this.#pingInterval > 0) {
      this.#sweeper = setInterval(() => this.#sweep(), Math.max(10, this.#pingInterval / 2));
      Deno.unrefTimer(this.#sweeper);
    }
    this.finished = this.#accepting.then(() => this.#shutdown);
    options.signal?.addEventListener("abort", () => this.shutdown(), { once: true });
  }

  log(level: LogLevel, message: string): void {
    if (LEVELS.indexOf(level) >= this.#logLevel) {
      // deno-lint-ignore no-console
      console.error(`${new Date().toISOString()} ${level} ${message}`);
    }
  }

  async #acceptLoop(): Promise<void> {
    let pause = 0; // the back-off while descriptors are exhausted; 0 when accepting normally
    let failures = 0;
    while (!this.#shutdown) {
      let conn: Deno.Conn;
      try {
        conn = await this.#listener.accept();
      } catch (e) {
        if (this.#shutdown || e instanceof Deno.errors.BadResource) break;
        // One client's failure (reset before accept, handshake error) must not stop the server;
        // running out of descriptors must not spin: back off, 100 ms doubling to 1 s.
        const message = (e as Error).message;
        if (!EXHAUSTED.test(message) && ++failures < 3) {
          this.log("debug", `accept failed: ${message}`);
          continue;
        }
        if (pause === 0) {
          this.metrics.error("descriptors_exhausted");
          this.log("warn", `accept failed: ${message}; pausing accepts until it clears`);
        }
        pause = pause === 0 ? 100 : Math.min(1000, pause * 2);
        await new Promise((resolve) => setTimeout(resolve, pause));
        continue;
      }
      if (pause > 0) this.log("warn", "accepting connections again");
      pause = 0;
      failures = 0;
      if (this.#shutdown) {
        conn.close();
        break;
      }
      if (this.#connections.size >= this.maxConnections) {
        this.#refuse(conn);
        continue;
      }
      const c = new Connection(conn, this);
      this.#connections.add(c);
      this.metrics.opened("tcp");
      if ("setNoDelay" in conn) (conn as Deno.TcpConn).setNoDelay(true);
      c.serve().finally(() => {
        this.#connections.delete(c);
        this.metrics.closed("tcp");
      });
    }
  }

  /** Tells a connection over `maxConnections` why, then closes it; never waits for it. */
  #refuse(conn: Deno.Conn): void {
    this.metrics.error("limit_exceeded");
    this.log("info", `more than ${this.maxConnections} connections: refusing one`);
    const frame = JSON.stringify({
      action: "error",
      code: "limit_exceeded",
      limit: "max_connections",
      message: `More than ${this.maxConnections} connections: closing connection`,
      stream: null,
    });
    conn.write(new TextEncoder().encode(frame + "\n")).catch(() => {}).finally(() => {
      try {
        conn.close();
      } catch {
        // already closed
      }
    });
  }

  #sweep(): void {
    const now = Date.now();
    for (const c of this.#connections) {
      const silent = now - c.lastHeard;
      if (c.session.live && this.#idleTimeout > 0 && silent > this.#idleTimeout) {
        this.log("info", "closing idle connection");
        c.session.error("idle_timeout", "No frame received within the idle timeout: closing");
        c.session.close();
      } else if (silent >= this.#pingInterval) {
        c.send(c.session.live ? PING : LEGACY_PING);
      }
    }
  }

  shutdown(): Promise<void> {
    this.#shutdown ??= this.#doShutdown();
    return this.#shutdown;
  }

  async #doShutdown(): Promise<void> {
    const http = this.http?.shutdown();
    if (this.#sweeper !== undefined) clearInterval(this.#sweeper);
    try {
      this.#listener.close();
    } catch {
      // already closed
    }
    await this.#accepting;
    const connections = [...this.#connections];
    for (const c of connections) c.session.close();
    let timer: ReturnType<typeof setTimeout> | undefined;
    const timeout = new Promise<void>((resolve) => {
      timer = setTimeout(resolve, this.#shutdownTimeout);
    });
    await Promise.race([Promise.all(connections.map((c) => c.flushed)), timeout]);
    clearTimeout(timer);
    for (const c of connections) c.abort();
    // Let each connection's reader see its end.
    await Promise.allSettled(connections.map((c) => c.flushed));
    await http;
    if (this.#ownsEngine) await this.hub.close();
  }

  [Symbol.asyncDispose](): Promise<void> {
    return this.shutdown();
  }
}

/** Accept errors that mean the process is out of descriptors (or buffers): back off. */
const EXHAUSTED = /os error (23|24|105|12)\b|too many open files/i;

/**
 * The default `maxConnections`: 15,000, or the descriptor limit minus a tenth (at least 64 kept
 * free) when that is lower and `/proc/self/limits` may be read.
 */
function defaultMaxConnections(): number {
  const fallback = 15_000;
  try {
    const path = "/proc/self/limits";
    if (Deno.permissions.querySync({ name: "read", path }).state !== "granted") return fallback;
    const m = /Max open files\s+(\d+)/.exec(Deno.readTextFileSync(path));
    if (!m) return fallback;
    const soft = Number(m[1]);
    return Math.max(1, Math.min(fallback, soft - Math.max(64, Math.ceil(soft / 10))));
  } catch {
    return fallback;
  }
}

function checkInt(name: string, value: number | undefined, fallback: number, min: number): number {
  const v = value ?? fallback;
  if (!Number.isSafeInteger(v) || v < min) {
    throw new RangeError(`Option "${name}" must be an integer of at least ${min}, got ${v}`);
  }
  return v;
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
export function serve(options: ServeOptions = {}): MessageServer {
  return new ServerImpl(options);
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
  -h, --help                show this help
  -V, --version             show the version

Environment (read only when permitted, e.g. --allow-env):
  MSGSTREAM_PORT, MSGSTREAM_HOSTNAME, MSGSTREAM_TOKEN (NAME:SECRET), MSGSTREAM_REDIS_URL`;

/** Reads an environment variable only where permission was granted (the server runs under -N alone). */
function env(name: string): string | undefined {
  try {
    if (Deno.permissions.querySync({ name: "env", variable: name }).state !== "granted") {
      return undefined;
    }
    return Deno.env.get(name);
  } catch {
    return undefined;
  }
}

/** Parses a non-negative integer flag or fails with a usage error. */
function intFlag(args: Record<string, unknown>, name: string): number | undefined {
  const v = args[name];
  if (v === undefined) return undefined;
  const n = Number(v);
  if (typeof v !== "string" || v === "" || !Number.isSafeInteger(n) || n < 0) {
    throw new UsageError(`--${name} must be a non-negative integer, got "${v}"`);
  }
  return n;
}

class UsageError extends Error {}

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
  if (!LEVELS.includes(logLevel)) throw new UsageError(`Unknown --log-level "${logLevel}"`);
  const options: ServeOptions = { logLevel };
  options.hostname = args.hostname ?? env("MSGSTREAM_HOSTNAME") ?? "127.0.0.1";
  const envPort = env("MSGSTREAM_PORT");
  const port = intFlag({ ...args, port: args.port ?? envPort }, "port");
  if (port !== undefined) {
    if (port > 65535) throw new UsageError(`--port must be at most 65535, got ${port}`);
    options.port = port;
  }
  const set = (flag: string, key: keyof ServeOptions) => {
    const v = intFlag(args, flag);
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
  const httpPort = intFlag(args, "http-port");
  if (httpPort !== undefined) {
    if (httpPort > 65535) {
      throw new UsageError(`--http-port must be at most 65535, got ${httpPort}`);
    }
    options.http = { port: httpPort };
  }
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
export async function main(argv: string[] = Deno.args): Promise<number> {
  let options: ServeOptions | "help" | "version";
  try {
    options = parseServeArgs(argv);
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
