//! The lock lifecycle as types: `Free → Held`, `Stale → Reclaimed`,
//! `Held | Reclaimed → Free`. Transitions consume `self`, so using a lock after
//! release, releasing a free lock or reclaiming a held one does not compile.

// `TransitionError<S>` hands the lock back by value (tempfile's `PersistError`
// does the same); it is the cold path, so its size does not matter.
#![allow(clippy::result_large_err)]

use std::path::Path;

use super::error::{LockError, TransitionError};
use super::info::{LockInfo, ServeState};
use super::protocol::{self, Acquisition, Holding, Integrity, StaleFile, Target};

mod sealed {
    use super::{Holding, Target};

    /// Implemented only by the four states below: users cannot invent states.
    pub trait Sealed {
        fn target(&self) -> &Target;
    }

    /// The two states that hold the lock, and how to take them apart and put
    /// them back together around a fallible transition.
    pub trait SealedHolds: Sized {
        type Extra;
        fn holding(&self) -> &Holding;
        fn holding_mut(&mut self) -> &mut Holding;
        fn split(self) -> (Box<Holding>, Self::Extra);
        fn join(holding: Box<Holding>, extra: Self::Extra) -> Self;
    }
}

/// A state of [`PortLock`]: [`Free`], [`Held`], [`Stale`] or [`Reclaimed`].
/// Sealed.
pub trait State: sealed::Sealed {}

/// Not held by this handle. The lock may be free, or held by someone else:
/// [`PortLock::try_acquire`] finds out.
pub struct Free {
    target: Target,
}

/// Held by this handle, taken cleanly: the file records this process.
pub struct Held {
    holding: Box<Holding>,
}

/// Locked by this handle, but the file still holds the info of a holder that
/// died without releasing; [`PortLock::reclaim`] overwrites it, dropping
/// leaves the stale file exactly as found.
pub struct Stale {
    stale: Box<StaleFile>,
}

/// Held by this handle after reclaiming a stale lock; remembers the dead
/// holder's info.
pub struct Reclaimed {
    holding: Box<Holding>,
    /// Boxed: the guard's two variants stay small, and a clean acquire
    /// carries none.
    previous: Option<Box<LockInfo>>,
}

impl sealed::Sealed for Free {
    fn target(&self) -> &Target {
        &self.target
    }
}
impl sealed::Sealed for Held {
    fn target(&self) -> &Target {
        &self.holding.target
    }
}
impl sealed::Sealed for Stale {
    fn target(&self) -> &Target {
        &self.stale.target
    }
}
impl sealed::Sealed for Reclaimed {
    fn target(&self) -> &Target {
        &self.holding.target
    }
}
impl State for Free {}
impl State for Held {}
impl State for Stale {}
impl State for Reclaimed {}

/// The per-port lock in state `S`.
///
/// The kernel's exclusive advisory lock on `<dir>/serve_<port>.lock` is the
/// only truth for "held"; a `PortLock<Held>` or `PortLock<Reclaimed>` owns it
/// until released or dropped (dropping releases, and never panics).
///
/// # Examples
/// ```
/// use llmlb::lock::{Acquired, LockDir};
/// # let tmp = tempfile::tempdir().unwrap();
/// let dir = LockDir::create(tmp.path().join("locks"))?;
/// let held = match dir.port(8000)?.try_acquire()? {
///     Acquired::Fresh(held) => held,
///     Acquired::Stale(stale) => panic!("nobody crashed here: {:?}", stale.previous()),
/// };
/// assert_eq!(held.info().pid, std::process::id());
/// let free = held.release()?;      // the file is gone, the port is free
/// let again = free.try_acquire()?; // a released lock can be taken again
/// # drop(again);
/// # Ok::<(), llmlb::lock::LockError>(())
/// ```
///
/// Releasing a lock that is not held does not compile:
/// ```compile_fail
/// # use llmlb::lock::LockDir;
/// # let tmp = tempfile::tempdir().unwrap();
/// # let dir = LockDir::create(tmp.path().join("locks")).unwrap();
/// let free = dir.port(8000).unwrap();
/// free.release(); // no `release` on PortLock<Free>
/// ```
/// and using a lock after its release does not either:
/// ```compile_fail
/// # use llmlb::lock::{Acquired, LockDir};
/// # let tmp = tempfile::tempdir().unwrap();
/// # let dir = LockDir::create(tmp.path().join("locks")).unwrap();
/// let Ok(Acquired::Fresh(held)) = dir.port(8000).unwrap().try_acquire() else { return };
/// let _free = held.release().unwrap();
/// println!("{}", held.info().pid); // `held` was moved by `release`
/// ```
/// A held lock cannot be reclaimed (only a stale one can):
/// ```compile_fail
/// # use llmlb::lock::{Acquired, LockDir};
/// # let tmp = tempfile::tempdir().unwrap();
/// # let dir = LockDir::create(tmp.path().join("locks")).unwrap();
/// let Ok(Acquired::Fresh(held)) = dir.port(8000).unwrap().try_acquire() else { return };
/// held.reclaim(); // no `reclaim` on PortLock<Held>
/// ```
/// Their passing twin: a stale lock is reclaimed, and the reclaimed lock released.
/// ```
/// use llmlb::lock::{Acquired, LockDir};
/// # let tmp = tempfile::tempdir().unwrap();
/// let dir = LockDir::create(tmp.path().join("locks"))?;
/// let Acquired::Fresh(held) = dir.port(8000)?.try_acquire()? else { unreachable!() };
/// let crashed_pid = held.info().pid;
/// held.abandon(); // as if killed: the file stays, the kernel lock goes
/// let Acquired::Stale(stale) = dir.port(8000)?.try_acquire()? else { unreachable!() };
/// let reclaimed = stale.reclaim()?;
/// assert_eq!(reclaimed.previous().map(|i| i.pid), Some(crashed_pid));
/// reclaimed.release()?;
/// # Ok::<(), llmlb::lock::LockError>(())
/// ```
pub struct PortLock<S: State> {
    state: S,
}

/// What [`PortLock::try_acquire`] got: a clean lock, or the lock of a holder
/// that crashed (to [`reclaim`](PortLock::reclaim) or drop).
pub enum Acquired {
    /// The port was free; the file now records this process.
    Fresh(PortLock<Held>),
    /// The previous holder died without releasing; its info is still there.
    Stale(PortLock<Stale>),
}

impl<S: State> PortLock<S> {
    /// The port this lock guards.
    pub fn port(&self) -> u16 {
        sealed::Sealed::target(&self.state).port
    }

    /// The lock file, `<dir>/serve_<port>.lock`.
    pub fn path(&self) -> &Path {
        sealed::Sealed::target(&self.state).path()
    }
}

impl PortLock<Free> {
    pub(crate) fn new_free(target: Target) -> Self {
        PortLock {
            state: Free { target },
        }
    }

    /// Which lock this is (for the waiter in `wait.rs`).
    pub(crate) fn free_target(&self) -> &Target {
        &self.state.target
    }

    /// Free → Held (or → Stale if a holder crashed): takes the port without
    /// blocking.
    ///
    /// # Errors
    /// [`LockError::AlreadyRunning`] with the holder's info when another open
    /// file holds the lock (its file is left untouched); `UnsafeLockFile`,
    /// `Busy` or `Io` otherwise. The free lock comes back in the error.
    pub fn try_acquire(self) -> Result<Acquired, TransitionError<Free>> {
        let target = self.state.target.clone();
        match protocol::acquire(target) {
            Ok(Acquisition::Fresh(holding)) => Ok(Acquired::Fresh(PortLock {
                state: Held { holding },
            })),
            Ok(Acquisition::Stale(stale)) => Ok(Acquired::Stale(PortLock {
                state: Stale { stale },
            })),
            Err(error) => Err(TransitionError { error, lock: self }),
        }
    }

    /// Free → Stale for `stop`, which only tidies up: takes a dead holder's
    /// file without ever writing to it, and never records this process.
    /// `Ok(None)` when the name held no content (an empty file is removed
    /// again under the lock).
    ///
    /// # Errors
    /// As [`try_acquire`](Self::try_acquire).
    pub(crate) fn try_take_stale(&self) -> Result<Option<PortLock<Stale>>, LockError> {
        Ok(
            protocol::acquire_to_discard(self.state.target.clone())?.map(|stale| PortLock {
                state: Stale { stale },
            }),
        )
    }
}

impl PortLock<Stale> {
    /// What the dead holder recorded, if readable.
    pub fn previous(&self) -> Option<&LockInfo> {
        self.state.stale.previous.as_ref()
    }

    /// Stale → Reclaimed: overwrites the dead holder's info with ours.
    ///
    /// # Errors
    /// `Io` if the file cannot be written; the stale lock (still locked) comes
    /// back in the error.
    pub fn reclaim(self) -> Result<PortLock<Reclaimed>, TransitionError<Stale>> {
        match (*self.state.stale).reclaim() {
            Ok((holding, previous)) => Ok(PortLock {
                state: Reclaimed {
                    holding,
                    previous: previous.map(Box::new),
                },
            }),
            Err((stale, error)) => Err(TransitionError {
                error,
                lock: PortLock {
                    state: Stale {
                        stale: Box::new(stale),
                    },
                },
            }),
        }
    }

    /// Stale → Free without taking the port: removes the stale file (unlinked
    /// while locked, so no holder can be affected). What `llmlb stop` does to
    /// a stale lock; nothing is signalled.
    ///
    /// # Errors
    /// `Io` if the file cannot be removed; the stale lock comes back.
    pub fn discard(self) -> Result<PortLock<Free>, TransitionError<Stale>> {
        match (*self.state.stale).discard() {
            Ok(target) => Ok(PortLock {
                state: Free { target },
            }),
            Err((stale, error)) => Err(TransitionError {
                error,
                lock: PortLock {
                    state: Stale {
                        stale: Box::new(stale),
                    },
                },
            }),
        }
    }
}

impl PortLock<Reclaimed> {
    /// What the dead holder had recorded, if it was readable.
    pub fn previous(&self) -> Option<&LockInfo> {
        self.state.previous.as_deref()
    }
}

/// A state in which this handle holds the lock: [`Held`] or [`Reclaimed`].
/// Sealed.
pub trait Holds: State + sealed::SealedHolds {}
impl Holds for Held {}
impl Holds for Reclaimed {}

impl sealed::SealedHolds for Held {
    type Extra = ();
    fn holding(&self) -> &Holding {
        &self.holding
    }
    fn holding_mut(&mut self) -> &mut Holding {
        &mut self.holding
    }
    fn split(self) -> (Box<Holding>, ()) {
        (self.holding, ())
    }
    fn join(holding: Box<Holding>, (): ()) -> Self {
        Held { holding }
    }
}

impl sealed::SealedHolds for Reclaimed {
    type Extra = Option<Box<LockInfo>>;
    fn holding(&self) -> &Holding {
        &self.holding
    }
    fn holding_mut(&mut self) -> &mut Holding {
        &mut self.holding
    }
    fn split(self) -> (Box<Holding>, Option<Box<LockInfo>>) {
        (self.holding, self.previous)
    }
    fn join(holding: Box<Holding>, previous: Option<Box<LockInfo>>) -> Self {
        Reclaimed { holding, previous }
    }
}

impl<S: Holds> PortLock<S> {
    /// What the lock file records about this holder.
    pub fn info(&self) -> &LockInfo {
        &self.state.holding().info
    }

    /// Held/Reclaimed → Free: removes the file while still locked (only if it
    /// still is the inode we locked and records this process), then closes.
    /// In a forked child that did not [`adopt`](Self::adopt), only closes the
    /// child's descriptor: the parent keeps its lock and its file.
    ///
    /// # Errors
    /// `Io` if the file cannot be inspected or removed; the lock, still held,
    /// comes back in the error.
    pub fn release(self) -> Result<PortLock<Free>, TransitionError<S>> {
        let (holding, extra) = self.state.split();
        match holding.release() {
            Ok(target) => Ok(PortLock {
                state: Free { target },
            }),
            Err((holding, error)) => Err(TransitionError {
                error,
                lock: PortLock {
                    state: S::join(holding, extra),
                },
            }),
        }
    }

    /// [`release`](Self::release) for [`PortGuard`], which drops the lock
    /// either way: the same protocol, without building the `Free` state.
    pub(crate) fn release_dropping(self) -> Result<(), LockError> {
        self.state.split().0.release_dropping()
    }

    /// Replaces the recorded `child_pgid` (exec mode records the process group
    /// of the command it runs, so `stop --force` can kill all of it), together
    /// with the identity of the group's leader (the process whose PID is
    /// `pgid`), read now: `stop` signals the group only while that leader is
    /// still the same process.
    ///
    /// # Errors
    /// `Io` if the file cannot be written; the old info stays recorded.
    pub fn set_child_pgid(&mut self, pgid: Option<u32>) -> Result<(), LockError> {
        let holding = self.state.holding_mut();
        let mut info = holding.info.clone();
        info.child_pgid = pgid;
        info.child_identity = pgid.and_then(super::info::ProcessIdentity::of_pid);
        holding.rewrite(info)
    }

    /// Records the private port `serve --proxy`'s command serves on
    /// ([`LockInfo::backend_port`](super::LockInfo::backend_port)); `None`
    /// takes it off.
    ///
    /// # Errors
    /// `Io` if the file cannot be written; the old info stays recorded.
    pub fn set_backend_port(&mut self, port: Option<u16>) -> Result<(), LockError> {
        let holding = self.state.holding_mut();
        let mut info = holding.info.clone();
        info.backend_port = port;
        holding.rewrite(info)
    }

    /// Records that the holder is now `state` (since now), rewriting the
    /// record in place under the lock (written, then cut to length, as every
    /// write of the record is; a reader racing it retries). Readers such as
    /// `llmlb wait` and `status` see it at once; a no-op write is not skipped,
    /// so `state_since` always says when the holder last said it.
    ///
    /// # Errors
    /// `Io` if the file cannot be written; the old state stays recorded.
    pub fn set_state(&mut self, state: ServeState) -> Result<(), LockError> {
        let holding = self.state.holding_mut();
        let mut info = holding.info.clone();
        info.set_serve_state(state);
        holding.rewrite(info)
    }

    /// Makes the calling process the holder of an inherited lock: for
    /// launchers that take the lock, fork, and let the parent exit
    /// (`pidfile_write` in the child, as pidfile(3) does). The file then
    /// records this process's PID and identity (keeping `started_at`), and only
    /// this process's release removes it. A no-op in the process that already
    /// owns the lock.
    ///
    /// # Errors
    /// `Io` if the file cannot be written; ownership is unchanged.
    pub fn adopt(&mut self) -> Result<(), LockError> {
        self.state.holding_mut().adopt()
    }

    /// Whether this process owns the lock: it took or adopted it, and the file
    /// still records it. A parent whose forked child adopted is not the owner.
    pub fn is_owner(&self) -> bool {
        self.state.holding().is_owner()
    }

    /// Checks that the lock file is still the one this handle holds and still
    /// names a holder, and repairs it if it was removed, replaced or
    /// overwritten with garbage by hand (the seed's quickstart suggests `rm`):
    /// servers call this every few hundred milliseconds.
    ///
    /// # Errors
    /// `Io`/`UnsafeLockDir`/`UnsafeLockFile` if the file cannot be inspected or
    /// re-created; the handle is unchanged and may be verified again.
    pub fn verify(&mut self) -> Result<Integrity, LockError> {
        self.state.holding_mut().verify()
    }

    /// Keeps tmp cleaners from removing what this holder depends on: the
    /// lock file's, the lock dir's and each of `companions`' (names in the
    /// lock dir, such as the handover's control socket; a missing one is
    /// skipped) access and modification times are set to now, for cleaners
    /// that judge by age alone (tmpreaper, `find -mtime`). A running server
    /// calls this hourly (its watchdog). On Unix, a holder also keeps a
    /// shared `flock` on the lock dir from acquire to release, which
    /// systemd-tmpfiles honours: this re-takes it if it could not be had
    /// then. Nothing on Windows, where open files are not aged out.
    ///
    /// # Errors
    /// `Io` naming the file whose times could not be set; the lock stays
    /// held either way.
    pub fn refresh(&mut self, companions: &[&str]) -> Result<(), LockError> {
        self.state.holding_mut().refresh(companions)
    }

    /// Closes the descriptor without removing the file, exactly as if this
    /// process had been killed: the next acquirer reclaims a stale lock. For
    /// crash tests and fault injection.
    pub fn abandon(self) {
        let (holding, _) = self.state.split();
        holding.abandon();
    }

    /// Where `llmlb stop` asks this holder to shut down: a handle to wait on
    /// (see [`StopRequest`](super::StopRequest)), cheap to clone and usable
    /// after the lock is released.
    pub fn stop_request(&self) -> super::StopRequest {
        super::StopRequest::new(std::sync::Arc::clone(&self.state.holding().stop))
    }

    /// The open lock file, to hand its description to a child (exec mode,
    /// `lock_fd`): marks the lock as shared, so its release accounts for
    /// the processes that inherit it.
    pub(crate) fn share_file(&mut self) -> &std::fs::File {
        let holding = self.state.holding_mut();
        holding.mark_shared();
        holding.file()
    }
}

/// The holder returned by [`acquire_or_reclaim`]: one type for a clean or a
/// reclaimed lock, for callers (the CLI, the C ABI) that treat both alike.
/// Dropping it releases.
pub struct PortGuard {
    inner: GuardInner,
}

enum GuardInner {
    Held(PortLock<Held>),
    Reclaimed(PortLock<Reclaimed>),
}

/// Takes `port` in `dir`, reclaiming it if its previous holder crashed: the
/// entry point for servers and launchers.
///
/// # Errors
/// [`LockError::AlreadyRunning`] with the holder's info if the port is taken;
/// `InvalidPort`, `UnsafeLockFile`, `Busy`, `Io` otherwise.
///
/// # Examples
/// ```
/// # let tmp = tempfile::tempdir().unwrap();
/// let dir = llmlb::lock::LockDir::create(tmp.path().join("locks"))?;
/// let guard = llmlb::lock::acquire_or_reclaim(&dir, 8000)?;
/// assert!(!guard.was_reclaimed());
/// let second = llmlb::lock::acquire_or_reclaim(&dir, 8000).unwrap_err();
/// assert!(second.is_already_running());
/// guard.release()?;
/// # Ok::<(), llmlb::lock::LockError>(())
/// ```
pub fn acquire_or_reclaim(dir: &super::LockDir, port: u16) -> Result<PortGuard, LockError> {
    let guard = match dir.port(port)?.try_acquire()? {
        Acquired::Fresh(held) => PortGuard {
            inner: GuardInner::Held(held),
        },
        Acquired::Stale(stale) => {
            match stale.previous() {
                Some(prev) if prev.holder_released() => tracing::warn!(
                    port,
                    "Stale lock file detected (PID {} released it to processes that inherited the lock, and they have exited), reclaiming",
                    prev.pid
                ),
                Some(prev) => tracing::warn!(
                    port,
                    "Stale lock file detected (previous holder PID {} exited without releasing it), reclaiming",
                    prev.pid
                ),
                None => tracing::warn!(port, "Stale lock file detected (unreadable content), reclaiming"),
            }
            PortGuard {
                inner: GuardInner::Reclaimed(stale.reclaim()?),
            }
        }
    };
    tracing::debug!(port, path = %guard.path().display(), "lock acquired");
    Ok(guard)
}

macro_rules! on_both {
    ($self:expr, $lock:ident => $body:expr) => {
        match $self {
            GuardInner::Held($lock) => $body,
            GuardInner::Reclaimed($lock) => $body,
        }
    };
}

impl PortGuard {
    /// The port held.
    pub fn port(&self) -> u16 {
        on_both!(&self.inner, l => l.port())
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        on_both!(&self.inner, l => l.path())
    }

    /// What the lock file records about this holder.
    pub fn info(&self) -> &LockInfo {
        on_both!(&self.inner, l => l.info())
    }

    /// Whether a crashed holder's lock was reclaimed to get this one.
    pub fn was_reclaimed(&self) -> bool {
        matches!(self.inner, GuardInner::Reclaimed(_))
    }

    /// The crashed holder's info when a stale lock was reclaimed and its file
    /// was readable; `None` for a clean acquire or unreadable content.
    pub fn reclaimed_from(&self) -> Option<&LockInfo> {
        match &self.inner {
            GuardInner::Held(_) => None,
            GuardInner::Reclaimed(l) => l.previous(),
        }
    }

    /// See [`PortLock::set_backend_port`].
    ///
    /// # Errors
    /// As [`PortLock::set_backend_port`].
    pub fn set_backend_port(&mut self, port: Option<u16>) -> Result<(), LockError> {
        on_both!(&mut self.inner, l => l.set_backend_port(port))
    }

    /// See [`PortLock::set_child_pgid`].
    ///
    /// # Errors
    /// `Io` if the file cannot be written.
    pub fn set_child_pgid(&mut self, pgid: Option<u32>) -> Result<(), LockError> {
        on_both!(&mut self.inner, l => l.set_child_pgid(pgid))
    }

    /// See [`PortLock::set_state`].
    ///
    /// # Errors
    /// `Io` if the file cannot be written.
    pub fn set_state(&mut self, state: ServeState) -> Result<(), LockError> {
        on_both!(&mut self.inner, l => l.set_state(state))
    }

    /// See [`PortLock::adopt`].
    ///
    /// # Errors
    /// `Io` if the file cannot be written.
    pub fn adopt(&mut self) -> Result<(), LockError> {
        on_both!(&mut self.inner, l => l.adopt())
    }

    /// See [`PortLock::verify`].
    ///
    /// # Errors
    /// As [`PortLock::verify`].
    pub fn verify(&mut self) -> Result<Integrity, LockError> {
        on_both!(&mut self.inner, l => l.verify())
    }

    /// See [`PortLock::stop_request`].
    pub fn stop_request(&self) -> super::StopRequest {
        on_both!(&self.inner, l => l.stop_request())
    }

    /// See [`PortLock::refresh`].
    ///
    /// # Errors
    /// As [`PortLock::refresh`].
    pub fn refresh(&mut self, companions: &[&str]) -> Result<(), LockError> {
        on_both!(&mut self.inner, l => l.refresh(companions))
    }

    /// See [`PortLock::is_owner`].
    pub fn is_owner(&self) -> bool {
        on_both!(&self.inner, l => l.is_owner())
    }

    /// Releases (see [`PortLock::release`]).
    ///
    /// # Errors
    /// `Io` if the file cannot be removed; the lock is then released by
    /// closing the descriptor anyway, leaving a stale file.
    ///
    /// After the lock's descriptor was handed to a child (the C ABI's
    /// `llmlb_lock_fd`, or exec mode, `llmlb serve -- CMD`), the file is removed only if no process still
    /// holds that descriptor; otherwise it stays, held, until the last one
    /// exits (then it is stale).
    pub fn release(self) -> Result<(), LockError> {
        let port = self.port();
        let result = on_both!(self.inner, l => l.release_dropping());
        tracing::debug!(port, ok = result.is_ok(), "lock released");
        result
    }

    /// See [`PortLock::abandon`].
    pub fn abandon(self) {
        on_both!(self.inner, l => l.abandon())
    }

    /// The open lock file, to hand its description to a child; marks the
    /// guard as shared (see [`release`](Self::release)).
    pub(crate) fn share_file(&mut self) -> &std::fs::File {
        on_both!(&mut self.inner, l => l.share_file())
    }

    /// The lock of `port` in `dir` received from its holder `from` by a
    /// handover (`serve --replace`): see `Holding::from_handover` for what
    /// is checked before the record is made to name this process (in
    /// `state`, with [`LockInfo::took_over_from`](super::LockInfo::took_over_from)).
    // Windows has no descriptor passing: no handover reaches these.
    #[cfg_attr(not(unix), allow(dead_code))]
    pub(crate) fn from_handover(
        dir: &super::LockDir,
        port: u16,
        file: std::fs::File,
        state: ServeState,
        from: u32,
    ) -> Result<PortGuard, LockError> {
        let target = dir.port(port)?.free_target().clone();
        let holding = super::protocol::Holding::from_handover(target, file, state, from)?;
        Ok(PortGuard {
            inner: GuardInner::Held(PortLock {
                state: Held { holding },
            }),
        })
    }

    /// Marks this lock as handed to a successor (`true`, just before its
    /// descriptor is sent) or as kept after all (`false`, the send failed).
    /// While handed on, nothing here writes the record or removes the file:
    /// the record is the successor's until [`restore_record`](Self::restore_record).
    // Windows has no descriptor passing: no handover reaches these.
    #[cfg_attr(not(unix), allow(dead_code))]
    pub(crate) fn set_handed_on(&mut self, handed_on: bool) {
        on_both!(&mut self.inner, l => sealed::SealedHolds::holding_mut(&mut l.state).set_handed_on(handed_on))
    }

    /// Whether this lock's descriptor is in a successor's hands (`serve
    /// --replace` under way): the record, and what goes with owning the port
    /// (a pidfile), are the successor's until it gives the port back. Ask
    /// it under the same mutex the handover takes the guard with (a
    /// [`SharedLock`](crate::supervise::SharedLock)'s `with`), and the
    /// answer holds for what that closure does.
    pub fn is_handed_on(&self) -> bool {
        on_both!(&self.inner, l => sealed::SealedHolds::holding(&l.state).is_handed_on())
    }

    /// Writes this holder's record back (a handover it offered was
    /// abandoned by the successor, which had written its own), and takes
    /// the record back from a [`set_handed_on`](Self::set_handed_on).
    // Windows has no descriptor passing: no handover reaches these.
    #[cfg_attr(not(unix), allow(dead_code))]
    pub(crate) fn restore_record(&mut self) -> Result<(), LockError> {
        on_both!(&mut self.inner, l => sealed::SealedHolds::holding_mut(&mut l.state).restore_record())
    }

    /// Records the predecessors still draining after handing the port to
    /// this holder (`LockInfo::draining`).
    pub(crate) fn set_draining(&mut self, pids: Vec<u32>) -> Result<(), LockError> {
        on_both!(&mut self.inner, l => {
            let holding = sealed::SealedHolds::holding_mut(&mut l.state);
            let mut info = holding.info.clone();
            info.draining = pids;
            holding.rewrite(info)
        })
    }
}

impl std::fmt::Debug for PortGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PortGuard")
            .field("port", &self.port())
            .field("path", &self.path())
            .field("pid", &self.info().pid)
            .field("reclaimed", &self.was_reclaimed())
            .finish()
    }
}
