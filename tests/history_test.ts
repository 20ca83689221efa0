/**
 * History (history.ts): the byte ring per stream and the global budget, on their own and under
 * random load against a model: whatever the hub still keeps, a resume it serves must give
 * exactly the events after the position (same messages, same frames as the live listener got),
 * and every bound must hold after every put.
 */

import { assert, assertEquals, assertLessOrEqual } from "@std/assert";
import { defaultCodec } from "../codec.ts";
import { buildEvent } from "../frame.ts";
import { History, HistoryBudget, type HistoryOwner } from "../history.ts";
import { MessageStream, type Position, type StreamEvent } from "../mod.ts";
import { prng } from "./_prng.ts";

interface Seen {
  kind: string;
  seq: number;
  message: unknown;
  frame: string;
}

const decoder = new TextDecoder();
const seen = (ev: StreamEvent): Seen => ({
  kind: ev.kind,
  seq: ev.seq,
  message: ev.message,
  frame: decoder.decode(ev.frame),
});

Deno.test("History serves every covered resume exactly and keeps every bound, under random puts", async (t) => {
  const configs = [
    { historyMessages: 7, historyBytes: 600, maxHistoryBytes: 2_000 },
    { historyMessages: 50, historyBytes: 4_000, maxHistoryBytes: 9_000 },
    { historyMessages: 1000, historyBytes: 1 << 20, maxHistoryBytes: 64 << 10 },
  ];
  for (const [n, config] of configs.entries()) {
    const seed =
      (Deno.env.get("HISTORY_SEED") ? Number(Deno.env.get("HISTORY_SEED")) : Date.now()) +
      n;
    await t.step(`${JSON.stringify(config)} (seed ${seed})`, async () => {
      const rand = prng(seed);
      const hub = new MessageStream(config);
      const names = ["a", "b", "c", "d", "e"];
      /** Everything each stream's live listener got, in order. */
      const live = new Map<string, Seen[]>();
      const epochs = new Map<string, string>();
      for (const name of names) {
        const got: Seen[] = [];
        live.set(name, got);
        const at = await hub.listen(name, { put: (ev: StreamEvent) => got.push(seen(ev)) });
        epochs.set(name, at.epoch);
      }
      let served = 0;
      let resets = 0;
      for (let step = 0; step < 3_000; step++) {
        const name = names[Math.floor(rand() * names.length)] as string;
        const r = rand();
        const size = Math.floor(rand() * rand() * 700); // mostly small, sometimes over a bound
        const text = "x".repeat(size) + (rand() < 0.2 ? "é€😀" : "");
        if (r < 0.1) await hub.header(name, { h: step, text });
        else await hub.put(name, { step, text });
        const stats = hub.stats();
        assertLessOrEqual(stats.historyBytes, config.maxHistoryBytes);
        const info = hub.info(name);
        assert(info);
        assertLessOrEqual(info.historyLength, config.historyMessages);
        assertLessOrEqual(info.historyBytes, config.historyBytes);
        if (step % 7 !== 0) continue;
        // Resume from the oldest position history still covers (found by bisection: coverage
        // only grows towards the present), so the replay spans every kept entry, the oldest
        // included, and from the position just before it, which must be a reset.
        const got = live.get(name) as Seen[];
        const epoch = epochs.get(name) as string;
        const resume = async (seq: number): Promise<Seen[]> => {
          const replay: Seen[] = [];
          const queue = { put: (ev: StreamEvent) => replay.push(seen(ev)) };
          await hub.listen(name, queue, { since: { epoch, seq } });
          hub.hangup(name, queue);
          return replay;
        };
        let lo = 0; // candidate positions: seq 0 (before the first put) and each put's seq
        const seqs = [0, ...got.filter((e) => e.kind === "put").map((e) => e.seq)];
        let hi = seqs.length - 1;
        const newest = await resume(seqs[hi] as number);
        if (newest[0]?.kind === "reset") {
          // Even the newest put's position: header changes made after it were trimmed, and one
          // at exactly that seq may have been missed, so the hub cannot serve it from history.
          assertEquals(newest[0].message, { reason: "history_trimmed" });
          assertEquals(newest.slice(1).map((e) => e.kind), ["header"]);
          resets++;
          continue;
        }
        while (lo < hi) {
          const mid = (lo + hi) >> 1;
          if ((await resume(seqs[mid] as number))[0]?.kind === "reset") lo = mid + 1;
          else hi = mid;
        }
        const since: Position = { epoch, seq: seqs[lo] as number };
        const replay = await resume(since.seq);
        const expected = got.filter((e) =>
          e.seq > since.seq || (e.kind === "header" && e.seq === since.seq)
        );
        assertEquals(replay, expected);
        served++;
        if (lo > 0) {
          const before = await resume(seqs[lo - 1] as number);
          assertEquals(before[0]?.kind, "reset");
          assertEquals(before[0]?.message, { reason: "history_trimmed" });
          resets++;
        }
      }
      // Both outcomes happened: the test exercised replays and trimming alike.
      assert(served > 0, "no resume was served from history");
      if (config.historyMessages < 1000) assert(resets > 0, "no resume hit trimmed history");
    });
  }
});

/** A stream as history sees it, with a put helper. */
function owner(
  name: string,
): HistoryOwner & { put(budget: HistoryBudget, message: unknown): void } {
  return {
    name,
    epoch: "e",
    seq: 0,
    history: undefined,
    nextNo: 0,
    trimmedTo: 0,
    put(budget, message) {
      this.seq++;
      budget.record(this, buildEvent(defaultCodec, "put", this, message, this.seq, "e", "slab"));
    },
  };
}

Deno.test("HistoryBudget trims the oldest entry of any stream first when over the global bound", () => {
  const frame = buildEvent(defaultCodec, "put", { name: "a" }, "x", 1, "e", "own").frame;
  const trimmed: string[] = [];
  const budget = new HistoryBudget(
    { historyMessages: 100, historyBytes: 1 << 20, maxHistoryBytes: 3 * frame.byteLength },
    (o) => trimmed.push(`${o.name}:${o.history?.count}`),
  );
  const a = owner("a");
  const b = owner("b");
  a.put(budget, "x");
  b.put(budget, "x");
  a.put(budget, "x");
  assertEquals(budget.bytes, 3 * frame.byteLength);
  b.put(budget, "x"); // over: a's first entry goes
  assertEquals(trimmed, ["a:1"]);
  assertEquals([a.history?.count, b.history?.count], [1, 2]);
  assertEquals(budget.uncovered(a, { epoch: "e", seq: 0 }), "history_trimmed");
  assertEquals(budget.uncovered(a, { epoch: "e", seq: 1 }), undefined);
  assertEquals(budget.bytes, 3 * frame.byteLength);
  budget.drop(b);
  assertEquals([b.history, budget.bytes], [undefined, frame.byteLength]);
});

Deno.test("HistoryBudget.replay() gives the puts after a position and the header changes at it", () => {
  const budget = new HistoryBudget(
    { historyMessages: 10, historyBytes: 1 << 20, maxHistoryBytes: 1 << 20 },
    () => {},
  );
  const s = owner("s");
  s.put(budget, 1);
  budget.record(s, buildEvent(defaultCodec, "header", s, "h", 1, "e", "slab"));
  s.put(budget, 2);
  const got: unknown[] = [];
  const collectAll = (ev: StreamEvent) => {
    got.push([ev.kind, ev.message, ev.seq]);
    return true;
  };
  assert(budget.replay(s, { epoch: "e", seq: 1 }, defaultCodec, collectAll));
  assertEquals(got, [["header", "h", 1], ["put", 2, 2]]);
  assertEquals(budget.uncovered(s, { epoch: "x", seq: 1 }), "epoch_changed");
  assertEquals(budget.uncovered(s, { epoch: "e", seq: 3 }), "ahead_of_stream");
  assertEquals(budget.replay(s, { epoch: "e", seq: 0 }, defaultCodec, () => false), false);
});

Deno.test("History ring keeps frames intact across wrap-around and growth", () => {
  const h = new History(0, 16);
  const frames: Uint8Array[] = [];
  for (let i = 0; i < 500; i++) {
    const f = new TextEncoder().encode(`frame ${i} ${"z".repeat(i % 37)}\n`);
    frames.push(f);
    h.push(f, i, i % 5 === 0);
    while (h.count > 7 || h.bytes > 200) h.shift();
    for (let k = 0; k < h.count; k++) {
      const seq = h.seqAt(k);
      assertEquals(h.frameAt(k), frames[seq]);
      assertEquals(h.isHeaderAt(k), seq % 5 === 0);
    }
  }
  assertLessOrEqual(h.bytes, 200);
});
