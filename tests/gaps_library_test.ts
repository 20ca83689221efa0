/**
 * Issue 12, what the library tells: an Inbox ends with the error when its client gives up, a
 * listener's `close(reason)` hears it, a throwing listener is reported, a closed Inbox is
 * refused, and the hub delivers what the wire would (a decoded copy, never the caller's object).
 *
 * @module
 */

import { assert, assertEquals, assertInstanceOf, assertRejects } from "@std/assert";
import { Inbox, type Listener, MessageStream, type StreamEvent } from "../mod.ts";
import { RemoteStream } from "../client.ts";
import { serve } from "../server.ts";
import { deadline } from "./_wait.ts";

Deno.test("an Inbox of a RemoteStream that gives up ends with the error, after its events", async () => {
  const server = serve({ port: 0, logLevel: "silent" });
  const remote = await RemoteStream.connect({
    port: server.addr.port,
    reconnectTimeWait: 1,
    reconnectJitter: 0,
    maxReconnectAttempts: 1,
  });
  const inbox = new Inbox();
  await remote.listen("s", inbox);
  await remote.put("s", 1);
  await server.shutdown();
  const reader = inbox.getReader();
  assertEquals((await deadline(reader.read(), "the put")).value?.message, 1);
  const error = await deadline(
    reader.read().then(() => undefined, (e: Error) => e),
    "the inbox to end",
  );
  const why = await remote.closed();
  assertInstanceOf(why, Error);
  assertEquals(error, why);
});

Deno.test("a duck-typed listener hears close(reason) when the client gives up, close() when closed", async (t) => {
  for (const giveUp of [true, false]) {
    await t.step(giveUp ? "gives up" : "closed", async () => {
      const server = serve({ port: 0, logLevel: "silent" });
      const remote = await RemoteStream.connect({
        port: server.addr.port,
        reconnectTimeWait: 1,
        reconnectJitter: 0,
        maxReconnectAttempts: 1,
      });
      const closes: (Error | undefined)[] = [];
      const listener: Listener = { put() {}, close: (reason) => closes.push(reason) };
      await remote.listen("s", listener);
      if (giveUp) {
        await server.shutdown();
        await deadline(remote.closed(), "the client to give up");
      } else {
        await remote.close();
        await server.shutdown();
      }
      assertEquals(closes.length, 1);
      assertEquals(closes[0] instanceof Error, giveUp);
    });
  }
});

Deno.test("MessageStream reports a throwing listener and hands it the error through close", async () => {
  const reports: [string, string][] = [];
  const hub = new MessageStream({
    onListenerError: (e, stream) => reports.push([(e as Error).message, stream]),
  });
  const closed: (Error | undefined)[] = [];
  const bad: Listener = {
    put(ev) {
      if (ev.kind === "put") throw new Error("boom");
    },
    close: (reason) => closed.push(reason),
  };
  const good = new Inbox();
  await hub.listen("s", bad);
  await hub.listen("s", good);
  await hub.put("s", 1);
  await hub.put("s", 2);
  assertEquals(reports, [["boom", "s"]]);
  assertEquals(closed.map((e) => e?.message), ["boom"]);
  assertEquals(hub.info("s")?.listeners, 1);
  good.close();
  assertEquals((await Array.fromAsync(good)).map((e) => e.message), [1, 2]);
});

Deno.test("MessageStream reports a throwing listener on stderr by default", async () => {
  const code = `
    import { MessageStream } from "./mod.ts";
    const hub = new MessageStream();
    await hub.listen("job", { put() { throw new Error("boom"); } });
    await hub.put("job", 1);
  `;
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["eval", code],
    cwd: new URL("..", import.meta.url).pathname,
    env: { NO_COLOR: "1" },
    stdout: "piped",
    stderr: "piped",
  }).output();
  assertEquals(
    new TextDecoder().decode(out.stderr),
    'msgstream: a listener of stream "job" threw and was removed: boom\n',
  );
});

Deno.test("listen() with a closed Inbox is refused by the hub and by RemoteStream", async () => {
  await using server = serve({ port: 0, logLevel: "silent" });
  await using remote = await RemoteStream.connect({ port: server.addr.port });
  const inbox = new Inbox();
  inbox.close();
  assertEquals(inbox.closed, true);
  await assertRejects(() => server.hub.listen("s", inbox), TypeError, "the queue is closed");
  await assertRejects(() => remote.listen("s", inbox), TypeError, "the queue is closed");
  assertEquals(server.hub.info("s"), undefined);
});

Deno.test("MessageStream delivers a decoded copy: changing the object after put changes nothing", async () => {
  const hub = new MessageStream();
  const inbox = new Inbox();
  const seen: StreamEvent[] = [];
  await hub.listen("s", inbox);
  await hub.listen("s", { put: (ev) => seen.push(ev) });
  const message = { n: 1, at: new Date(0) };
  const at = await hub.put("s", message);
  message.n = 2;
  const later: StreamEvent[] = [];
  await hub.listen("s", { put: (ev) => later.push(ev) }, { since: { epoch: at.epoch, seq: 0 } });
  const wire = { n: 1, at: "1970-01-01T00:00:00.000Z" };
  assertEquals(seen[0]?.message, wire);
  assert(seen[0]?.message !== message, "the caller's object was delivered");
  assertEquals(later[0]?.message, wire);
  inbox.close();
  assertEquals((await Array.fromAsync(inbox)).map((e) => e.message), [wire]);
  // A spread event keeps its message.
  assertEquals({ ...(seen[0] as StreamEvent) }.message, wire);
});
