"""Waiting for a port: PortLock(timeout=...) and acquire(timeout=...).
Run as test_llmlb_lock.py is (ffi/tests/python.rs)."""

import os
import shutil
import signal
import sys
import tempfile
import threading
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import llmlb_lock  # noqa: E402
from llmlb_lock import AlreadyRunning, LockDir, LockError, PortLock, probe  # noqa: E402

# Against hangs only: every wait below ends long before this.
GENEROUS = 60


def holder(lock_dir, port, crash=False):
    """Forks a child that takes the lock, reports, and on "go" releases it
    (or dies holding it). Returns (pid, go) where go() lets it go."""
    ready_r, ready_w = os.pipe()
    go_r, go_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.close(ready_r)
            os.close(go_w)
            lock = PortLock(port, lock_dir).acquire()
            os.write(ready_w, b"r")
            os.read(go_r, 1)
            if crash:
                os._exit(0)  # the kernel drops the lock, the file stays
            lock.release()
            code = 0
        finally:
            os._exit(code)
    os.close(ready_w)
    os.close(go_r)
    assert os.read(ready_r, 1) == b"r"
    os.close(ready_r)

    def go():
        os.write(go_w, b"g")
        os.close(go_w)

    return pid, go


def go_later(go):
    """Lets the holder go from another thread while the caller waits."""
    timer = threading.Timer(0.1, go)
    timer.start()
    return timer


class WaitTest(unittest.TestCase):
    def setUp(self):
        self._tmp = tempfile.mkdtemp(prefix="llmlb-py-wait-")
        self.dir = os.path.join(self._tmp, "locks")

    def tearDown(self):
        shutil.rmtree(self._tmp, ignore_errors=True)

    def reap(self, pid):
        _, status = os.waitpid(pid, 0)
        self.assertTrue(os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, status)

    def test_timeout_raises_already_running_with_the_holder(self):
        pid, go = holder(self.dir, 8300)
        try:
            for timeout in (None, 0, 0.05):
                with self.assertRaises(AlreadyRunning) as caught:
                    PortLock(8300, self.dir, timeout=timeout).acquire()
                self.assertEqual(caught.exception.pid, pid)
                self.assertEqual(caught.exception.port, 8300)
            with self.assertRaises(AlreadyRunning) as caught:
                PortLock(8300, self.dir).acquire(timeout=0.05)
            self.assertEqual(caught.exception.pid, pid)
            self.assertIn("already running on port 8300", str(caught.exception))
        finally:
            go()
            self.reap(pid)

    def test_waiter_takes_the_port_when_the_holder_releases(self):
        pid, go = holder(self.dir, 8301)
        timer = go_later(go)
        with PortLock(8301, self.dir, timeout=GENEROUS) as lock:
            self.assertEqual(lock.info.pid, os.getpid())
            self.assertIsNone(lock.reclaimed_from)  # released cleanly
            self.assertEqual(probe(8301, self.dir).info.pid, os.getpid())
        timer.join()
        self.reap(pid)

    def test_negative_timeout_waits_forever_and_reclaims_a_dead_holder(self):
        with LockDir(self.dir) as locks:
            pid, go = holder(self.dir, 8302, crash=True)
            timer = go_later(go)
            lock = locks.acquire(8302, timeout=-1)
            self.assertEqual(lock.reclaimed_from.pid, pid)
            lock.release()
            timer.join()
            self.reap(pid)

    def test_ctrl_c_interrupts_a_wait_and_nothing_is_taken(self):
        # Python's own Ctrl-C handler, whatever this process inherited: a
        # shell's background job starts with SIGINT ignored, and Python then
        # leaves it ignored (the wait below would run to its deadline).
        old = signal.signal(signal.SIGINT, signal.default_int_handler)
        self.addCleanup(signal.signal, signal.SIGINT, old)
        pid, go = holder(self.dir, 8303)
        try:
            main = threading.get_ident()
            timer = threading.Timer(0.3, lambda: signal.pthread_kill(main, signal.SIGINT))
            timer.start()
            lock = PortLock(8303, self.dir)
            with self.assertRaises(KeyboardInterrupt):
                lock.acquire(timeout=GENEROUS)
            timer.join()
            self.assertFalse(lock.held)
            seen = probe(8303, self.dir)
            self.assertEqual((seen.state, seen.info.pid), ("held", pid))
        finally:
            go()
            self.reap(pid)

    def test_bad_timeout(self):
        with self.assertRaises(LockError) as caught:
            PortLock(8304, self.dir, timeout=float("nan")).acquire()
        self.assertEqual(caught.exception.status, llmlb_lock.INVALID_ARGUMENT)
        self.assertIn("timeout", str(caught.exception))


if __name__ == "__main__":
    unittest.main()
