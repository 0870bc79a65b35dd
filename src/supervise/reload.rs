//! A running server replacing itself (`llmlb reload`, SIGUSR2): nginx's
//! binary upgrade on top of the [`handover`](super::handover).
//!
//! On request the server starts its successor as its own child: the
//! command line it was started with ([`Relaunch`]), its executable found
//! again by the path it was started by (so a new binary on disk is picked
//! up: never `/proc/self/exe`, which names the old, perhaps deleted, file),
//! with `--replace` added, in the same working directory and environment,
//! inheriting stdout and stderr (its log goes where this server's goes).
//! As a child it stays in the service manager's cgroup; it gets no
//! parent-death signal and is not in any command's process group, so it
//! outlives this server, which drains and exits once the successor has
//! taken the port over (the handover as `serve --replace` runs it).
//!
//! A successor that fails (exits before it takes over, or has not taken
//! over by the reload's deadline) changes nothing: at the deadline the
//! server bars it from committing, kills it (its command's process group
//! first), and waits until the port is its own again, so record, pidfile
//! and control socket are as they were. One reload or replace at a time.

use std::ffi::{OsStr, OsString};
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::lock::sys;
use crate::supervise::handover::ReloadAnswer;
use crate::supervise::notify::Supervisor;
use crate::supervise::succession::Handovers;

/// How long a reload waits for its successor unless told otherwise
/// (`llmlb reload -t`, and always for SIGUSR2).
pub const DEFAULT_TIMEOUT: Duration = crate::supervise::handover::DEFAULT_RELOAD_TIMEOUT;

/// How often a reload looks at its successor.
const POLL: Duration = Duration::from_millis(20);

/// How long a reload waits for a step that follows at once: the drain
/// callback after an accepted drain, the port given back after the
/// successor was killed.
const SETTLE: Duration = Duration::from_secs(10);

/// How a server was started, to start its successor the same way.
#[derive(Debug, Clone)]
pub struct Relaunch {
    argv0: OsString,
    args: Vec<OsString>,
    cwd: PathBuf,
    port: u16,
}

impl Relaunch {
    /// This process's command line and working directory, read now (call
    /// it at start, before anything changes the working directory), for a
    /// server of `port`.
    ///
    /// # Errors
    /// The working directory cannot be read (it was removed).
    pub fn from_process(port: u16) -> io::Result<Relaunch> {
        let mut argv = std::env::args_os();
        let argv0 = argv.next().unwrap_or_else(|| OsString::from("llmlb"));
        Ok(Relaunch {
            argv0,
            args: argv.collect(),
            cwd: std::env::current_dir()?,
            port,
        })
    }

    /// A command line given explicitly (`argv0` as a shell would run it,
    /// then the arguments), started in `cwd`.
    pub fn new(argv0: OsString, args: Vec<OsString>, cwd: PathBuf, port: u16) -> Relaunch {
        Relaunch {
            argv0,
            args,
            cwd,
            port,
        }
    }

    /// The executable, found again now: `argv[0]` relative to the original
    /// working directory if it has a `/`, else looked up in `PATH`.
    ///
    /// # Errors
    /// `NotFound` naming what was looked for.
    pub fn program(&self) -> io::Result<PathBuf> {
        let argv0 = Path::new(&self.argv0);
        if argv0.components().count() > 1 || argv0.is_absolute() {
            return Ok(self.cwd.join(argv0));
        }
        let path = std::env::var_os("PATH").unwrap_or_default();
        std::env::split_paths(&path)
            .map(|dir| self.cwd.join(dir).join(argv0))
            .find(|candidate| is_executable(candidate))
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::NotFound,
                    format!(
                        "{} is not in PATH any more",
                        crate::lock::shell_quoted(argv0)
                    ),
                )
            })
    }

    /// The arguments with `--replace` added (before any `--`) if absent.
    pub fn args(&self) -> Vec<OsString> {
        with_replace(&self.args)
    }

    /// The successor's command: stdin from /dev/null, stdout and stderr
    /// inherited, `LLMLB_PORT` set to the port (a port taken from socket
    /// activation is in no argument, and the activation's variables are
    /// gone).
    fn command(&self) -> io::Result<Command> {
        let mut cmd = Command::new(self.program()?);
        cmd.args(self.args())
            .current_dir(&self.cwd)
            .env("LLMLB_PORT", self.port.to_string())
            .stdin(Stdio::null());
        Ok(cmd)
    }
}

#[cfg(unix)]
fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

#[cfg(not(unix))]
fn is_executable(path: &Path) -> bool {
    path.is_file()
}

fn with_replace(args: &[OsString]) -> Vec<OsString> {
    let end = args.iter().position(|a| a == "--").unwrap_or(args.len());
    if args[..end].iter().any(|a| a == "--replace") {
        return args.to_vec();
    }
    let mut out = args[..end].to_vec();
    out.push(OsString::from("--replace"));
    out.extend_from_slice(&args[end..]);
    out
}

/// What a server needs to reload: how it was started, and its service
/// manager (told `RELOADING=1` when a reload begins, `READY=1` when one
/// fails and the server is the main process again).
struct Reloads {
    relaunch: Relaunch,
    supervisor: &'static Supervisor,
    running: AtomicBool,
}

/// Clears a flag on drop.
struct Running<'a>(&'a AtomicBool);

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::SeqCst);
    }
}

impl Handovers {
    /// Lets this server reload (see the module doc), from its control
    /// socket's `reload` op and [`reload_in_background`](Self::reload_in_background).
    /// Set once; later calls change nothing.
    pub fn enable_reload(&self, relaunch: Relaunch, supervisor: &'static Supervisor) {
        let reloads = Reloads {
            relaunch,
            supervisor,
            running: AtomicBool::new(false),
        };
        let _ = self.reloads.set(Box::new(move |me, timeout| {
            me.reload_with(&reloads, timeout)
        }));
    }

    /// SIGUSR2: a reload on a thread of its own, bounded by
    /// [`DEFAULT_TIMEOUT`], its outcome logged.
    pub fn reload_in_background(self: &Arc<Self>) {
        let me = Arc::clone(self);
        let port = self.port;
        let spawned = std::thread::Builder::new()
            .name("llmlb-reload".to_owned())
            .spawn(move || match me.reload(DEFAULT_TIMEOUT) {
                ReloadAnswer::Reloaded(pid) => {
                    tracing::info!("reload: PID {pid} serves port {port} now")
                }
                ReloadAnswer::Busy(why) => {
                    tracing::warn!("reload of port {port} refused: busy ({why})")
                }
                ReloadAnswer::Failed(why) => {
                    tracing::warn!("reload of port {port} failed: {why}; this server serves on")
                }
            });
        if let Err(e) = spawned {
            tracing::warn!("cannot reload port {port}: no thread ({e})");
        }
    }

    /// [`Handovers::reload`] of a server that can reload: starts the
    /// successor and waits, up to `timeout`, for it to take the port over
    /// (this server then drains); see the module doc.
    fn reload_with(&self, reloads: &Reloads, timeout: Duration) -> ReloadAnswer {
        if reloads.running.swap(true, Ordering::SeqCst) {
            return ReloadAnswer::Busy("a reload is under way".to_owned());
        }
        let _running = Running(&reloads.running);
        match self.with_offer(|offer| offer.under_way()) {
            None => {
                return ReloadAnswer::Failed(
                    "this server offers no handover (exec mode without a passed socket?), so no successor can take its port over; restart it instead (llmlb serve --replace)"
                        .to_owned(),
                );
            }
            Some(Some(pid)) if pid == std::process::id() => {
                return ReloadAnswer::Busy(
                    "this server is itself still taking the port over".to_owned(),
                )
            }
            Some(Some(pid)) => {
                return ReloadAnswer::Busy(format!("PID {pid} is taking the port over"))
            }
            Some(None) => {}
        }
        if let Err(e) = reloads.supervisor.reloading() {
            tracing::warn!(
                "cannot tell the service manager (NOTIFY_SOCKET) that serve reloads: {e}"
            );
        }
        let answer = self.run_successor(
            &reloads.relaunch,
            reloads.supervisor.successor_watchdog_pid(),
            timeout,
        );
        if let ReloadAnswer::Failed(_) = answer {
            // The main process again, as it was.
            if let Err(e) = reloads.supervisor.ready() {
                tracing::warn!(
                    "cannot tell the service manager (NOTIFY_SOCKET) that serve is ready again: {e}"
                );
            }
        }
        answer
    }

    /// Starts the successor and waits for the outcome. `watchdog_pid`:
    /// this server's PID while the manager's watchdog is ours, given to the
    /// successor as `WATCHDOG_PID` (it inherited its predecessor's): the
    /// successor adopts the watchdog only from the process it takes the
    /// port from, generation after generation.
    fn run_successor(
        &self,
        relaunch: &Relaunch,
        watchdog_pid: Option<u32>,
        timeout: Duration,
    ) -> ReloadAnswer {
        let port = self.port;
        let started = relaunch.command().and_then(|mut cmd| {
            if let Some(pid) = watchdog_pid {
                cmd.env("WATCHDOG_PID", pid.to_string());
            }
            let program = cmd.get_program().to_owned();
            cmd.spawn().map(|child| (child, program))
        });
        let (mut child, program) = match started {
            Ok(started) => started,
            Err(e) => {
                return ReloadAnswer::Failed(format!(
                    "cannot start the successor ({} {}): {e}",
                    crate::lock::shell_quoted(Path::new(&relaunch.argv0)),
                    shown_args(&relaunch.args())
                ))
            }
        };
        let pid = child.id();
        crate::supervise::exec::spare_from_reaping(pid);
        tracing::info!(
            "reload: started PID {pid} ({} {}) to take port {port} over; serving until it is ready",
            crate::lock::shell_quoted(Path::new(&program)),
            shown_args(&relaunch.args())
        );
        let deadline = Instant::now() + timeout;
        let answer = loop {
            let drained = self.drained_to.load(Ordering::SeqCst);
            if drained != 0 {
                if drained != pid {
                    // A `serve --replace` took the port meanwhile: ours
                    // has nothing left to take.
                    end_successor(&mut child);
                }
                break ReloadAnswer::Reloaded(drained);
            }
            let exited = match child.try_wait() {
                Ok(status) => status.map(|s| s.to_string()),
                Err(e) => Some(format!("cannot be waited for: {e}")),
            };
            let late = Instant::now() >= deadline;
            if exited.is_none() && !late {
                std::thread::sleep(POLL);
                continue;
            }
            // One decision: either it was told it may drain us (the port
            // is its own), or it never will be.
            if !self.with_offer(|offer| offer.cancel(pid)).unwrap_or(true) {
                break self.drained_by(pid);
            }
            let why = match exited {
                Some(status) => format!(
                    "its successor PID {pid} exited ({status}) before it took the port over (its log is in this server's stderr)"
                ),
                None => {
                    end_successor(&mut child);
                    format!(
                        "its successor PID {pid} did not take the port over within {}s; stopped it (its log is in this server's stderr)",
                        timeout.as_secs_f64()
                    )
                }
            };
            self.wait_given_back(pid);
            let _ = self.with_offer(|offer| offer.uncancel());
            break ReloadAnswer::Failed(why);
        };
        crate::supervise::exec::spare_from_reaping(0);
        // Reaped, or (a successor serving on) left to run: its exit is
        // not ours to wait for.
        answer
    }

    /// `pid` was told it may drain us: wait (briefly) for the drain.
    fn drained_by(&self, pid: u32) -> ReloadAnswer {
        let until = Instant::now() + SETTLE;
        while Instant::now() < until {
            match self.drained_to.load(Ordering::SeqCst) {
                0 => std::thread::sleep(POLL),
                to => return ReloadAnswer::Reloaded(to),
            }
        }
        ReloadAnswer::Reloaded(pid)
    }

    /// Waits (bounded) until a handover to `pid` is over and the record is
    /// ours again.
    fn wait_given_back(&self, pid: u32) {
        let until = Instant::now() + SETTLE;
        while Instant::now() < until {
            let under_way = self.with_offer(|offer| offer.under_way()).flatten();
            let handed_on = self.lock.with(|g| g.is_handed_on()).unwrap_or(false);
            if under_way != Some(pid) && !handed_on {
                return;
            }
            std::thread::sleep(POLL);
        }
        tracing::warn!("PID {pid} has not given port {} back yet", self.port);
    }
}

/// Kills a successor and its command's process group (exec mode), then
/// reaps it. SIGKILL, not SIGTERM: one that has just committed would stop
/// as the port's holder and release a lock we share; killed, it writes
/// nothing, and its command dies with its group.
fn end_successor(child: &mut Child) {
    for pid in sys::child_pids(child.id()) {
        // The successor is alive and has not reaped `pid` (it is listed):
        // the group's number cannot have been reused.
        if sys::leads_group(pid) {
            let _ = sys::signal_group(pid, sys::Signal::Kill);
        }
    }
    let _ = child.kill();
    let _ = child.wait();
}

fn shown_args(args: &[OsString]) -> String {
    args.iter()
        .map(|a| crate::lock::shell_quoted(Path::new(OsStr::new(a))).to_string())
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(args: &[&str]) -> Vec<OsString> {
        args.iter().map(OsString::from).collect()
    }

    #[test]
    fn replace_is_added_once_and_before_the_command() {
        assert_eq!(
            with_replace(&os(&["serve", "-p", "8000"])),
            os(&["serve", "-p", "8000", "--replace"])
        );
        assert_eq!(
            with_replace(&os(&["serve", "--", "python3", "--replace"])),
            os(&["serve", "--replace", "--", "python3", "--replace"])
        );
        assert_eq!(
            with_replace(&os(&["serve", "--replace", "--", "x"])),
            os(&["serve", "--replace", "--", "x"])
        );
    }

    #[test]
    fn a_path_is_taken_from_the_original_directory_and_a_name_from_path() {
        let cwd = PathBuf::from("/srv/app");
        let relative = Relaunch::new("bin/llmlb".into(), Vec::new(), cwd.clone(), 1);
        assert_eq!(relative.program().unwrap(), cwd.join("bin/llmlb"));
        let absolute = Relaunch::new("/opt/llmlb".into(), Vec::new(), cwd.clone(), 1);
        assert_eq!(absolute.program().unwrap(), PathBuf::from("/opt/llmlb"));
        let missing = Relaunch::new("no-such-llmlb-anywhere".into(), Vec::new(), cwd, 1);
        assert_eq!(
            missing.program().unwrap_err().kind(),
            io::ErrorKind::NotFound
        );
    }
}
