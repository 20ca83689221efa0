/**
 * Fuzzing the TCP server: 20,000 random and mutated request frames from several raw
 * connections, while a bystander listener must receive 1,000 puts intact and in order. The
 * server must survive, and every `error` frame must carry a code from {@linkcode ErrorCode}.
 *
 * The PRNG is seeded: the seed is printed, and `FUZZ_SEED=<n>` replays a run.
 */

import { assert, assertEquals } from "@std/assert";
import { RemoteStream } from "../client.ts";
import type { ErrorCode } from "../protocol.ts";
import { serve } from "../server.ts";
import { prng } from "./_prng.ts";
import { connectRaw, type Frame, type RawClient } from "./_raw_client.ts";
import { Recorder } from "./_recorder.ts";
import { deadline } from "./_wait.ts";

/** Every error code; the type makes the list exactly {@linkcode ErrorCode}, no more, no less. */
const CODES: Record<ErrorCode, true> = {
  invalid_json: true,
  invalid_utf8: true,
  invalid_frame: true,
  unknown_action: true,
  invalid_stream: true,
  missing_message: true,
  invalid_since: true,
  invalid_pattern: true,
  line_too_long: true,
  unauthorized: true,
  forbidden: true,
  slow_consumer: true,
  idle_timeout: true,
  engine_unavailable: true,
  storage_unavailable: true,
  message_too_large: true,
  not_found: true,
  not_connected: true,
  limit_exceeded: true,
  internal: true,
};

const FRAMES = 20_000;
const WORKERS = 4;
const PUTS = 1_000;
const SYNC_EVERY = 25;
const MAX_LINE = 8192;

const encoder = new TextEncoder();

/** Builds fuzz frames as bytes (without the newline) from a seeded random source. */
class Generator {
  readonly #r: () => number;
  /** How many frames of each kind were made. */
  readonly kinds: Record<string, number> = {};

  constructor(random: () => number) {
    this.#r = random;
  }

  int(n: number): number {
    return Math.floor(this.#r() * n);
  }

  pick<T>(items: readonly T[]): T {
    return items[this.int(items.length)] as T;
  }

  chance(p: number): boolean {
    return this.#r() < p;
  }

  static readonly ACTIONS = [
    "put",
    "header",
    "delete",
    "listen",
    "hangup",
    "endqueue",
    "close",
    "hello",
    "ping",
    "pong",
    "PUT",
    "",
    "__proto__",
    "constructor",
    "toString",
    "error",
    "ok",
  ] as const;

  /** Strings that have broken parsers, encoders and loggers before. */
  static readonly STRINGS = [
    "",
    " ",
    "f1",
    "f2",
    "\u2028",
    "\u2029",
    "a\u2028b",
    "\ud800",
    "\udfff",
    "x\ud83d",
    "\ud83d\ude00",
    "\u0000",
    "\ufeff",
    "\uffff",
    "e\u0301",
    "\u202e",
    "\r",
    "\n",
    "\t",
    "\\",
    '"',
    "*",
    ".*",
    "𝒳".repeat(200),
    "a".repeat(256),
    "a".repeat(257),
    "<script>",
    "%s%n",
    "${x}",
    "__proto__",
  ] as const;

  /** A random JSON value of any type, sometimes nested deep. */
  value(depth = 0): unknown {
    switch (this.int(depth > 3 ? 9 : 12)) {
      case 0:
        return null;
      case 1:
        return this.chance(0.5);
      case 2:
        return this.pick([0, -0, 1, -1, 1.5, 2 ** 53, -(2 ** 53) - 2, 1e308, -1e308, 5e-324]);
      case 3:
        return this.int(1 << 30) - (1 << 29);
      case 4:
      case 5:
        return this.pick(Generator.STRINGS);
      case 6:
        return this.randomString(this.int(40));
      case 7:
        return { epoch: this.value(depth + 1), seq: this.value(depth + 1) };
      case 8:
        return this.pick(Generator.ACTIONS);
      case 9:
        return Array.from({ length: this.int(5) }, () => this.value(depth + 1));
      case 10: {
        const o: Record<string, unknown> = {};
        for (let i = this.int(5); i > 0; i--) o[this.randomString(6)] = this.value(depth + 1);
        if (this.chance(0.1)) o[".class"] = this.pick(["Point", "", 5]);
        return o;
      }
      default:
        return this.nested(this.int(80));
    }
  }

  /** A string of random code units, including lone surrogates and control characters. */
  randomString(n: number): string {
    let s = "";
    for (let i = 0; i < n; i++) {
      const kind = this.int(10);
      if (kind < 5) s += String.fromCharCode(0x20 + this.int(95));
      else if (kind < 7) s += String.fromCharCode(this.int(0x20));
      else if (kind < 8) s += String.fromCharCode(0xd800 + this.int(0x800));
      else s += String.fromCodePoint(this.int(0x10ffff));
    }
    return s;
  }

  nested(n: number): unknown {
    let v: unknown = this.pick([1, "x", null]);
    for (let i = 0; i < n; i++) v = this.chance(0.5) ? [v] : { k: v };
    return v;
  }

  /** A frame with plausible fields, each possibly of the wrong type. */
  frame(): Frame {
    const f: Frame = { action: this.pick(Generator.ACTIONS) };
    if (this.chance(0.8)) f.stream = this.chance(0.6) ? `f${this.int(8)}` : this.value();
    if (this.chance(0.7)) f.message = this.value();
    if (this.chance(0.5)) f.id = this.chance(0.7) ? this.int(1000) : this.value();
    if (this.chance(0.2)) {
      f.since = this.chance(0.5) ? { epoch: this.value(), seq: this.value() } : this.value();
    }
    if (this.chance(0.1)) f.token = this.value();
    if (this.chance(0.1)) f.version = this.value();
    if (this.chance(0.1)) f.header = this.value();
    if (this.chance(0.2)) f.action = this.value();
    return f;
  }

  /** A well-formed request, so that fuzzing also exercises real work. */
  valid(): Frame {
    const stream = `f${this.int(8)}`;
    const id = this.int(100_000);
    switch (this.int(8)) {
      case 0:
      case 1:
      case 2:
        return { action: "put", stream, message: this.value(), id };
      case 3:
        return { action: "header", stream, message: this.value(), id };
      case 4:
        return { action: "listen", stream, id };
      case 5:
        return { action: "hangup", stream, id };
      case 6:
        return { action: "delete", stream };
      default:
        return { action: "listen", stream, since: { epoch: "x", seq: this.int(5) }, id };
    }
  }

  /** Mutates text: flips, deletes, duplicates or inserts characters. */
  mutate(text: string): string {
    const chars = [...text];
    for (let n = 1 + this.int(4); n > 0 && chars.length > 0; n--) {
      const i = this.int(chars.length);
      switch (this.int(4)) {
        case 0:
          chars.splice(i, 1);
          break;
        case 1:
          chars.splice(i, 0, this.pick(['"', "{", "}", "[", "]", ",", ":", "\\", "0", "\u2028"]));
          break;
        case 2:
          chars[i] = String.fromCharCode(this.int(128));
          break;
        default:
          chars.splice(i, 0, ...chars.slice(i, i + 1 + this.int(8)));
      }
    }
    return chars.join("");
  }

  /** The next fuzz line, as bytes; `risky` when it may make the server close the connection. */
  next(): { bytes: Uint8Array; kind: string; risky: boolean } {
    const roll = this.#r();
    let kind: string;
    let bytes: Uint8Array;
    let risky = false;
    if (roll < 0.02) {
      kind = "random-bytes";
      bytes = new Uint8Array(this.int(120));
      for (let i = 0; i < bytes.length; i++) bytes[i] = this.int(256);
      risky = true;
    } else if (roll < 0.03) {
      kind = "invalid-utf8";
      const bad = this.pick([[0xc0, 0xaf], [0xed, 0xa0, 0x80], [0xff], [0xe2, 0x82], [0xf8, 0x88]]);
      const before = encoder.encode(JSON.stringify(this.frame()));
      bytes = new Uint8Array([...before.subarray(0, this.int(before.length)), ...bad]);
      risky = true;
    } else if (roll < 0.034) {
      kind = "overlong-line";
      bytes = encoder.encode(
        JSON.stringify({ action: "put", stream: "f0", message: "x".repeat(MAX_LINE) }),
      );
      risky = true;
    } else if (roll < 0.04) {
      kind = "deep-nesting";
      const n = 50 + this.int(3000);
      const text = this.chance(0.5)
        ? `{"action":"put","stream":"f1","message":${"[".repeat(n)}${"]".repeat(n)}}`
        : "{".repeat(n);
      bytes = encoder.encode(text.slice(0, MAX_LINE));
    } else if (roll < 0.07) {
      kind = "huge-number";
      const big = this.pick(["1e309", "-1e309", "123456789012345678901234567890", "1e-400", "-0"]);
      const field = this.pick(["id", "seq", "message", "stream", "action"]);
      bytes = encoder.encode(
        field === "seq"
          ? `{"action":"listen","stream":"f2","since":{"epoch":"e","seq":${big}},"id":1}`
          : `{"action":"put","stream":"f3","message":1,"id":2,"${field}":${big}}`,
      );
    } else if (roll < 0.15) {
      kind = "truncated-json";
      const text = JSON.stringify(this.chance(0.5) ? this.valid() : this.frame());
      bytes = encoder.encode(text.slice(0, this.int(text.length)));
    } else if (roll < 0.3) {
      kind = "mutated";
      bytes = encoder.encode(this.mutate(JSON.stringify(this.valid())));
    } else if (roll < 0.33) {
      kind = "not-an-object";
      bytes = encoder.encode(
        this.pick(['"put"', "42", "null", "[]", '[{"action":"ping"}]', "true", "{}", "\r", ""]),
      );
    } else if (roll < 0.5) {
      kind = "valid";
      const f = this.valid();
      // A close now and then: the server ends the connection.
      if (this.chance(0.01)) f.action = "close";
      risky = f.action === "close";
      bytes = encoder.encode(JSON.stringify(f));
    } else {
      kind = "wrong-types";
      bytes = encoder.encode(JSON.stringify(this.frame()));
      risky = true; // the action may be "close"
    }
    this.kinds[kind] = (this.kinds[kind] ?? 0) + 1;
    return { bytes, kind, risky };
  }
}

interface Tally {
  tried: number;
  codes: Record<string, number>;
  badFrames: string[];
  reconnects: number;
}

/** Checks every frame the server sent; counts error codes. */
function check(frames: Frame[], tally: Tally, raw: RawClient, seen: { lines: number }): void {
  for (const f of frames) {
    if (f.action === "error") {
      const code = String(f.code);
      tally.codes[code] = (tally.codes[code] ?? 0) + 1;
      if (!(code in CODES) || typeof f.message !== "string") {
        tally.badFrames.push(JSON.stringify(f));
      }
    } else if (typeof f.action !== "string" || f.action === "<undecodable>") {
      tally.badFrames.push(JSON.stringify(f));
    }
  }
  seen.lines = raw.lines.length;
}

/** One fuzz connection: sends `count` frames, syncing with a ping, reconnecting when cut. */
async function worker(
  port: number,
  gen: Generator,
  count: number,
  tally: Tally,
  name: string,
  tick: () => void,
): Promise<void> {
  let raw = await connectRaw(port);
  let sync = 0;
  /** Reads up to our sync pong; false when the server closed the connection first. */
  const syncUp = async (): Promise<boolean> => {
    const id = `sync:${name}:${++sync}`;
    try {
      await raw.send({ action: "ping", id });
    } catch {
      // Cut already: reading finds the end.
    }
    const frames: Frame[] = [];
    for (let f = await raw.nextOrEnd(); f !== undefined; f = await raw.nextOrEnd()) {
      if (f.id === id && f.action === "pong") {
        check(frames, tally, raw, { lines: 0 });
        return true;
      }
      frames.push(f);
    }
    check(frames, tally, raw, { lines: 0 });
    return false;
  };
  try {
    let unsynced = 0;
    for (let i = 0; i < count; i++) {
      const { bytes, risky } = gen.next();
      let cut = false;
      try {
        await raw.write(new Uint8Array([...bytes, 0x0a]));
        tally.tried++;
      } catch {
        cut = true;
      }
      tick();
      if (!cut && (risky || ++unsynced >= SYNC_EVERY)) {
        unsynced = 0;
        cut = !(await syncUp());
      }
      if (cut) {
        await raw.close();
        raw = await connectRaw(port);
        tally.reconnects++;
        unsynced = 0;
      }
    }
    await syncUp();
  } finally {
    await raw.close();
  }
}

Deno.test("The server survives 20,000 fuzzed frames and keeps a bystander's stream intact", async () => {
  const seed = Number(Deno.env.get("FUZZ_SEED") ?? Math.floor(Math.random() * 2 ** 32));
  // deno-lint-ignore no-console
  console.log(`fuzz seed: ${seed} (replay with FUZZ_SEED=${seed})`);
  const random = prng(seed);
  await using server = serve({ port: 0, maxLineBytes: MAX_LINE, pingInterval: 60_000 });
  const port = server.addr.port;

  // The bystander: one client listens, another publishes.
  const stream = `bystander-${seed}`;
  await using listener = await RemoteStream.connect({ port });
  await using publisher = await RemoteStream.connect({ port });
  const recorder = new Recorder("bystander");
  await listener.listen(stream, recorder);
  const payload = (i: number) => ({
    i,
    text: `#${i} \u2028\u2029 \ud83d\ude00 e\u0301 \u0000 ${"\ud800"}`,
    nested: [[[{ i }]]],
    big: 2 ** 53 - i,
  });
  const puts: Promise<number>[] = [];
  let sent = 0;
  // After every FRAMES / PUTS fuzz frames, one put: the puts are spread over the whole run.
  const tick = () => {
    if (++sent % (FRAMES / PUTS) === 0 && puts.length < PUTS) {
      puts.push(publisher.put(stream, payload(puts.length + 1)).then((at) => at.seq));
    }
  };

  const gens = Array.from({ length: WORKERS }, () => new Generator(prng(random() * 2 ** 32)));
  const tally: Tally = { tried: 0, codes: {}, badFrames: [], reconnects: 0 };
  await Promise.all(
    gens.map((g, n) => worker(port, g, FRAMES / WORKERS, tally, `w${n}`, tick)),
  );

  // Every put was confirmed with the next seq, and the bystander got them all, intact, in order.
  assertEquals(
    await deadline(Promise.all(puts), `the bystander's ${PUTS} puts to be answered`),
    Array.from({ length: PUTS }, (_, i) => i + 1),
  );
  const events = await recorder.waitFor(PUTS);
  assertEquals(events.length, PUTS);
  events.forEach((ev, i) => {
    assertEquals(ev.kind, "put");
    assertEquals(ev.seq, i + 1);
    assertEquals(ev.message, payload(i + 1));
  });

  // The server still serves.
  await using probe = await connectRaw(port);
  await probe.send({ action: "ping", id: "after" });
  assertEquals(await probe.next(), { action: "pong", id: "after" });

  const kinds: Record<string, number> = {};
  for (const g of gens) {
    for (const [k, n] of Object.entries(g.kinds)) kinds[k] = (kinds[k] ?? 0) + n;
  }
  // deno-lint-ignore no-console
  console.log(
    `fuzz: ${tally.tried} frames tried, ${tally.reconnects} reconnects; kinds ${
      JSON.stringify(kinds)
    }; error codes ${JSON.stringify(tally.codes)}; server metrics errors ${
      JSON.stringify(server.metrics.errors)
    }`,
  );
  assertEquals(tally.badFrames, [], "frames with no valid code or not JSON");
  assert(tally.tried >= FRAMES * 0.99, `only ${tally.tried} frames written`);
  for (const code of Object.keys(tally.codes)) assert(code in CODES, code);
  assertEquals(tally.codes.internal, undefined, "the server failed internally");
  listener.endqueue(recorder);
});

/** A ping frame padded with spaces to exactly `n` bytes. */
function pingOf(n: number, id: string): string {
  const text = JSON.stringify({ action: "ping", id });
  return text.slice(0, -1) + " ".repeat(n - encoder.encode(text).length) + "}";
}

Deno.test("The server accepts a line of exactly maxLineBytes and cuts one byte more", async (t) => {
  await using server = serve({ port: 0, maxLineBytes: 100 });
  await t.step("in one write", async () => {
    await using raw = await connectRaw(server.addr.port);
    await raw.send(pingOf(100, "exact"));
    assertEquals(await raw.next(), { action: "pong", id: "exact" });
    await raw.send(pingOf(101, "over"));
    const rest = await raw.rest();
    assertEquals(rest.map((f) => [f.action, f.code]), [["error", "line_too_long"], [
      "close",
      undefined,
    ]]);
  });
  await t.step("byte by byte", async () => {
    await using raw = await connectRaw(server.addr.port);
    for (const b of encoder.encode(pingOf(100, "slow") + "\n")) {
      await raw.write(new Uint8Array([b]));
    }
    assertEquals(await raw.next(), { action: "pong", id: "slow" });
    for (const b of encoder.encode(pingOf(101, "slow-over"))) {
      try {
        await raw.write(new Uint8Array([b]));
      } catch {
        break; // cut: the server answered before the line ended
      }
    }
    assertEquals((await raw.rest())[0]?.code, "line_too_long");
  });
  await t.step("after many short lines in one write", async () => {
    await using raw = await connectRaw(server.addr.port);
    const lines = Array.from({ length: 50 }, (_, i) => pingOf(100, `m${i}`)).join("\n");
    await raw.send(lines);
    for (let i = 0; i < 50; i++) assertEquals(await raw.next(), { action: "pong", id: `m${i}` });
  });
});

Deno.test("The server decodes a UTF-8 character split across writes", async () => {
  await using server = serve({ port: 0 });
  await using raw = await connectRaw(server.addr.port);
  const bytes = encoder.encode(JSON.stringify({ action: "ping", id: "😀\u2028é" }) + "\n");
  const cut = bytes.indexOf(0xf0) + 2; // in the middle of the emoji
  await raw.write(bytes.subarray(0, cut));
  await raw.write(bytes.subarray(cut));
  assertEquals(await raw.next(), { action: "pong", id: "😀\u2028é" });
});

Deno.test("The server answers invalid UTF-8 with invalid_utf8 and closes the connection", async () => {
  await using server = serve({ port: 0 });
  await using raw = await connectRaw(server.addr.port);
  await raw.send({ action: "ping", id: 1 });
  assertEquals(await raw.next(), { action: "pong", id: 1 });
  await raw.write(new Uint8Array([0x7b, 0xed, 0xa0, 0x80, 0x7d, 0x0a])); // an encoded surrogate
  assertEquals((await raw.rest()).map((f) => [f.action, f.code]), [["error", "invalid_utf8"], [
    "close",
    undefined,
  ]]);
});

Deno.test("Fuzzed frames without a valid hello change nothing on a server with tokens", async () => {
  const seed = Number(Deno.env.get("FUZZ_SEED") ?? Math.floor(Math.random() * 2 ** 32)) + 1;
  // deno-lint-ignore no-console
  console.log(`auth fuzz seed: ${seed}`);
  await using server = serve({
    port: 0,
    maxLineBytes: MAX_LINE,
    tokens: [{ name: "only", secret: "fuzz-only-secret", publish: ["*"], subscribe: ["*"] }],
  });
  const tally: Tally = { tried: 0, codes: {}, badFrames: [], reconnects: 0 };
  const gens = [new Generator(prng(seed)), new Generator(prng(seed + 1))];
  await Promise.all(
    gens.map((g, n) => worker(server.addr.port, g, 1_000, tally, `a${n}`, () => {})),
  );
  // deno-lint-ignore no-console
  console.log(`auth fuzz: ${tally.tried} frames tried; error codes ${JSON.stringify(tally.codes)}`);
  assertEquals(tally.badFrames, []);
  assertEquals(server.hub.list(), []);
  const allowed = [
    "unauthorized",
    "invalid_json",
    "invalid_frame",
    "invalid_utf8",
    "line_too_long",
  ];
  for (const code of Object.keys(tally.codes)) assert(allowed.includes(code), code);
});
