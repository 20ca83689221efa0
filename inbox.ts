/**
 * The {@linkcode Inbox}: a bounded listener queue that is a web-standard `ReadableStream` of
 * events, and the {@linkcode SlowConsumerError} its reader gets when it overflowed.
 *
 * @example Reading a stream's events
 * ```ts
 * import { Inbox, MessageStream } from "@x/msgstream";
 * import { assertEquals } from "@std/assert";
 *
 * const hub = new MessageStream();
 * const inbox = new Inbox<string, number>();
 * await hub.header("job", "running");
 * await hub.listen("job", inbox);
 * await hub.put("job", 1);
 * inbox.close();
 * const got = [];
 * for await (const ev of inbox) got.push(ev.message);
 * assertEquals(got, ["running", 1]);
 * ```
 *
 * @module
 */

import { ownEvent } from "./frame.ts";
import { intOption } from "./options.ts";
import type { Detachable, Listener, StreamEvent } from "./types.ts";

/**
 * Thrown by an {@linkcode Inbox}'s reader after the events it had buffered, when the inbox
 * overflowed because it was not read fast enough. The inbox stopped listening when it
 * overflowed; the last events read tell where to resume (`listen(…, { since })`).
 */
export class SlowConsumerError extends Error {
  /** The limit that was exceeded. */
  readonly limit: "events" | "bytes";

  /**
   * Creates the error.
   *
   * @param limit The limit that was exceeded.
   * @param options Standard error options.
   */
  constructor(limit: "events" | "bytes", options?: ErrorOptions) {
    super(`Inbox overflowed: more ${limit} buffered than its limit`, options);
    this.name = "SlowConsumerError";
    this.limit = limit;
  }
}

/** Options for {@linkcode Inbox}. */
export interface InboxOptions {
  /**
   * Most events buffered before the inbox overflows.
   *
   * @default {10000}
   */
  maxEvents?: number;
  /**
   * Most bytes (of encoded frames) buffered before the inbox overflows.
   *
   * @default {16777216}
   */
  maxBytes?: number;
}

/**
 * A bounded listener queue that is a web-standard `ReadableStream` of events. One inbox can
 * follow many streams, of many hubs or remote streams.
 *
 * Reading is pull-based: events wait in the inbox until read. When more than `maxEvents`
 * events or `maxBytes` bytes wait, the inbox **overflows**: it stops listening everywhere,
 * and its reader gets the events already buffered, then a {@linkcode SlowConsumerError}.
 * Nothing is dropped silently. Cancelling the stream (or `break` out of `for await`) also
 * stops listening everywhere.
 *
 * @example Reading with `for await`
 * ```ts
 * import { Inbox, MessageStream } from "@x/msgstream";
 * import { assertEquals } from "@std/assert";
 *
 * const hub = new MessageStream();
 * const inbox = new Inbox();
 * await hub.listen("a", inbox);
 * await hub.listen("b", inbox);
 * await hub.put("a", 1);
 * await hub.put("b", 2);
 * inbox.close();
 * const got = [];
 * for await (const ev of inbox) got.push(`${ev.stream}:${ev.message}`);
 * assertEquals(got, ["a:1", "b:2"]);
 * ```
 *
 * @example Overflow is reported, not silent
 * ```ts
 * import { Inbox, MessageStream, SlowConsumerError } from "@x/msgstream";
 * import { assertEquals, assertRejects } from "@std/assert";
 *
 * const hub = new MessageStream();
 * const inbox = new Inbox({ maxEvents: 2 });
 * await hub.listen("a", inbox);
 * for (let i = 1; i <= 5; i++) await hub.put("a", i);
 * const reader = inbox.getReader();
 * assertEquals((await reader.read()).value?.message, 1);
 * assertEquals((await reader.read()).value?.message, 2);
 * await assertRejects(() => reader.read(), SlowConsumerError);
 * assertEquals(hub.stats().listeners, 0);
 * ```
 */
export class Inbox<H = unknown, M = unknown> extends ReadableStream<StreamEvent<H, M>>
  implements Listener<H, M> {
  #state: InboxState<H, M>;

  /**
   * Creates an empty inbox.
   *
   * @param options Its bounds.
   * @throws {RangeError} When a bound is not a positive integer.
   */
  constructor(options?: InboxOptions) {
    const state: InboxState<H, M> = {
      buffer: new Deque<StreamEvent<H, M>>(),
      bytes: 0,
      maxEvents: intOption("maxEvents", options?.maxEvents, 10_000, 1),
      maxBytes: intOption("maxBytes", options?.maxBytes, 16 << 20, 1),
      controller: undefined,
      waiting: false,
      closed: false,
      error: undefined,
      sources: new Set(),
      self: undefined,
    };
    super({
      start(controller) {
        state.controller = controller;
      },
      pull() {
        pump(state, true);
      },
      cancel() {
        state.closed = true;
        state.buffer.clear();
        state.bytes = 0;
        detach(state);
      },
    }, { highWaterMark: 0 });
    state.self = this;
    this.#state = state;
  }

  /**
   * Buffers one event (the {@linkcode Listener} interface); hubs call this.
   *
   * @param event The event.
   */
  put(event: StreamEvent<H, M>): void {
    const s = this.#state;
    if (s.closed) return;
    if (s.waiting) {
      s.waiting = false;
      s.controller?.enqueue(event);
      return;
    }
    const size = event.frame.byteLength;
    if (s.buffer.length >= s.maxEvents || s.bytes + size > s.maxBytes) {
      // Keep what fits; the reader learns of the overflow after reading it.
      s.error = new SlowConsumerError(s.buffer.length >= s.maxEvents ? "events" : "bytes");
      s.closed = true;
      detach(s);
      return;
    }
    s.buffer.push(ownEvent(event));
    s.bytes += size;
  }

  /**
   * Records a source so the inbox can detach from it (the {@linkcode Listener} interface).
   *
   * @param source The hub or remote stream.
   */
  attached(source: Detachable): void {
    this.#state.sources.add(source);
  }

  /**
   * Whether the inbox has stopped listening (closed, cancelled or overflowed): a hub refuses to
   * listen with it.
   */
  get closed(): boolean {
    return this.#state.closed;
  }

  /**
   * Stops listening everywhere; the reader gets what is buffered, then the end of the stream,
   * or `reason` as its error when one is given (a remote client that gave up, a hub telling it
   * why it stopped).
   *
   * @example
   * ```ts
   * import { Inbox, MessageStream } from "@x/msgstream";
   * import { assertEquals } from "@std/assert";
   *
   * const hub = new MessageStream();
   * const inbox = new Inbox();
   * await hub.listen("a", inbox);
   * inbox.close();
   * assertEquals(hub.stats().listeners, 0);
   * assertEquals(await Array.fromAsync(inbox), []);
   * ```
   */
  close(reason?: Error): void {
    const s = this.#state;
    if (s.closed) return;
    s.closed = true;
    if (reason) s.error = reason;
    detach(s);
    pump(s, false);
  }

  /** How many events wait to be read. */
  get size(): number {
    return this.#state.buffer.length;
  }
}

interface InboxState<H, M> {
  buffer: Deque<StreamEvent<H, M>>;
  bytes: number;
  maxEvents: number;
  maxBytes: number;
  controller: ReadableStreamDefaultController<StreamEvent<H, M>> | undefined;
  waiting: boolean;
  closed: boolean;
  error: Error | undefined;
  sources: Set<Detachable>;
  self: Inbox<H, M> | undefined;
}

function pump<H, M>(s: InboxState<H, M>, pulled: boolean): void {
  const c = s.controller;
  if (!c) return;
  if (pulled || s.waiting) {
    const ev = s.buffer.shift();
    if (ev) {
      s.waiting = false;
      s.bytes -= ev.frame.byteLength;
      c.enqueue(ev);
      return;
    }
    if (!s.closed) {
      s.waiting = true;
      return;
    }
  }
  if (s.closed && s.buffer.length === 0) {
    s.waiting = false;
    s.controller = undefined;
    if (s.error) c.error(s.error);
    else c.close();
  }
}

function detach<H, M>(s: InboxState<H, M>): void {
  const sources = [...s.sources];
  s.sources.clear();
  if (s.self) { for (const src of sources) src.endqueue(s.self); }
  // An overflowed inbox whose reader waits must hear about it now.
  if (s.waiting) pump(s, false);
}

/** A FIFO with O(1) push and shift. */
class Deque<T> {
  #items: (T | undefined)[] = [];
  #head = 0;
  get length(): number {
    return this.#items.length - this.#head;
  }
  push(item: T): void {
    this.#items.push(item);
  }
  shift(): T | undefined {
    if (this.#head >= this.#items.length) return undefined;
    const item = this.#items[this.#head];
    this.#items[this.#head++] = undefined;
    if (this.#head > 1024 && this.#head * 2 > this.#items.length) {
      this.#items = this.#items.slice(this.#head);
      this.#head = 0;
    }
    return item;
  }
  clear(): void {
    this.#items = [];
    this.#head = 0;
  }
}
