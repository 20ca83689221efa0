/**
 * Message streams: many listeners follow a running computation. Each stream is keyed by a name
 * (usually a job id) and has a **header**, the latest status snapshot. A listener that joins
 * gets the header first, then every later message of the stream, in order, with no gap and no
 * duplicate.
 *
 * This module is the in-process hub, {@linkcode MessageStream}, with its bounded listener
 * queue, {@linkcode Inbox}, and the types they share. The TCP server lives in
 * `@x/msgstream/server`, the remote client with the same interface in `@x/msgstream/client`,
 * the Redis engine (many nodes) in `@x/msgstream/redis`.
 *
 * @example Follow a job
 * ```ts
 * import { Inbox, MessageStream } from "@x/msgstream";
 * import { assertEquals } from "@std/assert";
 *
 * type Status = { state: string; done: number };
 * type Progress = { done: number };
 *
 * const hub = new MessageStream();
 * await hub.header("job42", { state: "running", done: 0 });
 * const inbox = new Inbox<Status, Progress>();
 * await hub.listen("job42", inbox);
 * await hub.put("job42", { done: 1 });
 * await hub.put("job42", { done: 2 });
 * await hub.delete("job42");
 *
 * const seen = [];
 * for await (const ev of inbox) {
 *   if (ev.kind === "put") seen.push(ev.message.done);
 *   if (ev.kind === "header") seen.push(ev.message?.state);
 *   if (ev.kind === "end") break;
 * }
 * assertEquals(seen, ["running", 1, 2]);
 * ```
 *
 * @module
 */

import { MemoryBudget } from "./budget.ts";
import { type Codec, defaultCodec } from "./codec.ts";
import {
  checkSince,
  type Core,
  DEFAULT_MAX_MESSAGE_BYTES,
  logListenerError,
  MemoryCore,
  MessageTooLargeError,
  registerSync,
  StreamNotFoundError,
} from "./core.ts";
import { type Engine, EngineCore, registerEngineCore } from "./engine.ts";
import { intOption } from "./options.ts";
import type { DurableStore } from "./store.ts";
import type {
  HubStats,
  Listener,
  ListenOptions,
  PatternJoin,
  PatternListenOptions,
  PatternTarget,
  Position,
  Streamer,
  StreamInfo,
  StreamStat,
} from "./types.ts";

export type {
  Detachable,
  EndEvent,
  EventBase,
  EventKind,
  HeaderEvent,
  HubStats,
  Listener,
  ListenOptions,
  PatternJoin,
  PatternListenOptions,
  PatternTarget,
  Position,
  PutEvent,
  ResetEvent,
  ResetReason,
  Streamer,
  StreamEvent,
  StreamInfo,
  StreamStat,
} from "./types.ts";
export {
  type Engine,
  type EngineEvent,
  type EngineSink,
  type EngineSnapshot,
  EngineUnavailableError,
} from "./engine.ts";
export { Inbox, type InboxOptions, SlowConsumerError } from "./inbox.ts";
export { follow, type FollowOptions } from "./follow.ts";
export { matchPattern, patternCovers } from "./pattern.ts";
export { logListenerError, MessageTooLargeError, StreamNotFoundError };
export { type Limit, LimitExceededError, MemoryBudget, type MemoryParts } from "./budget.ts";

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
   * Most bytes of a put's or header's message, as the codec encodes it; a larger one is
   * refused with {@linkcode MessageTooLargeError} (code `message_too_large` on the wire). The
   * default leaves 4 KiB of a 1 MiB frame for the event's envelope, so that every accepted
   * message reaches every door's clients within their default limits (a WebSocket client's
   * 1 MiB frame, the TCP door's 1 MiB line).
   *
   * @default {1044480}
   */
  maxMessageBytes?: number;
  /**
   * Told when a listener's `put` threw; the listener has been removed from every stream (and
   * its `close` called with the error).
   *
   * @default {logListenerError} (one line on stderr)
   */
  onListenerError?: (error: unknown, stream: string) => void;
  /**
   * Most bytes kept for clients, all parts together: headers, history, stream state, listen
   * registrations, and what the doors hold (unfinished lines, unsent frames). History gives way
   * first, down to its reserve (an eighth of this, at most `maxHistoryBytes`); past the rest, a
   * new stream, header or listen gets {@linkcode LimitExceededError} (`max_memory`). See
   * docs/limits.md.
   *
   * @default {268435456}
   */
  maxMemory?: number;
  /**
   * Most streams held at once; a put, header or listen that would make one more gets
   * {@linkcode LimitExceededError} (`max_streams`). With an engine, streams this node has
   * listeners for.
   *
   * @default {100000}
   */
  maxStreams?: number;
  /**
   * Largest header, as the bytes of its event frame; a larger one gets
   * {@linkcode LimitExceededError} (`max_header_bytes`).
   *
   * @default {1048576}
   */
  maxHeaderBytes?: number;
  /**
   * Most streams and patterns one listener (one connection of a server) follows at once (a
   * pattern counts as one); one more listen gets {@linkcode LimitExceededError} (`max_listens`).
   *
   * @default {10000}
   */
  maxListens?: number;
  /**
   * Milliseconds after which a stream with no listeners (by name) and no puts or header
   * changes is removed, as by `delete`: its listeners by pattern get `end`. 0 keeps streams
   * until they are deleted, hold nothing, or give way to the memory bounds. Refused with an
   * `engine` (Redis keeps streams until deleted): the constructor throws a `TypeError`.
   *
   * @default {0}
   */
  streamTtl?: number;
  /**
   * Where streams' header, seq, epoch and history live and how puts reach other nodes. Without
   * one, the hub keeps everything in memory (one process). With one (e.g. `RedisEngine` from
   * `@x/msgstream/redis`), `put`, `header`, `delete`, `listen` and `stat` go through the
   * engine; the history bounds then apply in the engine.
   */
  engine?: Engine;
  /**
   * Keeps every stream's epoch, seq, header and history on disk (`DurableStore.open(path)` from
   * `@x/msgstream/store`) and restores them here; ignored with an `engine`. The hub owns it from
   * then on: {@linkcode MessageStream.close} closes it. Under `fsync: "always"`, `put`, `header`
   * and `delete` resolve once durable.
   */
  store?: DurableStore;
}

/**
 * The in-process hub: streams keyed by name, each with a header, a bounded history and its
 * listeners. Delivery is synchronous: when `put` returns, every listener's `put` has been
 * called, so a slow listener must buffer (an {@linkcode Inbox} does, within bounds).
 *
 * Without an engine the hub keeps everything in this process; with one
 * ({@linkcode MessageStreamOptions.engine}), header, seq and history live in the engine and
 * puts reach the listeners of every node sharing it.
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
  readonly #core: Core;
  readonly #engine: Engine | undefined;
  readonly #maxName: number;
  readonly #memory: MemoryBudget;

  /**
   * Creates an empty hub.
   *
   * @param options Codec, history bounds and engine.
   * @throws {RangeError} When a bound is not a non-negative integer.
   * @throws {TypeError} When `streamTtl` is given with an `engine` (it would not be applied).
   */
  constructor(options?: MessageStreamOptions) {
    const streamTtl = intOption("streamTtl", options?.streamTtl, 0, 0);
    if (streamTtl > 0 && options?.engine) {
      throw new TypeError(
        `Option streamTtl (${streamTtl}) is not applied with an engine: the engine keeps streams until they are deleted`,
      );
    }
    this.codec = options?.codec ?? defaultCodec;
    const maxMemory = intOption("maxMemory", options?.maxMemory, 256 << 20, 0);
    const maxHistory = intOption("maxHistoryBytes", options?.maxHistoryBytes, 64 << 20, 0);
    // History keeps an eighth of the budget (at most its own bound) whatever floods the rest.
    const memory = new MemoryBudget(maxMemory, Math.min(maxHistory, Math.floor(maxMemory / 8)));
    this.#memory = memory;
    const limits = {
      historyMessages: intOption("historyMessages", options?.historyMessages, 1000, 0),
      historyBytes: intOption("historyBytes", options?.historyBytes, 1 << 20, 0),
      // History is a part of the memory budget: it keeps what the other parts leave.
      get maxHistoryBytes(): number {
        return Math.min(maxHistory, memory.historyRoom);
      },
    };
    const clientLimits = {
      maxStreams: intOption("maxStreams", options?.maxStreams, 100_000, 0),
      maxHeaderBytes: intOption("maxHeaderBytes", options?.maxHeaderBytes, 1 << 20, 0),
      maxListens: intOption("maxListens", options?.maxListens, 10_000, 0),
      memory,
    };
    this.#maxName = intOption("maxStreamNameLength", options?.maxStreamNameLength, 256, 1);
    this.#engine = options?.engine;
    if (this.#engine) {
      const core = new EngineCore(this.codec, this.#maxName, this, this.#engine);
      registerEngineCore(this, core);
      this.#core = core;
    } else if (options?.store) {
      const core = options.store.core(this.codec, this.#maxName, this, limits);
      // Epochs survive restarts here: another process's epoch is a stream deleted, not lost.
      core.lostOnRestart = false;
      // Under "always" a put is answered once durable: the doors take the async path.
      if (options.store.fsync !== "always") registerSync(this, core);
      this.#core = core;
    } else {
      const core = new MemoryCore(this.codec, this.#maxName, this, limits);
      registerSync(this, core);
      this.#core = core;
    }
    this.#core.expireAfter?.(streamTtl);
    this.#core.maxMessage = intOption(
      "maxMessageBytes",
      options?.maxMessageBytes,
      DEFAULT_MAX_MESSAGE_BYTES,
      1,
    );
    if (options?.onListenerError) this.#core.onListenerError = options.onListenerError;
    this.#core.setLimits(clientLimits);
  }

  /**
   * The memory budget of this hub: what it and the doors serving it keep for clients, by part.
   * Doors report their unfinished lines and unsent bytes into it (see `MemoryBudget`).
   *
   * @example Read the parts
   * ```ts
   * import { MessageStream } from "@x/msgstream";
   * import { assertEquals } from "@std/assert";
   *
   * const hub = new MessageStream({ maxMemory: 1 << 20 });
   * await hub.header("job", "running");
   * assertEquals(hub.memory.max, 1 << 20);
   * // One stream: 1 KiB, and 2 bytes for each character of its name.
   * assertEquals(hub.memory.parts().streams, 1024 + 2 * 3);
   * ```
   */
  get memory(): MemoryBudget {
    return this.#memory;
  }

  /** The longest stream name accepted, in UTF-16 code units. */
  get maxStreamNameLength(): number {
    return this.#maxName;
  }

  /** The engine given in the options, or `undefined` for a hub that keeps streams in memory. */
  get engine(): Engine | undefined {
    return this.#engine;
  }

  /**
   * Releases the engine's connections (nothing to do without an engine).
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
    this.#core.expireAfter?.(0);
    return this.#core.close();
  }

  /**
   * Sets or clears a stream's header.
   *
   * @param stream The stream's name.
   * @param message The header, or `null`/`undefined` to clear it.
   * @returns When the header is set and current listeners have the change.
   * @throws {TypeError} When the name is not a non-empty string or the codec cannot encode the
   * header.
   * @throws {RangeError} When the name is too long.
   * @throws {EngineUnavailableError} When the hub's engine cannot be reached.
   *
   * @example Setting and clearing
   * ```ts
   * import { MessageStream } from "@x/msgstream";
   * import { assertEquals } from "@std/assert";
   *
   * const hub = new MessageStream();
   * await hub.header("job", { state: "queued" });
   * assertEquals((await hub.stat("job"))?.header, { state: "queued" });
   * await hub.header("job", null);
   * assertEquals((await hub.stat("job"))?.header, null);
   * ```
   */
  header(stream: string, message: unknown): Promise<void> {
    if (typeof message === "function" || typeof message === "symbol") {
      // JSON has no form for it: the wire would carry a header without a message (a clear).
      return Promise.reject(
        new TypeError(
          `Cannot set the header of stream "${String(stream).slice(0, 100)}": ` +
            `a ${typeof message} is not a message`,
        ),
      );
    }
    return this.#core.header(stream, message);
  }

  /**
   * Puts a message on a stream.
   *
   * @param stream The stream's name.
   * @param message The message (not `undefined`).
   * @returns The put's position: the stream's epoch and the put's seq.
   * @throws {TypeError} When the name is not a non-empty string, the message is `undefined`, or
   * the codec cannot encode it.
   * @throws {RangeError} When the name is too long.
   * @throws {EngineUnavailableError} When the hub's engine cannot be reached.
   *
   * @example Seqs count from 1
   * ```ts
   * import { MessageStream } from "@x/msgstream";
   * import { assertEquals } from "@std/assert";
   *
   * const hub = new MessageStream();
   * const a = await hub.put("job", "a");
   * const b = await hub.put("job", "b");
   * assertEquals([a.seq, b.seq], [1, 2]);
   * assertEquals(b.epoch, a.epoch);
   * ```
   */
  put(stream: string, message: unknown): Promise<Position> {
    return this.#core.put(stream, message);
  }

  /**
   * Deletes a stream: header, history and listeners go; each listener gets an `end` event.
   * The next use of the name starts a new epoch.
   *
   * @param stream The stream's name.
   * @returns When the stream is gone.
   * @throws {TypeError} When the name is not a non-empty string.
   * @throws {EngineUnavailableError} When the hub's engine cannot be reached.
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
    return this.#core.delete(stream);
  }

  /**
   * Starts delivering a stream's events to `queue`: the header first, then every later put;
   * or, with `since`, what was missed since that position.
   *
   * @typeParam H The type of the stream's headers, as the listener expects them.
   * @typeParam M The type of the stream's put messages, as the listener expects them.
   * @param stream The stream's name.
   * @param queue The listener.
   * @param options Where to resume.
   * @returns The stream's position when the listener joined.
   * @throws {TypeError} When the name is not a non-empty string, `queue` has no `put`, or
   * `since` is not `{epoch: string, seq: non-negative integer}`.
   * @throws {EngineUnavailableError} When the hub's engine cannot be reached.
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
  listen<H = unknown, M = unknown>(
    stream: string,
    queue: Listener<H, M>,
    options?: ListenOptions,
  ): Promise<Position>;
  /**
   * Starts delivering the events of every stream whose name matches a pattern (`*` matches any
   * run of characters; see `pattern.ts`) to `queue`, as one listener. Per stream, the listener
   * gets the header first (always, `null` when none is set, with the stream's epoch and seq),
   * then every later event in order; a stream created later is announced the same way before
   * its first put; a stream that is deleted (or expires, or is forgotten) gives `end`, and the
   * pattern stays. The catch-up over existing streams yields to the event loop every few
   * milliseconds, so a pattern that matches many streams does not stall other work. A queue
   * gets each event once, however many of its patterns and listens cover the stream.
   *
   * @typeParam H The type of the streams' headers, as the listener expects them.
   * @typeParam M The type of the streams' put messages, as the listener expects them.
   * @param target The pattern.
   * @param queue The listener.
   * @param options Where to resume, per stream.
   * @returns The pattern and how many existing streams the listener was caught up on.
   * @throws {TypeError} When the pattern is not a non-empty string or `queue` has no `put`.
   * @throws {RangeError} When the pattern is longer than the longest stream name.
   *
   * @example Every job
   * ```ts
   * import { MessageStream, type StreamEvent } from "@x/msgstream";
   * import { assertEquals } from "@std/assert";
   *
   * const hub = new MessageStream();
   * await hub.header("jobs.1", "running");
   * await hub.put("other", 0);
   * const got: string[] = [];
   * const queue = { put: (ev: StreamEvent) => got.push(`${ev.stream} ${ev.kind} ${ev.message}`) };
   * assertEquals(await hub.listen({ pattern: "jobs.*" }, queue), { pattern: "jobs.*", streams: 1 });
   * await hub.put("jobs.2", "a");
   * await hub.put("other", 1);
   * assertEquals(got, ["jobs.1 header running", "jobs.2 header null", "jobs.2 put a"]);
   * ```
   */
  listen<H = unknown, M = unknown>(
    target: PatternTarget,
    queue: Listener<H, M>,
    options?: PatternListenOptions,
  ): Promise<PatternJoin>;
  listen<H = unknown, M = unknown>(
    target: string | PatternTarget,
    queue: Listener<H, M>,
    options?: ListenOptions | PatternListenOptions,
  ): Promise<Position | PatternJoin> {
    if (typeof target === "object" && target !== null) {
      return this.#core.listenPattern(
        target.pattern,
        queue as Listener,
        (options as PatternListenOptions | undefined)?.since,
      );
    }
    const o = options as ListenOptions | undefined;
    try {
      checkSince(target, o?.since);
    } catch (e) {
      return Promise.reject(e);
    }
    if (o?.create === false) return this.#listenExisting(target, queue as Listener, o.since);
    return this.#core.listen(target, queue, o?.since);
  }

  /** A listen that must not create the stream (`create: false`). */
  async #listenExisting(
    stream: string,
    queue: Listener,
    since: Position | undefined,
  ): Promise<Position> {
    if (!(await this.#core.stat(stream))) throw new StreamNotFoundError(stream);
    return this.#core.listen(stream, queue, since);
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
   * assertEquals(await hub.stat("job"), undefined);
   * ```
   */
  hangup(stream: string, queue: Listener): void;
  /**
   * Stops a pattern listen of `queue`: streams that none of its other patterns match stop
   * reaching it (those it listens to by name go on). Does nothing when it was not listening.
   *
   * @param target The pattern.
   * @param queue The listener.
   */
  hangup(target: PatternTarget, queue: Listener): void;
  hangup(target: string | PatternTarget, queue: Listener): void {
    if (typeof target === "object" && target !== null) {
      this.#core.hangupPattern(target.pattern, queue);
    } else this.#core.hangup(target, queue);
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
    this.#core.endqueue(queue);
  }

  /**
   * Reads a stream's state: its header, position and listeners, without listening to it and
   * without creating it. With an engine, epoch, seq and header come from the engine (the
   * latest, whichever node wrote it) and `listeners` counts this node's listeners.
   *
   * @param stream The stream's name.
   * @returns The stream's state, or `undefined` when there is no such stream.
   * @throws {TypeError} When the name is not a non-empty string.
   * @throws {RangeError} When the name is too long.
   * @throws {EngineUnavailableError} When the hub's engine cannot be reached.
   *
   * @example A deleted stream stays deleted
   * ```ts
   * import { MessageStream } from "@x/msgstream";
   * import { assertEquals } from "@std/assert";
   *
   * const hub = new MessageStream();
   * await hub.header("job", { state: "running" });
   * const at = await hub.put("job", 1);
   * assertEquals(await hub.stat("job"), {
   *   stream: "job",
   *   header: { state: "running" },
   *   seq: 1,
   *   epoch: at.epoch,
   *   listeners: 0,
   * });
   * await hub.delete("job");
   * assertEquals(await hub.stat("job"), undefined);
   * assertEquals(hub.stats().streams, 0);
   * ```
   */
  stat(stream: string): Promise<StreamStat | undefined> {
    return this.#core.stat(stream);
  }

  /**
   * Tells what this hub holds of a stream, now (with an engine: this node's copy, held while
   * it has listeners here).
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
    return this.#core.info(stream);
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
    return this.#core.list();
  }

  /**
   * The names of the streams the hub holds, in creation order, without copying them: a live
   * iterator that sees streams created after it started and skips those deleted since. A
   * caller that walks many streams can stop now and then (e.g. `await` a timer) to keep the
   * event loop free, as `GET /streams` does; `info()` gives each stream's figures.
   *
   * @returns An iterator over the names.
   *
   * @example
   * ```ts
   * import { MessageStream } from "@x/msgstream";
   * import { assertEquals } from "@std/assert";
   *
   * const hub = new MessageStream();
   * await hub.put("a", 1);
   * const names = hub.names();
   * await hub.put("b", 2);
   * assertEquals([...names], ["a", "b"]);
   * ```
   */
  names(): IterableIterator<string> {
    return this.#core.names();
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
    return this.#core.stats();
  }
}
