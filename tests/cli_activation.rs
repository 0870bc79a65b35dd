//! Socket activation and socket passing end to end, with real tools:
//! `systemd-socket-activate` hands `llmlb serve` a listening socket (the
//! `LISTEN_FDS` protocol), which it serves on or, in exec mode, passes on to
//! the command as descriptor 3; `serve --pass-socket` binds the socket itself
//! and passes it the same way. The command is a small Python HTTP server
//! that serves only on a socket passed to *it* (`LISTEN_PID` = its PID).
//! Linux only: the protocol is systemd's (Windows refuses `--pass-socket`).
#![cfg(target_os = "linux")]

mod cli_support;
#[path = "support/prereq.rs"]
mod prereq;

use std::path::PathBuf;
use std::process::Command;

use cli_support::*;

/// Serves HTTP on descriptor 3 only if it was passed to this very process;
/// answers every GET with what it was given, as JSON.
const SERVER_PY: &str = r#"
import json, os, socket, sys
from http.server import BaseHTTPRequestHandler, HTTPServer
if os.environ.get("LISTEN_FDS") != "1" or os.environ.get("LISTEN_PID") != str(os.getpid()):
    sys.exit("server.py: no socket passed to PID %d: LISTEN_FDS=%r LISTEN_PID=%r"
             % (os.getpid(), os.environ.get("LISTEN_FDS"), os.environ.get("LISTEN_PID")))
sock = socket.socket(fileno=3)
lock_fd = int(os.environ["LLMLB_LOCK_FD"])
class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        body = json.dumps({
            "pid": os.getpid(),
            "listen_pid": int(os.environ["LISTEN_PID"]),
            "fdnames": os.environ.get("LISTEN_FDNAMES"),
            "lock_fd": lock_fd,
            "lock_file": os.readlink("/proc/self/fd/%d" % lock_fd),
        }).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
server = HTTPServer(sock.getsockname()[:2], Handler, bind_and_activate=False)
server.socket = sock
server.serve_forever()
"#;

/// Whether `tool --version` runs; if not, fails under CI and otherwise says
/// the test is skipped.
fn have(tool: &str, package: &str) -> bool {
    let ok = Command::new(tool)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        prereq::skip_unless_ci(
            &format!("`{tool}` is not installed"),
            &format!("install {package}"),
            "this socket-activation scenario",
        );
    }
    ok
}

/// Writes server.py into the test's dir.
fn server_py(env: &Env) -> PathBuf {
    let path = env.tmp.path().join("server.py");
    std::fs::write(&path, SERVER_PY).unwrap();
    path
}

/// `systemd-socket-activate -l 127.0.0.1:PORT [extra…] llmlb ARGS`, the
/// child's environment given with `-E` (the tool passes nothing else).
fn activate(env: &Env, port: u16, extra: &[&str], args: &[&str]) -> Command {
    let mut cmd = Command::new("systemd-socket-activate");
    cmd.arg("-l")
        .arg(format!("127.0.0.1:{port}"))
        .args(extra)
        .arg("-E")
        .arg(format!("LLMLB_LOCK_DIR={}", env.locks.display()))
        .args(["-E", "LLMLB_LOG_LEVEL=info", "-E", "PATH"])
        .arg(env!("CARGO_BIN_EXE_llmlb"))
        .args(args)
        .env_remove("LLMLB_PORT")
        .env_remove("LLMLB_HOST")
        .current_dir(env.tmp.path());
    cmd
}

/// GET `/` from the Python server, parsed; polls until it answers (the
/// first connection is what makes `systemd-socket-activate` start llmlb).
fn ask_server(proc: &mut Proc, port: u16) -> serde_json::Value {
    let mut answer = None;
    wait_until("the command's answer", || {
        if let Some(status) = proc.try_wait() {
            panic!("llmlb exited ({status}); stderr:\n{}", proc.stderr());
        }
        answer = http_get(port, "/").filter(|(code, _)| *code == 200);
        answer.is_some()
    });
    serde_json::from_str(&answer.unwrap().1).unwrap()
}

/// The record's serving state, as written by the holder.
fn record_state(env: &Env, port: u16) -> Option<llmlb::lock::ServeState> {
    let bytes = std::fs::read(env.lock_file(port)).ok()?;
    llmlb::lock::LockInfo::parse(&bytes)?.state
}

/// `llmlb stop` ends it cleanly and the lock file is gone.
fn stop(env: &Env, proc: &mut Proc, port: u16) {
    let out = env.run(&["stop", "-p", &port.to_string()]);
    assert_eq!(out.code(), Some(0), "{out:?}");
    proc.wait();
    assert!(!env.lock_file(port).exists());
}

#[test]
fn an_activated_server_serves_http_on_the_passed_socket() {
    if !have("systemd-socket-activate", "systemd") {
        return;
    }
    let env = Env::new();
    let port = free_port();
    // No --port: the socket's port is the one locked. llmlb cannot bind it
    // itself (the tool's socket listens there), so an answer is proof.
    let mut server = env.spawn_cmd(activate(&env, port, &[], &["serve"]));
    let health: serde_json::Value = serde_json::from_str(&server.wait_health(port)).unwrap();
    // systemd-socket-activate execs llmlb in its own process.
    assert_eq!(health["pid"], server.pid());
    assert_eq!(health["port"], port);
    let (code, json) = status_json(&env, Some(port));
    assert_eq!(code, Some(0), "{json}");
    assert_eq!(json[0]["port"], port);
    assert_eq!(json[0]["pid"], server.pid());
    assert_eq!(
        record_state(&env, port),
        Some(llmlb::lock::ServeState::Ready)
    );
    stop(&env, &mut server, port);
}

#[test]
fn a_port_that_disagrees_with_the_activated_socket_is_a_usage_error() {
    if !have("systemd-socket-activate", "systemd") {
        return;
    }
    let env = Env::new();
    let port = free_port();
    let other = if port == 65535 { port - 1 } else { port + 1 };
    for (extra, args, named) in [
        (
            vec![],
            vec!["serve", "--port", &*other.to_string()],
            format!("--port {other}"),
        ),
        (
            vec!["-E".to_owned(), format!("LLMLB_PORT={other}")],
            vec!["serve"],
            format!("LLMLB_PORT={other}"),
        ),
    ] {
        let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
        let args: Vec<&str> = args.iter().map(|a| a.as_ref()).collect();
        let mut proc = env.spawn_cmd(activate(&env, port, &extra, &args));
        // The first connection starts llmlb, which refuses at once.
        wait_until("llmlb to start and refuse", || {
            let _ = std::net::TcpStream::connect(("127.0.0.1", port));
            proc.try_wait().is_some()
        });
        let out = proc.finish();
        assert_eq!(out.code(), Some(2), "{out:?}");
        assert!(
            out.stderr.contains(&named) && out.stderr.contains(&format!("port {port}")),
            "both ports named: {}",
            out.stderr
        );
        assert!(!env.lock_file(port).exists());
        assert!(!env.lock_file(other).exists());
    }
}

#[test]
fn an_activated_socket_that_is_not_a_tcp_listener_is_one_error_line() {
    if !have("systemd-socket-activate", "systemd") {
        return;
    }
    let env = Env::new();
    let port = free_port();
    let mut proc = env.spawn_cmd(activate(&env, port, &["--datagram"], &["serve"]));
    let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    wait_until("llmlb to start and refuse", || {
        let _ = udp.send_to(b"x", ("127.0.0.1", port));
        proc.try_wait().is_some()
    });
    let out = proc.finish();
    assert_eq!(out.code(), Some(1), "{out:?}");
    let errors: Vec<&str> = out
        .stderr
        .lines()
        .filter(|l| l.starts_with("Error: "))
        .collect();
    assert_eq!(errors.len(), 1, "{}", out.stderr);
    assert!(
        errors[0].contains("descriptor 3 is not a stream socket"),
        "{}",
        out.stderr
    );
    assert!(!env.lock_file(port).exists());
}

#[test]
fn variables_for_another_process_are_ignored_and_not_passed_on() {
    let env = Env::new();
    let port = free_port();
    let seen = env.tmp.path().join("seen.txt");
    let script = format!(
        "echo \"${{LISTEN_PID-unset}} ${{LISTEN_FDS-unset}} ${{LISTEN_FDNAMES-unset}}\" > {}",
        seen.display()
    );
    let mut cmd = env.cmd(&["serve", "-p", &port.to_string(), "--", "sh", "-c", &script]);
    cmd.env("LISTEN_PID", "1")
        .env("LISTEN_FDS", "1")
        .env("LISTEN_FDNAMES", "other");
    let out = env.spawn_cmd(cmd).finish();
    assert_eq!(out.code(), Some(0), "{out:?}");
    assert_eq!(read_when_written(&seen), "unset unset unset");
}

#[test]
fn an_activated_socket_goes_to_the_command_as_descriptor_3() {
    if !have("systemd-socket-activate", "systemd") {
        return;
    }
    let env = Env::new();
    let port = free_port();
    let script = server_py(&env);
    // An explicit port that agrees is fine.
    let args = [
        "serve",
        "-p",
        &port.to_string(),
        "--",
        "python3",
        script.to_str().unwrap(),
    ];
    let mut llmlb = env.spawn_cmd(activate(&env, port, &["--fdname=web"], &args));
    let answer = ask_server(&mut llmlb, port);
    let child = answer["pid"].as_u64().unwrap() as u32;
    let _group = GroupGuard(Some(child));
    assert_eq!(answer["listen_pid"], child);
    assert_eq!(answer["fdnames"], "web");
    assert_ne!(answer["lock_fd"], 3);
    assert_eq!(
        PathBuf::from(answer["lock_file"].as_str().unwrap()),
        env.lock_file(port)
    );
    wait_until("child_pgid recorded", || {
        let (code, json) = status_json(&env, Some(port));
        code == Some(0) && json[0]["child_pgid"] == child && json[0]["pid"] == llmlb.pid()
    });
    stop(&env, &mut llmlb, port);
}

#[test]
fn pass_socket_binds_after_the_lock_and_passes_it_with_the_commands_pid() {
    let env = Env::new();
    let port = free_port();
    let script = server_py(&env);
    let mut llmlb = env.spawn(&[
        "serve",
        "--pass-socket",
        "-H",
        "127.0.0.1",
        "-p",
        &port.to_string(),
        "--",
        "python3",
        script.to_str().unwrap(),
    ]);
    let answer = ask_server(&mut llmlb, port);
    let child = answer["pid"].as_u64().unwrap() as u32;
    let _group = GroupGuard(Some(child));
    assert_eq!(answer["listen_pid"], child);
    assert_eq!(answer["fdnames"], "llmlb");
    assert_ne!(answer["lock_fd"], 3);
    assert_eq!(
        PathBuf::from(answer["lock_file"].as_str().unwrap()),
        env.lock_file(port)
    );
    // The PID the command saw is the one the lock record names as its group.
    wait_until("child_pgid recorded", || {
        let (code, json) = status_json(&env, Some(port));
        code == Some(0) && json[0]["child_pgid"] == child
    });
    stop(&env, &mut llmlb, port);
}

#[test]
fn pass_socket_on_a_port_in_use_fails_and_releases() {
    let env = Env::new();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let ran = env.tmp.path().join("ran");
    let out = env.run(&[
        "serve",
        "--pass-socket",
        "-H",
        "127.0.0.1",
        "-p",
        &port.to_string(),
        "--",
        "touch",
        ran.to_str().unwrap(),
    ]);
    assert_eq!(out.code(), Some(1), "{out:?}");
    assert!(
        out.stderr.lines().any(|l| l
            == format!(
                "Error: port {port} is already in use by another program: {}",
                this_process()
            )),
        "{}",
        out.stderr
    );
    assert!(!ran.exists(), "the command ran without its socket");
    assert!(!env.lock_file(port).exists());
}

#[test]
fn pass_socket_needs_a_command() {
    let env = Env::new();
    let out = env.run(&["serve", "--pass-socket", "-p", &free_port().to_string()]);
    assert_eq!(out.code(), Some(2), "{out:?}");
    assert!(out.stderr.contains("--pass-socket"), "{}", out.stderr);
}

/// gunicorn is optional here: where it is not installed the test says so and
/// passes, in CI too.
#[test]
fn gunicorn_serves_on_the_passed_socket() {
    let have_gunicorn = Command::new("python3")
        .args(["-m", "gunicorn", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !have_gunicorn {
        use std::io::Write as _;
        let _ = writeln!(
            std::io::stderr().lock(),
            "\nSKIPPED gunicorn_serves_on_the_passed_socket: gunicorn is not installed (pip install gunicorn); optional"
        );
        return;
    }
    let env = Env::new();
    let port = free_port();
    std::fs::write(
        env.tmp.path().join("app.py"),
        "import os\n\
         def app(environ, start_response):\n\
         \x20   start_response('200 OK', [('Content-Type', 'text/plain')])\n\
         \x20   return [b'gunicorn %d' % os.getppid()]\n",
    )
    .unwrap();
    let mut llmlb = env.spawn(&[
        "serve",
        "--pass-socket",
        "-H",
        "127.0.0.1",
        "-p",
        &port.to_string(),
        "--",
        "python3",
        "-m",
        "gunicorn",
        // No `--bind fd://3`: gunicorn takes descriptor 3 from LISTEN_FDS
        // itself, and given both it counts the one socket twice and fails.
        "--workers",
        "1",
        "app:app",
    ]);
    let mut body = String::new();
    wait_until("gunicorn's answer", || {
        if let Some(status) = llmlb.try_wait() {
            panic!("llmlb exited ({status}); stderr:\n{}", llmlb.stderr());
        }
        body = http_get(port, "/").map(|(_, b)| b).unwrap_or_default();
        body.starts_with("gunicorn ")
    });
    // The worker's parent is the arbiter, the command llmlb started.
    let (_, json) = status_json(&env, Some(port));
    assert_eq!(body, format!("gunicorn {}", json[0]["child_pgid"]));
    stop(&env, &mut llmlb, port);
}

#[test]
fn pass_socket_reports_a_missing_command_as_exec_mode_does() {
    let env = Env::new();
    let port = free_port();
    let out = env.run(&[
        "serve",
        "--pass-socket",
        "-H",
        "127.0.0.1",
        "-p",
        &port.to_string(),
        "--",
        "llmlb-no-such-command",
    ]);
    // Found through PATH by llmlb's own execve loop, not std's execvp.
    assert_eq!(out.code(), Some(127), "{out:?}");
    assert!(
        out.stderr
            .lines()
            .any(|l| l.starts_with("Error: cannot run llmlb-no-such-command: ")),
        "{}",
        out.stderr
    );
    assert!(!env.lock_file(port).exists());
}

/// `--pass-socket` with a command written to bind its port itself: its bind
/// fails (llmlb listens there), and llmlb's line says the command must serve
/// on descriptor 3 instead; the command's code is the exit code.
#[test]
fn pass_socket_to_a_command_that_binds_the_port_itself_says_to_serve_on_fd_3() {
    let env = Env::new();
    let port = free_port();
    let script =
        format!("import socket\ns=socket.socket()\ns.bind(('127.0.0.1',{port}))\ns.listen()\n");
    let out = env.run(&[
        "serve",
        "--pass-socket",
        "-H",
        "127.0.0.1",
        "-p",
        &port.to_string(),
        "--",
        "python3",
        "-c",
        &script,
    ]);
    assert_eq!(out.code(), Some(1), "{out:?}");
    assert!(out.stderr.contains("Address already in use"), "{out:?}");
    assert!(
        out.stderr.lines().any(|l| l
            == format!(
                "Error: python3 exited with code 1; it was passed port {port}'s socket and must \
                 serve on descriptor 3 (LISTEN_FDS=1), not bind the port itself (llmlb already \
                 listens there; see docs/cli.md)"
            )),
        "{out:?}"
    );
    assert!(!env.lock_file(port).exists());
}

/// The Python fd-3 server docs/cli.md offers for copy and paste serves
/// under `--pass-socket` as printed, and `llmlb stop` ends it with exit 0.
#[test]
fn the_documented_fd_3_python_server_serves_under_pass_socket() {
    let page =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/cli.md")).unwrap();
    let start = page
        .find("```python\n# server.py")
        .expect("docs/cli.md has the ```python block of server.py");
    let block = &page[start + "```python\n".len()..];
    let script = &block[..block.find("```").expect("the block ends")];
    let env = Env::new();
    let path = env.tmp.path().join("server.py");
    std::fs::write(&path, script).unwrap();
    let port = free_port();
    let p = port.to_string();
    let mut server = env.spawn(&[
        "serve",
        "-p",
        &p,
        "--host",
        "127.0.0.1",
        "--pass-socket",
        "--",
        "python3",
        path.to_str().unwrap(),
    ]);
    let mut answer = None;
    wait_until("the documented server to answer", || {
        answer = http_get(port, "/");
        answer.is_some() || server.try_wait().is_some()
    });
    assert_eq!(
        answer,
        Some((200, "hello\n".to_owned())),
        "{}",
        server.stderr()
    );
    let out = env.run(&["stop", "-p", &p]);
    assert_eq!(out.code(), Some(0), "{out:?}");
    assert_eq!(server.wait().code(), Some(0), "{}", server.stderr());
}
