/**
 * Listeners for tests: a {@linkcode Recorder} that keeps every event and lets a test await a
 * count or a condition, and {@linkcode collect} to read N events from an `Inbox`. Every wait
 * has a deadline ({@linkcode TIMEOUT} unless given) and fails with what arrived so far.
 *
 * @example
 * ```ts
 * import { MessageStream } from "../mod.ts";
 * import { Recorder } from "./_recorder.ts";
 * import { assertEquals } from "@std/assert";
 *
 * const hub = new MessageStream();
 * const rec = new Recorder();
 * await hub.listen("a", rec);
 * await hub.put("a", 1);
 * assertEquals((await rec.waitFor(1)).map((e) => e.message), [1]);
 * ```
 *
 * @module
 */

import type { Inbox, Listener, StreamEvent } from "../mod.ts";
import { deadline, TIMEOUT, type What } from "./_wait.ts";

/** A short text of the last events, for a deadline's message. */
function tail(events: readonly StreamEvent[]): string {
  const last = events.slice(-3).map((e) => {
    let message = JSON.stringify(e.message) ?? "undefined";
    if (message.length > 80) message = `${message.slice(0, 80)}…`;
    return `${e.kind} ${e.stream} ${e.epoch}/${e.seq} ${message}`;
  });
  return `${events.length} events${last.length > 0 ? `; last: ${last.join(" | ")}` : ""}`;
}

/** A listener that records every event it gets; tests await a count or a condition. */
export class Recorder implements Listener {
  /** Every event received, in order. */
  readonly events: StreamEvent[] = [];
  /** A name, for messages. */
  readonly name: string;
  #waiters: { test: () => boolean; resolve: () => void }[] = [];

  /**
   * Creates an empty recorder.
   *
   * @param name A name, for messages.
   */
  constructor(name = "recorder") {
    this.name = name;
  }

  /**
   * Records one event.
   *
   * @param event The event.
   */
  put(event: StreamEvent): void {
    this.events.push(event);
    if (this.#waiters.length === 0) return;
    this.#waiters = this.#waiters.filter((w) => {
      if (!w.test()) return true;
      w.resolve();
      return false;
    });
  }

  /**
   * Waits until at least `n` events have arrived.
   *
   * @param n The count.
   * @param ms The deadline in milliseconds.
   * @returns All events so far.
   * @throws {TimeoutError} When fewer have arrived at the deadline.
   */
  waitFor(n: number, ms: number = TIMEOUT): Promise<StreamEvent[]> {
    return this.until(() => this.events.length >= n, `${n} events`, ms);
  }

  /**
   * Waits until an event matching `match` has arrived (including ones already recorded).
   *
   * @param match The test, on one event.
   * @param ms The deadline in milliseconds.
   * @returns All events so far.
   * @throws {TimeoutError} When none has arrived at the deadline.
   */
  waitForEvent(match: (ev: StreamEvent) => boolean, ms: number = TIMEOUT): Promise<StreamEvent[]> {
    let seen = 0;
    return this.until(
      () => {
        for (; seen < this.events.length; seen++) {
          if (match(this.events[seen] as StreamEvent)) return true;
        }
        return false;
      },
      `an event matching ${match}`,
      ms,
    );
  }

  /**
   * Waits until `test()` holds (checked at once and after each event).
   *
   * @param test The condition.
   * @param what What is awaited, for the error.
   * @param ms The deadline in milliseconds.
   * @returns All events so far.
   * @throws {TimeoutError} When it does not hold at the deadline.
   */
  async until(
    test: () => boolean,
    what: What = "a condition",
    ms: number = TIMEOUT,
  ): Promise<StreamEvent[]> {
    if (!test()) {
      const { promise, resolve } = Promise.withResolvers<void>();
      const waiter = { test, resolve };
      this.#waiters.push(waiter);
      try {
        await deadline(
          promise,
          () =>
            `${typeof what === "function" ? what() : what} at ${this.name} (${tail(this.events)})`,
          ms,
        );
      } finally {
        this.#waiters = this.#waiters.filter((w) => w !== waiter);
      }
    }
    return this.events;
  }
}

/**
 * Reads exactly `n` events from an inbox, then releases its reader (the inbox keeps listening).
 *
 * @param inbox The inbox.
 * @param n How many events.
 * @param ms The deadline in milliseconds, for all of them.
 * @returns The events.
 * @throws {Error} When the inbox ends first; its error when it fails (e.g. SlowConsumerError).
 * @throws {TimeoutError} When fewer than `n` have come at the deadline.
 *
 * @example
 * ```ts
 * import { Inbox, MessageStream } from "../mod.ts";
 * import { collect } from "./_recorder.ts";
 * import { assertEquals } from "@std/assert";
 *
 * const hub = new MessageStream();
 * const inbox = new Inbox();
 * await hub.listen("a", inbox);
 * await hub.put("a", 1);
 * await hub.put("a", 2);
 * assertEquals((await collect(inbox, 2)).map((e) => e.message), [1, 2]);
 * inbox.close();
 * ```
 */
export async function collect(
  inbox: Inbox,
  n: number,
  ms: number = TIMEOUT,
): Promise<StreamEvent[]> {
  const reader = inbox.getReader();
  const got: StreamEvent[] = [];
  try {
    await deadline(
      (async () => {
        while (got.length < n) {
          const r = await reader.read();
          if (r.done) throw new Error(`Inbox ended after ${got.length} of ${n} events`);
          got.push(r.value);
        }
      })(),
      () => `${n} events from an inbox (${tail(got)})`,
      ms,
    );
  } finally {
    // On a deadline this also fails the pending read, so nothing is left waiting.
    reader.releaseLock();
  }
  return got;
}
