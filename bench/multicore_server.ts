/**
 * The multi-core benchmark's server (BENCHMARKS.md, "Multi-core"): `serveWorkers()` with
 * `--workers N` (1 too, unlike the command line, which serves one worker without the
 * partition engine), on `--port P`, until SIGTERM or SIGINT.
 *
 *   deno run -A --unstable-net bench/multicore_server.ts --workers 2 --port 7400
 *
 * @module
 */
import { parseArgs } from "@std/cli/parse-args";
import { serveWorkers } from "../workers.ts";

const args = parseArgs(Deno.args, { string: ["workers", "port", "log-level"] });
const server = await serveWorkers({
  workers: Number(args.workers ?? 2),
  port: Number(args.port ?? 0),
  logLevel: (args["log-level"] ?? "info") as "info",
});
// deno-lint-ignore no-console
console.log(`listening on ${server.addr.port} with ${server.workers} workers`);
for (const s of ["SIGINT", "SIGTERM"] as const) {
  Deno.addSignalListener(s, () => void server.shutdown());
}
await server.finished;
Deno.exit(0);
