/**
 * The server's log: `--log-format text|json`; info on start (addresses, engine, limits) and on
 * shutdown (connections closed, bytes flushed); debug on each connection opened and closed;
 * warn when the engine (Redis) goes down and when it is back; never a secret.
 */
import { assert, assertEquals, assertMatch } from "@std/assert";
import { TextLineStream } from "@std/streams/text-line-stream";
import { hasRedis, RedisProcess } from "./_redis.ts";
import { deadline } from "./_wait.ts";

const ROOT = new URL("..", import.meta.url).pathname;

/** A server.ts child whose stdout address lines and stderr log lines are read as they come. */
class Server implements AsyncDisposable {
  readonly child: Deno.ChildProcess;
  readonly log: string[] = [];
  readonly #out: ReadableStreamDefaultReader<string>;
  readonly #err: Promise<void>;
  #waiters: { test: (line: string) => boolean; resolve: (line: string) => void }[] = [];

  constructor(perms: string[], args: string[]) {
    this.child = new Deno.Command(Deno.execPath(), {
      args: ["run", ...perms, "server.ts", "--port", "0", ...args],
      cwd: ROOT,
      stdin: "null",
      stdout: "piped",
      stderr: "piped",
      env: { NO_COLOR: "1" },
    }).spawn();
    this.#out = this.child.stdout.pipeThrough(new TextDecoderStream())
      .pipeThrough(new TextLineStream()).getReader();
    const stderr = this.child.stderr;
    this.#err = (async () => {
      const lines = stderr.pipeThrough(new TextDecoderStream())
        .pipeThrough(new TextLineStream());
      for await (const line of lines) {
        this.log.push(line);
        this.#waiters = this.#waiters.filter((w) => {
          if (!w.test(line)) return true;
          w.resolve(line);
          return false;
        });
      }
    })();
  }

  /** The TCP port, from the first stdout line. */
  async port(): Promise<number> {
    const first = await deadline(this.#out.read(), "the server's address line");
    const m = /:(\d+)$/.exec(first.value ?? "");
    assert(m, `no address in ${JSON.stringify(first.value)}`);
    return Number(m[1]);
  }

  /** Waits for a log line that passes `test` (one already logged counts). */
  line(test: (line: string) => boolean, what: string): Promise<string> {
    const seen = this.log.find(test);
    if (seen !== undefined) return Promise.resolve(seen);
    const p = new Promise<string>((resolve) => this.#waiters.push({ test, resolve }));
    return deadline(p, () => `${what} (log so far: ${this.log.join(" | ")})`);
  }

  /** SIGTERM, then the exit code once stdout and stderr are read to their end. */
  async stop(): Promise<number> {
    try {
      this.child.kill("SIGTERM");
    } catch { /* exited */ }
    const status = await deadline(this.child.status, "the server to exit");
    await this.#out.cancel();
    await deadline(this.#err, "the server's stderr to end");
    return status.code;
  }

  async [Symbol.asyncDispose](): Promise<void> {
    try {
      this.child.kill("SIGKILL");
    } catch { /* exited */ }
    await this.child.status;
    await this.#out.cancel().catch(() => {});
    await this.#err.catch(() => {});
  }
}

async function readAll(conn: Deno.Conn): Promise<Uint8Array> {
  const chunks: Uint8Array[] = [];
  const buf = new Uint8Array(4096);
  for (let n = await conn.read(buf); n !== null; n = await conn.read(buf)) {
    chunks.push(buf.slice(0, n));
  }
  const out = new Uint8Array(chunks.reduce((s, c) => s + c.length, 0));
  let off = 0;
  for (const c of chunks) {
    out.set(c, off);
    off += c.length;
  }
  return out;
}

Deno.test("--log-format json: start, connections at debug, shutdown, and no secret", async () => {
  const secret = "tok-3c7e-very-secret";
  await using server = new Server(["-N"], [
    "--log-format",
    "json",
    "--log-level",
    "debug",
    "--token",
    `app:${secret}`,
    "--max-connections",
    "77",
  ]);
  const port = await server.port();
  const started = JSON.parse(
    await server.line((l) => l.includes('"msg":"started"'), "the start line"),
  );
  assertEquals(started.level, "info");
  assertEquals(started.tcp, `tcp://127.0.0.1:${port}`);
  assertEquals(started.engine, "memory");
  assertEquals(started.tokens, 1);
  assertEquals(started.max_connections, 77);
  assertEquals(started.max_line_bytes, 1048576);
  assertMatch(started.time, /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/);

  // A connection that says hello and listens, then one that comes and goes.
  const conn = await Deno.connect({ hostname: "127.0.0.1", port });
  const enc = new TextEncoder();
  await conn.write(enc.encode(
    JSON.stringify({ action: "hello", token: secret, id: 1 }) + "\n" +
      JSON.stringify({ action: "listen", stream: "job", id: 2 }) + "\n",
  ));
  const opened = JSON.parse(
    await server.line((l) => l.includes("tcp connection opened"), "the debug line of an open"),
  );
  assertEquals([opened.level, opened.open], ["debug", 1]);
  const other = await Deno.connect({ hostname: "127.0.0.1", port });
  other.close();
  const closed = JSON.parse(
    await server.line((l) => l.includes("tcp connection closed"), "the debug line of a close"),
  );
  assertEquals([closed.level, closed.open], ["debug", 1]);
  // Wait for the listen's ok, so that shutdown has a listener to tell.
  const buf = new Uint8Array(4096);
  let got = "";
  await deadline(
    (async () => {
      while (!got.includes('"id":2')) {
        const n = await conn.read(buf);
        if (n === null) throw new Error(`closed early: ${got}`);
        got += new TextDecoder().decode(buf.subarray(0, n));
      }
    })(),
    "the listen's ok",
  );

  server.child.kill("SIGTERM");
  const rest = await deadline(readAll(conn), "the connection's last bytes");
  conn.close();
  assertEquals(await server.stop(), 0);
  const stopped = JSON.parse(await server.line((l) => l.includes('"msg":"stopped"'), "stopped"));
  assertEquals(stopped.level, "info");
  assertEquals(stopped.closed_tcp, 1);
  assertEquals(stopped.closed_websocket, 0);
  assertEquals(stopped.flushed_bytes, rest.byteLength);
  assert(rest.byteLength > 0, "the listener was told close");
  for (const line of server.log) {
    JSON.parse(line); // every line is one JSON object
    assert(!line.includes(secret), `a secret in the log: ${line}`);
  }
});

Deno.test("--log-format text (the default): TIME LEVEL message key=value", async () => {
  await using server = new Server(["-N"], ["--http-port", "0"]);
  const port = await server.port();
  const line = await server.line((l) => / info started /.test(l), "the start line");
  assertMatch(
    line,
    new RegExp(
      `^\\d{4}-\\d\\d-\\d\\dT[\\d:.]+Z info started tcp=tcp://127\\.0\\.0\\.1:${port} ` +
        "http=http://127\\.0\\.0\\.1:\\d+ engine=memory tokens=0 max_connections=\\d+ ",
    ),
  );
  assertEquals(await server.stop(), 0);
  assertMatch(
    server.log.at(-1) ?? "",
    /^\S+Z info stopped closed_tcp=0 closed_websocket=0 closed_sse=0 flushed_bytes=0 puts=0 /,
  );
});

Deno.test("a bad --log-format is a usage error", async () => {
  const out = await deadline(
    new Deno.Command(Deno.execPath(), {
      args: ["run", "-N", "server.ts", "--log-format", "xml"],
      cwd: ROOT,
      stdin: "null",
    }).output(),
    "server.ts to exit",
  );
  assertEquals(out.code, 1);
  assertEquals(
    new TextDecoder().decode(out.stderr),
    'msgstream: Unknown --log-format "xml" (one of text, json) (see --help)\n',
  );
});

Deno.test({
  name: "Redis going down and coming back is logged at warn, once each, without its password",
  ignore: !hasRedis,
  async fn() {
    await using redis = await RedisProcess.start();
    const url = `redis://:hunter2-pass@127.0.0.1:${redis.port}`;
    await using server = new Server(["-N", "--allow-env"], [
      "--redis",
      url,
      "--log-level",
      "warn",
    ]);
    const port = await server.port();
    // A put goes through Redis: the engine is connected.
    const conn = await Deno.connect({ hostname: "127.0.0.1", port });
    await conn.write(
      new TextEncoder().encode('{"action":"put","stream":"s","message":1,"id":1}\n'),
    );
    const buf = new Uint8Array(1024);
    const n = await deadline(conn.read(buf), "the put's answer");
    conn.close();
    assertMatch(new TextDecoder().decode(buf.subarray(0, n ?? 0)), /"action":"ok"/);
    await redis.stop();
    const down = await server.line((l) => l.includes("engine redis is down"), "the down warning");
    assertMatch(
      down,
      new RegExp(
        `^\\S+Z warn engine redis is down: lost the connection to redis://127\\.0\\.0\\.1:` +
          `${redis.port}; requests get engine_unavailable until it is back engine=redis$`,
      ),
    );
    await redis.restart();
    const back = await server.line((l) => l.includes("engine redis is back"), "the back warning");
    assertMatch(
      back,
      /^\S+Z warn engine redis is back: connected again to redis:\/\/127\.0\.0\.1:/,
    );
    assertEquals(await server.stop(), 0);
    assertEquals(server.log.filter((l) => l.includes("engine redis is down")).length, 1);
    assertEquals(server.log.filter((l) => l.includes("engine redis is back")).length, 1);
    assert(!server.log.some((l) => l.includes("hunter2")), server.log.join("\n"));
  },
});
