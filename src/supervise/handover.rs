//! Handing a running server's port to its successor without refusing a
//! connection (`llmlb serve --replace`): the lock *and* the listening
//! sockets change hands, as nginx's binary upgrade, HAProxy's `-x` and
//! cloudflare's tableflip do for their own sockets.
//!
//! An flock belongs to the open file description, and a descriptor can be
//! passed to another process (`SCM_RIGHTS`): the successor then holds the
//! very lock the holder holds, so there is never an instant at which the
//! port is locked by nobody, or by two unrelated descriptions. The protocol:
//!
//! 1. The holder [offers](Offer::start) a handover on its control socket,
//!    `<lock dir>/serve_<port>.ctl` ([`control_path`]; 0600 in the 0700
//!    dir), made after the lock is taken and removed before the release. It
//!    answers only peers of its own user (`SO_PEERCRED`/`getpeereid`), one
//!    handover at a time, and a peer that stalls holds only its own thread.
//! 2. The successor [requests](request) the port: it verifies the recorded
//!    holder as `stop` would, checks that the control socket is that
//!    holder's, and receives the lock's descriptor and the listening
//!    sockets. It checks the descriptor (the inode the path names, holding
//!    the lock) and rewrites the record to name itself, `starting`.
//! 3. Once it serves (ready), the successor [publishes](Offer::publish) its
//!    own offer (bound since it received the port, answering `busy`) over
//!    the holder's control socket, then tells the holder to
//!    [drain](Predecessor::drain): the control path never names nothing.
//!    The holder lets go of its record (it never writes it again), stops
//!    accepting, finishes what it accepted, closes its descriptors without
//!    unlinking anything, and exits. The successor [opens](Offer::open)
//!    its offer and records the holder as `draining` until it has exited
//!    (the connection's end tells).
//!
//! From the moment the holder sends its lock's descriptor until the
//! successor gives it back, the holder writes nothing to the record and
//! removes nothing (`PortGuard::set_handed_on`): only the process the
//! record names writes it. A requester meets a holder that cannot answer at
//! once (over its peer limit, out of descriptors, mid-handover) with
//! patience, and never takes it for one without an offer:
//! [`HandoverError::Unanswered`], never [`Requested::NotOffered`].
//!
//! If the successor goes away before step 3 (it died, gave up, was
//! interrupted), the holder sees the connection end, writes its own record
//! back, and goes on serving: it never stopped. If the holder dies at any
//! point after step 2, the successor holds the lock and serves.
//!
//! A peer may also ask the holder to replace itself (`"op":"reload"`, see
//! [`reload`](crate::supervise::reload)): the holder starts its successor,
//! which then runs the steps above, and answers once it is decided.
//!
//! The wire format is one JSON object per line, each request and reply
//! carrying `"llmlb_handover": 1` ([`PROTOCOL_VERSION`]); a request this
//! version does not know gets an error reply, never a crash.
//!
//! Windows has no `SCM_RIGHTS`: there [`Offer::start`] fails with
//! `Unsupported` and [`request`] finds no offer, so `serve --replace` takes
//! its fallback (a verified stop, then wait for the port).

use std::io;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::lock::{LockDir, LockError, LockInfo, PortGuard};
use crate::supervise::LockHandle;

#[cfg(unix)]
#[path = "handover/unix.rs"]
mod sys;
#[cfg(not(unix))]
#[path = "handover/other.rs"]
mod sys;

/// The version of the control protocol this llmlb speaks, sent in every
/// message as `"llmlb_handover"`.
pub const PROTOCOL_VERSION: u32 = 1;

/// How long a holder waits for a connected peer's request (and each reply
/// write) before it drops the connection: a stalled peer costs one thread
/// for this long, never the server.
pub const PEER_TIMEOUT: Duration = Duration::from_secs(2);

/// Whether this platform can hand a lock and sockets to another process.
pub const SUPPORTED: bool = cfg!(unix);

/// `<lock dir>/serve_<port>.ctl`: where the holder of `port` offers a
/// handover.
pub fn control_path(lock_dir: &Path, port: u16) -> PathBuf {
    lock_dir.join(format!("serve_{port}.ctl"))
}

/// A listening socket handed over, with its `LISTEN_FDNAMES` name.
#[derive(Debug)]
pub struct HandedSocket {
    /// The listening socket (the same one the holder listens on).
    pub listener: TcpListener,
    /// Its name (what exec mode passes to the command as `LISTEN_FDNAMES`).
    pub name: String,
}

/// The successor a holder is draining for, as its [`Offer`] reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Successor {
    /// The successor's PID (from the socket's credentials where the
    /// platform gives them, else from its request).
    pub pid: u32,
}

/// A running holder's offer to hand its port over: the control socket and
/// the thread that answers it. Dropping it withdraws the offer (the socket
/// file is removed if it is still this offer's); a handover already under
/// way completes or is abandoned as its successor decides.
pub struct Offer {
    imp: sys::Offer,
}

impl Offer {
    /// Starts offering the lock held by `lock` (a server's
    /// [`SharedLock::handle`](crate::supervise::SharedLock::handle)) and
    /// the listening `sockets`
    /// (the lock's descriptor goes first, then these, in order) on
    /// [`control_path`]. When a successor asks to take over,
    /// `on_drain` runs (on the offer's thread) after this process has let
    /// go of the lock, and before the successor is told it drains (so what
    /// it does, such as letting go of a pidfile, never races what the
    /// successor then writes): from then on it must stop accepting, finish
    /// what it accepted, and exit without touching the lock file.
    ///
    /// # Errors
    /// The control socket cannot be made (a lock dir path too long for a
    /// Unix socket's 108 bytes, a read-only dir); `Unsupported` on Windows.
    /// The server runs on without an offer: a replace falls back to a stop.
    pub fn start(
        lock: &LockHandle<PortGuard>,
        sockets: Vec<HandedSocket>,
        on_drain: impl FnOnce(Successor) + Send + 'static,
    ) -> io::Result<Offer> {
        sys::Offer::start(lock, sockets, Box::new(on_drain), None).map(|imp| Offer { imp })
    }

    /// As [`start`](Self::start), for a server that is itself taking the
    /// port over from `predecessor` (it holds the [`Received`] lock): the
    /// control socket is bound under a private name, and every request is
    /// answered `busy` (a replace is under way) until [`open`](Self::open).
    /// [`publish`](Self::publish) it before telling the predecessor to
    /// drain: the control path then always names a holder's socket, never
    /// nothing, so a concurrent replace meets an offer and is told it is
    /// busy rather than finding no offer and stopping a server.
    ///
    /// # Errors
    /// As [`start`](Self::start).
    pub fn start_taking_over(
        lock: &LockHandle<PortGuard>,
        sockets: Vec<HandedSocket>,
        predecessor: u32,
        on_drain: impl FnOnce(Successor) + Send + 'static,
    ) -> io::Result<Offer> {
        sys::Offer::start(lock, sockets, Box::new(on_drain), Some(predecessor))
            .map(|imp| Offer { imp })
    }

    /// Puts the control socket at [`control_path`], atomically replacing
    /// whatever is there (the predecessor's own, which it then leaves
    /// alone). A no-op for an offer that is published already.
    ///
    /// # Errors
    /// The rename failed; the offer is then unreachable (and withdrawn on
    /// drop).
    pub fn publish(&self) -> io::Result<()> {
        self.imp.publish()
    }

    /// Answers requests from now on: the predecessor has drained (or
    /// failed to confirm, and serves beside us on the same socket until it
    /// notices).
    pub fn open(&self) {
        self.imp.open();
    }

    /// Runs `f` (on the offer's thread) whenever a successor abandons a
    /// handover and this process has written its record back: the port is
    /// this server's again, in every reader's eyes (e.g. rewrite a pidfile).
    pub fn on_taken_back(&self, f: impl Fn() + Send + 'static) {
        self.imp.on_taken_back(Box::new(f));
    }

    /// The control socket's path (where it is, once published).
    pub fn path(&self) -> &Path {
        self.imp.path()
    }

    /// Answers the control socket's `reload` op with `f` (called on the
    /// peer's thread with the requester's deadline; it may block until the
    /// reload is decided). Without it the op is refused as unsupported.
    pub(crate) fn on_reload(&self, f: OnReload) {
        self.imp.on_reload(f);
    }

    /// The successor a handover is under way to (its PID), or this
    /// server's own PID while it is itself taking the port over; `None`
    /// when a request would be answered.
    pub(crate) fn under_way(&self) -> Option<u32> {
        self.imp.under_way()
    }

    /// Bars `successor` from committing: a drain it asks for from now on is
    /// refused, and answered only once it has gone (the caller kills it).
    /// `false` if it has been told it may drain us already: the port is
    /// its own, and cancelling is too late.
    pub(crate) fn cancel(&self, successor: u32) -> bool {
        self.imp.cancel(successor)
    }

    /// Ends a [`cancel`](Self::cancel): the next successor may commit.
    pub(crate) fn uncancel(&self) {
        self.imp.uncancel();
    }
}

/// The control socket's answer to a `reload` op, given its deadline.
pub(crate) type OnReload = Box<dyn Fn(Duration) -> ReloadAnswer + Send + Sync>;

/// How long a reload waits for its successor unless told otherwise: a
/// control-socket `reload` without `timeout_ms` (here), `llmlb reload`
/// without `-t` and SIGUSR2 (`reload::DEFAULT_TIMEOUT`, this value).
pub(crate) const DEFAULT_RELOAD_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// How a reload a holder ran ended.
#[derive(Debug)]
pub(crate) enum ReloadAnswer {
    /// The successor (its PID) took the port over; this server drains.
    Reloaded(u32),
    /// Another reload or replace is under way (why, a phrase).
    Busy(String),
    /// The successor failed (why, a sentence); this server serves on.
    Failed(String),
}

impl std::fmt::Debug for Offer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Offer").field("path", &self.path()).finish()
    }
}

/// What [`request`] found.
#[derive(Debug)]
#[non_exhaustive]
pub enum Requested {
    /// Nobody holds the port (free, or stale): take it the usual way.
    NotHeld,
    /// The port's holder offers no handover (`why`, a phrase after "it"):
    /// it has no control socket (an older llmlb, a launcher, exec mode
    /// without a socket in llmlb's hands), `stop` would refuse it (another
    /// host or PID namespace, unverifiable), or this is Windows. A holder
    /// whose control socket accepts a connection is never this: see
    /// [`HandoverError::Unanswered`].
    NotOffered {
        /// The holder's record, if readable.
        holder: Option<Box<LockInfo>>,
        /// Why, as a phrase after "it" ("has no control socket (…)").
        why: String,
    },
    /// The lock and sockets were received: this process holds the port.
    Received(Box<Received>),
}

/// A port received by handover.
#[derive(Debug)]
#[non_exhaustive]
pub struct Received {
    /// The lock, shared with the predecessor until it has drained; the
    /// record names this process, `starting`.
    pub guard: PortGuard,
    /// The predecessor's listening sockets, in its order (empty if it
    /// passed none).
    pub sockets: Vec<HandedSocket>,
    /// The holder that handed the port over, still serving: tell it to
    /// drain once this process serves, or drop it to give the port back.
    pub predecessor: Predecessor,
}

/// The holder that handed the port over, still serving until told to
/// [drain](Predecessor::drain). Dropping it without draining abandons the
/// handover: the holder writes its record back and serves on.
#[derive(Debug)]
pub struct Predecessor {
    imp: sys::Predecessor,
}

impl Predecessor {
    /// The predecessor's PID.
    pub fn pid(&self) -> u32 {
        self.imp.pid()
    }

    /// Whether the predecessor has exited (its end of the connection
    /// closed): there is nobody left to give the port back to.
    pub fn is_gone(&self) -> bool {
        self.imp.is_gone()
    }

    /// Tells the predecessor to drain (stop accepting, finish, exit) and
    /// waits up to `timeout` for it to confirm. A predecessor that has died
    /// meanwhile counts as drained.
    ///
    /// # Errors
    /// It did not confirm in time, or the connection failed otherwise: it
    /// may still be serving beside us (on the same socket, which is
    /// harmless) until it notices.
    pub fn drain(self, timeout: Duration) -> io::Result<Draining> {
        self.imp.drain(timeout).map(|imp| Draining { imp })
    }
}

/// A predecessor that confirmed it is draining.
#[derive(Debug)]
pub struct Draining {
    imp: sys::Draining,
}

impl Draining {
    /// The predecessor's PID.
    pub fn pid(&self) -> u32 {
        self.imp.pid()
    }

    /// Blocks until the predecessor has exited (its end of the connection
    /// closed with its last descriptor).
    pub fn wait_exited(self) {
        self.imp.wait_exited();
    }

    /// Records the predecessor as draining in the record of `lock` (the
    /// lock received from it: [`LockInfo::draining`], what `status`
    /// shows), blocks until it has exited, then takes it off the record.
    /// A failed write is logged: the record then says less, and never
    /// names another holder.
    pub fn record_until_exited(self, lock: &LockHandle<PortGuard>) {
        let pid = self.pid();
        let record = |pids: Vec<u32>| {
            if let Some(Err(e)) = lock.with(|g| g.set_draining(pids)) {
                tracing::warn!("cannot record the draining PID {pid} in the lock file: {e}");
            }
        };
        record(vec![pid]);
        self.wait_exited();
        record(Vec::new());
    }
}

/// Why [`request`] failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HandoverError {
    /// Another successor is taking the port over from the same holder.
    #[error("another replace of port {port} is under way (PID {pid} is taking it over from PID {holder}); try again once it has finished")]
    Busy {
        /// The port.
        port: u16,
        /// The holder.
        holder: u32,
        /// The successor under way, as the holder reports it (0 if unknown).
        pid: u32,
    },
    /// The descriptor received failed its checks, or the record could not
    /// be written; the holder keeps serving.
    #[error(transparent)]
    Lock(#[from] LockError),
    /// The holder has a control socket (or is mid-handover) but did not
    /// hand the port over within the timeout: nothing was taken, and
    /// nothing was stopped (a holder that offers a handover is never
    /// stopped by a replace).
    #[error("PID {holder} holds port {port} and offers a handover, but it {why}; waited {}s and stopped nothing (try again, or give --replace-timeout more time)", waited.as_secs_f64())]
    Unanswered {
        /// The port.
        port: u16,
        /// The holder asked.
        holder: u32,
        /// What it did, as a phrase after "it".
        why: String,
        /// How long it was waited for.
        waited: Duration,
    },
    /// The holder's control socket refused the request (another protocol
    /// version, a request it does not know): nothing was taken or stopped.
    #[error("PID {holder} holds port {port} and refused the handover ({why}); nothing was stopped (an llmlb of another version? stop it first: llmlb stop --port {port})")]
    Refused {
        /// The port.
        port: u16,
        /// The holder asked.
        holder: u32,
        /// Its error reply.
        why: String,
    },
    /// The holder's control socket failed mid-handover; the holder keeps
    /// serving.
    #[error("the handover of port {port} from PID {holder} failed: {source}")]
    Io {
        /// The port.
        port: u16,
        /// The holder.
        holder: u32,
        /// What failed.
        source: io::Error,
    },
}

/// Why [`request_reload`] did not reload the port.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReloadError {
    /// Nobody holds the port.
    #[error("no server in lock dir {dir} holds port {port}; nothing was reloaded (start one with: llmlb serve --port {port})")]
    NotRunning {
        /// The port.
        port: u16,
        /// The lock dir, quoted for the shell.
        dir: String,
    },
    /// The holder offers no reload (`why`, a phrase after "it").
    #[error("{} holds port {port}, but it {why}; nothing was reloaded or stopped (restart it instead: llmlb serve --replace --port {port} ...)", holder.map_or_else(|| "a process".to_owned(), |pid| format!("PID {pid}")))]
    NotOffered {
        /// The port.
        port: u16,
        /// The holder, if its record was readable.
        holder: Option<u32>,
        /// Why, as a phrase after "it".
        why: String,
    },
    /// The holder is an llmlb that does not know the `reload` op.
    #[error(
        "PID {pid} is an llmlb that cannot reload; use `llmlb serve --replace --port {port} ...`"
    )]
    CannotReload {
        /// The port.
        port: u16,
        /// The holder.
        pid: u32,
    },
    /// Another reload or replace of the port is under way.
    #[error("busy: PID {pid} on port {port} is already being replaced ({why}); nothing was started, try again once it has finished")]
    Busy {
        /// The port.
        port: u16,
        /// The holder.
        pid: u32,
        /// What is under way.
        why: String,
    },
    /// The successor failed, or the reload did not finish in time: the
    /// holder serves on.
    #[error("the reload of port {port} failed: {why}; PID {pid} serves on")]
    Failed {
        /// The port.
        port: u16,
        /// The holder, which serves on.
        pid: u32,
        /// What happened, as the holder reports it.
        why: String,
    },
    /// The lock dir could not be read.
    #[error(transparent)]
    Lock(#[from] LockError),
}

/// Asks the holder of `port` in `dir` to replace itself (see
/// [`reload`](crate::supervise::reload))
/// and waits for the outcome, the holder bounding the reload by `timeout`:
/// the successor's PID once it serves and the holder drains.
///
/// # Errors
/// See [`ReloadError`]; in every case but a success the holder serves on,
/// and nothing was stopped.
pub fn request_reload(dir: &LockDir, port: u16, timeout: Duration) -> Result<u32, ReloadError> {
    sys::request_reload(dir, port, timeout)
}

/// Asks the holder of `port` in `dir` to hand the port over, waiting up to
/// `timeout` for its answer; see the module doc for what is checked. A
/// holder that cannot answer at once (starting, mid-handover, over its
/// peer limit, out of descriptors, stopping) is asked again until then.
///
/// # Errors
/// [`HandoverError::Busy`] if a handover to another successor is under way;
/// [`HandoverError::Unanswered`] if the holder offers one but did not
/// answer in time; `Refused`, `Lock` or `Io` if the port could not be
/// received (the holder serves on).
pub fn request(dir: &LockDir, port: u16, timeout: Duration) -> Result<Requested, HandoverError> {
    sys::request(dir, port, timeout)
}

#[cfg(all(test, unix))]
mod tests {
    use std::io::{BufRead as _, BufReader, Write as _};
    use std::os::unix::net::UnixStream;
    use std::sync::mpsc;

    use super::*;
    use crate::lock::{acquire_or_reclaim, LockState, ServeState};
    use crate::supervise::SharedLock;

    const PATIENCE: Duration = Duration::from_secs(10);

    /// A held port with an offer of one listening socket; the drain
    /// callback reports on the channel.
    fn offering(
        dir: &LockDir,
        port: u16,
    ) -> (
        SharedLock<PortGuard>,
        Offer,
        TcpListener,
        mpsc::Receiver<u32>,
    ) {
        let mut guard = acquire_or_reclaim(dir, port).unwrap();
        guard.set_state(ServeState::Ready).unwrap();
        let lock = SharedLock::new(guard);
        let listener = TcpListener::bind(("127.0.0.1", 0)).unwrap();
        let (tx, rx) = mpsc::channel();
        let offer = Offer::start(
            &lock.handle(),
            vec![HandedSocket {
                listener: listener.try_clone().unwrap(),
                name: "web".to_owned(),
            }],
            move |successor| tx.send(successor.pid).unwrap(),
        )
        .unwrap();
        (lock, offer, listener, rx)
    }

    fn record(dir: &LockDir, port: u16) -> LockInfo {
        match dir.probe(port).unwrap() {
            LockState::Held(Some(info)) => info,
            other => panic!("expected a held port with a record, got {other:?}"),
        }
    }

    #[test]
    fn a_handover_moves_the_lock_and_the_socket_and_the_giver_lets_go() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = LockDir::create(tmp.path().join("locks")).unwrap();
        let (lock, offer, listener, drained) = offering(&dir, 8000);
        assert!(offer.path().ends_with("serve_8000.ctl"));

        let Requested::Received(received) = request(&dir, 8000, PATIENCE).unwrap() else {
            panic!("the offer must be taken");
        };
        let Received {
            guard,
            sockets,
            predecessor,
        } = *received;
        assert_eq!(sockets.len(), 1);
        assert_eq!(sockets[0].name, "web");
        assert_eq!(
            sockets[0].listener.local_addr().unwrap(),
            listener.local_addr().unwrap(),
            "the very socket the giver listens on"
        );
        assert_eq!(record(&dir, 8000).state, Some(ServeState::Starting));

        let draining = predecessor.drain(PATIENCE).unwrap();
        assert_eq!(drained.recv_timeout(PATIENCE).unwrap(), std::process::id());
        assert!(
            lock.with(|_| ()).is_none(),
            "the giver has let go of its guard: it never writes the record again"
        );
        assert!(!offer.path().exists(), "the giver's control socket is gone");
        // The giver's descriptor is closed; ours still holds the port.
        assert!(matches!(dir.probe(8000).unwrap(), LockState::Held(_)));
        drop(draining);
        guard.release().unwrap();
        assert_eq!(dir.probe(8000).unwrap(), LockState::Free);
    }

    #[test]
    fn an_abandoned_handover_gives_the_record_back_and_can_be_offered_again() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = LockDir::create(tmp.path().join("locks")).unwrap();
        let (lock, _offer, _listener, drained) = offering(&dir, 8001);
        let before = record(&dir, 8001);

        let Requested::Received(received) = request(&dir, 8001, PATIENCE).unwrap() else {
            panic!("the offer must be taken");
        };
        // The successor gives up: it closes its copy without writing, then
        // the connection.
        let Received {
            guard, predecessor, ..
        } = *received;
        guard.abandon();
        drop(predecessor);
        let deadline = std::time::Instant::now() + PATIENCE;
        while record(&dir, 8001).state != Some(ServeState::Ready) {
            assert!(
                std::time::Instant::now() < deadline,
                "the record was not restored"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(record(&dir, 8001).started_at, before.started_at);
        assert!(drained.try_recv().is_err(), "no drain was asked for");
        assert!(lock.with(|_| ()).is_some(), "the giver still holds");

        // Offered again: a second successor is served.
        let Requested::Received(again) = request(&dir, 8001, PATIENCE).unwrap() else {
            panic!("the offer must stand after an abandoned handover");
        };
        drop(again);
    }

    #[test]
    fn the_control_socket_answers_bad_requests_with_an_error_and_serves_on() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = LockDir::create(tmp.path().join("locks")).unwrap();
        let (_lock, offer, _listener, _drained) = offering(&dir, 8002);
        for (line, error) in [
            ("garbage\n", "not a request"),
            (
                "{\"llmlb_handover\":99,\"op\":\"request\"}\n",
                "unsupported protocol version",
            ),
            (
                "{\"llmlb_handover\":1,\"op\":\"explode\"}\n",
                "unknown request",
            ),
        ] {
            let mut stream = UnixStream::connect(offer.path()).unwrap();
            stream.set_read_timeout(Some(PATIENCE)).unwrap();
            stream.write_all(line.as_bytes()).unwrap();
            let mut reply = String::new();
            BufReader::new(&stream).read_line(&mut reply).unwrap();
            let reply: serde_json::Value = serde_json::from_str(&reply).unwrap();
            assert_eq!(reply["ok"], false, "{line:?}");
            assert!(
                reply["error"].as_str().unwrap().starts_with(error),
                "{reply}"
            );
        }
        // A peer that connects and says nothing holds only its own thread.
        let _stalled = UnixStream::connect(offer.path()).unwrap();
        assert!(matches!(
            request(&dir, 8002, PATIENCE).unwrap(),
            Requested::Received(_)
        ));
    }

    #[test]
    fn a_cancelled_successor_cannot_commit_and_the_port_comes_back() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = LockDir::create(tmp.path().join("locks")).unwrap();
        let (lock, offer, _listener, drained) = offering(&dir, 8006);
        let before = record(&dir, 8006);
        let Requested::Received(received) = request(&dir, 8006, PATIENCE).unwrap() else {
            panic!("the offer must be taken");
        };
        assert_eq!(offer.under_way(), Some(std::process::id()));
        // The reload's deadline: this successor may no longer commit.
        assert!(offer.cancel(std::process::id()));
        let Received {
            guard, predecessor, ..
        } = *received;
        assert!(
            predecessor.drain(Duration::from_millis(300)).is_err(),
            "a cancelled successor is never told it may drain"
        );
        assert!(drained.try_recv().is_err(), "the holder did not drain");
        // It goes (killed, in a reload): the holder takes its port back.
        guard.abandon();
        let deadline = std::time::Instant::now() + PATIENCE;
        while offer.under_way().is_some() {
            assert!(std::time::Instant::now() < deadline, "never given back");
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(record(&dir, 8006).started_at, before.started_at);
        assert!(lock.with(|_| ()).is_some(), "the holder still holds");
        offer.uncancel();
        // The next successor commits as usual; cancelling it then is too late.
        let Requested::Received(again) = request(&dir, 8006, PATIENCE).unwrap() else {
            panic!("the offer must stand");
        };
        let _draining = again.predecessor.drain(PATIENCE).unwrap();
        assert!(!offer.cancel(std::process::id()));
        assert_eq!(drained.recv_timeout(PATIENCE).unwrap(), std::process::id());
    }

    #[test]
    fn a_second_successor_is_told_the_port_is_busy() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = LockDir::create(tmp.path().join("locks")).unwrap();
        let (_lock, _offer, _listener, _drained) = offering(&dir, 8003);
        let first = request(&dir, 8003, PATIENCE).unwrap();
        assert!(matches!(first, Requested::Received(_)));
        match request(&dir, 8003, PATIENCE) {
            Err(HandoverError::Busy { port: 8003, .. }) => {}
            other => panic!("expected busy, got {other:?}"),
        }
    }

    #[test]
    fn a_port_without_an_offer_is_not_offered_and_a_free_one_is_not_held() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = LockDir::create(tmp.path().join("locks")).unwrap();
        assert!(matches!(
            request(&dir, 8004, PATIENCE).unwrap(),
            Requested::NotHeld
        ));
        let _guard = acquire_or_reclaim(&dir, 8004).unwrap();
        match request(&dir, 8004, PATIENCE).unwrap() {
            Requested::NotOffered { holder, why } => {
                assert_eq!(holder.unwrap().pid, std::process::id());
                assert!(why.contains("no control socket"), "{why}");
            }
            other => panic!("expected no offer, got {other:?}"),
        }
    }

    #[test]
    fn a_descriptor_that_does_not_hold_the_lock_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = LockDir::create(tmp.path().join("locks")).unwrap();
        let _guard = acquire_or_reclaim(&dir, 8005).unwrap();
        // Another open of the same file: a description of its own, which
        // the holder's lock excludes.
        let other = std::fs::File::open(dir.lock_path(8005)).unwrap();
        let refused = PortGuard::from_handover(&dir, 8005, other, ServeState::Starting, 1);
        assert!(refused.is_err());
        assert_eq!(record(&dir, 8005).pid, std::process::id());
        // Some other file entirely.
        let stray = std::fs::File::create(tmp.path().join("stray")).unwrap();
        assert!(PortGuard::from_handover(&dir, 8005, stray, ServeState::Starting, 1).is_err());
    }
}
