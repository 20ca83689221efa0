/**
 * The HTTP door's Host allow-list (`--allowed-hosts`, `allowedHosts`): the names a request's
 * `Host` header may carry, so that a page on another site cannot reach the server through a
 * name of its own that resolves to the server's address (DNS rebinding); and the foreign
 * `Origin`s a WebSocket may come from.
 *
 * - Entries are host names or addresses, without ports: `example.com`, `127.0.0.1`, `[::1]`
 *   (or `::1`); `*.example.com` (or `.example.com`) allows every name under `example.com`;
 *   `*` allows any host. Names are compared without case and without a trailing dot; the
 *   port of the `Host` header is not compared.
 * - Without a list, a door bound to a loopback address (`127.0.0.0/8`, `::1`, `localhost`)
 *   allows {@linkcode LOOPBACK_HOSTS} and the bound name; a door bound elsewhere allows any
 *   host (the names clients use cannot be guessed: list them).
 * - A WebSocket's `Origin` is allowed when it is the request's own origin (its host is the
 *   `Host` header, which passed the list), the `corsOrigin`, or, with a list given, an origin
 *   whose host is on the list: behind a reverse proxy that rewrites `Host`, list the public
 *   name (and the address the proxy sends as `Host`).
 *
 * @example A loopback door
 * ```ts
 * import { AllowedHosts } from "./hosts.ts";
 * import { assertEquals } from "@std/assert";
 *
 * const hosts = AllowedHosts.from(undefined, "127.0.0.1");
 * assertEquals(hosts.allows("localhost:51933"), true);
 * assertEquals(hosts.allows("evil.example:51933"), false);
 * assertEquals(hosts.allowsOrigin("http://localhost:51933", "localhost:51933"), true);
 * assertEquals(hosts.allowsOrigin("https://evil.example", "localhost:51933"), false);
 * ```
 *
 * @module
 */

/** The names a door bound to a loopback address allows by default. */
export const LOOPBACK_HOSTS: readonly string[] = ["localhost", "*.localhost", "127.0.0.1", "[::1]"];

/**
 * Whether an address to listen on is a loopback one: `localhost`, `127.0.0.0/8` or `::1`.
 *
 * @param hostname The address (as given to `Deno.serve`).
 * @returns Whether only this machine can reach it.
 *
 * @example
 * ```ts
 * import { isLoopback } from "./hosts.ts";
 * import { assertEquals } from "@std/assert";
 *
 * assertEquals(isLoopback("127.0.0.1"), true);
 * assertEquals(isLoopback("0.0.0.0"), false);
 * ```
 */
export function isLoopback(hostname: string): boolean {
  const h = hostname.toLowerCase().replace(/^\[|\]$/g, "");
  return h === "localhost" || h === "::1" || /^127\.\d{1,3}\.\d{1,3}\.\d{1,3}$/.test(h);
}

/**
 * The host name of a `Host` header or URL host (`name:port`, `[v6]:port`), lowercased,
 * without its port and trailing dot; IPv6 keeps its brackets.
 */
function hostnameOf(host: string): string {
  let h = host.trim().toLowerCase();
  if (h.startsWith("[")) {
    const end = h.indexOf("]");
    h = end < 0 ? h : h.slice(0, end + 1);
  } else {
    const colon = h.lastIndexOf(":");
    if (colon >= 0) h = h.slice(0, colon);
  }
  return h.endsWith(".") ? h.slice(0, -1) : h;
}

/** One entry, checked and normalized: a name, `[v6]`, `.suffix` or `*`. */
function normalize(entry: string): string {
  let e = entry.trim().toLowerCase();
  if (e === "*") return e;
  if (e.startsWith("*.")) e = e.slice(1);
  if (e.endsWith(".")) e = e.slice(0, -1);
  if (!e.startsWith("[") && e.split(":").length > 2) e = `[${e}]`;
  const bad = e === "" || e === "." || /[\s/?#@*]/.test(e) ||
    (e.startsWith("[") ? !/^\[[0-9a-f:.]+\]$/.test(e) : e.includes(":"));
  if (bad) {
    throw new TypeError(
      `Allowed host "${entry}" is not a host name, an address, *.name or *` +
        (!e.startsWith("[") && e.includes(":") ? " (give it without a port)" : ""),
    );
  }
  return e;
}

/** Which `Host` headers and WebSocket `Origin`s an HTTP door answers. */
export class AllowedHosts {
  /** Whether any host is allowed (`*`, or a door bound to a non-loopback address). */
  readonly any: boolean;
  /** Whether the list was given (rather than derived from the bound address). */
  readonly given: boolean;
  /** The entries, normalized. */
  readonly entries: readonly string[];
  readonly #exact = new Set<string>();
  readonly #suffixes: string[] = [];

  /**
   * Makes a list from checked entries; see {@linkcode AllowedHosts.from}.
   *
   * @param entries The entries, normalized.
   * @param given Whether they were given.
   */
  private constructor(entries: readonly string[], given: boolean) {
    this.entries = entries;
    this.given = given;
    this.any = entries.includes("*");
    for (const e of entries) {
      if (e.startsWith(".")) this.#suffixes.push(e);
      else this.#exact.add(e);
    }
  }

  /**
   * The list of a door: the entries given (each may hold several, comma-separated), or the
   * default for the address it is bound to (see the module doc).
   *
   * @param given The entries (`--allowed-hosts`), if any.
   * @param bound The address the door listens on; `undefined` for a handler embedded in
   * another server (any host unless entries are given).
   * @returns The list.
   * @throws {TypeError} When an entry is not a host name, an address, `*.name` or `*`, or
   * the list is empty.
   */
  static from(given: readonly string[] | undefined, bound: string | undefined): AllowedHosts {
    if (given !== undefined) {
      const entries = given.flatMap((g) => g.split(",")).filter((e) => e.trim() !== "");
      if (entries.length === 0) {
        throw new TypeError('The allowed hosts are empty: give names, or "*" for any host');
      }
      return new AllowedHosts([...new Set(entries.map(normalize))], true);
    }
    if (bound !== undefined && isLoopback(bound)) {
      return new AllowedHosts([...new Set([...LOOPBACK_HOSTS, bound].map(normalize))], false);
    }
    return new AllowedHosts(["*"], false);
  }

  /**
   * Whether a request with this `Host` header is answered.
   *
   * @param host The `Host` header (`null` when missing: allowed only when any host is).
   * @returns Whether it is on the list.
   */
  allows(host: string | null): boolean {
    if (this.any) return true;
    return host !== null && this.#matches(hostnameOf(host));
  }

  /**
   * Whether a WebSocket from `origin` is accepted on a request with this `Host` header (the
   * `corsOrigin` aside, which the door checks itself).
   *
   * @param origin The `Origin` header.
   * @param host The `Host` header.
   * @returns Whether it is the request's own origin, or (with a list given) on the list.
   */
  allowsOrigin(origin: string, host: string | null): boolean {
    let url: URL;
    try {
      url = new URL(origin);
    } catch {
      return false; // "null" (a sandboxed or file: page) and other non-URLs
    }
    if (url.protocol !== "http:" && url.protocol !== "https:") return false;
    if (host !== null && url.host === host.trim().toLowerCase()) return true;
    return this.given && !this.any && this.#matches(hostnameOf(url.host));
  }

  #matches(name: string): boolean {
    if (this.#exact.has(name)) return true;
    for (const s of this.#suffixes) if (name.endsWith(s)) return true;
    return false;
  }
}
