/**
 * Issue 12: the compiled binary's permissions (tools/permissions.ts) cover every server option
 * it documents. cli.ts runs with exactly those permissions, once per option that needs one.
 *
 * @module
 */

import { assertEquals } from "@std/assert";
import { BINARY_PERMISSIONS } from "../tools/permissions.ts";
import { hasRedis, RedisProcess } from "./_redis.ts";

const ROOT = new URL("..", import.meta.url).pathname;

/** Runs `cli.ts serve ARGS` with the binary's permissions; returns its first stdout line. */
async function firstLine(args: string[]): Promise<{ line: string; stderr: string }> {
  const child = new Deno.Command(Deno.execPath(), {
    args: ["run", ...BINARY_PERMISSIONS, "cli.ts", "serve", "--port", "0", ...args],
    cwd: ROOT,
    env: { NO_COLOR: "1" },
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const stderr = new Response(child.stderr).text();
  const reader = child.stdout.pipeThrough(new TextDecoderStream()).getReader();
  let out = "";
  const timer = setTimeout(() => child.kill("SIGKILL"), 20_000);
  try {
    while (!out.includes("\n")) {
      const r = await reader.read();
      if (r.done) break;
      out += r.value;
    }
  } finally {
    clearTimeout(timer);
    await reader.cancel();
    try {
      child.kill("SIGTERM");
    } catch { /* exited */ }
    await child.status;
  }
  return { line: out.split("\n")[0] ?? "", stderr: await stderr };
}

Deno.test({
  name: "the binary's permissions serve --redis",
  ignore: !hasRedis,
  fn: async () => {
    await using redis = await RedisProcess.start();
    const { line, stderr } = await firstLine(["--redis", redis.url]);
    assertEquals(
      line.replace(/:\d+$/, ":PORT"),
      "msgstream listening on tcp://127.0.0.1:PORT",
      stderr,
    );
  },
});

Deno.test("the binary's permissions serve --token-file and --http-port", async () => {
  const dir = await Deno.makeTempDir({ prefix: "msgstream-bin-" });
  try {
    const file = `${dir}/tokens.json`;
    await Deno.writeTextFile(
      file,
      JSON.stringify({
        tokens: [{ name: "a", secret: "s3cret", publish: ["*"], subscribe: ["*"] }],
      }),
    );
    const { line, stderr } = await firstLine(["--token-file", file, "--http-port", "0"]);
    assertEquals(
      line.replace(/:\d+$/, ":PORT"),
      "msgstream listening on tcp://127.0.0.1:PORT",
      stderr,
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("the binary's permissions serve --data (a durable store)", async () => {
  const dir = await Deno.makeTempDir({ prefix: "msgstream-bin-" });
  try {
    const { line, stderr } = await firstLine(["--data", `${dir}/streams.db`]);
    assertEquals(
      line.replace(/:\d+$/, ":PORT"),
      "msgstream listening on tcp://127.0.0.1:PORT",
      stderr,
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
