/**
 * Line framing microbenchmarks: the framer the TCP door, the client and the CLI read with
 * (`LineFramer.push`, byte-limited) against `TextDecoderStream` + `TextLineStream` (no limit),
 * on 64 KiB reads of 128-byte put lines, and on lines split across reads.
 * `deno bench bench/framer_bench.ts`
 *
 * @module
 */

import { TextLineStream } from "@std/streams/text-line-stream";
import { LineFramer } from "../framer.ts";

const line = JSON.stringify({ action: "put", stream: "job-42", message: "x".repeat(80) }) + "\n";
const whole = new TextEncoder().encode(line.repeat(Math.floor(65536 / line.length)));
const linesPerRead = Math.floor(65536 / line.length);
// The same bytes cut every 1000 bytes: most lines span two reads.
const cut: Uint8Array[] = [];
for (let at = 0; at < whole.byteLength; at += 1000) cut.push(whole.subarray(at, at + 1000));

Deno.bench({
  name: `LineFramer.push: one 64 KiB read of ${linesPerRead} lines`,
  group: "whole reads",
  baseline: true,
  fn: () => {
    const framer = new LineFramer();
    if (framer.push(whole).length !== linesPerRead) throw new Error("lines lost");
  },
});
Deno.bench({
  name: "TextDecoderStream + TextLineStream: the same read",
  group: "whole reads",
  async fn() {
    const lines = await Array.fromAsync(
      ReadableStream.from([whole]).pipeThrough(new TextDecoderStream())
        .pipeThrough(new TextLineStream()),
    );
    if (lines.length !== linesPerRead) throw new Error("lines lost");
  },
});
Deno.bench({
  name: "LineFramer.push: the same bytes in 1000-byte reads",
  group: "split reads",
  baseline: true,
  fn: () => {
    const framer = new LineFramer();
    let n = 0;
    for (const chunk of cut) n += framer.push(chunk).length;
    if (n !== linesPerRead) throw new Error("lines lost");
  },
});
Deno.bench({
  name: "TextDecoderStream + TextLineStream: the same 1000-byte reads",
  group: "split reads",
  async fn() {
    const lines = await Array.fromAsync(
      ReadableStream.from(cut).pipeThrough(new TextDecoderStream())
        .pipeThrough(new TextLineStream()),
    );
    if (lines.length !== linesPerRead) throw new Error("lines lost");
  },
});
