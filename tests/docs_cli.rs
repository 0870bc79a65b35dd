//! The console sessions of `README.md` and `docs/cli.md`, run by trycmd
//! against the built `llmlb`: a changed message or exit code fails here until
//! the page is updated.
//!
//! Each page runs in a private lock dir (`LLMLB_LOCK_DIR`) in which port 8000
//! is already held by an exec-mode `llmlb serve --port 8000 --ready immediate -- sleep 600`
//! started here, so the pages can show a refused `serve`, a listing and a
//! `stop` with commands that finish. Redactions: `[PID]` is that holder's PID,
//! `[STARTED]` its start time, `[LOCKDIR]` the lock dir; `[..]` is anything
//! on one line, `...` any lines.
//!
//! Unix only: the pages show Unix hints (`kill -TERM`).
#![cfg(unix)]

mod cli_support;

use cli_support::*;

/// Port 8000 is the docs' own, so the pages take turns with it: each lock
/// dir is private, but the machine's port is one, and exec mode checks it
/// with a bind of its own before it starts its command.
static PORT_8000: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// A page's sessions against a fresh holder of port 8000.
fn run_page(page: &str) {
    let _turn = PORT_8000
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let env = Env::new();
    let mut holder = env.spawn(&[
        "serve",
        "--port",
        "8000",
        "--ready",
        "immediate",
        "--",
        "sleep",
        "600",
    ]);
    wait_until("the holder of port 8000", || {
        env.run(&["status", "--port", "8000"]).code() == Some(0)
    });
    let record: serde_json::Value =
        serde_json::from_str(&read_when_written_json(&env.lock_file(8000))).unwrap();
    let started = record["started_at"].as_str().unwrap();
    // `status` and the hints print the start to the second.
    let started = started.split('.').next().unwrap().trim_end_matches('Z');
    let started = format!("{started}Z");

    let locks = env.locks.to_str().unwrap().to_owned();
    trycmd::TestCases::new()
        .register_bin("llmlb", std::path::Path::new(env!("CARGO_BIN_EXE_llmlb")))
        .env("LLMLB_LOCK_DIR", &locks)
        .env("LLMLB_LOG_LEVEL", "info")
        .env("NO_COLOR", "1")
        .insert_var("[STARTED]", started)
        .unwrap()
        .insert_var("[PID]", holder.pid().to_string())
        .unwrap()
        .insert_var("[LOCKDIR]", locks)
        .unwrap()
        .case(page)
        .run();
    // The page may have stopped it already.
    if holder.try_wait().is_none() {
        holder.kill();
    }
}

/// The lock file's record once it is complete and says ready (the holder
/// writes it after taking the lock, and marks it ready once its command
/// runs), so the pages never catch it starting.
fn read_when_written_json(path: &std::path::Path) -> String {
    let mut text = String::new();
    wait_until("the holder's record, ready", || {
        text = std::fs::read_to_string(path).unwrap_or_default();
        serde_json::from_str::<serde_json::Value>(&text)
            .is_ok_and(|record| record["state"].as_str().unwrap_or("ready") == "ready")
    });
    text
}

#[test]
fn readme_sessions() {
    run_page("README.md");
}

#[test]
fn cli_guide_sessions() {
    run_page("docs/cli.md");
}
