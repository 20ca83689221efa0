// The HTTP door's router and REST (http.ts): puts, headers, deletes, lists, errors, tokens,
// health, the status page, shutdown, and one hub shared with the TCP door. SSE, WebSocket and
// /metrics have their own test files (sse_test.ts, ws_test.ts, metrics_test.ts).
import {
  assert,
  assertEquals,
  assertExists,
  assertMatch,
  assertNotMatch,
  assertStringIncludes,
} from "@std/assert";
import { MessageStream } from "../mod.ts";
import { serve } from "../server.ts";
import { assertError, post, request, sse, startHttp, Ws } from "./_http.ts";
import { connectRaw } from "./_raw_client.ts";
import { openSse } from "./_sse.ts";
import { deadline } from "./_wait.ts";

Deno.test("shutdown() ends SSE responses with event: close and WebSockets with close", async () => {
  const hub = new MessageStream();
  const [server, base] = startHttp(hub);
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
  // 1001 Going Away: the server is shutting down (issue 12).
  assertEquals((await ws.ended()).code, 1001);
  await stopped;
  assertEquals(hub.stats().listeners, 0);
});

Deno.test("REST puts, sets, reads, clears headers and deletes streams", async () => {
  const hub = new MessageStream();
  const [server, base] = startHttp(hub);
  const seen: string[] = [];
  await hub.listen("job", { put: (ev) => seen.push(`${ev.kind}:${JSON.stringify(ev.message)}`) });

  let res = await post(base, "/streams/job", { done: 1 });
  assertEquals(res.status, 200);
  const put = await res.json();
  assertEquals(put, { seq: 1, epoch: hub.info("job")?.epoch });

  res = await request(`${base}/streams/job/header`, {
    method: "PUT",
    headers: { "content-type": "application/json" },
    body: '{"state":"running"}',
  });
  assertEquals(res.status, 204);
  res = await request(`${base}/streams/job/header`);
  assertEquals([res.status, await res.json()], [200, { state: "running" }]);

  res = await request(`${base}/streams/job`);
  assertEquals(await res.json(), {
    name: "job",
    listeners: 1,
    seq: 1,
    epoch: put.epoch,
    hasHeader: true,
  });

  res = await request(`${base}/streams/job/header`, { method: "DELETE" });
  assertEquals(res.status, 204);
  await assertError(await request(`${base}/streams/job/header`), 404, "not_found");

  res = await request(`${base}/streams/job`, { method: "DELETE" });
  assertEquals(res.status, 204);
  assertEquals(hub.info("job"), undefined);
  assertEquals(seen, ['put:{"done":1}', 'header:{"state":"running"}', "header:null", "end:null"]);
  await server.shutdown();
});

Deno.test("REST names are percent-decoded, so they may hold slashes", async () => {
  const hub = new MessageStream();
  const [server, base] = startHttp(hub);
  const res = await post(base, `/streams/${encodeURIComponent("jobs/42 é")}`, 1);
  assertEquals(res.status, 200);
  await res.body?.cancel();
  assertEquals(hub.info("jobs/42 é")?.seq, 1);
  await server.shutdown();
});

Deno.test("GET /streams lists name, listeners, seq, epoch, header and message rate", async () => {
  const hub = new MessageStream();
  const [server, base] = startHttp(hub);
  await hub.header("a", "h");
  await hub.listen("b", { put() {} });
  assertEquals(await (await request(`${base}/streams`)).json(), [
    { name: "a", listeners: 0, seq: 0, epoch: hub.info("a")?.epoch, hasHeader: true, rate: 0 },
    { name: "b", listeners: 1, seq: 0, epoch: hub.info("b")?.epoch, hasHeader: false, rate: 0 },
  ]);
  // The rate is measured between two samples at least half a second apart.
  const t0 = Date.now();
  for (let i = 0; i < 50; i++) await hub.put("b", i);
  while (Date.now() - t0 < 600) await new Promise((resolve) => setTimeout(resolve, 50));
  const list = await (await request(`${base}/streams`)).json();
  assert(list[1].rate > 0, `rate ${list[1].rate}`);
  assertEquals(list[0].rate, 0);
  await server.shutdown();
});

Deno.test("REST answers every error with JSON {code, message} and its status", async (t) => {
  const hub = new MessageStream({ maxStreamNameLength: 8 });
  const [server, base] = startHttp(hub, { maxBodyBytes: 100 });
  await t.step("400 invalid_json", async () => {
    await assertError(
      await request(`${base}/streams/a`, {
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
      await request(`${base}/streams/a`, {
        method: "POST",
        headers: { "content-type": "application/json" },
      }),
      400,
      "missing_message",
    );
  });
  await t.step("400 invalid_utf8", async () => {
    await assertError(
      await request(`${base}/streams/a`, {
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
    await assertError(await request(`${base}/nothing`), 404, "not_found");
    await assertError(await request(`${base}/streams/a/b/c`), 404, "not_found");
    await assertError(await request(`${base}/streams/a/footer`), 404, "not_found");
    await assertError(await request(`${base}/streams/unknown`), 404, "not_found");
    await assertError(await request(`${base}/streams/unknown/header`), 404, "not_found");
  });
  await t.step("405 method_not_allowed with Allow", async () => {
    const res = await request(`${base}/streams`, { method: "POST" });
    assertEquals(res.headers.get("allow"), "GET, HEAD");
    await assertError(res, 405, "method_not_allowed");
    const res2 = await request(`${base}/streams/a/header`, { method: "POST" });
    assertEquals(res2.headers.get("allow"), "GET, HEAD, PUT, DELETE");
    await assertError(res2, 405, "method_not_allowed");
    await assertError(
      await request(`${base}/streams/a`, { method: "PATCH" }),
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
      await request(`${base}/streams/a`, {
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
      await request(`${base}/streams/a`, {
        method: "POST",
        headers: { "content-type": "text/plain" },
        body: "1",
      }),
      415,
      "unsupported_media_type",
    );
  });
  await t.step("426 upgrade_required for /ws without an upgrade", async () => {
    await assertError(await request(`${base}/ws`), 426, "upgrade_required");
  });
  await t.step("errors are counted by code in /metrics", async () => {
    const text = await (await request(`${base}/metrics`)).text();
    assertStringIncludes(text, 'msgstream_errors_total{code="invalid_json"} 1');
    assertStringIncludes(text, 'msgstream_errors_total{code="not_found"} 5');
    assertStringIncludes(text, 'msgstream_errors_total{code="payload_too_large"} 2');
  });
  assertEquals(hub.stats().puts, 0);
  await server.shutdown();
});

Deno.test("REST and SSE check Bearer tokens with the TCP permissions", async (t) => {
  const hub = new MessageStream();
  const [server, base] = startHttp(hub, {
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
    await assertError(await request(`${base}/streams`), 401, "unauthorized");
    await assertError(await request(`${base}/metrics`), 401, "unauthorized");
    await assertError(await sse(base, "jobs.1"), 401, "unauthorized");
  });
  await t.step("403 outside the token's patterns", async () => {
    await assertError(await post(base, "/streams/other", 1, pub), 403, "forbidden");
    await assertError(await post(base, "/streams/jobs.1", 1, sub), 403, "forbidden");
    await assertError(await sse(base, "jobs.1", pub), 403, "forbidden");
    await assertError(await request(`${base}/streams/other`, { headers: sub }), 403, "forbidden");
    await assertError(
      await request(`${base}/streams/jobs.1`, { method: "DELETE", headers: sub }),
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
    const list = await (await request(`${base}/streams`, { headers: sub })).json();
    assertEquals(list.map((s: { name: string }) => s.name), ["jobs.1"]);
  });
  await t.step("/healthz and the status page need no token", async () => {
    assertEquals((await request(`${base}/healthz`)).status, 200);
    const page = await request(`${base}/`);
    assertEquals(page.status, 200);
    await page.body?.cancel();
  });
  await server.shutdown();
});

Deno.test("GET /healthz answers ok", async () => {
  const [server, base] = startHttp();
  const res = await request(`${base}/healthz`);
  assertEquals([res.status, (await res.json()).status], [200, "ok"]);
  await server.shutdown();
});

Deno.test("GET / serves a self-contained status page", async () => {
  const [server, base] = startHttp();
  const res = await request(`${base}/`);
  assertEquals(res.headers.get("content-type"), "text/html; charset=utf-8");
  const html = await res.text();
  assertStringIncludes(html, "<title>msgstream status</title>");
  assertStringIncludes(html, "new EventSource(");
  assertNotMatch(html, /(src|href)="(https?:)?\/\//, "no resource from another host");
  assertNotMatch(html, /<script[^>]+src=/, "scripts are inline");
  await server.shutdown();
});

Deno.test("serve({http}) shares one hub: TCP puts reach SSE, REST puts reach TCP", async () => {
  const server = serve({ port: 0, http: { port: 0 }, logLevel: "silent" });
  assertExists(server.http);
  const base = `http://127.0.0.1:${server.http.addr.port}`;
  const reader = await openSse(base, "job");
  await using tcp = await connectRaw(server.addr.port);
  await tcp.send({ action: "listen", stream: "job", id: 1 });
  assertEquals((await tcp.next()).id, 1);

  await tcp.send({ action: "put", stream: "job", message: "via tcp" });
  const ev = await reader.event();
  assertEquals([ev?.event, ev?.data], ["put", '"via tcp"']);
  assertEquals((await tcp.next()).message, "via tcp");

  (await post(base, "/streams/job", "via rest")).body?.cancel();
  const frame = await tcp.next();
  assertEquals([frame.action, frame.message, frame.seq], ["put", "via rest", 2]);
  assertEquals((await reader.event())?.data, '"via rest"');

  const metrics = await (await request(`${base}/metrics`)).text();
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
  await deadline(
    (async () => {
      while (!/msgstream http on http:\/\/127\.0\.0\.1:\d+\n/.test(out)) {
        const { done, value } = await lines.read();
        if (done) break;
        out += value;
      }
    })(),
    () => `the server to print its HTTP address (stdout so far: ${JSON.stringify(out)})`,
  );
  assertMatch(out, /^msgstream listening on tcp:\/\/127\.0\.0\.1:\d+$/m);
  const port = Number(/msgstream http on http:\/\/127\.0\.0\.1:(\d+)/.exec(out)?.[1]);
  const res = await request(`http://127.0.0.1:${port}/healthz`);
  assertEquals(res.status, 200);
  await res.body?.cancel();
  child.kill("SIGTERM");
  await lines.cancel();
  assertEquals((await deadline(child.status, "the server to exit")).code, 0);
});
