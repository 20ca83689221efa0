/** The codec: JSON with registered classes, its limits, and a custom codec end to end. */

import {
  assert,
  assertEquals,
  assertFalse,
  assertInstanceOf,
  assertStringIncludes,
  assertThrows,
} from "@std/assert";
import { type Codec, JsonCodec } from "../codec.ts";
import { MessageStream } from "../mod.ts";
import { serve } from "../server.ts";
import { RemoteStream } from "../client.ts";
import { connectRaw } from "./_raw_client.ts";
import { Recorder } from "./_recorder.ts";

class Progress {
  done: number;
  total: number;
  constructor(done = 0, total = 0) {
    this.done = done;
    this.total = total;
  }
  get fraction(): number {
    return this.total === 0 ? 0 : this.done / this.total;
  }
}

class Point {
  x = 0;
  y = 0;
}

Deno.test("JsonCodec round trips registered classes, also nested", () => {
  const codec = new JsonCodec()
    .register(Progress, { name: "job.progress", version: "1.0" })
    .register(Point, { name: "geo.point" });
  const p = new Point();
  p.x = 3;
  const value = { progress: new Progress(3, 12), points: [p, new Point()], note: "x" };
  const line = codec.encode(value);
  assertFalse(line.includes("\n"));
  assertStringIncludes(
    line,
    '{".class":"job.progress",".version":"1.0",".state":{"done":3,"total":12}}',
  );
  assertStringIncludes(line, '{".class":"geo.point",".version":"0.0",".state":{"x":3,"y":0}}');
  const back = codec.decode(line) as typeof value;
  assertInstanceOf(back.progress, Progress);
  assertEquals(back.progress.fraction, 0.25);
  assertInstanceOf(back.points[0], Point);
  assertEquals(back.points.map((q) => [q.x, q.y]), [[3, 0], [0, 0]]);
  assertEquals(back.note, "x");
});

Deno.test("JsonCodec leaves an unregistered .class as plain data, exactly as sent", () => {
  const codec = new JsonCodec().register(Progress, { name: "job.progress" });
  const cases = [
    { ".class": "other.thing", ".version": "2", ".state": { a: [1, { b: 2 }] } },
    { ".class": "job.progress", ".version": "1", ".state": "not an object" },
    { ".class": 42, ".state": {} },
  ];
  for (const value of cases) {
    const text = JSON.stringify(value);
    const back = codec.decode(text);
    assertEquals(back, value);
    assertFalse(back instanceof Progress);
    assertEquals(codec.encode(back), text); // a relay passes it on unchanged
  }
});

Deno.test("JsonCodec.register() refuses an empty or taken name", () => {
  const codec = new JsonCodec().register(Progress, { name: "p" });
  codec.register(Progress, { name: "p" }); // the same class again is fine
  assertThrows(() => codec.register(Point, { name: "p" }), TypeError, 'name "p" is taken');
  assertThrows(() => codec.register(Point, { name: "" }), TypeError, "non-empty");
});

Deno.test("JsonCodec.decode() throws SyntaxError on text that is not JSON", async (t) => {
  const codec = new JsonCodec();
  for (const text of ["", "{", "{not json}", "[1,]", "{'a':1}", "undefined", '{"a":1}x']) {
    await t.step(JSON.stringify(text), () => {
      assertThrows(() => codec.decode(text), SyntaxError);
    });
  }
});

Deno.test("JsonCodec.decode() refuses nesting deeper than maxDepth with SyntaxError", async (t) => {
  const codec = new JsonCodec({ maxDepth: 5 });
  await t.step("at the limit decodes", () => {
    assertEquals(codec.decode("[[[[{}]]]]"), [[[[{}]]]]);
  });
  await t.step("one deeper throws", () => {
    assertThrows(() => codec.decode("[[[[[{}]]]]]"), SyntaxError, "deeper than 5");
  });
  await t.step("many siblings are not depth", () => {
    const text = JSON.stringify(Array.from({ length: 50 }, () => [{ a: [] }]));
    assertEquals((codec.decode(text) as unknown[]).length, 50);
  });
  await t.step("brackets inside strings do not count", () => {
    const text = JSON.stringify({ s: "[[[[[[[[{{{{{{{{", t: 'a\\"[[[[[[[[' });
    assertEquals(codec.decode(text), JSON.parse(text));
  });
  await t.step("the default limit stops a hostile frame", () => {
    const deep = "[".repeat(100_000) + "]".repeat(100_000);
    assertThrows(() => new JsonCodec().decode(deep), SyntaxError, "deeper than 64");
  });
  await t.step("a bad maxDepth is a RangeError", () => {
    assertThrows(() => new JsonCodec({ maxDepth: 0 }), RangeError);
  });
});

Deno.test("JsonCodec.encode() throws TypeError on values JSON cannot carry", () => {
  const codec = new JsonCodec();
  const cyclic: Record<string, unknown> = {};
  cyclic.self = cyclic;
  assertThrows(() => codec.encode(cyclic), TypeError);
  assertThrows(() => codec.encode({ n: 1n }), TypeError);
  assertEquals(codec.encode(undefined), "null");
  assertEquals(codec.encode("a\nb\u2028"), '"a\\nb\u2028"');
});

/** A codec that is not JSON on the wire: JSON text, reversed (code point by code point). */
class ReversedJson implements Codec {
  encodes = 0;
  decodes = 0;
  readonly #inner = new JsonCodec().register(Progress, { name: "job.progress" });
  encode(value: unknown): string {
    this.encodes++;
    return Array.from(this.#inner.encode(value)).reverse().join("");
  }
  decode(text: string): unknown {
    this.decodes++;
    return this.#inner.decode(Array.from(text).reverse().join(""));
  }
}

Deno.test("A custom codec is used by the hub, the server and the client", async () => {
  const serverCodec = new ReversedJson();
  const clientCodec = new ReversedJson();
  await using server = serve({ port: 0, codec: serverCodec });
  assertEquals(server.hub.codec, serverCodec);
  await using publisher = await RemoteStream.connect({
    port: server.addr.port,
    codec: clientCodec,
  });
  await using listener = await RemoteStream.connect({
    port: server.addr.port,
    codec: clientCodec,
  });
  const local = new Recorder("in-process");
  await server.hub.listen("job", local);
  const remote = new Recorder("remote");
  await listener.listen("job", remote);
  await publisher.header("job", { state: "running", "ünï": "😀" });
  await publisher.put("job", new Progress(1, 4));

  // The server decoded the client's frames into a class instance.
  await local.waitFor(2);
  assertInstanceOf(local.events[1]?.message, Progress);
  // The remote listener got it back as an instance too, through the server's encoding.
  const got = await remote.waitFor(2);
  assertEquals(got.map((e) => e.kind), ["header", "put"]);
  assertEquals(got[0]?.message, { state: "running", "ünï": "😀" });
  assertInstanceOf(got[1]?.message, Progress);
  assertEquals((got[1]?.message as Progress).fraction, 0.25);
  assert(serverCodec.decodes >= 2 && serverCodec.encodes >= 2);
  assert(clientCodec.decodes >= 2 && clientCodec.encodes >= 2);

  // On the wire, every server frame is the custom encoding.
  await using raw = await connectRaw(server.addr.port);
  await raw.write(serverCodec.encode({ action: "listen", stream: "job", id: 7 }) + "\n");
  const line = await raw.next();
  // The raw reader parses JSON, which reversed text is not.
  assertEquals(line.action, "<undecodable>");
  const header = serverCodec.decode(line.line as string) as Record<string, unknown>;
  assertEquals(header.action, "put");
  assertEquals(header.header, true);
  const ok = serverCodec.decode((await raw.next()).line as string) as Record<string, unknown>;
  assertEquals([ok.action, ok.id, ok.seq], ["ok", 7, 1]);
  server.hub.hangup("job", local);
});

Deno.test("MessageStream uses its codec for every event frame", async () => {
  const codec = new ReversedJson();
  const hub = new MessageStream({ codec });
  const rec = new Recorder();
  await hub.listen("a", rec);
  await hub.put("a", new Progress(2, 2));
  const frame = new TextDecoder().decode(rec.events[0]?.frame).trimEnd();
  const decoded = codec.decode(frame) as Record<string, unknown>;
  assertEquals(decoded.action, "put");
  assertInstanceOf(decoded.message, Progress);
});
