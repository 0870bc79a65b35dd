//! Taking the port: as `serve` does (waiting for a held port with `--wait`,
//! saying who holds it), or as `serve --replace` does (taking it over from
//! its holder, the successor's side of [`crate::supervise::handover`]); and
//! the serve loop's view of the server's [`Handovers`] (see
//! [`crate::supervise::succession`]).

use std::net::TcpListener;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use crate::lock::{
    acquire_or_reclaim, async_impl, hint::how_to_stop, IdentityCheck, LockDir, LockError, LockInfo,
    PortGuard, ServeState,
};
use crate::supervise::handover::{self, HandedSocket, HandoverError, Predecessor, Requested};
use crate::supervise::reload::Relaunch;
use crate::supervise::SharedLock;

use super::manager::{supervisor, tell_status};
use super::options::{Where, EXIT_FAILURE};
use super::report::fail;
use super::signals::{self, Signals};

/// What a server received from its predecessor.
pub(crate) struct TakenOver {
    pub(crate) sockets: Vec<HandedSocket>,
    pub(crate) predecessor: Predecessor,
}

/// Takes `port` for `serve --replace`: by handover if the holder offers
/// one, else by a verified stop and then a wait (up to `wait`, at least the
/// replace timeout); a free or stale port is taken as `serve` takes it.
/// `Err(exit code)` with the reason printed.
pub(crate) async fn take_over(
    dir: &Where,
    port: u16,
    wait: Duration,
    timeout: Duration,
    signals: &mut Signals,
) -> Result<(PortGuard, Option<TakenOver>), i32> {
    let locks = LockDir::create(&dir.path)
        .map_err(fail)?
        .announcing(ServeState::Starting);
    let asking = locks.clone();
    let request = tokio::task::spawn_blocking(move || handover::request(&asking, port, timeout));
    // A signal here exits at once; a handover the request had already
    // received dies with this process, and the holder writes its record
    // back and serves on.
    let requested = tokio::select! {
        joined = request => match joined {
            Ok(result) => result,
            Err(e) => return Err(fail(format!("the handover of port {port} failed: {e}"))),
        },
        sig = signals.recv() => {
            eprintln!(
                "Interrupted ({}) while taking over port {port}; nothing was taken, the running server keeps it",
                signals::name(sig)
            );
            return Err(signals::exit_code(sig));
        }
    };
    match requested {
        Ok(Requested::Received(received)) => {
            let received = *received;
            tracing::info!(
                "took over port {port} from PID {}; it serves until this server is ready",
                received.predecessor.pid()
            );
            Ok((
                received.guard,
                Some(TakenOver {
                    sockets: received.sockets,
                    predecessor: received.predecessor,
                }),
            ))
        }
        Ok(Requested::NotHeld) => {
            let guard = take_lock(dir, port, wait, signals).await?;
            Ok((guard, None))
        }
        Ok(Requested::NotOffered { holder, why }) => {
            // A holder `stop` will refuse (another host, another PID
            // namespace, unverifiable) gets `stop`'s refusal alone.
            if let Some(h) = holder.filter(|h| h.check_identity() == IdentityCheck::Same) {
                eprintln!(
                    "Port {port} is held by PID {}, which offers no handover: it {why}; stopping it, then taking the port (connections are refused until this server listens)",
                    h.pid
                );
            }
            let stop_dir = dir.clone();
            let stopped = tokio::task::spawn_blocking(move || {
                super::stop_report::stop(&stop_dir, port, timeout, false)
            })
            .await
            .unwrap_or(EXIT_FAILURE);
            if stopped != 0 {
                return Err(EXIT_FAILURE);
            }
            let guard = take_lock(dir, port, wait.max(timeout), signals).await?;
            Ok((guard, None))
        }
        Err(e @ HandoverError::Busy { .. }) => Err(fail(e)),
        Err(e) => Err(fail(e)),
    }
}

/// Sent by the offer's thread when a successor has the port: its PID.
pub(crate) type DrainRequested = tokio::sync::oneshot::Receiver<u32>;

pub(crate) use crate::supervise::succession::{Commit, Handovers, PortPidfile};

/// Starts a server's [`Handovers`] (see its `new`), its drain request
/// turned into the serve loop's [`DrainRequested`].
pub(crate) fn handovers(
    lock: &SharedLock<PortGuard>,
    port: u16,
    sockets: &[(&TcpListener, &str)],
    predecessor: Option<Predecessor>,
    pidfile: &Arc<PortPidfile>,
    relaunch: Option<&Relaunch>,
) -> (Arc<Handovers>, DrainRequested) {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let handovers = Handovers::new(lock, port, sockets, predecessor, pidfile, move |pid| {
        let _ = tx.send(pid);
    });
    if let Some(relaunch) = relaunch {
        handovers.enable_reload(relaunch.clone(), supervisor());
    }
    (handovers, rx)
}

/// Creates the dir and takes the port, waiting up to `wait` if it is held
/// (saying once who holds it; SIGINT/SIGTERM while waiting exits 128 + the
/// signal's number, having taken nothing), and printing the contract's
/// message if it is still held. `Err(exit code)` on failure.
pub(crate) async fn take_lock(
    dir: &Where,
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
                already_running(port, holder.as_deref(), &locks.lock_path(port), &dir.hint)
            );
            Err(EXIT_FAILURE)
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
