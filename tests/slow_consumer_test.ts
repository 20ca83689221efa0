/**
 * Slow consumers: a TCP connection that stops reading is cut once its outbound bound is
 * exceeded, while healthy listeners get everything and the server's memory stays bounded; an
 * in-process `Inbox` that overflows ends with `SlowConsumerError` after its buffered events
 * and is detached from its hub.
 *
 * @module
 */

import { assert, assertEquals, assertGreater, assertRejects } from "@std/assert";
import { Inbox, MessageStream, SlowConsumerError, type StreamEvent } from "../mod.ts";
import { serve } from "../server.ts";
import { RemoteStream } from "../client.ts";
import { collect } from "./_recorder.ts";
import { ServerProcess } from "./_server.ts";
import { deadline, TIMEOUT } from "./_wait.ts";

const encoder = new TextEncoder();

/** A lean raw listener: counts put frames and checks their seqs follow each other. */
class HealthyReader {
  readonly conn: Deno.TcpConn;
  count = 0;
  lastSeq = 0;
  error: string | undefined;
  readonly done: Promise<void>;
  #waiters: { seq: number; resolve: () => void }[] = [];

  constructor(conn: Deno.TcpConn) {
    this.conn = conn;
    this.done = this.#read();
  }

  async #read(): Promise<void> {
    const decoder = new TextDecoder();
    const buf = new Uint8Array(256 * 1024);
    let partial = "";
    try {
      for (;;) {
        const n = await this.conn.read(buf);
        if (n === null) break;
        partial += decoder.decode(buf.subarray(0, n), { stream: true });
        let start = 0;
        for (let i = partial.indexOf("\n"); i !== -1; i = partial.indexOf("\n", start)) {
          this.#line(partial.slice(start, i));
          start = i + 1;
        }
        partial = partial.slice(start);
        this.#wake();
      }
    } catch (e) {
      this.error ??= `read failed: ${(e as Error).message}`;
    }
    this.error ??= "connection ended";
    for (const w of this.#waiters.splice(0)) w.resolve();
  }

  #line(line: string): void {
    if (!line.startsWith('{"action":"put"')) {
      if (line.includes('"action":"error"')) this.error ??= line;
      return;
    }
    const at = line.lastIndexOf('"seq":');
    const seq = parseInt(line.slice(at + 6), 10);
    if (seq !== this.lastSeq + 1) this.error ??= `seq ${seq} after ${this.lastSeq}`;
    this.lastSeq = seq;
    this.count++;
  }

  #wake(): void {
    if (this.#waiters.length === 0) return;
    this.#waiters = this.#waiters.filter((w) => {
      if (this.lastSeq < w.seq && this.error === undefined) return true;
      w.resolve();
      return false;
    });
  }

  /** Resolves when the reader has seen `seq` (or failed); fails at the deadline. */
  reached(seq: number, ms: number = TIMEOUT): Promise<void> {
    if (this.lastSeq >= seq || this.error !== undefined) return Promise.resolve();
    return deadline(
      new Promise((resolve) => this.#waiters.push({ seq, resolve })),
      () => `a healthy reader to get seq ${seq} (it has ${this.lastSeq})`,
      ms,
    );
  }
}

async function writeAll(conn: Deno.Conn, bytes: Uint8Array): Promise<void> {
  let off = 0;
  while (off < bytes.byteLength) off += await conn.write(bytes.subarray(off));
}

/** Sends a listen with an id and reads until its `ok`; nothing else is read. */
async function listen(conn: Deno.TcpConn, stream: string): Promise<void> {
  await writeAll(conn, encoder.encode(JSON.stringify({ action: "listen", stream, id: 1 }) + "\n"));
  const buf = new Uint8Array(1);
  let line = "";
  await deadline(
    (async () => {
      while (!line.endsWith("\n")) {
        const n = await conn.read(buf);
        if (n === null) throw new Error("Connection ended before the listen was answered");
        line += String.fromCharCode(buf[0] as number);
      }
    })(),
    () => `the answer to a listen (read so far: ${JSON.stringify(line)})`,
  );
  assert(line.includes('"action":"ok"'), line);
}

const MESSAGES = 200_000;
const HEALTHY = 10;
const BATCH = 4_000;
const RSS_BOUND = 200 * 1024 * 1024;

Deno.test("A listener that stops reading is cut while healthy ones get every message and the server's memory stays bounded", async () => {
  await using server = await ServerProcess.start(["--max-outbound-bytes", String(1 << 20)]);
  const connect = () => Deno.connect({ hostname: "127.0.0.1", port: server.port });

  // The stalled reader listens, then never reads again.
  const stalled = await connect();
  await listen(stalled, "firehose");
  const healthy: HealthyReader[] = [];
  for (let i = 0; i < HEALTHY; i++) {
    const conn = await connect();
    await listen(conn, "firehose");
    healthy.push(new HealthyReader(conn));
  }
  const publisher = await connect();

  let peak = server.rss();
  const baseline = peak;
  const sampler = setInterval(() => peak = Math.max(peak, server.rss()), 20);
  using _sampling = { [Symbol.dispose]: () => clearInterval(sampler) }; // on failure too
  // When the cut is logged, for the report only: the assertion below has its own deadline.
  let cutAtSeq = 0;
  server.logged(/slow consumer/, "the slow consumer log line", 10 * TIMEOUT)
    .then(() => cutAtSeq = healthy[0]?.lastSeq ?? 0, () => {});

  // Batches: the next goes out when every healthy reader has the last, so that only the stalled
  // one falls behind. About 120 bytes a frame: 200,000 are ~24 MB, far more than the stalled
  // socket's kernel buffers and its 1 MiB outbound bound.
  const pad = "p".repeat(48);
  const t0 = performance.now();
  for (let sent = 0; sent < MESSAGES;) {
    let text = "";
    const end = Math.min(MESSAGES, sent + BATCH);
    for (; sent < end; sent++) {
      text += `{"action":"put","stream":"firehose","message":{"n":${sent + 1},"pad":"${pad}"}}\n`;
    }
    await writeAll(publisher, encoder.encode(text));
    await Promise.all(healthy.map((h) => h.reached(end)));
    for (const h of healthy) assertEquals(h.error, undefined);
  }
  const seconds = (performance.now() - t0) / 1000;
  // The log line may trail the last message.
  await server.logged(
    /slow consumer/,
    "the stalled listener to be cut (the server's slow consumer log line)",
  );
  clearInterval(sampler);
  peak = Math.max(peak, server.rss());

  for (const h of healthy) {
    assertEquals(h.error, undefined);
    assertEquals(h.count, MESSAGES);
    assertEquals(h.lastSeq, MESSAGES);
  }

  // The stalled reader now reads what reached it: an in-order prefix, then the end.
  const rest = new HealthyReader(stalled);
  await deadline(
    rest.done,
    () => `the stalled reader's connection to end (${rest.count} puts read)`,
  );
  assert(
    rest.error === "connection ended" || rest.error?.includes("slow_consumer") ||
      rest.error?.startsWith("read failed"),
    `stalled reader: ${rest.error}`,
  );
  assertGreater(rest.count, 0);
  assert(rest.count < MESSAGES, `the stalled reader got ${rest.count}: it was not cut`);
  assert(peak < RSS_BOUND, `server RSS peaked at ${mib(peak)}, the bound is ${mib(RSS_BOUND)}`);
  // deno-lint-ignore no-console
  console.log(
    `slow consumer: ${MESSAGES} messages to ${HEALTHY} healthy listeners in ${
      seconds.toFixed(1)
    } s; stalled reader cut after ~${cutAtSeq} puts having received ${rest.count} ` +
      `(slow_consumer frame: ${rest.error?.includes("slow_consumer") ? "yes" : "no"}); ` +
      `server RSS baseline ${mib(baseline)}, peak ${mib(peak)} (bound ${mib(RSS_BOUND)})`,
  );

  for (const h of healthy) h.conn.close();
  await deadline(Promise.all(healthy.map((h) => h.done)), "the healthy readers to stop");
  publisher.close();
});

function mib(bytes: number): string {
  return `${(bytes / (1024 * 1024)).toFixed(1)} MiB`;
}

Deno.test("Inbox overflow gives the buffered events, then SlowConsumerError, and detaches from the hub", async () => {
  const hub = new MessageStream();
  const inbox = new Inbox({ maxEvents: 100 });
  await hub.listen("a", inbox);
  await hub.listen("b", inbox);
  for (let i = 1; i <= 150; i++) await hub.put(i % 2 ? "a" : "b", i);
  assertEquals(hub.stats().listeners, 0, "detached from every stream at the overflow");
  assertEquals(hub.info("a")?.listeners, 0);
  const got = await collect(inbox, 100);
  assertEquals(got.map((e) => e.message), Array.from({ length: 100 }, (_, i) => i + 1));
  const reader = inbox.getReader();
  const err = await assertRejects(() => reader.read(), SlowConsumerError);
  assertEquals(err.limit, "events");
});

Deno.test("Inbox overflow by bytes reports the bytes limit", async () => {
  const hub = new MessageStream();
  const inbox = new Inbox({ maxBytes: 4096 });
  await hub.listen("a", inbox);
  for (let i = 1; i <= 100; i++) await hub.put("a", { i, pad: "x".repeat(100) });
  assertEquals(hub.stats().listeners, 0);
  const events: StreamEvent[] = [];
  const err = await assertRejects(async () => {
    for await (const ev of inbox) events.push(ev);
  }, SlowConsumerError);
  assertEquals(err.limit, "bytes");
  assertGreater(events.length, 0);
  assertEquals(
    events.map((e) => (e.message as { i: number }).i),
    Array.from({ length: events.length }, (_, k) => k + 1),
  );
});

Deno.test("Inbox overflow on a RemoteStream hangs up upstream and keeps the other queues", async () => {
  await using server = serve({ port: 0 });
  await using remote = await RemoteStream.connect({ port: server.addr.port });
  const small = new Inbox({ maxEvents: 10 });
  const big = new Inbox();
  await remote.listen("a", small);
  await remote.listen("a", big);
  for (let i = 1; i <= 50; i++) await remote.put("a", i);
  const all = await collect(big, 50);
  assertEquals(all.map((e) => e.message), Array.from({ length: 50 }, (_, i) => i + 1));
  assertEquals(server.hub.info("a")?.listeners, 1, "the big inbox still follows");
  const first = await collect(small, 10);
  assertEquals(first.map((e) => e.message), Array.from({ length: 10 }, (_, i) => i + 1));
  await assertRejects(() => small.getReader().read(), SlowConsumerError);
  big.close();
  // The last local queue gone, the client hangs up upstream.
  const reader = big.getReader();
  assertEquals((await reader.read()).done, true);
  await remote.put("a", "sync"); // requests are answered in order: the hangup went first
  assertEquals(server.hub.info("a")?.listeners ?? 0, 0);
});
