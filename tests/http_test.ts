import {
  assert,
  assertEquals,
  assertExists,
  assertMatch,
  assertNotMatch,
  assertStringIncludes,
} from "@std/assert";
import { MessageStream } from "../mod.ts";
import { handler, type MessageHttpServer, serveHttp } from "../http.ts";
import { serve } from "../server.ts";

// ---------------------------------------------------------------------------------------------
// Helpers

interface SseBlock {
  id?: string;
  event?: string;
  data?: string;
  retry?: string;
  comment?: string;
  raw: string;
}

/** Reads an SSE response block by block (a block ends with a blank line). */
class SseReader {
  readonly #reader: ReadableStreamDefaultReader<string>;
  #buf = "";
  constructor(res: Response) {
    assertExists(res.body);
    this.#reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
  }
  /** The next block, or undefined at the end of the response. */
  async block(): Promise<SseBlock | undefined> {
    for (;;) {
      const i = this.#buf.indexOf("\n\n");
      if (i !== -1) {
        const raw = this.#buf.slice(0, i);
        this.#buf = this.#buf.slice(i + 2);
        const b: SseBlock = { raw };
        for (const line of raw.split("\n")) {
          if (line.startsWith(":")) b.comment = line.slice(1).trim();
          else {
            const c = line.indexOf(": ");
            const field = line.slice(0, c) as "id" | "event" | "data" | "retry";
            b[field] = line.slice(c + 2);
          }
        }
        return b;
      }
      const { done, value } = await this.#reader.read();
      if (done) return undefined;
      this.#buf += value;
    }
  }
  /** The next block that is an event (skips comments and `retry`). */
  async event(): Promise<SseBlock | undefined> {
    for (;;) {
      const b = await this.block();
      if (!b || b.event !== undefined) return b;
    }
  }
  cancel(): Promise<void> {
    return this.#reader.cancel();
  }
}

function sse(base: string, name: string, headers: Record<string, string> = {}, query = "") {
  return fetch(`${base}/streams/${encodeURIComponent(name)}${query}`, {
    headers: { accept: "text/event-stream", ...headers },
  });
}

async function openSse(
  base: string,
  name: string,
  headers: Record<string, string> = {},
  query = "",
): Promise<SseReader> {
  const res = await sse(base, name, headers, query);
  assertEquals(res.status, 200);
  assertEquals(res.headers.get("content-type"), "text/event-stream; charset=utf-8");
  return new SseReader(res);
}

function post(base: string, path: string, body: unknown, headers: Record<string, string> = {}) {
  return fetch(base + path, {
    method: "POST",
    headers: { "content-type": "application/json", ...headers },
    body: JSON.stringify(body),
  });
}

/** Asserts an error response: status, JSON `{code, message}`. */
async function assertError(res: Response, status: number, code: string): Promise<void> {
  const body = await res.json();
  assertEquals([res.status, body.code], [status, code], JSON.stringify(body));
  assertEquals(typeof body.message, "string");
  assertEquals(res.headers.get("content-type"), "application/json; charset=utf-8");
}

function start(hub = new MessageStream(), options = {}): [MessageHttpServer, string] {
  const server = serveHttp(hub, { port: 0, ...options });
  return [server, `http://127.0.0.1:${server.addr.port}`];
}

/** A raw TCP protocol connection: JSON lines out, JSON lines in. */
class Line {
  readonly conn: Deno.TcpConn;
  readonly #lines: ReadableStreamDefaultReader<string>;
  #buf = "";
  #pending: string[] = [];
  private constructor(conn: Deno.TcpConn) {
    this.conn = conn;
    this.#lines = conn.readable.pipeThrough(new TextDecoderStream()).getReader();
  }
  static async connect(port: number): Promise<Line> {
    return new Line(await Deno.connect({ hostname: "127.0.0.1", port }));
  }
  async send(frame: unknown): Promise<void> {
    await this.conn.write(new TextEncoder().encode(JSON.stringify(frame) + "\n"));
  }
  async read(): Promise<Record<string, unknown>> {
    for (;;) {
      const line = this.#pending.shift();
      if (line !== undefined) return JSON.parse(line);
      const { done, value } = await this.#lines.read();
      if (done) throw new Error("Connection closed");
      this.#buf += value;
      const parts = this.#buf.split("\n");
      this.#buf = parts.pop() as string;
      this.#pending.push(...parts.filter((p) => p.length > 0));
    }
  }
  async close(): Promise<void> {
    await this.#lines.cancel();
    try {
      this.conn.close();
    } catch {
      // closed
    }
  }
}

/** A WebSocket client that queues messages for awaiting. */
class Ws {
  readonly socket: WebSocket;
  readonly #queue: (string | ArrayBuffer)[] = [];
  #wake: (() => void) | undefined;
  readonly closed: Promise<CloseEvent>;
  private constructor(socket: WebSocket) {
    this.socket = socket;
    socket.onmessage = (e) => {
      this.#queue.push(e.data);
      this.#wake?.();
    };
    this.closed = new Promise((resolve) => {
      socket.onclose = (e) => {
        resolve(e);
        this.#wake?.();
      };
    });
  }
  static async open(url: string): Promise<Ws> {
    const socket = new WebSocket(url);
    const ws = new Ws(socket);
    await new Promise((resolve, reject) => {
      socket.onopen = resolve;
      socket.onerror = reject;
    });
    return ws;
  }
  send(frame: unknown): void {
    this.socket.send(typeof frame === "string" ? frame : JSON.stringify(frame));
  }
  async read(): Promise<Record<string, unknown>> {
    while (this.#queue.length === 0) {
      if (this.socket.readyState === WebSocket.CLOSED) throw new Error("WebSocket closed");
      await new Promise<void>((resolve) => this.#wake = resolve);
    }
    const data = this.#queue.shift();
    assertEquals(typeof data, "string", "the server sends text frames only");
    return JSON.parse(data as string);
  }
  async close(): Promise<void> {
    if (this.socket.readyState !== WebSocket.CLOSED) this.socket.close();
    await this.closed;
  }
}

// ---------------------------------------------------------------------------------------------
// SSE

Deno.test("GET /streams/{name} as SSE sends the header first, then puts and end, with ids", async () => {
  const hub = new MessageStream();
  const [server, base] = start(hub);
  await hub.header("job", { state: "running" });
  const reader = await openSse(base, "job");
  const first = await reader.block();
  assertEquals(first?.raw, "retry: 1000");
  const header = await reader.block();
  const epoch = hub.info("job")?.epoch;
  assertEquals(header?.raw, `id: ${epoch}:0\nevent: header\ndata: {"state":"running"}`);
  await hub.put("job", { done: 1 });
  await hub.put("job", "line\nbreak");
  await hub.header("job", null);
  await hub.delete("job");
  assertEquals((await reader.block())?.raw, `id: ${epoch}:1\nevent: put\ndata: {"done":1}`);
  assertEquals((await reader.block())?.raw, `id: ${epoch}:2\nevent: put\ndata: "line\\nbreak"`);
  assertEquals((await reader.block())?.raw, `id: ${epoch}:2\nevent: header\ndata: null`);
  assertEquals((await reader.block())?.raw, `id: ${epoch}:2\nevent: end\ndata: null`);
  assertEquals(await reader.block(), undefined, "the response ends after end");
  assertEquals(hub.stats().listeners, 0);
  await server.shutdown();
});

Deno.test("SSE resumes from Last-Event-ID without loss or duplicate", async () => {
  const hub = new MessageStream();
  const [server, base] = start(hub);
  await hub.header("job", "h");
  const first = await openSse(base, "job");
  assertEquals((await first.event())?.event, "header");
  for (let i = 1; i <= 3; i++) await hub.put("job", i);
  const seen: unknown[] = [];
  let lastId = "";
  for (let i = 1; i <= 3; i++) {
    const ev = await first.event();
    seen.push(JSON.parse(ev?.data ?? ""));
    lastId = ev?.id ?? "";
  }
  await first.cancel();
  // Missed while disconnected.
  for (let i = 4; i <= 6; i++) await hub.put("job", i);
  const second = await openSse(base, "job", { "last-event-id": lastId });
  await hub.put("job", 7);
  for (let i = 4; i <= 7; i++) {
    const ev = await second.event();
    assertEquals(ev?.event, "put");
    seen.push(JSON.parse(ev?.data ?? ""));
  }
  assertEquals(seen, [1, 2, 3, 4, 5, 6, 7]);
  await second.cancel();
  await server.shutdown();
});

Deno.test("SSE resume sends only the newest header change at the resume position", async () => {
  const hub = new MessageStream();
  const [server, base] = start(hub);
  await hub.put("job", 1);
  await hub.header("job", "A");
  await hub.header("job", "B");
  const epoch = hub.info("job")?.epoch;
  // The client last saw the join header B (id epoch:1): it must not see A again.
  const reader = await openSse(base, "job", { "last-event-id": `${epoch}:1` });
  await hub.put("job", 2);
  const got = [await reader.event(), await reader.event()].map((e) => `${e?.event}:${e?.data}`);
  assertEquals(got, ['header:"B"', "put:2"]);
  await reader.cancel();
  await server.shutdown();
});

Deno.test("SSE ?since= resumes; Last-Event-ID wins over it", async () => {
  const hub = new MessageStream();
  const [server, base] = start(hub);
  for (let i = 1; i <= 4; i++) await hub.put("job", i);
  const epoch = hub.info("job")?.epoch;
  const a = await openSse(base, "job", {}, `?since=${epoch}:2`);
  assertEquals((await a.event())?.data, "3");
  assertEquals((await a.event())?.data, "4");
  await a.cancel();
  const b = await openSse(base, "job", { "last-event-id": `${epoch}:3` }, `?since=${epoch}:0`);
  assertEquals((await b.event())?.data, "4");
  await b.cancel();
  await server.shutdown();
});

Deno.test("SSE sends reset, then the header, when the position is from another epoch", async () => {
  const hub = new MessageStream();
  const [server, base] = start(hub);
  await hub.header("job", "h");
  await hub.put("job", 1);
  const reader = await openSse(base, "job", { "last-event-id": "gone:5" });
  const reset = await reader.event();
  assertEquals(reset?.event, "reset");
  assertEquals(JSON.parse(reset?.data ?? ""), { reason: "epoch_changed" });
  assertEquals(reset?.id, `${hub.info("job")?.epoch}:1`);
  const header = await reader.event();
  assertEquals([header?.event, header?.data], ["header", '"h"']);
  await reader.cancel();
  await server.shutdown();
});

Deno.test("SSE sends comment heartbeats on an idle response", async () => {
  const [server, base] = start(new MessageStream(), { heartbeatInterval: 20 });
  const reader = await openSse(base, "quiet");
  let block = await reader.block();
  while (block && block.comment === undefined) block = await reader.block();
  assertEquals(block?.raw, ": hb");
  await reader.cancel();
  await server.shutdown();
});

Deno.test("SSE cuts a client that does not read with event: close slow_consumer", async () => {
  const hub = new MessageStream({ historyMessages: 10 });
  const [server, base] = start(hub, { maxSseBufferBytes: 64 * 1024 });
  const res = await sse(base, "flood");
  const big = "x".repeat(32 * 1024);
  // The client reads nothing, so the socket fills up and the response's buffer overflows.
  for (let i = 0; i < 20_000 && server.metrics.slowConsumers === 0; i++) {
    await hub.put("flood", big);
    if (i % 16 === 0) await new Promise((resolve) => setTimeout(resolve, 0));
  }
  assertEquals(server.metrics.slowConsumers, 1);
  assertEquals(hub.stats().listeners, 0, "a cut response stops listening at once");
  const reader = new SseReader(res);
  let last: SseBlock | undefined;
  for (let b = await reader.block(); b; b = await reader.block()) last = b;
  assertEquals(last?.event, "close");
  assertEquals(JSON.parse(last?.data ?? "").code, "slow_consumer");
  assertEquals(server.metrics.errors.slow_consumer, 1);
  await server.shutdown();
});

Deno.test("SSE client going away stops its listener", async () => {
  const hub = new MessageStream();
  const [server, base] = start(hub);
  const reader = await openSse(base, "job");
  await reader.block();
  assertEquals(hub.stats().listeners, 1);
  assertEquals(server.metrics.connections.sse, 1);
  await reader.cancel();
  while (hub.stats().listeners > 0) await new Promise((resolve) => setTimeout(resolve, 5));
  assertEquals(server.metrics.connections.sse, 0);
  await server.shutdown();
});

Deno.test("shutdown() ends SSE responses with event: close and WebSockets with close", async () => {
  const hub = new MessageStream();
  const [server, base] = start(hub);
  const reader = await openSse(base, "job");
  await reader.block();
  const ws = await Ws.open(`${base.replace("http", "ws")}/ws`);
  ws.send({ action: "listen", stream: "job", id: 1 });
  assertEquals((await ws.read()).action, "ok");
  const stopped = server.shutdown();
  const ev = await reader.event();
  assertEquals(ev?.event, "close");
  assertEquals(JSON.parse(ev?.data ?? "").code, "shutdown");
  assertEquals(await reader.block(), undefined);
  assertEquals((await ws.read()).action, "close");
  assertEquals((await ws.closed).code, 1000);
  await stopped;
  assertEquals(hub.stats().listeners, 0);
});

// ---------------------------------------------------------------------------------------------
// REST

Deno.test("REST puts, sets, reads, clears headers and deletes streams", async () => {
  const hub = new MessageStream();
  const [server, base] = start(hub);
  const seen: string[] = [];
  await hub.listen("job", { put: (ev) => seen.push(`${ev.kind}:${JSON.stringify(ev.message)}`) });

  let res = await post(base, "/streams/job", { done: 1 });
  assertEquals(res.status, 200);
  const put = await res.json();
  assertEquals(put, { seq: 1, epoch: hub.info("job")?.epoch });

  res = await fetch(`${base}/streams/job/header`, {
    method: "PUT",
    headers: { "content-type": "application/json" },
    body: '{"state":"running"}',
  });
  assertEquals(res.status, 204);
  res = await fetch(`${base}/streams/job/header`);
  assertEquals([res.status, await res.json()], [200, { state: "running" }]);

  res = await fetch(`${base}/streams/job`);
  assertEquals(await res.json(), {
    name: "job",
    listeners: 1,
    seq: 1,
    epoch: put.epoch,
    hasHeader: true,
  });

  res = await fetch(`${base}/streams/job/header`, { method: "DELETE" });
  assertEquals(res.status, 204);
  await assertError(await fetch(`${base}/streams/job/header`), 404, "not_found");

  res = await fetch(`${base}/streams/job`, { method: "DELETE" });
  assertEquals(res.status, 204);
  assertEquals(hub.info("job"), undefined);
  assertEquals(seen, ['put:{"done":1}', 'header:{"state":"running"}', "header:null", "end:null"]);
  await server.shutdown();
});

Deno.test("REST names are percent-decoded, so they may hold slashes", async () => {
  const hub = new MessageStream();
  const [server, base] = start(hub);
  const res = await post(base, `/streams/${encodeURIComponent("jobs/42 é")}`, 1);
  assertEquals(res.status, 200);
  await res.body?.cancel();
  assertEquals(hub.info("jobs/42 é")?.seq, 1);
  await server.shutdown();
});

Deno.test("GET /streams lists name, listeners, seq, epoch, header and message rate", async () => {
  const hub = new MessageStream();
  const [server, base] = start(hub);
  await hub.header("a", "h");
  await hub.listen("b", { put() {} });
  assertEquals(await (await fetch(`${base}/streams`)).json(), [
    { name: "a", listeners: 0, seq: 0, epoch: hub.info("a")?.epoch, hasHeader: true, rate: 0 },
    { name: "b", listeners: 1, seq: 0, epoch: hub.info("b")?.epoch, hasHeader: false, rate: 0 },
  ]);
  // The rate is measured between two samples at least half a second apart.
  const t0 = Date.now();
  for (let i = 0; i < 50; i++) await hub.put("b", i);
  while (Date.now() - t0 < 600) await new Promise((resolve) => setTimeout(resolve, 50));
  const list = await (await fetch(`${base}/streams`)).json();
  assert(list[1].rate > 0, `rate ${list[1].rate}`);
  assertEquals(list[0].rate, 0);
  await server.shutdown();
});

Deno.test("REST answers every error with JSON {code, message} and its status", async (t) => {
  const hub = new MessageStream({ maxStreamNameLength: 8 });
  const [server, base] = start(hub, { maxBodyBytes: 100 });
  await t.step("400 invalid_json", async () => {
    await assertError(
      await fetch(`${base}/streams/a`, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: "{nope",
      }),
      400,
      "invalid_json",
    );
  });
  await t.step("400 missing_message for an empty body", async () => {
    await assertError(
      await fetch(`${base}/streams/a`, {
        method: "POST",
        headers: { "content-type": "application/json" },
      }),
      400,
      "missing_message",
    );
  });
  await t.step("400 invalid_utf8", async () => {
    await assertError(
      await fetch(`${base}/streams/a`, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: new Uint8Array([0x22, 0xff, 0x22]),
      }),
      400,
      "invalid_utf8",
    );
  });
  await t.step("400 invalid_stream for a long name or bad escape", async () => {
    await assertError(await post(base, "/streams/nine-char", 1), 400, "invalid_stream");
    await assertError(await post(base, "/streams/%E0%A4%A", 1), 400, "invalid_stream");
  });
  await t.step("400 invalid_since", async () => {
    await assertError(await sse(base, "a", { "last-event-id": "no-seq" }), 400, "invalid_since");
    await assertError(await sse(base, "a", {}, "?since=e:-1"), 400, "invalid_since");
  });
  await t.step("404 not_found", async () => {
    await assertError(await fetch(`${base}/nothing`), 404, "not_found");
    await assertError(await fetch(`${base}/streams/a/b/c`), 404, "not_found");
    await assertError(await fetch(`${base}/streams/a/footer`), 404, "not_found");
    await assertError(await fetch(`${base}/streams/unknown`), 404, "not_found");
    await assertError(await fetch(`${base}/streams/unknown/header`), 404, "not_found");
  });
  await t.step("405 method_not_allowed with Allow", async () => {
    const res = await fetch(`${base}/streams`, { method: "POST" });
    assertEquals(res.headers.get("allow"), "GET");
    await assertError(res, 405, "method_not_allowed");
    const res2 = await fetch(`${base}/streams/a/header`, { method: "POST" });
    assertEquals(res2.headers.get("allow"), "GET, PUT, DELETE");
    await assertError(res2, 405, "method_not_allowed");
    await assertError(
      await fetch(`${base}/streams/a`, { method: "PATCH" }),
      405,
      "method_not_allowed",
    );
  });
  await t.step("413 payload_too_large", async () => {
    await assertError(await post(base, "/streams/a", "x".repeat(200)), 413, "payload_too_large");
    // Without Content-Length: a streamed body.
    const body = new ReadableStream({
      start(c) {
        c.enqueue(new TextEncoder().encode('"' + "x".repeat(150) + '"'));
        c.close();
      },
    });
    await assertError(
      await fetch(`${base}/streams/a`, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body,
      }),
      413,
      "payload_too_large",
    );
  });
  await t.step("415 unsupported_media_type", async () => {
    await assertError(
      await fetch(`${base}/streams/a`, {
        method: "POST",
        headers: { "content-type": "text/plain" },
        body: "1",
      }),
      415,
      "unsupported_media_type",
    );
  });
  await t.step("426 upgrade_required for /ws without an upgrade", async () => {
    await assertError(await fetch(`${base}/ws`), 426, "upgrade_required");
  });
  await t.step("errors are counted by code in /metrics", async () => {
    const text = await (await fetch(`${base}/metrics`)).text();
    assertStringIncludes(text, 'msgstream_errors_total{code="invalid_json"} 1');
    assertStringIncludes(text, 'msgstream_errors_total{code="not_found"} 5');
    assertStringIncludes(text, 'msgstream_errors_total{code="payload_too_large"} 2');
  });
  assertEquals(hub.stats().puts, 0);
  await server.shutdown();
});

Deno.test("REST and SSE check Bearer tokens with the TCP permissions", async (t) => {
  const hub = new MessageStream();
  const [server, base] = start(hub, {
    tokens: [
      { name: "pub", secret: "p-secret", publish: ["jobs.*"], subscribe: [] },
      { name: "sub", secret: "s-secret", publish: [], subscribe: ["jobs.*"] },
    ],
  });
  const pub = { authorization: "Bearer p-secret" };
  const sub = { authorization: "Bearer s-secret" };
  await hub.put("other", 1);
  await t.step("401 without or with a wrong token", async () => {
    const res = await post(base, "/streams/jobs.1", 1);
    assertEquals(res.headers.get("www-authenticate"), 'Bearer realm="msgstream"');
    await assertError(res, 401, "unauthorized");
    await assertError(
      await post(base, "/streams/jobs.1", 1, { authorization: "Bearer wrong" }),
      401,
      "unauthorized",
    );
    await assertError(await fetch(`${base}/streams`), 401, "unauthorized");
    await assertError(await fetch(`${base}/metrics`), 401, "unauthorized");
    await assertError(await sse(base, "jobs.1"), 401, "unauthorized");
  });
  await t.step("403 outside the token's patterns", async () => {
    await assertError(await post(base, "/streams/other", 1, pub), 403, "forbidden");
    await assertError(await post(base, "/streams/jobs.1", 1, sub), 403, "forbidden");
    await assertError(await sse(base, "jobs.1", pub), 403, "forbidden");
    await assertError(await fetch(`${base}/streams/other`, { headers: sub }), 403, "forbidden");
    await assertError(
      await fetch(`${base}/streams/jobs.1`, { method: "DELETE", headers: sub }),
      403,
      "forbidden",
    );
  });
  await t.step("permitted requests pass; ?token= works for EventSource", async () => {
    const reader = await openSse(base, "jobs.1", {}, "?token=s-secret");
    const res = await post(base, "/streams/jobs.1", "ok", pub);
    assertEquals(res.status, 200);
    await res.body?.cancel();
    assertEquals((await reader.event())?.data, '"ok"');
    await reader.cancel();
  });
  await t.step("GET /streams lists only streams the token may listen to", async () => {
    const list = await (await fetch(`${base}/streams`, { headers: sub })).json();
    assertEquals(list.map((s: { name: string }) => s.name), ["jobs.1"]);
  });
  await t.step("/healthz and the status page need no token", async () => {
    assertEquals((await fetch(`${base}/healthz`)).status, 200);
    const page = await fetch(`${base}/`);
    assertEquals(page.status, 200);
    await page.body?.cancel();
  });
  await server.shutdown();
});

// ---------------------------------------------------------------------------------------------
// Metrics, health, status page

Deno.test("GET /metrics speaks the Prometheus text format", async () => {
  const hub = new MessageStream();
  const [server, base] = start(hub);
  const reader = await openSse(base, "job");
  await reader.block();
  (await post(base, "/streams/job", { n: 1 })).body?.cancel();
  await reader.event();
  const res = await fetch(`${base}/metrics`);
  assertEquals(res.headers.get("content-type"), "text/plain; version=0.0.4; charset=utf-8");
  const text = await res.text();
  for (
    const line of [
      'msgstream_connections{door="sse"} 1',
      'msgstream_connections{door="websocket"} 0',
      'msgstream_connections{door="tcp"} 0',
      "msgstream_streams 1",
      "msgstream_listeners 1",
      "msgstream_messages_in_total 1",
      "msgstream_slow_consumer_disconnects_total 0",
      "# TYPE msgstream_bytes_out_total counter",
      "# TYPE msgstream_errors_total counter",
    ]
  ) assertStringIncludes(text, line + "\n");
  assertMatch(text, /^msgstream_messages_out_total [1-9]\d*$/m);
  assertMatch(text, /^msgstream_bytes_in_total 7$/m);
  assertMatch(text, /^msgstream_bytes_out_total [1-9]\d*$/m);
  assertMatch(text, /^msgstream_history_bytes [1-9]\d*$/m);
  // Every sample line is `name{labels} value`.
  for (const line of text.trimEnd().split("\n")) {
    if (!line.startsWith("#")) assertMatch(line, /^[a-z_]+(\{[a-z]+="[a-z_]+"\})? \d+(\.\d+)?$/);
  }
  await reader.cancel();
  await server.shutdown();
});

Deno.test("GET /healthz answers ok", async () => {
  const [server, base] = start();
  const res = await fetch(`${base}/healthz`);
  assertEquals([res.status, (await res.json()).status], [200, "ok"]);
  await server.shutdown();
});

Deno.test("GET / serves a self-contained status page", async () => {
  const [server, base] = start();
  const res = await fetch(`${base}/`);
  assertEquals(res.headers.get("content-type"), "text/html; charset=utf-8");
  const html = await res.text();
  assertStringIncludes(html, "<title>msgstream status</title>");
  assertStringIncludes(html, "new EventSource(");
  assertNotMatch(html, /(src|href)="(https?:)?\/\//, "no resource from another host");
  assertNotMatch(html, /<script[^>]+src=/, "scripts are inline");
  await server.shutdown();
});

// ---------------------------------------------------------------------------------------------
// WebSocket

Deno.test("WebSocket follows two streams on one socket with the TCP frames", async () => {
  const hub = new MessageStream();
  const [server, base] = start(hub);
  await hub.header("a", "ha");
  const ws = await Ws.open(`${base.replace("http", "ws")}/ws`);
  ws.send({ action: "listen", stream: "a", id: 1 });
  assertEquals(await ws.read(), {
    action: "put",
    stream: "a",
    message: "ha",
    header: true,
    seq: 0,
    epoch: hub.info("a")?.epoch,
  });
  assertEquals((await ws.read()).id, 1);
  ws.send({ action: "listen", stream: "b", id: 2 });
  assertEquals((await ws.read()).id, 2);
  ws.send({ action: "put", stream: "b", message: { x: 1 }, id: 3 });
  const got = [await ws.read(), await ws.read()];
  assertEquals(got.map((f) => f.action).sort(), ["ok", "put"]);
  (await post(base, "/streams/a", "from rest")).body?.cancel();
  const put = await ws.read();
  assertEquals([put.action, put.stream, put.message, put.seq], ["put", "a", "from rest", 1]);
  assertEquals(server.metrics.connections.websocket, 1);
  assertEquals(hub.info("a")?.listeners, 1);
  await ws.close();
  while (hub.stats().listeners > 0) await new Promise((resolve) => setTimeout(resolve, 5));
  assertEquals(server.metrics.connections.websocket, 0);
  await server.shutdown();
});

Deno.test("WebSocket answers bad frames with error codes", async (t) => {
  const [server, base] = start(new MessageStream(), { maxBodyBytes: 1000 });
  const ws = await Ws.open(`${base.replace("http", "ws")}/ws`);
  await t.step("binary message: invalid_frame", async () => {
    ws.socket.send(new Uint8Array([1, 2, 3]));
    assertEquals((await ws.read()).code, "invalid_frame");
  });
  await t.step("not JSON: invalid_json", async () => {
    ws.send("{nope");
    assertEquals((await ws.read()).code, "invalid_json");
  });
  await t.step("unknown action: unknown_action", async () => {
    ws.send({ action: "fly", id: 7 });
    const f = await ws.read();
    assertEquals([f.code, f.id], ["unknown_action", 7]);
  });
  await t.step("no stream: invalid_stream", async () => {
    ws.send({ action: "put", message: 1, id: 8 });
    assertEquals((await ws.read()).code, "invalid_stream");
  });
  await t.step("too large: line_too_long, then close 1009", async () => {
    ws.send(JSON.stringify({ action: "put", stream: "a", message: "é".repeat(600) }));
    assertEquals((await ws.read()).code, "line_too_long");
    assertEquals((await ws.read()).action, "close");
    assertEquals((await ws.closed).code, 1009);
  });
  await ws.close();
  await server.shutdown();
});

Deno.test("WebSocket needs hello with a token when tokens are set", async () => {
  const [server, base] = start(new MessageStream(), {
    tokens: [{ name: "t", secret: "s", publish: ["*"], subscribe: ["*"] }],
  });
  const ws = await Ws.open(`${base.replace("http", "ws")}/ws`);
  ws.send({ action: "put", stream: "a", message: 1, id: 1 });
  assertEquals((await ws.read()).code, "unauthorized");
  ws.send({ action: "hello", token: "s", id: 2 });
  assertEquals((await ws.read()).action, "ok");
  ws.send({ action: "put", stream: "a", message: 1, id: 3 });
  assertEquals((await ws.read()).seq, 1);
  await ws.close();
  await server.shutdown();
});

Deno.test("handler() refuses a WebSocket from a foreign origin", async () => {
  const handle = handler(new MessageStream());
  const res = await handle(
    new Request("http://127.0.0.1:1/ws", {
      headers: { upgrade: "websocket", origin: "http://elsewhere.example", host: "127.0.0.1:1" },
    }),
  );
  await assertError(res, 403, "forbidden");
  await handle.close();
});

// ---------------------------------------------------------------------------------------------
// One hub, many doors

Deno.test("serve({http}) shares one hub: TCP puts reach SSE, REST puts reach TCP", async () => {
  const server = serve({ port: 0, http: { port: 0 }, logLevel: "silent" });
  assertExists(server.http);
  const base = `http://127.0.0.1:${server.http.addr.port}`;
  const reader = await openSse(base, "job");
  const tcp = await Line.connect(server.addr.port);
  await tcp.send({ action: "listen", stream: "job", id: 1 });
  assertEquals((await tcp.read()).id, 1);

  await tcp.send({ action: "put", stream: "job", message: "via tcp" });
  const ev = await reader.event();
  assertEquals([ev?.event, ev?.data], ["put", '"via tcp"']);
  assertEquals((await tcp.read()).message, "via tcp");

  (await post(base, "/streams/job", "via rest")).body?.cancel();
  const frame = await tcp.read();
  assertEquals([frame.action, frame.message, frame.seq], ["put", "via rest", 2]);
  assertEquals((await reader.event())?.data, '"via rest"');

  const metrics = await (await fetch(`${base}/metrics`)).text();
  assertStringIncludes(metrics, 'msgstream_connections{door="tcp"} 1');
  assertStringIncludes(metrics, 'msgstream_connections{door="sse"} 1');

  const stopped = server.shutdown();
  assertEquals((await reader.event())?.event, "close");
  await reader.cancel();
  await tcp.close();
  await stopped;
});

Deno.test("server CLI --http-port serves HTTP and prints its address", async () => {
  const child = new Deno.Command(Deno.execPath(), {
    args: [
      "run",
      "-N",
      new URL("../server.ts", import.meta.url).pathname,
      "--port",
      "0",
      "--http-port",
      "0",
    ],
    stdout: "piped",
    stderr: "null",
    env: { NO_COLOR: "1" },
  }).spawn();
  const lines = child.stdout.pipeThrough(new TextDecoderStream()).getReader();
  let out = "";
  while (!/msgstream http on http:\/\/127\.0\.0\.1:\d+\n/.test(out)) {
    const { done, value } = await lines.read();
    if (done) break;
    out += value;
  }
  assertMatch(out, /^msgstream listening on tcp:\/\/127\.0\.0\.1:\d+$/m);
  const port = Number(/msgstream http on http:\/\/127\.0\.0\.1:(\d+)/.exec(out)?.[1]);
  const res = await fetch(`http://127.0.0.1:${port}/healthz`);
  assertEquals(res.status, 200);
  await res.body?.cancel();
  child.kill("SIGTERM");
  await lines.cancel();
  assertEquals((await child.status).code, 0);
});
