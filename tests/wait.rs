//! The library's waiting acquire: `acquire_timeout`, the typestate twin and
//! the async variant (its cancel-safety included). Holders are other open
//! files (flock is per open file description, so one process can contend
//! with itself) released from other threads or tasks; the cross-process
//! cases are in `cli_wait.rs`, `lock_model.rs` and the C and Python suites.

use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use llmlb::lock::{acquire_or_reclaim, acquire_timeout, Acquired, LockDir, LockError, LockState};

/// Against hangs only.
const GENEROUS: Duration = Duration::from_secs(60);

fn lock_dir() -> (tempfile::TempDir, LockDir) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = LockDir::create(tmp.path().join("locks")).unwrap();
    (tmp, dir)
}

fn files_in(dir: &LockDir) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn zero_tries_once_and_a_deadline_reports_the_holder() {
    let (_tmp, dir) = lock_dir();
    let held = acquire_or_reclaim(&dir, 9100).unwrap();
    for timeout in [Duration::ZERO, Duration::from_millis(30)] {
        match acquire_timeout(&dir, 9100, timeout) {
            Err(LockError::AlreadyRunning { port, holder, .. }) => {
                assert_eq!(port, 9100);
                assert_eq!(holder.map(|h| h.pid), Some(std::process::id()));
            }
            other => panic!("{other:?}"),
        }
    }
    held.release().unwrap();
    // Free: no wait at all (and Duration::MAX is fine as a timeout).
    acquire_timeout(&dir, 9100, Duration::MAX)
        .unwrap()
        .release()
        .unwrap();
}

#[test]
fn other_errors_are_not_waited_out() {
    let (_tmp, dir) = lock_dir();
    let err = acquire_timeout(&dir, 0, GENEROUS).unwrap_err();
    assert!(matches!(err, LockError::InvalidPort { .. }), "{err}");
}

/// A thread takes the port, signals, and gives it up when told: by release
/// (the file goes) or as a crash would (the descriptor closes, the file stays).
fn holder_thread(
    dir: &LockDir,
    port: u16,
    crash: bool,
) -> (mpsc::Sender<()>, thread::JoinHandle<u32>) {
    let guard = acquire_or_reclaim(dir, port).unwrap();
    let pid = guard.info().pid;
    let (go, wait_go) = mpsc::channel::<()>();
    let handle = thread::spawn(move || {
        let _ = wait_go.recv();
        if crash {
            guard.abandon();
        } else {
            guard.release().unwrap();
        }
        pid
    });
    (go, handle)
}

#[test]
fn a_waiter_takes_the_port_when_it_is_released() {
    let (_tmp, dir) = lock_dir();
    let (go, holder) = holder_thread(&dir, 9101, false);
    let waiter = {
        let dir = LockDir::create(dir.path()).unwrap();
        thread::spawn(move || acquire_timeout(&dir, 9101, GENEROUS))
    };
    // The waiter is waiting (or about to): release now.
    thread::sleep(Duration::from_millis(50));
    go.send(()).unwrap();
    holder.join().unwrap();
    let guard = waiter.join().unwrap().unwrap();
    assert!(!guard.was_reclaimed());
    assert!(matches!(dir.probe(9101).unwrap(), LockState::Held(Some(_))));
    guard.release().unwrap();
    assert!(files_in(&dir).is_empty());
}

#[test]
fn a_waiter_reclaims_from_a_holder_that_dies() {
    let (_tmp, dir) = lock_dir();
    let (go, holder) = holder_thread(&dir, 9102, true);
    let waiter = {
        let dir = LockDir::create(dir.path()).unwrap();
        // The error (never expected here) is dropped: only its kind matters.
        thread::spawn(move || {
            dir.port(9102)
                .unwrap()
                .acquire_timeout(GENEROUS)
                .map_err(drop)
        })
    };
    thread::sleep(Duration::from_millis(50));
    go.send(()).unwrap();
    let dead = holder.join().unwrap();
    let Ok(Acquired::Stale(stale)) = waiter.join().unwrap() else {
        panic!("a dead holder's file is stale");
    };
    assert_eq!(stale.previous().map(|p| p.pid), Some(dead));
    stale.reclaim().unwrap().release().unwrap();
}

#[test]
fn typestate_twin_hands_the_free_lock_back_at_the_deadline() {
    let (_tmp, dir) = lock_dir();
    let held = acquire_or_reclaim(&dir, 9103).unwrap();
    let failed = dir
        .port(9103)
        .unwrap()
        .acquire_timeout(Duration::from_millis(20))
        .err()
        .unwrap();
    assert!(failed.error.is_already_running(), "{}", failed.error);
    held.release().unwrap();
    let Acquired::Fresh(again) = failed.lock.acquire_timeout(Duration::ZERO).unwrap() else {
        panic!("free")
    };
    again.release().unwrap();
}

/// Many waiting threads, one port: each takes it in turn, never two at once.
#[test]
fn waiting_threads_take_turns_never_two_at_once() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    let (_tmp, dir) = lock_dir();
    let inside = Arc::new(AtomicUsize::new(0));
    let threads: Vec<_> = (0..6)
        .map(|_| {
            let dir = LockDir::create(dir.path()).unwrap();
            let inside = Arc::clone(&inside);
            thread::spawn(move || {
                for _ in 0..5 {
                    let guard = acquire_timeout(&dir, 9104, GENEROUS).unwrap();
                    assert_eq!(inside.fetch_add(1, Ordering::SeqCst), 0, "two holders");
                    thread::sleep(Duration::from_millis(1));
                    inside.fetch_sub(1, Ordering::SeqCst);
                    guard.release().unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert!(files_in(&dir).is_empty());
}

#[cfg(all(any(feature = "cli", feature = "tokio"), not(loom)))]
mod async_wait {
    use super::*;
    use llmlb::lock::acquire_timeout_async as acquire_async;

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    /// One runtime thread: the waiter must not block it, or the task that
    /// releases the port could never run (the test would hang, then fail).
    #[test]
    fn waits_without_blocking_the_runtime_thread() {
        let (_tmp, dir) = lock_dir();
        runtime().block_on(async {
            let held = acquire_or_reclaim(&dir, 9110).unwrap();
            let release = async move {
                tokio::time::sleep(Duration::from_millis(50)).await;
                held.release().unwrap();
            };
            let (got, ()) = tokio::time::timeout(GENEROUS, async {
                tokio::join!(acquire_async(&dir, 9110, GENEROUS), release)
            })
            .await
            .expect("the waiter blocked the runtime thread");
            got.unwrap().release().unwrap();
        });
    }

    #[test]
    fn gives_up_at_the_deadline_with_the_holder() {
        let (_tmp, dir) = lock_dir();
        let held = acquire_or_reclaim(&dir, 9111).unwrap();
        let err = runtime()
            .block_on(acquire_async(&dir, 9111, Duration::from_millis(30)))
            .unwrap_err();
        match err {
            LockError::AlreadyRunning { holder, .. } => {
                assert_eq!(holder.map(|h| h.pid), Some(std::process::id()))
            }
            other => panic!("{other}"),
        }
        held.release().unwrap();
    }

    /// Dropping the future while it waits (a losing `select!` branch, a
    /// `timeout`) leaves nothing held and nothing created, even if the port
    /// was freed just before the drop.
    #[test]
    fn dropping_the_future_leaves_nothing_held_or_created() {
        let (_tmp, dir) = lock_dir();
        let rt = runtime();
        let held = acquire_or_reclaim(&dir, 9112).unwrap();
        let before = std::fs::read(held.path()).unwrap();

        // Cancelled by a timeout while the port is held.
        let r = rt.block_on(async {
            tokio::time::timeout(
                Duration::from_millis(30),
                acquire_async(&dir, 9112, GENEROUS),
            )
            .await
        });
        assert!(
            r.is_err(),
            "the port is held: the waiter must still be waiting"
        );
        assert_eq!(
            std::fs::read(held.path()).unwrap(),
            before,
            "holder's file untouched"
        );

        // Polled once (it is now sleeping on its watch), then the port is
        // freed, then the future is dropped without another poll.
        let mut fut = Box::pin(acquire_async(&dir, 9112, GENEROUS));
        let waker = std::task::Waker::from(std::sync::Arc::new(NoWake));
        let mut cx = std::task::Context::from_waker(&waker);
        let _enter = rt.enter();
        assert!(fut.as_mut().poll(&mut cx).is_pending());
        held.release().unwrap();
        drop(fut);
        assert!(files_in(&dir).is_empty(), "{:?}", files_in(&dir));
        assert_eq!(dir.probe(9112).unwrap(), LockState::Free);
        // And the port is really free for the next comer.
        acquire_or_reclaim(&dir, 9112).unwrap().release().unwrap();
    }

    use std::future::Future as _;

    /// A waker that does nothing (`Waker::noop` needs Rust 1.85; MSRV is 1.83).
    struct NoWake;
    impl std::task::Wake for NoWake {
        fn wake(self: std::sync::Arc<Self>) {}
    }
}
