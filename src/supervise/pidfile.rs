//! `serve --pidfile PATH`: a classic pidfile (the decimal PID and a newline)
//! for the tools that still read one: systemd's `PIDFile=`,
//! `start-stop-daemon --pidfile`, monit, logrotate.
//!
//! The PID is the lock holder's (the process `llmlb stop` signals). The file
//! is written after the lock is taken, atomically (a temp file created with
//! `O_CREAT|O_EXCL|O_NOFOLLOW` beside it, mode 0644, renamed over PATH), and
//! removed when the server ends, but only while it still holds our PID: a
//! pidfile someone else has rewritten since is theirs.
//!
//! A pidfile is a claim other programs act on (they signal the PID in it), so
//! it is only written where nobody else can replace it: its directory is
//! refused if users other than us and root can write it without the sticky
//! bit (a symlinked ancestor such as Debian's `/var/run` → `/run` is fine:
//! the directory is opened once and used through that descriptor from then
//! on), and a symlink at PATH is refused rather than replaced or followed.
//!
//! Unix only: Windows service managers do not read pidfiles, and there
//! [`Pidfile::write`] reports [`PidfileError::Unsupported`].

use std::ffi::{OsStr, OsString};
use std::io;
use std::path::{Component, Path, PathBuf};

#[cfg(unix)]
#[path = "pidfile/unix.rs"]
mod sys;
#[cfg(not(unix))]
#[path = "pidfile/windows.rs"]
mod sys;

/// Why a pidfile could not be written. Each message names the path and, where
/// there is one, the fix.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PidfileError {
    /// PATH does not end in a file name (`/`, `..`, empty).
    #[error("the pidfile path {} does not name a file", .0.display())]
    NotAFileName(PathBuf),
    /// Users other than us and root can write the pidfile's directory and it
    /// has no sticky bit: any of them could replace the pidfile.
    #[error(
        "the pidfile's directory {} can be written by users other than you and root and has no sticky bit, so any of them could replace the pidfile; put it in a directory only you or root can write (e.g. /run/NAME.pid for a system service), or run `chmod go-w {}`",
        .0.display(), crate::lock::shell_quoted(.0)
    )]
    UnsafeDir(PathBuf),
    /// PATH is a symbolic link: it is neither followed nor replaced.
    #[error(
        "the pidfile {} is a symbolic link; llmlb writes a pidfile only at a real path (it would neither follow nor replace the link): give the path the link points to, or remove the link",
        .0.display()
    )]
    Symlink(PathBuf),
    /// The pidfile's directory could not be opened.
    #[error("cannot open the pidfile's directory {}: {source} (it must exist)", dir.display())]
    Dir {
        /// The directory.
        dir: PathBuf,
        /// What the system said.
        source: io::Error,
    },
    /// The file could not be created, written or renamed into place.
    #[error("cannot write the pidfile {}: {source}", path.display())]
    Io {
        /// The pidfile.
        path: PathBuf,
        /// What the system said.
        source: io::Error,
    },
    /// PATH names a running process that is not the one this server takes
    /// over from: another server uses the same pidfile (a copied unit file,
    /// a second instance), and overwriting it would leave that server
    /// unreachable to every tool that reads the pidfile.
    #[error(
        "the pidfile {} names PID {pid}, which is running; another server uses this pidfile: stop it first (kill -TERM {pid}) or give this server a --pidfile of its own",
        path.display()
    )]
    Running {
        /// The pidfile.
        path: PathBuf,
        /// The PID it names.
        pid: u32,
    },
    /// This platform has no pidfiles (Windows).
    #[error(
        "--pidfile is not supported on this platform (no service manager here reads pidfiles)"
    )]
    Unsupported,
}

/// A pidfile written by [`Pidfile::write`]; removed by
/// [`remove`](Pidfile::remove) or on drop, only if it still holds our PID.
#[derive(Debug)]
pub struct Pidfile {
    path: PathBuf,
    /// The directory as opened once: removal acts on the same directory even
    /// if a name on the way to it changes meanwhile.
    dir: sys::Dir,
    name: OsString,
    pid: u32,
    removed: bool,
}

impl Pidfile {
    /// Writes `pid` and a newline to `path`, atomically, mode 0644.
    ///
    /// # Errors
    /// [`PidfileError::UnsafeDir`] for a directory others can write without
    /// the sticky bit, [`PidfileError::Symlink`] for a symlink at `path`,
    /// [`PidfileError::Dir`] or [`PidfileError::Io`] when the system refuses, and
    /// [`PidfileError::Unsupported`] on Windows. Nothing is left behind.
    ///
    /// # Examples
    /// ```
    /// # #[cfg(unix)] {
    /// use llmlb::supervise::pidfile::Pidfile;
    ///
    /// let tmp = tempfile::tempdir()?;
    /// let path = tmp.path().join("server.pid");
    /// let pidfile = Pidfile::write(&path, std::process::id())?;
    /// assert_eq!(std::fs::read_to_string(&path)?, format!("{}\n", std::process::id()));
    /// pidfile.remove()?;
    /// assert!(!path.exists());
    /// # }
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn write(path: &Path, pid: u32) -> Result<Pidfile, PidfileError> {
        Self::write_taking_over(path, pid, None)
    }

    /// As [`write`](Self::write), for a server taking its port over from
    /// `predecessor` by handover: a pidfile that names the predecessor (or
    /// this process) is replaced, as is one naming a process that no longer
    /// runs (or a PID reused since the file was written); one naming any
    /// other running process is refused with [`PidfileError::Running`], as
    /// `start-stop-daemon` and `pg_ctl` refuse.
    ///
    /// # Errors
    /// As [`write`](Self::write), and [`PidfileError::Running`].
    pub fn write_taking_over(
        path: &Path,
        pid: u32,
        predecessor: Option<u32>,
    ) -> Result<Pidfile, PidfileError> {
        let (dir, name) = Self::check(path, pid, predecessor)?;
        let io_error = |source| PidfileError::Io {
            path: path.to_owned(),
            source,
        };
        // A symlink planted between the check and the rename is replaced,
        // never followed; one at the temp name is unlinked, never followed.
        sys::write_replacing(&dir, &name, format!("{pid}\n").as_bytes(), pid).map_err(io_error)?;
        Ok(Pidfile {
            path: path.to_owned(),
            dir,
            name,
            pid,
            removed: false,
        })
    }

    /// Everything [`write_taking_over`](Self::write_taking_over) checks,
    /// without writing: for a server that writes its pidfile only once it
    /// owns the port (a replace writes it when its predecessor drains), and
    /// must refuse a bad one before it takes anything.
    ///
    /// # Errors
    /// As [`write_taking_over`](Self::write_taking_over).
    pub fn check_writable(
        path: &Path,
        pid: u32,
        predecessor: Option<u32>,
    ) -> Result<(), PidfileError> {
        Self::check(path, pid, predecessor).map(drop)
    }

    fn check(
        path: &Path,
        pid: u32,
        predecessor: Option<u32>,
    ) -> Result<(sys::Dir, OsString), PidfileError> {
        let Some(Component::Normal(name)) = path.components().next_back() else {
            return Err(PidfileError::NotAFileName(path.to_owned()));
        };
        let parent = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
            _ => PathBuf::from("."),
        };
        let io_error = |source| PidfileError::Io {
            path: path.to_owned(),
            source,
        };
        let dir = sys::open_dir(&parent).map_err(|e| match e.kind() {
            io::ErrorKind::Unsupported => PidfileError::Unsupported,
            _ => PidfileError::Dir {
                dir: parent.clone(),
                source: e,
            },
        })?;
        if sys::others_can_write(&dir).map_err(io_error)? {
            return Err(PidfileError::UnsafeDir(parent));
        }
        if sys::is_symlink(&dir, name).map_err(io_error)? {
            return Err(PidfileError::Symlink(path.to_owned()));
        }
        if let Some(text) = sys::read_small(&dir, name).map_err(io_error)? {
            let named = String::from_utf8_lossy(&text).trim().parse::<u32>().ok();
            if let Some(named) = named.filter(|&n| n != pid && Some(n) != predecessor && n != 0) {
                if sys::runs_since_written(&dir, name, named).map_err(io_error)? {
                    return Err(PidfileError::Running {
                        path: path.to_owned(),
                        pid: named,
                    });
                }
            }
        }
        Ok((dir, name.to_owned()))
    }

    /// Writes our PID again, over whatever the pidfile says now: for a
    /// holder that has taken its port back (a successor that wrote its own
    /// PID there gave up), whose pidfile must name it again.
    ///
    /// # Errors
    /// [`PidfileError::Io`] when the system refuses.
    pub fn rewrite(&self) -> Result<(), PidfileError> {
        sys::write_replacing(
            &self.dir,
            &self.name,
            format!("{}\n", self.pid).as_bytes(),
            self.pid,
        )
        .map_err(|source| PidfileError::Io {
            path: self.path.clone(),
            source,
        })
    }

    /// Removes the pidfile at `path` if it names `pid` (read without
    /// following a symlink); leaves alone whatever else is there. For a
    /// server that owns a pidfile it did not write: one its predecessor
    /// left to it at a handover, as it stops before writing its own.
    ///
    /// # Errors
    /// As [`write`](Self::write) for the directory; [`PidfileError::Io`]
    /// if it named `pid` but could not be removed.
    pub fn remove_if_names(path: &Path, pid: u32) -> Result<(), PidfileError> {
        let Some(Component::Normal(name)) = path.components().next_back() else {
            return Err(PidfileError::NotAFileName(path.to_owned()));
        };
        let parent = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
            _ => PathBuf::from("."),
        };
        let dir = sys::open_dir(&parent).map_err(|e| PidfileError::Dir {
            dir: parent.clone(),
            source: e,
        })?;
        remove_if_ours(&dir, name, pid).map_err(|source| PidfileError::Io {
            path: path.to_owned(),
            source,
        })
    }

    /// The path it was written at.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Removes the pidfile if it still holds our PID (read without following
    /// a symlink); leaves alone whatever else is there now.
    ///
    /// # Errors
    /// The pidfile held our PID but could not be removed.
    pub fn remove(mut self) -> io::Result<()> {
        self.remove_once()
    }

    fn remove_once(&mut self) -> io::Result<()> {
        if std::mem::replace(&mut self.removed, true) {
            return Ok(());
        }
        remove_if_ours(&self.dir, &self.name, self.pid)
    }
}

fn remove_if_ours(dir: &sys::Dir, name: &OsStr, pid: u32) -> io::Result<()> {
    let Some(text) = sys::read_small(dir, name)? else {
        return Ok(());
    };
    if String::from_utf8_lossy(&text).trim() != pid.to_string() {
        return Ok(());
    }
    // Read, compare, unlink: not atomic, but only we and root can write the
    // directory (checked at write), so nobody else can swap the file between.
    sys::unlink(dir, name)
}

impl Drop for Pidfile {
    /// Removes it as [`remove`](Pidfile::remove) does; a failure is logged.
    fn drop(&mut self) {
        if let Err(e) = self.remove_once() {
            tracing::warn!("cannot remove the pidfile {}: {e}", self.path.display());
        }
    }
}
