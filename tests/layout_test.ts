// The module layout (docs: DESIGN.md "One hub, many doors"): no import cycle among the root
// modules, static or dynamic, type-only included; the hub imports no door; a client user
// loads no CLI and no server. Read from `deno info --json`.
import { assertEquals } from "@std/assert";
import { deadline } from "./_wait.ts";

const ROOT = new URL("..", import.meta.url);

/** Every root module's local imports (static, dynamic and type-only), by file name. */
async function graph(): Promise<Map<string, Set<string>>> {
  const roots: string[] = [];
  for await (const e of Deno.readDir(ROOT)) {
    if (e.isFile && e.name.endsWith(".ts") && !e.name.endsWith(".d.ts")) roots.push(e.name);
  }
  // One entry that imports every root module, so that one `deno info` sees them all.
  const dir = await Deno.makeTempDir();
  const entry = `${dir}/all.ts`;
  await Deno.writeTextFile(entry, roots.map((r) => `import "${new URL(r, ROOT)}";\n`).join(""));
  let out: Deno.CommandOutput;
  try {
    out = await deadline(
      new Deno.Command(Deno.execPath(), {
        args: ["info", "--json", `--config=${new URL("deno.json", ROOT).pathname}`, entry],
        cwd: ROOT,
        env: { NO_COLOR: "1" },
        stdout: "piped",
        stderr: "piped",
      }).output(),
      "deno info",
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
  const text = new TextDecoder().decode(out.stdout);
  assertEquals(out.success, true, new TextDecoder().decode(out.stderr));
  const edges = new Map<string, Set<string>>();
  const prefix = ROOT.href;
  const local = (s: string | undefined) =>
    s?.startsWith(prefix) && !s.slice(prefix.length).includes("/")
      ? s.slice(prefix.length)
      : undefined;
  {
    const info = JSON.parse(text) as {
      modules: {
        specifier: string;
        dependencies?: { code?: { specifier: string }; type?: { specifier: string } }[];
      }[];
    };
    for (const m of info.modules) {
      const from = local(m.specifier);
      if (!from || from.endsWith(".json")) continue;
      const to = edges.get(from) ?? new Set<string>();
      edges.set(from, to);
      for (const d of m.dependencies ?? []) {
        for (const s of [d.code?.specifier, d.type?.specifier]) {
          const dep = local(s);
          if (dep && !dep.endsWith(".json")) to.add(dep);
        }
      }
    }
  }
  return edges;
}

/** Every module `start` reaches. */
function reach(edges: Map<string, Set<string>>, start: string): Set<string> {
  const seen = new Set<string>();
  const todo = [start];
  while (todo.length > 0) {
    const m = todo.pop() as string;
    for (const d of edges.get(m) ?? []) {
      if (!seen.has(d)) {
        seen.add(d);
        todo.push(d);
      }
    }
  }
  return seen;
}

const edges = await graph();

Deno.test("No root module imports itself through others (no import cycle)", () => {
  const cycles = [...edges.keys()].filter((m) => reach(edges, m).has(m)).sort();
  assertEquals(cycles, []);
});

Deno.test("The hub (mod.ts) imports no door, no CLI and no server", () => {
  const doors = ["cli.ts", "server.ts", "tcp.ts", "http.ts", "sse.ts", "ws.ts", "protocol.ts"];
  assertEquals([...reach(edges, "mod.ts")].filter((m) => doors.includes(m)), []);
});

Deno.test("A client user loads no command line, server or HTTP door (client.ts)", () => {
  const server = ["cli.ts", "server.ts", "tcp.ts", "http.ts", "sse.ts", "ws.ts", "page.ts"];
  assertEquals([...reach(edges, "client.ts")].filter((m) => server.includes(m)), []);
});

Deno.test("server.ts is the one module that wires the TCP door, the HTTP door and Redis", () => {
  const wiring = [...edges].filter(([, deps]) =>
    deps.has("tcp.ts") && deps.has("http.ts") && deps.has("redis.ts")
  ).map(([m]) => m);
  assertEquals(wiring, ["server.ts"]);
});
