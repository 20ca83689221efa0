/**
 * Errors that say what to fix, in one line: the bind error names the address and the flag, a
 * file the server may not read names the permission, a missing token is not an invalid one,
 * client connection errors carry the address and a hint for TLS mistakes, and Redis being down
 * reads as that.
 */
import {
  assert,
  assertEquals,
  assertMatch,
  assertRejects,
  assertStringIncludes,
} from "@std/assert";
import { RemoteStream } from "../client.ts";
import { ProtocolError } from "../protocol.ts";
import { serve } from "../server.ts";
import { MessageStream } from "../mod.ts";
import { RedisEngine } from "../redis.ts";
import { hasRedis, RedisProcess } from "./_redis.ts";
import { connectRaw } from "./_raw_client.ts";
import { deadline } from "./_wait.ts";

const ROOT = new URL("..", import.meta.url).pathname;

interface Ran {
  code: number;
  stdout: string;
  stderr: string;
}

async function run(args: string[]): Promise<Ran> {
  const out = await deadline(
    new Deno.Command(Deno.execPath(), {
      args,
      cwd: ROOT,
      stdin: "null",
      env: { NO_COLOR: "1" },
    }).output(),
    `deno ${args.join(" ")} to exit`,
  );
  const dec = new TextDecoder();
  return { code: out.code, stdout: dec.decode(out.stdout), stderr: dec.decode(out.stderr) };
}

const OPENSSL = (() => {
  try {
    return new Deno.Command("openssl", { args: ["version"], stdout: "null", stderr: "null" })
      .outputSync().success;
  } catch {
    return false;
  }
})();

async function recipe(): Promise<{ dir: string; ca: string; cert: string; key: string }> {
  const dir = await Deno.makeTempDir({ prefix: "msgstream_errors_" });
  const out = await new Deno.Command("sh", { args: [`${ROOT}tools/tls_recipe.sh`, dir] }).output();
  assert(out.success, new TextDecoder().decode(out.stderr));
  return {
    dir,
    ca: await Deno.readTextFile(`${dir}/ca.pem`),
    cert: await Deno.readTextFile(`${dir}/server.pem`),
    key: await Deno.readTextFile(`${dir}/server-key.pem`),
  };
}

Deno.test("a port in use is one line naming the address and the flag", async (t) => {
  await using held = serve({ port: 0, logLevel: "silent" });
  const port = held.addr.port;
  await t.step("--port", async () => {
    const r = await run(["run", "-N", "server.ts", "--port", String(port), "--log-level", "warn"]);
    assertEquals(r.code, 2);
    assertEquals(r.stdout, "");
    assertMatch(
      r.stderr,
      new RegExp(
        `^msgstream: Cannot listen on 127\\.0\\.0\\.1:${port} \\(the TCP door\\): .*` +
          "choose another --port, or stop what holds it\\n$",
      ),
    );
  });
  await t.step("--http-port", async () => {
    const r = await run([
      "run",
      "-N",
      "server.ts",
      "--port",
      "0",
      "--http-port",
      String(port),
      "--log-level",
      "warn",
    ]);
    assertEquals(r.code, 2);
    assertMatch(
      r.stderr,
      new RegExp(
        `^msgstream: Cannot listen on 127\\.0\\.0\\.1:${port} \\(the HTTP door\\): .*` +
          "choose another --http-port, or stop what holds it\\n$",
      ),
    );
  });
});

Deno.test("--cert without --allow-read says which permission to add", async () => {
  const r = await run([
    "run",
    "-N",
    "server.ts",
    "--cert",
    "certs/server.pem",
    "--key",
    "certs/server-key.pem",
  ]);
  assertEquals(r.code, 1);
  assertEquals(
    r.stderr,
    'msgstream: Cannot read --cert "certs/server.pem": run with --allow-read ' +
      "(or --allow-read=certs/server.pem) for --cert (see --help)\n",
  );
});

Deno.test("a token file's errors name the file, the token and the key", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const file = `${dir}/tokens.json`;
    await Deno.writeTextFile(
      file,
      JSON.stringify({ tokens: [{ name: "ci", secret: "x", publish: ["*"], subscrbe: [] }] }),
    );
    const r = await run(["run", "-N", `--allow-read=${file}`, "server.ts", "--token-file", file]);
    assertEquals(r.code, 1);
    assertEquals(r.stderr.trimEnd().split("\n").length, 1, r.stderr);
    assertStringIncludes(r.stderr, `Token file "${file}": token "ci": unknown key "subscrbe"`);
    await Deno.writeTextFile(file, "{-1}");
    const bad = await run(["run", "-N", `--allow-read=${file}`, "server.ts", "--token-file", file]);
    assertEquals(bad.code, 1);
    assertStringIncludes(bad.stderr, `Token file "${file}": invalid JSON`);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("a missing token and an invalid token get different messages", async () => {
  await using server = serve({
    port: 0,
    logLevel: "silent",
    tokens: [{ name: "a", secret: "s3cret", publish: ["*"], subscribe: ["*"] }],
  });
  const raw = await connectRaw(server.addr.port);
  try {
    await raw.send({ action: "hello", id: 1 });
    const missing = await raw.next();
    assertEquals([missing.code, missing.message], [
      "unauthorized",
      'A token is required: send "hello" with "token"',
    ]);
    await raw.send({ action: "hello", token: "nope", id: 2 });
    const invalid = await raw.next();
    assertEquals([invalid.code, invalid.message], ["unauthorized", "Invalid token"]);
  } finally {
    await raw.close();
  }
  const err = await assertRejects(
    () => RemoteStream.connect({ hostname: "127.0.0.1", port: server.addr.port }),
    ProtocolError,
  );
  assertEquals(
    err.message,
    `Cannot connect to 127.0.0.1:${server.addr.port}: A token is required: send "hello" with "token"`,
  );
});

Deno.test("RemoteStream.connect errors name the address", async () => {
  const l = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (l.addr as Deno.NetAddr).port;
  l.close();
  const err = await assertRejects(() => RemoteStream.connect(`127.0.0.1:${port}`), Error);
  assert(err instanceof Deno.errors.ConnectionRefused);
  assertMatch(err.message, new RegExp(`^Cannot connect to 127\\.0\\.0\\.1:${port}: `));
});

Deno.test({
  name:
    "TLS mistakes get a one-line hint: plain to TLS, TLS to plain, untrusted, a CA as the server's",
  ignore: !OPENSSL,
  async fn(t) {
    const files = await recipe();
    try {
      await using tls = serve({ port: 0, logLevel: "silent", cert: files.cert, key: files.key });
      await using plain = serve({ port: 0, logLevel: "silent" });
      const connect = (o: Record<string, unknown>) =>
        assertRejects(
          () => RemoteStream.connect({ hostname: "localhost", maxReconnectAttempts: 0, ...o }),
          Error,
        );
      await t.step("plain client, TLS port", async () => {
        const e = await connect({ port: tls.addr.port });
        assertStringIncludes(e.message, `Cannot connect to localhost:${tls.addr.port}: `);
        assert(
          e.message.endsWith(
            "(a TLS server closes plain connections: connect with tls, the CLI's --tls or --ca)",
          ),
          e.message,
        );
      });
      await t.step("TLS client, plain port", async () => {
        const e = await connect({ port: plain.addr.port, tls: true, caCerts: [files.ca] });
        assert(e.message.endsWith("(the server does not speak TLS there: connect without TLS)"));
      });
      await t.step("a name the certificate does not list", async () => {
        await using any = serve({
          hostname: "0.0.0.0",
          port: 0,
          logLevel: "silent",
          cert: files.cert,
          key: files.key,
        });
        const e = await connect({
          hostname: "127.0.0.2",
          port: any.addr.port,
          tls: true,
          caCerts: [files.ca],
        });
        assertStringIncludes(e.message, 'certificate not valid for name "127.0.0.2"');
        assert(
          e.message.endsWith(
            "(the server's certificate does not name this host: connect with a name it lists," +
              " or remake it with tools/tls_recipe.sh DIR NAME; see docs/tls.md)",
          ),
          e.message,
        );
      });
      await t.step("untrusted certificate", async () => {
        const e = await connect({ port: tls.addr.port, tls: true });
        assertStringIncludes(e.message, "UnknownIssuer (trust the CA");
      });
      await t.step("a CA certificate as the server's (openssl req -x509)", async () => {
        const dir = files.dir;
        const out = await new Deno.Command("openssl", {
          args: [
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=DNS:localhost,IP:127.0.0.1",
            "-keyout",
            `${dir}/ss-key.pem`,
            "-out",
            `${dir}/ss.pem`,
          ],
          stdout: "null",
          stderr: "null",
        }).output();
        assert(out.success);
        const cert = await Deno.readTextFile(`${dir}/ss.pem`);
        await using ss = serve({
          port: 0,
          logLevel: "silent",
          cert,
          key: await Deno.readTextFile(`${dir}/ss-key.pem`),
        });
        const e = await connect({ port: ss.addr.port, tls: true, caCerts: [cert] });
        assertStringIncludes(e.message, "CaUsedAsEndEntity");
        assert(e.message.endsWith("make one with tools/tls_recipe.sh, see docs/tls.md)"));
        assertEquals(e.message.split("\n").length, 1);
      });
      await t.step("the CLI says --tls to a plain client of a TLS port", async () => {
        const r = await run([
          "run",
          "-N",
          "cli.ts",
          "put",
          "job",
          "1",
          "--server",
          `localhost:${tls.addr.port}`,
        ]);
        assertEquals(r.code, 2);
        assertEquals(r.stderr.trimEnd().split("\n").length, 1, r.stderr);
        assertStringIncludes(r.stderr, `msgstream: Cannot connect to localhost:${tls.addr.port}:`);
        assertStringIncludes(r.stderr, "the CLI's --tls or --ca)");
      });
    } finally {
      await Deno.remove(files.dir, { recursive: true });
    }
  },
});

Deno.test({
  name: "Redis down reads as Redis being down, not as the client's queue setting",
  ignore: !hasRedis,
  async fn() {
    await using redis = await RedisProcess.start();
    const hub = new MessageStream({ engine: new RedisEngine({ url: redis.url }) });
    try {
      await hub.put("job", 1);
      await redis.stop();
      const err = await assertRejects(() => hub.put("job", 2), Error);
      assertEquals(err.name, "EngineUnavailableError");
      assertEquals(
        err.message,
        "Cannot reach Redis: not connected (Redis is down or unreachable; reconnecting in the " +
          "background)",
      );
    } finally {
      await hub.close();
    }
  },
});
