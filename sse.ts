/**
 * Server-Sent Events, the HTTP door's way to follow one stream (`GET /streams/{name}` with
 * `Accept: text/event-stream`): each response is a hub listener whose body is a bounded,
 * pull-based byte stream. The header comes first (`event: header`), then puts (`event: put`),
 * `event: end` on delete and `event: reset` when a resume position is not covered by history.
 * Every event has `id: <epoch>:<seq>`, so `EventSource` resumes through `Last-Event-ID`; of the
 * header changes at the resume position only the newest is sent again. Every join gives the
 * client a position at once: when it has no event to send (no header, nothing to replay), an
 * `event: joined` block (`id: <epoch>:<seq>`, `data: {"epoch","seq"}`), so a client that drops
 * before the first put still resumes without a gap. (It carries data because some SSE clients
 * ignore the id of a block without data.) `retry:` comes in the first block. The `end` event's id is `<epoch>:<seq>:end`: a
 * reconnect with it is answered 204, which stops `EventSource`. Comment heartbeats (`: hb`)
 * keep proxies from closing idle responses: nothing is ever silent for longer than the
 * heartbeat interval. `event: close` says why the server ended a response (`shutdown`,
 * `slow_consumer`).
 *
 * Each event's block is built once and shared by every response: a response's queue holds
 * references to those bytes, and each pull hands the runtime at most
 * {@linkcode SSE_PULL_BYTES} (one block as it is, or a run of small ones joined), so a client
 * that does not read costs its queue's references, not a copy. Queued bytes count against
 * `maxBufferBytes` (`slow_consumer` beyond) and are reported to the hub's memory budget
 * (`hub.memory.outbound`) once per block, however many responses hold it; while the budget is
 * spent, a response holding more than `CONNECTION_SHARE` (budget.ts) is cut the same way.
 *
 * @example Follow a stream
 * ```ts
 * import { SseDoor } from "./sse.ts";
 * import { Metrics } from "./metrics.ts";
 * import { MessageStream } from "./mod.ts";
 * import { assertEquals } from "@std/assert";
 *
 * const hub = new MessageStream();
 * const door = new SseDoor(hub, new Metrics(), {
 *   heartbeatInterval: 15_000,
 *   retry: 1000,
 *   maxBufferBytes: 1 << 20,
 * });
 * const res = await door.open("job", undefined);
 * await hub.put("job", { done: 1 });
 * const reader = res.body!.pipeThrough(new TextDecoderStream()).getReader();
 * let text = "";
 * while (!text.includes("event: put")) text += (await reader.read()).value;
 * assertEquals(text.startsWith("retry: 1000\nid: "), true);
 * await reader.cancel();
 * ```
 *
 * @module
 */

/// <reference types="./std_types.d.ts" />
import { concat } from "@std/bytes/concat";
import { CONNECTION_SHARE } from "./budget.ts";
import type { Metrics } from "./metrics.ts";
import type { Listener, MessageStream, Position, StreamEvent } from "./mod.ts";
import { StreamNotFoundError } from "./core.ts";

const encoder = new TextEncoder();
const HEARTBEAT = encoder.encode(": hb\n\n");
/** The `id:` of every pattern response: a client sends it back when it reconnects. */
const PATTERN_ID = "pattern";
/**
 * Most bytes one pull hands to the runtime for a response (64 KiB): blocks queued beyond it
 * wait as references to the bytes every response shares.
 */
export const SSE_PULL_BYTES = 64 * 1024;
/** The suffix of an `end` event's id. */
const END_ID = /:end$/;

/**
 * Whether a `Last-Event-ID` is that of an `end` event: the client saw its stream deleted, and
 * is answered 204 (`EventSource` then stops reconnecting).
 *
 * @param id The client's `Last-Event-ID`.
 * @returns Whether it names an `end` event.
 *
 * @example
 * ```ts
 * import { isEndId } from "./sse.ts";
 * import { assertEquals } from "@std/assert";
 *
 * assertEquals(isEndId("a1b2:7:end"), true);
 * assertEquals(isEndId("a1b2:7"), false);
 * ```
 */
export function isEndId(id: string): boolean {
  return END_ID.test(id);
}

/** The limits of one door's SSE responses (the HTTP door's options, checked). */
export interface SseLimits {
  /** Milliseconds between comment heartbeats on an idle response. */
  heartbeatInterval: number;
  /** The reconnection delay, in milliseconds, asked of `EventSource`. */
  retry: number;
  /** Most bytes waiting to be sent on one response before it is cut (`slow_consumer`). */
  maxBufferBytes: number;
}

/** Every SSE response of one HTTP door: their shared event text, heartbeats and shutdown. */
export class SseDoor {
  /** The hub the responses follow. */
  readonly hub: MessageStream;
  /** The shared counters. */
  readonly metrics: Metrics;
  /** Most bytes waiting on one response. */
  readonly maxBuffer: number;
  /** Heartbeat sweeps so far: a response still closing two sweeps on is stuck and cut. */
  sweeps = 0;
  /**
   * Milliseconds between sweeps: half the heartbeat interval. A response silent through a whole
   * sweep period gets a heartbeat at the next sweep, so no gap exceeds the interval.
   */
  readonly sweepPeriod: number;
  readonly #heartbeat: number;
  readonly #preamble: Uint8Array;
  readonly #conns = new Set<SseConnection>();
  readonly #text = new WeakMap<StreamEvent, Uint8Array>();
  /**
   * How many response queues hold each block: its bytes count once in the hub's memory budget
   * however many responses wait to send it.
   */
  readonly #held = new Map<Uint8Array, number>();
  readonly #patternText = new WeakMap<StreamEvent, Uint8Array>();
  /** The `retry:` line and the constant `id:` of a pattern response's first block. */
  readonly #patternPreamble: Uint8Array;
  #sweeper: ReturnType<typeof setInterval> | undefined;
  #gone: PromiseWithResolvers<void> | undefined;

  /**
   * Creates the door's SSE side.
   *
   * @param hub The hub.
   * @param metrics The shared counters.
   * @param limits Heartbeat, retry and buffer limits.
   */
  constructor(hub: MessageStream, metrics: Metrics, limits: SseLimits) {
    this.hub = hub;
    this.metrics = metrics;
    this.maxBuffer = limits.maxBufferBytes;
    this.#heartbeat = limits.heartbeatInterval;
    this.sweepPeriod = Math.max(1, Math.floor(limits.heartbeatInterval / 2));
    this.#preamble = encoder.encode(`retry: ${limits.retry}\n`);
    this.#patternPreamble = encoder.encode(`retry: ${limits.retry}\nid: ${PATTERN_ID}\n`);
  }

  /**
   * Opens a response that follows `stream`: from its header, or from after `since`.
   *
   * @param stream The stream.
   * @param since Where the client is (its `Last-Event-ID`), if it resumes.
   * @param create With `false`, a stream that does not exist is not made anew: the response
   * is `event: end` alone (its id ends in `:end`, so `EventSource`'s reconnect gets 204).
   * @returns The `text/event-stream` response, once the hub has joined it.
   * @throws {Error} What the hub's `listen` throws (e.g. `EngineUnavailableError`).
   */
  async open(stream: string, since: Position | undefined, create = true): Promise<Response> {
    const conn = new SseConnection(this, this.#preamble);
    this.#conns.add(conn);
    this.metrics.opened("sse");
    if (this.#sweeper === undefined) {
      this.#sweeper = setInterval(() => this.#sweep(), this.sweepPeriod);
      Deno.unrefTimer(this.#sweeper);
    }
    if (since) conn.resuming(since.seq);
    let at: Position;
    try {
      at = await this.hub.listen(stream, conn, { ...(since ? { since } : {}), create });
    } catch (e) {
      conn.cut();
      if (e instanceof StreamNotFoundError) return this.#ended(since);
      throw e;
    }
    conn.resumed();
    // Nothing with an id went out (no header, nothing to replay): a `joined` block gives the
    // client its position, so that a reconnect resumes from it. Events pushed since the join
    // carry ids of their own (and later ones), so this is only ever at the join.
    conn.position(at);
    // The client may have gone while the hub joined it.
    if (conn.done) this.hub.endqueue(conn);
    return new Response(conn.body, {
      headers: {
        "content-type": "text/event-stream; charset=utf-8",
        "cache-control": "no-cache",
        "x-accel-buffering": "no",
      },
    });
  }

  /**
   * Opens a response that follows every stream `pattern` matches (`GET /sse?pattern=`): per
   * stream its header first (`data` is `{"stream","seq","epoch","message"}`, message `null`
   * when none is set), then its events; a stream created later is announced the same way;
   * `event: end` per stream that goes, and the response stays. Then, once every existing
   * stream is caught up, `event: joined` with `{"pattern","streams"}`. The first block carries
   * `id: pattern` (the same for every response), so `EventSource` sends it back as
   * `Last-Event-ID` when it reconnects: a reconnect joins anew, and as the client may have
   * missed events meanwhile, each stream of the catch-up comes with `event: reset` (reason
   * `not_resumable`) before its header; a stream the client held that is not announced before
   * `joined` is gone.
   *
   * @param pattern The pattern (checked by the caller).
   * @param rejoin Whether the client is reconnecting (it sent a `Last-Event-ID`).
   * @returns The `text/event-stream` response, once the hub has joined it.
   * @throws {Error} What the hub's `listen` throws.
   */
  async openPattern(pattern: string, rejoin: boolean = false): Promise<Response> {
    const conn = new SseConnection(this, this.#patternPreamble, true);
    if (rejoin) conn.rejoining();
    this.#conns.add(conn);
    this.metrics.opened("sse");
    if (this.#sweeper === undefined) {
      this.#sweeper = setInterval(() => this.#sweep(), this.sweepPeriod);
      Deno.unrefTimer(this.#sweeper);
    }
    let joined: { streams: number };
    try {
      joined = await this.hub.listen({ pattern }, conn);
    } catch (e) {
      conn.cut();
      throw e;
    }
    conn.joined(pattern, joined.streams);
    if (conn.done) this.hub.endqueue(conn);
    return new Response(conn.body, {
      headers: {
        "content-type": "text/event-stream; charset=utf-8",
        "cache-control": "no-cache",
        "x-accel-buffering": "no",
      },
    });
  }

  /**
   * The SSE text of an event for pattern responses (the stream's name in `data`, no `id`),
   * built once and shared by every such response.
   *
   * @param ev The hub's event.
   * @returns The event block's bytes.
   */
  patternFrame(ev: StreamEvent): Uint8Array {
    let bytes = this.#patternText.get(ev);
    if (!bytes) {
      let data = this.hub.codec.encode({
        stream: ev.stream,
        seq: ev.seq,
        epoch: ev.epoch,
        message: ev.message,
      });
      if (/[\r\n]/.test(data)) data = data.split(/\r\n|\r|\n/).join("\ndata: ");
      bytes = encoder.encode(`event: ${ev.kind}\ndata: ${data}\n\n`);
      this.#patternText.set(ev, bytes);
    }
    return bytes;
  }

  /**
   * The `event: reset` block a reconnected pattern response sends before a stream's header:
   * `data` is `{"stream","seq","epoch","message":{"reason":"not_resumable"}}` at the header's
   * position.
   *
   * @param ev The stream's join header.
   * @returns The block's bytes.
   */
  patternReset(ev: StreamEvent): Uint8Array {
    let data = this.hub.codec.encode({
      stream: ev.stream,
      seq: ev.seq,
      epoch: ev.epoch,
      message: { reason: "not_resumable" },
    });
    if (/[\r\n]/.test(data)) data = data.split(/\r\n|\r|\n/).join("\ndata: ");
    return encoder.encode(`event: reset\ndata: ${data}\n\n`);
  }

  /**
   * The answer to a listen with `create: false` of a stream that does not exist: `event: end`
   * at the client's position, then the end of the response.
   */
  #ended(since: Position | undefined): Response {
    const id = `${since ? `${since.epoch}:${since.seq}` : ""}:end`;
    const body = concat([this.#preamble, encoder.encode(`id: ${id}\nevent: end\ndata: null\n\n`)]);
    return new Response(body as Uint8Array<ArrayBuffer>, {
      headers: {
        "content-type": "text/event-stream; charset=utf-8",
        "cache-control": "no-cache",
      },
    });
  }

  /**
   * The answer to an SSE request that cannot be served for now (the engine or the store is
   * unreachable): an event stream of `retry:` and `event: close` with the code, then the end.
   * `EventSource` reconnects after `retry` milliseconds, as after any end; an error status
   * would make it give up for good.
   *
   * @param code The reason's code (`engine_unavailable`, `storage_unavailable`).
   * @param message The reason, for people.
   * @returns The response.
   */
  unavailable(code: string, message: string): Response {
    const body = concat([this.#preamble, closeFrame(code, message)]);
    return new Response(body as Uint8Array<ArrayBuffer>, {
      headers: {
        "content-type": "text/event-stream; charset=utf-8",
        "cache-control": "no-cache",
      },
    });
  }

  /**
   * The SSE text of an event, built once and shared by every response.
   *
   * @param ev The hub's event.
   * @returns The event block's bytes.
   */
  frame(ev: StreamEvent): Uint8Array {
    let bytes = this.#text.get(ev);
    if (!bytes) {
      let data = this.hub.codec.encode(ev.message);
      if (/[\r\n]/.test(data)) data = data.split(/\r\n|\r|\n/).join("\ndata: ");
      const id = `${ev.epoch}:${ev.seq}${ev.kind === "end" ? ":end" : ""}`;
      bytes = encoder.encode(`id: ${id}\nevent: ${ev.kind}\ndata: ${data}\n\n`);
      this.#text.set(ev, bytes);
    }
    return bytes;
  }

  /**
   * Notes that one more response queue holds `block`; its bytes go into the memory budget when
   * it is the first.
   *
   * @param block An event's block (shared) or a response's own bytes.
   */
  hold(block: Uint8Array): void {
    const n = this.#held.get(block);
    if (n === undefined) {
      this.#held.set(block, 1);
      this.hub.memory.outbound += block.byteLength;
    } else this.#held.set(block, n + 1);
  }

  /**
   * Notes that a response queue no longer holds `block` (sent or dropped); its bytes leave the
   * memory budget with the last.
   *
   * @param block The block.
   */
  release(block: Uint8Array): void {
    const n = this.#held.get(block) ?? 1;
    if (n <= 1) {
      this.#held.delete(block);
      this.hub.memory.outbound -= block.byteLength;
    } else this.#held.set(block, n - 1);
  }

  /**
   * Forgets a response that ended.
   *
   * @param c The response.
   */
  remove(c: SseConnection): void {
    if (!this.#conns.delete(c)) return;
    this.metrics.closed("sse");
    if (this.#conns.size === 0) {
      if (this.#sweeper !== undefined) clearInterval(this.#sweeper);
      this.#sweeper = undefined;
      this.#gone?.resolve();
    }
  }

  /**
   * Ends every response: `event: close` with code `shutdown` after what is queued.
   *
   * @returns When every response has ended (see {@linkcode SseDoor.cut} for those that do not).
   */
  end(): Promise<void> {
    const bye = closeFrame("shutdown", "Server shutting down");
    for (const c of [...this.#conns]) c.end(bye);
    if (this.#conns.size === 0) return Promise.resolve();
    this.#gone = Promise.withResolvers();
    return this.#gone.promise;
  }

  /** Cuts every response left at once, and stops the heartbeat. */
  cut(): void {
    for (const c of [...this.#conns]) c.cut();
    if (this.#sweeper !== undefined) clearInterval(this.#sweeper);
    this.#sweeper = undefined;
  }

  #sweep(): void {
    this.sweeps++;
    for (const c of this.#conns) {
      if (c.closingSweep >= 0) {
        // Closing since before the previous sweep and still not drained: the client is stuck.
        if (c.closingSweep < this.sweeps - 1) c.cut();
      } else if (!c.active) c.heartbeat();
      c.active = false;
    }
  }
}

/** One SSE response: a hub listener whose body is a bounded, pull-based byte stream. */
export class SseConnection implements Listener {
  /** The response's body. */
  readonly body: ReadableStream<Uint8Array>;
  /** Whether anything was sent since the last heartbeat sweep. */
  active: boolean = true;
  /** The sweep count when closing began (-1 while open). */
  closingSweep: number = -1;
  readonly #door: SseDoor;
  #controller: ReadableStreamDefaultController<Uint8Array> | undefined;
  #chunks: Uint8Array[] = [];
  #queued = 0;
  #waiting = false;
  #closing = false;
  #done = false;
  #resumeAt = -1;
  #heldHeader: StreamEvent | undefined;
  /** The `retry:` line, until it goes out with the first block. */
  #retry: Uint8Array | undefined;
  /** Whether a block with an id went out. */
  #sentId = false;
  /** Whether the response follows a pattern (see `SseDoor.openPattern`). */
  readonly #pattern: boolean;
  /** A reconnected pattern response until `joined`: the streams it has sent an event of. */
  #rejoin: Set<string> | undefined;

  /**
   * Creates a response; `preamble` (the `retry:` line) goes out with its first block.
   *
   * @param door The door's SSE side.
   * @param preamble The `retry:` line.
   */
  constructor(door: SseDoor, preamble: Uint8Array, pattern = false) {
    this.#door = door;
    this.#pattern = pattern;
    this.body = new ReadableStream<Uint8Array>({
      start: (controller) => {
        this.#controller = controller;
      },
      pull: () => this.#pull(),
      cancel: () => this.#cancelled(),
    }, { highWaterMark: 0 });
    this.#retry = preamble;
  }

  /** Whether the response has ended (finished, cut or cancelled by the client). */
  get done(): boolean {
    return this.#done;
  }

  /**
   * Takes a hub event: queues its SSE block (an `end` event ends the response).
   *
   * @param event The event.
   */
  put(event: StreamEvent): void {
    if (this.#closing) return;
    if (this.#pattern) {
      const rejoin = this.#rejoin;
      if (rejoin !== undefined && !rejoin.has(event.stream)) {
        // A reconnect's catch-up: the client may have missed this stream's events.
        rejoin.add(event.stream);
        if (event.kind === "header") this.#block(this.#door.patternReset(event));
      }
      return this.#block(this.#door.patternFrame(event));
    }
    if (this.#resumeAt >= 0) {
      // Header changes replayed at the resume position may include the one the client saw
      // last: send only the newest, so the client never goes back to a stale header.
      if (event.kind === "header" && event.seq === this.#resumeAt) {
        this.#heldHeader = event;
        return;
      }
      this.resumed();
    }
    this.#block(this.#door.frame(event));
    if (event.kind === "end") this.end();
  }

  /**
   * Sends an `event: joined` block with the join position, unless a block with an id went out
   * already.
   *
   * @param at The position at the join.
   */
  position(at: Position): void {
    if (this.#sentId || this.#closing) return;
    const data = JSON.stringify({ epoch: at.epoch, seq: at.seq });
    this.#block(encoder.encode(`id: ${at.epoch}:${at.seq}\nevent: joined\ndata: ${data}\n\n`));
  }

  /**
   * Sends the `event: joined` block of a pattern response.
   *
   * @param pattern The pattern.
   * @param streams How many existing streams it was caught up on.
   */
  joined(pattern: string, streams: number): void {
    this.#rejoin = undefined;
    if (this.#closing) return;
    const data = JSON.stringify({ pattern, streams });
    this.#block(encoder.encode(`event: joined\ndata: ${data}\n\n`));
  }

  /** Queues a block with an id; the first one carries the `retry:` line. */
  #block(bytes: Uint8Array): void {
    this.#sentId = true;
    const retry = this.#retry;
    if (retry) {
      this.#retry = undefined;
      bytes = concat([retry, bytes]);
    }
    this.#push(bytes);
  }

  /**
   * Marks a pattern response as a reconnect: until `joined`, each stream's header comes after
   * an `event: reset` (see `SseDoor.openPattern`).
   */
  rejoining(): void {
    this.#rejoin = new Set();
  }

  /**
   * Starts holding back header changes replayed at `seq` (see `put`).
   *
   * @param seq The resume position's seq.
   */
  resuming(seq: number): void {
    this.#resumeAt = seq;
  }

  /** Stops holding back; sends the newest header change held. */
  resumed(): void {
    this.#resumeAt = -1;
    const held = this.#heldHeader;
    this.#heldHeader = undefined;
    if (held && !this.#closing) this.#block(this.#door.frame(held));
  }

  /** Queues a comment heartbeat (`: hb`). */
  heartbeat(): void {
    if (!this.#closing) this.#push(HEARTBEAT);
  }

  /**
   * Stops listening; sends `frame` (if any) after what is queued, then ends the response.
   *
   * @param frame A last block (`event: close`).
   */
  end(frame?: Uint8Array): void {
    if (this.#closing) return;
    this.#closing = true;
    this.closingSweep = this.#door.sweeps;
    this.#door.hub.endqueue(this);
    if (frame) this.#push(frame);
    else if (this.#waiting) this.#finish();
  }

  /** Ends the response at once, dropping what is queued. */
  cut(): void {
    if (this.#done) return;
    this.#closing = true;
    this.#done = true;
    this.#dropQueue();
    this.#door.hub.endqueue(this);
    try {
      this.#controller?.error(new Error("SSE response cut"));
    } catch {
      // already closed
    }
    this.#door.remove(this);
  }

  #push(bytes: Uint8Array): void {
    this.active = true;
    if (this.#waiting) {
      this.#waiting = false;
      this.#emit(bytes);
      return;
    }
    this.#chunks.push(bytes);
    this.#queued += bytes.byteLength;
    const door = this.#door;
    door.hold(bytes);
    if (this.#closing) return;
    const memory = door.hub.memory;
    if (this.#queued > door.maxBuffer) {
      this.#slow(`More than ${door.maxBuffer} bytes waiting: closing response`);
    } else if (this.#queued > CONNECTION_SHARE && memory.spentBesides(0)) {
      // While the memory budget is spent, a response may hold only its share.
      this.#slow(
        `More than ${CONNECTION_SHARE} bytes waiting while the server's memory budget of ` +
          `${memory.max} bytes is spent: closing response`,
      );
    }
  }

  /** Drops what is queued, and takes it off the memory budget. */
  #dropQueue(): void {
    for (const chunk of this.#chunks) this.#door.release(chunk);
    this.#chunks = [];
    this.#queued = 0;
  }

  #emit(bytes: Uint8Array): void {
    this.#door.metrics.bytesOut += bytes.byteLength;
    this.#controller?.enqueue(bytes);
  }

  #pull(): void {
    if (this.#done) return;
    const chunks = this.#chunks;
    if (chunks.length > 0) {
      // At most SSE_PULL_BYTES per pull, so that what the runtime holds for a response stays
      // small however much waits here: a block goes on as it is (the bytes every response
      // shares), and only runs of blocks that fit together are joined.
      let n = 1;
      let size = (chunks[0] as Uint8Array).byteLength;
      while (n < chunks.length && size + (chunks[n] as Uint8Array).byteLength <= SSE_PULL_BYTES) {
        size += (chunks[n++] as Uint8Array).byteLength;
      }
      const taken = n === chunks.length ? chunks : chunks.splice(0, n);
      if (taken === chunks) this.#chunks = [];
      const buf = n === 1 ? taken[0] as Uint8Array : concat(taken);
      for (const chunk of taken) this.#door.release(chunk);
      this.#queued -= size;
      this.#emit(buf);
      return;
    }
    if (this.#closing) return this.#finish();
    this.#waiting = true;
  }

  #finish(): void {
    if (this.#done) return;
    this.#done = true;
    this.#waiting = false;
    try {
      this.#controller?.close();
    } catch {
      // already closed
    }
    this.#door.remove(this);
  }

  #cancelled(): void {
    this.#done = true;
    this.#closing = true;
    this.#dropQueue();
    this.#door.hub.endqueue(this);
    this.#door.remove(this);
  }

  #slow(message: string): void {
    this.#door.metrics.slowConsumer();
    // What was queued is dropped: the client resumes from the last event it got.
    this.#dropQueue();
    this.end(closeFrame("slow_consumer", message));
  }
}

/**
 * An `event: close` block: why the server ends a response (`shutdown`, `slow_consumer`).
 *
 * @param code The reason's code.
 * @param message The reason, for people.
 * @returns The block's bytes.
 */
export function closeFrame(code: string, message: string): Uint8Array {
  return encoder.encode(`event: close\ndata: ${JSON.stringify({ code, message })}\n\n`);
}
