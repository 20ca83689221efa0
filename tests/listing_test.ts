/**
 * `GET /streams` is paged (issue 11, item 5): by name, `?after=`, `?limit=` (default 100, at
 * most 1000), `?pattern=`, a `Link: <…>; rel="next"` while more follow, within the token's
 * subscribe grant; and the walk over many streams lets the event loop run.
 */
import { assert, assertEquals } from "@std/assert";
import { MessageStream } from "../mod.ts";
import { handler } from "../http.ts";
import { assertError, request, startHttp } from "./_http.ts";
import { deadline } from "./_wait.ts";

/** Follows `Link: rel="next"` from `first`, collecting every page's names. */
async function walk(base: string, first: string, init: RequestInit = {}): Promise<string[][]> {
  const pages: string[][] = [];
  let url: string | undefined = `${base}${first}`;
  while (url !== undefined) {
    const res: Response = await request(url, init);
    assertEquals(res.status, 200);
    pages.push((await res.json()).map((s: { name: string }) => s.name));
    const link = res.headers.get("link");
    if (link === null) break;
    const m = /^<([^>]*)>; rel="next"$/.exec(link);
    assert(m, `a Link header of the form <…>; rel="next", got ${link}`);
    url = new URL(m[1] as string, url).href;
    assert(pages.length < 100, "the pages end");
  }
  return pages;
}

Deno.test("GET /streams pages by name: after, limit, Link rel=next, every stream once", async () => {
  const hub = new MessageStream();
  // Created in an order that is not the names' order.
  const names = Array.from({ length: 250 }, (_, i) => `s${(i * 7919) % 250}`);
  for (const name of names) await hub.put(name, 1);
  const [server, base] = startHttp(hub);
  const pages = await walk(base, "/streams");
  assertEquals(pages.map((p) => p.length), [100, 100, 50]);
  const sorted = [...names].sort((a, b) => a < b ? -1 : a > b ? 1 : 0);
  assertEquals(pages.flat(), sorted);

  const small = await walk(base, "/streams?limit=60");
  assertEquals(small.map((p) => p.length), [60, 60, 60, 60, 10]);
  assertEquals(small.flat(), sorted);

  // A cursor need not be a stream's name; the last page has no Link.
  const res = await request(`${base}/streams?after=s2499&limit=5`);
  assertEquals((await res.json()).map((s: { name: string }) => s.name), [
    "s25",
    "s26",
    "s27",
    "s28",
    "s29",
  ]);
  const last = await request(`${base}/streams?after=s99`);
  assertEquals(last.headers.get("link"), null);
  assertEquals(await last.json(), []);
  await server.shutdown();
});

Deno.test("GET /streams: limit above the maximum is read as the maximum; a bad limit is 400 invalid_limit", async () => {
  const hub = new MessageStream();
  for (let i = 0; i < 30; i++) await hub.put(`n${String(i).padStart(2, "0")}`, i);
  const [server, base] = startHttp(hub, { maxListPage: 20, listPage: 7 });
  const first = await request(`${base}/streams`);
  assertEquals((await first.json()).length, 7);
  assertEquals(first.headers.get("link"), '<?limit=7&after=n06>; rel="next"');
  const big = await request(`${base}/streams?limit=1000000`);
  assertEquals((await big.json()).length, 20);
  for (const bad of ["0", "-1", "1.5", "ten", "1e3", "99999999999999999"]) {
    await assertError(await request(`${base}/streams?limit=${bad}`), 400, "invalid_limit");
  }
  assertEquals(server.metrics.errors.invalid_limit, 6);
  await server.shutdown();
});

Deno.test("GET /streams?pattern= lists the streams the pattern matches, paged", async () => {
  const hub = new MessageStream();
  for (const name of ["jobs.3", "jobs.1", "other", "jobs.2", "jobsx", "a.jobs.1"]) {
    await hub.put(name, 1);
  }
  const [server, base] = startHttp(hub);
  assertEquals(await walk(base, "/streams?pattern=jobs.*&limit=2"), [
    ["jobs.1", "jobs.2"],
    ["jobs.3"],
  ]);
  await assertError(await request(`${base}/streams?pattern=`), 400, "invalid_pattern");
  await server.shutdown();
});

Deno.test("GET /streams pages within the token's subscribe grant", async () => {
  const hub = new MessageStream();
  for (let i = 0; i < 30; i++) {
    await hub.put(`${i % 2 ? "a" : "b"}${String(i).padStart(2, "0")}`, i);
  }
  const [server, base] = startHttp(hub, {
    tokens: [{ name: "r", secret: "s3cret", subscribe: ["a*"], publish: [] }],
  });
  const auth = { headers: { authorization: "Bearer s3cret" } };
  const pages = await walk(base, "/streams?limit=4", auth);
  assertEquals(pages.map((p) => p.length), [4, 4, 4, 3]);
  assertEquals(pages.flat().every((n) => n.startsWith("a")), true);
  assertEquals(pages.flat().length, 15);
  await server.shutdown();
});

Deno.test("GET /streams over many streams lets the event loop run while it walks them", async () => {
  const hub = new MessageStream();
  const N = 60_000;
  for (let i = 0; i < N; i++) await hub.put(`s${i}`, i);
  const handle = handler(hub);
  let settled = false;
  const listing = handle(new Request("http://localhost/streams?limit=3")).then((res) => {
    settled = true;
    return res;
  });
  // The walk pauses every few thousand names: a timer set now fires before it is done.
  await new Promise((resolve) => setTimeout(resolve, 0));
  assertEquals(settled, false, "the listing walked every stream without letting timers run");
  const res = await deadline(listing, "the listing");
  assertEquals((await res.json()).map((s: { name: string }) => s.name), ["s0", "s1", "s10"]);
  assertEquals(res.headers.get("link"), '<?limit=3&after=s10>; rel="next"');

  // The figure behind it (printed, not asserted): the longest gap between 1 ms timers while
  // one listing runs.
  let longest = 0;
  let last = performance.now();
  let done = false;
  const probe = (async () => {
    while (!done) {
      await new Promise((resolve) => setTimeout(resolve, 1));
      const now = performance.now();
      longest = Math.max(longest, now - last);
      last = now;
    }
  })();
  const t0 = performance.now();
  await (await handle(new Request("http://localhost/streams"))).arrayBuffer();
  const took = performance.now() - t0;
  done = true;
  await probe;
  // deno-lint-ignore no-console
  console.log(
    `listing ${N} streams (one page of 100): ${took.toFixed(1)} ms in all, ` +
      `longest timer gap ${longest.toFixed(1)} ms`,
  );
  await handle.close();
});
