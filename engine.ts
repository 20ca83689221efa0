/**
 * The engine seam: what a hub needs from a back end that keeps streams' state (header, seq,
 * epoch, history) outside the process and carries events between nodes ({@linkcode Engine};
 * `RedisEngine` in `redis.ts` implements it), and {@linkcode EngineCore}, the one class that
 * joins listeners and resyncs them for any engine.
 *
 * A join is gapless when the engine keeps its promise: {@linkcode Engine.sync} follows the
 * stream first, then calls back with a snapshot exactly where it falls among the stream's
 * events. `EngineCore` brings its copy of the stream in step from the snapshot, hands the
 * joining listener the header (or, resuming, the events it missed), and then every later event.
 * When the engine reports an event out of step, or that it may have missed events, every
 * listener of the stream is caught up again from where it was.
 *
 * @example A hub with an engine
 * ```ts ignore
 * import { MessageStream } from "@x/msgstream";
 * import { RedisEngine } from "@x/msgstream/redis";
 *
 * const hub = new MessageStream({ engine: new RedisEngine() });
 * await hub.put("job", 1);
 * await hub.close();
 * ```
 *
 * @module
 */

import { LISTEN_COST } from "./budget.ts";
import { type Codec, JsonCodec } from "./codec.ts";
import { Streams, StreamState } from "./core.ts";
import { buildEvent } from "./frame.ts";
import { checkPattern, matchPattern } from "./pattern.ts";
import type {
  Detachable,
  Listener,
  PatternJoin,
  Position,
  ResetReason,
  StreamEvent,
  StreamStat,
} from "./types.ts";

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
  readonly reset?: ResetReason | undefined;
  /** With `since` and covered: the events after it, oldest first. */
  readonly events?: readonly EngineEvent[] | undefined;
  /** `true` when the stream does not exist (only when a sync asked for an existing stream). */
  readonly absent?: boolean | undefined;
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
   * @param json The message's JSON text when the engine has it (exactly what the hub's codec
   * encodes it to): used in the frame as it is, with a JSON codec. A put whose text is an object
   * or array may then come with any object as `message`: listeners read it decoded from the
   * frame.
   */
  event(
    stream: string,
    kind: "put" | "header" | "end",
    message: unknown,
    seq: number,
    epoch: string,
    json?: string,
  ): void;
  /** The engine may have missed events (its subscription dropped and is back): sync again. */
  lost(): void;
}

/**
 * The hub's back end for state shared between nodes (see `MessageStreamOptions.engine`).
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
   * @param json The message's JSON text when the caller has it (a plain put line's slice):
   * exactly what a `JsonCodec` encodes `message` to. An engine may send it instead of encoding
   * the message again; with a codec that is not a `JsonCodec` it must ignore it.
   * @returns The put's position.
   * @throws {EngineUnavailableError} When the engine cannot be reached.
   */
  put(stream: string, message: unknown, json?: string): Promise<Position>;
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
   * @param existing When `true`, a stream that does not exist is not created: the snapshot
   * then has `absent: true` (a pattern join must not bring back a stream deleted after it was
   * listed).
   * @throws {EngineUnavailableError} When the engine cannot be reached.
   */
  sync(
    stream: string,
    since: Position | undefined,
    onSnapshot: (snapshot: EngineSnapshot) => void,
    existing?: boolean,
  ): Promise<void>;
  /**
   * Reads a stream's state without following it, and without creating it.
   *
   * @param stream The stream's name.
   * @returns Its epoch, seq and header, or `undefined` when the stream does not exist.
   * @throws {EngineUnavailableError} When the engine cannot be reached.
   */
  stat(stream: string): Promise<EngineSnapshot | undefined>;
  /**
   * Stops following the stream on this node.
   *
   * @param stream The stream's name.
   */
  unfollow(stream: string): void;
  /** Releases the engine's connections. */
  close(): Promise<void>;
  /**
   * Lists the streams the engine holds whose names match a pattern, a page at a time (pattern
   * listens; an engine without it refuses them).
   *
   * @param pattern The pattern (`*` matches any run of characters; see `pattern.ts`).
   * @returns Pages of names; a page may hold names the pattern does not match exactly (the hub
   * filters them).
   * @throws {EngineUnavailableError} When the engine cannot be reached.
   */
  streams?(pattern: string): AsyncIterable<string[]>;
  /**
   * From now on, calls `onCreated` with every stream created, on any node, and its first epoch
   * (pattern listens). A second call replaces the callback.
   *
   * @param onCreated Takes the stream's name and epoch.
   * @throws {EngineUnavailableError} When the engine cannot be reached.
   */
  watchCreated?(onCreated: (stream: string, epoch: string) => void): Promise<void>;
}

/**
 * Test seams of an engine's join, so that a test can make a race window deterministic. An
 * engine looks its probe up once, when a hub binds it; without one it costs nothing.
 */
export interface JoinProbe {
  /**
   * The engine has the reply to a snapshot request and is about to place it among the
   * stream's events; it waits for the returned promise first.
   *
   * @param stream The stream's name.
   */
  snapshotReplied?(stream: string): Promise<void>;
  /**
   * An event of a followed stream arrived from the engine's transport, before the engine
   * orders it against snapshots (it may be held back, behind a snapshot).
   *
   * @param stream The stream's name.
   * @param seq The event's seq.
   */
  arrived?(stream: string, seq: number): void;
}

/**
 * The probes of engines under test, set before the engine is bound to a hub (internal: tests
 * only).
 */
export const joinProbes: WeakMap<Engine, JoinProbe> = new WeakMap();

/** A stream as the engine core keeps it: a copy, in step with the engine or waiting to be. */
export class EngineStream extends StreamState {
  /**
   * Whether this node's copy (epoch, seq, header) is in step with the engine's event order;
   * until then events are ignored and joins wait for a snapshot.
   */
  live = false;
  /** Queues waiting for a snapshot to join (or rejoin). */
  pending: Set<Listener> | undefined = undefined;
  /** Listeners being caught up after events were missed (a subset of pending). */
  rejoin: Set<Listener> | undefined = undefined;
  /** Where the listeners in `rejoin` are. */
  resumeFrom: Position | undefined = undefined;
}

const engineCores = new WeakMap<object, EngineCore>();

/**
 * The engine core of a hub, when it has one: the doors' put path for a line whose message's JSON
 * text they have (protocol.ts, a plain put line). Internal.
 *
 * @param hub The hub.
 * @returns Its engine core, or `undefined` for a hub without an engine.
 */
export function engineCoreOf(hub: object): EngineCore | undefined {
  return engineCores.get(hub);
}

/**
 * Makes a hub's engine core reachable through {@linkcode engineCoreOf}; the hub's constructor
 * calls it.
 *
 * @param hub The hub.
 * @param core Its engine core.
 */
export function registerEngineCore(hub: object, core: EngineCore): void {
  engineCores.set(hub, core);
}

/**
 * The core of a hub with an engine: the one place that joins listeners from the engine's
 * snapshots and resyncs them when events were missed, for any {@linkcode Engine}. This node
 * keeps a copy (epoch, seq, header) of each stream it has listeners for, and forgets it when
 * the last one goes; header and history live in the engine.
 */
export class EngineCore extends Streams<EngineStream> {
  readonly #engine: Engine;
  /** The hub, for listeners' `attached`. */
  readonly #source: Detachable;
  /** The pattern listeners, by queue. */
  readonly #proxies: Map<Listener, PatternProxy> = new Map();
  /** Patterns over every proxy (the budget counts them). */
  #patternCount = 0;
  /** The engine's creation notices, once asked for. */
  #watching: Promise<void> | undefined;

  /**
   * Creates the core and binds the engine to it.
   *
   * @param codec The codec of every frame.
   * @param maxName The longest stream name accepted.
   * @param source The hub, handed to each listener's `attached`.
   * @param engine The engine.
   */
  constructor(codec: Codec, maxName: number, source: Detachable, engine: Engine) {
    super(codec, maxName, source);
    this.#engine = engine;
    this.#source = source;
    engine.bind({
      event: (stream, kind, message, seq, epoch, json) =>
        this.#event(stream, kind, message, seq, epoch, json),
      lost: () => this.#lost(),
    }, codec);
  }

  /**
   * Puts through the engine; resolves once this node's listeners have the put.
   *
   * @param stream The stream's name.
   * @param message The message.
   * @param json The message's JSON text when the caller has it (see `Engine.put`).
   * @returns The put's position.
   */
  put(stream: string, message: unknown, json?: string): Promise<Position> {
    // Not async: a put is the engine's promise and one step, not three.
    try {
      this.checkName(stream);
      this.checkMessage(stream, message);
      // A JSON codec's text of n UTF-16 units is at most 3n bytes: one within the limit is not
      // encoded to be measured.
      const bound = json !== undefined && this.codec instanceof JsonCodec
        ? json.length * 3
        : undefined;
      this.checkSize(stream, message, bound, json);
    } catch (e) {
      return Promise.reject(e);
    }
    return this.#engine.put(stream, message, json).then(this.#counted);
  }

  /** Counts a put the engine took; its position, without whatever else the engine added. */
  readonly #counted = (at: Position): Position => {
    this.puts++;
    return { epoch: at.epoch, seq: at.seq };
  };

  /** Sets or clears the header through the engine. */
  async header(stream: string, message: unknown): Promise<void> {
    this.checkName(stream);
    if (message !== null && message !== undefined) {
      this.checkSize(stream, message);
      // The header lives in the engine: only its size is limited here (its frame as this node
      // would send it; seq and epoch are the engine's, a few bytes either way).
      const ev = buildEvent(this.codec, "header", { name: stream }, message, 0, "", "own");
      this.checkHeaderBytes(stream, ev.frame.byteLength);
    }
    await this.#engine.header(stream, message ?? null);
  }

  /** Deletes the stream through the engine. */
  async delete(stream: string): Promise<void> {
    this.checkName(stream);
    await this.#engine.delete(stream);
  }

  /** Reads the stream from the engine; `listeners` counts this node's. */
  async stat(stream: string): Promise<StreamStat | undefined> {
    this.checkName(stream);
    const snap = await this.#engine.stat(stream);
    if (!snap) return undefined;
    return {
      stream,
      header: snap.header === undefined ? null : snap.header,
      seq: snap.seq,
      epoch: snap.epoch,
      listeners: this.streams.get(stream)?.listeners.size ?? 0,
    };
  }

  /** Closes the engine. */
  close(): Promise<void> {
    return this.#engine.close();
  }

  /**
   * Joins from the local copy when it is in step (and no `since`), else from a snapshot. With
   * `existing`, a stream the engine does not hold is not created: the queue joins nothing and
   * the position is `{epoch: "", seq: 0}`.
   */
  async listen(
    stream: string,
    queue: Listener,
    since: Position | undefined,
    existing?: boolean,
  ): Promise<Position> {
    this.checkName(stream);
    this.checkQueue(stream, queue);
    let state = this.streams.get(stream);
    // The limits count this node's listens and the streams it holds a copy of.
    if (!state?.listeners.has(queue) && !state?.pending?.has(queue)) {
      this.admitListen(stream, queue);
    }
    if (!state) this.streams.set(stream, state = new EngineStream(stream, ""));
    if (state.listeners.has(queue) || state.pending?.has(queue)) {
      return { epoch: state.epoch, seq: state.seq };
    }
    if (state.live && since === undefined) {
      // This node is in step with the stream: join from the local copy, as in memory.
      const position = { epoch: state.epoch, seq: state.seq };
      if (this.deliverHeader(queue, state)) this.register(state, queue);
      else this.collect(state);
      return position;
    }
    (state.pending ??= new Set()).add(queue);
    this.followed(queue).add(state);
    let position: Position | undefined;
    const joining = state;
    try {
      await this.#engine.sync(stream, since, (snap) => {
        position = this.#joined(joining, snap, [queue], since);
      }, existing);
    } catch (e) {
      if (joining.pending?.delete(queue)) {
        this.following.get(queue)?.delete(joining);
        this.collect(joining);
      }
      throw e;
    }
    return position ?? { epoch: joining.epoch, seq: joining.seq };
  }

  /** Removes a queue that waits for its snapshot. */
  protected override unpend(state: EngineStream, queue: Listener): boolean {
    return state.pending?.delete(queue) ?? false;
  }

  /** Forgets a stream nobody here follows (header and history live in the engine). */
  protected collect(state: EngineStream): void {
    if (
      state.listeners.size === 0 && !state.pending?.size &&
      this.streams.get(state.name) === state
    ) {
      this.streams.delete(state.name);
      this.#engine.unfollow(state.name);
    }
  }

  /** A snapshot arrived, in order: brings the local copy in step and joins the queues. */
  #joined(
    state: EngineStream,
    snap: EngineSnapshot,
    queues: Iterable<Listener>,
    since: Position | undefined,
  ): Position {
    if (snap.absent) {
      // Asked for an existing stream, and there is none: nobody joins, nothing is made.
      for (const q of queues) {
        if (state.pending?.delete(q)) this.following.get(q)?.delete(state);
      }
      this.collect(state);
      return { epoch: "", seq: 0 };
    }
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
        reset = this.event(state, "reset", { reason: snap.reset });
      } else {
        replay = (snap.events ?? []).map((e) =>
          buildEvent(this.codec, e.kind, state, e.message, e.seq, state.epoch, "own")
        );
      }
    }
    for (const q of queues) {
      if (!state.pending?.delete(q)) continue; // hung up meanwhile
      let ok = true;
      if (since === undefined) ok = this.deliverHeader(q, state);
      else if (reset) ok = this.deliver(q, reset) && this.deliverHeader(q, state);
      else for (let i = 0; ok && i < replay.length; i++) ok = this.deliver(q, replay[i]!);
      if (ok) this.register(state, q);
    }
    this.collect(state);
    return position;
  }

  /** An event from the engine (the sink's `event`). */
  #event(
    stream: string,
    kind: "put" | "header" | "end",
    message: unknown,
    seq: number,
    epoch: string,
    json?: string,
  ): void {
    const state = this.streams.get(stream);
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
    this.fanout(state, this.event(state, kind, message, json));
  }

  /** The stream was deleted: its listeners get `end`; the copy waits for a new snapshot. */
  #ended(state: EngineStream): void {
    const end = this.event(state, "end", null);
    state.live = false;
    state.epoch = "";
    state.seq = 0;
    state.header = undefined;
    state.joinEvent = undefined;
    this.endListeners(state, end);
    this.collect(state);
  }

  /** The engine may have missed events (the sink's `lost`): resync every stream. */
  #lost(): void {
    for (const state of [...this.streams.values()]) this.#resync(state);
    // Creations announced while the link was down were missed: look for them.
    for (const proxy of this.#proxies.values()) {
      for (const [pattern, join] of proxy.patterns) {
        this.#scan(proxy, pattern, join, undefined).catch(() => {});
      }
    }
  }

  /**
   * A pattern listen with an engine: the streams the engine lists are joined one by one, each
   * as a listen of the queue's {@linkcode PatternProxy} (so joins, resyncs and ends work as for
   * any listener); streams created later, on any node, are announced through the engine's
   * creation notices and joined from their first event.
   */
  override async listenPattern(
    pattern: string,
    queue: Listener,
    since: Readonly<Record<string, Position>> | undefined,
  ): Promise<PatternJoin> {
    checkPattern(pattern, this.maxName);
    this.checkQueue(pattern, queue);
    if (!this.#engine.streams || !this.#engine.watchCreated) {
      throw new TypeError(
        `Cannot listen to pattern "${pattern}": the hub's engine does not list streams`,
      );
    }
    let proxy = this.#proxies.get(queue);
    if (proxy?.patterns.has(pattern)) return { pattern, streams: 0 };
    this.admitPattern(pattern, queue);
    if (!proxy) this.#proxies.set(queue, proxy = new PatternProxy(queue, this));
    const join = {};
    proxy.patterns.set(pattern, join);
    this.#patternCount++;
    queue.attached?.(this.#source);
    try {
      if (!this.#watching) {
        this.#watching = this.#engine.watchCreated((stream, epoch) => this.#created(stream, epoch));
        this.#watching.catch(() => this.#watching = undefined);
      }
      await this.#watching;
      for (const [name, at] of Object.entries(since ?? {})) {
        if (matchPattern(pattern, name)) proxy.resume.set(name, at);
      }
      const streams = await this.#scan(proxy, pattern, join, since);
      // Streams named in `since` that are gone: the queue learns they ended.
      for (const [name, at] of Object.entries(since ?? {})) {
        if (!matchPattern(pattern, name) || proxy.seen.has(name)) continue;
        if (proxy.resume.get(name) === null) continue; // its end went out (see #joinProxy)
        const end = buildEvent(this.codec, "end", { name }, null, at.seq, at.epoch, "own");
        proxy.put(end);
      }
      return { pattern, streams };
    } catch (e) {
      this.hangupPattern(pattern, queue);
      throw e;
    } finally {
      for (const name of Object.keys(since ?? {})) proxy.resume.delete(name);
    }
  }

  /** Joins the proxy to every stream the engine lists for the pattern; returns how many. */
  async #scan(
    proxy: PatternProxy,
    pattern: string,
    join: object,
    since: Readonly<Record<string, Position>> | undefined,
  ): Promise<number> {
    let n = 0;
    for await (const names of this.#engine.streams!(pattern)) {
      for (const name of names) {
        if (this.#proxies.get(proxy.queue) !== proxy || proxy.patterns.get(pattern) !== join) {
          return n;
        }
        if (!matchPattern(pattern, name)) continue;
        if (await this.#joinProxy(proxy, name, since?.[name])) n++;
      }
    }
    return n;
  }

  /**
   * Joins a pattern proxy to one stream (once), only if the stream exists: one listed or
   * announced may be deleted before its turn, and must not be made anew by the join. Returns
   * whether the stream exists. `notice`: `since` is a creation notice's first position (not
   * the listener's).
   */
  async #joinProxy(
    proxy: PatternProxy,
    name: string,
    since: Position | undefined,
    notice = false,
  ): Promise<boolean> {
    const state = this.streams.get(name);
    if (notice && since && state?.pending?.has(proxy)) {
      // Announced while its join is in flight: if that join finds it absent, join it again.
      proxy.again.set(name, since);
      return true;
    }
    if (notice && since && state?.listeners.has(proxy) && state.epoch !== since.epoch) {
      // Announced anew before the end of the one followed reached this node (its events may
      // wait behind a snapshot; notices do not): join the new one after that end.
      proxy.again.set(name, since);
      return true;
    }
    if (state && (state.listeners.has(proxy) || state.pending?.has(proxy))) return true;
    const given = proxy.resume.get(name);
    if (given && given !== since && given.epoch !== since?.epoch && !proxy.seen.has(name)) {
      // Made anew (announced) before the resuming join reached it: the stream the listener
      // followed ended; it learns that before the new stream's header.
      proxy.resume.set(name, null);
      proxy.put(buildEvent(this.codec, "end", { name }, null, given.seq, given.epoch, "own"));
    }
    // Resuming: what is missed comes as a replay (or a reset), no header is made up.
    const resuming = since !== undefined && since.seq > 0 && !proxy.seen.has(name);
    if (resuming) proxy.seen.add(name);
    const announced = notice && !proxy.seen.has(name);
    if (announced) proxy.announced.add(name);
    let at: Position;
    try {
      at = await this.listen(name, proxy, since, true);
    } finally {
      if (announced) proxy.announced.delete(name);
    }
    const again = proxy.again.get(name);
    // Announced anew and the join found that stream, or none: nothing is left to do later.
    // Else the join found the older stream, whose end is on its way (see PatternProxy.put).
    if (again && (at.epoch === "" || at.epoch === again.epoch)) proxy.again.delete(name);
    if (at.epoch === "") {
      // Gone before its turn: a resumed position learns it ended (see listenPattern, or below
      // when it was made anew).
      if (resuming) proxy.seen.delete(name);
      // Made anew after the join looked: follow the new stream from its start.
      if (again) return this.#joinProxy(proxy, name, again, true);
      return false;
    }
    // A stream without a header gave nothing yet (or only a reset): its position is the
    // explicit first event, as in memory.
    const reset = proxy.resets.delete(name);
    if ((reset || !proxy.seen.has(name)) && this.streams.get(name)?.listeners.has(proxy)) {
      proxy.put(buildEvent(this.codec, "header", { name }, null, at.seq, at.epoch, "join"));
    }
    return true;
  }

  /**
   * A pattern proxy got the `end` of a stream that was announced anew while its join was in
   * flight: it joins the new stream from its start.
   *
   * @param proxy The proxy.
   * @param name The stream's name.
   * @param first The new stream's first position.
   */
  rejoinAnnounced(proxy: PatternProxy, name: string, first: Position): void {
    if (this.#proxies.get(proxy.queue) !== proxy || !proxy.matches(name)) return;
    this.#joinProxy(proxy, name, first, true).catch(() => {
      // Unreachable: the engine calls lost() when it is back, and the rescan finds it.
    });
  }

  /** A stream was created (on any node): proxies of matching patterns join it from its start. */
  #created(stream: string, epoch: string): void {
    for (const proxy of this.#proxies.values()) {
      if (!proxy.matches(stream)) continue;
      this.#joinProxy(proxy, stream, { epoch, seq: 0 }, true).catch(() => {
        // Unreachable: the engine calls lost() when it is back, and the rescan finds it.
      });
    }
  }

  /** Stops a pattern of the queue: its proxy hangs up streams no other pattern matches. */
  override hangupPattern(pattern: string, queue: Listener): void {
    const proxy = this.#proxies.get(queue);
    if (!proxy?.patterns.delete(pattern)) return;
    this.#patternCount--;
    for (const name of [...proxy.seen]) {
      if (!proxy.matches(name)) {
        proxy.seen.delete(name);
        this.hangup(name, proxy);
      }
    }
    if (proxy.patterns.size === 0) {
      this.#proxies.delete(queue);
      super.endqueue(proxy);
    }
  }

  /** Stops every stream and pattern of the queue. */
  override endqueue(queue: Listener): void {
    super.endqueue(queue);
    const proxy = this.#proxies.get(queue);
    if (proxy) {
      this.#proxies.delete(queue);
      this.#patternCount -= proxy.patterns.size;
      super.endqueue(proxy);
    }
  }

  /**
   * A pattern proxy's streams do not count against `maxListens` (its pattern counted once, as
   * a single listen's does): each still costs a listen of the memory budget.
   */
  protected override admitListen(stream: string, queue: Listener): void {
    if (!(queue instanceof PatternProxy)) return super.admitListen(stream, queue);
    const what = `Cannot follow stream "${stream.slice(0, 100)}" for a pattern`;
    if (this.streams.has(stream)) this.limits.memory.admit(LISTEN_COST, what);
    else this.admitStream(stream, what, LISTEN_COST);
  }

  /** How many patterns the listener listens to (its proxy's). */
  protected override patternsOf(queue: Listener): number {
    return this.#proxies.get(queue)?.patterns.size ?? 0;
  }

  /** How many patterns are listened to here, over every listener. */
  protected override get patternCount(): number {
    return this.#patternCount;
  }

  /** Whether the queue listens to the stream by name here (a pattern proxy skips it then). */
  listensByName(stream: string, queue: Listener): boolean {
    return this.streams.get(stream)?.listeners.has(queue) ?? false;
  }

  /** Takes every listener of the stream off, and joins them again from where they were. */
  #resync(state: EngineStream): void {
    if (state.live) {
      state.live = false;
      state.resumeFrom = state.epoch ? { epoch: state.epoch, seq: state.seq } : undefined;
      const rejoin = state.rejoin ??= new Set();
      const pending = state.pending ??= new Set();
      for (const l of state.listeners) {
        rejoin.add(l);
        pending.add(l);
      }
      this.listenerCount -= state.listeners.size;
      state.listeners.clear();
    }
    const group = state.rejoin;
    if (!group || group.size === 0) return;
    state.rejoin = undefined;
    const since = state.resumeFrom;
    this.#engine.sync(state.name, since, (snap) => {
      this.#joined(state, snap, group, since);
    }).catch(() => {
      // Still unreachable: the engine calls lost() again when it is back.
      for (const q of group) if (state.pending?.has(q)) (state.rejoin ??= new Set()).add(q);
    });
  }
}

/**
 * What a pattern listen registers on each stream with an engine: one per queue, forwarding
 * events to it. The first event it forwards of a stream is a header (a `null` one is made when
 * the stream's first event is a put); a stream the queue also listens to by name is skipped.
 */
export class PatternProxy implements Listener {
  /** The pattern listener. */
  readonly queue: Listener;
  /** Its patterns, each with the join it belongs to. */
  readonly patterns: Map<string, object> = new Map();
  /** Streams it forwarded a first event of (and not yet an end). */
  readonly seen: Set<string> = new Set();
  /** Streams being joined from a creation notice (their first position is the notice's). */
  readonly announced: Set<string> = new Set();
  /** Streams whose last event forwarded is a reset (no header followed it yet). */
  readonly resets: Set<string> = new Set();
  /** Streams announced as created while a join of them was in flight: their first position. */
  readonly again: Map<string, Position> = new Map();
  /**
   * While a pattern join resumes: the positions it was given (`since`), by stream; `null` once
   * that stream's `end` went out because it was made anew before the join reached it.
   */
  readonly resume: Map<string, Position | null> = new Map();
  readonly #core: EngineCore;

  /**
   * Creates the proxy of a queue.
   *
   * @param queue The pattern listener.
   * @param core The engine core.
   */
  constructor(queue: Listener, core: EngineCore) {
    this.queue = queue;
    this.#core = core;
  }

  /**
   * Whether one of its patterns matches the stream.
   *
   * @param stream The stream's name.
   * @returns Whether it does.
   */
  matches(stream: string): boolean {
    for (const p of this.patterns.keys()) if (matchPattern(p, stream)) return true;
    return false;
  }

  /**
   * Forwards an event to the queue.
   *
   * @param ev The event.
   */
  put(ev: StreamEvent): void {
    if (this.#core.listensByName(ev.stream, this.queue)) return;
    if (ev.kind === "reset") {
      this.resets.add(ev.stream);
      // Joining a stream announced as created: the queue never had a position in it, so a
      // reset (it went and came back meanwhile) says nothing; its join frame follows.
      if (this.announced.has(ev.stream) && !this.seen.has(ev.stream)) return;
    } else this.resets.delete(ev.stream);
    if (ev.kind === "end") {
      this.seen.delete(ev.stream);
      const again = this.again.get(ev.stream);
      if (again && again.epoch !== ev.epoch) {
        // Made anew while the join of the one that ended was in flight: follow the new one,
        // once the end has left every listener.
        this.again.delete(ev.stream);
        queueMicrotask(() => this.#core.rejoinAnnounced(this, ev.stream, again));
      }
    } else if (!this.seen.has(ev.stream)) {
      this.seen.add(ev.stream);
      if (ev.kind === "put") {
        const seq = ev.seq - 1;
        this.queue.put(
          buildEvent(this.#core.codec, "header", { name: ev.stream }, null, seq, ev.epoch, "join"),
        );
      }
    }
    this.queue.put(ev);
  }
}
