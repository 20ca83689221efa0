/**
 * The WebSocket protocol (RFC 6455) over a socket of the HTTP door's transport, with the
 * incoming message size bounded as frames arrive: a message whose fragments would pass
 * `maxMessageBytes` is refused when the frame header that passes it arrives, before its payload
 * is kept, so that no client can make the server buffer more than the limit per socket.
 * (The runtime's own WebSocket assembles a fragmented message of any size before the
 * application sees it.)
 *
 * {@linkcode WireWebSocket} offers the part of the `WebSocket` interface that `ws.ts` uses
 * (`send`, `close`, `bufferedAmount`, `readyState`, `onmessage`, `onclose`), plus
 * `onoversize`. No extension (compression) and no subprotocol is negotiated; binary messages
 * are delivered as `ArrayBuffer`s; an idle socket is pinged and closed when the ping goes
 * unanswered.
 *
 * @example Answer an upgrade
 * ```ts ignore
 * import { acceptKey, WireWebSocket } from "./ws_wire.ts";
 *
 * // in a node:http "upgrade" listener, with (req, socket, head):
 * const ws = WireWebSocket.accept(socket, head, key, { maxMessageBytes: 1 << 20 });
 * ws.onmessage = (e) => ws.send(String(e.data));
 * ```
 *
 * @module
 */

import type { Duplex } from "node:stream";
import { Buffer } from "node:buffer";
import { createHash } from "node:crypto";
import process from "node:process";

const GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/**
 * Most frames one message may come in (16,384, the policy of the npm `ws` package): each costs
 * about a microsecond of CPU however small, so a message of a million one-byte fragments would
 * hold the event loop for a second. Past it the socket is closed with 1008.
 */
export const MAX_FRAGMENTS = 16_384;

/** The bounds of one socket. */
export interface WireLimits {
  /** Largest incoming message (all its fragments), in bytes. */
  maxMessageBytes: number;
  /**
   * Milliseconds without incoming bytes before the socket is pinged; as long again without an
   * answer and it is closed.
   *
   * @default {60000}
   */
  idleTimeout?: number;
  /**
   * Milliseconds the peer has to answer our close frame before the socket is cut.
   *
   * @default {2000}
   */
  closeTimeout?: number;
}

/**
 * The `Sec-WebSocket-Accept` value for a client's `Sec-WebSocket-Key`.
 *
 * @param key The client's key.
 * @returns The value to answer with.
 */
export function acceptKey(key: string): string {
  return createHash("sha1").update(key + GUID).digest("base64");
}

/**
 * Whether `key` is a valid `Sec-WebSocket-Key` (16 bytes in base64).
 *
 * @param key The header's value.
 * @returns `true` when it is.
 */
export function validKey(key: string | null): key is string {
  return key !== null && /^[A-Za-z0-9+/]{22}==$/.test(key);
}

/** What `onclose` gets. */
export interface WireCloseEvent {
  /** The close code (1005 when the peer gave none, 1006 when the socket just ended). */
  readonly code: number;
  /** The reason the peer gave. */
  readonly reason: string;
}

const CONNECTING = 0;
const OPEN = 1;
const CLOSING = 2;
const CLOSED = 3;

const textDecoder = new TextDecoder("utf-8", { fatal: true });
const EMPTY = Buffer.alloc(0);

/** Unsent bytes past which a ping is answered only once the socket has taken them. */
const PONG_BACKLOG = 16_384;
/** Milliseconds between looks at whether a held-back pong can go. */
const PONG_WAIT = 50;

/** A server-side WebSocket over a stream socket. */
export class WireWebSocket {
  /** As `WebSocket.readyState`: 1 open, 2 closing, 3 closed. */
  readyState: number = CONNECTING;
  /** Ignored (binary messages are `ArrayBuffer`s); for the `WebSocket` interface. */
  binaryType: string = "arraybuffer";
  /** Called with each complete message: `data` is a string (text) or an `ArrayBuffer`. */
  onmessage: ((e: { data: string | ArrayBuffer }) => void) | null = null;
  /** Called once when the socket has closed. */
  onclose: ((e: WireCloseEvent) => void) | null = null;
  /** Called on a socket error (`onclose` follows). */
  onerror: ((e: unknown) => void) | null = null;
  /**
   * Called when an incoming message would pass `maxMessageBytes`; its bytes are dropped from
   * then on and nothing more is read. The socket closes with 1009 unless the callback closes
   * it itself.
   */
  onoversize: (() => void) | null = null;

  readonly #socket: Duplex & { writableLength: number; setTimeout?: (ms: number) => void };
  readonly #max: number;
  readonly #idle: number;
  readonly #closeTimeout: number;
  /** The start of a frame header that has not all arrived. */
  #head: Buffer = EMPTY;
  /** The frame whose payload is arriving. */
  #inFrame:
    | { fin: boolean; opcode: number; len: number; got: number; mask: Buffer; chunks: Buffer[] }
    | undefined;
  /**
   * The message in progress (its fragments copied in one buffer that grows by doubling, up to
   * `maxMessageBytes`: a message of a million one-byte fragments costs a million bytes, not a
   * buffer object each), its opcode and size.
   */
  #msg: Buffer | undefined;
  #opcode = 0;
  #size = 0;
  /** Frames of the message in progress (see {@linkcode MAX_FRAGMENTS}). */
  #fragments = 0;
  /** Incoming bytes are dropped (an oversize message, or after a close). */
  #discard = false;
  #closeSent = false;
  #closeCode = 1006;
  #closeReason = "";
  #pinged = false;
  #corked = false;
  /** The payload of the latest ping not answered yet (pongs were waiting to be sent). */
  #pong: Buffer | undefined;
  #pongTimer: ReturnType<typeof setTimeout> | undefined;
  #idleTimer: ReturnType<typeof setTimeout> | undefined;
  #closeTimer: ReturnType<typeof setTimeout> | undefined;
  #lastIn = Date.now();

  /**
   * Completes the handshake on `socket` (writes the `101`) and serves it.
   *
   * @param socket The upgraded connection's socket.
   * @param head Bytes that came after the request's head.
   * @param key The request's `Sec-WebSocket-Key` (checked by {@linkcode validKey}).
   * @param limits Bounds.
   * @returns The open socket.
   */
  static accept(socket: Duplex, head: Uint8Array, key: string, limits: WireLimits): WireWebSocket {
    socket.write(
      "HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: Upgrade\r\n" +
        `sec-websocket-accept: ${acceptKey(key)}\r\n\r\n`,
    );
    // What came behind the request goes back into the socket, read once the caller has set
    // `onmessage` (the socket flows again on a later tick): read here it would be lost.
    if (head.byteLength > 0) socket.unshift(Buffer.from(head));
    return new WireWebSocket(socket, limits);
  }

  private constructor(socket: Duplex, limits: WireLimits) {
    this.#socket = socket as Duplex & { writableLength: number };
    this.#max = limits.maxMessageBytes;
    this.#idle = limits.idleTimeout ?? 60_000;
    this.#closeTimeout = limits.closeTimeout ?? 2_000;
    this.readyState = OPEN;
    socket.on("data", (chunk: Buffer) => this.#data(chunk));
    // The transport hands the socket over paused (see `HttpTransport`): read it now.
    socket.resume();
    socket.on("error", (e) => this.onerror?.(e));
    socket.once("close", () => this.#ended());
    // The peer ended its side (with or without a close frame): the door's sockets are
    // half-open, so ours would stay open, pinged only after a minute of silence, and keep a
    // descriptor and a connection slot that long. End ours too; cut it if it does not drain.
    socket.once("end", () => {
      this.#discard = true;
      if (this.readyState === OPEN) this.readyState = CLOSING;
      socket.end();
      clearTimeout(this.#closeTimer);
      this.#closeTimer = setTimeout(() => socket.destroy(), this.#closeTimeout);
    });
    (socket as { setNoDelay?: (b: boolean) => void }).setNoDelay?.(true);
    this.#idleTimer = setTimeout(this.#idleCheck, this.#idle);
  }

  /**
   * Stops reading the socket until {@linkcode WireWebSocket.resume}: the peer's further messages
   * wait in the kernel's buffers and then in its own (backpressure). Messages already read in
   * the current chunk are still delivered.
   */
  pause(): void {
    if (!this.#discard) this.#socket.pause();
  }

  /** Reads the socket again after {@linkcode WireWebSocket.pause}. */
  resume(): void {
    if (!this.#discard) this.#socket.resume();
  }

  /** Bytes written but not yet taken by the operating system. */
  get bufferedAmount(): number {
    return this.#socket.writableLength;
  }

  /**
   * Sends a message: a string as text, bytes as binary.
   *
   * @param data The message.
   */
  send(data: string | Uint8Array): void {
    if (this.readyState !== OPEN) return;
    if (typeof data === "string") {
      const n = Buffer.byteLength(data);
      const h = headerLength(n);
      const frame = Buffer.allocUnsafe(h + n);
      writeHeader(frame, 0x81, n);
      frame.write(data, h, "utf8");
      this.#write(frame);
    } else this.#frame(0x82, data);
  }

  /**
   * Sends UTF-8 bytes as one text message (copied: the caller may reuse `bytes` at once).
   *
   * @param bytes Valid UTF-8.
   */
  sendText(bytes: Uint8Array): void {
    if (this.readyState !== OPEN) return;
    this.#frame(0x81, bytes);
  }

  /**
   * Writes a whole frame as it is ({@linkcode textFrame} made it); the socket keeps a reference
   * to it until it is sent, so it must not change: many sockets may share it.
   *
   * @param frame A whole WebSocket frame.
   */
  sendRaw(frame: Uint8Array): void {
    if (this.readyState !== OPEN) return;
    this.#write(frame);
  }

  /**
   * Writes through a per-tick batch: the frames of one tick go to the socket as one write (a
   * fanout of many puts to one socket costs one system call, not one each).
   */
  #write(bytes: Uint8Array): void {
    if (!this.#corked) {
      this.#corked = true;
      this.#socket.cork();
      process.nextTick(this.#uncork);
    }
    this.#socket.write(bytes);
  }

  #uncork = (): void => {
    this.#corked = false;
    this.#socket.uncork();
  };

  #frame(first: number, payload: Uint8Array): void {
    const n = payload.byteLength;
    const h = headerLength(n);
    const frame = Buffer.allocUnsafe(h + n);
    writeHeader(frame, first, n);
    frame.set(payload, h);
    this.#write(frame);
  }

  /**
   * Starts the closing handshake; the socket is cut if the peer does not answer in time.
   *
   * @param code The close code.
   * @param reason A short reason (at most 123 bytes are sent).
   */
  close(code: number = 1000, reason: string = ""): void {
    if (this.readyState >= CLOSING) return;
    this.readyState = CLOSING;
    this.#sendClose(code, reason);
    // Reading stopped (an oversize message): no answer will be read; end our side now.
    if (this.#discard) this.#socket.end();
    clearTimeout(this.#closeTimer);
    this.#closeTimer = setTimeout(() => this.#socket.destroy(), this.#closeTimeout);
  }

  #sendClose(code: number, reason: string): void {
    if (this.#closeSent) return;
    this.#closeSent = true;
    const r = Buffer.from(reason).subarray(0, 123);
    const payload = Buffer.allocUnsafe(2 + r.byteLength);
    payload.writeUInt16BE(code, 0);
    payload.set(r, 2);
    this.#frame(0x88, payload);
  }

  /** Sends the pong held back, once the socket has taken what it had (looked at every 50 ms). */
  #sendPong = (): void => {
    this.#pongTimer = undefined;
    if (this.readyState !== OPEN) return;
    if (this.#socket.writableLength >= PONG_BACKLOG) {
      this.#pongTimer = setTimeout(this.#sendPong, PONG_WAIT);
      return;
    }
    const payload = this.#pong;
    this.#pong = undefined;
    if (payload !== undefined) this.#frame(0x8a, payload);
  };

  #idleCheck = (): void => {
    this.#idleTimer = undefined;
    if (this.readyState !== OPEN) return;
    const quiet = Date.now() - this.#lastIn;
    if (quiet < this.#idle) {
      this.#pinged = false;
      this.#idleTimer = setTimeout(this.#idleCheck, this.#idle - quiet);
      return;
    }
    if (this.#pinged) {
      // No answer to our ping in a whole idle period: the peer is gone.
      this.#socket.destroy();
      return;
    }
    this.#pinged = true;
    this.#frame(0x89, new Uint8Array(0));
    this.#idleTimer = setTimeout(this.#idleCheck, this.#idle);
  };

  #data(chunk: Buffer): void {
    this.#lastIn = Date.now();
    if (this.#discard) return;
    let buf = chunk;
    for (;;) {
      const frame = this.#inFrame;
      if (frame) {
        // A frame's payload, collected as it comes (one copy, when it is whole).
        const take = Math.min(frame.len - frame.got, buf.byteLength);
        if (take > 0) frame.chunks.push(buf.subarray(0, take));
        frame.got += take;
        buf = buf.subarray(take);
        if (frame.got < frame.len) return;
        this.#inFrame = undefined;
        const payload = frame.chunks.length === 1
          ? Buffer.from(frame.chunks[0] as Buffer)
          : Buffer.concat(frame.chunks, frame.len);
        unmask(payload, frame.mask);
        this.#frameDone(frame.fin, frame.opcode, payload);
        if (this.#discard) return;
        continue;
      }
      if (this.#head.byteLength > 0) {
        buf = Buffer.concat([this.#head, buf]);
        this.#head = EMPTY;
      }
      if (buf.byteLength === 0) return;
      const b0 = buf[0] as number;
      const b1 = buf[1] as number | undefined;
      let len = (b1 ?? 0) & 0x7f;
      let at = 2;
      if (len === 126) at = 4;
      else if (len === 127) at = 10;
      if (b1 === undefined || buf.byteLength < at + 4) {
        // A partial header (under 14 bytes): kept until the rest comes.
        this.#head = Buffer.from(buf);
        return;
      }
      if (len === 126) len = buf.readUInt16BE(2);
      else if (len === 127) {
        const high = buf.readUInt32BE(2);
        // Past 2^53 cannot be a message under any limit: make it count as too large.
        len = high >= 0x200000 ? Number.MAX_SAFE_INTEGER : high * 2 ** 32 + buf.readUInt32BE(6);
      }
      const fin = (b0 & 0x80) !== 0;
      const opcode = b0 & 0x0f;
      if ((b0 & 0x70) !== 0) return this.#fail(1002, "Reserved bits set");
      if ((b1 & 0x80) === 0) return this.#fail(1002, "Client frames must be masked");
      const control = opcode >= 8;
      if (control) {
        if (!fin || len > 125) return this.#fail(1002, "Bad control frame");
        if (opcode > 10) return this.#fail(1002, `Unknown opcode ${opcode}`);
      } else if (opcode === 0) {
        if (this.#opcode === 0) return this.#fail(1002, "Continuation without a message");
        if (++this.#fragments >= MAX_FRAGMENTS) {
          return this.#fail(1008, `More than ${MAX_FRAGMENTS} frames in one message`);
        }
      } else if (opcode === 1 || opcode === 2) {
        if (this.#opcode !== 0) return this.#fail(1002, "New message inside a fragmented one");
      } else return this.#fail(1002, `Unknown opcode ${opcode}`);
      // The bound, before any payload is kept: the message so far plus this frame.
      if (!control && this.#size + len > this.#max) return this.#oversize();
      if (!control && opcode !== 0) this.#opcode = opcode;
      this.#inFrame = {
        fin,
        opcode,
        len,
        got: 0,
        mask: Buffer.from(buf.subarray(at, at + 4)),
        chunks: [],
      };
      buf = buf.subarray(at + 4);
    }
  }

  /** A whole frame arrived (unmasked): a control frame, or a part of a message. */
  #frameDone(fin: boolean, opcode: number, payload: Buffer): void {
    if (opcode >= 8) return this.#control(opcode, payload);
    let whole: Buffer;
    if (fin && this.#size === 0) whole = payload;
    else {
      this.#append(payload);
      if (!fin) return;
      whole = (this.#msg as Buffer).subarray(0, this.#size);
    }
    const text = this.#opcode === 1;
    this.#msg = undefined;
    this.#opcode = 0;
    this.#size = 0;
    this.#fragments = 0;
    if (text) {
      let data: string;
      try {
        data = textDecoder.decode(whole);
      } catch {
        return this.#fail(1007, "Text message is not UTF-8");
      }
      this.onmessage?.({ data });
    } else {
      const copy = new Uint8Array(whole.byteLength);
      copy.set(whole);
      this.onmessage?.({ data: copy.buffer });
    }
  }

  /** Copies a fragment's payload to the end of the message in progress. */
  #append(payload: Buffer): void {
    const need = this.#size + payload.byteLength;
    const msg = this.#msg;
    if (msg === undefined || msg.byteLength < need) {
      const grown = Buffer.allocUnsafe(
        Math.min(this.#max, Math.max(need, 2 * (msg?.byteLength ?? 0), 4096)),
      );
      if (msg !== undefined) msg.copy(grown, 0, 0, this.#size);
      this.#msg = grown;
    }
    payload.copy(this.#msg as Buffer, this.#size);
    this.#size = need;
  }

  #control(opcode: number, payload: Buffer): void {
    if (opcode === 9) {
      // ping → pong with the same payload. A peer may ping faster than it reads the pongs:
      // while pongs are still unsent, only the latest ping is answered, once the socket has
      // taken them (RFC 6455 5.5.3 allows it), so unread pongs cannot pile up.
      if (this.readyState !== OPEN) return;
      if (this.#pong === undefined && this.#socket.writableLength < PONG_BACKLOG) {
        this.#frame(0x8a, payload);
        return;
      }
      if (this.#pong === undefined) this.#pongTimer = setTimeout(this.#sendPong, PONG_WAIT);
      this.#pong = payload;
      return;
    }
    if (opcode === 10) {
      this.#pinged = false;
      return;
    }
    // close
    this.#closeCode = payload.byteLength >= 2 ? payload.readUInt16BE(0) : 1005;
    try {
      this.#closeReason = payload.byteLength > 2 ? textDecoder.decode(payload.subarray(2)) : "";
    } catch {
      this.#closeReason = "";
    }
    this.#discard = true;
    this.#head = EMPTY;
    this.#inFrame = undefined;
    this.#msg = undefined;
    if (!this.#closeSent) {
      // Echo the peer's code (1005 means none: answer 1000).
      this.readyState = CLOSING;
      this.#sendClose(this.#closeCode === 1005 ? 1000 : this.#closeCode, "");
    }
    this.#socket.end();
    // The handshake is over: a peer that neither reads our close nor ends its side would keep
    // the socket for ever otherwise (a closing socket is no longer pinged).
    clearTimeout(this.#closeTimer);
    this.#closeTimer = setTimeout(() => this.#socket.destroy(), this.#closeTimeout);
  }

  /**
   * A message passed the bound: drop it, read nothing more (the peer's writes stall in its own
   * buffers instead of ours), say so, close.
   */
  #oversize(): void {
    this.#discard = true;
    this.#socket.pause();
    this.#head = EMPTY;
    this.#inFrame = undefined;
    this.#msg = undefined;
    this.#size = 0;
    this.#opcode = 0;
    if (this.onoversize) {
      // The owner says why and closes; if it has not within the close timeout, we do.
      this.onoversize();
      if (this.readyState === OPEN) {
        this.#closeTimer = setTimeout(
          () => this.close(1009, "message too big"),
          this.#closeTimeout,
        );
      }
    } else this.close(1009, "message too big");
  }

  #fail(code: number, reason: string): void {
    this.#discard = true;
    this.#head = EMPTY;
    this.#inFrame = undefined;
    this.#msg = undefined;
    if (this.readyState === OPEN) {
      this.readyState = CLOSING;
      this.#sendClose(code, reason);
    }
    this.#closeCode = code;
    this.#socket.end();
    this.#closeTimer = setTimeout(() => this.#socket.destroy(), this.#closeTimeout);
  }

  #ended(): void {
    if (this.readyState === CLOSED) return;
    this.readyState = CLOSED;
    clearTimeout(this.#idleTimer);
    clearTimeout(this.#closeTimer);
    clearTimeout(this.#pongTimer);
    this.#pong = undefined;
    this.#head = EMPTY;
    this.#inFrame = undefined;
    this.#msg = undefined;
    this.onclose?.({ code: this.#closeCode, reason: this.#closeReason });
  }
}

/**
 * A whole unmasked text frame (a server's) carrying `payload`, in a new buffer.
 *
 * @param payload UTF-8 bytes.
 * @returns The frame.
 */
export function textFrame(payload: Uint8Array): Uint8Array {
  const n = payload.byteLength;
  const h = headerLength(n);
  const frame = Buffer.allocUnsafe(h + n);
  writeHeader(frame, 0x81, n);
  frame.set(payload, h);
  return frame;
}

function headerLength(n: number): number {
  return n < 126 ? 2 : n < 65536 ? 4 : 10;
}

function writeHeader(frame: Buffer, first: number, n: number): void {
  frame[0] = first;
  if (n < 126) frame[1] = n;
  else if (n < 65536) {
    frame[1] = 126;
    frame.writeUInt16BE(n, 2);
  } else {
    frame[1] = 127;
    frame.writeUInt32BE(Math.floor(n / 2 ** 32), 2);
    frame.writeUInt32BE(n >>> 0, 6);
  }
}

function unmask(payload: Uint8Array, mask: Uint8Array): void {
  const m0 = mask[0] as number, m1 = mask[1] as number, m2 = mask[2] as number;
  const m3 = mask[3] as number;
  const n = payload.byteLength;
  let i = 0;
  for (; i + 4 <= n; i += 4) {
    payload[i] = (payload[i] as number) ^ m0;
    payload[i + 1] = (payload[i + 1] as number) ^ m1;
    payload[i + 2] = (payload[i + 2] as number) ^ m2;
    payload[i + 3] = (payload[i + 3] as number) ^ m3;
  }
  for (; i < n; i++) payload[i] = (payload[i] as number) ^ (mask[i & 3] as number);
}
