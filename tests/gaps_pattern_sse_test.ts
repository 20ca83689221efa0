// Issue 12, attack A12: a pattern SSE response (`GET /sse?pattern=`) that a real `EventSource`
// reconnects to must tell the client that it may have missed events: a `reset` per stream
// before its header, never a silent gap.
import { assertEquals } from "@std/assert";
import { EventSource } from "eventsource";
import { serve } from "../server.ts";
import { TcpProxy } from "./_proxy.ts";
import { Signal } from "./_wait.ts";

/** What an `EventSource` received, as `kind data` lines, plus its opens. */
function record(url: string): { es: EventSource; got: string[]; signal: Signal } {
  const got: string[] = [];
  const signal = new Signal();
  const es = new EventSource(url);
  es.onopen = () => {
    got.push("open");
    signal.notify();
  };
  for (const kind of ["header", "put", "reset", "end", "joined"]) {
    es.addEventListener(kind, (e: MessageEvent) => {
      got.push(`${kind} ${e.data}`);
      signal.notify();
    });
  }
  return { es, got, signal };
}

Deno.test("a reconnected pattern EventSource gets a reset per stream before its header", async () => {
  await using server = serve({ port: 0, http: { port: 0 }, logLevel: "silent" });
  const hub = server.hub;
  const port = (server.http!.addr as Deno.NetAddr).port;
  await using proxy = new TcpProxy(port);
  const a = await hub.put("jobs.a", 1);
  await hub.put("other", 1);
  const { es, got, signal } = record(`http://127.0.0.1:${proxy.port}/sse?pattern=jobs.*`);
  try {
    const count = (prefix: string) => got.filter((g) => g.startsWith(prefix)).length;
    await signal.until(() => count("joined") === 1, "the first joined");
    await hub.put("jobs.a", 2);
    await signal.until(() => count("put") === 1, "put 2");
    proxy.cut();
    // Made while the client is away: it misses them.
    await hub.put("jobs.a", 3);
    await hub.put("jobs.a", 4);
    await signal.until(() => count("joined") === 2, "the joined after the reconnect");
    await hub.put("jobs.a", 5);
    await signal.until(() => count("put") === 2, "put 5");
    const at = (seq: number, message: unknown) =>
      JSON.stringify({ stream: "jobs.a", seq, epoch: a.epoch, message });
    assertEquals(got, [
      "open",
      `header ${at(1, null)}`,
      `joined {"pattern":"jobs.*","streams":1}`,
      `put ${at(2, 2)}`,
      "open",
      `reset ${at(4, { reason: "not_resumable" })}`,
      `header ${at(4, null)}`,
      `joined {"pattern":"jobs.*","streams":1}`,
      `put ${at(5, 5)}`,
    ]);
  } finally {
    es.close();
  }
});

Deno.test("GET /sse?pattern= refuses a pattern that is not valid percent-encoded UTF-8", async () => {
  await using server = serve({ port: 0, http: { port: 0 }, logLevel: "silent" });
  const base = `http://127.0.0.1:${(server.http!.addr as Deno.NetAddr).port}`;
  // "x" and the bytes a lone surrogate (U+D800) would have: no UTF-8 form. The query parser
  // reads them as U+FFFD, and the server followed "x\ufffd", a pattern nobody asked for.
  for (const raw of ["x%ED%A0%80", "x%ff", "x%E2%82"]) {
    const res = await fetch(`${base}/sse?pattern=${raw}`, {
      headers: { accept: "text/event-stream" },
    });
    assertEquals(res.status, 400, raw);
    assertEquals((await res.json()).code, "invalid_pattern", raw);
  }
  // Valid percent-encoding (and + for a space) still works.
  const res = await fetch(`${base}/sse?pattern=${encodeURIComponent("jobs é*")}`, {
    headers: { accept: "text/event-stream" },
  });
  assertEquals(res.status, 200);
  await res.body!.cancel();
});
