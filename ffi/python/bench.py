"""The Python wrapper's acquire + release cycle beside the C ABI's, its
floor and filelock's, in one run on one file system (tmpfs when present).

    cargo build --release -p llmlb-lock-ffi
    python3 ffi/python/bench.py [--iterations N] [--rounds R] [--base DIR] [--no-filelock]

Contenders (each in a private lock dir; all in this one process, every
round timing each of them once, in an order rotated from round to round, so
a burst of load on a shared machine hits all alike; the figure is the median
over rounds of the time per cycle, wall clock and the process's CPU time,
which waiting for a busy CPU does not inflate; a ratio is the median of the
rounds' own ratios, each between two timings of one round):

- C, timed in C by ``ffi/benches/c_cycle.c`` (compiled here with ``cc`` as
  a library against a copy of the library this module loads, and loaded
  into this process): ``floor_unlink`` (open O_CREAT + flock + unlink +
  close), ``c_abi`` (``llmlb_lock_acquire`` by path + release),
  ``c_abi_dir`` (through a dir handle);
- Python: ``py_floor_unlink`` (the same four calls through ``os`` and
  ``fcntl``), ``ctypes_only`` (``c_abi_dir``'s two C calls through ctypes
  with ready-made arguments, no wrapper: the floor for any ctypes binding),
  ``py_path`` (``PortLock(port, "/dir")``), ``py_dir``
  (``PortLock(port, LockDir(...))``: the dir opened once; both lock objects
  made once, as a server that keeps its lock does), ``py_with`` (``with
  PortLock(port, locks):``, a new lock object per cycle), and ``filelock``
  (``FileLock(path)``, version 4.2.12 from PyPI: installed into a venv in
  cargo's target dir (``CARGO_TARGET_DIR`` if set, else ``target/``) when it
  is not importable; printed as SKIPPED when that fails).

Targets (issues 12 and 29): py_dir <= 1.2x c_abi_dir, py_path <= 1.2x c_abi,
filelock >= 3x either, and c_abi_dir <= 2.0x floor_unlink.
"""

from __future__ import annotations

import argparse
import ctypes
import fcntl
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
sys.path.insert(0, str(HERE))

import llmlb_lock  # noqa: E402

PORT = 8000
FILELOCK_VERSION = "4.2.12"
# Like cargo: a relative CARGO_TARGET_DIR is taken from the current directory.
VENV = (
    Path(os.environ["CARGO_TARGET_DIR"]).resolve()
    if os.environ.get("CARGO_TARGET_DIR")
    else REPO / "target"
) / "bench-venv"
REEXEC_GUARD = "LLMLB_BENCH_IN_VENV"


def filelock_or_reason():
    """filelock's FileLock, or why it is missing (after trying the venv)."""
    try:
        import filelock
    except ImportError:
        return None, "not importable"
    if filelock.__version__ != FILELOCK_VERSION:
        return filelock.FileLock, "version %s (wanted %s)" % (filelock.__version__, FILELOCK_VERSION)
    return filelock.FileLock, None


def reexec_in_venv() -> str:
    """Installs filelock into target/bench-venv and runs this script there;
    returns why not, if it cannot."""
    if os.environ.get(REEXEC_GUARD):
        return "not importable even in %s" % VENV
    python = VENV / "bin" / "python"
    try:
        if not python.exists():
            subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
        subprocess.run(
            [str(python), "-m", "pip", "install", "-q", "filelock==" + FILELOCK_VERSION],
            check=True,
        )
    except (OSError, subprocess.CalledProcessError) as e:
        return "could not install filelock==%s into %s: %s" % (FILELOCK_VERSION, VENV, e)
    env = dict(os.environ, **{REEXEC_GUARD: "1"})
    os.execve(str(python), [str(python), __file__] + sys.argv[1:], env)
    raise AssertionError("unreachable")


def loaded_library() -> Path:
    llmlb_lock._lib()
    for path in llmlb_lock._candidates():
        if path.is_file():
            return path
    raise OSError("no library")


C_CONTENDERS = ("floor_unlink", "c_abi", "c_abi_dir")  # c_cycle.c's order


def build_c(base: Path, lib: Path):
    """Compiles c_cycle.c as a library and loads it into this process:
    {name: function(iterations) -> (wall_ns, cpu_ns) per cycle}, or a
    reason string."""
    cc = shutil.which(os.environ.get("CC", "cc"))
    if not cc:
        return "no C compiler (set CC)"
    so = base / "c_cycle.so"
    # The library's file name may not be libllmlb_lock.so (LLMLB_LOCK_LIB):
    # link against a copy under the standard name.
    libdir = base / "lib"
    libdir.mkdir()
    shutil.copy(lib, libdir / "libllmlb_lock.so")
    subprocess.run(
        [cc, "-std=c11", "-O2", "-Wall", "-Wextra", "-Werror", "-pedantic",
         "-shared", "-fPIC", "-DC_CYCLE_NO_MAIN",
         "-I", str(REPO / "include"), str(REPO / "ffi" / "benches" / "c_cycle.c"),
         "-o", str(so), "-L", str(libdir), "-lllmlb_lock", "-Wl,-rpath," + str(libdir)],
        check=True,
    )
    c = ctypes.CDLL(str(so))
    c.c_cycle_setup.argtypes = [ctypes.c_char_p]
    c.c_cycle_setup.restype = ctypes.c_int
    c.c_cycle_time.argtypes = [ctypes.c_int, ctypes.c_long,
                               ctypes.POINTER(ctypes.c_double), ctypes.POINTER(ctypes.c_double)]
    c.c_cycle_time.restype = None
    work = base / "c"
    work.mkdir(mode=0o700)
    if c.c_cycle_setup(str(work).encode()) != 0:
        return "c_cycle_setup failed (see above)"

    def timer(index):
        def time_c(iterations: int):
            wall, cpu = ctypes.c_double(), ctypes.c_double()
            c.c_cycle_time(index, iterations, ctypes.byref(wall), ctypes.byref(cpu))
            return wall.value, cpu.value
        return time_c

    return {name: timer(i) for i, name in enumerate(C_CONTENDERS)}


def python_timer(fn):
    """A function(iterations) -> (wall_ns, cpu_ns) per cycle of fn()."""
    def time_py(iterations: int):
        w0, c0 = time.perf_counter_ns(), time.process_time_ns()
        for _ in range(iterations):
            fn()
        c1, w1 = time.process_time_ns(), time.perf_counter_ns()
        return (w1 - w0) / iterations, (c1 - c0) / iterations
    return time_py


def py_contenders(base: Path, file_lock):
    """{name: zero-argument cycle function}."""
    def private(name):
        d = base / name
        d.mkdir(mode=0o700)
        return d

    floor_file = str(private("py_floor_unlink") / ("serve_%d.lock" % PORT))

    def py_floor_unlink():
        fd = os.open(floor_file, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.unlink(floor_file)
        os.close(fd)

    path_lock = llmlb_lock.PortLock(PORT, str(private("py_path")))

    def py_path():
        path_lock.acquire()
        path_lock.release()

    dir_lock = llmlb_lock.PortLock(PORT, llmlb_lock.LockDir(str(private("py_dir"))))

    def py_dir():
        dir_lock.acquire()
        dir_lock.release()

    with_dir = llmlb_lock.LockDir(str(private("py_with")))
    port_lock = llmlb_lock.PortLock

    def py_with():
        with port_lock(PORT, with_dir):
            pass

    py_with.keep_open = with_dir

    # What ctypes alone costs: the same two C calls with ready-made arguments
    # and no wrapper around them (what no Python binding over ctypes can beat).
    lib = llmlb_lock._lib()
    raw_dir = llmlb_lock.LockDir(str(private("ctypes_only")))
    raw_acquire, raw_release = lib._fast_dir_acquire, lib._fast_release
    # The handle alone: raw_dir (which closes it when collected) lives as
    # long as this function object does.
    raw_args = (ctypes.c_void_p(raw_dir._handle), ctypes.c_uint16(PORT))
    raw_handle, raw_other = ctypes.c_void_p(), llmlb_lock._Info()
    raw_refs = (ctypes.byref(raw_handle), ctypes.byref(raw_other))

    def ctypes_only():
        if raw_acquire(*raw_args, *raw_refs) != llmlb_lock.OK:
            raise RuntimeError("ctypes_only: acquire failed")
        raw_release(raw_handle)

    ctypes_only.keep_open = raw_dir
    contenders = {"py_floor_unlink": py_floor_unlink, "py_path": py_path, "py_dir": py_dir,
                  "py_with": py_with, "ctypes_only": ctypes_only}
    if file_lock is not None:
        fl = file_lock(str(private("filelock") / ("serve_%d.lock" % PORT)))

        def filelock_cycle():
            fl.acquire()
            fl.release()

        contenders["filelock"] = filelock_cycle
    return contenders


def time_all(timers, iterations: int, rounds: int):
    """{name: [(wall_ns, cpu_ns) per round]}. Every round times every
    contender once, in an order rotated from round to round, all in this
    process: a burst of load, or a position in the round, hits all alike."""
    names = list(timers)
    for name in names:  # warm-up: page cache, dentries, PID cache, bytecode
        timers[name](iterations // 10 + 1)
    samples = {name: [] for name in names}
    for r in range(rounds):
        k = r % len(names)
        for name in names[k:] + names[:k]:
            samples[name].append(timers[name](iterations))
    return samples


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--iterations", type=int, default=2000, help="cycles per round")
    ap.add_argument("--rounds", type=int, default=15, help="rounds (median taken)")
    ap.add_argument("--base", help="where the private lock dirs go (default: /dev/shm, else TMPDIR)")
    ap.add_argument("--no-filelock", action="store_true",
                    help="leave filelock out (no venv, no download): a quick check that this runs")
    args = ap.parse_args()
    if args.iterations < 1 or args.rounds < 1:
        ap.error("--iterations and --rounds must be at least 1")

    if args.no_filelock:
        file_lock, why = None, "--no-filelock"
    else:
        file_lock, why = filelock_or_reason()
        if file_lock is None:
            why = reexec_in_venv()  # returns only when it cannot
    base_root = args.base or ("/dev/shm" if os.path.isdir("/dev/shm") else tempfile.gettempdir())
    base = Path(tempfile.mkdtemp(prefix="llmlb-pybench-", dir=base_root))
    try:
        lib = loaded_library()
        print("library: %s (version %s); per-cycle calls through %s"
              % (lib, llmlb_lock.library_version(),
                 "_speedups" if llmlb_lock.speedups() else "ctypes (no _speedups module built)"))
        if "debug" in lib.parts:
            print("warning: a debug build; for figures run `cargo build --release -p llmlb-lock-ffi`"
                  " or set LLMLB_LOCK_LIB")
        print("file system: %s; %d rounds x %d cycles; Python %s"
              % (base_root, args.rounds, args.iterations, sys.version.split()[0]))
        if why:
            print("==> filelock: SKIPPED (%s)" % why if file_lock is None else "note: filelock " + why)
        timers = build_c(base, lib)
        if isinstance(timers, str):
            print("==> C contenders: SKIPPED (%s)" % timers)
            timers = {}
        for name, fn in py_contenders(base, file_lock).items():
            timers[name] = python_timer(fn)
        samples = time_all(timers, args.iterations, args.rounds)
    finally:
        shutil.rmtree(base, ignore_errors=True)

    print("%-16s %12s %12s" % ("cycle (median)", "wall us", "cpu us"))
    for name in ["floor_unlink", "c_abi", "c_abi_dir", "py_floor_unlink", "ctypes_only", "py_path",
                 "py_dir", "py_with", "filelock"]:
        if name in samples:
            print("%-16s %12.2f %12.2f" % (
                name,
                statistics.median(w for w, _ in samples[name]) / 1e3,
                statistics.median(c for _, c in samples[name]) / 1e3,
            ))

    print("ratios: the median of the rounds' own ratios (each round times both sides),")
    print("and in brackets the middle half of them")

    def ratio(a, b, what, target):
        if a in samples and b in samples:
            figures = []
            for side in (0, 1):  # wall, cpu
                per_round = sorted(x[side] / y[side] for x, y in zip(samples[a], samples[b]))
                q = len(per_round) // 4
                figures += [statistics.median(per_round), per_round[q], per_round[-1 - q]]
            print("%-40s wall %5.2fx [%4.2f-%4.2f]  cpu %5.2fx [%4.2f-%4.2f]  (target %s)"
                  % ((what,) + tuple(figures) + (target,)))

    ratio("c_abi_dir", "floor_unlink", "c_abi_dir / floor_unlink", "<= 2.0x")
    ratio("c_abi", "floor_unlink", "c_abi / floor_unlink", "-")
    ratio("py_dir", "c_abi_dir", "py_dir / c_abi_dir (wrapper overhead)", "<= 1.2x")
    ratio("ctypes_only", "c_abi_dir", "ctypes_only / c_abi_dir (ctypes itself)", "-")
    ratio("py_path", "c_abi", "py_path / c_abi", "<= 1.2x")
    ratio("py_with", "c_abi_dir", "py_with / c_abi_dir (a new lock each)", "-")
    ratio("filelock", "py_dir", "filelock / py_dir (times slower)", ">= 3x")
    ratio("filelock", "py_path", "filelock / py_path (times slower)", ">= 3x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
