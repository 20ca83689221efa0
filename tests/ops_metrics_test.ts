/**
 * Metrics for operators: every error code has a series from the start, the build is named
 * (`msgstream_build_info`), and the engine's reachability is a gauge (`msgstream_engine_up`)
 * that `/healthz` follows (503 while the engine is down).
 */
import { assertEquals } from "@std/assert";
import { ERROR_CODES } from "../metrics.ts";
import { serve } from "../server.ts";
import { hasRedis, RedisProcess } from "./_redis.ts";
import { deadline } from "./_wait.ts";
import denoJson from "../deno.json" with { type: "json" };

const ROOT = new URL("..", import.meta.url).pathname;

/** The string members of a `type Name = | "a" | "b";` union in a source file. */
async function unionOf(file: string, name: string): Promise<string[]> {
  const text = await Deno.readTextFile(`${ROOT}${file}`);
  const m = new RegExp(`type ${name} =([^;]*);`).exec(text);
  if (!m) throw new Error(`No type ${name} in ${file}`);
  return [...(m[1] ?? "").matchAll(/"([a-z0-9_]+)"/g)].map((x) => x[1] as string);
}

async function scrape(port: number): Promise<Record<string, number>> {
  const res = await deadline(fetch(`http://127.0.0.1:${port}/metrics`), "GET /metrics");
  const out: Record<string, number> = {};
  for (const line of (await res.text()).trimEnd().split("\n")) {
    if (line.startsWith("#")) continue;
    const i = line.lastIndexOf(" ");
    out[line.slice(0, i)] = Number(line.slice(i + 1));
  }
  return out;
}

/** Scrapes until the series `key` reads `want` (the engine's state has no event to await). */
async function until(port: number, key: string, want: number): Promise<void> {
  let last: number | undefined;
  await deadline(
    (async () => {
      while ((last = (await scrape(port))[key]) !== want) {
        await new Promise((r) => setTimeout(r, 20));
      }
    })(),
    () => `${key} to read ${want} (last ${last})`,
  );
}

async function healthz(port: number): Promise<[number, unknown]> {
  const res = await deadline(fetch(`http://127.0.0.1:${port}/healthz`), "GET /healthz");
  return [res.status, await res.json()];
}

Deno.test("ERROR_CODES lists every code of the wire protocol and of the HTTP door", async () => {
  const wire = await unionOf("protocol.ts", "ErrorCode");
  const http = await unionOf("rest.ts", "HttpErrorCode");
  assertEquals(wire.length > 10, true, `parsed ${wire.join(", ")}`);
  assertEquals(
    [...new Set([...wire, ...http, "descriptors_exhausted"])].sort(),
    [...ERROR_CODES].sort(),
  );
});

Deno.test("a fresh server's /metrics has every error code at 0, its build and its engine", async () => {
  await using server = serve({ port: 0, http: { port: 0 }, logLevel: "silent" });
  const got = await scrape(server.http?.addr.port as number);
  for (const code of ERROR_CODES) {
    assertEquals(got[`msgstream_errors_total{code="${code}"}`], 0, code);
  }
  assertEquals(
    got[`msgstream_build_info{version="${denoJson.version}",deno="${Deno.version.deno}"}`],
    1,
  );
  assertEquals(got['msgstream_engine_up{engine="memory"}'], 1);
  // Unit-last names: the old ones are gone.
  for (const old of ["msgstream_bytes_in_total", "msgstream_bytes_out_total"]) {
    assertEquals(got[old], undefined, old);
  }
  assertEquals(got.msgstream_received_bytes_total, 0);
  assertEquals(await healthz(server.http?.addr.port as number), [200, {
    status: "ok",
    engine: "memory",
    streams: 0,
  }]);
});

Deno.test({
  name: "msgstream_engine_up and /healthz follow Redis going down and coming back",
  ignore: !hasRedis,
  async fn() {
    await using redis = await RedisProcess.start();
    await using server = serve({
      port: 0,
      http: { port: 0 },
      redis: redis.url,
      logLevel: "silent",
    });
    const port = server.http?.addr.port as number;
    await server.hub.put("job", 1); // through Redis: connected
    const key = 'msgstream_engine_up{engine="redis"}';
    await until(port, key, 1);
    assertEquals(await healthz(port), [200, { status: "ok", engine: "redis", streams: 0 }]);
    await redis.stop();
    await until(port, key, 0);
    assertEquals((await healthz(port))[0], 503);
    assertEquals((await healthz(port))[1], { status: "engine_down", engine: "redis", streams: 0 });
    await redis.restart();
    await until(port, key, 1);
    assertEquals((await healthz(port))[0], 200);
  },
});
