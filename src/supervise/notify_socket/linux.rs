//! Linux: an abstract datagram socket with `SO_PASSCRED`, read with
//! `recvmsg` for the sender's `SCM_CREDENTIALS`; the tree check walks the
//! `ppid` chain in `/proc`.

use std::ffi::OsString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::path::Path;

use super::{Datagram, Sender};

/// The most descriptors one `SCM_RIGHTS` message carries (the kernel's
/// `SCM_MAX_FD`); room for them all, so none is lost to `MSG_CTRUNC`.
const MAX_FDS: usize = 253;

/// How many parents the tree check follows before it gives up (a chain
/// longer than this is not a real process tree).
const MAX_DEPTH: usize = 4096;

/// The receiving socket and its abstract name (without the leading NUL).
#[derive(Debug)]
pub(crate) struct Socket {
    fd: OwnedFd,
    name: Vec<u8>,
}

impl Socket {
    /// `socket(AF_UNIX, SOCK_DGRAM|SOCK_CLOEXEC)`, `SO_PASSCRED`, bound to
    /// `@llmlb/<port>/<pid>/<random>`. The random part keeps a name nobody
    /// guessed in advance (an abstract name has no permissions: whoever
    /// binds it first owns it); the credentials check covers the rest.
    pub(crate) fn bind(_lock_dir: &Path, port: u16) -> io::Result<(Socket, OsString)> {
        // SAFETY: plain constants in; a new descriptor or -1 out.
        let raw = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is a new descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let on: libc::c_int = 1;
        // SAFETY: the option value is a live c_int of the size given.
        let rc = unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_PASSCRED,
                (&on as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        let name = format!(
            "llmlb/{port}/{}/{:016x}",
            std::process::id(),
            super::super::ready::random_u64()
        )
        .into_bytes();
        // SAFETY: an all-zero sockaddr_un is valid; filled below.
        let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
        addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
        // sun_path[0] stays NUL: abstract. The name fits (< 108 bytes).
        for (dst, &src) in addr.sun_path[1..].iter_mut().zip(&name) {
            *dst = src as libc::c_char;
        }
        let len = std::mem::size_of::<libc::sa_family_t>() + 1 + name.len();
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
        let mut env = OsString::from("@");
        env.push(String::from_utf8_lossy(&name).as_ref());
        Ok((Socket { fd, name }, env))
    }

    /// One datagram, with its credentials and any descriptors it carried.
    pub(crate) fn recv(&self, buf: &mut [u8]) -> io::Result<Datagram> {
        // u64 elements: cmsg headers need their alignment.
        let space = cmsg_space(std::mem::size_of::<libc::ucred>())
            + cmsg_space(MAX_FDS * std::mem::size_of::<libc::c_int>());
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
            msg.msg_controllen = control.len() * 8;
            // SAFETY: every buffer msg points to is live and of the size
            // given; the kernel writes within them.
            let n = unsafe {
                libc::recvmsg(
                    self.fd.as_raw_fd(),
                    &mut msg,
                    libc::MSG_CMSG_CLOEXEC | libc::MSG_TRUNC,
                )
            };
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
                // MSG_TRUNC in the flags: the datagram was cut; with it in
                // the call, n is the datagram's real length.
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
                    match ((*cmsg).cmsg_level, (*cmsg).cmsg_type) {
                        (libc::SOL_SOCKET, libc::SCM_CREDENTIALS)
                            if data_len >= std::mem::size_of::<libc::ucred>() =>
                        {
                            let cred: libc::ucred = std::ptr::read_unaligned(data.cast());
                            datagram.sender = Some(Sender {
                                pid: cred.pid as u32,
                                uid: cred.uid,
                            });
                        }
                        (libc::SOL_SOCKET, libc::SCM_RIGHTS) => {
                            let count = data_len / std::mem::size_of::<libc::c_int>();
                            for i in 0..count {
                                let fd: libc::c_int =
                                    std::ptr::read_unaligned(data.cast::<libc::c_int>().add(i));
                                // Ours now (received close-on-exec): closed
                                // when the datagram is dropped.
                                datagram.fds.push(std::fs::File::from_raw_fd(fd));
                            }
                        }
                        _ => {}
                    }
                    cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
                }
            }
            return Ok(datagram);
        }
    }

    /// Wakes a blocked [`recv`](Socket::recv) with an empty datagram from
    /// this process. Non-blocking: with the queue full, the receiver is
    /// awake anyway.
    pub(crate) fn wake(&self) {
        let Ok(addr) = SocketAddr::from_abstract_name(&self.name) else {
            return;
        };
        if let Ok(waker) = UnixDatagram::unbound() {
            let _ = waker.set_nonblocking(true);
            let _ = waker.send_to_addr(&[], &addr);
        }
    }
}

fn cmsg_space(len: usize) -> usize {
    // SAFETY: pure arithmetic.
    unsafe { libc::CMSG_SPACE(len as u32) as usize }
}

fn cmsg_len(len: usize) -> usize {
    // SAFETY: pure arithmetic.
    unsafe { libc::CMSG_LEN(len as u32) as usize }
}

/// Accepts `sender` if its uid is ours and it is `root` or a descendant of
/// `root`, or an orphan adopted by `me` (the launcher, the tree's
/// subreaper); `Err(why)` otherwise.
pub(crate) fn check_sender(sender: Option<&Sender>, root: u32, me: u32) -> Result<(), String> {
    let Some(sender) = sender else {
        return Err("it carries no credentials".to_owned());
    };
    // SAFETY: no arguments, cannot fail.
    let uid = unsafe { libc::geteuid() };
    let who = format!("PID {} (uid {})", sender.pid, sender.uid);
    if sender.uid != uid {
        return Err(format!("{who} is another user's process"));
    }
    if sender.pid == me {
        return Err(format!("{who} is this process"));
    }
    let mut pid = sender.pid;
    for _ in 0..MAX_DEPTH {
        if pid == root || pid == me {
            return Ok(());
        }
        if pid <= 1 {
            break;
        }
        pid = match crate::lock::sys::parent_pid(pid) {
            Some(parent) => parent,
            None => {
                return Err(format!(
                    "{who} is not in the command's tree (PID {pid} is gone or unreadable in /proc)"
                ))
            }
        };
    }
    Err(format!("{who} is not in the command's tree"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_chain_check_accepts_descendants_only() {
        let me = std::process::id();
        let own = Sender {
            pid: me,
            uid: unsafe { libc::geteuid() },
        };
        // This process is the root's descendant when the root is itself or
        // its parent; never when the root is an unrelated PID.
        let parent = crate::lock::sys::parent_pid(me).unwrap();
        assert!(check_sender(Some(&own), me, 0).is_ok());
        assert!(check_sender(Some(&own), parent, 0).is_ok());
        assert!(check_sender(Some(&own), u32::MAX - 1, 0).is_err());
        // Another uid, or no credentials at all: refused.
        let other = Sender {
            pid: me,
            uid: own.uid.wrapping_add(1),
        };
        assert!(check_sender(Some(&other), me, 0).is_err());
        assert!(check_sender(None, me, 0).is_err());
    }
}
