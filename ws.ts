/**
 * WebSocket, the HTTP door's way to speak the wire protocol (`GET /ws`): one JSON frame per text
 * message, the same frames as a TCP line, handled by the same {@linkcode Session}. A socket
 * that does not read is cut (`slow_consumer`, close code 1008); a message over the size limit
 * gets `line_too_long` and close code 1009.
 *
 * @example Accept an upgrade in a `Deno.serve` handler
 * ```ts ignore
 * import { WsDoor } from "./ws.ts";
 * import { Metrics } from "./metrics.ts";
 * import { MessageStream } from "./mod.ts";
 *
 * const door = new WsDoor(new MessageStream(), new Metrics(), undefined, {
 *   maxOutboundBytes: 8 << 20,
 *   maxMessageBytes: 1 << 20,
 * });
 * Deno.serve((req) => door.accept(req));
 * ```
 *
 * @module
 */

import type { Auth, Grant } from "./auth.ts";
import type { Metrics } from "./metrics.ts";
import type { MessageStream } from "./mod.ts";
import { Session, type Transport } from "./protocol.ts";

const decoder = new TextDecoder();

/** The limits of one door's WebSockets (the HTTP door's options, checked). */
export interface WsLimits {
  /** Most bytes waiting to be sent on one socket before it is cut (`slow_consumer`). */
  maxOutboundBytes: number;
  /** Largest incoming message, in bytes (`line_too_long` beyond). */
  maxMessageBytes: number;
}

/** Every WebSocket of one HTTP door: their sessions, the shared frame text, shutdown. */
export class WsDoor {
  /** The hub the sessions use. */
  readonly hub: MessageStream;
  /** The shared counters. */
  readonly metrics: Metrics;
  /** Required tokens, if any. */
  readonly auth: Auth | undefined;
  /** Most bytes waiting on one socket. */
  readonly maxOutbound: number;
  /** Largest incoming message, in bytes. */
  readonly maxMessage: number;
  readonly #conns = new Set<WsConnection>();
  readonly #text = new WeakMap<Uint8Array, string>();

  /**
   * Creates the door's WebSocket side.
   *
   * @param hub The hub.
   * @param metrics The shared counters.
   * @param auth Required tokens, if any.
   * @param limits Outbound and message limits.
   */
  constructor(hub: MessageStream, metrics: Metrics, auth: Auth | undefined, limits: WsLimits) {
    this.hub = hub;
    this.metrics = metrics;
    this.auth = auth;
    this.maxOutbound = limits.maxOutboundBytes;
    this.maxMessage = limits.maxMessageBytes;
  }

  /**
   * Upgrades a request (the router has checked its method, `Upgrade` and `Origin`) and serves
   * the socket with its own session.
   *
   * @param req The upgrade request.
   * @returns The `101` response.
   * @throws {TypeError} When the request is not a WebSocket upgrade.
   */
  accept(req: Request, grant?: Grant): Response {
    const { socket, response } = Deno.upgradeWebSocket(req, { idleTimeout: 60 });
    this.#conns.add(new WsConnection(this, socket, grant));
    this.metrics.opened("websocket");
    return response;
  }

  /**
   * A wire frame as WebSocket text (without its newline), decoded once per frame and shared by
   * every socket.
   *
   * @param frame The frame's bytes.
   * @returns Its text.
   */
  frameText(frame: Uint8Array): string {
    let text = this.#text.get(frame);
    if (text === undefined) {
      const end = frame[frame.byteLength - 1] === 0x0a ? frame.byteLength - 1 : frame.byteLength;
      text = decoder.decode(frame.subarray(0, end));
      this.#text.set(frame, text);
    }
    return text;
  }

  /**
   * Forgets a socket that closed.
   *
   * @param c The socket's connection.
   */
  remove(c: WsConnection): void {
    if (this.#conns.delete(c)) this.metrics.closed("websocket");
  }

  /**
   * Closes every socket: each session says `close`, then the socket closes.
   *
   * @returns When every socket has closed.
   */
  async close(): Promise<void> {
    const conns = [...this.#conns];
    // 1001 (Going Away): the server is shutting down, the client may reconnect elsewhere.
    for (const c of conns) c.goAway();
    await Promise.all(conns.map((c) => c.closed.promise));
  }
}

/** One WebSocket: a {@linkcode Session} whose frames travel as text messages. */
export class WsConnection implements Transport {
  /** The socket's protocol session. */
  readonly session: Session;
  readonly #socket: WebSocket;
  readonly #door: WsDoor;
  #closing = false;
  #closeCode = 1000;
  /** Resolved when the socket has closed. */
  readonly closed: PromiseWithResolvers<void> = Promise.withResolvers();

  /**
   * Serves an upgraded socket.
   *
   * @param door The door's WebSocket side.
   * @param socket The socket.
   */
  constructor(door: WsDoor, socket: WebSocket, grant?: Grant) {
    this.#door = door;
    this.#socket = socket;
    this.session = new Session(door.hub, this, { auth: door.auth, metrics: door.metrics, grant });
    socket.binaryType = "arraybuffer";
    socket.onmessage = (e) => this.#message(e.data);
    socket.onclose = () => {
      this.#closing = true;
      this.session.drop();
      door.remove(this);
      this.closed.resolve();
    };
    socket.onerror = () => {
      // onclose follows: nothing else to do.
    };
  }

  /** Says `close` and closes the socket with 1001 (Going Away) once its queue has drained. */
  goAway(): void {
    this.#closeCode = 1001;
    this.session.close();
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
    const max = this.#door.maxMessage;
    if (bytes > max) {
      this.session.error("line_too_long", `Message longer than ${max} bytes: closing connection`);
      this.#closeCode = 1009;
      this.session.close();
      return;
    }
    this.session.handle(data);
  }
}

/** The UTF-8 byte length of a string, without encoding it. */
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
