// The HTTP door bounds every phase of a connection (issue 11), tried through the real door with
// raw sockets: unfinished headers, an idle keep-alive connection and an unfinished body are cut
// at their timeouts; a header flood at its bound; --max-connections counts idle sockets; a
// half-open TLS handshake is cut; a fragmented WebSocket message over the limit closes its
// socket with 1009 as soon as the frame header that passes the limit arrives.
import { assert, assertEquals } from "@std/assert";
import { serveHttp } from "../http.ts";
import { HttpTransport } from "../http_server.ts";
import { MessageStream } from "../mod.ts";
import { rawWs, upgradeRequest } from "./_ws_raw.ts";
import { deadline, poll } from "./_wait.ts";

const enc = new TextEncoder();
const dec = new TextDecoder();

/** Reads everything until the server closes the connection. */
async function readToEnd(conn: Deno.Conn, what: string): Promise<string> {
  let text = "";
  const buf = new Uint8Array(65536);
  await deadline(
    (async () => {
      for (;;) {
        let n: number | null;
        try {
          n = await conn.read(buf);
        } catch {
          break; // reset: closed too
        }
        if (n === null) break;
        text += dec.decode(buf.subarray(0, n));
      }
    })(),
    what,
  );
  try {
    conn.close();
  } catch {
    // closed
  }
  return text;
}

async function connect(port: number, first?: string): Promise<Deno.Conn> {
  const conn = await Deno.connect({ hostname: "127.0.0.1", port });
  if (first) await conn.write(enc.encode(first));
  return conn;
}

async function writeAll(conn: Deno.Conn, bytes: Uint8Array): Promise<void> {
  let off = 0;
  while (off < bytes.length) off += await conn.write(bytes.subarray(off));
}

function statusOf(text: string): string {
  return text.split("\r\n")[0]?.split(" ")[1] ?? "";
}

Deno.test("A request whose headers do not all arrive gets 408 at the header timeout and is closed", async () => {
  await using server = serveHttp(new MessageStream(), {
    port: 0,
    headerTimeout: 300,
    requestTimeout: 5000,
  });
  const conn = await connect(server.addr.port, "GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n");
  const text = await readToEnd(conn, "the partial request to be cut");
  assertEquals(statusOf(text), "408");
});

Deno.test("An unfinished body gets 408 at the request timeout and is closed", async () => {
  await using server = serveHttp(new MessageStream(), {
    port: 0,
    headerTimeout: 200,
    requestTimeout: 400,
  });
  const conn = await connect(
    server.addr.port,
    "POST /streams/a HTTP/1.1\r\nHost: 127.0.0.1\r\ncontent-type: application/json\r\n" +
      'content-length: 100\r\n\r\n{"a"',
  );
  const text = await readToEnd(conn, "the unfinished body to be cut");
  assertEquals(statusOf(text), "408");
  // Nothing was put.
  assertEquals(server.hub.info("a"), undefined);
});

Deno.test("A keep-alive connection idle between requests is closed at the keep-alive timeout", async () => {
  await using server = serveHttp(new MessageStream(), { port: 0, keepAliveTimeout: 200 });
  const conn = await connect(
    server.addr.port,
    "GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
  );
  const text = await readToEnd(conn, "the idle connection to be closed");
  assertEquals(statusOf(text), "200");
  assertEquals(text.split("HTTP/1.1 ").length - 1, 1, "one response, then the close");
  await poll(() => server.connections === 0, "the socket to be forgotten");
});

Deno.test("Request headers over the head bound get 431 and a close", async () => {
  await using server = serveHttp(new MessageStream(), { port: 0, maxHeadBytes: 2048 });
  // Under the bound: served.
  let conn = await connect(
    server.addr.port,
    `GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nx-a: ${
      "a".repeat(1500)
    }\r\nconnection: close\r\n\r\n`,
  );
  assertEquals(statusOf(await readToEnd(conn, "the answer")), "200");
  // Over it (one header, then many): refused without waiting for the end of the head.
  conn = await connect(
    server.addr.port,
    `GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nx-a: ${"a".repeat(3000)}\r\n`,
  );
  assertEquals(statusOf(await readToEnd(conn, "the flood to be cut")), "431");
  conn = await connect(server.addr.port, "GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n");
  const flood = Array.from({ length: 200 }, (_, i) => `x-${i}: ${"b".repeat(20)}\r\n`).join("");
  try {
    await conn.write(enc.encode(flood));
  } catch {
    // cut while writing
  }
  assertEquals(statusOf(await readToEnd(conn, "the flood to be cut")), "431");
});

Deno.test("--max-connections counts idle sockets: one more gets 503, a bystander is served after they go", async () => {
  const hub = new MessageStream();
  await using server = serveHttp(hub, { port: 0, maxConnections: 3 });
  const port = server.addr.port;
  // Three sockets that send nothing.
  const idle = [await connect(port), await connect(port), await connect(port)];
  await poll(() => server.connections === 3, "three sockets counted");
  const over = await connect(port, "GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n");
  const text = await readToEnd(over, "the refusal");
  assertEquals(statusOf(text), "503");
  const body = JSON.parse(text.slice(text.indexOf("\r\n\r\n") + 4));
  assertEquals([body.code, body.limit], ["limit_exceeded", "max_connections"]);
  assertEquals(server.metrics.limits["max_connections"], 1);
  for (const c of idle) c.close();
  await poll(() => server.connections === 0, "the idle sockets to be forgotten");
  const res = await fetch(`http://127.0.0.1:${port}/healthz`);
  assertEquals(res.status, 200);
  await res.body?.cancel();
});

const OPENSSL = (() => {
  try {
    return new Deno.Command("openssl", { args: ["version"], stdout: "null", stderr: "null" })
      .outputSync().success;
  } catch {
    return false;
  }
})();

Deno.test({
  name: "A TLS handshake that never starts is cut at the handshake timeout",
  ignore: !OPENSSL,
  async fn() {
    const dir = await Deno.makeTempDir({ prefix: "msgstream_bounds_" });
    try {
      const r = await new Deno.Command("sh", {
        args: [new URL("../tools/tls_recipe.sh", import.meta.url).pathname, dir],
        stdout: "null",
        stderr: "piped",
      }).output();
      assert(r.success, dec.decode(r.stderr));
      await using server = serveHttp(new MessageStream(), {
        port: 0,
        cert: await Deno.readTextFile(`${dir}/server.pem`),
        key: await Deno.readTextFile(`${dir}/server-key.pem`),
        handshakeTimeout: 300,
      });
      const conn = await connect(server.addr.port);
      assertEquals(await readToEnd(conn, "the half-open handshake to be cut"), "");
      await poll(() => server.connections === 0, "the socket to be forgotten");
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
});

/** A masked client frame header (mask 0) for a payload of `len` bytes. */
function frameHeader(fin: boolean, opcode: number, len: number): Uint8Array {
  const h = new Uint8Array(14);
  h[0] = (fin ? 0x80 : 0) | opcode;
  h[1] = 0x80 | 127;
  new DataView(h.buffer).setBigUint64(2, BigInt(len));
  return h; // the last four bytes are the mask: zeros, so the payload goes as it is
}

/** Reads server frames until the close frame; returns the texts and the close code. */
async function readFrames(conn: Deno.Conn): Promise<{ texts: string[]; code: number }> {
  let buf = new Uint8Array(0);
  const texts: string[] = [];
  const chunk = new Uint8Array(65536);
  return await deadline(
    (async () => {
      for (;;) {
        while (buf.length >= 2) {
          let len = buf[1]! & 0x7f;
          let at = 2;
          if (len === 126) [len, at] = [(buf[2]! << 8) | buf[3]!, 4];
          else if (len === 127) throw new Error("unexpected large frame");
          if (buf.length < at + len) break;
          const payload = buf.subarray(at, at + len);
          const op = buf[0]! & 0x0f;
          if (op === 8) return { texts, code: (payload[0]! << 8) | payload[1]! };
          if (op === 1) texts.push(dec.decode(payload));
          buf = buf.slice(at + len);
        }
        const n = await conn.read(chunk);
        if (n === null) return { texts, code: 1006 };
        const next = new Uint8Array(buf.length + n);
        next.set(buf);
        next.set(chunk.subarray(0, n), buf.length);
        buf = next;
      }
    })(),
    "the close frame",
  );
}

Deno.test("A fragmented WebSocket message over the limit closes with 1009 when the frame that passes it starts", async () => {
  await using server = serveHttp(new MessageStream(), { port: 0, maxBodyBytes: 1 << 20 });
  const conn = await rawWs(server.addr.port);
  // 600 KB of a text message, then only the header of a continuation that would take it to
  // 1.2 MB: the server refuses it without waiting for (or keeping) that payload.
  const part = new Uint8Array(600_000).fill(0x61);
  await conn.write(frameHeader(false, 1, part.length));
  await writeAll(conn, part);
  await conn.write(frameHeader(false, 0, part.length));
  const { texts, code } = await readFrames(conn);
  assertEquals(code, 1009);
  assertEquals(texts.map((t) => [JSON.parse(t).action, JSON.parse(t).code]), [[
    "error",
    "line_too_long",
  ], ["close", undefined]]);
  conn.close();
  await poll(() => server.connections === 0, "the socket to be forgotten");
});

Deno.test("A WebSocket message under the limit in fragments is served", async () => {
  await using server = serveHttp(new MessageStream(), { port: 0, maxBodyBytes: 1 << 20 });
  const conn = await rawWs(server.addr.port);
  const text = '{"action":"put","stream":"frag","message":"' + "x".repeat(1000) + '","id":7}';
  const bytes = enc.encode(text);
  await conn.write(frameHeader(false, 1, 10));
  await conn.write(bytes.subarray(0, 10));
  await conn.write(frameHeader(true, 0, bytes.length - 10));
  await conn.write(bytes.subarray(10));
  await poll(() => server.hub.info("frag")?.seq === 1, "the put to arrive");
  // A close frame from the client (code 1000): the server answers with its own.
  const close = new Uint8Array([0x88, 0x82, 0, 0, 0, 0, 0x03, 0xe8]);
  await conn.write(close);
  const { code } = await readFrames(conn);
  assertEquals(code, 1000);
  conn.close();
});

Deno.test("A WebSocket upgrade past --max-connections gets 503 and no socket", async () => {
  await using server = serveHttp(new MessageStream(), { port: 0, maxConnections: 1 });
  const port = server.addr.port;
  const idle = await connect(port);
  await poll(() => server.connections === 1, "one socket counted");
  const over = await connect(port);
  await over.write(upgradeRequest(port));
  const text = await readToEnd(over, "the refusal");
  assertEquals(statusOf(text), "503");
  assertEquals(JSON.parse(text.slice(text.indexOf("\r\n\r\n") + 4)).limit, "max_connections");
  assertEquals(server.metrics.connections.websocket, 0);
  idle.close();
});

Deno.test("SSE responses and WebSockets outlive the header, request and keep-alive timeouts", async () => {
  const hub = new MessageStream();
  await using server = serveHttp(hub, {
    port: 0,
    headerTimeout: 100,
    requestTimeout: 150,
    keepAliveTimeout: 100,
  });
  const base = `http://127.0.0.1:${server.addr.port}`;
  const ws = new WebSocket(`${base.replace("http", "ws")}/ws`);
  await deadline(new Promise((r) => ws.onopen = r), "the WebSocket to open");
  const got: string[] = [];
  let wsClosed = false;
  ws.onmessage = (e) => got.push(e.data);
  ws.onclose = () => wsClosed = true;
  const res = await fetch(`${base}/streams/job`, { headers: { accept: "text/event-stream" } });
  const reader = res.body!.pipeThrough(new TextDecoderStream()).getReader();
  // Time passes: four times the longest of the timeouts, with nothing sent either way.
  await new Promise((r) => setTimeout(r, 600));
  ws.send(JSON.stringify({ action: "listen", stream: "job", id: 1 }));
  await poll(() => got.length === 1, "the listen's ok");
  await hub.put("job", { a: 1 });
  let text = "";
  await deadline(
    (async () => {
      while (!text.includes("event: put")) text += (await reader.read()).value ?? "";
    })(),
    "the SSE put",
  );
  await poll(() => got.length === 2, "the WebSocket put");
  assertEquals(got.map((f) => JSON.parse(f).action), ["ok", "put"]);
  assertEquals(wsClosed, false);
  await reader.cancel();
  ws.close();
  await deadline(new Promise((r) => ws.onclose = r), "the WebSocket to close");
});

Deno.test({
  name: "The transport's shutdown() lets an HTTPS request under way finish, then closes",
  ignore: !OPENSSL,
  async fn() {
    const dir = await Deno.makeTempDir({ prefix: "msgstream_bounds_" });
    try {
      const r = await new Deno.Command("sh", {
        args: [new URL("../tools/tls_recipe.sh", import.meta.url).pathname, dir],
        stdout: "null",
        stderr: "piped",
      }).output();
      assert(r.success, dec.decode(r.stderr));
      let arrived = false;
      const transport = new HttpTransport(async (req) => {
        arrived = true;
        return new Response(String((await req.arrayBuffer()).byteLength));
      }, {
        hostname: "127.0.0.1",
        port: 0,
        cert: await Deno.readTextFile(`${dir}/server.pem`),
        key: await Deno.readTextFile(`${dir}/server-key.pem`),
      });
      const conn = await Deno.connectTls({
        hostname: "localhost",
        port: transport.addr.port,
        caCerts: [await Deno.readTextFile(`${dir}/ca.pem`)],
      });
      // A body over the size read whole before routing: the handler runs as it streams in.
      const body = new Uint8Array(100_000).fill(0x61);
      await conn.write(enc.encode(
        `POST / HTTP/1.1\r\nHost: localhost\r\ncontent-length: ${body.length}\r\n\r\n`,
      ));
      await writeAll(conn, body.subarray(0, 1000));
      await poll(() => arrived, "the request to reach the handler");
      const stopped = transport.shutdown();
      await writeAll(conn, body.subarray(1000));
      const text = await readToEnd(conn, "the answer, then the close");
      assertEquals(statusOf(text), "200");
      assertEquals(text.slice(text.indexOf("\r\n\r\n") + 4), "100000");
      await deadline(stopped, "the shutdown");
      assertEquals(transport.connections, 0);
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
});
