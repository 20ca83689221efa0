/**
 * Liveness: ping/pong frames, the server's ping sweep and idle timeout, and the client's
 * detection of a server that stops answering.
 */

import {
  assert,
  assertEquals,
  assertInstanceOf,
  assertRejects,
  assertStringIncludes,
} from "@std/assert";
import { RemoteStream, type Status } from "../client.ts";
import { ProtocolError } from "../protocol.ts";
import { serve } from "../server.ts";
import { connectRaw, type Frame } from "./_raw_client.ts";
import { deadline } from "./_wait.ts";

Deno.test("A ping is answered with a pong echoing its id", async (t) => {
  await using server = serve({ port: 0 });
  await using raw = await connectRaw(server.addr.port);
  for (const id of [1, "abc", 0, -2.5, "☃", ""]) {
    await t.step(`id ${JSON.stringify(id)}`, async () => {
      await raw.send({ action: "ping", id });
      assertEquals(await raw.next(), { action: "pong", id });
    });
  }
  await t.step("no id", async () => {
    await raw.send({ action: "ping" });
    assertEquals(await raw.next(), { action: "pong" });
  });
});

Deno.test("The server pings a silent connection every pingInterval", async () => {
  await using server = serve({ port: 0, pingInterval: 20, idleTimeout: 0 });
  await using raw = await connectRaw(server.addr.port);
  // A connection that never said hello may be a client of the original protocol, which reads
  // `stream` from every frame: its pings carry `"stream": null`.
  for (let i = 0; i < 3; i++) assertEquals(await raw.next(), { action: "ping", stream: null });
});

Deno.test("A pong answering the server's ping gets no error and keeps the connection alive", async () => {
  // The idle timeout leaves room for a loaded machine to answer late.
  await using server = serve({ port: 0, pingInterval: 20, idleTimeout: 400 });
  await using raw = await connectRaw(server.addr.port);
  await raw.send({ action: "hello", version: 1 });
  // Answer pings for well beyond the idle timeout (forty pings, 20 ms apart or more).
  for (let pings = 0; pings < 40;) {
    const f = await raw.next();
    assert(f.action !== "error" && f.action !== "close", `unexpected frame ${JSON.stringify(f)}`);
    if (f.action === "ping") {
      pings++;
      await raw.send({ action: "pong" });
    }
  }
  await raw.send({ action: "ping", id: "still-there" });
  const got = await raw.until((f) => f.id === "still-there");
  assertEquals(got.filter((f) => f.action !== "ping"), [{ action: "pong", id: "still-there" }]);
});

Deno.test("The server closes a connection that sent ping and then went silent past idleTimeout", async () => {
  await using server = serve({ port: 0, pingInterval: 20, idleTimeout: 60 });
  await using raw = await connectRaw(server.addr.port);
  await raw.send({ action: "ping", id: 1 });
  // The server's own pings may come first: skip them.
  assertEquals((await raw.until((f) => f.action !== "ping")).pop(), { action: "pong", id: 1 });
  const rest = await raw.rest(); // ends only when the server closes the connection
  const last = rest.filter((f) => f.action !== "ping");
  assertEquals(last.map((f) => f.action), ["error", "close"]);
  assertEquals(typeof (last[0] as Frame).code, "string");
});

Deno.test("The server closes a connection that sent hello and then went silent past idleTimeout", async () => {
  await using server = serve({ port: 0, pingInterval: 20, idleTimeout: 60 });
  await using raw = await connectRaw(server.addr.port);
  await raw.send({ action: "hello", version: 1, id: 1 });
  assertEquals((await raw.until((f) => f.action !== "ping")).pop()?.action, "ok");
  const rest = await raw.rest();
  assertEquals(rest.filter((f) => f.action !== "ping").map((f) => f.action), ["error", "close"]);
});

Deno.test("The server never closes a legacy connection for idleness, only pings it", async () => {
  await using server = serve({ port: 0, pingInterval: 20, idleTimeout: 40 });
  await using raw = await connectRaw(server.addr.port);
  await raw.send({ action: "put", stream: "legacy", message: 1 });
  // Ten pings: the connection has been silent for at least 200 ms, five idle timeouts.
  for (let i = 0; i < 10; i++) assertEquals(await raw.next(), { action: "ping", stream: null });
  // Sending ping makes it a live connection: ask and read the answer, which proves it is open.
  await raw.send({ action: "ping", id: "alive" });
  const got = await raw.until((f) => f.id === "alive");
  assertEquals(got[got.length - 1], { action: "pong", id: "alive" });
  assertEquals(server.hub.info("legacy")?.seq, 1);
});

/** A TCP server that accepts and reads but never answers, counting connections. */
function deadServer(): { port: number; accepted: () => number; close: () => Promise<void> } {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const conns = new Set<Deno.Conn>();
  let accepted = 0;
  const drains: Promise<void>[] = [];
  const loop = (async () => {
    for await (const conn of listener) {
      accepted++;
      conns.add(conn);
      drains.push((async () => {
        try {
          for await (const _ of conn.readable) { /* swallow */ }
        } catch { /* closed */ }
        conns.delete(conn);
      })());
    }
  })();
  return {
    port: (listener.addr as Deno.NetAddr).port,
    accepted: () => accepted,
    async close() {
      listener.close();
      await loop.catch(() => {});
      for (const c of conns) {
        try {
          c.close();
        } catch { /* closed */ }
      }
      await Promise.all(drains);
    },
  };
}

Deno.test("RemoteStream.connect() rejects when the server never answers hello", async () => {
  const dead = deadServer();
  try {
    const err = await assertRejects(
      () =>
        RemoteStream.connect({
          port: dead.port,
          pingInterval: 20,
          maxPingsOut: 2,
          maxReconnectAttempts: 3,
          reconnectTimeWait: 10,
        }),
      ProtocolError,
    );
    assertEquals(err.code, "not_connected");
    assertStringIncludes(err.message, "did not answer pings");
    // A failed first connect does not go on reconnecting in the background.
    assertEquals(dead.accepted(), 1);
  } finally {
    await dead.close();
  }
});

/**
 * A hand-written server: answers `hello` with `ok` on every connection; on the first it then
 * stops answering anything, on later ones it answers pings too.
 */
function stallingServer(): { port: number; close: () => Promise<void> } {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const conns = new Set<Deno.Conn>();
  const tasks: Promise<void>[] = [];
  let n = 0;
  const encoder = new TextEncoder();
  const loop = (async () => {
    for await (const conn of listener) {
      const first = n++ === 0;
      conns.add(conn);
      tasks.push((async () => {
        let stalled = false;
        let text = "";
        try {
          for await (const chunk of conn.readable.pipeThrough(new TextDecoderStream())) {
            text += chunk;
            let i: number;
            while ((i = text.indexOf("\n")) !== -1) {
              const f = JSON.parse(text.slice(0, i)) as Frame;
              text = text.slice(i + 1);
              if (stalled) continue;
              let answer: Frame | undefined;
              if (f.action === "hello") answer = { action: "ok", id: f.id, version: 1 };
              else if (f.action === "ping") answer = { action: "pong" };
              if (answer) await conn.write(encoder.encode(JSON.stringify(answer) + "\n"));
              if (f.action === "hello" && first) stalled = true;
            }
          }
        } catch { /* closed */ }
        conns.delete(conn);
      })());
    }
  })();
  return {
    port: (listener.addr as Deno.NetAddr).port,
    async close() {
      listener.close();
      await loop.catch(() => {});
      for (const c of conns) {
        try {
          c.close();
        } catch { /* closed */ }
      }
      await Promise.all(tasks);
    },
  };
}

Deno.test("RemoteStream reconnects when a connected server stops answering pings", async () => {
  const stalling = stallingServer();
  try {
    const remote = await RemoteStream.connect({
      port: stalling.port,
      pingInterval: 20,
      maxPingsOut: 2,
      reconnectTimeWait: 10,
      reconnectJitter: 0,
    });
    const seen: Status[] = [];
    await deadline(
      (async () => {
        for await (const s of remote.status()) {
          seen.push(s);
          if (s.type === "connected") break;
        }
      })(),
      () => `status "connected" after the stall (seen: ${seen.map((s) => s.type)})`,
    );
    assertEquals(seen.map((s) => s.type), [
      "disconnected",
      "reconnecting",
      "connecting",
      "connected",
    ]);
    const error = seen[0]?.error;
    assertInstanceOf(error, ProtocolError);
    assertEquals(error.code, "not_connected");
    await remote.close();
    assertEquals(await deadline(remote.closed(), "the client to close"), undefined);
  } finally {
    await stalling.close();
  }
});
