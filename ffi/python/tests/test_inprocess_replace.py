"""In-process replacement (``examples/inprocess_server.py``, through
``PortLock.take_over`` and ``PortLock.offer``): a server that serves its port
itself is replaced by new instances of itself under continuous load, and no
request fails."""

import http.client
import json
import os
import queue
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))

import llmlb_lock  # noqa: E402
from llmlb_lock import PortLock, probe  # noqa: E402

EXAMPLE = os.path.join(HERE, "..", "examples", "inprocess_server.py")
# The example imports the very package these tests import.
PACKAGE_PARENT = os.path.dirname(os.path.dirname(os.path.abspath(llmlb_lock.__file__)))
PATIENCE = 30.0
REPLACEMENTS = 5


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Instance:
    """One running example server, its stdout lines read on a thread."""

    def __init__(self, port: int, env: dict):
        self.proc = subprocess.Popen(
            [sys.executable, EXAMPLE, "--port", str(port)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.pid = self.proc.pid
        self.lines: "queue.Queue[str]" = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self):
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put("")  # end of output

    def expect_line(self, start: str) -> str:
        try:
            line = self.lines.get(timeout=PATIENCE)
        except queue.Empty:
            raise AssertionError("PID %d said nothing within %ss" % (self.pid, PATIENCE))
        if not line.startswith(start):
            self.proc.kill()
            raise AssertionError(
                "PID %d said %r, expected %r...; stderr: %s"
                % (self.pid, line, start, self.proc.stderr.read())
            )
        return line

    def wait(self) -> int:
        try:
            return self.proc.wait(timeout=PATIENCE)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise AssertionError("PID %d did not exit within %ss" % (self.pid, PATIENCE))

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.proc.stdout.close()
        self.proc.stderr.close()


class Load:
    """Client threads requesting all along: some open a connection per
    request, some keep one alive (reconnecting only when the server says
    ``Connection: close``). Every request must get a 200."""

    def __init__(self, port: int):
        self.port = port
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.answered = 0
        self.failures: list = []
        self.pids: set = set()
        self.threads = [
            threading.Thread(target=self._fresh, args=(i,), daemon=True) for i in range(2)
        ] + [threading.Thread(target=self._keep_alive, args=(i,), daemon=True) for i in range(2)]
        for t in self.threads:
            t.start()

    def _record(self, response, what: str):
        body = response.read()
        if response.status != 200:
            raise AssertionError("%s: status %d" % (what, response.status))
        pid = json.loads(body)["pid"]
        with self.lock:
            self.answered += 1
            self.pids.add(pid)

    def _fail(self, what: str, e: BaseException):
        with self.lock:
            self.failures.append("%s: %r" % (what, e))

    def _fresh(self, n: int):
        i = 0
        while not self.stop.is_set():
            i += 1
            path = "/slow" if i % 5 == 0 else "/"
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=PATIENCE)
            try:
                conn.request("GET", path)
                self._record(conn.getresponse(), "fresh %d GET %s" % (n, path))
            except Exception as e:
                self._fail("fresh %d GET %s" % (n, path), e)
            finally:
                conn.close()

    def _keep_alive(self, n: int):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=PATIENCE)
        i = 0
        while not self.stop.is_set():
            i += 1
            path = "/slow" if i % 7 == 0 else "/"
            try:
                conn.request("GET", path)
                self._record(conn.getresponse(), "keep-alive %d GET %s" % (n, path))
            except Exception as e:
                self._fail("keep-alive %d GET %s" % (n, path), e)
                conn.close()
        conn.close()

    def count(self) -> int:
        with self.lock:
            return self.answered

    def until_more(self, at_least: int):
        """Until `at_least` more requests have been answered (bounded)."""
        target = self.count() + at_least
        deadline = time.monotonic() + PATIENCE
        while self.count() < target:
            if time.monotonic() > deadline:
                raise AssertionError("the load stalled at %d answered requests" % self.count())
            time.sleep(0.01)

    def finish(self):
        self.stop.set()
        for t in self.threads:
            t.join(PATIENCE)
            if t.is_alive():
                raise AssertionError("a client thread did not stop")


class InProcessReplaceTest(unittest.TestCase):
    def setUp(self):
        self._tmp = tempfile.mkdtemp(prefix="llmlb-inprocess-")
        self.dir = os.path.join(self._tmp, "locks")
        path = os.environ.get("PYTHONPATH")
        self.env = dict(
            os.environ,
            LLMLB_LOCK_DIR=self.dir,
            PYTHONPATH=PACKAGE_PARENT + (os.pathsep + path if path else ""),
        )
        self.instances: list = []

    def tearDown(self):
        for instance in self.instances:
            instance.kill()
        shutil.rmtree(self._tmp, ignore_errors=True)

    def start(self, port: int) -> Instance:
        instance = Instance(port, self.env)
        self.instances.append(instance)
        instance.expect_line("serving on port %d as PID %d" % (port, instance.pid))
        return instance

    def holder(self, port: int):
        result = probe(port, self.dir)
        self.assertEqual(result.state, "held")
        return result.info

    def test_replaced_five_times_under_load_without_a_failed_request(self):
        port = free_port()
        current = self.start(port)
        self.assertEqual(self.holder(port).pid, current.pid)
        self.assertEqual(self.holder(port).state, "ready")
        load = Load(port)
        try:
            load.until_more(20)
            for _ in range(REPLACEMENTS):
                successor = self.start(port)
                current.expect_line("handed port %d over to PID %d" % (port, successor.pid))
                self.assertEqual(current.wait(), 0, "the predecessor exits 0")
                info = self.holder(port)
                self.assertEqual(info.pid, successor.pid, "the record names the newest")
                self.assertEqual(info.state, "ready")
                current = successor
                load.until_more(20)
        finally:
            load.finish()
        self.assertEqual(load.failures, [], "%d answered" % load.answered)
        self.assertEqual(
            load.pids, {i.pid for i in self.instances}, "every instance served requests"
        )

        current.proc.send_signal(signal.SIGTERM)
        self.assertEqual(current.wait(), 0)
        self.assertEqual(probe(port, self.dir).state, "free")

    def test_a_takeover_given_up_before_the_offer_leaves_the_holder_serving(self):
        port = free_port()
        holder = self.start(port)
        before = self.holder(port)
        lock, sock = PortLock.take_over(port, self.dir, timeout=PATIENCE)
        try:
            self.assertIsNotNone(sock)
            self.assertEqual(sock.getsockname()[1], port)
            self.assertEqual(self.holder(port).pid, os.getpid())
            self.assertEqual(self.holder(port).state, "starting")
        finally:
            sock.close()
            lock.release()  # not offered: the port goes back
        deadline = time.monotonic() + PATIENCE
        while self.holder(port) != before or self.holder(port).state != "ready":
            self.assertLess(time.monotonic(), deadline, "the holder never got its record back")
            time.sleep(0.01)
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=PATIENCE)
        conn.request("GET", "/")
        self.assertEqual(json.loads(conn.getresponse().read())["pid"], holder.pid)
        conn.close()
        self.assertIsNone(holder.proc.poll(), "the holder serves on")
        holder.proc.send_signal(signal.SIGTERM)
        self.assertEqual(holder.wait(), 0)

    def test_an_offer_says_when_to_drain_through_wait_is_set_and_its_fd(self):
        import selectors

        port = free_port()
        lock, sock = PortLock.take_over(port, self.dir)
        self.assertIsNone(sock, "a free port: bind it yourself")
        sock = socket.create_server(("127.0.0.1", port))
        with sock, lock.offer(sock) as offer:
            self.assertEqual(self.holder(port).state, "ready")
            self.assertFalse(offer.is_set())
            self.assertFalse(offer.wait(0))
            self.assertIsNone(offer.successor_pid)
            selector = selectors.DefaultSelector()
            selector.register(offer, selectors.EVENT_READ)
            self.assertEqual(selector.select(0), [])
            successor = self.start(port)
            self.assertTrue(offer.wait(PATIENCE))
            self.assertTrue(offer.is_set())
            self.assertEqual(offer.successor_pid, successor.pid)
            self.assertEqual(len(selector.select(PATIENCE)), 1)
            selector.close()
            lock.release()  # the successor's record stays
        self.assertEqual(self.holder(port).pid, successor.pid)
        successor.proc.send_signal(signal.SIGTERM)
        self.assertEqual(successor.wait(), 0)
        self.assertEqual(probe(port, self.dir).state, "free")

    def test_an_offer_whose_result_is_dropped_stays_in_force(self):
        import gc

        port = free_port()
        lock, _ = PortLock.take_over(port, self.dir)
        with socket.create_server(("127.0.0.1", port)) as sock:
            lock.offer(sock)  # the result dropped at once
            gc.collect()
            successor, received = PortLock.take_over(port, self.dir, timeout=PATIENCE)
            self.assertIsNotNone(received, "the offer was still there to take")
            with received, successor.offer(received) as offer:
                # The commit reached it: the first is handed over.
                deadline = time.monotonic() + PATIENCE
                while True:
                    try:
                        lock.set_state("stopping")
                    except llmlb_lock.LockError as e:
                        self.assertEqual(e.status, llmlb_lock.handover.HANDED_OVER, str(e))
                        break
                    self.assertLess(time.monotonic(), deadline, "never handed over")
                    time.sleep(0.01)
                lock.release()
                offer.close()
                successor.release()
        self.assertEqual(probe(port, self.dir).state, "free")

    def test_a_holder_without_an_offer_is_already_running(self):
        port = free_port()
        with PortLock(port, self.dir):
            with self.assertRaises(llmlb_lock.AlreadyRunning) as caught:
                PortLock.take_over(port, self.dir, timeout=1.0)
            self.assertEqual(caught.exception.pid, os.getpid())
            self.assertIn("no control socket", str(caught.exception))
        with self.assertRaises(llmlb_lock.LockError):
            PortLock.take_over(port, self.dir, timeout=-1)


if __name__ == "__main__":
    unittest.main()
