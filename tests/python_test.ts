// The dependency-free Python client in examples/python, run by python3 against a real server, and
// compared with the msgstream command line (cli.ts) on the same arguments.
import { assertEquals, assertMatch, assertStringIncludes } from "@std/assert";
import { TextLineStream } from "@std/streams/text-line-stream";
import { MessageStream } from "../mod.ts";
import { serve } from "../server.ts";
import { Recorder } from "./_recorder.ts";
import { deadline } from "./_wait.ts";

const ROOT = new URL("..", import.meta.url).pathname;
const CLIENT = "examples/python/msgstream_client.py";
const CLI = "cli.ts";
/** A child process that runs longer than this is killed and the test fails. */
const RUN_MS = 30_000;

const HAS_PYTHON = (() => {
  try {
    return new Deno.Command("python3", { args: ["--version"], stdout: "null", stderr: "null" })
      .outputSync().success;
  } catch {
    return false;
  }
})();
// deno-lint-ignore no-console
if (!HAS_PYTHON) console.error("SKIPPED: Python client tests: python3 not installed");

interface Ran {
  code: number;
  stdout: string;
  stderr: string;
}

type Env = Record<string, string>;

function python(args: string[], env: Env = {}, stdin: "null" | "piped" = "null"): Deno.Command {
  return new Deno.Command("python3", {
    args: [CLIENT, ...args],
    cwd: ROOT,
    // No MSGSTREAM_* from the environment of whoever runs the tests.
    clearEnv: true,
    env: { PATH: Deno.env.get("PATH") ?? "/usr/bin:/bin", PYTHONUNBUFFERED: "1", ...env },
    stdin,
    stdout: "piped",
    stderr: "piped",
  });
}

function cli(args: string[], env: Env = {}, stdin: "null" | "piped" = "null"): Deno.Command {
  return new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", CLI, ...args],
    cwd: ROOT,
    clearEnv: true,
    env: { PATH: Deno.env.get("PATH") ?? "/usr/bin:/bin", NO_COLOR: "1", ...env },
    stdin,
    stdout: "piped",
    stderr: "piped",
  });
}

/** Runs a command to its end (killed, and failing, past {@linkcode RUN_MS}). */
async function run(command: Deno.Command, what: string, stdin?: string): Promise<Ran> {
  const child = command.spawn();
  if (stdin !== undefined) {
    const w = child.stdin.getWriter();
    await w.write(new TextEncoder().encode(stdin));
    await w.close();
  }
  try {
    const out = await deadline(child.output(), `${what} to exit`, RUN_MS);
    const dec = new TextDecoder();
    return { code: out.code, stdout: dec.decode(out.stdout), stderr: dec.decode(out.stderr) };
  } catch (e) {
    try {
      child.kill("SIGKILL");
    } catch { /* exited */ }
    await child.status;
    throw e;
  }
}

function runPython(args: string[], env: Env = {}, stdin?: string): Promise<Ran> {
  const cmd = python(args, env, stdin === undefined ? "null" : "piped");
  return run(cmd, `python3 ${CLIENT} ${args.join(" ")}`, stdin);
}

function runCli(args: string[], env: Env = {}, stdin?: string): Promise<Ran> {
  const cmd = cli(args, env, stdin === undefined ? "null" : "piped");
  return run(cmd, `deno run ${CLI} ${args.join(" ")}`, stdin);
}

function lines(text: string): unknown[] {
  return text.split("\n").filter((l) => l !== "").map((l) => JSON.parse(l));
}

Deno.test({
  name: "Python client listens header first, puts in order, and resumes after a server restart",
  ignore: !HAS_PYTHON,
  async fn() {
    const hub = new MessageStream();
    await hub.header("job", { state: "running" });
    let server = serve({ port: 0, hub, logLevel: "silent" });
    const port = server.addr.port;
    const child = python([
      "--server",
      `127.0.0.1:${port}`,
      "--reconnect-wait",
      "100",
      "--reconnect-attempts",
      "200",
      "listen",
      "job",
      "--count",
      "6",
    ]).spawn();
    const out = child.stdout.pipeThrough(new TextDecoderStream()).pipeThrough(new TextLineStream())
      .getReader();
    const errLines = child.stderr.pipeThrough(new TextDecoderStream()).pipeThrough(
      new TextLineStream(),
    ).getReader();
    const next = async () =>
      JSON.parse((await deadline(out.read(), "the next event line")).value ?? "null");
    const nextStatus = async () =>
      (await deadline(errLines.read(), "the next status line")).value ?? "";
    try {
      assertMatch(await nextStatus(), /^msgstream_client: connected /);
      const got = [await next()];
      await hub.put("job", 1);
      await hub.put("job", { n: 2 });
      await hub.put("job", "three");
      for (let i = 0; i < 3; i++) got.push(await next());
      // Restart: the same hub (so the same history) behind a new server on the same port.
      await server.shutdown();
      assertMatch(await nextStatus(), /^msgstream_client: disconnected /);
      await hub.put("job", 4);
      await hub.put("job", 5);
      server = serve({ port, hub, logLevel: "silent" });
      let status = await nextStatus();
      while (status.startsWith("msgstream_client: reconnecting")) status = await nextStatus();
      assertMatch(status, /^msgstream_client: reconnected /);
      await hub.put("job", 6);
      for (let i = 0; i < 3; i++) got.push(await next());
      const epoch = hub.info("job")?.epoch;
      assertEquals(got, [
        { stream: "job", kind: "header", seq: 0, epoch, message: { state: "running" } },
        { stream: "job", kind: "put", seq: 1, epoch, message: 1 },
        { stream: "job", kind: "put", seq: 2, epoch, message: { n: 2 } },
        { stream: "job", kind: "put", seq: 3, epoch, message: "three" },
        { stream: "job", kind: "put", seq: 4, epoch, message: 4 },
        { stream: "job", kind: "put", seq: 5, epoch, message: 5 },
        { stream: "job", kind: "put", seq: 6, epoch, message: 6 },
      ]);
      assertEquals((await deadline(out.read(), "the end of stdout")).done, true);
      assertEquals((await deadline(child.status, "the client to exit")).code, 0);
    } finally {
      await out.cancel();
      await errLines.cancel();
      try {
        child.kill();
      } catch { /* exited */ }
      await child.status;
      await server.shutdown();
    }
  },
});

Deno.test({
  name: "Python client --since resumes after the given position",
  ignore: !HAS_PYTHON,
  async fn() {
    await using server = serve({ port: 0, logLevel: "silent" });
    for (let i = 1; i <= 4; i++) await server.hub.put("s", i);
    const epoch = server.hub.info("s")?.epoch;
    const r = await runPython([
      "--server",
      `127.0.0.1:${server.addr.port}`,
      "listen",
      "s",
      "--since",
      `${epoch}:2`,
      "--count",
      "2",
    ]);
    assertEquals(r.code, 0, r.stderr);
    const events = lines(r.stdout) as { kind: string; seq: number; message: unknown }[];
    assertEquals(events.map((e) => [e.kind, e.seq, e.message]), [["put", 3, 3], ["put", 4, 4]]);
  },
});

Deno.test({
  name: "Python client puts, sets, prints and clears headers, and deletes, with a token",
  ignore: !HAS_PYTHON,
  async fn() {
    await using server = serve({
      port: 0,
      logLevel: "silent",
      tokens: [{ name: "py", secret: "pw", publish: ["*"], subscribe: ["*"] }],
    });
    const q = new Recorder("p");
    await server.hub.listen("p", q);
    const base = ["--server", `127.0.0.1:${server.addr.port}`, "--token", "pw"];
    const printed: unknown[] = [];
    for (
      const args of [
        ["put", "p", '{"a":1}'],
        ["put", "p", "plain text"],
        ["put", "p", "--raw", "7"],
        ["header", "p", '{"state":"done"}'],
        ["header", "p"],
        ["header", "p", "--clear"],
        ["header", "p"],
        ["delete", "p"],
      ]
    ) {
      const r = await runPython([...base, ...args]);
      assertEquals(r.code, 0, `${args.join(" ")}: ${r.stderr}`);
      printed.push(...lines(r.stdout));
    }
    assertEquals(q.events.map((e) => [e.kind, e.message]), [
      ["put", { a: 1 }],
      ["put", "plain text"],
      ["put", "7"],
      ["header", { state: "done" }],
      ["header", null],
      ["end", null],
    ]);
    const epoch = q.events[0]?.epoch;
    assertEquals(printed, [
      { stream: "p", kind: "header", seq: 3, epoch, message: { state: "done" } },
      { stream: "p", kind: "header", seq: 3, epoch, message: null },
    ]);
    const bad = await runPython(["--server", `127.0.0.1:${server.addr.port}`, "put", "p", "1"]);
    assertEquals(bad.code, 2);
    assertStringIncludes(bad.stderr, "unauthorized");
    assertStringIncludes(bad.stderr, "give --token");
  },
});

Deno.test({
  name: "Python client stat() does not create the stream it asks about",
  ignore: !HAS_PYTHON,
  async fn() {
    await using server = serve({ port: 0, logLevel: "silent" });
    const at = `127.0.0.1:${server.addr.port}`;
    const r = await runPython(["--server", at, "header", "nosuch"]);
    assertEquals(r.code, 0, r.stderr);
    assertEquals(lines(r.stdout), [
      { stream: "nosuch", kind: "header", seq: 0, epoch: null, message: null },
    ]);
    assertEquals(server.hub.info("nosuch"), undefined);
  },
});

Deno.test({
  name: "Python client takes options before or after the command, and -- before any argument",
  ignore: !HAS_PYTHON,
  async fn() {
    await using server = serve({ port: 0, logLevel: "silent" });
    const q = new Recorder("o");
    await server.hub.listen("o", q);
    const at = `127.0.0.1:${server.addr.port}`;
    for (
      const args of [
        ["--server", at, "put", "o", "1"],
        ["put", "--server", at, "o", "2"],
        ["put", "o", "3", "--server", at],
        ["--raw", "put", "o", "4", "--server", at],
        ["put", "o", "--", "-5", "--server", at],
        ["put", "--server", at, "--", "o", "-6", "--raw"],
        ["--server", at, "--", "put", "o", "-7"],
        ["--server", at, "put", "o", "--", "--raw"],
      ]
    ) {
      const r = await runPython(args);
      assertEquals(r.code, 0, `${args.join(" ")}: ${r.stderr}`);
    }
    assertEquals(q.events.map((e) => e.message), [1, 2, 3, "4", -5, "-6", -7, "--raw"]);
    // After the arguments a command takes, "-x" is an option again: an unknown one.
    const r = await runPython(["put", "o", "--", "1", "-x", "--server", at]);
    assertEquals([r.code, r.stderr.split("\n")[0]], [
      1,
      'msgstream_client: Unknown option "-x" for put',
    ]);
    assertEquals(q.events.length, 8);
  },
});

Deno.test({
  name: "Python client listen --timeout exits 0 after the header, with no put",
  ignore: !HAS_PYTHON,
  async fn() {
    await using server = serve({ port: 0, logLevel: "silent" });
    await server.hub.header("t", "h");
    const epoch = server.hub.info("t")?.epoch;
    const r = await runPython(["listen", "t", "--timeout", "200"], {
      MSGSTREAM_SERVER: `127.0.0.1:${server.addr.port}`,
    });
    assertEquals(r.code, 0, r.stderr);
    assertEquals(lines(r.stdout), [{ stream: "t", kind: "header", seq: 0, epoch, message: "h" }]);
  },
});

/** One command line, run by both clients; `S` stands for the stream, `E` for its epoch. */
interface Case {
  args: string[];
  stdin?: string;
  setup?: (hub: MessageStream, stream: string) => Promise<void>;
}

const setHeader = async (hub: MessageStream, stream: string) => {
  await hub.header(stream, { state: "x" });
};
const putThree = async (hub: MessageStream, stream: string) => {
  for (let i = 1; i <= 3; i++) await hub.put(stream, { i });
};

const CASES: Case[] = [
  { args: ["put", "S", '{"a":1}'] },
  { args: ["put", "S", "plain text"] },
  { args: ["put", "S", "é ✓"] },
  { args: ["put", "S", "--raw", "7"] },
  { args: ["put", "--raw", "S", "7"] },
  { args: ["put", "S", "7", "--raw"] },
  { args: ["put", "S", "--", "-5"] },
  { args: ["put", "--", "S", "-5"] },
  // "--" ends once the command has its arguments: options are read again after it.
  { args: ["put", "S", "--", "-5", "--raw"] },
  { args: ["put", "S", "--raw", "--", "--raw"] },
  { args: ["put", "S", "--", "a", "--"] },
  // Options before the command.
  { args: ["--server", "ADDR", "put", "S", "x"] },
  { args: ["--raw", "put", "S", "7"] },
  { args: ["put", "S"], stdin: 'one\n{"b":2}\r\n\nlast' },
  { args: ["put", "S", "--raw"], stdin: "1\n2\n" },
  { args: ["put", "S", "--max-line-bytes", "4"], stdin: "abc\nabc\r\nabcd\r\nz\n" },
  { args: ["put", "S", "--max-line-bytes", "4"], stdin: "abc\nabcd\nz" },
  { args: ["header", "S", '{"state":"done"}'] },
  { args: ["header", "S"], setup: setHeader },
  { args: ["header", "S"] },
  { args: ["header", "S", "--clear"], setup: setHeader },
  { args: ["header", "never-used"] },
  { args: ["delete", "S"], setup: setHeader },
  { args: ["listen", "S", "--since", "E:1", "--count", "2"], setup: putThree },
  { args: ["listen", "S", "--since", "E:0", "--timeout", "300"], setup: putThree },
  { args: ["listen", "S", "--timeout", "0"], setup: setHeader },
  {
    args: [
      "listen",
      "S",
      "--since",
      "E:2",
      "--count",
      "1",
      "--reconnect-attempts=-1",
      "--reconnect-wait",
      "50",
    ],
    setup: putThree,
  },
  // An option's value may start with "-".
  {
    args: [
      "listen",
      "S",
      "--since",
      "E:2",
      "--count",
      "1",
      "--reconnect-attempts",
      "-1",
      "--reconnect-wait",
      "50",
    ],
    setup: putThree,
  },
  // Usage errors: exit 1, nothing sent.
  { args: ["put", "S", "-5"] },
  { args: ["put", "S", "--count", "3", "x"] },
  { args: ["put"] },
  { args: ["put", "S", "a", "b"] },
  { args: ["header", "S", "x", "--clear"] },
  { args: ["delete", "S", "T"] },
  { args: ["listen"] },
  { args: ["listen", "S", "--since", "nope"] },
  { args: ["listen", "S", "T", "--since", "E:1"] },
  { args: ["listen", "S", "--count", "0"] },
  { args: ["listen", "S", "--reconnect-wait", "x"] },
  { args: ["listen", "S", "--reconnect-attempts", "-2"] },
  { args: ["put", "S", "1", "--reconnect-wait", "5"] },
  { args: ["put", "S", "--max-line-bytes", "0"], stdin: "1\n" },
  { args: ["put", "S", "--max-line-bytes"] },
  { args: ["frob", "S"] },
  { args: [] },
  // The server refuses: an invalid stream name is a usage error (1).
  { args: ["put", "", "x"] },
];

const MARK = "--end of case--";

Deno.test({
  name: "Python client and the msgstream command line do the same with the same arguments",
  ignore: !HAS_PYTHON,
  async fn(t) {
    await using server = serve({ port: 0, logLevel: "silent" });
    const hub = server.hub;
    const env = { MSGSTREAM_SERVER: `127.0.0.1:${server.addr.port}` };
    // Each case uses its own two streams, so cases run a few at a time; each is a step.
    const compare = async (c: Case, n: number) => {
      const streams = { cli: `cli-${n}`, py: `py-${n}` };
      const recorders = { cli: new Recorder(streams.cli), py: new Recorder(streams.py) };
      for (const who of ["cli", "py"] as const) {
        await hub.listen(streams[who], recorders[who]);
        await c.setup?.(hub, streams[who]);
      }
      const argsOf = (stream: string) => {
        const epoch = hub.info(stream)?.epoch ?? "";
        return c.args.map((a) =>
          a === "S"
            ? stream
            : a === "ADDR"
            ? `127.0.0.1:${server.addr.port}`
            : a.replace(/^E:/, `${epoch}:`)
        );
      };
      const [byCli, byPy] = await Promise.all([
        runCli(argsOf(streams.cli), env, c.stdin),
        runPython(argsOf(streams.py), env, c.stdin),
      ]);
      // Every put the clients made is delivered before the test's own last one.
      const seen = async (who: "cli" | "py") => {
        await hub.put(streams[who], MARK);
        const rec = recorders[who];
        await rec.until(() => rec.events.some((e) => e.message === MARK || e.kind === "end"));
        return rec.events.filter((e) => e.message !== MARK).map((e) => [e.kind, e.seq, e.message]);
      };
      const outcome = async (who: "cli" | "py", ran: Ran) => {
        const stream = streams[who];
        const epoch = hub.info(stream)?.epoch;
        const printed = ran.stdout.startsWith("{")
          ? lines(ran.stdout).map((l) => {
            const o = l as Record<string, unknown>;
            return {
              ...o,
              stream: o.stream === stream ? "S" : o.stream,
              epoch: o.epoch === epoch ? "E" : o.epoch,
            };
          })
          : ran.stdout === ""
          ? []
          : ["<not JSON lines>"];
        return { code: ran.code, printed, events: await seen(who) };
      };
      return {
        cli: await outcome("cli", byCli),
        py: await outcome("py", byPy),
        stderr: `cli stderr: ${byCli.stderr}\npython stderr: ${byPy.stderr}`,
      };
    };
    const results: Awaited<ReturnType<typeof compare>>[] = [];
    const BATCH = 3;
    for (let i = 0; i < CASES.length; i += BATCH) {
      results.push(
        ...await Promise.all(CASES.slice(i, i + BATCH).map((c, j) => compare(c, i + j))),
      );
    }
    for (const [i, c] of CASES.entries()) {
      await t.step(c.args.join(" ") || "(no arguments)", () => {
        const r = results[i]!;
        assertEquals(r.py, r.cli, r.stderr);
      });
    }
  },
});
