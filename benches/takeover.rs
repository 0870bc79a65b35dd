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
//!
//! Then `serve` start → ready (HTTP mode): the built `llmlb serve` spawned
//! in a fresh lock dir, timed from the spawn to a `wait_for(ready)` returning,
//! and inside the server from taking the lock (`started_at`) to recording
//! ready (`state_since`).
//!
//! Then `llmlb wait --for ready` (`supervise::wait::wait_for`): from the
//! holder's `set_state(Ready)` (an in-place rewrite of its record) to the
//! waiter returning, beside a waiter that probes every 50 ms; and the CPU of
//! a waiter left waiting on a holder that stays starting.

// criterion_group! generates an undocumented `pub fn`.
#![allow(missing_docs)]

use std::path::{Path, PathBuf};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::thread;
use std::time::{Duration, Instant};

use criterion::{criterion_group, Criterion, SamplingMode};
use llmlb::lock::{acquire_or_reclaim, acquire_timeout, LockDir, LockState, PortGuard, ServeState};
use llmlb::supervise::wait::{wait_for, Until, WaitOutcome};

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

/// The bench thread's side of a `wait --for ready` thread on a private
/// lock dir: each round the bench thread takes the port as starting, lets
/// the waiter look and sleep, then says ready.
struct ReadyRig {
    _tmp: tempfile::TempDir,
    dir: LockDir,
    go: Sender<Waiter>,
    done: Receiver<Instant>,
    seed: u64,
}

/// The baseline: probe, sleep 50 ms, probe again, until a ready holder.
fn poll_ready(dir: &Path, port: u16) {
    let deadline = Instant::now() + GENEROUS;
    loop {
        let state = llmlb::lock::probe(dir, port).expect("probe");
        if let LockState::Held(Some(info)) = state {
            if info.serve_state() == ServeState::Ready {
                return;
            }
        }
        assert!(Instant::now() < deadline, "baseline wait hung");
        thread::sleep(FILELOCK_POLL);
    }
}

impl ReadyRig {
    fn new() -> ReadyRig {
        let tmp = tempfile::Builder::new()
            .prefix("llmlb-bench-")
            .tempdir_in(base_dir())
            .expect("private bench dir");
        let dir = LockDir::create(tmp.path().join("locks"))
            .expect("lock dir")
            .announcing(ServeState::Starting);
        let path = dir.path().to_path_buf();
        let (go, wait_go) = channel::<Waiter>();
        let (done_tx, done) = channel::<Instant>();
        thread::spawn(move || {
            for kind in wait_go {
                match kind {
                    Waiter::Ours => {
                        let outcome =
                            wait_for(&path, PORT, Until::Ready, Some(GENEROUS)).expect("wait");
                        assert!(matches!(outcome, WaitOutcome::Met(_)), "{outcome:?}");
                    }
                    Waiter::Poll50ms => poll_ready(&path, PORT),
                }
                if done_tx.send(Instant::now()).is_err() {
                    break;
                }
            }
        });
        ReadyRig {
            _tmp: tmp,
            dir,
            go,
            done,
            seed: 0x9E37_79B9_7F4A_7C15,
        }
    }

    /// One round: hold as starting, let the waiter wait, say ready, and
    /// return the time from `set_state` to the waiter returning.
    fn ready(&mut self, kind: Waiter) -> Duration {
        let mut held = acquire_or_reclaim(&self.dir, PORT).expect("bench holder");
        self.go.send(kind).expect("waiter thread");
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
        let announced = Instant::now();
        held.set_state(ServeState::Ready).expect("set_state");
        let done = self.done.recv_timeout(GENEROUS).expect("the waiter woke");
        held.release().expect("release");
        done.saturating_duration_since(announced)
    }
}

fn wait_ready(c: &mut Criterion) {
    let mut group = c.benchmark_group("wait_ready");
    group.sample_size(10).sampling_mode(SamplingMode::Flat);
    let mut rig = ReadyRig::new();
    group.measurement_time(Duration::from_secs(2));
    group.bench_function("ours", |b| {
        b.iter_custom(|iters| (0..iters).map(|_| rig.ready(Waiter::Ours)).sum())
    });
    group.measurement_time(Duration::from_secs(4));
    group.bench_function("poll_50ms", |b| {
        b.iter_custom(|iters| (0..iters).map(|_| rig.ready(Waiter::Poll50ms)).sum())
    });
    group.finish();
}

criterion_group!(benches, takeover, wait_ready);

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

/// Median and p99 of `wait --for ready`'s wake after `set_state(Ready)`.
fn wait_distribution(rounds_ours: usize, rounds_poll: usize) {
    let mut rig = ReadyRig::new();
    for (name, kind, rounds) in [
        ("ours", Waiter::Ours, rounds_ours),
        ("poll_50ms", Waiter::Poll50ms, rounds_poll),
    ] {
        let mut samples: Vec<Duration> = (0..rounds).map(|_| rig.ready(kind)).collect();
        samples.sort();
        println!(
            "wait_ready/{name}: {rounds} rounds: median {:?}, p99 {:?}, max {:?}",
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

/// A `wait --for ready` left waiting `wait` on a holder that stays
/// starting: its CPU time, and per second.
#[cfg(target_os = "linux")]
fn idle_wait_cpu(wait: Duration) {
    let rig = ReadyRig::new();
    let held = acquire_or_reclaim(&rig.dir, PORT).expect("holder");
    let path = rig.dir.path().to_path_buf();
    let cpu = thread::spawn(move || {
        let before = thread_cpu();
        let outcome = wait_for(&path, PORT, Until::Ready, Some(wait)).expect("wait");
        assert!(matches!(outcome, WaitOutcome::TimedOut(_)), "{outcome:?}");
        thread_cpu() - before
    })
    .join()
    .expect("waiter thread");
    held.release().expect("release");
    println!(
        "idle wait --for ready: {wait:?} on a starting holder used {cpu:?} of CPU ({:?}/s)",
        cpu.div_f64(wait.as_secs_f64())
    );
}

/// `llmlb serve` (HTTP) from spawn to ready, `rounds` times: the median and
/// p99 of spawn → a waiter sees ready, and of lock taken → ready recorded.
fn serve_start_to_ready(rounds: usize) {
    let Some(bin) = option_env!("CARGO_BIN_EXE_llmlb") else {
        println!("serve start → ready: skipped (built without the cli feature)");
        return;
    };
    let mut outside = Vec::with_capacity(rounds);
    let mut inside = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let tmp = tempfile::tempdir_in(base_dir()).expect("bench dir");
        let locks = tmp.path().join("locks");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let started = Instant::now();
        let mut server = std::process::Command::new(bin)
            .args(["serve", "-p", &port.to_string(), "-H", "127.0.0.1"])
            .env("LLMLB_LOCK_DIR", &locks)
            .env("LLMLB_LOG_LEVEL", "warn")
            .env_remove("NOTIFY_SOCKET")
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("spawn llmlb serve");
        let outcome = wait_for(&locks, port, Until::Ready, Some(GENEROUS));
        outside.push(started.elapsed());
        assert!(matches!(outcome, Ok(WaitOutcome::Met(_))), "{outcome:?}");
        let record = std::fs::read(locks.join(format!("serve_{port}.lock"))).expect("record");
        let info = llmlb::lock::LockInfo::parse(&record).expect("a record");
        let since = info.state_since.expect("state_since");
        inside.push((since - info.started_at).to_std().unwrap_or_default());
        let _ = server.kill();
        let _ = server.wait();
    }
    for (what, mut times) in [
        ("spawn → ready seen by a waiter", outside),
        ("lock taken → ready recorded", inside),
    ] {
        times.sort();
        println!(
            "serve start → ready, {what}, {rounds} rounds: median {:?}, p99 {:?}, max {:?}",
            percentile(&times, 0.5),
            percentile(&times, 0.99),
            times.last().copied().unwrap_or_default()
        );
    }
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
        wait_distribution(5, 2);
        serve_start_to_ready(2);
    } else {
        distribution(1000, 100);
        wait_distribution(1000, 100);
        serve_start_to_ready(100);
    }
    #[cfg(target_os = "linux")]
    {
        let idle = if smoke {
            Duration::from_millis(50)
        } else {
            Duration::from_secs(1)
        };
        idle_waiter_cpu(idle);
        idle_wait_cpu(if smoke { idle } else { Duration::from_secs(5) });
    }
}
