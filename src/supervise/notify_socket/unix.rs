//! Unix (Linux, macOS, the BSDs): a datagram socket file in the lock dir,
//! read with `recvmsg` so that passed descriptors are taken out of the
//! kernel here and closed by [`super::closer`], never on the receiver's
//! thread. Linux adds `SO_PASSCRED` and the tree check ([`super::linux`]),
//! and an abstract name where the lock dir's path is too long for
//! `sun_path`. Elsewhere datagrams carry no credentials: every datagram that
//! reached the 0600 socket in our 0700 dir is our own user's.

use std::ffi::OsString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};

#[cfg(not(target_os = "linux"))]
use super::Sender;
use super::{closer, Datagram};

#[cfg(target_os = "linux")]
pub(crate) use super::linux::check_sender;

/// The most descriptors one `SCM_RIGHTS` message carries (Linux's
/// `SCM_MAX_FD`); room for them all, so none is left for the kernel to
/// release on this thread (`MSG_CTRUNC` drops happen in the receiving task).
const MAX_FDS: usize = 253;

/// Where the socket is bound.
#[derive(Debug)]
enum Address {
    /// A socket file, removed when the socket is dropped.
    File(PathBuf),
    /// Linux's abstract namespace (the name without the leading NUL): the
    /// fallback when the lock dir's path does not fit `sun_path`.
    #[cfg(target_os = "linux")]
    Abstract(Vec<u8>),
}

/// The receiving socket. Dropping it removes its file, then hands the
/// descriptor to [`closer`]: datagrams still queued may carry descriptors,
/// and they are released in whichever thread closes the socket.
#[derive(Debug)]
pub(crate) struct Socket {
    fd: Option<OwnedFd>,
    address: Address,
}

impl Socket {
    /// Binds `<lock_dir>/notify_<port>_<pid>_<random>.sock`, mode 0600 (on
    /// Linux with `SO_PASSCRED` set first, so no datagram lacks
    /// credentials). On Linux, a lock dir whose path leaves no room in
    /// `sun_path` gets the abstract `@llmlb/<port>/<pid>/<random>` instead,
    /// with a debug line; elsewhere that is an `InvalidInput` error naming
    /// the path.
    pub(crate) fn bind(lock_dir: &Path, port: u16) -> io::Result<(Socket, OsString)> {
        let fd = OwnedFd::from(UnixDatagram::unbound()?); // close-on-exec
        #[cfg(target_os = "linux")]
        super::linux::pass_credentials(&fd)?;
        let pid = std::process::id();
        tidy_stale(lock_dir, port);
        let random = random_u64();
        let path = lock_dir.join(format!("notify_{port}_{pid}_{:08x}.sock", random as u32));
        let fits = lock_dir.is_absolute() && path.as_os_str().len() < sun_path_len();
        if fits {
            // The lock dir is ours and no one else's to write, but others
            // may be able to enter it (a 0755 `LLMLB_LOCK_DIR`): the file
            // must refuse them from its first instant. Linux creates a
            // socket file with the socket's own mode (less the umask), so
            // that is set before the bind; elsewhere the chmod below is
            // what does it (a datagram that slipped in between is dropped
            // by its credentials, its descriptors closed off the receiver).
            #[cfg(target_os = "linux")]
            // SAFETY: an open socket and a plain mode.
            unsafe {
                libc::fchmod(fd.as_raw_fd(), 0o600);
            }
            bind_name(&fd, path.as_os_str().as_bytes(), false)?;
            // Made first, so an error below removes the file.
            let socket = Socket {
                fd: Some(fd),
                address: Address::File(path.clone()),
            };
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
            return Ok((socket, path.into_os_string()));
        }
        #[cfg(target_os = "linux")]
        {
            tracing::debug!(
                "the notify socket's path {} does not fit a Unix socket address; using an abstract socket (the tree check still applies)",
                crate::lock::printable(path.as_os_str())
            );
            let name = format!("llmlb/{port}/{pid}/{random:016x}").into_bytes();
            bind_name(&fd, &name, true)?;
            let mut env = OsString::from("@");
            env.push(String::from_utf8_lossy(&name).as_ref());
            Ok((
                Socket {
                    fd: Some(fd),
                    address: Address::Abstract(name),
                },
                env,
            ))
        }
        #[cfg(not(target_os = "linux"))]
        Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "the notify socket {} does not fit a Unix socket address: set LLMLB_LOCK_DIR to a shorter path",
                crate::lock::printable(path.as_os_str())
            ),
        ))
    }

    fn fd(&self) -> &OwnedFd {
        self.fd.as_ref().expect("the descriptor lives until drop")
    }

    /// One datagram, with its credentials (Linux) and any descriptors it
    /// carried, which the caller must pass to [`closer::close_later`].
    pub(crate) fn recv(&self, buf: &mut [u8]) -> io::Result<Datagram> {
        // u64 elements: cmsg headers need their alignment.
        let space =
            cmsg_space(CREDENTIALS_LEN) + cmsg_space(MAX_FDS * std::mem::size_of::<libc::c_int>());
        let mut control = vec![0u64; space.div_ceil(8)];
        loop {
            let mut iov = libc::iovec {
                iov_base: buf.as_mut_ptr().cast(),
                iov_len: buf.len(),
            };
            // SAFETY: an all-zero msghdr is valid; pointers set below.
            let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
            msg.msg_iov = &mut iov;
            msg.msg_iovlen = 1;
            msg.msg_control = control.as_mut_ptr().cast();
            msg.msg_controllen = (control.len() * 8) as _;
            // SAFETY: every buffer msg points to is live and of the size
            // given; the kernel writes within them.
            let n = unsafe { libc::recvmsg(self.fd().as_raw_fd(), &mut msg, RECV_FLAGS) };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            let n = n as usize;
            let mut datagram = Datagram {
                len: n.min(buf.len()),
                // MSG_TRUNC in the flags: the datagram was cut (on Linux,
                // with it in the call, n is also the real length).
                truncated: n > buf.len() || msg.msg_flags & libc::MSG_TRUNC != 0,
                sender: None,
                fds: Vec::new(),
            };
            // SAFETY: msg was filled by recvmsg; the CMSG macros walk the
            // control buffer within msg_controllen.
            unsafe {
                let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
                while !cmsg.is_null() {
                    let data = libc::CMSG_DATA(cmsg);
                    let data_len = (*cmsg).cmsg_len as usize - cmsg_len(0);
                    if (*cmsg).cmsg_level == libc::SOL_SOCKET
                        && (*cmsg).cmsg_type == libc::SCM_RIGHTS
                    {
                        let count = data_len / std::mem::size_of::<libc::c_int>();
                        for i in 0..count {
                            let fd: libc::c_int =
                                std::ptr::read_unaligned(data.cast::<libc::c_int>().add(i));
                            datagram.fds.push(OwnedFd::from_raw_fd(fd));
                        }
                    }
                    #[cfg(target_os = "linux")]
                    if let Some(sender) =
                        super::linux::credentials(&*cmsg, data.cast_const(), data_len)
                    {
                        datagram.sender = Some(sender);
                    }
                    cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
                }
            }
            #[cfg(not(target_os = "linux"))]
            for fd in &datagram.fds {
                // No MSG_CMSG_CLOEXEC here: set it now (a fork+exec on
                // another thread in between could leak it to that child,
                // which only delays the close; the command gets no
                // descriptors of ours otherwise).
                // SAFETY: fcntl on a descriptor we own.
                unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFD, libc::FD_CLOEXEC) };
            }
            return Ok(datagram);
        }
    }

    /// Wakes a blocked [`recv`](Socket::recv) for good: `shutdown(SHUT_RD)`
    /// (on Linux later sends fail with `EPIPE`, and `recv` returns an empty
    /// read at once), then an empty datagram of our own for systems where
    /// the shutdown alone does not wake a reader. Never blocks.
    pub(crate) fn wake(&self) {
        // SAFETY: shutdown on a descriptor we own.
        unsafe { libc::shutdown(self.fd().as_raw_fd(), libc::SHUT_RD) };
        let Ok(waker) = UnixDatagram::unbound() else {
            return;
        };
        let _ = waker.set_nonblocking(true);
        match &self.address {
            Address::File(path) => {
                let _ = waker.send_to(&[], path);
            }
            #[cfg(target_os = "linux")]
            Address::Abstract(name) => {
                use std::os::linux::net::SocketAddrExt;
                if let Ok(addr) = std::os::unix::net::SocketAddr::from_abstract_name(name) {
                    let _ = waker.send_to_addr(&[], &addr);
                }
            }
        }
    }
}

impl Drop for Socket {
    fn drop(&mut self) {
        // The name first, so nobody sends to a socket about to close.
        match &self.address {
            Address::File(path) => {
                let _ = std::fs::remove_file(path);
            }
            #[cfg(target_os = "linux")]
            Address::Abstract(_) => {}
        }
        if let Some(fd) = self.fd.take() {
            closer::close_later(vec![fd]);
        }
    }
}

/// No credentials to check here (see the module docs): every datagram that
/// reached the 0600 socket in our 0700 dir is our user's.
#[cfg(not(target_os = "linux"))]
pub(crate) fn check_sender(_sender: Option<&Sender>, _root: u32, _me: u32) -> Result<(), String> {
    Ok(())
}

#[cfg(target_os = "linux")]
const CREDENTIALS_LEN: usize = std::mem::size_of::<libc::ucred>();
#[cfg(not(target_os = "linux"))]
const CREDENTIALS_LEN: usize = 0;

#[cfg(target_os = "linux")]
const RECV_FLAGS: libc::c_int = libc::MSG_CMSG_CLOEXEC | libc::MSG_TRUNC;
#[cfg(not(target_os = "linux"))]
const RECV_FLAGS: libc::c_int = 0;

/// 64 unpredictable bits for a socket's name, without a dependency: std's
/// `RandomState` is seeded from the OS's random source once per process,
/// and each new state is a fresh key.
fn random_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u32(std::process::id());
    hasher.finish()
}

/// `sun_path`'s size: a path must be shorter (room for its NUL).
fn sun_path_len() -> usize {
    // SAFETY: an all-zero sockaddr_un is valid.
    let addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    addr.sun_path.len()
}

/// `bind` to `name`: a path, or (`abstract_name`, Linux) an abstract name.
/// The caller checked that it fits.
/// Removes the notify sockets of `port` in `lock_dir` that nobody receives
/// on any more: files a server killed with SIGKILL (or a crash) left
/// behind, which would otherwise pile up in the lock dir. Only our own
/// sockets named as [`Socket::bind`] names them, and only those a connect
/// proves dead (`ECONNREFUSED`: the file outlived its socket; a bind
/// creates the file already bound, so a live receiver never answers so).
/// Best effort: what cannot be read or removed is left, at debug level.
fn tidy_stale(lock_dir: &Path, port: u16) {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let Ok(entries) = std::fs::read_dir(lock_dir) else {
        return;
    };
    let prefix = format!("notify_{port}_");
    // SAFETY: geteuid cannot fail.
    let me = unsafe { libc::geteuid() };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if !name.starts_with(&prefix) || !name.ends_with(".sock") {
            continue;
        }
        let path = entry.path();
        // Not followed: a symlink or anything but our socket is left alone.
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        if !meta.file_type().is_socket() || meta.uid() != me {
            continue;
        }
        let Ok(probe) = UnixDatagram::unbound() else {
            return;
        };
        match probe.connect(&path) {
            Err(e) if e.raw_os_error() == Some(libc::ECONNREFUSED) => {
                match std::fs::remove_file(&path) {
                    Ok(()) => tracing::debug!(
                        "removed the stale notify socket {}",
                        crate::lock::printable(path.as_os_str())
                    ),
                    Err(e) => tracing::debug!(
                        "cannot remove the stale notify socket {}: {e}",
                        crate::lock::printable(path.as_os_str())
                    ),
                }
            }
            _ => {}
        }
    }
}

fn bind_name(fd: &OwnedFd, name: &[u8], abstract_name: bool) -> io::Result<()> {
    // SAFETY: an all-zero sockaddr_un is valid; filled below.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    // An abstract name starts after a NUL; a path ends with one (zeroed).
    let start = usize::from(abstract_name);
    if start + name.len() >= addr.sun_path.len() {
        return Err(io::Error::from(io::ErrorKind::InvalidInput));
    }
    for (dst, &src) in addr.sun_path[start..].iter_mut().zip(name) {
        *dst = src as libc::c_char;
    }
    let offset = std::mem::size_of_val(&addr) - addr.sun_path.len();
    let len = offset + start + name.len() + usize::from(!abstract_name);
    // SAFETY: `addr` is a valid sockaddr_un of at least `len` bytes.
    let rc = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&addr as *const libc::sockaddr_un).cast(),
            len as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn cmsg_space(len: usize) -> usize {
    // SAFETY: pure arithmetic.
    unsafe { libc::CMSG_SPACE(len as u32) as usize }
}

fn cmsg_len(len: usize) -> usize {
    // SAFETY: pure arithmetic.
    unsafe { libc::CMSG_LEN(len as u32) as usize }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A file left by a receiver that died is removed when the port's next
    /// receiver binds; a live receiver's socket, another port's, and
    /// anything that is not a socket stay.
    #[test]
    fn binding_removes_only_the_port_s_dead_sockets() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let port = 4321;
        let dead = dir.join(format!("notify_{port}_1_deadbeef.sock"));
        drop(UnixDatagram::bind(&dead).unwrap()); // the file outlives its socket
        let live_path = dir.join(format!("notify_{port}_2_cafe0000.sock"));
        let live = UnixDatagram::bind(&live_path).unwrap();
        let other_port = dir.join("notify_4322_1_deadbeef.sock");
        drop(UnixDatagram::bind(&other_port).unwrap());
        let plain = dir.join(format!("notify_{port}_3_00000000.sock"));
        std::fs::write(&plain, b"not a socket").unwrap();

        let (socket, _) = Socket::bind(dir, port).unwrap();

        assert!(!dead.exists(), "the dead receiver's file stayed");
        assert!(live_path.exists() && other_port.exists() && plain.exists());
        live.send_to(b"READY=1", &live_path).unwrap(); // still bound, still ours
        drop(socket);
    }
}
