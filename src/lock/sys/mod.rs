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
pub(crate) use watch::{DirWatch, Wake, WATCH_SEES_HOLDER_EXIT, WATCH_SEES_WRITES};

#[cfg(windows)]
mod windows;
#[cfg(windows)]
pub(crate) use windows::*;

/// A lock file's name, `serve_<port>.lock` ([`lock_file_name`]), inline and
/// NUL-terminated. Every acquire makes one and hands it to four system calls:
/// neither making it nor using it allocates or re-validates.
///
/// [`lock_file_name`]: crate::lock::lock_file_name
#[derive(Clone, Copy)]
pub(crate) struct LockName {
    /// The name's ASCII bytes, then a NUL, then zeros.
    bytes: [u8; LockName::MAX_LEN + 1],
    len: usize,
}

impl LockName {
    /// `serve_65535.lock`
    const MAX_LEN: usize = 16;

    pub(crate) fn for_port(port: u16) -> LockName {
        use std::io::Write as _;
        let mut bytes = [0u8; LockName::MAX_LEN + 1];
        let mut rest = &mut bytes[..LockName::MAX_LEN];
        // The longest name fits, so this cannot fail; the test below checks
        // every port.
        let _ = write!(rest, "serve_{port}.lock");
        let len = LockName::MAX_LEN - rest.len();
        LockName { bytes, len }
    }

    pub(crate) fn as_str(&self) -> &str {
        // SAFETY: `for_port` wrote only ASCII bytes before `len`.
        unsafe { std::str::from_utf8_unchecked(&self.bytes[..self.len]) }
    }

    #[cfg(unix)]
    pub(crate) fn as_c_str(&self) -> &std::ffi::CStr {
        // SAFETY: `for_port` wrote no NUL before `len`, and the byte at
        // `len` is a NUL (the array is one longer than the longest name).
        unsafe { std::ffi::CStr::from_bytes_with_nul_unchecked(&self.bytes[..=self.len]) }
    }
}

impl std::fmt::Debug for LockName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.as_str().fmt(f)
    }
}

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

#[cfg(test)]
mod tests {
    use super::LockName;

    #[test]
    fn lock_names_are_the_lock_file_names() {
        for port in 0..=u16::MAX {
            let name = LockName::for_port(port);
            assert_eq!(name.as_str(), crate::lock::lock_file_name(port));
            #[cfg(unix)]
            assert_eq!(name.as_c_str().to_bytes(), name.as_str().as_bytes());
        }
    }
}
