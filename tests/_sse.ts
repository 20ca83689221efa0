/**
 * A Server-Sent Events reader for tests: opens `GET /streams/{name}` as an event stream and
 * reads it block by block. Every read has a deadline ({@linkcode TIMEOUT} unless given) and
 * fails with what it read so far.
 *
 * @example
 * ```ts
 * import { assertEquals } from "@std/assert";
 * import { MessageStream } from "../mod.ts";
 * import { serveHttp } from "../http.ts";
 * import { openSse } from "./_sse.ts";
 *
 * const hub = new MessageStream();
 * await using server = serveHttp(hub, { port: 0 });
 * const sse = await openSse(`http://127.0.0.1:${server.addr.port}`, "job");
 * await hub.put("job", 1);
 * assertEquals((await sse.event()).data, "1");
 * await sse.cancel();
 * ```
 *
 * @module
 */

import { assertEquals } from "@std/assert";
import { deadline, TIMEOUT } from "./_wait.ts";

/** One SSE block (the lines before a blank line), its fields parsed. */
export interface SseBlock {
  /** The `id:` field. */
  id?: string;
  /** The `event:` field. */
  event?: string;
  /** The `data:` field. */
  data?: string;
  /** The `retry:` field. */
  retry?: string;
  /** A comment line's text (`: hb`). */
  comment?: string;
  /** The block as sent. */
  raw: string;
}

/** Reads an SSE response block by block (a block ends with a blank line). */
export class SseReader {
  /** Every block read so far, in order. */
  readonly blocks: SseBlock[] = [];
  readonly #reader: ReadableStreamDefaultReader<string>;
  #buf = "";

  /**
   * Reads `res`'s body.
   *
   * @param res A `text/event-stream` response.
   */
  constructor(res: Response) {
    if (!res.body) throw new TypeError("The response has no body");
    this.#reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
  }

  #state(): string {
    const last = this.blocks.slice(-3).map((b) => JSON.stringify(b.raw));
    return `${this.blocks.length} blocks read${last.length > 0 ? `; last: ${last}` : ""}`;
  }

  async #block(): Promise<SseBlock | undefined> {
    for (;;) {
      const i = this.#buf.indexOf("\n\n");
      if (i !== -1) {
        const raw = this.#buf.slice(0, i);
        this.#buf = this.#buf.slice(i + 2);
        const b: SseBlock = { raw };
        for (const line of raw.split("\n")) {
          if (line.startsWith(":")) b.comment = line.slice(1).trim();
          else {
            const c = line.indexOf(": ");
            const field = line.slice(0, c) as "id" | "event" | "data" | "retry";
            b[field] = line.slice(c + 2);
          }
        }
        this.blocks.push(b);
        return b;
      }
      const { done, value } = await this.#reader.read();
      if (done) return undefined;
      this.#buf += value;
    }
  }

  /**
   * The next block, or `undefined` at the end of the response.
   *
   * @param ms The deadline in milliseconds.
   * @returns The block.
   * @throws {TimeoutError} When neither a block nor the end comes within `ms`.
   */
  block(ms: number = TIMEOUT): Promise<SseBlock | undefined> {
    return deadline(this.#block(), () => `the next SSE block (${this.#state()})`, ms);
  }

  /**
   * The next event block (comments, `retry` and the join's `joined` position block are
   * skipped; read them with {@linkcode SseReader.block}).
   *
   * @param ms The deadline in milliseconds.
   * @returns The block.
   * @throws {Error} When the response ends first.
   * @throws {TimeoutError} When no event comes within `ms`.
   */
  event(ms: number = TIMEOUT): Promise<SseBlock> {
    return deadline(
      (async () => {
        for (;;) {
          const b = await this.#block();
          if (!b) {
            throw new Error(`The SSE response ended before the next event (${this.#state()})`);
          }
          if (b.event !== undefined && b.event !== "joined") return b;
        }
      })(),
      () => `the next SSE event (${this.#state()})`,
      ms,
    );
  }

  /**
   * Reads events until one matches, and returns all of them (the match last); skips what
   * {@linkcode SseReader.event} skips.
   *
   * @param match The test.
   * @param ms The deadline in milliseconds, for all of them.
   * @returns The events read.
   * @throws {Error} When the response ends first.
   * @throws {TimeoutError} When no event matches within `ms`.
   */
  until(match: (b: SseBlock) => boolean, ms: number = TIMEOUT): Promise<SseBlock[]> {
    return deadline(
      (async () => {
        const got: SseBlock[] = [];
        for (;;) {
          const b = await this.#block();
          if (!b) throw new Error(`The SSE response ended before a match (${this.#state()})`);
          if (b.event === undefined || b.event === "joined") continue;
          got.push(b);
          if (match(b)) return got;
        }
      })(),
      () => `an SSE event matching ${match} (${this.#state()})`,
      ms,
    );
  }

  /**
   * Stops reading (the server sees the client go).
   *
   * @returns When the body is cancelled.
   */
  cancel(): Promise<void> {
    return this.#reader.cancel();
  }
}

/**
 * Opens `GET {base}/streams/{name}` as an event stream and checks the response's status and type.
 *
 * @param base The server's base URL, e.g. `http://127.0.0.1:8080`.
 * @param name The stream.
 * @param headers Request headers (e.g. `last-event-id`).
 * @param query A query string, with its `?`.
 * @returns The reader.
 * @throws {AssertionError} When the response is not a 200 event stream.
 * @throws {TimeoutError} When the response does not come in time.
 */
export async function openSse(
  base: string,
  name: string,
  headers: Record<string, string> = {},
  query = "",
): Promise<SseReader> {
  const res = await deadline(
    fetch(`${base}/streams/${encodeURIComponent(name)}${query}`, {
      headers: { accept: "text/event-stream", ...headers },
    }),
    `the SSE response for "${name}"`,
  );
  if (res.status !== 200) {
    const body = await res.text();
    assertEquals(res.status, 200, body);
  }
  assertEquals(res.headers.get("content-type"), "text/event-stream; charset=utf-8");
  return new SseReader(res);
}
