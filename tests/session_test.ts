// The wire protocol's Session (protocol.ts) without a socket: request lines in through
// handle(), frames out through a fake Transport.
import { assertEquals } from "@std/assert";
import { Auth } from "../auth.ts";
import { ERROR_CODES, Metrics } from "../metrics.ts";
import { MessageStream } from "../mod.ts";
import { PROTOCOL_VERSION, Session, type Transport, unprompted } from "../protocol.ts";

/** A Transport that records every frame sent and whether it was closed. */
class FakeTransport implements Transport {
  readonly sent: Record<string, unknown>[] = [];
  closed = false;
  send(frame: Uint8Array): void {
    const text = new TextDecoder().decode(frame);
    assertEquals(text.endsWith("\n"), true, "a frame ends with a newline");
    assertEquals(text.indexOf("\n"), text.length - 1, "a frame is one line");
    this.sent.push(JSON.parse(text));
  }
  close(): void {
    this.closed = true;
  }
  /** Takes the frames sent so far. */
  take(): Record<string, unknown>[] {
    return this.sent.splice(0);
  }
}

function session(options: { auth?: Auth; hub?: MessageStream } = {}) {
  const hub = options.hub ?? new MessageStream();
  const transport = new FakeTransport();
  const metrics = new Metrics();
  const s = new Session(hub, transport, { auth: options.auth, metrics });
  const send = (frame: unknown) =>
    s.handle(typeof frame === "string" ? frame : JSON.stringify(frame));
  return { hub, transport, metrics, session: s, send };
}

Deno.test("Session answers hello with the protocol version and ping with pong, echoing ids", () => {
  const { transport, send, session: s } = session();
  assertEquals(s.live, false);
  send({ action: "ping", id: "p" });
  send({ action: "hello", id: 1 });
  send({ action: "pong" });
  assertEquals(transport.take(), [
    { action: "pong", id: "p" },
    { action: "ok", id: 1, version: PROTOCOL_VERSION },
  ]);
  assertEquals(s.live, true);
});

Deno.test("Session puts and listens on the hub: header first, then ok, then later puts", async () => {
  const { hub, transport, send } = session();
  send({ action: "header", stream: "job", message: { state: "running" }, id: 1 });
  send({ action: "put", stream: "job", message: 1, id: 2 });
  const epoch = (await hub.stat("job"))?.epoch;
  assertEquals(transport.take(), [
    { action: "ok", id: 1, stream: "job" },
    { action: "ok", id: 2, stream: "job", seq: 1, epoch },
  ]);
  send({ action: "listen", stream: "job", id: 3 });
  send({ action: "put", stream: "job", message: 2 });
  const frames = transport.take();
  assertEquals(frames.map((f) => [f.action, f.id, f.header, f.message, f.seq]), [
    ["put", undefined, true, { state: "running" }, 1],
    ["ok", 3, undefined, undefined, 1],
    ["put", undefined, undefined, 2, 2],
  ]);
  send({ action: "hangup", stream: "job", id: 4 });
  send({ action: "put", stream: "job", message: 3 });
  assertEquals(transport.take(), [{ action: "ok", id: 4, stream: "job" }]);
});

Deno.test("Session answers a bad request with its error code and keeps serving", async (t) => {
  const cases: [string, string][] = [
    ["{nope", "invalid_json"],
    ["[1]", "invalid_frame"],
    ['{"action":"put","stream":"a","message":1,"id":{}}', "invalid_frame"],
    ['{"action":"fly"}', "unknown_action"],
    ['{"action":7}', "unknown_action"],
    ['{"action":"put","message":1}', "invalid_stream"],
    ['{"action":"put","stream":""}', "invalid_stream"],
    ['{"action":"put","stream":"a"}', "missing_message"],
    ['{"action":"listen","stream":"a","since":{"epoch":"e","seq":-1}}', "invalid_since"],
  ];
  const { transport, send, metrics } = session();
  send({ action: "ping" }); // a live peer (a client of the original protocol may omit a message)
  transport.take();
  for (const [line, code] of cases) {
    await t.step(line, () => {
      send(line);
      const [frame, ...rest] = transport.take();
      assertEquals([frame?.action, frame?.code, rest.length], ["error", code, 0]);
    });
  }
  send({ action: "put", stream: "a", message: 1, id: 9 });
  assertEquals(transport.take()[0]?.seq, 1);
  assertEquals(metrics.framesIn, cases.length + 2);
  assertEquals(metrics.errors, {
    // Every code has a series from the start, at 0.
    ...Object.fromEntries(ERROR_CODES.map((c) => [c, 0])),
    invalid_json: 1,
    invalid_frame: 2,
    unknown_action: 2,
    invalid_stream: 2,
    missing_message: 1,
    invalid_since: 1,
  });
});

Deno.test('Session gives a peer that never said hello or ping "stream": null in unprompted frames', () => {
  const legacy = session();
  legacy.send("{nope");
  legacy.session.close();
  assertEquals(legacy.transport.take().map((f) => [f.action, "stream" in f, f.stream]), [
    ["error", true, null],
    ["close", true, null],
  ]);
  assertEquals(legacy.transport.closed, true);
  const live = session();
  live.send({ action: "ping" });
  live.send("{nope");
  live.session.close();
  assertEquals(live.transport.take().map((f) => [f.action, "stream" in f]), [
    ["pong", false],
    ["error", false],
    ["close", false],
  ]);
  assertEquals(unprompted({ action: "ping" }, false), { action: "ping", stream: null });
  assertEquals(unprompted({ action: "ping" }, true), { action: "ping" });
});

Deno.test("Session with tokens: unauthorized before hello, then the token's rights", () => {
  const auth = new Auth([{ name: "ci", secret: "s", publish: ["jobs.*"], subscribe: [] }]);
  const { transport, send, session: s } = session({ auth });
  send({ action: "put", stream: "jobs.1", message: 1, id: 1 });
  send({ action: "hello", token: "wrong", id: 2 });
  assertEquals(transport.take().map((f) => [f.id, f.code]), [[1, "unauthorized"], [
    2,
    "unauthorized",
  ]]);
  assertEquals(s.authorized, false);
  send({ action: "hello", token: "s", id: 3 });
  send({ action: "put", stream: "jobs.1", message: 1, id: 4 });
  send({ action: "put", stream: "other", message: 1, id: 5 });
  send({ action: "listen", stream: "jobs.1", id: 6 });
  assertEquals(transport.take().map((f) => [f.id, f.action, f.code, f.message]), [
    [3, "ok", undefined, undefined],
    [4, "ok", undefined, undefined],
    [5, "error", "forbidden", 'Cannot publish to stream "other": not permitted'],
    [6, "error", "forbidden", 'Cannot listen to stream "jobs.1": not permitted'],
  ]);
  assertEquals(s.authorized, true);
});

Deno.test("Session close() and drop() stop listening; close sends close, then nothing more", () => {
  const { hub, transport, send, session: s } = session();
  send({ action: "listen", stream: "a" });
  send({ action: "listen", stream: "b" });
  assertEquals(hub.stats().listeners, 2);
  send({ action: "close", id: 1 });
  assertEquals(transport.take().map((f) => [f.action, f.id]), [["ok", 1], ["close", undefined]]);
  assertEquals([hub.stats().listeners, s.closed, transport.closed], [0, true, true]);
  send({ action: "put", stream: "a", message: 1, id: 2 });
  assertEquals(transport.take(), [], "a closed session answers nothing");
  const other = session({ hub });
  other.send({ action: "listen", stream: "a" });
  other.session.drop();
  assertEquals([hub.stats().listeners, other.transport.closed], [0, false]);
});
