/**
 * The Redis engine's internals (not an entry point): the Lua scripts every write and join runs,
 * the keys and channels they use, and the parsing of what they return and publish. Used by
 * `redis.ts` only.
 *
 * @module
 */

import type { Redis } from "ioredis";
import type { Codec } from "./codec.ts";
import { type EngineEvent, type EngineSnapshot, EngineUnavailableError } from "./engine.ts";
import type { Position, ResetReason } from "./types.ts";

// Per stream: a hash {epoch, seq, hc (header changes since the last put), header} and a history
// (a Redis stream; entry ids are "<seq>-<hc>", so a position maps to an id). SYNC's KEYS: [1]
// the hash, [2] the history, [3] the epoch counter, [4] the dataset generation. Published on a
// stream's channel: a batch of its events (see BATCH) or "m<token>" (a snapshot marker).
//
// Generations: a Redis that restarts from an older snapshot, or a replica promoted while behind,
// holds the streams as they were some time ago: their seqs would be handed out again with other
// content. So every epoch is minted within a generation ("<gen>.<id>"), and the generation
// changes whenever a node finds that Redis is not the server instance that set it (VERIFY, run
// by every node after each connect, before any other script). A stream whose epoch belongs to an
// older generation gets a new epoch on its next use (its seq goes on): positions from before are
// answered with a reset (reason "state_lost"), never with reused seqs. A restart that lost
// nothing costs a false reset; a silent gap would cost more.
const EPOCH = `
local function gen_of_epoch(e)
  local i = string.find(e, '.', 1, true)
  if not i then return '' end
  return string.sub(e, 1, i - 1)
end
local function epoch_of(meta, counter)
  local g = redis.call('GET', KEYS[4]) or ''
  local e = redis.call('HGET', meta, 'epoch')
  if e and gen_of_epoch(e) == g then return e end
  local t = redis.call('TIME')
  local n = g .. '.' .. string.format('%x%05x%x', tonumber(t[1]), tonumber(t[2]),
    redis.call('INCR', counter))
  if e then
    redis.call('HSET', meta, 'epoch', n)
  else
    redis.call('HSET', meta, 'epoch', n, 'seq', 0, 'hc', 0)
    -- A new stream (ARGV[2] is its channel): pattern listeners on every node hear of it.
    redis.call('PUBLISH', string.sub(KEYS[4], 1, -4) .. 'created', n .. ' ' .. ARGV[2])
  end
  return n
end
`;

// KEYS[1] the run key (the Redis instance that set the generation), KEYS[2] the generation,
// KEYS[3] the epoch counter; ARGV[1] this Redis instance's run_id. Returns the generation.
const VERIFY = `
local g = redis.call('GET', KEYS[2])
if g and redis.call('GET', KEYS[1]) == ARGV[1] then return g end
local t = redis.call('TIME')
g = string.format('%x%05x%x', tonumber(t[1]), tonumber(t[2]), redis.call('INCR', KEYS[3]))
redis.call('SET', KEYS[1], ARGV[1])
redis.call('SET', KEYS[2], g)
return g
`;

// Every put, header change and delete of one tick, in one call. KEYS[1] the generation, KEYS[2]
// the epoch counter, then per stream (a group) its hash and its history. ARGV[1] the history
// bound, ARGV[2] the batch's tag, then per group: the channel, the number of its operations and
// per operation (op, text, length): op p (put), h (set the header), c (clear it), d (delete);
// length is the text's length as the node counts it (UTF-16 units). Each group's events go out
// as one message (two when a delete comes before other operations: the new stream gets its
// own message): "B<tag> <epoch>\n" then per event "<kind><seq> <length> <text>", kind p, h
// (empty text: cleared) or e (end); a message that is not its group's last carries the tag
// "_". The stream's hash is read once and written once per group, its history trimmed once. Returns, per operation, two
// values: put: seq and epoch; header and delete: 1 (applied) or 0 (a no-op) and ''.
const BATCH = `
local g = redis.call('GET', KEYS[1]) or ''
local function gen_of_epoch(e)
  local i = string.find(e, '.', 1, true)
  if not i then return '' end
  return string.sub(e, 1, i - 1)
end
local maxlen = tonumber(ARGV[1])
local tag = ARGV[2]
local out = {}
local a, k = 3, 3
while a <= #ARGV do
  local meta, hist = KEYS[k], KEYS[k + 1]
  local channel, n = ARGV[a], tonumber(ARGV[a + 1])
  k, a = k + 2, a + 2
  local st = redis.call('HMGET', meta, 'epoch', 'seq', 'hc')
  local e, seq, hc = st[1], tonumber(st[2]) or 0, tonumber(st[3]) or 0
  local dirty, has, parts, pe, added = false, nil, {}, nil, false
  local function ensure()
    if e and gen_of_epoch(e) == g then return end
    local t = redis.call('TIME')
    local n = g .. '.' .. string.format('%x%05x%x', tonumber(t[1]), tonumber(t[2]),
      redis.call('INCR', KEYS[2]))
    if not e then
      seq, hc = 0, 0
      -- A new stream: every node's pattern listeners hear of it (see #created).
      redis.call('PUBLISH', string.sub(KEYS[1], 1, -4) .. 'created', n .. ' ' .. channel)
    end
    e, dirty = n, true
  end
  local untagged = false
  local function publish(last)
    if #parts == 0 and not (last and untagged) then return end
    redis.call('PUBLISH', channel, 'B' .. (last and tag or '_') .. ' ' .. pe .. '\\n' ..
      table.concat(parts))
    parts, untagged = {}, not last
  end
  for i = 1, n do
    local op, text, len = ARGV[a], ARGV[a + 1], ARGV[a + 2]
    a = a + 3
    if op == 'p' then
      ensure()
      seq, hc, dirty, pe = seq + 1, 0, true, e
      if maxlen > 0 then
        redis.call('XADD', hist, seq .. '-0', 'k', 'p', 'm', text)
        added = true
      end
      parts[#parts + 1] = 'p' .. seq .. ' ' .. len .. ' ' .. text
      out[#out + 1] = seq
      out[#out + 1] = e
    elseif op == 'h' or op == 'c' then
      local apply = true
      if op == 'c' then
        if has == nil then has = redis.call('HEXISTS', meta, 'header') == 1 end
        apply = has
        if apply then redis.call('HDEL', meta, 'header') end
      end
      if apply then
        ensure()
        if op == 'h' then redis.call('HSET', meta, 'header', text) end
        has, hc, dirty, pe = op == 'h', hc + 1, true, e
        if maxlen > 0 then
          redis.call('XADD', hist, seq .. '-' .. hc, 'k', 'h', 'm', text)
          added = true
        end
        parts[#parts + 1] = 'h' .. seq .. ' ' .. len .. ' ' .. text
        out[#out + 1] = 1
      else
        out[#out + 1] = 0
      end
      out[#out + 1] = ''
    else
      if e then
        pe = e
        parts[#parts + 1] = 'e' .. seq .. ' 0 '
        redis.call('DEL', meta, hist)
        publish(i == n)
        e, seq, hc, has, dirty, added = nil, 0, 0, false, false, false
        out[#out + 1] = 1
      else
        out[#out + 1] = 0
      end
      out[#out + 1] = ''
    end
  end
  if dirty then redis.call('HSET', meta, 'epoch', e, 'seq', seq, 'hc', hc) end
  -- Trimmed once per group, exactly: no reader sees the history between XADD and XTRIM.
  if added then redis.call('XTRIM', hist, 'MAXLEN', maxlen) end
  publish(true)
end
return out
`;

// ARGV: [1] token, [2] channel, [3] since epoch ('' for none), [4] since seq, [5] and [6] unused
// (the cluster variant's), [7] '1': only an existing stream (else the reply is {''}, nothing made).
const SYNC = EPOCH + `
if ARGV[7] == '1' and redis.call('EXISTS', KEYS[1]) == 0 then
  -- Asked for an existing stream (a pattern join): none is made; the marker still orders it.
  redis.call('PUBLISH', ARGV[2], 'm' .. ARGV[1])
  return {''}
end
local e = epoch_of(KEYS[1], KEYS[3])
local state = redis.call('HMGET', KEYS[1], 'seq', 'hc', 'header')
local seq, hc = tonumber(state[1]), tonumber(state[2])
redis.call('PUBLISH', ARGV[2], 'm' .. ARGV[1])
if ARGV[3] == '' then return {e, seq, state[3]} end
local since = tonumber(ARGV[4])
if ARGV[3] ~= e then
  local g = gen_of_epoch(ARGV[3])
  if g ~= '' and g ~= gen_of_epoch(e) then return {e, seq, state[3], 'state_lost'} end
  return {e, seq, state[3], 'epoch_changed'}
end
if since > seq then return {e, seq, state[3], 'ahead_of_stream'} end
local first = redis.call('XRANGE', KEYS[2], '-', '+', 'COUNT', 1)[1]
if not first then
  if since == seq and hc == 0 then return {e, seq, state[3], '', {}} end
  return {e, seq, state[3], 'history_trimmed'}
end
local ms, sub = string.match(first[1], '^(%d+)-(%d+)$')
ms, sub = tonumber(ms), tonumber(sub)
if ms > since + 1 or (ms == since + 1 and sub > 0) then
  return {e, seq, state[3], 'history_trimmed'}
end
return {e, seq, state[3], '', redis.call('XRANGE', KEYS[2], since .. '-1', '+')}
`;

// Redis Cluster: a script may only touch keys of one slot, so there is no global key. Each
// stream's keys share its hash tag ({stream}); BATCH runs once per stream, SYNC as before. The
// generation is the run_id of the master that serves the stream (read by the script itself, so
// a failover or a restart shows as a new generation even when a node's view is stale); epochs
// are made unique by the caller's nonce (node id + counter) instead of a global counter; the
// creation notice's channel comes as an argument.
const RUN_GEN = "string.sub(string.match(redis.call('INFO', 'server'), 'run_id:(%x+)'), 1, 12)";

/** `script` with `from` replaced by `to`; throws when `from` is not in it (a script changed). */
function variant(script: string, edits: [string, string][]): string {
  for (const [from, to] of edits) {
    if (!script.includes(from)) throw new Error(`Cluster script variant: "${from}" not found`);
    script = script.replaceAll(from, to);
  }
  return script;
}

// KEYS: the stream's hash and history; ARGV: [1..4] as SYNC, [5] the creation channel, [6] a
// nonce, [7] as SYNC.
export const SYNC_CLUSTER = variant(SYNC, [
  ["redis.call('GET', KEYS[4]) or ''", RUN_GEN],
  ["redis.call('INCR', counter)", "ARGV[6]"],
  ["string.format('%x%05x%x',", "string.format('%x%05x%s',"],
  ["string.sub(KEYS[4], 1, -4) .. 'created'", "ARGV[5]"],
  ["epoch_of(KEYS[1], KEYS[3])", "epoch_of(KEYS[1])"],
]);

// KEYS: one stream's hash and history; ARGV: [1] history bound, [2] tag, [3] the creation
// channel, [4] a nonce, then the stream's group as in BATCH.
export const BATCH_CLUSTER = variant(BATCH, [
  ["redis.call('GET', KEYS[1]) or ''", RUN_GEN],
  ["local a, k = 3, 3", "local a, k, mints = 5, 1, 0"],
  [
    "redis.call('INCR', KEYS[2])",
    "(function() mints = mints + 1 return ARGV[4] .. 'x' .. mints end)()",
  ],
  ["string.format('%x%05x%x',", "string.format('%x%05x%s',"],
  ["string.sub(KEYS[1], 1, -4) .. 'created'", "ARGV[3]"],
]);

// Sharded pub/sub (Redis 7): the stream's events and markers go out with SPUBLISH on its channel,
// which shares the stream's hash tag, so they stay on the stream's master (the creation notice
// stays a classic PUBLISH: its channel is in another slot).
export const BATCH_SHARDED = variant(BATCH_CLUSTER, [
  ["redis.call('PUBLISH', channel,", "redis.call('SPUBLISH', channel,"],
]);
export const SYNC_SHARDED = variant(SYNC_CLUSTER, [
  ["redis.call('PUBLISH', ARGV[2],", "redis.call('SPUBLISH', ARGV[2],"],
]);

// Redis 7 in a cluster: one call per master per batch instead of one per stream. The script may
// touch keys of several slots served by the master it runs on (flag allow-cross-slot-keys; the
// declared keys are the first stream's, which route the call). ARGV: [1] history bound, [2] tag,
// [3] creation channel, [4] nonce, then per stream: its hash, its history, its channel, the number
// of its operations and the operations as in BATCH. Before writing anything it checks that every
// stream's keys are served here (a slot moved since the node grouped them): if one is not, it
// fails with MSGSTREAMSLOT and nothing was applied.
const BATCH_MULTI_BODY = variant(BATCH_CLUSTER, [
  ["local meta, hist = KEYS[k], KEYS[k + 1]", "local meta, hist = ARGV[a], ARGV[a + 1]"],
  [
    "local channel, n = ARGV[a], tonumber(ARGV[a + 1])",
    "local channel, n = ARGV[a + 2], tonumber(ARGV[a + 3])",
  ],
  ["k, a = k + 2, a + 2", "k, a = k + 2, a + 4"],
  [
    "local out = {}",
    `local out = {}
local pa = 5
while pa <= #ARGV do
  for j = 0, 1 do
    local r = redis.pcall('EXISTS', ARGV[pa + j])
    if type(r) == 'table' and r.err then
      return redis.error_reply('MSGSTREAMSLOT ' .. ARGV[pa + j] .. ' is not served here: ' .. r.err)
    end
  end
  pa = pa + 4 + 3 * tonumber(ARGV[pa + 3])
end`,
  ],
]);
const CROSS_SLOT = "#!lua flags=allow-cross-slot-keys\n";
export const BATCH_MULTI = CROSS_SLOT + BATCH_MULTI_BODY;
export const BATCH_MULTI_SHARDED = CROSS_SLOT + variant(BATCH_MULTI_BODY, [
  ["redis.call('PUBLISH', channel,", "redis.call('SPUBLISH', channel,"],
]);

/** The scripts as commands of the client (see {@linkcode defineScripts}). */
export interface Scripts {
  msgstreamBatch(...args: (string | number)[]): Promise<(number | string)[]>;
  msgstreamSync(...args: (string | number)[]): Promise<unknown[]>;
  /** The sharded variants (a cluster only). */
  msgstreamBatchS(...args: (string | number)[]): Promise<(number | string)[]>;
  msgstreamSyncS(...args: (string | number)[]): Promise<unknown[]>;
  /** One call per master per batch (a cluster of Redis 7), classic and sharded pub/sub. */
  msgstreamBatchM(...args: (string | number)[]): Promise<(number | string)[]>;
  msgstreamBatchMS(...args: (string | number)[]): Promise<(number | string)[]>;
  msgstreamVerify(...args: (string | number)[]): Promise<string>;
}

/** The command client, with the scripts defined. */
export type Client = Redis & Scripts;

/** One put, header change or delete waiting for its batch (see BATCH). */
export interface Op {
  stream: string;
  /** p (put), h (set the header), c (clear it), d (delete). */
  op: "p" | "h" | "c" | "d";
  text: string;
  /** Answers the write with its position (a put's; a header change or delete ignores it). */
  resolve: (result: Position) => void;
  reject: (e: Error) => void;
}

/** A join waiting for its snapshot (see `RedisEngine.sync`). */
export interface Sync {
  onSnapshot: (snapshot: EngineSnapshot) => void;
  snapshot: EngineSnapshot | undefined;
  /** The marker came through the subscription before the snapshot's reply. */
  marked: boolean;
  resolve: () => void;
  reject: (e: Error) => void;
}

/** A stream this node follows: its subscription, its joins and the events held back. */
export interface Follow {
  stream: string;
  channel: string;
  /** Resolves when the channel's subscription is confirmed. */
  subscribed: Promise<void> | undefined;
  active: boolean;
  syncs: Map<string, Sync>;
  /** Events held back between a marker and its snapshot's reply. */
  held: string[] | undefined;
  /** Releases the events held past a snapshot, on the next macrotask (see #complete). */
  releaseTimer: ReturnType<typeof setTimeout> | undefined;
  /** This node's own requests waiting for their event to reach local listeners, by tag. */
  waiters: Map<string, () => void>;
}

/** Defines the scripts on the command client (the cluster variants in a cluster). */
export function defineScripts(cmd: Client, cluster: boolean): void {
  // One stream's two keys in a cluster (its first argument is a key, so auto-pipelining routes
  // it by its slot); else the first argument is the number of keys.
  cmd.defineCommand(
    "msgstreamBatch",
    cluster ? { numberOfKeys: 2, lua: BATCH_CLUSTER } : { lua: BATCH },
  );
  cmd.defineCommand("msgstreamSync", {
    numberOfKeys: cluster ? 2 : 4,
    lua: cluster ? SYNC_CLUSTER : SYNC,
  });
  cmd.defineCommand("msgstreamVerify", { numberOfKeys: 3, lua: VERIFY });
  if (cluster) {
    cmd.defineCommand("msgstreamBatchS", { numberOfKeys: 2, lua: BATCH_SHARDED });
    cmd.defineCommand("msgstreamSyncS", { numberOfKeys: 2, lua: SYNC_SHARDED });
    cmd.defineCommand("msgstreamBatchM", { numberOfKeys: 2, lua: BATCH_MULTI });
    cmd.defineCommand("msgstreamBatchMS", { numberOfKeys: 2, lua: BATCH_MULTI_SHARDED });
  }
}

/** A stream's keys: its hash, its history, the epoch counter and the generation. */
export function streamKeys(prefix: string, stream: string): string[] {
  const base = `${prefix}{${stream}}`;
  return [`${base}:s`, `${base}:h`, `${prefix}epochs`, `${prefix}gen`];
}

/** A stream's channel. */
export function streamChannel(prefix: string, stream: string): string {
  return `${prefix}{${stream}}:c`;
}

/** A Redis URL without its password, for logs. */
export function redactUrl(url: string): string {
  return url.replace(/^(rediss?:\/\/)[^@/]*@/, "$1");
}

export function unavailable(e: unknown): EngineUnavailableError {
  let message = e instanceof Error ? e.message : String(e);
  // ioredis says how its queue is set, not what is wrong: the link to Redis is down.
  if (/Stream isn't writeable|Connection is closed|ECONNREFUSED|ECONNRESET/.test(message)) {
    message = "not connected (Redis is down or unreachable; reconnecting in the background)";
  }
  return new EngineUnavailableError(`Cannot reach Redis: ${message}`, { cause: e });
}

/** The engine snapshot of a SYNC reply, messages decoded with `codec`. */
export function snapshotOf(codec: Codec, reply: unknown[]): EngineSnapshot {
  const [epoch, seq, header, reset, entries] = reply as [
    string,
    number,
    string | null,
    ResetReason | "" | undefined,
    [string, string[]][] | undefined,
  ];
  if (epoch === "") return { epoch, seq: 0, header: undefined, absent: true };
  const events: EngineEvent[] = [];
  for (const [id, fields] of entries ?? []) {
    const kind = fields[1] === "h" ? "header" : "put";
    const text = fields[3] ?? "";
    events.push({
      kind,
      message: text === "" ? null : codec.decode(text),
      seq: Number(id.slice(0, id.indexOf("-"))),
    });
  }
  return {
    epoch,
    seq: Number(seq),
    header: header === null || header === undefined ? undefined : codec.decode(header),
    reset: reset === "" ? undefined : reset,
    events: reset === "" ? events : undefined,
  };
}

/**
 * Calls `fn` for each event of a published batch ("B<tag> <epoch>\n" then per event
 * "<kind><seq> <length> <text>").
 */
export function eachEvent(
  text: string,
  fn: (kind: string, seq: number, payload: string) => void,
): void {
  let i = text.indexOf("\n") + 1;
  while (i > 0 && i < text.length) {
    const a = text.indexOf(" ", i);
    const b = text.indexOf(" ", a + 1);
    if (a < 0 || b < 0) throw new SyntaxError("Malformed batch from Redis");
    const end = b + 1 + Number(text.slice(a + 1, b));
    if (!(end <= text.length)) throw new SyntaxError("Malformed batch from Redis");
    fn(text[i] as string, Number(text.slice(i + 1, a)), text.slice(b + 1, end));
    i = end;
  }
}

/** Closes a client: QUIT when it is connected, else a disconnect; resolves once it ended. */
export async function quit(client: Redis): Promise<void> {
  const status = client.status;
  if (status === "end") return;
  // Only a client with a socket open emits "end" once it is closed.
  const open = status === "ready" || status === "connect" || status === "connecting";
  const ended = open ? new Promise<void>((resolve) => client.once("end", () => resolve())) : null;
  if (status === "ready") {
    try {
      await client.quit();
    } catch {
      client.disconnect();
    }
  } else {
    client.disconnect();
  }
  await ended;
}
