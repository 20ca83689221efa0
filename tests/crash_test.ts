/**
 * Crash safety of `--data`: the server is SIGKILLed during a put flood and restarted, with only
 * `-N --allow-read=PATH --allow-write=PATH`. Three kills per policy here; the soak suite runs 20
 * (`CRASH_ROUNDS`).
 *
 * - `always`: every acknowledged put is there after the restart, in order, with its seq; the
 *   publisher resumes from its last acknowledged position without a reset.
 * - `batch`: a listener that saw more than survived is reset (`ahead_of_stream`) or continues;
 *   no seq ever comes back with another message.
 */
import { assert, assertEquals } from "@std/assert";
import { connectRaw, type Frame, type RawClient } from "./_raw_client.ts";
import { listeningPort } from "./_server.ts";
import { deadline } from "./_wait.ts";

const serverPath = new URL("../server.ts", import.meta.url).pathname;
const ROUNDS = Number(Deno.env.get("CRASH_ROUNDS") ?? 3);
const STREAM = "job";

async function startServer(path: string, fsync: string): Promise<{
  child: Deno.ChildProcess;
  port: number;
}> {
  const child = new Deno.Command(Deno.execPath(), {
    args: [
      "run",
      "-N",
      `--allow-read=${path}`,
      `--allow-write=${path}`,
      serverPath,
      "--port",
      "0",
      "--data",
      path,
      "--fsync",
      fsync,
      "--history-messages",
      "1000000",
      "--max-history-bytes",
      String(1 << 30),
      "--history-bytes",
      String(1 << 30),
    ],
    stdin: "null",
    stdout: "piped",
    stderr: "null",
  }).spawn();
  const port = await listeningPort(child.stdout);
  assert(port !== undefined, "the server did not start");
  return { child, port };
}

/** Listens from `since` and reads up to the ok: the catch-up frames and the join position. */
async function join(
  c: RawClient,
  since: { epoch: string; seq: number } | undefined,
): Promise<{ frames: Frame[]; epoch: string; seq: number }> {
  await c.send({ action: "listen", stream: STREAM, id: "join", ...(since ? { since } : {}) });
  const frames = await c.until((f) => f.action === "ok" && f.id === "join");
  const ok = frames.pop() as Frame;
  return { frames, epoch: ok.epoch as string, seq: ok.seq as number };
}

for (const fsync of ["always", "batch"]) {
  Deno.test(`--data --fsync ${fsync} survives ${ROUNDS} SIGKILLs during a put flood`, async () => {
    const dir = await Deno.makeTempDir({ prefix: "msgstream-crash-" });
    const path = `${dir}/msgstream.db`;
    /** Every seq ever seen, with its message: a seq must never come back with another one. */
    const seen = new Map<string, string>();
    const acked: [number, string][] = [];
    let epoch: string | undefined;
    let listenerAt: { epoch: string; seq: number } | undefined;
    let resets = 0;
    const note = (seq: number, message: string) => {
      const before = seen.get(`${epoch}:${seq}`);
      assert(
        before === undefined || before === message,
        `seq ${seq} reused: ${before} then ${message}`,
      );
      seen.set(`${epoch}:${seq}`, message);
    };
    try {
      for (let round = 0; round < ROUNDS; round++) {
        const { child, port } = await startServer(path, fsync);
        const listener = await connectRaw(port);
        const publisher = await connectRaw(port);
        try {
          // The listener resumes from where it was.
          const j = await join(listener, listenerAt);
          if (epoch === undefined) epoch = j.epoch;
          let reason = "ahead_of_stream";
          if (j.epoch !== epoch) {
            // Under batch a kill within the first interval can leave nothing of the stream:
            // it starts anew, with a new epoch.
            assertEquals(fsync, "batch", "the epoch survives the restart");
            epoch = j.epoch;
            reason = "epoch_changed";
          }
          for (const f of j.frames) {
            if (f.action === "reset") {
              resets++;
              assertEquals(f.message, { reason });
            } else if (f.action === "put" && !f.header) note(f.seq as number, f.message as string);
          }
          // Every acknowledged put is there, in order, with its seq.
          const check = await connectRaw(port);
          const all = await join(check, { epoch, seq: 0 });
          await check.close();
          const stored = new Map<number, string>();
          let last = 0;
          for (const f of all.frames) {
            assertEquals(f.action, "put", "a replay from the start needs no reset");
            assert((f.seq as number) > last, "seqs are in order");
            last = f.seq as number;
            stored.set(f.seq as number, f.message as string);
            note(f.seq as number, f.message as string);
          }
          for (const [seq, message] of acked) {
            if (fsync === "always") assertEquals(stored.get(seq), message, `acked put ${seq}`);
          }
          // The publisher resumes from its last acknowledged put without a reset.
          if (fsync === "always" && acked.length > 0) {
            const resume = await connectRaw(port);
            const r = await join(resume, { epoch, seq: acked.at(-1)![0] });
            await resume.close();
            assertEquals(r.frames.filter((f) => f.action === "reset"), []);
          }

          // The flood: puts pipelined, killed after some acks, while more are in flight.
          const killAfter = 50 + round * 7;
          let acks = 0;
          const sending = (async () => {
            for (let i = 0; i < 5000; i++) {
              await publisher.send({
                action: "put",
                stream: STREAM,
                id: i,
                message: `r${round}-${i}`,
              });
            }
          })().catch(() => {});
          while (acks < killAfter) {
            const f = await publisher.next();
            if (f.action !== "ok") continue;
            acks++;
            acked.push([f.seq as number, `r${round}-${f.id}`]);
            note(f.seq as number, `r${round}-${f.id}`);
          }
          child.kill("SIGKILL");
          await child.status;
          await sending;
          // What the listener saw live, up to the kill.
          for (const f of await listener.rest()) {
            if (f.action === "put" && !f.header) {
              note(f.seq as number, f.message as string);
              listenerAt = { epoch, seq: f.seq as number };
            }
          }
        } finally {
          await listener.close();
          await publisher.close();
          try {
            child.kill("SIGKILL");
          } catch { /* already gone */ }
          await child.status;
        }
      }
      assert(acked.length >= ROUNDS * 50, `only ${acked.length} acks`);
      // A listener may still be reset under always: it sees a put before its commit.
      assert(resets <= ROUNDS);
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  });
}

Deno.test("A second server on the same --data file exits with a clear error and leaves the first one working", async () => {
  const dir = await Deno.makeTempDir({ prefix: "msgstream-crash-" });
  const path = `${dir}/msgstream.db`;
  const { child, port } = await startServer(path, "always");
  let publisher: RawClient | undefined;
  try {
    const second = new Deno.Command(Deno.execPath(), {
      args: [
        "run",
        "-N",
        `--allow-read=${path}`,
        `--allow-write=${path}`,
        serverPath,
        "--port",
        "0",
        "--data",
        path,
        "--log-level",
        "error",
      ],
      stdin: "null",
      stdout: "piped",
      stderr: "piped",
    }).spawn();
    let out: Deno.CommandOutput;
    try {
      out = await deadline(second.output(), "the second server to exit");
    } catch (e) {
      second.kill("SIGKILL");
      await second.status;
      throw e;
    }
    assertEquals(out.code, 2);
    assertEquals(new TextDecoder().decode(out.stdout), "");
    assertEquals(
      new TextDecoder().decode(out.stderr),
      `msgstream: Cannot open "${path}": another process has it open (one server owns one file)\n`,
    );
    // The first server still writes its file.
    publisher = await connectRaw(port);
    await publisher.send({ action: "put", stream: STREAM, message: "m", id: 1 });
    const [ok] = await publisher.until((f) => f.id === 1);
    assertEquals([ok?.action, ok?.seq], ["ok", 1]);
  } finally {
    await publisher?.close();
    child.kill("SIGTERM");
    await child.status;
    await Deno.remove(dir, { recursive: true });
  }
});
