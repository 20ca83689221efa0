/**
 * The plain-put fast path (protocol.ts `scanPlainPut`, the message's JSON text carried to the
 * frame builder) gives exactly what the slow path gives: the same frames to every listener, the
 * same replies and errors to the publisher, the same decoded message to an in-process listener.
 * The slow path is the same hub behind a codec that is not a `JsonCodec` (it delegates to one),
 * so the scan and the carried text are never used there.
 */
import { assert, assertEquals } from "@std/assert";
import { type Codec, JsonCodec } from "../codec.ts";
import { syncOf } from "../core.ts";
import { buildEvent } from "../frame.ts";
import { MessageStream } from "../mod.ts";
import { Session, type Transport } from "../protocol.ts";
import type { StreamEvent } from "../types.ts";
import { prng } from "./_prng.ts";

const text = new TextDecoder();

/** A JSON codec the hub does not recognise as one: every frame takes the slow path. */
class Delegating implements Codec {
  readonly #inner = new JsonCodec();
  encode(value: unknown): string {
    return this.#inner.encode(value);
  }
  decode(line: string): unknown {
    return this.#inner.decode(line);
  }
}

/** What one side saw: the publisher's frames, a listener's frames, an in-process listener's messages. */
interface Seen {
  publisher: string[];
  listener: string[];
  messages: unknown[];
}

/** Frames as text, with each epoch (random per hub) replaced by its order of appearance. */
function normal(frames: string[]): string[] {
  const epochs = new Map<string, string>();
  return frames.map((f) =>
    f.replace(/"epoch":"([^"]*)"/g, (_, e: string) => {
      if (!epochs.has(e)) epochs.set(e, `E${epochs.size}`);
      return `"epoch":"${epochs.get(e)}"`;
    })
  );
}

function run(codec: Codec, lines: string[], names: string[]): Seen {
  const hub = new MessageStream({ codec, maxMessageBytes: 64, maxStreamNameLength: 8 });
  const seen: Seen = { publisher: [], listener: [], messages: [] };
  const sink = (into: string[]): Transport => ({
    send: (frame) => into.push(text.decode(frame)),
    close: () => {},
  });
  const sync = syncOf(hub)!;
  const listener = new Session(hub, sink(seen.listener));
  for (const name of names) {
    sync.listenNow(name, listener);
    sync.listenNow(name, { put: (ev: StreamEvent) => seen.messages.push(ev.message) });
  }
  const publisher = new Session(hub, sink(seen.publisher));
  for (const line of lines) publisher.handle(line);
  return {
    publisher: normal(seen.publisher),
    listener: normal(seen.listener),
    messages: seen.messages,
  };
}

Deno.test("a plain put line gives the same frames and messages on the fast and slow paths", () => {
  const rand = prng(23);
  const alphabet = ['"', "\\", "}", "{", ",", ":", "a", "é", "😀", "\n", "\t", " ", "x", "1"];
  const piece = (n: number): string => {
    let s = "";
    for (let i = 0; i < n; i++) s += alphabet[Math.floor(rand() * alphabet.length)];
    return s;
  };
  const names = ["a", "é", "x1", "a}"];
  const lines: string[] = [];
  for (let i = 0; i < 5_000; i++) {
    const name = rand() < 0.8 ? names[Math.floor(rand() * names.length)] : piece(3);
    // Short and long (over maxMessageBytes: message_too_large) messages, near the plain shape.
    const message = rand() < 0.1 ? "y".repeat(60 + Math.floor(rand() * 10)) : piece(4);
    lines.push(
      `{"action":"put","stream":"${name}","message":"${message}"${rand() < 0.1 ? piece(2) : ""}}`,
    );
  }
  // An empty name, one over maxStreamNameLength, a lone surrogate: refused alike on both paths.
  lines.push('{"action":"put","stream":"","message":"x"}');
  lines.push('{"action":"put","stream":"123456789","message":"x"}');
  lines.push(`{"action":"put","stream":"\ud800","message":"x"}`);
  const fast = run(new JsonCodec(), lines, names);
  const slow = run(new Delegating(), lines, names);
  assertEquals(fast, slow);
  // Both kinds of outcome were met: deliveries and refusals.
  assert(fast.listener.length > 1000, `${fast.listener.length} deliveries`);
  assert(
    fast.publisher.some((f) => f.includes('"code":"message_too_large"')),
    "a message_too_large",
  );
  assert(fast.publisher.some((f) => f.includes('"code":"invalid_stream"')), "an invalid_stream");
});

Deno.test("buildEvent with the message's JSON text gives the frame of the message itself", () => {
  const rand = prng(5);
  const codec = new JsonCodec();
  for (let i = 0; i < 2_000; i++) {
    let s = "";
    const n = Math.floor(rand() * 8);
    for (let k = 0; k < n; k++) s += String.fromCharCode(32 + Math.floor(rand() * 400));
    const stream = { name: `s${i % 7}` };
    const a = buildEvent(codec, "put", stream, s, i, "e", "own");
    const b = buildEvent(codec, "put", { name: stream.name }, s, i, "e", "own", codec.encode(s));
    assertEquals(text.decode(b.frame), text.decode(a.frame));
    assertEquals(b.message, s);
  }
});

Deno.test("a codec that is not JSON ignores the carried text", () => {
  const codec = new Delegating();
  const ev = buildEvent(codec, "put", { name: "s" }, "x", 1, "e", "own", '"not x"');
  assertEquals(
    text.decode(ev.frame),
    '{"action":"put","stream":"s","message":"x","seq":1,"epoch":"e"}\n',
  );
});
