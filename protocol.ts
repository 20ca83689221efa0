/**
 * The wire protocol, shared by every door that speaks JSON frames (TCP lines, WebSocket
 * messages): one {@linkcode Session} per connection turns request frames into hub calls and
 * hub events into response frames. PROTOCOL.md describes every frame.
 *
 * @module
 */

import { type Auth, forbidden, forbiddenPattern, type Grant } from "./auth.ts";
import { LimitExceededError } from "./budget.ts";
import { type Codec, JsonCodec } from "./codec.ts";
import { type SyncHub, syncOf } from "./core.ts";
import { type EngineCore, engineCoreOf } from "./engine.ts";
import { MAX_PAGE } from "./pattern.ts";
import { pickNames } from "./listing.ts";
import { encodeFrame } from "./frame.ts";
import {
  type Engine,
  EngineUnavailableError,
  type Listener,
  type MessageStream,
  type Position,
  type StreamEvent,
  type StreamStat,
} from "./mod.ts";
import type { Metrics } from "./metrics.ts";

/** The stable codes of `error` frames. PROTOCOL.md says when each is sent. */
export type ErrorCode =
  | "invalid_json"
  | "invalid_utf8"
  | "invalid_frame"
  | "unknown_action"
  | "invalid_stream"
  | "missing_message"
  | "invalid_since"
  | "invalid_pattern"
  | "line_too_long"
  | "unauthorized"
  | "forbidden"
  | "slow_consumer"
  | "idle_timeout"
  | "engine_unavailable"
  | "storage_unavailable"
  | "message_too_large"
  | "not_found"
  | "not_connected"
  | "limit_exceeded"
  | "internal";

/**
 * Whether a line is blank: empty, or only JSON whitespace (space, tab, CR). Such lines are
 * keep-alives on every door.
 */
const PLAIN_PUT = '{"action":"put","stream":"';
const PLAIN_MESSAGE = '","message":"';
/** A backslash (an escape) or a control character: a line the plain-put scan leaves alone. */
// deno-lint-ignore no-control-regex -- control characters are what it looks for
const NOT_PLAIN = /[\\\x00-\x1f]/;

/**
 * Finds a put line of the plain shape `{"action":"put","stream":"S","message":"M"}` (those keys
 * in that order, no spaces, no `id`; S and M strings without escapes or control characters)
 * without the JSON parser: what publishers send most. Such a line is what a {@linkcode JsonCodec}
 * decodes to `{action: "put", stream: S, message: M}` (its depth is 1; its reviver leaves an
 * object without `".class"` as it is), and the message's JSON text is the slice from the index
 * returned to the line's last character (exclusive): `"M"`, byte for byte what the codec encodes
 * M to.
 *
 * @param line A request line, without its newline.
 * @returns The index of the message's opening quote, or -1 when the line is not of the plain
 * shape (it then takes the full decode).
 *
 * @example
 * ```ts
 * import { scanPlainPut } from "./protocol.ts";
 * import { assertEquals } from "@std/assert";
 *
 * const line = '{"action":"put","stream":"job","message":"50%"}';
 * const at = scanPlainPut(line);
 * assertEquals(line.slice(at, -1), '"50%"');
 * assertEquals(scanPlainPut('{"action":"put","stream":"job","message":"a\\"b"}'), -1);
 * ```
 */
export function scanPlainPut(line: string): number {
  if (!line.startsWith(PLAIN_PUT)) return -1;
  const end = line.length - 2;
  if (line.charCodeAt(end) !== 0x22 || line.charCodeAt(end + 1) !== 0x7d) return -1;
  const nameEnd = line.indexOf('"', PLAIN_PUT.length);
  if (nameEnd === -1 || !line.startsWith(PLAIN_MESSAGE, nameEnd)) return -1;
  const start = nameEnd + PLAIN_MESSAGE.length;
  // Exactly one quote left from the message's start: its closing one, the line's last but one.
  if (start > end || line.indexOf('"', start) !== end || NOT_PLAIN.test(line)) return -1;
  return start - 1;
}

/**
 * Reads a put line of the plain shape (see {@linkcode scanPlainPut}) without the JSON parser.
 *
 * @param line A request line, without its newline.
 * @returns The put frame, as a {@linkcode JsonCodec} decodes it, or `undefined` when the line is
 * not of the plain shape.
 *
 * @example
 * ```ts
 * import { decodePlainPut } from "./protocol.ts";
 * import { assertEquals } from "@std/assert";
 *
 * assertEquals(
 *   decodePlainPut('{"action":"put","stream":"job","message":"50%"}'),
 *   { action: "put", stream: "job", message: "50%" },
 * );
 * assertEquals(decodePlainPut('{"action":"put","stream":"job","message":"a\\"b"}'), undefined);
 * ```
 */
export function decodePlainPut(
  line: string,
): { action: "put"; stream: string; message: string } | undefined {
  const at = scanPlainPut(line);
  if (at === -1) return undefined;
  return { action: "put", stream: plainName(line, at), message: copy(line.slice(at + 1, -2)) };
}

/** The stream name of a plain put line whose message starts at `at`. */
function plainName(line: string, at: number): string {
  return copy(line.slice(PLAIN_PUT.length, at + 1 - PLAIN_MESSAGE.length));
}

/**
 * A copy of its own of a string, as JSON.parse gives: a slice would keep the whole read chunk's
 * text (the line is a slice of it) alive for as long as it is kept.
 */
function copy(s: string): string {
  return (" " + s).slice(1);
}

function blank(line: string): boolean {
  const n = line.length;
  if (n === 0) return true;
  const c = line.charCodeAt(0);
  // A frame starts with "{" (or garbage): only a leading whitespace character needs the scan.
  if (c !== 0x20 && c !== 0x09 && c !== 0x0d) return false;
  return /^[ \t\r]*$/.test(line);
}

/** An `error` frame's content, as an exception. */
export class ProtocolError extends Error {
  /** The stable error code. */
  readonly code: ErrorCode;
  /** The stream the failed request named, if any. */
  readonly stream: string | undefined;

  /**
   * Creates the error.
   *
   * @param code The stable error code.
   * @param message What went wrong, for people.
   * @param stream The stream the failed request named.
   * @param options Standard error options.
   */
  constructor(code: ErrorCode, message: string, stream?: string, options?: ErrorOptions) {
    super(message, options);
    this.name = "ProtocolError";
    this.code = code;
    this.stream = stream;
  }
}

/** What a session sends through. */
export interface Transport {
  /** Queues one encoded frame (ending with a newline) for sending. */
  send(frame: Uint8Array): void;
  /** Flushes what is queued, then closes. */
  close(): void;
  /**
   * Told when the session's {@linkcode Session.backlog} fell (requests answered): a door
   * re-reports what its connection holds.
   */
  backlogChanged?(): void;
}

/** Options of a {@linkcode Session}. */
export interface SessionOptions {
  /** Required tokens; without, every client may do everything. */
  auth?: Auth | undefined;
  /** Shared counters. */
  metrics?: Metrics | undefined;
  /**
   * A grant the door has already checked (a WebSocket upgrade's `Authorization: Bearer`): the
   * session starts authenticated, as after a `hello` with that token.
   */
  grant?: Grant | undefined;
}

/** A frame as an object, before encoding. */
export type Frame = Record<string, unknown>;

/**
 * One client connection's protocol state: it is the connection's listener on the hub, and it
 * answers the connection's request frames.
 */
export class Session implements Listener {
  readonly #hub: MessageStream;
  readonly #codec: Codec;
  /** Whether the codec is a JsonCodec: a put line of the plain shape skips its decode. */
  readonly #plainJson: boolean;
  readonly #transport: Transport;
  readonly #auth: Auth | undefined;
  readonly #metrics: Metrics | undefined;
  #grant: Grant | undefined;
  #closed = false;
  /**
   * A memory hub's synchronous calls (answered at once), or undefined for a hub with an engine
   * (promises, answered when they settle): see #put, #header, #delete, #listen, #statOf. Plain
   * methods that branch on it, not closures per session: an idle connection's session is small.
   */
  readonly #sync: SyncHub | undefined;
  /** A hub's engine core (see {@linkcode engineCoreOf}): a plain put line's text goes to it. */
  readonly #engine: EngineCore | undefined;
  #inflight = 0;
  #blocked = false;
  /** Requests waiting behind one in progress, each with its line's length. */
  #waiting: [Frame, unknown, number][] = [];
  /** The line lengths of the requests waiting or in flight (see backlog). */
  #backlog = 0;
  /** The door waiting for the backlog to fall (see backlogAtMost). */
  #room: { bytes: number; resolve: () => void } | undefined;
  /** Resolved when no request is in flight or waiting (see settled). */
  #idle: PromiseWithResolvers<void> | undefined;
  /**
   * Whether the peer has sent `hello` or `ping`, and so is expected to keep talking. A peer
   * that has not may be a client of the original protocol, whose reader takes `stream` from
   * every frame (a KeyError without it): frames sent to it unprompted (`close`, `ping`, an
   * `error` not about a stream) carry `"stream": null`.
   */
  live = false;
  /** Failed `hello`s on this connection (see {@linkcode MAX_FAILED_HELLOS}). */
  #failedHellos = 0;

  /**
   * Creates a session.
   *
   * @param hub The hub.
   * @param transport Where frames go.
   * @param options Auth and metrics.
   */
  constructor(hub: MessageStream, transport: Transport, options: SessionOptions = {}) {
    this.#hub = hub;
    this.#codec = hub.codec;
    this.#plainJson = hub.codec instanceof JsonCodec;
    this.#transport = transport;
    this.#auth = options.auth;
    this.#metrics = options.metrics;
    this.#grant = options.grant;
    this.#sync = syncOf(hub);
    this.#engine = engineCoreOf(hub);
  }

  /**
   * The requests this session holds that are not answered yet: waiting behind a request in
   * progress (a listen, a pattern join's catch-up, an engine call) or in flight to an engine, as
   * the characters of their lines. A door that reads faster than they are answered stops
   * reading past a bound (see {@linkcode Session.backlogAtMost}): backpressure on the peer.
   */
  get backlog(): number {
    return this.#backlog;
  }

  /**
   * Waits until {@linkcode Session.backlog} is at most `bytes` (or the session ends).
   *
   * @param bytes The bound.
   * @returns When it is, or `undefined` when it is now.
   */
  backlogAtMost(bytes: number): Promise<void> | undefined {
    if (this.#backlog <= bytes || this.#closed) return undefined;
    this.#room?.resolve();
    const wait = Promise.withResolvers<void>();
    this.#room = { bytes, resolve: wait.resolve };
    return wait.promise;
  }

  #checkRoom(): void {
    this.#transport.backlogChanged?.();
    const room = this.#room;
    if (room && (this.#backlog <= room.bytes || this.#closed)) {
      this.#room = undefined;
      room.resolve();
    }
  }

  /** Hub events go straight to the transport: the frame was encoded once by the hub. */
  put(event: StreamEvent): void {
    this.#transport.send(event.frame);
  }

  /** Whether the session has ended. */
  get closed(): boolean {
    return this.#closed;
  }

  /** Whether requests are allowed: no tokens are required, or a `hello` gave a grant. */
  get authorized(): boolean {
    return this.#auth === undefined || this.#grant !== undefined;
  }

  /** Sends one frame built here (a reply), encoded with the hub's codec. */
  send(frame: Frame): void {
    if (!this.#closed) this.#transport.send(encodeFrame(this.#codec, frame));
  }

  /** Sends an `error` frame; `extra` fields (a limit's name) go after `message`. */
  error(code: ErrorCode, message: string, id?: unknown, stream?: unknown, extra?: Frame): void {
    this.#metrics?.error(code);
    const frame: Frame = { action: "error", code, message, ...extra };
    if (id !== undefined) frame.id = id;
    if (typeof stream === "string") frame.stream = stream;
    this.send(typeof stream === "string" ? frame : unprompted(frame, this.live));
  }

  /**
   * Waits until every request handled so far has been answered. Without an engine requests are
   * answered as they are handled, so this is `undefined`; with one, a put's `ok` comes when the
   * engine has it, and a connection that ends must not close before.
   *
   * @returns When nothing is in flight, or `undefined` when nothing is now.
   */
  settled(): Promise<void> | undefined {
    if (this.#inflight === 0 && (this.#waiting.length === 0 || this.#closed)) return undefined;
    return (this.#idle ??= Promise.withResolvers()).promise;
  }

  /** Stops listening everywhere; sends `close` and closes the transport. */
  close(): void {
    if (this.#closed) return;
    this.#hub.endqueue(this);
    this.send(unprompted({ action: "close" }, this.live));
    this.#closed = true;
    this.#checkRoom();
    this.#transport.close();
  }

  /** Stops listening everywhere without sending anything (the peer is gone). */
  drop(): void {
    this.#closed = true;
    this.#checkRoom();
    this.#hub.endqueue(this);
  }

  /**
   * Handles one request frame's text. Never throws: every failure is answered with an
   * `error` frame.
   *
   * @param line The frame's text, without its newline.
   */
  handle(line: string): void {
    if (this.#closed) return;
    if (this.#metrics) this.#metrics.framesIn++;
    if (blank(line)) return; // blank (whitespace-only) lines are keep-alives
    if (this.#plainJson) {
      const at = scanPlainPut(line);
      if (at !== -1) {
        // Nothing ahead of it on a memory hub: put at once, the message's text as it came.
        const sync = this.#sync;
        if (sync && this.#waiting.length === 0 && !this.#blocked && this.#inflight === 0) {
          return this.#plainPut(line, at, sync);
        }
        // With an engine, puts go out at once when nothing waits: the text too.
        const engine = this.#engine;
        if (engine && this.#waiting.length === 0 && !this.#blocked) {
          return this.#plainEnginePut(line, at, engine);
        }
        const message = copy(line.slice(at + 1, -2));
        return this.#ordered(
          { action: "put", stream: plainName(line, at), message },
          undefined,
          line.length,
        );
      }
    }
    let frame: unknown;
    try {
      frame = this.#codec.decode(line);
    } catch (e) {
      this.error("invalid_json", `Cannot decode frame: ${(e as Error).message}`);
      return;
    }
    if (frame === null || typeof frame !== "object" || Array.isArray(frame)) {
      this.error("invalid_frame", 'A frame must be an object with an "action"');
      return;
    }
    const f = frame as Frame;
    const id = f.id;
    if (id !== undefined && typeof id !== "string" && typeof id !== "number") {
      this.error("invalid_frame", 'Field "id" must be a string or a number');
      return;
    }
    this.#ordered(f, id, line.length);
  }

  /**
   * A plain put line (see {@linkcode scanPlainPut}) on a memory hub: the checks of `put`, then the
   * hub's put with the message's JSON text sliced from the line, so that the frame is built
   * without decoding a frame object or encoding the message again.
   */
  #plainPut(line: string, at: number, sync: SyncHub): void {
    const name = plainName(line, at);
    try {
      const stream = this.#plainStream(name);
      // The message's copy is the event's (an in-process listener may keep it); the JSON text
      // is only spliced into the frame, so a slice of the line will do.
      sync.putNow(stream, copy(line.slice(at + 1, -2)), line.slice(at, -1));
    } catch (e) {
      this.#fail(e, undefined, name);
    }
  }

  /**
   * A plain put line (see {@linkcode scanPlainPut}) on a hub with an engine: the checks of
   * `put`, then the engine core's put with the message's JSON text sliced from the line, so that
   * the node neither decodes the frame nor encodes the message for the engine. The line has no
   * `id`: nothing is answered unless it fails.
   */
  #plainEnginePut(line: string, at: number, engine: EngineCore): void {
    const name = plainName(line, at);
    try {
      const stream = this.#plainStream(name);
      // Neither slice is kept past the put's batch: the node keeps nothing of a put's message
      // (its event comes back from the engine).
      const done = engine.put(stream, line.slice(at + 1, -2), line.slice(at, -1));
      this.#track(done, undefined, name, line.length, false);
    } catch (e) {
      this.#fail(e, undefined, name);
    }
  }

  #run(f: Frame, id: unknown, size = 0): void {
    try {
      const done = this.#dispatch(f, id);
      if (done) this.#track(done, id, f.stream, size, f.action === "listen");
    } catch (e) {
      this.#fail(e, id, f.stream);
    }
  }

  /**
   * An engine request: counts it until it settles (a barrier holds back what comes after it),
   * then lets waiting frames go.
   */
  #track(
    done: Promise<unknown>,
    id: unknown,
    stream: unknown,
    size: number,
    barrier: boolean,
  ): void {
    this.#inflight++;
    this.#backlog += size;
    if (barrier) this.#blocked = true;
    const settled = () => {
      this.#inflight--;
      this.#backlog -= size;
      if (barrier) this.#blocked = false;
      this.#drain();
      this.#checkRoom();
      if (this.#idle && this.#inflight === 0 && (this.#waiting.length === 0 || this.#closed)) {
        this.#idle.resolve();
        this.#idle = undefined;
      }
    };
    // One reaction per request, not catch then finally.
    done.then(settled, (e) => {
      this.#fail(e, id, stream);
      settled();
    });
  }

  #fail(e: unknown, id: unknown, stream: unknown): void {
    if (e instanceof ProtocolError) this.error(e.code, e.message, id, e.stream ?? stream);
    else if (e instanceof LimitExceededError) {
      // Only the requester is told: nothing was kept, and nobody else is affected.
      this.#metrics?.limitExceeded(e.limit);
      this.error("limit_exceeded", e.message, id, stream, { limit: e.limit });
    } else if (e instanceof EngineUnavailableError) {
      this.error("engine_unavailable", e.message, id, stream);
    } else if (e instanceof Error && e.name === "StorageUnavailableError") {
      this.error("storage_unavailable", e.message, id, stream);
    } else if (e instanceof Error && e.name === "MessageTooLargeError") {
      this.error("message_too_large", e.message, id, stream);
    } else this.error("internal", `Cannot handle frame: ${(e as Error).message}`, id, stream);
  }

  /**
   * Takes a decoded request. Requests keep the connection's order (in memory too a request can
   * take more than one turn: a pattern listen's catch-up yields): with an engine, puts, headers and deletes go out to
   * the engine at once (it keeps their order), anything else waits for what came before it; a
   * listen (in memory, a pattern's, whose catch-up yields) holds back everything after it.
   */
  #ordered(f: Frame, id: unknown, size: number): void {
    if (this.#waiting.length > 0 || this.#blocked || (this.#inflight > 0 && !isWrite(f))) {
      this.#waiting.push([f, id, size]);
      this.#backlog += size;
      return;
    }
    this.#run(f, id, size);
  }

  #drain(): void {
    while (this.#waiting.length > 0 && !this.#blocked && !this.#closed) {
      const [f, id, size] = this.#waiting[0]!;
      if (this.#inflight > 0 && !isWrite(f)) return;
      this.#waiting.shift();
      this.#backlog -= size;
      this.#run(f, id, size);
    }
  }

  #dispatch(f: Frame, id: unknown): void | Promise<unknown> {
    const action = f.action;
    if (action === "hello") {
      this.live = true;
      return this.#hello(f, id);
    }
    if (action === "ping") {
      this.live = true;
      const pong: Frame = { action: "pong" };
      if (id !== undefined) pong.id = id;
      return this.send(pong);
    }
    if (action === "pong") return; // any frame is a sign of life; nothing to answer
    this.#requireGrant();
    switch (action) {
      case "put": {
        const stream = this.#stream(f, "publish");
        if (!("message" in f) || f.message === undefined) {
          // The original client leaves out a falsy message (0, "", [], {}, false, null) and its
          // server read the absence as None: a peer of that protocol (not live) puts null, as
          // it always did. A peer that said hello or ping must send the message it means.
          if (this.live) {
            throw new ProtocolError("missing_message", 'A "put" needs a "message"', stream);
          }
          return this.#put(stream, null, id);
        }
        return this.#put(stream, f.message, id);
      }
      case "header":
        return this.#header(this.#stream(f, "publish"), f.message ?? null, id);
      case "delete":
        return this.#delete(this.#stream(f, "publish"), id);
      case "listen": {
        if (f.pattern !== undefined) return this.#listenPattern(f, id);
        const stream = this.#stream(f, "subscribe");
        const since = f.since === undefined || f.since === null
          ? undefined
          : parseSince(f.since, stream);
        if (f.create === false) {
          // Only an existing stream: one that is gone (deleted, lost in a restart) is not made
          // anew, and the client hears so at once.
          const sync = syncOf(this.#hub);
          const gone = () => new ProtocolError("not_found", `No stream "${stream}"`, stream);
          if (sync) {
            if (!sync.statNow(stream)) throw gone();
          } else {
            return this.#hub.stat(stream).then((st) => {
              if (!st) throw gone();
              return this.#listen(stream, since, id);
            });
          }
        }
        // The reply follows the catch-up events (header or replay): its position is the join's.
        return this.#listen(stream, since, id);
      }
      case "stat":
        return this.#statOf(this.#stream(f, "subscribe"), id);
      case "hangup": {
        if (f.pattern !== undefined) {
          const pattern = this.#pattern(f, false);
          this.#hub.hangup({ pattern }, this);
          if (id !== undefined) this.send({ action: "ok", id, pattern });
          return;
        }
        const stream = this.#stream(f, undefined);
        this.#hub.hangup(stream, this);
        return this.#ok(id, stream);
      }
      case "list":
        return this.#list(f, id);
      case "endqueue":
        this.#hub.endqueue(this);
        return this.#ok(id);
      case "close":
        this.#ok(id);
        return this.close();
      default:
        throw new ProtocolError(
          "unknown_action",
          typeof action === "string"
            ? `Unknown action "${action.slice(0, 64)}"`
            : 'Field "action" must be a string',
        );
    }
  }

  /** A put: answered at once on a memory hub, when it settles with an engine. */
  #put(stream: string, message: unknown, id: unknown): void | Promise<unknown> {
    const sync = this.#sync;
    if (sync) {
      const at = sync.putNow(stream, message);
      if (id !== undefined) this.#position(id, stream, at);
      return;
    }
    const done = this.#hub.put(stream, message);
    if (id === undefined) return done; // nothing to answer: no reaction of its own
    return done.then((at) => this.#position(id, stream, at));
  }

  /** A header change. */
  #header(stream: string, message: unknown, id: unknown): void | Promise<void> {
    const sync = this.#sync;
    if (sync) {
      sync.setHeader(stream, message);
      return this.#ok(id, stream);
    }
    return this.#hub.header(stream, message).then(() => this.#ok(id, stream));
  }

  /** A delete. */
  #delete(stream: string, id: unknown): void | Promise<void> {
    const sync = this.#sync;
    if (sync) {
      sync.deleteNow(stream);
      return this.#ok(id, stream);
    }
    return this.#hub.delete(stream).then(() => this.#ok(id, stream));
  }

  /** A listen by name; the answer follows the catch-up events. */
  #listen(stream: string, since: Position | undefined, id: unknown): void | Promise<void> {
    const sync = this.#sync;
    if (sync) {
      const at = sync.listenNow(stream, this, since);
      if (id !== undefined) {
        const ok = { action: "ok", id, stream, seq: at.seq, epoch: at.epoch };
        this.#transport.send(encodeFrame(this.#codec, ok));
      }
      return;
    }
    return this.#hub.listen(stream, this, since ? { since } : undefined).then((at) => {
      if (id !== undefined) this.#position(id, stream, at);
    });
  }

  /** A stat. */
  #statOf(stream: string, id: unknown): void | Promise<void> {
    const sync = this.#sync;
    if (sync) return this.#stat(id, stream, sync.statNow(stream));
    return this.#hub.stat(stream).then((stat) => this.#stat(id, stream, stat));
  }

  /** Answers a put or a listen with a position. */
  #position(id: unknown, stream: string, at: Position): void {
    this.send({ action: "ok", id, stream, seq: at.seq, epoch: at.epoch });
  }

  /** Answers a stat: the stream's state, or `null` when there is no such stream. */
  #stat(id: unknown, stream: string, stat: StreamStat | undefined): void {
    if (id === undefined) return;
    const found = stat === undefined
      ? null
      : { header: stat.header, seq: stat.seq, epoch: stat.epoch, listeners: stat.listeners };
    this.send({ action: "ok", id, stream, stat: found });
  }

  #ok(id: unknown, stream?: string): void {
    if (id === undefined) return;
    const frame: Frame = { action: "ok", id };
    if (stream !== undefined) frame.stream = stream;
    this.send(frame);
  }

  #hello(f: Frame, id: unknown): void {
    if (this.#auth) {
      const token = f.token;
      const grant = typeof token === "string" ? this.#auth.check(token) : undefined;
      // A failed hello drops any earlier grant: the connection is unauthorized again.
      this.#grant = grant;
      if (!grant) {
        const why = typeof token === "string" && token !== ""
          ? "Invalid token"
          : 'A token is required: send "hello" with "token"';
        // Guessing is bounded: the connection goes after MAX_FAILED_HELLOS failures.
        if (++this.#failedHellos >= MAX_FAILED_HELLOS) {
          this.error("unauthorized", `${why}: ${MAX_FAILED_HELLOS} failed hellos, closing`, id);
          this.close();
          return;
        }
        throw new ProtocolError("unauthorized", why);
      }
    }
    if (id !== undefined) this.send({ action: "ok", id, version: PROTOCOL_VERSION });
  }

  /**
   * A pattern listen: every stream the pattern matches, now and later. The `ok` follows every
   * existing stream's catch-up and says how many there were.
   */
  #listenPattern(f: Frame, id: unknown): Promise<void> {
    const pattern = this.#pattern(f, true);
    let since: Record<string, Position> | undefined;
    if (f.since !== undefined && f.since !== null) {
      if (typeof f.since !== "object" || Array.isArray(f.since)) {
        throw new ProtocolError(
          "invalid_since",
          'Field "since" of a pattern listen must be an object of stream names to ' +
            '{"epoch": string, "seq": non-negative integer}',
        );
      }
      since = {};
      for (const [name, at] of Object.entries(f.since as Record<string, unknown>)) {
        since[name] = parseSince(at, name);
      }
    }
    return this.#hub.listen({ pattern }, this, since ? { since } : undefined).then((join) => {
      if (id !== undefined) this.send({ action: "ok", id, pattern, streams: join.streams });
    });
  }

  /**
   * One page of the streams the hub holds, ordered by name: those `pattern` matches (every
   * stream without one) and the token may listen to, after the cursor `after`, at most
   * `limit` (default 100, at most 1000). With an engine, every stream the engine holds.
   */
  #list(f: Frame, id: unknown): void | Promise<void> {
    const pattern = f.pattern === undefined ? "*" : this.#pattern(f, false);
    const after = f.after;
    if (after !== undefined && after !== null && typeof after !== "string") {
      throw new ProtocolError("invalid_frame", 'Field "after" must be a stream name');
    }
    const limit = f.limit ?? 100;
    if (typeof limit !== "number" || !Number.isInteger(limit) || limit < 1 || limit > MAX_PAGE) {
      throw new ProtocolError(
        "invalid_frame",
        `Field "limit" must be an integer from 1 to ${MAX_PAGE}`,
      );
    }
    const engine = this.#hub.engine;
    if (engine?.streams) {
      return this.#listEngine(
        engine,
        pattern,
        limit,
        typeof after === "string" ? after : undefined,
        id,
      );
    }
    // One pass over the hub's names, no object per stream; only the page's streams are looked
    // up (listing.ts, the rule of GET /streams too).
    const grant = this.#grant;
    const { names, more } = pickNames(this.#hub.names(), {
      pattern,
      limit,
      ...(typeof after === "string" ? { after } : {}),
      ...(grant ? { allow: (name: string) => grant.subscribe(name) } : {}),
    });
    const streams = [];
    for (const stream of names) {
      const s = this.#hub.info(stream);
      if (!s) continue;
      streams.push({
        stream,
        epoch: s.epoch,
        seq: s.seq,
        listeners: s.listeners,
        header: s.hasHeader,
      });
    }
    const next = more ? names.at(-1) as string : null;
    if (id !== undefined) this.send({ action: "ok", id, streams, next });
  }

  /**
   * `list` with an engine: the streams the engine holds, wherever they were made (one pass over
   * its listing, e.g. Redis' `SCAN`), the page's streams read with `stat`; `listeners` counts
   * this node's.
   */
  async #listEngine(
    engine: Engine,
    pattern: string,
    limit: number,
    after: string | undefined,
    id: unknown,
  ): Promise<void> {
    const all = new Set<string>();
    for await (const page of engine.streams!(pattern)) for (const name of page) all.add(name);
    const grant = this.#grant;
    const { names, more } = pickNames(all, {
      pattern,
      limit,
      ...(after !== undefined ? { after } : {}),
      ...(grant ? { allow: (name: string) => grant.subscribe(name) } : {}),
    });
    const stats = await Promise.all(names.map((name) => engine.stat(name)));
    const streams = [];
    for (let i = 0; i < names.length; i++) {
      const stream = names[i] as string;
      const st = stats[i];
      if (!st) continue; // deleted meanwhile
      streams.push({
        stream,
        epoch: st.epoch,
        seq: st.seq,
        listeners: this.#hub.info(stream)?.listeners ?? 0,
        header: st.header !== undefined,
      });
    }
    const next = more ? names.at(-1) as string : null;
    if (id !== undefined) this.send({ action: "ok", id, streams, next });
  }

  /** The `pattern` field of a listen or hangup, checked (and, to listen, authorized). */
  #pattern(f: Frame, listen: boolean): string {
    const pattern = f.pattern;
    const max = this.#hub.maxStreamNameLength;
    if (f.stream !== undefined) {
      throw new ProtocolError("invalid_frame", 'Give "stream" or "pattern", not both');
    }
    if (
      typeof pattern !== "string" || pattern.length === 0 || pattern.length > max ||
      !pattern.isWellFormed()
    ) {
      throw new ProtocolError(
        "invalid_pattern",
        `Field "pattern" must be a non-empty, well-formed string of at most ${max} characters`,
      );
    }
    if (listen && this.#grant && !this.#grant.subscribePattern(pattern)) {
      throw new ProtocolError("forbidden", forbiddenPattern(pattern));
    }
    return pattern;
  }

  #stream(f: Frame, right: "publish" | "subscribe" | undefined): string {
    return this.#streamName(f.stream, right);
  }

  /** A request's stream name, checked (and authorized for `right`). */
  /** With tokens, a request before a good `hello` is `unauthorized`. */
  #requireGrant(): void {
    if (this.#auth && !this.#grant) {
      throw new ProtocolError("unauthorized", 'Send "hello" with a valid token first');
    }
  }

  /** A plain put line's stream: the checks of `put` (grant, name, publish right). */
  #plainStream(name: unknown): string {
    this.#requireGrant();
    return this.#streamName(name, "publish");
  }

  #streamName(stream: unknown, right: "publish" | "subscribe" | undefined): string {
    const max = this.#hub.maxStreamNameLength;
    if (typeof stream !== "string" || stream.length === 0 || stream.length > max) {
      throw new ProtocolError(
        "invalid_stream",
        `Field "stream" must be a non-empty string of at most ${max} characters`,
      );
    }
    if (!stream.isWellFormed()) {
      throw new ProtocolError(
        "invalid_stream",
        'Field "stream" must be well-formed Unicode: it has a lone surrogate',
      );
    }
    if (right && this.#grant && !this.#grant[right](stream)) {
      throw new ProtocolError("forbidden", forbidden(right, stream), stream);
    }
    return stream;
  }
}

/**
 * A frame the server sends on its own (not an answer about a stream: `close`, `ping`, some
 * `error`s), made safe for a peer that may be a client of the original protocol: such a peer
 * (one that has not said `hello` or `ping`, see {@linkcode Session.live}) reads `stream` from
 * every frame, so it gets `"stream": null`.
 *
 * @param frame The frame.
 * @param live Whether the peer has said `hello` or `ping`.
 * @returns The frame, with `"stream": null` for a peer that is not live.
 */
export function unprompted(frame: Frame, live: boolean): Frame {
  return live ? frame : { ...frame, stream: null };
}

function isWrite(f: Frame): boolean {
  return f.action === "put" || f.action === "header" || f.action === "delete";
}

function parseSince(since: unknown, stream: string): Position {
  const s = since as Record<string, unknown>;
  if (
    typeof s !== "object" || typeof s.epoch !== "string" || typeof s.seq !== "number" ||
    !Number.isSafeInteger(s.seq) || s.seq < 0
  ) {
    throw new ProtocolError(
      "invalid_since",
      'Field "since" must be {"epoch": string, "seq": non-negative integer}',
      stream,
    );
  }
  return { epoch: s.epoch, seq: s.seq };
}

/**
 * How many failed `hello`s a connection may send: the last is answered `unauthorized` and the
 * connection is closed, so one connection cannot guess tokens at the speed of the loop.
 */
export const MAX_FAILED_HELLOS = 16;

/** The protocol version this implementation speaks, sent in `ok` to `hello`. */
export const PROTOCOL_VERSION = 1;
