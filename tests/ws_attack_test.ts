/**
 * WebSocket abuse through the HTTP door's own wire (`ws_wire.ts`), with frames written by hand
 * on real sockets (issue 11, round three): a message of many tiny fragments, pings whose pongs
 * are never read, and a close the peer sends but never follows by ending its side.
 */
import { assert, assertEquals, assertStringIncludes } from "@std/assert";
import { MessageStream } from "../mod.ts";
import { serveHttp } from "../http.ts";
import { MAX_FRAGMENTS } from "../ws_wire.ts";
import { deadline, poll } from "./_wait.ts";
import { clientFrame as frame, rawWs, writeAll } from "./_ws_raw.ts";

const enc = new TextEncoder();

/** `count` copies of `one`, in one buffer. */
function repeat(one: Uint8Array, count: number): Uint8Array {
  const all = new Uint8Array(one.length * count);
  for (let i = 0; i < count; i++) all.set(one, i * one.length);
  return all;
}

/**
 * Reads server frames until `stop` says so, counting them by opcode.
 *
 * @returns The count of each opcode and the last payload of each.
 */
async function readUntil(
  conn: Deno.Conn,
  stop: (op: number, payload: Uint8Array) => boolean,
  what: string,
): Promise<Map<number, { count: number; last: Uint8Array }>> {
  const seen = new Map<number, { count: number; last: Uint8Array }>();
  let buf = new Uint8Array(0);
  const chunk = new Uint8Array(1 << 16);
  await deadline(
    (async () => {
      for (;;) {
        while (buf.length >= 2) {
          let len = buf[1]! & 0x7f;
          let at = 2;
          if (len === 126) [len, at] = [(buf[2]! << 8) | buf[3]!, 4];
          else if (len === 127) throw new Error("unexpected large frame");
          if (buf.length < at + len) break;
          const op = buf[0]! & 0x0f;
          const payload = buf.slice(at, at + len);
          const s = seen.get(op) ?? { count: 0, last: payload };
          s.count++;
          s.last = payload;
          seen.set(op, s);
          buf = buf.subarray(at + len);
          if (stop(op, payload)) return;
        }
        const n = await conn.read(chunk);
        if (n === null) throw new Error(`closed before ${what}`);
        const next = new Uint8Array(buf.length + n);
        next.set(buf);
        next.set(chunk.subarray(0, n), buf.length);
        buf = next;
      }
    })(),
    what,
  );
  return seen;
}

Deno.test("a WebSocket message of 16,000 one-byte fragments costs its bytes, not an object each", async () => {
  await using server = serveHttp(new MessageStream(), { port: 0, maxBodyBytes: 1 << 20 });
  const conn = await rawWs(server.addr.port);
  const before = Deno.memoryUsage().heapUsed;
  // 16 KB of message, under MAX_FRAGMENTS: each fragment was kept as a buffer object of its own
  // (about 600 bytes each: +183 MB RSS in a server for 300,000 of them).
  await conn.write(frame(false, 1, enc.encode(" ")));
  const fragments = repeat(frame(false, 0, enc.encode(" ")), 16_000);
  await writeAll(conn, fragments);
  // A ping may come between fragments: its pong says every fragment before it was read.
  await conn.write(frame(true, 9, enc.encode("mark")));
  await readUntil(conn, (op) => op === 10, "the pong after the fragments");
  const grown = Deno.memoryUsage().heapUsed - before;
  assert(grown < 64 * 2 ** 20, `heap grew ${Math.round(grown / 2 ** 20)} MiB`);
  // The message (blank, so ignored) ends and the socket serves the next one.
  await conn.write(frame(true, 0));
  await conn.write(frame(true, 1, enc.encode('{"action":"ping","id":1}')));
  const seen = await readUntil(conn, (op) => op === 1, "the pong frame");
  assertEquals(new TextDecoder().decode(seen.get(1)?.last), '{"action":"pong","id":1}');
  conn.close();
  await poll(() => server.connections === 0, "the socket to be forgotten");
});

Deno.test(`a WebSocket message of more than ${MAX_FRAGMENTS} fragments is refused with 1008`, async () => {
  await using server = serveHttp(new MessageStream(), { port: 0 });
  const conn = await rawWs(server.addr.port);
  // 300,000 one-byte fragments: about a microsecond of CPU each however small (20 sockets took
  // 7.8 s of a loaded machine's CPU); refused at the frame past the bound.
  await conn.write(frame(false, 1, enc.encode(" ")));
  const fragments = repeat(frame(false, 0, enc.encode(" ")), 300_000);
  const writing = writeAll(conn, fragments).catch(() => {}); // the server closes mid-way
  const seen = await readUntil(conn, (op) => op === 8, "the close frame");
  const close = seen.get(8)?.last ?? new Uint8Array();
  assertEquals((close[0]! << 8) | close[1]!, 1008);
  assertStringIncludes(new TextDecoder().decode(close.subarray(2)), `${MAX_FRAGMENTS} frames`);
  await writing;
  conn.close();
  await poll(() => server.connections === 0, "the socket to be forgotten");
});

Deno.test("pings whose pongs are not read are answered by the latest, not one pong each", async () => {
  await using server = serveHttp(new MessageStream(), { port: 0 });
  const conn = await rawWs(server.addr.port);
  // 200,000 pings of 125 bytes, none of the pongs read while they are sent: every pong was
  // queued (+132 MB RSS in a server).
  const pings = 200_000;
  const payload = new Uint8Array(125).fill(0x70);
  const batch = repeat(frame(true, 9, payload), 10_000);
  for (let i = 0; i < pings / 10_000; i++) await writeAll(conn, batch);
  const last = enc.encode("last");
  await conn.write(frame(true, 9, last));
  const seen = await readUntil(
    conn,
    (op, p) => op === 10 && p.length === last.length,
    "the pong to the last ping",
  );
  const pongs = seen.get(10)?.count ?? 0;
  assert(pongs < pings, `${pongs} pongs for ${pings + 1} pings`);
  assertEquals(new TextDecoder().decode(seen.get(10)?.last), "last");
  conn.close();
  await poll(() => server.connections === 0, "the socket to be forgotten");
});

Deno.test("a peer that sends close and then neither reads nor ends its side is let go", async () => {
  await using server = serveHttp(new MessageStream(), { port: 0 });
  const conns: Deno.TcpConn[] = [];
  for (let i = 0; i < 5; i++) conns.push(await rawWs(server.addr.port));
  await poll(() => server.connections === 5, "five sockets");
  const close = new Uint8Array([0x03, 0xe8]); // 1000
  for (const conn of conns) await conn.write(frame(true, 8, close));
  // The server answers the close and ends its side; the peer never does. A closing socket is
  // no longer pinged, so the sockets stayed open for good.
  await poll(() => server.connections === 0, () => `${server.connections} sockets still open`, {
    interval: 50,
  });
  for (const conn of conns) conn.close();
});

Deno.test("a WebSocket whose peer ends its side without a close frame is let go at once", async () => {
  await using server = serveHttp(new MessageStream(), { port: 0 });
  const conns: Deno.TcpConn[] = [];
  for (let i = 0; i < 5; i++) conns.push(await rawWs(server.addr.port));
  await poll(() => server.connections === 5, "five sockets");
  // A browser tab that goes, a client that crashes: FIN, no close frame. The door's sockets
  // are half-open, so each stayed open until its idle ping a minute later (a descriptor and a
  // connection slot each).
  for (const conn of conns) conn.close();
  await poll(() => server.connections === 0, () => `${server.connections} sockets still open`, {
    interval: 50,
  });
});
