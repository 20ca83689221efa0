/**
 * TLS: a server with a certificate and key (`serve({cert, key})` and the CLI's `--cert`/`--key`)
 * serves TLS clients, and refuses plain TCP clients without harm to the others. The certificate
 * is made for the test with openssl in a temporary directory and removed afterwards.
 */

import { assert, assertEquals, assertRejects } from "@std/assert";
import { TextLineStream } from "@std/streams/text-line-stream";
import { ProtocolError, RemoteStream } from "../client.ts";
import { Inbox } from "../mod.ts";
import { serve } from "../server.ts";
import { connectRaw } from "./_raw_client.ts";
import { deadline, poll } from "./_wait.ts";
import { collect } from "./_recorder.ts";

function hasOpenssl(): boolean {
  try {
    return new Deno.Command("openssl", { args: ["version"], stdout: "null", stderr: "null" })
      .outputSync().success;
  } catch {
    return false;
  }
}

const OPENSSL = hasOpenssl();
if (!OPENSSL) {
  // deno-lint-ignore no-console
  console.error("SKIPPED: tls_test.ts: openssl not installed");
}

interface Pem {
  cert: string;
  key: string;
  certFile: string;
  keyFile: string;
  remove(): Promise<void>;
}

/** Makes a self-signed certificate for localhost and 127.0.0.1 in a temporary directory. */
async function makeCert(): Promise<Pem> {
  const dir = await Deno.makeTempDir({ prefix: "msgstream_tls_" });
  const keyFile = `${dir}/key.pem`;
  const certFile = `${dir}/cert.pem`;
  const out = await new Deno.Command("openssl", {
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
      // OpenSSL 3 marks a self-signed certificate CA:TRUE by default, and rustls refuses a CA
      // certificate as a server's own ("CaUsedAsEndEntity").
      "-addext",
      "basicConstraints=critical,CA:FALSE",
      "-days",
      "1",
      "-keyout",
      keyFile,
      "-out",
      certFile,
    ],
    stdout: "piped",
    stderr: "piped",
  }).output();
  if (!out.success) {
    await Deno.remove(dir, { recursive: true });
    throw new Error(`openssl failed: ${new TextDecoder().decode(out.stderr)}`);
  }
  return {
    cert: await Deno.readTextFile(certFile),
    key: await Deno.readTextFile(keyFile),
    certFile,
    keyFile,
    remove: () => Deno.remove(dir, { recursive: true }),
  };
}

/** Header first, then puts, through a TLS client. */
let trips = 0;
async function roundTrip(port: number, cert: string): Promise<void> {
  const stream = `tls-trip-${++trips}`;
  await using remote = await RemoteStream.connect({
    hostname: "localhost",
    port,
    tls: true,
    caCerts: [cert],
  });
  await remote.header(stream, { state: "running" });
  const inbox = new Inbox();
  await remote.listen(stream, inbox);
  for (let i = 1; i <= 3; i++) assertEquals((await remote.put(stream, { i, s: "é✓" })).seq, i);
  const got = await collect(inbox, 4);
  assertEquals(got.map((e) => [e.kind, e.message]), [
    ["header", { state: "running" }],
    ["put", { i: 1, s: "é✓" }],
    ["put", { i: 2, s: "é✓" }],
    ["put", { i: 3, s: "é✓" }],
  ]);
  remote.endqueue(inbox);
  inbox.close();
}

/** A plain TCP client speaks JSON to a TLS port: it must get no frame, and be closed. */
async function plainClientRefused(port: number, text?: string): Promise<void> {
  await using raw = await connectRaw(port);
  try {
    if (text !== undefined) await raw.write(text);
    else {
      await raw.send({ action: "ping", id: 1 });
      await raw.send({ action: "put", stream: "tls-job", message: "plain" });
    }
  } catch {
    // The server may already have cut it: that is a refusal too.
  }
  const rest = await raw.rest(); // ends only when the server closes the connection
  assertEquals(rest.filter((f) => f.action !== "<undecodable>"), []);
  for (const line of raw.lines) assert(!line.includes('"pong"'), `plain client got: ${line}`);
}

Deno.test({
  name: "serve() with cert and key serves a TLS client header first, then puts",
  ignore: !OPENSSL,
  async fn() {
    const pem = await makeCert();
    try {
      await using server = serve({ port: 0, cert: pem.cert, key: pem.key });
      await roundTrip(server.addr.port, pem.cert);
    } finally {
      await pem.remove();
    }
  },
});

Deno.test({
  name: "serve() with cert and key refuses plain TCP clients and keeps serving TLS ones",
  ignore: !OPENSSL,
  async fn() {
    const pem = await makeCert();
    try {
      await using server = serve({ port: 0, cert: pem.cert, key: pem.key, pingInterval: 20 });
      await using remote = await RemoteStream.connect({
        hostname: "localhost",
        port: server.addr.port,
        tls: true,
        caCerts: [pem.cert],
      });
      const inbox = new Inbox();
      await remote.listen("tls-job", inbox);
      await plainClientRefused(server.addr.port);
      // Some other protocol: refused the same way.
      await plainClientRefused(server.addr.port, "GET / HTTP/1.1\r\nHost: localhost\r\n\r\n");
      assertEquals(server.hub.info("tls-job")?.seq ?? 0, 0);
      // The TLS client on the same server still works, and a new one can connect.
      assertEquals((await remote.put("tls-job", "after")).seq, 1);
      assertEquals((await collect(inbox, 1))[0]?.message, "after");
      await roundTrip(server.addr.port, pem.cert);
      remote.endqueue(inbox);
      inbox.close();
    } finally {
      await pem.remove();
    }
  },
});

Deno.test({
  name: "A client that never starts its TLS handshake is cut after handshakeTimeout",
  ignore: !OPENSSL,
  async fn() {
    const pem = await makeCert();
    try {
      await using server = serve({ port: 0, cert: pem.cert, key: pem.key, handshakeTimeout: 50 });
      const raw = await connectRaw(server.addr.port);
      // It sends nothing at all: only the handshake timeout can end this connection. The server
      // lets go of it (its count of open connections falls back to 0) and closes the socket
      // (the door owns the TCP connection under TLS: tls_conn.ts), so the peer sees the end.
      await raw.ended();
      assertEquals([server.metrics.accepted.tcp, server.metrics.connections.tcp], [1, 0]);
      await raw.close();
      await roundTrip(server.addr.port, pem.cert);
    } finally {
      await pem.remove();
    }
  },
});

Deno.test({
  name:
    "Silent peers on the TLS port: at the handshake timeout the process releases their descriptors",
  ignore: !OPENSSL,
  async fn() {
    const pem = await makeCert();
    const fds = () => [...Deno.readDirSync("/proc/self/fd")].length;
    try {
      await using server = serve({ port: 0, cert: pem.cert, key: pem.key, handshakeTimeout: 100 });
      const before = fds();
      // 20 peers that never start their handshake, 20 that send the first bytes of one.
      const peers: Deno.TcpConn[] = [];
      for (let i = 0; i < 40; i++) {
        const c = await Deno.connect({ hostname: "127.0.0.1", port: server.addr.port });
        if (i % 2) await c.write(new Uint8Array([0x16, 0x03, 0x01, 0x00, 0xa5, 0x01]));
        peers.push(c);
      }
      await poll(() => server.metrics.accepted.tcp === 40, "the 40 peers to be accepted");
      // At the timeout the door lets go of them and this process holds only the peers' own 40
      // descriptors (a Deno.TlsConn kept the server's 40 until each peer sent or closed).
      await poll(() => server.metrics.connections.tcp === 0, "the door to let go of them");
      // At most: other descriptors of this process (an earlier test's socket still closing) may
      // go meanwhile; the door's 40 may not stay (they did: before + 80).
      await poll(() => fds() <= before + 40, () => `descriptors: ${fds()}, ${before} before`);
      for (const c of peers) c.close();
      await roundTrip(server.addr.port, pem.cert);
    } finally {
      await pem.remove();
    }
  },
});

Deno.test({
  name: "RemoteStream without tls fails to connect to a TLS server, and does not retry",
  ignore: !OPENSSL,
  async fn() {
    const pem = await makeCert();
    try {
      await using server = serve({ port: 0, cert: pem.cert, key: pem.key });
      const err = await assertRejects(
        () => RemoteStream.connect({ port: server.addr.port, reconnectTimeWait: 10 }),
        ProtocolError,
      );
      assertEquals(err.code, "not_connected");
      await roundTrip(server.addr.port, pem.cert);
      // One refused connection and the round trip's: no reconnect loop kept trying.
      assertEquals(server.metrics.accepted.tcp, 2);
    } finally {
      await pem.remove();
    }
  },
});

Deno.test({
  name: "The CLI --cert and --key serve TLS",
  ignore: !OPENSSL,
  async fn() {
    const pem = await makeCert();
    try {
      const child = new Deno.Command(Deno.execPath(), {
        args: [
          "run",
          "-N",
          "--allow-read",
          new URL("../server.ts", import.meta.url).pathname,
          "--port",
          "0",
          "--cert",
          pem.certFile,
          "--key",
          pem.keyFile,
        ],
        stdout: "piped",
        stderr: "piped",
        env: { NO_COLOR: "1" },
      }).spawn();
      const stderr = new Response(child.stderr).text();
      const lines = child.stdout.pipeThrough(new TextDecoderStream()).pipeThrough(
        new TextLineStream(),
      ).getReader();
      try {
        const first = await deadline(lines.read(), "the TLS server's first stdout line");
        const m = first.value?.match(/listening on tls:\/\/[^\s]+:(\d+)/);
        assert(m, `unexpected first line: ${first.value}`);
        const port = Number(m[1]);
        await roundTrip(port, pem.cert);
        await plainClientRefused(port);
        await roundTrip(port, pem.cert);
      } finally {
        child.kill("SIGTERM");
        await deadline(
          (async () => {
            while (!(await lines.read()).done) { /* drain */ }
          })(),
          "the TLS server to exit after SIGTERM",
        );
        const status = await deadline(child.status, "the TLS server's exit status");
        const err = await stderr;
        assertEquals(status.code, 0, err);
        assert(!err.includes("PRIVATE KEY"), "the server logged its key");
      }
    } finally {
      await pem.remove();
    }
  },
});
