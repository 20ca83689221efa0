/**
 * Browser-facing attacks on the HTTP door (issue 11): a cross-site Blob-bodied no-cors POST
 * from a real Chromium, a POST without a Content-Type, and framing the status page.
 */
import { assertEquals } from "@std/assert";
import { chromium } from "npm:playwright-core@1.65.1";
import { MessageStream } from "../mod.ts";
import { serveHttp } from "../http.ts";

const CHROMIUM = "/usr/bin/chromium";
const haveChromium = (() => {
  try {
    return Deno.statSync(CHROMIUM).isFile;
  } catch {
    return false;
  }
})();

Deno.test({
  name: "A cross-site Blob-bodied no-cors POST from Chromium adds no put",
  ignore: !haveChromium,
  async fn() {
    const hub = new MessageStream();
    await using server = serveHttp(hub, { port: 0 });
    const target = `http://127.0.0.1:${server.addr.port}/streams/victim`;
    // The attacker's page: another origin (localhost, its own port).
    await using evil = Deno.serve(
      { hostname: "127.0.0.1", port: 0, onListen() {} },
      () =>
        new Response(
          `<!doctype html><script>
          fetch(${JSON.stringify(target)}, {method: "POST", mode: "no-cors",
            body: new Blob(['{"pwned":1}'])}).then(() => { window.done = "sent"; },
            (e) => { window.done = "failed " + e; });
        </script>`,
          { headers: { "content-type": "text/html" } },
        ),
    );
    const browser = await chromium.launch({
      executablePath: CHROMIUM,
      headless: true,
      args: ["--no-sandbox", "--disable-gpu", "--disable-background-networking"],
    });
    try {
      const page = await browser.newPage();
      await page.goto(`http://localhost:${evil.addr.port}/`);
      await page.waitForFunction(
        () => (window as unknown as { done?: string }).done !== undefined,
        null,
        { timeout: 10_000 },
      );
      assertEquals(await page.evaluate(() => (window as unknown as { done: string }).done), "sent");
    } finally {
      await browser.close();
    }
    assertEquals(hub.info("victim"), undefined, "the cross-site POST added a put");
    assertEquals(server.metrics.errors.unsupported_media_type, 1);
  },
});

Deno.test("A POST or PUT without Content-Type is refused with 415", async () => {
  const hub = new MessageStream();
  await using server = serveHttp(hub, { port: 0 });
  const base = `http://127.0.0.1:${server.addr.port}`;
  for (const [method, path] of [["POST", "/streams/a"], ["PUT", "/streams/a/header"]] as const) {
    const res = await fetch(`${base}${path}`, { method, body: new Blob(["1"]) });
    assertEquals(res.status, 415, `${method} ${path}`);
    assertEquals((await res.json()).code, "unsupported_media_type");
  }
  assertEquals(hub.info("a"), undefined);
});

Deno.test("The status page may not be framed", async () => {
  await using server = serveHttp(new MessageStream(), { port: 0 });
  const res = await fetch(`http://127.0.0.1:${server.addr.port}/`);
  await res.body?.cancel();
  assertEquals(res.headers.get("x-frame-options"), "DENY");
  assertEquals(
    res.headers.get("content-security-policy")?.includes("frame-ancestors 'none'"),
    true,
  );
});
