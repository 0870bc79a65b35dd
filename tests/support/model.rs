//! Reference model of the per-port lock, and a checker that compares what a
//! real system reports (and what is really on disk) with the model's
//! prediction after every step.
//!
//! Independent of the code under test on purpose: nothing here imports
//! `llmlb`. The model reads lock file bytes with its own small reader
//! (`serde_json::Value`), knows the file name from the documented protocol,
//! and names holders by the PIDs the *driver* reports for its actors (real
//! child processes in `tests/lock_model.rs`, open files of one process in the
//! `protocol` fuzz target). A driver implements [`System`].
//!
//! Shared (by `#[path]`) between the proptest state-machine test and the
//! `protocol` fuzz target (`fuzz/entry/protocol.rs`).

use std::path::{Path, PathBuf};

use serde_json::Value;

/// Actors: separate processes (or open files) that contend for the ports.
pub const ACTORS: usize = 3;
/// Ports under test (any distinct non-zero values).
pub const PORTS: [u16; 2] = [41001, 41002];

/// What a hostile or buggy writer puts into a lock file.
#[derive(Debug, Clone)]
pub enum Content {
    /// These bytes (empty leaves an empty file).
    Raw(Vec<u8>),
    /// Valid info for this port naming the actor's current PID.
    InfoOf(usize),
    /// Valid info naming the actor's current PID, but for the other port.
    InfoOtherPort(usize),
    /// A truncated `{"pid":`.
    Truncated,
}

/// One step of a scenario. Indices are taken modulo `ACTORS` / `PORTS.len()`.
#[derive(Debug, Clone)]
pub enum Op {
    /// The actor tries to take the port (`try_acquire`).
    Acquire { actor: usize, port: usize },
    /// The actor tries to take the port, waiting a short while for it to be
    /// released (`acquire_timeout`). The model treats it as an acquire at
    /// some point of its wait: it holds if the port was freed meanwhile (by
    /// another op of its batch), else it reports the holder.
    Wait { actor: usize, port: usize },
    /// The actor releases what it holds on the port (drops a stale handle
    /// untouched).
    Release { actor: usize, port: usize },
    /// The actor turns its stale handle into a held lock.
    Reclaim { actor: usize, port: usize },
    /// The actor dies without releasing anything (every port it holds); it is
    /// replaced by a new one (a new process where actors are processes).
    Crash { actor: usize },
    /// The actor observes the port.
    Probe { actor: usize, port: usize },
    /// A writer that ignores the lock overwrites the port's file (creating it
    /// if missing). Never part of a concurrent batch.
    Corrupt { port: usize, content: Content },
}

impl Op {
    /// The same op with indices reduced into range.
    fn normalized(&self) -> Op {
        let (a, p) = (|a: usize| a % ACTORS, |p: usize| p % PORTS.len());
        match self.clone() {
            Op::Acquire { actor, port } => Op::Acquire {
                actor: a(actor),
                port: p(port),
            },
            Op::Wait { actor, port } => Op::Wait {
                actor: a(actor),
                port: p(port),
            },
            Op::Release { actor, port } => Op::Release {
                actor: a(actor),
                port: p(port),
            },
            Op::Reclaim { actor, port } => Op::Reclaim {
                actor: a(actor),
                port: p(port),
            },
            Op::Crash { actor } => Op::Crash { actor: a(actor) },
            Op::Probe { actor, port } => Op::Probe {
                actor: a(actor),
                port: p(port),
            },
            Op::Corrupt { port, content } => Op::Corrupt {
                port: p(port),
                content,
            },
        }
    }

    /// The acting actor (`None` for a corruption).
    pub fn actor(&self) -> Option<usize> {
        match *self {
            Op::Acquire { actor, .. }
            | Op::Wait { actor, .. }
            | Op::Release { actor, .. }
            | Op::Reclaim { actor, .. }
            | Op::Crash { actor }
            | Op::Probe { actor, .. } => Some(actor),
            Op::Corrupt { .. } => None,
        }
    }
}

/// What an observer of a port reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Probe {
    /// No file, or an empty one nobody holds.
    Free,
    /// Someone holds the lock; the PID its file records, if readable.
    Held(Option<u32>),
    /// Nobody holds it but the file has content; the PID recorded, if readable.
    Stale(Option<u32>),
}

/// What the system reported for one op (PIDs as the system read them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seen {
    /// Acquired a free port; the info written records `pid`.
    Fresh { pid: u32 },
    /// Locked a dead holder's file; `prev` is the PID it recorded, if readable.
    Stale { prev: Option<u32> },
    /// Another holder has the port; `holder` is the PID its file records.
    Running { holder: Option<u32> },
    /// Took over a stale file: it recorded `prev`, now it records `pid`.
    Reclaimed { prev: Option<u32>, pid: u32 },
    /// Released (or dropped a stale handle).
    Released,
    /// Died.
    Crashed,
    /// What a probe saw.
    Probed(Probe),
    /// Anything else: an error message.
    Failed(String),
}

/// The real system under test, driven by the checker.
pub trait System {
    /// Runs `ops` (at most one per actor; no `Corrupt`) at once where the
    /// system can, and returns what each reported, in order. A crashed actor
    /// is replaced before this returns.
    fn run(&mut self, ops: &[Op]) -> Vec<Seen>;
    /// The actor's current PID (a new one after a crash where actors are
    /// processes).
    fn pid(&self, actor: usize) -> u32;
    /// Observes `port` from a process that holds nothing.
    fn probe(&mut self, port: u16) -> Probe;
}

/// The lock file name, as the protocol documents it.
pub fn lock_file(dir: &Path, port: u16) -> PathBuf {
    dir.join(format!("serve_{port}.lock"))
}

/// Lock file content in the documented format, written by hand.
pub fn info_bytes(pid: u32, port: u16) -> Vec<u8> {
    format!(r#"{{"pid":{pid},"started_at":"2026-01-30T12:00:00Z","port":{port}}}"#).into_bytes()
}

/// The first JSON value in `bytes`, as a reader that stops after one value
/// (trailing bytes ignored) sees it.
fn first_value(bytes: &[u8]) -> Option<Value> {
    serde_json::Deserializer::from_slice(bytes)
        .into_iter::<Value>()
        .next()?
        .ok()
}

fn pid_field(v: &Value) -> Option<u32> {
    u32::try_from(v.get("pid")?.as_u64()?).ok()
}

/// The release rule's reading: the PID the file's first JSON object records.
fn recorded_pid(bytes: &[u8]) -> Option<u32> {
    pid_field(&first_value(bytes)?)
}

/// A reader's reading: the PID of readable info for `port` (an object with a
/// `pid`, a `started_at` string and this `port`). Generated content never
/// reaches the finer corners of the info format (bad timestamps, mistyped
/// optional fields); the `lock_info` fuzz target covers those.
fn info_pid(bytes: &[u8], port: u16) -> Option<u32> {
    let v = first_value(bytes)?;
    let right_port = v.get("port")?.as_u64()? == u64::from(port);
    let stamped = v.get("started_at")?.is_string();
    if right_port && stamped {
        pid_field(&v)
    } else {
        None
    }
}

/// What the model believes the port's file contains.
#[derive(Clone, PartialEq)]
enum File {
    Absent,
    /// Written by the library for the holder with this PID.
    Info {
        pid: u32,
    },
    /// Written by someone else.
    Raw(Vec<u8>),
}

impl std::fmt::Debug for File {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            File::Absent => f.write_str("Absent"),
            File::Info { pid } => write!(f, "Info {{ pid: {pid} }}"),
            File::Raw(bytes) => write!(f, "Raw({:?})", String::from_utf8_lossy(bytes)),
        }
    }
}

/// Who holds the port's kernel lock.
#[derive(Debug, Clone, PartialEq)]
enum Lock {
    Free,
    /// `actor` holds it (acquired fresh or reclaimed).
    Held {
        actor: usize,
    },
    /// `actor` locked a dead holder's file and has not reclaimed it; `prev`
    /// is the PID the file recorded then.
    Stale {
        actor: usize,
        prev: Option<u32>,
    },
}

#[derive(Debug, Clone, PartialEq)]
struct PortModel {
    file: File,
    lock: Lock,
}

/// The reference model: `Free | Held(actor) | Stale(crashed pid)` per port,
/// spelled as (kernel lock holder, file content).
#[derive(Debug, Clone)]
struct Model {
    ports: Vec<PortModel>,
    pids: Vec<u32>,
}

impl Model {
    /// The PID a reader of the file gets, if the content is readable info.
    fn reader_pid(&self, p: usize) -> Option<u32> {
        match &self.ports[p].file {
            File::Absent => None,
            File::Info { pid } => Some(*pid),
            File::Raw(bytes) => info_pid(bytes, PORTS[p]),
        }
    }

    fn file_is_empty(&self, p: usize) -> bool {
        match &self.ports[p].file {
            File::Absent => true,
            File::Info { .. } => false,
            File::Raw(bytes) => bytes.is_empty(),
        }
    }

    /// The release rule: the holder removes the file only if it records it.
    fn records(&self, p: usize, pid: u32) -> bool {
        match &self.ports[p].file {
            File::Absent => false,
            File::Info { pid: recorded } => *recorded == pid,
            File::Raw(bytes) => recorded_pid(bytes) == Some(pid),
        }
    }

    fn holds(&self, actor: usize, p: usize) -> bool {
        matches!(self.ports[p].lock, Lock::Held { actor: a } | Lock::Stale { actor: a, .. } if a == actor)
    }

    /// Whether `op` is allowed now (the state machine's explicit preconditions).
    fn allowed(&self, op: &Op) -> bool {
        match *op {
            Op::Acquire { actor, port } | Op::Wait { actor, port } => !self.holds(actor, port),
            Op::Release { actor, port } => self.holds(actor, port),
            Op::Reclaim { actor, port } => {
                matches!(self.ports[port].lock, Lock::Stale { actor: a, .. } if a == actor)
            }
            Op::Crash { .. } | Op::Probe { .. } | Op::Corrupt { .. } => true,
        }
    }

    fn probe(&self, p: usize) -> Probe {
        match self.ports[p].lock {
            Lock::Held { .. } | Lock::Stale { .. } => Probe::Held(self.reader_pid(p)),
            Lock::Free if self.file_is_empty(p) => Probe::Free,
            Lock::Free => Probe::Stale(self.reader_pid(p)),
        }
    }

    /// Applies an allowed actor op and returns what the system must report.
    fn apply(&mut self, op: &Op) -> Seen {
        match *op {
            Op::Acquire { actor, port: p } | Op::Wait { actor, port: p } => {
                if self.ports[p].lock != Lock::Free {
                    return Seen::Running {
                        holder: self.reader_pid(p),
                    };
                }
                if self.file_is_empty(p) {
                    let pid = self.pids[actor];
                    self.ports[p] = PortModel {
                        file: File::Info { pid },
                        lock: Lock::Held { actor },
                    };
                    Seen::Fresh { pid }
                } else {
                    let prev = self.reader_pid(p);
                    self.ports[p].lock = Lock::Stale { actor, prev };
                    Seen::Stale { prev }
                }
            }
            Op::Release { actor, port: p } => {
                if matches!(self.ports[p].lock, Lock::Held { .. })
                    && self.records(p, self.pids[actor])
                {
                    self.ports[p].file = File::Absent;
                }
                self.ports[p].lock = Lock::Free;
                Seen::Released
            }
            Op::Reclaim { actor, port: p } => {
                let Lock::Stale { prev, .. } = self.ports[p].lock else {
                    unreachable!("precondition")
                };
                let pid = self.pids[actor];
                self.ports[p] = PortModel {
                    file: File::Info { pid },
                    lock: Lock::Held { actor },
                };
                Seen::Reclaimed { prev, pid }
            }
            Op::Crash { actor } => {
                // The kernel drops every lock of a dead process; its files stay.
                for port in &mut self.ports {
                    if matches!(port.lock, Lock::Held { actor: a } | Lock::Stale { actor: a, .. } if a == actor)
                    {
                        port.lock = Lock::Free;
                    }
                }
                Seen::Crashed
            }
            Op::Probe { port: p, .. } => Seen::Probed(self.probe(p)),
            Op::Corrupt { .. } => unreachable!("Checker::corrupt applies these"),
        }
    }

    /// Compares the model with what is really there: the file's bytes (read
    /// by hand) and an uninvolved observer's probe.
    fn check_reality(&self, real: &[Reality]) -> Result<(), String> {
        let files: Vec<Option<Vec<u8>>> = real.iter().map(|r| r.file.clone()).collect();
        self.check_files(&files)?;
        for (p, real) in real.iter().enumerate() {
            let want = self.probe(p);
            if real.probe != want {
                return Err(format!(
                    "port {}: an uninvolved probe sees {:?}, model expects {want:?} ({:?})",
                    PORTS[p], real.probe, self.ports[p]
                ));
            }
        }
        Ok(())
    }

    /// The file half of [`Model::check_reality`]: the bytes on disk, read by hand.
    fn check_files(&self, files: &[Option<Vec<u8>>]) -> Result<(), String> {
        for (p, file) in files.iter().enumerate() {
            let ok = match (&self.ports[p].file, file) {
                (File::Absent, None) => true,
                (File::Info { pid }, Some(bytes)) => info_pid(bytes, PORTS[p]) == Some(*pid),
                (File::Raw(want), Some(bytes)) => want == bytes,
                _ => false,
            };
            if !ok {
                return Err(format!(
                    "port {}: file on disk is {:?}, model expects {:?}",
                    PORTS[p],
                    file.as_deref().map(String::from_utf8_lossy),
                    self.ports[p].file
                ));
            }
        }
        Ok(())
    }
}

/// What is really there for one port after a step.
struct Reality {
    file: Option<Vec<u8>>,
    probe: Probe,
}

impl std::fmt::Debug for Reality {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let file = self.file.as_deref().map(String::from_utf8_lossy);
        write!(f, "{{ file: {file:?}, probe: {:?} }}", self.probe)
    }
}

/// Whether `got` is what the model predicted. In a concurrent batch, a loser
/// may read the winner's file between its lock and its write (empty or
/// partial): then the holder is unreadable, which is also correct.
fn agrees(want: &Seen, got: &Seen, concurrent: bool) -> bool {
    want == got
        || (concurrent
            && matches!(want, Seen::Running { .. })
            && *got == Seen::Running { holder: None })
}

/// Every order of `0..n` (n ≤ ACTORS, so at most 6).
fn orders(n: usize) -> Vec<Vec<usize>> {
    if n == 0 {
        return vec![Vec::new()];
    }
    let mut out = Vec::new();
    for rest in orders(n - 1) {
        for i in 0..=rest.len() {
            let mut order = rest.clone();
            order.insert(i, n - 1);
            out.push(order);
        }
    }
    out
}

/// Drives a [`System`] step by step beside the model and panics, with the
/// history so far, on any disagreement with the model or with reality.
pub struct Checker {
    dir: PathBuf,
    model: Model,
    history: Vec<String>,
}

impl Checker {
    /// A checker for a system whose lock dir is `dir` (empty at the start).
    pub fn new<S: System>(dir: &Path, system: &S) -> Checker {
        Checker {
            dir: dir.to_path_buf(),
            model: Model {
                ports: vec![
                    PortModel {
                        file: File::Absent,
                        lock: Lock::Free,
                    };
                    PORTS.len()
                ],
                pids: (0..ACTORS).map(|a| system.pid(a)).collect(),
            },
            history: Vec::new(),
        }
    }

    fn fail(&self, what: String) -> ! {
        panic!(
            "{what}\nsteps so far (latest last):\n  {}",
            self.history.join("\n  ")
        )
    }

    /// Whether the model allows `op` now (after normalizing its indices).
    pub fn allowed(&self, op: &Op) -> bool {
        self.model.allowed(&op.normalized())
    }

    /// Runs one step: a single op, or several actors' ops at once. Ops the
    /// model does not allow now, second ops of the same actor, and (in a
    /// batch) probes and corruptions are dropped.
    pub fn step<S: System>(&mut self, system: &mut S, batch: &[Op]) {
        let mut ops: Vec<Op> = Vec::new();
        for op in batch.iter().map(Op::normalized) {
            let single_only = matches!(op, Op::Probe { .. } | Op::Corrupt { .. });
            if !self.model.allowed(&op)
                || (batch.len() > 1 && single_only)
                || (op.actor().is_some() && ops.iter().any(|o| o.actor() == op.actor()))
            {
                continue;
            }
            ops.push(op);
        }
        if ops.is_empty() {
            return;
        }
        if let [Op::Corrupt { port, content }] = ops.as_slice() {
            self.corrupt(*port, content);
        } else {
            self.run(system, &ops);
        }
        // Replaced actors run under new PIDs from now on.
        for (actor, pid) in self.model.pids.iter_mut().enumerate() {
            *pid = system.pid(actor);
        }
    }

    fn corrupt(&mut self, p: usize, content: &Content) {
        let pids = &self.model.pids;
        let bytes = match content {
            Content::Raw(bytes) => bytes.clone(),
            Content::InfoOf(actor) => info_bytes(pids[actor % ACTORS], PORTS[p]),
            Content::InfoOtherPort(actor) => {
                info_bytes(pids[actor % ACTORS], PORTS[(p + 1) % PORTS.len()])
            }
            Content::Truncated => b"{\"pid\":".to_vec(),
        };
        self.history.push(format!(
            "port {}: overwritten with {:?}",
            PORTS[p],
            String::from_utf8_lossy(&bytes)
        ));
        let path = lock_file(&self.dir, PORTS[p]);
        if let Err(e) = std::fs::write(&path, &bytes) {
            self.fail(format!("cannot write {}: {e}", path.display()));
        }
        self.model.ports[p].file = File::Raw(bytes);
        let real: Vec<Option<Vec<u8>>> = PORTS.iter().map(|&port| self.read_file(port)).collect();
        if let Err(e) = self.model.check_files(&real) {
            self.fail(e);
        }
    }

    /// Runs `ops` on the system, then finds an order of them (a
    /// linearization) under which the model predicts every report and the
    /// state really left behind.
    fn run<S: System>(&mut self, system: &mut S, ops: &[Op]) {
        let pids_before = self.model.pids.clone();
        let seen = system.run(ops);
        let real = self.reality(system);
        let concurrent = ops.len() > 1;
        let mut tried = Vec::new();
        for order in orders(ops.len()) {
            let mut model = self.model.clone();
            let mut want = vec![Seen::Released; ops.len()];
            for &i in &order {
                want[i] = model.apply(&ops[i]);
            }
            let reports_agree = want
                .iter()
                .zip(&seen)
                .all(|(w, g)| agrees(w, g, concurrent));
            let verdict = if reports_agree {
                model.check_reality(&real)
            } else {
                Err("reports differ".to_string())
            };
            match verdict {
                Ok(()) => {
                    self.history
                        .push(describe(ops, &pids_before, &seen, concurrent));
                    self.model = model;
                    return;
                }
                Err(e) => tried.push(format!("order {order:?}: model predicts {want:?}: {e}")),
            }
        }
        self.history
            .push(describe(ops, &pids_before, &seen, concurrent));
        self.fail(format!(
            "no order of {ops:?} explains what the system reported ({seen:?}) and left behind ({real:?}):\n  {}",
            tried.join("\n  ")
        ))
    }

    fn read_file(&self, port: u16) -> Option<Vec<u8>> {
        let path = lock_file(&self.dir, port);
        match std::fs::read(&path) {
            Ok(bytes) => Some(bytes),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => self.fail(format!("cannot read {}: {e}", path.display())),
        }
    }

    fn reality<S: System>(&self, system: &mut S) -> Vec<Reality> {
        PORTS
            .iter()
            .map(|&port| Reality {
                file: self.read_file(port),
                probe: system.probe(port),
            })
            .collect()
    }

    /// Final check: every holder releases, then each port is taken (reclaimed
    /// if stale) and released by actor 0, which must leave no file behind.
    pub fn finish<S: System>(mut self, system: &mut S) {
        for (p, port) in PORTS.iter().enumerate() {
            for actor in 0..ACTORS {
                self.step(system, &[Op::Release { actor, port: p }]);
            }
            self.step(system, &[Op::Acquire { actor: 0, port: p }]);
            self.step(system, &[Op::Reclaim { actor: 0, port: p }]);
            self.step(system, &[Op::Release { actor: 0, port: p }]);
            if self.model.ports[p].file != File::Absent {
                self.fail(format!("port {port}: released, yet the model keeps a file"));
            }
        }
    }
}

fn describe(ops: &[Op], pids: &[u32], seen: &[Seen], concurrent: bool) -> String {
    let parts: Vec<String> = ops
        .iter()
        .zip(seen)
        .map(|(op, seen)| {
            let pid = op.actor().map_or(0, |a| pids[a]);
            format!("{op:?} (pid {pid}) -> {seen:?}")
        })
        .collect();
    if concurrent {
        format!("at once: {}", parts.join(" | "))
    } else {
        parts.join("")
    }
}
