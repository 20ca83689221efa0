/**
 * The README and docs/ stay true: every relative link points at a file of the repository (and
 * every `#anchor` into a Markdown file at one of its headings), and the README stays a
 * newcomer's page (at most 12 KiB; the rest lives in docs/). The README's TypeScript examples
 * run as doc tests (`deno task test` passes `--doc`, which takes in README.md).
 */
import { assert, assertEquals } from "@std/assert";

const ROOT = new URL("..", import.meta.url);
const README_LIMIT = 12 * 1024;

/** The Markdown pages whose links are checked, relative to the root. */
async function pages(): Promise<string[]> {
  const out = ["README.md", "PROTOCOL.md", "BENCHMARKS.md"];
  for await (const e of Deno.readDir(new URL("docs/", ROOT))) {
    if (e.isFile && e.name.endsWith(".md")) out.push(`docs/${e.name}`);
  }
  return out.sort();
}

/** GitHub's anchor of a heading: lower case, punctuation dropped, spaces to dashes. */
function anchorOf(heading: string): string {
  return heading.trim().toLowerCase().replace(/[^\p{L}\p{N}\s_-]/gu, "").replace(/\s/g, "-");
}

/** The anchors of a Markdown file's headings (outside code fences). */
function anchors(text: string): Set<string> {
  const out = new Set<string>();
  let fenced = false;
  for (const line of text.split("\n")) {
    if (line.startsWith("```")) fenced = !fenced;
    else if (!fenced && /^#{1,6} /.test(line)) out.add(anchorOf(line.replace(/^#+ /, "")));
  }
  return out;
}

/** The `[text](target)` links of a Markdown file, outside code fences. */
function links(text: string): string[] {
  const out: string[] = [];
  let fenced = false;
  for (const line of text.split("\n")) {
    if (line.startsWith("```")) {
      fenced = !fenced;
      continue;
    }
    if (fenced) continue;
    for (const m of line.matchAll(/\]\(([^)\s]+)\)/g)) out.push(m[1]!);
  }
  return out;
}

Deno.test("README.md and docs/ link only to files and headings that exist", async () => {
  const broken: string[] = [];
  for (const page of await pages()) {
    const base = new URL(page, ROOT);
    const text = await Deno.readTextFile(base);
    for (const link of links(text)) {
      if (/^[a-z]+:/i.test(link)) continue; // http:, https:, mailto:
      const [path, anchor] = link.split("#") as [string, string | undefined];
      const target = path === "" ? base : new URL(path, base);
      let body: string | undefined;
      try {
        const stat = await Deno.stat(target);
        if (stat.isFile && target.pathname.endsWith(".md")) body = await Deno.readTextFile(target);
      } catch {
        broken.push(`${page}: ${link} (no such file)`);
        continue;
      }
      if (anchor !== undefined && body !== undefined && !anchors(body).has(anchor)) {
        broken.push(`${page}: ${link} (no such heading)`);
      }
    }
  }
  assertEquals(broken, []);
});

Deno.test("README.md stays at most 12 KiB", async () => {
  const size = (await Deno.stat(new URL("README.md", ROOT))).size;
  assert(size <= README_LIMIT, `README.md is ${size} bytes; move details to docs/`);
});
