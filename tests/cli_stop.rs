//! `llmlb stop` end to end: idempotence, stale files that must never be
//! signalled, identity refusal, timeout and `--force` on a whole process group
//! (Linux) or job (Windows, where the graceful step is the stop channel).
#![cfg(any(target_os = "linux", windows))]

mod cli_support;

#[cfg(unix)]
use std::os::unix::process::ExitStatusExt;
use std::process::Command;
#[cfg(unix)]
use std::process::Stdio;

#[cfg(unix)]
use chrono::Utc;
use cli_support::*;
use llmlb::lock::{acquire_or_reclaim, LockDir};
#[cfg(unix)]
use llmlb::lock::{LockInfo, ProcessIdentity};

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

#[cfg(unix)]
struct Sleeper(std::process::Child);
#[cfg(unix)]
impl Drop for Sleeper {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[cfg(unix)]
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
    // STATE, then (with --port) LISTENER: nothing listens on the port.
    assert!(
        status
            .stdout
            .lines()
            .nth(1)
            .unwrap()
            .ends_with("Stale  Not listening"),
        "{status:?}"
    );

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
    let identity = reused
        .identity
        .as_mut()
        .expect("Linux and Windows have identities");
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
#[cfg(unix)]
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
    // The first stop's SIGTERM also started the server's own escalation
    // (TERM to its group, KILL after 3 s, then exit): under load that can
    // finish just before this SIGKILL lands. Either way the server is gone
    // by a kill, and so is its whole group.
    let ended = server.wait();
    assert!(
        ended.signal() == Some(libc::SIGKILL) || ended.code().is_some(),
        "{ended:?}"
    );
    wait_until("shell and grandchild to die", || {
        !alive(shell) && !alive(grandchild)
    });
    assert!(!env.lock_file(port).exists());
    assert_eq!(
        env.run(&["status", "--port", &port.to_string()]).code(),
        Some(3)
    );
}

/// `stop -t 0` does not wait (issue 18 §6), as `pg_ctl stop --no-wait` does
/// not: the server is signalled, `stop` says it has not stopped yet and exits
/// 0, and the server then stops cleanly. It used to exit 1, "did not stop
/// within 0s", for a server that was stopping. The command here finishes a
/// sleep in its TERM trap, so the port is still held when `stop` looks.
#[cfg(unix)]
#[test]
fn a_zero_timeout_signals_and_reports_not_yet_stopped() {
    let env = Env::new();
    let port = free_port();
    let sh_file = env.tmp.path().join("shell.pid");
    let script = format!(
        "trap 'sleep 0.5; exit 0' TERM; echo $$ > {sh}; while :; do sleep 0.1; done",
        sh = sh_file.display()
    );
    let p = port.to_string();
    let mut server = env.spawn(&["serve", "--port", &p, "--", "sh", "-c", &script]);
    let shell: u32 = read_when_written(&sh_file).parse().unwrap();
    let _group = GroupGuard(Some(shell));
    let pid = server.pid();

    let out = env.run(&["stop", "--port", &p, "-t", "0"]);
    assert_eq!(out.code(), Some(0), "{out:?}");
    assert_eq!(
        out.stdout,
        format!(
            "Stopping server on port {port} (PID: {pid})...\n\
             Server on port {port} (PID: {pid}) signalled, not yet stopped\n"
        )
    );
    assert_eq!(out.stderr, "");
    // It does stop, cleanly: its command's code, and the port is free.
    assert_eq!(server.wait().code(), Some(0));
    assert_eq!(env.run(&["status", "--port", &p]).code(), Some(3));
}

/// `--timeout` at u64::MAX seconds used to overflow `Instant` (a panic after
/// SIGTERM was sent); now it means "no deadline".
#[test]
fn a_timeout_too_large_for_a_deadline_waits_without_one() {
    let env = Env::new();
    let port = free_port();
    let mut server = env.serve(port);
    server.wait_health(port);
    let out = env.run(&[
        "stop",
        "--port",
        &port.to_string(),
        "-t",
        &u64::MAX.to_string(),
    ]);
    assert_eq!(out.code(), Some(0), "{out:?}");
    assert!(out.stdout.ends_with("Server stopped\n"), "{out:?}");
    assert!(!out.stderr.contains("panicked"), "{out:?}");
    assert_eq!(server.wait().code(), Some(0));
}

/// A holder whose command name is not UTF-8 (`/proc/<pid>/stat` is bytes)
/// must still be verifiable, or `stop` would refuse it.
#[cfg(unix)]
#[test]
fn a_process_with_a_non_utf8_name_has_an_identity() {
    use std::os::unix::ffi::OsStrExt;
    let env = Env::new();
    let name = std::ffi::OsStr::from_bytes(b"\xff\xfe) (x\xc3");
    let link = env.tmp.path().join(name);
    std::os::unix::fs::symlink(which("sleep"), &link).unwrap();
    let mut sleeper = Sleeper(
        Command::new(&link)
            .arg("30")
            .stdin(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let pid = sleeper.0.id();
    let stat = std::fs::read(format!("/proc/{pid}/stat")).unwrap();
    assert!(
        std::str::from_utf8(&stat).is_err(),
        "the name should make /proc/{pid}/stat non-UTF-8"
    );
    let identity = ProcessIdentity::of_pid(pid).expect("identity of a non-UTF-8 name");
    assert!(identity.start_ticks.is_some());
    assert!(sleeper.0.try_wait().unwrap().is_none());
}

#[cfg(unix)]
fn which(program: &str) -> std::path::PathBuf {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join(program))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("{program} not found in PATH"))
}

/// The "already running" message names only a fix that works for that
/// holder: no `kill -TERM` for a holder on another host or one that cannot
/// be verified, where `stop` itself would refuse.
#[cfg(unix)]
#[test]
fn already_running_hints_only_what_works() {
    let env = Env::new();
    let port = free_port();
    let dir = LockDir::create(&env.locks).unwrap();
    let guard = acquire_or_reclaim(&dir, port).unwrap();
    let p = port.to_string();

    let out = env.run(&["serve", "--port", &p]);
    assert_eq!(out.code(), Some(1), "{out:?}");
    assert!(
        out.stderr
            .contains(&format!("kill -TERM {}", std::process::id())),
        "{}",
        out.stderr
    );

    let mut foreign = guard.info().clone();
    foreign.host = Some("elsewhere.invalid".into());
    std::fs::write(env.lock_file(port), foreign.to_bytes()).unwrap();
    let out = env.run(&["serve", "--port", &p]);
    assert_eq!(out.code(), Some(1), "{out:?}");
    assert!(
        out.stderr
            .contains("runs on host elsewhere.invalid: stop it there"),
        "{}",
        out.stderr
    );
    assert!(!out.stderr.contains("kill -TERM"), "{}", out.stderr);

    let mut reused = guard.info().clone();
    let identity = reused.identity.as_mut().expect("Linux has identities");
    identity.start_ticks = identity.start_ticks.map(|t| t + 1);
    std::fs::write(env.lock_file(port), reused.to_bytes()).unwrap();
    let out = env.run(&["serve", "--port", &p]);
    assert!(out.stderr.contains("fuser"), "{}", out.stderr);
    assert!(
        !out.stderr.contains("kill -TERM") && !out.stderr.contains("llmlb stop"),
        "{}",
        out.stderr
    );

    let mut bare = guard.info().clone();
    bare.identity = None;
    std::fs::write(env.lock_file(port), bare.to_bytes()).unwrap();
    let out = env.run(&["serve", "--port", &p]);
    assert!(out.stderr.contains("cannot be verified"), "{}", out.stderr);
    assert!(!out.stderr.contains("kill -TERM"), "{}", out.stderr);
    drop(guard);
}

/// Set in a re-invoked copy of this test binary: the role it plays (see
/// [`play`]).
#[cfg(windows)]
const ROLE: &str = "LLMLB_TEST_ROLE";

/// `cmd` runs this test binary as `test` in the role `role`.
#[cfg(windows)]
fn role_args(cmd: &mut Command, test: &str, role: &str) {
    cmd.arg(std::env::current_exe().unwrap())
        .args(["--exact", test, "--nocapture", "--test-threads=1"])
        .env(ROLE, role);
}

/// The roles, in a re-invoked test binary; never returns. `hold PORT`: takes
/// the lock of PORT in `LLMLB_LOCK_DIR` through the library and never looks
/// at its stop channel (a server that does not stop), prints `held`.
/// `ignore-break FILE`: ignores Ctrl-Break and Ctrl-C (a command that does not
/// stop), writes its PID to FILE. Both then sleep.
#[cfg(windows)]
fn play(role: &str) -> ! {
    use windows_sys::Win32::System::Console::SetConsoleCtrlHandler;
    unsafe extern "system" fn ignore(_event: u32) -> windows_sys::core::BOOL {
        1
    }
    let words: Vec<&str> = role.split(' ').collect();
    let _guard = match words.as_slice() {
        ["hold", port] => {
            let dir = LockDir::create(std::env::var_os("LLMLB_LOCK_DIR").unwrap()).unwrap();
            let guard = acquire_or_reclaim(&dir, port.parse().unwrap()).unwrap();
            println!("held");
            Some(guard)
        }
        ["ignore-break", file] => {
            // SAFETY: registers a handler that only returns TRUE ("handled").
            assert_ne!(unsafe { SetConsoleCtrlHandler(Some(ignore), 1) }, 0);
            std::fs::write(file, format!("{}\n", std::process::id())).unwrap();
            None
        }
        _ => panic!("unknown role {role:?}"),
    };
    std::thread::sleep(std::time::Duration::from_secs(120));
    std::process::exit(9)
}

/// Windows: a second serve is refused naming the holder's PID and only fixes
/// that exist there (`llmlb stop`, `taskkill`), never a Unix command.
#[cfg(windows)]
#[test]
fn a_second_serve_is_refused_with_the_holder_pid_and_no_unix_hint() {
    let env = Env::new();
    let port = free_port();
    let mut server = env.serve(port);
    let pid = server.pid();
    let out = env.run(&["serve", "--port", &port.to_string(), "-H", "127.0.0.1"]);
    assert_eq!(out.code(), Some(1), "{out:?}");
    assert!(
        out.stderr.contains(&format!(
            "Error: Server already running on port {port} (PID: {pid}, started: "
        )),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr
            .contains(&format!("To stop: llmlb stop --port {port}"))
            && out.stderr.contains(&format!("taskkill /F /PID {pid}")),
        "{}",
        out.stderr
    );
    assert!(
        !out.stderr.contains("kill -TERM") && !out.stderr.contains("fuser"),
        "{}",
        out.stderr
    );
    let stop = env.run(&["stop", "--port", &port.to_string()]);
    assert_eq!(stop.code(), Some(0), "{stop:?}");
    assert_eq!(server.wait().code(), Some(0), "{}", server.stderr());
    assert!(!env.lock_file(port).exists());
}

/// Windows: a holder that never looks at its stop channel is not stopped by
/// a plain `stop` (exit 1 naming `--force`, still running); `--force`
/// terminates it through the verified handle, and the file it left is gone.
#[cfg(windows)]
#[test]
fn force_terminates_a_holder_that_ignores_the_stop_request() {
    const TEST: &str = "force_terminates_a_holder_that_ignores_the_stop_request";
    if let Ok(role) = std::env::var(ROLE) {
        play(&role);
    }
    let env = Env::new();
    let port = free_port();
    let p = port.to_string();
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args(["--exact", TEST, "--nocapture", "--test-threads=1"])
        .env(ROLE, format!("hold {port}"))
        .env("LLMLB_LOCK_DIR", &env.locks);
    let mut holder = env.spawn_cmd(cmd);
    wait_until("the holder to take the lock", || {
        holder.stdout().contains("held")
    });
    let pid = holder.pid();

    let out = env.run(&["stop", "--port", &p, "--timeout", "1"]);
    assert_eq!(out.code(), Some(1), "{out:?}");
    assert!(
        out.stderr.contains(&format!(
            "server on port {port} (PID: {pid}) did not stop within 1s; use --force"
        )),
        "{}",
        out.stderr
    );
    assert!(holder.try_wait().is_none(), "a plain stop terminated it");

    let out = env.run(&["stop", "--port", &p, "--timeout", "1", "--force"]);
    assert_eq!(out.code(), Some(0), "{out:?}");
    assert!(out.stdout.ends_with("Server stopped (killed)\n"), "{out:?}");
    assert!(holder.try_wait().is_some(), "not terminated");
    assert!(!env.lock_file(port).exists());
    assert_eq!(env.run(&["status", "--port", &p]).code(), Some(3));
}

/// Windows: exec mode whose command ignores Ctrl-Break: `stop --force`
/// terminates llmlb, and its job takes the command with it.
#[cfg(windows)]
#[test]
fn force_on_exec_mode_ends_a_command_that_ignores_ctrl_break() {
    const TEST: &str = "force_on_exec_mode_ends_a_command_that_ignores_ctrl_break";
    if let Ok(role) = std::env::var(ROLE) {
        play(&role);
    }
    let env = Env::new();
    let port = free_port();
    let p = port.to_string();
    let pid_file = env.tmp.path().join("child.pid");
    let mut cmd = env.cmd(&["serve", "-p", &p, "--"]);
    role_args(
        &mut cmd,
        TEST,
        &format!("ignore-break {}", pid_file.display()),
    );
    let mut server = env.spawn_cmd(cmd);
    let child: u32 = read_when_written(&pid_file).parse().unwrap();
    assert!(running(child));

    let out = env.run(&["stop", "--port", &p, "--timeout", "1", "--force"]);
    assert_eq!(out.code(), Some(0), "{out:?}");
    assert!(out.stdout.ends_with("Server stopped (killed)\n"), "{out:?}");
    assert!(server.try_wait().is_some(), "llmlb not terminated");
    wait_until("the command to die with its job", || !running(child));
    assert!(!env.lock_file(port).exists());
}

/// Windows (issue 17 §7, reported as reproduced under Wine every time): an
/// exec-mode llmlb is killed (TerminateProcess, as a crash would), its job
/// ends the command, and a new `serve` reclaims the port; three rounds in a
/// row, the dead servers' handles kept open (as a supervisor keeps them).
/// Then `stop` recognises the live reclaimer as the holder and stops it.
/// (This passed before the fix too: within one Wine prefix nothing is
/// misjudged. What the report saw was a `stop` run in another prefix, whose
/// own PID 32 is another process: see the next test.)
#[cfg(windows)]
#[test]
fn stop_after_kills_and_reclaims_stops_the_live_reclaimer() {
    let env = Env::new();
    let port = free_port();
    let p = port.to_string();
    // Started, holding the port under its own PID, its command running in
    // its job: returns the command's PID (from llmlb's log line).
    let serve = || {
        let server = env.spawn(&["serve", "-p", &p, "--", "ping", "-n", "1000", "127.0.0.1"]);
        let pid = server.pid();
        let mut command = None;
        wait_until(
            &format!("PID {pid} to run its command under the lock"),
            || {
                command = server
                    .stderr()
                    .split_once("running ping (PID ")
                    .and_then(|(_, rest)| rest.split_once(')'))
                    .and_then(|(n, _)| n.parse::<u32>().ok());
                command.is_some()
            },
        );
        let info = std::fs::read(env.lock_file(port))
            .ok()
            .and_then(|bytes| llmlb::lock::LockInfo::parse(&bytes));
        assert_eq!(info.map(|i| i.pid), Some(pid), "{}", server.stderr());
        (server, command.unwrap())
    };
    let mut dead = Vec::new();
    for _ in 0..3 {
        let (mut server, command) = serve();
        server.kill();
        wait_until("the job to end the command", || !running(command));
        dead.push(server);
    }
    let (mut server, command) = serve();
    let pids: Vec<u32> = dead.iter().map(Proc::pid).collect();
    let out = env.run(&["stop", "--port", &p]);
    assert_eq!(
        out.code(),
        Some(0),
        "{out:?} (killed: {pids:?}, live: {})",
        server.pid()
    );
    assert!(out.stdout.ends_with("Server stopped\n"), "{out:?}");
    server.wait();
    wait_until("the command to end with llmlb", || !running(command));
    assert!(!env.lock_file(port).exists());
}

/// Windows (issue 17 §7): the report's "recorded PID 32 has exited" for a
/// live holder came from a `stop` run in another Wine prefix over a shared
/// lock dir: every prefix has its own wineserver numbering its own PIDs
/// from 32, so the pin looked the number up among the wrong processes. A
/// holder now records its installation's (prefix's) `MachineGuid` as its
/// PID namespace: a record from another prefix (here: ours, with another
/// GUID and a fresh prefix's first PID) is refused as another PID
/// namespace, nothing signalled, never "has exited". Checked by hand with
/// two prefixes too (`serve` in one, `stop` in the other: before, exit 1
/// "has exited"; now exit 1 "runs in another PID namespace").
#[cfg(windows)]
#[test]
fn a_holder_in_another_wine_prefix_is_never_reported_exited() {
    let env = Env::new();
    let port = free_port();
    let p = port.to_string();
    let dir = LockDir::create(&env.locks).unwrap();
    let guard = acquire_or_reclaim(&dir, port).unwrap();
    let mut elsewhere = guard.info().clone();
    let identity = elsewhere.identity.as_mut().expect("Windows has identities");
    let ours = identity.pid_ns.clone();
    assert!(
        ours.as_deref().is_some_and(|ns| ns.starts_with("machine:")),
        "a Windows holder records its PID namespace: {ours:?}"
    );
    identity.pid_ns = Some("machine:00000000-0000-4000-8000-000000000000".to_owned());
    elsewhere.pid = 32;
    std::fs::write(env.lock_file(port), elsewhere.to_bytes()).unwrap();

    let out = env.run(&["stop", "--port", &p]);
    assert_eq!(out.code(), Some(1), "{out:?}");
    assert!(
        out.stderr.contains(&format!(
            "server on port {port} (PID: 32) runs in another PID namespace"
        )) && !out.stderr.contains("has exited"),
        "{}",
        out.stderr
    );
    let (code, status) = status_json(&env, Some(port));
    assert_eq!(code, Some(0), "{status}");
    assert!(
        status.to_string().contains("\"other_pid_namespace\""),
        "{status}"
    );
    drop(guard);
}

/// The line `stop` prints for a port nobody in `env`'s lock dir holds, on
/// which `who` listens.
#[cfg(target_os = "linux")]
fn served_elsewhere_line(env: &Env, port: u16, who: &str) -> String {
    format!(
        "Error: no server in lock dir {} holds port {port}, but {who} listens on it; nothing was \
         signalled: an llmlb of another user or another lock dir? try `sudo llmlb status -p {port}` \
         or `--lock-dir`\n",
        llmlb::lock::shell_quoted(&env.locks)
    )
}

/// A port nobody in this lock dir holds, on which a process listens (an
/// llmlb of another lock dir or user, or any program), is not "No server
/// running": `stop` names who listens and exits 1, signalling nothing. Once
/// nothing listens, it is.
#[cfg(target_os = "linux")]
#[test]
fn a_port_served_but_held_by_nobody_here_names_the_listener_and_fails() {
    let env = Env::new();
    let port = free_port();
    let listener = std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
    let p = port.to_string();
    // No lock dir, then an empty one: the same answer.
    for _ in 0..2 {
        let out = env.run(&["stop", "-p", &p]);
        assert_eq!(out.code(), Some(1), "{out:?}");
        assert_eq!(out.stdout, "", "{out:?}");
        assert_eq!(
            out.stderr,
            served_elsewhere_line(&env, port, &this_process()),
            "{out:?}"
        );
        LockDir::create(&env.locks).unwrap();
    }
    drop(listener);
    let out = env.run(&["stop", "-p", &p]);
    assert_eq!(out.code(), Some(0), "{out:?}");
    assert_eq!(out.stdout, format!("No server running on port {port}\n"));
}

/// Run as another user, who cannot see this process's descriptors in
/// `/proc`, `stop` still tells that the port is served: by "a process of
/// another user", the PID it cannot see left out. Needs root (to run
/// `stop` as uid 65534 with `setpriv`).
#[cfg(target_os = "linux")]
#[test]
fn a_listener_of_another_user_is_named_as_such() {
    #[path = "support/prereq.rs"]
    mod prereq;
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 || which_setpriv().is_none() {
        prereq::skip_unless_ci(
            "root and util-linux's setpriv",
            "run the tests as root with setpriv installed",
            "stop run as another user",
        );
        return;
    }
    let env = Env::new();
    let port = free_port();
    let _listener = std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
    // A lock dir that does not exist: nobody holds anything there.
    let mut cmd = Command::new("setpriv");
    cmd.args([
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
        env!("CARGO_BIN_EXE_llmlb"),
        "stop",
        "-p",
        &port.to_string(),
    ])
    .env("LLMLB_LOCK_DIR", &env.locks);
    let out = cmd.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert_eq!(
        stderr,
        served_elsewhere_line(&env, port, "a process of another user (PID not visible)")
    );
}

#[cfg(target_os = "linux")]
fn which_setpriv() -> Option<std::path::PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| std::path::Path::new(d).join("setpriv"))
        .find(|p| p.exists())
}

/// A server that takes the port after the stop began (here a `serve
/// --wait` queued for it, which takes it the instant the stopped one lets
/// go) is a new server, not one the port went back to: `stop` reports the
/// stop it made and leaves the new one serving.
#[cfg(target_os = "linux")]
#[test]
fn a_server_that_takes_the_port_after_the_stop_began_is_left_serving() {
    let env = Env::new();
    let port = free_port();
    let p = port.to_string();
    let mut first = env.serve(port);
    let first_pid = first.pid();
    let mut next = env.spawn(&["serve", "--port", &p, "--host", "127.0.0.1", "--wait", "30"]);
    wait_until("the next serve to wait for the port", || {
        next.stderr().contains("waiting")
    });
    let out = env.run(&["stop", "-p", &p]);
    assert_eq!(out.code(), Some(0), "{out:?}");
    assert_eq!(
        out.stdout,
        format!("Stopping server on port {port} (PID: {first_pid})...\nServer stopped\n")
    );
    assert_eq!(first.wait().code(), Some(0));
    let health: serde_json::Value = serde_json::from_str(&next.wait_health(port)).unwrap();
    assert_eq!(health["pid"], next.pid(), "{health}");
    assert!(next.try_wait().is_none(), "the new server was stopped");
    let out = env.run(&["stop", "-p", &p]);
    assert_eq!(out.code(), Some(0), "{out:?}");
    assert_eq!(next.wait().code(), Some(0));
}
