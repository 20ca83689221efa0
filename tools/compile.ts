// Builds the standalone `dist/msgstream` binary from cli.ts (`deno task compile`), with its
// permissions baked in. Extra arguments go to `deno compile` (e.g. `--target
// aarch64-apple-darwin`). `deno compile` needs Deno's runtime (denort): it downloads it from
// dl.deno.land, or takes a local copy from $DENORT_BIN. When it cannot, this says so in one line
// and exits 1.

import { BINARY_PERMISSIONS } from "./permissions.ts";

const args = [
  "compile",
  ...BINARY_PERMISSIONS, // tools/permissions.ts says why each
  "--output",
  "dist/msgstream",
  ...Deno.args,
  "cli.ts",
];
const root = new URL("..", import.meta.url);
const out = await new Deno.Command(Deno.execPath(), {
  args,
  cwd: root,
  env: { NO_COLOR: "1" },
  stdout: "piped",
  stderr: "piped",
}).output();
const text = new TextDecoder().decode(out.stderr);
if (out.success) {
  // deno-lint-ignore no-console
  console.log("Built dist/msgstream (try: dist/msgstream --help)");
  Deno.exit(0);
}
const denort = Deno.env.get("DENORT_BIN");
let why: string;
if (/could not find denort|DENORT_BIN/i.test(text)) {
  why = `DENORT_BIN is set to "${denort}", but no denort binary is there`;
} else if (/dl\.deno\.land|error sending request|dns error|denort/i.test(text)) {
  why = "deno compile needs Deno's runtime (denort) and cannot download it from dl.deno.land; " +
    "set DENORT_BIN to a denort binary of this Deno version, or run with network access";
} else {
  why = text.split("\n").find((l) => l.startsWith("error:"))?.slice(7) ?? text.trim();
}
// deno-lint-ignore no-console
console.error(`Cannot build dist/msgstream: ${why}`);
Deno.exit(1);
