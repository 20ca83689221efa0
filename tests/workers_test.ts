/**
 * `--workers N` (workers.ts, partition.ts): N worker threads on one port, the streams
 * partitioned between them. Through real sockets, with connections spread by the kernel over
 * both workers: the hub's guarantees hold when puts race joins, across the forwarding hop.
 */

import { assert, assertEquals, assertNotEquals } from "@std/assert";
import { connectRaw, type Frame, type RawClient } from "./_raw_client.ts";
import { ServerProcess } from "./_server.ts";
import { deadline, poll } from "./_wait.ts";
import { ownerOf } from "../partition.ts";
import { MessageStream } from "../mod.ts";
import { PartitionEngine } from "../partition.ts";
import { Inbox } from "../inbox.ts";

const WORKERS = ["--workers", "2", "--log-level", "info"];
const ROOT = new URL("..", import.meta.url).pathname;
const UNSTABLE = { denoArgs: ["--unstable-net", `--allow-read=${ROOT}`] };

/** Names of streams, half owned by each of two workers. */
function streamsOfBothOwners(perOwner: number): string[] {
  const names: string[] = [];
  const count = [0, 0];
  for (let i = 0; names.length < 2 * perOwner; i++) {
    const name = `job.${i}`;
    const owner = ownerOf(name, 2);
    if ((count[owner] as number) < perOwner) {
      count[owner] = (count[owner] as number) + 1;
      names.push(name);
    }
  }
  return names;
}

/** The frames of one stream a client read, from its lines. */
function framesOf(client: RawClient, stream: string): Frame[] {
  return client.lines.map((l) => JSON.parse(l) as Frame).filter((f) => f.stream === stream);
}

/** The stream's position as a client read it: its last put's seq, or its join's (-1: none). */
function lastSeq(client: RawClient, stream: string): number {
  let last = -1;
  for (const f of framesOf(client, stream)) {
    if (f.action === "put" || f.action === "ok") last = Math.max(last, f.seq as number);
  }
  return last;
}

Deno.test("--workers 2: listeners joining while puts race get the header, then every later put in order, once", async () => {
  await using server = await ServerProcess.start(WORKERS, UNSTABLE);
  const streams = streamsOfBothOwners(2);
  const publishers = await Promise.all([0, 1, 2, 3].map(() => connectRaw(server.port)));
  const listeners = await Promise.all([0, 1, 2, 3, 4, 5, 6, 7].map(() => connectRaw(server.port)));
  try {
    const admin = publishers[0] as RawClient;
    for (const [i, s] of streams.entries()) {
      await admin.send({ action: "header", stream: s, message: `H-${s}`, id: i });
    }
    await poll(
      () => admin.lines.filter((l) => l.includes('"ok"')).length === streams.length,
      "the headers' oks",
    );
    const PER = 400; // puts per publisher per stream
    const CHUNK = 20;
    const joined: Promise<void>[] = [];
    const writes = publishers.map(async (p, pi) => {
      for (let from = 0; from < PER; from += CHUNK) {
        let text = "";
        for (let i = from; i < from + CHUNK; i++) {
          for (const s of streams) {
            text += JSON.stringify({ action: "put", stream: s, message: { p: pi, i } }) + "\n";
          }
        }
        await p.write(text);
        // Listener k joins every stream once publisher 0 has sent 2k chunks: mid-stream.
        if (pi === 0 && from % (2 * CHUNK) === 0) {
          const k = from / CHUNK / 2;
          const l = listeners[k];
          if (l) {
            joined.push((async () => {
              for (const s of streams) await l.send({ action: "listen", stream: s, id: `j-${s}` });
            })());
          }
        }
        await new Promise((r) => setTimeout(r, 0)); // let other publishers and joins interleave
      }
    });
    await Promise.all(writes);
    await Promise.all(joined);
    const total = publishers.length * PER;
    await poll(
      () => listeners.every((l) => streams.every((s) => lastSeq(l, s) === total)),
      () =>
        `every listener to reach seq ${total}: ${
          listeners.map((l) => streams.map((s) => lastSeq(l, s)).join("/")).join(" ")
        }`,
    );
    for (const [li, l] of listeners.entries()) {
      for (const s of streams) {
        const frames = framesOf(l, s);
        const what = `listener ${li}, stream ${s}`;
        assertEquals(frames[0]?.action, "put", `${what}: the join frame first`);
        assertEquals(frames[0]?.header, true, `${what}: the join frame is the header`);
        assertEquals(frames[0]?.message, `H-${s}`, `${what}: the header's message`);
        assertEquals(frames[1]?.action, "ok", `${what}: the ok after the header`);
        const at = frames[1]?.seq as number;
        assertEquals(frames[0]?.seq, at, `${what}: the header at the join position`);
        const puts = frames.slice(2);
        assertEquals(puts.length, total - at, `${what}: every put after the join, once`);
        const next = [0, 0, 0, 0];
        for (const [k, f] of puts.entries()) {
          assertEquals(f.action, "put", what);
          assertEquals(f.seq, at + k + 1, `${what}: no gap, no duplicate, in order`);
          assertEquals(f.epoch, frames[0]?.epoch, what);
          const m = f.message as { p: number; i: number };
          // Each publisher's puts in its order (the first one seen may be any of its puts).
          if (next[m.p] !== 0) assertEquals(m.i, next[m.p], `${what}: publisher ${m.p}'s order`);
          next[m.p] = m.i + 1;
        }
      }
    }
    // Resume by position: exactly the puts after it, then the ok at the stream's position.
    const resumer = await connectRaw(server.port);
    try {
      const epoch = framesOf(listeners[0] as RawClient, streams[0] as string)[0]?.epoch;
      for (const s of streams) {
        const e = framesOf(listeners[0] as RawClient, s)[0]?.epoch;
        await resumer.send({
          action: "listen",
          stream: s,
          since: { epoch: e, seq: total - 300 },
          id: s,
        });
      }
      await poll(
        () => streams.every((s) => framesOf(resumer, s).some((f) => f.action === "ok")),
        "the resumed listens' oks",
      );
      for (const s of streams) {
        const frames = framesOf(resumer, s);
        assertEquals(frames.length, 300 + 1, `${s}: the last 300 puts, then ok`);
        frames.slice(0, -1).forEach((f, k) =>
          assertEquals(f.seq, total - 299 + k, `${s}: resumed`)
        );
        assertEquals(frames.at(-1), {
          action: "ok",
          id: s,
          stream: s,
          seq: total,
          epoch: frames[0]?.epoch,
        });
      }
      assertNotEquals(epoch, undefined);
    } finally {
      resumer.close();
    }
  } finally {
    for (const c of [...publishers, ...listeners]) c.close();
  }
  await server.stop();
  // Both workers served, and messages crossed between them (puts forwarded, events sent back).
  const stops = server.log.filter((l) => l.includes("worker stopped"));
  assertEquals(stops.length, 2, server.log.join("\n"));
  const forwarded = stops.map((l) => Number(l.match(/forwarded=(\d+)/)?.[1]));
  assert(forwarded.every((n) => n > 0), `both workers forwarded: ${stops.join(" | ")}`);
});

Deno.test("PartitionEngine: a join on the worker that does not own the stream gets the header first, then later puts", async () => {
  const { port1, port2 } = new MessageChannel();
  const a = new MessageStream({
    engine: new PartitionEngine({ index: 0, peers: [undefined, port1] }),
  });
  const b = new MessageStream({
    engine: new PartitionEngine({ index: 1, peers: [port2, undefined] }),
  });
  try {
    const stream = streamsOfBothOwners(1)[1] as string; // owned by worker 1
    await b.header(stream, "H");
    await b.put(stream, 1);
    const inbox = new Inbox();
    const at = await a.listen(stream, inbox);
    assertEquals(at.seq, 1);
    await b.put(stream, 2);
    await a.put(stream, 3);
    const reader = inbox.getReader();
    const got = [];
    for (let i = 0; i < 3; i++) {
      const e = (await deadline(reader.read(), `event ${i + 1} of 3`)).value;
      got.push([e?.kind, e?.message, e?.seq]);
    }
    assertEquals(got, [["header", "H", 1], ["put", 2, 2], ["put", 3, 3]]);
    reader.releaseLock();
    await a.delete(stream);
    assertEquals(await b.stat(stream), undefined);
  } finally {
    await a.close();
    await b.close();
  }
});

Deno.test("--workers 2: a pattern listen follows streams of both owners, existing and created later", async () => {
  await using server = await ServerProcess.start(WORKERS, UNSTABLE);
  const clients = await Promise.all([0, 1, 2, 3, 4, 5].map(() => connectRaw(server.port)));
  try {
    const [publisher, ...listeners] = clients as [RawClient, ...RawClient[]];
    const names = streamsOfBothOwners(4);
    const before = names.slice(0, 4);
    const later = names.slice(4);
    for (const s of before) await publisher.send({ action: "put", stream: s, message: 1, id: s });
    await poll(() => publisher.lines.length === before.length, "the first puts' oks");
    for (const l of listeners) await l.send({ action: "listen", pattern: "job.*", id: "p" });
    await poll(
      () => listeners.every((l) => l.lines.some((x) => x.includes('"id":"p"'))),
      "the pattern listens' oks",
    );
    for (const s of names) await publisher.send({ action: "put", stream: s, message: 2 });
    await poll(
      () =>
        listeners.every((l) => names.every((s) => lastSeq(l, s) === (later.includes(s) ? 1 : 2))),
      () =>
        `every put: ${listeners.map((l) => names.map((s) => lastSeq(l, s)).join("/")).join(" ")}`,
    );
    for (const [li, l] of listeners.entries()) {
      for (const s of before) {
        const frames = framesOf(l, s).map((f) => [f.action, f.header ?? false, f.message, f.seq]);
        assertEquals(
          frames,
          [["put", true, null, 1], ["put", false, 2, 2]],
          `listener ${li}, ${s}`,
        );
      }
      for (const s of later) {
        const frames = framesOf(l, s).map((f) => [f.action, f.header ?? false, f.message, f.seq]);
        assertEquals(
          frames,
          [["put", true, null, 0], ["put", false, 2, 1]],
          `listener ${li}, ${s}`,
        );
      }
    }
  } finally {
    for (const c of clients) c.close();
  }
});

Deno.test("--workers 2: a put past the owner's --max-streams gets limit_exceeded, and costs no other client anything", async () => {
  await using server = await ServerProcess.start([...WORKERS, "--max-streams", "2"], UNSTABLE);
  const clients = await Promise.all([0, 1, 2, 3].map(() => connectRaw(server.port)));
  try {
    // Three streams owned by worker 0: the third is one too many for it, from any connection.
    const names = streamsOfBothOwners(3).filter((s) => ownerOf(s, 2) === 0);
    for (const [i, c] of clients.entries()) {
      await c.send({ action: "put", stream: names[0] as string, message: i, id: `a${i}` });
    }
    for (const [i, c] of clients.entries()) {
      await poll(() => c.lines.some((l) => l.includes(`"id":"a${i}"`)), `client ${i}'s first put`);
    }
    await (clients[0] as RawClient).send({
      action: "put",
      stream: names[1] as string,
      message: 0,
      id: "b",
    });
    await poll(
      () => (clients[0] as RawClient).lines.some((l) => l.includes('"id":"b"')),
      "the second stream",
    );
    for (const [i, c] of clients.entries()) {
      await c.send({ action: "put", stream: names[2] as string, message: i, id: `c${i}` });
    }
    for (const [i, c] of clients.entries()) {
      await poll(() => c.lines.some((l) => l.includes(`"id":"c${i}"`)), `client ${i}'s answer`);
      const answer = c.lines.map((l) => JSON.parse(l) as Frame).find((f) => f.id === `c${i}`);
      assertEquals(answer?.action, "error", `client ${i}: ${JSON.stringify(answer)}`);
      assertEquals(answer?.code, "limit_exceeded", `client ${i}`);
      assertEquals(answer?.limit, "max_streams", `client ${i}`);
      // The connection still works: its stream still takes puts.
      await c.send({ action: "put", stream: names[0] as string, message: "again", id: `d${i}` });
      await poll(() => c.lines.some((l) => l.includes(`"id":"d${i}"`)), `client ${i}'s next put`);
    }
    const seqs = clients.map((c, i) =>
      c.lines.map((l) => JSON.parse(l) as Frame).find((f) => f.id === `d${i}`)?.seq as number
    ).sort((a, b) => a - b);
    assertEquals(seqs, [5, 6, 7, 8], "the first stream's puts after the refusals");
  } finally {
    for (const c of clients) c.close();
  }
});

Deno.test("--workers 2 with --data is refused with a message that says why", async () => {
  const out = await new Deno.Command(Deno.execPath(), {
    args: [
      "run",
      "-A",
      "--unstable-net",
      `${ROOT}server.ts`,
      "--port",
      "0",
      "--workers",
      "2",
      "--data",
      "x.db",
    ],
    stdout: "piped",
    stderr: "piped",
  }).output();
  const err = new TextDecoder().decode(out.stderr);
  assertEquals(out.code, 2, err);
  assert(err.includes('Cannot serve with 2 workers and "data"'), err);
});

/** Two partition hubs over one channel, with the given bounds. */
function pair(bounds: Partial<ConstructorParameters<typeof PartitionEngine>[0]> = {}) {
  const { port1, port2 } = new MessageChannel();
  const a = new MessageStream({
    engine: new PartitionEngine({ ...bounds, index: 0, peers: [undefined, port1] }),
  });
  const b = new MessageStream({
    engine: new PartitionEngine({ ...bounds, index: 1, peers: [port2, undefined] }),
  });
  return {
    a,
    b,
    async [Symbol.asyncDispose]() {
      await a.close();
      await b.close();
    },
  };
}

/** What a resume from `since` gets first, on the hub given, as [kind, message, seq]. */
async function resumeFrom(
  hub: MessageStream,
  stream: string,
  since: { epoch: string; seq: number },
  count: number,
): Promise<unknown[][]> {
  const inbox = new Inbox();
  await hub.listen(stream, inbox, { since });
  const reader = inbox.getReader();
  const got: unknown[][] = [];
  for (let i = 0; i < count; i++) {
    const e = (await deadline(reader.read(), `event ${i + 1} of ${count} on ${stream}`)).value;
    got.push([
      e?.kind,
      e?.kind === "reset" ? (e.message as { reason: string }).reason : e?.message,
      e?.seq,
    ]);
  }
  reader.releaseLock();
  await hub.hangup(stream, inbox);
  return got;
}

Deno.test("PartitionEngine: a resume on another worker replays the owner's history, or resets past its bound", async () => {
  await using hubs = pair({ historyMessages: 3 });
  const stream = streamsOfBothOwners(1)[1] as string; // owned by worker 1
  let epoch = "";
  for (let i = 1; i <= 5; i++) epoch = (await hubs.b.put(stream, i)).epoch;
  await hubs.b.header(stream, "H");
  // History keeps 3 events: puts 4 and 5 and the header change after 5.
  assertEquals(await resumeFrom(hubs.a, stream, { epoch, seq: 3 }, 3), [
    ["put", 4, 4],
    ["put", 5, 5],
    ["header", "H", 5],
  ]);
  assertEquals(await resumeFrom(hubs.a, stream, { epoch, seq: 2 }, 2), [
    ["reset", "history_trimmed", 5],
    ["header", "H", 5],
  ]);
  assertEquals(await resumeFrom(hubs.a, stream, { epoch: "other", seq: 5 }, 1), [
    ["reset", "epoch_changed", 5],
  ]);
  assertEquals(await resumeFrom(hubs.a, stream, { epoch, seq: 9 }, 1), [
    ["reset", "ahead_of_stream", 5],
  ]);
});

Deno.test("PartitionEngine: --max-history-bytes bounds the history of every stream a worker owns, in turn", async () => {
  // Each event costs its text's length plus 16: "1" is 17 bytes; the bound holds 3 of them.
  await using hubs = pair({ maxHistoryBytes: 3 * 17 });
  const [s1, s2] = streamsOfBothOwners(2).filter((s) => ownerOf(s, 2) === 0);
  const e1 = (await hubs.a.put(s1 as string, 1)).epoch;
  await hubs.a.put(s1 as string, 1);
  const e2 = (await hubs.a.put(s2 as string, 1)).epoch;
  // The fourth event goes past the bound: the first stream to hold history gives up its oldest.
  await hubs.a.put(s2 as string, 1);
  assertEquals(await resumeFrom(hubs.b, s1 as string, { epoch: e1, seq: 0 }, 1), [
    ["reset", "history_trimmed", 2],
  ]);
  assertEquals(await resumeFrom(hubs.b, s1 as string, { epoch: e1, seq: 1 }, 1), [["put", 1, 2]]);
  assertEquals(await resumeFrom(hubs.b, s2 as string, { epoch: e2, seq: 0 }, 2), [
    ["put", 1, 1],
    ["put", 1, 2],
  ]);
  // A fifth: now the second stream's turn (the first went to the back after giving one up).
  await hubs.a.put(s1 as string, 1);
  assertEquals(await resumeFrom(hubs.b, s2 as string, { epoch: e2, seq: 0 }, 1), [
    ["reset", "history_trimmed", 2],
  ]);
  assertEquals(await resumeFrom(hubs.b, s1 as string, { epoch: e1, seq: 1 }, 2), [
    ["put", 1, 2],
    ["put", 1, 3],
  ]);
});

Deno.test("PartitionEngine: an event a worker cannot decode becomes a reset for its listeners, never a gap", async () => {
  const codec = {
    encode: (v: unknown) => JSON.stringify(v),
    decode: (t: string) => {
      if (t === '"poison"') throw new SyntaxError("Cannot decode the poison");
      return JSON.parse(t);
    },
  };
  const { port1, port2 } = new MessageChannel();
  const a = new MessageStream({
    codec,
    engine: new PartitionEngine({ index: 0, peers: [undefined, port1] }),
  });
  const b = new MessageStream({
    codec,
    engine: new PartitionEngine({ index: 1, peers: [port2, undefined] }),
  });
  try {
    const stream = streamsOfBothOwners(1)[1] as string; // owned by worker 1, listened on 0
    const inbox = new Inbox();
    await a.listen(stream, inbox);
    await b.put(stream, 1);
    await b.put(stream, "poison"); // nothing after it: the listener must hear at once
    const reader = inbox.getReader();
    const next = async (i: number) => {
      const e = (await deadline(reader.read(), `event ${i}`)).value;
      return [
        e?.kind,
        e?.kind === "reset" ? (e.message as { reason: string }).reason : e?.message,
        e?.seq,
      ];
    };
    assertEquals(await next(1), ["put", 1, 1]);
    assertEquals(await next(2), ["reset", "state_lost", 2]);
    await b.put(stream, 3);
    assertEquals(await next(3), ["put", 3, 3]);
    reader.releaseLock();
  } finally {
    await a.close();
    await b.close();
  }
});
