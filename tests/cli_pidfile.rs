//! `serve --pidfile PATH`: a classic pidfile as the real tools read it
//! (`start-stop-daemon --status/--stop --pidfile`), written atomically at
//! mode 0644 whatever the umask, never through a symlink, never in a
//! directory others could rewrite it in, and removed at exit only while it
//! still holds llmlb's PID.
#![cfg(unix)]

mod cli_support;
#[path = "../ffi/tests/support/mod.rs"]
mod ffi_support;
#[path = "support/servers.rs"]
mod servers;

use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use cli_support::{free_port, Env, Proc};
use ffi_support::prereq;

/// `llmlb serve --pidfile PATH` on `port`, run with umask 077 (the pidfile
/// must still come out 0644).
fn serve_cmd(env: &Env, port: u16, pidfile: &Path) -> Command {
    let mut cmd = env.cmd(&[
        "serve",
        "--port",
        &port.to_string(),
        "--host",
        "127.0.0.1",
        "--pidfile",
        pidfile.to_str().unwrap(),
    ]);
    // SAFETY: umask(2) only, between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            libc::umask(0o077);
            Ok(())
        });
    }
    cmd
}

fn serve(env: &Env, port: u16, pidfile: &Path) -> Proc {
    let mut server = env.spawn_cmd(serve_cmd(env, port, pidfile));
    server.wait_health(port);
    server
}

/// A directory `name` in the env's temp dir with `mode`.
fn dir(env: &Env, name: &str, mode: u32) -> PathBuf {
    let dir = env.tmp.path().join(name);
    std::fs::create_dir(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(mode)).unwrap();
    dir
}

/// `start-stop-daemon ARGS --pidfile PATH`; a missing tool fails in CI.
fn start_stop_daemon(args: &[&str], pidfile: &Path) -> Option<Output> {
    let out = Command::new("start-stop-daemon")
        .args(args)
        .arg("--pidfile")
        .arg(pidfile)
        .stdin(Stdio::null())
        .output();
    match out {
        Ok(out) => Some(out),
        Err(e) => {
            prereq::skip_unless_ci(
                &format!("start-stop-daemon ({e})"),
                "install the Debian package dpkg",
                "the start-stop-daemon checks",
            );
            None
        }
    }
}

/// The serve refused with exactly one `Error:` line containing every word in
/// `needles`, and left the port free (its lock released, its file removed).
fn assert_refused(env: &Env, port: u16, mut server: Proc, needles: &[&str]) {
    let status = server.wait();
    let stderr = server.stderr();
    assert_eq!(status.code(), Some(1), "{stderr}");
    let errors: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("Error: "))
        .collect();
    assert_eq!(errors.len(), 1, "{stderr}");
    for needle in needles {
        assert!(errors[0].contains(needle), "{needle:?} missing: {stderr}");
    }
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(!env.lock_file(port).exists(), "the lock file was left");
    let status = env.run(&["status", "--port", &port.to_string()]);
    assert_eq!(status.code(), Some(3), "the port is not free: {status:?}");
}

#[test]
fn start_stop_daemon_sees_serve_running_through_the_pidfile_until_stop() {
    let env = Env::new();
    let port = free_port();
    let pidfile = dir(&env, "run", 0o755).join("llmlb.pid");
    let mut server = serve(&env, port, &pidfile);

    let text = std::fs::read_to_string(&pidfile).unwrap();
    assert_eq!(text, format!("{}\n", server.pid()));
    let mode = std::fs::metadata(&pidfile).unwrap().mode() & 0o7777;
    assert_eq!(mode, 0o644, "pidfile mode {mode:o} (umask 077)");
    // No temp file left beside it.
    let names: Vec<_> = std::fs::read_dir(pidfile.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["llmlb.pid"], "{names:?}");

    let Some(running) = start_stop_daemon(&["--status"], &pidfile) else {
        return;
    };
    assert_eq!(running.status.code(), Some(0), "{running:?}");

    let stop = env.run(&["stop", "--port", &port.to_string()]);
    assert_eq!(stop.code(), Some(0), "{stop:?}");
    // Removed before the lock was released: once stop returns, no reader
    // finds llmlb's PID there.
    assert!(!pidfile.exists(), "the pidfile outlived the lock");
    let stopped = start_stop_daemon(&["--status"], &pidfile).unwrap();
    assert_eq!(stopped.status.code(), Some(3), "{stopped:?}");
    assert_eq!(server.wait().code(), Some(0), "{}", server.stderr());
}

#[test]
fn start_stop_daemon_stop_ends_serve_gracefully() {
    let env = Env::new();
    let port = free_port();
    let pidfile = dir(&env, "run", 0o755).join("llmlb.pid");
    let mut server = serve(&env, port, &pidfile);
    let Some(stop) = start_stop_daemon(&["--stop", "--signal", "TERM"], &pidfile) else {
        return;
    };
    assert_eq!(stop.status.code(), Some(0), "{stop:?}");
    let status = server.wait();
    assert_eq!(status.code(), Some(0), "{}", server.stderr());
    assert!(!pidfile.exists());
    assert!(!env.lock_file(port).exists());
}

#[test]
fn a_symlink_at_the_pidfile_path_is_refused_and_its_target_untouched() {
    let env = Env::new();
    let port = free_port();
    let run = dir(&env, "run", 0o755);
    let target = env.tmp.path().join("precious");
    std::fs::write(&target, "untouched\n").unwrap();
    let pidfile = run.join("llmlb.pid");
    std::os::unix::fs::symlink(&target, &pidfile).unwrap();

    let server = env.spawn_cmd(serve_cmd(&env, port, &pidfile));
    assert_refused(
        &env,
        port,
        server,
        &[pidfile.to_str().unwrap(), "symbolic link"],
    );
    assert_eq!(std::fs::read_to_string(&target).unwrap(), "untouched\n");
    let link = std::fs::symlink_metadata(&pidfile).unwrap();
    assert!(link.file_type().is_symlink(), "the link was replaced");
    assert_eq!(
        std::fs::read_dir(&run).unwrap().count(),
        1,
        "a temp file was left"
    );
}

#[test]
fn a_dir_others_can_write_is_refused_unless_sticky() {
    let env = Env::new();
    let port = free_port();
    let open = dir(&env, "open", 0o777);
    let pidfile = open.join("llmlb.pid");
    let server = env.spawn_cmd(serve_cmd(&env, port, &pidfile));
    assert_refused(
        &env,
        port,
        server,
        &[open.to_str().unwrap(), "sticky", "chmod go-w"],
    );
    assert_eq!(
        std::fs::read_dir(&open).unwrap().count(),
        0,
        "something was written"
    );

    // The same, sticky (as /tmp is): others cannot replace our file there.
    let sticky = dir(&env, "sticky", 0o1777);
    let pidfile = sticky.join("llmlb.pid");
    let mut server = serve(&env, port, &pidfile);
    assert_eq!(
        std::fs::read_to_string(&pidfile).unwrap(),
        format!("{}\n", server.pid())
    );
    let stop = env.run(&["stop", "--port", &port.to_string()]);
    assert_eq!(stop.code(), Some(0), "{stop:?}");
    assert_eq!(server.wait().code(), Some(0));
    assert!(!pidfile.exists());
}

#[test]
fn a_pidfile_rewritten_by_someone_else_is_left_at_exit_and_a_symlinked_ancestor_is_fine() {
    let env = Env::new();
    let port = free_port();
    let run = dir(&env, "run", 0o755);
    // As Debian's /var/run -> /run.
    let var_run = env.tmp.path().join("var-run");
    std::os::unix::fs::symlink(&run, &var_run).unwrap();
    let pidfile = var_run.join("llmlb.pid");
    let mut server = serve(&env, port, &pidfile);
    assert_eq!(
        std::fs::read_to_string(run.join("llmlb.pid")).unwrap(),
        format!("{}\n", server.pid())
    );

    // Another server's pidfile now (a different PID): not ours to remove.
    std::fs::write(&pidfile, "1\n").unwrap();
    let stop = env.run(&["stop", "--port", &port.to_string()]);
    assert_eq!(stop.code(), Some(0), "{stop:?}");
    assert_eq!(server.wait().code(), Some(0));
    assert_eq!(std::fs::read_to_string(&pidfile).unwrap(), "1\n");
}

/// Also for the C and Python launchers, which run serve's life: the
/// pidfile names the launcher.
#[test]
fn exec_mode_writes_llmlbs_own_pid() {
    for server in servers::Server::ALL {
        eprintln!("--- against {server:?}");
        exec_mode_writes_llmlbs_own_pid_for(server);
    }
}

fn exec_mode_writes_llmlbs_own_pid_for(server: servers::Server) {
    let env = Env::new();
    let port = free_port();
    let p = port.to_string();
    let pidfile = dir(&env, "run", 0o755).join("llmlb.pid");
    let mut server = env.spawn_cmd(server.cmd(
        &env,
        &[
            "--port",
            &p,
            "--pidfile",
            pidfile.to_str().unwrap(),
            "--",
            "sleep",
            "600",
        ],
    ));
    let mut group = cli_support::GroupGuard(None);
    cli_support::wait_until("the pidfile", || pidfile.exists());
    assert_eq!(
        std::fs::read_to_string(&pidfile).unwrap(),
        format!("{}\n", server.pid()),
        "the pidfile names llmlb (the lock holder stop signals), not the command"
    );
    cli_support::wait_until("the command's group in the record", || {
        let text = std::fs::read_to_string(env.lock_file(port)).unwrap_or_default();
        let rec: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
        group.0 = rec["child_pgid"].as_u64().map(|g| g as u32);
        group.0.is_some()
    });
    let stop = env.run(&["stop", "--port", &p]);
    assert_eq!(stop.code(), Some(0), "{stop:?}");
    server.wait();
    assert!(!pidfile.exists());
    drop(group);
}
