/**
 * The crash test of `--data` at soak length: tests/crash_test.ts, unchanged, with 20 SIGKILLs
 * per fsync policy (`always` and `batch`) instead of 3. `CRASH_ROUNDS`, when set, still wins.
 *
 * Run with `deno task soak` (or `deno test -A tests/soak/crash_soak_test.ts`).
 *
 * @module
 */

// crash_test.ts reads CRASH_ROUNDS when it loads, so set it first and import it afterwards.
if (!Deno.env.get("CRASH_ROUNDS")) Deno.env.set("CRASH_ROUNDS", "20");
await import("../crash_test.ts");
