//! The handover over a Unix stream socket, with `SCM_RIGHTS` for the
//! descriptors (see the parent module for the protocol).

use std::fs::File;
use std::io::{self, Read as _, Write as _};
use std::net::TcpListener;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::{
    control_path, HandedSocket, HandoverError, Received, Requested, Successor, PEER_TIMEOUT,
    PROTOCOL_VERSION,
};
use crate::lock::sys::{euid, peer_credentials, recv_with_fds, send_with_fds, MAX_PASSED_FDS};
use crate::lock::{IdentityCheck, LockDir, LockState, PortGuard, ServeState};
use crate::supervise::LockHandle;

/// The longest line either side reads: a request or reply is far shorter.
const MAX_LINE: usize = 4096;
/// Connections answered at once; more are closed unanswered (a flood of
/// stalled peers must not become a flood of threads).
const MAX_PEERS: usize = 16;
/// How often a requester looks again at a starting holder without an offer.
const STARTING_RETRY: Duration = Duration::from_millis(10);
/// How often the accept loop looks whether the offer was withdrawn.
const ACCEPT_POLL_MS: i32 = 250;

type OnDrain = Box<dyn FnOnce(Successor) + Send>;

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
    path: PathBuf,
    /// The control socket file's inode: it is removed only while it is ours.
    ino: u64,
    /// Withdrawn (dropped) or drained: accept nothing more.
    closed: AtomicBool,
    /// A successor holds the descriptors: no second one.
    successor: AtomicU32,
    peers: AtomicUsize,
    on_drain: Mutex<Option<OnDrain>>,
}

impl OfferShared {
    /// Removes the control socket file if it is still this offer's (a
    /// successor binds its own after the drain).
    fn remove_socket_file(&self) {
        if let Ok(meta) = std::fs::symlink_metadata(&self.path) {
            if meta.ino() == self.ino {
                let _ = std::fs::remove_file(&self.path);
            }
        }
    }
}

impl Offer {
    pub(super) fn start(
        lock: &LockHandle<PortGuard>,
        sockets: Vec<HandedSocket>,
        on_drain: OnDrain,
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
        // stale socket file of a crashed holder is replaced atomically, and
        // a requester never finds a half-made one.
        let temp = dir.join(format!(".serve_{port}.ctl.{}", std::process::id()));
        let _ = std::fs::remove_file(&temp);
        let listener = UnixListener::bind(&temp)?;
        let made = std::fs::set_permissions(&temp, std::fs::Permissions::from_mode(0o600))
            .and_then(|()| std::fs::rename(&temp, &path))
            .and_then(|()| std::fs::symlink_metadata(&path));
        let meta = match made {
            Ok(meta) => meta,
            Err(e) => {
                let _ = std::fs::remove_file(&temp);
                return Err(e);
            }
        };
        let shared = Arc::new(OfferShared {
            lock: lock.clone(),
            sockets: Mutex::new(sockets),
            port,
            path: path.clone(),
            ino: meta.ino(),
            closed: AtomicBool::new(false),
            successor: AtomicU32::new(0),
            peers: AtomicUsize::new(0),
            on_drain: Mutex::new(Some(on_drain)),
        });
        let accepting = Arc::clone(&shared);
        let spawned = std::thread::Builder::new()
            .name("llmlb-handover".to_owned())
            .spawn(move || accept_loop(&listener, &accepting));
        if let Err(e) = spawned {
            shared.remove_socket_file();
            return Err(e);
        }
        Ok(Offer { path, shared })
    }

    pub(super) fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for Offer {
    fn drop(&mut self) {
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

fn accept_loop(listener: &UnixListener, shared: &Arc<OfferShared>) {
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
            continue; // timeout or EINTR: look at `closed` again
        }
        let stream = match listener.accept() {
            Ok((stream, _)) => stream,
            Err(e) => {
                tracing::debug!("handover control socket: accept failed: {e}");
                continue;
            }
        };
        if shared.closed.load(Ordering::SeqCst) {
            return;
        }
        if shared.peers.fetch_add(1, Ordering::SeqCst) >= MAX_PEERS {
            shared.peers.fetch_sub(1, Ordering::SeqCst);
            continue; // dropped unanswered
        }
        let peer = Arc::clone(shared);
        let spawned = std::thread::Builder::new()
            .name("llmlb-handover-peer".to_owned())
            .spawn(move || {
                answer(stream, &peer);
                peer.peers.fetch_sub(1, Ordering::SeqCst);
            });
        if spawned.is_err() {
            shared.peers.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

/// One error reply; the connection is closed after it.
fn refuse(stream: &mut UnixStream, error: &str, extra: Option<(&str, Value)>) {
    let mut reply = json!({"llmlb_handover": PROTOCOL_VERSION, "ok": false, "error": error});
    if let Some((key, value)) = extra {
        reply[key] = value;
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
            None,
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
        refuse(
            &mut stream,
            "not a request (one JSON object per line)",
            None,
        );
        return;
    };
    let version = request.get("llmlb_handover").and_then(Value::as_u64);
    if version != Some(u64::from(PROTOCOL_VERSION)) {
        refuse(
            &mut stream,
            &format!("unsupported protocol version (this holder speaks {PROTOCOL_VERSION})"),
            None,
        );
        return;
    }
    if request.get("op").and_then(Value::as_str) != Some("request") {
        refuse(&mut stream, "unknown request", None);
        return;
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
        refuse(&mut stream, "busy", Some(("pid", json!(current))));
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
            shared.lock.with(|guard| {
                let file = guard.share_file();
                let mut fds: Vec<BorrowedFd<'_>> = vec![file.as_fd()];
                fds.extend(sockets.iter().map(|s| s.listener.as_fd()));
                send_with_fds(&stream, line.as_bytes(), &fds)
            })
        }
    };
    match sent {
        Some(Ok(())) => {}
        None => {
            refuse(&mut stream, "stopping", None);
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
    if !drain {
        // Our description was never out of our hands: writing our record
        // back makes the port ours again in every reader's eyes.
        if let Some(Err(e)) = shared.lock.with(PortGuard::restore_record) {
            tracing::warn!(
                "cannot write the record of port {port} back after an abandoned handover: {e}"
            );
        }
        tracing::warn!("PID {successor} abandoned the handover of port {port}; still serving");
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
    let _ = write_line(
        &mut stream,
        &json!({"llmlb_handover": PROTOCOL_VERSION, "ok": true, "op": "draining"}),
    );
    tracing::info!("PID {successor} serves port {port} now; draining");
    // What we sent is the successor's now; our copies close.
    lock_ignoring_poison(&shared.sockets).clear();
    let on_drain = lock_ignoring_poison(&shared.on_drain).take();
    if let Some(on_drain) = on_drain {
        on_drain(Successor { pid: successor });
    }
    // The connection stays open until this process exits: its end tells
    // the successor we are gone.
    let mut sink = [0u8; 64];
    while matches!(stream.read(&mut sink), Ok(n) if n > 0) {}
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

pub(super) fn request(
    dir: &LockDir,
    port: u16,
    timeout: Duration,
) -> Result<Requested, HandoverError> {
    let not_offered = |holder: Option<Box<crate::lock::LockInfo>>, why: String| {
        Ok(Requested::NotOffered { holder, why })
    };
    let deadline = Instant::now() + timeout;
    // A holder recorded as starting may not offer yet: a server between its
    // lock and its listener, or a successor between its predecessor's
    // control socket and its own (a few milliseconds either way). Looked
    // at again until it offers, is ready, or the time is up.
    let (info, mut stream) = loop {
        let info = match dir.probe(port)? {
            LockState::Free | LockState::Stale(_) => return Ok(Requested::NotHeld),
            LockState::Held(None) => {
                return not_offered(None, "has an unreadable record".to_owned())
            }
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
        match UnixStream::connect(control_path(dir.path(), port)) {
            Ok(stream) => break (info, stream),
            Err(_) if info.serve_state() == ServeState::Starting && Instant::now() < deadline => {
                std::thread::sleep(STARTING_RETRY);
            }
            Err(_) => {
                return not_offered(
                    Some(info),
                    "has no control socket (an older llmlb, a launcher, or a command run without a passed socket)".to_owned(),
                )
            }
        }
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
        Err(e) => {
            return Err(HandoverError::Io {
                port,
                holder: info.pid,
                source: e,
            })
        }
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
    stream
        .set_write_timeout(Some(timeout.max(Duration::from_millis(1))))
        .map_err(io_err)?;
    if write_line(&mut stream, &request).is_err() {
        return not_offered(
            Some(info),
            "closed its control socket unanswered".to_owned(),
        );
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
            return not_offered(
                Some(info),
                format!("did not answer within {}s", timeout.as_secs_f64()),
            );
        }
        stream.set_read_timeout(Some(left)).map_err(io_err)?;
        let mut chunk = [0u8; 1024];
        match recv_with_fds(&stream, &mut chunk) {
            // A holder that closes with our request unread (it died, or
            // dropped us unanswered) resets the connection instead of
            // ending it: the same answer as an end, not a failure.
            Ok((0, _)) => {
                return not_offered(
                    Some(info),
                    "closed its control socket unanswered".to_owned(),
                )
            }
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => {
                return not_offered(
                    Some(info),
                    "closed its control socket unanswered".to_owned(),
                )
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
                return not_offered(
                    Some(info),
                    format!("did not answer within {}s", timeout.as_secs_f64()),
                )
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
        if error == "busy" {
            let pid = reply.get("pid").and_then(Value::as_u64).unwrap_or(0);
            return Err(HandoverError::Busy {
                port,
                holder,
                pid: u32::try_from(pid).unwrap_or(0),
            });
        }
        return not_offered(Some(info), format!("refused the handover ({error})"));
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
    let guard = PortGuard::from_handover(dir, port, lock_file, ServeState::Starting)?;
    Ok(Requested::Received(Box::new(Received {
        guard,
        sockets,
        predecessor: super::Predecessor {
            imp: Predecessor {
                pid: holder,
                stream,
                reader,
            },
        },
    })))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lock::acquire_or_reclaim;

    /// A holder that closes the control connection with the request unread
    /// (as a holder killed mid-request does) resets it rather than ending
    /// it: that is "closed its control socket unanswered", so `serve
    /// --replace` takes its fallback instead of failing.
    #[test]
    fn a_reset_control_connection_is_not_offered() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = LockDir::create(tmp.path().join("locks")).unwrap();
        let port = 41201;
        // This process is the recorded holder, so the request gets as far
        // as the control socket.
        let _guard = acquire_or_reclaim(&dir, port).unwrap();
        let listener = UnixListener::bind(control_path(dir.path(), port)).unwrap();
        let holder = std::thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            // Wait until the request has arrived, then close unread.
            let mut fds = libc::pollfd {
                fd: stream.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd.
            assert_eq!(unsafe { libc::poll(&mut fds, 1, 10_000) }, 1);
            drop(stream);
        });
        let requested = request(&dir, port, Duration::from_secs(10));
        holder.join().unwrap();
        match requested {
            Ok(Requested::NotOffered { why, .. }) => {
                assert!(why.contains("unanswered"), "{why}");
            }
            other => panic!("expected NotOffered, got {other:?}"),
        }
    }
}
