/**
 * Issue 12 on the SSE door, with a real `EventSource` (npm `eventsource`): every join gives a
 * position, `retry:` comes with the first event, a reconnect after `end` gets 204, heartbeats
 * are never further apart than the interval.
 *
 * @module
 */

import { assertEquals } from "@std/assert";
import { EventSource } from "eventsource";
import { MessageStream } from "../mod.ts";
import { serveHttp } from "../http.ts";
import { Metrics } from "../metrics.ts";
import { SseDoor } from "../sse.ts";
import { TcpProxy } from "./_proxy.ts";
import { openSse } from "./_sse.ts";
import { deadline, Signal } from "./_wait.ts";

/** An EventSource through `url` that records `put`, `reset`, `header` and `end` events. */
function follow(url: string) {
  const got: string[] = [];
  let opened = 0;
  let errors = 0;
  const signal = new Signal();
  const es = new EventSource(url);
  es.addEventListener("open", () => {
    opened++;
    signal.notify();
  });
  es.addEventListener("error", () => {
    errors++;
    signal.notify();
  });
  for (const kind of ["put", "reset", "header", "end"]) {
    es.addEventListener(kind, (e) => {
      got.push(`${kind}:${(e as MessageEvent).data}`);
      signal.notify();
    });
  }
  return {
    es,
    got,
    signal,
    get opened() {
      return opened;
    },
    get errors() {
      return errors;
    },
  };
}

Deno.test("EventSource cut before the first put of a headerless stream resumes without a gap", async () => {
  const hub = new MessageStream();
  await using server = serveHttp(hub, { port: 0, retry: 10 });
  await using proxy = new TcpProxy(server.addr.port);
  const client = follow(`http://127.0.0.1:${proxy.port}/streams/s`);
  try {
    await client.signal.until(() => client.opened === 1, "first open");
    // Gone before any event: the join's id-only block is all it has.
    proxy.refuse = true;
    proxy.cut();
    await hub.put("s", 1);
    await hub.put("s", 2);
    proxy.refuse = false;
    await client.signal.until(() => client.opened === 2, "reopen");
    await hub.put("s", 3);
    await client.signal.until(() => client.got.length >= 3, () => `3 puts: ${client.got}`);
    assertEquals(client.got, ["put:1", "put:2", "put:3"]);
  } finally {
    client.es.close();
  }
});

Deno.test("SSE join of a headerless stream sends retry and the position in its first block", async () => {
  const hub = new MessageStream();
  await using server = serveHttp(hub, { port: 0, retry: 1234 });
  await hub.put("s", "before");
  const at = hub.info("s");
  const sse = await openSse(`http://127.0.0.1:${server.addr.port}`, "s");
  const first = await sse.block();
  await sse.cancel();
  assertEquals(
    first?.raw,
    `retry: 1234\nid: ${at?.epoch}:1\nevent: joined\ndata: {"epoch":"${at?.epoch}","seq":1}`,
  );
});

Deno.test("SSE retry comes with the first event when the stream has a header", async () => {
  const hub = new MessageStream();
  await using server = serveHttp(hub, { port: 0, retry: 1234 });
  await hub.header("s", "h");
  const sse = await openSse(`http://127.0.0.1:${server.addr.port}`, "s");
  const first = await sse.block();
  await sse.cancel();
  assertEquals(first?.raw, `retry: 1234\nid: ${hub.info("s")?.epoch}:0\nevent: header\ndata: "h"`);
});

Deno.test("EventSource stops after end: the reconnect with the end's id gets 204", async () => {
  const hub = new MessageStream();
  await using server = serveHttp(hub, { port: 0, retry: 10 });
  const client = follow(`http://127.0.0.1:${server.addr.port}/streams/d`);
  try {
    await client.signal.until(() => client.opened === 1, "open");
    await hub.put("d", 1);
    await hub.delete("d");
    // The server ends the response; EventSource reconnects with the end's id, gets 204, and
    // closes for good (readyState 2) instead of listening to a new stream "d".
    await client.signal.until(() => client.es.readyState === 2, "EventSource to close");
    assertEquals(client.got, ["put:1", "end:null"]);
    assertEquals(client.opened, 1);
    assertEquals(hub.info("d"), undefined);
  } finally {
    client.es.close();
  }
});

Deno.test("SSE reconnect with an end id is 204; with that epoch's put id the stream is new", async () => {
  const hub = new MessageStream();
  await using server = serveHttp(hub, { port: 0 });
  const base = `http://127.0.0.1:${server.addr.port}`;
  const sse = await openSse(base, "d");
  await hub.put("d", 1);
  await hub.delete("d");
  const blocks = await sse.until((b) => b.event === "end");
  await sse.cancel();
  const end = blocks.at(-1);
  assertEquals(end?.id?.endsWith(":1:end"), true);
  const res = await fetch(`${base}/streams/d`, {
    headers: { accept: "text/event-stream", "last-event-id": end?.id ?? "" },
  });
  assertEquals([res.status, await res.text()], [204, ""]);
});

Deno.test("SSE sweeps at half the heartbeat interval: an idle response's first heartbeat is at sweep 2", async () => {
  const hub = new MessageStream();
  const door = new SseDoor(hub, new Metrics(), {
    heartbeatInterval: 60,
    retry: 1000,
    maxBufferBytes: 1 << 20,
  });
  assertEquals(door.sweepPeriod, 30);
  const res = await door.open("q", undefined);
  const reader = res.body!.pipeThrough(new TextDecoderStream()).getReader();
  try {
    const first = await deadline(reader.read(), "the join block");
    const epoch = hub.info("q")?.epoch;
    assertEquals(
      first.value,
      `retry: 1000\nid: ${epoch}:0\nevent: joined\ndata: {"epoch":"${epoch}","seq":0}\n\n`,
    );
    // The join block counts as activity for the first sweep; the second finds it silent.
    const hb = await deadline(reader.read(), "the first heartbeat");
    assertEquals([hb.value, door.sweeps], [": hb\n\n", 2]);
  } finally {
    await reader.cancel();
    door.cut();
  }
});
