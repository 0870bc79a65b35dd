//! Model-checks how a running server's two threads share its lock, with loom,
//! through the crate's `cfg(loom)` sync shim: the main thread (which uses the
//! guard, and on SIGINT/SIGTERM or at the end releases it, or drops it while
//! unwinding) against the watchdog thread, running the product's own
//! `SharedLock` and `Watchdog::run` exactly as `src/supervise/server/manager.rs` does. Only
//! the guard is a model (loom cannot model flock or files): it records every
//! call, and tracks whether "the lock file" exists.
//!
//! Run: `RUSTFLAGS="--cfg loom" CARGO_TARGET_DIR=target/loom cargo test --release --test loom`.
#![cfg(loom)]

use std::time::Duration;

use loom::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use loom::sync::Arc;
use loom::thread;

use llmlb::lock::Integrity;
use llmlb::supervise::{Guard, SharedLock, WatchEnd, WatchEvent};

/// What every check returns in one model run.
#[derive(Clone, Copy, Debug)]
enum Check {
    Intact,
    /// The file had been removed by hand; the check re-creates it.
    Restored,
    /// Another process took the port.
    Lost,
    /// The file could not be inspected.
    Fails,
}

/// What the model guard's calls did, shared with the test body.
#[derive(Default)]
struct Record {
    /// Releases, explicit or by Drop.
    releases: AtomicUsize,
    /// Checks run (each one may re-create the file).
    checks: AtomicUsize,
    /// Whether the lock file exists: removed by the release, re-created by a
    /// check that restores it.
    file: AtomicBool,
    /// Events the watchdog reported.
    reports: AtomicUsize,
}

/// Stands in for a `PortGuard`, releasing on drop as it does.
struct Model {
    record: Arc<Record>,
    check: Check,
    released: bool,
}

impl Model {
    fn new(check: Check) -> (Self, Arc<Record>) {
        let record = Arc::new(Record::default());
        record.file.store(true, SeqCst);
        let model = Model {
            record: record.clone(),
            check,
            released: false,
        };
        (model, record)
    }

    fn remove_file(&mut self) {
        assert!(!self.released);
        self.released = true;
        self.record.file.store(false, SeqCst);
        assert_eq!(
            self.record.releases.fetch_add(1, SeqCst),
            0,
            "released twice"
        );
    }
}

impl Guard for Model {
    type Error = &'static str;

    fn verify(&mut self) -> Result<Integrity, &'static str> {
        assert_eq!(
            self.record.releases.load(SeqCst),
            0,
            "a check ran after the release"
        );
        self.record.checks.fetch_add(1, SeqCst);
        match self.check {
            Check::Intact => Ok(Integrity::Intact),
            Check::Restored => {
                self.record.file.store(true, SeqCst);
                Ok(Integrity::Restored)
            }
            Check::Lost => Ok(Integrity::Lost(None)),
            Check::Fails => Err("cannot inspect"),
        }
    }

    fn release(mut self) -> Result<(), &'static str> {
        self.remove_file();
        Ok(())
    }
}

impl Drop for Model {
    fn drop(&mut self) {
        if !self.released {
            self.remove_file();
        }
    }
}

const CHECKS: [Check; 4] = [Check::Intact, Check::Restored, Check::Lost, Check::Fails];

/// Starts the watchdog thread as `serve` does.
fn spawn_watchdog(lock: &SharedLock<Model>, record: &Arc<Record>) -> thread::JoinHandle<WatchEnd> {
    let watchdog = lock.watchdog();
    let record = record.clone();
    thread::spawn(move || {
        watchdog.run(Duration::from_millis(500), |event| {
            match event {
                WatchEvent::Restored | WatchEvent::CannotCheck(_) => {}
                other => panic!("unexpected event {other:?}"),
            }
            record.reports.fetch_add(1, SeqCst);
        })
    })
}

/// Checks what holds whichever way the main thread let go of the lock.
fn check_end(check: Check, end: WatchEnd, record: &Record, checks_at_release: usize) {
    assert_eq!(record.releases.load(SeqCst), 1, "released exactly once");
    assert!(
        !record.file.load(SeqCst),
        "the lock file came back after the release"
    );
    assert_eq!(
        record.checks.load(SeqCst),
        checks_at_release,
        "a check ran after the release"
    );
    match (check, end) {
        // The release may come before the first check: then none ran.
        (Check::Lost, WatchEnd::Lost(None)) => assert_eq!(checks_at_release, 1),
        (_, WatchEnd::Released) => {}
        (check, end) => panic!("{check:?} ended the watchdog with {end:?}"),
    }
    let reports = record.reports.load(SeqCst);
    match check {
        Check::Restored | Check::Fails => assert!(reports <= checks_at_release),
        Check::Intact | Check::Lost => assert_eq!(reports, 0),
    }
}

/// SIGINT/SIGTERM (or the command's exit, or the watchdog's `Lost`): the main
/// thread releases while the watchdog may be checking; then the main thread
/// joins it, as `serve::run` does, which deadlocks if the release does not
/// end the watchdog.
#[test]
fn loom_release_on_shutdown_vs_watchdog() {
    for check in CHECKS {
        loom::model(move || {
            let (model, record) = Model::new(check);
            let lock = SharedLock::new(model);
            let watchdog = spawn_watchdog(&lock, &record);

            // Exec mode records the command's process group through `with`.
            if let Some(released) = lock.with(|g| g.released) {
                assert!(!released, "`with` ran on a released guard");
            }
            assert_eq!(lock.release(), Some(Ok(())), "the first release wins");
            let checks_at_release = record.checks.load(SeqCst);
            assert_eq!(lock.release(), None, "a second release is a no-op");
            assert!(lock.with(|_| ()).is_none(), "`with` after the release");

            let end = watchdog.join().unwrap();
            drop(lock);
            check_end(check, end, &record, checks_at_release);
        });
    }
}

/// The main thread unwinds (a panic) or returns early without releasing:
/// dropping its `SharedLock` releases and ends the watchdog, which holds the
/// lock's state too but must not keep the lock held.
#[test]
fn loom_drop_without_release_vs_watchdog() {
    for check in CHECKS {
        loom::model(move || {
            let (model, record) = Model::new(check);
            let lock = SharedLock::new(model);
            let watchdog = spawn_watchdog(&lock, &record);

            drop(lock);
            let checks_at_release = record.checks.load(SeqCst);

            let end = watchdog.join().unwrap();
            check_end(check, end, &record, checks_at_release);
        });
    }
}
