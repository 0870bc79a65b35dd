"""Tests of ``llmlb_lock.serve.serve_exec``: ``llmlb serve -- CMD`` as one
Python call (the launcher is a command line over it)."""

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import json
import textwrap
import threading
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))

import llmlb_lock  # noqa: E402
from llmlb_lock import probe  # noqa: E402
from llmlb_lock.serve import serve_exec  # noqa: E402

PARENT = os.path.dirname(os.path.dirname(os.path.abspath(llmlb_lock.__file__)))


class ServeExecTest(unittest.TestCase):
    def setUp(self):
        self._tmp = tempfile.mkdtemp(prefix="llmlb-pyserve-")
        self.dir = os.path.join(self._tmp, "locks")
        self.env = dict(os.environ, LLMLB_LOCK_DIR=self.dir, PYTHONPATH=PARENT)
        # A port nobody listens on now (exec mode refuses one in use, and the
        # suite runs twice at once, with and without _speedups).
        with socket.socket() as probe_port:
            probe_port.bind(("127.0.0.1", 0))
            self.port = probe_port.getsockname()[1]

    def tearDown(self):
        shutil.rmtree(self._tmp, ignore_errors=True)

    def program(self, body):
        """A Python program calling serve_exec (it blocks and owns the
        process's signals, so it runs in a process of its own)."""
        return [sys.executable, "-c", "from llmlb_lock.serve import serve_exec\nimport sys\n" + textwrap.dedent(body)]

    def test_runs_the_command_under_the_lock_with_serves_policies(self):
        marker = os.path.join(self._tmp, "record")
        script = (
            "import json, os, sys; "
            "d = os.environ['LLMLB_LOCK_DIR']; p = os.environ['LLMLB_PORT']; "
            "r = json.load(open(os.path.join(d, 'serve_' + p + '.lock'))); "
            "json.dump({'record': r, 'parent': os.getppid()}, open(sys.argv[1], 'w')); "
            "sys.exit(7)"
        )
        out = subprocess.run(
            self.program(
                """
                code = serve_exec([sys.executable, "-c", %r, %r], %d, ready="immediate",
                                  pidfile=%r, drain_timeout=0.5)
                print("returned", code)
                sys.exit(code)
                """
                % (script, marker, self.port, os.path.join(self._tmp, "pid"))
            ),
            env=self.env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        self.assertEqual(out.returncode, 7, out.stderr)
        self.assertEqual(out.stdout, "returned 7\n")
        with open(marker) as f:
            seen = json.load(f)
        # The caller holds the lock (the library runs in its process).
        self.assertEqual(seen["record"]["port"], self.port)
        self.assertEqual(seen["record"]["pid"], seen["parent"])
        self.assertEqual(probe(self.port, self.dir).state, "free")
        self.assertFalse(os.path.exists(os.path.join(self._tmp, "pid")), "pidfile left behind")

    def test_a_stop_signal_the_command_dies_of_kills_the_caller_only_when_asked(self):
        for die, expected in ((False, 128 + signal.SIGTERM), (True, -signal.SIGTERM)):
            with self.subTest(die_of_stop_signal=die):
                # A port nobody listens on (exec mode refuses one in use).
                with socket.socket() as probe_port:
                    probe_port.bind(("127.0.0.1", 0))
                    port = probe_port.getsockname()[1]
                child = subprocess.Popen(
                    self.program(
                        """
                        sys.exit(serve_exec(["sh", "-c", "echo up; exec sleep 60"], %d,
                                            host="127.0.0.1", ready="immediate",
                                            die_of_stop_signal=%r, log=False))
                        """
                        % (port, die)
                    ),
                    env=self.env,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    text=True,
                )
                try:
                    first = child.stdout.readline()
                    if first != "up\n":
                        child.kill()
                        self.fail("the command did not start: %r; stderr: %s" % (first, child.communicate(timeout=30)[1]))
                    child.send_signal(signal.SIGTERM)
                    _, err = child.communicate(timeout=30)
                finally:
                    child.kill()
                self.assertEqual(child.returncode, expected, err)
                self.assertNotIn("KeyboardInterrupt", err)

    def test_options_serve_refuses_are_exit_2_and_bad_values_are_errors(self):
        out = subprocess.run(
            self.program("sys.exit(serve_exec(['true'], 8312, backend_port=9000))"),
            env=self.env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        self.assertEqual(out.returncode, 2, out.stderr)
        self.assertTrue(out.stderr.startswith("Error: "), out.stderr)
        self.assertIn("proxy mode only", out.stderr)
        self.assertFalse(os.path.exists(self.dir), "a refused call created the lock dir")
        for kwargs in ({"wait": -1}, {"replace_grace": "2"}, {"backend_port": 70000}):
            with self.subTest(**kwargs):
                with self.assertRaises(ValueError):
                    serve_exec(["true"], 8313, lock_dir=self.dir, **kwargs)
        with self.assertRaises(ValueError):
            serve_exec(["true"], 70000, lock_dir=self.dir)

    def test_only_the_main_thread_may_call_it(self):
        caught = []

        def call():
            try:
                serve_exec(["true"], 8314, lock_dir=self.dir)
            except RuntimeError as e:
                caught.append(e)

        thread = threading.Thread(target=call)
        thread.start()
        thread.join(30)
        self.assertEqual(len(caught), 1)
        self.assertIn("main thread", str(caught[0]))
        self.assertFalse(os.path.exists(self.dir))


if __name__ == "__main__":
    unittest.main()
