/**
 * Transitional: the test helpers now live in one module per concern; import from those.
 *
 * - `_raw_client.ts`: {@linkcode RawClient}, {@linkcode connectRaw}, {@linkcode Frame}
 * - `_recorder.ts`: {@linkcode Recorder}, {@linkcode collect}
 * - `_hub.ts`: {@linkcode seqOf}, {@linkcode listenerCount}, {@linkcode putFlood}
 * - `_server.ts`: {@linkcode engineOptions}, {@linkcode testRedis}, {@linkcode addressOf},
 *   {@linkcode listeningPort}, `ServerProcess`
 * - `_prng.ts`: {@linkcode prng}
 * - `_wait.ts`: `deadline`, `poll`, `Signal`, `TIMEOUT` (every wait in a test has a deadline)
 * - `_bystander.ts`: `withBystander`
 * - `_proxy.ts`: `TcpProxy`
 *
 * @module
 */

export { connectRaw, type Frame, RawClient } from "./_raw_client.ts";
export { collect, Recorder } from "./_recorder.ts";
export { listenerCount, putFlood, seqOf } from "./_hub.ts";
export { addressOf, engineOptions, listeningPort, testRedis } from "./_server.ts";
export { prng } from "./_prng.ts";
