// Frames a WebSocket client sends right behind its upgrade request (in the same write, or before
// the 101 came back) are served, none lost: the door's transport hands the socket over paused.
import { assertEquals, assertStringIncludes } from "@std/assert";
import { serveHttp } from "../http.ts";
import { MessageStream } from "../mod.ts";
import { deadline } from "./_wait.ts";
import { clientFrame, upgradeRequest } from "./_ws_raw.ts";

/** Reads unmasked text frames after the 101 until `count` have come. */
async function readFrames(conn: Deno.Conn, count: number): Promise<string[]> {
  const dec = new TextDecoder();
  const buf = new Uint8Array(1 << 16);
  let pending = new Uint8Array(0);
  let head = "";
  const texts: string[] = [];
  while (texts.length < count) {
    const n = await conn.read(buf);
    if (n === null) throw new Error(`closed after ${JSON.stringify(texts)}`);
    const more = new Uint8Array(pending.length + n);
    more.set(pending);
    more.set(buf.subarray(0, n), pending.length);
    pending = more;
    if (!head) {
      const end = dec.decode(pending).indexOf("\r\n\r\n");
      if (end < 0) continue;
      head = dec.decode(pending.subarray(0, end + 4));
      assertStringIncludes(head, "HTTP/1.1 101");
      pending = pending.subarray(end + 4);
    }
    while (pending.length >= 2 && pending.length >= 2 + (pending[1]! & 0x7f)) {
      const len = pending[1]! & 0x7f;
      texts.push(dec.decode(pending.subarray(2, 2 + len)));
      pending = pending.subarray(2 + len);
    }
  }
  return texts;
}

for (const split of [false, true]) {
  Deno.test(`WebSocket: frames sent ${split ? "just after" : "in the same write as"} the upgrade request are all served`, async () => {
    const hub = new MessageStream();
    await using server = serveHttp(hub, { port: 0 });
    const port = server.addr.port;
    const conn = await Deno.connect({ hostname: "127.0.0.1", port });
    try {
      const request = upgradeRequest(port);
      const frames = [
        clientFrame(true, 1, '{"action":"put","stream":"s","message":1,"id":"a"}'),
        clientFrame(true, 1, '{"action":"put","stream":"s","message":2,"id":"b"}'),
        clientFrame(true, 1, '{"action":"ping","id":"c"}'),
      ];
      if (split) {
        await conn.write(request);
        for (const f of frames) await conn.write(f);
      } else {
        const all = new Uint8Array(request.length + frames.reduce((n, f) => n + f.length, 0));
        let at = 0;
        for (const part of [request, ...frames]) {
          all.set(part, at);
          at += part.length;
        }
        await conn.write(all);
      }
      const texts = await deadline(readFrames(conn, 3), "answers to the three frames");
      assertEquals(texts.map((t) => JSON.parse(t).id), ["a", "b", "c"]);
      assertEquals((await hub.stat("s"))?.seq, 2);
    } finally {
      conn.close();
    }
  });
}
