//! The one place that talks to the operating system: opening without
//! following links, advisory locks (fs2 on Unix, `LockFileEx` on Windows), file
//! identity, ownership, process identity and signals.
//!
//! Each platform module exposes the same free functions with the same
//! signatures (tempfile's `src/file/imp/` pattern), so the protocol above it is
//! written once. `clippy.toml` bans the lock calls everywhere else.

#[cfg(unix)]
mod unix;
#[cfg(unix)]
pub(crate) use unix::*;

mod watch;
pub(crate) use watch::{DirWatch, Wake, WATCH_SEES_HOLDER_EXIT};

#[cfg(windows)]
mod windows;
#[cfg(windows)]
pub(crate) use windows::*;

/// What identifies a file independently of its name: `(dev, ino)` on Unix.
///
/// Two opens name the same file exactly when their ids are equal; this is how
/// the protocol notices that a path was unlinked or replaced under it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FileId {
    pub(crate) dev: u64,
    pub(crate) ino: u64,
}

/// What the protocol needs to know about an open lock file, from one fstat.
#[derive(Debug, Clone, Copy)]
pub(crate) struct OpenFileStat {
    pub(crate) id: FileId,
    pub(crate) len: u64,
    pub(crate) is_regular: bool,
    /// Owned by the effective user (always true where ownership is not checked).
    pub(crate) owned_by_us: bool,
}

/// Why a lock directory is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DirRefusal {
    /// The name is a symlink: it could be re-pointed after the checks.
    Symlink,
    /// Not a directory.
    NotDirectory,
    /// Owned by another user (who could plant or remove lock files).
    ForeignOwner,
    /// Writable by group or others.
    #[cfg_attr(windows, allow(dead_code))]
    OpenToOthers,
}

impl DirRefusal {
    /// The reason as a phrase after "it": "it is a symlink".
    pub(crate) fn reason(self) -> &'static str {
        match self {
            DirRefusal::Symlink => "is a symlink",
            DirRefusal::NotDirectory => "is not a directory",
            DirRefusal::ForeignOwner => "is owned by another user",
            DirRefusal::OpenToOthers => "is writable by group or others",
        }
    }
}

/// Outcome of a non-blocking lock attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TryLock {
    Acquired,
    Contended,
}
