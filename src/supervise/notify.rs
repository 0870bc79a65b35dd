//! Reporting to the service manager that started this process, over the
//! sd_notify protocol (systemd's `Type=notify`, and the managers that speak
//! it): `MAINPID=`/`READY=1` once the server is ready, a one-line `STATUS=`
//! at each step, `STOPPING=1` when it stops, and `WATCHDOG=1` while the lock
//! is still ours; across a replace, `RELOADING=1` when a reload begins and
//! `MAINPID=<successor>` once the successor serves, after which this
//! process says nothing more.
//!
//! The manager asks for this by setting `NOTIFY_SOCKET` (and `WATCHDOG_USEC`,
//! optionally `WATCHDOG_PID`) in our environment. The variables are read,
//! never unset: unsetting them would race with the threads that read the
//! environment (exec mode's spawn among them); exec mode instead removes
//! them from its command's environment, since llmlb is the one that reports.
//!
//! `NOTIFY_SOCKET` is a socket path, or on Linux `@name` in the abstract
//! namespace. Without it every call is a no-op; on platforms without Unix
//! datagram sockets (Windows) too.

use std::ffi::OsString;
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// The shortest heartbeat interval: a watchdog of a few microseconds would
/// otherwise turn the lock check into a busy loop.
const MIN_HEARTBEAT: Duration = Duration::from_millis(1);

/// This process's service manager, as its environment describes it.
///
/// # Examples
/// ```no_run
/// use llmlb::supervise::notify::Supervisor;
///
/// // Without NOTIFY_SOCKET in the environment, nothing is sent. (Not run as
/// // a test: a test runner under a service manager would report to it.)
/// let supervisor = Supervisor::from_env();
/// supervisor.status("serving on 127.0.0.1:8000")?;
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Debug)]
pub struct Supervisor {
    /// `NOTIFY_SOCKET` as read; `None`: nobody listens.
    socket: Option<OsString>,
    /// `WATCHDOG_USEC`, non-zero, with a socket to send the beats to.
    watchdog: Option<Duration>,
    /// `WATCHDOG_PID`: the process the watchdog is meant for (`None`: us).
    watchdog_pid: Option<u32>,
    /// The watchdog is ours although `WATCHDOG_PID` names another process:
    /// the predecessor we took the port over from ([`Supervisor::adopt_watchdog`]).
    adopted: AtomicBool,
    /// What was sent that ends what may follow; every send holds it, so
    /// nothing leaves after [`Supervisor::handed_over`]'s datagram.
    sent: Mutex<Sent>,
}

#[derive(Debug, Default)]
struct Sent {
    stopping: bool,
    /// `MAINPID=<successor>` went out: the manager's main process is
    /// another one now, and nothing of ours may reach it any more.
    handed_over: bool,
}

impl Supervisor {
    /// Reads `NOTIFY_SOCKET`, `WATCHDOG_USEC` and `WATCHDOG_PID`. A watchdog
    /// meant for another process (`WATCHDOG_PID` names someone else) or of
    /// 0 µs is no watchdog, as in `sd_watchdog_enabled(3)`, until adopted
    /// ([`adopt_watchdog`](Supervisor::adopt_watchdog)).
    pub fn from_env() -> Supervisor {
        let socket = imp::socket();
        let (usec, pid) = imp::watchdog();
        Supervisor {
            watchdog: usec.filter(|d| socket.is_some() && !d.is_zero()),
            watchdog_pid: pid,
            socket,
            adopted: AtomicBool::new(false),
            sent: Mutex::new(Sent::default()),
        }
    }

    /// Whether a service manager listens (`NOTIFY_SOCKET` is set).
    pub fn is_listening(&self) -> bool {
        self.socket.is_some()
    }

    /// The watchdog, if it is ours to feed.
    fn our_watchdog(&self) -> Option<Duration> {
        let ours = match self.watchdog_pid {
            None => true,
            Some(pid) => pid == std::process::id() || self.adopted.load(Ordering::SeqCst),
        };
        self.watchdog.filter(|_| ours)
    }

    /// How often to send [`heartbeat`](Supervisor::heartbeat): half the
    /// manager's watchdog timeout (as `sd_watchdog_enabled(3)` advises), at
    /// least 1 ms; `None` without a watchdog of ours.
    pub fn heartbeat_interval(&self) -> Option<Duration> {
        self.our_watchdog().map(|d| (d / 2).max(MIN_HEARTBEAT))
    }

    /// Takes over the watchdog of `predecessor`, the server this process
    /// took its port over from (it knows that PID from the handover): a
    /// successor started as its predecessor's child (a reload) inherits
    /// `WATCHDOG_PID=<predecessor>`, and would otherwise stay silent. The
    /// predecessor beats until it names us the main process
    /// ([`handed_over`](Supervisor::handed_over)); we beat from now on (a
    /// manager that does not take our beats yet, `NotifyAccess=main`, drops
    /// them), so the watchdog never lapses across the switch. Returns
    /// whether the watchdog is ours now; a `WATCHDOG_PID` naming anyone
    /// else is left alone.
    pub fn adopt_watchdog(&self, predecessor: u32) -> bool {
        if self.watchdog.is_some() && self.watchdog_pid == Some(predecessor) {
            self.adopted.store(true, Ordering::SeqCst);
        }
        self.our_watchdog().is_some()
    }

    /// The `WATCHDOG_PID` to give a successor this process starts as its
    /// child (a reload), so that it can [adopt](Supervisor::adopt_watchdog)
    /// the watchdog: our PID while the watchdog is ours, else `None` (pass
    /// the environment on unchanged).
    pub fn successor_watchdog_pid(&self) -> Option<u32> {
        self.our_watchdog().map(|_| std::process::id())
    }

    /// Sends `STATUS=line` (newlines become spaces: a line must not smuggle
    /// in another assignment such as `READY=1`).
    ///
    /// # Errors
    /// The socket could not be reached or the datagram not sent.
    pub fn status(&self, line: &str) -> io::Result<()> {
        self.send(&[Message::Status(&one_line(line))])
    }

    /// Sends `MAINPID=<our pid>` and `READY=1`: the service is up; after a
    /// [`reloading`](Supervisor::reloading) that failed, it serves on as
    /// before (this completes the reload for the manager).
    ///
    /// # Errors
    /// As [`status`](Supervisor::status).
    pub fn ready(&self) -> io::Result<()> {
        self.send(&[Message::MainPid(std::process::id()), Message::Ready])
    }

    /// Sends `RELOADING=1` with `MONOTONIC_USEC=<CLOCK_MONOTONIC now, µs>`
    /// (systemd ≥ 253 ignores a reload without it; `Type=notify-reload`):
    /// a reload began. It is complete when the manager gets `READY=1` from
    /// its main process: the successor's, through our
    /// [`handed_over`](Supervisor::handed_over), or ours
    /// ([`ready`](Supervisor::ready)) after a reload that failed.
    ///
    /// # Errors
    /// As [`status`](Supervisor::status); also the clock could not be read.
    pub fn reloading(&self) -> io::Result<()> {
        self.send(&[Message::Reloading, Message::MonotonicNow])
    }

    /// Sends `MAINPID=<successor>`, `READY=1` and `STATUS=line` in one
    /// datagram (a successor took the port over and serves: the manager
    /// follows it as the unit's main process under the default
    /// `NotifyAccess=main`, and a reload is complete), then nothing more,
    /// ever: no `STOPPING=1`, no `WATCHDOG=1` (ours would be a stranger's
    /// now). Later calls send nothing.
    ///
    /// # Errors
    /// As [`status`](Supervisor::status); nothing more is sent either way.
    pub fn handed_over(&self, successor: u32, line: &str) -> io::Result<()> {
        let mut sent = self.sent.lock().unwrap_or_else(|e| e.into_inner());
        if std::mem::replace(&mut sent.handed_over, true) {
            return Ok(());
        }
        self.send_now(&[
            Message::MainPid(successor),
            Message::Ready,
            Message::Status(&one_line(line)),
        ])
    }

    /// Sends `STOPPING=1` with `STATUS=line`, once: later calls send nothing
    /// (the first says why the stop began; the rest would only repeat it).
    ///
    /// # Errors
    /// As [`status`](Supervisor::status).
    pub fn stopping(&self, line: &str) -> io::Result<()> {
        let mut sent = self.sent.lock().unwrap_or_else(|e| e.into_inner());
        if sent.handed_over || std::mem::replace(&mut sent.stopping, true) {
            return Ok(());
        }
        self.send_now(&[Message::Stopping, Message::Status(&one_line(line))])
    }

    /// Sends `WATCHDOG=1` if the manager runs a watchdog for us (else
    /// nothing): call it only while the lock is known to be ours.
    ///
    /// # Errors
    /// As [`status`](Supervisor::status).
    pub fn heartbeat(&self) -> io::Result<()> {
        if self.our_watchdog().is_none() {
            return Ok(());
        }
        self.send(&[Message::Watchdog])
    }

    fn send(&self, messages: &[Message<'_>]) -> io::Result<()> {
        let sent = self.sent.lock().unwrap_or_else(|e| e.into_inner());
        if sent.handed_over {
            return Ok(());
        }
        self.send_now(messages)
    }

    /// Sends, holding `sent`.
    fn send_now(&self, messages: &[Message<'_>]) -> io::Result<()> {
        match &self.socket {
            Some(socket) => imp::send(socket, messages),
            None => Ok(()),
        }
    }
}

/// One assignment of the protocol, as the platform half sends it.
#[cfg_attr(not(unix), allow(dead_code))]
enum Message<'a> {
    MainPid(u32),
    Ready,
    Reloading,
    /// `MONOTONIC_USEC=` with the clock read as the datagram is made.
    MonotonicNow,
    Stopping,
    Status(&'a str),
    Watchdog,
}

fn one_line(text: &str) -> String {
    text.replace(['\n', '\r'], " ")
}

/// How long one datagram to the manager may wait for room in its queue.
#[cfg(unix)]
const SEND_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(1);

/// The protocol, rendered by the `sd-notify` crate.
#[cfg(unix)]
mod imp {
    use super::{Message, SEND_TIMEOUT};
    use sd_notify::NotifyState;
    use std::ffi::{OsStr, OsString};
    use std::io;
    use std::os::unix::net::UnixDatagram;
    use std::time::Duration;

    pub(super) fn socket() -> Option<OsString> {
        std::env::var_os("NOTIFY_SOCKET").filter(|s| !s.is_empty())
    }

    /// `WATCHDOG_USEC` and `WATCHDOG_PID`, each if it parses (an
    /// unparsable PID names nobody, so the watchdog is ours, as the crate's
    /// `watchdog_enabled` has it).
    pub(super) fn watchdog() -> (Option<Duration>, Option<u32>) {
        let number = |name| std::env::var(name).ok().and_then(|v| v.parse::<u64>().ok());
        (
            number("WATCHDOG_USEC").map(Duration::from_micros),
            number("WATCHDOG_PID").and_then(|p| u32::try_from(p).ok()),
        )
    }

    /// The datagram: one `KEY=VALUE` line each.
    pub(super) fn render(messages: &[Message<'_>]) -> io::Result<String> {
        let mut out = String::new();
        for m in messages {
            let state = match *m {
                Message::MainPid(pid) => NotifyState::MainPid(pid),
                Message::Ready => NotifyState::Ready,
                Message::Reloading => NotifyState::Reloading,
                Message::MonotonicNow => NotifyState::monotonic_usec_now()?,
                Message::Stopping => NotifyState::Stopping,
                Message::Status(line) => NotifyState::Status(line),
                Message::Watchdog => NotifyState::Watchdog,
            };
            out.push_str(&format!("{state}\n"));
        }
        Ok(out)
    }

    /// To `socket`: a path, or on Linux `@name` in the abstract namespace,
    /// which `sd_notify(3)` accepts (the crate does not).
    pub(super) fn send(socket: &OsStr, messages: &[Message<'_>]) -> io::Result<()> {
        let message = render(messages)?;
        let sender = UnixDatagram::unbound()?;
        // A manager that does not read (hung, or a test's) fills its
        // queue, and a datagram send then blocks: never for long, so that
        // a heartbeat or a stop never hangs on it. The message is lost
        // (an error the caller logs), as it would be with no manager.
        sender.set_write_timeout(Some(SEND_TIMEOUT))?;
        let bytes = std::os::unix::ffi::OsStrExt::as_bytes(socket);
        #[cfg(target_os = "linux")]
        if let Some(name) = bytes.strip_prefix(b"@") {
            use std::os::linux::net::SocketAddrExt as _;
            let address = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
            return complete(sender.send_to_addr(message.as_bytes(), &address)?, &message);
        }
        let _ = bytes;
        complete(sender.send_to(message.as_bytes(), socket)?, &message)
    }

    fn complete(sent: usize, message: &str) -> io::Result<()> {
        if sent == message.len() {
            Ok(())
        } else {
            Err(io::Error::new(
                io::ErrorKind::WriteZero,
                "incomplete datagram",
            ))
        }
    }
}

/// No sd_notify here: no manager to tell.
#[cfg(not(unix))]
mod imp {
    use super::Message;
    use std::ffi::{OsStr, OsString};
    use std::io;
    use std::time::Duration;

    pub(super) fn socket() -> Option<OsString> {
        None
    }

    pub(super) fn watchdog() -> (Option<Duration>, Option<u32>) {
        (None, None)
    }

    pub(super) fn send(_: &OsStr, _: &[Message<'_>]) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_status_line_cannot_carry_another_assignment() {
        assert_eq!(one_line("a\nREADY=1\r\nb"), "a READY=1  b");
    }

    #[test]
    fn heartbeat_is_half_the_watchdog_and_never_a_busy_loop() {
        let with = |usec: u64| Supervisor {
            watchdog: Some(Duration::from_micros(usec)),
            ..Supervisor::to(Some("/nonexistent".into()))
        };
        assert_eq!(
            with(200_000).heartbeat_interval(),
            Some(Duration::from_millis(100))
        );
        assert_eq!(with(10).heartbeat_interval(), Some(MIN_HEARTBEAT));
    }

    impl Supervisor {
        /// A supervisor reporting to `socket`, without a watchdog.
        fn to(socket: Option<OsString>) -> Supervisor {
            Supervisor {
                socket,
                watchdog: None,
                watchdog_pid: None,
                adopted: AtomicBool::new(false),
                sent: Mutex::new(Sent::default()),
            }
        }
    }

    #[cfg(unix)]
    fn manager() -> (
        tempfile::TempDir,
        std::os::unix::net::UnixDatagram,
        Supervisor,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify.sock");
        let socket = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
        socket.set_nonblocking(true).unwrap();
        let supervisor = Supervisor {
            watchdog: Some(Duration::from_secs(10)),
            ..Supervisor::to(Some(path.into_os_string()))
        };
        (dir, socket, supervisor)
    }

    #[cfg(unix)]
    fn received(socket: &std::os::unix::net::UnixDatagram) -> Option<String> {
        let mut buf = [0u8; 4096];
        match socket.recv(&mut buf) {
            Ok(n) => Some(String::from_utf8_lossy(&buf[..n]).into_owned()),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => None,
            Err(e) => panic!("recv: {e}"),
        }
    }

    #[cfg(unix)]
    fn monotonic_usec() -> i128 {
        match sd_notify::NotifyState::monotonic_usec_now().unwrap() {
            sd_notify::NotifyState::MonotonicUsec(usec) => usec,
            _ => unreachable!("monotonic_usec_now makes MonotonicUsec"),
        }
    }

    /// A manager that stops reading fills its queue: a send then fails
    /// after the send timeout instead of blocking the server for ever.
    #[cfg(unix)]
    #[test]
    fn a_manager_that_does_not_read_never_blocks_a_send_for_ever() {
        let (_dir, _socket, supervisor) = manager();
        let failed = (0..100_000).find_map(|_| supervisor.status("filling the queue").err());
        let e = failed.expect("a full queue fails a send");
        assert!(
            matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ),
            "{e}"
        );
    }

    #[cfg(unix)]
    #[test]
    fn reloading_sends_reloading_with_the_monotonic_clock_in_one_datagram() {
        let (_dir, socket, supervisor) = manager();
        let before = monotonic_usec();
        supervisor.reloading().unwrap();
        let after = monotonic_usec();
        let datagram = received(&socket).expect("a datagram");
        let usec: i128 = datagram
            .strip_prefix("RELOADING=1\nMONOTONIC_USEC=")
            .and_then(|rest| rest.strip_suffix('\n'))
            .unwrap_or_else(|| panic!("{datagram:?}"))
            .parse()
            .unwrap();
        assert!(before <= usec && usec <= after, "{before} {usec} {after}");
        assert_eq!(received(&socket), None);
    }

    #[cfg(unix)]
    #[test]
    fn after_naming_the_successor_nothing_more_is_sent() {
        let (_dir, socket, supervisor) = manager();
        supervisor.heartbeat().unwrap();
        assert_eq!(received(&socket).as_deref(), Some("WATCHDOG=1\n"));
        supervisor
            .handed_over(4242, "PID 4242 serves\nREADY=1")
            .unwrap();
        assert_eq!(
            received(&socket).as_deref(),
            Some("MAINPID=4242\nREADY=1\nSTATUS=PID 4242 serves READY=1\n")
        );
        supervisor.heartbeat().unwrap();
        supervisor.stopping("stopping").unwrap();
        supervisor.status("draining").unwrap();
        supervisor.ready().unwrap();
        supervisor.reloading().unwrap();
        supervisor.handed_over(1, "again").unwrap();
        assert_eq!(received(&socket), None);
    }

    #[test]
    fn a_successor_adopts_only_its_predecessors_watchdog() {
        let inherited = |pid: u32| Supervisor {
            watchdog: Some(Duration::from_millis(200)),
            watchdog_pid: Some(pid),
            ..Supervisor::to(Some("/nonexistent".into()))
        };
        let ours = inherited(std::process::id());
        assert_eq!(ours.heartbeat_interval(), Some(Duration::from_millis(100)));
        assert_eq!(ours.successor_watchdog_pid(), Some(std::process::id()));
        let predecessor = u32::MAX - 1;
        let theirs = inherited(predecessor);
        assert_eq!(theirs.heartbeat_interval(), None);
        assert_eq!(theirs.successor_watchdog_pid(), None);
        assert!(!theirs.adopt_watchdog(predecessor - 1));
        assert_eq!(theirs.heartbeat_interval(), None);
        assert!(theirs.adopt_watchdog(predecessor));
        assert_eq!(
            theirs.heartbeat_interval(),
            Some(Duration::from_millis(100))
        );
        assert_eq!(theirs.successor_watchdog_pid(), Some(std::process::id()));
        // No watchdog at all: nothing to adopt.
        assert!(!Supervisor::to(None).adopt_watchdog(predecessor));
    }
}
