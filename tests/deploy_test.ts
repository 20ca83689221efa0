/**
 * The deployment examples in deploy/: the systemd unit and the container file.
 *
 * - `systemd-analyze verify` accepts the unit with no warning (where systemd is installed).
 * - The unit's `ExecStart` runs as systemd would run it: its `Environment=`, `%d` holding its
 *   `LoadCredential=` files, the install step of deploy/README.md for `DENO_DIR` (read-only), an
 *   unprivileged user (when the tests run as root). Only the listening address changes (to
 *   127.0.0.1 and a free port). TLS clients with the token are served, others refused, and
 *   SIGTERM ends it with exit code 0.
 * - The Containerfile's COPY, RUN and ENTRYPOINT are done here the same way.
 * - The image is built only where a builder runs (podman, buildah, or a Docker daemon); the test
 *   says SKIPPED with the reason otherwise.
 */

import { assert, assertEquals, assertRejects } from "@std/assert";
import { ProtocolError, RemoteStream, type RemoteStreamOptions } from "../client.ts";
import { Inbox } from "../mod.ts";
import { collect } from "./_recorder.ts";
import { deadline } from "./_wait.ts";

const ROOT = new URL("..", import.meta.url).pathname.replace(/\/$/, "");
const UNIT = `${ROOT}/deploy/msgstream.service`;
const CONTAINERFILE = `${ROOT}/deploy/Containerfile`;
/** Where the unit expects the project; the tests use the repository instead. */
const INSTALL_DIR = "/opt/msgstream";
const TOKEN = { name: "ops", secret: "s3cret-ops-token" };
/** Building an image downloads its base: a longer deadline than a test's usual one. */
const BUILD_MS = 600_000;

function succeeds(cmd: string, args: string[]): boolean {
  try {
    return new Deno.Command(cmd, { args, stdout: "null", stderr: "null" }).outputSync().success;
  } catch {
    return false;
  }
}

function say(text: string): void {
  // deno-lint-ignore no-console
  console.error(text);
}

const OPENSSL = succeeds("openssl", ["version"]);
const SYSTEMD_ANALYZE = succeeds("systemd-analyze", ["--version"]);
/** Whether "nobody" can reach the checkout: every directory above it searchable by others. */
function othersCanRead(path: string): boolean {
  const parts = path.split("/").filter(Boolean);
  for (let i = 0; i <= parts.length; i++) {
    const mode = Deno.statSync("/" + parts.slice(0, i).join("/")).mode ?? 0;
    if ((mode & 0o005) !== 0o005) return false;
  }
  return true;
}
/** Run the servers as "nobody", as systemd's DynamicUser and the image's USER would. */
const AS_NOBODY = Deno.uid() === 0 && succeeds("setpriv", ["--version"]) && othersCanRead(ROOT);
if (!OPENSSL) say("SKIPPED: deploy_test.ts: TLS runs: openssl not installed");
if (!SYSTEMD_ANALYZE) {
  say("SKIPPED: deploy_test.ts: systemd-analyze verify: systemd is not installed");
}
if (!AS_NOBODY) {
  say(
    "NOTE: deploy_test.ts: not root, no setpriv, or the checkout is not readable by others " +
      "(e.g. under a 0700 directory): servers run as the current user",
  );
}

/** A container builder that can run here, or why there is none. */
const BUILDER: { cmd: string; build: string[]; run: boolean } | string = (() => {
  if (succeeds("podman", ["--version"])) return { cmd: "podman", build: ["build"], run: true };
  if (succeeds("buildah", ["--version"])) return { cmd: "buildah", build: ["bud"], run: false };
  if (succeeds("docker", ["--version"])) {
    if (succeeds("docker", ["info"])) return { cmd: "docker", build: ["build"], run: true };
    return "podman and buildah are not installed; the docker client is, but no Docker daemon " +
      "answers (docker info fails)";
  }
  return "podman, buildah and docker are not installed";
})();
if (typeof BUILDER === "string") {
  say(`SKIPPED: deploy_test.ts: building deploy/Containerfile: ${BUILDER}`);
}

interface Ran {
  code: number;
  stdout: string;
  stderr: string;
}

function basicEnv(): Record<string, string> {
  return { PATH: Deno.env.get("PATH") ?? "/usr/local/bin:/usr/bin:/bin", NO_COLOR: "1" };
}

async function run(
  cmd: string,
  args: string[],
  options: { cwd?: string; env?: Record<string, string>; ms?: number } = {},
): Promise<Ran> {
  const child = new Deno.Command(cmd, {
    args,
    cwd: options.cwd ?? ROOT,
    clearEnv: true,
    env: options.env ?? basicEnv(),
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  try {
    const out = await deadline(child.output(), `${cmd} ${args.join(" ")} to exit`, options.ms);
    const dec = new TextDecoder();
    return { code: out.code, stdout: dec.decode(out.stdout), stderr: dec.decode(out.stderr) };
  } catch (e) {
    try {
      child.kill("SIGKILL");
    } catch { /* exited */ }
    await child.status;
    throw e;
  }
}

// -- systemd unit files ---------------------------------------------------------------------

/** A unit file's settings: section → [key, value] in order (keys repeat). */
type UnitFile = Map<string, [string, string][]>;

/** Parses a unit file: comments, sections, continuation lines (a trailing backslash). */
function parseUnit(text: string): UnitFile {
  const unit: UnitFile = new Map();
  let section = "";
  let pending = "";
  for (const raw of text.split("\n")) {
    const line = raw.trim();
    if (pending === "" && (line === "" || line.startsWith("#") || line.startsWith(";"))) continue;
    if (pending !== "" && (line.startsWith("#") || line.startsWith(";"))) continue;
    if (line.endsWith("\\")) {
      pending += `${line.slice(0, -1)} `;
      continue;
    }
    const full = pending + line;
    pending = "";
    const m = full.match(/^\[(.+)\]$/);
    if (m) {
      section = m[1] as string;
      unit.set(section, unit.get(section) ?? []);
      continue;
    }
    const i = full.indexOf("=");
    assert(i > 0 && section !== "", `not a unit file line: ${full}`);
    unit.get(section)?.push([full.slice(0, i).trim(), full.slice(i + 1).trim()]);
  }
  return unit;
}

/** Splits a command line or an `Environment=` value into words, as systemd does (quotes). */
function splitWords(text: string): string[] {
  const words: string[] = [];
  let word: string | undefined;
  let quote: string | undefined;
  for (let i = 0; i < text.length; i++) {
    const c = text[i] as string;
    if (quote) {
      if (c === quote) quote = undefined;
      else if (c === "\\" && i + 1 < text.length) word = `${word ?? ""}${text[++i]}`;
      else word = `${word ?? ""}${c}`;
    } else if (c === '"' || c === "'") {
      quote = c;
      word ??= "";
    } else if (/\s/.test(c)) {
      if (word !== undefined) words.push(word);
      word = undefined;
    } else if (c === "\\" && i + 1 < text.length) {
      word = (word ?? "") + text[++i];
    } else {
      word = (word ?? "") + c;
    }
  }
  assert(quote === undefined, `unterminated quote in: ${text}`);
  if (word !== undefined) words.push(word);
  return words;
}

/** Expands `%x` specifiers and `${VAR}` in one word, failing on anything it does not know. */
function expand(word: string, specifiers: Record<string, string>, env: Record<string, string>) {
  const spec = word.replace(/%(.)/g, (_, c: string) => {
    if (c === "%") return "%";
    const v = specifiers[c];
    assert(v !== undefined, `the test does not know the specifier %${c} in "${word}"`);
    return v;
  });
  assert(!/\$(?!\{)/.test(spec), `"$VAR" without braces splits words: use \${VAR} in "${word}"`);
  return spec.replace(/\$\{(\w+)\}/g, (_, name: string) => {
    const v = env[name];
    assert(v !== undefined, `\${${name}} is not set by the unit's Environment=`);
    return v;
  });
}

/**
 * The permission flags of a `deno run` command line (before the script), each of which must name
 * what it grants: no -A or -N (short flags grant everything), no bare --allow-read.
 *
 * @returns The flags, in order.
 */
function scopedPermissions(argv: string[]): string[] {
  const script = argv.findIndex((w) => w.endsWith(".ts"));
  assert(script > 0, `no script in: ${argv.join(" ")}`);
  const flags = argv.slice(2, script);
  for (const flag of flags) {
    assert(!/^-[^-]/.test(flag), `short flags grant everything: ${flag}`);
    if (flag.startsWith("--allow-")) {
      assert(/^--allow-[a-z]+=\S+$/.test(flag), `permission flag not scoped: ${flag}`);
    }
  }
  return flags.filter((f) => f.startsWith("--allow-"));
}

// -- shared set-up -----------------------------------------------------------------------------

/** A directory nobody may read into (the server runs as nobody). */
async function openDir(prefix: string): Promise<string> {
  const dir = await Deno.makeTempDir({ prefix });
  await Deno.chmod(dir, 0o755);
  return dir;
}

/** Gives files to the server's user, readable by it alone, as systemd does for credentials. */
async function handOver(dir: string): Promise<void> {
  if (!AS_NOBODY) return;
  for await (const entry of Deno.readDir(dir)) {
    await Deno.chown(`${dir}/${entry.name}`, 65534, 65534);
    await Deno.chmod(`${dir}/${entry.name}`, 0o400);
  }
  await Deno.chown(dir, 65534, 65534);
  await Deno.chmod(dir, 0o500);
}

/** A certificate from tools/tls_recipe.sh: the CA's text and the server's files. */
async function certificates(): Promise<{ dir: string; ca: string }> {
  const dir = await openDir("msgstream_deploy_certs_");
  const r = await run("sh", [`${ROOT}/tools/tls_recipe.sh`, dir]);
  assertEquals(r.code, 0, r.stderr);
  return { dir, ca: await Deno.readTextFile(`${dir}/ca.pem`) };
}

/**
 * Fills a fresh DENO_DIR the way deploy/README.md says (`deno cache --frozen server.ts` in the
 * project); read-only for the server's user. Undefined when that fails (offline): the servers
 * then use the current DENO_DIR and run as the current user.
 */
async function fillDenoDir(appDir: string): Promise<string | undefined> {
  const dir = await openDir("msgstream_deploy_denodir_");
  // The install step runs in the administrator's environment (proxy and CA settings included).
  const env = Object.fromEntries(
    Object.entries(Deno.env.toObject()).filter(([k]) => !k.startsWith("MSGSTREAM_")),
  );
  const r = await run(Deno.execPath(), ["cache", "--frozen", "server.ts"], {
    cwd: appDir,
    env: { ...env, DENO_DIR: dir },
    ms: 120_000,
  });
  if (r.code !== 0) {
    say(
      `NOTE: deploy_test.ts: "deno cache --frozen server.ts" into a fresh DENO_DIR failed ` +
        `(offline?): the current DENO_DIR is used instead. ${r.stderr.trim().split("\n").at(-1)}`,
    );
    await Deno.remove(dir, { recursive: true });
    return undefined;
  }
  await readableByAll(dir);
  return dir;
}

async function readableByAll(dir: string): Promise<void> {
  await Deno.chmod(dir, 0o755);
  for await (const entry of Deno.readDir(dir)) {
    const path = `${dir}/${entry.name}`;
    if (entry.isDirectory) await readableByAll(path);
    else if (entry.isFile) await Deno.chmod(path, 0o644);
  }
}

/** A server process and the address it listens on (read from its "listening on" line). */
interface Started {
  /** The user id the server runs as. */
  uid: number;
  hostname: string;
  port: number;
  tls: boolean;
  stop(): Promise<{ code: number; log: string }>;
}

async function start(
  argv: string[],
  options: { cwd: string; env: Record<string, string>; asNobody: boolean },
): Promise<Started> {
  const [cmd, ...args] = options.asNobody
    ? ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--", ...argv]
    : argv;
  const child = new Deno.Command(cmd as string, {
    args,
    cwd: options.cwd,
    clearEnv: true,
    env: options.env,
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  let log = "";
  let found: (m: RegExpMatchArray) => void = () => {};
  const listening = new Promise<RegExpMatchArray>((resolve) => found = resolve);
  const read = async (stream: ReadableStream<Uint8Array>) => {
    for await (const text of stream.pipeThrough(new TextDecoderStream())) {
      log += text;
      const m = log.match(/(tcp|tls):\/\/([^\s"]+):(\d+)/);
      if (m) found(m);
    }
  };
  const reading = Promise.all([read(child.stdout), read(child.stderr)]);
  const ended = child.status.then((s) => {
    throw new Error(`The server exited (code ${s.code}) before listening: ${log}`);
  });
  try {
    const m = await deadline(Promise.race([listening, ended]), () => `the listening line: ${log}`);
    ended.catch(() => {});
    const status = await Deno.readTextFile(`/proc/${child.pid}/status`);
    return {
      uid: Number(status.match(/^Uid:\s+(\d+)/m)?.[1]),
      hostname: m[2] as string,
      port: Number(m[3]),
      tls: m[1] === "tls",
      async stop() {
        try {
          child.kill("SIGTERM");
        } catch { /* exited */ }
        const status = await deadline(child.status, () => `the server to exit on SIGTERM: ${log}`);
        await reading;
        return { code: status.code, log };
      },
    };
  } catch (e) {
    try {
      child.kill("SIGKILL");
    } catch { /* exited */ }
    await child.status;
    await reading;
    throw e;
  }
}

/** Puts and listens with the token (header first, then the put); refused without it. */
async function assertServes(server: Started, ca?: string): Promise<void> {
  const base: RemoteStreamOptions = { hostname: server.hostname, port: server.port };
  if (server.tls) {
    base.hostname = "localhost";
    base.tls = true;
    if (ca !== undefined) base.caCerts = [ca];
  }
  await using remote = await RemoteStream.connect({ ...base, token: TOKEN.secret });
  await remote.header("deploy", { state: "up" });
  const inbox = new Inbox();
  await remote.listen("deploy", inbox);
  await remote.put("deploy", "served");
  assertEquals((await collect(inbox, 2)).map((e) => [e.kind, e.message]), [
    ["header", { state: "up" }],
    ["put", "served"],
  ]);
  remote.endqueue(inbox);
  inbox.close();
  const err = await assertRejects(
    () => RemoteStream.connect({ ...base, maxReconnectAttempts: 0 }),
    ProtocolError,
  );
  assertEquals(err.code, "unauthorized");
}

async function assertStops(server: Started): Promise<void> {
  const { code, log } = await server.stop();
  assertEquals(code, 0, log);
  assert(!log.includes(TOKEN.secret), "the server logged the token");
  assert(!log.includes("PRIVATE KEY"), "the server logged its key");
}

// -- the tests ---------------------------------------------------------------------------------

Deno.test({
  name: "systemd-analyze verify accepts deploy/msgstream.service with no warning",
  ignore: !SYSTEMD_ANALYZE,
  async fn() {
    const dir = await Deno.makeTempDir({ prefix: "msgstream_unit_" });
    try {
      let text = await Deno.readTextFile(UNIT);
      // systemd finds a bare "deno" in /usr/local/bin or /usr/bin; elsewhere, name this one.
      if (!["/usr/local/bin/deno", "/usr/bin/deno"].some((p) => succeeds("test", ["-x", p]))) {
        say(
          `NOTE: deploy_test.ts: deno is not in /usr/local/bin or /usr/bin: verifying the unit ` +
            `with ExecStart=${Deno.execPath()}`,
        );
        text = text.replace(/^ExecStart=deno /m, `ExecStart=${Deno.execPath()} `);
      }
      await Deno.writeTextFile(`${dir}/msgstream.service`, text);
      const r = await run("systemd-analyze", ["verify", "--man=no", `${dir}/msgstream.service`]);
      assertEquals([r.code, r.stderr, r.stdout], [0, "", ""]);
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
});

Deno.test({
  name: "The unit's ExecStart serves TLS with tokens, with exactly its permissions, as an " +
    "unprivileged user, and stops on SIGTERM with exit code 0",
  ignore: !OPENSSL,
  async fn() {
    const unit = parseUnit(await Deno.readTextFile(UNIT));
    const service = unit.get("Service") ?? [];
    const values = (key: string) => service.filter(([k]) => k === key).map(([, v]) => v);
    assertEquals(values("DynamicUser"), ["yes"]);
    assertEquals(values("StateDirectory"), ["msgstream"]);
    const env: Record<string, string> = {};
    for (const value of values("Environment")) {
      for (const assignment of splitWords(value)) {
        const i = assignment.indexOf("=");
        env[assignment.slice(0, i)] = assignment.slice(i + 1);
      }
    }
    // Only the address moves: a drop-in would do the same.
    assertEquals([env.MSGSTREAM_HOSTNAME, env.MSGSTREAM_PORT], ["0.0.0.0", "51932"]);
    env.MSGSTREAM_HOSTNAME = "127.0.0.1";
    env.MSGSTREAM_PORT = "0";

    const certs = await certificates();
    const credentials = await openDir("msgstream_deploy_credentials_");
    const state = await openDir("msgstream_deploy_state_");
    const denoDir = await fillDenoDir(ROOT);
    try {
      // Each LoadCredential=ID:PATH, as systemd copies it into the credentials directory.
      const sources: Record<string, string> = {
        "server.pem": await Deno.readTextFile(`${certs.dir}/server.pem`),
        "server-key.pem": await Deno.readTextFile(`${certs.dir}/server-key.pem`),
        "tokens.json": JSON.stringify({ tokens: [{ ...TOKEN, publish: ["*"], subscribe: ["*"] }] }),
      };
      const ids = values("LoadCredential").map((v) => v.slice(0, v.indexOf(":")));
      assertEquals(ids.sort(), Object.keys(sources).sort(), "the credentials the test provides");
      for (const id of ids) await Deno.writeTextFile(`${credentials}/${id}`, sources[id] as string);
      await handOver(credentials);

      assert(env.DENO_DIR?.startsWith(`${INSTALL_DIR}/`), `DENO_DIR=${env.DENO_DIR}`);
      if (denoDir !== undefined) env.DENO_DIR = denoDir;
      else delete env.DENO_DIR;
      const [execStart, ...more] = values("ExecStart");
      assertEquals(more, [], "one ExecStart");
      const specifiers = { d: credentials, S: state };
      const argv = splitWords(execStart as string).map((w) =>
        expand(w, specifiers, env).replace(INSTALL_DIR, ROOT)
      );
      assertEquals(argv[0], "deno");
      argv[0] = Deno.execPath();
      assertEquals(scopedPermissions(argv), [
        "--allow-net=127.0.0.1:0",
        `--allow-read=${credentials}`,
      ]);
      const server = await start(argv, {
        cwd: "/",
        env: { ...env, PATH: basicEnv().PATH as string, CREDENTIALS_DIRECTORY: credentials },
        asNobody: AS_NOBODY && denoDir !== undefined,
      });
      try {
        assertEquals([server.tls, server.hostname], [true, "127.0.0.1"]);
        if (AS_NOBODY) assertEquals(server.uid, 65534, "the server runs as nobody");
        await assertServes(server, certs.ca);
      } finally {
        await assertStops(server);
      }
    } finally {
      for (const dir of [certs.dir, credentials, state, denoDir]) {
        if (dir !== undefined) await Deno.remove(dir, { recursive: true });
      }
    }
  },
});

/** The Containerfile's instructions, continuation lines joined, comments dropped. */
async function containerfile(): Promise<[string, string][]> {
  const text = await Deno.readTextFile(CONTAINERFILE);
  const out: [string, string][] = [];
  let pending = "";
  for (const raw of text.split("\n")) {
    const line = raw.trim();
    if (line.startsWith("#") || (pending === "" && line === "")) continue;
    if (line.endsWith("\\")) {
      pending += `${line.slice(0, -1)} `;
      continue;
    }
    const full = pending + line;
    pending = "";
    const i = full.search(/\s/);
    out.push([full.slice(0, i).toUpperCase(), full.slice(i + 1).trim()]);
  }
  return out;
}

Deno.test({
  name: "The Containerfile's copied files, RUN and ENTRYPOINT serve with exactly its " +
    "permissions: a token from MSGSTREAM_TOKEN, TLS files from the secrets directory",
  ignore: !OPENSSL,
  async fn() {
    const app = await openDir("msgstream_deploy_app_");
    const secrets = await openDir("msgstream_deploy_secrets_");
    const certs = await certificates();
    let denoDir: string | undefined;
    try {
      let entrypoint: string[] = [];
      let cmd: string[] = [];
      let user = "root";
      const env: Record<string, string> = {};
      const runs: string[] = [];
      for (const [op, arg] of await containerfile()) {
        if (op === "COPY") {
          const words = arg.split(/\s+/);
          assertEquals(words.at(-1), "./", "COPY into the WORKDIR");
          for (const source of words.slice(0, -1)) {
            assert(!source.includes("/"), `COPY of a path the test does not handle: ${source}`);
            const re = new RegExp(`^${source.replace(/\./g, "\\.").replace(/\*/g, "[^/]*")}$`);
            let copied = 0;
            for await (const entry of Deno.readDir(ROOT)) {
              if (entry.isFile && re.test(entry.name)) {
                await Deno.copyFile(`${ROOT}/${entry.name}`, `${app}/${entry.name}`);
                await Deno.chmod(`${app}/${entry.name}`, 0o644);
                copied++;
              }
            }
            assert(copied > 0, `COPY ${source} copied nothing`);
          }
        } else if (op === "RUN") runs.push(arg);
        else if (op === "ENTRYPOINT") entrypoint = JSON.parse(arg);
        else if (op === "CMD") cmd = JSON.parse(arg);
        else if (op === "USER") user = arg;
        else if (op === "ENV") {
          for (const w of splitWords(arg)) {
            env[w.slice(0, w.indexOf("="))] = w.slice(w.indexOf("=") + 1);
          }
        } else {
          assert(["ARG", "FROM", "WORKDIR", "EXPOSE"].includes(op), `unknown instruction ${op}`);
        }
      }
      assert(user !== "root" && user !== "0", "the image runs as an unprivileged user");
      // RUN deno cache …: into the image's DENO_DIR, here a fresh one.
      assertEquals(runs, ["deno cache --frozen server.ts"]);
      denoDir = await fillDenoDir(app);
      // The image listens on 0.0.0.0:51932 and reads /run/secrets; here 127.0.0.1, a free port
      // and a temporary directory.
      const local = (words: string[]) =>
        words.map((w, i) =>
          w.replace("0.0.0.0:51932", "127.0.0.1:0").replace("/run/secrets", secrets)
            .replace(/^0\.0\.0\.0$/, words[i - 1] === "--hostname" ? "127.0.0.1" : w)
            .replace(/^51932$/, words[i - 1] === "--port" ? "0" : w)
        );
      const argv = local(entrypoint);
      assertEquals(argv.slice(0, 2), ["deno", "run"]);
      argv[0] = Deno.execPath();
      assertEquals(scopedPermissions(argv), [
        "--allow-net=127.0.0.1:0",
        `--allow-read=${secrets}`,
        "--allow-env=MSGSTREAM_TOKEN",
      ]);
      const runEnv = {
        ...env,
        PATH: basicEnv().PATH as string,
        NO_COLOR: "1",
        MSGSTREAM_TOKEN: `${TOKEN.name}:${TOKEN.secret}`,
        ...(denoDir === undefined ? {} : { DENO_DIR: denoDir }),
      };
      const options = { cwd: app, env: runEnv, asNobody: AS_NOBODY && denoDir !== undefined };

      // As built: the default CMD, plain TCP, the token from the environment.
      const plain = await start([...argv, ...local(cmd)], options);
      try {
        assertEquals(plain.tls, false);
        if (AS_NOBODY) assertEquals(plain.uid, 65534, "the server runs as nobody");
        await assertServes(plain);
      } finally {
        await assertStops(plain);
      }
      // With TLS files as secrets, as deploy/README.md runs it.
      for (const file of ["server.pem", "server-key.pem"]) {
        await Deno.copyFile(`${certs.dir}/${file}`, `${secrets}/${file}`);
      }
      await handOver(secrets);
      const tls = await start([
        ...argv,
        ...local(["--cert", "/run/secrets/server.pem", "--key", "/run/secrets/server-key.pem"]),
      ], options);
      try {
        assertEquals(tls.tls, true);
        await assertServes(tls, certs.ca);
      } finally {
        await assertStops(tls);
      }
    } finally {
      for (const dir of [app, secrets, certs.dir, denoDir]) {
        if (dir !== undefined) await Deno.remove(dir, { recursive: true });
      }
    }
  },
});

Deno.test({
  name: "deploy/Containerfile builds, and the image prints its version",
  ignore: typeof BUILDER === "string",
  async fn() {
    const b = BUILDER as { cmd: string; build: string[]; run: boolean };
    const tag = `msgstream-deploy-test:${crypto.randomUUID().slice(0, 8)}`;
    const built = await run(b.cmd, [...b.build, "-f", CONTAINERFILE, "-t", tag, ROOT], {
      ms: BUILD_MS,
    });
    assertEquals(built.code, 0, built.stderr);
    try {
      if (b.run) {
        const r = await run(b.cmd, ["run", "--rm", tag, "--version"], { ms: BUILD_MS });
        const version = JSON.parse(await Deno.readTextFile(`${ROOT}/deno.json`)).version;
        assertEquals([r.code, r.stdout], [0, `msgstream ${version}\n`], r.stderr);
      }
    } finally {
      await run(b.cmd, b.cmd === "buildah" ? ["rmi", tag] : ["rmi", "-f", tag]);
    }
  },
});
