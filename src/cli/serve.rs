//! `llmlb serve`: take the lock, then serve HTTP (or run a command, see
//! `exec.rs`) until SIGINT/SIGTERM (on Windows Ctrl-C or `llmlb stop`'s stop
//! channel), then release.

use std::ffi::OsString;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use llmlb::lock::{
    acquire_or_reclaim, async_impl, hint::how_to_stop, IdentityCheck, LockDir, LockError, LockInfo,
    PortGuard, ServeState,
};
use llmlb::supervise::activation::Activated;
use llmlb::supervise::notify::Supervisor;
use llmlb::supervise::ready::ReadySpec;
use llmlb::supervise::reload::Relaunch;
use llmlb::supervise::socket_pass::{PassSocket, DEFAULT_NAME};
use llmlb::supervise::{SharedLock, WatchEnd, WatchEvent};

use super::listening::who_listens;
use super::replace::{handovers, Commit, Handovers, PortPidfile, TakenOver};
use super::signals::{self, Signals};
use super::{exec, fail, LockDirChoice};

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

/// How often a running server checks that its lock file is still its own
/// (someone may `rm` it by hand): cheap (one lstat), and short enough that a
/// second server never runs alongside for more than a moment.
const WATCH_INTERVAL: Duration = Duration::from_millis(500);

/// Our own service manager (`NOTIFY_SOCKET`), read once: the environment
/// belongs to the process, and so does the manager it names.
pub(crate) fn supervisor() -> &'static Supervisor {
    static SUPERVISOR: OnceLock<Supervisor> = OnceLock::new();
    SUPERVISOR.get_or_init(Supervisor::from_env)
}

/// How this server was started, for its successor (`llmlb reload`): read
/// once at start.
static RELAUNCH: OnceLock<Relaunch> = OnceLock::new();

/// How this server was started, if it could be read.
pub(crate) fn relaunch() -> Option<&'static Relaunch> {
    RELAUNCH.get()
}

/// Tells our service manager (if any) what serve is doing: one `STATUS=`
/// line. A manager that cannot be reached costs a warning, never the server.
pub(crate) fn tell_status(line: &str) {
    if let Err(e) = supervisor().status(line) {
        tracing::warn!("cannot send the status to the service manager (NOTIFY_SOCKET): {e}");
    }
}

/// Tells our service manager (if any) that serve is stopping and why:
/// `STOPPING=1` with a `STATUS=` line, once (the first reason wins).
pub(crate) fn tell_stopping(line: &str) {
    if let Err(e) = supervisor().stopping(line) {
        tracing::warn!(
            "cannot tell the service manager (NOTIFY_SOCKET) that serve is stopping: {e}"
        );
    }
}

/// Tells our service manager (if any) that `successor` took the port over
/// and serves: `MAINPID=<successor>` with `READY=1` and a `STATUS=` line in
/// one datagram, so the unit follows it as its main process, and nothing
/// from us after it (no `STOPPING=1`, no more heartbeats): see
/// [`Supervisor::handed_over`].
pub(crate) fn tell_handed_over(port: u16, successor: u32) {
    let line = format!(
        "serving on port {port} as PID {successor} (took over from PID {}, which is draining)",
        std::process::id()
    );
    if let Err(e) = supervisor().handed_over(successor, &line) {
        tracing::warn!(
            "cannot tell the service manager (NOTIFY_SOCKET) that PID {successor} took port {port} over: {e}"
        );
    }
}

/// The watchdog's verdict that the port was lost, for the main task's `select!`.
pub(crate) struct LockLost(Option<tokio::sync::oneshot::Receiver<String>>);

impl LockLost {
    /// Resolves only if the port was lost (with the message to print); never
    /// if the watchdog ended because the lock was released. Cancel-safe.
    pub(crate) async fn recv(&mut self) -> String {
        if let Some(rx) = &mut self.0 {
            let verdict = rx.await;
            self.0 = None; // a completed receiver must not be polled again
            if let Ok(why) = verdict {
                return why;
            }
        }
        std::future::pending().await
    }
}

/// Starts the watchdog thread (see [`llmlb::supervise::Watchdog`]): it re-creates a
/// lock file removed or replaced by hand, and reports through [`LockLost`] if
/// another process took the port meanwhile. It ends when the lock is released.
///
/// Under a service manager's watchdog (`WATCHDOG_USEC`), each check that finds
/// the lock ours sends `WATCHDOG=1`, and the checks run at least at half that
/// interval: the heartbeat means "still the port's holder", so it stops with
/// the first check that finds the port lost.
fn spawn_watchdog(
    lock: &SharedLock<PortGuard>,
    port: u16,
) -> io::Result<(LockLost, std::thread::JoinHandle<()>)> {
    let (lost_tx, lost_rx) = tokio::sync::oneshot::channel();
    let watchdog = lock.watchdog();
    let interval = supervisor()
        .heartbeat_interval()
        .map_or(WATCH_INTERVAL, |beat| beat.min(WATCH_INTERVAL));
    let thread = std::thread::Builder::new()
        .name("llmlb-watchdog".to_owned())
        .spawn(move || {
            let mut beat_failed = false;
            let beat = || {
                // Warned once: a dead manager socket would repeat it every beat.
                if let Err(e) = supervisor().heartbeat() {
                    if !std::mem::replace(&mut beat_failed, true) {
                        tracing::warn!("cannot send the watchdog heartbeat to the service manager (NOTIFY_SOCKET): {e}");
                    }
                }
            };
            let end = watchdog.run_with_heartbeat(interval, |event| match event {
                WatchEvent::Restored => tracing::warn!(
                    "the lock file for port {port} was removed, replaced or overwritten by hand; restored it"
                ),
                WatchEvent::CannotCheck(e) => {
                    tracing::warn!("cannot check the lock file for port {port}: {e}")
                }
                WatchEvent::CannotRefresh(e) => tracing::warn!(
                    "cannot keep the lock files for port {port} fresh for tmp cleaners: {e}"
                ),
            }, beat);
            let why = match end {
                WatchEnd::Lost(holder) => {
                    let who = holder.map_or_else(
                        || "another process".to_owned(),
                        |h| format!("PID {}", h.pid),
                    );
                    format!(
                        "the lock file for port {port} was removed by hand and {who} has taken the port's lock since; shutting down"
                    )
                }
                WatchEnd::Detached => format!(
                    "the lock file for port {port} was removed or replaced by hand while the command's processes share the lock: a new file would not cover them, so the port counts as lost; ending the command and shutting down"
                ),
                _ => return,
            };
            tell_stopping(&format!("port {port} was lost to another process; stopping"));
            let _ = lost_tx.send(why);
        })?;
    Ok((LockLost(Some(lost_rx)), thread))
}

/// What `serve` was asked to do, settled (and checked) before the runtime
/// starts.
pub(crate) struct ServePlan {
    pub(crate) port: u16,
    /// `--wait`: how long to wait for a held port.
    pub(crate) wait: Duration,
    pub(crate) host: String,
    /// Exec mode's command; empty for the built-in HTTP server.
    pub(crate) command: Vec<OsString>,
    pub(crate) ready: ReadySpec,
    pub(crate) listen: Listen,
    pub(crate) pidfile: Option<PathBuf>,
    /// `--replace` with its `--replace-timeout`.
    pub(crate) replace: Option<Duration>,
    /// `--ready-timeout` (exec mode), settled: `None` waits for ever.
    pub(crate) ready_timeout: Option<Duration>,
    /// `--replace-grace`: how long a successor stays ready before its
    /// predecessor is told to drain.
    pub(crate) grace: Duration,
    /// `--drain-timeout`, settled.
    pub(crate) drains: Drains,
    /// `--proxy` (exec mode).
    pub(crate) proxy: Option<exec::ProxyPlan>,
}

/// Runs `serve`; returns the exit code with the lock released.
pub(crate) fn run(dir: &LockDirChoice, plan: ServePlan) -> i32 {
    let ServePlan {
        port,
        wait,
        host,
        command,
        ready,
        listen,
        pidfile,
        replace,
        ready_timeout,
        grace,
        drains,
        proxy,
    } = plan;
    // Read before anything else: how a successor is started (`reload`).
    match Relaunch::from_process(port) {
        Ok(relaunch) => {
            let _ = RELAUNCH.set(relaunch);
        }
        Err(e) => tracing::warn!(
            "cannot read the working directory ({e}); this server cannot reload (llmlb reload, SIGUSR2)"
        ),
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return fail(format!("cannot start the async runtime: {e}")),
    };
    // block_on polls this future on the main thread, which matters in exec
    // mode: the child's parent-death signal is tied to the spawning thread.
    let code = runtime.block_on(async move {
        let mut signals = match Signals::install() {
            Ok(s) => s,
            Err(e) => return fail(format!("cannot install signal handlers: {e}")),
        };
        let taken = match replace {
            Some(timeout) => {
                super::replace::take_over(dir, port, wait, timeout, &mut signals).await
            }
            None => take_lock(dir, port, wait, &mut signals)
                .await
                .map(|guard| (guard, None)),
        };
        let (guard, taken) = match taken {
            Ok(taken) => taken,
            Err(code) => return code,
        };
        tell_status(&format!("port {port} locked; starting"));
        // After the lock (the PID in it is the holder's). A server taking
        // its port over only checks it here, and writes it when its
        // predecessor drains. A failure returns, releasing the lock, or
        // giving a port taken over back untouched.
        let predecessor = taken.as_ref().map(|t| t.predecessor.pid());
        let pidfile = match PortPidfile::start(pidfile, predecessor) {
            Ok(pidfile) => pidfile,
            Err(e) => {
                if taken.is_some() {
                    guard.abandon();
                }
                return fail(e);
            }
        };
        // Windows has no SIGTERM: `llmlb stop` sets the lock's stop channel.
        #[cfg(windows)]
        if let Err(e) = signals.watch(guard.stop_request()) {
            return fail(format!(
                "cannot watch the stop channel for port {port}: {e}"
            ));
        }
        // A reload's successor inherits WATCHDOG_PID=<predecessor>: the
        // manager's watchdog is ours to feed from now on (the predecessor
        // beats until it names us its main process).
        if let Some(pid) = predecessor {
            supervisor().adopt_watchdog(pid);
        }
        let lock = SharedLock::new(guard);
        // Dropping `lock` on any early return releases it.
        let (mut lost, watchdog) = match spawn_watchdog(&lock, port) {
            Ok(started) => started,
            Err(e) => return fail(format!("cannot start the lock watchdog thread: {e}")),
        };
        let code = if command.is_empty() {
            serve_http(
                &lock,
                signals,
                &mut lost,
                (&host, port),
                listen.activated,
                taken,
                &pidfile,
                (grace, drains),
            )
            .await
        } else {
            // The socket (if any) stays open in llmlb until the command's
            // tree is gone, and is closed before the release.
            let (socket, predecessor) = match taken {
                Some(taken) => (
                    taken
                        .sockets
                        .into_iter()
                        .next()
                        .map(|s| PassSocket::new(s.listener, s.name)),
                    Some(taken.predecessor),
                ),
                None => match socket_for_command(listen, &host, port) {
                    Ok(socket) => (socket, None),
                    Err(code) => return code,
                },
            };
            let offered: Vec<(&std::net::TcpListener, &str)> =
                socket.iter().map(|s| (s.listener(), s.name())).collect();
            let (handovers, drain) = handovers(&lock, port, &offered, predecessor, &pidfile);
            let plan = exec::ExecPlan {
                command: &command,
                ready,
                socket: socket.as_ref(),
                handovers: &handovers,
                drain,
                ready_timeout,
                grace,
                drains,
                proxy,
            };
            let code = exec::run(&lock, signals, &mut lost, &host, port, plan).await;
            handovers.withdraw();
            code
        };
        tell_stopping(&format!("stopping; releasing port {port}"));
        settle_handover(&lock, port, drains.stopped).await;
        // Before the release: once `llmlb stop` sees the port free, a
        // pidfile reader must not find our PID there any more (a pidfile
        // that names a successor now is left to it). Under the guard's
        // mutex: a handover cannot begin between the look and the removal.
        if lock
            .with(|g| pidfile.remove_unless_handed_on(g.is_handed_on()))
            .is_none()
        {
            pidfile.remove();
        }
        release(&lock);
        // The release woke the watchdog; it ends without another check.
        let _ = watchdog.join();
        code
    });
    // Connection tasks cut off at the drain deadline must not delay the exit.
    runtime.shutdown_timeout(Duration::from_millis(100));
    code
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
pub(crate) struct Listen {
    /// A socket received by socket activation: served on in HTTP mode,
    /// passed to the command in exec mode (whatever `pass_socket` says).
    pub(crate) activated: Option<Activated>,
    /// `--pass-socket`: exec mode binds a socket itself and passes it.
    pub(crate) pass_socket: bool,
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

/// The one line for a failed bind, and the exit code: a port in use names
/// who listens on it, where that can be seen.
fn bind_failed(e: &io::Error, host: &str, port: u16) -> i32 {
    if e.kind() == io::ErrorKind::AddrInUse {
        fail(in_use(port, who_listens(port)))
    } else {
        fail(format!(
            "cannot listen on {}: {e} (check --host / LLMLB_HOST)",
            host_port(host, port)
        ))
    }
}

/// `port P is already in use by another program[: PID N (name)]`, naming
/// `who` listens there if it is known.
fn in_use(port: u16, who: Option<String>) -> String {
    match who {
        Some(who) => format!("port {port} is already in use by another program: {who}"),
        None => format!("port {port} is already in use by another program"),
    }
}

/// Creates the dir and takes the port, waiting up to `wait` if it is held
/// (saying once who holds it; SIGINT/SIGTERM while waiting exits 128 + the
/// signal's number, having taken nothing), and printing the contract's
/// message if it is still held. `Err(exit code)` on failure.
pub(crate) async fn take_lock(
    dir: &LockDirChoice,
    port: u16,
    wait: Duration,
    signals: &mut Signals,
) -> Result<PortGuard, i32> {
    // Recorded as starting from the first write: a `wait --for ready` never
    // takes the instant between the lock and the listener for ready.
    let locks = LockDir::create(&dir.path)
        .map_err(fail)?
        .announcing(ServeState::Starting);
    let first = match acquire_or_reclaim(&locks, port) {
        Ok(guard) => return Ok(guard),
        Err(e) => e,
    };
    let result = match first {
        LockError::AlreadyRunning { .. } | LockError::Busy { .. } if !wait.is_zero() => {
            let holder = match &first {
                LockError::AlreadyRunning { holder, .. } => holder.as_deref(),
                _ => None,
            };
            eprintln!("{}", waiting_line(port, holder, wait));
            tell_status(&waiting_status(port, holder));
            // Dropping the wait (on a signal) leaves nothing held or created.
            tokio::select! {
                result = async_impl::acquire_timeout(&locks, port, wait) => result,
                sig = signals.recv() => {
                    eprintln!(
                        "Interrupted ({}) while waiting for port {port}; nothing was taken",
                        signals::name(sig)
                    );
                    return Err(signals::exit_code(sig));
                }
            }
        }
        e => Err(e),
    };
    match result {
        Ok(guard) => Ok(guard),
        Err(LockError::AlreadyRunning { port, holder, .. }) => {
            eprintln!(
                "{}",
                already_running(
                    port,
                    holder.as_deref(),
                    &locks.lock_path(port),
                    &dir.hint_suffix()
                )
            );
            Err(super::EXIT_FAILURE)
        }
        Err(e) => Err(fail(e)),
    }
}

/// The one line `serve --wait` prints when it starts waiting.
fn waiting_line(port: u16, holder: Option<&LockInfo>, wait: Duration) -> String {
    let who = match holder {
        Some(info) => format!(
            "held by PID {} (started: {})",
            info.pid,
            info.started_at_display()
        ),
        None => "held (holder details unreadable)".to_owned(),
    };
    let how_long = if wait >= FOREVER {
        "until it is released".to_owned()
    } else {
        format!("up to {}s for it to be released", wait.as_secs_f64())
    };
    format!("Port {port} is {who}; waiting {how_long} (Ctrl-C to give up)")
}

/// The status line for a service manager while `serve --wait` waits.
fn waiting_status(port: u16, holder: Option<&LockInfo>) -> String {
    match holder {
        Some(info) => format!("waiting for port {port}, held by PID {}", info.pid),
        None => format!("waiting for port {port}, held by another process"),
    }
}

/// Waits this long or longer are shown as "until it is released".
const FOREVER: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

fn already_running(port: u16, holder: Option<&LockInfo>, path: &Path, suffix: &str) -> String {
    let Some(info) = holder else {
        return format!(
            "Error: Server already running on port {port} (holder details unreadable)\n\
             \n\
             To stop: llmlb stop --port {port}{suffix}"
        );
    };
    let pid = info.pid;
    let head = format!(
        "Error: Server already running on port {port} (PID: {pid}, started: {started})\n\n",
        started = info.started_at_display(),
    );
    // The kill line only where `stop` itself would signal: the same process
    // on this host, verified.
    match info.check_identity() {
        IdentityCheck::Same => format!(
            "{head}To stop: llmlb stop --port {port}{suffix}\n\
             Or:      {}",
            kill_command(pid)
        ),
        _ => {
            let advice = how_to_stop(port, Some(info), path, suffix);
            let mut advice = advice.chars();
            let first = advice.next().map(|c| c.to_ascii_uppercase());
            format!(
                "{head}{}{}",
                first.into_iter().collect::<String>(),
                advice.as_str()
            )
        }
    }
}

/// `host:port` as a URL or `ss` shows it: an IPv6 address in brackets
/// (`[::1]:8080`), so the port cannot be read as part of the address.
pub(crate) fn host_port(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// `--host` as the socket API takes it: `[::1]` (the URL form of an IPv6
/// address, which users copy from URLs) without its brackets.
pub(crate) fn bare_host(host: String) -> String {
    match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        Some(inner) if inner.contains(':') => inner.to_owned(),
        _ => host,
    }
}

/// The platform's own command that stops `pid`. Windows has no SIGTERM, and
/// `taskkill` without `/F` only asks a window to close, which a console
/// server does not have: `/F` terminates it (the next start reclaims the
/// lock it leaves).
fn kill_command(pid: u32) -> String {
    if cfg!(windows) {
        format!("taskkill /F /PID {pid}")
    } else {
        format!("kill -TERM {pid}")
    }
}

/// Records that this server is now `state` in its lock record; a failed
/// write leaves the old state there (readers then see a stale word, never a
/// wrong holder), so it is a warning. Then tells our service manager, if
/// any: `MAINPID=` and `READY=1` for ready, `STOPPING=1` for stopping; the
/// one path by which both modes report, so they cannot differ.
pub(crate) fn announce(lock: &SharedLock<PortGuard>, state: ServeState) {
    let Some((written, port)) = lock.with(|g| (g.set_state(state), g.port())) else {
        return; // released: nothing of ours to announce
    };
    if let Err(e) = written {
        tracing::warn!("cannot record the serving state {state} in the lock file: {e}");
    }
    match state {
        ServeState::Ready => {
            if let Err(e) = supervisor().ready() {
                tracing::warn!(
                    "cannot tell the service manager (NOTIFY_SOCKET) that serve is ready: {e}"
                );
            }
        }
        ServeState::Stopping => tell_stopping(&format!("stopping; releasing port {port}")),
        _ => {}
    }
}

/// Releases once (removing the file); a failure leaves a stale file, which the
/// next start reclaims, so it is a warning, not an error.
pub(crate) fn release(lock: &SharedLock<PortGuard>) {
    if let Some(Err(e)) = lock.release() {
        tracing::warn!("releasing the lock failed (the next start reclaims it): {e}");
    }
}

/// What `/health` reports about this server.
struct Health {
    pid: u32,
    port: u16,
    started_at: DateTime<Utc>,
    started_at_text: String,
    host: Option<String>,
}

async fn health(State(h): State<Arc<Health>>) -> Json<serde_json::Value> {
    let uptime = (Utc::now() - h.started_at).num_seconds().max(0);
    Json(serde_json::json!({
        "status": "ok",
        "pid": h.pid,
        "port": h.port,
        "started_at": h.started_at_text,
        "uptime_secs": uptime,
        "host": h.host,
        "version": env!("CARGO_PKG_VERSION"),
    }))
}

#[allow(clippy::too_many_arguments)]
async fn serve_http(
    lock: &SharedLock<PortGuard>,
    mut signals: Signals,
    lost: &mut LockLost,
    (host, port): (&str, u16),
    activated: Option<Activated>,
    taken: Option<TakenOver>,
    pidfile: &Arc<PortPidfile>,
    times: (Duration, Drains),
) -> i32 {
    let (bound, predecessor) = match taken {
        Some(taken) => match taken.sockets.into_iter().next() {
            Some(socket) => (Ok((socket.listener, socket.name)), Some(taken.predecessor)),
            None => {
                // Nothing to serve on: give the port back at once.
                let (handovers, _) = handovers(lock, port, &[], Some(taken.predecessor), pidfile);
                handovers.abort();
                return fail(format!(
                    "the server that held port {port} handed over no listening socket; it keeps serving"
                ));
            }
        },
        None => (
            match activated {
                Some(socket) => {
                    let name = socket.name().unwrap_or(DEFAULT_NAME).to_owned();
                    Ok((socket.into_listener(), name))
                }
                None => std::net::TcpListener::bind((host, port))
                    .map(|l| (l, DEFAULT_NAME.to_owned()))
                    .map_err(|e| bind_failed(&e, host, port)),
            },
            None,
        ),
    };
    let (listener, name) = match bound {
        Ok(bound) => bound,
        Err(code) => return code,
    };
    let (handovers, mut drain) = handovers(
        lock,
        port,
        &[(&listener, name.as_str())],
        predecessor,
        pidfile,
    );
    signals.on_reload(&handovers);
    let code = serve_http_on(
        lock,
        &mut signals,
        lost,
        host,
        port,
        listener,
        &handovers,
        &mut drain,
        times,
    )
    .await;
    handovers.withdraw();
    code
}

#[allow(clippy::too_many_arguments)]
async fn serve_http_on(
    lock: &SharedLock<PortGuard>,
    signals: &mut Signals,
    lost: &mut LockLost,
    host: &str,
    port: u16,
    listener: std::net::TcpListener,
    handovers: &std::sync::Arc<Handovers>,
    drain: &mut super::replace::DrainRequested,
    (grace, drains): (Duration, Drains),
) -> i32 {
    let listener = match listener
        .set_nonblocking(true)
        .and_then(|()| tokio::net::TcpListener::from_std(listener))
    {
        Ok(l) => l,
        Err(e) => {
            handovers.abort();
            return fail(format!("cannot serve on the socket of port {port}: {e}"));
        }
    };
    let address = listener
        .local_addr()
        .map_or_else(|_| host_port(host, port), |a| a.to_string());
    let Some(health_info) = lock.with(|g| {
        let info = g.info();
        Health {
            pid: info.pid,
            port,
            started_at: info.started_at,
            started_at_text: info.started_at_display(),
            host: info.host.clone(),
        }
    }) else {
        return fail("the lock was released before the server started");
    };
    let app = Router::new()
        .route("/health", get(health))
        .with_state(Arc::new(health_info));
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let mut server = tokio::spawn(super::http::serve(listener, app, stop_rx));
    // Bound and accepting (the kernel queues connections from the bind on).
    announce(lock, ServeState::Ready);
    // Only now may a predecessor stop accepting: this server accepts on the
    // same socket.
    handovers.ready(Commit {
        grace,
        ..Commit::default()
    });
    tell_status(&format!("serving on {address}"));
    tracing::info!("listening on http://{address} (PID {})", std::process::id());

    let (code, deadline) = tokio::select! {
        result = &mut server => {
            // The server ended on its own: only an accept-loop failure does that.
            return match result {
                Ok(Ok(())) => 0,
                Ok(Err(e)) => fail(format!("server on port {port} failed: {e}")),
                Err(e) => fail(format!("server on port {port} failed: {e}")),
            };
        }
        sig = signals.recv() => {
            if let Some(pid) = handovers.abort() {
                eprintln!(
                    "Interrupted ({}) while taking over port {port}; PID {pid} keeps serving it",
                    signals::name(sig)
                );
                server.abort();
                return signals::exit_code(sig);
            }
            tracing::info!(
                "received {}, shutting down (draining for up to {}s)",
                signals::name(sig),
                drains.stopped.as_secs_f64()
            );
            announce(lock, ServeState::Stopping);
            (0, drains.stopped)
        }
        // A successor serves on our socket now, and holds the record: stop
        // accepting, finish what was accepted, and exit.
        Ok(pid) = &mut *drain => {
            tracing::info!(
                "handed port {port} over to PID {pid}; finishing in-flight requests (up to {}s)",
                drains.handed_over.as_secs_f64()
            );
            tell_handed_over(port, pid);
            (0, drains.handed_over)
        }
        // The record is another holder's now: nothing of ours to write.
        why = lost.recv() => (fail(why), drains.stopped),
    };
    let _ = stop_tx.send(());
    let cut = tokio::select! {
        _ = &mut server => false,
        _ = tokio::time::sleep(deadline) => {
            tracing::warn!("in-flight requests did not finish within {}s (--drain-timeout); closing them", deadline.as_secs_f64());
            true
        }
        sig = signals.recv() => {
            tracing::warn!("received {} again; closing connections now", signals::name(sig));
            true
        }
    };
    if cut {
        // Wait for the cancelled task to be dropped (its listener with
        // it): the release that follows must find no copy of our listening
        // socket open, or the next server could not bind the port.
        server.abort();
        let _ = (&mut server).await;
    }
    code
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_addresses_are_bracketed_and_brackets_are_accepted() {
        assert_eq!(host_port("::1", 8080), "[::1]:8080");
        assert_eq!(host_port("fe80::1%eth0", 80), "[fe80::1%eth0]:80");
        assert_eq!(host_port("0.0.0.0", 8080), "0.0.0.0:8080");
        assert_eq!(host_port("localhost", 1), "localhost:1");
        assert_eq!(bare_host("[::1]".into()), "::1");
        assert_eq!(bare_host("::".into()), "::");
        assert_eq!(bare_host("127.0.0.1".into()), "127.0.0.1");
        assert_eq!(bare_host("[not-an-address]".into()), "[not-an-address]");
    }
}
