//! Where lock files live, and whether that place is safe to trust.

use std::ffi::OsString;
use std::io;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use super::error::LockError;
use super::protocol::{self, Target};
use super::state::{Free, PortLock};
use super::sys;
use super::LockState;

/// Environment variable that overrides the default lock dir.
pub const LOCK_DIR_ENV: &str = "LLMLB_LOCK_DIR";

/// A lock directory that has passed the safety checks, held open: not a
/// symlink, a directory, and (Unix) owned by the effective user and not
/// writable by group or others. Lock files are `<dir>/serve_<port>.lock`.
///
/// The directory is opened once (`O_DIRECTORY | O_NOFOLLOW`) and judged on
/// that descriptor; every lock file is then reached relative to it
/// (`openat`, `fstatat`, `unlinkat`), so re-pointing or replacing the path
/// after the check cannot redirect a lock. Clones share the descriptor.
#[derive(Debug, Clone)]
pub struct LockDir {
    /// Shared with every [`Target`](super::protocol::Target) made from it.
    path: Arc<Path>,
    handle: Arc<sys::DirHandle>,
}

impl PartialEq for LockDir {
    /// The same directory (by identity, not by name), reached by the same path.
    fn eq(&self, other: &Self) -> bool {
        self.path == other.path && self.handle.id() == other.handle.id()
    }
}

impl Eq for LockDir {}

/// The lock file name for `port`: `serve_<port>.lock`.
pub fn lock_file_name(port: u16) -> String {
    format!("serve_{port}.lock")
}

/// Parses a lock file name back into its port: `serve_<port>.lock` with a
/// canonical decimal port in 1..=65535 (no sign, no leading zero).
pub fn port_from_file_name(name: &str) -> Option<u16> {
    let digits = name.strip_prefix("serve_")?.strip_suffix(".lock")?;
    if digits.is_empty() || digits.starts_with('0') || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse::<u16>().ok().filter(|&p| p != 0)
}

/// Rejects port 0 with [`LockError::InvalidPort`].
pub fn check_port(port: u16) -> Result<u16, LockError> {
    if port == 0 {
        Err(LockError::InvalidPort { port: 0 })
    } else {
        Ok(port)
    }
}

/// The lock dir to use: `explicit` if given, else `LLMLB_LOCK_DIR` if set and
/// non-empty, else the per-user default ([`default_lock_dir`]).
///
/// Only computes the path; [`LockDir::create`] or [`LockDir::existing`] check it.
pub fn resolve_lock_dir(explicit: Option<&Path>) -> PathBuf {
    if let Some(dir) = explicit {
        return dir.to_path_buf();
    }
    match std::env::var_os(LOCK_DIR_ENV) {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => default_lock_dir(),
    }
}

/// The per-user default: `<temp dir>/llmlb-<euid>` on Unix (so `TMPDIR` moves
/// it), `%TEMP%\llmlb` on Windows.
///
/// # Security
/// Per user on purpose: a dir shared by all users would let any local user
/// block everyone's servers by creating it first.
pub fn default_lock_dir() -> PathBuf {
    std::env::temp_dir().join(OsString::from(sys::default_dir_name()))
}

impl LockDir {
    /// Opens the lock dir at `path` for taking locks, creating it (mode 0700,
    /// with missing parents) if needed.
    ///
    /// # Errors
    /// [`LockError::UnsafeLockDir`] if `path` is relative or has a `..`
    /// component, is a symlink, not a directory, owned by another user or
    /// writable by group/others; [`LockError::Io`] if it cannot be created or
    /// inspected.
    pub fn create(path: impl Into<PathBuf>) -> Result<LockDir, LockError> {
        let path = normalize(path.into())?;
        // The common case, an existing dir, costs one open and one fstat.
        if let Some(dir) = Self::open(&path)? {
            return Ok(dir);
        }
        if let Err(e) = sys::create_dir(&path) {
            // A symlink or file in the way is reported by the open below.
            if path.symlink_metadata().is_err() {
                return Err(LockError::io("cannot create lock dir", &path, e));
            }
        }
        Self::open(&path)?.ok_or_else(|| {
            LockError::io(
                "cannot open lock dir",
                &path,
                io::ErrorKind::NotFound.into(),
            )
        })
    }

    /// Opens an existing lock dir for reading (probe, status) without creating
    /// anything: `Ok(None)` when it does not exist, which means nothing is held.
    ///
    /// # Errors
    /// As [`LockDir::create`] for an existing but unsafe dir.
    pub fn existing(path: impl Into<PathBuf>) -> Result<Option<LockDir>, LockError> {
        let path = normalize(path.into())?;
        Self::open(&path)
    }

    /// Opens and judges the dir at the normalised `path`; `None` if missing.
    fn open(path: &Path) -> Result<Option<LockDir>, LockError> {
        let refused = |refusal: sys::DirRefusal| LockError::UnsafeLockDir {
            path: path.to_path_buf(),
            reason: refusal.reason(),
            fix: sys::dir_fix_hint(path, refusal),
        };
        let handle = match sys::open_dir(path) {
            Ok(handle) => handle,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => {
                return Err(match classify_unopenable(path) {
                    Some(refusal) => refused(refusal),
                    None => LockError::io("cannot open lock dir", path, e),
                })
            }
        };
        sys::check_dir(&handle).map_err(refused)?;
        Ok(Some(LockDir {
            path: Arc::from(path),
            handle: Arc::new(handle),
        }))
    }

    /// The open directory, shared with every [`PortLock`] made from it.
    pub(crate) fn handle(&self) -> &Arc<sys::DirHandle> {
        &self.handle
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The path, shared with every [`PortLock`] made from it.
    pub(crate) fn shared_path(&self) -> &Arc<Path> {
        &self.path
    }

    /// `<dir>/serve_<port>.lock` (the port is not validated here).
    pub fn lock_path(&self, port: u16) -> PathBuf {
        self.path.join(lock_file_name(port))
    }

    /// The lock for `port` in this dir, not held: the start of the typestate.
    ///
    /// # Errors
    /// [`LockError::InvalidPort`] for port 0.
    pub fn port(&self, port: u16) -> Result<PortLock<Free>, LockError> {
        Ok(PortLock::new_free(self.target(port)?))
    }

    fn target(&self, port: u16) -> Result<Target, LockError> {
        let port = check_port(port)?;
        Ok(Target::new(self, port))
    }

    /// Observes `port` without taking it: never creates anything, never makes
    /// a concurrent acquire fail.
    ///
    /// # Errors
    /// [`LockError::InvalidPort`], [`LockError::UnsafeLockFile`] (symlink,
    /// not a regular file, foreign owner), [`LockError::Io`].
    pub fn probe(&self, port: u16) -> Result<LockState, LockError> {
        protocol::probe(&self.target(port)?)
    }

    /// Every `serve_<port>.lock` in the dir that is held or stale, sorted by
    /// port (what `llmlb status` lists). Never takes or breaks a lock. Files
    /// that are unsafe to read are reported as such rather than skipped.
    ///
    /// # Errors
    /// [`LockError::Io`] if the directory cannot be listed.
    pub fn scan(&self) -> Result<Vec<PortReport>, LockError> {
        let names = sys::list_names(&self.handle)
            .map_err(|e| LockError::io("cannot list lock dir", self.path(), e))?;
        let mut reports = Vec::new();
        for name in names {
            let Some(port) = name.to_str().and_then(port_from_file_name) else {
                continue;
            };
            let target = Target::new(self, port);
            let path = target.path().to_path_buf();
            let state = protocol::probe(&target);
            if matches!(state, Ok(LockState::Free)) {
                continue;
            }
            reports.push(PortReport { port, path, state });
        }
        reports.sort_by_key(|r| r.port);
        Ok(reports)
    }
}

/// One line of [`LockDir::scan`].
#[derive(Debug)]
pub struct PortReport {
    /// The port from the file name.
    pub port: u16,
    /// The lock file.
    pub path: PathBuf,
    /// What a probe saw, or why it could not look.
    pub state: Result<LockState, LockError>,
}

/// Why `path` could not be opened as a directory, when the reason is what it
/// is rather than an I/O failure: a symlink or not a directory (one `lstat`,
/// only on the error path).
fn classify_unopenable(path: &Path) -> Option<sys::DirRefusal> {
    let meta = path.symlink_metadata().ok()?;
    if meta.file_type().is_symlink() {
        Some(sys::DirRefusal::Symlink)
    } else if !meta.is_dir() {
        Some(sys::DirRefusal::NotDirectory)
    } else {
        None
    }
}

/// The one spelling of a lock dir that is opened: absolute, without `.`
/// components or a trailing `/` (which would make the kernel follow a final
/// symlink, sidestepping `O_NOFOLLOW`), and without `..` (which could climb
/// out through a symlink).
fn normalize(path: PathBuf) -> Result<PathBuf, LockError> {
    let refuse = |reason, fix: &str| LockError::UnsafeLockDir {
        path: path.clone(),
        reason,
        fix: fix.to_owned(),
    };
    if !path.is_absolute() {
        return Err(refuse(
            "is a relative path (its meaning would depend on the working directory)",
            "give an absolute path",
        ));
    }
    if path.components().any(|c| c == Component::ParentDir) {
        return Err(refuse(
            "has a `..` component (it could resolve through a symlink)",
            "give the path without `..`",
        ));
    }
    // `components()` drops `.` and repeated or trailing separators.
    Ok(path.components().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_accepts_a_missing_dir_spelled_with_dot_components() {
        let tmp = tempfile::tempdir().unwrap();
        for spelling in ["a/./locks/.", "b//locks//", "c/locks/."] {
            let path = tmp.path().join(spelling);
            let dir = LockDir::create(&path).unwrap_or_else(|e| panic!("{spelling}: {e}"));
            assert!(dir.path().is_dir(), "{spelling}");
        }
    }

    #[test]
    fn file_names_round_trip_and_reject_noise() {
        assert_eq!(lock_file_name(8000), "serve_8000.lock");
        assert_eq!(port_from_file_name("serve_8000.lock"), Some(8000));
        assert_eq!(port_from_file_name("serve_65535.lock"), Some(65535));
        for bad in [
            "serve_0.lock",
            "serve_08000.lock",
            "serve_65536.lock",
            "serve_.lock",
            "serve_+80.lock",
            "serve_80.lock.tmp",
            "x_80.lock",
        ] {
            assert_eq!(port_from_file_name(bad), None, "{bad}");
        }
    }

    #[test]
    fn port_zero_is_invalid() {
        assert!(matches!(
            check_port(0),
            Err(LockError::InvalidPort { port: 0 })
        ));
        assert_eq!(check_port(1).unwrap(), 1);
    }

    #[test]
    fn explicit_dir_wins_and_default_is_per_user() {
        let explicit = Path::new("/some/where");
        assert_eq!(resolve_lock_dir(Some(explicit)), explicit);
        let default = default_lock_dir();
        assert!(default.starts_with(std::env::temp_dir()));
        #[cfg(unix)]
        assert_eq!(
            default.file_name().unwrap().to_str().unwrap(),
            format!("llmlb-{}", sys::euid())
        );
    }

    #[test]
    fn relative_dir_is_refused() {
        let err = LockDir::create("relative/locks").unwrap_err();
        assert!(matches!(err, LockError::UnsafeLockDir { .. }), "{err}");
        assert!(err.to_string().contains("relative/locks"));
    }

    #[cfg(unix)]
    mod unix {
        use super::super::*;
        use std::os::unix::fs::{symlink, PermissionsExt};

        #[test]
        fn created_with_mode_0700() {
            let tmp = tempfile::tempdir().unwrap();
            let dir = tmp.path().join("a/b/locks");
            LockDir::create(&dir).unwrap();
            let mode = dir.metadata().unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o700);
        }

        #[test]
        fn symlinked_dir_is_refused_with_path_and_fix() {
            let tmp = tempfile::tempdir().unwrap();
            let real = tmp.path().join("real");
            std::fs::create_dir(&real).unwrap();
            std::fs::set_permissions(&real, std::fs::Permissions::from_mode(0o700)).unwrap();
            let link = tmp.path().join("link");
            symlink(&real, &link).unwrap();
            for result in [
                LockDir::create(&link),
                LockDir::existing(&link).map(|d| d.unwrap()),
            ] {
                let err = result.unwrap_err();
                let msg = err.to_string();
                assert!(
                    msg.contains("is a symlink") && msg.contains("link"),
                    "{msg}"
                );
                assert!(msg.contains("LLMLB_LOCK_DIR"), "{msg}");
            }
        }

        #[test]
        fn group_writable_dir_is_refused() {
            let tmp = tempfile::tempdir().unwrap();
            let dir = tmp.path().join("open");
            std::fs::create_dir(&dir).unwrap();
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o770)).unwrap();
            let msg = LockDir::create(&dir).unwrap_err().to_string();
            assert!(msg.contains("writable by group or others"), "{msg}");
            assert!(msg.contains("chmod 700"), "{msg}");
        }

        #[test]
        fn a_file_is_not_a_lock_dir() {
            let tmp = tempfile::tempdir().unwrap();
            let file = tmp.path().join("file");
            std::fs::write(&file, b"x").unwrap();
            let msg = LockDir::create(&file).unwrap_err().to_string();
            assert!(msg.contains("is not a directory"), "{msg}");
        }

        #[test]
        fn existing_does_not_create() {
            let tmp = tempfile::tempdir().unwrap();
            let dir = tmp.path().join("missing");
            assert!(LockDir::existing(&dir).unwrap().is_none());
            assert!(!dir.exists());
        }
    }
}
