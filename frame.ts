/**
 * Event frames: the one builder of the wire frame of an event, and the slab the hub encodes
 * frames into. Every door writes these bytes as they are.
 *
 * ## The slab contract
 *
 * The hub encodes the frame of each event it fans out **once**, into a shared slab
 * ({@linkcode buildEvent} with `"slab"`): consecutive events lie back to back in one
 * `ArrayBuffer`. Three parts of msgstream rely on this, and on nothing more:
 *
 * 1. **The hub** ({@linkcode buildEvent}) only appends to the current slab. A slab that is full
 *    is replaced by a new one, never reset, so the bytes under a frame never change: a frame
 *    stays valid for as long as anything references it. Frames larger than an eighth of a slab
 *    get a buffer of their own.
 * 2. **A connection's outbound queue** (the TCP door) may join a run of frames: when the next
 *    frame starts where the previous one ended in the same buffer
 *    ({@linkcode followsInSlab}), it writes one view spanning both instead of copying. A burst
 *    of puts to one listener becomes one write with no copy.
 * 3. **Anything that keeps a frame for long** (an `Inbox`'s buffer, the history ring, the
 *    cached join header) must not keep a slab view: one small view would pin the whole slab.
 *    It keeps its own copy ({@linkcode ownEvent}), or copies the bytes into storage of its own
 *    (the history ring).
 *
 * @example One frame for every listener
 * ```ts
 * import { buildEvent } from "./frame.ts";
 * import { defaultCodec } from "./codec.ts";
 * import { assertEquals } from "@std/assert";
 *
 * const ev = buildEvent(defaultCodec, "put", { name: "job" }, { done: 1 }, 1, "e1", "own");
 * assertEquals(
 *   new TextDecoder().decode(ev.frame),
 *   '{"action":"put","stream":"job","message":{"done":1},"seq":1,"epoch":"e1"}\n',
 * );
 * ```
 *
 * @module
 */

import { type Codec, JsonCodec } from "./codec.ts";
import type { EventKind, StreamEvent } from "./types.ts";

const encoder = new TextEncoder();
const decoder = new TextDecoder();

/**
 * Encodes one frame (a reply, a request) with `codec`, ending with a newline.
 *
 * @param codec The codec.
 * @param frame The frame object.
 * @returns UTF-8 bytes of its own.
 * @throws {TypeError} When the codec cannot encode the frame.
 *
 * @example
 * ```ts
 * import { encodeFrame } from "./frame.ts";
 * import { defaultCodec } from "./codec.ts";
 * import { assertEquals } from "@std/assert";
 *
 * const bytes = encodeFrame(defaultCodec, { action: "ok", id: 1 });
 * assertEquals(new TextDecoder().decode(bytes), '{"action":"ok","id":1}\n');
 * ```
 */
export function encodeFrame(codec: Codec, frame: Record<string, unknown>): Uint8Array {
  return encoder.encode(codec.encode(frame) + "\n");
}

/**
 * A stream as the frame builder needs it: its name, and a place to cache the name's JSON text
 * (a hub's stream state; any object for a one-off frame).
 */
export interface FrameStream {
  /** The stream's name. */
  readonly name: string;
  /** The name as JSON text, cached by {@linkcode buildEvent} on the first event. */
  jsonName?: string | undefined;
}

/**
 * Where a frame's bytes go: `"slab"` into the shared slab (an event fanned out now; see the
 * module doc), `"own"` into a buffer of its own (an event that is kept or built rarely),
 * `"join"` the header a joining listener gets first, in a buffer of its own; `"join-slab"` that
 * header in the slab (a pattern listen's catch-up over many streams, built and sent at once).
 */
export type FrameTarget = "slab" | "own" | "join" | "join-slab";

/** The wire action of each event kind. */
const ACTIONS: Readonly<Record<EventKind, string>> = {
  put: "put",
  header: "header",
  end: "delete",
  reset: "reset",
};

/**
 * Builds one event and its frame: the ONE place that knows an event's frame. The frame is
 * `{"action", "stream", "message", "seq", "epoch"}` with the action of the kind (`put`,
 * `header`, `delete` for an end, `reset`); the header a listener gets when it joins is sent as
 * `{"action": "put", …, "header": true, …}` so that clients of the original protocol see it.
 * With a JSON codec only the message goes through the codec and the rest is spliced around it,
 * byte for byte what encoding the whole frame gives.
 *
 * @param codec The codec of the hub (or client).
 * @param kind The event's kind.
 * @param stream The stream (its name, and where to cache the name's JSON text).
 * @param message The message (`null` for `end`; `{reason}` for `reset`).
 * @param seq The seq the event carries.
 * @param epoch The stream's epoch.
 * @param target Where the frame's bytes go.
 * @param json The message's JSON text, when the caller has it already (a plain put line's slice,
 * a message read back from an engine): exactly what `codec.encode(message)` gives. With a JSON
 * codec it goes into the frame as it is, so the message is not encoded again; any other codec
 * encodes `message` and ignores it.
 * @returns The event.
 * @throws {TypeError} When the codec cannot encode the message.
 *
 * @example The join header
 * ```ts
 * import { buildEvent } from "./frame.ts";
 * import { defaultCodec } from "./codec.ts";
 * import { assertEquals } from "@std/assert";
 *
 * const ev = buildEvent(defaultCodec, "header", { name: "job" }, "h", 2, "e1", "join");
 * assertEquals(ev.kind, "header");
 * assertEquals(
 *   new TextDecoder().decode(ev.frame),
 *   '{"action":"put","stream":"job","message":"h","header":true,"seq":2,"epoch":"e1"}\n',
 * );
 * ```
 */
export function buildEvent(
  codec: Codec,
  kind: EventKind,
  stream: FrameStream,
  message: unknown,
  seq: number,
  epoch: string,
  target: FrameTarget,
  json?: string,
): StreamEvent {
  const join = target === "join" || target === "join-slab";
  const action = join ? "put" : ACTIONS[kind];
  let text: string;
  if (codec instanceof JsonCodec && (json !== undefined || spliceable(message))) {
    const name = stream.jsonName ??= JSON.stringify(stream.name);
    const body = json ?? codec.encode(message);
    text = `{"action":"${action}","stream":${name},"message":${body},` +
      `${join ? '"header":true,' : ""}"seq":${seq},"epoch":${JSON.stringify(epoch)}}\n`;
  } else {
    const frame = join
      ? { action, stream: stream.name, message, header: true, seq, epoch }
      : { action, stream: stream.name, message, seq, epoch };
    text = codec.encode(frame) + "\n";
  }
  const frame = target === "slab" || target === "join-slab"
    ? encodeShared(text)
    : encoder.encode(text);
  if (message === null || typeof message !== "object") {
    // Immutable: every listener may share the caller's value.
    return { stream: stream.name, kind, message, seq, epoch, frame } as StreamEvent;
  }
  return decodedEvent(codec, stream.name, kind, seq, epoch, frame);
}

const UNDECODED: unique symbol = Symbol("undecoded");

/**
 * An event whose object message is what a client on the wire gets: decoded from the frame, on
 * first read, once per event (shared by every listener that reads it). Never the caller's
 * object, so changing that after `put` changes nothing delivered or kept; a `Date` arrives as
 * its JSON string, a registered class as a new instance, as over TCP.
 */
function decodedEvent(
  codec: Codec,
  stream: string,
  kind: EventKind,
  seq: number,
  epoch: string,
  frame: Uint8Array,
): StreamEvent {
  let decoded: unknown = UNDECODED;
  return {
    stream,
    kind,
    seq,
    epoch,
    frame,
    get message(): unknown {
      if (decoded === UNDECODED) decoded = frameMessage(codec, frame);
      return decoded;
    },
  } as StreamEvent;
}

/**
 * Whether a message's JSON text can be spliced into a frame: the same bytes as a whole-frame
 * encode.
 */
function spliceable(message: unknown): boolean {
  const t = typeof message;
  if (t === "object") {
    return message === null || typeof (message as { toJSON?: unknown }).toJSON !== "function";
  }
  return t === "string" || t === "number" || t === "boolean";
}

/** Size of the slabs that event frames are encoded into. */
const SLAB_BYTES = 64 * 1024;
let slab = new Uint8Array(SLAB_BYTES);
let slabUsed = 0;

/** Encodes a frame's text at the end of the shared slab (see the module doc). */
function encodeShared(text: string): Uint8Array {
  const worst = text.length * 3;
  if (worst > SLAB_BYTES >> 3) return encoder.encode(text);
  if (SLAB_BYTES - slabUsed < worst) {
    slab = new Uint8Array(SLAB_BYTES);
    slabUsed = 0;
  }
  const start = slabUsed;
  slabUsed += encoder.encodeInto(text, slab.subarray(start)).written;
  return slab.subarray(start, slabUsed);
}

/**
 * Whether `next` starts exactly where `prev` ends, in the same buffer: a connection may then
 * send both as one view (rule 2 of the slab contract).
 *
 * @param prev The frame queued last.
 * @param next The frame to queue.
 * @returns Whether `next` continues `prev`.
 *
 * @example
 * ```ts
 * import { buildEvent, followsInSlab } from "./frame.ts";
 * import { defaultCodec } from "./codec.ts";
 * import { assert } from "@std/assert";
 *
 * const a = buildEvent(defaultCodec, "put", { name: "s" }, 1, 1, "e", "slab");
 * const b = buildEvent(defaultCodec, "put", { name: "s" }, 2, 2, "e", "slab");
 * assert(followsInSlab(a.frame, b.frame));
 * ```
 */
export function followsInSlab(prev: Uint8Array, next: Uint8Array): boolean {
  return next.buffer === prev.buffer && next.byteOffset === prev.byteOffset + prev.byteLength;
}

/**
 * The event with a frame of its own, when its frame is a view of a larger buffer (a slab): what
 * anything that keeps an event must keep (rule 3 of the slab contract).
 *
 * @param ev The event.
 * @returns `ev` itself when its frame owns its buffer, else a copy with a copied frame.
 *
 * @example
 * ```ts
 * import { buildEvent, ownEvent } from "./frame.ts";
 * import { defaultCodec } from "./codec.ts";
 * import { assertEquals } from "@std/assert";
 *
 * const ev = buildEvent(defaultCodec, "put", { name: "s" }, 1, 1, "e", "slab");
 * const kept = ownEvent(ev);
 * assertEquals(kept.frame.buffer.byteLength, kept.frame.byteLength);
 * ```
 */
export function ownEvent<E extends StreamEvent>(ev: E): E {
  return ev.frame.buffer.byteLength === ev.frame.byteLength
    ? ev
    : { ...ev, frame: ev.frame.slice() };
}

/**
 * The message of an event frame, decoded again (for an event replayed from kept frames).
 *
 * @param codec The codec that encoded the frame.
 * @param frame The frame's bytes.
 * @returns The frame's `message` (`null` when it has none).
 * @throws {SyntaxError} When the frame cannot be decoded.
 *
 * @example
 * ```ts
 * import { buildEvent, frameMessage } from "./frame.ts";
 * import { defaultCodec } from "./codec.ts";
 * import { assertEquals } from "@std/assert";
 *
 * const ev = buildEvent(defaultCodec, "put", { name: "s" }, { n: [1] }, 1, "e", "own");
 * assertEquals(frameMessage(defaultCodec, ev.frame), { n: [1] });
 * ```
 */
export function frameMessage(codec: Codec, frame: Uint8Array): unknown {
  const text = decoder.decode(frame);
  let decoded: { message?: unknown };
  try {
    decoded = codec.decode(text) as { message?: unknown };
  } catch (err) {
    // A message nested to the codec's depth limit is one level deeper inside its frame.
    if (!(codec instanceof JsonCodec)) throw err;
    decoded = JSON.parse(text);
  }
  return decoded.message ?? null;
}
