//! Runs the Python wrapper's and launcher's unittest suites
//! (`ffi/python/tests/`) against the library built by this `cargo test`.
#![cfg(unix)]

mod support;

use std::path::Path;
use std::process::Command;

/// Copies the package (its `.py` files and `py.typed`, never a built
/// extension lying in the checkout), the tests and the examples they run
/// into `to`, as `.ci/packaging` runs them from an installed package: the
/// tests import the copy beside them.
fn copy_package(to: &Path) {
    let python_dir = support::repo_root().join("ffi/python");
    for sub in ["llmlb_lock", "tests", "examples"] {
        std::fs::create_dir(to.join(sub)).unwrap();
        for entry in std::fs::read_dir(python_dir.join(sub)).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_str().unwrap().to_owned();
            if name.ends_with(".py") || name == "py.typed" {
                std::fs::copy(&path, to.join(sub).join(&name)).unwrap();
            }
        }
    }
}

/// Runs the unittest suite in `root` against the library this `cargo test`
/// built; `speedups`: whether the suite must find the `_speedups` module
/// in use (`LLMLB_EXPECT_SPEEDUPS`, checked by the suite itself).
fn run_suite(root: &Path, speedups: bool) {
    let out = Command::new(support::python3())
        .args(["-m", "unittest", "discover", "-v", "-s"])
        .arg(root.join("tests"))
        .current_dir(root)
        .env("LLMLB_LOCK_LIB", support::shared_lib())
        // test_docs.py runs docs/python.md's examples from the copy.
        .env("LLMLB_DOCS_DIR", support::repo_root().join("docs"))
        .env("LLMLB_EXPECT_SPEEDUPS", if speedups { "1" } else { "0" })
        .env_remove("LLMLB_LOCK_DIR")
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "Python tests failed:\n{stderr}");
    assert!(stderr.contains("\nOK"), "{stderr}");
    // unittest skips pass silently too: none are expected.
    assert!(!stderr.contains("skipped"), "{stderr}");
}

/// The suite through ctypes: the package as a checkout has it, no
/// extension built.
#[test]
fn python_tests_pass() {
    let tmp = tempfile::tempdir().unwrap();
    copy_package(tmp.path());
    run_suite(tmp.path(), false);
}

/// The same suite with `_speedups` compiled (as `pip install` builds it:
/// stable ABI, named `*.abi3.so`) into the package copy.
#[test]
fn python_tests_pass_with_speedups() {
    let tmp = tempfile::tempdir().unwrap();
    copy_package(tmp.path());
    let config = Command::new(support::python3())
        .args([
            "-c",
            "import sysconfig; print(sysconfig.get_paths()['include'])",
        ])
        .output()
        .unwrap();
    assert!(config.status.success(), "{config:?}");
    let include = String::from_utf8(config.stdout).unwrap();
    let include = Path::new(include.trim());
    if !include.join("Python.h").is_file() {
        support::prereq::fail(
            &format!("no Python.h in {} (Python's C headers)", include.display()),
            "install them (e.g. `apt-get install python3-dev`)",
        );
    }
    let source = support::repo_root().join("ffi/python/llmlb_lock/_speedups.c");
    let built = tmp.path().join("llmlb_lock/_speedups.abi3.so");
    let cc = Command::new(support::c_compiler())
        .args([
            "-std=c11",
            "-shared",
            "-fPIC",
            "-O2",
            "-Wall",
            "-Wextra",
            "-Werror",
            "-pedantic",
        ])
        .arg("-I")
        .arg(include)
        .arg(&source)
        .arg("-o")
        .arg(&built)
        .output()
        .unwrap();
    assert!(
        cc.status.success(),
        "compiling _speedups.c failed:\n{}",
        String::from_utf8_lossy(&cc.stderr)
    );
    run_suite(tmp.path(), true);
}

/// `ffi/python/bench.py`, the wrapper's benchmark, runs end to end on a
/// few cycles: it compiles `c_cycle.c` as a library (warnings are errors),
/// loads it beside the wrapper, and prints a row for every contender and
/// every ratio. Timing is not judged (that is the benchmark's job).
#[test]
fn bench_script_runs() {
    let python = support::python3();
    let repo = support::repo_root();
    let base = tempfile::tempdir().unwrap();
    let out = Command::new(python)
        .arg(repo.join("ffi/python/bench.py"))
        .args([
            "--iterations",
            "3",
            "--rounds",
            "2",
            "--no-filelock",
            "--base",
        ])
        .arg(base.path())
        .env("LLMLB_LOCK_LIB", support::shared_lib())
        .env_remove("LLMLB_LOCK_DIR")
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "bench.py failed:\n{stdout}\n{stderr}");
    for row in [
        "floor_unlink ",
        "c_abi ",
        "c_abi_dir ",
        "py_floor_unlink ",
        "ctypes_only ",
        "py_path ",
        "py_dir ",
        "py_with ",
        "py_dir / c_abi_dir",
        "py_path / c_abi",
        "==> filelock: SKIPPED (--no-filelock)",
    ] {
        assert!(
            stdout.lines().any(|l| l.starts_with(row)),
            "no {row:?} row:\n{stdout}"
        );
    }
    assert_eq!(
        std::fs::read_dir(base.path()).unwrap().count(),
        0,
        "bench.py left its work dir behind"
    );
}
