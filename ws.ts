/**
 * WebSocket, the HTTP door's way to speak the wire protocol (`GET /ws`): one JSON frame per text
 * message, the same frames as a TCP line, handled by the same {@linkcode Session}. A message
 * over the size limit gets `line_too_long` and close code 1009. Through the door's own transport
 * the socket is a {@linkcode WireWebSocket} (ws_wire.ts), which refuses such a message as its
 * frames arrive, before it is kept, and writes each frame as a WebSocket frame built once for
 * every socket; embedded in a `Deno.serve` app (`handler()`), it is the runtime's `WebSocket`.
 *
 * ## Outbound: shared frames, one bound
 *
 * A frame goes to `socket.send` only while the socket's `bufferedAmount` (the bytes the runtime
 * holds for it, a copy each) is under {@linkcode WS_HIGH_WATER}. Beyond that the socket keeps a
 * queue of *references* to frame texts that every socket shares (decoded once per hub frame:
 * 150 sockets following one stream hold its frames once, not 150 times), and polls the socket
 * (every millisecond while it drains, backing off to {@linkcode WS_POLL_MAX} ms while it does
 * not) to hand them on. Queued bytes plus `bufferedAmount` count against the socket's bound
 * (`maxOutboundBytes`): past it the socket is cut (`slow_consumer`, close code 1008) and its
 * queue is dropped at once. Queued texts are reported to the hub's memory budget
 * (`hub.memory.outbound`) once each, however many sockets hold them (what they really cost);
 * while the budget is spent, a socket holding more than `CONNECTION_SHARE` (budget.ts) is cut
 * the same way. The queue holds strings, never views of the hub's slab, so the
 * slab contract (frame.ts, rule 3) holds however long a frame waits.
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
import { CONNECTION_SHARE } from "./budget.ts";
import type { Metrics } from "./metrics.ts";
import type { MessageStream } from "./mod.ts";
import { Session, type Transport } from "./protocol.ts";
import { upgradeOf } from "./http_server.ts";
import { textFrame, validKey, WireWebSocket } from "./ws_wire.ts";

/**
 * A frame as a socket takes it: its text (the runtime's WebSocket), or a whole WebSocket frame
 * (a {@linkcode WireWebSocket}); either is shared by every socket that sends it.
 */
export type Payload = string | Uint8Array;

/**
 * What a {@linkcode WsConnection} needs of its socket: the runtime's `WebSocket` (embedded in a
 * `Deno.serve` app) or a {@linkcode WireWebSocket} (the door's own transport).
 */
export type WsSocket = WebSocket | WireWebSocket;

const decoder = new TextDecoder();

/**
 * Bytes the runtime may hold for one socket (its `bufferedAmount`) before frames wait in the
 * socket's queue of shared texts instead (64 KiB).
 */
export const WS_HIGH_WATER = 64 * 1024;

/** Longest pause, in milliseconds, between polls of a socket whose queue does not drain. */
export const WS_POLL_MAX = 64;

/** The limits of one door's WebSockets (the HTTP door's options, checked). */
export interface WsLimits {
  /** Most bytes waiting to be sent on one socket before it is cut (`slow_consumer`). */
  maxOutboundBytes: number;
  /** Largest incoming message, in bytes (`line_too_long` beyond). */
  maxMessageBytes: number;
  /**
   * With tokens, milliseconds a socket has to authenticate (credentials on the upgrade, or
   * `hello`) before it is closed with `unauthorized`.
   */
  authTimeout: number;
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
  /** With tokens, how long a socket may go without a grant (see {@linkcode WsLimits}). */
  readonly authTimeout: number;
  readonly #conns = new Set<WsConnection>();
  readonly #text = new WeakMap<Uint8Array, string>();
  readonly #wire = new WeakMap<Uint8Array, Uint8Array>();
  /**
   * How many socket queues hold each frame text: its bytes count once in the hub's memory
   * budget however many sockets wait to send it.
   */
  readonly #held = new Map<Payload, number>();

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
    this.authTimeout = limits.authTimeout;
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
    // Through the door's own transport the socket is handed over; embedded in Deno.serve, the
    // runtime upgrades the request.
    const upgrade = upgradeOf(req);
    let socket: WsSocket;
    let response: Response;
    if (upgrade) {
      const key = req.headers.get("sec-websocket-key");
      if (!validKey(key) || req.headers.get("sec-websocket-version") !== "13") {
        return new Response(
          JSON.stringify({
            code: "invalid_request",
            message: "A WebSocket upgrade needs Sec-WebSocket-Key and Sec-WebSocket-Version: 13",
          }),
          {
            status: 400,
            headers: { "content-type": "application/json", "sec-websocket-version": "13" },
          },
        );
      }
      socket = WireWebSocket.accept(upgrade.socket, upgrade.head, key, {
        maxMessageBytes: this.maxMessage,
        idleTimeout: 60_000,
      });
      upgrade.taken = true;
      // Not sent: the socket has its 101 already.
      response = new Response(null, { status: 204 });
    } else ({ socket, response } = Deno.upgradeWebSocket(req, { idleTimeout: 60 }));
    const conn = new WsConnection(this, socket, grant);
    if (upgrade) void conn.closed.promise.then(upgrade.released);
    this.#conns.add(conn);
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
   * A wire frame as a whole WebSocket text frame (header and payload), built once per frame and
   * written as it is by every {@linkcode WireWebSocket}: a copy, never a view of the hub's slab.
   *
   * @param frame The frame's bytes.
   * @returns The WebSocket frame's bytes.
   */
  frameWire(frame: Uint8Array): Uint8Array {
    let wire = this.#wire.get(frame);
    if (wire === undefined) {
      const end = frame[frame.byteLength - 1] === 0x0a ? frame.byteLength - 1 : frame.byteLength;
      wire = textFrame(frame.subarray(0, end));
      this.#wire.set(frame, wire);
    }
    return wire;
  }

  /**
   * Notes that one more socket queue holds `text`; its bytes go into the memory budget when it
   * is the first.
   *
   * @param text A frame text, as {@linkcode WsDoor.frameText} gave it.
   * @param bytes Its UTF-8 bytes.
   */
  hold(text: Payload, bytes: number): void {
    const n = this.#held.get(text);
    if (n === undefined) {
      this.#held.set(text, 1);
      this.hub.memory.outbound += bytes;
    } else this.#held.set(text, n + 1);
  }

  /**
   * Notes that a socket queue no longer holds `text` (sent or dropped); its bytes leave the
   * memory budget with the last.
   *
   * @param text The frame text.
   * @param bytes Its UTF-8 bytes.
   */
  release(text: Payload, bytes: number): void {
    const n = this.#held.get(text) ?? 1;
    if (n <= 1) {
      this.#held.delete(text);
      this.hub.memory.outbound -= bytes;
    } else this.#held.set(text, n - 1);
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
   * Closes every socket: each session says `close`, then the socket closes once its queue has
   * drained.
   *
   * @returns When every socket has closed.
   */
  async close(): Promise<void> {
    const conns = [...this.#conns];
    // 1001 (Going Away): the server is shutting down, the client may reconnect elsewhere.
    for (const c of conns) c.goAway();
    await Promise.all(conns.map((c) => c.closed.promise));
  }

  /** Closes every socket left at once, dropping what is queued (after a shutdown's wait). */
  cut(): void {
    for (const c of [...this.#conns]) c.cut();
  }
}

/** One WebSocket: a {@linkcode Session} whose frames travel as text messages. */
export class WsConnection implements Transport {
  /** The socket's protocol session. */
  readonly session: Session;
  readonly #socket: WsSocket;
  readonly #door: WsDoor;
  #closing = false;
  #closed = false;
  #closeCode = 1000;
  /** Shared frame texts waiting for the socket, from `#head` on (sent ones are cleared). */
  #queue: (Payload | undefined)[] = [];
  /** The UTF-8 bytes of each queued text. */
  #sizes: number[] = [];
  #head = 0;
  /** Bytes queued here (not yet handed to the socket). */
  #queued = 0;
  #timer: ReturnType<typeof setTimeout> | undefined;
  /** The authentication deadline, while the socket has no grant. */
  #authTimer: ReturnType<typeof setTimeout> | undefined;
  /** The current pause between polls, in milliseconds. */
  #wait = 1;
  /** Close once the queue has drained (a session's `close`). */
  #closeWhenDrained = false;
  /** Reading is paused until the session's backlog falls (see `#holdBack`). */
  #paused = false;
  /** The backlog's bytes reported to the memory budget (see `backlogChanged`). */
  #held = 0;
  /** Resolved when the socket has closed. */
  readonly closed: PromiseWithResolvers<void> = Promise.withResolvers();

  /**
   * Serves an upgraded socket.
   *
   * @param door The door's WebSocket side.
   * @param socket The socket.
   */
  constructor(door: WsDoor, socket: WsSocket, grant?: Grant) {
    this.#door = door;
    this.#socket = socket;
    this.session = new Session(door.hub, this, { auth: door.auth, metrics: door.metrics, grant });
    socket.binaryType = "arraybuffer";
    socket.onmessage = (e: { data: unknown }) => this.#message(e.data);
    socket.onclose = () => this.#ended();
    socket.onerror = () => {
      // onclose follows: nothing else to do.
    };
    if (socket instanceof WireWebSocket) {
      // A message over the limit is refused as its frames arrive, before it is kept.
      socket.onoversize = () => this.#oversize();
    }
    if (door.auth && !this.session.authorized) {
      this.#authTimer = setTimeout(this.#authExpired, door.authTimeout);
    }
  }

  /** The authentication deadline passed: a socket without a grant goes, as on TCP. */
  #authExpired = (): void => {
    this.#authTimer = undefined;
    if (this.#closing || this.session.authorized) return;
    this.session.error(
      "unauthorized",
      `No valid "hello" within ${this.#door.authTimeout} ms: closing connection`,
    );
    this.#closeCode = 1008;
    this.session.close();
  };

  /** Says `close` and closes the socket with 1001 (Going Away) once its queue has drained. */
  goAway(): void {
    this.#closeCode = 1001;
    this.session.close();
  }

  /** Bytes waiting for this socket: queued here, plus what the runtime holds for it. */
  get waiting(): number {
    return this.#queued + (this.#closed ? 0 : this.#socket.bufferedAmount);
  }

  send(frame: Uint8Array): void {
    const socket = this.#socket;
    if (this.#closing || socket.readyState !== WebSocket.OPEN) return;
    const door = this.#door;
    const text = socket instanceof WireWebSocket ? door.frameWire(frame) : door.frameText(frame);
    const bytes = frame[frame.byteLength - 1] === 0x0a ? frame.byteLength - 1 : frame.byteLength;
    if (this.#head === this.#queue.length && socket.bufferedAmount < WS_HIGH_WATER) {
      this.#write(text);
      door.metrics.bytesOut += bytes;
      return;
    }
    this.#queue.push(text);
    this.#sizes.push(bytes);
    this.#queued += bytes;
    door.hold(text, bytes);
    if (
      this.#queued + socket.bufferedAmount > door.maxOutbound ||
      // While the memory budget is spent, a socket may hold only its share.
      (this.#queued > CONNECTION_SHARE && door.hub.memory.spentBesides(0))
    ) return this.#slow();
    if (this.#timer === undefined) {
      this.#wait = 1;
      this.#timer = setTimeout(this.#drain, 1);
    }
  }

  /** Hands queued texts to the socket while its `bufferedAmount` is under the high water. */
  #drain = (): void => {
    this.#timer = undefined;
    const socket = this.#socket;
    if (this.#closed || socket.readyState !== WebSocket.OPEN) return this.#drop();
    const queue = this.#queue;
    const start = this.#head;
    let head = start;
    let sent = 0;
    const door = this.#door;
    while (head < queue.length && socket.bufferedAmount < WS_HIGH_WATER) {
      const text = queue[head] as Payload;
      const bytes = this.#sizes[head++] as number;
      this.#write(text);
      door.release(text, bytes);
      queue[head - 1] = undefined;
      sent += bytes;
    }
    this.#head = head;
    this.#queued -= sent;
    this.#door.metrics.bytesOut += sent;
    if (head === queue.length) {
      this.#queue = [];
      this.#sizes = [];
      this.#head = 0;
      if (this.#closeWhenDrained) this.#closeSocket();
      return;
    }
    if (head > 1024 && head * 2 > queue.length) {
      this.#queue = queue.slice(head);
      this.#sizes = this.#sizes.slice(head);
      this.#head = 0;
    }
    // Draining: look again at once; stuck: back off, so a socket that does not read costs
    // little.
    this.#wait = head > start ? 1 : Math.min(this.#wait * 2, WS_POLL_MAX);
    this.#timer = setTimeout(this.#drain, this.#wait);
  };

  /** Hands one frame to the socket: a text, or a whole WebSocket frame for a WireWebSocket. */
  #write(payload: Payload): void {
    if (typeof payload === "string") (this.#socket as WebSocket).send(payload);
    else (this.#socket as WireWebSocket).sendRaw(payload);
  }

  /** Drops what is queued and stops polling. */
  #drop(): void {
    clearTimeout(this.#timer);
    this.#timer = undefined;
    const door = this.#door;
    for (let i = this.#head; i < this.#queue.length; i++) {
      door.release(this.#queue[i] as Payload, this.#sizes[i] as number);
    }
    this.#queue = [];
    this.#sizes = [];
    this.#head = 0;
    this.#queued = 0;
  }

  /** Flushes what is queued, then closes. */
  close(): void {
    if (this.#closing) return;
    this.#closing = true;
    if (this.#head === this.#queue.length) this.#closeSocket();
    else this.#closeWhenDrained = true;
  }

  /** Closes at once, dropping what is queued (shutdown, for sockets that did not drain). */
  cut(): void {
    this.#closing = true;
    this.#drop();
    this.session.drop();
    this.#closeSocket();
    // A socket whose peer does not read may never report its close: forget it now.
    this.#ended();
  }

  #closeSocket(): void {
    try {
      this.#socket.close(this.#closeCode);
    } catch {
      // already closed
    }
  }

  #slow(): void {
    const door = this.#door;
    door.metrics.slowConsumer();
    this.session.drop();
    this.#closing = true;
    this.#drop();
    // The socket does not take what it has: no frame can get through. Cut it.
    this.#closeCode = 1008;
    try {
      this.#socket.close(1008, "slow_consumer");
    } catch {
      // already closed
    }
  }

  #ended(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#closing = true;
    clearTimeout(this.#authTimer);
    this.#drop();
    this.session.drop();
    this.backlogChanged();
    this.#door.remove(this);
    this.closed.resolve();
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
    if (bytes > this.#door.maxMessage) return this.#oversize();
    this.session.handle(data);
    this.backlogChanged();
    this.#holdBack();
  }

  /**
   * The requests waiting behind one in progress count in the hub's memory budget (`lines`), as
   * the TCP door's do.
   */
  backlogChanged(): void {
    const held = this.#closed ? 0 : this.session.backlog;
    if (held === this.#held) return;
    this.#door.hub.memory.lines += held - this.#held;
    this.#held = held;
  }

  /**
   * Requests waiting behind one in progress (a listen, a pattern join, an engine call) past one
   * message's worth: stop reading the socket until they fall back under it, as the TCP door
   * does, so that a peer pipelining behind a slow join is held back by TCP, not buffered here.
   * (An embedded door's runtime WebSocket cannot pause: there the session queues them.)
   */
  #holdBack(): void {
    const socket = this.#socket;
    if (this.#paused || !(socket instanceof WireWebSocket)) return;
    const room = this.session.backlogAtMost(this.#door.maxMessage);
    if (!room) return;
    this.#paused = true;
    socket.pause();
    room.then(() => {
      this.#paused = false;
      if (!this.#closed) socket.resume();
    });
  }

  /** An incoming message passed the limit: say so, close with 1009 (Message Too Big). */
  #oversize(): void {
    const max = this.#door.maxMessage;
    this.session.error("line_too_long", `Message longer than ${max} bytes: closing connection`);
    this.#closeCode = 1009;
    this.session.close();
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
