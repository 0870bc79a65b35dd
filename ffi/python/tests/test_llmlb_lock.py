"""Tests of the ctypes wrapper. Run: python3 -m unittest discover -s ffi/python/tests
(with LLMLB_LOCK_LIB pointing at the built library, as ffi/tests/python.rs does)."""

import json
import os
import shutil
import subprocess
import sys
import tempfile
import traceback
import unittest
from datetime import timezone

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import llmlb_lock  # noqa: E402
import threading  # noqa: E402

from llmlb_lock import (  # noqa: E402
    AlreadyRunning,
    LockDir,
    LockError,
    PortLock,
    lock_path,
    probe,
)


def fork_and_run(fn):
    """Runs fn() in a forked child; returns the child's pid. The child exits 0
    if fn returns normally, 1 (after printing the traceback) otherwise."""
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            fn()
        except BaseException:
            traceback.print_exc()
            code = 1
        finally:
            sys.stderr.flush()
            os._exit(code)
    return pid


def wait_ok(testcase, pid):
    _, status = os.waitpid(pid, 0)
    testcase.assertTrue(os.WIFEXITED(status), status)
    testcase.assertEqual(os.WEXITSTATUS(status), 0, "child failed")


class library_dir_acquire_calling:
    """Within it, the library's llmlb_lock_dir_acquire, as the wrapper's
    try-once acquire calls it, first runs hook() (in the calling thread,
    with the GIL released by the wrapper as around any C call): through the
    _speedups module, which is pointed at a ctypes callback; through ctypes,
    by replacing the module's _fast_dir_acquire."""

    def __init__(self, hook):
        self.hook = hook

    def __enter__(self):
        import ctypes

        lib = llmlb_lock._lib()
        if llmlb_lock.speedups():
            real = lib._fast_dir_acquire
            prototype = ctypes.CFUNCTYPE(
                ctypes.c_int, ctypes.c_void_p, ctypes.c_uint16, ctypes.c_void_p, ctypes.c_void_p
            )

            def dir_acquire(directory, port, out_lock, out_other):
                self.hook()
                return real(
                    ctypes.c_void_p(directory),
                    ctypes.c_uint16(port),
                    ctypes.c_void_p(out_lock),
                    ctypes.c_void_p(out_other),
                )

            self.callback = prototype(dir_acquire)  # alive while in use
            address = lambda fn: ctypes.cast(fn, ctypes.c_void_p).value  # noqa: E731
            llmlb_lock._speedups.bind(
                address(lib.llmlb_lock_acquire),
                address(self.callback),
                address(lib.llmlb_lock_release),
            )
        else:
            real = llmlb_lock._fast_dir_acquire

            def dir_acquire(*args):
                self.hook()
                return real(*args)

            self.real = real
            llmlb_lock._fast_dir_acquire = dir_acquire
        return self

    def __exit__(self, *exc):
        if llmlb_lock.speedups():
            llmlb_lock._bind_speedups()
        else:
            llmlb_lock._fast_dir_acquire = self.real


class LockDirTestCase(unittest.TestCase):
    def setUp(self):
        self._tmp = tempfile.mkdtemp(prefix="llmlb-py-")
        self.dir = os.path.join(self._tmp, "locks")

    def tearDown(self):
        shutil.rmtree(self._tmp, ignore_errors=True)

    def file(self, port):
        return os.path.join(self.dir, "serve_%d.lock" % port)


class PortLockTest(LockDirTestCase):
    def test_each_acquire_takes_the_lock_in_the_lock_dir_assigned_now(self):
        # The per-cycle arguments are made once per lock_dir: reassigning
        # it (to a path, a LockDir, or None for the default) must take the
        # next acquire there, and a closed LockDir must be refused.
        other = os.path.join(self._tmp, "other")
        lock = PortLock(8201, self.dir)
        with LockDir(other) as opened:
            for lock_dir, where in (
                (self.dir, self.dir),
                (opened, other),
                (other, other),
                (self.dir, self.dir),
            ):
                lock.lock_dir = lock_dir
                lock.acquire()
                self.assertTrue(os.path.exists(os.path.join(where, "serve_8201.lock")), lock_dir)
                lock.release()
                self.assertFalse(os.listdir(where), lock_dir)
            lock.lock_dir = opened
        self.assertRaisesRegex(LockError, "closed", lock.acquire)
        self.assertFalse(lock.held)
        default = tempfile.mkdtemp(prefix="llmlb-py-default-")
        old = os.environ.get("LLMLB_LOCK_DIR")
        try:
            os.chmod(default, 0o700)
            os.environ["LLMLB_LOCK_DIR"] = default
            lock.lock_dir = None
            lock.acquire()
            self.assertTrue(os.path.exists(os.path.join(default, "serve_8201.lock")))
            lock.release()
        finally:
            if old is None:
                del os.environ["LLMLB_LOCK_DIR"]
            else:
                os.environ["LLMLB_LOCK_DIR"] = old
            shutil.rmtree(default, ignore_errors=True)

    def test_context_manager_takes_and_releases(self):
        with PortLock(8200, self.dir) as lock:
            self.assertTrue(lock.held)
            info = lock.info
            self.assertEqual(info.pid, os.getpid())
            self.assertEqual(info.port, 8200)
            self.assertIs(info.started_at.tzinfo, timezone.utc)
            self.assertGreaterEqual(info.started_at.year, 2024)
            self.assertIsNone(lock.reclaimed_from)
            self.assertTrue(os.path.exists(self.file(8200)))
            seen = probe(8200, self.dir)
            self.assertEqual(seen.state, "held")
            self.assertEqual(seen.info, info)
        self.assertFalse(lock.held)
        self.assertFalse(os.path.exists(self.file(8200)))
        self.assertEqual(probe(8200, self.dir).state, "free")
        self.assertIsNone(probe(8200, self.dir).info)

    def test_second_acquire_raises_already_running_with_the_holder(self):
        with PortLock(8201, self.dir) as lock:
            with self.assertRaises(AlreadyRunning) as caught:
                PortLock(8201, self.dir).acquire()
            err = caught.exception
            self.assertIsInstance(err, LockError)
            self.assertEqual(err.status, llmlb_lock.ALREADY_RUNNING)
            self.assertEqual(err.pid, os.getpid())
            self.assertEqual(err.port, 8201)
            self.assertEqual(err.started_at, lock.info.started_at)
            self.assertIs(err.started_at.tzinfo, timezone.utc)
            self.assertIn("already running on port 8201", str(err))
            self.assertTrue(os.path.exists(self.file(8201)))

    def test_stale_lock_is_reclaimed_and_reported(self):
        def hold_and_die():
            held = PortLock(8202, self.dir).acquire()  # kept referenced: no __del__
            os._exit(0 if held.held else 1)  # dies holding: file stays, kernel lock goes

        child = fork_and_run(hold_and_die)
        wait_ok(self, child)
        seen = probe(8202, self.dir)
        self.assertEqual(seen.state, "stale")
        self.assertEqual(seen.info.pid, child)
        lock = PortLock(8202, self.dir).acquire()
        try:
            self.assertEqual(lock.reclaimed_from.pid, child)
            self.assertEqual(lock.info.pid, os.getpid())
        finally:
            lock.release()
        self.assertFalse(os.path.exists(self.file(8202)))

    def test_release_in_forked_child_keeps_the_parents_lock(self):
        lock = PortLock(8203, self.dir).acquire()
        wait_ok(self, fork_and_run(lock.release))
        self.assertTrue(os.path.exists(self.file(8203)))
        seen = probe(8203, self.dir)
        self.assertEqual((seen.state, seen.info.pid), ("held", os.getpid()))
        lock.release()
        self.assertFalse(os.path.exists(self.file(8203)))

    def test_adopt_after_fork_hands_the_lock_to_the_child(self):
        lock = PortLock(8204, self.dir).acquire()
        started = lock.info.started_at
        to_child_r, to_child_w = os.pipe()
        to_parent_r, to_parent_w = os.pipe()

        def child_side():
            lock.adopt()
            assert lock.info.pid == os.getpid()
            assert lock.info.started_at == started
            os.write(to_parent_w, b"a")
            assert os.read(to_child_r, 1) == b"r"  # parent released
            seen = probe(8204, self.dir)
            assert (seen.state, seen.info.pid) == ("held", os.getpid()), seen
            lock.release()
            assert not os.path.exists(self.file(8204))

        child = fork_and_run(child_side)
        self.assertEqual(os.read(to_parent_r, 1), b"a")
        self.assertEqual(probe(8204, self.dir).info.pid, child)
        lock.release()  # no longer the owner: only closes our descriptor
        self.assertTrue(os.path.exists(self.file(8204)))
        seen = probe(8204, self.dir)
        self.assertEqual((seen.state, seen.info.pid), ("held", child))
        os.write(to_child_w, b"r")
        wait_ok(self, child)
        self.assertFalse(os.path.exists(self.file(8204)))
        for fd in (to_child_r, to_child_w, to_parent_r, to_parent_w):
            os.close(fd)

    def test_owner_release_keeps_the_port_held_by_a_forked_worker(self):
        # A prefork server whose SIGTERM handler releases while a worker
        # runs: the name stays (else the next acquire would make a second
        # holder beside the worker) and names no holder that released it.
        lock = PortLock(8212, self.dir).acquire()
        r, w = os.pipe()

        def worker():
            os.close(w)
            assert os.read(r, 1) == b"x"

        child = fork_and_run(worker)
        os.close(r)
        lock.release()
        self.assertTrue(os.path.exists(self.file(8212)))
        with self.assertRaises(AlreadyRunning):
            PortLock(8212, self.dir).acquire()
        with open(self.file(8212)) as f:
            self.assertEqual(json.load(f)["released_by"], os.getpid())
        os.write(w, b"x")
        os.close(w)
        wait_ok(self, child)
        self.assertEqual(probe(8212, self.dir).state, "stale")
        with PortLock(8212, self.dir) as again:
            self.assertEqual(again.reclaimed_from.pid, os.getpid())
        self.assertFalse(os.path.exists(self.file(8212)))

    def test_adopt_in_the_owner_is_a_no_op(self):
        with PortLock(8205, self.dir) as lock:
            before = lock.info
            lock.adopt()
            self.assertEqual(lock.info, before)


class ChildTest(LockDirTestCase):
    """What launchers need: a child's process group on record, and the lock
    descriptor passed to the child."""

    def recorded(self, port):
        with open(self.file(port), "rb") as f:
            return json.loads(f.read().decode())

    def test_set_child_pgid_records_a_group_leader_and_clears(self):
        child = subprocess.Popen(["sleep", "60"], start_new_session=True)
        try:
            with PortLock(8206, self.dir) as lock:
                lock.set_child_pgid(child.pid)
                rec = self.recorded(8206)
                self.assertEqual(rec["child_pgid"], child.pid)
                self.assertIn("child_identity", rec)
                lock.set_child_pgid(None)
                self.assertNotIn("child_pgid", self.recorded(8206))
        finally:
            child.kill()
            child.wait()

    def test_set_child_pgid_refuses_what_is_not_a_live_group_leader(self):
        # A child left in our group does not lead one; 1 is never valid.
        child = subprocess.Popen(["sleep", "60"])
        try:
            with PortLock(8207, self.dir) as lock:
                for bad in (1, child.pid):
                    with self.assertRaises(LockError) as cm:
                        lock.set_child_pgid(bad)
                    self.assertEqual(cm.exception.status, llmlb_lock.INVALID_ARGUMENT)
                    self.assertIn("pgid %d" % bad, str(cm.exception))
                self.assertNotIn("child_pgid", self.recorded(8207))
        finally:
            child.kill()
            child.wait()

    def test_a_child_given_the_descriptor_keeps_the_port_held_after_release(self):
        lock = PortLock(8208, self.dir).acquire()
        fd = lock.fileno()
        child = subprocess.Popen(["sleep", "60"], pass_fds=(fd,))
        try:
            lock.release()
            seen = probe(8208, self.dir)
            self.assertEqual((seen.state, seen.info.pid), ("held", os.getpid()))
            # We live on, but no longer hold it: the record says so, so
            # `stop` never signals us for the child's lock.
            with open(self.file(8208)) as f:
                self.assertEqual(json.load(f)["released_by"], os.getpid())
        finally:
            child.kill()
            child.wait()
        # Its holder gone, the file is stale: the next acquire reclaims it.
        self.assertEqual(probe(8208, self.dir).state, "stale")
        with PortLock(8208, self.dir) as again:
            self.assertEqual(again.reclaimed_from.pid, os.getpid())

    def test_without_a_child_holding_it_release_after_fileno_removes_the_file(self):
        lock = PortLock(8209, self.dir).acquire()
        self.assertGreaterEqual(lock.fileno(), 0)
        subprocess.run(["true"], check=True)  # not passed: closed on exec
        lock.release()
        self.assertEqual(probe(8209, self.dir).state, "free")
        self.assertFalse(os.path.exists(self.file(8209)))


class ErrorTest(LockDirTestCase):
    def assertStatus(self, status, fn, *args):
        with self.assertRaises(LockError) as caught:
            fn(*args)
        self.assertEqual(caught.exception.status, status, str(caught.exception))
        self.assertTrue(str(caught.exception))
        return caught.exception

    def test_bad_ports(self):
        self.assertStatus(llmlb_lock.INVALID_ARGUMENT, PortLock(0, self.dir).acquire)
        self.assertStatus(llmlb_lock.INVALID_ARGUMENT, probe, 0, self.dir)
        self.assertStatus(llmlb_lock.INVALID_ARGUMENT, lock_path, 0, self.dir)
        self.assertStatus(llmlb_lock.INVALID_ARGUMENT, PortLock, 70000, self.dir)
        self.assertFalse(os.path.exists(self.dir))

    def test_relative_and_non_utf8_dirs(self):
        err = self.assertStatus(
            llmlb_lock.INVALID_ARGUMENT, PortLock(8210, "relative/locks").acquire
        )
        self.assertIn("relative", str(err))
        bad = os.path.join(self._tmp, "bad-\udcff").encode("utf-8", "surrogateescape")
        err = self.assertStatus(llmlb_lock.INVALID_ARGUMENT, probe, 8210, bad)
        self.assertIn("UTF-8", str(err))

    def test_a_nul_in_the_dir_is_refused_not_cut(self):
        # C strings end at the NUL: "<dir>\0x" would have locked in <dir>.
        os.mkdir(self.dir, 0o700)
        cut = self.dir + "\0elsewhere"
        for call in (
            PortLock(8212, cut).acquire,
            lambda: PortLock(8212, cut).acquire(timeout=0.05),
            lambda: probe(8212, cut),
            lambda: lock_path(8212, cut),
            lambda: LockDir(cut),
        ):
            err = self.assertStatus(llmlb_lock.INVALID_ARGUMENT, call)
            self.assertIn("NUL", str(err))
            self.assertNotIn("\n", str(err))
        self.assertEqual(os.listdir(self.dir), [])

    def test_unsafe_dir_and_symlinked_lock_file(self):
        os.mkdir(self.dir, 0o700)
        os.chmod(self.dir, 0o777)
        err = self.assertStatus(llmlb_lock.UNSAFE_PATH, PortLock(8211, self.dir).acquire)
        self.assertIn("writable by group or others", str(err))
        os.chmod(self.dir, 0o700)
        target = os.path.join(self._tmp, "precious")
        with open(target, "w") as f:
            f.write("precious\n")
        os.symlink(target, self.file(8211))
        self.assertStatus(llmlb_lock.UNSAFE_PATH, PortLock(8211, self.dir).acquire)
        self.assertStatus(llmlb_lock.UNSAFE_PATH, probe, 8211, self.dir)
        with open(target) as f:
            self.assertEqual(f.read(), "precious\n")

    @unittest.skipIf(os.name == "nt", "Unix semantics: SIGTERM, not the stop channel")
    def test_wait_stop_never_reports_on_unix_and_a_signal_cuts_it_short(self):
        import signal
        import time

        fired = []
        old = signal.signal(signal.SIGALRM, lambda *_: fired.append(1))
        try:
            with PortLock(8213, self.dir) as lock:
                self.assertFalse(lock.wait_stop(0))
                signal.setitimer(signal.ITIMER_REAL, 0.05)
                start = time.monotonic()
                self.assertFalse(lock.wait_stop(60))
                # Cut short by SIGALRM, far before the 60 s (a generous bound
                # against a sleep that ignores signals, not a speed check).
                self.assertLess(time.monotonic() - start, 30)
                self.assertEqual(fired, [1])
            self.assertStatus(llmlb_lock.INVALID_ARGUMENT, lambda: lock.wait_stop(0))
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, old)

    def test_misuse_of_a_port_lock(self):
        lock = PortLock(8212, self.dir)
        lock.release()  # not held: no-op
        self.assertStatus(llmlb_lock.INVALID_ARGUMENT, lock.adopt)
        with lock:
            self.assertStatus(llmlb_lock.INVALID_ARGUMENT, lock.acquire)


class ProbeAndPathTest(LockDirTestCase):
    def test_probe_of_a_missing_dir_is_free_and_creates_nothing(self):
        seen = probe(8220, self.dir)
        self.assertEqual((seen.state, seen.info), ("free", None))
        self.assertFalse(os.path.exists(self.dir))

    def test_lock_path_and_default_dir(self):
        self.assertEqual(lock_path(8221, self.dir), self.file(8221))
        old = os.environ.get("LLMLB_LOCK_DIR")
        os.environ["LLMLB_LOCK_DIR"] = self.dir
        try:
            self.assertEqual(lock_path(8221), self.file(8221))
            with PortLock(8221) as lock:
                self.assertEqual(lock.path, self.file(8221))
                self.assertTrue(os.path.exists(self.file(8221)))
        finally:
            if old is None:
                del os.environ["LLMLB_LOCK_DIR"]
            else:
                os.environ["LLMLB_LOCK_DIR"] = old

    def test_library_version(self):
        self.assertRegex(llmlb_lock.library_version(), r"^\d+\.\d+\.\d+")

    def test_per_cycle_calls_take_the_expected_path(self):
        # Which path this run must exercise: the harness says (cargo test
        # runs the suite once without the _speedups module and once with it
        # built; .ci/packaging expects pip to have built it).
        expected = os.environ.get("LLMLB_EXPECT_SPEEDUPS")
        if expected not in ("0", "1"):
            self.skipTest("LLMLB_EXPECT_SPEEDUPS is not 0 or 1: the expected path is unknown")
        self.assertEqual(llmlb_lock.speedups(), expected == "1")
        # Either path: the lock is taken, seen and given back by those calls.
        lock = PortLock(8237, self.dir).acquire()
        self.assertEqual(probe(8237, self.dir).state, "held")
        lock.release()
        self.assertEqual(probe(8237, self.dir).state, "free")
        with LockDir(self.dir) as locks:
            lock = locks.acquire(8238)
            self.assertEqual(probe(8238, self.dir).state, "held")
            lock.release()
        self.assertEqual(probe(8238, self.dir).state, "free")


class LockDirTest(LockDirTestCase):
    def test_open_creates_the_dir_and_acquires_and_probes_through_it(self):
        with LockDir(self.dir) as locks:
            self.assertEqual(locks.path, self.dir)
            self.assertEqual(os.stat(self.dir).st_mode & 0o777, 0o700)
            self.assertEqual(locks.probe(8230).state, "free")
            self.assertFalse(os.path.exists(self.file(8230)))
            lock = locks.acquire(8230)
            self.assertTrue(lock.held)
            self.assertEqual(lock.path, self.file(8230))
            self.assertEqual(lock.info.pid, os.getpid())
            seen = locks.probe(8230)
            self.assertEqual((seen.state, seen.info), ("held", lock.info))
            # The same lock as the path-taking calls take, both ways round.
            with self.assertRaises(AlreadyRunning) as caught:
                PortLock(8230, self.dir).acquire()
            self.assertEqual(caught.exception.pid, os.getpid())
            with self.assertRaises(AlreadyRunning):
                locks.acquire(8230)
            with PortLock(8231, self.dir):
                self.assertEqual(probe(8231, locks).state, "held")
                with self.assertRaises(AlreadyRunning):
                    PortLock(8231, locks).acquire()
        self.assertTrue(locks.closed)
        # The lock outlives the dir handle.
        self.assertEqual(probe(8230, self.dir).state, "held")
        lock.release()
        self.assertFalse(os.path.exists(self.file(8230)))
        self.assertEqual(probe(8230, self.dir).state, "free")

    def test_stale_lock_is_reclaimed_through_an_inherited_handle(self):
        locks = LockDir(self.dir)

        def hold_and_die():
            held = locks.acquire(8232)  # kept referenced: no __del__
            os._exit(0 if held.held else 1)

        child = fork_and_run(hold_and_die)
        wait_ok(self, child)
        seen = locks.probe(8232)
        self.assertEqual((seen.state, seen.info.pid), ("stale", child))
        lock = locks.acquire(8232)
        self.assertEqual(lock.reclaimed_from.pid, child)
        lock.release()
        locks.close()
        locks.close()  # idempotent

    def test_threads_share_a_handle_and_never_hold_together(self):
        locks = LockDir(self.dir)
        guard = threading.Lock()
        state = {"holders": 0, "max": 0, "wins": 0, "errors": []}

        def contend():
            for _ in range(100):
                try:
                    lock = locks.acquire(8233)
                except AlreadyRunning:
                    continue
                except Exception as e:  # anything else fails the test
                    with guard:
                        state["errors"].append(repr(e))
                    continue
                with guard:
                    state["holders"] += 1
                    state["max"] = max(state["max"], state["holders"])
                    state["wins"] += 1
                if locks.probe(8233).state != "held":
                    with guard:
                        state["errors"].append("probe of a held port was not held")
                with guard:
                    state["holders"] -= 1
                lock.release()

        threads = [threading.Thread(target=contend) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
            self.assertFalse(t.is_alive(), "a thread hung")
        locks.close()
        self.assertEqual(state["errors"], [])
        self.assertEqual(state["max"], 1)
        self.assertGreater(state["wins"], 0)
        self.assertFalse(os.path.exists(self.file(8233)))

    def test_close_waits_for_an_acquire_in_progress(self):
        # close() frees the C handle only once no call is using it. The
        # acquire is held inside its C call (a stand-in that waits for the
        # test) while another thread closes.
        locks = LockDir(self.dir)
        entered, go = threading.Event(), threading.Event()

        def held_in_call():
            entered.set()
            self.assertTrue(go.wait(timeout=60), "the test never let the call finish")

        result = {}
        with library_dir_acquire_calling(held_in_call):
            try:
                acquirer = threading.Thread(target=lambda: result.update(lock=locks.acquire(8235)))
                acquirer.start()
                self.assertTrue(entered.wait(timeout=60), "acquire never reached its C call")
                closer = threading.Thread(target=locks.close)
                closer.start()
                # However long this waits, a correct close() is still waiting:
                # only a close that did not wait can have finished.
                closer.join(timeout=0.2)
                self.assertTrue(closer.is_alive(), "close() did not wait for the call in progress")
                self.assertTrue(locks.closed)  # new calls are refused meanwhile
                self.assertRaisesStatus(llmlb_lock.INVALID_ARGUMENT, locks.probe, 8236)
                self.assertRaisesStatus(llmlb_lock.INVALID_ARGUMENT, locks.acquire, 8236)
                go.set()
                acquirer.join(timeout=60)
                closer.join(timeout=60)
                self.assertFalse(acquirer.is_alive() or closer.is_alive(), "a thread hung")
            finally:
                go.set()
        lock = result["lock"]
        self.assertTrue(lock.held)  # taken through the handle before it closed
        self.assertEqual(probe(8235, self.dir).state, "held")
        lock.release()
        self.assertFalse(os.path.exists(self.file(8235)))

    def test_a_lock_reused_after_its_dir_closed_is_refused_and_holds_nothing(self):
        locks = LockDir(self.dir)
        lock = PortLock(8239, locks)
        lock.acquire()  # its try-once call is made here, for this dir
        lock.release()
        locks.close()
        self.assertRaisesStatus(llmlb_lock.INVALID_ARGUMENT, lock.acquire)
        self.assertFalse(lock.held)
        # Pointed at another dir, the same lock takes the port there.
        lock.lock_dir = self.dir
        lock.acquire()
        self.assertEqual(probe(8239, self.dir).state, "held")
        lock.release()
        self.assertEqual(probe(8239, self.dir).state, "free")

    def test_bad_dirs_and_use_after_close(self):
        err = self.assertRaisesStatus(llmlb_lock.INVALID_ARGUMENT, LockDir, "relative/locks")
        self.assertIn("relative", str(err))
        os.mkdir(self.dir, 0o700)
        os.chmod(self.dir, 0o777)
        err = self.assertRaisesStatus(llmlb_lock.UNSAFE_PATH, LockDir, self.dir)
        self.assertIn("writable by group or others", str(err))
        os.chmod(self.dir, 0o700)
        locks = LockDir(self.dir)
        self.assertRaisesStatus(llmlb_lock.INVALID_ARGUMENT, locks.acquire, 0)
        locks.close()
        self.assertRaisesStatus(llmlb_lock.INVALID_ARGUMENT, locks.acquire, 8234)
        self.assertRaisesStatus(llmlb_lock.INVALID_ARGUMENT, locks.probe, 8234)

    def test_default_dir_is_resolved_once_at_open(self):
        old = os.environ.get("LLMLB_LOCK_DIR")
        os.environ["LLMLB_LOCK_DIR"] = self.dir
        try:
            locks = LockDir()
        finally:
            if old is None:
                del os.environ["LLMLB_LOCK_DIR"]
            else:
                os.environ["LLMLB_LOCK_DIR"] = old
        with locks, PortLock(8235, locks):
            self.assertEqual(locks.path, self.dir)
            self.assertTrue(os.path.exists(self.file(8235)))
        self.assertFalse(os.path.exists(self.file(8235)))

    def assertRaisesStatus(self, status, fn, *args):
        with self.assertRaises(LockError) as caught:
            fn(*args)
        self.assertEqual(caught.exception.status, status, str(caught.exception))
        return caught.exception



class ServeStateTest(LockDirTestCase):
    def test_set_state_is_seen_by_probe_and_info(self):
        with PortLock(8240, self.dir) as lock:
            # Nothing recorded yet: reads ready, with no time.
            self.assertEqual(lock.info.state, "ready")
            self.assertIsNone(lock.info.state_since)
            self.assertEqual(probe(8240, self.dir).state_detail, "ready")
            for word in ("starting", "ready", "stopping"):
                lock.set_state(word)
                seen = probe(8240, self.dir)
                self.assertEqual(seen.state, "held")
                self.assertEqual(seen.state_detail, word)
                self.assertEqual(lock.info.state, word)
                self.assertIs(seen.info.state_since.tzinfo, timezone.utc)
                self.assertGreaterEqual(
                    seen.info.state_since.timestamp(), seen.info.started_at.timestamp() - 1
                )
                # The holder is the same whatever its state.
                self.assertEqual(seen.info, lock.info)
            for bad in ("running", "READY", "", None, 1):
                with self.assertRaises(ValueError):
                    lock.set_state(bad)
            self.assertEqual(probe(8240, self.dir).state_detail, "stopping")
        self.assertIsNone(probe(8240, self.dir).state_detail)

    def test_set_state_on_a_released_lock_is_refused(self):
        lock = PortLock(8241, self.dir)
        with self.assertRaises(LockError):
            lock.set_state("ready")

    def test_acquire_with_a_state_records_it_from_the_first_write(self):
        # The record read straight after the acquire, before any set_state:
        # through a path, a LockDir, a timed wait, and a stale reclaim.
        with PortLock(8243, self.dir, state="starting") as lock:
            with open(self.file(8243)) as f:
                self.assertEqual(json.load(f)["state"], "starting")
            self.assertEqual(probe(8243, self.dir).state_detail, "starting")
            with self.assertRaises(AlreadyRunning) as caught:
                PortLock(8243, self.dir, timeout=0.05, state="starting").acquire()
            self.assertEqual(caught.exception.holder.state, "starting")
            lock.set_state("ready")
        with LockDir(self.dir) as locks:
            lock = locks.acquire(8244, state="starting")
            self.assertEqual(lock.info.state, "starting")
            plain = locks.acquire(8245)  # the state was that call's, not the dir's
            self.assertEqual(plain.info.state, "ready")
            self.assertIsNone(plain.info.state_since)
            plain.release()
            lock.release()

        def hold_and_die():
            held = PortLock(8246, self.dir).acquire()  # kept referenced: no __del__
            os._exit(0 if held.held else 1)

        child = fork_and_run(hold_and_die)
        wait_ok(self, child)
        with PortLock(8246, self.dir, state="starting") as lock:
            self.assertEqual(lock.reclaimed_from.pid, child)
            self.assertEqual(probe(8246, self.dir).state_detail, "starting")

    def test_acquire_with_a_bad_state_is_refused_before_taking_anything(self):
        for bad in ("running", "", 1):
            with self.assertRaises(ValueError):
                PortLock(8247, self.dir, state=bad)
        self.assertFalse(os.path.exists(self.file(8247)))

    def test_the_record_holds_the_words_llmlb_status_reads(self):
        # The lock file's own fields, as `llmlb serve` writes them.
        with PortLock(8242, self.dir) as lock:
            lock.set_state("starting")
            with open(self.file(8242)) as f:
                record = json.load(f)
            self.assertEqual(record["state"], "starting")
            self.assertTrue(record["state_since"].endswith("Z"))


class PortListenerTest(unittest.TestCase):
    def test_a_listening_socket_is_found_and_a_closed_one_is_not(self):
        import socket

        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        try:
            self.assertIsNone(llmlb_lock.port_listener(port), "bound, not listening")
            s.listen()
            found = llmlb_lock.port_listener(port)
            self.assertIsNotNone(found)
            if sys.platform != "darwin":
                self.assertEqual(found, llmlb_lock.Listener(os.getpid()))
            else:
                self.assertIsNone(found.pid)
        finally:
            s.close()
        self.assertIsNone(llmlb_lock.port_listener(port))

    def test_another_process_is_found_with_its_pid(self):
        server = subprocess.Popen(
            [
                sys.executable,
                "-c",
                "import socket,sys,time\n"
                "s=socket.socket()\ns.bind(('127.0.0.1',0))\ns.listen()\n"
                "print(s.getsockname()[1],flush=True)\ntime.sleep(600)\n",
            ],
            stdout=subprocess.PIPE,
        )
        try:
            port = int(server.stdout.readline())
            # PIDs from /proc or the Windows listener table; macOS only probes.
            pid = None if sys.platform == "darwin" else server.pid
            self.assertEqual(llmlb_lock.port_listener(port), llmlb_lock.Listener(pid))
        finally:
            server.kill()
            server.wait()
            server.stdout.close()

    def test_bad_ports_are_refused(self):
        for port in (0, 70000, -1):
            with self.assertRaises(LockError):
                llmlb_lock.port_listener(port)



class ReadyHttpProbeTest(unittest.TestCase):
    def test_a_probe_says_what_it_got(self):
        import http.server

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                self.send_response(204 if self.path == "/ok" else 503)
                self.end_headers()

            def log_message(self, *args):
                pass

        server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
        port = server.server_address[1]
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            self.assertEqual(llmlb_lock.ready_http_probe(port, "/ok"), (True, "GET /ok: 204"))
            self.assertEqual(llmlb_lock.ready_http_probe(port), (False, "GET /health: 503"))
            self.assertEqual(
                llmlb_lock.ready_http_probe(port, "/ok", host="0.0.0.0"), (True, "GET /ok: 204")
            )
        finally:
            server.shutdown()
            server.server_close()
        ready, text = llmlb_lock.ready_http_probe(port)
        self.assertFalse(ready)
        self.assertEqual(text, "GET /health: connection refused")

    def test_bad_paths_and_ports_are_refused(self):
        llmlb_lock.check_http_path("/v1/models")
        for path in ("", "health", "/a b", "/\x1b", "/caf\u00e9", "/a\0b"):
            with self.assertRaises(LockError) as caught:
                llmlb_lock.check_http_path(path)
            self.assertEqual(caught.exception.status, llmlb_lock.INVALID_ARGUMENT, path)
            with self.assertRaises(LockError):
                llmlb_lock.ready_http_probe(80, path)
        with self.assertRaises(LockError):
            llmlb_lock.ready_http_probe(0)

if __name__ == "__main__":
    unittest.main()
