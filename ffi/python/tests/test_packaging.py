"""Where the module finds its library: inside the installed package, in the
repository's cargo target dir (honouring CARGO_TARGET_DIR), or at
LLMLB_LOCK_LIB; and the ImportError (with a fix) when it is nowhere.

Each case runs a fresh Python on a copy of the module laid out as in the
repository or as installed, with a symlink to the library this suite loaded,
so it runs the same against the repository and against an installed package.
"""

import os
import shutil
import subprocess
import sys
import tempfile
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import llmlb_lock  # noqa: E402

MODULE = os.path.abspath(llmlb_lock.__file__)
LIBRARY = llmlb_lock._lib()._name  # the library this suite itself uses
NAME = llmlb_lock._library_name()
# Prints "imported" once the import succeeded, then what was loaded.
WHERE = (
    "import llmlb_lock; print('imported'); "
    "print(llmlb_lock._lib()._name); print(llmlb_lock.library_version())"
)


class LoaderTest(unittest.TestCase):
    def setUp(self):
        self.tmp = os.path.realpath(tempfile.mkdtemp(prefix="llmlb-pyload-"))

    def tearDown(self):
        shutil.rmtree(self.tmp, ignore_errors=True)

    def path(self, *parts):
        return os.path.join(self.tmp, *parts)

    def library_at(self, *parts):
        """A symlink to the real library at tmp/<parts>."""
        path = self.path(*parts)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        os.symlink(LIBRARY, path)
        return path

    def module_at(self, *parts):
        """A copy of the module as the package tmp/<parts>/llmlb_lock; returns
        the directory to put on sys.path."""
        package = self.path(*parts, "llmlb_lock")
        os.makedirs(package)
        shutil.copy(MODULE, os.path.join(package, "__init__.py"))
        return self.path(*parts)

    def repository(self):
        """A repository's layout around a copy of the module (the landmarks
        the loader looks for: include/llmlb_lock.h and ffi/Cargo.toml)."""
        os.makedirs(self.path("repo", "include"))
        os.makedirs(self.path("repo", "ffi"))
        open(self.path("repo", "include", "llmlb_lock.h"), "w").close()
        open(self.path("repo", "ffi", "Cargo.toml"), "w").close()
        return self.module_at("repo", "ffi", "python")

    def run_python(self, sys_path, **env):
        clean = {
            k: v
            for k, v in os.environ.items()
            if k not in ("LLMLB_LOCK_LIB", "CARGO_TARGET_DIR", "PYTHONPATH")
        }
        clean.update(env, PYTHONPATH=sys_path, PYTHONDONTWRITEBYTECODE="1")
        return subprocess.run(
            [sys.executable, "-c", WHERE],
            env=clean,
            cwd=self.tmp,  # outside any repository
            capture_output=True,
            text=True,
        )

    def assert_loads(self, out, library):
        self.assertEqual(out.returncode, 0, out.stderr)
        imported, loaded, version = out.stdout.splitlines()
        self.assertEqual(imported, "imported")
        self.assertEqual(loaded, library)
        self.assertEqual(version, llmlb_lock.library_version())

    def assert_import_error(self, out, *needles):
        # The import itself fails, not a later call.
        self.assertNotEqual(out.returncode, 0, out.stdout)
        self.assertEqual(out.stdout, "", out.stderr)
        last = out.stderr.strip().splitlines()[-1]
        self.assertTrue(
            last.startswith("ImportError: llmlb_lock: cannot find the llmlb lock library"),
            out.stderr,
        )
        for needle in needles:
            self.assertIn(needle, last)

    def test_repository_uses_its_target_dir_release_before_debug(self):
        sys_path = self.repository()
        debug = self.library_at("repo", "target", "debug", NAME)
        self.assert_loads(self.run_python(sys_path), debug)
        release = self.library_at("repo", "target", "release", NAME)
        self.assert_loads(self.run_python(sys_path), release)

    def test_repository_honours_cargo_target_dir(self):
        sys_path = self.repository()
        self.library_at("repo", "target", "release", NAME)  # must not be used
        elsewhere = self.library_at("elsewhere", "debug", NAME)
        self.assert_loads(
            self.run_python(sys_path, CARGO_TARGET_DIR=self.path("elsewhere")), elsewhere
        )
        # Relative, as cargo takes it: from the current directory.
        self.assert_loads(self.run_python(sys_path, CARGO_TARGET_DIR="elsewhere"), elsewhere)

    def test_missing_library_in_repository_fails_at_import_with_a_cargo_fix(self):
        sys_path = self.repository()
        self.library_at("repo", "target", "release", NAME)  # not where cargo would build
        out = self.run_python(sys_path, CARGO_TARGET_DIR=self.path("empty"))
        self.assert_import_error(
            out,
            self.path("empty", "release", NAME),
            self.path("empty", "debug", NAME),
            "cargo build --release -p llmlb-lock-ffi",
        )
        # Following the fix puts the library where it is looked for.
        built = self.library_at("empty", "release", NAME)
        self.assert_loads(self.run_python(sys_path, CARGO_TARGET_DIR=self.path("empty")), built)

    def test_installed_package_uses_its_own_library_only(self):
        site = self.module_at("site-packages")
        packaged = self.library_at("site-packages", "llmlb_lock", "libllmlb_lock.abi3.so")
        # Not a repository, so CARGO_TARGET_DIR is not a place to look.
        target = self.library_at("target", "release", NAME)
        self.assert_loads(self.run_python(site, CARGO_TARGET_DIR=self.path("target")), packaged)
        os.remove(packaged)
        out = self.run_python(site, CARGO_TARGET_DIR=self.path("target"))
        self.assert_import_error(out, "pip install --force-reinstall ./ffi/python")
        self.assertNotIn(target, out.stderr)

    def test_llmlb_lock_lib_overrides_and_never_falls_back(self):
        site = self.module_at("site-packages")
        self.library_at("site-packages", "llmlb_lock", "libllmlb_lock.abi3.so")
        chosen = self.library_at("chosen", NAME)
        self.assert_loads(self.run_python(site, LLMLB_LOCK_LIB=chosen), chosen)
        missing = self.path("missing", NAME)
        out = self.run_python(site, LLMLB_LOCK_LIB=missing)
        self.assert_import_error(out, missing, "LLMLB_LOCK_LIB")

    def test_unloadable_library_fails_at_import_naming_it(self):
        site = self.module_at("site-packages")
        broken = self.path("site-packages", "llmlb_lock", NAME)
        with open(broken, "w") as f:
            f.write("not a shared library\n")
        out = self.run_python(site)
        self.assertNotEqual(out.returncode, 0, out.stdout)
        self.assertEqual(out.stdout, "", out.stderr)
        last = out.stderr.strip().splitlines()[-1]
        self.assertTrue(last.startswith("ImportError: llmlb_lock: cannot load"), out.stderr)
        self.assertIn(broken, last)


if __name__ == "__main__":
    unittest.main()
