"""``serve_exec``: ``llmlb serve [options] -- command`` as one Python call.

The whole of serve's life (the lock, readiness, the command's process
group, signals, the service manager, pidfile, socket passing, the proxy,
replace, reload, draining) runs in the C library's ``llmlb_serve_exec``;
this module only fills its options struct.
"""

import ctypes
import math
import os
import signal
import sys
import threading
from typing import Optional, Sequence, Union

from . import PathLike, _lib

__all__ = ["serve_exec"]

# llmlb_lock.h's LLMLB_SERVE_ZERO_MS and LLMLB_WAIT_FOREVER.
_ZERO_MS, _FOREVER = 0xFFFFFFFE, 0xFFFFFFFF
_SWITCHES = ("pass_socket", "proxy", "replace", "socket_activation", "die_of_stop_signal", "log")
_STRINGS = ("lock_dir", "host", "ready", "pidfile")
_SECONDS = ("ready_timeout", "wait", "replace_timeout", "replace_grace", "drain_timeout")
# The signals serve handles: the library chains to a handler installed before
# its own, so Python's would run too (SIGINT's raising KeyboardInterrupt once
# the call returns).
_HANDLED = ("SIGINT", "SIGTERM", "SIGHUP", "SIGUSR1", "SIGUSR2", "SIGQUIT", "SIGWINCH")


class ServeOptions(ctypes.Structure):
    """``struct LlmlbServeOptions`` (llmlb_lock.h); zero fields are serve's defaults."""

    _fields_ = (
        [("size", ctypes.c_size_t), ("port", ctypes.c_uint16), ("backend_port", ctypes.c_uint16)]
        + [("max_connections", ctypes.c_uint32)]
        + [(name, ctypes.c_char_p) for name in _STRINGS]
        + [(name + "_ms", ctypes.c_uint32) for name in _SECONDS]
        + [(name, ctypes.c_uint8) for name in _SWITCHES]
        + [("reserved", ctypes.c_uint8 * 6)]
    )


def _millis(name: str, seconds: float) -> int:
    """Seconds as the struct's milliseconds: 0 is a real zero, inf no limit."""
    if not isinstance(seconds, (int, float)) or isinstance(seconds, bool) or not seconds >= 0:
        raise ValueError("%s must be seconds, 0 or more (math.inf: no limit), not %r" % (name, seconds))
    if seconds == 0:
        return _ZERO_MS
    ms = seconds * 1000.0
    return _FOREVER if ms >= _ZERO_MS else max(1, math.ceil(ms))


def serve_exec(
    command: Sequence[Union[str, bytes]],
    port: int,
    *,
    lock_dir: Optional[PathLike] = None,
    host: Optional[str] = None,
    ready: Optional[str] = None,
    ready_timeout: Optional[float] = None,
    wait: Optional[float] = None,
    pidfile: Optional[PathLike] = None,
    pass_socket: bool = False,
    proxy: bool = False,
    backend_port: Optional[int] = None,
    max_connections: Optional[int] = None,
    replace: bool = False,
    replace_timeout: Optional[float] = None,
    replace_grace: Optional[float] = None,
    drain_timeout: Optional[float] = None,
    socket_activation: bool = False,
    die_of_stop_signal: bool = False,
    log: bool = True,
) -> int:
    """Runs ``command`` under ``port``'s lock exactly as ``llmlb serve
    --port PORT [options] -- command`` does, and returns the exit code serve
    would exit with (2 for options serve refuses, with one ``Error:`` line
    on stderr; 128 + N where serve dies of signal N).

    The options are serve's flags (``ready="http:/health"``, ``replace=True``
    …); ``None`` is the flag's default, seconds may have decimals, 0 is a
    real zero and ``math.inf`` no limit. ``lock_dir=None`` is
    ``$LLMLB_LOCK_DIR``, else the per-user default. ``die_of_stop_signal``:
    once everything is released, end this process by the SIGTERM or SIGINT
    the command died of, as ``llmlb serve`` does (a launcher's ``main``
    wants it; a library caller rarely does). ``log``: serve's log lines on
    stderr. ``llmlb reload`` runs this process's own command line again with
    ``--replace`` before ``--``.

    Blocks until the server ends; the GIL is released meanwhile. Must be
    called from the main thread: serve's signals are reset to their default
    action first (Python's own handlers are put back when it returns), and
    the command's parent-death signal is tied to the calling thread.
    """
    if threading.current_thread() is not threading.main_thread():
        raise RuntimeError("serve_exec must be called from the main thread (it handles the process's signals)")
    argv = [os.fsencode(arg) for arg in command]
    opts = ServeOptions(size=ctypes.sizeof(ServeOptions))
    if not isinstance(port, int) or isinstance(port, bool) or not 0 <= port <= 65535:
        raise ValueError("port must be in 1..65535, not %r" % (port,))
    opts.port = port  # 0 is serve's to refuse (exit 2), as the C caller's
    values = {"lock_dir": lock_dir, "host": host, "ready": ready, "pidfile": pidfile}
    for name, value in values.items():
        if value is not None:
            setattr(opts, name, os.fsencode(value))
    for name, seconds in zip(_SECONDS, (ready_timeout, wait, replace_timeout, replace_grace, drain_timeout)):
        if seconds is not None:
            setattr(opts, name + "_ms", _millis(name, seconds))
    for name, top, value in (("backend_port", 65535, backend_port), ("max_connections", 0xFFFFFFFF, max_connections)):
        if value is not None:
            if not isinstance(value, int) or not 1 <= value <= top:
                raise ValueError("%s must be in 1..%d, not %r" % (name, top, value))
            setattr(opts, name, value)
    flags = (pass_socket, proxy, replace, socket_activation, die_of_stop_signal, log)
    for name, on in zip(_SWITCHES, flags):
        setattr(opts, name, 1 if on else 0)
    call = _lib().llmlb_serve_exec
    call.argtypes = [ctypes.POINTER(ServeOptions), ctypes.POINTER(ctypes.c_char_p)]
    call.restype = ctypes.c_int
    argv_c = (ctypes.c_char_p * (len(argv) + 1))(*argv, None)
    saved = {}
    for name in _HANDLED:
        if hasattr(signal, name):
            number = getattr(signal, name)
            saved[number] = signal.signal(number, signal.SIG_DFL)
    # The call may end this process (die_of_stop_signal): nothing of ours
    # may wait in a buffer then.
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        return call(ctypes.byref(opts), argv_c)  # ctypes releases the GIL
    finally:
        for number, handler in saved.items():
            if handler is not None:
                signal.signal(number, handler)
