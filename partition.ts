/**
 * The partition engine: the hub of one worker of a multi-core server (`--workers N`,
 * `workers.ts`), sharing streams with the other workers of the process. Each stream has one
 * owner worker, picked by a hash of its name ({@linkcode ownerOf}); the owner keeps the
 * stream's state (epoch, seq, header, bounded history), assigns each put its seq and sends
 * every event, in order, to the workers that follow the stream. The other workers forward
 * their puts, header changes, deletes and joins to the owner over a `MessagePort` per pair of
 * workers. On each worker an `EngineCore` (engine.ts) fans the events out to that worker's
 * connections, and joins them gaplessly from the owner's snapshots, as with Redis.
 *
 * Why the join is gapless: a port delivers messages in the order they were posted. The owner
 * handles a sync request in one step (add the follower, read the snapshot) and posts the
 * snapshot on the same port as the events, so events before it reached the follower before
 * it and events after it follow it: what {@linkcode Engine.sync} promises.
 *
 * Messages cross ports as the codec's text (encoded once by the sender, decoded once by each
 * receiving worker); a tick's messages to one peer go as one batch.
 *
 * @example Two engines, two hubs, one stream
 * ```ts
 * import { MessageStream } from "./mod.ts";
 * import { PartitionEngine } from "./partition.ts";
 * import { assertEquals } from "@std/assert";
 *
 * const { port1, port2 } = new MessageChannel();
 * const a = new MessageStream({ engine: new PartitionEngine({ index: 0, peers: [undefined, port1] }) });
 * const b = new MessageStream({ engine: new PartitionEngine({ index: 1, peers: [port2, undefined] }) });
 * await a.put("job", 1);
 * assertEquals((await b.stat("job"))?.seq, 1);
 * await a.close();
 * await b.close();
 * ```
 *
 * @module
 */

import { LimitExceededError } from "./budget.ts";
import type { Codec } from "./codec.ts";
import type { Engine, EngineEvent, EngineSink, EngineSnapshot } from "./engine.ts";
import { EngineUnavailableError } from "./engine.ts";
import { matchPattern } from "./pattern.ts";
import type { Position, ResetReason } from "./types.ts";

/** Options of a {@linkcode PartitionEngine}. */
export interface PartitionOptions {
  /** This worker's index among the workers (0 ≤ index < peers.length). */
  index: number;
  /**
   * One port per worker, by index, to talk to that worker (`undefined` at this worker's own
   * index).
   */
  peers: readonly (MessagePort | undefined)[];
  /**
   * Most events each owned stream keeps for resuming listeners.
   *
   * @default {1000}
   */
  historyMessages?: number | undefined;
  /**
   * Most bytes (of message text) each owned stream's history keeps.
   *
   * @default {1048576}
   */
  historyBytes?: number | undefined;
  /**
   * Most bytes of history over every stream this worker owns; past it the streams that hold
   * history give up their oldest event in turn.
   *
   * @default {67108864}
   */
  maxHistoryBytes?: number | undefined;
  /**
   * Most streams this worker owns at once; a put, header or join that would create one more
   * gets `limit_exceeded` (`max_streams`).
   *
   * @default {100000}
   */
  maxStreams?: number | undefined;
}

/**
 * The worker that owns a stream: FNV-1a of its name, modulo the number of workers. Every
 * worker computes the same owner for the same name.
 *
 * @param stream The stream's name.
 * @param workers How many workers share the streams.
 * @returns The owner's index.
 *
 * @example
 * ```ts
 * import { ownerOf } from "./partition.ts";
 * import { assertEquals } from "@std/assert";
 *
 * assertEquals(ownerOf("job", 1), 0);
 * assertEquals(ownerOf("job", 2), ownerOf("job", 2));
 * ```
 */
export function ownerOf(stream: string, workers: number): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < stream.length; i++) {
    h ^= stream.charCodeAt(i);
    h = Math.imul(h, 0x01000193);
  }
  return (h >>> 0) % workers;
}

// Message kinds on a port. Requests (to the owner) carry an id; replies name it.
const PUT = 0; // [PUT, id, stream, text]
const HEADER = 1; // [HEADER, id, stream, text | null]
const DELETE = 2; // [DELETE, id, stream]
const SYNC = 3; // [SYNC, id, stream, sinceEpoch | null, sinceSeq, existing]
const STAT = 4; // [STAT, id, stream]
const UNFOLLOW = 5; // [UNFOLLOW, stream]
const EVENT = 6; // [EVENT, stream, kind, text | null, seq, epoch]
const REPLY = 7; // [REPLY, id, value]
const FAIL = 8; // [FAIL, id, name, limit, message]
const LOCAL = 9; // [LOCAL, fn]: this worker's own reply or snapshot, in order (never sent)
const WATCH = 10; // [WATCH, id]: tell me of every stream you create from now on
const CREATED = 11; // [CREATED, stream, epoch]
const NAMES = 12; // [NAMES, id, pattern]: the names you own that match

type Wire = readonly unknown[];
type Kind = "put" | "header";

/** The reply of a sync or stat, as it crosses a port (message texts, not values). */
interface WireSnapshot {
  epoch: string;
  seq: number;
  header: string | null;
  reset?: ResetReason;
  events?: [Kind, string | null, number][];
  absent?: boolean;
}

/** A stream this worker owns: its state and its bounded history. */
class Owned {
  seq = 0;
  header: string | null = null;
  /** History entries from `head` on: kind, text, seq. */
  readonly kinds: Kind[] = [];
  readonly texts: (string | null)[] = [];
  readonly seqs: number[] = [];
  head = 0;
  bytes = 0;
  /** A listener at a seq below this missed trimmed events. */
  trimmedTo = 0;
  /** The workers that follow the stream. */
  readonly followers: Set<number> = new Set();

  constructor(readonly name: string, readonly epoch: string) {}

  get count(): number {
    return this.seqs.length - this.head;
  }
}

interface Pending {
  resolve(value: unknown): void;
  reject(error: Error): void;
  /** Called with the reply in order with the port's other messages (a snapshot's join). */
  apply?: ((value: unknown) => void) | undefined;
}

const epochBase = (() => {
  const b = crypto.getRandomValues(new Uint8Array(5));
  return Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");
})();
let epochCounter = 0;

/**
 * The engine of one worker: owner of the streams that hash to it, forwarder for the others.
 * See the module's documentation.
 */
export class PartitionEngine implements Engine {
  readonly #index: number;
  readonly #workers: number;
  readonly #peers: readonly (MessagePort | undefined)[];
  readonly #out: Wire[][];
  #flushing = false;
  #sink: EngineSink | undefined;
  #codec: Codec | undefined;
  readonly #owned: Map<string, Owned> = new Map();
  /** The owned streams that hold history, in the order they take turns giving it up. */
  readonly #withHistory: Set<Owned> = new Set();
  readonly #pending: Map<number, Pending> = new Map();
  /** Streams whose events wait behind a snapshot just placed, until the next macrotask. */
  readonly #held: Map<string, (() => boolean)[]> = new Map();
  #releaseTimer: ReturnType<typeof setTimeout> | undefined;
  /** The workers told of every stream this worker creates (pattern listens). */
  readonly #watchers: Set<number> = new Set();
  #onCreated: ((stream: string, epoch: string) => void) | undefined;
  /** Events, replies and snapshots for this worker's hub, until the next macrotask. */
  #inbox: Wire[] = [];
  #inboxTimer: ReturnType<typeof setTimeout> | undefined;
  /**
   * Followers of deleted streams, kept so that the stream's next life reaches them; dropped
   * when they unfollow or the stream is made again.
   */
  readonly #followersOnly: Map<string, Set<number>> = new Map();
  #nextId = 1;
  #closed = false;
  #historyTotal = 0;
  readonly #historyMessages: number;
  readonly #historyBytes: number;
  readonly #maxHistoryBytes: number;
  readonly #maxStreams: number;
  /** Messages sent to other workers (requests, replies, events: each to each worker counts). */
  forwarded = 0;
  /** Batches posted to other workers (one `postMessage` each). */
  batches = 0;

  /**
   * Creates the engine and starts reading its peers' ports.
   *
   * @param options The worker's index, its ports and the bounds of what it owns.
   * @throws {RangeError} When the index is not one of the peers'.
   */
  constructor(options: PartitionOptions) {
    const { index, peers } = options;
    if (!Number.isInteger(index) || index < 0 || index >= peers.length) {
      throw new RangeError(`Invalid worker index ${index} of ${peers.length} workers`);
    }
    this.#index = index;
    this.#workers = peers.length;
    this.#peers = peers;
    this.#out = peers.map(() => []);
    this.#historyMessages = options.historyMessages ?? 1000;
    this.#historyBytes = options.historyBytes ?? 1 << 20;
    this.#maxHistoryBytes = options.maxHistoryBytes ?? 64 << 20;
    this.#maxStreams = options.maxStreams ?? 100_000;
    peers.forEach((port, from) => {
      if (!port) return;
      port.onmessage = (e: MessageEvent) => {
        for (const m of e.data as Wire[]) {
          // What goes to this worker's hub waits for the next macrotask (see #queue); what
          // it owns is handled now.
          if (m[0] === EVENT || m[0] === REPLY || m[0] === FAIL || m[0] === CREATED) {
            this.#queue(m);
          } else this.#receive(from, m);
        }
      };
    });
  }

  /** Binds the hub's sink and codec. */
  bind(sink: EngineSink, codec: Codec): void {
    this.#sink = sink;
    this.#codec = codec;
  }

  /** How many streams this worker owns. */
  get owned(): number {
    return this.#owned.size;
  }

  /** Puts at the owner; resolves once this worker's listeners have the put. */
  put(stream: string, message: unknown): Promise<Position> {
    const owner = ownerOf(stream, this.#workers);
    const text = this.#codecOf().encode(message);
    if (owner === this.#index) return this.#local(() => this.#put(stream, text, message));
    return this.#request(owner, [PUT, 0, stream, text]) as Promise<Position>;
  }

  /**
   * Runs an operation on a stream this worker owns now; its result reaches the caller in
   * order with this worker's deliveries (after its own event, and after earlier requests').
   */
  #local<T>(op: () => T): Promise<T> {
    return new Promise((resolve, reject) => {
      let value: T;
      try {
        value = op();
      } catch (e) {
        this.#queue([LOCAL, () => reject(e)]);
        return;
      }
      this.#queue([LOCAL, () => resolve(value)]);
    });
  }

  /**
   * Queues a message for this worker's hub: events, replies and snapshots reach it in a
   * macrotask of their own, in order. Never synchronously: a listen that joined from this
   * worker's copy of a stream is answered `ok` through microtasks, and a put handled in the
   * same turn (another connection's read) must not reach that listener before its `ok`.
   */
  #queue(m: Wire): void {
    this.#inbox.push(m);
    this.#inboxTimer ??= setTimeout(() => {
      this.#inboxTimer = undefined;
      const inbox = this.#inbox;
      this.#inbox = [];
      let failed = false;
      for (const item of inbox) {
        try {
          this.#take(item);
        } catch {
          failed = true; // e.g. a text this hub's codec cannot decode: that event is missed
        }
      }
      // Missed events are never silent: every stream here is caught up again from its owner.
      if (failed) this.#sink?.lost();
    }, 0);
  }

  /** Sets or clears the header at the owner. */
  async header(stream: string, message: unknown): Promise<void> {
    const owner = ownerOf(stream, this.#workers);
    const text = message === null ? null : this.#codecOf().encode(message);
    if (owner === this.#index) await this.#local(() => this.#header(stream, text, message));
    else await this.#request(owner, [HEADER, 0, stream, text]);
  }

  /** Deletes the stream at the owner. */
  async delete(stream: string): Promise<void> {
    const owner = ownerOf(stream, this.#workers);
    if (owner === this.#index) await this.#local(() => this.#delete(stream));
    else await this.#request(owner, [DELETE, 0, stream]);
  }

  /**
   * Follows the stream at its owner and places the snapshot among its events: events after it
   * wait for the next macrotask, so that the joiner's `ok` (sent when this promise settles,
   * through microtasks only) goes out before them, as PROTOCOL.md promises.
   */
  sync(
    stream: string,
    since: Position | undefined,
    onSnapshot: (snapshot: EngineSnapshot) => void,
    existing?: boolean,
  ): Promise<void> {
    const owner = ownerOf(stream, this.#workers);
    return new Promise((resolve, reject) => {
      const apply = (w: unknown) =>
        this.#placeSnapshot(stream, () => {
          try {
            onSnapshot(this.#snapshot(w as WireSnapshot));
            resolve();
          } catch (e) {
            reject(e);
          }
        });
      const epoch = since?.epoch ?? null;
      const seq = since?.seq ?? 0;
      if (owner === this.#index) {
        try {
          const snap = this.#sync(this.#index, stream, epoch, seq, existing === true);
          this.#queue([LOCAL, () => apply(snap)]);
        } catch (e) {
          this.#queue([LOCAL, () => reject(e)]);
        }
      } else {
        this.#request(owner, [SYNC, 0, stream, epoch, seq, existing === true], apply)
          .catch(reject);
      }
    });
  }

  /** Runs a snapshot's join now, or after the events held before it; holds what follows. */
  #placeSnapshot(stream: string, join: () => void): void {
    const held = this.#held.get(stream);
    if (held) {
      held.push(() => (join(), true));
      return;
    }
    join();
    this.#hold(stream, []);
  }

  /** Holds a stream's next events until the next macrotask. */
  #hold(stream: string, queue: (() => boolean)[]): void {
    this.#held.set(stream, queue);
    this.#releaseTimer ??= setTimeout(() => {
      this.#releaseTimer = undefined;
      for (const name of [...this.#held.keys()]) this.#release(name);
    }, 0);
  }

  /** Delivers a stream's held events, up to the next snapshot (which holds the rest). */
  #release(stream: string): void {
    const held = this.#held.get(stream);
    if (!held) return;
    this.#held.delete(stream);
    for (let i = 0; i < held.length; i++) {
      let snapshot = false;
      try {
        snapshot = (held[i] as () => boolean)();
      } catch {
        this.#sink?.lost(); // as in #queue: catch every stream up rather than miss an event
      }
      if (snapshot) {
        this.#hold(stream, held.slice(i + 1));
        return;
      }
    }
  }

  /** Hands an event to the hub, or holds it behind a snapshot just placed. */
  #deliver(
    stream: string,
    kind: "put" | "header" | "end",
    message: unknown,
    seq: number,
    epoch: string,
  ): void {
    const held = this.#held.size === 0 ? undefined : this.#held.get(stream);
    if (held) held.push(() => (this.#sink?.event(stream, kind, message, seq, epoch), false));
    else this.#sink?.event(stream, kind, message, seq, epoch);
  }

  /**
   * Lists the streams every worker owns whose names match the pattern: a page per worker.
   *
   * @param pattern The pattern.
   * @returns The names, a page per worker.
   */
  async *streams(pattern: string): AsyncIterable<string[]> {
    for (let w = 0; w < this.#workers; w++) {
      yield w === this.#index
        ? await this.#local(() => this.#names(pattern))
        : await this.#request(w, [NAMES, 0, pattern]) as string[];
    }
  }

  /**
   * From now on, every worker tells this one of each stream it creates (pattern listens).
   *
   * @param onCreated Takes the stream's name and its first epoch.
   */
  async watchCreated(onCreated: (stream: string, epoch: string) => void): Promise<void> {
    this.#onCreated = onCreated;
    this.#watchers.add(this.#index);
    const asks: Promise<unknown>[] = [];
    for (let w = 0; w < this.#workers; w++) {
      if (w !== this.#index) asks.push(this.#request(w, [WATCH, 0]));
    }
    await Promise.all(asks);
  }

  #names(pattern: string): string[] {
    const names: string[] = [];
    for (const name of this.#owned.keys()) if (matchPattern(pattern, name)) names.push(name);
    return names;
  }

  /** Reads the stream at its owner. */
  async stat(stream: string): Promise<EngineSnapshot | undefined> {
    const owner = ownerOf(stream, this.#workers);
    const snap = owner === this.#index
      ? await this.#local(() => this.#stat(stream))
      : await this.#request(owner, [STAT, 0, stream]) as WireSnapshot | null;
    return snap ? this.#snapshot(snap) : undefined;
  }

  /** Stops following the stream. */
  unfollow(stream: string): void {
    const owner = ownerOf(stream, this.#workers);
    if (owner === this.#index) this.#unfollowed(stream, this.#index);
    else this.#post(owner, [UNFOLLOW, stream]);
  }

  /** Refuses requests from now on; requests in flight fail. */
  close(): Promise<void> {
    this.#closed = true;
    clearTimeout(this.#releaseTimer);
    clearTimeout(this.#inboxTimer);
    this.#inbox = [];
    this.#held.clear();
    for (const port of this.#peers) port?.close();
    const error = new EngineUnavailableError("Cannot reach the stream's owner: the engine closed");
    for (const p of this.#pending.values()) p.reject(error);
    this.#pending.clear();
    return Promise.resolve();
  }

  #codecOf(): Codec {
    if (!this.#codec) throw new Error("The partition engine is not bound to a hub");
    return this.#codec;
  }

  #request(
    owner: number,
    message: unknown[],
    apply?: (value: unknown) => void,
  ): Promise<unknown> {
    if (this.#closed) {
      return Promise.reject(new EngineUnavailableError("Cannot reach the stream's owner: closed"));
    }
    const id = this.#nextId++;
    message[1] = id;
    return new Promise((resolve, reject) => {
      this.#pending.set(id, { resolve, reject, apply });
      this.#post(owner, message);
    });
  }

  /** Queues a message for a peer; the tick's messages go as one batch. */
  #post(to: number, message: Wire): void {
    if (this.#closed) return;
    (this.#out[to] as Wire[]).push(message);
    if (!this.#flushing) {
      this.#flushing = true;
      queueMicrotask(() => this.#flush());
    }
  }

  #flush(): void {
    this.#flushing = false;
    for (let i = 0; i < this.#workers; i++) {
      const batch = this.#out[i] as Wire[];
      if (batch.length === 0) continue;
      this.#out[i] = [];
      this.forwarded += batch.length;
      this.batches++;
      this.#peers[i]?.postMessage(batch);
    }
  }

  /** Hands a queued message to this worker's hub. */
  #take(m: Wire): void {
    switch (m[0]) {
      case LOCAL:
        (m[1] as () => void)();
        return;
      case CREATED:
        this.#onCreated?.(m[1] as string, m[2] as string);
        return;
      case EVENT: {
        const text = m[3] as string | null;
        // A local event carries its message (index 6); a remote one its text.
        const message = m.length > 6 ? m[6] : text === null ? null : this.#codecOf().decode(text);
        this.#deliver(
          m[1] as string,
          m[2] as "put" | "header" | "end",
          message,
          m[4] as number,
          m[5] as string,
        );
        return;
      }
      case REPLY: {
        const p = this.#pending.get(m[1] as number);
        this.#pending.delete(m[1] as number);
        p?.apply?.(m[2]);
        p?.resolve(m[2]);
        return;
      }
      case FAIL: {
        const p = this.#pending.get(m[1] as number);
        this.#pending.delete(m[1] as number);
        p?.reject(
          m[2] === "LimitExceededError"
            ? new LimitExceededError("max_streams", m[4] as string)
            : new Error(m[4] as string),
        );
        return;
      }
    }
  }

  /** Handles a request to this worker as a stream's owner. */
  #receive(from: number, m: Wire): void {
    switch (m[0]) {
      case UNFOLLOW:
        this.#unfollowed(m[1] as string, from);
        return;
    }
    // A request: the owner answers on the same port, after any event it sent before.
    const id = m[1] as number;
    const stream = m[2] as string;
    try {
      let value: unknown = null;
      if (m[0] === PUT) value = this.#put(stream, m[3] as string, undefined);
      else if (m[0] === HEADER) this.#header(stream, m[3] as string | null, undefined);
      else if (m[0] === DELETE) this.#delete(stream);
      else if (m[0] === SYNC) {
        value = this.#sync(from, stream, m[3] as string | null, m[4] as number, m[5] === true);
      } else if (m[0] === STAT) value = this.#stat(stream);
      else if (m[0] === NAMES) value = this.#names(stream);
      else if (m[0] === WATCH) this.#watchers.add(from);
      this.#post(from, [REPLY, id, value]);
    } catch (e) {
      const error = e instanceof Error ? e : new Error(String(e));
      this.#post(from, [FAIL, id, error.name, null, error.message]);
    }
  }

  /** The owned stream, made when asked to and within `maxStreams`. */
  #stream(name: string, what: string): Owned {
    let s = this.#owned.get(name);
    if (s) return s;
    if (this.#owned.size >= this.#maxStreams) {
      throw new LimitExceededError(
        "max_streams",
        `${what}: its owner worker holds ${this.#maxStreams} streams, its limit (max_streams)`,
      );
    }
    s = new Owned(name, epochBase + (epochCounter++).toString(36));
    this.#owned.set(name, s);
    for (const w of this.#watchers) {
      const created = [CREATED, name, s.epoch];
      if (w === this.#index) this.#queue(created);
      else this.#post(w, created);
    }
    const waiting = this.#followersOnly.get(name);
    if (waiting) {
      for (const w of waiting) s.followers.add(w);
      this.#followersOnly.delete(name);
    }
    return s;
  }

  /** Sends an event of an owned stream to every follower; the local one gets `local`. */
  #emit(
    s: Owned,
    kind: "put" | "header" | "end",
    text: string | null,
    local: unknown,
  ): void {
    for (const w of s.followers) {
      if (w !== this.#index) this.#post(w, [EVENT, s.name, kind, text, s.seq, s.epoch]);
    }
    if (s.followers.has(this.#index)) {
      const message = local !== undefined
        ? local
        : text === null
        ? null
        : this.#codecOf().decode(text);
      this.#queue([EVENT, s.name, kind, text, s.seq, s.epoch, message]);
    }
  }

  #put(stream: string, text: string, local: unknown): Position {
    const s = this.#stream(stream, `Cannot put to stream "${stream}"`);
    s.seq++;
    this.#record(s, "put", text);
    this.#emit(s, "put", text, local);
    return { epoch: s.epoch, seq: s.seq };
  }

  #header(stream: string, text: string | null, local: unknown): void {
    const s = this.#stream(stream, `Cannot set the header of stream "${stream}"`);
    s.header = text;
    this.#record(s, "header", text);
    this.#emit(s, "header", text, local);
  }

  #delete(stream: string): void {
    const s = this.#owned.get(stream);
    if (!s) return;
    this.#owned.delete(stream);
    this.#withHistory.delete(s);
    this.#historyTotal -= s.bytes;
    this.#emit(s, "end", null, null);
    // The followers still follow the name: a new stream of that name reaches them.
    if (s.followers.size > 0) this.#followersOnly.set(stream, new Set(s.followers));
  }

  /** A worker stopped following a stream (alive or deleted). */
  #unfollowed(stream: string, worker: number): void {
    this.#owned.get(stream)?.followers.delete(worker);
    const waiting = this.#followersOnly.get(stream);
    if (waiting?.delete(worker) && waiting.size === 0) this.#followersOnly.delete(stream);
  }

  #record(s: Owned, kind: Kind, text: string | null): void {
    const bytes = text === null ? 16 : text.length + 16;
    s.kinds.push(kind);
    s.texts.push(text);
    s.seqs.push(s.seq);
    s.bytes += bytes;
    this.#historyTotal += bytes;
    if (s.count === 1) this.#withHistory.add(s);
    while (
      s.count > 0 && (s.count > this.#historyMessages || s.bytes > this.#historyBytes)
    ) this.#trim(s);
    // Past the bound over every owned stream: the streams that hold history give up their
    // oldest event in turn (each trim is O(1), whatever the number of streams).
    while (this.#historyTotal > this.#maxHistoryBytes) {
      const next = this.#withHistory.values().next();
      if (next.done) break;
      const other = next.value;
      this.#trim(other);
      this.#withHistory.delete(other);
      if (other.count > 0) this.#withHistory.add(other);
    }
  }

  #trim(s: Owned): void {
    const i = s.head++;
    const text = s.texts[i] as string | null;
    const bytes = text === null ? 16 : text.length + 16;
    s.bytes -= bytes;
    this.#historyTotal -= bytes;
    const seq = s.seqs[i] as number;
    s.trimmedTo = Math.max(s.trimmedTo, s.kinds[i] === "put" ? seq : seq + 1);
    s.texts[i] = null;
    if (s.count === 0) this.#withHistory.delete(s);
    if (s.head > 64 && s.head * 2 > s.seqs.length) {
      s.kinds.splice(0, s.head);
      s.texts.splice(0, s.head);
      s.seqs.splice(0, s.head);
      s.head = 0;
    }
  }

  #sync(
    from: number,
    stream: string,
    sinceEpoch: string | null,
    sinceSeq: number,
    existing: boolean,
  ): WireSnapshot {
    let s = this.#owned.get(stream);
    if (!s && existing) {
      return { epoch: "", seq: 0, header: null, absent: true };
    }
    s ??= this.#stream(stream, `Cannot listen to stream "${stream}"`);
    s.followers.add(from);
    const snap: WireSnapshot = { epoch: s.epoch, seq: s.seq, header: s.header };
    if (sinceEpoch === null) return snap;
    const reset: ResetReason | undefined = sinceEpoch !== s.epoch
      ? "epoch_changed"
      : sinceSeq > s.seq
      ? "ahead_of_stream"
      : sinceSeq < s.trimmedTo
      ? "history_trimmed"
      : undefined;
    if (reset !== undefined) return { ...snap, reset };
    const events: [Kind, string | null, number][] = [];
    for (let i = s.head; i < s.seqs.length; i++) {
      const seq = s.seqs[i] as number;
      const kind = s.kinds[i] as Kind;
      if (kind === "put" ? seq > sinceSeq : seq >= sinceSeq) {
        events.push([kind, s.texts[i] as string | null, seq]);
      }
    }
    return { ...snap, events };
  }

  #stat(stream: string): WireSnapshot | null {
    const s = this.#owned.get(stream);
    return s ? { epoch: s.epoch, seq: s.seq, header: s.header } : null;
  }

  /** A snapshot from its wire form: texts decoded with the hub's codec. */
  #snapshot(w: WireSnapshot): EngineSnapshot {
    const codec = this.#codecOf();
    let reset = w.reset;
    let events: EngineEvent[] | undefined;
    try {
      events = w.events?.map(([kind, text, seq]) => ({
        kind,
        message: text === null ? null : codec.decode(text),
        seq,
      }));
    } catch {
      // History this hub cannot decode cannot be replayed: a reset, never a gap.
      reset = "state_lost";
      events = undefined;
    }
    let header: unknown;
    try {
      header = w.header === null ? undefined : codec.decode(w.header);
    } catch {
      header = undefined; // the listener is told of no header rather than of a wrong one
    }
    return {
      epoch: w.epoch,
      seq: w.seq,
      header,
      ...(reset !== undefined ? { reset } : {}),
      ...(events !== undefined ? { events } : {}),
      ...(w.absent ? { absent: true } : {}),
    };
  }
}
