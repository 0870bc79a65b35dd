//! The handover over a Unix stream socket, with `SCM_RIGHTS` for the
//! descriptors (see the parent module for the protocol).

use std::fs::File;
use std::io::{self, Read as _, Write as _};
use std::net::TcpListener;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::{
    control_path, HandedSocket, HandoverError, OnReload, Received, ReloadAnswer, ReloadError,
    Requested, Successor, PEER_TIMEOUT, PROTOCOL_VERSION,
};
use crate::lock::sys::{
    euid, peer_credentials, process_runs, recv_with_fds, send_with_fds, MAX_PASSED_FDS,
};
use crate::lock::{IdentityCheck, LockDir, LockState, PortGuard, ServeState};
use crate::supervise::LockHandle;

/// The longest line either side reads: a request or reply is far shorter.
const MAX_LINE: usize = 4096;
/// Connections answered at once; more get a short `busy` reply (a flood of
/// stalled peers must not become a flood of threads).
const MAX_PEERS: usize = 16;
/// How often a requester looks again at a holder that cannot answer yet (a
/// starting holder without an offer, one mid-handover or overloaded).
const RETRY: Duration = Duration::from_millis(10);
/// How often the accept loop looks whether the offer was withdrawn, and
/// whether its control socket file is still there.
const ACCEPT_POLL_MS: i32 = 250;
/// The accept loop's back-off when the process is out of descriptors: from
/// the first to the last, doubling (as the HTTP accept loop does).
const ACCEPT_BACKOFF: (Duration, Duration) = (Duration::from_millis(10), Duration::from_secs(1));

/// How long a holder waits for a successor whose drain it refused (its
/// reload's deadline passed) to go: the reload kills it at once.
const CANCELLED_WAIT: Duration = Duration::from_secs(10);
/// The longest reload deadline a holder accepts from a requester.
const MAX_RELOAD: Duration = Duration::from_secs(24 * 3600);
/// How much longer than its deadline a reload requester waits for the
/// answer: the holder stops the successor at the deadline, waits for it to
/// go and for the port to be its own again, then answers.
const RELOAD_SLACK: Duration = Duration::from_secs(30);

type OnDrain = Box<dyn FnOnce(Successor) + Send>;
type OnTakenBack = Box<dyn Fn() + Send>;

pub(super) struct Offer {
    path: PathBuf,
    shared: Arc<OfferShared>,
}

/// What the accept thread and the peers' threads share.
struct OfferShared {
    lock: LockHandle<PortGuard>,
    /// Our copies of the listening sockets; emptied (closed) when the offer
    /// is withdrawn, so a stopped server's port is free once it has
    /// released, not when a thread next looks.
    sockets: Mutex<Vec<HandedSocket>>,
    port: u16,
    /// The control path, and the private name an offer is bound under
    /// until it is published there.
    path: PathBuf,
    temp: PathBuf,
    /// The socket file's inode (it changes when a removed file is made
    /// again): a file is removed only while it is ours.
    ino: AtomicU64,
    /// At the control path (else still at `temp`).
    published: AtomicBool,
    /// Withdrawn (dropped) or drained: accept nothing more.
    closed: AtomicBool,
    /// A successor under way (its PID; any non-zero value bars a second
    /// one). An offer of a server still taking its own port over holds its
    /// own PID here until [`Offer::open`].
    successor: AtomicU32,
    /// Whom `successor` is taking the port from (for `busy` replies).
    from: AtomicU32,
    peers: AtomicUsize,
    on_drain: Mutex<Option<OnDrain>>,
    on_taken_back: Mutex<Option<OnTakenBack>>,
    /// A listener bound anew at the control path (its file was removed, or
    /// taken by a successor that then gave up), for the accept loop to take.
    replacement: Mutex<Option<UnixListener>>,
    on_reload: Mutex<Option<Arc<OnReload>>>,
    /// Reload requests being answered: a server drained by a reload's
    /// successor waits (briefly) for the answer to be written before it
    /// withdraws and exits, or its requester would find the socket closed.
    replying: AtomicUsize,
    /// Which successor may commit: one drain decision at a time, so a
    /// reload's deadline and its successor's drain cannot both win.
    gate: Mutex<DrainGate>,
}

#[derive(Default)]
struct DrainGate {
    /// A successor whose drain is refused (0: none).
    cancelled: u32,
    /// The successor told it may drain us (0: none yet).
    accepted: u32,
}

impl OfferShared {
    /// Where the socket file is now.
    fn current_path(&self) -> &Path {
        if self.published.load(Ordering::SeqCst) {
            &self.path
        } else {
            &self.temp
        }
    }

    /// Removes the control socket file if it is still this offer's (a
    /// successor publishes its own over it before telling us to drain).
    fn remove_socket_file(&self) {
        let path = self.current_path();
        if let Ok(meta) = std::fs::symlink_metadata(path) {
            if meta.ino() == self.ino.load(Ordering::SeqCst) {
                let _ = std::fs::remove_file(path);
            }
        }
    }
}

/// Binds a listener at `temp` (mode 0600) and returns it with its inode.
fn bind_private(temp: &Path) -> io::Result<(UnixListener, u64)> {
    let _ = std::fs::remove_file(temp);
    let listener = UnixListener::bind(temp)?;
    match std::fs::set_permissions(temp, std::fs::Permissions::from_mode(0o600))
        .and_then(|()| std::fs::symlink_metadata(temp))
    {
        Ok(meta) => Ok((listener, meta.ino())),
        Err(e) => {
            let _ = std::fs::remove_file(temp);
            Err(e)
        }
    }
}

impl Offer {
    /// `taking_over`: bound under the private name and answering `busy`
    /// (this process is itself taking the port over) until published and
    /// opened; otherwise published and open at once.
    pub(super) fn start(
        lock: &LockHandle<PortGuard>,
        sockets: Vec<HandedSocket>,
        on_drain: OnDrain,
        taking_over_from: Option<u32>,
    ) -> io::Result<Offer> {
        if sockets.len() + 1 > MAX_PASSED_FDS {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "too many listening sockets to hand over",
            ));
        }
        let Some((dir, port)) = lock.with(|g| (g.path().parent().map(Path::to_path_buf), g.port()))
        else {
            return Err(io::Error::other("the lock was released"));
        };
        let dir = dir.ok_or_else(|| io::Error::other("the lock file has no directory"))?;
        let path = control_path(&dir, port);
        // Bound under a private name, then renamed over the public one: a
        // stale socket file of a crashed holder (or the predecessor's, in a
        // handover) is replaced atomically, and a requester never finds a
        // half-made one, nor a moment with none.
        let temp = dir.join(format!(".serve_{port}.ctl.{}", std::process::id()));
        let (listener, ino) = bind_private(&temp)?;
        let shared = Arc::new(OfferShared {
            lock: lock.clone(),
            sockets: Mutex::new(sockets),
            port,
            path: path.clone(),
            temp,
            ino: AtomicU64::new(ino),
            published: AtomicBool::new(false),
            closed: AtomicBool::new(false),
            successor: AtomicU32::new(taking_over_from.map_or(0, |_| std::process::id())),
            from: AtomicU32::new(taking_over_from.unwrap_or(0)),
            peers: AtomicUsize::new(0),
            on_drain: Mutex::new(Some(on_drain)),
            on_taken_back: Mutex::new(None),
            replacement: Mutex::new(None),
            on_reload: Mutex::new(None),
            replying: AtomicUsize::new(0),
            gate: Mutex::new(DrainGate::default()),
        });
        let offer = Offer { path, shared };
        if taking_over_from.is_none() {
            offer.publish()?;
        }
        let accepting = Arc::clone(&offer.shared);
        std::thread::Builder::new()
            .name("llmlb-handover".to_owned())
            .spawn(move || accept_loop(listener, &accepting))?;
        Ok(offer)
    }

    /// Moves the socket file from its private name to the control path,
    /// replacing whatever is there (a predecessor's, a crashed holder's).
    pub(super) fn publish(&self) -> io::Result<()> {
        let shared = &self.shared;
        if shared.published.load(Ordering::SeqCst) {
            return Ok(());
        }
        if let Err(e) = std::fs::rename(&shared.temp, &shared.path) {
            let _ = std::fs::remove_file(&shared.temp);
            return Err(e);
        }
        shared.published.store(true, Ordering::SeqCst);
        Ok(())
    }

    /// Answers requests from now on (an offer started while taking over
    /// said `busy` until this).
    pub(super) fn open(&self) {
        self.shared.from.store(0, Ordering::SeqCst);
        self.shared.successor.store(0, Ordering::SeqCst);
    }

    pub(super) fn on_taken_back(&self, f: OnTakenBack) {
        *lock_ignoring_poison(&self.shared.on_taken_back) = Some(f);
    }

    pub(super) fn path(&self) -> &Path {
        &self.path
    }

    pub(super) fn on_reload(&self, f: OnReload) {
        *lock_ignoring_poison(&self.shared.on_reload) = Some(Arc::new(f));
    }

    pub(super) fn under_way(&self) -> Option<u32> {
        match self.shared.successor.load(Ordering::SeqCst) {
            0 => None,
            pid => Some(pid),
        }
    }

    pub(super) fn cancel(&self, successor: u32) -> bool {
        let mut gate = lock_ignoring_poison(&self.shared.gate);
        if gate.accepted == successor {
            return false;
        }
        gate.cancelled = successor;
        true
    }

    pub(super) fn uncancel(&self) {
        lock_ignoring_poison(&self.shared.gate).cancelled = 0;
    }
}

impl OfferShared {
    /// Whether `successor` may commit (and from now on it has).
    fn accept_drain(&self, successor: u32) -> bool {
        let mut gate = lock_ignoring_poison(&self.gate);
        if successor != 0 && gate.cancelled == successor {
            return false;
        }
        gate.accepted = successor;
        true
    }
}

impl Drop for Offer {
    fn drop(&mut self) {
        // Drained (by a reload's successor, perhaps): the reload's answer
        // follows at once; a stop mid-reload does not wait for it.
        if self.shared.closed.load(Ordering::SeqCst) {
            let until = Instant::now() + PEER_TIMEOUT;
            while self.shared.replying.load(Ordering::SeqCst) > 0 && Instant::now() < until {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        {
            let mut sockets = lock_ignoring_poison(&self.shared.sockets);
            self.shared.closed.store(true, Ordering::SeqCst);
            sockets.clear();
        }
        self.shared.remove_socket_file();
    }
}

fn lock_ignoring_poison<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Whether an accept failed for want of descriptors or kernel memory: the
/// connection stays queued, so retrying at once would spin.
fn out_of_resources(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}

/// A descriptor kept open for the moment the process runs out: closed to
/// accept one connection and tell it why, then opened again.
fn reserve_descriptor() -> Option<File> {
    File::open("/dev/null").ok()
}

fn accept_loop(mut listener: UnixListener, shared: &Arc<OfferShared>) {
    let mut reserve = reserve_descriptor();
    let mut backoff = Duration::ZERO;
    loop {
        if shared.closed.load(Ordering::SeqCst) {
            return;
        }
        let mut fds = libc::pollfd {
            fd: listener.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        let ready = unsafe { libc::poll(&mut fds, 1, ACCEPT_POLL_MS) };
        if ready <= 0 {
            // Timeout or EINTR: look at `closed` again, and whether our
            // file is still there.
            restore_if_removed(shared);
        }
        if let Some(replacement) = lock_ignoring_poison(&shared.replacement).take() {
            listener = replacement;
            continue;
        }
        if ready <= 0 {
            continue;
        }
        let stream = match listener.accept() {
            Ok((stream, _)) => {
                backoff = Duration::ZERO;
                stream
            }
            Err(e) if out_of_resources(&e) => {
                // Tell the requester why (with the reserve's slot), then
                // back off instead of spinning on the queued connection.
                drop(reserve.take());
                if let Ok((mut stream, _)) = listener.accept() {
                    refuse_busy_now(&mut stream, "the holder is out of file descriptors");
                }
                reserve = reserve_descriptor();
                backoff = (backoff * 2).clamp(ACCEPT_BACKOFF.0, ACCEPT_BACKOFF.1);
                tracing::warn!(
                    "handover control socket of port {}: {e}; answering busy, next look in {} ms",
                    shared.port,
                    backoff.as_millis()
                );
                std::thread::sleep(backoff);
                continue;
            }
            Err(e) => {
                tracing::debug!("handover control socket: accept failed: {e}");
                continue;
            }
        };
        if shared.closed.load(Ordering::SeqCst) {
            return;
        }
        let mut stream = stream;
        if shared.peers.fetch_add(1, Ordering::SeqCst) >= MAX_PEERS {
            shared.peers.fetch_sub(1, Ordering::SeqCst);
            refuse_busy_now(&mut stream, "too many connections to its control socket");
            continue;
        }
        let peer = Arc::clone(shared);
        let spawned = std::thread::Builder::new()
            .name("llmlb-handover-peer".to_owned())
            .spawn(move || {
                answer(stream, &peer);
                peer.peers.fetch_sub(1, Ordering::SeqCst);
            });
        if let Err(e) = spawned {
            shared.peers.fetch_sub(1, Ordering::SeqCst);
            tracing::warn!(
                "handover control socket of port {}: cannot start a thread: {e}",
                shared.port
            );
        }
    }
}

/// Makes the control socket again if its file was removed (by a tmp
/// cleaner, by hand) while this offer stands: a replace must never find a
/// serving holder without an offer. Only a missing file is remade: one
/// that is there may rightly be a successor's.
fn restore_if_removed(shared: &OfferShared) {
    // Also mid-handover: until the successor publishes its own socket over
    // ours (which never leaves the path empty), the path is ours to keep.
    if !shared.published.load(Ordering::SeqCst) || shared.closed.load(Ordering::SeqCst) {
        return;
    }
    match std::fs::symlink_metadata(&shared.path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        _ => return,
    }
    match republish(shared) {
        Ok(()) => tracing::warn!(
            "the control socket {} was removed; made it again",
            shared.path.display()
        ),
        Err(e) => tracing::debug!(
            "cannot make the control socket of port {} again: {e}",
            shared.port
        ),
    }
}

/// Binds a new listener and renames it over the control path, whatever is
/// there; the accept loop takes it over at its next look (connections
/// queue on it meanwhile).
fn republish(shared: &OfferShared) -> io::Result<()> {
    let (listener, ino) = bind_private(&shared.temp)?;
    if let Err(e) = std::fs::rename(&shared.temp, &shared.path) {
        let _ = std::fs::remove_file(&shared.temp);
        return Err(e);
    }
    shared.ino.store(ino, Ordering::SeqCst);
    shared.published.store(true, Ordering::SeqCst);
    *lock_ignoring_poison(&shared.replacement) = Some(listener);
    Ok(())
}

/// A `busy` reply written without blocking (from the accept thread, which
/// must never wait on a peer), then the connection is closed.
fn refuse_busy_now(stream: &mut UnixStream, why: &str) {
    let _ = stream.set_nonblocking(true);
    refuse(stream, "busy", &[("overloaded", json!(why))]);
}

/// One error reply; the connection is closed after it.
fn refuse(stream: &mut UnixStream, error: &str, extra: &[(&str, Value)]) {
    let mut reply = json!({"llmlb_handover": PROTOCOL_VERSION, "ok": false, "error": error});
    for (key, value) in extra {
        reply[*key] = value.clone();
    }
    let _ = write_line(stream, &reply);
}

fn write_line(stream: &mut UnixStream, value: &Value) -> io::Result<()> {
    let mut line = value.to_string();
    line.push('\n');
    stream.write_all(line.as_bytes())
}

/// Answers one peer of the control socket.
fn answer(mut stream: UnixStream, shared: &OfferShared) {
    let port = shared.port;
    let (uid, cred_pid) = match peer_credentials(&stream) {
        Ok(cred) => cred,
        Err(e) => {
            tracing::debug!("handover control socket of port {port}: no peer credentials: {e}");
            return;
        }
    };
    let _ = stream.set_write_timeout(Some(PEER_TIMEOUT));
    if uid != euid() {
        tracing::warn!(
            "refused a handover request for port {port} from uid {uid}: only its own user may take it over"
        );
        refuse(
            &mut stream,
            "permission denied: the port's holder hands it only to its own user",
            &[],
        );
        return;
    }
    let _ = stream.set_read_timeout(Some(PEER_TIMEOUT));
    let mut reader = LineReader::default();
    let request = match reader.next_line(&mut stream) {
        Ok(Some(line)) => line,
        Ok(None) => return,
        Err(e) => {
            tracing::debug!("handover control socket of port {port}: no request: {e}");
            return;
        }
    };
    let Ok(request) = serde_json::from_slice::<Value>(&request) else {
        refuse(&mut stream, "not a request (one JSON object per line)", &[]);
        return;
    };
    let version = request.get("llmlb_handover").and_then(Value::as_u64);
    if version != Some(u64::from(PROTOCOL_VERSION)) {
        refuse(
            &mut stream,
            &format!("unsupported protocol version (this holder speaks {PROTOCOL_VERSION})"),
            &[],
        );
        return;
    }
    match request.get("op").and_then(Value::as_str) {
        Some("request") => {}
        Some("reload") => {
            answer_reload(&mut stream, shared, &request);
            return;
        }
        _ => {
            refuse(&mut stream, "unknown request", &[]);
            return;
        }
    }
    let successor = cred_pid
        .or_else(|| {
            request
                .get("pid")
                .and_then(Value::as_u64)
                .and_then(|p| u32::try_from(p).ok())
        })
        .unwrap_or(0);
    // One successor at a time; the marker is any non-zero PID.
    if let Err(current) =
        shared
            .successor
            .compare_exchange(0, successor.max(1), Ordering::SeqCst, Ordering::SeqCst)
    {
        let from = match shared.from.load(Ordering::SeqCst) {
            0 => std::process::id(),
            from => from,
        };
        refuse(
            &mut stream,
            "busy",
            &[("pid", json!(current)), ("from", json!(from))],
        );
        return;
    }
    let release_claim = || shared.successor.store(0, Ordering::SeqCst);
    // Under the sockets' mutex: a withdrawal (which closes them) waits for
    // this send, and a send never starts after it.
    let sent = {
        let sockets = lock_ignoring_poison(&shared.sockets);
        if shared.closed.load(Ordering::SeqCst) {
            None
        } else {
            let names: Vec<&str> = sockets.iter().map(|s| s.name.as_str()).collect();
            let reply = json!({
                "llmlb_handover": PROTOCOL_VERSION,
                "ok": true,
                "pid": std::process::id(),
                "sockets": names,
            });
            let mut line = reply.to_string();
            line.push('\n');
            // Handed on from before the send (under the guard's mutex, so
            // no write of ours can slip in after it): from the moment the
            // successor may hold the descriptor, the record is its own.
            shared.lock.with(|guard| {
                guard.set_handed_on(true);
                let file = guard.share_file();
                let mut fds: Vec<BorrowedFd<'_>> = vec![file.as_fd()];
                fds.extend(sockets.iter().map(|s| s.listener.as_fd()));
                let sent = send_with_fds(&stream, line.as_bytes(), &fds);
                if sent.is_err() {
                    guard.set_handed_on(false);
                }
                sent
            })
        }
    };
    match sent {
        Some(Ok(())) => {}
        None => {
            refuse(&mut stream, "stopping", &[]);
            release_claim();
            return;
        }
        Some(Err(e)) => {
            tracing::warn!("cannot hand port {port} over to PID {successor}: {e}");
            release_claim();
            return;
        }
    }
    tracing::info!(
        "handed the lock and sockets of port {port} to PID {successor}; serving until it is ready"
    );
    // The successor takes as long as it needs to become ready; it ends the
    // wait by asking us to drain, or by going away.
    let _ = stream.set_read_timeout(None);
    let drain = matches!(
        reader.next_line(&mut stream),
        Ok(Some(line)) if serde_json::from_slice::<Value>(&line)
            .ok()
            .and_then(|v| v.get("op").and_then(Value::as_str).map(|op| op == "drain"))
            == Some(true)
    );
    // A successor that asked and died at once must not leave the port to
    // nobody: a hung-up peer is an abandoned handover, not a drain.
    let drain = drain && !peer_hung_up(&stream);
    // A reload's successor past its deadline is being killed: left
    // unanswered until it has gone, so it never takes our silence (or an
    // end) for a drain and serves on a record we write back.
    let refused = drain && !shared.accept_drain(successor);
    if refused {
        tracing::warn!(
            "PID {successor} asked to take port {port} over after its reload's deadline; refused"
        );
        let _ = stream.set_read_timeout(Some(CANCELLED_WAIT));
        let mut sink = [0u8; 64];
        while matches!(stream.read(&mut sink), Ok(n) if n > 0) {}
    }
    let drain = drain && !refused;
    if !drain {
        // The control path may hold a socket the successor published and
        // left (it stopped after its ready, before telling us to drain):
        // ours goes back there at once, before anyone can read the record
        // we restored without finding our offer.
        if shared.published.load(Ordering::SeqCst) && !shared.closed.load(Ordering::SeqCst) {
            let ours = std::fs::symlink_metadata(&shared.path)
                .is_ok_and(|meta| meta.ino() == shared.ino.load(Ordering::SeqCst));
            if !ours {
                if let Err(e) = republish(shared) {
                    tracing::warn!(
                        "cannot make the control socket of port {port} again after an abandoned handover: {e}"
                    );
                }
            }
        }
        // Our description was never out of our hands: writing our record
        // back makes the port ours again in every reader's eyes.
        if let Some(Err(e)) = shared.lock.with(PortGuard::restore_record) {
            tracing::warn!(
                "cannot write the record of port {port} back after an abandoned handover: {e}"
            );
        }
        tracing::warn!("PID {successor} abandoned the handover of port {port}; still serving");
        if let Some(taken_back) = &*lock_ignoring_poison(&shared.on_taken_back) {
            taken_back();
        }
        release_claim();
        return;
    }
    // From here on this process never writes the record: it is the
    // successor's. Closing our descriptor unlocks nothing (the successor
    // shares the description) and removes nothing.
    shared.closed.store(true, Ordering::SeqCst);
    if let Some(guard) = shared.lock.take() {
        guard.abandon();
    }
    shared.remove_socket_file();
    // What we sent is the successor's now; our copies close.
    lock_ignoring_poison(&shared.sockets).clear();
    // Before the reply: the successor writes what is now its own (its
    // pidfile) once it has the reply, and nothing of ours may race it.
    tracing::info!("PID {successor} serves port {port} now; draining");
    let on_drain = lock_ignoring_poison(&shared.on_drain).take();
    if let Some(on_drain) = on_drain {
        on_drain(Successor { pid: successor });
    }
    let _ = write_line(
        &mut stream,
        &json!({"llmlb_handover": PROTOCOL_VERSION, "ok": true, "op": "draining"}),
    );
    // The connection stays open until this process exits: its end tells
    // the successor we are gone.
    let mut sink = [0u8; 64];
    while matches!(stream.read(&mut sink), Ok(n) if n > 0) {}
}

/// Answers a `reload` op: runs the server's reload (which may take until
/// the requester's deadline, on this peer's own thread) and writes its
/// outcome, one line. The write is bounded by [`PEER_TIMEOUT`]: a requester
/// that went away costs nothing, and the reload runs to its end anyway.
fn answer_reload(stream: &mut UnixStream, shared: &OfferShared, request: &Value) {
    if shared.closed.load(Ordering::SeqCst) {
        refuse(stream, "stopping", &[]);
        return;
    }
    let Some(reload) = lock_ignoring_poison(&shared.on_reload).clone() else {
        refuse(
            stream,
            "reload unsupported: this holder was not started by `llmlb serve`",
            &[],
        );
        return;
    };
    shared.replying.fetch_add(1, Ordering::SeqCst);
    let timeout = request
        .get("timeout_ms")
        .and_then(Value::as_u64)
        .map_or(super::DEFAULT_RELOAD_TIMEOUT, Duration::from_millis)
        .min(MAX_RELOAD);
    let reply = match reload(timeout) {
        ReloadAnswer::Reloaded(pid) => json!({
            "llmlb_handover": PROTOCOL_VERSION, "ok": true, "op": "reloaded", "pid": pid,
        }),
        ReloadAnswer::Busy(why) => json!({
            "llmlb_handover": PROTOCOL_VERSION, "ok": false, "error": "busy", "why": why,
        }),
        ReloadAnswer::Failed(why) => json!({
            "llmlb_handover": PROTOCOL_VERSION, "ok": false, "error": why,
        }),
    };
    let _ = write_line(stream, &reply);
    shared.replying.fetch_sub(1, Ordering::SeqCst);
}

/// Whether the peer has closed its end (it exited): one `poll` that does
/// not wait.
fn peer_hung_up(stream: &UnixStream) -> bool {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    const HUNG_UP: libc::c_short = libc::POLLHUP | libc::POLLRDHUP;
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    const HUNG_UP: libc::c_short = libc::POLLHUP;
    let mut fds = libc::pollfd {
        fd: stream.as_raw_fd(),
        events: HUNG_UP,
        revents: 0,
    };
    // SAFETY: one valid pollfd; a zero timeout never blocks.
    let ready = unsafe { libc::poll(&mut fds, 1, 0) };
    ready > 0 && fds.revents & (HUNG_UP | libc::POLLERR) != 0
}

/// Reads newline-terminated lines of at most [`MAX_LINE`] bytes, keeping
/// what follows a line for the next.
#[derive(Debug, Default)]
struct LineReader {
    buf: Vec<u8>,
}

impl LineReader {
    /// The next line without its newline; `None` at a clean end of stream.
    fn next_line(&mut self, stream: &mut UnixStream) -> io::Result<Option<Vec<u8>>> {
        loop {
            if let Some(line) = self.take_line() {
                return Ok(Some(line));
            }
            if self.buf.len() > MAX_LINE {
                return Err(io::Error::new(io::ErrorKind::InvalidData, "line too long"));
            }
            let mut chunk = [0u8; 1024];
            let n = match stream.read(&mut chunk) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            if n == 0 {
                return Ok(None);
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    fn take_line(&mut self) -> Option<Vec<u8>> {
        let end = self.buf.iter().position(|&b| b == b'\n')?;
        let mut line: Vec<u8> = self.buf.drain(..=end).collect();
        line.pop();
        Some(line)
    }
}

#[derive(Debug)]
pub(super) struct Predecessor {
    pid: u32,
    stream: UnixStream,
    reader: LineReader,
}

impl Predecessor {
    pub(super) fn pid(&self) -> u32 {
        self.pid
    }

    /// Its end of the connection closed (with its last descriptor: it
    /// exited), seen without reading anything it sent.
    pub(super) fn is_gone(&self) -> bool {
        let mut byte = 0u8;
        // SAFETY: a one-byte buffer we own; MSG_PEEK leaves the stream as
        // it was, MSG_DONTWAIT never blocks.
        let n = unsafe {
            libc::recv(
                self.stream.as_raw_fd(),
                (&mut byte as *mut u8).cast(),
                1,
                libc::MSG_PEEK | libc::MSG_DONTWAIT,
            )
        };
        n == 0 || (n < 0 && is_gone(&io::Error::last_os_error()))
    }

    pub(super) fn drain(mut self, timeout: Duration) -> io::Result<Draining> {
        let drained = Draining {
            pid: self.pid,
            stream: None,
        };
        let request = json!({"llmlb_handover": PROTOCOL_VERSION, "op": "drain"});
        match write_line(&mut self.stream, &request) {
            Ok(()) => {}
            // It is gone already: nothing left to drain.
            Err(e) if is_gone(&e) => return Ok(drained),
            Err(e) => return Err(e),
        }
        self.stream
            .set_read_timeout(Some(timeout.max(Duration::from_millis(1))))?;
        match self.reader.next_line(&mut self.stream) {
            Ok(None) => Ok(drained),
            Err(e) if is_gone(&e) => Ok(drained),
            Err(e) => Err(e),
            Ok(Some(line)) => {
                let reply: Value = serde_json::from_slice(&line)
                    .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "garbled reply"))?;
                if reply.get("op").and_then(Value::as_str) == Some("draining") {
                    Ok(Draining {
                        pid: self.pid,
                        stream: Some(self.stream),
                    })
                } else {
                    Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "unexpected reply to drain",
                    ))
                }
            }
        }
    }
}

fn is_gone(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset | io::ErrorKind::UnexpectedEof
    )
}

#[derive(Debug)]
pub(super) struct Draining {
    pid: u32,
    /// `None`: it had exited before it could confirm.
    stream: Option<UnixStream>,
}

impl Draining {
    pub(super) fn pid(&self) -> u32 {
        self.pid
    }

    pub(super) fn wait_exited(self) {
        if let Some(mut stream) = self.stream {
            let _ = stream.set_read_timeout(None);
            let mut sink = [0u8; 64];
            while matches!(stream.read(&mut sink), Ok(n) if n > 0) {}
        }
    }
}

/// One look at the port, as [`request`] makes it until it has an answer.
enum Attempt {
    /// Final.
    Done(Requested),
    /// The holder has an offer (or is mid-handover) but could not answer
    /// now: look again until the deadline (`why`, a phrase after "it";
    /// `holder`, the PID asked).
    Retry { holder: u32, why: String },
    /// The holder has no control socket (nothing there, or nobody
    /// listening): final once that has held for [`NO_SOCKET_GRACE`].
    NoSocket(Box<crate::lock::LockInfo>),
}

/// How long a verified holder must be seen without a control socket before
/// it counts as offering none: a holder remakes a removed socket file
/// within one accept-loop look, and a successor that gave up puts its
/// predecessor's back at once.
const NO_SOCKET_GRACE: Duration = Duration::from_millis(3 * ACCEPT_POLL_MS as u64);

pub(super) fn request(
    dir: &LockDir,
    port: u16,
    timeout: Duration,
) -> Result<Requested, HandoverError> {
    let deadline = Instant::now() + timeout;
    let mut no_socket_since = None;
    loop {
        match attempt(dir, port, timeout, deadline)? {
            Attempt::Done(requested) => return Ok(requested),
            Attempt::NoSocket(info) => {
                let since = *no_socket_since.get_or_insert_with(Instant::now);
                let now = Instant::now();
                if now >= deadline || now.duration_since(since) >= NO_SOCKET_GRACE {
                    return Ok(Requested::NotOffered {
                        holder: Some(info),
                        why: "has no control socket (an older llmlb, a launcher, or a command run without a passed socket)".to_owned(),
                    });
                }
                std::thread::sleep(RETRY);
            }
            Attempt::Retry { holder, why } => {
                if Instant::now() >= deadline {
                    return Err(HandoverError::Unanswered {
                        port,
                        holder,
                        why,
                        waited: timeout,
                    });
                }
                std::thread::sleep(RETRY);
            }
        }
    }
}

/// How long a verified holder is looked at again for a control socket
/// before a reload counts it as offering none.
const RELOAD_NO_SOCKET: Duration = Duration::from_secs(3);

pub(super) fn request_reload(
    dir: &LockDir,
    port: u16,
    timeout: Duration,
) -> Result<u32, ReloadError> {
    let no_socket_until = Instant::now() + RELOAD_NO_SOCKET;
    let (mut stream, info) = loop {
        let info = match dir.probe(port)? {
            LockState::Free | LockState::Stale(_) => {
                return Err(ReloadError::NotRunning {
                    port,
                    dir: crate::lock::shell_quoted(dir.path()).to_string(),
                })
            }
            LockState::Held(None) => {
                return Err(ReloadError::NotOffered {
                    port,
                    holder: None,
                    why: "has an unreadable record".to_owned(),
                })
            }
            LockState::Held(Some(info)) => info,
        };
        let not_offered = |why: &str| ReloadError::NotOffered {
            port,
            holder: Some(info.pid),
            why: why.to_owned(),
        };
        match info.check_identity() {
            IdentityCheck::Same => {}
            IdentityCheck::OtherHost(host) => {
                return Err(not_offered(&format!("runs on another host ({host})")))
            }
            IdentityCheck::OtherPidNamespace => {
                return Err(not_offered("runs in another PID namespace"))
            }
            _ => return Err(not_offered("cannot be verified as the holder")),
        }
        match UnixStream::connect(control_path(dir.path(), port)) {
            Ok(stream) => break (stream, info),
            // A server between its lock and its offer, or mid-handover,
            // offers one in a moment.
            Err(_) if Instant::now() < no_socket_until => std::thread::sleep(RETRY),
            Err(_) => return Err(not_offered(
                "has no control socket (exec mode without a passed socket, a C or Python launcher, or an older llmlb)",
            )),
        }
    };
    let pid = match peer_credentials(&stream) {
        Ok((uid, _)) if uid != euid() => {
            return Err(ReloadError::NotOffered {
                port,
                holder: Some(info.pid),
                why: "has a control socket of another user".to_owned(),
            })
        }
        Ok((_, pid)) => pid.unwrap_or(info.pid),
        Err(_) => info.pid,
    };
    let failed = |why: String| ReloadError::Failed { port, pid, why };
    let millis = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
    let request = json!({
        "llmlb_handover": PROTOCOL_VERSION,
        "op": "reload",
        "timeout_ms": millis,
        "pid": std::process::id(),
    });
    let _ = stream.set_write_timeout(Some(PEER_TIMEOUT));
    if let Err(e) = write_line(&mut stream, &request) {
        return Err(failed(format!("cannot send it the request ({e})")));
    }
    let _ = stream.set_read_timeout(Some(timeout.saturating_add(RELOAD_SLACK)));
    let line = match LineReader::default().next_line(&mut stream) {
        Ok(Some(line)) => line,
        Ok(None) => return Err(failed("it closed its control socket unanswered".to_owned())),
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ) =>
        {
            return Err(failed(format!(
                "it did not answer within {}s",
                timeout.saturating_add(RELOAD_SLACK).as_secs_f64()
            )))
        }
        Err(e) => return Err(failed(format!("its control socket failed ({e})"))),
    };
    let reply: Value = serde_json::from_slice(&line)
        .map_err(|_| failed("it answered something that is not a reply".to_owned()))?;
    if reply.get("ok").and_then(Value::as_bool) == Some(true) {
        return reply
            .get("pid")
            .and_then(Value::as_u64)
            .and_then(|p| u32::try_from(p).ok())
            .ok_or_else(|| failed("it answered without the new PID".to_owned()));
    }
    let error = reply
        .get("error")
        .and_then(Value::as_str)
        .unwrap_or("refused");
    Err(match error {
        "busy" => ReloadError::Busy {
            port,
            pid,
            why: reply
                .get("why")
                .and_then(Value::as_str)
                .or_else(|| reply.get("overloaded").and_then(Value::as_str))
                .unwrap_or("a replace is under way")
                .to_owned(),
        },
        "unknown request" => ReloadError::CannotReload { port, pid },
        e if e.starts_with("reload unsupported") => ReloadError::CannotReload { port, pid },
        "stopping" => failed("it is stopping".to_owned()),
        e => failed(e.to_owned()),
    })
}

fn attempt(
    dir: &LockDir,
    port: u16,
    timeout: Duration,
    deadline: Instant,
) -> Result<Attempt, HandoverError> {
    let not_offered = |holder: Option<Box<crate::lock::LockInfo>>, why: String| {
        Ok(Attempt::Done(Requested::NotOffered { holder, why }))
    };
    let info = match dir.probe(port)? {
        LockState::Free | LockState::Stale(_) => return Ok(Attempt::Done(Requested::NotHeld)),
        LockState::Held(None) => return not_offered(None, "has an unreadable record".to_owned()),
        LockState::Held(Some(info)) => Box::new(info),
    };
    match info.check_identity() {
        IdentityCheck::Same => {}
        other => {
            let why = match other {
                IdentityCheck::OtherHost(host) => format!("runs on another host ({host})"),
                IdentityCheck::OtherPidNamespace => "runs in another PID namespace".to_owned(),
                IdentityCheck::Released => {
                    "released the lock to processes that inherited it".to_owned()
                }
                _ => "cannot be verified as the holder".to_owned(),
            };
            return not_offered(Some(info), why);
        }
    }
    let retry = |why: &str| {
        Ok(Attempt::Retry {
            holder: info.pid,
            why: why.to_owned(),
        })
    };
    let mut stream = match UnixStream::connect(control_path(dir.path(), port)) {
        Ok(stream) => stream,
        // The fallback is for holders without a control socket. One in the
        // middle of a handover (it records a draining predecessor) offers
        // again in a moment: wait for it, never stop it.
        Err(_) if !info.draining.is_empty() => {
            return retry("is taking the port over and offers no handover yet")
        }
        // A server between its lock and its listener, which offers in a
        // few milliseconds; if it never does (a command that loads for
        // minutes without a passed socket), it has no control socket.
        Err(_) if info.serve_state() == ServeState::Starting && Instant::now() < deadline => {
            return retry("is starting and offers no handover yet")
        }
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused
            ) || info.serve_state() == ServeState::Starting =>
        {
            return Ok(Attempt::NoSocket(info))
        }
        Err(e) => return retry(&format!("cannot be reached on its control socket ({e})")),
    };
    // The socket's owner, not necessarily the recorded holder: during a
    // handover the record names the successor while the predecessor still
    // answers (and says it is busy). Only its user matters: what it hands
    // over is checked against the path and the lock before it is used.
    let holder = match peer_credentials(&stream) {
        Ok((uid, _)) if uid != euid() => {
            return not_offered(
                Some(info),
                "has a control socket of another user".to_owned(),
            )
        }
        Ok((_, pid)) => pid.unwrap_or(info.pid),
        Err(e) => return retry(&format!("cannot be identified on its control socket ({e})")),
    };
    let retry = |why: &str| {
        Ok(Attempt::Retry {
            holder,
            why: why.to_owned(),
        })
    };
    let io_err = |source| HandoverError::Io {
        port,
        holder,
        source,
    };
    let request = json!({
        "llmlb_handover": PROTOCOL_VERSION,
        "op": "request",
        "pid": std::process::id(),
    });
    let left = deadline.saturating_duration_since(Instant::now());
    stream
        .set_write_timeout(Some(left.max(Duration::from_millis(1))))
        .map_err(io_err)?;
    if write_line(&mut stream, &request).is_err() {
        return retry("closed its control socket unanswered");
    }
    // The reply carries the descriptors with its first bytes.
    let mut reader = LineReader::default();
    let mut fds = Vec::new();
    let line = loop {
        if let Some(line) = reader.take_line() {
            break line;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || reader.buf.len() > MAX_LINE {
            return retry(&format!("did not answer within {}s", timeout.as_secs_f64()));
        }
        stream.set_read_timeout(Some(left)).map_err(io_err)?;
        let mut chunk = [0u8; 1024];
        match recv_with_fds(&stream, &mut chunk) {
            // A holder that closes with our request unread (it died, or
            // dropped us unanswered) resets the connection instead of
            // ending it: the same answer as an end. Looked at again: a
            // dead holder leaves the port free or stale.
            Ok((0, _)) => return retry("closed its control socket unanswered"),
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => {
                return retry("closed its control socket unanswered")
            }
            Ok((n, more)) => {
                reader.buf.extend_from_slice(&chunk[..n]);
                fds.extend(more);
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return retry(&format!("did not answer within {}s", timeout.as_secs_f64()))
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(io_err(e)),
        }
    };
    let reply: Value = serde_json::from_slice(&line)
        .map_err(|_| io_err(io::Error::new(io::ErrorKind::InvalidData, "garbled reply")))?;
    if reply.get("ok").and_then(Value::as_bool) != Some(true) {
        let error = reply
            .get("error")
            .and_then(Value::as_str)
            .unwrap_or("refused");
        let pid_field = |key: &str| {
            reply
                .get(key)
                .and_then(Value::as_u64)
                .and_then(|p| u32::try_from(p).ok())
                .filter(|&p| p != 0)
        };
        return match error {
            "busy" => match reply.get("overloaded").and_then(Value::as_str) {
                // Over its peer limit or out of descriptors: a moment.
                Some(why) => retry(&format!("is busy ({why})")),
                // A successor that gave up (or died) while the holder was
                // still answering it: the holder frees its claim in a moment.
                None if pid_field("pid").is_some_and(|pid| !process_runs(pid)) => {
                    retry("is finishing a handover its successor abandoned")
                }
                None => Err(HandoverError::Busy {
                    port,
                    holder: pid_field("from").unwrap_or(holder),
                    pid: pid_field("pid").unwrap_or(0),
                }),
            },
            // Withdrawn: it is stopping, and the port will be free.
            "stopping" => retry("is stopping"),
            error => Err(HandoverError::Refused {
                port,
                holder,
                why: error.to_owned(),
            }),
        };
    }
    let names: Vec<String> = reply
        .get("sockets")
        .and_then(Value::as_array)
        .map(|names| {
            names
                .iter()
                .filter_map(|n| n.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    if fds.len() != names.len() + 1 {
        return Err(io_err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "expected {} descriptors, received {}",
                names.len() + 1,
                fds.len()
            ),
        )));
    }
    let mut fds = fds.into_iter();
    let lock_file = File::from(fds.next().expect("checked: one more than the names"));
    let sockets = fds
        .zip(names)
        .map(|(fd, name)| HandedSocket {
            listener: TcpListener::from(fd),
            name,
        })
        .collect();
    // Any failure from here drops the stream: the holder writes its record
    // back and serves on.
    let guard = PortGuard::from_handover(dir, port, lock_file, ServeState::Starting, holder)?;
    Ok(Attempt::Done(Requested::Received(Box::new(Received {
        guard,
        sockets,
        predecessor: super::Predecessor {
            imp: Predecessor {
                pid: holder,
                stream,
                reader,
            },
        },
    }))))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lock::acquire_or_reclaim;

    /// A holder of an older version answers the `reload` op with `unknown
    /// request`: it "cannot reload", and nothing else is asked of it.
    #[test]
    fn an_older_holder_cannot_reload() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = LockDir::create(tmp.path().join("locks")).unwrap();
        let port = 41202;
        assert!(matches!(
            request_reload(&dir, port, Duration::from_secs(1)),
            Err(ReloadError::NotRunning { port: 41202, .. })
        ));
        // This process is the recorded holder; its control socket answers
        // as an llmlb without the op does.
        let _guard = acquire_or_reclaim(&dir, port).unwrap();
        let listener = UnixListener::bind(control_path(dir.path(), port)).unwrap();
        let holder = std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            let line = LineReader::default()
                .next_line(&mut stream)
                .unwrap()
                .unwrap();
            let asked: Value = serde_json::from_slice(&line).unwrap();
            refuse(&mut stream, "unknown request", &[]);
            asked
        });
        match request_reload(&dir, port, Duration::from_secs(1)) {
            Err(ReloadError::CannotReload { port: 41202, pid }) => {
                assert_eq!(pid, std::process::id());
            }
            other => panic!("expected CannotReload, got {other:?}"),
        }
        let asked = holder.join().unwrap();
        assert_eq!(asked["op"], "reload");
        assert_eq!(asked["timeout_ms"], 1000);
    }

    /// A holder that closes the control connection with the request unread
    /// (as a holder killed mid-request does) resets it rather than ending
    /// it: that is "closed its control socket unanswered", looked at again
    /// until the deadline, and then an unanswered handover (never the
    /// fallback that stops a holder that has an offer).
    #[test]
    fn a_reset_control_connection_is_retried_then_unanswered() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = LockDir::create(tmp.path().join("locks")).unwrap();
        let port = 41201;
        // This process is the recorded holder, so the request gets as far
        // as the control socket.
        let _guard = acquire_or_reclaim(&dir, port).unwrap();
        let listener = UnixListener::bind(control_path(dir.path(), port)).unwrap();
        let done = Arc::new(AtomicBool::new(false));
        let resets = Arc::new(AtomicUsize::new(0));
        let holder = {
            let (done, resets) = (Arc::clone(&done), Arc::clone(&resets));
            std::thread::spawn(move || {
                listener.set_nonblocking(true).unwrap();
                while !done.load(Ordering::SeqCst) {
                    let Ok((stream, _)) = listener.accept() else {
                        std::thread::sleep(Duration::from_millis(1));
                        continue;
                    };
                    // Wait until the request has arrived, then close unread.
                    let mut fds = libc::pollfd {
                        fd: stream.as_raw_fd(),
                        events: libc::POLLIN,
                        revents: 0,
                    };
                    // SAFETY: one valid pollfd.
                    unsafe { libc::poll(&mut fds, 1, 10_000) };
                    drop(stream);
                    resets.fetch_add(1, Ordering::SeqCst);
                }
            })
        };
        let requested = request(&dir, port, Duration::from_secs(1));
        done.store(true, Ordering::SeqCst);
        holder.join().unwrap();
        match requested {
            // The last look may have run into the deadline mid-request.
            Err(HandoverError::Unanswered { why, holder, .. }) => {
                assert!(
                    why.contains("unanswered") || why.contains("did not answer"),
                    "{why}"
                );
                assert_eq!(holder, std::process::id());
            }
            other => panic!("expected Unanswered, got {other:?}"),
        }
        assert!(resets.load(Ordering::SeqCst) > 1, "it was asked again");
    }
}
