//! A held lock shared by the threads of one process (the server loop, a
//! signal handler, a watchdog), released exactly once whichever gets there
//! first, plus the shutdown flag they coordinate with.

use crate::sync::{Arc, AtomicBool, Mutex, Ordering};

use super::error::LockError;
use super::state::PortGuard;

/// Something that can be released exactly once by consuming it.
pub trait Release {
    /// Why a release failed.
    type Error;
    /// Releases, consuming `self`.
    ///
    /// # Errors
    /// Whatever the implementation reports; it has been consumed regardless.
    fn release(self) -> Result<(), Self::Error>;
}

impl Release for PortGuard {
    type Error = LockError;
    fn release(self) -> Result<(), LockError> {
        PortGuard::release(self)
    }
}

/// A lock shared across threads: any clone may inspect it, exactly one
/// [`release`](SharedLock::release) wins, and once it has, nobody observes
/// the lock again. When the last clone drops unreleased, the guard's own
/// `Drop` releases it.
pub struct SharedLock<T: Release = PortGuard> {
    inner: Arc<Inner<T>>,
}

struct Inner<T> {
    slot: Mutex<Option<T>>,
    shutdown: AtomicBool,
}

impl<T: Release> Clone for SharedLock<T> {
    fn clone(&self) -> Self {
        SharedLock {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl<T: Release> SharedLock<T> {
    /// Shares `guard`.
    pub fn new(guard: T) -> Self {
        SharedLock {
            inner: Arc::new(Inner {
                slot: Mutex::new(Some(guard)),
                shutdown: AtomicBool::new(false),
            }),
        }
    }

    fn slot(&self) -> crate::sync::MutexGuard<'_, Option<T>> {
        // A panic inside `with` must not make the lock unreleasable.
        self.inner
            .slot
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Runs `f` on the guard if it has not been released; `None` afterwards.
    /// Serialised with `release`: `f` never runs on a released guard.
    pub fn with<R>(&self, f: impl FnOnce(&mut T) -> R) -> Option<R> {
        self.slot().as_mut().map(f)
    }

    /// Releases the guard: `Some(result)` for the one call that released it,
    /// `None` for every later (or concurrent losing) call.
    pub fn release(&self) -> Option<Result<(), T::Error>> {
        let guard = self.slot().take()?;
        Some(guard.release())
    }

    /// Whether the guard has been released.
    pub fn is_released(&self) -> bool {
        self.slot().is_none()
    }

    /// Asks every thread sharing this lock to shut down (async-signal-safe to
    /// call from a handler thread: one atomic store).
    pub fn request_shutdown(&self) {
        self.inner.shutdown.store(true, Ordering::Release);
    }

    /// Whether shutdown was requested.
    pub fn shutdown_requested(&self) -> bool {
        self.inner.shutdown.load(Ordering::Acquire)
    }
}
