/**
 * The Redis engine's sharded subscribers (not an entry point): in a Redis Cluster with sharded
 * pub/sub (Redis 7), a stream's events are published with `SPUBLISH` on its master only, so a
 * node follows each stream on that master's connection. {@linkcode ShardSubscriber} is one such
 * connection, owned by the engine: it speaks RESP on a plain socket and reports everything the
 * engine must act on (a closed connection, a channel the server dropped because its slot moved,
 * a `MOVED` answer), so that every lost subscription is followed by a resync. It never reconnects
 * or resubscribes by itself. Used by `redis.ts` only.
 *
 * @module
 */

/** Where a shard subscriber connects, and what it is told. */
export interface ShardSubscriberOptions {
  hostname: string;
  port: number;
  /** `rediss://`: TLS. */
  tls: boolean;
  username: string | undefined;
  password: string | undefined;
  /** Milliseconds to connect (and authenticate). */
  connectTimeout: number;
  /** A sharded message on a subscribed channel. */
  onMessage: (channel: string, text: string) => void;
  /** The server dropped the channel's subscription on its own (its slot moved away). */
  onDropped: (channel: string) => void;
  /** The connection closed (every subscription is gone). */
  onClose: () => void;
}

type Pending =
  | { kind: "auth"; resolve: () => void; reject: (e: Error) => void }
  | { kind: "sub"; channel: string; resolve: () => void; reject: (e: Error) => void }
  | { kind: "unsub"; channel: string }
  | { kind: "ping" };

type Value = string | number | null | Error | Value[];

const encoder = new TextEncoder();
const decoder = new TextDecoder();

/** One command as RESP bytes. */
function command(args: string[]): Uint8Array {
  let s = `*${args.length}\r\n`;
  for (const a of args) s += `$${encoder.encode(a).byteLength}\r\n${a}\r\n`;
  return encoder.encode(s);
}

/** The hash slot of a key or shard channel (Redis Cluster's CRC16 of its hash tag). */
export function keySlot(key: string): number {
  let bytes = encoder.encode(key);
  const open = bytes.indexOf(0x7b); // {
  if (open >= 0) {
    const close = bytes.indexOf(0x7d, open + 1); // }
    if (close > open + 1) bytes = bytes.subarray(open + 1, close);
  }
  let crc = 0;
  for (const b of bytes) {
    crc ^= b << 8;
    for (let i = 0; i < 8; i++) {
      crc = crc & 0x8000 ? ((crc << 1) ^ 0x1021) & 0xffff : (crc << 1) & 0xffff;
    }
  }
  return crc & 16383;
}

/**
 * One sharded-pub/sub connection to one cluster master (see the module doc). `subscribe` resolves
 * once the server confirmed the channel, and rejects when it refused it (`MOVED`: another master
 * serves the slot) or the connection closed first.
 */
export class ShardSubscriber {
  readonly #o: ShardSubscriberOptions;
  #conn: Deno.Conn | undefined;
  #pending: Pending[] = [];
  #buf: Uint8Array = new Uint8Array(0);
  #closed = false;
  #up = false;
  /** Bytes read since the last `ping`'s PING was sent; undefined: none out. */
  #pinged: boolean | undefined;
  /** Channels confirmed on this connection. */
  readonly channels: Set<string> = new Set();

  /** @param options Where to connect and what to tell. */
  constructor(options: ShardSubscriberOptions) {
    this.#o = options;
  }

  /** Connected (and authenticated), and not closed since. */
  get up(): boolean {
    return this.#up;
  }

  /** `host:port`, as the cluster names the master. */
  get key(): string {
    return `${this.#o.hostname}:${this.#o.port}`;
  }

  /**
   * Connects and authenticates; rejects when it cannot (then `onClose` is not called).
   *
   * @returns When the connection is ready for `subscribe`.
   */
  async connect(): Promise<void> {
    const { hostname, port, tls } = this.#o;
    const connecting = tls ? Deno.connectTls({ hostname, port }) : Deno.connect({ hostname, port });
    let timer: ReturnType<typeof setTimeout> | undefined;
    const late = new Promise<never>((_, reject) => {
      timer = setTimeout(
        () => reject(new Error(`Cannot connect to ${this.key} in ${this.#o.connectTimeout} ms`)),
        this.#o.connectTimeout,
      );
    });
    let conn: Deno.Conn;
    try {
      conn = await Promise.race([connecting, late]);
    } catch (e) {
      connecting.then((c) => c.close(), () => {});
      throw e;
    } finally {
      clearTimeout(timer);
    }
    if (this.#closed) {
      conn.close();
      throw new Error("Shard subscriber closed");
    }
    this.#conn = conn;
    this.#read(conn);
    if (this.#o.password !== undefined) {
      const { promise, resolve, reject } = Promise.withResolvers<void>();
      this.#pending.push({ kind: "auth", resolve, reject });
      const args = this.#o.username
        ? ["AUTH", this.#o.username, this.#o.password]
        : ["AUTH", this.#o.password];
      this.#write(command(args));
      try {
        await promise;
      } catch (e) {
        this.close(); // refused: the socket goes too
        throw e;
      }
    }
    this.#up = true;
  }

  /**
   * Subscribes to one shard channel.
   *
   * @param channel The channel.
   * @returns When the server confirmed it.
   */
  subscribe(channel: string): Promise<void> {
    if (!this.#up) return Promise.reject(new Error("Shard subscriber is not connected"));
    const { promise, resolve, reject } = Promise.withResolvers<void>();
    this.#pending.push({ kind: "sub", channel, resolve, reject });
    this.#write(command(["SSUBSCRIBE", channel]));
    return promise;
  }

  /**
   * Unsubscribes from one shard channel (no answer awaited).
   *
   * @param channel The channel.
   */
  unsubscribe(channel: string): void {
    if (!this.#up) return;
    this.channels.delete(channel);
    this.#pending.push({ kind: "unsub", channel });
    this.#write(command(["SUNSUBSCRIBE", channel]));
  }

  /**
   * Liveness: called every `commandTimeout` ms. When the PING sent by the previous call was
   * followed by no byte at all since, the connection went quiet: it is closed (`onClose`: its
   * channels are lost, then subscribed again and resynced). Otherwise a new PING is sent.
   */
  ping(): void {
    if (!this.#up || this.#closed) return;
    if (this.#pinged === false) {
      this.close();
      return;
    }
    this.#pinged = false;
    this.#pending.push({ kind: "ping" });
    this.#write(command(["PING"]));
  }

  /** Closes the connection; `onClose` is called if it was connected. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    try {
      this.#conn?.close();
    } catch { /* closed */ }
    if (!this.#conn) this.#ended();
  }

  #write(bytes: Uint8Array): void {
    const conn = this.#conn as Deno.Conn;
    // Commands are small and rare (one per followed stream): written whole, in order.
    (async () => {
      let off = 0;
      while (off < bytes.length) off += await conn.write(bytes.subarray(off));
    })().catch(() => this.close());
  }

  async #read(conn: Deno.Conn): Promise<void> {
    const chunk = new Uint8Array(64 * 1024);
    try {
      for (;;) {
        const n = await conn.read(chunk);
        if (n === null) break;
        if (this.#pinged === false) this.#pinged = true;
        this.#feed(chunk.subarray(0, n));
      }
    } catch { /* closed or reset */ }
    this.#closed = true;
    try {
      conn.close();
    } catch { /* closed */ }
    this.#ended();
  }

  #ended(): void {
    const wasUp = this.#up;
    this.#up = false;
    this.channels.clear();
    const pending = this.#pending;
    this.#pending = [];
    const error = new Error("Shard subscriber connection closed");
    for (const p of pending) if (p.kind === "auth" || p.kind === "sub") p.reject(error);
    if (wasUp) this.#o.onClose();
  }

  #feed(bytes: Uint8Array): void {
    let buf: Uint8Array;
    if (this.#buf.length === 0) buf = bytes;
    else {
      buf = new Uint8Array(this.#buf.length + bytes.length);
      buf.set(this.#buf);
      buf.set(bytes, this.#buf.length);
    }
    let at = 0;
    for (;;) {
      const r = parse(buf, at);
      if (!r) break;
      at = r[1];
      this.#reply(r[0]);
    }
    // What is left is copied: `bytes` is the read buffer, reused by the next read.
    this.#buf = buf.slice(at);
  }

  #reply(v: Value): void {
    if (Array.isArray(v) && typeof v[0] === "string") {
      const kind = v[0];
      const channel = String(v[1]);
      if (kind === "pong") {
        if (this.#pending[0]?.kind === "ping") this.#pending.shift();
        return;
      }
      if (kind === "smessage") {
        if (this.channels.has(channel)) this.#o.onMessage(channel, String(v[2]));
        return;
      }
      if (kind === "ssubscribe") {
        const p = this.#pending[0];
        if (p?.kind === "sub" && p.channel === channel) {
          this.#pending.shift();
          this.channels.add(channel);
          p.resolve();
        }
        return;
      }
      if (kind === "sunsubscribe") {
        const p = this.#pending[0];
        if (p?.kind === "unsub" && p.channel === channel) {
          this.#pending.shift();
          return;
        }
        // Not asked for: the server dropped it (its slot moved to another master).
        if (this.channels.delete(channel)) this.#o.onDropped(channel);
        return;
      }
    }
    const p = this.#pending.shift();
    if (!p || p.kind === "unsub" || p.kind === "ping") return;
    if (v instanceof Error) p.reject(v);
    else p.resolve();
  }
}

/** One RESP2 value from `buf` at `at`: the value and where the next starts, or undefined. */
function parse(buf: Uint8Array, at: number): [Value, number] | undefined {
  if (at >= buf.length) return undefined;
  const eol = buf.indexOf(0x0d, at);
  if (eol < 0 || eol + 1 >= buf.length) return undefined;
  const type = buf[at];
  const line = decoder.decode(buf.subarray(at + 1, eol));
  const next = eol + 2;
  switch (type) {
    case 0x2b: // +
      return [line, next];
    case 0x2d: // -
      return [new Error(line), next];
    case 0x3a: // :
      return [Number(line), next];
    case 0x24: { // $
      const n = Number(line);
      if (n < 0) return [null, next];
      if (next + n + 2 > buf.length) return undefined;
      return [decoder.decode(buf.subarray(next, next + n)), next + n + 2];
    }
    case 0x2a: { // *
      const n = Number(line);
      if (n < 0) return [null, next];
      const items: Value[] = [];
      let p = next;
      for (let i = 0; i < n; i++) {
        const r = parse(buf, p);
        if (!r) return undefined;
        items.push(r[0]);
        p = r[1];
      }
      return [items, p];
    }
    default:
      throw new SyntaxError(`Unexpected reply from Redis: type byte ${type}`);
  }
}

/** What a {@linkcode ShardPool} needs from the engine. */
export interface ShardPoolOptions {
  /** The seed's URL: its scheme (TLS) and credentials are used for every master. */
  url: string;
  /** Milliseconds to connect to a master. */
  connectTimeout: number;
  /** The master (`host:port`) serving a slot, as the command client knows it. */
  masterOf: (slot: number) => string | undefined;
  /** A sharded message. */
  onMessage: (channel: string, text: string) => void;
  /** These channels' subscriptions are gone (a master's connection closed, or a slot moved). */
  onLost: (channels: string[]) => void;
}

/**
 * The engine's sharded subscribers: one {@linkcode ShardSubscriber} per master that serves a
 * followed stream, made on first use. A channel goes to its slot's master; a `MOVED` answer
 * names the master to use for that slot from then on.
 */
export class ShardPool {
  readonly #o: ShardPoolOptions;
  readonly #tls: boolean;
  readonly #username: string | undefined;
  readonly #password: string | undefined;
  /** Subscribers by master, each with its connection attempt. */
  readonly #subs = new Map<string, [ShardSubscriber, Promise<void>]>();
  /** Where each subscribed channel is. */
  readonly #where = new Map<string, ShardSubscriber>();
  /** Masters named by `MOVED` answers, by slot (newer than the command client's view). */
  readonly #moved = new Map<number, string>();
  /** The slot map at the last `recheck`. */
  readonly #map: (string | undefined)[] = [];
  #closed = false;

  /** @param options The seed URL, and what to tell the engine. */
  constructor(options: ShardPoolOptions) {
    this.#o = options;
    const u = new URL(options.url);
    this.#tls = u.protocol === "rediss:";
    this.#username = u.username ? decodeURIComponent(u.username) : undefined;
    this.#password = u.password ? decodeURIComponent(u.password) : undefined;
  }

  /** Masters with a subscriber connection up. */
  get connections(): number {
    let n = 0;
    for (const [s] of this.#subs.values()) if (s.up) n++;
    return n;
  }

  /**
   * Subscribes to a shard channel on its slot's master (connecting to it first if needed).
   *
   * @param channel The channel.
   * @returns When the master confirmed it; rejects when it cannot be reached or refused.
   */
  async subscribe(channel: string): Promise<void> {
    if (this.#closed) throw new Error("Shard subscribers closed");
    const slot = keySlot(channel);
    const master = this.#moved.get(slot) ?? this.#o.masterOf(slot);
    if (!master) throw new Error(`No master known for slot ${slot}`);
    const s = await this.#subscriber(master);
    try {
      await s.subscribe(channel);
    } catch (e) {
      const moved = /^MOVED \d+ (\S+)/.exec((e as Error).message)?.[1];
      if (moved) this.#moved.set(slot, moved);
      throw e;
    }
    if (this.#closed || !s.up) throw new Error("Shard subscriber connection closed");
    this.#where.set(channel, s);
  }

  /**
   * Unsubscribes from a shard channel.
   *
   * @param channel The channel.
   */
  unsubscribe(channel: string): void {
    const s = this.#where.get(channel);
    this.#where.delete(channel);
    s?.unsubscribe(channel);
  }

  /**
   * The command client's slot map was refreshed (after a `MOVED`, or on its periodic refresh):
   * a channel whose slot another master serves now is lost, as if the server had dropped it.
   * A master demoted by a failover (Redis 7.0) keeps its sharded subscriptions and says
   * nothing, while the events go out on the new master: without this check the node would wait
   * for them for ever (its puts unanswered, its listeners silent).
   */
  recheck(): void {
    if (this.#closed) return;
    // The periodic refresh mostly finds the same map: then only a MOVED answer seen since can
    // have put a channel elsewhere (16,384 lookups, not a hash of every followed channel).
    let changed = this.#moved.size > 0;
    for (let slot = 0; slot < 16384; slot++) {
      const master = this.#o.masterOf(slot);
      if (master !== this.#map[slot]) {
        this.#map[slot] = master;
        changed = true;
      }
    }
    if (!changed) return;
    // The refreshed map is newer than any MOVED answer seen before it.
    this.#moved.clear();
    const lost: string[] = [];
    for (const [channel, s] of this.#where) {
      const master = this.#o.masterOf(keySlot(channel));
      if (master === undefined || master === s.key) continue;
      this.#where.delete(channel);
      s.unsubscribe(channel);
      lost.push(channel);
    }
    if (lost.length > 0) this.#o.onLost(lost);
  }

  async #subscriber(master: string): Promise<ShardSubscriber> {
    let entry = this.#subs.get(master);
    if (!entry) {
      const i = master.lastIndexOf(":");
      const s: ShardSubscriber = new ShardSubscriber({
        hostname: master.slice(0, i),
        port: Number(master.slice(i + 1)),
        tls: this.#tls,
        username: this.#username,
        password: this.#password,
        connectTimeout: this.#o.connectTimeout,
        onMessage: this.#o.onMessage,
        onDropped: (channel) => {
          if (this.#where.get(channel) !== s) return;
          this.#where.delete(channel);
          this.#o.onLost([channel]);
        },
        onClose: () => this.#gone(s),
      });
      const ready = s.connect();
      ready.catch(() => {
        if (this.#subs.get(master)?.[0] === s) this.#subs.delete(master);
      });
      this.#subs.set(master, entry = [s, ready]);
    }
    await entry[1];
    return entry[0];
  }

  /** A master's connection closed: every channel on it is lost. */
  #gone(s: ShardSubscriber): void {
    if (this.#subs.get(s.key)?.[0] === s) this.#subs.delete(s.key);
    const lost: string[] = [];
    for (const [channel, at] of this.#where) {
      if (at === s) {
        lost.push(channel);
        this.#where.delete(channel);
      }
    }
    if (lost.length > 0 && !this.#closed) this.#o.onLost(lost);
  }

  /** Liveness of every connection (see {@linkcode ShardSubscriber.ping}). */
  ping(): void {
    for (const [s] of this.#subs.values()) s.ping();
  }

  /** Closes every connection. */
  close(): void {
    this.#closed = true;
    for (const [s] of this.#subs.values()) s.close();
    this.#subs.clear();
    this.#where.clear();
  }
}
