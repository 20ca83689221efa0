/** Event frames and the shared slab (frame.ts). */

import { assert, assertEquals } from "@std/assert";
import { defaultCodec, JsonCodec } from "../codec.ts";
import {
  buildEvent,
  encodeFrame,
  followsInSlab,
  frameMessage,
  type FrameTarget,
  ownEvent,
} from "../frame.ts";
import type { EventKind } from "../types.ts";

const text = (frame: Uint8Array) => new TextDecoder().decode(frame);

class Point {
  constructor(readonly x: number, readonly y: number) {}
}

Deno.test("buildEvent() frames are byte for byte a whole-frame encode, for every kind and message", async (t) => {
  const codec = new JsonCodec().register(Point, { name: "point" });
  const messages: unknown[] = [
    'text with "quotes", a\nnewline and ünïcødé 😀',
    0,
    -1.5e300,
    true,
    null,
    [1, [2, [3]]],
    { a: 1, nested: { b: [null] } },
    new Point(1, 2),
    { toJSON: () => "custom" },
    new Date(0),
  ];
  const actions: Record<EventKind, string> = {
    put: "put",
    header: "header",
    end: "delete",
    reset: "reset",
  };
  for (const kind of ["put", "header", "end", "reset"] as EventKind[]) {
    await t.step(kind, () => {
      for (const message of messages) {
        for (const target of ["slab", "own"] as FrameTarget[]) {
          const ev = buildEvent(codec, kind, { name: "job/ü" }, message, 7, "ep1", target);
          const whole = codec.encode({
            action: actions[kind],
            stream: "job/ü",
            message,
            seq: 7,
            epoch: "ep1",
          });
          assertEquals(text(ev.frame), whole + "\n");
          assertEquals([ev.stream, ev.kind, ev.seq, ev.epoch], ["job/ü", kind, 7, "ep1"]);
          // An object message is what the wire delivers: decoded from the frame (issue 12).
          const wire = message === null || typeof message !== "object"
            ? message
            : codec.decode(codec.encode(message));
          assertEquals(ev.message, wire);
        }
      }
    });
  }
  await t.step("the join header is a put marked header:true", () => {
    for (const message of messages) {
      const ev = buildEvent(codec, "header", { name: "j" }, message, 3, "e", "join");
      assertEquals(ev.kind, "header");
      assertEquals(
        text(ev.frame),
        codec.encode({ action: "put", stream: "j", message, header: true, seq: 3, epoch: "e" }) +
          "\n",
      );
    }
  });
});

Deno.test("buildEvent() caches the stream name's JSON text on the stream", () => {
  const stream: { name: string; jsonName?: string | undefined } = { name: 'a"b' };
  buildEvent(defaultCodec, "put", stream, 1, 1, "e", "slab");
  assertEquals(stream.jsonName, '"a\\"b"');
});

Deno.test("The slab: consecutive frames lie back to back, and a full slab is replaced, never rewritten", () => {
  const s = { name: "s" };
  const first = buildEvent(defaultCodec, "put", s, "x".repeat(100), 1, "e", "slab");
  const kept = first.frame.slice();
  let prev = first.frame;
  let replaced = 0;
  // 2,000 frames of about 150 bytes: several 64 KiB slabs.
  for (let seq = 2; seq <= 2000; seq++) {
    const next = buildEvent(defaultCodec, "put", s, "x".repeat(100), seq, "e", "slab").frame;
    if (followsInSlab(prev, next)) assertEquals(next.buffer, prev.buffer);
    else {
      assert(next.buffer !== prev.buffer);
      replaced++;
    }
    prev = next;
  }
  assert(replaced >= 3, `a new slab was started ${replaced} times`);
  assertEquals(first.frame, kept, "an old frame's bytes never change");
});

Deno.test("The slab: a frame over an eighth of a slab gets a buffer of its own; own and join never use the slab", () => {
  const s = { name: "s" };
  const big = buildEvent(defaultCodec, "put", s, "y".repeat(10_000), 1, "e", "slab");
  assertEquals(big.frame.buffer.byteLength, big.frame.byteLength);
  for (const target of ["own", "join"] as FrameTarget[]) {
    const ev = buildEvent(defaultCodec, "header", s, "h", 1, "e", target);
    assertEquals(ev.frame.buffer.byteLength, ev.frame.byteLength);
  }
});

Deno.test("ownEvent() copies a slab view and keeps an event that owns its frame", () => {
  const s = { name: "s" };
  const view = buildEvent(defaultCodec, "put", s, 1, 1, "e", "slab");
  const copy = ownEvent(view);
  assert(copy !== view);
  assertEquals(copy.frame, view.frame);
  assertEquals(copy.frame.buffer.byteLength, copy.frame.byteLength);
  assertEquals({ ...copy, frame: null }, { ...view, frame: null });
  const own = buildEvent(defaultCodec, "put", s, 1, 1, "e", "own");
  assert(ownEvent(own) === own);
});

Deno.test("frameMessage() decodes a frame's message, even one nested to the codec's depth limit", () => {
  let deep: unknown = 1;
  for (let i = 0; i < 64; i++) deep = [deep];
  for (const message of [deep, { a: "b" }, null]) {
    const ev = buildEvent(defaultCodec, "put", { name: "s" }, message, 1, "e", "own");
    assertEquals(frameMessage(defaultCodec, ev.frame), message);
  }
});

Deno.test("encodeFrame() encodes a whole frame with a newline", () => {
  assertEquals(
    text(encodeFrame(defaultCodec, { action: "pong", id: 2 })),
    '{"action":"pong","id":2}\n',
  );
});
