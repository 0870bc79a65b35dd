//! Runs the Python wrapper's and launcher's unittest suites
//! (`ffi/python/tests/`) against the library built by this `cargo test`.
#![cfg(unix)]

mod support;

use std::process::Command;

#[test]
fn python_tests_pass() {
    let python = support::python3();
    let python_dir = support::repo_root().join("ffi/python");
    let out = Command::new(python)
        .args(["-m", "unittest", "discover", "-v", "-s"])
        .arg(python_dir.join("tests"))
        .current_dir(&python_dir)
        .env("LLMLB_LOCK_LIB", support::shared_lib())
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
        "py_dir / c_abi_dir",
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
