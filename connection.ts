/**
 * The connection machinery of `RemoteStream` (client.ts), split out of it: the client's options
 * and status types (re-exported by client.ts), the {@linkcode Outbox} that numbers requests,
 * buffers and writes frames and keeps each request pending until answered or lost, the
 * {@linkcode Backoff} of the reconnect loop, the state a reconnect resumes from (what the client
 * follows), the status iterators, and the hints and errors of a failed or lost connection.
 * Internal: not an entry point.
 *
 * @module
 */

import { concat } from "@std/bytes/concat";
import { type Codec, defaultCodec } from "./codec.ts";
import { type Listener, MessageTooLargeError, type PatternJoin, type Position } from "./mod.ts";
import { DEFAULT_PORT, intOption } from "./options.ts";
import { ProtocolError } from "./protocol.ts";

const encoder = new TextEncoder();

/**
 * A one-line hint for a failed first connection: what to fix for the TLS mistakes that otherwise
 * read as a closed connection or a rustls error name.
 *
 * @param e Why the first connection failed.
 * @param tls Whether it was a TLS connection.
 * @returns The hint with a leading space, or `""` when the mistake is not a known one.
 */
export function connectHint(e: Error, tls: boolean): string {
  const text = e.message;
  if (text.includes("CaUsedAsEndEntity")) {
    return " (the server's certificate is a CA certificate, which Deno refuses as a server's own:" +
      " make one with tools/tls_recipe.sh, see docs/tls.md)";
  }
  if (text.includes("UnknownIssuer")) {
    return " (trust the CA that signed the server's certificate: caCerts, or the CLI's --ca;" +
      " see docs/tls.md)";
  }
  if (text.includes("NotValidForName") || text.includes("not valid for name")) {
    return " (the server's certificate does not name this host: connect with a name it lists," +
      " or remake it with tools/tls_recipe.sh DIR NAME; see docs/tls.md)";
  }
  if (tls && text.includes("InvalidContentType")) {
    return " (the server does not speak TLS there: connect without TLS)";
  }
  if (!tls && text.includes("Connection closed before the server answered hello")) {
    return " (a TLS server closes plain connections: connect with tls, the CLI's --tls or --ca)";
  }
  return "";
}

/** Options for {@linkcode RemoteStream.connect}. */
export interface RemoteStreamOptions {
  /**
   * The server's host name or address.
   *
   * @default {"127.0.0.1"}
   */
  hostname?: string;
  /**
   * The server's port.
   *
   * @default {51932}
   */
  port?: number;
  /**
   * Encodes requests and decodes events; must match the server's.
   *
   * @default {defaultCodec}
   */
  codec?: Codec;
  /** The secret sent in `hello`, for servers that require a token. */
  token?: string;
  /**
   * Connect with TLS.
   *
   * @default {false}
   */
  tls?: boolean;
  /** Extra CA certificates (PEM) to trust for TLS, e.g. a self-signed server's. */
  caCerts?: string[];
  /**
   * Milliseconds to wait between reconnect attempts.
   *
   * @default {2000}
   */
  reconnectTimeWait?: number;
  /**
   * Up to this many milliseconds are added at random to each wait, so that many clients do not
   * reconnect at once.
   *
   * @default {100}
   */
  reconnectJitter?: number;
  /**
   * Reconnect attempts after a connection drops before giving up (-1: never give up; 0: do
   * not reconnect).
   *
   * @default {10}
   */
  maxReconnectAttempts?: number;
  /**
   * Milliseconds between pings that check the server is alive.
   *
   * @default {30000}
   */
  pingInterval?: number;
  /**
   * Pings left unanswered before the connection is taken as dead and reconnected.
   *
   * @default {2}
   */
  maxPingsOut?: number;
  /**
   * Most bytes of requests buffered while disconnected; requests beyond it fail at once
   * with `not_connected`.
   *
   * @default {8388608}
   */
  maxPendingBytes?: number;
  /**
   * Longest frame accepted from the server, in bytes; a longer one is taken as a broken
   * connection (it is dropped and reconnected). The default is the server's default
   * `maxOutboundBytes`, which no frame from a server with default limits can exceed.
   *
   * @default {8388608}
   */
  maxLineBytes?: number;
  /**
   * Largest message `put` and `header` send, in bytes as the codec encodes it; a larger one is
   * refused with {@linkcode MessageTooLargeError} before it is sent, as the hub refuses it,
   * instead of a line the server cuts the connection for. The default is the server's default
   * `--max-message-bytes`; a server with a smaller bound answers `message_too_large`.
   *
   * @default {1044480}
   */
  maxMessageBytes?: number;
}

/** A lifecycle change of a {@linkcode RemoteStream}. */
export interface Status {
  /** What happened. */
  type: "connecting" | "connected" | "disconnected" | "reconnecting" | "closed";
  /** The reconnect attempt (from 1), for `reconnecting`. */
  attempt?: number;
  /** Why, for `disconnected` and a `closed` that was not asked for. */
  error?: Error;
}

/** A client's options with every default filled in. */
export type ClientOptions = Required<Omit<RemoteStreamOptions, "token" | "caCerts">> & {
  token: string | undefined;
  caCerts: string[] | undefined;
};

/**
 * Fills in the defaults of a client's options.
 *
 * @param options The options given to `RemoteStream.connect`.
 * @returns Every option, defaults filled in.
 * @throws {RangeError} When `maxLineBytes` or `maxMessageBytes` is not a positive integer.
 */
export function resolveOptions(options: RemoteStreamOptions): ClientOptions {
  return {
    hostname: options.hostname ?? "127.0.0.1",
    port: options.port ?? DEFAULT_PORT,
    codec: options.codec ?? defaultCodec,
    token: options.token,
    tls: options.tls ?? false,
    caCerts: options.caCerts,
    reconnectTimeWait: options.reconnectTimeWait ?? 2000,
    reconnectJitter: options.reconnectJitter ?? 100,
    maxReconnectAttempts: options.maxReconnectAttempts ?? 10,
    pingInterval: options.pingInterval ?? 30_000,
    maxPingsOut: options.maxPingsOut ?? 2,
    maxPendingBytes: options.maxPendingBytes ?? 8 << 20,
    maxLineBytes: intOption("maxLineBytes", options.maxLineBytes, 8 << 20, 1),
    maxMessageBytes: intOption("maxMessageBytes", options.maxMessageBytes, (1 << 20) - 4096, 1),
  };
}

/** What happens to a request that was written but not answered when the connection drops. */
export type OnLost =
  | "retry" // idempotent (header, delete): sent again after the reconnect
  | "reject" // not idempotent (put): fails with not_connected, never sent twice
  | "drop"; // part of the connection (hello, listen): redone by the reconnect itself

/** A request sent and not yet answered. */
export interface Pending {
  /** Settles it with the `ok` frame. */
  resolve(frame: Record<string, unknown>): void;
  /** Fails it. */
  reject(error: Error): void;
  /** What to do with it if the connection drops first. */
  onLost: OnLost;
  /** Its bytes, as queued (sent again after a reconnect when `onLost` allows). */
  frame: Uint8Array;
  /** Whether it was written to the connection. */
  written: boolean;
}

/**
 * A client's requests and their answers over whichever connection is open: numbers each request,
 * buffers frames while disconnected (up to `maxPendingBytes`), writes them in order, and keeps
 * each request pending until the server answers or the connection drops.
 */
export class Outbox {
  readonly #opts: { codec: Codec; maxMessageBytes: number; maxPendingBytes: number };
  readonly #getConn: () => Deno.Conn | undefined;
  readonly #isClosing: () => boolean;
  #nextId = 1;
  /** Requests sent and not yet answered, by id. */
  readonly #pending = new Map<number, Pending>();
  #outbox: Uint8Array[] = [];
  #outboxBytes = 0;
  #writing = false;

  /**
   * Creates an empty outbox.
   *
   * @param opts The codec and the size limits.
   * @param conn The open connection, or undefined while disconnected.
   * @param closing Whether the client is closing.
   */
  constructor(
    opts: { codec: Codec; maxMessageBytes: number; maxPendingBytes: number },
    conn: () => Deno.Conn | undefined,
    closing: () => boolean,
  ) {
    this.#opts = opts;
    this.#getConn = conn;
    this.#isClosing = closing;
  }

  get #conn(): Deno.Conn | undefined {
    return this.#getConn();
  }

  get #closing(): boolean {
    return this.#isClosing();
  }

  /**
   * Sends a request with an id.
   *
   * @param frame The request (its `id` is set here).
   * @param onLost What to do with it if the connection drops before the answer.
   * @param first Put it ahead of everything buffered (hello).
   * @returns The `ok` frame; rejects with the `error` frame's {@linkcode ProtocolError}.
   */
  request(
    frame: Record<string, unknown>,
    onLost: OnLost,
    first = false,
  ): Promise<Record<string, unknown>> {
    if (this.#closing) {
      return Promise.reject(new ProtocolError("not_connected", "Client closed"));
    }
    const id = this.#nextId++;
    frame.id = id;
    let bytes: Uint8Array;
    try {
      bytes = encoder.encode(this.#opts.codec.encode(frame) + "\n");
    } catch (e) {
      return Promise.reject(new TypeError(`Cannot encode request: ${(e as Error).message}`));
    }
    const limit = this.#opts.maxMessageBytes;
    if (bytes.byteLength > limit && (frame.action === "put" || frame.action === "header")) {
      // Refused here, as the hub refuses it, not sent as a line the server may cut us off for.
      const size = encoder.encode(this.#opts.codec.encode(frame.message ?? null)).byteLength;
      if (size > limit) {
        return Promise.reject(new MessageTooLargeError(String(frame.stream), size, limit));
      }
    }
    if (!this.#conn && this.#outboxBytes + bytes.byteLength > this.#opts.maxPendingBytes) {
      return Promise.reject(
        new ProtocolError("not_connected", "Not connected, and the pending request buffer is full"),
      );
    }
    const { promise, resolve, reject } = Promise.withResolvers<Record<string, unknown>>();
    this.#pending.set(id, { resolve, reject, onLost, frame: bytes, written: false });
    if (first) {
      this.#outbox.unshift(bytes);
      this.#outboxBytes += bytes.byteLength;
    } else {
      this.send(bytes);
    }
    return promise;
  }

  /**
   * Queues a frame that needs no answer (or a request's bytes) and starts writing.
   *
   * @param bytes The frame, newline included.
   */
  send(bytes: Uint8Array): void {
    this.#outbox.push(bytes);
    this.#outboxBytes += bytes.byteLength;
    if (this.#conn && !this.#writing) {
      this.#writing = true;
      queueMicrotask(this.#flushNow);
    }
  }

  /** Starts writing what was buffered while disconnected, once a connection is open. */
  flush(): void {
    if (this.#conn && !this.#writing && this.#outbox.length > 0) {
      this.#writing = true;
      queueMicrotask(this.#flushNow);
    }
  }

  #drained: PromiseWithResolvers<void> | undefined;

  /**
   * Waits until everything queued is written (or the connection is gone).
   *
   * @returns When the queue is empty.
   */
  drain(): Promise<void> {
    if (!this.#writing && this.#outbox.length === 0) return Promise.resolve();
    this.#drained ??= Promise.withResolvers();
    return this.#drained.promise;
  }

  #flushNow = async (): Promise<void> => {
    const conn = this.#conn;
    try {
      while (conn && this.#conn === conn && this.#outbox.length > 0) {
        const chunks = this.#outbox;
        this.#outbox = [];
        this.#outboxBytes = 0;
        const buf = chunks.length === 1 ? chunks[0] as Uint8Array : concat(chunks);
        this.#markWritten(chunks);
        let off = 0;
        while (off < buf.byteLength) off += await conn.write(buf.subarray(off));
      }
    } catch {
      // The reader sees the failure too and reconnects.
    }
    this.#writing = false;
    if (this.#outbox.length === 0 || !this.#conn) {
      this.#drained?.resolve();
      this.#drained = undefined;
    }
  };

  #markWritten(chunks: Uint8Array[]): void {
    if (this.#pending.size === 0) return;
    const set = new Set(chunks);
    for (const p of this.#pending.values()) if (set.has(p.frame)) p.written = true;
  }

  /**
   * Takes the request an `ok` or `error` frame answers off the pending ones.
   *
   * @param id The frame's id.
   * @returns The request, or undefined when none waits for that id.
   */
  take(id: unknown): Pending | undefined {
    const p = this.#pending.get(id as number);
    if (p) this.#pending.delete(id as number);
    return p;
  }

  /**
   * The connection dropped: fails every request bound to it or ambiguous (see {@linkcode OnLost}),
   * and keeps the rest to send again after the reconnect.
   *
   * @param error Why the connection dropped.
   */
  lost(error: Error): void {
    // Unanswered requests: resend what is safe to, fail what is ambiguous, and leave hello and
    // listens to the reconnect. Frames that need no answer (hangup, ping) are not kept: the
    // reconnect listens only to what is still followed.
    const keep: Uint8Array[] = [];
    for (const [id, p] of this.#pending) {
      if (p.onLost === "drop") {
        this.#pending.delete(id);
        p.reject(new LostConnection(undefined, { cause: error }));
      } else if (!p.written || p.onLost === "retry") {
        p.written = false;
        keep.push(p.frame);
      } else {
        this.#pending.delete(id);
        p.reject(
          new ProtocolError(
            "not_connected",
            "Connection lost before the server answered: the put may or may not have been applied",
            undefined,
            { cause: error },
          ),
        );
      }
    }
    this.#outbox = keep;
    this.#outboxBytes = keep.reduce((n, b) => n + b.byteLength, 0);
  }

  /**
   * The client closed: fails every pending request and drops what is buffered.
   *
   * @param err The error each request fails with.
   */
  fail(err: Error): void {
    for (const p of this.#pending.values()) p.reject(err);
    this.#pending.clear();
    this.#outbox = [];
    this.#outboxBytes = 0;
  }
}

/**
 * The waits of a client: the reconnect loop's backoff (cut short when the client closes) and
 * the listens asked for again later.
 */
export class Backoff {
  readonly #opts: ClientOptions;
  readonly #isClosing: () => boolean;
  /** Listens asked for again later (see later()); cleared when the client closes. */
  #retries = new Set<ReturnType<typeof setTimeout>>();
  /** Wakes the reconnect loop from its backoff sleep (the client's close() calls wake()). */
  #wakeBackoff: (() => void) | undefined;

  /**
   * Creates the waits of a client.
   *
   * @param opts The client's options (`reconnectTimeWait`, `reconnectJitter`,
   * `maxReconnectAttempts`).
   * @param closing Whether the client is closing.
   */
  constructor(opts: ClientOptions, closing: () => boolean) {
    this.#opts = opts;
    this.#isClosing = closing;
  }

  get #closing(): boolean {
    return this.#isClosing();
  }

  /**
   * Runs `retry` after the reconnect wait, unless the client closes first.
   *
   * @param retry What to run.
   */
  later(retry: () => void): void {
    const o = this.#opts;
    const timer = setTimeout(() => {
      this.#retries.delete(timer);
      if (!this.#closing) retry();
    }, o.reconnectTimeWait + Math.random() * o.reconnectJitter);
    this.#retries.add(timer);
  }

  /**
   * Tries to connect again, after a wait each time, until an attempt connects, the attempts run
   * out, the token is refused, or the client closes; when it gives up, the client finishes.
   *
   * @param lastError Why the connection dropped.
   * @param connect Opens a connection and says hello (throws when the attempt fails).
   * @param emit Tells the status listeners.
   * @param finish Closes the client for good with the last error.
   * @returns When the loop is over.
   */
  async reconnect(
    lastError: Error,
    connect: () => Promise<void>,
    emit: (s: Status) => void,
    finish: (error: Error) => void,
  ): Promise<void> {
    const o = this.#opts;
    for (
      let attempt = 1;
      o.maxReconnectAttempts < 0 || attempt <= o.maxReconnectAttempts;
      attempt++
    ) {
      const wait = o.reconnectTimeWait + Math.random() * o.reconnectJitter;
      // close() cuts the sleep short.
      await new Promise<void>((resolve) => {
        const timer = setTimeout(() => this.#wakeBackoff?.(), wait);
        this.#wakeBackoff = () => {
          clearTimeout(timer);
          this.#wakeBackoff = undefined;
          resolve();
        };
      });
      if (this.#closing) return;
      emit({ type: "reconnecting", attempt });
      try {
        await connect();
        return;
      } catch (e) {
        lastError = e as Error;
        if (e instanceof ProtocolError && e.code === "unauthorized") break;
      }
    }
    if (!this.#closing) finish(lastError);
  }

  /** Cancels the listens asked for again later. */
  clearRetries(): void {
    for (const timer of this.#retries) clearTimeout(timer);
    this.#retries.clear();
  }

  /** Wakes the reconnect loop from its backoff sleep. */
  wake(): void {
    this.#wakeBackoff?.();
  }
}

/** A stream this client follows by name, and its local queues. */
export interface Followed {
  /** The local queues that follow it. */
  queues: Set<Listener>;
  /** The last header message seen, or undefined when none is set. */
  header: unknown;
  /** The last position delivered. */
  position: Position | undefined;
  /** `listen()` calls waiting for the server to confirm the upstream listen. */
  waiters: PromiseWithResolvers<Position>[];
  /** Listened with `create: false`: listening again never makes the stream anew. */
  existing: boolean;
}

/** A pattern this client listens to upstream, and its local queues. */
export interface FollowedPattern {
  /** The pattern. */
  pattern: string;
  /** The local queues that follow it. */
  queues: Set<Listener>;
  /** `listen()` calls waiting for the server to confirm the upstream listen. */
  waiters: PromiseWithResolvers<PatternJoin>[];
}

/** What this client last saw of a stream it follows through a pattern. */
export interface PatternStreamSeen {
  /** The last header message seen, or undefined when none is set. */
  header: unknown;
  /** The last position delivered. */
  position: Position;
}

/**
 * The status changes of a client, as {@linkcode Status} iterators: each iterator sees the
 * changes after it was made; one made after the client closed gets the closed status, then ends.
 *
 * @param listeners The client's status listeners (each iterator adds itself while it runs).
 * @param final The `closed` status, once the client has closed.
 * @returns An async iterable of status changes.
 */
export function statusIterable(
  listeners: Set<(s: Status) => void>,
  final: () => Status | undefined,
): AsyncIterable<Status> {
  return {
    [Symbol.asyncIterator](): AsyncIterator<Status> {
      const queue: Status[] = [];
      const closedAlready = final();
      if (closedAlready) {
        // Taken after the client closed: the closed status, then the end.
        queue.push(closedAlready);
      }
      let wake: (() => void) | undefined;
      let done = false;
      const listener = (s: Status) => {
        if (queue.length < 1000) queue.push(s);
        wake?.();
      };
      if (!closedAlready) listeners.add(listener);
      const finish = () => {
        done = true;
        listeners.delete(listener);
      };
      return {
        async next(): Promise<IteratorResult<Status>> {
          while (queue.length === 0 && !done) {
            await new Promise<void>((r) => wake = r);
            wake = undefined;
          }
          const value = queue.shift();
          if (value === undefined) return { done: true, value: undefined };
          if (value.type === "closed") finish();
          return { done: false, value };
        },
        return(): Promise<IteratorResult<Status>> {
          finish();
          wake?.();
          return Promise.resolve({ done: true, value: undefined });
        },
      };
    },
  };
}

/** A connection-bound request ended with its connection; the reconnect redoes it. */
export class LostConnection extends Error {}

/**
 * Whether a refusal passes: the server's engine or store is down for now.
 *
 * @param e The refusal.
 * @returns Whether asking again later may succeed.
 */
export function isTransient(e: Error): boolean {
  return e instanceof ProtocolError &&
    (e.code === "engine_unavailable" || e.code === "storage_unavailable");
}
