//! Where lock files live, and whether that place is safe to trust.

use std::io;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use super::error::LockError;
use super::protocol::{self, Target};
use super::state::{Free, PortLock};
use super::sys;
use super::text::printable;
use super::{LockState, ServeState};

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
    /// The serving state a lock taken through this dir records from its
    /// first write ([`LockDir::announcing`]); `None` writes no state.
    initial_state: Option<ServeState>,
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

/// The per-user default lock dir: a function of the user alone, the same in
/// every session (login shell, ssh, tmux, cron, `sudo`, `pam_tmpdir`), so
/// that every `serve`, `status` and `stop` of one user meet. No environment
/// variable but `LLMLB_LOCK_DIR` (read by [`resolve_lock_dir`]) changes it:
///
/// - Linux and other Unix: `/tmp/llmlb-<euid>`, never `$TMPDIR` (different in
///   each session) nor `$XDG_RUNTIME_DIR` (missing under cron, removed at
///   logout while a server runs on); for root `/run/llmlb` where `/run` is a
///   directory.
/// - macOS: `llmlb-<euid>` in the per-user temp dir the system reports
///   (`confstr(_CS_DARWIN_USER_TEMP_DIR)`), not the `TMPDIR` variable.
/// - Windows: `%LOCALAPPDATA%\llmlb\locks`, from the known-folder API, not
///   the variable (nor `%TEMP%`).
///
/// To share one dir on purpose (the sessions and services of one account:
/// a lock dir must be the user's alone), set `LLMLB_LOCK_DIR` to it everywhere.
///
/// # Security
/// Per user on purpose: a dir shared by all users would let any local user
/// block everyone's servers by creating it first. A user can still create
/// another's `/tmp/llmlb-<uid>` first; [`LockDir::create`] then refuses it
/// (owned by another user) and writes nothing into it.
pub fn default_lock_dir() -> PathBuf {
    sys::default_dir()
}

impl LockDir {
    /// Opens the lock dir at `path` for taking locks, creating it (mode 0700,
    /// with missing parents) if needed.
    ///
    /// # Errors
    /// [`LockError::UnsafeLockDir`] if `path` is relative or has a `..`
    /// component, is a symlink, not a directory, owned by another user or
    /// writable by group/others; [`LockError::CreateDir`], naming the
    /// ancestor in the way, if it is missing and cannot be created;
    /// [`LockError::Io`] if it cannot be inspected.
    pub fn create(path: impl Into<PathBuf>) -> Result<LockDir, LockError> {
        let path = normalize(path.into())?;
        // The common case, an existing dir, costs one open and one fstat.
        match Self::open(&path) {
            Ok(Some(dir)) => return Ok(dir),
            Ok(None) => {}
            // Not there to open because an ancestor is in the way (a file,
            // a dir we may not search): creating it says which one.
            Err(LockError::Io { .. }) if path.symlink_metadata().is_err() => {}
            Err(e) => return Err(e),
        }
        if let Err(e) = sys::create_dir(&path) {
            // A symlink or file in the way is reported by the open below.
            if path.symlink_metadata().is_err() {
                return Err(cannot_create(&path, e));
            }
        }
        // Still missing after a "successful" create: an ancestor is a
        // symlink to nothing (creating the missing parents stops at it).
        Self::open(&path)?.ok_or_else(|| cannot_create(&path, io::ErrorKind::NotFound.into()))
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
            initial_state: None,
        }))
    }

    /// This dir, with every lock taken through it (acquire, reclaim, wait)
    /// recording `state` in its first write: a server announces
    /// [`ServeState::Starting`] from the instant it holds the port, so no
    /// reader ever takes a record without a state (read as ready) for its
    /// own. Without it no state is written, and the acquire stays one write.
    #[must_use]
    pub fn announcing(mut self, state: ServeState) -> LockDir {
        self.initial_state = Some(state);
        self
    }

    /// The state records taken through this dir start in, if any.
    pub(crate) fn initial_state(&self) -> Option<ServeState> {
        self.initial_state
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
/// is rather than an I/O failure: a symlink, not a directory, or another
/// user's directory that we may not even read (one `lstat`, only on the error
/// path). The last is what a squatted default dir looks like: someone else
/// created `/tmp/llmlb-<uid>` first, mode 0700.
fn classify_unopenable(path: &Path) -> Option<sys::DirRefusal> {
    let meta = path.symlink_metadata().ok()?;
    if meta.file_type().is_symlink() {
        Some(sys::DirRefusal::Symlink)
    } else if !meta.is_dir() {
        Some(sys::DirRefusal::NotDirectory)
    } else if sys::owned_by_another_user(&meta) {
        Some(sys::DirRefusal::ForeignOwner)
    } else {
        None
    }
}

/// [`LockError::CreateDir`] for the lock dir `path`, which creating (with
/// its missing parents) failed with `error`: finds the ancestor in the way.
fn cannot_create(path: &Path, error: io::Error) -> LockError {
    let (blocker, problem) = create_blocker(path, &error);
    LockError::CreateDir {
        path: path.to_path_buf(),
        blocker,
        problem,
        error,
    }
}

/// The ancestor of `path` that kept it from being created, and what is wrong
/// with it: walks down from the root to the first component that is not a
/// directory (a file, a symlink to nothing) or is missing (then its parent
/// refused to hold it, for the reason `error` gives). Only `lstat`s and
/// `stat`s: nothing is created or changed.
fn create_blocker(path: &Path, error: &io::Error) -> (PathBuf, String) {
    let ancestors: Vec<&Path> = path.ancestors().collect();
    let mut parent: Option<&Path> = None;
    for dir in ancestors.into_iter().rev() {
        let shown = printable(dir);
        match dir.symlink_metadata() {
            Ok(meta) if meta.is_dir() => {}
            Ok(meta) if meta.file_type().is_symlink() => match dir.metadata() {
                Ok(target) if target.is_dir() => {}
                Ok(_) => {
                    return (
                        dir.into(),
                        format!("{shown} is a symlink to something that is not a directory"),
                    )
                }
                Err(_) => {
                    let target = std::fs::read_link(dir).unwrap_or_default();
                    return (
                        dir.into(),
                        format!(
                            "{shown} is a symlink to {}, which does not exist",
                            printable(&target)
                        ),
                    );
                }
            },
            Ok(_) => return (dir.into(), format!("{shown} is not a directory")),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let Some(parent) = parent else {
                    return (dir.into(), format!("{shown} does not exist"));
                };
                let name = printable(dir.file_name().unwrap_or(dir.as_os_str()));
                let parent_shown = printable(parent);
                let problem = match error.kind() {
                    io::ErrorKind::PermissionDenied => {
                        format!("{parent_shown} is not writable by you (so {name} cannot be created in it)")
                    }
                    io::ErrorKind::ReadOnlyFilesystem => {
                        format!("{parent_shown} is on a read-only file system (so {name} cannot be created in it)")
                    }
                    io::ErrorKind::StorageFull => {
                        format!("{parent_shown} is on a full file system (so {name} cannot be created in it)")
                    }
                    _ => format!("cannot create {name} in {parent_shown}: {}", os_text(error)),
                };
                return (parent.into(), problem);
            }
            // A parent we may not search: it is the one in the way.
            Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
                let blocker = parent.unwrap_or(dir);
                return (
                    blocker.into(),
                    format!(
                        "{} is not accessible to you (permission denied)",
                        printable(blocker)
                    ),
                );
            }
            Err(e) => {
                return (
                    dir.into(),
                    format!("{shown} cannot be examined: {}", os_text(&e)),
                )
            }
        }
        parent = Some(dir);
    }
    // Every component is a directory now (made meanwhile by someone else).
    (
        path.into(),
        format!("{}: {}", printable(path), os_text(error)),
    )
}

/// An OS error's text without the trailing ` (os error N)`, which helps no
/// reader of a message that already says what failed.
fn os_text(error: &io::Error) -> String {
    let text = error.to_string();
    match text.rsplit_once(" (os error ") {
        Some((head, _)) => head.to_owned(),
        None => text,
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
    fn explicit_dir_wins() {
        let explicit = Path::new("/some/where");
        assert_eq!(resolve_lock_dir(Some(explicit)), explicit);
    }

    /// The default dir is a function of the user alone: this test binary,
    /// run again as a child with every variable that moves a temp dir
    /// pointing elsewhere, computes the same dir, and (Linux) it is the
    /// literal one. A child process, because the environment of this one is
    /// shared with the tests running beside it.
    #[test]
    fn default_dir_ignores_tmpdir_and_xdg_runtime_dir() {
        const CHILD: &str = "LLMLB_TEST_PRINT_DEFAULT_DIR";
        const MARK: &str = "default lock dir: ";
        if std::env::var_os(CHILD).is_some() {
            // The child's part: say what it computes.
            println!("{MARK}{}", default_lock_dir().display());
            return;
        }
        let elsewhere = tempfile::tempdir().unwrap();
        let name = module_path!().split_once("::").unwrap().1;
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                &format!("{name}::default_dir_ignores_tmpdir_and_xdg_runtime_dir"),
            ])
            .args(["--nocapture", "--test-threads=1"])
            .env(CHILD, "1")
            .env(LOCK_DIR_ENV, "")
            .envs(
                ["TMPDIR", "XDG_RUNTIME_DIR", "TMP", "TEMP", "LOCALAPPDATA"]
                    .map(|var| (var, elsewhere.path())),
            )
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let child = stdout
            .lines()
            .find_map(|l| l.split_once(MARK).map(|(_, dir)| dir))
            .unwrap_or_else(|| panic!("no {MARK:?} line from the child: {stdout}"));
        let default = default_lock_dir();
        assert_eq!(
            Path::new(child),
            default,
            "the environment moved the default dir"
        );
        assert!(
            !default.starts_with(elsewhere.path()),
            "{}",
            default.display()
        );
        #[cfg(all(unix, not(target_vendor = "apple")))]
        {
            let uid = sys::euid();
            let want = if uid == 0 && Path::new("/run").is_dir() {
                PathBuf::from("/run/llmlb")
            } else {
                PathBuf::from(format!("/tmp/llmlb-{uid}"))
            };
            assert_eq!(default, want);
        }
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
        use crate::lock::shell_quoted;
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

        /// A group- or world-writable dir that is not the user's default
        /// (`LLMLB_LOCK_DIR=/tmp`, `/dev/shm`, a team's dir) is refused with
        /// a private subdirectory as the fix, never `chmod`: root running
        /// `chmod 700 /tmp` would break every other user.
        #[test]
        fn shared_dir_is_refused_with_a_subdirectory_not_chmod() {
            let tmp = tempfile::tempdir().unwrap();
            for (name, mode) in [("open", 0o770), ("sticky", 0o1777)] {
                let dir = tmp.path().join(name);
                std::fs::create_dir(&dir).unwrap();
                std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(mode)).unwrap();
                let msg = LockDir::create(&dir).unwrap_err().to_string();
                assert!(msg.contains("writable by group or others"), "{msg}");
                assert!(!msg.contains("chmod 7"), "{msg}");
                let private = dir.join(format!("llmlb-{}", sys::euid()));
                let export = format!("`export LLMLB_LOCK_DIR={}`", private.display());
                assert!(msg.contains(&export), "{msg}");
                // The suggested subdirectory works as suggested.
                LockDir::create(&private).unwrap();
                let mode = private.metadata().unwrap().permissions().mode() & 0o7777;
                assert_eq!(mode, 0o700, "{}", private.display());
            }
        }

        /// Only the user's own default dir gets `chmod 700` (llmlb made it
        /// 0700; someone loosened it), with the path quoted for the shell.
        #[test]
        fn only_the_default_dir_gets_chmod() {
            let default = default_lock_dir();
            let hint = sys::dir_fix_hint(&default, sys::DirRefusal::OpenToOthers);
            assert!(
                hint.contains(&format!("`chmod 700 {}`", shell_quoted(&default))),
                "{hint}"
            );
            for other in ["/tmp", "/dev/shm", "/var/tmp", "/srv/team locks"] {
                let hint = sys::dir_fix_hint(Path::new(other), sys::DirRefusal::OpenToOthers);
                assert!(!hint.contains("chmod 7"), "{other}: {hint}");
            }
            for refusal in [sys::DirRefusal::ForeignOwner, sys::DirRefusal::Symlink] {
                for dir in [default.as_path(), Path::new("/tmp")] {
                    let hint = sys::dir_fix_hint(dir, refusal);
                    assert!(!hint.contains("chmod"), "{hint}");
                    assert!(hint.contains("LLMLB_LOCK_DIR (or --lock-dir)"), "{hint}");
                }
            }
        }

        /// A lock dir that cannot be created names the ancestor in the way
        /// and the fix, not "the lock dir disappeared" and a raw OS error,
        /// and creates nothing anywhere (not a dangling symlink's target).
        #[test]
        fn a_dir_that_cannot_be_created_names_the_ancestor_in_the_way() {
            let tmp = tempfile::tempdir().unwrap();
            let dangling = tmp.path().join("dangling");
            symlink(tmp.path().join("nowhere"), &dangling).unwrap();
            let file = tmp.path().join("file");
            std::fs::write(&file, b"x").unwrap();
            let cases = [
                (dangling.join("locks"), &dangling, "is a symlink to"),
                (
                    dangling.join("a/b/locks"),
                    &dangling,
                    "which does not exist",
                ),
                (file.join("locks"), &file, "is not a directory"),
                (file.join("a/locks"), &file, "is not a directory"),
            ];
            for (path, in_the_way, says) in cases {
                let err = LockDir::create(&path).unwrap_err();
                let LockError::CreateDir { blocker, .. } = &err else {
                    panic!("{}: {err:?}", path.display());
                };
                assert_eq!(blocker, in_the_way, "{err}");
                let msg = err.to_string();
                assert!(
                    msg.starts_with(&format!(
                        "cannot create lock dir {}: {}",
                        path.display(),
                        in_the_way.display()
                    )),
                    "{msg}"
                );
                assert!(msg.contains(says), "{msg}");
                assert!(msg.contains("set LLMLB_LOCK_DIR (or --lock-dir)"), "{msg}");
                for bad in ["disappeared", "os error", "chmod"] {
                    assert!(!msg.contains(bad), "{bad:?} in {msg}");
                }
            }
            assert!(!tmp.path().join("nowhere").exists());
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
