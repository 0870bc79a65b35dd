#!/usr/bin/env python3
"""launcher.py PORT -- CMD [ARGS...]  (installed: llmlb-launch PORT -- CMD [ARGS...])

The Python twin of ffi/examples/launcher.c and of `llmlb serve --port PORT
-- CMD`: takes the per-port lock (lock dir from LLMLB_LOCK_DIR, else the
per-user default), runs CMD with LLMLB_PORT=PORT in a process group of its
own (recorded in the lock file, so `llmlb stop --force` reaches all of it),
forwards SIGTERM and SIGINT to that group, and once CMD exits ends what is
left of the group (SIGTERM, then SIGKILL after 3 s; a forwarded signal
starts the same clock), then releases the lock and exits with CMD's code
(128+signal if it was killed).

CMD inherits the lock's descriptor (LLMLB_LOCK_FD names it): if the
launcher is killed, the port stays locked while any of CMD's tree lives. A
held port prints the holder's PID and exits 1; usage errors exit 2.

Windows (no SIGTERM, no process groups to signal): `llmlb stop` sets the
lock's stop channel, which the wait loop polls (PortLock.wait_stop); CMD runs
in a console process group of its own and gets CTRL_BREAK_EVENT, then is
terminated after 3 s. This example does not put CMD in a job object (as
`llmlb serve -- CMD` does), so a killed launcher leaves CMD running.
"""

import os
import signal
import subprocess
import sys
import time

if not __package__:
    # Run as a file (`python3 ffi/python/llmlb_lock/launcher.py`): import the
    # package this file is in, not an installed one.
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from llmlb_lock import AlreadyRunning, LockError, PortLock  # noqa: E402

# Messages start with the name it was run by: `llmlb-launch` (the console
# script), else launcher.py.
PROG = "llmlb-launch" if os.path.basename(sys.argv[0]).startswith("llmlb-launch") else "launcher.py"

# How long CMD's group has after SIGTERM (or a forwarded signal) before
# SIGKILL, and how long after SIGKILL before we stop waiting.
STOP_GRACE = 3.0
KILL_WAIT = 5.0
POLL = 0.02

_WINDOWS = os.name == "nt"
# Windows has no SIGKILL; os.kill with any value but the CTRL_* events
# terminates the process there.
_SIGKILL = getattr(signal, "SIGKILL", 9)

_PR_SET_PDEATHSIG = 1
_PR_SET_CHILD_SUBREAPER = 36


def _prctl(option: int, value: int) -> None:
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(option, value, 0, 0, 0)


def _child_setup(parent: int):
    def setup() -> None:
        """Runs in the child before exec: if the launcher is killed, CMD dies
        with it (Linux parent-death signal); its grandchildren keep the port
        locked through the inherited descriptor until they exit."""
        _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != parent:
            os._exit(1)

    return setup


def _group_gone(pgid: int) -> bool:
    """Whether no process of group ``pgid`` is left. Reaps our exited
    children in it first (orphans come to us as subreaper; zombies still
    count as members). Only after the leader itself was reaped. Always true
    on Windows (nothing to ask: see the module docstring)."""
    if _WINDOWS:
        return True
    while True:
        try:
            pid, _ = os.waitpid(-pgid, os.WNOHANG)
        except ChildProcessError:
            break
        if pid == 0:
            break
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def _killpg(pgid: int, signum: int) -> None:
    """Signals group ``pgid``. Windows: CTRL_BREAK_EVENT to the console
    process group for any signal but SIGKILL, which terminates the child."""
    try:
        if _WINDOWS:
            os.kill(pgid, _SIGKILL if signum == _SIGKILL else signal.CTRL_BREAK_EVENT)
        else:
            os.killpg(pgid, signum)
    except (ProcessLookupError, PermissionError, OSError):
        pass


def _run_to_end(child: subprocess.Popen, stopping: list, lock: PortLock) -> int:
    """Waits for CMD and then for the rest of its group: SIGTERM to the group
    once CMD has exited (unless a forwarded signal already started the
    clock), SIGKILL at the deadline, giving up KILL_WAIT later. Never an
    unbounded wait. Between checks it waits on the lock's stop channel
    (Windows' `llmlb stop`; on Unix a plain sleep that a signal cuts short).
    Returns CMD's exit code."""
    deadline = None
    killed = False
    code = None
    while True:
        if code is None:
            rc = child.poll()
            if rc is not None:
                code = rc if rc >= 0 else 128 - rc
        if code is not None:
            if _group_gone(child.pid):
                return code
            if deadline is None:
                _killpg(child.pid, signal.SIGTERM)  # CMD left processes behind
        if deadline is None and (stopping or code is not None):
            deadline = time.monotonic() + STOP_GRACE
        if deadline is not None and time.monotonic() >= deadline:
            if killed:
                print(
                    PROG + ": process group %d still has processes after SIGKILL" % child.pid,
                    file=sys.stderr,
                )
                return code if code is not None else 1
            print(
                PROG + ": the command did not exit within %d s; sending SIGKILL to its group"
                % STOP_GRACE,
                file=sys.stderr,
            )
            _killpg(child.pid, _SIGKILL)
            killed = True
            deadline = time.monotonic() + KILL_WAIT
        if lock.wait_stop(POLL) and not stopping:
            stopping.append("stop request")
            _killpg(child.pid, signal.SIGTERM)


def usage() -> int:
    print("usage: %s PORT -- CMD [ARGS...]" % PROG, file=sys.stderr)
    return 2


def main(argv) -> int:
    if len(argv) < 4 or argv[2] != "--":
        return usage()
    text = argv[1]
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        print(PROG + ": invalid port %s: ports are 1..=65535" % text, file=sys.stderr)
        return 2
    port = int(text)

    lock = PortLock(port)
    try:
        lock.acquire()
    except AlreadyRunning as e:
        holder = "PID: %d" % e.pid if e.pid is not None else "holder details unreadable"
        print(
            PROG + ": server already running on port %d (%s); to stop it: "
            "llmlb stop --port %d" % (port, holder, port),
            file=sys.stderr,
        )
        return 1
    except LockError as e:
        print(PROG + ": %s" % e, file=sys.stderr)
        return 1
    if lock.reclaimed_from is not None:
        print(
            PROG + ": reclaimed the stale lock of PID %d on port %d"
            % (lock.reclaimed_from.pid, port),
            file=sys.stderr,
        )

    # Handlers first, so a signal that arrives while CMD starts is not lost
    # (the default action would kill us and leave a stale lock).
    pending = []
    children = []
    stopping = []

    def forward(signum, _frame):
        stopping.append(signum)
        if not children:
            pending.append(signum)
            return
        _killpg(children[0].pid, signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    try:
        if _WINDOWS:
            # Its own console process group, so CTRL_BREAK_EVENT reaches it
            # (and not us); no lock descriptor is passed on Windows.
            children.append(
                subprocess.Popen(
                    argv[3:],
                    env=dict(os.environ, LLMLB_PORT=str(port)),
                    creationflags=subprocess.CREATE_NEW_PROCESS_GROUP,
                )
            )
        else:
            # CMD's tree inherits the lock (see the module docstring); orphaned
            # grandchildren come to us, so _group_gone sees them die.
            fd = lock.fileno()
            _prctl(_PR_SET_CHILD_SUBREAPER, 1)
            env = dict(os.environ, LLMLB_PORT=str(port), LLMLB_LOCK_FD=str(fd))
            # A session (hence process group) of its own, so a forwarded signal
            # reaches CMD's children too.
            children.append(
                subprocess.Popen(
                    argv[3:],
                    env=env,
                    start_new_session=True,
                    pass_fds=(fd,),
                    preexec_fn=_child_setup(os.getpid()),
                )
            )
    except (OSError, LockError) as e:
        print(PROG + ": cannot run %s: %s" % (argv[3], e), file=sys.stderr)
        lock.release()
        return 127
    child = children[0]
    # Recorded so that `llmlb stop --force` kills the whole group (Windows
    # has no group to record).
    try:
        if not _WINDOWS:
            lock.set_child_pgid(child.pid)
    except LockError as e:
        print(
            PROG + ": warning: cannot record the command's process group: %s" % e,
            file=sys.stderr,
        )
    for signum in pending:
        forward(signum, None)
    code = _run_to_end(child, stopping, lock)
    try:
        lock.release()
    except LockError as e:
        print(PROG + ": warning: releasing the lock: %s" % e, file=sys.stderr)
    return code


def console_main() -> None:
    """The ``llmlb-launch`` console script."""
    sys.exit(main(sys.argv))


if __name__ == "__main__":
    sys.exit(main(sys.argv))
