//! The pidfile's system calls on Unix: everything relative to one directory
//! descriptor, never following a symlink at the file's own name.

use std::ffi::{CString, OsStr};
use std::fs::File;
use std::io::{self, Read as _, Write as _};
use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};
use std::os::unix::ffi::OsStrExt as _;
use std::path::Path;

/// The pidfile's directory, opened once.
#[derive(Debug)]
pub(super) struct Dir(OwnedFd);

fn cvt(rc: libc::c_int) -> io::Result<libc::c_int> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

fn c_name(name: &OsStr) -> io::Result<CString> {
    CString::new(name.as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "the name contains a NUL byte"))
}

/// Opens `path` as a directory, following symlinks on the way (a symlinked
/// ancestor such as `/var/run` → `/run` is the administrator's, and fine).
pub(super) fn open_dir(path: &Path) -> io::Result<Dir> {
    let path = c_name(path.as_os_str())?;
    // SAFETY: a NUL-terminated path and plain flags; a new descriptor or -1.
    let fd = cvt(unsafe {
        libc::open(
            path.as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    })?;
    // SAFETY: `fd` is a fresh descriptor nobody else owns.
    Ok(Dir(unsafe { OwnedFd::from_raw_fd(fd) }))
}

/// Whether users other than us and root can create, rename or remove files
/// in `dir`: it is world-writable, group-writable by a group other than our
/// own and root's, or owned by another user (who can chmod it); and it lacks
/// the sticky bit, which limits renames and removals to a file's owner.
pub(super) fn others_can_write(dir: &Dir) -> io::Result<bool> {
    // SAFETY: `stat` is plain data, filled in by fstat on success.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: an open descriptor and a valid out-pointer.
    cvt(unsafe { libc::fstat(dir.0.as_raw_fd(), &mut st) })?;
    // mode_t is u16 on macOS, u32 on Linux.
    #[allow(clippy::unnecessary_cast)]
    let (mode, sticky) = (st.st_mode as u32, libc::S_ISVTX as u32);
    if mode & sticky != 0 {
        return Ok(false);
    }
    // SAFETY: geteuid/getegid cannot fail.
    let (euid, egid) = unsafe { (libc::geteuid(), libc::getegid()) };
    let world = mode & 0o002 != 0;
    let group = mode & 0o020 != 0 && st.st_gid != egid && st.st_gid != 0;
    let owner = st.st_uid != euid && st.st_uid != 0;
    Ok(world || group || owner)
}

/// Whether `name` in `dir` is a symlink (false if it does not exist).
pub(super) fn is_symlink(dir: &Dir, name: &OsStr) -> io::Result<bool> {
    let name = c_name(name)?;
    // SAFETY: as in `others_can_write`.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: an open directory, a NUL-terminated name, a valid out-pointer.
    let rc = unsafe {
        libc::fstatat(
            dir.0.as_raw_fd(),
            name.as_ptr(),
            &mut st,
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    match cvt(rc) {
        Ok(_) => Ok(st.st_mode & libc::S_IFMT == libc::S_IFLNK),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

/// Creates `name` with O_NOFOLLOW (plus `extra`), mode 0644.
fn open_at(dir: &Dir, name: &CString, extra: libc::c_int) -> io::Result<File> {
    let flags = extra | libc::O_NOFOLLOW | libc::O_CLOEXEC;
    // SAFETY: an open directory, a NUL-terminated name; the mode is read
    // only with O_CREAT.
    let fd = cvt(unsafe {
        libc::openat(
            dir.0.as_raw_fd(),
            name.as_ptr(),
            flags,
            0o644 as libc::c_uint,
        )
    })?;
    // SAFETY: `fd` is a fresh descriptor nobody else owns.
    Ok(unsafe { File::from_raw_fd(fd) })
}

fn unlink_c(dir: &Dir, name: &CString) -> io::Result<()> {
    // SAFETY: an open directory and a NUL-terminated name.
    cvt(unsafe { libc::unlinkat(dir.0.as_raw_fd(), name.as_ptr(), 0) }).map(drop)
}

/// Writes `data` to a temp file beside `name` (`.NAME.PID.tmp`, created
/// `O_EXCL|O_NOFOLLOW`, 0644 whatever the umask), then renames it over
/// `name`: readers see the old file or the whole new one, never a part.
pub(super) fn write_replacing(dir: &Dir, name: &OsStr, data: &[u8], pid: u32) -> io::Result<()> {
    let mut tmp_name = OsStr::new(".").to_os_string();
    tmp_name.push(name);
    tmp_name.push(format!(".{pid}.tmp"));
    let tmp = c_name(&tmp_name)?;
    let create = libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL;
    let mut file = match open_at(dir, &tmp, create) {
        // Left by an earlier process with our PID that died mid-write: ours
        // to replace (a symlink there is unlinked, never followed).
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            unlink_c(dir, &tmp)?;
            open_at(dir, &tmp, create)?
        }
        other => other?,
    };
    let written = (|| {
        // SAFETY: an open descriptor; fchmod undoes the umask's cut.
        cvt(unsafe { libc::fchmod(file.as_raw_fd(), 0o644) })?;
        file.write_all(data)?;
        let target = c_name(name)?;
        // SAFETY: the same open directory on both sides, NUL-terminated names.
        cvt(unsafe {
            libc::renameat(
                dir.0.as_raw_fd(),
                tmp.as_ptr(),
                dir.0.as_raw_fd(),
                target.as_ptr(),
            )
        })
        .map(drop)
    })();
    if written.is_err() {
        let _ = unlink_c(dir, &tmp);
    }
    written
}

/// The first bytes of `name` (a pidfile is a few bytes), read without
/// following a symlink; `None` if it is gone or is now a symlink.
pub(super) fn read_small(dir: &Dir, name: &OsStr) -> io::Result<Option<Vec<u8>>> {
    let name = c_name(name)?;
    let file = match open_at(dir, &name, libc::O_RDONLY | libc::O_NONBLOCK) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => return Ok(None),
        Err(e) => return Err(e),
    };
    let mut text = Vec::new();
    file.take(64).read_to_end(&mut text)?;
    Ok(Some(text))
}

/// Removes `name` from `dir`; already gone is fine.
pub(super) fn unlink(dir: &Dir, name: &OsStr) -> io::Result<()> {
    match unlink_c(dir, &c_name(name)?) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

/// Whether process `pid` runs and has been running since the file `name` was
/// last written: a PID that a pidfile names, but that the system has given
/// to a process started after the file was written, is a reused number,
/// not the server that wrote it (where the platform tells a process's start
/// time; elsewhere a running PID counts). A zombie runs nothing.
pub(super) fn runs_since_written(dir: &Dir, name: &OsStr, pid: u32) -> io::Result<bool> {
    if !crate::lock::sys::process_runs(pid) {
        return Ok(false);
    }
    let Some(started) = crate::lock::sys::process_started_at(pid) else {
        return Ok(true);
    };
    let name = c_name(name)?;
    // SAFETY: `stat` is plain data, filled in by fstatat on success.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: an open directory, a NUL-terminated name, a valid out-pointer.
    cvt(unsafe {
        libc::fstatat(
            dir.0.as_raw_fd(),
            name.as_ptr(),
            &mut st,
            libc::AT_SYMLINK_NOFOLLOW,
        )
    })?;
    // A second of slack: the file's time and the start time have different
    // clocks' granularity.
    #[allow(clippy::unnecessary_cast)] // time_t is i32 on some targets
    Ok(started <= st.st_mtime as i64 + 1)
}
