//! Windows implementation of the platform boundary: built (`cargo check
//! --target x86_64-pc-windows-gnu`), not tested here.
//!
//! Differences from Unix, documented in the README:
//! - `LockFileEx` locks are mandatory for reads of the locked range, so another
//!   process cannot read the holder's info while it is held: contenders and
//!   probes report "holder details unreadable".
//! - Files are opened without `FILE_SHARE_DELETE`, so nobody can unlink a lock
//!   file that anyone has open; the unlink-on-release race of Unix cannot
//!   happen and file identity is therefore not compared (every id is equal).
//! - There is no process identity token; `stop` refuses to signal.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::windows::fs::{FileExt as _, OpenOptionsExt};
use std::path::{Path, PathBuf};

use fs2::FileExt as Fs2FileExt;

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

fn map_try(result: io::Result<()>) -> io::Result<TryLock> {
    match result {
        Ok(()) => Ok(TryLock::Acquired),
        Err(e) if e.raw_os_error() == fs2::lock_contended_error().raw_os_error() => {
            Ok(TryLock::Contended)
        }
        Err(e) => Err(e),
    }
}

/// `LockFileEx(EXCLUSIVE | FAIL_IMMEDIATELY)` over the whole file.
#[expect(
    clippy::disallowed_methods,
    reason = "the one call site of fs2's exclusive lock"
)]
pub(crate) fn try_lock_exclusive(file: &File) -> io::Result<TryLock> {
    map_try(Fs2FileExt::try_lock_exclusive(file))
}

/// `LockFileEx(FAIL_IMMEDIATELY)`, shared.
#[expect(
    clippy::disallowed_methods,
    reason = "the one call site of fs2's shared lock"
)]
pub(crate) fn try_lock_shared(file: &File) -> io::Result<TryLock> {
    map_try(Fs2FileExt::try_lock_shared(file))
}

/// One metadata query of an open lock file.
pub(crate) fn stat_open(file: &File) -> io::Result<OpenFileStat> {
    let meta = file.metadata()?;
    Ok(OpenFileStat {
        id: FileId { dev: 0, ino: 0 },
        len: meta.len(),
        is_regular: meta.file_type().is_file(),
        owned_by_us: true,
    })
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

/// No identity token on Windows yet.
pub(crate) fn process_identity(_pid: u32) -> Option<ProcessIdentity> {
    None
}

#[allow(dead_code)] // used by `llmlb stop`
/// Signals `stop` may send (mapped to process termination on Windows).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Signal {
    Int,
    Term,
    Kill,
}

/// A process held for signalling: not available on Windows yet (`stop`
/// refuses before it gets here, as there is no identity token).
#[derive(Debug)]
pub(crate) struct PinnedProcess;

/// Not supported on Windows yet.
pub(crate) fn pin_process(_pid: u32) -> io::Result<PinnedProcess> {
    Err(io::Error::new(
        io::ErrorKind::Unsupported,
        "signals are not supported on Windows",
    ))
}

impl PinnedProcess {
    /// Never pinned.
    pub(crate) fn is_pinned(&self) -> bool {
        false
    }

    /// Unknown.
    pub(crate) fn has_exited(&self) -> Option<bool> {
        None
    }

    /// Not supported: Windows has no SIGTERM.
    pub(crate) fn signal(&self, _sig: Signal) -> io::Result<()> {
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "signals are not supported on Windows",
        ))
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
