/**
 * A WebSocket client written by hand on a raw socket, for tests that send frames no library
 * would (fragments, control abuse, frames pipelined behind the upgrade request).
 */
import { assertStringIncludes } from "@std/assert";
import { deadline } from "./_wait.ts";

const enc = new TextEncoder();

/** The upgrade request of `/ws` on 127.0.0.1:`port`. */
export function upgradeRequest(port: number): Uint8Array {
  return enc.encode(
    `GET /ws HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\nUpgrade: websocket\r\n` +
      `Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n` +
      `Sec-WebSocket-Version: 13\r\n\r\n`,
  );
}

/** Opens a raw WebSocket (the 101 read, byte by byte, so nothing after it is taken). */
export async function rawWs(port: number): Promise<Deno.TcpConn> {
  const conn = await Deno.connect({ hostname: "127.0.0.1", port });
  await conn.write(upgradeRequest(port));
  const b = new Uint8Array(1);
  let head = "";
  await deadline(
    (async () => {
      while (!head.endsWith("\r\n\r\n")) {
        if (await conn.read(b) === null) throw new Error("closed during the handshake");
        head += String.fromCharCode(b[0] as number);
      }
    })(),
    "the WebSocket handshake",
  );
  assertStringIncludes(head, "HTTP/1.1 101");
  return conn;
}

/**
 * A masked client frame (mask 0: the payload goes as it is), of any length.
 *
 * @param fin Whether it ends its message.
 * @param opcode 0 continuation, 1 text, 2 binary, 8 close, 9 ping, 10 pong.
 * @param payload Its payload: bytes, or a string sent as UTF-8.
 */
export function clientFrame(
  fin: boolean,
  opcode: number,
  payload: Uint8Array | string = new Uint8Array(0),
): Uint8Array {
  const p = typeof payload === "string" ? enc.encode(payload) : payload;
  const n = p.length;
  const head = n < 126 ? 2 : n < 65536 ? 4 : 10;
  const f = new Uint8Array(head + 4 + n);
  f[0] = (fin ? 0x80 : 0) | opcode;
  if (n < 126) f[1] = 0x80 | n;
  else if (n < 65536) {
    f[1] = 0x80 | 126;
    new DataView(f.buffer).setUint16(2, n);
  } else {
    f[1] = 0x80 | 127;
    new DataView(f.buffer).setBigUint64(2, BigInt(n));
  }
  f.set(p, head + 4);
  return f;
}

/** Writes all of `bytes` (a socket's write may take only part of them). */
export async function writeAll(conn: Deno.Conn, bytes: Uint8Array): Promise<void> {
  for (let at = 0; at < bytes.length;) at += await conn.write(bytes.subarray(at));
}
