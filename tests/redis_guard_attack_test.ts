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

Deno.test("writes still queued on the node when Redis is read keep counting until the next reading", async () => {
  // Redis' figure at a reading leaves out what this node has decided but not yet sent (its
  // batches queue behind the read): forgetting those bytes at the reading let a burst of ten
  // clients' headers take Redis past maxmemory, where every client's puts failed.
  let used = 50;
  const guard = new RedisMemoryGuard({
    percent: 90,
    read: () => Promise.resolve([`# Memory\r\nused_memory:${used}\r\nmaxmemory:100\r\n`]),
    intervalMs: 0,
  });
  await guard.admit('Cannot set the header of stream "a"', 40); // 50 used: it may go
  // A second reading while those 40 bytes still wait in the node's queue: Redis says 50.
  await guard.check('Cannot set the header of stream "b"', 0)?.catch(() => {});
  await new Promise((r) => setTimeout(r, 0));
  assertEquals(guard.memory?.used, 50);
  await assertRejects(
    () => guard.admit('Cannot set the header of stream "c"', 20),
    LimitExceededError,
    "redis_memory",
  );
  // Once Redis has them (90 used), the next reading counts them there, not twice.
  used = 90;
  await guard.check('Cannot set the header of stream "d"', 0)?.catch(() => {});
  await new Promise((r) => setTimeout(r, 0));
  used = 10; // say the streams were deleted
  await guard.check('Cannot set the header of stream "e"', 0)?.catch(() => {});
  await new Promise((r) => setTimeout(r, 0));
  await guard.admit('Cannot set the header of stream "f"', 20);
});
