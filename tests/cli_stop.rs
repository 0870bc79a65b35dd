//! `llmlb stop` end to end: idempotence, stale files that must never be
//! signalled, identity refusal, timeout and `--force` on a whole process group.
#![cfg(target_os = "linux")]

mod cli_support;

use std::os::unix::process::ExitStatusExt;
use std::process::{Command, Stdio};

use chrono::Utc;
use cli_support::*;
use llmlb::lock::{acquire_or_reclaim, LockDir, LockInfo, ProcessIdentity};

#[test]
fn nothing_running_is_success() {
    let env = Env::new();
    let port = free_port();
    // No lock dir at all.
    let out = env.run(&["stop", "--port", &port.to_string()]);
    assert_eq!(out.code(), Some(0));
    assert_eq!(out.stdout, format!("No server running on port {port}\n"));
    assert!(!env.locks.exists(), "stop must not create the lock dir");
    // A dir without the file.
    LockDir::create(&env.locks).unwrap();
    let out = env.run(&["stop", "-p", &port.to_string()]);
    assert_eq!(out.code(), Some(0));
    assert_eq!(out.stdout, format!("No server running on port {port}\n"));
}

struct Sleeper(std::process::Child);
impl Drop for Sleeper {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn stale_file_naming_a_live_unrelated_pid_is_removed_and_nothing_signalled() {
    let env = Env::new();
    let port = free_port();
    let mut sleeper = Sleeper(
        Command::new("sleep")
            .arg("30")
            .stdin(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let pid = sleeper.0.id();
    // A file as a crashed holder would have left it, except that its PID (and
    // even its identity token) now names a live, unrelated process.
    LockDir::create(&env.locks).unwrap();
    let mut info = LockInfo::new(pid, port, Utc::now());
    info.host = LockInfo::for_current_process(port).host;
    info.identity = ProcessIdentity::of_pid(pid);
    std::fs::write(env.lock_file(port), info.to_bytes()).unwrap();

    let status = env.run(&["status", "--port", &port.to_string()]);
    assert_eq!(status.code(), Some(1), "{status:?}");
    assert!(status.stdout.lines().nth(1).unwrap().ends_with("Stale"));

    let stop = env.run(&["stop", "--port", &port.to_string()]);
    assert_eq!(stop.code(), Some(0), "{stop:?}");
    assert!(stop.stderr.contains("stale"), "{}", stop.stderr);
    assert!(
        stop.stderr.contains(&format!("PID {pid}")),
        "{}",
        stop.stderr
    );
    assert!(!stop.stdout.contains("Stopping"), "{}", stop.stdout);
    assert!(!env.lock_file(port).exists());
    assert!(
        sleeper.0.try_wait().unwrap().is_none(),
        "sleep was signalled"
    );
    assert!(alive(pid));
}

#[test]
fn a_held_lock_whose_pid_cannot_be_verified_is_not_signalled() {
    let env = Env::new();
    let port = free_port();
    // This test process holds the lock; its file is rewritten to claim a
    // reused PID (our PID, another start time) and then another host. A stop
    // that signalled would kill this test.
    let dir = LockDir::create(&env.locks).unwrap();
    let guard = acquire_or_reclaim(&dir, port).unwrap();
    let mut reused = guard.info().clone();
    let identity = reused.identity.as_mut().expect("Linux has identities");
    identity.start_ticks = identity.start_ticks.map(|t| t + 1);
    std::fs::write(env.lock_file(port), reused.to_bytes()).unwrap();
    let out = env.run(&["stop", "--port", &port.to_string()]);
    assert_eq!(out.code(), Some(1), "{out:?}");
    assert!(out.stderr.starts_with("Error: "), "{}", out.stderr);
    assert!(
        out.stderr.contains("nothing was signalled"),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("PID reused"), "{}", out.stderr);
    assert_eq!(out.stderr.lines().count(), 1);

    let mut foreign = guard.info().clone();
    foreign.host = Some("elsewhere.invalid".into());
    std::fs::write(env.lock_file(port), foreign.to_bytes()).unwrap();
    let out = env.run(&["stop", "--port", &port.to_string()]);
    assert_eq!(out.code(), Some(1), "{out:?}");
    assert!(out.stderr.contains("elsewhere.invalid"), "{}", out.stderr);
    // Still held by us: status says running.
    let status = env.run(&["status", "--port", &port.to_string()]);
    assert_eq!(status.code(), Some(0));
    drop(guard);
}

/// Exec mode running a shell that ignores SIGTERM and has a grandchild. The
/// TERM from `stop` goes to llmlb, which forwards it to the group, where it
/// is ignored: only `--force` ends it.
#[test]
fn timeout_then_force_kills_the_whole_group() {
    let env = Env::new();
    let port = free_port();
    let gc_file = env.tmp.path().join("grandchild.pid");
    let sh_file = env.tmp.path().join("shell.pid");
    let script = format!(
        "trap '' TERM; echo $$ > {sh}; sleep 60 & echo $! > {gc}; wait",
        sh = sh_file.display(),
        gc = gc_file.display()
    );
    let mut server = env.spawn(&[
        "serve",
        "--port",
        &port.to_string(),
        "--",
        "sh",
        "-c",
        &script,
    ]);
    let shell: u32 = read_when_written(&sh_file).parse().unwrap();
    let grandchild: u32 = read_when_written(&gc_file).parse().unwrap();
    let _group = GroupGuard(Some(shell));
    wait_until("child_pgid recorded", || {
        status_json(&env, Some(port)).1[0]["child_pgid"] == shell
    });
    assert_eq!(pgid_of(grandchild), Some(shell));

    let out = env.run(&["stop", "--port", &port.to_string(), "--timeout", "1"]);
    assert_eq!(out.code(), Some(1), "{out:?}");
    let pid = server.pid();
    assert_eq!(
        out.stdout,
        format!("Stopping server on port {port} (PID: {pid})...\n")
    );
    assert_eq!(
        out.stderr,
        format!(
            "Error: server on port {port} (PID: {pid}) did not stop within 1s; use --force to kill it\n"
        )
    );
    assert!(server.try_wait().is_none());
    assert!(alive(shell) && alive(grandchild));
    assert_eq!(
        env.run(&["status", "--port", &port.to_string()]).code(),
        Some(0)
    );

    let out = env.run(&["stop", "--port", &port.to_string(), "-t", "1", "--force"]);
    assert_eq!(out.code(), Some(0), "{out:?}");
    assert!(
        out.stdout.ends_with("Server stopped (killed)\n"),
        "{}",
        out.stdout
    );
    assert!(out.stderr.contains("SIGKILL"), "{}", out.stderr);
    assert_eq!(server.wait().signal(), Some(libc::SIGKILL));
    wait_until("shell and grandchild to die", || {
        !alive(shell) && !alive(grandchild)
    });
    assert!(!env.lock_file(port).exists());
    assert_eq!(
        env.run(&["status", "--port", &port.to_string()]).code(),
        Some(3)
    );
}
