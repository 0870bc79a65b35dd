//! A PID is a number in one PID namespace: `stop`, `status` and `serve`'s
//! advice never act on a holder's number from another one, with real
//! namespaces (`unshare --pid --fork`, with and without `--mount-proc`,
//! `nsenter`). Each holder is an `llmlb serve` that is PID 1 of its
//! namespace, so a PID from the namespace names the outer `init` (or
//! nothing) out here: the very mix-up these tests rule out.
//!
//! Needs root for the namespaces: under `CI` a test that cannot get them
//! fails; elsewhere it prints SKIPPED and returns.
#![cfg(target_os = "linux")]

mod cli_support;
#[path = "support/prereq.rs"]
mod prereq;

use std::process::Command;
use std::time::Duration;

use cli_support::{alive, free_port, http_get, status_json, wait_until, Env, Proc};

/// Whether `unshare` can make a PID namespace here (root, or user
/// namespaces allowed); else [`prereq::skip_unless_ci`] and `false`.
fn namespaces_available() -> bool {
    let ok = Command::new("unshare")
        .args(["--pid", "--fork", "--mount-proc", "true"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        prereq::skip_unless_ci(
            "PID namespaces (`unshare --pid --fork --mount-proc true` failed)",
            "run as root with util-linux's unshare",
            "the PID namespace checks",
        );
    }
    ok
}

/// `llmlb serve` in a new PID namespace (same network, same lock dir), with
/// its own `/proc` when `own_proc`: as its PID 1, or under a shell as PID 1
/// (`under_shell`) that outlives it, so that whatever else runs in the
/// namespace is not killed with the server. `--kill-child`: the namespace
/// dies with the `unshare` process the guard kills.
fn serve_in_namespace(env: &Env, port: u16, own_proc: bool, under_shell: bool) -> (Proc, u32) {
    let cmd = env.cmd(&[]);
    let mut args = vec!["--pid", "--fork", "--kill-child"];
    if own_proc {
        args.push("--mount-proc");
    }
    let cmd = {
        let mut c = Command::new("unshare");
        c.args(&args);
        if under_shell {
            c.args(["sh", "-c", "\"$0\" \"$@\"; exec sleep 600"]);
        }
        c.arg(env!("CARGO_BIN_EXE_llmlb")).args([
            "serve",
            "--port",
            &port.to_string(),
            "--host",
            "127.0.0.1",
        ]);
        for (k, v) in cmd.get_envs() {
            match v {
                Some(v) => c.env(k, v),
                None => c.env_remove(k),
            };
        }
        c.current_dir(env.tmp.path());
        c
    };
    let mut proc = env.spawn_cmd(cmd);
    proc.wait_health(port);
    // The holder, as numbered out here: unshare's only child (or its
    // shell's).
    let mut outer = proc.pid();
    for _ in 0..if under_shell { 2 } else { 1 } {
        let parent = outer;
        wait_until("the namespaced server's outer PID", || {
            outer = only_child(parent).unwrap_or(0);
            outer != 0
        });
    }
    (proc, outer)
}

fn only_child(pid: u32) -> Option<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

fn recorded_pid(env: &Env, port: u16) -> u64 {
    let (_, status) = status_json(env, Some(port));
    status[0]["pid"].as_u64().expect("a recorded pid")
}

/// The holder's record (pid 1, its namespace) seen from outside: `stop`
/// refuses at once, signals nothing, and says where to stop it; `status`
/// and a second `serve` say so too.
fn refused_from_outside(own_proc: bool) {
    if !namespaces_available() {
        return;
    }
    let env = Env::new();
    let port = free_port();
    let (_holder, outer) = serve_in_namespace(&env, port, own_proc, false);
    assert_eq!(recorded_pid(&env, port), 1, "PID 1 of its namespace");

    let stop = env.run(&["stop", "--port", &port.to_string()]);
    assert_eq!(stop.code(), Some(1), "{stop:?}");
    assert!(
        stop.stderr.contains(
            "runs in another PID namespace (a container); nothing was signalled: stop it there"
        ),
        "{stop:?}"
    );
    assert!(!stop.stdout.contains("Stopping"), "{stop:?}");
    assert!(alive(outer), "the holder must not have been signalled");
    assert_eq!(
        http_get(port, "/health").map(|(code, _)| code),
        Some(200),
        "still serving"
    );

    let (code, status) = status_json(&env, Some(port));
    assert_eq!(code, Some(0));
    assert_eq!(status[0]["holder"], "other_pid_namespace", "{status}");
    // Its listener is found as the holder's through the namespace's
    // numbering (NSpid), though its recorded PID 1 is not ours.
    assert_eq!(
        status[0]["listener"],
        serde_json::json!({"pid": outer, "name": "llmlb", "holder": true}),
        "{status}"
    );
    let table = env.run(&["status", "--port", &port.to_string()]);
    // serve records its serving state; the namespace follows it.
    assert!(
        table.stdout.contains("Ready for ") && table.stdout.contains("(in another PID namespace)"),
        "{table:?}"
    );

    let second = env.run(&["serve", "--port", &port.to_string(), "--host", "127.0.0.1"]);
    assert_eq!(second.code(), Some(1), "{second:?}");
    assert!(
        second
            .stderr
            .contains("It runs in another PID namespace (a container): stop it there"),
        "{second:?}"
    );
    assert!(!second.stderr.contains("kill -TERM"), "{second:?}");
}

#[test]
fn stop_refuses_a_holder_in_a_pid_namespace_without_its_own_proc() {
    refused_from_outside(false);
}

#[test]
fn stop_refuses_a_holder_in_a_container_with_its_own_proc() {
    refused_from_outside(true);
}

/// `nsenter` into the holder's PID namespace, with (`mount`) or without its
/// mount namespace (and so its `/proc`), running `llmlb ARGS`.
fn in_namespace_of(env: &Env, outer: u32, mount: bool, args: &[&str]) -> cli_support::Output {
    let mut c = Command::new("nsenter");
    c.arg(format!("--target={outer}")).arg("--pid");
    if mount {
        c.arg("--mount");
    }
    c.arg(env!("CARGO_BIN_EXE_llmlb")).args(args);
    c.env("LLMLB_LOCK_DIR", &env.locks)
        .env_remove("RUST_LOG")
        .current_dir(env.tmp.path());
    env.spawn_cmd(c).finish()
}

/// Inside the namespace, with its own `/proc`, the holder is an ordinary
/// local process: `stop` verifies and stops it.
#[test]
fn stop_inside_the_namespace_stops_the_holder() {
    if !namespaces_available() {
        return;
    }
    let env = Env::new();
    let port = free_port();
    let (_holder, outer) = serve_in_namespace(&env, port, true, true);
    let stop = in_namespace_of(&env, outer, true, &["stop", "--port", &port.to_string()]);
    assert_eq!(stop.code(), Some(0), "{stop:?}");
    assert!(stop.stdout.contains("Server stopped"), "{stop:?}");
    wait_until("the server to exit", || !alive(outer));
    assert!(!env.lock_file(port).exists());
}

/// Inside the namespace but with the outer `/proc` (no `--mount-proc`):
/// `/proc/1` there is the outer init, not the holder. The pidfd's fdinfo
/// gives it away; nothing is signalled.
#[test]
fn stop_refuses_when_proc_belongs_to_another_namespace() {
    if !namespaces_available() {
        return;
    }
    let env = Env::new();
    let port = free_port();
    let (_holder, outer) = serve_in_namespace(&env, port, false, false);
    let stop = in_namespace_of(&env, outer, false, &["stop", "--port", &port.to_string()]);
    assert_eq!(stop.code(), Some(1), "{stop:?}");
    assert!(
        stop.stderr
            .contains("this /proc belongs to another PID namespace"),
        "{stop:?}"
    );
    assert!(!stop.stdout.contains("Stopping"), "{stop:?}");
    assert!(alive(outer));
    assert_eq!(http_get(port, "/health").map(|(c, _)| c), Some(200));
}

/// A lock file naming a thread id (with that thread's own start time, so the
/// numbers alone look like a live holder) is refused: `kill` on a thread id
/// would signal the whole process it belongs to.
#[test]
fn stop_refuses_a_thread_id() {
    let env = Env::new();
    let port = free_port();
    std::fs::create_dir_all(&env.locks).unwrap();
    std::fs::set_permissions(
        &env.locks,
        std::os::unix::fs::PermissionsExt::from_mode(0o700),
    )
    .unwrap();
    // A process with a second thread; prints the thread's id.
    let ids = env.tmp.path().join("tid");
    let mut owner = env.spawn_cmd({
        let mut c = Command::new("python3");
        c.args([
            "-c",
            "import sys, threading, time\n\
             t = threading.Thread(target=time.sleep, args=(600,), daemon=True)\n\
             t.start()\n\
             open(sys.argv[1], 'w').write(f'{t.native_id}\\n')\n\
             time.sleep(600)\n",
        ])
        .arg(&ids);
        c
    });
    let tid: u32 = cli_support::read_when_written(&ids).parse().unwrap();
    assert_ne!(tid, owner.pid());
    let ticks = cli_support::start_ticks(tid);
    let boot_id = cli_support::boot_id();
    let host = cli_support::hostname();
    let file = env.lock_file(port);
    std::fs::write(
        &file,
        format!(
            r#"{{"pid":{tid},"started_at":"2026-01-01T00:00:00Z","port":{port},"host":"{}","identity":{{"boot_id":"{}","start_ticks":{ticks}}}}}"#,
            host, boot_id
        ),
    )
    .unwrap();
    // Held, as a holder would hold it: util-linux flock(1).
    let mut holder = env.spawn_cmd({
        let mut c = Command::new("flock");
        c.arg("--exclusive").arg(&file).args(["sleep", "600"]);
        c
    });
    wait_until("flock to hold the file", || {
        status_json(&env, Some(port)).1[0]["state"] == "running"
    });
    let stop = env.run(&[
        "stop",
        "--port",
        &port.to_string(),
        "--force",
        "--timeout",
        "1",
    ]);
    assert_eq!(stop.code(), Some(1), "{stop:?}");
    assert!(
        stop.stderr.contains(&format!(
            "{tid} is a thread of another process, not a process"
        )),
        "{stop:?}"
    );
    assert!(!stop.stdout.contains("Stopping"), "{stop:?}");
    std::thread::sleep(Duration::from_millis(50));
    assert!(
        owner.try_wait().is_none(),
        "the thread's process was signalled"
    );
    holder.kill();
    owner.kill();
}
