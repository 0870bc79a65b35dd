//! Windows: no sd_notify. Binding fails with `Unsupported`; the rest is
//! never reached.

use std::ffi::OsString;
use std::io;
use std::path::Path;

use super::{Datagram, Sender};

/// Never made.
#[derive(Debug)]
pub(crate) struct Socket(());

impl Socket {
    /// Always `Unsupported`.
    pub(crate) fn bind(_lock_dir: &Path, _port: u16) -> io::Result<(Socket, OsString)> {
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "the sd_notify protocol (NOTIFY_SOCKET) is not supported on Windows",
        ))
    }

    pub(crate) fn recv(&self, _buf: &mut [u8]) -> io::Result<Datagram> {
        Err(io::ErrorKind::Unsupported.into())
    }

    pub(crate) fn wake(&self) {}
}

/// Never reached.
pub(crate) fn check_sender(_sender: Option<&Sender>, _root: u32, _me: u32) -> Result<(), String> {
    Err("not supported on Windows".to_owned())
}
