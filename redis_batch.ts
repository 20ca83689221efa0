/**
 * The Redis engine's write batching (not an entry point): the queue of puts, header changes and
 * deletes waiting for a script call, and the answering of each write once its call returned.
 * Used by `redis.ts` only.
 *
 * @module
 */

import type { Cluster } from "ioredis";
import { EngineUnavailableError } from "./engine.ts";
import { keySlot } from "./redis_shard.ts";
import type { Position } from "./types.ts";
import { type Client, type Op, streamChannel, streamKeys, unavailable } from "./redis_scripts.ts";

/** The bounds of a {@linkcode WriteQueue} and how it sends a batch. */
export interface WriteQueueOptions {
  /** Most writes per batch. */
  maxBatch: number;
  /** Most batches sent and not answered yet. */
  maxInFlight: number;
  /** Most characters of messages waiting (beyond the batches in flight). */
  maxQueued: number;
  /** Sends one batch; never rejects (each write is answered). */
  send: (ops: Op[]) => Promise<void>;
}

/** Writes waiting for their batch, in arrival order (see `maxBatch` in `RedisEngineOptions`). */
export class WriteQueue {
  readonly #o: WriteQueueOptions;
  /** Writes waiting for the next batch, in arrival order. */
  #queue: Op[] = [];
  /** A flush is scheduled. */
  #flushing = false;
  /** Batches sent and not answered yet. */
  #inFlight = 0;
  /** Characters of the messages in #queue. */
  #queuedChars = 0;

  /** @param options The bounds, and how to send. */
  constructor(options: WriteQueueOptions) {
    this.#o = options;
  }

  /**
   * Queues a write for the next batch.
   *
   * @param stream The stream's name.
   * @param op The operation.
   * @param text The encoded message (or header).
   * @returns Its position (a put's), once its batch returned (and reached this node).
   */
  enqueue(stream: string, op: Op["op"], text: string): Promise<Position> {
    if (this.#queue.length > 0 && this.#queuedChars + text.length > this.#o.maxQueued) {
      return Promise.reject(
        new EngineUnavailableError(
          `Cannot reach Redis fast enough: ${this.#queuedChars} characters of writes wait on ` +
            `this node (maxQueuedChars ${this.#o.maxQueued}); retry later`,
        ),
      );
    }
    const { promise, resolve, reject } = Promise.withResolvers<Position>();
    this.#queue.push({ stream, op, text, resolve, reject });
    this.#queuedChars += text.length;
    if (!this.#flushing && this.#inFlight < this.#o.maxInFlight) {
      this.#flushing = true;
      queueMicrotask(this.#flush);
    }
    return promise;
  }

  /**
   * Sends the queued writes, at most `maxBatch` per script call and `maxBatchesInFlight` calls
   * out at once: writes that arrive meanwhile go together in the next call. The calls go out
   * on one connection, in order. Each write is answered after its script returned (and its
   * event reached this node's listeners), never before.
   */
  readonly #flush = (): void => {
    this.#flushing = false;
    while (this.#queue.length > 0 && this.#inFlight < this.#o.maxInFlight) {
      const ops = this.#queue.length <= this.#o.maxBatch
        ? this.#queue
        : this.#queue.slice(0, this.#o.maxBatch);
      this.#queue = ops === this.#queue ? [] : this.#queue.slice(this.#o.maxBatch);
      for (const o of ops) this.#queuedChars -= o.text.length;
      this.#inFlight++;
      this.#o.send(ops).finally(() => {
        this.#inFlight--;
        if (this.#queue.length > 0 && !this.#flushing) {
          this.#flushing = true;
          queueMicrotask(this.#flush);
        }
      });
    }
  };
}

/**
 * Answers the writes of one script call once it returned (and their events reached this node:
 * `arrivals`); `arrived` releases this node's waiter of a stream whose writes published nothing
 * or failed.
 */
export async function settle(
  streams: string[],
  groups: Map<string, Op[]>,
  call: Promise<(number | string)[]>,
  arrivals: Map<string, Promise<void>>,
  arrived: (stream: string) => void,
): Promise<void> {
  let reply: (number | string)[];
  try {
    reply = await call;
  } catch (e) {
    const error = unavailable(e);
    for (const stream of streams) {
      arrived(stream);
      for (const o of groups.get(stream) as Op[]) o.reject(error);
    }
    return;
  }
  let r = 0;
  for (const stream of streams) {
    const group = groups.get(stream) as Op[];
    const first = r;
    let applied = false;
    for (const _ of group) {
      if (reply[r] !== 0) applied = true;
      r += 2;
    }
    // Nothing applied (clearing no header, deleting nothing): nothing was published.
    if (!applied) arrived(stream);
    const answer = () => {
      for (let i = 0; i < group.length; i++) {
        const o = group[i] as Op;
        o.resolve({ seq: Number(reply[first + 2 * i]), epoch: String(reply[first + 2 * i + 1]) });
      }
    };
    const reached = arrivals.get(stream);
    if (reached) reached.then(answer);
    else answer();
  }
}

/** How a batch's script calls are made (see {@linkcode scriptCalls}). */
export interface CallOptions {
  /** One Redis: one call; a Redis 7 cluster: one per master; an older cluster: one per stream. */
  mode: "single" | "multi" | "stream";
  /** Events go out with SPUBLISH (a cluster with sharded pub/sub). */
  sharded: boolean;
  prefix: string;
  historyMessages: number;
  /** The batch's tag (in its published events, for this node's waiters). */
  tag: string;
  createdChannel: string;
  /** A fresh nonce per call (a cluster's epochs). */
  nonce: () => string;
}

/**
 * Sends a batch's writes (grouped by stream, each stream's in order) as script calls: the
 * streams of each call and its reply, in that order.
 */
export function scriptCalls(
  cmd: Client,
  groups: Map<string, Op[]>,
  o: CallOptions,
): [string[], Promise<(number | string)[]>][] {
  const group = (stream: string, args: (string | number)[]) => {
    const g = groups.get(stream) as Op[];
    args.push(streamChannel(o.prefix, stream), g.length);
    for (const op of g) args.push(op.op, op.text, op.text.length);
  };
  const calls: [string[], Promise<(number | string)[]>][] = [];
  if (o.mode === "single") {
    const keys: string[] = [`${o.prefix}gen`, `${o.prefix}epochs`];
    const args: (string | number)[] = [o.historyMessages, o.tag];
    for (const stream of groups.keys()) {
      keys.push(...streamKeys(o.prefix, stream).slice(0, 2));
      group(stream, args);
    }
    calls.push([[...groups.keys()], cmd.msgstreamBatch(keys.length, ...keys, ...args)]);
  } else if (o.mode === "multi") {
    // Redis 7: one call per master, its streams' keys in several slots (see BATCH_MULTI).
    const slots = (cmd as unknown as Cluster).slots;
    const byMaster = new Map<string, string[]>();
    for (const stream of groups.keys()) {
      const slot = keySlot(streamChannel(o.prefix, stream));
      const master = (slots[slot] as string[] | undefined)?.[0] ?? `slot ${slot}`;
      const list = byMaster.get(master);
      if (list) list.push(stream);
      else byMaster.set(master, [stream]);
    }
    for (const streams of byMaster.values()) {
      const args: (string | number)[] = [o.historyMessages, o.tag, o.createdChannel, o.nonce()];
      for (const stream of streams) {
        const [meta, hist] = streamKeys(o.prefix, stream) as [string, string];
        args.push(meta, hist);
        group(stream, args);
      }
      const keys = streamKeys(o.prefix, streams[0] as string).slice(0, 2);
      const call = o.sharded
        ? cmd.msgstreamBatchMS(...keys, ...args)
        : cmd.msgstreamBatchM(...keys, ...args);
      // A stream's slot moved since (nothing applied): the next batches group by the new map.
      call.catch((e) => {
        if (/MSGSTREAMSLOT/.test(String(e?.message))) {
          (cmd as unknown as Cluster).refreshSlotsCache();
        }
      });
      calls.push([streams, call]);
    }
  } else {
    for (const stream of groups.keys()) {
      const args: (string | number)[] = [o.historyMessages, o.tag, o.createdChannel, o.nonce()];
      group(stream, args);
      const keys = streamKeys(o.prefix, stream).slice(0, 2);
      calls.push([
        [stream],
        o.sharded ? cmd.msgstreamBatchS(...keys, ...args) : cmd.msgstreamBatch(...keys, ...args),
      ]);
    }
  }
  return calls;
}
