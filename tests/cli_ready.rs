//! Exec mode's readiness, `llmlb serve --ready listen|notify|immediate --
//! CMD`: the lock record says `starting` until the policy sees the command
//! ready, then `ready`, and `stopping` once shutdown begins. Real processes
//! and real clients (`python3` listening, `systemd-notify`); every "still
//! starting" is asserted after something the command did that llmlb has
//! provably handled (a file it waits for, a log line), never after a sleep.

mod cli_support;

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
    let env = Env::new();
    let port = free_port();
    let seen = file(&env, "seen");
    let script = format!(
        "echo \"${{NOTIFY_SOCKET-unset}}\" > {seen}; exec sleep 30",
        seen = seen.display()
    );
    let mut cmd = env.cmd(&[
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
    cmd.env("NOTIFY_SOCKET", file(&env, "supervisor.sock"));
    let mut serve = env.spawn_cmd(cmd);
    wait_state(&env, port, "ready");
    assert_eq!(read_when_written(&seen), "unset");
    signal(serve.pid(), libc::SIGTERM);
    serve.wait();
    assert!(!env.lock_file(port).exists());
}

/// `serve ARGS -- python3 …` that writes `started`, waits for `go`, then
/// listens on `host`:$LLMLB_PORT and writes `listening`.
#[cfg(target_os = "linux")]
fn listen_case(env: &Env, port: u16, ready_args: &[&str], host: &str) -> Proc {
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
    let mut args = vec!["serve", "-p", &port, "--host", host];
    args.extend(ready_args);
    args.extend(["--", "python3", "-c", &script]);
    env.spawn(&args)
}

#[cfg(target_os = "linux")]
fn listen_is_ready_once_the_command_listens(ready_args: &[&str]) {
    if !have("python3") {
        return;
    }
    let env = Env::new();
    let port = free_port();
    let mut serve = listen_case(&env, port, ready_args, "127.0.0.1");
    wait_until("the command to start", || file(&env, "started").exists());
    // It runs and does not listen until told to: starting.
    assert_eq!(state(&env, port).as_deref(), Some("starting"));
    touch(&file(&env, "go"));
    wait_state(&env, port, "ready");
    assert!(file(&env, "listening").exists());
    signal(serve.pid(), libc::SIGTERM);
    serve.wait();
    assert!(!env.lock_file(port).exists());
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
    let mut serve = listen_case(&env, port, &["--ready", "listen"], "127.0.0.2");
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
fn notify_case(env: &Env, port: u16, script: &str, level: &str, own_socket: Option<&Path>) -> Proc {
    let mut cmd = env.cmd(&[
        "serve",
        "-p",
        &port.to_string(),
        "--ready",
        "notify",
        "--",
        "sh",
        "-c",
        script,
    ]);
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
    let mut serve = notify_case(&env, port, &script, "info", Some(&own));
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
    let mut serve = notify_case(&env, port, &script, "debug", None);
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
    let mut serve = notify_case(&env, port, &script, "info", None);
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
    assert!(out.stderr.contains("listen, notify, immediate"), "{out:?}");
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
