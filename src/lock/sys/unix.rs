//! Unix implementation of the platform boundary (Linux is where it is tested).

use std::ffi::{CStr, CString};
use std::fs::{DirBuilder, File, Metadata};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, FileExt as _, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use fs2::FileExt as Fs2FileExt;

use super::{DirRefusal, FileId, LockName, OpenFileStat, TryLock};
use crate::lock::identity::ProcessIdentity;

/// An open lock directory: `O_DIRECTORY | O_NOFOLLOW`, so the descriptor is
/// the directory the checks judged, whatever its name points at later. Every
/// lock file is reached relative to it (`openat`, `fstatat`, `unlinkat`), as
/// tempfile and cargo treat directories they do not fully trust.
#[derive(Debug)]
pub(crate) struct DirHandle {
    fd: OwnedFd,
    id: FileId,
    uid: u32,
    mode: u32,
    /// See [`DirPin`].
    spare_pin: SparePin,
}

impl DirHandle {
    /// The directory's `(dev, ino)`, from the `fstat` made when it was opened.
    pub(crate) fn id(&self) -> FileId {
        self.id
    }

    /// The open directory's descriptor (to watch it, see `watch.rs`).
    #[cfg_attr(not(any(target_os = "linux", target_os = "android")), allow(dead_code))]
    pub(crate) fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// A holder's own open description of its lock dir, share-locked with
/// `flock` while the holder holds its port: systemd-tmpfiles (`--clean`, the
/// age rules of `/tmp`) skips a directory it cannot lock exclusively, with
/// everything in it, so a held port's lock file, control socket and dir are
/// never aged out. Its own description, not the [`DirHandle`]'s (which
/// several holders of one process may share): flock belongs to the open file
/// description, so shared locks of many descriptions coexist, and each
/// holder's goes with its own release (dropping the pin).
///
/// A pin is one `flock` at acquire and one at release: the dropped pin is
/// unlocked and kept as its dir handle's spare, which the next holder of
/// that handle locks again instead of opening the dir anew. Only while no
/// fork can share the description: a forked child holds the same
/// description (and the lock on it) as its parent, and an unlock by either
/// would take the other's lock too, so after a fork a pin is only ever
/// closed, never unlocked or reused.
#[derive(Debug)]
pub(crate) struct DirPin {
    dir: Arc<DirHandle>,
    /// `None` if the dir could not be opened again (out of descriptors).
    fd: Option<OwnedFd>,
    /// Who opened `fd`.
    opener: Opener,
    locked: bool,
}

/// The process that opened a pin's description, and its fork count then.
#[derive(Debug, Clone, Copy)]
struct Opener {
    pid: u32,
    forks: Option<u64>,
}

impl Opener {
    fn now() -> Opener {
        Opener {
            pid: current_pid(),
            forks: fork_count(),
        }
    }

    /// Whether no other process can share the description: opened by this
    /// process, which has not forked since (or cannot tell).
    fn alone(self) -> bool {
        self.forks.is_some() && self.forks == fork_count() && self.pid == current_pid()
    }
}

/// A dir handle's unlocked spare pin (see [`DirPin`]).
type SparePin = std::sync::Mutex<Option<(OwnedFd, Opener)>>;

fn spare_slot(dir: &DirHandle) -> std::sync::MutexGuard<'_, Option<(OwnedFd, Opener)>> {
    // Poisoning cannot leave the slot half-written: it is a plain Option.
    dir.spare_pin
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Takes a shared `flock` on a description of `dir` of its own (its
/// spare, else a fresh open of it), never waiting: a cleaner that holds it
/// exclusively for the moment it cleans the dir leaves this pin unlocked,
/// and [`repin_dir`] tries again. Never fails: a pin is protection from
/// cleaners, not part of holding the port.
pub(crate) fn pin_dir(dir: &Arc<DirHandle>) -> DirPin {
    let spare = spare_slot(dir).take();
    let mut pin = match spare {
        Some((fd, opener)) if opener.alone() => DirPin {
            dir: Arc::clone(dir),
            fd: Some(fd),
            opener,
            locked: false,
        },
        // A spare that a fork may share is only closed (dropped here).
        _ => DirPin {
            dir: Arc::clone(dir),
            fd: open_pin(dir),
            opener: Opener::now(),
            locked: false,
        },
    };
    lock_pin(&mut pin);
    pin
}

fn open_pin(dir: &DirHandle) -> Option<OwnedFd> {
    let flags = libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC;
    // SAFETY: the dir fd is open for &dir's lifetime; "." is NUL-terminated.
    let raw = cvt(unsafe { libc::openat(dir.fd.as_raw_fd(), c".".as_ptr(), flags) }).ok()?;
    // SAFETY: openat returned a fresh descriptor that nothing else owns.
    Some(unsafe { OwnedFd::from_raw_fd(raw) })
}

fn lock_pin(pin: &mut DirPin) {
    if let Some(fd) = &pin.fd {
        // SAFETY: fd is open for the borrow.
        pin.locked =
            cvt(unsafe { libc::flock(fd.as_raw_fd(), libc::LOCK_SH | libc::LOCK_NB) }).is_ok();
    }
}

/// Makes `pin` locked if it is not (its open or its lock failed earlier):
/// one `flock` when only the lock was missing.
pub(crate) fn repin_dir(pin: &mut DirPin) {
    if pin.fd.is_none() {
        pin.fd = open_pin(&pin.dir);
        pin.opener = Opener::now();
    }
    if !pin.locked {
        lock_pin(pin);
    }
}

/// Whether `pin` holds its shared lock.
#[cfg_attr(not(test), allow(dead_code))]
pub(crate) fn is_pinned(pin: &DirPin) -> bool {
    pin.locked
}

impl Drop for DirPin {
    /// Unlocks and keeps the description as the dir handle's spare when no
    /// fork can share it; otherwise (or if the slot is taken) closes it,
    /// which drops its lock once no process has it open.
    fn drop(&mut self) {
        let Some(fd) = self.fd.take() else {
            return;
        };
        if !self.opener.alone() {
            return;
        }
        // SAFETY: fd is open until dropped below.
        if self.locked && cvt(unsafe { libc::flock(fd.as_raw_fd(), libc::LOCK_UN) }).is_err() {
            return;
        }
        let mut spare = spare_slot(&self.dir);
        if spare.is_none() {
            *spare = Some((fd, self.opener));
        }
    }
}

const TIMES_NOW: [libc::timespec; 2] = [
    libc::timespec {
        tv_sec: 0,
        tv_nsec: libc::UTIME_NOW,
    },
    libc::timespec {
        tv_sec: 0,
        tv_nsec: libc::UTIME_NOW,
    },
];

fn futimens_now(fd: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: the fd is open for the borrow; TIMES_NOW is two timespecs.
    cvt(unsafe { libc::futimens(fd.as_raw_fd(), TIMES_NOW.as_ptr()) }).map(drop)
}

/// Sets the access and modification times of an open file to now
/// (`futimens`), changing nothing else: cleaners that judge by age alone
/// (tmpreaper, `find -mtime`) see it as fresh.
pub(crate) fn touch_file(file: &File) -> io::Result<()> {
    futimens_now(file.as_fd())
}

/// [`touch_file`] of the lock dir itself, through its descriptor.
pub(crate) fn touch_dir(dir: &DirHandle) -> io::Result<()> {
    futimens_now(dir.fd.as_fd())
}

/// [`touch_file`] of the name `name` in `dir` (never following a symlink
/// there, `utimensat(AT_SYMLINK_NOFOLLOW)`); a missing name is not an error.
pub(crate) fn touch_name(dir: &DirHandle, name: &str) -> io::Result<()> {
    let c = CString::new(name)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "name contains a NUL byte"))?;
    // SAFETY: valid dir fd, NUL-terminated name, TIMES_NOW is two timespecs.
    let result = cvt(unsafe {
        libc::utimensat(
            dir.fd.as_raw_fd(),
            c.as_ptr(),
            TIMES_NOW.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    });
    match result {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other.map(drop),
    }
}

fn cvt(rc: libc::c_int) -> io::Result<libc::c_int> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

fn fstat_fd(fd: BorrowedFd<'_>) -> io::Result<libc::stat> {
    let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
    // SAFETY: fd is open for the borrow; st is valid for writes of one stat.
    cvt(unsafe { libc::fstat(fd.as_raw_fd(), st.as_mut_ptr()) })?;
    // SAFETY: fstat succeeded, so it filled `st`.
    Ok(unsafe { st.assume_init() })
}

#[allow(clippy::unnecessary_cast)] // st_dev is i32 and st_ino u64 on macOS
fn stat_id(st: &libc::stat) -> FileId {
    FileId {
        dev: st.st_dev as u64,
        ino: st.st_ino as u64,
    }
}

/// Opens the directory at `path` itself, never a symlink there (`ELOOP`) or a
/// non-directory (`ENOTDIR`). `path` must already be normalised (no trailing
/// `/` or `.`: a trailing slash makes the kernel follow a final symlink).
#[allow(clippy::unnecessary_cast)] // st_mode is u16 on macOS
pub(crate) fn open_dir(path: &Path) -> io::Result<DirHandle> {
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte"))?;
    let flags = libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC;
    // SAFETY: c is a valid NUL-terminated path.
    let raw = cvt(unsafe { libc::open(c.as_ptr(), flags) })?;
    // SAFETY: open returned a fresh descriptor that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    let st = fstat_fd(fd.as_fd())?;
    Ok(DirHandle {
        id: stat_id(&st),
        uid: st.st_uid,
        mode: st.st_mode as u32,
        fd,
        spare_pin: SparePin::default(),
    })
}

/// Refuses an opened lock dir that another local user could tamper with:
/// owned by someone else, or writable by group/others (they could plant or
/// delete lock files). Judged on the descriptor, not the name.
pub(crate) fn check_dir(dir: &DirHandle) -> Result<(), DirRefusal> {
    if dir.uid != euid() {
        return Err(DirRefusal::ForeignOwner);
    }
    if dir.mode & 0o022 != 0 {
        return Err(DirRefusal::OpenToOthers);
    }
    Ok(())
}

/// The fix that works for this refusal, for error messages: only a fix the
/// reader can and may run. `chmod` only for the user's own default dir
/// (llmlb made it 0700; someone loosened it): a dir named by `LLMLB_LOCK_DIR`
/// may be shared (`/tmp`, `/dev/shm`, `/var/tmp`, a team's dir), and root
/// running `chmod 700` on it would lock every other user and daemon out, so
/// for those a private subdirectory, which llmlb creates 0700. Nobody can
/// make a symlink, a file or another user's dir into ours. Paths are quoted
/// for a POSIX shell ([`shell_quoted`](crate::lock::shell_quoted)).
pub(crate) fn dir_fix_hint(dir: &Path, refusal: DirRefusal) -> String {
    use crate::lock::text::shell_quoted;
    let own_default = dir == default_dir();
    match refusal {
        DirRefusal::OpenToOthers if own_default => format!(
            "run `chmod 700 {}` (your own default lock dir), or set LLMLB_LOCK_DIR (or --lock-dir) to a directory only you can write",
            shell_quoted(dir)
        ),
        DirRefusal::OpenToOthers => {
            let private = dir.join(format!("llmlb-{}", euid()));
            format!(
                "others may depend on its permissions, so do not chmod it; use a private subdirectory, which llmlb creates with mode 0700: `export LLMLB_LOCK_DIR={}` (or --lock-dir {})",
                shell_quoted(&private),
                shell_quoted(&private)
            )
        }
        DirRefusal::ForeignOwner if own_default => {
            "another user created it first (anyone can create a directory there); set LLMLB_LOCK_DIR (or --lock-dir) to a directory you own (e.g. under your home directory)"
                .to_owned()
        }
        DirRefusal::Symlink | DirRefusal::NotDirectory | DirRefusal::ForeignOwner => {
            "set LLMLB_LOCK_DIR (or --lock-dir) to a directory you own (e.g. under your home directory)"
                .to_owned()
        }
    }
}

fn openat(dir: &DirHandle, name: &LockName, flags: libc::c_int) -> io::Result<File> {
    let flags = flags | libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC;
    // SAFETY: the dir fd is open for &dir's lifetime; the name is
    // NUL-terminated; the mode argument is read only with O_CREAT.
    let raw = cvt(unsafe {
        libc::openat(
            dir.fd.as_raw_fd(),
            name.as_c_str().as_ptr(),
            flags,
            0o600 as libc::c_uint,
        )
    })?;
    // SAFETY: openat returned a fresh descriptor that nothing else owns.
    Ok(unsafe { File::from_raw_fd(raw) })
}

/// Opens (creating if needed) the lock file `name` in `dir` for the holder:
/// read-write, mode 0600, never following a symlink (`ELOOP` instead),
/// close-on-exec, and without `O_TRUNC`: a contender must never clobber the
/// info of the process that holds the lock. `O_NONBLOCK` keeps a FIFO planted
/// there from hanging us; it has no effect on regular files.
pub(crate) fn open_for_lock(dir: &DirHandle, name: &LockName) -> io::Result<File> {
    openat(dir, name, libc::O_RDWR | libc::O_CREAT)
}

/// Opens an existing lock file read-only for probing; never creates it.
pub(crate) fn open_for_probe(dir: &DirHandle, name: &LockName) -> io::Result<File> {
    openat(dir, name, libc::O_RDONLY)
}

/// True when `err` is what `openat` returns for a symlink under `O_NOFOLLOW`.
pub(crate) fn is_symlink_error(err: &io::Error) -> bool {
    err.raw_os_error() == Some(libc::ELOOP)
}

/// `fstatat(AT_SYMLINK_NOFOLLOW)`: the id of what `name` in `dir` is now,
/// `None` if the name is gone.
pub(crate) fn name_id(dir: &DirHandle, name: &LockName) -> io::Result<Option<FileId>> {
    let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
    // SAFETY: valid dir fd, NUL-terminated name, st valid for one stat.
    let result = cvt(unsafe {
        libc::fstatat(
            dir.fd.as_raw_fd(),
            name.as_c_str().as_ptr(),
            st.as_mut_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    });
    match result {
        // SAFETY: fstatat succeeded, so it filled `st`.
        Ok(_) => Ok(Some(stat_id(&unsafe { st.assume_init() }))),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// This thread's `errno`: `readdir` tells end of directory from an error
/// only through it.
///
/// # Safety
/// The pointer is valid for the calling thread only.
unsafe fn errno_location() -> *mut libc::c_int {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    {
        libc::__errno_location()
    }
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    {
        libc::__error()
    }
}

/// The names in `dir`, read through the descriptor (a fresh open of `.`, so
/// concurrent listings do not share a position).
pub(crate) fn list_names(dir: &DirHandle) -> io::Result<Vec<std::ffi::OsString>> {
    use std::os::unix::ffi::OsStrExt as _;
    // SAFETY: valid dir fd and a static NUL-terminated name.
    let raw = cvt(unsafe {
        libc::openat(
            dir.fd.as_raw_fd(),
            c".".as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    })?;
    // SAFETY: raw is a fresh directory descriptor; fdopendir takes it over
    // (closedir closes it), or we close it on failure.
    let stream = unsafe { libc::fdopendir(raw) };
    if stream.is_null() {
        let e = io::Error::last_os_error();
        // SAFETY: fdopendir failed, so raw is still ours to close.
        unsafe { libc::close(raw) };
        return Err(e);
    }
    let mut names = Vec::new();
    loop {
        // SAFETY: stream is a valid DIR*; errno is reset to tell end from error.
        let entry = unsafe {
            *errno_location() = 0;
            libc::readdir(stream)
        };
        if entry.is_null() {
            // SAFETY: reading errno right after readdir.
            let errno = unsafe { *errno_location() };
            // SAFETY: stream is valid and closed exactly once.
            unsafe { libc::closedir(stream) };
            if errno != 0 {
                return Err(io::Error::from_raw_os_error(errno));
            }
            return Ok(names);
        }
        // SAFETY: readdir returned a valid entry whose d_name is NUL-terminated
        // and lives until the next readdir on this stream.
        let name = unsafe { CStr::from_ptr((*entry).d_name.as_ptr()) };
        names.push(std::ffi::OsStr::from_bytes(name.to_bytes()).to_owned());
    }
}

fn map_try(result: io::Result<()>) -> io::Result<TryLock> {
    match result {
        Ok(()) => Ok(TryLock::Acquired),
        Err(e) if e.raw_os_error() == fs2::lock_contended_error().raw_os_error() => {
            Ok(TryLock::Contended)
        }
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(TryLock::Contended),
        Err(e) => Err(e),
    }
}

/// `flock(LOCK_EX | LOCK_NB)`. The lock belongs to the open file description,
/// so it survives `fork` and is dropped when the last descriptor closes.
#[expect(
    clippy::disallowed_methods,
    reason = "the one call site of fs2's exclusive lock"
)]
pub(crate) fn try_lock_exclusive(file: &File) -> io::Result<TryLock> {
    map_try(Fs2FileExt::try_lock_exclusive(file))
}

/// `flock(LOCK_SH | LOCK_NB)`: fails exactly when someone holds it exclusively.
#[expect(
    clippy::disallowed_methods,
    reason = "the one call site of fs2's shared lock"
)]
pub(crate) fn try_lock_shared(file: &File) -> io::Result<TryLock> {
    map_try(Fs2FileExt::try_lock_shared(file))
}

fn id_of(meta: &Metadata) -> FileId {
    FileId {
        dev: meta.dev(),
        ino: meta.ino(),
    }
}

/// One `fstat` of an open lock file in `dir`. "Ours" means owned by the
/// dir's owner, which [`check_dir`] proved is the effective user when the
/// dir was opened: no `geteuid` per file, and a dir handle opened once
/// judges every file by the same owner.
#[allow(clippy::unnecessary_cast)] // st_size is i64 and st_mode u16 on macOS
pub(crate) fn stat_open(dir: &DirHandle, file: &File) -> io::Result<OpenFileStat> {
    let st = fstat_fd(file.as_fd())?;
    Ok(OpenFileStat {
        id: stat_id(&st),
        len: st.st_size as u64,
        is_regular: (st.st_mode as u32) & (libc::S_IFMT as u32) == libc::S_IFREG as u32,
        owned_by_us: st.st_uid == dir.uid,
    })
}

/// `lstat` of a path: the id of what the name points at now, `None` if the
/// name is gone.
pub(crate) fn path_id(path: &Path) -> io::Result<Option<FileId>> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) => Ok(Some(id_of(&meta))),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// `pread` until `buf` is full or end of file; returns the bytes read. A
/// short read of a regular file means end of file, so it stops there instead
/// of paying a second `pread` to see 0.
pub(crate) fn read_at(file: &File, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        match file.read_at(&mut buf[done..], offset + done as u64) {
            Ok(0) => break,
            Ok(n) if done + n < buf.len() => return Ok(done + n),
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

/// `pwrite` all of `data` at `offset`.
pub(crate) fn write_all_at(file: &File, data: &[u8], offset: u64) -> io::Result<()> {
    file.write_all_at(data, offset)
}

/// This process's id, without a system call once known.
///
/// glibc stopped caching `getpid` (2.25) because a cache goes stale in a
/// child made by `clone`/`syscall(SYS_fork)`/`_Fork`, which skip the
/// `pthread_atfork` handlers. So the cache here lives in a page marked
/// `MADV_WIPEONFORK` (Linux 4.14): the kernel itself hands every forked child
/// that page zero-filled, however it was forked, and zero means "ask
/// `getpid`". Where the advice is refused (older kernels) every call asks.
/// The release rule depends on this being right after fork: a forked child
/// that believed it was its parent would remove the parent's lock file.
#[cfg(target_os = "linux")]
pub(crate) fn current_pid() -> u32 {
    use std::sync::atomic::Ordering;
    let cache = pid_cache();
    if cache.is_null() {
        return std::process::id();
    }
    // SAFETY: a non-null cache points into a page that is mapped for the
    // rest of the process's life (never unmapped once published).
    let slot = unsafe { &*cache };
    match slot.load(Ordering::Relaxed) {
        0 => {
            let pid = std::process::id();
            slot.store(pid, Ordering::Relaxed);
            pid
        }
        pid => pid,
    }
}

/// The wipe-on-fork page holding the cached PID; null where the kernel
/// refuses `MADV_WIPEONFORK` (then nothing is cached). Set up once.
#[cfg(target_os = "linux")]
fn pid_cache() -> *const std::sync::atomic::AtomicU32 {
    use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
    /// 0: not set up yet; 1: unsupported; else the page's address.
    static PAGE: AtomicUsize = AtomicUsize::new(0);
    const UNSUPPORTED: usize = 1;
    match PAGE.load(Ordering::Acquire) {
        0 => {}
        UNSUPPORTED => return std::ptr::null(),
        page => return page as *const AtomicU32,
    }
    // SAFETY: sysconf has no memory-safety preconditions.
    let len = match unsafe { libc::sysconf(libc::_SC_PAGESIZE) } {
        n if n > 0 => n as usize,
        _ => 4096,
    };
    // SAFETY: a fresh private anonymous mapping; no existing memory is touched.
    let page = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    let mut value = UNSUPPORTED;
    if page != libc::MAP_FAILED {
        // SAFETY: `page` is our own mapping of `len` bytes.
        if unsafe { libc::madvise(page, len, libc::MADV_WIPEONFORK) } == 0 {
            value = page as usize;
        } else {
            // SAFETY: unmapping the mapping made above, which nobody else saw.
            unsafe { libc::munmap(page, len) };
        }
    }
    match PAGE.compare_exchange(0, value, Ordering::AcqRel, Ordering::Acquire) {
        Ok(_) => {}
        Err(winner) => {
            // Another thread set it up first: use theirs.
            if value != UNSUPPORTED {
                // SAFETY: our mapping, never published.
                unsafe { libc::munmap(value as *mut libc::c_void, len) };
            }
            value = winner;
        }
    }
    if value == UNSUPPORTED {
        std::ptr::null()
    } else {
        value as *const AtomicU32
    }
}

/// This process's id (`getpid`: no fork-proof place to cache it here).
#[cfg(not(target_os = "linux"))]
pub(crate) fn current_pid() -> u32 {
    std::process::id()
}

/// How many times this process has forked (as counted by a
/// `pthread_atfork` parent handler, registered on the first call, so forks
/// before any lock was taken are not counted and need not be). A lock whose
/// count changed since it was taken may share its open file description
/// with a child: its release must not unlink the name under that child.
/// `posix_spawn` and `vfork`-style spawns run no handlers; their children
/// exec at once, and lock descriptors are close-on-exec. `None` if the
/// handler could not be registered: forks cannot be ruled out.
pub(crate) fn fork_count() -> Option<u64> {
    use std::sync::atomic::{AtomicU64, Ordering};
    static FORKS: AtomicU64 = AtomicU64::new(0);
    static COUNTING: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    extern "C" fn forked_parent() {
        FORKS.fetch_add(1, Ordering::Relaxed);
    }
    let counting = *COUNTING.get_or_init(|| {
        // SAFETY: registers a handler that only bumps an atomic (async-signal
        // safe, as a fork handler must be); nothing is ever unregistered.
        unsafe { libc::pthread_atfork(None, Some(forked_parent), None) == 0 }
    });
    counting.then(|| FORKS.load(Ordering::Relaxed))
}

/// The effective user id; lock dirs and files must belong to it.
pub(crate) fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// The default lock dir: a function of the effective user alone, so that
/// every session of one user (a login shell, ssh, tmux, cron, `sudo`,
/// `pam_tmpdir`) finds the same dir and so the same locks. No environment
/// variable moves it (`LLMLB_LOCK_DIR` is read above, in `resolve_lock_dir`):
/// not `TMPDIR`, which differs between sessions, and not `XDG_RUNTIME_DIR`,
/// which cron lacks and logind removes at logout while a server runs on.
///
/// - macOS: `llmlb-<euid>` in the per-user temp dir the system keeps for
///   this user (`confstr(_CS_DARWIN_USER_TEMP_DIR)`, what `TMPDIR` is set to
///   in a login session, but asked of the system, not of the environment);
///   `/tmp/llmlb-<euid>` if that fails.
/// - Other Unix: `/tmp/llmlb-<euid>`; for root `/run/llmlb` where `/run` is
///   a directory (root-only and cleared at boot, so nobody can squat it).
pub(crate) fn default_dir() -> PathBuf {
    #[cfg(target_vendor = "apple")]
    if let Some(dir) = darwin_user_temp_dir() {
        return dir.join(format!("llmlb-{}", euid()));
    }
    default_dir_for(euid(), Path::new("/run").is_dir())
}

/// [`default_dir`] off macOS, for `euid` on a system where `/run` is (or is
/// not) a directory.
fn default_dir_for(euid: u32, run_is_dir: bool) -> PathBuf {
    if euid == 0 && run_is_dir {
        PathBuf::from("/run/llmlb")
    } else {
        PathBuf::from(format!("/tmp/llmlb-{euid}"))
    }
}

/// The per-user temp dir of macOS (`/var/folders/…/T/`), from the system
/// rather than `TMPDIR`; `None` if it cannot be had or is not absolute.
#[cfg(target_vendor = "apple")]
fn darwin_user_temp_dir() -> Option<PathBuf> {
    use std::os::unix::ffi::OsStringExt as _;
    let mut buf = vec![0u8; libc::PATH_MAX as usize];
    // SAFETY: `buf` is writable for its whole length, which is passed.
    let len = unsafe {
        libc::confstr(
            libc::_CS_DARWIN_USER_TEMP_DIR,
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    // 0: an error; more than the buffer: truncated (never for a real path).
    if len == 0 || len > buf.len() {
        return None;
    }
    buf.truncate(len - 1); // the count includes the terminating NUL
    let dir = PathBuf::from(std::ffi::OsString::from_vec(buf));
    dir.is_absolute().then_some(dir)
}

/// Whether a file or directory (from `lstat`) belongs to a user other than
/// the effective one.
pub(crate) fn owned_by_another_user(meta: &Metadata) -> bool {
    meta.uid() != euid()
}

/// Creates `dir` (and missing parents) with mode 0700. An existing dir is fine:
/// [`check_dir`] judges it.
pub(crate) fn create_dir(dir: &Path) -> io::Result<()> {
    match DirBuilder::new().recursive(true).mode(0o700).create(dir) {
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        other => other,
    }
}

/// This machine's host name (empty if it cannot be read).
pub(crate) fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its whole length; gethostname writes at
    // most that many bytes.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return String::new();
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

/// Identity of process `pid` that survives PID reuse: its start time in clock
/// ticks since boot plus the boot id. `None` when the process does not exist.
#[cfg(target_os = "linux")]
pub(crate) fn process_identity(pid: u32) -> Option<ProcessIdentity> {
    // Bytes, not UTF-8: the command name (field 2) is whatever the process
    // chose, and a non-UTF-8 name must not make it unverifiable.
    let stat = std::fs::read(format!("/proc/{pid}/stat")).ok()?;
    Some(ProcessIdentity {
        boot_id: boot_id(),
        start_ticks: Some(start_ticks(&stat)?),
        pid_ns: None,
    })
}

/// The calling process's identity, with its PID namespace. Read through
/// `/proc/self`, which always describes the caller: in a PID namespace
/// without its own `/proc` (`unshare --pid --fork`), `/proc/<getpid()>` is
/// another process of the outer namespace.
#[cfg(target_os = "linux")]
pub(crate) fn own_identity() -> Option<ProcessIdentity> {
    use std::os::unix::fs::MetadataExt;
    let stat = std::fs::read("/proc/self/stat").ok()?;
    // The link's target, an nsfs inode: equal for every process of one
    // PID namespace, different across namespaces (containers).
    let pid_ns = std::fs::metadata("/proc/self/ns/pid")
        .ok()
        .map(|ns| format!("{}:{}", ns.dev(), ns.ino()));
    Some(ProcessIdentity {
        boot_id: boot_id(),
        start_ticks: Some(start_ticks(&stat)?),
        pid_ns,
    })
}

/// The calling process's identity (see the Linux version); no PID namespace
/// here.
#[cfg(not(target_os = "linux"))]
pub(crate) fn own_identity() -> Option<ProcessIdentity> {
    process_identity(current_pid())
}

/// Field `n` (1-based, as proc(5) numbers them; `n >= 3`) of a
/// `/proc/<pid>/stat` line, parsed. The command name (field 2) is in
/// parentheses and may itself contain spaces, `)` or any byte, so fields are
/// counted after the last `)`. The one reader of that line: identity (start
/// ticks) here, the parent PID for `supervise`'s process trees.
#[cfg(target_os = "linux")]
pub(crate) fn stat_field<T: std::str::FromStr>(stat: &[u8], n: usize) -> Option<T> {
    let close = stat.iter().rposition(|&b| b == b')')?;
    let field = stat[close + 1..]
        .split(|b| b.is_ascii_whitespace())
        .filter(|f| !f.is_empty())
        .nth(n.checked_sub(3)?)?;
    std::str::from_utf8(field).ok()?.parse().ok()
}

/// Field 22 (starttime) of a `/proc/<pid>/stat` line.
#[cfg(target_os = "linux")]
fn start_ticks(stat: &[u8]) -> Option<u64> {
    stat_field(stat, 22)
}

/// The parent PID of `pid` (field 4 of `/proc/<pid>/stat`); `None` if it is
/// gone or unreadable.
#[cfg(target_os = "linux")]
pub(crate) fn parent_pid(pid: u32) -> Option<u32> {
    stat_field(&std::fs::read(format!("/proc/{pid}/stat")).ok()?, 4)
}

/// Whether `pid` names a process that runs: `kill(pid, 0)` finds it (or is
/// refused it, `EPERM`: it exists), and, on Linux, it is not a zombie or
/// dying (a killed process keeps its PID until its parent reaps it, but runs
/// nothing). For the PIDs that files name (a pidfile, a handover peer's
/// reply), which are claims, not processes.
pub(crate) fn process_runs(pid: u32) -> bool {
    let Ok(raw) = valid_pid(pid) else {
        return false;
    };
    // SAFETY: signal 0 only checks that the process exists.
    if unsafe { libc::kill(raw, 0) } != 0
        && io::Error::last_os_error().raw_os_error() != Some(libc::EPERM)
    {
        return false;
    }
    #[cfg(target_os = "linux")]
    if let Ok(stat) = std::fs::read(format!("/proc/{pid}/stat")) {
        if matches!(stat_field::<char>(&stat, 3), Some('Z' | 'X' | 'x')) {
            return false;
        }
    }
    true
}

/// When process `pid` started, in whole seconds since the epoch; `None` if
/// it is gone or the platform does not say. Linux: its start time in clock
/// ticks after boot (`/proc/<pid>/stat`) plus the boot time (`btime` of
/// `/proc/stat`); macOS: from [`process_identity`].
pub(crate) fn process_started_at(pid: u32) -> Option<i64> {
    #[cfg(target_os = "linux")]
    {
        let ticks = process_identity(pid)?.start_ticks?;
        let stat = std::fs::read_to_string("/proc/stat").ok()?;
        let btime: i64 = stat
            .lines()
            .find_map(|line| line.strip_prefix("btime "))?
            .trim()
            .parse()
            .ok()?;
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
        let hz = u64::try_from(hz).ok().filter(|&hz| hz > 0)?;
        Some(btime + i64::try_from(ticks / hz).ok()?)
    }
    #[cfg(target_os = "macos")]
    {
        let micros = process_identity(pid)?.start_ticks?;
        i64::try_from(micros / 1_000_000).ok()
    }
    #[cfg(not(any(target_os = "linux", target_os = "macos")))]
    {
        let _ = pid;
        None
    }
}

#[cfg(target_os = "linux")]
fn boot_id() -> Option<String> {
    static BOOT_ID: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    BOOT_ID
        .get_or_init(|| {
            std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
                .ok()
                .map(|s| s.trim().to_owned())
        })
        .clone()
}

/// Identity of process `pid` on macOS: its start time (microseconds since
/// the epoch, from `proc_pidinfo(PROC_PIDTBSDINFO)`) plus the boot time
/// (`sysctl kern.boottime`) as the boot marker. `None` when the process does
/// not exist or cannot be inspected.
#[cfg(target_os = "macos")]
pub(crate) fn process_identity(pid: u32) -> Option<ProcessIdentity> {
    let pid = valid_pid(pid).ok()?;
    // SAFETY: proc_bsdinfo is plain old data; all zeroes is a valid value.
    let mut info: libc::proc_bsdinfo = unsafe { std::mem::zeroed() };
    let size = std::mem::size_of::<libc::proc_bsdinfo>() as libc::c_int;
    // SAFETY: `info` is a writable buffer of `size` bytes for the call.
    let n = unsafe {
        libc::proc_pidinfo(
            pid,
            libc::PROC_PIDTBSDINFO,
            0,
            (&mut info as *mut libc::proc_bsdinfo).cast(),
            size,
        )
    };
    if n != size {
        return None;
    }
    let start = info
        .pbi_start_tvsec
        .checked_mul(1_000_000)?
        .checked_add(info.pbi_start_tvusec)?;
    Some(ProcessIdentity {
        boot_id: boot_time(),
        start_ticks: Some(start),
        pid_ns: None,
    })
}

/// `kern.boottime` as `"<sec>.<usec>"`: it changes with every boot.
#[cfg(target_os = "macos")]
fn boot_time() -> Option<String> {
    static BOOT_TIME: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    BOOT_TIME
        .get_or_init(|| {
            let mut mib = [libc::CTL_KERN, libc::KERN_BOOTTIME];
            // SAFETY: timeval is plain old data; all zeroes is a valid value.
            let mut tv: libc::timeval = unsafe { std::mem::zeroed() };
            let mut len = std::mem::size_of::<libc::timeval>();
            // SAFETY: `tv` is a writable buffer of `len` bytes; no new value.
            let rc = unsafe {
                libc::sysctl(
                    mib.as_mut_ptr(),
                    mib.len() as libc::c_uint,
                    (&mut tv as *mut libc::timeval).cast(),
                    &mut len,
                    std::ptr::null_mut(),
                    0,
                )
            };
            (rc == 0 && len == std::mem::size_of::<libc::timeval>())
                .then(|| format!("{}.{:06}", tv.tv_sec, tv.tv_usec))
        })
        .clone()
}

/// Identity of process `pid`; not available on this Unix (see the Linux and
/// macOS versions).
#[cfg(not(any(target_os = "linux", target_os = "macos")))]
pub(crate) fn process_identity(_pid: u32) -> Option<ProcessIdentity> {
    None
}

/// Signals `stop` and exec mode may send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Signal {
    Int,
    Term,
    Kill,
    Hup,
    Usr1,
    Quit,
    Winch,
}

impl Signal {
    fn raw(self) -> libc::c_int {
        match self {
            Signal::Int => libc::SIGINT,
            Signal::Term => libc::SIGTERM,
            Signal::Kill => libc::SIGKILL,
            Signal::Hup => libc::SIGHUP,
            Signal::Usr1 => libc::SIGUSR1,
            Signal::Quit => libc::SIGQUIT,
            Signal::Winch => libc::SIGWINCH,
        }
    }
}

/// Whether `status` is a death by `sig`.
pub(crate) fn died_of(status: std::process::ExitStatus, sig: Signal) -> bool {
    use std::os::unix::process::ExitStatusExt;
    status.signal() == Some(sig.raw())
}

/// Dies of `sig` as if it had never been handled: restores its default
/// action, unblocks it and raises it on this thread, so a parent's `wait`
/// sees a death by `sig` (what shells and systemd read as "stopped by that
/// signal"). Returns only if the signal did not end the process (it cannot
/// for `Winch`, whose default is to ignore).
pub(crate) fn die_of(sig: Signal) {
    let raw = sig.raw();
    // SAFETY: plain values; the zeroed sigaction is a valid SIG_DFL action
    // with an empty mask, and the sigset is initialised by sigemptyset.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = libc::SIG_DFL;
        libc::sigemptyset(&mut action.sa_mask);
        libc::sigaction(raw, &action, std::ptr::null_mut());
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, raw);
        libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
        libc::raise(raw);
    }
}

fn valid_pid(pid: u32) -> io::Result<libc::pid_t> {
    match libc::pid_t::try_from(pid) {
        Ok(pid) if pid > 0 => Ok(pid),
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "pid out of range",
        )),
    }
}

/// A process held for signalling. On Linux it is a pidfd: it names that one
/// process for good, so a signal sent through it can never reach a process
/// that reused the PID (`ESRCH` instead). Elsewhere (or on kernels before
/// 5.3) it is only the number, and the caller must re-check the process's
/// identity immediately before each signal ([`PinnedProcess::is_pinned`]).
#[derive(Debug)]
pub(crate) struct PinnedProcess {
    pid: libc::pid_t,
    #[cfg(target_os = "linux")]
    pidfd: Option<OwnedFd>,
}

/// Pins process `pid`: `NotFound` if no such process exists now; any other
/// error is what it is (a thread id, `/proc` from another PID namespace,
/// `EMFILE`, `EACCES`), never "gone".
///
/// On Linux the pin is a pidfd, and it is checked against this process's
/// `/proc` (`/proc/self/fdinfo/<pidfd>` shows the pinned process's number
/// there): a `/proc` mounted from another PID namespace would make every
/// later `/proc/<pid>` read describe someone else, so it is refused. Without
/// pidfds (`ENOSYS`, or `EPERM` from a seccomp filter) the number is kept,
/// but only for a thread-group leader (`Tgid` = `pid`).
pub(crate) fn pin_process(pid: u32) -> io::Result<PinnedProcess> {
    let raw_pid = valid_pid(pid)?;
    #[cfg(target_os = "linux")]
    {
        // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
        let raw = unsafe { libc::syscall(libc::SYS_pidfd_open, raw_pid, 0) };
        if raw >= 0 {
            // SAFETY: a fresh descriptor that nothing else owns; fds fit c_int.
            let fd = unsafe { OwnedFd::from_raw_fd(raw as libc::c_int) };
            check_pidfd_in_this_proc(&fd, pid)?;
            return Ok(PinnedProcess {
                pid: raw_pid,
                pidfd: Some(fd),
            });
        }
        let err = io::Error::last_os_error();
        match err.raw_os_error() {
            Some(libc::ESRCH) => return Err(io::ErrorKind::NotFound.into()),
            // pidfd_open refuses a thread that does not lead its group:
            // EINVAL, ENOENT on newer kernels. A thread id is refused (a
            // signal to it would reach its whole process); a number that
            // is gone is "gone"; anything else is reported as it is.
            Some(libc::EINVAL) | Some(libc::ENOENT) => {
                check_leads_thread_group(pid)?;
                return Err(io::Error::other(format!("pidfd_open({pid}): {err}")));
            }
            // No pidfds here (old kernel, seccomp): fall back to the number.
            Some(libc::ENOSYS) | Some(libc::EPERM) => {}
            _ => return Err(err),
        }
        check_leads_thread_group(pid)?;
        Ok(PinnedProcess {
            pid: raw_pid,
            pidfd: None,
        })
    }
    #[cfg(not(target_os = "linux"))]
    {
        // SAFETY: signal 0 only checks that the process exists.
        if unsafe { libc::kill(raw_pid, 0) } != 0 {
            let err = io::Error::last_os_error();
            if err.raw_os_error() == Some(libc::ESRCH) {
                return Err(io::ErrorKind::NotFound.into());
            }
        }
        Ok(PinnedProcess { pid: raw_pid })
    }
}

#[cfg(target_os = "linux")]
fn not_a_process(pid: u32) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        format!("{pid} is a thread of another process, not a process"),
    )
}

/// The `Pid:` line of `/proc/self/fdinfo/<pidfd>`: the pinned process's
/// number in the PID namespace of this `/proc`. It must be `pid` (the
/// number in ours); `0` means the process is not visible in that namespace,
/// `-1` that it has exited. Kernels before 5.4 have no such line: nothing to
/// check there.
#[cfg(target_os = "linux")]
fn check_pidfd_in_this_proc(fd: &OwnedFd, pid: u32) -> io::Result<()> {
    let fdinfo = match std::fs::read(format!("/proc/self/fdinfo/{}", fd.as_raw_fd())) {
        Ok(fdinfo) => fdinfo,
        Err(e) => {
            return Err(io::Error::new(
                e.kind(),
                format!("cannot read /proc/self/fdinfo to check that /proc shows PID {pid}: {e}"),
            ))
        }
    };
    let Some(shown) = proc_field(&fdinfo, b"Pid:") else {
        return Ok(());
    };
    match shown {
        Some(n) if n == i64::from(pid) => Ok(()),
        Some(-1) => Err(io::ErrorKind::NotFound.into()),
        _ => Err(io::Error::other(format!(
            "this /proc belongs to another PID namespace (PID {pid} here is {} there), so \
             nothing read from /proc/{pid} describes it; run stop where /proc matches \
             (mount a /proc for this namespace)",
            match shown {
                Some(0) | None => "not visible".to_owned(),
                Some(n) => format!("PID {n}"),
            }
        ))),
    }
}

/// Refuses a number that is a thread of another process (the fallback's
/// twin of pidfd_open's `EINVAL`): `/proc/<pid>/status` `Tgid` must be `pid`.
#[cfg(target_os = "linux")]
fn check_leads_thread_group(pid: u32) -> io::Result<()> {
    let status = match std::fs::read(format!("/proc/{pid}/status")) {
        Ok(status) => status,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(e),
        Err(e) => {
            return Err(io::Error::new(
                e.kind(),
                format!("cannot read /proc/{pid}/status: {e}"),
            ))
        }
    };
    match proc_field(&status, b"Tgid:") {
        Some(Some(tgid)) if tgid == i64::from(pid) => Ok(()),
        _ => Err(not_a_process(pid)),
    }
}

/// The number after `key` on its line of a `/proc` key-value file: `None`
/// if there is no such line, `Some(None)` if it does not parse.
#[cfg(target_os = "linux")]
fn proc_field(text: &[u8], key: &[u8]) -> Option<Option<i64>> {
    let line = text
        .split(|&b| b == b'\n')
        .find(|line| line.starts_with(key))?;
    let value = std::str::from_utf8(&line[key.len()..]).ok().map(str::trim);
    Some(value.and_then(|v| v.parse().ok()))
}

impl PinnedProcess {
    /// True when signals go through a pidfd and so cannot reach a reused PID.
    pub(crate) fn is_pinned(&self) -> bool {
        #[cfg(target_os = "linux")]
        {
            self.pidfd.is_some()
        }
        #[cfg(not(target_os = "linux"))]
        {
            false
        }
    }

    /// Whether the pinned process has exited (by then the kernel has closed
    /// its descriptors and dropped its locks); `None` when not pinned.
    pub(crate) fn has_exited(&self) -> Option<bool> {
        #[cfg(target_os = "linux")]
        {
            let fd = self.pidfd.as_ref()?;
            let mut pfd = libc::pollfd {
                fd: fd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd, zero timeout.
            let rc = unsafe { libc::poll(&mut pfd, 1, 0) };
            Some(rc > 0 && pfd.revents & (libc::POLLIN | libc::POLLHUP) != 0)
        }
        #[cfg(not(target_os = "linux"))]
        {
            None
        }
    }

    /// Sends `sig` to the pinned process (through the pidfd where there is
    /// one). `NotFound` once it has exited.
    pub(crate) fn signal(&self, sig: Signal) -> io::Result<()> {
        #[cfg(target_os = "linux")]
        if let Some(fd) = &self.pidfd {
            return pidfd_send_signal(fd, sig, 0).map_err(esrch_as_not_found);
        }
        // SAFETY: kill has no memory-safety preconditions; pid > 0 targets one process.
        match unsafe { libc::kill(self.pid, sig.raw()) } {
            0 => Ok(()),
            _ => Err(esrch_as_not_found(io::Error::last_os_error())),
        }
    }

    /// Sends `sig` to the process group the pinned process belongs to.
    /// Through the pidfd with `PIDFD_SIGNAL_PROCESS_GROUP` where the kernel
    /// has it (Linux 6.9+), so the group is reached through the verified
    /// process, never by a bare number; elsewhere (older kernels, no pidfd,
    /// other Unix) `kill(-pid)`, for a caller that has just verified that the
    /// pinned process leads its group.
    pub(crate) fn signal_own_group(&self, sig: Signal) -> io::Result<()> {
        #[cfg(target_os = "linux")]
        if let Some(fd) = &self.pidfd {
            /// `PIDFD_SIGNAL_PROCESS_GROUP` from `<linux/pidfd.h>` (6.9).
            const PIDFD_SIGNAL_PROCESS_GROUP: libc::c_uint = 1 << 2;
            match pidfd_send_signal(fd, sig, PIDFD_SIGNAL_PROCESS_GROUP) {
                Ok(()) => return Ok(()),
                // EINVAL: a kernel without the flag; fall back to the number.
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {}
                Err(e) => return Err(esrch_as_not_found(e)),
            }
        }
        signal_group(self.pid as u32, sig)
    }
}

/// `pidfd_send_signal(fd, sig, NULL, flags)`.
#[cfg(target_os = "linux")]
fn pidfd_send_signal(fd: &OwnedFd, sig: Signal, flags: libc::c_uint) -> io::Result<()> {
    // SAFETY: valid pidfd; a NULL siginfo means "as kill(2) would".
    let rc = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            fd.as_raw_fd(),
            sig.raw(),
            std::ptr::null::<libc::siginfo_t>(),
            flags,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn esrch_as_not_found(err: io::Error) -> io::Error {
    if err.raw_os_error() == Some(libc::ESRCH) {
        io::ErrorKind::NotFound.into()
    } else {
        err
    }
}

/// `kill(-pgid, sig)`: the whole process group (grandchildren included).
pub(crate) fn signal_group(pgid: u32, sig: Signal) -> io::Result<()> {
    let pgid = libc::pid_t::try_from(pgid)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "pgid out of range"))?;
    if pgid <= 1 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "pgid out of range",
        ));
    }
    // SAFETY: as above; -pgid targets one process group, never "all processes".
    if unsafe { libc::kill(-pgid, sig.raw()) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Release of an owned lock file: unlink the name while still holding the
/// lock, then close. Unlinking first means a contender that opened the old
/// inode notices (its inode re-check fails) instead of locking a dead file.
/// On failure the descriptor (and so the lock) is handed back untouched.
pub(crate) fn remove_held(
    dir: &DirHandle,
    name: &LockName,
    file: File,
) -> Result<(), (File, io::Error)> {
    // SAFETY: valid dir fd and NUL-terminated name.
    let unlinked = cvt(unsafe { libc::unlinkat(dir.fd.as_raw_fd(), name.as_c_str().as_ptr(), 0) });
    match unlinked {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err((file, e)),
    }
    drop(file);
    Ok(())
}

/// Nothing to do on Unix: closing the last descriptor of an open file
/// description drops its flock at once, and an explicit unlock would also
/// take the lock away from a forked child that shares the description.
pub(crate) fn unlock_before_close(_file: &File) {}

/// Never on Unix: an open is not refused because another process is removing
/// the file (Windows' sharing violation while a holder deletes it).
pub(crate) fn is_transient_open_error(_err: &io::Error) -> bool {
    false
}

/// True for `ENOLCK`: the file system cannot lock (NFS mounted `nolock`).
pub(crate) fn is_no_locks_error(err: &io::Error) -> bool {
    err.raw_os_error() == Some(libc::ENOLCK)
}

/// Puts the command's child in a process group of its own (pgid = its PID, so
/// the whole tree can be signalled with `kill(-pgid)`), and on Linux asks the
/// kernel to SIGKILL it when the thread that spawned it dies
/// (`PR_SET_PDEATHSIG`), so a killed launcher cannot leave it running without
/// the launcher. Descriptors we hold are close-on-exec (std opens them
/// `O_CLOEXEC`) unless [`pass_to_child`] says otherwise.
pub(crate) fn configure_child(cmd: &mut std::process::Command) {
    use std::os::unix::process::CommandExt;
    cmd.process_group(0);
    #[cfg(target_os = "linux")]
    {
        let parent = libc::pid_t::try_from(std::process::id()).unwrap_or(0);
        // SAFETY: the closure runs between fork and exec and calls only
        // async-signal-safe syscalls (prctl, getppid); it allocates nothing.
        unsafe {
            cmd.pre_exec(move || {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) != 0 {
                    return Err(io::Error::last_os_error());
                }
                // The parent may have died before prctl took effect: then
                // no death signal will ever come, so do not start at all.
                if libc::getppid() != parent {
                    return Err(io::Error::other(
                        "launcher exited before the command started",
                    ));
                }
                Ok(())
            });
        }
    }
}

/// A duplicate of the lock descriptor made for one child: close-on-exec in
/// this process, kept open across `exec` in the child. Drop it once the child
/// has been spawned.
#[derive(Debug)]
pub(crate) struct ChildFd(std::os::fd::OwnedFd);

impl ChildFd {
    /// The descriptor number the child finds the lock under.
    pub(crate) fn number(&self) -> u32 {
        use std::os::fd::AsRawFd;
        // Descriptors are never negative.
        u32::try_from(self.0.as_raw_fd()).unwrap_or(0)
    }
}

/// Lets the child spawned from `cmd` inherit the open file description of
/// `file` (the lock): flock belongs to the description, so the child and
/// everything it forks hold the lock for as long as any of them keeps the
/// descriptor, even after the launcher is gone.
///
/// The duplicate is made here, in the parent, at a number >= 4 (so neither
/// the child's stdio set-up nor a socket passed as descriptor 3, the first
/// of the `LISTEN_FDS` protocol, can clobber it) and close-on-exec (so no other
/// spawn inherits it); only the child clears the flag, between fork and exec.
pub(crate) fn pass_to_child(cmd: &mut std::process::Command, file: &File) -> io::Result<ChildFd> {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    use std::os::unix::process::CommandExt;
    // SAFETY: fcntl(F_DUPFD_CLOEXEC) on a descriptor we own; the result is a
    // new descriptor nobody else owns, handed to OwnedFd at once.
    let fd = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 4) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by fcntl and is owned by nobody else.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: runs between fork and exec; fcntl is async-signal-safe and
    // changes only the child's own descriptor table entry.
    unsafe {
        cmd.pre_exec(move || {
            if libc::fcntl(fd, libc::F_SETFD, 0) != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    Ok(ChildFd(owned))
}

/// The raw descriptor of an open lock file, for C and Python launchers that
/// pass it to their child themselves.
pub(crate) fn raw_descriptor(file: &File) -> i32 {
    use std::os::fd::AsRawFd;
    file.as_raw_fd()
}

/// Makes this process the reaper of its orphaned descendants (Linux
/// `PR_SET_CHILD_SUBREAPER`): a command's grandchild whose parent exits is
/// re-parented to us instead of to init, so we can see it die and reap it
/// (an init that never reaps, as in some containers, would otherwise leave
/// its zombie in the group forever). `Ok(false)` where unsupported.
pub(crate) fn become_subreaper() -> io::Result<bool> {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: prctl with integer arguments; no memory is passed.
        if unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(true)
    }
    #[cfg(not(target_os = "linux"))]
    Ok(false)
}

/// Reaps every exited child of ours except those in `keep` (the direct
/// children whose status tokio or the caller collects): the orphans a
/// subreaper inherits. Peeks with `WNOWAIT` first so `keep` is never
/// reaped here.
pub(crate) fn reap_orphans(keep: &[u32]) {
    #[cfg(target_os = "linux")]
    loop {
        // SAFETY: siginfo_t is plain data; zeroed is a valid value.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: waitid writes into `info`, which lives for the call.
        let rc = unsafe {
            libc::waitid(
                libc::P_ALL,
                0,
                &mut info,
                libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
            )
        };
        // SAFETY: si_pid is valid to read for a waitid result (0 when no
        // child has exited).
        let pid = unsafe { info.si_pid() };
        if rc != 0 || pid <= 0 || u32::try_from(pid).is_ok_and(|pid| keep.contains(&pid)) {
            return;
        }
        let mut status = 0;
        // SAFETY: reaps exactly the exited child waitid reported.
        unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
    }
    #[cfg(not(target_os = "linux"))]
    let _ = keep;
}

/// The children of `pid` (Linux: `/proc/PID/task/PID/children`; elsewhere
/// none are known).
pub(crate) fn child_pids(pid: u32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .map(|list| {
            list.split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Whether no process of group `pgid` is left: reaps the group's exited
/// children of ours first (zombies count as members until reaped), then
/// asks `kill(-pgid, 0)`. Call only once the group's leader, if it is our
/// child, has been waited for: `waitpid(-pgid)` would steal its status.
fn group_gone(pgid: u32) -> bool {
    let Ok(pgid) = libc::pid_t::try_from(pgid) else {
        return true;
    };
    if pgid <= 1 {
        return true;
    }
    loop {
        let mut status = 0;
        // SAFETY: waitpid on our own children in group pgid, non-blocking.
        if unsafe { libc::waitpid(-pgid, &mut status, libc::WNOHANG) } <= 0 {
            break;
        }
    }
    // SAFETY: signal 0 only checks existence; -pgid > 1 targets one group.
    let rc = unsafe { libc::kill(-pgid, 0) };
    rc != 0 && io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH)
}

/// Whether `pid` is a live process leading its own process group (what a
/// launcher must record as its child's group).
pub(crate) fn leads_group(pid: u32) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return false;
    };
    // SAFETY: getpgid has no memory-safety preconditions.
    pid > 1 && unsafe { libc::getpgid(pid) } == pid
}

/// The process group the child got from [`configure_child`]: its own PID.
fn child_pgid(child_pid: u32) -> Option<u32> {
    Some(child_pid)
}

/// Shell convention for a child's end: its exit code, or 128 + signal number
/// if a signal killed it.
pub(crate) fn exit_code(status: std::process::ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => code,
        (None, Some(sig)) => 128 + sig,
        (None, None) => 1,
    }
}

/// Unix needs no stop channel: `stop` sends `SIGTERM` to the holder, which a
/// process handles (or dies of) by itself.
#[derive(Debug)]
pub(crate) struct StopChannel;

/// Nothing to create on Unix (see [`StopChannel`]).
pub(crate) fn create_stop_channel(_dir: &DirHandle, _port: u16) -> io::Result<StopChannel> {
    Ok(StopChannel)
}

impl StopChannel {
    /// Never reports a request (it comes as `SIGTERM`): sleeps for `timeout`
    /// in one `nanosleep`, which a signal handler interrupts, so a caller
    /// that checks its own flag after each wait sees `SIGTERM` promptly.
    pub(crate) fn wait(&self, timeout: std::time::Duration) -> bool {
        let ts = libc::timespec {
            tv_sec: libc::time_t::try_from(timeout.as_secs()).unwrap_or(libc::time_t::MAX),
            tv_nsec: timeout.subsec_nanos() as _,
        };
        // SAFETY: `ts` is a valid timespec; the remainder is not wanted.
        unsafe { libc::nanosleep(&ts, std::ptr::null_mut()) };
        false
    }
}

/// Asks the verified holder to stop: `SIGTERM` through its pin.
pub(crate) fn request_stop(
    _dir: &DirHandle,
    _port: u16,
    _pid: u32,
    process: &PinnedProcess,
) -> io::Result<()> {
    process.signal(Signal::Term)
}

/// The exec child's tree on Unix: its process group (see [`configure_child`]).
#[derive(Debug)]
pub(crate) struct ChildTree {
    pgid: u32,
}

/// The child's process group, made by [`configure_child`]; it is already
/// running.
pub(crate) fn attach_child(pid: u32) -> io::Result<ChildTree> {
    match child_pgid(pid) {
        Some(pgid) => Ok(ChildTree { pgid }),
        None => Err(io::ErrorKind::InvalidInput.into()),
    }
}

impl ChildTree {
    /// The group, to record for `stop --force`.
    pub(crate) fn pgid(&self) -> Option<u32> {
        Some(self.pgid)
    }

    /// `kill(-pgid, sig)`.
    pub(crate) fn signal(&self, sig: Signal) -> io::Result<()> {
        signal_group(self.pgid, sig)
    }

    /// See [`group_gone`].
    pub(crate) fn is_gone(&self) -> bool {
        group_gone(self.pgid)
    }
}

/// The most descriptors one handover message carries: the lock's and the
/// listening sockets (a server rarely listens on more than two).
pub(crate) const MAX_PASSED_FDS: usize = 8;

/// Sends `bytes` on `stream` with `fds` attached (`SCM_RIGHTS`): the
/// receiver gets its own descriptors of the same open file descriptions
/// (for the lock's, the same kernel lock). `MSG_NOSIGNAL`: a peer gone
/// is an `EPIPE` error, never a `SIGPIPE`.
pub(crate) fn send_with_fds(
    stream: &std::os::unix::net::UnixStream,
    bytes: &[u8],
    fds: &[BorrowedFd<'_>],
) -> io::Result<()> {
    if fds.len() > MAX_PASSED_FDS || bytes.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "a handover message carries 1 to 8 descriptors and some bytes",
        ));
    }
    let fd_bytes = std::mem::size_of_val(fds);
    // u64 storage keeps the control buffer aligned for cmsghdr.
    let mut control = [0u64; 64];
    // SAFETY: CMSG_SPACE only computes a size.
    let space = unsafe { libc::CMSG_SPACE(fd_bytes as u32) } as usize;
    debug_assert!(space <= std::mem::size_of_val(&control));
    let mut iov = libc::iovec {
        iov_base: bytes.as_ptr() as *mut libc::c_void,
        iov_len: bytes.len(),
    };
    // SAFETY: an all-zero msghdr is valid (null pointers, zero lengths).
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    if !fds.is_empty() {
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = space as _;
        // SAFETY: msg_control points at `space` writable, aligned bytes, so
        // the first header and its data (CMSG_LEN(fd_bytes) <= space) fit.
        unsafe {
            let cmsg = libc::CMSG_FIRSTHDR(&msg);
            (*cmsg).cmsg_level = libc::SOL_SOCKET;
            (*cmsg).cmsg_type = libc::SCM_RIGHTS;
            (*cmsg).cmsg_len = libc::CMSG_LEN(fd_bytes as u32) as _;
            let data = libc::CMSG_DATA(cmsg).cast::<libc::c_int>();
            for (i, fd) in fds.iter().enumerate() {
                data.add(i).write_unaligned(fd.as_raw_fd());
            }
        }
    }
    let mut sent = 0;
    while sent < bytes.len() {
        if sent > 0 {
            // The descriptors went with the first part; the rest is bytes.
            msg.msg_control = std::ptr::null_mut();
            msg.msg_controllen = 0;
            iov.iov_base = bytes[sent..].as_ptr() as *mut libc::c_void;
            iov.iov_len = bytes.len() - sent;
            msg.msg_iov = &mut iov;
        }
        // SAFETY: `msg` points at live buffers for the duration of the call.
        let n = unsafe { libc::sendmsg(stream.as_raw_fd(), &msg, NO_SIGPIPE) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        sent += n as usize;
    }
    Ok(())
}

#[cfg(any(target_os = "linux", target_os = "android"))]
const NO_SIGPIPE: libc::c_int = libc::MSG_NOSIGNAL;
// macOS has no MSG_NOSIGNAL; Rust ignores SIGPIPE in every binary anyway.
#[cfg(not(any(target_os = "linux", target_os = "android")))]
const NO_SIGPIPE: libc::c_int = 0;

/// Receives bytes into `buf` and any descriptors attached (`SCM_RIGHTS`),
/// each close-on-exec. A message with more descriptors than
/// [`MAX_PASSED_FDS`] is truncated by the kernel: that is an error (the
/// descriptors that did arrive are closed).
pub(crate) fn recv_with_fds(
    stream: &std::os::unix::net::UnixStream,
    buf: &mut [u8],
) -> io::Result<(usize, Vec<OwnedFd>)> {
    let mut control = [0u64; 64];
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: an all-zero msghdr is valid.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    // SAFETY: CMSG_SPACE only computes a size.
    msg.msg_controllen =
        unsafe { libc::CMSG_SPACE((MAX_PASSED_FDS * std::mem::size_of::<libc::c_int>()) as u32) }
            as _;
    let n = loop {
        // SAFETY: `msg` points at live, writable buffers of the sizes given.
        let n = unsafe { libc::recvmsg(stream.as_raw_fd(), &mut msg, RECV_CLOEXEC) };
        if n >= 0 {
            break n as usize;
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    };
    let mut fds = Vec::new();
    // SAFETY: the kernel filled `msg_controllen` bytes of well-formed
    // headers; CMSG_FIRSTHDR/NXTHDR walk only within them.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(cmsg).cast::<libc::c_int>();
                let header = libc::CMSG_LEN(0) as usize;
                let count =
                    ((*cmsg).cmsg_len as usize - header) / std::mem::size_of::<libc::c_int>();
                for i in 0..count {
                    let fd = data.add(i).read_unaligned();
                    let fd = OwnedFd::from_raw_fd(fd);
                    #[cfg(not(any(target_os = "linux", target_os = "android")))]
                    set_cloexec(&fd);
                    fds.push(fd);
                }
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
    }
    if msg.msg_flags & libc::MSG_CTRUNC != 0 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "more descriptors were sent than a handover carries",
        ));
    }
    Ok((n, fds))
}

#[cfg(any(target_os = "linux", target_os = "android"))]
const RECV_CLOEXEC: libc::c_int = libc::MSG_CMSG_CLOEXEC;
#[cfg(not(any(target_os = "linux", target_os = "android")))]
const RECV_CLOEXEC: libc::c_int = 0;

/// Close-on-exec for a received descriptor where `recvmsg` cannot set it
/// (a launcher must not leak it into the command it runs).
#[cfg(not(any(target_os = "linux", target_os = "android")))]
fn set_cloexec(fd: &OwnedFd) {
    // SAFETY: F_GETFD/F_SETFD on a descriptor we own.
    unsafe {
        let flags = libc::fcntl(fd.as_raw_fd(), libc::F_GETFD);
        if flags >= 0 {
            libc::fcntl(fd.as_raw_fd(), libc::F_SETFD, flags | libc::FD_CLOEXEC);
        }
    }
}

/// Who is at the other end of a connected Unix socket: its effective uid,
/// and its PID where the platform tells (Linux `SO_PEERCRED`: the process
/// that connected, or that called `listen` for the server's end).
pub(crate) fn peer_credentials(
    stream: &std::os::unix::net::UnixStream,
) -> io::Result<(u32, Option<u32>)> {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    {
        // SAFETY: an all-zero ucred is valid; getsockopt writes at most len.
        let mut cred: libc::ucred = unsafe { std::mem::zeroed() };
        let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
        // SAFETY: `cred` and `len` are valid for writes of the sizes given.
        let rc = unsafe {
            libc::getsockopt(
                stream.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_PEERCRED,
                (&mut cred as *mut libc::ucred).cast(),
                &mut len,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok((cred.uid, u32::try_from(cred.pid).ok().filter(|&p| p > 0)))
    }
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    {
        let mut uid: libc::uid_t = 0;
        let mut gid: libc::gid_t = 0;
        // SAFETY: both out-pointers are valid for writes.
        if unsafe { libc::getpeereid(stream.as_raw_fd(), &mut uid, &mut gid) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok((uid, None))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A PID is a claim: this process runs, a child that has exited but is
    /// not reaped yet (a zombie, as a SIGKILLed server is until its parent
    /// waits) does not, and neither does one reaped.
    #[test]
    fn only_a_process_that_runs_runs() {
        assert!(process_runs(std::process::id()));
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        #[cfg(target_os = "linux")]
        {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
            while std::fs::read(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|s| stat_field::<char>(&s, 3))
                != Some('Z')
            {
                assert!(std::time::Instant::now() < deadline, "no zombie");
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
            assert!(!process_runs(pid), "a zombie runs nothing");
        }
        child.wait().unwrap();
        assert!(!process_runs(pid));
        #[cfg(any(target_os = "linux", target_os = "macos"))]
        {
            let started = process_started_at(std::process::id()).expect("our own start time");
            let now = chrono::Utc::now().timestamp();
            assert!(
                started <= now && started > now - 86_400 * 365,
                "{started} vs {now}"
            );
        }
    }
}
