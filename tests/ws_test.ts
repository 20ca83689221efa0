// WebSocket (ws.ts) through the HTTP door: the TCP protocol's frames, one per text message.
import { assertEquals } from "@std/assert";
import { MessageStream } from "../mod.ts";
import { handler } from "../http.ts";
import { assertError, post, startHttp, Ws } from "./_http.ts";
import { poll } from "./_wait.ts";

Deno.test("WebSocket follows two streams on one socket with the TCP frames", async () => {
  const hub = new MessageStream();
  const [server, base] = startHttp(hub);
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
  await poll(() => hub.stats().listeners === 0, "the hub to drop the WebSocket's listener");
  assertEquals(server.metrics.connections.websocket, 0);
  await server.shutdown();
});

Deno.test("WebSocket answers bad frames with error codes", async (t) => {
  const [server, base] = startHttp(new MessageStream(), { maxBodyBytes: 1000 });
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
    assertEquals((await ws.ended()).code, 1009);
  });
  await ws.close();
  await server.shutdown();
});

Deno.test("WebSocket needs hello with a token when tokens are set", async () => {
  const [server, base] = startHttp(new MessageStream(), {
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
