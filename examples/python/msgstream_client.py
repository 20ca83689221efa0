#!/usr/bin/env python3
"""A small msgstream client in plain Python 3 (3.8+, standard library only).

It speaks the msgstream wire protocol: one UTF-8 JSON object per line over TCP (or TLS).

    from msgstream_client import Client

    with Client("127.0.0.1", 51932) as c:
        c.header("job42", {"state": "running"})
        seq = c.put("job42", {"done": 1})
        for ev in c.listen("job42"):          # header first, then every later put
            print(ev["kind"], ev["seq"], ev["message"])

listen() reconnects by itself when the connection drops (a server restart) and resumes each
stream from the last event it yielded, so no put is lost or repeated while the server's history
covers the outage; when it does not, a "reset" event comes first, then the header.

Run as a program it is a small command line (the same JSON lines as `msgstream listen`):

    python3 msgstream_client.py listen job42 [--since EPOCH:SEQ] [--count N]
    python3 msgstream_client.py put job42 '{"done": 1}'
    python3 msgstream_client.py header job42 '{"state": "running"}'
    python3 msgstream_client.py delete job42

with --server HOST:PORT (default $MSGSTREAM_SERVER or 127.0.0.1:51932), --token SECRET,
--tls and --ca FILE.
"""

import argparse
import json
import os
import random
import socket
import ssl
import sys
import time
from collections import deque

__all__ = ["Client", "MsgStreamError", "ConnectionLost"]

DEFAULT_SERVER = "127.0.0.1:51932"


class MsgStreamError(Exception):
    """The server answered a request with an error frame."""

    def __init__(self, code, message, stream=None):
        super().__init__("%s: %s" % (code, message))
        self.code = code
        self.message = message
        self.stream = stream


class ConnectionLost(Exception):
    """The connection ended (server gone, restarted or shutting down)."""


class Client:
    """One connection to a msgstream server.

    Requests (put, header, delete) wait for the server's answer. Events that arrive meanwhile are
    kept for listen(). One Client is for one thread.
    """

    # The last position received of each followed stream: {"epoch": str, "seq": int}, or None
    # until the server answers the listen.

    def __init__(self, host="127.0.0.1", port=51932, token=None, tls=False, cafile=None,
                 timeout=10.0, reconnect_wait=0.5, max_reconnect_attempts=10, on_status=None):
        self.host = host
        self.port = int(port)
        self.token = token
        self.tls = tls or cafile is not None
        self.cafile = cafile
        self.timeout = timeout
        self.reconnect_wait = reconnect_wait
        self.max_reconnect_attempts = max_reconnect_attempts
        self.on_status = on_status or (lambda status, detail: None)
        self._sock = None
        self._buf = b""
        self._events = deque()
        self._next_id = 1
        self._positions = {}

    # -- connection ------------------------------------------------------------------------

    def connect(self):
        """Opens the connection and says hello (with the token, if any). Returns self."""
        sock = socket.create_connection((self.host, self.port), timeout=self.timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self.tls:
            ctx = ssl.create_default_context(cafile=self.cafile)
            sock = ctx.wrap_socket(sock, server_hostname=self.host)
        self._sock = sock
        self._buf = b""
        hello = {"action": "hello", "version": 1}
        if self.token is not None:
            hello["token"] = self.token
        try:
            self._request(hello)
        except Exception:
            self._drop()
            raise
        return self

    def close(self):
        """Says goodbye and closes the connection."""
        if self._sock is not None:
            try:
                self._send({"action": "close"})
            except OSError:
                pass
            self._drop()

    def __enter__(self):
        if self._sock is None:
            self.connect()
        return self

    def __exit__(self, *exc):
        self.close()

    def _drop(self):
        if self._sock is not None:
            try:
                self._sock.close()
            except OSError:
                pass
        self._sock = None

    # -- requests ------------------------------------------------------------------------------

    def put(self, stream, message):
        """Puts a message on a stream; returns its seq."""
        return self._request({"action": "put", "stream": stream, "message": message}).get("seq")

    def header(self, stream, message):
        """Sets a stream's header; None clears it."""
        self._request({"action": "header", "stream": stream, "message": message})

    def delete(self, stream):
        """Deletes a stream: its listeners get an "end" event."""
        self._request({"action": "delete", "stream": stream})

    def _send(self, frame):
        data = (json.dumps(frame, separators=(",", ":")) + "\n").encode("utf-8")
        if self._sock is None:
            raise ConnectionLost("not connected")
        try:
            self._sock.sendall(data)
        except OSError as e:
            self._drop()
            raise ConnectionLost(str(e))

    def _request(self, frame):
        """Sends a frame with an id and returns the "ok" frame that answers it."""
        frame["id"] = self._next_id
        self._next_id += 1
        self._send(frame)
        while True:
            f = self._read_frame(self.timeout)
            if f.get("id") == frame["id"] and f.get("action") in ("ok", "error"):
                if f["action"] == "error":
                    raise MsgStreamError(f.get("code"), f.get("message"), f.get("stream"))
                return f
            self._keep(f)

    # -- reading ---------------------------------------------------------------------------

    def _read_frame(self, timeout):
        """Reads the next frame; answers pings; raises ConnectionLost at the end."""
        while True:
            i = self._buf.find(b"\n")
            if i >= 0:
                line, self._buf = self._buf[:i], self._buf[i + 1:]
                if not line.strip():
                    continue
                f = json.loads(line.decode("utf-8"))
                action = f.get("action")
                if action == "ping":
                    self._send({"action": "pong"})
                    continue
                if action == "close":
                    self._drop()
                    raise ConnectionLost("server closed the connection")
                if action == "error" and f.get("id") is None:
                    # Not an answer: the server is cutting us off (e.g. slow_consumer).
                    self._drop()
                    raise ConnectionLost("%s: %s" % (f.get("code"), f.get("message")))
                return f
            if self._sock is None:
                raise ConnectionLost("not connected")
            try:
                self._sock.settimeout(timeout)
                chunk = self._sock.recv(65536)
            except socket.timeout:
                raise
            except OSError as e:
                self._drop()
                raise ConnectionLost(str(e))
            if not chunk:
                self._drop()
                raise ConnectionLost("connection closed by the server")
            self._buf += chunk

    def _keep(self, f):
        """Keeps an event frame for listen(), as an event dict, dropping replayed puts."""
        action = f.get("action")
        kind = {"put": "put", "header": "header", "delete": "end", "reset": "reset"}.get(action)
        stream = f.get("stream")
        if kind is None or stream not in self._positions:
            return
        if action == "put" and f.get("header") is True:
            kind = "header"  # the join header comes as a put marked "header": true
        ev = {
            "stream": stream,
            "kind": kind,
            "seq": f.get("seq", 0),
            "epoch": f.get("epoch", ""),
            "message": f.get("message"),
        }
        pos = self._positions[stream]
        if kind == "put" and pos and pos["epoch"] == ev["epoch"] and 0 < ev["seq"] <= pos["seq"]:
            return  # a replay overlapping what we already have
        if kind == "end":
            del self._positions[stream]
        else:
            self._positions[stream] = {"epoch": ev["epoch"], "seq": ev["seq"]}
        self._events.append(ev)

    # -- listening -------------------------------------------------------------------------

    def listen(self, *streams, since=None):
        """Yields each event of the streams: {"stream", "kind", "seq", "epoch", "message"}.

        kind is "header" (first on join when one is set; again when it changes), "put", "end"
        (deleted: that stream yields nothing more) or "reset" (the resume position was not in
        the server's history; the header follows). since={"epoch": ..., "seq": ...} resumes
        one stream. Reconnects when the connection drops and resumes every stream from the
        last event received; raises ConnectionLost after max_reconnect_attempts failures.
        The generator ends when every stream has ended.
        """
        for stream in streams:
            self._positions[stream] = dict(since) if since else None
        if self._sock is None:
            self._reconnect(first=True)
        else:
            for stream in streams:
                self._listen_upstream(stream)
        open_streams = set(streams)
        while open_streams:
            while self._events:
                ev = self._events.popleft()
                if ev["stream"] not in open_streams:
                    continue
                if ev["kind"] == "end":
                    open_streams.discard(ev["stream"])
                yield ev
                if not open_streams:
                    return
            try:
                self._keep(self._read_frame(None))
            except ConnectionLost as e:
                self.on_status("disconnected", str(e))
                self._reconnect()

    def _listen_upstream(self, stream):
        """Listens from the stream's last position received (or from now)."""
        frame = {"action": "listen", "stream": stream}
        pos = self._positions.get(stream)
        if pos:
            frame["since"] = {"epoch": pos["epoch"], "seq": pos["seq"]}
        ok = self._request(frame)
        if self._positions.get(stream) is None and stream in self._positions:
            self._positions[stream] = {"epoch": ok.get("epoch", ""), "seq": ok.get("seq", 0)}

    def _reconnect(self, first=False):
        attempt = 0
        while True:
            try:
                self.connect()
                for stream in list(self._positions):
                    self._listen_upstream(stream)
                self.on_status("connected" if first else "reconnected",
                               "%s:%d" % (self.host, self.port))
                return
            except MsgStreamError as e:
                if e.code == "unauthorized" or first:
                    raise
                self._drop()
                err = e
            except (ConnectionLost, OSError) as e:
                if first:
                    raise ConnectionLost("cannot connect to %s:%d: %s" % (self.host, self.port, e))
                self._drop()
                err = e
            attempt += 1
            if 0 <= self.max_reconnect_attempts < attempt:
                raise ConnectionLost("gave up reconnecting: %s" % err)
            self.on_status("reconnecting", "attempt %d: %s" % (attempt, err))
            time.sleep(self.reconnect_wait + random.random() * 0.1)


# -- command line ------------------------------------------------------------------------------

def _message(text, raw):
    """Parses MESSAGE as JSON; text that is not JSON is sent as a string."""
    if raw:
        return text
    try:
        return json.loads(text)
    except ValueError:
        return text


def _since(text):
    epoch, sep, seq = text.rpartition(":")
    if not sep or not epoch or not seq.isdigit():
        raise argparse.ArgumentTypeError('must be EPOCH:SEQ, got "%s"' % text)
    return {"epoch": epoch, "seq": int(seq)}


class _Parser(argparse.ArgumentParser):
    """Usage errors exit 1, like the msgstream command line (argparse's own default is 2)."""

    def error(self, message):
        self.print_usage(sys.stderr)
        self.exit(1, "%s: error: %s\n" % (self.prog, message))


def main(argv=None):
    p = _Parser(prog="msgstream_client.py", description="A msgstream client.")
    p.add_argument("--server", default=os.environ.get("MSGSTREAM_SERVER", DEFAULT_SERVER),
                   help="HOST:PORT (default $MSGSTREAM_SERVER or %s)" % DEFAULT_SERVER)
    p.add_argument("--token", default=os.environ.get("MSGSTREAM_TOKEN"),
                   help="the token's secret (default $MSGSTREAM_TOKEN)")
    p.add_argument("--tls", action="store_true", help="connect with TLS")
    p.add_argument("--ca", help="trust this PEM CA certificate (implies --tls)")
    p.add_argument("--reconnect-wait", type=float, default=0.5, metavar="SECONDS")
    p.add_argument("--max-reconnect-attempts", type=int, default=20, metavar="N",
                   help="-1: never give up (default 20)")
    sub = p.add_subparsers(dest="command", required=True)
    ls = sub.add_parser("listen", help="print each event as one JSON line")
    ls.add_argument("streams", nargs="+", metavar="STREAM")
    ls.add_argument("--since", type=_since, help="resume one STREAM after EPOCH:SEQ")
    ls.add_argument("--count", type=int, help="exit after N put events")
    for name in ("put", "header"):
        sp = sub.add_parser(name, help="%s a message (JSON, else a string)" % name)
        sp.add_argument("stream", metavar="STREAM")
        sp.add_argument("message", metavar="MESSAGE", nargs="?" if name == "header" else None)
        sp.add_argument("--raw", action="store_true", help="send MESSAGE as a string")
    sub.add_parser("delete", help="delete a stream").add_argument("stream", metavar="STREAM")
    args = p.parse_args(argv)
    if args.command == "listen" and args.since and len(args.streams) != 1:
        p.error("--since takes exactly one STREAM")

    host, _, port = args.server.rpartition(":")
    if not host or not port.isdigit():
        p.error('--server must be HOST:PORT, got "%s"' % args.server)
    token = args.token
    if token and ":" in token.strip(":"):
        token = token.split(":", 1)[1]  # NAME:SECRET, as given to the server, sends SECRET

    def status(kind, detail):
        print("msgstream_client: %s %s" % (kind, detail), file=sys.stderr, flush=True)

    client = Client(host.strip("[]"), int(port), token=token, tls=args.tls, cafile=args.ca,
                    reconnect_wait=args.reconnect_wait,
                    max_reconnect_attempts=args.max_reconnect_attempts, on_status=status)
    try:
        if args.command == "listen":
            puts = 0
            for ev in client.listen(*args.streams, since=args.since):
                print(json.dumps(ev, separators=(",", ":")), flush=True)
                if ev["kind"] == "put":
                    puts += 1
                    if args.count is not None and puts >= args.count:
                        break
            return 0
        client.connect()
        if args.command == "put":
            client.put(args.stream, _message(args.message, args.raw))
        elif args.command == "header":
            client.header(args.stream, None if args.message is None
                          else _message(args.message, args.raw))
        elif args.command == "delete":
            client.delete(args.stream)
        return 0
    except (ConnectionLost, OSError, MsgStreamError) as e:
        print("msgstream_client: %s" % e, file=sys.stderr, flush=True)
        return 2
    except KeyboardInterrupt:
        return 130
    finally:
        client.close()


if __name__ == "__main__":
    sys.exit(main())
