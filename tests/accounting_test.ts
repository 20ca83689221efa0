/**
 * End-to-end accounting: 3 publishers put 20,000 numbered messages each on 50 streams of a
 * server running as its own process, while listeners (`RemoteStream` + `Inbox`) join, hang up,
 * have their connections cut, and the server process is killed and restarted on the same port.
 * Every listener's sequence of every stream is then checked: no duplicate, no reordering, and
 * every gap announced by a `reset`.
 *
 * @module
 */

import { assert, assertEquals } from "@std/assert";
import { Inbox, type Position, type StreamEvent } from "../mod.ts";
import { RemoteStream } from "../client.ts";
import { ProtocolError } from "../protocol.ts";
import { TcpProxy } from "./_proxy.ts";
import { ServerProcess } from "./_server.ts";
import { deadline, TIMEOUT } from "./_wait.ts";

const PUBLISHERS = 3;
const PER_PUBLISHER = 20_000;
const STREAMS = 50;
const TOTAL = PUBLISHERS * PER_PUBLISHER;
const WINDOW = 100; // puts in flight per publisher
const FAST = { reconnectTimeWait: 50, reconnectJitter: 20, maxReconnectAttempts: -1 } as const;
/** One local queue's view of one stream, from its listen to its hangup (or the end). */
interface Segment {
  name: string;
  stream: string;
  /** The position `listen()` returned. */
  start: Position | undefined;
  events: StreamEvent[];
  /** Whether the segment was open while the server restarted. */
  spansRestart: boolean;
  /** Whether the last put arrived. */
  done: boolean;
  /** Whether the queue hung up. */
  closed: boolean;
  /** Resets received. */
  resets: number;
}

/** A listening client: one RemoteStream and its inboxes, each inbox read in the background. */
class ListenerClient {
  readonly name: string;
  readonly remote: RemoteStream;
  readonly segments: Segment[] = [];
  readonly inboxes: Inbox[] = [];
  #routes = new Map<Inbox, Map<string, Segment>>();
  #readers: Promise<void>[] = [];
  #onEvent: () => void;

  /** Status changes, for diagnostics. */
  readonly statuses: string[] = [];
  #watching: Promise<void>;

  private constructor(name: string, remote: RemoteStream, onEvent: () => void) {
    this.name = name;
    this.remote = remote;
    this.#onEvent = onEvent;
    this.#watching = (async () => {
      for await (const s of remote.status()) {
        this.statuses.push(`${(performance.now() / 1000).toFixed(2)} ${s.type}${s.attempt ?? ""}`);
      }
    })();
  }

  static async connect(name: string, port: number, onEvent: () => void): Promise<ListenerClient> {
    return new ListenerClient(name, await RemoteStream.connect({ port, ...FAST }), onEvent);
  }

  /** A new inbox, read in the background. */
  inbox(): Inbox {
    const inbox = new Inbox();
    this.inboxes.push(inbox);
    const routes = new Map<string, Segment>();
    this.#routes.set(inbox, routes);
    this.#readers.push((async () => {
      for await (const ev of inbox) {
        const seg = routes.get(ev.stream);
        if (!seg) throw new Error(`${this.name}: event for unfollowed stream ${ev.stream}`);
        seg.events.push(ev);
        if (ev.kind === "reset") seg.resets++;
        if (ev.kind === "put" && (ev.message as { done?: boolean })?.done) seg.done = true;
        this.#onEvent();
      }
    })());
    return inbox;
  }

  async listen(inbox: Inbox, stream: string): Promise<Segment> {
    const seg: Segment = {
      name: `${this.name}/${this.segments.length}`,
      stream,
      start: undefined,
      events: [],
      spansRestart: false,
      done: false,
      closed: false,
      resets: 0,
    };
    this.segments.push(seg);
    this.#routes.get(inbox)?.set(stream, seg);
    seg.start = await this.remote.listen(stream, inbox);
    return seg;
  }

  /** Hangs up; the inbox gets nothing more of the stream (what it buffered is still read). */
  hangup(inbox: Inbox, stream: string): void {
    this.remote.hangup(stream, inbox);
    const seg = this.#routes.get(inbox)?.get(stream);
    if (seg) seg.closed = true;
  }

  /** Segments still following. */
  open(): Segment[] {
    return this.segments.filter((s) => !s.closed);
  }

  async close(): Promise<void> {
    await this.remote.close(); // ends every inbox
    await Promise.all(this.#readers);
    await this.#watching;
  }
}

interface Verdict {
  puts: number;
  resets: Map<string, number>;
}

/**
 * Checks one segment: puts follow each other seq by seq within an epoch; the only way to skip
 * ahead or change epoch is a `reset` (a header may follow it). Records seq → message for the
 * cross-check.
 */
function check(seg: Segment, seen: Map<string, string>, retried: Set<string>): Verdict {
  const resets = new Map<string, number>();
  let prev: Position | undefined;
  let puts = 0;
  const lastN = new Map<number, number>();
  for (const ev of seg.events) {
    const where = `${seg.name} ${seg.stream} at ${ev.epoch}/${ev.seq}`;
    if (ev.kind === "reset") {
      const reason = (ev.message as { reason: string }).reason;
      resets.set(reason, (resets.get(reason) ?? 0) + 1);
      prev = { epoch: ev.epoch, seq: ev.seq };
      continue;
    }
    if (ev.kind === "header") {
      if (prev && prev.epoch === ev.epoch) {
        assert(ev.seq === prev.seq, `${where}: header out of place after ${prev.seq}`);
      }
      // A header without a reset may only open the segment (the join).
      if (!prev) prev = { epoch: ev.epoch, seq: ev.seq };
      else assertEquals(ev.epoch, prev.epoch, `${where}: header of another epoch, no reset`);
      continue;
    }
    assertEquals(ev.kind, "put", `${where}: unexpected ${ev.kind}`);
    if (!prev) {
      assert(seg.start && seg.start.epoch !== "", `${where}: first put of an unknown join`);
      prev = seg.start;
    }
    assertEquals(ev.epoch, prev.epoch, `${where}: epoch changed without a reset`);
    assertEquals(
      ev.seq,
      prev.seq + 1,
      `${where}: after seq ${prev.seq} (gap, duplicate or reorder)`,
    );
    prev = { epoch: ev.epoch, seq: ev.seq };
    puts++;
    const text = JSON.stringify(ev.message);
    const key = `${ev.epoch}/${ev.stream}/${ev.seq}`;
    const other = seen.get(key);
    if (other === undefined) seen.set(key, text);
    else assertEquals(text, other, `${where}: listeners disagree on the message`);
    const m = ev.message as { p?: number; n?: number };
    if (typeof m.p === "number" && typeof m.n === "number" && !retried.has(`${m.p}/${m.n}`)) {
      const last = lastN.get(m.p) ?? -1;
      assert(m.n > last, `${where}: publisher ${m.p} message ${m.n} after ${last}`);
      lastN.set(m.p, m.n);
    }
  }
  return { puts, resets };
}

Deno.test({
  name:
    "Listeners see no duplicate, no reordering and only announced gaps through cuts, hangups and a server restart",
  sanitizeResources: true,
  sanitizeOps: true,
}, async () => {
  await using server = await ServerProcess.start(["--log-level", "warn"], { stderr: "inherit" });
  await using proxy = new TcpProxy(() => server.port);

  // Progress: how many puts are acknowledged; the scenario steps wait on it.
  let acked = 0;
  const progressWaiters: { at: number; resolve: () => void }[] = [];
  const reached = (at: number) =>
    new Promise<void>((resolve) => {
      if (acked >= at) resolve();
      else progressWaiters.push({ at, resolve });
    });
  const ack = () => {
    acked++;
    for (let i = progressWaiters.length - 1; i >= 0; i--) {
      const w = progressWaiters[i] as { at: number; resolve: () => void };
      if (acked >= w.at) {
        progressWaiters.splice(i, 1);
        w.resolve();
      }
    }
  };

  // Wakes whoever waits for a condition on what listeners received.
  let eventWaiters: { test: () => boolean; resolve: () => void }[] = [];
  const received = () => {
    eventWaiters = eventWaiters.filter((w) => !w.test() || (w.resolve(), false));
  };
  const progress = (test: () => boolean) =>
    new Promise<void>((resolve) => {
      if (test()) resolve();
      else eventWaiters.push({ test, resolve });
    });

  const streams = Array.from({ length: STREAMS }, (_, i) => `job${i}`);
  const publishers = await deadline(
    Promise.all(
      Array.from(
        { length: PUBLISHERS },
        () => RemoteStream.connect({ port: server.port, ...FAST }),
      ),
    ),
    "the publishers to connect",
  );
  await deadline(
    Promise.all(streams.map((s) => (publishers[0] as RemoteStream).header(s, { stream: s }))),
    "every stream's header to be set",
  );

  const listeners: ListenerClient[] = [];
  const follow = async (c: ListenerClient, inbox: Inbox, from: number, count: number) => {
    for (let i = 0; i < count; i++) await c.listen(inbox, streams[(from + i) % STREAMS] as string);
  };
  await deadline(
    (async () => {
      // Four clients from the start: two inboxes each, overlapping streams (one upstream listen
      // serves both local queues of a stream).
      for (let k = 0; k < 4; k++) {
        const c = await ListenerClient.connect(`early${k}`, proxy.port, received);
        listeners.push(c);
        await follow(c, c.inbox(), k * 12, 15);
        await follow(c, c.inbox(), k * 12 + 10, 10);
      }
      // One client straight to the server: it only sees the restart.
      const c = await ListenerClient.connect("direct", server.port, received);
      listeners.push(c);
      await follow(c, c.inbox(), 0, STREAMS);
    })(),
    () => `the first listeners to join (${listeners.length} connected)`,
  );

  let retries = 0;
  const retried = new Set<string>();
  const publish = async (p: number) => {
    const remote = publishers[p] as RemoteStream;
    const put = async (n: number): Promise<void> => {
      const stream = streams[(n * 7 + p) % STREAMS] as string;
      for (;;) {
        try {
          await remote.put(stream, { p, n });
          ack();
          return;
        } catch (e) {
          if (!(e instanceof ProtocolError) || e.code !== "not_connected") throw e;
          retries++; // ambiguous: it may have been applied; put it again
          retried.add(`${p}/${n}`);
        }
      }
    };
    let next = 0;
    await Promise.all(Array.from({ length: WINDOW }, async () => {
      while (next < PER_PUBLISHER) {
        while (issued >= gate) await new Promise<void>((r) => gateWaiters.push(r));
        issued++;
        await put(next++);
      }
    }));
  };
  // Publishing runs ahead of each scenario step by at most 10%: every step (and the restart)
  // happens while puts are in flight, however slow the listeners are.
  let issued = 0;
  let gate = 0;
  const gateWaiters: (() => void)[] = [];
  const openGate = (fraction: number) => {
    gate = Math.round(TOTAL * fraction);
    for (const w of gateWaiters.splice(0)) w();
  };

  const scenario = async () => {
    openGate(0.15);
    await reached(TOTAL * 0.1);
    proxy.cut(); // every proxied listener connection, mid-stream
    openGate(0.25);
    await reached(TOTAL * 0.2);
    // Two clients join late; one of them hangs up half its streams and listens again.
    for (let k = 0; k < 2; k++) {
      const c = await ListenerClient.connect(`late${k}`, proxy.port, received);
      listeners.push(c);
      await follow(c, c.inbox(), 25 * k, 20);
    }
    openGate(0.35);
    await reached(TOTAL * 0.3);
    const late = listeners.at(-1) as ListenerClient;
    const hungUp: string[] = [];
    const first = late.inboxes[0] as Inbox;
    for (const seg of late.open().slice(0, 10)) {
      late.hangup(first, seg.stream);
      hungUp.push(seg.stream);
    }
    openGate(0.45);
    await reached(TOTAL * 0.4);
    {
      // Listening again after a hangup is a new join: a fresh segment in a fresh inbox.
      const inbox = late.inbox();
      for (const s of hungUp) await late.listen(inbox, s);
    }
    openGate(0.6);
    await reached(TOTAL * 0.5);
    for (const c of listeners) for (const s of c.open()) s.spansRestart = true;
    await server.kill();
    await server.start(server.port);
    openGate(0.8);
    await reached(TOTAL * 0.7);
    proxy.cut();
    openGate(1);
  };

  const t0 = performance.now();
  await deadline(
    Promise.all([...publishers.map((_, p) => publish(p)), scenario()]),
    () => `${TOTAL} puts to be acknowledged through the scenario (${acked} so far, gate ${gate})`,
    6 * TIMEOUT,
  );
  const publishMs = performance.now() - t0;

  // A last put on every stream; every open segment must get it. History covers any cut now,
  // but not the restart: first let every segment that followed through it rejoin (its reset).
  const open = listeners.flatMap((c) => c.open());
  const report = (what: string) => {
    const missing = open.filter((s) => !s.done).map((s) => {
      const last = s.events.at(-1);
      return `${s.name}:${s.stream} (${s.events.length} events, ${s.resets} resets, last ` +
        `${last?.kind} ${last?.epoch}/${last?.seq})`;
    });
    const clients = listeners.map((c) => `${c.name}: ${c.statuses.slice(-6).join(", ")}`);
    return `${what}: ${missing.join(", ")}\n${clients.join("\n")}`;
  };
  await deadline(
    progress(() => open.every((s) => !s.spansRestart || s.resets > 0)),
    () => report("every segment to rejoin after the restart; these did not"),
    3 * TIMEOUT,
  );
  await deadline(
    Promise.all(streams.map((s) => (publishers[0] as RemoteStream).put(s, { done: true }))),
    "the last put on every stream to be answered",
  );
  await deadline(
    progress(() => open.every((s) => s.done)),
    () => report("every segment to get the last put; these did not"),
    3 * TIMEOUT,
  );

  await deadline(
    Promise.all([...listeners.map((c) => c.close()), ...publishers.map((p) => p.close())]),
    "every client to close",
  );

  // The checks.
  const seen = new Map<string, string>();
  let delivered = 0;
  let segments = 0;
  const reasons = new Map<string, number>();
  for (const c of listeners) {
    for (const seg of c.segments) {
      const v = check(seg, seen, retried);
      delivered += v.puts;
      segments++;
      for (const [r, n] of v.resets) reasons.set(r, (reasons.get(r) ?? 0) + n);
      // A restart without --data is announced as state_lost (issue 12); a stream forgotten
      // while nobody followed it comes back with a new epoch (epoch_changed).
      if (seg.spansRestart) {
        assert(
          (v.resets.get("state_lost") ?? 0) >= 1,
          `${seg.name} ${seg.stream} followed through the restart without a reset`,
        );
      }
      for (const r of v.resets.keys()) {
        assert(
          r === "state_lost" || r === "epoch_changed",
          `${seg.name} ${seg.stream}: reset ${r}`,
        );
      }
    }
  }
  assert(delivered > TOTAL, `listeners got ${delivered} puts`);
  // deno-lint-ignore no-console
  console.log(
    `accounting: ${TOTAL} puts in ${publishMs.toFixed(0)} ms, ${retries} retried after ` +
      `not_connected; ${segments} segments checked, ${delivered} puts delivered, resets ` +
      JSON.stringify(Object.fromEntries(reasons)),
  );
});
