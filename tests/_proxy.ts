/**
 * A small TCP proxy for tests: it stands between a client and a local server so a test can cut
 * every connection (to the client: the server cut it), refuse new ones, swallow what clients
 * send, count bytes and connections, and repoint new connections at another port (a load
 * balancer failing over).
 *
 * @example Proxying a raw client to a real server
 * ```ts
 * import { assertEquals } from "@std/assert";
 * import { serve } from "../server.ts";
 * import { connectRaw } from "./_raw_client.ts";
 * import { TcpProxy } from "./_proxy.ts";
 *
 * await using server = serve({ port: 0 });
 * await using proxy = new TcpProxy(server.addr.port);
 * await using raw = await connectRaw(proxy.port);
 * raw.send({ action: "ping", id: 1 });
 * assertEquals(await raw.next(), { action: "pong", id: 1 });
 * assertEquals(proxy.accepted, 1);
 * ```
 *
 * @module
 */

import { deadline, TIMEOUT } from "./_wait.ts";

/**
 * One proxied connection: the client side, the upstream side once it is connected, and whether
 * it is muted (see {@linkcode TcpProxy.mute}).
 */
type Pair = [client: Deno.TcpConn, upstream: Deno.TcpConn | undefined, muted?: boolean];

/**
 * A TCP proxy on `127.0.0.1` (an ephemeral port) to a local target port.
 *
 * Each accepted connection gets its own upstream connection to the current target; when either
 * side ends or fails, both are closed. Disposing it stops accepting, closes every connection and
 * waits for all its tasks, so test sanitizers see nothing left open.
 *
 * @example Cutting every connection
 * ```ts
 * import { assertEquals } from "@std/assert";
 * import { serve } from "../server.ts";
 * import { connectRaw } from "./_raw_client.ts";
 * import { TcpProxy } from "./_proxy.ts";
 *
 * await using server = serve({ port: 0 });
 * await using proxy = new TcpProxy(() => server.addr.port);
 * await using raw = await connectRaw(proxy.port);
 * raw.send({ action: "ping", id: 1 });
 * await raw.next();
 * assertEquals(proxy.open, 1);
 * proxy.cut();
 * assertEquals(proxy.open, 0);
 * ```
 */
export class TcpProxy implements AsyncDisposable {
  /** The port the proxy listens on (on `127.0.0.1`): point clients here. */
  readonly port: number;
  /** Connections accepted so far, refused ones included. */
  accepted = 0;
  /** Bytes read from clients so far, forwarded or not. */
  bytesUp = 0;
  /** When set, bytes from clients are read (and counted) and dropped instead of forwarded. */
  swallow = false;
  /** When set, new connections are accepted and closed at once. */
  refuse = false;
  #target: number | (() => number);
  #listener: Deno.TcpListener;
  #pairs = new Set<Pair>();
  #tasks = new Set<Promise<void>>();
  #accepting: Promise<void>;
  #upWaiters: (() => void)[] = [];
  #disposed = false;

  /**
   * Starts listening and forwarding.
   *
   * @param target The local port to forward to, or a function read for each new connection
   * (for a server that may come back on another port).
   */
  constructor(target: number | (() => number)) {
    this.#target = target;
    this.#listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
    this.port = (this.#listener.addr as Deno.NetAddr).port;
    this.#accepting = this.#accept();
  }

  /**
   * The port new connections are forwarded to; setting it repoints only new connections (open
   * ones stay where they are).
   *
   * @returns The current target port.
   */
  get target(): number {
    return typeof this.#target === "number" ? this.#target : this.#target();
  }

  set target(port: number) {
    this.#target = port;
  }

  /**
   * Client connections currently open (accepted, not refused, not yet closed).
   *
   * @returns Their number.
   */
  get open(): number {
    return this.#pairs.size;
  }

  async #accept(): Promise<void> {
    try {
      for await (const client of this.#listener) {
        this.accepted++;
        if (this.refuse || this.#disposed) {
          client.close();
          continue;
        }
        const pair: Pair = [client, undefined];
        this.#pairs.add(pair);
        const task = this.#serve(pair);
        this.#tasks.add(task);
        task.finally(() => this.#tasks.delete(task));
      }
    } catch {
      // The listener was closed.
    }
  }

  async #serve(pair: Pair): Promise<void> {
    const [client] = pair;
    try {
      pair[1] = await Deno.connect({ hostname: "127.0.0.1", port: this.target });
    } catch {
      // Upstream refused (server down): the client sees its connection cut.
      this.#close(pair);
      return;
    }
    if (!this.#pairs.has(pair)) return this.#close(pair); // cut while connecting
    const upstream = pair[1];
    await Promise.all([
      this.#pipe(client, upstream, true, pair).finally(() => this.#close(pair)),
      this.#pipe(upstream, client, false, pair).finally(() => this.#close(pair)),
    ]);
  }

  async #pipe(from: Deno.TcpConn, to: Deno.TcpConn, up: boolean, pair: Pair): Promise<void> {
    const buf = new Uint8Array(64 * 1024);
    try {
      while (true) {
        const n = await from.read(buf);
        if (n === null) return;
        if (up) {
          this.bytesUp += n;
          for (const wake of this.#upWaiters.splice(0)) wake();
          if (this.swallow) continue;
        }
        if (pair[2]) continue;
        let off = 0;
        while (off < n) off += await to.write(buf.subarray(off, n));
      }
    } catch {
      // Cut, or the peer reset the connection.
    }
  }

  #close(pair: Pair): void {
    this.#pairs.delete(pair);
    for (const c of [pair[0], pair[1]]) {
      try {
        c?.close();
      } catch {
        // already closed
      }
    }
  }

  /**
   * Waits for client bytes.
   *
   * @param n A byte count, typically an earlier {@linkcode TcpProxy.bytesUp}.
   * @param ms The deadline in milliseconds.
   * @returns A promise that resolves once more than `n` bytes have come from clients.
   * @throws {TimeoutError} When no more have come within `ms`.
   */
  upstreamBytes(n: number, ms: number = TIMEOUT): Promise<void> {
    return deadline(
      (async () => {
        while (this.bytesUp <= n) await new Promise<void>((r) => this.#upWaiters.push(r));
      })(),
      () => `more than ${n} bytes from clients through the proxy (${this.bytesUp} so far)`,
      ms,
    );
  }

  /**
   * Mutes one open connection: from now on its bytes are read and dropped both ways, and it
   * stays open (a partition that sends no reset). Other and new connections are not affected.
   *
   * @param upstreamPort The local port of the connection's upstream side (what the server sees
   * as the client's port, e.g. in Redis' `CLIENT LIST`).
   * @returns Whether such a connection was open.
   */
  mute(upstreamPort: number): boolean {
    for (const pair of this.#pairs) {
      if ((pair[1]?.localAddr as Deno.NetAddr | undefined)?.port === upstreamPort) {
        pair[2] = true;
        return true;
      }
    }
    return false;
  }

  /** Cuts every open connection, both ways; the proxy keeps accepting new ones. */
  cut(): void {
    for (const pair of [...this.#pairs]) this.#close(pair);
  }

  /**
   * Stops accepting, cuts every connection and waits for every task to end.
   *
   * @returns A promise that resolves once nothing of the proxy is left open.
   */
  async [Symbol.asyncDispose](): Promise<void> {
    this.#disposed = true;
    this.#listener.close();
    this.cut();
    await this.#accepting;
    await Promise.allSettled([...this.#tasks]);
  }
}
