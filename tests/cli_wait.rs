//! `llmlb serve --wait SECS` end to end, with real processes: taking turns,
//! giving up with the holder's details, and Ctrl-C while waiting.
#![cfg(target_os = "linux")]

mod cli_support;

use cli_support::*;
use llmlb::lock::{acquire_or_reclaim, LockDir};

/// The waiter's one "who holds it" line has appeared in its stderr.
fn wait_for_waiting_line(proc: &Proc, port: u16) -> String {
    let mut line = String::new();
    wait_until("the waiting line", || {
        line = proc
            .stderr()
            .lines()
            .find(|l| l.starts_with(&format!("Port {port} is held by")))
            .unwrap_or_default()
            .to_owned();
        !line.is_empty()
    });
    line
}

/// Eight `serve --wait` processes in exec mode run a command that marks a
/// critical section with `mkdir` (atomic: a second one inside fails). They
/// must all run, one at a time.
#[test]
fn eight_waiters_take_turns_through_a_port_with_zero_overlaps() {
    let env = Env::new();
    let port = free_port().to_string();
    let inside = env.tmp.path().join("inside");
    let log = env.tmp.path().join("log");
    let script = format!(
        "mkdir {inside} 2>/dev/null || echo OVERLAP >> {log}; echo ran >> {log}; \
         sleep 0.05; rmdir {inside} 2>/dev/null",
        inside = inside.display(),
        log = log.display()
    );
    let mut procs: Vec<Proc> = (0..8)
        .map(|_| {
            env.spawn(&[
                "serve", "--port", &port, "--wait", "120", "--", "sh", "-c", &script,
            ])
        })
        .collect();
    for p in &mut procs {
        let status = p.wait();
        assert_eq!(status.code(), Some(0), "{}", p.stderr());
    }
    let log = std::fs::read_to_string(&log).unwrap();
    assert_eq!(log.lines().filter(|l| *l == "ran").count(), 8, "{log}");
    assert!(!log.contains("OVERLAP"), "two holders at once:\n{log}");
    // Nothing is left behind: every holder removed its file.
    assert!(!env.lock_file(port.parse().unwrap()).exists());
    // At least the processes that found the port taken said so, once each.
    for p in &procs {
        let said = p.stderr().matches("is held by PID").count();
        assert!(said <= 1, "{}", p.stderr());
    }
}

#[test]
fn wait_gives_up_with_the_holders_details_and_exit_1() {
    let env = Env::new();
    let port = free_port();
    let dir = LockDir::create(&env.locks).unwrap();
    let held = acquire_or_reclaim(&dir, port).unwrap();
    let me = std::process::id();

    let out = env.run(&[
        "serve",
        "--port",
        &port.to_string(),
        "--wait",
        "0.2",
        "--",
        "true",
    ]);
    assert_eq!(out.code(), Some(1), "{out:?}");
    let waiting: Vec<&str> = out
        .stderr
        .lines()
        .filter(|l| l.contains("waiting"))
        .collect();
    assert_eq!(waiting.len(), 1, "{}", out.stderr);
    assert!(
        waiting[0].starts_with(&format!("Port {port} is held by PID {me} (started: "))
            && waiting[0]
                .ends_with("; waiting up to 0.2s for it to be released (Ctrl-C to give up)"),
        "{}",
        waiting[0]
    );
    assert!(
        out.stderr.contains(&format!(
            "Error: Server already running on port {port} (PID: {me}, started: "
        )),
        "{}",
        out.stderr
    );
    // --wait 0 (the default) is today's behaviour: no waiting line.
    let now = env.run(&["serve", "--port", &port.to_string(), "--", "true"]);
    assert_eq!(now.code(), Some(1), "{now:?}");
    assert!(!now.stderr.contains("waiting"), "{}", now.stderr);
    assert_eq!(held.info().pid, me, "our lock is untouched");
    held.release().unwrap();
}

#[test]
fn ctrl_c_while_waiting_exits_130_and_leaves_nothing_behind() {
    let env = Env::new();
    let port = free_port();
    let dir = LockDir::create(&env.locks).unwrap();
    let held = acquire_or_reclaim(&dir, port).unwrap();
    let before = std::fs::read(env.lock_file(port)).unwrap();

    let marker = env.tmp.path().join("ran");
    let mut waiter = env.spawn(&[
        "serve",
        "--port",
        &port.to_string(),
        "--wait",
        "600",
        "--",
        "touch",
        marker.to_str().unwrap(),
    ]);
    let line = wait_for_waiting_line(&waiter, port);
    assert!(
        line.contains(&format!("PID {}", std::process::id())),
        "{line}"
    );
    signal(waiter.pid(), libc::SIGINT);
    let status = waiter.wait();
    assert_eq!(status.code(), Some(130), "{}", waiter.stderr());
    assert!(
        waiter.stderr().contains(&format!(
            "Interrupted (SIGINT) while waiting for port {port}; nothing was taken"
        )),
        "{}",
        waiter.stderr()
    );
    assert!(!marker.exists(), "the command must not have run");
    // Our lock and file are exactly as they were, and nothing else exists.
    assert_eq!(std::fs::read(env.lock_file(port)).unwrap(), before);
    held.release().unwrap();
    let left: Vec<_> = std::fs::read_dir(&env.locks).unwrap().collect();
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn a_waiter_takes_over_from_a_holder_that_dies() {
    let env = Env::new();
    let port = free_port();
    // The holder: `serve` running `sleep` in exec mode; SIGKILL to its whole
    // process group crashes it without a release.
    let mut holder = env.spawn(&["serve", "--port", &port.to_string(), "--", "sleep", "600"]);
    wait_until("the holder's lock with its command's group", || {
        LockDir::create(&env.locks)
            .and_then(|d| d.probe(port))
            .is_ok_and(
                |s| matches!(s, llmlb::lock::LockState::Held(Some(i)) if i.child_pgid.is_some()),
            )
    });
    let marker = env.tmp.path().join("ran");
    let mut waiter = env.spawn(&[
        "serve",
        "--port",
        &port.to_string(),
        "--wait",
        "600",
        "--",
        "touch",
        marker.to_str().unwrap(),
    ]);
    wait_for_waiting_line(&waiter, port);
    // The command leads its own process group (recorded as child_pgid) and
    // holds the lock's descriptor too: kill both, never our own group.
    let child_pgid = std::fs::read_to_string(env.lock_file(port))
        .ok()
        .and_then(|s| serde_json::from_str::<serde_json::Value>(&s).ok())
        .and_then(|v| v["child_pgid"].as_u64())
        .expect("exec mode records the command's process group");
    let own_group = pgid_of(std::process::id()).unwrap();
    assert_ne!(child_pgid as u32, own_group);
    signal(holder.pid(), libc::SIGKILL);
    // SAFETY: kill(2) to the process group of the command we started.
    assert_eq!(
        unsafe { libc::kill(-(child_pgid as i32), libc::SIGKILL) },
        0
    );
    holder.wait();
    let status = waiter.wait();
    assert_eq!(status.code(), Some(0), "{}", waiter.stderr());
    assert!(marker.exists());
    assert!(
        waiter.stderr().contains("Stale lock file detected"),
        "{}",
        waiter.stderr()
    );
}

#[test]
fn bad_wait_values_are_usage_errors() {
    let env = Env::new();
    for bad in ["abc", "-1", "nan", "inf", ""] {
        let out = env.run(&[
            "serve",
            "--port",
            "8000",
            &format!("--wait={bad}"),
            "--",
            "true",
        ]);
        assert_eq!(out.code(), Some(2), "{bad}: {out:?}");
        assert!(out.stderr.contains("--wait"), "{bad}: {}", out.stderr);
        assert!(!out.stderr.contains("panicked"), "{}", out.stderr);
    }
    assert!(!env.locks.exists(), "a usage error creates nothing");
}
