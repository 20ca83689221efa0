/**
 * The hub's cores, behind `MessageStream`: what both cores share (a stream's state, the listener
 * registry, fanout and delivery; {@linkcode Streams}, kept in `streams.ts` and re-exported here)
 * and the in-memory core ({@linkcode MemoryCore}). The engine-backed core is `EngineCore` in `engine.ts`. A hub picks
 * one core when it is constructed and delegates every call to it.
 *
 * The memory core also has synchronous fast paths ({@linkcode SyncHub}) for the doors: they are
 * internal, reached through {@linkcode syncOf}, and not part of the public API.
 *
 * @example The sync fast path of a memory hub
 * ```ts
 * import { MessageStream } from "./mod.ts";
 * import { syncOf } from "./core.ts";
 * import { assertEquals } from "@std/assert";
 *
 * const hub = new MessageStream();
 * const sync = syncOf(hub);
 * assertEquals(sync?.putNow("job", 1).seq, 1);
 * ```
 *
 * @module
 */

import type { Codec } from "./codec.ts";
import { type History, HistoryBudget, type HistoryLimits, type HistoryOwner } from "./history.ts";
import { Streams, StreamState } from "./streams.ts";
import type {
  Detachable,
  Listener,
  Position,
  ResetReason,
  StreamEvent,
  StreamStat,
} from "./types.ts";

export {
  checkSince,
  type ClientLimits,
  type Core,
  DEFAULT_MAX_MESSAGE_BYTES,
  logListenerError,
  MessageTooLargeError,
  StreamMap,
  StreamNotFoundError,
  Streams,
  StreamState,
} from "./streams.ts";

/**
 * The synchronous fast paths of a memory hub, for the doors (the TCP door's Session): the same
 * as the hub's promise methods, without a promise. Internal: reach it with {@linkcode syncOf}.
 */
export interface SyncHub {
  /**
   * Sets or clears a header. See `MessageStream.header`.
   *
   * @param stream The stream's name.
   * @param message The header, or `null`/`undefined` to clear it.
   */
  setHeader(stream: string, message: unknown): void;
  /**
   * Puts a message. See `MessageStream.put`.
   *
   * @param stream The stream's name.
   * @param message The message.
   * @param json The message's JSON text when the caller has it (a plain put line's slice):
   * exactly what the hub's codec encodes `message` to. A JSON codec's frame then takes it as it
   * is (see `buildEvent` in frame.ts); any other codec ignores it.
   * @returns The put's position (read `epoch` and `seq` only: it is the put's event).
   */
  putNow(stream: string, message: unknown, json?: string): Position;
  /**
   * Deletes a stream. See `MessageStream.delete`.
   *
   * @param stream The stream's name.
   */
  deleteNow(stream: string): void;
  /**
   * Starts listening. See `MessageStream.listen`.
   *
   * @param stream The stream's name.
   * @param queue The listener.
   * @param since Where to resume.
   * @returns The stream's position when the listener joined.
   */
  listenNow(stream: string, queue: Listener, since?: Position): Position;
  /**
   * Reads a stream's state without creating it. See `MessageStream.stat`.
   *
   * @param stream The stream's name.
   * @returns The stream's state, or `undefined` when there is no such stream.
   */
  statNow(stream: string): StreamStat | undefined;
}

const syncHubs = new WeakMap<object, SyncHub>();

/**
 * The sync fast paths of a hub, when it has them (a hub without an engine).
 *
 * @param hub The hub.
 * @returns Its fast paths, or `undefined` for a hub with an engine.
 */
export function syncOf(hub: object): SyncHub | undefined {
  return syncHubs.get(hub);
}

/**
 * Makes a core's fast paths reachable through {@linkcode syncOf}; the hub's constructor calls it.
 *
 * @param hub The hub.
 * @param sync Its fast paths.
 */
export function registerSync(hub: object, sync: SyncHub): void {
  syncHubs.set(hub, sync);
}

let epochCounter = 0;
const epochBase = (() => {
  const b = new Uint8Array(5);
  crypto.getRandomValues(b);
  return Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");
})();

/**
 * Whether an epoch has this hub's form (10 hex digits of a process, then a counter) but was
 * minted by another process.
 */
function mintedElsewhere(epoch: string): boolean {
  return /^[0-9a-f]{10}[0-9a-z]+$/.test(epoch) && !epoch.startsWith(epochBase);
}

/** A new epoch, unique to this process. */
function newEpoch(): string {
  return epochBase + (epochCounter++).toString(36);
}

/** A stream of the memory core: the shared state plus its history. */
export class MemoryStream extends StreamState implements HistoryOwner {
  /** Its history ring, or `undefined` while it keeps none. */
  history: History | undefined = undefined;
  /** The number its next history entry gets. */
  nextNo = 0;
  /** Resuming from a seq below this is not covered by its history. */
  trimmedTo = 0;
}

/**
 * The in-memory core: streams live in this process; history is kept within the bounds of a
 * {@linkcode HistoryBudget}. A stream that holds nothing (no listener, header or history) is
 * forgotten, and its name starts a new epoch when used again.
 */
export class MemoryCore extends Streams<MemoryStream> implements SyncHub {
  /** The history bounds every stream shares. */
  protected readonly budget: HistoryBudget;
  /**
   * Whether a restart loses everything (no durable store): then a position whose epoch another
   * process minted gets `state_lost`, not `epoch_changed` (the hub sets it).
   */
  lostOnRestart = true;
  /** A stream that must not be collected while room is made for it. */
  #pinned: MemoryStream | undefined;
  /** The expiry sweeps so far (see expireAfter). */
  #sweeps = 0;
  /** Sweeps a stream must stay unused to expire; 0: streams never expire. */
  #expireSweeps = 0;
  #expiry: ReturnType<typeof setInterval> | undefined;

  /**
   * Creates an empty core.
   *
   * @param codec The codec of every frame.
   * @param maxName The longest stream name accepted.
   * @param source The hub, handed to each listener's `attached`.
   * @param limits The history bounds.
   */
  constructor(codec: Codec, maxName: number, source: Detachable, limits: HistoryLimits) {
    super(codec, maxName, source);
    this.budget = new HistoryBudget(limits, (owner) => this.collect(owner as MemoryStream));
  }

  /** Sets or clears a header (see `setHeader`). */
  header(stream: string, message: unknown): Promise<void> {
    try {
      this.setHeader(stream, message);
      return Promise.resolve();
    } catch (e) {
      return Promise.reject(e);
    }
  }

  /** Puts a message (see `putNow`); resolves to a fresh position. */
  put(stream: string, message: unknown): Promise<Position> {
    try {
      const at = this.putNow(stream, message);
      return Promise.resolve({ epoch: at.epoch, seq: at.seq });
    } catch (e) {
      return Promise.reject(e);
    }
  }

  /** Deletes a stream (see `deleteNow`). */
  delete(stream: string): Promise<void> {
    try {
      this.deleteNow(stream);
      return Promise.resolve();
    } catch (e) {
      return Promise.reject(e);
    }
  }

  /** Starts listening (see `listenNow`). */
  listen(stream: string, queue: Listener, since: Position | undefined): Promise<Position> {
    try {
      return Promise.resolve(this.listenNow(stream, queue, since));
    } catch (e) {
      return Promise.reject(e);
    }
  }

  /** Reads a stream's state (see `statNow`). */
  stat(stream: string): Promise<StreamStat | undefined> {
    try {
      return Promise.resolve(this.statNow(stream));
    } catch (e) {
      return Promise.reject(e);
    }
  }

  /**
   * Removes every stream that has had no listeners (by name) and no puts or header changes
   * for `ms` milliseconds, as `delete` would: pattern listeners get `end`. A sweep runs every
   * quarter of `ms` (at most every second), so a stream goes between `ms` and `ms` plus one
   * sweep period after its last use.
   *
   * @param ms The time to live of an unused stream; 0 turns expiry off.
   */
  expireAfter(ms: number): void {
    clearInterval(this.#expiry);
    this.#expiry = undefined;
    this.#expireSweeps = 0;
    if (ms <= 0) return;
    const period = Math.max(1, Math.min(1000, Math.floor(ms / 4)));
    this.#expireSweeps = Math.ceil(ms / period);
    this.#expiry = setInterval(() => this.#sweep(), period);
    Deno.unrefTimer(this.#expiry);
  }

  #sweep(): void {
    const now = ++this.#sweeps;
    const expired: MemoryStream[] = [];
    for (const state of this.streams.values()) {
      if (state.listeners.size === 0 && now - state.touched > this.#expireSweeps) {
        expired.push(state);
      }
    }
    for (const state of expired) {
      try {
        if (this.streams.get(state.name) === state) this.deleteNow(state.name);
      } catch {
        // A core that cannot delete now (a durable store refusing writes): a later sweep does.
      }
    }
  }

  /** Stops the expiry sweep; nothing else to release in memory. */
  close(): Promise<void> {
    clearInterval(this.#expiry);
    this.#expiry = undefined;
    return Promise.resolve();
  }

  setHeader(stream: string, message: unknown): void {
    this.checkName(stream);
    if (message === undefined) message = null;
    let state = this.streams.get(stream);
    if (message === null) {
      if (!state || state.header === undefined) return;
    } else if (!state) {
      this.admitStream(stream, `Cannot set the header of stream "${stream.slice(0, 100)}"`);
      state = this.create(stream);
    }
    const change = this.event(state, "header", message);
    if (message !== null) {
      try {
        this.checkSize(stream, message, change.frame.byteLength);
      } catch (e) {
        this.collect(state);
        throw e;
      }
    }
    if (message === null) this.releaseHeader(state);
    else {
      // Making room may trim this stream's history: it must not be forgotten meanwhile.
      this.#pinned = state;
      try {
        this.chargeHeader(state, change.frame.byteLength);
      } catch (e) {
        this.#pinned = undefined;
        this.collect(state);
        throw e;
      } finally {
        this.#pinned = undefined;
      }
    }
    state.header = message === null ? undefined : message;
    state.joinEvent = undefined;
    this.budget.record(state, change);
    this.fanout(state, change);
    this.collect(state);
  }

  putNow(stream: string, message: unknown, json?: string): Position {
    this.checkName(stream);
    this.checkMessage(stream, message);
    let state = this.streams.get(stream);
    if (!state) {
      this.admitStream(stream, `Cannot put on stream "${stream.slice(0, 100)}"`);
      state = this.create(stream);
    }
    state.seq++;
    let ev: StreamEvent;
    try {
      ev = this.event(state, "put", message, json);
      this.checkSize(stream, message, ev.frame.byteLength, json);
    } catch (e) {
      state.seq--;
      this.collect(state);
      throw e;
    }
    this.puts++;
    this.budget.record(state, ev);
    this.fanout(state, ev);
    this.collect(state);
    return ev;
  }

  deleteNow(stream: string): void {
    this.checkName(stream);
    const state = this.streams.get(stream);
    if (!state) return;
    const end = this.event(state, "end", null);
    this.streams.delete(stream);
    this.releaseHeader(state);
    this.budget.drop(state);
    this.endListeners(state, end);
  }

  listenNow(stream: string, queue: Listener, since?: Position): Position {
    this.checkName(stream);
    this.checkQueue(stream, queue);
    if (!this.streams.get(stream)?.listeners.has(queue)) this.admitListen(stream, queue);
    const state = this.streams.get(stream) ?? this.create(stream);
    const position = { epoch: state.epoch, seq: state.seq };
    if (state.listeners.has(queue)) return position;
    let ok: boolean;
    if (since === undefined) {
      ok = this.deliverHeader(queue, state);
    } else {
      const reason = this.resetReason(state, since);
      ok = reason
        ? this.deliver(queue, this.event(state, "reset", { reason })) &&
          this.deliverHeader(queue, state)
        : this.budget.replay(state, since, this.codec, (ev) => this.deliver(queue, ev));
    }
    if (!ok) {
      // The listener threw during catch-up: it is broken, so it is not registered.
      this.collect(state);
      return position;
    }
    this.register(state, queue);
    return position;
  }

  statNow(stream: string): StreamStat | undefined {
    this.checkName(stream);
    const s = this.streams.get(stream);
    if (!s) return undefined;
    const header = s.header === undefined ? null : s.header;
    return { stream, header, seq: s.seq, epoch: s.epoch, listeners: s.listeners.size };
  }

  /** The stream's history ring. */
  protected override historyOf(state: MemoryStream): History | undefined {
    return state.history;
  }

  /** Bytes of history over all streams. */
  protected override historyBytes(): number {
    return this.budget.bytes;
  }

  /** Trims history, oldest first, to at most `bytes` (the memory budget makes room). */
  protected override trimHistory(bytes: number): void {
    this.budget.trimTo(bytes);
  }

  /** Creates a stream (with a new epoch unless given one). */
  protected create(name: string, epoch: string = newEpoch()): MemoryStream {
    const state = new MemoryStream(name, epoch);
    this.streams.set(name, state);
    this.patterns.created(state);
    return state;
  }

  /** Catches a pattern listener up on one stream, resuming from `since` when given. */
  protected override catchUp(
    state: MemoryStream,
    queue: Listener,
    since: Position | undefined,
  ): boolean {
    if (since === undefined) return this.deliverJoin(queue, state);
    const reason = this.resetReason(state, since);
    return reason
      ? this.deliver(queue, this.event(state, "reset", { reason })) &&
        this.deliverJoin(queue, state)
      : this.budget.replay(state, since, this.codec, (ev) => this.deliver(queue, ev));
  }

  /**
   * Why history cannot serve a listener at `since`, or `undefined` when it can. An epoch minted
   * by another msgstream process, on a hub that keeps nothing across restarts, is `state_lost`:
   * the server restarted (or is another server), not the stream deleted and created anew.
   */
  protected resetReason(state: MemoryStream, since: Position): ResetReason | undefined {
    const reason = this.budget.uncovered(state, since);
    if (reason === "epoch_changed" && this.lostOnRestart && mintedElsewhere(since.epoch)) {
      return "state_lost";
    }
    return reason;
  }

  /** Forgets a stream that holds nothing: no listeners, no header, no history. */
  protected collect(state: MemoryStream): void {
    // Called after a put, a header change and a hangup: the stream was used now.
    state.touched = this.#sweeps;
    if (
      state.listeners.size === 0 && state.header === undefined &&
      (!state.history || state.history.count === 0) &&
      this.streams.get(state.name) === state && state !== this.#pinned
    ) {
      this.streams.delete(state.name);
      this.budget.drop(state);
      // Pattern listeners learn the stream went: its name starts a new epoch when used again.
      if (state.patternQueues) this.patterns.ended(state, this.event(state, "end", null));
    }
  }
}
