//! Takeover: from the holder's release to a waiter holding the port, ours
//! (`acquire_timeout`) beside a waiter that polls every 50 ms (py-filelock's
//! default `poll_interval`), in the same run; then the raw distribution
//! (median, p99) and the CPU a waiter uses while left waiting 1 s.
//!
//! The waiter is a thread of this process (flock is per open file
//! description, so it contends like another process would; the wake-up path
//! — inotify on the lock dir — is the same). Each round: the bench thread
//! holds the port, lets the waiter start waiting, then takes the time and
//! releases; the waiter takes the time as soon as it holds.
//!
//! On tmpfs (`/dev/shm`) when present, else the temp dir.

// criterion_group! generates an undocumented `pub fn`.
#![allow(missing_docs)]

use std::path::{Path, PathBuf};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::thread;
use std::time::{Duration, Instant};

use criterion::{criterion_group, Criterion, SamplingMode};
use llmlb::lock::{acquire_or_reclaim, acquire_timeout, LockDir, PortGuard};

const PORT: u16 = 8000;
/// Against hangs only: every takeover here is far quicker.
const GENEROUS: Duration = Duration::from_secs(30);
/// py-filelock's default poll interval.
const FILELOCK_POLL: Duration = Duration::from_millis(50);

#[derive(Clone, Copy)]
enum Waiter {
    Ours,
    Poll50ms,
}

/// The filelock-style baseline: try, sleep 50 ms, try again.
fn poll_acquire(dir: &LockDir, port: u16) -> PortGuard {
    let deadline = Instant::now() + GENEROUS;
    loop {
        match acquire_or_reclaim(dir, port) {
            Ok(guard) => return guard,
            Err(e) if e.is_already_running() && Instant::now() < deadline => {
                thread::sleep(FILELOCK_POLL)
            }
            Err(e) => panic!("baseline acquire: {e}"),
        }
    }
}

fn base_dir() -> PathBuf {
    let shm = Path::new("/dev/shm");
    if shm.is_dir() && tempfile::tempdir_in(shm).is_ok() {
        shm.to_path_buf()
    } else {
        std::env::temp_dir()
    }
}

/// The bench thread's side of a waiter thread on a private lock dir.
struct Rig {
    _tmp: tempfile::TempDir,
    dir: LockDir,
    go: Sender<Waiter>,
    took: Receiver<Instant>,
    /// A tiny LCG: where in the baseline's 50 ms poll period the release
    /// falls must be uniform, or the baseline looks better or worse than it is.
    seed: u64,
}

impl Rig {
    fn new() -> Rig {
        let tmp = tempfile::Builder::new()
            .prefix("llmlb-bench-")
            .tempdir_in(base_dir())
            .expect("private bench dir");
        let dir = LockDir::create(tmp.path().join("locks")).expect("lock dir");
        let waiter_dir = LockDir::create(dir.path()).expect("lock dir");
        let (go, wait_go) = channel::<Waiter>();
        let (took_tx, took) = channel::<Instant>();
        thread::spawn(move || {
            for kind in wait_go {
                let guard = match kind {
                    Waiter::Ours => acquire_timeout(&waiter_dir, PORT, GENEROUS).expect("takeover"),
                    Waiter::Poll50ms => poll_acquire(&waiter_dir, PORT),
                };
                let at = Instant::now();
                guard.release().expect("release");
                if took_tx.send(at).is_err() {
                    break;
                }
            }
        });
        Rig {
            _tmp: tmp,
            dir,
            go,
            took,
            seed: 0x9E37_79B9_7F4A_7C15,
        }
    }

    /// One takeover: hold, let the waiter wait, release, and return the time
    /// from the release to the waiter holding.
    fn takeover(&mut self, kind: Waiter) -> Duration {
        let held = acquire_timeout(&self.dir, PORT, GENEROUS).expect("bench holder");
        self.go.send(kind).expect("waiter thread");
        // Let the waiter try, fail, and go to sleep (not measured).
        let settle = match kind {
            Waiter::Ours => Duration::from_millis(2),
            Waiter::Poll50ms => {
                self.seed = self
                    .seed
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1);
                Duration::from_millis(2)
                    + FILELOCK_POLL.mul_f64((self.seed >> 11) as f64 / (1u64 << 53) as f64)
            }
        };
        thread::sleep(settle);
        let released = Instant::now();
        held.release().expect("release");
        let took = self
            .took
            .recv_timeout(GENEROUS)
            .expect("the waiter took over");
        took.saturating_duration_since(released)
    }
}

fn takeover(c: &mut Criterion) {
    let mut group = c.benchmark_group("takeover");
    group.sample_size(10).sampling_mode(SamplingMode::Flat);
    let mut rig = Rig::new();
    group.measurement_time(Duration::from_secs(2));
    group.bench_function("ours", |b| {
        b.iter_custom(|iters| (0..iters).map(|_| rig.takeover(Waiter::Ours)).sum())
    });
    group.measurement_time(Duration::from_secs(4));
    group.bench_function("poll_50ms", |b| {
        b.iter_custom(|iters| (0..iters).map(|_| rig.takeover(Waiter::Poll50ms)).sum())
    });
    group.finish();
}

criterion_group!(benches, takeover);

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

/// The raw distribution criterion does not show: median and p99 over many
/// single takeovers.
fn distribution(rounds_ours: usize, rounds_poll: usize) {
    let mut rig = Rig::new();
    for (name, kind, rounds) in [
        ("ours", Waiter::Ours, rounds_ours),
        ("poll_50ms", Waiter::Poll50ms, rounds_poll),
    ] {
        let mut samples: Vec<Duration> = (0..rounds).map(|_| rig.takeover(kind)).collect();
        samples.sort();
        println!(
            "takeover/{name}: {rounds} rounds: median {:?}, p99 {:?}, max {:?}",
            percentile(&samples, 0.5),
            percentile(&samples, 0.99),
            samples[samples.len() - 1]
        );
    }
}

/// CPU time (user + system) of the calling thread.
#[cfg(target_os = "linux")]
fn thread_cpu() -> Duration {
    let mut ru = std::mem::MaybeUninit::<libc::rusage>::uninit();
    // SAFETY: ru is valid for writes of one rusage.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_THREAD, ru.as_mut_ptr()) };
    assert_eq!(rc, 0, "getrusage");
    // SAFETY: getrusage succeeded.
    let ru = unsafe { ru.assume_init() };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// A waiter left waiting `wait` on a port that stays held: its CPU time.
#[cfg(target_os = "linux")]
fn idle_waiter_cpu(wait: Duration) {
    let mut rig = Rig::new();
    let held = acquire_timeout(&rig.dir, PORT, GENEROUS).expect("holder");
    let dir = LockDir::create(rig.dir.path()).expect("lock dir");
    let cpu = thread::spawn(move || {
        let before = thread_cpu();
        let err = acquire_timeout(&dir, PORT, wait).expect_err("held all along");
        assert!(err.is_already_running(), "{err}");
        thread_cpu() - before
    })
    .join()
    .expect("waiter thread");
    held.release().expect("release");
    println!("idle waiter: {wait:?} waiting on a held port used {cpu:?} of CPU");
    // Keep the rig (and its waiter thread) alive until here.
    rig.seed = 0;
}

fn main() {
    benches();
    criterion::Criterion::default()
        .configure_from_args()
        .final_summary();
    // `cargo bench -- --test` (CI's smoke run): a few rounds, no figures.
    let smoke = std::env::args().any(|a| a == "--test");
    if smoke {
        distribution(5, 2);
    } else {
        distribution(1000, 100);
    }
    #[cfg(target_os = "linux")]
    idle_waiter_cpu(if smoke {
        Duration::from_millis(50)
    } else {
        Duration::from_secs(1)
    });
}
