/**
 * What the doors and the command line read from their users, checked one way everywhere:
 * integer options and flags, `epoch:seq` positions, `host:port` addresses, the default ports,
 * log levels, environment variables, and the wait bounded by `shutdownTimeout`.
 *
 * @example Check an option and parse a position
 * ```ts
 * import { intOption, parsePosition } from "./options.ts";
 * import { assertEquals, assertThrows } from "@std/assert";
 *
 * assertEquals(intOption("pingInterval", undefined, 30_000, 0), 30_000);
 * assertThrows(() => intOption("pingInterval", -1, 30_000, 0), RangeError);
 * assertEquals(parsePosition("a1b2c3:17"), { epoch: "a1b2c3", seq: 17 });
 * ```
 *
 * @module
 */

import type { Position } from "./types.ts";

/** The TCP port a server listens on, and a client connects to, unless told otherwise. */
export const DEFAULT_PORT = 51932;

/** The HTTP door's port when served on its own (`serveHttp`) and not told otherwise. */
export const DEFAULT_HTTP_PORT = 51933;

/** Log levels, from most to least verbose. */
export type LogLevel = "debug" | "info" | "warn" | "error" | "silent";

/** Every log level, from most to least verbose. */
export const LOG_LEVELS: readonly LogLevel[] = ["debug", "info", "warn", "error", "silent"];

/**
 * The default most connections open at once per door: 15,000, or the descriptor limit minus a
 * tenth (at least 64 kept free) when that is lower and `/proc/self/limits` may be read.
 *
 * @returns The default `maxConnections`.
 */
export function defaultMaxConnections(): number {
  const fallback = 15_000;
  try {
    const path = "/proc/self/limits";
    if (Deno.permissions.querySync({ name: "read", path }).state !== "granted") return fallback;
    const m = /Max open files\s+(\d+)/.exec(Deno.readTextFileSync(path));
    if (!m) return fallback;
    const soft = Number(m[1]);
    return Math.max(1, Math.min(fallback, soft - Math.max(64, Math.ceil(soft / 10))));
  } catch {
    return fallback;
  }
}

/**
 * Checks an integer option of an API call, or takes its default.
 *
 * @param name The option's name, for the message.
 * @param value What the caller gave, or undefined.
 * @param fallback The default.
 * @param min The smallest value allowed.
 * @param max The largest value allowed.
 * @returns The value, or the default.
 * @throws {RangeError} When the value is not an integer from `min` to `max`.
 */
export function intOption(
  name: string,
  value: number | undefined,
  fallback: number,
  min: number,
  max: number = Number.MAX_SAFE_INTEGER,
): number {
  const v = value ?? fallback;
  if (!Number.isSafeInteger(v) || v < min) {
    throw new RangeError(`Option "${name}" must be an integer of at least ${min}, got ${v}`);
  }
  if (v > max) throw new RangeError(`Option "${name}" must be at most ${max}, got ${v}`);
  return v;
}

/** A command-line mistake: the command prints why, then its usage, and exits 1. */
export class UsageError extends Error {
  /**
   * Creates the error.
   *
   * @param message What is wrong with the arguments.
   * @param options Standard error options.
   */
  constructor(message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = "UsageError";
  }
}

/**
 * Parses an integer command-line flag.
 *
 * @param value The flag's text as parsed (undefined when not given).
 * @param flag The flag's name without dashes, for the message.
 * @param min The smallest value allowed.
 * @param max The largest value allowed.
 * @returns The number, or undefined when the flag was not given.
 * @throws {UsageError} When the text is not an integer from `min` to `max`.
 */
export function intFlag(
  value: unknown,
  flag: string,
  min = 0,
  max: number = Number.MAX_SAFE_INTEGER,
): number | undefined {
  if (value === undefined) return undefined;
  const n = Number(value);
  if (typeof value !== "string" || value.trim() === "" || !Number.isSafeInteger(n) || n < min) {
    const what = min === 0 ? "a non-negative integer" : `an integer of at least ${min}`;
    throw new UsageError(`--${flag} must be ${what}, got "${value}"`);
  }
  if (n > max) throw new UsageError(`--${flag} must be at most ${max}, got ${n}`);
  return n;
}

/**
 * Parses a position written `<epoch>:<seq>` (an SSE event id, the CLI's `--since`).
 *
 * @param text The text.
 * @returns The position, or undefined when the text is not one.
 */
export function parsePosition(text: string): Position | undefined {
  const i = text.lastIndexOf(":");
  if (i <= 0) return undefined;
  const seqText = text.slice(i + 1);
  const seq = Number(seqText);
  if (!/^\d+$/.test(seqText) || !Number.isSafeInteger(seq)) return undefined;
  return { epoch: text.slice(0, i), seq };
}

/**
 * Parses `host:port` (`[v6]:port` for an IPv6 address).
 *
 * @param text The address.
 * @param defaultPort The port when `text` has none; without it, a port is required.
 * @returns The host name and port, or undefined when the text is not such an address.
 */
export function parseHostPort(
  text: string,
  defaultPort?: number,
): { hostname: string; port: number } | undefined {
  const i = text.lastIndexOf(":");
  if (i === -1 && defaultPort === undefined) return undefined;
  const hostname = i === -1 ? text : text.slice(0, i).replace(/^\[(.*)\]$/, "$1");
  const port = i === -1 ? defaultPort : Number(text.slice(i + 1));
  if (!hostname || !Number.isInteger(port) || (port as number) < 1 || (port as number) > 65535) {
    return undefined;
  }
  return { hostname, port: port as number };
}

/**
 * Reads an environment variable only where permission was granted: never prompts, never
 * throws (a server runs under `-N` alone). An empty variable counts as unset.
 *
 * @param name The variable.
 * @returns Its value, or undefined.
 */
export function env(name: string): string | undefined {
  try {
    if (Deno.permissions.querySync({ name: "env", variable: name }).state !== "granted") {
      return undefined;
    }
    return Deno.env.get(name) || undefined;
  } catch {
    return undefined;
  }
}

/**
 * Waits for `work`, but no longer than `ms` milliseconds: how `shutdown()` gives connections
 * `shutdownTimeout` to flush before it cuts them.
 *
 * @param work What to wait for.
 * @param ms The most milliseconds to wait.
 * @returns When `work` settled or the time is up, whichever comes first.
 */
export async function waitAtMost(work: Promise<unknown>, ms: number): Promise<void> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const timeout = new Promise<void>((resolve) => {
    timer = setTimeout(resolve, ms);
  });
  try {
    await Promise.race([work.then(() => {}, () => {}), timeout]);
  } finally {
    clearTimeout(timer);
  }
}
