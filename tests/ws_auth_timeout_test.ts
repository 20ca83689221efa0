// A WebSocket that never authenticates is closed at --auth-timeout, as a TCP connection is;
// one that authenticated (hello, or credentials on the upgrade) stays.
import { assertEquals } from "@std/assert";
import { MessageStream } from "../mod.ts";
import { serve } from "../server.ts";
import { startHttp, Ws } from "./_http.ts";

const tokens = [{ name: "t", secret: "s", publish: ["*"], subscribe: ["*"] }];

Deno.test("WebSocket: no hello within the auth timeout: unauthorized, then close 1008; others stay", async () => {
  const [server, base] = startHttp(new MessageStream(), { tokens, authTimeout: 300 });
  const url = `${base.replace("http", "ws")}/ws`;
  const idle = await Ws.open(url);
  const hello = await Ws.open(url);
  hello.send({ action: "hello", token: "s", id: 1 });
  assertEquals((await hello.read()).action, "ok");
  const upgraded = await Ws.open(`${url}?token=s`);
  // The idle socket is told, then closed with 1008 (policy violation).
  const f = await idle.read();
  assertEquals([f.action, f.code], ["error", "unauthorized"]);
  assertEquals((await idle.read()).action, "close");
  assertEquals((await idle.ended()).code, 1008);
  // The deadline has passed for all three: the two with a grant still answer.
  hello.send({ action: "ping", id: 2 });
  assertEquals((await hello.read()).action, "pong");
  upgraded.send({ action: "ping", id: 3 });
  assertEquals((await upgraded.read()).action, "pong");
  await hello.close();
  await upgraded.close();
  await server.shutdown();
});

Deno.test("serve(): --auth-timeout reaches the WebSocket door", async () => {
  await using server = serve({ port: 0, http: { port: 0 }, tokens, authTimeout: 300 });
  const ws = await Ws.open(`ws://127.0.0.1:${server.http!.addr.port}/ws`);
  assertEquals((await ws.read()).code, "unauthorized");
  assertEquals((await ws.read()).action, "close");
  assertEquals((await ws.ended()).code, 1008);
});
