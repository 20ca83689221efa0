import { assert, assertEquals, assertRejects, assertThrows } from "@std/assert";
import { DatabaseSync } from "node:sqlite";
import { DurableStore, StorageUnavailableError, type StoredStream } from "../store.ts";

const enc = new TextEncoder();
const dec = new TextDecoder();

function frame(stream: string, seq: number, message: unknown): Uint8Array {
  return enc.encode(JSON.stringify({ action: "put", stream, message, seq, epoch: "e" }) + "\n");
}

async function tempPath(): Promise<{ dir: string; path: string }> {
  const dir = await Deno.makeTempDir({ prefix: "msgstream-store-" });
  return { dir, path: `${dir}/msgstream.db` };
}

function summary(s: StoredStream | undefined) {
  return s && {
    name: s.name,
    epoch: s.epoch,
    seq: s.seq,
    header: s.header,
    trimmedTo: s.trimmedTo,
    lost: s.lost,
    history: s.history.map((e) => [e.no, e.seq, e.header, dec.decode(e.frame)]),
  };
}

/**
 * Opens a copy of what is on disk now (the file and its write-ahead log): the store holds an
 * exclusive lock, so another connection cannot read the file itself while it is open.
 *
 * @param path The store's file.
 * @returns The copy, open; close it when done.
 */
function onDisk(path: string): DatabaseSync {
  const copy = Deno.makeTempDirSync({ prefix: "msgstream-copy-" });
  Deno.copyFileSync(path, `${copy}/m.db`);
  try {
    Deno.copyFileSync(`${path}-wal`, `${copy}/m.db-wal`);
  } catch (e) {
    if (!(e instanceof Deno.errors.NotFound)) throw e;
  }
  const db = new DatabaseSync(`${copy}/m.db`);
  const close = db.close.bind(db);
  db.close = () => {
    close();
    Deno.removeSync(copy, { recursive: true });
  };
  return db;
}

/** Marks the file as not cleanly closed, as a killed process leaves it. */
function markUnclean(path: string): void {
  const db = new DatabaseSync(path);
  db.exec("UPDATE meta SET value = '0' WHERE key = 'clean'");
  db.close();
}

Deno.test("DurableStore keeps epoch, seq, header and history across a reopen", async () => {
  const { dir, path } = await tempPath();
  try {
    const store = DurableStore.open(path, { fsync: "always" });
    assertEquals(store.load(), []);
    store.setStream("a", "ep1", 2, '{"state":"running"}', 0);
    store.append("a", 0, 1, false, frame("a", 1, "x"));
    store.append("a", 1, 2, false, frame("a", 2, "y"));
    store.append("a", 2, 2, true, frame("a", 2, { state: "running" }));
    store.setStream("b", "ep2", 0, undefined, 0);
    await store.durable();
    store.close();

    const again = DurableStore.open(path);
    const streams = again.load();
    assertEquals(again.unclean, false);
    assertEquals(streams.map(summary), [
      {
        name: "a",
        epoch: "ep1",
        seq: 2,
        header: '{"state":"running"}',
        trimmedTo: 0,
        lost: [],
        history: [
          [0, 1, false, dec.decode(frame("a", 1, "x"))],
          [1, 2, false, dec.decode(frame("a", 2, "y"))],
          [2, 2, true, dec.decode(frame("a", 2, { state: "running" }))],
        ],
      },
      {
        name: "b",
        epoch: "ep2",
        seq: 0,
        header: undefined,
        trimmedTo: 0,
        lost: [],
        history: [],
      },
    ]);
    again.close();
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("DurableStore commits a burst of writes as one transaction", async () => {
  const { dir, path } = await tempPath();
  try {
    const store = DurableStore.open(path, { fsync: "batch", intervalMs: 20 });
    store.load();
    for (let i = 1; i <= 1000; i++) {
      store.setStream("s", "e", i, undefined, 0);
      store.append("s", i - 1, i, false, frame("s", i, i));
    }
    assertEquals(store.pendingWrites, 2000);
    await store.durable();
    assertEquals(store.commits, 1);
    assertEquals(store.pendingWrites, 0);
    store.close();
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("DurableStore commits at once past maxPendingWrites", async () => {
  const { dir, path } = await tempPath();
  try {
    const store = DurableStore.open(path, {
      fsync: "never",
      intervalMs: 60_000,
      maxPendingWrites: 10,
    });
    store.load();
    for (let i = 1; i <= 11; i++) store.append("s", i - 1, i, false, frame("s", i, i));
    assertEquals(store.commits, 1);
    assertEquals(store.pendingWrites, 0);
    store.close();
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("DurableStore trims history in the same transaction as the appends", async () => {
  const { dir, path } = await tempPath();
  try {
    const store = DurableStore.open(path, { fsync: "always" });
    store.load();
    for (let i = 0; i < 5; i++) store.append("s", i, i + 1, false, frame("s", i + 1, i));
    await store.durable();
    for (let i = 5; i < 10; i++) store.append("s", i, i + 1, false, frame("s", i + 1, i));
    store.trim("s", 7);
    store.setStream("s", "e", 10, undefined, 8);
    await store.durable();
    store.close();
    const again = DurableStore.open(path);
    const [s] = again.load();
    assertEquals(s?.history.map((e) => e.no), [7, 8, 9]);
    assertEquals(s?.trimmedTo, 8);
    again.close();
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("DurableStore.delete() drops a stream, and a new one can take its name", async () => {
  const { dir, path } = await tempPath();
  try {
    const store = DurableStore.open(path, { fsync: "always" });
    store.load();
    store.setStream("s", "old", 3, '"h"', 0);
    for (let i = 0; i < 3; i++) store.append("s", i, i + 1, false, frame("s", i + 1, i));
    await store.durable();
    store.delete("s");
    store.setStream("s", "new", 1, undefined, 0);
    store.append("s", 0, 1, false, frame("s", 1, "again"));
    store.setStream("gone", "g", 1, undefined, 0);
    store.delete("gone");
    await store.durable();
    store.close();
    const again = DurableStore.open(path);
    const streams = again.load();
    assertEquals(streams.map((s) => [s.name, s.epoch, s.seq, s.header, s.history.length]), [
      ["s", "new", 1, undefined, 1],
    ]);
    again.close();
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("DurableStore.load() after an unclean stop raises each seq past what may be lost", async () => {
  const { dir, path } = await tempPath();
  try {
    const store = DurableStore.open(path, { fsync: "batch", maxPendingWrites: 100 });
    store.load();
    store.setStream("s", "e", 5, undefined, 0);
    store.close();
    markUnclean(path);

    const again = DurableStore.open(path, { maxPendingWrites: 7 });
    const [s] = again.load();
    assertEquals(again.unclean, true);
    // The previous run's bound counts: 100 writes could have been waiting.
    assertEquals([s?.seq, s?.lost], [106, [[5, 106]]]);
    again.close();

    // A clean stop keeps the raised seq and the lost range, and raises nothing more.
    const third = DurableStore.open(path);
    const [t] = third.load();
    assertEquals([third.unclean, t?.seq, t?.lost], [false, 106, [[5, 106]]]);
    third.close();
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("DurableStore.load() after an unclean stop under always raises seqs too", async () => {
  const { dir, path } = await tempPath();
  try {
    const store = DurableStore.open(path, { fsync: "always", maxPendingWrites: 9 });
    store.load();
    store.setStream("s", "e", 5, undefined, 0);
    store.close();
    markUnclean(path);
    const again = DurableStore.open(path);
    const [s] = again.load();
    // Listeners may have seen a put whose commit the stop cut off.
    assertEquals([again.unclean, s?.seq, s?.lost], [true, 15, [[5, 15]]]);
    again.close();
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("DurableStore fails writes with storage_unavailable when full, keeps what it had, and recovers", async () => {
  const { dir, path } = await tempPath();
  try {
    const store = DurableStore.open(path, { fsync: "always", intervalMs: 10 });
    store.load();
    store.setStream("s", "e", 1, '"kept"', 0);
    store.append("s", 0, 1, false, frame("s", 1, "kept"));
    await store.durable();
    store.limitPages(store.pages().pages);
    const big = "x".repeat(64 * 1024);
    store.append("s", 1, 2, false, frame("s", 2, big));
    store.setStream("s", "e", 2, '"kept"', 0);
    const failed = await assertRejects(() => store.durable(), StorageUnavailableError);
    assertEquals(failed.code, "storage_unavailable");
    assertEquals(store.available, false);
    assertThrows(() => store.append("s", 2, 3, false, frame("s", 3, 3)), StorageUnavailableError);

    // What was there before is intact, read by another connection.
    const db = onDisk(path);
    assertEquals(db.prepare("SELECT seq, header FROM streams").all().map((r) => ({ ...r })), [
      { seq: 1, header: '"kept"' },
    ]);
    assertEquals(db.prepare("PRAGMA integrity_check").get()?.integrity_check, "ok");
    db.close();

    // Space returns: the retry commits the waiting writes.
    store.limitPages(0);
    await store.durable();
    assertEquals(store.available, true);
    store.close();
    const again = DurableStore.open(path);
    const [s] = again.load();
    assertEquals([s?.seq, s?.history.map((e) => e.seq)], [2, [1, 2]]);
    again.close();
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

async function run(cmd: string, ...args: string[]): Promise<boolean> {
  try {
    const out = await new Deno.Command(cmd, { args, stdout: "null", stderr: "null" }).output();
    return out.success;
  } catch {
    return false;
  }
}

Deno.test("DurableStore on a full tmpfs fails with storage_unavailable and recovers after space returns", async (t) => {
  const dir = await Deno.makeTempDir({ prefix: "msgstream-tmpfs-" });
  if (Deno.uid() !== 0 || !(await run("mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", dir))) {
    await Deno.remove(dir);
    // Without mount rights, the max_page_count test above stands in for a full disk.
    await t.step({ name: "needs root and mount (skipped)", ignore: true, fn() {} });
    return;
  }
  const path = `${dir}/msgstream.db`;
  const filler = `${dir}/filler`;
  try {
    const store = DurableStore.open(path, { fsync: "always", intervalMs: 10 });
    store.load();
    store.setStream("s", "e", 1, '"kept"', 0);
    store.append("s", 0, 1, false, frame("s", 1, "kept"));
    await store.durable();
    // Fill the file system.
    const f = await Deno.open(filler, { write: true, create: true });
    const chunk = new Uint8Array(64 * 1024);
    try {
      while (true) await f.write(chunk);
    } catch (e) {
      assert(e instanceof Error);
    } finally {
      f.close();
    }
    let seq = 1;
    let error: StorageUnavailableError | undefined;
    const big = "y".repeat(16 * 1024);
    for (let i = 0; i < 200 && !error; i++) {
      seq++;
      store.append("s", seq - 1, seq, false, frame("s", seq, big));
      store.setStream("s", "e", seq, '"kept"', 0);
      await store.durable().catch((e) => error = e);
    }
    assert(error instanceof StorageUnavailableError, "the file system never filled up");
    assertEquals(error.code, "storage_unavailable");
    const db = onDisk(path);
    assertEquals(db.prepare("PRAGMA integrity_check").get()?.integrity_check, "ok");
    db.close();
    await Deno.remove(filler);
    await store.durable();
    assertEquals(store.available, true);
    store.close();
    const again = DurableStore.open(path);
    const [s] = again.load();
    assertEquals(s?.seq, seq);
    assertEquals(s?.history.map((e) => e.seq), Array.from({ length: seq }, (_, i) => i + 1));
    again.close();
  } finally {
    await run("umount", dir);
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("DurableStore.open() rejects a bad policy and an unreachable path", async () => {
  const { dir, path } = await tempPath();
  try {
    // deno-lint-ignore no-explicit-any
    assertThrows(() => DurableStore.open(path, { fsync: "sometimes" as any }), TypeError);
    assertThrows(() => DurableStore.open(`${dir}/missing/dir/x.db`), StorageUnavailableError);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("DurableStore.open() refuses a file that another store has open", async () => {
  const { dir, path } = await tempPath();
  try {
    const first = DurableStore.open(path);
    first.load();
    const e = assertThrows(() => DurableStore.open(path), StorageUnavailableError);
    assertEquals(
      e.message,
      `Cannot open "${path}": another process has it open (one server owns one file)`,
    );
    // The owner is unharmed, and the file opens again once it is closed.
    first.setStream("s", "e", 1, undefined, 0);
    await first.durable();
    first.close();
    const again = DurableStore.open(path);
    assertEquals(again.load().map((s) => [s.name, s.seq]), [["s", 1]]);
    again.close();
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("DurableStore.open() refuses a file written by a newer schema", async () => {
  const { dir, path } = await tempPath();
  try {
    const store = DurableStore.open(path);
    store.load();
    store.close();
    const db = new DatabaseSync(path);
    db.exec("PRAGMA user_version=2");
    db.close();
    const e = assertThrows(() => DurableStore.open(path), StorageUnavailableError);
    assertEquals(
      e.message,
      `Cannot open "${path}": it was written by a newer msgstream (schema 2); this one reads schema 1`,
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("DurableStore.open() refuses a SQLite file that is not a store and leaves it as it was", async () => {
  const { dir, path } = await tempPath();
  try {
    const db = new DatabaseSync(path);
    db.exec("CREATE TABLE users(id INTEGER, name TEXT); INSERT INTO users VALUES (1, 'ann')");
    db.close();
    const e = assertThrows(() => DurableStore.open(path), StorageUnavailableError);
    assertEquals(
      e.message,
      `Cannot open "${path}": not a msgstream file (it has the tables "users")`,
    );
    const after = new DatabaseSync(path);
    assertEquals(
      after.prepare("SELECT name FROM sqlite_schema ORDER BY name").all().map((r) => r.name),
      ["users"],
    );
    after.close();
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("DurableStore on a full tmpfs after an unclean stop starts unavailable and jumps once when space returns", async (t) => {
  const dir = await Deno.makeTempDir({ prefix: "msgstream-tmpfs-" });
  if (Deno.uid() !== 0 || !(await run("mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", dir))) {
    await Deno.remove(dir);
    await t.step({ name: "needs root and mount (skipped)", ignore: true, fn() {} });
    return;
  }
  const path = `${dir}/msgstream.db`;
  const filler = `${dir}/filler`;
  try {
    const store = DurableStore.open(path, { maxPendingWrites: 9 });
    store.load();
    store.setStream("s", "e", 5, '"kept"', 0);
    store.append("s", 0, 5, false, frame("s", 5, "kept"));
    store.close();
    markUnclean(path);
    // The kill left a full disk behind.
    const f = await Deno.open(filler, { write: true, create: true });
    const chunk = new Uint8Array(16 * 1024);
    try {
      while (true) await f.write(chunk);
    } catch (e) {
      assert(e instanceof Error);
    } finally {
      f.close();
    }

    const again = DurableStore.open(path, { intervalMs: 10, maxPendingWrites: 9 });
    const [s] = again.load();
    // What was read is served, with the seq already past what the kill may have lost.
    assertEquals(summary(s), {
      name: "s",
      epoch: "e",
      seq: 15,
      header: '"kept"',
      trimmedTo: 0,
      lost: [[5, 15]],
      history: [[0, 5, false, dec.decode(frame("s", 5, "kept"))]],
    });
    assertEquals(again.available, false);
    assertEquals(again.error?.code, "storage_unavailable");
    assertThrows(() => again.setStream("s", "e", 16, '"kept"', 0), StorageUnavailableError);

    await Deno.remove(filler);
    await again.durable();
    assertEquals(again.available, true);
    again.close();
    // The jump was written once, by the retry, not once per attempt.
    const third = DurableStore.open(path);
    const [u] = third.load();
    assertEquals([third.unclean, u?.seq, u?.lost], [false, 15, [[5, 15]]]);
    third.close();
  } finally {
    await run("umount", dir);
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("DurableStore keeps a stream name with a NUL character apart from its prefix", async () => {
  const { dir, path } = await tempPath();
  try {
    const store = DurableStore.open(path);
    store.load();
    store.setStream("a\u0000b", "e1", 1, undefined, 0);
    store.append("a\u0000b", 0, 1, false, frame("a\u0000b", 1, "nul"));
    store.setStream("a", "e2", 7, undefined, 0);
    store.close();
    const again = DurableStore.open(path);
    assertEquals(again.load().map((s) => [s.name, s.epoch, s.seq, s.history.length]), [
      ["a", "e2", 7, 0],
      ["a\u0000b", "e1", 1, 1],
    ]);
    again.delete("a\u0000b");
    again.close();
    const third = DurableStore.open(path);
    assertEquals(third.load().map((s) => s.name), ["a"]);
    third.close();
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("DurableStore keeps at most 16 lost ranges for a stream idle through many unclean stops", async () => {
  const { dir, path } = await tempPath();
  try {
    const store = DurableStore.open(path, { maxPendingWrites: 9 });
    store.load();
    store.setStream("idle", "e", 5, '"h"', 0);
    store.close();
    for (let i = 0; i < 20; i++) {
      markUnclean(path);
      const s = DurableStore.open(path, { maxPendingWrites: 9 });
      s.load();
      s.close();
    }
    const again = DurableStore.open(path);
    const [s] = again.load();
    assertEquals(s?.seq, 205);
    assertEquals(s?.lost.length, 16);
    // The five oldest ranges merged (seqs 15 to 45, positions after those restarts, are now
    // reset falsely); the newest 15 stay exact.
    assertEquals(s?.lost[0], [5, 55]);
    assertEquals(
      s?.lost.slice(1),
      Array.from({ length: 15 }, (_, i) => [55 + 10 * i, 65 + 10 * i]),
    );
    again.close();
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("DurableStore keeps streams in an ordinary table: a delete finds the row by the name's index", async () => {
  // In the earlier WITHOUT ROWID layout each row (1 MB headers included) was a key of the name's
  // b-tree: every search that met a large row read its whole overflow chain to compare the name,
  // so 10,000 deletes beside 100 headers of 1 MB ran 10 s of statements on the event loop
  // (30 ms in this layout). What is checked here is the layout and the plan, not the time.
  const { dir, path } = await tempPath();
  try {
    const store = DurableStore.open(path);
    store.load();
    store.setStream("big", "e", 1, JSON.stringify("h".repeat(100_000)), 0);
    store.setStream("small", "e", 1, undefined, 0);
    await store.durable();
    const db = onDisk(path);
    try {
      const sql = db.prepare("SELECT sql FROM sqlite_schema WHERE name = 'streams'").get()?.sql;
      assert(typeof sql === "string" && !/WITHOUT ROWID/i.test(sql), String(sql));
      assertEquals(
        db.prepare("EXPLAIN QUERY PLAN DELETE FROM streams WHERE name = ?").all("small")
          .map((r) => r.detail),
        ["SEARCH streams USING INDEX sqlite_autoindex_streams_1 (name=?)"],
      );
    } finally {
      db.close();
    }
    store.delete("small");
    store.close();
    const again = DurableStore.open(path);
    assertEquals(again.load().map((s) => [s.name, s.header?.length]), [["big", 100_002]]);
    again.close();
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("DurableStore.open() rewrites a streams table of the WITHOUT ROWID layout once, keeping every row", async () => {
  const { dir, path } = await tempPath();
  try {
    const db = new DatabaseSync(path);
    db.exec(`
      PRAGMA auto_vacuum=INCREMENTAL;
      PRAGMA journal_mode=WAL;
      CREATE TABLE meta(key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
      CREATE TABLE streams(
        name TEXT PRIMARY KEY, epoch TEXT NOT NULL, seq INTEGER NOT NULL, header TEXT,
        trimmed_to INTEGER NOT NULL, lost TEXT NOT NULL DEFAULT ''
      ) WITHOUT ROWID;
      CREATE TABLE history(
        id INTEGER PRIMARY KEY, name TEXT NOT NULL, no INTEGER NOT NULL, seq INTEGER NOT NULL,
        kind INTEGER NOT NULL, frame BLOB NOT NULL
      );
      INSERT INTO meta VALUES ('clean', '1');
      INSERT INTO streams VALUES ('a', 'e1', 3, '"up"', 2, '');
      INSERT INTO streams VALUES (CAST(x'610062' AS TEXT), 'e2', 5, NULL, 0, '[[1,4]]');
      INSERT INTO history VALUES (1, 'a', 0, 3, 0, x'7b7d0a');
      PRAGMA user_version=1;
    `);
    db.close();
    const store = DurableStore.open(path);
    assertEquals(store.load().map(summary), [
      {
        name: "a",
        epoch: "e1",
        seq: 3,
        header: '"up"',
        trimmedTo: 2,
        lost: [],
        history: [[0, 3, false, "{}\n"]],
      },
      {
        name: "a\u0000b",
        epoch: "e2",
        seq: 5,
        header: undefined,
        trimmedTo: 0,
        lost: [[1, 4]],
        history: [],
      },
    ]);
    store.delete("a\u0000b");
    store.setStream("c", "e3", 1, undefined, 0);
    store.close();
    const after = new DatabaseSync(path);
    const sql = after.prepare("SELECT sql FROM sqlite_schema WHERE name = 'streams'").get()?.sql;
    assert(typeof sql === "string" && !/WITHOUT ROWID/i.test(sql), String(sql));
    assertEquals(after.prepare("PRAGMA user_version").get()?.user_version, 1);
    assertEquals(
      after.prepare("SELECT name FROM sqlite_schema WHERE type = 'table' ORDER BY name").all()
        .map((r) => r.name),
      ["history", "meta", "streams"],
    );
    assertEquals(
      after.prepare("SELECT name, seq FROM streams ORDER BY name").all().map((
        r,
      ) => [r.name, r.seq]),
      [["a", 3], ["c", 1]],
    );
    after.close();
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
