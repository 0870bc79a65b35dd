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
import os
import sys
import threading
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Optional, Union

__all__ = [
    "AlreadyRunning",
    "LockError",
    "LockDir",
    "LockInfo",
    "PortLock",
    "ProbeResult",
    "library_version",
    "lock_path",
    "probe",
]

# LlmlbStatus (include/llmlb_lock.h): explicit values, never reused.
OK = 0
ALREADY_RUNNING = 1
INVALID_ARGUMENT = 2
IO_ERROR = 3
UNSAFE_PATH = 4
PANIC = 5

_STATES = {0: "free", 1: "held", 2: "stale"}
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)

PathLike = Union[str, bytes, "os.PathLike[str]", "os.PathLike[bytes]"]


class _Info(ctypes.Structure):
    # Field order and types are the C contract's LlmlbLockInfo.
    _fields_ = [
        ("pid", ctypes.c_uint32),
        ("port", ctypes.c_uint16),
        ("started_at_unix_ms", ctypes.c_int64),
    ]


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
        "llmlb_lock_set_child_pgid": (status, [lock_p, ctypes.c_uint32]),
        "llmlb_lock_fd": (status, [lock_p, ctypes.POINTER(ctypes.c_int)]),
        "llmlb_last_error": (ctypes.c_char_p, []),
        "llmlb_lock_version": (ctypes.c_char_p, []),
    }
    for name, (restype, argtypes) in signatures.items():
        fn = getattr(lib, name)
        fn.restype = restype
        fn.argtypes = argtypes
    return lib


_lib_cache: Optional[ctypes.CDLL] = None
_lib_lock = threading.Lock()


def _lib() -> ctypes.CDLL:
    global _lib_cache
    with _lib_lock:
        if _lib_cache is None:
            _lib_cache = _load()
        return _lib_cache


# Loaded now, so a missing or unloadable library is reported by the import
# itself, with the fix, not by the first call.
_lib()


class LockInfo:
    """Who holds (or held) a port: ``pid``, ``port``, ``started_at``
    (a timezone-aware UTC ``datetime``)."""

    __slots__ = ("pid", "port", "started_at")

    def __init__(self, pid: int, port: int, started_at: datetime):
        self.pid = pid
        self.port = port
        self.started_at = started_at

    @classmethod
    def _from_c(cls, info: _Info) -> Optional["LockInfo"]:
        # All zeros is the C API's "none or unreadable".
        if info.pid == 0 and info.port == 0 and info.started_at_unix_ms == 0:
            return None
        started = _EPOCH + timedelta(milliseconds=info.started_at_unix_ms)
        return cls(int(info.pid), int(info.port), started)

    def __eq__(self, other):
        if not isinstance(other, LockInfo):
            return NotImplemented
        return (self.pid, self.port, self.started_at) == (other.pid, other.port, other.started_at)

    def __repr__(self):
        return "LockInfo(pid=%d, port=%d, started_at=%s)" % (
            self.pid,
            self.port,
            self.started_at.isoformat(),
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
    return None if lock_dir is None else os.fsencode(lock_dir)


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
        self._users = 0
        self._cond = threading.Condition()
        # The resolved dir, for messages and lock paths (port 1 is any port).
        self.path = os.path.dirname(lock_path(1, lock_dir))
        handle = ctypes.c_void_p()
        _check(_lib().llmlb_lock_dir_open(_dir_arg(lock_dir), ctypes.byref(handle)))
        self._handle = handle.value

    @property
    def closed(self) -> bool:
        return self._handle is None

    def _enter(self) -> int:
        with self._cond:
            if self._handle is None:
                raise LockError("lock dir %s is closed" % self.path, INVALID_ARGUMENT)
            self._users += 1
            return self._handle

    def _leave(self) -> None:
        with self._cond:
            self._users -= 1
            self._cond.notify_all()

    def acquire(self, port: int) -> "PortLock":
        """Takes ``port``'s lock: a held :class:`PortLock` (raises
        :class:`AlreadyRunning` if another holder has it)."""
        return PortLock(port, self).acquire()

    def probe(self, port: int) -> "ProbeResult":
        """Observes ``port`` without taking it or creating anything."""
        return probe(port, self)

    def close(self) -> None:
        """Closes the handle (idempotent), after calls in progress finish."""
        with self._cond:
            while self._users:
                self._cond.wait()
            handle, self._handle = self._handle, None
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
    releases on exit. After ``os.fork()`` a child's ``release()`` only closes
    the child's descriptor unless the child called ``adopt()`` first.

    Not for concurrent use from several threads without a lock of your own.
    """

    def __init__(self, port: int, lock_dir: "Union[None, PathLike, LockDir]" = None):
        self.port = _port_arg(port)
        self.lock_dir = lock_dir
        self._handle: Optional[int] = None
        self.reclaimed_from: Optional[LockInfo] = None
        """The dead holder's info when acquire reclaimed a stale lock."""

    @property
    def held(self) -> bool:
        """Whether this object holds the lock (acquired and not released)."""
        return self._handle is not None

    def acquire(self) -> "PortLock":
        if self._handle is not None:
            raise LockError("port %d is already held by this PortLock" % self.port, INVALID_ARGUMENT)
        lib = _lib()
        handle = ctypes.c_void_p()
        other = _Info()
        if isinstance(self.lock_dir, LockDir):
            directory = self.lock_dir._enter()
            try:
                status = lib.llmlb_lock_dir_acquire(
                    directory, self.port, ctypes.byref(handle), ctypes.byref(other)
                )
            finally:
                self.lock_dir._leave()
        else:
            status = lib.llmlb_lock_acquire(
                _dir_arg(self.lock_dir), self.port, ctypes.byref(handle), ctypes.byref(other)
            )
        if status == ALREADY_RUNNING:
            raise AlreadyRunning(_last_error(), self.port, LockInfo._from_c(other))
        _check(status)
        self._handle = handle.value
        self.reclaimed_from = LockInfo._from_c(other)
        return self

    def release(self) -> None:
        """Releases the lock (removing its file if this process is the
        recorded holder). A no-op if not held."""
        handle, self._handle = self._handle, None
        if handle is not None:
            _check(_lib().llmlb_lock_release(handle))

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

    def set_child_pgid(self, pgid: Optional[int]) -> None:
        """Records the process group of the command this launcher runs (a
        live process leading its own group, e.g. a child started with
        ``start_new_session=True``), so ``llmlb status`` shows it and
        ``llmlb stop --force`` kills all of it; ``None`` clears it."""
        value = 0 if pgid is None else int(pgid)
        if not 0 <= value <= 0xFFFFFFFF:
            raise LockError("invalid pgid %d" % value, INVALID_ARGUMENT)
        _check(_lib().llmlb_lock_set_child_pgid(self._require(), value))

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

    def _require(self) -> int:
        if self._handle is None:
            raise LockError("port %d is not held by this PortLock" % self.port, INVALID_ARGUMENT)
        return self._handle

    def __enter__(self) -> "PortLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()

    def __del__(self):
        # Like the Rust guard's Drop: an unreleased lock is released when
        # collected (at worst, after fork, this only closes a descriptor).
        try:
            self.release()
        except Exception:
            pass

    def __repr__(self):
        return "PortLock(port=%d, held=%s)" % (self.port, self.held)


class ProbeResult:
    """What :func:`probe` saw: ``state`` is ``"free"``, ``"held"`` or
    ``"stale"``; ``info`` the (dead) holder's info, or ``None``."""

    __slots__ = ("state", "info")

    def __init__(self, state: str, info: Optional[LockInfo]):
        self.state = state
        self.info = info

    def __repr__(self):
        return "ProbeResult(state=%r, info=%r)" % (self.state, self.info)


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
