/**
 * The limits on what clients may make a server keep: one memory budget
 * ({@linkcode MemoryBudget}) over everything held on their behalf (headers, history, stream
 * state, listen registrations, unfinished request lines and unsent bytes), and the error every
 * limit answers with ({@linkcode LimitExceededError}, `limit_exceeded` on the wire).
 * docs/limits.md gives the defaults and their rationale.
 *
 * ## How the parts are counted
 *
 * - **history**: the bytes of frames the history rings keep (exact). History is the one part
 *   that gives way: it is trimmed, oldest first, to leave room for the rest, down to its
 *   reserve ({@linkcode MemoryBudget.historyReserve}).
 * - **headers**: each set header costs {@linkcode HEADER_COST_FACTOR} times its frame's bytes
 *   (the decoded message and the join frame listeners get).
 * - **streams**: {@linkcode streamCost} per stream held: {@linkcode STREAM_COST} for its state
 *   and {@linkcode STREAM_NAME_FACTOR} bytes per character of its name (measured, see
 *   bench/stream_cost.ts).
 * - **listens**: {@linkcode LISTEN_COST} bytes per listener registration,
 *   {@linkcode PATTERN_COST} per pattern listen and {@linkcode FOLLOW_COST} per stream a pattern
 *   listener follows.
 * - **lines** and **outbound**: the doors report the bytes of unfinished request lines they
 *   hold and of frames queued but not yet written (see {@linkcode MemoryBudget.lines}).
 *
 * A new stream, header or listen that would take the budget past its maximum (history aside,
 * and less the history reserve: {@linkcode MemoryBudget.historyReserve}) is refused with
 * `max_memory`; a door whose connection holds more than
 * {@linkcode CONNECTION_SHARE} bytes while the budget is spent cuts that connection.
 *
 * @example Refuse past the budget
 * ```ts
 * import { LimitExceededError, MemoryBudget } from "./budget.ts";
 * import { assertEquals, assertThrows } from "@std/assert";
 *
 * const budget = new MemoryBudget(1000);
 * budget.admit(600, 'Cannot set the header of "a"');
 * budget.headers += 600;
 * const e = assertThrows(() => budget.admit(600, 'Cannot set the header of "b"'), LimitExceededError);
 * assertEquals(e.limit, "max_memory");
 * assertEquals(budget.parts().headers, 600);
 * ```
 *
 * @module
 */

/** The limits that answer `limit_exceeded`, as named in the error's `limit` field. */
export type Limit =
  | "max_memory"
  | "max_streams"
  | "max_header_bytes"
  | "max_listens"
  | "max_connections"
  | "redis_memory";

/** Every {@linkcode Limit}, in the order metrics list them. */
export const LIMITS: readonly Limit[] = [
  "max_memory",
  "max_streams",
  "max_header_bytes",
  "max_listens",
  "max_connections",
  "redis_memory",
];

/**
 * A request would go past a limit: nothing was changed, and only the requester is told (on
 * the wire: an `error` frame with code `limit_exceeded` and the `limit`; on REST: 507 for
 * `max_memory`, `max_streams` and `redis_memory`, 413 for `max_header_bytes`, 429 for `max_listens`).
 */
export class LimitExceededError extends Error {
  /** The limit, as named on the wire. */
  readonly limit: Limit;

  /**
   * Creates the error.
   *
   * @param limit The limit that would be passed.
   * @param message What was refused and why, naming the limit's value.
   * @param options Standard error options.
   */
  constructor(limit: Limit, message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = "LimitExceededError";
    this.limit = limit;
  }
}

/**
 * Estimated bytes one stream's state costs while the hub holds it, its name aside (object, map
 * entry, history ring with one put; measured: about 950 bytes with a 12-character name, see
 * bench/stream_cost.ts).
 */
export const STREAM_COST = 1024;

/**
 * Estimated bytes each character of a stream's name costs while the hub holds the stream (the
 * name is kept twice: as the map key and as JSON text for frames; measured about 2 bytes per
 * character for names of 12 to 256 characters, bench/stream_cost.ts).
 */
export const STREAM_NAME_FACTOR = 2;

/**
 * What one stream costs in the memory budget: {@linkcode STREAM_COST} plus
 * {@linkcode STREAM_NAME_FACTOR} bytes per character of its name.
 *
 * @param name The stream's name.
 * @returns Its cost in bytes.
 *
 * @example A 110-character name
 * ```ts
 * import { streamCost } from "./budget.ts";
 * import { assertEquals } from "@std/assert";
 *
 * assertEquals(streamCost("j".repeat(110)), 1024 + 220);
 * ```
 */
export function streamCost(name: string): number {
  return STREAM_COST + STREAM_NAME_FACTOR * name.length;
}

/** Estimated bytes one listener registration costs (set entries on both sides). */
export const LISTEN_COST = 256;

/**
 * Estimated bytes one pattern listen costs (its text, map entries, its share of the sets
 * streams point to; measured about 0.7 KiB): it counts as this many bytes of the `listens`
 * part, {@linkcode LISTEN_COST} times four.
 */
export const PATTERN_COST = 4 * LISTEN_COST;

/**
 * Estimated bytes each stream a pattern listener follows costs (its entry in the listener's set
 * of streams, its share of the sets streams point to; measured about 100 bytes): it counts in
 * the `listens` part as half a {@linkcode LISTEN_COST}.
 */
export const FOLLOW_COST = LISTEN_COST / 2;

/** How many times its frame's bytes a set header costs: the decoded message, the join frame. */
export const HEADER_COST_FACTOR = 2;

/**
 * The unsent or unfinished bytes one connection may hold while the budget is spent: a door
 * cuts a connection holding more (unsent bytes: `slow_consumer`; an unfinished line:
 * `limit_exceeded`).
 */
export const CONNECTION_SHARE = 64 * 1024;

/** What a hub's core tells the budget: the parts it counts itself. */
export interface BudgetSource {
  /** Streams held. */
  readonly streamCount: number;
  /** What the streams held cost: the sum of their {@linkcode streamCost}. */
  readonly streamBytes: number;
  /** Listener registrations over all streams. */
  readonly listenCount: number;
  /** Bytes of history over all streams. */
  readonly historyBytes: number;
  /**
   * Trims history, oldest first, to at most `bytes`.
   *
   * @param bytes What history may keep.
   */
  trimHistory(bytes: number): void;
}

/** The parts of a {@linkcode MemoryBudget}, in bytes. */
export interface MemoryParts {
  /** Frames kept for resuming listeners. */
  readonly history: number;
  /** Headers set (see {@linkcode HEADER_COST_FACTOR}). */
  readonly headers: number;
  /** Stream state (see {@linkcode streamCost}). */
  readonly streams: number;
  /** Listener registrations (see {@linkcode LISTEN_COST}). */
  readonly listens: number;
  /** Unfinished request lines the doors hold. */
  readonly lines: number;
  /** Frames queued by the doors and not yet written. */
  readonly outbound: number;
}

const NO_SOURCE: BudgetSource = {
  streamCount: 0,
  streamBytes: 0,
  listenCount: 0,
  historyBytes: 0,
  trimHistory() {},
};

/**
 * One byte budget over everything a hub and its doors keep for clients. The hub creates it
 * (`MessageStream.memory`); its core counts streams, listens, headers and history;
 * the doors report the bytes they hold.
 *
 * **How a door reports** (tcp.ts, ws.ts and sse.ts do): add the bytes of what a connection
 * queues to {@linkcode MemoryBudget.outbound} and subtract them when written or dropped,
 * counting a frame every listener shares once, however many queues hold it (tcp.ts pins each
 * shared buffer, ws.ts each shared text); after each read, add the change of the framer's
 * `pending` bytes to {@linkcode MemoryBudget.lines}, and subtract what is left when the
 * connection ends. While the budget is spent ({@linkcode MemoryBudget.spent}; for a line,
 * {@linkcode MemoryBudget.spentBesides} with what the connection holds), a connection holding
 * more than {@linkcode CONNECTION_SHARE} of either is cut. Every figure is a plain number:
 * reporting costs an addition.
 */
export class MemoryBudget {
  /** Most bytes kept for clients, all parts together. */
  readonly max: number;
  /**
   * Bytes kept for history whatever the rest holds: the other parts may take `max` less this,
   * so a flood of headers or streams cannot take every listener's resume history.
   */
  readonly historyReserve: number;
  /** Bytes of headers (charged by the hub's core). */
  headers = 0;
  /** Bytes of unfinished request lines the doors hold (reported by the doors). */
  lines = 0;
  /** Bytes of frames queued by the doors and not yet written (reported by the doors). */
  outbound = 0;
  #source: BudgetSource = NO_SOURCE;

  /**
   * Creates a budget.
   *
   * @param max Most bytes kept for clients.
   * @param historyReserve Bytes of `max` kept for history (see
   * {@linkcode MemoryBudget.historyReserve}).
   * @throws {RangeError} When `max` is not a non-negative safe integer, or `historyReserve` is
   * not one of at most `max`.
   */
  constructor(max: number, historyReserve = 0) {
    if (!Number.isSafeInteger(max) || max < 0) {
      throw new RangeError(`Option "maxMemory" must be a non-negative integer, got ${max}`);
    }
    if (!Number.isSafeInteger(historyReserve) || historyReserve < 0 || historyReserve > max) {
      throw new RangeError(
        `The history reserve must be an integer from 0 to ${max}, got ${historyReserve}`,
      );
    }
    this.max = max;
    this.historyReserve = historyReserve;
  }

  /**
   * Connects the core that counts streams, listens and history (the hub does).
   *
   * @param source The core.
   */
  bind(source: BudgetSource): void {
    this.#source = source;
  }

  /** Bytes held apart from history (which gives way: see {@linkcode MemoryBudget.admit}). */
  get held(): number {
    const s = this.#source;
    return this.headers + s.streamBytes + s.listenCount * LISTEN_COST +
      this.lines + this.outbound;
  }

  /** Bytes held, history included. */
  get used(): number {
    return this.held + this.#source.historyBytes;
  }

  /**
   * Whether the budget is spent: what is held apart from history (which gives way) is at or
   * past the maximum less the history reserve.
   */
  get spent(): boolean {
    return this.held >= this.max - this.historyReserve;
  }

  /**
   * Whether the budget is spent by everything but `own` (what one connection holds): a door
   * then lets that connection hold no more than {@linkcode CONNECTION_SHARE}.
   *
   * @param own The bytes the asking connection holds (and has reported).
   * @returns Whether the rest is at or past the maximum.
   */
  spentBesides(own: number): boolean {
    return this.held - own >= this.max - this.historyReserve;
  }

  /** How many bytes history may keep now: what the rest leaves. */
  get historyRoom(): number {
    return Math.max(0, this.max - this.held);
  }

  /**
   * The parts, in bytes.
   *
   * @returns Each part.
   */
  parts(): MemoryParts {
    const s = this.#source;
    return {
      history: s.historyBytes,
      headers: this.headers,
      streams: s.streamBytes,
      listens: s.listenCount * LISTEN_COST,
      lines: this.lines,
      outbound: this.outbound,
    };
  }

  /**
   * Makes room for `bytes` more, trimming history if it must; the caller then keeps them.
   *
   * @param bytes What the caller is about to keep.
   * @param what What is refused if there is no room, for the message (`Cannot listen to stream "a"`).
   * @throws {LimitExceededError} With `max_memory` when the rest (history aside) leaves no room
   * outside the history reserve.
   */
  admit(bytes: number, what: string): void {
    const held = this.held;
    if (held + bytes > this.max - this.historyReserve) {
      throw new LimitExceededError(
        "max_memory",
        `${what}: the server's memory budget of ${this.max} bytes is spent`,
      );
    }
    const room = this.max - held - bytes;
    if (this.#source.historyBytes > room) this.#source.trimHistory(room);
  }
}
