//! Socket activation: serving on a listening socket a supervisor bound and
//! passed to us (a systemd `.socket` unit, `systemd-socket-activate`), by the
//! `LISTEN_FDS` protocol of `sd_listen_fds(3)`: the sockets are descriptors
//! 3, 4, …; `LISTEN_FDS` says how many, `LISTEN_PID` which process they are
//! for, `LISTEN_FDNAMES` their names (colon-separated).
//!
//! The supervisor owns the port's *socket*; the lock still proves which
//! server owns the *port*, so a server that receives a socket takes the
//! port's lock first, as one that binds does.
//!
//! Windows has no such protocol: there [`activated_listener`] always finds
//! nothing.

use std::io;
use std::net::TcpListener;

#[cfg(unix)]
#[path = "activation/unix.rs"]
mod sys;
#[cfg(not(unix))]
#[path = "activation/other.rs"]
mod sys;

/// The first descriptor of the protocol (`SD_LISTEN_FDS_START`).
pub const LISTEN_FDS_START: i32 = 3;
/// How many descriptors were passed.
pub const LISTEN_FDS_ENV: &str = "LISTEN_FDS";
/// Which process they were passed to.
pub const LISTEN_PID_ENV: &str = "LISTEN_PID";
/// Their names, colon-separated (systemd's `FileDescriptorName=`).
pub const LISTEN_FDNAMES_ENV: &str = "LISTEN_FDNAMES";

/// A listening TCP socket received by socket activation: open, close-on-exec
/// (so no child inherits it unless it is passed on deliberately), with the
/// port it listens on.
#[derive(Debug)]
pub struct Activated {
    listener: TcpListener,
    port: u16,
    name: Option<String>,
}

impl Activated {
    /// The port the socket is bound to: the port to lock.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Its name from `LISTEN_FDNAMES`, if the supervisor gave one.
    pub fn name(&self) -> Option<&str> {
        self.name.as_deref()
    }

    /// The listening socket (blocking, as received).
    pub fn listener(&self) -> &TcpListener {
        &self.listener
    }

    /// The listening socket, to serve on.
    pub fn into_listener(self) -> TcpListener {
        self.listener
    }
}

/// Why the activation variables could not be honoured: each message names
/// what was passed and what a `.socket` unit should say instead.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ActivationError {
    /// `LISTEN_PID` is not a process id.
    #[error("{LISTEN_PID_ENV}={0:?} (socket activation) is not a process id")]
    BadPid(String),
    /// `LISTEN_FDS` is not exactly 1.
    #[error(
        "socket activation passed {LISTEN_FDS_ENV}={0:?} descriptors; llmlb serves exactly one listening TCP socket (one ListenStream= in the .socket unit)"
    )]
    Count(String),
    /// Descriptor 3 is not a listening TCP socket.
    #[error(
        "socket activation descriptor {LISTEN_FDS_START} is {0}; llmlb needs a listening TCP socket (ListenStream= with a port or IP address and port, Accept=no)"
    )]
    NotTcpListener(&'static str),
    /// Descriptor 3 could not be inspected or prepared.
    #[error("cannot use socket activation descriptor {LISTEN_FDS_START}: {0}")]
    Io(#[source] io::Error),
}

/// The listening socket passed to this process by socket activation, if any.
///
/// As `sd_listen_fds(1)`: nothing (`Ok(None)`) unless both `LISTEN_PID` and
/// `LISTEN_FDS` are set and `LISTEN_PID` is this process (variables meant for
/// another process are ignored). The three variables are removed from this
/// process's environment in every case, so no child inherits them by
/// accident; the socket is made close-on-exec for the same reason.
///
/// Call it once, early, before other threads start: it changes the
/// environment, which is not thread-safe on Unix. Always `Ok(None)` on
/// Windows.
///
/// # Errors
/// A malformed `LISTEN_PID`, a count other than 1, or a descriptor 3 that is
/// not a listening TCP socket (closed, a file, a datagram or Unix socket, a
/// connection from `Accept=yes`).
pub fn activated_listener() -> Result<Option<Activated>, ActivationError> {
    if !sys::SUPPORTED {
        return Ok(None);
    }
    let pid = std::env::var_os(LISTEN_PID_ENV);
    let fds = std::env::var_os(LISTEN_FDS_ENV);
    let names = std::env::var_os(LISTEN_FDNAMES_ENV);
    for var in [LISTEN_PID_ENV, LISTEN_FDS_ENV, LISTEN_FDNAMES_ENV] {
        std::env::remove_var(var);
    }
    let (Some(pid), Some(fds)) = (pid, fds) else {
        return Ok(None);
    };
    let pid = pid.to_string_lossy();
    match pid.trim().parse::<u32>() {
        Ok(pid) if pid > 0 => {
            if pid != std::process::id() {
                return Ok(None);
            }
        }
        _ => return Err(ActivationError::BadPid(pid.into_owned())),
    }
    let fds = fds.to_string_lossy();
    if fds.trim() != "1" {
        return Err(ActivationError::Count(fds.into_owned()));
    }
    let (listener, port) = sys::take_listener(LISTEN_FDS_START)?;
    // One descriptor: its name is the first (only) field.
    let name = names
        .map(|n| {
            n.to_string_lossy()
                .split(':')
                .next()
                .unwrap_or("")
                .to_owned()
        })
        .filter(|n| !n.is_empty());
    Ok(Some(Activated {
        listener,
        port,
        name,
    }))
}

/// A copy of `fd`, a listening TCP socket (IPv4 or IPv6) that stays the
/// caller's, with the port it listens on: checked as an activated socket is,
/// then duplicated close-on-exec. For a program that serves on a socket of
/// its own and offers it to a successor (the C ABI's
/// `llmlb_handover_offer`): what is handed on is this copy, which shares the
/// caller's open file description (and so its queue of connections).
///
/// # Errors
/// `NotTcpListener` (why, a phrase) if `fd` is closed or not a listening TCP
/// socket, and always on Windows (its sockets are not `int` descriptors);
/// `Io` if it cannot be inspected or duplicated. The messages speak of socket
/// activation: a caller with another source names it in its own.
pub fn copy_listener(fd: i32) -> Result<(TcpListener, u16), ActivationError> {
    sys::copy_listener(fd)
}
