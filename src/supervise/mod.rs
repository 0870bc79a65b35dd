//! The server's life around a held port lock: what a launcher does between
//! taking the port and letting it go.
//!
//! [`crate::lock`] answers "who owns this port?", proven by the kernel. This
//! module is built on it and never the other way round (`src/lock/` imports
//! nothing from here):
//! - [`exec`]: running a command under the lock (`llmlb serve -- CMD`, the C
//!   and Python launchers): the command's whole process tree, signals
//!   forwarded to it, its exit code;
//! - the watchdog ([`SharedLock`], [`Watchdog`]): a running server's main
//!   thread and the thread that checks the lock file is still its own;
//! - stop ([`stop_server`]): ending whatever holds a port, pg_ctl-style,
//!   signalling only a process proven to be the holder;
//! - [`notify`]: telling our own service manager (sd_notify: ready, status,
//!   stopping, watchdog heartbeats);
//! - [`pidfile`]: the classic pidfile of `serve --pidfile`.
//!
//! Its platform calls go through the lock's `sys` module (the one place that
//! talks to the operating system), with the same signatures on each platform.

// Launcher support: the public part is what the C ABI's launchers need
// (`lock_fd`, `leads_process_group`); the exec-mode plumbing of
// `llmlb serve -- CMD` is crate-private, used by the `cli` feature only.
#[cfg_attr(any(not(feature = "cli"), loom), allow(dead_code))]
pub mod exec;
pub mod notify;
pub mod pidfile;
mod stop;
mod watchdog;

pub use stop::{stop_server, StopError, StopEvent, StopOptions, StopOutcome, STOP_POLL_INTERVAL};
pub use watchdog::{Guard, SharedLock, WatchEnd, WatchEvent, Watchdog};
