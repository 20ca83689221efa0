// deno-lint-ignore-file no-console -- a program: its output is the figures
/**
 * What the TLS TCP door costs per connection and per byte: a server process with `--cert` and
 * `--key`; one TLS client puts 200,000 messages of 100 bytes, 1,000 per write (time to the last ok), then 1,000
 * idle TLS connections that said `ping` (the server's RSS before and after), then 200 connects
 * with a handshake and a ping each.
 *
 * Run: deno run -A bench/tls_cost.ts [--server path/to/server.ts]
 * (makes a certificate with openssl in a temporary directory; raise `ulimit -n` above 2,100)
 *
 * @module
 */

const args = [...Deno.args];
const si = args.indexOf("--server");
const serverPath = si >= 0
  ? args.splice(si, 2)[1]!
  : new URL("../server.ts", import.meta.url).pathname;
const dir = await Deno.makeTempDir();
const made = await new Deno.Command("openssl", {
  args: [
    "req",
    "-x509",
    "-newkey",
    "rsa:2048",
    "-nodes",
    "-subj",
    "/CN=localhost",
    "-addext",
    "subjectAltName=DNS:localhost,IP:127.0.0.1",
    "-addext",
    "basicConstraints=critical,CA:FALSE",
    "-days",
    "1",
    "-keyout",
    `${dir}/key.pem`,
    "-out",
    `${dir}/cert.pem`,
  ],
  stdout: "null",
  stderr: "null",
}).output();
if (!made.success) throw new Error("openssl failed");
const cert = Deno.readTextFileSync(`${dir}/cert.pem`);

function rss(pid: number): number {
  const s = Deno.readTextFileSync(`/proc/${pid}/status`);
  return Number(/VmRSS:\s+(\d+)/.exec(s)![1]) / 1024;
}

const child = new Deno.Command(Deno.execPath(), {
  args: [
    "run",
    "-A",
    serverPath,
    "--port",
    "0",
    "--cert",
    `${dir}/cert.pem`,
    "--key",
    `${dir}/key.pem`,
    "--max-connections",
    "5000",
  ],
  stdout: "piped",
  stderr: "null",
}).spawn();
let port = 0;
{
  const reader = child.stdout.pipeThrough(new TextDecoderStream()).getReader();
  let text = "";
  while (!port) {
    const { value, done } = await reader.read();
    if (done) throw new Error("server exited: " + text);
    text += value;
    const m = /:(\d+)/.exec(text);
    if (m) port = Number(m[1]);
  }
  (async () => {
    while (!(await reader.read()).done) { /* drain */ }
  })();
}
const enc = new TextEncoder();
const connect = () => Deno.connectTls({ hostname: "127.0.0.1", port, caCerts: [cert] });

/** Reads until `count` lines came. */
async function lines(c: Deno.Conn, count: number): Promise<void> {
  const buf = new Uint8Array(1 << 16);
  let n = 0;
  while (n < count) {
    const r = await c.read(buf);
    if (r === null) throw new Error("closed");
    for (let i = 0; i < r; i++) if (buf[i] === 10) n++;
  }
}

{
  const c = await connect();
  const N = 200_000;
  const msg = "x".repeat(100);
  const t0 = performance.now();
  // 1,000 puts per write, then their 1,000 oks (a TLS connection's read and write in turn).
  for (let i = 0; i < N; i += 1000) {
    let text = "";
    for (let j = i; j < i + 1000; j++) {
      text += `{"action":"put","stream":"s${j % 100}","message":"${msg}","id":${j}}\n`;
    }
    const bytes = enc.encode(text);
    for (let off = 0; off < bytes.length;) off += await c.write(bytes.subarray(off));
    await lines(c, 1000);
  }
  const ms = performance.now() - t0;
  console.log(
    `200,000 puts over TLS (1,000 a write): ${ms.toFixed(0)} ms (${(N / ms * 1000).toFixed(0)}/s)`,
  );
  c.close();
}
{
  const before = rss(child.pid);
  const conns: Deno.TlsConn[] = [];
  for (let i = 0; i < 1000; i++) {
    const c = await connect();
    await c.write(enc.encode('{"action":"ping"}\n'));
    await lines(c, 1);
    conns.push(c);
  }
  const after = rss(child.pid);
  console.log(
    `1,000 idle TLS connections: RSS ${before.toFixed(0)} -> ${after.toFixed(0)} MB ` +
      `(${((after - before) * 1024 / 1000).toFixed(1)} KB each)`,
  );
  for (const c of conns) c.close();
}
{
  const t0 = performance.now();
  for (let i = 0; i < 200; i++) {
    const c = await connect();
    await c.write(enc.encode('{"action":"ping"}\n'));
    await lines(c, 1);
    c.close();
  }
  console.log(
    `200 connects (handshake and a ping each): ${(performance.now() - t0).toFixed(0)} ms`,
  );
}
child.kill("SIGTERM");
await child.status;
await Deno.remove(dir, { recursive: true });
