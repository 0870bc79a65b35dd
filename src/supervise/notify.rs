//! Reporting to the service manager that started this process, over the
//! sd_notify protocol (systemd's `Type=notify`, and the managers that speak
//! it): `MAINPID=`/`READY=1` once the server is ready, a one-line `STATUS=`
//! at each step, `STOPPING=1` when it stops, and `WATCHDOG=1` while the lock
//! is still ours.
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

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
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
    listening: bool,
    watchdog: Option<Duration>,
    stopping_sent: AtomicBool,
}

impl Supervisor {
    /// Reads `NOTIFY_SOCKET`, `WATCHDOG_USEC` and `WATCHDOG_PID`. A watchdog
    /// meant for another process (`WATCHDOG_PID` names someone else) or of
    /// 0 µs is no watchdog, as in `sd_watchdog_enabled(3)`.
    pub fn from_env() -> Supervisor {
        let listening = imp::listening();
        Supervisor {
            listening,
            watchdog: imp::watchdog().filter(|d| listening && !d.is_zero()),
            stopping_sent: AtomicBool::new(false),
        }
    }

    /// Whether a service manager listens (`NOTIFY_SOCKET` is set).
    pub fn is_listening(&self) -> bool {
        self.listening
    }

    /// How often to send [`heartbeat`](Supervisor::heartbeat): half the
    /// manager's watchdog timeout (as `sd_watchdog_enabled(3)` advises), at
    /// least 1 ms; `None` without a watchdog.
    pub fn heartbeat_interval(&self) -> Option<Duration> {
        self.watchdog.map(|d| (d / 2).max(MIN_HEARTBEAT))
    }

    /// Sends `STATUS=line` (newlines become spaces: a line must not smuggle
    /// in another assignment such as `READY=1`).
    ///
    /// # Errors
    /// The socket could not be reached or the datagram not sent.
    pub fn status(&self, line: &str) -> io::Result<()> {
        self.send(&[Message::Status(&one_line(line))])
    }

    /// Sends `MAINPID=<our pid>` and `READY=1`: the service is up.
    ///
    /// # Errors
    /// As [`status`](Supervisor::status).
    pub fn ready(&self) -> io::Result<()> {
        self.send(&[Message::MainPid(std::process::id()), Message::Ready])
    }

    /// Sends `STOPPING=1` with `STATUS=line`, once: later calls send nothing
    /// (the first says why the stop began; the rest would only repeat it).
    ///
    /// # Errors
    /// As [`status`](Supervisor::status).
    pub fn stopping(&self, line: &str) -> io::Result<()> {
        if self.stopping_sent.swap(true, Ordering::SeqCst) {
            return Ok(());
        }
        self.send(&[Message::Stopping, Message::Status(&one_line(line))])
    }

    /// Sends `WATCHDOG=1` if the manager runs a watchdog for us (else
    /// nothing): call it only while the lock is known to be ours.
    ///
    /// # Errors
    /// As [`status`](Supervisor::status).
    pub fn heartbeat(&self) -> io::Result<()> {
        if self.watchdog.is_none() {
            return Ok(());
        }
        self.send(&[Message::Watchdog])
    }

    /// Sends `RELOADING=1` with `MONOTONIC_USEC=` (the `CLOCK_MONOTONIC`
    /// time now, without which systemd may ignore the reload): a reload
    /// began; [`ready`](Supervisor::ready) ends it.
    ///
    /// # Errors
    /// As [`status`](Supervisor::status).
    pub fn reloading(&self) -> io::Result<()> {
        self.send(&[Message::Reloading])
    }

    fn send(&self, messages: &[Message<'_>]) -> io::Result<()> {
        if !self.listening {
            return Ok(());
        }
        imp::send(messages)
    }
}

/// One assignment of the protocol, as the platform half sends it.
#[cfg_attr(not(unix), allow(dead_code))]
enum Message<'a> {
    MainPid(u32),
    Ready,
    Stopping,
    Status(&'a str),
    Watchdog,
    /// `RELOADING=1` and `MONOTONIC_USEC=`.
    Reloading,
}

fn one_line(text: &str) -> String {
    text.replace(['\n', '\r'], " ")
}

/// The protocol through the `sd-notify` crate.
#[cfg(unix)]
mod imp {
    use super::Message;
    use sd_notify::NotifyState;
    use std::io;
    use std::time::Duration;

    pub(super) fn listening() -> bool {
        std::env::var_os("NOTIFY_SOCKET").is_some_and(|s| !s.is_empty())
    }

    pub(super) fn watchdog() -> Option<Duration> {
        sd_notify::watchdog_enabled()
    }

    pub(super) fn send(messages: &[Message<'_>]) -> io::Result<()> {
        let mut states: Vec<NotifyState<'_>> = Vec::new();
        for m in messages {
            match *m {
                Message::MainPid(pid) => states.push(NotifyState::MainPid(pid)),
                Message::Ready => states.push(NotifyState::Ready),
                Message::Stopping => states.push(NotifyState::Stopping),
                Message::Status(line) => states.push(NotifyState::Status(line)),
                Message::Watchdog => states.push(NotifyState::Watchdog),
                Message::Reloading => {
                    states.push(NotifyState::Reloading);
                    states.push(NotifyState::monotonic_usec_now()?);
                }
            }
        }
        #[cfg(target_os = "linux")]
        if let Some(name) = std::env::var_os("NOTIFY_SOCKET")
            .as_deref()
            .and_then(|s| std::os::unix::ffi::OsStrExt::as_bytes(s).strip_prefix(b"@"))
        {
            return send_abstract(name, &states);
        }
        sd_notify::notify(&states)
    }

    /// `NOTIFY_SOCKET=@name`: a socket in Linux's abstract namespace, which
    /// `sd_notify(3)` accepts and the crate does not; the datagram is the
    /// crate's own rendering (one `KEY=VALUE` line each).
    #[cfg(target_os = "linux")]
    fn send_abstract(name: &[u8], states: &[NotifyState<'_>]) -> io::Result<()> {
        use std::os::linux::net::SocketAddrExt as _;
        use std::os::unix::net::{SocketAddr, UnixDatagram};
        let message: String = states.iter().map(|s| format!("{s}\n")).collect();
        let socket = UnixDatagram::unbound()?;
        socket.connect_addr(&SocketAddr::from_abstract_name(name)?)?;
        let sent = socket.send(message.as_bytes())?;
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
    use std::io;
    use std::time::Duration;

    pub(super) fn listening() -> bool {
        false
    }

    pub(super) fn watchdog() -> Option<Duration> {
        None
    }

    pub(super) fn send(_: &[Message<'_>]) -> io::Result<()> {
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
            listening: true,
            watchdog: Some(Duration::from_micros(usec)),
            stopping_sent: AtomicBool::new(false),
        };
        assert_eq!(
            with(200_000).heartbeat_interval(),
            Some(Duration::from_millis(100))
        );
        assert_eq!(with(10).heartbeat_interval(), Some(MIN_HEARTBEAT));
    }
}
