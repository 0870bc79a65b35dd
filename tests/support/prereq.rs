//! What a test does when something it needs is missing: it never passes
//! silently.
//!
//! - [`fail`]: tools every machine of this project has and without which the
//!   test means nothing (a C compiler, python3). Missing, the test fails with
//!   the tool's name and how to get it, in CI and locally alike.
//! - [`skip_unless_ci`]: environment the test cannot create (root, mount
//!   namespaces, sanitizer runtimes). In CI (env `CI` set, as `.ci/run` has
//!   it) the test fails. Locally the caller skips or degrades, and a
//!   `SKIPPED` line goes to the process's real stderr, which libtest does not
//!   capture: it shows in the `cargo test` output even for a passing test.
//!
//! Shared by the root tests (`mod prereq;`) and the ffi tests (through
//! `ffi/tests/support/mod.rs`).

#![allow(dead_code)] // each test binary uses a different subset

use std::io::Write;

/// Whether this run is CI's: `CI` set to anything but empty, `0` or `false`.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !matches!(v.trim(), "" | "0" | "false"))
}

/// Fails the test: `what` is missing, `fix` says how to provide it.
#[track_caller]
pub fn fail(what: &str, fix: &str) -> ! {
    panic!("prerequisite missing: {what}; {fix}. This test does not pass without running.")
}

/// Under CI, fails like [`fail`]. Elsewhere prints
/// `SKIPPED <test>: <what>; <fix>` where `cargo test` shows it and returns,
/// so the caller can skip (return) or degrade; `skipped` says which part of
/// the test did not run.
#[track_caller]
pub fn skip_unless_ci(what: &str, fix: &str, skipped: &str) {
    if in_ci() {
        panic!(
            "prerequisite missing in CI: {what}; {fix}. Without it {skipped} would not run, \
             and CI must not pass without it."
        );
    }
    let test = std::thread::current()
        .name()
        .unwrap_or("<unnamed test>")
        .to_owned();
    // Straight to the stderr stream, bypassing libtest's capture of
    // `eprintln!`: a skip must be visible without `--nocapture`.
    let _ = writeln!(
        std::io::stderr().lock(),
        "\nSKIPPED {test}: {skipped} did not run: {what}; {fix} (set CI=1 to make this a failure)"
    );
}
