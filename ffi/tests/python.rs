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
