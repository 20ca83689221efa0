/**
 * The status page follows a pattern (`*`) instead of polling the list: streams made after it
 * loaded appear, deleted ones go, and the list is asked only for listener counts (every 10 s).
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
  name: "The status page follows every stream through one pattern subscription, not by polling",
  ignore: !haveChromium,
  async fn() {
    const hub = new MessageStream();
    await hub.header("job-a", { state: "running" });
    await using server = serveHttp(hub, { port: 0 });
    const base = `http://127.0.0.1:${server.addr.port}`;
    const browser = await chromium.launch({
      executablePath: CHROMIUM,
      headless: true,
      args: ["--no-sandbox", "--disable-gpu", "--disable-background-networking"],
    });
    try {
      const page = await browser.newPage();
      const problems: string[] = [];
      page.on("pageerror", (e) => problems.push(`pageerror: ${e.message}`));
      const lists: string[] = [];
      const patterns: string[] = [];
      page.on("request", (r) => {
        const u = new URL(r.url());
        if (u.pathname === "/streams") lists.push(r.url());
        if (u.pathname === "/sse") patterns.push(u.searchParams.get("pattern") ?? "");
      });
      await page.goto(`${base}/`);
      await page.getByRole("button", { name: "job-a" }).waitFor();
      // Made after the page loaded: announced by the pattern, then its puts.
      for (let i = 1; i <= 3; i++) await hub.put("job-b", i);
      const seq = page.locator('#streams tr[data-name="job-b"] td:nth-child(3)');
      await seq.filter({ hasText: /^3$/ }).waitFor();
      await page.locator('#streams tr[data-name="job-a"] td:nth-child(5)', { hasText: "yes" })
        .waitFor();
      await hub.delete("job-a");
      await page.locator('#streams tr[data-name="job-a"]').waitFor({ state: "detached" });
      await page.locator("#totals", { hasText: /^1 stream · / }).waitFor();
      assertEquals(patterns, ["*"]);
      // One list request at load for listener counts; the next comes after 10 s.
      assertEquals(lists.length, 1, lists.join(", "));
      assertEquals(problems, []);
    } finally {
      await browser.close();
    }
  },
});
