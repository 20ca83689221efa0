/**
 * A raw TCP line client for tests: it sends frames by hand (whole, partial or invalid bytes)
 * and reads the server's newline-delimited JSON frames. Every read has a deadline
 * ({@linkcode TIMEOUT} unless given) and fails with what it got so far: a server that never
 * answers or never closes makes the test fail, not hang.
 *
 * @example A raw client against a real server
 * ```ts
 * import { serve } from "../server.ts";
 * import { connectRaw } from "./_raw_client.ts";
 * import { assertEquals } from "@std/assert";
 *
 * await using server = serve({ port: 0 });
 * await using raw = await connectRaw(server.addr.port);
 * await raw.send({ action: "ping", id: 1 });
 * assertEquals(await raw.next(), { action: "pong", id: 1 });
 * ```
 *
 * @module
 */

import { deadline, TIMEOUT } from "./_wait.ts";

/** A decoded frame, as the raw client reads it. */
export type Frame = Record<string, unknown>;

const encoder = new TextEncoder();

/** A TCP connection that sends and reads newline-delimited JSON frames by hand. */
export class RawClient implements AsyncDisposable {
  /** The underlying connection. */
  readonly conn: Deno.TcpConn;
  /** Every line read so far, in order, as text (without its newline). */
  readonly lines: string[] = [];
  #frames: Frame[] = [];
  #waiters: (() => void)[] = [];
  #eof = false;
  #error: Error | undefined;
  #reading: Promise<void>;
  #closed = false;
  #name: string;

  /**
   * Wraps a connection and starts reading it.
   *
   * @param conn The connection.
   */
  constructor(conn: Deno.TcpConn) {
    this.conn = conn;
    const local = conn.localAddr as Deno.NetAddr;
    const remote = conn.remoteAddr as Deno.NetAddr;
    this.#name = `raw client :${local.port} -> :${remote.port}`;
    this.#reading = this.#read();
  }

  async #read(): Promise<void> {
    const decoder = new TextDecoder();
    const buf = new Uint8Array(64 * 1024);
    let partial = "";
    try {
      while (true) {
        const n = await this.conn.read(buf);
        if (n === null) break;
        partial += decoder.decode(buf.subarray(0, n), { stream: true });
        let i: number;
        while ((i = partial.indexOf("\n")) !== -1) {
          const line = partial.slice(0, i);
          partial = partial.slice(i + 1);
          if (line.length === 0) continue;
          this.lines.push(line);
          let frame: Frame;
          try {
            frame = JSON.parse(line);
          } catch {
            frame = { action: "<undecodable>", line };
          }
          this.#frames.push(frame);
        }
        this.#wake();
      }
    } catch (e) {
      // Closed locally or reset by the peer: both end the stream of frames.
      if (!this.#closed) this.#error = e as Error;
    }
    this.#eof = true;
    this.#wake();
  }

  #wake(): void {
    for (const wake of this.#waiters.splice(0)) wake();
  }

  /** What was read so far, for a deadline's message. */
  #state(): string {
    const last = this.lines.slice(-3).map((l) => l.length > 200 ? `${l.slice(0, 200)}…` : l);
    return `${this.#name}: ${this.lines.length} lines read${this.#eof ? ", connection ended" : ""}${
      last.length > 0 ? `; last: ${last.join(" | ")}` : ""
    }`;
  }

  /**
   * Sends one frame: an object is JSON-encoded, a string is sent as is; a newline is added.
   *
   * @param frame The frame.
   * @returns When it is written.
   */
  async send(frame: Frame | string): Promise<void> {
    const text = typeof frame === "string" ? frame : JSON.stringify(frame);
    await this.write(text + "\n");
  }

  /**
   * Writes bytes or text as is (no newline added): for partial lines and invalid bytes.
   *
   * @param data What to write.
   * @returns When it is written.
   */
  async write(data: Uint8Array | string): Promise<void> {
    const bytes = typeof data === "string" ? encoder.encode(data) : data;
    let off = 0;
    while (off < bytes.byteLength) off += await this.conn.write(bytes.subarray(off));
  }

  /** Waits for the next frame or the end, without a deadline (callers add one). */
  async #nextOrEnd(): Promise<Frame | undefined> {
    while (this.#frames.length === 0 && !this.#eof) {
      await new Promise<void>((r) => this.#waiters.push(r));
    }
    return this.#frames.shift();
  }

  #ended(): Error {
    return new Error(
      `Connection ended before the next frame${
        this.#error ? `: ${this.#error.message}` : ""
      } (${this.#state()})`,
    );
  }

  /**
   * Reads the next frame.
   *
   * @param ms The deadline in milliseconds.
   * @returns The frame.
   * @throws {Error} When the connection ends first.
   * @throws {TimeoutError} When no frame comes within `ms`.
   */
  async next(ms: number = TIMEOUT): Promise<Frame> {
    const f = await this.nextOrEnd(ms);
    if (f === undefined) throw this.#ended();
    return f;
  }

  /**
   * Reads the next frame, or `undefined` when the connection has ended.
   *
   * @param ms The deadline in milliseconds.
   * @returns The frame or `undefined`.
   * @throws {TimeoutError} When neither a frame nor the end comes within `ms`.
   */
  nextOrEnd(ms: number = TIMEOUT): Promise<Frame | undefined> {
    if (this.#frames.length > 0 || this.#eof) return Promise.resolve(this.#frames.shift());
    return deadline(this.#nextOrEnd(), () => `the next frame (${this.#state()})`, ms);
  }

  /**
   * Reads frames until one matches, and returns all of them (the match last).
   *
   * @param match The test.
   * @param ms The deadline in milliseconds, for all of them.
   * @returns The frames read.
   * @throws {Error} When the connection ends first.
   * @throws {TimeoutError} When no frame matches within `ms`.
   */
  until(match: (f: Frame) => boolean, ms: number = TIMEOUT): Promise<Frame[]> {
    return deadline(
      (async () => {
        const got: Frame[] = [];
        while (true) {
          const f = await this.#nextOrEnd();
          if (f === undefined) throw this.#ended();
          got.push(f);
          if (match(f)) return got;
        }
      })(),
      () => `a frame matching ${match} (${this.#state()})`,
      ms,
    );
  }

  /**
   * Reads frames until the connection ends (the server closed it).
   *
   * @param ms The deadline in milliseconds, for all of them.
   * @returns Every frame left.
   * @throws {TimeoutError} When the connection has not ended within `ms`.
   */
  rest(ms: number = TIMEOUT): Promise<Frame[]> {
    return deadline(
      (async () => {
        const got: Frame[] = [];
        for (let f = await this.#nextOrEnd(); f !== undefined; f = await this.#nextOrEnd()) {
          got.push(f);
        }
        return got;
      })(),
      () => `the server to close the connection (${this.#state()})`,
      ms,
    );
  }

  /**
   * Waits until the connection has ended (the peer closed it or `close()` was called).
   *
   * @param ms The deadline in milliseconds.
   * @returns When it has.
   * @throws {TimeoutError} When it has not within `ms`.
   */
  ended(ms: number = TIMEOUT): Promise<void> {
    return deadline(this.#reading, () => `the connection to end (${this.#state()})`, ms);
  }

  /**
   * Closes the connection (safe twice) and waits for the reader to stop.
   *
   * @returns When the reader has stopped.
   */
  async close(): Promise<void> {
    if (!this.#closed) {
      this.#closed = true;
      try {
        this.conn.close();
      } catch {
        // already closed
      }
    }
    await this.#reading;
  }

  /**
   * Closes, for `await using`.
   *
   * @returns When the reader has stopped.
   */
  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }
}

/**
 * Opens a raw line client to a server.
 *
 * @param port The server's port.
 * @param hostname The server's address.
 * @returns The client.
 */
export async function connectRaw(port: number, hostname = "127.0.0.1"): Promise<RawClient> {
  const conn = await deadline(
    Deno.connect({ hostname, port }),
    `a TCP connection to ${hostname}:${port}`,
  );
  return new RawClient(conn);
}
