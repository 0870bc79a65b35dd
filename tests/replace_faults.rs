//! SIGKILL during `serve --replace`: a server is ready, a successor starts
//! to take its port over, and one of the two is killed at a random instant
//! of the handover window (from before the successor has run any code to
//! after the predecessor has drained). Whatever the instant, once things
//! settle:
//!
//! - the port has at most one recorded holder, and a held lock (the FLOCK on
//!   the lock file's inode in `/proc/locks`) is recorded as held by the one
//!   live survivor: never a record naming a dead process while the lock is
//!   held, never two servers that both believe the record is theirs;
//! - a live survivor serves the port (`/health` answers with its PID), so the
//!   port is never locked by a process that does not serve it: a killed
//!   successor leaves the predecessor serving and recorded (restored), or,
//!   if the drain had begun, the predecessor finishes and exits 0 and the
//!   port is free (stale); a killed predecessor leaves the successor serving
//!   and recorded, by handover or by its fallback (the port found stale);
//! - the port is never wedged: `stop` of the survivor then a fresh `serve`
//!   (or a fresh `serve` reclaiming after a SIGKILL) takes it.
//!
//! No timing is asserted: the random delays only place the kill, and every
//! wait is a poll on an observable condition with a [`PATIENCE`] deadline.
//! `LLMLB_REPLACE_FAULT_SEED` replays a run's kill instants (printed at the
//! start), `LLMLB_REPLACE_FAULT_TRIALS` changes the number of trials.
#![cfg(unix)]

mod cli_support;
#[path = "support/kernel_locks.rs"]
mod kernel_locks;
#[path = "support/seeded.rs"]
mod seeded;

use kernel_locks::flock_held;
use seeded::Rng;

use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::time::{Duration, Instant};

use cli_support::{free_port, http_get, Env, Proc, PATIENCE};

/// Kill trials by default.
const TRIALS: usize = 200;
/// Upper bound of the random delay between starting the successor and the
/// SIGKILL: a debug build's start-up plus the handover plus the drain fits
/// well inside on an idle machine, so the kills cover the whole exchange.
const MAX_KILL_DELAY_US: u64 = 30_000;
/// How often a settling port is looked at.
const POLL: Duration = Duration::from_millis(2);

/// The fields of the lock file's record this test looks at, parsed here
/// (not by the library under test).
#[derive(Debug, Clone, PartialEq)]
struct Record {
    pid: u32,
    state: String,
    draining: Vec<u64>,
}

/// The record of `path`, if it exists and parses.
fn record(path: &Path) -> Option<Record> {
    let text = std::fs::read_to_string(path).ok()?;
    let value: serde_json::Value = serde_json::from_str(&text).ok()?;
    Some(Record {
        pid: u32::try_from(value.get("pid")?.as_u64()?).ok()?,
        state: value.get("state")?.as_str()?.to_owned(),
        draining: value
            .get("draining")
            .and_then(serde_json::Value::as_array)
            .map(|d| d.iter().filter_map(serde_json::Value::as_u64).collect())
            .unwrap_or_default(),
    })
}

/// The PID `/health` on `port` reports, if it answers 200.
fn health_pid(port: u16) -> Option<u32> {
    let (status, body) = http_get(port, "/health")?;
    if status != 200 {
        return None;
    }
    let value: serde_json::Value = serde_json::from_str(&body).ok()?;
    u32::try_from(value.get("pid")?.as_u64()?).ok()
}

/// `serve` on `port` (with `extra` arguments).
fn spawn_serve(env: &Env, port: u16, extra: &[&str]) -> Proc {
    let port = port.to_string();
    let mut args = vec!["serve", "--port", &port, "--host", "127.0.0.1"];
    args.extend_from_slice(extra);
    env.spawn(&args)
}

/// Polls until `p` is recorded as the ready holder of `port` (holding the
/// lock, no predecessor draining) and `/health` answers with its PID.
fn wait_serving(env: &Env, port: u16, p: &mut Proc, what: &str) {
    let lock = env.lock_file(port);
    let deadline = Instant::now() + PATIENCE;
    loop {
        let recorded = record(&lock);
        if recorded
            .as_ref()
            .is_some_and(|r| r.pid == p.pid() && r.state == "ready" && r.draining.is_empty())
            && flock_held(&lock)
            && health_pid(port) == Some(p.pid())
        {
            return;
        }
        if let Some(status) = p.try_wait() {
            panic!(
                "{what} (PID {}) exited ({status}) before serving port {port}; record {recorded:?}; stderr:\n{}",
                p.pid(),
                p.stderr()
            );
        }
        assert!(
            Instant::now() < deadline,
            "{what} (PID {}) never served port {port}; record {recorded:?}; stderr:\n{}",
            p.pid(),
            p.stderr()
        );
        std::thread::sleep(POLL);
    }
}

/// How a trial ended, for the summary printed at the end (the kills must
/// be seen to land all over the handover, not only before or after it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Outcome {
    /// The successor was killed before it took anything; the predecessor
    /// never noticed.
    OldUntouched,
    /// The successor was killed holding the lock, before the drain: the
    /// predecessor wrote its record back.
    OldRestored,
    /// The successor was killed after it had asked for the drain: the
    /// predecessor finished and exited, the port is free (stale).
    OldDrainedNobody,
    /// The predecessor was killed before it handed anything over: the
    /// successor took the free (stale) port itself.
    NewTookFree,
    /// The predecessor was killed while the successor asked it: the
    /// successor found it gone unanswered, took its fallback (a stop that
    /// finds the port stale) and took the port.
    NewAfterFallback,
    /// The predecessor was killed after handing the lock over (or had
    /// drained and exited already): the successor serves by handover.
    NewByHandover,
}

#[test]
fn sigkill_during_replace_never_leaves_two_owners_or_a_dead_one() {
    let trials = std::env::var("LLMLB_REPLACE_FAULT_TRIALS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(TRIALS);
    let mut rng = Rng::from_env("LLMLB_REPLACE_FAULT_SEED");
    let mut outcomes = std::collections::BTreeMap::<Outcome, usize>::new();
    for trial in 0..trials {
        let kill_old = rng.below(2) == 0;
        // An exact 0 now and then: the kill lands before the successor ran.
        // Half the others fall in the first quarter of the window, where
        // the start-up ends and the exchange itself (a millisecond or two)
        // happens on an idle machine; the rest cover it all, for a loaded
        // one.
        let delay_us = match rng.below(8) {
            0 => 0,
            1..=4 => rng.below(MAX_KILL_DELAY_US / 4),
            _ => rng.below(MAX_KILL_DELAY_US),
        };
        let stop_survivor = rng.below(2) == 0;
        let params = format!(
            "trial {trial}: SIGKILL the {} {delay_us}us after starting the successor",
            if kill_old { "predecessor" } else { "successor" }
        );
        let outcome = run_trial(kill_old, delay_us, stop_survivor, &params);
        *outcomes.entry(outcome).or_default() += 1;
    }
    eprintln!("outcomes of {trials} trials: {outcomes:?}");
}

fn run_trial(kill_old: bool, delay_us: u64, stop_survivor: bool, params: &str) -> Outcome {
    let env = Env::new();
    let port = free_port();
    let lock = env.lock_file(port);
    let mut old = spawn_serve(&env, port, &[]);
    wait_serving(&env, port, &mut old, "the predecessor");
    let mut new = spawn_serve(&env, port, &["--replace"]);
    // The delay places the kill; it synchronises nothing.
    std::thread::sleep(Duration::from_micros(delay_us));
    let (old_pid, new_pid) = (old.pid(), new.pid());
    let victim_status = if kill_old { old.kill() } else { new.kill() };
    let context = |what: &str, old: &Proc, new: &Proc| {
        format!(
            "{params} (victim {}), predecessor PID {old_pid}, successor PID {new_pid}: {what}\n\
             record now: {:?}; lock held: {}\n\
             predecessor stderr:\n{}\nsuccessor stderr:\n{}",
            victim_status,
            record(&lock),
            flock_held(&lock),
            old.stderr(),
            new.stderr()
        )
    };

    // Settle: poll until the survivor is recorded and holds the lock, or
    // has exited. A victim is reaped by `kill`, so its descriptors are gone.
    let (survivor, other) = if kill_old {
        (&mut new, &old)
    } else {
        (&mut old, &new)
    };
    let survivor_pid = survivor.pid();
    let deadline = Instant::now() + PATIENCE;
    let survivor_exit = loop {
        if let Some(status) = survivor.try_wait() {
            break Some(status);
        }
        let settled = record(&lock)
            .is_some_and(|r| r.pid == survivor_pid && r.state == "ready" && r.draining.is_empty())
            && flock_held(&lock);
        if settled {
            break None;
        }
        if Instant::now() >= deadline {
            let (o, n) = if kill_old {
                (other, &*survivor)
            } else {
                (&*survivor, other)
            };
            panic!(
                "{}",
                context(
                    "the survivor neither became the recorded holder nor exited",
                    o,
                    n
                )
            );
        }
        std::thread::sleep(POLL);
    };
    let (old_ref, new_ref): (&Proc, &Proc) = if kill_old {
        (other, &*survivor)
    } else {
        (&*survivor, other)
    };
    let fail = |what: &str| -> ! { panic!("{}", context(what, old_ref, new_ref)) };

    let outcome = match survivor_exit {
        None => {
            // Alive, recorded, holding: it must serve, and stay recorded.
            let served = health_pid(port);
            if served != Some(survivor_pid) {
                fail(&format!(
                    "the recorded, live survivor does not serve the port (/health PID {served:?})"
                ));
            }
            let again = record(&lock);
            if again.as_ref().map(|r| r.pid) != Some(survivor_pid) || !flock_held(&lock) {
                fail("the survivor's record or lock changed after it settled");
            }
            let old_err = old_ref.stderr();
            let new_err = new_ref.stderr();
            if kill_old {
                if new_err.contains("took over port") {
                    Outcome::NewByHandover
                } else if new_err.contains("offers no handover") {
                    Outcome::NewAfterFallback
                } else {
                    Outcome::NewTookFree
                }
            } else if old_err.contains("handed the lock") {
                // Its log line follows the record it wrote back.
                let deadline = Instant::now() + PATIENCE;
                while !old_ref.stderr().contains("abandoned the handover") {
                    if Instant::now() >= deadline {
                        fail("the predecessor handed the lock over and is recorded again, but never says the handover was abandoned");
                    }
                    std::thread::sleep(POLL);
                }
                Outcome::OldRestored
            } else {
                Outcome::OldUntouched
            }
        }
        Some(status) => {
            // Only a predecessor that was told to drain may go away: it
            // exits 0, and leaves the port to nobody (the killed successor's
            // record is stale, its lock gone with both descriptions).
            if kill_old {
                fail(&format!(
                    "the successor exited ({status}) instead of serving the port its predecessor lost"
                ));
            }
            if status.code() != Some(0) || status.signal().is_some() {
                fail(&format!("the predecessor exited ({status}), not drained"));
            }
            if !old_ref.stderr().contains("draining") {
                fail("the predecessor exited without being told to drain");
            }
            if flock_held(&lock) {
                fail("the port is locked with both servers gone");
            }
            if record(&lock).is_some_and(|r| r.pid == old_pid) {
                fail("the drained predecessor's record is back");
            }
            Outcome::OldDrainedNobody
        }
    };

    // Never wedged: the survivor stops (or dies), and a fresh serve takes it.
    let survivor = if kill_old { &mut new } else { &mut old };
    if survivor_exit.is_none() {
        if stop_survivor {
            let out = env.run(&["stop", "--port", &port.to_string()]);
            if out.code() != Some(0) {
                panic!(
                    "{params}: stop of the survivor failed ({:?}): {}{}",
                    out.code(),
                    out.stdout,
                    out.stderr
                );
            }
            let status = survivor.wait();
            assert_eq!(
                status.code(),
                Some(0),
                "{params}: the stopped survivor exited ({status}); stderr:\n{}",
                survivor.stderr()
            );
        } else {
            survivor.kill();
        }
    }
    let mut fresh = spawn_serve(&env, port, &[]);
    wait_serving(&env, port, &mut fresh, &format!("{params}: a fresh serve"));
    fresh.kill();
    outcome
}
