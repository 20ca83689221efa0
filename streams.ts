/**
 * What both hub cores share, split out of `core.ts`: one stream's state ({@linkcode StreamState}),
 * the {@linkcode Core} interface a hub delegates to, the client limits, the errors a core throws,
 * and the listener registry with fanout and delivery ({@linkcode Streams}). The memory core
 * (`MemoryCore`, in `core.ts`) and the engine core (`EngineCore`, in `engine.ts`) extend
 * {@linkcode Streams}. Internal: `core.ts` re-exports every name here.
 *
 * @module
 */

import {
  type BudgetSource,
  FOLLOW_COST,
  HEADER_COST_FACTOR,
  LimitExceededError,
  LISTEN_COST,
  MemoryBudget,
  PATTERN_COST,
  streamCost,
} from "./budget.ts";
import { type Codec, JsonCodec } from "./codec.ts";
import { buildEvent } from "./frame.ts";
import type { History } from "./history.ts";
import { checkPattern, PatternFollows } from "./pattern.ts";
import type {
  Detachable,
  EventKind,
  HubStats,
  Listener,
  PatternJoin,
  Position,
  StreamEvent,
  StreamInfo,
  StreamStat,
} from "./types.ts";

/** One stream's state, as both cores keep it. */
export class StreamState {
  /** The stream's name. */
  readonly name: string;
  /** The stream's epoch. */
  epoch: string;
  /** The seq of its last put. */
  seq = 0;
  /** The current header's message, or undefined when none is set. */
  header: unknown = undefined;
  /** The join event for the current header at the current seq, built on demand. */
  joinEvent: StreamEvent | undefined = undefined;
  /** Its listeners. */
  readonly listeners: Set<Listener> = new Set();
  /** The name as JSON text, made on the first event (see frame.ts). */
  jsonName: string | undefined = undefined;
  /** Nesting depth of fanouts in progress on this stream. */
  fanning = 0;
  /** Listeners that joined during a fanout: they got the header as of it, not the event. */
  joinedDuringFanout: Set<Listener> | undefined = undefined;
  /** What its header costs in the memory budget (see budget.ts); 0 without one. */
  headerCost = 0;
  /** Queues that follow it through a pattern (see pattern.ts), caught up. */
  patternQueues: ReadonlySet<Listener> | undefined = undefined;
  /** The memory core's expiry sweep count when it was last used (see `expireAfter`). */
  touched = 0;

  /**
   * Creates the state of a stream.
   *
   * @param name The stream's name.
   * @param epoch Its epoch.
   */
  constructor(name: string, epoch: string) {
    this.name = name;
    this.epoch = epoch;
  }
}

/**
 * The streams a core holds, by name: a `Map` that keeps what they cost in the memory budget
 * (each its {@linkcode streamCost}) as they are added and removed.
 */
export class StreamMap<S> extends Map<string, S> {
  /** The sum of the held streams' {@linkcode streamCost}. */
  bytes = 0;

  /**
   * Adds or replaces a stream.
   *
   * @param name Its name.
   * @param state Its state.
   * @returns This map.
   */
  override set(name: string, state: S): this {
    if (!super.has(name)) this.bytes += streamCost(name);
    return super.set(name, state);
  }

  /**
   * Removes a stream.
   *
   * @param name Its name.
   * @returns Whether it was held.
   */
  override delete(name: string): boolean {
    if (!super.delete(name)) return false;
    this.bytes -= streamCost(name);
    return true;
  }

  /** Removes every stream. */
  override clear(): void {
    super.clear();
    this.bytes = 0;
  }
}

/** What a hub delegates to: the memory core or the engine core. */
export interface Core {
  /** Most bytes of a put's or header's message as encoded. */
  maxMessage: number;
  /** Told when a listener threw (and was removed). */
  onListenerError: (error: unknown, stream: string) => void;
  /** Sets or clears a header. */
  header(stream: string, message: unknown): Promise<void>;
  /** Puts a message. */
  put(stream: string, message: unknown): Promise<Position>;
  /** Deletes a stream. */
  delete(stream: string): Promise<void>;
  /** Starts listening. */
  listen(stream: string, queue: Listener, since: Position | undefined): Promise<Position>;
  /** Stops listening to one stream. */
  hangup(stream: string, queue: Listener): void;
  /** Starts listening to every stream a pattern matches. */
  listenPattern(
    pattern: string,
    queue: Listener,
    since: Readonly<Record<string, Position>> | undefined,
  ): Promise<PatternJoin>;
  /** Stops listening to a pattern. */
  hangupPattern(pattern: string, queue: Listener): void;
  /** Stops listening to every stream. */
  endqueue(queue: Listener): void;
  /** A stream's state, without creating it. */
  stat(stream: string): Promise<StreamStat | undefined>;
  /** What the hub holds of a stream. */
  info(stream: string): StreamInfo | undefined;
  /** Every stream the hub holds. */
  list(): StreamInfo[];
  /** The names of the streams held, live, in creation order (no copy). */
  names(): IterableIterator<string>;
  /** Totals. */
  stats(): HubStats;
  /** Releases the core's resources. */
  close(): Promise<void>;
  /** Removes streams with no listeners and no puts for `ms` milliseconds (0: never). */
  expireAfter?(ms: number): void;
  /** Sets the limits on what clients may make the core keep (the hub does, once). */
  setLimits(limits: ClientLimits): void;
}

/** The limits on what clients may make a hub keep (see budget.ts and docs/limits.md). */
export interface ClientLimits {
  /** Most streams held. */
  readonly maxStreams: number;
  /** Largest header, as the bytes of its event frame. */
  readonly maxHeaderBytes: number;
  /** Most streams one listener follows. */
  readonly maxListens: number;
  /** The memory budget. */
  readonly memory: MemoryBudget;
}

const NO_LIMITS: ClientLimits = {
  maxStreams: Infinity,
  maxHeaderBytes: Infinity,
  maxListens: Infinity,
  memory: new MemoryBudget(Number.MAX_SAFE_INTEGER),
};

/**
 * The default bound on a put's or header's message, as its codec encodes it: 1 MiB less 4 KiB.
 * The 4 KiB hold the event's envelope (action, stream name, seq, epoch), so every event frame
 * stays within 1 MiB: a WebSocket client's default frame limit, the TCP door's default line limit
 * and the HTTP door's default body limit.
 */
export const DEFAULT_MAX_MESSAGE_BYTES: number = (1 << 20) - 4096;

const utf8 = new TextEncoder();

/**
 * Thrown (code `not_found` on the wire) by a `listen` with `create: false` when the stream does
 * not exist.
 */
export class StreamNotFoundError extends Error {
  /** The stream's name. */
  readonly stream: string;

  /**
   * Creates the error.
   *
   * @param stream The stream's name.
   */
  constructor(stream: string) {
    super(`No stream "${stream.slice(0, 100)}": not created, as asked (create: false)`);
    this.name = "StreamNotFoundError";
    this.stream = stream;
  }
}

/**
 * Thrown (and answered with code `message_too_large` on every door) when a put's or header's
 * message, as the codec encodes it, is larger than the hub's `maxMessageBytes`.
 */
export class MessageTooLargeError extends Error {
  /** The stream the message was for. */
  readonly stream: string;
  /** The message's size in bytes, as encoded. */
  readonly size: number;
  /** The limit in bytes. */
  readonly limit: number;

  /**
   * Creates the error.
   *
   * @param stream The stream the message was for.
   * @param size The message's encoded size in bytes.
   * @param limit The limit in bytes.
   */
  constructor(stream: string, size: number, limit: number) {
    super(
      `Cannot put on stream "${stream.slice(0, 100)}": the message is ${size} bytes, ` +
        `the limit is ${limit}`,
    );
    this.name = "MessageTooLargeError";
    this.stream = stream;
    this.size = size;
    this.limit = limit;
  }
}

/**
 * The default report of a listener that threw: one line on stderr.
 *
 * @param error What it threw.
 * @param stream The stream whose event it was given.
 */
export function logListenerError(error: unknown, stream: string): void {
  const why = error instanceof Error ? error.message : String(error);
  // deno-lint-ignore no-console
  console.error(
    `msgstream: a listener of stream "${stream.slice(0, 100)}" threw and was removed: ${why}`,
  );
}

/**
 * Refuses a resume position that is not `{epoch: string, seq: non-negative integer}`, as the
 * wire refuses it (`invalid_since`): one the hub cannot compare would join without a reset.
 *
 * @param stream The stream's name, for the message.
 * @param since The position given, or `undefined` for none.
 * @throws {TypeError} When `since` is given and is not such a position.
 */
export function checkSince(stream: string, since: unknown): void {
  if (since === undefined) return;
  const s = since as { epoch?: unknown; seq?: unknown } | null;
  if (
    s === null || typeof s !== "object" || typeof s.epoch !== "string" ||
    typeof s.seq !== "number" || !Number.isSafeInteger(s.seq) || s.seq < 0
  ) {
    throw new TypeError(
      `Cannot listen to stream "${String(stream).slice(0, 100)}": since must be ` +
        "{epoch: string, seq: non-negative integer}",
    );
  }
}

/**
 * What both cores share: the streams by name, who follows what, fanout and delivery. Delivery is
 * synchronous; a listener that throws is removed from every stream.
 */
export abstract class Streams<S extends StreamState> implements Core {
  /** The codec of every frame. */
  readonly codec: Codec;
  /** The longest stream name accepted. */
  readonly maxName: number;
  /** Most bytes of a put's or header's message as encoded (set by the hub). */
  maxMessage: number = DEFAULT_MAX_MESSAGE_BYTES;
  /** Told when a listener threw and was removed (set by the hub). */
  onListenerError: (error: unknown, stream: string) => void = logListenerError;
  /** The streams held, by name. */
  protected readonly streams: StreamMap<S> = new StreamMap();
  /** The streams each listener follows. */
  protected readonly following: WeakMap<Listener, Set<S>> = new WeakMap();
  /** Listener registrations over all streams. */
  protected listenerCount = 0;
  /** Events handed to listeners. */
  protected deliveries = 0;
  /** Puts accepted. */
  protected puts = 0;
  /** What listeners are told they follow (`attached`): the hub. */
  readonly #source: Detachable;
  /** The limits on what clients may make the core keep (see {@linkcode Streams.setLimits}). */
  protected limits: ClientLimits = NO_LIMITS;
  /** The pattern listeners. */
  protected readonly patterns: PatternFollows<S>;

  /**
   * Creates an empty core.
   *
   * @param codec The codec of every frame.
   * @param maxName The longest stream name accepted.
   * @param source The hub, handed to each listener's `attached`.
   */
  constructor(codec: Codec, maxName: number, source: Detachable) {
    this.codec = codec;
    this.maxName = maxName;
    this.#source = source;
    this.patterns = new PatternFollows<S>({
      codec,
      current: (name) => this.streams.get(name),
      snapshot: () => this.streams.values(),
      catchUp: (state, queue, since) => this.catchUp(state, queue, since),
      deliver: (queue, ev) => this.deliver(queue, ev),
      attached: (queue) => queue.attached?.(source),
      admitFollow: (pattern) =>
        this.limits.memory.admit(
          FOLLOW_COST,
          `Cannot listen to pattern "${pattern.slice(0, 100)}"`,
        ),
    });
  }

  listenPattern(
    pattern: string,
    queue: Listener,
    since: Readonly<Record<string, Position>> | undefined,
  ): Promise<PatternJoin> {
    try {
      checkPattern(pattern, this.maxName);
      this.checkQueue(pattern, queue);
      if (!this.patterns.has(pattern, queue)) this.admitPattern(pattern, queue);
      return this.patterns.listen(pattern, queue, since);
    } catch (e) {
      return Promise.reject(e);
    }
  }

  hangupPattern(pattern: string, queue: Listener): void {
    this.patterns.hangup(pattern, queue);
  }

  /**
   * Catches a pattern listener up on one stream: the header, `null` when none is set (a
   * pattern listener learns every stream's position). Cores with history also resume.
   */
  protected catchUp(state: S, queue: Listener, _since: Position | undefined): boolean {
    return this.deliverJoin(queue, state);
  }

  /**
   * The header as a pattern listener gets it at its join, sent even when none is set (`null`).
   * Built in the slab and not cached: a catch-up over many streams keeps nothing per stream.
   */
  protected deliverJoin(queue: Listener, state: S): boolean {
    const header = state.header === undefined ? null : state.header;
    const ev = buildEvent(this.codec, "header", state, header, state.seq, state.epoch, "join-slab");
    return this.deliver(queue, ev);
  }

  abstract header(stream: string, message: unknown): Promise<void>;
  abstract put(stream: string, message: unknown): Promise<Position>;
  abstract delete(stream: string): Promise<void>;
  abstract listen(stream: string, queue: Listener, since: Position | undefined): Promise<Position>;
  abstract stat(stream: string): Promise<StreamStat | undefined>;
  abstract close(): Promise<void>;
  /** Forgets a stream that holds nothing the core must keep. */
  protected abstract collect(state: S): void;

  /** The history a stream keeps here (none by default). */
  protected historyOf(_state: S): History | undefined {
    return undefined;
  }

  /** Removes a queue that waits to join (none by default); returns whether it waited. */
  protected unpend(_state: S, _queue: Listener): boolean {
    return false;
  }

  /** Bytes of history held here. */
  protected historyBytes(): number {
    return 0;
  }

  /** Trims history to at most `bytes` (none is held by default). */
  protected trimHistory(_bytes: number): void {}

  /**
   * Sets the limits on what clients may make the core keep, and has the memory budget count
   * this core's streams, listens and history.
   *
   * @param limits The limits.
   */
  setLimits(limits: ClientLimits): void {
    this.limits = limits;
    // deno-lint-ignore no-this-alias
    const core = this;
    const source: BudgetSource = {
      get streamCount() {
        return core.streams.size;
      },
      get streamBytes() {
        return core.streams.bytes;
      },
      get listenCount() {
        // A pattern counts as PATTERN_COST / LISTEN_COST registrations, and each stream it
        // follows as FOLLOW_COST / LISTEN_COST.
        return core.listenerCount + core.patternCount * (PATTERN_COST / LISTEN_COST) +
          core.patterns.following * (FOLLOW_COST / LISTEN_COST);
      },
      get historyBytes() {
        return core.historyBytes();
      },
      trimHistory: (bytes) => this.trimHistory(bytes),
    };
    limits.memory.bind(source);
    // Headers held before (restored from a store) count as if set now.
    for (const state of this.streams.values()) {
      if (state.header === undefined || state.headerCost !== 0) continue;
      const ev = buildEvent(
        this.codec,
        "header",
        state,
        state.header,
        state.seq,
        state.epoch,
        "own",
      );
      state.headerCost = ev.frame.byteLength * HEADER_COST_FACTOR;
      limits.memory.headers += state.headerCost;
    }
  }

  /**
   * Refuses a stream past the limits: one more than `maxStreams`, or no room in the budget.
   *
   * @param stream The stream's name (its length counts: {@linkcode streamCost}).
   * @param what What is refused, for the message.
   * @param extra Bytes the caller keeps beside the stream's state (a listen's).
   * @throws {LimitExceededError} With `max_streams` or `max_memory`.
   */
  protected admitStream(stream: string, what: string, extra = 0): void {
    const max = this.limits.maxStreams;
    if (this.streams.size >= max) {
      throw new LimitExceededError(
        "max_streams",
        `${what}: the server holds ${max} streams, its limit (max_streams)`,
      );
    }
    // Every pattern listener that matches it will follow it (FOLLOW_COST each).
    const follows = this.patterns.matching(stream) * FOLLOW_COST;
    this.limits.memory.admit(streamCost(stream) + extra + follows, what);
  }

  /**
   * Refuses a listen past the limits: the listener follows `maxListens` streams already, or
   * there is no room in the budget (for a new stream too, when `stream` is not held).
   *
   * @param stream The stream's name.
   * @param queue The listener.
   * @throws {LimitExceededError} With `max_listens`, `max_streams` or `max_memory`.
   */
  protected admitListen(stream: string, queue: Listener): void {
    const what = `Cannot listen to stream "${stream.slice(0, 100)}"`;
    const max = this.limits.maxListens;
    const n = (this.following.get(queue)?.size ?? 0) + this.patternsOf(queue);
    if (n >= max) {
      throw new LimitExceededError(
        "max_listens",
        `${what}: this connection follows ${n} streams, the limit (max_listens)`,
      );
    }
    if (this.streams.has(stream)) this.limits.memory.admit(LISTEN_COST, what);
    else this.admitStream(stream, what, LISTEN_COST);
  }

  /**
   * Refuses a pattern listen past the limits: each pattern counts as one of the listener's
   * `maxListens` and costs {@linkcode PATTERN_COST} of the budget (every pattern is matched
   * against each new stream's name, so their number must be bounded too).
   *
   * @param pattern The pattern.
   * @param queue The listener.
   * @throws {LimitExceededError} With `max_listens` or `max_memory`.
   */
  protected admitPattern(pattern: string, queue: Listener): void {
    const what = `Cannot listen to pattern "${pattern.slice(0, 100)}"`;
    const max = this.limits.maxListens;
    const n = (this.following.get(queue)?.size ?? 0) + this.patternsOf(queue);
    if (n >= max) {
      throw new LimitExceededError(
        "max_listens",
        `${what}: this connection follows ${n} streams and patterns, the limit (max_listens)`,
      );
    }
    this.limits.memory.admit(PATTERN_COST, what);
  }

  /** How many patterns the listener listens to. */
  protected patternsOf(queue: Listener): number {
    return this.patterns.countOf(queue);
  }

  /** How many patterns are listened to, over every listener. */
  protected get patternCount(): number {
    return this.patterns.count;
  }

  /**
   * Charges a new header to the budget (and releases the one it replaces), or refuses it: a
   * frame larger than `maxHeaderBytes`, or no room in the budget.
   *
   * @param state The stream.
   * @param frameBytes The bytes of the header's event frame.
   * @throws {LimitExceededError} With `max_header_bytes` or `max_memory`.
   */
  protected chargeHeader(state: S, frameBytes: number): void {
    const what = this.checkHeaderBytes(state.name, frameBytes);
    const cost = frameBytes * HEADER_COST_FACTOR;
    if (cost > state.headerCost) this.limits.memory.admit(cost - state.headerCost, what);
    this.limits.memory.headers += cost - state.headerCost;
    state.headerCost = cost;
  }

  /**
   * Refuses a header whose event frame is larger than `maxHeaderBytes`.
   *
   * @param stream The stream's name.
   * @param frameBytes The bytes of the header's event frame.
   * @returns What is refused, for a later message.
   * @throws {LimitExceededError} With `max_header_bytes`.
   */
  protected checkHeaderBytes(stream: string, frameBytes: number): string {
    const what = `Cannot set the header of stream "${stream.slice(0, 100)}"`;
    const max = this.limits.maxHeaderBytes;
    if (frameBytes > max) {
      throw new LimitExceededError(
        "max_header_bytes",
        `${what}: its frame is ${frameBytes} bytes, the limit (max_header_bytes) is ${max}`,
      );
    }
    return what;
  }

  /**
   * Releases a stream's header from the budget (cleared, or the stream deleted).
   *
   * @param state The stream.
   */
  protected releaseHeader(state: S): void {
    this.limits.memory.headers -= state.headerCost;
    state.headerCost = 0;
  }

  /** Checks a stream name. */
  protected checkName(stream: unknown): asserts stream is string {
    if (typeof stream !== "string") {
      throw new TypeError(
        `Stream name must be a string, got ${stream === null ? "null" : typeof stream}`,
      );
    }
    if (stream.length === 0) throw new TypeError("Stream name must not be empty");
    if (!stream.isWellFormed()) {
      // A lone surrogate has no UTF-8 form: on the wire and in an engine's keys it would
      // become U+FFFD and share a stream with another name.
      throw new TypeError("Stream name must be well-formed Unicode: it has a lone surrogate");
    }
    if (stream.length > this.maxName) {
      throw new RangeError(
        `Stream name is ${stream.length} characters long: the limit is ${this.maxName}`,
      );
    }
  }

  /** Checks a put's message. */
  protected checkMessage(stream: string, message: unknown): void {
    if (message === undefined) throw new TypeError(`Cannot put on stream "${stream}": no message`);
    if (typeof message === "function" || typeof message === "symbol") {
      // JSON has no form for it: the wire would carry a put without a message.
      throw new TypeError(`Cannot put on stream "${stream}": a ${typeof message} is not a message`);
    }
  }

  /**
   * Refuses a message larger than {@linkcode Streams.maxMessage} once encoded.
   *
   * @param stream The stream's name.
   * @param message The message.
   * @param bound An upper bound on its size when known (its event frame's): a frame within the
   * limit spares encoding the message again.
   * @param json The message's JSON text when the caller had it (see `buildEvent`).
   * @throws {MessageTooLargeError} When it is larger.
   */
  protected checkSize(stream: string, message: unknown, bound?: number, json?: string): void {
    if (bound !== undefined && bound <= this.maxMessage) return;
    const text = json !== undefined && this.codec instanceof JsonCodec
      ? json
      : this.codec.encode(message);
    const size = utf8.encode(text).byteLength;
    if (size > this.maxMessage) throw new MessageTooLargeError(stream, size, this.maxMessage);
  }

  /** Checks a listener. */
  protected checkQueue(stream: string, queue: Listener): void {
    if (!queue || typeof queue.put !== "function") {
      throw new TypeError(`Cannot listen to stream "${stream}": the queue has no put method`);
    }
    if ((queue as { closed?: unknown }).closed === true) {
      throw new TypeError(`Cannot listen to stream "${stream}": the queue is closed`);
    }
  }

  /**
   * Builds an event of the stream at its current seq, its frame in the shared slab (`json`: the
   * message's JSON text when the caller has it; see `buildEvent`).
   */
  protected event(state: S, kind: EventKind, message: unknown, json?: string): StreamEvent {
    return buildEvent(this.codec, kind, state, message, state.seq, state.epoch, "slab", json);
  }

  /** Hands an event to every listener of the stream. */
  protected fanout(state: S, ev: StreamEvent): void {
    // A listener may join from inside another's put (a Set iterates what is added meanwhile):
    // it got the header as of this event, so it must not get the event too.
    state.fanning++;
    try {
      for (const l of state.listeners) {
        if (state.joinedDuringFanout?.has(l)) continue;
        this.deliver(l, ev);
      }
      const byPattern = state.patternQueues;
      if (byPattern) {
        for (const l of byPattern) {
          // A queue that also listens by name got the event above.
          if (state.listeners.has(l) || state.joinedDuringFanout?.has(l)) continue;
          this.deliver(l, ev);
        }
      }
    } finally {
      if (--state.fanning === 0) state.joinedDuringFanout = undefined;
    }
  }

  /** Hands the header to a joining listener, as of the stream's current seq. */
  protected deliverHeader(l: Listener, state: S): boolean {
    if (state.header === undefined) return true;
    let ev = state.joinEvent;
    if (!ev || ev.seq !== state.seq) {
      ev = buildEvent(this.codec, "header", state, state.header, state.seq, state.epoch, "join");
      state.joinEvent = ev;
    }
    return this.deliver(l, ev);
  }

  /** Hands one event to one listener; a listener that throws is removed everywhere. */
  protected deliver(l: Listener, ev: StreamEvent): boolean {
    try {
      l.put(ev);
      this.deliveries++;
      return true;
    } catch (e) {
      // A listener that throws is broken: it must not cost the others anything. It is removed,
      // and the error is reported and handed to its close.
      this.endqueue(l);
      const error = e instanceof Error ? e : new Error(String(e));
      try {
        this.onListenerError(error, ev.stream);
      } catch { /* a report must not break the fanout either */ }
      try {
        l.close?.(error);
      } catch { /* broken already */ }
      return false;
    }
  }

  /** The set of streams a listener follows. */
  protected followed(queue: Listener): Set<S> {
    let following = this.following.get(queue);
    if (!following) this.following.set(queue, following = new Set());
    return following;
  }

  /** Makes a queue that got its catch-up events a listener of the stream. */
  protected register(state: S, queue: Listener): void {
    state.listeners.add(queue);
    if (state.fanning > 0) (state.joinedDuringFanout ??= new Set()).add(queue);
    this.listenerCount++;
    this.followed(queue).add(state);
    queue.attached?.(this.#source);
  }

  /** Takes every listener off the stream and hands each the `end` event. */
  protected endListeners(state: S, end: StreamEvent): void {
    const listeners = [...state.listeners];
    state.listeners.clear();
    this.listenerCount -= listeners.length;
    for (const l of listeners) {
      this.following.get(l)?.delete(state);
      this.deliver(l, end);
    }
    this.patterns.ended(state, end, new Set(listeners));
  }

  hangup(stream: string, queue: Listener): void {
    const state = this.streams.get(stream);
    if (!state) return;
    if (state.listeners.delete(queue)) this.listenerCount--;
    else if (!this.unpend(state, queue)) return;
    this.following.get(queue)?.delete(state);
    this.collect(state);
  }

  endqueue(queue: Listener): void {
    this.patterns.drop(queue);
    const states = this.following.get(queue);
    if (!states) return;
    this.following.delete(queue);
    for (const state of states) {
      if (state.listeners.delete(queue)) this.listenerCount--;
      else this.unpend(state, queue);
      this.collect(state);
    }
  }

  info(stream: string): StreamInfo | undefined {
    const s = this.streams.get(stream);
    return s && this.#info(s);
  }

  list(): StreamInfo[] {
    return Array.from(this.streams.values(), (s) => this.#info(s));
  }

  names(): IterableIterator<string> {
    return this.streams.keys();
  }

  stats(): HubStats {
    return {
      streams: this.streams.size,
      listeners: this.listenerCount,
      historyBytes: this.historyBytes(),
      puts: this.puts,
      deliveries: this.deliveries,
    };
  }

  #info(s: S): StreamInfo {
    const h = this.historyOf(s);
    return {
      stream: s.name,
      epoch: s.epoch,
      seq: s.seq,
      listeners: s.listeners.size,
      hasHeader: s.header !== undefined,
      historyLength: h?.count ?? 0,
      historyBytes: h?.bytes ?? 0,
    };
  }
}
