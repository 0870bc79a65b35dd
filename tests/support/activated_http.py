#!/usr/bin/env python3
"""activated_http.py [PORT]: a small socket-activated HTTP server for tests
and benchmarks of `llmlb serve --replace` in exec mode.

- Listens on descriptor 3 when it was passed to *this* process
  (`LISTEN_FDS=1` and `LISTEN_PID` = its PID, the socket-activation
  protocol that `llmlb serve --pass-socket -- CMD` and `--replace` speak);
  otherwise binds PORT (else `LLMLB_PORT`) on `LLMLB_HOST` (else 127.0.0.1).
  Any other `LISTEN_FDS` for it exits 2: a server that silently bound a
  socket of its own would hide a broken handover.
- Answers every GET with `{"pid": <its PID>, "path": <the path>}`, so a
  client can tell which server answered.
- On SIGTERM or SIGINT it stops accepting and finishes every request it
  accepted, including one whose request is still arriving, then exits 0.
  A connection it did not accept stays in the kernel's queue of the shared
  socket, where the successor accepts it: nothing is refused.

Threads, one per connection (ThreadingHTTPServer), joined at the end
(block_on_close): a slow client never holds up the others, and the exit
waits for all of them. HTTP/1.0, one request per connection: no idle
keep-alive connection can hold up the exit.
"""

import json
import os
import signal
import socket
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

# How often serve_forever looks whether it was told to stop.
POLL_INTERVAL = 0.05
# A client that sends nothing for this long is dropped (a stalled client
# would otherwise hold up the exit until llmlb's SIGKILL).
CLIENT_TIMEOUT = 30


def listening_socket() -> socket.socket:
    fds = os.environ.get("LISTEN_FDS")
    if fds is not None and os.environ.get("LISTEN_PID") == str(os.getpid()):
        if fds != "1":
            sys.stderr.write("activated_http.py: expected LISTEN_FDS=1, got %r\n" % fds)
            sys.exit(2)
        sock = socket.socket(fileno=3)
        if sock.type != socket.SOCK_STREAM:
            sys.stderr.write("activated_http.py: descriptor 3 is not a stream socket\n")
            sys.exit(2)
        # Not for our children (there are none, but a socket server's
        # descriptors are its own).
        sock.set_inheritable(False)
        return sock
    if len(sys.argv) > 1:
        port = int(sys.argv[1])
    elif "LLMLB_PORT" in os.environ:
        port = int(os.environ["LLMLB_PORT"])
    else:
        sys.stderr.write("usage: activated_http.py [PORT] (or LISTEN_FDS=1 / LLMLB_PORT)\n")
        sys.exit(2)
    host = os.environ.get("LLMLB_HOST", "127.0.0.1")
    return socket.create_server((host, port), backlog=128)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"
    timeout = CLIENT_TIMEOUT

    def do_GET(self):
        body = json.dumps({"pid": os.getpid(), "path": self.path}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


class Server(ThreadingHTTPServer):
    daemon_threads = False
    block_on_close = True

    def handle_error(self, request, client_address):
        # A client that went away is its own business: one line, no trace.
        sys.stderr.write(
            "activated_http.py: %s: %s\n" % (client_address, sys.exc_info()[1])
        )


def main() -> int:
    sock = listening_socket()
    server = Server(sock.getsockname()[:2], Handler, bind_and_activate=False)
    server.socket.close()
    server.socket = sock
    server.server_address = sock.getsockname()

    def stop(signum, frame):
        # shutdown() waits for serve_forever, which runs on this (the main)
        # thread: called here it would wait for itself.
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    server.serve_forever(poll_interval=POLL_INTERVAL)
    # Closes our copy of the listening socket and joins the handlers.
    server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
