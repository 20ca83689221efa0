/**
 * A hub's state as tests check it, on any engine: a stream's seq, its listener count, and a
 * flood of puts fanned out before anything is written to a socket.
 *
 * @module
 */

import { syncOf } from "../core.ts";
import type { MessageStream } from "../mod.ts";
import { Recorder } from "./_recorder.ts";

/**
 * A stream's seq as any engine shows it, for checks that something was (or was not) put: the
 * hub's `stat()`, which reads it without listening and without creating the stream.
 *
 * @param hub The hub (e.g. `server.hub`).
 * @param stream The stream's name.
 * @returns Its seq, or `undefined` when there is no such stream.
 *
 * @example
 * ```ts
 * import { MessageStream } from "../mod.ts";
 * import { seqOf } from "./_hub.ts";
 * import { assertEquals } from "@std/assert";
 *
 * const hub = new MessageStream();
 * assertEquals(await seqOf(hub, "job"), undefined);
 * await hub.put("job", 1);
 * assertEquals(await seqOf(hub, "job"), 1);
 * ```
 */
export async function seqOf(hub: MessageStream, stream: string): Promise<number | undefined> {
  return (await hub.stat(stream))?.seq;
}

/**
 * How many listeners this hub has on a stream. On the memory engine this is exactly
 * `hub.info(stream)?.listeners`; with an engine a hub drops its copy of a stream when its last
 * listener leaves, so no copy counts as 0.
 *
 * @param hub The hub.
 * @param stream The stream's name.
 * @returns The count (`undefined` on the memory engine when it holds no such stream).
 *
 * @example
 * ```ts
 * import { MessageStream } from "../mod.ts";
 * import { listenerCount } from "./_hub.ts";
 * import { assertEquals } from "@std/assert";
 *
 * const hub = new MessageStream();
 * await hub.listen("job", { put() {} });
 * assertEquals(listenerCount(hub, "job"), 1);
 * ```
 */
export function listenerCount(hub: MessageStream, stream: string): number | undefined {
  const n = hub.info(stream)?.listeners;
  return hub.engine ? n ?? 0 : n;
}

/**
 * Puts every message on a stream and returns once the hub has fanned all of them out to its
 * listeners (so they sit in the connections' outbound buffers). On the memory engine this is
 * `putNow` in one synchronous run: nothing has been written to any socket when it returns.
 * With an engine puts are asynchronous, so it waits until a listener of its own has every one.
 *
 * @param hub The hub.
 * @param stream The stream's name.
 * @param messages The messages, in order.
 * @returns When all of them have been fanned out.
 * @throws {TimeoutError} With an engine, when its own listener does not get the last one in time.
 *
 * @example
 * ```ts
 * import { MessageStream } from "../mod.ts";
 * import { putFlood } from "./_hub.ts";
 * import { Recorder } from "./_recorder.ts";
 * import { assertEquals } from "@std/assert";
 *
 * const hub = new MessageStream();
 * const rec = new Recorder();
 * await hub.listen("job", rec);
 * await putFlood(hub, "job", [1, 2, 3]);
 * assertEquals(rec.events.map((e) => e.message), [1, 2, 3]);
 * ```
 */
export async function putFlood(
  hub: MessageStream,
  stream: string,
  messages: unknown[],
): Promise<void> {
  const sync = syncOf(hub);
  if (sync) {
    for (const m of messages) sync.putNow(stream, m);
    return;
  }
  const own = new Recorder("putFlood");
  await hub.listen(stream, own);
  try {
    const last = (await Promise.all(messages.map((m) => hub.put(stream, m)))).at(-1)?.seq;
    if (last !== undefined) await own.waitForEvent((e) => e.kind === "put" && e.seq >= last);
  } finally {
    hub.hangup(stream, own);
  }
}
