/**
 * The HTTP door's Host allow-list and WebSocket Origin rule (issue 11, item 7): a foreign
 * `Host` gets 421 on every route, `/ws` included (DNS rebinding, with raw requests and with a
 * real Chromium resolving a foreign name to the server); loopback names pass on a loopback
 * bind; `--allowed-hosts` and `--cors-origin` let a reverse proxy that rewrites `Host` work.
 */
import { assert, assertEquals, assertThrows } from "@std/assert";
import { TextLineStream } from "@std/streams/text-line-stream";
import { chromium } from "npm:playwright-core@1.65.1";
import { MessageStream } from "../mod.ts";
import { serveHttp } from "../http.ts";
import { main } from "../server.ts";
import { AllowedHosts, isLoopback } from "../hosts.ts";
import { deadline } from "./_wait.ts";

const enc = new TextEncoder();
const dec = new TextDecoder();

/** Sends one raw HTTP/1.1 request and returns the status code of its response. */
async function status(
  port: number,
  head: string,
  body = "",
): Promise<number> {
  const conn = await Deno.connect({ hostname: "127.0.0.1", port });
  try {
    await conn.write(enc.encode(`${head}\r\nConnection: close\r\n\r\n${body}`));
    let text = "";
    const buf = new Uint8Array(4096);
    await deadline(
      (async () => {
        while (!text.includes("\r\n")) {
          const n = await conn.read(buf);
          if (n === null) break;
          text += dec.decode(buf.subarray(0, n));
        }
      })(),
      `the answer to ${head.split("\r\n")[0]}`,
    );
    const m = /^HTTP\/1\.[01] (\d{3})/.exec(text);
    assert(m, `no status line in ${JSON.stringify(text.slice(0, 100))}`);
    return Number(m[1]);
  } finally {
    conn.close();
  }
}

const UPGRADE = "Upgrade: websocket\r\nConnection: Upgrade\r\n" +
  "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13";

/** The status of each route, asked with `host` as the Host header. */
async function routes(port: number, host: string): Promise<Record<string, number>> {
  const json = "Content-Type: application/json\r\nContent-Length: 1";
  return {
    "GET /": await status(port, `GET / HTTP/1.1\r\nHost: ${host}`),
    "GET /healthz": await status(port, `GET /healthz HTTP/1.1\r\nHost: ${host}`),
    "GET /metrics": await status(port, `GET /metrics HTTP/1.1\r\nHost: ${host}`),
    "GET /streams": await status(port, `GET /streams HTTP/1.1\r\nHost: ${host}`),
    "POST /streams/x": await status(
      port,
      `POST /streams/x HTTP/1.1\r\nHost: ${host}\r\n${json}`,
      "1",
    ),
    "GET /ws": await status(port, `GET /ws HTTP/1.1\r\nHost: ${host}\r\n${UPGRADE}`),
  };
}

const ALL_421 = {
  "GET /": 421,
  "GET /healthz": 421,
  "GET /metrics": 421,
  "GET /streams": 421,
  "POST /streams/x": 421,
  "GET /ws": 421,
};

Deno.test("AllowedHosts: entries, defaults by bound address, bad entries", () => {
  const loop = AllowedHosts.from(undefined, "127.0.0.1");
  assertEquals(loop.given, false);
  for (const host of ["localhost", "LOCALHOST:1", "app.localhost:8", "127.0.0.1:80", "[::1]:9"]) {
    assertEquals(loop.allows(host), true, host);
  }
  for (const host of ["evil.example", "127.0.0.2", "localhost.evil.example", "0.0.0.0:1"]) {
    assertEquals(loop.allows(host), false, host);
  }
  assertEquals(loop.allows(null), false);
  assertEquals(AllowedHosts.from(undefined, "127.0.0.2").allows("127.0.0.2:1"), true);
  assertEquals(AllowedHosts.from(undefined, "0.0.0.0").any, true);
  assertEquals(AllowedHosts.from(undefined, undefined).any, true);
  assertEquals([isLoopback("::1"), isLoopback("[::1]"), isLoopback("10.0.0.1")], [
    true,
    true,
    false,
  ]);

  const list = AllowedHosts.from(["App.Example.com., *.svc.local", ".corp", "::1"], "127.0.0.1");
  assertEquals(list.entries, ["app.example.com", ".svc.local", ".corp", "[::1]"]);
  for (const host of ["app.example.com:443", "a.svc.local", "x.y.corp", "[::1]:1"]) {
    assertEquals(list.allows(host), true, host);
  }
  for (const host of ["localhost", "example.com", "svc.local.evil", "corp"]) {
    assertEquals(list.allows(host), false, host);
  }
  // The Origin rule: the request's own origin, or a listed host when the list is given.
  assertEquals(list.allowsOrigin("https://app.example.com", "127.0.0.1:1"), true);
  assertEquals(list.allowsOrigin("https://evil.example", "127.0.0.1:1"), false);
  assertEquals(loop.allowsOrigin("http://localhost:3000", "127.0.0.1:1"), false);
  assertEquals(loop.allowsOrigin("http://127.0.0.1:1", "127.0.0.1:1"), true);
  assertEquals(loop.allowsOrigin("null", "127.0.0.1:1"), false);
  assertEquals(AllowedHosts.from(["*"], undefined).allowsOrigin("https://a.b", "c"), false);

  for (const bad of [[""], ["a.b:8080"], ["http://a.b"], ["a b"], ["*x"], ["a/b"], ["[zz]"]]) {
    assertThrows(() => AllowedHosts.from(bad, undefined), TypeError, undefined, bad[0]);
  }
});

Deno.test("A foreign Host gets 421 on every route, /ws included; loopback names are served", async () => {
  const hub = new MessageStream();
  await using server = serveHttp(hub, { port: 0 });
  const port = server.addr.port;
  assertEquals(await routes(port, "evil.example"), ALL_421);
  assertEquals(await routes(port, `evil.example:${port}`), ALL_421);
  assertEquals(hub.info("x"), undefined, "the foreign POST added a put");
  assertEquals(server.metrics.errors.host_not_allowed, 12);
  // HTTP/1.0 without a Host header.
  assertEquals(await status(port, "GET /healthz HTTP/1.0"), 421);
  for (const host of [`localhost:${port}`, `127.0.0.1:${port}`, `[::1]:${port}`]) {
    assertEquals(await status(port, `GET /healthz HTTP/1.1\r\nHost: ${host}`), 200, host);
  }
  const res = await fetch(`http://127.0.0.1:${port}/streams/x`, {
    method: "POST",
    headers: { "content-type": "application/json", "host": "evil.example" },
    body: "1",
  });
  await res.body?.cancel();
  // fetch sets Host from the URL whatever the init says: the request is served.
  assertEquals(res.status, 200);
});

Deno.test("Behind a proxy that rewrites Host: the listed names pass, and WebSockets from the listed origin", async () => {
  const hub = new MessageStream();
  await using listed = serveHttp(hub, {
    port: 0,
    allowedHosts: ["app.example.com", "127.0.0.1"],
  });
  const port = listed.addr.port;
  assertEquals(await status(port, "GET /healthz HTTP/1.1\r\nHost: app.example.com"), 200);
  assertEquals(await status(port, `GET /healthz HTTP/1.1\r\nHost: 127.0.0.1:${port}`), 200);
  // A given list replaces the loopback default.
  assertEquals(await status(port, `GET /healthz HTTP/1.1\r\nHost: localhost:${port}`), 421);
  const ws = (host: string, origin: string) =>
    status(port, `GET /ws HTTP/1.1\r\nHost: ${host}\r\nOrigin: ${origin}\r\n${UPGRADE}`);
  assertEquals(await ws(`127.0.0.1:${port}`, "https://app.example.com"), 101);
  assertEquals(await ws(`127.0.0.1:${port}`, "https://evil.example"), 403);
  assertEquals(await ws(`127.0.0.1:${port}`, "null"), 403);

  // Without a list, only the request's own origin (and the CORS origin) may open a socket.
  await using plain = serveHttp(hub, { port: 0 });
  const p2 = plain.addr.port;
  const ws2 = (origin: string) =>
    status(p2, `GET /ws HTTP/1.1\r\nHost: 127.0.0.1:${p2}\r\nOrigin: ${origin}\r\n${UPGRADE}`);
  assertEquals(await ws2("https://app.example.com"), 403);
  assertEquals(await ws2(`http://127.0.0.1:${p2}`), 101);
  assertEquals(await ws2(`http://localhost:${p2}`), 403);
  await using cors = serveHttp(hub, { port: 0, corsOrigin: "https://app.example.com" });
  const p3 = cors.addr.port;
  assertEquals(
    await status(
      p3,
      `GET /ws HTTP/1.1\r\nHost: 127.0.0.1:${p3}\r\nOrigin: https://app.example.com\r\n${UPGRADE}`,
    ),
    101,
  );
  assertThrows(() => serveHttp(hub, { port: 0, corsOrigin: "app.example.com" }), TypeError);
  assertThrows(() => serveHttp(hub, { port: 0, allowedHosts: ["a:1"] }), TypeError);
});

Deno.test("Bound to every address, any Host is served by default but a foreign Origin is not", async () => {
  await using server = serveHttp(new MessageStream(), { port: 0, hostname: "0.0.0.0" });
  const port = server.addr.port;
  assertEquals(await status(port, "GET /healthz HTTP/1.1\r\nHost: msgstream.internal"), 200);
  assertEquals(
    await status(
      port,
      `GET /ws HTTP/1.1\r\nHost: msgstream.internal\r\nOrigin: https://evil.example\r\n${UPGRADE}`,
    ),
    403,
  );
});

Deno.test("The server's --allowed-hosts and --cors-origin (flags, checked at start)", async () => {
  const child = new Deno.Command(Deno.execPath(), {
    args: [
      "run",
      "-N",
      new URL("../server.ts", import.meta.url).pathname,
      "--port",
      "0",
      "--http-port",
      "0",
      "--allowed-hosts",
      "app.example.com,127.0.0.1",
      "--allowed-hosts",
      "*.svc.local",
      "--cors-origin",
      "https://app.example.com",
    ],
    stdin: "null",
    stdout: "piped",
    stderr: "null",
  }).spawn();
  try {
    const lines = child.stdout.pipeThrough(new TextDecoderStream()).pipeThrough(
      new TextLineStream(),
    ).getReader();
    let http = 0;
    await deadline(
      (async () => {
        while (!http) {
          const { value, done } = await lines.read();
          if (done) throw new Error("the server exited before printing its addresses");
          http = Number(/http on https?:\/\/\S+:(\d+)/.exec(value)?.[1] ?? 0);
        }
      })(),
      "the server's HTTP address",
    );
    await lines.cancel();
    const get = (host: string, extra = "") =>
      status(http, `GET ${extra ? "/ws" : "/healthz"} HTTP/1.1\r\nHost: ${host}${extra}`);
    assertEquals(await get("app.example.com"), 200);
    assertEquals(await get("a.svc.local"), 200);
    assertEquals(await get(`localhost:${http}`), 421);
    assertEquals(await get("127.0.0.1", `\r\nOrigin: https://app.example.com\r\n${UPGRADE}`), 101);
    assertEquals(await get("127.0.0.1", `\r\nOrigin: https://evil.example\r\n${UPGRADE}`), 403);
  } finally {
    child.kill("SIGTERM");
    await deadline(child.status, "the server to exit");
  }
  // Bad values are usage errors (exit 1), before anything listens.
  // deno-lint-ignore no-console
  const quiet = console.error;
  // deno-lint-ignore no-console
  console.error = () => {};
  try {
    assertEquals(await main(["--port", "0", "--http-port", "0", "--allowed-hosts", "a.b:8080"]), 1);
    assertEquals(await main(["--port", "0", "--http-port", "0", "--cors-origin", "a.b"]), 1);
    assertEquals(await main(["--port", "0", "--allowed-hosts", "a.b"]), 1);
  } finally {
    // deno-lint-ignore no-console
    console.error = quiet;
  }
});

const CHROMIUM = "/usr/bin/chromium";
const haveChromium = (() => {
  try {
    return Deno.statSync(CHROMIUM).isFile;
  } catch {
    return false;
  }
})();

Deno.test({
  name:
    "DNS rebinding in Chromium: a page under a foreign name that resolves to the server gets 421 and writes nothing",
  ignore: !haveChromium,
  async fn() {
    const hub = new MessageStream();
    await using server = serveHttp(hub, { port: 0 });
    const port = server.addr.port;
    const browser = await chromium.launch({
      executablePath: CHROMIUM,
      headless: true,
      args: [
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        // The attacker's name now resolves to the server (the rebinding).
        "--host-resolver-rules=MAP rebind.test 127.0.0.1",
      ],
    });
    try {
      const page = await browser.newPage();
      const first = await page.goto(`http://rebind.test:${port}/`);
      assertEquals(first?.status(), 421);
      // Script in a page of that origin: its same-origin requests and socket are refused too.
      const seen = await page.evaluate(async () => {
        const put = await fetch("/streams/x", {
          method: "POST",
          headers: { "content-type": "application/json" },
          body: "1",
        });
        const list = await fetch("/streams");
        const ws = await new Promise<string>((resolve) => {
          const socket = new WebSocket(`ws://${location.host}/ws`);
          socket.onopen = () => resolve("open");
          socket.onerror = () => resolve("error");
        });
        return [put.status, list.status, ws];
      });
      assertEquals(seen, [421, 421, "error"]);
      // The same server under its own name works.
      const own = await page.goto(`http://localhost:${port}/`);
      assertEquals(own?.status(), 200);
      const listed = await page.evaluate(async () => (await fetch("/streams")).status);
      assertEquals(listed, 200);
    } finally {
      await browser.close();
    }
    assertEquals(hub.info("x"), undefined, "the rebinding page added a put");
  },
});
