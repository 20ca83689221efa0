/**
 * Frame building: what the hub does once per event. Encoding the whole frame object with the
 * codec versus splicing the message's text into a template (what `buildEvent` in frame.ts does
 * with a `JsonCodec`), and allocating a buffer per frame versus encoding into a shared slab.
 * `deno bench bench/frame_bench.ts`
 *
 * @module
 */

import { defaultCodec } from "../codec.ts";
import { buildEvent, encodeFrame } from "../frame.ts";

const message = "x".repeat(100);
const epoch = "a1b2c3d4e50";
const enc = new TextEncoder();
let seq = 0;

Deno.bench({
  name: "encodeFrame: codec.encode(frame) + TextEncoder.encode",
  group: "frame",
  baseline: true,
  fn: () => {
    encodeFrame(defaultCodec, { action: "put", stream: "job-42", message, seq: ++seq, epoch });
  },
});
Deno.bench({
  name: "template around codec.encode(message) + TextEncoder.encode",
  group: "frame",
  fn: () => {
    enc.encode(
      `{"action":"put","stream":"job-42","message":${
        defaultCodec.encode(message)
      },"seq":${++seq},` +
        `"epoch":${JSON.stringify(epoch)}}\n`,
    );
  },
});
const stream = { name: "job-42" };
Deno.bench({
  name: "buildEvent into the shared slab (what the hub does per put)",
  group: "frame",
  fn: () => {
    buildEvent(defaultCodec, "put", stream, message, ++seq, epoch, "slab");
  },
});
const slab = new Uint8Array(64 * 1024);
let used = 0;
Deno.bench({
  name: "template + encodeInto a shared slab",
  group: "frame",
  fn: () => {
    const text =
      `{"action":"put","stream":"job-42","message":${
        defaultCodec.encode(message)
      },"seq":${++seq},` +
      `"epoch":${JSON.stringify(epoch)}}\n`;
    if (slab.byteLength - used < text.length * 3) used = 0;
    used += enc.encodeInto(text, slab.subarray(used)).written;
  },
});

const frames = Array.from(
  { length: 64 },
  () => encodeFrame(defaultCodec, { action: "put", message }),
);
Deno.bench({
  name: "join 64 frames by copying (per-connection concat)",
  group: "outbound",
  baseline: true,
  fn: () => {
    let size = 0;
    for (const f of frames) size += f.byteLength;
    const out = new Uint8Array(size);
    let off = 0;
    for (const f of frames) {
      out.set(f, off);
      off += f.byteLength;
    }
  },
});
Deno.bench({
  name: "one view over 64 back-to-back frames (slab run)",
  group: "outbound",
  fn: () => {
    new Uint8Array(slab.buffer, 0, 64 * 160);
  },
});
