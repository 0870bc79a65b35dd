//! The server's life around a held port lock: what a launcher does between
//! taking the port and letting it go.
//!
//! [`crate::lock`] answers "who owns this port?", proven by the kernel. This
//! module is built on it and never the other way round (`src/lock/` imports
//! nothing from here):
//! - [`exec`]: running a command under the lock (`llmlb serve -- CMD`, the C
//!   and Python launchers): the command's whole process tree, signals
//!   forwarded to it, its exit code;
//! - [`activation`]: a listening socket received from a supervisor
//!   (`LISTEN_FDS`), and [`socket_pass`]: one handed on to the command;
//! - the watchdog ([`SharedLock`], [`Watchdog`]): a running server's main
//!   thread and the thread that checks the lock file is still its own;
//! - [`ready`]: when a command run under the lock counts as ready (exec
//!   mode's `--ready listen|notify|immediate|http`), with [`notify_socket`], the
//!   sd_notify receiver its `notify` policy listens on;
//! - stop ([`stop_server`]): ending whatever holds a port, pg_ctl-style,
//!   signalling only a process proven to be the holder;
//! - [`wait`]: waiting, without taking anything, for a port to be ready,
//!   held or free (`llmlb wait`);
//! - [`notify`]: telling our own service manager (sd_notify: ready, status,
//!   stopping, watchdog heartbeats);
//! - [`pidfile`]: the classic pidfile of `serve --pidfile`;
//! - [`handover`]: handing the lock and the listening sockets to a
//!   successor without refusing a connection (`serve --replace`), and
//!   [`succession`]: a server's handovers over its life, both ways, with the
//!   grace window before a replace commits and the pidfile that follows the
//!   port;
//! - [`reload`]: a running server starting its own successor, which takes
//!   the port over by handover (`llmlb reload`, SIGUSR2);
//! - `server` (with the `server` feature): all of `llmlb serve` as one call,
//!   for the CLI and the C ABI's `llmlb_serve_exec`;
//! - `proxy` (with the `server` feature): forwarding each connection of a
//!   listening socket to a backend address at the TCP level (`serve --proxy`).
//!
//! Its platform calls go through the lock's `sys` module (the one place that
//! talks to the operating system for the lock), or, for what the lock never
//! needs (sd_notify sockets, socket tables), through small per-platform
//! submodules of their own; either way with the same signatures on each
//! platform.

pub mod activation;
// Launcher support: the public part is what the C ABI's launchers need
// (`lock_fd`, `leads_process_group`); the exec-mode plumbing of
// `llmlb serve -- CMD` is crate-private, used by the `cli` feature only.
#[cfg_attr(any(not(feature = "server"), loom), allow(dead_code))]
pub mod exec;
pub mod handover;
// Exec mode's socket hand-over (`serve --pass-socket`, activation): used by
// the `cli` feature only.
pub mod listener;
pub mod notify;
pub mod notify_socket;
pub mod pidfile;
// Needs tokio's networking, which the lean library and loom builds leave out.
#[cfg(all(feature = "server", not(loom)))]
pub mod proxy;
pub mod ready;
pub mod reload;
#[cfg(all(feature = "server", not(loom)))]
pub mod server;
#[cfg_attr(any(not(feature = "server"), loom), allow(dead_code))]
pub mod socket_pass;
mod stop;
pub mod succession;
pub mod wait;
mod watchdog;

pub use stop::{stop_server, StopError, StopEvent, StopOptions, StopOutcome, STOP_POLL_INTERVAL};
pub use watchdog::{
    Guard, LockHandle, SharedLock, WatchEnd, WatchEvent, Watchdog, REFRESH_INTERVAL,
};
