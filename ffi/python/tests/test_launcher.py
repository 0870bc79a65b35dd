"""Tests of ffi/python/llmlb_lock/launcher.py, installed as ``llmlb-launch`` (the
Python twin of the C launcher, both shells over llmlb_serve_exec)."""

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))

import llmlb_lock  # noqa: E402
from llmlb_lock import PortLock, probe  # noqa: E402

PACKAGE = os.path.dirname(os.path.abspath(llmlb_lock.__file__))
if os.path.dirname(PACKAGE) == os.path.abspath(os.path.join(HERE, "..")):
    # The repository's package: run the launcher's file.
    LAUNCHER = [sys.executable, os.path.join(PACKAGE, "launcher.py")]
else:
    # An installed package (.ci/packaging): its console script, beside this
    # (virtual environment's) Python.
    LAUNCHER = [os.path.join(os.path.dirname(sys.executable), "llmlb-launch")]


class LauncherTest(unittest.TestCase):
    def setUp(self):
        self._tmp = tempfile.mkdtemp(prefix="llmlb-pylauncher-")
        self.dir = os.path.join(self._tmp, "locks")
        self.env = dict(os.environ, LLMLB_LOCK_DIR=self.dir)
        # A port nobody listens on now: the launcher runs serve's exec mode,
        # which refuses one in use (and the suite runs twice at once, with
        # and without _speedups).
        with socket.socket() as probe_port:
            probe_port.bind(("127.0.0.1", 0))
            self.port = probe_port.getsockname()[1]

    def tearDown(self):
        shutil.rmtree(self._tmp, ignore_errors=True)

    def launcher(self, *args):
        return [*LAUNCHER, *args]

    def test_runs_the_command_with_the_port_and_returns_its_code(self):
        script = "import os, sys; print(os.environ['LLMLB_PORT']); sys.exit(3)"
        out = subprocess.run(
            self.launcher(str(self.port), "--", sys.executable, "-c", script),
            env=self.env,
            capture_output=True,
            text=True,
        )
        self.assertEqual(out.returncode, 3, out.stderr)
        self.assertEqual(out.stdout, "%d\n" % self.port)
        self.assertEqual(probe(self.port, self.dir).state, "free")

    def test_refused_when_held_with_the_holders_pid(self):
        marker = os.path.join(self._tmp, "ran")
        with PortLock(self.port, self.dir):
            out = subprocess.run(
                self.launcher(str(self.port), "--", "touch", marker),
                env=self.env,
                capture_output=True,
                text=True,
            )
        self.assertEqual(out.returncode, 1, out.stderr)
        self.assertIn("PID: %d" % os.getpid(), out.stderr)
        self.assertIn("llmlb stop --port %d" % self.port, out.stderr)
        self.assertFalse(os.path.exists(marker))

    def test_holds_the_port_and_forwards_sigterm(self):
        script = (
            "import signal, sys, time\n"
            "signal.signal(signal.SIGTERM, lambda *a: sys.exit(7))\n"
            "print('ready', flush=True)\n"
            "time.sleep(120)\n"
        )
        proc = subprocess.Popen(
            self.launcher(str(self.port), "--", sys.executable, "-c", script),
            env=self.env,
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            self.assertEqual(proc.stdout.readline(), "ready\n")
            seen = probe(self.port, self.dir)
            self.assertEqual((seen.state, seen.info.pid), ("held", proc.pid))
            proc.send_signal(signal.SIGTERM)
            self.assertEqual(proc.wait(), 7)
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.stdout.close()
        self.assertEqual(probe(self.port, self.dir).state, "free")
        self.assertFalse(os.path.exists(os.path.join(self.dir, "serve_%d.lock" % self.port)))

    def alive(self, pid):
        try:
            with open("/proc/%d/stat" % pid) as f:
                return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
        except OSError:
            return False

    @unittest.skipUnless(sys.platform.startswith("linux"), "reads /proc")
    def test_what_the_command_leaves_in_its_group_is_stopped_before_release(self):
        out = subprocess.run(
            self.launcher(str(self.port), "--", "sh", "-c", "sleep 1000 & echo $!; exit 4"),
            env=self.env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        grandchild = int(out.stdout)
        if self.alive(grandchild):
            os.kill(grandchild, signal.SIGKILL)
            self.fail("the grandchild outlived the launcher: %s" % out.stderr)
        self.assertEqual(out.returncode, 4, out.stderr)
        self.assertEqual(probe(self.port, self.dir).state, "free")

    @unittest.skipUnless(sys.platform.startswith("linux"), "reads /proc")
    def test_a_command_ignoring_sigterm_is_killed_after_the_deadline(self):
        proc = subprocess.Popen(
            self.launcher(str(self.port), "--", "sh", "-c", "trap '' TERM; echo $$; sleep 1000; wait"),
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        command = None
        try:
            command = int(proc.stdout.readline())
            proc.send_signal(signal.SIGTERM)
            # Bounded: an unbounded wait for the command fails here.
            self.assertEqual(proc.wait(timeout=30), 128 + signal.SIGKILL)
            self.assertIn("sending SIGKILL to its process group", proc.stderr.read())
            self.assertFalse(self.alive(command))
        finally:
            if proc.poll() is None:
                if command is not None:
                    os.killpg(command, signal.SIGKILL)
                proc.kill()
            proc.stdout.close()
            proc.stderr.close()
        self.assertEqual(probe(self.port, self.dir).state, "free")

    @unittest.skipIf(os.name == "nt", "SIGINT is a console event there")
    def test_sigint_reaches_the_command_and_raises_nothing_in_python(self):
        # serve's flags after PORT, as `llmlb reload` re-runs a command line.
        script = "trap 'exit 5' INT; echo up; while :; do sleep 0.05; done"
        proc = subprocess.Popen(
            self.launcher(str(self.port), "--ready", "immediate", "--", "sh", "-c", script),
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            self.assertEqual(proc.stdout.readline(), "up\n")
            proc.send_signal(signal.SIGINT)
            # With Python's own SIGINT handler chained behind serve's, the
            # call would return 5 into a pending KeyboardInterrupt.
            self.assertEqual(proc.wait(timeout=30), 5)
            err = proc.stderr.read()
            self.assertNotIn("KeyboardInterrupt", err)
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.stdout.close()
            proc.stderr.close()
        self.assertEqual(probe(self.port, self.dir).state, "free")

    @unittest.skipIf(os.name == "nt", "no SIGTERM there")
    def test_a_forwarded_sigterm_that_kills_the_command_kills_the_launcher(self):
        proc = subprocess.Popen(
            self.launcher("--ready", "immediate", str(self.port), "--", "sh", "-c", "echo up; exec sleep 600"),
            env=self.env,
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            self.assertEqual(proc.stdout.readline(), "up\n")
            proc.send_signal(signal.SIGTERM)
            self.assertEqual(proc.wait(timeout=30), -signal.SIGTERM)
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.stdout.close()
        self.assertEqual(probe(self.port, self.dir).state, "free")

    def test_usage_errors_exit_2(self):
        for args in (
            [],
            [str(self.port), "true"],
            ["0", "--", "true"],
            ["x", "--", "true"],
            ["--ready", "soon", str(self.port), "--", "true"],
            ["--ready"],
            ["--wait", "-1", str(self.port), "--", "true"],
            [str(self.port), "--frobnicate", "--", "true"],
            [str(self.port), "--backend-port", "9000", "--", "true"],  # needs --proxy
            ["--proxy", str(self.port), "--pass-socket", "--", "true"],  # serve refuses both
        ):
            out = subprocess.run(self.launcher(*args), env=self.env, capture_output=True)
            self.assertEqual(out.returncode, 2, args)
        self.assertFalse(os.path.exists(self.dir))


if __name__ == "__main__":
    unittest.main()
