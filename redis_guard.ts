/**
 * The Redis engine's memory guard: the node's memory budget counts what the node keeps, not
 * what Redis keeps (headers and history live there), so a flood of headers could fill Redis
 * until its `maxmemory` refuses every write, everybody's. The guard reads Redis' `INFO memory`
 * (`used_memory` against `maxmemory`, at most once a second, while writes come; between
 * readings it adds the bytes this node wrote since, so a flood is seen at once) and, past a
 * share of `maxmemory`, refuses what grows Redis for good (a header set, a put that would
 * make a new stream) with `limit_exceeded` (`redis_memory`), while puts to the streams that
 * exist go on (their history is capped) for as long as Redis takes them. docs/redis.md says
 * how to size it.
 *
 * @example Past the share, a header is refused
 * ```ts
 * import { RedisMemoryGuard } from "./redis_guard.ts";
 * import { LimitExceededError } from "./budget.ts";
 * import { assertEquals, assertRejects } from "@std/assert";
 *
 * const guard = new RedisMemoryGuard({
 *   percent: 90,
 *   read: () => Promise.resolve(["used_memory:950\r\nmaxmemory:1000\r\n"]),
 * });
 * const e = await assertRejects(
 *   () => guard.admit('Cannot set the header of "a"', 10),
 *   LimitExceededError,
 * );
 * assertEquals(e.limit, "redis_memory");
 * await guard.admit('Cannot put on stream "b"', 10, () => Promise.resolve(false)); // it exists
 * ```
 *
 * @module
 */

import { LimitExceededError } from "./budget.ts";

/** Options of a {@linkcode RedisMemoryGuard}. */
export interface RedisMemoryGuardOptions {
  /**
   * The share of Redis' `maxmemory`, in percent, past which new streams and headers are
   * refused; 0 turns the guard off.
   */
  percent: number;
  /**
   * Reads `INFO memory` of every Redis node that holds streams (one for a single Redis, every
   * master of a cluster).
   */
  read: () => Promise<string[]>;
  /**
   * Most milliseconds a reading is used before it is read again (while writes come).
   *
   * @default {1000}
   */
  intervalMs?: number;
}

/** One node's memory, from `INFO memory`. */
export interface RedisMemory {
  /** `used_memory`, in bytes. */
  readonly used: number;
  /** `maxmemory`, in bytes; 0 when Redis has none. */
  readonly max: number;
}

/**
 * Reads `used_memory` and `maxmemory` from the text of `INFO memory`.
 *
 * @param info The reply of `INFO memory`.
 * @returns The two figures (0 for a field that is missing).
 *
 * @example
 * ```ts
 * import { parseMemoryInfo } from "./redis_guard.ts";
 * import { assertEquals } from "@std/assert";
 *
 * assertEquals(parseMemoryInfo("# Memory\r\nused_memory:1024\r\nmaxmemory:0\r\n"), { used: 1024, max: 0 });
 * ```
 */
export function parseMemoryInfo(info: string): RedisMemory {
  const field = (name: string) => {
    const m = new RegExp(`^${name}:(\\d+)\\r?$`, "m").exec(info);
    return m ? Number(m[1]) : 0;
  };
  return { used: field("used_memory"), max: field("maxmemory") };
}

/**
 * Refuses, past a share of Redis' `maxmemory`, the writes that grow Redis for good (see the
 * module's documentation). A Redis without `maxmemory` is never refused here: bound it.
 */
export class RedisMemoryGuard {
  /** The share, in percent (0: off). */
  readonly percent: number;
  readonly #read: () => Promise<string[]>;
  readonly #intervalMs: number;
  /** The fullest node's reading, or undefined before the first. */
  #memory: RedisMemory | undefined;
  #readAt = -Infinity;
  #reading: Promise<void> | undefined;
  /**
   * Bytes written through this guard since the reading before the one in use was started
   * (those since may not have reached Redis when it was read).
   */
  #written = 0;
  /** Of `#written`, what was decided before the reading in use was started. */
  #lagging = 0;
  /** The last write still waiting (see `ordered`): later writes wait behind it. */
  #gate: Promise<void> | undefined;

  /**
   * Creates a guard; it reads Redis when writes come.
   *
   * @param options The share and how to read Redis.
   * @throws {RangeError} When `percent` is not an integer from 0 to 100.
   */
  constructor(options: RedisMemoryGuardOptions) {
    const p = options.percent;
    if (!Number.isInteger(p) || p < 0 || p > 100) {
      throw new RangeError(
        `Option "redisMaxMemoryPercent" must be an integer from 0 to 100, got ${p}`,
      );
    }
    this.percent = p;
    this.#read = options.read;
    this.#intervalMs = options.intervalMs ?? 1000;
  }

  /** The last reading (of the fullest node), or undefined before the first. */
  get memory(): RedisMemory | undefined {
    return this.#memory;
  }

  /**
   * Whether Redis is past the share: the last reading, plus what this node wrote since the
   * reading before it was started.
   */
  get over(): boolean {
    const m = this.#memory;
    return this.percent > 0 && m !== undefined && m.max > 0 &&
      (m.used + this.#written) * 100 >= m.max * this.percent;
  }

  /** Reads Redis again when the reading is older than the interval (one read at a time). */
  #refresh(): Promise<void> | undefined {
    if (this.#reading) return this.#reading;
    if (performance.now() - this.#readAt < this.#intervalMs) return undefined;
    this.#readAt = performance.now();
    const before = this.#written;
    this.#reading = this.#read().then((infos) => {
      // What was decided before the previous read started is in Redis by now; what was decided
      // since may still wait in this node's batches, behind the read (ten clients pipelining
      // headers kept tens of MB there: forgetting them let Redis pass maxmemory), so it counts
      // until the next reading.
      this.#written -= this.#lagging;
      this.#lagging = before - this.#lagging;
      let fullest: RedisMemory | undefined;
      for (const info of infos) {
        const m = parseMemoryInfo(info);
        if (m.max === 0) continue;
        if (!fullest || m.used / m.max > fullest.used / fullest.max) fullest = m;
      }
      this.#memory = fullest ?? { used: 0, max: 0 };
    }, () => {
      // Redis cannot be read: the write itself will say so (engine_unavailable).
    }).finally(() => this.#reading = undefined);
    return this.#reading;
  }

  /**
   * Refuses a write that grows Redis for good while Redis is past the share: a header set
   * (`isNew` undefined) or a put to a new stream (`isNew` answers whether the stream is new;
   * asked only past the share). The first write waits for the first reading; later ones are
   * decided on the last reading, at once (no promise) when they may go.
   *
   * @param what What is refused, for the message (`Cannot set the header of stream "a"`).
   * @param bytes What the write adds to Redis, about (its message's characters): counted until
   * the next reading.
   * @param isNew For a put: whether it would make a new stream.
   * @returns `undefined` when the write may go now, else a promise that settles when it may go
   * or rejects when it may not.
   * @throws {LimitExceededError} (as the promise's rejection) With `redis_memory`.
   */
  check(what: string, bytes: number, isNew?: () => Promise<boolean>): Promise<void> | undefined {
    if (this.percent === 0) return undefined;
    const reading = this.#refresh();
    if (this.#memory === undefined && reading) {
      return reading.then(() => this.#decide(what, bytes, isNew));
    }
    return this.#decide(what, bytes, isNew);
  }

  /**
   * {@linkcode RedisMemoryGuard.check} as a promise.
   *
   * @param what What is refused, for the message.
   * @param bytes What the write adds to Redis, about.
   * @param isNew For a put: whether it would make a new stream.
   * @returns When the write may go.
   * @throws {LimitExceededError} With `redis_memory` when it may not.
   */
  async admit(what: string, bytes: number, isNew?: () => Promise<boolean>): Promise<void> {
    await this.check(what, bytes, isNew);
  }

  /**
   * Orders a write behind its check (when the check must wait: the first reading, or a put's
   * existence check past the share) and behind every earlier write that waits, so that the
   * engine's writes keep their order.
   *
   * @param check The write's {@linkcode RedisMemoryGuard.check}, or `undefined` for a write
   * the guard lets through (a delete, a header clear).
   * @returns `undefined` when the write may go now, else a promise that settles when it may go
   * or rejects when it may not.
   */
  ordered(check: Promise<void> | undefined): Promise<void> | undefined {
    const before = this.#gate;
    if (!check && !before) return undefined;
    // A refusal may be settled already while this write waits behind an earlier one: handled
    // now, or it is reported as an unhandled rejection (logged as a bug, with its stack, once
    // per refused write of a flood). `mine` still rejects with it.
    check?.catch(() => {});
    const mine = (async () => {
      if (before) await before;
      if (check) await check;
    })();
    const tail = mine.catch(() => {}); // the next write waits for this one, refused or not
    this.#gate = tail;
    tail.then(() => {
      if (this.#gate === tail) this.#gate = undefined;
    });
    return mine;
  }

  #decide(
    what: string,
    bytes: number,
    isNew: (() => Promise<boolean>) | undefined,
  ): Promise<void> | undefined {
    if (!this.over) {
      this.#written += bytes;
      return undefined;
    }
    if (isNew) {
      return isNew().then((fresh) => {
        if (fresh) throw this.#refusal(what);
        this.#written += bytes;
      });
    }
    return Promise.reject(this.#refusal(what));
  }

  #refusal(what: string): LimitExceededError {
    const m = this.#memory as RedisMemory;
    return new LimitExceededError(
      "redis_memory",
      `${what}: Redis uses about ${m.used + this.#written} of its maxmemory ${m.max} bytes, past ` +
        `${this.percent} % (redis_memory); puts to existing streams go on`,
    );
  }
}
