/**
 * What outsiders found (issue 10, brief A10): the same program on `MessageStream` in process and
 * on `RemoteStream` to a server meets the same refusals for the same bad input, and a refusal
 * never leaves a request pending, costs the connection, or becomes a silent gap.
 */
import { assertEquals, assertInstanceOf, assertRejects } from "@std/assert";
import { Inbox, MessageStream, MessageTooLargeError } from "../mod.ts";
import { RemoteStream } from "../client.ts";
import { serve } from "../server.ts";
import { deadline } from "./_wait.ts";

/** A value nested `levels` deep: `[[...[1]...]]`. */
function nested(levels: number): unknown {
  let value: unknown = 1;
  for (let i = 0; i < levels; i++) value = [value];
  return value;
}

Deno.test("RemoteStream.put() of a message nested past the codec's depth is refused, not left pending", async () => {
  await using server = serve({ port: 0, logLevel: "error" });
  await using remote = await RemoteStream.connect(`127.0.0.1:${server.addr.port}`);
  const put = remote.put("deep", nested(70));
  const error = await deadline(
    put.then(() => undefined, (e) => e as Error),
    "the deep put's answer",
  );
  assertInstanceOf(error, TypeError);
  assertEquals(
    error.message,
    "Cannot encode request: Cannot encode value: JSON nests deeper than 64 levels",
  );
  // The connection still serves: the next put is the stream's first.
  assertEquals((await remote.put("deep", 1)).seq, 1);
});

Deno.test("MessageStream.put() refuses a message nested past the codec's depth, as the wire does", async () => {
  const hub = new MessageStream();
  const inbox = new Inbox();
  await hub.listen("deep", inbox);
  await assertRejects(
    () => hub.put("deep", nested(70)),
    TypeError,
    "Cannot encode value: JSON nests deeper than 64 levels",
  );
  assertEquals((await hub.put("deep", 1)).seq, 1);
  inbox.close();
  const seqs: number[] = [];
  for await (const ev of inbox) seqs.push(ev.seq);
  assertEquals(seqs, [1]);
  await hub.close();
});

Deno.test("A RemoteStream listener gets every put the hub accepted, however deep (no silent gap)", async () => {
  await using server = serve({ port: 0, logLevel: "error" });
  await using remote = await RemoteStream.connect(`127.0.0.1:${server.addr.port}`);
  const inbox = new Inbox();
  await remote.listen("deep", inbox);
  // The deepest message the hub accepts still reaches a remote listener.
  for (const levels of [62, 63, 64, 65, 70]) {
    await server.hub.put("deep", nested(levels)).catch(() => undefined);
  }
  await server.hub.put("deep", "last");
  const seqs: number[] = [];
  const reader = inbox.getReader();
  for (;;) {
    const { value } = await deadline(reader.read(), () => `the put after ${seqs.join(",")}`);
    seqs.push(value!.seq);
    if (value!.message === "last") break;
  }
  const last = seqs.at(-1)!;
  assertEquals(seqs, Array.from({ length: last }, (_, i) => i + 1));
  reader.releaseLock();
  inbox.close();
});

Deno.test("MessageStream.put() and RemoteStream.put() refuse a function or a symbol alike", async () => {
  const hub = new MessageStream();
  await using server = serve({ port: 0, logLevel: "error" });
  await using remote = await RemoteStream.connect(`127.0.0.1:${server.addr.port}`);
  for (const message of [() => 1, Symbol("s")]) {
    for (const s of [hub, remote]) {
      await assertRejects(
        () => s.put("job", message),
        TypeError,
        `Cannot put on stream "job": a ${typeof message} is not a message`,
      );
    }
  }
  assertEquals(await hub.stat("job"), undefined);
  assertEquals(await remote.stat("job"), undefined);
  await hub.close();
});

Deno.test("RemoteStream.put() of a message over the limit is refused locally and keeps the connection", async () => {
  await using server = serve({ port: 0, logLevel: "error" });
  await using remote = await RemoteStream.connect(`127.0.0.1:${server.addr.port}`);
  const inbox = new Inbox();
  await remote.listen("big", inbox);
  const hub = new MessageStream();
  const big = "x".repeat(2 << 20);
  const local = await hub.put("big", big).then(() => undefined, (e) => e as Error);
  const wire = await deadline(
    remote.put("big", big).then(() => undefined, (e) => e as Error),
    "the big put's answer",
  );
  assertInstanceOf(local, MessageTooLargeError);
  assertInstanceOf(wire, MessageTooLargeError);
  assertEquals(wire.message, local.message);
  // Nothing dropped the connection: the listener goes on from the same join.
  assertEquals((await remote.put("big", 1)).seq, 1);
  const { value } = await deadline(inbox.getReader().read(), "the put after the refusal");
  assertEquals([value?.kind, value?.seq, value?.message], ["put", 1, 1]);
  inbox.close();
  await hub.close();
});

Deno.test("MessageStream.listen() and RemoteStream.listen() refuse a malformed since alike", async (t) => {
  const hub = new MessageStream();
  await using server = serve({ port: 0, logLevel: "error" });
  await using remote = await RemoteStream.connect(`127.0.0.1:${server.addr.port}`);
  await remote.listen("job", new Inbox()); // this client follows it already: still refused
  const bad = [{ epoch: "e", seq: -1 }, { epoch: "e", seq: 1.5 }, { epoch: 5, seq: 1 }, { seq: 1 }];
  for (const since of bad) {
    await t.step(JSON.stringify(since), async () => {
      for (const s of [hub, remote]) {
        await assertRejects(
          () => s.listen("job", new Inbox(), { since: since as never }),
          TypeError,
          'Cannot listen to stream "job": since must be {epoch: string, seq: non-negative integer}',
        );
      }
    });
  }
  assertEquals(await hub.stat("job"), undefined);
  await hub.close();
});

Deno.test("The client entry names the types of RemoteStream.list()", async () => {
  const { RemoteStream: _ } = await import("../client.ts");
  const page: import("../client.ts").StreamPage = { streams: [], next: null };
  const options: import("../client.ts").ListOptions = { pattern: "jobs.*", limit: 1 };
  const row: import("../client.ts").StreamListing = {
    stream: "a",
    epoch: "e",
    seq: 0,
    listeners: 0,
    header: false,
  };
  assertEquals([page.next, options.limit, row.seq], [null, 1, 0]);
});

Deno.test("msgstream put of a message the client refuses says why and exits 1, without a trace", async (t) => {
  await using server = serve({ port: 0, logLevel: "error" });
  const deep = "[".repeat(70) + "]".repeat(70);
  const cases: [string, string, string, string[]][] = [
    ["nested too deep, on stdin", deep, "nests deeper than 64 levels", []],
    ["nested too deep, as an argument", "", "nests deeper than 64 levels", [deep]],
    ["too large, on stdin", JSON.stringify("x".repeat(1 << 20)), "the limit is 1044480", []],
  ];
  for (const [what, message, why, argument] of cases) {
    await t.step(what, async () => {
      const file = await Deno.makeTempFile();
      try {
        await Deno.writeTextFile(file, message + "\n");
        const out = await new Deno.Command(Deno.execPath(), {
          args: [
            "run",
            "-N",
            "cli.ts",
            "put",
            "big",
            ...argument,
            "--max-line-bytes",
            String(4 << 20),
            "--server",
            `127.0.0.1:${server.addr.port}`,
          ],
          cwd: new URL("..", import.meta.url),
          stdin: "piped",
          stdout: "piped",
          stderr: "piped",
          env: { NO_COLOR: "1" },
        }).spawn();
        const writer = out.stdin.getWriter();
        await writer.write(await Deno.readFile(file));
        await writer.close();
        const { code, stderr } = await deadline(out.output(), `msgstream put (${what}) to exit`);
        const text = new TextDecoder().decode(stderr);
        assertEquals(code, 1, text);
        assertEquals(text.includes(why), true, text);
        assertEquals(text.includes("    at "), false, text);
      } finally {
        await Deno.remove(file);
      }
    });
  }
  assertEquals(await server.hub.stat("big"), undefined);
});

Deno.test("stat() and info() count listeners by name, not listeners by pattern, as documented", async () => {
  const hub = new MessageStream();
  await hub.listen({ pattern: "p.*" }, { put() {} });
  await hub.put("p.1", 1);
  assertEquals([(await hub.stat("p.1"))?.listeners, hub.info("p.1")?.listeners], [0, 0]);
  await hub.listen("p.1", { put() {} });
  assertEquals([(await hub.stat("p.1"))?.listeners, hub.info("p.1")?.listeners], [1, 1]);
  await hub.close();
});

Deno.test("MessageStream.header() and RemoteStream.header() refuse a function or a symbol alike", async () => {
  const hub = new MessageStream();
  await using server = serve({ port: 0, logLevel: "error" });
  await using remote = await RemoteStream.connect(`127.0.0.1:${server.addr.port}`);
  for (const s of [hub, remote]) {
    await s.header("job", { state: "running" });
    for (const message of [() => 1, Symbol("s")]) {
      await assertRejects(
        () => s.header("job", message),
        TypeError,
        `Cannot set the header of stream "job": a ${typeof message} is not a message`,
      );
    }
    // The header stands: the remote one was cleared before.
    assertEquals((await s.stat("job"))?.header, { state: "running" });
  }
  await hub.close();
});
