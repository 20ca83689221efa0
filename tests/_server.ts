/**
 * Servers for tests: the engine under test (`MSGSTREAM_TEST_REDIS`), a server's address, and the
 * server as a child process (started on port 0 or a given port, its listening port read from
 * its first stdout line, its log kept, killed or stopped). Every wait has a deadline.
 *
 * @example A server in its own process
 * ```ts
 * import { connectRaw } from "./_raw_client.ts";
 * import { ServerProcess } from "./_server.ts";
 * import { assertEquals } from "@std/assert";
 *
 * await using server = await ServerProcess.start(["--log-level", "warn"]);
 * await using raw = await connectRaw(server.port);
 * await raw.send({ action: "ping", id: 1 });
 * assertEquals(await raw.next(), { action: "pong", id: 1 });
 * ```
 *
 * @module
 */

import { deadline, TIMEOUT, type What } from "./_wait.ts";

/**
 * The `"host:port"` of a server, for `RemoteStream.connect`.
 *
 * @param server Anything with a bound `addr`.
 * @returns The address.
 */
export function addressOf(server: { addr: Deno.NetAddr }): string {
  return `${server.addr.hostname}:${server.addr.port}`;
}

/** The Redis URL the suite runs against (`MSGSTREAM_TEST_REDIS`), or `undefined`: memory. */
export const testRedis: string | undefined = Deno.env.get("MSGSTREAM_TEST_REDIS") || undefined;

/**
 * Server options selecting the engine under test: `{}` (the memory engine) normally, or the
 * Redis engine when `MSGSTREAM_TEST_REDIS` holds a URL (see `tests/redis_suite_test.ts`). Each
 * call gives a fresh key prefix, so tests sharing one Redis never see each other's streams.
 *
 * @returns Options to spread into `serve()`.
 *
 * @example
 * ```ts
 * import { serve } from "../server.ts";
 * import { engineOptions } from "./_server.ts";
 *
 * await using server = serve({ port: 0, ...engineOptions() });
 * ```
 */
export function engineOptions(): { redis?: string; redisPrefix?: string } {
  if (testRedis === undefined) return {};
  return { redis: testRedis, redisPrefix: `msgstream-test-${crypto.randomUUID()}:` };
}

/**
 * Reads a server process's stdout up to its first line and returns the port of its
 * `msgstream listening on tcp://HOST:PORT` line. The reader is cancelled afterwards.
 *
 * @param stdout The process's stdout.
 * @param ms The deadline in milliseconds.
 * @returns The port, or undefined when the process ended without listening (e.g. the port was
 * still held).
 * @throws {TimeoutError} When no line comes within `ms`.
 */
export async function listeningPort(
  stdout: ReadableStream<Uint8Array>,
  ms: number = TIMEOUT,
): Promise<number | undefined> {
  const reader = stdout.pipeThrough(new TextDecoderStream()).getReader();
  let out = "";
  try {
    await deadline(
      (async () => {
        while (!out.includes("\n")) {
          const r = await reader.read();
          if (r.done) break;
          out += r.value;
        }
      })(),
      () => `the server's "listening on" line (stdout so far: ${JSON.stringify(out)})`,
      ms,
    );
  } finally {
    await reader.cancel();
  }
  const m = out.match(/listening on tcp:\/\/[^:]+:(\d+)/);
  return m ? Number(m[1]) : undefined;
}

const serverPath = new URL("../server.ts", import.meta.url).pathname;

/** Options for {@linkcode ServerProcess}. */
export interface ServerProcessOptions {
  /**
   * Where the server's log (stderr) goes: kept in {@linkcode ServerProcess.log}, or passed
   * through to the test's stderr.
   *
   * @default {"keep"}
   */
  stderr?: "keep" | "inherit";
  /**
   * Flags for `deno run` before the server's path (e.g. `["--unstable-net"]`).
   *
   * @default {[]}
   */
  denoArgs?: string[];
}

/**
 * The server (`server.ts`) as a child process, started with `--port` and the given arguments;
 * restartable on the same port (a crash and a restart).
 */
export class ServerProcess implements AsyncDisposable {
  /** The port it listens on (the last start's). */
  port = 0;
  /** Its log lines (stderr), when kept. */
  readonly log: string[] = [];
  readonly #args: string[];
  readonly #options: ServerProcessOptions;
  #child: Deno.ChildProcess | undefined;
  #stderr: Promise<void> | undefined;
  #logWaiters: { match: RegExp; resolve: () => void }[] = [];

  /**
   * Prepares a server process; {@linkcode ServerProcess.start} runs it.
   *
   * @param args Arguments after `--port N` (e.g. `["--max-outbound-bytes", "65536"]`).
   * @param options Where its log goes.
   */
  constructor(args: string[] = [], options: ServerProcessOptions = {}) {
    this.#args = args;
    this.#options = options;
  }

  /**
   * Creates and starts a server process on a free port.
   *
   * @param args Arguments after `--port 0`.
   * @param options Where its log goes.
   * @returns The running server.
   * @throws {Error} When it does not start.
   */
  static async start(
    args: string[] = [],
    options: ServerProcessOptions = {},
  ): Promise<ServerProcess> {
    const server = new ServerProcess(args, options);
    try {
      await server.start();
    } catch (e) {
      await server.kill();
      throw e;
    }
    return server;
  }

  /** The running child process. */
  get child(): Deno.ChildProcess {
    if (!this.#child) throw new Error("The server process is not running");
    return this.#child;
  }

  /**
   * Starts the process and waits for its listening line. On a given port still held (a
   * restart right after a kill), it tries again, up to 20 times.
   *
   * @param port The port; 0 picks a free one.
   * @returns When it listens.
   * @throws {Error} When it does not start.
   */
  async start(port = 0): Promise<void> {
    for (let attempt = 0;; attempt++) {
      const child = new Deno.Command(Deno.execPath(), {
        args: [
          "run",
          "-N",
          ...(this.#options.denoArgs ?? []),
          serverPath,
          "--port",
          String(port),
          ...this.#args,
        ],
        stdin: "null",
        stdout: "piped",
        stderr: this.#options.stderr === "inherit" ? "inherit" : "piped",
      }).spawn();
      this.#child = child;
      if (this.#options.stderr !== "inherit") this.#stderr = this.#keepLog(child.stderr);
      let started: number | undefined;
      try {
        started = await listeningPort(child.stdout);
      } catch (e) {
        await this.kill();
        throw e;
      }
      if (started !== undefined) {
        this.port = started;
        return;
      }
      await this.#reap();
      if (attempt >= 20) {
        throw new Error(`Server did not start on port ${port}: ${this.log.slice(-5).join("\n")}`);
      }
      await new Promise((r) => setTimeout(r, 100)); // the port is still held: try again
    }
  }

  async #keepLog(stderr: ReadableStream<Uint8Array>): Promise<void> {
    let partial = "";
    for await (const text of stderr.pipeThrough(new TextDecoderStream())) {
      partial += text;
      const lines = partial.split("\n");
      partial = lines.pop() as string;
      for (const line of lines) {
        this.log.push(line);
        this.#logWaiters = this.#logWaiters.filter((w) =>
          !w.match.test(line) || (w.resolve(), false)
        );
      }
    }
  }

  /**
   * Waits until a log line matches (lines already logged count).
   *
   * @param match The pattern.
   * @param what What the line means, for the error.
   * @param ms The deadline in milliseconds.
   * @returns When a line matches.
   * @throws {TimeoutError} When none does within `ms`.
   */
  logged(match: RegExp, what: What = `a log line matching ${match}`, ms = TIMEOUT): Promise<void> {
    if (this.log.some((l) => match.test(l))) return Promise.resolve();
    return deadline(
      new Promise<void>((resolve) => this.#logWaiters.push({ match, resolve })),
      () =>
        `${typeof what === "function" ? what() : what} (last log lines: ${
          this.log.length > 0 ? this.log.slice(-3).join(" | ") : "none"
        })`,
      ms,
    );
  }

  /**
   * The process's resident set size in bytes (Linux).
   *
   * @returns The size, or 0 when unknown.
   */
  rss(): number {
    if (!this.#child) return 0;
    let status: string;
    try {
      status = Deno.readTextFileSync(`/proc/${this.#child.pid}/status`);
    } catch {
      return 0; // exited meanwhile
    }
    const m = status.match(/^VmRSS:\s+(\d+)\s+kB/m);
    return m ? Number(m[1]) * 1024 : 0;
  }

  /** Waits for the child to exit and its log to be read. */
  async #reap(): Promise<void> {
    const child = this.#child;
    this.#child = undefined;
    if (!child) return;
    await child.status;
    await this.#stderr;
    this.#stderr = undefined;
  }

  /**
   * Kills the process (SIGKILL, no graceful shutdown: a crash) and waits for it to exit.
   *
   * @returns When it has exited.
   */
  async kill(): Promise<void> {
    try {
      this.#child?.kill("SIGKILL");
    } catch {
      // already gone
    }
    await this.#reap();
  }

  /**
   * Stops the process: SIGTERM (a graceful shutdown), then SIGKILL when it has not exited
   * within the deadline.
   *
   * @param ms The deadline for the graceful shutdown, in milliseconds.
   * @returns When it has exited.
   */
  async stop(ms: number = TIMEOUT): Promise<void> {
    const child = this.#child;
    if (!child) return;
    try {
      child.kill("SIGTERM");
    } catch {
      // already gone
    }
    try {
      await deadline(child.status, "the server process to exit after SIGTERM", ms);
    } catch {
      // Stuck in its shutdown: the test reports its own failure; do not hang on this one.
    }
    await this.kill();
  }

  /**
   * Stops the process (see {@linkcode ServerProcess.stop}), for `await using`.
   *
   * @returns When it has exited.
   */
  [Symbol.asyncDispose](): Promise<void> {
    return this.stop();
  }
}
