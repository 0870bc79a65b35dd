//! The one error type of the lock library, and the wrapper that hands a
//! typestate back when a transition fails.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

use super::info::LockInfo;
use super::text::printable;
use super::PortLock;

/// Everything that can go wrong taking, probing or releasing a port lock.
///
/// Every message is one line, names the port or path, and says what to do.
/// Contention is not an I/O error: [`LockError::AlreadyRunning`] carries who
/// holds the port.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LockError {
    /// Another process holds the port's lock. `holder` is its info, or `None`
    /// when the file could not be read (mid-write, garbage, or Windows).
    #[error("{}", already_running_line(*port, holder.as_deref(), path))]
    AlreadyRunning {
        /// The contested port.
        port: u16,
        /// The lock file.
        path: PathBuf,
        /// What the holder recorded, if readable (boxed: keeps `Result`s small).
        holder: Option<Box<LockInfo>>,
    },
    /// Only short-lived obstacles kept the lock busy for the whole retry
    /// window: readers (probes, `llmlb status`) or, on Windows, a process that
    /// had the file open without sharing it (a releasing holder deleting it).
    /// Nobody holds the port.
    #[error(
        "lock file {} stayed busy with readers (e.g. `llmlb status` in a tight loop) or a releasing holder; retry",
        printable(path)
    )]
    Busy {
        /// The lock file.
        path: PathBuf,
    },
    /// The lock dir could be tampered with by another user, or is not a dir.
    #[error("unsafe lock dir {}: it {reason}; {fix}", printable(path))]
    UnsafeLockDir {
        /// The refused directory.
        path: PathBuf,
        /// What is wrong with it.
        reason: &'static str,
        /// What to do about it.
        fix: String,
    },
    /// The lock file is a symlink, not a regular file, or owned by another
    /// user. It was not written.
    #[error(
        "unsafe lock file {}: it {reason}; remove it by hand if you did not create it",
        printable(path)
    )]
    UnsafeLockFile {
        /// The refused file.
        path: PathBuf,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// Port 0 (or otherwise unusable port) was given.
    #[error("invalid port {port}: ports are 1..=65535")]
    InvalidPort {
        /// The rejected value.
        port: u32,
    },
    /// A system call on `path` failed. The OS error is part of the message
    /// (one line for CLIs and `llmlb_last_error`), so it is a field, not a
    /// `source()` that printers would repeat.
    #[error("{action} {}: {error}{}", printable(path), io_hint(error))]
    Io {
        /// What we were doing ("cannot open lock file", …).
        action: &'static str,
        /// The file or directory concerned.
        path: PathBuf,
        /// The OS error.
        error: io::Error,
    },
    /// The lock dir does not exist and cannot be created; `problem` names the
    /// ancestor in the way (`blocker`: a parent you cannot write, one on a
    /// read-only or full file system, a file or a symlink to nothing where a
    /// directory should be).
    #[error(
        "cannot create lock dir {}: {problem}; set LLMLB_LOCK_DIR (or --lock-dir) to a directory you can write",
        printable(path)
    )]
    CreateDir {
        /// The lock dir that could not be created.
        path: PathBuf,
        /// The ancestor in the way (or the lock dir itself).
        blocker: PathBuf,
        /// What is wrong with `blocker`, naming it.
        problem: String,
        /// The OS error creating the dir gave.
        error: io::Error,
    },
}

fn already_running_line(port: u16, holder: Option<&LockInfo>, path: &Path) -> String {
    let advice = super::hint::how_to_stop(port, holder, path, "");
    match holder {
        Some(info) => format!(
            "Server already running on port {port} (PID: {}, started: {}); {advice}",
            info.pid,
            info.started_at_display()
        ),
        None => {
            format!("Server already running on port {port} (holder details unreadable); {advice}")
        }
    }
}

fn io_hint(err: &io::Error) -> &'static str {
    match err.kind() {
        io::ErrorKind::PermissionDenied => {
            " (check the directory's permissions or set LLMLB_LOCK_DIR)"
        }
        io::ErrorKind::NotFound => {
            " (the lock dir disappeared; it is re-created on the next start)"
        }
        io::ErrorKind::StorageFull => {
            " (the file system is full; free space or set LLMLB_LOCK_DIR)"
        }
        io::ErrorKind::ReadOnlyFilesystem => {
            " (the file system is read-only; set LLMLB_LOCK_DIR to a writable dir)"
        }
        _ if super::sys::is_transient_open_error(err) => {
            " (another process has the file open without sharing it, e.g. a holder deleting it on release; retry)"
        }
        _ if super::sys::is_no_locks_error(err) => {
            " (the file system does not support locks, e.g. an NFS `nolock` mount; use a local dir)"
        }
        _ => "",
    }
}

impl LockError {
    pub(crate) fn io(action: &'static str, path: impl Into<PathBuf>, error: io::Error) -> Self {
        LockError::Io {
            action,
            path: path.into(),
            error,
        }
    }

    /// True for [`LockError::AlreadyRunning`]: the expected outcome when the
    /// port is taken, as opposed to a failure.
    pub fn is_already_running(&self) -> bool {
        matches!(self, LockError::AlreadyRunning { .. })
    }
}

/// A failed typestate transition: the error, and the lock in the state it was
/// in before, so the caller can retry, inspect or drop it (tempfile's
/// `PersistError` does the same with the file).
pub struct TransitionError<S: super::State> {
    /// Why the transition failed.
    pub error: LockError,
    /// The lock, unchanged.
    pub lock: PortLock<S>,
}

impl<S: super::State> TransitionError<S> {
    /// Splits into the error and the unchanged lock.
    pub fn into_parts(self) -> (LockError, PortLock<S>) {
        (self.error, self.lock)
    }
}

impl<S: super::State> fmt::Debug for TransitionError<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.error, f)
    }
}

impl<S: super::State> fmt::Display for TransitionError<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.error, f)
    }
}

impl<S: super::State> std::error::Error for TransitionError<S> {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.error)
    }
}

impl<S: super::State> From<TransitionError<S>> for LockError {
    fn from(e: TransitionError<S>) -> Self {
        e.error
    }
}
