//! The per-port server lock: who owns a port, proven by the kernel.
//!
//! The kernel's exclusive advisory lock (flock on Unix, LockFileEx on Windows)
//! on `<lock dir>/serve_<port>.lock` is the single source of truth for "held".
//! The JSON inside ([`LockInfo`]) is for humans and for `stop`; it never
//! decides liveness: a file nobody holds is stale whatever PID it names.
//!
//! Start with [`acquire_or_reclaim`] (servers, launchers) or [`LockDir::probe`]
//! (status). The typestate [`PortLock`] spells the lifecycle out for callers
//! that want each step.

mod dir;
mod error;
// Advice about a port's holder, for the lock's own messages and `stop`'s.
pub(crate) mod hint;
mod identity;
mod info;
mod protocol;
mod state;
mod stop_request;
mod text;
// Also the platform calls of `crate::supervise` (process groups, pinned
// processes, signals): the one place that talks to the operating system.
// Without the `cli` feature, those behind the exec-mode plumbing
// (subreaper, child setup) have no caller.
#[cfg_attr(any(not(feature = "server"), loom), allow(dead_code))]
pub(crate) mod sys;
mod wait;

pub use dir::{
    check_port, default_lock_dir, lock_file_name, port_from_file_name, resolve_lock_dir, LockDir,
    PortReport, LOCK_DIR_ENV,
};
pub use error::{LockError, TransitionError};
pub use info::{
    IdentityCheck, LockInfo, ProcessIdentity, ServeState, ARGV_TRUNCATED, MAX_ARGV_JSON_LEN,
    MAX_CWD_JSON_LEN, MAX_INFO_LEN,
};
pub use protocol::Integrity;
pub use state::{
    acquire_or_reclaim, Acquired, Free, Held, Holds, PortGuard, PortLock, Reclaimed, Stale, State,
};
pub use stop_request::StopRequest;
pub use text::{printable, shell_quoted, Printable, ShellQuoted};
#[cfg(all(any(feature = "server", feature = "tokio"), not(loom)))]
pub use wait::acquire_timeout_async;
#[cfg(all(feature = "server", not(loom)))]
pub(crate) use wait::async_impl;
pub use wait::{acquire_timeout, WAIT_POLL_CAP};
// The safety-net tick under a watch that sees everything, for `supervise::wait`.
pub(crate) use wait::WATCHED_POLL_CAP;

/// What a probe observed about a port: the runtime twin of the typestate, for
/// status output, the CLI and the C ABI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LockState {
    /// No lock file, or an empty one nobody holds: the port can be taken.
    Free,
    /// A process holds the lock. Its info, or `None` if unreadable (being
    /// written, garbage, or Windows' mandatory read locks).
    Held(Option<LockInfo>),
    /// The file exists with content but nobody holds the lock: the holder
    /// died. Its info if readable. The next acquire reclaims it.
    Stale(Option<LockInfo>),
}

impl LockState {
    /// `"free"`, `"held"` or `"stale"`.
    pub fn name(&self) -> &'static str {
        match self {
            LockState::Free => "free",
            LockState::Held(_) => "held",
            LockState::Stale(_) => "stale",
        }
    }

    /// The recorded info, for held and stale states when readable.
    pub fn info(&self) -> Option<&LockInfo> {
        match self {
            LockState::Free => None,
            LockState::Held(info) | LockState::Stale(info) => info.as_ref(),
        }
    }
}

/// Probes `port` in the lock dir at `dir` without creating anything: a
/// missing dir means [`LockState::Free`].
///
/// # Errors
/// As [`LockDir::existing`] and [`LockDir::probe`].
pub fn probe(dir: &std::path::Path, port: u16) -> Result<LockState, LockError> {
    check_port(port)?;
    match LockDir::existing(dir)? {
        Some(dir) => dir.probe(port),
        None => Ok(LockState::Free),
    }
}
