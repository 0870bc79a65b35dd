#!/usr/bin/env python3
"""launcher.py [--ready WHEN] PORT -- CMD [ARGS...]  (installed: llmlb-launch ...)

The Python twin of ffi/examples/launcher.c and of `llmlb serve --port PORT
-- CMD`: takes the per-port lock (lock dir from LLMLB_LOCK_DIR, else the
per-user default), runs CMD with LLMLB_PORT=PORT in a process group of its
own (recorded in the lock file, so `llmlb stop --force` reaches all of it),
forwards SIGTERM and SIGINT to that group, and once CMD exits ends what is
left of the group (SIGTERM, then SIGKILL after 3 s; a forwarded signal
starts the same clock), then releases the lock and exits with CMD's code
(128+signal if it was killed). If CMD died of the SIGTERM or SIGINT the
launcher forwarded, the launcher then dies of that signal too (a clean stop
for systemd; 128+N in a shell). SIGHUP, SIGUSR1, SIGQUIT and SIGWINCH are
forwarded to the group without stopping anything (CMD decides what reload
or log reopening means); SIGUSR2 is reserved for a future reload: logged
and ignored.

CMD inherits the lock's descriptor (LLMLB_LOCK_FD names it): if the
launcher is killed, the port stays locked while any of CMD's tree lives. A
held port prints the holder's PID and exits 1; usage errors exit 2.

Readiness, as `llmlb serve --ready`: the lock record says "starting" from the
acquire's first write, "ready" once CMD is ready, "stopping" once stopping begins (a
signal, a stop request, or CMD's exit). --ready WHEN picks when CMD is ready:

- listen (the default): something listens on PORT (port_listener, checked
  after 1 ms, 2 ms, ... up to every 50 ms). On Linux the listener must be CMD
  or a descendant (its /proc ppid chain reaches the launcher); elsewhere any
  listener counts (the C ABI has no tree-aware lookup).
- notify: CMD's tree sends READY=1 to the NOTIFY_SOCKET the launcher sets
  for it (sd_notify): a socket file, mode 0600, in the 0700 lock dir, so
  only our own user can send. Linux adds SO_PASSCRED: a datagram counts only
  from our uid and a pid of CMD's tree. Passed descriptors are closed on a
  thread of their own, so no sender can stall the launcher.
  Not on Windows (exit 2).
- immediate: CMD has been started.
- http[:PATH]: GET PATH (default /health) on 127.0.0.1:PORT answers 2xx or
  3xx within 1 s, probed by the library (ready_http_probe) with listen's
  backoff; what the probe got is printed when it changes ("not ready yet:
  GET /health: 503"). A probe blocks the loop for up to 1 s.

Under a service manager (NOTIFY_SOCKET set for the launcher) the launcher
reports to it, as `llmlb serve` does: MAINPID and READY=1 once CMD is
ready, STOPPING=1 when stopping begins; CMD never gets the manager's
NOTIFY_SOCKET (nor WATCHDOG_*). Socket activation: when LISTEN_PID names the
launcher, the LISTEN_FDS descriptors from 3 on are passed to CMD with
LISTEN_FDS (and LISTEN_FDNAMES) unchanged and LISTEN_PID set to CMD's PID:
CMD is run through `/bin/sh -c 'LISTEN_PID=$$; export LISTEN_PID; exec "$@"'`,
since only the child knows its PID before exec and subprocess builds the
environment before the fork (the shell's PID is CMD's after `exec`). Without
activation meant for it, CMD gets no LISTEN_* variables.

Windows (no SIGTERM, no process groups to signal): `llmlb stop` sets the
lock's stop channel, which the wait loop polls (PortLock.wait_stop); CMD runs
in a console process group of its own and gets CTRL_BREAK_EVENT, then is
terminated after 3 s. This example does not put CMD in a job object (as
`llmlb serve -- CMD` does), so a killed launcher leaves CMD running.
"""

import os
import signal
import socket
import subprocess
import sys
import threading
import time

if not __package__:
    # Run as a file (`python3 ffi/python/llmlb_lock/launcher.py`): import the
    # package this file is in, not an installed one.
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from llmlb_lock import (  # noqa: E402
    AlreadyRunning,
    LockError,
    PortLock,
    check_http_path,
    lock_path,
    port_listener,
    ready_http_probe,
)

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

_LINUX = sys.platform.startswith("linux")

# --ready listen's first and longest pause between two checks.
LISTEN_FIRST = 0.001
LISTEN_MAX = 0.05
POLICIES = ("listen", "notify", "immediate", "http")

_PR_SET_PDEATHSIG = 1
_PR_SET_CHILD_SUBREAPER = 36


def _prctl(option: int, value: int) -> None:
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(option, value, 0, 0, 0)


def _tell_manager(text: str) -> None:
    """Sends ``text`` (sd_notify assignments) to our own service manager, if
    NOTIFY_SOCKET names one (``@name``: Linux's abstract namespace). A
    failure is a warning: the manager's timeouts decide."""
    name = os.environ.get("NOTIFY_SOCKET", "")
    if not name or _WINDOWS:
        return
    address = "\0" + name[1:] if name.startswith("@") else name
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            s.sendto(text.encode(), address)
    except OSError as e:
        print(PROG + ": warning: cannot notify NOTIFY_SOCKET=%s: %s" % (name, e), file=sys.stderr)


def _parent_of(pid: int) -> int:
    try:
        with open("/proc/%d/stat" % pid, "rb") as f:
            stat = f.read()
    except OSError:
        return 0
    # "pid (comm) state ppid ...": comm may hold spaces and parentheses.
    fields = stat[stat.rfind(b")") + 1 :].split()
    return int(fields[1]) if len(fields) > 1 else 0


def _in_our_tree(pid: int) -> bool:
    """Whether ``pid`` descends from the launcher (CMD's tree, with the
    orphans we adopted as its subreaper), by the /proc ppid chain."""
    me = os.getpid()
    for _ in range(4096):
        if pid <= 1:
            return False
        pid = _parent_of(pid)
        if pid == me:
            return True
    return False


def _listening(port: int) -> bool:
    """--ready listen: on Linux a listener of CMD's tree; elsewhere any."""
    try:
        listener = port_listener(port)
    except LockError:
        return False
    if listener is None:
        return False
    if _LINUX:
        return listener.pid is not None and _in_our_tree(listener.pid)
    return True


class _HttpCheck:
    """--ready http: the library's probe of ``path``; what it got is printed
    when it differs from the last time."""

    def __init__(self, port: int, path: str):
        self.port = port
        self.path = path
        self.last = None

    def ready(self) -> bool:
        try:
            ready, got = ready_http_probe(self.port, self.path)
        except LockError as e:
            ready, got = False, str(e)
        if not ready and got != self.last:
            print(PROG + ": not ready yet: " + got, file=sys.stderr)
            self.last = got
        return ready


class _NotifySocket:
    """--ready notify: the datagram socket CMD gets in NOTIFY_SOCKET, a
    socket file in the lock dir, which is 0700 and ours: another user cannot
    even send to it (an abstract name has no permissions and is listed in
    /proc/net/unix for everyone). Linux falls back to an abstract name where
    the lock dir's path is too long for sun_path (the credentials check
    still applies there)."""

    def __init__(self, port: int):
        self._path = None
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            if _LINUX:
                self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
            name = os.path.join(
                os.path.dirname(lock_path(port)),
                "notify_%d_%d_%08x.sock" % (port, os.getpid(), time.monotonic_ns() & 0xFFFFFFFF),
            )
            if len(os.fsencode(name)) < 108:
                if _LINUX:
                    # Linux creates the socket file with the socket's own
                    # mode: 0600 from its first instant, not only after the
                    # chmod below.
                    os.fchmod(self.sock.fileno(), 0o600)
                self.sock.bind(name)
                self._path = name
                os.chmod(name, 0o600)
            elif _LINUX:
                name = "@llmlb-launch/%d/%d" % (os.getpid(), time.monotonic_ns())
                self.sock.bind("\0" + name[1:])
            else:
                raise OSError("the lock dir's path is too long for NOTIFY_SOCKET: %s" % name)
            self.sock.setblocking(False)
        except OSError:
            self.close()
            raise
        self.name = name

    def ready(self) -> bool:
        """Reads every pending datagram: True if one of CMD's tree said
        READY=1. Descriptors passed along (systemd-notify's BARRIER=1 pipe)
        are closed once the datagram is handled, off this thread
        (_close_later), which releases the waiting sender; it stays alive
        until then, so its place in the tree is checked when its READY=1 is
        read."""
        ready = False
        space = socket.CMSG_SPACE(4 * 253) + socket.CMSG_SPACE(12)
        while True:
            try:
                data, ancillary, _flags, _addr = self.sock.recvmsg(4096, space)
            except (BlockingIOError, InterruptedError):
                return ready
            except OSError:
                return ready
            # Without credentials (not Linux) only our user reaches the socket.
            trusted = not _LINUX
            fds = []
            for level, kind, payload in ancillary:
                if level != socket.SOL_SOCKET:
                    continue
                if kind == socket.SCM_RIGHTS:
                    usable = len(payload) - len(payload) % 4
                    for i in range(0, usable, 4):
                        fds.append(int.from_bytes(payload[i : i + 4], sys.byteorder, signed=True))
                elif _LINUX and kind == socket.SCM_CREDENTIALS and len(payload) >= 12:
                    pid, uid = (
                        int.from_bytes(payload[0:4], sys.byteorder, signed=True),
                        int.from_bytes(payload[4:8], sys.byteorder),
                    )
                    trusted = uid == os.getuid() and _in_our_tree(pid)
            if trusted and b"READY=1" in data.split(b"\n"):
                ready = True
            _close_later(fds)

    def close(self) -> None:
        if self._path is not None:
            try:
                os.unlink(self._path)
            except OSError:
                pass
            self._path = None
        self.sock.close()


def _close_later(fds: list) -> None:
    """Closes received descriptors on a daemon thread of their own: the last
    close of one can block for as long as its sender chose (a TCP socket
    with SO_LINGER and unacknowledged data), and READY handling must never
    wait on it. Without a thread they are left open (a leak, never a
    stall)."""
    if not fds:
        return

    def close_all() -> None:
        for fd in fds:
            try:
                os.close(fd)
            except OSError:
                pass

    try:
        threading.Thread(target=close_all, name="llmlb-fd-closer", daemon=True).start()
    except RuntimeError:
        pass


def _activated_fds() -> int:
    """How many sockets socket activation passed to this process (0 unless
    LISTEN_PID names it, as sd_listen_fds(3))."""
    try:
        if int(os.environ.get("LISTEN_PID", "")) != os.getpid():
            return 0
        return max(0, int(os.environ.get("LISTEN_FDS", "")))
    except ValueError:
        return 0


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


def _set_state(lock: PortLock, state: str) -> None:
    """Records the serving state; a failure is only a warning."""
    try:
        lock.set_state(state)
    except LockError as e:
        print(PROG + ": warning: cannot record the state %s: %s" % (state, e), file=sys.stderr)


def _run_to_end(
    child: subprocess.Popen,
    stopping: list,
    lock: PortLock,
    policy: str,
    port: int,
    notify,
    http=None,
) -> int:
    """Waits for CMD and then for the rest of its group: SIGTERM to the group
    once CMD has exited (unless a forwarded signal already started the
    clock), SIGKILL at the deadline, giving up KILL_WAIT later. Never an
    unbounded wait. Between checks it waits on the lock's stop channel
    (Windows' `llmlb stop`; on Unix a plain sleep that a signal cuts short).
    Meanwhile it records "ready" per ``policy`` (until stopping begins) and
    "stopping" once it begins, telling our manager too. Returns CMD's exit
    code."""
    deadline = None
    killed = False
    code = None
    ready = False
    announced_stop = False
    next_check = time.monotonic()
    delay = LISTEN_FIRST
    while True:
        wait = POLL
        if code is None:
            rc = child.poll()
            if rc is not None:
                code = rc if rc >= 0 else 128 - rc
        # Before stopping is recorded, so an immediate command that exits at
        # once was ready first; never back from stopping to ready.
        if not ready and not announced_stop and not stopping:
            if policy == "immediate":
                ready = True
            elif policy == "notify":
                ready = notify.ready()
            elif time.monotonic() >= next_check:
                ready = http.ready() if http is not None else _listening(port)
                next_check = time.monotonic() + delay
                delay = min(delay * 2, LISTEN_MAX)
            if ready:
                _set_state(lock, "ready")
                _tell_manager("MAINPID=%d\nREADY=1\n" % os.getpid())
            elif policy in ("listen", "http"):
                wait = max(0.0, min(POLL, next_check - time.monotonic()))
        if not announced_stop and (stopping or code is not None):
            announced_stop = True
            _set_state(lock, "stopping")
            _tell_manager("STOPPING=1\n")
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
        if lock.wait_stop(wait) and not stopping:
            stopping.append("stop request")
            _killpg(child.pid, signal.SIGTERM)


def usage() -> int:
    print(
        "usage: %s [--ready listen|notify|immediate|http[:PATH]] PORT -- CMD [ARGS...]" % PROG,
        file=sys.stderr,
    )
    return 2


def main(argv) -> int:
    policy = "listen"
    http_path = "/health"
    if len(argv) > 1 and argv[1] == "--ready":
        if len(argv) < 3:
            return usage()
        policy = argv[2]
        if policy.startswith("http:"):
            http_path = policy[len("http:"):]
            try:
                # The library's rule, so the CLI, C and Python accept the same paths.
                check_http_path(http_path)
            except LockError as e:
                print(PROG + ": invalid --ready %s: %s" % (policy, e), file=sys.stderr)
                return 2
            policy = "http"
        if policy not in POLICIES:
            print(
                PROG + ": invalid --ready %s: use listen, notify, immediate, http or http:/PATH"
                % policy,
                file=sys.stderr,
            )
            return 2
        if policy == "notify" and _WINDOWS:
            print(
                PROG + ": --ready notify is not supported on Windows (no sd_notify); "
                "use listen or immediate",
                file=sys.stderr,
            )
            return 2
        argv = argv[:1] + argv[3:]
    if len(argv) < 4 or argv[2] != "--":
        return usage()
    text = argv[1]
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        print(PROG + ": invalid port %s: ports are 1..=65535" % text, file=sys.stderr)
        return 2
    port = int(text)

    # "starting" from the acquire's first write: a set_state after it would
    # leave a moment without a state, which `llmlb wait` reads as ready.
    lock = PortLock(port, state="starting")
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
    notify = None
    if policy == "notify":
        try:
            notify = _NotifySocket(port)
        except (OSError, LockError) as e:
            print(PROG + ": cannot open NOTIFY_SOCKET: %s" % e, file=sys.stderr)
            lock.release()
            return 1

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

    def pass_on(signum, _frame):
        # CMD's to interpret (reload, reopen logs): not a stop.
        if not children:
            passed_early.append(signum)
            return
        _killpg(children[0].pid, signum)

    def reserved(_signum, _frame):
        print(PROG + ": received SIGUSR2; ignored (reserved for a future reload)", file=sys.stderr)

    passed_early = []
    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    if not _WINDOWS:
        for name in ("SIGHUP", "SIGUSR1", "SIGQUIT", "SIGWINCH"):
            signal.signal(getattr(signal, name), pass_on)
        signal.signal(signal.SIGUSR2, reserved)
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
            # Our manager's socket and watchdog are ours (we report to it);
            # CMD gets our own socket with --ready notify.
            for name in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"):
                env.pop(name, None)
            if notify is not None:
                env["NOTIFY_SOCKET"] = notify.name
            command, passed = argv[3:], (fd,)
            activated = _activated_fds()
            if activated:
                # Only the child knows its PID: the shell sets it, then
                # becomes CMD (see the module docstring).
                command = ["/bin/sh", "-c", 'LISTEN_PID=$$; export LISTEN_PID; exec "$@"', "sh"]
                command += argv[3:]
                passed += tuple(range(3, 3 + activated))
            else:
                for name in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
                    env.pop(name, None)
            # A session (hence process group) of its own, so a forwarded signal
            # reaches CMD's children too.
            children.append(
                subprocess.Popen(
                    command,
                    env=env,
                    start_new_session=True,
                    pass_fds=passed,
                    preexec_fn=_child_setup(os.getpid()),
                )
            )
    except (OSError, LockError) as e:
        print(PROG + ": cannot run %s: %s" % (argv[3], e), file=sys.stderr)
        if notify is not None:
            notify.close()
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
    for signum in passed_early:
        pass_on(signum, None)
    try:
        http = _HttpCheck(port, http_path) if policy == "http" else None
        code = _run_to_end(child, stopping, lock, policy, port, notify, http)
    finally:
        if notify is not None:
            notify.close()
    try:
        lock.release()
    except LockError as e:
        print(PROG + ": warning: releasing the lock: %s" % e, file=sys.stderr)
    died_of = -child.returncode if child.returncode is not None and child.returncode < 0 else 0
    if died_of in (signal.SIGTERM, signal.SIGINT) and died_of in stopping:
        # Asked to stop, and CMD died of the signal we forwarded: so do we,
        # with everything released, as a shell does (and as `llmlb serve`).
        sys.stdout.flush()
        sys.stderr.flush()
        signal.signal(died_of, signal.SIG_DFL)
        os.kill(os.getpid(), died_of)
    return code


def console_main() -> None:
    """The ``llmlb-launch`` console script."""
    sys.exit(main(sys.argv))


if __name__ == "__main__":
    sys.exit(main(sys.argv))
