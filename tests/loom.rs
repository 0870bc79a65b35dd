//! Model-checks `SharedLock` — the release-exactly-once cell and shutdown flag
//! the server loop, its signal handling and its watchdog share — with loom,
//! through the crate's `cfg(loom)` sync shim (so this runs the real code).
//!
//! Run: `RUSTFLAGS="--cfg loom" cargo test --release --test loom`.
#![cfg(loom)]

use loom::sync::atomic::{AtomicUsize, Ordering};
use loom::sync::Arc;
use loom::thread;

use llmlb::lock::{Release, SharedLock};

/// Stands in for a `PortGuard`: counts releases, whether explicit or by Drop,
/// exactly as the real guard releases on drop.
struct Counted {
    releases: Arc<AtomicUsize>,
    released: bool,
}

impl Counted {
    fn new(releases: &Arc<AtomicUsize>) -> Self {
        Counted {
            releases: releases.clone(),
            released: false,
        }
    }
}

impl Release for Counted {
    type Error = ();
    fn release(mut self) -> Result<(), ()> {
        self.released = true;
        self.releases.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        if !self.released {
            self.releases.fetch_add(1, Ordering::SeqCst);
        }
    }
}

#[test]
fn loom_signal_release_races_main_release_and_watchdog() {
    loom::model(|| {
        let releases = Arc::new(AtomicUsize::new(0));
        let lock = SharedLock::new(Counted::new(&releases));

        // Signal path: request shutdown and release.
        let signal = {
            let lock = lock.clone();
            thread::spawn(move || {
                lock.request_shutdown();
                lock.release().is_some()
            })
        };
        // Watchdog: inspects the guard; must never see a released one.
        let watchdog = {
            let lock = lock.clone();
            let releases = releases.clone();
            thread::spawn(move || {
                lock.with(|_guard| {
                    assert_eq!(
                        releases.load(Ordering::SeqCst),
                        0,
                        "watchdog ran on a released guard"
                    );
                })
                .is_some()
            })
        };
        // Main loop: releases on its own way out.
        let main_won = lock.release().is_some();
        let signal_won = signal.join().unwrap();
        let _ = watchdog.join().unwrap();

        assert!(main_won ^ signal_won, "exactly one release wins");
        assert!(lock.is_released());
        assert!(
            lock.with(|_| ()).is_none(),
            "nobody observes a released guard"
        );
        drop(lock);
        assert_eq!(releases.load(Ordering::SeqCst), 1, "released exactly once");
    });
}

#[test]
fn loom_last_clone_dropped_releases_once() {
    loom::model(|| {
        let releases = Arc::new(AtomicUsize::new(0));
        let lock = SharedLock::new(Counted::new(&releases));
        let other = lock.clone();
        let t = thread::spawn(move || {
            other.request_shutdown();
            drop(other);
        });
        assert!(!lock.is_released());
        t.join().unwrap();
        assert!(
            lock.shutdown_requested(),
            "a joined thread's request is visible"
        );
        drop(lock);
        assert_eq!(
            releases.load(Ordering::SeqCst),
            1,
            "drop of the last clone releases"
        );
    });
}

#[test]
fn loom_shutdown_flag_publishes_release() {
    // A handler that releases before raising the flag: whoever sees the flag
    // must see the lock released (Release/Acquire pairing on the flag).
    loom::model(|| {
        let releases = Arc::new(AtomicUsize::new(0));
        let lock = SharedLock::new(Counted::new(&releases));
        let handler = {
            let lock = lock.clone();
            thread::spawn(move || {
                assert!(lock.release().is_some());
                lock.request_shutdown();
            })
        };
        if lock.shutdown_requested() {
            assert!(lock.is_released());
            assert_eq!(releases.load(Ordering::SeqCst), 1);
        }
        handler.join().unwrap();
    });
}
