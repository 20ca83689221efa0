/**
 * Codec microbenchmarks: decoding a request line and encoding a message, with the default
 * codec and with a registered class. `deno bench bench/codec_bench.ts`
 *
 * @module
 */

import { JsonCodec } from "../codec.ts";

class Progress {
  constructor(public done = 0, public total = 0) {}
}

const plain = new JsonCodec();
const classes = new JsonCodec().register(Progress, { name: "job.progress", version: "1.0" });
const line = JSON.stringify({ action: "put", stream: "job-42", message: "x".repeat(100) });
const objLine = JSON.stringify({
  action: "put",
  stream: "job-42",
  message: { done: 3, total: 10 },
});
const classLine = classes.encode({ action: "put", stream: "job-42", message: new Progress(3, 10) });

Deno.bench({
  name: "decode a put line (128 B string message)",
  group: "decode",
  baseline: true,
  fn: () => {
    plain.decode(line);
  },
});
Deno.bench({
  name: "decode a put line (object message)",
  group: "decode",
  fn: () => {
    plain.decode(objLine);
  },
});
Deno.bench({
  name: "decode a put line (registered class)",
  group: "decode",
  fn: () => {
    classes.decode(classLine);
  },
});
Deno.bench({
  name: "JSON.parse alone (no depth check)",
  group: "decode",
  fn: () => {
    JSON.parse(line);
  },
});
Deno.bench({
  name: "encode a 100-char string",
  group: "encode",
  baseline: true,
  fn: () => {
    plain.encode("x".repeat(100));
  },
});
Deno.bench({
  name: "encode an object",
  group: "encode",
  fn: () => {
    plain.encode({ done: 3, total: 10 });
  },
});
Deno.bench({
  name: "encode a registered class",
  group: "encode",
  fn: () => {
    classes.encode(new Progress(3, 10));
  },
});
