/**
 * The TLS recipe of docs/tls.md: `tools/tls_recipe.sh` makes a small CA and a server certificate;
 * a server started with them (`server.ts --cert --key`) is reached, and its certificate verified,
 * by every client here: the CLI, the library (RemoteStream), the Python example and
 * `openssl s_client -verify_return_error`. Each client also refuses it without the CA, so the
 * verification is real. And the one-step self-signed certificate the recipe replaces fails in
 * Deno with `CaUsedAsEndEntity`, as the doc says.
 */

import {
  assert,
  assertEquals,
  assertMatch,
  assertRejects,
  assertStringIncludes,
} from "@std/assert";
import { RemoteStream } from "../client.ts";
import { Inbox } from "../mod.ts";
import { serve } from "../server.ts";
import { collect } from "./_recorder.ts";
import { deadline } from "./_wait.ts";

const ROOT = new URL("..", import.meta.url).pathname;
const RECIPE = `${ROOT}tools/tls_recipe.sh`;

function has(command: string, args: string[]): boolean {
  try {
    return new Deno.Command(command, { args, stdout: "null", stderr: "null" }).outputSync()
      .success;
  } catch {
    return false;
  }
}

const OPENSSL = has("openssl", ["version"]);
const PYTHON = has("python3", ["--version"]);
// deno-lint-ignore no-console
if (!OPENSSL) console.error("SKIPPED: tls_recipe_test.ts: openssl not installed");
// deno-lint-ignore no-console
if (!PYTHON) console.error("SKIPPED: tls_recipe_test.ts, Python client: python3 not installed");

interface Ran {
  code: number;
  stdout: string;
  stderr: string;
}

/** Runs a command to its end, with a deadline; `stdin` is written and closed. */
async function run(cmd: string, args: string[], stdin?: string): Promise<Ran> {
  const child = new Deno.Command(cmd, {
    args,
    cwd: ROOT,
    // Nothing from the environment of whoever runs the tests (no MSGSTREAM_*).
    clearEnv: true,
    env: { PATH: Deno.env.get("PATH") ?? "/usr/bin:/bin", NO_COLOR: "1", PYTHONUNBUFFERED: "1" },
    stdin: stdin === undefined ? "null" : "piped",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  if (stdin !== undefined) {
    const w = child.stdin.getWriter();
    await w.write(new TextEncoder().encode(stdin));
    await w.close();
  }
  try {
    const out = await deadline(child.output(), `${cmd} ${args.join(" ")} to exit`);
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

/** Runs the recipe into a new temporary directory. */
async function recipe(dir?: string, names: string[] = []): Promise<string> {
  dir ??= await Deno.makeTempDir({ prefix: "msgstream_recipe_" });
  const r = await run("sh", [RECIPE, dir, ...names]);
  assertEquals(r.code, 0, r.stderr);
  return dir;
}

/** The text of the X509v3 extensions of a certificate, one trimmed line each. */
async function extensions(certFile: string): Promise<string[]> {
  const r = await run("openssl", ["x509", "-in", certFile, "-noout", "-text"]);
  assertEquals(r.code, 0, r.stderr);
  const text = r.stdout.slice(r.stdout.indexOf("X509v3 extensions:"));
  return text.slice(0, text.indexOf("Signature Algorithm")).split("\n").map((l) => l.trim())
    .filter((l) => l !== "" && !/^([0-9A-F]{2}:)+[0-9A-F]{2}$/.test(l)).slice(1);
}

/** The server (server.ts) as a process with exactly the permissions docs/tls.md gives it. */
async function startServer(dir: string): Promise<{ port: number; stop(): Promise<string> }> {
  const child = new Deno.Command(Deno.execPath(), {
    args: [
      "run",
      "-N",
      `--allow-read=${dir}`,
      `${ROOT}server.ts`,
      "--port",
      "0",
      "--cert",
      `${dir}/server.pem`,
      "--key",
      `${dir}/server-key.pem`,
    ],
    clearEnv: true,
    env: { PATH: Deno.env.get("PATH") ?? "/usr/bin:/bin", NO_COLOR: "1" },
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  // The listening line names the address; look for it on stdout and stderr (the log).
  let log = "";
  let found: (port: number) => void = () => {};
  const listening = new Promise<number>((resolve) => found = resolve);
  const read = async (stream: ReadableStream<Uint8Array>) => {
    for await (const text of stream.pipeThrough(new TextDecoderStream())) {
      log += text;
      const m = log.match(/tls:\/\/[^\s"]+:(\d+)/);
      if (m) found(Number(m[1]));
    }
  };
  const reading = Promise.all([read(child.stdout), read(child.stderr)]);
  const stop = async () => {
    try {
      child.kill("SIGTERM");
    } catch { /* exited */ }
    const status = await deadline(child.status, "the server to exit after SIGTERM");
    await reading;
    assertEquals(status.code, 0, log);
    return log;
  };
  try {
    const port = await deadline(listening, () => `the server's tls:// listening line: ${log}`);
    return { port, stop };
  } catch (e) {
    child.kill("SIGKILL");
    await child.status;
    await reading;
    throw e;
  }
}

Deno.test({
  name: "tools/tls_recipe.sh makes a CA and a server certificate that clients accept",
  ignore: !OPENSSL,
  async fn() {
    const dir = await recipe(undefined, ["jobs.example.com", "10.0.0.5"]);
    try {
      assertEquals(await extensions(`${dir}/ca.pem`), [
        "X509v3 Basic Constraints: critical",
        "CA:TRUE, pathlen:0",
        "X509v3 Key Usage: critical",
        "Certificate Sign, CRL Sign",
        "X509v3 Subject Key Identifier:",
      ]);
      assertEquals(await extensions(`${dir}/server.pem`), [
        "X509v3 Basic Constraints: critical",
        "CA:FALSE",
        "X509v3 Key Usage: critical",
        "Digital Signature, Key Encipherment",
        "X509v3 Extended Key Usage:",
        "TLS Web Server Authentication",
        "X509v3 Subject Alternative Name:",
        "DNS:localhost, IP Address:127.0.0.1, DNS:jobs.example.com, IP Address:10.0.0.5",
        "X509v3 Subject Key Identifier:",
        "X509v3 Authority Key Identifier:",
      ]);
      const verify = await run("openssl", [
        "verify",
        "-CAfile",
        `${dir}/ca.pem`,
        "-purpose",
        "sslserver",
        `${dir}/server.pem`,
      ]);
      assertEquals(verify.stdout, `${dir}/server.pem: OK\n`, verify.stderr);
      // Private keys are for their owner only.
      for (const key of ["ca-key.pem", "server-key.pem"]) {
        assertEquals((await Deno.stat(`${dir}/${key}`)).mode! & 0o777, 0o600, key);
      }
      // Run again: a new server certificate from the same CA, so clients keep trusting it.
      const ca = await Deno.readTextFile(`${dir}/ca.pem`);
      const cert = await Deno.readTextFile(`${dir}/server.pem`);
      await recipe(dir);
      assertEquals(await Deno.readTextFile(`${dir}/ca.pem`), ca);
      assert(await Deno.readTextFile(`${dir}/server.pem`) !== cert, "the certificate was renewed");
      assertEquals(
        (await extensions(`${dir}/server.pem`))[7],
        "DNS:localhost, IP Address:127.0.0.1",
      );
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
});

Deno.test({
  name: "A server with the recipe's certificate is verified by the CLI, RemoteStream, Python " +
    "and openssl s_client",
  ignore: !OPENSSL,
  async fn(t) {
    const dir = await recipe();
    const ca = await Deno.readTextFile(`${dir}/ca.pem`);
    const server = await startServer(dir);
    const { port } = server;
    const cli = (...args: string[]) =>
      run(Deno.execPath(), ["run", "-N", `--allow-read=${dir}`, "cli.ts", ...args]);
    const python = (...args: string[]) =>
      run("python3", ["examples/python/msgstream_client.py", ...args]);
    const stream = "recipe";
    const inbox = new Inbox();
    let remote: RemoteStream | undefined;
    try {
      // The library follows the stream, by name (DNS:localhost in the certificate).
      remote = await RemoteStream.connect({
        hostname: "localhost",
        port,
        tls: true,
        caCerts: [ca],
      });
      const joined = await remote.listen(stream, inbox);
      const epoch = joined.epoch;

      await t.step("the CLI puts with --ca, by name and by address", async () => {
        let r = await cli(
          "put",
          stream,
          "from-cli",
          "--ca",
          `${dir}/ca.pem`,
          "--server",
          `localhost:${port}`,
        );
        assertEquals(r.code, 0, r.stderr);
        r = await cli(
          "header",
          stream,
          '{"state":"tls"}',
          "--ca",
          `${dir}/ca.pem`,
          "--server",
          `127.0.0.1:${port}`,
        );
        assertEquals(r.code, 0, r.stderr);
      });
      await t.step({
        name: "the Python example puts with --ca, by name and by address",
        ignore: !PYTHON,
        fn: async () => {
          let r = await python(
            "--ca",
            `${dir}/ca.pem`,
            "--server",
            `localhost:${port}`,
            "put",
            stream,
            "from-python",
          );
          assertEquals(r.code, 0, r.stderr);
          r = await python(
            "--ca",
            `${dir}/ca.pem`,
            "--server",
            `127.0.0.1:${port}`,
            "put",
            stream,
            "from-python-ip",
          );
          assertEquals(r.code, 0, r.stderr);
        },
      });
      await t.step("RemoteStream puts by address (IP:127.0.0.1 in the certificate)", async () => {
        await using byAddress = await RemoteStream.connect({
          hostname: "127.0.0.1",
          port,
          tls: true,
          caCerts: [ca],
        });
        await byAddress.put(stream, "from-library");
      });
      const expected: [string, unknown][] = [
        ["put", "from-cli"],
        ["header", { state: "tls" }],
        ...(PYTHON
          ? [["put", "from-python"], ["put", "from-python-ip"]] as [string, unknown][]
          : []),
        ["put", "from-library"],
      ];
      await t.step("the library's listener got every message, in order", async () => {
        const got = await collect(inbox, expected.length);
        assertEquals(got.map((e) => [e.kind, e.message]), expected);
      });
      const puts = expected.filter(([kind]) => kind === "put").map(([, m]) => m);
      await t.step("the CLI and the Python example listen over TLS", async () => {
        const since = ["--since", `${epoch}:0`, "--count", String(puts.length)];
        const r = await cli(
          "listen",
          stream,
          ...since,
          "--ca",
          `${dir}/ca.pem`,
          "--server",
          `localhost:${port}`,
        );
        assertEquals(r.code, 0, r.stderr);
        const printed = (text: string) =>
          text.trim().split("\n").map((l) => JSON.parse(l)).filter((e) => e.kind === "put")
            .map((e) => e.message);
        assertEquals(printed(r.stdout), puts);
        if (PYTHON) {
          const p = await python(
            "listen",
            stream,
            ...since,
            "--ca",
            `${dir}/ca.pem`,
            "--server",
            `localhost:${port}`,
          );
          assertEquals(p.code, 0, p.stderr);
          assertEquals(printed(p.stdout), puts);
        }
      });
      await t.step("openssl s_client -verify_return_error verifies name and address", async () => {
        for (const check of [["-verify_hostname", "localhost"], ["-verify_ip", "127.0.0.1"]]) {
          const r = await run("openssl", [
            "s_client",
            "-connect",
            `127.0.0.1:${port}`,
            "-servername",
            "localhost",
            "-CAfile",
            `${dir}/ca.pem`,
            "-verify_return_error",
            ...check,
            "-quiet",
            "-ign_eof",
          ], '{"action":"ping","id":1}\n{"action":"close"}\n');
          assertEquals(r.code, 0, r.stderr);
          assertEquals(r.stdout, '{"action":"pong","id":1}\n{"action":"close"}\n', r.stderr);
        }
      });
      await t.step("without the CA, every client refuses the server", async () => {
        const sc = await run("openssl", [
          "s_client",
          "-connect",
          `127.0.0.1:${port}`,
          "-servername",
          "localhost",
          "-verify_return_error",
          "-quiet",
        ], '{"action":"ping","id":1}\n');
        assertEquals(sc.code, 1);
        assertStringIncludes(sc.stderr, "certificate verify failed");
        const c = await cli("put", stream, "nope", "--tls", "--server", `localhost:${port}`);
        assertEquals(c.code, 2);
        assertStringIncludes(c.stderr, "UnknownIssuer");
        if (PYTHON) {
          const p = await python("--tls", "--server", `localhost:${port}`, "put", stream, "nope");
          assertEquals(p.code, 2);
          assertStringIncludes(p.stderr, "CERTIFICATE_VERIFY_FAILED");
        }
        const err = await assertRejects(() =>
          RemoteStream.connect({ hostname: "localhost", port, tls: true, maxReconnectAttempts: 0 })
        );
        assertStringIncludes((err as Error).message, "UnknownIssuer");
        // Nothing was put by the refused clients.
        assertEquals(inbox.size, 0);
      });
    } finally {
      if (remote) {
        remote.endqueue(inbox);
        await remote.close();
      }
      inbox.close();
      const log = await server.stop();
      assert(!log.includes("PRIVATE KEY"), "the server logged its key");
      await Deno.remove(dir, { recursive: true });
    }
  },
});

Deno.test({
  name: "A one-step self-signed certificate (openssl req -x509) fails in Deno with " +
    "CaUsedAsEndEntity",
  ignore: !OPENSSL,
  async fn() {
    const dir = await Deno.makeTempDir({ prefix: "msgstream_selfsigned_" });
    try {
      // The usual command, as docs/tls.md quotes it: OpenSSL 3 marks the result CA:TRUE.
      const r = await run("openssl", [
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=localhost",
        "-addext",
        "subjectAltName=DNS:localhost,IP:127.0.0.1",
        "-days",
        "1",
        "-keyout",
        `${dir}/key.pem`,
        "-out",
        `${dir}/cert.pem`,
      ]);
      assertEquals(r.code, 0, r.stderr);
      const ext = await extensions(`${dir}/cert.pem`);
      const at = ext.indexOf("X509v3 Basic Constraints: critical");
      assertEquals(ext.slice(at, at + 2), ["X509v3 Basic Constraints: critical", "CA:TRUE"]);
      const cert = await Deno.readTextFile(`${dir}/cert.pem`);
      await using server = serve({
        port: 0,
        logLevel: "silent",
        cert,
        key: await Deno.readTextFile(`${dir}/key.pem`),
      });
      const err = await assertRejects(() =>
        RemoteStream.connect({
          hostname: "localhost",
          port: server.addr.port,
          tls: true,
          caCerts: [cert],
          maxReconnectAttempts: 0,
        })
      );
      assertMatch((err as Error).message, /CaUsedAsEndEntity/);
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
});
