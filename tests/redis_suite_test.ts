/**
 * The foundation suite on the Redis engine: runs `server_test.ts`, `bad_input_test.ts`,
 * `legacy_client_test.ts` and the pattern suites over the wire again in a `deno test` subprocess whose servers all use a fresh
 * `redis-server` (`MSGSTREAM_TEST_REDIS`, read by `engineOptions()` in `_server.ts`). The same
 * tests, unchanged, run on the memory engine in the ordinary run.
 *
 * To run the files on Redis by hand: start a redis-server, then
 * `MSGSTREAM_TEST_REDIS=redis://127.0.0.1:6379 deno test -A tests/server_test.ts …`.
 */

import { assert } from "@std/assert";
import { hasRedis, RedisProcess } from "./_redis.ts";
import { deadline, TIMEOUT } from "./_wait.ts";

const ROOT = new URL("..", import.meta.url).pathname;
const FILES = [
  "tests/server_test.ts",
  "tests/bad_input_test.ts",
  "tests/legacy_client_test.ts",
  // Pattern listens through TCP, RemoteStream, the CLI, SSE and WebSocket.
  "tests/pattern_wire_test.ts",
  "tests/pattern_cli_test.ts",
  "tests/pattern_http_test.ts",
];

Deno.test({
  name: "The server, bad input and original-protocol suites pass on the Redis engine",
  ignore: !hasRedis, // _redis.ts prints the SKIPPED line
  async fn() {
    await using redis = await RedisProcess.start();
    const child = new Deno.Command(Deno.execPath(), {
      args: ["test", "-A", ...FILES],
      cwd: ROOT,
      env: { MSGSTREAM_TEST_REDIS: redis.url, NO_COLOR: "1" },
      stdin: "null",
      stdout: "piped",
      stderr: "piped",
    }).spawn();
    let out: Deno.CommandOutput;
    try {
      // Every wait in those files has its own deadline; this one only keeps a stuck run finite.
      out = await deadline(child.output(), "the Redis engine suite to finish", 10 * TIMEOUT);
    } catch (e) {
      try {
        child.kill("SIGKILL");
      } catch { /* exited */ }
      await child.status;
      throw e;
    }
    const text = new TextDecoder();
    const stdout = text.decode(out.stdout);
    const summary = stdout.split("\n").findLast((l) => /^(ok|FAILED) \|/.test(l)) ?? "(no summary)";
    // deno-lint-ignore no-console
    console.log(`Redis engine suite (${FILES.join(", ")}): ${summary}`);
    assert(
      out.success,
      `deno test on the Redis engine exited ${out.code}:\n${stdout}\n${text.decode(out.stderr)}`,
    );
  },
});
