/**
 * Access tokens: who may publish to and listen to which streams. Every door checks the same
 * {@linkcode Auth}: the TCP and WebSocket sessions at `hello`, the HTTP door per request. Token
 * files and `--token NAME:SECRET` are parsed here too.
 *
 * @example Check a secret and a right
 * ```ts
 * import { Auth, parseTokenSpec } from "./auth.ts";
 * import { assertEquals } from "@std/assert";
 *
 * const auth = new Auth([
 *   parseTokenSpec("ops:s3cret"),
 *   { name: "ci", secret: "ci-secret", publish: ["jobs.*"], subscribe: [] },
 * ]);
 * assertEquals(auth.check("ci-secret")?.publish("jobs.42"), true);
 * assertEquals(auth.check("ci-secret")?.subscribe("jobs.42"), false);
 * assertEquals(auth.check("wrong"), undefined);
 * ```
 *
 * @module
 */

/// <reference types="./std_types.d.ts" />
import { timingSafeEqual } from "@std/crypto/timing-safe-equal";
import { patternCovers } from "./pattern.ts";

/** Publish and subscribe rights of one token. */
export interface Permissions {
  /**
   * Stream-name patterns this token may `put`, `header` and `delete` on (`*` matches any run of
   * characters, dots included; the syntax of `pattern.ts`).
   */
  publish: string[];
  /**
   * Stream-name patterns this token may `listen` to. A pattern listen needs one of them to
   * cover the whole listen pattern (see `pattern.ts`).
   */
  subscribe: string[];
}

/** One access token. */
export interface Token extends Permissions {
  /** A name for logs; never the secret. */
  name: string;
  /** The secret a client presents in `hello`. */
  secret: string;
}

/** A right a token grants on a stream. */
export type Right = "publish" | "subscribe";

/** What a presented secret grants: a test per right. */
export interface Grant {
  /** The token's name. */
  readonly name: string;
  /** Whether the token may publish to (put, header, delete) the stream. */
  readonly publish: (stream: string) => boolean;
  /** Whether the token may listen to the stream. */
  readonly subscribe: (stream: string) => boolean;
  /**
   * Whether the token may listen to a pattern: one of its subscribe patterns covers every
   * name the pattern matches.
   */
  readonly subscribePattern: (pattern: string) => boolean;
}

/**
 * Compiles stream-name patterns (`*` matches any run of characters) into one test.
 *
 * @param patterns The patterns.
 * @returns Whether a stream name matches any of them.
 */
export function compilePatterns(patterns: string[]): (stream: string) => boolean {
  if (patterns.includes("*")) return () => true;
  if (patterns.length === 0) return () => false;
  const source = patterns
    .map((p) => p.split("*").map((part) => part.replace(/[.+?^${}()|[\]\\]/g, "\\$&")).join(".*"))
    .join("|");
  const re = new RegExp(`^(?:${source})$`, "s");
  return (stream) => re.test(stream);
}

/**
 * The message of a `forbidden` refusal, the same on every door.
 *
 * @param right The right the request needed.
 * @param stream The stream.
 * @returns The message.
 */
export function forbidden(right: Right, stream: string): string {
  return `Cannot ${right === "publish" ? "publish to" : "listen to"} stream "${stream}": ` +
    "not permitted";
}

/**
 * The message of a `forbidden` refusal of a pattern listen, the same on every door.
 *
 * @param pattern The pattern.
 * @returns The message.
 */
export function forbiddenPattern(pattern: string): string {
  return `Cannot listen to pattern "${pattern}": no subscribe grant of the token covers it`;
}

const encoder = new TextEncoder();

/** A set of tokens; checks secrets in constant time. */
export class Auth {
  #tokens: { secret: Uint8Array; grant: Grant }[];

  /**
   * Creates the token set.
   *
   * @param tokens The tokens.
   * @throws {TypeError} When a token has no name or secret.
   */
  constructor(tokens: Token[]) {
    this.#tokens = tokens.map((t) => {
      if (!t.name || !t.secret) throw new TypeError("Every token needs a name and a secret");
      return {
        secret: encoder.encode(t.secret),
        grant: {
          name: t.name,
          publish: compilePatterns(t.publish),
          subscribe: compilePatterns(t.subscribe),
          subscribePattern: (pattern) => t.subscribe.some((g) => patternCovers(g, pattern)),
        },
      };
    });
  }

  /**
   * The token set a door enforces: none (everyone may do everything) when no token is given.
   *
   * @param tokens The tokens, if any.
   * @returns The token set, or undefined for none.
   * @throws {TypeError} When a token has no name or secret.
   */
  static from(tokens: Token[] | undefined): Auth | undefined {
    return tokens && tokens.length > 0 ? new Auth(tokens) : undefined;
  }

  /**
   * Finds the grant of a presented secret, comparing against every token in constant time.
   *
   * @param secret What the client presented.
   * @returns The grant, or undefined.
   */
  check(secret: string): Grant | undefined {
    const given = encoder.encode(secret);
    let found: Grant | undefined;
    for (const t of this.#tokens) {
      // Compare equal-length buffers only, but always do the work.
      const same = given.byteLength === t.secret.byteLength
        ? timingSafeEqual(given, t.secret)
        : (timingSafeEqual(t.secret, t.secret), false);
      if (same && !found) found = t.grant;
    }
    return found;
  }
}

const TOKEN_KEYS = new Set(["name", "secret", "publish", "subscribe"]);

/**
 * Parses a token file: JSON `{"tokens": [{"name", "secret", "publish": [...], "subscribe": [...]}]}`.
 * Fails closed: every token must give `name`, `secret`, `publish` and `subscribe` (an empty list
 * grants nothing; `["*"]` grants every stream), and nothing else; names and secrets are unique.
 *
 * @param text The file's text.
 * @param file The file's name, for error messages.
 * @returns The tokens.
 * @throws {SyntaxError} When the text is not such a file; the message names the file and token.
 */
export function parseTokenFile(text: string, file = "(token file)"): Token[] {
  const where = `Token file "${file}"`;
  let data: unknown;
  try {
    data = JSON.parse(text);
  } catch (e) {
    throw new SyntaxError(`${where}: invalid JSON: ${(e as Error).message}`, { cause: e });
  }
  if (data === null || typeof data !== "object" || Array.isArray(data)) {
    throw new SyntaxError(`${where}: must be a JSON object with a "tokens" array`);
  }
  for (const key of Object.keys(data)) {
    if (key !== "tokens") throw new SyntaxError(`${where}: unknown key "${key}"`);
  }
  const list = (data as { tokens?: unknown }).tokens;
  if (!Array.isArray(list)) {
    throw new SyntaxError(`${where}: must be a JSON object with a "tokens" array`);
  }
  const names = new Set<string>();
  const secrets = new Set<string>();
  return list.map((t: unknown, i: number) => {
    if (t === null || typeof t !== "object" || Array.isArray(t)) {
      throw new SyntaxError(`${where}: token ${i} must be an object`);
    }
    const o = t as Record<string, unknown>;
    const label = typeof o.name === "string" && o.name ? `token "${o.name}"` : `token ${i}`;
    for (const key of Object.keys(o)) {
      if (!TOKEN_KEYS.has(key)) {
        throw new SyntaxError(
          `${where}: ${label}: unknown key "${key}" (expected name, secret, publish, subscribe)`,
        );
      }
    }
    if (typeof o.name !== "string" || o.name === "") {
      throw new SyntaxError(`${where}: ${label}: "name" must be a non-empty string`);
    }
    if (typeof o.secret !== "string" || o.secret === "") {
      throw new SyntaxError(`${where}: ${label}: "secret" must be a non-empty string`);
    }
    if (names.has(o.name)) throw new SyntaxError(`${where}: ${label}: duplicate name`);
    if (secrets.has(o.secret)) {
      throw new SyntaxError(`${where}: ${label}: same secret as an earlier token`);
    }
    names.add(o.name);
    secrets.add(o.secret);
    const rights = (field: "publish" | "subscribe"): string[] => {
      const v = o[field];
      if (v === undefined) {
        throw new SyntaxError(
          `${where}: ${label}: missing "${field}" (give ["*"] for every stream, [] for none)`,
        );
      }
      if (!Array.isArray(v) || v.some((p) => typeof p !== "string")) {
        throw new SyntaxError(`${where}: ${label}: "${field}" must be an array of strings`);
      }
      return v as string[];
    };
    return {
      name: o.name,
      secret: o.secret,
      publish: rights("publish"),
      subscribe: rights("subscribe"),
    };
  });
}

/**
 * Parses `NAME:SECRET` (all rights) as given to `--token`.
 *
 * @param spec The option's value.
 * @returns The token.
 * @throws {TypeError} When there is no colon or either part is empty.
 */
export function parseTokenSpec(spec: string): Token {
  const i = spec.indexOf(":");
  if (i <= 0 || i === spec.length - 1) {
    throw new TypeError('A token must be given as "NAME:SECRET"');
  }
  return { name: spec.slice(0, i), secret: spec.slice(i + 1), publish: ["*"], subscribe: ["*"] };
}
