//! Running a command under a held port lock (`llmlb serve -- CMD`): the child
//! setup and signal plumbing the launcher needs, without platform code in the
//! launcher itself.

use std::io;
use std::process::{Command, ExitStatus};

use super::sys;

/// Prepares `cmd` to run as the exec-mode child of a lock holder.
///
/// Guarantees on Unix:
/// - the child leads a process group of its own (its pgid is its PID, see
///   [`child_pgid`]), so the whole tree, grandchildren included, can be
///   signalled at once and a terminal's Ctrl-C reaches only the launcher,
///   which forwards it;
/// - it does not inherit the lock descriptor (the library opens every file
///   close-on-exec);
/// - on Linux it gets `SIGKILL` when the spawning *thread* dies
///   (`PR_SET_PDEATHSIG`), so a launcher killed with `kill -9` cannot leave it
///   holding the port without the lock. Spawn from a thread that lives as long
///   as the child (the main thread); if the launcher is already gone when the
///   child starts, the command is not executed.
///
/// On Windows the child gets its own console process group; there is no
/// parent-death signal.
pub fn configure_exec_child(cmd: &mut Command) {
    sys::configure_child(cmd);
}

/// The process group of a child spawned from a command prepared with
/// [`configure_exec_child`], to record with
/// [`PortGuard::set_child_pgid`](super::PortGuard::set_child_pgid); `None`
/// where process groups cannot be signalled (Windows).
pub fn child_pgid(child_pid: u32) -> Option<u32> {
    sys::child_pgid(child_pid)
}

/// The exit code a launcher should exit with for its child's `status`: the
/// child's own code, or 128 + the signal number if a signal killed it (the
/// shell convention, so `llmlb serve -- CMD` is transparent to scripts).
pub fn exit_code(status: ExitStatus) -> i32 {
    sys::exit_code(status)
}

/// A signal a launcher forwards to its child's process group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ForwardSignal {
    /// `SIGINT` (Ctrl-C).
    Interrupt,
    /// `SIGTERM` (`llmlb stop`, `kill`, systemd).
    Terminate,
}

/// Sends `sig` to every process in group `pgid` (`kill(-pgid, sig)`).
///
/// # Errors
/// The OS error (e.g. `ESRCH` when the group is gone); `InvalidInput` for
/// pgid 0 or 1, which would address more than one group; `Unsupported` on
/// Windows.
pub fn signal_process_group(pgid: u32, sig: ForwardSignal) -> io::Result<()> {
    let sig = match sig {
        ForwardSignal::Interrupt => sys::Signal::Int,
        ForwardSignal::Terminate => sys::Signal::Term,
    };
    sys::signal_group(pgid, sig)
}
