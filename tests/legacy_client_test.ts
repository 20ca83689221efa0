/**
 * A client that speaks only the original Python module's frames: no ids, no hello, Python's
 * `json.dumps` spacing, `endqueue` with `"stream": null`. It reads frames the way the original
 * `recvcommand` did: `obj['action'], obj['stream'], obj.get('message')` — a frame without a
 * `stream` key raised KeyError and killed the original client's reader thread.
 */

import { assertEquals } from "@std/assert";
import { serve } from "../server.ts";
import { seqOf } from "./_hub.ts";
import { connectRaw, type Frame, type RawClient } from "./_raw_client.ts";
import { engineOptions } from "./_server.ts";

/** The original `sendcommand`: message left out when falsy; Python's separators. */
function sendcommand(
  raw: RawClient,
  action: string,
  stream: string | null = null,
  message?: unknown,
) {
  const obj: Record<string, unknown> = { action, stream };
  if (message) obj.message = message;
  return raw.send(JSON.stringify(obj).replaceAll('","', '", "').replace(/":/g, '": '));
}

/** The original `recvcommand`: what it returns, or the KeyError it raised. */
function recvcommand(f: Frame): [action: unknown, stream: unknown, message: unknown] {
  if (!("action" in f) || !("stream" in f)) {
    throw new Error(`KeyError: the original client cannot read ${JSON.stringify(f)}`);
  }
  return [f.action, f.stream, f.message ?? null];
}

/** The next frame, read as the original client read it. */
async function recv(raw: RawClient): Promise<[unknown, unknown, unknown]> {
  return recvcommand(await raw.next());
}

/** What the original client's `_process_queue` delivered: `put` frames, until `close`. */
async function recvPuts(raw: RawClient, n: number): Promise<[unknown, unknown][]> {
  const got: [unknown, unknown][] = [];
  while (got.length < n) {
    const [action, stream, message] = await recv(raw);
    if (action === "close") break;
    if (action === "put") got.push([stream, message]);
  }
  return got;
}

Deno.test("A client of the original protocol listens, puts, sets headers and hangs up", async () => {
  await using server = serve({ port: 0, ...engineOptions() });
  await using pub = await connectRaw(server.addr.port);
  await using sub = await connectRaw(server.addr.port);

  await sendcommand(pub, "header", "M2", ["H2", 25]);
  // The publisher's own listen proves the header is set: its join header comes back first.
  await sendcommand(pub, "listen", "M2");
  const join = await pub.next();
  assertEquals([join.action, join.stream, join.message, join.header], [
    "put",
    "M2",
    ["H2", 25],
    true,
  ]);
  await sendcommand(pub, "hangup", "M2");

  await sendcommand(sub, "listen", "M2");
  assertEquals(await recv(sub), ["put", "M2", ["H2", 25]]); // the join header, as a put
  for (let k = 0; k < 3; k++) await sendcommand(pub, "put", "M2", ["S3", k]);
  assertEquals(await recvPuts(sub, 3), [["M2", ["S3", 0]], ["M2", ["S3", 1]], ["M2", ["S3", 2]]]);

  // A header change while listening is a `header` frame, which the original client skips.
  await sendcommand(pub, "header", "M2", ["H2", 26]);
  assertEquals(await recv(sub), ["header", "M2", ["H2", 26]]);

  // hangup: the subscriber leaves M2; a self-put on M3 proves its later listen is in place.
  await sendcommand(sub, "hangup", "M2");
  await sendcommand(sub, "listen", "M3");
  await sendcommand(sub, "put", "M3", ["sync", 1]);
  assertEquals(await recvPuts(sub, 1), [["M3", ["sync", 1]]]);
  await sendcommand(pub, "put", "M2", ["S3", 3]); // not for sub any more
  await sendcommand(pub, "put", "M3", ["S1", 0]);
  assertEquals(await recvPuts(sub, 1), [["M3", ["S1", 0]]]);

  // endqueue (sent with "stream": null): every stream stops.
  await sendcommand(sub, "endqueue");
  await sendcommand(sub, "listen", "M4");
  await sendcommand(sub, "put", "M4", ["sync", 2]);
  assertEquals(await recvPuts(sub, 1), [["M4", ["sync", 2]]]);
  await sendcommand(pub, "put", "M3", ["S1", 1]); // not for sub any more
  await sendcommand(pub, "put", "M4", ["S4", 0]);
  assertEquals(await recvPuts(sub, 1), [["M4", ["S4", 0]]]);

  // delete: a `delete` frame naming the stream.
  await sendcommand(pub, "delete", "M4");
  assertEquals(await recv(sub), ["delete", "M4", null]);
  assertEquals(await seqOf(server.hub, "M4"), undefined);

  // The original's RemoteStream.close(): endqueue, then the socket closes.
  await sendcommand(sub, "endqueue");
  await sub.close();
  await pub.close();
});

Deno.test("A put the original client sends without a message is put as null, as its server did", async () => {
  await using server = serve({ port: 0, ...engineOptions() });
  await using listener = await connectRaw(server.addr.port);
  await listener.send({ action: "listen", stream: "M1", id: 1 }); // joined before the puts
  assertEquals((await recv(listener))[0], "ok");
  await using raw = await connectRaw(server.addr.port);
  await sendcommand(raw, "put", "M1", 0); // the original drops a falsy message from the frame
  await sendcommand(raw, "put", "M1", 7);
  assertEquals(await recvPuts(listener, 2), [["M1", null], ["M1", 7]]);
  await sendcommand(raw, "bogus"); // a frame the server cannot place on a stream: readable
  const [action, stream] = await recv(raw);
  assertEquals([action, stream], ["error", null]);
  assertEquals(await seqOf(server.hub, "M1"), 2);
});

Deno.test("A client of the original protocol can read the server's pings", async () => {
  await using server = serve({ port: 0, ...engineOptions(), pingInterval: 20, idleTimeout: 40 });
  await using raw = await connectRaw(server.addr.port);
  await sendcommand(raw, "listen", "M1");
  // Silent, as the original listener is: it is pinged, never cut off for idleness.
  for (let i = 0; i < 3; i++) {
    const [action, stream] = await recv(raw);
    assertEquals([action, stream], ["ping", null]);
  }
  await server.hub.put("M1", ["S1", 0]);
  assertEquals(await recvPuts(raw, 1), [["M1", ["S1", 0]]]);
});

Deno.test("Listeners of the original protocol get close when the server shuts down", async () => {
  const server = serve({ port: 0, ...engineOptions() });
  await using raw = await connectRaw(server.addr.port);
  await sendcommand(raw, "listen", "M1");
  await sendcommand(raw, "put", "M1", ["sync", 0]);
  assertEquals(await recvPuts(raw, 1), [["M1", ["sync", 0]]]);
  await server.shutdown();
  assertEquals(await recv(raw), ["close", null, null]);
  assertEquals(await raw.nextOrEnd(), undefined);
});
