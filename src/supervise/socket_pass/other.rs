//! Platforms without the `LISTEN_FDS` protocol (Windows): nothing can be
//! passed.

use std::io;
use std::net::TcpListener;
use std::process::Command;

/// Always `Unsupported`.
pub(super) fn pass_listener(
    _cmd: &mut Command,
    _listener: &TcpListener,
    _name: &str,
) -> io::Result<()> {
    Err(io::Error::new(
        io::ErrorKind::Unsupported,
        "passing a listening socket (LISTEN_FDS) is not supported on this platform",
    ))
}
