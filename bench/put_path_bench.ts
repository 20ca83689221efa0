/**
 * The put path of the TCP door without sockets: a Session handles request lines on a memory hub
 * whose listeners are Sessions writing to a transport that drops the bytes. Many-streams shape
 * (1,000 streams, one listener each, plain put lines of a 128 B message, round-robin) and fanout
 * shape (one stream, 100 listeners). History is filled to its working size first (the global
 * bound reached), as in a long run. Run: `deno bench -A bench/put_path_bench.ts`.
 *
 * @module
 */
import { MessageStream } from "../mod.ts";
import { Session, type Transport } from "../protocol.ts";
import { syncOf } from "../core.ts";

const drop: Transport = { send() {}, close() {} };
const PAYLOAD = "S0000000001T0000000000000000" + "x".repeat(100);

function setup(streams: number, perStream: number) {
  const hub = new MessageStream();
  const sync = syncOf(hub)!;
  const names = Array.from({ length: streams }, (_, i) => `s${i}`);
  for (const name of names) {
    for (let j = 0; j < perStream; j++) sync.listenNow(name, new Session(hub, drop));
  }
  const publisher = new Session(hub, drop);
  const lines = names.map((name) => `{"action":"put","stream":"${name}","message":"${PAYLOAD}"}`);
  return { publisher, lines };
}

const many = setup(1000, 1);
// 64 MiB of history at about 200 B a frame: every put now trims the oldest entry of another stream.
for (let k = 0; k < 400_000; k++) many.publisher.handle(many.lines[k % 1000] as string);
let i = 0;
Deno.bench("plain put line, 1,000 streams x 1 listener", { group: "put" }, () => {
  many.publisher.handle(many.lines[i++ % 1000] as string);
});

const fan = setup(1, 100);
Deno.bench("plain put line, 1 stream x 100 listeners", { group: "fan" }, () => {
  fan.publisher.handle(fan.lines[0] as string);
});
