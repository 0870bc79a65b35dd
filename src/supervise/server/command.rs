//! Exec mode, `llmlb serve --port P -- CMD ARGS…` (and proxy mode, its
//! `--proxy` variant): run CMD under the held lock, forward SIGINT/SIGTERM (a stop) and SIGHUP/SIGUSR1/SIGQUIT/SIGWINCH
//! (the command's to interpret) to its process group, exit with its code, or
//! die of the stop signal it died of.
//!
//! The command's tree holds the lock with us (see [`crate::supervise::exec`]),
//! and whatever ends the command (its own exit, a signal, the port being
//! lost) ends its whole process group before the lock is released: the
//! signal, then `SIGKILL` after [`STOP_GRACE`], never an unbounded wait.

use std::ffi::OsString;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::lock::{PortGuard, ServeState};
use crate::supervise::exec::{self, configure_exec_child, CommandTree, ForwardSignal};
use crate::supervise::proxy::{self, backend, Front, ProxyOptions};
use crate::supervise::ready::{Readiness, ReadyEvent, ReadyPolicy, ReadySpec, ReadyWatch};
use crate::supervise::socket_pass::{pass_listener, PassSocket};
use crate::supervise::SharedLock;

use super::manager::{announce, tell_handed_over, tell_status, LockLost};
use super::report::fail;
use super::signals::{self, Received, Signals};
use super::take::{Commit, DrainRequested, Handovers};
use super::{Drains, Exit};

/// What holds the command's tree, for logs.
const TREE: &str = if cfg!(windows) {
    "job"
} else {
    "process group"
};
/// The last resort, for logs.
const KILLING: &str = if cfg!(windows) {
    "terminating its job"
} else {
    "sending SIGKILL to its process group"
};
/// The last resort done, for logs.
const KILLED: &str = if cfg!(windows) {
    "terminating it"
} else {
    "SIGKILL"
};

/// "process group N" (Unix) or "job" (Windows), for logs.
fn tree_name(tree: &CommandTree) -> String {
    match tree.pgid() {
        Some(pgid) => format!("process group {pgid}"),
        None => TREE.to_owned(),
    }
}

/// `env`/`nohup` convention: the command could not be found.
const EXIT_NOT_FOUND: i32 = 127;
/// `env`/`nohup` convention: the command was found but could not be run.
const EXIT_CANNOT_RUN: i32 = 126;

/// How long what is left of the command's group has after `SIGTERM`, once
/// the command itself has exited, before `SIGKILL`.
const STOP_GRACE: Duration = Duration::from_secs(3);
/// How long processes get to vanish after `SIGKILL` (only a process stuck in
/// uninterruptible I/O takes longer); then we stop waiting and say so.
const KILL_WAIT: Duration = Duration::from_secs(5);
/// How often the rest of the group is checked once the command has exited.
const GROUP_POLL: Duration = Duration::from_millis(20);
/// How often orphaned grandchildren we adopted (as subreaper) are reaped.
const REAP_INTERVAL: Duration = Duration::from_secs(1);
/// How often a command not ready yet is reported, with what it waits for.
const STARTING_REPORT: Duration = Duration::from_secs(10);

/// Ending the command's group: the signal sent, then `SIGKILL` at the
/// deadline, then giving up at the next.
#[derive(Default)]
struct Stopping {
    /// When the next escalation is due; `None` until stopping begins.
    deadline: Option<Instant>,
    /// How long the group had before `SIGKILL`, for the log.
    grace: Duration,
    killed: bool,
}

impl Stopping {
    /// Sends `sig` to the group and starts the clock: `SIGKILL` after
    /// `grace` (a second signal is forwarded too, but does not move the
    /// deadline).
    fn begin(&mut self, tree: Option<&CommandTree>, sig: ForwardSignal, grace: Duration) {
        if let Some(tree) = tree {
            // ESRCH: the group is gone already, which is the goal.
            if let Err(e) = tree.signal(sig) {
                tracing::debug!("cannot signal the command's {TREE}: {e}");
            }
        }
        if self.deadline.is_none() {
            self.grace = grace;
            self.deadline = Some(Instant::now() + grace);
        }
    }

    /// Resolves when the current deadline passes; never before stopping began.
    async fn due(&self) {
        match self.deadline {
            Some(deadline) => tokio::time::sleep_until(deadline).await,
            None => std::future::pending().await,
        }
    }

    /// The deadline passed: `SIGKILL` the group (true), or, if that was
    /// already done, give up waiting (false).
    fn escalate(&mut self, tree: Option<&CommandTree>, shown: &str) -> bool {
        if self.killed {
            return false;
        }
        tracing::warn!(
            "{shown} did not exit within {}s; {KILLING}",
            self.grace.as_secs_f64()
        );
        if let Some(tree) = tree {
            let _ = tree.signal(ForwardSignal::Kill);
        }
        self.killed = true;
        self.deadline = Some(Instant::now() + KILL_WAIT);
        true
    }
}

/// `serve --proxy`: llmlb accepts on the port and forwards to the command.
pub(crate) struct ProxyPlan {
    /// `--backend-port`: the private port wanted for the command.
    pub(crate) backend_port: Option<u16>,
    /// `--max-connections`.
    pub(crate) max_connections: usize,
}

/// Stops the proxy's accepting, if there is one (see [`Front::stop_accepting`]).
async fn stop_accepting(front: Option<&mut Front>) {
    if let Some(front) = front {
        front.stop_accepting().await;
    }
}

/// What exec mode runs, and how it is started.
pub(crate) struct ExecPlan<'a> {
    /// The command and its arguments.
    pub(crate) command: &'a [OsString],
    /// When the command counts as ready (`--ready`).
    pub(crate) ready: ReadySpec,
    /// The listening socket to hand it as descriptor 3, if any.
    pub(crate) socket: Option<&'a PassSocket>,
    /// The server's handovers (`serve --replace`, both ways).
    pub(crate) handovers: &'a Arc<Handovers>,
    /// Resolves when a successor has taken the port over.
    pub(crate) drain: DrainRequested,
    /// `--ready-timeout`: how long the command has to become ready before
    /// it is stopped; `None` waits for ever.
    pub(crate) ready_timeout: Option<Duration>,
    /// `--replace-grace`: how long the command stays ready before a
    /// predecessor is told to drain.
    pub(crate) grace: Duration,
    /// `--drain-timeout`: how long the command has after `SIGTERM` before
    /// `SIGKILL`.
    pub(crate) drains: Drains,
    /// `--proxy`: `socket` is llmlb's own to accept on, never the
    /// command's.
    pub(crate) proxy: Option<ProxyPlan>,
}

/// Runs the command to completion, then ends what is left of its process
/// group; the caller releases the lock afterwards.
pub(crate) async fn run(
    lock: &SharedLock<PortGuard>,
    signals: Signals,
    lock_lost: &mut LockLost,
    host: &str,
    port: u16,
    plan: ExecPlan<'_>,
) -> Exit {
    let mut die_of = None;
    let code = run_to_end(lock, signals, lock_lost, (host, port), plan, &mut die_of).await;
    Exit {
        code,
        signal: die_of,
    }
}

/// [`run`], setting `die_of` to the stop signal serve is to die of (the
/// command died of the one forwarded to it).
async fn run_to_end(
    lock: &SharedLock<PortGuard>,
    mut signals: Signals,
    lock_lost: &mut LockLost,
    (host, port): (&str, u16),
    plan: ExecPlan<'_>,
    die_of: &mut Option<ForwardSignal>,
) -> i32 {
    let ExecPlan {
        command,
        ready,
        socket,
        handovers,
        mut drain,
        ready_timeout,
        grace,
        drains,
        proxy: proxy_plan,
    } = plan;
    let Some((program, args)) = command.split_first() else {
        return fail("exec mode needs a command after `--`");
    };
    let shown = program.to_string_lossy().into_owned();
    // Orphaned grandchildren come to us, so we see them die (and reap them)
    // even where init does not.
    if let Err(e) = exec::become_subreaper() {
        tracing::warn!("cannot become the reaper of the command's orphans: {e}");
    }
    // Proxy mode: the command serves on a private port of its own, which
    // readiness probes (whoever else listens on the public one).
    let backend_port = match &proxy_plan {
        None => None,
        Some(plan) => match backend::pick_port(plan.backend_port) {
            Ok((picked, is_wanted)) => {
                if let (Some(wanted), false) = (plan.backend_port, is_wanted) {
                    tracing::info!("backend port {wanted} is in use (by the server being replaced?); {shown} gets {picked}");
                }
                match proxy::raise_nofile_limit() {
                    Ok(Some((old, new))) => tracing::debug!("raised the descriptor limit from {old} to {new} (a proxy holds several per connection)"),
                    Ok(None) => {}
                    Err(e) => tracing::debug!("cannot raise the descriptor limit: {e}"),
                }
                Some(picked)
            }
            Err(e) => {
                return fail(format!(
                    "cannot find a free port on 127.0.0.1 for {shown}: {e}"
                ))
            }
        },
    };
    // The proxy in front of the command (accepting once it is ready).
    let mut front = match (socket, &proxy_plan, backend_port) {
        (Some(socket), Some(plan), Some(b)) => {
            let options = ProxyOptions {
                max_connections: plan.max_connections,
            };
            match Front::new(socket.listener(), b, options) {
                Ok(front) => Some(front),
                Err(e) => return fail(format!("cannot set up the proxy of port {port}: {e}")),
            }
        }
        _ => None,
    };
    let (probe_host, probe_port) = match backend_port {
        Some(b) => ("127.0.0.1", b),
        None => (host, port),
    };
    let args = match backend_port {
        Some(b) => backend::substitute(args, b),
        None => args.to_vec(),
    };
    let mut cmd = std::process::Command::new(program);
    cmd.args(&args)
        .env("LLMLB_PORT", port.to_string())
        .env("LLMLB_HOST", host)
        // Our service manager's socket and watchdog are ours: llmlb is the
        // one that reports to it (READY=1 from `announce`, heartbeats from the
        // lock watchdog). Passed on unchanged, the command's own messages
        // would reach the manager as if from the main process.
        .env_remove("NOTIFY_SOCKET")
        .env_remove("WATCHDOG_USEC")
        .env_remove("WATCHDOG_PID");
    let setup = match lock.with(|g| configure_exec_child(&mut cmd, g)) {
        Some(Ok(setup)) => setup,
        Some(Err(e)) => {
            return fail(format!(
                "cannot pass the lock for port {port} to {shown}: {e}"
            ))
        }
        None => return fail("the lock was released before the command started"),
    };
    let lock_dir = lock.with(|g| g.path().parent().map(|d| d.to_path_buf()));
    let lock_dir = lock_dir.flatten().unwrap_or_default();
    let readiness = match Readiness::prepare(ready.clone(), &mut cmd, &lock_dir, port) {
        Ok(readiness) => readiness,
        Err(e) => return fail(format!("cannot prepare --ready {ready} for {shown}: {e}")),
    };
    if let Some(b) = backend_port {
        cmd.env("PORT", b.to_string())
            .env(backend::BACKEND_PORT_ENV, b.to_string());
        if let Some(Err(e)) = lock.with(|g| g.set_backend_port(Some(b))) {
            tracing::warn!("cannot record the backend port {b} (status will not show it): {e}");
        }
    }
    // The command's own socket (never in proxy mode: llmlb accepts there).
    let passed = socket.filter(|_| backend_port.is_none());
    // Last: it captures the command's environment as it is now.
    if let Some(Err(e)) = passed.map(|s| pass_listener(&mut cmd, s)) {
        return fail(format!(
            "cannot pass the socket of port {port} to {shown}: {e}"
        ));
    }
    // Spawned on the main thread (see serve::run): the parent-death signal
    // fires when the spawning thread exits.
    let spawned = tokio::process::Command::from(cmd).spawn();
    #[cfg_attr(
        windows,
        expect(
            clippy::drop_non_drop,
            reason = "no descriptor is passed on Windows: nothing to close"
        )
    )]
    drop(setup); // our spare copy of the lock descriptor
    let mut child = match spawned {
        Ok(child) => child,
        Err(e) => {
            fail(format!("cannot run {shown}: {e}"));
            return match e.kind() {
                io::ErrorKind::NotFound => EXIT_NOT_FOUND,
                _ => EXIT_CANNOT_RUN,
            };
        }
    };
    let child_pid = child.id().unwrap_or(0);
    let tree = match CommandTree::attach(child_pid) {
        Ok(tree) => Some(tree),
        // On Windows the child was terminated before it ran. Our own handle
        // from CreateProcess (all access) ends it too, should the attach
        // have been unable to open it: a suspended child never exits alone.
        Err(e) if cfg!(windows) => {
            let _ = child.start_kill();
            let _ = child.wait().await;
            return fail(format!("cannot run {shown} in a job object: {e}"));
        }
        Err(e) => {
            tracing::warn!("the command has no process group of its own: {e}");
            None
        }
    };
    let tree = tree.as_ref();
    if let Some(pgid) = tree.and_then(CommandTree::pgid) {
        if let Some(Err(e)) = lock.with(|g| g.set_child_pgid(Some(pgid))) {
            tracing::warn!("cannot record the command's process group (stop --force will only kill llmlb): {e}");
        }
    }
    tracing::info!("running {shown} (PID {child_pid}) under the lock for port {port}");
    // The policy's events come from the watch's thread; they end with it.
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::unbounded_channel();
    // A successor's readiness is watched on through the grace window: a
    // command that stops answering (or listening) there gives the port
    // back. Dropped once the replace commits: nothing to decide after it.
    let probation =
        handovers.is_pending() && matches!(ready.policy(), ReadyPolicy::Http | ReadyPolicy::Listen);
    let readiness = if probation {
        readiness.keep_watching()
    } else {
        readiness
    };
    let (committed_tx, mut committed_rx) = tokio::sync::oneshot::channel::<u32>();
    let mut committed_tx = Some(committed_tx);
    let mut committed = false;
    let mut watch = readiness
        .start(child_pid, probe_host, probe_port, move |event| {
            let _ = ready_tx.send(event);
        })
        .map_err(|e| tracing::warn!("cannot watch {shown} for readiness; it stays starting: {e}"))
        .ok();
    tell_status(&format!("running {shown} (PID {child_pid}) on port {port}"));
    let started = Instant::now();
    let mut is_ready = false;
    let mut timed_out = false;
    let mut report = tokio::time::interval_at(started + STARTING_REPORT, STARTING_REPORT);
    let ready_deadline = ready_timeout.map(|t| started + t);
    // The stop signals forwarded on request: a command that dies of one
    // makes llmlb die of it too (see `signals::die_after_release`).
    let mut asked: Vec<ForwardSignal> = Vec::new();
    let mut watching = true;
    let mut lost = false;
    // Handed over to a successor: the command's end is ours to wait for,
    // its code is not the outcome.
    let mut drained = false;
    let mut stopping = Stopping::default();
    let mut reap = tokio::time::interval(REAP_INTERVAL);
    signals.on_reload(handovers);
    let status = loop {
        tokio::select! {
            status = child.wait() => break Some(status),
            why = lock_lost.recv(), if watching => {
                // Someone else holds the port now: stop the command as a
                // `stop` would, and exit with an error once it is gone.
                fail(why);
                watching = false;
                lost = true;
                stop_accepting(front.as_mut()).await;
                stopping.begin(tree, ForwardSignal::Terminate, drains.stopped);
            }
            received = signals.next() => match received {
                Received::Stop(sig) => {
                    tracing::info!("received {}, forwarding it to {shown}", signals::name(sig));
                    if stopping.deadline.is_none() && handovers.abort().is_none() {
                        announce(lock, ServeState::Stopping);
                    }
                    asked.push(sig);
                    stop_accepting(front.as_mut()).await;
                    stopping.begin(tree, sig, drains.stopped);
                }
                // The command's to interpret (reload, reopen logs, a stop of
                // its own choosing): forwarded, and nothing else changes.
                Received::Pass(sig) => forward(tree, sig, &shown),
                Received::Reload => signals.reload(),
            },
            () = until(ready_deadline), if !is_ready && stopping.deadline.is_none() => {
                timed_out = true;
                let elsewhere = listening_elsewhere(&ready, child_pid, probe_port);
                fail(format!(
                    "{shown} (PID {child_pid}) did not {} within {}s (--ready-timeout){elsewhere}; stopping it",
                    awaited(&ready, probe_port, watch.as_ref()),
                    ready_timeout.unwrap_or_default().as_secs_f64(),
                ));
                if handovers.abort().is_none() {
                    announce(lock, ServeState::Stopping);
                }
                stopping.begin(tree, ForwardSignal::Terminate, drains.stopped);
            }
            _ = report.tick(), if !is_ready && stopping.deadline.is_none() => {
                tracing::info!(
                    "still waiting for {shown} (PID {child_pid}) to {} ({}s so far){}",
                    awaited(&ready, probe_port, watch.as_ref()),
                    started.elapsed().as_secs(),
                    listening_elsewhere(&ready, child_pid, probe_port),
                );
            }
            Ok(pid) = &mut drain, if !drained => {
                // The successor's command accepts on the same socket now.
                drained = true;
                tracing::info!("handed port {port} over to PID {pid}; stopping {shown} (it finishes what it accepted)");
                tell_handed_over(port, pid);
                stop_accepting(front.as_mut()).await;
                stopping.begin(tree, ForwardSignal::Terminate, drains.handed_over);
            }
            () = stopping.due() => {
                if tree.is_none() {
                    let _ = child.start_kill();
                }
                if !stopping.escalate(tree, &shown) {
                    break None;
                }
            }
            Some(event) = ready_rx.recv() => match event {
                // Never back from stopping to ready.
                ReadyEvent::Ready if stopping.deadline.is_none() => {
                    is_ready = true;
                    announce(lock, ServeState::Ready);
                    tracing::info!("{shown} is ready (--ready {ready})");
                    let mut commit = Commit {
                        grace,
                        ..Commit::default()
                    };
                    if let Some(tx) = committed_tx.take() {
                        commit.committed = Some(Box::new(move |pid| {
                            let _ = tx.send(pid);
                        }));
                    }
                    // A successor accepts once its replace commits; a
                    // server that took a free port, at once.
                    let started = match &front {
                        Some(front) if handovers.is_pending() => front.starter().map(|start| {
                            commit.before_drain = Some(Box::new(move || {
                                if let Err(e) = start() {
                                    tracing::error!("cannot accept on port {port}: {e}");
                                }
                            }));
                        }),
                        Some(front) => front.start(),
                        None => Ok(()),
                    };
                    if let Err(e) = started {
                        fail(format!("cannot accept on port {port}: {e}; stopping {shown}"));
                        timed_out = true;
                        if handovers.abort().is_none() {
                            announce(lock, ServeState::Stopping);
                        }
                        stopping.begin(tree, ForwardSignal::Terminate, drains.stopped);
                        continue;
                    }
                    handovers.ready(commit);
                }
                // Within the grace window: the release is not good, and
                // the predecessor, which never stopped serving, keeps it.
                ReadyEvent::Lost(why) if stopping.deadline.is_none() && handovers.is_pending() => {
                    fail(format!(
                        "{shown} (PID {child_pid}) stopped being ready within the grace window (--replace-grace): {why}; stopping it"
                    ));
                    timed_out = true;
                    handovers.abort();
                    stopping.begin(tree, ForwardSignal::Terminate, drains.stopped);
                }
                ReadyEvent::Lost(why) => tracing::warn!("{shown} is no longer ready: {why}"),
                // The command's own word on what it does, for our manager
                // too (the watch logged it, escaped and on one line).
                ReadyEvent::Status(text) => tell_status(&text),
                // STOPPING=1 was logged by the watch; Lost comes only from
                // a watch told to keep watching, which this is not.
                _ => {}
            },
            sent = &mut committed_rx, if !committed => {
                // Err: the server took a free port; nothing to commit.
                committed = true;
                if sent.is_ok() && probation {
                    // Its drop may wait for a probe in flight: not here.
                    if let Some(watch) = watch.take() {
                        tokio::task::spawn_blocking(move || drop(watch));
                    }
                }
            }
            _ = reap.tick() => exec::reap_orphans(child_pid),
        }
    };
    drop(watch);
    // A command that ended by itself: nothing to forward to any more.
    stop_accepting(front.as_mut()).await;
    // Never ready, or not for the grace window: a predecessor still
    // serving gets its port back.
    let gave_back = handovers.abort();
    let by_itself = !lost && stopping.deadline.is_none();
    // The command ended by itself: the rest is shutdown (the record is
    // another holder's if the port was lost).
    if by_itself {
        announce(lock, ServeState::Stopping);
    }
    if let Some(tree) = tree {
        end_group(tree, &mut stopping, &shown).await;
    }
    // What the proxy accepted ended with the command's connections, or is
    // cut when the drain time is up.
    if let Some(front) = front.as_mut() {
        let left = stopping.deadline.map_or(drains.stopped, |d| {
            d.saturating_duration_since(Instant::now())
        });
        if let Some(report) = front.drain(left).await.filter(|r| r.cut > 0) {
            tracing::warn!(
                "closed {} forwarded connection(s) still open when the drain time ran out (--drain-timeout)",
                report.cut
            );
        }
    }
    match status {
        Some(Ok(status)) => {
            let code = exec::exit_code(status);
            if drained {
                tracing::info!("{shown} exited ({status}); port {port} is its successor's");
            } else if let Some(pid) = gave_back {
                tracing::info!("{shown} exited ({status}); port {port} is PID {pid}'s again");
            } else {
                tracing::info!("{shown} exited ({status}); releasing port {port}");
            }
            if by_itself && code != 0 && passed.is_some() {
                // The usual cause: a command that binds the port itself
                // meets the socket llmlb bound for it (EADDRINUSE).
                eprintln!("{}", passed_socket_hint(&shown, code, port));
            }
            if let (Some(pid), true) = (gave_back, by_itself) {
                // A release that fails at once never takes the port: the
                // predecessor never stopped serving.
                let when = if is_ready {
                    "within the grace window (--replace-grace)"
                } else {
                    "before it was ready"
                };
                fail(format!(
                    "{shown} (PID {child_pid}) exited {when} ({status}); port {port} stays with PID {pid}, which serves on"
                ));
                super::EXIT_FAILURE
            } else if lost {
                super::EXIT_FAILURE
            } else if drained {
                0
            } else if let Some(&sig) = asked.iter().find(|&&sig| exec::died_of(status, sig)) {
                // Asked to stop, and the command died of the signal we
                // forwarded: so do we, once everything is released.
                *die_of = Some(sig);
                code
            } else if timed_out {
                super::EXIT_FAILURE
            } else {
                code
            }
        }
        Some(Err(e)) => fail(format!("cannot wait for {shown}: {e}")),
        None => fail(format!(
            "{shown} (PID {child_pid}) did not exit {}s after SIGKILL; releasing port {port} anyway",
            KILL_WAIT.as_secs()
        )),
    }
}

/// The line for a command that failed while it was given a listening
/// socket: the fix for the usual cause, a command written to bind its port.
fn passed_socket_hint(shown: &str, code: i32, port: u16) -> String {
    format!(
        "Error: {shown} exited with code {code}; it was passed port {port}'s socket and must serve on descriptor 3 (LISTEN_FDS=1), not bind the port itself (llmlb already listens there; see docs/cli.md)"
    )
}

/// Forwards `sig` (not a stop) to the command's tree.
fn forward(tree: Option<&CommandTree>, sig: ForwardSignal, shown: &str) {
    // A terminal sends one per resize: not worth a line each.
    if sig == ForwardSignal::WindowChange {
        tracing::debug!("received SIGWINCH, forwarding it to {shown}");
    } else {
        tracing::info!("received {}, forwarding it to {shown}", signals::name(sig));
    }
    let Some(tree) = tree else {
        tracing::warn!(
            "cannot forward {} to {shown}: it has no {TREE} of its own",
            signals::name(sig)
        );
        return;
    };
    // ESRCH: the group is gone; its end is seen by the main loop.
    if let Err(e) = tree.signal(sig) {
        tracing::debug!("cannot signal the command's {TREE}: {e}");
    }
}

/// Resolves at `deadline`; never without one.
async fn until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// What the command has still to do, with what the last probe got when
/// the policy probes (`answer GET /health with 2xx or 3xx (last: GET
/// /health: 503)`): the reason it is not ready, in the line that says so.
fn awaited(ready: &ReadySpec, port: u16, watch: Option<&ReadyWatch>) -> String {
    match watch.and_then(ReadyWatch::last_probe) {
        Some(last) => format!("{} (last: {last})", ready.awaited(port)),
        None => ready.awaited(port),
    }
}

/// `; python3 (PID 123) listens on 8001, not 8000` when `--ready listen`
/// waits for `port` and the command's tree listens elsewhere (Linux only:
/// elsewhere nothing says whose a socket is); empty otherwise.
fn listening_elsewhere(ready: &ReadySpec, root: u32, port: u16) -> String {
    if ready.policy() != ReadyPolicy::Listen {
        return String::new();
    }
    match crate::supervise::ready::listening_instead(root, port) {
        Some(line) => format!("; {line}"),
        None => String::new(),
    }
}

/// Once the command itself has exited: `SIGTERM` what is left of its group
/// (unless a stop already signalled it), `SIGKILL` at the deadline, and wait
/// for it to be gone, all bounded.
async fn end_group(tree: &CommandTree, stopping: &mut Stopping, shown: &str) {
    if tree.is_gone() {
        return;
    }
    if stopping.deadline.is_none() {
        tracing::info!(
            "{shown} exited; stopping the rest of its {}",
            tree_name(tree)
        );
        stopping.begin(Some(tree), ForwardSignal::Terminate, STOP_GRACE);
    }
    loop {
        if tree.is_gone() {
            return;
        }
        if stopping.deadline.is_some_and(|d| Instant::now() >= d)
            && !stopping.escalate(Some(tree), shown)
        {
            tracing::warn!(
                "{} still has processes {}s after {KILLED}; releasing anyway",
                tree_name(tree),
                KILL_WAIT.as_secs()
            );
            return;
        }
        tokio::time::sleep(GROUP_POLL).await;
    }
}
