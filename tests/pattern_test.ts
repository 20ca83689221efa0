/**
 * Pattern listens on the hub: the header first per stream, new streams announced before their
 * first put, end per stream with the pattern kept, resume by a map of positions, nothing from
 * outside the pattern, gapless joins while puts race, and a catch-up that yields.
 */
import { assertEquals, assertRejects, assertThrows } from "@std/assert";
import { follow, Inbox, MessageStream, SlowConsumerError, type StreamEvent } from "../mod.ts";
import { checkPattern, matchPattern, patternCovers } from "../pattern.ts";
import { deadline } from "./_wait.ts";

function recorder(): {
  queue: { put(ev: StreamEvent): void };
  seen: string[];
  events: StreamEvent[];
} {
  const seen: string[] = [];
  const events: StreamEvent[] = [];
  return {
    seen,
    events,
    queue: {
      put(ev: StreamEvent) {
        events.push(ev);
        seen.push(`${ev.stream} ${ev.kind} ${JSON.stringify(ev.message)} ${ev.seq}`);
      },
    },
  };
}

Deno.test("matchPattern() takes * as any run of characters, dots included", () => {
  assertEquals(matchPattern("jobs.*", "jobs.1"), true);
  assertEquals(matchPattern("jobs.*", "jobs.eu.7"), true);
  assertEquals(matchPattern("jobs.*", "jobs."), true);
  assertEquals(matchPattern("jobs.*", "jobs"), false);
  assertEquals(matchPattern("jobs.*", "xjobs.1"), false);
  assertEquals(matchPattern("*.log", "a.b.log"), true);
  assertEquals(matchPattern("a*b*c", "aXbYbZc"), true);
  assertEquals(matchPattern("a*b*c", "aXcYb"), false);
  assertEquals(matchPattern("exact", "exact"), true);
  assertEquals(matchPattern("exact", "exactly"), false);
  assertEquals(matchPattern("*", "anything at all"), true);
});

Deno.test("patternCovers() holds only when the grant matches every name of the pattern", () => {
  assertEquals(patternCovers("*", "jobs.*"), true);
  assertEquals(patternCovers("jobs.*", "jobs.eu.*"), true);
  assertEquals(patternCovers("jobs.*", "jobs.7"), true);
  assertEquals(patternCovers("jobs.*", "jobs.*"), true);
  assertEquals(patternCovers("jobs.eu.*", "jobs.*"), false);
  assertEquals(patternCovers("jobs.*", "*"), false);
  assertEquals(patternCovers("jobs.*", "job*"), false);
  assertEquals(patternCovers("*.log", "jobs.*.log"), true);
  assertEquals(patternCovers("*.log", "jobs.*"), false);
  assertEquals(patternCovers("jobs.7", "jobs.*"), false);
});

Deno.test("checkPattern() refuses what is not a pattern", () => {
  assertThrows(() => checkPattern("", 10), TypeError, "must not be empty");
  assertThrows(() => checkPattern(3, 10), TypeError, "must be a string");
  assertThrows(() => checkPattern("x".repeat(11), 10), RangeError, "the limit is 10");
  assertThrows(() => checkPattern("a\ud800", 10), TypeError, "lone surrogate");
});

Deno.test("a pattern listen gets each existing matching stream's header first", async () => {
  const hub = new MessageStream();
  await hub.header("jobs.1", "running");
  await hub.put("jobs.1", "a");
  const b = await hub.put("jobs.2", "b");
  await hub.put("other", "x");
  const r = recorder();
  assertEquals(await hub.listen({ pattern: "jobs.*" }, r.queue), { pattern: "jobs.*", streams: 2 });
  assertEquals(r.seen, ['jobs.1 header "running" 1', "jobs.2 header null 1"]);
  assertEquals(r.events[1]!.epoch, b.epoch);
  await hub.put("jobs.2", "c");
  await hub.put("other", "y");
  await hub.put("jobs.1", "d");
  assertEquals(r.seen.slice(2), ['jobs.2 put "c" 2', 'jobs.1 put "d" 2']);
});

Deno.test("a stream created later is announced with a header event before its first put", async () => {
  const hub = new MessageStream();
  const r = recorder();
  await hub.listen({ pattern: "jobs.*" }, r.queue);
  const at = await hub.put("jobs.9", 1);
  await hub.header("jobs.8", "queued");
  await hub.put("nope", 1);
  assertEquals(r.seen, [
    "jobs.9 header null 0",
    "jobs.9 put 1 1",
    "jobs.8 header null 0",
    'jobs.8 header "queued" 0',
  ]);
  assertEquals(r.events[0]!.epoch, at.epoch);
  // The announcement is the join frame: the original's clients see a put with "header": true.
  assertEquals(
    new TextDecoder().decode(r.events[0]!.frame),
    `{"action":"put","stream":"jobs.9","message":null,"header":true,"seq":0,"epoch":"${at.epoch}"}\n`,
  );
});

Deno.test("delete gives end for that stream and the pattern stays", async () => {
  const hub = new MessageStream();
  const r = recorder();
  await hub.put("jobs.1", 1);
  await hub.listen({ pattern: "jobs.*" }, r.queue);
  await hub.delete("jobs.1");
  await hub.put("jobs.1", 2);
  assertEquals(r.seen, [
    "jobs.1 header null 1",
    "jobs.1 end null 1",
    "jobs.1 header null 0",
    "jobs.1 put 2 1",
  ]);
  assertEquals(r.events[0]!.epoch === r.events[2]!.epoch, false);
});

Deno.test("hangup of a pattern stops it; endqueue stops every pattern", async () => {
  const hub = new MessageStream();
  const r = recorder();
  await hub.listen({ pattern: "a.*" }, r.queue);
  await hub.listen({ pattern: "b.*" }, r.queue);
  await hub.put("a.1", 1);
  hub.hangup({ pattern: "a.*" }, r.queue);
  await hub.put("a.1", 2);
  await hub.put("b.1", 3);
  hub.endqueue(r.queue);
  await hub.put("b.1", 4);
  await hub.put("b.2", 5);
  assertEquals(r.seen, ["a.1 header null 0", "a.1 put 1 1", "b.1 header null 0", "b.1 put 3 1"]);
});

Deno.test("a queue gets each event once, however many patterns and listens cover it", async () => {
  const hub = new MessageStream();
  const r = recorder();
  await hub.listen("jobs.1", r.queue);
  await hub.listen({ pattern: "jobs.*" }, r.queue);
  await hub.listen({ pattern: "*" }, r.queue);
  await hub.put("jobs.1", 1);
  hub.hangup("jobs.1", r.queue);
  await hub.put("jobs.1", 2);
  hub.hangup({ pattern: "jobs.*" }, r.queue);
  await hub.put("jobs.1", 3);
  hub.hangup({ pattern: "*" }, r.queue);
  await hub.put("jobs.1", 4);
  assertEquals(r.seen, ["jobs.1 put 1 1", "jobs.1 put 2 2", "jobs.1 put 3 3"]);
});

Deno.test("resume takes a map of positions: replay, reset per stream, end for a stream gone", async () => {
  const hub = new MessageStream({ historyMessages: 2 });
  const a1 = await hub.put("jobs.a", 1);
  await hub.put("jobs.b", 1);
  const gone = await hub.put("jobs.c", 1);
  await hub.put("jobs.a", 2);
  for (let i = 2; i <= 5; i++) await hub.put("jobs.b", i);
  await hub.delete("jobs.c");
  await hub.put("jobs.d", 1);
  const r = recorder();
  const since = {
    "jobs.a": a1,
    "jobs.b": { epoch: a1.epoch === "" ? "x" : (await hub.stat("jobs.b"))!.epoch, seq: 1 },
    "jobs.c": gone,
  };
  assertEquals(await hub.listen({ pattern: "jobs.*" }, r.queue, { since }), {
    pattern: "jobs.*",
    streams: 3,
  });
  assertEquals(r.seen, [
    "jobs.a put 2 2",
    'jobs.b reset {"reason":"history_trimmed"} 5',
    "jobs.b header null 5",
    "jobs.d header null 1",
    "jobs.c end null 1",
  ]);
});

Deno.test("a pattern join with puts racing on many streams is gapless per stream", async () => {
  const hub = new MessageStream(
    { maxStreams: 10_000 } as ConstructorParameters<typeof MessageStream>[0],
  );
  const streams = 3000;
  for (let i = 0; i < streams; i++) await hub.put(`jobs.${i}`, 0);
  const r = recorder();
  const joined = hub.listen({ pattern: "jobs.*" }, r.queue);
  // Puts race the catch-up: it yields every few milliseconds.
  let racing = true;
  const writer = (async () => {
    let n = 1;
    while (racing) {
      for (let i = 0; i < streams; i += 7) await hub.put(`jobs.${i}`, n);
      await hub.put(`jobs.new${n}`, n);
      n++;
      await new Promise((resolve) => setTimeout(resolve, 0));
    }
  })();
  await deadline(joined, "the pattern join");
  racing = false;
  await writer;
  const last = new Map<string, number>();
  for (const ev of r.events) {
    const prev = last.get(ev.stream);
    if (ev.kind === "header") {
      assertEquals(prev, undefined, `two headers for ${ev.stream}`);
    } else {
      assertEquals(ev.kind, "put");
      assertEquals(prev === undefined ? "no header first" : ev.seq, prev! + 1, `${ev.stream}`);
    }
    last.set(ev.stream, ev.seq);
  }
  for (const [name, seq] of last) assertEquals(seq, (await hub.stat(name))!.seq, name);
  assertEquals(last.size, hub.list().length);
});

Deno.test("follow() follows named streams and a pattern into one inbox until aborted", async () => {
  const hub = new MessageStream();
  await hub.header("solo", "h");
  const stop = new AbortController();
  const inbox = await follow(hub, { streams: ["solo"], pattern: "jobs.*", signal: stop.signal });
  await hub.put("jobs.1", 1);
  await hub.put("solo", 2);
  await hub.put("elsewhere", 3);
  stop.abort();
  await hub.put("jobs.1", 4);
  const seen = (await Array.fromAsync(inbox)).map((ev) => `${ev.stream} ${ev.kind}`);
  assertEquals(seen, ["solo header", "jobs.1 header", "jobs.1 put", "solo put"]);
  assertEquals(hub.stats().listeners, 0);
});

Deno.test("a pattern listener is one listener with one bound: past it, it alone is cut", async () => {
  const hub = new MessageStream();
  for (let i = 0; i < 10; i++) await hub.put(`jobs.${i}`, i);
  const small = new Inbox({ maxEvents: 4 });
  const other = recorder();
  await hub.listen({ pattern: "jobs.*" }, other.queue);
  // The catch-up alone (10 headers) passes the small inbox's bound.
  await hub.listen({ pattern: "jobs.*" }, small);
  const reader = small.getReader();
  for (let i = 0; i < 4; i++) assertEquals((await reader.read()).value?.kind, "header");
  await assertRejects(() => reader.read(), SlowConsumerError);
  await hub.put("jobs.0", "after");
  assertEquals(other.seen.length, 11);
  assertEquals(other.seen[10], 'jobs.0 put "after" 2');
});
