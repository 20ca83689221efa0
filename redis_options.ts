/**
 * The Redis engine's options (re-exported by `redis.ts`, where they are documented in use).
 *
 * @module
 */

/** Options for {@linkcode RedisEngine}. */
export interface RedisEngineOptions {
  /**
   * The Redis server, as `redis://[user:password@]host:port[/db]` (or `rediss://` for TLS).
   *
   * @default {"redis://127.0.0.1:6379"}
   */
  url?: string;
  /**
   * Prefix of every key and channel, so that several services can share one Redis.
   *
   * @default {"msgstream:"}
   */
  prefix?: string;
  /**
   * Most events (puts and header changes) kept per stream in Redis for resuming listeners.
   *
   * @default {1000}
   */
  historyMessages?: number;
  /**
   * Whether `url` is a node of a Redis Cluster (any node: the others are found from it). Each
   * stream lives in its hash tag's slot; a batch's writes run as one script call per master
   * (Redis 7; per stream on older servers).
   *
   * @default {false}
   */
  cluster?: boolean;
  /**
   * In a cluster whose servers have sharded pub/sub (Redis 7 or later, read from the first
   * master answering `INFO server`): publish each stream's events with `SPUBLISH`, so they stay
   * on the stream's master, and follow them on one subscriber connection per master. `false`,
   * or an older server: classic `PUBLISH`, which the cluster bus forwards to every node.
   *
   * @default {true}
   */
  shardedPubSub?: boolean;
  /**
   * Most writes (puts, header changes, deletes) sent to Redis in one script call. The writes
   * of one tick, and those that arrive while `maxBatchesInFlight` calls are out, go together,
   * so a busy node makes one call per batch, not per put, and publishes one message per stream
   * per batch.
   *
   * @default {512}
   */
  maxBatch?: number;
  /**
   * Most batches sent to Redis and not answered yet; writes wait in this node's queue beyond
   * that (they are answered only once their script returned, so none is acknowledged early).
   *
   * @default {4}
   */
  maxBatchesInFlight?: number;
  /**
   * Most characters of messages waiting on this node for a batch (beyond the batches in
   * flight). A write that would pass it is refused at once with
   * `EngineUnavailableError` (`engine_unavailable`: retry later), so a Redis that
   * cannot keep up never makes a node hold writes without bound. A write always goes through
   * when nothing waits.
   *
   * @default {67108864}
   */
  maxQueuedChars?: number;
  /**
   * The share of Redis' `maxmemory`, in percent, past which this node refuses what grows Redis
   * for good: a header set, or a put that would make a new stream, get `limit_exceeded`
   * (`redis_memory`); puts to existing streams go on. Redis' `INFO memory` is read at most once
   * a second while writes come. 0 turns the guard off; a Redis without `maxmemory` is never
   * refused (see `redis_guard.ts`).
   *
   * @default {90}
   */
  maxMemoryPercent?: number;
  /**
   * In a cluster, milliseconds between two reads of the slot map (`CLUSTER SLOTS`), besides the
   * read after a `MOVED` answer. With sharded pub/sub, each read checks that every followed
   * stream is subscribed on the master that serves its slot now: a master demoted by a
   * failover keeps its subscriptions and sends nothing (Redis 7.0), so a node that only listens
   * learns of the failover from this read. 0: only after `MOVED`.
   *
   * @default {2000}
   */
  slotsRefreshInterval?: number;
  /**
   * Milliseconds to wait for Redis to answer a command (a batch's script call, a join's
   * snapshot) before it is answered `EngineUnavailableError` (`engine_unavailable`: it may or may
   * not have been applied, as when a connection drops mid-call). Without it, a Redis that stops
   * answering without closing the connection (a network partition, a hung server) would hold
   * every write for as long as that lasts. A connection that owes an answer and reads nothing
   * for that long is treated as lost, as if it had dropped: it is closed and made again, and
   * every stream followed here resyncs (catch-up or `reset`). The subscriber connections are
   * sent a `PING` every such interval, so a subscriber that went quiet while writes still work is
   * found too (within twice this bound). A script that runs longer than this on the server counts
   * as silence. 0: wait for ever.
   *
   * @default {10000}
   */
  commandTimeout?: number;
  /**
   * Milliseconds to wait for a connection to Redis.
   *
   * @default {10000}
   */
  connectTimeout?: number;
  /**
   * Called once when the link to Redis goes down (a connection closed, or none made yet) and
   * once when it is back (both connections ready), with what happened, for logs and metrics.
   */
  onStatus?: (up: boolean, detail: string) => void;
}
