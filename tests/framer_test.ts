// The line framer (framer.ts), without a socket: chunks in, lines and errors out.
import { assertEquals, assertRejects } from "@std/assert";
import { TextLineStream } from "@std/streams/text-line-stream";
import { LineError, LineFramer, readLines } from "../framer.ts";
import { prng } from "./_prng.ts";

const enc = new TextEncoder();

/** Feeds each chunk; returns every line, then the error's code (if any). */
function frame(chunks: (string | Uint8Array)[], maxLineBytes = 1 << 20, fatal = true) {
  const framer = new LineFramer({ maxLineBytes, fatal });
  const lines: string[] = [];
  for (const c of chunks) lines.push(...framer.push(typeof c === "string" ? enc.encode(c) : c));
  lines.push(...framer.end());
  return { lines, error: framer.error?.code };
}

Deno.test("LineFramer splits at \\n and drops the \\r of \\r\\n only", () => {
  assertEquals(frame(["a\nb\r\nc\rd\n\n\r\n"]), {
    lines: ["a", "b", "c\rd", "", ""],
    error: undefined,
  });
});

Deno.test("LineFramer counts a last line without \\n, as it is, when the input ends", () => {
  assertEquals(frame(["a\nlast\r"]).lines, ["a", "last\r"]);
  assertEquals(frame(["a\n"]).lines, ["a"], "no empty line after a final \\n");
  assertEquals(frame([]).lines, []);
});

Deno.test("LineFramer joins lines split over many chunks, multi-byte characters included", () => {
  const bytes = enc.encode("été 🎉\r\nzwei\nend");
  const chunks = [...bytes].map((b) => new Uint8Array([b]));
  assertEquals(frame(chunks).lines, ["été 🎉", "zwei", "end"]);
});

Deno.test("LineFramer does not keep the caller's buffer: it may be reused after push()", () => {
  const framer = new LineFramer();
  const buf = new Uint8Array(8);
  buf.set(enc.encode("abc"));
  assertEquals(framer.push(buf.subarray(0, 3)), []);
  buf.set(enc.encode("d\nxyz"));
  assertEquals(framer.push(buf.subarray(0, 5)), ["abcd"]);
  buf.fill(0x21);
  assertEquals(framer.end(), ["xyz"]);
});

Deno.test("LineFramer skips a byte-order mark at the start only", () => {
  const bom = new Uint8Array([0xef, 0xbb, 0xbf]);
  assertEquals(frame([bom, "a\n", bom, "b\n"]).lines, ["a", "\ufeffb"]);
  assertEquals(frame([bom.subarray(0, 1), bom.subarray(1), "a"]).lines, ["a"]);
});

Deno.test("LineFramer accepts a line of exactly maxLineBytes, \\r included", () => {
  assertEquals(frame(["abcd\nabc\r\nab\r", "c"], 4), {
    lines: ["abcd", "abc", "ab\rc"],
    error: undefined,
  });
});

Deno.test("LineFramer refuses a line over the limit after returning the good lines before it", () => {
  assertEquals(frame(["ok\nabcde\nnever\n"], 4), { lines: ["ok"], error: "line_too_long" });
  const framer = new LineFramer({ maxLineBytes: 4 });
  framer.push(enc.encode("abcdef"));
  assertEquals(framer.error?.message, "Line longer than 4 bytes");
  assertEquals(framer.push(enc.encode("\nmore\n")), [], "nothing after a refused line");
  assertEquals(framer.end(), []);
});

Deno.test("LineFramer refuses a line over the limit that arrives in reads each under it", async (t) => {
  await t.step("the line is completed by a later read", () => {
    assertEquals(frame(["ok\nab", "cd", "e\nnever\n"], 4), {
      lines: ["ok"],
      error: "line_too_long",
    });
  });
  await t.step("the line never ends", () => {
    const framer = new LineFramer({ maxLineBytes: 10 });
    for (let i = 0; i < 3; i++) assertEquals(framer.push(enc.encode("xxx")), []);
    assertEquals(framer.error, undefined, "9 bytes so far");
    assertEquals(framer.push(enc.encode("xx")), []);
    assertEquals(framer.error?.code, "line_too_long");
  });
  await t.step("the last line of a chunk with good lines", () => {
    assertEquals(frame(["a\nbc", "d\nef", "ghi\n"], 4), {
      lines: ["a", "bcd"],
      error: "line_too_long",
    });
  });
});

Deno.test("LineFramer refuses bytes that are not UTF-8 after the good lines before them", () => {
  const bad = new Uint8Array([0x61, 0xff, 0x0a]);
  assertEquals(frame(["ok\n", bad, "never\n"]), { lines: ["ok"], error: "invalid_utf8" });
  assertEquals(frame(["ok\n", bad, "never\n"]).lines, ["ok"]);
  assertEquals(frame(["ok\nx", bad]), { lines: ["ok"], error: "invalid_utf8" }, "carried head");
  assertEquals(frame(["ok\n", bad.subarray(0, 2)]), { lines: ["ok"], error: "invalid_utf8" });
});

Deno.test("LineFramer with fatal: false decodes bad bytes as U+FFFD, as TextDecoderStream", () => {
  const bad = new Uint8Array([0x61, 0xff, 0x0a]);
  assertEquals(frame([bad, "b"], 100, false), { lines: ["a\ufffd", "b"], error: undefined });
});

Deno.test("LineFramer frames like TextDecoderStream + TextLineStream on random input", async () => {
  const random = prng(20261130);
  const alphabet = ["a", "b", "\n", "\r", "\r\n", "é", "🎉", " ", "{}"];
  for (let round = 0; round < 200; round++) {
    let text = "";
    const n = Math.floor(random() * 60);
    for (let i = 0; i < n; i++) text += alphabet[Math.floor(random() * alphabet.length)];
    const bytes = enc.encode(text);
    const chunks: Uint8Array[] = [];
    for (let at = 0; at < bytes.byteLength;) {
      const size = 1 + Math.floor(random() * 8);
      chunks.push(bytes.subarray(at, at + size));
      at += size;
    }
    const expected = await Array.fromAsync(
      ReadableStream.from(chunks).pipeThrough(new TextDecoderStream())
        .pipeThrough(new TextLineStream()),
    );
    assertEquals(frame(chunks), { lines: expected, error: undefined }, JSON.stringify(text));
  }
});

Deno.test("readLines() yields every good line, then throws the LineError", async () => {
  const source = ReadableStream.from(["one\ntwo\n", "toolong\nnever\n"])
    .pipeThrough(new TextEncoderStream());
  const got: string[] = [];
  const error = await assertRejects(async () => {
    for await (const line of readLines(source, { maxLineBytes: 5 })) got.push(line);
  }, LineError);
  assertEquals([got, error.code], [["one", "two"], "line_too_long"]);
});

Deno.test("readLines() yields the last unterminated line and cancels its source on break", async () => {
  let cancelled = false;
  const source = new ReadableStream<Uint8Array>({
    start(c) {
      c.enqueue(enc.encode("a\nb\nc"));
    },
    cancel() {
      cancelled = true;
    },
  });
  for await (const line of readLines(source)) {
    if (line === "b") break;
  }
  assertEquals(cancelled, true);
  const done = ReadableStream.from([enc.encode("x\ny")]);
  assertEquals(await Array.fromAsync(readLines(done)), ["x", "y"]);
});

Deno.test("new LineFramer() refuses a maxLineBytes below 1", () => {
  for (const maxLineBytes of [0, -1, 1.5, NaN]) {
    let error: unknown;
    try {
      new LineFramer({ maxLineBytes });
    } catch (e) {
      error = e;
    }
    assertEquals(error instanceof RangeError, true, String(maxLineBytes));
  }
});

Deno.test("LineFramer.pending counts the bytes of the unfinished line", () => {
  const framer = new LineFramer({ maxLineBytes: 100 });
  assertEquals(framer.pending, 0);
  framer.push(enc.encode("abc"));
  assertEquals(framer.pending, 3);
  framer.push(enc.encode("de\nfg"));
  assertEquals(framer.pending, 2);
  framer.push(enc.encode("\n"));
  assertEquals(framer.pending, 0);
});
