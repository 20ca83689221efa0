/**
 * Scale-out on Redis: {@linkcode RedisEngine} keeps every stream's header, seq, epoch and
 * bounded history in Redis and carries events between msgstream nodes with Redis pub/sub, so
 * that many nodes behind a load balancer behave as one service.
 *
 * Every put, header change and delete runs as one Lua script that assigns the seq, appends
 * to the stream's history (a Redis stream capped with `MAXLEN`) and publishes the event, so
 * every node delivers a stream's events in one order with the same seq and epoch. A node
 * joins a listener by subscribing to the stream's channel first, then taking a snapshot in a
 * script that also publishes a marker on that channel: events before the marker are in the
 * snapshot, events after it follow it, so the join has no gap and no duplicate.
 *
 * The Redis client is `npm:ioredis`; it reads the environment when loaded, so a server using
 * Redis needs `--allow-env` besides `-N`.
 *
 * @example Two hubs sharing one Redis
 * ```ts ignore
 * import { MessageStream } from "@x/msgstream";
 * import { RedisEngine } from "@x/msgstream/redis";
 *
 * const a = new MessageStream({ engine: new RedisEngine({ url: "redis://127.0.0.1:6379" }) });
 * const b = new MessageStream({ engine: new RedisEngine({ url: "redis://127.0.0.1:6379" }) });
 * await b.listen("job", { put: (ev) => console.log(ev.kind, ev.seq, ev.message) });
 * await a.put("job", { done: 1 }); // b's listener prints: put 1 { done: 1 }
 * await a.close();
 * await b.close();
 * ```
 *
 * @module
 */

import type { Cluster, Redis } from "ioredis";
import { type Codec, JsonCodec } from "./codec.ts";
import {
  type Engine,
  type EngineSink,
  type EngineSnapshot,
  EngineUnavailableError,
  type JoinProbe,
  joinProbes,
} from "./engine.ts";
import { intOption } from "./options.ts";
import { RedisMemoryGuard } from "./redis_guard.ts";
import { scriptCalls, settle, WriteQueue } from "./redis_batch.ts";
import type { RedisEngineOptions } from "./redis_options.ts";
import { ShardPool } from "./redis_shard.ts";
import {
  type Client,
  defineScripts,
  eachEvent,
  type Follow,
  type Op,
  quit,
  redactUrl,
  snapshotOf,
  streamChannel,
  streamKeys,
  type Sync,
  unavailable,
} from "./redis_scripts.ts";
import type { Position } from "./types.ts";

export type { RedisEngineOptions } from "./redis_options.ts";

/** A backslash or a control character: a JSON string that takes the codec's decode. */
// deno-lint-ignore no-control-regex -- control characters are what it looks for
const ESCAPED = /[\\\x00-\x1f]/;

/** The message of a put whose listeners read it decoded from the frame (see `#batch`). */
const FROM_FRAME: Readonly<Record<string, never>> = Object.freeze({});

/**
 * The Redis engine: give it to a hub (`new MessageStream({ engine })`) or start a server with
 * `serve({ redis: url })` / `--redis URL`, and every node sharing the Redis (and prefix) serves
 * the same streams.
 *
 * Kept in Redis per stream: a hash `<prefix>{<stream>}:s` (epoch, seq, header) and a
 * history stream `<prefix>{<stream>}:h` capped at `historyMessages` entries; events travel on
 * the channel `<prefix>{<stream>}:c`. Both keys stay until the stream is deleted.
 *
 * When Redis cannot be reached, `put`, `header`, `delete` and joins fail with
 * {@linkcode EngineUnavailableError} (code `engine_unavailable` on the wire); nothing is
 * queued or retried behind the caller's back. When the subscription comes back, every stream
 * followed here is caught up from Redis history (or its listeners get a `reset` when the
 * history does not cover what they missed, e.g. after Redis lost its data).
 *
 * Redis restarted from an older snapshot, or a replica promoted while behind, would hand out
 * seqs again with other content. So epochs are minted within a generation that changes whenever
 * a node finds Redis is not the server instance (`run_id`) that set it; after that, positions
 * from before get a `reset` with reason `state_lost`, never a reused seq. The price: any Redis
 * restart or failover, even one that lost nothing, resets every stream's listeners once (a false
 * reset is preferred to a silent gap). Keys `<prefix>gen` and `<prefix>run` hold it.
 *
 * @example Serving with Redis
 * ```ts ignore
 * import { serve } from "@x/msgstream/server";
 *
 * await using server = serve({ port: 0, redis: "redis://127.0.0.1:6379", redisPrefix: "jobs:" });
 * ```
 */
export class RedisEngine implements Engine {
  readonly #url: string;
  readonly #prefix: string;
  readonly #historyMessages: number;
  readonly #connectTimeout: number;
  /** Connections closed for that silence so far (a failed call knows it was one of them). */
  #timeouts = 0;
  /** PINGs the subscriber connections every `commandTimeout` ms. */
  #pinger: ReturnType<typeof setInterval> | undefined;
  readonly #slotsRefresh: number;
  readonly #commandTimeout: number;
  readonly #cluster: boolean;
  readonly #wantSharded: boolean;
  /** Sharded pub/sub's subscribers, once the cluster was found to have it (see #detect). */
  #shards: ShardPool | undefined;
  /** A cluster of Redis 7: a batch makes one script call per master (see BATCH_MULTI). */
  #multi = false;
  /** Whether the cluster's pub/sub mode was decided (#detect). */
  #detected = false;
  /** Follows to subscribe again (sharded): retried until they are, then the hub resyncs. */
  #retryTimer: ReturnType<typeof setTimeout> | undefined;
  #retryDelay = 0;
  /** A sharded subscription was lost: the hub must resync once all are back. */
  #needLost = false;
  readonly #node: string = crypto.randomUUID().slice(0, 8);
  #counter = 0;
  /** Puts, header changes and deletes waiting for their batch (see `maxBatch`). */
  readonly #writes: WriteQueue;
  #sink: EngineSink | undefined;
  #codec: Codec | undefined;
  /** The codec is a JsonCodec: a put's JSON text, when the caller has it, goes as it is. */
  #json = false;
  #started: Promise<void> | undefined;
  #cmd: Client | undefined;
  #sub: Redis | undefined;
  #subUp = false;
  #cmdUp = false;
  /** The link was reported down (onStatus) and not yet back. */
  #down = false;
  readonly #onStatus: ((up: boolean, detail: string) => void) | undefined;
  #cmdWasUp = false;
  #subWasUp = false;
  /** Times the classic subscriber moved to another cluster node (see #moveSub). */
  #subMoves = 0;
  #closed = false;
  /** Connections of the command client so far (its "ready" events). */
  #connects = 0;
  /** The connection (by #connects) on which the generation was last verified. */
  #verifiedOn = 0;
  #verifying: Promise<void> | undefined;
  #probe: JoinProbe | undefined;
  readonly #follows = new Map<string, Follow>();
  readonly #channels = new Map<string, Follow>();
  /** Told of every stream created (pattern listens; see watchCreated). */
  #onCreated: ((stream: string, epoch: string) => void) | undefined;
  /** Refuses new streams and headers past a share of Redis' maxmemory. */
  readonly #guard: RedisMemoryGuard;

  /**
   * Creates the engine; it connects when a hub binds it.
   *
   * @param options Where Redis is, the key prefix and the history bound.
   * @throws {RangeError} When a bound is not a non-negative integer.
   */
  constructor(options?: RedisEngineOptions) {
    this.#url = options?.url ?? "redis://127.0.0.1:6379";
    this.#prefix = options?.prefix ?? "msgstream:";
    this.#historyMessages = intOption("historyMessages", options?.historyMessages, 1000, 0);
    this.#connectTimeout = intOption("connectTimeout", options?.connectTimeout, 10_000, 0);
    this.#slotsRefresh = intOption("slotsRefreshInterval", options?.slotsRefreshInterval, 2000, 0);
    this.#commandTimeout = intOption("commandTimeout", options?.commandTimeout, 10_000, 0);

    this.#cluster = options?.cluster ?? false;
    this.#wantSharded = options?.shardedPubSub ?? true;
    this.#writes = new WriteQueue({
      maxBatch: intOption("maxBatch", options?.maxBatch, 512, 1, 10_000),
      maxInFlight: intOption("maxBatchesInFlight", options?.maxBatchesInFlight, 4, 1, 1000),
      maxQueued: intOption("maxQueuedChars", options?.maxQueuedChars, 64 * 1024 * 1024, 0),
      send: (ops) => this.#send(ops),
    });
    this.#onStatus = options?.onStatus;
    this.#guard = new RedisMemoryGuard({
      percent: intOption("maxMemoryPercent", options?.maxMemoryPercent, 90, 0, 100),
      read: () => this.#memoryInfo(),
    });
  }

  /** `INFO memory` of the Redis (every master of a cluster), for the memory guard. */
  async #memoryInfo(): Promise<string[]> {
    const cmd = await this.#client();
    if (!this.#cluster) return [await cmd.info("memory")];
    const cluster = cmd as unknown as { nodes(role: "master"): Redis[] };
    return await Promise.all(cluster.nodes("master").map((node) => node.info("memory")));
  }

  /** Whether Redis holds no such stream (a put to it would make it). */
  async #isNew(stream: string): Promise<boolean> {
    const cmd = await this.#client();
    try {
      return await cmd.exists(streamKeys(this.#prefix, stream)[0] as string) === 0;
    } catch (e) {
      throw unavailable(e);
    }
  }

  /** Whether both connections to Redis are up (the command one and the subscriber). */
  get up(): boolean {
    return this.#cmdUp && this.#subUp;
  }

  /** Reports the link down, once until it is back. */
  #linkDown(detail: string): void {
    if (this.#closed || this.#down) return;
    this.#down = true;
    this.#onStatus?.(false, detail);
  }

  /** Reports the link back once both connections are up after it was reported down. */
  #linkUp(detail: string): void {
    if (this.#closed || !this.#down || !this.up) return;
    this.#down = false;
    this.#onStatus?.(true, detail);
  }

  /**
   * Binds the engine to its hub and starts connecting; called by the hub's constructor.
   *
   * @param sink Where events go.
   * @param codec The hub's codec.
   * @throws {TypeError} When the engine is bound twice.
   */
  bind(sink: EngineSink, codec: Codec): void {
    if (this.#sink) throw new TypeError("Cannot bind a RedisEngine to a second hub");
    this.#sink = sink;
    this.#codec = codec;
    this.#json = codec instanceof JsonCodec;
    this.#probe = joinProbes.get(this);
    this.#started = this.#start();
    this.#started.catch(() => {}); // reported by each request (#client)
  }

  async #start(): Promise<void> {
    const { Cluster, Redis } = await import("ioredis");
    const common = {
      lazyConnect: true,
      enableOfflineQueue: false,
      autoResendUnfulfilledCommands: false,
      maxRetriesPerRequest: 0,
      connectTimeout: this.#connectTimeout,
      commandTimeout: this.#commandTimeout || undefined,
      // A connection that owes an answer and reads nothing this long is destroyed and made again.
      ...(this.#commandTimeout > 0 ? { socketTimeout: this.#commandTimeout } : {}),
      retryStrategy: (times: number) => Math.min(50 * times, 500),
    };
    // Auto-pipelining batches the scripts of one tick into one write; order is kept.
    const cmd = (this.#cluster
      ? new Cluster([this.#url], {
        redisOptions: common,
        enableOfflineQueue: false,
        enableAutoPipelining: true,
        lazyConnect: true,
        clusterRetryStrategy: common.retryStrategy,
        slotsRefreshInterval: this.#slotsRefresh || undefined,
      })
      : new Redis(this.#url, { ...common, enableAutoPipelining: true })) as unknown as Client;
    // In a cluster, PUBLISH reaches every node's subscribers: one connection to the seed hears
    // every stream's channel, and so does one to any other node: when the seed cannot be reached
    // twice in a row (dead for good, its replica promoted), the subscriber moves to the next
    // node the cluster knows, then subscribes again and the hub resyncs, as after any drop.
    const sub = new Redis(this.#url, {
      ...common,
      autoResubscribe: false,
      retryStrategy: (times: number) => {
        if (this.#cluster && times >= 2) this.#moveSub();
        return common.retryStrategy(times);
      },
    });
    if (this.#cluster) {
      // A master seen before and connected again may have restarted (or failed over): events
      // may have been missed, so every stream resyncs (its scripts see the new run_id).
      const seen = new Set<string>();
      (cmd as unknown as Cluster).on("+node", (node: Redis) => {
        const key = `${node.options.host}:${node.options.port}`;
        if (!seen.has(key)) {
          seen.add(key);
          return;
        }
        node.once("ready", () => this.#sink?.lost());
        if (node.status === "wait") node.connect().catch(() => {});
      });
    }
    defineScripts(cmd, this.#cluster);
    this.#cmd = cmd;
    this.#sub = sub;
    // Errors are answered per request (engine_unavailable); the client reconnects by itself.
    const quiet = (e: unknown) => {
      if (/^Socket timeout/.test((e as Error)?.message ?? "")) this.#timeouts++;
    };
    cmd.on("error", quiet);
    if (this.#cluster) cmd.on("node error", quiet);
    sub.on("error", quiet);
    if (this.#commandTimeout > 0) {
      // A subscriber owes nothing between events: a PING makes it owe an answer, so a quiet one
      // is closed by the socket timeout like a command connection (then resubscribed, resynced).
      this.#pinger = setInterval(() => {
        if (sub.status === "ready") sub.ping().catch(() => {});
        this.#shards?.ping();
      }, this.#commandTimeout);
    }
    cmd.on("close", () => {
      this.#cmdUp = false;
      this.#linkDown(`lost the connection to ${redactUrl(this.#url)}`);
    });
    cmd.on("ready", () => {
      this.#cmdUp = true;
      this.#linkUp(`connected again to ${redactUrl(this.#url)}`);
      // Maybe another Redis, or the same one restarted from older data: the generation is
      // verified before any other script runs on this connection (#client).
      this.#connects++;
      if (this.#cmdWasUp) this.#sink?.lost();
      this.#cmdWasUp = true;
    });
    sub.on("ready", () => this.#subReady());
    sub.on("close", () => this.#subDown());
    sub.on("message", (channel: string, text: string) => this.#message(channel, text));
    await Promise.allSettled([cmd.connect(), sub.connect()]);
  }

  /** Points the classic subscriber's next connection at another node of the cluster. */
  #moveSub(): void {
    const sub = this.#sub;
    if (!sub || this.#closed) return;
    const here = `${sub.options.host}:${sub.options.port}`;
    const others = (this.#cmd as unknown as Cluster).nodes("all")
      .map((n) => [n.options.host ?? "127.0.0.1", n.options.port ?? 6379] as const)
      .filter(([host, port]) => `${host}:${port}` !== here);
    const next = others[this.#subMoves++ % Math.max(1, others.length)];
    if (!next) return;
    [sub.options.host, sub.options.port] = next;
  }

  async #subReady(): Promise<void> {
    const sub = this.#sub as Redis;
    const follows = this.#shards ? [] : [...this.#follows.values()];
    const channels = follows.map((f) => f.channel);
    if (this.#onCreated) channels.push(this.#createdChannel);
    if (channels.length > 0) {
      try {
        await sub.subscribe(...channels);
      } catch {
        return; // down again: the next ready retries
      }
    }
    this.#subUp = true;
    this.#linkUp(`connected again to ${redactUrl(this.#url)}`);
    for (const f of follows) {
      f.subscribed = Promise.resolve();
      f.active = true;
    }
    if (this.#subWasUp) {
      // Redis may be another instance now: the resyncs' scripts wait for the generation to be
      // verified again, even when the subscription is back before the command connection.
      this.#verifiedOn = -1;
      this.#sink?.lost();
    }
    this.#subWasUp = true;
  }

  #subDown(): void {
    this.#subUp = false;
    this.#linkDown(`lost the connection to ${redactUrl(this.#url)}`);
    if (!this.#shards) { for (const f of this.#follows.values()) this.#drop(f); }
  }

  /** The subscription is gone: fail its syncs and release its waiters. */
  #drop(f: Follow): void {
    f.subscribed = undefined;
    f.active = false;
    f.held = undefined;
    clearTimeout(f.releaseTimer);
    f.releaseTimer = undefined;
    const syncs = [...f.syncs.values()];
    f.syncs.clear();
    for (const s of syncs) s.reject(unavailable("Redis subscription lost"));
    for (const w of f.waiters.values()) w();
    f.waiters.clear();
  }

  async #client(): Promise<Client> {
    if (this.#closed) throw new EngineUnavailableError("Engine closed");
    try {
      await this.#started;
    } catch (e) {
      // E.g. no env permission: ioredis reads the environment when loaded.
      throw new EngineUnavailableError(`Cannot load the Redis client: ${(e as Error).message}`, {
        cause: e,
      });
    }
    const cmd = this.#cmd as Client;
    if (this.#cluster && !this.#detected) await this.#detect(cmd);
    // In a cluster each script reads its master's run_id itself (see RUN_GEN).
    while (!this.#cluster && this.#verifiedOn !== this.#connects) {
      this.#verifying ??= this.#verify(cmd).finally(() => this.#verifying = undefined);
      await this.#verifying;
    }
    return cmd;
  }

  /**
   * Decides, once, whether the cluster has sharded pub/sub (Redis 7 or later): then events go
   * out with `SPUBLISH` and are followed on one connection per master (see {@linkcode ShardPool}).
   */
  async #detect(cmd: Client): Promise<void> {
    let info: string;
    try {
      info = await cmd.info("server");
    } catch (e) {
      throw unavailable(e);
    }
    if (this.#detected) return;
    this.#detected = true;
    const major = Number(/^redis_version:(\d+)/m.exec(info)?.[1] ?? 0);
    this.#multi = major >= 7;
    if (!this.#wantSharded || major < 7) return;
    const cluster = cmd as unknown as Cluster;
    this.#shards = new ShardPool({
      url: this.#url,
      connectTimeout: this.#connectTimeout,
      masterOf: (slot) => (cluster.slots[slot] as string[] | undefined)?.[0],
      onMessage: (channel, text) => this.#message(channel, text),
      onLost: (channels) => {
        for (const c of channels) {
          const f = this.#channels.get(c);
          if (f) this.#drop(f);
        }
        this.#needLost = true;
        this.#retry();
      },
    });
    // A failover or slot move some subscriber was not told of shows in the refreshed map.
    cluster.on("refresh", () => this.#shards?.recheck());
  }

  /**
   * Sharded: subscribes again every follow whose subscription was lost (its master restarted,
   * or its slot moved), with a growing delay (at most 1 s), until all are back; then the hub
   * resyncs (catch-up from history, or reset), as after a lost classic subscription.
   */
  #retry(): void {
    if (this.#retryTimer || this.#closed) return;
    this.#retryDelay = Math.min(1000, Math.max(50, this.#retryDelay * 2));
    this.#retryTimer = setTimeout(async () => {
      const waits: Promise<void>[] = [];
      for (const f of [...this.#follows.values()]) {
        if (!f.subscribed) this.#follow(f.stream);
        if (!f.active && f.subscribed) waits.push(f.subscribed);
      }
      const failed = (await Promise.allSettled(waits)).some((r) => r.status === "rejected");
      this.#retryTimer = undefined;
      if (this.#closed) return;
      if (failed) return this.#retry();
      if (this.#needLost) {
        this.#needLost = false;
        this.#sink?.lost();
      }
    }, this.#retryDelay);
  }

  /** Renews the generation when Redis is not the instance that set it (see VERIFY). */
  async #verify(cmd: Client): Promise<void> {
    const on = this.#connects;
    try {
      const info = await cmd.info("server");
      const runId = /^run_id:(\S+)/m.exec(info)?.[1];
      if (!runId) throw new Error("INFO server has no run_id");
      await cmd.msgstreamVerify(
        `${this.#prefix}run`,
        `${this.#prefix}gen`,
        `${this.#prefix}epochs`,
        runId,
      );
    } catch (e) {
      throw unavailable(e);
    }
    // A reconnect meanwhile bumped #connects: #client verifies again.
    this.#verifiedOn = on;
  }

  /** The channel every stream's creation is published on (see BATCH and SYNC). */
  get #createdChannel(): string {
    return `${this.#prefix}created`;
  }

  /** A creation notice: `<epoch> <the stream's channel>`. */
  #created(text: string): void {
    const i = text.indexOf(" ");
    const channel = text.slice(i + 1);
    const head = `${this.#prefix}{`;
    if (i < 0 || !channel.startsWith(head) || !channel.endsWith("}:c")) return;
    this.#onCreated?.(channel.slice(head.length, -3), text.slice(0, i));
  }

  /**
   * Lists the streams Redis holds whose names match a pattern, a page at a time (`SCAN` with
   * `MATCH` over the stream hashes' keys: one pass over the keyspace).
   *
   * @param pattern The pattern (`*` matches any run of characters).
   * @returns Pages of names.
   * @throws {EngineUnavailableError} When Redis cannot be reached.
   */
  async *streams(pattern: string): AsyncIterable<string[]> {
    const cmd = await this.#client();
    const glob = (s: string) => s.replace(/[?[\]\\]/g, "\\$&");
    const match = `${glob(this.#prefix)}{${glob(pattern)}}:s`;
    const head = this.#prefix.length + 1;
    // In a cluster, each master holds its own slots' keys.
    const nodes: Pick<Redis, "scan">[] = this.#cluster
      ? (cmd as unknown as Cluster).nodes("master")
      : [cmd];
    for (const node of nodes) {
      let cursor = "0";
      do {
        let reply: [string, string[]];
        try {
          reply = await node.scan(cursor, "MATCH", match, "COUNT", 1000);
        } catch (e) {
          throw unavailable(e);
        }
        cursor = reply[0];
        const names = reply[1].map((key) => key.slice(head, -3));
        if (names.length > 0) yield names;
      } while (cursor !== "0");
    }
  }

  /**
   * Calls `onCreated` with every stream created from now on, on any node (Redis pub/sub on
   * `<prefix>created`: one message per creation, to every node that watches).
   *
   * @param onCreated Takes the stream's name and its epoch.
   * @throws {EngineUnavailableError} When Redis cannot be reached.
   */
  async watchCreated(onCreated: (stream: string, epoch: string) => void): Promise<void> {
    await this.#client();
    if (this.#onCreated) {
      this.#onCreated = onCreated;
      return;
    }
    this.#onCreated = onCreated;
    if (!this.#subUp) throw unavailable(new Error("Redis subscription is down"));
    try {
      await (this.#sub as Redis).subscribe(this.#createdChannel);
    } catch (e) {
      throw unavailable(e);
    }
  }

  /** Runs one batch: one script call; never throws (each write is answered). */
  async #send(ops: Op[]): Promise<void> {
    // Group by stream, each stream's writes in their order.
    const groups = new Map<string, Op[]>();
    for (const o of ops) {
      const g = groups.get(o.stream);
      if (g) g.push(o);
      else groups.set(o.stream, [o]);
    }
    const tag = `${this.#node}.${(this.#counter++).toString(36)}`;
    let cmd: Client;
    try {
      cmd = await this.#client();
    } catch (e) {
      const error = e instanceof EngineUnavailableError ? e : unavailable(e);
      for (const o of ops) o.reject(error);
      return;
    }
    // Registered only now: #client may have waited, and a follow may have started meanwhile.
    const arrivals = new Map<string, Promise<void>>();
    for (const stream of groups.keys()) {
      const f = this.#follows.get(stream);
      if (f?.active) {
        arrivals.set(stream, new Promise<void>((resolve) => f.waiters.set(tag, resolve)));
      }
    }
    const calls = scriptCalls(cmd, groups, {
      mode: !this.#cluster ? "single" : this.#multi ? "multi" : "stream",
      sharded: this.#shards !== undefined,
      prefix: this.#prefix,
      historyMessages: this.#historyMessages,
      tag,
      createdChannel: this.#createdChannel,
      nonce: () => `${this.#node}${(this.#counter++).toString(16)}`,
    });
    const timeouts = this.#timeouts;
    await Promise.all(
      calls.map(([streams, call]) =>
        settle(
          streams,
          groups,
          this.#bounded(call, timeouts),
          arrivals,
          (stream) => this.#arrived(stream, tag),
        )
      ),
    );
  }

  /**
   * A script call whose failure says so when a connection was closed for its silence meanwhile
   * (see `commandTimeout`), rather than ioredis' words for a dropped connection.
   */
  #bounded<T>(call: Promise<T>, timeouts: number): Promise<T> {
    return call.catch((e) => {
      if (this.#timeouts === timeouts && (e as Error)?.message !== "Command timed out") throw e;
      throw new Error(
        `no answer within ${this.#commandTimeout} ms (commandTimeout, --redis-command-timeout): ` +
          "the connection is treated as lost and made again; the write may have been applied " +
          "(listeners resync)",
        { cause: e },
      );
    });
  }

  /** Queues a write for the next batch; resolves with its result once it reached this node. */
  #enqueue(stream: string, op: Op["op"], text: string): Promise<Position> {
    if (this.#closed) return Promise.reject(new EngineUnavailableError("Engine closed"));
    return this.#writes.enqueue(stream, op, text);
  }

  /** Releases this node's waiter for a batch's events of the stream. */
  #arrived(stream: string, tag: string): void {
    const f = this.#follows.get(stream);
    const w = f?.waiters.get(tag);
    if (w) {
      f?.waiters.delete(tag);
      w();
    }
  }

  /**
   * Assigns the put its seq, appends it to history and publishes it, in one script call with
   * the other writes of its tick (see `maxBatch`).
   *
   * @param stream The stream's name.
   * @param message The message.
   * @param json The message's JSON text when the caller has it (a plain put line's slice):
   * exactly what a JsonCodec encodes `message` to. A JSON codec sends it as it is (the message is
   * not encoded again); any other codec ignores it.
   * @returns The put's position.
   * @throws {TypeError} When the codec cannot encode the message.
   * @throws {EngineUnavailableError} When Redis cannot be reached.
   */
  put(stream: string, message: unknown, json?: string): Promise<Position> {
    // Not async: a put without a guard to wait for is one promise, its batch's answer.
    let text: string;
    let guard: Promise<void> | undefined;
    try {
      text = json !== undefined && this.#json ? json : (this.#codec as Codec).encode(message);
      guard = this.#guard.ordered(this.#guard.check(
        `Cannot put on stream "${stream.slice(0, 100)}"`,
        text.length,
        () => this.#isNew(stream),
      ));
    } catch (e) {
      return Promise.reject(e);
    }
    if (guard) return guard.then(() => this.#enqueue(stream, "p", text));
    return this.#enqueue(stream, "p", text);
  }

  /**
   * Sets or clears the header, appends the change to history and publishes it, batched as a
   * put is.
   *
   * @param stream The stream's name.
   * @param message The header, or `null` to clear it.
   * @throws {TypeError} When the codec cannot encode the header.
   * @throws {EngineUnavailableError} When Redis cannot be reached.
   */
  async header(stream: string, message: unknown): Promise<void> {
    const clear = message === null || message === undefined;
    const text = clear ? "" : (this.#codec as Codec).encode(message);
    // A header is kept twice: in the stream's hash and in its history.
    const guard = this.#guard.ordered(
      clear ? undefined : this.#guard.check(
        `Cannot set the header of stream "${stream.slice(0, 100)}"`,
        2 * text.length,
      ),
    );
    if (guard) await guard;
    await this.#enqueue(stream, clear ? "c" : "h", text);
  }

  /**
   * Deletes the stream's keys and publishes its end, batched as a put is.
   *
   * @param stream The stream's name.
   * @throws {EngineUnavailableError} When Redis cannot be reached.
   */
  async delete(stream: string): Promise<void> {
    const guard = this.#guard.ordered(undefined);
    if (guard) await guard;
    await this.#enqueue(stream, "d", "");
  }

  /**
   * Reads the stream's epoch, seq and header from its hash, without following the stream and
   * without creating it.
   *
   * @param stream The stream's name.
   * @returns The stream's state, or `undefined` when Redis holds no such stream.
   * @throws {EngineUnavailableError} When Redis cannot be reached.
   */
  async stat(stream: string): Promise<EngineSnapshot | undefined> {
    const cmd = await this.#client();
    let reply: (string | null)[];
    try {
      reply = await cmd.hmget(
        streamKeys(this.#prefix, stream)[0] as string,
        "epoch",
        "seq",
        "header",
      );
    } catch (e) {
      throw unavailable(e);
    }
    const [epoch, seq, header] = reply;
    if (epoch === null || epoch === undefined) return undefined;
    return {
      epoch,
      seq: Number(seq),
      header: header === null || header === undefined
        ? undefined
        : (this.#codec as Codec).decode(header),
    };
  }

  /**
   * Subscribes to the stream (once per node), then takes a snapshot that publishes a marker;
   * calls `onSnapshot` where the marker falls among the stream's events.
   *
   * @param stream The stream's name.
   * @param since Also read the history after this position.
   * @param onSnapshot Called once, in order with the stream's events.
   * @throws {EngineUnavailableError} When Redis cannot be reached or the subscription drops.
   */
  async sync(
    stream: string,
    since: Position | undefined,
    onSnapshot: (snapshot: EngineSnapshot) => void,
    existing?: boolean,
  ): Promise<void> {
    const cmd = await this.#client();
    const f = this.#follow(stream);
    try {
      await f.subscribed;
    } catch (e) {
      throw unavailable(e);
    }
    const token = `${this.#node}.${(this.#counter++).toString(36)}`;
    const done = Promise.withResolvers<void>();
    // A drop may reject it before it is returned (or when the script call fails and it never
    // is): handled here, so that it is never an unhandled rejection, which ends the process.
    done.promise.catch(() => {});
    const sync: Sync = {
      onSnapshot,
      snapshot: undefined,
      marked: false,
      resolve: done.resolve,
      reject: done.reject,
    };
    f.syncs.set(token, sync);
    let reply: unknown[];
    try {
      const args = [token, f.channel, since?.epoch ?? "", since?.seq ?? 0];
      const only = existing ? "1" : "";
      reply = await (this.#cluster
        ? cmd[this.#shards ? "msgstreamSyncS" : "msgstreamSync"](
          ...streamKeys(this.#prefix, stream).slice(0, 2),
          ...args,
          this.#createdChannel,
          `${this.#node}${(this.#counter++).toString(16)}`,
          only,
        )
        : cmd.msgstreamSync(...streamKeys(this.#prefix, stream), ...args, "", "", only));
    } catch (e) {
      if (f.syncs.delete(token) && sync.marked) this.#release(f);
      if (this.#cluster) {
        // E.g. CLUSTERDOWN from a master that is back but not serving yet, or NOSCRIPT from
        // one restarted empty (classic pub/sub too: nothing else would call lost()): a resync
        // that failed here is retried (the hub waits for lost()).
        this.#needLost = true;
        this.#retry();
      }
      throw unavailable(e);
    }
    if (!this.#needLost) this.#retryDelay = 0;
    if (this.#probe?.snapshotReplied) await this.#probe.snapshotReplied(stream);
    if (f.syncs.get(token) !== sync) return done.promise; // the subscription dropped: rejected
    sync.snapshot = snapshotOf(this.#codec as Codec, reply);
    if (sync.marked) this.#complete(f, token, sync);
    return done.promise;
  }

  #follow(stream: string): Follow {
    let f = this.#follows.get(stream);
    if (!f) {
      f = {
        stream,
        channel: streamChannel(this.#prefix, stream),
        subscribed: undefined,
        active: false,
        syncs: new Map(),
        held: undefined,
        releaseTimer: undefined,
        waiters: new Map(),
      };
      this.#follows.set(stream, f);
      this.#channels.set(f.channel, f);
    }
    if (!f.subscribed && this.#shards) {
      const follow = f;
      const subscribed: Promise<void> = this.#shards.subscribe(f.channel).then(() => {
        if (follow.subscribed === subscribed) follow.active = true;
      });
      f.subscribed = subscribed;
      subscribed.catch(() => {
        if (follow.subscribed !== subscribed) return;
        follow.subscribed = undefined;
        // A join or resync failed on it: the hub resyncs once it is back.
        if (this.#follows.get(follow.stream) === follow) {
          this.#needLost = true;
          this.#retry();
        }
      });
    } else if (!f.subscribed) {
      const sub = this.#sub as Redis;
      const follow = f;
      f.subscribed = !this.#subUp
        ? Promise.reject(new Error("Redis subscription is down"))
        : sub.subscribe(f.channel).then(() => {
          if (follow.subscribed) follow.active = true;
        });
      f.subscribed.catch(() => {
        if (follow.subscribed && !follow.active) follow.subscribed = undefined;
      });
    }
    return f;
  }

  /**
   * Stops following the stream on this node (unsubscribes).
   *
   * @param stream The stream's name.
   */
  unfollow(stream: string): void {
    const f = this.#follows.get(stream);
    if (!f) return;
    this.#follows.delete(stream);
    this.#channels.delete(f.channel);
    this.#drop(f);
    if (this.#shards) this.#shards.unsubscribe(f.channel);
    else if (this.#subUp && !this.#closed) this.#sub?.unsubscribe(f.channel).catch(() => {});
  }

  #message(channel: string, text: string): void {
    const f = this.#channels.get(channel);
    if (!f) {
      if (channel === this.#createdChannel) this.#created(text);
      return;
    }
    const probe = this.#probe?.arrived;
    if (probe && text[0] === "B") {
      eachEvent(text, (_kind, seq) => probe(f.stream, seq));
    }
    if (f.held) f.held.push(text);
    else this.#safely(f, text);
  }

  /** A marker, or a batch of events; one bad message or event must not stop the node. */
  #safely(f: Follow, text: string): void {
    try {
      this.#process(f, text);
    } catch {
      // Malformed: listeners here miss it; the next event's seq tells the hub to resync.
    }
  }

  #process(f: Follow, text: string): void {
    const kind = text[0];
    if (kind === "B") return this.#batch(f, text);
    if (kind === "m") {
      const token = text.slice(1);
      const sync = f.syncs.get(token);
      if (!sync) return; // another node's, or one that failed
      if (sync.snapshot) this.#complete(f, token, sync);
      else {
        sync.marked = true;
        f.held = [];
      }
      return;
    }
  }

  /** Hands a batch's events to the hub, in order; then releases this node's waiter, if any. */
  #batch(f: Follow, text: string): void {
    const a = text.indexOf(" ");
    const nl = text.indexOf("\n", a + 1);
    const tag = text.slice(1, a);
    const epoch = text.slice(a + 1, nl);
    const sink = this.#sink;
    const codec = this.#codec as Codec;
    // With a JSON codec the text goes into the frame as it is (the publishing node's codec made
    // it); a put's object or array is not decoded here: listeners read it from the frame.
    const json = codec instanceof JsonCodec;
    try {
      eachEvent(text, (kind, seq, payload) => {
        if (kind === "e") return sink?.event(f.stream, "end", null, seq, epoch);
        if (json && kind === "p") {
          const c = payload[0];
          if (c === "{" || c === "[") {
            return sink?.event(f.stream, "put", FROM_FRAME, seq, epoch, payload);
          }
          // A string without escapes (what publishers send most) is its text between the
          // quotes: no decode (nor its depth and number checks, moot for a string). A copy, not
          // a slice: a listener may keep the message, and a slice would keep the whole batch.
          // Anything else (an escape, a control character, a stray quote) takes the decode.
          if (
            c === '"' && payload.indexOf('"', 1) === payload.length - 1 && !ESCAPED.test(payload)
          ) {
            const message = (" " + payload.slice(1, -1)).slice(1);
            return sink?.event(f.stream, "put", message, seq, epoch, payload);
          }
        }
        let message: unknown;
        try {
          message = payload === "" ? null : codec.decode(payload);
        } catch {
          return; // undecodable (e.g. nodes with different codecs): the next seq resyncs
        }
        const kindOf = kind === "p" ? "put" : "header";
        sink?.event(
          f.stream,
          kindOf,
          message,
          seq,
          epoch,
          json && payload !== "" ? payload : undefined,
        );
      });
    } finally {
      const w = f.waiters.get(tag);
      if (w) {
        f.waiters.delete(tag);
        w();
      }
    }
  }

  #complete(f: Follow, token: string, sync: Sync): void {
    f.syncs.delete(token);
    try {
      sync.onSnapshot(sync.snapshot as EngineSnapshot);
      sync.resolve();
    } catch (e) {
      sync.reject(e as Error);
    }
    // The joiner's answer (an `ok` to listen, sent when its promise settles, through microtasks
    // only) must reach its connection before any event after the snapshot: those events, and
    // any that come in the same read, wait for the next macrotask.
    f.held ??= [];
    clearTimeout(f.releaseTimer);
    f.releaseTimer = setTimeout(() => {
      f.releaseTimer = undefined;
      this.#release(f);
    }, 0);
  }

  /** Processes events held behind a marker, until the next marker waiting for its reply. */
  #release(f: Follow): void {
    const held = f.held;
    if (!held) return;
    f.held = undefined;
    for (let i = 0; i < held.length; i++) {
      if (f.held) {
        (f.held as string[]).push(...held.slice(i));
        return;
      }
      this.#safely(f, held[i] as string);
    }
  }

  /**
   * Disconnects from Redis; requests after it fail.
   *
   * @returns When both connections have closed.
   */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    await this.#started?.catch(() => {});
    for (const f of this.#follows.values()) this.#drop(f);
    this.#follows.clear();
    this.#channels.clear();
    clearTimeout(this.#retryTimer);
    clearInterval(this.#pinger);
    this.#shards?.close();
    await Promise.all([this.#cmd, this.#sub].map((c) => c ? quit(c) : undefined));
  }
}
