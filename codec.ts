/**
 * Codecs turn values into one line of text and back. The default {@linkcode JsonCodec} speaks
 * JSON and carries registered classes as the original job service did:
 * `{".class": name, ".version": version, ".state": {…}}`.
 *
 * A codec is replaceable: the hub, the server and the client all take a `codec` option, and any
 * object with `encode` and `decode` will do, as long as `encode` never returns a newline.
 *
 * @example Registering a class
 * ```ts
 * import { JsonCodec } from "@x/msgstream/codec";
 * import { assertEquals, assertInstanceOf } from "@std/assert";
 *
 * class Progress {
 *   constructor(public done = 0, public total = 0) {}
 * }
 *
 * const codec = new JsonCodec().register(Progress, { name: "job.progress", version: "1.0" });
 * const line = codec.encode(new Progress(3, 10));
 * assertEquals(
 *   line,
 *   '{".class":"job.progress",".version":"1.0",".state":{"done":3,"total":10}}',
 * );
 * const back = codec.decode(line);
 * assertInstanceOf(back, Progress);
 * assertEquals(back.done, 3);
 * ```
 *
 * @module
 */

/** Turns a value into one line of text (no newline) and back. */
export interface Codec {
  /**
   * Encodes a value as one line of text.
   *
   * @param value The value to encode.
   * @returns Text without any newline character.
   * @throws {TypeError} When the value cannot be encoded.
   */
  encode(value: unknown): string;
  /**
   * Decodes one line of text.
   *
   * @param text The text of one frame.
   * @returns The decoded value.
   * @throws {SyntaxError} When the text is not valid for this codec.
   */
  decode(text: string): unknown;
}

/** How a registered class travels: its wire name and version. */
export interface ClassInfo {
  /** The wire name, e.g. `"job.progress"`. */
  name: string;
  /**
   * The version written to `.version`.
   *
   * @default {"0.0"}
   */
  version?: string;
}

/** Options for {@linkcode JsonCodec}. */
export interface JsonCodecOptions {
  /**
   * The deepest nesting of arrays and objects that `decode` accepts. Deeper input is refused
   * with a `SyntaxError` before it is parsed, so a hostile frame cannot exhaust the stack.
   * `encode` refuses a value nesting deeper, as `decode` would refuse the text.
   *
   * @default {64}
   */
  maxDepth?: number;
}

/** Any class whose instances the codec can carry. */
// deno-lint-ignore no-explicit-any
export type ClassConstructor = new (...args: any[]) => object;

interface Registration {
  cls: ClassConstructor;
  name: string;
  version: string;
}

/**
 * The default codec: JSON text, with registered classes as
 * `{".class": name, ".version": version, ".state": {…own fields…}}`.
 *
 * Decoding an object whose `.class` is registered gives an instance of that class (created
 * without calling its constructor, then given the fields of `.state`). An object whose `.class`
 * is not registered decodes to plain data, exactly as it was sent, so a relay never loses
 * what it does not understand.
 *
 * @example Plain values round trip
 * ```ts
 * import { JsonCodec } from "@x/msgstream/codec";
 * import { assertEquals } from "@std/assert";
 *
 * const codec = new JsonCodec();
 * assertEquals(codec.decode(codec.encode({ id: "H2", k: [25, 1.5] })), { id: "H2", k: [25, 1.5] });
 * ```
 */
export class JsonCodec implements Codec {
  #byClass = new Map<ClassConstructor, Registration>();
  #byName = new Map<string, Registration>();
  #maxDepth: number;

  /**
   * Creates a JSON codec.
   *
   * @param options Decoding limits.
   * @throws {RangeError} When `maxDepth` is not a positive integer.
   */
  constructor(options: JsonCodecOptions = {}) {
    const maxDepth = options.maxDepth ?? 64;
    if (!Number.isInteger(maxDepth) || maxDepth < 1) {
      throw new RangeError(
        `Cannot create codec: maxDepth must be a positive integer, got ${maxDepth}`,
      );
    }
    this.#maxDepth = maxDepth;
  }

  /**
   * Registers a class so that its instances travel as `.class`/`.version`/`.state` objects and
   * decode back into instances.
   *
   * @param cls The class.
   * @param info Its wire name and version.
   * @returns This codec, for chaining.
   * @throws {TypeError} When the name is empty or already taken by another class.
   *
   * @example Chained registrations
   * ```ts
   * import { JsonCodec } from "@x/msgstream/codec";
   * import { assertEquals } from "@std/assert";
   *
   * class A { x = 1 }
   * class B { y = 2 }
   * const codec = new JsonCodec().register(A, { name: "a" }).register(B, { name: "b", version: "2" });
   * assertEquals(codec.encode(new B()), '{".class":"b",".version":"2",".state":{"y":2}}');
   * ```
   */
  register(cls: ClassConstructor, info: ClassInfo): this {
    if (typeof info.name !== "string" || info.name === "") {
      throw new TypeError("Cannot register class: name must be a non-empty string");
    }
    const taken = this.#byName.get(info.name);
    if (taken && taken.cls !== cls) {
      throw new TypeError(`Cannot register class: name "${info.name}" is taken`);
    }
    const reg = { cls, name: info.name, version: info.version ?? "0.0" };
    this.#byClass.set(cls, reg);
    this.#byName.set(info.name, reg);
    return this;
  }

  /**
   * Encodes a value as one line of JSON.
   *
   * @param value Any JSON value, or an instance of a registered class (also nested).
   * @returns JSON text with no newline.
   * @throws {TypeError} When the value cannot be encoded (a cycle, a `BigInt`), or nests deeper
   * than `maxDepth`: `decode` would refuse the text.
   *
   * @example Encoding
   * ```ts
   * import { JsonCodec } from "@x/msgstream/codec";
   * import { assertEquals } from "@std/assert";
   *
   * assertEquals(new JsonCodec().encode({ a: "line\nbreak" }), '{"a":"line\\nbreak"}');
   * ```
   */
  encode(value: unknown): string {
    const byClass = this.#byClass;
    const text = byClass.size === 0 ? JSON.stringify(value) : JSON.stringify(value, (_key, v) => {
      if (v !== null && typeof v === "object") {
        const reg = byClass.get(v.constructor);
        if (reg) return { ".class": reg.name, ".version": reg.version, ".state": { ...v } };
      }
      return v;
    });
    if (text === undefined) return "null";
    // Refuse here what no decoder (the server's, a client's) would accept, rather than send it
    // and have it dropped there.
    try {
      checkDepth(text, this.#maxDepth);
    } catch (e) {
      throw new TypeError(`Cannot encode value: ${(e as Error).message}`);
    }
    return text;
  }

  /**
   * Decodes one line of JSON.
   *
   * @param text JSON text.
   * @returns The value, with registered classes revived.
   * @throws {SyntaxError} When the text is not JSON, nests deeper than `maxDepth`, or holds a
   * number past a double's range (`1e400`: JSON.parse would read Infinity, sent on as `null`).
   *
   * @example Unregistered classes stay plain data
   * ```ts
   * import { JsonCodec } from "@x/msgstream/codec";
   * import { assertEquals } from "@std/assert";
   *
   * const text = '{".class":"other",".version":"1",".state":{"a":1}}';
   * assertEquals(new JsonCodec().decode(text), { ".class": "other", ".version": "1", ".state": { a: 1 } });
   * ```
   */
  decode(text: string): unknown {
    checkDepth(text, this.#maxDepth);
    const value = this.#parse(text);
    // JSON.parse reads a number past a double's range (1e400, or 309 digits) as Infinity, which
    // encodes as null: refuse it rather than change the message silently. Only text with such a
    // literal (a 3-digit exponent, a 309-digit run) pays for the walk.
    if (LARGE_NUMBER.test(text)) checkFinite(value);
    return value;
  }

  #parse(text: string): unknown {
    if (this.#byName.size === 0) return JSON.parse(text);
    const byName = this.#byName;
    return JSON.parse(text, (_key, v) => {
      if (v !== null && typeof v === "object" && typeof v[".class"] === "string") {
        const reg = byName.get(v[".class"]);
        const state = v[".state"];
        if (reg && state !== null && typeof state === "object") {
          return Object.assign(Object.create(reg.cls.prototype), state);
        }
      }
      return v;
    });
  }
}

/** Text that may hold a number literal past a double's range: the walk of checkFinite decides. */
const LARGE_NUMBER = /\d[eE]\+?\d{3}|\d{309}/;

/** Throws when a decoded value holds a number that is not finite (a literal out of range). */
function checkFinite(v: unknown): void {
  if (typeof v === "number") {
    if (!Number.isFinite(v)) {
      throw new SyntaxError("JSON number out of range (past ±1.8e308, a double's largest)");
    }
  } else if (v !== null && typeof v === "object") {
    for (const k in v) checkFinite((v as Record<string, unknown>)[k]);
  }
}

/**
 * Refuses JSON text that nests deeper than `max`, without parsing it. Brackets inside strings
 * are skipped. Linear in the length of the text.
 */
function checkDepth(text: string, max: number): void {
  // Fast path (native scans): text with at most `max` opening brackets cannot nest deeper.
  let opening = 0;
  for (let i = text.indexOf("{"); i !== -1 && opening <= max; i = text.indexOf("{", i + 1)) {
    opening++;
  }
  for (let i = text.indexOf("["); i !== -1 && opening <= max; i = text.indexOf("[", i + 1)) {
    opening++;
  }
  if (opening <= max) return;
  let depth = 0;
  let inString = false;
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if (inString) {
      if (c === 0x5c) i++; // backslash: skip the escaped character
      else if (c === 0x22) inString = false;
    } else if (c === 0x22) inString = true;
    else if (c === 0x5b || c === 0x7b) {
      if (++depth > max) {
        throw new SyntaxError(`JSON nests deeper than ${max} levels`);
      }
    } else if (c === 0x5d || c === 0x7d) depth--;
  }
}

/** The codec used when none is given: a {@linkcode JsonCodec} with no registered classes. */
export const defaultCodec: Codec = new JsonCodec();
