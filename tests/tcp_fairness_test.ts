/**
 * One connection that pipelines requests without pause must not hold the event loop, nor so
 * another connection's requests, until it pauses (issue 11). A read of a socket with bytes
 * waiting completes at once, so without a yield a flooder's read loop ran from microtask to
 * microtask: here 74,000 of its puts were handled in one turn of the event loop, and a
 * bystander's ping was answered after the whole flood. The TCP door now waits for the next turn
 * after each full read. The flooder runs in its own process and writes far faster than the door
 * handles puts, so its socket always has bytes waiting. No timing is asserted: the puts handled
 * between two turns, and the order of the bystander's answer and the flood's end.
 *
 * @module
 */

import { assert, assertEquals } from "@std/assert";
import { setImmediate } from "node:timers";
import { MessageStream } from "../mod.ts";
import { Metrics } from "../metrics.ts";
import { TcpDoor } from "../tcp.ts";
import { connectRaw } from "./_raw_client.ts";
import { deadline, poll } from "./_wait.ts";

/** Puts the flooder pipelines, in one write: many times what the door handles in a turn. */
const FLOOD = 300_000;
/** The flooder's put: every line the same length. */
const LINE = '{"action":"put","stream":"flood","message":1}\n';
/** The door's largest read (tcp.ts READ_MAX). */
const READ_MAX = 64 * 1024;

/** Connects, writes every put and a final ping at once, reads the replies, says "done". */
const FLOODER = `
const [port, n] = Deno.args.map(Number);
const conn = await Deno.connect({ hostname: "127.0.0.1", port });
const bytes = new TextEncoder().encode(${
  JSON.stringify(LINE)
}.repeat(n) + '{"action":"ping","id":"end"}\\n');
const reading = (async () => {
  const dec = new TextDecoder();
  let text = "";
  for await (const chunk of conn.readable) {
    text += dec.decode(chunk, { stream: true });
    if (text.includes('"end"')) return text;
    text = text.slice(-64);
  }
  return text;
})();
let off = 0;
while (off < bytes.length) off += await conn.write(bytes.subarray(off));
const tail = await reading;
console.log(tail.includes('"pong"') ? "done" : "no pong: " + tail);
`;

Deno.test("tcp: a pipelining flood does not hold the event loop nor another connection", async () => {
  const hub = new MessageStream({ historyMessages: 16 });
  const door = new TcpDoor(hub, { hostname: "127.0.0.1", port: 0, metrics: new Metrics() });
  await using bystander = await connectRaw(door.addr.port);
  await bystander.send({ action: "ping", id: "before" });
  assertEquals(await bystander.next(), { action: "pong", id: "before" });

  const flooder = new Deno.Command(Deno.execPath(), {
    args: ["eval", FLOODER, String(door.addr.port), String(FLOOD)],
    stdout: "piped",
    stderr: "inherit",
    env: { NO_COLOR: "1" },
  }).spawn();
  const puts = () => hub.info("flood")?.seq ?? 0;
  try {
    // Count the flood's puts handled between two turns of the event loop (check phases).
    let last = 0;
    let most = 0;
    let turns = 0;
    let counting = true;
    const turn = () => {
      const now = puts();
      most = Math.max(most, now - last);
      last = now;
      turns++;
      if (counting) setImmediate(turn);
    };
    await poll(() => puts() >= 1000, "the flood's first puts handled");
    last = puts();
    setImmediate(turn);
    await bystander.send({ action: "ping", id: "during" });
    assertEquals(await bystander.next(), { action: "pong", id: "during" });
    const handled = puts();
    await poll(() => puts() >= FLOOD / 2, "half the flood handled");
    counting = false;
    assert(handled < FLOOD, `the bystander was answered only after the ${FLOOD} puts of the flood`);
    // A turn handles at most what two full reads hold (the one it resumes, the one it reads).
    const bound = Math.ceil((2 * READ_MAX) / LINE.length);
    assert(turns > 1, "no turn of the event loop during the flood");
    assert(most <= bound, `${most} puts handled in one turn of the event loop (at most ${bound})`);
    const out = await deadline(flooder.output(), "the flooder's end");
    assertEquals(new TextDecoder().decode(out.stdout).trim(), "done");
    assertEquals(puts(), FLOOD);
  } finally {
    try {
      flooder.kill();
    } catch {
      // already ended
    }
    await flooder.status;
    await door.shutdown();
    await hub.close();
  }
});
