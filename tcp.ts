/**
 * The TCP (and TLS) door: newline-delimited JSON frames, one {@linkcode Session} per
 * connection. It accepts (one client's failure never stops it), reads each connection with a
 * plain read loop through the {@linkcode LineFramer}, writes each connection's frames through a
 * byte-bounded outbound queue (a connection over it is cut with `slow_consumer`), pings silent
 * connections and closes dead ones. `server.ts` composes it with the hub, the HTTP door and the
 * engine; it is not an entry of its own.
 *
 * @example Serve a hub over TCP
 * ```ts
 * import { TcpDoor } from "./tcp.ts";
 * import { Metrics } from "./metrics.ts";
 * import { MessageStream } from "./mod.ts";
 * import { assertEquals } from "@std/assert";
 *
 * const door = new TcpDoor(new MessageStream(), { hostname: "127.0.0.1", port: 0, metrics: new Metrics() });
 * assertEquals(door.addr.hostname, "127.0.0.1");
 * await door.shutdown();
 * ```
 *
 * @module
 */

/// <reference types="./std_types.d.ts" />
import { concat } from "@std/bytes/concat";
import { setImmediate } from "node:timers";
import type { Auth } from "./auth.ts";
import { CONNECTION_SHARE, type MemoryBudget } from "./budget.ts";
import { LineError, LineFramer } from "./framer.ts";
import type { Metrics } from "./metrics.ts";
import type { MessageStream } from "./mod.ts";
import { defaultMaxConnections, intOption, type LogLevel, waitAtMost } from "./options.ts";
import { Session, type Transport, unprompted } from "./protocol.ts";
import { secureContext, TlsOverTcp } from "./tls_conn.ts";

/** Writes one log line; the server decides what is shown. */
export type Log = (level: LogLevel, message: string) => void;

/** Options of a {@linkcode TcpDoor}. */
export interface TcpOptions {
  /** The address to listen on. */
  hostname: string;
  /** The port to listen on; 0 picks a free one (read it from `door.addr.port`). */
  port: number;
  /** Share the port with other listeners (`reusePort`; Linux; needs `--unstable-net`). */
  reusePort?: boolean | undefined;
  /** The counters of every door. */
  metrics: Metrics;
  /** Required tokens; without, every client may do everything. */
  auth?: Auth | undefined;
  /** TLS certificate chain (PEM); with `key`, the door speaks TLS. */
  cert?: string | undefined;
  /** TLS private key (PEM). */
  key?: string | undefined;
  /**
   * Longest request line in bytes, newline excluded.
   *
   * @default {1048576}
   */
  maxLineBytes?: number | undefined;
  /**
   * Most bytes waiting to be sent to one connection.
   *
   * @default {8388608}
   */
  maxOutboundBytes?: number | undefined;
  /**
   * How often, in milliseconds, a silent connection is sent a `ping` (0: never).
   *
   * @default {30000}
   */
  pingInterval?: number | undefined;
  /**
   * Milliseconds after which a connection that said `hello` or `ping` and then nothing is
   * closed (0: never).
   *
   * @default {90000}
   */
  idleTimeout?: number | undefined;
  /**
   * Milliseconds a TLS client has to complete its handshake.
   *
   * @default {10000}
   */
  handshakeTimeout?: number | undefined;
  /**
   * With `auth`, milliseconds a connection has to complete `hello` before it is closed with
   * `unauthorized`. Until then it may hold at most {@linkcode UNAUTHENTICATED_LINE_BYTES} of an
   * unfinished line.
   *
   * @default {10000}
   */
  authTimeout?: number | undefined;
  /**
   * Most connections open at once; beyond it a new connection gets an `error` frame with code
   * `limit_exceeded` and is closed.
   *
   * @default {defaultMaxConnections()}
   */
  maxConnections?: number | undefined;
  /**
   * Milliseconds `shutdown()` waits for connections to flush before cutting them.
   *
   * @default {5000}
   */
  shutdownTimeout?: number | undefined;
  /**
   * Where log lines go.
   *
   * @default {nothing is logged}
   */
  log?: Log | undefined;
}

/**
 * A connection's first read buffer (small: most connections only listen), the smallest it
 * shrinks back to once it has grown, and the largest (it grows on full reads, shrinks when its
 * reads stay small). A floor below 1 KiB cost a publisher of small bursts reads of a line or two.
 */
const READ_FIRST = 256;
const READ_MIN = 1024;
const READ_MAX = 64 * 1024;
/**
 * Resolves in the event loop's next check phase: what a read loop awaits after a full read. A
 * read of a socket with bytes waiting completes at once, so a peer that pipelines without pause
 * kept its read loop running from microtask to microtask, and the event loop did not turn: the
 * other connections' requests waited in their sockets until the flood paused (seconds; issue 11).
 * A check-phase turn lets timers and resolved operations run, but while the loop always has work
 * the runtime polls the other sockets for readiness seldom (their bytes still waited ~200 ms):
 * at most every {@linkcode POLL_EVERY} ms one read loop waits for a timer instead (~2 ms, which
 * lets the runtime wait on I/O). `setTimeout(0)` after every full read halved a flood's rate.
 */
const nextTurn = (): Promise<void> => {
  const now = performance.now();
  if (now - polledAt < POLL_EVERY) return new Promise<void>((resolve) => setImmediate(resolve));
  polledAt = now;
  return new Promise<void>((resolve) => setTimeout(resolve, 0));
};
/** Milliseconds of back-to-back full reads after which a read loop waits for a timer. */
const POLL_EVERY = 20;
/** When a read loop last waited for a timer (process-wide). */
let polledAt = 0;
/** Queued chunks smaller than this are joined into one write. */
const JOIN_BELOW = 4096;

/** Most bytes of an unfinished line a connection may hold before its `hello` succeeds. */
export const UNAUTHENTICATED_LINE_BYTES = 64 * 1024;

/** Accept errors that mean the process is out of descriptors (or buffers): back off. */
const EXHAUSTED = /os error (23|24|105|12)\b|too many open files/i;
const encoder = new TextEncoder();
/** Milliseconds between two log lines about connections refused for `maxConnections`. */
const REFUSAL_LOG_INTERVAL = 10_000;
/** Connections with frames queued and no flush running yet: flushed by one microtask. */
const dirty: Connection[] = [];
let flushQueued = false;
/** The one microtask that starts every dirty connection's flush. */
const flushDirty = (): void => Connection.flushAll();
/** The ping sent to a silent connection, live or maybe of the original protocol. */
const PING = encoder.encode(JSON.stringify({ action: "ping" }) + "\n");
const LEGACY_PING = encoder.encode(JSON.stringify(unprompted({ action: "ping" }, false)) + "\n");

/** The TCP (or TLS) door of one hub: its listener, its connections, their liveness. */
export class TcpDoor {
  /** The bound address. */
  readonly addr: Deno.NetAddr;
  /** The hub every connection uses. */
  readonly hub: MessageStream;
  /** The counters of every door. */
  readonly metrics: Metrics;
  /** Required tokens, if any. */
  readonly auth: Auth | undefined;
  /** Whether the door speaks TLS. */
  readonly tls: boolean;
  /** Longest request line in bytes. */
  readonly maxLineBytes: number;
  /** Most bytes waiting to be sent to one connection. */
  readonly maxOutbound: number;
  /** Milliseconds a TLS client has to complete its handshake. */
  readonly handshakeTimeout: number;
  /** With auth, milliseconds a connection has to complete `hello`. */
  readonly authTimeout: number;
  /** Most connections open at once. */
  readonly maxConnections: number;
  /** Writes a log line. */
  readonly log: Log;
  /** Resolves when the door has stopped accepting (its listener closed). */
  readonly accepting: Promise<void>;
  readonly #listener: Deno.Listener;
  /** With TLS: the context each accepted TCP connection is served with (tls_conn.ts). */
  readonly #tlsContext: ReturnType<typeof secureContext> | undefined;
  readonly #connections = new Set<Connection>();
  /**
   * How many connection queues hold each shared buffer (a slab, or a large frame's own
   * buffer): its bytes count once in the hub's memory budget, however many connections hold it.
   */
  readonly #pinned = new Map<ArrayBufferLike, number>();
  readonly #pingInterval: number;
  readonly #idleTimeout: number;
  readonly #shutdownTimeout: number;
  #sweeper: ReturnType<typeof setInterval> | undefined;
  #shutdown: Promise<void> | undefined;
  /** Connections refused for `maxConnections` since the last log line about it, and when. */
  #refusals = 0;
  #refusalLoggedAt = -Infinity;
  /** What a connection calls when it has ended: one function for every connection. */
  readonly #ended = (c: Connection): void => {
    this.#connections.delete(c);
    this.metrics.closed("tcp");
  };

  /**
   * Listens and starts accepting.
   *
   * @param hub The hub.
   * @param options Address, TLS, limits, timers, auth, counters and log.
   * @throws {RangeError} When an option is out of range.
   * @throws {TypeError} When only one of `cert` and `key` is given.
   * @throws {Deno.errors.AddrInUse} When the port is taken.
   */
  constructor(hub: MessageStream, options: TcpOptions) {
    this.hub = hub;
    this.metrics = options.metrics;
    this.auth = options.auth;
    this.log = options.log ?? (() => {});
    this.maxLineBytes = intOption("maxLineBytes", options.maxLineBytes, 1 << 20, 1);
    this.maxOutbound = intOption("maxOutboundBytes", options.maxOutboundBytes, 8 << 20, 1);
    this.#pingInterval = intOption("pingInterval", options.pingInterval, 30_000, 0);
    this.#idleTimeout = intOption("idleTimeout", options.idleTimeout, 90_000, 0);
    this.#shutdownTimeout = intOption("shutdownTimeout", options.shutdownTimeout, 5_000, 0);
    this.handshakeTimeout = intOption("handshakeTimeout", options.handshakeTimeout, 10_000, 1);
    this.authTimeout = intOption("authTimeout", options.authTimeout, 10_000, 1);
    this.maxConnections = intOption(
      "maxConnections",
      options.maxConnections,
      defaultMaxConnections(),
      1,
    );
    const { hostname, port, cert, key } = options;
    if ((cert === undefined) !== (key === undefined)) {
      throw new TypeError("Cannot serve TLS: give both cert and key");
    }
    this.tls = cert !== undefined;
    // TLS runs over TCP connections the door accepts itself (tls_conn.ts): closing one whose
    // handshake never ends releases its descriptor at once (a Deno.TlsConn keeps it).
    this.#tlsContext = cert !== undefined && key !== undefined
      ? secureContext(cert, key)
      : undefined;
    this.#listener = Deno.listen({
      hostname,
      port,
      ...(options.reusePort ? { reusePort: true } : {}),
    });
    this.addr = this.#listener.addr as Deno.NetAddr;
    this.accepting = this.#acceptLoop();
    if (this.#pingInterval > 0) {
      this.#sweeper = setInterval(() => this.#sweep(), Math.max(10, this.#pingInterval / 2));
      Deno.unrefTimer(this.#sweeper);
    }
  }

  async #acceptLoop(): Promise<void> {
    let pause = 0; // the back-off while descriptors are exhausted; 0 when accepting normally
    let failures = 0;
    while (!this.#shutdown) {
      let conn: Deno.Conn;
      try {
        conn = await this.#listener.accept();
        if (this.#tlsContext) {
          conn = new TlsOverTcp(conn as Deno.TcpConn, this.#tlsContext) as unknown as Deno.Conn;
        }
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
      const c = new Connection(conn, this, this.#ended);
      this.#connections.add(c);
      this.metrics.opened("tcp");
      if ("setNoDelay" in conn) (conn as Deno.TcpConn).setNoDelay(true);
      // Ends by calling #ended itself: no promise, reactions and closures per connection.
      c.serve();
    }
  }

  /**
   * Notes that one more connection queue holds `buffer`; the first puts its bytes in the
   * memory budget.
   *
   * @param buffer A shared buffer a queued frame lies in.
   */
  pin(buffer: ArrayBufferLike): void {
    const n = this.#pinned.get(buffer) ?? 0;
    if (n === 0) this.hub.memory.outbound += buffer.byteLength;
    this.#pinned.set(buffer, n + 1);
  }

  /**
   * Notes that a connection queue no longer holds `buffer`; the last takes its bytes out of the
   * memory budget.
   *
   * @param buffer A buffer given to {@linkcode TcpDoor.pin}.
   */
  unpin(buffer: ArrayBufferLike): void {
    const n = this.#pinned.get(buffer) ?? 0;
    if (n > 1) this.#pinned.set(buffer, n - 1);
    else if (n === 1) {
      this.#pinned.delete(buffer);
      this.hub.memory.outbound -= buffer.byteLength;
    }
  }

  /** Tells a connection over `maxConnections` why, then closes it; never waits for it. */
  #refuse(conn: Deno.Conn): void {
    this.metrics.error("limit_exceeded");
    this.metrics.limitExceeded("max_connections");
    // One line per episode, then a count at most every 10 s: refusals come at the rate a
    // client connects, and a line each would let it fill the log (the metric counts each).
    this.#refusals++;
    const now = Date.now();
    if (now - this.#refusalLoggedAt >= REFUSAL_LOG_INTERVAL) {
      this.log(
        "info",
        this.#refusals === 1
          ? `more than ${this.maxConnections} connections: refusing one (further refusals are ` +
            `logged at most every ${REFUSAL_LOG_INTERVAL / 1000} s)`
          : `more than ${this.maxConnections} connections: refused ${this.#refusals} since ` +
            "the last report",
      );
      this.#refusalLoggedAt = now;
      this.#refusals = 0;
    }
    const frame = JSON.stringify(unprompted({
      action: "error",
      code: "limit_exceeded",
      limit: "max_connections",
      message: `More than ${this.maxConnections} connections: closing connection`,
    }, false));
    conn.write(encoder.encode(frame + "\n")).catch(() => {}).finally(() => {
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
      } else if (
        silent >= this.#pingInterval &&
        // One ping per interval, not one per sweep (sweeps come twice an interval); a little
        // slack so that timer drift does not push a ping to the sweep after.
        now - c.lastPinged >= this.#pingInterval - this.#pingInterval / 8
      ) {
        c.lastPinged = now;
        c.send(c.session.live ? PING : LEGACY_PING);
      }
    }
  }

  /**
   * Stops accepting, tells every session `close`, waits up to `shutdownTimeout` for the
   * connections to flush, then cuts what is left. Safe to call more than once.
   *
   * @returns When every connection has ended.
   */
  shutdown(): Promise<void> {
    this.#shutdown ??= this.#doShutdown();
    return this.#shutdown;
  }

  async #doShutdown(): Promise<void> {
    if (this.#sweeper !== undefined) clearInterval(this.#sweeper);
    try {
      this.#listener.close();
    } catch {
      // already closed
    }
    await this.accepting;
    const connections = [...this.#connections];
    for (const c of connections) c.session.close();
    await waitAtMost(Promise.all(connections.map((c) => c.flushed)), this.#shutdownTimeout);
    for (const c of connections) c.abort();
    // Let each connection's reader see its end.
    await Promise.allSettled(connections.map((c) => c.flushed));
  }
}

/** One TCP (or TLS) connection: its read loop, its Session, and its byte-bounded outbound queue. */
class Connection implements Transport {
  readonly conn: Deno.Conn;
  readonly session: Session;
  lastHeard = Date.now();
  /** When the last ping went to it (0: never). */
  lastPinged = 0;
  /** Queued chunks, ending with the open run [#runStart, #runEnd) of #runBuf, if any. */
  #chunks: Uint8Array[] = [];
  /** The chunk list the flush took last, emptied: the next #take swaps it in (no new array). */
  #spareChunks: Uint8Array[] = [];
  #runBuf: ArrayBufferLike | undefined = undefined;
  #runFrame: Uint8Array | undefined = undefined;
  #runStart = 0;
  #runEnd = 0;
  #queued = 0;
  #writing = false;
  /** The flush's place: the list it took, the next chunk in it, the buffer being written. */
  #wChunks: Uint8Array[] | undefined = undefined;
  /** Whether the flush holds a take whose pins #written must release once written. */
  #wTaken = false;
  #wIndex = 0;
  #wBuf: Uint8Array | undefined = undefined;
  #wOff = 0;
  /** The flush's write callbacks, made on the first write. */
  #onWrote: ((n: number) => void) | undefined = undefined;
  #onWriteFailed: (() => void) | undefined = undefined;
  #closing = false;
  #closed = false;
  readonly #door: TcpDoor;
  /** Told once when {@linkcode Connection.serve} has ended (the door forgets the connection). */
  readonly #onEnded: (c: Connection) => void;
  #flushed: PromiseWithResolvers<void> | undefined = undefined;
  #authTimer: ReturnType<typeof setTimeout> | undefined;
  /**
   * The hub's memory budget. This connection reports into it: the buffers its queue holds go
   * into `outbound` (a shared one once for every connection, through the door's pin/unpin; a
   * small one of its own, a reply, directly: #direct), added when queued and taken off when
   * written or dropped; its unfinished line goes into `lines` (#lineBytes, after each read).
   */
  readonly #memory: MemoryBudget;
  /** Shared buffers pinned for what is queued and not yet taken by the flush: the first, the rest. */
  #pin0: ArrayBufferLike | undefined = undefined;
  #pins: ArrayBufferLike[] = [];
  /** The buffer pinned last: a run of frames in it pins it once. */
  #lastPin: ArrayBufferLike | undefined = undefined;
  /** Bytes of small buffers of its own queued and not yet taken by the flush. */
  #direct = 0;
  /** What the flush is writing: its pins and direct bytes, released once written. */
  #writingPin0: ArrayBufferLike | undefined = undefined;
  #writingPins: ArrayBufferLike[] = [];
  #writingDirect = 0;
  #lineBytes = 0;
  /** The part of #lineBytes that is the session's backlog (requests waiting). */
  #backlogBytes = 0;

  constructor(conn: Deno.Conn, door: TcpDoor, onEnded: (c: Connection) => void) {
    this.conn = conn;
    this.#door = door;
    this.#onEnded = onEnded;
    this.#memory = door.hub.memory;
    this.session = new Session(door.hub, this, { auth: door.auth, metrics: door.metrics });
    if (door.auth) this.#authTimer = setTimeout(() => this.#authExpired(), door.authTimeout);
  }

  /** The authentication deadline passed: a connection without a grant goes. */
  #authExpired(): void {
    this.#authTimer = undefined;
    if (this.#closing || this.session.authorized) return;
    this.#door.log("info", `${this.#peer()}: no hello within the auth timeout, closing`);
    this.session.error(
      "unauthorized",
      `No valid "hello" within ${this.#door.authTimeout} ms: closing connection`,
    );
    this.session.close();
  }

  /**
   * Queues one frame. Frames that lie back to back in one buffer (the hub encodes consecutive
   * events into a shared slab) join one run: a connection that gets a burst of events writes
   * one view of the slab, without copying.
   */
  send(frame: Uint8Array): void {
    if (this.#closing) return;
    const len = frame.byteLength;
    this.#queued += len;
    if (
      this.#queued > this.#door.maxOutbound ||
      // While the memory budget is spent, a connection may hold only its share.
      (this.#queued > CONNECTION_SHARE && this.#memory.spent)
    ) return this.#slow();
    const buffer = frame.buffer;
    if (buffer !== this.#lastPin) {
      if (buffer.byteLength <= JOIN_BELOW) {
        // A small buffer of its own (a reply): nobody else holds it.
        this.#direct += buffer.byteLength;
        this.#memory.outbound += buffer.byteLength;
      } else {
        this.#door.pin(buffer);
        if (this.#pin0 === undefined) this.#pin0 = buffer;
        else this.#pins.push(buffer);
        this.#lastPin = buffer;
      }
    }
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
      dirty.push(this);
      if (!flushQueued) {
        flushQueued = true;
        queueMicrotask(flushDirty);
      }
    }
  }

  /** Starts the flush of every connection that got frames since the last one: one microtask. */
  static flushAll(): void {
    flushQueued = false;
    // A flush writes at once (no await before its first write), so none joins the list here.
    for (let i = 0; i < dirty.length; i++) (dirty[i] as Connection).#flush();
    dirty.length = 0;
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
  #take(): Uint8Array | Uint8Array[] | undefined {
    let taken: Uint8Array | Uint8Array[];
    if (this.#chunks.length === 0) {
      // One run (a connection that gets one frame, or one burst, per flush): no list at all.
      if (this.#runFrame === undefined) return undefined;
      taken = this.#closeRun();
    } else {
      if (this.#runFrame) this.#chunks.push(this.#closeRun());
      taken = this.#chunks;
      const next = this.#spareChunks;
      next.length = 0; // emptied by the flush already, unless a failed write cut it short
      this.#chunks = next;
      this.#spareChunks = taken;
    }
    this.#queued = 0;
    // What the flush writes now pins what was queued; what is queued next pins anew.
    // #writingPins is empty here (#written ran): the two lists swap, no new array.
    const spare = this.#writingPins;
    this.#writingPins = this.#pins;
    this.#writingPin0 = this.#pin0;
    this.#writingDirect = this.#direct;
    this.#pins = spare;
    this.#pin0 = undefined;
    this.#lastPin = undefined;
    this.#direct = 0;
    return taken;
  }

  /** Takes what the flush has written (or dropped) out of the memory budget. */
  #written(): void {
    if (this.#writingPin0 !== undefined) this.#door.unpin(this.#writingPin0);
    this.#writingPin0 = undefined;
    const pins = this.#writingPins;
    for (let i = 0; i < pins.length; i++) this.#door.unpin(pins[i] as ArrayBufferLike);
    this.#memory.outbound -= this.#writingDirect;
    pins.length = 0;
    this.#writingDirect = 0;
  }

  #drop(): void {
    this.#chunks.length = 0;
    this.#runFrame = undefined;
    this.#runBuf = undefined;
    this.#queued = 0;
    if (this.#pin0 !== undefined) this.#door.unpin(this.#pin0);
    this.#pin0 = undefined;
    const pins = this.#pins;
    for (let i = 0; i < pins.length; i++) this.#door.unpin(pins[i] as ArrayBufferLike);
    this.#memory.outbound -= this.#direct;
    pins.length = 0;
    this.#lastPin = undefined;
    this.#direct = 0;
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
    this.#door.metrics.slowConsumer();
    this.#door.log("info", `${this.#peer()}: slow consumer, closing`);
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
          message: `More than ${this.#door.maxOutbound} bytes waiting: closing connection`,
        }, this.session.live)) + "\n",
      );
      this.#chunks.push(frame);
      this.#writing = true;
      queueMicrotask(() => this.#flush());
    }
  }

  /**
   * Writes what is queued, one `conn.write` at a time, until nothing is: a loop of callbacks
   * rather than an async function, so a flush allocates no generator and no extra promise per
   * write (a delivery to a connection costs one flush; see BENCHMARKS.md, issue 17).
   */
  #flush(): void {
    try {
      let buf = this.#wBuf;
      if (buf === undefined) {
        if (this.#closed) return this.#flushEnd();
        const chunks = this.#wChunks;
        if (chunks !== undefined && this.#wIndex < chunks.length) {
          buf = this.#nextWrite(chunks);
        } else {
          if (this.#wTaken) {
            // What the last take held is written.
            if (chunks !== undefined) chunks.length = 0; // let go of the views
            this.#wChunks = undefined;
            this.#wTaken = false;
            this.#written();
          }
          const taken = this.#take();
          if (taken === undefined) return this.#flushEnd();
          this.#wTaken = true;
          if (taken instanceof Uint8Array) buf = taken;
          else {
            this.#wChunks = taken;
            this.#wIndex = 0;
            buf = this.#nextWrite(taken);
          }
        }
        this.#wBuf = buf;
        this.#wOff = 0;
      }
      const off = this.#wOff;
      this.conn.write(off === 0 ? buf : buf.subarray(off)).then(
        this.#onWrote ??= (n: number) => this.#wrote(n),
        this.#onWriteFailed ??= () => this.#writeFailed(),
      );
    } catch {
      this.#writeFailed();
    }
  }

  /**
   * The next write of a taken list: small chunks are joined into one write; large ones (slab
   * runs) are written as they are (copying them would cost more than the extra write).
   */
  #nextWrite(chunks: Uint8Array[]): Uint8Array {
    const i = this.#wIndex;
    let j = i + 1;
    if ((chunks[i] as Uint8Array).byteLength < JOIN_BELOW) {
      while (j < chunks.length && (chunks[j] as Uint8Array).byteLength < JOIN_BELOW) j++;
    }
    this.#wIndex = j;
    return j === i + 1 ? chunks[i] as Uint8Array : concat(chunks.slice(i, j));
  }

  /** A write took `n` bytes: the rest of the buffer, or the next one. */
  #wrote(n: number): void {
    const buf = this.#wBuf as Uint8Array;
    this.#wOff += n;
    if (this.#wOff >= buf.byteLength) {
      this.#door.metrics.bytesOut += buf.byteLength;
      this.#wBuf = undefined;
    }
    this.#flush();
  }

  /** The peer is gone: stop listening; the reader sees the end too. */
  #writeFailed(): void {
    this.session.drop();
    this.#closing = true;
    this.#flushEnd();
  }

  /** The flush stops: nothing left, or the connection is closed or failed. */
  #flushEnd(): void {
    this.#wBuf = undefined;
    if (this.#wChunks !== undefined) this.#wChunks.length = 0;
    this.#wChunks = undefined;
    this.#wTaken = false;
    this.#writing = false;
    if (this.#closing) this.#end();
  }

  /**
   * Reports the request lines this connection holds now: its unfinished line, and the requests
   * waiting behind one in progress (the session's backlog).
   */
  #holdLine(line: number, backlog = 0): void {
    const bytes = line + backlog;
    this.#memory.lines += bytes - this.#lineBytes;
    this.#lineBytes = bytes;
    this.#backlogBytes = backlog;
  }

  /** The session's requests were answered: what the connection holds fell. */
  backlogChanged(): void {
    if (!this.#closed) this.#holdLine(this.#lineBytes - this.#backlogBytes, this.session.backlog);
  }

  #end(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#drop();
    this.#written();
    this.#holdLine(0);
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

  /** Completes the TLS handshake within the door's handshake timeout; false when cut. */
  async #handshake(): Promise<boolean> {
    const timer = setTimeout(() => this.abort(), this.#door.handshakeTimeout);
    try {
      await (this.conn as unknown as TlsOverTcp).handshake();
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
   * connection (see BENCHMARKS.md for the profiles behind it). After a full read it waits for
   * the event loop's next turn, so a peer that never pauses cannot hold the others back.
   */
  async serve(): Promise<void> {
    try {
      if (this.#door.tls && !(await this.#handshake())) return;
      const metrics = this.#door.metrics;
      const framer = new LineFramer({ maxLineBytes: this.#door.maxLineBytes });
      const session = this.session;
      let buf = new Uint8Array(READ_FIRST);
      let quiet = 0; // consecutive small reads
      try {
        while (!session.closed) {
          const n = await this.conn.read(buf);
          if (n === null) break;
          if (n === 0) continue;
          metrics.bytesIn += n;
          const lines = framer.push(buf.subarray(0, n));
          this.#holdLine(framer.pending, session.backlog);
          if (lines.length > 0 || framer.error) this.lastHeard = Date.now();
          for (let i = 0; i < lines.length && !session.closed; i++) session.handle(lines[i]!);
          // The requests that wait behind one in progress count too.
          if (session.backlog !== this.#backlogBytes) {
            this.#holdLine(framer.pending, session.backlog);
          }
          // A bad line: the good lines before it were served; now refuse.
          if (framer.error) throw framer.error;
          // Until its hello succeeds, a connection may hold a small unfinished line only.
          if (!session.authorized && framer.pending > UNAUTHENTICATED_LINE_BYTES) {
            throw new LineError(
              "line_too_long",
              `More than ${UNAUTHENTICATED_LINE_BYTES} bytes of a line before "hello"`,
            );
          }
          if (framer.pending > CONNECTION_SHARE && this.#memory.spentBesides(this.#lineBytes)) {
            // While the rest of the memory budget is spent, a connection may hold only its share
            // of a line.
            metrics.limitExceeded("max_memory");
            session.error(
              "limit_exceeded",
              `More than ${CONNECTION_SHARE} bytes of an unfinished line while the server's ` +
                `memory budget of ${this.#memory.max} bytes is spent: closing connection`,
              undefined,
              undefined,
              { limit: "max_memory" },
            );
            session.close();
            break;
          }
          if (session.backlog > this.#door.maxLineBytes) {
            // Requests wait behind one in progress (a listen, a pattern join, an engine call):
            // past a line's worth, stop reading until they are answered. The peer's writes wait
            // in the socket's buffers (backpressure), nothing is refused.
            const room = session.backlogAtMost(this.#door.maxLineBytes);
            if (room) await room;
            this.#holdLine(framer.pending, session.backlog);
          }
          // A full read: more is likely waiting. Let the other connections' reads (and the
          // timers) have their turn before reading on.
          if (n === buf.byteLength) await nextTurn();
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
    } finally {
      this.#onEnded(this);
    }
  }
}
