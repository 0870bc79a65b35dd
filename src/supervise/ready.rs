//! When a command run under the lock is *ready* (exec mode's `--ready`):
//! the moment its launcher records `ready` in the lock record (and tells its
//! own supervisor), so `llmlb wait` and `status` mean "serving", not just
//! "locked".
//!
//! The launcher [`prepare`](Readiness::prepare)s the command before spawning
//! it, then [`start`](Readiness::start)s watching once it has its PID, and
//! gets [`ReadyEvent`]s through a callback (from a thread of its own: hand
//! them to the main loop through a channel). Dropping the [`ReadyWatch`]
//! stops the watching.
//!
//! - [`ReadyPolicy::Immediate`]: ready as soon as the command is started.
//! - [`ReadyPolicy::Listen`] (the default): ready once the port listens. On
//!   Linux, once a process of the command's tree has a listening socket on
//!   the port (`/proc/net/tcp{,6}` inodes mapped to the tree's descriptors),
//!   so a squatter cannot make it ready; elsewhere once a TCP connect to the
//!   host and port succeeds. Checked with a backoff from 1 ms doubling to
//!   50 ms: quick for a fast server, cheap for a slow one.
//! - [`ReadyPolicy::Notify`]: ready when the command's tree sends `READY=1`
//!   over the sd_notify protocol (see [`super::notify_socket`]); its
//!   `STATUS=` and `STOPPING=1` are reported too.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream, ToSocketAddrs};
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use super::notify_socket::{NotifyMessage, NotifyReceiver, NotifySocket, NOTIFY_SOCKET_ENV};

/// The first pause between two `listen` checks; doubled after each miss.
pub const LISTEN_FIRST_DELAY: Duration = Duration::from_millis(1);
/// The longest pause between two `listen` checks.
pub const LISTEN_MAX_DELAY: Duration = Duration::from_millis(50);
/// How long one connect probe may take (elsewhere than Linux): a local
/// listener answers at once; a remote host that drops SYNs must not stall
/// the checks.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);

/// How the launcher decides that its command is ready.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum ReadyPolicy {
    /// Once the command's tree listens on the port (the default).
    #[default]
    Listen,
    /// Once the command's tree sends `READY=1` to `NOTIFY_SOCKET`.
    Notify,
    /// As soon as the command is started.
    Immediate,
}

impl ReadyPolicy {
    /// Every policy, in the order the CLI lists them.
    pub const ALL: [ReadyPolicy; 3] = [
        ReadyPolicy::Listen,
        ReadyPolicy::Notify,
        ReadyPolicy::Immediate,
    ];

    /// The word the CLI, the C ABI and Python use: `listen`, `notify`,
    /// `immediate`.
    pub fn name(self) -> &'static str {
        match self {
            ReadyPolicy::Listen => "listen",
            ReadyPolicy::Notify => "notify",
            ReadyPolicy::Immediate => "immediate",
        }
    }

    /// The policy [`name`](ReadyPolicy::name)d `name`, if any.
    pub fn from_name(name: &str) -> Option<ReadyPolicy> {
        ReadyPolicy::ALL.into_iter().find(|p| p.name() == name)
    }

    /// What a command not ready yet by this policy has still to do, as
    /// "{command} did not …" / "waiting for {command} to …" completes it:
    /// `listen on port 8000`, `send READY=1 (--ready notify)`, `start`.
    pub fn awaited(self, port: u16) -> String {
        match self {
            ReadyPolicy::Listen => format!("listen on port {port}"),
            ReadyPolicy::Notify => "send READY=1 (--ready notify)".to_owned(),
            ReadyPolicy::Immediate => "start".to_owned(),
        }
    }

    /// Whether this platform can watch for this policy: `notify` needs Unix
    /// (there is no sd_notify on Windows).
    pub fn is_supported(self) -> bool {
        cfg!(unix) || self != ReadyPolicy::Notify
    }
}

/// What the watch reports about the command.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ReadyEvent {
    /// The command is ready by the policy. Reported at most once.
    Ready,
    /// `notify`: the command's `STATUS=` text, printable, one line (already
    /// logged at info); for the launcher's own supervisor.
    Status(String),
    /// `notify`: the command sent `STOPPING=1` (already logged at info).
    Stopping,
}

/// A readiness policy prepared for a command about to be spawned.
///
/// # Examples
/// ```
/// use std::process::Command;
/// use llmlb::supervise::ready::{Readiness, ReadyEvent, ReadyPolicy};
///
/// let policy = ReadyPolicy::from_name("immediate").unwrap();
/// let mut cmd = Command::new("my-server");
/// let readiness = Readiness::prepare(policy, &mut cmd, std::path::Path::new("/tmp"), 8000)?;
/// // … spawn `cmd`, then watch its PID (here: this process):
/// let (tx, rx) = std::sync::mpsc::channel();
/// let watch = readiness.start(std::process::id(), "127.0.0.1", 8000, move |event| {
///     let _ = tx.send(event);
/// })?;
/// assert_eq!(rx.recv().unwrap(), ReadyEvent::Ready);
/// drop(watch); // no event after this
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Debug)]
pub struct Readiness {
    policy: ReadyPolicy,
    notify: Option<NotifySocket>,
}

impl Readiness {
    /// Prepares `cmd` for `policy`. The command never inherits this
    /// process's own `NOTIFY_SOCKET` (the launcher reports to its own
    /// supervisor itself); with `notify` it gets a fresh one instead, bound
    /// now (see [`NotifySocket::bind`]; `lock_dir` is where the socket file
    /// goes on Unix other than Linux).
    ///
    /// # Errors
    /// The socket's OS error for `notify`; `Unsupported` for `notify` on
    /// Windows.
    pub fn prepare(
        policy: ReadyPolicy,
        cmd: &mut Command,
        lock_dir: &Path,
        port: u16,
    ) -> io::Result<Readiness> {
        cmd.env_remove(NOTIFY_SOCKET_ENV);
        let notify = match policy {
            ReadyPolicy::Notify => {
                let socket = NotifySocket::bind(lock_dir, port)?;
                cmd.env(NOTIFY_SOCKET_ENV, socket.env_value());
                Some(socket)
            }
            ReadyPolicy::Listen | ReadyPolicy::Immediate => None,
        };
        Ok(Readiness { policy, notify })
    }

    /// The policy this was prepared for.
    pub fn policy(&self) -> ReadyPolicy {
        self.policy
    }

    /// Starts watching the command `root` (its PID) that serves `host`:`port`;
    /// `on_event` gets what the watch sees. With `immediate`, [`ReadyEvent::Ready`]
    /// is reported before this returns; otherwise from a thread of the
    /// watch's own, until the returned [`ReadyWatch`] is dropped (`listen`
    /// ends by itself once ready; `notify` keeps reporting `STATUS=`).
    ///
    /// # Errors
    /// The OS error if the watch's thread cannot be started.
    pub fn start(
        self,
        root: u32,
        host: &str,
        port: u16,
        mut on_event: impl FnMut(ReadyEvent) + Send + 'static,
    ) -> io::Result<ReadyWatch> {
        let inner = match (self.policy, self.notify) {
            (ReadyPolicy::Notify, Some(socket)) => {
                let mut ready = false;
                Watch::Notify(socket.listen(root, move |message| match message {
                    NotifyMessage::Ready if !ready => {
                        ready = true;
                        on_event(ReadyEvent::Ready);
                    }
                    NotifyMessage::Ready => {}
                    NotifyMessage::Status(text) => on_event(ReadyEvent::Status(text)),
                    NotifyMessage::Stopping => on_event(ReadyEvent::Stopping),
                })?)
            }
            (ReadyPolicy::Listen, _) => {
                let probe = ListenProbe::new(root, host, port);
                let stop = Arc::new(AtomicBool::new(false));
                let thread = {
                    let stop = Arc::clone(&stop);
                    std::thread::Builder::new()
                        .name("llmlb-ready".to_owned())
                        .spawn(move || {
                            if watch_listen(&probe, &stop) {
                                on_event(ReadyEvent::Ready);
                            }
                        })?
                };
                Watch::Listen {
                    stop,
                    thread: Some(thread),
                }
            }
            _ => {
                on_event(ReadyEvent::Ready);
                Watch::Done
            }
        };
        Ok(ReadyWatch { inner })
    }
}

/// A running watch (see [`Readiness::start`]). Dropping it stops the
/// watching and waits for its thread: no event is reported after the drop.
#[derive(Debug)]
pub struct ReadyWatch {
    inner: Watch,
}

#[derive(Debug)]
enum Watch {
    Done,
    Notify(#[allow(dead_code)] NotifyReceiver), // stops on drop
    Listen {
        stop: Arc<AtomicBool>,
        thread: Option<JoinHandle<()>>,
    },
}

impl Drop for ReadyWatch {
    fn drop(&mut self) {
        if let Watch::Listen { stop, thread } = &mut self.inner {
            stop.store(true, Ordering::SeqCst);
            if let Some(thread) = thread.take() {
                thread.thread().unpark();
                let _ = thread.join();
            }
        }
    }
}

/// Checks until the probe says the port listens (true) or `stop` is set
/// (false), pausing [`LISTEN_FIRST_DELAY`], doubling up to
/// [`LISTEN_MAX_DELAY`]. `park_timeout` is the pause, so the watch's drop
/// (`unpark`) ends it at once.
fn watch_listen(probe: &ListenProbe, stop: &AtomicBool) -> bool {
    let mut delay = LISTEN_FIRST_DELAY;
    let mut failing = false;
    loop {
        if stop.load(Ordering::SeqCst) {
            return false;
        }
        match probe.listens() {
            Ok(true) => return true,
            Ok(false) => failing = false,
            Err(e) => {
                // Said once, not every 50 ms; the check goes on (the next
                // may succeed: a process that vanished mid-read).
                if !failing {
                    tracing::warn!("cannot check whether the command listens on its port yet: {e}");
                }
                failing = true;
            }
        }
        std::thread::park_timeout(delay);
        delay = (delay * 2).min(LISTEN_MAX_DELAY);
    }
}

/// The `listen` check for one command: its tree's sockets on Linux, a
/// connect probe elsewhere.
#[derive(Debug)]
struct ListenProbe {
    root: u32,
    host: String,
    port: u16,
}

impl ListenProbe {
    fn new(root: u32, host: &str, port: u16) -> ListenProbe {
        ListenProbe {
            root,
            host: host.to_owned(),
            port,
        }
    }

    #[cfg(target_os = "linux")]
    fn listens(&self) -> io::Result<bool> {
        let _ = &self.host; // the tree's sockets are found on any address
        super::listener::tree_listens(self.port, self.root)
    }

    /// The host's own address, not only loopback (where
    /// `listener::tree_listens` probes): `--host 192.0.2.7` listens there.
    #[cfg(not(target_os = "linux"))]
    fn listens(&self) -> io::Result<bool> {
        let _ = self.root; // no portable way to map sockets to processes
        Ok(connect_probe(&self.host, self.port))
    }
}

/// `python3 (PID 123) listens on 8001, not 8000` when the tree of `root`
/// listens on other ports than `port` and not on `port` (a mistyped port, the
/// commonest reason a command never becomes ready by `listen`); `None` if it
/// listens on none, on `port`, or the platform cannot tell whose a socket is
/// (only Linux can; see [`tree_listening`](super::listener::tree_listening)).
/// The process name is escaped for a terminal.
pub fn listening_instead(root: u32, port: u16) -> Option<String> {
    let sockets = super::listener::tree_listening(root).ok()?;
    if sockets.is_empty() || sockets.iter().any(|s| s.port == port) {
        return None;
    }
    // One clause per process, in the order found (by port, then PID).
    let mut clauses: Vec<(u32, String, Vec<u16>)> = Vec::new();
    for socket in &sockets {
        match clauses.iter_mut().find(|(pid, _, _)| *pid == socket.pid) {
            Some((_, _, ports)) if !ports.contains(&socket.port) => ports.push(socket.port),
            Some(_) => {}
            None => clauses.push((
                socket.pid,
                socket.name.as_deref().unwrap_or("a process").to_owned(),
                vec![socket.port],
            )),
        }
    }
    let clauses: Vec<String> = clauses
        .iter()
        .map(|(pid, name, ports)| {
            let ports: Vec<String> = ports.iter().map(u16::to_string).collect();
            format!(
                "{} (PID {pid}) listens on {}",
                crate::lock::printable(name),
                ports.join(", ")
            )
        })
        .collect();
    let line = format!("{}, not {port}", clauses.join("; "));
    Some(line)
}

/// Whether a TCP connect to `host`:`port` succeeds (the connection is closed
/// at once). A wildcard host (`0.0.0.0`, `::`) is probed on its loopback.
#[cfg_attr(target_os = "linux", allow(dead_code))]
pub(crate) fn connect_probe(host: &str, port: u16) -> bool {
    let addrs: Vec<SocketAddr> = match host.parse::<IpAddr>() {
        Ok(IpAddr::V4(ip)) if ip.is_unspecified() => {
            vec![SocketAddr::from((Ipv4Addr::LOCALHOST, port))]
        }
        Ok(IpAddr::V6(ip)) if ip.is_unspecified() => {
            vec![SocketAddr::from((Ipv6Addr::LOCALHOST, port))]
        }
        Ok(ip) => vec![SocketAddr::from((ip, port))],
        Err(_) => match (host, port).to_socket_addrs() {
            Ok(addrs) => addrs.collect(),
            Err(_) => return false,
        },
    };
    addrs
        .iter()
        .any(|addr| TcpStream::connect_timeout(addr, CONNECT_TIMEOUT).is_ok())
}

/// 64 unpredictable bits without a dependency: std's `RandomState` is seeded
/// from the OS's random source once per process, and each new state is a
/// fresh key.
#[cfg_attr(windows, allow(dead_code))] // for notify socket names
pub(crate) fn random_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u32(std::process::id());
    hasher.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_names_round_trip() {
        for policy in ReadyPolicy::ALL {
            assert_eq!(ReadyPolicy::from_name(policy.name()), Some(policy));
        }
        assert_eq!(ReadyPolicy::from_name("ready"), None);
        assert_eq!(ReadyPolicy::default(), ReadyPolicy::Listen);
    }

    #[test]
    fn the_connect_probe_sees_a_listener_on_the_wildcard_host() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        assert!(connect_probe("0.0.0.0", port));
        assert!(connect_probe("127.0.0.1", port));
        drop(listener);
        assert!(!connect_probe("127.0.0.1", port));
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn a_tree_listening_on_another_port_is_named_with_that_port() {
        let me = std::process::id();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let there = listener.local_addr().unwrap().port();
        let wanted = if there == 1 { 2 } else { there - 1 };
        // Other tests of this process may listen too: their ports may be
        // listed beside ours.
        let line = listening_instead(me, wanted).expect("our own listener is seen");
        assert!(line.contains(&format!("(PID {me}) listens on ")), "{line}");
        assert!(line.contains(&there.to_string()), "{line}");
        assert!(line.ends_with(&format!(", not {wanted}")), "{line}");
        // Listening on the awaited port (too): nothing to say.
        assert_eq!(listening_instead(me, there), None);
        drop(listener);
    }

    #[test]
    fn immediate_is_ready_before_start_returns() {
        let mut cmd = Command::new("true");
        cmd.env(NOTIFY_SOCKET_ENV, "/run/systemd/notify");
        let readiness =
            Readiness::prepare(ReadyPolicy::Immediate, &mut cmd, Path::new("."), 1).unwrap();
        // Our own supervisor's socket is not the command's.
        assert!(cmd
            .get_envs()
            .any(|(k, v)| k == NOTIFY_SOCKET_ENV && v.is_none()));
        let (tx, rx) = std::sync::mpsc::channel();
        let _watch = readiness
            .start(1, "127.0.0.1", 1, move |e| tx.send(e).unwrap())
            .unwrap();
        assert_eq!(rx.try_recv(), Ok(ReadyEvent::Ready));
    }
}
