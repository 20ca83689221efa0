// Guessing tokens is bounded: a connection's MAX_FAILED_HELLOS-th failed hello is answered
// unauthorized and closes it (it was unbounded: about 37,000 guesses a second on one
// connection); fewer failures and then the right token still authenticate.
import { assertEquals } from "@std/assert";
import { serve } from "../server.ts";
import { MAX_FAILED_HELLOS } from "../protocol.ts";
import { connectRaw } from "./_raw_client.ts";

const tokens = [{ name: "t", secret: "good", publish: ["*"], subscribe: ["*"] }];

Deno.test("TCP: the last allowed failed hello closes the connection", async () => {
  assertEquals(MAX_FAILED_HELLOS, 16);
  await using server = serve({ port: 0, logLevel: "silent", tokens });
  await using c = await connectRaw(server.addr.port);
  for (let i = 1; i <= MAX_FAILED_HELLOS + 1; i++) {
    await c.send({ action: "hello", token: i === 2 ? undefined : `guess${i}`, id: i });
  }
  const got = (await c.rest()).map((f) => [f.action, f.code, f.id]);
  const expected: unknown[][] = [];
  for (let i = 1; i <= MAX_FAILED_HELLOS; i++) expected.push(["error", "unauthorized", i]);
  expected.push(["close", undefined, undefined]);
  assertEquals(got, expected);
});

Deno.test("TCP: fewer failed hellos, then the right token: authenticated", async () => {
  await using server = serve({ port: 0, logLevel: "silent", tokens });
  await using c = await connectRaw(server.addr.port);
  for (let i = 1; i < MAX_FAILED_HELLOS; i++) {
    await c.send({ action: "hello", token: `guess${i}`, id: i });
    assertEquals((await c.next()).code, "unauthorized");
  }
  await c.send({ action: "hello", token: "good", id: "ok" });
  assertEquals((await c.next()).action, "ok");
  await c.send({ action: "put", stream: "a", message: 1, id: "p" });
  assertEquals([(await c.next()).action, (await server.hub.stat("a"))?.seq], ["ok", 1]);
});
