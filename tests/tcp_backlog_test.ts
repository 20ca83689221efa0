// Requests pipelined behind one in progress (issue 11, H2 item 3): the TCP door stops reading a
// connection whose waiting requests pass a line's worth (--max-line-bytes), so a peer that
// pipelines 100 MB of puts behind a slow pattern join is held back by TCP, not buffered; the
// waiting requests count in the memory budget (`lines`); every one is answered, in order.
import { assert, assertEquals } from "@std/assert";
import { syncOf } from "../core.ts";
import { serve } from "../server.ts";
import { deadline, poll } from "./_wait.ts";

const enc = new TextEncoder();

Deno.test("TCP: 100 MB of puts pipelined behind a slow pattern join wait in the socket, not in the server; all are answered in order", async () => {
  const maxLineBytes = 1 << 20;
  await using server = serve({
    port: 0,
    logLevel: "silent",
    maxLineBytes,
    maxStreams: 200_000,
    maxMemory: 1 << 30,
    maxOutboundBytes: 64 << 20,
  });
  // A join over 100,000 streams takes many turns of the loop.
  const sync = syncOf(server.hub)!;
  for (let i = 0; i < 100_000; i++) sync.putNow(`jobs.${i}`, i);
  const conn = await Deno.connect({ hostname: "127.0.0.1", port: server.addr.port });
  let written = 0;
  let writtenAtJoin = -1;
  let maxLines = 0;
  const oks: unknown[] = [];
  // The reader: counts the join's frames, notes how much was written when the join's ok came,
  // and keeps the ids of the puts' oks.
  const reading = (async () => {
    const dec = new TextDecoder();
    const buf = new Uint8Array(1 << 16);
    let text = "";
    let joinFrames = 0;
    while (oks.length < 100) {
      const n = await conn.read(buf);
      if (n === null) throw new Error(`closed after ${oks.length} oks: ${text.slice(0, 200)}`);
      maxLines = Math.max(maxLines, server.hub.memory.parts().lines);
      text += dec.decode(buf.subarray(0, n), { stream: true });
      let nl;
      while ((nl = text.indexOf("\n")) >= 0) {
        const line = text.slice(0, nl);
        text = text.slice(nl + 1);
        if (!line.startsWith('{"action":"ok"') && !line.startsWith('{"action":"error"')) {
          joinFrames++;
          continue;
        }
        const f = JSON.parse(line);
        if (f.id === "join") {
          assertEquals([f.action, f.streams, joinFrames], ["ok", 100_000, 100_000]);
          writtenAtJoin = written;
        } else oks.push(f.action === "ok" ? f.id : f);
      }
    }
  })();
  const message = "m".repeat(1_000_000);
  const writing = (async () => {
    await conn.write(enc.encode('{"action":"listen","pattern":"jobs.*","id":"join"}\n'));
    for (let i = 0; i < 100; i++) {
      const line = enc.encode(`{"action":"put","stream":"big","message":"${message}","id":${i}}\n`);
      for (let off = 0; off < line.length;) off += await conn.write(line.subarray(off));
      written += line.length;
      maxLines = Math.max(maxLines, server.hub.memory.parts().lines);
    }
  })();
  try {
    await deadline(Promise.all([reading, writing]), "the join and 100 puts to be answered");
  } finally {
    conn.close();
  }
  // deno-lint-ignore no-console
  console.log(`written at the join: ${writtenAtJoin} bytes; lines part at most ${maxLines}`);
  // Every put answered, in order, after the join.
  assertEquals(oks, [...Array(100).keys()]);
  assert(written > 100_000_000, `${written} bytes written`);
  // While the join was in progress the server read at most its bound (one line's worth of
  // waiting requests) and a read's worth more; the rest waited in the sockets' buffers.
  assert(writtenAtJoin >= 0 && writtenAtJoin < 32_000_000, `${writtenAtJoin} written at the join`);
  // What the connection held (waiting requests and its unfinished line) stayed within the bound,
  // a line being read and one read's lines.
  assert(maxLines <= 3 * maxLineBytes + (64 << 10), `lines part reached ${maxLines}`);
  await poll(() => server.hub.memory.parts().lines === 0, "the connection's lines to be released");
});
