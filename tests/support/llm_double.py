"""A stand-in for an LLM server (llama.cpp's llama-server, vLLM): standard library only, Python 3.8+.

    python3 tests/support/llm_double.py --port N [--host 127.0.0.1] [--load-time SECS]
                                        [--never-healthy] [--crash-after-bind | --crash-after SECS]

It binds HOST:N itself (as LLM servers do; it knows nothing of llmlb), prints one line on stderr once
it listens (``llm_double listening on 127.0.0.1:N pid P``) and serves HTTP/1.1 with keep-alive:

- ``GET /health``: 503 ``{"status":"loading model"}`` until ``--load-time`` seconds after start (for
  ever with ``--never-healthy``), then 200 ``{"status":"ok"}``, as llama-server answers while loading;
- ``GET /`` or ``/hello``: 200, a short body naming its PID and port (and header ``X-Served-By: PID``,
  on every response), so a client can tell which instance served it;
- ``GET /bytes?n=N``: N bytes (a big response);
- ``GET /sse?tokens=K&rate=R``: ``text/event-stream``, K events ``data: token i`` at R per second, then
  ``data: [DONE]``, then the connection closes (the stream is close-delimited);
- ``POST /echo``: the request body back (Content-Length required);
- ``GET /upgrade`` with ``Connection: Upgrade`` and ``Upgrade: X``: ``101 Switching Protocols``, then
  every byte it receives is echoed until the client half-closes, and then it half-closes too (a
  WebSocket-style upgrade, seen as raw TCP).

Faults: ``--crash-after-bind`` exits 1 right after it binds and listens (before it answers anything),
``--crash-after SECS`` exits 1 SECS after start, in the middle of whatever it serves.

SIGTERM (or SIGINT) is a graceful shutdown, as real servers do it: it stops accepting (the listening
socket is closed), finishes every request in flight (an SSE stream to its ``[DONE]``, an upgraded
connection until the client closes it), answers the next request on a keep-alive connection with
``Connection: close`` and closes idle keep-alive connections at the request boundary, then exits 0.
"""

import argparse
import json
import os
import select
import signal
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

# Set once SIGTERM arrives: every connection ends at its next request boundary.
DRAINING = threading.Event()
# How long a keep-alive connection may sit idle between requests.
IDLE_TIMEOUT = 120.0
# How often an idle connection looks at DRAINING.
IDLE_POLL = 0.05
CHUNK = b"x" * 65536


def readable(sock, timeout):
    """Whether `sock` has bytes (or EOF) within `timeout` seconds (poll: no FD_SETSIZE limit)."""
    if hasattr(select, "poll"):
        p = select.poll()
        p.register(sock, select.POLLIN)
        return bool(p.poll(timeout * 1000))
    return bool(select.select([sock], [], [], timeout)[0])


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # A request that stalls half-sent costs its thread this long at most.
    timeout = 30
    # Set by main().
    started = 0.0
    load_time = 0.0
    never_healthy = False

    def handle(self):
        # BaseHTTPRequestHandler.handle, with a wait between requests that gives up at a request
        # boundary once DRAINING is set, so an idle keep-alive connection cannot hold shutdown up.
        self.close_connection = True
        while self.wait_for_request():
            self.handle_one_request()
            if self.close_connection:
                break

    def wait_for_request(self):
        """True once the next request's first byte is here; False at EOF, idle timeout or drain."""
        sock = self.connection
        idle_since = time.monotonic()
        while True:
            # A non-blocking peek sees bytes already buffered (a pipelined request) as well as
            # bytes in the socket, and consumes nothing.
            sock.setblocking(False)
            try:
                ahead = self.rfile.peek(1)
            except OSError:
                return False
            finally:
                sock.settimeout(self.timeout)
            if ahead:
                return True
            if DRAINING.is_set() or time.monotonic() - idle_since > IDLE_TIMEOUT:
                return False
            if readable(sock, IDLE_POLL):
                try:
                    return bool(self.rfile.peek(1))  # bytes, or b"" at EOF
                except OSError:
                    return False

    def end_headers(self):
        self.send_header("X-Served-By", str(os.getpid()))
        if DRAINING.is_set() and not self.close_connection:
            self.send_header("Connection", "close")
            self.close_connection = True
        super().end_headers()

    def reply(self, status, body, content_type="text/plain"):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        url = urlsplit(self.path)
        query = parse_qs(url.query)

        def number(name, default, kind=int):
            try:
                return kind(query.get(name, [default])[0])
            except ValueError:
                return None

        if url.path == "/health":
            loaded = time.monotonic() - self.started >= self.load_time
            if loaded and not self.never_healthy:
                self.reply(200, b'{"status":"ok"}', "application/json")
            else:
                self.reply(503, b'{"status":"loading model"}', "application/json")
        elif url.path in ("/", "/hello"):
            port = self.server.server_address[1]
            body = "hello from llm_double pid {} port {}\n".format(os.getpid(), port)
            self.reply(200, body.encode())
        elif url.path == "/bytes":
            n = number("n", "1024")
            if n is None or n < 0:
                self.reply(400, b"n must be a whole number of bytes\n")
                return
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(n))
            self.end_headers()
            view = memoryview(CHUNK)
            while n > 0:
                step = min(n, len(CHUNK))
                self.wfile.write(view[:step])
                n -= step
        elif url.path == "/sse":
            tokens = number("tokens", "10")
            rate = number("rate", "10", float)
            if tokens is None or rate is None or tokens < 0 or rate <= 0:
                self.reply(400, b"tokens must be >= 0 and rate > 0\n")
                return
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Cache-Control", "no-cache")
            # Close-delimited: no length to announce, and no chunked framing to get wrong.
            self.send_header("Connection", "close")
            self.close_connection = True
            self.end_headers()
            self.wfile.flush()
            for i in range(tokens):
                time.sleep(1.0 / rate)
                self.wfile.write("data: token {}\n\n".format(i).encode())
                self.wfile.flush()
            self.wfile.write(b"data: [DONE]\n\n")
            self.wfile.flush()
        elif url.path == "/upgrade":
            self.upgrade()
        else:
            self.reply(404, b"not found\n")

    def do_POST(self):
        if urlsplit(self.path).path != "/echo":
            self.reply(404, b"not found\n")
            return
        length = self.headers.get("Content-Length")
        if length is None or not length.isdigit():
            self.reply(411, b"POST /echo needs a Content-Length\n")
            return
        body = self.rfile.read(int(length))
        self.reply(200, body, self.headers.get("Content-Type", "application/octet-stream"))

    def upgrade(self):
        connection = self.headers.get("Connection", "").lower()
        protocol = self.headers.get("Upgrade")
        if "upgrade" not in [t.strip() for t in connection.split(",")] or not protocol:
            self.reply(426, b"send Connection: Upgrade and Upgrade: <protocol>\n")
            return
        self.send_response(101)
        self.send_header("Upgrade", protocol)
        self.send_header("Connection", "Upgrade")
        self.close_connection = True  # after the raw echo, never HTTP again
        self.end_headers()
        self.wfile.flush()
        sock = self.connection
        sock.settimeout(None)  # an upgraded connection may sit idle as long as its client likes
        while True:
            # read1: what is there (buffered bytes first), without waiting for a full buffer.
            data = self.rfile.read1(65536)
            if not data:
                break
            sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)

    def log_message(self, format, *args):  # noqa: A002 (the base class's name)
        pass


class Server(ThreadingHTTPServer):
    # Non-daemon handler threads, joined by server_close(): every accepted connection is served
    # to its end before the process exits.
    daemon_threads = False
    block_on_close = True
    request_queue_size = 1024


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--load-time", type=float, default=0.0, metavar="SECS")
    parser.add_argument("--never-healthy", action="store_true")
    crash = parser.add_mutually_exclusive_group()
    crash.add_argument("--crash-after-bind", action="store_true")
    crash.add_argument("--crash-after", type=float, metavar="SECS")
    args = parser.parse_args()

    Handler.started = time.monotonic()
    Handler.load_time = args.load_time
    Handler.never_healthy = args.never_healthy
    # Blocked before any thread exists, so every thread inherits the mask and SIGTERM waits for
    # sigwait below instead of interrupting a handler.
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
    try:
        server = Server((args.host, args.port), Handler)
    except OSError as e:
        sys.stderr.write("llm_double: cannot listen on {}:{}: {}\n".format(args.host, args.port, e))
        return 1
    host, port = server.server_address[:2]
    sys.stderr.write("llm_double listening on {}:{} pid {}\n".format(host, port, os.getpid()))
    sys.stderr.flush()
    if args.crash_after_bind:
        sys.stderr.write("llm_double: crashing after bind (--crash-after-bind)\n")
        sys.stderr.flush()
        os._exit(1)
    if args.crash_after is not None:
        def crash_now():
            sys.stderr.write("llm_double: crashing (--crash-after {})\n".format(args.crash_after))
            sys.stderr.flush()
            os._exit(1)

        timer = threading.Timer(args.crash_after, crash_now)
        timer.daemon = True
        timer.start()
    # A short poll: shutdown() waits for serve_forever to look again.
    serving = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02})
    serving.start()
    signal.sigwait({signal.SIGTERM, signal.SIGINT})
    DRAINING.set()
    server.shutdown()  # stops accepting; serve_forever returns
    serving.join()
    server.socket.close()  # new connections are refused from here on
    server.server_close()  # joins every handler thread (each ends at a request boundary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
