/**
 * The one line framer of msgstream: newline-delimited text, limited in bytes, for every reader
 * (the TCP door's read loop, the client's reader, the command line's stdin).
 *
 * Framing follows `TextDecoderStream` + std `TextLineStream`: a line ends at `\n`, a `\r` just
 * before it is dropped, a leading byte-order mark is skipped, and a last line without `\n`
 * counts (as it is, `\r` included) when the input ends. Unlike `TextLineStream`, a line longer
 * than `maxLineBytes` is refused, even when it arrives over many reads, each under the limit:
 * the limit is checked on bytes, before anything is decoded.
 *
 * {@linkcode LineFramer} is the plain form (`push(chunk)` returns the chunk's complete lines;
 * no stream, no promise per chunk); {@linkcode readLines} wraps it for async iterables such as
 * `ReadableStream<Uint8Array>`.
 *
 * @example Split chunks into lines
 * ```ts
 * import { LineFramer } from "./framer.ts";
 * import { assertEquals } from "@std/assert";
 *
 * const framer = new LineFramer({ maxLineBytes: 16 });
 * const bytes = new TextEncoder().encode("one\r\ntw");
 * assertEquals(framer.push(bytes), ["one"]);
 * assertEquals(framer.push(new TextEncoder().encode("o\nthree")), ["two"]);
 * assertEquals(framer.end(), ["three"]);
 * ```
 *
 * @module
 */

/// <reference types="./std_types.d.ts" />
import { concat } from "@std/bytes/concat";
import { intOption } from "./options.ts";

const NEWLINE = 0x0a;
/** Whole-line decoders (no streaming state), shared by every framer. */
const FATAL = new TextDecoder("utf-8", { fatal: true, ignoreBOM: true });
const LENIENT = new TextDecoder("utf-8", { ignoreBOM: true });

/** Why a line was refused: the codes are the wire protocol's. */
export type LineErrorCode = "line_too_long" | "invalid_utf8";

/** A line that cannot be framed: over the byte limit, or not UTF-8. */
export class LineError extends Error {
  /** `line_too_long` or `invalid_utf8`. */
  readonly code: LineErrorCode;

  /**
   * Creates the error.
   *
   * @param code Why the line was refused.
   * @param message What went wrong, for people.
   * @param options Standard error options.
   */
  constructor(code: LineErrorCode, message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = "LineError";
    this.code = code;
  }
}

/** Options of a {@linkcode LineFramer}. */
export interface LineFramerOptions {
  /**
   * Longest line, in bytes, its `\n` excluded (a `\r` before it counts).
   *
   * @default {1048576}
   */
  maxLineBytes?: number;
  /**
   * Refuse bytes that are not UTF-8 (`invalid_utf8`); when false they decode as U+FFFD, as
   * `TextDecoderStream` does by default.
   *
   * @default {true}
   */
  fatal?: boolean;
}

/**
 * Splits bytes into lines, a chunk at a time. After a refused line ({@linkcode LineFramer.error}
 * is set) it returns nothing more: the byte stream cannot be resynchronised.
 */
export class LineFramer {
  /** The longest line accepted, in bytes. */
  readonly maxLineBytes: number;
  readonly #decoder: TextDecoder;
  /** The unfinished line's bytes, and how many there are. */
  #carry: Uint8Array[] = [];
  #run = 0;
  /** No line was returned yet: a byte-order mark starting the first one is dropped. */
  #first = true;
  #error: LineError | undefined = undefined;

  /**
   * Creates a framer.
   *
   * @param options The line limit and the UTF-8 policy.
   * @throws {RangeError} When `maxLineBytes` is not a positive integer.
   */
  constructor(options?: LineFramerOptions) {
    this.maxLineBytes = intOption("maxLineBytes", options?.maxLineBytes, 1 << 20, 1);
    this.#decoder = (options?.fatal ?? true) ? FATAL : LENIENT;
  }

  /** Bytes of the unfinished line held so far (those after the last `\n`). */
  get pending(): number {
    return this.#run;
  }

  /** The refused line's error, once one was refused. */
  get error(): LineError | undefined {
    return this.#error;
  }

  /**
   * Takes the next chunk of input and returns the lines it completes, in order. When a line is
   * refused, returns the good lines before it and sets {@linkcode LineFramer.error}; the caller
   * handles those lines, then the error.
   *
   * The chunk is not kept: a caller may reuse its buffer once this returns.
   *
   * @param chunk The next bytes.
   * @returns The lines completed by `chunk`, without their `\n` (or `\r\n`).
   */
  push(chunk: Uint8Array): string[] {
    const len = chunk.byteLength;
    if (this.#error || len === 0) return [];
    const last = chunk.lastIndexOf(NEWLINE);
    if (this.#run + len > this.maxLineBytes && !this.#fits(chunk, last)) return this.#slow(chunk);
    if (last === -1) {
      this.#carry.push(chunk.slice());
      this.#run += len;
      return [];
    }
    // Decode every complete line with one call (two with a carried head) before splitting.
    let head = "";
    let text = "";
    let from = 0;
    try {
      if (this.#carry.length > 0) {
        from = chunk.indexOf(NEWLINE) + 1;
        this.#carry.push(chunk.subarray(0, from - 1));
        head = this.#decoder.decode(concat(this.#carry));
      }
      if (from <= last) text = this.#decoder.decode(chunk.subarray(from, last));
    } catch {
      if (from > 0) this.#carry.pop();
      return this.#slow(chunk);
    }
    this.#carry = last + 1 < len ? [chunk.slice(last + 1)] : [];
    this.#run = len - last - 1;
    const lines: string[] = [];
    if (from > 0) lines.push(dropCR(head));
    if (from <= last) splitLines(text, lines);
    if (this.#first) this.#dropBom(lines);
    return lines;
  }

  /**
   * Ends the input: returns the last line when it had no `\n` (as it is: a `\r` ending it
   * stays), or nothing. Sets {@linkcode LineFramer.error} when that line is not UTF-8.
   *
   * @returns The unterminated last line, if any.
   */
  end(): string[] {
    if (this.#error || this.#carry.length === 0) return [];
    const bytes = concat(this.#carry);
    this.#carry = [];
    this.#run = 0;
    let line: string;
    try {
      line = this.#decoder.decode(bytes);
    } catch {
      this.#fail("invalid_utf8");
      return [];
    }
    const lines = [line];
    if (this.#first) this.#dropBom(lines);
    return lines;
  }

  /** Whether every line `chunk` completes or extends stays within the limit. */
  #fits(chunk: Uint8Array, last: number): boolean {
    const max = this.maxLineBytes;
    let prev = chunk.indexOf(NEWLINE);
    if (prev === -1 || this.#run + prev > max) return false;
    for (let i = chunk.indexOf(NEWLINE, prev + 1); i !== -1; i = chunk.indexOf(NEWLINE, i + 1)) {
      if (i - prev - 1 > max) return false;
      prev = i;
    }
    return chunk.byteLength - last - 1 <= max;
  }

  /** The slow path for a chunk with a bad line: the good lines before it, one by one. */
  #slow(chunk: Uint8Array): string[] {
    const max = this.maxLineBytes;
    const lines: string[] = [];
    let pending = this.#carry;
    let run = this.#run;
    this.#carry = [];
    let from = 0;
    for (let nl = chunk.indexOf(NEWLINE); nl !== -1; nl = chunk.indexOf(NEWLINE, from)) {
      const part = chunk.subarray(from, nl);
      if (run + part.byteLength > max) return this.#fail("line_too_long", lines);
      const bytes = pending.length > 0 ? concat([...pending, part]) : part;
      pending = [];
      run = 0;
      try {
        lines.push(dropCR(this.#decoder.decode(bytes)));
      } catch {
        return this.#fail("invalid_utf8", lines);
      }
      if (this.#first) this.#dropBom(lines);
      from = nl + 1;
    }
    run += chunk.byteLength - from;
    if (run > max) return this.#fail("line_too_long", lines);
    if (from < chunk.byteLength) pending.push(chunk.slice(from));
    this.#carry = pending;
    this.#run = run;
    return lines;
  }

  #fail(code: LineErrorCode, lines: string[] = []): string[] {
    this.#error = new LineError(
      code,
      code === "line_too_long"
        ? `Line longer than ${this.maxLineBytes} bytes`
        : "Line is not valid UTF-8",
    );
    this.#carry = [];
    this.#run = 0;
    return lines;
  }

  #dropBom(lines: string[]): void {
    const first = lines[0];
    if (first === undefined) return;
    this.#first = false;
    if (first.charCodeAt(0) === 0xfeff) lines[0] = first.slice(1);
  }
}

/** Drops the `\r` of a `\r\n` line end (the `\n` is already cut). */
function dropCR(line: string): string {
  return line.charCodeAt(line.length - 1) === 0x0d ? line.slice(0, -1) : line;
}

/** Appends each `\n`-separated line of `text` (whose last `\n` is already cut) to `lines`. */
function splitLines(text: string, lines: string[]): void {
  let from = 0;
  for (;;) {
    const nl = text.indexOf("\n", from);
    const end = nl === -1 ? text.length : nl;
    lines.push(
      end > from && text.charCodeAt(end - 1) === 0x0d
        ? text.slice(from, end - 1)
        : text.slice(from, end),
    );
    if (nl === -1) return;
    from = nl + 1;
  }
}

/**
 * Reads lines from a byte source through a {@linkcode LineFramer}: every good line first, then
 * the refused line's {@linkcode LineError}. (A `TransformStream` would drop the lines still
 * queued when it errors.) Breaking out of the loop cancels the source.
 *
 * @param source The bytes, e.g. `Deno.stdin.readable` or a connection's `readable`.
 * @param options The line limit and the UTF-8 policy.
 * @returns The lines, without their `\n` (or `\r\n`).
 * @throws {LineError} When a line is over the limit, or not UTF-8 while `fatal`.
 *
 * @example Lines of a stream
 * ```ts
 * import { readLines } from "./framer.ts";
 * import { assertEquals } from "@std/assert";
 *
 * const source = ReadableStream.from(["a\nb", "c\r\n", "d"]).pipeThrough(new TextEncoderStream());
 * const lines = [];
 * for await (const line of readLines(source)) lines.push(line);
 * assertEquals(lines, ["a", "bc", "d"]);
 * ```
 */
export async function* readLines(
  source: AsyncIterable<Uint8Array>,
  options?: LineFramerOptions,
): AsyncGenerator<string, void, undefined> {
  const framer = new LineFramer(options);
  for await (const chunk of source) {
    yield* framer.push(chunk);
    if (framer.error) throw framer.error;
  }
  yield* framer.end();
  if (framer.error) throw framer.error;
}
