/**
 * Test helpers for the Redis engine: a real `redis-server` on a free port in a temp dir (no
 * persistence), and whether one is installed at all.
 *
 * @module
 */

import { deadline } from "./_wait.ts";

/** Whether `redis-server` can be run here; tests that need it are ignored (loudly) without. */
export const hasRedis: boolean = (() => {
  try {
    return new Deno.Command("redis-server", { args: ["--version"], stdout: "null", stderr: "null" })
      .outputSync().success;
  } catch {
    return false;
  }
})();

if (!hasRedis) {
  // deno-lint-ignore no-console
  console.log(
    "SKIPPED: Redis engine tests: redis-server not installed (apt-get install redis-server)",
  );
}

/** A port nobody listens on right now. */
export function freePort(): number {
  const l = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (l.addr as Deno.NetAddr).port;
  l.close();
  return port;
}

/** A running `redis-server` owned by a test. */
export class RedisProcess implements AsyncDisposable {
  /** Its port. */
  readonly port: number;
  /** Its directory (removed on dispose). */
  readonly dir: string;
  #child: Deno.ChildProcess | undefined;
  #output: Promise<void> | undefined;

  private constructor(port: number, dir: string) {
    this.port = port;
    this.dir = dir;
  }

  /** `redis://127.0.0.1:<port>`. */
  get url(): string {
    return `redis://127.0.0.1:${this.port}`;
  }

  /**
   * Starts a fresh server on a free port; resolves when it accepts connections.
   *
   * @returns The server.
   */
  static async start(): Promise<RedisProcess> {
    const r = new RedisProcess(freePort(), await Deno.makeTempDir({ prefix: "msgstream-redis-" }));
    await r.#spawn();
    return r;
  }

  async #spawn(): Promise<void> {
    const child = new Deno.Command("redis-server", {
      args: [
        "--port",
        String(this.port),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
        "--dir",
        this.dir,
        "--loglevel",
        "notice",
      ],
      stdout: "piped",
      stderr: "inherit",
      stdin: "null",
    }).spawn();
    this.#child = child;
    const ready = Promise.withResolvers<void>();
    this.#output = (async () => {
      let text = "";
      let done = false;
      for await (const chunk of child.stdout.pipeThrough(new TextDecoderStream())) {
        if (done) continue; // keep draining
        text += chunk;
        if (text.includes("Ready to accept connections")) {
          done = true;
          ready.resolve();
        }
      }
      if (!done) ready.reject(new Error(`redis-server did not start:\n${text}`));
    })();
    try {
      await deadline(ready.promise, `redis-server on port ${this.port} to accept connections`);
    } catch (e) {
      await this.stop();
      throw e;
    }
  }

  /**
   * Runs `redis-cli` against it.
   *
   * @param args The command.
   * @returns Its output, trimmed.
   */
  async cli(...args: string[]): Promise<string> {
    const out = await new Deno.Command("redis-cli", {
      args: ["-p", String(this.port), ...args],
      stdout: "piped",
      stderr: "piped",
    }).output();
    return new TextDecoder().decode(out.stdout).trim();
  }

  /** Stops it (SIGKILL: no shutdown save either way) and waits for it to exit. */
  async stop(): Promise<void> {
    const child = this.#child;
    if (!child) return;
    this.#child = undefined;
    try {
      child.kill("SIGKILL");
    } catch { /* exited */ }
    await child.status;
    await this.#output;
  }

  /** Starts it again on the same port, empty. */
  async restart(): Promise<void> {
    await this.stop();
    await this.#spawn();
  }

  /** Stops it and removes its directory. */
  async [Symbol.asyncDispose](): Promise<void> {
    await this.stop();
    await Deno.remove(this.dir, { recursive: true }).catch(() => {});
  }
}
