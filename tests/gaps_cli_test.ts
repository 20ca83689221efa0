/**
 * Issue 12, the command line: `listen` reconnects within a budget set by flags, by default the
 * library's.
 *
 * @module
 */

import { assertEquals, assertMatch } from "@std/assert";
import { TextLineStream } from "@std/streams/text-line-stream";
import { serve } from "../server.ts";

const ROOT = new URL("..", import.meta.url).pathname;

/** Rejects with a message when `p` does not settle within `ms`. */
function within<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const late = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`Timed out after ${ms} ms: ${what}`)), ms);
  });
  return Promise.race([p, late]).finally(() => clearTimeout(timer));
}

function cli(args: string[]): Deno.ChildProcess {
  return new Deno.Command(Deno.execPath(), {
    args: ["run", "-N", "cli.ts", ...args],
    cwd: ROOT,
    env: { NO_COLOR: "1" },
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
}

Deno.test("msgstream listen --reconnect-attempts N gives up after exactly N attempts, exit 2", async () => {
  const server = serve({ port: 0, logLevel: "silent" });
  await server.hub.put("s", 1);
  const child = cli([
    "listen",
    "s",
    "--server",
    `127.0.0.1:${server.addr.port}`,
    "--reconnect-attempts",
    "3",
    "--reconnect-wait",
    "20",
  ]);
  const stderr = new Response(child.stderr).text();
  const lines = child.stdout.pipeThrough(new TextDecoderStream()).pipeThrough(new TextLineStream())
    .getReader();
  // Listening: wait until the server counts the CLI as a listener.
  for (let i = 0; (server.hub.info("s")?.listeners ?? 0) === 0; i++) {
    if (i > 500) throw new Error("the CLI never listened");
    await new Promise((r) => setTimeout(r, 10));
  }
  await server.shutdown();
  const { code } = await within(child.status, 20_000, "the CLI to give up");
  await lines.cancel();
  const err = await stderr;
  const attempts = err.split("\n").filter((l) => /reconnect attempt \d+/.test(l));
  assertEquals(attempts, [
    "msgstream: reconnect attempt 1",
    "msgstream: reconnect attempt 2",
    "msgstream: reconnect attempt 3",
  ]);
  assertEquals(code, 2);
});

Deno.test("msgstream listen --help states the reconnect flags and the library's defaults", async () => {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-N", "cli.ts", "listen", "--help"],
    cwd: ROOT,
    env: { NO_COLOR: "1" },
    stdout: "piped",
    stderr: "piped",
  }).output();
  const text = new TextDecoder().decode(out.stdout);
  assertEquals(out.code, 0);
  assertMatch(
    text,
    /--reconnect-attempts N[\s\S]*--reconnect-attempts=-1 never gives up \(default 10, as\s+the library\)/,
  );
  assertMatch(text, /--reconnect-wait MS[\s\S]*default 2000, as the library/);
});

Deno.test("msgstream listen --reconnect-attempts below -1 is a usage error", async () => {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-N", "cli.ts", "listen", "s", "--reconnect-attempts=-2"],
    cwd: ROOT,
    env: { NO_COLOR: "1" },
    stdout: "piped",
    stderr: "piped",
  }).output();
  assertEquals(out.code, 1);
  assertMatch(
    new TextDecoder().decode(out.stderr),
    /--reconnect-attempts must be an integer of at least -1, got "-2"/,
  );
});
