/**
 * Hub microbenchmarks: one put fanned out to N listeners (the listeners do what a server
 * connection does: keep the frame), one put per stream over many streams, and a join.
 * `deno bench bench/hub_bench.ts`
 *
 * @module
 */

import { MessageStream, type StreamEvent } from "../mod.ts";

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
  for (let i = 0; i < n; i++) hub.listenNow("s", new Sink());
  Deno.bench({
    name: `putNow to 1 stream with ${n} listeners`,
    group: "fanout",
    baseline: n === 100,
    fn() {
      hub.putNow("s", MESSAGE);
    },
  });
}

{
  const hub = new MessageStream({ historyMessages: 0 });
  hub.listenNow("s", new Sink());
  Deno.bench({
    name: "putNow to 1 listener, history off",
    group: "fanout",
    fn() {
      hub.putNow("s", MESSAGE);
    },
  });
}

{
  const hub = new MessageStream();
  const names = Array.from({ length: 1000 }, (_, i) => `job-${i}`);
  for (const s of names) hub.listenNow(s, new Sink());
  let i = 0;
  Deno.bench({
    name: "putNow round-robin over 1000 streams x 1 listener",
    group: "streams",
    fn() {
      hub.putNow(names[i++ % 1000] as string, MESSAGE);
    },
  });
}

{
  const hub = new MessageStream();
  hub.setHeader("s", { state: "running", done: 42, total: 100 });
  hub.putNow("s", MESSAGE);
  Deno.bench({
    name: "listenNow + hangup on a stream with a header (join)",
    group: "join",
    fn() {
      const sink = new Sink();
      hub.listenNow("s", sink);
      hub.hangup("s", sink);
    },
  });
}
