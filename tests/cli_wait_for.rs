//! `llmlb wait -p PORT [--for ready|held|free] [-t SECS]` end to end, with
//! real processes: `wait` started before `serve`, before the lock dir
//! exists; held and free; the timeout's line; exit 3 when a starting holder
//! releases or dies; signals; usage errors. (`tests/cli_wait.rs` is
//! `serve --wait`.)
#![cfg(target_os = "linux")]

mod cli_support;
#[path = "support/prereq.rs"]
mod prereq;

use std::process::Command;

use cli_support::*;
use llmlb::lock::{acquire_or_reclaim, LockDir, LockInfo, PortGuard, ServeState};

/// `llmlb wait ARGS` with its debug log on: each look it takes is a line,
/// which is how a test knows what it has seen. (An inotify watch for a
/// reader's close is not: a child that another test thread forks while this
/// process has the file open closes its copy at its exec, later.)
fn spawn_wait(env: &Env, args: &[&str]) -> Proc {
    let mut cmd = env.cmd(&[&["wait"], args].concat());
    cmd.env("LLMLB_LOG_LEVEL", "debug");
    env.spawn_cmd(cmd)
}

/// Waits until `wait` has logged a look that saw `seen` (e.g. `held by PID 7
/// (starting)`).
fn until_looked(wait: &Proc, port: u16, seen: &str) {
    let line = format!("port {port} looked at: {seen}");
    wait_until(&format!("wait to log {line:?}"), || {
        wait.stderr().contains(&line)
    });
}

/// The last line of `stderr`: the lines before it are the debug log.
fn last_line(stderr: &str) -> &str {
    stderr.trim().lines().last().unwrap_or_default()
}

/// The lock of `port` taken by this process, recorded as starting.
fn starting_holder(env: &Env, port: u16) -> PortGuard {
    let dir = LockDir::create(&env.locks)
        .unwrap()
        .announcing(ServeState::Starting);
    acquire_or_reclaim(&dir, port).unwrap()
}

/// Waits until `pid` has a SIGINT handler (`SigCgt` in /proc): from then on
/// a SIGINT is the program's to handle, not the default kill.
fn wait_for_sigint_handler(pid: u32) {
    let both = (1u64 << (libc::SIGINT - 1)) | (1u64 << (libc::SIGTERM - 1));
    wait_until("SIGINT and SIGTERM handlers", || {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("SigCgt:"))
            .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
            .is_some_and(|mask| mask & both == both)
    });
}

/// `wait` started before anything exists (no lock dir), then an HTTP
/// `serve`: `wait` ends 0 once serve is ready, naming its PID, and serve
/// answers.
#[test]
fn ready_started_before_serve_and_its_lock_dir_ends_once_serve_is_ready() {
    let env = Env::new();
    let port = free_port();
    assert!(!env.locks.exists());
    let mut wait = env.spawn(&["wait", "-p", &port.to_string()]);
    wait_for_sigint_handler(wait.pid());
    assert!(wait.try_wait().is_none(), "{}", wait.stderr());
    let mut serve = env.serve(port);
    let out = wait.finish();
    assert_eq!(out.code(), Some(0), "{}", out.stderr);
    assert_eq!(
        out.stdout.trim(),
        format!("Port {port} is ready (PID {})", serve.pid())
    );
    assert_eq!(http_get(port, "/health").map(|(s, _)| s), Some(200));
    assert!(serve.try_wait().is_none());
}

/// The lock dir exists but is empty, and the server is a command run in
/// exec mode (ready once it is started).
#[test]
fn ready_in_an_empty_lock_dir_then_an_exec_mode_server() {
    let env = Env::new();
    LockDir::create(&env.locks).unwrap();
    let port = free_port();
    let p = port.to_string();
    let wait = env.spawn(&["wait", "--port", &p, "--for", "ready", "-t", "60"]);
    let serve = env.spawn(&[
        "serve",
        "-p",
        &p,
        "--ready",
        "immediate",
        "--",
        "sleep",
        "60",
    ]);
    let out = wait.finish();
    assert_eq!(out.code(), Some(0), "{}", out.stderr);
    assert_eq!(
        out.stdout.trim(),
        format!("Port {port} is ready (PID {})", serve.pid())
    );
    assert_eq!(env.run(&["stop", "-p", &p]).code(), Some(0));
}

/// `--for held` is any state: a holder still starting will do.
#[test]
fn held_is_met_by_a_holder_that_is_still_starting() {
    let env = Env::new();
    let port = free_port();
    let wait = env.spawn(&["wait", "-p", &port.to_string(), "--for", "held"]);
    let guard = starting_holder(&env, port);
    let out = wait.finish();
    assert_eq!(out.code(), Some(0), "{}", out.stderr);
    assert_eq!(
        out.stdout.trim(),
        format!("Port {port} is held (PID {}, starting)", std::process::id())
    );
    guard.release().unwrap();
}

/// `--for free` while a server runs: met once `stop` has stopped it.
#[test]
fn free_is_met_once_the_server_is_stopped() {
    let env = Env::new();
    let port = free_port();
    let p = port.to_string();
    let serve = env.serve(port);
    let mut wait = spawn_wait(&env, &["-p", &p, "--for", "free"]);
    until_looked(&wait, port, &format!("held by PID {}", serve.pid()));
    assert!(wait.try_wait().is_none(), "{}", wait.stderr());
    assert_eq!(env.run(&["stop", "-p", &p]).code(), Some(0));
    let out = wait.finish();
    assert_eq!(out.code(), Some(0), "{}", out.stderr);
    assert_eq!(out.stdout.trim(), format!("Port {port} is free"));
}

/// A holder that stays starting: at the timeout, exit 1 and one line naming
/// the state it last saw, the holder's PID and how long.
#[test]
fn the_timeout_names_the_state_last_seen_and_the_holder() {
    let env = Env::new();
    let port = free_port();
    let guard = starting_holder(&env, port);
    let out = env.run(&["wait", "-p", &port.to_string(), "-t", "0.3"]);
    assert_eq!(out.code(), Some(1), "{}", out.stderr);
    assert_eq!(out.stdout, "");
    let line = out.stderr.trim();
    assert_eq!(line.lines().count(), 1, "{line}");
    let expected = format!(
        "Timed out after 0.3s waiting for port {port} to be ready: held by PID {}, starting for ",
        std::process::id()
    );
    assert!(line.starts_with(&expected), "{line}");
    assert!(line.ends_with('s'), "{line}");
    guard.release().unwrap();
}

/// The starting holder it waited on releases the port before it is ready:
/// exit 3, naming it.
#[test]
fn a_starting_holder_that_releases_ends_a_ready_wait_with_3() {
    let env = Env::new();
    let port = free_port();
    let guard = starting_holder(&env, port);
    let wait = spawn_wait(&env, &["-p", &port.to_string()]);
    let me = std::process::id();
    until_looked(&wait, port, &format!("held by PID {me} (starting)"));
    guard.release().unwrap();
    let out = wait.finish();
    assert_eq!(out.code(), Some(3), "{}", out.stderr);
    assert_eq!(
        last_line(&out.stderr),
        format!("Port {port} did not become ready: its holder PID {me} (starting) released it"),
        "{}",
        out.stderr
    );
}

/// The starting holder dies (killed while holding, its file left behind,
/// here a shell holding the file with util-linux `flock`): exit 3, and the
/// stale file is what it saw.
#[test]
fn a_starting_holder_that_dies_ends_a_ready_wait_with_3() {
    if Command::new("flock").arg("--version").output().is_err() {
        prereq::skip_unless_ci(
            "util-linux flock",
            "install util-linux",
            "the dying-holder test",
        );
        return;
    }
    let env = Env::new();
    let port = free_port();
    LockDir::create(&env.locks).unwrap();
    let file = env.lock_file(port);
    // Holds the lock on fd 9 in the shell's own PID (exec keeps it).
    let script = format!(
        "exec 9>>'{}' && flock -n 9 && exec sleep 60",
        file.display()
    );
    let mut holder = env.spawn_cmd({
        let mut cmd = Command::new("sh");
        cmd.args(["-c", &script]);
        cmd
    });
    let dir = LockDir::create(&env.locks).unwrap();
    wait_until("the shell to hold the lock", || {
        matches!(dir.probe(port), Ok(llmlb::lock::LockState::Held(_)))
    });
    let mut info = LockInfo::for_current_process(port);
    info.pid = holder.pid();
    info.identity = None;
    info.set_serve_state(ServeState::Starting);
    std::fs::write(&file, info.to_bytes()).unwrap();

    let wait = spawn_wait(&env, &["-p", &port.to_string()]);
    until_looked(
        &wait,
        port,
        &format!("held by PID {} (starting)", holder.pid()),
    );
    holder.kill();
    let out = wait.finish();
    assert_eq!(out.code(), Some(3), "{}", out.stderr);
    assert_eq!(
        last_line(&out.stderr),
        format!(
            "Port {port} did not become ready: its holder PID {} (starting) exited without releasing it",
            holder.pid()
        ),
        "{}",
        out.stderr
    );
}

/// SIGINT while waiting exits 130, SIGTERM 143, one line each.
#[test]
fn signals_end_a_wait_with_128_plus_the_signal() {
    let env = Env::new();
    let port = free_port();
    for (sig, code, name) in [
        (libc::SIGINT, 130, "SIGINT"),
        (libc::SIGTERM, 143, "SIGTERM"),
    ] {
        let wait = spawn_wait(&env, &["-p", &port.to_string(), "--for", "held"]);
        // Its first look comes after its signal handlers are in place: the
        // handler bits in /proc are set a moment before tokio records a
        // signal (seen: a SIGINT in that moment lost, the wait going on).
        until_looked(&wait, port, "free");
        signal(wait.pid(), sig);
        let out = wait.finish();
        assert_eq!(out.code(), Some(code), "{name}: {}", out.stderr);
        // The waiting thread may log one more look while the line is printed.
        let said: Vec<&str> = out
            .stderr
            .lines()
            .filter(|l| !l.contains(" DEBUG "))
            .collect();
        assert_eq!(
            said,
            [format!(
                "Interrupted ({name}) while waiting for port {port} to be held"
            )],
            "{}",
            out.stderr
        );
    }
}

/// Usage errors exit 2 with clap's message naming the value.
#[test]
fn bad_timeouts_and_states_are_usage_errors() {
    let env = Env::new();
    for (args, names) in [
        (&["wait", "-t", "soon"][..], "soon"),
        (&["wait", "--timeout", "-1"][..], "-1"),
        (&["wait", "--for", "up"][..], "up"),
        (&["wait", "-p", "0"][..], "0"),
    ] {
        let out = env.run(args);
        assert_eq!(out.code(), Some(2), "{args:?}: {}", out.stderr);
        assert!(
            out.stderr.contains(&format!("'{names}'")),
            "{args:?}: {}",
            out.stderr
        );
    }
}
