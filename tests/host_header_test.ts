// Host header variants through the real HTTP door (bound to loopback, no --allowed-hosts): the
// loopback names and addresses are served, every other form gets 421 host_not_allowed, and a
// Host the runtime cannot make a URL of gets 421 too, not a 500.
import { assertEquals } from "@std/assert";
import { serve } from "../server.ts";
import { deadline } from "./_wait.ts";

/** Sends one raw request and returns the status line and body. */
async function raw(port: number, host: string | null, path = "/healthz"): Promise<string> {
  const conn = await Deno.connect({ hostname: "127.0.0.1", port });
  const head = host === null ? "" : `Host: ${host}\r\n`;
  await conn.write(
    new TextEncoder().encode(`GET ${path} HTTP/1.1\r\n${head}Connection: close\r\n\r\n`),
  );
  let text = "";
  const buf = new Uint8Array(4096);
  await deadline(
    (async () => {
      for (;;) {
        const n = await conn.read(buf);
        if (n === null) break;
        text += new TextDecoder().decode(buf.subarray(0, n));
      }
    })(),
    `the answer to Host ${host}`,
  );
  conn.close();
  const status = text.split("\r\n")[0]!.split(" ")[1]!;
  const body = text.slice(text.indexOf("\r\n\r\n") + 4);
  const code = body.startsWith("{") ? (JSON.parse(body) as { code?: string }).code : undefined;
  return code === undefined ? status : `${status} ${code}`;
}

Deno.test("HTTP door: Host variants on loopback", async () => {
  await using server = serve({ port: 0, http: { port: 0 } });
  const p = server.http!.addr.port;
  const cases: [string | null, string][] = [
    [`127.0.0.1:${p}`, "200"],
    [`LOCALHOST:${p}`, "200"],
    [`localhost.:${p}`, "200"],
    [`[::1]:${p}`, "200"],
    [`[0:0:0:0:0:0:0:1]:${p}`, "421 host_not_allowed"],
    [`[::ffff:127.0.0.1]:${p}`, "421 host_not_allowed"],
    [`2130706433:${p}`, "421 host_not_allowed"],
    [`127.1:${p}`, "421 host_not_allowed"],
    [`0.0.0.0:${p}`, "421 host_not_allowed"],
    [`evil.example@127.0.0.1:${p}`, "421 host_not_allowed"],
    [`localhost..:${p}`, "421 host_not_allowed"],
    ["evil.example", "421 host_not_allowed"],
    ["", "421 host_not_allowed"],
    [null, "421 host_not_allowed"],
    // No URL can be made of these: they were answered 500 internal.
    [`127.0.0.1:${p}:evil`, "421 host_not_allowed"],
    [`localhost:${p}.evil.example`, "421 host_not_allowed"],
    ["127.0.0.1 evil.example", "421 host_not_allowed"],
    ["[::1]evil.example", "421 host_not_allowed"],
  ];
  const got: [string | null, string][] = [];
  for (const [host] of cases) got.push([host, await raw(p, host)]);
  assertEquals(got, cases);
  assertEquals(server.http!.metrics.errors["internal"] ?? 0, 0);
});
