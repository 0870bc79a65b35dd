//! Shared helpers for the `llmlb` end-to-end tests: a private lock dir and a
//! free port per test, process guards that kill on drop, and polling waits
//! with generous deadlines (never timing assertions). Signals, process
//! groups and `/proc` helpers are Unix-only.
#![allow(dead_code)] // each test file uses a different subset

#[path = "../support/spawn.rs"]
mod spawn;

use std::fs::File;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Upper bound for anything to happen; only guards against hangs.
pub const PATIENCE: Duration = Duration::from_secs(15);

/// A free TCP port on 127.0.0.1, never one this process handed out before,
/// and below Linux's ephemeral range (32768–60999): a `bind(0)` elsewhere
/// (a test's own squatter, a client's source port) never lands on it, and two
/// tests running side by side never share one (one test's server would be
/// found listening on another's port). Checked free by binding it.
pub fn free_port() -> u16 {
    use std::sync::atomic::AtomicU16;
    const FIRST: u16 = 20_000;
    const SPAN: u16 = 12_000;
    // Spread by PID, so test binaries run one after another start apart.
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let start = (std::process::id() % u32::from(SPAN)) as u16;
    for _ in 0..SPAN {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = FIRST + (start.wrapping_add(n) % SPAN);
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port in {FIRST}..{}", FIRST + SPAN);
}

/// A private temp dir with the lock dir `<tmp>/locks` (created by `serve`).
pub struct Env {
    pub tmp: tempfile::TempDir,
    pub locks: PathBuf,
    counter: AtomicUsize,
}

impl Env {
    pub fn new() -> Env {
        let tmp = tempfile::tempdir().unwrap();
        let locks = tmp.path().join("locks");
        Env {
            tmp,
            locks,
            counter: AtomicUsize::new(0),
        }
    }

    /// The lock file of `port`.
    pub fn lock_file(&self, port: u16) -> PathBuf {
        self.locks.join(format!("serve_{port}.lock"))
    }

    /// `llmlb ARGS` with this env's lock dir in `LLMLB_LOCK_DIR` and no
    /// inherited llmlb settings.
    pub fn cmd(&self, args: &[&str]) -> Command {
        self.program_cmd(env!("CARGO_BIN_EXE_llmlb").as_ref(), args)
    }

    /// `program ARGS` with the settings of [`cmd`](Self::cmd) (another
    /// program that runs serve's life: a launcher over the C ABI).
    pub fn program_cmd(&self, program: &std::ffi::OsStr, args: &[&str]) -> Command {
        let mut cmd = Command::new(program);
        cmd.args(args)
            .env("LLMLB_LOCK_DIR", &self.locks)
            .env("LLMLB_LOG_LEVEL", "info")
            .env_remove("RUST_LOG")
            .env_remove("LLMLB_PORT")
            .env_remove("LLMLB_HOST")
            // A test runner started by a service manager must not have the
            // servers it spawns report to that manager (MAINPID would name
            // them); tests that play the manager set their own socket.
            .env_remove("NOTIFY_SOCKET")
            .env_remove("WATCHDOG_USEC")
            .env_remove("WATCHDOG_PID")
            .current_dir(self.tmp.path())
            .stdin(Stdio::null());
        cmd
    }

    /// Runs `llmlb ARGS` to completion (killed after [`PATIENCE`]).
    pub fn run(&self, args: &[&str]) -> Output {
        self.spawn(args).finish()
    }

    /// Starts `llmlb ARGS` with stdout/stderr captured in files.
    pub fn spawn(&self, args: &[&str]) -> Proc {
        self.spawn_cmd(self.cmd(args))
    }

    /// Starts `cmd` with stdout/stderr captured in files.
    pub fn spawn_cmd(&self, mut cmd: Command) -> Proc {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let out = self.tmp.path().join(format!("proc{n}.out"));
        let err = self.tmp.path().join(format!("proc{n}.err"));
        cmd.stdout(File::create(&out).unwrap())
            .stderr(File::create(&err).unwrap());
        let child = spawn::spawn(&mut cmd).expect("spawn llmlb");
        Proc {
            child: Some(child),
            out,
            err,
        }
    }

    /// `llmlb serve --port PORT --host 127.0.0.1`, waited until `/health`
    /// answers.
    pub fn serve(&self, port: u16) -> Proc {
        let mut p = self.spawn(&["serve", "--port", &port.to_string(), "--host", "127.0.0.1"]);
        p.wait_health(port);
        p
    }
}

/// What a finished process left.
#[derive(Debug)]
pub struct Output {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    pub fn code(&self) -> Option<i32> {
        self.status.code()
    }
}

/// A spawned process, killed (SIGKILL) and reaped on drop if still running.
pub struct Proc {
    child: Option<Child>,
    out: PathBuf,
    err: PathBuf,
}

impl Proc {
    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    pub fn stdout(&self) -> String {
        std::fs::read_to_string(&self.out).unwrap_or_default()
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.err).unwrap_or_default()
    }

    /// Exit status if it has exited.
    /// Kills it (SIGKILL; TerminateProcess on Windows) and reaps it.
    pub fn kill(&mut self) -> ExitStatus {
        let child = self.child.as_mut().unwrap();
        child.kill().unwrap();
        child.wait().unwrap()
    }

    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        self.child.as_mut().unwrap().try_wait().unwrap()
    }

    /// Waits for exit (panics after [`PATIENCE`]).
    pub fn wait(&mut self) -> ExitStatus {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(status) = self.try_wait() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "process {} did not exit; stderr:\n{}",
                self.pid(),
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits for exit and collects the output.
    pub fn finish(mut self) -> Output {
        let status = self.wait();
        Output {
            status,
            stdout: self.stdout(),
            stderr: self.stderr(),
        }
    }

    /// Polls `GET /health` until 200; panics if the process exits first or
    /// after [`PATIENCE`]. Returns the body.
    pub fn wait_health(&mut self, port: u16) -> String {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some((200, body)) = http_get(port, "/health") {
                return body;
            }
            if let Some(status) = self.try_wait() {
                panic!(
                    "serve exited ({status}) before answering; stderr:\n{}",
                    self.stderr()
                );
            }
            assert!(Instant::now() < deadline, "no /health on port {port}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            if child.try_wait().ok().flatten().is_none() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

/// Kills a whole process group on drop (exec-mode children and grandchildren).
#[cfg(unix)]
pub struct GroupGuard(pub Option<u32>);

#[cfg(unix)]
impl Drop for GroupGuard {
    fn drop(&mut self) {
        if let Some(pgid) = self.0 {
            if pgid > 1 {
                // SAFETY: kill(2) with a negative pgid > 1 targets one group.
                unsafe { libc::kill(-(pgid as libc::pid_t), libc::SIGKILL) };
            }
        }
    }
}

/// `GET path` over HTTP/1.0: `(status, body)`, `None` if it cannot connect.
pub fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
    let mut resp = String::new();
    s.read_to_string(&mut resp).ok()?;
    let status = resp.split_whitespace().nth(1)?.parse().ok()?;
    let body = resp.split_once("\r\n\r\n").map(|(_, b)| b.to_owned())?;
    Some((status, body))
}

/// Sends `sig` to `pid`.
#[cfg(unix)]
pub fn signal(pid: u32, sig: libc::c_int) {
    // SAFETY: plain kill(2) to one positive pid.
    let rc = unsafe { libc::kill(pid as libc::pid_t, sig) };
    assert_eq!(rc, 0, "kill({pid}, {sig})");
}

/// This test process as llmlb names a listener on Linux: `PID N (comm)`
/// (`/proc/self/comm`: the main thread's name, as `/proc/<pid>/comm` reads).
pub fn this_process() -> String {
    let comm = std::fs::read_to_string("/proc/self/comm").unwrap_or_default();
    format!("PID {} ({})", std::process::id(), comm.trim_end())
}

/// Whether `pid` is a live (non-zombie) process.
#[cfg(unix)]
pub fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            let state = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().next());
            !matches!(state, Some("Z") | Some("X"))
        }
        Err(_) => false,
    }
}

/// The process group of `pid` (`/proc/<pid>/stat` field 5).
#[cfg(unix)]
pub fn pgid_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    rest.split_whitespace().nth(2)?.parse().ok()
}

/// Polls `cond` until true; panics with `what` after [`PATIENCE`].
pub fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Reads a file written by a test shell once it has a complete line.
pub fn read_when_written(path: &Path) -> String {
    let mut text = String::new();
    wait_until(&format!("{}", path.display()), || {
        text = std::fs::read_to_string(path).unwrap_or_default();
        text.ends_with('\n')
    });
    text.trim().to_owned()
}

/// `llmlb status --format json [--port P]` parsed.
pub fn status_json(env: &Env, port: Option<u16>) -> (Option<i32>, serde_json::Value) {
    let mut args = vec!["status".to_owned(), "--format".into(), "json".into()];
    if let Some(p) = port {
        args.extend(["--port".into(), p.to_string()]);
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = env.run(&args);
    let value = serde_json::from_str(&out.stdout)
        .unwrap_or_else(|e| panic!("status json {e}: {:?} / {:?}", out.stdout, out.stderr));
    (out.code(), value)
}

/// Whether process `pid` is running (Windows): it can be opened and its
/// handle is not yet signalled. An exited process someone still has a handle
/// to can be opened, but its handle is signalled.
#[cfg(windows)]
pub fn running(pid: u32) -> bool {
    use windows_sys::Win32::Foundation::{CloseHandle, WAIT_TIMEOUT};
    use windows_sys::Win32::System::Threading::{
        OpenProcess, WaitForSingleObject, PROCESS_SYNCHRONIZE,
    };
    // SAFETY: plain values in; a new handle or NULL out, closed below.
    let handle = unsafe { OpenProcess(PROCESS_SYNCHRONIZE, 0, pid) };
    if handle.is_null() {
        return false;
    }
    // SAFETY: the handle is open; a zero timeout only polls.
    let alive = unsafe { WaitForSingleObject(handle, 0) } == WAIT_TIMEOUT;
    // SAFETY: closes the handle opened above, once.
    unsafe { CloseHandle(handle) };
    alive
}

/// Field 22 (start time, clock ticks after boot) of `/proc/<pid>/stat`: the
/// identity token the library records for `pid` on Linux (only there).
#[cfg(unix)]
pub fn start_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let (_, fields) = stat.rsplit_once(')').unwrap();
    fields.split_whitespace().nth(19).unwrap().parse().unwrap()
}

/// This boot's id, as the library records it on Linux (only there).
#[cfg(unix)]
pub fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .unwrap()
        .trim()
        .to_owned()
}

/// This machine's host name, as the library records it.
#[cfg(unix)]
pub fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its whole length.
    assert_eq!(
        unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) },
        0
    );
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}
