//! Interop between `llmlb` and the non-Rust launchers built on the C ABI:
//! the C launcher (`ffi/examples/launcher.c`) and the Python one
//! (`ffi/python/llmlb_lock/launcher.py`) take exactly the lock `llmlb serve` takes, so
//! each side refuses the other with the holder's PID, `llmlb status` shows
//! them, and `llmlb stop` stops them.
//!
//! Lives in the root package because only its tests get `CARGO_BIN_EXE_llmlb`.
//! A missing C compiler or python3 fails the test (see
//! `ffi/tests/support/mod.rs`); the library the launchers load is the one
//! this `cargo test` built through the root package's dev-dependency on
//! `llmlb-lock-ffi`.
#![cfg(unix)]

#[path = "../ffi/tests/support/mod.rs"]
mod ffi_support;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use ffi_support::{describe, text};
use llmlb::lock::{LockState, ServeState};

const LLMLB: &str = env!("CARGO_BIN_EXE_llmlb");

/// A command that prints `ready` and then runs until SIGTERM, exiting 0.
const SERVER_SCRIPT: &str = "trap 'exit 0' TERM; echo ready; while :; do sleep 0.05; done";

struct Env {
    tmp: tempfile::TempDir,
    lock_dir: PathBuf,
}

impl Env {
    fn new() -> Env {
        let tmp = tempfile::tempdir().unwrap();
        let lock_dir = tmp.path().join("locks");
        Env { tmp, lock_dir }
    }

    /// Every process shares the lock dir through LLMLB_LOCK_DIR, which the
    /// CLI and the C ABI resolve the same way.
    fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new(program);
        cmd.env("LLMLB_LOCK_DIR", &self.lock_dir)
            .env("LLMLB_LOCK_LIB", ffi_support::shared_lib())
            .env_remove("LLMLB_PORT")
            .env_remove("LLMLB_HOST")
            // A manager or socket activation of the test runner's is not
            // the launchers' (a test that plays the manager sets its own).
            .env_remove("NOTIFY_SOCKET")
            .env_remove("LISTEN_PID")
            .env_remove("LISTEN_FDS");
        cmd
    }

    fn llmlb(&self, args: &[&str]) -> Output {
        self.command(LLMLB).args(args).output().unwrap()
    }

    fn lock_file(&self, port: u16) -> PathBuf {
        self.lock_dir.join(format!("serve_{port}.lock"))
    }

    fn probe(&self, port: u16) -> LockState {
        llmlb::lock::probe(&self.lock_dir, port).unwrap()
    }
}

/// A launcher command line (`[program, args…]`) for PORT and CMD.
type LauncherCmd = Vec<PathBuf>;

fn c_launcher(env: &Env) -> LauncherCmd {
    let cc = ffi_support::c_compiler();
    vec![ffi_support::build_launcher(&cc, env.tmp.path())]
}

fn python_launcher() -> LauncherCmd {
    vec![
        PathBuf::from(ffi_support::python3()),
        ffi_support::repo_root().join("ffi/python/llmlb_lock/launcher.py"),
    ]
}

fn launch(env: &Env, launcher: &LauncherCmd, port: u16, cmd: &[&str]) -> Command {
    let mut command = env.command(&launcher[0]);
    command
        .args(&launcher[1..])
        .arg(port.to_string())
        .arg("--")
        .args(cmd);
    command
}

/// Starts a launcher holding `port` and waits until its command says ready.
fn start_holder(env: &Env, launcher: &LauncherCmd, port: u16) -> Child {
    let mut child = launch(env, launcher, port, &["sh", "-c", SERVER_SCRIPT])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line, "ready\n", "the launcher did not start its command");
    child
}

/// A holder taken by a launcher is refused by `llmlb serve` (file untouched),
/// listed by `llmlb status`, and stopped by `llmlb stop`.
fn launcher_holder_interops_with_the_cli(launcher: LauncherCmd, env: Env, port: u16) {
    let mut holder = start_holder(&env, &launcher, port);
    let pid = holder.id();
    // The launcher records its command's group right after spawning it, which
    // may be after the command printed "ready": wait for that last write.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match env.probe(port) {
            LockState::Held(Some(info)) if info.child_pgid.is_some() => {
                assert_eq!(info.pid, pid);
                break;
            }
            LockState::Held(_) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(5))
            }
            other => panic!("expected the launcher to hold port {port} with its command's group recorded, got {other:?}"),
        }
    }
    let before = std::fs::read(env.lock_file(port)).unwrap();

    let port_s = port.to_string();
    let serve = env.llmlb(&["serve", "--port", &port_s, "--host", "127.0.0.1"]);
    assert_eq!(serve.status.code(), Some(1), "{}", describe(&serve));
    let err = text(&serve.stderr);
    assert!(
        err.contains(&format!(
            "Error: Server already running on port {port} (PID: {pid}, started: "
        )),
        "{err}"
    );
    assert!(err.contains(&format!("llmlb stop --port {port}")), "{err}");
    assert_eq!(std::fs::read(env.lock_file(port)).unwrap(), before);

    let status = env.llmlb(&["status", "--port", &port_s]);
    assert_eq!(status.status.code(), Some(0), "{}", describe(&status));
    let table = text(&status.stdout);
    // Default --ready listen, and the command never listens: starting.
    assert!(
        table.contains(&pid.to_string()) && table.contains("Starting"),
        "{table}"
    );
    let json = env.llmlb(&["status", "--format", "json"]);
    assert_eq!(json.status.code(), Some(0), "{}", describe(&json));
    let rows: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    let row = rows
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["port"] == port)
        .unwrap_or_else(|| panic!("port {port} missing from {rows}"));
    assert_eq!(row["pid"], pid);
    assert_eq!(row["state"], "running");

    let stop = env.llmlb(&["stop", "--port", &port_s]);
    assert_eq!(stop.status.code(), Some(0), "{}", describe(&stop));
    let out = text(&stop.stdout);
    assert!(
        out.contains(&format!("Stopping server on port {port} (PID: {pid})")),
        "{out}"
    );
    assert!(out.contains("Server stopped"), "{out}");
    // The launcher forwarded SIGTERM, its command exited 0, it released.
    assert_eq!(holder.wait().unwrap().code(), Some(0));
    assert_eq!(env.probe(port), LockState::Free);
    assert!(!env.lock_file(port).exists());
}

#[test]
fn c_launcher_is_refused_by_serve_listed_by_status_and_stopped_by_stop() {
    let env = Env::new();
    let launcher = c_launcher(&env);
    launcher_holder_interops_with_the_cli(launcher, env, 8401);
}

#[test]
fn python_launcher_is_refused_by_serve_listed_by_status_and_stopped_by_stop() {
    launcher_holder_interops_with_the_cli(python_launcher(), Env::new(), 8402);
}

/// A TCP port nobody listens on right now (for `llmlb serve` to bind).
fn free_tcp_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// Waits until `pid` holds `port`: serve takes the lock before binding, and
/// we only need the lock. Bounded so a broken serve fails instead of hanging.
/// Until `serve` (`pid`) holds `port` and says it is ready: its last write
/// of the record, which the caller may then compare byte for byte.
fn wait_until_held_by(env: &Env, port: u16, pid: u32, serve: &mut Child) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let LockState::Held(Some(info)) = env.probe(port) {
            if info.pid == pid && info.state == Some(llmlb::lock::ServeState::Ready) {
                return;
            }
        }
        if let Some(status) = serve.try_wait().unwrap() {
            panic!("llmlb serve exited early with {status}");
        }
        assert!(
            Instant::now() < deadline,
            "llmlb serve never took port {port}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn serve_holding_the_port_refuses_the_c_and_python_launchers() {
    let env = Env::new();
    let launchers = [("C", c_launcher(&env)), ("Python", python_launcher())];
    let port = free_tcp_port();
    let port_s = port.to_string();
    let mut serve = env
        .command(LLMLB)
        .args(["serve", "--port", &port_s, "--host", "127.0.0.1"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let pid = serve.id();
    wait_until_held_by(&env, port, pid, &mut serve);
    let before = std::fs::read(env.lock_file(port)).unwrap();

    for (name, launcher) in &launchers {
        let marker = env.tmp.path().join(format!("{name}-ran"));
        let out = launch(&env, launcher, port, &["touch", marker.to_str().unwrap()])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{name}: {}", describe(&out));
        let err = text(&out.stderr);
        assert!(err.contains(&format!("PID: {pid}")), "{name}: {err}");
        assert!(!marker.exists(), "{name} launcher ran its command anyway");
        assert_eq!(std::fs::read(env.lock_file(port)).unwrap(), before);
    }

    let stop = env.llmlb(&["stop", "--port", &port_s]);
    assert_eq!(stop.status.code(), Some(0), "{}", describe(&stop));
    assert_eq!(serve.wait().unwrap().code(), Some(0));
    assert!(!Path::new(&env.lock_file(port)).exists());
}

/// Whether `pid` is a live (non-zombie) process.
#[cfg(target_os = "linux")]
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        let state = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next());
        !matches!(state, Some("Z") | Some("X"))
    })
}

/// SIGKILLs a process group on drop, so a failing test leaves nothing behind.
#[cfg(target_os = "linux")]
struct KillGroup(u32);

#[cfg(target_os = "linux")]
impl Drop for KillGroup {
    fn drop(&mut self) {
        // SAFETY: kill(2) with -pgid, pgid > 1, targets one group.
        if self.0 > 1 {
            unsafe { libc::kill(-(self.0 as libc::pid_t), libc::SIGKILL) };
        }
    }
}

/// A launcher records its command's process group in the lock file (with
/// the C ABI's `llmlb_lock_set_child_pgid`), so `llmlb status` shows it and
/// `llmlb stop --force` kills the whole group: a grandchild that ignores
/// SIGTERM and outlives the killed launcher included.
#[cfg(target_os = "linux")]
fn launcher_group_is_recorded_and_reached_by_stop_force(
    launcher: LauncherCmd,
    env: Env,
    port: u16,
) {
    let gc_file = env.tmp.path().join("gc.pid");
    let script = format!(
        "trap '' TERM; sleep 1000 & echo $! > {}; echo $$; wait; wait",
        gc_file.display()
    );
    let mut holder = launch(&env, &launcher, port, &["sh", "-c", &script])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(holder.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let sh: u32 = line.trim().parse().expect("the command's PID");
    let _group = KillGroup(sh);
    let gc: u32 = std::fs::read_to_string(&gc_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();

    let port_s = port.to_string();
    // The launcher records the group right after spawning the command, which
    // may be after the command printed its PID: wait for that write.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let json = env.llmlb(&["status", "--format", "json", "--port", &port_s]);
        assert_eq!(json.status.code(), Some(0), "{}", describe(&json));
        let rows: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
        assert_eq!(rows[0]["pid"], holder.id(), "{rows}");
        if rows[0]["child_pgid"] == sh {
            break;
        }
        assert!(
            rows[0]["child_pgid"].is_null() && Instant::now() < deadline,
            "{rows}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }

    let stop = env.llmlb(&["stop", "--port", &port_s, "--timeout", "0", "--force"]);
    assert_eq!(stop.status.code(), Some(0), "{}", describe(&stop));
    assert!(
        text(&stop.stderr).contains(&format!("process group {sh}")),
        "{}",
        describe(&stop)
    );
    holder.wait().unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    while alive(gc) {
        assert!(
            Instant::now() < deadline,
            "stop --force did not reach the grandchild {gc} in group {sh}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(env.probe(port), LockState::Free);
}

#[test]
#[cfg(target_os = "linux")]
fn c_launcher_group_is_recorded_and_reached_by_stop_force() {
    let env = Env::new();
    let launcher = c_launcher(&env);
    launcher_group_is_recorded_and_reached_by_stop_force(launcher, env, 8403);
}

#[test]
#[cfg(target_os = "linux")]
fn python_launcher_group_is_recorded_and_reached_by_stop_force() {
    launcher_group_is_recorded_and_reached_by_stop_force(python_launcher(), Env::new(), 8404);
}

/// The C ABI and Python have no default dir of their own: `lock_dir=None`
/// (NULL) is the library's `default_lock_dir()`, which no `TMPDIR` or
/// `XDG_RUNTIME_DIR` moves (issue 17 §5).
#[test]
fn python_and_c_default_dir_is_the_librarys() {
    let elsewhere = tempfile::tempdir().unwrap();
    let out = Command::new(ffi_support::python3())
        .args([
            "-c",
            "import sys, llmlb_lock; sys.stdout.write(llmlb_lock.lock_path(8000))",
        ])
        .env("PYTHONPATH", ffi_support::repo_root().join("ffi/python"))
        .env("LLMLB_LOCK_LIB", ffi_support::shared_lib())
        .env_remove("LLMLB_LOCK_DIR")
        .env("TMPDIR", elsewhere.path())
        .env("XDG_RUNTIME_DIR", elsewhere.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", describe(&out));
    assert_eq!(
        Path::new(&text(&out.stdout)),
        llmlb::lock::default_lock_dir().join("serve_8000.lock"),
        "{}",
        describe(&out)
    );
}

/// The serving state `port`'s holder recorded, once the lock file reads
/// back whole (`None` while it does not).
fn serve_state(env: &Env, port: u16) -> Option<ServeState> {
    match env.probe(port) {
        LockState::Held(Some(info)) => Some(info.serve_state()),
        _ => None,
    }
}

/// Waits until the holder of `port` records `want`, failing if `launcher`
/// exits first. Bounded so a launcher that never gets there fails.
fn wait_for_state(env: &Env, port: u16, want: ServeState, launcher: &mut Child) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while serve_state(env, port) != Some(want) {
        if let Some(status) = launcher.try_wait().unwrap() {
            panic!("the launcher exited ({status}) before recording {want:?}");
        }
        assert!(
            Instant::now() < deadline,
            "port {port} never became {want:?}: {:?}",
            serve_state(env, port)
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Runs `launcher --ready POLICY PORT -- CMD` with stdout piped.
fn launch_ready(
    env: &Env,
    launcher: &LauncherCmd,
    policy: &str,
    port: u16,
    cmd: &[&str],
) -> Command {
    let mut command = env.command(&launcher[0]);
    command
        .args(&launcher[1..])
        .args(["--ready", policy])
        .arg(port.to_string())
        .arg("--")
        .args(cmd)
        .stdout(Stdio::piped());
    command
}

/// Reads the command's first line from the launcher's piped stdout.
fn first_line(child: &mut Child) -> String {
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    line
}

/// Stops the launcher with `llmlb stop` and checks it released the port.
/// It exits 0 (its command exited 0 on the forwarded SIGTERM) or dies of
/// SIGTERM itself (its command died of it: a command stopped before it
/// installed a handler, say), as `serve -- CMD` does.
fn stop_launcher(env: &Env, port: u16, mut launcher: Child) {
    use std::os::unix::process::ExitStatusExt;
    let stop = env.llmlb(&["stop", "--port", &port.to_string()]);
    assert_eq!(stop.status.code(), Some(0), "{}", describe(&stop));
    let status = launcher.wait().unwrap();
    assert!(
        status.code() == Some(0) || status.signal() == Some(libc::SIGTERM),
        "the stopped launcher: {status}"
    );
    assert_eq!(env.probe(port), LockState::Free);
}

/// A Python server that prints `waiting <its NOTIFY_SOCKET or ->`, listens
/// on `LLMLB_PORT` only once the file `argv[1]` exists, and exits 0 on
/// SIGTERM.
const LISTEN_AFTER_GO: &str = "\
import os, signal, socket, sys, time
signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))
print('waiting', os.environ.get('NOTIFY_SOCKET', '-'), flush=True)
while not os.path.exists(sys.argv[1]):
    time.sleep(0.01)
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(('127.0.0.1', int(os.environ['LLMLB_PORT'])))
s.listen()
while True:
    time.sleep(0.05)
";

/// Both launchers, with the ports (from the C/Python interop range) a test
/// uses for each.
fn both_launchers(
    env: &Env,
    c_port: u16,
    python_port: u16,
) -> [(&'static str, LauncherCmd, u16); 2] {
    [
        ("C", c_launcher(env), c_port),
        ("Python", python_launcher(), python_port),
    ]
}

/// `--ready immediate`: ready as soon as the command runs.
#[test]
fn launchers_ready_immediate_record_ready_once_the_command_runs() {
    let env = Env::new();
    for (name, launcher, port) in both_launchers(&env, 8405, 8406) {
        let mut holder = launch_ready(
            &env,
            &launcher,
            "immediate",
            port,
            &["sh", "-c", SERVER_SCRIPT],
        )
        .spawn()
        .unwrap();
        assert_eq!(first_line(&mut holder), "ready\n", "{name}");
        wait_for_state(&env, port, ServeState::Ready, &mut holder);
        stop_launcher(&env, port, holder);
    }
}

/// `--ready listen` (also the default): starting while the command does not
/// listen on the port, ready once it does.
#[test]
fn launchers_ready_listen_record_ready_once_the_command_listens() {
    let env = Env::new();
    for (name, launcher, port) in both_launchers(&env, 8407, 8408) {
        let go = env.tmp.path().join(format!("{name}-go"));
        let go_s = go.to_str().unwrap();
        let python = ffi_support::python3();
        let cmd = [python.as_str(), "-c", LISTEN_AFTER_GO, go_s];
        let mut holder = launch_ready(&env, &launcher, "listen", port, &cmd)
            .spawn()
            .unwrap();
        assert_eq!(first_line(&mut holder), "waiting -\n", "{name}");
        // Recorded before the command was started, and nothing listens yet.
        assert_eq!(
            serve_state(&env, port),
            Some(ServeState::Starting),
            "{name}"
        );
        std::fs::write(&go, "").unwrap();
        wait_for_state(&env, port, ServeState::Ready, &mut holder);
        std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        stop_launcher(&env, port, holder);
    }
}

/// `--ready notify`: starting until the command's tree sends READY=1 with
/// the real `systemd-notify`, ready after.
#[test]
fn launchers_ready_notify_record_ready_on_systemd_notify() {
    let env = Env::new();
    for (name, launcher, port) in both_launchers(&env, 8409, 8410) {
        let go = env.tmp.path().join(format!("{name}-go"));
        let script = format!(
            "trap 'exit 0' TERM; echo \"waiting $NOTIFY_SOCKET\"; \
             while [ ! -e '{}' ]; do sleep 0.01; done; systemd-notify --ready; \
             while :; do sleep 0.05; done",
            go.display()
        );
        let mut holder = launch_ready(&env, &launcher, "notify", port, &["sh", "-c", &script])
            .spawn()
            .unwrap();
        let line = first_line(&mut holder);
        assert!(
            line.starts_with("waiting ") && line.trim() != "waiting",
            "{name}: the command has no NOTIFY_SOCKET: {line:?}"
        );
        assert_eq!(
            serve_state(&env, port),
            Some(ServeState::Starting),
            "{name}"
        );
        std::fs::write(&go, "").unwrap();
        wait_for_state(&env, port, ServeState::Ready, &mut holder);
        stop_launcher(&env, port, holder);
    }
}

/// A Python HTTP server on 127.0.0.1:`LLMLB_PORT` that prints `waiting`,
/// answers 503 until the file `argv[1]` exists, then 200 on `/health` and
/// `/ok` (404 elsewhere), and exits 0 on SIGTERM.
const HEALTH_AFTER_GO: &str = "\
import http.server, os, signal, sys
signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))
class Health(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        if not os.path.exists(sys.argv[1]):
            code = 503
        else:
            code = 200 if self.path in ('/health', '/ok') else 404
        self.send_response(code)
        self.send_header('Content-Length', '0')
        self.end_headers()
    def log_message(self, *args):
        pass
server = http.server.HTTPServer(('127.0.0.1', int(os.environ['LLMLB_PORT'])), Health)
print('waiting', flush=True)
server.serve_forever()
";

/// The lines a child writes to its piped stderr, collected by a thread.
fn collect_stderr(child: &mut Child) -> std::sync::Arc<std::sync::Mutex<String>> {
    let text = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let stderr = child.stderr.take().unwrap();
    let sink = std::sync::Arc::clone(&text);
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            let mut text = sink.lock().unwrap();
            text.push_str(&line);
            text.push('\n');
        }
    });
    text
}

/// `--ready http[:PATH]` through the library's probe: starting while the
/// command answers 503 (the launcher says it saw the 503), ready once it
/// answers 200.
#[test]
fn launchers_ready_http_record_ready_once_the_health_check_passes() {
    let env = Env::new();
    for (name, launcher, port) in both_launchers(&env, 8447, 8448) {
        let (ready, path) = if name == "C" {
            ("http", "/health")
        } else {
            ("http:/ok", "/ok")
        };
        let go = env.tmp.path().join(format!("{name}-go"));
        let python = ffi_support::python3();
        let cmd = [python.as_str(), "-c", HEALTH_AFTER_GO, go.to_str().unwrap()];
        let mut holder = launch_ready(&env, &launcher, ready, port, &cmd)
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = collect_stderr(&mut holder);
        assert_eq!(first_line(&mut holder), "waiting\n", "{name}");
        let seen = format!("not ready yet: GET {path}: 503\n");
        wait_for("the 503 to be seen", &mut holder, || {
            stderr.lock().unwrap().contains(&seen)
        });
        assert_eq!(
            serve_state(&env, port),
            Some(ServeState::Starting),
            "{name}"
        );
        std::fs::write(&go, "").unwrap();
        wait_for_state(&env, port, ServeState::Ready, &mut holder);
        stop_launcher(&env, port, holder);
    }
}

/// A `--ready http:PATH` the library refuses is serve's usage error naming
/// it: exit 2, one line, the lock dir never touched.
#[test]
fn launchers_refuse_a_bad_http_path() {
    let env = Env::new();
    for (name, launcher, port) in both_launchers(&env, 8449, 8450) {
        let out = launch_ready(&env, &launcher, "http:nope", port, &["true"])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{name}: {}", describe(&out));
        let err = text(&out.stderr);
        assert_eq!(err.lines().count(), 1, "{name}: {err}");
        assert!(
            err.starts_with("Error: ready: ") && err.contains("`nope` must start with `/`"),
            "{name}: {err}"
        );
    }
    assert!(!env.lock_dir.exists(), "a usage error touched the lock dir");
}

/// A `--ready` value that is not a policy is a usage error: exit 2, one
/// line naming it, and the lock dir is never touched.
#[test]
fn launchers_refuse_an_unknown_ready_policy() {
    let env = Env::new();
    for (name, launcher, port) in both_launchers(&env, 8411, 8412) {
        let out = launch_ready(&env, &launcher, "soon", port, &["true"])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{name}: {}", describe(&out));
        let err = text(&out.stderr);
        assert_eq!(err.lines().count(), 1, "{name}: {err}");
        assert!(
            err.contains("`soon` is not a readiness policy"),
            "{name}: {err}"
        );
    }
    assert!(!env.lock_dir.exists(), "a usage error touched the lock dir");
}

/// Under a service manager (a NOTIFY_SOCKET of the test's own), a launcher
/// sends MAINPID and READY=1 only once its command listens, and STOPPING=1
/// when stopped; the command never sees the manager's socket.
#[test]
fn launchers_tell_their_own_manager_ready_after_the_command_listens() {
    use std::os::unix::net::UnixDatagram;
    let env = Env::new();
    for (name, launcher, port) in both_launchers(&env, 8413, 8414) {
        let socket_path = env.tmp.path().join(format!("{name}-manager.sock"));
        let manager = UnixDatagram::bind(&socket_path).unwrap();
        manager
            .set_read_timeout(Some(Duration::from_secs(60)))
            .unwrap();
        let go = env.tmp.path().join(format!("{name}-go"));
        let go_s = go.to_str().unwrap();
        let python = ffi_support::python3();
        let cmd = [python.as_str(), "-c", LISTEN_AFTER_GO, go_s];
        let mut holder = launch_ready(&env, &launcher, "listen", port, &cmd)
            .env("NOTIFY_SOCKET", &socket_path)
            .spawn()
            .unwrap();
        assert_eq!(first_line(&mut holder), "waiting -\n", "{name}");
        assert_eq!(
            serve_state(&env, port),
            Some(ServeState::Starting),
            "{name}"
        );
        // What it said so far (serve's STATUS= lines): neither READY=1 nor
        // MAINPID before the command listens.
        manager.set_nonblocking(true).unwrap();
        let mut buf = [0u8; 4096];
        let mut early = Vec::new();
        while let Ok(n) = manager.recv(&mut buf) {
            early.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
        assert!(
            !early
                .iter()
                .flat_map(|m| m.lines())
                .any(|l| l == "READY=1" || l.starts_with("MAINPID=")),
            "{name}: the manager heard ready before the command listened: {early:?}"
        );
        manager.set_nonblocking(false).unwrap();
        std::fs::write(&go, "").unwrap();
        let message = loop {
            let n = manager.recv(&mut buf).unwrap();
            let message = String::from_utf8_lossy(&buf[..n]).into_owned();
            if message.lines().any(|l| l == "READY=1") {
                break message;
            }
        };
        assert!(
            message
                .lines()
                .any(|l| l == format!("MAINPID={}", holder.id())),
            "{name}: {message:?}"
        );
        // READY=1 follows the listen (and the recorded state).
        std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        assert_eq!(serve_state(&env, port), Some(ServeState::Ready), "{name}");
        stop_launcher(&env, port, holder);
        let mut heard = Vec::new();
        manager.set_nonblocking(true).unwrap();
        while let Ok(n) = manager.recv(&mut buf) {
            heard.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
        assert!(
            heard
                .iter()
                .flat_map(|m| m.lines())
                .any(|l| l == "STOPPING=1"),
            "{name}: {heard:?}"
        );
    }
}

/// What one `llmlb wait --for ready` run started before a launcher said,
/// once the launcher was stopped before its command ever listened.
enum WaitSaw {
    /// Exit 3: it saw the holder starting, and the holder went away.
    Starting,
    /// Exit 1 at its timeout: it never saw the holder at all (started too
    /// late, or scheduled out for the launcher's whole life).
    Nothing,
}

/// Runs `wait --for ready` from before the launcher acquires until after it
/// is stopped, its command never listening; fails if the wait said ready.
fn wait_across_a_launch_that_never_listens(
    env: &Env,
    name: &str,
    launcher: &LauncherCmd,
    port: u16,
) -> WaitSaw {
    let port_s = port.to_string();
    let waiter = env
        .command(LLMLB)
        .args(["wait", "-p", &port_s, "--for", "ready", "-t", "5"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let never = env.tmp.path().join("never-created");
    let python = ffi_support::python3();
    let cmd = [
        python.as_str(),
        "-c",
        LISTEN_AFTER_GO,
        never.to_str().unwrap(),
    ];
    let mut holder = launch_ready(env, launcher, "listen", port, &cmd)
        .spawn()
        .unwrap();
    assert_eq!(first_line(&mut holder), "waiting -\n", "{name}");
    stop_launcher(env, port, holder);
    let out = waiter.wait_with_output().unwrap();
    match out.status.code() {
        Some(3) => WaitSaw::Starting,
        Some(1) if text(&out.stderr).contains("Timed out") => WaitSaw::Nothing,
        _ => panic!(
            "{name}: `llmlb wait --for ready` did not wait for a command that never listened: {}",
            describe(&out)
        ),
    }
}

/// A launcher's record says `starting` from its first byte: `llmlb wait
/// --for ready` watching the port from before the acquire never takes the
/// new holder for ready while its command does not listen. (Acquiring and
/// then recording `starting` lost this race in about half the tries for the
/// Python launcher.)
#[test]
fn launchers_are_never_seen_ready_before_their_command_listens() {
    let env = Env::new();
    // A watch on the dir from the start, rather than a poll for it to appear.
    std::fs::create_dir(&env.lock_dir).unwrap();
    std::fs::set_permissions(
        &env.lock_dir,
        std::os::unix::fs::PermissionsExt::from_mode(0o700),
    )
    .unwrap();
    for (name, launcher, port) in both_launchers(&env, 8430, 8431) {
        // Only runs in which the wait saw the holder say something prove
        // anything; the others (rare) are tried again, a bounded number of times.
        let (mut seen, mut tries) = (0, 0);
        while seen < 5 {
            tries += 1;
            assert!(
                tries <= 20,
                "{name}: the wait missed the launcher in {tries} tries"
            );
            if let WaitSaw::Starting =
                wait_across_a_launch_that_never_listens(&env, name, &launcher, port)
            {
                seen += 1;
            }
        }
    }
}

/// A Python command that appends the name of each signal it receives (HUP,
/// USR1, USR2, QUIT, WINCH) to `argv[1]`, creates `argv[1].ready` once its
/// handlers are in place, and dies of SIGTERM (the default action).
const TRAPS_SIGNALS: &str = "\
import signal, sys, time
log = sys.argv[1]
def note(n, _):
    with open(log, 'a') as f: f.write(signal.Signals(n).name + '\\n')
for s in (signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2, signal.SIGQUIT, signal.SIGWINCH):
    signal.signal(s, note)
open(log + '.ready', 'w').close()
while True:
    time.sleep(0.05)
";

fn wait_for(what: &str, launcher: &mut Child, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !done() {
        assert!(
            launcher.try_wait().unwrap().is_none(),
            "the launcher exited while waiting for {what}"
        );
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// As `llmlb serve -- CMD`: SIGHUP, SIGUSR1, SIGQUIT and SIGWINCH reach the
/// command and stop nothing, and a stop whose forwarded SIGTERM kills the command ends the launcher by
/// SIGTERM too, with the port released.
#[test]
fn launchers_forward_day_two_signals_and_die_of_a_requested_stop() {
    use std::os::unix::process::ExitStatusExt;
    let env = Env::new();
    for (name, launcher, port) in both_launchers(&env, 8415, 8416) {
        let log = env.tmp.path().join(format!("{name}.log"));
        let ready = env.tmp.path().join(format!("{name}.log.ready"));
        let err_path = env.tmp.path().join(format!("{name}.err"));
        let py = ffi_support::python3();
        let log_s = log.display().to_string();
        let mut holder = launch_ready(
            &env,
            &launcher,
            "immediate",
            port,
            &[&py, "-c", TRAPS_SIGNALS, &log_s],
        )
        .stderr(std::fs::File::create(&err_path).unwrap())
        .spawn()
        .unwrap();
        let pid = holder.id() as libc::pid_t;
        wait_for("the command's handlers", &mut holder, || ready.exists());
        // The launcher records the group after the spawn: wait for it, so
        // the signals below find their target.
        wait_for(
            "the recorded group",
            &mut holder,
            || matches!(env.probe(port), LockState::Held(Some(info)) if info.child_pgid.is_some()),
        );
        let received = || -> Vec<String> {
            std::fs::read_to_string(&log)
                .unwrap_or_default()
                .lines()
                .map(str::to_owned)
                .collect()
        };
        for (sig, sig_name) in [
            (libc::SIGHUP, "SIGHUP"),
            (libc::SIGUSR1, "SIGUSR1"),
            (libc::SIGQUIT, "SIGQUIT"),
            (libc::SIGWINCH, "SIGWINCH"),
        ] {
            // SAFETY: kill(2) of one positive pid.
            unsafe { libc::kill(pid, sig) };
            wait_for(
                &format!("{name}: {sig_name} forwarded"),
                &mut holder,
                || received().iter().any(|l| l == sig_name),
            );
        }
        // SIGUSR2 reloads, as serve's (tests/reload.rs runs it against
        // the launchers).
        assert_eq!(serve_state(&env, port), Some(ServeState::Ready), "{name}");

        let stop = env.llmlb(&["stop", "--port", &port.to_string()]);
        assert_eq!(stop.status.code(), Some(0), "{name}: {}", describe(&stop));
        let status = holder.wait().unwrap();
        assert_eq!(
            status.signal(),
            Some(libc::SIGTERM),
            "{name}: {status}; {}",
            std::fs::read_to_string(&err_path).unwrap_or_default()
        );
        assert_eq!(env.probe(port), LockState::Free, "{name}");
    }
}

/// Runs `tests/support/lingering_sender.py` against `socket` (`prefix`
/// before python, e.g. setpriv) and returns it with its verdict line
/// (`sent` or `refused <errno>`). Killed and reaped on drop.
#[cfg(target_os = "linux")]
fn lingering_sender(env: &Env, socket: &str, prefix: &[&str]) -> (KillOnDrop, String) {
    use std::os::unix::fs::PermissionsExt;
    // A copy in a dir another user can read.
    let public = env.tmp.path().join("public");
    std::fs::create_dir_all(&public).unwrap();
    for dir in [env.tmp.path(), public.as_path()] {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let script = public.join("lingering_sender.py");
    std::fs::copy(
        ffi_support::repo_root().join("tests/support/lingering_sender.py"),
        &script,
    )
    .unwrap();
    let python = if Path::new("/usr/bin/python3").exists() {
        "/usr/bin/python3".to_owned()
    } else {
        ffi_support::python3()
    };
    let mut cmd = Command::new(prefix.first().copied().unwrap_or(python.as_str()));
    if !prefix.is_empty() {
        cmd.args(&prefix[1..]).arg(&python);
    }
    let mut child = KillOnDrop(
        Some(
            cmd.arg(&script)
                .arg(socket)
                .current_dir("/")
                .stdout(Stdio::piped())
                .spawn()
                .unwrap(),
        ),
        None,
    );
    // The sender prints its verdict or dies: read_line cannot hang.
    let verdict = first_line(child.0.as_mut().unwrap());
    std::fs::set_permissions(env.tmp.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    (child, verdict.trim().to_owned())
}

/// A child (unless taken) killed and reaped on drop, and a process group
/// (if known) killed too: a failing test leaves nothing running.
#[cfg(target_os = "linux")]
struct KillOnDrop(Option<Child>, Option<u32>);

#[cfg(target_os = "linux")]
impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if let Some(pgid) = self.1.filter(|&g| g > 1) {
            // SAFETY: kill(2) with a negative pgid > 1 targets one group.
            unsafe { libc::kill(-(pgid as libc::pid_t), libc::SIGKILL) };
        }
    }
}

/// Waits (bounded) until every thread of `pid` is stopped (state `T`).
#[cfg(target_os = "linux")]
fn wait_stopped(pid: u32) {
    let stopped = || {
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
            return false;
        };
        tasks.flatten().all(|task| {
            std::fs::read_to_string(task.path().join("stat"))
                .ok()
                .and_then(|stat| stat.rsplit_once(") ")?.1.chars().next())
                == Some('T')
        })
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while !stopped() {
        assert!(Instant::now() < deadline, "PID {pid} did not stop");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Resumes (SIGCONT) a stopped process on drop.
#[cfg(target_os = "linux")]
struct Resume(u32);

#[cfg(target_os = "linux")]
impl Drop for Resume {
    fn drop(&mut self) {
        // SAFETY: kill(2) on one PID.
        unsafe { libc::kill(self.0 as libc::pid_t, libc::SIGCONT) };
    }
}

/// `--ready notify` under attack: the command's NOTIFY_SOCKET is a socket
/// file in the lock dir that another user cannot reach (uid 65534 gets
/// EACCES; needs root), and a lingering TCP socket passed by our own user
/// from outside the tree (closing it would block for an hour) delays
/// neither READY nor the stop. The launcher is stopped (SIGSTOP) while the
/// sender sends and closes its copy, so the launcher's copy is the last, as
/// for a sender that wins the race.
#[cfg(target_os = "linux")]
#[test]
fn launchers_ready_notify_survive_a_lingering_socket() {
    let env = Env::new();
    for (name, launcher, port) in both_launchers(&env, 8415, 8416) {
        let go = env.tmp.path().join(format!("{name}-go"));
        let script = format!(
            "trap 'exit 0' TERM; echo \"waiting $$ $NOTIFY_SOCKET\"; \
             while [ ! -e '{}' ]; do sleep 0.01; done; systemd-notify --ready; \
             while :; do sleep 0.05; done",
            go.display()
        );
        let child = launch_ready(&env, &launcher, "notify", port, &["sh", "-c", &script])
            .spawn()
            .unwrap();
        let mut guard = KillOnDrop(Some(child), None);
        let line = first_line(guard.0.as_mut().unwrap());
        let mut words = line.split_whitespace().skip(1);
        // The command leads a process group of its own.
        guard.1 = words.next().and_then(|pgid| pgid.parse().ok());
        let holder = guard.0.as_mut().unwrap();
        let socket = words.next().unwrap_or("").to_owned();
        let path = Path::new(&socket);
        assert_eq!(
            path.parent(),
            Some(env.lock_dir.as_path()),
            "{name}: {line:?}"
        );
        assert!(
            path.file_name()
                .is_some_and(|f| f.to_string_lossy().starts_with(&format!("notify_{port}_"))),
            "{name}: {line:?}"
        );
        // SAFETY: geteuid cannot fail.
        if unsafe { libc::geteuid() } == 0 {
            let setpriv = [
                "setpriv",
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
            ];
            let (_foreign, verdict) = lingering_sender(&env, &socket, &setpriv);
            assert_eq!(verdict, format!("refused {}", libc::EACCES), "{name}");
        } else {
            ffi_support::prereq::skip_unless_ci(
                "not root",
                "run the test as root (setpriv to uid 65534)",
                "the foreign notify sender",
            );
        }
        // SAFETY: kill(2) on one PID.
        unsafe { libc::kill(holder.id() as libc::pid_t, libc::SIGSTOP) };
        let resume = Resume(holder.id());
        wait_stopped(holder.id());
        let (_sender, verdict) = lingering_sender(&env, &socket, &[]);
        assert_eq!(verdict, "sent", "{name}");
        drop(resume);
        std::fs::write(&go, "").unwrap();
        wait_for_state(&env, port, ServeState::Ready, holder);
        stop_launcher(&env, port, guard.0.take().unwrap());
        assert!(
            !path.exists(),
            "{name}: the notify socket file was left behind"
        );
    }
}

/// `GET /health` on `port`: the body, or `None` if the connection failed
/// or no complete reply came (a refused or dropped request).
fn health_body(port: u16) -> Option<String> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .ok()?;
    stream
        .write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .ok()?;
    let mut reply = String::new();
    stream.read_to_string(&mut reply).ok()?;
    let (head, body) = reply.split_once("\r\n\r\n")?;
    head.starts_with("HTTP/1.1 200").then(|| body.to_owned())
}

/// Serves `HTTP/1.1 200` with body `in-process` on `listener` until
/// `stop`, as a program with its own accept loop does (non-blocking: the
/// description is shared with `llmlb serve`, which set it so too).
fn serve_in_process(
    listener: std::net::TcpListener,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<()> {
    use std::io::{Read, Write};
    use std::sync::atomic::Ordering;
    listener.set_nonblocking(true).unwrap();
    std::thread::spawn(move || {
        while !stop.load(Ordering::SeqCst) {
            match listener.accept() {
                Ok((mut conn, _)) => {
                    conn.set_nonblocking(false).unwrap();
                    let mut buf = [0u8; 1024];
                    let _ = conn.read(&mut buf);
                    let _ = conn.write_all(
                        b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\nConnection: close\r\n\r\nin-process",
                    );
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_millis(2));
                }
                Err(e) => panic!("accept: {e}"),
            }
        }
    })
}

/// A program using the C ABI takes the port over from a running `llmlb
/// serve` (receiving its socket, the server serving on meanwhile), gives it
/// back once (the server serves on, its record restored), takes it again
/// and commits (the server drains and exits 0), and is then itself replaced
/// by `llmlb serve --replace` through its offer: no request fails at any
/// point.
#[test]
fn a_program_takes_a_port_over_from_serve_and_hands_it_on_to_serve() {
    use llmlb_lock::{
        llmlb_handover_offer, llmlb_handover_take, llmlb_lock_release, llmlb_offer_free,
        llmlb_offer_poll, LlmlbLockInfo, LlmlbStatus,
    };
    use std::os::fd::FromRawFd;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::Arc;

    let env = Env::new();
    let port = free_tcp_port();
    let port_s = port.to_string();
    let serve_cmd = |replace: bool| {
        let mut cmd = env.command(LLMLB);
        cmd.args(["serve", "--port", &port_s, "--host", "127.0.0.1"]);
        if replace {
            cmd.args(["--replace", "--replace-grace", "0"]);
        }
        cmd.stdout(Stdio::null()).stderr(Stdio::piped());
        cmd
    };
    let mut serve = serve_cmd(false).spawn().unwrap();
    let serve_pid = serve.id();
    wait_until_held_by(&env, port, serve_pid, &mut serve);

    // Clients all along: every request must be answered by someone.
    let done = Arc::new(AtomicBool::new(false));
    let (answered, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let clients: Vec<_> = (0..2)
        .map(|_| {
            let (done, answered, failed) = (done.clone(), answered.clone(), failed.clone());
            std::thread::spawn(move || {
                while !done.load(Ordering::SeqCst) {
                    match health_body(port) {
                        Some(_) => answered.fetch_add(1, Ordering::SeqCst),
                        None => failed.fetch_add(1, Ordering::SeqCst),
                    };
                }
            })
        })
        .collect();

    let dir = std::ffi::CString::new(env.lock_dir.to_str().unwrap()).unwrap();
    let take = || {
        let (mut lock, mut fd, mut other) = (std::ptr::null_mut(), -1, LlmlbLockInfo::default());
        // SAFETY: a valid path and out pointers.
        let status = unsafe {
            llmlb_handover_take(dir.as_ptr(), port, 10_000, &mut lock, &mut fd, &mut other)
        };
        assert_eq!(status, LlmlbStatus::LLMLB_STATUS_OK);
        assert!(fd >= 0, "a running serve hands its socket over");
        assert_eq!(other.pid, serve_pid);
        (lock, fd)
    };
    let record_pid = || match env.probe(port) {
        LockState::Held(Some(info)) => Some(info.pid),
        _ => None,
    };
    let me = std::process::id();

    // Taken, then given back: serve never stopped.
    let (lock, fd) = take();
    assert_eq!(record_pid(), Some(me));
    // SAFETY: ours to close.
    drop(unsafe { std::net::TcpListener::from_raw_fd(fd) });
    // SAFETY: a live handle, released once.
    assert_eq!(
        unsafe { llmlb_lock_release(lock) },
        LlmlbStatus::LLMLB_STATUS_OK
    );
    wait_until_held_by(&env, port, serve_pid, &mut serve);
    assert!(health_body(port)
        .unwrap()
        .contains(&format!("\"pid\":{serve_pid}")));

    // Taken and committed: serve drains and exits 0.
    let (lock, fd) = take();
    // SAFETY: ours to own.
    let listener = unsafe { std::net::TcpListener::from_raw_fd(fd) };
    let raw = std::os::fd::AsRawFd::as_raw_fd(&listener);
    let stop = Arc::new(AtomicBool::new(false));
    let server = serve_in_process(listener.try_clone().unwrap(), stop.clone());
    let mut offer = std::ptr::null_mut();
    // SAFETY: a live lock, the socket we serve on, a valid out pointer.
    let status = unsafe { llmlb_handover_offer(lock, raw, 0, &mut offer) };
    assert_eq!(status, LlmlbStatus::LLMLB_STATUS_OK);
    let deadline = Instant::now() + Duration::from_secs(30);
    let exited = loop {
        if let Some(status) = serve.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "serve never drained");
        std::thread::sleep(Duration::from_millis(10));
    };
    assert_eq!(exited.code(), Some(0), "serve drained and exited 0");
    assert_eq!(record_pid(), Some(me));
    assert_eq!(serve_state(&env, port), Some(ServeState::Ready));
    assert_eq!(health_body(port).as_deref(), Some("in-process"));

    // Replaced by `llmlb serve --replace` through our offer.
    let mut successor = serve_cmd(true).spawn().unwrap();
    let mut drained_to = 0;
    // SAFETY: a live offer and a valid out pointer.
    let status = unsafe { llmlb_offer_poll(offer, 30_000, &mut drained_to) };
    assert_eq!(status, LlmlbStatus::LLMLB_STATUS_OK);
    assert_eq!(drained_to, successor.id(), "drained for the successor");
    // Stop accepting, finish, release: the record is the successor's.
    stop.store(true, Ordering::SeqCst);
    server.join().unwrap();
    drop(listener);
    // SAFETY: live handles, each freed once.
    unsafe {
        assert_eq!(llmlb_lock_release(lock), LlmlbStatus::LLMLB_STATUS_OK);
        llmlb_offer_free(offer);
    }
    wait_until_held_by(&env, port, successor.id(), &mut successor);

    done.store(true, Ordering::SeqCst);
    for client in clients {
        client.join().unwrap();
    }
    assert_eq!(failed.load(Ordering::SeqCst), 0, "no request failed");
    assert!(answered.load(Ordering::SeqCst) > 0);
    let stop = env.llmlb(&["stop", "--port", &port_s]);
    assert_eq!(stop.status.code(), Some(0), "{}", describe(&stop));
    assert_eq!(successor.wait().unwrap().code(), Some(0));
}
