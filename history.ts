/**
 * History for resuming listeners: each stream keeps its recent events' frames in a byte ring
 * ({@linkcode History}), bounded per stream (events and bytes), and all streams together are
 * bounded by one global byte budget that trims the oldest history of any stream first
 * ({@linkcode HistoryBudget}). The in-memory hub uses it; with an engine, history lives in
 * the engine.
 *
 * @example Bounded per stream
 * ```ts
 * import { type History, HistoryBudget } from "./history.ts";
 * import { buildEvent } from "./frame.ts";
 * import { defaultCodec } from "./codec.ts";
 * import { assertEquals } from "@std/assert";
 *
 * const budget = new HistoryBudget({ historyMessages: 2, historyBytes: 1 << 20, maxHistoryBytes: 1 << 20 }, () => {});
 * const s = { name: "s", epoch: "e", seq: 0, history: undefined as History | undefined, nextNo: 0, trimmedTo: 0 };
 * for (let seq = 1; seq <= 3; seq++) {
 *   s.seq = seq;
 *   budget.record(s, buildEvent(defaultCodec, "put", s, seq, seq, "e", "slab"));
 * }
 * assertEquals(s.history?.count, 2);
 * assertEquals(budget.uncovered(s, { epoch: "e", seq: 0 }), "history_trimmed");
 * assertEquals(budget.uncovered(s, { epoch: "e", seq: 1 }), undefined);
 * ```
 *
 * @module
 */

import type { Codec } from "./codec.ts";
import { frameMessage } from "./frame.ts";
import type { Position, ResetReason, StreamEvent } from "./types.ts";

/** History entry kinds. */
const PUT = 0;
const HEADER = 1;

/**
 * A stream's history: its frames back to back in one byte ring, and each entry's seq, kind,
 * offset and length in typed arrays. Keeping an event copies its frame's bytes in; once the ring
 * has grown to its working size nothing is allocated per put, and the garbage collector never
 * scans what history holds. The ring's capacity stays within about twice the bytes it keeps.
 */
export class History {
  #buf: Uint8Array;
  #tail = 0; // where the next frame goes
  #wrapAt = -1; // when the frames wrapped around: the end of those before offset 0
  /** Per entry slot k: seq at 4k, start at 4k+1, length at 4k+2, kind at 4k+3. */
  #meta = new Float64Array(4 * 2);
  #first = 0; // slot of the oldest entry
  /** Entries kept. */
  count = 0;
  /** Bytes of frames kept. */
  bytes = 0;
  /** The number of the oldest entry; a stream's entry numbers never repeat (see HistoryOwner.nextNo). */
  firstNo: number;

  /**
   * Creates an empty ring.
   *
   * @param firstNo The number the first entry gets.
   * @param firstFrameBytes The size of the first frame (the ring's first capacity).
   */
  constructor(firstNo: number, firstFrameBytes: number) {
    this.firstNo = firstNo;
    // A stream that keeps only its header needs no more than that header's room.
    this.#buf = new Uint8Array(Math.max(64, firstFrameBytes));
  }

  #slot(i: number): number {
    return ((this.#first + i) & ((this.#meta.length >> 2) - 1)) << 2;
  }

  /**
   * The seq of entry `i` (0 is the oldest).
   *
   * @param i The entry.
   * @returns Its seq.
   */
  seqAt(i: number): number {
    return this.#meta[this.#slot(i)] as number;
  }

  /**
   * Whether entry `i` is a header change (else a put).
   *
   * @param i The entry.
   * @returns Whether it is a header change.
   */
  isHeaderAt(i: number): boolean {
    return this.#meta[this.#slot(i) + 3] === HEADER;
  }

  /**
   * A view of entry `i`'s frame: valid until the next push.
   *
   * @param i The entry.
   * @returns The view.
   */
  frameAt(i: number): Uint8Array {
    const k = this.#slot(i);
    const start = this.#meta[k + 1] as number;
    return this.#buf.subarray(start, start + (this.#meta[k + 2] as number));
  }

  /**
   * Appends a copy of a frame.
   *
   * @param frame The frame.
   * @param seq Its seq.
   * @param header Whether it is a header change.
   */
  push(frame: Uint8Array, seq: number, header: boolean): void {
    const len = frame.byteLength;
    if (this.count === this.#meta.length >> 2) this.#growMeta();
    let at = this.#place(len);
    if (at < 0) {
      this.#relayout(Math.max(this.#buf.length, 2 * (this.bytes + len)));
      at = this.#place(len);
    }
    this.#buf.set(frame, at);
    this.#tail = at + len;
    const k = this.#slot(this.count);
    this.#meta[k] = seq;
    this.#meta[k + 1] = at;
    this.#meta[k + 2] = len;
    this.#meta[k + 3] = header ? HEADER : PUT;
    this.count++;
    this.bytes += len;
  }

  /** Drops the oldest entry. */
  shift(): void {
    const k = this.#first << 2;
    this.bytes -= this.#meta[k + 2] as number;
    this.#first = (this.#first + 1) & ((this.#meta.length >> 2) - 1);
    this.firstNo++;
    if (--this.count === 0) {
      this.#tail = 0;
      this.#wrapAt = -1;
    } else if (this.#wrapAt !== -1 && this.#meta[(this.#first << 2) + 1] === 0) {
      this.#wrapAt = -1; // the oldest frame is now the first after the wrap
    }
  }

  /** Where a frame of `len` bytes fits without overwriting a kept one, or -1. */
  #place(len: number): number {
    const cap = this.#buf.length;
    if (this.count === 0) return len <= cap ? 0 : -1;
    const head = this.#meta[(this.#first << 2) + 1] as number;
    if (this.#wrapAt === -1) {
      if (this.#tail + len <= cap) return this.#tail;
      if (len <= head) {
        this.#wrapAt = this.#tail;
        return 0;
      }
      return -1;
    }
    return this.#tail + len <= head ? this.#tail : -1;
  }

  /**
   * Copies the kept frames, oldest first, to the start of a buffer of `cap` bytes. They lie
   * back to back from the oldest's start to the end (to `#wrapAt`, then from 0 to `#tail` when
   * wrapped): one or two copies, then each entry's start moves by its part's offset.
   */
  #relayout(cap: number): void {
    const buf = new Uint8Array(cap);
    if (this.count > 0) {
      const head = this.#meta[(this.#first << 2) + 1] as number;
      const end = this.#wrapAt === -1 ? this.#tail : this.#wrapAt;
      buf.set(this.#buf.subarray(head, end), 0);
      const firstPart = end - head;
      if (this.#wrapAt !== -1) buf.set(this.#buf.subarray(0, this.#tail), firstPart);
      for (let i = 0; i < this.count; i++) {
        const k = this.#slot(i) + 1;
        const start = this.#meta[k] as number;
        // Before the wrap (at or after the oldest's start): moves down by head; after: up.
        this.#meta[k] = start >= head ? start - head : start + firstPart;
      }
    }
    this.#buf = buf;
    this.#tail = this.bytes;
    this.#wrapAt = -1;
  }

  /** Doubles the entry ring, the oldest entry first: one or two copies. */
  #growMeta(): void {
    const old = this.#meta;
    const meta = new Float64Array(old.length * 2);
    const from = this.#first << 2;
    const used = this.count << 2;
    const firstPart = Math.min(used, old.length - from);
    meta.set(old.subarray(from, from + firstPart), 0);
    if (firstPart < used) meta.set(old.subarray(0, used - firstPart), firstPart);
    this.#meta = meta;
    this.#first = 0;
  }
}

/** A stream as its history needs it: the hub's stream state implements this. */
export interface HistoryOwner {
  /** The stream's name. */
  readonly name: string;
  /** The stream's epoch. */
  epoch: string;
  /** The seq of the stream's last put. */
  seq: number;
  /** Its history, or `undefined` while it keeps none. */
  history: History | undefined;
  /** The number the next history entry gets; never reused, so stale global entries stay stale. */
  nextNo: number;
  /** Resuming from a seq below this is not covered by history. */
  trimmedTo: number;
}

/** The bounds of a {@linkcode HistoryBudget}. */
export interface HistoryLimits {
  /** Most events kept per stream (0 keeps none). */
  readonly historyMessages: number;
  /** Most bytes of frames kept per stream. */
  readonly historyBytes: number;
  /** Most bytes of frames kept over all streams. */
  readonly maxHistoryBytes: number;
}

/**
 * Every stream's history under one set of bounds: per stream, events and bytes; over all
 * streams, bytes, trimming the oldest entry of any stream first.
 */
export class HistoryBudget {
  readonly #limits: HistoryLimits;
  readonly #global = new GlobalHistory();
  readonly #onTrimmed: (owner: HistoryOwner) => void;
  /** Bytes of history over all streams. */
  bytes = 0;

  /**
   * Creates an empty budget.
   *
   * @param limits The bounds.
   * @param onTrimmed Called when the global bound took the oldest entry of a stream (which may
   * now hold nothing).
   */
  constructor(limits: HistoryLimits, onTrimmed: (owner: HistoryOwner) => void) {
    this.#limits = limits;
    this.#onTrimmed = onTrimmed;
  }

  /**
   * Keeps an event (a put or a header change) in its stream's history, then trims to the bounds.
   *
   * @param owner The stream.
   * @param ev The event; its frame's bytes are copied.
   */
  record(owner: HistoryOwner, ev: StreamEvent): void {
    const bytes = ev.frame.byteLength;
    const limits = this.#limits;
    const header = ev.kind === "header";
    // The hub's bound is what the rest of the memory budget leaves (a sum over the budget's
    // parts): read again only when a trim may have changed the rest (a stream left empty may
    // be forgotten, its pattern listeners told).
    let maxBytes = limits.maxHistoryBytes;
    if (limits.historyMessages === 0 || bytes > limits.historyBytes || bytes > maxBytes) {
      // Nothing of this size can be kept: history no longer covers what came before.
      this.drop(owner);
      owner.trimmedTo = header ? ev.seq + 1 : ev.seq;
      return;
    }
    const h = owner.history ??= new History(owner.nextNo, bytes);
    h.push(ev.frame, ev.seq, header);
    this.#global.push(owner, owner.nextNo++);
    this.bytes += bytes;
    while (h.count > limits.historyMessages || h.bytes > limits.historyBytes) {
      this.#trimOldest(owner);
      this.#global.dead++; // still in the global queue
    }
    while (this.bytes > maxBytes) {
      const oldest = this.#global.shift();
      if (oldest) {
        this.#trimOldest(oldest);
        this.#onTrimmed(oldest);
        if (!oldest.history || oldest.history.count === 0) maxBytes = limits.maxHistoryBytes;
      }
    }
    this.#global.compact();
  }

  /**
   * Trims history to at most `bytes` over all streams, the oldest entry of any stream first
   * (the memory budget makes room this way).
   *
   * @param bytes What history may keep.
   */
  trimTo(bytes: number): void {
    while (this.bytes > bytes && this.#global.count > 0) {
      const oldest = this.#global.shift();
      if (oldest) {
        this.#trimOldest(oldest);
        this.#onTrimmed(oldest);
      }
    }
    this.#global.compact();
  }

  /**
   * Drops all of a stream's history.
   *
   * @param owner The stream.
   */
  drop(owner: HistoryOwner): void {
    const h = owner.history;
    if (!h) return;
    while (h.count > 0) {
      this.#trimOldest(owner);
      this.#global.dead++;
    }
    owner.history = undefined;
  }

  /**
   * Why `since` cannot be served from the stream's history.
   *
   * @param owner The stream.
   * @param since The listener's position.
   * @returns The reason, or `undefined` when history covers it.
   */
  uncovered(owner: HistoryOwner, since: Position): ResetReason | undefined {
    if (since.epoch !== owner.epoch) return "epoch_changed";
    if (since.seq > owner.seq) return "ahead_of_stream";
    if (since.seq < owner.trimmedTo) return "history_trimmed";
    return undefined;
  }

  /**
   * Replays what a listener at `since` missed (history covers it: see
   * {@linkcode HistoryBudget.uncovered}): each put after it, and each header change since,
   * oldest first, as events made again from their frames.
   *
   * @param owner The stream.
   * @param since The listener's position.
   * @param codec The codec that encoded the frames.
   * @param deliver Takes each event; returning `false` stops the replay.
   * @returns `false` when `deliver` stopped it.
   */
  replay(
    owner: HistoryOwner,
    since: Position,
    codec: Codec,
    deliver: (ev: StreamEvent) => boolean,
  ): boolean {
    const h = owner.history;
    if (!h) return true;
    for (let i = 0; i < h.count; i++) {
      const seq = h.seqAt(i);
      const header = h.isHeaderAt(i);
      if (seq > since.seq || (header && seq === since.seq)) {
        const frame = h.frameAt(i).slice();
        const ev = {
          stream: owner.name,
          kind: header ? "header" : "put",
          message: frameMessage(codec, frame),
          seq,
          epoch: owner.epoch,
          frame,
        } as StreamEvent;
        if (!deliver(ev)) return false;
      }
    }
    return true;
  }

  /** Drops a stream's oldest history entry. */
  #trimOldest(owner: HistoryOwner): void {
    const h = owner.history;
    if (!h || h.count === 0) return;
    const seq = h.seqAt(0);
    const header = h.isHeaderAt(0);
    const before = h.bytes;
    h.shift();
    this.bytes -= before - h.bytes;
    owner.trimmedTo = Math.max(owner.trimmedTo, header ? seq + 1 : seq);
  }
}

/**
 * Every kept entry of every stream, oldest first, as (stream, entry number): what the global
 * history bound trims first. Entries a stream trimmed by itself stay here, dead, until they are
 * reached or compacted away.
 */
class GlobalHistory {
  #owners: (HistoryOwner | undefined)[] = new Array(1024);
  #nos = new Float64Array(1024);
  #head = 0;
  /** Entries held, dead ones included. */
  count = 0;
  /** Entries held that their stream no longer keeps. */
  dead = 0;

  push(owner: HistoryOwner, no: number): void {
    if (this.count === this.#nos.length) this.#resize(this.#nos.length * 2, () => true);
    const k = (this.#head + this.count) & (this.#nos.length - 1);
    this.#owners[k] = owner;
    this.#nos[k] = no;
    this.count++;
  }

  /** Takes the oldest entry; returns its stream when the stream still keeps it, else undefined. */
  shift(): HistoryOwner | undefined {
    const k = this.#head;
    const owner = this.#owners[k] as HistoryOwner;
    const no = this.#nos[k] as number;
    this.#owners[k] = undefined;
    this.#head = (k + 1) & (this.#nos.length - 1);
    this.count--;
    if (isKept(owner, no)) return owner;
    this.dead--;
    return undefined;
  }

  /** Drops the dead entries once they are the majority. */
  compact(): void {
    if (this.dead > 4096 && this.dead * 2 > this.count) {
      let size = 1024;
      while (size < (this.count - this.dead) * 2) size *= 2;
      this.#resize(size, (owner, no) => isKept(owner, no));
      this.dead = 0;
    }
  }

  #resize(size: number, keep: (owner: HistoryOwner, no: number) => boolean): void {
    const owners: (HistoryOwner | undefined)[] = new Array(size);
    const nos = new Float64Array(size);
    let n = 0;
    const mask = this.#nos.length - 1;
    for (let i = 0; i < this.count; i++) {
      const k = (this.#head + i) & mask;
      const owner = this.#owners[k] as HistoryOwner;
      const no = this.#nos[k] as number;
      if (keep(owner, no)) {
        owners[n] = owner;
        nos[n++] = no;
      }
    }
    this.#owners = owners;
    this.#nos = nos;
    this.#head = 0;
    this.count = n;
  }
}

/** Whether entry `no` of `owner` is still in its history. */
function isKept(owner: HistoryOwner, no: number): boolean {
  const h = owner.history;
  return h !== undefined && no >= h.firstNo && no < h.firstNo + h.count;
}
