/**
 * The durable hub core (not an entry point): the memory core written through to the store behind
 * `--data PATH`, and the stored shapes and error the store and the core share. Made by
 * `DurableStore.core` in `store.ts`, which re-exports the public names.
 *
 * @module
 */

import type { Codec } from "./codec.ts";
import { MemoryCore, type MemoryStream, type StreamState } from "./core.ts";
import type { HistoryLimits, HistoryOwner } from "./history.ts";
import type { Detachable, Listener, Position, ResetReason, StreamEvent } from "./types.ts";

/** One history entry as stored. */
export interface StoredEntry {
  /** The entry's number in its stream's history; consecutive, never reused. */
  readonly no: number;
  /** The put's seq, or the seq a header change follows. */
  readonly seq: number;
  /** Whether the entry is a header change. */
  readonly header: boolean;
  /** The event frame's bytes, as sent to listeners. */
  readonly frame: Uint8Array;
}

/** A range of seqs `(after, upTo]` a crash may have lost after they were shown. */
export type LostRange = readonly [after: number, upTo: number];

/** One stream as stored. */
export interface StoredStream {
  /** The stream's name. */
  readonly name: string;
  /** The stream's epoch. */
  readonly epoch: string;
  /** The stream's seq (raised past any seq a crash may have lost; see `lost`). */
  readonly seq: number;
  /** The header as codec text, or `undefined` when none is set. */
  readonly header: string | undefined;
  /** Resuming from a seq below this is not covered by history. */
  readonly trimmedTo: number;
  /** Seq ranges that were lost in crashes: resuming from inside one needs a reset. */
  readonly lost: readonly LostRange[];
  /** The history, oldest first, with consecutive entry numbers. */
  readonly history: readonly StoredEntry[];
}

/**
 * Thrown (and sent on the wire as code `storage_unavailable`) when the store cannot write: the
 * disk is full, an I/O error, or the file cannot be opened. What was stored before is intact;
 * writes work again once a commit succeeds (the store retries every interval).
 */
export class StorageUnavailableError extends Error {
  /** The wire code. */
  readonly code = "storage_unavailable";
  /**
   * Creates the error.
   *
   * @param message What failed.
   * @param options Standard error options (`cause`: SQLite's error).
   */
  constructor(message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = "StorageUnavailableError";
  }
}

/**
 * What the durable core uses of its store: a `DurableStore` (declared here rather than imported,
 * since store.ts imports this module).
 */
export interface CoreStore {
  /** The file's path. */
  readonly path: string;
  /** The fsync policy. */
  readonly fsync: string;
  /** Whether writes are taken. */
  readonly available: boolean;
  /** The last commit's error, while the store is unavailable. */
  readonly error: StorageUnavailableError | undefined;
  /** Reads every stream back: each stream, then every history entry. */
  loadEach(
    onStream: (stream: StoredStream) => void,
    onEntry: (name: string, entry: StoredEntry) => void,
  ): void;
  /** Sets a stream's position, header and lost ranges. */
  setStream(
    name: string,
    epoch: string,
    seq: number,
    header: string | undefined,
    trimmedTo: number,
    lost?: readonly LostRange[],
  ): void;
  /** Adds a history entry. */
  append(name: string, no: number, seq: number, header: boolean, frame: Uint8Array): void;
  /** Drops a stream's history entries numbered below `firstNo`. */
  trim(name: string, firstNo: number): void;
  /** Deletes a stream. */
  delete(name: string): void;
  /** Resolves when every write made so far is committed. */
  durable(): Promise<void>;
  /** Commits what waits and closes the file. */
  close(): void;
}

/** A stream of the durable core: the memory stream plus what the store knows of it. */
interface DurableState extends HistoryOwner, StreamState {
  /** History entries below this number were handed to the store already. */
  storedNo?: number | undefined;
  /** The header as codec text, made once per header change. */
  headerText?: string | undefined;
  /** Seq ranges lost in crashes: a resume from inside one gets a reset. */
  lost?: readonly LostRange[];
}

/**
 * The memory core, written through to a `DurableStore`: every change to a stream's
 * epoch, seq, header or history is queued in the store (which commits it by its policy), and the
 * streams the store holds are restored at construction. Under `always`, `put`, `header` and
 * `delete` resolve once their commit is durable. Made by `DurableStore.core`.
 */
export class DurableCore extends MemoryCore {
  readonly #store: CoreStore;
  readonly #always: boolean;
  #restoring = false;

  constructor(
    store: CoreStore,
    codec: Codec,
    maxName: number,
    source: Detachable,
    limits: HistoryLimits,
  ) {
    super(codec, maxName, source, limits);
    this.#store = store;
    this.#always = store.fsync === "always";
    this.#restoring = true;
    try {
      this.#restore();
    } finally {
      this.#restoring = false;
    }
  }

  /**
   * Restores every stream from the store, one row at a time: the streams first (header, lost
   * ranges), then their history in put order, as it was recorded (so the global bound trims the
   * oldest first, as before the restart), then each stream's position.
   */
  #restore(): void {
    const restored = new Map<string, { state: DurableState; stored: StoredStream }>();
    this.#store.loadEach((stored) => {
      const state = this.create(stored.name, stored.epoch) as DurableState;
      state.nextNo = -1;
      // The header first: a stream with one is never forgotten while its history loads.
      state.header = stored.header === undefined ? undefined : this.codec.decode(stored.header);
      state.headerText = stored.header;
      state.lost = stored.lost;
      restored.set(stored.name, { state, stored });
    }, (name, e) => {
      const state = restored.get(name)!.state;
      if (state.nextNo < 0) state.nextNo = e.no;
      state.seq = e.seq;
      this.budget.record(state, {
        stream: name,
        kind: e.header ? "header" : "put",
        message: null,
        seq: e.seq,
        epoch: state.epoch,
        frame: e.frame,
      } as StreamEvent);
    });
    for (const { state, stored } of restored.values()) {
      if (state.nextNo < 0) state.nextNo = 0;
      state.seq = stored.seq;
      state.trimmedTo = Math.max(state.trimmedTo, stored.trimmedTo);
      state.storedNo = state.nextNo;
      this.collect(state);
      // A stream that holds nothing is forgotten, as in memory: its next use is a new epoch.
      // (On a store that starts unavailable the row stays; the next start forgets it again.)
      if (this.streams.get(stored.name) !== state && this.#store.available) {
        this.#store.delete(stored.name);
      }
    }
  }

  override header(stream: string, message: unknown): Promise<void> {
    const done = super.header(stream, message);
    return this.#always ? done.then(() => this.#store.durable()) : done;
  }

  override put(stream: string, message: unknown): Promise<Position> {
    const done = super.put(stream, message);
    return this.#always ? done.then((at) => this.#store.durable().then(() => at)) : done;
  }

  override delete(stream: string): Promise<void> {
    const done = super.delete(stream);
    return this.#always ? done.then(() => this.#store.durable()) : done;
  }

  override close(): Promise<void> {
    try {
      this.#store.close();
      return Promise.resolve();
    } catch (e) {
      return Promise.reject(e);
    }
  }

  override setHeader(stream: string, message: unknown): void {
    this.#available();
    const state = this.streams.get(stream) as DurableState | undefined;
    if (state) state.headerText = undefined;
    super.setHeader(stream, message);
  }

  override putNow(stream: string, message: unknown, json?: string): Position {
    this.#available();
    return super.putNow(stream, message, json);
  }

  override deleteNow(stream: string): void {
    this.#available();
    const had = this.streams.has(stream);
    super.deleteNow(stream);
    if (had) this.#store.delete(stream);
  }

  override listenNow(stream: string, queue: Listener, since?: Position): Position {
    const state = this.streams.get(stream);
    const boundary = state !== undefined && !state.listeners.has(queue) &&
      this.#atBoundary(state, since);
    const position = super.listenNow(stream, queue, since);
    if (boundary && state.listeners.has(queue) && this.streams.get(stream) === state) {
      this.deliver(queue, this.event(state, "header", state.header ?? null));
    }
    return position;
  }

  /** A pattern listener resuming on one stream: the same rules as {@linkcode listenNow}. */
  protected override catchUp(
    state: MemoryStream,
    queue: Listener,
    since: Position | undefined,
  ): boolean {
    const boundary = this.#atBoundary(state, since);
    const ok = super.catchUp(state, queue, since);
    return ok && boundary
      ? this.deliver(queue, this.event(state, "header", state.header ?? null))
      : ok;
  }

  /**
   * Seqs after a crash's durable seq and below the seq it jumped to may have been shown and
   * lost: a listener there is ahead of what survived. The jumped-to seq itself is the stream's
   * position after the restart, never a put's: a listener there is not ahead.
   */
  protected override resetReason(state: MemoryStream, since: Position): ResetReason | undefined {
    const lost = (state as DurableState).lost;
    if (
      lost && since.epoch === state.epoch &&
      lost.some(([after, upTo]) => since.seq > after && since.seq < upTo)
    ) return "ahead_of_stream";
    return super.resetReason(state, since);
  }

  /**
   * Whether a listener resumes from exactly a crash's durable seq, where history serves it: it
   * may have seen a header change that the crash lost (a header change keeps the seq), so it is
   * told the header that survived.
   */
  #atBoundary(state: MemoryStream, since: Position | undefined): boolean {
    const lost = (state as DurableState).lost;
    return since !== undefined && lost !== undefined && since.epoch === state.epoch &&
      lost.some(([after]) => since.seq === after) && this.resetReason(state, since) === undefined;
  }

  /** After any change to a stream (and when the global bound trimmed it): write it through. */
  protected override collect(state: StreamState & HistoryOwner): void {
    super.collect(state);
    const s = state as DurableState;
    const store = this.#store;
    if (this.#restoring || !store.available) return; // nothing changes in memory while the store refuses writes
    if (this.streams.get(s.name) !== s) {
      if (s.storedNo !== undefined) store.delete(s.name);
      s.storedNo = undefined;
      return;
    }
    const h = s.history;
    const stored = s.storedNo ?? 0;
    if (h && s.nextNo > stored) {
      for (let no = Math.max(stored, h.firstNo); no < s.nextNo; no++) {
        const i = no - h.firstNo;
        store.append(s.name, no, h.seqAt(i), h.isHeaderAt(i), h.frameAt(i).slice());
      }
    }
    s.storedNo = s.nextNo;
    store.trim(s.name, h ? h.firstNo : s.nextNo);
    if (s.header !== undefined && s.headerText === undefined) {
      s.headerText = this.codec.encode(s.header);
    }
    store.setStream(s.name, s.epoch, s.seq, s.headerText, s.trimmedTo, s.lost);
  }

  /** Refuses a write the store would not keep: while it is unavailable, and once it is closed. */
  #available(): void {
    const error = this.#store.error;
    if (error) {
      throw new StorageUnavailableError(`Storage unavailable: ${error.message}`, { cause: error });
    }
    if (!this.#store.available) {
      throw new StorageUnavailableError(`Store "${this.#store.path}" is closed`);
    }
  }
}
