/**
 * The msgstream HTTP door: browsers and HTTP clients reach the same hub as TCP clients.
 *
 * - **Server-Sent Events**: `GET /streams/{name}` with `Accept: text/event-stream` sends the
 *   header first (`event: header`), then puts (`event: put`), `event: end` on delete and
 *   `event: reset` when a resume position is not covered by history. Every event has
 *   `id: <epoch>:<seq>`, so a browser's `EventSource` resumes through `Last-Event-ID` by
 *   itself; other clients may pass `?since=<epoch>:<seq>`. A resume delivers every missed put
 *   exactly once; of the header changes at the resume position only the newest is sent again.
 *   Comment heartbeats (`: hb`) keep proxies from closing idle streams. `event: close`
 *   (`data: {code, message}`) says why the server ended the response (`shutdown`,
 *   `slow_consumer`); after `event: end` (the stream was deleted) call `close()`.
 * - **WebSocket**: `GET /ws` speaks the TCP protocol's JSON frames, one per text message.
 * - **REST**: `POST /streams/{name}` puts, `PUT`/`DELETE /streams/{name}/header` set and clear
 *   the header, `DELETE /streams/{name}` deletes, `GET /streams` lists, `GET
 *   /streams/{name}/header` reads the header. Errors are JSON `{code, message}`.
 * - **`GET /metrics`** (Prometheus text), **`GET /healthz`**, and a live status page at `GET /`.
 *
 * Auth uses the TCP server's tokens: `Authorization: Bearer <secret>`, or `?token=<secret>`
 * where a browser cannot set headers (`EventSource`).
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

import { concat } from "@std/bytes/concat";
import type { Listener, MessageStream, Position, StreamEvent } from "./mod.ts";
import { type ErrorCode, Session, type Transport } from "./protocol.ts";
import { Auth, forbidden, type Grant, type Right, type Token } from "./auth.ts";
import { Metrics, prometheus } from "./metrics.ts";

export { Metrics } from "./metrics.ts";
export type { Token } from "./auth.ts";

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
   * Milliseconds `shutdown()` waits for SSE responses and WebSockets to flush before cutting
   * them.
   *
   * @default {5000}
   */
  shutdownTimeout?: number;
  /** Aborting it shuts the server down ({@linkcode serveHttp} only). */
  signal?: AbortSignal;
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
  /**
   * Ends every SSE response and WebSocket, stops accepting, and waits for open requests.
   * Safe to call more than once.
   */
  shutdown(): Promise<void>;
}

/** Error codes of the HTTP door beyond the wire protocol's. */
type HttpErrorCode =
  | ErrorCode
  | "not_found"
  | "method_not_allowed"
  | "payload_too_large"
  | "unsupported_media_type"
  | "upgrade_required"
  | "shutting_down";

const encoder = new TextEncoder();
const decoder = new TextDecoder();
const HEARTBEAT = encoder.encode(": hb\n\n");
const JSON_TYPE = "application/json; charset=utf-8";

function utf8Length(s: string): number {
  let n = s.length;
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if (c >= 0x800) {
      // Surrogate pairs count 2 units and 4 bytes; other units from here are 3 bytes.
      n += c >= 0xd800 && c <= 0xdbff ? 0 : 2;
    } else if (c >= 0x80) n += 1;
  }
  return n;
}

function checkInt(name: string, value: number | undefined, fallback: number, min: number): number {
  const v = value ?? fallback;
  if (!Number.isSafeInteger(v) || v < min) {
    throw new RangeError(`Option "${name}" must be an integer of at least ${min}, got ${v}`);
  }
  return v;
}

/** Parses `<epoch>:<seq>` (an SSE id) or returns undefined. */
function parsePosition(text: string): Position | undefined {
  const i = text.lastIndexOf(":");
  if (i <= 0) return undefined;
  const seqText = text.slice(i + 1);
  const seq = Number(seqText);
  if (!/^\d+$/.test(seqText) || !Number.isSafeInteger(seq)) return undefined;
  return { epoch: text.slice(0, i), seq };
}

/** Measures each stream's message rate from seq samples taken when the list is asked for. */
class RateMeter {
  readonly #window: number;
  #samples = new Map<string, { epoch: string; points: number[] }>();

  constructor(window: number) {
    this.#window = window;
  }

  rate(name: string, epoch: string, seq: number, now: number): number {
    let s = this.#samples.get(name);
    if (!s || s.epoch !== epoch) {
      s = { epoch, points: [] };
      this.#samples.set(name, s);
    }
    const p = s.points; // flat [time, seq, time, seq, …], oldest first
    if (p.length === 0 || now - (p[p.length - 2] as number) >= 200) p.push(now, seq);
    // Keep the newest sample older than the window, so the rate spans the whole window.
    while (p.length >= 4 && (p[2] as number) <= now - this.#window) p.splice(0, 2);
    const t0 = p[0] as number;
    const s0 = p[1] as number;
    const dt = now - t0;
    return dt >= 500 ? Math.max(0, seq - s0) * 1000 / dt : 0;
  }

  /** Forgets streams not in `names`. */
  prune(names: Set<string>): void {
    for (const name of this.#samples.keys()) if (!names.has(name)) this.#samples.delete(name);
  }
}

/** One SSE response: a hub listener whose body is a bounded, pull-based byte stream. */
class SseConnection implements Listener {
  readonly body: ReadableStream<Uint8Array>;
  /** Whether anything was sent since the last heartbeat sweep. */
  active = true;
  /** The sweep count when closing began. */
  closingSweep = -1;
  readonly #door: HttpDoor;
  #controller: ReadableStreamDefaultController<Uint8Array> | undefined;
  #chunks: Uint8Array[] = [];
  #queued = 0;
  #waiting = false;
  #closing = false;
  #done = false;
  #resumeAt = -1;
  #heldHeader: StreamEvent | undefined;

  constructor(door: HttpDoor, preamble: Uint8Array) {
    this.#door = door;
    this.body = new ReadableStream<Uint8Array>({
      start: (controller) => {
        this.#controller = controller;
      },
      pull: () => this.#pull(),
      cancel: () => this.#cancelled(),
    }, { highWaterMark: 0 });
    this.#push(preamble);
  }

  get done(): boolean {
    return this.#done;
  }

  put(event: StreamEvent): void {
    if (this.#closing) return;
    if (this.#resumeAt >= 0) {
      // Header changes replayed at the resume position may include the one the client saw
      // last: send only the newest, so the client never goes back to a stale header.
      if (event.kind === "header" && event.seq === this.#resumeAt) {
        this.#heldHeader = event;
        return;
      }
      this.resumed();
    }
    this.#push(this.#door.sseFrame(event));
    if (event.kind === "end") this.end();
  }

  /** Starts holding back header changes replayed at `seq` (see `put`). */
  resuming(seq: number): void {
    this.#resumeAt = seq;
  }

  /** Stops holding back; sends the newest header change held. */
  resumed(): void {
    this.#resumeAt = -1;
    const held = this.#heldHeader;
    this.#heldHeader = undefined;
    if (held && !this.#closing) this.#push(this.#door.sseFrame(held));
  }

  heartbeat(): void {
    if (!this.#closing) this.#push(HEARTBEAT);
  }

  /** Stops listening; sends `frame` (if any) after what is queued, then ends the response. */
  end(frame?: Uint8Array): void {
    if (this.#closing) return;
    this.#closing = true;
    this.closingSweep = this.#door.sweeps;
    this.#door.hub.endqueue(this);
    if (frame) this.#push(frame);
    else if (this.#waiting) this.#finish();
  }

  /** Ends the response at once, dropping what is queued. */
  cut(): void {
    if (this.#done) return;
    this.#closing = true;
    this.#done = true;
    this.#chunks = [];
    this.#queued = 0;
    this.#door.hub.endqueue(this);
    try {
      this.#controller?.error(new Error("SSE response cut"));
    } catch {
      // already closed
    }
    this.#door.removeSse(this);
  }

  #push(bytes: Uint8Array): void {
    this.active = true;
    if (this.#waiting) {
      this.#waiting = false;
      this.#emit(bytes);
      return;
    }
    this.#chunks.push(bytes);
    this.#queued += bytes.byteLength;
    if (this.#queued > this.#door.maxSseBuffer && !this.#closing) this.#slow();
  }

  #emit(bytes: Uint8Array): void {
    this.#door.metrics.bytesOut += bytes.byteLength;
    this.#controller?.enqueue(bytes);
  }

  #pull(): void {
    if (this.#done) return;
    if (this.#chunks.length > 0) {
      const buf = this.#chunks.length === 1 ? this.#chunks[0] as Uint8Array : concat(this.#chunks);
      this.#chunks = [];
      this.#queued = 0;
      this.#emit(buf);
      return;
    }
    if (this.#closing) return this.#finish();
    this.#waiting = true;
  }

  #finish(): void {
    if (this.#done) return;
    this.#done = true;
    this.#waiting = false;
    try {
      this.#controller?.close();
    } catch {
      // already closed
    }
    this.#door.removeSse(this);
  }

  #cancelled(): void {
    this.#done = true;
    this.#closing = true;
    this.#chunks = [];
    this.#queued = 0;
    this.#door.hub.endqueue(this);
    this.#door.removeSse(this);
  }

  #slow(): void {
    const door = this.#door;
    door.metrics.slowConsumer();
    // What was queued is dropped: the client resumes from the last event it got.
    this.#chunks = [];
    this.#queued = 0;
    this.end(closeFrame(
      "slow_consumer",
      `More than ${door.maxSseBuffer} bytes waiting: closing response`,
    ));
  }
}

function closeFrame(code: string, message: string): Uint8Array {
  return encoder.encode(`event: close\ndata: ${JSON.stringify({ code, message })}\n\n`);
}

/** One WebSocket: a {@linkcode Session} whose frames travel as text messages. */
class WsConnection implements Transport {
  readonly session: Session;
  readonly #socket: WebSocket;
  readonly #door: HttpDoor;
  #closing = false;
  #closeCode = 1000;
  readonly closed: PromiseWithResolvers<void> = Promise.withResolvers();

  constructor(door: HttpDoor, socket: WebSocket) {
    this.#door = door;
    this.#socket = socket;
    this.session = new Session(door.hub, this, { auth: door.auth, metrics: door.metrics });
    socket.binaryType = "arraybuffer";
    socket.onmessage = (e) => this.#message(e.data);
    socket.onclose = () => {
      this.#closing = true;
      this.session.drop();
      door.removeWs(this);
      this.closed.resolve();
    };
    socket.onerror = () => {
      // onclose follows: nothing else to do.
    };
  }

  send(frame: Uint8Array): void {
    const socket = this.#socket;
    if (this.#closing || socket.readyState !== WebSocket.OPEN) return;
    if (socket.bufferedAmount > this.#door.maxOutbound) {
      this.#door.metrics.slowConsumer();
      this.session.drop();
      this.#closing = true;
      // The socket does not take what we have: no frame can get through. Cut it.
      socket.close(1008, "slow_consumer");
      return;
    }
    socket.send(this.#door.frameText(frame));
    this.#door.metrics.bytesOut += frame.byteLength - 1;
  }

  close(): void {
    if (this.#closing) return;
    this.#closing = true;
    try {
      this.#socket.close(this.#closeCode);
    } catch {
      // already closed
    }
  }

  #message(data: unknown): void {
    const metrics = this.#door.metrics;
    if (typeof data !== "string") {
      metrics.bytesIn += data instanceof ArrayBuffer ? data.byteLength : 0;
      this.session.error("invalid_frame", "Binary messages are not accepted: send JSON text");
      return;
    }
    const bytes = utf8Length(data);
    metrics.bytesIn += bytes;
    const max = this.#door.maxBody;
    if (bytes > max) {
      this.session.error("line_too_long", `Message longer than ${max} bytes: closing connection`);
      this.#closeCode = 1009;
      this.session.close();
      return;
    }
    this.session.handle(data);
  }
}

class HttpError extends Error {
  readonly status: number;
  readonly code: HttpErrorCode;
  readonly headers: Record<string, string>;
  constructor(
    status: number,
    code: HttpErrorCode,
    message: string,
    headers: Record<string, string> = {},
  ) {
    super(message);
    this.status = status;
    this.code = code;
    this.headers = headers;
  }
}

/** The door's state: routes requests, tracks SSE responses and WebSockets. */
class HttpDoor {
  readonly hub: MessageStream;
  readonly metrics: Metrics;
  readonly auth: Auth | undefined;
  readonly maxSseBuffer: number;
  readonly maxOutbound: number;
  readonly maxBody: number;
  sweeps = 0;
  readonly #heartbeat: number;
  readonly #preamble: Uint8Array;
  readonly #rates: RateMeter;
  readonly #cors: string | undefined;
  readonly #shutdownTimeout: number;
  readonly #sse = new Set<SseConnection>();
  readonly #ws = new Set<WsConnection>();
  readonly #sseText = new WeakMap<StreamEvent, Uint8Array>();
  readonly #frameText = new WeakMap<Uint8Array, string>();
  #sweeper: ReturnType<typeof setInterval> | undefined;
  #closing: Promise<void> | undefined;
  #sseGone: PromiseWithResolvers<void> | undefined;

  constructor(hub: MessageStream, options: HttpOptions) {
    this.hub = hub;
    this.metrics = options.metrics ?? new Metrics();
    this.auth = Auth.from(options.tokens);
    this.#heartbeat = checkInt("heartbeatInterval", options.heartbeatInterval, 15_000, 1);
    const retry = checkInt("retry", options.retry, 1000, 0);
    this.maxSseBuffer = checkInt("maxSseBufferBytes", options.maxSseBufferBytes, 8 << 20, 1);
    this.maxOutbound = checkInt("maxOutboundBytes", options.maxOutboundBytes, 8 << 20, 1);
    this.maxBody = checkInt("maxBodyBytes", options.maxBodyBytes, 1 << 20, 1);
    this.#rates = new RateMeter(checkInt("rateWindow", options.rateWindow, 10_000, 1));
    this.#shutdownTimeout = checkInt("shutdownTimeout", options.shutdownTimeout, 5_000, 0);
    this.#cors = options.corsOrigin;
    this.#preamble = encoder.encode(`retry: ${retry}\n\n`);
  }

  /** The SSE text of an event, built once and shared by every SSE response. */
  sseFrame(ev: StreamEvent): Uint8Array {
    let bytes = this.#sseText.get(ev);
    if (!bytes) {
      let data = this.hub.codec.encode(ev.message);
      if (/[\r\n]/.test(data)) data = data.split(/\r\n|\r|\n/).join("\ndata: ");
      bytes = encoder.encode(`id: ${ev.epoch}:${ev.seq}\nevent: ${ev.kind}\ndata: ${data}\n\n`);
      this.#sseText.set(ev, bytes);
    }
    return bytes;
  }

  /** A wire frame as WebSocket text (without its newline), decoded once per frame. */
  frameText(frame: Uint8Array): string {
    let text = this.#frameText.get(frame);
    if (text === undefined) {
      const end = frame[frame.byteLength - 1] === 0x0a ? frame.byteLength - 1 : frame.byteLength;
      text = decoder.decode(frame.subarray(0, end));
      this.#frameText.set(frame, text);
    }
    return text;
  }

  removeSse(c: SseConnection): void {
    if (!this.#sse.delete(c)) return;
    this.metrics.closed("sse");
    if (this.#sse.size === 0) {
      if (this.#sweeper !== undefined) clearInterval(this.#sweeper);
      this.#sweeper = undefined;
      this.#sseGone?.resolve();
    }
  }

  removeWs(c: WsConnection): void {
    if (!this.#ws.delete(c)) return;
    this.metrics.closed("websocket");
  }

  #sweep(): void {
    this.sweeps++;
    for (const c of this.#sse) {
      if (c.closingSweep >= 0) {
        // Closing since before the previous sweep and still not drained: the client is stuck.
        if (c.closingSweep < this.sweeps - 1) c.cut();
      } else if (!c.active) c.heartbeat();
      c.active = false;
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
      } else if (e instanceof Error && e.name === "EngineUnavailableError") {
        this.metrics.error("engine_unavailable");
        res = new Response(
          JSON.stringify({ code: "engine_unavailable", message: e.message }),
          { status: 503, headers: { "content-type": JSON_TYPE } },
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
    return res;
  }

  #route(req: Request): Promise<Response> | Response {
    const url = new URL(req.url);
    const path = url.pathname;
    const method = req.method;
    if (this.#closing) {
      throw new HttpError(503, "shutting_down", "Server shutting down");
    }
    if (method === "OPTIONS" && this.#cors !== undefined) {
      return new Response(null, {
        status: 204,
        headers: {
          "access-control-allow-methods": "GET, POST, PUT, DELETE",
          "access-control-allow-headers": "authorization, content-type, last-event-id",
          "access-control-max-age": "600",
        },
      });
    }
    if (path === "/" || path === "/index.html") {
      allow(method, ["GET"]);
      return new Response(STATUS_PAGE, {
        headers: {
          "content-type": "text/html; charset=utf-8",
          "cache-control": "no-cache",
          "content-security-policy":
            "default-src 'self'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; img-src data:",
        },
      });
    }
    if (path === "/healthz") {
      allow(method, ["GET"]);
      return json(200, { status: "ok", streams: this.hub.stats().streams });
    }
    if (path === "/metrics") {
      allow(method, ["GET"]);
      this.#grant(req, url);
      return new Response(prometheus(this.metrics, this.hub.stats()), {
        headers: { "content-type": "text/plain; version=0.0.4; charset=utf-8" },
      });
    }
    if (path === "/ws") {
      allow(method, ["GET"]);
      return this.#websocket(req);
    }
    if (path === "/streams" || path === "/streams/") {
      allow(method, ["GET"]);
      return this.#list(this.#grant(req, url));
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

  #list(grant: Grant | undefined): Response {
    const now = Date.now();
    const names = new Set<string>();
    const out = [];
    for (const info of this.hub.list()) {
      names.add(info.stream);
      const rate = this.#rates.rate(info.stream, info.epoch, info.seq, now);
      if (grant && !grant.subscribe(info.stream)) continue;
      out.push({
        name: info.stream,
        listeners: info.listeners,
        seq: info.seq,
        epoch: info.epoch,
        hasHeader: info.hasHeader,
        rate: Math.round(rate * 100) / 100,
      });
    }
    this.#rates.prune(names);
    return json(200, out);
  }

  async #stream(req: Request, url: URL, name: string): Promise<Response> {
    const method = req.method;
    allow(method, ["GET", "POST", "DELETE"]);
    const grant = this.#grant(req, url);
    if (method === "POST") {
      this.#permit(grant, "publish", name);
      const message = await this.#body(req);
      const { seq, epoch } = await this.hub.put(name, message);
      return json(200, { seq, epoch });
    }
    if (method === "DELETE") {
      this.#permit(grant, "publish", name);
      await this.hub.delete(name);
      return new Response(null, { status: 204 });
    }
    this.#permit(grant, "subscribe", name);
    if ((req.headers.get("accept") ?? "").includes("text/event-stream")) {
      return this.#serveSse(req, url, name);
    }
    const info = this.hub.info(name);
    if (!info) throw new HttpError(404, "not_found", `No stream "${name}"`);
    return json(200, {
      name,
      listeners: info.listeners,
      seq: info.seq,
      epoch: info.epoch,
      hasHeader: info.hasHeader,
    });
  }

  async #header(req: Request, url: URL, name: string): Promise<Response> {
    const method = req.method;
    allow(method, ["GET", "PUT", "DELETE"]);
    const grant = this.#grant(req, url);
    if (method === "PUT") {
      this.#permit(grant, "publish", name);
      await this.hub.header(name, await this.#body(req));
      return new Response(null, { status: 204 });
    }
    if (method === "DELETE") {
      this.#permit(grant, "publish", name);
      await this.hub.header(name, null);
      return new Response(null, { status: 204 });
    }
    this.#permit(grant, "subscribe", name);
    // The hub hands the header to a joining listener: join and leave at once.
    let header: unknown = null;
    const probe: Listener = {
      put(ev) {
        if (ev.kind === "header") header = ev.message;
      },
    };
    try {
      await this.hub.listen(name, probe);
    } finally {
      this.hub.hangup(name, probe);
    }
    if (header === null) throw new HttpError(404, "not_found", `Stream "${name}" has no header`);
    return new Response(this.hub.codec.encode(header), {
      headers: { "content-type": JSON_TYPE },
    });
  }

  async #body(req: Request): Promise<unknown> {
    const type = req.headers.get("content-type");
    if (type !== null) {
      const mime = (type.split(";")[0] as string).trim().toLowerCase();
      if (mime !== "application/json" && !mime.endsWith("+json")) {
        throw new HttpError(
          415,
          "unsupported_media_type",
          `Content-Type must be application/json, got "${type.slice(0, 100)}"`,
        );
      }
    }
    const max = this.maxBody;
    const tooLarge = () => new HttpError(413, "payload_too_large", `Body larger than ${max} bytes`);
    const length = req.headers.get("content-length");
    if (length !== null && Number(length) > max) throw tooLarge();
    const chunks: Uint8Array[] = [];
    let size = 0;
    if (req.body) {
      const reader = req.body.getReader();
      for (;;) {
        const { done, value } = await reader.read();
        if (done) break;
        size += value.byteLength;
        if (size > max) {
          await reader.cancel();
          throw tooLarge();
        }
        chunks.push(value);
      }
    }
    this.metrics.bytesIn += size;
    if (size === 0) throw new HttpError(400, "missing_message", "The body must be the message");
    let text: string;
    try {
      text = new TextDecoder("utf-8", { fatal: true }).decode(concat(chunks));
    } catch {
      throw new HttpError(400, "invalid_utf8", "Body is not valid UTF-8");
    }
    try {
      return this.hub.codec.decode(text);
    } catch (e) {
      throw new HttpError(400, "invalid_json", `Cannot decode body: ${(e as Error).message}`);
    }
  }

  async #serveSse(req: Request, url: URL, name: string): Promise<Response> {
    const given = req.headers.get("last-event-id") || url.searchParams.get("since");
    let since: Position | undefined;
    if (given) {
      since = parsePosition(given);
      if (!since) {
        throw new HttpError(400, "invalid_since", 'A resume position must be "<epoch>:<seq>"');
      }
    }
    const conn = new SseConnection(this, this.#preamble);
    this.#sse.add(conn);
    this.metrics.opened("sse");
    if (this.#sweeper === undefined) {
      this.#sweeper = setInterval(() => this.#sweep(), this.#heartbeat);
      Deno.unrefTimer(this.#sweeper);
    }
    if (since) conn.resuming(since.seq);
    try {
      await this.hub.listen(name, conn, since ? { since } : {});
    } catch (e) {
      conn.cut();
      throw e;
    }
    conn.resumed();
    // The client may have gone while the hub joined it.
    if (conn.done) this.hub.endqueue(conn);
    return new Response(conn.body, {
      headers: {
        "content-type": "text/event-stream; charset=utf-8",
        "cache-control": "no-cache",
        "x-accel-buffering": "no",
      },
    });
  }

  #websocket(req: Request): Response {
    if ((req.headers.get("upgrade") ?? "").toLowerCase() !== "websocket") {
      throw new HttpError(426, "upgrade_required", "Expected a WebSocket upgrade", {
        upgrade: "websocket",
      });
    }
    const origin = req.headers.get("origin");
    if (origin !== null && origin !== this.#cors) {
      let same = false;
      try {
        same = new URL(origin).host === req.headers.get("host");
      } catch {
        // not a URL
      }
      if (!same) {
        throw new HttpError(403, "forbidden", `WebSocket from origin "${origin}" not permitted`);
      }
    }
    const { socket, response } = Deno.upgradeWebSocket(req, { idleTimeout: 60 });
    const conn = new WsConnection(this, socket);
    this.#ws.add(conn);
    this.metrics.opened("websocket");
    return response;
  }

  close(): Promise<void> {
    this.#closing ??= this.#doClose();
    return this.#closing;
  }

  async #doClose(): Promise<void> {
    const sse = [...this.#sse];
    const ws = [...this.#ws];
    const bye = closeFrame("shutdown", "Server shutting down");
    for (const c of sse) c.end(bye);
    for (const c of ws) c.session.close();
    if (this.#sse.size > 0) this.#sseGone = Promise.withResolvers();
    const drained = Promise.all([
      ...ws.map((c) => c.closed.promise),
      this.#sseGone?.promise,
    ]);
    let timer: ReturnType<typeof setTimeout> | undefined;
    const timeout = new Promise<void>((resolve) => {
      timer = setTimeout(resolve, this.#shutdownTimeout);
    });
    await Promise.race([drained, timeout]);
    clearTimeout(timer);
    for (const c of sse) c.cut();
    if (this.#sweeper !== undefined) clearInterval(this.#sweeper);
    this.#sweeper = undefined;
  }
}

function allow(method: string, methods: string[]): void {
  if (!methods.includes(method)) {
    throw new HttpError(
      405,
      "method_not_allowed",
      `Method ${method} not allowed here: use ${methods.join(", ")}`,
      { allow: methods.join(", ") },
    );
  }
}

function json(status: number, body: unknown): Response {
  return new Response(JSON.stringify(body), {
    status,
    headers: { "content-type": JSON_TYPE },
  });
}

/**
 * Makes the HTTP door's request handler, to embed in a `Deno.serve` app of your own.
 *
 * @param hub The hub to serve.
 * @param options Limits, auth, metrics (`hostname`, `port` and `signal` are ignored).
 * @returns The handler; call its `close()` before shutting the app down, so that long-lived
 * SSE responses and WebSockets end.
 * @throws {RangeError} When an option is out of range.
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
export function handler(hub: MessageStream, options: HttpOptions = {}): HttpHandler {
  const door = new HttpDoor(hub, options);
  const fn = (request: Request): Promise<Response> => door.handle(request);
  return Object.assign(fn, { close: () => door.close(), metrics: door.metrics });
}

/**
 * Serves the HTTP door (SSE, WebSocket, REST, metrics, status page) for `hub` with
 * `Deno.serve`.
 *
 * @param hub The hub to serve; the TCP server's `server.hub` to share it.
 * @param options Address, limits, auth, metrics.
 * @returns The running server.
 * @throws {RangeError} When an option is out of range.
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
export function serveHttp(hub: MessageStream, options: HttpOptions = {}): MessageHttpServer {
  const door = new HttpDoor(hub, options);
  const port = checkInt("port", options.port, 51933, 0);
  const server = Deno.serve({
    hostname: options.hostname ?? "127.0.0.1",
    port,
    onListen() {},
  }, (req) => door.handle(req));
  let shutdown: Promise<void> | undefined;
  const result: MessageHttpServer = {
    addr: server.addr,
    hub,
    metrics: door.metrics,
    finished: server.finished,
    shutdown() {
      shutdown ??= (async () => {
        await door.close();
        await server.shutdown();
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

/** The status page: self-contained HTML, CSS and JavaScript; no network but this server. */
const STATUS_PAGE = `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>msgstream status</title>
<link rel="icon" href="data:,">
<style>
:root {
  color-scheme: light dark;
  --bg: #f6f7f9; --fg: #1c1e21; --muted: #5b6270; --card: #fff; --line: #dde1e6;
  --accent: #0b63ce; --sel: #e3eefc; --ok: #137333; --warn: #9a5b00; --bad: #b3261e;
}
@media (prefers-color-scheme: dark) {
  :root {
    --bg: #14161a; --fg: #e6e8eb; --muted: #9aa3ae; --card: #1d2026; --line: #343a43;
    --accent: #7cb2ff; --sel: #223249; --ok: #7fd196; --warn: #f2c04d; --bad: #ff8a80;
  }
}
* { box-sizing: border-box; }
body { margin: 0; font: 15px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif;
  background: var(--bg); color: var(--fg); }
header.top { display: flex; flex-wrap: wrap; gap: .4rem 1.25rem; align-items: baseline;
  padding: .8rem 1.25rem; background: var(--card); border-bottom: 1px solid var(--line); }
h1 { font-size: 1.2rem; margin: 0; }
h2 { font-size: 1.02rem; margin: 0 0 .6rem; }
h3 { font-size: .8rem; margin: 1rem 0 .35rem; text-transform: uppercase; letter-spacing: .06em;
  color: var(--muted); }
.muted { color: var(--muted); font-size: .9rem; }
main { display: grid; grid-template-columns: minmax(320px, 2fr) 3fr; gap: 1rem;
  padding: 1rem 1.25rem; align-items: start; }
@media (max-width: 820px) { main { grid-template-columns: 1fr; } }
section.card { background: var(--card); border: 1px solid var(--line); border-radius: 10px;
  padding: .9rem 1rem; min-width: 0; }
table { width: 100%; border-collapse: collapse; font-variant-numeric: tabular-nums; }
th, td { text-align: left; padding: .4rem .45rem; border-bottom: 1px solid var(--line); }
th { font-size: .78rem; color: var(--muted); font-weight: 600; text-transform: uppercase;
  letter-spacing: .04em; }
.num { text-align: right; }
tr.selected td { background: var(--sel); }
button.stream { font: inherit; font-weight: 600; color: var(--accent); background: none;
  border: 0; padding: .1rem .2rem; margin: -.1rem -.2rem; cursor: pointer; text-align: left;
  word-break: break-all; border-radius: 4px; }
button.stream:hover { text-decoration: underline; }
:focus-visible { outline: 3px solid var(--accent); outline-offset: 2px; }
.dot { display: inline-block; width: .55rem; height: .55rem; border-radius: 50%;
  background: var(--muted); margin-right: .35rem; vertical-align: middle; }
.dot.ok { background: var(--ok); } .dot.bad { background: var(--bad); }
.yes { color: var(--ok); font-weight: 600; }
pre { margin: 0; padding: .6rem .7rem; background: var(--bg); border: 1px solid var(--line);
  border-radius: 6px; overflow: auto; max-height: 14rem; font: 13px/1.4 ui-monospace,
  SFMono-Regular, Menlo, Consolas, monospace; white-space: pre-wrap; word-break: break-word; }
ol.tail { list-style: none; margin: 0; padding: 0; max-height: 55vh; overflow: auto;
  font: 13px/1.4 ui-monospace, SFMono-Regular, Menlo, Consolas, monospace;
  border: 1px solid var(--line); border-radius: 6px; background: var(--bg); }
ol.tail li { display: grid; grid-template-columns: 4.5rem 4.2rem 1fr; gap: .5rem;
  padding: .2rem .6rem; border-bottom: 1px solid var(--line); }
ol.tail li:last-child { border-bottom: 0; }
ol.tail .seq { color: var(--muted); text-align: right; }
ol.tail .k-header { color: var(--warn); } ol.tail .k-end, ol.tail .k-reset,
ol.tail .k-close { color: var(--bad); }
ol.tail .data { word-break: break-word; }
</style>
</head>
<body>
<header class="top">
  <h1>msgstream</h1>
  <span class="muted" role="status"><span class="dot" id="conn-dot"></span><span id="conn">connecting…</span></span>
  <span class="muted" id="totals"></span>
</header>
<main>
  <section class="card" aria-labelledby="streams-title">
    <h2 id="streams-title">Streams</h2>
    <table>
      <thead><tr><th scope="col">Stream</th><th scope="col" class="num">Listeners</th>
        <th scope="col" class="num">Seq</th><th scope="col" class="num">Msg/s</th>
        <th scope="col">Header</th></tr></thead>
      <tbody id="streams"></tbody>
    </table>
    <p class="muted" id="empty">No streams yet.</p>
  </section>
  <section class="card" aria-labelledby="detail-title">
    <h2 id="detail-title">Select a stream</h2>
    <p class="muted"><span class="dot" id="tail-dot"></span><span id="tail-state">Choose a stream on the left to follow it live.</span></p>
    <h3 id="header-title">Header</h3>
    <pre id="header" aria-labelledby="header-title">—</pre>
    <h3 id="tail-title">Live tail <span class="muted" id="tail-count"></span></h3>
    <ol class="tail" id="tail" role="log" aria-labelledby="tail-title"></ol>
  </section>
</main>
<script>
"use strict";
(function () {
  var token = new URLSearchParams(location.search).get("token");
  var init = token ? { headers: { Authorization: "Bearer " + token } } : {};
  var rows = new Map();
  var selected = null;
  var source = null;
  var received = 0;
  var MAX_TAIL = 200;
  function $(id) { return document.getElementById(id); }
  function pretty(text, indent) {
    try { return JSON.stringify(JSON.parse(text), null, indent); } catch (e) { return text; }
  }
  function rate(r) { return r >= 100 ? r.toFixed(0) : r >= 10 ? r.toFixed(1) : r.toFixed(2); }
  function setConn(ok, text) {
    $("conn-dot").className = "dot " + (ok ? "ok" : "bad");
    $("conn").textContent = text;
  }
  function cell(tr, cls) {
    var td = document.createElement("td");
    if (cls) td.className = cls;
    tr.appendChild(td);
    return td;
  }
  function addRow(name) {
    var tr = document.createElement("tr");
    var button = document.createElement("button");
    button.type = "button";
    button.className = "stream";
    button.textContent = name;
    button.setAttribute("aria-pressed", "false");
    button.addEventListener("click", function () { select(name); });
    cell(tr).appendChild(button);
    var row = { tr: tr, button: button, listeners: cell(tr, "num"), seq: cell(tr, "num"),
      rate: cell(tr, "num"), header: cell(tr) };
    var body = $("streams");
    var before = null;
    for (var i = 0; i < body.children.length; i++) {
      if (body.children[i].dataset.name > name) { before = body.children[i]; break; }
    }
    tr.dataset.name = name;
    body.insertBefore(tr, before);
    rows.set(name, row);
    markSelected();
    return row;
  }
  function render(list) {
    var seen = new Set();
    var listeners = 0;
    list.forEach(function (s) {
      seen.add(s.name);
      listeners += s.listeners;
      var row = rows.get(s.name) || addRow(s.name);
      row.listeners.textContent = s.listeners;
      row.seq.textContent = s.seq;
      row.rate.textContent = rate(s.rate);
      row.header.textContent = s.hasHeader ? "yes" : "—";
      row.header.className = s.hasHeader ? "yes" : "muted";
    });
    rows.forEach(function (row, name) {
      if (!seen.has(name)) { row.tr.remove(); rows.delete(name); }
    });
    $("empty").hidden = list.length > 0;
    $("totals").textContent = list.length + (list.length === 1 ? " stream · " : " streams · ") +
      listeners + (listeners === 1 ? " listener" : " listeners");
  }
  function refresh() {
    fetch("streams", init).then(function (res) {
      if (!res.ok) throw new Error("HTTP " + res.status);
      return res.json();
    }).then(function (list) {
      render(list);
      setConn(true, "live · updated " + new Date().toLocaleTimeString());
    }).catch(function (e) {
      setConn(false, "cannot reach the server (" + e.message + "); retrying");
    }).finally(function () { setTimeout(refresh, 1000); });
  }
  function markSelected() {
    rows.forEach(function (row, name) {
      var on = name === selected;
      row.tr.className = on ? "selected" : "";
      row.button.setAttribute("aria-pressed", on ? "true" : "false");
    });
  }
  function tail(kind, id, data) {
    var ol = $("tail");
    var li = document.createElement("li");
    var seq = document.createElement("span");
    seq.className = "seq";
    seq.textContent = id ? "#" + id.slice(id.lastIndexOf(":") + 1) : "";
    var k = document.createElement("span");
    k.className = "k-" + kind;
    k.textContent = kind;
    var d = document.createElement("span");
    d.className = "data";
    d.textContent = pretty(data);
    li.appendChild(seq); li.appendChild(k); li.appendChild(d);
    ol.insertBefore(li, ol.firstChild);
    while (ol.children.length > MAX_TAIL) ol.removeChild(ol.lastChild);
    received++;
    $("tail-count").textContent = "(" + received + " events, newest first)";
  }
  function tailState(ok, text) {
    $("tail-dot").className = "dot " + (ok ? "ok" : "bad");
    $("tail-state").textContent = text;
  }
  function select(name) {
    if (source) source.close();
    selected = name;
    received = 0;
    markSelected();
    history.replaceState(null, "", "#stream=" + encodeURIComponent(name));
    $("detail-title").textContent = name;
    $("header").textContent = "—";
    $("tail").textContent = "";
    $("tail-count").textContent = "";
    tailState(false, "connecting…");
    var url = "streams/" + encodeURIComponent(name) +
      (token ? "?token=" + encodeURIComponent(token) : "");
    var es = new EventSource(url);
    source = es;
    es.onopen = function () { tailState(true, "following live"); };
    es.onerror = function () {
      if (es.readyState === EventSource.CLOSED) tailState(false, "closed");
      else tailState(false, "reconnecting…");
    };
    es.addEventListener("header", function (e) {
      $("header").textContent = e.data === "null" ? "(no header)" : pretty(e.data, 2);
      tail("header", e.lastEventId, e.data);
    });
    es.addEventListener("put", function (e) { tail("put", e.lastEventId, e.data); });
    es.addEventListener("reset", function (e) { tail("reset", e.lastEventId, e.data); });
    es.addEventListener("close", function (e) { tail("close", "", e.data); });
    es.addEventListener("end", function (e) {
      tail("end", e.lastEventId, "stream deleted");
      $("header").textContent = "(stream deleted)";
      es.close();
      tailState(false, "stream deleted");
    });
  }
  var m = /^#stream=(.*)$/.exec(location.hash);
  if (m) { try { select(decodeURIComponent(m[1])); } catch (e) { /* bad hash */ } }
  refresh();
})();
</script>
</body>
</html>
`;
