/**
 * The REST pieces of the HTTP door (`http.ts`): its errors ({@linkcode HttpError}, answered as
 * JSON `{code, message}`), JSON bodies in ({@linkcode readBody}) and out ({@linkcode json}),
 * the method check, strict query parameters and the listing's per-stream rate meter.
 *
 * @module
 */

import { concat } from "@std/bytes/concat";
import type { Codec } from "./codec.ts";
import type { ErrorCode } from "./protocol.ts";
import type { Limit } from "./budget.ts";
import type { Metrics } from "./metrics.ts";

const utf8 = new TextDecoder("utf-8", { fatal: true });

/** Error codes of the HTTP door beyond the wire protocol's. */
export type HttpErrorCode =
  | ErrorCode
  | "not_found"
  | "method_not_allowed"
  | "payload_too_large"
  | "unsupported_media_type"
  | "upgrade_required"
  | "shutting_down"
  | "invalid_limit"
  | "host_not_allowed"
  | "pipeline_too_deep";

/** The content type of every JSON response. */
export const JSON_TYPE = "application/json; charset=utf-8";

/**
 * A query parameter, decoded strictly (`+` is a space): `null` when absent. `URLSearchParams`
 * reads bytes that are not UTF-8 (e.g. `%ED%A0%80`, what a lone surrogate would be) as U+FFFD,
 * which would follow a name or pattern nobody asked for.
 *
 * @throws {URIError} When the value is not valid percent-encoded UTF-8.
 */
export function strictParam(url: URL, key: string): string | null {
  for (const part of url.search.slice(1).split("&")) {
    const eq = part.indexOf("=");
    const name = eq < 0 ? part : part.slice(0, eq);
    let decoded: string;
    try {
      decoded = decodeURIComponent(name.replaceAll("+", " "));
    } catch {
      continue; // another parameter's malformed name: not this one
    }
    if (decoded !== key) continue;
    return eq < 0 ? "" : decodeURIComponent(part.slice(eq + 1).replaceAll("+", " "));
  }
  return null;
}

/** Measures each stream's message rate from seq samples taken when the list is asked for. */
export class RateMeter {
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

  #sweep: Iterator<[string, { epoch: string; points: number[] }]> | undefined;

  /**
   * Forgets up to `count` samples, going round: those of streams gone and those not asked for
   * over two windows (a bounded step per page, never a walk over every stream).
   */
  prune(count: number, now: number, exists: (name: string) => boolean): void {
    for (let i = 0; i < count && this.#samples.size > 0; i++) {
      this.#sweep ??= this.#samples.entries();
      const next = this.#sweep.next();
      if (next.done) {
        this.#sweep = undefined;
        continue;
      }
      const [name, s] = next.value;
      const last = s.points[s.points.length - 2] ?? 0;
      if (!exists(name) || last < now - 2 * this.#window) this.#samples.delete(name);
    }
  }
}

/** A refusal with its HTTP status and code; the door answers it as JSON `{code, message}`. */
export class HttpError extends Error {
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

/** Every name an engine lists, its pages joined. */
export async function engineNames(pages: AsyncIterable<string[]>): Promise<string[]> {
  const out: string[] = [];
  for await (const page of pages) out.push(...page);
  return out;
}

/**
 * Checks a request's method against a route's.
 *
 * @param method The request's method.
 * @param methods The route's methods (GET brings HEAD).
 * @throws {HttpError} 405 with an `allow` header when the method is not one of `methods`.
 */
export function allow(method: string, methods: string[]): void {
  // Wherever GET is, HEAD is too (RFC 9110, 9.3.2): it is answered as GET, without the body.
  const all = methods.flatMap((m) => m === "GET" ? ["GET", "HEAD"] : [m]);
  if (!all.includes(method)) {
    throw new HttpError(
      405,
      "method_not_allowed",
      `Method ${method} not allowed here: use ${all.join(", ")}`,
      { allow: all.join(", ") },
    );
  }
}

/**
 * The REST status of each limit: 507 (Insufficient Storage) when the server is full, 413 for a
 * header too large, 429 for a client that follows too many streams.
 */
export const LIMIT_STATUS: Record<Limit, number> = {
  max_memory: 507,
  max_streams: 507,
  max_header_bytes: 413,
  max_listens: 429,
  max_connections: 503,
  redis_memory: 507,
};

/**
 * A JSON response.
 *
 * @param status Its status.
 * @param body Its body, as `JSON.stringify` writes it.
 * @returns The response.
 */
export function json(status: number, body: unknown): Response {
  return new Response(JSON.stringify(body), {
    status,
    headers: { "content-type": JSON_TYPE },
  });
}

/**
 * Reads a request's body as one message: a JSON content type, at most `max` bytes, UTF-8, then
 * the codec's decode; the bytes read count in `metrics.bytesIn`.
 *
 * @param req The request.
 * @param max The most bytes a body may have.
 * @param metrics Where the bytes read are counted.
 * @param codec Decodes the body.
 * @returns The message.
 * @throws {HttpError} 415, 413 or 400 (`missing_message`, `invalid_utf8`, `invalid_json`).
 */
export async function readBody(
  req: Request,
  max: number,
  metrics: Metrics,
  codec: Codec,
): Promise<unknown> {
  // A JSON type is required, never assumed: a cross-site page can send a body without one
  // (a Blob in a no-cors fetch) but cannot send application/json without a CORS preflight.
  const type = req.headers.get("content-type");
  const mime = type === null ? "" : (type.split(";")[0] as string).trim().toLowerCase();
  if (mime !== "application/json" && !mime.endsWith("+json")) {
    throw new HttpError(
      415,
      "unsupported_media_type",
      type === null
        ? "Content-Type must be application/json, got none"
        : `Content-Type must be application/json, got "${type.slice(0, 100)}"`,
    );
  }
  const tooLarge = () => new HttpError(413, "payload_too_large", `Body larger than ${max} bytes`);
  const length = req.headers.get("content-length");
  if (length !== null && Number(length) > max) throw tooLarge();
  let chunks: Uint8Array[] = [];
  let size = 0;
  if (req.body && length !== null && length !== "") {
    // Its length given (and under the limit; the server holds the body to it): read it whole.
    const bytes = new Uint8Array(await req.arrayBuffer());
    if (bytes.byteLength > max) throw tooLarge();
    chunks = [bytes];
    size = bytes.byteLength;
  } else if (req.body) {
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
  metrics.bytesIn += size;
  if (size === 0) throw new HttpError(400, "missing_message", "The body must be the message");
  let text: string;
  try {
    text = utf8.decode(chunks.length === 1 ? chunks[0] as Uint8Array : concat(chunks));
  } catch {
    throw new HttpError(400, "invalid_utf8", "Body is not valid UTF-8");
  }
  try {
    return codec.decode(text);
  } catch (e) {
    throw new HttpError(400, "invalid_json", `Cannot decode body: ${(e as Error).message}`);
  }
}
