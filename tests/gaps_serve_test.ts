/**
 * Issue 12: `serve()` with an invalid option throws and leaves no port bound.
 *
 * @module
 */

import { assertEquals, assertThrows } from "@std/assert";
import { serve, type ServeOptions } from "../server.ts";
import { connectRaw } from "./_raw_client.ts";
import { listeningPort } from "./_server.ts";
import { deadline } from "./_wait.ts";

/** A port nobody listens on right now. */
function freePort(): number {
  const l = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (l.addr as Deno.NetAddr).port;
  l.close();
  return port;
}

Deno.test("serve() with an invalid option throws and leaves no port bound", async (t) => {
  const bad: [string, Partial<ServeOptions>][] = [
    ["pingInterval", { pingInterval: -1 }],
    ["maxOutboundBytes", { maxOutboundBytes: 0 }],
    ["maxLineBytes", { maxLineBytes: 0 }],
    ["handshakeTimeout", { handshakeTimeout: 0 }],
    ["maxMessageBytes", { maxMessageBytes: 0 }],
    ["logLevel", { logLevel: "loud" as NonNullable<ServeOptions["logLevel"]> }],
    ["http.port", { http: { port: -1 } }],
    ["http.port", { http: { port: 70000 } }],
  ];
  for (const [name, option] of bad) {
    await t.step(`${name}: ${JSON.stringify(option)}`, () => {
      const port = freePort();
      assertThrows(() => serve({ port, logLevel: "silent", ...option }), RangeError);
      // Bindable at once: nothing of the refused server holds it.
      const l = Deno.listen({ hostname: "127.0.0.1", port });
      assertEquals((l.addr as Deno.NetAddr).port, port);
      l.close();
    });
  }
});

Deno.test("msgstream serve --max-message-bytes N refuses a bigger put with message_too_large", async () => {
  const child = new Deno.Command(Deno.execPath(), {
    args: ["run", "-N", "server.ts", "--port", "0", "--max-message-bytes", "10"],
    cwd: new URL("..", import.meta.url).pathname,
    env: { NO_COLOR: "1" },
    stdin: "null",
    stdout: "piped",
    stderr: "null",
  }).spawn();
  try {
    const port = await deadline(listeningPort(child.stdout), "the server to listen");
    await using raw = await connectRaw(port as number);
    await raw.send({ action: "put", stream: "s", message: "x".repeat(9), id: 1 });
    await raw.send({ action: "put", stream: "s", message: "x".repeat(8), id: 2 });
    const answers = [];
    for (let i = 0; i < 2; i++) {
      const f = await deadline(raw.next(), `answer ${i + 1}`);
      answers.push([f.action, f.id, f.code ?? f.seq]);
    }
    assertEquals(answers, [["error", 1, "message_too_large"], ["ok", 2, 1]]);
  } finally {
    child.kill("SIGTERM");
    await child.status;
  }
});
