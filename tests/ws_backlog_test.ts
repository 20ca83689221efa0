// Requests pipelined behind one in progress, on the WebSocket door (issue 11): like the TCP
// door, the HTTP door's own WebSocket stops reading a socket whose waiting requests pass one
// message's worth, so a peer that pipelines 90 MB of puts behind a slow pattern join is held
// back by TCP, not buffered in the server (the waiting requests count in the memory budget's
// `lines` part, which stays near one message's worth); every put is answered, in order.
import { assert, assertEquals, assertStringIncludes } from "@std/assert";
import { syncOf } from "../core.ts";
import { serveHttp } from "../http.ts";
import { MessageStream } from "../mod.ts";
import { deadline, poll } from "./_wait.ts";
import { clientFrame, upgradeRequest } from "./_ws_raw.ts";

Deno.test("WebSocket: 90 MB of puts pipelined behind a slow pattern join wait in the socket, not in the server; all are answered in order", async () => {
  const hub = new MessageStream({ maxStreams: 200_000, maxMemory: 1 << 30 });
  const sync = syncOf(hub)!;
  for (let i = 0; i < 100_000; i++) sync.putNow(`jobs.${i}`, i);
  await using server = serveHttp(hub, { port: 0, maxOutboundBytes: 64 << 20 });
  const port = server.addr.port;
  const conn = await Deno.connect({ hostname: "127.0.0.1", port });
  await conn.write(upgradeRequest(port));
  const upgraded = Promise.withResolvers<void>();
  let written = 0;
  let writtenAtJoin = -1;
  let maxLines = 0;
  const oks: unknown[] = [];
  const reading = (async () => {
    const dec = new TextDecoder();
    const buf = new Uint8Array(1 << 16);
    let pending = new Uint8Array(0);
    let head = "";
    let joinFrames = 0;
    while (oks.length < 300) {
      const n = await conn.read(buf);
      maxLines = Math.max(maxLines, hub.memory.parts().lines);
      if (n === null) {
        const e = new Error(`closed after ${oks.length} oks`);
        upgraded.reject(e);
        throw e;
      }
      const more = new Uint8Array(pending.length + n);
      more.set(pending);
      more.set(buf.subarray(0, n), pending.length);
      pending = more;
      if (!head.endsWith("\r\n\r\n")) {
        const end = dec.decode(pending).indexOf("\r\n\r\n");
        if (end < 0) continue;
        head = dec.decode(pending.subarray(0, end + 4));
        assertStringIncludes(head, "HTTP/1.1 101");
        pending = pending.subarray(end + 4);
        upgraded.resolve();
      }
      // Server frames: unmasked text frames.
      let at = 0;
      while (pending.length - at >= 2) {
        const b1 = pending[at + 1]! & 0x7f;
        let len = b1;
        let off = 2;
        if (b1 === 126) {
          if (pending.length - at < 4) break;
          len = (pending[at + 2]! << 8) | pending[at + 3]!;
          off = 4;
        } else if (b1 === 127) {
          if (pending.length - at < 10) break;
          len = Number(
            new DataView(pending.buffer, pending.byteOffset + at + 2, 8).getBigUint64(0),
          );
          off = 10;
        }
        if (pending.length - at < off + len) break;
        const text = dec.decode(pending.subarray(at + off, at + off + len));
        at += off + len;
        if (!text.startsWith('{"action":"ok"') && !text.startsWith('{"action":"error"')) {
          joinFrames++;
          continue;
        }
        const f = JSON.parse(text);
        if (f.id === "join") {
          assertEquals([f.action, f.streams, joinFrames], ["ok", 100_000, 100_000]);
          writtenAtJoin = written;
        } else oks.push(f.action === "ok" ? f.id : f);
      }
      pending = pending.slice(at);
    }
  })();
  const message = "m".repeat(300_000);
  const writing = (async () => {
    await upgraded.promise;
    const join = clientFrame(true, 1, '{"action":"listen","pattern":"jobs.*","id":"join"}');
    await conn.write(join);
    for (let i = 0; i < 300; i++) {
      const f = clientFrame(
        true,
        1,
        `{"action":"put","stream":"big","message":"${message}","id":${i}}`,
      );
      for (let off = 0; off < f.length;) off += await conn.write(f.subarray(off));
      written += f.length;
      maxLines = Math.max(maxLines, hub.memory.parts().lines);
    }
  })();
  try {
    await deadline(Promise.all([reading, writing]), "the join and 300 puts to be answered");
  } finally {
    conn.close();
  }
  // deno-lint-ignore no-console
  console.log(`written at the join: ${writtenAtJoin} bytes; lines part at most ${maxLines}`);
  assertEquals(oks, [...Array(300).keys()]);
  assert(written > 90_000_000, `${written} bytes written`);
  assert(writtenAtJoin >= 0, "the join's ok was seen");
  // The requests waiting behind the join count in the budget, and the server read at most one
  // message's worth of them and a read's worth more: the rest waited in the sockets' buffers.
  assert(maxLines > 300_000, `lines part reached only ${maxLines}: the backlog is not counted`);
  assert(maxLines <= (1 << 20) + 2 * 300_100, `lines part reached ${maxLines}`);
  await poll(() => hub.memory.parts().lines === 0, "the socket's backlog to be released");
});
