/**
 * The server's configuration: one table of options read from flags, `MSGSTREAM_*` variables and
 * a `--config` file (precedence in that order), and `deno task start` granting exactly the
 * variables the table names.
 */
import { assert, assertEquals, assertMatch, assertStringIncludes } from "@std/assert";
import { deadline } from "./_wait.ts";

const ROOT = new URL("../", import.meta.url).pathname;

/** The test runner's environment without any MSGSTREAM_* variable, plus `extra`. */
function cleanEnv(extra: Record<string, string> = {}): Record<string, string> {
  const env = Object.fromEntries(
    Object.entries(Deno.env.toObject()).filter(([k]) => !k.startsWith("MSGSTREAM_")),
  );
  return { ...env, NO_COLOR: "1", ...extra };
}

interface Run {
  code: number;
  stdout: string;
  stderr: string;
}

/** Runs `server.ts` to its exit (for usage errors and --help). */
async function runServer(
  perms: string[],
  args: string[],
  env: Record<string, string> = {},
): Promise<Run> {
  const out = await deadline(
    new Deno.Command(Deno.execPath(), {
      args: ["run", ...perms, "server.ts", ...args],
      cwd: ROOT,
      env: cleanEnv(env),
      clearEnv: true,
      stdin: "null",
    }).output(),
    `server.ts ${args.join(" ")} to exit`,
  );
  const text = new TextDecoder();
  return { code: out.code, stdout: text.decode(out.stdout), stderr: text.decode(out.stderr) };
}

/**
 * Starts `server.ts` with `perms`, `args` and `env`, reads its first stdout line, stops it with
 * SIGTERM and returns that line, the exit code and stderr.
 */
async function firstLine(
  perms: string[],
  args: string[],
  env: Record<string, string> = {},
): Promise<{ line: string; code: number; stderr: string }> {
  const child = new Deno.Command(Deno.execPath(), {
    args: ["run", ...perms, "server.ts", ...args],
    cwd: ROOT,
    env: cleanEnv(env),
    clearEnv: true,
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const stderr = new Response(child.stderr).text();
  const reader = child.stdout.pipeThrough(new TextDecoderStream()).getReader();
  let out = "";
  try {
    await deadline(
      (async () => {
        while (!out.includes("\n")) {
          const r = await reader.read();
          if (r.done) break;
          out += r.value;
        }
      })(),
      () => `the server's first line (so far ${JSON.stringify(out)})`,
    );
  } finally {
    try {
      child.kill("SIGTERM");
    } catch {
      // already gone
    }
    await reader.cancel();
  }
  const status = await deadline(child.status, "the server to exit");
  return { line: out.split("\n")[0] ?? "", code: status.code, stderr: await stderr };
}

async function startTask(): Promise<string[]> {
  const json = JSON.parse(await Deno.readTextFile(`${ROOT}deno.json`));
  return (json.tasks.start as string).split(" ");
}

/** The variables `--help` lists: the option table's. */
async function helpVariables(): Promise<string[]> {
  const help = await runServer(["-N"], ["--help"]);
  assertEquals(help.code, 0);
  return [...help.stdout.matchAll(/\bMSGSTREAM_[A-Z_]+\b/g)].map((m) => m[0]);
}

Deno.test("deno task start grants --allow-env for exactly the variables of the option table", async () => {
  const task = await startTask();
  const grant = task.find((a) => a.startsWith("--allow-env="));
  assert(grant, `no --allow-env in the start task: ${task.join(" ")}`);
  const granted = grant.slice("--allow-env=".length).split(",");
  const table = await helpVariables();
  assertEquals([...granted].sort(), [...new Set(table)].sort());
  assertEquals(task.filter((a) => a.startsWith("--allow-") || a === "-N"), ["-N", grant]);
});

Deno.test("the start task's permissions read MSGSTREAM_* variables", async () => {
  const task = await startTask();
  const perms = task.slice(2, task.indexOf("server.ts"));
  const r = await firstLine(perms, [], {
    MSGSTREAM_PORT: "0",
    MSGSTREAM_HOSTNAME: "127.0.0.2",
    MSGSTREAM_LOG_LEVEL: "warn",
  });
  assertMatch(r.line, /^msgstream listening on tcp:\/\/127\.0\.0\.2:\d+$/);
  assertEquals(r.code, 0);
  assertEquals(r.stderr, "");
});

Deno.test("precedence is flag, then environment, then config file", async (t) => {
  const dir = await Deno.makeTempDir();
  try {
    const file = `${dir}/msgstream.json`;
    await Deno.writeTextFile(file, JSON.stringify({ hostname: "127.0.0.2", port: 0 }));
    const perms = ["-N", `--allow-read=${file}`, "--allow-env=MSGSTREAM_HOSTNAME"];
    const cases: [string, string[], Record<string, string>, string][] = [
      ["the file alone", [], {}, "127.0.0.2"],
      ["environment over file", [], { MSGSTREAM_HOSTNAME: "127.0.0.3" }, "127.0.0.3"],
      [
        "flag over environment",
        ["--hostname", "127.0.0.4"],
        { MSGSTREAM_HOSTNAME: "127.0.0.3" },
        "127.0.0.4",
      ],
    ];
    for (const [name, args, env, want] of cases) {
      await t.step(name, async () => {
        const r = await firstLine(perms, ["--config", file, "--log-level", "warn", ...args], env);
        assertMatch(r.line, new RegExp(`^msgstream listening on tcp://${want}:\\d+$`));
        assertEquals(r.code, 0);
        assertEquals(r.stderr, "");
      });
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("a config file's mistakes are one line naming the file and the key", async (t) => {
  const dir = await Deno.makeTempDir();
  try {
    const file = `${dir}/msgstream.json`;
    const cases: [string, string, string][] = [
      ["unknown key", '{"port": 0, "prot": 1}', `Config file "${file}": unknown key "prot"`],
      [
        "wrong type",
        '{"port": "0"}',
        `"port" in config file "${file}" must be a non-negative integer, got "0"`,
      ],
      ["not JSON", "port=0", `Config file "${file}": invalid JSON`],
      ["not an object", "[]", `Config file "${file}": must be a JSON object`],
      ["config in config", '{"config": "x.json"}', `Config file "${file}": unknown key "config"`],
    ];
    for (const [name, text, why] of cases) {
      await t.step(name, async () => {
        await Deno.writeTextFile(file, text);
        const r = await runServer(["-N", `--allow-read=${file}`], ["--config", file]);
        assertEquals(r.code, 1);
        assertEquals(r.stdout, "");
        assertStringIncludes(r.stderr, why);
        assertEquals(r.stderr.trimEnd().split("\n").length, 1, r.stderr);
        assert(r.stderr.trimEnd().endsWith("(see --help)"), r.stderr);
      });
    }
    await t.step("no read permission", async () => {
      await Deno.writeTextFile(file, "{}");
      const r = await runServer(["-N"], ["--config", file]);
      assertEquals(r.code, 1);
      assertStringIncludes(
        r.stderr,
        `run with --allow-read (or --allow-read=${file}) for --config`,
      );
    });
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("a config file sets tokens, lists included", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const file = `${dir}/msgstream.json`;
    await Deno.writeTextFile(
      file,
      JSON.stringify({ port: 0, token: ["app:s3cret", "ops:0ther"], "log-level": "warn" }),
    );
    const child = new Deno.Command(Deno.execPath(), {
      args: ["run", "-N", `--allow-read=${file}`, "server.ts", "--config", file],
      cwd: ROOT,
      env: cleanEnv(),
      clearEnv: true,
      stdin: "null",
      stdout: "piped",
      stderr: "null",
    }).spawn();
    try {
      const reader = child.stdout.pipeThrough(new TextDecoderStream()).getReader();
      let out = "";
      await deadline(
        (async () => {
          while (!out.includes("\n")) {
            const r = await reader.read();
            if (r.done) break;
            out += r.value;
          }
        })(),
        "the server's first line",
      );
      await reader.cancel();
      const port = Number(/:(\d+)\n/.exec(out)?.[1]);
      const ask = async (frame: string) => {
        const conn = await Deno.connect({ hostname: "127.0.0.1", port });
        await conn.write(new TextEncoder().encode(frame + "\n"));
        const buf = new Uint8Array(4096);
        const n = await deadline(conn.read(buf), `an answer to ${frame}`);
        conn.close();
        return JSON.parse(new TextDecoder().decode(buf.subarray(0, n ?? 0)).split("\n")[0] ?? "");
      };
      const ok = await ask('{"action":"hello","token":"0ther","id":1}');
      assertEquals([ok.action, ok.id], ["ok", 1]);
      const refused = await ask('{"action":"hello","token":"nope","id":1}');
      assertEquals([refused.action, refused.code], ["error", "unauthorized"]);
    } finally {
      child.kill("SIGTERM");
      await deadline(child.status, "the server to exit");
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("a bad MSGSTREAM_* value is a usage error naming the variable", async () => {
  const r = await runServer(["-N", "--allow-env=MSGSTREAM_PORT"], [], { MSGSTREAM_PORT: "abc" });
  assertEquals(r.code, 1);
  assertEquals(
    r.stderr,
    'msgstream: MSGSTREAM_PORT must be a non-negative integer, got "abc" (see --help)\n',
  );
});

Deno.test("variables that cannot be read are reported at start", async (t) => {
  await t.step("without --allow-env: the server runs and says it read none", async () => {
    const r = await firstLine(["-N"], ["--port", "0"], { MSGSTREAM_PORT: "1" });
    assertMatch(r.line, /^msgstream listening on tcp:\/\/127\.0\.0\.1:\d+$/);
    assertEquals(r.code, 0);
    assertStringIncludes(r.stderr, "info MSGSTREAM_* variables not read: no --allow-env");
  });
  await t.step("with some granted: the others are named", async () => {
    const task = await startTask();
    const all = (task.find((a) => a.startsWith("--allow-env=")) ?? "").slice(12).split(",");
    const granted = all.filter((v) => v !== "MSGSTREAM_IDLE_TIMEOUT");
    const r = await firstLine(
      ["-N", `--allow-env=${granted.join(",")}`],
      ["--port", "0"],
      { MSGSTREAM_IDLE_TIMEOUT: "5" },
    );
    assertMatch(r.line, /^msgstream listening on tcp:\/\/127\.0\.0\.1:\d+$/);
    assertEquals(r.code, 0);
    assertStringIncludes(
      r.stderr,
      "info not read (not granted by --allow-env): MSGSTREAM_IDLE_TIMEOUT\n",
    );
  });
});

Deno.test("a bad --redis URL is refused without echoing its password", async () => {
  const r = await runServer(["-N", "--allow-env"], [
    "--redis",
    "http://user:hunter2@10.0.0.7:6379",
  ]);
  assertEquals(r.code, 1);
  assertEquals(
    r.stderr,
    'msgstream: --redis must be a redis:// or rediss:// URL, got "http://…@10.0.0.7:6379" ' +
      "(see --help)\n",
  );
});
