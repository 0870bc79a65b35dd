//! The systemd units documented in `docs/cli.md`, tested: each is checked by
//! the real `systemd-analyze verify` (with the built binary in place of
//! `/usr/local/bin/llmlb`), and their `ExecStart=` lines are run the way
//! systemd runs them: the `Type=notify` unit's with a notify socket and
//! watchdog of ours (we play the manager, READY=1 must come once the command
//! listens), the socket unit's under the real `systemd-socket-activate`.
//! The reload units (`Type=notify-reload`, `ExecReload=`) are verified only:
//! their sequence is played in `tests/cli_notify.rs`.
#![cfg(target_os = "linux")]

#[path = "support/prereq.rs"]
mod prereq;

mod cli_support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixDatagram;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use cli_support::*;

/// `(file name, text)` of every ```ini block that starts with
/// `# /etc/systemd/system/NAME`.
fn documented_units() -> Vec<(String, String)> {
    let guide = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/cli.md"))
        .expect("docs/cli.md");
    let mut units = Vec::new();
    let mut rest = guide.as_str();
    while let Some(start) = rest.find("```ini\n") {
        let block = &rest[start + 7..];
        let end = block.find("```").expect("a closed ini block");
        let text = &block[..end];
        if let Some(name) = text
            .lines()
            .next()
            .and_then(|l| l.strip_prefix("# /etc/systemd/system/"))
        {
            units.push((name.trim().to_owned(), text.to_owned()));
        }
        rest = &block[end..];
    }
    units
}

fn unit(name: &str) -> String {
    documented_units()
        .into_iter()
        .find(|(n, _)| n == name)
        .unwrap_or_else(|| panic!("docs/cli.md documents {name}"))
        .1
}

/// The value of `key=` in `text` (the first one).
fn directive<'a>(text: &'a str, key: &str) -> &'a str {
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{key}=")))
        .unwrap_or_else(|| panic!("{key}= in {text}"))
}

fn tool(name: &str) -> bool {
    if Command::new(name).arg("--version").output().is_ok() {
        return true;
    }
    prereq::skip_unless_ci(
        name,
        "install the Debian package systemd",
        "the systemd unit tests",
    );
    false
}

/// `systemd-analyze verify`'s stderr, less what a systemd older than 253
/// says of `Type=notify-reload` and `ReloadSignal=` (both new in 253): on
/// those, the rest of the units is still verified, and a line says what was
/// not.
fn verify_complaints(stderr: &str) -> String {
    let version = Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .split_whitespace()
                .nth(1)
                .and_then(|v| v.parse::<u32>().ok())
        });
    if version.is_some_and(|v| v >= 253) {
        return stderr.trim().to_owned();
    }
    let (older, rest): (Vec<&str>, Vec<&str>) = stderr.lines().partition(|l| {
        l.contains("Failed to parse service type, ignoring: notify-reload")
            || l.contains("Unknown key 'ReloadSignal'")
            || l.contains("Unknown key name 'ReloadSignal'")
    });
    if !older.is_empty() {
        // Past libtest's capture, as tests/support/prereq.rs does: what was
        // not verified shows in every run (CI's systemd may be this old,
        // so it is no failure there).
        let test = std::thread::current().name().unwrap_or("?").to_owned();
        let _ = writeln!(
            std::io::stderr().lock(),
            "\nPARTLY VERIFIED {test}: systemd {} < 253 does not know Type=notify-reload nor \
             ReloadSignal= (syntax and paths of the rest verified): {}",
            version.map_or("?".to_owned(), |v| v.to_string()),
            older.join("; ")
        );
    }
    rest.join("\n").trim().to_owned()
}

/// The ExecStart= words with the binary and the app swapped for ours.
fn exec_start(text: &str, app: &[&str], port: u16) -> Vec<String> {
    let line = directive(text, "ExecStart");
    let mut words: Vec<String> = Vec::new();
    let mut in_command = false;
    for word in line.split_whitespace() {
        if in_command {
            // The documented app and its arguments stand for ours.
            break;
        }
        match word {
            "/usr/local/bin/llmlb" => words.push(env!("CARGO_BIN_EXE_llmlb").to_owned()),
            "8000" => words.push(port.to_string()),
            "--" => {
                words.push(word.to_owned());
                in_command = true;
            }
            _ => words.push(word.to_owned()),
        }
    }
    words.extend(app.iter().map(|w| (*w).to_owned()));
    words
}

/// A python3 HTTP server: on LLMLB_PORT, or on descriptor 3 when it is
/// socket-activated; it waits for `go` to exist before it listens.
fn app_script(dir: &Path) -> PathBuf {
    let script = dir.join("app.py");
    std::fs::write(
        &script,
        r#"import os, socket, sys, time, http.server
go = sys.argv[1]
while not os.path.exists(go):
    time.sleep(0.01)
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = b"app\n"
        self.send_response(200); self.send_header("Content-Length", str(len(body))); self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a): pass
if os.environ.get("LISTEN_FDS") == "1" and os.environ.get("LISTEN_PID") == str(os.getpid()):
    sock = socket.socket(fileno=3)
else:
    sock = socket.create_server(("127.0.0.1", int(os.environ["LLMLB_PORT"])))
srv = http.server.HTTPServer(("127.0.0.1", 0), H, bind_and_activate=False)
srv.socket = sock
srv.serve_forever()
"#,
    )
    .unwrap();
    script
}

fn get(port: u16) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"GET / HTTP/1.0\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

#[test]
fn every_documented_unit_passes_systemd_analyze_verify() {
    if !tool("systemd-analyze") {
        return;
    }
    let units = documented_units();
    let names: Vec<&str> = units.iter().map(|(n, _)| n.as_str()).collect();
    assert!(
        [
            "myapp.service",
            "myapp-reload.service",
            "myapp@.service",
            "webapp.socket",
            "webapp.service"
        ]
        .iter()
        .all(|n| names.contains(n)),
        "{names:?}"
    );
    let env = Env::new();
    let dir = env.tmp.path().join("units");
    std::fs::create_dir(&dir).unwrap();
    let mut paths = Vec::new();
    for (name, text) in &units {
        let path = dir.join(name);
        std::fs::write(
            &path,
            text.replace("/usr/local/bin/llmlb", env!("CARGO_BIN_EXE_llmlb")),
        )
        .unwrap();
        paths.push(path);
    }
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .args(&paths)
        .env("SYSTEMD_LOG_LEVEL", "warning")
        .output()
        .unwrap();
    let stderr = verify_complaints(&String::from_utf8_lossy(&out.stderr));
    // Unknown keys and bad values are only warnings: any line is a failure.
    assert!(out.status.success() && stderr.is_empty(), "{stderr}");
}

/// The units exactly as pasted, after the README's install: in a private
/// user and mount namespace whose `/usr/local/bin` is an empty dir of ours,
/// the README's `sudo install … /usr/local/bin/llmlb` line (run as the
/// namespace's root, without `sudo`; `command -v llmlb` finds the built
/// binary) puts llmlb where the units run it, and `systemd-analyze verify`
/// passes on the documented text, unchanged.
#[test]
fn the_documented_units_verify_as_pasted_after_the_readmes_install() {
    if !tool("systemd-analyze") {
        return;
    }
    let readme = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md"))
        .expect("README.md");
    let install = readme
        .lines()
        .find_map(|l| {
            l.strip_prefix("sudo install ")
                .filter(|l| l.ends_with(" /usr/local/bin/llmlb"))
        })
        .unwrap_or_else(|| {
            panic!(
                "README.md has no `sudo install … /usr/local/bin/llmlb` line for the units' path"
            )
        });
    let env = Env::new();
    let (units_dir, bin) = (env.tmp.path().join("units"), env.tmp.path().join("bin"));
    std::fs::create_dir(&units_dir).unwrap();
    std::fs::create_dir(&bin).unwrap();
    let mut paths = Vec::new();
    for (name, text) in documented_units() {
        let path = units_dir.join(name);
        std::fs::write(&path, text).unwrap();
        paths.push(path);
    }
    let built = Path::new(env!("CARGO_BIN_EXE_llmlb")).parent().unwrap();
    let path_var = std::env::join_paths(std::iter::once(built.to_owned()).chain(
        std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()),
    ))
    .unwrap();
    let namespace = Command::new("unshare")
        .args(["--user", "--map-root-user", "--mount", "true"])
        .output();
    if !namespace.as_ref().is_ok_and(|o| o.status.success()) {
        prereq::skip_unless_ci(
            &format!("`unshare --user --map-root-user --mount`: {namespace:?}"),
            "allow unprivileged user namespaces (sysctl kernel.unprivileged_userns_clone=1)",
            "the as-pasted unit check",
        );
        return;
    }
    let script = format!(
        "mount --bind \"$0\" /usr/local/bin && install {install} && \
         SYSTEMD_LOG_LEVEL=warning exec systemd-analyze verify \"$@\""
    );
    let out = Command::new("unshare")
        .args(["--user", "--map-root-user", "--mount", "sh", "-c", &script])
        .arg(&bin)
        .args(&paths)
        .env("PATH", path_var)
        .output()
        .unwrap();
    let stderr = verify_complaints(&String::from_utf8_lossy(&out.stderr));
    assert!(
        out.status.success() && stderr.is_empty(),
        "the units as pasted, after `sudo install {install}`: {stderr}"
    );
}

#[test]
fn the_notify_unit_reports_ready_once_its_app_listens_and_beats_the_watchdog() {
    if !tool("python3") {
        return;
    }
    let text = unit("myapp.service");
    assert_eq!(directive(&text, "Type"), "notify");
    let env = Env::new();
    let port = free_port();
    let go = env.tmp.path().join("go");
    let script = app_script(env.tmp.path());
    let words = exec_start(
        &text,
        &["python3", script.to_str().unwrap(), go.to_str().unwrap()],
        port,
    );
    let manager_path = env.tmp.path().join("notify.sock");
    let manager = UnixDatagram::bind(&manager_path).unwrap();
    manager
        .set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    let watchdog_secs: u64 = directive(&text, "WatchdogSec").parse().unwrap();
    let args: Vec<&str> = words[1..].iter().map(String::as_str).collect();
    let mut cmd = env.cmd(&args);
    cmd.env("NOTIFY_SOCKET", &manager_path)
        .env("WATCHDOG_USEC", (watchdog_secs * 1_000_000).to_string());
    let mut server = env.spawn_cmd(cmd);
    let mut group = GroupGuard(None);

    let mut seen = Vec::new();
    let recv = |server: &mut Proc| -> Option<String> {
        let mut buf = [0u8; 4096];
        match manager.recv(&mut buf) {
            Ok(n) => Some(String::from_utf8_lossy(&buf[..n]).into_owned()),
            Err(_) => {
                assert!(server.try_wait().is_none(), "{}", server.stderr());
                None
            }
        }
    };
    // Starting: the app has not listened yet, so no READY=1 may come.
    wait_until("the lock to say starting", || {
        std::fs::read(env.lock_file(port))
            .ok()
            .and_then(|b| llmlb::lock::LockInfo::parse(&b))
            .is_some_and(|i| i.state == Some(llmlb::lock::ServeState::Starting))
    });
    group.0 = std::fs::read(env.lock_file(port))
        .ok()
        .and_then(|b| llmlb::lock::LockInfo::parse(&b))
        .and_then(|i| i.child_pgid);
    while let Some(d) = recv(&mut server) {
        seen.push(d);
    }
    assert!(
        !seen.iter().any(|d| d.lines().any(|l| l == "READY=1")),
        "{seen:?}"
    );
    std::fs::write(&go, b"").unwrap();
    let ready = loop {
        if let Some(d) = recv(&mut server) {
            if d.lines().any(|l| l == "READY=1") {
                break d;
            }
            seen.push(d);
        }
    };
    assert!(
        ready
            .lines()
            .any(|l| l == format!("MAINPID={}", server.pid())),
        "{ready}"
    );
    // Ready means answering: the app serves on the unit's port.
    assert!(get(port).ends_with("app\n"));
    // The watchdog heartbeat comes while the lock is ours.
    loop {
        if recv(&mut server).is_some_and(|d| d.lines().any(|l| l == "WATCHDOG=1")) {
            break;
        }
    }
    signal(server.pid(), libc::SIGTERM);
    loop {
        if recv(&mut server).is_some_and(|d| d.lines().any(|l| l == "STOPPING=1")) {
            break;
        }
    }
    // systemd counts a death by SIGTERM (or exit 0) as a clean stop, and
    // exit code 143 as a failure (which `Restart=on-failure` restarts): the
    // app dies of the forwarded SIGTERM, so llmlb must die of it too, and
    // the unit needs no `SuccessExitStatus=143` crutch.
    let status = server.wait();
    assert!(
        status.success() || status.signal() == Some(libc::SIGTERM),
        "systemd would count {status} as a failure; {}",
        server.stderr()
    );
    assert!(
        !text.lines().any(|l| l.starts_with("SuccessExitStatus=")),
        "{text}"
    );
    drop(group);
}

#[test]
fn the_socket_unit_pair_serves_through_systemd_socket_activate() {
    if !tool("systemd-socket-activate") || !tool("python3") {
        return;
    }
    let socket_unit = unit("webapp.socket");
    let service = unit("webapp.service");
    assert_eq!(directive(&socket_unit, "ListenStream"), "8000");
    let env = Env::new();
    let port = free_port();
    let go = env.tmp.path().join("go");
    std::fs::write(&go, b"").unwrap();
    let script = app_script(env.tmp.path());
    // The documented gunicorn stands for any server that takes fd 3.
    let words = exec_start(
        &service,
        &["python3", script.to_str().unwrap(), go.to_str().unwrap()],
        port,
    );
    let mut cmd = Command::new("systemd-socket-activate");
    cmd.arg("-l")
        .arg(format!("127.0.0.1:{port}"))
        .arg("-E")
        .arg(format!("LLMLB_LOCK_DIR={}", env.locks.display()))
        .arg("-E")
        .arg(format!(
            "PATH={}",
            std::env::var("PATH").unwrap_or_default()
        ))
        .args(&words)
        .current_dir(env.tmp.path());
    let mut activator = env.spawn_cmd(cmd);
    wait_until("systemd-socket-activate to listen", || {
        TcpStream::connect(("127.0.0.1", port)).is_ok() || activator.try_wait().is_some()
    });
    // The first connection starts llmlb, which passes the socket to the app.
    let answer = get(port);
    assert!(answer.ends_with("app\n"), "{answer}");
    let info = llmlb::lock::LockInfo::parse(&std::fs::read(env.lock_file(port)).unwrap()).unwrap();
    assert_eq!(info.port, port);
    let group = GroupGuard(info.child_pgid);
    signal(info.pid, libc::SIGTERM);
    wait_until("llmlb to release the port", || {
        !env.lock_file(port).exists()
    });
    drop(group);
    activator.kill();
}
