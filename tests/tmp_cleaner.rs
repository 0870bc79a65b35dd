//! A tmp cleaner never opens a gap (issue 25 §6): Fedora, RHEL and Arch
//! clean `/tmp` by age (`q /tmp 1777 root root 10d`), and the default lock
//! dir of every non-root user is under `/tmp`. Here the real
//! `systemd-tmpfiles --clean` runs a rule `e <parent> - - - 1s` on the lock
//! dir's parent, with everything in it aged into the past, while a port is
//! held (HTTP mode; exec mode with a passed socket): the lock file, the
//! control socket and the lock dir all stay (a holder share-locks its lock
//! dir, which systemd-tmpfiles honours), and a `serve --replace` afterwards
//! hands over. A sibling dir nobody holds is cleaned by the same run (the rule
//! bites), and so is the lock dir once the port is released.
#![cfg(target_os = "linux")]

mod cli_support;
#[path = "support/prereq.rs"]
mod prereq;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use cli_support::*;
use llmlb::lock::LockInfo;

/// Whether `systemd-tmpfiles` can be run; says so (or fails under CI) if not.
fn have_tmpfiles() -> bool {
    let ok = Command::new("systemd-tmpfiles")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        prereq::skip_unless_ci(
            "`systemd-tmpfiles` is not installed",
            "install systemd (Debian package `systemd`)",
            "the tmp cleaner scenario",
        );
    }
    ok
}

/// An [`Env`] whose lock dir is `<tmp>/clean/locks`: the cleaner's rule is
/// on `<tmp>/clean`, away from the processes' output files in `<tmp>`.
fn env_under_cleaned_parent() -> (Env, PathBuf) {
    let mut env = Env::new();
    let parent = env.tmp.path().join("clean");
    std::fs::create_dir(&parent).unwrap();
    env.locks = parent.join("locks");
    (env, parent)
}

fn ctl_path(env: &Env, port: u16) -> PathBuf {
    env.locks.join(format!("serve_{port}.ctl"))
}

fn record(env: &Env, port: u16) -> Option<LockInfo> {
    LockInfo::parse(&std::fs::read(env.lock_file(port)).ok()?)
}

/// Sets the times of everything under `parent` (not following symlinks)
/// two days into the past, as if the server had been up that long without
/// anything touching its files.
fn age_everything(parent: &Path) {
    let out = Command::new("find")
        .arg(parent)
        .args([
            "-mindepth",
            "1",
            "-exec",
            "touch",
            "-h",
            "-d",
            "2 days ago",
            "{}",
            "+",
        ])
        .output()
        .expect("run find/touch");
    assert!(out.status.success(), "touch -d: {out:?}");
}

/// `systemd-tmpfiles --clean` with the one rule `e <parent> - - - 1s`.
fn clean(env: &Env, parent: &Path) {
    // Birth times cannot be set into the past, and systemd-tmpfiles judges by
    // them too: let everything be older than the rule's age.
    std::thread::sleep(Duration::from_millis(1500));
    let conf = env.tmp.path().join("llmlb-test.conf");
    std::fs::write(&conf, format!("e {} - - - 1s\n", parent.display())).unwrap();
    let out = Command::new("systemd-tmpfiles")
        .arg("--clean")
        .arg(&conf)
        .output()
        .expect("run systemd-tmpfiles");
    assert!(
        out.status.success(),
        "systemd-tmpfiles --clean {}: {}{}",
        conf.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Ages `parent`'s contents (the held lock dir, and an unheld sibling dir
/// with a file), cleans, and checks that the holder's files all stay while
/// the sibling goes.
fn clean_while_held(env: &Env, parent: &Path, port: u16, holder: &mut Proc) {
    let sibling = parent.join("nobody-holds-this");
    std::fs::create_dir(&sibling).unwrap();
    std::fs::write(sibling.join("old"), "x").unwrap();
    assert!(ctl_path(env, port).exists(), "no control socket to keep");
    age_everything(parent);
    clean(env, parent);
    assert!(
        !sibling.exists(),
        "the cleaner did not clean an aged dir nobody holds: the rule did not bite"
    );
    let said = holder.stderr();
    assert!(env.locks.is_dir(), "the held lock dir was removed; {said}");
    assert!(
        env.lock_file(port).exists(),
        "the held lock file was removed; {said}"
    );
    assert!(
        ctl_path(env, port).exists(),
        "the control socket was removed; {said}"
    );
    assert!(holder.try_wait().is_none(), "the holder exited; {said}");
}

/// After the clean, `serve --replace` (`args`) hands over: the new server
/// says it took over from the old one, the record names it, and the old one
/// says it handed over and exits 0. Returns the new server.
fn replace_hands_over(env: &Env, port: u16, old: &mut Proc, args: &[&str]) -> Proc {
    let mut new = env.spawn(args);
    let new_pid = new.pid();
    let old_pid = old.pid();
    let status = old.wait();
    let (old_said, new_said) = (old.stderr(), new.stderr());
    assert_eq!(status.code(), Some(0), "the old server: {old_said}");
    assert!(
        old_said.contains(&format!("handed port {port} over to PID {new_pid}")),
        "the old server did not hand over: {old_said}\nnew: {new_said}"
    );
    wait_until("the new server's record", || {
        record(env, port).is_some_and(|r| r.pid == new_pid && r.draining.is_empty())
    });
    let new_said = new.stderr();
    assert!(
        new_said.contains(&format!("took over port {port} from PID {old_pid}")),
        "{new_said}"
    );
    assert!(!new_said.contains("offers no handover"), "{new_said}");
    assert!(
        new.try_wait().is_none(),
        "the new server exited: {new_said}"
    );
    new
}

/// Stops `server`, then checks the cleaner removes the lock dir once aged:
/// the shared lock on it went with the release.
fn stop_then_dir_is_cleanable(env: &Env, parent: &Path, port: u16, server: &mut Proc) {
    let out = env.run(&["stop", "-p", &port.to_string()]);
    assert_eq!(out.code(), Some(0), "{out:?}");
    server.wait();
    age_everything(parent);
    clean(env, parent);
    assert!(
        !env.locks.exists(),
        "the released lock dir was kept: its shared lock outlived the release"
    );
}

#[test]
fn http_mode_keeps_its_files_through_a_clean_and_hands_over_after() {
    if !have_tmpfiles() {
        return;
    }
    let (env, parent) = env_under_cleaned_parent();
    let port = free_port();
    let p = port.to_string();
    let mut old = env.serve(port);
    wait_until("the control socket", || ctl_path(&env, port).exists());
    clean_while_held(&env, &parent, port, &mut old);
    let mut new = replace_hands_over(
        &env,
        port,
        &mut old,
        &["serve", "--replace", "-p", &p, "--host", "127.0.0.1"],
    );
    assert!(matches!(http_get(port, "/health"), Some((200, _))));
    stop_then_dir_is_cleanable(&env, &parent, port, &mut new);
}

#[test]
fn exec_mode_keeps_its_files_through_a_clean_and_hands_over_after() {
    if !have_tmpfiles() {
        return;
    }
    let (env, parent) = env_under_cleaned_parent();
    let port = free_port();
    let p = port.to_string();
    let exec = |replace: bool| {
        let mut args = vec!["serve"];
        if replace {
            args.push("--replace");
        }
        args.extend(["--pass-socket", "-p", &p, "--host", "127.0.0.1"]);
        args.extend(["--", "sleep", "600"]);
        args.into_iter().map(str::to_owned).collect::<Vec<_>>()
    };
    let old_args = exec(false);
    let mut old = env.spawn(&old_args.iter().map(String::as_str).collect::<Vec<_>>());
    let old_pid = old.pid();
    wait_until("the command under the lock", || {
        record(&env, port).is_some_and(|r| r.pid == old_pid && r.child_pgid.is_some())
    });
    let _old_group = GroupGuard(record(&env, port).and_then(|r| r.child_pgid));
    wait_until("the control socket", || ctl_path(&env, port).exists());
    clean_while_held(&env, &parent, port, &mut old);
    let new_args = exec(true);
    let mut new = replace_hands_over(
        &env,
        port,
        &mut old,
        &new_args.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    let _new_group = GroupGuard(record(&env, port).and_then(|r| r.child_pgid));
    stop_then_dir_is_cleanable(&env, &parent, port, &mut new);
}
