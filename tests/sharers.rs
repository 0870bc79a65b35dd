//! When other processes share a holder's lock, or pass by it, with real
//! processes: a holder that released while an inheritor keeps the lock is
//! never signalled for it (`released_by`); a lock file removed under an
//! exec-mode command ends the command instead of leaving it serving beside
//! a fresh lock; and a `stop` (or anything) locking a dead holder's file for
//! a moment never makes a starting server fail.
#![cfg(unix)]

mod cli_support;

use std::process::Command;

use cli_support::{
    alive, free_port, hostname, read_when_written, signal, status_json, wait_until, Env,
    GroupGuard, Proc,
};

/// The identity JSON the library records for a live `pid` on Linux; none
/// elsewhere (then the record is unverifiable, which `stop` refuses too).
fn identity_json(pid: u32) -> String {
    if !cfg!(target_os = "linux") {
        return String::new();
    }
    format!(
        r#","identity":{{"boot_id":"{}","start_ticks":{}}}"#,
        cli_support::boot_id(),
        cli_support::start_ticks(pid)
    )
}

/// A private lock dir with `port`'s file holding `json`, held exclusively by
/// util-linux `flock` (as any holder's kernel lock), for as long as the
/// returned process lives.
fn held_file(env: &Env, port: u16, json: &str) -> Proc {
    std::fs::create_dir_all(&env.locks).unwrap();
    std::fs::set_permissions(
        &env.locks,
        std::os::unix::fs::PermissionsExt::from_mode(0o700),
    )
    .unwrap();
    let file = env.lock_file(port);
    std::fs::write(&file, json).unwrap();
    let mut c = Command::new("flock");
    c.arg("--exclusive").arg(&file).args(["sleep", "600"]);
    let holder = env.spawn_cmd(c);
    wait_until("flock to hold the lock file", || {
        status_json(env, Some(port)).1[0]["state"] == "running"
    });
    holder
}

/// A live process that released the lock (it lives on: a supervisor, a
/// REPL) while an inheritor holds it: `stop` signals nothing and says how
/// to find the holder; `status` and `serve` say the same.
#[test]
fn stop_never_signals_a_holder_that_released() {
    let env = Env::new();
    let port = free_port();
    let p = port.to_string();
    let mut releaser = env.spawn_cmd({
        let mut c = Command::new("sleep");
        c.arg("600");
        c
    });
    let pid = releaser.pid();
    let _inheritor = held_file(
        &env,
        port,
        &format!(
            r#"{{"pid":{pid},"started_at":"2026-01-01T00:00:00Z","port":{port},"host":"{}"{},"released_by":{pid}}}"#,
            hostname(),
            identity_json(pid)
        ),
    );
    for args in [
        vec!["stop", "--port", &p],
        vec!["stop", "--port", &p, "--force", "--timeout", "1"],
    ] {
        let stop = env.run(&args);
        assert_eq!(stop.code(), Some(1), "{stop:?}");
        assert!(
            stop.stderr.contains(&format!(
                "lock for port {port} is held by a process that inherited it from PID {pid}, which has released it; nothing was signalled: find the holder with `fuser "
            )),
            "{stop:?}"
        );
        assert!(!stop.stdout.contains("Stopping"), "{stop:?}");
        assert!(releaser.try_wait().is_none(), "the releaser was signalled");
    }
    let (_, status) = status_json(&env, Some(port));
    assert_eq!(status[0]["holder"], "inherited", "{status}");
    let second = env.run(&["serve", "--port", &p, "--host", "127.0.0.1"]);
    assert_eq!(second.code(), Some(1), "{second:?}");
    assert!(
        second.stderr.contains(&format!(
            "PID {pid} released it, and a process that inherited the lock holds it: find it with `fuser "
        )),
        "{second:?}"
    );
    assert!(!second.stderr.contains("kill -TERM"), "{second:?}");
    releaser.kill();
}

/// Exec mode: a descendant that left the command's group keeps the lock
/// after llmlb released and exited. The record then names llmlb as having
/// released it, and `stop` refuses to act on the number.
#[test]
fn after_an_exec_mode_release_the_record_names_no_holder() {
    let env = Env::new();
    let port = free_port();
    let p = port.to_string();
    let gc_file = env.tmp.path().join("gc.pid");
    let script = format!(
        "setsid sh -c 'echo $$ > {gc}; exec sleep 600' & while [ ! -s {gc} ]; do sleep 0.01; done",
        gc = gc_file.display()
    );
    let mut server = env.spawn(&["serve", "-p", &p, "--", "sh", "-c", &script]);
    let server_pid = server.pid();
    let gc: u32 = read_when_written(&gc_file).parse().unwrap();
    let _gc = GroupGuard(Some(gc));
    assert_eq!(server.wait().code(), Some(0), "{}", server.stderr());
    assert!(alive(gc));
    let (code, status) = status_json(&env, Some(port));
    assert_eq!(code, Some(0), "{status}");
    assert_eq!(status[0]["holder"], "inherited", "{status}");
    assert_eq!(status[0]["pid"], server_pid, "{status}");
    let stop = env.run(&["stop", "--port", &p]);
    assert_eq!(stop.code(), Some(1), "{stop:?}");
    assert!(stop.stderr.contains("which has released it"), "{stop:?}");
    assert!(alive(gc), "nothing is signalled");
    signal(gc, libc::SIGKILL);
    wait_until("the lock to go stale", || {
        env.run(&["status", "--port", &p]).code() == Some(1)
    });
}

/// The lock file removed by hand under exec mode: a new file would not
/// cover the command's tree (it holds the old, nameless one), so llmlb ends
/// the command, grandchildren included, and exits; it never goes on
/// serving with the tree detached from the lock, where a `kill -9` of llmlb
/// (as in the reproduction) would leave the tree serving a free port.
#[test]
fn a_lock_file_removed_under_exec_mode_ends_the_command() {
    let env = Env::new();
    let port = free_port();
    let p = port.to_string();
    let gc_file = env.tmp.path().join("gc.pid");
    let sh_file = env.tmp.path().join("sh.pid");
    let script = format!(
        "sleep 600 & echo $! > {gc}; echo $$ > {sh}; wait",
        gc = gc_file.display(),
        sh = sh_file.display()
    );
    let mut server = env.spawn(&["serve", "-p", &p, "--", "sh", "-c", &script]);
    let sh: u32 = read_when_written(&sh_file).parse().unwrap();
    let gc: u32 = read_when_written(&gc_file).parse().unwrap();
    let _group = GroupGuard(Some(sh));
    std::fs::remove_file(env.lock_file(port)).unwrap();
    let status = server.wait();
    assert_ne!(status.code(), Some(0), "{}", server.stderr());
    assert!(
        server
            .stderr()
            .contains("removed or replaced by hand while the command's processes share the lock"),
        "{}",
        server.stderr()
    );
    assert!(
        !alive(gc) && !alive(sh),
        "the command's tree outlived llmlb"
    );
    let again = env.run(&["status", "--port", &p]);
    assert_eq!(again.code(), Some(3), "{again:?}");
}

/// What `stop` does to a stale file, done by util-linux `flock` for a
/// while: an exclusive lock on a file whose recorded holder is dead. A
/// `serve` starting meanwhile waits it out and takes the port; it never
/// fails with "already running" naming the dead holder.
#[test]
fn a_passing_lock_on_a_dead_holders_file_never_fails_a_start() {
    let env = Env::new();
    let port = free_port();
    let p = port.to_string();
    // A holder that existed and is gone: a reaped child's PID and identity.
    let mut dead = Command::new("true").spawn().unwrap();
    let pid = dead.id();
    let identity = if cfg!(target_os = "linux") {
        format!(
            r#","identity":{{"boot_id":"{}","start_ticks":1}}"#,
            cli_support::boot_id()
        )
    } else {
        String::new()
    };
    dead.wait().unwrap();
    std::fs::create_dir_all(&env.locks).unwrap();
    std::fs::set_permissions(
        &env.locks,
        std::os::unix::fs::PermissionsExt::from_mode(0o700),
    )
    .unwrap();
    let file = env.lock_file(port);
    std::fs::write(
        &file,
        format!(
            r#"{{"pid":{pid},"started_at":"2026-01-01T00:00:00Z","port":{port},"host":"{}"{identity}}}"#,
            hostname()
        ),
    )
    .unwrap();
    // Holds the dead holder's file exclusively, as `stop` does for a moment
    // while it judges and removes it, until told to let go.
    let ready = env.tmp.path().join("flocked");
    let go = env.tmp.path().join("go");
    let mut passing = env.spawn_cmd({
        let mut c = Command::new("flock");
        c.arg("--exclusive")
            .arg(&file)
            .args([
                "sh",
                "-c",
                "echo x > \"$0\"; while [ ! -e \"$1\" ]; do sleep 0.002; done",
            ])
            .arg(&ready)
            .arg(&go);
        c
    });
    read_when_written(&ready);
    let mut server = env.spawn(&["serve", "--port", &p, "--host", "127.0.0.1"]);
    // Staging, not a timing assertion: let the server meet the lock first.
    std::thread::sleep(std::time::Duration::from_millis(20));
    std::fs::write(&go, "").unwrap();
    server.wait_health(port);
    assert!(
        !server.stderr().contains("already running"),
        "{}",
        server.stderr()
    );
    passing.wait();
}
