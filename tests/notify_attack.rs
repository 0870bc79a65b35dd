//! `serve --ready notify` under attack: a sender passes a TCP socket whose
//! close blocks (`SO_LINGER {1, 3600}` with unacknowledged data to a peer
//! that never reads) over `SCM_RIGHTS`, then closes its own copy, so the
//! receiver's copy is the last one and closing it would block for an hour.
//! The command's real `READY=1` must still be seen, and SIGTERM must still
//! release the port within the usual time: nothing a sender does may wedge
//! the receiver.
//!
//! - Another user (uid 65534 via `setpriv`, so root is needed): it learns
//!   the address as an attacker would (an abstract name is listed in
//!   `/proc/net/unix` for everyone; here the command writes it to a file
//!   the test makes readable) and must not even reach the socket.
//! - Our own user from outside the command's tree (the test itself): its
//!   datagram is received and refused, and its descriptor is closed where
//!   nothing waits on it.
#![cfg(target_os = "linux")]

mod cli_support;
#[path = "support/prereq.rs"]
mod prereq;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use cli_support::*;

/// The attacker script (see its docstring).
const ATTACKER: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/support/lingering_sender.py"
);

/// `/usr/bin/python3` (reachable for uid 65534, unlike a per-user install).
fn system_python() -> Option<&'static str> {
    Path::new("/usr/bin/python3")
        .exists()
        .then_some("/usr/bin/python3")
}

/// Starts `serve --ready notify` whose command writes its `NOTIFY_SOCKET`
/// to `<public>/addr` and, once `<public>/go` exists, says `READY=1` with
/// `systemd-notify`. Returns the server and the address.
fn start_server(env: &Env, port: u16, public: &Path) -> (Proc, String) {
    if Command::new("systemd-notify")
        .arg("--version")
        .output()
        .is_err()
    {
        prereq::fail("systemd-notify", "apt-get install systemd");
    }
    let addr = public.join("addr");
    let go = public.join("go");
    let script = format!(
        "echo $$ > {pid}; echo \"$NOTIFY_SOCKET\" > {addr}; \
         while [ ! -e {go} ]; do sleep 0.01; done; \
         systemd-notify --ready; exec sleep 60",
        addr = addr.display(),
        go = go.display(),
        pid = public.join("pid").display(),
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
    cmd.env("LLMLB_LOG_LEVEL", "debug");
    let serve = env.spawn_cmd(cmd);
    let socket = read_when_written(&addr);
    (serve, socket)
}

/// Whether every thread of `pid` is stopped (state `T`).
fn all_threads_stopped(pid: u32) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    tasks.flatten().all(|task| {
        std::fs::read_to_string(task.path().join("stat"))
            .ok()
            .and_then(|stat| {
                let state = stat.rsplit_once(") ")?.1.chars().next()?;
                Some(state == 'T')
            })
            .unwrap_or(false)
    })
}

/// Runs the attacker (`prefix` before python, e.g. setpriv) against
/// `serve` and waits for its verdict line. `serve` is stopped (SIGSTOP)
/// meanwhile, so the attacker has closed its copy before the receiver can
/// read the datagram: the receiver's copy is then the last, as it is for an
/// attacker that wins the race (a real one simply retries until it does).
fn attack(env: &Env, serve: &Proc, public: &Path, python: &str, prefix: &[&str]) -> (Proc, String) {
    signal(serve.pid(), libc::SIGSTOP);
    wait_until("serve to stop", || all_threads_stopped(serve.pid()));
    let resume = Resume(serve.pid());
    let mut cmd = Command::new(prefix.first().copied().unwrap_or(python));
    if !prefix.is_empty() {
        cmd.args(&prefix[1..]).arg(python);
    }
    // What an attacker learns from /proc/net/unix (an abstract name) or by
    // guessing: the address.
    // A copy another user can read.
    let script = public.join("lingering_sender.py");
    std::fs::copy(ATTACKER, &script).unwrap();
    cmd.arg(&script)
        .arg(read_when_written(&public.join("addr")))
        .current_dir("/");
    let mut attacker = env.spawn_cmd(cmd);
    let deadline = Instant::now() + PATIENCE;
    let verdict = loop {
        let out = attacker.stdout();
        if out.ends_with('\n') {
            break out.trim().to_owned();
        }
        if let Some(status) = attacker.try_wait() {
            panic!("the attacker exited ({status}): {}", attacker.stderr());
        }
        assert!(
            Instant::now() < deadline,
            "the attacker said nothing; stderr:\n{}",
            attacker.stderr()
        );
        std::thread::sleep(Duration::from_millis(10));
    };
    drop(resume);
    (attacker, verdict)
}

/// Sends SIGCONT on drop (also when the test panics while serve is stopped).
struct Resume(u32);

impl Drop for Resume {
    fn drop(&mut self) {
        signal(self.0, libc::SIGCONT);
    }
}

/// After the attack: the command's `READY=1` is recorded and `llmlb wait`
/// sees it, then SIGTERM releases the port within [`PATIENCE`].
fn still_ready_and_stoppable(env: &Env, port: u16, public: &Path, serve: &mut Proc) {
    // The command leads a process group of its own.
    let _group = GroupGuard(read_when_written(&public.join("pid")).parse().ok());
    std::fs::write(public.join("go"), b"").unwrap();
    let waited = env.run(&["wait", "-p", &port.to_string(), "-t", "10"]);
    assert_eq!(
        waited.code(),
        Some(0),
        "the command's READY=1 was not seen after the attack: {}\nserve's stderr:\n{}",
        waited.stderr,
        serve.stderr()
    );
    signal(serve.pid(), libc::SIGTERM);
    serve.wait();
    assert!(
        !env.lock_file(port).exists(),
        "port {port} not released: {}",
        serve.stderr()
    );
}

/// A world-readable dir for the address file and the trigger.
fn public_dir() -> tempfile::TempDir {
    let public = tempfile::tempdir().unwrap();
    std::fs::set_permissions(public.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    public
}

/// Another user cannot reach the socket at all, so its lingering socket
/// never arrives; READY and SIGTERM work as usual.
#[test]
fn another_users_lingering_socket_does_not_wedge_the_receiver() {
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        prereq::skip_unless_ci(
            "not root",
            "run the test as root (setpriv to uid 65534)",
            "the foreign notify sender",
        );
        return;
    }
    let Some(python) = system_python() else {
        prereq::fail("/usr/bin/python3", "apt-get install python3");
    };
    let env = Env::new();
    let port = free_port();
    let public = public_dir();
    let (mut serve, socket) = start_server(&env, port, public.path());
    let (_attacker, verdict) = attack(
        &env,
        &serve,
        public.path(),
        python,
        &[
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
        ],
    );
    assert_eq!(
        verdict,
        format!("refused {}", libc::EACCES),
        "uid 65534 reached NOTIFY_SOCKET={socket}"
    );
    still_ready_and_stoppable(&env, port, public.path(), &mut serve);
}

/// Our own user outside the command's tree reaches the socket: its
/// datagram is refused, and the descriptor it carried is closed off the
/// receiver's thread.
#[test]
fn a_same_user_lingering_socket_does_not_wedge_the_receiver() {
    let python = system_python().unwrap_or_else(|| {
        if Command::new("python3").arg("-V").output().is_err() {
            prereq::fail("python3", "apt-get install python3");
        }
        "python3"
    });
    let env = Env::new();
    let port = free_port();
    let public = public_dir();
    let (mut serve, socket) = start_server(&env, port, public.path());
    let (attacker, verdict) = attack(&env, &serve, public.path(), python, &[]);
    assert_eq!(verdict, "sent", "to NOTIFY_SOCKET={socket}");
    let refused = format!("PID {} (uid ", attacker.pid());
    wait_until("the attacker's datagram to be refused", || {
        serve
            .stderr()
            .lines()
            .any(|l| l.contains(&refused) && l.contains("is not in the command's tree"))
    });
    still_ready_and_stoppable(&env, port, public.path(), &mut serve);
}
