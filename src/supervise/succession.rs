//! The succession of servers on one port: a running server's side of
//! [`handover`]s, both ways, over its whole life.
//!
//! A server's [`Handovers`] offers its lock and listening sockets on the
//! control socket and reports a successor's drain request; a server that
//! took its port over tells its predecessor to drain only once it has been
//! ready for the *grace window* ([`Commit::grace`], `serve --replace-grace`)
//! and is still up: until then the predecessor keeps its copies of the
//! socket and serves, so a release that fails at once (a command that dies
//! after `READY=1`, a health check that flips back) is given the port back
//! untouched and nothing was refused. Its [`PortPidfile`] follows the port,
//! not the attempt.

use std::io;
use std::net::TcpListener;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

use crate::lock::PortGuard;
use crate::supervise::handover::{self, HandedSocket, Offer, Predecessor, ReloadAnswer};
use crate::supervise::pidfile::{Pidfile, PidfileError};
use crate::supervise::{LockHandle, SharedLock};

/// How long a predecessor has to confirm it is draining.
const DRAIN_CONFIRM: Duration = Duration::from_secs(5);

/// How often a predecessor is checked for having exited during the grace
/// window.
const GONE_POLL: Duration = Duration::from_millis(20);

/// `serve --replace-grace`'s default: how long a successor must stay up
/// after it is ready before its predecessor is told to drain.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(2);

/// The pidfile of `serve --pidfile`, which follows the port rather than the
/// attempt: a server that took its port over writes it only once its
/// predecessor drains (a successor that fails before that never touches the
/// predecessor's pidfile), a holder that takes its port back after an
/// abandoned handover writes its own again, and a drained one leaves it to
/// its successor. Every step is taken under one mutex, and none after the
/// server has let go of it (removed at its exit, or left to a successor).
pub struct PortPidfile {
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
    pub fn start(
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
    pub fn remove_unless_handed_on(&self, handed_on: bool) {
        if handed_on {
            self.let_go();
        } else {
            self.remove();
        }
    }

    /// Removes the pidfile if it still names us (before the release).
    pub fn remove(&self) {
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

/// Told once, with the successor's PID, when a successor has the port and
/// this server must drain.
type OnDrain = Box<dyn FnOnce(u32) + Send>;

/// A server's side of handovers, both ways.
pub struct Handovers {
    pub(super) lock: LockHandle<PortGuard>,
    pub(super) port: u16,
    /// One mutex for the offer's whole life: an offer is started, opened or
    /// withdrawn under it, so a withdrawn offer never comes back (nor keeps
    /// copies of the listening sockets past the release). The grace
    /// window waits on it too: an abort or a withdrawal ends the wait.
    state: Mutex<OfferState>,
    /// Notified whenever `state` is withdrawn.
    withdrawn: Condvar,
    on_drain: Mutex<Option<OnDrain>>,
    pidfile: Arc<PortPidfile>,
    /// What runs a reload (set by [`reload`](super::reload)'s
    /// `enable_reload`): a function, so that the handover needs to know
    /// nothing of how a successor is started.
    pub(super) reloads: OnceLock<RunReload>,
    /// The successor this server drains for (0: none yet).
    pub(super) drained_to: AtomicU32,
}

/// What a server that took its port over does once it is ready (see
/// [`Handovers::ready`]).
#[derive(Default)]
pub struct Commit {
    /// How long it must stay ready before its predecessor is told to
    /// drain (`--replace-grace`); zero commits at once.
    pub grace: Duration,
    /// Run once the grace window has passed, just before the predecessor
    /// is told to drain: proxy mode starts accepting here.
    pub before_drain: Option<Box<dyn FnOnce() + Send>>,
    /// Run once the predecessor has been told to drain (whether or not it
    /// confirmed), with its PID: the port is this server's from then on.
    pub committed: Option<Box<dyn FnOnce(u32) + Send>>,
}

struct OfferState {
    /// Our copies of the listening sockets, until an offer holds them.
    sockets: Vec<HandedSocket>,
    offer: Option<Offer>,
    /// The predecessor, until it is told to drain (or given the port back).
    pending: Option<Predecessor>,
    withdrawn: bool,
}

/// A server's reload, given its deadline (see [`Handovers::reload`]).
pub(super) type RunReload = Box<dyn Fn(&Handovers, Duration) -> ReloadAnswer + Send + Sync>;

impl Handovers {
    /// Starts the successor and waits, up to `timeout`, for it to take the
    /// port over (this server then drains); see [`reload`](super::reload).
    /// Fails at once for a server never told how it was started.
    pub(crate) fn reload(&self, timeout: Duration) -> ReloadAnswer {
        match self.reloads.get() {
            Some(run) => run(self, timeout),
            None => ReloadAnswer::Failed(
                "this server was not told how it was started, so it cannot start its successor"
                    .to_owned(),
            ),
        }
    }

    /// `sockets` are what a successor will get (with their names); none
    /// means no offer is ever made (exec mode without a passed socket).
    /// `on_drain` is told, once, when a successor has the port: this
    /// server stops accepting, finishes what it accepted, and exits.
    pub fn new(
        lock: &SharedLock<PortGuard>,
        port: u16,
        sockets: &[(&TcpListener, &str)],
        predecessor: Option<Predecessor>,
        pidfile: &Arc<PortPidfile>,
        on_drain: impl FnOnce(u32) + Send + 'static,
    ) -> Arc<Handovers> {
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
        let handovers = Arc::new(Handovers {
            lock: lock.handle(),
            port,
            state: Mutex::new(OfferState {
                sockets: copies,
                offer: None,
                pending: predecessor,
                withdrawn: false,
            }),
            withdrawn: Condvar::new(),
            on_drain: Mutex::new(Some(Box::new(on_drain))),
            pidfile: Arc::clone(pidfile),
            reloads: OnceLock::new(),
            drained_to: AtomicU32::new(0),
        });
        handovers.start_offer();
        handovers
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
                me.drained_to.store(successor.pid, Ordering::SeqCst);
                me.pidfile.let_go();
                if let Some(on_drain) = lock_pending(&me.on_drain).take() {
                    on_drain(successor.pid);
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
                let me = Arc::downgrade(self);
                offer.on_reload(Box::new(move |timeout| match me.upgrade() {
                    Some(me) => me.reload(timeout),
                    None => ReloadAnswer::Failed("the server is stopping".to_owned()),
                }));
                state.offer = Some(offer);
            }
            Err(e) if e.kind() == io::ErrorKind::Unsupported => {}
            Err(e) => tracing::warn!(
                "cannot offer port {} to a successor (serve --replace will stop this server instead): {e}",
                self.port
            ),
        }
    }

    /// This server is ready. For one that took its port over: once it has
    /// stayed so for `commit.grace` (an [`abort`](Self::abort) meanwhile
    /// gives the port back instead), put our control socket where the
    /// predecessor's is (so a replace never finds none), write the pidfile,
    /// run `commit.before_drain`, tell the predecessor to drain, open the
    /// offer, and record the predecessor as draining until it has exited.
    /// On a thread of its own: the serve loop never waits for it. Nothing
    /// to do for a server that took a free port.
    pub fn ready(self: &Arc<Self>, commit: Commit) {
        let Some(from) = lock_pending(&self.state)
            .pending
            .as_ref()
            .map(Predecessor::pid)
        else {
            return;
        };
        let me = Arc::clone(self);
        let port = self.port;
        let spawned = std::thread::Builder::new()
            .name("llmlb-takeover".to_owned())
            .spawn(move || {
                let Commit {
                    grace,
                    before_drain,
                    committed,
                } = commit;
                if !grace.is_zero() {
                    tracing::info!(
                        "ready; port {port} stays with PID {from} for {}s more, and is this server's if it stays up (--replace-grace)",
                        grace.as_secs_f64()
                    );
                }
                let Some(predecessor) = me.after_grace(grace) else {
                    return;
                };
                let pid = predecessor.pid();
                if let Some(Err(e)) = lock_pending(&me.state).offer.as_ref().map(Offer::publish) {
                    tracing::warn!("cannot publish the control socket of port {port}: {e}");
                }
                // Ours from here on, drained or not (one that does not
                // confirm serves on the same socket until it notices).
                me.pidfile.take_over(pid);
                if let Some(before_drain) = before_drain {
                    before_drain();
                }
                let drained = predecessor.drain(DRAIN_CONFIRM);
                if drained.is_ok() {
                    me.pidfile.predecessor_drains(pid);
                }
                if let Some(offer) = &lock_pending(&me.state).offer {
                    offer.open();
                }
                if let Some(committed) = committed {
                    committed(pid);
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

    /// Waits out the grace window, then takes the predecessor to tell it to
    /// drain; `None` if this server aborted or withdrew meanwhile (the
    /// predecessor was then given its port back, or is being given it). A
    /// predecessor that exits within the window ends it at once: there is
    /// nobody to give the port back to, so it is this server's whatever
    /// happens next.
    fn after_grace(&self, grace: Duration) -> Option<Predecessor> {
        let deadline = Instant::now() + grace;
        let mut state = lock_pending(&self.state);
        loop {
            if state.withdrawn {
                return None;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || state.pending.as_ref().is_some_and(Predecessor::is_gone) {
                return state.pending.take();
            }
            state = self
                .withdrawn
                .wait_timeout(state, left.min(GONE_POLL))
                .map_or_else(|poisoned| poisoned.into_inner().0, |(state, _)| state);
        }
    }

    /// Whether this server took its port over and has not yet told its
    /// predecessor to drain: an [`abort`](Self::abort) now gives the port
    /// back (within the grace window, too).
    pub fn is_pending(&self) -> bool {
        lock_pending(&self.state).pending.is_some()
    }

    /// This server stops before its predecessor was told to drain: give the
    /// port back. Our offer (never published) goes first, then our
    /// descriptor is closed without a write (the predecessor shares it), and
    /// last the connection, whose end tells the predecessor to write its
    /// record back. Returns the predecessor's PID if there was one; the lock
    /// is then no longer ours to announce or release. A predecessor that
    /// has exited (within the grace window) gets nothing back: the port is
    /// this server's to stop and release, and `None` is returned.
    pub fn abort(&self) -> Option<u32> {
        // The connection closes at the end of this block, last.
        let pid = {
            let predecessor = {
                let mut state = lock_pending(&self.state);
                let predecessor = state.pending.take()?;
                if predecessor.is_gone() {
                    // Its pidfile names a dead process: ours to write (and
                    // to remove at our exit).
                    self.pidfile.take_over(predecessor.pid());
                    return None;
                }
                state.withdrawn = true;
                state.offer = None;
                state.sockets.clear();
                self.withdrawn.notify_all();
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

    /// Whether an offer was made and not withdrawn: `false` when its
    /// control socket could not be made (the reason is logged, and this
    /// server can only be stopped, not replaced) or it offers no socket.
    pub fn is_offered(&self) -> bool {
        self.with_offer(|_| ()).is_some()
    }

    /// `f` on the offer, if one stands.
    pub(super) fn with_offer<T>(&self, f: impl FnOnce(&Offer) -> T) -> Option<T> {
        lock_pending(&self.state).offer.as_ref().map(f)
    }

    /// Withdraws the offer (the control socket goes before the release),
    /// closing every copy of the listening sockets kept for a successor:
    /// once the release is seen, the port can be bound again. Final: no
    /// offer is made after it.
    pub fn withdraw(&self) {
        let mut state = lock_pending(&self.state);
        state.withdrawn = true;
        state.offer = None;
        state.sockets.clear();
        self.withdrawn.notify_all();
    }
}

fn lock_pending<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}
