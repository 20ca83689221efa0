/**
 * Reading a stream's state without listening: the wire action `stat` (the Session) and
 * `RemoteStream.stat()`, on a memory server and on the Redis engine. `MessageStream.stat()` on its
 * own is covered in hub_test.ts and redis_test.ts.
 */

import { assertEquals, assertRejects } from "@std/assert";
import { RemoteStream } from "../client.ts";
import { ProtocolError } from "../protocol.ts";
import { serve, type ServeOptions } from "../server.ts";
import { connectRaw, type Frame, type RawClient } from "./_raw_client.ts";
import { Recorder } from "./_recorder.ts";
import { hasRedis, RedisProcess } from "./_redis.ts";
import { request, startHttp } from "./_http.ts";

/** Sends a request with an id and returns the answer with that id. */
async function ask(raw: RawClient, frame: Frame): Promise<Frame> {
  await raw.send(frame);
  const got = await raw.until((f) => f.id === frame.id);
  return got[got.length - 1] as Frame;
}

/** Runs `fn` against a memory server, and against one on a fresh Redis when there is one. */
function both(name: string, fn: (options: ServeOptions) => Promise<void>): void {
  Deno.test(`[memory] ${name}`, () => fn({}));
  Deno.test({
    name: `[redis] ${name}`,
    ignore: !hasRedis,
    async fn() {
      await using redis = await RedisProcess.start();
      await fn({ redis: redis.url, redisPrefix: `t${crypto.randomUUID().slice(0, 8)}:` });
    },
  });
}

both("stat answers the stream's state, or null, and never creates the stream", async (options) => {
  await using server = serve({ port: 0, logLevel: "silent", ...options });
  await using raw = await connectRaw(server.addr.port);
  assertEquals(await ask(raw, { action: "stat", stream: "job", id: 1 }), {
    action: "ok",
    id: 1,
    stream: "job",
    stat: null,
  });
  assertEquals(await server.hub.stat("job"), undefined, "asking did not create it");
  await ask(raw, { action: "header", stream: "job", message: { state: "running" }, id: 2 });
  await ask(raw, { action: "listen", stream: "job", id: 3 });
  const put = await ask(raw, { action: "put", stream: "job", message: 1, id: 4 });
  assertEquals(await ask(raw, { action: "stat", stream: "job", id: 5 }), {
    action: "ok",
    id: 5,
    stream: "job",
    stat: { header: { state: "running" }, seq: 1, epoch: put.epoch, listeners: 1 },
  });
  await ask(raw, { action: "delete", stream: "job", id: 6 });
  assertEquals((await ask(raw, { action: "stat", stream: "job", id: 7 })).stat, null);
  assertEquals((await ask(raw, { action: "stat", stream: "job", id: 8 })).stat, null);
  assertEquals(await server.hub.stat("job"), undefined, "a deleted stream stays deleted");
});

both("RemoteStream.stat() reads the server's state without listening", async (options) => {
  await using server = serve({ port: 0, logLevel: "silent", ...options });
  await using remote = await RemoteStream.connect(`127.0.0.1:${server.addr.port}`);
  assertEquals(await remote.stat("job"), undefined);
  await remote.header("job", ["h", 1]);
  const at = await remote.put("job", "x");
  const rec = new Recorder();
  await server.hub.listen("job", rec);
  assertEquals(await remote.stat("job"), {
    stream: "job",
    header: ["h", 1],
    seq: 1,
    epoch: at.epoch,
    listeners: 1,
  });
  server.hub.hangup("job", rec);
  await remote.delete("job");
  assertEquals(await remote.stat("job"), undefined);
  assertEquals(
    await remote.stat("job"),
    undefined,
    "asking about a deleted stream did not recreate it",
  );
  const e = await assertRejects(() => remote.stat(""), ProtocolError);
  assertEquals(e.code, "invalid_stream");
});

Deno.test("stat needs the subscribe right on a server with tokens", async () => {
  const tokens = [{ name: "w", secret: "w-s3cret", publish: ["*"], subscribe: ["public"] }];
  await using server = serve({ port: 0, logLevel: "silent", tokens });
  await using raw = await connectRaw(server.addr.port);
  await ask(raw, { action: "hello", token: "w-s3cret", id: 1 });
  await ask(raw, { action: "put", stream: "private", message: 1, id: 2 });
  const refused = await ask(raw, { action: "stat", stream: "private", id: 3 });
  assertEquals([refused.action, refused.code, refused.stream], ["error", "forbidden", "private"]);
  assertEquals((await ask(raw, { action: "stat", stream: "public", id: 4 })).stat, null);
});

both(
  "REST GET /streams/{name} and its header read the state; a deleted stream stays deleted",
  async (options) => {
    await using server = serve({ port: 0, logLevel: "silent", ...options });
    const [http, base] = startHttp(server.hub);
    await using _http = http;
    await server.hub.header("job", { s: 1 });
    const at = await server.hub.put("job", 1);
    const res = await request(`${base}/streams/job`);
    assertEquals(await res.json(), {
      name: "job",
      listeners: 0,
      seq: 1,
      epoch: at.epoch,
      hasHeader: true,
    });
    assertEquals(await (await request(`${base}/streams/job/header`)).json(), { s: 1 });
    await server.hub.delete("job");
    for (const path of ["/streams/job", "/streams/job/header", "/streams/job"]) {
      const gone = await request(base + path);
      assertEquals([gone.status, (await gone.json()).code], [404, "not_found"], path);
    }
    assertEquals(await server.hub.stat("job"), undefined, "asking did not recreate it");
  },
);

/** Runs the command line against a server; returns its JSON output lines. */
async function cli(port: number, ...args: string[]): Promise<Record<string, unknown>[]> {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-N", "cli.ts", ...args, "--server", `127.0.0.1:${port}`],
    cwd: new URL("..", import.meta.url).pathname,
    env: { NO_COLOR: "1" },
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).output();
  const text = new TextDecoder().decode(out.stdout);
  assertEquals(out.code, 0, new TextDecoder().decode(out.stderr));
  return text.trim().split("\n").map((l) => JSON.parse(l));
}

both("msgstream header and stats read a deleted stream without recreating it", async (options) => {
  await using server = serve({ port: 0, logLevel: "silent", ...options });
  const port = server.addr.port;
  await server.hub.header("job", "h");
  const at = await server.hub.put("job", 1);
  assertEquals(await cli(port, "header", "job"), [
    { stream: "job", kind: "header", seq: 1, epoch: at.epoch, message: "h" },
  ]);
  await server.hub.delete("job");
  assertEquals(await cli(port, "header", "job"), [
    { stream: "job", kind: "header", seq: 0, epoch: null, message: null },
  ]);
  assertEquals((await cli(port, "stats", "job")).slice(1), [
    { stream: "job", epoch: null, seq: 0, header: null },
  ]);
  assertEquals(await server.hub.stat("job"), undefined, "asking did not recreate it");
});
