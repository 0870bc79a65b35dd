//! llmlb: a per-port single-instance lock for servers.
//!
//! Three layers, each using only the ones below it:
//!
//! - [`lock`], the protocol: who owns a port, proven by the kernel (the lock
//!   dir, the typestate, the lock info, errors, and the platform calls in
//!   its `sys` module). It knows nothing of the layers above.
//! - [`supervise`], the server's life around a held lock: exec mode's
//!   process tree, the watchdog that keeps the lock file the server's own,
//!   handovers, readiness, and `stop`; and, with the `server` feature,
//!   `supervise::server::serve`: all of `llmlb serve` as one call. Built on
//!   [`lock`].
//! - The shells: the `llmlb` binary (`cli`, behind the `cli` feature) and the
//!   C ABI with its Python package (`ffi/`). They parse, call and print (the
//!   C and Python launchers call `serve` through `llmlb_serve_exec`), so
//!   every launcher speaks exactly the same protocol and lives the same life.
//!
//! # Guides
//!
//! The guides of the source tree's `docs/` are rendered here too, so their
//! Rust examples are doctests:
//!
//! - [`guides::protocol`] (`docs/protocol.md`): the lock protocol step by
//!   step, what is promised and what is not, platforms, network file
//!   systems, fork/exec/adopt, containers;
//! - [`guides::cli`] (`docs/cli.md`): the `llmlb` command for operators;
//! - [`guides::c_api`] (`docs/c-api.md`): the C library's conventions and
//!   linking;
//! - [`guides::python`] (`docs/python.md`): the Python package;
//! - [`guides::performance`] (`docs/performance.md`): the benchmarks and
//!   their figures.
//!
//! # Using the library alone
//!
//! The command line (clap, tokio, axum, tracing-subscriber) sits behind the
//! default `cli` feature, which is `server` (`supervise::server`: tokio,
//! tracing-subscriber) with `http` (serve's built-in HTTP server: axum,
//! hyper) and clap. A program that only wants the lock leaves them out
//! and builds with fs2, serde, serde_json, chrono, thiserror, tracing and
//! libc (windows-sys on Windows):
//!
//! ```toml
//! [dependencies]
//! llmlb = { version = "0.1", default-features = false }
//! ```
//!
//! The library logs only through [`tracing`] (a stale lock reclaimed from a
//! dead PID, a release that failed in `Drop`): nothing is printed unless the
//! application installs a subscriber.
//!
//! # Examples
//!
//! Take a port once per host, as `llmlb serve` does; a second taker is told
//! who holds it; [`lock::probe`] (what `llmlb status` does) never takes
//! anything:
//!
//! ```
//! use llmlb::lock::{acquire_or_reclaim, probe, LockDir, LockError, LockState};
//!
//! # let tmp = tempfile::tempdir().unwrap();
//! # let dir_path = tmp.path().join("locks");
//! // In a program: LockDir::create(llmlb::lock::resolve_lock_dir(None)),
//! // the CLI's dir ($LLMLB_LOCK_DIR, else the per-user default_lock_dir()).
//! let dir = LockDir::create(&dir_path)?;
//! let guard = acquire_or_reclaim(&dir, 8000)?; // serve port 8000 while `guard` lives
//!
//! match acquire_or_reclaim(&dir, 8000) {
//!     Err(LockError::AlreadyRunning { holder, .. }) => {
//!         assert_eq!(holder.map(|info| info.pid), Some(std::process::id()));
//!     }
//!     other => panic!("a second taker must be refused, got {other:?}"),
//! }
//! assert!(matches!(probe(&dir_path, 8000)?, LockState::Held(_)));
//!
//! guard.release()?; // or drop it: the lock file is removed either way
//! assert_eq!(probe(&dir_path, 8000)?, LockState::Free);
//! # Ok::<(), LockError>(())
//! ```

// The CLI's modules name the library as its users do (`llmlb::lock::…`).
#[cfg(all(feature = "cli", not(loom)))]
extern crate self as llmlb;

#[cfg(all(feature = "cli", not(loom)))]
pub mod cli;
pub mod lock;
pub mod supervise;
mod sync;

/// The guides of `docs/`, one per reader, rendered by `cargo doc` (links
/// between them point at the `.md` files of the source tree). No items.
pub mod guides {
    #[doc = include_str!("../docs/protocol.md")]
    pub mod protocol {}
    #[doc = include_str!("../docs/cli.md")]
    pub mod cli {}
    #[doc = include_str!("../docs/c-api.md")]
    pub mod c_api {}
    #[doc = include_str!("../docs/python.md")]
    pub mod python {}
    #[doc = include_str!("../docs/performance.md")]
    pub mod performance {}
}
