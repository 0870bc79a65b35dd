//! Waiting for a port: try, and if it is held, sleep until it may be free and
//! try again, until a deadline.
//!
//! How a waiter sleeps (and why not in the kernel's lock wait):
//! - Release unlinks the lock file while still holding it, so the moment a
//!   holder releases is the unlink: the waiter watches the lock *dir* (the
//!   file itself dies with the release; inotify on Linux, kqueue on macOS)
//!   and wakes on the unlink, before the old holder has even closed its
//!   descriptor.
//! - A holder that crashes leaves its file: the kernel drops its lock when the
//!   descriptor closes, which inotify reports as a close-after-write (kqueue
//!   reports nothing: on macOS the poll tick finds a dead holder). Failed
//!   attempts by other acquirers close their descriptors too, so such a wake
//!   only triggers a cheap probe (a read-only open that produces no event of
//!   its own), never a full attempt: waiters cannot wake each other in a storm.
//! - Whatever wakes a waiter, it re-runs the whole acquire protocol (inode
//!   re-check included): a wake is a hint, never a grant.
//! - Everywhere (and as a safety net under a watch: NFS, lost events, no
//!   inotify instances left, a holder's death that kqueue or Windows cannot
//!   see) a bounded poll: backoff from 1 ms, capped at [`WAIT_POLL_CAP`].
//! - A blocking `flock` in a helper thread was rejected: it wakes on the
//!   released, already unlinked inode (so it must re-check anyway), it cannot
//!   be cancelled at a deadline or when an async caller gives up without
//!   leaving a thread that may still win the lock later, and a queued kernel
//!   waiter would hold a descriptor on the file.
//!
//! While it sleeps, a waiter holds nothing: no lock (shared or exclusive), no
//! descriptor on the lock file. A try-once acquirer racing waiters sees
//! exactly what it would see without them; who gets a freed port is a race,
//! as with `flock -w`, and a waiter never keeps a normal acquirer out.

// The typestate twin hands the free lock back by value, as `try_acquire`
// does (see state.rs); a cold path.
#![allow(clippy::result_large_err)]

use std::time::{Duration, Instant};

use super::error::{LockError, TransitionError};
use super::protocol::{self, Target};
use super::state::{acquire_or_reclaim, Acquired, Free, PortGuard, PortLock};
use super::sys::{self, Wake};
use super::{LockDir, LockState};

/// The longest a waiter sleeps between two looks at the lock file when
/// nothing wakes it (no dir watch: Windows, other Unixes, or a lock dir on
/// NFS), or when the watch cannot see a holder die (kqueue on macOS).
/// py-filelock polls every 50 ms.
pub const WAIT_POLL_CAP: Duration = Duration::from_millis(20);

/// With an inotify watch, which also reports a holder's death, ticks are
/// only a safety net (events from other hosts on NFS never arrive), so they
/// may be rarer.
pub(crate) const WATCHED_POLL_CAP: Duration = Duration::from_millis(50);

/// The first sleep between looks; doubled up to the cap.
const FIRST_POLL: Duration = Duration::from_millis(1);

/// Whether a failed attempt is worth retrying until the deadline: the port
/// is held, or readers kept it busy. Anything else (unsafe dir or file, I/O)
/// will not go away by waiting.
fn retryable(e: &LockError) -> bool {
    matches!(e, LockError::AlreadyRunning { .. } | LockError::Busy { .. })
}

/// The sleeping half of a wait: when to give up, and what wakes it.
pub(crate) struct Waiter {
    target: Target,
    deadline: Option<Instant>,
    backoff: Duration,
    /// Set up after the first failed attempt: waiting costs nothing when the
    /// port is free.
    armed: bool,
    watch: Option<sys::DirWatch>,
    /// A watch was set up (it may since have moved into an async reactor).
    watched: bool,
}

impl Waiter {
    /// A waiter for `target` that gives up `timeout` from now (never, if that
    /// is beyond what `Instant` can represent, e.g. `Duration::MAX`).
    pub(crate) fn new(target: Target, timeout: Duration) -> Waiter {
        Waiter {
            target,
            deadline: Instant::now().checked_add(timeout),
            backoff: FIRST_POLL,
            armed: false,
            watch: None,
            watched: false,
        }
    }

    /// Time left before the deadline; `None` once it has passed.
    fn left(&self) -> Option<Duration> {
        match self.deadline {
            None => Some(Duration::MAX),
            Some(d) => d
                .checked_duration_since(Instant::now())
                .filter(|l| !l.is_zero()),
        }
    }

    /// The first call after a failed attempt starts watching (if `watch`: a
    /// caller that cannot wait on the watch passes false), then asks for one
    /// more attempt at once (a release between that attempt and the watch
    /// would otherwise be missed). Returns whether the caller should attempt.
    fn arm(&mut self, watch: bool) -> Option<bool> {
        if self.armed {
            return None;
        }
        self.armed = true;
        if self.left().is_none() {
            return Some(false);
        }
        self.watch = watch
            .then(|| sys::DirWatch::new(&self.target.dir, self.target.name.as_str()).ok())
            .flatten();
        self.watched = self.watch.is_some();
        Some(true)
    }

    /// The next sleep: the backoff, not past the deadline. `None` at the
    /// deadline.
    fn next_tick(&mut self) -> Option<Duration> {
        let left = self.left()?;
        let tick = left.min(self.backoff);
        let cap = if self.watched && sys::WATCH_SEES_HOLDER_EXIT {
            WATCHED_POLL_CAP
        } else {
            WAIT_POLL_CAP
        };
        self.backoff = (self.backoff * 2).min(cap);
        Some(tick)
    }

    /// Whether a wake is worth a full attempt. A close or a tick only when a
    /// probe (read-only, no event, never creates) does not see a holder.
    fn worth_attempt(&self, wake: Wake) -> bool {
        wake == Wake::Changed || !matches!(protocol::probe(&self.target), Ok(LockState::Held(_)))
    }

    /// After a failed attempt: sleeps until the port may be free. `true`:
    /// attempt again; `false`: the deadline has passed.
    pub(crate) fn pause(&mut self) -> bool {
        if let Some(go) = self.arm(true) {
            return go;
        }
        loop {
            let Some(tick) = self.next_tick() else {
                return false;
            };
            let wake = match &mut self.watch {
                Some(w) => w.wait(tick),
                None => {
                    std::thread::sleep(tick);
                    Wake::Timeout
                }
            };
            if self.worth_attempt(wake) {
                return true;
            }
        }
    }
}

/// Takes `port` in `dir` like [`acquire_or_reclaim`], waiting up to `timeout`
/// for its holder to release it (or die): returns as soon as the lock is
/// free. `Duration::ZERO` tries once; `Duration::MAX` waits forever.
///
/// The wait sleeps (inotify on Linux, kqueue on macOS, a poll capped at
/// [`WAIT_POLL_CAP`] elsewhere), holds nothing while it sleeps, and re-runs the whole protocol
/// after every wake. See the module docs of `lock::wait` for the design.
///
/// # Errors
/// [`LockError::AlreadyRunning`] with the holder's info (from the last look)
/// at the deadline; [`LockError::Busy`] if only readers were in the way at
/// the deadline; any other error at once (`InvalidPort`, `UnsafeLockFile`,
/// `Io`).
///
/// # Examples
/// ```
/// use std::time::Duration;
/// use llmlb::lock::LockError;
/// # let tmp = tempfile::tempdir().unwrap();
/// let dir = llmlb::lock::LockDir::create(tmp.path().join("locks"))?;
/// let first = llmlb::lock::acquire_timeout(&dir, 8000, Duration::ZERO)?;
/// // Held (here by ourselves): at the deadline, who holds it.
/// match llmlb::lock::acquire_timeout(&dir, 8000, Duration::from_millis(30)) {
///     Err(LockError::AlreadyRunning { holder, .. }) => {
///         assert_eq!(holder.map(|h| h.pid), Some(std::process::id()))
///     }
///     other => panic!("{other:?}"),
/// }
/// first.release()?;
/// let second = llmlb::lock::acquire_timeout(&dir, 8000, Duration::from_secs(5))?;
/// # drop(second);
/// # Ok::<(), llmlb::lock::LockError>(())
/// ```
pub fn acquire_timeout(
    dir: &LockDir,
    port: u16,
    timeout: Duration,
) -> Result<PortGuard, LockError> {
    let mut waiter = None;
    loop {
        let err = match acquire_or_reclaim(dir, port) {
            Ok(guard) => return Ok(guard),
            Err(e) if retryable(&e) => e,
            Err(e) => return Err(e),
        };
        let waiter = waiter.get_or_insert_with(|| Waiter::new(Target::new(dir, port), timeout));
        if !waiter.pause() {
            return Err(err);
        }
    }
}

impl PortLock<Free> {
    /// Free → Held (or → Stale), waiting up to `timeout` for the holder to
    /// release: [`try_acquire`](Self::try_acquire) retried as the port may
    /// have become free, as in [`acquire_timeout`]. `Duration::ZERO` tries
    /// once; `Duration::MAX` waits forever.
    ///
    /// # Errors
    /// As [`try_acquire`](Self::try_acquire); `AlreadyRunning` (or `Busy`)
    /// only once `timeout` has passed. The free lock comes back in the error.
    ///
    /// # Examples
    /// ```
    /// use std::time::Duration;
    /// use llmlb::lock::{Acquired, LockDir};
    /// # let tmp = tempfile::tempdir().unwrap();
    /// let dir = LockDir::create(tmp.path().join("locks"))?;
    /// let Acquired::Fresh(held) = dir.port(8000)?.acquire_timeout(Duration::ZERO)? else {
    ///     unreachable!()
    /// };
    /// let busy = dir.port(8000)?.acquire_timeout(Duration::from_millis(10)).err().unwrap();
    /// assert!(busy.error.is_already_running());
    /// held.release()?;
    /// # Ok::<(), llmlb::lock::LockError>(())
    /// ```
    pub fn acquire_timeout(self, timeout: Duration) -> Result<Acquired, TransitionError<Free>> {
        let mut waiter = None;
        let mut free = self;
        loop {
            let failed = match free.try_acquire() {
                Ok(acquired) => return Ok(acquired),
                Err(failed) if retryable(&failed.error) => failed,
                Err(failed) => return Err(failed),
            };
            let waiter = waiter
                .get_or_insert_with(|| Waiter::new(failed.lock.free_target().clone(), timeout));
            if !waiter.pause() {
                return Err(failed);
            }
            free = failed.lock;
        }
    }
}

/// The async wait, for `acquire_timeout_async` (feature `tokio`) and the CLI.
#[cfg(all(any(feature = "server", feature = "tokio"), not(loom)))]
pub(crate) mod async_impl {
    use super::*;

    /// A [`Waiter`] whose sleep is a tokio timer and whose watch descriptor
    /// (inotify, or a kqueue, which is itself pollable) is registered with
    /// the runtime's reactor: no thread is blocked.
    struct AsyncWaiter {
        inner: Waiter,
        #[cfg(any(target_os = "linux", target_os = "android", target_os = "macos"))]
        fd: Option<tokio::io::unix::AsyncFd<sys::DirWatch>>,
    }

    impl AsyncWaiter {
        async fn pause(&mut self) -> bool {
            // Windows' notification handle cannot join tokio's reactor: the
            // async waiter polls on the timer there, with no watch set up.
            let reactor_can_watch = cfg!(any(
                target_os = "linux",
                target_os = "android",
                target_os = "macos"
            ));
            if let Some(go) = self.inner.arm(reactor_can_watch) {
                #[cfg(any(target_os = "linux", target_os = "android", target_os = "macos"))]
                {
                    // `with_interest` is deprecated (since tokio 1.54) for
                    // `unsafe register`, whose contract DirWatch keeps: it owns
                    // its descriptor and always returns the same one. Kept for
                    // every tokio 1.x. A registration error: poll on the timer.
                    #[allow(deprecated)]
                    let fd = self.inner.watch.take().and_then(|w| {
                        tokio::io::unix::AsyncFd::with_interest(w, tokio::io::Interest::READABLE)
                            .ok()
                    });
                    self.fd = fd;
                }
                return go;
            }
            loop {
                let Some(tick) = self.inner.next_tick() else {
                    return false;
                };
                let wake = self.sleep(tick).await;
                if self.inner.worth_attempt(wake) {
                    return true;
                }
            }
        }

        #[cfg(any(target_os = "linux", target_os = "android", target_os = "macos"))]
        async fn sleep(&mut self, tick: Duration) -> Wake {
            let Some(fd) = &mut self.fd else {
                tokio::time::sleep(tick).await;
                return Wake::Timeout;
            };
            match tokio::time::timeout(tick, fd.readable_mut()).await {
                Err(_elapsed) => Wake::Timeout,
                Ok(Ok(mut ready)) => {
                    let wake = ready.get_inner_mut().drain();
                    // drain read until EAGAIN: nothing is left queued.
                    ready.clear_ready();
                    wake
                }
                Ok(Err(_)) => {
                    self.fd = None;
                    Wake::Changed
                }
            }
        }

        #[cfg(not(any(target_os = "linux", target_os = "android", target_os = "macos")))]
        async fn sleep(&mut self, tick: Duration) -> Wake {
            tokio::time::sleep(tick).await;
            Wake::Timeout
        }
    }

    /// See `acquire_timeout_async`, which wraps it; the CLI calls it directly.
    pub async fn acquire_timeout(
        dir: &LockDir,
        port: u16,
        timeout: Duration,
    ) -> Result<PortGuard, LockError> {
        let mut waiter = None;
        loop {
            // One attempt is a handful of non-blocking system calls; it runs on
            // the calling task, so no lock is ever taken after the future was
            // dropped (a spawn_blocking attempt could still win afterwards).
            let err = match acquire_or_reclaim(dir, port) {
                Ok(guard) => return Ok(guard),
                Err(e) if retryable(&e) => e,
                Err(e) => return Err(e),
            };
            let waiter = waiter.get_or_insert_with(|| AsyncWaiter {
                inner: Waiter::new(Target::new(dir, port), timeout),
                #[cfg(any(target_os = "linux", target_os = "android", target_os = "macos"))]
                fd: None,
            });
            if !waiter.pause().await {
                return Err(err);
            }
        }
    }
}

/// [`acquire_timeout`] for async code (feature `tokio`, also on with the
/// default `cli` feature, which has tokio anyway): waits on the
/// runtime's timer and (on Linux and macOS) its reactor, never blocking a runtime
/// thread while it waits.
///
/// Cancel-safe: dropping the future (e.g. `tokio::select!` losing, a
/// `tokio::time::timeout`) leaves nothing held and nothing created, because
/// each attempt runs to completion inside one poll and a won lock is returned
/// from that same poll. An attempt itself is a few non-blocking system calls
/// on the calling task (it may sleep briefly, at most 100 ms, only while
/// `llmlb status`-style readers hold the file).
///
/// Needs a tokio runtime with the timer and I/O drivers enabled
/// (`enable_all()`, as `#[tokio::main]` does).
///
/// # Errors
/// As [`acquire_timeout`].
///
/// # Examples
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), llmlb::lock::LockError> {
/// use std::time::Duration;
/// # let tmp = tempfile::tempdir().unwrap();
/// let dir = llmlb::lock::LockDir::create(tmp.path().join("locks"))?;
/// let guard = llmlb::lock::acquire_timeout_async(&dir, 8000, Duration::from_secs(5)).await?;
/// # drop(guard);
/// # Ok(())
/// # }
/// ```
#[cfg(all(any(feature = "server", feature = "tokio"), not(loom)))]
pub async fn acquire_timeout_async(
    dir: &LockDir,
    port: u16,
    timeout: Duration,
) -> Result<PortGuard, LockError> {
    async_impl::acquire_timeout(dir, port, timeout).await
}
