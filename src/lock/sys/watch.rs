//! Waking a waiter when a lock file may have been released: inotify on the
//! lock dir on Linux; elsewhere (macOS, Windows, other Unixes) no watch, and
//! the waiter polls (see `lock/wait.rs`).
//!
//! The dir is watched, not the file: release unlinks the file and the next
//! holder creates a new one, so a watch on the file would die with it.
//! Events are filtered by name; a wake is only ever a hint to look again.

use std::io;
use std::time::Duration;

use super::DirHandle;

/// What a watch saw since it was last read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Wake {
    /// Nothing within the timeout.
    Timeout,
    /// Only closes of a writable descriptor on the lock file: a holder that
    /// died (its descriptor closed without unlinking), but also any acquirer's
    /// failed attempt. Worth a cheap probe, not a full attempt.
    #[cfg_attr(not(any(target_os = "linux", target_os = "android")), allow(dead_code))]
    Closed,
    /// The lock file was removed or renamed (a release), the dir itself went
    /// away, or events were lost (queue overflow): worth a full attempt.
    Changed,
}

#[cfg(any(target_os = "linux", target_os = "android"))]
pub(crate) use linux::DirWatch;

#[cfg(any(target_os = "linux", target_os = "android"))]
mod linux {
    use std::ffi::CString;
    use std::mem::ManuallyDrop;
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    use std::sync::Mutex;

    use super::*;

    /// An inotify instance watching one lock dir for one file name.
    #[derive(Debug)]
    pub(crate) struct DirWatch {
        /// Taken only by Drop, which hands it back to [`POOL`].
        fd: ManuallyDrop<OwnedFd>,
        /// Our watch; events of earlier users of a pooled instance carry
        /// other descriptors and are ignored.
        wd: libc::c_int,
        name: Vec<u8>,
        /// The dir's watch is gone (dir removed, or `IN_IGNORED`): only
        /// timeouts from now on.
        dead: bool,
    }

    /// Release (unlink), replacement (rename over it or away), a holder's
    /// final close (crash), and the dir itself going away.
    const MASK: u32 = libc::IN_DELETE
        | libc::IN_MOVED_FROM
        | libc::IN_MOVED_TO
        | libc::IN_CLOSE_WRITE
        | libc::IN_DELETE_SELF
        | libc::IN_MOVE_SELF
        | libc::IN_ONLYDIR;

    /// Closing an inotify instance waits for an SRCU grace period in the
    /// kernel (`fsnotify_destroy_group`): measured 5–18 ms on a loaded box,
    /// which a waiter would pay right after taking the port. So instances are
    /// kept for reuse (watch removed, which does not wait), per process: a
    /// forked child must not share its parent's instances.
    static POOL: Mutex<(u32, Vec<OwnedFd>)> = Mutex::new((0, Vec::new()));
    /// Instances kept at most (each is one fd and a little kernel memory).
    const POOL_MAX: usize = 4;

    fn pooled_instance() -> io::Result<OwnedFd> {
        let pid = std::process::id();
        let reused = POOL.lock().ok().and_then(|mut pool| {
            if pool.0 != pid {
                // Inherited over fork (or first use): not ours to share.
                pool.1.clear();
                pool.0 = pid;
            }
            pool.1.pop()
        });
        if let Some(fd) = reused {
            return Ok(fd);
        }
        // SAFETY: plain syscall, no pointers.
        let raw = unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a fresh descriptor nobody else owns.
        Ok(unsafe { OwnedFd::from_raw_fd(raw) })
    }

    fn give_back(fd: OwnedFd) {
        if let Ok(mut pool) = POOL.lock() {
            if pool.0 == std::process::id() && pool.1.len() < POOL_MAX {
                pool.1.push(fd);
                return;
            }
        }
        drop(fd); // the slow close, only beyond POOL_MAX
    }

    impl Drop for DirWatch {
        fn drop(&mut self) {
            // SAFETY: fd is not used again after this.
            let fd = unsafe { ManuallyDrop::take(&mut self.fd) };
            if !self.dead {
                // SAFETY: plain syscall on our inotify descriptor. Queued and
                // later events of this watch (IN_IGNORED) carry its wd and
                // are ignored by the next user.
                unsafe { libc::inotify_rm_watch(fd.as_raw_fd(), self.wd) };
            }
            give_back(fd);
        }
    }

    impl AsRawFd for DirWatch {
        fn as_raw_fd(&self) -> std::os::fd::RawFd {
            self.fd.as_raw_fd()
        }
    }

    impl DirWatch {
        /// Watches the open dir `dir` (through `/proc/self/fd`, so the
        /// descriptor's dir is watched, never whatever its path names now)
        /// for events on `name`.
        ///
        /// # Errors
        /// inotify unavailable or out of instances/watches, or no `/proc`:
        /// the caller polls instead.
        pub(crate) fn new(dir: &DirHandle, name: &str) -> io::Result<DirWatch> {
            let fd = pooled_instance()?;
            let proc_path = CString::new(format!("/proc/self/fd/{}", dir.as_fd().as_raw_fd()))
                .map_err(|_| io::ErrorKind::InvalidInput)?;
            // SAFETY: fd is an inotify descriptor; proc_path is NUL-terminated.
            let wd = unsafe { libc::inotify_add_watch(fd.as_raw_fd(), proc_path.as_ptr(), MASK) };
            if wd < 0 {
                let err = io::Error::last_os_error();
                give_back(fd);
                return Err(err);
            }
            Ok(DirWatch {
                fd: ManuallyDrop::new(fd),
                wd,
                name: name.as_bytes().to_vec(),
                dead: false,
            })
        }

        /// Sleeps until an event or `timeout`, then reads what is queued.
        pub(crate) fn wait(&mut self, timeout: Duration) -> Wake {
            if !self.dead {
                let mut pfd = libc::pollfd {
                    fd: self.fd.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                };
                // Round up: a 0.3 ms timeout must not become a busy 0.
                let ms = timeout.as_micros().div_ceil(1000).min(i32::MAX as u128) as i32;
                // SAFETY: pfd is one valid pollfd. EINTR just ends the sleep early.
                unsafe { libc::poll(&mut pfd, 1, ms) };
            } else {
                std::thread::sleep(timeout);
            }
            self.drain()
        }

        /// Reads (without blocking) and classifies every queued event.
        pub(crate) fn drain(&mut self) -> Wake {
            if self.dead {
                return Wake::Timeout;
            }
            let mut wake = Wake::Timeout;
            // Aligned for inotify_event; room for many events with short names.
            let mut buf = [0u64; 512];
            loop {
                // SAFETY: buf is valid for writes of its size in bytes.
                let n = unsafe {
                    libc::read(
                        self.fd.as_raw_fd(),
                        buf.as_mut_ptr().cast(),
                        std::mem::size_of_val(&buf),
                    )
                };
                if n <= 0 {
                    // EAGAIN: drained. Any other error: stop reading, and let
                    // the poll tick carry on.
                    if n < 0 && io::Error::last_os_error().kind() != io::ErrorKind::WouldBlock {
                        self.dead = true;
                        wake = Wake::Changed;
                    }
                    return wake;
                }
                // SAFETY: read filled n bytes of buf.
                let bytes =
                    unsafe { std::slice::from_raw_parts(buf.as_ptr().cast::<u8>(), n as usize) };
                let mut at = 0;
                let head = std::mem::size_of::<libc::inotify_event>();
                while at + head <= bytes.len() {
                    // SAFETY: the kernel writes whole events; read_unaligned
                    // needs no alignment.
                    let ev: libc::inotify_event =
                        unsafe { std::ptr::read_unaligned(bytes[at..].as_ptr().cast()) };
                    let name_end = (at + head + ev.len as usize).min(bytes.len());
                    let raw_name = &bytes[at + head..name_end];
                    let name = &raw_name[..raw_name
                        .iter()
                        .position(|&b| b == 0)
                        .unwrap_or(raw_name.len())];
                    at = name_end;
                    let mask = ev.mask;
                    if mask & libc::IN_Q_OVERFLOW != 0 {
                        wake = Wake::Changed;
                        continue;
                    }
                    if ev.wd != self.wd {
                        continue; // a previous user's watch (pooled instance)
                    }
                    if mask & (libc::IN_IGNORED | libc::IN_DELETE_SELF | libc::IN_MOVE_SELF) != 0 {
                        self.dead = mask & libc::IN_IGNORED != 0 || self.dead;
                        wake = Wake::Changed;
                    } else if name == self.name.as_slice() {
                        if mask & (libc::IN_DELETE | libc::IN_MOVED_FROM | libc::IN_MOVED_TO) != 0 {
                            wake = Wake::Changed;
                        } else if mask & libc::IN_CLOSE_WRITE != 0 && wake == Wake::Timeout {
                            wake = Wake::Closed;
                        }
                    }
                }
            }
        }
    }
}

/// No watch on this platform: `new` always fails, and the waiter polls.
#[cfg(not(any(target_os = "linux", target_os = "android")))]
#[derive(Debug)]
pub(crate) struct DirWatch(std::convert::Infallible);

#[cfg(not(any(target_os = "linux", target_os = "android")))]
impl DirWatch {
    /// Always `Unsupported` (macOS could use kqueue's `EVFILT_VNODE` on the
    /// dir; not done yet: the bounded poll serves there).
    pub(crate) fn new(_dir: &DirHandle, _name: &str) -> io::Result<DirWatch> {
        Err(io::ErrorKind::Unsupported.into())
    }

    /// Unreachable: no `DirWatch` exists on this platform.
    pub(crate) fn wait(&mut self, _timeout: Duration) -> Wake {
        match self.0 {}
    }
}
