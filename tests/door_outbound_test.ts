/**
 * WebSocket and SSE listeners that do not read (issue 11, item 4), through the real HTTP door:
 * frames are shared, not copied per listener; queued bytes count against the per-connection
 * bound (`slow_consumer` beyond) and are reported to the memory budget, which gets every byte
 * back when the listeners go; a reading listener beside them gets every put.
 */
import { assert, assertEquals } from "@std/assert";
import { TextLineStream } from "@std/streams/text-line-stream";
import { MessageStream } from "../mod.ts";
import { SseDoor } from "../sse.ts";
import { serveHttp } from "../http.ts";
import { Metrics } from "../metrics.ts";
import { Ws } from "./_http.ts";
import { deadline, poll, TIMEOUT, TimeoutError } from "./_wait.ts";

const serverPath = new URL("../server.ts", import.meta.url).pathname;
const enc = new TextEncoder();

interface Proc extends AsyncDisposable {
  tcp: number;
  http: number;
  /** VmRSS in KiB (0 where /proc is missing). */
  rssKiB(): number;
  /** The server's log lines. */
  log: string[];
  /** A metric's value from `/metrics` (the first sample whose line starts with `prefix `). */
  metric(prefix: string): Promise<number>;
}

/** Checks an asynchronous condition (a metric of another process) until it holds. */
async function until(test: () => Promise<boolean>, what: string): Promise<void> {
  const end = performance.now() + TIMEOUT;
  while (!(await test())) {
    if (performance.now() >= end) throw new TimeoutError(what, TIMEOUT);
    await new Promise((r) => setTimeout(r, 20));
  }
}

/** Starts `server.ts` with both doors on free ports and reads their ports. */
async function start(args: string[]): Promise<Proc> {
  const child = new Deno.Command(Deno.execPath(), {
    args: ["run", "-N", serverPath, "--port", "0", "--http-port", "0", ...args],
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const log: string[] = [];
  const logging = (async () => {
    const lines = child.stderr.pipeThrough(new TextDecoderStream()).pipeThrough(
      new TextLineStream(),
    );
    for await (const line of lines) log.push(line);
  })();
  const lines = child.stdout.pipeThrough(new TextDecoderStream()).pipeThrough(
    new TextLineStream(),
  ).getReader();
  let tcp = 0;
  let http = 0;
  await deadline(
    (async () => {
      while (!tcp || !http) {
        const { value, done } = await lines.read();
        if (done) throw new Error("the server exited before printing its addresses");
        tcp ||= Number(/listening on \w+:\/\/\S+:(\d+)/.exec(value)?.[1] ?? 0);
        http ||= Number(/http on https?:\/\/\S+:(\d+)/.exec(value)?.[1] ?? 0);
      }
    })(),
    "the server's addresses",
  );
  const draining = (async () => {
    while (!(await lines.read()).done);
  })();
  return {
    tcp,
    http,
    log,
    rssKiB() {
      try {
        const status = Deno.readTextFileSync(`/proc/${child.pid}/status`);
        return Number(/VmRSS:\s+(\d+)/.exec(status)?.[1] ?? 0);
      } catch {
        return 0;
      }
    },
    async metric(prefix: string) {
      const text = await (await fetch(`http://127.0.0.1:${http}/metrics`)).text();
      const line = text.split("\n").find((l) => l.startsWith(prefix + " "));
      assert(line !== undefined, `no metric ${prefix}`);
      return Number(line.slice(prefix.length + 1));
    },
    async [Symbol.asyncDispose]() {
      try {
        child.kill("SIGKILL");
      } catch {
        // gone already
      }
      await deadline(child.status, "the server to exit");
      await draining;
      await logging;
    },
  };
}

/** A raw WebSocket client: completes the handshake, sends one text frame, never reads again. */
async function rawWs(port: number, text: string): Promise<Deno.Conn> {
  const conn = await Deno.connect({ hostname: "127.0.0.1", port });
  await conn.write(enc.encode(
    `GET /ws HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\nUpgrade: websocket\r\n` +
      `Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n` +
      `Sec-WebSocket-Version: 13\r\n\r\n`,
  ));
  const b = new Uint8Array(1);
  let head = "";
  await deadline(
    (async () => {
      while (!head.endsWith("\r\n\r\n")) {
        if (await conn.read(b) === null) throw new Error("closed during the handshake");
        head += String.fromCharCode(b[0] as number);
      }
    })(),
    "the WebSocket handshake",
  );
  assert(head.startsWith("HTTP/1.1 101"), head.split("\r\n")[0]);
  const payload = enc.encode(text);
  assert(payload.length <= 125);
  const frame = new Uint8Array(6 + payload.length);
  frame.set([0x81, 0x80 | payload.length, 1, 2, 3, 4]);
  for (let i = 0; i < payload.length; i++) {
    frame[6 + i] = (payload[i] as number) ^ ((i % 4) + 1);
  }
  await conn.write(frame);
  return conn;
}

Deno.test("WebSockets that do not read are cut at their bound, a reading one gets every put, and the budget gets its bytes back", async () => {
  const BOUND = 2 << 20;
  await using p = await start(["--max-outbound-bytes", String(BOUND), "--log-level", "info"]);
  const N = 150;
  const rss0 = p.rssKiB();
  const stuck: Deno.Conn[] = [];
  for (let i = 0; i < N; i++) stuck.push(await rawWs(p.http, '{"action":"listen","stream":"w"}'));
  const reader = await Ws.open(`ws://127.0.0.1:${p.http}/ws`);
  reader.send({ action: "listen", stream: "w", id: 0 });
  assertEquals((await reader.read()).action, "ok");
  await until(
    async () => await p.metric("msgstream_listeners") === N + 1,
    "every socket listening",
  );
  const rssJoined = p.rssKiB();
  // 20 MB: far more than a socket's bound and what the kernel takes for a socket that does not
  // read, shared by 151 sockets.
  const COUNT = 200;
  const WINDOW = 5;
  const pub = await Deno.connect({ hostname: "127.0.0.1", port: p.tcp });
  const put = enc.encode(
    JSON.stringify({ action: "put", stream: "w", message: "y".repeat(100_000) }) + "\n",
  );
  const seqs: number[] = [];
  let sent = 0;
  while (seqs.length < COUNT) {
    // The reader stays within WINDOW frames of the publisher, far under its bound; the sockets
    // that do not read fall behind by everything (20 MB).
    while (sent < COUNT && sent - seqs.length < WINDOW) {
      let off = 0;
      while (off < put.byteLength) {
        off += await deadline(pub.write(put.subarray(off)), "the server to read a put");
      }
      sent++;
    }
    const f = await reader.read();
    if (f.action === "put") seqs.push(f.seq as number);
  }
  pub.close();
  assertEquals(seqs, Array.from({ length: COUNT }, (_, i) => i + 1), "the reader got every put");
  await until(
    async () => await p.metric("msgstream_slow_consumer_disconnects_total") === N,
    "every socket that does not read to be cut",
  );
  const rssPeak = p.rssKiB();
  // Cut sockets listen no more (they stay open until their peers go or stop answering pings:
  // a WebSocket closes by handshake).
  assertEquals(await p.metric("msgstream_listeners"), 1);
  for (const s of stuck) s.close();
  await reader.close();
  await until(
    async () => await p.metric('msgstream_connections{door="websocket"}') === 0,
    "every socket to be closed",
  );
  assertEquals(await p.metric('msgstream_memory_bytes{part="outbound"}'), 0);
  const rssAfter = p.rssKiB();
  // deno-lint-ignore no-console
  console.log(
    `${N} WebSockets that do not read, ${COUNT} x 100 KB published, bound ${BOUND}: ` +
      `RSS ${rss0} -> ${rssJoined} (joined) -> ${rssPeak} KiB (all cut); ${rssAfter} KiB after`,
  );
  if (rss0 > 0) {
    // Copies per socket took 290 MB for 5.5 MB before frames were shared.
    assert(rssPeak - rss0 < 150_000, `RSS grew ${rssPeak - rss0} KiB`);
  }
});

Deno.test("SSE responses share each event's bytes; a pull hands on at most 64 KiB; queued bytes are in the budget", async () => {
  const hub = new MessageStream();
  const door = new SseDoor(hub, new Metrics(), {
    heartbeatInterval: 60_000,
    retry: 1000,
    maxBufferBytes: 4 << 20,
  });
  const a = (await door.open("s", undefined)).body!.getReader();
  const b = (await door.open("s", undefined)).body!.getReader();
  // The joined blocks (with retry:) first.
  await deadline(a.read(), "a's first block");
  await deadline(b.read(), "b's first block");
  // Large blocks go on one per pull, as they are: both responses get the same bytes.
  for (let i = 0; i < 5; i++) await hub.put("s", "x".repeat(40_000));
  // Queued in both responses, the blocks count once in the budget.
  const outbound = hub.memory.outbound;
  assert(outbound > 5 * 40_000 && outbound < 5 * 40_200, `outbound ${outbound}`);
  for (let i = 0; i < 5; i++) {
    const x = await deadline(a.read(), "a's pull");
    const y = await deadline(b.read(), "b's pull");
    assertEquals(x.value === y.value, true, "both responses got the same bytes, not copies");
  }
  assertEquals(hub.memory.outbound, 0);
  // Small blocks are joined, at most 64 KiB at a time.
  for (let i = 0; i < 100; i++) await hub.put("s", "y".repeat(10_000));
  let pulled = 0;
  while (pulled < 100 * 10_000) {
    const { value } = await deadline(a.read(), "a pull");
    assert(value!.byteLength <= 64 * 1024, `a pull of ${value!.byteLength} bytes`);
    pulled += value!.byteLength;
  }
  await b.cancel();
  assertEquals(hub.memory.outbound, 0, "a cancelled response's queue leaves the budget");
  await a.cancel();
  door.cut();
});

Deno.test("An SSE response that does not read is cut at maxBufferBytes and its bytes leave the budget", async () => {
  const hub = new MessageStream();
  const metrics = new Metrics();
  const door = new SseDoor(hub, metrics, {
    heartbeatInterval: 60_000,
    retry: 1000,
    maxBufferBytes: 100_000,
  });
  const res = await door.open("s", undefined);
  for (let i = 0; i < 20 && metrics.slowConsumers === 0; i++) {
    await hub.put("s", "x".repeat(10_000));
  }
  assertEquals(metrics.slowConsumers, 1);
  assertEquals(hub.info("s")?.listeners, 0);
  // What is left is the joined block and the close block, for the client to read.
  const text = await deadline(new Response(res.body).text(), "the response's end");
  assert(text.includes("event: close") && text.includes('"code":"slow_consumer"'), text);
  assertEquals(hub.memory.outbound, 0);
  door.cut();
});

Deno.test("A WebSocket that does not read is cut once the memory budget is spent, below its own bound", async () => {
  // 1 MiB for everything the server keeps for clients; the socket's own bound is 8 MiB.
  const hub = new MessageStream({ maxMemory: 1 << 20 });
  await using server = serveHttp(hub, { port: 0 });
  const stuck = await rawWs(server.addr.port, '{"action":"listen","stream":"m"}');
  await poll(() => hub.info("m")?.listeners === 1, "the socket to listen");
  // 6 MB: under the socket's bound even if none of it left, far over the budget.
  for (let i = 0; i < 60 && server.metrics.slowConsumers === 0; i++) {
    await hub.put("m", "z".repeat(100_000));
    await new Promise((resolve) => setTimeout(resolve, 1));
  }
  assertEquals(server.metrics.slowConsumers, 1, "the socket was cut by the budget");
  assertEquals(hub.info("m")?.listeners, 0);
  assertEquals(hub.memory.outbound, 0);
  stuck.close();
});
