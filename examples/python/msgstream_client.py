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

Run as a program it is a small command line whose commands mean what they mean in the
`msgstream` command line (cli.ts), and print the same JSON lines:

    python3 msgstream_client.py listen job42 [--since EPOCH:SEQ] [--count N] [--timeout MS]
    python3 msgstream_client.py put job42 '{"done": 1}'     # without MESSAGE: one per stdin line
    python3 msgstream_client.py header job42 '{"state": "running"}'
    python3 msgstream_client.py header job42                # print the header
    python3 msgstream_client.py header job42 --clear        # clear it
    python3 msgstream_client.py delete job42

with --server HOST:PORT (default $MSGSTREAM_SERVER or 127.0.0.1:51932), --token SECRET,
--tls and --ca FILE. Options go before or after the command, in any order; "--" makes the
arguments after it STREAM and MESSAGE even when they start with "-" (put job42 -- -5).
"""

import json
import os
import random
import socket
import ssl
import sys
import time
from collections import deque

__all__ = ["Client", "MsgStreamError", "ConnectionLost", "main"]

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

    Requests (put, header, delete, stat) wait for the server's answer. Events that arrive
    meanwhile are kept for listen(). One Client is for one thread.
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
        """Opens the connection and says hello (with the token, if any). Returns self.

        With tls (or a cafile) the server's certificate must chain to the cafile (or to the
        system's trusted authorities) and name the host: see docs/tls.md for certificates
        that every msgstream client accepts.
        """
        sock = socket.create_connection((self.host, self.port), timeout=self.timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self.tls:
            ctx = ssl.create_default_context(cafile=self.cafile)
            try:
                sock = ctx.wrap_socket(sock, server_hostname=self.host)
            except BaseException:
                sock.close()
                raise
        self._sock = sock
        self._buf = b""
        hello = {"action": "hello", "version": 1}
        if self.token is not None:
            hello["token"] = self.token
        try:
            self._request(hello)
        except BaseException:
            self._drop()
            raise
        return self

    def close(self):
        """Says goodbye and closes the connection."""
        if self._sock is not None:
            try:
                self._send({"action": "close"})
            except (OSError, ConnectionLost):
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

    def stat(self, stream):
        """Returns a stream's position and header: {"stream", "epoch", "seq", "header"}.

        "header" is None when none is set; the result is None when the stream does not exist
        (asking does not create it).
        """
        st = self._request({"action": "stat", "stream": stream}).get("stat")
        if st is None:
            return None
        return {"stream": stream, "epoch": st.get("epoch", ""), "seq": st.get("seq", 0),
                "header": st.get("header")}

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
        """Reads the next frame; answers pings; raises ConnectionLost at the end.

        Raises socket.timeout when no whole frame arrived within timeout seconds (None: wait).
        """
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

    def listen(self, *streams, since=None, stop_after=None):
        """Yields each event of the streams: {"stream", "kind", "seq", "epoch", "message"}.

        kind is "header" (first on join when one is set; again when it changes), "put", "end"
        (deleted: that stream yields nothing more) or "reset" (the resume position was not in
        the server's history; the header follows). since={"epoch": ..., "seq": ...} resumes
        one stream. Reconnects when the connection drops and resumes every stream from the
        last event received; raises ConnectionLost after max_reconnect_attempts failures.
        The generator ends when every stream has ended, or stop_after seconds after the call.
        """
        deadline = None if stop_after is None else time.monotonic() + stop_after
        for stream in streams:
            self._positions[stream] = dict(since) if since else None
        if self._sock is None:
            if not self._reconnect(first=True, deadline=deadline):
                return
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
            wait = None
            if deadline is not None:
                wait = deadline - time.monotonic()
                if wait <= 0:
                    return
            try:
                self._keep(self._read_frame(wait))
            except socket.timeout:
                continue  # the deadline is checked above
            except ConnectionLost as e:
                self.on_status("disconnected", str(e))
                if not self._reconnect(deadline=deadline):
                    return

    def _listen_upstream(self, stream):
        """Listens from the stream's last position received (or from now)."""
        frame = {"action": "listen", "stream": stream}
        pos = self._positions.get(stream)
        if pos:
            frame["since"] = {"epoch": pos["epoch"], "seq": pos["seq"]}
        ok = self._request(frame)
        if self._positions.get(stream) is None and stream in self._positions:
            self._positions[stream] = {"epoch": ok.get("epoch", ""), "seq": ok.get("seq", 0)}

    def _reconnect(self, first=False, deadline=None):
        """Connects and listens again; False when the deadline passed first."""
        attempt = 0
        while True:
            try:
                self.connect()
                for stream in list(self._positions):
                    self._listen_upstream(stream)
                self.on_status("connected" if first else "reconnected",
                               "%s:%d" % (self.host, self.port))
                return True
            except MsgStreamError as e:
                if e.code == "unauthorized" or first:
                    raise
                self._drop()
                err = e
            except (ConnectionLost, OSError) as e:
                if first:
                    raise ConnectionLost("Cannot connect to %s:%d: %s" % (self.host, self.port, e))
                self._drop()
                err = e
            attempt += 1
            if 0 <= self.max_reconnect_attempts < attempt:
                raise ConnectionLost("gave up reconnecting: %s" % err)
            self.on_status("reconnecting", "attempt %d: %s" % (attempt, err))
            pause = self.reconnect_wait + random.random() * 0.1
            if deadline is not None:
                pause = min(pause, deadline - time.monotonic())
                if pause <= 0:
                    return False
            time.sleep(pause)


# -- command line ------------------------------------------------------------------------------
#
# The commands, their options and their exit codes are those of the msgstream command line
# (cli.ts); tests/python_test.ts runs both on the same arguments and compares what they do.

_PROG = "msgstream_client.py"

_CONNECTION_HELP = """Connection options:
  --server HOST:PORT   the server (default $MSGSTREAM_SERVER, else %s)
  --token TOKEN        the token's secret; NAME:SECRET as given to "serve --token" works too
                       (default $MSGSTREAM_TOKEN)
  --tls                connect with TLS
  --ca FILE            trust this PEM CA certificate (implies --tls; see docs/tls.md)
  -h, --help           show this help

Options go before or after the command and its arguments, in any order. "--" makes the
arguments after it STREAM and MESSAGE even when they start with "-".
Exit codes: 0 done, 1 usage error, 2 connection or authorization failure.""" % DEFAULT_SERVER

_USAGE = """Usage: %s COMMAND [options]

Commands:
  listen STREAM...          print each event as one JSON line
  put STREAM [MESSAGE]      put a message, or one per line of stdin
  header STREAM [MESSAGE]   set (or --clear, or print) a stream's header
  delete STREAM             delete a stream; its listeners get an "end" event

Run "%s COMMAND --help" for a command's options.""" % (_PROG, _PROG)

_HELP = {
    "listen": """Usage: %s listen [options] STREAM...

Prints every event of the streams as one JSON object per line:
  {"stream":"job42","kind":"put","seq":3,"epoch":"a1b2c3d4e50","message":{"done":3}}
kind is "header" (first, when the stream has one; again when it changes; message null when
cleared), "put", "end" (the stream was deleted) or "reset" (the resume position given with
--since is no longer in the server's history; the header follows). Reconnects by itself and
resumes without gaps or duplicates. Exits 0 when --count puts arrived, when --timeout passed,
or when every stream ended.

Options:
  --since EPOCH:SEQ    resume after this position (one STREAM only)
  --count N            exit after N put events (over all streams)
  --timeout MS         exit after MS milliseconds
  --reconnect-attempts N
                       reconnect attempts after the connection drops before giving up
                       (exit 2); -1 never gives up (default 10)
  --reconnect-wait MS  milliseconds between reconnect attempts (default 2000)
""",
    "put": """Usage: %s put [options] STREAM [MESSAGE]

Puts MESSAGE on STREAM. MESSAGE is parsed as JSON; text that is not JSON is sent as a JSON
string (put job42 hello sends "hello", put job42 42 the number 42). Without MESSAGE, puts one
message per line of stdin, in order, as lines arrive. Use -- before a MESSAGE that starts
with "-".

Options:
  --raw                send MESSAGE, or each line, as a string without parsing it as JSON
  --max-line-bytes N   longest stdin line, in bytes; a longer one stops the command with exit
                       code 1 after the lines before it are sent (default 1048576, the
                       server's default limit)
""",
    "header": """Usage: %s header [options] STREAM [MESSAGE]

Sets STREAM's header (the status snapshot each listener gets first) to MESSAGE, parsed as JSON
like put's. With --clear, clears it. With neither, prints the current header as one JSON line
("message" is null when none is set).

Options:
  --clear              clear the header
  --raw                send MESSAGE as a string without parsing it as JSON
""",
    "delete": """Usage: %s delete [options] STREAM

Deletes STREAM: its header and history go, and each listener gets an "end" event.
""",
}

# Options every command takes: name -> whether it takes a value.
_CONNECTION_OPTIONS = {
    "server": True, "token": True, "tls": False, "ca": True, "help": False,
}
# command -> (its own options, fewest arguments after it, most arguments (None: any number)).
_COMMANDS = {
    "listen": ({"since": True, "count": True, "timeout": True, "reconnect-attempts": True,
                "reconnect-wait": True}, 1, None),
    "put": ({"raw": False, "max-line-bytes": True}, 1, 2),
    "header": ({"clear": False, "raw": False}, 1, 2),
    "delete": ({}, 1, 1),
}
_ALL_OPTIONS = dict(_CONNECTION_OPTIONS)
for _own, _fewest, _most in _COMMANDS.values():
    _ALL_OPTIONS.update(_own)


class _UsageError(Exception):
    def __init__(self, message, command=None):
        super().__init__(message)
        self.command = command


def _parse(argv):
    """Splits argv into (command, its arguments, {option: value}).

    Options may come anywhere: before the command, between arguments, after them. "--" makes
    the following words arguments (even "-5") until the command has all it takes; then options
    are read again, so "put job42 -- -5 --raw" works.
    """
    words = []  # the command, then its arguments
    given = []  # (name, value, as written)
    literal = False
    i = 0
    while i < len(argv):
        arg = argv[i]
        i += 1
        if literal:
            if _has_room(words):
                words.append(arg)
                continue
            literal = False
        if arg == "--":
            literal = True
            continue
        if not arg.startswith("-"):
            words.append(arg)
            continue
        if arg in ("-h", "--help"):
            given.append(("help", True, arg))
            continue
        name, sep, value = arg[2:].partition("=") if arg.startswith("--") else ("", "", "")
        takes_value = _ALL_OPTIONS.get(name)
        if takes_value is None:
            given.append((None, None, arg))
            continue
        if not takes_value:
            if sep:
                raise _UsageError('--%s takes no value, got "%s"' % (name, arg), _first(words))
            value = True
        elif not sep:
            if i >= len(argv):
                raise _UsageError("--%s needs a value" % name, _first(words))
            value = argv[i]
            i += 1
        given.append((name, value, arg))
    command = _first(words)
    allowed = dict(_CONNECTION_OPTIONS)
    if command in _COMMANDS:
        allowed.update(_COMMANDS[command][0])
    options = {}
    for name, value, written in given:
        if name not in allowed:
            where = " for %s" % command if command in _COMMANDS else ""
            raise _UsageError('Unknown option "%s"%s' % (written, where), command)
        options[name] = value
    return command, words[1:], options


def _first(words):
    return words[0] if words else None


def _has_room(words):
    """Whether the command (or, before it, the command word) takes one more argument."""
    if not words:
        return True
    spec = _COMMANDS.get(words[0])
    return spec is not None and (spec[2] is None or len(words) - 1 < spec[2])


def _message(text, raw):
    """Parses MESSAGE as JSON; text that is not JSON is sent as a string."""
    if raw:
        return text
    try:
        return json.loads(text)
    except ValueError:
        return text


def _int_option(options, name, least):
    value = options.get(name)
    if value is None:
        return None
    try:
        n = int(value.strip())
    except ValueError:
        n = None
    if n is None or n < least:
        raise _UsageError('--%s must be an integer of at least %d, got "%s"' % (name, least, value))
    return n


def _since(text):
    epoch, sep, seq = text.rpartition(":")
    if not sep or not epoch or not seq.isdigit():
        raise _UsageError('--since must be EPOCH:SEQ (e.g. "a1b2c3d4e50:17"), got "%s"' % text)
    return {"epoch": epoch, "seq": int(seq)}


def _address(text):
    host, sep, port = text.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise _UsageError('--server must be HOST:PORT, got "%s"' % text)
    return host, int(port)


def _secret(token):
    """NAME:SECRET, as given to the server's --token, sends SECRET."""
    i = token.find(":")
    return token[i + 1:] if 0 < i < len(token) - 1 else token


def _print_json(obj):
    """Writes one JSON line (UTF-8, like the msgstream command line); False if stdout is gone."""
    line = json.dumps(obj, ensure_ascii=False, separators=(",", ":")) + "\n"
    try:
        sys.stdout.buffer.write(line.encode("utf-8"))
        sys.stdout.buffer.flush()
        return True
    except BrokenPipeError:
        # The reader left (e.g. | head -1): no traceback when Python flushes stdout at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return False


def _error(message):
    print("msgstream_client: %s" % message, file=sys.stderr, flush=True)


def _put_lines(client, stream, raw, max_line_bytes):
    """Puts each line of stdin, in order, as lines arrive; stops at a line that is too long."""
    n = 0
    while True:
        # The limit counts the bytes before "\n" (a "\r" too, as the server's does); a longer
        # line is never held whole.
        line = sys.stdin.buffer.readline(max_line_bytes + 1)
        if not line:
            return
        n += 1
        end = len(line) - 1 if line.endswith(b"\n") else len(line)
        if end > max_line_bytes:
            raise _UsageError("Line %d of stdin not sent: longer than %d bytes (see "
                              "--max-line-bytes)" % (n, max_line_bytes))
        if line[:end].endswith(b"\r"):
            end -= 1
        text = line[:end].decode("utf-8", "replace")
        client.put(stream, _message(text, raw))


def _connect(client, address):
    try:
        client.connect()
    except MsgStreamError as e:
        why = "%s: %s" % (e.code, e.message)
        if e.code == "unauthorized" and client.token is None:
            why += " (the server requires a token: give --token)"
        raise ConnectionLost("Cannot connect to %s: %s" % (address, why))
    except (OSError, ConnectionLost) as e:
        raise ConnectionLost("Cannot connect to %s: %s" % (address, e))


def _run(command, words, options):
    if command == "listen":
        if not words:
            raise _UsageError("listen needs at least one STREAM")
        count = _int_option(options, "count", 1)
        timeout = _int_option(options, "timeout", 0)
        since = None
        if options.get("since") is not None:
            if len(words) != 1:
                raise _UsageError("--since takes exactly one STREAM")
            since = _since(options["since"])
    else:
        if not words:
            raise _UsageError("%s needs a STREAM" % command)
        if command == "delete" and len(words) > 1:
            raise _UsageError("delete takes one STREAM")
        if len(words) > 2:
            raise _UsageError("%s takes one MESSAGE (quote it), got %d" % (command, len(words) - 1))
        if command == "header" and options.get("clear") and len(words) == 2:
            raise _UsageError("header takes a MESSAGE or --clear, not both")
    attempts = _int_option(options, "reconnect-attempts", -1)
    wait = _int_option(options, "reconnect-wait", 0)
    max_line_bytes = _int_option(options, "max-line-bytes", 1)
    address = options.get("server")
    if address is None:
        address = os.environ.get("MSGSTREAM_SERVER") or DEFAULT_SERVER
    host, port = _address(address)
    token = options.get("token")
    if token is None:
        token = os.environ.get("MSGSTREAM_TOKEN") or None
    if token is not None:
        token = _secret(token)

    def status(kind, detail):
        _error("%s %s" % (kind, detail))

    client = Client(host, port, token=token, tls=bool(options.get("tls")), cafile=options.get("ca"),
                    reconnect_wait=2.0 if wait is None else wait / 1000.0,
                    max_reconnect_attempts=10 if attempts is None else attempts, on_status=status)
    try:
        if command == "listen":
            puts = 0
            stop_after = None if timeout is None else timeout / 1000.0
            try:
                for ev in client.listen(*words, since=since, stop_after=stop_after):
                    if not _print_json(ev):
                        break
                    if ev["kind"] == "put":
                        puts += 1
                        if count is not None and puts >= count:
                            break
            except MsgStreamError as e:
                if e.code == "unauthorized" and token is None:
                    raise ConnectionLost("Cannot connect to %s: %s: %s (the server requires a "
                                         "token: give --token)" % (address, e.code, e.message))
                raise
            return 0
        _connect(client, address)
        stream = words[0]
        message = words[1] if len(words) > 1 else None
        raw = bool(options.get("raw"))
        if command == "put":
            if message is not None:
                client.put(stream, _message(message, raw))
            else:
                _put_lines(client, stream, raw, max_line_bytes or 1 << 20)
        elif command == "header":
            if options.get("clear"):
                client.header(stream, None)
            elif message is not None:
                client.header(stream, _message(message, raw))
            else:
                # A stream that does not exist: seq 0, epoch null, no header.
                st = client.stat(stream) or {"seq": 0, "epoch": None, "header": None}
                _print_json({"stream": stream, "kind": "header", "seq": st["seq"],
                             "epoch": st["epoch"], "message": st["header"]})
        elif command == "delete":
            client.delete(stream)
        return 0
    finally:
        client.close()


def main(argv=None):
    """Runs the command line; returns the exit code (0 done, 1 usage, 2 connection)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    command = None
    try:
        command, words, options = _parse(argv)
        if options.get("help"):
            text = _HELP.get(command)
            print(text % _PROG + "\n" + _CONNECTION_HELP if text else _USAGE)
            return 0
        if command not in _COMMANDS:
            _error("no command given" if command is None else 'unknown command "%s"' % command)
            print("\n" + _USAGE, file=sys.stderr)
            return 1
        return _run(command, words, options)
    except _UsageError as e:
        _error(str(e))
        command = e.command or command
        where = " %s" % command if command in _COMMANDS else ""
        print('Run "%s%s --help" for usage.' % (_PROG, where), file=sys.stderr, flush=True)
        return 1
    except MsgStreamError as e:
        where = "" if e.stream is None else ' (stream "%s")' % e.stream
        _error("Server refused%s: %s: %s" % (where, e.code, e.message))
        return 1 if e.code in ("invalid_stream", "invalid_since") else 2
    except (ConnectionLost, OSError) as e:
        _error(str(e))
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
