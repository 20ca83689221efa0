/**
 * The durable store behind `--data PATH`: each stream's epoch, seq, header and bounded history
 * in one SQLite file (`node:sqlite`, WAL mode), written by group commit.
 *
 * The hub writes through to the store as it changes a stream ({@linkcode DurableStore.setStream},
 * {@linkcode DurableStore.append}, {@linkcode DurableStore.trim}, {@linkcode DurableStore.delete});
 * the writes wait in memory and go to disk as one transaction per tick (`always`) or per
 * interval (`batch`, `never`). History entries are numbered per stream; a trim drops the entries
 * below a number, in the same transaction as the appends, so the file holds what the hub's
 * history holds, within the same bounds. {@linkcode DurableStore.load} reads every stream back
 * in one pass.
 *
 * See docs/durability.md for the policies, what each risks on a crash, and the measurements.
 *
 * @example Write, close, open again
 * ```ts
 * import { DurableStore } from "@x/msgstream/store";
 * import { assertEquals } from "@std/assert";
 *
 * const dir = await Deno.makeTempDir();
 * const path = `${dir}/msgstream.db`;
 * const frame = new TextEncoder().encode('{"action":"put","stream":"job","message":1}\n');
 * const store = DurableStore.open(path, { fsync: "always" });
 * store.load();
 * store.setStream("job", "e1", 1, '"running"', 0);
 * store.append("job", 0, 1, false, frame);
 * await store.durable();
 * store.close();
 *
 * const again = DurableStore.open(path);
 * const [job] = again.load();
 * assertEquals([job?.name, job?.epoch, job?.seq, job?.header], ["job", "e1", 1, '"running"']);
 * assertEquals(job?.history.map((e) => e.seq), [1]);
 * again.close();
 * await Deno.remove(dir, { recursive: true });
 * ```
 *
 * @module
 */

import { DatabaseSync, type StatementSync } from "node:sqlite";
import type { Codec } from "./codec.ts";
import type { MemoryCore } from "./core.ts";
import {
  DurableCore,
  type LostRange,
  StorageUnavailableError,
  type StoredEntry,
  type StoredStream,
} from "./durable.ts";
import type { HistoryLimits } from "./history.ts";
import type { Detachable } from "./types.ts";

export { type LostRange, StorageUnavailableError, type StoredEntry, type StoredStream };

/**
 * When a write is durable, like Redis' `appendfsync`:
 * - `always`: one transaction per tick, fsynced (`synchronous=FULL`) before it counts as done;
 * - `batch`: one transaction per interval, fsynced; a crash loses at most that interval;
 * - `never`: one transaction per interval, not fsynced (`synchronous=OFF`): the OS decides.
 */
export type FsyncPolicy = "always" | "batch" | "never";

/** The fsync policies, for option parsing. */
export const FSYNC_POLICIES: readonly FsyncPolicy[] = ["always", "batch", "never"];

/** Options for {@linkcode DurableStore.open}. */
export interface DurableStoreOptions {
  /**
   * When a write is durable; see {@linkcode FsyncPolicy}.
   *
   * @default {"batch"}
   */
  fsync?: FsyncPolicy;
  /**
   * Milliseconds between commits under `batch` and `never`: what a crash may lose.
   *
   * @default {50}
   */
  intervalMs?: number;
  /**
   * Most writes waiting for a commit; one more commits at once, whatever the policy. It also
   * bounds how many seqs of a stream a crash can lose (see {@linkcode DurableStore.load}).
   *
   * @default {10000}
   */
  maxPendingWrites?: number;
  /**
   * Milliseconds without writes after which the write-ahead log is checkpointed and truncated
   * and free pages are handed back to the file system.
   *
   * @default {1000}
   */
  idleMs?: number;
}

interface PendingStream {
  deleted: boolean;
  meta:
    | [epoch: string, seq: number, header: string | null, trimmedTo: number, lost: string]
    | undefined;
  /** Entries below this number go. */
  trimBelow: number;
  appends: { id: number; entry: StoredEntry }[];
}

/** The row ids of a stream's kept entries, oldest first (entry `firstNo` at `ids[head]`). */
interface Rows {
  firstNo: number;
  ids: number[];
  head: number;
}

interface Waiter {
  resolve: () => void;
  reject: (e: Error) => void;
}

/** The file's layout version (`PRAGMA user_version`); a file from a newer one is refused. */
const SCHEMA_VERSION = 1;
/** The tables the store owns: a file with other tables is not the store's. */
const OUR_TABLES = ["meta", "streams", "history"];

function positive(name: string, value: number | undefined, fallback: number, min = 1): number {
  const v = value ?? fallback;
  if (!Number.isSafeInteger(v) || v < min) {
    throw new RangeError(`Option "${name}" must be an integer of at least ${min}, got ${v}`);
  }
  return v;
}

/**
 * A SQLite file that keeps every stream's epoch, seq, header and history, written by group
 * commit. Not safe for two processes at once: one server owns one file.
 */
export class DurableStore {
  /** The file's path. */
  readonly path: string;
  /** The fsync policy. */
  readonly fsync: FsyncPolicy;
  /** Milliseconds between commits under `batch` and `never`. */
  readonly intervalMs: number;
  /** Most writes waiting for a commit. */
  readonly maxPendingWrites: number;
  /** Whether the previous run stopped without {@linkcode close} (set by {@linkcode load}). */
  unclean = false;
  /** Commits done since open. */
  commits = 0;
  /** Hook called after each commit attempt, with the error when it failed. */
  onCommit: ((error: StorageUnavailableError | undefined) => void) | undefined = undefined;

  readonly #db: DatabaseSync;
  readonly #idleMs: number;
  #pending = new Map<string, PendingStream>();
  /** How far every stream's seq jumps in the next commit (after an unclean stop), or 0. */
  #jump = 0;
  /** Lost ranges to write after the jump in the next commit: [ranges, name]. */
  #pendingLost: [string, string][] = [];
  /** Meta rows to write in the next commit. */
  #pendingMeta = new Map<string, string>();
  /** Committed rows to delete at the next commit. */
  #deleteIds: number[] = [];
  /** Every stream's kept rows: history rows lie in put order, so a commit writes the tail. */
  #rows = new Map<string, Rows>();
  #nextId = 1;
  /** Rows from this id on are not committed yet. */
  #firstPendingId = 1;
  #pendingWrites = 0;
  #waiters: Waiter[] = [];
  #timer: ReturnType<typeof setTimeout> | undefined;
  #idleTimer: ReturnType<typeof setTimeout> | undefined;
  #dirtySinceIdle = false;
  #error: StorageUnavailableError | undefined;
  #closed = false;
  #loaded = false;
  #st: {
    upsert: StatementSync;
    delStream: StatementSync;
    delRow: StatementSync;
    insert: StatementSync;
    jump: StatementSync;
    setLost: StatementSync;
    setMeta: StatementSync;
  };

  private constructor(path: string, db: DatabaseSync, options: DurableStoreOptions) {
    this.path = path;
    this.#db = db;
    this.fsync = options.fsync ?? "batch";
    if (!FSYNC_POLICIES.includes(this.fsync)) {
      throw new TypeError(`Option "fsync" must be always, batch or never, got "${this.fsync}"`);
    }
    this.intervalMs = positive("intervalMs", options.intervalMs, 50);
    this.maxPendingWrites = positive("maxPendingWrites", options.maxPendingWrites, 10000);
    this.#idleMs = positive("idleMs", options.idleMs, 1000);
    db.exec(`PRAGMA synchronous=${this.fsync === "never" ? "OFF" : "FULL"}`);
    this.#st = {
      upsert: db.prepare(
        "INSERT INTO streams(name, epoch, seq, header, trimmed_to, lost) VALUES (?, ?, ?, ?, ?, ?) " +
          "ON CONFLICT(name) DO UPDATE SET epoch = excluded.epoch, seq = excluded.seq, " +
          "header = excluded.header, trimmed_to = excluded.trimmed_to, lost = excluded.lost",
      ),
      delStream: db.prepare("DELETE FROM streams WHERE name = ?"),
      delRow: db.prepare("DELETE FROM history WHERE id = ?"),
      insert: db.prepare(
        "INSERT OR REPLACE INTO history(id, name, no, seq, kind, frame) VALUES (?, ?, ?, ?, ?, ?)",
      ),
      jump: db.prepare(
        "UPDATE streams SET seq = seq + ?1, lost = CASE " +
          "WHEN lost = '' THEN json_array(json_array(seq, seq + ?1)) " +
          "ELSE json_insert(lost, '$[#]', json_array(seq, seq + ?1)) END",
      ),
      setLost: db.prepare("UPDATE streams SET lost = ? WHERE name = ?"),
      setMeta: db.prepare(
        "INSERT INTO meta(key, value) VALUES (?, ?) " +
          "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
      ),
    };
  }

  /**
   * Opens (or creates) the file and its tables. Call {@linkcode load} next, once.
   *
   * @param path The file's path; SQLite adds `PATH-wal` and `PATH-shm` beside it.
   * @param options Policy and bounds.
   * @returns The store.
   * @throws {StorageUnavailableError} When the file cannot be opened or created.
   * @throws {TypeError} When `fsync` is not a policy.
   * @throws {RangeError} When a bound is not a positive integer.
   */
  static open(path: string, options: DurableStoreOptions = {}): DurableStore {
    let db: DatabaseSync;
    try {
      db = new DatabaseSync(path);
    } catch (e) {
      throw new StorageUnavailableError(`Cannot open "${path}": ${(e as Error).message}`, {
        cause: e,
      });
    }
    try {
      // One server owns one file: the first read takes an exclusive lock, held until close,
      // so a second process fails here instead of writing the same rows (the write-ahead
      // log's index then lives in this process's memory: no PATH-shm file).
      db.exec("PRAGMA locking_mode=EXCLUSIVE");
      const version = db.prepare("PRAGMA user_version").get()?.user_version as number;
      const tables = db.prepare("SELECT name FROM sqlite_schema WHERE type = 'table'").all()
        .map((r) => r.name as string);
      if (version > SCHEMA_VERSION) {
        throw new StorageUnavailableError(
          `Cannot open "${path}": it was written by a newer msgstream (schema ${version}); this one reads schema ${SCHEMA_VERSION}`,
        );
      }
      const foreign = tables.filter((t) => !OUR_TABLES.includes(t));
      if (version !== SCHEMA_VERSION && foreign.length > 0) {
        throw new StorageUnavailableError(
          `Cannot open "${path}": not a msgstream file (it has the tables ${
            foreign.map((t) => `"${t}"`).join(", ")
          })`,
        );
      }
      // auto_vacuum must be chosen before the first table exists; on an existing file the
      // pragma would write (and fail on a full disk).
      if (tables.length === 0) db.exec("PRAGMA auto_vacuum=INCREMENTAL");
      db.exec("PRAGMA journal_mode=WAL");
      if (version !== SCHEMA_VERSION || tables.length < OUR_TABLES.length) {
        db.exec(`
          BEGIN;
          CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
          CREATE TABLE IF NOT EXISTS streams(${STREAMS_COLUMNS});
          CREATE TABLE IF NOT EXISTS history(
            id INTEGER PRIMARY KEY, name TEXT NOT NULL, no INTEGER NOT NULL, seq INTEGER NOT NULL,
            kind INTEGER NOT NULL, frame BLOB NOT NULL
          );
          PRAGMA user_version=${SCHEMA_VERSION};
          COMMIT;
        `);
      }
      migrateStreams(db);
      return new DurableStore(path, db, options);
    } catch (e) {
      try {
        if (db.isTransaction) db.exec("ROLLBACK");
      } catch {
        // Rolled back by SQLite already.
      }
      db.close();
      if (
        e instanceof TypeError || e instanceof RangeError || e instanceof StorageUnavailableError
      ) throw e;
      const message = (e as Error).message;
      throw new StorageUnavailableError(
        /locked|busy/i.test(message)
          ? `Cannot open "${path}": another process has it open (one server owns one file)`
          : `Cannot open "${path}": ${message}`,
        { cause: e },
      );
    }
  }

  /**
   * Reads every stream back, in one pass, and marks the file as in use until {@linkcode close}.
   *
   * When the previous run did not close cleanly, its last writes may be lost although listeners
   * saw them (under `always` too: a put reaches listeners before its commit; only its ack waits). So that no seq is ever used twice for different
   * messages, each stream's seq then jumps past every seq the crash could have lost (the
   * previous run's `maxPendingWrites` + 1), and that range is recorded in `lost`: a client
   * resuming from inside it gets a reset (`ahead_of_stream`), one resuming from below it
   * continues exactly.
   *
   * @returns Every stream, in name order.
   * @throws {StorageUnavailableError} When the file cannot be read or marked.
   */
  load(): StoredStream[] {
    const out: StoredStream[] = [];
    const byName = new Map<string, StoredEntry[]>();
    this.loadEach((s) => {
      const history: StoredEntry[] = [];
      byName.set(s.name, history);
      out.push({ ...s, history });
    }, (name, entry) => byName.get(name)!.push(entry));
    return out;
  }

  /**
   * Reads every stream back like {@linkcode load}, without holding them all at once: each
   * stream (with an empty `history`) is handed to `onStream` first, in name order, then every
   * history entry to `onEntry`, in put order over all streams (the order the global history
   * bound trims in). History rows of a stream the file does not hold are dropped.
   *
   * @param onStream Takes each stream, its `history` empty.
   * @param onEntry Takes each history entry and its stream's name, after every stream.
   * @throws {StorageUnavailableError} When the file cannot be read (or a callback throws).
   * @throws {TypeError} When the store was loaded already.
   */
  loadEach(
    onStream: (stream: StoredStream) => void,
    onEntry: (name: string, entry: StoredEntry) => void,
  ): void {
    if (this.#loaded) throw new TypeError("The store was loaded already");
    this.#loaded = true;
    let jump = 0;
    /** Streams whose lost ranges the jump took past the bound: [ranges, name]. */
    const capped: [string, string][] = [];
    try {
      const meta = new Map<string, string>();
      for (const r of this.#db.prepare("SELECT key, value FROM meta").iterate()) {
        meta.set(r.key as string, r.value as string);
      }
      this.unclean = meta.get("clean") === "0";
      // Listeners see a put before its commit under every policy, so any unclean stop jumps.
      jump = this.unclean ? Number(meta.get("max_pending") ?? "0") + 1 : 0;
      const known = new Set<string>();
      const streams = this.#db.prepare(
        `SELECT name, ${RAW_NAME}, epoch, seq, header, trimmed_to, lost FROM streams ORDER BY name`,
      ).iterate();
      for (const r of streams) {
        const name = nameOf(r);
        let seq = r.seq as number;
        const trimmedTo = r.trimmed_to as number;
        let lost = parseLost(r.lost as string);
        if (jump > 0) {
          lost = [...lost, [seq, seq + jump]];
          seq += jump;
          if (lost.length > MAX_LOST_RANGES) {
            lost = capLost(lost.filter(([, upTo]) => upTo >= trimmedTo));
            capped.push([JSON.stringify(lost), name]);
          }
        }
        known.add(name);
        onStream({
          name,
          epoch: r.epoch as string,
          seq,
          header: (r.header as string | null) ?? undefined,
          trimmedTo,
          lost: lost.filter(([, upTo]) => upTo >= trimmedTo),
          history: [],
        });
      }
      const rows = this.#db.prepare(
        `SELECT id, name, ${RAW_NAME}, no, seq, kind, frame FROM history ORDER BY id`,
      ).iterate();
      for (const r of rows) {
        const name = nameOf(r);
        const id = r.id as number;
        if (id >= this.#nextId) this.#nextId = id + 1;
        if (!known.has(name)) {
          // Not the history of a stream the file holds: the next commit drops it.
          this.#deleteIds.push(id);
          continue;
        }
        let kept = this.#rows.get(name);
        if (!kept) this.#rows.set(name, kept = { firstNo: r.no as number, ids: [], head: 0 });
        kept.ids.push(id);
        onEntry(name, {
          no: r.no as number,
          seq: r.seq as number,
          header: r.kind === 1,
          frame: r.frame as Uint8Array,
        });
      }
    } catch (e) {
      throw e instanceof StorageUnavailableError ? e : this.#fail(e, "read");
    }
    this.#firstPendingId = this.#nextId;
    // The jump and the in-use mark, in one transaction. On a full disk it fails: the store
    // starts unavailable (what was read is served; writes are refused) and retries them.
    const marks: [string, string][] = [
      ["clean", "0"],
      ["fsync", this.fsync],
      ["max_pending", String(this.maxPendingWrites)],
    ];
    try {
      this.#db.exec("BEGIN");
      if (jump > 0) this.#st.jump.run(jump);
      for (const [lost, name] of capped) this.#st.setLost.run(lost, name);
      for (const [key, value] of marks) this.#st.setMeta.run(key, value);
      this.#db.exec("COMMIT");
    } catch (e) {
      try {
        if (this.#db.isTransaction) this.#db.exec("ROLLBACK");
      } catch {
        // Rolled back by SQLite already.
      }
      this.#jump = jump;
      this.#pendingLost = capped;
      for (const [key, value] of marks) this.#pendingMeta.set(key, value);
      this.#pendingWrites++;
      this.#error = this.#fail(e, "write");
      this.#schedule(this.intervalMs);
      this.onCommit?.(this.#error);
    }
  }

  /** Whether writes are accepted: false after a failed commit, until a retry succeeds. */
  get available(): boolean {
    return this.#error === undefined && !this.#closed;
  }

  /** The error of the last failed commit, while the store is unavailable. */
  get error(): StorageUnavailableError | undefined {
    return this.#error;
  }

  /** Writes waiting for a commit. */
  get pendingWrites(): number {
    return this.#pendingWrites;
  }

  /**
   * Records a stream's position, header and resume bound (replacing what was recorded).
   *
   * @param name The stream's name.
   * @param epoch Its epoch.
   * @param seq Its seq.
   * @param header The header as codec text, or `undefined` when none is set.
   * @param trimmedTo Resuming from a seq below this is not covered by history.
   * @param lost Seq ranges lost in crashes (from {@linkcode load}).
   * @throws {StorageUnavailableError} When the store is unavailable or closed.
   */
  setStream(
    name: string,
    epoch: string,
    seq: number,
    header: string | undefined,
    trimmedTo: number,
    lost: readonly LostRange[] = [],
  ): void {
    const p = this.#entry(name);
    const kept = lost.filter(([, upTo]) => upTo >= trimmedTo);
    p.meta = [epoch, seq, header ?? null, trimmedTo, kept.length ? JSON.stringify(kept) : ""];
    this.#wrote();
  }

  /**
   * Adds a history entry.
   *
   * @param name The stream's name.
   * @param no The entry's number (one more than the last one appended to the stream).
   * @param seq The put's seq, or the seq a header change follows.
   * @param header Whether the entry is a header change.
   * @param frame The event frame's bytes; kept by reference until the commit, not copied.
   * @throws {StorageUnavailableError} When the store is unavailable or closed.
   */
  append(name: string, no: number, seq: number, header: boolean, frame: Uint8Array): void {
    const id = this.#nextId++;
    this.#entry(name).appends.push({ id, entry: { no, seq, header, frame } });
    let r = this.#rows.get(name);
    if (!r) this.#rows.set(name, r = { firstNo: no, ids: [], head: 0 });
    r.ids.push(id);
    this.#wrote();
  }

  /**
   * Drops a stream's history entries numbered below `firstNo`.
   *
   * @param name The stream's name.
   * @param firstNo The number of the oldest entry kept.
   * @throws {StorageUnavailableError} When the store is unavailable or closed.
   */
  trim(name: string, firstNo: number): void {
    const p = this.#entry(name);
    if (firstNo > p.trimBelow) p.trimBelow = firstNo;
    const r = this.#rows.get(name);
    if (r) {
      while (r.firstNo < firstNo && r.head < r.ids.length) {
        const id = r.ids[r.head++]!;
        if (id < this.#firstPendingId) this.#deleteIds.push(id);
        r.firstNo++;
      }
      if (r.head > 1024 && r.head * 2 > r.ids.length) {
        r.ids = r.ids.slice(r.head);
        r.head = 0;
      }
    }
    this.#wrote();
  }

  /**
   * Deletes a stream: its position, header and history.
   *
   * @param name The stream's name.
   * @throws {StorageUnavailableError} When the store is unavailable or closed.
   */
  delete(name: string): void {
    this.#check();
    const r = this.#rows.get(name);
    if (r) {
      for (let i = r.head; i < r.ids.length; i++) {
        const id = r.ids[i]!;
        if (id < this.#firstPendingId) this.#deleteIds.push(id);
      }
      this.#rows.delete(name);
    }
    this.#pending.set(name, { deleted: true, meta: undefined, trimBelow: 0, appends: [] });
    this.#wrote();
  }

  /**
   * Resolves when every write made so far is committed (and, under `always` and `batch`,
   * fsynced).
   *
   * @returns When the writes are on disk.
   * @throws {StorageUnavailableError} When their commit failed.
   */
  durable(): Promise<void> {
    if (this.#pendingWrites === 0 && this.#error === undefined) return Promise.resolve();
    if (this.#closed) return Promise.reject(this.#closedError());
    return new Promise((resolve, reject) => this.#waiters.push({ resolve, reject }));
  }

  /**
   * Commits every waiting write now, in one transaction.
   *
   * @throws {StorageUnavailableError} When the commit fails; the writes stay waiting and the
   * store retries them every interval.
   */
  commit(): void {
    if (this.#timer !== undefined) {
      clearTimeout(this.#timer);
      this.#timer = undefined;
    }
    const waiters = this.#waiters;
    if (this.#pendingWrites === 0) {
      this.#waiters = [];
      this.#error = undefined;
      for (const w of waiters) w.resolve();
      return;
    }
    const st = this.#st;
    const db = this.#db;
    let error: StorageUnavailableError | undefined;
    try {
      if (this.#error) {
        // A retry after a full disk: hand the write-ahead log's space back first, if the file
        // can take its pages now.
        try {
          db.exec("PRAGMA wal_checkpoint(TRUNCATE)");
        } catch {
          // Still full: the commit below fails the same way.
        }
      }
      db.exec("BEGIN");
      if (this.#jump > 0) st.jump.run(this.#jump);
      for (const [lost, name] of this.#pendingLost) st.setLost.run(lost, name);
      for (const [key, value] of this.#pendingMeta) st.setMeta.run(key, value);
      for (const id of this.#deleteIds) st.delRow.run(id);
      for (const [name, p] of this.#pending) {
        if (p.deleted) st.delStream.run(name);
        if (p.meta) st.upsert.run(name, ...p.meta);
        for (const { id, entry: e } of p.appends) {
          if (e.no >= p.trimBelow) {
            st.insert.run(id, name, e.no, e.seq, e.header ? 1 : 0, e.frame);
          }
        }
      }
      db.exec("COMMIT");
    } catch (e) {
      try {
        if (db.isTransaction) db.exec("ROLLBACK");
      } catch {
        // SQLite rolled back by itself (e.g. after SQLITE_FULL).
      }
      error = this.#fail(e, "write");
    }
    if (error) {
      this.#error = error;
      this.#schedule(this.intervalMs);
      this.onCommit?.(error);
      this.#waiters = [];
      for (const w of waiters) w.reject(error);
      throw error;
    }
    this.commits++;
    this.#error = undefined;
    this.#jump = 0;
    this.#pendingLost = [];
    this.#pendingMeta.clear();
    this.#pending = new Map();
    this.#deleteIds = [];
    this.#firstPendingId = this.#nextId;
    this.#pendingWrites = 0;
    this.#waiters = [];
    this.#dirtySinceIdle = true;
    this.#scheduleIdle();
    this.onCommit?.(undefined);
    for (const w of waiters) w.resolve();
  }

  /**
   * Checkpoints the write-ahead log into the file and truncates it, then hands free pages back
   * to the file system. Runs by itself after `idleMs` without writes.
   *
   * @returns The file's pages: total and free, after the work.
   */
  compact(): { pages: number; freePages: number } {
    try {
      // Each row of the pragma frees one page: step through all of them.
      this.#db.prepare("PRAGMA incremental_vacuum").all();
      this.#db.exec("PRAGMA wal_checkpoint(TRUNCATE)");
    } catch {
      // Best effort: a checkpoint that cannot run now runs on the next idle turn.
    }
    return this.pages();
  }

  /**
   * How many pages the file has, and how many of them are free (reused before the file grows).
   *
   * @returns Page counts.
   */
  pages(): { pages: number; freePages: number } {
    const pages = this.#db.prepare("PRAGMA page_count").get()?.page_count as number;
    const freePages = this.#db.prepare("PRAGMA freelist_count").get()?.freelist_count as number;
    return { pages, freePages };
  }

  /**
   * Limits the file to `pages` pages (SQLite's `max_page_count`): for tests of a full disk.
   *
   * @param pages Most pages; 0 lifts the limit as far as SQLite allows.
   */
  limitPages(pages: number): void {
    this.#db.exec(`PRAGMA max_page_count=${pages > 0 ? Math.floor(pages) : 4294967294}`);
  }

  /**
   * Makes the hub's core that keeps its streams in this store: called once by the hub's
   * constructor (`new MessageStream({ store })`), which restores every stream from the file.
   *
   * @param codec The hub's codec.
   * @param maxName The longest stream name.
   * @param source The hub.
   * @param limits The hub's history bounds.
   * @returns The core.
   * @throws {StorageUnavailableError} When the file cannot be read.
   */
  core(codec: Codec, maxName: number, source: Detachable, limits: HistoryLimits): MemoryCore {
    return new DurableCore(this, codec, maxName, source, limits);
  }

  /**
   * Commits what waits, marks the file as cleanly closed, and closes it. Safe to call twice.
   *
   * @throws {StorageUnavailableError} When the last commit fails (the file is closed anyway; the
   * next open treats the stop as unclean).
   */
  close(): void {
    if (this.#closed) return;
    let error: unknown;
    try {
      this.commit();
      if (this.#loaded) {
        this.#st.setMeta.run("clean", "1");
        this.#db.exec("PRAGMA wal_checkpoint(TRUNCATE)");
      }
    } catch (e) {
      error = e;
    }
    this.#closed = true;
    clearTimeout(this.#timer);
    clearTimeout(this.#idleTimer);
    this.#timer = this.#idleTimer = undefined;
    const waiters = this.#waiters;
    this.#waiters = [];
    for (const w of waiters) w.reject(this.#closedError());
    this.#db.close();
    if (error) throw error instanceof StorageUnavailableError ? error : this.#fail(error, "close");
  }

  #entry(name: string): PendingStream {
    this.#check();
    let p = this.#pending.get(name);
    if (!p) {
      this.#pending.set(name, p = { deleted: false, meta: undefined, trimBelow: 0, appends: [] });
    }
    return p;
  }

  #check(): void {
    if (this.#closed) throw this.#closedError();
    if (this.#error) {
      throw new StorageUnavailableError(`Storage unavailable: ${this.#error.message}`, {
        cause: this.#error,
      });
    }
  }

  #wrote(): void {
    if (++this.#pendingWrites > this.maxPendingWrites) {
      try {
        this.commit();
      } catch {
        // Reported by the commit's hook and waiters; later writes throw until a retry succeeds.
      }
      return;
    }
    if (this.#timer === undefined) this.#schedule(this.fsync === "always" ? 0 : this.intervalMs);
  }

  #schedule(ms: number): void {
    if (this.#timer !== undefined || this.#closed) return;
    this.#timer = setTimeout(() => {
      this.#timer = undefined;
      try {
        this.commit();
      } catch {
        // Reported by the commit's hook and waiters; retried in an interval.
      }
    }, ms);
  }

  #scheduleIdle(): void {
    clearTimeout(this.#idleTimer);
    this.#idleTimer = setTimeout(() => {
      this.#idleTimer = undefined;
      if (this.#closed || !this.#dirtySinceIdle) return;
      if (this.#pendingWrites > 0) return this.#scheduleIdle();
      this.#dirtySinceIdle = false;
      this.compact();
    }, this.#idleMs);
    Deno.unrefTimer(this.#idleTimer as unknown as number);
  }

  #closedError(): StorageUnavailableError {
    return new StorageUnavailableError(`Store "${this.path}" is closed`);
  }

  #fail(e: unknown, what: string): StorageUnavailableError {
    const err = e as { message?: string; errstr?: string };
    return new StorageUnavailableError(
      `Cannot ${what} "${this.path}": ${err.errstr ?? err.message ?? String(e)}`,
      { cause: e },
    );
  }
}

/**
 * The streams table's columns. It is an ordinary (rowid) table, its name a unique index: in a
 * `WITHOUT ROWID` table (the layout before) every row lives in the name's b-tree, interior pages
 * included, so with 1 MB headers among the rows each delete or insert that rebalanced the tree
 * copied megabytes (10,000 deletes: 10 s instead of 30 ms, and the event loop waited).
 */
const STREAMS_COLUMNS = "name TEXT PRIMARY KEY, epoch TEXT NOT NULL, seq INTEGER NOT NULL, " +
  "header TEXT, trimmed_to INTEGER NOT NULL, lost TEXT NOT NULL DEFAULT ''";

/**
 * Rewrites a streams table of the earlier `WITHOUT ROWID` layout as an ordinary table, once, in
 * one transaction (the columns and what they hold are the same, so the schema version stays 1
 * and an earlier server still reads the file). When it cannot be written (a full disk), the old
 * table stays and serves as before (slower with large headers); the next open tries again.
 */
function migrateStreams(db: DatabaseSync): void {
  const sql = db.prepare("SELECT sql FROM sqlite_schema WHERE type = 'table' AND name = 'streams'")
    .get()?.sql as string | undefined;
  if (!sql || !/WITHOUT\s+ROWID/i.test(sql)) return;
  try {
    db.exec(`
      BEGIN;
      CREATE TABLE streams_rowid(${STREAMS_COLUMNS});
      INSERT INTO streams_rowid(name, epoch, seq, header, trimmed_to, lost)
        SELECT name, epoch, seq, header, trimmed_to, lost FROM streams;
      DROP TABLE streams;
      ALTER TABLE streams_rowid RENAME TO streams;
      COMMIT;
    `);
  } catch {
    try {
      if (db.isTransaction) db.exec("ROLLBACK");
    } catch {
      // Rolled back by SQLite already.
    }
  }
}

const utf8 = new TextDecoder();

/**
 * A name's bytes, selected only when it holds a NUL character: SQLite's text reads stop at the
 * first NUL ("a\u0000b" would come back as "a"), so such a name is read as bytes.
 */
const RAW_NAME = "CASE WHEN instr(CAST(name AS BLOB), x'00') THEN CAST(name AS BLOB) END AS raw";

/** A stream name as read back (see {@linkcode RAW_NAME}). */
function nameOf(row: Record<string, unknown>): string {
  return row.raw instanceof Uint8Array ? utf8.decode(row.raw) : row.name as string;
}

/**
 * Most lost ranges kept per stream. A stream that stays idle through many unclean stops gains a
 * range at each; past this bound the two oldest merge, which turns the seq between them (a
 * position after a restart) into a false reset, never a gap, and keeps the row bounded.
 */
const MAX_LOST_RANGES = 16;

function capLost(lost: LostRange[]): LostRange[] {
  const out = [...lost];
  while (out.length > MAX_LOST_RANGES) {
    out.splice(0, 2, [out[0]![0], out[1]![1]]);
  }
  return out;
}

function parseLost(text: string): LostRange[] {
  if (!text) return [];
  try {
    const v = JSON.parse(text);
    return Array.isArray(v)
      ? v.filter((r): r is [number, number] =>
        Array.isArray(r) && typeof r[0] === "number" && typeof r[1] === "number"
      )
      : [];
  } catch {
    return [];
  }
}
