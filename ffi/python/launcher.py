#!/usr/bin/env python3
"""launcher.py PORT -- CMD [ARGS...]

The Python twin of ffi/examples/launcher.c: takes the per-port lock `llmlb
serve` takes (lock dir from LLMLB_LOCK_DIR, else the per-user default), runs
CMD with LLMLB_PORT=PORT in a process group of its own, forwards SIGTERM and
SIGINT to it, waits, releases the lock and exits with CMD's code (128+signal
if it was killed). A held port prints the holder's PID and exits 1; usage
errors exit 2.
"""

import os
import signal
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from llmlb_lock import AlreadyRunning, LockError, PortLock  # noqa: E402


def _die_with_parent() -> None:
    """Runs in the child before exec: if the launcher is killed, CMD must not
    outlive it holding the port (Linux: parent-death signal)."""
    if sys.platform.startswith("linux"):
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL(None).prctl(pr_set_pdeathsig, signal.SIGTERM)


def usage() -> int:
    print("usage: launcher.py PORT -- CMD [ARGS...]", file=sys.stderr)
    return 2


def main(argv) -> int:
    if len(argv) < 4 or argv[2] != "--":
        return usage()
    text = argv[1]
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        print("launcher.py: invalid port %s: ports are 1..=65535" % text, file=sys.stderr)
        return 2
    port = int(text)

    lock = PortLock(port)
    try:
        lock.acquire()
    except AlreadyRunning as e:
        holder = "PID: %d" % e.pid if e.pid is not None else "holder details unreadable"
        print(
            "launcher.py: server already running on port %d (%s); to stop it: "
            "llmlb stop --port %d" % (port, holder, port),
            file=sys.stderr,
        )
        return 1
    except LockError as e:
        print("launcher.py: %s" % e, file=sys.stderr)
        return 1
    if lock.reclaimed_from is not None:
        print(
            "launcher.py: reclaimed the stale lock of PID %d on port %d"
            % (lock.reclaimed_from.pid, port),
            file=sys.stderr,
        )

    # Handlers first, so a signal that arrives while CMD starts is not lost
    # (the default action would kill us and leave a stale lock).
    pending = []
    children = []

    def forward(signum, _frame):
        if not children:
            pending.append(signum)
            return
        try:
            os.killpg(children[0].pid, signum)
        except ProcessLookupError:
            pass

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    try:
        env = dict(os.environ, LLMLB_PORT=str(port))
        # The lock descriptor is close-on-exec, so CMD never holds the lock.
        # A session (hence process group) of its own, so a forwarded signal
        # reaches CMD's children too.
        children.append(
            subprocess.Popen(
                argv[3:], env=env, start_new_session=True, preexec_fn=_die_with_parent
            )
        )
    except OSError as e:
        print("launcher.py: cannot run %s: %s" % (argv[3], e), file=sys.stderr)
        lock.release()
        return 127
    child = children[0]
    for signum in pending:
        forward(signum, None)
    code = child.wait()
    try:
        lock.release()
    except LockError as e:
        print("launcher.py: warning: releasing the lock: %s" % e, file=sys.stderr)
    return code if code >= 0 else 128 - code


if __name__ == "__main__":
    sys.exit(main(sys.argv))
