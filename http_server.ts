/**
 * The HTTP door's transport: HTTP/1.1 (and HTTPS) connections whose every phase is bounded,
 * carrying the door's web-standard `(Request) => Response` handler.
 *
 * `Deno.serve` bounds no phase of a connection (no header, body or keep-alive timeout, no count
 * of sockets), so the door serves through `node:http`/`node:https` instead, with:
 *
 * - **a header timeout** (`headerTimeout`): a request whose headers have not all arrived in time
 *   gets `408` and its connection is closed;
 * - **a request timeout** (`requestTimeout`): the same for a request whose body has not all
 *   arrived in time (measured from the request's start);
 * - **a keep-alive timeout** (`keepAliveTimeout`): a connection idle between requests is closed;
 * - **a header size bound** (`maxHeaderBytes`): larger request heads get `431` and a close;
 * - **a TLS handshake timeout** (`handshakeTimeout`, HTTPS): a handshake not done in time is cut;
 * - **a connection count** (`maxConnections`): every open socket counts, idle or not; one more
 *   gets `503` (`limit_exceeded`, `max_connections`) over plain HTTP, or is closed at once over
 *   TLS (it has no handshake to answer through), and never reaches the router;
 * - **a pipelining bound** (`maxPipelined`): a connection may have that many requests whose
 *   responses are not yet written; one more (a client that pipelines without reading) closes
 *   the connection before the handler sees it, so unread responses cannot pile up.
 *
 * Running out of descriptors never ends the process: a failed accept is logged (`http accept
 * failed`) and the listener is opened anew after a pause (100 ms doubling to 1 s).
 *
 * Requests reach the handler as `Request`s whose body streams the socket's bytes with
 * backpressure and whose `signal` aborts when the client goes away; a response's body is
 * written with backpressure (the next chunk is read once the socket has taken the last), and
 * cancelled when the client goes away, so that an SSE response ends with its socket. A
 * WebSocket upgrade reaches the handler as a `GET` whose socket {@linkcode upgradeOf} gives
 * (`ws.ts` takes it over); any other answer to an upgrade is written on the socket, which is
 * then closed.
 *
 * @example Serve a handler with bounds
 * ```ts
 * import { HttpTransport } from "./http_server.ts";
 * import { assertEquals } from "@std/assert";
 *
 * const transport = new HttpTransport((_req) => Promise.resolve(new Response("hi")), {
 *   hostname: "127.0.0.1",
 *   port: 0,
 * });
 * const res = await fetch(`http://127.0.0.1:${transport.addr.port}/`);
 * assertEquals(await res.text(), "hi");
 * await transport.shutdown();
 * ```
 *
 * @module
 */

import http from "node:http";
import https from "node:https";
import type net from "node:net";
import { Buffer } from "node:buffer";
import process from "node:process";

/** The runtime's TCP handles (Deno's node compatibility), to listen synchronously. */
interface TcpHandle {
  bind(host: string, port: number): number;
  bind6(host: string, port: number, flags: number): number;
  close(): void;
}
interface TcpWrapBinding {
  TCP: new (type: number) => TcpHandle;
  constants: { SERVER: number };
}

/**
 * `process.binding("tcp_wrap")`, looked up when first needed; `null` where the runtime has none
 * (the server then listens the usual way, a tick later).
 */
let tcpWrap: TcpWrapBinding | null | undefined;
function tcpWrapBinding(): TcpWrapBinding | null {
  if (tcpWrap === undefined) {
    try {
      tcpWrap = (process as unknown as { binding(name: string): TcpWrapBinding })
        .binding("tcp_wrap");
      if (typeof tcpWrap?.TCP !== "function") tcpWrap = null;
    } catch {
      tcpWrap = null;
    }
  }
  return tcpWrap;
}

/** The bounds of one transport; each has a default (see docs/limits.md). */
export interface TransportLimits {
  /**
   * Milliseconds a request's headers have to arrive (`408` and close beyond).
   *
   * @default {10000}
   */
  headerTimeout?: number;
  /**
   * Milliseconds a whole request (headers and body) has to arrive (`408` and close beyond);
   * at least `headerTimeout`.
   *
   * @default {30000}
   */
  requestTimeout?: number;
  /**
   * Milliseconds a connection may stay idle between requests before it is closed.
   *
   * @default {5000}
   */
  keepAliveTimeout?: number;
  /**
   * Most bytes of a request's head (request line and headers; `431` and close beyond).
   *
   * @default {16384}
   */
  maxHeaderBytes?: number;
  /**
   * Milliseconds a TLS client has to complete its handshake (HTTPS only).
   *
   * @default {10000}
   */
  handshakeTimeout?: number;
  /**
   * Most sockets open at once, idle ones included.
   *
   * @default {15000}
   */
  maxConnections?: number;
  /**
   * Most requests one connection may have under way at once: answered or not, whose response
   * has not all been handed to the socket. A client that pipelines more without reading its
   * answers has its connection closed (every response queued for it goes too).
   *
   * @default {16}
   */
  maxPipelined?: number;
}

/** Where a transport listens, and its bounds. */
export interface TransportOptions extends TransportLimits {
  /** The address to listen on. */
  hostname: string;
  /** The port to listen on; 0 picks a free one. */
  port: number;
  /** TLS certificate chain (PEM); with `key`, serve HTTPS. */
  cert?: string | undefined;
  /** TLS private key (PEM) of `cert`. */
  key?: string | undefined;
  /** Called with the code of each error the transport answers itself (a malformed request). */
  onError?: (code: string) => void;
  /** Called when a connection is refused for `maxConnections`. */
  onRefused?: () => void;
  /** Called when accepting fails (descriptors exhausted), before the listener is reopened. */
  onAcceptFailed?: (error: Error) => void;
  /**
   * Warnings, one message each (no time or level: the caller's log adds them); by default
   * written to stderr with the time and `warn`.
   */
  log?: (message: string) => void;
}

/** What a WebSocket upgrade request carries for the code that takes its socket over. */
export interface Upgrade {
  /** The upgraded connection's socket. */
  readonly socket: net.Socket;
  /** Bytes the client sent after the request's head. */
  readonly head: Uint8Array;
  /** Set by the taker: the socket is its own now (the transport writes no response). */
  taken: boolean;
  /**
   * The taker calls it once the socket has closed: a socket handed to the runtime's WebSocket
   * reports no `close` of its own.
   */
  readonly released: () => void;
}

const upgrades = new WeakMap<Request, Upgrade>();

/**
 * The socket of a WebSocket upgrade request that came through an {@linkcode HttpTransport}.
 *
 * @param req A request given to the handler.
 * @returns Its upgrade, or `undefined` for other requests (and those of other servers).
 */
export function upgradeOf(req: Request): Upgrade | undefined {
  return upgrades.get(req);
}

/** A request handler, as `Deno.serve` takes one. */
export type Handler = (req: Request) => Promise<Response>;

/** Per socket: requests under way, and whether the transport is over its count with it. */
interface SocketState {
  active: number;
  refused: boolean;
  /** Requests whose response has not finished (been handed to the socket whole). */
  queued: number;
  /** Our `data` listener, that hands the parser a slice at a time (see `#sliced`). */
  feed?: (chunk: Buffer) => void;
  /** The connection was upgraded (a WebSocket): its bytes are no longer ours to parse. */
  upgraded?: boolean;
}

/**
 * Most bytes the runtime's HTTP parser is given at once: it parses what it is given whole,
 * request after request, before any bound of ours can act.
 */
const PARSE_SLICE = 4096;

/** Sockets over `maxConnections` that may wait for their 503 at once; more are closed. */
const REFUSED_AT_ONCE = 256;

const SERVER_ERROR = Buffer.from(
  "HTTP/1.1 400 Bad Request\r\nconnection: close\r\ncontent-length: 0\r\n\r\n",
);

/** An HTTP/1.1 (or HTTPS) server with bounds, serving one handler. */
export class HttpTransport {
  /** The bound address. */
  readonly addr: Deno.NetAddr;
  /** Resolves when the transport has shut down. */
  readonly finished: Promise<void>;
  /** The bounds in force. */
  readonly limits: Readonly<Required<TransportLimits>>;
  readonly #handler: Handler;
  readonly #server: http.Server;
  readonly #scheme: string;
  readonly #sockets = new Map<net.Socket, SocketState>();
  readonly #finished = Promise.withResolvers<void>();
  readonly #options: TransportOptions;
  readonly #log: (message: string) => void;
  #shutdown: Promise<void> | undefined;
  #pause = 0;
  #timer: ReturnType<typeof setTimeout> | undefined;
  #open = 0;
  #watchTimer: number;
  #refused = 0;
  #requests = 0;

  /**
   * Listens on the given address at once.
   *
   * @param handler Answers each request.
   * @param options Address, TLS and bounds.
   * @throws {RangeError} When a bound is out of range.
   * @throws {Deno.errors.AddrInUse} When the port is taken.
   */
  constructor(handler: Handler, options: TransportOptions) {
    this.#handler = handler;
    this.#options = options;
    this.#log = options.log ?? warnToStderr;
    const headerTimeout = bound("headerTimeout", options.headerTimeout, 10_000);
    const limits = {
      headerTimeout,
      requestTimeout: bound(
        "requestTimeout",
        options.requestTimeout,
        Math.max(30_000, headerTimeout),
      ),
      keepAliveTimeout: bound("keepAliveTimeout", options.keepAliveTimeout, 5_000),
      maxHeaderBytes: bound("maxHeaderBytes", options.maxHeaderBytes, 16_384),
      handshakeTimeout: bound("handshakeTimeout", options.handshakeTimeout, 10_000),
      maxConnections: bound("maxConnections", options.maxConnections, 15_000),
      maxPipelined: bound("maxPipelined", options.maxPipelined, 16),
    };
    if (limits.requestTimeout < limits.headerTimeout) {
      throw new RangeError(
        `Option "requestTimeout" (${limits.requestTimeout}) must be at least "headerTimeout" ` +
          `(${limits.headerTimeout})`,
      );
    }
    this.limits = limits;
    const common = {
      headersTimeout: limits.headerTimeout,
      requestTimeout: limits.requestTimeout,
      keepAliveTimeout: limits.keepAliveTimeout,
      maxHeaderSize: limits.maxHeaderBytes,
      // The router answers a missing Host (421 host_not_allowed), as it does a foreign one.
      requireHostHeader: false,
      // How often the header and request deadlines are checked: a tenth of the shortest.
      connectionsCheckingInterval: Math.max(10, Math.min(1000, Math.floor(headerTimeout / 10))),
    };
    if ((options.cert === undefined) !== (options.key === undefined)) {
      throw new TypeError("Options cert and key go together");
    }
    const tls = options.cert !== undefined && options.key !== undefined;
    this.#scheme = tls ? "https" : "http";
    const server = tls
      ? https.createServer({
        ...common,
        cert: options.cert,
        key: options.key,
        handshakeTimeout: limits.handshakeTimeout,
        // HTTP/1.1 only: clients that offer h2 too (browsers) pick it; one that offers
        // nothing still connects.
        ALPNProtocols: ["http/1.1"],
      } as https.ServerOptions)
      : http.createServer(common as http.ServerOptions);
    this.#server = server;
    server.on("request", (req: http.IncomingMessage, res: http.ServerResponse) => {
      this.#requests++;
      void this.#request(req, res);
    });
    server.on("upgrade", (req: http.IncomingMessage, socket: net.Socket, head: Buffer) => {
      void this.#upgrade(req, socket, head);
    });
    server.on("connection", (socket: net.Socket) => this.#connection(socket));
    server.on("clientError", (err: Error & { code?: string }, socket: net.Socket) => {
      // A malformed, oversized or timed-out request: answered (when the socket can still take
      // it) and closed; the router never sees it.
      if (socket.writable && !socket.destroyed && !socket.writableEnded) {
        socket.end(
          err.code === "ERR_HTTP_REQUEST_TIMEOUT"
            ? REQUEST_TIMEOUT
            : err.code === "HPE_HEADER_OVERFLOW"
            ? HEADER_OVERFLOW
            : SERVER_ERROR,
        );
      }
      socket.destroySoon?.();
      setTimeout(() => socket.destroy(), 1000).unref?.();
    });
    server.on("tlsClientError", () => {
      // A failed or timed-out handshake: its socket is destroyed already.
    });
    server.on("error", (e: Error) => this.#failed(e));
    this.finished = this.#finished.promise;
    this.addr = this.#listen(options.port);
    this.#watchTimer = setInterval(this.#watch, 1000) as unknown as number;
    Deno.unrefTimer(this.#watchTimer);
  }

  /** Sockets open now. */
  get connections(): number {
    return this.#open;
  }

  /** Requests parsed since the start, answered or not (those past `maxPipelined` too). */
  get requests(): number {
    return this.#requests;
  }

  /**
   * Binds and listens synchronously, so that a taken port throws here and the first request
   * finds the port open: node's `listen(port, host)` binds a tick later (after a DNS lookup,
   * even of an address), while a handle of its own is listened on at once. `Deno.listen` first
   * resolves the name and gives the runtime's error for a taken or forbidden address.
   */
  #listen(port: number): Deno.NetAddr {
    const probe = Deno.listen({ hostname: this.#options.hostname, port, transport: "tcp" });
    const addr = probe.addr as Deno.NetAddr;
    probe.close();
    this.#bind(addr);
    return addr;
  }

  /** Has the server listen on a new handle bound to `addr`; `false` when that failed. */
  #bind(addr: Deno.NetAddr): boolean {
    const binding = tcpWrapBinding();
    if (binding === null) {
      this.#server.listen({ host: addr.hostname, port: addr.port });
      return true;
    }
    const handle = new binding.TCP(binding.constants.SERVER);
    const err = addr.hostname.includes(":")
      ? handle.bind6(addr.hostname, addr.port, 0)
      : handle.bind(addr.hostname, addr.port);
    if (err !== 0) {
      handle.close();
      throw new Deno.errors.AddrInUse(`Cannot bind ${addr.hostname}:${addr.port} (${err})`);
    }
    this.#server.listen(handle);
    if (!this.#server.listening) {
      throw new Deno.errors.AddrInUse(`Address ${addr.hostname}:${addr.port} is in use`);
    }
    return true;
  }

  /**
   * Looks for descriptor exhaustion. The runtime's listener stops accepting for good when an
   * accept fails for want of descriptors, and says nothing; so once a second the transport opens
   * (and closes) a listening socket of its own: when that fails for want of descriptors, the
   * listener is replaced once descriptors are free again.
   */
  #watch = (): void => {
    if (this.#shutdown || this.#timer !== undefined) return;
    const error = descriptorShortage(this.addr.hostname);
    if (error) return this.#failed(error);
    // The listener may have stopped at a failed accept since the last look, the shortage
    // being over already (it lasted less than a second): nothing says so. Listening again on
    // the same socket restarts a stopped listener and leaves a running one as it is (it costs
    // a system call), so the door never stays deaf for more than a second.
    const server = this.#server as unknown as { _handle: { listen(n: number): number } | null };
    const status = server._handle?.listen(511);
    if (status !== undefined && status !== 0) {
      this.#failed(new Error(`Cannot listen again on ${hostPort(this.addr)} (${status})`));
    }
  };

  #failed(e: Error): void {
    if (this.#shutdown || this.#timer !== undefined) return;
    this.#options.onAcceptFailed?.(e);
    this.#log(`http accept failed: ${e.message}; retrying`);
    this.#pause = 0;
    this.#retry();
  }

  /** Waits (100 ms, doubling to 1 s) until descriptors are free, then listens anew. */
  #retry(): void {
    this.#pause = this.#pause === 0 ? 100 : Math.min(1000, this.#pause * 2);
    this.#timer = setTimeout(() => {
      if (this.#shutdown) return;
      if (descriptorShortage(this.addr.hostname)) return this.#retry();
      // The runtime's listener stopped at the failed accept: listening again on the same
      // socket restarts it, and connections waiting in its backlog are accepted.
      const server = this.#server as unknown as { _handle: { listen(n: number): number } | null };
      if (server._handle?.listen(511) !== 0) {
        try {
          this.#bind(this.addr);
        } catch {
          return this.#retry();
        }
      }
      this.#timer = undefined;
      this.#pause = 0;
      this.#log("http accepting connections again");
    }, this.#pause);
  }

  #connection(socket: net.Socket): void {
    if (this.#shutdown) {
      socket.destroy();
      return;
    }
    const state: SocketState = { active: 0, refused: false, queued: 0 };
    if (this.#open >= this.limits.maxConnections) {
      this.#options.onRefused?.();
      // Over plain HTTP its first request gets 503 and the socket closes; it may take a second
      // for that at most. Over TLS (nothing to answer through yet), or past a few hundred
      // such sockets at once, it is closed now.
      if (this.#scheme === "https" || this.#refused >= REFUSED_AT_ONCE) {
        socket.destroy();
        return;
      }
      state.refused = true;
      this.#refused++;
      socket.setTimeout(1000, () => socket.destroy());
      this.#sockets.set(socket, state);
      socket.once("close", () => {
        this.#sockets.delete(socket);
        this.#refused--;
        if (this.#shutdown && this.#sockets.size === 0) this.#finished.resolve();
      });
      return;
    }
    this.#open++;
    this.#sockets.set(socket, state);
    socket.setNoDelay(true);
    socket.once("close", () => this.#closed(socket));
    this.#sliced(socket, state);
  }

  /**
   * Has the runtime's parser take the socket's bytes a slice at a time, and none once the
   * socket is closed. It parses what it is given whole: one read of pipelined requests (64
   * KiB: two thousand and more) became as many requests, each with its request and response
   * objects, even after the connection was closed at `maxPipelined` (400 connections writing
   * 2,000 each stalled every client for seconds). Where the runtime's parser cannot be fed by
   * hand (it reads the socket itself, with no way to stop that), nothing changes.
   */
  #sliced(socket: net.Socket, state: SocketState): void {
    const parser = (socket as unknown as { parser?: { unconsume?: () => void } }).parser;
    const listeners = socket.listeners("data");
    if (typeof parser?.unconsume !== "function" || listeners.length !== 1) return;
    const onData = listeners[0] as (chunk: Buffer) => void;
    parser.unconsume();
    socket.removeListener("data", onData);
    const feed = (chunk: Buffer): void => {
      for (let at = 0; at < chunk.byteLength; at += PARSE_SLICE) {
        if (socket.destroyed) return;
        if (state.upgraded) {
          // The rest is the WebSocket's: back to the socket, for its reader.
          socket.unshift(chunk.subarray(at));
          return;
        }
        onData.call(socket, chunk.subarray(at, at + PARSE_SLICE));
      }
    };
    state.feed = feed;
    socket.on("data", feed);
  }

  /** A socket's state; over TLS the request's socket wraps the one accepted (its `_parent`). */
  #stateOf(socket: net.Socket): SocketState | undefined {
    return this.#sockets.get(socket) ??
      this.#sockets.get((socket as unknown as { _parent?: net.Socket })._parent as net.Socket);
  }

  /** Forgets a closed socket (once, whether its `close` event or its WebSocket said so). */
  #closed(socket: net.Socket): void {
    if (!this.#sockets.delete(socket)) return;
    this.#open--;
    if (this.#shutdown && this.#sockets.size === 0) this.#finished.resolve();
  }

  /** The request as the handler takes it, or `undefined` when it cannot be one. */
  #toRequest(
    req: http.IncomingMessage,
    signal: AbortSignal | undefined,
    body: Uint8Array | ReadableStream<Uint8Array> | null,
  ): Request | typeof BAD_HOST | undefined {
    const raw = req.rawHeaders;
    const headers: [string, string][] = [];
    for (let i = 0; i + 1 < raw.length; i += 2) {
      headers.push([raw[i] as string, raw[i + 1] as string]);
    }
    const target = req.url ?? "/";
    if (!target.startsWith("/")) return undefined;
    const host = req.headers.host;
    const url = `${this.#scheme}://${host ?? hostPort(this.addr)}${target}`;
    try {
      return new Request(url, {
        method: req.method ?? "GET",
        headers,
        ...(body instanceof ReadableStream ? { body, duplex: "half" } : body ? { body } : {}),
        ...(signal ? { signal } : {}),
      } as RequestInit);
    } catch {
      // No URL can be made with the Host (not a host name and port), or a header is not valid.
      return URL.canParse(url) ? undefined : BAD_HOST;
    }
  }

  async #request(req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    const socket = req.socket;
    const state = this.#stateOf(socket);
    if (socket.destroyed) return;
    if (state) {
      if (state.queued >= this.limits.maxPipelined) {
        // Requests pipelined past the bound without reading the answers: the runtime parses a
        // whole read's worth at once (a thousand and more), and would queue a response for
        // each. The connection goes, and every request after this one with it.
        this.#options.onError?.("pipeline_too_deep");
        socket.destroy();
        return;
      }
      state.queued++;
      let done = false;
      const finished = (): void => {
        if (done) return;
        done = true;
        state.queued--;
      };
      res.once("finish", finished);
      res.once("close", finished);
    }
    if (state) state.active++;
    const gone = new AbortController();
    const onClose = (): void => {
      if (!res.writableFinished) gone.abort();
    };
    res.once("close", onClose);
    const method = req.method ?? "GET";
    let body: Uint8Array | ReadableStream<Uint8Array> | null = null;
    if (method !== "GET" && method !== "HEAD") {
      const length = Number(req.headers["content-length"] ?? NaN);
      if (length >= 0 && length <= SMALL_BODY) {
        // A small body of known length is read whole: cheaper than a stream, and bounded.
        try {
          body = await readSmall(req, length);
        } catch {
          if (state) state.active--;
          return; // the client went away (or the request timed out) before its body ended
        }
      } else body = bodyOf(req);
    }
    const request = this.#toRequest(req, gone.signal, body);
    try {
      if (state?.refused) {
        const message = `More than ${this.limits.maxConnections} connections: try again later`;
        const body = JSON.stringify({ code: "limit_exceeded", limit: "max_connections", message });
        sendJson(res, 503, body, { "retry-after": "1", connection: "close" });
        return;
      }
      if (request === BAD_HOST) {
        this.#options.onError?.("host_not_allowed");
        sendJson(res, 421, badHost(req));
        return;
      }
      if (!request) {
        this.#options.onError?.("invalid_request");
        sendJson(
          res,
          400,
          JSON.stringify({ code: "invalid_request", message: "Not an HTTP request we serve" }),
          { connection: "close" },
        );
        return;
      }
      let response: Response;
      try {
        response = await this.#handler(request);
      } catch (e) {
        response = new Response(
          JSON.stringify({ code: "internal", message: `Cannot answer: ${(e as Error).message}` }),
          { status: 500, headers: { "content-type": "application/json" } },
        );
      }
      if (method === "GET" || method === "HEAD") req.resume();
      await this.#respond(response, res, gone.signal, method === "HEAD");
    } finally {
      if (state) state.active--;
      if (this.#shutdown && state?.active === 0) socket.end();
    }
  }

  async #respond(
    response: Response,
    res: http.ServerResponse,
    gone: AbortSignal,
    head: boolean,
  ): Promise<void> {
    const headers: Record<string, string | string[]> = {};
    for (const [k, v] of response.headers) {
      if (k === "set-cookie") continue;
      headers[k] = v;
    }
    const cookies = response.headers.getSetCookie();
    if (cookies.length > 0) headers["set-cookie"] = cookies;
    if (this.#shutdown) headers["connection"] = "close";
    const body = response.body;
    if (body === null || head) {
      if (body !== null) await body.cancel().catch(() => {});
      res.writeHead(response.status, response.statusText || undefined, headers);
      res.end();
      return;
    }
    if (!(headers["content-type"] as string | undefined)?.startsWith("text/event-stream")) {
      // Every other body the door makes is whole at once (JSON, the page, metrics): read it,
      // and send it with its Content-Length in one write, as Deno.serve did.
      let bytes: Uint8Array;
      try {
        bytes = new Uint8Array(await response.arrayBuffer());
      } catch {
        res.destroy();
        return;
      }
      headers["content-length"] = String(bytes.byteLength);
      res.writeHead(response.status, response.statusText || undefined, headers);
      res.end(bytes);
      return;
    }
    const reader = body.getReader();
    const cancel = (): void => {
      reader.cancel().catch(() => {});
    };
    // A body that fails while its socket does not drain (an SSE response cut for a client that
    // reads nothing) must end the socket: the wait for `drain` would last as long as the
    // client stays, and the socket with it (a descriptor and a connection slot).
    let failed = false;
    let wake: (() => void) | undefined;
    reader.closed.catch(() => {
      failed = true;
      wake?.();
    });
    gone.addEventListener("abort", cancel, { once: true });
    try {
      res.writeHead(response.status, response.statusText || undefined, headers);
      // Headers go at once (an SSE response may wait long for its first event).
      res.flushHeaders();
      while (true) {
        const { value, done } = await reader.read();
        if (done) break;
        if (gone.aborted) return;
        if (!res.write(value)) {
          // Backpressure: read no more until the socket has taken this (or the client went).
          await new Promise<void>((resolve) => {
            const ok = (): void => {
              wake = undefined;
              res.off("drain", ok);
              res.off("close", ok);
              resolve();
            };
            wake = ok;
            res.on("drain", ok);
            res.on("close", ok);
          });
          if (gone.aborted) return;
          if (failed) {
            res.destroy();
            return;
          }
        }
      }
      res.end();
    } catch {
      // The body failed: the client gets a cut response, as it would from Deno.serve.
      res.destroy();
    } finally {
      gone.removeEventListener("abort", cancel);
    }
  }

  async #upgrade(req: http.IncomingMessage, socket: net.Socket, head: Buffer): Promise<void> {
    const sliced = this.#sockets.get(socket);
    if (sliced?.feed) {
      sliced.upgraded = true;
      socket.removeListener("data", sliced.feed);
    }
    // Until the WebSocket takes the socket over (after the handler's answer, a turn or more
    // later), what the client sends behind its request (frames need not wait for the 101) stays
    // in the socket: a flowing socket with no reader would drop it.
    socket.pause();
    socket.on("error", () => {});
    if (this.#stateOf(socket)?.refused) {
      // Over --max-connections: no WebSocket either.
      const message = `More than ${this.limits.maxConnections} connections: try again later`;
      const body = JSON.stringify({ code: "limit_exceeded", limit: "max_connections", message });
      socket.end(
        `HTTP/1.1 503 Service Unavailable\r\ncontent-type: ${JSON_TYPE}\r\nretry-after: 1\r\n` +
          `connection: close\r\ncontent-length: ${Buffer.byteLength(body)}\r\n\r\n${body}`,
      );
      return;
    }
    const request = this.#toRequest(req, undefined, null);
    if (request === BAD_HOST) {
      this.#options.onError?.("host_not_allowed");
      const body = badHost(req);
      socket.end(
        `HTTP/1.1 421 Misdirected Request\r\ncontent-type: ${JSON_TYPE}\r\nconnection: close\r\n` +
          `content-length: ${Buffer.byteLength(body)}\r\n\r\n${body}`,
      );
      return;
    }
    if (!request || this.#shutdown) {
      socket.end(SERVER_ERROR);
      return;
    }
    const upgrade: Upgrade = {
      socket,
      head: new Uint8Array(head),
      taken: false,
      released: () => this.#closed(socket),
    };
    upgrades.set(request, upgrade);
    let response: Response;
    try {
      response = await this.#handler(request);
    } catch {
      response = new Response(null, { status: 500 });
    }
    if (upgrade.taken) return;
    // Refused (403, 421, 426…): answer on the socket and close it.
    const body = response.body ? new Uint8Array(await response.arrayBuffer()) : new Uint8Array();
    let text = `HTTP/1.1 ${response.status} ${
      response.statusText || statusText(response.status)
    }\r\n`;
    for (const [k, v] of response.headers) if (k !== "content-length") text += `${k}: ${v}\r\n`;
    text += `connection: close\r\ncontent-length: ${body.byteLength}\r\n\r\n`;
    socket.end(Buffer.concat([Buffer.from(text), body]));
  }

  /**
   * Stops accepting, closes idle connections, lets requests under way finish (their
   * connections close after the response), then resolves. Long responses (SSE) must be ended by
   * their owner first. Safe to call more than once.
   *
   * @returns When every connection has closed.
   */
  shutdown(): Promise<void> {
    this.#shutdown ??= (async () => {
      clearTimeout(this.#timer);
      clearInterval(this.#watchTimer);
      this.#server.close();
      for (const [socket, state] of this.#sockets) if (state.active === 0) socket.destroy();
      if (this.#sockets.size === 0) this.#finished.resolve();
      await this.#finished.promise;
    })();
    return this.#shutdown;
  }

  /** Closes every connection at once (after a shutdown's wait). */
  cut(): void {
    for (const socket of this.#sockets.keys()) socket.destroy();
  }
}

/** The default of `log`: the message with the time and `warn`, on stderr. */
function warnToStderr(message: string): void {
  // deno-lint-ignore no-console
  console.error(`${new Date().toISOString()} warn ${message}`);
}

const REQUEST_TIMEOUT = Buffer.from(
  "HTTP/1.1 408 Request Timeout\r\nconnection: close\r\ncontent-length: 0\r\n\r\n",
);

const HEADER_OVERFLOW = Buffer.from(
  "HTTP/1.1 431 Request Header Fields Too Large\r\nconnection: close\r\ncontent-length: 0\r\n\r\n",
);

/** Bodies of at most this many bytes, their length given, are read whole before routing. */
const SMALL_BODY = 65_536;

/** Reads a body of known, small length whole. */
function readSmall(req: http.IncomingMessage, length: number): Promise<Uint8Array> {
  return new Promise((resolve, reject) => {
    const out = new Uint8Array(length);
    let at = 0;
    req.on("data", (chunk: Buffer) => {
      const n = Math.min(chunk.byteLength, length - at);
      out.set(chunk.subarray(0, n), at);
      at += n;
    });
    req.once("end", () => resolve(at === length ? out : out.subarray(0, at)));
    req.once("error", reject);
    req.once("close", () => {
      if (!req.complete) reject(new Error("The client went away before its body ended"));
    });
  });
}

/** A request's body as a stream that reads the socket only as fast as it is read. */
function bodyOf(req: http.IncomingMessage): ReadableStream<Uint8Array> {
  return new ReadableStream<Uint8Array>({
    start(controller) {
      req.on("data", (chunk: Buffer) => {
        controller.enqueue(new Uint8Array(chunk.buffer, chunk.byteOffset, chunk.byteLength));
        if ((controller.desiredSize ?? 0) <= 0) req.pause();
      });
      req.on("end", () => {
        try {
          controller.close();
        } catch {
          // cancelled
        }
      });
      req.on("error", (e) => {
        try {
          controller.error(e);
        } catch {
          // cancelled
        }
      });
      req.on("close", () => {
        if (!req.complete) {
          try {
            controller.error(new Error("The client went away before its body ended"));
          } catch {
            // closed or cancelled
          }
        }
      });
      req.pause();
    },
    pull() {
      req.resume();
    },
    cancel() {
      req.resume();
    },
  }, { highWaterMark: 65_536, size: (chunk) => chunk.byteLength });
}

const BAD_HOST = "bad_host";
const JSON_TYPE = "application/json; charset=utf-8";

/** The answer to a Host no URL can be made with (the router's 421, as it would say it). */
function badHost(req: http.IncomingMessage): string {
  const host = String(req.headers.host ?? "").slice(0, 100);
  return JSON.stringify({
    code: "host_not_allowed",
    message: `Host "${host}" is not a host name and port (see --allowed-hosts)`,
  });
}

/** The error when no descriptor can be had now (`undefined` when one can). */
function descriptorShortage(hostname: string): Error | undefined {
  try {
    Deno.listen({ hostname, port: 0, transport: "tcp" }).close();
  } catch (e) {
    const message = (e as Error).message;
    if (/too many open files/i.test(message)) return e as Error;
  }
  return undefined;
}

/** Answers with a JSON body, its length given. */
function sendJson(
  res: http.ServerResponse,
  status: number,
  body: string,
  headers: Record<string, string> = {},
): void {
  res.writeHead(status, {
    "content-type": JSON_TYPE,
    "content-length": String(Buffer.byteLength(body)),
    ...headers,
  });
  res.end(body);
}

function hostPort(addr: Deno.NetAddr): string {
  return addr.hostname.includes(":")
    ? `[${addr.hostname}]:${addr.port}`
    : `${addr.hostname}:${addr.port}`;
}

function statusText(status: number): string {
  return http.STATUS_CODES[status] ?? "Unknown";
}

function bound(name: string, value: number | undefined, fallback: number): number {
  if (value === undefined) return fallback;
  if (!Number.isSafeInteger(value) || value < 1) {
    throw new RangeError(`Option "${name}" must be a whole number of at least 1, got ${value}`);
  }
  return value;
}
