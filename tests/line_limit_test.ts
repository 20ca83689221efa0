/**
 * The line limit across reads: a client in another process sends a line over `maxLineBytes`
 * in several writes, each under the limit (and any two together under it too), and waits
 * until the server has read each one before sending the next, so the server sees the line in
 * several reads. The limit must count the whole line, not the read: `line_too_long`, then the
 * connection is closed, and a bystander misses nothing.
 *
 * Why another process: writes from the test's own process may coalesce into one read. Why it
 * is deterministic: between writes the test waits until the kernel shows the writer's send
 * queue and the server socket's receive queue empty (`/proc/net/tcp`), i.e. the server's read
 * loop has taken the bytes.
 *
 * @module
 */

import { assertEquals } from "@std/assert";
import { withBystander } from "./_bystander.ts";
import { seqOf } from "./_hub.ts";
import { deadline, poll } from "./_wait.ts";

const MAX_LINE = 4096;
const CHUNK = 1500; // three of them make a line over the limit; two do not

/**
 * The writer, run with `deno eval`: connects to the port in `Deno.args[0]`, prints its local
 * port, then for each chunk in `Deno.args[1]` waits for a `go` line on stdin, writes the chunk
 * and prints `{"wrote": i}`. Then it reads what the server sends until the end (or a pong) and
 * prints it as `{"received": [...lines]}`.
 */
const WRITER = `
const [port, chunksJson] = Deno.args;
const chunks = JSON.parse(chunksJson);
const enc = new TextEncoder();
const say = async (o) => { await Deno.stdout.write(enc.encode(JSON.stringify(o) + "\\n")); };
const conn = await Deno.connect({ hostname: "127.0.0.1", port: Number(port) });
conn.setNoDelay(true);
await say({ port: conn.localAddr.port });
const stdin = Deno.stdin.readable.pipeThrough(new TextDecoderStream()).getReader();
let input = "";
const go = async () => {
  while (!input.includes("\\n")) {
    const r = await stdin.read();
    if (r.done) throw new Error("stdin ended");
    input += r.value;
  }
  input = input.slice(input.indexOf("\\n") + 1);
};
for (let i = 0; i < chunks.length; i++) {
  await go();
  try {
    const bytes = enc.encode(chunks[i]);
    let off = 0;
    while (off < bytes.length) off += await conn.write(bytes.subarray(off));
  } catch (e) {
    await say({ writeFailed: i, error: String(e) });
    break;
  }
  await say({ wrote: i });
}
const dec = new TextDecoder();
const buf = new Uint8Array(65536);
let text = "";
try {
  for (;;) {
    const n = await conn.read(buf);
    if (n === null) break;
    text += dec.decode(buf.subarray(0, n), { stream: true });
    if (text.includes('"pong"')) break;
  }
} catch (e) {
  text += "<read failed: " + e + ">";
}
await say({ received: text.split("\\n").filter((l) => l.length > 0) });
conn.close();
`;

/** One socket's queues from `/proc/net/tcp`: bytes not yet sent (acked) and not yet read. */
interface Queues {
  tx: number;
  rx: number;
}

/** The queues of the IPv4 socket from `local` to `remote` (ports), or undefined when gone. */
function queues(local: number, remote: number): Queues | undefined {
  const hex = (port: number) => port.toString(16).toUpperCase().padStart(4, "0");
  const want = [`:${hex(local)}`, `:${hex(remote)}`];
  for (const line of Deno.readTextFileSync("/proc/net/tcp").split("\n").slice(1)) {
    const f = line.trim().split(/\s+/);
    if (f.length < 5) continue;
    if (
      (f[1] as string).endsWith(want[0] as string) && (f[2] as string).endsWith(want[1] as string)
    ) {
      const [tx, rx] = (f[4] as string).split(":").map((h) => parseInt(h, 16));
      return { tx: tx as number, rx: rx as number };
    }
  }
  return undefined;
}

/** Runs the writer against `port` with `chunks`; returns what the server sent it. */
async function writeInReads(port: number, chunks: string[]): Promise<string[]> {
  const child = new Deno.Command(Deno.execPath(), {
    args: ["eval", WRITER, String(port), JSON.stringify(chunks)],
    env: { NO_COLOR: "1" },
    stdin: "piped",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const stdin = child.stdin.getWriter();
  const out = child.stdout.pipeThrough(new TextDecoderStream()).getReader();
  let errors = "";
  const stderr = (async () => {
    for await (const text of child.stderr.pipeThrough(new TextDecoderStream())) errors += text;
  })();
  let buffered = "";
  const said: string[] = [];
  const next = (what: string): Promise<Record<string, unknown>> =>
    deadline(
      (async () => {
        while (!buffered.includes("\n")) {
          const r = await out.read();
          if (r.done) throw new Error(`The writer process ended before ${what}`);
          buffered += r.value;
        }
        const line = buffered.slice(0, buffered.indexOf("\n"));
        buffered = buffered.slice(line.length + 1);
        said.push(line);
        return JSON.parse(line);
      })(),
      () =>
        `${what} (the writer said: ${said.join(" ") || "nothing"}; its stderr: ${
          errors.trim() || "nothing"
        })`,
    );
  try {
    const { port: own } = await next("the writer's port") as { port: number };
    for (let i = 0; i < chunks.length; i++) {
      await stdin.write(new TextEncoder().encode("go\n"));
      const wrote = await next(`the writer's report on chunk ${i}`);
      if ("writeFailed" in wrote) break; // the server closed early: its answer tells why
      assertEquals(wrote, { wrote: i });
      // The chunk has left the writer and the server has read it: the next one is a new read.
      await poll(
        () => {
          const mine = queues(own, port);
          const theirs = queues(port, own);
          return (mine?.tx ?? 0) === 0 && (theirs?.rx ?? 0) === 0;
        },
        () => `the server to read chunk ${i} (queues ${JSON.stringify(queues(port, own))})`,
      );
    }
    const report = await next("the server's answer to the writer");
    return report.received as string[];
  } finally {
    try {
      child.kill("SIGKILL");
    } catch {
      // exited
    }
    await stdin.close().catch(() => {});
    await out.cancel();
    await deadline(Promise.all([child.status, stderr]), "the writer process to exit");
  }
}

/** `code` or `action` of each frame, as the bad-input tests compare them. */
function kinds(lines: string[]): string[] {
  return lines.map((l) => {
    const f = JSON.parse(l);
    return f.code ?? f.action;
  });
}

/** A put to stream "x" whose line is `3 * CHUNK` bytes, newline excluded. */
function longPut(): string {
  const head = '{"action":"put","stream":"x","message":"';
  return head + "y".repeat(3 * CHUNK - head.length - 2) + '"}';
}

function split(text: string): string[] {
  const chunks: string[] = [];
  for (let i = 0; i < text.length; i += CHUNK) chunks.push(text.slice(i, i + CHUNK));
  return chunks;
}

Deno.test("A line over the limit sent in several reads, each under it, from another process gets line_too_long", async (t) => {
  await t.step("the line ends in its last read", async () => {
    await withBystander({ maxLineBytes: MAX_LINE }, async (server, bad) => {
      await bad.close(); // the bad client is the other process
      const line = longPut();
      assertEquals(line.length, 3 * CHUNK);
      // The last read also holds a ping: a server that took the line would answer it.
      const chunks = split(line);
      chunks[2] += '\n{"action":"ping","id":"after"}\n';
      const got = await writeInReads(server.addr.port, chunks);
      assertEquals(kinds(got), ["line_too_long", "close"]);
      assertEquals(await seqOf(server.hub, "x"), undefined, "nothing was put");
    });
  });
  await t.step("no newline ever comes", async () => {
    await withBystander({ maxLineBytes: MAX_LINE }, async (server, bad) => {
      await bad.close();
      const got = await writeInReads(server.addr.port, split(longPut()));
      assertEquals(kinds(got), ["line_too_long", "close"]);
      assertEquals(await seqOf(server.hub, "x"), undefined, "nothing was put");
    });
  });
});
