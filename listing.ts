/**
 * Pages of stream names, the one rule behind `GET /streams` and the wire's `list`: the names
 * after a cursor that match a pattern and a filter, ordered by name (UTF-16 code units), at
 * most `limit` of them, and whether more follow. One pass over the names keeps the `limit + 1`
 * smallest in a heap, so a page costs a walk over the names and no sort of them all, and no
 * object per stream; {@linkcode pickNamesPausing} also lets the event loop run every few
 * thousand names.
 *
 * @example
 * ```ts
 * import { pickNames } from "./listing.ts";
 * import { assertEquals } from "@std/assert";
 *
 * const names = ["jobs.3", "jobs.1", "x", "jobs.2"];
 * assertEquals(pickNames(names, { pattern: "jobs.*", limit: 2 }), {
 *   names: ["jobs.1", "jobs.2"],
 *   more: true,
 * });
 * assertEquals(pickNames(names, { pattern: "jobs.*", limit: 2, after: "jobs.2" }), {
 *   names: ["jobs.3"],
 *   more: false,
 * });
 * ```
 *
 * @module
 */

import { matchPattern } from "./pattern.ts";

/** Names walked between pauses by {@linkcode pickNamesPausing}: a few milliseconds' work. */
export const LIST_SLICE = 5000;

/** Which names a page holds. */
export interface PickOptions {
  /** Only names after this one (any string). */
  after?: string;
  /** The most names in the page (at least 1). */
  limit: number;
  /**
   * Only names this pattern matches (see `pattern.ts`).
   *
   * @default {"*"}
   */
  pattern?: string;
  /** Only names this accepts (e.g. a token's subscribe grant). */
  allow?: (name: string) => boolean;
}

/** One page of names. */
export interface PickedNames {
  /** The page's names, smallest first. */
  names: string[];
  /** Whether names after the page's last one match too. */
  more: boolean;
}

/** Keeps the `keep` smallest names offered, in a max-heap. */
class Picker {
  readonly #keep: number;
  readonly #heap: string[] = [];
  readonly #after: string | undefined;
  readonly #pattern: string;
  readonly #allow: ((name: string) => boolean) | undefined;

  constructor(options: PickOptions) {
    if (!Number.isInteger(options.limit) || options.limit < 1) {
      throw new RangeError(`A page's limit must be a positive integer, got ${options.limit}`);
    }
    this.#keep = options.limit + 1; // one more tells whether more follow
    this.#after = options.after;
    this.#pattern = options.pattern ?? "*";
    this.#allow = options.allow;
  }

  offer(name: string): void {
    const h = this.#heap;
    if (this.#after !== undefined && name <= this.#after) return;
    if (h.length === this.#keep && name >= (h[0] as string)) return;
    if (!matchPattern(this.#pattern, name) || (this.#allow && !this.#allow(name))) return;
    if (h.length < this.#keep) {
      let i = h.push(name) - 1;
      while (i > 0) {
        const parent = (i - 1) >> 1;
        if ((h[parent] as string) >= name) break;
        h[i] = h[parent] as string;
        i = parent;
      }
      h[i] = name;
      return;
    }
    // Replace the largest and sift down.
    let i = 0;
    for (;;) {
      const l = 2 * i + 1;
      if (l >= h.length) break;
      const r = l + 1;
      const c = r < h.length && (h[r] as string) > (h[l] as string) ? r : l;
      if ((h[c] as string) <= name) break;
      h[i] = h[c] as string;
      i = c;
    }
    h[i] = name;
  }

  result(): PickedNames {
    const names = this.#heap.slice().sort((a, b) => a < b ? -1 : a > b ? 1 : 0);
    const more = names.length === this.#keep;
    if (more) names.pop();
    return { names, more };
  }
}

/**
 * One page of `names`, in one synchronous pass.
 *
 * @param names The names (e.g. `hub.names()`).
 * @param options Cursor, size, pattern and filter.
 * @returns The page, and whether more follow.
 * @throws {RangeError} When `limit` is not a positive integer.
 *
 * @example
 * ```ts
 * import { pickNames } from "./listing.ts";
 * import { assertEquals } from "@std/assert";
 *
 * assertEquals(pickNames(["b", "c", "a"], { limit: 2 }).names, ["a", "b"]);
 * ```
 */
export function pickNames(names: Iterable<string>, options: PickOptions): PickedNames {
  const picker = new Picker(options);
  for (const name of names) picker.offer(name);
  return picker.result();
}

/**
 * One page of `names`, pausing (a macrotask) every {@linkcode LIST_SLICE} names so that other
 * clients are served during a walk over many streams. A live iterator (`hub.names()`) sees
 * streams created during the walk and skips those deleted.
 *
 * @param names The names (e.g. `hub.names()`).
 * @param options Cursor, size, pattern and filter.
 * @returns The page, and whether more follow.
 * @throws {RangeError} When `limit` is not a positive integer.
 *
 * @example
 * ```ts
 * import { pickNamesPausing } from "./listing.ts";
 * import { assertEquals } from "@std/assert";
 *
 * const page = await pickNamesPausing(["b", "c", "a"], { limit: 2, after: "a" });
 * assertEquals(page, { names: ["b", "c"], more: false });
 * ```
 */
export async function pickNamesPausing(
  names: Iterable<string>,
  options: PickOptions,
): Promise<PickedNames> {
  const picker = new Picker(options);
  let walked = 0;
  for (const name of names) {
    if (++walked % LIST_SLICE === 0) await new Promise((resolve) => setTimeout(resolve, 0));
    picker.offer(name);
  }
  return picker.result();
}
