//! `serve --replace`, and the offer every `serve` makes to its successor:
//! the CLI's side of [`llmlb::supervise::handover`].
//!
//! A server's [`Handovers`] offers its lock and listening socket on the
//! control socket, turns the predecessor's drain request into the serve
//! loop's [`DrainRequested`], and, for a server that took its port over,
//! tells the predecessor to drain once this one is ready (or gives the port
//! back if it stops first).

use std::io;
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use llmlb::lock::{IdentityCheck, LockDir, PortGuard, ServeState};
use llmlb::supervise::handover::{
    self, HandedSocket, HandoverError, Offer, Predecessor, Requested,
};
use llmlb::supervise::{LockHandle, SharedLock};

use super::signals::{self, Signals};
use super::{fail, LockDirChoice};

/// How long a predecessor has to confirm it is draining.
const DRAIN_CONFIRM: Duration = Duration::from_secs(5);

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

/// A server's side of handovers, both ways.
pub(crate) struct Handovers {
    lock: LockHandle<PortGuard>,
    port: u16,
    /// Our copies of the listening sockets, for a successor.
    sockets: Mutex<Vec<HandedSocket>>,
    offer: Mutex<Option<Offer>>,
    /// The predecessor, until it is told to drain (or given the port back).
    pending: Mutex<Option<Predecessor>>,
    drain_tx: Mutex<Option<tokio::sync::oneshot::Sender<u32>>>,
}

impl Handovers {
    /// `sockets` are what a successor will get (with their names); none
    /// means no offer is ever made (exec mode without a passed socket).
    pub(crate) fn new(
        lock: &SharedLock<PortGuard>,
        port: u16,
        sockets: &[(&TcpListener, &str)],
        predecessor: Option<Predecessor>,
    ) -> (Arc<Handovers>, DrainRequested) {
        let copies = sockets
            .iter()
            .filter_map(|(listener, name)| match listener.try_clone() {
                Ok(listener) => Some(HandedSocket {
                    listener,
                    name: (*name).to_owned(),
                }),
                Err(e) => {
                    tracing::warn!(
                        "cannot keep a copy of the socket of port {port} for a successor: {e}"
                    );
                    None
                }
            })
            .collect();
        let (drain_tx, drain_rx) = tokio::sync::oneshot::channel();
        let handovers = Arc::new(Handovers {
            lock: lock.handle(),
            port,
            sockets: Mutex::new(copies),
            offer: Mutex::new(None),
            pending: Mutex::new(predecessor),
            drain_tx: Mutex::new(Some(drain_tx)),
        });
        // A server that took its port over offers it on only once its
        // predecessor's offer is gone (at the drain): the path is one.
        if lock_pending(&handovers.pending).is_none() {
            handovers.offer_now();
        }
        (handovers, drain_rx)
    }

    fn offer_now(self: &Arc<Self>) {
        let sockets = std::mem::take(&mut *lock_pending(&self.sockets));
        if sockets.is_empty() {
            return;
        }
        let me = Arc::clone(self);
        let started = Offer::start(&self.lock, sockets, move |successor| {
            if let Some(tx) = lock_pending(&me.drain_tx).take() {
                let _ = tx.send(successor.pid);
            }
        });
        match started {
            Ok(offer) => *lock_pending(&self.offer) = Some(offer),
            Err(e) if e.kind() == io::ErrorKind::Unsupported => {}
            Err(e) => tracing::warn!(
                "cannot offer port {} to a successor (serve --replace will stop this server instead): {e}",
                self.port
            ),
        }
    }

    /// This server is ready: tell the predecessor (if any) to drain, record
    /// it as draining until it has exited, then offer the port on. On a
    /// thread of its own: the serve loop never waits for it.
    pub(crate) fn ready(self: &Arc<Self>) {
        let Some(predecessor) = lock_pending(&self.pending).take() else {
            return;
        };
        let me = Arc::clone(self);
        let port = self.port;
        let spawned = std::thread::Builder::new()
            .name("llmlb-takeover".to_owned())
            .spawn(move || {
                let pid = predecessor.pid();
                match predecessor.drain(DRAIN_CONFIRM) {
                    Ok(draining) => {
                        tracing::info!("PID {pid} is draining; port {port} is this server's");
                        me.offer_now();
                        draining.record_until_exited(&me.lock);
                        tracing::info!("PID {pid} has exited");
                    }
                    Err(e) => tracing::warn!(
                        "PID {pid} did not confirm that it drains ({e}); it serves on the same socket until it notices"
                    ),
                }
            });
        if let Err(e) = spawned {
            tracing::warn!("cannot tell the previous server of port {port} to drain: {e}");
        }
    }

    /// This server stops before its predecessor was told to drain: give the
    /// port back. Our descriptor is closed without a write (the predecessor
    /// shares it and writes its record back when the connection ends).
    /// Returns the predecessor's PID if there was one; the lock is then no
    /// longer ours to announce or release.
    pub(crate) fn abort(&self) -> Option<u32> {
        // The predecessor's connection closes at the end of this block,
        // after our descriptor: it then writes its record back.
        let pid = {
            let predecessor = lock_pending(&self.pending).take()?;
            if let Some(guard) = self.lock.take() {
                guard.abandon();
            }
            predecessor.pid()
        };
        tracing::warn!("gave port {} back to PID {pid}, which serves on", self.port);
        Some(pid)
    }

    /// Withdraws the offer (the control socket goes before the release),
    /// closing every copy of the listening sockets kept for a successor:
    /// once the release is seen, the port can be bound again.
    pub(crate) fn withdraw(&self) {
        *lock_pending(&self.offer) = None;
        lock_pending(&self.sockets).clear();
    }
}

fn lock_pending<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}
