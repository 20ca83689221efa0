/**
 * The Redis memory guard under a flood (issue 11, round three): a refused write that waits
 * behind an earlier one must not be reported as an unhandled rejection. With a pipelined flood
 * of headers past the share, each refusal was logged at error level with its stack
 * ("unhandled rejection: LimitExceededError…": 4,365 lines in 8 s from one client).
 */
import { assertEquals, assertRejects } from "@std/assert";
import { RedisMemoryGuard } from "../redis_guard.ts";
import { LimitExceededError } from "../budget.ts";

Deno.test("a write the guard refuses while it waits behind another is not an unhandled rejection", async () => {
  const guard = new RedisMemoryGuard({
    percent: 90,
    read: () => Promise.resolve(["# Memory\r\nused_memory:95\r\nmaxmemory:100\r\n"]),
    intervalMs: 60_000,
  });
  // The first write waits for the first reading (past the share: refused).
  await assertRejects(() => guard.admit('Cannot set the header of stream "a"', 10));
  let unhandled = 0;
  const count = (e: PromiseRejectionEvent): void => {
    unhandled++;
    e.preventDefault();
  };
  globalThis.addEventListener("unhandledrejection", count);
  try {
    // A write that waits (a put's existence check, say), then a header set refused at once:
    // its refusal waits behind the first, longer than a turn of the event loop.
    const slow = Promise.withResolvers<void>();
    const first = guard.ordered(slow.promise);
    const refused = guard.ordered(guard.check('Cannot set the header of stream "b"', 10));
    await new Promise((r) => setTimeout(r, 50));
    slow.resolve();
    await first;
    await assertRejects(() => refused as Promise<void>, LimitExceededError, "redis_memory");
    assertEquals(unhandled, 0);
  } finally {
    globalThis.removeEventListener("unhandledrejection", count);
  }
});
