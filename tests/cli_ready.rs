//! Exec mode's readiness, `llmlb serve --ready listen|notify|immediate|http
//! -- CMD`: the lock record says `starting` until the policy sees the command
//! ready, then `ready`, and `stopping` once shutdown begins. Real processes
//! and real clients (`python3` listening or answering HTTP, `systemd-notify`); every "still
//! starting" is asserted after something the command did that llmlb has
//! provably handled (a file it waits for, a log line), never after a sleep.
//! The policies' cases run against `llmlb serve` and the C and Python
//! launchers over `llmlb_serve_exec` alike ([`servers::Server`]).

mod cli_support;
#[cfg(unix)]
#[path = "../ffi/tests/support/mod.rs"]
mod ffi_support;
#[cfg(unix)]
#[path = "support/servers.rs"]
mod servers;

#[cfg(unix)]
use servers::Server;

#[cfg(unix)]
use std::path::{Path, PathBuf};

use cli_support::*;

/// The serving state in `port`'s lock record (`None` while it is unreadable
/// or absent).
#[cfg(unix)]
fn state(env: &Env, port: u16) -> Option<String> {
    let raw = std::fs::read(env.lock_file(port)).ok()?;
    let info = llmlb::lock::LockInfo::parse(&raw)?;
    Some(info.state?.name().to_owned())
}

/// Waits until the record says `want`.
#[cfg(unix)]
fn wait_state(env: &Env, port: u16, want: &str) {
    wait_until(&format!("port {port} {want}"), || {
        state(env, port).as_deref() == Some(want)
    });
}

/// Whether `tool` runs here. Missing: a failure under CI, else a skip.
#[cfg(target_os = "linux")]
fn have(tool: &str) -> bool {
    let found = std::process::Command::new(tool)
        .arg("--version")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        assert!(
            std::env::var_os("CI").is_none(),
            "{tool} is required under CI (Debian: apt-get install systemd / python3)"
        );
        eprintln!("skipped: {tool} is not installed");
    }
    found
}

/// A path in the test's temp dir, for the shell (no quotes needed: tempfile
/// names are plain).
#[cfg(unix)]
fn file(env: &Env, name: &str) -> PathBuf {
    env.tmp.path().join(name)
}

#[cfg(unix)]
fn touch(path: &Path) {
    std::fs::write(path, b"").unwrap();
}

/// `immediate`: ready once started. The command does not inherit llmlb's
/// own `NOTIFY_SOCKET` (llmlb reports to its supervisor itself).
#[cfg(unix)]
#[test]
fn immediate_is_ready_once_started() {
    for server in Server::ALL {
        eprintln!("--- against {server:?}");
        immediate_is_ready_once_started_for(server);
    }
}

#[cfg(unix)]
fn immediate_is_ready_once_started_for(server: Server) {
    let env = Env::new();
    let port = free_port();
    let seen = file(&env, "seen");
    let script = format!(
        "echo \"${{NOTIFY_SOCKET-unset}}\" > {seen}; exec sleep 30",
        seen = seen.display()
    );
    let mut cmd = server.cmd(
        &env,
        &[
            "-p",
            &port.to_string(),
            "--ready",
            "immediate",
            "--",
            "sh",
            "-c",
            &script,
        ],
    );
    cmd.env("NOTIFY_SOCKET", file(&env, "supervisor.sock"));
    let mut serve = env.spawn_cmd(cmd);
    wait_state(&env, port, "ready");
    assert_eq!(read_when_written(&seen), "unset", "{server:?}");
    signal(serve.pid(), libc::SIGTERM);
    serve.wait();
    assert!(!env.lock_file(port).exists(), "{server:?}");
}

/// `serve ARGS -- python3 …` that writes `started`, waits for `go`, then
/// listens on `host`:$LLMLB_PORT and writes `listening`.
#[cfg(target_os = "linux")]
fn listen_case(server: Server, env: &Env, port: u16, ready_args: &[&str], host: &str) -> Proc {
    let script = format!(
        "import os, socket, time\n\
         open({started:?}, 'w').close()\n\
         while not os.path.exists({go:?}): time.sleep(0.01)\n\
         s = socket.socket()\n\
         s.bind(({host:?}, int(os.environ['LLMLB_PORT'])))\n\
         s.listen()\n\
         open({listening:?}, 'w').close()\n\
         time.sleep(30)\n",
        started = file(env, "started").to_str().unwrap(),
        go = file(env, "go").to_str().unwrap(),
        listening = file(env, "listening").to_str().unwrap(),
    );
    let port = port.to_string();
    // `--host` as the command binds: exec mode checks that the command's
    // address (`LLMLB_HOST`) and port are bindable before starting it.
    let mut args = vec!["-p", &port, "--host", host];
    args.extend(ready_args);
    args.extend(["--", "python3", "-c", &script]);
    env.spawn_cmd(server.cmd(env, &args))
}

#[cfg(target_os = "linux")]
fn listen_is_ready_once_the_command_listens(ready_args: &[&str]) {
    if !have("python3") {
        return;
    }
    for server in Server::ALL {
        eprintln!("--- against {server:?}");
        let env = Env::new();
        let port = free_port();
        let mut serve = listen_case(server, &env, port, ready_args, "127.0.0.1");
        wait_until("the command to start", || file(&env, "started").exists());
        // It runs and does not listen until told to: starting.
        assert_eq!(state(&env, port).as_deref(), Some("starting"), "{server:?}");
        touch(&file(&env, "go"));
        wait_state(&env, port, "ready");
        assert!(file(&env, "listening").exists(), "{server:?}");
        signal(serve.pid(), libc::SIGTERM);
        serve.wait();
        assert!(!env.lock_file(port).exists(), "{server:?}");
    }
}

#[cfg(target_os = "linux")]
#[test]
fn listen_is_ready_once_the_command_listens_on_the_port() {
    listen_is_ready_once_the_command_listens(&["--ready", "listen"]);
}

#[cfg(target_os = "linux")]
#[test]
fn listen_is_the_default() {
    listen_is_ready_once_the_command_listens(&[]);
}

/// On Linux, `listen` means the command's tree listens, not just anyone: a
/// squatter on the port (another address, same port) does not make it ready.
#[cfg(target_os = "linux")]
#[test]
fn a_squatter_on_the_port_does_not_make_the_command_ready() {
    if !have("python3") {
        return;
    }
    let env = Env::new();
    let port = free_port();
    let squatter = std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
    let mut serve = listen_case(Server::Cli, &env, port, &["--ready", "listen"], "127.0.0.2");
    wait_until("the command to start", || file(&env, "started").exists());
    // The squatter listens from before llmlb starts, and llmlb checks from
    // the spawn on (python takes far longer to write `started` than a
    // check): a connect probe would have said ready by now.
    assert_eq!(state(&env, port).as_deref(), Some("starting"));
    touch(&file(&env, "go"));
    wait_state(&env, port, "ready");
    drop(squatter);
    signal(serve.pid(), libc::SIGTERM);
    serve.wait();
}

/// `serve --ready notify -- sh -c SCRIPT`, logging at `level`, with
/// `NOTIFY_SOCKET` set to `own_socket` for llmlb itself if given.
#[cfg(unix)]
fn notify_case(
    server: Server,
    env: &Env,
    port: u16,
    script: &str,
    level: &str,
    own_socket: Option<&Path>,
) -> Proc {
    let mut cmd = server.cmd(
        env,
        &[
            "-p",
            &port.to_string(),
            "--ready",
            "notify",
            "--",
            "sh",
            "-c",
            script,
        ],
    );
    cmd.env("LLMLB_LOG_LEVEL", level)
        .env_remove("NOTIFY_SOCKET");
    if let Some(own) = own_socket {
        cmd.env("NOTIFY_SOCKET", own);
    }
    env.spawn_cmd(cmd)
}

#[cfg(target_os = "linux")]
#[test]
fn notify_is_ready_when_the_command_says_ready_with_systemd_notify() {
    for server in Server::ALL {
        eprintln!("--- against {server:?}");
        notify_is_ready_when_the_command_says_ready_with_systemd_notify_for(server);
    }
}

#[cfg(target_os = "linux")]
fn notify_is_ready_when_the_command_says_ready_with_systemd_notify_for(server: Server) {
    if !have("systemd-notify") {
        return;
    }
    let env = Env::new();
    let port = free_port();
    let started = file(&env, "started");
    let go = file(&env, "go");
    let script = format!(
        "echo \"$NOTIFY_SOCKET\" > {started}; \
         while [ ! -e {go} ]; do sleep 0.01; done; \
         systemd-notify --status='loading weights'; systemd-notify --ready; exec sleep 30",
        started = started.display(),
        go = go.display(),
    );
    // llmlb's own supervisor socket (played here; what llmlb itself sends
    // to it is not this test's concern).
    let own = file(&env, "supervisor.sock");
    let _supervisor = std::os::unix::net::UnixDatagram::bind(&own).unwrap();
    let mut serve = notify_case(server, &env, port, &script, "info", Some(&own));
    let socket = read_when_written(&started);
    // llmlb's own NOTIFY_SOCKET is not the command's: it got a fresh one
    // of its own, a socket file in the lock dir that only our user reaches.
    let socket = PathBuf::from(socket);
    assert_eq!(socket.parent(), Some(env.locks.as_path()));
    let name = socket.file_name().unwrap().to_string_lossy().into_owned();
    assert!(
        name.starts_with(&format!("notify_{port}_{}_", serve.pid())) && name.ends_with(".sock"),
        "{name}"
    );
    {
        use std::os::unix::fs::{FileTypeExt, PermissionsExt};
        let meta = std::fs::metadata(&socket).unwrap();
        assert!(meta.file_type().is_socket());
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    }
    assert_eq!(state(&env, port).as_deref(), Some("starting"));
    touch(&go);
    wait_state(&env, port, "ready");
    // STATUS= came first (systemd-notify waits until its datagram is read).
    assert!(
        serve.stderr().contains("command status: loading weights"),
        "{}",
        serve.stderr()
    );
    signal(serve.pid(), libc::SIGTERM);
    serve.wait();
    assert!(!env.lock_file(port).exists());
    assert!(!socket.exists(), "the notify socket file was left behind");
}

/// A lock dir whose path leaves no room in a socket address (108 bytes):
/// the command gets an abstract socket instead, and readiness still works.
#[cfg(target_os = "linux")]
#[test]
fn notify_falls_back_to_an_abstract_socket_for_a_long_lock_dir() {
    if !have("systemd-notify") {
        return;
    }
    let env = Env::new();
    let port = free_port();
    let locks = env.tmp.path().join("l".repeat(100));
    let started = file(&env, "started");
    let script = format!(
        "echo \"$NOTIFY_SOCKET\" > {started}; systemd-notify --ready; exec sleep 30",
        started = started.display(),
    );
    let mut cmd = env.cmd(&[
        "serve",
        "-p",
        &port.to_string(),
        "--ready",
        "notify",
        "--",
        "sh",
        "-c",
        &script,
    ]);
    cmd.env("LLMLB_LOCK_DIR", &locks)
        .env("LLMLB_LOG_LEVEL", "debug");
    let mut serve = env.spawn_cmd(cmd);
    let socket = read_when_written(&started);
    assert!(socket.starts_with("@llmlb/"), "{socket}");
    let lock_file = locks.join(format!("serve_{port}.lock"));
    wait_until("ready", || {
        std::fs::read(&lock_file)
            .ok()
            .and_then(|raw| llmlb::lock::LockInfo::parse(&raw)?.state)
            .is_some_and(|s| s.name() == "ready")
    });
    assert!(
        serve.stderr().contains("using an abstract socket"),
        "{}",
        serve.stderr()
    );
    signal(serve.pid(), libc::SIGTERM);
    serve.wait();
}

/// A command that never sends `READY=1` stays starting; so does one that
/// gets a `READY=1` from outside its tree (the test itself). Each check
/// follows a `STATUS=` the command sent after the message in question, so
/// llmlb has provably read and judged it (datagrams are read in order).
#[cfg(target_os = "linux")]
#[test]
fn notify_stays_starting_without_ready_from_the_commands_tree() {
    use std::os::unix::net::UnixDatagram;
    if !have("systemd-notify") {
        return;
    }
    let env = Env::new();
    let port = free_port();
    let started = file(&env, "started");
    let go = file(&env, "go");
    let script = format!(
        "echo \"$NOTIFY_SOCKET\" > {started}; \
         systemd-notify --status='first'; \
         while [ ! -e {go} ]; do sleep 0.01; done; \
         systemd-notify --status='after'; exec sleep 30",
        started = started.display(),
        go = go.display(),
    );
    let mut serve = notify_case(Server::Cli, &env, port, &script, "debug", None);
    let socket = read_when_written(&started);
    wait_until("the first STATUS=", || {
        serve.stderr().contains("command status: first")
    });
    // Never notified ready: still starting.
    assert_eq!(state(&env, port).as_deref(), Some("starting"));

    // READY=1 from a process outside the tree (this test, llmlb's parent).
    UnixDatagram::unbound()
        .unwrap()
        .send_to(b"READY=1", &socket)
        .unwrap();
    touch(&go);
    wait_until("the STATUS= sent after it", || {
        serve.stderr().contains("command status: after")
    });
    assert_eq!(state(&env, port).as_deref(), Some("starting"));
    // What a script waiting on it sees: `llmlb wait` times out naming the
    // state and the holder.
    let waited = env.run(&["wait", "-p", &port.to_string(), "-t", "1"]);
    assert_eq!(waited.code(), Some(1), "{}", waited.stderr);
    assert!(
        waited.stderr.starts_with(&format!(
            "Timed out after 1s waiting for port {port} to be ready: held by PID {}, starting for ",
            serve.pid()
        )),
        "{}",
        waited.stderr
    );
    let me = std::process::id();
    assert!(
        serve.stderr().contains(&format!(
            "PID {me} (uid {}) is not in the command's tree",
            unsafe { libc::geteuid() }
        )),
        "{}",
        serve.stderr()
    );
    signal(serve.pid(), libc::SIGTERM);
    serve.wait();
}

/// Datagrams from the tree that are too big, not text, or not the
/// protocol are skipped without harm; the next good one still counts.
#[cfg(target_os = "linux")]
#[test]
fn notify_survives_oversized_and_garbage_datagrams() {
    if !have("python3") {
        return;
    }
    let env = Env::new();
    let port = free_port();
    let script = "import os, socket, time\n\
         addr = os.environ['NOTIFY_SOCKET']\n\
         addr = '\\0' + addr[1:] if addr.startswith('@') else addr\n\
         s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)\n\
         s.sendto(b'STATUS=oversized\\n' + b'x' * 70000, addr)\n\
         s.sendto(bytes(range(256)) * 4, addr)\n\
         s.sendto(b'', addr)\n\
         s.sendto(b'READY\\nREADY=2\\n=\\nSTATUS=\\x1b[31mred\\rline', addr)\n\
         s.sendto(b'READY=1', addr)\n\
         time.sleep(30)\n";
    let mut serve = env.spawn(&[
        "serve",
        "-p",
        &port.to_string(),
        "--ready",
        "notify",
        "--",
        "python3",
        "-c",
        script,
    ]);
    wait_state(&env, port, "ready");
    let log = serve.stderr();
    // The STATUS= of the garbage datagram came through, escaped to one line.
    assert!(
        log.contains("command status: \\u{1b}[31mred\\rline\n"),
        "{log}"
    );
    assert!(!log.contains("panicked"), "{log}");
    // The oversized one was dropped whole, its STATUS= line included.
    assert!(!log.contains("oversized"), "{log}");
    signal(serve.pid(), libc::SIGTERM);
    // The command died of the forwarded SIGTERM, and so did serve.
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&serve.wait()),
        Some(libc::SIGTERM),
        "{}",
        serve.stderr()
    );
}

/// SIGTERM while starting: stopping while the command shuts down, then the
/// command's exit code and the lock released.
#[cfg(unix)]
#[test]
fn sigterm_while_starting_records_stopping_then_exits() {
    for server in Server::ALL {
        eprintln!("--- against {server:?}");
        sigterm_while_starting_records_stopping_then_exits_for(server);
    }
}

#[cfg(unix)]
fn sigterm_while_starting_records_stopping_then_exits_for(server: Server) {
    let env = Env::new();
    let port = free_port();
    let started = file(&env, "started");
    let go = file(&env, "go");
    let script = format!(
        "trap 'while [ ! -e {go} ]; do sleep 0.01; done; exit 0' TERM; \
         touch {started}; while :; do sleep 0.01; done",
        started = started.display(),
        go = go.display(),
    );
    let mut serve = notify_case(server, &env, port, &script, "info", None);
    wait_until("the command to start", || started.exists());
    assert_eq!(state(&env, port).as_deref(), Some("starting"));
    signal(serve.pid(), libc::SIGTERM);
    wait_state(&env, port, "stopping");
    touch(&go);
    let status = serve.wait();
    assert_eq!(status.code(), Some(0), "{}", serve.stderr());
    assert!(!env.lock_file(port).exists());
}

/// A command that ends by itself begins the shutdown too: stopping while
/// the rest of its group (here one that ignores SIGTERM) is ended.
#[cfg(unix)]
#[test]
fn a_command_that_exits_by_itself_records_stopping() {
    let env = Env::new();
    let port = free_port();
    let go = file(&env, "go");
    let script = format!(
        "(trap '' TERM; while [ ! -e {go} ]; do sleep 0.01; done) & exit 0",
        go = go.display(),
    );
    let mut serve = env.spawn(&[
        "serve",
        "-p",
        &port.to_string(),
        "--ready",
        "immediate",
        "--",
        "sh",
        "-c",
        &script,
    ]);
    wait_state(&env, port, "stopping");
    touch(&go);
    let status = serve.wait();
    assert_eq!(status.code(), Some(0), "{}", serve.stderr());
    assert!(!env.lock_file(port).exists());
}

/// A raw HTTP server for `--ready http` (python3 on 127.0.0.1:$LLMLB_PORT, or
/// on descriptor 3 with `fd3`): each connection is answered `before` until
/// the file `go` exists, then `after`; an answer is a status code or
/// `silent` (accept, read nothing, never answer, keep the connection). Each
/// request's path is appended to `paths`.
#[cfg(target_os = "linux")]
const HTTP_SERVER: &str = r#"
import os, socket, sys
go, before, after, paths, fd3 = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5] == "fd3"
if fd3:
    s = socket.socket(fileno=3)
else:
    s = socket.socket()
    s.bind(("127.0.0.1", int(os.environ["LLMLB_PORT"])))
    s.listen(64)
held = []
while True:
    c, _ = s.accept()
    what = after if os.path.exists(go) else before
    if what == "silent":
        held.append(c)
        continue
    c.settimeout(5)
    data = b""
    try:
        while b"\r\n\r\n" not in data:
            chunk = c.recv(4096)
            if not chunk:
                break
            data += chunk
        with open(paths, "a") as f:
            f.write(data.split(b" ")[1].decode() + "\n")
        c.sendall(b"HTTP/1.1 " + what.encode() + b" Whatever\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
    except Exception:
        pass
    c.close()
"#;

/// `serve -p PORT ARGS -- python3 HTTP_SERVER` answering `before`, then
/// `after` once the test's `go` file exists.
#[cfg(target_os = "linux")]
fn http_case(
    server: Server,
    env: &Env,
    port: u16,
    args: &[&str],
    before: &str,
    after: &str,
    fd3: bool,
) -> Proc {
    let port = port.to_string();
    let go = file(env, "go");
    let paths = file(env, "paths");
    let mut all = vec!["-p", &port];
    all.extend(args);
    all.extend(["--", "python3", "-c", HTTP_SERVER]);
    all.extend([go.to_str().unwrap(), before, after, paths.to_str().unwrap()]);
    all.push(if fd3 { "fd3" } else { "bind" });
    env.spawn_cmd(server.cmd(env, &all))
}

/// `--ready http`: starting for as long as GET /health answers 503 (the
/// log says so, which proves llmlb saw the 503), ready once it answers 200.
#[cfg(target_os = "linux")]
#[test]
fn http_is_starting_while_the_health_check_answers_503_then_ready() {
    for server in Server::ALL {
        eprintln!("--- against {server:?}");
        http_is_starting_while_the_health_check_answers_503_then_ready_for(server);
    }
}

#[cfg(target_os = "linux")]
fn http_is_starting_while_the_health_check_answers_503_then_ready_for(server: Server) {
    if !have("python3") {
        return;
    }
    let env = Env::new();
    let port = free_port();
    let mut serve = http_case(
        server,
        &env,
        port,
        &["--ready", "http"],
        "503",
        "200",
        false,
    );
    wait_until("the 503 to be seen", || {
        serve.stderr().contains("not ready yet: GET /health: 503")
    });
    assert_eq!(state(&env, port).as_deref(), Some("starting"));
    let (_, json) = status_json(&env, Some(port));
    assert_eq!(json[0]["serve_state"], "starting", "{json}");
    touch(&file(&env, "go"));
    wait_state(&env, port, "ready");
    assert!(
        serve.stderr().contains("is ready (--ready http:/health)"),
        "{}",
        serve.stderr()
    );
    let paths = std::fs::read_to_string(file(&env, "paths")).unwrap();
    assert!(paths.lines().all(|p| p == "/health"), "{paths}");
    signal(serve.pid(), libc::SIGTERM);
    serve.wait();
    assert!(!env.lock_file(port).exists());
}

/// `--ready http:/PATH`: that path is asked for; a 404 is not ready, a 3xx
/// is.
#[cfg(target_os = "linux")]
#[test]
fn http_with_a_path_counts_a_redirect_and_not_a_404() {
    if !have("python3") {
        return;
    }
    let env = Env::new();
    let port = free_port();
    let mut serve = http_case(
        Server::Cli,
        &env,
        port,
        &["--ready", "http:/v1/ok"],
        "404",
        "302",
        false,
    );
    wait_until("the 404 to be seen", || {
        serve.stderr().contains("not ready yet: GET /v1/ok: 404")
    });
    assert_eq!(state(&env, port).as_deref(), Some("starting"));
    touch(&file(&env, "go"));
    wait_state(&env, port, "ready");
    let paths = std::fs::read_to_string(file(&env, "paths")).unwrap();
    assert!(paths.lines().all(|p| p == "/v1/ok"), "{paths}");
    signal(serve.pid(), libc::SIGTERM);
    serve.wait();
}

/// A server that accepts but never answers is not ready, and does not stall
/// the watch: the probe gives up after 1 s and probes again, so the answer
/// that finally comes makes it ready.
#[cfg(target_os = "linux")]
#[test]
fn http_against_a_server_that_never_answers_is_not_ready_and_probing_goes_on() {
    if !have("python3") {
        return;
    }
    let env = Env::new();
    let port = free_port();
    let mut serve = http_case(
        Server::Cli,
        &env,
        port,
        &["--ready", "http"],
        "silent",
        "200",
        false,
    );
    wait_until("the silence to be seen", || {
        serve
            .stderr()
            .contains("not ready yet: GET /health: no status line within 1s")
    });
    assert_eq!(state(&env, port).as_deref(), Some("starting"));
    touch(&file(&env, "go"));
    wait_state(&env, port, "ready");
    signal(serve.pid(), libc::SIGTERM);
    serve.wait();
}

/// `--ready-timeout` with http: the failure line says what the last probe
/// got.
#[cfg(target_os = "linux")]
#[test]
fn http_ready_timeout_names_the_last_probe() {
    for server in Server::ALL {
        eprintln!("--- against {server:?}");
        http_ready_timeout_names_the_last_probe_for(server);
    }
}

#[cfg(target_os = "linux")]
fn http_ready_timeout_names_the_last_probe_for(server: Server) {
    if !have("python3") {
        return;
    }
    let env = Env::new();
    let port = free_port();
    let mut serve = http_case(
        server,
        &env,
        port,
        &["--ready", "http", "--ready-timeout", "2"],
        "503",
        "503",
        false,
    );
    let status = serve.wait();
    assert_eq!(status.code(), Some(1), "{}", serve.stderr());
    // The server answers 503 from its first request on (and it is still
    // running when the line is written): the last probe got a 503 once
    // any request reached it, else the port was not open yet.
    let asked = std::fs::read_to_string(file(&env, "paths")).unwrap_or_default();
    let last = if asked.is_empty() {
        "connection refused"
    } else {
        "503"
    };
    let line = format!(
        "(PID {}) did not answer GET /health with 2xx or 3xx (last: GET /health: {last}) within 2s (--ready-timeout); stopping it",
        serve_child_pid(&serve)
    );
    assert!(serve.stderr().contains(&line), "{line}\n{}", serve.stderr());
    assert!(!env.lock_file(port).exists());
}

/// The command's PID, from serve's `running CMD (PID n)` line.
#[cfg(target_os = "linux")]
fn serve_child_pid(serve: &Proc) -> u32 {
    let log = serve.stderr();
    let (_, rest) = log
        .split_once("running python3 (PID ")
        .unwrap_or_else(|| panic!("no `running` line: {log}"));
    rest.split(')').next().unwrap().parse().unwrap()
}

/// Without --replace a passed socket has no other server behind it: http
/// probes it, and the command serving on descriptor 3 is ready by it.
#[cfg(target_os = "linux")]
#[test]
fn http_with_a_passed_socket_is_allowed_without_replace() {
    if !have("python3") {
        return;
    }
    let env = Env::new();
    let port = free_port();
    let mut serve = http_case(
        Server::Cli,
        &env,
        port,
        &["--host", "127.0.0.1", "--pass-socket", "--ready", "http"],
        "503",
        "200",
        true,
    );
    wait_until("the 503 to be seen", || {
        serve.stderr().contains("not ready yet: GET /health: 503")
    });
    assert_eq!(state(&env, port).as_deref(), Some("starting"));
    touch(&file(&env, "go"));
    wait_state(&env, port, "ready");
    signal(serve.pid(), libc::SIGTERM);
    serve.wait();
}

#[test]
fn bad_http_paths_are_usage_errors_naming_the_value() {
    let env = Env::new();
    for (value, says) in [
        ("http:health", "the http path `health` must start with `/`"),
        ("http:/a b", "the http path `/a b` contains a space"),
        ("http:", "the http path `` must start with `/`"),
    ] {
        let out = env.run(&["serve", "--ready", value, "--", "true"]);
        assert_eq!(out.code(), Some(2), "{out:?}");
        assert!(
            out.stderr.contains(&format!(
                "invalid value '{value}' for '--ready <WHEN>': {says}"
            )),
            "{out:?}"
        );
    }
    assert!(std::fs::read_dir(&env.locks).map_or(true, |mut d| d.next().is_none()));
}

/// During a replace the old command accepts on the passed socket too: a
/// probe of the port could be answered by it, so http is refused there,
/// before anything is taken.
#[cfg(unix)]
#[test]
fn http_is_refused_with_replace() {
    let env = Env::new();
    let port = free_port();
    for ready in ["http", "http:/ready"] {
        let out = env.run(&[
            "serve",
            "-p",
            &port.to_string(),
            "--replace",
            "--ready",
            ready,
            "--",
            "true",
        ]);
        assert_eq!(out.code(), Some(2), "{out:?}");
        let spec = if ready == "http" {
            "http:/health"
        } else {
            ready
        };
        assert!(
            out.stderr.contains(&format!(
                "error: --ready {spec} cannot judge a replace: both the old and the new COMMAND accept on the socket of port {port} passed to them, so a probe of port {port} cannot tell which one answered; use --proxy (probes COMMAND's own port), or --ready notify or --ready listen"
            )),
            "{out:?}"
        );
        assert!(!env.lock_file(port).exists());
    }
}

#[test]
fn ready_without_a_command_is_a_usage_error() {
    let env = Env::new();
    let out = env.run(&["serve", "-p", &free_port().to_string(), "--ready", "listen"]);
    assert_eq!(out.code(), Some(2), "{out:?}");
    assert!(
        out.stderr
            .contains("--ready applies to exec mode only (the built-in server is ready once it listens): add `-- COMMAND` or drop --ready"),
        "{out:?}"
    );
    let out = env.run(&["serve", "--ready", "soon", "--", "true"]);
    assert_eq!(out.code(), Some(2), "{out:?}");
    assert!(
        out.stderr.contains(
            "`soon` is not a readiness policy: use listen, notify, immediate, http or http:/PATH"
        ),
        "{out:?}"
    );
}

#[cfg(windows)]
#[test]
fn notify_is_refused_on_windows() {
    let env = Env::new();
    let out = env.run(&["serve", "--ready", "notify", "--", "cmd", "/c", "exit"]);
    assert_eq!(out.code(), Some(2), "{out:?}");
    assert!(
        out.stderr
            .contains("--ready notify is not supported on Windows (there is no sd_notify)"),
        "{out:?}"
    );
    assert!(!env.locks.join("serve_32768.lock").exists());
}
