/**
 * Pattern listens under attack: each pattern counts against `--max-listens` and the memory
 * budget, hostile patterns (`*aaaa…ab`) cost a new stream little, and many pattern listeners
 * on `*` do not make each new stream cost the square of their number.
 */
import { assertEquals } from "@std/assert";
import { type Listener, MessageStream, type StreamEvent } from "../mod.ts";
import { PATTERN_COST } from "../budget.ts";
import { serve } from "../server.ts";
import { connectRaw, type Frame } from "./_raw_client.ts";
import { engineOptions } from "./_server.ts";
import { deadline } from "./_wait.ts";

function brief(f: Frame): string {
  if (f.action === "ok") return `ok ${f.pattern ?? f.stream}`;
  if (f.action === "error") return `error ${f.code} ${f.limit}`;
  return `${f.action} ${f.stream}`;
}

Deno.test("TCP: a pattern listen counts against --max-listens; hanging it up frees the slot", async () => {
  await using server = serve({ port: 0, maxListens: 3, ...engineOptions() });
  await using c = await connectRaw(server.addr.port);
  for (let i = 0; i < 3; i++) {
    await c.send({ action: "listen", pattern: `p${i}.*`, id: i });
    assertEquals(brief(await c.until((f) => f.id === i).then((fs) => fs.at(-1)!)), `ok p${i}.*`);
  }
  await c.send({ action: "listen", pattern: "p3.*", id: 3 });
  assertEquals(brief(await c.next()), "error limit_exceeded max_listens");
  await c.send({ action: "listen", stream: "s", id: 4 });
  assertEquals(brief(await c.next()), "error limit_exceeded max_listens");
  // The same pattern again is no new listen.
  await c.send({ action: "listen", pattern: "p0.*", id: 5 });
  assertEquals(brief(await c.next()), "ok p0.*");
  await c.send({ action: "hangup", pattern: "p1.*", id: 6 });
  assertEquals(brief(await c.next()), "ok p1.*");
  await c.send({ action: "listen", stream: "s", id: 7 });
  assertEquals(brief(await c.until((f) => f.id === 7).then((fs) => fs.at(-1)!)), "ok s");
  await c.send({ action: "listen", pattern: "p3.*", id: 8 });
  assertEquals(brief(await c.next()), "error limit_exceeded max_listens");
});

Deno.test("hub: pattern listens are charged to the memory budget and refused past it", async () => {
  // 8 KiB, an eighth kept for history: 7 KiB for the rest, so seven patterns of 1 KiB.
  const hub = new MessageStream({ maxMemory: 8192 });
  const queue: Listener = { put() {} };
  for (let i = 0; i < 7; i++) await hub.listen({ pattern: `p${i}.*` }, queue);
  assertEquals(hub.memory.parts().listens, 7 * PATTERN_COST);
  let refused = "";
  await hub.listen({ pattern: "p7.*" }, queue).catch((e) => refused = `${e.name} ${e.limit}`);
  assertEquals(refused, "LimitExceededError max_memory");
  hub.hangup({ pattern: "p0.*" }, queue);
  assertEquals(hub.memory.parts().listens, 6 * PATTERN_COST);
  hub.endqueue(queue);
  assertEquals(hub.memory.parts().listens, 0);
  await hub.close();
});

Deno.test("TCP: 10,000 hostile patterns on one connection: new streams are still created at once", async () => {
  await using server = serve({ port: 0, ...engineOptions() });
  await using attacker = await connectRaw(server.addr.port);
  const n = 10_000;
  // Each is `*` then 200 `a`s, then `b` and a number: the old backtracking matcher spent
  // about 200 µs on each against a name of 250 `a`s (2 s per new stream).
  for (let i = 0; i < n; i += 1000) {
    let lines = "";
    for (let j = i; j < i + 1000; j++) {
      lines += JSON.stringify({ action: "listen", pattern: `*${"a".repeat(200)}b${j}`, id: j }) +
        "\n";
    }
    await attacker.write(lines);
    const got = await attacker.until((f) => f.id === i + 999);
    assertEquals(got.filter((f) => f.action === "ok").length, 1000);
  }
  await using bystander = await connectRaw(server.addr.port);
  const puts = 20;
  await deadline(
    (async () => {
      for (let k = 0; k < puts; k++) {
        await bystander.send({
          action: "put",
          stream: `${"a".repeat(250)}${k}`,
          message: k,
          id: k,
        });
        assertEquals(brief(await bystander.next()), `ok ${"a".repeat(250)}${k}`);
      }
    })(),
    `${puts} puts to new streams beside ${n} hostile patterns`,
    10_000,
  );
});

Deno.test("hub: 2,000 pattern listeners on * and 50 new streams: each listener gets every header, and it is quick", async () => {
  const hub = new MessageStream();
  const k = 2000;
  const got: number[] = new Array(k).fill(0);
  const queues: Listener[] = [];
  for (let i = 0; i < k; i++) {
    const q: Listener = { put: (ev: StreamEvent) => void (ev.kind === "header" && got[i]!++) };
    queues.push(q);
    await hub.listen({ pattern: "*" }, q);
  }
  const streams = 50;
  // Each new stream used to intern one set per listener added (2,000 sets of up to 2,000
  // members): about 0.5 s per new stream, and memory that stayed.
  await deadline(
    (async () => {
      for (let s = 0; s < streams; s++) {
        await hub.put(`new${s}`, s);
        // Puts on the memory hub settle in microtasks: let the deadline's timer run between.
        await new Promise((resolve) => setTimeout(resolve, 0));
      }
    })(),
    `${streams} new streams beside ${k} pattern listeners`,
    10_000,
  );
  assertEquals(got.every((n) => n === streams), true);
  await deadline(
    (async () => {
      for (const [i, q] of queues.entries()) {
        hub.endqueue(q);
        if (i % 100 === 0) await new Promise((resolve) => setTimeout(resolve, 0));
      }
    })(),
    `${k} pattern listeners hanging up`,
    10_000,
  );
  await hub.put("new0", "after");
  assertEquals(got.every((n) => n === streams), true);
  assertEquals(hub.memory.parts().listens, 0);
  await hub.close();
});

Deno.test("hub: a pattern listener that drops another from inside the new stream's header: the other gets nothing more", async () => {
  const hub = new MessageStream();
  const got: string[] = [];
  const b: Listener = { put: (ev: StreamEvent) => void got.push(`b ${ev.stream} ${ev.kind}`) };
  const a: Listener = {
    put: (ev: StreamEvent) => {
      got.push(`a ${ev.stream} ${ev.kind}`);
      if (ev.stream === "new") hub.endqueue(b);
    },
  };
  // b first: it is handed the new stream's header before a drops it.
  await hub.listen({ pattern: "*" }, b);
  await hub.listen({ pattern: "*" }, a);
  await hub.put("new", 1);
  await hub.put("new", 2);
  // After a dropped it, nothing more reaches b.
  assertEquals(got.filter((l) => l.startsWith("b")), ["b new header"]);
  assertEquals(got.filter((l) => l.startsWith("a")), ["a new header", "a new put", "a new put"]);
  await hub.close();
});

Deno.test("hub: a pattern listener that deletes the new stream from inside its header: the ones that had it get end", async () => {
  const hub = new MessageStream();
  const got: string[] = [];
  const b: Listener = { put: (ev: StreamEvent) => void got.push(`b ${ev.stream} ${ev.kind}`) };
  const a: Listener = {
    put: (ev: StreamEvent) => {
      got.push(`a ${ev.stream} ${ev.kind}`);
      if (ev.stream === "new" && ev.kind === "header") void hub.delete("new");
    },
  };
  const c: Listener = { put: (ev: StreamEvent) => void got.push(`c ${ev.stream} ${ev.kind}`) };
  await hub.listen({ pattern: "*" }, b);
  await hub.listen({ pattern: "*" }, a);
  await hub.listen({ pattern: "*" }, c);
  await hub.put("new", 1);
  // b had the header when a deleted the stream: it gets end. a, inside its own delivery, and c,
  // after the delete, follow nothing: the put (to the stream deleted during its creation) reaches
  // nobody.
  assertEquals(got, ["b new header", "a new header", "b new end"]);
  assertEquals(hub.info("new"), undefined);
  await hub.close();
});
