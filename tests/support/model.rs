//! Reference model of the per-port lock, and a runner that drives the real
//! library beside it, asserting after every step that both agree.
//!
//! Shared (by `#[path]`) between the proptest state-machine test and the
//! `protocol` fuzz target, so both check the same model. Depends only on the
//! library and std.

use std::collections::HashMap;
use std::path::Path;

use llmlb::lock::{Acquired, LockDir, LockError, LockInfo, LockState, PortLock, Reclaimed, Stale};

/// Actors are separate open files, as separate processes would have.
pub const ACTORS: usize = 3;
/// Ports under test (any distinct non-zero values).
pub const PORTS: [u16; 2] = [41001, 41002];

/// One step of a scenario. Indices are taken modulo `ACTORS` / `PORTS.len()`.
#[derive(Debug, Clone)]
pub enum Op {
    /// The actor tries to take the port (`try_acquire`).
    Acquire { actor: usize, port: usize },
    /// The actor releases what it holds (drops a stale handle untouched).
    Release { actor: usize, port: usize },
    /// The actor dies holding: its descriptor closes, nothing is cleaned up.
    Crash { actor: usize, port: usize },
    /// The actor turns its stale handle into a held lock.
    Reclaim { actor: usize, port: usize },
    /// A hostile or buggy writer overwrites the lock file (creating it if
    /// missing) with `bytes`; empty bytes leave an empty file.
    Corrupt { port: usize, bytes: Vec<u8> },
    /// Observe the port.
    Probe { port: usize },
}

/// What the model believes about one port.
#[derive(Debug, Clone, PartialEq)]
enum Model {
    Free,
    /// `actor` holds it; the file contains `content` (its info, unless a
    /// hostile writer overwrote it).
    Held {
        actor: usize,
        content: Vec<u8>,
    },
    /// `actor` holds the kernel lock of a crashed holder's file (not reclaimed
    /// yet); `prev` is what it read then, `content` what the file has now.
    StaleLocked {
        actor: usize,
        prev: Option<LockInfo>,
        content: Vec<u8>,
    },
    /// Nobody holds it; the file has content (`prev` if readable).
    Stale {
        prev: Option<LockInfo>,
    },
}

/// What one actor holds on one port in the real system.
enum Handle {
    Held(PortLock<llmlb::lock::Held>),
    Reclaimed(PortLock<Reclaimed>),
    Stale(PortLock<Stale>),
}

/// The model and the real system side by side.
pub struct Harness {
    dir: LockDir,
    model: Vec<Model>,
    handles: HashMap<(usize, usize), Handle>,
}

/// What a reader of the file gets: the info if the content parses for the port.
fn read_content(content: &[u8], port: u16) -> Option<LockInfo> {
    LockInfo::parse_for_port(content, port)
}

fn expected_holder_read(m: &Model, port: u16) -> Option<LockInfo> {
    match m {
        Model::Held { content, .. } | Model::StaleLocked { content, .. } => {
            read_content(content, port)
        }
        _ => None,
    }
}

/// The release rule: the file is removed only if it records the releasing
/// process (its first JSON value has `"pid": <our pid>`).
fn records_us(content: &[u8]) -> bool {
    #[derive(serde::Deserialize)]
    struct PidOnly {
        pid: u32,
    }
    let mut values = serde_json::Deserializer::from_slice(content).into_iter::<PidOnly>();
    matches!(values.next(), Some(Ok(PidOnly { pid })) if pid == std::process::id())
}

/// A file left behind unlocked: empty means free, anything else is stale.
fn left_behind(content: Vec<u8>, port: u16) -> Model {
    if content.is_empty() {
        Model::Free
    } else {
        Model::Stale {
            prev: read_content(&content, port),
        }
    }
}

impl Harness {
    /// A harness over a fresh lock dir at `dir` (must be absolute, private).
    pub fn new(dir: &Path) -> Harness {
        Harness {
            dir: LockDir::create(dir).expect("private lock dir"),
            model: vec![Model::Free; PORTS.len()],
            handles: HashMap::new(),
        }
    }

    /// Whether `op` is allowed now (explicit preconditions of the state machine).
    pub fn precondition(&self, op: &Op) -> bool {
        match *op {
            Op::Acquire { actor, port } => !self
                .handles
                .contains_key(&(actor % ACTORS, port % PORTS.len())),
            Op::Release { actor, port } | Op::Crash { actor, port } => self
                .handles
                .contains_key(&(actor % ACTORS, port % PORTS.len())),
            Op::Reclaim { actor, port } => matches!(
                self.handles.get(&(actor % ACTORS, port % PORTS.len())),
                Some(Handle::Stale(_))
            ),
            Op::Corrupt { .. } | Op::Probe { .. } => true,
        }
    }

    /// Applies `op` to both sides and panics on any disagreement. Ops whose
    /// precondition fails are skipped.
    pub fn step(&mut self, op: &Op) {
        if !self.precondition(op) {
            return;
        }
        match op.clone() {
            Op::Acquire { actor, port } => self.acquire(actor % ACTORS, port % PORTS.len()),
            Op::Release { actor, port } => self.release(actor % ACTORS, port % PORTS.len()),
            Op::Crash { actor, port } => self.crash(actor % ACTORS, port % PORTS.len()),
            Op::Reclaim { actor, port } => self.reclaim(actor % ACTORS, port % PORTS.len()),
            Op::Corrupt { port, bytes } => self.corrupt(port % PORTS.len(), &bytes),
            Op::Probe { port } => self.check_probe(port % PORTS.len()),
        }
        self.check_invariants();
    }

    fn acquire(&mut self, actor: usize, p: usize) {
        let port = PORTS[p];
        let result = self.dir.port(port).unwrap().try_acquire();
        match (&self.model[p], result) {
            (Model::Free, Ok(Acquired::Fresh(held))) => {
                assert_eq!(held.info().pid, std::process::id());
                assert_eq!(held.info().port, port);
                self.model[p] = Model::Held {
                    actor,
                    content: held.info().to_bytes(),
                };
                self.handles.insert((actor, p), Handle::Held(held));
            }
            (Model::Stale { prev }, Ok(Acquired::Stale(stale))) => {
                assert_eq!(
                    stale.previous(),
                    prev.as_ref(),
                    "stale lock must report the crashed holder"
                );
                let content = std::fs::read(self.dir.lock_path(port)).expect("read stale file");
                self.model[p] = Model::StaleLocked {
                    actor,
                    prev: prev.clone(),
                    content,
                };
                self.handles.insert((actor, p), Handle::Stale(stale));
            }
            (m @ (Model::Held { .. } | Model::StaleLocked { .. }), Err(e)) => match &e.error {
                LockError::AlreadyRunning {
                    port: got, holder, ..
                } => {
                    assert_eq!(*got, port);
                    assert_eq!(
                        holder.as_deref().cloned(),
                        expected_holder_read(m, port),
                        "contender must read the holder's info"
                    );
                }
                other => panic!("expected AlreadyRunning, got {other}"),
            },
            (m, Ok(Acquired::Fresh(_))) => panic!("model {m:?} but acquire was fresh"),
            (m, Ok(Acquired::Stale(s))) => {
                panic!("model {m:?} but acquire found stale {:?}", s.previous())
            }
            (m, Err(e)) => panic!("model {m:?} but acquire failed: {}", e.error),
        }
    }

    fn release(&mut self, actor: usize, p: usize) {
        let port = PORTS[p];
        let handle = self.handles.remove(&(actor, p)).expect("precondition");
        let model = std::mem::replace(&mut self.model[p], Model::Free);
        self.model[p] = match (handle, model) {
            (Handle::Held(h), Model::Held { content, .. }) => {
                h.release().expect("release");
                released(content, port)
            }
            (Handle::Reclaimed(h), Model::Held { content, .. }) => {
                h.release().expect("release");
                released(content, port)
            }
            (Handle::Stale(s), Model::StaleLocked { content, .. }) => {
                drop(s); // leaves the stale file as it was
                left_behind(content, port)
            }
            (_, m) => panic!("handle/model mismatch on release: {m:?}"),
        };
    }

    fn crash(&mut self, actor: usize, p: usize) {
        let handle = self.handles.remove(&(actor, p)).expect("precondition");
        let model = std::mem::replace(&mut self.model[p], Model::Free);
        self.model[p] = match (handle, model) {
            (Handle::Held(h), Model::Held { content, .. }) => {
                h.abandon();
                left_behind(content, PORTS[p])
            }
            (Handle::Reclaimed(h), Model::Held { content, .. }) => {
                h.abandon();
                left_behind(content, PORTS[p])
            }
            (Handle::Stale(s), Model::StaleLocked { content, .. }) => {
                drop(s);
                left_behind(content, PORTS[p])
            }
            (_, m) => panic!("handle/model mismatch on crash: {m:?}"),
        };
    }

    fn reclaim(&mut self, actor: usize, p: usize) {
        let Some(Handle::Stale(stale)) = self.handles.remove(&(actor, p)) else {
            unreachable!("precondition")
        };
        let Model::StaleLocked { prev, .. } = self.model[p].clone() else {
            panic!("model {:?} but actor holds a stale handle", self.model[p])
        };
        let reclaimed = stale.reclaim().expect("reclaim");
        assert_eq!(
            reclaimed.previous(),
            prev.as_ref(),
            "reclaim reports the crashed holder"
        );
        assert_eq!(reclaimed.info().pid, std::process::id());
        self.model[p] = Model::Held {
            actor,
            content: reclaimed.info().to_bytes(),
        };
        self.handles
            .insert((actor, p), Handle::Reclaimed(reclaimed));
    }

    fn corrupt(&mut self, p: usize, bytes: &[u8]) {
        let path = self.dir.lock_path(PORTS[p]);
        std::fs::write(&path, bytes).expect("corrupt write");
        let content = bytes.to_vec();
        let model = std::mem::replace(&mut self.model[p], Model::Free);
        self.model[p] = match model {
            Model::Free | Model::Stale { .. } => left_behind(content, PORTS[p]),
            Model::Held { actor, .. } => Model::Held { actor, content },
            Model::StaleLocked { actor, prev, .. } => Model::StaleLocked {
                actor,
                prev,
                content,
            },
        };
    }

    fn check_probe(&self, p: usize) {
        let got = self.dir.probe(PORTS[p]).expect("probe");
        let want = match &self.model[p] {
            Model::Free => LockState::Free,
            m @ (Model::Held { .. } | Model::StaleLocked { .. }) => {
                LockState::Held(expected_holder_read(m, PORTS[p]))
            }
            Model::Stale { prev } => LockState::Stale(prev.clone()),
        };
        assert_eq!(
            got, want,
            "probe of port {} disagrees with the model",
            PORTS[p]
        );
    }

    /// At most one holder per port, and it is the one the model names.
    pub fn check_invariants(&self) {
        for (p, port) in PORTS.iter().enumerate() {
            let holders: Vec<usize> = (0..ACTORS)
                .filter(|a| self.handles.contains_key(&(*a, p)))
                .collect();
            assert!(holders.len() <= 1, "port {} has holders {holders:?}", port);
            let model_holder = match &self.model[p] {
                Model::Held { actor, .. } | Model::StaleLocked { actor, .. } => Some(*actor),
                _ => None,
            };
            assert_eq!(
                holders.first().copied(),
                model_holder,
                "holder of port {}",
                port
            );
        }
    }

    /// Final check: probes agree everywhere; then everything is released and
    /// every port is acquirable again.
    pub fn finish(mut self) {
        for p in 0..PORTS.len() {
            self.check_probe(p);
        }
        let keys: Vec<_> = self.handles.keys().copied().collect();
        for (actor, p) in keys {
            self.release(actor, p);
        }
        for &port in &PORTS {
            let guard = llmlb::lock::acquire_or_reclaim(&self.dir, port)
                .expect("port must be acquirable at the end");
            guard.release().expect("final release");
        }
    }
}

/// After a holder's release: removed if the file records us, else left behind.
fn released(content: Vec<u8>, port: u16) -> Model {
    if records_us(&content) {
        Model::Free
    } else {
        left_behind(content, port)
    }
}
