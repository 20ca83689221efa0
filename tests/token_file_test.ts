/**
 * Token files fail closed (issue 11): a typo, a missing right, a duplicate name or an empty
 * secret stops the server at startup with a message naming the file and the token, and a failed
 * second `hello` drops the earlier grant.
 */
import { assert, assertEquals, assertStringIncludes } from "@std/assert";
import { serve } from "../server.ts";
import { connectRaw } from "./_raw_client.ts";

const serverPath = new URL("../server.ts", import.meta.url).pathname;

/** Runs the server with a token file holding `content`; returns its exit code and stderr. */
async function startWith(content: string): Promise<{ code: number; stderr: string; file: string }> {
  const file = await Deno.makeTempFile({ prefix: "msgstream_tokens_", suffix: ".json" });
  try {
    await Deno.writeTextFile(file, content);
    const child = new Deno.Command(Deno.execPath(), {
      args: ["run", "-N", "--allow-read", serverPath, "--port", "0", "--token-file", file],
      env: { NO_COLOR: "1" },
      stdin: "null",
      stdout: "piped",
      stderr: "piped",
    }).spawn();
    // A server that starts would run until killed: bound the wait.
    const timer = setTimeout(() => child.kill("SIGKILL"), 15_000);
    const out = await child.output();
    clearTimeout(timer);
    return { code: out.code, stderr: new TextDecoder().decode(out.stderr), file };
  } finally {
    await Deno.remove(file);
  }
}

const SECRET = "tf-secret-Zq81";
const cases: { what: string; tokens: unknown; says: string; token: string }[] = [
  {
    what: "a token without subscribe",
    tokens: { tokens: [{ name: "pub", secret: SECRET, publish: ["a"] }] },
    says: 'missing "subscribe"',
    token: 'token "pub"',
  },
  {
    what: "a token without publish",
    tokens: { tokens: [{ name: "sub", secret: SECRET, subscribe: ["a"] }] },
    says: 'missing "publish"',
    token: 'token "sub"',
  },
  {
    what: "a misspelled key",
    tokens: {
      tokens: [{ name: "t1", secret: SECRET, publish: ["a"], subscribe: [], subscriptions: ["a"] }],
    },
    says: 'unknown key "subscriptions"',
    token: 'token "t1"',
  },
  {
    what: "a duplicate name",
    tokens: {
      tokens: [
        { name: "dup", secret: SECRET, publish: ["*"], subscribe: ["*"] },
        { name: "dup", secret: `${SECRET}2`, publish: ["*"], subscribe: ["*"] },
      ],
    },
    says: "duplicate name",
    token: 'token "dup"',
  },
  {
    what: "an empty secret",
    tokens: { tokens: [{ name: "empty", secret: "", publish: ["*"], subscribe: ["*"] }] },
    says: '"secret" must be a non-empty string',
    token: 'token "empty"',
  },
  {
    what: "an unknown top-level key",
    tokens: { tokens: [], token: [{ name: "x", secret: SECRET }] },
    says: 'unknown key "token"',
    token: "",
  },
];

for (const c of cases) {
  Deno.test(`The server refuses to start with a token file with ${c.what}`, async () => {
    const { code, stderr, file } = await startWith(JSON.stringify(c.tokens));
    assertEquals(code, 1, stderr);
    assertStringIncludes(stderr, `Token file "${file}"`);
    assertStringIncludes(stderr, c.says);
    if (c.token) assertStringIncludes(stderr, c.token);
    assert(!stderr.includes(SECRET), "the error shows a secret");
  });
}

Deno.test("The server refuses a token file of invalid JSON, naming the file", async () => {
  const { code, stderr, file } = await startWith(`{"tokens": [{"name": "t", "secret": "${SECRET}`);
  assertEquals(code, 1, stderr);
  assertStringIncludes(stderr, `Token file "${file}": invalid JSON`);
  assert(!stderr.includes(SECRET), "the error shows a secret");
});

Deno.test("A failed second hello drops the grant of the first", async () => {
  await using server = serve({
    port: 0,
    logLevel: "silent",
    tokens: [{ name: "t", secret: "good", publish: ["*"], subscribe: ["*"] }],
  });
  await using client = await connectRaw(server.addr.port);
  await client.send({ action: "hello", token: "good", id: 1 });
  assertEquals((await client.next()).action, "ok");
  await client.send({ action: "hello", token: "bad", id: 2 });
  const refused = await client.next();
  assertEquals([refused.action, refused.code, refused.id], ["error", "unauthorized", 2]);
  await client.send({ action: "put", stream: "x", message: 1, id: 3 });
  const put = await client.next();
  assertEquals([put.action, put.code, put.id], ["error", "unauthorized", 3]);
  assertEquals(server.hub.info("x"), undefined);
});
