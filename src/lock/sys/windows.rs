//! Windows implementation of the platform boundary, tested under Wine
//! (`.ci/wine/run`).
//!
//! Differences from Unix, documented in the README:
//! - `LockFileEx` locks are mandatory for reads and writes of the locked range,
//!   so the lock covers one byte at [`LOCK_OFFSET`], far beyond any info (as
//!   SQLite locks bytes it never stores data in): contenders, `status` and
//!   `stop` read the holder's JSON as on Unix.
//! - Files are opened without `FILE_SHARE_DELETE`, so nobody can unlink a lock
//!   file that anyone has open; the unlink-on-release race of Unix cannot
//!   happen and file identity is therefore not compared (every id is equal).
//! - The process identity token is the creation time (`GetProcessTimes`),
//!   which is absolute (100 ns units since 1601), so it needs no boot marker.
//!   A process is pinned by an open handle: its PID cannot be reused while the
//!   handle is open, so every wait and termination goes through that handle.
//! - There is no SIGTERM: `Kill` terminates through the handle, while `Term`
//!   and `Int` are `Unsupported`, so `stop` verifies the holder but cannot yet
//!   ask it to shut down (a graceful stop channel is still to come).

use std::fs::{File, OpenOptions};
use std::io;
use std::os::windows::fs::{FileExt as _, OpenOptionsExt};
use std::path::{Path, PathBuf};

use std::os::windows::io::AsRawHandle as _;

use std::os::windows::io::{AsHandle as _, FromRawHandle as _, OwnedHandle};

use windows_sys::Win32::Foundation::{
    ERROR_INVALID_PARAMETER, ERROR_LOCK_VIOLATION, FILETIME, HANDLE, WAIT_OBJECT_0, WAIT_TIMEOUT,
};
use windows_sys::Win32::Storage::FileSystem::{
    LockFileEx, UnlockFileEx, LOCKFILE_EXCLUSIVE_LOCK, LOCKFILE_FAIL_IMMEDIATELY,
};
use windows_sys::Win32::System::Threading::{
    GetProcessTimes, OpenProcess, TerminateProcess, WaitForSingleObject,
    PROCESS_QUERY_LIMITED_INFORMATION, PROCESS_SYNCHRONIZE, PROCESS_TERMINATE,
};
use windows_sys::Win32::System::IO::OVERLAPPED;

use super::{DirRefusal, FileId, OpenFileStat, TryLock};
use crate::lock::info::ProcessIdentity;

const FILE_SHARE_READ: u32 = 0x1;
const FILE_SHARE_WRITE: u32 = 0x2;
const FILE_FLAG_OPEN_REPARSE_POINT: u32 = 0x0020_0000;
const ERROR_CANT_ACCESS_FILE: i32 = 1920;
const ERROR_DIRECTORY: i32 = 267;

/// An open lock directory. Windows has no `openat`: the handle keeps the
/// checked path, and files are reached by joining their name to it.
#[derive(Debug)]
pub(crate) struct DirHandle {
    path: PathBuf,
}

impl DirHandle {
    /// Directory ids are not compared on Windows (see the module docs).
    pub(crate) fn id(&self) -> FileId {
        FileId { dev: 0, ino: 0 }
    }
}

/// Opens the directory at `path`, refusing a symlink (reparse point) or a
/// non-directory.
pub(crate) fn open_dir(path: &Path) -> io::Result<DirHandle> {
    let meta = std::fs::symlink_metadata(path)?;
    if meta.file_type().is_symlink() {
        return Err(io::Error::from_raw_os_error(ERROR_CANT_ACCESS_FILE));
    }
    if !meta.is_dir() {
        return Err(io::Error::from_raw_os_error(ERROR_DIRECTORY));
    }
    Ok(DirHandle {
        path: path.to_path_buf(),
    })
}

/// Ownership is left to ACLs on Windows.
pub(crate) fn check_dir(_dir: &DirHandle) -> Result<(), DirRefusal> {
    Ok(())
}

/// The fix for a refused dir, for error messages.
pub(crate) fn dir_fix_hint(_dir: &Path, _refusal: DirRefusal) -> String {
    "set LLMLB_LOCK_DIR (or --lock-dir) to a plain directory you own".to_owned()
}

/// Opens (creating if needed) the lock file `name` in `dir`: never truncates,
/// does not follow a reparse point (symlink), and denies delete sharing.
pub(crate) fn open_for_lock(dir: &DirHandle, name: &str) -> io::Result<File> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .share_mode(FILE_SHARE_READ | FILE_SHARE_WRITE)
        .custom_flags(FILE_FLAG_OPEN_REPARSE_POINT)
        .open(dir.path.join(name))?;
    refuse_reparse(file)
}

/// Opens an existing lock file read-only for probing.
pub(crate) fn open_for_probe(dir: &DirHandle, name: &str) -> io::Result<File> {
    let file = OpenOptions::new()
        .read(true)
        .share_mode(FILE_SHARE_READ | FILE_SHARE_WRITE)
        .custom_flags(FILE_FLAG_OPEN_REPARSE_POINT)
        .open(dir.path.join(name))?;
    refuse_reparse(file)
}

/// Whether `name` exists in `dir` (ids are not compared on Windows).
pub(crate) fn name_id(dir: &DirHandle, name: &str) -> io::Result<Option<FileId>> {
    path_id(&dir.path.join(name))
}

/// The names in `dir`.
pub(crate) fn list_names(dir: &DirHandle) -> io::Result<Vec<std::ffi::OsString>> {
    std::fs::read_dir(&dir.path)?
        .map(|entry| entry.map(|e| e.file_name()))
        .collect()
}

fn refuse_reparse(file: File) -> io::Result<File> {
    if file.metadata()?.file_type().is_symlink() {
        return Err(io::Error::from_raw_os_error(ERROR_CANT_ACCESS_FILE));
    }
    Ok(file)
}

/// True when `err` is what the opens above return for a symlink.
pub(crate) fn is_symlink_error(err: &io::Error) -> bool {
    err.raw_os_error() == Some(ERROR_CANT_ACCESS_FILE)
}

/// The one byte the lock covers: far beyond any info a lock file can hold,
/// so the mandatory range lock never blocks a read of the JSON.
const LOCK_OFFSET: u64 = 1 << 62;

/// An `OVERLAPPED` that only carries [`LOCK_OFFSET`] (the handle is
/// synchronous, so no event is needed).
fn lock_overlapped() -> OVERLAPPED {
    let mut ov = OVERLAPPED::default();
    ov.Anonymous.Anonymous.Offset = LOCK_OFFSET as u32;
    ov.Anonymous.Anonymous.OffsetHigh = (LOCK_OFFSET >> 32) as u32;
    ov
}

#[expect(clippy::disallowed_methods, reason = "the one call site of LockFileEx")]
fn try_lock(file: &File, flags: u32) -> io::Result<TryLock> {
    let mut ov = lock_overlapped();
    // SAFETY: the handle is open for the duration of the call (borrowed from
    // `file`), and `ov` outlives it; a synchronous handle completes the call
    // before it returns.
    let ok = unsafe {
        LockFileEx(
            file.as_raw_handle() as HANDLE,
            flags | LOCKFILE_FAIL_IMMEDIATELY,
            0,
            1,
            0,
            &mut ov,
        )
    };
    if ok != 0 {
        return Ok(TryLock::Acquired);
    }
    let err = io::Error::last_os_error();
    if err.raw_os_error() == Some(ERROR_LOCK_VIOLATION as i32) {
        Ok(TryLock::Contended)
    } else {
        Err(err)
    }
}

/// `LockFileEx(EXCLUSIVE | FAIL_IMMEDIATELY)` on the lock byte.
pub(crate) fn try_lock_exclusive(file: &File) -> io::Result<TryLock> {
    try_lock(file, LOCKFILE_EXCLUSIVE_LOCK)
}

/// `LockFileEx(FAIL_IMMEDIATELY)`, shared, on the lock byte.
pub(crate) fn try_lock_shared(file: &File) -> io::Result<TryLock> {
    try_lock(file, 0)
}

/// Unlocks the lock byte before `file` is closed: Microsoft documents that
/// the locks of a closed handle are released "depending upon available system
/// resources", i.e. at an unspecified later time (`LockFileEx` remarks), and
/// the next acquirer must not find a lock nobody holds. A handle that holds
/// nothing gets `ERROR_NOT_LOCKED`, which is of no interest.
#[expect(
    clippy::disallowed_methods,
    reason = "the one call site of UnlockFileEx"
)]
pub(crate) fn unlock_before_close(file: &File) {
    let mut ov = lock_overlapped();
    // SAFETY: as in `try_lock`.
    let _ = unsafe { UnlockFileEx(file.as_raw_handle() as HANDLE, 0, 1, 0, &mut ov) };
}

/// One metadata query of an open lock file.
pub(crate) fn stat_open(_dir: &DirHandle, file: &File) -> io::Result<OpenFileStat> {
    let meta = file.metadata()?;
    Ok(OpenFileStat {
        id: FileId { dev: 0, ino: 0 },
        len: meta.len(),
        is_regular: meta.file_type().is_file(),
        owned_by_us: true,
    })
}

/// This process's id (`GetCurrentProcessId` reads it from the process
/// block: there is no system call to save).
pub(crate) fn current_pid() -> u32 {
    std::process::id()
}

/// Whether the name exists; ids are not compared on Windows (see module docs).
pub(crate) fn path_id(path: &Path) -> io::Result<Option<FileId>> {
    match std::fs::symlink_metadata(path) {
        Ok(_) => Ok(Some(FileId { dev: 0, ino: 0 })),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Positional read until `buf` is full or end of file.
pub(crate) fn read_at(file: &File, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        match file.seek_read(&mut buf[done..], offset + done as u64) {
            Ok(0) => break,
            Ok(n) if done + n < buf.len() => return Ok(done + n),
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

/// Positional write of all of `data`.
pub(crate) fn write_all_at(file: &File, mut data: &[u8], mut offset: u64) -> io::Result<()> {
    while !data.is_empty() {
        let n = file.seek_write(data, offset)?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        data = &data[n..];
        offset += n as u64;
    }
    Ok(())
}

/// `%TEMP%` is already per user, so the default dir needs no user suffix.
pub(crate) fn default_dir_name() -> String {
    "llmlb".to_owned()
}

/// Creates `dir` and missing parents (ACLs of `%TEMP%` already make it private).
pub(crate) fn create_dir(dir: &Path) -> io::Result<()> {
    std::fs::create_dir_all(dir)
}

/// This machine's name, from `COMPUTERNAME`.
pub(crate) fn hostname() -> String {
    std::env::var("COMPUTERNAME").unwrap_or_default()
}

/// Opens process `pid` with `access`: `NotFound` if there is no such process.
fn open_process(pid: u32, access: u32) -> io::Result<OwnedHandle> {
    // SAFETY: OpenProcess takes plain values and returns a new handle or NULL.
    let raw = unsafe { OpenProcess(access, 0, pid) };
    if raw.is_null() {
        let err = io::Error::last_os_error();
        // What OpenProcess reports for a PID that names no process.
        if err.raw_os_error() == Some(ERROR_INVALID_PARAMETER as i32) {
            return Err(io::ErrorKind::NotFound.into());
        }
        return Err(err);
    }
    // SAFETY: a fresh handle that nothing else owns.
    Ok(unsafe { OwnedHandle::from_raw_handle(raw as _) })
}

/// The creation time of the process behind `handle`, as a `FILETIME` in one
/// `u64` (100 ns units since 1601-01-01 UTC).
fn creation_time(handle: &OwnedHandle) -> io::Result<u64> {
    let mut times = [FILETIME {
        dwLowDateTime: 0,
        dwHighDateTime: 0,
    }; 4];
    let [creation, exit, kernel, user] = &mut times;
    // SAFETY: the handle is open for the call and the four out-pointers are
    // distinct, writable FILETIMEs.
    let ok = unsafe {
        GetProcessTimes(
            handle.as_handle().as_raw_handle() as HANDLE,
            creation,
            exit,
            kernel,
            user,
        )
    };
    if ok == 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(u64::from(times[0].dwHighDateTime) << 32 | u64::from(times[0].dwLowDateTime))
}

/// Identity of process `pid`: its creation time, which a process that later
/// reuses the PID cannot share. `None` when the process does not exist or
/// cannot be opened.
pub(crate) fn process_identity(pid: u32) -> Option<ProcessIdentity> {
    let handle = open_process(pid, PROCESS_QUERY_LIMITED_INFORMATION).ok()?;
    Some(ProcessIdentity {
        boot_id: None,
        start_ticks: Some(creation_time(&handle).ok()?),
    })
}

/// Signals `stop` may send (only `Kill` exists on Windows, as termination).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Signal {
    Int,
    Term,
    Kill,
}

/// A process held for signalling: an open handle, which keeps its PID from
/// being reused for as long as it is open.
#[derive(Debug)]
pub(crate) struct PinnedProcess {
    handle: OwnedHandle,
}

/// Pins process `pid` by opening it once: `NotFound` if no such process exists.
pub(crate) fn pin_process(pid: u32) -> io::Result<PinnedProcess> {
    let handle = open_process(
        pid,
        PROCESS_QUERY_LIMITED_INFORMATION | PROCESS_SYNCHRONIZE | PROCESS_TERMINATE,
    )?;
    Ok(PinnedProcess { handle })
}

impl PinnedProcess {
    /// Always: the handle pins the process.
    pub(crate) fn is_pinned(&self) -> bool {
        true
    }

    /// Whether the process has exited (its handle is signalled); `None` if
    /// the wait fails.
    pub(crate) fn has_exited(&self) -> Option<bool> {
        // SAFETY: the handle is open for the call; a zero timeout only polls.
        match unsafe { WaitForSingleObject(self.raw(), 0) } {
            WAIT_OBJECT_0 => Some(true),
            WAIT_TIMEOUT => Some(false),
            _ => None,
        }
    }

    /// `Kill` terminates the pinned process (exit code 1, as a killed
    /// process reports); `Int` and `Term` are unsupported (no SIGTERM; the
    /// graceful stop channel is not there yet). An exited process is
    /// `NotFound`.
    pub(crate) fn signal(&self, sig: Signal) -> io::Result<()> {
        if sig != Signal::Kill {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "Windows has no SIGTERM or SIGINT: only termination (--force) is supported",
            ));
        }
        if self.has_exited() == Some(true) {
            return Err(io::ErrorKind::NotFound.into());
        }
        // SAFETY: the handle is open for the call and has PROCESS_TERMINATE.
        if unsafe { TerminateProcess(self.raw(), 1) } == 0 {
            // Exited between the check and the call: access denied.
            if self.has_exited() == Some(true) {
                return Err(io::ErrorKind::NotFound.into());
            }
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    fn raw(&self) -> HANDLE {
        self.handle.as_handle().as_raw_handle() as HANDLE
    }
}

/// Not supported on Windows.
pub(crate) fn signal_group(_pgid: u32, _sig: Signal) -> io::Result<()> {
    Err(io::Error::new(
        io::ErrorKind::Unsupported,
        "process groups are not supported on Windows",
    ))
}

/// Release of an owned lock file. Windows cannot delete a file that is open
/// without delete sharing, so: empty it while locked (a later acquirer sees a
/// fresh file, not a stale one), close, then delete if nobody opened it since.
pub(crate) fn remove_held(
    dir: &DirHandle,
    name: &str,
    file: File,
) -> Result<(), (File, io::Error)> {
    if let Err(e) = file.set_len(0) {
        return Err((file, e));
    }
    unlock_before_close(&file);
    drop(file);
    let _ = std::fs::remove_file(dir.path.join(name));
    Ok(())
}

/// Windows reports no distinct "locks unsupported" error.
pub(crate) fn is_no_locks_error(_err: &io::Error) -> bool {
    false
}

/// Windows has no signalable process groups: the child stays in the
/// launcher's console group, so Ctrl-C reaches it directly (a new console
/// group would disable Ctrl-C for it). There is no parent-death signal: a
/// killed launcher leaves the child running (a job object could fix that).
pub(crate) fn configure_child(_cmd: &mut std::process::Command) {}

/// Lock descriptors are not passed to children on Windows (a later issue):
/// the command holds no lock of its own.
#[derive(Debug)]
pub(crate) struct ChildFd(());

/// No descriptor numbers on Windows.
pub(crate) fn raw_descriptor(_file: &File) -> i32 {
    -1
}

/// No subreaper on Windows.
pub(crate) fn become_subreaper() -> io::Result<bool> {
    Ok(false)
}

/// Nothing to reap on Windows.
pub(crate) fn reap_orphans(_keep: u32) {}

/// No process groups on Windows: there is never one left to wait for.
pub(crate) fn group_gone(_pgid: u32) -> bool {
    true
}

/// No process groups on Windows.
pub(crate) fn leads_group(_pid: u32) -> bool {
    false
}

/// No signalable process group on Windows: nothing is recorded.
pub(crate) fn child_pgid(_child_pid: u32) -> Option<u32> {
    None
}

/// The child's exit code (Windows has no "killed by signal").
pub(crate) fn exit_code(status: std::process::ExitStatus) -> i32 {
    status.code().unwrap_or(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Locks `len` bytes from 0 through `file`, shared: what a reader of the
    /// info would collide with if the holder's lock covered it (Wine does not
    /// block plain reads of a locked range, but it does refuse a conflicting
    /// lock, so this proves the ranges are disjoint where reads cannot).
    #[expect(
        clippy::disallowed_methods,
        reason = "a reader's lock over the info range, which the protocol never takes"
    )]
    fn lock_shared_from_start(file: &File, len: u64) -> bool {
        let mut ov = OVERLAPPED::default();
        // SAFETY: as in `try_lock`.
        unsafe {
            LockFileEx(
                file.as_raw_handle() as HANDLE,
                LOCKFILE_FAIL_IMMEDIATELY,
                0,
                len as u32,
                (len >> 32) as u32,
                &mut ov,
            ) != 0
        }
    }

    #[test]
    fn the_holder_lock_leaves_the_info_unlocked_and_unlock_frees_it() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = open_dir(tmp.path()).unwrap();
        let holder = open_for_lock(&dir, "serve_1.lock").unwrap();
        write_all_at(&holder, br#"{"pid":1}"#, 0).unwrap();
        assert_eq!(try_lock_exclusive(&holder).unwrap(), TryLock::Acquired);

        let reader = open_for_probe(&dir, "serve_1.lock").unwrap();
        assert_eq!(try_lock_shared(&reader).unwrap(), TryLock::Contended);
        // Everything below the lock byte, the info included, is free.
        assert!(lock_shared_from_start(&reader, LOCK_OFFSET));
        let mut buf = [0u8; 16];
        assert_eq!(read_at(&reader, &mut buf, 0).unwrap(), 9);
        drop(reader);

        unlock_before_close(&holder);
        let prober = open_for_probe(&dir, "serve_1.lock").unwrap();
        assert_eq!(try_lock_shared(&prober).unwrap(), TryLock::Acquired);
        drop(holder);
    }

    /// The handle pins one process: its identity is stable, it is reported
    /// alive, `Term` is refused without touching it, `Kill` ends it, and
    /// afterwards the same handle reports it exited and a second kill is
    /// `NotFound` (never a different process).
    #[test]
    fn a_pinned_process_is_verified_killed_and_seen_exited_through_its_handle() {
        // `cmd /c pause` waits on its stdin, which nobody writes.
        let mut child = std::process::Command::new("cmd")
            .args(["/c", "pause"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let pid = child.id();
        let identity = process_identity(pid).unwrap();
        assert!(identity.is_complete());
        assert_ne!(process_identity(std::process::id()), Some(identity.clone()));

        let pinned = pin_process(pid).unwrap();
        assert!(pinned.is_pinned());
        assert_eq!(pinned.has_exited(), Some(false));
        let err = pinned.signal(Signal::Term).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::Unsupported);
        assert_eq!(process_identity(pid), Some(identity));

        pinned.signal(Signal::Kill).unwrap();
        assert!(!child.wait().unwrap().success());
        assert_eq!(pinned.has_exited(), Some(true));
        let err = pinned.signal(Signal::Kill).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
    }
}
