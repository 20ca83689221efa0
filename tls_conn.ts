/**
 * The TLS side of the TCP door: a server-side TLS connection run by `node:tls` over a plain TCP
 * connection the door accepted itself ({@linkcode TlsOverTcp}). With `Deno.listenTls` the
 * runtime owns the socket until the handshake ends: closing a `Deno.TlsConn` whose peer never
 * completes its handshake (sends nothing) frees the door's slot but not the descriptor, which
 * stays until the peer sends or closes, so silent peers could exhaust descriptors. Here the
 * door holds the TCP connection, and closing it releases the descriptor at once, handshake
 * done or not. It offers what the door uses of a `Deno.Conn`: `read`, `write`, `close`,
 * `remoteAddr`, `setNoDelay`, and `handshake` as a `Deno.TlsConn` has it.
 *
 * @example A TLS context from PEM text
 * ```ts ignore
 * import { secureContext, TlsOverTcp } from "./tls_conn.ts";
 *
 * const context = secureContext(certPem, keyPem);
 * const listener = Deno.listen({ port: 0 });
 * const conn = new TlsOverTcp(await listener.accept(), context);
 * await conn.handshake();
 * ```
 *
 * @module
 */

import { createSecureContext, type SecureContext, TLSSocket } from "node:tls";
import { Duplex } from "node:stream";

/** Bytes of decrypted data held for the reader before the socket is paused. */
const HOLD = 64 * 1024;

/** Bytes one read of the TCP connection takes. */
const READ = 16 * 1024;

/** Most milliseconds a close waits for its TLS close_notify to be sent before it drops. */
const CLOSE_GRACE = 1000;

/**
 * Makes the TLS context of a door from its certificate chain and key.
 *
 * @param cert The certificate chain, PEM.
 * @param key The private key, PEM.
 * @returns The context every connection shares.
 * @throws {Error} When the certificate or key cannot be read.
 */
export function secureContext(cert: string, key: string): SecureContext {
  return createSecureContext({ cert, key });
}

/** The TCP connection as the stream `node:tls` runs over. */
function streamOf(tcp: Deno.TcpConn): Duplex {
  const stream: Duplex = new Duplex({
    read() {
      const buf = new Uint8Array(READ);
      tcp.read(buf).then(
        (n) => stream.push(n === null ? null : buf.subarray(0, n)),
        (e) => stream.destroy(e),
      );
    },
    write(chunk: Uint8Array, _encoding, done) {
      writeAll(tcp, chunk).then(() => done(), (e) => done(e));
    },
    final(done) {
      try {
        tcp.closeWrite();
      } catch { /* closed already */ }
      done();
    },
  });
  return stream;
}

async function writeAll(tcp: Deno.TcpConn, bytes: Uint8Array): Promise<void> {
  for (let off = 0; off < bytes.length;) off += await tcp.write(bytes.subarray(off));
}

/**
 * A server-side TLS connection over a TCP connection the caller accepted: closing it closes the
 * TCP connection, so its descriptor is released at once, handshake done or not.
 */
export class TlsOverTcp {
  /** The peer's address. */
  readonly remoteAddr: Deno.NetAddr;
  /** This end's address. */
  readonly localAddr: Deno.NetAddr;
  readonly #tcp: Deno.TcpConn;
  readonly #tls: TLSSocket;
  readonly #secure: Promise<void>;
  /** Decrypted chunks not yet read. */
  #chunks: Uint8Array[] = [];
  #held = 0;
  #ended = false;
  #closed = false;
  #secured = false;
  #error: Error | undefined;
  #wake: (() => void) | undefined;

  /**
   * Starts serving TLS on an accepted TCP connection (the handshake runs as the peer's bytes
   * come).
   *
   * @param tcp The accepted connection.
   * @param context The door's TLS context ({@linkcode secureContext}).
   */
  constructor(tcp: Deno.TcpConn, context: SecureContext) {
    this.#tcp = tcp;
    this.remoteAddr = tcp.remoteAddr;
    this.localAddr = tcp.localAddr;
    const socket = new TLSSocket(streamOf(tcp) as never, {
      isServer: true,
      secureContext: context,
    });
    this.#tls = socket;
    this.#secure = new Promise((resolve, reject) => {
      socket.once("secure", () => {
        this.#secured = true;
        resolve();
      });
      socket.once("error", reject);
      socket.once("close", () => reject(new Error("Connection closed before the TLS handshake")));
    });
    this.#secure.catch(() => {}); // read by handshake(), if the door asks
    socket.on("data", (chunk: Uint8Array) => {
      this.#chunks.push(chunk);
      this.#held += chunk.length;
      if (this.#held > HOLD) socket.pause();
      this.#wake?.();
    });
    socket.on("end", () => this.#end());
    socket.on("close", () => this.#end());
    socket.on("error", (e: Error) => {
      this.#error = e;
      this.#wake?.();
    });
  }

  #end(): void {
    this.#ended = true;
    this.#wake?.();
  }

  /**
   * Resolves when the handshake has completed.
   *
   * @returns When it has.
   * @throws {Error} When it failed or the connection closed first.
   */
  handshake(): Promise<void> {
    return this.#secure;
  }

  /**
   * Reads decrypted bytes.
   *
   * @param buf Where they go.
   * @returns How many, or `null` at the end.
   * @throws {Error} When the connection failed.
   */
  async read(buf: Uint8Array): Promise<number | null> {
    for (;;) {
      const first = this.#chunks[0];
      if (first) {
        const n = Math.min(buf.length, first.length);
        buf.set(n === first.length ? first : first.subarray(0, n));
        if (n === first.length) this.#chunks.shift();
        else this.#chunks[0] = first.subarray(n);
        this.#held -= n;
        if (this.#held <= HOLD && this.#tls.isPaused()) this.#tls.resume();
        return n;
      }
      if (this.#error) throw this.#error;
      if (this.#ended || this.#closed) return null;
      await new Promise<void>((resolve) => this.#wake = resolve);
      this.#wake = undefined;
    }
  }

  /**
   * Encrypts and sends bytes.
   *
   * @param buf The bytes (not kept after the returned promise settles).
   * @returns How many were taken: all of them.
   * @throws {Error} When the connection failed.
   */
  write(buf: Uint8Array): Promise<number> {
    if (this.#closed) return Promise.reject(new Deno.errors.BadResource("Connection closed"));
    return new Promise((resolve, reject) => {
      this.#tls.write(buf, (e?: Error | null) => e ? reject(e) : resolve(buf.length));
    });
  }

  /**
   * Sets the TCP connection's no-delay option.
   *
   * @param on Whether to send small writes at once.
   */
  setNoDelay(on = true): void {
    this.#tcp.setNoDelay(on);
  }

  /**
   * Closes: after a completed handshake, sends TLS close_notify first (within a second: a peer
   * that reads nothing does not hold the descriptor); before it, closes the TCP connection at
   * once. Either way the descriptor is released by this process.
   */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#wake?.();
    if (!this.#secured || this.#error || this.#tls.destroyed) return this.#release();
    const timer = setTimeout(() => this.#release(), CLOSE_GRACE);
    this.#tls.end(() => {
      clearTimeout(timer);
      this.#release();
    });
  }

  #release(): void {
    try {
      this.#tcp.close();
    } catch { /* closed already */ }
    this.#tls.destroy();
  }
}
