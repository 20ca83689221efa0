/**
 * Issue 12: restarts are unambiguous. A position from before a restart without `--data` gets
 * `reset` `state_lost`; a stream deleted and created anew gets `epoch_changed`.
 *
 * @module
 */

import { assertEquals } from "@std/assert";
import { MessageStream, type StreamEvent } from "../mod.ts";
import { connectRaw } from "./_raw_client.ts";
import { ServerProcess } from "./_server.ts";
import { deadline } from "./_wait.ts";

Deno.test("a restart without --data: a resuming client gets reset state_lost", async () => {
  await using server = await ServerProcess.start();
  let at: { epoch: string; seq: number };
  {
    await using raw = await connectRaw(server.port);
    await raw.send({ action: "put", stream: "job", message: 1, id: 1 });
    const ok = await deadline(raw.next(), "put ok");
    at = { epoch: ok.epoch as string, seq: ok.seq as number };
  }
  await server.kill();
  await server.start(server.port);
  await using raw = await connectRaw(server.port);
  await raw.send({ action: "listen", stream: "job", since: at, id: 2 });
  const reset = await deadline(raw.next(), "reset");
  assertEquals([reset.action, reset.message], ["reset", { reason: "state_lost" }]);
  assertEquals((await deadline(raw.next(), "ok")).action, "ok");
});

Deno.test("a stream deleted and created anew in the same process: reset epoch_changed", async () => {
  const hub = new MessageStream();
  const at = await hub.put("job", 1);
  await hub.delete("job");
  await hub.put("job", 2);
  const seen: StreamEvent[] = [];
  await hub.listen("job", { put: (ev) => seen.push(ev) }, { since: at });
  assertEquals(seen.map((e) => [e.kind, e.message]), [["reset", { reason: "epoch_changed" }]]);
  await hub.close();
});
