/**
 * A seedable PRNG for randomized tests, so a failing run can be replayed from its seed.
 *
 * @module
 */

/**
 * mulberry32: a small, fast, seedable PRNG, so a randomized test can be replayed from its seed.
 *
 * @param seed The seed.
 * @returns A function giving numbers in [0, 1).
 *
 * @example Same seed, same sequence
 * ```ts
 * import { prng } from "./_prng.ts";
 * import { assertEquals } from "@std/assert";
 *
 * assertEquals(prng(42)(), prng(42)());
 * ```
 */
export function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}
