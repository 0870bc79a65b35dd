//! In-process handover for programs that serve a port themselves
//! (`llmlb_handover_take`, `llmlb_handover_offer`, `LlmlbOffer`): the
//! program keeps its own accept loop, as with tableflip or `sd_listen_fds`,
//! and the library moves the lock and the listening socket between
//! processes exactly as `llmlb serve --replace` does. A thin shell over
//! [`llmlb::supervise::handover`] (the protocol) and
//! [`llmlb::supervise::succession`] (a server's handovers over its life):
//! no protocol here.

use std::ffi::{c_char, c_int};
use std::net::TcpListener;
use std::ptr;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use llmlb::lock::{acquire_timeout, check_port, LockDir, PortGuard, ServeState};
use llmlb::supervise::handover::{self, HandoverError, Predecessor, Requested};
use llmlb::supervise::succession::{Commit, Handovers, PortPidfile};
use llmlb::supervise::SharedLock;

use crate::boundary::{self, FfiError, Out};
use crate::dir::hand_out;
use crate::stop::LLMLB_WAIT_FOREVER;
use crate::{info_or_zero, LlmlbLock, LlmlbLockInfo, LlmlbStatus};

/// How long `llmlb_lock_release` of an offered lock waits for a successor
/// caught mid-handover to take the port or give it back, before it leaves
/// the record to it (as `llmlb serve` settles a handover at its exit).
const SETTLE: Duration = Duration::from_secs(5);

/// How often that wait looks.
const SETTLE_POLL: Duration = Duration::from_millis(10);

/// What an `LlmlbLock` holds, over a handover's life.
pub(crate) enum Held {
    /// Acquired (or taken from a free or stale port): ours alone.
    Own(PortGuard),
    /// Received from a running predecessor that serves until we offer
    /// (commit), or until the release gives the port back.
    Taken {
        guard: PortGuard,
        predecessor: Predecessor,
    },
    /// Offered to a successor (`llmlb_handover_offer`): shared with the
    /// offer's threads, which take the guard when a successor drains us.
    Offered(Offered),
    /// Between two states, only if a call failed halfway (never seen by
    /// another call: each call has the handle to itself).
    Gone,
}

/// An offered lock: the guard shared with the offer's threads, and what
/// the offer needs at the release.
pub(crate) struct Offered {
    lock: SharedLock<PortGuard>,
    handovers: Arc<Handovers>,
    drain: Arc<DrainSignal>,
    port: u16,
    /// The process that made the offer: a forked child must not withdraw
    /// it (that would remove the parent's control socket).
    pid: u32,
}

impl Held {
    /// `f` on the guard, if this process may still use it; the
    /// `HANDED_OVER` status once it went to a successor (or back to the
    /// predecessor).
    pub(crate) fn with<R>(&self, f: impl FnOnce(&PortGuard) -> R) -> Result<R, FfiError> {
        match self {
            Held::Own(guard) | Held::Taken { guard, .. } => Ok(f(guard)),
            Held::Offered(offered) => offered.lock.with(|g| f(g)).ok_or_else(|| gone(offered)),
            Held::Gone => Err(FfiError::invalid("the lock was lost by a failed call")),
        }
    }

    /// As [`with`](Self::with), mutably: a write to the record goes
    /// through here, and never happens once the port is a successor's.
    pub(crate) fn with_mut<R>(
        &mut self,
        f: impl FnOnce(&mut PortGuard) -> R,
    ) -> Result<R, FfiError> {
        match self {
            Held::Own(guard) | Held::Taken { guard, .. } => Ok(f(guard)),
            Held::Offered(offered) => offered.lock.with(f).ok_or_else(|| gone(offered)),
            Held::Gone => Err(FfiError::invalid("the lock was lost by a failed call")),
        }
    }

    /// The guard of a lock never taken over nor offered, for the calls that
    /// hand its descriptor out or change its owner (`llmlb_lock_fd`,
    /// `llmlb_lock_adopt`): a lock in a handover is shared with another
    /// process already.
    pub(crate) fn own(&mut self, call: &str) -> Result<&mut PortGuard, FfiError> {
        match self {
            Held::Own(guard) => Ok(guard),
            _ => Err(FfiError::invalid(format!(
                "{call} is not for a lock taken over or offered (llmlb_handover_take, llmlb_handover_offer): its descriptor is shared with another server's"
            ))),
        }
    }

    /// Lets go of the lock as its state requires: a port taken over and not
    /// committed goes back to the predecessor, which serves on; one drained
    /// by a successor is the successor's (nothing is written or removed);
    /// any other is released (the file removed).
    pub(crate) fn release(self) -> Result<(), FfiError> {
        match self {
            Held::Own(guard) => Ok(guard.release()?),
            Held::Taken { guard, predecessor } => {
                // Our descriptor closes first, without a write (the
                // predecessor shares it); then the connection, whose end
                // tells the predecessor to write its record back.
                guard.abandon();
                // (Windows' Predecessor owns nothing: it is never made there.)
                #[allow(clippy::drop_non_drop)]
                drop(predecessor);
                Ok(())
            }
            Held::Offered(offered) => offered.release(),
            Held::Gone => Ok(()),
        }
    }
}

/// The status of a lock that went to a successor.
fn gone(offered: &Offered) -> FfiError {
    let port = offered.port;
    FfiError {
        status: LlmlbStatus::LLMLB_STATUS_HANDED_OVER,
        message: match offered.drain.successor() {
            Some(pid) => format!(
                "port {port} was handed over to PID {pid}; its record is that process's, and nothing was written"
            ),
            None => format!("port {port} is no longer this process's; nothing was written"),
        },
    }
}

impl Offered {
    fn release(self) -> Result<(), FfiError> {
        if self.pid != std::process::id() {
            // A forked child: the offer, its threads and its control socket
            // are the parent's. The guard's release only closes the child's
            // descriptor (it records another process).
            std::mem::forget(self.handovers);
            return match self.lock.release() {
                Some(result) => Ok(result?),
                None => Ok(()),
            };
        }
        // Within the grace window (or before it): the predecessor gets its
        // port back and serves on.
        if self.handovers.abort().is_some() {
            return Ok(());
        }
        self.handovers.withdraw();
        // A successor holding our descriptor on probation decides first:
        // if it takes the port, the record is its own; if it gives it back,
        // ours to remove.
        let deadline = Instant::now() + SETTLE;
        while self.lock.with(|g| g.is_handed_on()) == Some(true) && Instant::now() < deadline {
            std::thread::sleep(SETTLE_POLL);
        }
        if self.lock.with(|g| g.is_handed_on()) == Some(true) {
            // Left to the successor: closing our descriptor removes nothing.
            if let Some(guard) = self.lock.handle().take() {
                guard.abandon();
            }
            return Ok(());
        }
        match self.lock.release() {
            Some(result) => Ok(result?),
            // Drained: the port (and its record) are the successor's.
            None => Ok(()),
        }
    }
}

/// When a successor has taken the port: told once, by the offer's thread.
struct DrainSignal {
    /// The successor's PID, 0 until then.
    successor: Mutex<u32>,
    told: Condvar,
    /// Readable once drained: a byte is written and the writing end closed,
    /// so it stays readable (level-triggered) for poll, select, epoll and
    /// asyncio's `add_reader`.
    #[cfg(unix)]
    readable: std::os::unix::net::UnixStream,
    #[cfg(unix)]
    writer: Mutex<Option<std::os::unix::net::UnixStream>>,
}

impl DrainSignal {
    fn new() -> std::io::Result<DrainSignal> {
        // A socket pair rather than a pipe: std makes it close-on-exec on
        // every Unix, within our rust-version.
        #[cfg(unix)]
        let (readable, writer) = std::os::unix::net::UnixStream::pair()?;
        Ok(DrainSignal {
            successor: Mutex::new(0),
            told: Condvar::new(),
            #[cfg(unix)]
            readable,
            #[cfg(unix)]
            writer: Mutex::new(Some(writer)),
        })
    }

    fn fire(&self, successor: u32) {
        // The descriptor first: whoever learns of the drain from a poll
        // finds it readable too.
        #[cfg(unix)]
        if let Some(mut writer) = lock(&self.writer).take() {
            use std::io::Write as _;
            // Best effort: the close that follows makes the other end
            // readable whatever the write did.
            let _ = writer.write_all(&[1]);
        }
        *lock(&self.successor) = successor.max(1);
        self.told.notify_all();
    }

    fn successor(&self) -> Option<u32> {
        Some(*lock(&self.successor)).filter(|&pid| pid != 0)
    }

    /// Waits up to `timeout` for the drain; the successor's PID if it came.
    fn wait(&self, timeout: Duration) -> Option<u32> {
        let deadline = Instant::now().checked_add(timeout);
        let mut successor = lock(&self.successor);
        loop {
            if *successor != 0 {
                return Some(*successor);
            }
            let left = match deadline {
                Some(deadline) => deadline.saturating_duration_since(Instant::now()),
                None => Duration::from_secs(3600),
            };
            if left.is_zero() {
                return None;
            }
            successor = self
                .told
                .wait_timeout(successor, left)
                .map_or_else(|poisoned| poisoned.into_inner().0, |(s, _)| s);
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// An offer of a lock and its listening socket to a future successor
/// (opaque). Created by `llmlb_handover_offer`, freed by `llmlb_offer_free`.
pub struct LlmlbOffer {
    handovers: Arc<Handovers>,
    drain: Arc<DrainSignal>,
    pid: u32,
}

impl From<HandoverError> for FfiError {
    /// Busy or unanswered: try again later; anything else: the port could
    /// not be received, and the holder serves on.
    fn from(err: HandoverError) -> FfiError {
        let status = match err {
            HandoverError::Lock(e) => return e.into(),
            HandoverError::Busy { .. } | HandoverError::Unanswered { .. } => {
                LlmlbStatus::LLMLB_STATUS_BUSY
            }
            _ => LlmlbStatus::LLMLB_STATUS_IO_ERROR,
        };
        FfiError {
            status,
            message: err.to_string(),
        }
    }
}

/// Takes `port` over from the server that holds it, receiving its lock and
/// its listening socket, without a refused connection: `llmlb serve
/// --replace`'s handover, for a program that serves the port itself (it
/// keeps its own accept loop).
///
/// - The holder offers a handover (an `llmlb serve`, or a program that
///   called `llmlb_handover_offer`): `LLMLB_STATUS_OK`; `*out_lock` is the
///   lock, its record naming this process, `STARTING`; `*out_fd` is the
///   holder's listening socket, a new close-on-exec descriptor owned by the
///   caller; `*out_other` has the holder's `pid` and `port` (the rest
///   zero). The holder keeps serving on the same socket until this process
///   commits with `llmlb_handover_offer`; `llmlb_lock_release` before that
///   gives the port back, and the holder serves on.
/// - Nobody holds the port (free, or stale): it is taken as
///   `llmlb_lock_acquire_with_state` takes it with `STARTING` (tried once),
///   and `*out_fd` is -1: bind the port yourself. `*out_other` as in
///   `llmlb_lock_acquire` (a dead holder's info for a reclaimed lock).
/// - The holder offers no handover (no control socket: an older llmlb, a
///   launcher, exec mode without a passed socket; another host or PID
///   namespace; Windows): `LLMLB_STATUS_ALREADY_RUNNING` with its info in
///   `*out_other`. Nothing is stopped: a library call never stops a server
///   (`llmlb stop` does).
/// - Another successor is taking the port over, or the holder did not
///   answer within `timeout_ms`: `LLMLB_STATUS_BUSY`; nothing was taken or
///   stopped. Try again later.
///
/// The listening socket's open file description is shared with the
/// holder: its status flags (`O_NONBLOCK`) are shared too, and both
/// processes accept from the same queue until the holder drains. Accept
/// without blocking (poll, then accept, taking `EAGAIN` as "another
/// process was first"), and never `shutdown()` the listening socket
/// (close it).
///
/// `timeout_ms` bounds the exchange with the holder. `lock_dir` as in
/// `llmlb_lock_acquire` (NULL: the default). Port 0, a NULL `out_lock` or
/// `out_fd`, or a misaligned out parameter gives
/// `LLMLB_STATUS_INVALID_ARGUMENT`. On every status but OK, `*out_lock` is
/// NULL and `*out_fd` is -1 (whichever is writable); `*out_other` (when
/// not NULL) is zeroed except as said above.
///
/// Threads: safe to call from any thread.
///
/// # Safety
/// `lock_dir` is NULL or a NUL-terminated string; `out_lock` is NULL or
/// valid for writing a pointer; `out_fd` is NULL or valid for writing an
/// `int`; `out_other` is NULL or valid for writing an `LlmlbLockInfo`.
#[no_mangle]
pub unsafe extern "C" fn llmlb_handover_take(
    lock_dir: *const c_char,
    port: u16,
    timeout_ms: u32,
    out_lock: *mut *mut LlmlbLock,
    out_fd: *mut c_int,
    out_other: *mut LlmlbLockInfo,
) -> LlmlbStatus {
    boundary::status("llmlb_handover_take", || {
        // Every usable output is cleared before any check may fail.
        // SAFETY: the caller's contract above.
        let other = unsafe { Out::optional(out_other, "out_other") };
        // SAFETY: the caller's contract above.
        let lock = unsafe { Out::required(out_lock, "out_lock") };
        // SAFETY: the caller's contract above.
        let fd = unsafe { Out::required(out_fd, "out_fd") };
        let (mut other, mut lock, mut fd) = {
            let (mut other, mut lock, mut fd) = (other, lock, fd);
            if let Ok(Some(other)) = &mut other {
                other.write(LlmlbLockInfo::default());
            }
            if let Ok(lock) = &mut lock {
                lock.write(ptr::null_mut());
            }
            if let Ok(fd) = &mut fd {
                fd.write(-1);
            }
            (other?, lock?, fd?)
        };
        let port = check_port(port)?;
        // SAFETY: the caller's contract above.
        let dir = LockDir::create(unsafe { boundary::lock_dir(lock_dir) }?)?
            .announcing(ServeState::Starting);
        let timeout = Duration::from_millis(timeout_ms.into());
        match handover::request(&dir, port, timeout)? {
            Requested::Received(received) => {
                let received = *received;
                let pid = received.predecessor.pid();
                let Some(socket) = received.sockets.into_iter().next() else {
                    // Nothing to serve on: the port goes back at once.
                    received.guard.abandon();
                    #[allow(clippy::drop_non_drop)]
                    drop(received.predecessor);
                    if let Some(other) = other.as_mut() {
                        other.write(LlmlbLockInfo {
                            pid,
                            port,
                            ..LlmlbLockInfo::default()
                        });
                    }
                    return Err(FfiError {
                        status: LlmlbStatus::LLMLB_STATUS_ALREADY_RUNNING,
                        message: format!(
                            "PID {pid} holds port {port} and offered a handover without a listening socket; it keeps serving"
                        ),
                    });
                };
                let raw = listener_fd(socket.listener);
                if let Some(other) = other.as_mut() {
                    other.write(LlmlbLockInfo {
                        pid,
                        port,
                        ..LlmlbLockInfo::default()
                    });
                }
                fd.write(raw);
                lock.write(Box::into_raw(Box::new(LlmlbLock {
                    held: Held::Taken {
                        guard: received.guard,
                        predecessor: received.predecessor,
                    },
                })));
                Ok(())
            }
            Requested::NotHeld => hand_out(
                acquire_timeout(&dir, port, Duration::ZERO),
                &mut lock,
                &mut other,
            ),
            Requested::NotOffered { holder, why } => {
                if let Some(other) = other.as_mut() {
                    other.write(info_or_zero(holder.as_deref()));
                }
                let who = holder.map_or_else(|| "a process".to_owned(), |h| format!("PID {}", h.pid));
                Err(FfiError {
                    status: LlmlbStatus::LLMLB_STATUS_ALREADY_RUNNING,
                    message: format!(
                        "{who} holds port {port}, but it {why}; nothing was taken or stopped (stop it first: llmlb stop --port {port})"
                    ),
                })
            }
            // Requested is non-exhaustive: a new outcome takes nothing.
            _ => Err(FfiError {
                status: LlmlbStatus::LLMLB_STATUS_IO_ERROR,
                message: format!("the handover of port {port} ended in a way this library does not know; nothing was taken"),
            }),
        }
    })
}

/// The caller's descriptor for a received listening socket.
#[cfg(unix)]
fn listener_fd(listener: TcpListener) -> c_int {
    use std::os::fd::IntoRawFd as _;
    // Received with MSG_CMSG_CLOEXEC: close-on-exec already.
    listener.into_raw_fd()
}

/// Never reached: nothing is received where descriptors cannot be passed.
#[cfg(not(unix))]
fn listener_fd(_listener: TcpListener) -> c_int {
    -1
}

/// Offers this lock and its listening socket `listen_fd` to a future
/// successor (one that calls `llmlb_handover_take`, or `llmlb serve
/// --replace`), and commits a takeover: call it once the program accepts
/// on `listen_fd` (the socket received from `llmlb_handover_take`, or one
/// it bound itself on the lock's port).
///
/// It records `READY` and starts the offer. For a lock from
/// `llmlb_handover_take` that received its port, it then commits: once
/// this process has stayed up for `grace_ms` (`llmlb serve
/// --replace-grace`; 0 commits at once) the predecessor is told to drain,
/// and the port is this process's; a `llmlb_lock_release` before that
/// gives the port back to the predecessor, which serves on. The commit
/// runs on a thread of the library's: this call does not wait for it.
///
/// On `LLMLB_STATUS_OK`, `*out_offer` is the offer, owned by the caller:
/// watch it (`llmlb_offer_fd`, `llmlb_offer_poll`) for a successor; when
/// one has taken the port, stop accepting, finish the requests in flight,
/// close your copies of the socket, and call `llmlb_lock_release` (which
/// then writes and removes nothing: the lock file is the successor's),
/// then `llmlb_offer_free`. To stop without a successor, call
/// `llmlb_offer_free` (withdraws the offer) and then `llmlb_lock_release`.
///
/// `listen_fd` stays the caller's: the library keeps a duplicate for the
/// successor, closed when the offer is withdrawn or taken. It must be a
/// listening TCP socket bound to the lock's port: -1 (there is nothing to
/// hand over without it), another descriptor, or another port gives
/// `LLMLB_STATUS_INVALID_ARGUMENT`, as do a NULL `lock` or `out_offer`,
/// and a lock offered already. A lock handed over already gives
/// `LLMLB_STATUS_HANDED_OVER`. A control socket that cannot be made (a lock
/// dir path too long for a Unix socket, a read-only dir) gives
/// `LLMLB_STATUS_IO_ERROR`, commits nothing, and leaves the lock to be
/// released (a takeover then goes back to the predecessor). Windows:
/// `LLMLB_STATUS_UNSUPPORTED` (no descriptor passing); nothing changes.
/// `*out_offer` is NULL on every status but OK.
///
/// Threads: do not use the lock concurrently with any other call on it.
/// Fork: an offer belongs to the process that made it.
///
/// # Safety
/// `lock` is NULL or a live handle; `out_offer` is NULL or valid for
/// writing a pointer.
#[no_mangle]
pub unsafe extern "C" fn llmlb_handover_offer(
    lock: *mut LlmlbLock,
    listen_fd: c_int,
    grace_ms: u32,
    out_offer: *mut *mut LlmlbOffer,
) -> LlmlbStatus {
    boundary::status("llmlb_handover_offer", || {
        // SAFETY: the caller's contract above.
        let mut out = unsafe { Out::required(out_offer, "out_offer") }?;
        out.write(ptr::null_mut());
        // SAFETY: the caller's contract above.
        let lock = unsafe { boundary::handle_mut(lock, "lock") }?;
        if !handover::SUPPORTED {
            return Err(FfiError {
                status: LlmlbStatus::LLMLB_STATUS_UNSUPPORTED,
                message: "llmlb_handover_offer: handing a port over needs descriptor passing, which this platform lacks; the lock is unchanged".to_owned(),
            });
        }
        let (port, from) = match &lock.held {
            Held::Own(guard) => (guard.port(), None),
            Held::Taken { guard, predecessor } => (guard.port(), Some(predecessor.pid())),
            Held::Offered(offered) => {
                // A lock handed over says so rather than "offered already".
                lock.held.with(|_| ())?;
                return Err(FfiError::invalid(format!(
                    "port {} is offered already; one offer per lock",
                    offered.port
                )));
            }
            Held::Gone => return Err(FfiError::invalid("the lock was lost by a failed call")),
        };
        if listen_fd < 0 {
            return Err(FfiError::invalid(format!(
                "listen_fd is {listen_fd}; pass the listening socket this program accepts on for port {port} (without one there is nothing to hand over)"
            )));
        }
        let listener = match llmlb::supervise::activation::copy_listener(listen_fd) {
            Ok((listener, bound)) if bound == port => listener,
            Ok((_, bound)) => {
                return Err(FfiError::invalid(format!(
                    "listen_fd {listen_fd} listens on port {bound}, not on the lock's port {port}"
                )))
            }
            Err(llmlb::supervise::activation::ActivationError::NotTcpListener(why)) => {
                return Err(FfiError::invalid(format!(
                    "listen_fd {listen_fd} is {why}; pass the listening TCP socket this program accepts on for port {port}"
                )))
            }
            Err(e) => {
                return Err(FfiError {
                    status: LlmlbStatus::LLMLB_STATUS_IO_ERROR,
                    message: format!("cannot keep a copy of listen_fd {listen_fd} (port {port}) for a successor: {e}"),
                })
            }
        };
        let drain = Arc::new(DrainSignal::new().map_err(|e| FfiError {
            status: LlmlbStatus::LLMLB_STATUS_IO_ERROR,
            message: format!("cannot make the drain notification of port {port}: {e}"),
        })?);
        // No pidfile: a program that wants one writes its own.
        let pidfile = PortPidfile::start(None, from).map_err(|e| FfiError {
            status: LlmlbStatus::LLMLB_STATUS_IO_ERROR,
            message: e.to_string(),
        })?;
        lock.held.with_mut(|g| g.set_state(ServeState::Ready))??;
        let (guard, predecessor) = match std::mem::replace(&mut lock.held, Held::Gone) {
            Held::Own(guard) => (guard, None),
            Held::Taken { guard, predecessor } => (guard, Some(predecessor)),
            _ => unreachable!("checked above"),
        };
        let shared = SharedLock::new(guard);
        let signal = Arc::clone(&drain);
        let handovers = Handovers::new(
            &shared,
            port,
            &[(&listener, llmlb::supervise::socket_pass::DEFAULT_NAME)],
            predecessor,
            &pidfile,
            move |successor| signal.fire(successor),
        );
        drop(listener);
        let offered = handovers.is_offered();
        if offered {
            handovers.ready(Commit {
                grace: Duration::from_millis(grace_ms.into()),
                ..Commit::default()
            });
        }
        let pid = std::process::id();
        lock.held = Held::Offered(Offered {
            lock: shared,
            handovers: Arc::clone(&handovers),
            drain: Arc::clone(&drain),
            port,
            pid,
        });
        if !offered {
            let dir = lock
                .held
                .with(|g| g.path().parent().map(|p| p.display().to_string()))?;
            return Err(FfiError {
                status: LlmlbStatus::LLMLB_STATUS_IO_ERROR,
                message: format!(
                    "cannot offer port {port}: its control socket in {} could not be made (a lock dir path too long for a Unix socket, or a read-only dir); nothing was committed, release the lock",
                    dir.unwrap_or_default()
                ),
            });
        }
        out.write(Box::into_raw(Box::new(LlmlbOffer {
            handovers,
            drain,
            pid,
        })));
        Ok(())
    })
}

/// A descriptor that becomes readable once a successor has taken the port
/// (and stays readable): for poll, select, epoll, or Python's
/// `loop.add_reader`. Owned by the offer: never read from it, never close
/// it; it is valid until `llmlb_offer_free`. -1 for a NULL `offer` (with
/// `llmlb_last_error` set).
///
/// Threads: safe to call from any thread.
///
/// # Safety
/// `offer` is NULL or a live offer.
#[no_mangle]
pub unsafe extern "C" fn llmlb_offer_fd(offer: *const LlmlbOffer) -> c_int {
    boundary::guard("llmlb_offer_fd", -1, || {
        // SAFETY: the caller's contract above.
        match unsafe { boundary::required_ref(offer, "offer") } {
            Ok(offer) => offer_fd(offer),
            Err(err) => {
                boundary::set_last_error(&format!("llmlb_offer_fd: {}", err.message));
                -1
            }
        }
    })
}

#[cfg(unix)]
fn offer_fd(offer: &LlmlbOffer) -> c_int {
    use std::os::fd::AsRawFd as _;
    offer.drain.readable.as_raw_fd()
}

#[cfg(not(unix))]
fn offer_fd(_offer: &LlmlbOffer) -> c_int {
    -1
}

/// Waits up to `timeout_ms` milliseconds for a successor to take the port
/// (0 only looks; `LLMLB_WAIT_FOREVER` waits without a limit):
/// `*out_successor_pid` is then its PID, or 0 if none has (yet). Once
/// taken, every call reports it at once.
///
/// NULL `offer` or `out_successor_pid` gives
/// `LLMLB_STATUS_INVALID_ARGUMENT`; `*out_successor_pid` is written (0) on
/// every status when it is non-NULL and aligned.
///
/// Threads: safe to call from any thread, also while another thread uses
/// the lock; not concurrently with `llmlb_offer_free`.
///
/// # Safety
/// `offer` is NULL or a live offer; `out_successor_pid` is NULL or valid
/// for writing a `uint32_t`.
#[no_mangle]
pub unsafe extern "C" fn llmlb_offer_poll(
    offer: *const LlmlbOffer,
    timeout_ms: u32,
    out_successor_pid: *mut u32,
) -> LlmlbStatus {
    boundary::status("llmlb_offer_poll", || {
        // SAFETY: the caller's contract above.
        let out = unsafe { Out::optional(out_successor_pid, "out_successor_pid") }?;
        let mut out = out.ok_or_else(|| FfiError::invalid("out_successor_pid is NULL"))?;
        out.write(0);
        // SAFETY: the caller's contract above.
        let offer = unsafe { boundary::required_ref(offer, "offer") }?;
        let timeout = match timeout_ms {
            LLMLB_WAIT_FOREVER => Duration::MAX,
            ms => Duration::from_millis(ms.into()),
        };
        if let Some(pid) = offer.drain.wait(timeout) {
            out.write(pid);
        }
        Ok(())
    })
}

/// Frees the offer. One not taken by a successor is withdrawn (its control
/// socket removed, the library's copy of the listening socket closed), so
/// a later `llmlb_lock_release` frees the port for anyone; a takeover not
/// yet committed (within `grace_ms`) is then given back to the predecessor
/// at the release. NULL is a no-op. The lock is unaffected otherwise.
///
/// Threads: not concurrently with other calls on the offer.
///
/// # Safety
/// `offer` is NULL or a live offer, not used again after this call.
#[no_mangle]
pub unsafe extern "C" fn llmlb_offer_free(offer: *mut LlmlbOffer) {
    boundary::guard("llmlb_offer_free", (), || {
        if offer.is_null() || !offer.is_aligned() {
            return;
        }
        // SAFETY: a live offer from llmlb_handover_offer (the caller's
        // contract), checked non-NULL and aligned; ownership comes back here.
        let offer = unsafe { Box::from_raw(offer) };
        if offer.pid != std::process::id() {
            // A forked child's copy: the offer is the parent's.
            std::mem::forget(offer.handovers);
            return;
        }
        offer.handovers.withdraw();
    });
}

#[cfg(all(test, unix))]
mod tests {
    use std::ffi::CString;
    use std::os::fd::{AsRawFd as _, FromRawFd as _};

    use llmlb::lock::{LockState, ServeState};

    use super::*;
    use crate::{llmlb_lock_acquire, llmlb_lock_info, llmlb_lock_release, llmlb_lock_set_state};

    const PATIENCE: Duration = Duration::from_secs(10);

    struct Dir {
        _tmp: tempfile::TempDir,
        path: CString,
        dir: LockDir,
    }

    fn dir() -> Dir {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("locks");
        let dir = LockDir::create(&path).unwrap();
        Dir {
            path: CString::new(path.to_str().unwrap()).unwrap(),
            _tmp: tmp,
            dir,
        }
    }

    fn record(dir: &LockDir, port: u16) -> llmlb::lock::LockInfo {
        match dir.probe(port).unwrap() {
            LockState::Held(Some(info)) => info,
            other => panic!("expected port {port} held with a record, got {other:?}"),
        }
    }

    /// A listening socket on a port nobody else uses, and that port.
    fn bound() -> (TcpListener, u16) {
        let listener = TcpListener::bind(("127.0.0.1", 0)).unwrap();
        let port = listener.local_addr().unwrap().port();
        (listener, port)
    }

    fn take(dir: &Dir, port: u16) -> (LlmlbStatus, *mut LlmlbLock, c_int, LlmlbLockInfo) {
        let (mut lock, mut fd, mut other) = (ptr::null_mut(), 7, LlmlbLockInfo::default());
        // SAFETY: a valid path and out pointers.
        let status = unsafe {
            llmlb_handover_take(
                dir.path.as_ptr(),
                port,
                5000,
                &mut lock,
                &mut fd,
                &mut other,
            )
        };
        (status, lock, fd, other)
    }

    fn offer(lock: *mut LlmlbLock, fd: c_int, grace_ms: u32) -> (LlmlbStatus, *mut LlmlbOffer) {
        let mut offer = ptr::null_mut();
        // SAFETY: a live lock (or NULL) and a valid out pointer.
        let status = unsafe { llmlb_handover_offer(lock, fd, grace_ms, &mut offer) };
        (status, offer)
    }

    fn poll(offer: *const LlmlbOffer, timeout_ms: u32) -> u32 {
        let mut pid = 7;
        // SAFETY: a live offer and a valid out pointer.
        let status = unsafe { llmlb_offer_poll(offer, timeout_ms, &mut pid) };
        assert_eq!(status, LlmlbStatus::LLMLB_STATUS_OK);
        pid
    }

    /// Whether the drain descriptor `fd` is readable now: a read on a
    /// non-blocking duplicate (after the drain, its byte then end of file).
    fn readable(fd: c_int) -> bool {
        // SAFETY: the offer's live descriptor, borrowed for the duplication.
        let copy = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) }
            .try_clone_to_owned()
            .unwrap();
        let mut stream = std::os::unix::net::UnixStream::from(copy);
        stream.set_nonblocking(true).unwrap();
        match std::io::Read::read(&mut stream, &mut [0u8]) {
            Ok(_) => true,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => false,
            Err(e) => panic!("read on the drain fd: {e}"),
        }
    }

    #[test]
    fn a_free_port_is_taken_for_binding_and_offered_and_a_second_program_takes_it_over() {
        let d = dir();
        let (listener, port) = bound();
        let (status, first, fd, other) = take(&d, port);
        assert_eq!(status, LlmlbStatus::LLMLB_STATUS_OK);
        assert_eq!(fd, -1, "a free port: bind it yourself");
        assert_eq!(other, LlmlbLockInfo::default());
        assert_eq!(record(&d.dir, port).state, Some(ServeState::Starting));

        let (status, first_offer) = offer(first, listener.as_raw_fd(), 0);
        assert_eq!(status, LlmlbStatus::LLMLB_STATUS_OK);
        assert_eq!(record(&d.dir, port).state, Some(ServeState::Ready));
        assert_eq!(poll(first_offer, 0), 0, "nobody took it yet");
        // SAFETY: a live offer.
        let drain_fd = unsafe { llmlb_offer_fd(first_offer) };
        assert!(drain_fd >= 0);
        assert!(!readable(drain_fd));

        // The successor (here the same process, as the library's own tests
        // do) receives the very socket and the lock.
        let (status, second, fd, other) = take(&d, port);
        assert_eq!(status, LlmlbStatus::LLMLB_STATUS_OK, "{}", last());
        assert!(fd >= 0);
        assert_eq!((other.pid, other.port), (std::process::id(), port));
        // SAFETY: a descriptor the call gave us to own.
        let received = unsafe { TcpListener::from_raw_fd(fd) };
        assert_eq!(
            received.local_addr().unwrap(),
            listener.local_addr().unwrap()
        );
        assert_eq!(record(&d.dir, port).state, Some(ServeState::Starting));
        // Not committed: the first is not told to drain.
        assert_eq!(poll(first_offer, 100), 0);

        let (status, second_offer) = offer(second, received.as_raw_fd(), 0);
        assert_eq!(status, LlmlbStatus::LLMLB_STATUS_OK, "{}", last());
        assert_eq!(poll(first_offer, 10_000), std::process::id());
        assert!(readable(drain_fd), "the drain fd is readable once drained");
        assert!(readable(drain_fd), "and stays so");

        // The drained lock writes nothing more and removes nothing.
        // SAFETY: live handles.
        unsafe {
            assert_eq!(
                llmlb_lock_set_state(first, 2),
                LlmlbStatus::LLMLB_STATUS_HANDED_OVER
            );
            let mut info = LlmlbLockInfo::default();
            assert_eq!(
                llmlb_lock_info(first, &mut info),
                LlmlbStatus::LLMLB_STATUS_HANDED_OVER
            );
            assert_eq!(llmlb_lock_release(first), LlmlbStatus::LLMLB_STATUS_OK);
            llmlb_offer_free(first_offer);
        }
        assert_eq!(record(&d.dir, port).state, Some(ServeState::Ready));
        assert_eq!(poll(second_offer, 0), 0);
        // SAFETY: live handles, each freed once.
        unsafe {
            llmlb_offer_free(second_offer);
            assert_eq!(llmlb_lock_release(second), LlmlbStatus::LLMLB_STATUS_OK);
        }
        assert_eq!(d.dir.probe(port).unwrap(), LockState::Free);
    }

    #[test]
    fn a_release_before_the_offer_or_within_the_grace_gives_the_port_back() {
        let d = dir();
        let (listener, port) = bound();
        let mut holder = ptr::null_mut();
        // SAFETY: valid arguments.
        let status =
            unsafe { llmlb_lock_acquire(d.path.as_ptr(), port, &mut holder, ptr::null_mut()) };
        assert_eq!(status, LlmlbStatus::LLMLB_STATUS_OK);
        let (status, holder_offer) = offer(holder, listener.as_raw_fd(), 0);
        assert_eq!(status, LlmlbStatus::LLMLB_STATUS_OK);
        let before = record(&d.dir, port);

        for grace_ms in [None, Some(60_000)] {
            let (status, taker, fd, _) = take(&d, port);
            assert_eq!(status, LlmlbStatus::LLMLB_STATUS_OK, "{}", last());
            assert_eq!(record(&d.dir, port).pid, std::process::id());
            // SAFETY: ours to own.
            let received = unsafe { TcpListener::from_raw_fd(fd) };
            let taker_offer = grace_ms.map(|grace| {
                let (status, o) = offer(taker, received.as_raw_fd(), grace);
                assert_eq!(status, LlmlbStatus::LLMLB_STATUS_OK);
                o
            });
            // SAFETY: a live handle, released once.
            assert_eq!(
                unsafe { llmlb_lock_release(taker) },
                LlmlbStatus::LLMLB_STATUS_OK
            );
            // The release alone gives it back (the offer, still alive,
            // keeps nothing of the predecessor's).
            let deadline = Instant::now() + PATIENCE;
            while record(&d.dir, port).state != Some(ServeState::Ready)
                || record(&d.dir, port).started_at != before.started_at
            {
                assert!(
                    Instant::now() < deadline,
                    "the holder never got its record back"
                );
                std::thread::sleep(Duration::from_millis(5));
            }
            assert_eq!(
                poll(holder_offer, 0),
                0,
                "the holder was never told to drain"
            );
            if let Some(o) = taker_offer {
                // SAFETY: a live offer.
                unsafe { llmlb_offer_free(o) };
            }
        }
        // The holder serves on and can still be taken over.
        let (status, again, _fd, _) = take(&d, port);
        assert_eq!(status, LlmlbStatus::LLMLB_STATUS_OK);
        // SAFETY: live handles, each freed once.
        unsafe {
            assert_eq!(llmlb_lock_release(again), LlmlbStatus::LLMLB_STATUS_OK);
            llmlb_offer_free(holder_offer);
            assert_eq!(llmlb_lock_release(holder), LlmlbStatus::LLMLB_STATUS_OK);
        }
        assert_eq!(d.dir.probe(port).unwrap(), LockState::Free);
    }

    #[test]
    fn a_holder_without_an_offer_is_already_running_and_a_second_taker_is_busy() {
        let d = dir();
        let (listener, port) = bound();
        let mut holder = ptr::null_mut();
        // SAFETY: valid arguments.
        let status =
            unsafe { llmlb_lock_acquire(d.path.as_ptr(), port, &mut holder, ptr::null_mut()) };
        assert_eq!(status, LlmlbStatus::LLMLB_STATUS_OK);
        let (status, lock, fd, other) = take(&d, port);
        assert_eq!(status, LlmlbStatus::LLMLB_STATUS_ALREADY_RUNNING);
        assert!(lock.is_null());
        assert_eq!(fd, -1);
        assert_eq!(other.pid, std::process::id());
        assert!(last().contains("no control socket"), "{}", last());

        let (status, holder_offer) = offer(holder, listener.as_raw_fd(), 0);
        assert_eq!(status, LlmlbStatus::LLMLB_STATUS_OK);
        let (status, first, _fd, _) = take(&d, port);
        assert_eq!(status, LlmlbStatus::LLMLB_STATUS_OK);
        let (status, second, fd, _) = take(&d, port);
        assert_eq!(status, LlmlbStatus::LLMLB_STATUS_BUSY, "{}", last());
        assert!(second.is_null());
        assert_eq!(fd, -1);
        // SAFETY: live handles, each freed once.
        unsafe {
            assert_eq!(llmlb_lock_release(first), LlmlbStatus::LLMLB_STATUS_OK);
            llmlb_offer_free(holder_offer);
            assert_eq!(llmlb_lock_release(holder), LlmlbStatus::LLMLB_STATUS_OK);
        }
    }

    #[test]
    fn bad_arguments_are_refused_with_outputs_cleared() {
        let d = dir();
        let (listener, port) = bound();
        let mut fd = 7;
        // SAFETY: NULL where the contract allows a check, valid pointers elsewhere.
        unsafe {
            assert_eq!(
                llmlb_handover_take(
                    d.path.as_ptr(),
                    port,
                    0,
                    ptr::null_mut(),
                    &mut fd,
                    ptr::null_mut()
                ),
                LlmlbStatus::LLMLB_STATUS_INVALID_ARGUMENT
            );
            assert_eq!(fd, -1, "out_fd cleared even when out_lock is NULL");
            let mut lock = 8 as *mut LlmlbLock;
            assert_eq!(
                llmlb_handover_take(
                    d.path.as_ptr(),
                    port,
                    0,
                    &mut lock,
                    ptr::null_mut(),
                    ptr::null_mut()
                ),
                LlmlbStatus::LLMLB_STATUS_INVALID_ARGUMENT
            );
            assert!(lock.is_null());
            assert_eq!(
                llmlb_handover_take(d.path.as_ptr(), 0, 0, &mut lock, &mut fd, ptr::null_mut()),
                LlmlbStatus::LLMLB_STATUS_INVALID_ARGUMENT
            );
            assert_eq!(
                llmlb_handover_take(
                    c"relative".as_ptr(),
                    port,
                    0,
                    &mut lock,
                    &mut fd,
                    ptr::null_mut()
                ),
                LlmlbStatus::LLMLB_STATUS_INVALID_ARGUMENT
            );
            let mut out = 8 as *mut LlmlbOffer;
            assert_eq!(
                llmlb_handover_offer(ptr::null_mut(), listener.as_raw_fd(), 0, &mut out),
                LlmlbStatus::LLMLB_STATUS_INVALID_ARGUMENT
            );
            assert!(out.is_null());
            assert_eq!(llmlb_offer_fd(ptr::null()), -1);
            assert!(last().contains("offer is NULL"), "{}", last());
            let mut pid = 7;
            assert_eq!(
                llmlb_offer_poll(ptr::null(), 0, &mut pid),
                LlmlbStatus::LLMLB_STATUS_INVALID_ARGUMENT
            );
            assert_eq!(pid, 0);
            llmlb_offer_free(ptr::null_mut());
        }

        let (status, lock, fd, _) = take(&d, port);
        assert_eq!((status, fd), (LlmlbStatus::LLMLB_STATUS_OK, -1));
        // Nothing to hand over, not a listening socket, another port: each
        // refused, and the lock is as it was.
        let (other_listener, other_port) = bound();
        let file = std::fs::File::open("/dev/null").unwrap();
        let connected = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        for (bad, says) in [
            (-1, "nothing to hand over".to_owned()),
            (file.as_raw_fd(), "not a socket".to_owned()),
            (connected.as_raw_fd(), "not listening".to_owned()),
            (other_listener.as_raw_fd(), format!("port {other_port}")),
        ] {
            let (status, o) = offer(lock, bad, 0);
            assert_eq!(status, LlmlbStatus::LLMLB_STATUS_INVALID_ARGUMENT, "{bad}");
            assert!(o.is_null());
            assert!(last().contains(&says), "{says:?}: {}", last());
        }
        assert_eq!(record(&d.dir, port).state, Some(ServeState::Starting));
        let (status, o) = offer(lock, listener.as_raw_fd(), 0);
        assert_eq!(status, LlmlbStatus::LLMLB_STATUS_OK);
        let (status, again) = offer(lock, listener.as_raw_fd(), 0);
        assert_eq!(status, LlmlbStatus::LLMLB_STATUS_INVALID_ARGUMENT);
        assert!(again.is_null());
        assert!(last().contains("offered already"), "{}", last());
        // The drain fd is the offer's; the lock's own descriptor stays its own.
        let mut lock_fd = 0;
        // SAFETY: live handles, each freed once.
        unsafe {
            assert_eq!(
                crate::llmlb_lock_fd(lock, &mut lock_fd),
                LlmlbStatus::LLMLB_STATUS_INVALID_ARGUMENT
            );
            llmlb_offer_free(o);
            assert_eq!(llmlb_lock_release(lock), LlmlbStatus::LLMLB_STATUS_OK);
        }
        assert_eq!(d.dir.probe(port).unwrap(), LockState::Free);
    }

    fn last() -> String {
        // SAFETY: always a valid NUL-terminated string.
        unsafe { std::ffi::CStr::from_ptr(crate::llmlb_last_error()) }
            .to_string_lossy()
            .into_owned()
    }
}
