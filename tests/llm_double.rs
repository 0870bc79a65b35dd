//! The LLM-server test double (`tests/support/llm_double.py`) on its own: the
//! behaviours the proxy tests and benches lean on, checked against the real
//! process over real sockets, so a proxy test that fails points at the proxy.
//! Unix only (SIGTERM is the graceful shutdown under test).
#![cfg(unix)]

#[path = "support/prereq.rs"]
mod prereq;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::path::PathBuf;
use std::process::{Child, ChildStderr, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// Against hangs only.
const PATIENCE: Duration = Duration::from_secs(15);

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/support/llm_double.py")
}

/// A running double, killed on drop.
struct Double {
    child: Child,
    port: u16,
    spawned: Instant,
    /// The rest of its stderr, after the listening line.
    stderr: BufReader<ChildStderr>,
}

impl Double {
    /// Starts the double on a port of the kernel's choosing (`--port 0`) and
    /// waits for its listening line, which names the port.
    fn start(args: &[&str]) -> Double {
        let spawned = Instant::now();
        let mut child = match Command::new("python3")
            .arg(script())
            .args(["--port", "0"])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
        {
            Ok(c) => c,
            Err(e) => prereq::fail(&format!("python3 ({e})"), "install python3 (3.8 or later)"),
        };
        let mut stderr = BufReader::new(child.stderr.take().unwrap());
        let mut line = String::new();
        stderr.read_line(&mut line).expect("the double's stderr");
        let port = line
            .strip_prefix("llm_double listening on 127.0.0.1:")
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("no listening line from the double, got {line:?}"));
        Double {
            child,
            port,
            spawned,
            stderr,
        }
    }

    fn connect(&self) -> TcpStream {
        let s = TcpStream::connect(("127.0.0.1", self.port)).expect("connect to the double");
        s.set_read_timeout(Some(PATIENCE)).unwrap();
        s
    }

    fn term(&self) {
        // SAFETY: kill(2) on our own child, not yet reaped.
        let rc = unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        assert_eq!(rc, 0, "SIGTERM to the double");
    }

    fn wait(&mut self) -> ExitStatus {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "the double did not exit");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Double {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One response read from `s`: status, headers (lower-case names) and body
/// (Content-Length bytes, or to EOF without one).
fn read_response(s: &mut impl BufRead) -> (u16, Vec<(String, String)>, Vec<u8>) {
    let mut line = String::new();
    s.read_line(&mut line).unwrap();
    let status = line
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("not a status line: {line:?}"));
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        s.read_line(&mut h).unwrap();
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        let (name, value) = h.split_once(':').expect("a header line");
        headers.push((name.to_ascii_lowercase(), value.trim().to_owned()));
    }
    let mut body = Vec::new();
    match headers.iter().find(|(n, _)| n == "content-length") {
        Some((_, n)) => {
            body.resize(n.parse().unwrap(), 0);
            s.read_exact(&mut body).unwrap();
        }
        None if status != 101 => {
            s.read_to_end(&mut body).unwrap();
        }
        None => {}
    }
    (status, headers, body)
}

fn get(d: &Double, path: &str) -> (u16, Vec<(String, String)>, Vec<u8>) {
    let mut s = d.connect();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    read_response(&mut BufReader::new(s))
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

#[test]
fn health_is_503_while_loading_then_200() {
    const LOAD: Duration = Duration::from_secs(3);
    let d = Double::start(&["--load-time", "3"]);
    let asked = Instant::now();
    let (status, _, body) = get(&d, "/health");
    // The double's clock starts after our spawn: asked within LOAD of the
    // spawn, it cannot have loaded yet.
    if asked.duration_since(d.spawned) < LOAD {
        assert_eq!(status, 503, "{}", String::from_utf8_lossy(&body));
        assert_eq!(body, br#"{"status":"loading model"}"#);
    }
    let deadline = Instant::now() + PATIENCE;
    loop {
        let (status, _, body) = get(&d, "/health");
        if status == 200 {
            assert_eq!(body, br#"{"status":"ok"}"#);
            break;
        }
        assert_eq!(status, 503);
        assert!(Instant::now() < deadline, "/health never became 200");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn never_healthy_stays_503_and_hello_names_the_instance() {
    let d = Double::start(&["--never-healthy"]);
    for _ in 0..3 {
        assert_eq!(get(&d, "/health").0, 503);
    }
    let (status, headers, body) = get(&d, "/hello");
    assert_eq!(status, 200);
    let pid = d.child.id().to_string();
    assert_eq!(header(&headers, "x-served-by"), Some(pid.as_str()));
    let body = String::from_utf8(body).unwrap();
    assert!(
        body.contains(&format!("pid {pid} port {}", d.port)),
        "{body}"
    );
}

#[test]
fn keep_alive_bytes_and_echo_on_one_connection() {
    let d = Double::start(&[]);
    let s = d.connect();
    let mut w = s.try_clone().unwrap();
    let mut r = BufReader::new(s);
    write!(w, "GET /bytes?n=300000 HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let (status, _, body) = read_response(&mut r);
    assert_eq!((status, body.len()), (200, 300_000));
    write!(
        w,
        "POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello"
    )
    .unwrap();
    let (status, headers, body) = read_response(&mut r);
    assert_eq!((status, body.as_slice()), (200, &b"hello"[..]));
    assert_eq!(header(&headers, "connection"), None, "kept alive");
}

#[test]
fn sse_streams_k_tokens_then_done() {
    let d = Double::start(&[]);
    let (status, headers, body) = get(&d, "/sse?tokens=5&rate=100");
    assert_eq!(status, 200);
    assert_eq!(header(&headers, "content-type"), Some("text/event-stream"));
    let want: String = (0..5)
        .map(|i| format!("data: token {i}\n\n"))
        .chain(["data: [DONE]\n\n".to_owned()])
        .collect();
    assert_eq!(String::from_utf8(body).unwrap(), want);
}

#[test]
fn upgrade_echoes_raw_bytes_and_respects_half_close() {
    let d = Double::start(&[]);
    let mut s = d.connect();
    // The first raw bytes ride in the same segment as the request: they
    // must not be lost in the server's read buffer.
    write!(
        s,
        "GET /upgrade HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\nfirst;"
    )
    .unwrap();
    let mut r = BufReader::new(s.try_clone().unwrap());
    let (status, headers, _) = read_response(&mut r);
    assert_eq!(status, 101);
    assert_eq!(header(&headers, "upgrade"), Some("websocket"));
    s.write_all(b"second").unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    let mut echoed = Vec::new();
    r.read_to_end(&mut echoed).unwrap();
    assert_eq!(echoed, b"first;second");
}

#[test]
fn crash_after_bind_exits_1() {
    let mut d = Double::start(&["--crash-after-bind"]);
    let status = d.wait();
    assert_eq!(status.code(), Some(1), "{status}");
    let mut rest = String::new();
    d.stderr.read_to_string(&mut rest).unwrap();
    assert!(rest.contains("crashing after bind"), "{rest}");
}

#[test]
fn sigterm_finishes_an_sse_stream_and_a_started_request_then_exits_0() {
    let mut d = Double::start(&[]);
    // An SSE stream in flight: its first event is here.
    let mut sse = BufReader::new(d.connect());
    write!(
        sse.get_mut(),
        "GET /sse?tokens=20&rate=20 HTTP/1.1\r\nHost: x\r\n\r\n"
    )
    .unwrap();
    let mut line = String::new();
    while line != "data: token 0\n" {
        line.clear();
        assert!(sse.read_line(&mut line).unwrap() > 0, "SSE stream ended");
    }
    // A keep-alive connection whose next request has begun: its first bytes
    // are on the wire, the rest comes after SIGTERM.
    let mut kept = d.connect();
    write!(kept, "GET /hello HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut kept_r = BufReader::new(kept.try_clone().unwrap());
    assert_eq!(read_response(&mut kept_r).0, 200);
    write!(kept, "GET /hello HTTP/1.1\r\n").unwrap();
    // And an idle keep-alive connection, which must not hold shutdown up.
    let mut idle = d.connect();
    write!(idle, "GET /hello HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut idle_r = BufReader::new(idle.try_clone().unwrap());
    assert_eq!(read_response(&mut idle_r).0, 200);

    d.term();
    write!(kept, "Host: x\r\n\r\n").unwrap();
    let (status, headers, _) = read_response(&mut kept_r);
    assert_eq!(status, 200);
    assert_eq!(header(&headers, "connection"), Some("close"));
    let mut rest = Vec::new();
    kept_r.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty(), "closed after the response");

    let mut stream = String::new();
    sse.read_to_string(&mut stream).unwrap();
    let want: String = (1..20)
        .map(|i| format!("\ndata: token {i}\n"))
        .chain(["\ndata: [DONE]\n\n".to_owned()])
        .collect();
    assert_eq!(stream, want);

    let status = d.wait();
    assert!(status.success(), "{status}");
    let mut idle_rest = Vec::new();
    assert_eq!(idle_r.read_to_end(&mut idle_rest).unwrap(), 0);
    assert!(
        TcpStream::connect(("127.0.0.1", d.port)).is_err(),
        "the port still accepts after the double exited"
    );
}
