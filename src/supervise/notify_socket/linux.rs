//! Linux's part of the Unix notify socket ([`super::unix`]): `SO_PASSCRED`
//! on the socket, the sender's `SCM_CREDENTIALS` on each datagram, and the
//! tree check, which walks the `ppid` chain in `/proc`.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};

use super::Sender;

/// How many parents the tree check follows before it gives up (a chain
/// longer than this is not a real process tree).
const MAX_DEPTH: usize = 4096;

/// Sets `SO_PASSCRED`: the kernel attaches the sender's credentials to
/// every datagram received from now on.
pub(crate) fn pass_credentials(fd: &OwnedFd) -> io::Result<()> {
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
    Ok(())
}

/// The sender of an `SCM_CREDENTIALS` control message (`None` for any
/// other message).
///
/// # Safety
/// `data` points to `data_len` readable bytes, the data of `cmsg`.
pub(crate) unsafe fn credentials(
    cmsg: &libc::cmsghdr,
    data: *const u8,
    data_len: usize,
) -> Option<Sender> {
    if cmsg.cmsg_level != libc::SOL_SOCKET
        || cmsg.cmsg_type != libc::SCM_CREDENTIALS
        || data_len < std::mem::size_of::<libc::ucred>()
    {
        return None;
    }
    // SAFETY: the caller vouches for data_len bytes, enough for a ucred.
    let cred: libc::ucred = unsafe { std::ptr::read_unaligned(data.cast()) };
    Some(Sender {
        pid: cred.pid as u32,
        uid: cred.uid,
    })
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
