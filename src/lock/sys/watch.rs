//! Waking a waiter when a lock file may have been released: inotify on the
//! lock dir on Linux, kqueue's `EVFILT_VNODE` on it on macOS, a change
//! notification on Windows; elsewhere (other Unixes) no watch, and the
//! waiter polls (see `lock/wait.rs`).
//!
//! The dir is watched, not the file: release unlinks the file and the next
//! holder creates a new one, so a watch on the file would die with it.
//! inotify names the file an event is about, kqueue and Windows do not (any
//! entry of the dir); either way a wake is only ever a hint to look again.

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
    /// Some entry of the lock dir was added, removed or renamed, perhaps
    /// another port's (kqueue cannot say which): worth a cheap probe, not a
    /// full attempt, so a busy dir costs waiters only reads.
    #[cfg_attr(not(any(target_os = "macos", windows)), allow(dead_code))]
    DirChanged,
    /// The lock file was created or written (a holder's first write, or its
    /// record rewritten in place: a new serving state). Only a watch made by
    /// [`DirWatch::with_writes`] reports it, and only where the platform can
    /// (inotify): worth a look at the record.
    #[cfg_attr(not(any(target_os = "linux", target_os = "android")), allow(dead_code))]
    Written,
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

    /// [`MASK`], and the lock file's creation and every write to it: what
    /// `llmlb wait` needs to see a holder announce a new serving state (an
    /// in-place `pwrite` + `ftruncate`, which neither unlinks nor closes). A
    /// mask of its own: the acquire's waiters never wake for writes.
    const WRITES_MASK: u32 = MASK | libc::IN_CREATE | libc::IN_MODIFY;

    /// A missing lock dir's parent, for the dir's arrival (created, or
    /// renamed into place) and the parent's own removal.
    const ENTRY_MASK: u32 = libc::IN_CREATE
        | libc::IN_MOVED_TO
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
            let proc_path = format!("/proc/self/fd/{}", dir.as_fd().as_raw_fd());
            Self::add(std::path::Path::new(&proc_path), name, MASK)
        }

        /// As [`new`](Self::new), and also woken ([`Wake::Written`]) when
        /// `name` is created or written in place.
        ///
        /// # Errors
        /// As [`new`](Self::new).
        pub(crate) fn with_writes(dir: &DirHandle, name: &str) -> io::Result<DirWatch> {
            let proc_path = format!("/proc/self/fd/{}", dir.as_fd().as_raw_fd());
            Self::add(std::path::Path::new(&proc_path), name, WRITES_MASK)
        }

        /// Watches the dir at `parent` (by path: it is only a hint) for an
        /// entry `name` to appear: a lock dir that does not exist yet.
        ///
        /// # Errors
        /// As [`new`](Self::new); `parent` missing or not a dir.
        pub(crate) fn for_entry(parent: &std::path::Path, name: &str) -> io::Result<DirWatch> {
            Self::add(parent, name, ENTRY_MASK)
        }

        fn add(path: &std::path::Path, name: &str, mask: u32) -> io::Result<DirWatch> {
            use std::os::unix::ffi::OsStrExt as _;
            let path = CString::new(path.as_os_str().as_bytes())
                .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
            let fd = pooled_instance()?;
            // SAFETY: fd is an inotify descriptor; path is NUL-terminated.
            let wd = unsafe { libc::inotify_add_watch(fd.as_raw_fd(), path.as_ptr(), mask) };
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
                        } else if mask & (libc::IN_CREATE | libc::IN_MODIFY) != 0
                            && matches!(wake, Wake::Timeout | Wake::Closed)
                        {
                            wake = Wake::Written;
                        } else if mask & libc::IN_CLOSE_WRITE != 0 && wake == Wake::Timeout {
                            wake = Wake::Closed;
                        }
                    }
                }
            }
        }
    }
}

/// Whether this platform's watch reports a holder that died (its last close
/// of the lock file). Where it does not, the waiter's poll tick finds a dead
/// holder, so ticks stay as short as without a watch.
pub(crate) const WATCH_SEES_HOLDER_EXIT: bool =
    cfg!(any(target_os = "linux", target_os = "android"));

/// Whether [`DirWatch::with_writes`] reports a record rewritten in place
/// ([`Wake::Written`]). Where it does not (kqueue on a dir sees only its
/// entries), a waiter for a new serving state polls at the short cap.
pub(crate) const WATCH_SEES_WRITES: bool = cfg!(any(target_os = "linux", target_os = "android"));

#[cfg(target_os = "macos")]
pub(crate) use macos::DirWatch;

#[cfg(target_os = "macos")]
mod macos {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

    use super::*;

    /// A kqueue with one `EVFILT_VNODE` filter on the lock dir's descriptor.
    ///
    /// A dir's vnode reports `NOTE_WRITE` when an entry is added, removed or
    /// renamed: the release's unlink among them. A holder that dies leaves
    /// its file, and the dir does not change; the waiter's poll tick covers
    /// that ([`WATCH_SEES_HOLDER_EXIT`] is false here). Closing a kqueue is
    /// cheap, so nothing is pooled; kqueues are not inherited over `fork`.
    #[derive(Debug)]
    pub(crate) struct DirWatch {
        kq: OwnedFd,
        /// The dir was removed, renamed or revoked: only timeouts from now on.
        dead: bool,
    }

    impl AsRawFd for DirWatch {
        fn as_raw_fd(&self) -> std::os::fd::RawFd {
            self.kq.as_raw_fd()
        }
    }

    /// Entries changed; the dir itself removed, renamed or revoked.
    const FFLAGS: u32 =
        libc::NOTE_WRITE | libc::NOTE_DELETE | libc::NOTE_RENAME | libc::NOTE_REVOKE;

    impl DirWatch {
        /// Watches the open dir `dir` itself (its descriptor: a path re-pointed
        /// later does not matter). `_name` is unused: kqueue cannot filter by
        /// entry name.
        ///
        /// # Errors
        /// kqueue unavailable or out of descriptors: the caller polls instead.
        pub(crate) fn new(dir: &DirHandle, _name: &str) -> io::Result<DirWatch> {
            // SAFETY: plain syscall, no pointers.
            let raw = unsafe { libc::kqueue() };
            if raw < 0 {
                return Err(io::Error::last_os_error());
            }
            // SAFETY: a fresh descriptor nobody else owns.
            let kq = unsafe { OwnedFd::from_raw_fd(raw) };
            // SAFETY: plain syscall on our descriptor (no O_CLOEXEC for kqueue()).
            unsafe { libc::fcntl(kq.as_raw_fd(), libc::F_SETFD, libc::FD_CLOEXEC) };
            // SAFETY: kevent is plain data; all-zero is a valid value.
            let mut change: libc::kevent = unsafe { std::mem::zeroed() };
            change.ident = dir.as_fd().as_raw_fd() as libc::uintptr_t;
            change.filter = libc::EVFILT_VNODE;
            change.flags = libc::EV_ADD | libc::EV_CLEAR;
            change.fflags = FFLAGS;
            // SAFETY: one valid change, no event list, no timeout.
            let n = unsafe {
                libc::kevent(
                    kq.as_raw_fd(),
                    &change,
                    1,
                    std::ptr::null_mut(),
                    0,
                    std::ptr::null(),
                )
            };
            if n < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(DirWatch { kq, dead: false })
        }

        /// As [`new`](Self::new): a dir's vnode does not report writes to its
        /// files, so a rewritten record is found by the caller's poll tick
        /// ([`WATCH_SEES_WRITES`] is false here).
        ///
        /// # Errors
        /// As [`new`](Self::new).
        pub(crate) fn with_writes(dir: &DirHandle, name: &str) -> io::Result<DirWatch> {
            Self::new(dir, name)
        }

        /// Not here: a missing lock dir is polled for.
        ///
        /// # Errors
        /// Always `Unsupported`.
        pub(crate) fn for_entry(_parent: &std::path::Path, _name: &str) -> io::Result<DirWatch> {
            Err(io::ErrorKind::Unsupported.into())
        }

        /// Sleeps until the dir changes or `timeout`, then reads what is queued.
        pub(crate) fn wait(&mut self, timeout: Duration) -> Wake {
            if self.dead {
                std::thread::sleep(timeout);
                return Wake::Timeout;
            }
            self.next(Some(timeout))
        }

        /// Reads (without blocking) what is queued.
        pub(crate) fn drain(&mut self) -> Wake {
            if self.dead {
                return Wake::Timeout;
            }
            self.next(None)
        }

        /// One `kevent` call: waits up to `timeout` (`None`: not at all). With
        /// `EV_CLEAR` the filter's state resets on every read, so one event
        /// carries every change since the last one.
        fn next(&mut self, timeout: Option<Duration>) -> Wake {
            let t = timeout.unwrap_or(Duration::ZERO);
            let ts = libc::timespec {
                tv_sec: t.as_secs().min(libc::time_t::MAX as u64) as libc::time_t,
                tv_nsec: t.subsec_nanos() as libc::c_long,
            };
            // SAFETY: kevent is plain data; all-zero is a valid value.
            let mut ev: libc::kevent = unsafe { std::mem::zeroed() };
            // SAFETY: room for one event; ts is a valid timespec. EINTR ends
            // the sleep early (a tick).
            let n =
                unsafe { libc::kevent(self.kq.as_raw_fd(), std::ptr::null(), 0, &mut ev, 1, &ts) };
            if n < 0 {
                return if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
                    Wake::Timeout
                } else {
                    self.dead = true;
                    Wake::Changed
                };
            }
            if n == 0 {
                return Wake::Timeout;
            }
            if ev.flags & libc::EV_ERROR != 0
                || ev.fflags & (libc::NOTE_DELETE | libc::NOTE_RENAME | libc::NOTE_REVOKE) != 0
            {
                self.dead = true;
                return Wake::Changed;
            }
            Wake::DirChanged
        }
    }
}

#[cfg(windows)]
pub(crate) use windows::DirWatch;

#[cfg(windows)]
mod windows {
    use std::os::windows::ffi::OsStrExt as _;

    use windows_sys::Win32::Foundation::{
        HANDLE, INVALID_HANDLE_VALUE, WAIT_OBJECT_0, WAIT_TIMEOUT,
    };
    use windows_sys::Win32::Storage::FileSystem::{
        FindCloseChangeNotification, FindFirstChangeNotificationW, FindNextChangeNotification,
        FILE_NOTIFY_CHANGE_FILE_NAME, FILE_NOTIFY_CHANGE_LAST_WRITE, FILE_NOTIFY_CHANGE_SIZE,
    };
    use windows_sys::Win32::System::Threading::WaitForSingleObject;

    use super::*;

    /// A change notification on the lock dir: signalled when a name in it is
    /// created, deleted or renamed (the release's delete among them), not for
    /// writes. A holder that dies leaves its file: the poll tick covers that
    /// ([`WATCH_SEES_HOLDER_EXIT`] is false here).
    #[derive(Debug)]
    pub(crate) struct DirWatch {
        handle: HANDLE,
        /// Re-arming failed (the dir went away): only timeouts from now on.
        dead: bool,
    }

    // SAFETY: a change notification handle is a kernel object handle, usable
    // from any thread; only `&mut self` methods and Drop use it.
    unsafe impl Send for DirWatch {}

    impl Drop for DirWatch {
        fn drop(&mut self) {
            // SAFETY: our handle, not used after this.
            unsafe { FindCloseChangeNotification(self.handle) };
        }
    }

    impl DirWatch {
        /// Watches the checked dir by its path (Windows' `DirHandle` is one;
        /// a path re-pointed later only costs a missed hint). `_name` is
        /// unused: the notification cannot filter by name.
        ///
        /// # Errors
        /// The notification could not be set up: the caller polls instead.
        pub(crate) fn new(dir: &DirHandle, _name: &str) -> io::Result<DirWatch> {
            Self::notify(dir, FILE_NOTIFY_CHANGE_FILE_NAME)
        }

        /// As [`new`](Self::new), and also signalled when a file in the dir
        /// is written (its size or last-write time changes): a hint at best,
        /// as NTFS may defer those updates, so the caller's poll tick stays
        /// short ([`WATCH_SEES_WRITES`] is false).
        ///
        /// # Errors
        /// As [`new`](Self::new).
        pub(crate) fn with_writes(dir: &DirHandle, _name: &str) -> io::Result<DirWatch> {
            Self::notify(
                dir,
                FILE_NOTIFY_CHANGE_FILE_NAME
                    | FILE_NOTIFY_CHANGE_SIZE
                    | FILE_NOTIFY_CHANGE_LAST_WRITE,
            )
        }

        /// Not here: a missing lock dir is polled for.
        ///
        /// # Errors
        /// Always `Unsupported`.
        pub(crate) fn for_entry(_parent: &std::path::Path, _name: &str) -> io::Result<DirWatch> {
            Err(io::ErrorKind::Unsupported.into())
        }

        fn notify(dir: &DirHandle, filter: u32) -> io::Result<DirWatch> {
            let wide: Vec<u16> = dir.path().as_os_str().encode_wide().chain([0]).collect();
            // SAFETY: wide is NUL-terminated; not the subtree.
            let handle = unsafe { FindFirstChangeNotificationW(wide.as_ptr(), 0, filter) };
            if handle == INVALID_HANDLE_VALUE {
                return Err(io::Error::last_os_error());
            }
            Ok(DirWatch {
                handle,
                dead: false,
            })
        }

        /// Sleeps until a name in the dir changes or `timeout`.
        pub(crate) fn wait(&mut self, timeout: Duration) -> Wake {
            if self.dead {
                std::thread::sleep(timeout);
                return Wake::Timeout;
            }
            // Round up: a 0.3 ms timeout must not become a busy 0. Below
            // INFINITE (u32::MAX): the caller's ticks are short anyway.
            let ms = timeout
                .as_micros()
                .div_ceil(1000)
                .min(u128::from(u32::MAX - 1)) as u32;
            // SAFETY: our handle.
            match unsafe { WaitForSingleObject(self.handle, ms) } {
                WAIT_TIMEOUT => Wake::Timeout,
                WAIT_OBJECT_0 => {
                    // Re-arm for the next wait; changes meanwhile are kept.
                    // SAFETY: our handle.
                    if unsafe { FindNextChangeNotification(self.handle) } == 0 {
                        self.dead = true;
                        return Wake::Changed;
                    }
                    Wake::DirChanged
                }
                _ => {
                    self.dead = true;
                    Wake::Changed
                }
            }
        }
    }
}

/// No watch on this platform: `new` always fails, and the waiter polls.
#[cfg(not(any(
    target_os = "linux",
    target_os = "android",
    target_os = "macos",
    windows
)))]
#[derive(Debug)]
pub(crate) struct DirWatch(std::convert::Infallible);

#[cfg(not(any(
    target_os = "linux",
    target_os = "android",
    target_os = "macos",
    windows
)))]
impl DirWatch {
    /// Always `Unsupported`: the bounded poll serves here.
    pub(crate) fn new(_dir: &DirHandle, _name: &str) -> io::Result<DirWatch> {
        Err(io::ErrorKind::Unsupported.into())
    }

    /// Always `Unsupported`, as [`new`](Self::new).
    pub(crate) fn with_writes(_dir: &DirHandle, _name: &str) -> io::Result<DirWatch> {
        Err(io::ErrorKind::Unsupported.into())
    }

    /// Always `Unsupported`, as [`new`](Self::new).
    pub(crate) fn for_entry(_parent: &std::path::Path, _name: &str) -> io::Result<DirWatch> {
        Err(io::ErrorKind::Unsupported.into())
    }

    /// Unreachable: no `DirWatch` exists on this platform.
    pub(crate) fn wait(&mut self, _timeout: Duration) -> Wake {
        match self.0 {}
    }
}

#[cfg(all(
    test,
    any(
        target_os = "linux",
        target_os = "android",
        target_os = "macos",
        windows
    )
))]
mod tests {
    use super::*;

    const NAME: &str = "serve_8000.lock";

    /// A watch on a fresh dir: quiet while nothing happens, and woken (worth
    /// at least a probe) by the release's removal of the lock file. Fails if
    /// the platform's watch never fires: `wait` would run to its timeout.
    #[test]
    fn a_release_wakes_the_watch_and_silence_does_not() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = super::super::open_dir(tmp.path()).unwrap();
        let file = tmp.path().join(NAME);
        std::fs::write(&file, b"{}").unwrap();

        let mut watch = DirWatch::new(&dir, NAME).unwrap();
        assert_eq!(watch.wait(Duration::from_millis(20)), Wake::Timeout);

        std::fs::remove_file(&file).unwrap();
        // Generous against a loaded machine; a working watch returns at once.
        let wake = watch.wait(Duration::from_secs(30));
        assert!(
            matches!(wake, Wake::Changed | Wake::DirChanged),
            "after the lock file's removal: {wake:?}"
        );
    }

    /// The lock dir itself removed: the watch says so (or goes quiet), and
    /// never blocks past its timeout afterwards.
    #[test]
    fn a_removed_dir_ends_in_timeouts_not_hangs() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("locks");
        std::fs::create_dir(&path).unwrap();
        let dir = super::super::open_dir(&path).unwrap();
        let mut watch = DirWatch::new(&dir, NAME).unwrap();
        drop(dir);
        std::fs::remove_dir(&path).unwrap();
        for _ in 0..3 {
            let _ = watch.wait(Duration::from_millis(10));
        }
        assert_eq!(watch.wait(Duration::from_millis(10)), Wake::Timeout);
    }

    /// What `llmlb wait` relies on: an in-place rewrite of the record (the
    /// holder's `set_state`: pwrite, then ftruncate, no unlink, no close)
    /// wakes a watch made `with_writes`, and not the acquire's watch, whose
    /// waiters must not pay for writes.
    #[cfg(any(target_os = "linux", target_os = "android"))]
    #[test]
    fn an_in_place_rewrite_wakes_only_a_watch_for_writes() {
        use std::os::unix::fs::FileExt as _;
        let tmp = tempfile::tempdir().unwrap();
        let dir = super::super::open_dir(tmp.path()).unwrap();
        let file = std::fs::File::create(tmp.path().join(NAME)).unwrap();
        file.write_all_at(b"{\"state\":\"starting\"}", 0).unwrap();
        let mut plain = DirWatch::new(&dir, NAME).unwrap();
        let mut writes = DirWatch::with_writes(&dir, NAME).unwrap();
        file.write_all_at(b"{\"state\":\"ready\"}", 0).unwrap();
        file.set_len(17).unwrap();
        assert_eq!(writes.wait(Duration::from_secs(30)), Wake::Written);
        assert_eq!(plain.wait(Duration::from_millis(20)), Wake::Timeout);
        // Another port's file: filtered by name.
        std::fs::write(tmp.path().join("serve_8001.lock"), b"{}").unwrap();
        assert_eq!(writes.wait(Duration::from_millis(20)), Wake::Timeout);
    }

    /// A lock dir that does not exist yet: its creation in the parent wakes
    /// the watch on the parent.
    #[cfg(any(target_os = "linux", target_os = "android"))]
    #[test]
    fn a_dir_created_later_wakes_the_watch_on_its_parent() {
        let tmp = tempfile::tempdir().unwrap();
        let mut watch = DirWatch::for_entry(tmp.path(), "locks").unwrap();
        std::fs::create_dir(tmp.path().join("other")).unwrap();
        assert_eq!(watch.wait(Duration::from_millis(20)), Wake::Timeout);
        std::fs::create_dir(tmp.path().join("locks")).unwrap();
        assert_ne!(watch.wait(Duration::from_secs(30)), Wake::Timeout);
    }
}
