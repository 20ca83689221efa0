#!/usr/bin/env -S deno run -N
// deno-lint-ignore-file no-console -- the command line's output is its interface
/**
 * The `msgstream` command line: `serve` runs the server (the same options as `server.ts`), and
 * `listen`, `put`, `header`, `delete` and `stats` talk to a running server through
 * {@linkcode RemoteStream}. `listen` prints one JSON object per event per line, so it pipes
 * into `jq`.
 *
 * ```sh
 * deno run -N jsr:@x/msgstream/cli serve                # terminal 1
 * deno run -N jsr:@x/msgstream/cli listen job42          # terminal 2
 * deno run -N jsr:@x/msgstream/cli put job42 '{"done":1}' # terminal 3
 * ```
 *
 * Exit codes: 0 done, 1 usage error, 2 connection or authorization failure (errors go to
 * stderr, one line each).
 *
 * @example Run the command line in-process
 * ```ts
 * import { main } from "@x/msgstream/cli";
 * import { assertEquals } from "@std/assert";
 *
 * // Prints "msgstream 0.1.0" and returns the exit code.
 * assertEquals(await main(["--version"]), 0);
 * ```
 *
 * @module
 */

/// <reference types="./std_types.d.ts" />
import { parseArgs } from "@std/cli/parse-args";
import { parseTokenSpec } from "./auth.ts";
import { LineError, readLines } from "./framer.ts";
import { ProtocolError, RemoteStream, type RemoteStreamOptions } from "./client.ts";
import { Inbox, MessageTooLargeError, type Position, type StreamEvent } from "./mod.ts";
import { DEFAULT_PORT, env, intFlag, parseHostPort, parsePosition, UsageError } from "./options.ts";
import { main as serve } from "./server.ts";
import denoJson from "./deno.json" with { type: "json" };

const DEFAULT_SERVER = `127.0.0.1:${DEFAULT_PORT}`;
/** Puts sent but not yet confirmed when streaming stdin; bounds memory, keeps the pipe full. */
const MAX_IN_FLIGHT = 1000;

const COMMON = `Connection options:
  --server HOST:PORT   the server (default $MSGSTREAM_SERVER, else ${DEFAULT_SERVER})
  --token TOKEN        the token's secret; NAME:SECRET as given to "serve --token" works too
                       (default $MSGSTREAM_TOKEN)
  --tls                connect with TLS
  --ca FILE            trust this PEM CA certificate (implies --tls; needs --allow-read)
  -h, --help           show this help

Options go anywhere: before the command, between its arguments, after them. "--" makes the
words after it arguments (even "-5") until the command has all it takes.
Environment variables are read only when permitted (--allow-env; the binary has it).
Exit codes: 0 done, 1 usage error, 2 connection or authorization failure.`;

const USAGE = `Usage: msgstream COMMAND [options]

Commands:
  serve                     run a server (msgstream serve --help)
  listen STREAM...          print each event as one JSON line (--pattern 'jobs.*' for many)
  ls [PATTERN]              list streams: name, seq, listeners, whether a header is set
  put STREAM [MESSAGE]      put a message, or one per line of stdin
  header STREAM [MESSAGE]   set (or --clear, or print) a stream's header
  delete STREAM             delete a stream; its listeners get an "end" event
  stats [STREAM...]         what the client can learn about the server and streams

Options:
  -h, --help                show this help (COMMAND --help for a command's)
  -V, --version             show the version

Run "msgstream COMMAND --help" for a command's options.`;

const HELP: Record<string, string> = {
  listen: `Usage: msgstream listen [options] STREAM...
       msgstream listen [options] --pattern PATTERN [STREAM...]

Prints every event of the streams as one JSON object per line:
  {"stream":"job42","kind":"put","seq":3,"epoch":"a1b2c3d4e50","message":{"done":3}}
kind is "header" (first, when the stream has one; again when it changes; message null when
cleared), "put", "end" (the stream was deleted) or "reset" (the resume position given with
--since is no longer in the server's history; the header follows). Reconnects by itself and
resumes without gaps or duplicates. Exits 0 when --count puts arrived, when --timeout passed,
or when every stream ended.

With --pattern, follows every stream whose name matches PATTERN (* matches any run of
characters: 'jobs.*' matches jobs.1 and jobs.eu.7), those that exist and those created later:
each stream's header comes first (message null when none is set), a stream that goes gives
"end", and the command goes on until --count or --timeout.

Options:
  --pattern PATTERN    follow every stream PATTERN matches (as well as any STREAM given)
  --since EPOCH:SEQ    resume after this position (one STREAM only): the puts after it, then
                       live ones; take it from the last line printed ("epoch":"seq")
  --count N            exit after N put events (over all streams)
  --timeout MS         exit after MS milliseconds
  --reconnect-attempts N
                       reconnect attempts after the connection drops before giving up
                       (exit 2); --reconnect-attempts=-1 never gives up (default 10, as
                       the library)
  --reconnect-wait MS  milliseconds between reconnect attempts (default 2000, as the library)

${COMMON}`,
  ls: `Usage: msgstream ls [options] [PATTERN]

Lists the server's streams that PATTERN matches (every stream without one; * matches any run
of characters), ordered by name, one JSON object per line:
  {"stream":"jobs.1","seq":3,"listeners":1,"header":true}
listeners counts the server's listeners by name (with Redis: that node's); header says whether
a header is set. Pages through the server's list, --limit streams per request.

Options:
  --limit N            streams per request, 1 to 1000 (default 1000)

${COMMON}`,
  put: `Usage: msgstream put [options] STREAM [MESSAGE]

Puts MESSAGE on STREAM. MESSAGE is parsed as JSON; text that is not JSON is sent as a JSON
string (so put job42 hello sends "hello", put job42 42 sends the number 42 and
put job42 '"42"' the string "42"). Without MESSAGE, puts one message per line of stdin,
in order, as lines arrive (tail -f log | msgstream put job42). Use -- before a MESSAGE that
starts with "-".

Options:
  --raw                send MESSAGE, or each line, as a string without parsing it as JSON
  --max-line-bytes N   longest stdin line, in bytes; a longer one stops the command with exit
                       code 1 after the lines before it are sent (default 1048576, the
                       server's default limit)

${COMMON}`,
  header: `Usage: msgstream header [options] STREAM [MESSAGE]

Sets STREAM's header (the status snapshot each listener gets first) to MESSAGE, parsed as JSON
like put's (text that is not JSON is sent as a string). With --clear, clears it. With neither,
prints the current header as one JSON line ("message" is null when none is set, "epoch" null
when there is no such stream; asking never creates it).

Options:
  --clear              clear the header
  --raw                send MESSAGE as a string without parsing it as JSON

${COMMON}`,
  delete: `Usage: msgstream delete [options] STREAM

Deletes STREAM: its header and history go, and each listener gets an "end" event.

${COMMON}`,
  stats: `Usage: msgstream stats [options] [STREAM...]

The wire protocol carries no server-wide counters (the server's HTTP door has them, at
GET /metrics), so this prints what a client can learn:
one JSON line about the connection ({"server","tls","token","version","connectMs"}), then one per
STREAM with its position and header ({"stream","epoch","seq","header"}), read without listening
and without creating the stream ("epoch" is null when there is no such stream).

${COMMON}`,
};

/** A failure to reach or be accepted by the server: exit code 2. */
class ConnectionError extends Error {}

function print(line: string): void {
  console.log(line);
}

function printError(message: string): void {
  console.error(`msgstream: ${message.replace(/\s*\n\s*/g, " ")}`);
}

/** Parses a message given on the command line or stdin: JSON, else the text as a string. */
function parseMessage(text: string, raw: boolean): unknown {
  if (raw) return text;
  try {
    return JSON.parse(text);
  } catch {
    return text;
  }
}

function parseSince(value: string): Position {
  const since = parsePosition(value);
  if (!since) {
    throw new UsageError(`--since must be EPOCH:SEQ (e.g. "a1b2c3d4e50:17"), got "${value}"`);
  }
  return since;
}

/** The token's secret: `NAME:SECRET` (the server's `--token` form) sends SECRET. */
function secretOf(token: string): string {
  try {
    return parseTokenSpec(token).secret;
  } catch {
    return token;
  }
}

type Args = ReturnType<typeof parseArgs>;

/** What each command takes: options with a value, flags, and how many arguments at most. */
const SYNTAX: Record<string, { strings: string[]; booleans: string[]; max: number }> = {
  listen: {
    strings: ["since", "count", "timeout", "reconnect-attempts", "reconnect-wait", "pattern"],
    booleans: [],
    max: Infinity,
  },
  put: { strings: ["max-line-bytes"], booleans: ["raw"], max: 2 },
  header: { strings: [], booleans: ["clear", "raw"], max: 2 },
  delete: { strings: [], booleans: [], max: 1 },
  ls: { strings: ["limit"], booleans: [], max: 1 },
  stats: { strings: [], booleans: [], max: Infinity },
};

/** Options every command takes. */
const CONNECTION = { strings: ["server", "token", "ca"], booleans: ["help", "tls"] };

/**
 * Puts options anywhere, as the Python example does: before the command, between its
 * arguments, after them. `--` makes the following words arguments (even `-5`) until the
 * command has all it takes; then options are read again (`put job42 -- -5 --raw`). An option
 * that takes a value takes the next word whatever it is (`--reconnect-attempts -1`).
 *
 * @returns The command and its arguments, options first, then `--` and the arguments.
 */
function normalize(argv: string[]): { command: string | undefined; rest: string[] } {
  const valued = new Set([
    ...CONNECTION.strings,
    ...Object.values(SYNTAX).flatMap((s) => s.strings),
  ]);
  const words: string[] = [];
  const options: string[] = [];
  const room = () => {
    if (words.length === 0) return true;
    const syntax = SYNTAX[words[0] as string];
    return syntax !== undefined && words.length - 1 < syntax.max;
  };
  let literal = false;
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i] as string;
    if (literal) {
      if (room()) {
        words.push(arg);
        continue;
      }
      literal = false;
    }
    if (arg === "--") literal = true;
    else if (!arg.startsWith("-") || arg === "-") words.push(arg);
    else if (arg.startsWith("--") && !arg.includes("=") && valued.has(arg.slice(2))) {
      if (i + 1 >= argv.length) throw new UsageError(`${arg} needs a value`);
      options.push(`${arg}=${argv[++i]}`);
    } else options.push(arg);
  }
  return { command: words[0], rest: [...options, "--", ...words.slice(1)] };
}

function parse(command: string, argv: string[]): Args {
  const syntax = SYNTAX[command] ?? { strings: [], booleans: [] };
  return parseArgs(argv, {
    string: ["_", ...CONNECTION.strings, ...syntax.strings],
    boolean: [...CONNECTION.booleans, ...syntax.booleans],
    alias: { h: "help" },
    unknown: (arg: string) => {
      if (!arg.startsWith("-")) return true;
      throw new UsageError(`Unknown option "${arg}" for ${command}`);
    },
  });
}

function positional(args: Args): string[] {
  return args._.map(String);
}

/** How a command reconnects: attempts (-1: forever) and the wait between them. */
interface ReconnectBudget {
  attempts: number;
  wait: number;
}

/**
 * A one-shot command fails fast: a lost connection is retried a few times (a server restart)
 * before giving up.
 */
const ONE_SHOT: ReconnectBudget = { attempts: 5, wait: 500 };

async function connect(
  args: Args,
  budget: ReconnectBudget = ONE_SHOT,
): Promise<{ remote: RemoteStream; address: string }> {
  const address: string = args.server ?? env("MSGSTREAM_SERVER") ?? DEFAULT_SERVER;
  const at = parseHostPort(address);
  if (!at) throw new UsageError(`--server must be HOST:PORT, got "${address}"`);
  const options: RemoteStreamOptions = {
    ...at,
    // A refused first connection exits at once; a lost one is retried within the budget.
    maxReconnectAttempts: budget.attempts,
    reconnectTimeWait: budget.wait,
    reconnectJitter: 100,
  };
  const token: string | undefined = args.token ?? env("MSGSTREAM_TOKEN");
  if (token !== undefined) options.token = secretOf(token);
  if (args.tls || args.ca !== undefined) options.tls = true;
  if (args.ca !== undefined) {
    try {
      options.caCerts = [await Deno.readTextFile(args.ca)];
    } catch (e) {
      const why = e instanceof Deno.errors.NotCapable || e instanceof Deno.errors.PermissionDenied
        ? `run with --allow-read (or --allow-read=${args.ca}) for --ca`
        : e instanceof Deno.errors.NotFound
        ? "no such file"
        : (e as Error).message;
      throw new UsageError(`Cannot read --ca "${args.ca}": ${why}`);
    }
  }
  try {
    return { remote: await RemoteStream.connect(options), address };
  } catch (e) {
    // The library's message already names the address.
    let why = ((e as Error).message || (e as Error).name).replace(/^Cannot connect to \S+: /, "");
    if (e instanceof ProtocolError) {
      why = e.code === "unauthorized" && options.token === undefined
        ? `${e.code}: the server requires a token: give --token (or MSGSTREAM_TOKEN)`
        : `${e.code}: ${why}`;
    }
    throw new ConnectionError(`Cannot connect to ${address}: ${why}`, { cause: e });
  }
}

/** Writes text to stdout; false when stdout is gone (e.g. `| head -1` exited). */
async function write(bytes: Uint8Array): Promise<boolean> {
  try {
    let off = 0;
    while (off < bytes.byteLength) off += await Deno.stdout.write(bytes.subarray(off));
    return true;
  } catch (e) {
    if (e instanceof Deno.errors.BrokenPipe) return false;
    throw e;
  }
}

function eventLine(ev: StreamEvent): string {
  return JSON.stringify({
    stream: ev.stream,
    kind: ev.kind,
    seq: ev.seq,
    epoch: ev.epoch,
    message: ev.message,
  }) + "\n";
}

/** Reports reconnects on stderr while a long-running command runs. */
function watchStatus(remote: RemoteStream): void {
  (async () => {
    for await (const s of remote.status()) {
      if (s.type === "disconnected") {
        printError(`connection lost (${s.error?.message ?? "closed"}): reconnecting`);
      } else if (s.type === "reconnecting") {
        printError(`reconnect attempt ${s.attempt}`);
      } else if (s.type === "connected") {
        printError("reconnected");
      }
    }
  })();
}

async function listen(argv: string[]): Promise<number> {
  const args = parse("listen", argv);
  if (args.help) return help("listen");
  const streams = positional(args);
  const pattern = args.pattern as string | undefined;
  if (pattern === "") throw new UsageError("--pattern needs a PATTERN");
  if (streams.length === 0 && pattern === undefined) {
    throw new UsageError("listen needs at least one STREAM or --pattern");
  }
  const count = intFlag(args.count, "count", 1);
  const timeout = intFlag(args.timeout, "timeout", 0);
  let since: Position | undefined;
  if (args.since !== undefined) {
    if (streams.length !== 1) throw new UsageError("--since takes exactly one STREAM");
    since = parseSince(args.since);
  }
  // A listener is long-lived: the library's budget (about 20 s of reconnecting) by default.
  const budget: ReconnectBudget = {
    attempts: intFlag(args["reconnect-attempts"], "reconnect-attempts", -1) ?? 10,
    wait: intFlag(args["reconnect-wait"], "reconnect-wait", 0) ?? 2000,
  };
  const { remote, address } = await connect(args, budget);
  const inbox = new Inbox({ maxEvents: 100_000, maxBytes: 64 << 20 });
  let timer: ReturnType<typeof setTimeout> | undefined;
  let done = false;
  try {
    watchStatus(remote);
    const open = new Set(streams);
    for (const stream of streams) {
      await remote.listen(stream, inbox, since ? { since } : {});
    }
    if (pattern !== undefined) await remote.listen({ pattern }, inbox);
    if (Deno.stderr.isTerminal()) {
      const what = pattern === undefined ? streams : [...streams, `pattern ${pattern}`];
      printError(`listening to ${what.join(", ")} on ${address}`);
    }
    if (timeout !== undefined) {
      timer = setTimeout(() => {
        done = true;
        inbox.close();
      }, timeout);
    }
    const encoder = new TextEncoder();
    let puts = 0;
    for await (const ev of untilEnd(inbox)) {
      if (!await write(encoder.encode(eventLine(ev)))) {
        done = true;
        break;
      }
      if (ev.kind === "put" && count !== undefined && ++puts >= count) {
        done = true;
        break;
      }
      if (ev.kind === "end" && pattern === undefined) {
        open.delete(ev.stream);
        if (open.size === 0) {
          done = true;
          break;
        }
      }
    }
    if (!done) {
      // The inbox ended without us: the client gave up reconnecting.
      const why = await remote.closed();
      throw new ConnectionError(`Connection lost: ${why?.message ?? "closed"}`);
    }
    return 0;
  } finally {
    clearTimeout(timer);
    await remote.close();
  }
}

/**
 * An inbox's events. The inbox ends with an error when the client gives up reconnecting: that
 * ends the loop here, and the caller reports why from `remote.closed()`.
 */
async function* untilEnd(inbox: Inbox): AsyncGenerator<StreamEvent> {
  try {
    for await (const ev of inbox) yield ev;
  } catch {
    // The client gave up: see remote.closed().
  }
}

async function put(argv: string[]): Promise<number> {
  const args = parse("put", argv);
  if (args.help) return help("put");
  const [stream, message, ...extra] = positional(args);
  if (stream === undefined) throw new UsageError("put needs a STREAM");
  if (extra.length > 0) {
    throw new UsageError(`put takes one MESSAGE (quote it), got ${extra.length + 1}`);
  }
  const raw = args.raw === true;
  const maxLineBytes = intFlag(args["max-line-bytes"], "max-line-bytes", 1) ?? 1 << 20;
  const { remote } = await connect(args);
  try {
    if (message !== undefined) {
      await remote.put(stream, parseMessage(message, raw));
      return 0;
    }
    watchStatus(remote);
    // One put per line, sent as lines arrive; at most MAX_IN_FLIGHT wait for their answer.
    // RemoteStream sends in call order, so they land in order.
    const inFlight: Promise<unknown>[] = [];
    let failure: Error | undefined;
    let n = 0;
    try {
      for await (const line of readLines(Deno.stdin.readable, { maxLineBytes, fatal: false })) {
        n++;
        const p = remote.put(stream, parseMessage(line, raw)).catch((e: Error) => {
          failure ??= e;
        });
        inFlight.push(p);
        if (inFlight.length >= MAX_IN_FLIGHT) await inFlight.shift();
        if (failure) break;
      }
    } catch (e) {
      if (!(e instanceof LineError)) throw e;
      // The lines before it are sent; this one and the rest are not.
      failure ??= new UsageError(
        `Line ${n + 1} of stdin not sent: ${e.message} (see --max-line-bytes)`,
      );
    }
    await Promise.all(inFlight);
    if (failure) throw failure;
    return 0;
  } finally {
    await remote.close();
  }
}

async function header(argv: string[]): Promise<number> {
  const args = parse("header", argv);
  if (args.help) return help("header");
  const [stream, message, ...extra] = positional(args);
  if (stream === undefined) throw new UsageError("header needs a STREAM");
  if (extra.length > 0) {
    throw new UsageError(`header takes one MESSAGE (quote it), got ${extra.length + 1}`);
  }
  if (args.clear && message !== undefined) {
    throw new UsageError("header takes a MESSAGE or --clear, not both");
  }
  const { remote } = await connect(args);
  try {
    if (args.clear) await remote.header(stream, null);
    else if (message !== undefined) await remote.header(stream, parseMessage(message, args.raw));
    else {
      const { position, header } = await peek(remote, stream);
      print(JSON.stringify({
        stream,
        kind: "header",
        seq: position.seq,
        epoch: position.epoch,
        message: header ?? null,
      }));
    }
    return 0;
  } finally {
    await remote.close();
  }
}

/**
 * Reads a stream's position and header with `stat`: nothing is joined or created. A stream that
 * does not exist reads as seq 0, epoch `null`, no header.
 */
async function peek(
  remote: RemoteStream,
  stream: string,
): Promise<{ position: { epoch: string | null; seq: number }; header: unknown }> {
  const stat = await remote.stat(stream);
  return { position: { epoch: stat?.epoch ?? null, seq: stat?.seq ?? 0 }, header: stat?.header };
}

async function del(argv: string[]): Promise<number> {
  const args = parse("delete", argv);
  if (args.help) return help("delete");
  const [stream, ...extra] = positional(args);
  if (stream === undefined) throw new UsageError("delete needs a STREAM");
  if (extra.length > 0) throw new UsageError("delete takes one STREAM");
  const { remote } = await connect(args);
  try {
    await remote.delete(stream);
    return 0;
  } finally {
    await remote.close();
  }
}

async function ls(argv: string[]): Promise<number> {
  const args = parse("ls", argv);
  if (args.help) return help("ls");
  const [pattern, ...extra] = positional(args);
  if (extra.length > 0) throw new UsageError("ls takes at most one PATTERN");
  if (pattern === "") throw new UsageError("ls: PATTERN must not be empty");
  const limit = intFlag(args.limit, "limit", 1) ?? 1000;
  if (limit > 1000) throw new UsageError("--limit must be at most 1000");
  const { remote } = await connect(args);
  try {
    let after: string | undefined;
    do {
      const page = await remote.list({
        limit,
        ...(pattern !== undefined ? { pattern } : {}),
        ...(after !== undefined ? { after } : {}),
      });
      for (const s of page.streams) {
        const line = { stream: s.stream, seq: s.seq, listeners: s.listeners, header: s.header };
        if (!await write(new TextEncoder().encode(JSON.stringify(line) + "\n"))) return 0;
      }
      after = page.next ?? undefined;
    } while (after !== undefined);
    return 0;
  } finally {
    await remote.close();
  }
}

async function stats(argv: string[]): Promise<number> {
  const args = parse("stats", argv);
  if (args.help) return help("stats");
  const streams = positional(args);
  const start = performance.now();
  const { remote, address } = await connect(args);
  const connectMs = Math.round((performance.now() - start) * 10) / 10;
  try {
    print(JSON.stringify({
      server: address,
      tls: args.tls === true || args.ca !== undefined,
      token: args.token !== undefined || env("MSGSTREAM_TOKEN") !== undefined,
      version: denoJson.version,
      connectMs,
    }));
    for (const stream of streams) {
      const { position, header } = await peek(remote, stream);
      print(JSON.stringify({
        stream,
        epoch: position.epoch,
        seq: position.seq,
        header: header ?? null,
      }));
    }
    return 0;
  } finally {
    await remote.close();
  }
}

function help(command: string): number {
  print(HELP[command] ?? USAGE);
  return 0;
}

const COMMANDS: Record<string, (argv: string[]) => Promise<number>> = {
  listen,
  put,
  header,
  delete: del,
  stats,
  ls,
};

/** Maps a server's refusal to an exit code: bad requests are usage errors, the rest failures. */
function codeOf(e: ProtocolError): number {
  return e.code === "invalid_stream" || e.code === "invalid_since" || e.code === "invalid_pattern"
    ? 1
    : 2;
}

/**
 * Runs the `msgstream` command line: `serve` hands its arguments to the server's `main()`;
 * `listen`, `put`, `header`, `delete` and `stats` run against a server. Prints to stdout and
 * stderr; never throws for a usage, connection or server error.
 *
 * @param argv The arguments, the command first (e.g. `["put", "job42", "{\"done\":1}"]`).
 * @returns The exit code: 0 done, 1 usage error, 2 connection or authorization failure.
 *
 * @example Print the version
 * ```ts
 * import { main } from "@x/msgstream/cli";
 * import { assertEquals } from "@std/assert";
 *
 * assertEquals(await main(["--version"]), 0);
 * ```
 */
export async function main(argv?: string[]): Promise<number> {
  const given = argv ?? Deno.args;
  if (given[0] === "serve") return await serve(given.slice(1));
  let command = given[0];
  let rest = given.slice(1);
  if (!["-V", "--version", "-h", "--help", "help"].includes(command as string)) {
    try {
      ({ command, rest } = normalize(given));
    } catch (e) {
      if (!(e instanceof UsageError)) throw e;
      printError(e.message);
      return 1;
    }
  }
  if (command === "-V" || command === "--version") {
    print(`msgstream ${denoJson.version}`);
    return 0;
  }
  if (command === "-h" || command === "--help" || command === "help") {
    if (rest[0] === "serve") return await serve(["--help"]);
    print(rest[0] && HELP[rest[0]] ? HELP[rest[0]] as string : USAGE);
    return 0;
  }
  const run = command === undefined ? undefined : COMMANDS[command];
  if (!run) {
    printError(
      command === undefined ? "no command given" : `unknown command "${command}"`,
    );
    console.error(`\n${USAGE}`);
    return 1;
  }
  try {
    return await run(rest);
  } catch (e) {
    if (e instanceof UsageError) {
      printError(e.message);
      console.error(`Run "msgstream ${command} --help" for usage.`);
      return 1;
    }
    if (e instanceof ConnectionError) {
      printError(e.message);
      return 2;
    }
    if (e instanceof ProtocolError) {
      const where = e.stream === undefined ? "" : ` (stream "${e.stream}")`;
      printError(`Server refused${where}: ${e.code}: ${e.message}`);
      return codeOf(e);
    }
    if (e instanceof Deno.errors.NotCapable || e instanceof Deno.errors.PermissionDenied) {
      printError(`${(e as Error).message}`);
      return 2;
    }
    if (
      e instanceof MessageTooLargeError ||
      (e instanceof TypeError && e.message.startsWith("Cannot encode request: "))
    ) {
      // A message the client refuses before sending (too large, nested too deep): bad input.
      printError(e.message);
      return 1;
    }
    throw e;
  }
}

if (import.meta.main) Deno.exit(await main());
