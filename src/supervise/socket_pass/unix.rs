//! The `LISTEN_FDS` hand-over on Unix: the command's whole `execve` prepared
//! before the fork, finished (PID digits, descriptor 3, `execve`) after it
//! with async-signal-safe calls only.

use std::collections::BTreeMap;
use std::ffi::{CString, OsStr, OsString};
use std::io;
use std::net::TcpListener;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::process::CommandExt;
use std::process::Command;

use crate::supervise::activation::{
    LISTEN_FDNAMES_ENV, LISTEN_FDS_ENV, LISTEN_FDS_START, LISTEN_PID_ENV,
};

/// `LISTEN_PID=` then the digits.
const PID_PREFIX: &[u8] = b"LISTEN_PID=";
/// Room for any PID's decimal digits (a `pid_t` has at most 10) and the NUL.
const PID_SLOT: usize = 21;
/// `execvp`'s search path when `PATH` is unset (glibc's and the BSDs').
const DEFAULT_PATH: &[u8] = b"/bin:/usr/bin";

/// Everything the child's `execve` needs, built before the fork. The pointer
/// arrays point into `strings` and `pid_entry`, whose heap buffers do not
/// move when this value does.
struct ExecImage {
    /// Owners of what `argv` and `envp` point to.
    _strings: Vec<CString>,
    /// `LISTEN_PID=` and the slot, from `Box::into_raw`; freed on drop. Only
    /// the child writes to it, through this pointer.
    pid_entry: *mut u8,
    argv: Vec<*const libc::c_char>,
    envp: Vec<*const libc::c_char>,
    /// The paths `execvp` would try, in order.
    candidates: Vec<CString>,
    /// The listening socket in this process (close-on-exec).
    socket: RawFd,
}

// SAFETY: the raw pointers point into buffers this value owns and nothing
// else touches; the parent never reads or writes through them, the child
// (after the fork: one thread) alone writes the PID slot.
unsafe impl Send for ExecImage {}
// SAFETY: as above; there is no shared mutation in the parent.
unsafe impl Sync for ExecImage {}

impl Drop for ExecImage {
    fn drop(&mut self) {
        let len = PID_PREFIX.len() + PID_SLOT;
        // SAFETY: `pid_entry` came from Box::into_raw of a boxed slice of
        // `len` bytes, and is freed only here, once.
        drop(unsafe { Box::from_raw(std::ptr::slice_from_raw_parts_mut(self.pid_entry, len)) });
    }
}

fn c_string(bytes: Vec<u8>) -> io::Result<CString> {
    CString::new(bytes).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            "a NUL byte in the command, its arguments or environment",
        )
    })
}

impl ExecImage {
    /// Runs in the child between fork and exec: async-signal-safe calls
    /// only (dup2, fcntl, getpid, execve), no allocation.
    fn exec(&mut self) -> io::Result<()> {
        // dup2 leaves the new descriptor inheritable; the same number needs
        // its close-on-exec flag cleared instead.
        // SAFETY: plain descriptor calls on this (forked) process's table.
        let rc = unsafe {
            if self.socket == LISTEN_FDS_START {
                libc::fcntl(LISTEN_FDS_START, libc::F_SETFD, 0)
            } else {
                libc::dup2(self.socket, LISTEN_FDS_START)
            }
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: getpid cannot fail.
        let pid = unsafe { libc::getpid() };
        let mut digits = [0u8; PID_SLOT];
        let mut n = u32::try_from(pid).unwrap_or(0);
        let mut len = 0;
        loop {
            digits[len] = b'0' + (n % 10) as u8;
            len += 1;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        for (i, d) in digits[..len].iter().rev().enumerate() {
            // SAFETY: PID_PREFIX.len() + i < PID_PREFIX.len() + PID_SLOT - 1,
            // inside the entry's buffer.
            unsafe { self.pid_entry.add(PID_PREFIX.len() + i).write(*d) };
        }
        // SAFETY: as above; the terminating NUL.
        unsafe { self.pid_entry.add(PID_PREFIX.len() + len).write(0) };
        let mut denied = false;
        for path in &self.candidates {
            // SAFETY: NUL-terminated strings and NULL-terminated arrays of
            // them, all alive (owned by self); execve returns only on failure.
            unsafe { libc::execve(path.as_ptr(), self.argv.as_ptr(), self.envp.as_ptr()) };
            let e = io::Error::last_os_error();
            match e.raw_os_error() {
                // As execvp: remember EACCES, try the next directory.
                Some(libc::EACCES) => denied = true,
                Some(
                    libc::ENOENT | libc::ENOTDIR | libc::ESTALE | libc::ENODEV | libc::ETIMEDOUT,
                ) => {}
                _ => return Err(e),
            }
        }
        Err(io::Error::from_raw_os_error(if denied {
            libc::EACCES
        } else {
            libc::ENOENT
        }))
    }
}

/// The paths `execvp` would try for `program` with `path` as `PATH`.
fn candidates(program: &OsStr, path: Option<&OsStr>) -> io::Result<Vec<CString>> {
    let program = program.as_bytes();
    if program.is_empty() {
        return Ok(Vec::new());
    }
    if program.contains(&b'/') {
        return Ok(vec![c_string(program.to_vec())?]);
    }
    let path = path.map_or(DEFAULT_PATH, OsStr::as_bytes);
    path.split(|&b| b == b':')
        .map(|dir| {
            let dir: &[u8] = if dir.is_empty() { b"." } else { dir };
            let mut full = dir.to_vec();
            full.push(b'/');
            full.extend_from_slice(program);
            c_string(full)
        })
        .collect()
}

/// See [`super::pass_listener`].
pub(super) fn pass_listener(
    cmd: &mut Command,
    listener: &TcpListener,
    name: &str,
) -> io::Result<()> {
    // The child's environment: ours with cmd's changes, as std would build it.
    let mut env: BTreeMap<OsString, OsString> = std::env::vars_os().collect();
    for (key, value) in cmd.get_envs() {
        match value {
            Some(value) => env.insert(key.to_owned(), value.to_owned()),
            None => env.remove(key),
        };
    }
    env.remove(OsStr::new(LISTEN_PID_ENV));
    env.insert(LISTEN_FDS_ENV.into(), "1".into());
    env.insert(LISTEN_FDNAMES_ENV.into(), name.into());
    let candidates = candidates(
        cmd.get_program(),
        env.get(OsStr::new("PATH")).map(OsString::as_os_str),
    )?;

    let mut strings = Vec::new();
    let mut argv = Vec::new();
    for arg in std::iter::once(cmd.get_program()).chain(cmd.get_args()) {
        let arg = c_string(arg.as_bytes().to_vec())?;
        argv.push(arg.as_ptr());
        strings.push(arg);
    }
    argv.push(std::ptr::null());
    let mut envp = Vec::new();
    for (key, value) in env {
        let mut entry = key.into_vec();
        entry.push(b'=');
        entry.extend(value.into_vec());
        let entry = c_string(entry)?;
        envp.push(entry.as_ptr());
        strings.push(entry);
    }
    let mut pid_entry = PID_PREFIX.to_vec();
    pid_entry.resize(PID_PREFIX.len() + PID_SLOT, 0);
    let pid_entry = Box::into_raw(pid_entry.into_boxed_slice()).cast::<u8>();
    envp.push(pid_entry.cast_const().cast());
    envp.push(std::ptr::null());
    let mut image = ExecImage {
        _strings: strings,
        pid_entry,
        argv,
        envp,
        candidates,
        socket: listener.as_raw_fd(),
    };
    // SAFETY: the step runs between fork and exec and calls only
    // async-signal-safe functions (see ExecImage::exec); it allocates nothing.
    unsafe { cmd.pre_exec(move || image.exec()) };
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_search_follows_execvp() {
        let found = candidates(OsStr::new("srv"), Some(OsStr::new("/a::/b"))).unwrap();
        let found: Vec<_> = found.iter().map(|c| c.to_str().unwrap()).collect();
        assert_eq!(found, ["/a/srv", "./srv", "/b/srv"]);
        let found = candidates(OsStr::new("./srv"), Some(OsStr::new("/a"))).unwrap();
        assert_eq!(found, [c"./srv"]);
        let found = candidates(OsStr::new("sh"), None).unwrap();
        assert_eq!(found, [c"/bin/sh", c"/usr/bin/sh"]);
        assert!(candidates(OsStr::new(""), None).unwrap().is_empty());
    }
}
