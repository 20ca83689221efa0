/**
 * Deadlines for tests: every wait in a test ends, either with what it waited for or with an
 * error that says what never came. A broken bound makes a test fail, never hang the suite.
 *
 * The default deadline ({@linkcode TIMEOUT}) is generous, so a loaded two-core machine does not
 * flake, yet finite; `MSGSTREAM_TEST_TIMEOUT` (milliseconds) overrides it.
 *
 * @example A wait that would hang fails with a message instead
 * ```ts
 * import { assertRejects } from "@std/assert";
 * import { deadline, TimeoutError } from "./_wait.ts";
 *
 * const never = new Promise<void>(() => {});
 * await assertRejects(() => deadline(never, "the answer", 10), TimeoutError, "the answer");
 * ```
 *
 * @module
 */

/**
 * The default deadline of a test's wait, in milliseconds: `MSGSTREAM_TEST_TIMEOUT` or 20 s.
 */
export const TIMEOUT: number = (() => {
  const text = Deno.env.get("MSGSTREAM_TEST_TIMEOUT");
  const ms = text === undefined ? NaN : Number(text);
  return Number.isInteger(ms) && ms > 0 ? ms : 20_000;
})();

/** What a wait is for: text, or a function giving it when the deadline passes (late state). */
export type What = string | (() => string);

/** A wait in a test reached its deadline. */
export class TimeoutError extends Error {
  /** The deadline, in milliseconds. */
  readonly ms: number;

  /**
   * Creates the error.
   *
   * @param what What never came.
   * @param ms The deadline, in milliseconds.
   */
  constructor(what: string, ms: number) {
    super(`Timed out after ${ms} ms waiting for ${what}`);
    this.name = "TimeoutError";
    this.ms = ms;
  }
}

function describe(what: What): string {
  return typeof what === "function" ? what() : what;
}

/**
 * Awaits `promise`, or fails with a {@linkcode TimeoutError} naming `what` once `ms` have
 * passed. The timer is cleared either way, so test sanitizers see nothing left behind.
 *
 * @param promise What to wait for.
 * @param what What it is, for the error (a function is called only when the deadline passes).
 * @param ms The deadline in milliseconds.
 * @returns The promise's value.
 * @throws {TimeoutError} When the deadline passes first; the promise's error when it rejects.
 *
 * @example
 * ```ts
 * import { assertEquals } from "@std/assert";
 * import { deadline } from "./_wait.ts";
 *
 * assertEquals(await deadline(Promise.resolve(42), "the answer"), 42);
 * ```
 */
export async function deadline<T>(
  promise: Promise<T>,
  what: What,
  ms: number = TIMEOUT,
): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new TimeoutError(describe(what), ms)), ms);
  });
  try {
    return await Promise.race([promise, timeout]);
  } finally {
    clearTimeout(timer);
  }
}

/** Options for {@linkcode poll}. */
export interface PollOptions {
  /**
   * The deadline in milliseconds.
   *
   * @default {TIMEOUT}
   */
  ms?: number;
  /**
   * Milliseconds between checks.
   *
   * @default {5}
   */
  interval?: number;
}

/**
 * Checks `test` until it holds: for a state no event announces (e.g. a server's count of open
 * connections). Prefer awaiting an event where there is one.
 *
 * @param test The condition (it may answer asynchronously).
 * @param what What is awaited, for the error.
 * @param options The deadline and the interval.
 * @returns When `test()` holds.
 * @throws {TimeoutError} When it still does not hold at the deadline.
 *
 * @example
 * ```ts
 * import { poll } from "./_wait.ts";
 *
 * let n = 0;
 * const timer = setInterval(() => n++, 1);
 * await poll(() => n >= 3, "three ticks");
 * clearInterval(timer);
 * ```
 */
export async function poll(
  test: () => boolean | Promise<boolean>,
  what: What,
  options: PollOptions = {},
): Promise<void> {
  const { ms = TIMEOUT, interval = 5 } = options;
  const end = performance.now() + ms;
  while (!(await test())) {
    if (performance.now() >= end) throw new TimeoutError(describe(what), ms);
    await new Promise((r) => setTimeout(r, interval));
  }
}

/**
 * A signal to wait on: `wait()` resolves at the next `notify()`, for waits on a condition that
 * changes by events (re-check the condition after each wake).
 *
 * @example
 * ```ts
 * import { Signal } from "./_wait.ts";
 *
 * const signal = new Signal();
 * let count = 0;
 * setTimeout(() => {
 *   count = 2;
 *   signal.notify();
 * }, 1);
 * await signal.until(() => count === 2, "count 2");
 * ```
 */
export class Signal {
  #waiters: (() => void)[] = [];

  /** Wakes every current waiter. */
  notify(): void {
    for (const wake of this.#waiters.splice(0)) wake();
  }

  /**
   * Resolves at the next {@linkcode Signal.notify}.
   *
   * @returns A promise for the next notification.
   */
  wait(): Promise<void> {
    return new Promise((resolve) => this.#waiters.push(resolve));
  }

  /**
   * Waits until `test()` holds, checking at once and after every notification.
   *
   * @param test The condition (it may answer asynchronously).
   * @param what What is awaited, for the error.
   * @param ms The deadline in milliseconds.
   * @returns When `test()` holds.
   * @throws {TimeoutError} When it still does not hold at the deadline.
   */
  until(test: () => boolean, what: What, ms: number = TIMEOUT): Promise<void> {
    return deadline(
      (async () => {
        while (!test()) await this.wait();
      })(),
      what,
      ms,
    );
  }
}
