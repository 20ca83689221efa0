/**
 * Pattern listens over the wire: the TCP door's `{"action":"listen","pattern":…}` and `hangup`,
 * refusal beyond a token's grant, and `RemoteStream` with reconnect and resume by a map of
 * positions.
 */
import { assertEquals, assertRejects } from "@std/assert";
import { Inbox, type StreamEvent } from "../mod.ts";
import { serve } from "../server.ts";
import { ProtocolError, RemoteStream } from "../client.ts";
import { connectRaw, type Frame } from "./_raw_client.ts";
import { collect } from "./_recorder.ts";
import { TcpProxy } from "./_proxy.ts";
import { engineOptions } from "./_server.ts";

function brief(f: Frame): string {
  if (f.action === "ok") return `ok ${f.pattern ?? f.stream} ${f.streams ?? ""}`.trim();
  if (f.action === "error") return `error ${f.code}`;
  return `${f.action}${f.header ? "/h" : ""} ${f.stream} ${JSON.stringify(f.message)} ${f.seq}`;
}

/** Lines grouped by stream (the `at`th word): the order that counts is each stream's own. */
function byStream(lines: string[], at = 0): Record<string, string[]> {
  const out: Record<string, string[]> = {};
  for (const l of lines) (out[l.split(" ")[at]!] ??= []).push(l);
  return out;
}

function events(got: StreamEvent[]): string[] {
  return got.map((e) => `${e.stream} ${e.kind} ${JSON.stringify(e.message)} ${e.seq}`);
}

Deno.test("TCP: listen with a pattern gives each stream's header first, then its puts, announces new streams, and nothing else", async () => {
  await using server = serve({ port: 0, ...engineOptions() });
  const hub = server.hub;
  await hub.header("jobs.1", { state: "running" });
  await hub.put("jobs.1", 1);
  await hub.put("other", 1);
  await using c = await connectRaw(server.addr.port);
  await c.send({ action: "hello", version: 1, id: 0 });
  assertEquals((await c.next()).action, "ok");
  await c.send({ action: "listen", pattern: "jobs.*", id: 1 });
  assertEquals((await c.until((f) => f.action === "ok")).map(brief), [
    'put/h jobs.1 {"state":"running"} 1',
    "ok jobs.* 1",
  ]);
  await hub.put("other", 2);
  await hub.put("jobs.2", "a");
  await hub.put("jobs.1", 2);
  await hub.delete("jobs.2");
  let n = 0;
  assertEquals(byStream((await c.until(() => ++n === 4)).map(brief), 1), {
    "jobs.2": ["put/h jobs.2 null 0", 'put jobs.2 "a" 1', "delete jobs.2 null 1"],
    "jobs.1": ["put jobs.1 2 2"],
  });
  // Nothing else came (not from "other"): the next frame is the answer to a ping.
  await c.send({ action: "ping", id: 2 });
  assertEquals((await c.next()).action, "pong");
  await c.send({ action: "hangup", pattern: "jobs.*", id: 3 });
  assertEquals(brief(await c.next()), "ok jobs.*");
  await hub.put("jobs.1", 3);
  await c.send({ action: "ping", id: 4 });
  assertEquals((await c.next()).action, "pong");
});

Deno.test("TCP: a pattern beyond the token's subscribe grant is refused with forbidden", async () => {
  await using server = serve({
    port: 0,
    ...engineOptions(),
    tokens: [{ name: "eu", secret: "s", publish: [], subscribe: ["jobs.eu.*", "jobs.us.*"] }],
  });
  await using c = await connectRaw(server.addr.port);
  await c.send({ action: "hello", version: 1, token: "s", id: 0 });
  assertEquals((await c.next()).action, "ok");
  await c.send({ action: "listen", pattern: "jobs.*", id: 1 });
  const refused = await c.next();
  assertEquals([refused.code, refused.id], ["forbidden", 1]);
  assertEquals(
    refused.message,
    'Cannot listen to pattern "jobs.*": no subscribe grant of the token covers it',
  );
  await c.send({ action: "listen", pattern: "*", id: 2 });
  assertEquals((await c.next()).code, "forbidden");
  await c.send({ action: "listen", pattern: "jobs.eu.*", id: 3 });
  assertEquals(brief(await c.next()), "ok jobs.eu.* 0");
  await c.send({ action: "listen", pattern: "jobs.eu.7*", id: 4 });
  assertEquals(brief(await c.next()), "ok jobs.eu.7* 0");
});

Deno.test("TCP: a malformed pattern listen gets a coded error and the connection goes on", async () => {
  await using server = serve({ port: 0, ...engineOptions() });
  await using c = await connectRaw(server.addr.port);
  await c.send({ action: "listen", pattern: "", id: 1 });
  assertEquals([(await c.next()).code], ["invalid_pattern"]);
  await c.send({ action: "listen", pattern: 7, id: 2 });
  assertEquals([(await c.next()).code], ["invalid_pattern"]);
  await c.send({ action: "listen", pattern: "a*", stream: "a", id: 3 });
  assertEquals([(await c.next()).code], ["invalid_frame"]);
  await c.send({ action: "listen", pattern: "a*", since: [1], id: 4 });
  assertEquals([(await c.next()).code], ["invalid_since"]);
  await c.send({ action: "listen", pattern: "a*", since: { a1: { epoch: 1 } }, id: 5 });
  assertEquals([(await c.next()).code], ["invalid_since"]);
  await c.send({ action: "listen", pattern: "x".repeat(300), id: 6 });
  assertEquals([(await c.next()).code], ["invalid_pattern"]);
  await c.send({ action: "listen", pattern: "a*", id: 7 });
  assertEquals(brief(await c.next()), "ok a* 0");
});

Deno.test("RemoteStream.listen({pattern}) gives headers first, announces new streams, and nothing outside", async () => {
  await using server = serve({ port: 0, ...engineOptions() });
  const hub = server.hub;
  await hub.header("jobs.1", "h1");
  await using remote = await RemoteStream.connect({ port: server.addr.port });
  const inbox = new Inbox();
  assertEquals(await remote.listen({ pattern: "jobs.*" }, inbox), {
    pattern: "jobs.*",
    streams: 1,
  });
  await hub.put("nope", 0);
  await hub.put("jobs.2", "a");
  await hub.put("jobs.1", "b");
  assertEquals(byStream(events(await collect(inbox, 4))), {
    "jobs.1": ['jobs.1 header "h1" 0', 'jobs.1 put "b" 1'],
    "jobs.2": ["jobs.2 header null 0", 'jobs.2 put "a" 1'],
  });
  // A second local queue gets each stream's header as last seen, then the same live events.
  const second = new Inbox();
  assertEquals(await remote.listen({ pattern: "jobs.*" }, second), {
    pattern: "jobs.*",
    streams: 2,
  });
  await hub.put("jobs.2", "c");
  assertEquals(byStream(events(await collect(second, 3))), {
    "jobs.1": ['jobs.1 header "h1" 1'],
    "jobs.2": ["jobs.2 header null 1", 'jobs.2 put "c" 2'],
  });
  assertEquals(events(await collect(inbox, 1)), ['jobs.2 put "c" 2']);
  inbox.close();
  second.close();
});

Deno.test("RemoteStream refuses a pattern beyond the grant with forbidden", async () => {
  await using server = serve({
    port: 0,
    ...engineOptions(),
    tokens: [{ name: "t", secret: "s", publish: ["*"], subscribe: ["jobs.*"] }],
  });
  await using remote = await RemoteStream.connect({ port: server.addr.port, token: "s" });
  const err = await assertRejects(
    () => remote.listen({ pattern: "*" }, new Inbox()),
    ProtocolError,
  );
  assertEquals(err.code, "forbidden");
  assertEquals(await remote.listen({ pattern: "jobs.a*" }, new Inbox()), {
    pattern: "jobs.a*",
    streams: 0,
  });
});

Deno.test("RemoteStream resumes a pattern after a cut connection: no gap, no duplicate, new and deleted streams told", async () => {
  await using server = serve({ port: 0, ...engineOptions() });
  const hub = server.hub;
  await using proxy = new TcpProxy(server.addr.port);
  await using remote = await RemoteStream.connect({
    port: proxy.port,
    reconnectTimeWait: 50,
    reconnectJitter: 10,
  });
  await hub.put("jobs.a", 1);
  await hub.put("jobs.b", 1);
  const inbox = new Inbox();
  await remote.listen({ pattern: "jobs.*" }, inbox);
  // Across streams, the catch-up's order is the server's (with Redis, SCAN's): sorted here.
  assertEquals(events(await collect(inbox, 2)).sort(), [
    "jobs.a header null 1",
    "jobs.b header null 1",
  ]);
  const down = new Promise<void>((resolve) => {
    (async () => {
      for await (const s of remote.status()) if (s.type === "disconnected") return resolve();
    })();
  });
  proxy.cut();
  await down;
  // Missed while disconnected: history covers it.
  await hub.put("jobs.a", 2);
  await hub.put("jobs.a", 3);
  await hub.delete("jobs.b");
  await hub.put("jobs.c", 1);
  await hub.put("outside", 1);
  const got = events(await collect(inbox, 4));
  // Per stream in order; across streams the server's catch-up order.
  assertEquals(got.filter((e) => e.startsWith("jobs.a")), ["jobs.a put 2 2", "jobs.a put 3 3"]);
  assertEquals(got.filter((e) => e.startsWith("jobs.b")), ["jobs.b end null 1"]);
  assertEquals(got.filter((e) => e.startsWith("jobs.c")), ["jobs.c header null 1"]);
  await hub.put("jobs.a", 4);
  assertEquals(events(await collect(inbox, 1)), ["jobs.a put 4 4"]);
  assertEquals(inbox.size, 0);
  inbox.close();
});

Deno.test({
  name: "TCP: list pages through the streams a pattern matches, ordered by name, within the grant",
  fn: async () => {
    await using server = serve({
      port: 0,
      ...engineOptions(),
      tokens: [{ name: "t", secret: "s", publish: ["*"], subscribe: ["jobs.*"] }],
    });
    const hub = server.hub;
    for (const name of ["jobs.b", "jobs.a", "secret.x", "jobs.c"]) await hub.put(name, 1);
    await hub.header("jobs.c", "h");
    await using c = await connectRaw(server.addr.port);
    await c.send({ action: "hello", version: 1, token: "s", id: 0 });
    await c.next();
    await c.send({ action: "list", limit: 2, id: 1 });
    const first = await c.next();
    assertEquals(first.streams, [
      {
        stream: "jobs.a",
        epoch: (await hub.stat("jobs.a"))!.epoch,
        seq: 1,
        listeners: 0,
        header: false,
      },
      {
        stream: "jobs.b",
        epoch: (await hub.stat("jobs.b"))!.epoch,
        seq: 1,
        listeners: 0,
        header: false,
      },
    ]);
    assertEquals(first.next, "jobs.b");
    await c.send({ action: "list", limit: 2, after: "jobs.b", id: 2 });
    const second = await c.next();
    assertEquals((second.streams as Frame[]).map((s) => [s.stream, s.header]), [["jobs.c", true]]);
    assertEquals(second.next, null);
    await c.send({ action: "list", pattern: "*.a", id: 3 });
    assertEquals(((await c.next()).streams as Frame[]).map((s) => s.stream), ["jobs.a"]);
    await c.send({ action: "list", limit: 0, id: 4 });
    assertEquals((await c.next()).code, "invalid_frame");
    await c.send({ action: "list", pattern: "", id: 5 });
    assertEquals((await c.next()).code, "invalid_pattern");
  },
});
