//! The server's life, written once: `llmlb serve` as one call.
//!
//! [`serve`] takes a port's lock (waiting, or taking it over from its
//! running holder with `replace`), serves it (the built-in HTTP server, a
//! command, or a command behind the proxy), answers handovers and reloads,
//! reports to the service manager, drains, and releases. The CLI parses its
//! flags into [`ServeOptions`] and calls it; the C ABI's `llmlb_serve_exec`
//! fills the same options from a C struct, so the C and Python launchers get
//! every policy `llmlb serve` has, with the same messages and exit codes.

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use crate::supervise::activation::Activated;
use crate::supervise::exec::ForwardSignal;
use crate::supervise::ready::ReadySpec;

/// The runtime-failure exit code (`Error: …` was printed).
pub const EXIT_FAILURE: i32 = 1;
/// The usage-error exit code, as clap's: options that cannot go together.
pub const EXIT_USAGE: i32 = 2;

/// What a server serves on its port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    /// The built-in HTTP server (`GET /health`); needs the `http` feature.
    Http,
    /// A command run under the lock (`llmlb serve -- CMD`): the program,
    /// then its arguments.
    Exec(Vec<OsString>),
    /// A command serving on a private port of its own, behind llmlb's proxy
    /// on the public one (`serve --proxy -- CMD`).
    Proxy {
        /// The program, then its arguments (`{port}` becomes the private
        /// port).
        command: Vec<OsString>,
        /// `--backend-port`: the private port wanted; `None` lets the kernel
        /// pick one.
        backend_port: Option<u16>,
        /// `--max-connections`: connections forwarded at once.
        max_connections: usize,
    },
}

/// Everything `llmlb serve` is told, as flags name it. [`ServeOptions::new`]
/// gives `serve`'s defaults; [`serve`] checks the combination first (a
/// combination the CLI refuses is refused here too, exit [`EXIT_USAGE`]).
#[derive(Debug)]
pub struct ServeOptions {
    /// The lock dir (`--lock-dir`, `$LLMLB_LOCK_DIR`, the per-user default).
    pub lock_dir: PathBuf,
    /// Appended to every command a message suggests (`llmlb stop --port
    /// P{hint}`): empty, or ` --lock-dir '<dir>'` when the dir was given on
    /// the command line, so the suggestion works as printed.
    pub lock_dir_hint: String,
    /// The port to lock and serve.
    pub port: u16,
    /// `--host`: the address to listen on (exec mode: `LLMLB_HOST`, bound
    /// only with `pass_socket`, proxy or replace). Brackets of an IPv6 URL
    /// form are accepted.
    pub host: String,
    /// What is served.
    pub mode: Mode,
    /// `--ready`: when a command counts as ready. Must be the default for
    /// [`Mode::Http`].
    pub ready: ReadySpec,
    /// `--ready-timeout`: `None` is the default (60 s with `replace`, else
    /// for ever); `Some(ZERO)` waits for ever.
    pub ready_timeout: Option<Duration>,
    /// `--wait`: how long to wait for a held port; zero fails at once.
    pub wait: Duration,
    /// `--pidfile` (Unix).
    pub pidfile: Option<PathBuf>,
    /// `--pass-socket`: bind the port and pass the socket to the command as
    /// descriptor 3 (`LISTEN_FDS`); implied by `replace` on Unix.
    pub pass_socket: bool,
    /// A socket received by socket activation (see
    /// [`activated_listener`](crate::supervise::activation::activated_listener)),
    /// whose port must be [`port`](Self::port).
    pub activated: Option<Activated>,
    /// `--replace`: take the port over from its running holder.
    pub replace: bool,
    /// `--replace-timeout`.
    pub replace_timeout: Duration,
    /// `--replace-grace`.
    pub replace_grace: Duration,
    /// `--drain-timeout`; `None` gives the defaults (30 s after a handover
    /// and for a stop in proxy mode, 3 s for a stop otherwise).
    pub drain_timeout: Option<Duration>,
}

impl ServeOptions {
    /// `llmlb serve --port port` with every other flag at its default: the
    /// built-in HTTP server on 0.0.0.0, `--ready listen`, no wait.
    pub fn new(lock_dir: PathBuf, port: u16) -> ServeOptions {
        ServeOptions {
            lock_dir,
            lock_dir_hint: String::new(),
            port,
            host: DEFAULT_HOST.to_owned(),
            mode: Mode::Http,
            ready: ReadySpec::default(),
            ready_timeout: None,
            wait: Duration::ZERO,
            pidfile: None,
            pass_socket: false,
            activated: None,
            replace: false,
            replace_timeout: DEFAULT_REPLACE_TIMEOUT,
            replace_grace: DEFAULT_REPLACE_GRACE,
            drain_timeout: None,
        }
    }
}

/// `--host`'s default.
pub const DEFAULT_HOST: &str = "0.0.0.0";
/// `--replace-timeout`'s default.
pub const DEFAULT_REPLACE_TIMEOUT: Duration = Duration::from_secs(5);
/// `--replace-grace`'s default.
pub const DEFAULT_REPLACE_GRACE: Duration = Duration::from_secs(2);

/// How a server ended: the exit code `llmlb serve` exits with, and the stop
/// signal it dies of instead where it does (a command that died of the
/// SIGINT/SIGTERM forwarded to it: a service manager must see the same
/// clean signal death).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exit {
    code: i32,
    signal: Option<ForwardSignal>,
}

impl Exit {
    /// The exit code (128 + N where the server dies of signal N).
    pub fn code(&self) -> i32 {
        self.code
    }

    /// The stop signal `llmlb serve` dies of, if it does.
    pub fn signal(&self) -> Option<ForwardSignal> {
        self.signal
    }

    /// What a launcher's `main` does with it: dies of [`signal`](Self::signal)
    /// if there is one (Unix; stdout flushed first), else returns the code
    /// to exit with.
    pub fn die_or_code(self) -> i32 {
        if let Some(sig) = self.signal {
            use std::io::Write as _;
            let _ = std::io::stdout().flush();
            crate::supervise::exec::die_of(sig);
        }
        self.code
    }
}

/// Runs `llmlb serve` with `options` on this thread (blocking, a runtime of
/// its own) and returns how it ended, with the lock, pidfile and sockets
/// released. Installs `serve`'s signal handlers for the process.
pub fn serve(options: ServeOptions) -> Exit {
    let _ = options;
    eprintln!("Error: supervise::server::serve is being moved here from the CLI");
    Exit {
        code: EXIT_FAILURE,
        signal: None,
    }
}

/// Installs `llmlb serve`'s stderr logger (level from `LLMLB_LOG_LEVEL`);
/// a no-op if the process has a tracing subscriber already.
// Placeholder on the wt-launch branch until the lead's body lands.
pub fn init_logging() {}
