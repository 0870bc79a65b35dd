"""The llmlb per-port server lock for Python (ctypes over libllmlb_lock).

Takes exactly the lock `llmlb serve` takes, so a Python server and `llmlb`
refuse each other, show up in `llmlb status`, and are stopped by `llmlb stop`.
Standard library only.

    from llmlb_lock import PortLock, AlreadyRunning

    try:
        with PortLock(8000) as lock:
            serve(port=8000)           # the lock is held until the block ends
    except AlreadyRunning as e:
        sys.exit(f"already running on port {e.port} (PID: {e.pid})")

To take or probe many ports, open the lock dir once (it is resolved and
checked once, not per call):

    with LockDir() as locks:             # default dir, as the CLI
        lock = locks.acquire(8000)       # a held PortLock
        print(locks.probe(8001).state)

The library is loaded at import: from ``LLMLB_LOCK_LIB`` (a file path) if
set, else the copy installed inside this package (``pip install
./ffi/python``), else, when run from the repository, cargo's
``<target dir>/release`` then ``<target dir>/debug`` (the target dir is
``CARGO_TARGET_DIR`` if set, as for cargo, else ``<repository>/target``).
If none is there, the import fails with an ``ImportError`` saying how to get
one.
"""

from __future__ import annotations

import ctypes
import functools
import os
import sys
import threading
import time
from collections import deque
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Optional, Union

if TYPE_CHECKING:
    import socket

__all__ = [
    "AlreadyRunning",
    "Busy",
    "Offer",
    "LockError",
    "LockDir",
    "Listener",
    "LockInfo",
    "PortLock",
    "ProbeResult",
    "library_version",
    "lock_path",
    "check_http_path",
    "port_listener",
    "probe",
    "ready_http_probe",
]

# LlmlbStatus (include/llmlb_lock.h): explicit values, never reused.
OK = 0
ALREADY_RUNNING = 1
INVALID_ARGUMENT = 2
IO_ERROR = 3
UNSAFE_PATH = 4
PANIC = 5
NOT_LISTENING = 6
# Not a C status: what a try-once acquire (a _Cycle, below) returns for OK
# when the lock was reclaimed from a dead holder, whose info is then in
# out_other. A clean acquire returns OK, so the rule costs the wrapper no
# look at out_other.
_OK_RECLAIMED = -1

_STATES = {0: "free", 1: "held", 2: "stale"}
# LlmlbServeState: READY is 0, so a record without a state reads "ready".
_SERVE_STATES = {0: "ready", 1: "starting", 2: "stopping"}
_SERVE_STATE_VALUES = {word: value for value, word in _SERVE_STATES.items()}
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)

PathLike = Union[str, bytes, "os.PathLike[str]", "os.PathLike[bytes]"]


class _Info(ctypes.Structure):
    # Field order and types are the C contract's LlmlbLockInfo.
    _fields_ = [
        ("pid", ctypes.c_uint32),
        ("port", ctypes.c_uint16),
        ("started_at_unix_ms", ctypes.c_int64),
        ("serve_state_since_unix_ms", ctypes.c_int64),
        ("serve_state", ctypes.c_int),  # a C enum is an int
    ]


def _records_a_holder(info: _Info) -> bool:
    # All zeros is the C API's "none or unreadable".
    return bool(info.pid or info.port or info.started_at_unix_ms)


def _library_name() -> str:
    if sys.platform == "win32":
        return "llmlb_lock.dll"
    if sys.platform == "darwin":
        return "libllmlb_lock.dylib"
    return "libllmlb_lock.so"


def _installed_names():
    # setuptools-rust names the packaged library like an extension module
    # (libllmlb_lock.abi3.so, ...); the plain name is for a copy put here by
    # hand.
    from importlib.machinery import EXTENSION_SUFFIXES

    names = ["libllmlb_lock" + suffix for suffix in EXTENSION_SUFFIXES] + [_library_name()]
    return list(dict.fromkeys(names))  # without duplicates, in order


def _repository(here: Path) -> Optional[Path]:
    """The llmlb repository this module is run from, if any (not when
    installed): the directory holding include/llmlb_lock.h and ffi/."""
    for parent in here.parents:
        if (parent / "include" / "llmlb_lock.h").is_file() and (parent / "ffi" / "Cargo.toml").is_file():
            return parent
    return None


def _candidates():
    """Where the library may be, in order."""
    env = os.environ.get("LLMLB_LOCK_LIB")
    if env:
        # An explicit choice: use it or fail, never fall back silently.
        return [Path(env)]
    here = Path(__file__).resolve().parent
    found = [here / name for name in _installed_names()]
    repo = _repository(here)
    if repo is not None:
        target = os.environ.get("CARGO_TARGET_DIR")
        # Like cargo: a relative CARGO_TARGET_DIR is taken from the current directory.
        target_dir = Path(target).resolve() if target else repo / "target"
        name = _library_name()
        found += [target_dir / "release" / name, target_dir / "debug" / name]
    return found


def _load() -> ctypes.CDLL:
    tried = []
    for path in _candidates():
        if path.is_file():
            try:
                lib = ctypes.CDLL(str(path))
            except OSError as e:
                raise ImportError(
                    "llmlb_lock: cannot load the llmlb lock library %s (%s); rebuild it "
                    "for this machine, or set LLMLB_LOCK_LIB to one that loads" % (path, e)
                ) from None
            break
        tried.append(str(path))
    else:
        if os.environ.get("LLMLB_LOCK_LIB"):
            fix = "point LLMLB_LOCK_LIB at the built %s, or unset it" % _library_name()
        elif len(tried) > len(_installed_names()):
            # Run from the repository: a cargo build puts it where we look.
            fix = (
                "build it with `cargo build --release -p llmlb-lock-ffi`, "
                "or set LLMLB_LOCK_LIB to its path"
            )
        else:
            fix = (
                "reinstall the package (`pip install --force-reinstall ./ffi/python` "
                "from the llmlb repository), or set LLMLB_LOCK_LIB to the library's path"
            )
        raise ImportError(
            "llmlb_lock: cannot find the llmlb lock library (tried: %s); %s"
            % (", ".join(tried), fix)
        )
    status = ctypes.c_int  # a C enum is an int
    info_p = ctypes.POINTER(_Info)
    lock_p = ctypes.c_void_p  # opaque LlmlbLock *
    dir_p = ctypes.c_void_p  # opaque LlmlbLockDir *
    signatures = {
        "llmlb_lock_acquire": (
            status,
            [ctypes.c_char_p, ctypes.c_uint16, ctypes.POINTER(lock_p), info_p],
        ),
        "llmlb_lock_release": (status, [lock_p]),
        "llmlb_lock_adopt": (status, [lock_p]),
        "llmlb_lock_info": (status, [lock_p, info_p]),
        "llmlb_lock_probe": (
            status,
            [ctypes.c_char_p, ctypes.c_uint16, ctypes.POINTER(ctypes.c_int), info_p],
        ),
        "llmlb_lock_path": (
            status,
            [
                ctypes.c_char_p,
                ctypes.c_uint16,
                ctypes.c_char_p,
                ctypes.c_size_t,
                ctypes.POINTER(ctypes.c_size_t),
            ],
        ),
        "llmlb_lock_dir_open": (status, [ctypes.c_char_p, ctypes.POINTER(dir_p)]),
        "llmlb_lock_dir_acquire": (
            status,
            [dir_p, ctypes.c_uint16, ctypes.POINTER(lock_p), info_p],
        ),
        "llmlb_lock_dir_probe": (
            status,
            [dir_p, ctypes.c_uint16, ctypes.POINTER(ctypes.c_int), info_p],
        ),
        "llmlb_lock_dir_close": (None, [dir_p]),
        "llmlb_lock_acquire_timeout": (
            status,
            [ctypes.c_char_p, ctypes.c_uint16, ctypes.c_uint32, ctypes.POINTER(lock_p), info_p],
        ),
        "llmlb_lock_dir_acquire_timeout": (
            status,
            [dir_p, ctypes.c_uint16, ctypes.c_uint32, ctypes.POINTER(lock_p), info_p],
        ),
        "llmlb_lock_acquire_with_state": (
            status,
            [
                ctypes.c_char_p,
                ctypes.c_uint16,
                ctypes.c_uint32,
                ctypes.c_int,
                ctypes.POINTER(lock_p),
                info_p,
            ],
        ),
        "llmlb_lock_dir_acquire_with_state": (
            status,
            [dir_p, ctypes.c_uint16, ctypes.c_uint32, ctypes.c_int, ctypes.POINTER(lock_p), info_p],
        ),
        "llmlb_lock_set_child_pgid": (status, [lock_p, ctypes.c_uint32]),
        "llmlb_lock_set_state": (status, [lock_p, ctypes.c_int]),
        "llmlb_port_listener": (status, [ctypes.c_uint16, ctypes.POINTER(ctypes.c_uint32)]),
        "llmlb_ready_http_probe": (
            ctypes.c_int,
            [ctypes.c_char_p, ctypes.c_uint16, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_size_t],
        ),
        "llmlb_ready_http_path_check": (status, [ctypes.c_char_p]),
        "llmlb_lock_fd": (status, [lock_p, ctypes.POINTER(ctypes.c_int)]),
        "llmlb_lock_wait_stop": (status, [lock_p, ctypes.c_uint32, ctypes.POINTER(ctypes.c_int)]),
        "llmlb_last_error": (ctypes.c_char_p, []),
        "llmlb_lock_version": (ctypes.c_char_p, []),
    }
    for name, (restype, argtypes) in signatures.items():
        fn = getattr(lib, name)
        fn.restype = restype
        fn.argtypes = argtypes
    # The per-cycle calls again, without argtypes: converting each argument
    # through argtypes costs about as much as the call itself. Callers pass
    # exactly the C types (c_void_p handles, a c_uint16 port, byref out
    # parameters, bytes or None for a path), so libffi sees the same
    # signature as above.
    for name in ("llmlb_lock_acquire", "llmlb_lock_dir_acquire", "llmlb_lock_release"):
        fn = lib[name]  # a new function object, leaving the typed one alone
        fn.restype = status
        setattr(lib, "_fast_" + name[len("llmlb_lock_"):], fn)
    return lib


_lib_cache: Optional[ctypes.CDLL] = None
_lib_lock = threading.Lock()


def _lib() -> ctypes.CDLL:
    global _lib_cache
    lib = _lib_cache  # the hot path: loaded once, then read without a lock
    if lib is not None:
        return lib
    with _lib_lock:
        if _lib_cache is None:
            _lib_cache = _load()
        return _lib_cache


# Loaded now, so a missing or unloadable library is reported by the import
# itself, with the fix, not by the first call.
_lib()

# The per-cycle calls, made once per LockDir and PortLock and then only
# called (the Python around them runs between system calls, with cold
# caches: every step saved counts):
#
# - _DirCell(handle, on_idle): a LockDir's handle and the calls in progress
#   on it: enter() -> the handle (an int) registered as in use, or None when
#   closed; leave(); close() -> the handle, or None (no new call gets it);
#   done_closing(); active, the calls in progress. on_idle() is called when
#   a call leaves while a close() waits.
# - _Cycle(dir, port, out_handle, out_other): a PortLock's try-once acquire:
#   calling it takes the lock into out_handle (a c_void_p) and out_other (an
#   _Info), through a _DirCell or by path (bytes, or None for the default
#   dir), and returns the status, _OK_RECLAIMED (OK, out_other names the
#   dead holder) or _DIR_CLOSED (nothing called).
# - _fast_release(_release_arg_of(out_handle)) -> the status.
#
# Through the _speedups extension module when it is built (`pip install`
# builds it), bound to the library ctypes loaded; otherwise Python twins over
# untyped ctypes that behave the same.
try:
    from . import _speedups  # type: ignore[attr-defined]
except ImportError:
    _speedups = None

# Not a C status: what a _Cycle returns when its lock dir is closed.
_DIR_CLOSED = -2


def _notify_all(cond: threading.Condition) -> None:
    with cond:
        cond.notify_all()


if _speedups is not None:

    def _bind_speedups() -> None:
        """Points _speedups at the functions of the library ctypes loaded."""
        lib = _lib()
        _speedups.bind(
            *(
                ctypes.cast(fn, ctypes.c_void_p).value
                for fn in (lib.llmlb_lock_acquire, lib.llmlb_lock_dir_acquire, lib.llmlb_lock_release)
            )
        )

    _bind_speedups()
    _DirCell = _speedups.DirCell

    _Cycle = _speedups.Cycle
    _fast_release = _speedups.release  # takes where acquire wrote the handle
    _release_arg_of = ctypes.addressof

else:
    # Module globals, looked up at each call (tests replace them).
    _fast_acquire = _lib()._fast_acquire
    _fast_dir_acquire = _lib()._fast_dir_acquire
    _fast_release = _lib()._fast_release  # takes the handle (a c_void_p)

    class _DirCell:  # type: ignore[no-redef]
        """_speedups.DirCell in Python: deque.append and deque.pop are
        atomic, so a call costs no lock (and, unlike a list going from 0 to
        1 entry and back, no reallocation)."""

        __slots__ = ("handle", "_calls", "_closing", "_on_idle")

        def __init__(self, handle: int, on_idle):
            self.handle: Optional[int] = handle
            self._calls: deque = deque()
            self._closing = 0
            self._on_idle = on_idle

        def enter(self) -> Optional[int]:
            # Registered before the handle is read: close() clears the
            # handle before it looks at the calls, so either it waits for
            # this call or this call sees the handle gone.
            self._calls.append(None)
            handle = self.handle
            if handle is None:
                self.leave()
            return handle

        def leave(self) -> None:
            self._calls.pop()
            if self._closing:
                self._on_idle()

        def close(self) -> Optional[int]:
            handle, self.handle = self.handle, None
            self._closing += 1
            return handle

        def done_closing(self) -> None:
            self._closing -= 1

        @property
        def active(self) -> int:
            return len(self._calls)

    class _Cycle:  # type: ignore[no-redef]
        """_speedups.Cycle in Python: the C arguments made once (byref: what
        ctypes passes as a pointer)."""

        __slots__ = ("_cell", "_args", "_other")

        def __init__(self, directory, port: int, out_handle: ctypes.c_void_p, out_other: "_Info"):
            out = (ctypes.c_uint16(port), ctypes.byref(out_handle), ctypes.byref(out_other))
            if isinstance(directory, _DirCell):
                self._cell = directory
                # The handle never changes while the dir is open, and the
                # cell says whether it is.
                self._args = (ctypes.c_void_p(directory.handle),) + out
            else:
                self._cell = None
                self._args = (directory,) + out
            self._other = out_other

        def __call__(self) -> int:
            cell = self._cell
            if cell is None:
                status = _fast_acquire(*self._args)
            elif cell.enter() is None:
                return _DIR_CLOSED
            else:
                try:
                    status = _fast_dir_acquire(*self._args)
                finally:
                    cell.leave()
            if status == OK and _records_a_holder(self._other):
                return _OK_RECLAIMED
            return status

    def _release_arg_of(out_handle: ctypes.c_void_p):
        return out_handle  # passed by value: the pointer acquire wrote


def speedups() -> bool:
    """Whether the per-cycle calls go through the compiled ``_speedups``
    module (built by ``pip install``) rather than ctypes. Both call the same
    library with the same arguments; only the cost differs."""
    return _speedups is not None


class LockInfo:
    """Who holds (or held) a port: ``pid``, ``port``, ``started_at``
    (a timezone-aware UTC ``datetime``), and the serving state the holder
    recorded: ``state`` (``"starting"``, ``"ready"`` or ``"stopping"``;
    ``"ready"`` when it recorded none) and ``state_since`` (UTC
    ``datetime``, or ``None`` when no state is recorded). Equality compares
    the holder (pid, port, started_at), not its state."""

    __slots__ = ("pid", "port", "started_at", "state", "state_since")

    def __init__(
        self,
        pid: int,
        port: int,
        started_at: datetime,
        state: str = "ready",
        state_since: Optional[datetime] = None,
    ):
        self.pid = pid
        self.port = port
        self.started_at = started_at
        self.state = state
        self.state_since = state_since

    @classmethod
    def _from_c(cls, info: _Info) -> Optional["LockInfo"]:
        if not _records_a_holder(info):
            return None
        started = _EPOCH + timedelta(milliseconds=info.started_at_unix_ms)
        since = None
        if info.serve_state_since_unix_ms:
            since = _EPOCH + timedelta(milliseconds=info.serve_state_since_unix_ms)
        state = _SERVE_STATES.get(info.serve_state, "ready")
        return cls(int(info.pid), int(info.port), started, state, since)

    def __eq__(self, other):
        if not isinstance(other, LockInfo):
            return NotImplemented
        return (self.pid, self.port, self.started_at) == (other.pid, other.port, other.started_at)

    def __repr__(self):
        return "LockInfo(pid=%d, port=%d, started_at=%s, state=%r)" % (
            self.pid,
            self.port,
            self.started_at.isoformat(),
            self.state,
        )


class LockError(Exception):
    """A lock call failed. ``status`` is the C status code; the message is
    the library's one-line explanation (naming the port or path and the fix)."""

    def __init__(self, message: str, status: int):
        super().__init__(message)
        self.status = status


class AlreadyRunning(LockError):
    """Another process holds the port. ``pid`` and ``started_at`` are ``None``
    when the holder's details were unreadable."""

    def __init__(self, message: str, port: int, holder: Optional[LockInfo]):
        super().__init__(message, ALREADY_RUNNING)
        self.port = port
        self.holder = holder
        self.pid = holder.pid if holder else None
        self.started_at = holder.started_at if holder else None


def _last_error() -> str:
    raw = _lib().llmlb_last_error()
    return raw.decode("utf-8", "replace") if raw else ""


def _check(status: int) -> None:
    if status != OK:
        raise LockError(_last_error(), status)


def _dir_arg(lock_dir: "Union[None, PathLike, LockDir]") -> Optional[bytes]:
    # os.fsencode keeps non-UTF-8 paths as their bytes; the library refuses
    # them with a clear INVALID_ARGUMENT rather than guessing.
    if isinstance(lock_dir, LockDir):
        return os.fsencode(lock_dir.path)
    if lock_dir is None:
        return None
    path = os.fsencode(lock_dir)
    if b"\0" in path:
        # C would see the path cut at the NUL: another dir than the one named.
        raise LockError(
            "lock dir %r contains a NUL byte; name a dir without one" % (os.fsdecode(path),),
            INVALID_ARGUMENT,
        )
    return path


def _port_arg(port: int) -> int:
    port = int(port)
    if not 0 <= port <= 65535:
        raise LockError("invalid port %d: ports are 1..=65535" % port, INVALID_ARGUMENT)
    return port  # 0 is refused by the library itself


class LockDir:
    """A lock dir opened once for many acquires and probes: resolved (default:
    as the ``llmlb`` CLI), created (mode 0700) if missing and checked here,
    not on every call. ``path`` is the resolved directory.

    May be shared by threads; ``close()`` waits for calls in progress. Locks
    taken through it stay held after it is closed. After ``os.fork()`` the
    child may use it too. As a context manager it closes on exit.
    """

    def __init__(self, lock_dir: Optional[PathLike] = None):
        self._handle: Optional[int] = None
        # The handle and the calls in progress on it (see _DirCell): close()
        # waits on the condition until none is left.
        self._cell: Optional[_DirCell] = None
        self._cond = threading.Condition(threading.Lock())
        # The resolved dir, for messages and lock paths (port 1 is any port).
        self.path = os.path.dirname(lock_path(1, lock_dir))
        handle = ctypes.c_void_p()
        _check(_lib().llmlb_lock_dir_open(_dir_arg(lock_dir), ctypes.byref(handle)))
        self._handle = handle.value
        self._cell = _DirCell(handle.value, functools.partial(_notify_all, self._cond))

    @property
    def closed(self) -> bool:
        return self._handle is None

    def _enter(self) -> int:
        """The handle, registered as in use until _leave(): close() waits."""
        cell = self._cell
        handle = None if cell is None else cell.enter()
        if handle is None:
            raise LockError("lock dir %s is closed" % self.path, INVALID_ARGUMENT)
        return handle

    def _leave(self) -> None:
        self._cell.leave()

    def acquire(
        self, port: int, timeout: Optional[float] = None, state: Optional[str] = None
    ) -> "PortLock":
        """Takes ``port``'s lock: a held :class:`PortLock` (raises
        :class:`AlreadyRunning` if another holder has it, after waiting up to
        ``timeout`` seconds as in :meth:`PortLock.acquire`), its record
        carrying ``state`` from the first write as in :class:`PortLock`."""
        return PortLock(port, self, timeout=timeout, state=state).acquire()

    def probe(self, port: int) -> "ProbeResult":
        """Observes ``port`` without taking it or creating anything."""
        return probe(port, self)

    def close(self) -> None:
        """Closes the handle (idempotent), after calls in progress finish."""
        cell = self._cell
        if cell is None:  # the open failed
            return
        with self._cond:
            handle = cell.close()
            self._handle = None
            while cell.active:
                self._cond.wait()
            cell.done_closing()
        if handle is not None:
            _lib().llmlb_lock_dir_close(handle)

    def __enter__(self) -> "LockDir":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass

    def __repr__(self):
        return "LockDir(%r, closed=%s)" % (self.path, self.closed)


class PortLock:
    """The lock for ``port`` in ``lock_dir``: a path (default: as the
    ``llmlb`` CLI, ``LLMLB_LOCK_DIR`` or the per-user dir) or an open
    :class:`LockDir`.

    ``acquire()`` takes it (raising :class:`AlreadyRunning` if it is held),
    ``release()`` gives it back and removes the lock file, ``adopt()`` makes
    a forked child the holder. As a context manager it acquires on entry and
    releases on exit.

    ``state`` (``"starting"``, ``"ready"`` or ``"stopping"``; default none):
    the serving state the lock file records from its first write, so no
    reader ever sees this holder without one (no state reads as ready). A
    launcher passes ``"starting"`` rather than calling :meth:`set_state`
    after the acquire.

    ``timeout`` (seconds, as py-filelock's): how long ``acquire()`` waits for
    a held port to be released before raising :class:`AlreadyRunning` with
    the holder's info. ``None`` or ``0`` tries once; a negative value waits
    forever. The wait sleeps (on a watch of the lock dir) and returns as soon as the
    holder releases or dies; Ctrl-C (``KeyboardInterrupt``) interrupts it
    within 0.2 s, having taken nothing. After ``os.fork()`` a child's ``release()`` only closes
    the child's descriptor unless the child called ``adopt()`` first.

    Not for concurrent use from several threads without a lock of your own.
    """

    def __init__(
        self,
        port: int,
        lock_dir: "Union[None, PathLike, LockDir]" = None,
        timeout: Optional[float] = None,
        state: Optional[str] = None,
    ):
        self.port = _port_arg(port)
        self._lock_dir = lock_dir
        self._timeout = timeout
        # Checked now: a wrong word is the caller's bug, not an acquire failure.
        self._c_state = None if state is None else _serve_state_arg(state)
        # Whether this object holds the lock; the handle itself stays in
        # _out_handle, where acquire wrote it, until release.
        self._held = False
        self.reclaimed_from: Optional[LockInfo] = None
        """The dead holder's info when acquire reclaimed a stale lock."""
        # Out parameters made once, not per acquire (one PortLock is not
        # used by several threads at once; see the class doc).
        self._out_handle = ctypes.c_void_p()
        self._out_other = _Info()
        self._release_arg = _release_arg_of(self._out_handle)
        # The try-once acquire (a _Cycle), made by the first acquire() that
        # tries once; None: not made yet (or lock_dir or timeout changed
        # since); False: this lock has none (it waits, or records a state).
        self._once = None

    @property
    def lock_dir(self) -> "Union[None, PathLike, LockDir]":
        """Where the lock file is: a path, ``None`` (the default dir) or an
        open :class:`LockDir`. A change takes effect at the next
        ``acquire()``."""
        return self._lock_dir

    @lock_dir.setter
    def lock_dir(self, lock_dir: "Union[None, PathLike, LockDir]") -> None:
        self._lock_dir = lock_dir
        self._once = None  # made again for the new dir

    @property
    def timeout(self) -> Optional[float]:
        """How long an ``acquire()`` given no timeout waits (see the class
        doc)."""
        return self._timeout

    @timeout.setter
    def timeout(self, timeout: Optional[float]) -> None:
        self._timeout = timeout
        self._once = None

    @property
    def held(self) -> bool:
        """Whether this object holds the lock (acquired and not released)."""
        return self._held

    def acquire(self, timeout: Optional[float] = None) -> "PortLock":
        """Takes the lock; if it is held, waits up to ``timeout`` seconds
        (default: the ``timeout`` given to the constructor; ``0`` tries once,
        negative waits forever) for it to be released, then raises
        :class:`AlreadyRunning` with the holder's info as last seen."""
        if self._held:
            raise LockError("port %d is already held by this PortLock" % self.port, INVALID_ARGUMENT)
        if not timeout:
            # Try once: the per-cycle path, one call of the _Cycle made once.
            once = self._once
            if once is None:
                once = self._once = self._make_once()
            if once is not False:
                status = once()
                if not status:
                    self._held = True
                    self.reclaimed_from = None
                    return self
                return self._tried_once(status)
        # Wait (this call's timeout, else the constructor's), or record a
        # state from the first write: the timed C calls.
        timeout = self._timeout if timeout is None else timeout
        # Into the same out-parameters as the try-once path: release() hands
        # _out_handle to the C library.
        handle, other = self._out_handle, self._out_other
        status = self._acquire_waiting(_deadline(timeout), handle, other)
        if status == ALREADY_RUNNING:
            raise AlreadyRunning(_last_error(), self.port, LockInfo._from_c(other))
        _check(status)
        self._held = True
        self.reclaimed_from = LockInfo._from_c(other)
        return self

    def _make_once(self):
        """This lock's try-once acquire (a _Cycle), or False when it has
        none: with a timeout or a state it takes the timed C calls. A
        LockDir's handle never changes while it is open (the _DirCell says
        whether it is), nor does a path's encoding."""
        if self._timeout or self._c_state is not None:
            return False
        lock_dir = self._lock_dir
        if isinstance(lock_dir, LockDir):
            directory = lock_dir._cell
            if directory is None:
                raise LockError("lock dir %s is closed" % lock_dir.path, INVALID_ARGUMENT)
        else:
            directory = _dir_arg(lock_dir)
        return _Cycle(directory, self.port, self._out_handle, self._out_other)

    def _tried_once(self, status: int) -> "PortLock":
        """The end of a try-once acquire that did not simply succeed."""
        if status == _OK_RECLAIMED:
            self._held = True
            self.reclaimed_from = LockInfo._from_c(self._out_other)
            return self
        if status == _DIR_CLOSED:
            raise LockError("lock dir %s is closed" % self._lock_dir.path, INVALID_ARGUMENT)
        if status == ALREADY_RUNNING:
            raise AlreadyRunning(_last_error(), self.port, LockInfo._from_c(self._out_other))
        _check(status)
        raise AssertionError("unreachable: status %d" % status)

    def _acquire_waiting(self, deadline: Optional[float], handle, other) -> int:
        # The C call cannot be interrupted, so wait in slices: between them
        # Python runs its signal handlers (Ctrl-C raises here, nothing held).
        lib = _lib()
        # The state goes in as the first argument after the timeout; without
        # one, the plain timed acquires (no state written).
        state = () if self._c_state is None else (self._c_state,)
        while True:
            slice_ms = _slice_ms(deadline)
            if isinstance(self.lock_dir, LockDir):
                directory = self.lock_dir._enter()
                try:
                    acquire = (
                        lib.llmlb_lock_dir_acquire_with_state
                        if state
                        else lib.llmlb_lock_dir_acquire_timeout
                    )
                    status = acquire(
                        directory,
                        self.port,
                        slice_ms,
                        *state,
                        ctypes.byref(handle),
                        ctypes.byref(other),
                    )
                finally:
                    self.lock_dir._leave()
            else:
                acquire = (
                    lib.llmlb_lock_acquire_with_state if state else lib.llmlb_lock_acquire_timeout
                )
                status = acquire(
                    _dir_arg(self.lock_dir),
                    self.port,
                    slice_ms,
                    *state,
                    ctypes.byref(handle),
                    ctypes.byref(other),
                )
            if status != ALREADY_RUNNING or slice_ms == 0:
                return status
            if deadline is not None and time.monotonic() >= deadline:
                return status

    def release(self) -> None:
        """Releases the lock (removing its file if this process is the
        recorded holder). A no-op if not held."""
        if self._held:
            self._held = False
            # _out_handle still holds this handle: only acquire writes it,
            # and only while nothing is held.
            status = _fast_release(self._release_arg)
            if status:
                _check(status)

    def adopt(self) -> None:
        """In a forked child: become the recorded holder (see the C API)."""
        _check(_lib().llmlb_lock_adopt(self._require()))

    def fileno(self) -> int:
        """Unix: the lock's file descriptor, to pass to a child
        (``subprocess.Popen(..., pass_fds=(lock.fileno(),))``) so that the
        port stays locked while any of the child's tree lives, even if this
        process is killed. Owned by this object: never close it. After this
        call, ``release()`` removes the lock file only if no other process
        still holds the descriptor (see ``llmlb_lock_fd``)."""
        fd = ctypes.c_int(-1)
        _check(_lib().llmlb_lock_fd(self._require(), ctypes.byref(fd)))
        return fd.value

    @classmethod
    def take_over(
        cls, port: int, lock_dir: "Union[None, PathLike, LockDir]" = None, timeout: float = 5.0
    ) -> "tuple[PortLock, Optional[socket.socket]]":
        """Takes ``port`` over from its running server with its listening
        socket: ``(lock, sock)``, ``sock`` ``None`` when the port was free
        (bind it yourself). See :func:`llmlb_lock.handover.take_over`."""
        from .handover import take_over

        return take_over(port, lock_dir, timeout)

    def offer(self, sock, grace: float = 0.0) -> "Offer":
        """Once serving on ``sock`` (a listening socket on this port, or
        its descriptor; it stays yours): records ready, commits a takeover
        (the predecessor drains once this process has been up ``grace``
        seconds) and offers this lock and socket to a successor. Returns the
        :class:`Offer`, whose ``wait()`` says when to drain. See
        :mod:`llmlb_lock.handover`."""
        from .handover import offer

        return offer(self, sock, grace)

    def set_child_pgid(self, pgid: Optional[int]) -> None:
        """Records the process group of the command this launcher runs (a
        live process leading its own group, e.g. a child started with
        ``start_new_session=True``), so ``llmlb status`` shows it and
        ``llmlb stop --force`` kills all of it; ``None`` clears it."""
        value = 0 if pgid is None else int(pgid)
        if not 0 <= value <= 0xFFFFFFFF:
            raise LockError("invalid pgid %d" % value, INVALID_ARGUMENT)
        _check(_lib().llmlb_lock_set_child_pgid(self._require(), value))

    def set_state(self, state: str) -> None:
        """Records the serving state (``"starting"``, ``"ready"`` or
        ``"stopping"``) in the lock file, as ``llmlb serve`` does: starting
        after the acquire, ready once the server accepts connections,
        stopping when shutdown begins. ``llmlb status`` shows it and
        ``llmlb wait`` waits for ready. Any other word: ``ValueError``."""
        _check(_lib().llmlb_lock_set_state(self._require(), _serve_state_arg(state)))

    def wait_stop(self, timeout: Optional[float]) -> bool:
        """Waits up to ``timeout`` seconds (``None``: no limit, ``0``: poll)
        for ``llmlb stop`` to ask this holder to shut down; True if it did.
        Windows: ``llmlb stop`` sets the lock's stop channel, and once set
        every call returns True at once. Unix: ``llmlb stop`` sends SIGTERM
        instead, so this only sleeps (cut short by a signal) and returns
        False: handle SIGTERM as usual (see ``llmlb_lock_wait_stop``)."""
        if timeout is None:
            ms = 0xFFFFFFFF
        else:
            ms = min(max(int(timeout * 1000), 0), 0xFFFFFFFE)
        requested = ctypes.c_int(0)
        _check(_lib().llmlb_lock_wait_stop(self._require(), ms, ctypes.byref(requested)))
        return bool(requested.value)

    @property
    def info(self) -> LockInfo:
        """What the lock file records about this holder."""
        out = _Info()
        _check(_lib().llmlb_lock_info(self._require(), ctypes.byref(out)))
        info = LockInfo._from_c(out)
        assert info is not None
        return info

    @property
    def path(self) -> str:
        return lock_path(self.port, self.lock_dir)

    def _require(self) -> ctypes.c_void_p:
        if not self._held:
            raise LockError("port %d is not held by this PortLock" % self.port, INVALID_ARGUMENT)
        return self._out_handle

    def __enter__(self) -> "PortLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()

    def __del__(self):
        # Like the Rust guard's Drop: an unreleased lock is released when
        # collected (at worst, after fork, this only closes a descriptor).
        try:
            if self._held:  # missing if __init__ failed
                self.release()
        except Exception:
            pass

    def __repr__(self):
        return "PortLock(port=%d, held=%s)" % (self.port, self.held)


def _serve_state_arg(state: str) -> int:
    value = _SERVE_STATE_VALUES.get(state)
    if value is None:
        raise ValueError(
            "invalid serving state %r: use 'starting', 'ready' or 'stopping'" % (state,)
        )
    return value


# The longest one uninterruptible C wait lasts (see PortLock._acquire_waiting).
_WAIT_SLICE = 0.2


def _deadline(timeout: Optional[float]) -> Optional[float]:
    """When a wait of ``timeout`` seconds ends: now for None/0, never (None)
    for a negative timeout, as py-filelock's -1."""
    if timeout is None:
        return time.monotonic()
    timeout = float(timeout)
    if timeout != timeout:  # NaN
        raise LockError("invalid timeout nan: give seconds, or -1 to wait forever", INVALID_ARGUMENT)
    if timeout < 0:
        return None
    return time.monotonic() + timeout


def _slice_ms(deadline: Optional[float]) -> int:
    left = _WAIT_SLICE if deadline is None else min(deadline - time.monotonic(), _WAIT_SLICE)
    return max(0, int(left * 1000))


class ProbeResult:
    """What :func:`probe` saw: ``state`` is ``"free"``, ``"held"`` or
    ``"stale"``; ``info`` the (dead) holder's info, or ``None``."""

    __slots__ = ("state", "info")

    def __init__(self, state: str, info: Optional[LockInfo]):
        self.state = state
        self.info = info

    @property
    def state_detail(self) -> Optional[str]:
        """The serving state the holder recorded: ``"starting"``,
        ``"ready"`` (also when it recorded none) or ``"stopping"``; ``None``
        when there is no record (a free port, an unreadable file). For a
        stale port it is what the dead holder last recorded."""
        return self.info.state if self.info is not None else None

    def __repr__(self):
        return "ProbeResult(state=%r, info=%r)" % (self.state, self.info)


class Listener:
    """A process listening on a TCP port (:func:`port_listener`): ``pid``,
    or ``None`` when it cannot be seen (another user's process on Linux
    without root; macOS, where only a connect probe answers)."""

    __slots__ = ("pid",)

    def __init__(self, pid: Optional[int]):
        self.pid = pid

    def __eq__(self, other):
        if not isinstance(other, Listener):
            return NotImplemented
        return self.pid == other.pid

    def __repr__(self):
        return "Listener(pid=%r)" % (self.pid,)


def port_listener(port: int) -> Optional[Listener]:
    """Who listens on TCP ``port`` now (any local address, IPv4 or IPv6):
    a :class:`Listener`, or ``None`` if nothing does. Takes no lock."""
    pid = ctypes.c_uint32(0)
    status = _lib().llmlb_port_listener(_port_arg(port), ctypes.byref(pid))
    if status == NOT_LISTENING:
        return None
    _check(status)
    return Listener(pid.value or None)


def _text_arg(text: Optional[str], what: str) -> Optional[bytes]:
    if text is None:
        return None
    data = text.encode("utf-8", "surrogateescape")
    if b"\0" in data:
        raise LockError("%s %r contains a NUL byte" % (what, text), INVALID_ARGUMENT)
    return data


def check_http_path(path: str) -> None:
    """Raises :class:`LockError` (``INVALID_ARGUMENT``) unless ``path`` is one
    `llmlb serve --ready http:PATH` accepts: it starts with ``/``, is
    printable ASCII without spaces, at most 1024 bytes. The library's rule
    (``llmlb_ready_http_path_check``)."""
    _check(_lib().llmlb_ready_http_path_check(_text_arg(path, "path")))


def ready_http_probe(port: int, path: str = "/health", host: Optional[str] = None) -> "tuple[bool, str]":
    """One ``--ready http`` probe, as `llmlb serve` makes it
    (``llmlb_ready_http_probe``): ``GET path`` on ``host`` (default
    127.0.0.1; a wildcard is probed on its loopback) and ``port``. Returns
    ``(ready, text)``: ready on a 2xx or 3xx status line within 1 s; ``text``
    says what the probe got (``"GET /health: 503"``, ``"GET /health:
    connection refused"``). Bad arguments raise :class:`LockError`. Blocks
    for up to about a second."""
    out = ctypes.create_string_buffer(256)
    code = _lib().llmlb_ready_http_probe(
        _text_arg(host, "host"), _port_arg(port), _text_arg(path, "path"), out, len(out)
    )
    if code < 0:
        raise LockError(_last_error(), -code)
    return code == 1, out.value.decode("utf-8", "replace")


def probe(port: int, lock_dir: "Union[None, PathLike, LockDir]" = None) -> ProbeResult:
    """Observes ``port`` without taking it or creating anything. ``lock_dir``
    is a path (default: as the CLI) or an open :class:`LockDir`."""
    state = ctypes.c_int(-1)
    info = _Info()
    port = _port_arg(port)
    lib = _lib()
    if isinstance(lock_dir, LockDir):
        directory = lock_dir._enter()
        try:
            status = lib.llmlb_lock_dir_probe(
                directory, port, ctypes.byref(state), ctypes.byref(info)
            )
        finally:
            lock_dir._leave()
    else:
        status = lib.llmlb_lock_probe(
            _dir_arg(lock_dir), port, ctypes.byref(state), ctypes.byref(info)
        )
    _check(status)
    return ProbeResult(_STATES[state.value], LockInfo._from_c(info))


def lock_path(port: int, lock_dir: "Union[None, PathLike, LockDir]" = None) -> str:
    """The lock file path for ``port``: ``<lock dir>/serve_<port>.lock``."""
    lib = _lib()
    length = ctypes.c_size_t(0)
    directory = _dir_arg(lock_dir)
    port = _port_arg(port)
    # The sizing call (NULL buffer): OK with the length, or the path's error.
    _check(lib.llmlb_lock_path(directory, port, None, 0, ctypes.byref(length)))
    buf = ctypes.create_string_buffer(length.value + 1)
    _check(lib.llmlb_lock_path(directory, port, buf, len(buf), None))
    return os.fsdecode(buf.value)


def library_version() -> str:
    """The loaded library's version, e.g. ``"0.1.0"``."""
    return _lib().llmlb_lock_version().decode()



def __getattr__(name: str):
    # In-process handover (take_over / offer) lives in its own module,
    # imported on first use: the lock's import and cycle pay nothing for it.
    if name in ("Busy", "Offer"):
        from . import handover

        return getattr(handover, name)
    raise AttributeError("module %r has no attribute %r" % (__name__, name))
