//! `serve --replace`: taking a port over from its holder (the CLI's side of
//! [`llmlb::supervise::handover`]), and the serve loop's view of the
//! server's [`Handovers`] (see [`llmlb::supervise::succession`]).

use std::net::TcpListener;
use std::sync::Arc;
use std::time::Duration;

use llmlb::lock::{IdentityCheck, LockDir, PortGuard, ServeState};
use llmlb::supervise::handover::{self, HandedSocket, HandoverError, Predecessor, Requested};
use llmlb::supervise::SharedLock;

use super::signals::{self, Signals};
use super::{fail, LockDirChoice};

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
    dir: &LockDirChoice,
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
            let guard = super::serve::take_lock(dir, port, wait, signals).await?;
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
                super::stop::run(&stop_dir, port, timeout, false)
            })
            .await
            .unwrap_or(super::EXIT_FAILURE);
            if stopped != 0 {
                return Err(super::EXIT_FAILURE);
            }
            let guard = super::serve::take_lock(dir, port, wait.max(timeout), signals).await?;
            Ok((guard, None))
        }
        Err(e @ HandoverError::Busy { .. }) => Err(fail(e)),
        Err(e) => Err(fail(e)),
    }
}

/// Sent by the offer's thread when a successor has the port: its PID.
pub(crate) type DrainRequested = tokio::sync::oneshot::Receiver<u32>;

pub(crate) use llmlb::supervise::succession::{Commit, Handovers, PortPidfile};

/// Starts a server's [`Handovers`] (see its `new`), its drain request
/// turned into the serve loop's [`DrainRequested`].
pub(crate) fn handovers(
    lock: &SharedLock<PortGuard>,
    port: u16,
    sockets: &[(&TcpListener, &str)],
    predecessor: Option<Predecessor>,
    pidfile: &Arc<PortPidfile>,
) -> (Arc<Handovers>, DrainRequested) {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let handovers = Handovers::new(lock, port, sockets, predecessor, pidfile, move |pid| {
        let _ = tx.send(pid);
    });
    if let Some(relaunch) = super::serve::relaunch() {
        handovers.enable_reload(relaunch.clone(), super::serve::supervisor());
    }
    (handovers, rx)
}
