//! A held lock shared by the two threads of a running server: the main thread
//! (serving, handling SIGINT/SIGTERM, releasing on the way out, or dropping
//! the lock if it unwinds) and the watchdog thread (checking every few hundred
//! milliseconds that the lock file is still ours, re-creating it if it was
//! removed by hand). This module is the whole of their coordination; the CLI
//! only spawns the thread and prints what it reports, and `tests/loom.rs`
//! model-checks this same code through `crate::sync`.
//!
//! The rules:
//! - the guard is released exactly once: by [`SharedLock::release`], or by
//!   dropping the [`SharedLock`] if nobody released it;
//! - `verify` never runs on a released guard, so the watchdog cannot
//!   re-create a lock file after the release removed it;
//! - the watchdog keeps checking until the release (a draining server, or an
//!   exec-mode command still running after the forwarded signal, still holds
//!   the port), and the release wakes it so it ends at once.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::sync::{Arc, Condvar, Mutex, MutexGuard};

use crate::lock::{Integrity, LockError, LockInfo, PortGuard};

/// What [`SharedLock`] needs of a held lock: [`PortGuard`] in production.
/// Generic so the coordination can be model-checked with a guard that
/// records its calls (loom cannot model flock or files).
///
/// Dropping an unreleased guard must release it, as [`PortGuard`] does.
pub trait Guard {
    /// Why a check or a release failed.
    type Error;

    /// Checks the lock file and repairs it if it was removed or replaced by
    /// hand (see [`PortGuard::verify`]).
    ///
    /// # Errors
    /// Whatever the implementation reports; the guard stays held.
    fn verify(&mut self) -> Result<Integrity, Self::Error>;

    /// Releases, consuming `self`.
    ///
    /// # Errors
    /// Whatever the implementation reports; it has been consumed regardless.
    fn release(self) -> Result<(), Self::Error>;

    /// Keeps tmp cleaners from ageing out what the holder depends on (see
    /// [`PortGuard::refresh`]); the watchdog calls it every
    /// [`REFRESH_INTERVAL`]. Nothing by default (a guard without files).
    ///
    /// # Errors
    /// Whatever the implementation reports; the guard stays held.
    fn refresh(&mut self) -> Result<(), Self::Error> {
        Ok(())
    }
}

/// How often a running server refreshes the times of its lock file, control
/// socket and lock dir ([`Guard::refresh`]): well inside any age a cleaner
/// that ignores locks is set to (systemd's `/tmp` default is 10 days,
/// tmpreaper's 7; PostgreSQL touches its socket lock files every 58 minutes
/// for the same reason).
pub const REFRESH_INTERVAL: Duration = Duration::from_secs(3600);

impl Guard for PortGuard {
    type Error = LockError;

    fn verify(&mut self) -> Result<Integrity, LockError> {
        PortGuard::verify(self)
    }

    /// The lock file, the lock dir and the handover's control socket
    /// (`serve_<port>.ctl`, if there is one: a successor's, mid-handover,
    /// is as much the port's).
    fn refresh(&mut self) -> Result<(), LockError> {
        // The name alone: the path under an empty dir.
        let control = super::handover::control_path(Path::new(""), self.port());
        let control = control.to_str().unwrap_or_default();
        PortGuard::refresh(self, &[control])
    }

    fn release(self) -> Result<(), LockError> {
        PortGuard::release(self)
    }
}

/// A held lock shared with a [`Watchdog`] thread. The main thread uses the
/// guard through [`with`](SharedLock::with) and releases it with
/// [`release`](SharedLock::release); dropping an unreleased `SharedLock`
/// releases it (the guard's own `Drop`). Either way the watchdog is woken and
/// ends.
///
/// # Examples
/// ```
/// # let tmp = tempfile::tempdir().unwrap();
/// use std::time::Duration;
/// use llmlb::lock::{acquire_or_reclaim, LockDir};
/// use llmlb::supervise::{SharedLock, WatchEnd};
///
/// let dir = LockDir::create(tmp.path().join("locks"))?;
/// let lock = SharedLock::new(acquire_or_reclaim(&dir, 8000)?);
/// let watchdog = lock.watchdog();
/// let thread = std::thread::spawn(move || watchdog.run(Duration::from_millis(500), |_| {}));
/// lock.release().expect("the first release wins")?;
/// assert_eq!(thread.join().unwrap(), WatchEnd::Released);
/// # Ok::<(), llmlb::lock::LockError>(())
/// ```
pub struct SharedLock<T: Guard = PortGuard> {
    inner: Arc<Inner<T>>,
}

/// The watchdog's handle on a [`SharedLock`]: it never releases the lock, and
/// does not keep the lock held.
pub struct Watchdog<T: Guard = PortGuard> {
    inner: Arc<Inner<T>>,
}

struct Inner<T> {
    /// `None` once released. Every use of the guard holds this mutex, which is
    /// what makes the release and the watchdog's checks exclusive.
    slot: Mutex<Option<T>>,
    /// Notified when the slot empties, so a waiting watchdog ends at once.
    released: Condvar,
}

impl<T> Inner<T> {
    fn slot(&self) -> MutexGuard<'_, Option<T>> {
        // A panic inside `with` must not make the lock unreleasable.
        self.slot
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Takes the guard out (once) and wakes the watchdog.
    fn take(&self) -> Option<T> {
        let guard = self.slot().take();
        self.released.notify_all();
        guard
    }
}

/// Something the watchdog noticed that the lock's owner should hear about.
#[derive(Debug)]
#[non_exhaustive]
pub enum WatchEvent<E> {
    /// The lock file had been removed, replaced or overwritten by hand; it has
    /// been re-created with our info.
    Restored,
    /// The lock file could not be checked; the watchdog tries again.
    CannotCheck(E),
    /// The times of the lock file, its dir or the control socket could not
    /// be refreshed ([`Guard::refresh`]); the watchdog tries again after
    /// [`REFRESH_INTERVAL`] (a read-only file system must not log twice a
    /// second).
    CannotRefresh(E),
}

/// Why [`Watchdog::run`] ended.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum WatchEnd {
    /// The lock was released (or its `SharedLock` dropped): nothing to watch.
    Released,
    /// The lock file was removed or replaced and another process has taken the
    /// port since (its info if readable): this process no longer holds it and
    /// should shut down (then release, which removes nothing of the new
    /// holder's).
    Lost(Option<Box<LockInfo>>),
    /// The lock file was removed or replaced while other processes share the
    /// lock (see [`Integrity::Detached`]): the name is held again, but what
    /// shares the lock holds only the old file. End it, then release.
    Detached,
}

impl<T: Guard> SharedLock<T> {
    /// Shares `guard`.
    pub fn new(guard: T) -> Self {
        SharedLock {
            inner: Arc::new(Inner {
                slot: Mutex::new(Some(guard)),
                released: Condvar::new(),
            }),
        }
    }

    /// Runs `f` on the guard if it has not been released; `None` afterwards.
    /// Serialised with the release and the watchdog's checks.
    pub fn with<R>(&self, f: impl FnOnce(&mut T) -> R) -> Option<R> {
        self.inner.slot().as_mut().map(f)
    }

    /// Releases the guard and ends the watchdog: `Some(result)` for the call
    /// that released it, `None` if it was already released.
    pub fn release(&self) -> Option<Result<(), T::Error>> {
        Some(self.inner.take()?.release())
    }

    /// A second handle for another thread that uses the guard (a handover
    /// offer, see [`crate::supervise::handover`]): it never releases the
    /// guard, and dropping it leaves the lock held.
    pub fn handle(&self) -> LockHandle<T> {
        LockHandle {
            inner: Arc::clone(&self.inner),
        }
    }

    /// A handle for the watchdog thread; see [`Watchdog::run`].
    pub fn watchdog(&self) -> Watchdog<T> {
        Watchdog {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl<T: Guard> Drop for SharedLock<T> {
    /// Releases an unreleased guard (the guard's `Drop` does the work and logs
    /// a failure) and wakes the watchdog, which would otherwise keep a lock
    /// nobody owns alive.
    fn drop(&mut self) {
        drop(self.inner.take());
    }
}

/// A [`SharedLock`]'s guard for another thread (see [`SharedLock::handle`]).
pub struct LockHandle<T: Guard = PortGuard> {
    inner: Arc<Inner<T>>,
}

impl<T: Guard> Clone for LockHandle<T> {
    /// Another handle on the same guard (never a second guard).
    fn clone(&self) -> Self {
        LockHandle {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl<T: Guard> LockHandle<T> {
    /// As [`SharedLock::with`].
    pub fn with<R>(&self, f: impl FnOnce(&mut T) -> R) -> Option<R> {
        self.inner.slot().as_mut().map(f)
    }

    /// Takes the guard out without releasing it, and ends the watchdog as a
    /// release does: for a holder that has handed its lock to another
    /// process and must never touch the lock file again. The caller
    /// decides how the guard goes (for a [`PortGuard`]: `abandon`, which
    /// closes the descriptor and removes nothing). `None` if it was already
    /// released or taken.
    pub fn take(&self) -> Option<T> {
        self.inner.take()
    }
}

impl<T: Guard> Watchdog<T> {
    /// Verifies the guard now and then every `interval` until it is released
    /// or lost. Runs on its own thread: each check is blocking file I/O, and
    /// the main thread must stay free to handle signals. Restorations and
    /// failed checks go to `report`, called without the lock held.
    pub fn run(self, interval: Duration, report: impl FnMut(WatchEvent<T::Error>)) -> WatchEnd {
        self.run_with_heartbeat(interval, report, || {})
    }

    /// [`run`](Watchdog::run), calling `beat` after every check that found
    /// the lock still ours (intact, or restored by that check), without the
    /// lock held. A supervisor's liveness ping (systemd's `WATCHDOG=1`) is
    /// sent from here, so it stops with the first check that finds the port
    /// lost, and with the release.
    ///
    /// Every [`REFRESH_INTERVAL`] (the first time at the first check) a check
    /// also refreshes the guard ([`Guard::refresh`]).
    pub fn run_with_heartbeat(
        self,
        interval: Duration,
        report: impl FnMut(WatchEvent<T::Error>),
        beat: impl FnMut(),
    ) -> WatchEnd {
        self.run_refreshing(interval, REFRESH_INTERVAL, report, beat)
    }

    /// [`run_with_heartbeat`](Watchdog::run_with_heartbeat) with the refresh
    /// every `refresh_every` (tests).
    fn run_refreshing(
        self,
        interval: Duration,
        refresh_every: Duration,
        mut report: impl FnMut(WatchEvent<T::Error>),
        mut beat: impl FnMut(),
    ) -> WatchEnd {
        // `None`: due at the first check.
        let mut refreshed: Option<Instant> = None;
        let mut slot = self.inner.slot();
        loop {
            let Some(guard) = slot.as_mut() else {
                return WatchEnd::Released;
            };
            // Under the mutex: a release waits for this check to finish, and
            // a check never starts after a release.
            let outcome = guard.verify();
            // Only on a lock still ours: a lost or detached one ends the run.
            let refresh = match outcome {
                Ok(Integrity::Intact | Integrity::Restored)
                    if refreshed.is_none_or(|at| at.elapsed() >= refresh_every) =>
                {
                    refreshed = Some(Instant::now());
                    guard.refresh().err()
                }
                _ => None,
            };
            drop(slot);
            if let Some(e) = refresh {
                report(WatchEvent::CannotRefresh(e));
            }
            match outcome {
                Ok(Integrity::Intact) => beat(),
                Ok(Integrity::Restored) => {
                    report(WatchEvent::Restored);
                    beat();
                }
                Ok(Integrity::Lost(holder)) => return WatchEnd::Lost(holder),
                Ok(Integrity::Detached) => return WatchEnd::Detached,
                Err(e) => report(WatchEvent::CannotCheck(e)),
            }
            slot = self.inner.slot();
            if slot.is_none() {
                // Released while we reported: its notification is gone.
                return WatchEnd::Released;
            }
            slot = match self.inner.released.wait_timeout(slot, interval) {
                Ok((slot, _)) => slot,
                Err(poisoned) => poisoned.into_inner().0,
            };
        }
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    /// Intact for `intact` checks, then lost; logs the check at which each
    /// refresh came (they fail when `refresh_fails`).
    struct Counting {
        checks: usize,
        intact: usize,
        refresh_fails: bool,
        log: std::sync::Arc<std::sync::Mutex<Vec<usize>>>,
    }

    impl Guard for Counting {
        type Error = &'static str;

        fn verify(&mut self) -> Result<Integrity, &'static str> {
            self.checks += 1;
            Ok(if self.checks <= self.intact {
                Integrity::Intact
            } else {
                Integrity::Lost(None)
            })
        }

        fn release(self) -> Result<(), &'static str> {
            Ok(())
        }

        fn refresh(&mut self) -> Result<(), &'static str> {
            self.log.lock().unwrap().push(self.checks);
            if self.refresh_fails {
                Err("read-only file system")
            } else {
                Ok(())
            }
        }
    }

    /// Runs the watchdog until the lock is lost after five intact checks;
    /// returns the checks at which it refreshed, and the failures reported.
    fn run(refresh_every: Duration, refresh_fails: bool) -> (Vec<usize>, usize) {
        let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let lock = SharedLock::new(Counting {
            checks: 0,
            intact: 5,
            refresh_fails,
            log: log.clone(),
        });
        let mut failures = 0;
        let end = lock.watchdog().run_refreshing(
            Duration::from_millis(1),
            refresh_every,
            |event| match event {
                WatchEvent::CannotRefresh(_) => failures += 1,
                other => panic!("unexpected {other:?}"),
            },
            || {},
        );
        assert_eq!(end, WatchEnd::Lost(None));
        let refreshed = log.lock().unwrap().clone();
        (refreshed, failures)
    }

    #[test]
    fn refreshes_at_the_first_check_then_on_the_coarse_timer_only() {
        assert_eq!(run(REFRESH_INTERVAL, false), (vec![1], 0));
        // Due at every check: never at the one that found the lock lost.
        assert_eq!(run(Duration::ZERO, false), (vec![1, 2, 3, 4, 5], 0));
    }

    #[test]
    fn a_failed_refresh_is_reported_and_retried_on_the_timer_not_at_each_check() {
        assert_eq!(run(REFRESH_INTERVAL, true), (vec![1], 1));
    }
}
