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
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use llmlb::lock::{IdentityCheck, LockDir, PortGuard, ServeState};
use llmlb::supervise::handover::{
    self, HandedSocket, HandoverError, Offer, Predecessor, Requested,
};
use llmlb::supervise::pidfile::{Pidfile, PidfileError};
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

/// The pidfile of `serve --pidfile`, which follows the port rather than the
/// attempt: a server that took its port over writes it only once its
/// predecessor drains (a successor that fails before that never touches the
/// predecessor's pidfile), a holder that takes its port back after an
/// abandoned handover writes its own again, and a drained one leaves it to
/// its successor. Every step is taken under one mutex, and none after the
/// server has let go of it (removed at its exit, or left to a successor).
pub(crate) struct PortPidfile {
    path: Option<PathBuf>,
    slot: Mutex<PidfileSlot>,
}

struct PidfileSlot {
    written: Option<Pidfile>,
    /// Removed at exit, or left to a successor: never written again.
    done: bool,
}

impl PortPidfile {
    /// Settles the pidfile at start: written now by a server that took a
    /// free port; only checked (and written at the drain) by one taking
    /// the port over from `predecessor`.
    pub(crate) fn start(
        path: Option<PathBuf>,
        predecessor: Option<u32>,
    ) -> Result<Arc<PortPidfile>, PidfileError> {
        let me = std::process::id();
        let written = match (&path, predecessor) {
            (None, _) => None,
            (Some(path), None) => Some(Pidfile::write(path, me)?),
            (Some(path), Some(from)) => {
                Pidfile::check_writable(path, me, Some(from))?;
                None
            }
        };
        Ok(Arc::new(PortPidfile {
            path,
            slot: Mutex::new(PidfileSlot {
                written,
                done: false,
            }),
        }))
    }

    /// This server owns the port now, taken from `from` (about to be told
    /// to drain): write our PID over the pidfile (which may name `from`),
    /// unless this server has stopped meanwhile. Before the drain, so that
    /// at no moment after it does the pidfile name a predecessor that let
    /// go of it; if we die before the drain, the predecessor takes its port
    /// back and writes its own again.
    fn take_over(&self, from: u32) {
        let Some(path) = &self.path else {
            return;
        };
        let mut slot = lock_pending(&self.slot);
        if slot.done || slot.written.is_some() {
            return;
        }
        match Pidfile::write_taking_over(path, std::process::id(), Some(from)) {
            Ok(pidfile) => slot.written = Some(pidfile),
            Err(e) => tracing::warn!("{e}"),
        }
    }

    /// The predecessor `from` drains, and has let go of its pidfile: if
    /// this server stopped before it could write its own, the one naming
    /// `from` is ours to tidy, not to leave naming a process that exits
    /// cleanly.
    fn predecessor_drains(&self, from: u32) {
        let Some(path) = &self.path else {
            return;
        };
        let slot = lock_pending(&self.slot);
        if slot.done && slot.written.is_none() {
            if let Err(e) = Pidfile::remove_if_names(path, from) {
                tracing::warn!("{e}");
            }
        }
    }

    /// This holder has taken its port back: its pidfile names it again.
    fn taken_back(&self) {
        let slot = lock_pending(&self.slot);
        if let (Some(pidfile), false) = (&slot.written, slot.done) {
            if let Err(e) = pidfile.rewrite() {
                tracing::warn!("{e}");
            }
        }
    }

    /// This server drained: the pidfile is its successor's to write, and
    /// never ours to remove (read, compare and unlink would race the
    /// successor's write).
    fn let_go(&self) {
        let mut slot = lock_pending(&self.slot);
        slot.done = true;
        // Dropping would remove a file that still names us: forgotten
        // instead (its directory's descriptor is the only cost).
        std::mem::forget(slot.written.take());
    }

    /// At exit, before the release: removes the pidfile if it still names
    /// us, or, with `handed_on` (our lock is in a successor's hands), leaves
    /// it alone: the successor writes its own over it when it is ready, and
    /// a read-compare-unlink of ours could race that write.
    pub(crate) fn remove_unless_handed_on(&self, handed_on: bool) {
        if handed_on {
            self.let_go();
        } else {
            self.remove();
        }
    }

    /// Removes the pidfile if it still names us (before the release).
    pub(crate) fn remove(&self) {
        let mut slot = lock_pending(&self.slot);
        slot.done = true;
        if let Some(pidfile) = slot.written.take() {
            let path = pidfile.path().to_owned();
            if let Err(e) = pidfile.remove() {
                tracing::warn!("cannot remove the pidfile {}: {e}", path.display());
            }
        }
    }
}

/// A server's side of handovers, both ways.
pub(crate) struct Handovers {
    lock: LockHandle<PortGuard>,
    port: u16,
    /// One mutex for the offer's whole life: an offer is started, opened or
    /// withdrawn under it, so a withdrawn offer never comes back (nor keeps
    /// copies of the listening sockets past the release).
    state: Mutex<OfferState>,
    drain_tx: Mutex<Option<tokio::sync::oneshot::Sender<u32>>>,
    pidfile: Arc<PortPidfile>,
}

struct OfferState {
    /// Our copies of the listening sockets, until an offer holds them.
    sockets: Vec<HandedSocket>,
    offer: Option<Offer>,
    /// The predecessor, until it is told to drain (or given the port back).
    pending: Option<Predecessor>,
    withdrawn: bool,
}

impl Handovers {
    /// `sockets` are what a successor will get (with their names); none
    /// means no offer is ever made (exec mode without a passed socket).
    pub(crate) fn new(
        lock: &SharedLock<PortGuard>,
        port: u16,
        sockets: &[(&TcpListener, &str)],
        predecessor: Option<Predecessor>,
        pidfile: &Arc<PortPidfile>,
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
            state: Mutex::new(OfferState {
                sockets: copies,
                offer: None,
                pending: predecessor,
                withdrawn: false,
            }),
            drain_tx: Mutex::new(Some(drain_tx)),
            pidfile: Arc::clone(pidfile),
        });
        handovers.start_offer();
        (handovers, drain_rx)
    }

    /// Starts the offer: at once at the control path for a server that
    /// took a free port; for one taking its port over, under a private
    /// name, answering `busy`, until [`ready`](Self::ready) publishes it
    /// over the predecessor's and opens it once the predecessor drains.
    fn start_offer(self: &Arc<Self>) {
        let mut state = lock_pending(&self.state);
        if state.withdrawn || state.offer.is_some() || state.sockets.is_empty() {
            return;
        }
        let sockets = std::mem::take(&mut state.sockets);
        let me = Arc::downgrade(self);
        let on_drain = move |successor: handover::Successor| {
            if let Some(me) = me.upgrade() {
                me.pidfile.let_go();
                if let Some(tx) = lock_pending(&me.drain_tx).take() {
                    let _ = tx.send(successor.pid);
                }
            }
        };
        let started = match state.pending.as_ref().map(Predecessor::pid) {
            Some(from) => Offer::start_taking_over(&self.lock, sockets, from, on_drain),
            None => Offer::start(&self.lock, sockets, on_drain),
        };
        match started {
            Ok(offer) => {
                let pidfile = Arc::clone(&self.pidfile);
                offer.on_taken_back(move || pidfile.taken_back());
                state.offer = Some(offer);
            }
            Err(e) if e.kind() == io::ErrorKind::Unsupported => {}
            Err(e) => tracing::warn!(
                "cannot offer port {} to a successor (serve --replace will stop this server instead): {e}",
                self.port
            ),
        }
    }

    /// This server is ready: put our control socket where the
    /// predecessor's is (so a replace never finds none), tell the
    /// predecessor (if any) to drain, write the pidfile, open the offer,
    /// and record the predecessor as draining until it has exited. On a
    /// thread of its own: the serve loop never waits for it.
    pub(crate) fn ready(self: &Arc<Self>) {
        let Some(predecessor) = lock_pending(&self.state).pending.take() else {
            return;
        };
        let me = Arc::clone(self);
        let port = self.port;
        let spawned = std::thread::Builder::new()
            .name("llmlb-takeover".to_owned())
            .spawn(move || {
                let pid = predecessor.pid();
                if let Some(Err(e)) = lock_pending(&me.state).offer.as_ref().map(Offer::publish) {
                    tracing::warn!("cannot publish the control socket of port {port}: {e}");
                }
                // Ours from here on, drained or not (one that does not
                // confirm serves on the same socket until it notices).
                me.pidfile.take_over(pid);
                let drained = predecessor.drain(DRAIN_CONFIRM);
                if drained.is_ok() {
                    me.pidfile.predecessor_drains(pid);
                }
                if let Some(offer) = &lock_pending(&me.state).offer {
                    offer.open();
                }
                match drained {
                    Ok(draining) => {
                        tracing::info!("PID {pid} is draining; port {port} is this server's");
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
    /// port back. Our offer (never published) goes first, then our
    /// descriptor is closed without a write (the predecessor shares it), and
    /// last the connection, whose end tells the predecessor to write its
    /// record back. Returns the predecessor's PID if there was one; the lock
    /// is then no longer ours to announce or release.
    pub(crate) fn abort(&self) -> Option<u32> {
        // The connection closes at the end of this block, last.
        let pid = {
            let predecessor = {
                let mut state = lock_pending(&self.state);
                let predecessor = state.pending.take()?;
                state.withdrawn = true;
                state.offer = None;
                state.sockets.clear();
                predecessor
            };
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
    /// once the release is seen, the port can be bound again. Final: no
    /// offer is made after it.
    pub(crate) fn withdraw(&self) {
        let mut state = lock_pending(&self.state);
        state.withdrawn = true;
        state.offer = None;
        state.sockets.clear();
    }
}

fn lock_pending<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}
