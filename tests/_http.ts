/**
 * Helpers for tests of the HTTP door (http.ts, sse.ts, ws.ts): start a door on a free port,
 * send REST requests, check JSON errors, and a WebSocket client whose every read has a
 * deadline ({@linkcode TIMEOUT} unless given).
 *
 * @example
 * ```ts
 * import { assertEquals } from "@std/assert";
 * import { post, startHttp } from "./_http.ts";
 *
 * const [server, base] = startHttp();
 * const res = await post(base, "/streams/job", { done: 1 });
 * assertEquals((await res.json()).seq, 1);
 * await server.shutdown();
 * ```
 *
 * @module
 */

import { assertEquals } from "@std/assert";
import { MessageStream } from "../mod.ts";
import { type HttpOptions, type MessageHttpServer, serveHttp } from "../http.ts";
import { deadline, TIMEOUT } from "./_wait.ts";

/**
 * Serves the HTTP door for `hub` on a free port.
 *
 * @param hub The hub.
 * @param options The door's options (`port` is 0).
 * @returns The server and its base URL.
 */
export function startHttp(
  hub: MessageStream = new MessageStream(),
  options: HttpOptions = {},
): [MessageHttpServer, string] {
  const server = serveHttp(hub, { ...options, port: 0 });
  return [server, `http://127.0.0.1:${server.addr.port}`];
}

/**
 * Fetches with a deadline.
 *
 * @param url The URL.
 * @param init The request's options.
 * @returns The response.
 * @throws {TimeoutError} When no response comes in time.
 */
export function request(url: string, init: RequestInit = {}): Promise<Response> {
  return deadline(fetch(url, init), `the response to ${init.method ?? "GET"} ${url}`);
}

/**
 * `POST`s a JSON body.
 *
 * @param base The base URL.
 * @param path The path.
 * @param body The body, encoded as JSON.
 * @param headers More request headers.
 * @returns The response.
 */
export function post(
  base: string,
  path: string,
  body: unknown,
  headers: Record<string, string> = {},
): Promise<Response> {
  return request(base + path, {
    method: "POST",
    headers: { "content-type": "application/json", ...headers },
    body: JSON.stringify(body),
  });
}

/**
 * Asks for a stream as Server-Sent Events, without checking the answer (see `openSse` for a
 * reader of a good one).
 *
 * @param base The base URL.
 * @param name The stream.
 * @param headers More request headers.
 * @param query A query string, with its `?`.
 * @returns The response.
 */
export function sse(
  base: string,
  name: string,
  headers: Record<string, string> = {},
  query = "",
): Promise<Response> {
  return request(`${base}/streams/${encodeURIComponent(name)}${query}`, {
    headers: { accept: "text/event-stream", ...headers },
  });
}

/**
 * Asserts an error response: its status and its JSON `{code, message}`.
 *
 * @param res The response.
 * @param status The status.
 * @param code The error code.
 */
export async function assertError(res: Response, status: number, code: string): Promise<void> {
  const body = await deadline(res.json(), "the error body");
  assertEquals([res.status, body.code], [status, code], JSON.stringify(body));
  assertEquals(typeof body.message, "string");
  assertEquals(res.headers.get("content-type"), "application/json; charset=utf-8");
}

/** A WebSocket client that queues messages for awaiting. */
export class Ws {
  /** The socket. */
  readonly socket: WebSocket;
  /** Resolves with the close event. */
  readonly closed: Promise<CloseEvent>;
  readonly #queue: (string | ArrayBuffer)[] = [];
  #wake: (() => void) | undefined;

  private constructor(socket: WebSocket) {
    this.socket = socket;
    socket.onmessage = (e) => {
      this.#queue.push(e.data);
      this.#wake?.();
    };
    this.closed = new Promise((resolve) => {
      socket.onclose = (e) => {
        resolve(e);
        this.#wake?.();
      };
    });
  }

  /**
   * Opens a socket.
   *
   * @param url The `ws://` URL.
   * @returns The open client.
   * @throws {TimeoutError} When it does not open in time.
   */
  static async open(url: string): Promise<Ws> {
    const socket = new WebSocket(url);
    const ws = new Ws(socket);
    await deadline(
      new Promise((resolve, reject) => {
        socket.onopen = resolve;
        socket.onerror = reject;
      }),
      `the WebSocket ${url} to open`,
    );
    return ws;
  }

  /**
   * Sends a frame: text as it is, anything else as JSON.
   *
   * @param frame The frame.
   */
  send(frame: unknown): void {
    this.socket.send(typeof frame === "string" ? frame : JSON.stringify(frame));
  }

  /**
   * The next message, parsed as JSON.
   *
   * @param ms The deadline in milliseconds.
   * @returns The frame.
   * @throws {Error} When the socket closes first.
   * @throws {TimeoutError} When no message comes in time.
   */
  read(ms: number = TIMEOUT): Promise<Record<string, unknown>> {
    return deadline(
      (async () => {
        while (this.#queue.length === 0) {
          if (this.socket.readyState === WebSocket.CLOSED) throw new Error("WebSocket closed");
          await new Promise<void>((resolve) => this.#wake = resolve);
        }
        const data = this.#queue.shift();
        assertEquals(typeof data, "string", "the server sends text frames only");
        return JSON.parse(data as string);
      })(),
      "the next WebSocket message",
      ms,
    );
  }

  /**
   * The close event, once the socket has closed.
   *
   * @param ms The deadline in milliseconds.
   * @returns The close event.
   * @throws {TimeoutError} When the socket does not close in time.
   */
  ended(ms: number = TIMEOUT): Promise<CloseEvent> {
    return deadline(this.closed, "the WebSocket to close", ms);
  }

  /**
   * Closes the socket and waits for it to be closed.
   *
   * @returns When closed.
   */
  async close(): Promise<void> {
    if (this.socket.readyState !== WebSocket.CLOSED) this.socket.close();
    await this.ended();
  }
}
