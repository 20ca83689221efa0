/**
 * Stream-name patterns: one syntax for pattern listens and for the rights of tokens, and the
 * registry of the hub's pattern listeners ({@linkcode PatternFollows}).
 *
 * ## The syntax
 *
 * A pattern is a stream name in which `*` matches any run of characters, the empty run
 * included, dots and slashes too: `jobs.*` matches `jobs.1` and `jobs.eu.7`, `*` matches every
 * stream, `jobs.*.log` matches `jobs.7.log`. Every other character stands for itself; there is
 * no escape (a stream whose name holds a `*` is matched by a `*` of the pattern). A pattern
 * without `*` matches exactly the stream of that name. Token files use the same syntax in
 * `publish` and `subscribe`; the Redis engine hands patterns to Redis' own glob matching with
 * every character but `*` escaped.
 *
 * ## Covering
 *
 * A pattern listen is allowed when one `subscribe` pattern of the token covers the whole
 * listen pattern: every name the listen pattern matches, the grant matches
 * ({@linkcode patternCovers}). `jobs.*` covers `jobs.eu.*` and `jobs.7`; `jobs.eu.*` does not
 * cover `jobs.*`. Several grants that only together cover the pattern are not enough (fail
 * closed): grant `*` or a wider pattern instead.
 *
 * @example Match and cover
 * ```ts
 * import { matchPattern, patternCovers } from "./pattern.ts";
 * import { assertEquals } from "@std/assert";
 *
 * assertEquals(matchPattern("jobs.*", "jobs.eu.7"), true);
 * assertEquals(matchPattern("jobs.*", "job"), false);
 * assertEquals(patternCovers("jobs.*", "jobs.eu.*"), true);
 * assertEquals(patternCovers("jobs.eu.*", "jobs.*"), false);
 * ```
 *
 * @module
 */

import type { Codec } from "./codec.ts";
import { buildEvent } from "./frame.ts";
import type { Listener, PatternJoin, Position, StreamEvent } from "./types.ts";

/**
 * Glob matching with `*` only. Characters of `subject` that are `*` can only be taken by a `*`
 * of `glob` (which is what makes the same function decide covering): the literal runs between
 * the pattern's stars hold no `*`. The pattern's head must begin the subject and its tail end
 * it; each run between stars is placed at its leftmost place after the previous one (which is
 * never worse for the runs after it). `indexOf` does the searching, so a hostile pattern such
 * as `*aaaa…ab` against `aaaa…a` costs about the lengths added, not their product.
 */
function glob(pattern: string, subject: string): boolean {
  const first = pattern.indexOf("*");
  if (first < 0) return pattern === subject;
  const last = pattern.lastIndexOf("*");
  const tail = pattern.length - last - 1;
  const end = subject.length - tail;
  if (end < first) return false;
  for (let i = 0; i < first; i++) {
    if (pattern.charCodeAt(i) !== subject.charCodeAt(i)) return false;
  }
  for (let i = 1; i <= tail; i++) {
    if (pattern.charCodeAt(pattern.length - i) !== subject.charCodeAt(subject.length - i)) {
      return false;
    }
  }
  let at = first;
  let p = first + 1;
  while (p < last) {
    const q = pattern.indexOf("*", p);
    if (q > p) {
      const run = pattern.slice(p, q);
      const found = subject.indexOf(run, at);
      if (found < 0 || found + run.length > end) return false;
      at = found + run.length;
    }
    p = q + 1;
  }
  return true;
}

/**
 * Whether a stream name matches a pattern (`*` matches any run of characters).
 *
 * @param pattern The pattern.
 * @param stream The stream's name.
 * @returns Whether it matches.
 *
 * @example
 * ```ts
 * import { matchPattern } from "./pattern.ts";
 * import { assertEquals } from "@std/assert";
 *
 * assertEquals(matchPattern("jobs.*", "jobs.1"), true);
 * assertEquals(matchPattern("jobs.*", "other"), false);
 * ```
 */
export function matchPattern(pattern: string, stream: string): boolean {
  if (pattern === "*") return true;
  return glob(pattern, stream);
}

/**
 * Whether every stream name `pattern` matches is also matched by `grant`.
 *
 * @param grant The wider pattern (a token's right).
 * @param pattern The pattern asked for.
 * @returns Whether `grant` covers `pattern`.
 *
 * @example
 * ```ts
 * import { patternCovers } from "./pattern.ts";
 * import { assertEquals } from "@std/assert";
 *
 * assertEquals(patternCovers("*", "jobs.*"), true);
 * assertEquals(patternCovers("jobs.*", "*"), false);
 * ```
 */
export function patternCovers(grant: string, pattern: string): boolean {
  // A `*` of the pattern stands for any run: only a `*` of the grant can take it.
  return glob(grant, pattern);
}

/**
 * Checks a pattern given by a caller.
 *
 * @param pattern The pattern.
 * @param maxLength The longest pattern accepted (the hub's longest stream name).
 * @returns The pattern.
 * @throws {TypeError} When it is not a non-empty, well-formed string.
 * @throws {RangeError} When it is longer than `maxLength`.
 *
 * @example
 * ```ts
 * import { checkPattern } from "./pattern.ts";
 * import { assertEquals, assertThrows } from "@std/assert";
 *
 * assertEquals(checkPattern("jobs.*", 256), "jobs.*");
 * assertThrows(() => checkPattern("", 256), TypeError);
 * ```
 */
export function checkPattern(pattern: unknown, maxLength: number): string {
  if (typeof pattern !== "string") {
    throw new TypeError(
      `Pattern must be a string, got ${pattern === null ? "null" : typeof pattern}`,
    );
  }
  if (pattern.length === 0) throw new TypeError("Pattern must not be empty");
  if (!pattern.isWellFormed()) {
    throw new TypeError("Pattern must be well-formed Unicode: it has a lone surrogate");
  }
  if (pattern.length > maxLength) {
    throw new RangeError(
      `Pattern is ${pattern.length} characters long: the limit is ${maxLength}`,
    );
  }
  return pattern;
}

/** What the pattern registry needs of a stream's state (the hub's `StreamState`). */
export interface PatternStream {
  /** The stream's name. */
  readonly name: string;
  /** Its epoch. */
  epoch: string;
  /** The seq of its last put. */
  seq: number;
  /**
   * Queues that follow it through a pattern, caught up: a set shared by every stream with the
   * same followers and never changed in place (see `PatternFollows`).
   */
  patternQueues: ReadonlySet<Listener> | undefined;
  /** Its direct listeners. */
  readonly listeners: Set<Listener>;
  /** Nesting depth of fanouts in progress. */
  fanning: number;
  /** Listeners that joined during a fanout. */
  joinedDuringFanout: Set<Listener> | undefined;
  /** The name as JSON text (see frame.ts). */
  jsonName: string | undefined;
}

/** What the registry needs of its core. */
export interface PatternHost<S extends PatternStream> {
  /** The codec of every frame. */
  readonly codec: Codec;
  /** The current state of a stream, if the core holds it. */
  current(name: string): S | undefined;
  /**
   * Every stream the core holds, as a live iterator (a `Map`'s): the registry walks it in
   * steps, across turns of the event loop.
   */
  snapshot(): Iterable<S>;
  /**
   * Catches a queue up on one stream: the header (always, `null` when none is set), or with
   * `since` the events after it, or a `reset` and the header. Returns `false` when the queue
   * threw (it is then removed everywhere).
   */
  catchUp(state: S, queue: Listener, since: Position | undefined): boolean;
  /** Hands one event to one queue; `false` when it threw (it is then removed everywhere). */
  deliver(queue: Listener, ev: StreamEvent): boolean;
  /** Tells the queue what it follows (its `attached`). */
  attached(queue: Listener): void;
  /**
   * Makes room for one more stream followed through a pattern, before the queue is caught up
   * on it (the memory budget's `FOLLOW_COST`); throws when there is none. The join is then
   * undone: the pattern is dropped, as a `hangup` would.
   *
   * @param pattern The pattern joining.
   */
  admitFollow?(pattern: string): void;
}

/** Options of {@linkcode PatternFollows}. */
export interface PatternFollowsOptions {
  /**
   * Longest run of catch-up work, in milliseconds, before a pattern join yields to the event
   * loop. Joins take turns: one slice of one join per turn of the loop, whatever the number
   * of joins in progress, so that many joins cost the rest of the server what one does.
   *
   * @default {4}
   */
  sliceMs?: number;
}

/** One queue's pattern subscriptions. */
class Follow<S> {
  /** The patterns, each with the join it belongs to (a fresh object per listen). */
  readonly patterns: Map<string, object> = new Map();
  /** The streams it is caught up on. */
  readonly streams: Set<S> = new Set();

  matches(name: string): boolean {
    for (const p of this.patterns.keys()) if (matchPattern(p, name)) return true;
    return false;
  }
}

/**
 * The hub's pattern listeners. A queue that listens to a pattern gets, per matching stream:
 * the header first (always: `null` when none is set), then every later event of the stream; a
 * stream created later is announced with its header event before its first put; a stream that
 * goes (deleted, expired, collected) gives `end` and the subscription stays. A queue gets each
 * event once, however many of its patterns (or direct listens) cover the stream.
 */
export class PatternFollows<S extends PatternStream> {
  readonly #host: PatternHost<S>;
  readonly #follows: Map<Listener, Follow<S>> = new Map();
  /**
   * The sets of pattern queues streams point to, one per distinct membership, by key (the
   * queues' numbers). Streams share them, so a join over many streams allocates nothing per
   * stream (and old streams gain no pointers to young objects, which keeps the collector's
   * pauses short). Each counts the streams that point to it and is forgotten at none, so
   * memberships no stream has any more (every step of many queues joining) are not kept.
   */
  readonly #shared: Map<string, Shared> = new Map();
  /** The record of each shared set. */
  readonly #records: WeakMap<ReadonlySet<Listener>, Shared> = new WeakMap();
  /** Patterns listened to, over every queue. */
  #count = 0;
  /** Streams followed through patterns, over every queue (a queue's streams each count). */
  #following = 0;
  readonly #ids: WeakMap<Listener, number> = new WeakMap();
  #nextId = 0;
  readonly #sliceMs: number;
  /** Changes whenever a queue's patterns change (the cache of `matching` is then stale). */
  #version = 0;
  /** The queues `matching` found for a name, for its `created` right after. */
  #matched: { name: string; version: number; queues: [Listener, Follow<S>][] } | undefined;
  /** Whether a join is working its slice (joins take turns: see `#waitTurn`). */
  #turnTaken = false;
  /** Joins waiting for their next slice, first come first served. */
  readonly #turns: (() => void)[] = [];
  /** Whether the next turn is scheduled (one per turn of the event loop). */
  #turnScheduled = false;

  /**
   * Creates an empty registry.
   *
   * @param host The core.
   * @param options How long a join works before it yields.
   */
  constructor(host: PatternHost<S>, options?: PatternFollowsOptions) {
    this.#host = host;
    this.#sliceMs = options?.sliceMs ?? 4;
  }

  /** How many queues listen to a pattern. */
  get size(): number {
    return this.#follows.size;
  }

  /** How many patterns are listened to, over every queue (a queue's patterns each count). */
  get count(): number {
    return this.#count;
  }

  /**
   * How many streams are followed through patterns, over every queue: each stream a queue
   * follows counts once (the memory budget counts them, see `FOLLOW_COST`).
   */
  get following(): number {
    return this.#following;
  }

  /**
   * How many patterns a queue listens to.
   *
   * @param queue The queue.
   * @returns Its number of patterns.
   */
  countOf(queue: Listener): number {
    return this.#follows.get(queue)?.patterns.size ?? 0;
  }

  /**
   * Whether the queue listens to this pattern.
   *
   * @param pattern The pattern.
   * @param queue The queue.
   * @returns Whether it does.
   */
  has(pattern: string, queue: Listener): boolean {
    return this.#follows.get(queue)?.patterns.has(pattern) ?? false;
  }

  /**
   * Joins a queue to a pattern: it follows every matching stream created from now on, and is
   * caught up on every matching stream held now, in steps that yield to the event loop.
   *
   * @param pattern The pattern (checked by the caller).
   * @param queue The queue.
   * @param since Positions to resume from, by stream name.
   * @returns How many streams the queue was caught up on, when all are.
   */
  async listen(
    pattern: string,
    queue: Listener,
    since: Readonly<Record<string, Position>> | undefined,
  ): Promise<PatternJoin> {
    let follow = this.#follows.get(queue);
    if (follow?.patterns.has(pattern)) {
      let n = 0;
      for (const s of follow.streams) if (matchPattern(pattern, s.name)) n++;
      return { pattern, streams: n };
    }
    if (!follow) this.#follows.set(queue, follow = new Follow());
    this.#version++;
    const join = {};
    follow.patterns.set(pattern, join);
    this.#count++;
    this.#host.attached(queue);
    // From here on, streams created are announced by `created`; the ones held now are caught
    // up below. A put on one of them before its turn is covered by its catch-up (the header as
    // of then, or the replay up to then). The core's iterator is live: a stream deleted before
    // its turn is skipped, one created meanwhile was announced already (and is skipped).
    let streams = 0;
    // Joins take turns (one slice per turn of the event loop over all of them): a join that
    // finds another working or waiting waits for its turn.
    if (this.#turnTaken || this.#turns.length > 0) await this.#waitTurn();
    else this.#turnTaken = true;
    try {
      let started = performance.now();
      let i = 0;
      // Streams share few sets: each set plus the queue is made once per join, not per stream.
      const plus: Map<ReadonlySet<Listener> | undefined, ReadonlySet<Listener>> = new Map();
      const admit = this.#host.admitFollow;
      for (const state of this.#host.snapshot()) {
        if ((++i & 15) === 0 && performance.now() - started > this.#sliceMs) {
          this.#endTurn();
          await this.#waitTurn();
          started = performance.now();
        }
        if (this.#follows.get(queue) !== follow || follow.patterns.get(pattern) !== join) break;
        if (!matchPattern(pattern, state.name) || follow.streams.has(state)) continue;
        if (this.#host.current(state.name) !== state) continue;
        if (admit) {
          try {
            admit.call(this.#host, pattern);
          } catch (e) {
            // No room for one more stream: the join is undone (the streams it caught up on
            // stop reaching the queue, unless another of its patterns matches them).
            if (this.#follows.get(queue) === follow && follow.patterns.get(pattern) === join) {
              this.hangup(pattern, queue);
            }
            throw e;
          }
        }
        // A queue that listens to the stream by name has its events already.
        const at = since?.[state.name];
        if (!state.listeners.has(queue) && !this.#host.catchUp(state, queue, at)) break;
        this.#attach(state, queue, follow, plus);
        streams++;
      }
      // Streams named in `since` that are gone: the queue learns they ended.
      if (since && this.#follows.get(queue) === follow && follow.patterns.get(pattern) === join) {
        for (const [name, at] of Object.entries(since)) {
          if (!matchPattern(pattern, name) || this.#host.current(name)) continue;
          if (!isPosition(at)) continue;
          const end = buildEvent(this.#host.codec, "end", { name }, null, at.seq, at.epoch, "own");
          if (!this.#host.deliver(queue, end)) break;
        }
      }
    } finally {
      this.#endTurn();
    }
    return { pattern, streams };
  }

  /** How many joins are working or waiting for their turn (see `sliceMs`). */
  get joining(): number {
    return this.#turns.length + (this.#turnTaken ? 1 : 0);
  }

  /**
   * Waits for this join's next slice: after every join that waits already, and in a later turn
   * of the event loop than the slice before it (I/O and timers are served in between).
   */
  #waitTurn(): Promise<void> {
    return new Promise((resolve) => {
      this.#turns.push(resolve);
      if (!this.#turnTaken) this.#scheduleTurn();
    });
  }

  /** Ends the current join's slice; the next waiting join gets a turn of the loop later. */
  #endTurn(): void {
    this.#turnTaken = false;
    if (this.#turns.length > 0) this.#scheduleTurn();
  }

  #scheduleTurn(): void {
    if (this.#turnScheduled) return;
    this.#turnScheduled = true;
    setTimeout(() => {
      this.#turnScheduled = false;
      if (this.#turnTaken) return; // the turn ended schedules the next
      const next = this.#turns.shift();
      if (!next) return;
      this.#turnTaken = true;
      next();
    }, 0);
  }

  /**
   * Stops a queue's pattern; streams that none of its other patterns match stop reaching it.
   *
   * @param pattern The pattern.
   * @param queue The queue.
   */
  hangup(pattern: string, queue: Listener): void {
    const follow = this.#follows.get(queue);
    if (!follow?.patterns.has(pattern)) return;
    if (follow.patterns.size === 1) return this.drop(queue);
    follow.patterns.delete(pattern);
    this.#version++;
    this.#count--;
    const minus = new Map();
    for (const s of follow.streams) {
      if (!follow.matches(s.name)) {
        follow.streams.delete(s);
        this.#following--;
        this.#remove(s, queue, minus);
      }
    }
  }

  /**
   * Stops every pattern of a queue.
   *
   * @param queue The queue.
   */
  drop(queue: Listener): void {
    const follow = this.#follows.get(queue);
    if (!follow) return;
    this.#follows.delete(queue);
    this.#version++;
    this.#count -= follow.patterns.size;
    // The shared sets that hold the queue are forgotten as their last stream leaves them.
    const minus = new Map();
    for (const s of follow.streams) this.#remove(s, queue, minus);
    this.#following -= follow.streams.size;
    follow.streams.clear();
  }

  /**
   * How many queues a new stream of this name would be followed by (each costs the memory
   * budget's `FOLLOW_COST`): asked before the stream is made, and kept for its `created`.
   *
   * @param name The new stream's name.
   * @returns How many queues have a pattern that matches it.
   */
  matching(name: string): number {
    if (this.#follows.size === 0) return 0;
    const queues: [Listener, Follow<S>][] = [];
    for (const entry of this.#follows) if (entry[1].matches(name)) queues.push(entry);
    this.#matched = { name, version: this.#version, queues };
    return queues.length;
  }

  /**
   * A stream was created: every queue with a matching pattern gets its header event (`null`
   * header, seq 0) and follows it.
   *
   * @param state The new stream.
   */
  created(state: S): void {
    const cached = this.#matched;
    this.#matched = undefined;
    if (this.#follows.size === 0) return;
    const known = cached?.name === state.name && cached.version === this.#version
      ? cached.queues
      : undefined;
    let ev: StreamEvent | undefined;
    // The queues that joined go into one plain set the stream points to while they are handed
    // the header (so that a listener's own code that drops a queue or deletes the stream from
    // inside a delivery finds them), then into one shared set: not one set per queue added.
    let joining: Set<Listener> | undefined;
    for (const [queue, follow] of known ?? this.#follows) {
      if (this.#host.current(state.name) !== state) break; // deleted from inside a delivery
      if (!known && !follow.matches(state.name)) continue;
      ev ??= buildEvent(this.#host.codec, "header", state, null, state.seq, state.epoch, "join");
      if (
        this.#host.deliver(queue, ev) && this.#follows.get(queue) === follow &&
        this.#host.current(state.name) === state
      ) {
        if (!follow.streams.has(state)) this.#following++;
        follow.streams.add(state);
        if (state.fanning > 0) (state.joinedDuringFanout ??= new Set()).add(queue);
        if (!joining || state.patternQueues !== joining) {
          joining = new Set(state.patternQueues);
          this.#point(state, joining);
        }
        joining.add(queue);
      }
    }
    const set = state.patternQueues;
    if (set && set === joining) this.#point(state, this.#intern([...set]));
  }

  /**
   * A stream went (deleted, expired or forgotten): its pattern queues get `end` (those that
   * also listen directly got it already) and stop following it.
   *
   * @param state The stream.
   * @param end Its `end` event.
   * @param got Queues that got the `end` already.
   */
  ended(state: S, end: StreamEvent, got?: Set<Listener>): void {
    const queues = state.patternQueues;
    if (!queues || queues.size === 0) return;
    this.#point(state, undefined);
    for (const q of queues) {
      if (this.#follows.get(q)?.streams.delete(state)) this.#following--;
      if (!got?.has(q)) this.#host.deliver(q, end);
    }
  }

  #id(queue: Listener): number {
    let id = this.#ids.get(queue);
    if (id === undefined) this.#ids.set(queue, id = this.#nextId++);
    return id;
  }

  /** The shared set of `members`, made once (while some stream points to it). */
  #intern(members: Listener[]): ReadonlySet<Listener> | undefined {
    if (members.length === 0) return undefined;
    const key = members.map((q) => this.#id(q)).sort((a, b) => a - b).join(",");
    let record = this.#shared.get(key);
    if (!record) {
      record = { set: new Set(members), key, streams: 0 };
      this.#shared.set(key, record);
      this.#records.set(record.set, record);
    }
    return record.set;
  }

  /** Points a stream to a shared set (the one place a stream's set changes). */
  #point(state: S, set: ReadonlySet<Listener> | undefined): void {
    const before = state.patternQueues;
    if (before === set) return;
    if (before) {
      const record = this.#records.get(before);
      if (record && --record.streams === 0 && this.#shared.get(record.key) === record) {
        this.#shared.delete(record.key);
      }
    }
    // A set without a record is a stream's own while its queues join (see `created`).
    const record = set && this.#records.get(set);
    if (record && record.streams++ === 0 && !this.#shared.has(record.key)) {
      this.#shared.set(record.key, record);
    }
    state.patternQueues = set;
  }

  #remove(
    state: S,
    queue: Listener,
    memo: Map<ReadonlySet<Listener>, ReadonlySet<Listener> | undefined>,
  ): void {
    const set = state.patternQueues;
    if (!set?.has(queue)) return;
    let next = memo.get(set);
    if (next === undefined && !memo.has(set)) {
      memo.set(set, next = this.#intern([...set].filter((q) => q !== queue)));
    }
    this.#point(state, next);
  }

  #attach(
    state: S,
    queue: Listener,
    follow: Follow<S>,
    memo: Map<ReadonlySet<Listener> | undefined, ReadonlySet<Listener>>,
  ): void {
    const set = state.patternQueues;
    let next: ReadonlySet<Listener> | undefined = set;
    if (!set?.has(queue)) {
      next = memo.get(set);
      if (!next) memo.set(set, next = this.#intern(set ? [...set, queue] : [queue])!);
    }
    this.#point(state, next);
    if (state.fanning > 0) (state.joinedDuringFanout ??= new Set()).add(queue);
    if (!follow.streams.has(state)) this.#following++;
    follow.streams.add(state);
  }
}

/** A shared set of pattern queues and how many streams point to it. */
interface Shared {
  readonly set: ReadonlySet<Listener>;
  readonly key: string;
  streams: number;
}

function isPosition(at: unknown): at is Position {
  return typeof at === "object" && at !== null &&
    typeof (at as Position).epoch === "string" && typeof (at as Position).seq === "number";
}

/** One stream in a listing page (the `list` action, `msgstream ls`). */
export interface StreamListing {
  /** The stream's name. */
  readonly stream: string;
  /** Its epoch. */
  readonly epoch: string;
  /** The seq of its last put. */
  readonly seq: number;
  /** How many listeners follow it by name here. */
  readonly listeners: number;
  /** Whether a header is set. */
  readonly header: boolean;
}

/** One page of a listing. */
export interface StreamPage {
  /** The streams, ordered by name (UTF-16 code units). */
  readonly streams: StreamListing[];
  /** Give this as `after` for the next page; `null` when this page is the last. */
  readonly next: string | null;
}

/** What {@linkcode pageStreams} lists. */
export interface PageOptions {
  /**
   * Only streams this pattern matches.
   *
   * @default {"*"}
   */
  pattern?: string;
  /** Only streams whose name sorts after this one (the previous page's `next`). */
  after?: string;
  /**
   * Most streams in the page.
   *
   * @default {100}
   */
  limit?: number;
  /** Only streams this test allows (a token's subscribe right). */
  allow?: (stream: string) => boolean;
}

/** The most streams one page may hold. */
export const MAX_PAGE = 1000;

/**
 * Picks one page of streams, ordered by name, without sorting every stream: the work is one
 * pass over the streams, keeping the `limit` smallest names after `after`.
 *
 * @param streams What the hub holds (its `list()`).
 * @param options Pattern, cursor, size and a filter.
 * @returns The page and the cursor of the next one.
 * @throws {RangeError} When `limit` is not an integer from 1 to {@linkcode MAX_PAGE}.
 *
 * @example
 * ```ts
 * import { pageStreams } from "./pattern.ts";
 * import { assertEquals } from "@std/assert";
 *
 * const info = (stream: string) => ({ stream, epoch: "e", seq: 0, listeners: 0, hasHeader: false });
 * const all = ["jobs.3", "jobs.1", "x", "jobs.2"].map(info);
 * const first = pageStreams(all, { pattern: "jobs.*", limit: 2 });
 * assertEquals(first.streams.map((s) => s.stream), ["jobs.1", "jobs.2"]);
 * assertEquals(first.next, "jobs.2");
 * const second = pageStreams(all, { pattern: "jobs.*", limit: 2, after: "jobs.2" });
 * assertEquals([second.streams.map((s) => s.stream), second.next], [["jobs.3"], null]);
 * ```
 */
export function pageStreams(
  streams: Iterable<
    {
      stream: string;
      epoch: string;
      seq: number;
      listeners: number;
      hasHeader: boolean;
    }
  >,
  options?: PageOptions,
): StreamPage {
  const pattern = options?.pattern ?? "*";
  const after = options?.after;
  const limit = options?.limit ?? 100;
  if (!Number.isInteger(limit) || limit < 1 || limit > MAX_PAGE) {
    throw new RangeError(`Page limit must be an integer from 1 to ${MAX_PAGE}, got ${limit}`);
  }
  const allow = options?.allow;
  // The limit + 1 smallest names after the cursor, sorted: one more tells whether a next page
  // exists.
  const keep = limit + 1;
  const top: StreamListing[] = [];
  for (const s of streams) {
    const name = s.stream;
    if (after !== undefined && name <= after) continue;
    if (top.length === keep && name >= top[keep - 1]!.stream) continue;
    if (!matchPattern(pattern, name) || (allow && !allow(name))) continue;
    let lo = 0;
    let hi = top.length;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (top[mid]!.stream < name) lo = mid + 1;
      else hi = mid;
    }
    top.splice(lo, 0, {
      stream: name,
      epoch: s.epoch,
      seq: s.seq,
      listeners: s.listeners,
      header: s.hasHeader,
    });
    if (top.length > keep) top.pop();
  }
  const more = top.length > limit;
  if (more) top.pop();
  return { streams: top, next: more ? top[top.length - 1]!.stream : null };
}
