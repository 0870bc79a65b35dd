"""The examples of docs/python.md, each run as its own program in a private
lock dir, against the library under test (LLMLB_LOCK_LIB, as the rest of the
suite). ffi/tests/python.rs points LLMLB_DOCS_DIR at the checkout's docs/;
run from a checkout the page is found beside the package."""

import os
import re
import subprocess
import sys
import tempfile
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import llmlb_lock  # noqa: E402
from llmlb_lock import probe  # noqa: E402

PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(llmlb_lock.__file__)))


def guide():
    """docs/python.md, or None where there is no checkout (an installed
    package's tests, as .ci/packaging runs them)."""
    explicit = os.environ.get("LLMLB_DOCS_DIR")
    if explicit:
        return os.path.join(explicit, "python.md")
    beside = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "..", "docs", "python.md")
    return beside if os.path.exists(beside) else None


class PythonGuideExamples(unittest.TestCase):
    def test_every_example_runs_and_leaves_its_ports_free(self):
        path = guide()
        if path is None:
            self.skipTest("no docs/python.md beside the package and LLMLB_DOCS_DIR unset")
        with open(path, encoding="utf-8") as f:
            page = f.read()
        examples = re.findall(r"^```python\n(.*?)^```", page, flags=re.S | re.M)
        self.assertGreaterEqual(len(examples), 4, "the page's examples were not found")
        for number, code in enumerate(examples, 1):
            with self.subTest(example=number), tempfile.TemporaryDirectory() as tmp:
                locks = os.path.join(tmp, "locks")
                env = dict(os.environ, LLMLB_LOCK_DIR=locks, PYTHONPATH=PACKAGE_ROOT)
                run = subprocess.run(
                    [sys.executable, "-c", code], env=env, cwd=tmp,
                    capture_output=True, text=True, timeout=60,
                )
                self.assertEqual(run.returncode, 0, f"example {number}:\n{code}\n{run.stdout}{run.stderr}")
                for port in (8000, 8001):
                    self.assertEqual(probe(port, lock_dir=locks).state, "free", f"example {number}: port {port}")

    def test_the_first_example_reports_the_holder_when_the_port_is_held(self):
        path = guide()
        if path is None:
            self.skipTest("no docs/python.md beside the package and LLMLB_DOCS_DIR unset")
        with open(path, encoding="utf-8") as f:
            first = re.findall(r"^```python\n(.*?)^```", f.read(), flags=re.S | re.M)[0]
        with tempfile.TemporaryDirectory() as tmp:
            locks = os.path.join(tmp, "locks")
            with llmlb_lock.PortLock(8000, lock_dir=locks):
                env = dict(os.environ, LLMLB_LOCK_DIR=locks, PYTHONPATH=PACKAGE_ROOT)
                run = subprocess.run(
                    [sys.executable, "-c", first], env=env, cwd=tmp,
                    capture_output=True, text=True, timeout=60,
                )
            self.assertEqual(run.returncode, 1, run.stderr)
            self.assertIn(f"already running on port 8000 (PID: {os.getpid()}", run.stderr)


if __name__ == "__main__":
    unittest.main()
