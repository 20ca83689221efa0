/**
 * Token authentication and per-token stream permissions, through `serve({tokens})` and through
 * the CLI's `--token` and `--token-file`.
 */

import {
  assert,
  assertEquals,
  assertRejects,
  assertStringIncludes,
  assertThrows,
} from "@std/assert";
import { TextLineStream } from "@std/streams/text-line-stream";
import { RemoteStream } from "../client.ts";
import { Inbox } from "../mod.ts";
import { ProtocolError } from "../protocol.ts";
import {
  Auth,
  compilePatterns,
  forbidden,
  parseTokenFile,
  parseTokenSpec,
  type Token,
} from "../auth.ts";
import { serve } from "../server.ts";
import { connectRaw, type Frame, type RawClient } from "./_raw_client.ts";
import { collect } from "./_recorder.ts";
import { deadline } from "./_wait.ts";

const ALICE: Token = {
  name: "alice-publisher",
  secret: "alice-s3cret-Zq8",
  publish: ["jobs.*", "a*b"],
  subscribe: ["jobs.*", "public"],
};
const BOB: Token = {
  name: "bob-admin",
  secret: "bob-s3cret-Wx7",
  publish: ["*"],
  subscribe: ["*"],
};
const TOKENS = [ALICE, BOB];
/** Strings no error frame may contain, whoever asked. */
const SECRETS = [ALICE.secret, BOB.secret, "s3cret"];

/** Sends a request with an id and returns the answer with that id. */
async function ask(raw: RawClient, frame: Frame): Promise<Frame> {
  await raw.send(frame);
  const got = await raw.until((f) => f.id === frame.id);
  return got[got.length - 1] as Frame;
}

/** Asserts that an error frame leaks no secret and no token or stream but the ones allowed. */
function assertDiscreet(f: Frame, allowed: string[] = []): void {
  const text = JSON.stringify(f);
  for (const s of SECRETS) assert(!text.includes(s), `error frame leaks a secret: ${text}`);
  for (const n of [ALICE.name, BOB.name, "private", "secret-stream"]) {
    if (allowed.includes(n)) continue;
    assert(!text.includes(n), `error frame leaks "${n}": ${text}`);
  }
}

Deno.test("serve() with tokens answers every request before hello with unauthorized", async (t) => {
  await using server = serve({ port: 0, tokens: TOKENS });
  await server.hub.put("secret-stream", "hidden");
  await using raw = await connectRaw(server.addr.port);
  let id = 0;
  const requests: Frame[] = [
    { action: "put", stream: "jobs.1", message: 1 },
    { action: "put", stream: "secret-stream", message: 1 },
    { action: "header", stream: "jobs.1", message: "h" },
    { action: "delete", stream: "secret-stream" },
    { action: "listen", stream: "secret-stream" },
    { action: "listen", stream: "jobs.1", since: { epoch: "x", seq: 0 } },
    { action: "hangup", stream: "jobs.1" },
    { action: "endqueue" },
    { action: "close" },
    { action: "no-such-action" },
  ];
  for (const req of requests) {
    await t.step(`${req.action} ${req.stream ?? ""}`, async () => {
      const answer = await ask(raw, { ...req, id: ++id });
      assertEquals(answer.action, "error");
      assertEquals(answer.code, "unauthorized");
      assertDiscreet(answer, ["secret-stream"]);
    });
  }
  // Nothing was applied.
  assertEquals(server.hub.info("secret-stream")?.seq, 1);
  assertEquals(server.hub.info("jobs.1"), undefined);
});

Deno.test("serve() with tokens answers ping before hello", async () => {
  await using server = serve({ port: 0, tokens: TOKENS });
  await using raw = await connectRaw(server.addr.port);
  assertEquals(await ask(raw, { action: "ping", id: "p1" }), { action: "pong", id: "p1" });
});

Deno.test("serve() with tokens refuses a wrong token in hello with unauthorized", async (t) => {
  await using server = serve({ port: 0, tokens: TOKENS });
  await using raw = await connectRaw(server.addr.port);
  const wrong: unknown[] = [
    "nope",
    "",
    ALICE.name,
    ALICE.secret + "x",
    ALICE.secret.slice(0, -1),
    ALICE.secret.toUpperCase(),
    null,
    42,
    [ALICE.secret],
    { secret: ALICE.secret },
  ];
  let id = 0;
  for (const token of wrong) {
    await t.step(`token ${JSON.stringify(token)}`, async () => {
      const answer = await ask(raw, { action: "hello", version: 1, token, id: ++id });
      assertEquals(answer.action, "error");
      assertEquals(answer.code, "unauthorized");
      assertDiscreet(answer);
    });
  }
  await t.step("still unauthorized afterwards", async () => {
    const answer = await ask(raw, { action: "put", stream: "jobs.1", message: 1, id: ++id });
    assertEquals(answer.code, "unauthorized");
  });
  await t.step("a hello without token", async () => {
    const answer = await ask(raw, { action: "hello", version: 1, id: ++id });
    assertEquals(answer.code, "unauthorized");
  });
  await t.step("the right token then works on the same connection", async () => {
    const answer = await ask(raw, { action: "hello", version: 1, token: BOB.secret, id: ++id });
    assertEquals(answer.action, "ok");
    assertEquals(
      (await ask(raw, { action: "put", stream: "x", message: 1, id: ++id })).action,
      "ok",
    );
  });
});

Deno.test("RemoteStream.connect() rejects a wrong token with ProtocolError unauthorized", async () => {
  await using server = serve({ port: 0, tokens: TOKENS });
  const [hostname, port] = [server.addr.hostname, server.addr.port];
  for (const token of [undefined, "wrong", ALICE.name]) {
    const err = await assertRejects(
      () => RemoteStream.connect({ hostname, port, ...(token === undefined ? {} : { token }) }),
      ProtocolError,
    );
    assertEquals(err.code, "unauthorized");
    for (const s of SECRETS) assert(!err.message.includes(s));
  }
  await using ok = await RemoteStream.connect({ hostname, port, token: ALICE.secret });
  assertEquals((await ok.put("jobs.1", "x")).seq, 1);
});

Deno.test("A token may publish only to streams matching its publish patterns", async (t) => {
  await using server = serve({ port: 0, tokens: TOKENS });
  await using raw = await connectRaw(server.addr.port);
  let id = 0;
  assertEquals((await ask(raw, { action: "hello", token: ALICE.secret, id: ++id })).action, "ok");
  for (const stream of ["jobs.1", "jobs.", "jobs.a.b", "ab", "a-long-b", "a*b"]) {
    await t.step(`allowed: ${stream}`, async () => {
      for (const action of ["put", "header", "delete"]) {
        const answer = await ask(raw, { action, stream, message: 1, id: ++id });
        assertEquals(answer.action, "ok", JSON.stringify(answer));
      }
    });
  }
  // "." and other regular-expression characters in patterns are literal.
  for (const stream of ["jobsX1", "jobs", "private", "public", "xab", "abc", "a\nb.", "JOBS.1"]) {
    await t.step(`forbidden: ${JSON.stringify(stream)}`, async () => {
      for (const action of ["put", "header", "delete"]) {
        const answer = await ask(raw, { action, stream, message: 1, id: ++id });
        assertEquals(answer.action, "error");
        assertEquals(answer.code, "forbidden");
        assertEquals(answer.stream, stream);
        assertDiscreet(answer, stream === "private" ? ["private"] : []);
        assert(!JSON.stringify(answer).includes("jobs.*"), "error frame leaks a pattern");
      }
      assertEquals(server.hub.info(stream), undefined);
    });
  }
});

Deno.test("A token may listen only to streams matching its subscribe patterns", async (t) => {
  await using server = serve({ port: 0, tokens: TOKENS });
  await server.hub.put("private", "hidden");
  await using remote = await RemoteStream.connect({
    hostname: server.addr.hostname,
    port: server.addr.port,
    token: ALICE.secret,
  });
  await t.step("a forbidden listen rejects with forbidden and delivers nothing", async () => {
    const inbox = new Inbox();
    const err = await assertRejects(() => remote.listen("private", inbox), ProtocolError);
    assertEquals(err.code, "forbidden");
    assertStringIncludes(err.message, '"private"');
    for (const s of [...SECRETS, BOB.name, "hidden"]) assert(!err.message.includes(s));
    // A later put on it reaches nobody through this client.
    await server.hub.put("private", "later");
    remote.endqueue(inbox);
    inbox.close();
  });
  await t.step("a stream it may publish to but not listen to: a*b", async () => {
    assertEquals((await remote.put("ab", 1)).seq, 1);
    const err = await assertRejects(() => remote.listen("ab", new Inbox()), ProtocolError);
    assertEquals(err.code, "forbidden");
  });
  await t.step("an allowed listen works", async () => {
    const inbox = new Inbox();
    await remote.listen("public", inbox);
    await server.hub.put("public", "hello");
    assertEquals((await collect(inbox, 1))[0]?.message, "hello");
    remote.endqueue(inbox);
    inbox.close();
  });
});

Deno.test("Error frames of an authorized session never name other tokens or streams", async () => {
  await using server = serve({ port: 0, tokens: TOKENS });
  await server.hub.header("secret-stream", "hidden header");
  await using raw = await connectRaw(server.addr.port);
  let id = 0;
  await ask(raw, { action: "hello", token: ALICE.secret, id: ++id });
  const bad: Frame[] = [
    { action: "put", stream: "jobs.1" },
    { action: "put", stream: "", message: 1 },
    { action: "put", stream: 5, message: 1 },
    { action: "listen", stream: "jobs.1", since: "x" },
    { action: "listen", stream: "jobs.1", since: { epoch: "e", seq: -1 } },
    { action: "frobnicate" },
    { action: "hello", token: "guess" },
  ];
  for (const frame of bad) {
    const answer = await ask(raw, { ...frame, id: ++id });
    assertEquals(answer.action, "error", JSON.stringify(answer));
    assertDiscreet(answer);
  }
  // A failed hello drops the grant the session had (issue 11: fail closed).
  const after = await ask(raw, { action: "put", stream: "jobs.2", message: 1, id: ++id });
  assertEquals([after.action, after.code], ["error", "unauthorized"]);
  assertDiscreet(after);
});

// ---- CLI ----

interface Cli {
  port: number;
  /** Stops the server (SIGTERM) and returns its exit code and both outputs. */
  stop(): Promise<{ code: number; stdout: string; stderr: string }>;
}

/** Starts the CLI with `args` and waits for its "listening" line. */
async function startCli(args: string[]): Promise<Cli> {
  const child = new Deno.Command(Deno.execPath(), {
    args: ["run", "-N", "--allow-read", new URL("../server.ts", import.meta.url).pathname, ...args],
    stdout: "piped",
    stderr: "piped",
    env: { NO_COLOR: "1" },
  }).spawn();
  const stderr = new Response(child.stderr).text();
  const lines = child.stdout.pipeThrough(new TextDecoderStream()).pipeThrough(
    new TextLineStream(),
  ).getReader();
  const out: string[] = [];
  let port = 0;
  await deadline(
    (async () => {
      while (!port) {
        const r = await lines.read();
        if (r.done) {
          const status = await child.status;
          throw new Error(`Server exited with ${status.code}: ${out.join("\n")}\n${await stderr}`);
        }
        out.push(r.value);
        const m = r.value.match(/listening on tcp:\/\/[^\s]+:(\d+)/);
        if (m) port = Number(m[1]);
      }
    })(),
    () => `the CLI server's "listening on" line (stdout: ${out.join(" | ")})`,
  );
  return {
    port,
    async stop() {
      child.kill("SIGTERM");
      await deadline(
        (async () => {
          for (let r = await lines.read(); !r.done; r = await lines.read()) out.push(r.value);
        })(),
        "the CLI server to exit after SIGTERM",
      );
      const status = await deadline(child.status, "the CLI server's exit status");
      return { code: status.code, stdout: out.join("\n"), stderr: await stderr };
    },
  };
}

/** Exercises a CLI server with good and bad tokens, so that it has something to log. */
async function exercise(port: number, good: string, bad: string): Promise<void> {
  const err = await assertRejects(
    () => RemoteStream.connect({ port, token: bad, maxReconnectAttempts: 0 }),
    ProtocolError,
  );
  assertEquals(err.code, "unauthorized");
  await using raw = await connectRaw(port);
  assertEquals(
    (await ask(raw, { action: "put", stream: "s", message: 1, id: 1 })).code,
    "unauthorized",
  );
  assertEquals((await ask(raw, { action: "hello", token: bad, id: 2 })).code, "unauthorized");
  assertEquals((await ask(raw, { action: "hello", token: good, id: 3 })).action, "ok");
  await raw.write("\xff\n"); // not JSON: an error that the server may log
  await raw.send({ action: "frob", id: 4 });
  await raw.until((f) => f.id === 4);
}

Deno.test("The CLI --token requires hello with that secret and never logs it", async () => {
  const secret = "cli-secret-N4mK";
  const cli = await startCli([
    "--port",
    "0",
    "--log-level",
    "debug",
    "--token",
    `ci:${secret}`,
    "--token",
    "other:other-secret-Qp2",
  ]);
  try {
    await exercise(cli.port, secret, "wrong-secret");
    await using remote = await RemoteStream.connect({ port: cli.port, token: "other-secret-Qp2" });
    assertEquals((await remote.put("anything", 1)).seq, 1);
  } finally {
    const { code, stdout, stderr } = await cli.stop();
    assertEquals(code, 0);
    for (const s of [secret, "other-secret-Qp2", "wrong-secret"]) {
      assert(!stderr.includes(s), `stderr shows a secret:\n${stderr}`);
      assert(!stdout.includes(s), `stdout shows a secret:\n${stdout}`);
    }
  }
});

Deno.test("The CLI --token-file grants each token its publish and subscribe patterns", async () => {
  const dir = await Deno.makeTempDir({ prefix: "msgstream_auth_" });
  try {
    const file = `${dir}/tokens.json`;
    await Deno.writeTextFile(
      file,
      JSON.stringify({
        tokens: [
          {
            name: "writer",
            secret: "file-writer-secret-7Hq",
            publish: ["jobs.*"],
            subscribe: [],
          },
          { name: "reader", secret: "file-reader-secret-3Lp", publish: [], subscribe: ["jobs.*"] },
        ],
      }),
    );
    const cli = await startCli(["--port", "0", "--log-level", "debug", "--token-file", file]);
    try {
      await exercise(cli.port, "file-writer-secret-7Hq", "file-wrong-secret");
      await using writer = await RemoteStream.connect({
        port: cli.port,
        token: "file-writer-secret-7Hq",
      });
      await using reader = await RemoteStream.connect({
        port: cli.port,
        token: "file-reader-secret-3Lp",
      });
      const inbox = new Inbox();
      await reader.listen("jobs.7", inbox);
      assertEquals((await writer.put("jobs.7", "done")).seq, 1);
      assertEquals((await collect(inbox, 1))[0]?.message, "done");
      assertEquals(
        (await assertRejects(() => writer.put("other", 1), ProtocolError)).code,
        "forbidden",
      );
      assertEquals(
        (await assertRejects(() => writer.listen("jobs.7", new Inbox()), ProtocolError)).code,
        "forbidden",
      );
      assertEquals(
        (await assertRejects(() => reader.put("jobs.7", 1), ProtocolError)).code,
        "forbidden",
      );
      assertEquals(
        (await assertRejects(() => reader.listen("other", new Inbox()), ProtocolError)).code,
        "forbidden",
      );
      reader.endqueue(inbox);
      inbox.close();
    } finally {
      const { code, stderr, stdout } = await cli.stop();
      assertEquals(code, 0);
      for (const s of ["file-writer-secret-7Hq", "file-reader-secret-3Lp", "file-wrong-secret"]) {
        assert(!stderr.includes(s), `stderr shows a secret:\n${stderr}`);
        assert(!stdout.includes(s), `stdout shows a secret:\n${stdout}`);
      }
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("The CLI refuses a malformed token file without showing its secrets", async () => {
  const dir = await Deno.makeTempDir({ prefix: "msgstream_auth_" });
  try {
    const file = `${dir}/tokens.json`;
    await Deno.writeTextFile(
      file,
      JSON.stringify({ tokens: [{ name: "x", secret: "malformed-secret-9", publish: "jobs.*" }] }),
    );
    const out = await new Deno.Command(Deno.execPath(), {
      args: [
        "run",
        "-N",
        "--allow-read",
        new URL("../server.ts", import.meta.url).pathname,
        "--port",
        "0",
        "--token-file",
        file,
      ],
      env: { NO_COLOR: "1" },
    }).output();
    const stderr = new TextDecoder().decode(out.stderr);
    assertEquals(out.code, 1);
    assertStringIncludes(stderr, '"publish" must be an array of strings');
    assert(!stderr.includes("malformed-secret-9"));
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

// ---------------------------------------------------------------------------------------------
// auth.ts on its own

Deno.test("Auth.check() finds a token's grant by its secret; Auth.from() of no tokens is none", () => {
  const auth = new Auth([ALICE, { name: "all", secret: "x", publish: ["*"], subscribe: ["*"] }]);
  const grant = auth.check(ALICE.secret);
  assertEquals(grant?.name, "alice-publisher");
  assertEquals(
    ["jobs.1", "ab", "a.b", "jobs", "public", "x"].map((
      s,
    ) => [grant?.publish(s), grant?.subscribe(s)]),
    [[true, true], [true, false], [true, false], [false, false], [false, true], [false, false]],
  );
  assertEquals(auth.check("x")?.name, "all");
  assertEquals(auth.check(ALICE.secret + "!"), undefined);
  assertEquals(auth.check(""), undefined);
  assertEquals(Auth.from(undefined), undefined);
  assertEquals(Auth.from([]), undefined);
  assertEquals(Auth.from([ALICE])?.check(ALICE.secret)?.name, "alice-publisher");
});

Deno.test("compilePatterns() matches * as any run of characters and nothing else specially", () => {
  const test = compilePatterns(["a.*", "(x)|y", "p*q*"]);
  assertEquals(
    ["a.", "a.b.c", "ab", "(x)|y", "x", "y", "pq", "p1q2", "p\nq"].map(test),
    [true, true, false, true, false, false, true, true, true],
  );
  assertEquals(compilePatterns([])("a"), false);
});

Deno.test("forbidden() says the same thing on every door", () => {
  assertEquals(forbidden("publish", "jobs.1"), 'Cannot publish to stream "jobs.1": not permitted');
  assertEquals(forbidden("subscribe", "x"), 'Cannot listen to stream "x": not permitted');
});

Deno.test("parseTokenSpec() and parseTokenFile() refuse malformed input", () => {
  assertEquals(parseTokenSpec("ci:s:e"), {
    name: "ci",
    secret: "s:e",
    publish: ["*"],
    subscribe: ["*"],
  });
  for (const bad of ["", "name", ":secret", "name:"]) {
    assertThrows(() => parseTokenSpec(bad), TypeError, "NAME:SECRET");
  }
  assertEquals(
    parseTokenFile('{"tokens":[{"name":"a","secret":"b","publish":["*"],"subscribe":[]}]}'),
    [{ name: "a", secret: "b", publish: ["*"], subscribe: [] }],
  );
  for (
    const bad of [
      "[]",
      '{"tokens":{}}',
      '{"tokens":[{"name":"a"}]}',
      '{"tokens":[{"name":"a","secret":"b","publish":"*","subscribe":[]}]}',
      // Fails closed: a missing right is an error, not every stream.
      '{"tokens":[{"name":"a","secret":"b","subscribe":[]}]}',
    ]
  ) assertThrows(() => parseTokenFile(bad), SyntaxError);
});
