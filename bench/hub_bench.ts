/**
 * Hub microbenchmarks: one put fanned out to N listeners (the listeners do what a server
 * connection does: keep the frame), one put per stream over many streams, and a join.
 * `deno bench bench/hub_bench.ts`
 *
 * @module
 */

import { type SyncHub, syncOf } from "../core.ts";
import { MessageStream, type StreamEvent } from "../mod.ts";

/** The hub's internal sync fast paths (what the TCP door's Session calls). */
function fast(hub: MessageStream): SyncHub {
  const sync = syncOf(hub);
  if (!sync) throw new TypeError("A memory hub has sync fast paths");
  return sync;
}

const MESSAGE = "x".repeat(100);

/** A listener that keeps the last frame, as a connection's outbound queue would. */
class Sink {
  last: Uint8Array | undefined = undefined;
  n = 0;
  put(ev: StreamEvent): void {
    this.last = ev.frame;
    this.n++;
  }
}

for (const n of [1, 100, 1000]) {
  const hub = new MessageStream();
  const sync = fast(hub);
  for (let i = 0; i < n; i++) sync.listenNow("s", new Sink());
  Deno.bench({
    name: `putNow to 1 stream with ${n} listeners`,
    group: "fanout",
    baseline: n === 100,
    fn() {
      sync.putNow("s", MESSAGE);
    },
  });
}

{
  const hub = new MessageStream({ historyMessages: 0 });
  const sync = fast(hub);
  sync.listenNow("s", new Sink());
  Deno.bench({
    name: "putNow to 1 listener, history off",
    group: "fanout",
    fn() {
      sync.putNow("s", MESSAGE);
    },
  });
}

{
  const hub = new MessageStream();
  const sync = fast(hub);
  const names = Array.from({ length: 1000 }, (_, i) => `job-${i}`);
  for (const s of names) sync.listenNow(s, new Sink());
  let i = 0;
  Deno.bench({
    name: "putNow round-robin over 1000 streams x 1 listener",
    group: "streams",
    fn() {
      sync.putNow(names[i++ % 1000] as string, MESSAGE);
    },
  });
}

{
  const hub = new MessageStream();
  const sync = fast(hub);
  sync.setHeader("s", { state: "running", done: 42, total: 100 });
  sync.putNow("s", MESSAGE);
  Deno.bench({
    name: "listenNow + hangup on a stream with a header (join)",
    group: "join",
    fn() {
      const sink = new Sink();
      sync.listenNow("s", sink);
      hub.hangup("s", sink);
    },
  });
}
