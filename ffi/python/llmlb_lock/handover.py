"""In-process handover: a Python program that serves a port itself (its own
accept loop: ``http.server``, asyncio, ...) takes the port over from the
server holding it, and offers its own lock and listening socket to the next
one, without a refused connection. The protocol of ``llmlb serve --replace``,
run by the library (``llmlb_handover_take``, ``llmlb_handover_offer``).

    lock, sock = PortLock.take_over(8000)     # (PortLock, socket or None)
    if sock is None:                          # the port was free: bind it
        sock = socket.create_server(("127.0.0.1", 8000))
    ... serve on sock (non-blocking accepts) ...
    with lock.offer(sock, grace=2.0) as offer:    # READY; commits the takeover
        offer.wait()                          # until a successor has the port
    ... stop accepting, finish in-flight requests ...
    lock.release()                            # removes nothing: it is the successor's

The listening socket's open file description is shared with the other
server during a handover: its blocking mode is shared too, and both accept
from one queue. Accept without blocking, take ``BlockingIOError`` as "the
other was first", and close the socket (never ``shutdown()`` it).
"""

from __future__ import annotations

import ctypes
import socket
import time
from typing import Optional, Tuple

from . import (
    ALREADY_RUNNING,
    INVALID_ARGUMENT,
    AlreadyRunning,
    LockError,
    LockInfo,
    PortLock,
    _check,
    _deadline,
    _dir_arg,
    _Info,
    _last_error,
    _lib,
    _port_arg,
    _slice_ms,
)

__all__ = ["Busy", "Offer", "take_over"]

# LlmlbStatus values added with the handover (include/llmlb_lock.h).
BUSY = 7
UNSUPPORTED = 8
HANDED_OVER = 9

_WAIT_FOREVER = 0xFFFFFFFF


def _prototypes() -> ctypes.CDLL:
    lib = _lib()
    if not getattr(lib, "_handover_typed", False):
        status = ctypes.c_int
        lock_p = ctypes.c_void_p
        offer_p = ctypes.c_void_p
        for name, restype, argtypes in (
            (
                "llmlb_handover_take",
                status,
                [
                    ctypes.c_char_p,
                    ctypes.c_uint16,
                    ctypes.c_uint32,
                    ctypes.POINTER(lock_p),
                    ctypes.POINTER(ctypes.c_int),
                    ctypes.POINTER(_Info),
                ],
            ),
            (
                "llmlb_handover_offer",
                status,
                [lock_p, ctypes.c_int, ctypes.c_uint32, ctypes.POINTER(offer_p)],
            ),
            ("llmlb_offer_fd", ctypes.c_int, [offer_p]),
            ("llmlb_offer_poll", status, [offer_p, ctypes.c_uint32, ctypes.POINTER(ctypes.c_uint32)]),
            ("llmlb_offer_free", None, [offer_p]),
        ):
            fn = getattr(lib, name)
            fn.restype = restype
            fn.argtypes = argtypes
        lib._handover_typed = True
    return lib


class Busy(LockError):
    """Another successor is taking the port over, or its holder did not
    answer in time: nothing was taken or stopped; try again later."""

    def __init__(self, message: str):
        super().__init__(message, BUSY)


def _millis(seconds: float, what: str) -> int:
    seconds = float(seconds)
    if not seconds >= 0:  # negative or NaN
        raise LockError("invalid %s %r: give seconds, 0 or more" % (what, seconds), INVALID_ARGUMENT)
    return min(int(seconds * 1000), _WAIT_FOREVER - 1)


def take_over(
    port: int, lock_dir=None, timeout: float = 5.0
) -> Tuple[PortLock, Optional[socket.socket]]:
    """Takes ``port`` over from the server holding it: ``(lock, sock)`` with
    the holder's listening socket, the holder serving on until this process
    commits with :meth:`PortLock.offer` (releasing the lock before that gives
    the port back). A free or stale port is taken as ``PortLock(port,
    state="starting")`` takes it, and ``sock`` is ``None``: bind it yourself.

    ``lock_dir``: a path (default: as the ``llmlb`` CLI). ``timeout``
    (seconds) bounds the exchange with the holder. Raises
    :class:`AlreadyRunning` (the holder offers no handover; nothing is
    stopped) or :class:`Busy` (another takeover is under way, or the holder
    did not answer in time)."""
    from . import LockDir

    if isinstance(lock_dir, LockDir):
        lock_dir = lock_dir.path
    port = _port_arg(port)
    lib = _prototypes()
    handle = ctypes.c_void_p()
    fd = ctypes.c_int(-1)
    other = _Info()
    status = lib.llmlb_handover_take(
        _dir_arg(lock_dir),
        port,
        _millis(timeout, "timeout"),
        ctypes.byref(handle),
        ctypes.byref(fd),
        ctypes.byref(other),
    )
    if status == ALREADY_RUNNING:
        raise AlreadyRunning(_last_error(), port, LockInfo._from_c(other))
    if status == BUSY:
        raise Busy(_last_error())
    _check(status)
    lock = PortLock(port, lock_dir)
    # Where acquire would have written it: release() hands it back to C.
    lock._out_handle.value = handle.value
    lock._held = True
    if fd.value < 0:
        lock.reclaimed_from = LockInfo._from_c(other)
        return lock, None
    return lock, socket.socket(fileno=fd.value)


def offer(lock: PortLock, sock, grace: float = 0.0) -> "Offer":
    """See :meth:`PortLock.offer`."""
    lib = _prototypes()
    fileno = sock if isinstance(sock, int) else sock.fileno()
    out = ctypes.c_void_p()
    status = lib.llmlb_handover_offer(
        lock._require(), fileno, _millis(grace, "grace"), ctypes.byref(out)
    )
    _check(status)
    made = Offer(out.value, lock.port)
    # Kept by the lock too: an offer whose result was dropped must not be
    # withdrawn by the garbage collector (that would cancel the commit).
    lock._offer = made
    return made


class Offer:
    """This lock and its listening socket, offered to a successor
    (:meth:`PortLock.offer`). ``wait()`` blocks until a successor has taken
    the port (then stop accepting, finish in-flight work, and
    ``lock.release()``); ``is_set()`` looks; ``fileno()`` becomes readable
    then (``selectors``, ``loop.add_reader``; never read from it or close
    it); ``successor_pid`` says who. ``close()`` withdraws an offer nobody
    took (do it before releasing the lock to stop without a successor). A
    context manager that closes on exit. Its lock keeps it alive: dropping
    the last reference of yours withdraws nothing."""

    def __init__(self, handle: int, port: int):
        self._handle: Optional[int] = handle
        self.port = port
        self._successor = 0

    def _live(self) -> int:
        if self._handle is None:
            raise LockError("the offer of port %d is closed" % self.port, INVALID_ARGUMENT)
        return self._handle

    def _poll(self, ms: int) -> int:
        pid = ctypes.c_uint32(0)
        _check(_prototypes().llmlb_offer_poll(self._live(), ms, ctypes.byref(pid)))
        if pid.value:
            self._successor = pid.value
        return pid.value

    def wait(self, timeout: Optional[float] = None) -> bool:
        """Waits up to ``timeout`` seconds (``None``: no limit) for a
        successor to take the port; True once one has. Ctrl-C interrupts it
        within 0.2 s."""
        if self._successor:
            return True
        deadline = None if timeout is None else _deadline(timeout)
        while True:
            if self._poll(_slice_ms(deadline)):
                return True
            if deadline is not None and time.monotonic() >= deadline:
                return False

    def is_set(self) -> bool:
        """Whether a successor has taken the port (without waiting)."""
        return bool(self._successor or self._poll(0))

    @property
    def successor_pid(self) -> Optional[int]:
        """The successor's PID once it has taken the port, else ``None``."""
        return self._successor or self._poll(0) or None

    def fileno(self) -> int:
        """A descriptor that becomes readable once a successor has taken the
        port, and stays so. Owned by the offer."""
        return _prototypes().llmlb_offer_fd(self._live())

    def close(self) -> None:
        """Frees the offer (idempotent), withdrawing it if no successor took
        it; a takeover not yet committed is then given back to the
        predecessor at the lock's release."""
        handle, self._handle = self._handle, None
        if handle is not None:
            _prototypes().llmlb_offer_free(handle)

    @property
    def closed(self) -> bool:
        return self._handle is None

    def __enter__(self) -> "Offer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass

    def __repr__(self):
        return "Offer(port=%d, successor_pid=%r, closed=%s)" % (
            self.port,
            self._successor or None,
            self.closed,
        )

