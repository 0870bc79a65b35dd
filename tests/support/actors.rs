//! Actors as real processes: each is this test binary re-invoked in actor
//! mode (`LLMLB_MODEL_ACTOR_DIR` set, running only the `actor_process` test),
//! holding its own locks under its own PID, driven over pipes with one
//! command line in and one reply line out.
//!
//! Commands (port is a number): `acquire P`, `wait P` (acquire, waiting up
//! to [`WAIT`] for a release), `release P`, `reclaim P`, `probe P`. Replies: `fresh PID`, `stale PID|-`, `running PID|-`,
//! `reclaimed PID|- PID`, `released`, `free`, `held PID|-`, `error MESSAGE`.
//! A crash is a SIGKILL from the driver (nothing in the actor runs), after
//! which a new actor process takes the slot.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::time::Duration;

use llmlb::lock::{Acquired, Held, LockDir, LockError, LockState, PortLock, Reclaimed, Stale};

use super::model::{Op, Probe, Seen, System, ACTORS, PORTS};

/// Set in an actor process: the lock dir it works in.
pub const ACTOR_ENV: &str = "LLMLB_MODEL_ACTOR_DIR";
/// The test that is the actor's `main` (see `tests/lock_model.rs`).
pub const ACTOR_TEST: &str = "actor_process";
/// How long a `wait` waits: long enough for the other ops of its batch to
/// free the port, short enough to keep a case quick. The model accepts
/// either outcome, so this is no timing assertion.
pub const WAIT: Duration = Duration::from_millis(50);
/// Replies carry this prefix, so libtest's own output on stdout is skipped.
const PREFIX: &str = "actor: ";
/// Against hangs only: a healthy actor answers in microseconds.
const REPLY_TIMEOUT: Duration = Duration::from_secs(120);

/// One actor process and its pipes.
pub struct Actor {
    child: Child,
    stdin: ChildStdin,
    replies: Receiver<String>,
    pid: u32,
}

impl Actor {
    /// Starts an actor on the lock dir `dir` and checks it runs under the PID
    /// the OS gave the child.
    pub fn spawn(dir: &Path) -> Actor {
        let exe = std::env::current_exe().expect("test binary path");
        let mut child = Command::new(exe)
            .args([
                ACTOR_TEST,
                "--exact",
                "--nocapture",
                "--test-threads=1",
                "-q",
            ])
            .env(ACTOR_ENV, dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn actor process");
        let stdin = child.stdin.take().expect("piped stdin");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, replies) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(reply) = line.strip_prefix(PREFIX) {
                    if tx.send(reply.to_string()).is_err() {
                        break;
                    }
                }
            }
        });
        let pid = child.id();
        let mut actor = Actor {
            child,
            stdin,
            replies,
            pid,
        };
        let ready = actor.recv();
        assert_eq!(
            ready,
            format!("ready {pid}"),
            "actor must report the PID the OS gave it"
        );
        actor
    }

    /// The actor's real PID.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    fn send(&mut self, command: &str) {
        let sent = writeln!(self.stdin, "{command}").and_then(|()| self.stdin.flush());
        if let Err(e) = sent {
            panic!("actor {} gone before `{command}`: {e}", self.pid);
        }
    }

    fn recv(&mut self) -> String {
        match self.replies.recv_timeout(REPLY_TIMEOUT) {
            Ok(reply) => reply,
            Err(e) => panic!(
                "actor {} gave no reply ({e}); exit status {:?}",
                self.pid,
                self.child.try_wait()
            ),
        }
    }

    /// SIGKILL, then reap: when this returns the process is gone for good
    /// and the kernel has dropped its locks.
    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Actor {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `ACTORS` actor processes on one lock dir: the [`System`] of the model test.
pub struct Actors {
    dir: PathBuf,
    actors: Vec<Actor>,
}

impl Actors {
    /// Starts `ACTORS` actors on `dir` (which must exist).
    pub fn start(dir: &Path) -> Actors {
        Actors {
            dir: dir.to_path_buf(),
            actors: (0..ACTORS).map(|_| Actor::spawn(dir)).collect(),
        }
    }
}

fn command(op: &Op) -> Option<String> {
    let (verb, port) = match *op {
        Op::Acquire { port, .. } => ("acquire", port),
        Op::Wait { port, .. } => ("wait", port),
        Op::Release { port, .. } => ("release", port),
        Op::Reclaim { port, .. } => ("reclaim", port),
        Op::Probe { port, .. } => ("probe", port),
        Op::Crash { .. } | Op::Corrupt { .. } => return None,
    };
    Some(format!("{verb} {}", PORTS[port]))
}

fn pid_word(word: Option<&str>) -> Result<Option<u32>, ()> {
    match word {
        Some("-") => Ok(None),
        Some(n) => n.parse().map(Some).map_err(|_| ()),
        None => Err(()),
    }
}

/// Reads a reply line back into what the model compares.
fn parse_reply(op: &Op, reply: &str) -> Seen {
    let mut words = reply.split(' ');
    let parsed = match (op, words.next()) {
        (_, Some("error")) => Err(()),
        (Op::Acquire { .. } | Op::Wait { .. }, Some("fresh")) => {
            pid_word(words.next()).and_then(|pid| pid.map(|pid| Seen::Fresh { pid }).ok_or(()))
        }
        (Op::Acquire { .. } | Op::Wait { .. }, Some("stale")) => {
            pid_word(words.next()).map(|prev| Seen::Stale { prev })
        }
        (Op::Acquire { .. } | Op::Wait { .. }, Some("running")) => {
            pid_word(words.next()).map(|holder| Seen::Running { holder })
        }
        (Op::Release { .. }, Some("released")) => Ok(Seen::Released),
        (Op::Reclaim { .. }, Some("reclaimed")) => {
            let prev = pid_word(words.next());
            let pid = pid_word(words.next());
            match (prev, pid) {
                (Ok(prev), Ok(Some(pid))) => Ok(Seen::Reclaimed { prev, pid }),
                _ => Err(()),
            }
        }
        (Op::Probe { .. }, Some("free")) => Ok(Seen::Probed(Probe::Free)),
        (Op::Probe { .. }, Some("held")) => {
            pid_word(words.next()).map(|pid| Seen::Probed(Probe::Held(pid)))
        }
        (Op::Probe { .. }, Some("stale")) => {
            pid_word(words.next()).map(|pid| Seen::Probed(Probe::Stale(pid)))
        }
        _ => Err(()),
    };
    parsed.unwrap_or_else(|()| Seen::Failed(reply.to_string()))
}

impl System for Actors {
    /// Sends every command first, then kills the crashing actors while the
    /// others work, then collects the replies: the ops really overlap.
    fn run(&mut self, ops: &[Op]) -> Vec<Seen> {
        for op in ops {
            if let (Some(cmd), Some(actor)) = (command(op), op.actor()) {
                self.actors[actor].send(&cmd);
            }
        }
        for op in ops {
            if let Op::Crash { actor } = *op {
                self.actors[actor].kill();
            }
        }
        let seen = ops
            .iter()
            .map(|op| match *op {
                Op::Crash { .. } => Seen::Crashed,
                _ => {
                    let actor = op.actor().expect("actor op");
                    let reply = self.actors[actor].recv();
                    parse_reply(op, &reply)
                }
            })
            .collect();
        for op in ops {
            if let Op::Crash { actor } = *op {
                self.actors[actor] = Actor::spawn(&self.dir);
            }
        }
        seen
    }

    fn pid(&self, actor: usize) -> u32 {
        self.actors[actor].pid()
    }

    /// The test process itself observes: it holds no lock and is none of the
    /// actors.
    fn probe(&mut self, port: u16) -> Probe {
        let state = LockDir::create(&self.dir)
            .and_then(|dir| dir.probe(port))
            .unwrap_or_else(|e| panic!("probe of port {port} failed: {e}"));
        probe_of(state)
    }
}

fn probe_of(state: LockState) -> Probe {
    match state {
        LockState::Free => Probe::Free,
        LockState::Held(info) => Probe::Held(info.map(|i| i.pid)),
        LockState::Stale(info) => Probe::Stale(info.map(|i| i.pid)),
    }
}

/// What an actor holds on one port.
enum Handle {
    Held(PortLock<Held>),
    Reclaimed(PortLock<Reclaimed>),
    Stale(PortLock<Stale>),
}

fn pid_text(pid: Option<u32>) -> String {
    pid.map_or_else(|| "-".to_string(), |pid| pid.to_string())
}

/// The actor process's main loop: answers commands on stdin until EOF.
pub fn actor_main(dir: &Path) {
    let dir = LockDir::create(dir).expect("actor: lock dir");
    let mut handles: HashMap<u16, Handle> = HashMap::new();
    println!("{PREFIX}ready {}", std::process::id());
    for line in std::io::stdin().lock().lines() {
        let line = line.expect("actor: read command");
        let Some((verb, port)) = line.split_once(' ') else {
            println!("{PREFIX}error bad command {line:?}");
            continue;
        };
        let Ok(port) = port.parse::<u16>() else {
            println!("{PREFIX}error bad port {line:?}");
            continue;
        };
        let reply = match verb {
            "acquire" => acquire(&dir, port, Duration::ZERO, &mut handles),
            "wait" => acquire(&dir, port, WAIT, &mut handles),
            "release" => match handles.remove(&port) {
                Some(Handle::Held(h)) => released(h.release().map(drop).map_err(|e| e.error)),
                Some(Handle::Reclaimed(h)) => released(h.release().map(drop).map_err(|e| e.error)),
                Some(Handle::Stale(s)) => {
                    drop(s); // closes: the stale file stays as it was
                    "released".to_string()
                }
                None => "error nothing held".to_string(),
            },
            "reclaim" => match handles.remove(&port) {
                Some(Handle::Stale(s)) => match s.reclaim() {
                    Ok(r) => {
                        let reply = format!(
                            "reclaimed {} {}",
                            pid_text(r.previous().map(|i| i.pid)),
                            r.info().pid
                        );
                        handles.insert(port, Handle::Reclaimed(r));
                        reply
                    }
                    Err(e) => format!("error {}", e.error),
                },
                Some(other) => {
                    handles.insert(port, other);
                    "error not stale".to_string()
                }
                None => "error nothing held".to_string(),
            },
            "probe" => match dir.probe(port) {
                Ok(LockState::Free) => "free".to_string(),
                Ok(LockState::Held(info)) => format!("held {}", pid_text(info.map(|i| i.pid))),
                Ok(LockState::Stale(info)) => format!("stale {}", pid_text(info.map(|i| i.pid))),
                Err(e) => format!("error {e}"),
            },
            _ => format!("error bad command {line:?}"),
        };
        println!("{PREFIX}{reply}");
    }
}

fn released(result: Result<(), LockError>) -> String {
    match result {
        Ok(()) => "released".to_string(),
        Err(e) => format!("error {e}"),
    }
}

fn acquire(dir: &LockDir, port: u16, wait: Duration, handles: &mut HashMap<u16, Handle>) -> String {
    if handles.contains_key(&port) {
        return "error already holds a handle".to_string();
    }
    let free = match dir.port(port) {
        Ok(free) => free,
        Err(e) => return format!("error {e}"),
    };
    let tried = if wait.is_zero() {
        free.try_acquire()
    } else {
        free.acquire_timeout(wait)
    };
    match tried {
        Ok(Acquired::Fresh(h)) => {
            let reply = format!("fresh {}", h.info().pid);
            handles.insert(port, Handle::Held(h));
            reply
        }
        Ok(Acquired::Stale(s)) => {
            let reply = format!("stale {}", pid_text(s.previous().map(|i| i.pid)));
            handles.insert(port, Handle::Stale(s));
            reply
        }
        Err(e) => match e.error {
            LockError::AlreadyRunning { holder, .. } => {
                format!("running {}", pid_text(holder.map(|h| h.pid)))
            }
            other => format!("error {other}"),
        },
    }
}
