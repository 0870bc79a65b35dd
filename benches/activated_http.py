"""A socket-activated HTTP server for benches/replace.rs (standard library only).

Run as a script, it serves ``GET /health`` (200, a small JSON body naming its
PID) on the listening socket it was handed as descriptor 3 when
``LISTEN_FDS`` is set and ``LISTEN_PID`` is its own PID (the systemd
socket-activation protocol, which ``llmlb serve --pass-socket`` and
``serve --replace`` speak), else on ``LLMLB_HOST:LLMLB_PORT``.

It is the kind of server a handover is for, so its shutdown is the part that
matters: on SIGTERM or SIGINT it stops accepting and finishes every connection
it has accepted, including one whose request has not arrived yet, then exits
0. The listening socket is left as it is: ``close`` drops only this process's
descriptor, while the successor and its launcher keep theirs, so connections
still queued in the kernel are the successor's to accept (``shutdown`` on the
socket would reset them for everyone).

With ``NOTIFY_SOCKET`` set it sends ``READY=1`` once it accepts, for
``llmlb serve --ready notify``: a passed socket listens from the moment the
process exists, so ``--ready listen`` would call it ready before it accepts.

Imported (``gunicorn activated_http:app``), it is a WSGI app answering the
same ``/health``, so gunicorn's own activation and shutdown can be measured
beside it.
"""

import http.server
import json
import os
import signal
import socket
import socketserver
import sys
import threading

SD_LISTEN_FDS_START = 3


def app(environ, start_response):
    """The WSGI twin of the script's handler, for gunicorn."""
    if environ.get("PATH_INFO") == "/health":
        body = json.dumps({"status": "ok", "pid": os.getpid()}).encode()
        status = "200 OK"
    else:
        body = b"not found\n"
        status = "404 Not Found"
    start_response(status, [("Content-Type", "application/json"),
                            ("Content-Length", str(len(body)))])
    return [body]


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # A client that connects and never sends costs its thread this long, and
    # bounds how long shutdown can wait for it.
    timeout = 10

    def do_GET(self):
        if self.path == "/health":
            body = json.dumps({"status": "ok", "pid": os.getpid()}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
        else:
            body = b"not found\n"
            self.send_response(404)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)
        self.close_connection = True

    def log_message(self, format, *args):  # noqa: A002 (the base class's name)
        pass


class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    # Non-daemon handler threads, joined by server_close(): an accepted
    # connection is served to the end before the process exits.
    daemon_threads = False
    block_on_close = True


def activated_socket():
    """The socket handed over by LISTEN_FDS, or None."""
    if os.environ.get("LISTEN_PID") != str(os.getpid()):
        return None
    if int(os.environ.get("LISTEN_FDS", "0")) < 1:
        return None
    for name in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        os.environ.pop(name, None)
    return socket.socket(fileno=SD_LISTEN_FDS_START)


def notify_ready():
    """READY=1 to NOTIFY_SOCKET, if there is one (abstract names start with @)."""
    path = os.environ.get("NOTIFY_SOCKET")
    if not path:
        return
    if path.startswith("@"):
        path = "\0" + path[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.sendto(b"READY=1", path)


def main():
    # Blocked before any thread exists, so every thread inherits the mask and
    # the signals wait for sigwait below instead of interrupting a handler.
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
    sock = activated_socket()
    if sock is not None:
        server = Server(sock.getsockname()[:2], Handler, bind_and_activate=False)
        server.socket.close()
        server.socket = sock
    else:
        host = os.environ.get("LLMLB_HOST", "127.0.0.1")
        port = int(os.environ.get("LLMLB_PORT", "8000"))
        server = Server((host, port), Handler)
    # A short poll: shutdown() waits for serve_forever to look again.
    serving = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02})
    serving.start()
    notify_ready()
    signal.sigwait({signal.SIGTERM, signal.SIGINT})
    server.shutdown()  # stops accepting; serve_forever returns
    serving.join()
    server.server_close()  # joins every handler thread, then closes our descriptor
    return 0


if __name__ == "__main__":
    sys.exit(main())
