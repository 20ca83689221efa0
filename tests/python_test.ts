// The dependency-free Python client in examples/python, run by python3 against a real server.
import { assertEquals, assertMatch, assertStringIncludes } from "@std/assert";
import { TextLineStream } from "@std/streams/text-line-stream";
import { type Listener, MessageStream, type StreamEvent } from "../mod.ts";
import { serve } from "../server.ts";

const ROOT = new URL("..", import.meta.url).pathname;
const CLIENT = "examples/python/msgstream_client.py";

const HAS_PYTHON = (() => {
  try {
    return new Deno.Command("python3", { args: ["--version"], stdout: "null", stderr: "null" })
      .outputSync().success;
  } catch {
    return false;
  }
})();
// deno-lint-ignore no-console
if (!HAS_PYTHON) console.error("SKIPPED: Python client tests: python3 not installed");

function python(args: string[]): Deno.Command {
  return new Deno.Command("python3", {
    args: [CLIENT, ...args],
    cwd: ROOT,
    env: { PYTHONUNBUFFERED: "1" },
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  });
}

async function run(args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  const out = await python(args).output();
  const dec = new TextDecoder();
  return { code: out.code, stdout: dec.decode(out.stdout), stderr: dec.decode(out.stderr) };
}

function collector(): Listener & { events: StreamEvent[] } {
  const events: StreamEvent[] = [];
  return { events, put: (ev: StreamEvent) => void events.push(ev) };
}

Deno.test({
  name: "Python client listens header first, puts in order, and resumes after a server restart",
  ignore: !HAS_PYTHON,
  async fn() {
    const hub = new MessageStream();
    await hub.header("job", { state: "running" });
    let server = serve({ port: 0, hub, logLevel: "silent" });
    const port = server.addr.port;
    const child = python([
      "--server",
      `127.0.0.1:${port}`,
      "--reconnect-wait",
      "0.1",
      "--max-reconnect-attempts",
      "200",
      "listen",
      "job",
      "--count",
      "6",
    ]).spawn();
    const out = child.stdout.pipeThrough(new TextDecoderStream()).pipeThrough(new TextLineStream())
      .getReader();
    const errLines = child.stderr.pipeThrough(new TextDecoderStream()).pipeThrough(
      new TextLineStream(),
    ).getReader();
    const next = async () => JSON.parse((await out.read()).value ?? "null");
    const nextStatus = async () => (await errLines.read()).value ?? "";
    try {
      assertMatch(await nextStatus(), /^msgstream_client: connected /);
      const got = [await next()];
      await hub.put("job", 1);
      await hub.put("job", { n: 2 });
      await hub.put("job", "three");
      for (let i = 0; i < 3; i++) got.push(await next());
      // Restart: the same hub (so the same history) behind a new server on the same port.
      await server.shutdown();
      assertMatch(await nextStatus(), /^msgstream_client: disconnected /);
      await hub.put("job", 4);
      await hub.put("job", 5);
      server = serve({ port, hub, logLevel: "silent" });
      let status = await nextStatus();
      while (status.startsWith("msgstream_client: reconnecting")) status = await nextStatus();
      assertMatch(status, /^msgstream_client: reconnected /);
      await hub.put("job", 6);
      for (let i = 0; i < 3; i++) got.push(await next());
      const epoch = hub.info("job")?.epoch;
      assertEquals(got, [
        { stream: "job", kind: "header", seq: 0, epoch, message: { state: "running" } },
        { stream: "job", kind: "put", seq: 1, epoch, message: 1 },
        { stream: "job", kind: "put", seq: 2, epoch, message: { n: 2 } },
        { stream: "job", kind: "put", seq: 3, epoch, message: "three" },
        { stream: "job", kind: "put", seq: 4, epoch, message: 4 },
        { stream: "job", kind: "put", seq: 5, epoch, message: 5 },
        { stream: "job", kind: "put", seq: 6, epoch, message: 6 },
      ]);
      assertEquals((await out.read()).done, true);
      assertEquals((await child.status).code, 0);
    } finally {
      await out.cancel();
      await errLines.cancel();
      try {
        child.kill();
      } catch { /* exited */ }
      await child.status;
      await server.shutdown();
    }
  },
});

Deno.test({
  name: "Python client --since resumes after the given position",
  ignore: !HAS_PYTHON,
  async fn() {
    await using server = serve({ port: 0, logLevel: "silent" });
    for (let i = 1; i <= 4; i++) await server.hub.put("s", i);
    const epoch = server.hub.info("s")?.epoch;
    const r = await run([
      "--server",
      `127.0.0.1:${server.addr.port}`,
      "listen",
      "s",
      "--since",
      `${epoch}:2`,
      "--count",
      "2",
    ]);
    assertEquals(r.code, 0, r.stderr);
    const events = r.stdout.trim().split("\n").map((l) => JSON.parse(l));
    assertEquals(events.map((e) => [e.kind, e.seq, e.message]), [["put", 3, 3], ["put", 4, 4]]);
  },
});

Deno.test({
  name: "Python client puts, sets and clears headers, and deletes, with a token",
  ignore: !HAS_PYTHON,
  async fn() {
    await using server = serve({
      port: 0,
      logLevel: "silent",
      tokens: [{ name: "py", secret: "pw", publish: ["*"], subscribe: ["*"] }],
    });
    const q = collector();
    await server.hub.listen("p", q);
    const base = ["--server", `127.0.0.1:${server.addr.port}`, "--token", "pw"];
    for (
      const args of [
        ["put", "p", '{"a":1}'],
        ["put", "p", "plain text"],
        ["put", "p", "--raw", "7"],
        ["header", "p", '{"state":"done"}'],
        ["header", "p"],
        ["delete", "p"],
      ]
    ) {
      const r = await run([...base, ...args]);
      assertEquals(r.code, 0, `${args.join(" ")}: ${r.stderr}`);
    }
    assertEquals(q.events.map((e) => [e.kind, e.message]), [
      ["put", { a: 1 }],
      ["put", "plain text"],
      ["put", "7"],
      ["header", { state: "done" }],
      ["header", null],
      ["end", null],
    ]);
    const bad = await run(["--server", `127.0.0.1:${server.addr.port}`, "put", "p", "1"]);
    assertEquals(bad.code, 2);
    assertStringIncludes(bad.stderr, "unauthorized");
  },
});
