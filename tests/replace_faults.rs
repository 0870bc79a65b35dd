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
//! The tests after it place other faults at random instants of a replace,
//! every server of a trial sharing one `--pidfile`: SIGTERM (or SIGKILL) to
//! either side, `llmlb stop`, a second concurrent `serve --replace`, and the
//! control socket file removed as a tmp cleaner would. At every settle:
//! every server but at most one has exited; a live one is the recorded
//! ready holder, holds the lock, serves, and is named by the pidfile; with
//! none left the lock is free and the pidfile is gone or names a server the
//! test SIGKILLed; `stop` exits 0 only when no server of the port's lineage
//! serves; a replacer never falls back to a stop when a handover was
//! possible; and a fresh `serve` takes the port afterwards.
//!
//! No timing is asserted: the random delays only place the fault, and every
//! wait is a poll on an observable condition with a [`PATIENCE`] deadline.
//! `LLMLB_REPLACE_FAULT_SEED` replays a run's fault instants (printed at the
//! start of each test), `LLMLB_REPLACE_FAULT_TRIALS` sets the number of
//! trials of every test for a long run.
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
    let trials = trials(TRIALS);
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
            // A record rewritten in place (its `draining` emptied) can be
            // read torn: looked at again, as the library's readers do.
            let again = (0..5).find_map(|_| {
                let seen = record(&lock);
                if seen.is_none() {
                    std::thread::sleep(Duration::from_millis(2));
                }
                seen
            });
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

// ---------------------------------------------------------------------------
// SIGTERM, `stop`, a second replacer and a tmp cleaner during a replace
// ---------------------------------------------------------------------------

/// Trials of each fault below by default: the whole file stays well inside a
/// minute on a loaded 2-core machine; `LLMLB_REPLACE_FAULT_TRIALS` sets them
/// all (and the SIGKILL trials above) for a long run.
const FAULT_TRIALS: usize = 40;

fn trials(default: usize) -> usize {
    std::env::var("LLMLB_REPLACE_FAULT_TRIALS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

/// A random delay in `0..MAX_KILL_DELAY_US` microseconds, weighted as the
/// SIGKILL trials weight theirs (an exact 0 now and then, half of the rest in
/// the window's first quarter, where an idle machine does the exchange).
fn fault_delay(rng: &mut Rng) -> u64 {
    match rng.below(8) {
        0 => 0,
        1..=4 => rng.below(MAX_KILL_DELAY_US / 4),
        _ => rng.below(MAX_KILL_DELAY_US),
    }
}

/// One process of the port's lineage in a trial (the server that was
/// there, its successors).
struct Server {
    name: &'static str,
    proc: Proc,
    pid: u32,
    /// How it ended, once reaped.
    exit: Option<std::process::ExitStatus>,
    /// The test sent it SIGKILL: it may leave a stale record and pidfile.
    sigkilled: bool,
}

impl Server {
    fn new(name: &'static str, proc: Proc) -> Server {
        let pid = proc.pid();
        Server {
            name,
            proc,
            pid,
            exit: None,
            sigkilled: false,
        }
    }

    /// Sends `sig` (it is not reaped before, so its PID cannot have been
    /// reused). SIGKILL is followed by the reap, as a supervisor reaps a
    /// killed child: a zombie still counts as running to `kill(pid, 0)`,
    /// and no supervisor leaves one for long.
    fn signal(&mut self, sig: libc::c_int) {
        if self.exit.is_none() {
            // SAFETY: kill(2) on our own unreaped child.
            unsafe { libc::kill(self.pid as libc::pid_t, sig) };
            if sig == libc::SIGKILL {
                self.sigkilled = true;
                self.exit = Some(self.proc.wait());
            }
        }
    }

    fn poll(&mut self) -> bool {
        if self.exit.is_none() {
            self.exit = self.proc.try_wait();
        }
        self.exit.is_none()
    }

    fn said(&self, what: &str) -> bool {
        self.proc.stderr().contains(what)
    }
}

/// A trial's port, lock dir, shared pidfile and lineage.
struct Trial {
    env: Env,
    port: u16,
    lock: std::path::PathBuf,
    pidfile: std::path::PathBuf,
    servers: Vec<Server>,
    params: String,
}

/// What `serve --replace` prints when it found no offer and stops the
/// holder (the fallback).
const FALLBACK: &str = "offers no handover";
/// What it prints when it received the port by handover.
const HANDED: &str = "took over port";
/// What a replacer prints when another one is under way.
const BUSY: &str = "is under way";

impl Trial {
    /// A ready server on a fresh port, with the pidfile every server of
    /// the trial shares (a unit's `PIDFile=`).
    fn new(params: String) -> Trial {
        let env = Env::new();
        let port = free_port();
        let lock = env.lock_file(port);
        let pidfile = env.tmp.path().join("server.pid");
        let mut trial = Trial {
            env,
            port,
            lock,
            pidfile,
            servers: Vec::new(),
            params,
        };
        let mut old = trial.spawn(&[]);
        wait_serving(&trial.env, port, &mut old, "the predecessor");
        trial.servers.push(Server::new("old", old));
        trial
    }

    fn spawn(&self, extra: &[&str]) -> Proc {
        let mut args = vec!["--pidfile", self.pidfile.to_str().unwrap()];
        args.extend_from_slice(extra);
        spawn_serve(&self.env, self.port, &args)
    }

    /// Starts a `serve --replace` named `name`; its index.
    fn replace(&mut self, name: &'static str) -> usize {
        let p = self.spawn(&["--replace"]);
        self.servers.push(Server::new(name, p));
        self.servers.len() - 1
    }

    fn pidfile_pid(&self) -> Option<String> {
        std::fs::read_to_string(&self.pidfile)
            .ok()
            .map(|s| s.trim().to_owned())
    }

    fn fail(&self, what: &str) -> ! {
        let mut text = format!(
            "{}: {what}\nrecord now: {:?}; lock held: {}; pidfile: {:?}; /health PID: {:?}",
            self.params,
            record(&self.lock),
            flock_held(&self.lock),
            self.pidfile_pid(),
            health_pid(self.port)
        );
        for s in &self.servers {
            text += &format!(
                "\n{} (PID {}, exit {:?}, sigkilled {}) stderr:\n{}",
                s.name,
                s.pid,
                s.exit,
                s.sigkilled,
                s.proc.stderr()
            );
        }
        panic!("{text}")
    }

    /// Why the lineage has not settled (or breaks an invariant), or the
    /// index of the one live server (`None`: none is left).
    ///
    /// Settled: every server but at most one has exited. A live one is the
    /// recorded, ready holder with nobody draining, the kernel shows the
    /// lock held, `/health` answers with its PID, and the pidfile names it.
    /// With none left the lock is free, the record (if any) names one of
    /// them (all dead), and the pidfile is gone, or names a server the test
    /// SIGKILLed (a clean exit removes it; a SIGKILLed one cannot: stale,
    /// which `start-stop-daemon` and the next `serve` handle).
    fn settled(&mut self) -> Result<Option<usize>, String> {
        let alive: Vec<usize> = (0..self.servers.len())
            .filter(|&i| self.servers[i].poll())
            .collect();
        match alive.as_slice() {
            [] => {
                if flock_held(&self.lock) {
                    return Err("the port is locked with every server gone".into());
                }
                if let Some(r) = record(&self.lock) {
                    if !self.servers.iter().any(|s| s.pid == r.pid) {
                        return Err(format!(
                            "the record names PID {}, no server of the trial",
                            r.pid
                        ));
                    }
                }
                match self.pidfile_pid() {
                    None => Ok(None),
                    Some(pid) if self.servers.iter().any(|s| s.sigkilled && s.pid.to_string() == pid) => Ok(None),
                    Some(pid) => Err(format!(
                        "every server is gone, but the pidfile names PID {pid}, which was not SIGKILLed (a clean exit removes it)"
                    )),
                }
            }
            &[i] => {
                let pid = self.servers[i].pid;
                let r = record(&self.lock);
                if !r
                    .as_ref()
                    .is_some_and(|r| r.pid == pid && r.state == "ready" && r.draining.is_empty())
                {
                    return Err(format!(
                        "the one live server, PID {pid}, is not the recorded ready holder ({r:?})"
                    ));
                }
                if !flock_held(&self.lock) {
                    return Err(format!("PID {pid} is recorded, but nobody holds the lock"));
                }
                if health_pid(self.port) != Some(pid) {
                    return Err(format!(
                        "PID {pid} is the recorded holder, but does not serve the port"
                    ));
                }
                if self.pidfile_pid() != Some(pid.to_string()) {
                    return Err(format!(
                        "PID {pid} serves, but the pidfile does not name it"
                    ));
                }
                Ok(Some(i))
            }
            more => Err(format!(
                "{} servers still run: {:?}",
                more.len(),
                more.iter()
                    .map(|&i| self.servers[i].pid)
                    .collect::<Vec<_>>()
            )),
        }
    }

    /// Polls [`settled`](Self::settled) until it holds (then checks it
    /// once more: it must stay), or fails with its last reason.
    fn settle(&mut self) -> Option<usize> {
        let deadline = Instant::now() + PATIENCE;
        loop {
            match self.settled() {
                Ok(holder) => {
                    if let Err(why) = self.settled() {
                        self.fail(&format!("settled, then not: {why}"));
                    }
                    return holder;
                }
                Err(why) if Instant::now() >= deadline => {
                    self.fail(&format!("never settled: {why}"))
                }
                Err(_) => std::thread::sleep(POLL),
            }
        }
    }

    /// Waits for server `i` to exit, or fails with `why`.
    fn wait_exit(&mut self, i: usize, why: &str) {
        let deadline = Instant::now() + PATIENCE;
        while self.servers[i].poll() {
            if Instant::now() >= deadline {
                self.fail(why);
            }
            std::thread::sleep(POLL);
        }
    }

    /// Every exit is 0, except for the servers in `interrupted` (the test
    /// or a `stop` signalled them while they took the port over: 143, or
    /// the signal itself before its handler was installed) and SIGKILLed
    /// ones.
    fn check_exits(&self, interrupted: &[usize]) {
        for (i, s) in self.servers.iter().enumerate() {
            let Some(status) = s.exit else { continue };
            let ok = status.code() == Some(0)
                || s.sigkilled && status.signal() == Some(libc::SIGKILL)
                || interrupted.contains(&i)
                    && (status.code() == Some(143) || status.signal() == Some(libc::SIGTERM));
            if !ok {
                self.fail(&format!("{} exited ({status})", s.name));
            }
        }
    }

    /// Never wedged: the holder (if any) is stopped by `stop` (exit 0, it
    /// exits 0 and takes its pidfile along) or SIGKILLed; then a fresh
    /// serve with the same pidfile takes the port and names itself in it.
    fn finish(mut self, holder: Option<usize>, stop: bool) {
        if let Some(i) = holder {
            if stop {
                let out = self.env.run(&["stop", "--port", &self.port.to_string()]);
                if out.code() != Some(0) {
                    self.fail(&format!(
                        "stop of the settled holder failed: {}{}",
                        out.stdout, out.stderr
                    ));
                }
                let status = self.servers[i].proc.wait();
                self.servers[i].exit = Some(status);
                if status.code() != Some(0) {
                    self.fail("the stopped holder did not exit 0");
                }
                if self.pidfile.exists() {
                    self.fail("the stopped holder left its pidfile");
                }
            } else {
                self.servers[i].signal(libc::SIGKILL);
                let status = self.servers[i].proc.wait();
                self.servers[i].exit = Some(status);
            }
        }
        let mut fresh = self.spawn(&[]);
        wait_serving(
            &self.env,
            self.port,
            &mut fresh,
            &format!("{}: a fresh serve", self.params),
        );
        let want = fresh.pid().to_string();
        let deadline = Instant::now() + PATIENCE;
        while self.pidfile_pid().as_deref() != Some(&want) {
            if Instant::now() >= deadline {
                self.fail("a fresh serve never wrote its pidfile");
            }
            std::thread::sleep(POLL);
        }
        fresh.kill();
    }
}

/// The summary of a trial, counted over the run and printed at the end:
/// which server was left, and what happened on the way.
fn summary(trial: &Trial, holder: Option<usize>) -> String {
    let mut s = holder.map_or("nobody serves".to_owned(), |i| {
        format!("{} serves", trial.servers[i].name)
    });
    for server in &trial.servers {
        for (said, tag) in [
            (HANDED, "took over"),
            (FALLBACK, "fell back"),
            (BUSY, "busy"),
        ] {
            if server.said(said) {
                s += &format!(", {} {tag}", server.name);
            }
        }
    }
    s
}

fn print_outcomes(what: &str, outcomes: &std::collections::BTreeMap<String, usize>) {
    eprintln!("{what}: {} trials", outcomes.values().sum::<usize>());
    for (outcome, n) in outcomes {
        eprintln!("  {n:4}  {outcome}");
    }
}

/// SIGTERM (half of the trials SIGKILL, with the shared pidfile the
/// SIGKILL trials above do not use) to either side at a random instant.
/// Beyond the settled invariants: a replacer falls back to a stop only when
/// its predecessor was signalled by the test (it then has no offer to
/// make), and a SIGTERMed successor that had received the port gives it
/// back (the predecessor serves on) or, once it had told the predecessor to
/// drain, stops as the holder.
#[test]
fn sigterm_or_sigkill_during_replace_settles_with_one_server_named_by_the_pidfile() {
    let mut rng = Rng::from_env("LLMLB_REPLACE_FAULT_SEED");
    let mut outcomes = std::collections::BTreeMap::<String, usize>::new();
    for n in 0..trials(FAULT_TRIALS * 2) {
        let old_side = rng.below(2) == 0;
        let sig = if rng.below(2) == 0 {
            libc::SIGTERM
        } else {
            libc::SIGKILL
        };
        let delay_us = fault_delay(&mut rng);
        let stop = rng.below(2) == 0;
        let params =
            format!(
            "trial {n}: {} to the {} {delay_us}us after starting the successor (shared pidfile)",
            if sig == libc::SIGTERM { "SIGTERM" } else { "SIGKILL" },
            if old_side { "predecessor" } else { "successor" },
        );
        let mut trial = Trial::new(params);
        let new = trial.replace("new");
        std::thread::sleep(Duration::from_micros(delay_us));
        let victim = if old_side { 0 } else { new };
        trial.servers[victim].signal(sig);
        if sig == libc::SIGTERM {
            // Whatever it was doing, a SIGTERMed server ends (a successor
            // gives the port back or stops as the holder, a predecessor
            // drains or stops); until it has, a settle could read a state
            // its pending signal is about to change.
            trial.wait_exit(victim, "the SIGTERMed server never exited");
        }
        let holder = trial.settle();
        trial.check_exits(&[victim]);
        if !old_side && trial.servers[new].said(FALLBACK) {
            trial.fail("the successor stopped a predecessor that could hand over");
        }
        if old_side && sig == libc::SIGTERM && holder.is_none() {
            trial.fail("the SIGTERMed predecessor left the port to nobody, the successor gone");
        }
        *outcomes
            .entry(format!(
                "{} {}: {}",
                if sig == libc::SIGTERM {
                    "SIGTERM"
                } else {
                    "SIGKILL"
                },
                if old_side { "old" } else { "new" },
                summary(&trial, holder)
            ))
            .or_default() += 1;
        trial.finish(holder, stop);
    }
    print_outcomes("SIGTERM/SIGKILL during replace", &outcomes);
}

/// `llmlb stop` at a random instant of a replace. `stop` exits 0 only when
/// no server of the port's lineage serves: the predecessor has exited, and
/// so has the successor, unless it took the port as a free one after the
/// stop let it go (it never received it by handover: then it held the
/// port when the stop ran and must be stopped too). A `stop` that exits 1
/// leaves a settled port like any other. A replacer falls back to a stop
/// only if the predecessor was stopping already.
#[test]
fn stop_during_replace_exits_0_only_when_nothing_of_the_port_serves() {
    let mut rng = Rng::from_env("LLMLB_REPLACE_FAULT_SEED");
    let mut outcomes = std::collections::BTreeMap::<String, usize>::new();
    for n in 0..trials(FAULT_TRIALS) {
        let delay_us = fault_delay(&mut rng);
        let params = format!("trial {n}: `llmlb stop` {delay_us}us after starting the successor");
        let mut trial = Trial::new(params);
        let new = trial.replace("new");
        std::thread::sleep(Duration::from_micros(delay_us));
        let out = trial.env.run(&["stop", "--port", &trial.port.to_string()]);
        if out.code() == Some(0) {
            // At the instant stop reports success, nothing it was asked to
            // stop may serve: each server exits (without anything else
            // happening to it), or is a successor that found the port free.
            let deadline = Instant::now() + PATIENCE;
            loop {
                let old_alive = trial.servers[0].poll();
                let new_alive = trial.servers[new].poll();
                let new_took_free = new_alive
                    && !trial.servers[new].said(HANDED)
                    && record(&trial.lock)
                        .is_some_and(|r| r.pid == trial.servers[new].pid && r.state == "ready");
                if !old_alive && (!new_alive || new_took_free) {
                    break;
                }
                if Instant::now() >= deadline {
                    trial.fail(&format!(
                        "stop exited 0 ({}), but {} still serves",
                        out.stdout.trim(),
                        if old_alive {
                            "the predecessor"
                        } else {
                            "the successor, which had received the port by handover,"
                        }
                    ));
                }
                std::thread::sleep(POLL);
            }
        }
        let holder = trial.settle();
        trial.check_exits(&[new]);
        *outcomes
            .entry(format!(
                "stop exit {:?}: {}",
                out.code(),
                summary(&trial, holder)
            ))
            .or_default() += 1;
        trial.finish(holder, false);
    }
    print_outcomes("stop during replace", &outcomes);
}

/// Two `serve --replace` of one port, the second started a random instant
/// after the first. At most one takes the port from the predecessor; the
/// other is told another replace is under way (exit 1) or takes the port
/// over from the winner once it serves. Never two servers at the settle,
/// never a fallback (every holder here offers a handover), nothing
/// signalled: every server that ended drained (exit 0) or was refused.
#[test]
fn two_concurrent_replacers_never_make_two_holders_and_never_stop_anything() {
    let mut rng = Rng::from_env("LLMLB_REPLACE_FAULT_SEED");
    let mut outcomes = std::collections::BTreeMap::<String, usize>::new();
    for n in 0..trials(FAULT_TRIALS) {
        let delay_us = fault_delay(&mut rng);
        let params = format!("trial {n}: a second replacer {delay_us}us after the first");
        let mut trial = Trial::new(params);
        trial.replace("first");
        std::thread::sleep(Duration::from_micros(delay_us));
        trial.replace("second");
        let holder = trial.settle();
        let Some(holder) = holder else {
            trial.fail("nobody serves after two replaces and no fault");
        };
        for (i, s) in trial.servers.iter().enumerate() {
            if s.said(FALLBACK) {
                trial.fail(&format!(
                    "{} fell back to stopping a server that offers a handover",
                    s.name
                ));
            }
            let refused = s.said(BUSY) && s.exit.is_some_and(|e| e.code() == Some(1));
            let drained = s.exit.is_some_and(|e| e.code() == Some(0)) && s.said("handed port");
            if i != holder && !refused && !drained {
                trial.fail(&format!(
                    "{} neither serves, nor drained, nor was refused as busy",
                    s.name
                ));
            }
        }
        *outcomes.entry(summary(&trial, Some(holder))).or_default() += 1;
        trial.finish(Some(holder), rng.below(2) == 0);
    }
    print_outcomes("two concurrent replacers", &outcomes);
}

/// A tmp cleaner removes the control socket at a random instant of a
/// replace (the lock dir's shared flock, which keeps systemd-tmpfiles out,
/// is not there yet: removing the socket by hand is the robust part). The
/// handover still happens, nothing is stopped, and the holder left has its
/// control socket back: a further replace hands over too.
#[test]
fn a_control_socket_removed_mid_handover_is_made_again_and_nothing_is_stopped() {
    let mut rng = Rng::from_env("LLMLB_REPLACE_FAULT_SEED");
    let mut outcomes = std::collections::BTreeMap::<String, usize>::new();
    for n in 0..trials(FAULT_TRIALS) {
        let delay_us = fault_delay(&mut rng);
        let params = format!(
            "trial {n}: the control socket removed {delay_us}us after starting the successor"
        );
        let mut trial = Trial::new(params);
        let ctl = handover_ctl(&trial);
        let new = trial.replace("new");
        std::thread::sleep(Duration::from_micros(delay_us));
        let removed = std::fs::remove_file(&ctl).is_ok();
        let holder = trial.settle();
        trial.check_exits(&[]);
        if holder != Some(new) || !trial.servers[new].said(HANDED) {
            trial.fail("the successor did not take the port over by handover");
        }
        if trial.servers[new].said(FALLBACK) {
            trial.fail("the successor fell back to a stop");
        }
        let deadline = Instant::now() + PATIENCE;
        while !ctl.exists() {
            if Instant::now() >= deadline {
                trial.fail("the holder never made its control socket again");
            }
            std::thread::sleep(POLL);
        }
        let third = trial.replace("third");
        let holder = trial.settle();
        trial.check_exits(&[]);
        if holder != Some(third)
            || !trial.servers[third].said(HANDED)
            || trial.servers[third].said(FALLBACK)
        {
            trial.fail("a replace after the control socket was made again did not hand over");
        }
        *outcomes
            .entry(format!("removed {removed}: {}", summary(&trial, holder)))
            .or_default() += 1;
        trial.finish(holder, true);
    }
    print_outcomes("control socket removed mid-handover", &outcomes);
}

/// `<lock dir>/serve_<port>.ctl`.
fn handover_ctl(trial: &Trial) -> std::path::PathBuf {
    trial.env.locks.join(format!("serve_{}.ctl", trial.port))
}
