//! `llmlb serve --replace` end to end, with real processes and real
//! clients (issue 19's contract):
//!
//! - a holder that offers a handover (HTTP mode; exec mode with a passed
//!   socket) hands its lock and listening socket over: a request it had
//!   accepted, still arriving when the drain begins, is answered by it; the
//!   successor answers the rest; the old one exits 0, recorded as
//!   `draining` until then; nothing is refused meanwhile;
//! - a holder that offers none (exec mode without a socket, the Python
//!   launcher, a holder whose control socket never answers) is stopped as
//!   `llmlb stop` stops it, and the successor serves;
//! - a holder on another host is refused: exit 1, nothing signalled;
//! - a second replace while one is pending is refused as busy; a pending
//!   replace interrupted by SIGTERM or SIGINT gives the port back, and the
//!   old server serves on under its own record;
//! - the control socket answers a peer of another user, a garbage line, an
//!   unknown op and another protocol version with an error line, and a
//!   stalled peer blocks nothing.
//!
//! Which process accepted a connection is read from `/proc` (the accepted
//! socket's inode among the server's descriptors), and the control socket's
//! owner from `SO_PEERCRED`: Linux only.
#![cfg(target_os = "linux")]

mod cli_support;
#[path = "../ffi/tests/support/mod.rs"]
mod ffi_support;
#[path = "support/servers.rs"]
mod servers;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cli_support::*;
use ffi_support::prereq;
use llmlb::lock::{LockInfo, ServeState};
use servers::Server;

/// The socket-activated test server (also used by the benchmark).
const ACTIVATED_HTTP: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/support/activated_http.py"
);

/// A command for the Python launcher: prints `ready`, then runs until
/// SIGTERM, exiting 0.
const UNTIL_TERM: &str = "trap 'exit 0' TERM; echo ready; while :; do sleep 0.05; done";

/// A holder built on the Python package that offers a control socket and
/// never answers on it (an older or broken protocol peer): it takes the
/// lock, binds `serve_<port>.ctl` itself (a successor checks that the
/// socket's owner is the recorded holder), accepts and keeps every
/// connection unanswered. SIGTERM releases and exits 0, as a server would.
const SILENT_HOLDER_PY: &str = r#"
import os, signal, socket, sys
from llmlb_lock import PortLock
port = int(sys.argv[1])
lock_dir = os.environ["LLMLB_LOCK_DIR"]
lock = PortLock(port, lock_dir).acquire()
ctl = os.path.join(lock_dir, "serve_%d.ctl" % port)
server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
server.bind(ctl)
server.listen(16)
def stop(signum, frame):
    server.close()
    os.unlink(ctl)
    lock.release()
    os._exit(0)
signal.signal(signal.SIGTERM, stop)
print("ready", flush=True)
peers = []
while True:
    peers.append(server.accept()[0])
"#;

/// A control-socket peer: connects to argv[1], sends argv[2] and a newline,
/// prints the reply line and how many descriptors came with it, as JSON.
const PEER_PY: &str = r#"
import array, json, socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.settimeout(10)
s.connect(sys.argv[1])
try:
    s.sendall(sys.argv[2].encode() + b"\n")
except (BrokenPipeError, ConnectionResetError):
    pass  # a peer it refuses is answered and dropped before it has asked
data, fds = b"", 0
while not data.endswith(b"\n"):
    chunk, anc, flags, addr = s.recvmsg(4096, socket.CMSG_SPACE(16 * 4))
    for level, kind, payload in anc:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds += len(payload) // 4
    if not chunk:
        break
    data += chunk
print(json.dumps({"reply": data.decode(), "fds": fds}))
"#;

// ---------------------------------------------------------------- helpers

/// `python3`; the test fails without it.
fn python3() -> String {
    ffi_support::python3()
}

/// The lock record of `port`, if the file parses.
fn record(env: &Env, port: u16) -> Option<LockInfo> {
    LockInfo::parse(&std::fs::read(env.lock_file(port)).ok()?)
}

/// Polls the record until `pred` holds; panics after [`PATIENCE`] with the
/// last record seen and `procs`' stderr.
fn wait_record(
    env: &Env,
    port: u16,
    what: &str,
    procs: &[&Proc],
    pred: impl Fn(&LockInfo) -> bool,
) -> LockInfo {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let seen = record(env, port);
        if let Some(info) = seen.as_ref().filter(|i| pred(i)) {
            return info.clone();
        }
        if Instant::now() > deadline {
            let errs: Vec<String> = procs
                .iter()
                .map(|p| format!("PID {}:\n{}", p.pid(), p.stderr()))
                .collect();
            panic!(
                "timed out waiting for the record: {what}; last seen: {seen:?}\n{}",
                errs.join("\n")
            );
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// `<lock dir>/serve_<port>.ctl`.
fn ctl_path(env: &Env, port: u16) -> PathBuf {
    env.locks.join(format!("serve_{port}.ctl"))
}

/// The PID that listens on the control socket at `path` (`SO_PEERCRED`),
/// if it can be connected to. The holder's peer thread sees the connection
/// end at once and answers nothing.
fn ctl_owner(path: &Path) -> Option<u32> {
    let stream = UnixStream::connect(path).ok()?;
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: a valid socket, and a ucred buffer of the length passed.
    let rc = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    (rc == 0).then_some(cred.pid as u32)
}

/// Waits until `pid` owns the control socket of `port`.
fn wait_ctl_owner(env: &Env, port: u16, pid: u32) {
    let path = ctl_path(env, port);
    let mut last = None;
    let deadline = Instant::now() + PATIENCE;
    while last != Some(pid) {
        assert!(
            Instant::now() < deadline,
            "the control socket of port {port} is not PID {pid}'s (owner: {last:?})"
        );
        std::thread::sleep(Duration::from_millis(5));
        last = ctl_owner(&path);
    }
}

/// The parent PID of `pid` (`/proc/<pid>/stat` field 4).
fn ppid(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// Waits for the process to exit and returns its code, printing its stderr
/// if it is not `expected`.
fn assert_exit(proc: &mut Proc, expected: i32, who: &str) {
    let status = proc.wait();
    assert_eq!(
        status.code(),
        Some(expected),
        "{who} (PID {}) exited {status}; stderr:\n{}",
        proc.pid(),
        proc.stderr()
    );
}

/// `proc` died of `sig` (what a shell reports as 128 + `sig`).
fn assert_died_of(proc: &mut Proc, sig: libc::c_int, who: &str) {
    let status = proc.wait();
    assert_eq!(
        status.signal(),
        Some(sig),
        "{who} (PID {}) exited {status}; stderr:\n{}",
        proc.pid(),
        proc.stderr()
    );
}

/// One GET over HTTP/1.0 with a generous read timeout: `(status, body)`,
/// or what went wrong.
fn get(port: u16, path: &str) -> Result<(u16, serde_json::Value), String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(PATIENCE)).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        .map_err(|e| format!("send: {e}"))?;
    read_response(&mut s)
}

fn read_response(s: &mut TcpStream) -> Result<(u16, serde_json::Value), String> {
    let mut resp = Vec::new();
    s.read_to_end(&mut resp)
        .map_err(|e| format!("read: {e} (after {} bytes)", resp.len()))?;
    let resp = String::from_utf8_lossy(&resp);
    let status = resp
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("no status line: {resp:?}"))?;
    let body = resp
        .split_once("\r\n\r\n")
        .map(|(_, b)| b)
        .ok_or_else(|| format!("no body: {resp:?}"))?;
    let json = serde_json::from_str(body).map_err(|e| format!("body {body:?}: {e}"))?;
    Ok((status, json))
}

/// The PID that answers `GET path` on `port` (`pid` of the JSON body).
fn answering_pid(port: u16, path: &str) -> Result<u32, String> {
    match get(port, path)? {
        (200, json) => json["pid"]
            .as_u64()
            .map(|p| p as u32)
            .ok_or_else(|| format!("no pid in {json}")),
        (code, json) => Err(format!("{code}: {json}")),
    }
}

/// Polls until a GET is answered by a process `pred` accepts; returns its
/// PID. `proc` exiting first is a failure.
fn wait_answer(port: u16, path: &str, proc: &mut Proc, pred: impl Fn(u32) -> bool) -> u32 {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let answer = answering_pid(port, path);
        if let Ok(pid) = answer {
            if pred(pid) {
                return pid;
            }
        }
        if let Some(status) = proc.try_wait() {
            panic!(
                "PID {} exited ({status}); stderr:\n{}",
                proc.pid(),
                proc.stderr()
            );
        }
        assert!(
            Instant::now() < deadline,
            "port {port}: no expected answer; last: {answer:?}; stderr of PID {}:\n{}",
            proc.pid(),
            proc.stderr()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A request that arrives in two parts: what the test sends at once, the
/// rest when it says.
struct SlowRequest {
    stream: TcpStream,
    port: u16,
    rest: String,
}

impl SlowRequest {
    /// Connects and sends the request line and the `Host` header, all but
    /// the blank line that ends the headers.
    fn start(port: u16, path: &str) -> SlowRequest {
        let request = format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n");
        SlowRequest::split(port, &request, request.len() - 2)
    }

    /// Connects and sends nothing yet.
    fn connect(port: u16, path: &str) -> SlowRequest {
        let request = format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n");
        SlowRequest::split(port, &request, 0)
    }

    fn split(port: u16, request: &str, at: usize) -> SlowRequest {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
        stream.set_read_timeout(Some(PATIENCE)).unwrap();
        stream.write_all(&request.as_bytes()[..at]).unwrap();
        SlowRequest {
            stream,
            port,
            rest: request[at..].to_owned(),
        }
    }

    /// Whether process `pid` has accepted this connection: the server end's
    /// socket (found in `/proc/net/tcp` by the two ports) is one of its
    /// descriptors. A connection still in the listen queue has no inode.
    fn accepted_by(&self, pid: u32) -> bool {
        let client = self.stream.local_addr().unwrap().port();
        let Some(inode) = server_socket_inode(self.port, client) else {
            return false;
        };
        let target = format!("socket:[{inode}]");
        let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
            return false;
        };
        fds.flatten()
            .any(|fd| std::fs::read_link(fd.path()).is_ok_and(|l| l.to_string_lossy() == target))
    }

    /// Waits until `pid` has accepted it.
    fn wait_accepted_by(&self, pid: u32) {
        wait_until(&format!("PID {pid} to accept the slow request"), || {
            self.accepted_by(pid)
        });
    }

    /// Sends the rest and reads the answer.
    fn finish(mut self) -> Result<(u16, serde_json::Value), String> {
        self.stream
            .write_all(self.rest.as_bytes())
            .map_err(|e| format!("send the rest: {e}"))?;
        read_response(&mut self.stream)
    }
}

/// How many of `pid`'s descriptors are the listening socket of `port`.
fn listener_fds(pid: u32, port: u16) -> usize {
    let local = format!(":{port:04X}");
    let mut targets = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            // st 0A: LISTEN.
            if fields.len() > 9 && fields[1].ends_with(&local) && fields[3] == "0A" {
                targets.push(format!("socket:[{}]", fields[9]));
            }
        }
    }
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return 0;
    };
    fds.flatten()
        .filter(|fd| {
            std::fs::read_link(fd.path())
                .is_ok_and(|l| targets.iter().any(|t| l.to_string_lossy() == *t))
        })
        .count()
}

/// The inode of the server end of the loopback connection from `client` to
/// `port` (0 while it waits in the listen queue).
fn server_socket_inode(port: u16, client: u16) -> Option<u64> {
    let local = format!(":{port:04X}");
    let remote = format!(":{client:04X}");
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.len() > 9 && fields[1].ends_with(&local) && fields[2].ends_with(&remote) {
                let inode: u64 = fields[9].parse().ok()?;
                return (inode != 0).then_some(inode);
            }
        }
    }
    None
}

/// A client that sends `GET /health` (served by both `serve` and the test
/// server), one fresh connection each, until stopped, and
/// keeps every failure (refused, reset, timed out, not 200).
struct Hammer {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicUsize>,
    thread: Option<std::thread::JoinHandle<Vec<String>>>,
}

impl Hammer {
    /// Starts it and waits for its first success, so it runs through
    /// whatever the test does next.
    fn start(port: u16) -> Hammer {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicUsize::new(0));
        let (stopping, counted) = (Arc::clone(&stop), Arc::clone(&ok));
        let thread = std::thread::spawn(move || {
            let mut failed = Vec::new();
            while !stopping.load(Ordering::SeqCst) {
                match answering_pid(port, "/health") {
                    Ok(_) => {
                        counted.fetch_add(1, Ordering::SeqCst);
                    }
                    Err(e) => failed.push(e),
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            failed
        });
        let hammer = Hammer {
            stop,
            ok,
            thread: Some(thread),
        };
        hammer.wait_for_success();
        hammer
    }

    /// Waits until one more request than now has succeeded.
    fn wait_for_success(&self) {
        let before = self.ok.load(Ordering::SeqCst);
        wait_until("a client request to succeed", || {
            self.ok.load(Ordering::SeqCst) > before
        });
    }

    /// Lets one more request succeed after what the test did, stops, and
    /// asserts that no request failed.
    fn finish(mut self) {
        self.wait_for_success();
        self.stop.store(true, Ordering::SeqCst);
        let failed = self.thread.take().unwrap().join().unwrap();
        assert!(
            failed.is_empty(),
            "{} of {} requests failed: {failed:?}",
            failed.len(),
            failed.len() + self.ok.load(Ordering::SeqCst)
        );
    }
}

impl Drop for Hammer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// `llmlb serve --replace EXTRA -p PORT --host 127.0.0.1` (HTTP mode),
/// started.
fn spawn_replace(env: &Env, port: u16, extra: &[&str]) -> Proc {
    let p = port.to_string();
    let mut args = vec!["serve", "--replace"];
    args.extend_from_slice(extra);
    args.extend(["-p", &p, "--host", "127.0.0.1"]);
    env.spawn(&args)
}

/// `llmlb serve ARGS -p PORT --host 127.0.0.1 -- python3 activated_http.py`.
fn spawn_exec(env: &Env, port: u16, args: &[&str]) -> Proc {
    spawn_exec_by(Server::Cli, env, port, args)
}

/// [`spawn_exec`] run by `server`.
fn spawn_exec_by(server: Server, env: &Env, port: u16, args: &[&str]) -> Proc {
    let p = port.to_string();
    let py = python3();
    let mut all: Vec<&str> = args.to_vec();
    all.extend(["-p", &p, "--host", "127.0.0.1", "--", &py, ACTIVATED_HTTP]);
    env.spawn_cmd(server.cmd(env, &all))
}

/// Starts an exec-mode holder with a passed socket and waits until its
/// Python answers and it offers a handover; returns the Python's PID and a
/// guard on its group.
fn start_exec_holder(env: &Env, port: u16) -> (Proc, u32, GroupGuard) {
    start_exec_holder_by(Server::Cli, env, port)
}

/// [`start_exec_holder`] run by `server`.
fn start_exec_holder_by(server: Server, env: &Env, port: u16) -> (Proc, u32, GroupGuard) {
    let mut old = spawn_exec_by(server, env, port, &["--pass-socket"]);
    let old_pid = old.pid();
    let py = wait_answer(port, "/", &mut old, |pid| ppid(pid) == Some(old_pid));
    let guard = GroupGuard(pgid_of(py));
    wait_record(env, port, "the holder ready", &[&old], |r| {
        r.pid == old_pid && r.state == Some(ServeState::Ready)
    });
    wait_ctl_owner(env, port, old_pid);
    (old, py, guard)
}

/// `llmlb stop -p PORT` succeeds, the server exits 0, and neither the lock
/// file nor the control socket is left.
fn stop_cleanly(env: &Env, port: u16, server: &mut Proc) {
    let out = env.run(&["stop", "-p", &port.to_string()]);
    assert_eq!(out.code(), Some(0), "{out:?}");
    assert_exit(server, 0, "the stopped server");
    assert!(!env.lock_file(port).exists(), "the lock file is left");
    assert!(!ctl_path(env, port).exists(), "the control socket is left");
}

/// The one line a replace prints before it takes the fallback, for a
/// holder PID `pid` that offers no handover because it `why`.
fn fallback_line(port: u16, pid: u32, why: &str) -> String {
    format!(
        "Port {port} is held by PID {pid}, which offers no handover: it {why}; stopping it, \
         then taking the port (connections are refused until this server listens)"
    )
}

/// A replace (HTTP mode) of the holder `holder_pid`, which offers no
/// handover because it `why`: one fallback line, then exactly `stop`'s
/// messages, then the new server serves.
fn replace_takes_the_fallback(
    env: &Env,
    port: u16,
    holder_pid: u32,
    why: &str,
    timeout: &str,
) -> Proc {
    let p = port.to_string();
    let mut new = env.spawn(&[
        "serve",
        "--replace",
        "--replace-timeout",
        timeout,
        "-p",
        &p,
        "--host",
        "127.0.0.1",
    ]);
    let health: serde_json::Value = serde_json::from_str(&new.wait_health(port)).unwrap();
    assert_eq!(health["pid"], new.pid());
    let stderr = new.stderr();
    let line = fallback_line(port, holder_pid, why);
    assert_eq!(
        stderr
            .lines()
            .filter(|l| l.starts_with("Port "))
            .collect::<Vec<_>>(),
        vec![line.as_str()],
        "stderr:\n{stderr}"
    );
    let stdout = new.stdout();
    let stopping = format!("Stopping server on port {port} (PID: {holder_pid})...");
    let lines: Vec<&str> = stdout.lines().collect();
    assert!(
        lines.len() >= 2 && lines[0] == stopping && lines[1].starts_with("Server stopped"),
        "stop's messages: {stdout:?}"
    );
    wait_record(env, port, "the new server ready", &[&new], |r| {
        r.pid == new.pid() && r.state == Some(ServeState::Ready)
    });
    new
}

// ------------------------------------------------------------------ tests

/// HTTP mode: a request the old server accepted, whose headers are still
/// arriving when it is told to drain, is answered by it; the record names
/// the new server at once and lists the old one as draining until it has
/// exited (0); the new server answers everything after, owns the control
/// socket, and leaves nothing behind when stopped.
#[test]
fn http_mode_hands_over_and_the_old_server_finishes_its_request() {
    let env = Env::new();
    let port = free_port();
    let mut old = env.serve(port);
    let old_pid = old.pid();
    wait_ctl_owner(&env, port, old_pid);
    // Fresh connections throughout: none may fail across the handover.
    let hammer = Hammer::start(port);

    let slow = SlowRequest::start(port, "/health");
    slow.wait_accepted_by(old_pid);
    let mut new = spawn_replace(&env, port, &[]);
    let new_pid = new.pid();
    wait_record(
        &env,
        port,
        "the new server, the old one draining",
        &[&old, &new],
        |r| r.pid == new_pid && r.draining == [old_pid],
    );
    // Held open by the request it has not finished.
    assert!(
        old.try_wait().is_none(),
        "the old server exited with a request in flight"
    );
    let (code, body) = slow.finish().expect("the slow request");
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["pid"], old_pid, "answered by the old server: {body}");
    assert_exit(&mut old, 0, "the old server");

    let info = wait_record(&env, port, "no longer draining", &[&new], |r| {
        r.pid == new_pid && r.draining.is_empty()
    });
    assert_eq!(info.state, Some(ServeState::Ready));
    assert_eq!(answering_pid(port, "/health"), Ok(new_pid));
    hammer.finish();
    assert!(env.lock_file(port).exists());
    wait_ctl_owner(&env, port, new_pid);
    assert_eq!(answering_pid(port, "/health"), Ok(new_pid));
    stop_cleanly(&env, port, &mut new);
}

/// HTTP mode: a connection the old server accepted before the drain, whose
/// request had not begun to arrive, is still served by it (the contract:
/// "a connection the old server accepted is served to completion by it,
/// including one whose request is still arriving when the drain begins").
///
/// The window this closes: `axum::serve` (hyper-util's protocol detection)
/// and hyper's own HTTP/1 graceful shutdown both closed such a connection
/// unanswered; serve's accept loop (`src/supervise/server/http.rs`) hands a connection
/// to hyper only once its first bytes are there.
#[test]
fn http_mode_old_server_answers_a_connection_accepted_before_its_request() {
    let env = Env::new();
    let port = free_port();
    let mut old = env.serve(port);
    let old_pid = old.pid();
    wait_ctl_owner(&env, port, old_pid);

    let early = SlowRequest::connect(port, "/health");
    early.wait_accepted_by(old_pid);
    // The HTTP server's copy of the socket, and the offer's.
    let listening = listener_fds(old_pid, port);
    let mut new = spawn_replace(&env, port, &[]);
    let new_pid = new.pid();
    wait_record(
        &env,
        port,
        "the new server, the old one draining",
        &[&old, &new],
        |r| r.pid == new_pid && r.draining == [old_pid],
    );
    // The request arrives once the old server has stopped accepting (closed
    // its HTTP server's copy of the socket): the drain has begun there.
    wait_until("the old server to stop accepting", || {
        listener_fds(old_pid, port) < listening
    });
    let answer = early.finish();
    assert!(
        matches!(&answer, Ok((200, body)) if body["pid"] == old_pid),
        "an accepted connection was not served by the old server: {answer:?}"
    );
    assert_exit(&mut old, 0, "the old server");
    stop_cleanly(&env, port, &mut new);
}

/// Exec mode with a passed socket: a client loop sees no failure across the
/// replace; requests in flight to the old command (headers half sent, or
/// nothing sent yet) are answered by it; the old llmlb exits 0 once its
/// command has finished, and the new command (started on the same socket)
/// serves. The same for the C and Python launchers (old and new alike),
/// which run serve's life through `llmlb_serve_exec`.
#[test]
fn exec_mode_hands_the_socket_to_the_new_command() {
    for server in Server::ALL {
        eprintln!("--- against {server:?}");
        exec_mode_hands_the_socket_to_the_new_command_by(server);
    }
}

fn exec_mode_hands_the_socket_to_the_new_command_by(server: Server) {
    let env = Env::new();
    let port = free_port();
    let (mut old, old_py, _old_group) = start_exec_holder_by(server, &env, port);
    let old_pid = old.pid();
    let hammer = Hammer::start(port);

    let slow = SlowRequest::start(port, "/slow");
    slow.wait_accepted_by(old_py);
    let early = SlowRequest::connect(port, "/early");
    early.wait_accepted_by(old_py);
    let mut new = spawn_exec_by(server, &env, port, &["--replace"]);
    let new_pid = new.pid();
    wait_record(
        &env,
        port,
        "the new server, the old one draining",
        &[&old, &new],
        |r| r.pid == new_pid && r.draining == [old_pid],
    );
    let (code, body) = slow.finish().expect("the slow request");
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["pid"], old_py, "answered by the old command: {body}");
    let (code, body) = early.finish().expect("the request sent after the drain");
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["pid"], old_py, "answered by the old command: {body}");
    assert_exit(&mut old, 0, "the old server");
    assert!(!alive(old_py), "the old command outlived its llmlb");

    let new_py = wait_answer(port, "/", &mut new, |pid| ppid(pid) == Some(new_pid));
    let _new_group = GroupGuard(pgid_of(new_py));
    let info = wait_record(&env, port, "no longer draining", &[&new], |r| {
        r.pid == new_pid && r.draining.is_empty()
    });
    assert_eq!(info.state, Some(ServeState::Ready));
    hammer.finish();
    wait_ctl_owner(&env, port, new_pid);
    stop_cleanly(&env, port, &mut new);
    assert!(!alive(new_py));
}

/// Exec mode without a passed socket offers no handover (nothing to hand):
/// the replace stops it as `stop` would and serves.
#[test]
fn fallback_for_exec_mode_without_a_socket() {
    let env = Env::new();
    let port = free_port();
    let p = port.to_string();
    let mut holder = env.spawn(&["serve", "-p", &p, "--", "sleep", "600"]);
    let info = wait_record(&env, port, "the holder's command", &[&holder], |r| {
        r.pid == holder.pid() && r.child_pgid.is_some()
    });
    let _group = GroupGuard(info.child_pgid);
    assert!(!ctl_path(&env, port).exists(), "an offer without a socket");

    let mut new = replace_takes_the_fallback(
        &env,
        port,
        holder.pid(),
        "has no control socket (an older llmlb, a launcher, or a command run without a passed socket)",
        "5",
    );
    holder.wait();
    assert!(
        !alive(info.child_pgid.unwrap()),
        "the holder's command survived"
    );
    stop_cleanly(&env, port, &mut new);
}

/// The Python launcher without a passed socket offers no handover, as
/// serve's exec mode (whose life it runs): stopped as `stop` would, then
/// replaced.
#[test]
fn fallback_for_the_python_launcher() {
    let env = Env::new();
    let port = free_port();
    let p = port.to_string();
    let launcher = Server::Python.cmd(&env, &[&p, "--", "sh", "-c", UNTIL_TERM]);
    let mut holder = env.spawn_cmd(launcher);
    let info = wait_record(&env, port, "the launcher's command", &[&holder], |r| {
        r.pid == holder.pid() && r.child_pgid.is_some()
    });
    let _group = GroupGuard(info.child_pgid);
    // Its command traps SIGTERM (and exits 0) from here on.
    wait_until("the launcher's command", || {
        holder.stdout().contains("ready")
    });

    let mut new = replace_takes_the_fallback(
        &env,
        port,
        holder.pid(),
        "has no control socket (an older llmlb, a launcher, or a command run without a passed socket)",
        "5",
    );
    assert_exit(&mut holder, 0, "the launcher");
    stop_cleanly(&env, port, &mut new);
}

/// A holder whose control socket accepts connections but never answers (a
/// stalled or broken peer) offers a handover that cannot be had *now*: the
/// replace waits `--replace-timeout`, then exits 1 naming the holder and
/// what it waited for, and signals nothing (the fallback `stop` is only for
/// holders without a control socket).
#[test]
fn a_holder_that_never_answers_is_waited_for_and_never_stopped() {
    let env = Env::new();
    let port = free_port();
    let mut cmd = Command::new(python3());
    cmd.args(["-c", SILENT_HOLDER_PY, &port.to_string()])
        .env("LLMLB_LOCK_DIR", &env.locks)
        .env("LLMLB_LOCK_LIB", ffi_support::shared_lib())
        .env("PYTHONPATH", ffi_support::repo_root().join("ffi/python"));
    let mut holder = env.spawn_cmd(cmd);
    wait_until("the silent holder", || {
        assert!(holder.try_wait().is_none(), "{}", holder.stderr());
        holder.stdout().contains("ready")
    });
    assert_eq!(record(&env, port).map(|r| r.pid), Some(holder.pid()));
    assert_eq!(ctl_owner(&ctl_path(&env, port)), Some(holder.pid()));

    let p = port.to_string();
    let out = env.run(&[
        "serve",
        "--replace",
        "--replace-timeout",
        "1",
        "-p",
        &p,
        "--host",
        "127.0.0.1",
    ]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let stderr = out.stderr.clone();
    assert!(
        stderr.contains(&format!(
            "PID {} holds port {port} and offers a handover, but it did not answer within 1s",
            holder.pid()
        )) && stderr.contains("stopped nothing"),
        "stderr:\n{stderr}"
    );
    assert!(
        !out.stdout.contains("Stopping"),
        "nothing is stopped: {out:?}"
    );
    assert!(holder.try_wait().is_none(), "the holder was not signalled");
    assert_eq!(record(&env, port).map(|r| r.pid), Some(holder.pid()));
    signal(holder.pid(), libc::SIGTERM);
    assert_exit(&mut holder, 0, "the silent holder");
}

/// A holder on another host (its flock held here by util-linux `flock`,
/// its record naming elsewhere) is one `stop` refuses: the replace exits 1
/// and signals nothing.
#[test]
fn a_holder_on_another_host_is_refused_and_not_signalled() {
    let env = Env::new();
    let port = free_port();
    llmlb::lock::LockDir::create(&env.locks).unwrap();
    let lock_file = env.lock_file(port);
    let mut flock = Command::new("flock");
    // A group of its own: flock forks `sleep`, which must not outlive the
    // test.
    flock
        .arg(&lock_file)
        .args(["sleep", "600"])
        .process_group(0);
    let mut holder = env.spawn_cmd(flock);
    let _group = GroupGuard(Some(holder.pid()));
    wait_until("flock to hold the lock", || {
        assert!(holder.try_wait().is_none(), "flock: {}", holder.stderr());
        matches!(
            llmlb::lock::probe(&env.locks, port),
            Ok(llmlb::lock::LockState::Held(_))
        )
    });
    let foreign = format!(
        r#"{{"pid":{},"started_at":"2026-01-30T12:00:00Z","port":{port},"host":"elsewhere.invalid"}}"#,
        holder.pid()
    );
    std::fs::write(&lock_file, &foreign).unwrap();

    let out = env.run(&[
        "serve",
        "--replace",
        "-p",
        &port.to_string(),
        "--host",
        "127.0.0.1",
    ]);
    assert_eq!(out.code(), Some(1), "{out:?}");
    // `stop`'s own refusal, word for word as `llmlb stop` prints it, and
    // nothing before it: no "stopping it" line for a holder stop refuses.
    let stop = env.run(&["stop", "-p", &port.to_string()]);
    assert_eq!(stop.code(), Some(1), "{stop:?}");
    assert!(stop.stderr.contains("nothing was signalled"), "{stop:?}");
    assert_eq!(
        out.stderr.trim_end(),
        stop.stderr.trim_end(),
        "{}",
        out.stderr
    );
    assert!(!out.stdout.contains("Stopping server"), "{}", out.stdout);
    assert!(
        holder.try_wait().is_none(),
        "the foreign holder was signalled"
    );
    assert_eq!(std::fs::read_to_string(&lock_file).unwrap(), foreign);
}

/// Starts a replace of an exec-mode holder whose command never becomes
/// ready (`--ready notify`, never notified), and waits until it holds the
/// port, `starting`.
fn start_pending_replace(env: &Env, port: u16, holder: &Proc) -> Proc {
    let p = port.to_string();
    let pending = env.spawn(&[
        "serve",
        "--replace",
        "--ready",
        "notify",
        "-p",
        &p,
        "--host",
        "127.0.0.1",
        "--",
        "sleep",
        "600",
    ]);
    wait_record(env, port, "the pending replace", &[holder, &pending], |r| {
        r.pid == pending.pid() && r.state == Some(ServeState::Starting)
    });
    pending
}

/// After an abandoned handover the old server serves on under its own
/// record, and a later replace succeeds.
fn old_serves_on_and_a_later_replace_succeeds(env: &Env, port: u16, mut old: Proc, old_py: u32) {
    let old_pid = old.pid();
    let info = wait_record(env, port, "the old server's record back", &[&old], |r| {
        r.pid == old_pid
    });
    assert_eq!(info.state, Some(ServeState::Ready), "{info:?}");
    assert!(info.draining.is_empty(), "{info:?}");
    assert_eq!(answering_pid(port, "/"), Ok(old_py));
    wait_ctl_owner(env, port, old_pid);

    let mut new = spawn_exec(env, port, &["--replace"]);
    let new_pid = new.pid();
    assert_exit(&mut old, 0, "the old server");
    let new_py = wait_answer(port, "/", &mut new, |pid| ppid(pid) == Some(new_pid));
    let _group = GroupGuard(pgid_of(new_py));
    wait_record(env, port, "the new server ready", &[&new], |r| {
        r.pid == new_pid && r.state == Some(ServeState::Ready) && r.draining.is_empty()
    });
    stop_cleanly(env, port, &mut new);
}

/// While one replace is pending, a second one is refused as busy (exit 1),
/// naming both; neither the holder nor the pending replace is touched.
///
/// The record already names the pending replace while the control socket
/// is still the holder's: the second replace must ask the holder anyway
/// (and hear "busy"), never take the fallback and stop the pending one.
#[test]
fn a_second_replace_while_one_is_pending_is_refused_as_busy() {
    let env = Env::new();
    let port = free_port();
    let (old, old_py, _old_group) = start_exec_holder(&env, port);
    let old_pid = old.pid();
    let mut first = start_pending_replace(&env, port, &old);
    let first_pid = first.pid();

    let out = env.run(&[
        "serve",
        "--replace",
        "-p",
        &port.to_string(),
        "--host",
        "127.0.0.1",
        "--",
        "sleep",
        "600",
    ]);
    assert_eq!(out.code(), Some(1), "{out:?}");
    assert_eq!(
        out.stderr.trim_end(),
        format!(
            "Error: another replace of port {port} is under way (PID {first_pid} is taking it \
             over from PID {old_pid}); try again once it has finished"
        ),
        "no busy reply; {out:?}"
    );
    assert!(!out.stdout.contains("Stopping"), "{out:?}");
    assert!(
        first.try_wait().is_none(),
        "the pending replace was stopped"
    );
    assert_eq!(record(&env, port).map(|r| r.pid), Some(first_pid));
    assert_eq!(answering_pid(port, "/"), Ok(old_py));

    signal(first_pid, libc::SIGTERM);
    assert_died_of(&mut first, libc::SIGTERM, "the pending replace");
    old_serves_on_and_a_later_replace_succeeds(&env, port, old, old_py);
}

/// SIGTERM or SIGINT to a replace that has received the port but is not
/// ready aborts it: its command dies of the signal and so does it (a shell
/// sees 128 + the signal), the old server never stopped serving and has its
/// record back.
fn a_signal_aborts_a_pending_replace(sig: libc::c_int) {
    let env = Env::new();
    let port = free_port();
    let (old, old_py, _old_group) = start_exec_holder(&env, port);
    let hammer = Hammer::start(port);
    let mut pending = start_pending_replace(&env, port, &old);
    assert_eq!(answering_pid(port, "/"), Ok(old_py));

    signal(pending.pid(), sig);
    assert_died_of(&mut pending, sig, "the interrupted replace");
    hammer.finish();
    old_serves_on_and_a_later_replace_succeeds(&env, port, old, old_py);
}

/// A replace whose command never becomes ready gives up at its
/// `--ready-timeout`: it exits 1 naming what it waited for, its command is
/// stopped, and the old server, which never stopped serving, has its port
/// and record back.
#[test]
fn a_replace_not_ready_in_time_gives_the_port_back() {
    let env = Env::new();
    let port = free_port();
    let (old, old_py, _old_group) = start_exec_holder(&env, port);
    let hammer = Hammer::start(port);
    let p = port.to_string();
    let mut pending = env.spawn(&[
        "serve",
        "--replace",
        "--ready",
        "notify",
        "--ready-timeout",
        "1.5",
        "-p",
        &p,
        "--host",
        "127.0.0.1",
        "--",
        "sleep",
        "600",
    ]);
    assert_exit(&mut pending, 1, "the replace that timed out");
    let stderr = pending.stderr();
    assert!(
        stderr.lines().any(|l| l.starts_with("Error: sleep (PID ")
            && l.contains("did not send READY=1 (--ready notify) within 1.5s (--ready-timeout)")),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!("gave port {port} back to PID {}", old.pid())),
        "{stderr}"
    );
    hammer.finish();
    old_serves_on_and_a_later_replace_succeeds(&env, port, old, old_py);
}

#[test]
fn sigterm_aborts_a_pending_replace() {
    a_signal_aborts_a_pending_replace(libc::SIGTERM);
}

#[test]
fn sigint_aborts_a_pending_replace() {
    a_signal_aborts_a_pending_replace(libc::SIGINT);
}

/// Sends `line` (and a newline) on a fresh connection to the control socket
/// and returns the reply line, parsed.
fn ctl_exchange(path: &Path, line: &str) -> serde_json::Value {
    let mut stream = UnixStream::connect(path).unwrap();
    stream.set_read_timeout(Some(PATIENCE)).unwrap();
    stream.write_all(format!("{line}\n").as_bytes()).unwrap();
    let mut reply = String::new();
    BufReader::new(stream).read_line(&mut reply).unwrap();
    serde_json::from_str(&reply).unwrap_or_else(|e| panic!("reply {reply:?}: {e}"))
}

/// Asserts an error reply whose message starts with `prefix`.
fn assert_refused(reply: &serde_json::Value, prefix: &str) {
    assert_eq!(reply["llmlb_handover"], 1, "{reply}");
    assert_eq!(reply["ok"], false, "{reply}");
    let error = reply["error"].as_str().unwrap_or_default();
    assert!(error.starts_with(prefix), "expected {prefix:?}: {reply}");
}

/// The control socket answers what it cannot serve with an error line —
/// a garbage line, an unknown op, another protocol version, a peer of
/// another user (as `nobody`, with no descriptor) — while a stalled peer
/// stays connected; the server serves throughout, and a real replace works
/// after all of it.
#[test]
fn the_control_socket_refuses_what_it_cannot_serve() {
    let env = Env::new();
    let port = free_port();
    let mut old = env.serve(port);
    let old_pid = old.pid();
    wait_ctl_owner(&env, port, old_pid);
    let ctl = ctl_path(&env, port);

    // Connected, and never a byte: it holds only its own thread.
    let _stalled = UnixStream::connect(&ctl).unwrap();
    assert_refused(&ctl_exchange(&ctl, "hello"), "not a request");
    assert_refused(
        &ctl_exchange(&ctl, r#"{"llmlb_handover":1,"op":"dance"}"#),
        "unknown request",
    );
    assert_refused(
        &ctl_exchange(&ctl, r#"{"llmlb_handover":99,"op":"request","pid":1}"#),
        "unsupported protocol version",
    );
    assert_eq!(answering_pid(port, "/health"), Ok(old_pid));

    another_user_is_refused(&env, &ctl);
    assert_eq!(answering_pid(port, "/health"), Ok(old_pid));
    assert_eq!(record(&env, port).map(|r| r.pid), Some(old_pid));

    let mut new = spawn_replace(&env, port, &[]);
    let new_pid = new.pid();
    assert_exit(&mut old, 0, "the old server");
    wait_answer(port, "/health", &mut new, |pid| pid == new_pid);
    wait_record(&env, port, "the new server ready", &[&new], |r| {
        r.pid == new_pid && r.state == Some(ServeState::Ready) && r.draining.is_empty()
    });
    stop_cleanly(&env, port, &mut new);
}

/// A peer running as `nobody` that asks for the port gets the
/// permission-denied line and no descriptor. Needs root (setpriv); the
/// dirs and the socket are opened up for the test only.
fn another_user_is_refused(env: &Env, ctl: &Path) {
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        prereq::skip_unless_ci(
            "not root",
            "run the test as root",
            "the control socket's refusal of another user",
        );
        return;
    }
    let python = if Path::new("/usr/bin/python3").exists() {
        "/usr/bin/python3".to_owned()
    } else {
        python3()
    };
    let mode = |path: &Path, mode: u32| {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap()
    };
    mode(env.tmp.path(), 0o711);
    mode(&env.locks, 0o711);
    mode(ctl, 0o666);
    let out = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            &python,
            "-c",
            PEER_PY,
        ])
        .arg(ctl)
        .arg(format!(
            r#"{{"llmlb_handover":1,"op":"request","pid":{}}}"#,
            std::process::id()
        ))
        .current_dir("/")
        .output();
    mode(ctl, 0o600);
    mode(&env.locks, 0o700);
    mode(env.tmp.path(), 0o700);
    let out = out.expect("setpriv (util-linux)");
    assert!(out.status.success(), "peer as nobody: {out:?}");
    let seen: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(seen["fds"], 0, "descriptors sent to another user: {seen}");
    let reply: serde_json::Value = serde_json::from_str(seen["reply"].as_str().unwrap())
        .unwrap_or_else(|e| panic!("{seen}: {e}"));
    assert_refused(&reply, "permission denied: ");
}

// ------------------------------------------- issue 25: at the edges

/// A command for exec mode (`--ready notify`) that becomes ready only when
/// the file argv[1] exists: it then sends `READY=1` itself (so the sender
/// is the command, in the tree) and runs until SIGTERM.
const READY_ON_TRIGGER_PY: &str = r#"
import os, signal, socket, sys, time
signal.signal(signal.SIGTERM, lambda *a: os._exit(0))
while not os.path.exists(sys.argv[1]):
    time.sleep(0.02)
addr = os.environ["NOTIFY_SOCKET"]
if addr.startswith("@"):
    addr = "\0" + addr[1:]
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.sendto(b"READY=1", addr)
while True:
    time.sleep(1)
"#;

/// `serve --replace --ready notify -p PORT -- python3 READY_ON_TRIGGER_PY
/// TRIGGER`: a successor that holds the port, `starting`, until the test
/// creates `trigger`.
fn spawn_successor_ready_on(env: &Env, port: u16, trigger: &Path, extra: &[&str]) -> Proc {
    let p = port.to_string();
    let py = python3();
    let trigger = trigger.to_str().unwrap();
    let mut args = vec!["serve", "--replace", "--ready", "notify"];
    args.extend_from_slice(extra);
    args.extend([
        "-p",
        &p,
        "--host",
        "127.0.0.1",
        "--",
        &py,
        "-c",
        READY_ON_TRIGGER_PY,
        trigger,
    ]);
    env.spawn(&args)
}

/// Whether the record never names anybody but `pid` for `window`.
fn record_stays(env: &Env, port: u16, window: Duration, pred: impl Fn(&LockInfo) -> bool) {
    let end = Instant::now() + window;
    while Instant::now() < end {
        if let Some(info) = record(env, port) {
            assert!(pred(&info), "the record changed hands: {info:?}");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// A replace never meets a moment without an offer: from the old server's
/// control socket to the new one's, the control path always names a
/// socket somebody listens on (the successor publishes its own over the
/// predecessor's before telling it to drain). Probed in a tight loop
/// through three handovers.
#[test]
fn the_control_path_always_names_an_offer_through_a_handover() {
    let env = Env::new();
    let port = free_port();
    let mut old = env.serve(port);
    wait_ctl_owner(&env, port, old.pid());
    let path = ctl_path(&env, port);
    let stop = Arc::new(AtomicBool::new(false));
    let prober = {
        let (stop, path) = (Arc::clone(&stop), path.clone());
        std::thread::spawn(move || {
            let (mut probes, mut gaps) = (0usize, Vec::new());
            while !stop.load(Ordering::SeqCst) {
                probes += 1;
                if let Err(e) = UnixStream::connect(&path) {
                    gaps.push(e.to_string());
                }
                std::thread::sleep(Duration::from_micros(200));
            }
            (probes, gaps)
        })
    };
    for _ in 0..3 {
        let new = spawn_replace(&env, port, &[]);
        assert_exit(&mut old, 0, "the drained server");
        wait_record(&env, port, "the new server alone", &[&new], |r| {
            r.pid == new.pid() && r.draining.is_empty()
        });
        wait_ctl_owner(&env, port, new.pid());
        assert!(!new.stdout().contains("Stopping"), "{}", new.stdout());
        old = new;
    }
    stop.store(true, Ordering::SeqCst);
    let (probes, gaps) = prober.join().unwrap();
    assert!(
        gaps.is_empty(),
        "{} of {probes} probes found no offer: {:?}",
        gaps.len(),
        &gaps[..gaps.len().min(5)]
    );
    stop_cleanly(&env, port, &mut old);
}

/// A predecessor stopped (SIGTERM) while its successor holds the port,
/// `starting`, writes nothing: not `stopping`, not `released_by`. The record
/// stays the successor's, which then becomes ready, and `stop` stops it.
#[test]
fn a_predecessor_stopped_mid_handover_leaves_the_record_to_its_successor() {
    let env = Env::new();
    let port = free_port();
    let mut old = env.serve(port);
    wait_ctl_owner(&env, port, old.pid());
    let trigger = env.locks.parent().unwrap().join("ready-trigger");
    let mut new = spawn_successor_ready_on(&env, port, &trigger, &[]);
    let new_pid = new.pid();
    wait_record(&env, port, "the successor, starting", &[&old, &new], |r| {
        r.pid == new_pid && r.state == Some(ServeState::Starting)
    });
    signal(old.pid(), libc::SIGTERM);
    assert_exit(&mut old, 0, "the predecessor");
    let info = record(&env, port).expect("a record");
    assert_eq!(
        (info.pid, info.state, info.released_by),
        (new_pid, Some(ServeState::Starting), None),
        "{info:?}"
    );
    std::fs::write(&trigger, b"").unwrap();
    wait_record(&env, port, "the successor ready", &[&new], |r| {
        r.pid == new_pid && r.state == Some(ServeState::Ready) && r.draining.is_empty()
    });
    let waited = env.run(&["wait", "-p", &port.to_string(), "-t", "5"]);
    assert_eq!(waited.code(), Some(0), "{waited:?}");
    let out = env.run(&["stop", "-p", &port.to_string()]);
    assert_eq!(out.code(), Some(0), "{out:?}");
    new.wait();
    assert!(!env.lock_file(port).exists());
}

/// A tmp cleaner removes the control socket while a successor holds the
/// port, `starting` (the predecessor has handed its lock on; the
/// successor's own socket is still under its private name): somebody must
/// make the path name an offer again, or a concurrent replace finds nothing
/// there and falls back to stopping the successor, which offers a handover
/// as soon as it is ready. Found by `replace_model` (RemoveCtl in Handing,
/// then Replace: `notoffered`, not `busy`).
#[test]
fn a_control_socket_removed_mid_handover_never_turns_a_concurrent_replace_into_a_stop() {
    let env = Env::new();
    let port = free_port();
    let mut old = env.serve(port);
    wait_ctl_owner(&env, port, old.pid());
    let trigger = env.locks.parent().unwrap().join("ready-trigger");
    let mut new = spawn_successor_ready_on(&env, port, &trigger, &[]);
    let new_pid = new.pid();
    wait_record(&env, port, "the successor, starting", &[&old, &new], |r| {
        r.pid == new_pid && r.state == Some(ServeState::Starting)
    });
    std::fs::remove_file(ctl_path(&env, port)).unwrap();
    // Past the holder's 0.25 s re-make, and past a replacer's 0.75 s
    // patience with an empty path.
    std::thread::sleep(Duration::from_millis(300));
    let third = env.spawn(&[
        "serve",
        "--replace",
        "-p",
        &port.to_string(),
        "--host",
        "127.0.0.1",
        "--replace-timeout",
        "2",
    ]);
    let out = third.finish();
    assert!(
        !out.stderr.contains("offers no handover") && !out.stdout.contains("Stopping"),
        "a concurrent replace stopped a successor that offers a handover: {out:?}"
    );
    assert_eq!(out.code(), Some(1), "{out:?}");
    assert!(new.try_wait().is_none(), "the successor was stopped");
    std::fs::write(&trigger, b"").unwrap();
    assert_exit(&mut old, 0, "the drained server");
    wait_record(&env, port, "the successor ready", &[&new], |r| {
        r.pid == new_pid && r.state == Some(ServeState::Ready) && r.draining.is_empty()
    });
    stop_cleanly(&env, port, &mut new);
}

/// Two replaces in quick succession (A → B → C) while A still drains: B,
/// which has handed the port to C (still starting), never writes its
/// bookkeeping (`draining` cleared once A exits) over C's record.
#[test]
fn a_middle_server_never_writes_over_the_last_ones_record() {
    let env = Env::new();
    let port = free_port();
    let p = port.to_string();
    let mut a = env.serve(port);
    wait_ctl_owner(&env, port, a.pid());
    // A connection A accepted and that sends its request only when the test
    // says: A drains until then.
    let held_by_a = SlowRequest::connect(port, "/health");
    held_by_a.wait_accepted_by(a.pid());
    let mut b = spawn_replace(&env, port, &[]);
    wait_record(&env, port, "B, with A draining", &[&a, &b], |r| {
        r.pid == b.pid() && r.draining == [a.pid()]
    });
    wait_ctl_owner(&env, port, b.pid());
    let trigger = env.locks.parent().unwrap().join("ready-trigger");
    let mut c = spawn_successor_ready_on(&env, port, &trigger, &[]);
    wait_record(&env, port, "C, starting", &[&b, &c], |r| {
        r.pid == c.pid() && r.state == Some(ServeState::Starting)
    });
    // A exits now: B (serving until C is ready) learns it, and must leave
    // C's record alone.
    let (code, _) = held_by_a.finish().expect("A answers its request");
    assert_eq!(code, 200);
    assert_exit(&mut a, 0, "A");
    record_stays(&env, port, Duration::from_millis(500), |r| {
        r.pid == c.pid() && r.state == Some(ServeState::Starting)
    });
    std::fs::write(&trigger, b"").unwrap();
    assert_exit(&mut b, 0, "B");
    let info = wait_record(&env, port, "C alone", &[&c], |r| {
        r.pid == c.pid() && r.draining.is_empty()
    });
    assert_eq!(info.state, Some(ServeState::Ready));
    let out = env.run(&["stop", "-p", &p]);
    assert_eq!(out.code(), Some(0), "{out:?}");
    c.wait();
}

/// With the same `--pidfile` for old and new (a unit's `PIDFile=`), a
/// successor whose command fails before it is ready leaves the pidfile
/// naming the predecessor, which serves on; a successor that takes over
/// writes it once the predecessor drains, and the predecessor's exit leaves
/// it alone.
#[test]
fn the_pidfile_follows_the_port_through_a_failed_and_a_good_replace() {
    let env = Env::new();
    let port = free_port();
    let p = port.to_string();
    let pidfile = env.locks.parent().unwrap().join("server.pid");
    let pf = pidfile.to_str().unwrap();
    let mut old = spawn_exec(&env, port, &["--pass-socket", "--pidfile", pf]);
    let old_pid = old.pid();
    let old_py = wait_answer(port, "/", &mut old, |pid| ppid(pid) == Some(old_pid));
    let _old_group = GroupGuard(pgid_of(old_py));
    wait_ctl_owner(&env, port, old_pid);
    assert_eq!(read_when_written(&pidfile).trim(), old_pid.to_string());

    let failed = env.run(&[
        "serve",
        "--replace",
        "--pidfile",
        pf,
        "-p",
        &p,
        "--host",
        "127.0.0.1",
        "--",
        "sh",
        "-c",
        "exit 3",
    ]);
    assert_ne!(failed.code(), Some(0), "{failed:?}");
    wait_record(&env, port, "the old server's record back", &[&old], |r| {
        r.pid == old_pid && r.state == Some(ServeState::Ready)
    });
    assert_eq!(
        std::fs::read_to_string(&pidfile).unwrap().trim(),
        old_pid.to_string(),
        "the failed successor left the pidfile naming the server that serves"
    );

    let mut new = spawn_exec(&env, port, &["--replace", "--pidfile", pf]);
    let new_pid = new.pid();
    assert_exit(&mut old, 0, "the drained server");
    wait_until("the pidfile to name the new server", || {
        std::fs::read_to_string(&pidfile).is_ok_and(|t| t.trim() == new_pid.to_string())
    });
    let new_py = wait_answer(port, "/", &mut new, |pid| ppid(pid) == Some(new_pid));
    let _new_group = GroupGuard(pgid_of(new_py));
    stop_cleanly(&env, port, &mut new);
    assert!(!pidfile.exists(), "the pidfile goes with the last server");
}

/// A pidfile that names another running server is refused with its PID
/// (a second instance with a copied unit file), not overwritten; one that
/// names a process that has exited is replaced.
#[test]
fn a_pidfile_naming_another_running_server_is_refused() {
    let env = Env::new();
    let (port, other) = (free_port(), free_port());
    let pidfile = env.locks.parent().unwrap().join("server.pid");
    let pf = pidfile.to_str().unwrap();
    let mut first = env.spawn(&[
        "serve",
        "--pidfile",
        pf,
        "-p",
        &port.to_string(),
        "--host",
        "127.0.0.1",
    ]);
    first.wait_health(port);
    let second = env.run(&[
        "serve",
        "--pidfile",
        pf,
        "-p",
        &other.to_string(),
        "--host",
        "127.0.0.1",
    ]);
    assert_eq!(second.code(), Some(1), "{second:?}");
    let stderr = second.stderr.clone();
    assert!(
        stderr.contains(&format!("names PID {}, which is running", first.pid())),
        "{stderr}"
    );
    assert_eq!(
        std::fs::read_to_string(&pidfile).unwrap().trim(),
        first.pid().to_string()
    );
    let out = env.run(&["stop", "-p", &port.to_string()]);
    assert_eq!(out.code(), Some(0), "{out:?}");
    first.wait();

    // A dead PID's pidfile is stale: replaced.
    let mut gone = Command::new("true").spawn().unwrap();
    let gone_pid = gone.id();
    gone.wait().unwrap();
    std::fs::write(&pidfile, format!("{gone_pid}\n")).unwrap();
    let mut third = env.spawn(&[
        "serve",
        "--pidfile",
        pf,
        "-p",
        &other.to_string(),
        "--host",
        "127.0.0.1",
    ]);
    third.wait_health(other);
    assert_eq!(read_when_written(&pidfile).trim(), third.pid().to_string());
    let out = env.run(&["stop", "-p", &other.to_string()]);
    assert_eq!(out.code(), Some(0), "{out:?}");
    third.wait();
}

/// More silent peers on the control socket than the holder answers at
/// once: the ones past the limit are told `busy`, and a replace is asked
/// again until a slot frees: it hands over, and stops nobody.
#[test]
fn silent_peers_past_the_limit_delay_a_replace_but_never_turn_it_into_a_stop() {
    let env = Env::new();
    let port = free_port();
    let mut old = env.serve(port);
    wait_ctl_owner(&env, port, old.pid());
    let path = ctl_path(&env, port);
    let silent: Vec<UnixStream> = (0..24)
        .map(|_| UnixStream::connect(&path).unwrap())
        .collect();
    let mut new = spawn_replace(&env, port, &["--replace-timeout", "8"]);
    assert_exit(&mut old, 0, "the drained server");
    wait_record(&env, port, "the new server", &[&new], |r| {
        r.pid == new.pid() && r.draining.is_empty()
    });
    assert!(!new.stdout().contains("Stopping"), "{}", new.stdout());
    drop(silent);
    stop_cleanly(&env, port, &mut new);
}

/// A holder out of file descriptors answers its control socket `busy`
/// through a reserve descriptor and backs off (no spinning): the replace
/// exits 1 naming that, and stops nothing (or, if the holder got a
/// descriptor back in time, it hands over); once descriptors are free
/// again a replace hands over. Never the fallback stop.
#[test]
fn a_holder_out_of_descriptors_is_never_stopped_by_a_replace() {
    let env = Env::new();
    let port = free_port();
    let p = port.to_string();
    let mut old = env.serve(port);
    wait_ctl_owner(&env, port, old.pid());
    let limited = Command::new("prlimit")
        .args(["--pid", &old.pid().to_string(), "--nofile=48:48"])
        .status()
        .expect("util-linux prlimit");
    assert!(limited.success());
    // Connections the server accepts until its descriptors run out.
    let clients: Vec<TcpStream> = (0..64)
        .filter_map(|_| TcpStream::connect(("127.0.0.1", port)).ok())
        .collect();
    wait_until("the holder to run out of descriptors", || {
        std::fs::read_dir(format!("/proc/{}/fd", old.pid())).map_or(0, |d| d.count()) >= 47
    });
    let mut new = env.spawn(&[
        "serve",
        "--replace",
        "--replace-timeout",
        "2",
        "-p",
        &p,
        "--host",
        "127.0.0.1",
    ]);
    // The holder may get a descriptor back in time to answer (a client's
    // connection it closes): then it hands over, which is as good. What
    // must never happen is the fallback, a stop.
    let deadline = Instant::now() + PATIENCE;
    let handed_over = loop {
        if new.try_wait().is_some() {
            break false;
        }
        if record(&env, port).is_some_and(|r| r.pid == new.pid()) {
            break true;
        }
        assert!(
            Instant::now() < deadline,
            "the replace neither ended nor took over"
        );
        std::thread::sleep(Duration::from_millis(10));
    };
    let stderr = new.stderr();
    assert!(!stderr.contains("offers no handover"), "{stderr}");
    if !handed_over {
        assert_exit(&mut new, 1, "the replace that met no answer");
        assert!(
            stderr.contains(&format!(
                "PID {} holds port {port} and offers a handover",
                old.pid()
            )),
            "{stderr}"
        );
        assert!(old.try_wait().is_none(), "the holder was not stopped");
        drop(clients);
        new = spawn_replace(&env, port, &[]);
    } else {
        drop(clients);
    }
    assert_exit(&mut old, 0, "the drained server");
    wait_record(&env, port, "the new server", &[&new], |r| {
        r.pid == new.pid() && r.draining.is_empty()
    });
    stop_cleanly(&env, port, &mut new);
}

/// A control socket removed by hand (or by a cleaner that ignores locks) is
/// made again by its holder, and a replace right after the removal still
/// hands over rather than stopping the holder.
#[test]
fn a_removed_control_socket_is_made_again_and_a_replace_still_hands_over() {
    let env = Env::new();
    let port = free_port();
    let mut old = env.serve(port);
    wait_ctl_owner(&env, port, old.pid());
    std::fs::remove_file(ctl_path(&env, port)).unwrap();
    let mut new = spawn_replace(&env, port, &[]);
    assert_exit(&mut old, 0, "the drained server");
    wait_record(&env, port, "the new server", &[&new], |r| {
        r.pid == new.pid() && r.draining.is_empty()
    });
    assert!(!new.stdout().contains("Stopping"), "{}", new.stdout());
    wait_ctl_owner(&env, port, new.pid());
    std::fs::remove_file(ctl_path(&env, port)).unwrap();
    wait_ctl_owner(&env, port, new.pid());
    stop_cleanly(&env, port, &mut new);
}

/// A server stopped right as it takes over (its offer being made while the
/// stop withdraws it) never leaves a copy of its listening socket open past
/// its release: each time, the next plain `serve` binds the port at once.
#[test]
fn a_stop_racing_a_takeover_leaves_the_port_bindable() {
    let env = Env::new();
    let port = free_port();
    let p = port.to_string();
    for round in 0..5 {
        let mut old = env.serve(port);
        wait_ctl_owner(&env, port, old.pid());
        let mut new = spawn_replace(&env, port, &[]);
        wait_record(&env, port, "the new server ready", &[&old, &new], |r| {
            r.pid == new.pid() && r.state == Some(ServeState::Ready)
        });
        let out = env.run(&["stop", "-p", &p]);
        assert_eq!(out.code(), Some(0), "round {round}: {out:?}");
        new.wait();
        old.wait();
        let mut next = env.spawn(&["serve", "-p", &p, "--host", "127.0.0.1"]);
        next.wait_health(port);
        let out = env.run(&["stop", "-p", &p]);
        assert_eq!(out.code(), Some(0), "round {round}: {out:?}");
        assert_exit(&mut next, 0, "the plain server");
    }
}

/// `stop` during a pending replace (issue 25 §4): the record names the
/// successor, which gives the port back when signalled, and the old server
/// writes its record back and serves on. `stop` must stop that one too (it
/// held the port before the stop began: not a new server) and report
/// success only once nothing of the port's lineage serves.
#[test]
fn stop_during_a_pending_replace_stops_the_server_the_port_went_back_to() {
    let env = Env::new();
    let port = free_port();
    let (mut old, old_py, _old_group) = start_exec_holder(&env, port);
    let old_pid = old.pid();
    let mut pending = start_pending_replace(&env, port, &old);
    let pending_pid = pending.pid();

    let out = env.run(&["stop", "-p", &port.to_string()]);
    assert_died_of(&mut pending, libc::SIGTERM, "the pending replace");
    let serving = answering_pid(port, "/");
    assert!(
        serving.is_err(),
        "stop exited {:?} while PID {old_py} (the old server's command) still serves: {serving:?}; {out:?}",
        out.code()
    );
    assert_eq!(out.code(), Some(0), "{out:?}");
    assert_eq!(
        out.stdout,
        format!(
            "Stopping server on port {port} (PID: {pending_pid})...\n\
             The port went back to PID {old_pid}, which held it before this stop; stopping it too\n\
             Stopping server on port {port} (PID: {old_pid})...\n\
             Server stopped\n"
        ),
        "{out:?}"
    );
    assert_exit(&mut old, 0, "the old server");
    assert!(!env.lock_file(port).exists(), "the lock file is left");
    assert!(!ctl_path(&env, port).exists(), "the control socket is left");
}

/// A command served on descriptor 3 that ignores SIGTERM: its llmlb holds
/// the port until its 3 s SIGKILL of the group.
const IGNORES_TERM_PY: &str = "import signal, socket, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
sock = socket.socket(fileno=3)
while True:
    time.sleep(1)
";

/// Whether `pid` ignores SIGTERM (`SigIgn` in `/proc/<pid>/status`).
fn ignores_term(pid: u32) -> bool {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("SigIgn:"))
        .and_then(|mask| u64::from_str_radix(mask.trim(), 16).ok())
        .is_some_and(|mask| mask & (1 << (libc::SIGTERM - 1)) != 0)
}

/// If the server the port went back to cannot be stopped within the
/// timeout, `stop` exits 1 saying so, naming both PIDs, and never
/// "Server stopped". The timeout (2 s) is shorter than the old server's own
/// SIGKILL of its command (3 s after SIGTERM), so the old server still
/// holds the port when `stop` gives up whatever the machine's load.
#[test]
fn stop_says_so_when_the_server_the_port_went_back_to_does_not_stop() {
    let env = Env::new();
    let port = free_port();
    let p = port.to_string();
    let py = python3();
    let mut old = env.spawn(&[
        "serve",
        "--pass-socket",
        "-p",
        &p,
        "--host",
        "127.0.0.1",
        "--",
        &py,
        "-c",
        IGNORES_TERM_PY,
    ]);
    let old_pid = old.pid();
    wait_record(&env, port, "the holder ready", &[&old], |r| {
        r.pid == old_pid && r.state == Some(ServeState::Ready)
    });
    let old_py = record(&env, port).and_then(|r| r.child_pgid);
    let _old_group = GroupGuard(old_py);
    let old_py = old_py.expect("exec mode records its command's group");
    // `--ready listen` with a passed socket is met before Python runs.
    wait_until("the old command ignores SIGTERM", || ignores_term(old_py));
    wait_ctl_owner(&env, port, old_pid);
    let mut pending = start_pending_replace(&env, port, &old);
    let pending_pid = pending.pid();

    let out = env.run(&["stop", "-p", &p, "-t", "2"]);
    assert_died_of(&mut pending, libc::SIGTERM, "the pending replace");
    assert_eq!(out.code(), Some(1), "{out:?}");
    assert!(!out.stdout.contains("Server stopped"), "{out:?}");
    assert_eq!(
        out.stderr.trim_end(),
        format!(
            "Error: server on port {port} (PID: {pending_pid}) stopped, but the port went back to \
             PID {old_pid}, which still serves: server on port {port} (PID: {old_pid}) did not \
             stop within 2s; use --force to kill it"
        ),
        "{out:?}"
    );
    assert!(old.try_wait().is_none(), "the old server exited early");
    assert_eq!(record(&env, port).map(|r| r.pid), Some(old_pid));
    // Its own SIGKILL of the command ends it; then nothing is left.
    old.wait();
    assert!(!env.lock_file(port).exists(), "the lock file is left");
}

/// `serve --replace --replace-grace 10 --ready immediate -- CMD` for a CMD
/// that counts as ready at once, never accepts, and exits by itself
/// within the window: the predecessor is never told to drain.
fn spawn_short_lived_successor(env: &Env, port: u16, command: &[&str]) -> Proc {
    let p = port.to_string();
    let mut args = vec![
        "serve",
        "--replace",
        "--replace-grace",
        "10",
        "--ready",
        "immediate",
        "-p",
        &p,
        "--host",
        "127.0.0.1",
        "--",
    ];
    args.extend_from_slice(command);
    env.spawn(&args)
}

/// Issue 27 §2: a successor whose command exits within the grace window
/// after it was ready never takes the port: it exits 1 naming the window,
/// the predecessor was never told to drain and serves on under its own
/// record, and no request failed meanwhile.
#[test]
fn a_successor_that_exits_within_the_grace_window_leaves_the_old_server_serving() {
    let env = Env::new();
    let port = free_port();
    let (old, old_py, _old_group) = start_exec_holder(&env, port);
    let old_pid = old.pid();
    let hammer = Hammer::start(port);
    let mut new = spawn_short_lived_successor(&env, port, &["sh", "-c", "sleep 0.5; exit 3"]);
    let new_pid = new.pid();
    assert_exit(&mut new, 1, "the successor whose command exited");
    let stderr = new.stderr();
    assert!(
        stderr.lines().any(|l| l.starts_with("Error: sh (PID ")
            && l.contains(&format!(
                "exited within the grace window (--replace-grace) (exit status: 3); port {port} stays with PID {old_pid}, which serves on"
            ))),
        "{stderr}"
    );
    assert!(
        !stderr.contains("is draining"),
        "the predecessor was told to drain: {stderr}"
    );
    let info = wait_record(&env, port, "the old server's record back", &[&old], |r| {
        r.pid == old_pid && r.state == Some(ServeState::Ready)
    });
    assert!(info.draining.is_empty(), "{info:?}");
    assert_ne!(info.pid, new_pid);
    hammer.finish();
    old_serves_on_and_a_later_replace_succeeds(&env, port, old, old_py);
}

/// Issue 27 §2, the case a new user met: gunicorn's arbiter sends
/// `READY=1` before its workers import the app, so with `--ready notify` a
/// release whose app cannot be imported counted as ready. Within the grace
/// window the arbiter halts ("Worker failed to boot"): the old server
/// serves on, nothing is refused, and the port never ends free.
#[test]
fn a_broken_gunicorn_release_never_takes_the_port() {
    let have_gunicorn = Command::new(python3())
        .args(["-m", "gunicorn", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !have_gunicorn {
        prereq::skip_unless_ci(
            "gunicorn is not installed",
            "pip install gunicorn (.ci/run installs it)",
            "the broken-gunicorn replace",
        );
        return;
    }
    let env = Env::new();
    let port = free_port();
    let (old, old_py, _old_group) = start_exec_holder(&env, port);
    let old_pid = old.pid();
    let app = tempfile::tempdir().unwrap();
    std::fs::write(
        app.path().join("broken_app.py"),
        "raise RuntimeError('this release cannot start')\n",
    )
    .unwrap();
    let hammer = Hammer::start(port);
    let p = port.to_string();
    let py = python3();
    let dir = app.path().to_str().unwrap();
    let mut new = env.spawn(&[
        "serve",
        "--replace",
        "--ready",
        "notify",
        "-p",
        &p,
        "--host",
        "127.0.0.1",
        "--",
        &py,
        "-m",
        "gunicorn",
        "--chdir",
        dir,
        "broken_app:app",
    ]);
    assert_exit(&mut new, 1, "the broken gunicorn release");
    let stderr = new.stderr();
    assert!(
        stderr.contains("is ready (--ready notify)")
            && stderr.contains("exited within the grace window (--replace-grace)")
            && stderr.contains(&format!("stays with PID {old_pid}, which serves on")),
        "{stderr}"
    );
    wait_record(&env, port, "the old server's record back", &[&old], |r| {
        r.pid == old_pid && r.state == Some(ServeState::Ready)
    });
    hammer.finish();
    old_serves_on_and_a_later_replace_succeeds(&env, port, old, old_py);
}
