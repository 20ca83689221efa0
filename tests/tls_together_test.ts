/**
 * docs/tls.md, "All together": the recipe's certificates, `server.ts` with TLS on both doors and
 * a token, a Python listener and a CLI put over TLS with the token, and the status page in
 * Chromium over HTTPS asking for the token. The commands and permissions are the doc's; the ports
 * are free ones instead of 51932 and 8443.
 */
import { assert, assertEquals, assertMatch } from "@std/assert";
import { TextLineStream } from "@std/streams/text-line-stream";
import { chromium } from "npm:playwright-core@1.65.1";
import { deadline } from "./_wait.ts";

const ROOT = new URL("..", import.meta.url).pathname;
const CHROMIUM = "/usr/bin/chromium";

function has(command: string, args: string[]): boolean {
  try {
    return new Deno.Command(command, { args, stdout: "null", stderr: "null" }).outputSync()
      .success;
  } catch {
    return false;
  }
}
const READY = has("openssl", ["version"]) && has("python3", ["--version"]) &&
  (() => {
    try {
      return Deno.statSync(CHROMIUM).isFile;
    } catch {
      return false;
    }
  })();
// deno-lint-ignore no-console
if (!READY) console.error("SKIPPED: tls_together_test.ts: needs openssl, python3 and chromium");

/** The environment of a child: PATH and NO_COLOR only (no MSGSTREAM_* of the test runner). */
const ENV = { PATH: Deno.env.get("PATH") ?? "/usr/bin:/bin", NO_COLOR: "1", PYTHONUNBUFFERED: "1" };

async function output(cmd: string, args: string[], cwd: string): Promise<Deno.CommandOutput> {
  return await deadline(
    new Deno.Command(cmd, { args, cwd, clearEnv: true, env: ENV, stdin: "null" }).output(),
    `${cmd} ${args.join(" ")} to exit`,
  );
}

Deno.test({
  name: "TLS, a token, a Python listener, a CLI put and the browser page, as docs/tls.md says",
  ignore: !READY,
  async fn() {
    const dir = await Deno.makeTempDir({ prefix: "msgstream_together_" });
    const certs = `${dir}/certs`;
    const dec = new TextDecoder();
    try {
      const made = await output("sh", [`${ROOT}tools/tls_recipe.sh`, certs], dir);
      assert(made.success, dec.decode(made.stderr));
      const server = new Deno.Command(Deno.execPath(), {
        args: [
          "run",
          "-N",
          `--allow-read=${certs}`,
          `${ROOT}server.ts`,
          "--cert",
          `${certs}/server.pem`,
          "--key",
          `${certs}/server-key.pem`,
          "--port",
          "0",
          "--http-port",
          "0",
          "--token",
          "app:s3cret",
          "--log-level",
          "warn",
        ],
        cwd: dir,
        clearEnv: true,
        env: ENV,
        stdin: "null",
        stdout: "piped",
        stderr: "piped",
      }).spawn();
      const serverErr = new Response(server.stderr).text();
      const lines = server.stdout.pipeThrough(new TextDecoderStream())
        .pipeThrough(new TextLineStream()).getReader();
      try {
        const tcp = (await deadline(lines.read(), "the TLS address")).value ?? "";
        const http = (await deadline(lines.read(), "the HTTPS address")).value ?? "";
        assertMatch(tcp, /^msgstream listening on tls:\/\/127\.0\.0\.1:\d+$/);
        assertMatch(http, /^msgstream http on https:\/\/127\.0\.0\.1:\d+$/);
        const port = tcp.split(":").at(-1) as string;
        const httpPort = http.split(":").at(-1) as string;

        // Terminal 3's command line, with the CA and the token.
        const cli = async (...args: string[]) => {
          const r = await output(Deno.execPath(), [
            "run",
            "-N",
            `--allow-read=${certs}`,
            `${ROOT}cli.ts`,
            ...args,
            "--ca",
            `${certs}/ca.pem`,
            "--server",
            `localhost:${port}`,
            "--token",
            "s3cret",
          ], dir);
          assertEquals(r.code, 0, dec.decode(r.stderr));
        };
        // A header first: the listener prints it as soon as it has joined.
        await cli("header", "job42", '{"state":"up"}');
        // Terminal 2: a Python listener, until one put arrives.
        const python = new Deno.Command("python3", {
          args: [
            `${ROOT}examples/python/msgstream_client.py`,
            "--ca",
            `${certs}/ca.pem`,
            "--server",
            `localhost:${port}`,
            "--token",
            "s3cret",
            "listen",
            "job42",
            "--count",
            "1",
          ],
          cwd: dir,
          clearEnv: true,
          env: ENV,
          stdin: "null",
          stdout: "piped",
          stderr: "piped",
        }).spawn();
        const pyErr = new Response(python.stderr).text();
        const pyOut = python.stdout.pipeThrough(new TextDecoderStream())
          .pipeThrough(new TextLineStream()).getReader();
        const events: Record<string, unknown>[] = [];
        try {
          const header = await deadline(pyOut.read(), "the Python listener's header line");
          events.push(JSON.parse(header.value ?? "null"));
          await cli("put", "job42", '{"done":1}');
          const put = await deadline(pyOut.read(), "the Python listener's put line");
          events.push(JSON.parse(put.value ?? "null"));
        } finally {
          await pyOut.cancel().catch(() => {});
          const status = await deadline(python.status, "the Python listener to exit");
          assertEquals(status.code, 0, await pyErr);
        }
        assertEquals(
          events.map((e) => [e.stream, e.kind, e.seq, e.message]),
          [["job42", "header", 0, { state: "up" }], ["job42", "put", 1, { done: 1 }]],
        );

        // The browser: https, the token form, the stream listed.
        const spki = await output("sh", [
          "-c",
          `openssl x509 -in '${certs}/server.pem' -pubkey -noout | openssl pkey -pubin ` +
          "-outform der | openssl dgst -sha256 -binary | base64",
        ], dir);
        const browser = await chromium.launch({
          executablePath: CHROMIUM,
          headless: true,
          args: [
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            `--ignore-certificate-errors-spki-list=${dec.decode(spki.stdout).trim()}`,
          ],
        });
        try {
          const page = await (await browser.newContext({ ignoreHTTPSErrors: false })).newPage();
          await page.goto(`https://localhost:${httpPort}/`);
          await page.getByLabel("This server needs a token:").fill("s3cret");
          await page.getByRole("button", { name: "Use token" }).click();
          await page.getByRole("button", { name: "job42" }).waitFor();
          assert(!page.url().includes("s3cret"));
        } finally {
          await browser.close();
        }
      } finally {
        server.kill("SIGTERM");
        await lines.cancel();
        assertEquals((await deadline(server.status, "the server to exit")).code, 0);
        assertEquals(await serverErr, "");
      }
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
});
