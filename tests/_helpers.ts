/**
 * Shared test helpers: a raw TCP line client that speaks frames by hand, a recording listener
 * whose contents can be awaited, and a way to read N events from an {@linkcode Inbox}.
 *
 * The API is stable; other test files import it.
 *
 * @example A raw client against a real server
 * ```ts
 * import { serve } from "../server.ts";
 * import { connectRaw } from "./_helpers.ts";
 * import { assertEquals } from "@std/assert";
 *
 * await using server = serve({ port: 0 });
 * await using raw = await connectRaw(server.addr.port);
 * raw.send({ action: "ping", id: 1 });
 * assertEquals(await raw.next(), { action: "pong", id: 1 });
 * ```
 *
 * @module
 */

import type { Inbox, Listener, MessageStream, StreamEvent } from "../mod.ts";

/** A decoded frame, as the raw client reads it. */
export type Frame = Record<string, unknown>;

const encoder = new TextEncoder();

/** A TCP connection that sends and reads newline-delimited JSON frames by hand. */
export class RawClient implements AsyncDisposable {
  /** The underlying connection. */
  readonly conn: Deno.TcpConn;
  #frames: Frame[] = [];
  #waiter: (() => void) | undefined;
  #eof = false;
  #error: Error | undefined;
  #reading: Promise<void>;
  #closed = false;
  /** Every line read so far, in order, as text (without its newline). */
  readonly lines: string[] = [];

  /**
   * Wraps a connection and starts reading it.
   *
   * @param conn The connection.
   */
  constructor(conn: Deno.TcpConn) {
    this.conn = conn;
    this.#reading = this.#read();
  }

  async #read(): Promise<void> {
    const decoder = new TextDecoder();
    const buf = new Uint8Array(64 * 1024);
    let partial = "";
    try {
      while (true) {
        const n = await this.conn.read(buf);
        if (n === null) break;
        partial += decoder.decode(buf.subarray(0, n), { stream: true });
        let i: number;
        while ((i = partial.indexOf("\n")) !== -1) {
          const line = partial.slice(0, i);
          partial = partial.slice(i + 1);
          if (line.length === 0) continue;
          this.lines.push(line);
          let frame: Frame;
          try {
            frame = JSON.parse(line);
          } catch {
            frame = { action: "<undecodable>", line };
          }
          this.#frames.push(frame);
        }
        this.#wake();
      }
    } catch (e) {
      // Closed locally or reset by the peer: both end the stream of frames.
      if (!this.#closed) this.#error = e as Error;
    }
    this.#eof = true;
    this.#wake();
  }

  #wake(): void {
    const w = this.#waiter;
    this.#waiter = undefined;
    w?.();
  }

  /**
   * Sends one frame: an object is JSON-encoded, a string is sent as is; a newline is added.
   *
   * @param frame The frame.
   */
  async send(frame: Frame | string): Promise<void> {
    const text = typeof frame === "string" ? frame : JSON.stringify(frame);
    await this.write(text + "\n");
  }

  /**
   * Writes bytes or text as is (no newline added): for partial lines and invalid bytes.
   *
   * @param data What to write.
   */
  async write(data: Uint8Array | string): Promise<void> {
    const bytes = typeof data === "string" ? encoder.encode(data) : data;
    let off = 0;
    while (off < bytes.byteLength) off += await this.conn.write(bytes.subarray(off));
  }

  /**
   * Reads the next frame.
   *
   * @returns The frame.
   * @throws {Error} When the connection ends first.
   */
  async next(): Promise<Frame> {
    const f = await this.nextOrEnd();
    if (f === undefined) {
      throw new Error(
        `Connection ended before the next frame${this.#error ? `: ${this.#error.message}` : ""}`,
      );
    }
    return f;
  }

  /**
   * Reads the next frame, or `undefined` when the connection has ended.
   *
   * @returns The frame or `undefined`.
   */
  async nextOrEnd(): Promise<Frame | undefined> {
    while (this.#frames.length === 0 && !this.#eof) {
      await new Promise<void>((r) => this.#waiter = r);
    }
    return this.#frames.shift();
  }

  /**
   * Reads frames until one matches, and returns all of them (the match last).
   *
   * @param match The test.
   * @returns The frames read.
   * @throws {Error} When the connection ends first.
   */
  async until(match: (f: Frame) => boolean): Promise<Frame[]> {
    const got: Frame[] = [];
    while (true) {
      const f = await this.next();
      got.push(f);
      if (match(f)) return got;
    }
  }

  /**
   * Reads frames until the connection ends (the server closed it).
   *
   * @returns Every frame left.
   */
  async rest(): Promise<Frame[]> {
    const got: Frame[] = [];
    for (let f = await this.nextOrEnd(); f !== undefined; f = await this.nextOrEnd()) got.push(f);
    return got;
  }

  /** Resolves when the connection has ended (the peer closed it or `close()` was called). */
  async ended(): Promise<void> {
    await this.#reading;
  }

  /** Closes the connection (safe twice) and waits for the reader to stop. */
  async close(): Promise<void> {
    if (!this.#closed) {
      this.#closed = true;
      try {
        this.conn.close();
      } catch {
        // already closed
      }
    }
    await this.#reading;
  }

  /** Closes, for `await using`. */
  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }
}

/**
 * Opens a raw line client to a server on 127.0.0.1.
 *
 * @param port The server's port.
 * @param hostname The server's address.
 * @returns The client.
 */
export async function connectRaw(port: number, hostname = "127.0.0.1"): Promise<RawClient> {
  const conn = await Deno.connect({ hostname, port });
  return new RawClient(conn);
}

/**
 * A listener that records every event it gets; tests await a count or a condition.
 *
 * @example
 * ```ts
 * import { MessageStream } from "../mod.ts";
 * import { Recorder } from "./_helpers.ts";
 * import { assertEquals } from "@std/assert";
 *
 * const hub = new MessageStream();
 * const rec = new Recorder();
 * await hub.listen("a", rec);
 * await hub.put("a", 1);
 * assertEquals((await rec.waitFor(1)).map((e) => e.message), [1]);
 * ```
 */
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
   * @returns All events so far.
   */
  waitFor(n: number): Promise<StreamEvent[]> {
    return this.until(() => this.events.length >= n);
  }

  /**
   * Waits until an event matching `match` has arrived (including ones already recorded).
   *
   * @param match The test, on one event.
   * @returns All events so far.
   */
  waitForEvent(match: (ev: StreamEvent) => boolean): Promise<StreamEvent[]> {
    let seen = 0;
    return this.until(() => {
      for (; seen < this.events.length; seen++) {
        if (match(this.events[seen] as StreamEvent)) return true;
      }
      return false;
    });
  }

  /**
   * Waits until `test()` holds (checked after each event and at once).
   *
   * @param test The condition.
   * @returns All events so far.
   */
  async until(test: () => boolean): Promise<StreamEvent[]> {
    if (!test()) {
      const { promise, resolve } = Promise.withResolvers<void>();
      this.#waiters.push({ test, resolve });
      await promise;
    }
    return this.events;
  }
}

/**
 * Reads exactly `n` events from an inbox, then releases its reader (the inbox keeps listening).
 *
 * @param inbox The inbox.
 * @param n How many events.
 * @returns The events.
 * @throws {Error} When the inbox ends first; its error when it fails (e.g. SlowConsumerError).
 */
export async function collect(inbox: Inbox, n: number): Promise<StreamEvent[]> {
  const reader = inbox.getReader();
  const got: StreamEvent[] = [];
  try {
    while (got.length < n) {
      const r = await reader.read();
      if (r.done) throw new Error(`Inbox ended after ${got.length} of ${n} events`);
      got.push(r.value);
    }
  } finally {
    reader.releaseLock();
  }
  return got;
}

/**
 * The `"host:port"` of a server, for `RemoteStream.connect`.
 *
 * @param server Anything with a bound `addr`.
 * @returns The address.
 */
export function addressOf(server: { addr: Deno.NetAddr }): string {
  return `${server.addr.hostname}:${server.addr.port}`;
}

/** The Redis URL the suite runs against (`MSGSTREAM_TEST_REDIS`), or `undefined`: memory. */
export const testRedis: string | undefined = Deno.env.get("MSGSTREAM_TEST_REDIS") || undefined;

/**
 * Server options selecting the engine under test: `{}` (the memory engine) normally, or the
 * Redis engine when `MSGSTREAM_TEST_REDIS` holds a URL (see `tests/redis_suite_test.ts`). Each
 * call gives a fresh key prefix, so tests sharing one Redis never see each other's streams.
 *
 * @returns Options to spread into `serve()`.
 *
 * @example
 * ```ts
 * import { serve } from "../server.ts";
 * import { engineOptions } from "./_helpers.ts";
 *
 * await using server = serve({ port: 0, ...engineOptions() });
 * ```
 */
export function engineOptions(): { redis?: string; redisPrefix?: string } {
  if (testRedis === undefined) return {};
  return { redis: testRedis, redisPrefix: `msgstream-test-${crypto.randomUUID()}:` };
}

/**
 * A stream's seq as any engine shows it, for checks that something was (or was not) put. On
 * the memory engine this is exactly `hub.info(stream)?.seq` (`undefined`: the hub holds no such
 * stream). With an engine the hub only knows streams it follows, so this listens once with a
 * throwaway queue: `undefined` when the stream has neither a put nor a header.
 *
 * @param hub The hub (e.g. `server.hub`).
 * @param stream The stream's name.
 * @returns Its seq, or `undefined` when there is no such stream.
 *
 * @example
 * ```ts
 * import { MessageStream } from "../mod.ts";
 * import { seqOf } from "./_helpers.ts";
 * import { assertEquals } from "@std/assert";
 *
 * const hub = new MessageStream();
 * assertEquals(await seqOf(hub, "job"), undefined);
 * await hub.put("job", 1);
 * assertEquals(await seqOf(hub, "job"), 1);
 * ```
 */
export async function seqOf(hub: MessageStream, stream: string): Promise<number | undefined> {
  if (!hub.engine) return hub.info(stream)?.seq;
  const probe = new Recorder("seqOf");
  try {
    const at = await hub.listen(stream, probe);
    return at.seq === 0 && !probe.events.some((e) => e.kind === "header") ? undefined : at.seq;
  } finally {
    hub.hangup(stream, probe);
  }
}

/**
 * How many listeners this hub has on a stream. On the memory engine this is exactly
 * `hub.info(stream)?.listeners`; with an engine a hub drops its copy of a stream when its last
 * listener leaves, so no copy counts as 0.
 *
 * @param hub The hub.
 * @param stream The stream's name.
 * @returns The count (`undefined` on the memory engine when it holds no such stream).
 *
 * @example
 * ```ts
 * import { MessageStream } from "../mod.ts";
 * import { listenerCount } from "./_helpers.ts";
 * import { assertEquals } from "@std/assert";
 *
 * const hub = new MessageStream();
 * await hub.listen("job", { put() {} });
 * assertEquals(listenerCount(hub, "job"), 1);
 * ```
 */
export function listenerCount(hub: MessageStream, stream: string): number | undefined {
  const n = hub.info(stream)?.listeners;
  return hub.engine ? n ?? 0 : n;
}

/**
 * Puts every message on a stream and returns once the hub has fanned all of them out to its
 * listeners (so they sit in the connections' outbound buffers). On the memory engine this is
 * `putNow` in one synchronous run: nothing has been written to any socket when it returns.
 * With an engine puts are asynchronous, so it waits until a listener of its own has every one.
 *
 * @param hub The hub.
 * @param stream The stream's name.
 * @param messages The messages, in order.
 * @returns When all of them have been fanned out.
 *
 * @example
 * ```ts
 * import { MessageStream } from "../mod.ts";
 * import { putFlood, Recorder } from "./_helpers.ts";
 * import { assertEquals } from "@std/assert";
 *
 * const hub = new MessageStream();
 * const rec = new Recorder();
 * await hub.listen("job", rec);
 * await putFlood(hub, "job", [1, 2, 3]);
 * assertEquals(rec.events.map((e) => e.message), [1, 2, 3]);
 * ```
 */
export async function putFlood(
  hub: MessageStream,
  stream: string,
  messages: unknown[],
): Promise<void> {
  if (!hub.engine) {
    for (const m of messages) hub.putNow(stream, m);
    return;
  }
  const own = new Recorder("putFlood");
  await hub.listen(stream, own);
  try {
    const last = (await Promise.all(messages.map((m) => hub.put(stream, m)))).at(-1);
    if (last !== undefined) await own.waitForEvent((e) => e.kind === "put" && e.seq >= last);
  } finally {
    hub.hangup(stream, own);
  }
}

/**
 * mulberry32: a small, fast, seedable PRNG, so a randomized test can be replayed from its seed.
 *
 * @param seed The seed.
 * @returns A function giving numbers in [0, 1).
 *
 * @example Same seed, same sequence
 * ```ts
 * import { prng } from "./_helpers.ts";
 * import { assertEquals } from "@std/assert";
 *
 * assertEquals(prng(42)(), prng(42)());
 * ```
 */
export function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/**
 * Reads a server process's stdout up to its first line and returns the port of its
 * `msgstream listening on tcp://HOST:PORT` line. The reader is released afterwards.
 *
 * @param stdout The process's stdout.
 * @returns The port, or undefined when the process ended without listening (e.g. the port was
 * still held).
 */
export async function listeningPort(
  stdout: ReadableStream<Uint8Array>,
): Promise<number | undefined> {
  const reader = stdout.pipeThrough(new TextDecoderStream()).getReader();
  let out = "";
  while (!out.includes("\n")) {
    const r = await reader.read();
    if (r.done) break;
    out += r.value;
  }
  await reader.cancel();
  const m = out.match(/listening on tcp:\/\/[^:]+:(\d+)/);
  return m ? Number(m[1]) : undefined;
}
