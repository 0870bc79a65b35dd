#!/usr/bin/env python3
"""launcher.py [OPTIONS] PORT -- CMD [ARGS...]  (installed: llmlb-launch ...)

The Python twin of ffi/examples/launcher.c: runs CMD under the per-port lock
exactly as `llmlb serve --port PORT [OPTIONS] -- CMD` does, through one call
of the C library, llmlb_serve_exec, where all of serve's life happens; this
file only parses the command line. OPTIONS (before or after PORT) are
serve's: -p/--port, -H/--host, -w/--wait, --ready, --ready-timeout, --pidfile,
--pass-socket, --proxy, --backend-port, --max-connections, --replace,
--replace-timeout, --replace-grace, --drain-timeout (durations in seconds,
decimals allowed), so `llmlb reload` (this command line again, with
--replace before `--`) works. Lock dir: LLMLB_LOCK_DIR, else the per-user
default. Exits as serve would (usage 2, a held port 1, else CMD's code).
"""

import ctypes
import os
import signal
import sys

if not __package__:
    # Run as a file (`python3 ffi/python/llmlb_lock/launcher.py`): import the
    # package this file is in, not an installed one.
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from llmlb_lock import _lib  # noqa: E402

# Messages start with the name it was run by: `llmlb-launch` (the console
# script), else launcher.py.
PROG = "llmlb-launch" if os.path.basename(sys.argv[0]).startswith("llmlb-launch") else "launcher.py"

# llmlb_lock.h's LLMLB_SERVE_ZERO_MS and LLMLB_WAIT_FOREVER.
SERVE_ZERO_MS, WAIT_FOREVER = 0xFFFFFFFE, 0xFFFFFFFF
SWITCHES = ("pass_socket", "proxy", "replace")
STRINGS = ("host", "ready", "pidfile")
SECONDS = ("ready_timeout", "wait", "replace_timeout", "replace_grace", "drain_timeout")
NUMBERS = {"backend_port": 65535, "max_connections": 0xFFFFFFFF}
SHORT = {"-p": "--port", "-H": "--host", "-w": "--wait"}
_U8, _U32 = ctypes.c_uint8, ctypes.c_uint32


class ServeOptions(ctypes.Structure):
    """``struct LlmlbServeOptions`` (llmlb_lock.h); zero fields are serve's defaults."""

    _fields_ = (
        [("size", ctypes.c_size_t), ("port", ctypes.c_uint16), ("backend_port", ctypes.c_uint16)]
        + [("max_connections", _U32)]
        + [(name, ctypes.c_char_p) for name in ("lock_dir",) + STRINGS]
        + [(name + "_ms", _U32) for name in SECONDS]
        + [(name, _U8) for name in SWITCHES + ("socket_activation", "die_of_stop_signal", "log")]
        + [("reserved", _U8 * 6)]
    )


class Usage(Exception):
    pass


def _number(flag: str, text: str, top: int) -> int:
    if not (text.isascii() and text.isdigit()) or not 1 <= int(text) <= top:
        raise Usage("invalid %s %s: give a number in 1..%d" % (flag, text, top))
    return int(text)


def _millis(flag: str, text: str) -> int:
    """Seconds as the struct's milliseconds, as launcher.c's seconds()."""
    try:
        ms = float(text) * 1000.0
    except ValueError:
        ms = -1.0
    if not 0.0 <= ms < float("inf"):
        raise Usage("invalid %s %s: give seconds, 0 or more (e.g. 10 or 0.5)" % (flag, text))
    if ms == 0.0:
        return SERVE_ZERO_MS
    return WAIT_FOREVER if ms >= SERVE_ZERO_MS else -int(-ms // 1)  # rounded up


def parse(args):
    """``ServeOptions`` and the command, from the arguments after the program."""
    opts = ServeOptions(size=ctypes.sizeof(ServeOptions), socket_activation=1, log=1,
                        die_of_stop_signal=1)  # this process is the launcher's
    port, i = None, 0
    while i < len(args) and args[i] != "--":
        flag, i = SHORT.get(args[i], args[i]), i + 1
        name = flag[2:].replace("-", "_") if flag.startswith("--") else None
        if name in SWITCHES:
            setattr(opts, name, 1)
            continue
        value = flag
        if name is not None:
            if i == len(args) or args[i] == "--":
                raise Usage("%s needs a value" % flag)
            value, i = args[i], i + 1
        if name in (None, "port"):
            if port is not None:
                raise Usage("PORT given twice")
            port = _number("PORT", value, 65535)
        elif name in STRINGS:
            setattr(opts, name, os.fsencode(value))
        elif name in SECONDS:
            setattr(opts, name + "_ms", _millis(flag, value))
        elif name in NUMBERS:
            setattr(opts, name, _number(flag, value, NUMBERS[name]))
        else:
            raise Usage("unknown option %s" % flag)
    if port is None or i + 1 >= len(args):
        raise Usage("give PORT, then -- and the command")
    opts.port = port
    return opts, args[i + 1:]


def main(argv) -> int:
    try:
        opts, command = parse(argv[1:])
    except Usage as e:
        print("%s: %s\nusage: %s [--ready WHEN] [serve's options] PORT -- CMD [ARGS...]"
              % (PROG, e, PROG), file=sys.stderr)
        return 2
    serve_exec = _lib().llmlb_serve_exec
    serve_exec.argtypes = [ctypes.POINTER(ServeOptions), ctypes.POINTER(ctypes.c_char_p)]
    serve_exec.restype = ctypes.c_int
    argv_c = (ctypes.c_char_p * (len(command) + 1))(*map(os.fsencode, command), None)
    # The library's handlers chain to the ones installed before them: Python's
    # SIGINT handler would run too, and raise KeyboardInterrupt after the call.
    for name in ("SIGINT", "SIGTERM", "SIGHUP", "SIGUSR1", "SIGUSR2", "SIGQUIT", "SIGWINCH"):
        if hasattr(signal, name):
            signal.signal(getattr(signal, name), signal.SIG_DFL)
    # The call may end this process by the signal that stopped CMD
    # (die_of_stop_signal): nothing of ours may wait in a buffer then.
    sys.stdout.flush()
    sys.stderr.flush()
    return serve_exec(ctypes.byref(opts), argv_c)  # ctypes releases the GIL


def console_main() -> None:
    """The ``llmlb-launch`` console script."""
    sys.exit(main(sys.argv))


if __name__ == "__main__":
    sys.exit(main(sys.argv))
