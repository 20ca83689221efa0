/**
 * Attacks on the HTTP door's transport (issue 11, round three), through real sockets: a
 * descriptor shortage shorter than the door's once-a-second watch, and requests pipelined by a
 * client that never reads its answers.
 */
import { assert, assertEquals } from "@std/assert";
import { start } from "./_ulimit.ts";
import { serve } from "../server.ts";
import { serveHttp } from "../http.ts";
import { MessageStream } from "../mod.ts";
import { HttpTransport } from "../http_server.ts";
import { deadline, poll } from "./_wait.ts";

const enc = new TextEncoder();
const linux = Deno.build.os === "linux";

/** GET /healthz on a new connection; its status, or 0 when none came within `ms`. */
async function healthz(port: number, ms: number): Promise<number> {
  const ctl = new AbortController();
  const timer = setTimeout(() => ctl.abort(), ms);
  try {
    const res = await fetch(`http://127.0.0.1:${port}/healthz`, { signal: ctl.signal });
    await res.body?.cancel();
    return res.status;
  } catch {
    return 0;
  } finally {
    clearTimeout(timer);
  }
}

Deno.test({
  name: "the HTTP door accepts again after descriptor shortages shorter than a second",
  ignore: !linux,
  sanitizeResources: false,
  async fn() {
    // The runtime's listener stops for good at an accept that fails for want of descriptors,
    // and says nothing. A shortage that is over before the door's once-a-second look left the
    // door deaf for ever: every request queued in the backlog, unanswered.
    const ulimit = 256;
    await using server = await start(["--log-level", "warn"], ulimit);
    for (let burst = 0; burst < 4; burst++) {
      const conns: Deno.Conn[] = [];
      for (let i = 0; i < ulimit + 40; i++) {
        try {
          const c = await deadline(
            Deno.connect({ hostname: "127.0.0.1", port: server.http }),
            "a connection",
          );
          conns.push(c);
          await c.write(enc.encode("GET /x"));
        } catch {
          break;
        }
      }
      await new Promise((r) => setTimeout(r, 300));
      for (const c of conns) c.close();
      await poll(
        async () => await healthz(server.http, 1000) === 200,
        () => `GET /healthz answered 200 after burst ${burst} (log: ${server.log.join(" | ")})`,
        { interval: 50 },
      );
    }
    assertEquals(server.exited(), false);
  },
});

/** Writes `count` copies of `request` on one new connection and never reads the answers. */
async function pipeline(port: number, request: string, count: number): Promise<Deno.TcpConn> {
  const conn = await Deno.connect({ hostname: "127.0.0.1", port });
  const bytes = enc.encode(request.repeat(count));
  // The server may close the connection before it has taken every byte.
  await conn.write(bytes).catch(() => 0);
  return conn;
}

/** Reads a connection to its end: the bytes, whether the server closed it. */
async function drain(conn: Deno.Conn): Promise<string> {
  let text = "";
  const decoder = new TextDecoder();
  const buf = new Uint8Array(65_536);
  while (true) {
    let n: number | null;
    try {
      n = await conn.read(buf);
    } catch {
      break; // reset: the server closed it with answers unread
    }
    if (n === null) break;
    text += decoder.decode(buf.subarray(0, n), { stream: true });
  }
  return text;
}

Deno.test("a connection that pipelines past --http-max-pipelined without reading is closed", async () => {
  await using server = serve({ port: 0, http: { port: 0, maxPipelined: 8 }, logLevel: "silent" });
  const port = server.http?.addr.port as number;
  const request = `GET /metrics HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\n\r\n`;
  // 2,000 requests in one write, none of the answers read: each was handled and its answer
  // (several KiB of metrics) queued on the connection, until memory ran out.
  const conn = await pipeline(port, request, 2000);
  await new Promise((r) => setTimeout(r, 200));
  const text = await deadline(drain(conn), "the server closing the connection");
  conn.close();
  const answered = text.split("HTTP/1.1 200 OK").length - 1;
  assert(answered <= 8, `${answered} answers`);
  const metrics = await (await fetch(`http://127.0.0.1:${port}/metrics`)).text();
  assertEquals(
    /msgstream_errors_total\{code="pipeline_too_deep"\} (\d+)/.exec(metrics)?.[1],
    "1",
  );
});

Deno.test("requests pipelined within --http-max-pipelined are all answered in order", async () => {
  await using server = serve({ port: 0, http: { port: 0, maxPipelined: 8 }, logLevel: "silent" });
  const port = server.http?.addr.port as number;
  const conn = await Deno.connect({ hostname: "127.0.0.1", port });
  let text = "";
  for (let i = 0; i < 8; i++) {
    text += `GET /healthz?n=${i} HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\n` +
      (i === 7 ? "Connection: close\r\n" : "") + "\r\n";
  }
  await conn.write(enc.encode(text));
  const got = await deadline(drain(conn), "eight answers and the close");
  conn.close();
  assertEquals(got.split("HTTP/1.1 200 OK").length - 1, 8, got);
});

Deno.test({
  name: "connections refused for --max-connections do not write a log line each",
  sanitizeResources: false,
  async fn() {
    // Refusals come at the rate a client connects: a line each let one client fill the log.
    await using server = await start(["--max-connections", "2"], 4096);
    const held: Deno.Conn[] = [];
    for (let i = 0; i < 2; i++) {
      held.push(await Deno.connect({ hostname: "127.0.0.1", port: server.tcp }));
    }
    const refused = 200;
    for (let i = 0; i < refused; i++) {
      const c = await Deno.connect({ hostname: "127.0.0.1", port: server.tcp });
      const text = await deadline(drain(c), "a refused connection to be closed");
      c.close();
      assertEquals(JSON.parse(text).limit, "max_connections");
    }
    const lines = server.log.filter((l) => l.includes("connections: refus"));
    assertEquals(lines.length, 1, lines.join("\n"));
    for (const c of held) c.close();
  },
});

Deno.test({
  name: "the HTTP door's descriptor warnings follow --log-format json",
  ignore: !linux,
  sanitizeResources: false,
  async fn() {
    // They were written as text lines into a JSON log (a log shipper drops or misreads them).
    const ulimit = 256;
    await using server = await start(["--log-format", "json", "--log-level", "warn"], ulimit);
    const conns: Deno.Conn[] = [];
    for (let i = 0; i < ulimit + 40; i++) {
      try {
        const c = await deadline(
          Deno.connect({ hostname: "127.0.0.1", port: server.http }),
          "a connection",
        );
        conns.push(c);
        await c.write(enc.encode("GET /x"));
      } catch {
        break;
      }
    }
    await poll(
      () => server.log.some((l) => l.includes("http accept failed")),
      () => `an accept warning (log: ${server.log.join(" | ")})`,
      { interval: 50 },
    );
    for (const c of conns) c.close();
    const warnings = server.log.filter((l) => l.includes("http accept"));
    for (const line of warnings) {
      const entry = JSON.parse(line);
      assertEquals(entry.level, "warn", line);
    }
  },
});

Deno.test("an SSE response cut for a client that reads nothing lets its socket go", async () => {
  const hub = new MessageStream();
  await using server = serveHttp(hub, {
    port: 0,
    heartbeatInterval: 100,
    maxSseBufferBytes: 4 << 20,
  });
  const conn = await Deno.connect({ hostname: "127.0.0.1", port: server.addr.port });
  await conn.write(enc.encode(
    `GET /streams/big HTTP/1.1\r\nHost: 127.0.0.1:${server.addr.port}\r\n` +
      "Accept: text/event-stream\r\n\r\n",
  ));
  await poll(() => hub.stats().streams === 1, "the SSE listener's stream");
  // Far more than the sockets' buffers and the response's bound, never read: the response is
  // cut (slow_consumer), and its socket stayed open as long as the client did, waiting to drain.
  const message = "x".repeat(60_000);
  for (let i = 0; i < 600; i++) {
    await hub.put("big", message);
    if (i % 50 === 49) await new Promise((r) => setTimeout(r, 10));
  }
  await poll(() => server.connections === 0, () => `${server.connections} sockets still open`, {
    interval: 50,
  });
  conn.close();
});

Deno.test("requests pipelined past --http-max-pipelined are not even parsed once the connection is closed", async () => {
  let handled = 0;
  const transport = new HttpTransport(() => {
    handled++;
    return Promise.resolve(new Response("x".repeat(5000)));
  }, { hostname: "127.0.0.1", port: 0, maxPipelined: 8 });
  try {
    const request = `GET /x HTTP/1.1\r\nHost: 127.0.0.1:${transport.addr.port}\r\n\r\n`;
    // 2,000 requests in one write: the runtime's parser took a whole read (64 KiB, about 1,600
    // of them) at once, making a request and a response object for each after the close.
    const conn = await pipeline(transport.addr.port, request, 2000);
    await deadline(drain(conn), "the server closing the connection");
    conn.close();
    assert(handled <= 8, `${handled} handled`);
    // At most one slice (4 KiB) of requests past the bound.
    const perSlice = Math.ceil(4096 / request.length) + 1;
    assert(transport.requests <= 8 + perSlice, `${transport.requests} requests parsed`);
  } finally {
    await transport.shutdown();
  }
});
