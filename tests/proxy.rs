//! `llmlb serve --proxy` end to end (issue 27 §3, §5), with the LLM-server
//! double (`tests/support/llm_double.py`: binds the `--port` it is given,
//! `/health` 503 while it "loads", SSE streams, a raw upgrade echo, faults)
//! behind it: real processes, real sockets, real clients.
//!
//! - every protocol passes byte for byte: plain requests, an SSE stream, an
//!   upgraded connection echoing raw bytes with its half-close honoured;
//! - 20 replaces of a slow-loading server under load (4 client loops on a
//!   fresh connection per request, 4 on keep-alive connections): no failed
//!   request, and SSE streams started before a replace run to their end;
//! - a release that crashes after it binds, or never becomes healthy, never
//!   takes the port: the old one serves on and no request fails.
//!
//! Unix only (the double's graceful shutdown is SIGTERM).
#![cfg(unix)]

mod cli_support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use cli_support::*;
use llmlb::lock::LockInfo;

/// The lock record of `port`, if the file parses.
fn record(env: &Env, port: u16) -> Option<LockInfo> {
    LockInfo::parse(&std::fs::read(env.lock_file(port)).ok()?)
}

fn double() -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/support/llm_double.py")
        .display()
        .to_string()
}

/// `llmlb serve -p PORT --proxy --ready http EXTRA -- python3
/// llm_double.py --host 127.0.0.1 --port {port} DOUBLE`.
fn proxied(env: &Env, port: u16, extra: &[&str], double_args: &[&str]) -> Proc {
    let port = port.to_string();
    let script = double();
    let mut args = vec!["serve", "-p", &port, "--host", "127.0.0.1", "--proxy"];
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

/// A response: status, the `X-Served-By` PID, the body.
type Answer = (u16, Option<u32>, Vec<u8>);

/// Reads one response with a `Content-Length` from `reader`; `Ok(None)`
/// when the connection ended before its first byte (a keep-alive
/// connection the server closed between requests).
fn read_answer(reader: &mut BufReader<TcpStream>) -> Result<Option<Answer>, String> {
    let mut status_line = String::new();
    match reader.read_line(&mut status_line) {
        Ok(0) => return Ok(None),
        Ok(_) => {}
        Err(e) if status_line.is_empty() && e.kind() == std::io::ErrorKind::ConnectionReset => {
            return Ok(None)
        }
        Err(e) => return Err(format!("read status: {e}")),
    }
    let status: u16 = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("no status: {status_line:?}"))?;
    let (mut length, mut served_by) = (0usize, None);
    loop {
        let mut line = String::new();
        reader
            .read_line(&mut line)
            .map_err(|e| format!("read head: {e}"))?;
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            if name.eq_ignore_ascii_case("content-length") {
                length = value
                    .trim()
                    .parse()
                    .map_err(|_| format!("length: {line}"))?;
            } else if name.eq_ignore_ascii_case("x-served-by") {
                served_by = value.trim().parse().ok();
            }
        }
    }
    let mut body = vec![0; length];
    reader
        .read_exact(&mut body)
        .map_err(|e| format!("read body: {e}"))?;
    Ok(Some((status, served_by, body)))
}

fn connect(port: u16) -> Result<BufReader<TcpStream>, String> {
    let s = TcpStream::connect(("127.0.0.1", port)).map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    Ok(BufReader::new(s))
}

/// One `GET path` on a fresh connection.
fn get(port: u16, path: &str) -> Result<Answer, String> {
    let mut reader = connect(port)?;
    write!(
        reader.get_mut(),
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| format!("send: {e}"))?;
    read_answer(&mut reader)?.ok_or_else(|| "closed before answering".to_owned())
}

/// Waits until `GET /hello` on `port` answers 200 (the first request may
/// wait in the queue while the command loads), and returns who served it.
fn wait_serving(port: u16, serve: &mut Proc) -> u32 {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match get(port, "/hello") {
            Ok((200, Some(pid), _)) => return pid,
            other => {
                if let Some(status) = serve.try_wait() {
                    panic!("serve exited ({status}); stderr:\n{}", serve.stderr());
                }
                assert!(
                    Instant::now() < deadline,
                    "port {port} does not serve: {other:?}; stderr:\n{}",
                    serve.stderr()
                );
                thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

/// Client loops until stopped, each keeping every failure it met.
struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicUsize>,
    loops: Vec<thread::JoinHandle<Vec<String>>>,
}

impl Load {
    /// `fresh` loops opening a connection per request and `kept` loops
    /// sending request after request on one keep-alive connection. A
    /// keep-alive connection the server closes between two requests (as a
    /// server shutting down gracefully does) is opened again and the
    /// request retried, as HTTP clients do (RFC 9112 §9.3.1); a request
    /// that gets no answer once sent on a fresh connection, or a partial
    /// one, or anything but 200, is a failure.
    fn start(port: u16, fresh: usize, kept: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicUsize::new(0));
        let mut loops = Vec::new();
        for _ in 0..fresh {
            let (stop, ok) = (Arc::clone(&stop), Arc::clone(&ok));
            loops.push(thread::spawn(move || {
                let mut failed = Vec::new();
                while !stop.load(Ordering::SeqCst) {
                    match get(port, "/hello") {
                        Ok((200, _, _)) => {
                            ok.fetch_add(1, Ordering::SeqCst);
                        }
                        Ok((status, _, body)) => {
                            failed.push(format!("{status} {}", String::from_utf8_lossy(&body)))
                        }
                        Err(e) => failed.push(e),
                    }
                    thread::sleep(Duration::from_millis(2));
                }
                failed
            }));
        }
        for _ in 0..kept {
            let (stop, ok) = (Arc::clone(&stop), Arc::clone(&ok));
            loops.push(thread::spawn(move || {
                let mut failed = Vec::new();
                let mut conn: Option<BufReader<TcpStream>> = None;
                while !stop.load(Ordering::SeqCst) {
                    let reused = conn.is_some();
                    let mut reader = match conn.take().map_or_else(|| connect(port), Ok) {
                        Ok(reader) => reader,
                        Err(e) => {
                            failed.push(e);
                            continue;
                        }
                    };
                    let sent = reader
                        .get_mut()
                        .write_all(b"GET /hello HTTP/1.1\r\nHost: x\r\n\r\n");
                    let answer = match sent {
                        Ok(()) => read_answer(&mut reader),
                        Err(_) if reused => Ok(None),
                        Err(e) => Err(format!("send: {e}")),
                    };
                    match answer {
                        Ok(Some((200, _, _))) => {
                            ok.fetch_add(1, Ordering::SeqCst);
                            conn = Some(reader);
                        }
                        // Closed between requests: open another, retry.
                        Ok(None) if reused => {}
                        Ok(None) => failed.push("a fresh connection closed unanswered".into()),
                        Ok(Some((status, _, body))) => {
                            failed.push(format!("{status} {}", String::from_utf8_lossy(&body)))
                        }
                        Err(e) => failed.push(e),
                    }
                    thread::sleep(Duration::from_millis(2));
                }
                failed
            }));
        }
        let load = Load { stop, ok, loops };
        load.wait_for_more();
        load
    }

    fn wait_for_more(&self) {
        let before = self.ok.load(Ordering::SeqCst);
        wait_until("more client requests to succeed", || {
            self.ok.load(Ordering::SeqCst) > before + 8
        });
    }

    /// Stops every loop and asserts that no request failed.
    fn finish(self) -> usize {
        self.wait_for_more();
        self.stop.store(true, Ordering::SeqCst);
        let failed: Vec<String> = self
            .loops
            .into_iter()
            .flat_map(|l| l.join().unwrap())
            .collect();
        let ok = self.ok.load(Ordering::SeqCst);
        assert!(
            failed.is_empty(),
            "{} of {} requests failed: {:?}",
            failed.len(),
            failed.len() + ok,
            &failed[..failed.len().min(20)]
        );
        ok
    }
}

/// An SSE stream of `tokens` events: its events as read, until `[DONE]`.
fn sse(port: u16, tokens: usize, rate: usize) -> thread::JoinHandle<Result<Vec<String>, String>> {
    let mut reader = connect(port).expect("connect for the stream");
    write!(
        reader.get_mut(),
        "GET /sse?tokens={tokens}&rate={rate} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    thread::spawn(move || {
        let mut events = Vec::new();
        let mut head = true;
        loop {
            let mut line = String::new();
            match reader.read_line(&mut line) {
                Ok(0) => return Err(format!("ended after {} events", events.len())),
                Ok(_) => {}
                Err(e) => return Err(format!("read after {} events: {e}", events.len())),
            }
            if head {
                if line.trim_end().is_empty() {
                    head = false;
                } else if line.starts_with("HTTP/") && !line.contains(" 200 ") {
                    return Err(line);
                }
                continue;
            }
            if let Some(data) = line.trim_end().strip_prefix("data: ") {
                if data == "[DONE]" {
                    return Ok(events);
                }
                events.push(data.to_owned());
            }
        }
    })
}

fn assert_whole_stream(stream: thread::JoinHandle<Result<Vec<String>, String>>, tokens: usize) {
    let events = stream.join().unwrap().expect("the stream");
    let expected: Vec<String> = (0..tokens).map(|i| format!("token {i}")).collect();
    assert_eq!(events, expected);
}

fn stop(env: &Env, port: u16, server: &mut Proc) {
    let out = env.run(&["stop", "-p", &port.to_string(), "-t", "40"]);
    assert_eq!(out.code(), Some(0), "{out:?}");
    let status = server.wait();
    assert_eq!(
        status.code(),
        Some(0),
        "{status}; stderr:\n{}",
        server.stderr()
    );
}

/// Plain requests, an SSE stream, and an upgraded connection whose raw
/// bytes are echoed, with a half-close each way, all through the proxy;
/// the record names the backend port and the command listens there.
#[test]
fn every_protocol_passes_byte_for_byte() {
    let env = Env::new();
    let port = free_port();
    let mut server = proxied(&env, port, &["--ready", "http"], &[]);
    let served_by = wait_serving(port, &mut server);

    let info = record(&env, port).expect("a record");
    let backend = info.backend_port.expect("backend_port in the record");
    assert_ne!(backend, port);
    let (status, pid, _) = get(backend, "/hello").expect("the backend answers directly");
    assert_eq!((status, pid), (200, Some(served_by)));

    let (status, _, body) = get(port, "/bytes?n=3000000").expect("a big response");
    assert_eq!(status, 200);
    assert_eq!(body.len(), 3_000_000);

    let mut reader = connect(port).unwrap();
    let payload: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    write!(
        reader.get_mut(),
        "POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n",
        payload.len()
    )
    .unwrap();
    reader.get_mut().write_all(&payload).unwrap();
    let (status, _, body) = read_answer(&mut reader).unwrap().expect("an answer");
    assert_eq!(status, 200);
    assert!(body == payload, "the echoed body differs");
    drop(reader);

    assert_whole_stream(sse(port, 20, 200), 20);

    // A WebSocket-style upgrade: raw bytes both ways, then our half-close
    // reaches the backend, which half-closes too once it has echoed all.
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s.write_all(
        b"GET /upgrade HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n",
    )
    .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8];
    while !head.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut byte).unwrap();
        head.push(byte[0]);
    }
    assert!(
        head.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    let raw: Vec<u8> = (0..1_000_000u32).map(|i| (i * 7 % 256) as u8).collect();
    let writer = {
        let mut s = s.try_clone().unwrap();
        let raw = raw.clone();
        thread::spawn(move || {
            s.write_all(&raw).unwrap();
            s.shutdown(Shutdown::Write).unwrap();
        })
    };
    let mut echoed = Vec::new();
    s.read_to_end(&mut echoed).expect("the echo, then EOF");
    writer.join().unwrap();
    assert!(
        echoed == raw,
        "echoed {} of {} bytes, or not the same",
        echoed.len(),
        raw.len()
    );
    drop(s);

    stop(&env, port, &mut server);
    assert!(record(&env, port).is_none(), "the record is left");
}

/// Issue 27 §5: a proxied server that takes 2 s to load is replaced 20
/// times under load (4 loops with a connection per request, 4 on
/// keep-alive connections): no request fails, each replace ends with a
/// new command serving and the old llmlb exiting 0, and SSE streams
/// started before a replace run to their end.
#[test]
fn twenty_replaces_of_a_slow_loading_server_fail_no_request() {
    let env = Env::new();
    let port = free_port();
    let slow = ["--load-time", "2"];
    let mut current = proxied(&env, port, &["--ready", "http"], &slow);
    let mut serving = wait_serving(port, &mut current);
    let load = Load::start(port, 4, 4);
    for round in 0..20 {
        let streams: Vec<_> = (0..2).map(|_| sse(port, 30, 20)).collect();
        let mut next = proxied(
            &env,
            port,
            &["--ready", "http", "--replace", "--replace-grace", "0.5"],
            &slow,
        );
        let next_pid = next.pid();
        wait_until("the new server to hold the port", || {
            record(&env, port).is_some_and(|i| i.pid == next_pid && i.draining.is_empty())
                || next.try_wait().is_some()
        });
        if let Some(status) = next.try_wait() {
            panic!(
                "round {round}: the replace exited ({status}); stderr:\n{}",
                next.stderr()
            );
        }
        let status = current.wait();
        assert_eq!(
            status.code(),
            Some(0),
            "round {round}: the old server exited ({status}); stderr:\n{}",
            current.stderr()
        );
        let now = wait_serving(port, &mut next);
        assert_ne!(now, serving, "round {round}: the same command serves");
        for stream in streams {
            assert_whole_stream(stream, 30);
        }
        serving = now;
        current = next;
    }
    let ok = load.finish();
    assert!(ok > 100, "only {ok} requests in 20 replaces");
    stop(&env, port, &mut current);
}

/// Issue 27 §3: a release that crashes once it has bound its port, and one
/// that never becomes healthy, give up (exit 1); the old server never
/// stopped serving, and no request failed.
#[test]
fn a_broken_release_never_takes_the_port() {
    let env = Env::new();
    let port = free_port();
    let mut old = proxied(&env, port, &["--ready", "http"], &[]);
    let old_command = wait_serving(port, &mut old);
    let old_pid = old.pid();
    let load = Load::start(port, 2, 2);
    for (faults, extra) in [
        (&["--crash-after-bind"][..], &[][..]),
        (&["--never-healthy"][..], &["--ready-timeout", "3"][..]),
    ] {
        let mut args = vec!["--ready", "http", "--replace"];
        args.extend_from_slice(extra);
        let mut broken = proxied(&env, port, &args, faults);
        let status = broken.wait();
        assert_eq!(
            status.code(),
            Some(1),
            "{faults:?}: {status}; stderr:\n{}",
            broken.stderr()
        );
        assert!(
            broken.stderr().contains(&format!(
                "port {port} stays with PID {old_pid}, which serves on"
            )) || broken
                .stderr()
                .contains(&format!("gave port {port} back to PID {old_pid}")),
            "{faults:?}: {}",
            broken.stderr()
        );
        let info = record(&env, port).expect("the old record");
        assert_eq!(info.pid, old_pid, "{faults:?}: {info:?}");
        assert_eq!(get(port, "/hello").unwrap().1, Some(old_command));
    }
    load.finish();
    stop(&env, port, &mut old);
}

/// A stop in proxy mode does not wait out `--drain-timeout` (30 s) for a
/// client that keeps an idle keep-alive connection open: the command's
/// graceful shutdown closes it, and once the backend side has ended the
/// proxy closes the client's side too. `llmlb stop` with its default 5 s
/// timeout succeeds, and the client reads the end of the connection.
#[test]
fn a_stop_does_not_wait_for_an_idle_keep_alive_client() {
    let env = Env::new();
    let port = free_port();
    let mut server = proxied(&env, port, &["--ready", "http"], &[]);
    wait_serving(port, &mut server);
    let mut kept = connect(port).unwrap();
    kept.get_mut()
        .write_all(b"GET /hello HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let (status, _, _) = read_answer(&mut kept).unwrap().expect("an answer");
    assert_eq!(status, 200);
    let out = env.run(&["stop", "-p", &port.to_string()]);
    assert_eq!(
        out.code(),
        Some(0),
        "{out:?}; serve's stderr:\n{}",
        server.stderr()
    );
    let status = server.wait();
    assert_eq!(
        status.code(),
        Some(0),
        "{status}; stderr:\n{}",
        server.stderr()
    );
    let mut rest = Vec::new();
    let _ = kept.read_to_end(&mut rest);
    assert!(rest.is_empty(), "{}", String::from_utf8_lossy(&rest));
}
