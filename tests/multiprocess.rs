//! Real processes contending for one port. The test binary re-invokes itself
//! as the worker (`LLMLB_TEST_ROLE`), so no extra binary is shipped. The
//! fork tests are Unix's (Windows has no fork); the rest run everywhere.

use std::fs::OpenOptions;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

#[path = "support/spawn.rs"]
mod spawn;

use llmlb::lock::{acquire_or_reclaim, LockDir, LockError, LockState};

const ROLE: &str = "LLMLB_TEST_ROLE";
const DIR: &str = "LLMLB_TEST_DIR";
const PORT: u16 = 42424;
const ROUNDS: usize = 200;
const PROCESSES: usize = 8;

/// Kills the child if the test fails before waiting for it.
struct Reaper(Option<Child>);
impl Drop for Reaper {
    fn drop(&mut self) {
        if let Some(child) = self.0.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn spawn_self(test_name: &str, role: &str, dir: &Path) -> Child {
    spawn::spawn(
        Command::new(std::env::current_exe().unwrap())
            // --include-ignored: a test ignored on this platform still plays
            // its worker role when run with --include-ignored.
            .args(["--exact", test_name, "--nocapture", "--test-threads=1"])
            .arg("--include-ignored")
            .env(ROLE, role)
            .env(DIR, dir)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit()),
    )
    .expect("re-invoke test binary")
}

fn role() -> Option<(String, PathBuf)> {
    Some((
        std::env::var(ROLE).ok()?,
        PathBuf::from(std::env::var_os(DIR)?),
    ))
}

/// Worker: `ROUNDS` times take the port, prove exclusivity with an O_EXCL
/// marker in the shared dir, count the round, release. Exit 3 on overlap.
fn contend(dir: &Path) -> ! {
    let locks = LockDir::create(dir.join("locks")).unwrap();
    let marker = dir.join("critical-section");
    let mut done = 0;
    // Only against hangs: under Wine on a loaded machine the rounds can take
    // minutes (every lock call goes through the wineserver).
    let deadline = Instant::now() + Duration::from_secs(900);
    while done < ROUNDS {
        assert!(Instant::now() < deadline, "worker starved");
        let guard = match acquire_or_reclaim(&locks, PORT) {
            Ok(g) => g,
            Err(LockError::AlreadyRunning { .. } | LockError::Busy { .. }) => {
                std::thread::sleep(Duration::from_micros(200));
                continue;
            }
            Err(e) => panic!("acquire: {e}"),
        };
        assert!(!guard.was_reclaimed(), "nobody crashed, nothing to reclaim");
        if OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&marker)
            .is_err()
        {
            eprintln!("overlap: marker already present while holding the lock");
            std::process::exit(3);
        }
        let mut log = OpenOptions::new()
            .append(true)
            .create(true)
            .open(dir.join("rounds"))
            .unwrap();
        log.write_all(b"x").unwrap();
        std::thread::yield_now();
        std::fs::remove_file(&marker).unwrap();
        guard.release().unwrap();
        done += 1;
    }
    std::process::exit(0);
}

/// Also the regression test for Windows' release race (issue 10): an acquire
/// that met a releasing holder's `DeleteFile` failed with a sharing violation
/// (os error 32) instead of retrying; under Wine with two CPU hogs, one run
/// in two failed that way.
#[test]
fn eight_processes_never_overlap() {
    if let Some((role, dir)) = role() {
        assert_eq!(role, "contend");
        contend(&dir);
    }
    let _children = WITH_CHILDREN.lock().unwrap_or_else(|e| e.into_inner());
    let tmp = tempfile::tempdir().unwrap();
    let mut workers: Vec<Reaper> = (0..PROCESSES)
        .map(|_| {
            Reaper(Some(spawn_self(
                "eight_processes_never_overlap",
                "contend",
                tmp.path(),
            )))
        })
        .collect();
    for worker in &mut workers {
        let status = worker.0.take().unwrap().wait().unwrap();
        assert_eq!(
            status.code(),
            Some(0),
            "a worker saw an overlap or failed: {status}"
        );
    }
    let rounds = std::fs::read(tmp.path().join("rounds")).unwrap();
    assert_eq!(
        rounds.len(),
        PROCESSES * ROUNDS,
        "every round ran exactly once"
    );
    let dir = LockDir::existing(tmp.path().join("locks"))
        .unwrap()
        .unwrap();
    assert_eq!(dir.probe(PORT).unwrap(), LockState::Free);
    assert!(
        !dir.lock_path(PORT).exists(),
        "the last release removed the file"
    );
}

/// Worker: take the port, say so, then wait to be killed (at most 60 s, so
/// a failing test cannot leave it behind for long).
fn hold(dir: &Path) -> ! {
    let locks = LockDir::create(dir.join("locks")).unwrap();
    let guard = acquire_or_reclaim(&locks, PORT).unwrap();
    println!("held {}", guard.info().pid);
    std::io::stdout().flush().unwrap();
    std::thread::sleep(Duration::from_secs(60));
    drop(guard);
    std::process::exit(1);
}

#[test]
fn sigkilled_holder_is_reclaimed_with_its_pid() {
    if let Some((role, dir)) = role() {
        assert_eq!(role, "hold");
        hold(&dir);
    }
    let _children = WITH_CHILDREN.lock().unwrap_or_else(|e| e.into_inner());
    let tmp = tempfile::tempdir().unwrap();
    let mut holder = Reaper(Some(spawn_self(
        "sigkilled_holder_is_reclaimed_with_its_pid",
        "hold",
        tmp.path(),
    )));
    let child = holder.0.as_mut().unwrap();
    let child_pid = child.id();
    // One reader for the whole stream: the harness prints its own lines first,
    // and a second BufReader would lose whatever the first had buffered.
    let mut reader = BufReader::new(child.stdout.take().unwrap());
    // The harness's "test … ... " prefix may share the line with ours.
    let mut line = String::new();
    while !line.contains("held ") {
        line.clear();
        assert!(
            reader.read_line(&mut line).unwrap() > 0,
            "holder exited early"
        );
    }
    let reported = line[line.find("held ").unwrap() + 5..].trim();
    assert_eq!(reported, child_pid.to_string());

    let dir = LockDir::create(tmp.path().join("locks")).unwrap();
    match acquire_or_reclaim(&dir, PORT) {
        Err(LockError::AlreadyRunning {
            holder: Some(info), ..
        }) => assert_eq!(info.pid, child_pid),
        other => panic!("expected AlreadyRunning by {child_pid}, got {other:?}"),
    }

    child.kill().unwrap(); // SIGKILL / TerminateProcess: no cleanup runs
    child.wait().unwrap();
    holder.0 = None;

    match dir.probe(PORT).unwrap() {
        LockState::Stale(Some(info)) => assert_eq!(info.pid, child_pid),
        other => panic!("expected stale lock of {child_pid}, got {other:?}"),
    }
    let guard = acquire_or_reclaim(&dir, PORT).unwrap();
    assert!(guard.was_reclaimed());
    assert_eq!(guard.reclaimed_from().map(|i| i.pid), Some(child_pid));
    assert_eq!(guard.info().pid, std::process::id());
    guard.release().unwrap();
    assert_eq!(dir.probe(PORT).unwrap(), LockState::Free);
}

#[cfg(unix)]
struct CloseOnDrop(libc::c_int);
#[cfg(unix)]
impl Drop for CloseOnDrop {
    fn drop(&mut self) {
        // SAFETY: closing a descriptor this test owns, once.
        unsafe { libc::close(self.0) };
    }
}

#[cfg(unix)]
fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Held by each test here for as long as it has children. A fork (and a
/// spawn, until its exec) copies every descriptor of this process, other
/// tests' locks included: a child of one test shares another test's lock
/// for a while, and an owner's release that meets it rightly leaves the
/// lock to it. The tests here are about their own children only.
static WITH_CHILDREN: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[cfg(unix)]
fn held_by(dir: &LockDir) -> Option<u32> {
    match dir.probe(PORT).unwrap() {
        LockState::Held(Some(info)) => Some(info.pid),
        _ => None,
    }
}

/// Whether a tmp cleaner could lock the lock dir now: util-linux
/// `flock -xn` on it, as systemd-tmpfiles locks a directory before it
/// cleans it (a holder keeps a shared lock on it).
#[cfg(unix)]
fn cleaner_may_lock(dir: &LockDir) -> bool {
    let out = Command::new("flock")
        .arg("-xn")
        .arg(dir.path())
        .arg("true")
        .output()
        .expect("run flock (util-linux)");
    match out.status.code() {
        Some(0) => true,
        Some(1) => false,
        _ => panic!("flock -xn {}: {out:?}", dir.path().display()),
    }
}

/// A forked child that drops its inherited guard only closes its descriptor:
/// the parent keeps the lock and its file, and its shared lock on the dir
/// (the child shares that description, and must not unlock it).
#[cfg(unix)]
#[test]
fn forked_child_drop_leaves_parent_lock_alone() {
    let _children = WITH_CHILDREN.lock().unwrap_or_else(|e| e.into_inner());
    let tmp = tempfile::tempdir().unwrap();
    let dir = LockDir::create(tmp.path().join("locks")).unwrap();
    let guard = acquire_or_reclaim(&dir, PORT).unwrap();
    // SAFETY: the child only drops the guard (getpid + close) and _exits.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed");
    if pid == 0 {
        drop(guard);
        unsafe { libc::_exit(0) };
    }
    let mut status = 0;
    // SAFETY: waiting for our own child.
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0);
    assert!(
        dir.lock_path(PORT).exists(),
        "child must not unlink the parent's file"
    );
    assert_eq!(held_by(&dir), Some(std::process::id()));
    assert!(acquire_or_reclaim(&dir, PORT)
        .unwrap_err()
        .is_already_running());
    assert!(!cleaner_may_lock(&dir), "the child's drop unlocked the dir");
    guard.release().unwrap();
    assert_eq!(dir.probe(PORT).unwrap(), LockState::Free);
    assert!(
        cleaner_may_lock(&dir),
        "the dir stays locked after the release"
    );
}

/// Daemonizing hand-off: the child adopts, the parent's release only closes,
/// the child stays the recorded holder and its release removes the file.
#[cfg(unix)]
#[test]
fn forked_child_adopts_and_parent_release_only_closes() {
    let _children = WITH_CHILDREN.lock().unwrap_or_else(|e| e.into_inner());
    let tmp = tempfile::tempdir().unwrap();
    let dir = LockDir::create(tmp.path().join("locks")).unwrap();
    let mut guard = acquire_or_reclaim(&dir, PORT).unwrap();
    let mut fds = [0; 2];
    // SAFETY: fds is a valid array of two ints.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    // SAFETY: the child adopts (one small write), waits on the pipe, checks
    // the lock, releases and _exits without returning into the test harness.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed");
    if pid == 0 {
        // Closing our copy of the write end means a dead parent reads as EOF.
        unsafe { libc::close(fds[1]) };
        let mut ok = guard.adopt().is_ok() && guard.is_owner();
        let mut byte = 0u8;
        unsafe { libc::read(fds[0], (&mut byte as *mut u8).cast(), 1) };
        ok &= held_by(&dir) == Some(std::process::id());
        ok &= guard.release().is_ok();
        ok &= !dir.lock_path(PORT).exists();
        unsafe { libc::_exit(if ok { 0 } else { 1 }) };
    }
    // SAFETY: closing the read end we do not use.
    unsafe { libc::close(fds[0]) };
    // If an assertion below fails, closing the write end lets the child see
    // EOF and exit instead of waiting forever.
    let release_child = CloseOnDrop(fds[1]);
    let child = u32::try_from(pid).unwrap();
    wait_for("the child to adopt", || held_by(&dir) == Some(child));
    assert!(!guard.is_owner());
    guard.release().unwrap();
    assert!(
        dir.lock_path(PORT).exists(),
        "parent must not remove the adopted file"
    );
    assert_eq!(held_by(&dir), Some(child), "the child still holds");
    assert!(
        !cleaner_may_lock(&dir),
        "the parent's release unlocked the dir the child holds a port in"
    );
    drop(release_child); // EOF: the child goes on

    let mut status = 0;
    // SAFETY: waiting for our own child.
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    assert!(libc::WIFEXITED(status), "child died: {status}");
    assert_eq!(
        libc::WEXITSTATUS(status),
        0,
        "child's view of the hand-off was wrong"
    );
    assert_eq!(dir.probe(PORT).unwrap(), LockState::Free);
    assert!(cleaner_may_lock(&dir), "the dir stays locked after both");
}
