/**
 * The reconnecting client: `RemoteStream` survives a cut connection and a server restart,
 * resumes every followed stream from the last position it delivered, buffers requests while
 * disconnected, reports its lifecycle through `status()` and gives up after
 * `maxReconnectAttempts`.
 *
 * Connections are cut by a small TCP proxy between the client and the server: closing the
 * proxy's sockets is, to the client, the server cutting its connection.
 *
 * @module
 */

import { assert, assertEquals, assertInstanceOf, assertRejects } from "@std/assert";
import { syncOf } from "../core.ts";
import { Inbox, MessageStream, type StreamEvent } from "../mod.ts";
import { type MessageServer, serve } from "../server.ts";
import { ProtocolError, RemoteStream, type Status } from "../client.ts";
import { collect, Recorder } from "./_recorder.ts";
import { TcpProxy } from "./_proxy.ts";
import { deadline } from "./_wait.ts";

/** Records a client's status changes; tests await one (each wait has a deadline). */
class StatusLog {
  readonly seen: Status[] = [];
  readonly #done: Promise<void>;
  #waiters: { type: Status["type"]; after: number; resolve: (s: Status) => void }[] = [];

  constructor(remote: RemoteStream) {
    this.#done = (async () => {
      for await (const s of remote.status()) {
        this.seen.push(s);
        this.#waiters = this.#waiters.filter((w) => {
          if (s.type !== w.type || this.seen.length <= w.after) return true;
          w.resolve(s);
          return false;
        });
      }
    })();
  }

  /** The types seen so far. */
  get types(): string[] {
    return this.seen.map((s) => s.type);
  }

  /** Resolves when the status iterable ends (the client closed). */
  get done(): Promise<void> {
    return deadline(this.#done, () => `the client's status() to end (seen: ${this.types})`);
  }

  /** Resolves with the next status of `type` (seen after the current end of the log). */
  next(type: Status["type"]): Promise<Status> {
    const after = this.seen.length;
    return deadline(
      new Promise((resolve) => this.#waiters.push({ type, after, resolve })),
      () => `status "${type}" after ${after} statuses (seen: ${this.types})`,
    );
  }
}

const FAST = { reconnectTimeWait: 50, reconnectJitter: 10 } as const;

function messages(events: StreamEvent[]): unknown[] {
  return events.map((e) => e.message);
}

const reconnectTimes: number[] = [];

Deno.test("RemoteStream reconnects after its connection is cut and delivers no gap and no duplicate", async () => {
  await using server = serve({ port: 0 });
  await using proxy = new TcpProxy(server.addr.port);
  await using remote = await RemoteStream.connect({ port: proxy.port, ...FAST });
  const log = new StatusLog(remote);
  const hub = server.hub;
  await hub.header("job", "h");
  const inbox = new Inbox();
  await remote.listen("job", inbox);
  for (let i = 1; i <= 5; i++) await hub.put("job", i);
  assertEquals(messages(await collect(inbox, 6)), ["h", 1, 2, 3, 4, 5]);

  for (let round = 0; round < 3; round++) {
    const disconnected = log.next("disconnected");
    const connected = log.next("connected");
    proxy.cut();
    await disconnected;
    const t0 = performance.now();
    // Missed while disconnected: history covers it.
    for (let i = 0; i < 5; i++) await hub.put("job", `r${round}.${i}`);
    await connected;
    reconnectTimes.push(performance.now() - t0);
    for (let i = 5; i < 10; i++) await hub.put("job", `r${round}.${i}`);
    const got = await collect(inbox, 10);
    assertEquals(messages(got), Array.from({ length: 10 }, (_, i) => `r${round}.${i}`));
    assertEquals(got.map((e) => e.kind), Array(10).fill("put"));
  }
  assertEquals(inbox.size, 0, "nothing more: no duplicate");
  assertEquals(proxy.accepted, 4);
  inbox.close();
  await remote.close();
  await log.done;
  assertEquals(log.types, [
    ...["disconnected", "reconnecting", "connecting", "connected"],
    ...["disconnected", "reconnecting", "connecting", "connected"],
    ...["disconnected", "reconnecting", "connecting", "connected"],
    "closed",
  ]);
  // deno-lint-ignore no-console
  console.log(
    `reconnect time (disconnected -> connected, reconnectTimeWait 50 ms): ${
      reconnectTimes.map((t) => t.toFixed(1)).join(", ")
    } ms`,
  );
});

Deno.test("RemoteStream resumes across a server restart that keeps the hub", async () => {
  const hub = new MessageStream();
  let server: MessageServer = serve({ port: 0, hub });
  const port = server.addr.port;
  try {
    await using remote = await RemoteStream.connect({ port, ...FAST, maxReconnectAttempts: -1 });
    const log = new StatusLog(remote);
    const rec = new Recorder();
    await hub.header("job", "h");
    await remote.listen("job", rec);
    await hub.put("job", 1);
    await rec.waitFor(2);

    const disconnected = log.next("disconnected");
    await server.shutdown();
    await disconnected;
    await hub.put("job", 2); // while no server runs
    await hub.put("job", 3);
    const connected = log.next("connected");
    server = serve({ port, hub });
    await connected;
    await hub.put("job", 4);
    await rec.waitFor(5);
    assertEquals(rec.events.map((e) => [e.kind, e.message]), [
      ["header", "h"],
      ["put", 1],
      ["put", 2],
      ["put", 3],
      ["put", 4],
    ]);
    await remote.close();
    await log.done;
    assert(log.types.includes("reconnecting"));
  } finally {
    await server.shutdown();
  }
});

Deno.test("RemoteStream gets reset, then the header, when a restarted server lost the history", async () => {
  let server: MessageServer = serve({ port: 0 });
  const port = server.addr.port;
  try {
    await using remote = await RemoteStream.connect({ port, ...FAST, maxReconnectAttempts: -1 });
    const log = new StatusLog(remote);
    const rec = new Recorder();
    await server.hub.header("job", "h0");
    await remote.listen("job", rec);
    await server.hub.put("job", 1);
    await rec.waitFor(2);

    const disconnected = log.next("disconnected");
    await server.shutdown();
    await disconnected;
    const fresh = new MessageStream();
    await fresh.header("job", "h1");
    await fresh.put("job", "a");
    const connected = log.next("connected");
    server = serve({ port, hub: fresh });
    await connected;
    await fresh.put("job", "b");
    await rec.waitFor(5);
    const epoch = fresh.info("job")?.epoch;
    assertEquals(rec.events.slice(2).map((e) => [e.kind, e.message, e.seq, e.epoch]), [
      ["reset", { reason: "epoch_changed" }, 1, epoch],
      ["header", "h1", 1, epoch],
      ["put", "b", 2, epoch],
    ]);
    await remote.close();
    await log.done;
  } finally {
    await server.shutdown();
  }
});

Deno.test("RemoteStream gets reset when the history no longer covers the outage", async () => {
  await using server = serve({ port: 0, historyMessages: 3 });
  await using proxy = new TcpProxy(server.addr.port);
  await using remote = await RemoteStream.connect({ port: proxy.port, ...FAST });
  const log = new StatusLog(remote);
  const rec = new Recorder();
  await server.hub.header("job", "h");
  await remote.listen("job", rec);
  await server.hub.put("job", 1);
  await rec.waitFor(2);
  const disconnected = log.next("disconnected");
  proxy.cut();
  await disconnected;
  const connected = log.next("connected");
  // Missed while disconnected (the reconnect waits for a timer; these puts do not).
  for (let i = 2; i <= 10; i++) await server.hub.put("job", i);
  await connected;
  await server.hub.put("job", 11);
  await rec.waitForEvent((e) => e.message === 11);
  assertEquals(rec.events.map((e) => [e.kind, e.message, e.seq]), [
    ["header", "h", 0],
    ["put", 1, 1],
    ["reset", { reason: "history_trimmed" }, 10],
    ["header", "h", 10],
    ["put", 11, 11],
  ]);
  await remote.close();
  await log.done;
});

Deno.test("RemoteStream sends puts made while disconnected after the reconnect", async () => {
  const hub = new MessageStream();
  let server: MessageServer = serve({ port: 0, hub });
  const port = server.addr.port;
  try {
    await using remote = await RemoteStream.connect({ port, ...FAST, maxReconnectAttempts: -1 });
    const log = new StatusLog(remote);
    assertEquals((await remote.put("job", 0)).seq, 1);
    const disconnected = log.next("disconnected");
    await server.shutdown();
    await disconnected;
    const puts = [1, 2, 3].map((i) => remote.put("job", i).then((at) => at.seq));
    const header = remote.header("job", "while down");
    assertEquals(hub.info("job")?.seq, 1, "nothing reached the hub yet");
    server = serve({ port, hub });
    assertEquals(await deadline(Promise.all(puts), "the buffered puts to be answered"), [2, 3, 4]);
    await deadline(header, "the buffered header to be answered");
    assertEquals(hub.info("job")?.hasHeader, true);
    await remote.close();
    await log.done;
  } finally {
    await server.shutdown();
  }
});

Deno.test("RemoteStream fails a put written but unanswered when the connection drops, and does not resend it", async () => {
  await using server = serve({ port: 0 });
  await using proxy = new TcpProxy(server.addr.port);
  await using remote = await RemoteStream.connect({ port: proxy.port, ...FAST });
  const log = new StatusLog(remote);
  assertEquals((await remote.put("job", "first")).seq, 1);
  proxy.swallow = true;
  const before = proxy.bytesUp;
  const lost = remote.put("job", "lost");
  const header = remote.header("job", "retried"); // idempotent: sent again after the reconnect
  await proxy.upstreamBytes(before); // written to the socket, never to reach the server
  const connected = log.next("connected");
  proxy.swallow = false;
  proxy.cut();
  const err = await assertRejects(() => deadline(lost, "the lost put to fail"), ProtocolError);
  assertEquals(err.code, "not_connected");
  await deadline(header, "the header to be resent and answered");
  await connected;
  assertEquals(server.hub.info("job")?.seq, 1, "the lost put was not resent");
  assertEquals(server.hub.info("job")?.hasHeader, true);
  assertEquals((await remote.put("job", "after")).seq, 2);
  await remote.close();
  await log.done;
});

Deno.test("RemoteStream.status() reports connecting, connected, disconnected, reconnecting and closed", async () => {
  const hub = new MessageStream();
  let server: MessageServer = serve({ port: 0, hub });
  const port = server.addr.port;
  try {
    await using remote = await RemoteStream.connect({ port, ...FAST, maxReconnectAttempts: -1 });
    const log = new StatusLog(remote);
    const second = log.next("reconnecting").then(() => log.next("reconnecting"));
    await server.shutdown();
    await second; // at least two refused attempts
    const connected = log.next("connected");
    server = serve({ port, hub });
    await connected;
    await remote.close();
    await log.done;
    const types = log.types;
    assertEquals(types[0], "disconnected");
    assertEquals(types.at(-1), "closed");
    assertEquals(types.at(-2), "connected");
    assertEquals(types.at(-3), "connecting");
    const attempts = log.seen.filter((s) => s.type === "reconnecting").map((s) => s.attempt);
    assert(attempts.length >= 2);
    assertEquals(attempts, attempts.map((_, i) => i + 1), "attempts count from 1");
    assertEquals(log.seen.at(-1)?.error, undefined, "closed on request: no error");
  } finally {
    await server.shutdown();
  }
});

Deno.test("RemoteStream.closed() resolves with an Error after maxReconnectAttempts", async () => {
  const server = serve({ port: 0 });
  const remote = await RemoteStream.connect({
    port: server.addr.port,
    ...FAST,
    maxReconnectAttempts: 3,
  });
  const log = new StatusLog(remote);
  const inbox = new Inbox();
  await remote.listen("job", inbox);
  await server.shutdown();
  const pending = remote.put("job", 1).catch((e) => e);
  const why = await deadline(remote.closed(), "the client to give up reconnecting");
  assertInstanceOf(why, Error);
  await log.done;
  assertEquals(log.seen.filter((s) => s.type === "reconnecting").length, 3);
  const last = log.seen.at(-1);
  assertEquals(last?.type, "closed");
  assertEquals(last?.error, why);
  const putError = await deadline(pending, "the pending put to fail");
  assertInstanceOf(putError, ProtocolError);
  // Local inboxes end with the reason, after their events (none here): issue 12.
  const ended = await deadline(
    Array.fromAsync(inbox).then(() => undefined, (e: Error) => e),
    "the inbox to end",
  );
  assertEquals(ended, why, "local inboxes end with the reason");
  await assertRejects(() => remote.put("job", 2), ProtocolError);
  await remote.close(); // safe after giving up
});

Deno.test("RemoteStream keeps one connection when a reconnect attempt is accepted and cut at once", async () => {
  await using server = serve({ port: 0 });
  await using proxy = new TcpProxy(server.addr.port);
  await using remote = await RemoteStream.connect({
    port: proxy.port,
    ...FAST,
    maxReconnectAttempts: -1,
  });
  const log = new StatusLog(remote);
  const rec = new Recorder();
  await remote.listen("job", rec);
  await server.hub.put("job", 1);
  await rec.waitFor(1);
  proxy.refuse = true;
  const twoFailures = log.next("reconnecting").then(() => log.next("reconnecting")).then(() =>
    log.next("reconnecting")
  );
  proxy.cut();
  await twoFailures;
  const connected = log.next("connected");
  proxy.refuse = false;
  await connected;
  await server.hub.put("job", 2);
  await rec.waitFor(2);
  // Let any stray reconnect loop show itself: it would open a second connection.
  for (let i = 0; i < 5; i++) {
    await new Promise((r) => setTimeout(r, 60));
  }
  assertEquals(proxy.open, 1, "exactly one connection");
  assertEquals(server.hub.info("job")?.listeners, 1);
  assertEquals(messages(rec.events), [1, 2]);
  await remote.close();
  await log.done;
});

Deno.test("RemoteStream.connect() fails with not_connected, and stops, when the server cuts it before hello", async () => {
  await using server = serve({ port: 0 });
  await using proxy = new TcpProxy(server.addr.port);
  proxy.refuse = true;
  const err = await assertRejects(
    () => RemoteStream.connect({ port: proxy.port, ...FAST }),
    ProtocolError,
  );
  assertEquals(err.code, "not_connected");
  // No reconnect loop is left behind: the sanitizers would see its timer.
});

Deno.test("RemoteStream.listen() right after a hangup gets no frame of the old subscription", async () => {
  await using server = serve({ port: 0 });
  await using remote = await RemoteStream.connect({ port: server.addr.port, ...FAST });
  const hub = server.hub;
  await hub.header("job", "h");
  const old = new Recorder();
  await remote.listen("job", old);
  await old.waitFor(1);
  // Frames of the old subscription are under way when it hangs up and listens again.
  const sync = syncOf(hub);
  for (let i = 1; i <= 200; i++) sync?.putNow("job", i);
  remote.hangup("job", old);
  const fresh = new Recorder();
  const at = await remote.listen("job", fresh);
  assertEquals(at.seq, 200);
  sync?.putNow("job", 201);
  await fresh.waitForEvent((e) => e.message === 201);
  assertEquals(fresh.events.map((e) => [e.kind, e.message, e.seq]), [
    ["header", "h", 200],
    ["put", 201, 201],
  ]);
});
