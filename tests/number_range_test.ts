/**
 * A number literal past a double's range (`1e400`, 309 digits) is refused with `invalid_json` on
 * every door, instead of being read as Infinity and sent on as `null` (the original Python
 * protocol reads `inf`: no JSON text carries that). Found by A2's JSON-edge attack
 * (/work/stage15/a2/json_edges.py): the server agreed with itself, with `null` on every door.
 */
import { assertEquals } from "@std/assert";
import { JsonCodec } from "../codec.ts";
import { serve } from "../server.ts";
import { connectRaw } from "./_raw_client.ts";
import { request, startHttp } from "./_http.ts";
import { MessageStream } from "../mod.ts";

Deno.test("a put, a header or a REST body with 1e400 is invalid_json; the stream is untouched", async () => {
  await using server = serve({ port: 0 });
  await using listener = await connectRaw(server.addr.port);
  await listener.send({ action: "hello" });
  await listener.send({ action: "listen", stream: "n", id: "L" });
  await listener.until((f) => f.id === "L");
  await using pub = await connectRaw(server.addr.port);
  await pub.send({ action: "hello" });
  await pub.send('{"action":"put","stream":"n","message":1e400,"id":1}');
  await pub.send('{"action":"put","stream":"n","message":{"a":[-1e400]},"id":2}');
  await pub.send(`{"action":"put","stream":"n","message":1${"0".repeat(400)},"id":3}`);
  await pub.send('{"action":"header","stream":"n","message":1.5E+0309,"id":4}');
  // In range, or only text: kept as sent.
  await pub.send('{"action":"put","stream":"n","message":[1e308,"1e400",1e-400,1e100],"id":5}');
  const replies = await pub.until((f) => f.id === 5);
  // The line cannot be decoded, so its error carries no id (as any invalid_json).
  assertEquals(replies.map((f) => [f.id, f.action, f.code]), [
    [undefined, "error", "invalid_json"],
    [undefined, "error", "invalid_json"],
    [undefined, "error", "invalid_json"],
    [undefined, "error", "invalid_json"],
    [5, "ok", undefined],
  ]);
  assertEquals(
    (replies[0]!.message as string).includes("out of range"),
    true,
    String(replies[0]!.message),
  );
  const got = await listener.until((f) => f.action === "put" && f.seq === 1);
  assertEquals(got.at(-1)!.message, [1e308, "1e400", 0, 1e100]);
});

Deno.test("REST: a body with 1e400 is 400 invalid_json", async () => {
  const hub = new MessageStream();
  const [http, base] = startHttp(hub);
  try {
    const res = await request(`${base}/streams/n`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: '{"x":-1e400}',
    });
    assertEquals(res.status, 400);
    assertEquals((await res.json()).code, "invalid_json");
    assertEquals(await hub.stat("n"), undefined);
  } finally {
    await http.shutdown();
    await hub.close();
  }
});

Deno.test("JsonCodec.decode: out-of-range numbers throw, strings and in-range numbers stay", () => {
  const codec = new JsonCodec();
  for (const text of ["1e400", "-1e400", '[0,{"a":1e999}]', `-${"9".repeat(309)}`]) {
    let threw = false;
    try {
      codec.decode(text);
    } catch (e) {
      threw = e instanceof SyntaxError;
    }
    assertEquals(threw, true, text);
  }
  assertEquals(codec.decode('{"e":"1e400","n":1e-400,"m":1.7976931348623157e308}'), {
    e: "1e400",
    n: 0,
    m: 1.7976931348623157e308,
  });
});
