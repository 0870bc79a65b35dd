//! Handing a listening socket to exec mode's command by the `LISTEN_FDS`
//! protocol (see [`super::activation`]), which gunicorn (itself, with no `--bind`),
//! uvicorn (`--fd 3`), hypercorn and most Go and Rust servers speak: the
//! command finds the socket as descriptor 3, with `LISTEN_FDS=1`,
//! `LISTEN_PID` = its own PID and `LISTEN_FDNAMES` = the socket's name.
//!
//! The launcher keeps its own copy of the socket while the command runs: the
//! port stays bound (connections queue) if the command restarts, and the
//! socket can be handed to a successor. Only on Unix; Windows has no such
//! protocol and `pass_listener` refuses.

use std::io;
use std::net::TcpListener;
use std::process::Command;

#[cfg(unix)]
#[path = "socket_pass/unix.rs"]
mod sys;
#[cfg(not(unix))]
#[path = "socket_pass/other.rs"]
mod sys;

/// The `LISTEN_FDNAMES` a passed socket gets when the supervisor gave it no
/// name (or llmlb bound it itself).
pub const DEFAULT_NAME: &str = "llmlb";

/// A listening socket to pass to the command, with its name.
#[derive(Debug)]
pub(crate) struct PassSocket {
    listener: TcpListener,
    name: String,
}

impl PassSocket {
    /// `listener` to be passed under `name` (`LISTEN_FDNAMES`).
    pub(crate) fn new(listener: TcpListener, name: impl Into<String>) -> PassSocket {
        PassSocket {
            listener,
            name: name.into(),
        }
    }
}

impl PassSocket {
    /// The listening socket.
    pub(crate) fn listener(&self) -> &TcpListener {
        &self.listener
    }

    /// Its `LISTEN_FDNAMES` name.
    pub(crate) fn name(&self) -> &str {
        &self.name
    }
}

/// Prepares `cmd` so that its child gets `socket` as descriptor 3 with
/// `LISTEN_FDS=1`, `LISTEN_PID=<the child's own PID>` and
/// `LISTEN_FDNAMES=<name>`, and the other `LISTEN_*` variables of this
/// process's environment removed.
///
/// The child's PID exists only after the fork, so the child's environment is
/// built here, in full, with a fixed-width slot for the PID's digits; the
/// last `pre_exec` step fills the slot with `getpid()` and calls `execve`
/// itself (searching `PATH` as `execvp` does, over candidates also prepared
/// here): no allocation and no lock between fork and exec. Hence:
/// - call it **last**, after every other change to `cmd` (environment,
///   `pre_exec` steps, which run in order): later environment changes are
///   not seen, later `pre_exec` steps never run; `cmd` must not have been
///   `env_clear`ed (its environment is this process's plus `cmd`'s changes);
/// - keep `socket` open until the spawn has returned;
/// - a failed `execve` is reported by the spawn as usual (`NotFound` when
///   no candidate exists); a script without `#!` is refused (`ENOEXEC`)
///   rather than run by `/bin/sh`.
///
/// Other descriptors passed to the child must sit above 3 (the lock's does:
/// see [`super::exec::configure_exec_child`]).
///
/// # Errors
/// `InvalidInput` if the program, an argument or an environment variable
/// contains a NUL byte; `Unsupported` on Windows.
pub(crate) fn pass_listener(cmd: &mut Command, socket: &PassSocket) -> io::Result<()> {
    sys::pass_listener(cmd, &socket.listener, &socket.name)
}
