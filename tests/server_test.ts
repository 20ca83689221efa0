/**
 * The TCP server and RemoteStream through real sockets: ordering, joins racing puts, many
 * streams, hangup/endqueue/delete, headers; then the server's lifecycle and its command line.
 */

import {
  assert,
  assertEquals,
  assertGreater,
  assertMatch,
  assertNotEquals,
  assertRejects,
  assertStringIncludes,
} from "@std/assert";
import { TextLineStream } from "@std/streams/text-line-stream";
import type { StreamEvent } from "../mod.ts";
import { serve } from "../server.ts";
import { RemoteStream } from "../client.ts";
import { putFlood, seqOf } from "./_hub.ts";
import { connectRaw, type Frame } from "./_raw_client.ts";
import { Recorder } from "./_recorder.ts";
import { deadline } from "./_wait.ts";
import { addressOf, engineOptions } from "./_server.ts";

const ROOT = new URL("..", import.meta.url).pathname;

/** Connects `n` RemoteStreams; the caller closes them with `closeAll`. */
async function connectMany(port: number, n: number): Promise<RemoteStream[]> {
  const out: RemoteStream[] = [];
  for (let i = 0; i < n; i++) out.push(await RemoteStream.connect({ port }));
  return out;
}

async function closeAll(remotes: RemoteStream[]): Promise<void> {
  await Promise.all(remotes.map((r) => r.close()));
}

/** A round trip on `remote`'s connection: every earlier request has been handled. */
async function sync(remote: RemoteStream): Promise<void> {
  await remote.header("sync barrier", null);
}

const listenersOf =
  (server: { hub: { info(s: string): { listeners: number } | undefined } }) => (stream: string) =>
    server.hub.info(stream)?.listeners ?? 0;

Deno.test("RemoteStream publishers on one stream: each in its order, one total order for all", async () => {
  await using server = serve({ port: 0, ...engineOptions() });
  const publishers = await connectMany(server.addr.port, 4);
  const listeners = await connectMany(server.addr.port, 3);
  try {
    const recs = listeners.map((_, i) => new Recorder(`L${i}`));
    await Promise.all(listeners.map((l, i) => l.listen("race", recs[i] as Recorder)));
    const PER = 500;
    const seqs = await Promise.all(publishers.map(async (p, id) => {
      const puts: Promise<number>[] = [];
      for (let k = 0; k < PER; k++) puts.push(p.put("race", [id, k]).then((at) => at.seq));
      return await Promise.all(puts);
    }));
    const total = PER * publishers.length;
    for (const s of seqs) {
      for (let i = 1; i < s.length; i++) assertGreater(s[i] as number, s[i - 1] as number);
    }
    await Promise.all(recs.map((r) => r.waitFor(total)));
    const first = (recs[0] as Recorder).events;
    assertEquals(first.map((e) => e.seq), Array.from({ length: total }, (_, i) => i + 1));
    for (const r of recs) {
      assertEquals(r.events.length, total);
      assertEquals(r.events.map((e) => [e.seq, e.message]), first.map((e) => [e.seq, e.message]));
    }
    const next = new Map<number, number>();
    for (const e of first) {
      const [id, k] = e.message as [number, number];
      assertEquals(k, next.get(id) ?? 0, `publisher ${id} out of order`);
      next.set(id, k + 1);
      // The put's promise told the same seq the listeners saw.
      assertEquals(seqs[id]?.[k], e.seq);
    }
  } finally {
    await closeAll([...publishers, ...listeners]);
  }
});

/** Checks one listener's events: the header first, then a contiguous run of seqs to `last`. */
function assertGapless(events: StreamEvent[], last: number, who: string): void {
  const [header, ...puts] = events;
  assertEquals(header?.kind, "header", `${who}: header first`);
  assertEquals(header?.message, "h", who);
  let expect = (header?.seq ?? -1) + 1;
  for (const e of puts) {
    assertEquals(e.kind, "put", who);
    assertEquals(e.seq, expect, `${who}: gap or duplicate`);
    assertEquals(e.message, e.seq - 1, who);
    expect++;
  }
  assertEquals(expect - 1, last, `${who}: ends at the last put`);
}

Deno.test("Listeners joining during a burst of 5,000 puts get header, then no gap or duplicate", async () => {
  await using server = serve({ port: 0, ...engineOptions() });
  const [publisher, ...joiners] = await connectMany(server.addr.port, 7) as [
    RemoteStream,
    ...RemoteStream[],
  ];
  const raws = await Promise.all([connectRaw(server.addr.port), connectRaw(server.addr.port)]);
  try {
    await publisher.header("burst", "h");
    const N = 5000;
    const recs = joiners.map((_, i) => new Recorder(`J${i}`));
    const puts: Promise<number>[] = [];
    const joins: Promise<unknown>[] = [];
    // Joins start at different points of the burst, while its puts are in flight.
    for (let i = 0; i < N; i++) {
      puts.push(publisher.put("burst", i).then((at) => at.seq));
      if (i % 800 === 0 && i / 800 < joiners.length) {
        const j = i / 800;
        joins.push((joiners[j] as RemoteStream).listen("burst", recs[j] as Recorder));
      }
      if (i === 100) {
        joins.push(
          (raws[0] as typeof raws[0]).send({ action: "listen", stream: "burst", id: "r0" }),
        );
      }
      if (i === 2500) {
        joins.push(
          (raws[1] as typeof raws[0]).send({ action: "listen", stream: "burst", id: "r1" }),
        );
      }
      if (i % 1000 === 999) await puts[i - 500]; // let the joins race the rest
    }
    await Promise.all([...puts, ...joins]);
    for (const r of recs) {
      await r.waitForEvent((e) => e.seq === N); // a put, or the header of a join after the last
      assertGapless(r.events, N, r.name);
    }
    for (const [i, raw] of raws.entries()) {
      const frames = await raw.until((f) => f.action === "put" && f.seq === N && !f.header);
      const [header, ok, ...rest] = frames as [Frame, Frame, ...Frame[]];
      assertEquals([header.action, header.header, header.message], ["put", true, "h"]);
      assertEquals([ok.action, ok.id, ok.seq], ["ok", `r${i}`, header.seq]);
      const events = [header, ...rest].map((f) => ({
        kind: f.header ? "header" : "put",
        seq: f.seq,
        message: f.message,
      })) as StreamEvent[];
      assertGapless(events, N, `raw${i}`);
    }
  } finally {
    await closeAll([publisher, ...joiners]);
    await Promise.all(raws.map((r) => r.close()));
  }
});

Deno.test("RemoteStream serves 1,000 streams with several listener connections", async () => {
  await using server = serve({ port: 0, ...engineOptions() });
  const [publisher, ...listeners] = await connectMany(server.addr.port, 4) as [
    RemoteStream,
    ...RemoteStream[],
  ];
  try {
    const names = Array.from({ length: 1000 }, (_, i) => `stream-${i}`);
    const recs = listeners.map((_, i) => new Recorder(`L${i}`));
    await Promise.all(
      listeners.flatMap((l, i) => names.map((s) => l.listen(s, recs[i] as Recorder))),
    );
    for (const s of names) assertEquals(server.hub.info(s)?.listeners, listeners.length);
    const puts: Promise<number>[] = [];
    for (let k = 0; k < 2; k++) {
      for (const s of names) puts.push(publisher.put(s, k).then((at) => at.seq));
    }
    await Promise.all(puts);
    for (const r of recs) {
      await r.waitFor(names.length * 2);
      const per = new Map<string, [unknown, number][]>();
      for (const e of r.events) per.set(e.stream, [...per.get(e.stream) ?? [], [e.message, e.seq]]);
      assertEquals(per.size, names.length);
      for (const got of per.values()) assertEquals(got, [[0, 1], [1, 2]]);
    }
    assertEquals(server.hub.stats().listeners, names.length * listeners.length);
  } finally {
    await closeAll([publisher, ...listeners]);
  }
});

Deno.test("RemoteStream hangs up upstream when the last local queue of a stream leaves", async () => {
  await using server = serve({ port: 0, ...engineOptions() });
  await using remote = await RemoteStream.connect(addressOf(server));
  const count = listenersOf(server);
  const q1 = new Recorder("q1");
  const q2 = new Recorder("q2");
  await remote.listen("s", q1);
  await remote.listen("s", q2);
  assertEquals(count("s"), 1); // one connection, one upstream listener
  remote.hangup("s", q1);
  await sync(remote);
  assertEquals(count("s"), 1);
  await remote.put("s", "only q2");
  remote.hangup("s", q2);
  await sync(remote);
  assertEquals(count("s"), 0);
  await remote.put("s", "nobody");
  assertEquals(q1.events.map((e) => e.message), []);
  assertEquals(q2.events.map((e) => e.message), ["only q2"]);
});

Deno.test("RemoteStream.endqueue() hangs up upstream only the streams no other queue follows", async () => {
  await using server = serve({ port: 0, ...engineOptions() });
  await using remote = await RemoteStream.connect(addressOf(server));
  const count = listenersOf(server);
  const q3 = new Recorder("q3");
  const q4 = new Recorder("q4");
  for (const s of ["a", "b", "c"]) await remote.listen(s, q3);
  await remote.listen("b", q4);
  remote.endqueue(q3);
  await sync(remote);
  assertEquals([count("a"), count("b"), count("c")], [0, 1, 0]);
  for (const s of ["a", "b", "c"]) await remote.put(s, s);
  assertEquals(q3.events, []);
  assertEquals(q4.events.map((e) => e.message), ["b"]);
});

Deno.test("RemoteStream.delete() ends listeners; the name starts a new epoch from seq 1", async () => {
  await using server = serve({ port: 0, ...engineOptions() });
  await using publisher = await RemoteStream.connect(addressOf(server));
  await using listener = await RemoteStream.connect(addressOf(server));
  const rec = new Recorder();
  await publisher.header("job", "h");
  const first = await listener.listen("job", rec);
  assertEquals((await publisher.put("job", 1)).seq, 1);
  await publisher.delete("job");
  await rec.waitForEvent((e) => e.kind === "end");
  assertEquals(rec.events.map((e) => [e.kind, e.message]), [
    ["header", "h"],
    ["put", 1],
    ["end", null],
  ]);
  assertEquals(await seqOf(server.hub, "job"), undefined);
  assertEquals((await publisher.put("job", 2)).seq, 1);
  const again = new Recorder();
  const second = await listener.listen("job", again);
  assertNotEquals(second.epoch, first.epoch);
  assertEquals(second.seq, 1);
  await publisher.put("job", 3);
  const [ev] = await again.waitFor(1);
  assertEquals([ev?.kind, ev?.message, ev?.seq, ev?.epoch], ["put", 3, 2, second.epoch]);
  assertEquals(rec.events.length, 3); // the ended queue heard nothing more
});

Deno.test("RemoteStream listeners get header changes, and a cleared header as null", async () => {
  await using server = serve({ port: 0, ...engineOptions() });
  await using publisher = await RemoteStream.connect(addressOf(server));
  await using listener = await RemoteStream.connect(addressOf(server));
  const rec = new Recorder();
  await listener.listen("job", rec);
  await publisher.header("job", { state: "running" });
  await publisher.put("job", 1);
  await publisher.header("job", { state: "done" });
  await publisher.header("job", null);
  await publisher.put("job", 2);
  await rec.waitFor(5);
  assertEquals(rec.events.map((e) => [e.kind, e.message, e.seq]), [
    ["header", { state: "running" }, 0],
    ["put", 1, 1],
    ["header", { state: "done" }, 1],
    ["header", null, 1],
    ["put", 2, 2],
  ]);
});

Deno.test("RemoteStream gives a second local queue the header first", async () => {
  await using server = serve({ port: 0, ...engineOptions() });
  await using remote = await RemoteStream.connect(addressOf(server));
  await remote.header("job", "h1");
  const q1 = new Recorder("q1");
  await remote.listen("job", q1);
  await remote.put("job", 1);
  await remote.header("job", "h2");
  const q2 = new Recorder("q2");
  const at = await remote.listen("job", q2);
  assertEquals(at.seq, 1);
  await remote.put("job", 2);
  assertEquals(q2.events.map((e) => [e.kind, e.message, e.seq]), [
    ["header", "h2", 1],
    ["put", 2, 2],
  ]);
  assertEquals(q1.events.map((e) => [e.kind, e.message]), [
    ["header", "h1"],
    ["put", 1],
    ["header", "h2"],
    ["put", 2],
  ]);
  assertEquals(server.hub.info("job")?.listeners, 1);
});

Deno.test("RemoteStream: a queue joining from inside another's put does not get that put twice", async () => {
  await using server = serve({ port: 0, ...engineOptions() });
  await using remote = await RemoteStream.connect(addressOf(server));
  await remote.header("job", "h");
  const late = new Recorder("late");
  const trigger = {
    put(ev: StreamEvent) {
      if (ev.kind === "put" && ev.seq === 1) void remote.listen("job", late);
    },
  };
  await remote.listen("job", trigger);
  await remote.put("job", "one");
  await remote.put("job", "two");
  assertEquals(late.events.map((e) => [e.kind, e.message, e.seq]), [
    ["header", "h", 1],
    ["put", "two", 2],
  ]);
});

Deno.test("A peer that sends requests, then closes its sending side, gets every answer", async () => {
  await using server = serve({ port: 0, ...engineOptions() });
  await using raw = await connectRaw(server.addr.port);
  const lines = Array.from(
    { length: 50 },
    (_, i) => JSON.stringify({ action: "put", stream: "half-closed", message: i, id: i }) + "\n",
  );
  await raw.write(lines.join(""));
  await raw.conn.closeWrite();
  const frames = await raw.rest();
  assertEquals(frames.map((f) => [f.action, f.id, f.seq]), lines.map((_, i) => ["ok", i, i + 1]));
});

// ---- lifecycle ----

Deno.test("serve() on port 0 binds a free port on 127.0.0.1", async () => {
  await using a = serve({ port: 0, ...engineOptions() });
  await using b = serve({ port: 0, ...engineOptions() });
  assertEquals(a.addr.hostname, "127.0.0.1");
  assertGreater(a.addr.port, 0);
  assertNotEquals(a.addr.port, b.addr.port);
});

Deno.test("MessageServer.shutdown() flushes buffered output, then sends close", async () => {
  const server = serve({ port: 0, ...engineOptions() });
  const raw = await connectRaw(server.addr.port);
  try {
    await raw.send({ action: "listen", stream: "big", id: 1 });
    assertEquals((await raw.next()).action, "ok");
    // Queue far more than one socket write takes, then shut down before it is written.
    const payload = "x".repeat(1024);
    await putFlood(server.hub, "big", Array.from({ length: 2000 }, (_, i) => ({ i, payload })));
    const done = server.shutdown();
    assertEquals(server.shutdown(), done); // safe twice: the same shutdown
    const frames = await raw.rest();
    await done;
    await server.finished;
    const last = frames.pop();
    assertEquals(last, { action: "close", stream: null }); // a raw peer may be an original client
    assertEquals(frames.map((f) => (f.message as { i: number }).i), [...Array(2000).keys()]);
  } finally {
    await raw.close();
    await server.shutdown();
  }
});

Deno.test("MessageServer is closed by await using, and refuses connections after", async () => {
  let port = 0;
  let finished: Promise<void> | undefined;
  {
    await using server = serve({ port: 0, ...engineOptions() });
    port = server.addr.port;
    finished = server.finished;
  }
  await finished;
  await assertRejects(() => Deno.connect({ port }), Deno.errors.ConnectionRefused);
});

Deno.test("MessageServer shuts down when its signal aborts; listeners get close", async () => {
  const controller = new AbortController();
  const server = serve({ port: 0, ...engineOptions(), signal: controller.signal });
  await using raw = await connectRaw(server.addr.port);
  await raw.send({ action: "listen", stream: "job", id: 1 });
  assertEquals((await raw.next()).action, "ok");
  controller.abort();
  await server.finished;
  assertEquals(await raw.rest(), [{ action: "close", stream: null }]);
});

Deno.test("RemoteStream that may not reconnect reports the server's shutdown via closed()", async () => {
  const server = serve({ port: 0, ...engineOptions() });
  const remote = await RemoteStream.connect({ port: server.addr.port, maxReconnectAttempts: 0 });
  const inbox = new (await import("../mod.ts")).Inbox();
  await remote.listen("job", inbox);
  await server.shutdown();
  const why = await remote.closed();
  assert(why instanceof Error);
  // The local inbox ended too, with the reason (issue 12).
  const ended = await Array.fromAsync(inbox).then(() => undefined, (e: Error) => e);
  assertEquals(ended, why);
  await remote.close();
});

// ---- the command line ----

interface Spawned {
  child: Deno.ChildProcess;
  /** stdout lines, as they come. */
  lines: ReadableStreamDefaultReader<string>;
  stderr: Promise<string>;
}

function spawnServer(args: string[]): Spawned {
  const child = new Deno.Command(Deno.execPath(), {
    args: ["run", "-N", "server.ts", ...args],
    cwd: ROOT,
    env: { NO_COLOR: "1" },
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const lines = child.stdout
    .pipeThrough(new TextDecoderStream())
    .pipeThrough(new TextLineStream())
    .getReader();
  const stderr = new Response(child.stderr).text();
  return { child, lines, stderr };
}

async function runServer(
  args: string[],
): Promise<{ code: number; stdout: string; stderr: string }> {
  const out = await deadline(
    new Deno.Command(Deno.execPath(), {
      args: ["run", "-N", "server.ts", ...args],
      cwd: ROOT,
      env: { NO_COLOR: "1" },
      stdin: "null",
    }).output(),
    `server.ts ${args.join(" ")} to exit`,
  );
  const text = new TextDecoder();
  return { code: out.code, stdout: text.decode(out.stdout), stderr: text.decode(out.stderr) };
}

Deno.test("server.ts prints its address, serves with -N alone, and exits 0 on SIGTERM", async () => {
  const { child, lines, stderr } = spawnServer(["--port", "0", "--log-level", "warn"]);
  let raw: Awaited<ReturnType<typeof connectRaw>> | undefined;
  try {
    const first = await deadline(lines.read(), "the server's first stdout line");
    assertMatch(first.value ?? "", /^msgstream listening on tcp:\/\/127\.0\.0\.1:\d+$/);
    const port = Number((first.value ?? "").split(":").at(-1));
    raw = await connectRaw(port);
    await raw.send({ action: "listen", stream: "job", id: 1 });
    assertEquals((await raw.next()).action, "ok");
    await raw.send({ action: "put", stream: "job", message: "hi", id: 2 });
    assertEquals((await raw.next()).message, "hi");
    assertEquals((await raw.next()).action, "ok");
    child.kill("SIGTERM");
    assertEquals(await raw.rest(), [{ action: "close", stream: null }]);
    const status = await deadline(child.status, "the server to exit after SIGTERM");
    assertEquals(status.code, 0);
    assertEquals((await deadline(lines.read(), "the end of the server's stdout")).done, true);
    assertEquals(await stderr, "");
  } finally {
    await raw?.close();
    try {
      child.kill("SIGKILL");
    } catch {
      // already gone
    }
    lines.releaseLock();
    await child.stdout.cancel().catch(() => {});
    await child.status;
    await stderr.catch(() => {});
  }
});

Deno.test("server.ts --help and --version exit 0", async () => {
  const help = await runServer(["--help"]);
  assertEquals(help.code, 0);
  assertStringIncludes(help.stdout, "Usage:");
  assertStringIncludes(help.stdout, "--port");
  const version = await runServer(["--version"]);
  assertEquals(version.code, 0);
  const { version: v } = JSON.parse(await Deno.readTextFile(`${ROOT}deno.json`));
  assertEquals(version.stdout.trim(), `msgstream ${v}`);
});

Deno.test("server.ts exits 1 with why, in one line that points at --help, on bad arguments", async (t) => {
  for (
    const [args, why] of [
      [["--bogus"], 'Unknown argument "--bogus"'],
      [["--port", "abc"], "--port must be a non-negative integer"],
      [["--port", "70000"], "--port must be at most 65535"],
      [["--log-level", "loud"], "Unknown --log-level"],
    ] as const
  ) {
    await t.step(args.join(" "), async () => {
      const r = await runServer([...args]);
      assertEquals(r.code, 1);
      assertStringIncludes(r.stderr, why);
      assertEquals(r.stderr.trimEnd().split("\n").length, 1, r.stderr);
      assert(r.stderr.trimEnd().endsWith(" (see --help)"), r.stderr);
      assertEquals(r.stdout, "");
    });
  }
});
