/**
 * The TCP door's outbound bound (`maxOutboundBytes`) with many small frames: a listener that
 * never reads is sent puts whose frames are each about a three-thousandth of the bound. What waits
 * for it must add up: it is cut with `slow_consumer` once the bytes waiting pass the bound
 * (after the kernel's socket buffers fill), while a bystander on the same stream gets every
 * put, in order, before and after the cut.
 *
 * @module
 */

import { assert, assertEquals } from "@std/assert";
import { serve } from "../server.ts";
import { listenerCount } from "./_hub.ts";
import { connectRaw, type Frame } from "./_raw_client.ts";
import { deadline } from "./_wait.ts";

const LIMIT = 256 * 1024;
/**
 * Puts per write of the publisher. The server fans out what one read brings in one synchronous
 * run, so one batch's frames (~80 KiB) must fit the bound, or the bystander too would be cut.
 */
const BATCH = 1_000;
/**
 * Most frame bytes sent to the stalled listener before the test gives up on the cut: far more
 * than its socket's kernel buffers hold (here at most a few MiB) plus the bound.
 */
const GIVE_UP_BYTES = 48 * 1024 * 1024;
const encoder = new TextEncoder();

/**
 * Connects, listens to `stream` and reads only up to the listen's `ok`: after that the
 * connection is never read until the test says so.
 */
async function stalledListener(port: number, stream: string): Promise<Deno.TcpConn> {
  const conn = await Deno.connect({ hostname: "127.0.0.1", port });
  conn.setNoDelay(true);
  const request = encoder.encode(JSON.stringify({ action: "listen", stream, id: "stall" }) + "\n");
  let off = 0;
  while (off < request.byteLength) off += await conn.write(request.subarray(off));
  const one = new Uint8Array(1);
  let line = "";
  await deadline(
    (async () => {
      while (!line.endsWith("\n")) {
        if (await conn.read(one) === null) throw new Error("Connection ended before its ok");
        line += String.fromCharCode(one[0] as number);
      }
    })(),
    () => `the stalled listener's ok (read so far: ${JSON.stringify(line)})`,
  );
  assertEquals(JSON.parse(line).action, "ok", line);
  return conn;
}

/**
 * Reads a connection to its end; returns its complete lines, and what followed the last
 * newline (a frame cut short by the server's cut mid-write).
 */
async function drain(conn: Deno.TcpConn): Promise<{ lines: string[]; partial: string }> {
  const decoder = new TextDecoder();
  const buf = new Uint8Array(256 * 1024);
  let text = "";
  try {
    for (;;) {
      const n = await conn.read(buf);
      if (n === null) break;
      text += decoder.decode(buf.subarray(0, n), { stream: true });
    }
  } catch {
    // reset by the server: the end too
  }
  const lines = text.split("\n");
  const partial = lines.pop() as string;
  return { lines, partial };
}

Deno.test("A listener that never reads is cut with slow_consumer by many frames far below maxOutboundBytes; a bystander gets every put", async () => {
  await using server = serve({ port: 0, maxOutboundBytes: LIMIT, logLevel: "silent" });
  const port = server.addr.port;
  const stalled = await stalledListener(port, "flood");
  await using bystander = await connectRaw(port);
  await bystander.send({ action: "listen", stream: "flood", id: "by" });
  assertEquals((await bystander.next()).action, "ok");
  await using publisher = await connectRaw(port);

  const put = (n: number) => `{"action":"put","stream":"flood","message":${n}}\n`;
  let frameBytes = 0; // the last put frame's size, newline included
  let sent = 0;
  let seqs: number[] = [];
  /** Puts a batch; returns when the bystander has all of it (so only the stalled one lags). */
  const batch = async () => {
    let text = "";
    for (let i = 0; i < BATCH; i++) text += put(++sent);
    await publisher.write(text);
    const frames: Frame[] = await bystander.until((f) => f.action === "put" && f.seq === sent);
    seqs = seqs.concat(frames.map((f) => f.seq as number));
    frameBytes = encoder.encode(bystander.lines.at(-1)).byteLength + 1;
  };

  while (server.metrics.slowConsumers === 0) {
    assert(
      sent * frameBytes < GIVE_UP_BYTES,
      `The listener that reads nothing was never cut: ${sent} puts (about ${
        (sent * frameBytes / 2 ** 20).toFixed(1)
      } MiB of frames of ~${frameBytes} bytes) with maxOutboundBytes ${LIMIT}`,
    );
    await batch();
  }
  const cutAt = sent;
  await batch(); // after the cut the bystander is served as before
  await batch();

  assertEquals(seqs, Array.from({ length: sent }, (_, i) => i + 1), "the bystander's puts");
  assertEquals(server.metrics.slowConsumers, 1);
  assertEquals(server.metrics.errors.slow_consumer, 1);
  assertEquals(listenerCount(server.hub, "flood"), 1, "only the bystander still listens");

  // The stalled listener now reads what reached it: puts in order from seq 1, then the end
  // (the server cuts a connection whose socket takes nothing, so the last frame may be cut
  // short), or the slow_consumer error when the server could still write it.
  const { lines, partial } = await deadline(
    drain(stalled),
    "the stalled listener's connection to end",
  );
  stalled.close();
  const frames = lines.map((l) => JSON.parse(l) as Frame);
  const last = frames.at(-1);
  if (last?.action === "error") {
    assertEquals(last.code, "slow_consumer", JSON.stringify(last));
    frames.pop();
  }
  assertEquals(frames.map((f) => f.seq), Array.from({ length: frames.length }, (_, i) => i + 1));
  assert(frames.length > 0 && frames.length < cutAt, `the stalled listener got ${frames.length}`);
  // deno-lint-ignore no-console
  console.log(
    `outbound bound: a listener reading nothing was cut after ${cutAt} puts of ~${frameBytes} ` +
      `bytes (bound ${LIMIT}); it had received ${frames.length}` +
      `${last?.action === "error" ? " and the slow_consumer error" : ""}` +
      `${partial ? ` and ${partial.length} bytes of a frame cut short` : ""}`,
  );
});
