//! The recipes of docs/cli.md, "Replacing a server that binds its own port",
//! run with the LLM-server double (`tests/support/llm_double.py`) in place of
//! `llama-server` / `vllm serve`: the same command shape (`--host 127.0.0.1
//! --port {port}`, `/health` 503 while it loads), real processes, real
//! sockets.
//!
//! - start: `llmlb serve -p P --proxy --ready http -- CMD --port {port}`
//!   answers on P only once CMD is healthy (a request sent while it loads
//!   waits, and gets the loaded server's 200, never its 503), from CMD on a
//!   private port;
//! - replace: `... --proxy --ready http --replace -- CMD` takes over with no
//!   failed request while a client loops, and the old llmlb exits 0;
//! - a release that never becomes healthy gives up (exit 1) and the old one
//!   serves on, with no failed request.
//!
//! Unix only (the double's graceful shutdown is SIGTERM).
#![cfg(unix)]

mod cli_support;
#[path = "support/prereq.rs"]
mod prereq;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use cli_support::*;

fn double() -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/support/llm_double.py")
        .display()
        .to_string()
}

fn require_python() {
    let ok = std::process::Command::new("python3")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        prereq::fail("python3", "install python3 (3.8 or later)");
    }
}

/// `llmlb serve -p PORT --proxy --ready http [EXTRA…] -- python3 llm_double.py
/// --host 127.0.0.1 --port {port} [DOUBLE…]`: the docs' recipe, with the double.
fn recipe(env: &Env, port: u16, extra: &[&str], double_args: &[&str]) -> Proc {
    let port = port.to_string();
    let script = double();
    let mut args = vec!["serve", "-p", &port, "--proxy", "--ready", "http"];
    args.extend_from_slice(extra);
    args.extend_from_slice(&[
        "--",
        "python3",
        &script,
        "--host",
        "127.0.0.1",
        "--port",
        "{port}",
    ]);
    args.extend_from_slice(double_args);
    env.spawn(&args)
}

/// One `GET path` on a fresh connection: status, the `X-Served-By` PID and
/// the body; `Err` with what went wrong.
fn get(port: u16, path: &str) -> Result<(u16, Option<u32>, String), String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(PATIENCE)).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| format!("send: {e}"))?;
    let mut resp = String::new();
    s.read_to_string(&mut resp)
        .map_err(|e| format!("read: {e}"))?;
    let (head, body) = resp
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("no whole response: {resp:?}"))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("no status: {head:?}"))?;
    let served_by = head.lines().find_map(|l| {
        let (name, value) = l.split_once(':')?;
        name.eq_ignore_ascii_case("x-served-by")
            .then(|| value.trim().parse().ok())?
    });
    Ok((status, served_by, body.to_owned()))
}

/// The first answer on `port` once it accepts connections (a refused
/// connect means llmlb has not bound it yet: asked again).
fn first_answer(port: u16, path: &str, serve: &mut Proc) -> (u16, Option<u32>, String) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        match get(port, path) {
            Ok(answer) => return answer,
            Err(e) => {
                if let Some(status) = serve.try_wait() {
                    panic!("serve exited ({status}); stderr:\n{}", serve.stderr());
                }
                assert!(
                    Instant::now() < deadline,
                    "no answer on port {port}: {e}; stderr:\n{}",
                    serve.stderr()
                );
                thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

/// A client loop on `port` (`GET /health`, a fresh connection each), until
/// stopped: every answer that is not a 200, described.
fn load(port: u16, stop: Arc<AtomicBool>) -> thread::JoinHandle<(usize, Vec<String>)> {
    thread::spawn(move || {
        let (mut sent, mut failed) = (0, Vec::new());
        while !stop.load(Ordering::Relaxed) {
            sent += 1;
            match get(port, "/health") {
                Ok((200, _, _)) => {}
                Ok((status, _, body)) => failed.push(format!("{status} {body}")),
                Err(e) => failed.push(e),
            }
            thread::sleep(Duration::from_millis(5));
        }
        (sent, failed)
    })
}

/// The PID that serves `/hello` on `port` now.
fn served_by(port: u16) -> u32 {
    let (status, pid, body) = get(port, "/hello").expect("GET /hello");
    assert_eq!(status, 200, "{body}");
    pid.expect("an X-Served-By header")
}

#[test]
fn the_recipe_serves_only_once_the_model_is_loaded() {
    require_python();
    let env = Env::new();
    let port = free_port();
    let mut serve = recipe(&env, port, &[], &["--load-time", "2"]);
    // However early it is asked, the public port never passes on the
    // double's 503: the connection waits until the double is healthy.
    let (status, _, body) = first_answer(port, "/health", &mut serve);
    assert_eq!((status, body.as_str()), (200, r#"{"status":"ok"}"#));
    let pid = served_by(port);
    assert_ne!(pid, serve.pid(), "served by llmlb itself, not the command");
    let (_, _, hello) = get(port, "/hello").unwrap();
    assert!(
        !hello.contains(&format!("port {port}\n")),
        "the command serves on the public port itself, not on a private one: {hello}"
    );
    signal(serve.pid(), libc::SIGTERM);
    let status = serve.wait();
    assert!(status.success(), "{status}; stderr:\n{}", serve.stderr());
    assert!(!alive(pid), "the command outlived llmlb");
}

#[test]
fn the_replace_recipe_fails_no_request() {
    require_python();
    let env = Env::new();
    let port = free_port();
    let mut old = recipe(&env, port, &[], &["--load-time", "1"]);
    first_answer(port, "/health", &mut old);
    let old_double = served_by(port);

    let stop = Arc::new(AtomicBool::new(false));
    let client = load(port, Arc::clone(&stop));
    let mut new = recipe(&env, port, &["--replace"], &["--load-time", "1"]);
    let old_status = old.wait();
    assert!(
        old_status.success(),
        "the replaced llmlb: {old_status}; stderr:\n{}",
        old.stderr()
    );
    let new_double = served_by(port);
    stop.store(true, Ordering::Relaxed);
    let (sent, failed) = client.join().unwrap();
    assert!(
        failed.is_empty(),
        "{} of {sent} failed: {failed:?}",
        failed.len()
    );
    assert_ne!(new_double, old_double, "the old command still serves");
    assert!(new.try_wait().is_none(), "stderr:\n{}", new.stderr());
}

#[test]
fn a_release_that_never_becomes_healthy_leaves_the_old_one_serving() {
    require_python();
    let env = Env::new();
    let port = free_port();
    let mut old = recipe(&env, port, &[], &[]);
    first_answer(port, "/health", &mut old);
    let old_double = served_by(port);

    let stop = Arc::new(AtomicBool::new(false));
    let client = load(port, Arc::clone(&stop));
    let broken = recipe(
        &env,
        port,
        &["--replace", "--ready-timeout", "2"],
        &["--never-healthy"],
    );
    let out = broken.finish();
    assert_eq!(out.code(), Some(1), "stderr:\n{}", out.stderr);
    stop.store(true, Ordering::Relaxed);
    let (sent, failed) = client.join().unwrap();
    assert!(
        failed.is_empty(),
        "{} of {sent} failed: {failed:?}",
        failed.len()
    );
    assert_eq!(
        served_by(port),
        old_double,
        "the old command no longer serves"
    );
    assert!(old.try_wait().is_none(), "stderr:\n{}", old.stderr());
}
