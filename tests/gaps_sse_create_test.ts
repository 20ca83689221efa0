// Issue 12, attack A12: an EventSource that was away when its stream was deleted reconnects with
// its Last-Event-ID; by default the join makes the stream anew (a `reset`, then it follows an
// empty stream for good). `?create=false` asks for what a TCP `listen` with `create: false`
// gets: a stream that does not exist ends the response with `event: end`, and EventSource's
// reconnect with that end id gets 204, which stops it.
import { assertEquals } from "@std/assert";
import { EventSource } from "eventsource";
import { serve } from "../server.ts";
import { deadline, Signal } from "./_wait.ts";

Deno.test("SSE ?create=false: a resume of a deleted stream gets end, then 204, and makes nothing", async () => {
  await using server = serve({ port: 0, http: { port: 0 }, logLevel: "silent" });
  const hub = server.hub;
  const base = `http://127.0.0.1:${(server.http!.addr as Deno.NetAddr).port}`;
  const at = await hub.put("job", 1);
  await hub.delete("job");
  const res = await fetch(`${base}/streams/job?create=false`, {
    headers: { accept: "text/event-stream", "last-event-id": `${at.epoch}:${at.seq}` },
  });
  assertEquals(res.status, 200);
  const ac = new AbortController();
  const text = res.body!.pipeThrough(new TextDecoderStream(), { signal: ac.signal });
  let body = "";
  try {
    await deadline(
      text.pipeTo(new WritableStream({ write: (s) => void (body += s) })),
      () => `the end of the response (got ${JSON.stringify(body)})`,
    );
  } finally {
    ac.abort();
  }
  assertEquals(
    body,
    `retry: 1000\nid: ${at.epoch}:${at.seq}:end\nevent: end\ndata: null\n\n`,
  );
  assertEquals(await hub.stat("job"), undefined);
  // A real EventSource (a first open: no position): it gets end, and its reconnect with the
  // end id stops it for good.
  const got: string[] = [];
  const signal = new Signal();
  const es = new EventSource(`${base}/streams/job?create=false`);
  es.addEventListener("end", (e) => {
    got.push(`end ${e.lastEventId}`);
    signal.notify();
  });
  es.onerror = () => {
    got.push(`error ${es.readyState}`);
    signal.notify();
  };
  try {
    await signal.until(() => got.includes(`error ${EventSource.CLOSED}`), "EventSource closed");
  } finally {
    es.close();
  }
  // The response ends (EventSource reconnects: CONNECTING), then the 204 closes it.
  assertEquals(got, ["end :end", `error ${EventSource.CONNECTING}`, `error ${EventSource.CLOSED}`]);
  assertEquals(await hub.stat("job"), undefined);
});

Deno.test("SSE ?create=false: an existing stream is followed as without it", async () => {
  await using server = serve({ port: 0, http: { port: 0 }, logLevel: "silent" });
  const hub = server.hub;
  const base = `http://127.0.0.1:${(server.http!.addr as Deno.NetAddr).port}`;
  const at = await hub.put("job", 1);
  const ac = new AbortController();
  const res = await fetch(`${base}/streams/job?create=false`, {
    headers: { accept: "text/event-stream" },
    signal: ac.signal,
  });
  assertEquals(res.status, 200);
  const reader = res.body!.pipeThrough(new TextDecoderStream()).getReader();
  const first = await reader.read();
  assertEquals(
    first.value,
    `retry: 1000\nid: ${at.epoch}:1\nevent: joined\ndata: {"epoch":"${at.epoch}","seq":1}\n\n`,
  );
  await reader.cancel();
  const bad = await fetch(`${base}/streams/job?create=no`, {
    headers: { accept: "text/event-stream" },
  });
  assertEquals(bad.status, 400);
  assertEquals((await bad.json()).code, "invalid_frame");
});
