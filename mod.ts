/**
 * Message streams: many listeners follow a running computation. Each stream is keyed by a name
 * (usually a job id) and has a **header**, the latest status snapshot. A listener that joins
 * gets the header first, then every later message of the stream, in order, with no gap and no
 * duplicate.
 *
 * This module is the in-process hub, {@linkcode MessageStream}, and its bounded listener queue,
 * {@linkcode Inbox}. The TCP server lives in `@x/msgstream/server`, the remote client with the
 * same interface in `@x/msgstream/client`.
 *
 * @example Follow a job
 * ```ts
 * import { Inbox, MessageStream } from "@x/msgstream";
 * import { assertEquals } from "@std/assert";
 *
 * const hub = new MessageStream();
 * await hub.header("job42", { state: "running", done: 0 });
 * const inbox = new Inbox();
 * await hub.listen("job42", inbox);
 * await hub.put("job42", { done: 1 });
 * await hub.put("job42", { done: 2 });
 * await hub.delete("job42");
 *
 * const seen = [];
 * for await (const ev of inbox) {
 *   seen.push([ev.kind, ev.message]);
 *   if (ev.kind === "end") break;
 * }
 * assertEquals(seen, [
 *   ["header", { state: "running", done: 0 }],
 *   ["put", { done: 1 }],
 *   ["put", { done: 2 }],
 *   ["end", null],
 * ]);
 * ```
 *
 * @module
 */

import { type Codec, defaultCodec, JsonCodec } from "./codec.ts";

/** What an event says happened on a stream. */
export type EventKind = "header" | "put" | "end" | "reset";

/** A position in a stream: its epoch and the seq of the last put seen. */
export interface Position {
  /** Changes whenever the stream is created anew (first use, after `delete`, after a restart). */
  readonly epoch: string;
  /** The number of the last put (puts count from 1; 0 means none yet). */
  readonly seq: number;
}

/**
 * One event on one stream, as every listener receives it. Events are shared between listeners:
 * treat them as read-only.
 */
export interface StreamEvent extends Position {
  /** The stream's name. */
  readonly stream: string;
  /**
   * `header`: the stream's header (first on join, and whenever it changes; `message` is `null`
   * when it was cleared). `put`: a message. `end`: the stream was deleted; no more events
   * follow from it. `reset`: the listener could not be caught up from a position it gave
   * (`message.reason` says why); the current header follows.
   */
  readonly kind: EventKind;
  /** The header or put message; `null` for `end` and for a cleared header. */
  readonly message: unknown;
  /**
   * The event's frame on the wire, encoded once by the hub's codec and shared by every
   * connection (UTF-8, ending with a newline).
   */
  readonly frame: Uint8Array;
}

/** Anything that can receive events: the original's duck type, an object with `put`. */
export interface Listener {
  /**
   * Receives one event. Called synchronously by the hub; must not block. A listener that
   * throws is removed from every stream of the hub that called it.
   *
   * @param event The event.
   */
  put(event: StreamEvent): void;
  /**
   * Called when the listener starts following a stream of `source`, so that the listener can
   * later detach itself with `source.endqueue(listener)`.
   *
   * @param source The hub or remote stream.
   */
  attached?(source: Detachable): void;
}

/** What a listener can detach itself from. */
export interface Detachable {
  /**
   * Removes the listener from every stream.
   *
   * @param queue The listener.
   */
  endqueue(queue: Listener): void;
}

/** Options for {@linkcode Streamer.listen}. */
export interface ListenOptions {
  /**
   * Resume after this position: the listener gets exactly the puts after it (and header
   * changes since), then live ones. When history no longer covers it, the listener gets a
   * `reset` event, then the header, then live puts.
   */
  since?: Position;
}

/**
 * The interface shared by the in-process hub ({@linkcode MessageStream}) and the remote client
 * (`RemoteStream`): code moves between them by changing one constructor.
 */
export interface Streamer extends Detachable {
  /**
   * Sets the stream's header (the status snapshot a joining listener gets first), or clears it
   * with `null`/`undefined`. Current listeners get a `header` event.
   *
   * @param stream The stream's name.
   * @param message The new header, or `null`/`undefined` to clear it.
   */
  header(stream: string, message: unknown): Promise<void>;
  /**
   * Puts a message on the stream: every current listener gets it.
   *
   * @param stream The stream's name.
   * @param message The message; anything the codec encodes, but not `undefined`.
   * @returns The put's seq.
   */
  put(stream: string, message: unknown): Promise<number>;
  /**
   * Deletes the stream: its header, history and listeners go, and each listener gets an `end`
   * event.
   *
   * @param stream The stream's name.
   */
  delete(stream: string): Promise<void>;
  /**
   * Starts delivering the stream's events to `queue`: the header first (if one is set), then
   * every later put. Listening again with a queue that already listens does nothing.
   *
   * @param stream The stream's name.
   * @param queue The listener.
   * @param options Where to resume.
   * @returns The stream's position when the listener joined.
   */
  listen(stream: string, queue: Listener, options?: ListenOptions): Promise<Position>;
  /**
   * Stops delivering the stream's events to `queue`.
   *
   * @param stream The stream's name.
   * @param queue The listener.
   */
  hangup(stream: string, queue: Listener): void;
}

/** Options for {@linkcode MessageStream}. */
export interface MessageStreamOptions {
  /**
   * Encodes each event once, for every connection to share.
   *
   * @default {defaultCodec}
   */
  codec?: Codec;
  /**
   * Most events (puts and header changes) kept per stream for resuming listeners.
   *
   * @default {1000}
   */
  historyMessages?: number;
  /**
   * Most bytes of encoded events kept per stream for resuming listeners.
   *
   * @default {1048576}
   */
  historyBytes?: number;
  /**
   * Most bytes of history kept for all streams together; the oldest history of any stream goes
   * first.
   *
   * @default {67108864}
   */
  maxHistoryBytes?: number;
  /**
   * Longest stream name, in UTF-16 code units.
   *
   * @default {256}
   */
  maxStreamNameLength?: number;
  /**
   * Where streams' header, seq, epoch and history live and how puts reach other nodes. Without
   * one, the hub keeps everything in memory (one process). With one (e.g. `RedisEngine` from
   * `@x/msgstream/redis`), `put`, `header`, `delete` and `listen` go through the engine and
   * the sync fast paths (`putNow`, …) throw; the history bounds then apply in the engine.
   */
  engine?: Engine;
}

/**
 * Thrown (and sent on the wire as code `engine_unavailable`) when the hub's engine cannot be
 * reached, e.g. Redis is down. The request was not applied, or, when the connection dropped
 * while it was in flight, may or may not have been.
 */
export class EngineUnavailableError extends Error {
  /**
   * Creates the error.
   *
   * @param message What failed.
   * @param options Standard error options (`cause`: the engine's own error).
   */
  constructor(message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = "EngineUnavailableError";
  }
}

/** One put or header change an engine replays for a resuming listener. */
export interface EngineEvent {
  /** `put` or `header` (a `null` message clears the header). */
  readonly kind: "put" | "header";
  /** The message. */
  readonly message: unknown;
  /** The put's seq, or the seq a header change follows. */
  readonly seq: number;
}

/** A stream's state as an engine read it, at one point of the stream's event order. */
export interface EngineSnapshot extends Position {
  /** The header, or `undefined` when none is set. */
  readonly header: unknown;
  /** With `since`: why history does not cover it, or `undefined` when it does. */
  readonly reset?: string | undefined;
  /** With `since` and covered: the events after it, oldest first. */
  readonly events?: readonly EngineEvent[] | undefined;
}

/** What an engine reports to its hub. Calls for one stream come in that stream's order. */
export interface EngineSink {
  /**
   * An event of a stream this node follows, from any node.
   *
   * @param stream The stream's name.
   * @param kind `put`, `header` (a `null` message clears it) or `end` (deleted).
   * @param message The message (`null` for `end`).
   * @param seq The put's seq, or the seq a header change or end follows.
   * @param epoch The stream's epoch.
   */
  event(
    stream: string,
    kind: "put" | "header" | "end",
    message: unknown,
    seq: number,
    epoch: string,
  ): void;
  /** The engine may have missed events (its subscription dropped and is back): sync again. */
  lost(): void;
}

/**
 * The hub's back end for state shared between nodes (see {@linkcode MessageStreamOptions.engine}).
 * The memory engine is built into the hub; `RedisEngine` implements this for many nodes.
 */
export interface Engine {
  /**
   * Binds the engine to its hub; called once by the hub's constructor.
   *
   * @param sink Where events go.
   * @param codec The hub's codec, for messages.
   */
  bind(sink: EngineSink, codec: Codec): void;
  /**
   * Assigns the put its seq and sends it to every node.
   *
   * @param stream The stream's name.
   * @param message The message.
   * @returns The put's position.
   * @throws {EngineUnavailableError} When the engine cannot be reached.
   */
  put(stream: string, message: unknown): Promise<Position>;
  /**
   * Sets (or, with `null`, clears) the header and tells every node.
   *
   * @param stream The stream's name.
   * @param message The header or `null`.
   * @throws {EngineUnavailableError} When the engine cannot be reached.
   */
  header(stream: string, message: unknown): Promise<void>;
  /**
   * Deletes the stream and tells every node (as an `end` event).
   *
   * @param stream The stream's name.
   * @throws {EngineUnavailableError} When the engine cannot be reached.
   */
  delete(stream: string): Promise<void>;
  /**
   * Follows the stream on this node (from now on its events reach the sink), then takes a
   * snapshot and calls `onSnapshot` with it exactly where it falls in the stream's event order:
   * events before it reached the sink already, events after it follow.
   *
   * @param stream The stream's name.
   * @param since With a position: the snapshot also holds the events after it, or why not.
   * @param onSnapshot Called once, in order with the sink's events.
   * @throws {EngineUnavailableError} When the engine cannot be reached.
   */
  sync(
    stream: string,
    since: Position | undefined,
    onSnapshot: (snapshot: EngineSnapshot) => void,
  ): Promise<void>;
  /**
   * Stops following the stream on this node.
   *
   * @param stream The stream's name.
   */
  unfollow(stream: string): void;
  /** Releases the engine's connections. */
  close(): Promise<void>;
}

/** What the hub knows about one stream, from {@linkcode MessageStream.info}. */
export interface StreamInfo extends Position {
  /** The stream's name. */
  readonly stream: string;
  /** How many listeners follow it. */
  readonly listeners: number;
  /** Whether a header is set. */
  readonly hasHeader: boolean;
  /** How many events its history holds. */
  readonly historyLength: number;
  /** How many bytes its history holds. */
  readonly historyBytes: number;
}

/** Totals, from {@linkcode MessageStream.stats}. */
export interface HubStats {
  /** Streams the hub holds. */
  readonly streams: number;
  /** Listener registrations over all streams. */
  readonly listeners: number;
  /** Bytes of history over all streams. */
  readonly historyBytes: number;
  /** Puts accepted since the hub was created. */
  readonly puts: number;
  /** Events handed to listeners since the hub was created. */
  readonly deliveries: number;
}

/**
 * Thrown by an {@linkcode Inbox}'s reader after the events it had buffered, when the inbox
 * overflowed because it was not read fast enough. The inbox stopped listening when it
 * overflowed; the last events read tell where to resume (`listen(…, { since })`).
 */
export class SlowConsumerError extends Error {
  /** The limit that was exceeded. */
  readonly limit: "events" | "bytes";

  /**
   * Creates the error.
   *
   * @param limit The limit that was exceeded.
   * @param options Standard error options.
   */
  constructor(limit: "events" | "bytes", options?: ErrorOptions) {
    super(`Inbox overflowed: more ${limit} buffered than its limit`, options);
    this.name = "SlowConsumerError";
    this.limit = limit;
  }
}

const encoder = new TextEncoder();

/**
 * Encodes one event frame with `codec`, ending with a newline.
 *
 * @param codec The codec.
 * @param frame The frame object.
 * @returns UTF-8 bytes.
 */
export function encodeFrame(codec: Codec, frame: Record<string, unknown>): Uint8Array {
  return encoder.encode(codec.encode(frame) + "\n");
}

/** Size of the slabs that event frames are encoded into. */
const SLAB_BYTES = 64 * 1024;
let slab = new Uint8Array(SLAB_BYTES);
let slabUsed = 0;

/**
 * Encodes an event frame's text into the shared slab, so that consecutive events lie back to
 * back in memory: a connection that gets a burst of them writes one view of the slab, with no
 * copy per listener. Large frames get their own buffer.
 */
function encodeShared(text: string): Uint8Array {
  const worst = text.length * 3;
  if (worst > SLAB_BYTES >> 3) return encoder.encode(text);
  if (SLAB_BYTES - slabUsed < worst) {
    slab = new Uint8Array(SLAB_BYTES);
    slabUsed = 0;
  }
  const start = slabUsed;
  slabUsed += encoder.encodeInto(text, slab.subarray(start)).written;
  return slab.subarray(start, slabUsed);
}

/** The event with a frame of its own, when its frame is a view of a shared slab (for keeping). */
function compact(ev: StreamEvent): StreamEvent {
  return ev.frame.buffer.byteLength === ev.frame.byteLength
    ? ev
    : { ...ev, frame: ev.frame.slice() };
}

const decoder = new TextDecoder();

/** The event of a history entry, made again from its frame (for a resuming listener). */
function replayed(codec: Codec, state: StreamState, h: History, i: number): StreamEvent {
  const frame = h.frameAt(i).slice();
  const text = decoder.decode(frame);
  let decoded: { message?: unknown };
  try {
    decoded = codec.decode(text) as { message?: unknown };
  } catch (err) {
    // A message nested to the codec's depth limit is one level deeper inside its frame.
    if (!(codec instanceof JsonCodec)) throw err;
    decoded = JSON.parse(text);
  }
  const message = decoded.message ?? null;
  const kind: EventKind = h.kindAt(i) === HEADER ? "header" : "put";
  return { stream: state.name, kind, message, seq: h.seqAt(i), epoch: state.epoch, frame };
}

/** Whether a message's JSON text can be spliced into a frame: the same bytes as a whole-frame encode. */
function spliceable(message: unknown): boolean {
  const t = typeof message;
  if (t === "object") {
    return message === null || typeof (message as { toJSON?: unknown }).toJSON !== "function";
  }
  return t === "string" || t === "number" || t === "boolean";
}

let epochCounter = 0;
const epochBase = (() => {
  const b = new Uint8Array(5);
  crypto.getRandomValues(b);
  return Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");
})();

function newEpoch(): string {
  return epochBase + (epochCounter++).toString(36);
}

const PUT = 0;
const HEADER = 1;

/**
 * A stream's history: its frames back to back in one byte ring, and each entry's seq, kind,
 * offset and length in typed arrays. Keeping an event copies its frame's bytes in; once the ring
 * has grown to its working size nothing is allocated per put, and the garbage collector never
 * scans what history holds. The ring's capacity stays within about twice the bytes it keeps.
 */
class History {
  #buf: Uint8Array;
  #tail = 0; // where the next frame goes
  #wrapAt = -1; // when the frames wrapped around: the end of those before offset 0
  /** Per entry slot k: seq at 4k, start at 4k+1, length at 4k+2, kind at 4k+3. */
  #meta = new Float64Array(4 * 2);
  #first = 0; // slot of the oldest entry
  /** Entries kept. */
  count = 0;
  /** Bytes of frames kept. */
  bytes = 0;
  /** The number of the oldest entry; a stream's entry numbers never repeat (see StreamState.nextNo). */
  firstNo: number;

  constructor(firstNo: number, firstFrameBytes: number) {
    this.firstNo = firstNo;
    // A stream that keeps only its header needs no more than that header's room.
    this.#buf = new Uint8Array(Math.max(64, firstFrameBytes));
  }

  #slot(i: number): number {
    return ((this.#first + i) & ((this.#meta.length >> 2) - 1)) << 2;
  }
  seqAt(i: number): number {
    return this.#meta[this.#slot(i)] as number;
  }
  kindAt(i: number): number {
    return this.#meta[this.#slot(i) + 3] as number;
  }
  /** A view of entry `i`'s frame: valid until the next push. */
  frameAt(i: number): Uint8Array {
    const k = this.#slot(i);
    const start = this.#meta[k + 1] as number;
    return this.#buf.subarray(start, start + (this.#meta[k + 2] as number));
  }

  push(frame: Uint8Array, seq: number, kind: number): void {
    const len = frame.byteLength;
    if (this.count === this.#meta.length >> 2) this.#growMeta();
    let at = this.#place(len);
    if (at < 0) {
      this.#relayout(Math.max(this.#buf.length, 2 * (this.bytes + len)));
      at = this.#place(len);
    }
    this.#buf.set(frame, at);
    this.#tail = at + len;
    const k = this.#slot(this.count);
    this.#meta[k] = seq;
    this.#meta[k + 1] = at;
    this.#meta[k + 2] = len;
    this.#meta[k + 3] = kind;
    this.count++;
    this.bytes += len;
  }

  /** Drops the oldest entry. */
  shift(): void {
    const k = this.#first << 2;
    this.bytes -= this.#meta[k + 2] as number;
    this.#first = (this.#first + 1) & ((this.#meta.length >> 2) - 1);
    this.firstNo++;
    if (--this.count === 0) {
      this.#tail = 0;
      this.#wrapAt = -1;
    } else if (this.#wrapAt !== -1 && this.#meta[(this.#first << 2) + 1] === 0) {
      this.#wrapAt = -1; // the oldest frame is now the first after the wrap
    }
  }

  /** Where a frame of `len` bytes fits without overwriting a kept one, or -1. */
  #place(len: number): number {
    const cap = this.#buf.length;
    if (this.count === 0) return len <= cap ? 0 : -1;
    const head = this.#meta[(this.#first << 2) + 1] as number;
    if (this.#wrapAt === -1) {
      if (this.#tail + len <= cap) return this.#tail;
      if (len <= head) {
        this.#wrapAt = this.#tail;
        return 0;
      }
      return -1;
    }
    return this.#tail + len <= head ? this.#tail : -1;
  }

  /** Copies the kept frames, oldest first, to the start of a buffer of `cap` bytes. */
  #relayout(cap: number): void {
    const buf = new Uint8Array(cap);
    let off = 0;
    for (let i = 0; i < this.count; i++) {
      const k = this.#slot(i);
      const start = this.#meta[k + 1] as number;
      const len = this.#meta[k + 2] as number;
      buf.set(this.#buf.subarray(start, start + len), off);
      this.#meta[k + 1] = off;
      off += len;
    }
    this.#buf = buf;
    this.#tail = off;
    this.#wrapAt = -1;
  }

  #growMeta(): void {
    const meta = new Float64Array(this.#meta.length * 2);
    for (let i = 0; i < this.count; i++) {
      meta.set(this.#meta.subarray(this.#slot(i), this.#slot(i) + 4), i * 4);
    }
    this.#meta = meta;
    this.#first = 0;
  }
}

/**
 * Every kept entry of every stream, oldest first, as (stream, entry number): what the global
 * history bound trims first. Entries a stream trimmed by itself stay here, dead, until they are
 * reached or compacted away.
 */
class GlobalHistory {
  #states: (StreamState | undefined)[] = new Array(1024);
  #nos = new Float64Array(1024);
  #head = 0;
  /** Entries held, dead ones included. */
  count = 0;
  /** Entries held that their stream no longer keeps. */
  dead = 0;

  push(state: StreamState, no: number): void {
    if (this.count === this.#nos.length) this.#resize(this.#nos.length * 2, () => true);
    const k = (this.#head + this.count) & (this.#nos.length - 1);
    this.#states[k] = state;
    this.#nos[k] = no;
    this.count++;
  }

  /** Takes the oldest entry; returns its stream when the stream still keeps it, else undefined. */
  shift(): StreamState | undefined {
    const k = this.#head;
    const state = this.#states[k] as StreamState;
    const no = this.#nos[k] as number;
    this.#states[k] = undefined;
    this.#head = (k + 1) & (this.#nos.length - 1);
    this.count--;
    if (isKept(state, no)) return state;
    this.dead--;
    return undefined;
  }

  /** Drops the dead entries once they are the majority. */
  compact(): void {
    if (this.dead > 4096 && this.dead * 2 > this.count) {
      let size = 1024;
      while (size < (this.count - this.dead) * 2) size *= 2;
      this.#resize(size, (state, no) => isKept(state, no));
      this.dead = 0;
    }
  }

  #resize(size: number, keep: (state: StreamState, no: number) => boolean): void {
    const states: (StreamState | undefined)[] = new Array(size);
    const nos = new Float64Array(size);
    let n = 0;
    const mask = this.#nos.length - 1;
    for (let i = 0; i < this.count; i++) {
      const k = (this.#head + i) & mask;
      const state = this.#states[k] as StreamState;
      const no = this.#nos[k] as number;
      if (keep(state, no)) {
        states[n] = state;
        nos[n++] = no;
      }
    }
    this.#states = states;
    this.#nos = nos;
    this.#head = 0;
    this.count = n;
  }
}

/** Whether entry `no` of `state` is still in its history. */
function isKept(state: StreamState, no: number): boolean {
  const h = state.history;
  return h !== undefined && no >= h.firstNo && no < h.firstNo + h.count;
}

/** A FIFO with O(1) push and shift. */
class Deque<T> {
  #items: (T | undefined)[] = [];
  #head = 0;
  get length(): number {
    return this.#items.length - this.#head;
  }
  push(item: T): void {
    this.#items.push(item);
  }
  shift(): T | undefined {
    if (this.#head >= this.#items.length) return undefined;
    const item = this.#items[this.#head];
    this.#items[this.#head++] = undefined;
    if (this.#head > 1024 && this.#head * 2 > this.#items.length) {
      this.#items = this.#items.slice(this.#head);
      this.#head = 0;
    }
    return item;
  }
  clear(): void {
    this.#items = [];
    this.#head = 0;
  }
}

class StreamState {
  readonly name: string;
  /** With an engine: the epoch the engine gave; changes only by a new snapshot. */
  epoch: string;
  seq = 0;
  /** The current header's message, or undefined when none is set. */
  header: unknown = undefined;
  /** The join event for the current header at the current seq, built on demand. */
  joinEvent: StreamEvent | undefined = undefined;
  history: History | undefined = undefined;
  /** The number the next history entry gets; never reused, so stale global entries stay stale. */
  nextNo = 0;
  /** Resuming from a seq below this is not covered by history. */
  trimmedTo = 0;
  readonly listeners: Set<Listener> = new Set();
  /** The name as JSON text, made on the first event. */
  jsonName: string | undefined = undefined;
  /** Nesting depth of fanouts in progress on this stream. */
  fanning = 0;
  /** Listeners that joined during a fanout: they got the header as of it, not the event. */
  joinedDuringFanout: Set<Listener> | undefined = undefined;
  /**
   * With an engine: whether this node's copy (epoch, seq, header) is in step with the engine's
   * event order; until then events are ignored and joins wait for a snapshot.
   */
  live: boolean;
  /** With an engine: queues waiting for a snapshot to join (or rejoin). */
  pending: Set<Listener> | undefined = undefined;
  /** With an engine: listeners being caught up after events were missed (a subset of pending). */
  rejoin: Set<Listener> | undefined = undefined;
  /** With an engine: where the listeners in `rejoin` are. */
  resumeFrom: Position | undefined = undefined;
  constructor(name: string, engine = false) {
    this.name = name;
    this.epoch = engine ? "" : newEpoch();
    this.live = !engine;
  }
}

function noSync(method: string): TypeError {
  return new TypeError(`Cannot use ${method}() on a hub with an engine: use the async methods`);
}

function checkName(stream: unknown, max: number): asserts stream is string {
  if (typeof stream !== "string") {
    throw new TypeError(
      `Stream name must be a string, got ${stream === null ? "null" : typeof stream}`,
    );
  }
  if (stream.length === 0) throw new TypeError("Stream name must not be empty");
  if (stream.length > max) {
    throw new RangeError(`Stream name is ${stream.length} characters long: the limit is ${max}`);
  }
}

function positiveInt(name: string, value: number | undefined, fallback: number, min = 0): number {
  const v = value ?? fallback;
  if (!Number.isSafeInteger(v) || v < min) {
    throw new RangeError(`Option "${name}" must be an integer of at least ${min}, got ${v}`);
  }
  return v;
}

/**
 * The in-process hub: streams keyed by name, each with a header, a bounded history and its
 * listeners. Delivery is synchronous: when `put` returns, every listener's `put` has been
 * called, so a slow listener must buffer (an {@linkcode Inbox} does, within bounds).
 *
 * @example The original's duck-typed queue
 * ```ts
 * import { MessageStream, type StreamEvent } from "@x/msgstream";
 * import { assertEquals } from "@std/assert";
 *
 * const hub = new MessageStream();
 * const got: unknown[] = [];
 * const queue = { put: (ev: StreamEvent) => got.push(ev.message) };
 * await hub.header("M2", ["H2", 25]);
 * await hub.listen("M2", queue);
 * await hub.put("M2", ["S3", 0]);
 * hub.hangup("M2", queue);
 * await hub.put("M2", ["S3", 1]);
 * assertEquals(got, [["H2", 25], ["S3", 0]]);
 * ```
 */
export class MessageStream implements Streamer {
  /** The codec that encodes every event frame. */
  readonly codec: Codec;
  #streams = new Map<string, StreamState>();
  #following = new WeakMap<Listener, Set<StreamState>>();
  #history = new GlobalHistory();
  #historyBytes = 0;
  #historyMessages: number;
  #historyBytesPerStream: number;
  #maxHistoryBytes: number;
  #maxName: number;
  #puts = 0;
  /** Whether the codec is a JsonCodec: event frames are then built around the message's text. */
  readonly #json: boolean;
  #deliveries = 0;
  #listenerCount = 0;
  readonly #engine: Engine | undefined;

  /**
   * Creates an empty hub.
   *
   * @param options Codec and history bounds.
   * @throws {RangeError} When a bound is not a non-negative integer.
   */
  constructor(options: MessageStreamOptions = {}) {
    this.codec = options.codec ?? defaultCodec;
    this.#json = this.codec instanceof JsonCodec;
    this.#historyMessages = positiveInt("historyMessages", options.historyMessages, 1000);
    this.#historyBytesPerStream = positiveInt("historyBytes", options.historyBytes, 1 << 20);
    this.#maxHistoryBytes = positiveInt("maxHistoryBytes", options.maxHistoryBytes, 64 << 20);
    this.#maxName = positiveInt("maxStreamNameLength", options.maxStreamNameLength, 256, 1);
    this.#engine = options.engine;
    this.#engine?.bind({
      event: (stream, kind, message, seq, epoch) =>
        this.#engineEvent(stream, kind, message, seq, epoch),
      lost: () => this.#engineLost(),
    }, this.codec);
  }

  /** The longest stream name accepted, in UTF-16 code units. */
  get maxStreamNameLength(): number {
    return this.#maxName;
  }

  /**
   * The engine given in the options, or `undefined` for the built-in memory engine. With an
   * engine, only the async methods work (`put`, `header`, `delete`, `listen`).
   */
  get engine(): Engine | undefined {
    return this.#engine;
  }

  /**
   * Releases the engine's connections (nothing to do for the memory engine).
   *
   * @returns When the engine has closed.
   *
   * @example
   * ```ts
   * import { MessageStream } from "@x/msgstream";
   *
   * const hub = new MessageStream();
   * await hub.close();
   * ```
   */
  close(): Promise<void> {
    return this.#engine?.close() ?? Promise.resolve();
  }

  /**
   * Sets or clears a stream's header.
   *
   * @param stream The stream's name.
   * @param message The header, or `null`/`undefined` to clear it.
   * @throws {TypeError} When the name is not a non-empty string or the codec cannot encode the
   * header.
   * @throws {RangeError} When the name is too long.
   *
   * @example Setting and clearing
   * ```ts
   * import { MessageStream } from "@x/msgstream";
   * import { assertEquals } from "@std/assert";
   *
   * const hub = new MessageStream();
   * await hub.header("job", { state: "queued" });
   * assertEquals(hub.info("job")?.hasHeader, true);
   * await hub.header("job", null);
   * assertEquals(hub.info("job")?.hasHeader, false);
   * ```
   */
  header(stream: string, message: unknown): Promise<void> {
    if (this.#engine) return this.#engineHeader(stream, message);
    try {
      this.setHeader(stream, message);
      return Promise.resolve();
    } catch (e) {
      return Promise.reject(e);
    }
  }

  /**
   * Puts a message on a stream.
   *
   * @param stream The stream's name.
   * @param message The message (not `undefined`).
   * @returns The put's seq.
   * @throws {TypeError} When the name is not a non-empty string, the message is `undefined`, or
   * the codec cannot encode it.
   * @throws {RangeError} When the name is too long.
   *
   * @example Seqs count from 1
   * ```ts
   * import { MessageStream } from "@x/msgstream";
   * import { assertEquals } from "@std/assert";
   *
   * const hub = new MessageStream();
   * assertEquals(await hub.put("job", "a"), 1);
   * assertEquals(await hub.put("job", "b"), 2);
   * ```
   */
  put(stream: string, message: unknown): Promise<number> {
    if (this.#engine) return this.#enginePut(stream, message);
    try {
      return Promise.resolve(this.putNow(stream, message));
    } catch (e) {
      return Promise.reject(e);
    }
  }

  /**
   * Deletes a stream: header, history and listeners go; each listener gets an `end` event.
   * The next use of the name starts a new epoch.
   *
   * @param stream The stream's name.
   * @throws {TypeError} When the name is not a non-empty string.
   *
   * @example Listeners get an end event
   * ```ts
   * import { MessageStream, type StreamEvent } from "@x/msgstream";
   * import { assertEquals } from "@std/assert";
   *
   * const hub = new MessageStream();
   * const kinds: string[] = [];
   * await hub.listen("job", { put: (ev: StreamEvent) => kinds.push(ev.kind) });
   * await hub.delete("job");
   * assertEquals(kinds, ["end"]);
   * ```
   */
  delete(stream: string): Promise<void> {
    if (this.#engine) return this.#engineDelete(stream);
    try {
      this.deleteNow(stream);
      return Promise.resolve();
    } catch (e) {
      return Promise.reject(e);
    }
  }

  /**
   * Starts delivering a stream's events to `queue`: the header first, then every later put;
   * or, with `since`, what was missed since that position.
   *
   * @param stream The stream's name.
   * @param queue The listener.
   * @param options Where to resume.
   * @returns The stream's position when the listener joined.
   * @throws {TypeError} When the name is not a non-empty string or `queue` has no `put`.
   *
   * @example Resuming from a position
   * ```ts
   * import { MessageStream, type StreamEvent } from "@x/msgstream";
   * import { assertEquals } from "@std/assert";
   *
   * const hub = new MessageStream();
   * await hub.put("job", "a");
   * const at = await hub.listen("job", { put() {} });
   * await hub.put("job", "b");
   * await hub.put("job", "c");
   * const got: unknown[] = [];
   * await hub.listen("job", { put: (ev: StreamEvent) => got.push(ev.message) }, { since: at });
   * assertEquals(got, ["b", "c"]);
   * ```
   */
  listen(stream: string, queue: Listener, options: ListenOptions = {}): Promise<Position> {
    if (this.#engine) return this.#engineListen(stream, queue, options.since);
    try {
      return Promise.resolve(this.listenNow(stream, queue, options.since));
    } catch (e) {
      return Promise.reject(e);
    }
  }

  /**
   * Stops delivering a stream's events to `queue`. Does nothing when it was not listening.
   *
   * @param stream The stream's name.
   * @param queue The listener.
   *
   * @example Hanging up
   * ```ts
   * import { MessageStream } from "@x/msgstream";
   * import { assertEquals } from "@std/assert";
   *
   * const hub = new MessageStream();
   * const queue = { put() {} };
   * await hub.listen("job", queue);
   * hub.hangup("job", queue);
   * assertEquals(hub.info("job"), undefined);
   * ```
   */
  hangup(stream: string, queue: Listener): void {
    const state = this.#streams.get(stream);
    if (!state) return;
    if (state.listeners.delete(queue)) this.#listenerCount--;
    else if (!state.pending?.delete(queue)) return;
    this.#following.get(queue)?.delete(state);
    this.#collect(state);
  }

  /**
   * Removes `queue` from every stream it follows.
   *
   * @param queue The listener.
   *
   * @example One queue, many streams
   * ```ts
   * import { MessageStream } from "@x/msgstream";
   * import { assertEquals } from "@std/assert";
   *
   * const hub = new MessageStream();
   * const queue = { put() {} };
   * await hub.listen("a", queue);
   * await hub.listen("b", queue);
   * hub.endqueue(queue);
   * assertEquals(hub.stats().listeners, 0);
   * ```
   */
  endqueue(queue: Listener): void {
    const states = this.#following.get(queue);
    if (!states) return;
    this.#following.delete(queue);
    for (const state of states) {
      if (state.listeners.delete(queue)) this.#listenerCount--;
      else state.pending?.delete(queue);
      this.#collect(state);
    }
  }

  /**
   * Tells what the hub knows about a stream.
   *
   * @param stream The stream's name.
   * @returns Its position, listener count and history, or `undefined` when the hub holds no
   * such stream.
   *
   * @example
   * ```ts
   * import { MessageStream } from "@x/msgstream";
   * import { assertEquals } from "@std/assert";
   *
   * const hub = new MessageStream();
   * await hub.put("job", 1);
   * assertEquals(hub.info("job")?.seq, 1);
   * ```
   */
  info(stream: string): StreamInfo | undefined {
    const s = this.#streams.get(stream);
    return s && this.#info(s);
  }

  /**
   * Lists every stream the hub holds.
   *
   * @returns One {@linkcode StreamInfo} per stream, in creation order.
   *
   * @example
   * ```ts
   * import { MessageStream } from "@x/msgstream";
   * import { assertEquals } from "@std/assert";
   *
   * const hub = new MessageStream();
   * await hub.header("a", 1);
   * await hub.put("b", 2);
   * assertEquals(hub.list().map((s) => s.stream), ["a", "b"]);
   * ```
   */
  list(): StreamInfo[] {
    return Array.from(this.#streams.values(), (s) => this.#info(s));
  }

  /**
   * Totals over the whole hub.
   *
   * @returns Streams, listeners, history bytes, puts and deliveries.
   *
   * @example
   * ```ts
   * import { MessageStream } from "@x/msgstream";
   * import { assertEquals } from "@std/assert";
   *
   * const hub = new MessageStream();
   * await hub.put("job", 1);
   * assertEquals(hub.stats().puts, 1);
   * ```
   */
  stats(): HubStats {
    return {
      streams: this.#streams.size,
      listeners: this.#listenerCount,
      historyBytes: this.#historyBytes,
      puts: this.#puts,
      deliveries: this.#deliveries,
    };
  }

  /**
   * Sets or clears a header synchronously; the server's fast path. See {@linkcode header}.
   *
   * @param stream The stream's name.
   * @param message The header, or `null`/`undefined` to clear it.
   */
  setHeader(stream: string, message: unknown): void {
    if (this.#engine) throw noSync("setHeader");
    checkName(stream, this.#maxName);
    if (message === undefined) message = null;
    let state = this.#streams.get(stream);
    if (message === null) {
      if (!state || state.header === undefined) return;
    } else if (!state) {
      state = this.#create(stream);
    }
    const change = this.#event(state, "header", "header", message);
    state.header = message === null ? undefined : message;
    state.joinEvent = undefined;
    this.#record(state, change);
    this.#fanout(state, change);
    this.#collect(state);
  }

  /**
   * Puts a message synchronously; the server's fast path. See {@linkcode put}.
   *
   * @param stream The stream's name.
   * @param message The message.
   * @returns The put's seq.
   */
  putNow(stream: string, message: unknown): number {
    if (this.#engine) throw noSync("putNow");
    checkName(stream, this.#maxName);
    if (message === undefined) throw new TypeError(`Cannot put on stream "${stream}": no message`);
    const state = this.#streams.get(stream) ?? this.#create(stream);
    state.seq++;
    let ev: StreamEvent;
    try {
      ev = this.#event(state, "put", "put", message);
    } catch (e) {
      state.seq--;
      this.#collect(state);
      throw e;
    }
    this.#puts++;
    this.#record(state, ev);
    this.#fanout(state, ev);
    const seq = state.seq;
    this.#collect(state);
    return seq;
  }

  /**
   * Deletes a stream synchronously. See {@linkcode delete}.
   *
   * @param stream The stream's name.
   */
  deleteNow(stream: string): void {
    if (this.#engine) throw noSync("deleteNow");
    checkName(stream, this.#maxName);
    const state = this.#streams.get(stream);
    if (!state) return;
    const end = this.#event(state, "end", "delete", null);
    this.#streams.delete(stream);
    this.#dropHistory(state);
    const listeners = [...state.listeners];
    state.listeners.clear();
    this.#listenerCount -= listeners.length;
    for (const l of listeners) {
      this.#following.get(l)?.delete(state);
      this.#deliver(l, end);
    }
  }

  /**
   * Starts listening synchronously. See {@linkcode listen}.
   *
   * @param stream The stream's name.
   * @param queue The listener.
   * @param since Where to resume.
   * @returns The stream's position when the listener joined.
   */
  listenNow(stream: string, queue: Listener, since?: Position): Position {
    if (this.#engine) throw noSync("listenNow");
    checkName(stream, this.#maxName);
    if (!queue || typeof queue.put !== "function") {
      throw new TypeError(`Cannot listen to stream "${stream}": the queue has no put method`);
    }
    const state = this.#streams.get(stream) ?? this.#create(stream);
    const position = { epoch: state.epoch, seq: state.seq };
    if (state.listeners.has(queue)) return position;
    let ok = true;
    if (since === undefined) {
      ok = this.#deliverHeader(queue, state);
    } else {
      const reason = this.#uncovered(state, since);
      if (reason) {
        ok = this.#deliver(queue, this.#event(state, "reset", "reset", { reason })) &&
          this.#deliverHeader(queue, state);
      } else if (state.history) {
        const h = state.history;
        for (let i = 0; ok && i < h.count; i++) {
          const seq = h.seqAt(i);
          if (seq > since.seq || (h.kindAt(i) === HEADER && seq === since.seq)) {
            ok = this.#deliver(queue, replayed(this.codec, state, h, i));
          }
        }
      }
    }
    if (!ok) {
      // The listener threw during catch-up: it is broken, so it is not registered.
      this.#collect(state);
      return position;
    }
    state.listeners.add(queue);
    if (state.fanning > 0) (state.joinedDuringFanout ??= new Set()).add(queue);
    this.#listenerCount++;
    let following = this.#following.get(queue);
    if (!following) this.#following.set(queue, following = new Set());
    following.add(state);
    queue.attached?.(this);
    return position;
  }

  async #enginePut(stream: string, message: unknown): Promise<number> {
    checkName(stream, this.#maxName);
    if (message === undefined) throw new TypeError(`Cannot put on stream "${stream}": no message`);
    const at = await (this.#engine as Engine).put(stream, message);
    this.#puts++;
    return at.seq;
  }

  async #engineHeader(stream: string, message: unknown): Promise<void> {
    checkName(stream, this.#maxName);
    await (this.#engine as Engine).header(stream, message ?? null);
  }

  async #engineDelete(stream: string): Promise<void> {
    checkName(stream, this.#maxName);
    await (this.#engine as Engine).delete(stream);
  }

  async #engineListen(
    stream: string,
    queue: Listener,
    since: Position | undefined,
  ): Promise<Position> {
    checkName(stream, this.#maxName);
    if (!queue || typeof queue.put !== "function") {
      throw new TypeError(`Cannot listen to stream "${stream}": the queue has no put method`);
    }
    let state = this.#streams.get(stream);
    if (!state) this.#streams.set(stream, state = new StreamState(stream, true));
    if (state.listeners.has(queue) || state.pending?.has(queue)) {
      return { epoch: state.epoch, seq: state.seq };
    }
    if (state.live && since === undefined) {
      // This node is in step with the stream: join from the local copy, as in memory.
      const position = { epoch: state.epoch, seq: state.seq };
      if (this.#deliverHeader(queue, state)) this.#register(state, queue);
      else this.#collect(state);
      return position;
    }
    (state.pending ??= new Set()).add(queue);
    this.#followed(queue).add(state);
    let position: Position | undefined;
    const joining = state;
    try {
      await (this.#engine as Engine).sync(stream, since, (snap) => {
        position = this.#joined(joining, snap, [queue], since);
      });
    } catch (e) {
      if (joining.pending?.delete(queue)) {
        this.#following.get(queue)?.delete(joining);
        this.#collect(joining);
      }
      throw e;
    }
    return position ?? { epoch: joining.epoch, seq: joining.seq };
  }

  #followed(queue: Listener): Set<StreamState> {
    let following = this.#following.get(queue);
    if (!following) this.#following.set(queue, following = new Set());
    return following;
  }

  #register(state: StreamState, queue: Listener): void {
    state.listeners.add(queue);
    if (state.fanning > 0) (state.joinedDuringFanout ??= new Set()).add(queue);
    this.#listenerCount++;
    this.#followed(queue).add(state);
    queue.attached?.(this);
  }

  /** A snapshot arrived, in order: brings the local copy in step and joins the queues. */
  #joined(
    state: StreamState,
    snap: EngineSnapshot,
    queues: Iterable<Listener>,
    since: Position | undefined,
  ): Position {
    if (!state.live) {
      state.epoch = snap.epoch;
      state.seq = snap.seq;
      state.header = snap.header;
      state.joinEvent = undefined;
      state.live = true;
    }
    const position = { epoch: state.epoch, seq: state.seq };
    let reset: StreamEvent | undefined;
    let replay: StreamEvent[] = [];
    if (since !== undefined) {
      if (snap.reset !== undefined) {
        reset = this.#event(state, "reset", "reset", { reason: snap.reset });
      } else {
        replay = (snap.events ?? []).map((e) => {
          const frame = encodeFrame(this.codec, {
            action: e.kind,
            stream: state.name,
            message: e.message,
            seq: e.seq,
            epoch: state.epoch,
          });
          return { ...e, stream: state.name, epoch: state.epoch, frame };
        });
      }
    }
    for (const q of queues) {
      if (!state.pending?.delete(q)) continue; // hung up meanwhile
      let ok = true;
      if (since === undefined) ok = this.#deliverHeader(q, state);
      else if (reset) ok = this.#deliver(q, reset) && this.#deliverHeader(q, state);
      else for (let i = 0; ok && i < replay.length; i++) ok = this.#deliver(q, replay[i]!);
      if (ok) this.#register(state, q);
    }
    this.#collect(state);
    return position;
  }

  #engineEvent(
    stream: string,
    kind: "put" | "header" | "end",
    message: unknown,
    seq: number,
    epoch: string,
  ): void {
    const state = this.#streams.get(stream);
    if (!state || !state.live) return;
    if (epoch !== state.epoch || seq !== (kind === "put" ? state.seq + 1 : state.seq)) {
      // Out of step: events were missed. Catch every listener up from where it is.
      this.#resync(state);
      return;
    }
    if (kind === "end") return this.#ended(state);
    state.seq = seq;
    if (kind === "header") {
      state.header = message === null ? undefined : message;
      state.joinEvent = undefined;
    }
    this.#fanout(state, this.#event(state, kind, kind, message));
  }

  #ended(state: StreamState): void {
    const end = this.#event(state, "end", "delete", null);
    const listeners = [...state.listeners];
    state.listeners.clear();
    this.#listenerCount -= listeners.length;
    state.live = false;
    state.epoch = "";
    state.seq = 0;
    state.header = undefined;
    state.joinEvent = undefined;
    for (const l of listeners) {
      this.#following.get(l)?.delete(state);
      this.#deliver(l, end);
    }
    this.#collect(state);
  }

  #engineLost(): void {
    for (const state of [...this.#streams.values()]) this.#resync(state);
  }

  /** Takes every listener of the stream off, and joins them again from where they were. */
  #resync(state: StreamState): void {
    if (state.live) {
      state.live = false;
      state.resumeFrom = state.epoch ? { epoch: state.epoch, seq: state.seq } : undefined;
      const rejoin = state.rejoin ??= new Set();
      const pending = state.pending ??= new Set();
      for (const l of state.listeners) {
        rejoin.add(l);
        pending.add(l);
      }
      this.#listenerCount -= state.listeners.size;
      state.listeners.clear();
    }
    const group = state.rejoin;
    if (!group || group.size === 0) return;
    state.rejoin = undefined;
    const since = state.resumeFrom;
    (this.#engine as Engine).sync(state.name, since, (snap) => {
      this.#joined(state, snap, group, since);
    }).catch(() => {
      // Still unreachable: the engine calls lost() again when it is back.
      for (const q of group) if (state.pending?.has(q)) (state.rejoin ??= new Set()).add(q);
    });
  }

  /** Why `since` cannot be served from history, or "" when it can. */
  #uncovered(state: StreamState, since: Position): string {
    if (since.epoch !== state.epoch) return "epoch_changed";
    if (since.seq > state.seq) return "ahead_of_stream";
    if (since.seq < state.trimmedTo) return "history_trimmed";
    return "";
  }

  #create(name: string): StreamState {
    const state = new StreamState(name);
    this.#streams.set(name, state);
    return state;
  }

  #event(state: StreamState, kind: EventKind, action: string, message: unknown): StreamEvent {
    // Encode once, into the shared slab. With a JsonCodec, only the message goes through the
    // codec: the frame around it is spliced as text, byte for byte what encoding the whole
    // frame gives (same keys, same order).
    let text: string;
    if (this.#json && spliceable(message)) {
      const name = state.jsonName ??= JSON.stringify(state.name);
      const epoch = JSON.stringify(state.epoch);
      const body = this.codec.encode(message);
      text = `{"action":"${action}","stream":${name},"message":${body},"seq":${state.seq},` +
        `"epoch":${epoch}}\n`;
    } else {
      const frame = { action, stream: state.name, message, seq: state.seq, epoch: state.epoch };
      text = this.codec.encode(frame) + "\n";
    }
    const frame = encodeShared(text);
    return { stream: state.name, kind, message, seq: state.seq, epoch: state.epoch, frame };
  }

  #fanout(state: StreamState, ev: StreamEvent): void {
    // A listener may join from inside another's put (a Set iterates what is added meanwhile):
    // it got the header as of this event, so it must not get the event too.
    state.fanning++;
    try {
      for (const l of state.listeners) {
        if (state.joinedDuringFanout?.has(l)) continue;
        this.#deliver(l, ev);
      }
    } finally {
      if (--state.fanning === 0) state.joinedDuringFanout = undefined;
    }
  }

  /** Hands the header to a joining listener, as of the stream's current seq. */
  #deliverHeader(l: Listener, state: StreamState): boolean {
    if (state.header === undefined) return true;
    let ev = state.joinEvent;
    if (!ev || ev.seq !== state.seq) {
      const message = state.header;
      const frame = encodeFrame(this.codec, {
        action: "put",
        stream: state.name,
        message,
        header: true,
        seq: state.seq,
        epoch: state.epoch,
      });
      ev = {
        stream: state.name,
        kind: "header",
        message,
        seq: state.seq,
        epoch: state.epoch,
        frame,
      };
      state.joinEvent = ev;
    }
    return this.#deliver(l, ev);
  }

  #deliver(l: Listener, ev: StreamEvent): boolean {
    try {
      l.put(ev);
      this.#deliveries++;
      return true;
    } catch {
      // A listener that throws is broken: it must not cost the others anything.
      this.endqueue(l);
      return false;
    }
  }

  #record(state: StreamState, ev: StreamEvent): void {
    const bytes = ev.frame.byteLength;
    if (
      this.#historyMessages === 0 || bytes > this.#historyBytesPerStream ||
      bytes > this.#maxHistoryBytes
    ) {
      // Nothing of this size can be kept: history no longer covers what came before.
      this.#dropHistory(state);
      state.trimmedTo = ev.kind === "header" ? ev.seq + 1 : ev.seq;
      return;
    }
    const h = state.history ??= new History(state.nextNo, bytes);
    h.push(ev.frame, ev.seq, ev.kind === "header" ? HEADER : PUT);
    this.#history.push(state, state.nextNo++);
    this.#historyBytes += bytes;
    while (h.count > this.#historyMessages || h.bytes > this.#historyBytesPerStream) {
      this.#trimOldest(state);
      this.#history.dead++; // still in the global queue
    }
    while (this.#historyBytes > this.#maxHistoryBytes) {
      const oldest = this.#history.shift();
      if (oldest) {
        this.#trimOldest(oldest);
        this.#collect(oldest);
      }
    }
    this.#history.compact();
  }

  /** Drops a stream's oldest history entry. */
  #trimOldest(state: StreamState): void {
    const h = state.history;
    if (!h || h.count === 0) return;
    const seq = h.seqAt(0);
    const header = h.kindAt(0) === HEADER;
    const before = h.bytes;
    h.shift();
    this.#historyBytes -= before - h.bytes;
    state.trimmedTo = Math.max(state.trimmedTo, header ? seq + 1 : seq);
  }

  #dropHistory(state: StreamState): void {
    const h = state.history;
    if (!h) return;
    while (h.count > 0) {
      this.#trimOldest(state);
      this.#history.dead++;
    }
    state.history = undefined;
  }

  /** Forgets a stream that holds nothing: no listeners, no header, no history. */
  #collect(state: StreamState): void {
    if (this.#engine) {
      // Header and history live in the engine: a stream nobody here follows is forgotten.
      if (
        state.listeners.size === 0 && !state.pending?.size &&
        this.#streams.get(state.name) === state
      ) {
        this.#streams.delete(state.name);
        this.#engine.unfollow(state.name);
      }
      return;
    }
    if (
      state.listeners.size === 0 && state.header === undefined &&
      (!state.history || state.history.count === 0) &&
      this.#streams.get(state.name) === state
    ) {
      this.#streams.delete(state.name);
      this.#dropHistory(state);
    }
  }

  #info(s: StreamState): StreamInfo {
    return {
      stream: s.name,
      epoch: s.epoch,
      seq: s.seq,
      listeners: s.listeners.size,
      hasHeader: s.header !== undefined,
      historyLength: s.history?.count ?? 0,
      historyBytes: s.history?.bytes ?? 0,
    };
  }
}

/** Options for {@linkcode Inbox}. */
export interface InboxOptions {
  /**
   * Most events buffered before the inbox overflows.
   *
   * @default {10000}
   */
  maxEvents?: number;
  /**
   * Most bytes (of encoded frames) buffered before the inbox overflows.
   *
   * @default {16777216}
   */
  maxBytes?: number;
}

/**
 * A bounded listener queue that is a web-standard `ReadableStream` of events. One inbox can
 * follow many streams, of many hubs or remote streams.
 *
 * Reading is pull-based: events wait in the inbox until read. When more than `maxEvents`
 * events or `maxBytes` bytes wait, the inbox **overflows**: it stops listening everywhere,
 * and its reader gets the events already buffered, then a {@linkcode SlowConsumerError}.
 * Nothing is dropped silently. Cancelling the stream (or `break` out of `for await`) also
 * stops listening everywhere.
 *
 * @example Reading with `for await`
 * ```ts
 * import { Inbox, MessageStream } from "@x/msgstream";
 * import { assertEquals } from "@std/assert";
 *
 * const hub = new MessageStream();
 * const inbox = new Inbox();
 * await hub.listen("a", inbox);
 * await hub.listen("b", inbox);
 * await hub.put("a", 1);
 * await hub.put("b", 2);
 * inbox.close();
 * const got = [];
 * for await (const ev of inbox) got.push(`${ev.stream}:${ev.message}`);
 * assertEquals(got, ["a:1", "b:2"]);
 * ```
 *
 * @example Overflow is reported, not silent
 * ```ts
 * import { Inbox, MessageStream, SlowConsumerError } from "@x/msgstream";
 * import { assertEquals, assertRejects } from "@std/assert";
 *
 * const hub = new MessageStream();
 * const inbox = new Inbox({ maxEvents: 2 });
 * await hub.listen("a", inbox);
 * for (let i = 1; i <= 5; i++) await hub.put("a", i);
 * const reader = inbox.getReader();
 * assertEquals((await reader.read()).value?.message, 1);
 * assertEquals((await reader.read()).value?.message, 2);
 * await assertRejects(() => reader.read(), SlowConsumerError);
 * assertEquals(hub.stats().listeners, 0);
 * ```
 */
export class Inbox extends ReadableStream<StreamEvent> implements Listener {
  #state: InboxState;

  /**
   * Creates an empty inbox.
   *
   * @param options Its bounds.
   * @throws {RangeError} When a bound is not a positive integer.
   */
  constructor(options: InboxOptions = {}) {
    const state: InboxState = {
      buffer: new Deque<StreamEvent>(),
      bytes: 0,
      maxEvents: positiveInt("maxEvents", options.maxEvents, 10_000, 1),
      maxBytes: positiveInt("maxBytes", options.maxBytes, 16 << 20, 1),
      controller: undefined,
      waiting: false,
      closed: false,
      error: undefined,
      sources: new Set(),
      self: undefined,
    };
    super({
      start(controller) {
        state.controller = controller;
      },
      pull() {
        pump(state, true);
      },
      cancel() {
        state.closed = true;
        state.buffer.clear();
        state.bytes = 0;
        detach(state);
      },
    }, { highWaterMark: 0 });
    state.self = this;
    this.#state = state;
  }

  /**
   * Buffers one event (the {@linkcode Listener} interface); hubs call this.
   *
   * @param event The event.
   */
  put(event: StreamEvent): void {
    const s = this.#state;
    if (s.closed) return;
    if (s.waiting) {
      s.waiting = false;
      s.controller?.enqueue(event);
      return;
    }
    const size = event.frame.byteLength;
    if (s.buffer.length >= s.maxEvents || s.bytes + size > s.maxBytes) {
      // Keep what fits; the reader learns of the overflow after reading it.
      s.error = new SlowConsumerError(s.buffer.length >= s.maxEvents ? "events" : "bytes");
      s.closed = true;
      detach(s);
      return;
    }
    s.buffer.push(compact(event));
    s.bytes += size;
  }

  /**
   * Records a source so the inbox can detach from it (the {@linkcode Listener} interface).
   *
   * @param source The hub or remote stream.
   */
  attached(source: Detachable): void {
    this.#state.sources.add(source);
  }

  /**
   * Stops listening everywhere; the reader gets what is buffered, then the end of the stream.
   *
   * @example
   * ```ts
   * import { Inbox, MessageStream } from "@x/msgstream";
   * import { assertEquals } from "@std/assert";
   *
   * const hub = new MessageStream();
   * const inbox = new Inbox();
   * await hub.listen("a", inbox);
   * inbox.close();
   * assertEquals(hub.stats().listeners, 0);
   * assertEquals(await Array.fromAsync(inbox), []);
   * ```
   */
  close(): void {
    const s = this.#state;
    if (s.closed) return;
    s.closed = true;
    detach(s);
    pump(s, false);
  }

  /** How many events wait to be read. */
  get size(): number {
    return this.#state.buffer.length;
  }
}

interface InboxState {
  buffer: Deque<StreamEvent>;
  bytes: number;
  maxEvents: number;
  maxBytes: number;
  controller: ReadableStreamDefaultController<StreamEvent> | undefined;
  waiting: boolean;
  closed: boolean;
  error: Error | undefined;
  sources: Set<Detachable>;
  self: Inbox | undefined;
}

function pump(s: InboxState, pulled: boolean): void {
  const c = s.controller;
  if (!c) return;
  if (pulled || s.waiting) {
    const ev = s.buffer.shift();
    if (ev) {
      s.waiting = false;
      s.bytes -= ev.frame.byteLength;
      c.enqueue(ev);
      return;
    }
    if (!s.closed) {
      s.waiting = true;
      return;
    }
  }
  if (s.closed && s.buffer.length === 0) {
    s.waiting = false;
    s.controller = undefined;
    if (s.error) c.error(s.error);
    else c.close();
  }
}

function detach(s: InboxState): void {
  const sources = [...s.sources];
  s.sources.clear();
  if (s.self) { for (const src of sources) src.endqueue(s.self); }
  // An overflowed inbox whose reader waits must hear about it now.
  if (s.waiting) pump(s, false);
}
