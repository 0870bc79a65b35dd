//! What a server is told and how it ends: [`ServeOptions`] (`llmlb
//! serve`'s flags), [`Mode`], [`Exit`], and the settled values the server's
//! parts share. A leaf: the parts of [`super`] import it, never the
//! other way round.

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
/// gives `serve`'s defaults; [`serve`](super::serve) checks the combination first (a
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

/// The [`lock_dir_hint`](ServeOptions::lock_dir_hint) for a lock dir the
/// caller chose explicitly (`--lock-dir`, the C struct's `lock_dir`): the
/// flag with the dir quoted for the shell, so a suggested command names the
/// same dir.
pub fn explicit_lock_dir_hint(lock_dir: &std::path::Path) -> String {
    format!(" --lock-dir {}", crate::lock::shell_quoted(lock_dir))
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
    /// An exit with `code` alone.
    pub(crate) fn code_only(code: i32) -> Exit {
        Exit { code, signal: None }
    }

    /// An exit with `code`, dying of `signal` if any (see [`signal`](Self::signal)).
    pub(crate) fn with_signal(code: i32, signal: Option<ForwardSignal>) -> Exit {
        Exit { code, signal }
    }

    /// The exit code (128 + N where the server dies of signal N).
    pub fn code(&self) -> i32 {
        self.code
    }

    /// The number of the stop signal (SIGINT or SIGTERM) `llmlb serve`
    /// dies of, if it does: the command died of it when it was forwarded,
    /// and the code is 128 + it. Never on Windows.
    pub fn signal(&self) -> Option<i32> {
        self.signal.map(|_| self.code - 128)
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

/// The lock dir a server takes its port in, with the suffix its messages
/// append to the commands they suggest (see [`ServeOptions::lock_dir_hint`]).
#[derive(Debug, Clone)]
pub(crate) struct Where {
    pub(crate) path: PathBuf,
    pub(crate) hint: String,
}

/// How long in-flight requests (exec mode: the command) may take to finish
/// after a stop signal unless `--drain-timeout` says otherwise. Below
/// `llmlb stop`'s default 5 s timeout, so one slow client cannot turn a
/// graceful stop into a timeout.
const STOP_DRAIN: Duration = Duration::from_secs(3);
/// How long what a server accepted may take to finish after it handed its
/// port over (and, in proxy mode, after a stop) unless `--drain-timeout`
/// says otherwise: nobody waits for it, the port is served.
pub(crate) const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a server that stops serving gives what it accepted to finish
/// (`--drain-timeout`), by why it stops.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Drains {
    /// After it handed its port over to a successor.
    pub(crate) handed_over: Duration,
    /// After a stop request (a signal, `llmlb stop`).
    pub(crate) stopped: Duration,
}

impl Drains {
    /// `--drain-timeout` as given (`None`: the defaults), for proxy mode or
    /// not: a proxy's clients wait for their streams on a stop too.
    pub(crate) fn new(given: Option<Duration>, proxy: bool) -> Drains {
        match given {
            Some(timeout) => Drains {
                handed_over: timeout,
                stopped: timeout,
            },
            None => Drains {
                handed_over: DEFAULT_DRAIN_TIMEOUT,
                stopped: if proxy {
                    DEFAULT_DRAIN_TIMEOUT
                } else {
                    STOP_DRAIN
                },
            },
        }
    }
}
