#!/usr/bin/env python3
"""launcher.py [OPTIONS] PORT -- CMD [ARGS...]  (installed: llmlb-launch ...)

The Python twin of ffi/examples/launcher.c: runs CMD under the per-port lock
exactly as `llmlb serve --port PORT [OPTIONS] -- CMD` does, through one call
of the C library, llmlb_serve_exec (``llmlb_lock.serve.serve_exec``), where
all of serve's life happens; this file only parses the command line.
OPTIONS (before or after PORT) are serve's: -p/--port, -H/--host, -w/--wait, --ready, --ready-timeout, --pidfile,
--pass-socket, --proxy, --backend-port, --max-connections, --replace,
--replace-timeout, --replace-grace, --drain-timeout (durations in seconds,
decimals allowed), so `llmlb reload` (this command line again, with
--replace before `--`) works. Lock dir: LLMLB_LOCK_DIR, else the per-user
default. Exits as serve would (usage 2, a held port 1, else CMD's code).
"""

import os
import sys

if not __package__:
    # Run as a file (`python3 ffi/python/llmlb_lock/launcher.py`): import the
    # package this file is in, not an installed one.
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from llmlb_lock.serve import serve_exec  # noqa: E402

# Messages start with the name it was run by: `llmlb-launch` (the console
# script), else launcher.py.
PROG = "llmlb-launch" if os.path.basename(sys.argv[0]).startswith("llmlb-launch") else "launcher.py"

SWITCHES = ("pass_socket", "proxy", "replace")
STRINGS = ("host", "ready", "pidfile")
SECONDS = ("ready_timeout", "wait", "replace_timeout", "replace_grace", "drain_timeout")
NUMBERS = {"backend_port": 65535, "max_connections": 0xFFFFFFFF}
SHORT = {"-p": "--port", "-H": "--host", "-w": "--wait"}


class Usage(Exception):
    pass


def _number(flag: str, text: str, top: int) -> int:
    if not (text.isascii() and text.isdigit()) or not 1 <= int(text) <= top:
        raise Usage("invalid %s %s: give a number in 1..%d" % (flag, text, top))
    return int(text)


def _seconds(flag: str, text: str) -> float:
    """Seconds as serve takes them: decimals, 0 or more, finite."""
    try:
        seconds = float(text)
    except ValueError:
        seconds = -1.0
    if not 0.0 <= seconds < float("inf"):
        raise Usage("invalid %s %s: give seconds, 0 or more (e.g. 10 or 0.5)" % (flag, text))
    return seconds


def parse(args):
    """PORT, serve_exec's keyword options and the command, from the
    arguments after the program."""
    # This process is the launcher's: it reads socket activation, logs, and
    # dies of the stop signal its command died of, as `llmlb serve` does.
    options = {"socket_activation": True, "die_of_stop_signal": True, "log": True}
    port, i = None, 0
    while i < len(args) and args[i] != "--":
        flag, i = SHORT.get(args[i], args[i]), i + 1
        name = flag[2:].replace("-", "_") if flag.startswith("--") else None
        if name in SWITCHES:
            options[name] = True
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
            options[name] = value
        elif name in SECONDS:
            options[name] = _seconds(flag, value)
        elif name in NUMBERS:
            options[name] = _number(flag, value, NUMBERS[name])
        else:
            raise Usage("unknown option %s" % flag)
    if port is None or i + 1 >= len(args):
        raise Usage("give PORT, then -- and the command")
    return port, options, args[i + 1:]


def main(argv) -> int:
    try:
        port, options, command = parse(argv[1:])
    except Usage as e:
        print("%s: %s\nusage: %s [--ready WHEN] [serve's options] PORT -- CMD [ARGS...]"
              % (PROG, e, PROG), file=sys.stderr)
        return 2
    return serve_exec(command, port, **options)


def console_main() -> None:
    """The ``llmlb-launch`` console script."""
    sys.exit(main(sys.argv))


if __name__ == "__main__":
    sys.exit(main(sys.argv))
