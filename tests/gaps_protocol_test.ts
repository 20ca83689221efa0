/**
 * Issue 12, protocol faults: HEAD on every GET route (and `Allow` lists it), whitespace-only
 * lines ignored on TCP and WebSocket, one ping per `pingInterval`, WebSocket close code 1001 on
 * shutdown, `Authorization: Bearer` on the WebSocket upgrade.
 *
 * @module
 */

import { assert, assertEquals } from "@std/assert";
import { serve } from "../server.ts";
import { connectRaw } from "./_raw_client.ts";
import { deadline } from "./_wait.ts";

type Frame = Record<string, unknown>;

/** A WebSocket that records decoded frames and its close event. */
async function openWs(url: string, headers?: Record<string, string>) {
  const ws = new WebSocket(url, headers ? { headers } : undefined);
  const frames: Frame[] = [];
  let wake: (() => void) | undefined;
  ws.onmessage = (e) => {
    frames.push(JSON.parse(e.data));
    wake?.();
  };
  const closed = new Promise<CloseEvent>((resolve) => ws.onclose = resolve);
  await deadline(
    new Promise<void>((resolve, reject) => {
      ws.onopen = () => resolve();
      ws.onerror = () => reject(new Error("WebSocket failed to open"));
    }),
    "WebSocket open",
  );
  const next = (what: string): Promise<Frame> =>
    deadline(
      (async () => {
        while (frames.length === 0) await new Promise<void>((r) => wake = r);
        return frames.shift() as Frame;
      })(),
      what,
    );
  return { ws, next, closed };
}

Deno.test("HEAD answers every GET route like GET, without a body; Allow lists HEAD", async () => {
  await using server = serve({ port: 0, http: { port: 0 }, logLevel: "silent" });
  const base = `http://127.0.0.1:${server.http?.addr.port}`;
  await server.hub.header("x", { state: "on" });
  const got: Record<string, [number, number, string]> = {};
  for (const path of ["/", "/healthz", "/metrics", "/streams", "/streams/x", "/streams/x/header"]) {
    const get = await fetch(base + path);
    await get.body?.cancel();
    const head = await fetch(base + path, { method: "HEAD" });
    const body = await head.text();
    got[path] = [head.status, get.status, body];
  }
  assertEquals(got, {
    "/": [200, 200, ""],
    "/healthz": [200, 200, ""],
    "/metrics": [200, 200, ""],
    "/streams": [200, 200, ""],
    "/streams/x": [200, 200, ""],
    "/streams/x/header": [200, 200, ""],
  });
  const patch = await fetch(`${base}/streams/x`, { method: "PATCH" });
  await patch.body?.cancel();
  assertEquals([patch.status, patch.headers.get("allow")], [405, "GET, HEAD, POST, DELETE"]);
  // HEAD with Accept: text/event-stream does not open a listener.
  const sse = await fetch(`${base}/streams/x`, {
    method: "HEAD",
    headers: { accept: "text/event-stream" },
  });
  await sse.body?.cancel();
  assertEquals([sse.status, server.hub.info("x")?.listeners], [200, 0]);
});

Deno.test("TCP: whitespace-only lines are ignored, as blank lines are", async () => {
  await using server = serve({ port: 0, logLevel: "silent" });
  await using raw = await connectRaw(server.addr.port);
  await raw.write("   \n\t\n \t \r\n\r\n\n");
  await raw.send({ action: "ping", id: 1 });
  assertEquals(await deadline(raw.next(), "pong"), { action: "pong", id: 1 });
});

Deno.test("WebSocket: whitespace-only messages are ignored", async () => {
  await using server = serve({ port: 0, http: { port: 0 }, logLevel: "silent" });
  const { ws, next, closed } = await openWs(`ws://127.0.0.1:${server.http?.addr.port}/ws`);
  for (const text of ["", " ", "\t \r"]) ws.send(text);
  ws.send(JSON.stringify({ action: "ping", id: 1 }));
  assertEquals(await next("pong"), { action: "pong", id: 1 });
  ws.close();
  await closed;
});

Deno.test("WebSocket: shutdown says close, then closes with 1001 (Going Away)", async () => {
  const server = serve({ port: 0, http: { port: 0 }, logLevel: "silent" });
  const { ws, next, closed } = await openWs(`ws://127.0.0.1:${server.http?.addr.port}/ws`);
  ws.send(JSON.stringify({ action: "ping", id: 1 }));
  await next("pong");
  await server.shutdown();
  assertEquals((await next("close")).action, "close");
  assertEquals((await deadline(closed, "the socket to close")).code, 1001);
});

Deno.test("WebSocket: Authorization Bearer on the upgrade authenticates; a wrong one is 401", async () => {
  await using server = serve({
    port: 0,
    http: { port: 0 },
    logLevel: "silent",
    tokens: [{ name: "a", secret: "s3cret", publish: ["*"], subscribe: ["*"] }],
  });
  const url = `ws://127.0.0.1:${server.http?.addr.port}/ws`;
  const { ws, next, closed } = await openWs(url, { authorization: "Bearer s3cret" });
  ws.send(JSON.stringify({ action: "listen", stream: "x", id: 1 }));
  const ok = await next("ok to listen");
  assertEquals([ok.action, ok.id], ["ok", 1]);
  ws.close();
  await closed;
  // Without credentials the socket opens and must say hello; with wrong ones it is refused.
  const res = await fetch(`http://127.0.0.1:${server.http?.addr.port}/ws`, {
    headers: {
      upgrade: "websocket",
      connection: "Upgrade",
      "sec-websocket-key": btoa("0123456789abcdef"),
      "sec-websocket-version": "13",
      authorization: "Bearer wrong",
    },
  });
  assertEquals([res.status, (await res.json()).code], [401, "unauthorized"]);
});

Deno.test("TCP: a silent connection gets one ping per ping interval, not one per sweep", async () => {
  const interval = 400;
  await using server = serve({
    port: 0,
    logLevel: "silent",
    pingInterval: interval,
    idleTimeout: 0,
  });
  await using raw = await connectRaw(server.addr.port);
  const times: number[] = [];
  for (let i = 0; i < 3; i++) {
    const f = await deadline(raw.next(), `ping ${i + 1}`);
    assertEquals(f, { action: "ping", stream: null });
    times.push(performance.now());
  }
  // A lower bound only (load can only stretch the gaps): the fault sent them half as far apart.
  for (let i = 1; i < times.length; i++) {
    const gap = times[i]! - times[i - 1]!;
    assert(gap >= interval * 0.8, `pings ${Math.round(gap)} ms apart, interval ${interval}`);
  }
});
