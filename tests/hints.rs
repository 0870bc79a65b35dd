//! Hints are commands people paste, and text from a lock file reaches a
//! terminal (issue 17 §6): every printed command is run through a real `sh -c`
//! exactly as printed, for a lock dir whose name holds a space, a quote and a
//! `$`; a dir others share gets a private subdirectory, never `chmod`; and a
//! host name holding a newline and escape sequences is shown escaped.
#![cfg(unix)]

mod cli_support;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use cli_support::{free_port, Env, Output, Proc};
use llmlb::lock::{acquire_or_reclaim, LockDir};

/// A lock dir name that breaks every unquoted hint: a space, a single quote
/// and a `$` (which a double-quoted hint would expand).
const AWKWARD: &str = "it's a $dir";

/// Runs `hint` as printed through `sh -c`, with `llmlb` on `PATH` (the
/// binary under test) and without `LLMLB_LOCK_DIR`, then `then` in the same
/// shell.
fn paste(env: &Env, hint: &str, then: &str) -> Output {
    let bin_dir = Path::new(env!("CARGO_BIN_EXE_llmlb")).parent().unwrap();
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut cmd = Command::new("sh");
    cmd.args(["-c", &format!("{hint}{then}")])
        .env("PATH", path)
        .env_remove("LLMLB_LOCK_DIR")
        .env_remove("LLMLB_PORT")
        .current_dir("/")
        .stdin(Stdio::null());
    env.spawn_cmd(cmd).finish()
}

/// `llmlb ARGS` of `env` with the lock dir given only by `--lock-dir DIR`.
fn with_flag(env: &Env, dir: &Path, args: &[&str]) -> Proc {
    let mut cmd = env.cmd(args);
    cmd.arg("--lock-dir").arg(dir).env_remove("LLMLB_LOCK_DIR");
    env.spawn_cmd(cmd)
}

/// The text after `marker` on the line that has it.
fn after<'a>(text: &'a str, marker: &str) -> &'a str {
    text.lines()
        .find_map(|l| l.split_once(marker).map(|(_, rest)| rest))
        .unwrap_or_else(|| panic!("no {marker:?} in:\n{text}"))
}

/// The first `` `command` `` in `text` that starts with `start`.
fn backticked<'a>(text: &'a str, start: &str) -> &'a str {
    text.split('`')
        .skip(1)
        .step_by(2)
        .find(|cmd| cmd.starts_with(start))
        .unwrap_or_else(|| panic!("no `{start}…` in:\n{text}"))
}

#[test]
fn stop_hint_for_a_lock_dir_with_a_quote_and_a_dollar_works_when_pasted() {
    let env = Env::new();
    let dir = env.tmp.path().join(AWKWARD);
    let port = free_port();
    let p = port.to_string();
    let mut server = with_flag(&env, &dir, &["serve", "-p", &p, "-H", "127.0.0.1"]);
    server.wait_health(port);

    let second = with_flag(&env, &dir, &["serve", "-p", &p]).finish();
    assert_eq!(second.code(), Some(1), "{second:?}");
    let hint = after(&second.stderr, "To stop: ");
    assert!(hint.starts_with("llmlb stop --port "), "{hint}");

    let pasted = paste(&env, hint, "");
    assert_eq!(pasted.code(), Some(0), "`{hint}` as pasted: {pasted:?}");
    assert!(pasted.stdout.contains("Server stopped"), "{pasted:?}");
    assert_eq!(server.wait().code(), Some(0));
    assert!(!dir.join(format!("serve_{port}.lock")).exists());
}

/// The hint for an inheritor names `fuser FILE` with the file quoted: run
/// through `sh` (with `printf` standing in for `fuser`, which not every
/// machine has) it names exactly the lock file.
#[test]
fn fuser_hint_names_the_lock_file_when_pasted() {
    let env = Env::new();
    let dir = env.tmp.path().join(AWKWARD);
    let port = free_port();
    let locks = LockDir::create(&dir).unwrap();
    let guard = acquire_or_reclaim(&locks, port).unwrap();
    // As a holder that has exited would have left it, while something
    // that inherited the lock (here: this test) still holds it.
    let boot_id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap_or_default();
    let gone = exited_pid();
    std::fs::write(
        locks.lock_path(port),
        format!(
            r#"{{"pid":{gone},"started_at":"2026-01-30T12:00:00Z","port":{port},"identity":{{"boot_id":"{}","start_ticks":1}}}}"#,
            boot_id.trim()
        ),
    )
    .unwrap();
    let out = with_flag(&env, &dir, &["serve", "-p", &port.to_string()]).finish();
    assert_eq!(out.code(), Some(1), "{out:?}");
    let hint = backticked(&out.stderr, "fuser ");
    let words = hint.strip_prefix("fuser ").unwrap();
    let pasted = paste(&env, &format!("printf '%s' {words}"), "");
    assert_eq!(pasted.code(), Some(0), "{pasted:?}");
    assert_eq!(
        Path::new(&pasted.stdout),
        locks.lock_path(port),
        "`{hint}` names another file"
    );
    drop(guard);
}

/// A PID that named a process of ours which has exited and been reaped.
fn exited_pid() -> u32 {
    let mut child = Command::new("true").spawn().unwrap();
    let pid = child.id();
    child.wait().unwrap();
    pid
}

/// `LLMLB_LOCK_DIR` naming a dir others may write (here world-writable and
/// sticky, as `/tmp`, `/dev/shm` or `/var/tmp`) is refused with a private
/// subdirectory as the fix, never `chmod` (root following that would break
/// every other user), and that fix works when pasted as printed.
#[test]
fn shared_dir_hint_is_a_private_subdirectory_that_works_when_pasted() {
    let env = Env::new();
    let shared = env.tmp.path().join(AWKWARD);
    std::fs::create_dir(&shared).unwrap();
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o1777)).unwrap();
    let port = free_port();
    let p = port.to_string();

    let mut cmd = env.cmd(&["serve", "-p", &p, "-H", "127.0.0.1"]);
    cmd.env("LLMLB_LOCK_DIR", &shared);
    let refused = env.spawn_cmd(cmd).finish();
    assert_eq!(refused.code(), Some(1), "{refused:?}");
    let line = refused.stderr.trim_end();
    assert_eq!(line.lines().count(), 1, "{line}");
    assert!(line.contains("writable by group or others"), "{line}");
    assert!(!line.contains("chmod 7"), "{line}");
    let mode = std::fs::metadata(&shared).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode, 0o1777, "the shared dir was changed");

    let hint = backticked(line, "export LLMLB_LOCK_DIR=");
    let mut server = env.spawn_cmd({
        let mut cmd = Command::new("sh");
        cmd.args([
            "-c",
            &format!(r#"{hint} && exec "$0" serve -p {p} -H 127.0.0.1"#),
            env!("CARGO_BIN_EXE_llmlb"),
        ])
        .env_remove("LLMLB_LOCK_DIR")
        .stdin(Stdio::null());
        cmd
    });
    server.wait_health(port);
    let private: PathBuf = std::fs::read_dir(&shared)
        .unwrap()
        .map(|e| e.unwrap().path())
        .next()
        .expect("the private subdirectory");
    assert!(private.join(format!("serve_{port}.lock")).exists());
    let mode = std::fs::metadata(&private).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o700);

    // The `--lock-dir` form of the same fix, pasted: stops that server.
    let flag = after(line, "(or --lock-dir ");
    let flag = flag.strip_suffix(')').unwrap_or(flag);
    let stopped = paste(&env, &format!("llmlb stop -p {p} --lock-dir {flag}"), "");
    assert_eq!(stopped.code(), Some(0), "{stopped:?}");
    assert_eq!(server.wait().code(), Some(0));
}

/// A lock file whose `host` holds a newline and escape sequences (a hostile
/// or corrupt file) cannot forge a line or colours in what `serve` and
/// `stop` print about it: the host is shown escaped.
#[test]
fn host_from_a_lock_file_is_printed_escaped() {
    let env = Env::new();
    let port = free_port();
    let locks = LockDir::create(&env.locks).unwrap();
    let guard = acquire_or_reclaim(&locks, port).unwrap();
    let host = "evil\n\u{1b}[31mError: forged line\u{1b}[0m\r\u{9b}2J";
    let info = serde_json::json!({
        "pid": std::process::id(),
        "started_at": "2026-01-30T12:00:00Z",
        "port": port,
        "host": host,
    });
    std::fs::write(env.lock_file(port), info.to_string()).unwrap();

    let p = port.to_string();
    for args in [vec!["serve", "-p", &p], vec!["stop", "-p", &p]] {
        let out = env.run(&args);
        assert_eq!(out.code(), Some(1), "{args:?}: {out:?}");
        let all = format!("{}{}", out.stdout, out.stderr);
        assert!(
            !all.contains(['\u{1b}', '\r', '\u{9b}']),
            "{args:?}: raw control characters from the lock file: {all:?}"
        );
        assert!(
            !all.lines().any(|l| l.starts_with("Error: forged")),
            "{args:?}: a forged line: {all:?}"
        );
        assert!(
            all.contains(r"evil\n\u{1b}[31mError: forged line\u{1b}[0m\r\u{9b}2J"),
            "{args:?}: the host, escaped: {all:?}"
        );
    }
    // Nothing was signalled: this process (the recorded PID) still holds it.
    assert!(matches!(
        locks.probe(port).unwrap(),
        llmlb::lock::LockState::Held(_)
    ));
    drop(guard);
}
