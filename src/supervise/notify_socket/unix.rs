//! Unix other than Linux (macOS, the BSDs): a socket file in the lock dir.
//! Datagrams carry no credentials here, so there is no tree check: the lock
//! dir is 0700 and ours, and the file 0600, so only our own user's processes
//! can reach it.

use std::ffi::OsString;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};

use super::{Datagram, Sender};

/// The receiving socket and its file, removed on drop.
#[derive(Debug)]
pub(crate) struct Socket {
    socket: UnixDatagram,
    path: PathBuf,
}

impl Socket {
    /// Binds `<lock_dir>/notify_<port>_<pid>_<random>.sock`, mode 0600.
    pub(crate) fn bind(lock_dir: &Path, port: u16) -> io::Result<(Socket, OsString)> {
        let path = lock_dir.join(format!(
            "notify_{port}_{}_{:08x}.sock",
            std::process::id(),
            super::super::ready::random_u64() as u32
        ));
        let socket = UnixDatagram::bind(&path)?;
        let socket = Socket { socket, path };
        std::fs::set_permissions(&socket.path, std::fs::Permissions::from_mode(0o600))?;
        let env = socket.path.clone().into_os_string();
        Ok((socket, env))
    }

    /// One datagram. Descriptors passed with it are discarded (closed) by
    /// the kernel, as no control buffer is given.
    pub(crate) fn recv(&self, buf: &mut [u8]) -> io::Result<Datagram> {
        // One byte more than the caller's limit: a datagram that fills it
        // was too long (recv cuts silently here).
        let mut big = vec![0u8; buf.len() + 1];
        let n = loop {
            match self.socket.recv(&mut big) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                other => break other?,
            }
        };
        let len = n.min(buf.len());
        buf[..len].copy_from_slice(&big[..len]);
        Ok(Datagram {
            len,
            truncated: n > buf.len(),
            sender: None,
            fds: Vec::new(),
        })
    }

    /// Wakes a blocked [`recv`](Socket::recv) with an empty datagram.
    pub(crate) fn wake(&self) {
        if let Ok(waker) = UnixDatagram::unbound() {
            let _ = waker.set_nonblocking(true);
            let _ = waker.send_to(&[], &self.path);
        }
    }
}

impl Drop for Socket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// No credentials to check here (see the module docs): every datagram that
/// reached the 0600 socket in our 0700 dir is our user's.
pub(crate) fn check_sender(_sender: Option<&Sender>, _root: u32, _me: u32) -> Result<(), String> {
    Ok(())
}
