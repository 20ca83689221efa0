// A real browser against the HTTP door: headless Chromium from Debian, driven by playwright-core.
import { assert, assertEquals } from "@std/assert";
import { chromium } from "npm:playwright-core@1.65.1";
import { MessageStream } from "../mod.ts";
import { handler, serveHttp } from "../http.ts";

const CHROMIUM = "/usr/bin/chromium";
const haveChromium = (() => {
  try {
    return Deno.statSync(CHROMIUM).isFile;
  } catch {
    return false;
  }
})();
if (!haveChromium) {
  // deno-lint-ignore no-console
  console.error(`\n*** SKIPPED: browser tests: ${CHROMIUM} not installed ***\n`);
}

function launch() {
  return chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: ["--no-sandbox", "--disable-gpu", "--disable-background-networking"],
  });
}

Deno.test({
  name: "Status page shows a stream with its header and a live tail, without errors",
  ignore: !haveChromium,
  async fn() {
    const hub = new MessageStream();
    await using server = serveHttp(hub, { port: 0 });
    const base = `http://127.0.0.1:${server.addr.port}`;
    const browser = await launch();
    try {
      const page = await browser.newPage({ viewport: { width: 1200, height: 760 } });
      const problems: string[] = [];
      page.on("console", (m) => {
        if (m.type() === "error" || m.type() === "warning") {
          problems.push(`${m.type()}: ${m.text()}`);
        }
      });
      page.on("pageerror", (e) => problems.push(`pageerror: ${e.message}`));
      await page.goto(`${base}/`);
      await page.getByText("No streams yet.").waitFor();

      await hub.header("build-7", { state: "compiling", step: 2, of: 5 });
      await hub.put("other-job", "x");
      const button = page.getByRole("button", { name: "build-7" });
      await button.waitFor();
      // Keyboard: focus the stream's button and press Enter.
      await button.focus();
      await page.keyboard.press("Enter");
      await page.locator("#header", { hasText: '"compiling"' }).waitFor();
      assertEquals(await button.getAttribute("aria-pressed"), "true");

      for (let i = 1; i <= 5; i++) await hub.put("build-7", { line: `step ${i} done`, i });
      await page.locator("#tail li", { hasText: '"step 5 done"' }).waitFor();
      const tail = await page.locator("#tail li").allTextContents();
      assertEquals(tail.length, 6, "the header and five puts");
      assert(tail[0]?.includes("step 5 done"), "newest first");
      // The page's own EventSource shows up as the stream's listener.
      const row = page.locator("tr", { has: button });
      await page.locator('#streams tr[data-name="build-7"] td:nth-child(2)', { hasText: /^1$/ })
        .waitFor();
      await row.locator("td").nth(2).filter({ hasText: /^5$/ }).waitFor();
      assertEquals(await row.locator("td").nth(2).textContent(), "5");
      await Deno.mkdir(new URL("./artifacts/", import.meta.url), { recursive: true });
      await page.screenshot({
        path: new URL("./artifacts/status_page.png", import.meta.url).pathname,
        fullPage: true,
      });
      assertEquals(problems, []);
    } finally {
      await browser.close();
    }
  },
});

/** A TCP proxy whose connections the test can drop, as a failing network or server would. */
function proxy(target: number) {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const open = new Set<Deno.Conn>();
  const tasks = new Set<Promise<unknown>>();
  const pipe = async (from: Deno.Conn, to: Deno.Conn) => {
    try {
      await from.readable.pipeTo(to.writable, { preventClose: false });
    } catch {
      // dropped
    }
    for (const c of [from, to]) {
      try {
        c.close();
      } catch {
        // closed
      }
      open.delete(c);
    }
  };
  const accepting = (async () => {
    for await (const client of listener) {
      const upstream = await Deno.connect({ hostname: "127.0.0.1", port: target });
      open.add(client);
      open.add(upstream);
      for (const t of [pipe(client, upstream), pipe(upstream, client)]) {
        tasks.add(t);
        t.finally(() => tasks.delete(t));
      }
    }
  })();
  return {
    port: (listener.addr as Deno.NetAddr).port,
    drop() {
      for (const c of open) {
        try {
          c.close();
        } catch {
          // closed
        }
      }
    },
    async close() {
      listener.close();
      this.drop();
      await accepting.catch(() => {});
      await Promise.allSettled([...tasks]);
    },
  };
}

const PLAIN_PAGE =
  `<!doctype html><meta charset="utf-8"><title>plain</title><link rel="icon" href="data:,">
<script>
  window.got = []; window.opens = 0; window.errors = 0;
  const es = new EventSource("streams/job");
  es.onopen = () => window.opens++;
  es.onerror = () => window.errors++;
  es.addEventListener("put", (e) => window.got.push(JSON.parse(e.data)));
</script>`;

Deno.test({
  name: "EventSource reconnects and resumes without loss or duplicate after a drop",
  ignore: !haveChromium,
  async fn() {
    const hub = new MessageStream();
    const handle = handler(hub, { retry: 200 });
    const app = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen() {} }, (req) => {
      if (new URL(req.url).pathname === "/plain.html") {
        return new Response(PLAIN_PAGE, { headers: { "content-type": "text/html" } });
      }
      return handle(req);
    });
    const net = proxy(app.addr.port);
    const browser = await launch();
    try {
      const page = await browser.newPage();
      await page.goto(`http://127.0.0.1:${net.port}/plain.html`);
      await page.waitForFunction(() => (window as unknown as { opens: number }).opens === 1);
      await hub.header("job", "h");
      for (let i = 1; i <= 3; i++) await hub.put("job", i);
      await page.waitForFunction(() => (window as unknown as { got: number[] }).got.length === 3);

      net.drop();
      for (let i = 4; i <= 6; i++) await hub.put("job", i); // while the browser is away
      await page.waitForFunction(() => (window as unknown as { opens: number }).opens === 2);
      for (let i = 7; i <= 9; i++) await hub.put("job", i);
      await page.waitForFunction(() => (window as unknown as { got: number[] }).got.length >= 9);

      const state = await page.evaluate(() => {
        const w = window as unknown as { got: number[]; errors: number };
        return { got: w.got, errors: w.errors };
      });
      assertEquals(state.got, [1, 2, 3, 4, 5, 6, 7, 8, 9]);
      assert(state.errors >= 1, "the drop was seen");
    } finally {
      await browser.close();
      await handle.close();
      await net.close();
      await app.shutdown();
    }
  },
});
