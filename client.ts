/**
 * The remote client, {@linkcode RemoteStream}: the hub's interface over one TCP (or TLS)
 * connection to a msgstream server, however many local listeners it serves. It reconnects on
 * its own and resumes every stream it follows from the last position it delivered.
 *
 * @example Follow a job on a server
 * ```ts
 * import { RemoteStream } from "@x/msgstream/client";
 * import { serve } from "@x/msgstream/server";
 * import { Inbox } from "@x/msgstream";
 * import { assertEquals } from "@std/assert";
 *
 * await using server = serve({ port: 0 });
 * await using remote = await RemoteStream.connect(`127.0.0.1:${server.addr.port}`);
 * await remote.header("job42", { state: "running" });
 * const inbox = new Inbox();
 * await remote.listen("job42", inbox);
 * await remote.put("job42", { done: 1 });
 * const got = [];
 * for await (const ev of inbox) {
 *   got.push(ev.message);
 *   if (got.length === 2) break;
 * }
 * assertEquals(got, [{ state: "running" }, { done: 1 }]);
 * ```
 *
 * @module
 */

/// <reference types="./std_types.d.ts" />
import { JsonCodec } from "./codec.ts";
import { checkSince } from "./core.ts";
import { buildEvent } from "./frame.ts";
import {
  type EventKind,
  type Listener,
  type ListenOptions,
  logListenerError,
  type PatternJoin,
  type PatternListenOptions,
  type PatternTarget,
  type Position,
  type Streamer,
  type StreamEvent,
  type StreamStat,
} from "./mod.ts";
import { type ErrorCode, ProtocolError } from "./protocol.ts";
import { readLines } from "./framer.ts";
import { matchPattern, type PageOptions, type StreamListing, type StreamPage } from "./pattern.ts";
import { DEFAULT_PORT, parseHostPort } from "./options.ts";
import {
  Backoff,
  type ClientOptions,
  connectHint,
  type Followed,
  type FollowedPattern,
  isTransient,
  LostConnection,
  Outbox,
  type PatternStreamSeen,
  type RemoteStreamOptions,
  resolveOptions,
  type Status,
  statusIterable,
} from "./connection.ts";

export { ProtocolError } from "./protocol.ts";
export type { ErrorCode } from "./protocol.ts";
export type { StreamListing, StreamPage } from "./pattern.ts";
export type { RemoteStreamOptions, Status } from "./connection.ts";

/** What {@linkcode RemoteStream.list} asks for: a pattern, a cursor and a page size. */
export type ListOptions = Omit<PageOptions, "allow">;

const encoder = new TextEncoder();

/**
 * The hub's interface over one connection to a msgstream server.
 *
 * Every method of {@linkcode Streamer} works as on the in-process hub. Requests are sent in
 * call order, so `put`s need not be awaited to keep their order; each returned promise settles
 * when the server answers. While the connection is down, requests wait (up to
 * `maxPendingBytes`) and go out after the reconnect. A put that was written but not yet
 * confirmed when the connection dropped fails with code `not_connected` (it may or may not
 * have been applied); it is not sent twice.
 *
 * After a reconnect, each followed stream is listened to again from the last position
 * delivered: local listeners see no gap and no duplicate when the server's history covers the
 * outage, and a `reset` event (then the header) when it does not.
 */
export class RemoteStream implements Streamer, AsyncDisposable {
  readonly #opts: ClientOptions;
  #conn: Deno.Conn | undefined;
  /** Requests, their answers and the write path (see connection.ts). */
  readonly #wire: Outbox;
  /** The reconnect loop and the listens asked for again later (see connection.ts). */
  readonly #backoff: Backoff;
  #streams = new Map<string, Followed>();
  #patterns = new Map<string, FollowedPattern>();
  /** Streams seen through patterns: where each is, for resuming after a reconnect. */
  #patternStreams = new Map<string, PatternStreamSeen>();
  #closing = false;
  #closed: PromiseWithResolvers<void | Error> = Promise.withResolvers();
  #statusListeners = new Set<(s: Status) => void>();
  /** The `closed` status, once the client has closed: iterators made later get it and end. */
  #final: Status | undefined;
  #pingTimer: ReturnType<typeof setInterval> | undefined;
  #pingsOut = 0;
  #reconnecting: Promise<void> | undefined;
  #reading: Promise<void> | undefined;
  /** A connection is open but `hello` is unanswered: losing it fails the attempt, no more. */
  #handshaking = false;
  /** Unanswered upstream hangups on this connection: request id to stream. */
  #hangups = new Map<number, string>();
  /**
   * Streams with an unanswered upstream hangup, and how many: their frames still arriving
   * belong to the old subscription, not to a listen made since.
   */
  #draining = new Map<string, number>();

  private constructor(options: RemoteStreamOptions) {
    this.#opts = resolveOptions(options);
    this.#wire = new Outbox(this.#opts, () => this.#conn, () => this.#closing);
    this.#backoff = new Backoff(this.#opts, () => this.#closing);
  }

  /**
   * Connects to a server.
   *
   * @param target `"host:port"`, or options.
   * @returns The connected client.
   * @throws {TypeError} When the address is malformed.
   * @throws {ProtocolError} With code `unauthorized` when the token is refused.
   * @throws {Deno.errors.ConnectionRefused} When nothing listens there.
   * Each error's message starts `Cannot connect to HOST:PORT: ` and ends with a hint when the
   * mistake is a known one (a TLS port reached without TLS, an untrusted certificate).
   *
   * @example Connecting with options
   * ```ts ignore
   * import { RemoteStream } from "@x/msgstream/client";
   *
   * const remote = await RemoteStream.connect({ hostname: "jobs.example", port: 51932, tls: true, token: "s3cret" });
   * await remote.put("job42", { done: 3 });
   * await remote.close();
   * ```
   */
  static async connect(target?: string | RemoteStreamOptions): Promise<RemoteStream> {
    const options = typeof target === "string" ? parseHostPort(target, DEFAULT_PORT) : target ?? {};
    if (!options) throw new TypeError(`Cannot connect: "${target}" is not "host:port"`);
    const remote = new RemoteStream(options);
    try {
      await remote.#connect();
    } catch (e) {
      if (e instanceof Error) {
        const o = remote.#opts;
        const host = o.hostname.includes(":") ? `[${o.hostname}]` : o.hostname;
        e.message = `Cannot connect to ${host}:${o.port}: ${e.message}${connectHint(e, o.tls)}`;
      }
      throw e;
    }
    return remote;
  }

  /** Opens the connection, says hello, starts reading. */
  async #connect(): Promise<void> {
    const o = this.#opts;
    this.#emit({ type: "connecting" });
    const conn = o.tls
      ? await Deno.connectTls({
        hostname: o.hostname,
        port: o.port,
        ...(o.caCerts ? { caCerts: o.caCerts } : {}),
      })
      : await Deno.connect({ hostname: o.hostname, port: o.port });
    if ("setNoDelay" in conn) (conn as Deno.TcpConn).setNoDelay(true);
    this.#conn = conn;
    this.#pingsOut = 0;
    this.#reading = this.#read(conn);
    // hello goes first, ahead of anything buffered while disconnected.
    const hello: Record<string, unknown> = { action: "hello", version: 1 };
    if (o.token !== undefined) hello.token = o.token;
    const ready = this.#wire.request(hello, "drop", true);
    // Listen again to what we follow, from where we are.
    for (const [stream, f] of this.#streams) this.#relisten(stream, f);
    for (const p of this.#patterns.values()) this.#relistenPattern(p);
    this.#wire.flush();
    this.#handshaking = true;
    // Pings run from the start: a server that accepts but never answers hello fails the
    // attempt after maxPingsOut unanswered pings instead of hanging it forever.
    if (o.pingInterval > 0) {
      clearInterval(this.#pingTimer);
      this.#pingTimer = setInterval(() => this.#ping(), o.pingInterval);
    }
    try {
      await ready;
      // Lost between the answer and now: the attempt failed all the same.
      if (this.#conn !== conn) throw new LostConnection();
    } catch (e) {
      clearInterval(this.#pingTimer);
      this.#conn = undefined;
      try {
        conn.close();
      } catch { /* closed */ }
      if (e instanceof LostConnection) {
        // Say why (a TLS certificate refused, pings unanswered): "closed" alone hides it.
        const why = e.cause instanceof Error ? `: ${e.cause.message}` : "";
        throw new ProtocolError(
          "not_connected",
          `Connection closed before the server answered hello${why}`,
          undefined,
          e.cause instanceof Error ? { cause: e.cause } : undefined,
        );
      }
      throw e;
    } finally {
      this.#handshaking = false;
    }
    this.#emit({ type: "connected" });
  }

  /** Listens upstream from the last position delivered; settles the stream's waiters. */
  #relisten(stream: string, f: Followed, since = f.position): void {
    if (!this.#conn) return; // the reconnect listens again to every followed stream
    const frame: Record<string, unknown> = { action: "listen", stream };
    if (since) frame.since = { epoch: since.epoch, seq: since.seq };
    if (f.existing) frame.create = false;
    this.#wire.request(frame, "drop").then((ok) => {
      const position = { epoch: ok.epoch as string, seq: ok.seq as number };
      f.position ??= position;
      for (const w of f.waiters.splice(0)) w.resolve(position);
    }, (e: Error) => {
      if (e instanceof LostConnection) return; // the reconnect listens again
      if (f.waiters.length === 0 && isTransient(e)) {
        // Listening again after a reconnect while the server's engine or store is down: ask
        // again later rather than leave the local queues waiting for nothing.
        return this.#backoff.later(() => {
          if (this.#streams.get(stream) === f) this.#relisten(stream, f);
        });
      }
      // The server refused: the local queues of this stream hear nothing more.
      if (this.#streams.get(stream) === f) this.#streams.delete(stream);
      const waiting = f.waiters.length > 0;
      for (const w of f.waiters.splice(0)) w.reject(e);
      if (!waiting && e instanceof ProtocolError && e.code === "not_found") {
        // Listened again after a reconnect, and the stream is gone (deleted meanwhile, or lost
        // in a restart): its listeners hear the end instead of waiting for it forever.
        const end = this.#event(stream, "end", null, f.position ?? { epoch: "", seq: 0 });
        for (const q of [...f.queues]) this.#deliver(q, end);
      }
    });
  }

  /** Listens upstream to a pattern, resuming each stream seen from where it is. */
  #relistenPattern(p: FollowedPattern): void {
    if (!this.#conn) return; // the reconnect listens again to every followed pattern
    const frame: Record<string, unknown> = { action: "listen", pattern: p.pattern };
    let since: Record<string, Position> | undefined;
    for (const [stream, seen] of this.#patternStreams) {
      if (matchPattern(p.pattern, stream)) (since ??= {})[stream] = seen.position;
    }
    if (since) frame.since = since;
    this.#wire.request(frame, "drop").then((ok) => {
      const join = { pattern: p.pattern, streams: typeof ok.streams === "number" ? ok.streams : 0 };
      for (const w of p.waiters.splice(0)) w.resolve(join);
    }, (e: Error) => {
      if (e instanceof LostConnection) return; // the reconnect listens again
      if (p.waiters.length === 0 && isTransient(e)) {
        // As for a stream (see #relisten): the pattern is asked for again later.
        return this.#backoff.later(() => {
          if (this.#patterns.get(p.pattern) === p) this.#relistenPattern(p);
        });
      }
      if (this.#patterns.get(p.pattern) === p) this.#patterns.delete(p.pattern);
      for (const w of p.waiters.splice(0)) w.reject(e);
    });
  }

  #ping(): void {
    if (!this.#conn) return;
    if (this.#pingsOut >= this.#opts.maxPingsOut) {
      this.#lost(new ProtocolError("not_connected", "Server did not answer pings"));
      return;
    }
    this.#pingsOut++;
    this.#wire.send(encoder.encode('{"action":"ping"}\n'));
  }

  /**
   * Follows status changes: connecting, connected, disconnected, reconnecting, closed.
   * Each iterator sees the changes after it was made; `break` stops it.
   *
   * @returns An async iterable of status changes.
   *
   * @example Logging reconnects
   * ```ts ignore
   * for await (const s of remote.status()) console.log(s.type, s.attempt ?? "");
   * ```
   */
  status(): AsyncIterable<Status> {
    return statusIterable(this.#statusListeners, () => this.#final);
  }

  #emit(s: Status): void {
    for (const l of this.#statusListeners) l(s);
  }

  /**
   * Resolves when the client has closed for good: with nothing when `close()` was called,
   * with the error when it gave up reconnecting. Never rejects.
   *
   * @returns Why it closed.
   */
  closed(): Promise<void | Error> {
    return this.#closed.promise;
  }

  /**
   * Sets or clears a stream's header on the server.
   *
   * @param stream The stream's name.
   * @param message The header, or `null`/`undefined` to clear it.
   * @throws {ProtocolError} When the server refuses (e.g. `forbidden`) or the connection is
   * lost (`not_connected`).
   * @throws {TypeError} When the header is a function or a symbol (as the hub).
   */
  async header(stream: string, message: unknown): Promise<void> {
    if (typeof message === "function" || typeof message === "symbol") {
      // As the hub refuses it: sent, it would have no message and clear the header.
      throw new TypeError(
        `Cannot set the header of stream "${String(stream).slice(0, 100)}": ` +
          `a ${typeof message} is not a message`,
      );
    }
    await this.#wire.request({ action: "header", stream, message: message ?? null }, "retry");
  }

  /**
   * Puts a message on a stream on the server.
   *
   * @param stream The stream's name.
   * @param message The message.
   * @returns The put's position: the stream's epoch and the put's seq.
   * @throws {ProtocolError} When the server refuses or the connection is lost.
   */
  async put(stream: string, message: unknown): Promise<Position> {
    if (message === undefined) throw new TypeError(`Cannot put on stream "${stream}": no message`);
    if (typeof message === "function" || typeof message === "symbol") {
      // As the hub refuses it: JSON has no form for it.
      throw new TypeError(`Cannot put on stream "${stream}": a ${typeof message} is not a message`);
    }
    const ok = await this.#wire.request({ action: "put", stream, message }, "reject");
    return { epoch: ok.epoch as string, seq: ok.seq as number };
  }

  /**
   * Lists one page of the server's streams, ordered by name: those a pattern matches (and the
   * token may listen to), after a cursor. Page on with the answer's `next` as `after` until
   * it is `null`.
   *
   * @param options The pattern (default `*`), the cursor `after`, and `limit` (default 100,
   * at most 1000).
   * @returns The page: each stream's name, epoch, seq, listeners and whether a header is set.
   * @throws {ProtocolError} When the server refuses (`invalid_pattern`, `invalid_frame`) or the
   * connection is lost.
   *
   * @example
   * ```ts ignore
   * let after: string | undefined;
   * do {
   *   const page = await remote.list({ pattern: "jobs.*", ...(after ? { after } : {}) });
   *   for (const s of page.streams) console.log(s.stream, s.seq);
   *   after = page.next ?? undefined;
   * } while (after);
   * ```
   */
  async list(options?: ListOptions): Promise<StreamPage> {
    const frame: Record<string, unknown> = { action: "list" };
    if (options?.pattern !== undefined) frame.pattern = options.pattern;
    if (options?.after !== undefined) frame.after = options.after;
    if (options?.limit !== undefined) frame.limit = options.limit;
    const ok = await this.#wire.request(frame, "retry");
    return {
      streams: Array.isArray(ok.streams) ? ok.streams as StreamListing[] : [],
      next: typeof ok.next === "string" ? ok.next : null,
    };
  }

  /**
   * Reads a stream's state on the server (header, position, and how many listeners follow it
   * there), without listening to it and without creating it.
   *
   * @param stream The stream's name.
   * @returns The stream's state, or `undefined` when the server has no such stream.
   * @throws {ProtocolError} When the server refuses (`forbidden`, `invalid_stream`, …) or the
   * connection is lost.
   *
   * @example
   * ```ts ignore
   * const stat = await remote.stat("job42");
   * if (stat) console.log(stat.seq, stat.header);
   * ```
   */
  async stat(stream: string): Promise<StreamStat | undefined> {
    const ok = await this.#wire.request({ action: "stat", stream }, "retry");
    const s = ok.stat as Omit<StreamStat, "stream"> | null | undefined;
    if (!s) return undefined;
    return {
      stream,
      header: s.header === undefined ? null : s.header,
      seq: s.seq,
      epoch: s.epoch,
      listeners: s.listeners,
    };
  }

  /**
   * Deletes a stream on the server; every listener gets an `end` event.
   *
   * @param stream The stream's name.
   * @throws {ProtocolError} When the server refuses or the connection is lost.
   */
  async delete(stream: string): Promise<void> {
    await this.#wire.request({ action: "delete", stream }, "retry");
  }

  /**
   * Delivers a stream's events to `queue`: the header first, then every later put. The
   * connection listens upstream once per stream, however many local queues follow it; a
   * second local queue gets the header this client last saw, then the same live events.
   *
   * @typeParam H The type of the stream's headers, as the listener expects them.
   * @typeParam M The type of the stream's put messages, as the listener expects them.
   * @param stream The stream's name.
   * @param queue The listener.
   * @param options Where to resume; applies when this client does not follow the stream yet.
   * @returns The stream's position when the queue joined.
   * @throws {TypeError} When `since` is not `{epoch: string, seq: non-negative integer}`.
   * @throws {ProtocolError} When the server refuses (`forbidden`, `invalid_stream`, …).
   */
  async listen<H = unknown, M = unknown>(
    stream: string,
    queue: Listener<H, M>,
    options?: ListenOptions,
  ): Promise<Position>;
  /**
   * Delivers the events of every stream a pattern matches to `queue` (see
   * `MessageStream.listen` with a pattern): per stream the header first, then every later
   * event; new streams are announced before their first put; `end` per stream. The connection
   * listens upstream once per pattern; after a reconnect it resumes each stream from the last
   * position delivered (the server sends `reset` for a stream whose history does not reach
   * back, `end` for one that went meanwhile).
   *
   * @typeParam H The type of the streams' headers, as the listener expects them.
   * @typeParam M The type of the streams' put messages, as the listener expects them.
   * @param target The pattern.
   * @param queue The listener.
   * @param options Where to resume, per stream; applies when this client does not follow the
   * pattern yet.
   * @returns The pattern and how many existing streams the server caught the listener up on.
   * @throws {ProtocolError} When the server refuses (`forbidden`, `invalid_pattern`, …).
   */
  async listen<H = unknown, M = unknown>(
    target: PatternTarget,
    queue: Listener<H, M>,
    options?: PatternListenOptions,
  ): Promise<PatternJoin>;
  async listen<H = unknown, M = unknown>(
    target: string | PatternTarget,
    queue: Listener<H, M>,
    options?: ListenOptions | PatternListenOptions,
  ): Promise<Position | PatternJoin> {
    if (typeof target === "object" && target !== null) {
      return await this.#listenPattern(
        target.pattern,
        queue as Listener,
        (options as PatternListenOptions | undefined)?.since,
      );
    }
    // Refused here with the hub's error, whether or not this client follows the stream yet.
    checkSince(target, (options as ListenOptions | undefined)?.since);
    return await this.#listenStream(target, queue, options as ListenOptions | undefined);
  }

  async #listenPattern(
    pattern: string,
    queue: Listener,
    since: Readonly<Record<string, Position>> | undefined,
  ): Promise<PatternJoin> {
    if (!queue || typeof queue.put !== "function") {
      throw new TypeError(`Cannot listen to pattern "${pattern}": the queue has no put method`);
    }
    const followed = this.#patterns.get(pattern);
    if (followed) {
      const added = !followed.queues.has(queue);
      if (added) {
        followed.queues.add(queue);
        queue.attached?.(this);
      }
      if (followed.waiters.length > 0) {
        const w = Promise.withResolvers<PatternJoin>();
        followed.waiters.push(w);
        return await w.promise;
      }
      // Joined upstream already: this queue gets each stream's header as last seen here.
      let streams = 0;
      for (const [stream, seen] of this.#patternStreams) {
        if (!matchPattern(pattern, stream)) continue;
        streams++;
        if (added) {
          this.#deliver(queue, this.#event(stream, "header", seen.header ?? null, seen.position));
        }
      }
      return { pattern, streams };
    }
    if (this.#closing) throw new ProtocolError("not_connected", "Client closed");
    for (const [stream, at] of Object.entries(since ?? {})) {
      if (!this.#patternStreams.has(stream)) {
        this.#patternStreams.set(stream, { header: undefined, position: at });
      }
    }
    const p: FollowedPattern = { pattern, queues: new Set([queue]), waiters: [] };
    const waiter = Promise.withResolvers<PatternJoin>();
    p.waiters.push(waiter);
    this.#patterns.set(pattern, p);
    queue.attached?.(this);
    this.#relistenPattern(p);
    return await waiter.promise;
  }

  async #listenStream<H = unknown, M = unknown>(
    stream: string,
    queue: Listener<H, M>,
    options?: ListenOptions,
  ): Promise<Position> {
    if (!queue || typeof queue.put !== "function") {
      throw new TypeError(`Cannot listen to stream "${stream}": the queue has no put method`);
    }
    if ((queue as { closed?: unknown }).closed === true) {
      throw new TypeError(`Cannot listen to stream "${stream}": the queue is closed`);
    }
    const followed = this.#streams.get(stream);
    if (followed) {
      if (followed.waiters.length > 0) {
        // The upstream join is under way: this queue gets its catch-up with the first one's,
        // and the same answer (or refusal).
        const w = Promise.withResolvers<Position>();
        followed.waiters.push(w);
        if (!followed.queues.has(queue)) {
          followed.queues.add(queue);
          queue.attached?.(this);
        }
        return await w.promise;
      }
      if (followed.queues.has(queue)) return followed.position ?? { epoch: "", seq: 0 };
      followed.queues.add(queue);
      queue.attached?.(this);
      if (followed.header !== undefined && followed.position) {
        this.#deliver(queue, this.#event(stream, "header", followed.header, followed.position));
      }
      return followed.position ?? { epoch: "", seq: 0 };
    }
    if (this.#closing) throw new ProtocolError("not_connected", "Client closed");
    const f: Followed = {
      queues: new Set([queue]),
      header: undefined,
      position: options?.since,
      waiters: [Promise.withResolvers()],
      existing: options?.create === false,
    };
    this.#streams.set(stream, f);
    queue.attached?.(this);
    const waiter = f.waiters[0] as PromiseWithResolvers<Position>;
    this.#relisten(stream, f, options?.since);
    return await waiter.promise;
  }

  /**
   * Stops delivering a stream's events to `queue`; the last local queue of a stream hangs up
   * upstream.
   *
   * @param stream The stream's name.
   * @param queue The listener.
   */
  hangup(stream: string, queue: Listener): void;
  /**
   * Stops a pattern listen of `queue`; the last local queue of a pattern hangs up upstream.
   *
   * @param target The pattern.
   * @param queue The listener.
   */
  hangup(target: PatternTarget, queue: Listener): void;
  hangup(target: string | PatternTarget, queue: Listener): void {
    if (typeof target === "object" && target !== null) return this.#hangupPattern(target, queue);
    const stream = target;
    const f = this.#streams.get(stream);
    if (!f || !f.queues.delete(queue)) return;
    if (f.queues.size === 0) {
      this.#streams.delete(stream);
      if (!this.#conn) return; // on reconnect, only followed streams are listened to again
      // Until the server answers, frames of the stream already under way are the old
      // subscription's: a listen made meanwhile must not get them (see #onEvent).
      const frame: Record<string, unknown> = { action: "hangup", stream };
      this.#wire.request(frame, "drop").catch(() => {});
      if (typeof frame.id === "number") {
        this.#hangups.set(frame.id, stream);
        this.#draining.set(stream, (this.#draining.get(stream) ?? 0) + 1);
      }
    }
  }

  #hangupPattern(target: PatternTarget, queue: Listener): void {
    const p = this.#patterns.get(target.pattern);
    if (!p || !p.queues.delete(queue) || p.queues.size > 0) return;
    this.#patterns.delete(target.pattern);
    // Forget where streams no other pattern follows are.
    for (const stream of this.#patternStreams.keys()) {
      if (!this.#patternMatched(stream)) this.#patternStreams.delete(stream);
    }
    if (this.#conn) {
      this.#wire.request({ action: "hangup", pattern: target.pattern }, "drop").catch(() => {});
    }
  }

  /** Whether a pattern this client follows matches the stream. */
  #patternMatched(stream: string): boolean {
    for (const p of this.#patterns.keys()) if (matchPattern(p, stream)) return true;
    return false;
  }

  /** The server answered a request: if it was a hangup, its stream's old frames are over. */
  #answered(id: unknown): void {
    const stream = this.#hangups.get(id as number);
    if (stream === undefined) return;
    this.#hangups.delete(id as number);
    const n = (this.#draining.get(stream) ?? 1) - 1;
    if (n > 0) this.#draining.set(stream, n);
    else this.#draining.delete(stream);
  }

  /**
   * Stops delivering every stream's events to `queue`.
   *
   * @param queue The listener.
   */
  endqueue(queue: Listener): void {
    for (const [stream, f] of this.#streams) {
      if (f.queues.has(queue)) this.hangup(stream, queue);
    }
    for (const [pattern, p] of this.#patterns) {
      if (p.queues.has(queue)) this.#hangupPattern({ pattern }, queue);
    }
  }

  /**
   * Closes the connection for good: tells the server, flushes, and ends every local
   * {@linkcode Inbox}. Safe to call more than once.
   */
  async close(): Promise<void> {
    if (this.#closing) return void await this.#closed.promise;
    this.#closing = true;
    clearInterval(this.#pingTimer);
    this.#backoff.clearRetries();
    this.#backoff.wake();
    const conn = this.#conn;
    if (conn) {
      this.#wire.send(encoder.encode('{"action":"close"}\n'));
      await this.#wire.drain();
      try {
        conn.close();
      } catch { /* closed */ }
    }
    await this.#reading?.catch(() => {});
    await this.#reconnecting?.catch(() => {});
    this.#finish(undefined);
  }

  /** Closes, for `await using`. */
  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }

  #finish(error: Error | undefined): void {
    this.#closing = true;
    this.#backoff.clearRetries();
    this.#conn = undefined;
    clearInterval(this.#pingTimer);
    const err = error ?? new ProtocolError("not_connected", "Client closed");
    this.#wire.fail(err);
    for (const f of this.#streams.values()) {
      for (const w of f.waiters.splice(0)) w.reject(err);
      // Every listener hears that the stream stopped, and why when it was a failure (an Inbox's
      // reader gets the error after its buffered events).
      for (const q of f.queues) closeQuietly(q, error);
    }
    this.#streams.clear();
    for (const p of this.#patterns.values()) {
      for (const w of p.waiters.splice(0)) w.reject(err);
      for (const q of p.queues) closeQuietly(q, error);
    }
    this.#patterns.clear();
    this.#patternStreams.clear();
    this.#final = error ? { type: "closed", error } : { type: "closed" };
    this.#emit(this.#final);
    this.#closed.resolve(error);
  }

  async #read(conn: Deno.Conn): Promise<void> {
    let error: Error | undefined;
    try {
      const lines = readLines(conn.readable, {
        maxLineBytes: this.#opts.maxLineBytes,
        fatal: false,
      });
      for await (const line of lines) {
        if (line.length > 0) this.#handle(line);
      }
    } catch (e) {
      error = e as Error;
    }
    if (this.#conn === conn) {
      this.#lost(error ?? new ProtocolError("not_connected", "Connection closed by the server"));
    }
  }

  #handle(line: string): void {
    this.#pingsOut = 0;
    let f: Record<string, unknown>;
    try {
      f = this.#opts.codec.decode(line) as Record<string, unknown>;
    } catch {
      // A message nested to the codec's depth limit is one level deeper inside its frame: the
      // hub accepts it, so take it as frameMessage() does rather than leave a gap.
      if (!(this.#opts.codec instanceof JsonCodec)) return; // the server only sends valid frames
      try {
        f = JSON.parse(line);
      } catch {
        return;
      }
    }
    if (!f || typeof f !== "object") return;
    const stream = f.stream as string;
    switch (f.action) {
      case "put":
        return this.#onEvent(stream, f.header === true ? "header" : "put", f);
      case "header":
        return this.#onEvent(stream, "header", f);
      case "delete":
        return this.#onEvent(stream, "end", f);
      case "reset":
        return this.#onEvent(stream, "reset", f);
      case "ok": {
        this.#answered(f.id);
        this.#wire.take(f.id)?.resolve(f);
        return;
      }
      case "error": {
        const err = new ProtocolError(
          (f.code as ErrorCode) ?? "internal",
          String(f.message ?? "Server error"),
          typeof stream === "string" ? stream : undefined,
        );
        if (f.id !== undefined) this.#answered(f.id);
        const p = f.id === undefined ? undefined : this.#wire.take(f.id);
        if (p) {
          p.reject(err);
        } else if (err.code === "slow_consumer") {
          this.#lost(err);
        }
        return;
      }
      case "ping":
        this.#wire.send(encoder.encode('{"action":"pong"}\n'));
        return;
      case "close":
        // The server is shutting down: reconnect (a restart) unless we are closing.
        if (this.#conn) {
          this.#lost(new ProtocolError("not_connected", "Server closed the connection"));
        }
        return;
    }
  }

  #onEvent(stream: string, kind: EventKind, f: Record<string, unknown>): void {
    if (this.#patterns.size > 0) this.#onPatternEvent(stream, kind, f);
    if (this.#draining.has(stream)) return; // sent before our hangup reached the server
    const followed = this.#streams.get(stream);
    if (!followed) return;
    const seq = typeof f.seq === "number" ? f.seq : 0;
    const epoch = typeof f.epoch === "string" ? f.epoch : "";
    const pos = followed.position;
    if (kind === "put" && pos && pos.epoch === epoch && seq !== 0 && seq <= pos.seq) {
      return; // already delivered (a replay overlapping what we had)
    }
    const message = f.message === undefined ? null : f.message;
    if (kind === "header") followed.header = message === null ? undefined : message;
    if (kind === "reset") followed.header = undefined;
    followed.position = { epoch, seq };
    const ev = this.#event(stream, kind, message, followed.position);
    if (kind === "end") this.#streams.delete(stream);
    // Only the queues of this moment: one that joins from inside another's put got the header
    // as of this event, so it must not get the event too.
    for (const q of [...followed.queues]) if (followed.queues.has(q)) this.#deliver(q, ev);
  }

  /**
   * An event of a stream that a followed pattern matches: to the queues of those patterns
   * (a queue that follows the stream by name too gets it from there, once).
   */
  #onPatternEvent(stream: string, kind: EventKind, f: Record<string, unknown>): void {
    const named = this.#streams.get(stream)?.queues;
    let queues: Set<Listener> | undefined;
    for (const p of this.#patterns.values()) {
      if (!matchPattern(p.pattern, stream)) continue;
      for (const q of p.queues) if (!named?.has(q)) (queues ??= new Set()).add(q);
    }
    if (!queues && !this.#patternMatched(stream)) return;
    const seq = typeof f.seq === "number" ? f.seq : 0;
    const epoch = typeof f.epoch === "string" ? f.epoch : "";
    let seen = this.#patternStreams.get(stream);
    const pos = seen?.position;
    if (kind === "put" && pos && pos.epoch === epoch && seq !== 0 && seq <= pos.seq) {
      return; // already delivered (a replay overlapping what we had)
    }
    const message = f.message === undefined ? null : f.message;
    const position = { epoch, seq };
    if (!seen) this.#patternStreams.set(stream, seen = { header: undefined, position });
    if (kind === "header") seen.header = message === null ? undefined : message;
    if (kind === "reset") seen.header = undefined;
    seen.position = position;
    if (kind === "end") this.#patternStreams.delete(stream);
    if (!queues) return;
    const ev = this.#event(stream, kind, message, position);
    for (const q of queues) this.#deliver(q, ev);
  }

  #event(stream: string, kind: EventKind, message: unknown, pos: Position): StreamEvent {
    return buildEvent(this.#opts.codec, kind, { name: stream }, message, pos.seq, pos.epoch, "own");
  }

  #deliver(q: Listener, ev: StreamEvent): void {
    try {
      q.put(ev);
    } catch (e) {
      this.endqueue(q);
      const error = e instanceof Error ? e : new Error(String(e));
      logListenerError(error, ev.stream);
      closeQuietly(q, error);
    }
  }

  /** The connection is gone: fail what is ambiguous, then reconnect or give up. */
  #lost(error: Error): void {
    const conn = this.#conn;
    if (!conn) return;
    this.#conn = undefined;
    clearInterval(this.#pingTimer);
    try {
      conn.close();
    } catch { /* closed */ }
    if (this.#closing) return;
    // Lost while saying hello: the attempt in #connect fails and its caller (connect() or the
    // reconnect loop already running) decides what next. Starting another loop here would
    // leave two loops opening two connections.
    const handshaking = this.#handshaking;
    // A new connection carries no frame of an old subscription.
    this.#hangups.clear();
    this.#draining.clear();
    if (!handshaking) this.#emit({ type: "disconnected", error });
    this.#wire.lost(error);
    if (!handshaking) {
      this.#reconnecting = this.#backoff.reconnect(
        error,
        () => this.#connect(),
        (st) => this.#emit(st),
        (e) => this.#finish(e),
      );
    }
  }
}

/** Tells a listener it will get nothing more (and why, on failure); its errors are its own. */
function closeQuietly(q: Listener, reason: Error | undefined): void {
  try {
    q.close?.(reason);
  } catch { /* a broken listener must not stop the others hearing */ }
}
