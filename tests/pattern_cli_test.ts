/**
 * The command line's pattern commands: `msgstream listen --pattern` and `msgstream ls`.
 */
import { assertEquals } from "@std/assert";
import { TextLineStream } from "@std/streams/text-line-stream";
import { serve } from "../server.ts";
import { deadline } from "./_wait.ts";
import { engineOptions } from "./_server.ts";

const ROOT = new URL("..", import.meta.url).pathname;

function command(args: string[]): Deno.Command {
  return new Deno.Command(Deno.execPath(), {
    args: ["run", "-N", "cli.ts", ...args],
    cwd: ROOT,
    env: { NO_COLOR: "1" },
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  });
}

async function run(args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  const child = command(args).spawn();
  try {
    const out = await deadline(child.output(), `msgstream ${args.join(" ")} to exit`);
    const dec = new TextDecoder();
    return { code: out.code, stdout: dec.decode(out.stdout), stderr: dec.decode(out.stderr) };
  } catch (e) {
    try {
      child.kill("SIGKILL");
    } catch { /* exited */ }
    await child.status;
    throw e;
  }
}

function lines(stdout: string): Record<string, unknown>[] {
  return stdout.trim().split("\n").filter((l) => l).map((l) => JSON.parse(l));
}

Deno.test("msgstream listen --pattern prints each stream's header first, announces new streams, and nothing outside", async () => {
  await using server = serve({ port: 0, logLevel: "silent", ...engineOptions() });
  const hub = server.hub;
  await hub.header("jobs.1", "running");
  const args = ["listen", "--pattern", "jobs.*", "--count", "2", "--server"];
  const child = command([...args, `127.0.0.1:${server.addr.port}`]).spawn();
  const reader = child.stdout.pipeThrough(new TextDecoderStream())
    .pipeThrough(new TextLineStream()).getReader();
  const stderr = new Response(child.stderr).text();
  const next = async () => {
    const { value, done } = await deadline(reader.read(), "the next line of msgstream listen");
    if (done) throw new Error(`stdout ended early; stderr: ${await stderr}`);
    const o = JSON.parse(value);
    return `${o.stream} ${o.kind} ${JSON.stringify(o.message)} ${o.seq}`;
  };
  // The pattern is registered before the catch-up: once a header is out, new streams count.
  assertEquals(await next(), 'jobs.1 header "running" 0');
  // A delete ends that stream; the pattern goes on.
  await hub.delete("jobs.1");
  assertEquals(await next(), "jobs.1 end null 0");
  await hub.put("other", 1);
  await hub.put("jobs.2", "a");
  await hub.put("jobs.2", "b");
  assertEquals(await next(), "jobs.2 header null 0");
  assertEquals(await next(), 'jobs.2 put "a" 1');
  assertEquals(await next(), 'jobs.2 put "b" 2');
  const { done } = await deadline(reader.read(), "the end of stdout");
  assertEquals(done, true);
  assertEquals((await deadline(child.status, "msgstream listen to exit")).code, 0);
  await stderr;
});

Deno.test({
  name:
    "msgstream ls [PATTERN] lists stream, seq, listeners and whether a header is set, across pages",
  fn: async () => {
    await using server = serve({ port: 0, logLevel: "silent", ...engineOptions() });
    const hub = server.hub;
    for (let i = 0; i < 5; i++) await hub.put(`jobs.${i}`, i);
    await hub.header("jobs.3", "h");
    await hub.put("other", 1);
    await hub.listen("jobs.1", { put() {} });
    const at = `127.0.0.1:${server.addr.port}`;
    const r = await run(["ls", "jobs.*", "--limit", "2", "--server", at]);
    assertEquals([r.code, r.stderr], [0, ""]);
    assertEquals(lines(r.stdout), [
      { stream: "jobs.0", seq: 1, listeners: 0, header: false },
      { stream: "jobs.1", seq: 1, listeners: 1, header: false },
      { stream: "jobs.2", seq: 1, listeners: 0, header: false },
      { stream: "jobs.3", seq: 1, listeners: 0, header: true },
      { stream: "jobs.4", seq: 1, listeners: 0, header: false },
    ]);
    const all = await run(["ls", "--server", at]);
    assertEquals(lines(all.stdout).map((s) => s.stream), [
      "jobs.0",
      "jobs.1",
      "jobs.2",
      "jobs.3",
      "jobs.4",
      "other",
    ]);
    const bad = await run(["ls", "--limit", "5000", "--server", at]);
    assertEquals(bad.code, 1);
  },
});
