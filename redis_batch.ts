/**
 * The Redis engine's write batching (not an entry point): the queue of puts, header changes and
 * deletes waiting for a script call, and the answering of each write once its call returned.
 * Used by `redis.ts` only.
 *
 * @module
 */

import { EngineUnavailableError } from "./engine.ts";
import { type Op, unavailable } from "./redis_scripts.ts";

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
   * @returns Its result, once its batch returned (and reached this node).
   */
  enqueue(stream: string, op: Op["op"], text: string): Promise<[number, string]> {
    if (this.#queue.length > 0 && this.#queuedChars + text.length > this.#o.maxQueued) {
      return Promise.reject(
        new EngineUnavailableError(
          `Cannot reach Redis fast enough: ${this.#queuedChars} characters of writes wait on ` +
            `this node (maxQueuedChars ${this.#o.maxQueued}); retry later`,
        ),
      );
    }
    const { promise, resolve, reject } = Promise.withResolvers<[number, string]>();
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
        o.resolve([Number(reply[first + 2 * i]), String(reply[first + 2 * i + 1])]);
      }
    };
    const reached = arrivals.get(stream);
    if (reached) reached.then(answer);
    else answer();
  }
}
