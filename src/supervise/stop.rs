//! Stopping the holder of a port: probe → pin the process (a pidfd on Linux)
//! → verify its identity → SIGTERM through the pin → wait for the *lock* to be
//! released → (with `force`) SIGKILL the exec child's process group, only
//! while its leader is verified, and the holder through the pin → remove the
//! stale file.
//!
//! The lock, not the PID, is what "stopped" means: a PID can be reused, and a
//! server is only gone for other launchers once its lock is released. Nothing
//! is ever signalled on the strength of a file nobody holds, and nothing is
//! signalled by a bare number: a pidfd cannot reach a process that reused the
//! PID, and where there is none the identity is checked again right before
//! each signal.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};

use crate::lock::hint::find_holder;
use crate::lock::sys::{self, Signal};
use crate::lock::{
    check_port, printable, IdentityCheck, LockDir, LockError, LockInfo, LockState, ProcessIdentity,
};

/// How often the lock is probed while waiting for the holder to let go. A
/// probe takes a shared lock for microseconds, which acquirers wait out, so
/// polling never makes a concurrent `serve` fail.
pub const STOP_POLL_INTERVAL: Duration = Duration::from_millis(5);

/// How long to wait for the lock after `SIGKILL` (the kernel closes the
/// descriptor as the process dies; this only covers a process stuck in I/O).
const KILL_WAIT: Duration = Duration::from_secs(5);

/// How long the lock may stay held after its holder exited before the holder
/// is judged to have left it to an inheritor: what the holder killed on its
/// way out (its command's group) needs a moment to die.
const INHERIT_GRACE: Duration = Duration::from_millis(500);

/// How long a holder whose details are unreadable (mid-write) is re-probed
/// before giving up on identifying it.
const UNREADABLE_WAIT: Duration = Duration::from_millis(200);

/// How [`stop_server`] behaves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StopOptions {
    /// How long to wait for the lock after `SIGTERM`. Zero does not wait (as
    /// `pg_ctl stop --no-wait` and `systemctl stop --no-block` do): the
    /// holder is asked to stop, the lock is probed once, and a holder that
    /// still holds it is reported as [`StopOutcome::Requested`] (with
    /// `force`, it is killed at once instead).
    pub timeout: Duration,
    /// Whether to `SIGKILL` the holder (and its exec child's process group)
    /// when the timeout passes, instead of failing with [`StopError::Timeout`].
    pub force: bool,
}

impl Default for StopOptions {
    /// 5 seconds, no force: the `llmlb stop` defaults.
    fn default() -> Self {
        StopOptions {
            timeout: Duration::from_secs(5),
            force: false,
        }
    }
}

/// Progress reported by [`stop_server`] before each signal, so a CLI can print
/// it when it happens rather than after the wait.
#[derive(Debug)]
#[non_exhaustive]
pub enum StopEvent<'a> {
    /// The holder was verified; `SIGTERM` is sent next.
    Stopping {
        /// The port.
        port: u16,
        /// The holder.
        info: &'a LockInfo,
    },
    /// The holder that was stopped let go, and the port went back to a
    /// process that held it before the stop began (the server a pending
    /// `serve --replace` was taking it over from, which writes its record
    /// back and serves on): it is stopped too, within the same timeout, and
    /// [`StopEvent::Stopping`] follows for it.
    WentBack {
        /// The port.
        port: u16,
        /// The PID that was stopped.
        stopped: u32,
        /// The holder the port went back to.
        info: &'a LockInfo,
    },
    /// The timeout passed with `force` (or the holder exited while a process
    /// that inherited its lock still holds it); `SIGKILL` is sent next to the
    /// holder and to `group`.
    Killing {
        /// The port.
        port: u16,
        /// The holder (latest info, with `child_pgid` if recorded).
        info: &'a LockInfo,
        /// The timeout that passed.
        timeout: Duration,
        /// The exec child's process group, when recorded and its leader is
        /// verified now (a group is never signalled on a bare number).
        group: Option<u32>,
        /// The holder itself has already exited; only `group` is left to kill.
        holder_exited: bool,
    },
}

/// What [`stop_server`] did. Every variant but [`StopOutcome::Requested`]
/// means the port is no longer held by the server that was there, nor by
/// any process that held it before the stop began (the server a pending
/// `serve --replace` gives the port back to): a holder that took the port
/// after that is a new server, and is left alone.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum StopOutcome {
    /// Nothing held the port (no dir, no file, or an empty file). Nothing done.
    NotRunning,
    /// The file was stale (its holder died without releasing); it was removed
    /// and nothing was signalled.
    StaleRemoved {
        /// What the dead holder recorded, if readable.
        previous: Option<LockInfo>,
    },
    /// The holder released the lock after `SIGTERM`.
    Stopped {
        /// The holder that was stopped (the last one, when the port went
        /// back to an earlier holder that was stopped too).
        info: LockInfo,
    },
    /// The holder did not release in time and was killed with `SIGKILL`
    /// (`force`); its stale file was removed.
    Killed {
        /// The holder that was killed (the last one, as for `Stopped`).
        info: LockInfo,
    },
    /// Only with a zero [`StopOptions::timeout`] and no `force`: the verified
    /// holder was asked to stop (`SIGTERM`; its stop channel on Windows) and
    /// still held the lock when probed right after. It is most likely
    /// shutting down; nothing waited for it.
    Requested {
        /// The holder that was asked to stop.
        info: LockInfo,
    },
}

/// Why [`stop_server`] did not stop the server. Nothing was signalled unless
/// the variant says so.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StopError {
    /// The lock dir or file could not be inspected (boxed: a `LockError` can
    /// carry a whole `LockInfo`).
    #[error(transparent)]
    Lock(Box<LockError>),
    /// The port is held but the holder's details cannot be read, so there is
    /// no PID to verify and signal.
    #[error("server on port {port} is running but its lock file cannot be read (holder details unreadable); nothing was signalled: stop it by its own means ({} shows the holder)", find_holder(path))]
    Unreadable {
        /// The port.
        port: u16,
        /// The lock file.
        path: PathBuf,
    },
    /// The recorded PID could not be proven to be the process that wrote the
    /// file; nothing was signalled.
    #[error("{}", not_verified_line(*port, *pid, check, path))]
    NotVerified {
        /// The port.
        port: u16,
        /// The recorded PID.
        pid: u32,
        /// What the identity check found (never [`IdentityCheck::Same`]).
        check: IdentityCheck,
        /// The lock file.
        path: PathBuf,
    },
    /// The recorded process could not be pinned for a reason other than "it
    /// has exited": permission denied (another user, an elevated holder), a
    /// thread id instead of a process, a `/proc` from another PID namespace,
    /// no descriptor left. Nothing was signalled.
    #[error("{}", unpinnable_line(*port, *pid, error))]
    Unpinnable {
        /// The port.
        port: u16,
        /// The recorded PID.
        pid: u32,
        /// Why it could not be pinned (part of the message, so not a
        /// `source()`).
        error: std::io::Error,
    },
    /// The recorded holder released the lock while processes that inherited
    /// its descriptor still hold it ([`LockInfo::released_by`]): the PID in
    /// the file is not a holder, so nothing was signalled.
    #[error("lock for port {port} is held by a process that inherited it from PID {pid}, which has released it; nothing was signalled: find the holder with {}", find_holder(path))]
    Released {
        /// The port.
        port: u16,
        /// The PID that released the lock.
        pid: u32,
        /// The lock file.
        path: PathBuf,
    },
    /// Sending a signal failed (e.g. permission denied).
    #[error("cannot signal server on port {port} (PID: {pid}): {error}")]
    Signal {
        /// The port.
        port: u16,
        /// The target PID.
        pid: u32,
        /// The OS error (part of the message, so not a `source()`).
        error: std::io::Error,
    },
    /// `SIGTERM` was sent but the lock was still held when the timeout passed
    /// (and `force` was not set).
    #[error("server on port {port} (PID: {pid}) did not stop within {}; use --force to kill it", seconds(*timeout))]
    Timeout {
        /// The port.
        port: u16,
        /// The holder.
        pid: u32,
        /// The timeout.
        timeout: Duration,
    },
    /// `SIGKILL` was sent but the lock is still held: a process outside the
    /// exec child's group inherited the lock descriptor.
    #[error("server on port {port} (PID: {pid}) was killed but its lock is still held by a process that inherited it; find it with {}", find_holder(path))]
    StillHeld {
        /// The port.
        port: u16,
        /// The killed holder.
        pid: u32,
        /// The lock file.
        path: PathBuf,
    },
    /// A holder was stopped, but the port went back to a process that held
    /// it before the stop began (the server a pending `serve --replace` was
    /// taking it over from), and stopping that one failed as `error` says:
    /// it still serves.
    #[error("server on port {port} (PID: {stopped}) stopped, but the port went back to PID {pid}, which still serves: {error}")]
    WentBack {
        /// The port.
        port: u16,
        /// The PID that was stopped.
        stopped: u32,
        /// The earlier holder the port went back to, which still holds it.
        pid: u32,
        /// Why it was not stopped (never another `WentBack`; part of the
        /// message, so not a `source()`).
        error: Box<StopError>,
    },
    /// The holder exited after `SIGTERM`, but a process that inherited its
    /// lock descriptor (e.g. a forked worker) still holds the port. Nothing
    /// but the holder was signalled.
    #[error("server on port {port} (PID: {pid}) exited, but its lock is still held by a process that inherited it; nothing else was signalled: find it with {}{}", find_holder(path), if *group { " or use --force to kill its command's process group" } else { "" })]
    Inherited {
        /// The port.
        port: u16,
        /// The holder that exited.
        pid: u32,
        /// The lock file.
        path: PathBuf,
        /// Whether a verified exec-command process group is recorded, which
        /// `force` would kill.
        group: bool,
    },
}

impl From<LockError> for StopError {
    fn from(e: LockError) -> Self {
        StopError::Lock(Box::new(e))
    }
}

fn seconds(d: Duration) -> String {
    if d.subsec_nanos() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}s", d.as_secs_f64())
    }
}

fn unpinnable_line(port: u16, pid: u32, error: &std::io::Error) -> String {
    let why = match error.kind() {
        std::io::ErrorKind::PermissionDenied if cfg!(windows) => {
            "access denied (the server runs elevated or as another user): run stop elevated, as administrator".to_owned()
        }
        std::io::ErrorKind::PermissionDenied => {
            "permission denied (the server runs as another user): run stop as that user".to_owned()
        }
        _ => printable(&error.to_string()).to_string(),
    };
    format!(
        "cannot verify that PID {pid} is the server on port {port}: {why}; nothing was signalled"
    )
}

fn not_verified_line(port: u16, pid: u32, check: &IdentityCheck, path: &Path) -> String {
    let find = find_holder(path);
    match check {
        IdentityCheck::OtherHost(host) => format!(
            "server on port {port} (PID: {pid}) was started on host {}, not this one; nothing was signalled: stop it there",
            printable(host)
        ),
        IdentityCheck::OtherPidNamespace => format!(
            "server on port {port} (PID: {pid}) runs in another PID namespace (a container); nothing was signalled: stop it there"
        ),
        IdentityCheck::Gone => format!(
            "lock for port {port} is held, but its recorded PID {pid} has exited (a process that inherited the lock holds it); nothing was signalled: find the holder with {find}"
        ),
        IdentityCheck::Reused => format!(
            "lock for port {port} is held, but its recorded PID {pid} now belongs to a different process (PID reused); nothing was signalled: find the holder with {find}"
        ),
        _ => format!(
            "cannot verify that PID {pid} is the server on port {port} (no process identity on this platform or in its lock file); nothing was signalled: check what PID {pid} is and stop it by its own means"
        ),
    }
}

/// Stops whatever holds `port` in the lock dir at `dir`, pg_ctl-style.
///
/// - No dir, no file, or a free port: [`StopOutcome::NotRunning`] (only ever
///   on the word of a probe that found the port free).
/// - A stale file: removed without signalling anything (its PID may belong to
///   an unrelated process by now): [`StopOutcome::StaleRemoved`].
/// - Held by a holder on another host or in another PID namespace, or by
///   inheritors of a holder that released it ([`LockInfo::released_by`]):
///   refused, nothing signalled ([`StopError::NotVerified`],
///   [`StopError::Released`]).
/// - Held: pins the recorded process (a pidfd on Linux, checked against this
///   `/proc`; a thread id or an unpinnable process is refused with
///   [`StopError::Unpinnable`]) and signals it only if it is provably the
///   process that wrote the file ([`IdentityCheck::Same`]); reports [`StopEvent::Stopping`], sends
///   `SIGTERM` through the pin (Windows: sets the holder's stop channel, see
///   [`StopRequest`](crate::lock::StopRequest); a holder without one is refused, or with `force`
///   terminated at once), and probes the lock every
///   [`STOP_POLL_INTERVAL`] until it is released or `options.timeout` passes.
///   With `force` it then reports [`StopEvent::Killing`], sends `SIGKILL` to
///   the recorded exec child's process group (only while that group's leader
///   is still the recorded process) and to the holder, waits for the lock and
///   removes the stale file. Without `force`, a zero timeout returns
///   [`StopOutcome::Requested`] for a holder still holding the lock after
///   the request, instead of [`StopError::Timeout`].
/// - The holder let go, and the port is held again by a process that held it
///   before the stop began (its `started_at` is earlier, or a record listed
///   it as `draining`: the server a pending `serve --replace` gives the port
///   back to when its successor is stopped): reports [`StopEvent::WentBack`]
///   and stops that one as well, by the same rules, within the same
///   `options.timeout` overall; if that fails, [`StopError::WentBack`]. A
///   holder that took the port after the stop began is a new server and is
///   left alone.
///
/// Blocks the calling thread while waiting. A timeout too large to represent
/// waits without a deadline.
///
/// # Errors
/// [`StopError`]: nothing was signalled except as each variant says.
///
/// # Examples
/// ```
/// use llmlb::supervise::{stop_server, StopOptions, StopOutcome};
/// # let tmp = tempfile::tempdir().unwrap();
/// let outcome = stop_server(tmp.path(), 8000, &StopOptions::default(), |_| {})?;
/// assert_eq!(outcome, StopOutcome::NotRunning);
/// # Ok::<(), llmlb::supervise::StopError>(())
/// ```
pub fn stop_server(
    dir: &Path,
    port: u16,
    options: &StopOptions,
    mut on_event: impl FnMut(StopEvent<'_>),
) -> Result<StopOutcome, StopError> {
    check_port(port)?;
    let Some(dir) = LockDir::existing(dir)? else {
        return Ok(StopOutcome::NotRunning);
    };
    // What "before the stop began" means for a holder the port goes back to.
    let began = Utc::now();
    // One timeout for every holder stopped, however many the port went back
    // to: `ExecStop=` budgets it.
    let deadline = Instant::now().checked_add(options.timeout);
    let mut lineage = Lineage {
        began,
        pids: Vec::new(),
        stopped: None,
    };
    // A few rounds: the port may change hands between probe and action (a
    // stale file reclaimed by a new server, a holder releasing, a pending
    // replace giving the port back). Each round judges what a fresh probe
    // shows.
    for _ in 0..MAX_ROUNDS {
        match dir.probe(port)? {
            LockState::Free => return Ok(lineage.outcome(StopOutcome::NotRunning)),
            LockState::Stale(_) => {
                if let Some(outcome) = remove_stale(&dir, port)? {
                    return Ok(lineage.outcome(outcome));
                }
            }
            LockState::Held(Some(info)) => {
                let went_back = match &lineage.stopped {
                    None => None,
                    Some((stopped, _)) if lineage.holds(&info) => Some(*stopped),
                    // A new server took the port after ours let go: not ours
                    // to stop.
                    Some((_, outcome)) => return Ok(outcome.clone()),
                };
                if let Some(stopped) = went_back {
                    on_event(StopEvent::WentBack {
                        port,
                        stopped,
                        info: &info,
                    });
                }
                lineage.pids.extend(info.draining.iter().copied());
                let pid = info.pid;
                let step = stop_holder(&dir, port, info, options, deadline, &mut on_event)
                    .map_err(|error| match went_back {
                        Some(stopped) => StopError::WentBack {
                            port,
                            stopped,
                            pid,
                            error: Box::new(error),
                        },
                        None => error,
                    })?;
                match step {
                    Step::Retry => {}
                    Step::Done(outcome) => return Ok(outcome),
                    Step::Passed(outcome) => {
                        lineage.pids.push(pid);
                        lineage.stopped = Some((pid, outcome));
                    }
                }
            }
            LockState::Held(None) => {
                if !became_readable(&dir, port)? {
                    return Err(StopError::Unreadable {
                        port,
                        path: dir.lock_path(port),
                    });
                }
            }
        }
    }
    Err(LockError::Busy {
        path: dir.lock_path(port),
    }
    .into())
}

/// How many times [`stop_server`] probes a port that keeps changing hands
/// before it gives up.
const MAX_ROUNDS: usize = 16;

/// The processes of the port's lineage: whoever held it before the stop
/// began. A holder the port goes back to after ours let go is one of them
/// (the predecessor of a pending `serve --replace`, which writes its own
/// record back when its successor is stopped) and is stopped too; any other
/// holder took the port afterwards and is a new server.
struct Lineage {
    /// When the stop began (the holders' `started_at` is written with full
    /// precision).
    began: DateTime<Utc>,
    /// PIDs the records named as holders or as draining.
    pids: Vec<u32>,
    /// The last holder that let go of the port, and what stopping it came
    /// to (`Stopped` or `Killed`).
    stopped: Option<(u32, StopOutcome)>,
}

impl Lineage {
    /// Whether `info` held the port before the stop began, or took it over
    /// from a holder that did (a `serve --replace` racing the stop).
    fn holds(&self, info: &LockInfo) -> bool {
        info.started_at < self.began
            || self.pids.contains(&info.pid)
            || info
                .took_over_from
                .is_some_and(|from| self.pids.contains(&from))
            || info.draining.iter().any(|pid| self.pids.contains(pid))
    }

    /// The outcome to report once the port is free: the last holder stopped,
    /// if any was, else `found`.
    fn outcome(&self, found: StopOutcome) -> StopOutcome {
        self.stopped.clone().map_or(found, |(_, outcome)| outcome)
    }
}

/// What [`stop_holder`] came to.
enum Step {
    /// The port changed hands before anything was signalled: probe again.
    Retry,
    /// Finished: the port is free, or the outcome says why not.
    Done(StopOutcome),
    /// The holder was stopped (or killed) and let go, but the port is held
    /// again, or being written, by another process: the caller judges who.
    Passed(StopOutcome),
}

/// Re-probes a held port whose info was unreadable until it reads or changes
/// state (`true`: probe again), or [`UNREADABLE_WAIT`] passes (`false`).
fn became_readable(dir: &LockDir, port: u16) -> Result<bool, StopError> {
    let deadline = Instant::now() + UNREADABLE_WAIT;
    while Instant::now() < deadline {
        std::thread::sleep(STOP_POLL_INTERVAL);
        if !matches!(dir.probe(port)?, LockState::Held(None)) {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Removes a stale file through the protocol (lock, check, unlink): `None` if
/// someone took the port meanwhile. Never writes the file: a `serve` racing
/// this sees at most the dead holder's info under a passing lock, which it
/// waits out, and never this process's.
fn remove_stale(dir: &LockDir, port: u16) -> Result<Option<StopOutcome>, StopError> {
    match dir.port(port)?.try_take_stale() {
        Ok(Some(stale)) => {
            let previous = stale.previous().cloned();
            stale.discard().map_err(LockError::from)?;
            Ok(Some(StopOutcome::StaleRemoved { previous }))
        }
        // The file was emptied or removed in between: nothing to remove.
        Ok(None) => Ok(Some(StopOutcome::NotRunning)),
        Err(e) if e.is_already_running() => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Windows cannot delete an open file, so a holder empties its file under the
/// lock and deletes it only after closing it: a released port can still show
/// the empty file for a moment, or for good if the delete met someone else's
/// open handle (our own probe, say). If the port is free and the file is still
/// there, remove it through the protocol (lock, check, remove), so `stop`
/// leaves no file behind. Nothing to do on Unix, where the holder unlinks its
/// file while still holding the lock.
fn tidy_released(dir: &LockDir, port: u16) -> Result<(), StopError> {
    if cfg!(windows) && dir.probe(port)? == LockState::Free && dir.lock_path(port).exists() {
        remove_stale(dir, port)?;
    }
    Ok(())
}

/// The holder, pinned and verified: every signal goes through `process`.
struct Holder {
    info: LockInfo,
    process: sys::PinnedProcess,
}

impl Holder {
    /// Pins `info.pid`, then checks that the pinned process is the one that
    /// wrote `info`. Pinning first matters: a process that is alive with the
    /// recorded identity after the pin was taken is the pinned one. A holder
    /// on another host or in another PID namespace, or a record whose PID
    /// released the lock to inheritors, is refused before the number is even
    /// looked up: it names no holder here.
    #[allow(clippy::result_large_err)] // the refusal hands the info back; a cold path
    fn verify(info: LockInfo) -> Result<Holder, (LockInfo, Refusal)> {
        let elsewhere = info.check_identity();
        if matches!(
            elsewhere,
            IdentityCheck::OtherHost(_)
                | IdentityCheck::OtherPidNamespace
                | IdentityCheck::Released
        ) {
            return Err((info, Refusal::Check(elsewhere)));
        }
        let process = match sys::pin_process(info.pid) {
            Ok(process) => process,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let check = match info.check_identity() {
                    IdentityCheck::Same => IdentityCheck::Gone,
                    other => other,
                };
                return Err((info, Refusal::Check(check)));
            }
            Err(e) => return Err((info, Refusal::Pin(e))),
        };
        match info.check_identity() {
            IdentityCheck::Same => Ok(Holder { info, process }),
            check => Err((info, Refusal::Check(check))),
        }
    }

    /// Asks the holder to stop: `SIGTERM` on Unix, its stop channel on
    /// Windows. `Ok(true)` when it has no stop channel and `force` is set (the
    /// caller terminates it); without `force` that is an error.
    fn request_stop(&self, dir: &LockDir, port: u16, force: bool) -> Result<bool, StopError> {
        if !self.process.is_pinned() && self.info.check_identity() != IdentityCheck::Same {
            return Ok(false);
        }
        match sys::request_stop(dir.handle(), port, self.info.pid, &self.process) {
            Ok(()) => Ok(false),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) if e.kind() == std::io::ErrorKind::Unsupported && force => Ok(true),
            Err(error) => Err(StopError::Signal {
                port,
                pid: self.info.pid,
                error,
            }),
        }
    }

    /// Sends `sig`. Without a pidfd, the identity is checked again right
    /// before: a process that is no longer the holder is not signalled.
    /// A holder that has exited is not an error (the wait sees the lock go).
    fn signal(&self, port: u16, sig: Signal) -> Result<(), StopError> {
        if !self.process.is_pinned() && self.info.check_identity() != IdentityCheck::Same {
            return Ok(());
        }
        match self.process.signal(sig) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(error) => Err(StopError::Signal {
                port,
                pid: self.info.pid,
                error,
            }),
        }
    }
}

/// Why [`Holder::verify`] refused.
enum Refusal {
    /// The identity check's verdict (never [`IdentityCheck::Same`]).
    Check(IdentityCheck),
    /// The process could not be pinned, for a reason other than "exited".
    Pin(std::io::Error),
}

/// `SIGKILL`s the exec child's process group recorded in `info`, only while
/// its leader (the process whose PID is the pgid) is still the recorded
/// process: a bare group number may name someone else's group by now.
/// Returns whether it was signalled.
fn kill_verified_group(info: &LockInfo) -> bool {
    let (Some(pgid), Some(recorded)) = (info.child_pgid, info.child_identity.as_ref()) else {
        return false;
    };
    let Ok(leader) = sys::pin_process(pgid) else {
        return false;
    };
    if !recorded.is_complete() || ProcessIdentity::of_pid(pgid).as_ref() != Some(recorded) {
        return false;
    }
    if leader.has_exited() == Some(true) {
        return false;
    }
    // Through the pinned leader where the kernel can (never a bare number).
    leader.signal_own_group(Signal::Kill).is_ok()
}

/// Whether `info` records an exec child's group whose leader is verified now.
fn group_verified(info: &LockInfo) -> bool {
    match (info.child_pgid, info.child_identity.as_ref()) {
        (Some(pgid), Some(recorded)) => {
            recorded.is_complete() && ProcessIdentity::of_pid(pgid).as_ref() == Some(recorded)
        }
        _ => false,
    }
}

enum Wait {
    /// The holder let go: the port is free (or was stale, and is tidied).
    Released,
    /// The holder let go, and the port is held by another process (or its
    /// record is being written): who that is is the caller's to judge.
    Changed,
    /// The holder exited but the lock is still held with its info: a process
    /// that inherited the descriptor holds it. Its latest info.
    Inherited(LockInfo),
    /// Still held by it at the deadline; its latest info.
    TimedOut(LockInfo),
}

/// Polls until the holder lets go or `deadline` (`None`: no deadline).
fn wait_released(
    dir: &LockDir,
    port: u16,
    holder: &Holder,
    deadline: Option<Instant>,
) -> Result<Wait, StopError> {
    let mut latest = holder.info.clone();
    // When the holder exited with the lock still held, how long that has
    // lasted: processes it killed on its way out (its command's group) may
    // still be dying, so an inheritor is only declared after a grace period.
    let mut inherited_since: Option<Instant> = None;
    loop {
        // Asked before the probe: once the holder has exited, the kernel has
        // already dropped its locks, so a lock still held after that with
        // its info is held by an inheritor.
        let exited = holder.process.has_exited() == Some(true);
        match dir.probe(port)? {
            LockState::Free => return Ok(Wait::Released),
            LockState::Stale(_) => {
                // It died without releasing (or the file outlived a kill): tidy
                // up through the protocol. Someone else taking it is fine too.
                remove_stale(dir, port)?;
                return Ok(Wait::Released);
            }
            LockState::Held(Some(now)) if now.same_holder(&holder.info) => {
                latest = now;
                if exited {
                    let since = *inherited_since.get_or_insert_with(Instant::now);
                    if since.elapsed() >= INHERIT_GRACE {
                        return Ok(Wait::Inherited(latest));
                    }
                }
            }
            // Another process holds the port now: a new server, or the one
            // a pending replace took it from, its record written back.
            LockState::Held(Some(_)) => return Ok(Wait::Changed),
            // Being written: by another holder if ours has exited, else
            // maybe ours rewriting its info; look again.
            LockState::Held(None) if exited => return Ok(Wait::Changed),
            LockState::Held(None) => {}
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            return Ok(Wait::TimedOut(latest));
        }
        std::thread::sleep(STOP_POLL_INTERVAL);
    }
}

/// Stops the verified holder of `info`, waiting for it until `deadline`
/// (`None`: no deadline).
fn stop_holder(
    dir: &LockDir,
    port: u16,
    info: LockInfo,
    options: &StopOptions,
    deadline: Option<Instant>,
    on_event: &mut impl FnMut(StopEvent<'_>),
) -> Result<Step, StopError> {
    let holder = match Holder::verify(info) {
        Ok(holder) => holder,
        Err((info, check)) => {
            // It may have let go while we looked, or a new holder may have
            // come: only a probe that still shows this holder is a refusal.
            return match dir.probe(port)? {
                LockState::Held(Some(now)) if now.same_holder(&info) => Err(match check {
                    Refusal::Check(IdentityCheck::Released) => StopError::Released {
                        port,
                        pid: info.pid,
                        path: dir.lock_path(port),
                    },
                    Refusal::Check(check) => StopError::NotVerified {
                        port,
                        pid: info.pid,
                        check,
                        path: dir.lock_path(port),
                    },
                    Refusal::Pin(error) => StopError::Unpinnable {
                        port,
                        pid: info.pid,
                        error,
                    },
                }),
                _ => Ok(Step::Retry),
            };
        }
    };
    on_event(StopEvent::Stopping {
        port,
        info: &holder.info,
    });
    // A holder without a stop channel (Windows) can only be terminated: with
    // `force`, at once.
    let no_channel = holder.request_stop(dir, port, options.force)?;
    let mut holder_exited = false;
    let waited = if no_channel {
        Wait::TimedOut(holder.info.clone())
    } else {
        wait_released(dir, port, &holder, deadline)?
    };
    let latest = match waited {
        Wait::Released => {
            tidy_released(dir, port)?;
            return Ok(Step::Done(StopOutcome::Stopped { info: holder.info }));
        }
        Wait::Changed => return Ok(Step::Passed(StopOutcome::Stopped { info: holder.info })),
        Wait::Inherited(latest) if !options.force => {
            return Err(StopError::Inherited {
                port,
                pid: holder.info.pid,
                path: dir.lock_path(port),
                group: group_verified(&latest),
            })
        }
        Wait::Inherited(latest) => {
            holder_exited = true;
            latest
        }
        Wait::TimedOut(_) if !options.force && options.timeout.is_zero() => {
            return Ok(Step::Done(StopOutcome::Requested { info: holder.info }));
        }
        Wait::TimedOut(_) if !options.force => {
            return Err(StopError::Timeout {
                port,
                pid: holder.info.pid,
                timeout: options.timeout,
            })
        }
        Wait::TimedOut(latest) => latest,
    };
    on_event(StopEvent::Killing {
        port,
        info: &latest,
        timeout: options.timeout,
        group: latest.child_pgid.filter(|_| group_verified(&latest)),
        holder_exited,
    });
    // The group first: once the holder dies its group leader dies with it
    // (parent-death signal) and the group can no longer be verified.
    kill_verified_group(&latest);
    holder.signal(port, Signal::Kill)?;
    let kill_deadline = Instant::now() + KILL_WAIT;
    let mut after_kill = wait_released(dir, port, &holder, Some(kill_deadline))?;
    // After SIGKILL the holder is gone at once; what it shared the lock with
    // (the group just killed) may take longer: wait for the lock itself.
    while matches!(after_kill, Wait::Inherited(_)) && Instant::now() < kill_deadline {
        std::thread::sleep(STOP_POLL_INTERVAL);
        after_kill = wait_released(dir, port, &holder, Some(kill_deadline))?;
    }
    match after_kill {
        Wait::Released => Ok(Step::Done(StopOutcome::Killed { info: latest })),
        Wait::Changed => Ok(Step::Passed(StopOutcome::Killed { info: latest })),
        Wait::Inherited(_) | Wait::TimedOut(_) => Err(StopError::StillHeld {
            port,
            pid: holder.info.pid,
            path: dir.lock_path(port),
        }),
    }
}

#[cfg(all(test, any(target_os = "linux", target_os = "macos", windows)))]
mod tests {
    use super::*;

    /// A pin refused for lack of permission (an elevated holder on Windows,
    /// another user's on Unix) is reported with the fix that works, never as
    /// a PID that has exited.
    #[test]
    fn an_unpinnable_holder_is_reported_with_its_fix_never_as_exited() {
        let line = StopError::Unpinnable {
            port: 4300,
            pid: 32,
            error: std::io::ErrorKind::PermissionDenied.into(),
        }
        .to_string();
        if cfg!(windows) {
            assert!(
                line.contains("access denied")
                    && line.contains("run stop elevated, as administrator"),
                "{line}"
            );
        } else {
            assert!(
                line.contains("permission denied") && line.contains("run stop as that user"),
                "{line}"
            );
        }
        assert!(
            line.contains("nothing was signalled") && !line.contains("exited"),
            "{line}"
        );
    }

    /// Every hint names a tool that exists on the platform: `fuser` on Unix,
    /// never on Windows (where the holder is found with Resource Monitor).
    #[test]
    fn hints_for_an_inheritor_name_the_platform_tool() {
        let mut reused = LockInfo::for_current_process(4242);
        let id = reused.identity.as_mut().expect("identity on this platform");
        id.start_ticks = id.start_ticks.map(|t| t + 1);
        assert_eq!(reused.check_identity(), IdentityCheck::Reused);
        let path = Path::new("locks").join("serve_4242.lock");
        let hints = [
            crate::lock::hint::how_to_stop(4242, Some(&reused), &path, ""),
            not_verified_line(4242, reused.pid, &IdentityCheck::Reused, &path),
            StopError::Unreadable {
                port: 4242,
                path: path.clone(),
            }
            .to_string(),
        ];
        for hint in hints {
            assert!(hint.contains(&path.display().to_string()), "{hint}");
            if cfg!(windows) {
                assert!(
                    !hint.contains("fuser") && hint.contains("Resource Monitor"),
                    "{hint}"
                );
            } else {
                assert!(
                    hint.contains(&format!("`fuser {}`", path.display())),
                    "{hint}"
                );
            }
        }
    }
}
