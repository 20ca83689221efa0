/**
 * {@linkcode follow}: one call that follows several named streams, or every stream a pattern
 * matches, on a hub or a remote stream, and hands back one {@linkcode Inbox} that stops when an
 * `AbortSignal` fires.
 *
 * @example Follow every job until told to stop
 * ```ts
 * import { follow, MessageStream } from "@x/msgstream";
 * import { assertEquals } from "@std/assert";
 *
 * const hub = new MessageStream();
 * const stop = new AbortController();
 * const inbox = await follow(hub, { pattern: "jobs.*", signal: stop.signal });
 * await hub.put("jobs.1", "started");
 * stop.abort();
 * const seen: string[] = [];
 * for await (const ev of inbox) seen.push(`${ev.stream} ${ev.kind}`);
 * assertEquals(seen, ["jobs.1 header", "jobs.1 put"]);
 * ```
 *
 * @module
 */

import { Inbox, type InboxOptions } from "./inbox.ts";
import type { Listener, Position, Streamer } from "./types.ts";

/** What {@linkcode follow} follows, and until when. */
export interface FollowOptions extends InboxOptions {
  /** Streams to follow by name (each: its header first, then every later put). */
  streams?: readonly string[];
  /** A pattern: every stream it matches, now and later (see `pattern.ts`). */
  pattern?: string;
  /** Resume positions, by stream name (for named streams and for the pattern's). */
  since?: Readonly<Record<string, Position>>;
  /**
   * Stops following when it fires: the hub lets go of the inbox and the inbox ends after the
   * events it holds.
   */
  signal?: AbortSignal;
}

/**
 * Follows several named streams, or a pattern, or both, with one {@linkcode Inbox}.
 *
 * @typeParam H The type of the streams' headers.
 * @typeParam M The type of the streams' put messages.
 * @param source A hub (`MessageStream`) or a `RemoteStream`.
 * @param options What to follow, the inbox's bounds and the signal that stops it.
 * @returns The inbox, joined: every named stream has given its catch-up, and so has every
 * stream the pattern matched.
 * @throws {TypeError} When neither `streams` nor `pattern` is given, or the source refuses a
 * name or the pattern.
 *
 * @example Two named streams
 * ```ts
 * import { follow, MessageStream } from "@x/msgstream";
 * import { assertEquals } from "@std/assert";
 *
 * const hub = new MessageStream();
 * const stop = new AbortController();
 * const inbox = await follow(hub, { streams: ["a", "b"], signal: stop.signal });
 * await hub.put("a", 1);
 * await hub.put("b", 2);
 * stop.abort();
 * assertEquals((await Array.fromAsync(inbox)).map((ev) => ev.message), [1, 2]);
 * ```
 */
export async function follow<H = unknown, M = unknown>(
  source: Streamer,
  options: FollowOptions,
): Promise<Inbox<H, M>> {
  const streams = options.streams ?? [];
  if (streams.length === 0 && options.pattern === undefined) {
    throw new TypeError('Cannot follow: give "streams" or "pattern"');
  }
  const inbox = new Inbox<H, M>(options);
  const queue = inbox as Listener<H, M>;
  const stop = () => inbox.close();
  if (options.signal?.aborted) {
    stop();
    return inbox;
  }
  try {
    for (const stream of streams) {
      const at = options.since?.[stream];
      await source.listen(stream, queue, at ? { since: at } : undefined);
    }
    if (options.pattern !== undefined) {
      await source.listen(
        { pattern: options.pattern },
        queue,
        options.since ? { since: options.since } : undefined,
      );
    }
  } catch (e) {
    source.endqueue(queue as Listener);
    throw e;
  }
  if (options.signal?.aborted) stop();
  else options.signal?.addEventListener("abort", stop, { once: true });
  return inbox;
}
