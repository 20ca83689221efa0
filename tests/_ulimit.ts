/**
 * A real server process under a low `ulimit -n` (descriptor-exhaustion tests): started by bash,
 * whose `exec` keeps the pid, with both ports read from its output.
 */
import { TextLineStream } from "@std/streams/text-line-stream";
import { deadline } from "./_wait.ts";

const serverPath = new URL("../server.ts", import.meta.url).pathname;

/** The server process. */
export interface Proc extends AsyncDisposable {
  pid: number;
  tcp: number;
  http: number;
  exited(): boolean;
  log: string[];
}

/** Starts the server under `ulimit -n` in bash (exec keeps the pid) and reads its ports. */
export async function start(args: string[], ulimit?: number): Promise<Proc> {
  const quoted = [Deno.execPath(), "run", "-A", serverPath, "--port", "0", "--http-port", "0"]
    .concat(args).map((a) => `'${a}'`).join(" ");
  const child = new Deno.Command("bash", {
    args: ["-c", `${ulimit ? `ulimit -n ${ulimit}; ` : ""}exec ${quoted}`],
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
    env: { NO_COLOR: "1" },
  }).spawn();
  let done = false;
  const status = child.status.then(() => {
    done = true;
  });
  const log: string[] = [];
  const logging = (async () => {
    const lines = child.stderr.pipeThrough(new TextDecoderStream()).pipeThrough(
      new TextLineStream(),
    );
    for await (const line of lines) log.push(line);
  })();
  const reader = child.stdout.pipeThrough(new TextDecoderStream()).pipeThrough(
    new TextLineStream(),
  ).getReader();
  let tcp = 0;
  let http = 0;
  const kill = async () => {
    if (!done) child.kill("SIGKILL");
    await status;
    await reader.cancel();
    await logging;
  };
  try {
    await deadline(
      (async () => {
        while (!tcp || !http) {
          const { value, done } = await reader.read();
          if (done) throw new Error(`The server exited: ${log.join("\n")}`);
          tcp ||= Number(/listening on \w+:\/\/.*:(\d+)$/.exec(value)?.[1] ?? 0);
          http ||= Number(/http on http:\/\/.*:(\d+)$/.exec(value)?.[1] ?? 0);
        }
      })(),
      "listening lines",
      20_000,
    );
  } catch (e) {
    await kill();
    throw e;
  }
  return {
    pid: child.pid,
    tcp,
    http,
    log,
    exited: () => done,
    [Symbol.asyncDispose]: kill,
  };
}
