//! Waiting for a port to reach a state (`llmlb wait`): ready (a live holder
//! that says it serves), held, or free, without taking anything.
//!
//! How it sleeps: as the timed acquire's waiter does (`lock/wait.rs`), on a
//! watch of the lock dir, here one that also reports the lock file's creation
//! and in-place rewrites (a holder's `set_state`); every wake is only a hint
//! to probe again. Under the watch (and where there is none: other Unixes, a
//! dir on NFS; and where it cannot see a rewrite: kqueue, Windows) a poll
//! tick, backing off from 1 ms to the acquire's caps. A lock dir that does
//! not exist yet is nothing held: its parent is watched (inotify) or polled
//! for it to appear, so `wait` may start before the first `serve`.
//!
//! A waiter holds nothing: each look is a probe (a read-only open and a
//! shared lock for one read), which never makes an acquire fail.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::lock::sys::{self, Wake};
use crate::lock::{
    lock_file_name, LockDir, LockError, LockInfo, LockState, ServeState, WAIT_POLL_CAP,
    WATCHED_POLL_CAP,
};

/// The first sleep between looks; doubled up to the cap.
const FIRST_POLL: Duration = Duration::from_millis(1);

/// The state [`wait_for`] waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Until {
    /// Held by a live holder whose record says it serves
    /// ([`LockInfo::serve_state`] is [`ServeState::Ready`]; a record without
    /// a state is ready) and whose recorded holder has not released it.
    Ready,
    /// Held, in any state (the record may even be unreadable).
    Held,
    /// Not held: no lock file, an empty one, or a stale one (its holder died:
    /// the next acquire takes it over).
    Free,
}

impl Until {
    /// `"ready"`, `"held"` or `"free"`.
    pub fn name(self) -> &'static str {
        match self {
            Until::Ready => "ready",
            Until::Held => "held",
            Until::Free => "free",
        }
    }
}

/// How a [`wait_for`] ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WaitOutcome {
    /// The condition holds: what the last look saw (for [`Until::Ready`],
    /// `Held(Some(info))` with the ready holder's record).
    Met(LockState),
    /// The timeout passed first: what the last look saw.
    TimedOut(LockState),
    /// [`Until::Ready`] only: a holder seen alive and not ready is gone
    /// before it said ready: it released the port (free now), died (stale),
    /// released it to processes that inherited its lock, or another holder
    /// has taken its place (even one that is ready). Never reported for a
    /// port that no live holder had while waiting (that is still waiting).
    HolderGone {
        /// The gone holder's record, as last seen (boxed: the rare variant).
        holder: Box<LockInfo>,
        /// What the look that found it gone saw.
        now: LockState,
    },
}

/// Whether `info` names a holder that serves: ready, and not released by
/// the recorded holder (then `pid` no longer holds the port).
fn serves(info: &LockInfo) -> bool {
    info.released_by.is_none() && info.serve_state() == ServeState::Ready
}

/// Where the waiter looks: the lock dir once it exists, else its parent.
enum Watched {
    /// The dir is open; the watch, if the platform has one, on it.
    Dir(LockDir, Option<sys::DirWatch>),
    /// The dir does not exist (yet): watching its parent for it, if possible.
    Missing(Option<sys::DirWatch>),
}

/// Blocks until `port` in the lock dir at `dir` is in the state `until`, or
/// `timeout` passes (`None`: never), and says what it last saw. Takes
/// nothing and creates nothing; a missing lock dir is a port nothing holds
/// (yet), and its later creation is noticed.
///
/// For [`Until::Ready`], a holder seen not ready (starting, stopping) that
/// goes away before it is seen ready ends the wait with
/// [`WaitOutcome::HolderGone`], whatever holds the port then: that server
/// did not come up. A port never seen held is waited for.
///
/// # Errors
/// [`LockError::InvalidPort`], an unsafe lock dir or lock file
/// ([`LockError::UnsafeLockDir`], [`LockError::UnsafeLockFile`]) or an I/O
/// error, at once: none of them goes away by waiting.
pub fn wait_for(
    dir: &Path,
    port: u16,
    until: Until,
    timeout: Option<Duration>,
) -> Result<WaitOutcome, LockError> {
    crate::lock::check_port(port)?;
    let deadline = timeout.and_then(|t| Instant::now().checked_add(t));
    let name = lock_file_name(port);
    let mut watched = open(dir, &name)?;
    let mut backoff = FIRST_POLL;
    let mut waiting_on: Option<LockInfo> = None;
    loop {
        // The watch is set up before this look, so a change right after it
        // wakes the sleep below.
        let state = match &watched {
            Watched::Dir(locks, _) => locks.probe(port)?,
            Watched::Missing(_) => LockState::Free,
        };
        // What each look saw: for a user asking why a wait goes on, and for
        // tests that must know it has looked.
        match state.info() {
            Some(info) => tracing::debug!(
                "port {port} looked at: {} by PID {} ({})",
                state.name(),
                info.pid,
                info.serve_state()
            ),
            None => tracing::debug!("port {port} looked at: {}", state.name()),
        }
        if let Some(outcome) = judge(until, state, &mut waiting_on) {
            return Ok(outcome);
        }
        let left = match deadline {
            None => Duration::MAX,
            Some(d) => match d.checked_duration_since(Instant::now()) {
                Some(left) if !left.is_zero() => left,
                _ => return Ok(WaitOutcome::TimedOut(last_seen(&watched, port)?)),
            },
        };
        let tick = left.min(backoff);
        let (watch, sees_all) = match &mut watched {
            Watched::Dir(_, watch) => (
                watch.as_mut(),
                sys::WATCH_SEES_HOLDER_EXIT && sys::WATCH_SEES_WRITES,
            ),
            // Linux only: the dir's arrival is all it needs to see.
            Watched::Missing(watch) => (watch.as_mut(), true),
        };
        let cap = if watch.is_some() && sees_all {
            WATCHED_POLL_CAP
        } else {
            WAIT_POLL_CAP
        };
        backoff = (backoff * 2).min(cap);
        let wake = match watch {
            Some(w) => w.wait(tick),
            None => {
                std::thread::sleep(tick);
                Wake::Timeout
            }
        };
        match &watched {
            // Looked up on every wake and tick, the parent's watch kept.
            Watched::Missing(_) => {
                if let Some(locks) = LockDir::existing(dir)? {
                    watched = watching(locks, &name);
                }
            }
            // A release, a rename or the dir itself gone (or lost events):
            // the path may name a new dir now, so look it up again (rare).
            Watched::Dir(..) if wake == Wake::Changed => watched = open(dir, &name)?,
            Watched::Dir(..) => {}
        }
    }
}

/// What the timeout reports: a last look (the state may have changed since
/// the one the loop judged, so look once more, cheaply).
fn last_seen(watched: &Watched, port: u16) -> Result<LockState, LockError> {
    match watched {
        Watched::Dir(locks, _) => locks.probe(port),
        Watched::Missing(_) => Ok(LockState::Free),
    }
}

/// Opens the lock dir and watches it, or, if it does not exist, watches its
/// parent for it. A watch that cannot be set up leaves the poll.
fn open(dir: &Path, name: &str) -> Result<Watched, LockError> {
    match LockDir::existing(dir)? {
        Some(locks) => Ok(watching(locks, name)),
        None => {
            let watch = match (dir.parent(), dir.file_name().and_then(|n| n.to_str())) {
                (Some(parent), Some(last)) => sys::DirWatch::for_entry(parent, last).ok(),
                _ => None,
            };
            // Created between the lookup and the watch: seen now, not missed.
            match LockDir::existing(dir)? {
                Some(locks) => Ok(watching(locks, name)),
                None => Ok(Watched::Missing(watch)),
            }
        }
    }
}

/// The open dir, watched for `name`'s changes and writes where possible.
fn watching(locks: LockDir, name: &str) -> Watched {
    let watch = sys::DirWatch::with_writes(locks.handle(), name).ok();
    Watched::Dir(locks, watch)
}

/// Whether `state` ends the wait for `until`; `waiting_on` is the holder
/// last seen alive and not ready (for [`Until::Ready`]).
fn judge(until: Until, state: LockState, waiting_on: &mut Option<LockInfo>) -> Option<WaitOutcome> {
    match until {
        Until::Held => matches!(state, LockState::Held(_)).then_some(WaitOutcome::Met(state)),
        Until::Free => (!matches!(state, LockState::Held(_))).then_some(WaitOutcome::Met(state)),
        Until::Ready => {
            // Unreadable (mid-write, or garbage): neither ready nor a sign
            // the holder is gone; look again.
            if matches!(state, LockState::Held(None)) {
                return None;
            }
            let live = match &state {
                LockState::Held(Some(info)) if info.released_by.is_none() => Some(info),
                _ => None,
            };
            if let Some(seen) = waiting_on.as_ref() {
                if !live.is_some_and(|now| seen.same_holder(now)) {
                    return Some(WaitOutcome::HolderGone {
                        holder: Box::new(waiting_on.take().expect("checked above")),
                        now: state,
                    });
                }
            }
            match live {
                Some(info) if serves(info) => Some(WaitOutcome::Met(state)),
                Some(info) => {
                    // Starting or stopping: this is the holder we wait on
                    // (its record kept up to date, for the timeout's line).
                    *waiting_on = Some(info.clone());
                    None
                }
                None => None,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lock::acquire_or_reclaim;

    fn info(pid: u32, state: Option<ServeState>) -> LockInfo {
        let mut info = LockInfo::for_current_process(8000);
        info.pid = pid;
        info.state = state;
        info
    }

    #[test]
    fn ready_is_a_live_holder_that_says_so_or_says_nothing() {
        let mut on = None;
        for state in [None, Some(ServeState::Ready)] {
            let held = LockState::Held(Some(info(1, state)));
            assert_eq!(
                judge(Until::Ready, held.clone(), &mut on),
                Some(WaitOutcome::Met(held))
            );
        }
        let mut released = info(1, Some(ServeState::Ready));
        released.released_by = Some(1);
        assert_eq!(
            judge(Until::Ready, LockState::Held(Some(released)), &mut on),
            None
        );
        assert_eq!(judge(Until::Ready, LockState::Free, &mut on), None);
        assert_eq!(on, None, "nothing alive and not ready was seen");
    }

    #[test]
    fn a_starting_holder_that_goes_away_ends_a_ready_wait_whatever_replaced_it() {
        let starting = info(1, Some(ServeState::Starting));
        for now in [
            LockState::Free,
            LockState::Stale(Some(starting.clone())),
            LockState::Held(Some(info(2, Some(ServeState::Ready)))),
        ] {
            let mut on = None;
            assert_eq!(
                judge(
                    Until::Ready,
                    LockState::Held(Some(starting.clone())),
                    &mut on
                ),
                None
            );
            // Unreadable for a moment: not gone.
            assert_eq!(judge(Until::Ready, LockState::Held(None), &mut on), None);
            assert_eq!(
                judge(Until::Ready, now.clone(), &mut on),
                Some(WaitOutcome::HolderGone {
                    holder: Box::new(starting.clone()),
                    now
                })
            );
        }
    }

    #[test]
    fn held_and_free_are_the_kernel_lock_alone() {
        let mut on = None;
        let unreadable = LockState::Held(None);
        assert!(judge(Until::Held, unreadable.clone(), &mut on).is_some());
        assert!(judge(Until::Free, unreadable, &mut on).is_none());
        for free in [LockState::Free, LockState::Stale(None)] {
            assert!(judge(Until::Free, free.clone(), &mut on).is_some());
            assert!(judge(Until::Held, free, &mut on).is_none());
        }
    }

    /// In process, so the watch's wake on an in-place rewrite is what ends
    /// the wait (a hang here would be the test harness's timeout).
    #[test]
    fn a_ready_wait_ends_when_the_holder_announces_ready() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("locks");
        let dir = LockDir::create(&path)
            .unwrap()
            .announcing(ServeState::Starting);
        let mut guard = acquire_or_reclaim(&dir, 8000).unwrap();
        let waiter = std::thread::spawn(move || wait_for(&path, 8000, Until::Ready, None));
        // Whether the waiter saw starting first or not, it ends met.
        guard.set_state(ServeState::Ready).unwrap();
        let outcome = waiter.join().unwrap().unwrap();
        assert!(
            matches!(&outcome, WaitOutcome::Met(LockState::Held(Some(i))) if i.pid == std::process::id()),
            "{outcome:?}"
        );
    }

    #[test]
    fn a_missing_dir_is_free_and_times_out_for_held() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("not-yet");
        assert_eq!(
            wait_for(&path, 8000, Until::Free, Some(Duration::ZERO)).unwrap(),
            WaitOutcome::Met(LockState::Free)
        );
        assert_eq!(
            wait_for(&path, 8000, Until::Held, Some(Duration::from_millis(5))).unwrap(),
            WaitOutcome::TimedOut(LockState::Free)
        );
        assert!(!path.exists(), "a waiter creates nothing");
    }
}
