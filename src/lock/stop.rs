//! Stopping the holder of a port: probe → verify identity → SIGTERM → wait for
//! the *lock* to be released → (with `force`) SIGKILL the holder and its exec
//! child's process group → remove the stale file.
//!
//! The lock, not the PID, is what "stopped" means: a PID can be reused, and a
//! server is only gone for other launchers once its lock is released. Nothing
//! is ever signalled on the strength of a file nobody holds.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::error::LockError;
use super::info::{IdentityCheck, LockInfo};
use super::state::Acquired;
use super::sys::{self, Signal};
use super::{check_port, LockDir, LockState};

/// How often the lock is probed while waiting for the holder to let go. A
/// probe takes a shared lock for microseconds, which acquirers wait out, so
/// polling never makes a concurrent `serve` fail.
pub const STOP_POLL_INTERVAL: Duration = Duration::from_millis(5);

/// How long to wait for the lock after `SIGKILL` (the kernel closes the
/// descriptor as the process dies; this only covers a process stuck in I/O).
const KILL_WAIT: Duration = Duration::from_secs(5);

/// How long a holder whose details are unreadable (mid-write) is re-probed
/// before giving up on identifying it.
const UNREADABLE_WAIT: Duration = Duration::from_millis(200);

/// How [`stop_server`] behaves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StopOptions {
    /// How long to wait for the lock after `SIGTERM`.
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
    /// The timeout passed with `force`; `SIGKILL` is sent next to the holder
    /// and, when recorded, to the exec child's process group.
    Killing {
        /// The port.
        port: u16,
        /// The holder (latest info, with `child_pgid` if recorded).
        info: &'a LockInfo,
        /// The timeout that passed.
        timeout: Duration,
    },
}

/// What [`stop_server`] did. Every variant means the port is no longer held by
/// the server that was there.
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
        /// The holder that was stopped.
        info: LockInfo,
    },
    /// The holder did not release in time and was killed with `SIGKILL`
    /// (`force`); its stale file was removed.
    Killed {
        /// The holder that was killed.
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
    #[error("server on port {port} is running but its lock file cannot be read (holder details unreadable); nothing was signalled: stop it by its own means (`fuser {}` shows the holder)", path.display())]
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
    /// Sending a signal failed (e.g. permission denied).
    #[error("cannot signal server on port {port} (PID: {pid}): {source}")]
    Signal {
        /// The port.
        port: u16,
        /// The target PID.
        pid: u32,
        /// The OS error.
        #[source]
        source: std::io::Error,
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
    #[error("server on port {port} (PID: {pid}) was killed but its lock is still held by a process that inherited it; find it with `fuser {}`", path.display())]
    StillHeld {
        /// The port.
        port: u16,
        /// The killed holder.
        pid: u32,
        /// The lock file.
        path: PathBuf,
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

fn not_verified_line(port: u16, pid: u32, check: &IdentityCheck, path: &Path) -> String {
    let path = path.display();
    match check {
        IdentityCheck::OtherHost(host) => format!(
            "server on port {port} (PID: {pid}) was started on host {host}, not this one; nothing was signalled: stop it there"
        ),
        IdentityCheck::Gone => format!(
            "lock for port {port} is held, but its recorded PID {pid} has exited (a process that inherited the lock holds it); nothing was signalled: find the holder with `fuser {path}`"
        ),
        IdentityCheck::Reused => format!(
            "lock for port {port} is held, but its recorded PID {pid} now belongs to a different process (PID reused); nothing was signalled: find the holder with `fuser {path}`"
        ),
        _ => format!(
            "cannot verify that PID {pid} is the server on port {port} (no process identity on this platform or in its lock file); nothing was signalled: if it is, run `kill -TERM {pid}`"
        ),
    }
}

/// Stops whatever holds `port` in the lock dir at `dir`, pg_ctl-style.
///
/// - No dir, no file, or a free port: [`StopOutcome::NotRunning`].
/// - A stale file: removed without signalling anything (its PID may belong to
///   an unrelated process by now): [`StopOutcome::StaleRemoved`].
/// - Held: signals only if the recorded PID is provably the process that wrote
///   the file ([`IdentityCheck::Same`]); reports [`StopEvent::Stopping`], sends
///   `SIGTERM`, and probes the lock every [`STOP_POLL_INTERVAL`] until it is
///   released or `options.timeout` passes. With `force` it then reports
///   [`StopEvent::Killing`], sends `SIGKILL` to the recorded exec child's
///   process group and to the holder, waits for the lock and removes the stale
///   file.
///
/// Blocks the calling thread while waiting.
///
/// # Errors
/// [`StopError`]: nothing was signalled except as each variant says.
///
/// # Examples
/// ```
/// use llmlb::lock::{stop_server, StopOptions, StopOutcome};
/// # let tmp = tempfile::tempdir().unwrap();
/// let outcome = stop_server(tmp.path(), 8000, &StopOptions::default(), |_| {})?;
/// assert_eq!(outcome, StopOutcome::NotRunning);
/// # Ok::<(), llmlb::lock::StopError>(())
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
    // A few rounds: the port may change hands between probe and action (a
    // stale file reclaimed by a new server, a holder releasing).
    for _ in 0..8 {
        match dir.probe(port)? {
            LockState::Free => return Ok(StopOutcome::NotRunning),
            LockState::Stale(_) => {
                if let Some(outcome) = remove_stale(&dir, port)? {
                    return Ok(outcome);
                }
            }
            LockState::Held(Some(info)) => {
                return stop_holder(&dir, port, info, options, &mut on_event)
            }
            LockState::Held(None) => match wait_readable(&dir, port)? {
                Some(LockState::Held(Some(info))) => {
                    return stop_holder(&dir, port, info, options, &mut on_event)
                }
                Some(_) => {}
                None => {
                    return Err(StopError::Unreadable {
                        port,
                        path: dir.lock_path(port),
                    })
                }
            },
        }
    }
    Err(LockError::Busy {
        path: dir.lock_path(port),
    }
    .into())
}

/// Re-probes a held port whose info was unreadable until it reads, changes
/// state, or [`UNREADABLE_WAIT`] passes (`None`).
fn wait_readable(dir: &LockDir, port: u16) -> Result<Option<LockState>, StopError> {
    let deadline = Instant::now() + UNREADABLE_WAIT;
    while Instant::now() < deadline {
        std::thread::sleep(STOP_POLL_INTERVAL);
        match dir.probe(port)? {
            LockState::Held(None) => {}
            other => return Ok(Some(other)),
        }
    }
    Ok(None)
}

/// Removes a stale file through the protocol (lock, check, unlink): `None` if
/// someone took the port meanwhile.
fn remove_stale(dir: &LockDir, port: u16) -> Result<Option<StopOutcome>, StopError> {
    match dir.port(port)?.try_acquire() {
        Ok(Acquired::Stale(stale)) => {
            let previous = stale.previous().cloned();
            stale.discard().map_err(LockError::from)?;
            Ok(Some(StopOutcome::StaleRemoved { previous }))
        }
        // The file was emptied or removed in between: we created a fresh one;
        // releasing removes it again.
        Ok(Acquired::Fresh(held)) => {
            held.release().map_err(LockError::from)?;
            Ok(Some(StopOutcome::NotRunning))
        }
        Err(e) if e.error.is_already_running() => Ok(None),
        Err(e) => Err(e.error.into()),
    }
}

/// Same holder as recorded earlier: PID and start time both match.
fn same_holder(a: &LockInfo, b: &LockInfo) -> bool {
    a.pid == b.pid && a.started_at == b.started_at
}

enum Poll {
    /// `info`'s holder no longer holds the lock.
    Released,
    /// Still held by it; its latest info.
    Held(LockInfo),
}

fn poll(dir: &LockDir, port: u16, info: &LockInfo) -> Result<Poll, StopError> {
    match dir.probe(port)? {
        LockState::Free => Ok(Poll::Released),
        LockState::Stale(_) => {
            // It died without releasing (or the file outlived a kill): tidy
            // up through the protocol. Someone else taking it is fine too.
            remove_stale(dir, port)?;
            Ok(Poll::Released)
        }
        LockState::Held(Some(now)) if same_holder(&now, info) => Ok(Poll::Held(now)),
        // A new server took the port after ours let go.
        LockState::Held(Some(_)) => Ok(Poll::Released),
        // Unreadable for an instant (a new holder writing): look again.
        LockState::Held(None) => Ok(Poll::Held(info.clone())),
    }
}

/// Polls until `info`'s holder lets go or `deadline`; `Err(latest info)` on
/// timeout.
fn wait_released(
    dir: &LockDir,
    port: u16,
    info: &LockInfo,
    deadline: Instant,
) -> Result<Result<(), LockInfo>, StopError> {
    loop {
        let latest = match poll(dir, port, info)? {
            Poll::Released => return Ok(Ok(())),
            Poll::Held(now) => now,
        };
        if Instant::now() >= deadline {
            return Ok(Err(latest));
        }
        std::thread::sleep(STOP_POLL_INTERVAL);
    }
}

fn signal(port: u16, info: &LockInfo, sig: Signal) -> Result<(), StopError> {
    match sys::send_signal(info.pid, sig) {
        Ok(()) => Ok(()),
        // It exited between the check and the signal: the wait sees the lock go.
        Err(_) if info.check_identity() != IdentityCheck::Same => Ok(()),
        Err(source) => Err(StopError::Signal {
            port,
            pid: info.pid,
            source,
        }),
    }
}

fn stop_holder(
    dir: &LockDir,
    port: u16,
    info: LockInfo,
    options: &StopOptions,
    on_event: &mut impl FnMut(StopEvent<'_>),
) -> Result<StopOutcome, StopError> {
    match info.check_identity() {
        IdentityCheck::Same => {}
        check => {
            // It may have released while we looked: then there is nothing to stop.
            if let Poll::Released = poll(dir, port, &info)? {
                return Ok(StopOutcome::NotRunning);
            }
            return Err(StopError::NotVerified {
                port,
                pid: info.pid,
                check,
                path: dir.lock_path(port),
            });
        }
    }
    on_event(StopEvent::Stopping { port, info: &info });
    signal(port, &info, Signal::Term)?;
    let latest = match wait_released(dir, port, &info, Instant::now() + options.timeout)? {
        Ok(()) => return Ok(StopOutcome::Stopped { info }),
        Err(latest) => latest,
    };
    if !options.force {
        return Err(StopError::Timeout {
            port,
            pid: info.pid,
            timeout: options.timeout,
        });
    }
    on_event(StopEvent::Killing {
        port,
        info: &latest,
        timeout: options.timeout,
    });
    // The group first: once the holder dies its pgid record is gone with it.
    // A group that already exited is fine (ESRCH).
    if let Some(pgid) = latest.child_pgid {
        let _ = sys::signal_group(pgid, Signal::Kill);
    }
    signal(port, &latest, Signal::Kill)?;
    match wait_released(dir, port, &info, Instant::now() + KILL_WAIT)? {
        Ok(()) => Ok(StopOutcome::Killed { info: latest }),
        Err(_) => Err(StopError::StillHeld {
            port,
            pid: info.pid,
            path: dir.lock_path(port),
        }),
    }
}
