// The permissions baked into the compiled `dist/msgstream` binary (tools/compile.ts), in one
// place so that a test can run cli.ts with exactly them and try every server option.
//
// - net: every door, and the Redis engine.
// - read: TLS certificate and key files, token files, --ca files, the --data database.
// - write: the --data database (SQLite, its WAL and journal files beside it).
// - env: MSGSTREAM_* defaults, and --redis: the Redis client reads the environment (a list of
//   variables is not enough for it, so the whole environment is granted).

/** `deno compile`/`deno run` flags of the binary. */
export const BINARY_PERMISSIONS: readonly string[] = [
  "--allow-net",
  "--allow-read",
  "--allow-write",
  "--allow-env",
];
