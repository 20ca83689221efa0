/**
 * A bystander for bad-input tests: while one client misbehaves, another connection follows a
 * run of puts from a third; it must get every put, in order, and the server must still serve
 * new connections afterwards.
 *
 * @example
 * ```ts
 * import { assertEquals } from "@std/assert";
 * import { withBystander } from "./_bystander.ts";
 *
 * await withBystander({}, async (_server, bad) => {
 *   await bad.send({ action: "ping", id: 1 });
 *   assertEquals(await bad.next(), { action: "pong", id: 1 });
 * });
 * ```
 *
 * @module
 */

import { assertEquals } from "@std/assert";
import { type MessageServer, serve, type ServeOptions } from "../server.ts";
import { RemoteStream } from "../client.ts";
import { connectRaw, type RawClient } from "./_raw_client.ts";
import { Recorder } from "./_recorder.ts";
import { deadline } from "./_wait.ts";

/** How many puts the bystander follows: half while the bad client acts, half after. */
export const RUN = 300;

/**
 * Runs `misbehave` against a fresh server (`serve({port: 0, logLevel: "silent", ...options})`)
 * while a bystander follows {@linkcode RUN} puts: half of them are in flight while the bad client
 * acts, the rest are put after. Then checks the bystander got all of them in order, with seqs
 * 1 to RUN, and that a new connection is served.
 *
 * @param options Server options (the port is always 0).
 * @param misbehave What the bad client does; it gets the server and a raw connection to it.
 * @returns When every check has passed.
 * @throws {AssertionError} When the bystander missed a put or the server stopped serving.
 */
export async function withBystander(
  options: ServeOptions,
  misbehave: (server: MessageServer, bad: RawClient) => Promise<void>,
): Promise<void> {
  await using server = serve({ logLevel: "silent", ...options, port: 0 });
  await using listener = await RemoteStream.connect({ port: server.addr.port });
  await using publisher = await RemoteStream.connect({ port: server.addr.port });
  const rec = new Recorder("bystander");
  await listener.listen("bystander", rec);
  const puts: Promise<unknown>[] = [];
  for (let i = 0; i < RUN / 2; i++) puts.push(publisher.put("bystander", i));
  const bad = await connectRaw(server.addr.port);
  try {
    await misbehave(server, bad);
  } catch (e) {
    await Promise.allSettled(puts); // report the failure, not the puts a closing client drops
    throw e;
  } finally {
    await bad.close();
  }
  for (let i = RUN / 2; i < RUN; i++) puts.push(publisher.put("bystander", i));
  await deadline(Promise.all(puts), `the bystander's ${RUN} puts to be answered`);
  await rec.waitFor(RUN);
  assertEquals(rec.events.map((e) => e.message), [...Array(RUN).keys()]);
  assertEquals(rec.events.map((e) => e.seq), Array.from({ length: RUN }, (_, i) => i + 1));
  // The server still serves new connections.
  await using fresh = await connectRaw(server.addr.port);
  await fresh.send({ action: "put", stream: "after", message: 1, id: "after" });
  const ok = await fresh.next();
  const epoch = (await server.hub.stat("after"))?.epoch;
  assertEquals(ok, { action: "ok", id: "after", stream: "after", seq: 1, epoch });
}
