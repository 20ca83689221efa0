/**
 * HTTPS on the HTTP door: with `--cert`/`--key` (or `--http-cert`/`--http-key`) the door serves
 * REST, SSE and WebSocket over TLS, with the certificate of the TLS recipe (tools/tls_recipe.sh).
 * Checked with Deno's fetch trusting the recipe's CA, curl `--cacert`, and headless Chromium
 * trusting the server's key (`--ignore-certificate-errors-spki-list`; `ignoreHTTPSErrors` off).
 */
import {
  assert,
  assertEquals,
  assertMatch,
  assertRejects,
  assertStringIncludes,
} from "@std/assert";
import { chromium } from "npm:playwright-core@1.65.1";
import { serve } from "../server.ts";
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

const OPENSSL = has("openssl", ["version"]);
const CURL = has("curl", ["--version"]);
const HAVE_CHROMIUM = (() => {
  try {
    return Deno.statSync(CHROMIUM).isFile;
  } catch {
    return false;
  }
})();
// deno-lint-ignore no-console
if (!OPENSSL) console.error("SKIPPED: https_test.ts: openssl not installed");
// deno-lint-ignore no-console
if (!CURL) console.error("SKIPPED: https_test.ts, curl: curl not installed");
// deno-lint-ignore no-console
if (!HAVE_CHROMIUM) console.error(`SKIPPED: https_test.ts, browser: ${CHROMIUM} not installed`);

interface Ran {
  code: number;
  stdout: string;
  stderr: string;
}

async function run(cmd: string, args: string[]): Promise<Ran> {
  const out = await deadline(
    new Deno.Command(cmd, { args, cwd: ROOT, stdin: "null", env: { NO_COLOR: "1" } }).output(),
    `${cmd} ${args.join(" ")} to exit`,
  );
  const dec = new TextDecoder();
  return { code: out.code, stdout: dec.decode(out.stdout), stderr: dec.decode(out.stderr) };
}

interface Certs {
  dir: string;
  ca: string;
  cert: string;
  key: string;
  [Symbol.asyncDispose](): Promise<void>;
}

/** The recipe's CA and server certificate in a new temporary directory. */
async function certs(): Promise<Certs> {
  const dir = await Deno.makeTempDir({ prefix: "msgstream_https_" });
  const r = await run("sh", [`${ROOT}tools/tls_recipe.sh`, dir]);
  assertEquals(r.code, 0, r.stderr);
  return {
    dir,
    ca: await Deno.readTextFile(`${dir}/ca.pem`),
    cert: await Deno.readTextFile(`${dir}/server.pem`),
    key: await Deno.readTextFile(`${dir}/server-key.pem`),
    [Symbol.asyncDispose]: () => Deno.remove(dir, { recursive: true }),
  };
}

Deno.test({
  name: "With cert and key, the HTTP door serves REST and SSE over HTTPS that verifies with the CA",
  ignore: !OPENSSL,
  async fn() {
    await using files = await certs();
    await using server = serve({ port: 0, cert: files.cert, key: files.key, http: { port: 0 } });
    await server.hub.header("job", { state: "up" });
    const base = `https://localhost:${server.http?.addr.port}`;
    using client = Deno.createHttpClient({ caCerts: [files.ca] });
    const res = await fetch(`${base}/streams/job/header`, { client });
    assertEquals(res.status, 200);
    assertEquals(await res.json(), { state: "up" });
    const sse = await fetch(`${base}/streams/job`, {
      client,
      headers: { accept: "text/event-stream" },
    });
    assertEquals(sse.headers.get("content-type")?.split(";")[0], "text/event-stream");
    const reader = (sse.body as ReadableStream<Uint8Array>).pipeThrough(new TextDecoderStream())
      .getReader();
    let text = "";
    await deadline(
      (async () => {
        while (!text.includes('data: {"state":"up"}')) text += (await reader.read()).value ?? "";
      })(),
      () => `the header over SSE (got ${JSON.stringify(text)})`,
    );
    await reader.cancel();
    // Plain HTTP to the HTTPS door gets nothing served; no client without the CA trusts it.
    await assertRejects(() =>
      fetch(`http://localhost:${server.http?.addr.port}/healthz`).then((r) => r.body?.cancel())
    );
    await assertRejects(
      () => fetch(`${base}/healthz`).then((r) => r.body?.cancel()),
      TypeError,
    );
  },
});

Deno.test({
  name: "http.cert and http.key give the HTTP door a certificate of its own",
  ignore: !OPENSSL,
  async fn() {
    await using files = await certs();
    await using server = serve({
      port: 0,
      http: { port: 0, cert: files.cert, key: files.key },
    });
    using client = Deno.createHttpClient({ caCerts: [files.ca] });
    const res = await fetch(`https://127.0.0.1:${server.http?.addr.port}/healthz`, { client });
    assertEquals(res.status, 200);
    await res.body?.cancel();
  },
});

Deno.test({
  name: "server.ts --cert --key --http-port prints an https address; curl --cacert reads it",
  ignore: !OPENSSL || !CURL,
  async fn() {
    await using files = await certs();
    const child = new Deno.Command(Deno.execPath(), {
      args: [
        "run",
        "-N",
        `--allow-read=${files.dir}`,
        "server.ts",
        "--port",
        "0",
        "--http-port",
        "0",
        "--cert",
        `${files.dir}/server.pem`,
        "--key",
        `${files.dir}/server-key.pem`,
        "--token",
        "app:s3cret",
        "--log-level",
        "warn",
      ],
      cwd: ROOT,
      stdin: "null",
      stdout: "piped",
      stderr: "piped",
      env: { NO_COLOR: "1" },
    }).spawn();
    const stderr = new Response(child.stderr).text();
    const reader = child.stdout.pipeThrough(new TextDecoderStream()).getReader();
    let out = "";
    try {
      await deadline(
        (async () => {
          while (out.split("\n").length < 3) {
            const r = await reader.read();
            if (r.done) break;
            out += r.value;
          }
        })(),
        () => `the server's two address lines (got ${JSON.stringify(out)})`,
      );
      const [tcp, http] = out.split("\n");
      assertMatch(tcp ?? "", /^msgstream listening on tls:\/\/127\.0\.0\.1:\d+$/);
      assertMatch(http ?? "", /^msgstream http on https:\/\/127\.0\.0\.1:\d+$/);
      const port = Number(/:(\d+)$/.exec(http ?? "")?.[1]);
      const ok = await run("curl", [
        "-sS",
        "--cacert",
        `${files.dir}/ca.pem`,
        "-H",
        "authorization: Bearer s3cret",
        "-X",
        "PUT",
        "-H",
        "content-type: application/json",
        "--data",
        '{"v":1}',
        `https://localhost:${port}/streams/job/header`,
      ]);
      assertEquals(ok.code, 0, ok.stderr);
      const got = await run("curl", [
        "-sS",
        "--cacert",
        `${files.dir}/ca.pem`,
        "-H",
        "authorization: Bearer s3cret",
        `https://localhost:${port}/streams/job/header`,
      ]);
      assertEquals([got.code, got.stdout], [0, '{"v":1}']);
      // Without the CA, curl refuses the certificate (exit 60).
      const refused = await run("curl", ["-sS", `https://localhost:${port}/healthz`]);
      assertEquals(refused.code, 60, refused.stderr);
    } finally {
      child.kill("SIGTERM");
      await reader.cancel();
      assertEquals((await deadline(child.status, "the server to exit")).code, 0);
      assertEquals(await stderr, "");
    }
  },
});

/** The base64 SHA-256 of the server certificate's public key, as Chromium's SPKI list takes. */
async function spki(certFile: string): Promise<string> {
  const r = await run("sh", [
    "-c",
    `openssl x509 -in '${certFile}' -pubkey -noout | openssl pkey -pubin -outform der | ` +
    "openssl dgst -sha256 -binary | base64",
  ]);
  assertEquals(r.code, 0, r.stderr);
  return r.stdout.trim();
}

Deno.test({
  name: "Chromium loads the status page over HTTPS and follows a stream over SSE and WSS",
  ignore: !OPENSSL || !HAVE_CHROMIUM,
  async fn() {
    await using files = await certs();
    await using server = serve({ port: 0, cert: files.cert, key: files.key, http: { port: 0 } });
    await server.hub.header("job", { state: "up" });
    const base = `https://localhost:${server.http?.addr.port}`;
    const browser = await chromium.launch({
      executablePath: CHROMIUM,
      headless: true,
      args: [
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        `--ignore-certificate-errors-spki-list=${await spki(`${files.dir}/server.pem`)}`,
      ],
    });
    try {
      const context = await browser.newContext({ ignoreHTTPSErrors: false });
      const page = await context.newPage();
      const problems: string[] = [];
      page.on("pageerror", (e) => problems.push(`pageerror: ${e.message}`));
      const res = await page.goto(`${base}/`);
      assertEquals(res?.status(), 200);
      assert(res?.url().startsWith("https://"));
      const got = await deadline(
        page.evaluate(async () => {
          const sse = await new Promise<string>((resolve, reject) => {
            const es = new EventSource("/streams/job");
            es.addEventListener("header", (e) => {
              es.close();
              resolve((e as MessageEvent).data);
            });
            es.onerror = () => reject(new Error("EventSource failed"));
          });
          const ws = await new Promise<string>((resolve, reject) => {
            const socket = new WebSocket(`wss://${location.host}/ws`);
            socket.onopen = () => socket.send(JSON.stringify({ action: "listen", stream: "job" }));
            socket.onmessage = (e) => {
              const frame = JSON.parse(e.data);
              if (frame.action === "put" && frame.header === true) {
                socket.close();
                resolve(JSON.stringify(frame.message));
              }
            };
            socket.onerror = () => reject(new Error("WebSocket failed"));
          });
          return { protocol: location.protocol, sse, ws };
        }),
        "the page's SSE and WSS reads",
      );
      assertEquals(got, { protocol: "https:", sse: '{"state":"up"}', ws: '{"state":"up"}' });
      assertEquals(problems, []);
      // The same browser without the key's pin refuses the certificate.
      const strict = await chromium.launch({
        executablePath: CHROMIUM,
        headless: true,
        args: ["--no-sandbox", "--disable-gpu", "--disable-background-networking"],
      });
      try {
        const p = await (await strict.newContext({ ignoreHTTPSErrors: false })).newPage();
        const err = await p.goto(`${base}/`).then(() => "", (e: Error) => e.message);
        assertStringIncludes(err, "ERR_CERT_AUTHORITY_INVALID");
      } finally {
        await strict.close();
      }
    } finally {
      await browser.close();
    }
  },
});
