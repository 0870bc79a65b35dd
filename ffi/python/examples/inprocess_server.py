#!/usr/bin/env python3
"""An HTTP server that replaces itself in place, without a failed request.

Each instance serves the port itself (``http.server``), under the port's
llmlb lock. Start a new instance on the same port and it takes the port
over from the running one with its listening socket
(``PortLock.take_over``), serves, and then offers its own lock and socket to
the next (``PortLock.offer``): the old one is told to drain, stops
accepting, finishes the requests it has (a keep-alive connection gets
``Connection: close`` on its next response), releases, and exits 0. On a
free port it binds the port itself; ``llmlb serve --replace`` can replace
it, and it can replace an ``llmlb serve``.

    python3 inprocess_server.py --port 8000 &     # serves
    python3 inprocess_server.py --port 8000 &     # takes over; the first exits 0

``GET /`` answers ``{"pid": ...}``; ``GET /slow`` the same after 0.2 s (an
in-flight request to finish). SIGTERM or SIGINT stops it without a
successor (exit 0).
"""

import argparse
import json
import os
import signal
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

try:
    import llmlb_lock
except ImportError:  # run from the repository: the package is beside us
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
    import llmlb_lock

from llmlb_lock import AlreadyRunning, Busy, LockError, PortLock


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive
    # An idle keep-alive connection is closed after this long (also while
    # draining: a client silent that long is not mid-request).
    timeout = 10

    def do_GET(self):
        if self.path == "/slow":
            time.sleep(0.2)
        body = json.dumps({"pid": os.getpid()}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        if self.server.draining.is_set():
            # The successor has the port: this connection ends after this
            # response, and the client's next one goes to the successor.
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


class Server(ThreadingHTTPServer):
    # Handler threads are joined by server_close(): in-flight requests end
    # before the release.
    daemon_threads = False
    block_on_close = True

    def __init__(self, sock: socket.socket):
        self.address_family = sock.family
        super().__init__(sock.getsockname()[:2], Handler, bind_and_activate=False)
        self.socket.close()
        self.socket = sock
        self.draining = threading.Event()

    def get_request(self):
        # The listening socket is non-blocking (its description is shared
        # with the other server during a handover: whoever accepts first
        # gets the connection, the other gets BlockingIOError, which
        # socketserver ignores); the connections are ours, blocking.
        conn, addr = self.socket.accept()
        conn.setblocking(True)
        return conn, addr


def listening_socket(lock: PortLock, sock, host: str, port: int) -> socket.socket:
    if sock is None:
        # The port was free: ours to bind.
        try:
            sock = socket.create_server((host, port), backlog=128)
        except OSError as e:
            lock.release()
            sys.exit("cannot listen on %s:%d: %s" % (host, port, e))
    sock.setblocking(False)
    return sock


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--lock-dir", default=None, help="default: as the llmlb CLI")
    parser.add_argument(
        "--grace",
        type=float,
        default=0.0,
        help="seconds to stay up before the predecessor drains (serve --replace-grace)",
    )
    args = parser.parse_args()

    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())

    try:
        lock, sock = PortLock.take_over(args.port, args.lock_dir, timeout=10.0)
    except (AlreadyRunning, Busy) as e:
        print("inprocess_server: %s" % e, file=sys.stderr)
        return 1
    sock = listening_socket(lock, sock, args.host, args.port)
    server = Server(sock)
    accepting = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    accepting.start()
    # Serving: commit the takeover (if any) and offer ourselves.
    try:
        offer = lock.offer(sock, grace=args.grace)
    except LockError as e:
        print("inprocess_server: %s" % e, file=sys.stderr)
        server.shutdown()
        server.server_close()
        lock.release()  # a takeover goes back to the predecessor
        return 1
    print("serving on port %d as PID %d" % (args.port, os.getpid()), flush=True)

    while not stop.is_set() and not offer.wait(0.2):
        pass
    handed_over = offer.is_set()
    if not handed_over:
        # Stopping without a successor: withdraw the offer first.
        offer.close()
        try:
            lock.set_state("stopping")
        except LockError:
            pass  # handed over meanwhile: the record is the successor's
    server.draining.set()
    server.shutdown()  # stops accepting
    accepting.join()
    server.server_close()  # closes our copy of the socket; joins the handlers
    lock.release()  # after a handover: writes and removes nothing
    if handed_over:
        print("handed port %d over to PID %d" % (args.port, offer.successor_pid), flush=True)
    offer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
