//! Fuzz entry `protocol`: arbitrary sequences of acquire / release / crash /
//! reclaim / corrupt / probe, by several actors on several ports in a fresh
//! temp dir, checked step by step against the same reference model as the
//! proptest test (`tests/support/model.rs`). Shared by the libFuzzer target
//! and the stable corpus replay (`tests/fuzz_replay.rs`).
//!
//! Here the actors are open files of this one process (a fuzzer must not
//! spawn processes per input), so they share a PID: the model is told so and
//! predicts accordingly. The PID side of the release rule is covered by
//! `tests/lock_model.rs`, whose actors are real processes.
//!
//! Byte format (so corpus files can be written by hand): one byte per op,
//! `kind = b % 6` (0 acquire, 1 release, 2 crash, 3 reclaim, 4 corrupt,
//! 5 probe), actor `= (b / 6) % 3`, port `= (b / 18) % 2` (a crash ends every
//! lock of the actor, whatever the port). A corrupt op then reads a selector
//! byte (`% 5`: 0 raw bytes, 1 valid info for another port, 2 valid info for
//! this port naming PID 1, 3 valid info naming this process, 4 a truncated
//! `{"pid":`) and, for raw bytes, a length byte and that many bytes (as many
//! as remain).

#[path = "../../tests/support/model.rs"]
#[allow(dead_code)]
mod model;

use std::collections::HashMap;

use llmlb::lock::{Acquired, Held, LockDir, LockError, LockState, PortLock, Reclaimed, Stale};
use model::{info_bytes, Checker, Content, Op, Probe, Seen, System, PORTS};

/// Longest scenario run; longer inputs are cut (keeps each run fast).
const MAX_OPS: usize = 96;

/// Decodes `data` into steps of one op each (see the module docs).
pub fn decode(data: &[u8]) -> Vec<Op> {
    let mut ops = Vec::new();
    let mut rest = data;
    while let Some((&b, tail)) = rest.split_first() {
        rest = tail;
        if ops.len() == MAX_OPS {
            break;
        }
        let b = usize::from(b);
        let (actor, port) = ((b / 6) % 3, (b / 18) % 2);
        ops.push(match b % 6 {
            0 => Op::Acquire { actor, port },
            1 => Op::Release { actor, port },
            2 => Op::Crash { actor },
            3 => Op::Reclaim { actor, port },
            4 => {
                let (content, tail) = corrupt_content(rest, port);
                rest = tail;
                Op::Corrupt { port, content }
            }
            _ => Op::Probe { actor, port },
        });
    }
    ops
}

fn corrupt_content(data: &[u8], port: usize) -> (Content, &[u8]) {
    let Some((&selector, rest)) = data.split_first() else {
        return (Content::Raw(Vec::new()), data);
    };
    match selector % 5 {
        0 => {
            let Some((&len, rest)) = rest.split_first() else {
                return (Content::Raw(Vec::new()), rest);
            };
            let len = usize::from(len).min(rest.len());
            (Content::Raw(rest[..len].to_vec()), &rest[len..])
        }
        1 => (Content::InfoOtherPort(0), rest),
        2 => (Content::Raw(info_bytes(1, PORTS[port % PORTS.len()])), rest),
        3 => (Content::InfoOf(0), rest),
        _ => (Content::Truncated, rest),
    }
}

/// What one actor holds on one port.
enum Handle {
    Held(PortLock<Held>),
    Reclaimed(PortLock<Reclaimed>),
    Stale(PortLock<Stale>),
}

/// Actors as separate open files of this process.
struct InProcess {
    dir: LockDir,
    handles: HashMap<(usize, usize), Handle>,
}

fn pid_of(info: Option<&llmlb::lock::LockInfo>) -> Option<u32> {
    info.map(|i| i.pid)
}

fn probe_of(state: Result<LockState, LockError>) -> Probe {
    match state {
        Ok(LockState::Free) => Probe::Free,
        Ok(LockState::Held(info)) => Probe::Held(pid_of(info.as_ref())),
        Ok(LockState::Stale(info)) => Probe::Stale(pid_of(info.as_ref())),
        Err(e) => panic!("probe failed: {e}"),
    }
}

impl InProcess {
    fn one(&mut self, op: &Op) -> Seen {
        match *op {
            // Never generated here (one process, one op at a time: nothing
            // could free the port during a wait); the model shares the enum.
            Op::Acquire { actor, port } | Op::Wait { actor, port } => {
                let free = match self.dir.port(PORTS[port]) {
                    Ok(free) => free,
                    Err(e) => return Seen::Failed(e.to_string()),
                };
                match free.try_acquire() {
                    Ok(Acquired::Fresh(h)) => {
                        let pid = h.info().pid;
                        self.handles.insert((actor, port), Handle::Held(h));
                        Seen::Fresh { pid }
                    }
                    Ok(Acquired::Stale(s)) => {
                        let prev = pid_of(s.previous());
                        self.handles.insert((actor, port), Handle::Stale(s));
                        Seen::Stale { prev }
                    }
                    Err(e) => {
                        // What a contender is told shows the holder's file
                        // content (its host name): never a raw control
                        // character that could forge a line or colours.
                        let message = e.error.to_string();
                        assert!(
                            !message.chars().any(char::is_control),
                            "control characters from a lock file reach the message: {message:?}"
                        );
                        match e.error {
                            LockError::AlreadyRunning { holder, .. } => Seen::Running {
                                holder: holder.map(|h| h.pid),
                            },
                            _ => Seen::Failed(message),
                        }
                    }
                }
            }
            Op::Release { actor, port } => {
                let result = match self.handles.remove(&(actor, port)) {
                    Some(Handle::Held(h)) => h.release().map(drop).map_err(|e| e.error),
                    Some(Handle::Reclaimed(h)) => h.release().map(drop).map_err(|e| e.error),
                    Some(Handle::Stale(s)) => {
                        drop(s);
                        Ok(())
                    }
                    None => return Seen::Failed("nothing held".into()),
                };
                match result {
                    Ok(()) => Seen::Released,
                    Err(e) => Seen::Failed(e.to_string()),
                }
            }
            Op::Reclaim { actor, port } => match self.handles.remove(&(actor, port)) {
                Some(Handle::Stale(s)) => match s.reclaim() {
                    Ok(r) => {
                        let seen = Seen::Reclaimed {
                            prev: pid_of(r.previous()),
                            pid: r.info().pid,
                        };
                        self.handles.insert((actor, port), Handle::Reclaimed(r));
                        seen
                    }
                    Err(e) => Seen::Failed(e.error.to_string()),
                },
                _ => Seen::Failed("no stale handle".into()),
            },
            Op::Crash { actor } => {
                // As if killed: every descriptor closes, nothing is cleaned up.
                for p in 0..PORTS.len() {
                    match self.handles.remove(&(actor, p)) {
                        Some(Handle::Held(h)) => h.abandon(),
                        Some(Handle::Reclaimed(h)) => h.abandon(),
                        Some(Handle::Stale(s)) => drop(s),
                        None => {}
                    }
                }
                Seen::Crashed
            }
            Op::Probe { port, .. } => Seen::Probed(probe_of(self.dir.probe(PORTS[port]))),
            Op::Corrupt { .. } => unreachable!("the checker writes corruptions"),
        }
    }
}

impl System for InProcess {
    fn run(&mut self, ops: &[Op]) -> Vec<Seen> {
        ops.iter().map(|op| self.one(op)).collect()
    }

    fn pid(&self, _actor: usize) -> u32 {
        std::process::id()
    }

    fn probe(&mut self, port: u16) -> Probe {
        probe_of(self.dir.probe(port))
    }
}

/// Runs the scenario encoded in `data` against the model; panics on any
/// disagreement with the model or with what is on disk.
pub fn run(data: &[u8]) {
    let ops = decode(data);
    let tmp = tempfile::tempdir().expect("temp dir");
    let path = tmp.path().join("locks");
    let mut system = InProcess {
        dir: LockDir::create(&path).expect("private lock dir"),
        handles: HashMap::new(),
    };
    let mut checker = Checker::new(&path, &system);
    for op in &ops {
        checker.step(&mut system, std::slice::from_ref(op));
    }
    checker.finish(&mut system);
}
