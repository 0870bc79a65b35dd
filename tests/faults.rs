//! Faults with real processes: SIGKILL at random instants of a holder's
//! acquire/write/release loop, a lock dir that vanishes, turns read-only or
//! fills up, and lock files or dirs owned by another user.
//!
//! Each test uses a fresh temp lock dir; every spawned process is killed on
//! drop. No timing is asserted: deadlines only guard against hangs. Helper
//! processes are this test binary re-invoked with `LLMLB_FAULT_ROLE` set.
#![cfg(unix)]

mod cli_support;
#[path = "support/prereq.rs"]
mod prereq;
#[path = "support/seeded.rs"]
mod seeded;
use seeded::Rng;

use std::fs::OpenOptions;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use cli_support::{alive, free_port, Env, PATIENCE};
use llmlb::lock::{acquire_or_reclaim, LockDir, LockError, LockInfo, LockState, ProcessIdentity};

const ROLE: &str = "LLMLB_FAULT_ROLE";
const DIR: &str = "LLMLB_FAULT_DIR";
const PORT: u16 = 43210;
/// Kill trials; each kills two looping holders.
const TRIALS: usize = 200;
/// Upper bound of the random delay before SIGKILL.
const MAX_KILL_DELAY_US: u64 = 5_000;
/// An unprivileged user that owns nothing here (`nobody`).
const OTHER_UID: u32 = 65534;
/// What a holder prints once it starts looping.
const READY: &str = "llmlb-fault-holder-ready";
/// The kill log in the holders' dir: one PID per line, appended by the test
/// before it SIGKILLs that PID.
const KILLED: &str = "killed";

/// Whether the test has logged `pid` as killed (or about to be).
fn was_killed(dir: &Path, pid: u32) -> bool {
    match std::fs::read_to_string(dir.join(KILLED)) {
        Ok(log) => log.lines().any(|l| l == pid.to_string()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
        Err(e) => {
            eprintln!("cannot read the kill log: {e}");
            std::process::exit(4);
        }
    }
}

/// Appends `pid` to the kill log; must return before the SIGKILL is sent.
fn log_kill(dir: &Path, pid: u32) {
    let mut log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join(KILLED))
        .expect("open the kill log");
    // One write(2) of a whole line with O_APPEND.
    log.write_all(format!("{pid}\n").as_bytes())
        .expect("append to the kill log");
}

/// Kills (SIGKILL) and reaps the child if the test fails before waiting.
struct Reaper(Option<Child>);

impl Reaper {
    fn child(&mut self) -> &mut Child {
        self.0.as_mut().expect("not yet reaped")
    }
}

impl Drop for Reaper {
    fn drop(&mut self) {
        if let Some(child) = self.0.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

fn chown(path: &Path, uid: u32) {
    std::os::unix::fs::lchown(path, Some(uid), Some(uid))
        .unwrap_or_else(|e| panic!("chown {}: {e}", path.display()));
}

// ---------------------------------------------------------------------------
// SIGKILL at random instants
// ---------------------------------------------------------------------------

/// Holder role: forever take the port (reclaiming after a killed holder),
/// prove exclusivity, rewrite the info (the write step), release. The
/// critical-section marker names the holder's PID and is removed before the
/// release, so a marker naming another PID while we hold the lock means that
/// holder is still inside (a double holder: exit 3) unless the test killed
/// it inside, which is fine.
///
/// "Killed" is read from the test's kill log ([`KILLED`]), never from
/// `/proc`: the kernel drops a killed process's flock (when its files are
/// closed) before the process shows as a zombie, so a "still alive?" probe
/// can see a holder that is already dead to the lock. The test logs a PID
/// before it sends SIGKILL, so every holder whose lock was dropped by a kill
/// is in the log by the time anyone can take the lock after it.
fn holder_loop(dir: &Path) -> ! {
    let locks = LockDir::create(dir.join("locks")).unwrap();
    let marker = dir.join("critical-section");
    let me = std::process::id();
    // Own line: libtest has already printed `test <name> ... ` without a newline.
    println!("\n{READY}");
    std::io::stdout().flush().unwrap();
    let mut n = 0u32;
    loop {
        let mut guard = match acquire_or_reclaim(&locks, PORT) {
            Ok(g) => g,
            Err(LockError::AlreadyRunning { .. } | LockError::Busy { .. }) => {
                std::thread::yield_now();
                continue;
            }
            Err(e) => {
                eprintln!("holder {me}: acquire failed: {e}");
                std::process::exit(4);
            }
        };
        if let Ok(text) = std::fs::read_to_string(&marker) {
            if let Ok(other) = text.trim().parse::<u32>() {
                if other != me && !was_killed(dir, other) {
                    eprintln!("holder {me}: PID {other} is inside the critical section too");
                    std::process::exit(3);
                }
            }
        }
        std::fs::write(&marker, me.to_string()).unwrap();
        n = n.wrapping_add(1);
        // The write step: rewrite the info in place (as exec mode does).
        if let Err(e) = guard.set_child_pgid(Some(n)) {
            eprintln!("holder {me}: rewrite failed: {e}");
            std::process::exit(4);
        }
        // Must go before the release: a marker left by a live holder would
        // read as a double holder to the next one.
        if let Err(e) = std::fs::remove_file(&marker) {
            eprintln!("holder {me}: removing the marker failed: {e}");
            std::process::exit(4);
        }
        if let Err(e) = guard.release() {
            eprintln!("holder {me}: release failed: {e}");
            std::process::exit(4);
        }
    }
}

fn spawn_holder(dir: &Path) -> (Reaper, BufReader<std::process::ChildStdout>) {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "sigkill_at_random_instants_never_leaves_the_port_stuck_or_double_held",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(ROLE, "holder")
        .env(DIR, dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("re-invoke test binary");
    let out = BufReader::new(child.stdout.take().unwrap());
    (Reaper(Some(child)), out)
}

/// Reads lines until the holder's [`READY`] (the test harness prints its own
/// lines first).
fn wait_ready(out: &mut BufReader<std::process::ChildStdout>) {
    let mut line = String::new();
    loop {
        line.clear();
        let n = out.read_line(&mut line).unwrap();
        assert!(n > 0, "holder exited before it was ready");
        if line.trim() == READY {
            return;
        }
    }
}

#[test]
fn sigkill_at_random_instants_never_leaves_the_port_stuck_or_double_held() {
    if std::env::var(ROLE).as_deref() == Ok("holder") {
        holder_loop(Path::new(&std::env::var_os(DIR).unwrap()));
    }
    let tmp = tempfile::tempdir().unwrap();
    let locks = LockDir::create(tmp.path().join("locks")).unwrap();
    let mut rng = Rng::from_env("LLMLB_FAULT_SEED");
    let (mut reclaimed, mut free) = (0, 0);
    for trial in 0..TRIALS {
        // Two holders contend, so kills land while one holds and the other
        // reclaims or is refused.
        let mut holders = [spawn_holder(tmp.path()), spawn_holder(tmp.path())];
        for (_, out) in holders.iter_mut() {
            wait_ready(out);
        }
        let delays = [rng.below(MAX_KILL_DELAY_US), rng.below(MAX_KILL_DELAY_US)];
        let start = Instant::now();
        let order = if delays[0] <= delays[1] {
            [0, 1]
        } else {
            [1, 0]
        };
        for i in order {
            let target = Duration::from_micros(delays[i]);
            if let Some(rest) = target.checked_sub(start.elapsed()) {
                std::thread::sleep(rest);
            }
            let pid = holders[i].0.child().id();
            log_kill(tmp.path(), pid);
            // SAFETY: kill(2) on our own unreaped child's positive pid.
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
        }
        for (reaper, _) in holders.iter_mut() {
            let status = reaper.0.take().unwrap().wait().unwrap();
            assert_eq!(
                status.signal(),
                Some(libc::SIGKILL),
                "trial {trial}: a holder exited on its own ({status}): double holder (3) or error (4)"
            );
        }
        // Both holders are dead: the port is never reported held...
        let state = locks.probe(PORT).expect("probe");
        assert!(
            !matches!(state, LockState::Held(_)),
            "trial {trial}: both holders are dead but the probe says {state:?}"
        );
        // ...and is always acquirable: reclaimed (killed while holding) or free.
        let guard = acquire_or_reclaim(&locks, PORT)
            .unwrap_or_else(|e| panic!("trial {trial}: port stuck after SIGKILL: {e}"));
        match state {
            LockState::Stale(_) => {
                assert!(
                    guard.was_reclaimed(),
                    "trial {trial}: stale but not reclaimed"
                );
                reclaimed += 1;
            }
            _ => free += 1,
        }
        guard.release().unwrap();
        assert_eq!(locks.probe(PORT).unwrap(), LockState::Free, "trial {trial}");
        // Next trial: no marker, an empty kill log (PIDs get reused).
        for name in ["critical-section", KILLED] {
            match std::fs::remove_file(tmp.path().join(name)) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    panic!("trial {trial}: remove {name}: {e}")
                }
                _ => {}
            }
        }
    }
    eprintln!("{TRIALS} trials: {reclaimed} left a stale lock (reclaimed), {free} left it free");
}

// ---------------------------------------------------------------------------
// The lock dir removed, read-only, full
// ---------------------------------------------------------------------------

/// The contract for runtime errors: exit 1, exactly one `Error: …` line that
/// names `path`, no panic, no Debug dump.
fn assert_clear_error(out: &Output, path: &Path, what: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{what}: exit code; stderr:\n{stderr}"
    );
    let errors: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("Error: "))
        .collect();
    assert_eq!(
        errors.len(),
        1,
        "{what}: one Error line expected:\n{stderr}"
    );
    assert!(
        errors[0].contains(&*path.to_string_lossy()),
        "{what}: the error must name {}: {}",
        path.display(),
        errors[0]
    );
    for bad in ["panicked", "RUST_BACKTRACE", "Os {", "kind: ", "Custom {"] {
        assert!(
            !stderr.contains(bad),
            "{what}: {bad:?} in stderr:\n{stderr}"
        );
    }
}

/// Runs a command to completion with a hang guard.
fn run_to_end(mut cmd: Command) -> Output {
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(PATIENCE) {
        Ok(out) => out.unwrap(),
        Err(_) => {
            // SAFETY: kill(2) on our own child.
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
            panic!("command did not finish within {PATIENCE:?}");
        }
    }
}

#[test]
fn lock_dir_removed_while_idle_is_recreated_by_the_next_serve() {
    let env = Env::new();
    let port = free_port();
    let mut server = env.serve(port);
    assert_eq!(
        env.run(&["stop", "--port", &port.to_string()]).code(),
        Some(0)
    );
    server.wait();
    std::fs::remove_dir_all(&env.locks).unwrap();

    // Nothing runs: status and stop say so, and create nothing.
    let status = env.run(&["status", "--port", &port.to_string()]);
    assert_eq!(status.code(), Some(3), "{status:?}");
    let stop = env.run(&["stop", "--port", &port.to_string()]);
    assert_eq!(stop.code(), Some(0), "{stop:?}");
    assert!(
        !env.locks.exists(),
        "status/stop must not create the lock dir"
    );

    // The next serve re-creates a private dir and holds the port.
    let mut server = env.serve(port);
    let mode = std::fs::metadata(&env.locks).unwrap().mode() & 0o777;
    assert_eq!(mode, 0o700, "re-created lock dir mode {mode:o}");
    assert_eq!(
        env.run(&["status", "--port", &port.to_string()]).code(),
        Some(0)
    );
    assert_eq!(
        env.run(&["stop", "--port", &port.to_string()]).code(),
        Some(0)
    );
    server.wait();
}

#[test]
fn lock_dir_removed_under_a_lockdir_handle_is_a_clear_io_error() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("locks");
    let locks = LockDir::create(&path).unwrap();
    std::fs::remove_dir(&path).unwrap();
    assert_eq!(locks.probe(PORT).unwrap(), LockState::Free);
    let err = acquire_or_reclaim(&locks, PORT).unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, LockError::Io { .. }), "{err:?}");
    assert!(text.contains(&*path.to_string_lossy()), "{text}");
    assert!(text.contains("re-created on the next start"), "{text}");
    assert!(!text.contains('\n'), "{text}");
    // A fresh handle re-creates the dir and works.
    let locks = LockDir::create(&path).unwrap();
    acquire_or_reclaim(&locks, PORT).unwrap().release().unwrap();
}

/// Why mount-based fault tests cannot run here, if they cannot: they need
/// root and `unshare -m` (a private mount namespace for a small tmpfs).
fn mount_namespace_unavailable() -> Option<String> {
    if !is_root() {
        return Some("not root: cannot mount a tmpfs".into());
    }
    let probe = Command::new("unshare")
        .args([
            "-m",
            "sh",
            "-c",
            "mount -t tmpfs -o size=64k tmpfs /mnt 2>&1 || mount -t tmpfs -o size=64k tmpfs /tmp",
        ])
        .stdin(Stdio::null())
        .output();
    match probe {
        Ok(out) if out.status.success() => None,
        Ok(out) => Some(format!(
            "`unshare -m` + `mount -t tmpfs` failed: {}",
            String::from_utf8_lossy(&out.stdout).trim()
        )),
        Err(e) => Some(format!("cannot run unshare: {e}")),
    }
}

/// `llmlb ARGS` run in a private mount namespace after `setup` (a shell
/// snippet with the mount point in `$1`) prepared a tmpfs at `mount`, with the
/// lock dir `<mount>/locks`.
fn llmlb_in_namespace(mount: &Path, setup: &str, args: &[&str]) -> Output {
    let script = format!("set -e; {setup}; shift; exec \"$@\"");
    let mut cmd = Command::new("unshare");
    cmd.args(["-m", "sh", "-c", &script, "sh"])
        .arg(mount)
        .arg(env!("CARGO_BIN_EXE_llmlb"))
        .args(args)
        .env("LLMLB_LOCK_DIR", mount.join("locks"))
        .env("LLMLB_LOG_LEVEL", "info")
        .env_remove("RUST_LOG");
    run_to_end(cmd)
}

#[test]
fn read_only_lock_dir_is_a_clear_error() {
    let port = free_port().to_string();
    let serve = ["serve", "--port", port.as_str(), "--host", "127.0.0.1"];
    if !is_root() {
        // Mode bits bind non-root users: a dir without write permission.
        let env = Env::new();
        std::fs::create_dir(&env.locks).unwrap();
        std::fs::set_permissions(&env.locks, std::fs::Permissions::from_mode(0o500)).unwrap();
        let out = run_to_end(env.cmd(&serve));
        assert_clear_error(&out, &env.locks, "read-only lock dir (mode 0500)");
        return;
    }
    if let Some(why) = mount_namespace_unavailable() {
        prereq::skip_unless_ci(
            &format!("root ignores mode bits and {why}"),
            "run as root where `unshare -m` may mount a tmpfs (CAP_SYS_ADMIN)",
            "the read-only file system case",
        );
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let mount = tmp.path().join("mnt");
    std::fs::create_dir(&mount).unwrap();
    // The lock dir exists and is private, then the file system turns read-only.
    let out = llmlb_in_namespace(
        &mount,
        "mount -t tmpfs -o size=256k tmpfs \"$1\"; mkdir -m 700 \"$1/locks\"; \
         mount -o remount,ro \"$1\"",
        &serve,
    );
    let lock_file = mount.join("locks").join(format!("serve_{port}.lock"));
    assert_clear_error(&out, &lock_file, "read-only file system");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Read-only file system"),
        "{out:?}"
    );
    // A lock dir that cannot even be created on a read-only file system.
    let out = llmlb_in_namespace(&mount, "mount -t tmpfs -o ro tmpfs \"$1\"", &serve);
    assert_clear_error(&out, &mount.join("locks"), "read-only, no lock dir");
    // It says which ancestor is in the way and why, without a raw OS error.
    let stderr = String::from_utf8_lossy(&out.stderr);
    let said = format!("{} is on a read-only file system", mount.display());
    assert!(
        stderr.contains(&said) && !stderr.contains("os error"),
        "{stderr}"
    );
}

#[test]
fn full_file_system_is_a_clear_error_and_leaves_the_port_free() {
    if let Some(why) = mount_namespace_unavailable() {
        prereq::skip_unless_ci(
            &why,
            "run as root where `unshare -m` may mount a tmpfs (CAP_SYS_ADMIN)",
            "the full file system cases",
        );
        return;
    }
    let port = free_port().to_string();
    let tmp = tempfile::tempdir().unwrap();
    let mount = tmp.path().join("mnt");
    std::fs::create_dir(&mount).unwrap();
    let lock_file = mount.join("locks").join(format!("serve_{port}.lock"));
    // serve's stderr goes outside the full file system.
    let err = tmp.path().join("serve.err");
    let err = err.display();
    // No data blocks left: the lock file is created but its info cannot be
    // written. Then `status` in the same namespace must not see a holder.
    let out = llmlb_in_namespace(
        &mount,
        &format!(
            "mount -t tmpfs -o size=64k tmpfs \"$1\"; mkdir -m 700 \"$1/locks\"; \
             dd if=/dev/zero of=\"$1/fill\" bs=4k 2>/dev/null || true; \
             if \"$2\" serve --port {port} --host 127.0.0.1 2>'{err}'; then exit 99; \
             else echo \"serve exit $?\" >&2; fi; cat '{err}' >&2; \
             \"$2\" status --port {port} >&2 || echo \"status exit $?\" >&2"
        ),
        &["status", "--port", &port],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("serve exit 1"), "{stderr}");
    let errors: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("Error: "))
        .collect();
    assert_eq!(errors.len(), 1, "{stderr}");
    assert!(
        errors[0].contains(&*lock_file.to_string_lossy()),
        "{stderr}"
    );
    assert!(errors[0].contains("No space left on device"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    // The half-created file holds nothing: status says not running (3), twice.
    assert!(stderr.contains("status exit 3"), "{stderr}");
    assert_eq!(out.status.code(), Some(3), "{stderr}");

    // No inodes left: the lock file cannot even be created.
    let out = llmlb_in_namespace(
        &mount,
        "mount -t tmpfs -o size=1m,nr_inodes=2 tmpfs \"$1\"; mkdir -m 700 \"$1/locks\"; \
         touch \"$1/a\" \"$1/b\" \"$1/c\" 2>/dev/null || true",
        &["serve", "--port", &port, "--host", "127.0.0.1"],
    );
    assert_clear_error(&out, &lock_file, "no inodes left");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("No space left on device"),
        "{out:?}"
    );
}

// ---------------------------------------------------------------------------
// Ownership and permissions
// ---------------------------------------------------------------------------

#[test]
fn lock_file_and_dir_are_private_even_with_umask_0() {
    let env = Env::new();
    let port = free_port();
    let mut cmd = env.cmd(&["serve", "--port", &port.to_string(), "--host", "127.0.0.1"]);
    // SAFETY: umask(2) is async-signal-safe; nothing else runs in pre_exec.
    unsafe {
        cmd.pre_exec(|| {
            libc::umask(0);
            Ok(())
        });
    }
    let mut server = env.spawn_cmd(cmd);
    server.wait_health(port);
    let file_mode = std::fs::metadata(env.lock_file(port)).unwrap().mode() & 0o777;
    let dir_mode = std::fs::metadata(&env.locks).unwrap().mode() & 0o777;
    assert_eq!(file_mode, 0o600, "lock file mode {file_mode:o}");
    assert_eq!(dir_mode, 0o700, "lock dir mode {dir_mode:o}");
    assert_eq!(
        env.run(&["stop", "--port", &port.to_string()]).code(),
        Some(0)
    );
    server.wait();
}

/// A `sleep` standing in for a server, and a lock file held by this test
/// process (flock on its own open file) whose info names the sleep with its
/// real identity: exactly what `stop` would SIGTERM if it trusted the file.
struct FakeServer {
    _sleep: Reaper,
    _held: std::fs::File,
    pid: u32,
}

fn fake_held_server(locks: &Path, port: u16) -> FakeServer {
    let sleep = Command::new("sleep").arg("600").spawn().unwrap();
    let pid = sleep.id();
    let mut info = LockInfo::for_current_process(port);
    info.pid = pid;
    info.identity = ProcessIdentity::of_pid(pid);
    info.child_pgid = None;
    let path = locks.join(format!("serve_{port}.lock"));
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)
        .unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    file.write_all(&info.to_bytes()).unwrap();
    use std::os::fd::AsRawFd;
    // SAFETY: flock on a descriptor we own.
    assert_eq!(unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) }, 0);
    FakeServer {
        _sleep: Reaper(Some(sleep)),
        _held: file,
        pid,
    }
}

fn private_dir(env: &Env) {
    std::fs::create_dir(&env.locks).unwrap();
    std::fs::set_permissions(&env.locks, std::fs::Permissions::from_mode(0o700)).unwrap();
}

#[test]
fn foreign_owned_lock_file_is_refused_before_any_signal() {
    if !is_root() {
        prereq::skip_unless_ci(
            "not root: chown to another user needs root",
            "run the tests as root",
            "the foreign-owned lock file case",
        );
        return;
    }
    let env = Env::new();
    private_dir(&env);
    let port = free_port();
    let p = port.to_string();
    let file = env.lock_file(port);
    let fake = fake_held_server(&env.locks, port);
    chown(&file, OTHER_UID);
    let before = std::fs::read(&file).unwrap();

    let stop = run_to_end(env.cmd(&["stop", "--port", &p, "--timeout", "1"]));
    assert_clear_error(&stop, &file, "stop on a foreign-owned lock file");
    assert!(String::from_utf8_lossy(&stop.stderr).contains("owned by another user"));
    assert!(
        alive(fake.pid),
        "stop signalled the PID of a foreign-owned file"
    );
    let stop = run_to_end(env.cmd(&["stop", "--port", &p, "--force", "--timeout", "1"]));
    assert_eq!(stop.status.code(), Some(1), "{stop:?}");
    assert!(
        alive(fake.pid),
        "stop --force signalled the PID of a foreign-owned file"
    );

    let serve = run_to_end(env.cmd(&["serve", "--port", &p, "--host", "127.0.0.1"]));
    assert_clear_error(&serve, &file, "serve on a foreign-owned lock file");
    let status = run_to_end(env.cmd(&["status", "--port", &p]));
    assert_eq!(status.status.code(), Some(4), "{status:?}");
    assert_eq!(std::fs::read(&file).unwrap(), before, "file touched");
    assert_eq!(std::fs::metadata(&file).unwrap().uid(), OTHER_UID);

    // The control: owned by us, the same file is trusted and the sleep is
    // signalled (then stop times out: this test process still holds the lock).
    chown(&file, 0);
    let stop = run_to_end(env.cmd(&["stop", "--port", &p, "--timeout", "1"]));
    assert_eq!(stop.status.code(), Some(1), "{stop:?}");
    cli_support::wait_until("the control sleep to be signalled", || !alive(fake.pid));
    drop(fake);
}

#[test]
fn foreign_owned_lock_dir_is_refused_before_any_signal() {
    if !is_root() {
        prereq::skip_unless_ci(
            "not root: chown to another user needs root",
            "run the tests as root",
            "the foreign-owned lock dir case",
        );
        return;
    }
    let env = Env::new();
    private_dir(&env);
    let port = free_port();
    let p = port.to_string();
    let fake = fake_held_server(&env.locks, port);
    chown(&env.locks, OTHER_UID);

    for args in [
        vec!["stop", "--port", &p, "--timeout", "1"],
        vec!["stop", "--port", &p, "--force", "--timeout", "1"],
        vec!["serve", "--port", &p, "--host", "127.0.0.1"],
    ] {
        let out = run_to_end(env.cmd(&args));
        assert_clear_error(&out, &env.locks, &args.join(" "));
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("owned by another user"),
            "{out:?}"
        );
        assert!(alive(fake.pid), "`llmlb {}` signalled", args.join(" "));
    }
    let status = run_to_end(env.cmd(&["status", "--port", &p]));
    assert_eq!(status.status.code(), Some(4), "{status:?}");
    let status = run_to_end(env.cmd(&["status"]));
    assert_eq!(status.status.code(), Some(4), "{status:?}");
    chown(&env.locks, 0);
    drop(fake);
}

// ---------------------------------------------------------------------------
// The lock file removed or replaced while `llmlb serve` runs (the watchdog)
// ---------------------------------------------------------------------------

/// The info in `path` if it parses for `port`.
fn recorded(path: &Path, port: u16) -> Option<LockInfo> {
    LockInfo::parse_for_port(&std::fs::read(path).ok()?, port)
}

/// Waits until the lock file of `port` exists again, records `pid`, and a
/// probe sees it held: the holder re-established it.
fn wait_restored(env: &Env, port: u16, pid: u32, what: &str) {
    let locks = env.locks.clone();
    let file = env.lock_file(port);
    cli_support::wait_until(what, || {
        recorded(&file, port).is_some_and(|i| i.pid == pid)
            && LockDir::existing(&locks)
                .ok()
                .flatten()
                .and_then(|d| d.probe(port).ok())
                .is_some_and(|s| matches!(s, LockState::Held(Some(ref i)) if i.pid == pid))
    });
}

/// A second `serve` while the first holds the port: refused, file untouched.
/// The first is stopped meanwhile (SIGSTOP): its watchdog must not be what
/// changes the file while this looks.
fn assert_second_serve_refused(env: &Env, port: u16, first: u32) {
    let file = env.lock_file(port);
    cli_support::signal(first, libc::SIGSTOP);
    let before = std::fs::read(&file).unwrap();
    let out = run_to_end(env.cmd(&["serve", "--port", &port.to_string(), "--host", "127.0.0.1"]));
    let after = std::fs::read(&file).unwrap();
    cli_support::signal(first, libc::SIGCONT);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "Error: Server already running on port {port} (PID: {first}"
        )),
        "{stderr}"
    );
    assert_eq!(
        String::from_utf8_lossy(&after),
        String::from_utf8_lossy(&before),
        "holder's file touched"
    );
}

#[test]
fn lock_file_removed_or_replaced_while_serving_is_re_established() {
    let env = Env::new();
    let port = free_port();
    let mut server = env.serve(port);
    let pid = server.pid();
    let file = env.lock_file(port);

    // `rm` (what the seed's quickstart suggested).
    std::fs::remove_file(&file).unwrap();
    wait_restored(&env, port, pid, "the removed lock file to be re-created");
    let mode = std::fs::metadata(&file).unwrap().mode() & 0o777;
    assert_eq!(mode, 0o600, "re-created lock file mode {mode:o}");
    assert_second_serve_refused(&env, port, pid);

    // Replaced by a new file (another inode) with garbage, as an editor does.
    let tmp_file = env.locks.join("edit.tmp");
    std::fs::write(&tmp_file, b"garbage\n").unwrap();
    std::fs::rename(&tmp_file, &file).unwrap();
    wait_restored(
        &env,
        port,
        pid,
        "the replaced lock file to be re-established",
    );
    assert_second_serve_refused(&env, port, pid);

    // The whole lock dir removed: re-created, private.
    std::fs::remove_dir_all(&env.locks).unwrap();
    wait_restored(&env, port, pid, "the removed lock dir to be re-created");
    let mode = std::fs::metadata(&env.locks).unwrap().mode() & 0o777;
    assert_eq!(mode, 0o700, "re-created lock dir mode {mode:o}");
    assert_second_serve_refused(&env, port, pid);

    // Still the same server, still serving; it stops normally.
    server.wait_health(port);
    assert!(server.try_wait().is_none(), "the holder exited");
    let stop = env.run(&["stop", "--port", &port.to_string()]);
    assert_eq!(stop.code(), Some(0), "{stop:?}");
    assert_eq!(server.wait().code(), Some(0));
    assert!(!file.exists(), "released lock file left behind");
    let stderr = server.stderr();
    assert!(stderr.contains("restored it"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn port_taken_while_the_holder_was_paused_makes_it_shut_down_cleanly() {
    let env = Env::new();
    let port = free_port();
    let p = port.to_string();
    let mut first = env.serve(port);
    let first_pid = first.pid();
    let file = env.lock_file(port);

    // Paused, the first server cannot re-create its file before a second
    // serve (exec mode: it binds nothing; on another address, where its
    // check that the port is bindable finds nobody) takes the port's lock.
    cli_support::signal(first_pid, libc::SIGSTOP);
    std::fs::remove_file(&file).unwrap();
    let mut second = env.spawn(&[
        "serve",
        "--port",
        &p,
        "--host",
        "127.0.0.2",
        "--",
        "sleep",
        "600",
    ]);
    let second_pid = second.pid();
    let mut group = cli_support::GroupGuard(None);
    cli_support::wait_until("the second serve to hold the port", || {
        match recorded(&file, port) {
            Some(info) if info.pid == second_pid && info.child_pgid.is_some() => {
                group.0 = info.child_pgid;
                true
            }
            _ => false,
        }
    });
    cli_support::signal(first_pid, libc::SIGCONT);

    // The first notices it lost the port: one clear error line, exit 1.
    let status = first.wait();
    let stderr = first.stderr();
    assert_eq!(status.code(), Some(1), "{stderr}");
    let errors: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("Error: "))
        .collect();
    assert_eq!(errors.len(), 1, "{stderr}");
    assert!(
        errors[0].contains(&format!("PID {second_pid}")) && errors[0].contains("shutting down"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");

    // The second still holds the port, and its file is untouched by the
    // first one's release.
    assert!(second.try_wait().is_none(), "the second serve exited");
    assert_eq!(recorded(&file, port).map(|i| i.pid), Some(second_pid));
    let state = LockDir::existing(&env.locks)
        .unwrap()
        .unwrap()
        .probe(port)
        .unwrap();
    assert!(
        matches!(&state, LockState::Held(Some(i)) if i.pid == second_pid),
        "{state:?}"
    );
    let stop = env.run(&["stop", "--port", &p]);
    assert_eq!(stop.code(), Some(0), "{stop:?}");
    second.wait();
    drop(group);
}
