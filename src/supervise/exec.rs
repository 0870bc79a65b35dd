//! Running a command under a held port lock (`llmlb serve -- CMD`, the C and
//! Python launchers): the child setup, signal plumbing and clean-up a
//! launcher needs, without platform code in the launcher itself.
//!
//! # The command's whole tree
//! A command may fork (`sh -c 'server & wait'`), and its descendants may
//! outlive it or the launcher. Two rules keep the port locked exactly while
//! any of them can be serving it:
//! - **The tree holds the lock.** The child inherits the lock's open file
//!   description (`flock` belongs to the description, so every process that
//!   keeps the descriptor holds the lock). After `kill -9` of the launcher
//!   the port stays held until the last such process exits; then the file is
//!   stale and the next start reclaims it. Its number is in `LLMLB_LOCK_FD`,
//!   so a command can close it in helpers that must not keep the port.
//! - **The launcher cleans up its tree.** When the command exits, when the
//!   port is lost, or when the launcher is told to stop, the command's
//!   process group gets `SIGTERM`, then `SIGKILL` after a deadline, and only
//!   then is the lock released. Release then closes the launcher's
//!   descriptor and takes the lock again before removing the file
//!   ([`PortGuard::release`]), so a descendant that left the group (`setsid`)
//!   and still holds the descriptor keeps the port locked instead of being
//!   left serving it while the file is gone.
//!
//! A descendant that closes the descriptor *and* leaves the group is beyond
//! reach of both rules (only a cgroup or PID namespace could contain it).

use std::io;
use std::process::{Command, ExitStatus};

use crate::lock::sys;
use crate::lock::PortGuard;

/// Environment variable naming the lock descriptor the command inherits.
pub const LOCK_FD_ENV: &str = "LLMLB_LOCK_FD";

/// What [`configure_exec_child`] set up; keep it until the child is spawned,
/// then drop it (it closes this process's spare copy of the descriptor).
#[derive(Debug)]
pub(crate) struct ExecChild {
    /// Held only to be closed on drop.
    _fd: Option<sys::ChildFd>,
}

/// Prepares `cmd` to run as the exec-mode child of the holder of `guard`.
///
/// Guarantees on Unix:
/// - the child leads a process group of its own (its pgid is its PID, see
///   [`CommandTree::pgid`]), so the whole tree, grandchildren included, can be
///   signalled at once and a terminal's Ctrl-C reaches only the launcher,
///   which forwards it;
/// - it inherits the lock's open file description (number in
///   [`LOCK_FD_ENV`]), so the port stays locked while any process of its
///   tree keeps it, even after the launcher is killed (see the module docs);
///   `guard`'s release then accounts for it;
/// - on Linux it gets `SIGKILL` when the spawning *thread* dies
///   (`PR_SET_PDEATHSIG`). Spawn from a thread that lives as long as the
///   child (the main thread); if the launcher is already gone when the child
///   starts, the command is not executed.
///
/// On Windows the child is started suspended in a console process group of
/// its own (`CREATE_NEW_PROCESS_GROUP`); [`CommandTree::attach`] must follow
/// the spawn at once: it puts the child in a kill-on-close job object and
/// resumes it. The lock is not passed to it.
///
/// # Errors
/// The OS error if the descriptor cannot be duplicated (e.g. `EMFILE`).
pub(crate) fn configure_exec_child(
    cmd: &mut Command,
    guard: &mut PortGuard,
) -> io::Result<ExecChild> {
    sys::configure_child(cmd);
    #[cfg(unix)]
    {
        let fd = sys::pass_to_child(cmd, guard.share_file())?;
        cmd.env(LOCK_FD_ENV, fd.number().to_string());
        Ok(ExecChild { _fd: Some(fd) })
    }
    #[cfg(not(unix))]
    {
        let _ = guard;
        Ok(ExecChild { _fd: None })
    }
}

/// The lock's descriptor, for a launcher that spawns its child itself (the C
/// ABI's `llmlb_lock_fd`, Python's `pass_fds`). It stays owned by `guard`;
/// keep it open across `exec` only in the child. Marks the guard as shared,
/// so its release accounts for children still holding it. `-1` on Windows.
pub fn lock_fd(guard: &mut PortGuard) -> i32 {
    sys::raw_descriptor(guard.share_file())
}

/// The command's whole tree, as this platform contains it: its process group
/// on Unix; on Windows a job object with `JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE`,
/// whose handle only this process has, so the command and everything it
/// starts die with this process however it ends.
#[derive(Debug)]
pub(crate) struct CommandTree {
    inner: sys::ChildTree,
}

impl CommandTree {
    /// Takes charge of the tree of the child `pid`, spawned from a command
    /// prepared with [`configure_exec_child`]. Call right after the spawn: on
    /// Windows the child waits, suspended, until this puts it in its job.
    ///
    /// # Errors
    /// The OS error if the job cannot be made or the child not put in it or
    /// resumed; the child is then terminated (it never ran). `InvalidInput`
    /// on Unix if the child has no group.
    pub(crate) fn attach(pid: u32) -> io::Result<CommandTree> {
        sys::attach_child(pid).map(|inner| CommandTree { inner })
    }

    /// The process group to record with
    /// [`PortGuard::set_child_pgid`](crate::lock::PortGuard::set_child_pgid), so
    /// `stop --force` kills all of it; `None` on Windows, where terminating
    /// the holder ends the job.
    pub(crate) fn pgid(&self) -> Option<u32> {
        self.inner.pgid()
    }

    /// Sends `sig` to the whole tree. On Windows `Interrupt` and `Terminate`
    /// are `CTRL_BREAK_EVENT` to the child's console process group (which
    /// reaches it only if it shares this process's console) and `Kill`
    /// terminates every process in the job.
    ///
    /// # Errors
    /// The OS error (`ESRCH` when the group is gone).
    ///
    /// `Unsupported` on Windows for the signals it has no equivalent of
    /// (`Hangup`, `User1`, `Quit`, `WindowChange`).
    pub(crate) fn signal(&self, sig: ForwardSignal) -> io::Result<()> {
        self.inner.signal(sys_signal(sig)?)
    }

    /// Whether every process of the tree has exited. Call after the child
    /// itself was waited for (on Unix its exited children in the group are
    /// reaped first).
    pub(crate) fn is_gone(&self) -> bool {
        self.inner.is_gone()
    }
}

/// Whether `pid` is a live process that leads its own process group, i.e. a
/// valid argument for [`PortGuard::set_child_pgid`]. Always false on Windows.
pub fn leads_process_group(pid: u32) -> bool {
    sys::leads_group(pid)
}

/// Makes this process adopt its orphaned descendants (Linux
/// `PR_SET_CHILD_SUBREAPER`), so that [`CommandTree::is_gone`] sees a
/// command's grandchildren die even under an init that does not reap them.
/// `Ok(false)` where the platform has no such thing. Call before spawning.
///
/// # Errors
/// The OS error from `prctl`.
pub(crate) fn become_subreaper() -> io::Result<bool> {
    sys::become_subreaper()
}

/// Reaps the exited orphans a subreaper inherited, except `direct_child`,
/// whose status its `Child` handle collects. Call now and then while the
/// command runs, so dead grandchildren do not pile up as zombies.
pub(crate) fn reap_orphans(direct_child: u32) {
    sys::reap_orphans(&[
        direct_child,
        SPARED.load(std::sync::atomic::Ordering::SeqCst),
    ])
}

/// A child of this process that [`reap_orphans`] must leave alone (a
/// reload's successor, whose status the reload collects); 0: none.
static SPARED: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

/// Keeps `pid` (0: nobody) from [`reap_orphans`] until called again.
pub(crate) fn spare_from_reaping(pid: u32) {
    SPARED.store(pid, std::sync::atomic::Ordering::SeqCst);
}

/// The exit code a launcher should exit with for its child's `status`: the
/// child's own code, or 128 + the signal number if a signal killed it (the
/// shell convention, so `llmlb serve -- CMD` is transparent to scripts).
pub(crate) fn exit_code(status: ExitStatus) -> i32 {
    sys::exit_code(status)
}

/// Whether `status` is a death by `sig`; never on Windows, which has no
/// signal deaths.
pub(crate) fn died_of(status: ExitStatus, sig: ForwardSignal) -> bool {
    #[cfg(unix)]
    return sys_signal(sig).is_ok_and(|sig| sys::died_of(status, sig));
    #[cfg(not(unix))]
    {
        let _ = (status, sig);
        false
    }
}

/// Ends this process by `sig` with its default action, as a shell does
/// after a child died of a signal it was sent (`WCE`): the parent's `wait`
/// sees a death by `sig`, which systemd counts as a clean stop for `SIGTERM`
/// and `SIGINT` where it counts exit code 143 as a failure. Call only with
/// everything released. Returns where that is not possible (Windows, or a
/// signal whose default action does not end a process).
pub(crate) fn die_of(sig: ForwardSignal) {
    #[cfg(unix)]
    if let Ok(sig) = sys_signal(sig) {
        sys::die_of(sig);
    }
    #[cfg(not(unix))]
    let _ = sig;
}

/// The platform's signal for `sig`; Windows has only `Int`, `Term` and
/// `Kill` (as console events and termination).
fn sys_signal(sig: ForwardSignal) -> io::Result<sys::Signal> {
    Ok(match sig {
        ForwardSignal::Interrupt => sys::Signal::Int,
        ForwardSignal::Terminate => sys::Signal::Term,
        ForwardSignal::Kill => sys::Signal::Kill,
        #[cfg(unix)]
        ForwardSignal::Hangup => sys::Signal::Hup,
        #[cfg(unix)]
        ForwardSignal::User1 => sys::Signal::Usr1,
        #[cfg(unix)]
        ForwardSignal::Quit => sys::Signal::Quit,
        #[cfg(unix)]
        ForwardSignal::WindowChange => sys::Signal::Winch,
        #[cfg(not(unix))]
        _ => {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "Windows has no such signal",
            ))
        }
    })
}

/// A signal a launcher sends to its child's process group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
#[cfg_attr(
    windows,
    allow(
        dead_code,
        reason = "Windows has no SIGHUP, SIGUSR1 or SIGQUIT to receive"
    )
)]
pub(crate) enum ForwardSignal {
    /// `SIGINT` (Ctrl-C).
    Interrupt,
    /// `SIGTERM` (`llmlb stop`, `kill`, systemd).
    Terminate,
    /// `SIGKILL`: the deadline after `SIGTERM` passed.
    Kill,
    /// `SIGHUP`: reload (gunicorn, nginx), or a closed terminal. Unix only.
    Hangup,
    /// `SIGUSR1`: reopen logs (nginx, logrotate's `postrotate`). Unix only.
    User1,
    /// `SIGQUIT`: the command decides (nginx: graceful stop). Unix only.
    Quit,
    /// `SIGWINCH`: the terminal was resized (nginx: stop the workers).
    /// Unix only.
    WindowChange,
}
