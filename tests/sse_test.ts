// Server-Sent Events (sse.ts) through the HTTP door: header first, ids, resume, heartbeats,
// slow consumers.
import { assertEquals } from "@std/assert";
import { MessageStream } from "../mod.ts";
import { sse, startHttp } from "./_http.ts";
import { openSse, type SseBlock, SseReader } from "./_sse.ts";
import { poll } from "./_wait.ts";

Deno.test("GET /streams/{name} as SSE sends the header first, then puts and end, with ids", async () => {
  const hub = new MessageStream();
  const [server, base] = startHttp(hub);
  await hub.header("job", { state: "running" });
  const reader = await openSse(base, "job");
  // retry: comes with the first event (issue 12), not in a block of its own.
  const header = await reader.block();
  const epoch = hub.info("job")?.epoch;
  assertEquals(
    header?.raw,
    `retry: 1000\nid: ${epoch}:0\nevent: header\ndata: {"state":"running"}`,
  );
  await hub.put("job", { done: 1 });
  await hub.put("job", "line\nbreak");
  await hub.header("job", null);
  await hub.delete("job");
  assertEquals((await reader.block())?.raw, `id: ${epoch}:1\nevent: put\ndata: {"done":1}`);
  assertEquals((await reader.block())?.raw, `id: ${epoch}:2\nevent: put\ndata: "line\\nbreak"`);
  assertEquals((await reader.block())?.raw, `id: ${epoch}:2\nevent: header\ndata: null`);
  // The end's id says it ended: a reconnect with it gets 204 (issue 12).
  assertEquals((await reader.block())?.raw, `id: ${epoch}:2:end\nevent: end\ndata: null`);
  assertEquals(await reader.block(), undefined, "the response ends after end");
  assertEquals(hub.stats().listeners, 0);
  await server.shutdown();
});

Deno.test("SSE resumes from Last-Event-ID without loss or duplicate", async () => {
  const hub = new MessageStream();
  const [server, base] = startHttp(hub);
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
  const [server, base] = startHttp(hub);
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
  const [server, base] = startHttp(hub);
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
  const [server, base] = startHttp(hub);
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
  const [server, base] = startHttp(new MessageStream(), { heartbeatInterval: 20 });
  const reader = await openSse(base, "quiet");
  let block = await reader.block();
  while (block && block.comment === undefined) block = await reader.block();
  assertEquals(block?.raw, ": hb");
  await reader.cancel();
  await server.shutdown();
});

Deno.test("SSE cuts a client that does not read with event: close slow_consumer", async () => {
  const hub = new MessageStream({ historyMessages: 10 });
  const [server, base] = startHttp(hub, { maxSseBufferBytes: 64 * 1024 });
  const res = await sse(base, "flood");
  assertEquals(res.status, 200);
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
  const [server, base] = startHttp(hub);
  const reader = await openSse(base, "job");
  await reader.block();
  assertEquals(hub.stats().listeners, 1);
  assertEquals(server.metrics.connections.sse, 1);
  await reader.cancel();
  await poll(() => hub.stats().listeners === 0, "the hub to drop the SSE listener");
  assertEquals(server.metrics.connections.sse, 0);
  await server.shutdown();
});
