/**
 * The plain-put fast path on a Redis engine (protocol.ts `scanPlainPut`: the put line's message
 * text goes to Redis as it came, neither decoded nor encoded again) gives exactly what the slow
 * path gives: the same frames to listeners on the publishing node and on another node, the same
 * errors to the publisher, the same decoded messages to an in-process listener, and the same
 * history in Redis for a listener that resumes from the start. The slow path is the same hubs
 * behind a codec that is not a `JsonCodec` (it delegates to one): the engine then encodes every
 * message itself.
 */
import { assert, assertEquals } from "@std/assert";
import { type Codec, JsonCodec } from "../codec.ts";
import { MessageStream, type StreamEvent } from "../mod.ts";
import { scanPlainPut, Session, type Transport } from "../protocol.ts";
import { RedisEngine } from "../redis.ts";
import { streamChannel } from "../redis_scripts.ts";
import { Recorder } from "./_recorder.ts";
import { hasRedis, RedisProcess } from "./_redis.ts";
import { prng } from "./_prng.ts";
import { deadline, poll } from "./_wait.ts";

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

/** A JsonCodec (the fast path is taken) that counts the strings (messages) it encodes. */
class Counting extends JsonCodec {
  encodes = 0;
  override encode(value: unknown): string {
    if (typeof value === "string") this.encodes++;
    return super.encode(value);
  }
}

const NAMES = ["a", "é", "x1", "a}"];

/** What one run saw. */
interface Seen {
  /** The publisher's frames (errors), sorted: refusals may come at once or when a put settles. */
  publisher: string[];
  /** Per name, the frames of a listening session on the publishing node. */
  here: Record<string, string[]>;
  /** Per name, the same on another node. */
  there: Record<string, string[]>;
  /** Per name, the messages an in-process listener decoded. */
  messages: Record<string, unknown[]>;
  /** Per name, the frames of a listener resuming from seq 0 once all was put (Redis's history). */
  history: Record<string, string[]>;
}

/** Frames grouped by their stream, each epoch replaced by its order of appearance. */
function byStream(frames: string[], epochs: Map<string, string>): Record<string, string[]> {
  const out: Record<string, string[]> = {};
  for (const name of NAMES) out[name] = [];
  for (const f of frames) {
    const stream = (JSON.parse(f) as { stream: string }).stream;
    (out[stream] ??= []).push(
      f.replace(/"epoch":"([^"]*)"/g, (_, e: string) => {
        if (!epochs.has(e)) epochs.set(e, `E${epochs.size}`);
        return `"epoch":"${epochs.get(e)}"`;
      }),
    );
  }
  return out;
}

const sink = (into: string[]): Transport => ({
  send: (frame) => into.push(text.decode(frame)),
  close: () => {},
});

async function run(
  redis: RedisProcess,
  codec: Codec,
  lines: string[],
  delivered?: () => void,
): Promise<Seen> {
  const prefix = `pj${crypto.randomUUID().slice(0, 8)}:`;
  const options = { codec, maxMessageBytes: 64, maxStreamNameLength: 8 };
  const a = new MessageStream({ ...options, engine: new RedisEngine({ url: redis.url, prefix }) });
  const b = new MessageStream({ ...options, engine: new RedisEngine({ url: redis.url, prefix }) });
  try {
    const frames = { publisher: [] as string[], here: [] as string[], there: [] as string[] };
    const messages: Record<string, unknown[]> = {};
    const here = new Session(a, sink(frames.here));
    const there = new Session(b, sink(frames.there));
    for (const name of NAMES) {
      const listen = JSON.stringify({ action: "listen", stream: name });
      here.handle(listen);
      there.handle(listen);
      const got: unknown[] = messages[name] = [];
      await a.listen(name, { put: (ev: StreamEvent) => got.push(ev.message) });
    }
    await deadline(Promise.all([here.settled(), there.settled()]), "the listens");
    const publisher = new Session(a, sink(frames.publisher));
    for (const line of lines) publisher.handle(line);
    await deadline(publisher.settled() ?? Promise.resolve(), "the puts settle", 20_000);
    // The publishing node's listeners have every put once it settled; the other node's soon.
    await poll(() => frames.there.length === frames.here.length, "the other node's frames", {
      ms: 20_000,
    });
    delivered?.();
    const history: string[] = [];
    for (const name of NAMES) {
      const st = await a.stat(name);
      assert(st, `stream ${name} exists`);
      await b.listen(name, { put: (ev: StreamEvent) => history.push(text.decode(ev.frame)) }, {
        since: { epoch: st.epoch, seq: 0 },
      });
    }
    const epochs = new Map<string, string>();
    return {
      publisher: frames.publisher.sort(),
      here: byStream(frames.here, epochs),
      there: byStream(frames.there, epochs),
      messages,
      history: byStream(history, epochs),
    };
  } finally {
    await Promise.all([a.close(), b.close()]);
  }
}

Deno.test({
  name: "a plain put line gives the same frames, errors and history on a Redis engine fast or slow",
  ignore: !hasRedis,
  async fn() {
    await using redis = await RedisProcess.start();
    const rand = prng(29);
    const alphabet = ['"', "\\", "}", "{", ",", ":", "a", "é", "😀", "\n", "\t", " ", "x", "1"];
    const piece = (n: number): string => {
      let s = "";
      for (let i = 0; i < n; i++) s += alphabet[Math.floor(rand() * alphabet.length)];
      return s;
    };
    const lines: string[] = [];
    for (let i = 0; i < 3_000; i++) {
      const name = rand() < 0.8 ? NAMES[Math.floor(rand() * NAMES.length)] : piece(3);
      // Short and long (over maxMessageBytes: message_too_large) messages, near the plain shape.
      const message = rand() < 0.1 ? "y".repeat(60 + Math.floor(rand() * 10)) : piece(4);
      lines.push(
        `{"action":"put","stream":"${name}","message":"${message}"${rand() < 0.1 ? piece(2) : ""}}`,
      );
    }
    lines.push('{"action":"put","stream":"","message":"x"}');
    lines.push('{"action":"put","stream":"123456789","message":"x"}');
    lines.push(`{"action":"put","stream":"\ud800","message":"x"}`);
    const fast = await run(redis, new JsonCodec(), lines);
    const slow = await run(redis, new Delegating(), lines);
    assertEquals(fast, slow);
    // The fast path was taken: a plain put's message is never encoded, on its way to Redis or
    // to the listeners (the messages of the lines that are not plain are, as on the slow path).
    const counting = new Counting();
    let encoded = -1;
    const plain = await run(
      redis,
      counting,
      lines.filter((l) => scanPlainPut(l) !== -1),
      () => encoded = counting.encodes,
    );
    assertEquals(encoded, 0);
    assert(plain.messages["a"]!.length > 50, `${plain.messages["a"]!.length} plain puts on a`);
    // Both kinds of outcome were met, and the history holds every put.
    const delivered = NAMES.reduce((n, name) => n + fast.here[name]!.length, 0);
    assert(delivered > 500, `${delivered} deliveries`);
    for (const name of NAMES) {
      assertEquals(fast.history[name]!.length, fast.messages[name]!.length, `history of ${name}`);
    }
    assert(fast.publisher.some((f) => f.includes('"code":"message_too_large"')), "too large");
    assert(fast.publisher.some((f) => f.includes('"code":"invalid_stream"')), "invalid_stream");
  },
});

Deno.test({
  name: "a string event from Redis with a raw control character or a stray quote is not delivered",
  ignore: !hasRedis,
  async fn() {
    await using redis = await RedisProcess.start();
    const prefix = `pq${crypto.randomUUID().slice(0, 8)}:`;
    const hub = new MessageStream({ engine: new RedisEngine({ url: redis.url, prefix }) });
    try {
      const rec = new Recorder();
      await hub.listen("job", rec);
      const at = await hub.put("job", "x");
      await rec.waitFor(1);
      // Events of seq 2 that no node would publish (its codec never makes such text): dropped as
      // undecodable, so the real put 2 is the next event, not an out-of-step one.
      for (const payload of ['"a\x01b"', '"a"b"']) {
        const batch = `Bforged.1 ${at.epoch}\np2 ${payload.length} ${payload}`;
        const out = await new Deno.Command("redis-cli", {
          args: ["-p", String(redis.port), "-x", "PUBLISH", streamChannel(prefix, "job")],
          stdin: "piped",
          stdout: "piped",
        }).spawn();
        const w = out.stdin.getWriter();
        await w.write(new TextEncoder().encode(batch));
        await w.close();
        assertEquals(new TextDecoder().decode((await out.output()).stdout).trim(), "1");
      }
      await hub.put("job", "ok");
      const events = await rec.waitFor(2);
      assertEquals(events.map((e) => [e.kind, e.message, e.seq]), [
        ["put", "x", 1],
        ["put", "ok", 2],
      ]);
      assertEquals(
        text.decode(events[1]!.frame),
        `{"action":"put","stream":"job","message":"ok","seq":2,"epoch":"${at.epoch}"}\n`,
      );
    } finally {
      await hub.close();
    }
  },
});
