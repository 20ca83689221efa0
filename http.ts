/**
 * The msgstream HTTP door: browsers and HTTP clients reach the same hub as TCP clients.
 *
 * - **Server-Sent Events** (`sse.ts`): `GET /streams/{name}` with `Accept: text/event-stream`
 *   sends the header first (`event: header`), then puts (`event: put`), `event: end` on delete
 *   and `event: reset` when a resume position is not covered by history. Every event has
 *   `id: <epoch>:<seq>`, so a browser's `EventSource` resumes through `Last-Event-ID` by
 *   itself; other clients may pass `?since=<epoch>:<seq>`. A resume delivers every missed put
 *   exactly once; of the header changes at the resume position only the newest is sent again.
 *   Comment heartbeats (`: hb`) keep proxies from closing idle streams. `event: close`
 *   (`data: {code, message}`) says why the server ended the response (`shutdown`,
 *   `slow_consumer`); after `event: end` (the stream was deleted) call `close()`.
 * - **WebSocket** (`ws.ts`): `GET /ws` speaks the TCP protocol's JSON frames, one per text
 *   message.
 * - **REST**: `POST /streams/{name}` puts, `PUT`/`DELETE /streams/{name}/header` set and clear
 *   the header, `DELETE /streams/{name}` deletes, `GET /streams` lists one page (by name;
 *   `?limit=`, `?after=`, `?pattern=`, `Link: rel="next"`; see docs/http.md), `GET
 *   /streams/{name}/header` reads the header. Errors are JSON `{code, message}`.
 * - **`GET /metrics`** (Prometheus text, `metrics.ts`), **`GET /healthz`**, and a live status
 *   page at `GET /` (`page.ts`).
 *
 * Auth uses the TCP server's tokens: `Authorization: Bearer <secret>`, or `?token=<secret>`
 * where a browser cannot set headers (`EventSource`). A request whose `Host` is not on the
 * door's allow-list (`allowedHosts`; loopback names by default on a loopback bind) gets 421
 * `host_not_allowed` on every route; see `hosts.ts` and docs/http.md for the WebSocket
 * `Origin` rule.
 *
 * @example Put over REST, read the stream list
 * ```ts
 * import { serveHttp } from "@x/msgstream/http";
 * import { MessageStream } from "@x/msgstream";
 * import { assertEquals } from "@std/assert";
 *
 * const hub = new MessageStream();
 * await using server = serveHttp(hub, { port: 0 });
 * const base = `http://127.0.0.1:${server.addr.port}`;
 * const res = await fetch(`${base}/streams/job42`, {
 *   method: "POST",
 *   headers: { "content-type": "application/json" },
 *   body: JSON.stringify({ done: 1 }),
 * });
 * assertEquals((await res.json()).seq, 1);
 * const list = await (await fetch(`${base}/streams`)).json();
 * assertEquals(list[0].name, "job42");
 * ```
 *
 * @module
 */

/// <reference types="./std_types.d.ts" />
import type { MessageStream, Position } from "./mod.ts";
import { Auth, forbidden, forbiddenPattern, type Grant, type Right, type Token } from "./auth.ts";
import { Metrics, prometheus } from "./metrics.ts";
import { LimitExceededError } from "./budget.ts";
import { DEFAULT_HTTP_PORT, intOption, parsePosition, waitAtMost } from "./options.ts";
import { AllowedHosts } from "./hosts.ts";
import { statusPage } from "./page.ts";
import { checkPattern } from "./pattern.ts";
import { pickNamesPausing } from "./listing.ts";
import { isEndId, SseDoor } from "./sse.ts";
import { WsDoor } from "./ws.ts";
import { HttpTransport, type TransportLimits } from "./http_server.ts";
import {
  allow,
  engineNames,
  HttpError,
  json,
  JSON_TYPE,
  LIMIT_STATUS,
  RateMeter,
  readBody,
  strictParam,
} from "./rest.ts";

export { Metrics } from "./metrics.ts";
export type { Door } from "./metrics.ts";
export type { Permissions, Token } from "./auth.ts";

/** Options for {@linkcode serveHttp} and {@linkcode handler}. */
export interface HttpOptions {
  /**
   * The address to listen on ({@linkcode serveHttp} only).
   *
   * @default {"127.0.0.1"}
   */
  hostname?: string;
  /**
   * The port to listen on; 0 picks a free one ({@linkcode serveHttp} only).
   *
   * @default {51933}
   */
  port?: number;
  /** Shared counters; give the TCP server's to have one `/metrics` for both doors. */
  metrics?: Metrics;
  /**
   * Tokens, as the TCP server takes them; when given, every request but `/` and `/healthz`
   * needs one, with the right permission for the stream.
   */
  tokens?: Token[] | undefined;
  /**
   * Milliseconds between comment heartbeats on an idle SSE response.
   *
   * @default {15000}
   */
  heartbeatInterval?: number;
  /**
   * The reconnection delay, in milliseconds, that SSE responses ask `EventSource` to use.
   *
   * @default {1000}
   */
  retry?: number;
  /**
   * Most bytes waiting to be sent on one SSE response. A response over it gets
   * `event: close` with code `slow_consumer` and is closed; `EventSource` then resumes from
   * the last event it got.
   *
   * @default {8388608}
   */
  maxSseBufferBytes?: number;
  /**
   * Most bytes waiting to be sent on one WebSocket; over it the socket gets `slow_consumer`
   * and is closed.
   *
   * @default {8388608}
   */
  maxOutboundBytes?: number;
  /**
   * Largest request body (REST) and incoming WebSocket message, in bytes. A larger body gets
   * 413; a larger message gets `line_too_long` and its socket is closed.
   *
   * @default {1048576}
   */
  maxBodyBytes?: number;
  /**
   * Streams in one page of `GET /streams` when the request gives no `?limit=`.
   *
   * @default {100}
   */
  listPage?: number;
  /**
   * Most streams in one page of `GET /streams`; a larger `?limit=` is read as this. Together
   * with the walk's pauses it keeps one listing from holding the event loop.
   *
   * @default {1000}
   */
  maxListPage?: number;
  /**
   * The window, in milliseconds, over which `GET /streams` measures each stream's message
   * rate (it samples seqs when asked).
   *
   * @default {10000}
   */
  rateWindow?: number;
  /**
   * The `Access-Control-Allow-Origin` value for cross-origin pages (and the one foreign
   * `Origin` a WebSocket may come from); none by default: same origin only.
   */
  corsOrigin?: string;
  /**
   * The names a request's `Host` header may carry (see `hosts.ts`): names or addresses without
   * ports, `*.name` for every name under one, `*` for any. Any other host gets
   * `421 host_not_allowed` on every route, `/ws` included, so that a page on another site cannot
   * reach the door through a name of its own that resolves here (DNS rebinding). A WebSocket's
   * `Origin` must be the request's own, the `corsOrigin`, or a host on this list (when given).
   *
   * @default {loopback names and addresses when bound to a loopback address (serveHttp); any
   * host when bound elsewhere or embedded with handler()}
   */
  allowedHosts?: string[];
  /**
   * Milliseconds `shutdown()` waits for SSE responses and WebSockets to flush before cutting
   * them.
   *
   * @default {5000}
   */
  shutdownTimeout?: number;
  /**
   * Most sockets open at once ({@linkcode serveHttp} only), idle ones, SSE responses and
   * WebSockets alike; one more gets 503 with code `limit_exceeded` (`max_connections`) and is
   * closed (over TLS, closed at once). When the process runs out of descriptors anyway, the
   * listener starts again once descriptors are free (looked for after 100 ms, doubling to 1 s)
   * instead of ending the process.
   *
   * @default {15000}
   */
  maxConnections?: number;
  /**
   * With tokens, milliseconds a WebSocket has to authenticate (credentials on the upgrade, or
   * `hello`) before it is closed with `unauthorized` (`--auth-timeout`).
   *
   * @default {10000}
   */
  authTimeout?: number;
  /**
   * Milliseconds a request's headers have to arrive; beyond, `408` and the connection closes
   * ({@linkcode serveHttp} only; `--http-header-timeout`).
   *
   * @default {10000}
   */
  headerTimeout?: number;
  /**
   * Milliseconds a whole request, headers and body, has to arrive; beyond, `408` and the
   * connection closes; at least `headerTimeout` ({@linkcode serveHttp} only;
   * `--http-request-timeout`).
   *
   * @default {30000}
   */
  requestTimeout?: number;
  /**
   * Milliseconds a connection may stay idle between requests ({@linkcode serveHttp} only;
   * `--http-keep-alive-timeout`).
   *
   * @default {5000}
   */
  keepAliveTimeout?: number;
  /**
   * Most bytes of a request's head, request line and headers; beyond, `431` and the connection
   * closes ({@linkcode serveHttp} only; `--http-max-head-bytes`).
   *
   * @default {16384}
   */
  maxHeadBytes?: number;
  /**
   * Most requests one connection may have under way, their responses not yet written; one
   * more (a client pipelining without reading) closes the connection ({@linkcode serveHttp}
   * only; `--http-max-pipelined`).
   *
   * @default {16}
   */
  maxPipelined?: number;
  /**
   * Where the transport's warnings go (descriptors exhausted, accepting again), with their
   * level, so that they follow the server's log format ({@linkcode serveHttp} only). By
   * default they are written to stderr as text.
   */
  log?: (level: "warn", message: string) => void;
  /**
   * With `cert`, milliseconds a client has to complete its TLS handshake before it is cut
   * ({@linkcode serveHttp} only; `--handshake-timeout`).
   *
   * @default {10000}
   */
  handshakeTimeout?: number;
  /** Aborting it shuts the server down ({@linkcode serveHttp} only). */
  signal?: AbortSignal;
  /**
   * TLS certificate chain (PEM); with `key`, {@linkcode serveHttp} serves HTTPS (and so WSS and
   * SSE over TLS). Off (plain HTTP) unless given.
   */
  cert?: string;
  /** TLS private key (PEM) of `cert`. */
  key?: string;
}

/** A request handler to embed in another `Deno.serve` app, with a way to end its connections. */
export interface HttpHandler {
  /**
   * Answers one request.
   *
   * @param request The request.
   * @returns The response.
   */
  (request: Request): Promise<Response>;
  /** Ends every SSE response and WebSocket (flushing within `shutdownTimeout`) and stops timers. */
  close(): Promise<void>;
  /** Counters for metrics. */
  readonly metrics: Metrics;
}

/** A running HTTP door; shaped like `Deno.HttpServer`. */
export interface MessageHttpServer extends AsyncDisposable {
  /** The bound address. */
  readonly addr: Deno.NetAddr;
  /** The hub it serves. */
  readonly hub: MessageStream;
  /** Counters for metrics. */
  readonly metrics: Metrics;
  /** Resolves when the server has shut down. */
  readonly finished: Promise<void>;
  /** Sockets open now, idle ones included (what `maxConnections` counts). */
  readonly connections: number;
  /**
   * Ends every SSE response and WebSocket, stops accepting, and waits for open requests.
   * Safe to call more than once.
   */
  shutdown(): Promise<void>;
}

/** The door's state: routes requests, tracks SSE responses and WebSockets. */
class HttpDoor {
  readonly hub: MessageStream;
  readonly metrics: Metrics;
  readonly auth: Auth | undefined;
  readonly maxBody: number;
  readonly #sse: SseDoor;
  readonly #ws: WsDoor;
  readonly #rates: RateMeter;
  readonly #listPage: number;
  readonly #listPageMax: number;
  readonly #cors: string | undefined;
  readonly #hosts: AllowedHosts;
  /**
   * Served over TLS. The door's own transport speaks HTTP/1.1 only (a `Host` header always);
   * embedded in a `Deno.serve` app over TLS, browsers may speak HTTP/2, whose `:authority` stands
   * for `Host` and which Deno puts in the request's URL, not in a `host` header.
   */
  readonly #authorityInUrl: boolean;
  readonly #shutdownTimeout: number;
  #closing: Promise<void> | undefined;

  constructor(hub: MessageStream, options: HttpOptions, bound?: string) {
    this.hub = hub;
    this.#hosts = AllowedHosts.from(options.allowedHosts, bound);
    this.#authorityInUrl = options.cert !== undefined;
    this.metrics = options.metrics ?? new Metrics();
    this.auth = Auth.from(options.tokens);
    this.maxBody = intOption("maxBodyBytes", options.maxBodyBytes, 1 << 20, 1);
    this.#sse = new SseDoor(hub, this.metrics, {
      heartbeatInterval: intOption("heartbeatInterval", options.heartbeatInterval, 15_000, 1),
      retry: intOption("retry", options.retry, 1000, 0),
      maxBufferBytes: intOption("maxSseBufferBytes", options.maxSseBufferBytes, 8 << 20, 1),
    });
    this.#ws = new WsDoor(hub, this.metrics, this.auth, {
      maxOutboundBytes: intOption("maxOutboundBytes", options.maxOutboundBytes, 8 << 20, 1),
      maxMessageBytes: this.maxBody,
      authTimeout: intOption("authTimeout", options.authTimeout, 10_000, 1),
    });
    this.#rates = new RateMeter(intOption("rateWindow", options.rateWindow, 10_000, 1));
    this.#listPageMax = intOption("maxListPage", options.maxListPage, 1000, 1);
    this.#listPage = intOption(
      "listPage",
      options.listPage,
      Math.min(100, this.#listPageMax),
      1,
      this.#listPageMax,
    );
    this.#shutdownTimeout = intOption("shutdownTimeout", options.shutdownTimeout, 5_000, 0);
    this.#cors = options.corsOrigin;
    if (this.#cors !== undefined && this.#cors !== "*") {
      // The Origin a browser sends: scheme://host[:port], nothing more.
      let origin: string | undefined;
      try {
        origin = new URL(this.#cors).origin;
      } catch {
        // not a URL
      }
      if (origin !== this.#cors) {
        throw new TypeError(
          `Option "corsOrigin" must be an origin such as https://app.example.com (or *), got ` +
            `"${this.#cors}"`,
        );
      }
    }
  }

  async handle(req: Request): Promise<Response> {
    let res: Response;
    try {
      res = await this.#route(req);
    } catch (e) {
      if (e instanceof HttpError) {
        this.metrics.error(e.code);
        res = new Response(JSON.stringify({ code: e.code, message: e.message }), {
          status: e.status,
          headers: { "content-type": JSON_TYPE, ...e.headers },
        });
      } else if (e instanceof LimitExceededError) {
        // Only the requester is refused; see docs/limits.md for the statuses.
        this.metrics.error("limit_exceeded");
        this.metrics.limitExceeded(e.limit);
        res = new Response(
          JSON.stringify({ code: "limit_exceeded", limit: e.limit, message: e.message }),
          { status: LIMIT_STATUS[e.limit], headers: { "content-type": JSON_TYPE } },
        );
      } else if (
        e instanceof Error &&
        (e.name === "EngineUnavailableError" || e.name === "StorageUnavailableError")
      ) {
        const code = e.name === "EngineUnavailableError"
          ? "engine_unavailable"
          : "storage_unavailable";
        this.metrics.error(code);
        // An EventSource given an error status stops for good: a transient failure is an event
        // stream that ends at once and says to retry (issue 12).
        res = req.method === "GET" &&
            (req.headers.get("accept") ?? "").includes("text/event-stream")
          ? this.#sse.unavailable(code, e.message)
          : new Response(
            JSON.stringify({ code, message: e.message }),
            { status: 503, headers: { "content-type": JSON_TYPE } },
          );
      } else if (e instanceof Error && e.name === "MessageTooLargeError") {
        this.metrics.error("message_too_large");
        res = new Response(
          JSON.stringify({ code: "message_too_large", message: e.message }),
          { status: 413, headers: { "content-type": JSON_TYPE } },
        );
      } else {
        this.metrics.error("internal");
        res = new Response(
          JSON.stringify({ code: "internal", message: `Cannot answer: ${(e as Error).message}` }),
          { status: 500, headers: { "content-type": JSON_TYPE } },
        );
      }
    }
    if (this.#cors !== undefined && res.status !== 101) {
      try {
        res.headers.set("access-control-allow-origin", this.#cors);
      } catch {
        // immutable headers (upgrade responses)
      }
    }
    if (req.method === "HEAD" && res.body !== null) {
      // HEAD answers as GET would, without the body (RFC 9110, 9.3.2).
      await res.body.cancel();
      res = new Response(null, { status: res.status, headers: res.headers });
    }
    return res;
  }

  /** The request's Host: its header, or over TLS (HTTP/2, embedded) the authority in its URL. */
  #host(req: Request, url: URL): string | null {
    return req.headers.get("host") ?? (this.#authorityInUrl ? url.host : null);
  }

  #route(req: Request): Promise<Response> | Response {
    let url: URL;
    try {
      url = new URL(req.url);
    } catch {
      // The runtime builds the URL from the Host header: `127.0.0.1:80:x` or `a b` make none.
      const host = req.headers.get("host") ?? "";
      throw new HttpError(
        421,
        "host_not_allowed",
        `Host "${host.slice(0, 100)}" is not a host name and port (see --allowed-hosts)`,
      );
    }
    const path = url.pathname;
    const method = req.method;
    const host = this.#host(req, url);
    if (!this.#hosts.allows(host)) {
      throw new HttpError(
        421,
        "host_not_allowed",
        host === null
          ? "A Host header is required"
          : `Host "${host.slice(0, 100)}" is not served here (see --allowed-hosts)`,
      );
    }
    if (this.#closing) {
      throw new HttpError(503, "shutting_down", "Server shutting down");
    }
    if (method === "OPTIONS" && this.#cors !== undefined) {
      return new Response(null, {
        status: 204,
        headers: {
          "access-control-allow-methods": "GET, HEAD, POST, PUT, DELETE",
          "access-control-allow-headers": "authorization, content-type, last-event-id",
          "access-control-max-age": "600",
        },
      });
    }
    if (path === "/" || path === "/index.html") {
      allow(method, ["GET"]);
      return statusPage();
    }
    if (path === "/healthz") {
      allow(method, ["GET"]);
      // 503 while the engine is down, so that a load balancer routes around this node.
      const engine = this.metrics.engine;
      const up = engine.up();
      return json(up ? 200 : 503, {
        status: up ? "ok" : "engine_down",
        engine: engine.name,
        streams: this.hub.stats().streams,
      });
    }
    if (path === "/metrics") {
      allow(method, ["GET"]);
      this.#grant(req, url);
      return new Response(prometheus(this.metrics, this.hub.stats(), this.hub.memory), {
        headers: { "content-type": "text/plain; version=0.0.4; charset=utf-8" },
      });
    }
    if (path === "/ws") {
      allow(method, ["GET"]);
      return this.#websocket(req);
    }
    if (path === "/sse") {
      allow(method, ["GET"]);
      return this.#servePattern(req, url);
    }
    if (path === "/streams" || path === "/streams/") {
      allow(method, ["GET"]);
      return this.#list(url, this.#grant(req, url));
    }
    if (path.startsWith("/streams/")) {
      const parts = path.slice("/streams/".length).split("/");
      if (parts.length > 2 || (parts.length === 2 && parts[1] !== "header")) {
        throw new HttpError(404, "not_found", `No such resource "${path.slice(0, 300)}"`);
      }
      const name = this.#name(parts[0] as string);
      if (parts.length === 2) return this.#header(req, url, name);
      return this.#stream(req, url, name);
    }
    throw new HttpError(404, "not_found", `No such resource "${path.slice(0, 300)}"`);
  }

  #name(segment: string): string {
    let name: string;
    try {
      name = decodeURIComponent(segment);
    } catch {
      throw new HttpError(400, "invalid_stream", "Stream name is not valid percent-encoding");
    }
    const max = this.hub.maxStreamNameLength;
    if (name.length === 0 || name.length > max) {
      throw new HttpError(
        400,
        "invalid_stream",
        `Stream name must be a non-empty string of at most ${max} characters`,
      );
    }
    if (!name.isWellFormed()) {
      throw new HttpError(400, "invalid_stream", "Stream name must be well-formed Unicode");
    }
    return name;
  }

  /** The caller's grant: `undefined` when no auth is configured. */
  #grant(req: Request, url: URL): Grant | undefined {
    if (!this.auth) return undefined;
    const header = req.headers.get("authorization");
    let secret: string | null = null;
    if (header !== null) {
      const m = /^Bearer\s+(.+)$/i.exec(header);
      secret = m ? (m[1] as string).trim() : null;
    } else {
      secret = url.searchParams.get("token");
    }
    const grant = secret ? this.auth.check(secret) : undefined;
    if (!grant) {
      throw new HttpError(
        401,
        "unauthorized",
        secret ? "Invalid token" : "A token is required: send Authorization: Bearer <token>",
        { "www-authenticate": 'Bearer realm="msgstream"' },
      );
    }
    return grant;
  }

  #permit(grant: Grant | undefined, right: Right, name: string): void {
    if (grant && !grant[right](name)) throw new HttpError(403, "forbidden", forbidden(right, name));
  }

  /**
   * `GET /streams`: one page of the streams the caller may listen to, by name (UTF-16 code unit
   * order), those after `?after=` that match `?pattern=` (pattern.ts: `*` is any run), at most
   * `?limit=` of them: the wire's `list` action over HTTP. The walk over the hub's names
   * stops every `LIST_SLICE` names (listing.ts) to let the event loop run, so a listing never holds
   * it for long however many streams there are; only the page's streams are looked up.
   */
  async #list(url: URL, grant: Grant | undefined): Promise<Response> {
    const params = url.searchParams;
    const limit = this.#pageLimit(params.get("limit"));
    const after = params.get("after") ?? "";
    const pattern = params.get("pattern") ?? "*";
    try {
      checkPattern(pattern, this.hub.maxStreamNameLength);
    } catch (e) {
      throw new HttpError(400, "invalid_pattern", (e as Error).message);
    }
    // With an engine, the whole service as the engine holds it, not just what this node follows.
    const engine = this.hub.engine;
    const all = engine?.streams ? await engineNames(engine.streams(pattern)) : this.hub.names();
    const { names, more } = await pickNamesPausing(all, {
      after,
      limit,
      pattern,
      ...(grant ? { allow: (name: string) => grant.subscribe(name) } : {}),
    });
    const now = Date.now();
    const out = [];
    for (const name of names) {
      const info = engine ? await this.#engineInfo(name) : this.hub.info(name);
      if (!info) continue; // deleted during the walk
      const rate = this.#rates.rate(name, info.epoch, info.seq, now);
      out.push({
        name,
        listeners: info.listeners,
        seq: info.seq,
        epoch: info.epoch,
        hasHeader: info.hasHeader,
        rate: Math.round(rate * 100) / 100,
      });
    }
    this.#rates.prune(2 * limit, now, (name) => this.hub.info(name) !== undefined);
    const res = json(200, out);
    if (more) {
      const next = new URLSearchParams({ limit: String(limit), after: names.at(-1) as string });
      if (pattern !== "*") next.set("pattern", pattern);
      res.headers.set("link", `<?${next}>; rel="next"`);
    }
    return res;
  }

  /** A stream as the engine holds it, for a listing (`listeners` counts this node's). */
  async #engineInfo(
    name: string,
  ): Promise<{ listeners: number; seq: number; epoch: string; hasHeader: boolean } | undefined> {
    const stat = await this.hub.stat(name);
    if (!stat) return undefined;
    return {
      listeners: stat.listeners,
      seq: stat.seq,
      epoch: stat.epoch,
      hasHeader: stat.header !== null,
    };
  }

  /** The page size a listing asks for (`?limit=`), within the door's maximum. */
  #pageLimit(given: string | null): number {
    if (given === null || given === "") return this.#listPage;
    if (!/^[0-9]{1,15}$/.test(given) || Number(given) < 1) {
      throw new HttpError(
        400,
        "invalid_limit",
        `limit must be a whole number from 1 to ${this.#listPageMax}, got "${given.slice(0, 50)}"`,
      );
    }
    return Math.min(Number(given), this.#listPageMax);
  }

  async #stream(req: Request, url: URL, name: string): Promise<Response> {
    const method = req.method;
    allow(method, ["GET", "POST", "DELETE"]);
    const grant = this.#grant(req, url);
    if (method === "POST") {
      this.#permit(grant, "publish", name);
      const message = await readBody(req, this.maxBody, this.metrics, this.hub.codec);
      const { seq, epoch } = await this.hub.put(name, message);
      return json(200, { seq, epoch });
    }
    if (method === "DELETE") {
      this.#permit(grant, "publish", name);
      await this.hub.delete(name);
      return new Response(null, { status: 204 });
    }
    this.#permit(grant, "subscribe", name);
    if (method === "GET" && (req.headers.get("accept") ?? "").includes("text/event-stream")) {
      return this.#serveSse(req, url, name);
    }
    const stat = await this.hub.stat(name);
    if (!stat) throw new HttpError(404, "not_found", `No stream "${name}"`);
    return json(200, {
      name,
      listeners: stat.listeners,
      seq: stat.seq,
      epoch: stat.epoch,
      hasHeader: stat.header !== null,
    });
  }

  async #header(req: Request, url: URL, name: string): Promise<Response> {
    const method = req.method;
    allow(method, ["GET", "PUT", "DELETE"]);
    const grant = this.#grant(req, url);
    if (method === "PUT") {
      this.#permit(grant, "publish", name);
      await this.hub.header(name, await readBody(req, this.maxBody, this.metrics, this.hub.codec));
      return new Response(null, { status: 204 });
    }
    if (method === "DELETE") {
      this.#permit(grant, "publish", name);
      await this.hub.header(name, null);
      return new Response(null, { status: 204 });
    }
    this.#permit(grant, "subscribe", name);
    const header = (await this.hub.stat(name))?.header ?? null;
    if (header === null) throw new HttpError(404, "not_found", `Stream "${name}" has no header`);
    return new Response(this.hub.codec.encode(header), {
      headers: { "content-type": JSON_TYPE },
    });
  }

  /** `GET /sse?pattern=P`: every stream P matches, as Server-Sent Events (see sse.ts). */
  #servePattern(req: Request, url: URL): Promise<Response> {
    let pattern: string;
    try {
      pattern = strictParam(url, "pattern") ?? "";
    } catch {
      throw new HttpError(400, "invalid_pattern", 'Query "pattern" is not valid percent-encoding');
    }
    const max = this.hub.maxStreamNameLength;
    if (pattern.length === 0 || pattern.length > max || !pattern.isWellFormed()) {
      throw new HttpError(
        400,
        "invalid_pattern",
        `Query "pattern" must be a non-empty, well-formed string of at most ${max} characters`,
      );
    }
    const grant = this.#grant(req, url);
    if (grant && !grant.subscribePattern(pattern)) {
      throw new HttpError(403, "forbidden", forbiddenPattern(pattern));
    }
    // EventSource sends back the id of the pattern response it had: it may have missed events.
    return this.#sse.openPattern(pattern, Boolean(req.headers.get("last-event-id")));
  }

  #serveSse(req: Request, url: URL, name: string): Promise<Response> {
    const given = req.headers.get("last-event-id") || url.searchParams.get("since");
    // The client saw the stream end: 204 stops EventSource instead of listening anew.
    if (given && isEndId(given)) return Promise.resolve(new Response(null, { status: 204 }));
    let since: Position | undefined;
    if (given) {
      since = parsePosition(given);
      if (!since) {
        throw new HttpError(400, "invalid_since", 'A resume position must be "<epoch>:<seq>"');
      }
    }
    // ?create=false: a stream that does not exist (deleted while the client was away) ends the
    // response instead of being made anew.
    const create = url.searchParams.get("create");
    if (create !== null && create !== "true" && create !== "false") {
      throw new HttpError(400, "invalid_frame", 'Query "create" must be "true" or "false"');
    }
    return this.#sse.open(name, since, create !== "false");
  }

  #websocket(req: Request): Response {
    if ((req.headers.get("upgrade") ?? "").toLowerCase() !== "websocket") {
      throw new HttpError(426, "upgrade_required", "Expected a WebSocket upgrade", {
        upgrade: "websocket",
      });
    }
    // Browsers send Origin on every WebSocket; other clients need not. The request's own
    // origin, the CORS origin and (with --allowed-hosts) the listed hosts may connect.
    const origin = req.headers.get("origin");
    if (
      origin !== null && origin !== this.#cors &&
      !this.#hosts.allowsOrigin(origin, this.#host(req, new URL(req.url)))
    ) {
      throw new HttpError(
        403,
        "forbidden",
        `WebSocket from origin "${origin.slice(0, 200)}" not permitted (see --allowed-hosts)`,
      );
    }
    // Credentials on the upgrade (Authorization: Bearer, or ?token=) authenticate the socket as
    // they do REST and SSE requests (401 when wrong); without any, the client sends hello.
    const url = new URL(req.url);
    const given = req.headers.has("authorization") || url.searchParams.has("token");
    return this.#ws.accept(req, given ? this.#grant(req, url) : undefined);
  }

  close(): Promise<void> {
    this.#closing ??= this.#doClose();
    return this.#closing;
  }

  async #doClose(): Promise<void> {
    // SSE responses get `event: close`, sessions `close`; what has not drained in time is cut.
    await waitAtMost(Promise.all([this.#sse.end(), this.#ws.close()]), this.#shutdownTimeout);
    this.#sse.cut();
    this.#ws.cut();
  }
}

/** The transport's bounds among the door's options, those given. */
function transportLimits(options: HttpOptions): TransportLimits {
  const limits: TransportLimits = {};
  if (options.headerTimeout !== undefined) limits.headerTimeout = options.headerTimeout;
  if (options.requestTimeout !== undefined) limits.requestTimeout = options.requestTimeout;
  if (options.keepAliveTimeout !== undefined) limits.keepAliveTimeout = options.keepAliveTimeout;
  if (options.maxHeadBytes !== undefined) limits.maxHeaderBytes = options.maxHeadBytes;
  if (options.maxPipelined !== undefined) limits.maxPipelined = options.maxPipelined;
  if (options.handshakeTimeout !== undefined) limits.handshakeTimeout = options.handshakeTimeout;
  return limits;
}

/**
 * Makes the HTTP door's request handler, to embed in a `Deno.serve` app of your own.
 *
 * @param hub The hub to serve.
 * @param options Limits, auth, metrics (`hostname`, `port` and `signal` are ignored).
 * @returns The handler; call its `close()` before shutting the app down, so that long-lived
 * SSE responses and WebSockets end.
 * @throws {RangeError} When an option is out of range.
 * @throws {TypeError} When an allowed host is not a host name or `corsOrigin` is not an
 * origin.
 *
 * @example Embedding
 * ```ts
 * import { handler } from "@x/msgstream/http";
 * import { MessageStream } from "@x/msgstream";
 * import { assertEquals } from "@std/assert";
 *
 * const hub = new MessageStream();
 * await hub.header("job", { state: "running" });
 * const handle = handler(hub);
 * const res = await handle(new Request("http://localhost/streams/job/header"));
 * assertEquals(await res.json(), { state: "running" });
 * await handle.close();
 * ```
 */
export function handler(hub: MessageStream, options?: HttpOptions): HttpHandler {
  const door = new HttpDoor(hub, options ?? {});
  const fn = (request: Request): Promise<Response> => door.handle(request);
  return Object.assign(fn, { close: () => door.close(), metrics: door.metrics });
}

/**
 * Serves the HTTP door (SSE, WebSocket, REST, metrics, status page) for `hub` over HTTP/1.1 (or
 * HTTPS), through a transport that bounds every phase of a connection (`http_server.ts`: header,
 * request and keep-alive timeouts, head size, TLS handshake, open sockets; docs/http.md).
 *
 * @param hub The hub to serve; the TCP server's `server.hub` to share it.
 * @param options Address, limits, auth, metrics.
 * @returns The running server.
 * @throws {RangeError} When an option is out of range.
 * @throws {TypeError} When only one of `cert` and `key` is given, an allowed host is not a
 * host name or `corsOrigin` is not an origin.
 * @throws {Deno.errors.AddrInUse} When the port is taken.
 *
 * @example Follow a stream with Server-Sent Events
 * ```ts
 * import { serveHttp } from "@x/msgstream/http";
 * import { MessageStream } from "@x/msgstream";
 * import { assertStringIncludes } from "@std/assert";
 *
 * const hub = new MessageStream();
 * await hub.header("job", { state: "running" });
 * await using server = serveHttp(hub, { port: 0 });
 * const res = await fetch(`http://127.0.0.1:${server.addr.port}/streams/job`, {
 *   headers: { accept: "text/event-stream" },
 * });
 * const reader = res.body!.pipeThrough(new TextDecoderStream()).getReader();
 * let text = "";
 * while (!text.includes("event: header")) text += (await reader.read()).value;
 * assertStringIncludes(text, 'data: {"state":"running"}');
 * await reader.cancel();
 * ```
 */
export function serveHttp(hub: MessageStream, options?: HttpOptions): MessageHttpServer {
  options ??= {};
  const door = new HttpDoor(hub, options, options.hostname ?? "127.0.0.1");
  const port = intOption("port", options.port, DEFAULT_HTTP_PORT, 0, 65535);
  const hostname = options.hostname ?? "127.0.0.1";
  const maxConnections = intOption("maxConnections", options.maxConnections, 15_000, 1);
  const metrics = door.metrics;
  const transport = new HttpTransport((req) => door.handle(req), {
    hostname,
    port,
    cert: options.cert,
    key: options.key,
    maxConnections,
    ...transportLimits(options),
    onRefused() {
      metrics.error("limit_exceeded");
      metrics.limitExceeded("max_connections");
    },
    onError(code) {
      metrics.error(code);
    },
    onAcceptFailed() {
      metrics.error("descriptors_exhausted");
    },
    ...(options.log ? { log: (message: string) => options.log?.("warn", message) } : {}),
  });
  const shutdownTimeout = intOption("shutdownTimeout", options.shutdownTimeout, 5_000, 0);
  let shutdown: Promise<void> | undefined;
  const result: MessageHttpServer = {
    addr: transport.addr,
    hub,
    metrics,
    finished: transport.finished,
    get connections() {
      return transport.connections;
    },
    shutdown() {
      shutdown ??= (async () => {
        await door.close();
        // Requests under way finish; what is still open after the shutdown timeout is cut.
        const done = transport.shutdown();
        await waitAtMost(done, shutdownTimeout);
        transport.cut();
        await done;
      })();
      return shutdown;
    },
    [Symbol.asyncDispose]() {
      return this.shutdown();
    },
  };
  options.signal?.addEventListener("abort", () => result.shutdown(), { once: true });
  return result;
}
