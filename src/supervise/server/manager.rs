//! What a running server tells the world about itself: its lock record's
//! serving state, its service manager (sd_notify: status lines, ready,
//! stopping, a handover's new main PID, watchdog heartbeats), and the
//! watchdog thread that keeps the lock file its own.

use std::io;
use std::sync::OnceLock;
use std::time::Duration;

use crate::lock::{PortGuard, ServeState};
use crate::supervise::notify::Supervisor;
use crate::supervise::reload::Relaunch;
use crate::supervise::{SharedLock, WatchEnd, WatchEvent};

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

/// How this process was started, for a successor of the server on `port`
/// (`llmlb reload`, see [`Relaunch::from_process`]); read once at the start
/// of each [`serve`](super::serve) call and kept by that call. A failure
/// only costs the reload.
pub(crate) fn read_relaunch(port: u16) -> Option<Relaunch> {
    Relaunch::from_process(port)
        .map_err(|e| {
            tracing::warn!(
                "cannot read the working directory ({e}); this server cannot reload (llmlb reload, SIGUSR2)"
            )
        })
        .ok()
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

/// Starts the watchdog thread (see [`crate::supervise::Watchdog`]): it re-creates a
/// lock file removed or replaced by hand, and reports through [`LockLost`] if
/// another process took the port meanwhile. It ends when the lock is released.
///
/// Under a service manager's watchdog (`WATCHDOG_USEC`), each check that finds
/// the lock ours sends `WATCHDOG=1`, and the checks run at least at half that
/// interval: the heartbeat means "still the port's holder", so it stops with
/// the first check that finds the port lost.
pub(crate) fn spawn_watchdog(
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
