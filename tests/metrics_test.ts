// The doors' counters (metrics.ts) and their Prometheus text at GET /metrics, with exact values.
import { assert, assertEquals } from "@std/assert";
import { ERROR_CODES, Metrics, prometheus } from "../metrics.ts";
import denoJson from "../deno.json" with { type: "json" };
import { MessageStream } from "../mod.ts";
import { serveHttp } from "../http.ts";
import { serve } from "../server.ts";
import { connectRaw } from "./_raw_client.ts";
import { openSse } from "./_sse.ts";
import { deadline, poll } from "./_wait.ts";

/** Every error code's series, at 0 but for `counts`. */
function errorSeries(counts: Record<string, number> = {}): Record<string, number> {
  return Object.fromEntries(
    ERROR_CODES.map((c) => [`msgstream_errors_total{code="${c}"}`, counts[c] ?? 0]),
  );
}

/** The build and engine series of a server on the memory engine. */
const BUILD_AND_ENGINE = {
  [`msgstream_build_info{version="${denoJson.version}",deno="${Deno.version.deno}"}`]: 1,
  'msgstream_engine_up{engine="memory"}': 1,
};

/** The sample lines of a Prometheus text, by name and labels. */
function samples(text: string): Record<string, number> {
  const out: Record<string, number> = {};
  for (const line of text.trimEnd().split("\n")) {
    if (line.startsWith("#")) continue;
    const i = line.lastIndexOf(" ");
    out[line.slice(0, i)] = Number(line.slice(i + 1));
  }
  return out;
}

async function scrape(base: string): Promise<Record<string, number>> {
  const res = await deadline(fetch(`${base}/metrics`), "GET /metrics");
  assertEquals(res.headers.get("content-type"), "text/plain; version=0.0.4; charset=utf-8");
  return samples(await res.text());
}

Deno.test("Metrics counts connections opened and closed per door, slow consumers and errors", () => {
  const m = new Metrics();
  m.opened("tcp");
  m.opened("tcp");
  m.opened("sse");
  m.closed("tcp");
  m.slowConsumer();
  m.error("invalid_json");
  m.error("invalid_json");
  assertEquals(m.connections, { tcp: 1, websocket: 0, sse: 1 });
  assertEquals(m.accepted, { tcp: 2, websocket: 0, sse: 1 });
  assertEquals(m.slowConsumers, 1);
  assertEquals(m.errors, {
    ...Object.fromEntries(ERROR_CODES.map((c) => [c, 0])),
    slow_consumer: 1,
    invalid_json: 2,
  });
});

Deno.test("prometheus() writes HELP, TYPE and one sample per value, in the text format", () => {
  const m = new Metrics();
  m.opened("websocket");
  m.framesIn = 3;
  m.bytesIn = 40;
  m.bytesOut = 50;
  m.error("not_found");
  const stats = { streams: 2, listeners: 5, puts: 7, deliveries: 11, historyBytes: 13 };
  const text = prometheus(m, { ...new MessageStream().stats(), ...stats });
  assertEquals(
    text.split("\n").filter((l) => !l.startsWith("# HELP")).join("\n"),
    [
      "# TYPE msgstream_build_info gauge",
      `msgstream_build_info{version="${denoJson.version}",deno="${Deno.version.deno}"} 1`,
      "# TYPE msgstream_engine_up gauge",
      'msgstream_engine_up{engine="memory"} 1',
      "# TYPE msgstream_connections gauge",
      'msgstream_connections{door="tcp"} 0',
      'msgstream_connections{door="websocket"} 1',
      'msgstream_connections{door="sse"} 0',
      "# TYPE msgstream_accepted_connections_total counter",
      'msgstream_accepted_connections_total{door="tcp"} 0',
      'msgstream_accepted_connections_total{door="websocket"} 1',
      'msgstream_accepted_connections_total{door="sse"} 0',
      "# TYPE msgstream_streams gauge",
      "msgstream_streams 2",
      "# TYPE msgstream_listeners gauge",
      "msgstream_listeners 5",
      "# TYPE msgstream_received_messages_total counter",
      "msgstream_received_messages_total 7",
      "# TYPE msgstream_delivered_messages_total counter",
      "msgstream_delivered_messages_total 11",
      "# TYPE msgstream_received_frames_total counter",
      "msgstream_received_frames_total 3",
      "# TYPE msgstream_received_bytes_total counter",
      "msgstream_received_bytes_total 40",
      "# TYPE msgstream_sent_bytes_total counter",
      "msgstream_sent_bytes_total 50",
      "# TYPE msgstream_slow_consumer_disconnects_total counter",
      "msgstream_slow_consumer_disconnects_total 0",
      "# TYPE msgstream_errors_total counter",
      ...Object.entries(errorSeries({ not_found: 1 })).map(([k, v]) => `${k} ${v}`),
      "# TYPE msgstream_limit_exceeded_total counter",
      'msgstream_limit_exceeded_total{limit="max_memory"} 0',
      'msgstream_limit_exceeded_total{limit="max_streams"} 0',
      'msgstream_limit_exceeded_total{limit="max_header_bytes"} 0',
      'msgstream_limit_exceeded_total{limit="max_listens"} 0',
      'msgstream_limit_exceeded_total{limit="max_connections"} 0',
      'msgstream_limit_exceeded_total{limit="redis_memory"} 0',
      "# TYPE msgstream_history_bytes gauge",
      "msgstream_history_bytes 13",
      "",
    ].join("\n"),
  );
  assertEquals(text.split("\n").filter((l) => l.startsWith("# HELP")).length, 15);
});

Deno.test("GET /metrics counts an SSE response and a REST put with exact values", async () => {
  const hub = new MessageStream();
  await using server = serveHttp(hub, { port: 0 });
  const base = `http://127.0.0.1:${server.addr.port}`;
  const reader = await openSse(base, "job");
  // The first block: the retry interval with the join's position (event: joined).
  const first = (await reader.block())?.raw ?? "";
  assertEquals(first.split("\n")[0], "retry: 1000");
  assert(first.includes("\nevent: joined\n"), first);
  const res = await deadline(
    fetch(`${base}/streams/job`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: '{"n":1}',
    }),
    "the REST put",
  );
  const { epoch } = await res.json();
  const event = await reader.event();
  const sent = new TextEncoder().encode(first + "\n\n" + event.raw + "\n\n").byteLength;
  const got = await scrape(base);
  assertEquals(got, {
    ...BUILD_AND_ENGINE,
    'msgstream_connections{door="tcp"}': 0,
    'msgstream_connections{door="websocket"}': 0,
    'msgstream_connections{door="sse"}': 1,
    'msgstream_accepted_connections_total{door="tcp"}': 0,
    'msgstream_accepted_connections_total{door="websocket"}': 0,
    'msgstream_accepted_connections_total{door="sse"}': 1,
    msgstream_streams: 1,
    msgstream_listeners: 1,
    msgstream_received_messages_total: 1,
    msgstream_delivered_messages_total: 1,
    msgstream_received_frames_total: 0,
    msgstream_received_bytes_total: 7,
    msgstream_sent_bytes_total: sent,
    msgstream_slow_consumer_disconnects_total: 0,
    ...errorSeries(),
    'msgstream_limit_exceeded_total{limit="max_memory"}': 0,
    'msgstream_limit_exceeded_total{limit="max_streams"}': 0,
    'msgstream_limit_exceeded_total{limit="max_header_bytes"}': 0,
    'msgstream_limit_exceeded_total{limit="max_listens"}': 0,
    'msgstream_limit_exceeded_total{limit="max_connections"}': 0,
    'msgstream_limit_exceeded_total{limit="redis_memory"}': 0,
    msgstream_history_bytes: hub.stats().historyBytes,
    // The memory budget by part: one stream (1024 estimated, and 2 bytes for each of the 3
    // characters of its name), one listen (256), its history.
    'msgstream_memory_bytes{part="history"}': hub.stats().historyBytes,
    'msgstream_memory_bytes{part="headers"}': 0,
    'msgstream_memory_bytes{part="streams"}': 1024 + 2 * 3,
    'msgstream_memory_bytes{part="listens"}': 256,
    'msgstream_memory_bytes{part="lines"}': 0,
    'msgstream_memory_bytes{part="outbound"}': 0,
    msgstream_memory_limit_bytes: 256 << 20,
  });
  assertEquals(event.raw, `id: ${epoch}:1\nevent: put\ndata: {"n":1}`);
  await reader.cancel();
  await poll(() => server.metrics.connections.sse === 0, "the SSE response to close");
  assertEquals(server.metrics.accepted.sse, 1);
});

Deno.test("GET /metrics counts TCP connections, frames, bytes and errors with exact values", async () => {
  await using server = serve({ port: 0, http: { port: 0 }, logLevel: "silent" });
  const base = `http://127.0.0.1:${server.http?.addr.port}`;
  const put = '{"action":"put","stream":"job","message":1,"id":1}\n';
  const bad = "{nope\n";
  {
    await using raw = await connectRaw(server.addr.port);
    await raw.write(put + bad);
    assertEquals((await raw.next()).action, "ok");
    assertEquals((await raw.next()).code, "invalid_json");
    const open = await scrape(base);
    assertEquals(open['msgstream_connections{door="tcp"}'], 1);
    assertEquals(open['msgstream_accepted_connections_total{door="tcp"}'], 1);
    assertEquals(open.msgstream_received_frames_total, 2);
    assertEquals(open.msgstream_received_bytes_total, put.length + bad.length);
    assertEquals(open['msgstream_errors_total{code="invalid_json"}'], 1);
    assertEquals(open.msgstream_received_messages_total, 1);
  }
  await poll(() => server.metrics.connections.tcp === 0, "the TCP connection to close");
  const closed = await scrape(base);
  assertEquals(closed['msgstream_connections{door="tcp"}'], 0);
  assertEquals(closed['msgstream_accepted_connections_total{door="tcp"}'], 1);
});
