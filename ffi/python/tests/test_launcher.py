"""Tests of ffi/python/launcher.py (the Python twin of the C launcher)."""

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))

from llmlb_lock import PortLock, probe  # noqa: E402

LAUNCHER = os.path.join(HERE, "..", "launcher.py")


class LauncherTest(unittest.TestCase):
    def setUp(self):
        self._tmp = tempfile.mkdtemp(prefix="llmlb-pylauncher-")
        self.dir = os.path.join(self._tmp, "locks")
        self.env = dict(os.environ, LLMLB_LOCK_DIR=self.dir)

    def tearDown(self):
        shutil.rmtree(self._tmp, ignore_errors=True)

    def launcher(self, *args):
        return [sys.executable, LAUNCHER, *args]

    def test_runs_the_command_with_the_port_and_returns_its_code(self):
        script = "import os, sys; print(os.environ['LLMLB_PORT']); sys.exit(3)"
        out = subprocess.run(
            self.launcher("8300", "--", sys.executable, "-c", script),
            env=self.env,
            capture_output=True,
            text=True,
        )
        self.assertEqual(out.returncode, 3, out.stderr)
        self.assertEqual(out.stdout, "8300\n")
        self.assertEqual(probe(8300, self.dir).state, "free")

    def test_refused_when_held_with_the_holders_pid(self):
        marker = os.path.join(self._tmp, "ran")
        with PortLock(8301, self.dir):
            out = subprocess.run(
                self.launcher("8301", "--", "touch", marker),
                env=self.env,
                capture_output=True,
                text=True,
            )
        self.assertEqual(out.returncode, 1, out.stderr)
        self.assertIn("PID: %d" % os.getpid(), out.stderr)
        self.assertIn("llmlb stop --port 8301", out.stderr)
        self.assertFalse(os.path.exists(marker))

    def test_holds_the_port_and_forwards_sigterm(self):
        script = (
            "import signal, sys, time\n"
            "signal.signal(signal.SIGTERM, lambda *a: sys.exit(7))\n"
            "print('ready', flush=True)\n"
            "time.sleep(120)\n"
        )
        proc = subprocess.Popen(
            self.launcher("8302", "--", sys.executable, "-c", script),
            env=self.env,
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            self.assertEqual(proc.stdout.readline(), "ready\n")
            seen = probe(8302, self.dir)
            self.assertEqual((seen.state, seen.info.pid), ("held", proc.pid))
            proc.send_signal(signal.SIGTERM)
            self.assertEqual(proc.wait(), 7)
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.stdout.close()
        self.assertEqual(probe(8302, self.dir).state, "free")
        self.assertFalse(os.path.exists(os.path.join(self.dir, "serve_8302.lock")))

    def test_usage_errors_exit_2(self):
        for args in ([], ["8303", "true"], ["0", "--", "true"], ["x", "--", "true"]):
            out = subprocess.run(self.launcher(*args), env=self.env, capture_output=True)
            self.assertEqual(out.returncode, 2, args)
        self.assertFalse(os.path.exists(self.dir))


if __name__ == "__main__":
    unittest.main()
