/**
 * The status page on a server with tokens, in headless Chromium: it asks for a token in a small
 * form, keeps it in sessionStorage (never in the URL), says when it is refused, follows a stream
 * with it, and moves a `?token=` out of the address bar.
 */
import { assert, assertEquals } from "@std/assert";
import { chromium } from "npm:playwright-core@1.65.1";
import { serve } from "../server.ts";

const CHROMIUM = "/usr/bin/chromium";
const HAVE_CHROMIUM = (() => {
  try {
    return Deno.statSync(CHROMIUM).isFile;
  } catch {
    return false;
  }
})();
// deno-lint-ignore no-console
if (!HAVE_CHROMIUM) console.error(`SKIPPED: page_token_test.ts: ${CHROMIUM} not installed`);

const SECRET = "page-s3cret-71";

Deno.test({
  name: "The status page asks for a token, keeps it in sessionStorage, and never in the URL",
  ignore: !HAVE_CHROMIUM,
  async fn() {
    await using server = serve({
      port: 0,
      http: { port: 0 },
      logLevel: "silent",
      tokens: [{ name: "ops", secret: SECRET, publish: ["*"], subscribe: ["*"] }],
    });
    await server.hub.header("build-9", { state: "linking" });
    const base = `http://127.0.0.1:${server.http?.addr.port}`;
    const browser = await chromium.launch({
      executablePath: CHROMIUM,
      headless: true,
      args: ["--no-sandbox", "--disable-gpu", "--disable-background-networking"],
    });
    try {
      const page = await browser.newPage();
      const problems: string[] = [];
      page.on("pageerror", (e) => problems.push(`pageerror: ${e.message}`));
      const urls: string[] = [];
      page.on("request", (r) => urls.push(r.url()));
      await page.goto(`${base}/`);
      // No token yet: the form, and the engine from /healthz.
      await page.getByLabel("This server needs a token:").waitFor();
      await page.locator("#engine", { hasText: "engine memory · up" }).waitFor();
      assertEquals(await page.locator("#streams tr").count(), 0);

      // A wrong token is refused, and said so.
      await page.getByLabel("This server needs a token:").fill("wrong");
      await page.getByRole("button", { name: "Use token" }).click();
      await page.locator("#token-why", { hasText: "That token was refused." }).waitFor();

      // The right one: the list loads, the form goes, the token is in sessionStorage only.
      await page.getByLabel("This server needs a token:").fill(SECRET);
      await page.keyboard.press("Enter");
      const button = page.getByRole("button", { name: "build-9" });
      await button.waitFor();
      assert(await page.locator("#token-form").isHidden());
      assertEquals(
        await page.evaluate(() => sessionStorage.getItem("msgstream.token")),
        SECRET,
      );
      await button.click();
      await page.locator("#header", { hasText: '"linking"' }).waitFor();
      assert(!page.url().includes(SECRET), page.url());

      // A reload in the same tab keeps the token: no form.
      await page.reload();
      await page.getByRole("button", { name: "build-9" }).waitFor();
      assert(await page.locator("#token-form").isHidden());

      // "Forget token" removes it: the form comes back.
      await page.getByRole("button", { name: "Forget token" }).click();
      await page.getByLabel("This server needs a token:").waitFor();
      assertEquals(await page.evaluate(() => sessionStorage.getItem("msgstream.token")), null);

      // Only the EventSource requests (the stream's, the pattern's) carry the token in their
      // URL; the page's never does.
      const pageUrls = urls.filter((u) =>
        !u.includes("/streams/build-9") && !u.includes("/sse?pattern=")
      );
      assertEquals(pageUrls.filter((u) => u.includes(SECRET)), []);
      assertEquals(problems, []);

      // A ?token= in the address is moved to sessionStorage and dropped from the URL.
      const fresh = await browser.newPage();
      await fresh.goto(`${base}/?token=${SECRET}#stream=build-9`);
      await fresh.locator("#header", { hasText: '"linking"' }).waitFor();
      assertEquals(fresh.url(), `${base}/#stream=build-9`);
      assertEquals(
        await fresh.evaluate(() => sessionStorage.getItem("msgstream.token")),
        SECRET,
      );
    } finally {
      await browser.close();
    }
  },
});
