/**
 * Pattern listens on the HTTP door: `GET /sse?pattern=` (Server-Sent Events) and the WebSocket
 * (the same Session as TCP): header first per stream, new streams announced before their
 * first put, nothing outside the pattern, refusal beyond the grant.
 */
import { assertEquals } from "@std/assert";
import { serve } from "../server.ts";
import { engineOptions } from "./_server.ts";
import { assertError, request, Ws } from "./_http.ts";
import { SseReader } from "./_sse.ts";

function line(b: { event?: string | undefined; data?: string | undefined }): string {
  const d = JSON.parse(b.data ?? "null");
  return b.event === "joined"
    ? `joined ${d.pattern} ${d.streams}`
    : `${b.event} ${d.stream} ${JSON.stringify(d.message)} ${d.seq}`;
}

Deno.test("GET /sse?pattern= gives each stream's header first, announces new streams, keeps on after end, and nothing outside", async () => {
  await using server = serve({
    port: 0,
    http: { port: 0 },
    logLevel: "silent",
    ...engineOptions(),
  });
  const hub = server.hub;
  const base = `http://127.0.0.1:${server.http!.addr.port}`;
  await hub.header("jobs.1", "running");
  await hub.put("other", 1);
  const res = await request(`${base}/sse?pattern=${encodeURIComponent("jobs.*")}`);
  assertEquals(res.status, 200);
  assertEquals(res.headers.get("content-type"), "text/event-stream; charset=utf-8");
  const r = new SseReader(res);
  const first = (await r.block())!;
  assertEquals(first.retry !== undefined, true);
  // The id that EventSource sends back on a reconnect (then each stream comes after a reset).
  assertEquals(first.id, "pattern");
  assertEquals(line(first), 'header jobs.1 "running" 0');
  assertEquals(line((await r.block())!), "joined jobs.* 1");
  await hub.put("other", 2);
  await hub.put("jobs.2", { done: 1 });
  await hub.delete("jobs.1");
  await hub.put("jobs.2", "b");
  const got: string[] = [];
  for (let i = 0; i < 4; i++) got.push(line((await r.block())!));
  // Each stream's own order is what counts.
  assertEquals(got.filter((l) => l.includes(" jobs.2 ")), [
    "header jobs.2 null 0",
    'put jobs.2 {"done":1} 1',
    'put jobs.2 "b" 2',
  ]);
  assertEquals(got.filter((l) => l.includes(" jobs.1 ")), ["end jobs.1 null 0"]);
  await r.cancel();
});

Deno.test("GET /sse?pattern= refuses a pattern beyond the grant and a missing pattern", async () => {
  await using server = serve({
    port: 0,
    http: { port: 0 },
    logLevel: "silent",
    ...engineOptions(),
    tokens: [{ name: "t", secret: "s", publish: [], subscribe: ["jobs.*"] }],
  });
  const base = `http://127.0.0.1:${server.http!.addr.port}`;
  const auth = { authorization: "Bearer s" };
  await assertError(await request(`${base}/sse?pattern=*`, { headers: auth }), 403, "forbidden");
  await assertError(await request(`${base}/sse`, { headers: auth }), 400, "invalid_pattern");
  const ok = await request(`${base}/sse?pattern=jobs.eu.*`, { headers: auth });
  assertEquals(ok.status, 200);
  await ok.body?.cancel();
});

Deno.test("WebSocket: listen with a pattern gives headers first, announces new streams, and nothing outside", async () => {
  await using server = serve({
    port: 0,
    http: { port: 0 },
    logLevel: "silent",
    ...engineOptions(),
  });
  const hub = server.hub;
  const base = `http://127.0.0.1:${server.http!.addr.port}`;
  await hub.header("jobs.1", "h");
  const ws = await Ws.open(`${base.replace("http", "ws")}/ws`);
  ws.send({ action: "listen", pattern: "jobs.*", id: 1 });
  const brief = (f: Record<string, unknown>) =>
    f.action === "ok"
      ? `ok ${f.pattern} ${f.streams}`
      : `${f.action}${f.header ? "/h" : ""} ${f.stream} ${JSON.stringify(f.message)} ${f.seq}`;
  assertEquals(brief(await ws.read()), 'put/h jobs.1 "h" 0');
  assertEquals(brief(await ws.read()), "ok jobs.* 1");
  await hub.put("other", 1);
  await hub.put("jobs.2", 1);
  assertEquals(brief(await ws.read()), "put/h jobs.2 null 0");
  assertEquals(brief(await ws.read()), "put jobs.2 1 1");
  ws.send({ action: "listen", pattern: "", id: 2 });
  assertEquals((await ws.read()).code, "invalid_pattern");
  await ws.close();
});
