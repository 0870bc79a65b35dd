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
use std::io;
use std::path::PathBuf;
use std::time::Duration;

use crate::lock::PortGuard;
use crate::supervise::activation::Activated;
use crate::supervise::listener::words::who_listens;
use crate::supervise::ready::{ReadyPolicy, ReadySpec};
use crate::supervise::reload::Relaunch;
use crate::supervise::socket_pass::{PassSocket, DEFAULT_NAME};
use crate::supervise::SharedLock;

use manager::{spawn_watchdog, supervisor, tell_status, tell_stopping};
use report::{bind_failed, fail, in_use};
use signals::Signals;
use take::{handovers, take_lock, take_over, PortPidfile};

// What a server is told and how it ends.
mod options;
// The command's life under the lock: exec and proxy mode.
mod command;
// The built-in HTTP server.
#[cfg(feature = "http")]
mod http;
// serve's log lines on stderr.
mod log;
// The record's state, the service manager, the lock's watchdog.
pub(crate) mod manager;
// `Error: …` lines and the words they share.
pub(crate) mod report;
// The signals serve (and `llmlb wait`) listens for.
pub(crate) mod signals;
// `llmlb stop`'s printed progress, which `serve --replace` prints too.
pub(crate) mod stop_report;
// Taking the port: waiting, or taking it over.
mod take;

pub use log::init_logging;
pub use options::{
    explicit_lock_dir_hint, Exit, Mode, ServeOptions, DEFAULT_HOST, DEFAULT_REPLACE_GRACE,
    DEFAULT_REPLACE_TIMEOUT, EXIT_FAILURE, EXIT_USAGE,
};
pub(crate) use options::{Drains, Where};

/// `--ready-timeout`'s default with `--replace`: a successor that never
/// becomes ready must not hold a replace (and the next deploy) for ever.
const REPLACE_READY_TIMEOUT: Duration = Duration::from_secs(60);

/// Why `options` cannot be served as given, in the words of `serve`'s usage
/// errors (the CLI shows them as its own; [`serve`] exits
/// [`EXIT_USAGE`] with them). `None`: they can.
pub fn usage_problem(options: &ServeOptions) -> Option<String> {
    let exec = !matches!(options.mode, Mode::Http);
    let proxy = matches!(options.mode, Mode::Proxy { .. });
    if options.port == 0 {
        return Some("port 0 is not in 1..=65535: pass the port to serve".to_owned());
    }
    if let Mode::Exec(command) | Mode::Proxy { command, .. } = &options.mode {
        if command.is_empty() {
            return Some("exec mode needs a command (the program, then its arguments)".to_owned());
        }
    }
    if let Mode::Proxy {
        max_connections: 0, ..
    } = options.mode
    {
        return Some("--max-connections must be 1 or more".to_owned());
    }
    if !exec && options.ready != ReadySpec::default() {
        return Some(
            "--ready applies to exec mode only (the built-in server is ready once it listens): \
             add `-- COMMAND` or drop --ready"
                .to_owned(),
        );
    }
    if !options.ready.policy().is_supported() {
        return Some(
            "--ready notify is not supported on Windows (there is no sd_notify): use --ready listen, http or immediate"
                .to_owned(),
        );
    }
    // What cannot go together anywhere, before what this platform lacks.
    if options.pass_socket && !exec {
        return Some("--pass-socket applies to exec mode only: add `-- COMMAND`".to_owned());
    }
    if options.pass_socket && proxy {
        return Some("--pass-socket and --proxy cannot go together: with --proxy llmlb accepts on the port itself".to_owned());
    }
    if options.pass_socket && cfg!(windows) {
        return Some("--pass-socket is not supported on Windows (it has no LISTEN_FDS protocol); let COMMAND bind LLMLB_PORT itself".to_owned());
    }
    if let Some(socket) = &options.activated {
        if socket.port() != options.port {
            return Some(format!(
                "port {} disagrees with the socket passed by socket activation (LISTEN_FDS), which listens on port {}: make them agree",
                options.port,
                socket.port()
            ));
        }
    }
    http_during_replace(&options.ready, options.replace, proxy, options.port)
}

/// Why `--ready http` cannot judge a replace, if it cannot: in exec mode a
/// replace passes the port's socket to the new command while the old one
/// still accepts on it (until the new one is ready, by design), so the
/// kernel hands a probe's connection to either, and a 200 from the old
/// command would make the new one "ready" and drain the server that works.
/// Waiting for the old one to stop accepting first is no way out: it stops
/// only once the new one is ready. `proxy` (a command serving on a private
/// port of its own, probed there) has no such doubt. On Windows a replace
/// stops the old server first (no socket is passed): nothing to refuse.
fn http_during_replace(ready: &ReadySpec, replace: bool, proxy: bool, port: u16) -> Option<String> {
    if ready.policy() != ReadyPolicy::Http || !replace || proxy || cfg!(windows) {
        return None;
    }
    Some(format!(
        "--ready {ready} cannot judge a replace: both the old and the new COMMAND accept on the socket of port {port} \
         passed to them, so a probe of port {port} cannot tell which one answered; use --proxy (probes COMMAND's own port), or --ready notify or --ready listen"
    ))
}

/// Runs `llmlb serve` with `options` on this thread (blocking, in a tokio
/// runtime of its own) and returns how it ended, with the lock released,
/// the pidfile removed (unless a successor's), and the sockets closed.
///
/// Prints what `llmlb serve` prints: `Error: …` lines on stderr (a usage
/// problem, see [`usage_problem`], exits [`EXIT_USAGE`] before anything is
/// taken), and its log lines through `tracing` (see [`init_logging`]).
///
/// Installs `serve`'s signal handlers for the process (SIGINT, SIGTERM,
/// SIGHUP, SIGUSR1, SIGUSR2, SIGQUIT, SIGWINCH; Windows: Ctrl-C and
/// Ctrl-Break), which stay installed after it returns (tokio's). In exec
/// mode the command's parent-death signal is tied to the calling thread:
/// call it from the thread that lives as long as the server.
pub fn serve(options: ServeOptions) -> Exit {
    if let Some(problem) = usage_problem(&options) {
        eprintln!("Error: {problem}");
        return Exit::code_only(EXIT_USAGE);
    }
    let ServeOptions {
        lock_dir,
        lock_dir_hint,
        port,
        host,
        mode,
        ready,
        ready_timeout,
        wait,
        pidfile,
        pass_socket,
        activated,
        replace,
        replace_timeout,
        replace_grace,
        drain_timeout,
    } = options;
    let dir = Where {
        path: lock_dir,
        hint: lock_dir_hint,
    };
    let proxy = matches!(mode, Mode::Proxy { .. });
    let plan = Plan {
        port,
        wait,
        host: report::bare_host(host),
        // A handover needs the socket in llmlb's hands (not on Windows,
        // where --replace always takes its fallback). Proxy mode accepts on
        // its own socket, whatever the platform.
        listen: Listen {
            activated,
            pass_socket: pass_socket || proxy || (replace && cfg!(unix)),
        },
        mode,
        ready,
        pidfile,
        replace: replace.then_some(replace_timeout),
        ready_timeout: match ready_timeout {
            Some(Duration::ZERO) => None,
            Some(timeout) => Some(timeout),
            None if replace => Some(REPLACE_READY_TIMEOUT),
            None => None,
        },
        grace: replace_grace,
        drains: Drains::new(drain_timeout, proxy),
    };
    // Read before anything else: how a successor is started (`reload`).
    let relaunch = manager::read_relaunch(port);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return Exit::code_only(fail(format!("cannot start the async runtime: {e}"))),
    };
    // block_on polls this future on the calling thread, which matters in
    // exec mode: the child's parent-death signal is tied to the spawning
    // thread.
    let exit = runtime.block_on(life(&dir, plan, relaunch.as_ref()));
    // Connection tasks cut off at the drain deadline must not delay the exit.
    runtime.shutdown_timeout(Duration::from_millis(100));
    exit
}

/// [`ServeOptions`], settled.
struct Plan {
    port: u16,
    wait: Duration,
    host: String,
    mode: Mode,
    ready: ReadySpec,
    listen: Listen,
    pidfile: Option<PathBuf>,
    /// `--replace` with its `--replace-timeout`.
    replace: Option<Duration>,
    /// `--ready-timeout`, settled: `None` waits for ever.
    ready_timeout: Option<Duration>,
    /// `--replace-grace`.
    grace: Duration,
    /// `--drain-timeout`, settled.
    drains: Drains,
}

/// An exit with a code only.
fn code(code: i32) -> Exit {
    Exit::code_only(code)
}

/// The server's life from the signal handlers to the release.
async fn life(dir: &Where, plan: Plan, relaunch: Option<&Relaunch>) -> Exit {
    let Plan {
        port,
        wait,
        host,
        mode,
        ready,
        listen,
        pidfile,
        replace,
        ready_timeout,
        grace,
        drains,
    } = plan;
    let mut signals = match Signals::install() {
        Ok(s) => s,
        Err(e) => return code(fail(format!("cannot install signal handlers: {e}"))),
    };
    let taken = match replace {
        Some(timeout) => take_over(dir, port, wait, timeout, &mut signals).await,
        None => take_lock(dir, port, wait, &mut signals)
            .await
            .map(|guard| (guard, None)),
    };
    let (guard, taken) = match taken {
        Ok(taken) => taken,
        Err(c) => return code(c),
    };
    tell_status(&format!("port {port} locked; starting"));
    // After the lock (the PID in it is the holder's). A server taking its
    // port over only checks it here, and writes it when its predecessor
    // drains. A failure returns, releasing the lock, or giving a port taken
    // over back untouched.
    let predecessor = taken.as_ref().map(|t| t.predecessor.pid());
    let pidfile = match PortPidfile::start(pidfile, predecessor) {
        Ok(pidfile) => pidfile,
        Err(e) => {
            if taken.is_some() {
                guard.abandon();
            }
            return code(fail(e));
        }
    };
    // Windows has no SIGTERM: `llmlb stop` sets the lock's stop channel.
    #[cfg(windows)]
    if let Err(e) = signals.watch(guard.stop_request()) {
        return code(fail(format!(
            "cannot watch the stop channel for port {port}: {e}"
        )));
    }
    // A reload's successor inherits WATCHDOG_PID=<predecessor>: the
    // manager's watchdog is ours to feed from now on (the predecessor beats
    // until it names us its main process).
    if let Some(pid) = predecessor {
        supervisor().adopt_watchdog(pid);
    }
    let lock = SharedLock::new(guard);
    // Dropping `lock` on any early return releases it.
    let (mut lost, watchdog) = match spawn_watchdog(&lock, port) {
        Ok(started) => started,
        Err(e) => return code(fail(format!("cannot start the lock watchdog thread: {e}"))),
    };
    let proxy = match &mode {
        Mode::Proxy {
            backend_port,
            max_connections,
            ..
        } => Some(command::ProxyPlan {
            backend_port: *backend_port,
            max_connections: *max_connections,
        }),
        _ => None,
    };
    let exit = match mode {
        Mode::Http => code(
            serve_http(
                &lock,
                signals,
                &mut lost,
                (&host, port),
                listen.activated,
                taken,
                &pidfile,
                relaunch,
                (grace, drains),
            )
            .await,
        ),
        Mode::Exec(command) | Mode::Proxy { command, .. } if command.is_empty() => {
            code(fail("exec mode needs a command after `--`"))
        }
        Mode::Exec(command) | Mode::Proxy { command, .. } => {
            let what = Command {
                command,
                ready,
                ready_timeout,
                grace,
                drains,
                proxy,
            };
            let at = (host.as_str(), port);
            run_command(
                &lock, signals, &mut lost, at, listen, taken, &pidfile, relaunch, what,
            )
            .await
        }
    };
    tell_stopping(&format!("stopping; releasing port {port}"));
    settle_handover(&lock, port, drains.stopped).await;
    // Before the release: once `llmlb stop` sees the port free, a pidfile
    // reader must not find our PID there any more (a pidfile that names a
    // successor now is left to it). Under the guard's mutex: a handover
    // cannot begin between the look and the removal.
    if lock
        .with(|g| pidfile.remove_unless_handed_on(g.is_handed_on()))
        .is_none()
    {
        pidfile.remove();
    }
    manager::release(&lock);
    // The release woke the watchdog; it ends without another check.
    let _ = watchdog.join();
    exit
}

/// HTTP mode, where the crate has it.
#[cfg(feature = "http")]
use http::serve_http;

/// HTTP mode without the `http` feature (the C library): refused.
#[cfg(not(feature = "http"))]
#[allow(clippy::too_many_arguments)]
async fn serve_http(
    _: &SharedLock<PortGuard>,
    _: Signals,
    _: &mut manager::LockLost,
    _: (&str, u16),
    _: Option<Activated>,
    _: Option<take::TakenOver>,
    _: &std::sync::Arc<PortPidfile>,
    _: Option<&Relaunch>,
    _: (Duration, Drains),
) -> i32 {
    fail("this build has no built-in HTTP server (the `http` feature): give a command to run")
}

/// Exec and proxy mode's command, settled.
struct Command {
    command: Vec<OsString>,
    ready: ReadySpec,
    ready_timeout: Option<Duration>,
    grace: Duration,
    drains: Drains,
    proxy: Option<command::ProxyPlan>,
}

/// Exec and proxy mode: the socket the command is handed (or the proxy
/// accepts on), the handovers, then the command's life.
#[allow(clippy::too_many_arguments)]
async fn run_command(
    lock: &SharedLock<PortGuard>,
    signals: Signals,
    lost: &mut manager::LockLost,
    (host, port): (&str, u16),
    listen: Listen,
    taken: Option<take::TakenOver>,
    pidfile: &std::sync::Arc<PortPidfile>,
    relaunch: Option<&Relaunch>,
    what: Command,
) -> Exit {
    // The socket (if any) stays open in llmlb until the command's tree is
    // gone, and is closed before the release.
    let (socket, predecessor) = match taken {
        Some(taken) => (
            taken
                .sockets
                .into_iter()
                .next()
                .map(|s| PassSocket::new(s.listener, s.name)),
            Some(taken.predecessor),
        ),
        None => match socket_for_command(listen, host, port) {
            Ok(socket) => (socket, None),
            Err(c) => return code(c),
        },
    };
    let offered: Vec<(&std::net::TcpListener, &str)> =
        socket.iter().map(|s| (s.listener(), s.name())).collect();
    let (handovers, drain) = handovers(lock, port, &offered, predecessor, pidfile, relaunch);
    let plan = command::ExecPlan {
        command: &what.command,
        ready: what.ready,
        socket: socket.as_ref(),
        handovers: &handovers,
        drain,
        ready_timeout: what.ready_timeout,
        grace: what.grace,
        drains: what.drains,
        proxy: what.proxy,
    };
    let exit = command::run(lock, signals, lost, host, port, plan).await;
    handovers.withdraw();
    exit
}

/// A server that stops while a successor holds its lock on probation (the
/// successor is not ready yet, or within its grace window) waits, up to
/// `bound`, for the successor to decide: take the port (this server's
/// pidfile and record are then the successor's) or give it back (they are
/// this server's to remove). Deciding at once would leave a pidfile naming
/// a process that exited cleanly, or remove one a successor is writing.
async fn settle_handover(lock: &SharedLock<PortGuard>, port: u16, bound: Duration) {
    let deadline = tokio::time::Instant::now() + bound;
    let mut said = false;
    while lock.with(|g| g.is_handed_on()) == Some(true) {
        if tokio::time::Instant::now() >= deadline {
            tracing::warn!(
                "the successor taking port {port} over did not take it nor give it back within {}s; leaving the record and pidfile to it",
                bound.as_secs_f64()
            );
            return;
        }
        if !said {
            tracing::info!(
                "waiting for the successor taking port {port} over to take it or give it back"
            );
            said = true;
        }
        tokio::time::sleep(HANDOVER_SETTLE_POLL).await;
    }
}

/// How often [`settle_handover`] looks.
const HANDOVER_SETTLE_POLL: Duration = Duration::from_millis(10);

/// What `serve` listens on, settled before the runtime starts.
struct Listen {
    /// A socket received by socket activation: served on in HTTP mode,
    /// passed to the command in exec mode (whatever `pass_socket` says).
    activated: Option<Activated>,
    /// `--pass-socket`: exec mode binds a socket itself and passes it.
    pass_socket: bool,
}

/// The socket exec mode hands to its command, if any: the activated one
/// (under its name, else [`DEFAULT_NAME`]), or with `--pass-socket` one bound
/// here, under the lock just taken (std sets `SO_REUSEADDR`, as for the
/// HTTP server). `Err(exit code)` if binding fails.
fn socket_for_command(listen: Listen, host: &str, port: u16) -> Result<Option<PassSocket>, i32> {
    if let Some(socket) = listen.activated {
        let name = socket.name().unwrap_or(DEFAULT_NAME).to_owned();
        return Ok(Some(PassSocket::new(socket.into_listener(), name)));
    }
    if !listen.pass_socket {
        // The command binds the port itself: if that bind cannot succeed
        // it would only die with its own traceback, so say who is in the
        // way instead of starting it. A bind of the address the command is
        // given (`LLMLB_HOST`) asks the kernel its own rules: a listener on
        // another address of the same port is no conflict. Any other bind
        // error is the command's to meet and report.
        if let Err(e) = std::net::TcpListener::bind((host, port)) {
            if e.kind() == io::ErrorKind::AddrInUse {
                return Err(fail(format!(
                    "{}; the command was not started",
                    in_use(port, who_listens(port))
                )));
            }
        }
        return Ok(None);
    }
    match std::net::TcpListener::bind((host, port)) {
        Ok(listener) => Ok(Some(PassSocket::new(listener, DEFAULT_NAME))),
        Err(e) => Err(bind_failed(&e, host, port)),
    }
}
