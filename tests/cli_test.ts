// The msgstream command line (cli.ts), through real processes against a real server in this
// test. (client.ts no longer runs the client commands as a program: it imports no CLI, see
// layout_test.ts.)
import { assert, assertEquals, assertMatch, assertStringIncludes } from "@std/assert";
import { TextLineStream } from "@std/streams/text-line-stream";
import { Inbox, type Listener, type StreamEvent } from "../mod.ts";
import { serve } from "../server.ts";
import { RemoteStream } from "../client.ts";
import { deadline } from "./_wait.ts";

const ROOT = new URL("..", import.meta.url).pathname;

interface RunOptions {
  stdin?: string;
  env?: Record<string, string>;
  /** Permission flags beyond -N. */
  perms?: string[];
}

interface Result {
  code: number;
  stdout: string;
  stderr: string;
}

function command(args: string[], o: RunOptions = {}): Deno.Command {
  return new Deno.Command(Deno.execPath(), {
    args: ["run", "-N", ...(o.perms ?? []), "cli.ts", ...args],
    cwd: ROOT,
    env: { NO_COLOR: "1", ...o.env },
    stdin: o.stdin === undefined ? "null" : "piped",
    stdout: "piped",
    stderr: "piped",
  });
}

/** Runs the command line to completion. */
async function run(args: string[], o: RunOptions = {}): Promise<Result> {
  const child = command(args, o).spawn();
  if (o.stdin !== undefined) {
    const w = child.stdin.getWriter();
    await w.write(new TextEncoder().encode(o.stdin));
    await w.close();
  }
  let out: Deno.CommandOutput;
  try {
    out = await deadline(child.output(), `msgstream ${args.join(" ")} to exit`);
  } catch (e) {
    try {
      child.kill("SIGKILL");
    } catch { /* exited */ }
    await child.status;
    throw e;
  }
  const dec = new TextDecoder();
  return { code: out.code, stdout: dec.decode(out.stdout), stderr: dec.decode(out.stderr) };
}

/** A running command whose stdout lines are read one at a time. */
function start(args: string[], o: RunOptions = {}) {
  const child = command(args, o).spawn();
  const reader = child.stdout
    .pipeThrough(new TextDecoderStream())
    .pipeThrough(new TextLineStream())
    .getReader();
  const stderr = new Response(child.stderr).text();
  return {
    /** The next stdout line parsed as JSON. */
    async next(): Promise<Record<string, unknown>> {
      const { value, done } = await deadline(
        reader.read(),
        `the next stdout line of msgstream ${args.join(" ")}`,
      );
      if (done) throw new Error(`stdout ended early; stderr: ${await stderr}`);
      return JSON.parse(value);
    },
    /** Waits for the exit; returns the code and the rest of stdout. */
    async finish(): Promise<{ code: number; rest: string[]; stderr: string }> {
      const rest: string[] = [];
      await deadline(
        (async () => {
          for (let r = await reader.read(); !r.done; r = await reader.read()) rest.push(r.value);
        })(),
        () => `msgstream ${args.join(" ")} to finish (stdout after: ${rest.join(" | ")})`,
      );
      const { code } = await deadline(child.status, `msgstream ${args.join(" ")} to exit`);
      return { code, rest, stderr: await stderr };
    },
  };
}

function collector(): Listener & { events: StreamEvent[] } {
  const events: StreamEvent[] = [];
  return { events, put: (ev: StreamEvent) => void events.push(ev) };
}

function lines(stdout: string): Record<string, unknown>[] {
  return stdout.trim().split("\n").filter((l) => l).map((l) => JSON.parse(l));
}

/** A port nothing listens on. */
function freePort(): number {
  const l = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (l.addr as Deno.NetAddr).port;
  l.close();
  return port;
}

Deno.test("msgstream listen prints the header first, then each put, one JSON line each", async () => {
  await using server = serve({ port: 0, logLevel: "silent" });
  await server.hub.header("job42", { state: "running" });
  const p = start(["listen", "job42", "--count", "2", "--server", `127.0.0.1:${server.addr.port}`]);
  const head = await p.next();
  assertEquals(head.stream, "job42");
  assertEquals(head.kind, "header");
  assertEquals(head.message, { state: "running" });
  assertEquals(head.seq, 0);
  assertEquals(typeof head.epoch, "string");
  await server.hub.put("job42", { done: 1 });
  await server.hub.put("job42", "two");
  assertEquals(await p.next(), {
    stream: "job42",
    kind: "put",
    seq: 1,
    epoch: head.epoch,
    message: { done: 1 },
  });
  assertEquals((await p.next()).message, "two");
  const { code, rest } = await p.finish();
  assertEquals(code, 0);
  assertEquals(rest, []);
});

Deno.test("msgstream listen --since resumes after the given position", async () => {
  await using server = serve({ port: 0, logLevel: "silent" });
  for (let i = 1; i <= 5; i++) await server.hub.put("job", i);
  const epoch = server.hub.info("job")?.epoch as string;
  const r = await run([
    "listen",
    "job",
    "--since",
    `${epoch}:2`,
    "--count",
    "3",
    "--server",
    `127.0.0.1:${server.addr.port}`,
  ]);
  assertEquals(r.code, 0, r.stderr);
  assertEquals(lines(r.stdout).map((e) => [e.kind, e.seq, e.message]), [
    ["put", 3, 3],
    ["put", 4, 4],
    ["put", 5, 5],
  ]);
});

Deno.test("msgstream listen --since an unknown epoch prints reset, then the header", async () => {
  await using server = serve({ port: 0, logLevel: "silent" });
  await server.hub.header("job", "h");
  const r = await run([
    "listen",
    "job",
    "--since",
    "nosuchepoch:7",
    "--timeout",
    "300",
    "--server",
    `127.0.0.1:${server.addr.port}`,
  ]);
  assertEquals(r.code, 0, r.stderr);
  assertEquals(lines(r.stdout).map((e) => e.kind), ["reset", "header"]);
});

Deno.test("msgstream listen --timeout exits 0 when the time is up", async () => {
  await using server = serve({ port: 0, logLevel: "silent" });
  const r = await run([
    "listen",
    "quiet",
    "--timeout",
    "200",
    "--server",
    `127.0.0.1:${server.addr.port}`,
  ]);
  assertEquals(r.code, 0, r.stderr);
  assertEquals(r.stdout, "");
});

Deno.test("msgstream listen follows several streams and exits when every one is deleted", async () => {
  await using server = serve({ port: 0, logLevel: "silent" });
  await server.hub.header("a", "ha");
  await server.hub.header("b", "hb");
  const p = start(["listen", "a", "b", "--server", `127.0.0.1:${server.addr.port}`]);
  const heads = [await p.next(), await p.next()].map((e) => `${e.stream}:${e.message}`).sort();
  assertEquals(heads, ["a:ha", "b:hb"]);
  await server.hub.put("b", 1);
  const put = await p.next();
  assertEquals([put.stream, put.kind, put.seq, put.message], ["b", "put", 1, 1]);
  await server.hub.delete("a");
  const endA = await p.next();
  assertEquals([endA.stream, endA.kind, endA.message], ["a", "end", null]);
  await server.hub.delete("b");
  const { code, rest } = await p.finish();
  assertEquals(code, 0);
  assertEquals(rest.map((l) => JSON.parse(l)).map((e) => [e.stream, e.kind]), [["b", "end"]]);
});

Deno.test("msgstream put parses MESSAGE as JSON and sends other text as a string", async (t) => {
  await using server = serve({ port: 0, logLevel: "silent" });
  const q = collector();
  await server.hub.listen("m", q);
  const cases: [string[], unknown][] = [
    [["42"], 42],
    [['{"done":1}'], { done: 1 }],
    [["hello world"], "hello world"],
    [['"42"'], "42"],
    [["[1,2]"], [1, 2]],
    [["null"], null],
    [["--", "-5"], -5],
    [["--raw", "42"], "42"],
    [["--raw", "{not json"], "{not json"],
  ];
  for (const [args, expected] of cases) {
    await t.step(`put ${args.join(" ")}`, async () => {
      const r = await run(["put", "--server", `127.0.0.1:${server.addr.port}`, "m", ...args]);
      assertEquals(r.code, 0, r.stderr);
      assertEquals(r.stdout, "");
      assertEquals(q.events.at(-1)?.message, expected);
    });
  }
  assertEquals(q.events.length, cases.length);
});

Deno.test("msgstream put without MESSAGE puts 10,000 stdin lines complete and in order", async () => {
  await using server = serve({ port: 0, logLevel: "silent" });
  const q = collector();
  await server.hub.listen("log", q);
  const input: string[] = [];
  for (let i = 0; i < 10_000; i++) {
    input.push(i % 3 === 0 ? `{"n":${i}}` : i % 3 === 1 ? `line ${i}` : `${i}`);
  }
  const r = await run(["put", "log", "--server", `127.0.0.1:${server.addr.port}`], {
    stdin: input.join("\n") + "\n",
  });
  assertEquals(r.code, 0, r.stderr);
  assertEquals(q.events.length, 10_000);
  for (let i = 0; i < 10_000; i++) {
    const ev = q.events[i] as StreamEvent;
    assertEquals(ev.seq, i + 1);
    assertEquals(ev.message, i % 3 === 0 ? { n: i } : i % 3 === 1 ? `line ${i}` : i);
  }
});

Deno.test("msgstream put --raw sends each stdin line as a string", async () => {
  await using server = serve({ port: 0, logLevel: "silent" });
  const q = collector();
  await server.hub.listen("log", q);
  const r = await run(["put", "--raw", "log", "--server", `127.0.0.1:${server.addr.port}`], {
    stdin: '404\n{"a":1}\n\nend',
  });
  assertEquals(r.code, 0, r.stderr);
  assertEquals(q.events.map((e) => e.message), ["404", '{"a":1}', "", "end"]);
});

Deno.test("msgstream put stops at a stdin line over --max-line-bytes, after the lines before it", async () => {
  await using server = serve({ port: 0, logLevel: "silent" });
  const q = collector();
  await server.hub.listen("log", q);
  const r = await run(
    ["put", "--raw", "log", "--max-line-bytes", "8", "--server", `127.0.0.1:${server.addr.port}`],
    { stdin: "12345678\nfirst\n123456789\nnever\n" },
  );
  assertEquals(r.code, 1);
  assertEquals(
    r.stderr,
    "msgstream: Line 3 of stdin not sent: Line longer than 8 bytes (see --max-line-bytes)\n" +
      'Run "msgstream put --help" for usage.\n',
  );
  assertEquals(q.events.map((e) => e.message), ["12345678", "first"]);
});

Deno.test("msgstream header sets, prints and clears a stream's header", async () => {
  await using server = serve({ port: 0, logLevel: "silent" });
  const at = `127.0.0.1:${server.addr.port}`;
  let r = await run(["header", "job", '{"state":"running"}', "--server", at]);
  assertEquals(r.code, 0, r.stderr);
  assertEquals(server.hub.info("job")?.hasHeader, true);
  await server.hub.put("job", 1);
  r = await run(["header", "job", "--server", at]);
  assertEquals(r.code, 0, r.stderr);
  assertEquals(lines(r.stdout), [{
    stream: "job",
    kind: "header",
    seq: 1,
    epoch: server.hub.info("job")?.epoch,
    message: { state: "running" },
  }]);
  r = await run(["header", "job", "--clear", "--server", at]);
  assertEquals(r.code, 0, r.stderr);
  assertEquals(server.hub.info("job")?.hasHeader, false);
  r = await run(["header", "job", "--server", at]);
  assertEquals(lines(r.stdout)[0]?.message, null);
  r = await run(["header", "--raw", "job", "42", "--server", at]);
  assertEquals(r.code, 0, r.stderr);
  r = await run(["header", "job", "--server", at]);
  assertEquals(lines(r.stdout)[0]?.message, "42");
});

Deno.test("msgstream delete ends the stream for its listeners", async () => {
  await using server = serve({ port: 0, logLevel: "silent" });
  const q = collector();
  await server.hub.listen("job", q);
  await server.hub.put("job", 1);
  const r = await run(["delete", "job", "--server", `127.0.0.1:${server.addr.port}`]);
  assertEquals(r.code, 0, r.stderr);
  assertEquals(q.events.map((e) => e.kind), ["put", "end"]);
  assertEquals(server.hub.info("job"), undefined);
});

Deno.test("msgstream stats prints the connection, then each stream's position and header", async () => {
  await using server = serve({ port: 0, logLevel: "silent" });
  await server.hub.header("a", { s: 1 });
  await server.hub.put("a", "x");
  const at = `127.0.0.1:${server.addr.port}`;
  const r = await run(["stats", "a", "b", "--server", at]);
  assertEquals(r.code, 0, r.stderr);
  const [conn, a, b, ...more] = lines(r.stdout);
  assertEquals(more, []);
  assertEquals(conn?.server, at);
  assertEquals(conn?.tls, false);
  assertEquals(conn?.token, false);
  assertEquals(typeof conn?.connectMs, "number");
  assertEquals(a, { stream: "a", epoch: server.hub.info("a")?.epoch, seq: 1, header: { s: 1 } });
  assertEquals([b?.stream, b?.seq, b?.header], ["b", 0, null]);
  // Looking does not leave listeners (or empty streams) behind.
  assertEquals(server.hub.stats().listeners, 0);
  assertEquals(server.hub.info("b"), undefined);
});

Deno.test("msgstream --server defaults to MSGSTREAM_SERVER when env access is granted", async () => {
  await using server = serve({ port: 0, logLevel: "silent" });
  const q = collector();
  await server.hub.listen("e", q);
  const env = { MSGSTREAM_SERVER: `127.0.0.1:${server.addr.port}` };
  const r = await run(["put", "e", "1"], { env, perms: ["--allow-env=MSGSTREAM_SERVER"] });
  assertEquals(r.code, 0, r.stderr);
  assertEquals(q.events.map((e) => e.message), [1]);
  // Without env permission the variable is not read (and nothing prompts): the default
  // address is used, where (in this test) nothing answers or something else does.
  const denied = await run(["stats", "--server", "127.0.0.1:1"], { env });
  assertEquals(denied.code, 2);
});

Deno.test("msgstream --token authenticates; a bad token exits 2 with one stderr line", async (t) => {
  await using server = serve({
    port: 0,
    logLevel: "silent",
    tokens: [{ name: "alice", secret: "s3cret", publish: ["*"], subscribe: ["*"] }],
  });
  const at = `127.0.0.1:${server.addr.port}`;
  const q = collector();
  await server.hub.listen("t", q);
  await t.step("the secret", async () => {
    const r = await run(["put", "t", "1", "--server", at, "--token", "s3cret"]);
    assertEquals(r.code, 0, r.stderr);
  });
  await t.step("NAME:SECRET, as given to serve --token", async () => {
    const r = await run(["put", "t", "2", "--server", at, "--token", "alice:s3cret"]);
    assertEquals(r.code, 0, r.stderr);
  });
  await t.step("MSGSTREAM_TOKEN", async () => {
    const r = await run(["put", "t", "3", "--server", at], {
      env: { MSGSTREAM_TOKEN: "alice:s3cret" },
      perms: ["--allow-env=MSGSTREAM_SERVER,MSGSTREAM_TOKEN"],
    });
    assertEquals(r.code, 0, r.stderr);
  });
  await t.step("a bad token", async () => {
    const r = await run(["listen", "t", "--server", at, "--token", "wrong"]);
    assertEquals(r.code, 2);
    assertEquals(r.stdout, "");
    assertEquals(r.stderr.trim().split("\n").length, 1, r.stderr);
    assertMatch(
      r.stderr,
      /^msgstream: Cannot connect to 127\.0\.0\.1:\d+: unauthorized: Invalid token\n$/,
    );
  });
  await t.step("no token", async () => {
    const r = await run(["put", "t", "4", "--server", at]);
    assertEquals(r.code, 2);
    assertStringIncludes(
      r.stderr,
      "unauthorized: the server requires a token: give --token (or MSGSTREAM_TOKEN)",
    );
  });
  assertEquals(q.events.map((e) => e.message), [1, 2, 3]);
});

Deno.test("msgstream exits 2 with one stderr line when the connection is refused", async (t) => {
  const at = `127.0.0.1:${freePort()}`;
  for (
    const args of [["listen", "x"], ["put", "x", "1"], ["header", "x"], ["delete", "x"], ["stats"]]
  ) {
    await t.step(args[0] as string, async () => {
      const r = await run([...args, "--server", at]);
      assertEquals(r.code, 2);
      assertEquals(r.stdout, "");
      assertMatch(r.stderr, /^msgstream: Cannot connect to 127\.0\.0\.1:\d+: [^\n]+\n$/);
    });
  }
});

Deno.test("msgstream exits 1 with the reason for usage errors", async (t) => {
  const cases: [string[], RegExp][] = [
    [[], /no command given/],
    [["frobnicate"], /unknown command "frobnicate"/],
    [["listen"], /listen needs at least one STREAM/],
    [["listen", "a", "--count", "0"], /--count must be an integer of at least 1, got "0"/],
    [["listen", "a", "--timeout", "soon"], /--timeout must be a non-negative integer/],
    [["listen", "a", "--since", "nocolon"], /--since must be EPOCH:SEQ/],
    [["listen", "a", "b", "--since", "e:1"], /--since takes exactly one STREAM/],
    [["listen", "a", "--bogus"], /Unknown option "--bogus" for listen/],
    [["put"], /put needs a STREAM/],
    [["put", "a", "b", "c"], /put takes one MESSAGE/],
    [["put", "a", "-5"], /Unknown option "-5" for put/],
    [["header"], /header needs a STREAM/],
    [["header", "a", "x", "--clear"], /MESSAGE or --clear, not both/],
    [["delete"], /delete needs a STREAM/],
    [["delete", "a", "b"], /delete takes one STREAM/],
    [["stats", "--server", "nohost"], /--server must be HOST:PORT, got "nohost"/],
    [["put", "a", "1", "--server", "h:99999"], /--server must be HOST:PORT/],
    [["put", "a", "1", "--ca", "/no/such/ca.pem"], /Cannot read --ca/],
  ];
  for (const [args, why] of cases) {
    await t.step(args.join(" ") || "(none)", async () => {
      const r = await run(args, { perms: ["--allow-read"] });
      assertEquals(r.code, 1, r.stderr);
      assertMatch(r.stderr, why);
      assertEquals(r.stdout, "");
    });
  }
});

Deno.test("msgstream --help for each command exits 0 and shows its usage", async (t) => {
  for (
    const [args, want] of [
      [["--help"], "Usage: msgstream COMMAND"],
      [["help", "put"], "Usage: msgstream put"],
      [["listen", "--help"], "Usage: msgstream listen"],
      [["put", "-h"], "Usage: msgstream put"],
      [["header", "--help"], "Usage: msgstream header"],
      [["delete", "--help"], "Usage: msgstream delete"],
      [["stats", "--help"], "Usage: msgstream stats"],
      [["serve", "--help"], "Usage: msgstream serve"],
    ] as const
  ) {
    await t.step(args.join(" "), async () => {
      const r = await run([...args]);
      assertEquals(r.code, 0, r.stderr);
      assertStringIncludes(r.stdout, want);
    });
  }
});

Deno.test("msgstream --version prints the version from deno.json", async () => {
  const r = await run(["--version"]);
  assertEquals(r.code, 0);
  const { version } = JSON.parse(await Deno.readTextFile(`${ROOT}deno.json`));
  assertEquals(r.stdout, `msgstream ${version}\n`);
});

Deno.test("msgstream serve runs the server until SIGTERM", async () => {
  const child = command(["serve", "--port", "0", "--log-level", "silent"]).spawn();
  const out = child.stdout.pipeThrough(new TextDecoderStream()).pipeThrough(new TextLineStream())
    .getReader();
  const first = (await deadline(out.read(), "msgstream serve's first line")).value ?? "";
  const m = first.match(/^msgstream listening on tcp:\/\/127\.0\.0\.1:(\d+)$/);
  assert(m, first);
  {
    await using remote = await RemoteStream.connect(`127.0.0.1:${m[1]}`);
    await remote.header("s", "up");
    const inbox = new Inbox();
    await remote.listen("s", inbox);
    const reader = inbox.getReader();
    assertEquals((await deadline(reader.read(), "the header")).value?.message, "up");
    reader.releaseLock();
  }
  child.kill("SIGTERM");
  assertEquals((await deadline(child.status, "msgstream serve to exit on SIGTERM")).code, 0);
  await out.cancel();
  await child.stderr.cancel();
});

Deno.test("msgstream serve usage errors exit 1", async () => {
  const r = await run(["serve", "--port", "nope"]);
  assertEquals(r.code, 1);
  assertStringIncludes(r.stderr, "--port must be a non-negative integer");
});

async function tlsFiles(dir: string): Promise<boolean> {
  const sh = async (args: string[]) => {
    const out = await new Deno.Command("openssl", {
      args,
      cwd: dir,
      stdout: "null",
      stderr: "piped",
    })
      .output();
    if (!out.success) throw new Error(new TextDecoder().decode(out.stderr));
  };
  try {
    await sh(["ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", "ca.key"]);
    await sh([
      "req",
      "-x509",
      "-new",
      "-key",
      "ca.key",
      "-subj",
      "/CN=msgstream test CA",
      "-days",
      "3650",
      "-out",
      "ca.pem",
    ]);
    await sh(["ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", "key.pem"]);
    await sh(["req", "-new", "-key", "key.pem", "-subj", "/CN=localhost", "-out", "server.csr"]);
    await Deno.writeTextFile(
      `${dir}/ext.cnf`,
      "basicConstraints=CA:FALSE\nsubjectAltName=DNS:localhost,IP:127.0.0.1\n",
    );
    await sh([
      "x509",
      "-req",
      "-in",
      "server.csr",
      "-CA",
      "ca.pem",
      "-CAkey",
      "ca.key",
      "-CAcreateserial",
      "-days",
      "3650",
      "-extfile",
      "ext.cnf",
      "-out",
      "cert.pem",
    ]);
    return true;
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return false;
    throw e;
  }
}

const HAS_OPENSSL = (() => {
  try {
    return new Deno.Command("openssl", { args: ["version"], stdout: "null" }).outputSync().success;
  } catch {
    return false;
  }
})();
if (!HAS_OPENSSL) {
  // deno-lint-ignore no-console
  console.error("SKIPPED: msgstream --tls/--ca tests: openssl not installed");
}

Deno.test({
  name: "msgstream --ca connects over TLS; --tls alone refuses an untrusted certificate",
  ignore: !HAS_OPENSSL,
  async fn() {
    const dir = await Deno.makeTempDir();
    try {
      assert(await tlsFiles(dir));
      await using server = serve({
        port: 0,
        logLevel: "silent",
        cert: await Deno.readTextFile(`${dir}/cert.pem`),
        key: await Deno.readTextFile(`${dir}/key.pem`),
      });
      const at = `127.0.0.1:${server.addr.port}`;
      const q = collector();
      await server.hub.listen("tls", q);
      const ok = await run(["put", "tls", "1", "--server", at, "--ca", `${dir}/ca.pem`], {
        perms: ["--allow-read"],
      });
      assertEquals(ok.code, 0, ok.stderr);
      const both = await run(["stats", "--server", at, "--tls", "--ca", `${dir}/ca.pem`], {
        perms: ["--allow-read"],
      });
      assertEquals(both.code, 0, both.stderr);
      assertEquals(lines(both.stdout)[0]?.tls, true);
      const untrusted = await run(["put", "tls", "2", "--server", at, "--tls"]);
      assertEquals(untrusted.code, 2);
      assertMatch(untrusted.stderr, /^msgstream: Cannot connect to [^\n]+\n$/);
      const plain = await run(["put", "tls", "3", "--server", at]);
      assertEquals(plain.code, 2);
      assertEquals(q.events.map((e) => e.message), [1]);
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
});
