//! `llmlb reload` and SIGUSR2 end to end (issue 28 §1 and its §4 tests),
//! with real processes and a client loop: the running server starts its own
//! successor from its own command line, which takes the port over by
//! handover; a successor that fails, is late or finds the port busy changes
//! nothing.
//!
//! Successors are children of the server they replace, not of this test:
//! they are found through the record and `/proc`, and killed by a guard if
//! a test fails. Linux only (`/proc`).
#![cfg(target_os = "linux")]

mod cli_support;
#[path = "../ffi/tests/support/mod.rs"]
mod ffi_support;
#[path = "support/servers.rs"]
mod servers;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cli_support::*;
use llmlb::lock::{LockInfo, ServeState};
use servers::Server;

/// The socket-activated test server: answers every GET with its PID.
const ACTIVATED_HTTP: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/support/activated_http.py"
);

/// The LLM-server double (proxy mode's backend).
const LLM_DOUBLE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/support/llm_double.py");

// ---------------------------------------------------------------- helpers

/// The lock record of `port`, if the file parses.
fn record(env: &Env, port: u16) -> Option<LockInfo> {
    LockInfo::parse(&std::fs::read(env.lock_file(port)).ok()?)
}

/// Polls the record until `pred` holds; panics after [`PATIENCE`] with the
/// last record seen and `proc`'s stderr (which is its successors' too).
fn wait_record(
    env: &Env,
    port: u16,
    what: &str,
    proc: &Proc,
    pred: impl Fn(&LockInfo) -> bool,
) -> LockInfo {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let seen = record(env, port);
        if let Some(info) = seen.as_ref().filter(|i| pred(i)) {
            return info.clone();
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for the record: {what}; last seen: {seen:?}\nstderr:\n{}",
            proc.stderr()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// `GET path` (HTTP/1.0, a fresh connection): the status and the body.
fn get(port: u16, path: &str) -> Result<(u16, String), String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(PATIENCE)).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        .map_err(|e| format!("send: {e}"))?;
    let mut resp = Vec::new();
    s.read_to_end(&mut resp)
        .map_err(|e| format!("read: {e} (after {} bytes)", resp.len()))?;
    let resp = String::from_utf8_lossy(&resp);
    let status = resp
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("no status line: {resp:?}"))?;
    let body = resp.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    Ok((status, body.to_owned()))
}

/// The `pid` of the JSON body `GET path` answers (the HTTP mode's
/// `/health`, the activated test server's every path).
fn answering_pid(port: u16, path: &str) -> Option<u32> {
    match get(port, path) {
        Ok((200, body)) => serde_json::from_str::<serde_json::Value>(&body).ok()?["pid"]
            .as_u64()
            .map(|p| p as u32),
        _ => None,
    }
}

/// A client that sends `GET /health`, one fresh connection each, until
/// stopped, and keeps every failure (refused, reset, not 200).
struct Hammer {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicUsize>,
    thread: Option<std::thread::JoinHandle<Vec<String>>>,
}

impl Hammer {
    /// Starts it and waits for its first success.
    fn start(port: u16) -> Hammer {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicUsize::new(0));
        let (stopping, counted) = (Arc::clone(&stop), Arc::clone(&ok));
        let thread = std::thread::spawn(move || {
            let mut failed = Vec::new();
            while !stopping.load(Ordering::SeqCst) {
                match get(port, "/health") {
                    Ok((200, _)) => {
                        counted.fetch_add(1, Ordering::SeqCst);
                    }
                    Ok((status, body)) => failed.push(format!("{status} {body}")),
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

    fn wait_for_success(&self) {
        let before = self.ok.load(Ordering::SeqCst);
        wait_until("a client request to succeed", || {
            self.ok.load(Ordering::SeqCst) > before
        });
    }

    /// Lets one more request succeed, stops, and asserts none failed.
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

/// A successor (not our child): SIGKILLed with its command's group on drop
/// if it still runs, so a failed test leaves nothing behind.
struct Successor(u32);

impl Drop for Successor {
    fn drop(&mut self) {
        if alive(self.0) {
            for child in children(self.0) {
                drop(GroupGuard(pgid_of(child).filter(|&g| g == child)));
            }
            // SAFETY: kill(2) to one positive pid.
            unsafe { libc::kill(self.0 as libc::pid_t, libc::SIGKILL) };
        }
    }
}

/// The children of `pid` (`/proc/PID/task/PID/children`).
fn children(pid: u32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .map(|l| {
            l.split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// The server's args: HTTP mode on 127.0.0.1, `--replace` with a short
/// grace (kept by its successors, which get the same arguments), then
/// `extra` (exec mode's options and command).
fn serve_args(port: u16, extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = ["serve", "-p", &port.to_string(), "--host", "127.0.0.1"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    args.extend(["--replace", "--replace-grace", "0.2"].map(String::from));
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

fn spawn_serve(env: &Env, port: u16, extra: &[&str]) -> Proc {
    let args = serve_args(port, extra);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    env.spawn(&args)
}

/// Proxy mode with `--ready http`, the command `sh -c SCRIPT` (which runs
/// the LLM double, `$SERVE`, on its private `$PORT` as it decides). Unlike
/// a command given the passed socket (ready under `--ready listen` from its
/// first instant), its readiness is what it answers: a successor held back
/// by SCRIPT is not ready, and its handover stays under way.
fn spawn_proxy_sh(env: &Env, port: u16, extra: &[&str], script: &str) -> Proc {
    let mut cmd = env.cmd(&[]);
    let mut options = extra.to_vec();
    options.extend(["--proxy", "--ready", "http", "--", "sh", "-c", script]);
    cmd.args(serve_args(port, &options)).env(
        "SERVE",
        format!("exec python3 {LLM_DOUBLE} --host 127.0.0.1 --port \"$PORT\""),
    );
    env.spawn_cmd(cmd)
}

/// Waits until `server` is the port's holder, ready, and offers a handover.
fn wait_ready(env: &Env, port: u16, server: &Proc) -> LockInfo {
    let pid = server.pid();
    let info = wait_record(env, port, "the server ready", server, |r| {
        r.pid == pid && r.state == Some(ServeState::Ready)
    });
    wait_until("its control socket", || {
        env.locks.join(format!("serve_{port}.ctl")).exists()
    });
    info
}

/// `llmlb reload -p PORT ARGS`, run to completion.
fn reload(env: &Env, port: u16, args: &[&str]) -> Output {
    let p = port.to_string();
    let mut all = vec!["reload", "-p", &p];
    all.extend_from_slice(args);
    env.run(&all)
}

/// The new PID a successful reload names (`... PID N serves it ...`).
fn reloaded_pid(out: &Output) -> u32 {
    assert_eq!(out.code(), Some(0), "{out:?}");
    out.stdout
        .split("PID ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no PID in {:?}", out.stdout))
}

/// The old server exits 0 (it drained); the port's record names `new`.
fn assert_replaced(env: &Env, port: u16, old: &mut Proc, new: u32) {
    let status = old.wait();
    assert_eq!(
        status.code(),
        Some(0),
        "the old server; stderr:\n{}",
        old.stderr()
    );
    let info = wait_record(env, port, "the successor ready", old, |r| {
        r.pid == new && r.state == Some(ServeState::Ready)
    });
    assert_eq!(info.pid, new);
}

/// `llmlb stop` stops the successor `pid`, which then exits.
fn stop_successor(env: &Env, port: u16, pid: u32) {
    let out = env.run(&["stop", "-p", &port.to_string()]);
    assert_eq!(out.code(), Some(0), "{out:?}");
    wait_until("the successor to exit", || !alive(pid));
}

/// Nothing changed on `port` since `before` (the record's holder and start,
/// its state, the control socket's presence).
fn assert_unchanged(env: &Env, port: u16, before: &LockInfo, old: &mut Proc) {
    assert!(
        old.try_wait().is_none(),
        "the old server exited; stderr:\n{}",
        old.stderr()
    );
    let now = wait_record(env, port, "the old record back", old, |r| {
        r.pid == before.pid && r.state == Some(ServeState::Ready) && r.draining.is_empty()
    });
    assert_eq!(now.started_at, before.started_at);
    assert!(env.locks.join(format!("serve_{port}.ctl")).exists());
}

/// Whether some process runs `argv` exactly.
fn runs(argv: &[&str]) -> bool {
    let wanted: Vec<u8> = argv.iter().flat_map(|a| a.bytes().chain([0])).collect();
    std::fs::read_dir("/proc").unwrap().flatten().any(|e| {
        std::fs::read(e.path().join("cmdline")).is_ok_and(|c| c == wanted)
            && e.file_name()
                .to_str()
                .and_then(|p| p.parse().ok())
                .is_some_and(alive)
    })
}

// ------------------------------------------------------------------ tests

#[test]
fn http_mode_reloads_under_load() {
    let env = Env::new();
    let port = free_port();
    let mut old = spawn_serve(&env, port, &[]);
    wait_ready(&env, port, &old);
    let hammer = Hammer::start(port);
    let out = reload(&env, port, &[]);
    let new = reloaded_pid(&out);
    let _guard = Successor(new);
    assert_ne!(new, old.pid());
    assert_replaced(&env, port, &mut old, new);
    assert_eq!(answering_pid(port, "/health"), Some(new));
    hammer.finish();
    stop_successor(&env, port, new);
}

/// Also for the C and Python launchers, which run serve's life through
/// `llmlb_serve_exec`: each is started without `--replace`, so its
/// successor is its own command line with `--replace` inserted before `--`.
#[test]
fn exec_mode_with_a_passed_socket_reloads_under_load() {
    for server in Server::ALL {
        eprintln!("--- against {server:?}");
        exec_mode_with_a_passed_socket_reloads_under_load_by(server);
    }
}

fn exec_mode_with_a_passed_socket_reloads_under_load_by(server: Server) {
    let env = Env::new();
    let port = free_port();
    let p = port.to_string();
    let mut cmd = server.cmd(
        &env,
        &[
            "-p",
            &p,
            "--host",
            "127.0.0.1",
            "--replace-grace",
            "0.2",
            "--pass-socket",
            "--",
            "sh",
            "-c",
            "exec \"$PY\" \"$SERVER\"",
        ],
    );
    cmd.env("PY", "python3").env("SERVER", ACTIVATED_HTTP);
    let mut old = env.spawn_cmd(cmd);
    wait_ready(&env, port, &old);
    let before = answering_pid(port, "/").unwrap();
    let hammer = Hammer::start(port);
    let new = reloaded_pid(&reload(&env, port, &[]));
    let _guard = Successor(new);
    assert_replaced(&env, port, &mut old, new);
    wait_until("the new command to answer", || {
        answering_pid(port, "/").is_some_and(|pid| pid != before && children(new).contains(&pid))
    });
    hammer.finish();
    stop_successor(&env, port, new);
}

#[test]
fn proxy_mode_reloads_under_load() {
    let env = Env::new();
    let port = free_port();
    let mut old = spawn_serve(
        &env,
        port,
        &[
            "--proxy",
            "--ready",
            "http",
            "--",
            "python3",
            LLM_DOUBLE,
            "--host",
            "127.0.0.1",
            "--port",
            "{port}",
        ],
    );
    wait_ready(&env, port, &old);
    let hammer = Hammer::start(port);
    let new = reloaded_pid(&reload(&env, port, &[]));
    let _guard = Successor(new);
    assert_replaced(&env, port, &mut old, new);
    hammer.finish();
    stop_successor(&env, port, new);
}

#[test]
fn a_successor_whose_command_fails_leaves_everything_as_it_was() {
    let env = Env::new();
    let port = free_port();
    let flag = env.tmp.path().join("FLAG");
    std::fs::write(&flag, "").unwrap();
    let pidfile = env.tmp.path().join("server.pid");
    let p = pidfile.display().to_string();
    let script = format!("test -e '{}' && eval \"$SERVE\"", flag.display());
    let mut old = spawn_proxy_sh(&env, port, &["--pidfile", &p], &script);
    let before = wait_ready(&env, port, &old);
    let pid_text = read_when_written(&pidfile);
    let hammer = Hammer::start(port);
    std::fs::remove_file(&flag).unwrap();

    let out = reload(&env, port, &[]);
    assert_eq!(out.code(), Some(1), "{out:?}");
    assert!(
        out.stderr.contains("exited")
            && out.stderr.contains(&format!("PID {} serves on", old.pid())),
        "{out:?}"
    );
    assert!(
        out.stderr.contains("stderr"),
        "says where the log went: {out:?}"
    );
    assert_unchanged(&env, port, &before, &mut old);
    assert_eq!(
        std::fs::read_to_string(&pidfile).unwrap().trim(),
        pid_text.trim()
    );
    hammer.finish();
    // And it can still be reloaded.
    std::fs::write(&flag, "").unwrap();
    let new = reloaded_pid(&reload(&env, port, &[]));
    let _guard = Successor(new);
    assert_replaced(&env, port, &mut old, new);
    stop_successor(&env, port, new);
}

#[test]
fn a_reload_while_one_or_a_replace_is_under_way_is_busy() {
    let env = Env::new();
    let port = free_port();
    // A successor's command waits while HOLD exists: the handover stays
    // under way until the test lets it go.
    let hold = env.tmp.path().join("HOLD");
    let script = format!(
        "while test -e '{}'; do sleep 0.05; done; eval \"$SERVE\"",
        hold.display()
    );
    let mut old = spawn_proxy_sh(&env, port, &[], &script);
    wait_ready(&env, port, &old);

    // A reload while a reload is under way.
    std::fs::write(&hold, "").unwrap();
    let first = env.spawn(&["reload", "-p", &port.to_string()]);
    wait_until("the first reload to start a successor", || {
        old.stderr().contains("reload: started PID")
    });
    let second = reload(&env, port, &[]);
    assert_eq!(second.code(), Some(1), "{second:?}");
    assert!(second.stderr.contains("busy"), "{second:?}");
    std::fs::remove_file(&hold).unwrap();
    let new = reloaded_pid(&first.finish());
    let _guard = Successor(new);
    assert_replaced(&env, port, &mut old, new);

    // A reload while a `serve --replace` is under way.
    std::fs::write(&hold, "").unwrap();
    let mut replacing = spawn_proxy_sh(&env, port, &[], &script);
    let replacing_pid = replacing.pid();
    wait_record(&env, port, "the replace under way", &replacing, |r| {
        r.pid == replacing_pid
    });
    let during = reload(&env, port, &[]);
    assert_eq!(during.code(), Some(1), "{during:?}");
    assert!(during.stderr.contains("busy"), "{during:?}");
    std::fs::remove_file(&hold).unwrap();
    wait_record(&env, port, "the replace done", &replacing, |r| {
        r.pid == replacing_pid && r.state == Some(ServeState::Ready)
    });
    wait_until("the reloaded server to drain and exit", || !alive(new));
    let out = env.run(&["stop", "-p", &port.to_string()]);
    assert_eq!(out.code(), Some(0), "{out:?}");
    replacing.wait();
    assert!(!env.lock_file(port).exists());
}

#[test]
fn a_holder_without_a_handover_is_not_reloaded_nor_stopped() {
    let env = Env::new();
    let port = free_port();
    let p = port.to_string();
    // Exec mode without a passed socket: the command binds the port itself.
    let mut old = env.spawn(&[
        "serve",
        "-p",
        &p,
        "--host",
        "127.0.0.1",
        "--",
        "python3",
        ACTIVATED_HTTP,
    ]);
    let pid = old.pid();
    let before = wait_record(&env, port, "the holder ready", &old, |r| {
        r.pid == pid && r.state == Some(ServeState::Ready)
    });
    let out = reload(&env, port, &[]);
    assert_eq!(out.code(), Some(1), "{out:?}");
    assert!(out.stderr.contains("no control socket"), "{out:?}");
    assert!(
        out.stderr.contains("nothing was reloaded or stopped"),
        "{out:?}"
    );
    assert!(old.try_wait().is_none(), "the holder was stopped");
    let now = record(&env, port).unwrap();
    assert_eq!((now.pid, now.started_at), (before.pid, before.started_at));
    assert!(answering_pid(port, "/").is_some());
    let out = env.run(&["stop", "-p", &p]);
    assert_eq!(out.code(), Some(0), "{out:?}");
}

#[test]
fn a_free_port_is_not_reloaded() {
    let env = Env::new();
    let port = free_port();
    let out = reload(&env, port, &[]);
    assert_eq!(out.code(), Some(1), "{out:?}");
    assert!(out.stderr.contains("nothing was reloaded"), "{out:?}");
}

#[test]
fn a_successor_not_ready_in_time_is_stopped_and_the_old_serves_on() {
    let env = Env::new();
    let port = free_port();
    let stuck = env.tmp.path().join("STUCK");
    // The successor's command never serves: `sleep`, with a mark of this
    // test to find it (or its absence) in /proc.
    let mark = format!("{}.25", 3000 + port);
    let script = format!(
        "if test -e '{}'; then exec sleep {mark}; fi; eval \"$SERVE\"",
        stuck.display()
    );
    let mut old = spawn_proxy_sh(&env, port, &[], &script);
    let before = wait_ready(&env, port, &old);
    let hammer = Hammer::start(port);
    std::fs::write(&stuck, "").unwrap();

    let out = reload(&env, port, &["-t", "1"]);
    assert_eq!(out.code(), Some(1), "{out:?}");
    assert!(out.stderr.contains("within 1s"), "{out:?}");
    let successor: u32 = out
        .stderr
        .split("successor PID ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no successor PID in {out:?}"));
    assert!(!alive(successor), "the successor was left running");
    wait_until("the successor's command to be gone", || {
        !runs(&["sleep", &mark])
    });
    assert_unchanged(&env, port, &before, &mut old);
    hammer.finish();
    let out = env.run(&["stop", "-p", &port.to_string()]);
    assert_eq!(out.code(), Some(0), "{out:?}");
}

#[test]
fn a_new_binary_on_disk_is_what_the_successor_runs() {
    let env = Env::new();
    let port = free_port();
    // Beside the built binary (same filesystem): a hard link costs nothing,
    // and only the new file is a copy.
    let bin = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let path = bin.path().join("llmlb");
    std::fs::hard_link(env!("CARGO_BIN_EXE_llmlb"), &path).unwrap();
    let old_ino = std::fs::metadata(&path).unwrap().ino();
    let mut cmd = env.cmd(&[]);
    cmd.args(serve_args(port, &[]));
    let cmd = rebased(cmd, &path);
    let mut old = env.spawn_cmd(cmd);
    wait_ready(&env, port, &old);
    let staged = bin.path().join("llmlb.new");
    std::fs::copy(env!("CARGO_BIN_EXE_llmlb"), &staged).unwrap();
    let moved = Command::new("mv").arg(&staged).arg(&path).status().unwrap();
    assert!(moved.success());
    let new_ino = std::fs::metadata(&path).unwrap().ino();
    assert_ne!(new_ino, old_ino);

    let new = reloaded_pid(&reload(&env, port, &[]));
    let _guard = Successor(new);
    let exe = std::fs::metadata(format!("/proc/{new}/exe")).unwrap();
    assert_eq!(exe.ino(), new_ino, "the successor runs the new file");
    assert_replaced(&env, port, &mut old, new);
    stop_successor(&env, port, new);
}

/// `cmd` (made by [`Env::cmd`]) with `program` as the executable.
fn rebased(cmd: Command, program: &Path) -> Command {
    let mut out = Command::new(program);
    out.args(cmd.get_args());
    for (key, value) in cmd.get_envs() {
        match value {
            Some(value) => out.env(key, value),
            None => out.env_remove(key),
        };
    }
    if let Some(dir) = cmd.get_current_dir() {
        out.current_dir(PathBuf::from(dir));
    }
    out.stdin(std::process::Stdio::null());
    out
}

#[test]
fn sigusr2_reloads_under_load() {
    let env = Env::new();
    let port = free_port();
    let mut old = spawn_serve(&env, port, &[]);
    wait_ready(&env, port, &old);
    let old_pid = old.pid();
    let hammer = Hammer::start(port);
    signal(old_pid, libc::SIGUSR2);
    let info = wait_record(&env, port, "a new holder", &old, |r| {
        r.pid != old_pid && r.state == Some(ServeState::Ready)
    });
    let _guard = Successor(info.pid);
    assert_replaced(&env, port, &mut old, info.pid);
    assert!(
        old.stderr().contains("received SIGUSR2; reloading"),
        "{}",
        old.stderr()
    );
    hammer.finish();
    stop_successor(&env, port, info.pid);
}
