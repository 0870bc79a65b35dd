//! The sd_notify receiver of exec mode's `--ready notify`: a datagram socket
//! whose address goes to the command in `NOTIFY_SOCKET`, and a thread that
//! reads it and reports what the command's tree says (`READY=1`, `STATUS=…`,
//! `STOPPING=1`).
//!
//! # Who may speak
//! Only our own user can reach the socket, and on Linux only the command's
//! tree is heard. The socket is a file, `notify_<port>_<pid>_<random>.sock`
//! in the lock dir (removed when the receiver is dropped; one left by a
//! killed server is removed by the port's next receiver, once a connect
//! proves nobody receives on it), mode 0600: the lock dir is 0700 and ours, so another
//! user's `sendto` fails with `EACCES` and nothing of theirs (no datagram,
//! no descriptor) ever reaches us. An abstract socket would be simpler (no
//! file) but has no permissions, and its name is listed in `/proc/net/unix`
//! for every user: anyone could send to it. On Linux the socket also has
//! `SO_PASSCRED`, so the kernel attaches the sender's credentials to every
//! datagram; a message counts only if its uid is ours and its pid is the
//! command or a descendant (the `ppid` chain in `/proc` reaches the
//! command, or this process: orphans of the tree that this process adopted
//! as their subreaper). Anything else is dropped with a debug line. A sender
//! that has exited *and been reaped* by the time its datagram is read
//! cannot be placed in the tree and is dropped too: send from the server
//! process itself, or with a client that waits for the datagram to be read
//! (`systemd-notify` without `--no-block`). Where the lock dir's path is too
//! long for a socket address (108 bytes), Linux falls back to an abstract
//! name (debug line): the tree check still applies, and received
//! descriptors are harmless (below). Elsewhere on Unix (macOS has no
//! credentials on datagrams) the tree check is not done: the file's
//! permissions are the whole check. Windows has no sd_notify:
//! [`NotifySocket::bind`] fails with `Unsupported`.
//!
//! # Nothing a sender does can stall us
//! Descriptors passed along (`systemd-notify`'s `BARRIER=1` pipe, or a TCP
//! socket whose last close lingers for an hour) are never closed on the
//! receiver's thread: once the datagram's messages are handled they go to a
//! detached closer thread (see `closer`), which is what releases a waiting
//! `systemd-notify`: it stays alive, so its ancestry can be checked, until
//! its `READY=1` before the barrier has been read. They are received in full
//! (room for the kernel's 253 per message): a control buffer too small for
//! them would not help, as Linux releases the ones that do not fit in the
//! receiving thread. Refusing them with `SO_PASSRIGHTS` (Linux 6.16) would
//! break `BARRIER=1`. Stopping the receiver waits for its thread a bounded
//! time ([`STOP_WAIT`]), and the socket itself, whose queue may still hold
//! descriptors, is closed by the closer too.
//!
//! # Garbage
//! A datagram larger than [`MAX_DATAGRAM`] (systemd's own limit), one that is
//! not text, or lines it does not know are ignored, never a panic.

use std::ffi::OsString;
use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::lock::printable;

#[cfg(unix)]
mod closer;
#[cfg(target_os = "linux")]
mod linux;
#[cfg(unix)]
mod unix;
#[cfg(unix)]
use unix as sys;
#[cfg(windows)]
mod windows;
#[cfg(windows)]
use windows as sys;

/// The environment variable that names the socket, as systemd sets it.
pub const NOTIFY_SOCKET_ENV: &str = "NOTIFY_SOCKET";

/// How long dropping a [`NotifyReceiver`] waits for its thread before it
/// lets it finish on its own.
pub const STOP_WAIT: Duration = Duration::from_secs(1);

/// The largest datagram read (systemd's `NOTIFY_BUFFER_MAX`, `PIPE_BUF`); a
/// larger one is dropped whole.
pub const MAX_DATAGRAM: usize = 4096;

/// One thing the command said, from a datagram the tree check accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum NotifyMessage {
    /// `READY=1`: the command is serving.
    Ready,
    /// `STATUS=<text>`, made printable (control characters escaped): one line.
    Status(String),
    /// `STOPPING=1`: the command began shutting down.
    Stopping,
}

/// The messages in one datagram, in order: newline-separated `KEY=VALUE`
/// lines, as sd_notify sends them. Lines this does not know (`MAINPID=`,
/// `WATCHDOG=1`, `BARRIER=1`, garbage) are skipped; bytes that are not UTF-8
/// are replaced.
pub fn parse_datagram(bytes: &[u8]) -> Vec<NotifyMessage> {
    let text = String::from_utf8_lossy(bytes);
    text.split('\n')
        .filter_map(|line| match line.split_once('=')? {
            ("READY", "1") => Some(NotifyMessage::Ready),
            ("STOPPING", "1") => Some(NotifyMessage::Stopping),
            ("STATUS", status) => Some(NotifyMessage::Status(printable(status).to_string())),
            _ => None,
        })
        .collect()
}

/// A bound notify socket, before its receiver runs. Bind it before spawning
/// the command, set [`env_value`](NotifySocket::env_value) as the command's
/// `NOTIFY_SOCKET`, then [`listen`](NotifySocket::listen) once the command's
/// PID is known (datagrams sent meanwhile wait in the socket).
#[derive(Debug)]
pub struct NotifySocket {
    socket: sys::Socket,
    env_value: OsString,
}

impl NotifySocket {
    /// Binds a fresh socket for the command serving `port`:
    /// `notify_<port>_<pid>_<random>.sock` in `lock_dir` (mode 0600, removed
    /// when the receiver ends; `lock_dir` must be the held port's lock dir,
    /// 0700 and ours). On Linux, if that path does not fit a socket address,
    /// the abstract `@llmlb/<port>/<our pid>/<random>` instead. The
    /// descriptor is close-on-exec: the command gets the address, not the
    /// socket.
    ///
    /// # Security
    /// Another user cannot send to the socket file; see the module docs.
    ///
    /// # Errors
    /// The OS error of `socket`/`bind`/`chmod`; `InvalidInput` for a path
    /// too long on Unix other than Linux; `Unsupported` on Windows.
    pub fn bind(lock_dir: &Path, port: u16) -> io::Result<NotifySocket> {
        let (socket, env_value) = sys::Socket::bind(lock_dir, port)?;
        Ok(NotifySocket { socket, env_value })
    }

    /// The value for the command's `NOTIFY_SOCKET`: the socket file's path
    /// (`@…` for the abstract fallback, as systemd and its clients write
    /// it).
    pub fn env_value(&self) -> &OsString {
        &self.env_value
    }

    /// Starts the receiver thread: each accepted message of the tree of
    /// `root` (see the module docs) goes to `on_message`, in order, from that
    /// thread. `STATUS=` and `STOPPING=1` are also logged (info); rejected
    /// and garbage datagrams are logged at debug. Runs until the returned
    /// handle is dropped.
    ///
    /// # Errors
    /// The OS error if the thread cannot be started.
    pub fn listen(
        self,
        root: u32,
        mut on_message: impl FnMut(NotifyMessage) + Send + 'static,
    ) -> io::Result<NotifyReceiver> {
        let socket = Arc::new(self.socket);
        let stop = Arc::new(AtomicBool::new(false));
        let (alive, ended) = mpsc::channel::<()>();
        let thread = {
            let socket = Arc::clone(&socket);
            let stop = Arc::clone(&stop);
            std::thread::Builder::new()
                .name("llmlb-notify".to_owned())
                .spawn(move || {
                    // Dropped when the thread ends, however it ends: what
                    // the receiver's drop waits for.
                    let _alive = alive;
                    receive(&socket, root, &stop, &mut on_message);
                })?
        };
        Ok(NotifyReceiver {
            socket,
            stop,
            ended,
            thread: Some(thread),
        })
    }
}

/// The running receiver of [`NotifySocket::listen`]. Dropping it stops the
/// thread (its socket is shut down, which wakes it) and waits for it, at
/// most [`STOP_WAIT`]: no message is reported after the drop, unless the
/// thread was inside `on_message` for all that time, which it is then left
/// to finish (with a warning). The socket file is removed once the thread
/// has let go of the socket.
#[derive(Debug)]
pub struct NotifyReceiver {
    socket: Arc<sys::Socket>,
    stop: Arc<AtomicBool>,
    ended: mpsc::Receiver<()>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for NotifyReceiver {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        self.socket.wake();
        let Some(thread) = self.thread.take() else {
            return;
        };
        match self.ended.recv_timeout(STOP_WAIT) {
            // The sender side went away: the thread has ended, or is
            // about to (join is then immediate).
            Err(mpsc::RecvTimeoutError::Disconnected) | Ok(()) => {
                let _ = thread.join();
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                tracing::warn!(
                    "the notify receiver did not stop within {STOP_WAIT:?}; leaving it to finish on its own"
                );
            }
        }
    }
}

/// The receiver thread's loop.
fn receive(
    socket: &sys::Socket,
    root: u32,
    stop: &AtomicBool,
    on_message: &mut dyn FnMut(NotifyMessage),
) {
    let mut buf = vec![0u8; MAX_DATAGRAM];
    let me = std::process::id();
    while !stop.load(Ordering::SeqCst) {
        let datagram = match socket.recv(&mut buf) {
            Ok(d) => d,
            Err(_) if stop.load(Ordering::SeqCst) => return,
            Err(e) => {
                // Nothing recv can fail with here is worth retrying in a
                // loop (EINTR is retried inside): stop listening, loudly.
                tracing::warn!("cannot read the command's notify socket; readiness notifications are no longer received: {e}");
                return;
            }
        };
        let Datagram {
            len,
            truncated,
            sender,
            fds,
        } = datagram;
        if stop.load(Ordering::SeqCst) {
            close_later(fds);
            return;
        }
        if truncated {
            tracing::debug!("ignoring a notify datagram larger than {MAX_DATAGRAM} bytes");
        } else if let Err(why) = sys::check_sender(sender.as_ref(), root, me) {
            tracing::debug!("ignoring a notify datagram: {why}");
        } else {
            for message in parse_datagram(&buf[..len]) {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                match &message {
                    NotifyMessage::Status(text) => tracing::info!("command status: {text}"),
                    NotifyMessage::Stopping => tracing::info!("the command says it is stopping"),
                    NotifyMessage::Ready => {}
                }
                on_message(message);
            }
        }
        // The datagram's passed descriptors (a BARRIER=1 pipe) are closed
        // after everything sent before them was handled, and never here:
        // their last close may block (see the module docs).
        close_later(fds);
    }
}

#[cfg(unix)]
use closer::close_later;

/// No descriptors are ever received on Windows.
#[cfg(windows)]
fn close_later(fds: Vec<Fd>) {
    debug_assert!(fds.is_empty());
}

/// Who sent a datagram, from its credentials.
#[derive(Debug, Clone, Copy)]
#[cfg_attr(not(target_os = "linux"), allow(dead_code))] // credentials: Linux only
pub(crate) struct Sender {
    pub(crate) pid: u32,
    pub(crate) uid: u32,
}

#[cfg(unix)]
pub(crate) type Fd = std::os::fd::OwnedFd;
#[cfg(windows)]
pub(crate) type Fd = std::os::windows::io::OwnedHandle;

/// One datagram read into the caller's buffer.
#[derive(Debug)]
pub(crate) struct Datagram {
    /// Bytes in the buffer.
    pub(crate) len: usize,
    /// It did not fit the buffer (the tail was cut): to be ignored.
    pub(crate) truncated: bool,
    /// Its credentials, where the platform attaches them.
    pub(crate) sender: Option<Sender>,
    /// Descriptors it carried, for [`closer`] (never closed where they
    /// are received).
    pub(crate) fds: Vec<Fd>,
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_os = "linux")]
    use std::io::Write;

    #[test]
    fn known_lines_are_parsed_in_order_and_the_rest_skipped() {
        let got =
            parse_datagram(b"MAINPID=12\nSTATUS=loading model\nREADY=1\nWATCHDOG=1\nSTOPPING=1\n");
        assert_eq!(
            got,
            vec![
                NotifyMessage::Status("loading model".into()),
                NotifyMessage::Ready,
                NotifyMessage::Stopping
            ]
        );
    }

    #[test]
    fn garbage_never_panics_and_status_stays_one_printable_line() {
        assert!(parse_datagram(b"").is_empty());
        assert!(parse_datagram(b"\xff\xfe\0=\n===\nREADY=0\nREADY\n").is_empty());
        assert_eq!(
            parse_datagram(b"STATUS=a\x1b[31mb\r"),
            vec![NotifyMessage::Status("a\\u{1b}[31mb\\r".into())]
        );
        assert_eq!(
            parse_datagram(b"STATUS=\xffok"),
            vec![NotifyMessage::Status("\u{fffd}ok".into())]
        );
    }

    /// Stopping the receiver never waits longer than [`STOP_WAIT`] for its
    /// thread, even when the thread is stuck (here: in a callback that
    /// never returns), and no message is reported after the drop.
    #[cfg(target_os = "linux")]
    #[test]
    fn dropping_the_receiver_waits_a_bounded_time() {
        use std::sync::mpsc;
        use std::time::Duration;
        if std::process::Command::new("systemd-notify")
            .arg("--version")
            .output()
            .is_err()
        {
            let _ = writeln!(
                std::io::stderr(),
                "SKIPPED dropping_the_receiver_waits_a_bounded_time: systemd-notify is not installed"
            );
            assert!(
                std::env::var_os("CI").is_none(),
                "systemd-notify is required under CI (apt-get install systemd)"
            );
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let socket = NotifySocket::bind(dir.path(), 1).unwrap();
        let path = socket.env_value().clone();
        let (entered, callback_entered) = mpsc::channel();
        let (_never, blocked) = mpsc::channel::<()>();
        let blocked = std::sync::Mutex::new(blocked);
        let receiver = socket
            .listen(std::process::id(), move |message| {
                let _ = entered.send(message);
                // Stuck for good (the sender is kept by the test).
                let _ = blocked.lock().unwrap().recv();
            })
            .unwrap();
        // Our grandchild, in the tree of this process (systemd-notify sends
        // as its parent, which must not be this process itself).
        let mut child = std::process::Command::new("sh")
            .args(["-c", "systemd-notify --ready; true"])
            .env(NOTIFY_SOCKET_ENV, &path)
            .spawn()
            .unwrap();
        let first = callback_entered.recv_timeout(Duration::from_secs(15));
        assert_eq!(first, Ok(NotifyMessage::Ready));
        let (dropped, drop_done) = mpsc::channel();
        std::thread::spawn(move || {
            drop(receiver);
            let _ = dropped.send(());
        });
        assert!(
            drop_done.recv_timeout(Duration::from_secs(15)).is_ok(),
            "dropping the receiver waited for its stuck thread"
        );
        assert!(callback_entered.try_recv().is_err());
        let _ = child.kill();
        let _ = child.wait();
    }
}
