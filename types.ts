/**
 * The types every part of msgstream shares: positions, events, listeners, and the
 * {@linkcode Streamer} interface that the in-process hub and the remote client both implement.
 * Applications import them from `@x/msgstream`; this module only holds them, so that the hub's
 * own modules can use them without importing the hub.
 *
 * @example Typing a job's events
 * ```ts
 * import type { StreamEvent } from "@x/msgstream";
 * import { assertEquals } from "@std/assert";
 *
 * type Status = { state: string };
 * type Progress = { done: number };
 *
 * function describe(ev: StreamEvent<Status, Progress>): string {
 *   switch (ev.kind) {
 *     case "header":
 *       return ev.message === null ? "no status" : ev.message.state;
 *     case "put":
 *       return `done ${ev.message.done}`;
 *     case "reset":
 *       return `reset: ${ev.message.reason}`;
 *     case "end":
 *       return "ended";
 *   }
 * }
 * const at = { stream: "job", seq: 1, epoch: "e", frame: new Uint8Array() };
 * assertEquals(describe({ ...at, kind: "put", message: { done: 3 } }), "done 3");
 * ```
 *
 * @module
 */

/** What an event says happened on a stream. */
export type EventKind = "header" | "put" | "end" | "reset";

/**
 * Why a listener could not be caught up from the position it gave: its epoch is not the
 * stream's (`epoch_changed`: the stream was deleted or created anew), the server lost the state
 * the position belongs to (`state_lost`: a restart without durable storage, or Redis back with
 * older data), it is ahead of the stream, or history no longer reaches back to it.
 */
export type ResetReason =
  | "epoch_changed"
  | "state_lost"
  | "ahead_of_stream"
  | "history_trimmed";

/** A position in a stream: its epoch and the seq of the last put seen. */
export interface Position {
  /** Changes whenever the stream is created anew (first use, after `delete`, after a restart). */
  readonly epoch: string;
  /** The number of the last put (puts count from 1; 0 means none yet). */
  readonly seq: number;
}

/** What every event carries, whatever its kind. */
export interface EventBase extends Position {
  /** The stream's name. */
  readonly stream: string;
  /**
   * The event's frame on the wire, encoded once by the hub's codec and shared by every
   * connection (UTF-8, ending with a newline). See `frame.ts` for how long it stays valid.
   */
  readonly frame: Uint8Array;
}

/** A message put on the stream. */
export interface PutEvent<M = unknown> extends EventBase {
  /** A put. */
  readonly kind: "put";
  /** The message. */
  readonly message: M;
}

/**
 * The stream's header: first when a listener joins (if one is set), then whenever it changes.
 */
export interface HeaderEvent<H = unknown> extends EventBase {
  /** A header. */
  readonly kind: "header";
  /** The header, or `null` when it was cleared. */
  readonly message: H | null;
}

/**
 * The listener could not be caught up from the position it gave: it may have missed events.
 * The current header follows.
 */
export interface ResetEvent extends EventBase {
  /** A reset. */
  readonly kind: "reset";
  /** Why. */
  readonly message: { readonly reason: ResetReason };
}

/** The stream was deleted: no more events follow from it. */
export interface EndEvent extends EventBase {
  /** An end. */
  readonly kind: "end";
  /** Always `null`. */
  readonly message: null;
}

/**
 * One event on one stream, as every listener receives it: switch on `kind` to get the
 * message's type (`H` for headers, `M` for puts). Events are shared between listeners: treat
 * them as read-only.
 *
 * @typeParam H The type of the stream's headers.
 * @typeParam M The type of the stream's put messages.
 */
export type StreamEvent<H = unknown, M = unknown> =
  | PutEvent<M>
  | HeaderEvent<H>
  | ResetEvent
  | EndEvent;

/**
 * Anything that can receive events: the original's duck type, an object with `put`.
 *
 * @typeParam H The type of the headers it expects.
 * @typeParam M The type of the put messages it expects.
 */
export interface Listener<H = unknown, M = unknown> {
  /**
   * Receives one event. Called synchronously by the hub; must not block. A listener that
   * throws is removed from every stream of the hub that called it; the error is reported (the
   * hub's `onListenerError`, by default one line on stderr) and handed to its `close`.
   *
   * @param event The event.
   */
  put(event: StreamEvent<H, M>): void;
  /**
   * Called when its source stops delivering to it for good without being asked: `put` threw
   * (`reason` is that error), or a remote client gave up reconnecting (`reason` says why) or
   * was closed (no `reason`). An {@linkcode Inbox}'s reader gets the buffered events, then
   * `reason` as its error.
   *
   * @param reason Why, when it is a failure.
   */
  close?(reason?: Error): void;
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
  /**
   * With `false`, only an existing stream is followed: a stream that does not exist (deleted,
   * or lost in a restart without `--data`) is not created anew; the listen fails at once with
   * `StreamNotFoundError` (`not_found` on the wire). A `RemoteStream` that listens again after
   * a reconnect and finds the stream gone gives its listeners an `end` event.
   *
   * @default {true}
   */
  create?: boolean;
}

/**
 * What a pattern listen follows: every stream whose name matches `pattern` (`*` matches any
 * run of characters; see `pattern.ts`), those that exist now and those created later.
 */
export interface PatternTarget {
  /** The pattern, e.g. `jobs.*`. */
  readonly pattern: string;
}

/** Options for a pattern listen ({@linkcode Streamer.listen} with a {@linkcode PatternTarget}). */
export interface PatternListenOptions {
  /**
   * Resume each stream named here after its position (what the listener saw last); a stream
   * whose history no longer covers its position gets its own `reset` then its header, a named
   * stream that no longer exists gets `end`, and matching streams not named get their header.
   */
  since?: Readonly<Record<string, Position>>;
}

/** What a pattern listen answers once every matching stream held at the join is caught up. */
export interface PatternJoin {
  /** The pattern. */
  readonly pattern: string;
  /** How many existing streams the listener was caught up on. */
  readonly streams: number;
}

/** A stream's state, from {@linkcode Streamer.stat}. */
export interface StreamStat<H = unknown> extends Position {
  /** The stream's name. */
  readonly stream: string;
  /** The stream's header, or `null` when none is set. */
  readonly header: H | null;
  /**
   * How many listeners follow the stream by name here: on this hub (with an engine: on this
   * node), or, from a remote stream, on the server the client is connected to. Listeners by
   * pattern are not counted.
   */
  readonly listeners: number;
}

/**
 * The interface shared by the in-process hub (`MessageStream`) and the remote client
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
   * @returns The put's position: the stream's epoch and the put's seq.
   */
  put(stream: string, message: unknown): Promise<Position>;
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
  listen<H = unknown, M = unknown>(
    stream: string,
    queue: Listener<H, M>,
    options?: ListenOptions,
  ): Promise<Position>;
  /**
   * Starts delivering the events of every stream a pattern matches to `queue`: per stream,
   * the header first (always; `null` when none is set), then every later event; a stream
   * created later is announced with its header before its first put; a stream that goes gives
   * `end` and the pattern stays.
   *
   * @param target The pattern.
   * @param queue The listener.
   * @param options Where to resume, per stream.
   * @returns The pattern and how many existing streams the listener was caught up on.
   */
  listen<H = unknown, M = unknown>(
    target: PatternTarget,
    queue: Listener<H, M>,
    options?: PatternListenOptions,
  ): Promise<PatternJoin>;
  /**
   * Stops delivering the stream's events to `queue`.
   *
   * @param stream The stream's name.
   * @param queue The listener.
   */
  hangup(stream: string, queue: Listener): void;
  /**
   * Stops a pattern listen of `queue`.
   *
   * @param target The pattern.
   * @param queue The listener.
   */
  hangup(target: PatternTarget, queue: Listener): void;
  /**
   * Reads a stream's state (header, position, listeners) without listening to it, and without
   * creating it when it does not exist.
   *
   * @param stream The stream's name.
   * @returns The stream's state, or `undefined` when there is no such stream.
   */
  stat(stream: string): Promise<StreamStat | undefined>;
}

/** What the hub knows about one stream, from `MessageStream.info`. */
export interface StreamInfo extends Position {
  /** The stream's name. */
  readonly stream: string;
  /** How many listeners follow it by name (listeners by pattern are not counted). */
  readonly listeners: number;
  /** Whether a header is set. */
  readonly hasHeader: boolean;
  /** How many events its history holds. */
  readonly historyLength: number;
  /** How many bytes its history holds. */
  readonly historyBytes: number;
}

/** Totals, from `MessageStream.stats`. */
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
