import { assertEquals, assertRejects } from "@std/assert";
import { DatabaseSync } from "node:sqlite";
import { MessageStream, type StreamEvent } from "../mod.ts";
import { DurableStore, type DurableStoreOptions, StorageUnavailableError } from "../store.ts";
import { deadline } from "./_wait.ts";

async function tempPath(): Promise<{ dir: string; path: string }> {
  const dir = await Deno.makeTempDir({ prefix: "msgstream-durable-" });
  return { dir, path: `${dir}/msgstream.db` };
}

function hubAt(
  path: string,
  options: DurableStoreOptions = {},
  bounds: { historyMessages?: number } = {},
): MessageStream {
  return new MessageStream({ store: DurableStore.open(path, options), ...bounds });
}

function recorder(): { put(ev: StreamEvent): void; got: [string, unknown, number][] } {
  const got: [string, unknown, number][] = [];
  return { got, put: (ev) => got.push([ev.kind, ev.message, ev.seq]) };
}

/** Marks the file as not cleanly closed, as a killed process leaves it. */
function markUnclean(path: string): void {
  const db = new DatabaseSync(path);
  db.exec("UPDATE meta SET value = '0' WHERE key = 'clean'");
  db.close();
}

Deno.test("A durable hub restores epoch, seq, header and history after a restart", async () => {
  const { dir, path } = await tempPath();
  try {
    const hub = hubAt(path);
    const at = await hub.listen("job", { put() {} });
    await hub.header("job", { state: "running" });
    await hub.put("job", "a");
    await hub.put("job", "b");
    const before = hub.info("job");
    await hub.close();

    const again = hubAt(path);
    assertEquals(again.info("job")?.epoch, before?.epoch);
    assertEquals(again.info("job")?.seq, 2);
    // A new listener gets the last header.
    const fresh = recorder();
    assertEquals(await again.listen("job", fresh), { epoch: at.epoch, seq: 2 });
    assertEquals(fresh.got, [["header", { state: "running" }, 2]]);
    // A resuming listener gets exactly what it missed, without a reset.
    const resumed = recorder();
    await again.listen("job", resumed, { since: at });
    assertEquals(resumed.got, [["header", { state: "running" }, 0], ["put", "a", 1], [
      "put",
      "b",
      2,
    ]]);
    await again.put("job", "c");
    assertEquals(resumed.got.at(-1), ["put", "c", 3]);
    await again.close();
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("A durable hub keeps history on disk within the same bounds as memory", async () => {
  const { dir, path } = await tempPath();
  try {
    const hub = hubAt(path, {}, { historyMessages: 3 });
    const at = await hub.listen("job", { put() {} });
    for (let i = 1; i <= 10; i++) await hub.put("job", i);
    await hub.close();
    const store = DurableStore.open(path);
    const [job] = store.load();
    assertEquals(job?.history.map((e) => e.seq), [8, 9, 10]);
    store.close();

    const again = hubAt(path, {}, { historyMessages: 3 });
    const old = recorder();
    await again.listen("job", old, { since: at });
    assertEquals(old.got[0], ["reset", { reason: "history_trimmed" }, 10]);
    const recent = recorder();
    await again.listen("job", recent, { since: { epoch: at.epoch, seq: 7 } });
    assertEquals(recent.got, [["put", 8, 8], ["put", 9, 9], ["put", 10, 10]]);
    await again.close();
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("A durable hub forgets a stream that holds nothing, on disk too", async () => {
  const { dir, path } = await tempPath();
  try {
    const hub = hubAt(path, {}, { historyMessages: 0 });
    await hub.header("job", 1);
    await hub.header("job", null);
    await hub.header("kept", 2);
    await hub.delete("kept");
    await hub.header("other", 3);
    await hub.close();
    const again = hubAt(path);
    assertEquals(again.list().map((s) => s.stream), ["other"]);
    await again.close();
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("A durable hub under always resolves a put once it is on disk", async () => {
  const { dir, path } = await tempPath();
  try {
    const store = DurableStore.open(path, { fsync: "always" });
    const hub = new MessageStream({ store });
    const at = await hub.put("job", "a");
    assertEquals([at.seq, store.pendingWrites, store.commits > 0], [1, 0, true]);
    await hub.close();
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("After an unclean stop under batch, a client ahead of what survived is reset and no seq is reused", async () => {
  const { dir, path } = await tempPath();
  try {
    const hub = hubAt(path, { maxPendingWrites: 50 });
    const start = await hub.listen("job", { put() {} });
    await hub.put("job", "a");
    await hub.put("job", "b");
    await hub.close();
    // The kill: the file says the run did not stop cleanly; puts 3 and 4 never reached it.
    markUnclean(path);

    const again = hubAt(path, { maxPendingWrites: 50 });
    const epoch = start.epoch;
    assertEquals(again.info("job")?.seq, 2 + 51);
    const ahead = recorder();
    await again.listen("job", ahead, { since: { epoch, seq: 4 } });
    assertEquals(ahead.got, [["reset", { reason: "ahead_of_stream" }, 53]]);
    const behind = recorder();
    await again.listen("job", behind, { since: { epoch, seq: 1 } });
    assertEquals(behind.got, [["put", "b", 2]]);
    const next = await again.put("job", "c");
    assertEquals(next.seq, 54);
    assertEquals(behind.got.at(-1), ["put", "c", 54]);
    // Still reset after the put: seq 4 was lost, never given to "c".
    const stillAhead = recorder();
    await again.listen("job", stillAhead, { since: { epoch, seq: 4 } });
    assertEquals(stillAhead.got[0], ["reset", { reason: "ahead_of_stream" }, 54]);
    await again.close();
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("A durable hub refuses writes with StorageUnavailableError while the disk is full", async () => {
  const { dir, path } = await tempPath();
  try {
    const store = DurableStore.open(path, { fsync: "always", intervalMs: 10 });
    const hub = new MessageStream({ store });
    await hub.put("job", "kept");
    store.limitPages(store.pages().pages);
    const failed = await assertRejects(
      () => hub.put("job", "x".repeat(64 * 1024)),
      StorageUnavailableError,
    );
    assertEquals(failed.code, "storage_unavailable");
    await assertRejects(() => hub.put("job", "refused"), StorageUnavailableError);
    store.limitPages(0);
    await store.durable();
    assertEquals((await hub.put("job", "after")).seq, 3);
    await hub.close();
    const again = hubAt(path);
    const got = recorder();
    await again.listen("job", got, { since: { epoch: again.info("job")!.epoch, seq: 0 } });
    assertEquals(got.got.map(([, m]) => typeof m === "string" ? m.slice(0, 5) : m), [
      "kept",
      "xxxxx",
      "after",
    ]);
    await again.close();
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("After an unclean stop, a listener at the seq the stream jumped to resumes without a reset", async () => {
  const { dir, path } = await tempPath();
  try {
    const hub = hubAt(path, { maxPendingWrites: 50 });
    await hub.header("job", { state: "running" });
    await hub.put("job", "a");
    await hub.close();
    markUnclean(path);

    // After the restart the stream is at 1 + 51; a listener joins there (nothing put since).
    const again = hubAt(path, { maxPendingWrites: 50 });
    const joined = await again.listen("job", { put() {} });
    assertEquals(joined.seq, 52);
    await again.close();

    // A clean restart: the listener resumes from where it joined, and misses nothing.
    const third = hubAt(path, { maxPendingWrites: 50 });
    const resumed = recorder();
    await third.listen("job", resumed, { since: joined });
    assertEquals(resumed.got, []);
    await third.put("job", "b");
    assertEquals(resumed.got, [["put", "b", 53]]);
    await third.close();
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("After an unclean stop, a listener at the durable seq is sent the header that survived", async () => {
  const { dir, path } = await tempPath();
  try {
    const hub = hubAt(path, { maxPendingWrites: 50 });
    await hub.header("job", { state: "queued" });
    await hub.put("job", "a");
    const seen = recorder();
    const at = await hub.listen("job", seen);
    // A header change the listener sees, that the kill will take away (it keeps seq 1).
    await hub.header("job", { state: "running" });
    assertEquals(seen.got.at(-1), ["header", { state: "running" }, 1]);
    await hub.close();
    const db = new DatabaseSync(path);
    db.exec(`UPDATE streams SET header = '{"state":"queued"}'`);
    db.exec("DELETE FROM history WHERE kind = 1 AND id = (SELECT max(id) FROM history)");
    db.close();
    markUnclean(path);

    const again = hubAt(path, { maxPendingWrites: 50 });
    const resumed = recorder();
    await again.listen("job", resumed, { since: at });
    // Not silence: the listener is told the header that survived, at the stream's new seq.
    assertEquals(resumed.got, [["header", { state: "queued" }, 52]]);
    // A listener that resumes from below the durable seq gets what it missed, as always.
    const behind = recorder();
    await again.listen("job", behind, { since: { epoch: at.epoch, seq: 0 } });
    assertEquals(behind.got, [["header", { state: "queued" }, 0], ["put", "a", 1]]);
    await again.close();
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("A durable hub refuses writes once closed: nothing is acknowledged that the file does not keep", async () => {
  const { dir, path } = await tempPath();
  try {
    const hub = hubAt(path);
    await hub.put("job", "a");
    await hub.close();
    await assertRejects(() => hub.put("job", "late"), StorageUnavailableError, "is closed");
    await assertRejects(() => hub.header("job", "late"), StorageUnavailableError, "is closed");
    await assertRejects(() => hub.delete("job"), StorageUnavailableError, "is closed");
    // The file stopped cleanly at seq 1, so nothing may have been given seq 2.
    const again = hubAt(path);
    assertEquals(again.info("job")?.seq, 1);
    assertEquals((await again.put("job", "b")).seq, 2);
    await again.close();
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("After an unclean stop, a pattern listener is reset inside a lost range and told the surviving header at its edge", async () => {
  const { dir, path } = await tempPath();
  try {
    const hub = hubAt(path, { maxPendingWrites: 50 });
    await hub.header("jobs.a", { state: "queued" });
    const a = await hub.put("jobs.a", "a1");
    const b = await hub.put("jobs.b", "b1");
    await hub.close();
    markUnclean(path);

    const again = hubAt(path, { maxPendingWrites: 50 });
    const got: [string, string, unknown, number][] = [];
    const queue = { put: (ev: StreamEvent) => got.push([ev.stream, ev.kind, ev.message, ev.seq]) };
    await again.listen({ pattern: "jobs.*" }, queue, {
      since: { "jobs.a": a, "jobs.b": { epoch: b.epoch, seq: 3 } },
    });
    got.sort((x, y) => x[0] < y[0] ? -1 : x[0] > y[0] ? 1 : 0);
    assertEquals(got, [
      // At the durable seq: the header that survived, at the new seq.
      ["jobs.a", "header", { state: "queued" }, 52],
      // Seq 3 was never stored: it was ahead of what survived.
      ["jobs.b", "reset", { reason: "ahead_of_stream" }, 52],
      ["jobs.b", "header", null, 52],
    ]);
    await again.close();
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("A durable hub's stream expiry survives a store that refuses writes", async () => {
  const { dir, path } = await tempPath();
  try {
    const store = DurableStore.open(path, { fsync: "always", intervalMs: 10 });
    const hub = new MessageStream({ store, streamTtl: 20 });
    await hub.put("idle", "kept");
    store.limitPages(store.pages().pages);
    await assertRejects(() => hub.put("job", "x".repeat(64 * 1024)), StorageUnavailableError);
    // Sweeps run while the store refuses writes: the idle stream stays until it can go.
    const sweeps = Promise.withResolvers<void>();
    setTimeout(sweeps.resolve, 100);
    await sweeps.promise;
    assertEquals(hub.info("idle")?.seq, 1);
    store.limitPages(0);
    await store.durable();
    const gone = Promise.withResolvers<void>();
    const poll = setInterval(() => hub.info("idle") === undefined && gone.resolve(), 5);
    try {
      await deadline(gone.promise, "the idle stream to expire once the store takes writes");
    } finally {
      clearInterval(poll);
    }
    await hub.close();
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("After a restart the global history bound still trims the oldest entries first", async () => {
  const { dir, path } = await tempPath();
  try {
    const big = "x".repeat(1000);
    const hubWith = () =>
      new MessageStream({ store: DurableStore.open(path), maxHistoryBytes: 2500 });
    const hub = hubWith();
    // Put order: "b" first, then "a" (name order is the other way round).
    await hub.put("b", big);
    await hub.put("a", big);
    await hub.close();

    const again = hubWith();
    assertEquals([again.info("a")?.seq, again.info("b")?.seq], [1, 1]);
    // A third entry does not fit: the oldest one goes, which is b's.
    await again.put("c", big);
    assertEquals([again.info("a")?.seq, again.info("b"), again.info("c")?.seq], [1, undefined, 1]);
    await again.close();
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
