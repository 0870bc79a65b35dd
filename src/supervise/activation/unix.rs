//! The `LISTEN_FDS` protocol on Unix: checking and taking descriptor 3.

use std::io;
use std::net::TcpListener;
use std::os::fd::{BorrowedFd, FromRawFd, RawFd};

use super::ActivationError;

/// Whether the platform has the protocol at all.
pub(super) const SUPPORTED: bool = true;

/// An `int` socket option of `fd`.
fn int_option(fd: RawFd, level: libc::c_int, name: libc::c_int) -> io::Result<libc::c_int> {
    let mut value: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `value`, which lives
    // for the call.
    let rc = unsafe { libc::getsockopt(fd, level, name, (&raw mut value).cast(), &mut len) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(value)
}

/// Takes `fd` as this process's listener if it is a listening TCP socket:
/// checked with `fstat`, `SO_TYPE`, `getsockname` and `SO_ACCEPTCONN` before
/// anything owns it, then made close-on-exec.
pub(super) fn take_listener(fd: RawFd) -> Result<(TcpListener, u16), ActivationError> {
    check_listener(fd)?;
    // SAFETY: fcntl on a descriptor checked open above.
    if unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) } != 0 {
        return Err(ActivationError::Io(io::Error::last_os_error()));
    }
    // SAFETY: `fd` is an open listening TCP socket (checked above) that the
    // protocol hands to this process; nothing else in it owns descriptor 3.
    let listener = unsafe { TcpListener::from_raw_fd(fd) };
    let port = listener.local_addr().map_err(ActivationError::Io)?.port();
    Ok((listener, port))
}

/// A close-on-exec duplicate of `fd`, which stays the caller's, if it is a
/// listening TCP socket (checked as [`take_listener`] checks).
pub(super) fn copy_listener(fd: RawFd) -> Result<(TcpListener, u16), ActivationError> {
    check_listener(fd)?;
    // SAFETY: `fd` was checked open just above and is only borrowed for the
    // duplication (F_DUPFD_CLOEXEC): the copy is ours, the original the
    // caller's.
    let copy = unsafe { BorrowedFd::borrow_raw(fd) }
        .try_clone_to_owned()
        .map_err(ActivationError::Io)?;
    let listener = TcpListener::from(copy);
    let port = listener.local_addr().map_err(ActivationError::Io)?.port();
    Ok((listener, port))
}

/// Whether `fd` is an open, listening TCP (IPv4 or IPv6) socket.
fn check_listener(fd: RawFd) -> Result<(), ActivationError> {
    // SAFETY: stat is plain data; zeroed is a valid value.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: fstat writes into `st`, which lives for the call.
    if unsafe { libc::fstat(fd, &mut st) } != 0 {
        let e = io::Error::last_os_error();
        return Err(if e.raw_os_error() == Some(libc::EBADF) {
            ActivationError::NotTcpListener("not open")
        } else {
            ActivationError::Io(e)
        });
    }
    if st.st_mode & libc::S_IFMT != libc::S_IFSOCK {
        return Err(ActivationError::NotTcpListener("not a socket"));
    }
    let kind = int_option(fd, libc::SOL_SOCKET, libc::SO_TYPE).map_err(ActivationError::Io)?;
    if kind != libc::SOCK_STREAM {
        return Err(ActivationError::NotTcpListener(
            "not a stream socket (datagram or seqpacket)",
        ));
    }
    // SAFETY: sockaddr_storage is plain data; zeroed is a valid value.
    let mut addr: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: getsockname writes at most `len` bytes into `addr`.
    if unsafe { libc::getsockname(fd, (&raw mut addr).cast(), &mut len) } != 0 {
        return Err(ActivationError::Io(io::Error::last_os_error()));
    }
    match libc::c_int::from(addr.ss_family) {
        libc::AF_INET | libc::AF_INET6 => {}
        libc::AF_UNIX => {
            return Err(ActivationError::NotTcpListener(
                "a Unix socket, not a TCP one",
            ))
        }
        _ => return Err(ActivationError::NotTcpListener("not an IP socket")),
    }
    let listening =
        int_option(fd, libc::SOL_SOCKET, libc::SO_ACCEPTCONN).map_err(ActivationError::Io)?;
    if listening == 0 {
        return Err(ActivationError::NotTcpListener(
            "a TCP socket that is not listening (Accept=yes passes connections, not the listener)",
        ));
    }
    Ok(())
}
