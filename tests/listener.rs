//! `supervise::listener`: who listens on a port, found on real sockets of
//! real processes (this test's own listener, a python3 server child, a
//! grandchild behind a shell).

#[path = "support/prereq.rs"]
mod prereq;

use llmlb::supervise::listener::{port_listener, tree_listens};
use std::net::TcpListener;

// The python3 cases: Linux, where the library names the process (Windows
// does too, but the Windows suite runs under Wine without python3).
#[cfg(target_os = "linux")]
use linux_only::*;

#[cfg(target_os = "linux")]
mod linux_only {
    use super::prereq;
    pub use llmlb::supervise::listener::Listener;
    pub use std::io::{BufRead, BufReader};
    pub use std::process::{Child, Command, Stdio};
    pub use std::time::{Duration, Instant};

    /// A child killed and reaped on drop, so a failing test leaves no server.
    pub struct Kill(pub Child);

    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    /// Kills a process group on drop: the shell's grandchild outlives the shell.
    pub struct KillGroup(pub u32);

    impl Drop for KillGroup {
        fn drop(&mut self) {
            let _ = Command::new("kill")
                .args(["-KILL", "--", &format!("-{}", self.0)])
                .status();
        }
    }

    /// A python3 one-liner listening on a free port on all IPv4 addresses; prints
    /// the port once it listens, then waits to be killed.
    pub const PY_SERVER: &str = "import socket,sys,time\n\
s=socket.socket()\n\
s.bind(('0.0.0.0',0))\n\
s.listen()\n\
print(s.getsockname()[1],flush=True)\n\
time.sleep(600)\n";

    /// Runs `program args` (a python server somewhere inside it) and returns the
    /// child with the port the server printed.
    pub fn spawn_with_port(program: &str, args: &[&str]) -> (Kill, u16) {
        let mut cmd = Command::new(program);
        // Its own process group, so a test can end a whole tree.
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let mut child = match cmd.args(args).stdout(Stdio::piped()).spawn() {
            Ok(child) => Kill(child),
            Err(err) => prereq::fail(
                &format!("{program} ({err})"),
                "install python3 (apt-get install python3)",
            ),
        };
        let mut line = String::new();
        BufReader::new(child.0.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port = line
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("the server printed {line:?}, not its port"));
        (child, port)
    }

    pub fn python_server() -> (Kill, u16) {
        spawn_with_port("python3", &["-c", PY_SERVER])
    }

    /// The comm of a python3 process: `python3` or its versioned binary's name.
    pub fn python_comm(pid: u32) -> String {
        std::fs::read_to_string(format!("/proc/{pid}/comm"))
            .unwrap()
            .trim_end()
            .to_owned()
    }
}

/// A port nobody listens on now (bound, then released).
fn unused_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Asserts that nobody listens on `port` once a listener of ours was
/// dropped. Another test thread of this binary may have forked between its
/// bind and the drop: the child holds a copy of the socket until its exec
/// closes it (close-on-exec), so the socket may outlive our drop by that
/// moment (the owner then shows as not visible, its descriptor already
/// gone). Bounded: 5 s, then the last answer is the failure.
fn assert_nobody_listens_soon(port: u16) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let found = port_listener(port).unwrap();
        if found.is_none() {
            return;
        }
        if std::time::Instant::now() >= deadline {
            panic!("port {port} still has a listener 5 s after ours was dropped: {found:?}");
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

#[test]
fn nobody_listening_is_none() {
    let port = unused_port();
    assert_eq!(port_listener(port).unwrap(), None);
    assert!(!tree_listens(port, std::process::id()).unwrap());
}

#[test]
fn finds_this_process_listening() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let found = port_listener(port).unwrap().expect("our own listener");
    assert!(tree_listens(port, std::process::id()).unwrap());
    #[cfg(target_os = "linux")]
    {
        assert_eq!(found.pid, Some(std::process::id()));
        // The test binary's name, as /proc/self/comm has it (15 bytes at most).
        let comm = std::fs::read_to_string("/proc/self/comm").unwrap();
        assert_eq!(found.name.as_deref(), Some(comm.trim_end()));
    }
    #[cfg(windows)]
    match found.pid {
        // Windows names the owner, with its image name (listener-0123abcd.exe).
        Some(pid) => {
            assert_eq!(pid, std::process::id());
            let exe = std::env::current_exe().unwrap();
            let image = exe.file_name().unwrap().to_str().unwrap();
            assert!(
                found
                    .name
                    .as_deref()
                    .is_some_and(|n| n.eq_ignore_ascii_case(image)),
                "{found:?} vs {image}"
            );
        }
        // Wine's table leaves the owner 0: not visible, and never a guess.
        None => assert_eq!(found.name, None),
    }
    // macOS: only a connect probe, which sees that something accepts.
    #[cfg(not(any(target_os = "linux", windows)))]
    assert_eq!((found.pid, found.name), (None, None));
    drop(listener);
    assert_nobody_listens_soon(port);
}

#[test]
fn finds_an_ipv6_listener() {
    let Ok(listener) = TcpListener::bind("[::1]:0") else {
        prereq::skip_unless_ci("IPv6 loopback (::1)", "enable IPv6", "the IPv6 case");
        return;
    };
    let port = listener.local_addr().unwrap().port();
    let found = port_listener(port).unwrap().expect("our own IPv6 listener");
    if cfg!(target_os = "linux") {
        assert_eq!(found.pid, Some(std::process::id()));
    }
}

#[cfg(target_os = "linux")]
#[test]
fn finds_a_python_server_with_its_pid_and_name() {
    let (server, port) = python_server();
    let found = port_listener(port).unwrap().expect("the python server");
    assert_eq!(
        found,
        Listener {
            pid: Some(server.0.id()),
            name: Some(python_comm(server.0.id())),
        }
    );
    assert!(found.name.as_deref().unwrap().starts_with("python3"));
    assert!(tree_listens(port, server.0.id()).unwrap());
}

#[cfg(target_os = "linux")]
#[test]
fn tree_listens_sees_a_grandchild_and_not_an_unrelated_process() {
    // sh → python3: the listener is the shell's child, this test's grandchild.
    let script = format!("python3 -c \"{}\" & wait", PY_SERVER.replace('"', "\\\""));
    let (shell, port) = spawn_with_port("sh", &["-c", &script]);
    let _group = KillGroup(shell.0.id());
    let mut unrelated = Kill(Command::new("sleep").arg("600").spawn().unwrap());

    assert!(tree_listens(port, shell.0.id()).unwrap());
    assert!(tree_listens(port, std::process::id()).unwrap());
    assert!(!tree_listens(port, unrelated.0.id()).unwrap());

    let found = port_listener(port).unwrap().expect("the grandchild");
    let pid = found.pid.expect("a visible pid");
    assert_ne!(pid, shell.0.id(), "the shell does not hold the socket");
    assert_eq!(found.name, Some(python_comm(pid)));

    // Once the root is gone, its tree no longer answers for the port.
    let gone = unrelated.0.id();
    unrelated.0.kill().unwrap();
    unrelated.0.wait().unwrap();
    assert!(!tree_listens(port, gone).unwrap());
}

#[cfg(target_os = "linux")]
#[test]
fn a_closed_server_is_no_longer_found() {
    let (mut server, port) = python_server();
    assert!(port_listener(port).unwrap().is_some());
    server.0.kill().unwrap();
    server.0.wait().unwrap();
    // The socket goes with the process's last descriptor; allow the kernel a
    // moment to drop it from its table (a bound on waiting, not a timing check).
    let deadline = Instant::now() + Duration::from_secs(15);
    while port_listener(port).unwrap().is_some() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(port_listener(port).unwrap(), None);
}
