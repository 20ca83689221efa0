/**
 * Bad input, one case per test. In each, a bystander listener connection follows a run of puts
 * from another connection while the bad client misbehaves: it must get every put, in order,
 * and the server must stay up.
 */

import { assert, assertEquals, assertStringIncludes } from "@std/assert";
import type { MessageServer } from "../server.ts";
import { withBystander } from "./_bystander.ts";
import { listenerCount, putFlood, seqOf } from "./_hub.ts";
import type { Frame, RawClient } from "./_raw_client.ts";
import { engineOptions } from "./_server.ts";
import { poll } from "./_wait.ts";

const MAX_LINE = 4096;

/** {@linkcode withBystander} on a server with this file's line limit, on the engine under test. */
function misbehaving(
  misbehave: (server: MessageServer, bad: RawClient) => Promise<void>,
): Promise<void> {
  return withBystander({ ...engineOptions(), maxLineBytes: MAX_LINE }, misbehave);
}

/**
 * Waits until the server has seen the bad connection end. No event tells, so this polls the
 * server's own count of open connections (the bystander's two stay open).
 */
async function connectionGone(server: MessageServer): Promise<void> {
  await poll(
    () => (server.metrics.connections.tcp ?? 0) <= 2,
    () => `the server to see the bad connection end (${server.metrics.connections.tcp} open)`,
  );
}

/** Sends a ping with an id and reads up to its pong: the connection is still served. */
async function assertStillServed(raw: RawClient): Promise<void> {
  await raw.send({ action: "ping", id: "still" });
  assertEquals(await raw.next(), { action: "pong", id: "still" });
}

function assertError(frame: Frame, code: string, id?: unknown): void {
  assertEquals(frame.action, "error", JSON.stringify(frame));
  assertEquals(frame.code, code, JSON.stringify(frame));
  assertEquals(typeof frame.message, "string");
  if (id !== undefined) assertEquals(frame.id, id);
  else assert(!("id" in frame), `no id was given, yet got ${JSON.stringify(frame)}`);
}

Deno.test("Invalid JSON gets invalid_json and the connection stays open", async () => {
  await misbehaving(async (_server, bad) => {
    for (const text of ["{not json", "}", '{"action":"put",', "nul", "'x'"]) {
      await bad.send(text);
      assertError(await bad.next(), "invalid_json");
    }
    await assertStillServed(bad);
  });
});

Deno.test("A JSON value that is not an object gets invalid_frame", async () => {
  await misbehaving(async (_server, bad) => {
    for (const text of ["[1,2]", "42", '"put"', "null", "true", '[{"action":"ping"}]']) {
      await bad.send(text);
      assertError(await bad.next(), "invalid_frame");
    }
    await bad.send({ action: "ping", id: { nested: 1 } });
    assertError(await bad.next(), "invalid_frame");
    await assertStillServed(bad);
  });
});

Deno.test("An unknown action gets unknown_action with the request's id", async () => {
  await misbehaving(async (_server, bad) => {
    await bad.send({ action: "frobnicate", stream: "bystander", message: 1, id: 7 });
    const e = await bad.next();
    assertError(e, "unknown_action", 7);
    assertStringIncludes(e.message as string, '"frobnicate"');
    await bad.send({ stream: "bystander", message: 1, id: "no-action" });
    assertError(await bad.next(), "unknown_action", "no-action");
    await bad.send({ action: 12, id: "numeric" });
    assertError(await bad.next(), "unknown_action", "numeric");
    await bad.send({ action: "x".repeat(1000), id: 8 });
    const long = await bad.next();
    assertError(long, "unknown_action", 8);
    assert((long.message as string).length < 200, "the message quotes a bounded part");
    await assertStillServed(bad);
  });
});

Deno.test("A missing, empty, non-string or too long stream name gets invalid_stream", async () => {
  await misbehaving(async (server, bad) => {
    const max = server.hub.maxStreamNameLength;
    const names: [string, unknown][] = [
      ["missing", undefined],
      ["empty", ""],
      ["number", 42],
      ["null", null],
      ["array", ["a"]],
      ["too long", "s".repeat(max + 1)],
    ];
    let id = 0;
    for (const action of ["put", "header", "delete", "listen", "hangup"]) {
      for (const [what, stream] of names) {
        const frame: Frame = { action, message: 1, id: ++id };
        if (stream !== undefined) frame.stream = stream;
        await bad.send(frame);
        const e = await bad.next();
        assertError(e, "invalid_stream", id);
        assertStringIncludes(e.message as string, `at most ${max} characters`, `${action} ${what}`);
      }
    }
    // At the limit is fine.
    await bad.send({ action: "put", stream: "s".repeat(max), message: 1, id: "max" });
    assertEquals((await bad.next()).action, "ok");
    await assertStillServed(bad);
  });
});

Deno.test("A put without a message gets missing_message and puts nothing", async () => {
  await misbehaving(async (server, bad) => {
    await bad.send({ action: "ping" }); // a peer of this protocol, not the original
    assertEquals((await bad.next()).action, "pong");
    await bad.send({ action: "put", stream: "bystander", id: "m1" });
    const e = await bad.next();
    assertError(e, "missing_message", "m1");
    assertEquals(e.stream, "bystander");
    await bad.send({ action: "put", stream: "other" });
    assertError(await bad.next(), "missing_message");
    assertEquals(await seqOf(server.hub, "other"), undefined);
    // null is a message.
    await bad.send({ action: "put", stream: "other", message: null, id: "null" });
    const ok = await bad.next();
    const epoch = (await server.hub.stat("other"))?.epoch;
    assertEquals(ok, { action: "ok", id: "null", stream: "other", seq: 1, epoch });
    await assertStillServed(bad);
  });
});

Deno.test("A line over the limit gets line_too_long, then its connection is closed", async (t) => {
  await t.step("a whole line", async () => {
    await misbehaving(async (_server, bad) => {
      const line = JSON.stringify({
        action: "put",
        stream: "bystander",
        message: "x".repeat(MAX_LINE),
      });
      await bad.send(line);
      const rest = await bad.rest();
      assertEquals(rest.map((f) => f.action), ["error", "close"]);
      assertError(rest[0] as Frame, "line_too_long");
      assertStringIncludes((rest[0] as Frame).message as string, `${MAX_LINE} bytes`);
    });
  });
  await t.step("no newline ever comes", async () => {
    await misbehaving(async (_server, bad) => {
      // The limit holds before any newline: the server does not buffer without bound.
      await bad.write('{"action":"put","stream":"bystander","message":"');
      const chunk = "y".repeat(1024);
      const writing = (async () => {
        try {
          for (let i = 0; i < 64; i++) await bad.write(chunk);
        } catch {
          // the server closed the connection: expected
        }
      })();
      const rest = await bad.rest();
      await writing;
      assertEquals(rest.map((f) => f.code ?? f.action), ["line_too_long", "close"]);
    });
  });
  await t.step("exactly the limit is accepted", async () => {
    await misbehaving(async (server, bad) => {
      const frame = { action: "put", stream: "edge", id: 1, message: "" };
      frame.message = "z".repeat(MAX_LINE - JSON.stringify(frame).length);
      assertEquals(new TextEncoder().encode(JSON.stringify(frame)).byteLength, MAX_LINE);
      await bad.send(frame);
      const ok = await bad.next();
      const epoch = (await server.hub.stat("edge"))?.epoch;
      assertEquals(ok, { action: "ok", id: 1, stream: "edge", seq: 1, epoch });
    });
  });
});

Deno.test("Invalid UTF-8 gets invalid_utf8, then the connection is closed", async () => {
  await misbehaving(async (server, bad) => {
    const enc = new TextEncoder();
    const head = enc.encode('{"action":"put","stream":"bad-utf8","message":"');
    const tail = enc.encode('"}\n');
    await bad.write(new Uint8Array([...head, 0xff, 0xfe, 0xc3, ...tail]));
    const rest = await bad.rest();
    assertEquals(rest.map((f) => f.code ?? f.action), ["invalid_utf8", "close"]);
    assertError(rest[0] as Frame, "invalid_utf8");
    assertEquals(await seqOf(server.hub, "bad-utf8"), undefined);
  });
});

Deno.test("Good lines written together with a bad one are served before the refusal", async (t) => {
  const enc = new TextEncoder();
  const good = (id: number) =>
    enc.encode(`{"action":"put","stream":"mixed","message":${id},"id":${id}}\n`);
  const cases: [string, Uint8Array, string][] = [
    [
      "invalid UTF-8",
      new Uint8Array([
        ...enc.encode('{"action":"put","stream":"x","message":"'),
        0xff,
        0x22,
        0x7d,
        0x0a,
      ]),
      "invalid_utf8",
    ],
    [
      "an over-long line",
      enc.encode(`{"action":"put","stream":"x","message":"${"y".repeat(MAX_LINE)}"}\n`),
      "line_too_long",
    ],
    ["an over-long unfinished line", enc.encode("z".repeat(MAX_LINE + 1)), "line_too_long"],
  ];
  for (const [name, badLine, code] of cases) {
    await t.step(name, async () => {
      await misbehaving(async (server, bad) => {
        // One write: two good frames, then the bad one, so the server reads them in one chunk.
        await bad.write(new Uint8Array([...good(1), ...good(2), ...badLine]));
        const rest = await bad.rest();
        assertEquals(rest.map((f) => f.code ?? f.action), ["ok", "ok", code, "close"]);
        assertEquals(await seqOf(server.hub, "mixed"), 2);
        assertEquals(await seqOf(server.hub, "x"), undefined);
        await server.hub.delete("mixed");
      });
    });
  }
});

Deno.test("Deeply nested JSON gets invalid_json without exhausting the stack", async () => {
  await misbehaving(async (server, bad) => {
    const depth = 1500; // fits the line limit, far past the codec's depth limit
    const message = "[".repeat(depth) + "]".repeat(depth);
    await bad.send(`{"action":"put","stream":"deep","id":1,"message":${message}}`);
    const e = await bad.next();
    assertError(e, "invalid_json");
    assertStringIncludes(e.message as string, "deeper than");
    assertEquals(await seqOf(server.hub, "deep"), undefined);
    await assertStillServed(bad);
  });
});

Deno.test("A client vanishing mid-line puts nothing", async () => {
  await misbehaving(async (server, bad) => {
    await bad.send({ action: "ping", id: 0 });
    assertEquals((await bad.next()).action, "pong");
    // Half a put, then gone: the server must not apply it.
    await bad.write('{"action":"put","stream":"half","message":"never fin');
    await bad.close();
    await connectionGone(server);
    assertEquals(await seqOf(server.hub, "half"), undefined);
  });
});

Deno.test("A client vanishing half way through writing a large frame puts nothing", async () => {
  await misbehaving(async (server, bad) => {
    const line = JSON.stringify({ action: "put", stream: "half", message: "w".repeat(3000) }) +
      "\n";
    const bytes = new TextEncoder().encode(line);
    await bad.write(bytes.subarray(0, bytes.byteLength / 2));
    await bad.close();
    await connectionGone(server);
    assertEquals(await seqOf(server.hub, "half"), undefined);
  });
});

Deno.test("A listener vanishing while the server writes to it costs the others nothing", async () => {
  await misbehaving(async (server, bad) => {
    await bad.send({ action: "listen", stream: "bystander", id: "l" });
    await bad.send({ action: "listen", stream: "flood", id: "f" });
    await bad.until((f) => f.id === "f");
    // Queue a lot for it, then vanish without reading.
    const payload = "f".repeat(1024);
    await putFlood(server.hub, "flood", Array.from({ length: 2000 }, (_, i) => ({ i, payload })));
    await bad.close();
    await connectionGone(server);
    assertEquals(listenerCount(server.hub, "flood"), 0);
    assertEquals(listenerCount(server.hub, "bystander"), 1);
  });
});

Deno.test("A client of the original protocol that leaves out a falsy message puts null, as its server did", async () => {
  await misbehaving(async (server, bad) => {
    // The original client writes no "message" when the message is falsy (0, "", [], None).
    await bad.send({ action: "put", stream: "legacy", id: "z" });
    const ok = await bad.next();
    const stat = await server.hub.stat("legacy");
    assertEquals(ok, { action: "ok", id: "z", stream: "legacy", seq: 1, epoch: stat?.epoch });
    assertEquals(stat?.seq, 1);
    await assertStillServed(bad);
  });
});
