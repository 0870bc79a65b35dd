//! The sd_notify receiver of exec mode's `--ready notify`: a datagram socket
//! whose address goes to the command in `NOTIFY_SOCKET`, and a thread that
//! reads it and reports what the command's tree says (`READY=1`, `STATUS=…`,
//! `STOPPING=1`).
//!
//! # Who may speak
//! Only the command's tree. On Linux the socket is abstract (no file, nothing
//! to clean up) and has `SO_PASSCRED`, so the kernel attaches the sender's
//! credentials to every datagram; a message counts only if its uid is ours
//! and its pid is the command or a descendant (the `ppid` chain in `/proc`
//! reaches the command, or this process: orphans of the tree that this
//! process adopted as their subreaper). Anything else is dropped with a
//! debug line. A sender that has exited *and been reaped* by the time its
//! datagram is read cannot be placed in the tree and is dropped too: send
//! from the server process itself, or with a client that waits for the
//! datagram to be read (`systemd-notify` without `--no-block`). Elsewhere on Unix (macOS has no credentials on datagrams) the
//! socket is a file, mode 0600, in the lock dir, which is 0700 and ours: only
//! our own user can reach it, and the tree check is not done. Windows has no
//! sd_notify: [`NotifySocket::bind`] fails with `Unsupported`.
//!
//! # Garbage
//! A datagram larger than [`MAX_DATAGRAM`] (systemd's own limit), one that is
//! not text, or lines it does not know are ignored, never a panic. File
//! descriptors passed along (`systemd-notify`'s `BARRIER=1` pipe) are closed
//! once the datagram is handled, which is what releases a waiting
//! `systemd-notify`: it stays alive, so its ancestry can be checked, until
//! its `READY=1` before the barrier has been read.

use std::ffi::OsString;
use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use crate::lock::printable;

#[cfg(target_os = "linux")]
mod linux;
#[cfg(target_os = "linux")]
use linux as sys;
#[cfg(all(unix, not(target_os = "linux")))]
mod unix;
#[cfg(all(unix, not(target_os = "linux")))]
use unix as sys;
#[cfg(windows)]
mod windows;
#[cfg(windows)]
use windows as sys;

/// The environment variable that names the socket, as systemd sets it.
pub const NOTIFY_SOCKET_ENV: &str = "NOTIFY_SOCKET";

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
    /// Binds a fresh socket for the command serving `port`: on Linux the
    /// abstract `@llmlb/<port>/<our pid>/<random>`, elsewhere on Unix
    /// `notify_<port>_<pid>_<random>.sock` in `lock_dir` (mode 0600, removed
    /// when the receiver ends). The descriptor is close-on-exec: the command
    /// gets the address, not the socket.
    ///
    /// # Errors
    /// The OS error of `socket`/`bind`; `Unsupported` on Windows.
    pub fn bind(lock_dir: &Path, port: u16) -> io::Result<NotifySocket> {
        let (socket, env_value) = sys::Socket::bind(lock_dir, port)?;
        Ok(NotifySocket { socket, env_value })
    }

    /// The value for the command's `NOTIFY_SOCKET` (`@…` for an abstract
    /// socket, as systemd and its clients write it).
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
        let thread = {
            let socket = Arc::clone(&socket);
            let stop = Arc::clone(&stop);
            std::thread::Builder::new()
                .name("llmlb-notify".to_owned())
                .spawn(move || receive(&socket, root, &stop, &mut on_message))?
        };
        Ok(NotifyReceiver {
            socket,
            stop,
            thread: Some(thread),
        })
    }
}

/// The running receiver of [`NotifySocket::listen`]. Dropping it stops the
/// thread (it is woken by a datagram of our own) and waits for it, so no
/// message is reported after the drop; on Unix other than Linux the socket
/// file is removed.
#[derive(Debug)]
pub struct NotifyReceiver {
    socket: Arc<sys::Socket>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for NotifyReceiver {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        self.socket.wake();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
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
            Err(e) => {
                // Nothing recv can fail with here is worth retrying in a
                // loop (EINTR is retried inside): stop listening, loudly.
                tracing::warn!("cannot read the command's notify socket; readiness notifications are no longer received: {e}");
                return;
            }
        };
        if stop.load(Ordering::SeqCst) {
            return;
        }
        if datagram.truncated {
            tracing::debug!("ignoring a notify datagram larger than {MAX_DATAGRAM} bytes");
            continue;
        }
        if let Err(why) = sys::check_sender(datagram.sender.as_ref(), root, me) {
            tracing::debug!("ignoring a notify datagram: {why}");
            continue;
        }
        for message in parse_datagram(&buf[..datagram.len]) {
            match &message {
                NotifyMessage::Status(text) => tracing::info!("command status: {text}"),
                NotifyMessage::Stopping => tracing::info!("the command says it is stopping"),
                NotifyMessage::Ready => {}
            }
            on_message(message);
        }
        // The datagram's passed descriptors (a BARRIER=1 pipe) close here,
        // after everything sent before them was handled.
        drop(datagram);
    }
}

/// Who sent a datagram, from its credentials.
#[derive(Debug, Clone, Copy)]
#[cfg_attr(not(target_os = "linux"), allow(dead_code))] // credentials: Linux only
pub(crate) struct Sender {
    pub(crate) pid: u32,
    pub(crate) uid: u32,
}

/// One datagram read into the caller's buffer.
#[derive(Debug)]
pub(crate) struct Datagram {
    /// Bytes in the buffer.
    pub(crate) len: usize,
    /// It did not fit the buffer (the tail was cut): to be ignored.
    pub(crate) truncated: bool,
    /// Its credentials, where the platform attaches them.
    pub(crate) sender: Option<Sender>,
    /// Descriptors it carried, closed on drop.
    #[allow(dead_code)] // held only to be closed after the message is handled
    pub(crate) fds: Vec<std::fs::File>,
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
