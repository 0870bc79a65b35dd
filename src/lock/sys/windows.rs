//! Windows implementation of the platform boundary, tested under Wine
//! (`.ci/wine/run`).
//!
//! Differences from Unix, documented in docs/protocol.md:
//! - `LockFileEx` locks are mandatory for reads and writes of the locked range,
//!   so the lock covers one byte at [`LOCK_OFFSET`], far beyond any info (as
//!   SQLite locks bytes it never stores data in): contenders, `status` and
//!   `stop` read the holder's JSON as on Unix.
//! - Files are opened without `FILE_SHARE_DELETE`, so nobody can unlink or
//!   rename a lock file that anyone has open; the unlink-on-release race of
//!   Unix cannot happen and file identity is therefore not compared (every id
//!   is equal). The price: a holder deletes its file only after closing it
//!   (`remove_held`), and an open that meets that delete fails for an instant
//!   (`is_transient_open_error`), which the protocol waits out.
//! - The process identity token is the creation time (`GetProcessTimes`),
//!   which is absolute (100 ns units since 1601), so it needs no boot marker.
//!   A process is pinned by an open handle: its PID cannot be reused while the
//!   handle is open, so every wait and termination goes through that handle.
//! - There is no SIGTERM: `Kill` terminates through the handle, while `Term`
//!   and `Int` are `Unsupported`; `stop` asks a holder to shut down through
//!   its stop channel instead, a named event the holder made with the lock
//!   ([`create_stop_channel`], [`request_stop`]).
//! - Exec mode runs the command suspended, puts it in a kill-on-close job
//!   object and resumes it ([`attach_child`]); a graceful stop is
//!   `CTRL_BREAK_EVENT` to its console process group, the last resort
//!   terminates the job.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::windows::fs::{FileExt as _, OpenOptionsExt};
use std::path::{Path, PathBuf};

use std::os::windows::io::AsRawHandle as _;

use std::os::windows::io::{AsHandle as _, FromRawHandle as _, OwnedHandle};

use windows_sys::Win32::Foundation::LocalFree;
use windows_sys::Win32::Foundation::{
    ERROR_ACCESS_DENIED, ERROR_DELETE_PENDING, ERROR_INVALID_PARAMETER, ERROR_LOCK_VIOLATION,
    ERROR_SHARING_VIOLATION, FILETIME, HANDLE, NTSTATUS, STATUS_DELETE_PENDING, WAIT_OBJECT_0,
    WAIT_TIMEOUT,
};
use windows_sys::Win32::Security::Authorization::{
    GetSecurityInfo, SetSecurityInfo, SE_FILE_OBJECT, SE_KERNEL_OBJECT, SE_OBJECT_TYPE,
};
use windows_sys::Win32::Security::{
    GetLengthSid, GetTokenInformation, IsValidSid, TokenOwner, TokenUser,
    OWNER_SECURITY_INFORMATION, PSECURITY_DESCRIPTOR, PSID, TOKEN_INFORMATION_CLASS, TOKEN_OWNER,
    TOKEN_QUERY, TOKEN_USER,
};
use windows_sys::Win32::Storage::FileSystem::{
    LockFileEx, UnlockFileEx, FILE_FLAG_BACKUP_SEMANTICS, LOCKFILE_EXCLUSIVE_LOCK,
    LOCKFILE_FAIL_IMMEDIATELY, READ_CONTROL,
};
use windows_sys::Win32::System::JobObjects::{
    AssignProcessToJobObject, CreateJobObjectW, JobObjectBasicAccountingInformation,
    JobObjectExtendedLimitInformation, QueryInformationJobObject, SetInformationJobObject,
    TerminateJobObject, JOBOBJECT_BASIC_ACCOUNTING_INFORMATION,
    JOBOBJECT_EXTENDED_LIMIT_INFORMATION, JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE,
};
use windows_sys::Win32::System::Threading::{
    GetCurrentProcess, GetProcessTimes, OpenProcess, OpenProcessToken, TerminateProcess,
    WaitForSingleObject, PROCESS_QUERY_LIMITED_INFORMATION, PROCESS_SET_QUOTA, PROCESS_SYNCHRONIZE,
    PROCESS_TERMINATE,
};
use windows_sys::Win32::System::IO::OVERLAPPED;

use super::{DirRefusal, FileId, LockName, OpenFileStat, TryLock};
use crate::lock::identity::ProcessIdentity;

const FILE_SHARE_READ: u32 = 0x1;
const FILE_SHARE_WRITE: u32 = 0x2;
const FILE_SHARE_DELETE: u32 = 0x4;
const FILE_FLAG_OPEN_REPARSE_POINT: u32 = 0x0020_0000;
const ERROR_CANT_ACCESS_FILE: i32 = 1920;
const ERROR_DIRECTORY: i32 = 267;

/// An open lock directory: the checked path (for messages), and the
/// directory itself, held open for as long as the handle lives.
///
/// Every file in it is reached through that handle (`NtCreateFile` with the
/// handle as `RootDirectory`, Windows' `openat`; [`open_in`]), and it is
/// listed through the handle too: nothing re-resolves the path after the
/// check, so a dir renamed away and replaced by another dir or a junction
/// under the same name redirects nothing. The handle also does not share
/// deletion, so on Windows nobody can delete or rename the dir while it is
/// open (Wine does not enforce that for directories).
#[derive(Debug)]
pub(crate) struct DirHandle {
    path: PathBuf,
    /// The dir, opened without following a reparse point and without
    /// `FILE_SHARE_DELETE`.
    handle: File,
}

impl DirHandle {
    /// Directory ids are not compared on Windows (see the module docs).
    pub(crate) fn id(&self) -> FileId {
        FileId { dev: 0, ino: 0 }
    }

    /// The path the directory was checked at (Windows works by path).
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    fn raw(&self) -> HANDLE {
        self.handle.as_raw_handle() as HANDLE
    }
}

/// Opens the directory at `path` and keeps it open (see [`DirHandle`]),
/// refusing a symlink or junction (reparse point) or a non-directory.
pub(crate) fn open_dir(path: &Path) -> io::Result<DirHandle> {
    use windows_sys::Win32::Storage::FileSystem::{
        FILE_LIST_DIRECTORY, FILE_READ_ATTRIBUTES, FILE_TRAVERSE, SYNCHRONIZE,
    };
    // BACKUP_SEMANTICS is what lets CreateFile open a directory;
    // OPEN_REPARSE_POINT opens a link itself, which is then refused.
    let handle = OpenOptions::new()
        .access_mode(
            READ_CONTROL | FILE_READ_ATTRIBUTES | FILE_LIST_DIRECTORY | FILE_TRAVERSE | SYNCHRONIZE,
        )
        .share_mode(FILE_SHARE_READ | FILE_SHARE_WRITE)
        .custom_flags(FILE_FLAG_BACKUP_SEMANTICS | FILE_FLAG_OPEN_REPARSE_POINT)
        .open(path)?;
    let meta = handle.metadata()?;
    if meta.file_type().is_symlink() {
        return Err(io::Error::from_raw_os_error(ERROR_CANT_ACCESS_FILE));
    }
    if !meta.is_dir() {
        return Err(io::Error::from_raw_os_error(ERROR_DIRECTORY));
    }
    Ok(DirHandle {
        path: path.to_path_buf(),
        handle,
    })
}

/// Refuses a dir owned by another user (`ForeignOwner`), who could plant or
/// remove lock files in it. Ours are the dirs whose owner SID is our token's
/// user, or our token's default owner for new objects (for an elevated
/// administrator that is `BUILTIN\Administrators`, the owner of every dir it
/// creates). Who else may write is left to the dir's ACL, which has no simple
/// "group or others" to judge. Where Windows cannot tell (no owner: FAT
/// volumes, or the security info is unreadable), the dir is accepted.
pub(crate) fn check_dir(dir: &DirHandle) -> Result<(), DirRefusal> {
    let (Ok(owner), Ok(ours)) = (owner_sid(dir.raw(), SE_FILE_OBJECT), own_sids()) else {
        return Ok(());
    };
    judge_owner(owner.as_deref(), ours)
}

/// The ownership rule of [`check_dir`] on SIDs as bytes (two valid SIDs are
/// equal, as `EqualSid` says, exactly when their bytes are): no owner is
/// accepted (Windows cannot tell), any owner not in `ours` refused.
fn judge_owner(owner: Option<&[u8]>, ours: &[Vec<u8>]) -> Result<(), DirRefusal> {
    match owner {
        Some(owner) if !ours.iter().any(|sid| sid.as_slice() == owner) => {
            Err(DirRefusal::ForeignOwner)
        }
        _ => Ok(()),
    }
}

/// The owner SID of the object behind `handle` (opened with `READ_CONTROL`),
/// `None` if it has none.
fn owner_sid(handle: HANDLE, kind: SE_OBJECT_TYPE) -> io::Result<Option<Vec<u8>>> {
    let mut owner: PSID = std::ptr::null_mut();
    let mut descriptor: PSECURITY_DESCRIPTOR = std::ptr::null_mut();
    // SAFETY: the caller's handle is open for the call; the out-pointers are
    // valid; the unused ones may be NULL for OWNER_SECURITY_INFORMATION.
    let err = unsafe {
        GetSecurityInfo(
            handle,
            kind,
            OWNER_SECURITY_INFORMATION,
            &mut owner,
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            &mut descriptor,
        )
    };
    if err != 0 {
        return Err(io::Error::from_raw_os_error(err as i32));
    }
    // SAFETY: `owner` is NULL or points into `descriptor`, which is valid
    // until the LocalFree below.
    let sid = unsafe { sid_bytes(owner) };
    // SAFETY: GetSecurityInfo allocated `descriptor` with LocalAlloc.
    unsafe { LocalFree(descriptor as _) };
    Ok(sid)
}

/// The bytes of `sid`, `None` for NULL or an invalid SID.
///
/// # Safety
/// `sid` is NULL or points to a SID that stays valid for the call.
unsafe fn sid_bytes(sid: PSID) -> Option<Vec<u8>> {
    // SAFETY: per the caller, a valid SID or NULL (checked first).
    if sid.is_null() || unsafe { IsValidSid(sid) } == 0 {
        return None;
    }
    // SAFETY: a valid SID is GetLengthSid bytes long.
    let len = unsafe { GetLengthSid(sid) } as usize;
    // SAFETY: as above.
    Some(unsafe { std::slice::from_raw_parts(sid as *const u8, len) }.to_vec())
}

/// The SIDs a dir of ours may be owned by: our token's user and its default
/// owner, in that order (read once; a process's token does not change its
/// user). The stop channel's DACL grants the first.
fn own_sids() -> Result<&'static [Vec<u8>], ()> {
    static SIDS: std::sync::OnceLock<Result<Vec<Vec<u8>>, ()>> = std::sync::OnceLock::new();
    SIDS.get_or_init(|| {
        let mut raw: HANDLE = std::ptr::null_mut();
        // SAFETY: the pseudo-handle of our process is always valid; `raw`
        // receives a new token handle on success.
        if unsafe { OpenProcessToken(GetCurrentProcess(), TOKEN_QUERY, &mut raw) } == 0 {
            return Err(());
        }
        // SAFETY: a fresh handle that nothing else owns.
        let token = unsafe { OwnedHandle::from_raw_handle(raw as _) };
        let user = token_info(&token, TokenUser)?;
        let owner = token_info(&token, TokenOwner)?;
        // SAFETY: both buffers hold the structure their class names, whose
        // SID points into the same buffer, alive for these calls.
        let sids = unsafe {
            [
                sid_bytes((*(user.as_ptr() as *const TOKEN_USER)).User.Sid),
                sid_bytes((*(owner.as_ptr() as *const TOKEN_OWNER)).Owner),
            ]
        };
        Ok(sids.into_iter().flatten().collect())
    })
    .as_ref()
    .map(Vec::as_slice)
    .map_err(|_| ())
}

/// `GetTokenInformation(class)` into a buffer aligned for the structure.
fn token_info(token: &OwnedHandle, class: TOKEN_INFORMATION_CLASS) -> Result<Vec<u64>, ()> {
    let handle = token.as_handle().as_raw_handle() as HANDLE;
    let mut len = 0u32;
    // SAFETY: a size query: NULL buffer of length 0, `len` receives the size.
    unsafe { GetTokenInformation(handle, class, std::ptr::null_mut(), 0, &mut len) };
    if len == 0 {
        return Err(());
    }
    let mut buf = vec![0u64; (len as usize).div_ceil(8)];
    // SAFETY: `buf` is writable for `len` bytes (rounded up to 8).
    let ok = unsafe { GetTokenInformation(handle, class, buf.as_mut_ptr().cast(), len, &mut len) };
    if ok == 0 {
        return Err(());
    }
    Ok(buf)
}

/// The fix for a refused dir, for error messages.
pub(crate) fn dir_fix_hint(_dir: &Path, refusal: DirRefusal) -> String {
    match refusal {
        DirRefusal::ForeignOwner => {
            "set LLMLB_LOCK_DIR (or --lock-dir) to a directory you own (e.g. under %LOCALAPPDATA%)"
                .to_owned()
        }
        _ => "set LLMLB_LOCK_DIR (or --lock-dir) to a plain directory you own".to_owned(),
    }
}

/// Opens (creating if needed) the lock file `name` in `dir`: never truncates,
/// does not follow a reparse point (symlink), and denies delete sharing.
///
/// While a releasing holder deletes the file ([`remove_held`]), this fails
/// for that instant with a sharing violation (Wine) or `ERROR_DELETE_PENDING`
/// (Windows): see [`is_transient_open_error`].
pub(crate) fn open_for_lock(dir: &DirHandle, name: &LockName) -> io::Result<File> {
    use windows_sys::Wdk::Storage::FileSystem::FILE_OPEN_IF;
    use windows_sys::Win32::Storage::FileSystem::{FILE_GENERIC_READ, FILE_GENERIC_WRITE};
    open_lock_file(
        dir,
        name,
        FILE_GENERIC_READ | FILE_GENERIC_WRITE,
        FILE_OPEN_IF,
    )
}

/// Opens an existing lock file read-only for probing (same sharing as
/// [`open_for_lock`]).
pub(crate) fn open_for_probe(dir: &DirHandle, name: &LockName) -> io::Result<File> {
    use windows_sys::Wdk::Storage::FileSystem::FILE_OPEN;
    use windows_sys::Win32::Storage::FileSystem::FILE_GENERIC_READ;
    open_lock_file(dir, name, FILE_GENERIC_READ, FILE_OPEN)
}

/// Every handle to a lock file shares reads and writes but never deletion:
/// nobody can delete or rename a lock file while anyone has it open, so a
/// held file cannot lose its name (what Unix needs steps 4 and 9 for), and
/// [`remove_held`] can only delete a file nobody has open, hence nobody holds.
fn open_lock_file(
    dir: &DirHandle,
    name: &LockName,
    access: u32,
    disposition: u32,
) -> io::Result<File> {
    use windows_sys::Wdk::Storage::FileSystem::{FILE_NON_DIRECTORY_FILE, FILE_OPEN_REPARSE_POINT};
    let file = open_in(
        dir,
        name.as_str(),
        access,
        FILE_SHARE_READ | FILE_SHARE_WRITE,
        disposition,
        FILE_NON_DIRECTORY_FILE | FILE_OPEN_REPARSE_POINT,
    )?;
    refuse_reparse(file)
}

/// `NtCreateFile` of `name` relative to the open dir (its handle as
/// `RootDirectory`): Windows' `openat`, which never looks at the dir's path.
/// Synchronous I/O, as `CreateFileW` without `FILE_FLAG_OVERLAPPED` gives.
/// An NT status is turned into the Win32 error `CreateFileW` would report,
/// except that a pending deletion is `ERROR_DELETE_PENDING`: `CreateFileW`
/// reports it as `ERROR_ACCESS_DENIED`, like a real permission problem.
fn open_in(
    dir: &DirHandle,
    name: &str,
    access: u32,
    share: u32,
    disposition: u32,
    options: u32,
) -> io::Result<File> {
    use windows_sys::Wdk::Foundation::OBJECT_ATTRIBUTES;
    use windows_sys::Wdk::Storage::FileSystem::{NtCreateFile, FILE_SYNCHRONOUS_IO_NONALERT};
    use windows_sys::Win32::Foundation::{OBJ_CASE_INSENSITIVE, UNICODE_STRING};
    use windows_sys::Win32::Storage::FileSystem::{FILE_ATTRIBUTE_NORMAL, SYNCHRONIZE};
    use windows_sys::Win32::System::IO::IO_STATUS_BLOCK;
    let mut wide: Vec<u16> = name.encode_utf16().collect();
    let bytes =
        u16::try_from(wide.len() * 2).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    let object_name = UNICODE_STRING {
        Length: bytes,
        MaximumLength: bytes,
        Buffer: wide.as_mut_ptr(),
    };
    let attributes = OBJECT_ATTRIBUTES {
        Length: std::mem::size_of::<OBJECT_ATTRIBUTES>() as u32,
        RootDirectory: dir.raw(),
        ObjectName: &object_name,
        // Win32 file names are case-insensitive; CreateFileW asks the same.
        Attributes: OBJ_CASE_INSENSITIVE,
        SecurityDescriptor: std::ptr::null(),
        SecurityQualityOfService: std::ptr::null(),
    };
    let mut raw: HANDLE = std::ptr::null_mut();
    // SAFETY: all-zero is a valid IO_STATUS_BLOCK (written by the call).
    let mut status_block: IO_STATUS_BLOCK = unsafe { std::mem::zeroed() };
    // SAFETY: the dir handle is open for the call (borrowed from `dir`);
    // `attributes` and the name it points to outlive the call; `raw` and
    // `status_block` are writable; no EA buffer.
    let status = unsafe {
        NtCreateFile(
            &mut raw,
            access | SYNCHRONIZE,
            &attributes,
            &mut status_block,
            std::ptr::null(),
            FILE_ATTRIBUTE_NORMAL,
            share,
            disposition,
            options | FILE_SYNCHRONOUS_IO_NONALERT,
            std::ptr::null(),
            0,
        )
    };
    if status < 0 {
        return Err(nt_error(status));
    }
    // SAFETY: a fresh handle that nothing else owns.
    Ok(unsafe { File::from_raw_handle(raw as _) })
}

/// The Win32 error for a failed NT call's `status` (`STATUS_DELETE_PENDING`
/// as `ERROR_DELETE_PENDING`, not the access denied of the generic mapping).
fn nt_error(status: NTSTATUS) -> io::Error {
    use windows_sys::Win32::Foundation::RtlNtStatusToDosError;
    if status == STATUS_DELETE_PENDING {
        return io::Error::from_raw_os_error(ERROR_DELETE_PENDING as i32);
    }
    // SAFETY: a pure mapping of a status value.
    io::Error::from_raw_os_error(unsafe { RtlNtStatusToDosError(status) } as i32)
}

/// True when an open failed only because another process has the lock file
/// open without sharing it (a releasing holder inside `DeleteFile`:
/// `ERROR_SHARING_VIOLATION`), or its deletion is pending
/// (`ERROR_DELETE_PENDING`). Both last an instant, so the protocol retries
/// within its short window, then reports `Busy`. A holder never causes
/// either: its handle shares reads and writes, and a handle that excludes
/// those cannot coexist with a holder's, so such an error also means that
/// nobody holds the lock at that moment.
pub(crate) fn is_transient_open_error(err: &io::Error) -> bool {
    matches!(
        err.raw_os_error().map(|code| code as u32),
        Some(ERROR_SHARING_VIOLATION | ERROR_DELETE_PENDING)
    )
}

/// Whether `name` exists in `dir`, looked up through the dir's handle (ids
/// are not compared on Windows).
pub(crate) fn name_id(dir: &DirHandle, name: &LockName) -> io::Result<Option<FileId>> {
    use windows_sys::Wdk::Storage::FileSystem::{FILE_OPEN, FILE_OPEN_REPARSE_POINT};
    use windows_sys::Win32::Storage::FileSystem::FILE_READ_ATTRIBUTES;
    match open_in(
        dir,
        name.as_str(),
        FILE_READ_ATTRIBUTES,
        FILE_SHARE_READ | FILE_SHARE_WRITE | FILE_SHARE_DELETE,
        FILE_OPEN,
        FILE_OPEN_REPARSE_POINT,
    ) {
        Ok(_) => Ok(Some(FileId { dev: 0, ino: 0 })),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// The names in `dir`, listed through its handle: a second handle to the
/// same dir (opened relative to the first with an empty name), so that
/// concurrent listings do not share one enumeration position.
pub(crate) fn list_names(dir: &DirHandle) -> io::Result<Vec<std::ffi::OsString>> {
    use std::os::windows::ffi::OsStringExt as _;
    use windows_sys::Wdk::Storage::FileSystem::{FILE_DIRECTORY_FILE, FILE_OPEN};
    use windows_sys::Win32::Foundation::ERROR_NO_MORE_FILES;
    use windows_sys::Win32::Storage::FileSystem::{
        FileIdBothDirectoryInfo, FileIdBothDirectoryRestartInfo, GetFileInformationByHandleEx,
        FILE_ID_BOTH_DIR_INFO, FILE_LIST_DIRECTORY,
    };
    let listing = open_in(
        dir,
        "",
        FILE_LIST_DIRECTORY,
        FILE_SHARE_READ | FILE_SHARE_WRITE | FILE_SHARE_DELETE,
        FILE_OPEN,
        FILE_DIRECTORY_FILE,
    )?;
    let raw = listing.as_raw_handle() as HANDLE;
    let mut names = Vec::new();
    // Aligned for FILE_ID_BOTH_DIR_INFO (8 bytes), room for many entries.
    let mut buf = vec![0u64; 8192];
    let mut class = FileIdBothDirectoryRestartInfo;
    loop {
        // SAFETY: the handle is open for the call; `buf` is writable for
        // its byte length.
        let ok = unsafe {
            GetFileInformationByHandleEx(
                raw,
                class,
                buf.as_mut_ptr().cast(),
                (buf.len() * 8) as u32,
            )
        };
        if ok == 0 {
            let err = io::Error::last_os_error();
            if err.raw_os_error() == Some(ERROR_NO_MORE_FILES as i32) {
                return Ok(names);
            }
            return Err(err);
        }
        class = FileIdBothDirectoryInfo;
        let mut offset = 0usize;
        loop {
            // SAFETY: the call wrote a chain of entries into `buf`, each at
            // an 8-byte aligned offset given by the previous entry, its name
            // (FileNameLength bytes) inside the buffer.
            let (next, name) = unsafe {
                let entry = buf
                    .as_ptr()
                    .cast::<u8>()
                    .add(offset)
                    .cast::<FILE_ID_BOTH_DIR_INFO>();
                let len = (*entry).FileNameLength as usize / 2;
                let name = std::slice::from_raw_parts(
                    std::ptr::addr_of!((*entry).FileName).cast::<u16>(),
                    len,
                );
                (
                    (*entry).NextEntryOffset as usize,
                    std::ffi::OsString::from_wide(name),
                )
            };
            if name != "." && name != ".." {
                names.push(name);
            }
            if next == 0 {
                break;
            }
            offset += next;
        }
    }
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

/// Nothing on Windows: its temp cleaners (Storage Sense, Disk Cleanup) do not
/// honour advisory locks, and cannot delete the lock file or the dir while
/// they are open without delete sharing (see [`DirHandle`]).
#[derive(Debug)]
pub(crate) struct DirPin(());

/// See [`DirPin`]: nothing to take.
pub(crate) fn pin_dir(_dir: &std::sync::Arc<DirHandle>) -> DirPin {
    DirPin(())
}

/// See [`DirPin`]: nothing to take.
pub(crate) fn repin_dir(_pin: &mut DirPin) {}

/// Always false: Windows pins nothing (see [`DirPin`]). The twin of the
/// Unix function, which only the Unix tests ask.
#[allow(dead_code)]
pub(crate) fn is_pinned(_pin: &DirPin) -> bool {
    false
}

/// Nothing on Windows (see [`DirPin`]): an open file is not aged out.
pub(crate) fn touch_file(_file: &File) -> io::Result<()> {
    Ok(())
}

/// Nothing on Windows (see [`DirPin`]).
pub(crate) fn touch_dir(_dir: &DirHandle) -> io::Result<()> {
    Ok(())
}

/// Nothing on Windows (see [`DirPin`]).
pub(crate) fn touch_name(_dir: &DirHandle, _name: &str) -> io::Result<()> {
    Ok(())
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

/// The default lock dir: `llmlb\\locks` in the user's local application data
/// folder (`FOLDERID_LocalAppData`, usually `C:\\Users\\<user>\\AppData\\Local`),
/// asked of the known-folder API rather than read from `%TEMP%` or
/// `%LOCALAPPDATA%`, so every session of the user finds the same dir. Where
/// the API fails (a profile that is not loaded) it falls back to
/// `<temp dir>\\llmlb`, the only per-user place left to ask for.
pub(crate) fn default_dir() -> PathBuf {
    match local_app_data() {
        Some(base) => base.join("llmlb").join("locks"),
        None => std::env::temp_dir().join("llmlb"),
    }
}

/// `SHGetKnownFolderPath(FOLDERID_LocalAppData)`; `None` on failure or a
/// path that is not absolute.
fn local_app_data() -> Option<PathBuf> {
    use std::os::windows::ffi::OsStringExt as _;
    use windows_sys::Win32::System::Com::CoTaskMemFree;
    use windows_sys::Win32::UI::Shell::{
        FOLDERID_LocalAppData, SHGetKnownFolderPath, KF_FLAG_DEFAULT,
    };
    let mut raw: *mut u16 = std::ptr::null_mut();
    // SAFETY: a valid folder id, no token (the calling user), and `raw`
    // receives a string the API allocates.
    let hr = unsafe {
        SHGetKnownFolderPath(
            &FOLDERID_LocalAppData,
            KF_FLAG_DEFAULT as _,
            std::ptr::null_mut(),
            &mut raw,
        )
    };
    let path = if hr >= 0 && !raw.is_null() {
        // SAFETY: on success `raw` is a NUL-terminated UTF-16 string.
        let len = unsafe { (0..).take_while(|&i| *raw.add(i) != 0).count() };
        // SAFETY: `len` units before the NUL are readable.
        let units = unsafe { std::slice::from_raw_parts(raw, len) };
        Some(PathBuf::from(std::ffi::OsString::from_wide(units)))
    } else {
        None
    };
    // SAFETY: the caller frees the string whether or not the call succeeded
    // (freeing NULL is a no-op).
    unsafe { CoTaskMemFree(raw as *const std::ffi::c_void) };
    path.filter(|p| p.is_absolute())
}

/// Never from metadata alone on Windows: ownership is judged on the open
/// dir's owner SID by [`check_dir`].
pub(crate) fn owned_by_another_user(_meta: &std::fs::Metadata) -> bool {
    false
}

/// Creates `dir` and missing parents (the ACLs of the user's profile folder
/// already make it private).
pub(crate) fn create_dir(dir: &Path) -> io::Result<()> {
    std::fs::create_dir_all(dir)
}

/// This machine's name, from `COMPUTERNAME`.
pub(crate) fn hostname() -> String {
    std::env::var("COMPUTERNAME").unwrap_or_default()
}

/// Opens process `pid` with `access`: `NotFound` if there is no such
/// process, `PermissionDenied` if it exists but we may not open it (see
/// [`open_process_error`]).
fn open_process(pid: u32, access: u32) -> io::Result<OwnedHandle> {
    // SAFETY: OpenProcess takes plain values and returns a new handle or NULL.
    let raw = unsafe { OpenProcess(access, 0, pid) };
    if raw.is_null() {
        return Err(open_process_error(io::Error::last_os_error()));
    }
    // SAFETY: a fresh handle that nothing else owns.
    Ok(unsafe { OwnedHandle::from_raw_handle(raw as _) })
}

/// What a failed `OpenProcess` means: `ERROR_INVALID_PARAMETER` is what it
/// reports for a PID that names no process (`NotFound`); anything else is
/// kept as the OS error, so the caller tells "gone" from "cannot open". In
/// particular `ERROR_ACCESS_DENIED` (kind `PermissionDenied`) is a process
/// that exists but is protected from us: an elevated (administrator) process
/// seen from a non-elevated one, or another user's. It must never be taken
/// for an exited process.
fn open_process_error(err: io::Error) -> io::Error {
    match err.raw_os_error().map(|code| code as u32) {
        Some(ERROR_INVALID_PARAMETER) => io::ErrorKind::NotFound.into(),
        _ => err,
    }
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
        pid_ns: None,
    })
}

/// Forks of this process: Windows has no `fork`, so always the same count.
pub(crate) fn fork_count() -> Option<u64> {
    Some(0)
}

/// The calling process's identity, with the PID namespace it is numbered in
/// ([`pid_namespace`]).
pub(crate) fn own_identity() -> Option<ProcessIdentity> {
    let mut identity = process_identity(current_pid())?;
    identity.pid_ns = pid_namespace();
    Some(identity)
}

/// What the PIDs of this process's world are numbered in: one Windows
/// installation, named by its `MachineGuid` (made at setup, under
/// `HKLM\SOFTWARE\Microsoft\Cryptography`), as `"machine:<guid>"`. Under Wine every
/// prefix is such a world, with its own wineserver and its own PIDs (each
/// starting at 32) and its own `MachineGuid`: a `stop` run in another prefix
/// over a shared lock dir (`Z:\...`) looked the holder's PID up among its
/// own processes and reported it as exited (issue 17 §7). With this marker
/// it sees another PID namespace and signals nothing. `None` if the value
/// cannot be read (the identity is then judged as before the marker).
///
/// A process-isolated Windows container made from the same image as its
/// host may share the host's `MachineGuid`; it normally has its own host
/// name, which is compared first.
fn pid_namespace() -> Option<String> {
    static NAMESPACE: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    NAMESPACE.get_or_init(machine_guid).clone()
}

fn machine_guid() -> Option<String> {
    use windows_sys::Win32::System::Registry::{
        RegGetValueW, HKEY_LOCAL_MACHINE, RRF_RT_REG_SZ, RRF_SUBKEY_WOW6464KEY,
    };
    let key: Vec<u16> = "SOFTWARE\\Microsoft\\Cryptography\0"
        .encode_utf16()
        .collect();
    let value: Vec<u16> = "MachineGuid\0".encode_utf16().collect();
    let mut buf = [0u16; 128];
    let mut len = std::mem::size_of_val(&buf) as u32;
    // SAFETY: NUL-terminated names; `buf` is writable for `len` bytes and
    // RRF_RT_REG_SZ makes the call NUL-terminate what it writes.
    let err = unsafe {
        RegGetValueW(
            HKEY_LOCAL_MACHINE,
            key.as_ptr(),
            value.as_ptr(),
            RRF_RT_REG_SZ | RRF_SUBKEY_WOW6464KEY,
            std::ptr::null_mut(),
            buf.as_mut_ptr().cast(),
            &mut len,
        )
    };
    if err != 0 {
        return None;
    }
    let chars = (len as usize / 2).min(buf.len());
    let guid = String::from_utf16(&buf[..chars]).ok()?;
    let guid = guid.trim_end_matches('\0').trim();
    (!guid.is_empty()).then(|| format!("machine:{guid}"))
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

/// Pins process `pid` by opening it once (query, wait and terminate rights).
///
/// # Errors
/// `NotFound` if no such process exists; `PermissionDenied` (the raw
/// `ERROR_ACCESS_DENIED`) if it exists but may not be opened with those
/// rights, e.g. an elevated holder seen from a non-elevated `stop`, which
/// must then say "access denied: run stop elevated (as administrator)", not
/// that the holder has exited.
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
    /// process reports); `Int` and `Term` are unsupported (no SIGTERM: see
    /// [`request_stop`]). An exited process is `NotFound`.
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

impl PinnedProcess {
    /// Not supported on Windows (no process groups to signal).
    pub(crate) fn signal_own_group(&self, sig: Signal) -> io::Result<()> {
        signal_group(0, sig)
    }
}

/// Not supported on Windows.
pub(crate) fn signal_group(_pgid: u32, _sig: Signal) -> io::Result<()> {
    Err(io::Error::new(
        io::ErrorKind::Unsupported,
        "process groups are not supported on Windows",
    ))
}

/// Release of an owned lock file. No handle to a lock file shares deletion
/// ([`open_lock_file`]), so the holder cannot delete it while it holds it
/// open: empty it while locked (an acquirer that opens it before the delete
/// sees a fresh file, not a stale one), unlock, close, then delete.
///
/// The delete succeeds only while nobody has the file open, so it can never
/// remove a file someone holds: if a contender opened it meanwhile, the
/// delete fails with a sharing violation and the file stays, empty, for that
/// contender to take or leave. The delete is retried for a few milliseconds
/// in case that contender only looks and closes (a loser or `status`), so
/// the file is usually gone when release returns; an empty file left behind
/// means "free" to every reader. (At worst a retry removes the stale file of
/// a holder that took the port and died within those milliseconds: the next
/// acquirer then starts fresh instead of reporting the reclaim.) Contenders that try to open the file while
/// `DeleteFile` has it open get [`is_transient_open_error`] and retry.
pub(crate) fn remove_held(
    dir: &DirHandle,
    name: &LockName,
    file: File,
) -> Result<(), (File, io::Error)> {
    if let Err(e) = file.set_len(0) {
        return Err((file, e));
    }
    unlock_before_close(&file);
    drop(file);
    for sleep_us in [0, 200, 400, 800, 1600, 3200] {
        std::thread::sleep(std::time::Duration::from_micros(sleep_us));
        // Deleted, already gone, or an error a retry will not fix: the lock
        // is released either way.
        let Err(e) = delete_in(dir, name) else {
            break;
        };
        if !is_transient_open_error(&e) {
            break;
        }
    }
    Ok(())
}

/// Deletes the file `name` in `dir` through the dir's handle, as
/// `DeleteFileW` does by path: open it for `DELETE` (which fails with a
/// sharing violation while anyone else has it open, since no lock file
/// handle shares deletion), mark it for deletion, close.
fn delete_in(dir: &DirHandle, name: &LockName) -> io::Result<()> {
    use windows_sys::Wdk::Storage::FileSystem::{
        FILE_NON_DIRECTORY_FILE, FILE_OPEN, FILE_OPEN_REPARSE_POINT,
    };
    use windows_sys::Win32::Storage::FileSystem::{
        FileDispositionInfo, SetFileInformationByHandle, DELETE, FILE_DISPOSITION_INFO,
    };
    let file = open_in(
        dir,
        name.as_str(),
        DELETE,
        FILE_SHARE_READ | FILE_SHARE_WRITE | FILE_SHARE_DELETE,
        FILE_OPEN,
        FILE_NON_DIRECTORY_FILE | FILE_OPEN_REPARSE_POINT,
    )?;
    let info = FILE_DISPOSITION_INFO { DeleteFile: true };
    // SAFETY: the handle is open with DELETE access; `info` is the
    // structure the class names, alive for the call.
    let ok = unsafe {
        SetFileInformationByHandle(
            file.as_raw_handle() as HANDLE,
            FileDispositionInfo,
            std::ptr::from_ref(&info).cast(),
            std::mem::size_of_val(&info) as u32,
        )
    };
    if ok == 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Windows reports no distinct "locks unsupported" error.
pub(crate) fn is_no_locks_error(_err: &io::Error) -> bool {
    false
}

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
pub(crate) fn reap_orphans(_keep: &[u32]) {}

/// No child listing on Windows (a reload is never started there).
pub(crate) fn child_pids(_pid: u32) -> Vec<u32> {
    Vec::new()
}

/// No process groups on Windows.
pub(crate) fn leads_group(_pid: u32) -> bool {
    false
}

/// The child's exit code (Windows has no "killed by signal").
pub(crate) fn exit_code(status: std::process::ExitStatus) -> i32 {
    status.code().unwrap_or(1)
}

// ---------------------------------------------------------------------------
// Stop channel: Windows has no SIGTERM, so each holder creates a named event
// that `stop` sets (PostgreSQL's `pg_ctl` likewise talks to each postmaster
// through a per-instance named object).

/// The event's name: `Local\llmlb-stop-<dir>-<port>-<pid>`. `<dir>` is the
/// lock dir's identity (volume serial and file index, read through a handle),
/// not its path: two lock dirs never share a name, while two spellings of one
/// dir (relative, 8.3, a junction, another case) always do. `<pid>` makes it
/// per holder, so a new holder never sees a request meant for an old one.
/// `Local\` is the caller's session: a server in another session (a service)
/// is reached only by a `stop` run in that session.
fn stop_event_name(dir: &DirHandle, port: u16, pid: u32) -> io::Result<Vec<u16>> {
    let (volume, index) = dir_identity(dir)?;
    let name = format!("Local\\llmlb-stop-{volume:08x}{index:016x}-{port}-{pid}");
    Ok(name.encode_utf16().chain(std::iter::once(0)).collect())
}

/// Volume serial number and file index of the open directory `dir`.
fn dir_identity(dir: &DirHandle) -> io::Result<(u32, u64)> {
    use windows_sys::Win32::Storage::FileSystem::{
        GetFileInformationByHandle, BY_HANDLE_FILE_INFORMATION,
    };
    // SAFETY: all-zero is a valid BY_HANDLE_FILE_INFORMATION (plain integers).
    let mut info: BY_HANDLE_FILE_INFORMATION = unsafe { std::mem::zeroed() };
    // SAFETY: the handle is open for the call and `info` is writable.
    if unsafe { GetFileInformationByHandle(dir.raw(), &mut info) } == 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((
        info.dwVolumeSerialNumber,
        u64::from(info.nFileIndexHigh) << 32 | u64::from(info.nFileIndexLow),
    ))
}

/// A holder's stop channel: a manual-reset event, unset until `stop` sets it.
#[derive(Debug)]
pub(crate) struct StopChannel {
    event: OwnedHandle,
}

/// Creates this process's stop channel for `port` in `dir`, before the
/// holder's info is written (so a `stop` that reads the info finds it).
///
/// # Security
/// The event's name is predictable, and any process in this session (`Local\`
/// is per session, not per user) may create an object of that name first:
/// with a DACL that locks us out (every start would fail) or one that lets
/// it set our stop request. So the event is created with an owner-only DACL
/// (all access for our token's user, nobody else; [`OwnerOnlyDacl`]), and an
/// event that already exists is used only if its owner is one of ours (our
/// user, or our token's default owner as for lock dirs); its DACL is then
/// replaced by ours. One that is another user's, or that denies us access,
/// is refused with an error that names it; the next start has another PID,
/// hence another name.
///
/// # Errors
/// `PermissionDenied` for a squatted name (see above); the OS error if the
/// token, the DACL or the event cannot be made.
pub(crate) fn create_stop_channel(dir: &DirHandle, port: u16) -> io::Result<StopChannel> {
    use windows_sys::Win32::Foundation::{GetLastError, ERROR_ALREADY_EXISTS};
    use windows_sys::Win32::Security::SECURITY_ATTRIBUTES;
    use windows_sys::Win32::System::Threading::{CreateEventW, ResetEvent};
    let name = stop_event_name(dir, port, std::process::id())?;
    let shown = String::from_utf16_lossy(&name[..name.len() - 1]);
    let ours = own_sids()
        .map_err(|()| io::Error::other("cannot read this process's user from its token"))?;
    let dacl = OwnerOnlyDacl::new(
        ours.first()
            .ok_or_else(|| io::Error::other("this process's token has no user SID"))?,
    )?;
    let mut descriptor = dacl.descriptor()?;
    let attributes = SECURITY_ATTRIBUTES {
        nLength: std::mem::size_of::<SECURITY_ATTRIBUTES>() as u32,
        lpSecurityDescriptor: std::ptr::from_mut(&mut descriptor).cast(),
        bInheritHandle: 0,
    };
    // SAFETY: `attributes` points to a valid descriptor whose DACL (`dacl`)
    // outlives the call; the name is NUL-terminated UTF-16 and outlives it.
    let raw = unsafe { CreateEventW(&attributes, 1, 0, name.as_ptr()) };
    if raw.is_null() {
        let err = io::Error::last_os_error();
        if err.raw_os_error() == Some(ERROR_ACCESS_DENIED as i32) {
            // Only an existing object can deny us: ours would grant us all.
            return Err(squatted(&shown, "denies this user access"));
        }
        return Err(err);
    }
    // SAFETY: reads the calling thread's last error, set by CreateEventW.
    let existed = unsafe { GetLastError() } == ERROR_ALREADY_EXISTS;
    // SAFETY: a fresh handle that nothing else owns.
    let event = unsafe { OwnedHandle::from_raw_handle(raw as _) };
    if existed {
        // Made by someone else: CreateEventW opened it with all access
        // (READ_CONTROL and WRITE_DAC included), ignoring our descriptor.
        match owner_sid(raw, SE_KERNEL_OBJECT) {
            Ok(Some(owner)) if ours.contains(&owner) => dacl.apply(raw)?,
            Ok(_) => return Err(squatted(&shown, "is owned by another user")),
            Err(e) => {
                return Err(squatted(
                    &shown,
                    &format!("has an owner that cannot be read ({e})"),
                ))
            }
        }
    }
    // SAFETY: the handle is open (a reset of a fresh event is a no-op).
    unsafe { ResetEvent(raw) };
    Ok(StopChannel { event })
}

/// The refusal of a stop channel name someone else took first.
fn squatted(name: &str, how: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::PermissionDenied,
        format!(
            "an event named {name} already exists and {how}: another process in this session made it to block or stop this server; not using it (start again: the name includes the PID)"
        ),
    )
}

/// A DACL with one entry: all access for one SID (our token's user).
struct OwnerOnlyDacl {
    /// The ACL, in a buffer aligned for it.
    acl: Vec<u64>,
}

impl OwnerOnlyDacl {
    fn new(sid: &[u8]) -> io::Result<OwnerOnlyDacl> {
        use windows_sys::Win32::Security::{
            AddAccessAllowedAce, InitializeAcl, ACCESS_ALLOWED_ACE, ACL, ACL_REVISION,
        };
        use windows_sys::Win32::System::Threading::EVENT_ALL_ACCESS;
        // The ACE's SidStart field is the first 4 bytes of the SID.
        let len = std::mem::size_of::<ACL>() + std::mem::size_of::<ACCESS_ALLOWED_ACE>()
            - std::mem::size_of::<u32>()
            + sid.len();
        let mut acl = vec![0u64; len.div_ceil(8)];
        let mut sid = sid.to_vec();
        let pacl: *mut ACL = acl.as_mut_ptr().cast();
        // SAFETY: `acl` is writable for `len` bytes and aligned for ACL;
        // `sid` holds a valid SID (from the token) for the call.
        let ok = unsafe {
            InitializeAcl(pacl, len as u32, ACL_REVISION) != 0
                && AddAccessAllowedAce(
                    pacl,
                    ACL_REVISION,
                    EVENT_ALL_ACCESS,
                    sid.as_mut_ptr().cast(),
                ) != 0
        };
        if !ok {
            return Err(io::Error::last_os_error());
        }
        Ok(OwnerOnlyDacl { acl })
    }

    fn as_ptr(&self) -> *const windows_sys::Win32::Security::ACL {
        self.acl.as_ptr().cast()
    }

    /// An absolute security descriptor with this DACL (valid while `self`
    /// is: it points to the ACL) and the creator's default owner.
    fn descriptor(&self) -> io::Result<windows_sys::Win32::Security::SECURITY_DESCRIPTOR> {
        use windows_sys::Win32::Security::{
            InitializeSecurityDescriptor, SetSecurityDescriptorDacl, SECURITY_DESCRIPTOR,
        };
        /// `SECURITY_DESCRIPTOR_REVISION` (in a windows-sys feature we do
        /// not otherwise need).
        const REVISION: u32 = 1;
        // SAFETY: all-zero is a valid SECURITY_DESCRIPTOR to initialise.
        let mut sd: SECURITY_DESCRIPTOR = unsafe { std::mem::zeroed() };
        let psd: PSECURITY_DESCRIPTOR = std::ptr::from_mut(&mut sd).cast();
        // SAFETY: `psd` points to `sd`, writable for the calls; the ACL is
        // valid and only referenced, not copied.
        let ok = unsafe {
            InitializeSecurityDescriptor(psd, REVISION) != 0
                && SetSecurityDescriptorDacl(psd, 1, self.as_ptr(), 0) != 0
        };
        if !ok {
            return Err(io::Error::last_os_error());
        }
        Ok(sd)
    }

    /// Replaces the DACL of the kernel object behind `handle` (opened with
    /// `WRITE_DAC`) by this one, protected from inheritance.
    fn apply(&self, handle: HANDLE) -> io::Result<()> {
        use windows_sys::Win32::Security::{
            DACL_SECURITY_INFORMATION, PROTECTED_DACL_SECURITY_INFORMATION,
        };
        // SAFETY: the caller's handle is open; the ACL is valid for the call.
        let err = unsafe {
            SetSecurityInfo(
                handle,
                SE_KERNEL_OBJECT,
                DACL_SECURITY_INFORMATION | PROTECTED_DACL_SECURITY_INFORMATION,
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                self.as_ptr(),
                std::ptr::null(),
            )
        };
        if err != 0 {
            return Err(io::Error::from_raw_os_error(err as i32));
        }
        Ok(())
    }
}

impl StopChannel {
    /// Waits up to `timeout` for a stop request; true once one was made (the
    /// event stays set). `Duration::MAX` waits forever.
    pub(crate) fn wait(&self, timeout: std::time::Duration) -> bool {
        use windows_sys::Win32::System::Threading::INFINITE;
        let ms = u32::try_from(timeout.as_millis())
            .ok()
            .filter(|&ms| ms != INFINITE)
            .unwrap_or(INFINITE);
        // SAFETY: the handle is open for the call.
        let raw = self.event.as_handle().as_raw_handle() as HANDLE;
        unsafe { WaitForSingleObject(raw, ms) == WAIT_OBJECT_0 }
    }
}

/// Asks the holder `process` (PID `pid`, already verified) to stop: sets its
/// stop channel. `NotFound` if it has exited; `Unsupported` if it is alive
/// but has no channel (it holds the lock through an llmlb without one).
pub(crate) fn request_stop(
    dir: &DirHandle,
    port: u16,
    pid: u32,
    process: &PinnedProcess,
) -> io::Result<()> {
    use windows_sys::Win32::Foundation::ERROR_FILE_NOT_FOUND;
    use windows_sys::Win32::System::Threading::{OpenEventW, SetEvent, EVENT_MODIFY_STATE};
    let name = stop_event_name(dir, port, pid)?;
    // SAFETY: a NUL-terminated UTF-16 name that outlives the call.
    let raw = unsafe { OpenEventW(EVENT_MODIFY_STATE, 0, name.as_ptr()) };
    if raw.is_null() {
        let err = io::Error::last_os_error();
        if process.has_exited() == Some(true) {
            return Err(io::ErrorKind::NotFound.into());
        }
        if err.raw_os_error() == Some(ERROR_FILE_NOT_FOUND as i32) {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "it has no stop channel (it holds the lock through an older llmlb); use --force to terminate it",
            ));
        }
        return Err(err);
    }
    // SAFETY: a fresh handle that nothing else owns.
    let event = unsafe { OwnedHandle::from_raw_handle(raw as _) };
    // SAFETY: the handle is open and has EVENT_MODIFY_STATE.
    if unsafe { SetEvent(event.as_handle().as_raw_handle() as HANDLE) } == 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Exec mode: the command's tree is a job object.

/// The exec child's tree: a job object with kill-on-close, so the command and
/// everything it starts die with llmlb however llmlb ends (the Windows twin of
/// Linux's parent-death signal): the handle is not inheritable, so when this
/// process dies, the kernel closes the last handle and terminates the job.
#[derive(Debug)]
pub(crate) struct ChildTree {
    job: OwnedHandle,
    /// The child's PID, which is also its console process group's ID
    /// (`CREATE_NEW_PROCESS_GROUP`).
    group: u32,
}

/// Creation flags for the exec child: its own console process group, so
/// `CTRL_BREAK_EVENT` reaches it (and its console descendants) but not us;
/// suspended until [`attach_child`] has put it in its job, so nothing it
/// starts can escape the job.
pub(crate) fn configure_child(cmd: &mut std::process::Command) {
    use std::os::windows::process::CommandExt as _;
    use windows_sys::Win32::System::Threading::{CREATE_NEW_PROCESS_GROUP, CREATE_SUSPENDED};
    cmd.creation_flags(CREATE_NEW_PROCESS_GROUP | CREATE_SUSPENDED);
}

/// Puts the child `pid` (spawned suspended by a command prepared with
/// [`configure_child`]) into a new kill-on-close job, then resumes it.
///
/// # Errors
/// The OS error of the step that failed (opening the child, making the job,
/// assigning the child to it, resuming it). On every error the child is
/// terminated first: it never ran, and left suspended it would never exit,
/// so a caller waiting for it would wait forever.
pub(crate) fn attach_child(pid: u32) -> io::Result<ChildTree> {
    // One exit: the steps return their error here (no `?` in this
    // function), so no failure can skip the termination below.
    let process = open_child(pid);
    let attached = match &process {
        Ok(process) => into_new_job(pid, process),
        Err(e) => Err(io::Error::new(
            e.kind(),
            format!("cannot open the new process {pid}: {e}"),
        )),
    };
    if attached.is_err() {
        terminate_unstarted(pid, process.as_ref().ok());
    }
    attached
}

/// The steps of [`attach_child`] that can fail, for [`fail_point`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AttachStep {
    Open,
    Job,
    Assign,
    Resume,
}

#[cfg(test)]
thread_local! {
    /// The step of [`attach_child`] a test makes fail on its thread.
    static FAIL_AT: std::cell::Cell<Option<AttachStep>> = const { std::cell::Cell::new(None) };
}

/// `Ok` outside tests; in a test, an error at the step it chose to fail.
fn fail_point(step: AttachStep) -> io::Result<()> {
    #[cfg(test)]
    if FAIL_AT.with(std::cell::Cell::get) == Some(step) {
        return Err(io::Error::other(format!("injected failure at {step:?}")));
    }
    let _ = step;
    Ok(())
}

fn open_child(pid: u32) -> io::Result<OwnedHandle> {
    fail_point(AttachStep::Open)?;
    open_process(pid, PROCESS_SET_QUOTA | PROCESS_TERMINATE)
}

/// [`attach_child`]'s steps after the open: a new job, the child in it, the
/// child resumed.
fn into_new_job(pid: u32, process: &OwnedHandle) -> io::Result<ChildTree> {
    fail_point(AttachStep::Job)?;
    let job = new_kill_on_close_job()?;
    fail_point(AttachStep::Assign)?;
    let raw_job = job.as_handle().as_raw_handle() as HANDLE;
    let raw_process = process.as_handle().as_raw_handle() as HANDLE;
    // SAFETY: both handles are open for the call.
    if unsafe { AssignProcessToJobObject(raw_job, raw_process) } == 0 {
        return Err(io::Error::last_os_error());
    }
    fail_point(AttachStep::Resume)?;
    resume_threads(pid)?;
    Ok(ChildTree { job, group: pid })
}

/// Terminates the suspended child after a failed attach: through `process`
/// if it was opened, else through a handle opened for termination alone
/// (the caller's own handle from `CreateProcess` is the last resort: see
/// `cli::exec`). A failure is logged; there is nothing else to try here.
fn terminate_unstarted(pid: u32, process: Option<&OwnedHandle>) {
    let opened;
    let handle = match process {
        Some(handle) => handle,
        None => match open_process(pid, PROCESS_TERMINATE) {
            Ok(handle) => {
                opened = handle;
                &opened
            }
            Err(e) => {
                tracing::warn!("cannot terminate the new process {pid}, left suspended: {e}");
                return;
            }
        },
    };
    // SAFETY: the handle is open and has PROCESS_TERMINATE.
    if unsafe { TerminateProcess(handle.as_handle().as_raw_handle() as HANDLE, 1) } == 0 {
        let e = io::Error::last_os_error();
        tracing::warn!("cannot terminate the new process {pid}, left suspended: {e}");
    }
}

fn new_kill_on_close_job() -> io::Result<OwnedHandle> {
    // SAFETY: NULL attributes (not inheritable) and no name.
    let raw = unsafe { CreateJobObjectW(std::ptr::null(), std::ptr::null()) };
    if raw.is_null() {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh handle that nothing else owns.
    let job = unsafe { OwnedHandle::from_raw_handle(raw as _) };
    // SAFETY: all-zero is a valid (no limits) JOBOBJECT_EXTENDED_LIMIT_INFORMATION.
    let mut limits: JOBOBJECT_EXTENDED_LIMIT_INFORMATION = unsafe { std::mem::zeroed() };
    limits.BasicLimitInformation.LimitFlags = JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE;
    // SAFETY: the handle is open; the pointer and size describe `limits`.
    let ok = unsafe {
        SetInformationJobObject(
            raw,
            JobObjectExtendedLimitInformation,
            std::ptr::from_ref(&limits).cast(),
            std::mem::size_of_val(&limits) as u32,
        )
    };
    if ok == 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(job)
}

/// Resumes every thread of the suspended process `pid` (a new process has
/// one). std's `Child` keeps the thread handle to itself, so the thread is
/// found through a snapshot.
fn resume_threads(pid: u32) -> io::Result<()> {
    use windows_sys::Win32::System::Diagnostics::ToolHelp::{
        CreateToolhelp32Snapshot, Thread32First, Thread32Next, TH32CS_SNAPTHREAD, THREADENTRY32,
    };
    use windows_sys::Win32::System::Threading::{OpenThread, ResumeThread, THREAD_SUSPEND_RESUME};
    // SAFETY: plain values in; a new handle or INVALID_HANDLE_VALUE out.
    let raw = unsafe { CreateToolhelp32Snapshot(TH32CS_SNAPTHREAD, 0) };
    if raw == windows_sys::Win32::Foundation::INVALID_HANDLE_VALUE {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh handle that nothing else owns.
    let snapshot = unsafe { OwnedHandle::from_raw_handle(raw as _) };
    let snap = snapshot.as_handle().as_raw_handle() as HANDLE;
    // SAFETY: all-zero is a valid THREADENTRY32; dwSize is set as required.
    let mut entry: THREADENTRY32 = unsafe { std::mem::zeroed() };
    entry.dwSize = std::mem::size_of::<THREADENTRY32>() as u32;
    let mut resumed = 0;
    // SAFETY: the snapshot is open and `entry` is writable with its size set.
    let mut more = unsafe { Thread32First(snap, &mut entry) } != 0;
    while more {
        if entry.th32OwnerProcessID == pid {
            // SAFETY: plain values in; a new handle or NULL out.
            let thread = unsafe { OpenThread(THREAD_SUSPEND_RESUME, 0, entry.th32ThreadID) };
            if !thread.is_null() {
                // SAFETY: a fresh handle that nothing else owns.
                let thread = unsafe { OwnedHandle::from_raw_handle(thread as _) };
                // SAFETY: the handle is open with THREAD_SUSPEND_RESUME.
                if unsafe { ResumeThread(thread.as_handle().as_raw_handle() as HANDLE) } != u32::MAX
                {
                    resumed += 1;
                }
            }
        }
        // SAFETY: as for Thread32First.
        more = unsafe { Thread32Next(snap, &mut entry) } != 0;
    }
    if resumed == 0 {
        return Err(io::Error::other(format!(
            "cannot resume the new process {pid}: no thread of it found"
        )));
    }
    Ok(())
}

impl ChildTree {
    /// Nothing to record: `stop --force` terminates llmlb, and the job dies
    /// with it.
    pub(crate) fn pgid(&self) -> Option<u32> {
        None
    }

    /// `Int`/`Term`: `CTRL_BREAK_EVENT` to the child's console process group
    /// (Ctrl-C cannot be sent to a group other than the caller's own; the
    /// child shares our console, if we have one). `Kill`: terminates every
    /// process in the job.
    pub(crate) fn signal(&self, sig: Signal) -> io::Result<()> {
        use windows_sys::Win32::System::Console::{GenerateConsoleCtrlEvent, CTRL_BREAK_EVENT};
        // SAFETY: plain values in (Int/Term); the job handle is open (Kill).
        let ok = match sig {
            Signal::Int | Signal::Term => unsafe {
                GenerateConsoleCtrlEvent(CTRL_BREAK_EVENT, self.group)
            },
            Signal::Kill => unsafe { TerminateJobObject(self.raw_job(), 1) },
        };
        if ok == 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Whether no process of the job is left.
    pub(crate) fn is_gone(&self) -> bool {
        // SAFETY: all-zero is a valid accounting record (plain integers).
        let mut info: JOBOBJECT_BASIC_ACCOUNTING_INFORMATION = unsafe { std::mem::zeroed() };
        // SAFETY: the handle is open; the pointer and size describe `info`.
        let ok = unsafe {
            QueryInformationJobObject(
                self.raw_job(),
                JobObjectBasicAccountingInformation,
                std::ptr::from_mut(&mut info).cast(),
                std::mem::size_of_val(&info) as u32,
                std::ptr::null_mut(),
            )
        };
        ok != 0 && info.ActiveProcesses == 0
    }

    fn raw_job(&self) -> HANDLE {
        self.job.as_handle().as_raw_handle() as HANDLE
    }
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
        let holder = open_for_lock(&dir, &LockName::for_port(1)).unwrap();
        write_all_at(&holder, br#"{"pid":1}"#, 0).unwrap();
        assert_eq!(try_lock_exclusive(&holder).unwrap(), TryLock::Acquired);

        let reader = open_for_probe(&dir, &LockName::for_port(1)).unwrap();
        assert_eq!(try_lock_shared(&reader).unwrap(), TryLock::Contended);
        // Everything below the lock byte, the info included, is free.
        assert!(lock_shared_from_start(&reader, LOCK_OFFSET));
        let mut buf = [0u8; 16];
        assert_eq!(read_at(&reader, &mut buf, 0).unwrap(), 9);
        drop(reader);

        unlock_before_close(&holder);
        let prober = open_for_probe(&dir, &LockName::for_port(1)).unwrap();
        assert_eq!(try_lock_shared(&prober).unwrap(), TryLock::Acquired);
        drop(holder);
    }

    /// A file held open the way `DeleteFile` holds it (DELETE access, its
    /// deletion pending) until `drop`.
    fn delete_in_progress(path: &Path) -> File {
        use windows_sys::Win32::Storage::FileSystem::{
            FileDispositionInfo, SetFileInformationByHandle, DELETE, FILE_DISPOSITION_INFO,
        };
        let file = OpenOptions::new()
            .access_mode(DELETE)
            .share_mode(FILE_SHARE_READ | FILE_SHARE_WRITE | FILE_SHARE_DELETE)
            .open(path)
            .unwrap();
        let info = FILE_DISPOSITION_INFO { DeleteFile: true };
        // SAFETY: the handle is open and has DELETE access; `info` is the
        // structure the class names, alive for the call.
        let ok = unsafe {
            SetFileInformationByHandle(
                file.as_raw_handle() as HANDLE,
                FileDispositionInfo,
                std::ptr::from_ref(&info).cast(),
                std::mem::size_of_val(&info) as u32,
            )
        };
        assert_ne!(ok, 0, "{}", io::Error::last_os_error());
        file
    }

    /// Regression test (issue 10): an acquire that met a releasing holder
    /// inside `DeleteFile` failed with "Sharing violation (os error 32)",
    /// an I/O error, so a second server could fail to start instead of
    /// taking the port. Held for the whole retry window, the deleter makes
    /// the acquire report `Busy` (retry), never an I/O error; once the
    /// delete completes the port is free and taken fresh.
    #[test]
    fn an_acquire_meeting_a_release_in_deletefile_reports_busy_then_takes_the_port() {
        use crate::lock::{acquire_or_reclaim, LockDir, LockError, LockState};
        let tmp = tempfile::tempdir().unwrap();
        let dir = LockDir::create(tmp.path().join("locks")).unwrap();
        let path = dir.lock_path(4242);
        std::fs::write(&path, b"").unwrap();
        let deleter = delete_in_progress(&path);

        let err =
            open_for_lock(&open_dir(dir.path()).unwrap(), &LockName::for_port(4242)).unwrap_err();
        assert!(is_transient_open_error(&err), "{err:?}");
        match acquire_or_reclaim(&dir, 4242) {
            Err(LockError::Busy { path: busy }) => assert_eq!(busy, path),
            other => panic!("expected Busy, got {other:?}"),
        }
        // A probe cannot tell a slow delete from another program keeping the
        // file open: after its window it says so, naming the file.
        let err = dir.probe(4242).unwrap_err().to_string();
        assert!(err.contains("serve_4242.lock"), "{err}");
        assert!(err.contains("open without sharing it"), "{err}");

        drop(deleter);
        assert!(!path.exists(), "the delete completed");
        assert_eq!(dir.probe(4242).unwrap(), LockState::Free);
        let guard = acquire_or_reclaim(&dir, 4242).unwrap();
        assert!(!guard.was_reclaimed());
        guard.release().unwrap();
        assert!(!path.exists());
    }

    /// A release whose delete meets a reader's open handle still releases:
    /// the file stays, empty, which every reader and acquirer takes as free.
    #[test]
    fn a_release_blocked_from_deleting_leaves_an_empty_file_that_means_free() {
        use crate::lock::{acquire_or_reclaim, LockDir, LockState};
        let tmp = tempfile::tempdir().unwrap();
        let dir = LockDir::create(tmp.path().join("locks")).unwrap();
        let path = dir.lock_path(4243);
        let guard = acquire_or_reclaim(&dir, 4243).unwrap();
        let reader =
            open_for_probe(&open_dir(dir.path()).unwrap(), &LockName::for_port(4243)).unwrap();
        guard.release().unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 0);
        assert_eq!(dir.probe(4243).unwrap(), LockState::Free);
        let guard = acquire_or_reclaim(&dir, 4243).unwrap();
        assert!(!guard.was_reclaimed());
        drop(reader);
        guard.release().unwrap();
        assert!(!path.exists());
    }

    /// SIDs as bytes: revision 1, subauthority count, authority, then the
    /// subauthorities (little-endian).
    fn sid(authority: u8, subs: &[u32]) -> Vec<u8> {
        let mut bytes = vec![1, subs.len() as u8, 0, 0, 0, 0, 0, authority];
        for sub in subs {
            bytes.extend_from_slice(&sub.to_le_bytes());
        }
        bytes
    }

    #[test]
    fn a_dir_is_ours_only_if_owned_by_our_user_or_our_default_owner() {
        let user = sid(5, &[21, 1, 2, 3, 1001]);
        let admins = sid(5, &[32, 544]);
        let ours = [user.clone(), admins.clone()];
        assert_eq!(judge_owner(Some(&user), &ours), Ok(()));
        // An elevated administrator's dirs are owned by Administrators.
        assert_eq!(judge_owner(Some(&admins), &ours), Ok(()));
        // No owner (FAT): Windows cannot tell.
        assert_eq!(judge_owner(None, &ours), Ok(()));
        for foreign in [
            sid(5, &[21, 1, 2, 3, 1002]),    // another user of the same domain
            sid(5, &[21, 1, 2, 4, 1001]),    // same RID, another domain
            sid(5, &[18]),                   // SYSTEM
            sid(5, &[7]),                    // ANONYMOUS LOGON (Wine: another Unix uid)
            sid(5, &[21, 1, 2, 3, 1001, 0]), // our SID with one more subauthority
            sid(5, &[21, 1, 2, 3]),          // a prefix of our SID
        ] {
            assert_eq!(
                judge_owner(Some(&foreign), &ours),
                Err(DirRefusal::ForeignOwner),
                "{foreign:?}"
            );
        }
        assert_eq!(judge_owner(Some(&user), &[]), Err(DirRefusal::ForeignOwner));
    }

    /// The check is not vacuous: a dir we create has a readable owner, and it
    /// is one of ours.
    #[test]
    fn a_dir_we_create_has_an_owner_and_it_is_ours() {
        let tmp = tempfile::tempdir().unwrap();
        let owner = owner_sid(open_dir(tmp.path()).unwrap().raw(), SE_FILE_OBJECT)
            .unwrap()
            .expect("an owner SID");
        let ours = own_sids().unwrap();
        assert!(!ours.is_empty());
        assert!(ours.contains(&owner), "{owner:?} not in {ours:?}");
        assert_eq!(check_dir(&open_dir(tmp.path()).unwrap()), Ok(()));
        crate::lock::LockDir::create(tmp.path().join("locks")).unwrap();
    }

    #[test]
    fn a_foreign_owner_is_refused_with_a_windows_fix() {
        let hint = dir_fix_hint(Path::new(r"C:\x"), DirRefusal::ForeignOwner);
        assert!(hint.contains("a directory you own"), "{hint}");
        assert!(!hint.contains("chmod"), "{hint}");
        let err = crate::lock::LockError::UnsafeLockDir {
            path: r"C:\x".into(),
            reason: DirRefusal::ForeignOwner.reason(),
            fix: hint,
        }
        .to_string();
        assert!(
            err.starts_with(
                r"unsafe lock dir C:\x: it is owned by another user; set LLMLB_LOCK_DIR"
            ),
            "{err}"
        );
    }

    /// A stop request reaches exactly the channel of its lock dir, port and
    /// PID: the same dir by another spelling reaches it, another dir or port
    /// does not, and a PID without a channel is `Unsupported`.
    #[test]
    fn a_stop_request_sets_only_the_channel_of_its_dir_port_and_pid() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::create_dir(tmp.path().join("a")).unwrap();
        std::fs::create_dir(tmp.path().join("b")).unwrap();
        let a = open_dir(&tmp.path().join("a")).unwrap();
        let a_again = open_dir(&tmp.path().join("b").join("..").join("a")).unwrap();
        let b = open_dir(&tmp.path().join("b")).unwrap();
        let channel = create_stop_channel(&a, 4001).unwrap();
        let other_port = create_stop_channel(&a, 4002).unwrap();
        let other_dir = create_stop_channel(&b, 4001).unwrap();
        assert!(!channel.wait(std::time::Duration::ZERO));

        let me = pin_process(std::process::id()).unwrap();
        request_stop(&a_again, 4001, std::process::id(), &me).unwrap();
        assert!(channel.wait(std::time::Duration::ZERO));
        assert!(
            channel.wait(std::time::Duration::MAX),
            "a request stays made"
        );
        assert!(!other_port.wait(std::time::Duration::ZERO));
        assert!(!other_dir.wait(std::time::Duration::ZERO));

        let err = request_stop(&a, 4003, std::process::id(), &me).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::Unsupported);
    }

    /// Spawns `cmd /c exit 7` as exec mode does (suspended, see
    /// [`configure_child`]), then attaches it with `fail` injected.
    fn attach_suspended(fail: Option<AttachStep>) -> (std::process::Child, io::Result<ChildTree>) {
        let mut cmd = std::process::Command::new("cmd");
        cmd.args(["/c", "exit 7"])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null());
        configure_child(&mut cmd);
        let child = cmd.spawn().unwrap();
        FAIL_AT.with(|f| f.set(fail));
        let attached = attach_child(child.id());
        FAIL_AT.with(|f| f.set(None));
        (child, attached)
    }

    /// The exit code of `child` once it has exited; `None` if it is still
    /// there after 15 s (suspended for good: a caller would hang).
    fn exit_code_within_patience(child: &std::process::Child) -> Option<u32> {
        use windows_sys::Win32::System::Threading::GetExitCodeProcess;
        let raw = child.as_raw_handle() as HANDLE;
        // SAFETY: std's handle to the child is open for the call.
        if unsafe { WaitForSingleObject(raw, 15_000) } != WAIT_OBJECT_0 {
            return None;
        }
        let mut code = 0;
        // SAFETY: as above; `code` is writable.
        assert_ne!(unsafe { GetExitCodeProcess(raw, &mut code) }, 0);
        Some(code)
    }

    /// Issue 17 §7: whichever step of the attach fails, opening the child
    /// included, the suspended child is terminated (it never ran: not its
    /// own exit code 7, but 1 from our termination or 0 from its job's
    /// kill-on-close) instead of left suspended, where exec mode would wait
    /// for it forever. Without a failure it runs and exits 7 by itself.
    #[test]
    fn a_failed_attach_terminates_the_suspended_child_at_every_step() {
        let (mut child, attached) = attach_suspended(None);
        let tree = attached.unwrap();
        assert_eq!(exit_code_within_patience(&child), Some(7));
        child.wait().unwrap();
        drop(tree);
        for step in [
            AttachStep::Open,
            AttachStep::Job,
            AttachStep::Assign,
            AttachStep::Resume,
        ] {
            let (mut child, attached) = attach_suspended(Some(step));
            let err = attached.unwrap_err().to_string();
            assert!(
                err.contains(&format!("injected failure at {step:?}")),
                "{err}"
            );
            let code = exit_code_within_patience(&child);
            if code.is_none() {
                let _ = child.kill();
            }
            assert!(
                matches!(code, Some(0 | 1)),
                "after a failure at {step:?}: {code:?}"
            );
            child.wait().unwrap();
        }
    }

    /// Issue 17 §7: only "no such process" is `NotFound`; access denied (an
    /// elevated holder, for a non-elevated `stop`) stays a permission error
    /// with its OS code, so it is never reported as an exited PID.
    #[test]
    fn a_pin_tells_a_missing_process_from_one_it_may_not_open() {
        let gone = open_process_error(io::Error::from_raw_os_error(ERROR_INVALID_PARAMETER as i32));
        assert_eq!(gone.kind(), io::ErrorKind::NotFound);
        let denied = open_process_error(io::Error::from_raw_os_error(ERROR_ACCESS_DENIED as i32));
        assert_eq!(denied.kind(), io::ErrorKind::PermissionDenied);
        assert_eq!(denied.raw_os_error(), Some(ERROR_ACCESS_DENIED as i32));
        // What `stop` makes of a PermissionDenied pin is tested beside
        // `stop` (supervise/stop.rs): the fix, not "has exited".
        let other = open_process_error(io::Error::from_raw_os_error(8)); // not enough memory
        assert_eq!(other.raw_os_error(), Some(8));
        assert_ne!(other.kind(), io::ErrorKind::NotFound);

        // A PID that names nothing: the largest multiple of 4 (Windows PIDs
        // are multiples of 4 and come from a table far smaller than that).
        let err = pin_process(0xFFFF_FFFC).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound, "{err}");
        assert!(pin_process(std::process::id()).is_ok());
    }

    /// A squatter's event under the name of our stop channel for `port` in
    /// `dir`, with the security descriptor `sddl` (SDDL), made by this test
    /// process before the channel (a process of the same session would do
    /// the same). `Err` if the descriptor cannot be given (the owner of
    /// `O:` must be one the caller may assign).
    fn squat(dir: &DirHandle, port: u16, sddl: &str) -> io::Result<OwnedHandle> {
        use windows_sys::Win32::Security::Authorization::{
            ConvertStringSecurityDescriptorToSecurityDescriptorW, SDDL_REVISION_1,
        };
        use windows_sys::Win32::Security::SECURITY_ATTRIBUTES;
        use windows_sys::Win32::System::Threading::CreateEventW;
        let name = stop_event_name(dir, port, std::process::id()).unwrap();
        let wide: Vec<u16> = sddl.encode_utf16().chain(Some(0)).collect();
        let mut sd: PSECURITY_DESCRIPTOR = std::ptr::null_mut();
        // SAFETY: a NUL-terminated string in; `sd` receives a LocalAlloc'ed
        // descriptor, freed below.
        let ok = unsafe {
            ConvertStringSecurityDescriptorToSecurityDescriptorW(
                wide.as_ptr(),
                SDDL_REVISION_1,
                &mut sd,
                std::ptr::null_mut(),
            )
        };
        assert_ne!(ok, 0, "{sddl}: {}", io::Error::last_os_error());
        let attributes = SECURITY_ATTRIBUTES {
            nLength: std::mem::size_of::<SECURITY_ATTRIBUTES>() as u32,
            lpSecurityDescriptor: sd,
            bInheritHandle: 0,
        };
        // SAFETY: valid attributes and name for the call.
        let raw = unsafe { CreateEventW(&attributes, 1, 0, name.as_ptr()) };
        let result = if raw.is_null() {
            Err(io::Error::last_os_error())
        } else {
            // SAFETY: a fresh handle that nothing else owns.
            Ok(unsafe { OwnedHandle::from_raw_handle(raw as _) })
        };
        // SAFETY: allocated by the conversion above.
        unsafe { LocalFree(sd as _) };
        result
    }

    /// The number of entries in the DACL of the event behind `handle`.
    fn dacl_entries(handle: &OwnedHandle) -> u16 {
        use windows_sys::Win32::Security::{ACL, DACL_SECURITY_INFORMATION};
        let mut dacl: *mut ACL = std::ptr::null_mut();
        let mut sd: PSECURITY_DESCRIPTOR = std::ptr::null_mut();
        // SAFETY: the handle is open; valid out-pointers.
        let err = unsafe {
            GetSecurityInfo(
                handle.as_raw_handle() as HANDLE,
                SE_KERNEL_OBJECT,
                DACL_SECURITY_INFORMATION,
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                &mut dacl,
                std::ptr::null_mut(),
                &mut sd,
            )
        };
        assert_eq!(err, 0);
        assert!(!dacl.is_null(), "a NULL DACL grants everyone everything");
        // SAFETY: `dacl` points into `sd`, valid until the LocalFree.
        let count = unsafe { (*dacl).AceCount };
        // SAFETY: allocated by GetSecurityInfo.
        unsafe { LocalFree(sd as _) };
        count
    }

    /// Issue 17 §7: our stop channel has an owner-only DACL (one entry).
    /// A name taken first with a DACL that locks us out is refused with a
    /// message that names it and says why; one taken by a process of our
    /// own user that lets everyone in (WD: Everyone) is used, with its DACL
    /// replaced by ours, so no one else can set our stop request.
    #[test]
    fn a_squatted_stop_channel_is_refused_or_made_owner_only() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = open_dir(tmp.path()).unwrap();

        let channel = create_stop_channel(&dir, 4101).unwrap();
        assert_eq!(dacl_entries(&channel.event), 1);

        let _locked_out = squat(&dir, 4102, "D:P").unwrap();
        let err = create_stop_channel(&dir, 4102).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::PermissionDenied, "{err}");
        let text = err.to_string();
        assert!(
            text.contains("Local\\llmlb-stop-")
                && text.contains(&format!("-4102-{}", std::process::id()))
                && text.contains("already exists and denies this user access"),
            "{text}"
        );
        assert!(!text.contains('\n') && !text.contains("Os {"), "{text}");

        let open_to_all = squat(&dir, 4103, "D:P(A;;GA;;;WD)").unwrap();
        assert!(dacl_entries(&open_to_all) >= 1);
        let channel = create_stop_channel(&dir, 4103).unwrap();
        assert_eq!(dacl_entries(&channel.event), 1);
        // The squatter's entry for Everyone is gone: what it opens from now on
        // gets only what our user is granted (it is our user here).
        drop(open_to_all);

        // Another user's (SYSTEM's here, S-1-5-18) event that lets us in. Wine
        // lets any process assign any owner, as Windows lets an elevated one
        // with SeRestorePrivilege; a plain Windows user cannot make this.
        let foreign = squat(&dir, 4104, "O:SYD:P(A;;GA;;;WD)")
            .expect("an owner this process may not assign: run elevated on Windows");
        let foreign_owner = owner_sid(foreign.as_raw_handle() as HANDLE, SE_KERNEL_OBJECT);
        assert_eq!(foreign_owner.unwrap(), Some(sid(5, &[18])));
        let err = create_stop_channel(&dir, 4104).unwrap_err();
        assert!(
            err.to_string().contains("is owned by another user"),
            "{err}"
        );
    }

    /// Issue 17 §7: a holder records the installation (under Wine: the
    /// prefix) its PID is numbered in, so a `stop` run in another prefix
    /// over a shared lock dir sees another PID namespace instead of looking
    /// the number up among its own processes and calling it exited.
    #[test]
    fn a_holder_records_its_machine_as_its_pid_namespace() {
        use crate::lock::{IdentityCheck, LockInfo};
        let ns = own_identity()
            .and_then(|me| me.pid_ns)
            .expect("MachineGuid readable");
        let guid = ns.strip_prefix("machine:").unwrap();
        assert_eq!(guid.len(), 36, "{ns}");
        assert_eq!(pid_namespace(), Some(ns.clone()));

        let mut info = LockInfo::for_current_process(1);
        assert_eq!(info.identity.as_ref().unwrap().pid_ns, Some(ns));
        assert_eq!(info.check_identity(), IdentityCheck::Same);
        // The same record written in another prefix: its own MachineGuid.
        info.identity.as_mut().unwrap().pid_ns =
            Some("machine:00000000-0000-4000-8000-000000000000".to_owned());
        assert_eq!(info.check_identity(), IdentityCheck::OtherPidNamespace);
    }

    /// Issue 17 §7: an open lock dir cannot be renamed away or removed
    /// while its handle is open (it shares no deletion), so no other dir or
    /// junction can take its name; once closed it can.
    #[test]
    fn an_open_lock_dir_cannot_be_renamed_or_removed_until_closed() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("locks");
        std::fs::create_dir(&path).unwrap();
        let dir = open_dir(&path).unwrap();
        let aside = tmp.path().join("aside");
        let err = std::fs::rename(&path, &aside).unwrap_err();
        assert_eq!(
            err.raw_os_error(),
            Some(ERROR_SHARING_VIOLATION as i32),
            "{err}"
        );
        let err = std::fs::remove_dir(&path).unwrap_err();
        assert_eq!(
            err.raw_os_error(),
            Some(ERROR_SHARING_VIOLATION as i32),
            "{err}"
        );
        drop(dir);
        std::fs::rename(&path, &aside).unwrap();

        std::fs::write(&path, b"").unwrap();
        let err = open_dir(&path).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(ERROR_DIRECTORY), "{err}");
        let err = open_dir(&tmp.path().join("missing")).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound, "{err}");
    }

    /// Issue 17 §7: every file of an open lock dir is reached through its
    /// handle, never by its path again. Here the path is relative and the
    /// working directory changes after the check, so the same path now names
    /// another dir (what a dir swapped for a junction does to an absolute
    /// path where Windows' sharing cannot stop it, e.g. from the Unix side
    /// under Wine): lock files are still created, found, listed and deleted
    /// in the dir that was checked, and nothing happens in the other one.
    #[test]
    fn a_lock_dir_whose_path_names_another_dir_later_redirects_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        for side in ["a", "b"] {
            std::fs::create_dir_all(tmp.path().join(side).join("locks")).unwrap();
        }
        let checked = tmp.path().join("a").join("locks");
        let other = tmp.path().join("b").join("locks");
        let cwd = std::env::current_dir().unwrap();
        std::env::set_current_dir(tmp.path().join("a")).unwrap();
        let dir = open_dir(Path::new("locks"));
        std::env::set_current_dir(tmp.path().join("b")).unwrap();
        let name = LockName::for_port(4201);
        let file = dir.as_ref().map(|dir| open_for_lock(dir, &name));
        std::env::set_current_dir(cwd).unwrap();
        let file = file.unwrap().unwrap();
        let dir = dir.unwrap();

        write_all_at(&file, b"{}", 0).unwrap();
        assert!(checked.join("serve_4201.lock").exists());
        assert!(!other.join("serve_4201.lock").exists(), "redirected");
        assert_eq!(
            name_id(&dir, &name).unwrap(),
            Some(FileId { dev: 0, ino: 0 })
        );
        assert_eq!(
            list_names(&dir).unwrap(),
            vec![std::ffi::OsString::from("serve_4201.lock")]
        );
        std::fs::write(other.join("serve_4202.lock"), b"{}").unwrap();
        let err = open_for_probe(&dir, &LockName::for_port(4202)).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound, "{err}");
        assert_eq!(name_id(&dir, &LockName::for_port(4202)).unwrap(), None);

        assert_eq!(try_lock_exclusive(&file).unwrap(), TryLock::Acquired);
        remove_held(&dir, &name, file).unwrap();
        assert!(!checked.join("serve_4201.lock").exists());
        assert!(other.join("serve_4202.lock").exists());
        assert_eq!(list_names(&dir).unwrap(), Vec::<std::ffi::OsString>::new());
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
