//! Unix implementation of the platform boundary (Linux is where it is tested).
#![allow(clippy::disallowed_methods)] // this module is the one allowed caller of fs2

use std::fs::{DirBuilder, File, Metadata, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, FileExt as _, MetadataExt, OpenOptionsExt};
use std::path::Path;

use fs2::FileExt as Fs2FileExt;

use super::{FileId, OpenFileStat, Refusal, TryLock};
use crate::lock::info::ProcessIdentity;

/// Opens (creating if needed) a lock file for the holder: read-write, mode
/// 0600, never following a symlink (`ELOOP` instead), close-on-exec (std's
/// default), and without `O_TRUNC`: a contender must never clobber the info of
/// the process that holds the lock. `O_NONBLOCK` keeps a FIFO planted at the
/// path from hanging us; it has no effect on regular files.
pub(crate) fn open_for_lock(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
}

/// Opens an existing lock file read-only for probing; never creates it.
pub(crate) fn open_for_probe(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
}

/// True when `err` is what `open` returns for a symlink under `O_NOFOLLOW`.
pub(crate) fn is_symlink_error(err: &io::Error) -> bool {
    err.raw_os_error() == Some(libc::ELOOP)
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
pub(crate) fn try_lock_exclusive(file: &File) -> io::Result<TryLock> {
    map_try(Fs2FileExt::try_lock_exclusive(file))
}

/// `flock(LOCK_SH | LOCK_NB)`: fails exactly when someone holds it exclusively.
pub(crate) fn try_lock_shared(file: &File) -> io::Result<TryLock> {
    map_try(Fs2FileExt::try_lock_shared(file))
}

fn id_of(meta: &Metadata) -> FileId {
    FileId {
        dev: meta.dev(),
        ino: meta.ino(),
    }
}

/// One `fstat` of an open lock file.
pub(crate) fn stat_open(file: &File) -> io::Result<OpenFileStat> {
    let meta = file.metadata()?;
    Ok(OpenFileStat {
        id: id_of(&meta),
        len: meta.len(),
        is_regular: meta.file_type().is_file(),
        owned_by_us: meta.uid() == euid(),
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

/// The effective user id; lock dirs and files must belong to it.
pub(crate) fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// Name of the per-user default lock dir under the temp dir.
pub(crate) fn default_dir_name() -> String {
    format!("llmlb-{}", euid())
}

/// Creates `dir` (and missing parents) with mode 0700. An existing dir is fine:
/// [`check_dir`] judges it.
pub(crate) fn create_dir(dir: &Path) -> io::Result<()> {
    match DirBuilder::new().recursive(true).mode(0o700).create(dir) {
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        other => other,
    }
}

/// Refuses a lock dir that another local user could tamper with: a symlink
/// (could be re-pointed), not a directory, owned by someone else, or writable
/// by group/others (they could plant or delete lock files).
pub(crate) fn check_dir(meta: &Metadata) -> Result<(), Refusal> {
    if meta.file_type().is_symlink() {
        return Err("is a symlink");
    }
    if !meta.is_dir() {
        return Err("is not a directory");
    }
    if meta.uid() != euid() {
        return Err("is owned by another user");
    }
    if meta.mode() & 0o022 != 0 {
        return Err("is writable by group or others");
    }
    Ok(())
}

/// The command that makes a refused dir acceptable, for error messages.
pub(crate) fn dir_fix_hint(dir: &Path) -> String {
    format!(
        "use a directory you own with mode 0700 (e.g. `chmod 700 {}`), or point LLMLB_LOCK_DIR elsewhere",
        dir.display()
    )
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
/// ticks since boot plus the boot id. Linux only; `None` elsewhere or when the
/// process does not exist.
#[cfg(target_os = "linux")]
pub(crate) fn process_identity(pid: u32) -> Option<ProcessIdentity> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may itself contain
    // spaces or ')', so count fields after the last ')'. starttime is field 22.
    let after = &stat[stat.rfind(')')? + 1..];
    let start_ticks: u64 = after.split_whitespace().nth(19)?.parse().ok()?;
    Some(ProcessIdentity {
        boot_id: boot_id(),
        start_ticks: Some(start_ticks),
    })
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

/// Identity of process `pid`; not available on this Unix (see the Linux version).
#[cfg(not(target_os = "linux"))]
pub(crate) fn process_identity(_pid: u32) -> Option<ProcessIdentity> {
    None
}

/// Signals `stop` and exec mode may send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Signal {
    Int,
    Term,
    Kill,
}

impl Signal {
    fn raw(self) -> libc::c_int {
        match self {
            Signal::Int => libc::SIGINT,
            Signal::Term => libc::SIGTERM,
            Signal::Kill => libc::SIGKILL,
        }
    }
}

/// `kill(pid, sig)`.
pub(crate) fn send_signal(pid: u32, sig: Signal) -> io::Result<()> {
    let pid = libc::pid_t::try_from(pid)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "pid out of range"))?;
    if pid <= 0 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "pid out of range",
        ));
    }
    // SAFETY: kill has no memory-safety preconditions; pid > 0 targets one process.
    if unsafe { libc::kill(pid, sig.raw()) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
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
pub(crate) fn remove_held(path: &Path, file: File) -> Result<(), (File, io::Error)> {
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err((file, e)),
    }
    drop(file);
    Ok(())
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
/// The duplicate is made here, in the parent, at a number >= 3 (so the
/// child's stdio set-up cannot clobber it) and close-on-exec (so no other
/// spawn inherits it); only the child clears the flag, between fork and exec.
pub(crate) fn pass_to_child(cmd: &mut std::process::Command, file: &File) -> io::Result<ChildFd> {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    use std::os::unix::process::CommandExt;
    // SAFETY: fcntl(F_DUPFD_CLOEXEC) on a descriptor we own; the result is a
    // new descriptor nobody else owns, handed to OwnedFd at once.
    let fd = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 3) };
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

/// Reaps every exited child of ours except `keep` (the direct child, whose
/// status tokio or the caller collects): the orphans a subreaper inherits.
/// Peeks with `WNOWAIT` first so `keep` is never reaped here.
pub(crate) fn reap_orphans(keep: u32) {
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
        if rc != 0 || pid <= 0 || u32::try_from(pid) == Ok(keep) {
            return;
        }
        let mut status = 0;
        // SAFETY: reaps exactly the exited child waitid reported.
        unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
    }
    #[cfg(not(target_os = "linux"))]
    let _ = keep;
}

/// Whether no process of group `pgid` is left: reaps the group's exited
/// children of ours first (zombies count as members until reaped), then
/// asks `kill(-pgid, 0)`. Call only once the group's leader, if it is our
/// child, has been waited for: `waitpid(-pgid)` would steal its status.
pub(crate) fn group_gone(pgid: u32) -> bool {
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
pub(crate) fn child_pgid(child_pid: u32) -> Option<u32> {
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
