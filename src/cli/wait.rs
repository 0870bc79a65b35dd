//! `llmlb wait`: blocks until a port is ready, held or free
//! ([`llmlb::supervise::wait::wait_for`]), and says what it saw.

use std::time::Duration;

use llmlb::lock::{LockInfo, LockState};
use llmlb::supervise::wait::{wait_for, Until, WaitOutcome};

use super::{fail, LockDirChoice, EXIT_FAILURE};
use crate::supervise::server::signals::{self, Signals};
use crate::supervise::server::stop_report::seconds;

/// `--for ready`: the holder it waited on went away before it was ready.
const EXIT_HOLDER_GONE: i32 = 3;

/// Runs `wait`: 0 when the state holds (one line on stdout), 1 at the
/// timeout (one line on stderr: what it last saw) or on an error, 3 when a
/// holder it waited on for `ready` went away first, 128 + the signal's
/// number when interrupted.
pub(crate) fn run(dir: &LockDirChoice, port: u16, until: Until, timeout: Option<Duration>) -> i32 {
    // One thread runs the signals, another the (blocking) wait: the wait's
    // sleep on the watch is not cancellable, and need not be, as nothing is
    // held while it sleeps and the process exits under it.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return fail(format!("cannot start the async runtime: {e}")),
    };
    runtime.block_on(async move {
        let mut signals = match Signals::install() {
            Ok(s) => s,
            Err(e) => return fail(format!("cannot install signal handlers: {e}")),
        };
        let (tx, rx) = tokio::sync::oneshot::channel();
        let path = dir.path.clone();
        let spawned = std::thread::Builder::new()
            .name("llmlb-wait".to_owned())
            .spawn(move || {
                let _ = tx.send(wait_for(&path, port, until, timeout));
            });
        if let Err(e) = spawned {
            return fail(format!("cannot start the waiting thread: {e}"));
        }
        tokio::select! {
            result = rx => match result {
                Ok(Ok(outcome)) => report(port, until, timeout, outcome),
                Ok(Err(e)) => fail(e),
                Err(_) => fail("the waiting thread ended without an answer"),
            },
            sig = signals.recv() => {
                eprintln!(
                    "Interrupted ({}) while waiting for port {port} to be {}",
                    signals::name(sig),
                    until.name()
                );
                signals::exit_code(sig)
            }
        }
    })
}

/// Prints the outcome's one line and returns the exit code.
fn report(port: u16, until: Until, timeout: Option<Duration>, outcome: WaitOutcome) -> i32 {
    match outcome {
        WaitOutcome::Met(state) => {
            println!("{}", met_line(port, until, &state));
            0
        }
        WaitOutcome::TimedOut(state) => {
            let after = timeout.map(seconds).unwrap_or_default();
            eprintln!(
                "Timed out after {after} waiting for port {port} to be {}: {}",
                until.name(),
                seen(&state)
            );
            EXIT_FAILURE
        }
        WaitOutcome::HolderGone { holder, now } => {
            let what = match &now {
                LockState::Free => "released it".to_owned(),
                LockState::Stale(_) => "exited without releasing it".to_owned(),
                LockState::Held(Some(info))
                    if info.pid == holder.pid && info.released_by.is_some() =>
                {
                    "released it (processes that inherited its lock still hold it)".to_owned()
                }
                LockState::Held(Some(info)) => format!(
                    "is gone; PID {} holds it now ({})",
                    info.pid,
                    info.serve_state().name()
                ),
                LockState::Held(None) => "is gone".to_owned(),
            };
            eprintln!(
                "Port {port} did not become ready: its holder PID {} ({}) {what}",
                holder.pid,
                holder.serve_state().name()
            );
            EXIT_HOLDER_GONE
        }
    }
}

/// The success line: `Port 8000 is ready (PID 1234)`, `Port 8000 is held
/// (PID 1234, starting)`, `Port 8000 is free`.
fn met_line(port: u16, until: Until, state: &LockState) -> String {
    match (until, state) {
        (Until::Ready, LockState::Held(Some(info))) => {
            format!("Port {port} is ready (PID {})", info.pid)
        }
        (_, LockState::Held(Some(info))) => format!(
            "Port {port} is held (PID {}, {})",
            info.pid,
            info.serve_state().name()
        ),
        (_, LockState::Held(None)) => format!("Port {port} is held (holder details unreadable)"),
        (_, LockState::Stale(Some(info))) => format!(
            "Port {port} is free (a stale lock file of PID {}, which exited without releasing it, is taken over by the next serve)",
            info.pid
        ),
        (_, LockState::Stale(None)) => format!(
            "Port {port} is free (a stale lock file is taken over by the next serve)"
        ),
        (_, LockState::Free) => format!("Port {port} is free"),
    }
}

/// What the timeout's line says it last saw: `held by PID 1234, starting
/// for 12.0s`, `nothing holds it`.
fn seen(state: &LockState) -> String {
    match state {
        LockState::Held(Some(info)) => format!(
            "held by PID {}, {} for {}",
            info.pid,
            info.serve_state().name(),
            in_state_for(info)
        ),
        LockState::Held(None) => "held (holder details unreadable)".to_owned(),
        LockState::Stale(Some(info)) => format!(
            "nothing holds it (a stale lock file of PID {}, which exited without releasing it)",
            info.pid
        ),
        LockState::Stale(None) | LockState::Free => "nothing holds it".to_owned(),
    }
}

/// How long the holder has been in its recorded state: since `state_since`,
/// or (a record without a state) since it took the port. `12.0s`, `3m05s`,
/// `2h07m`.
fn in_state_for(info: &LockInfo) -> String {
    let since = info.state_since.unwrap_or(info.started_at);
    let secs = (chrono::Utc::now() - since)
        .to_std()
        .unwrap_or_default()
        .as_secs_f64();
    let whole = secs as u64;
    if secs < 60.0 {
        format!("{secs:.1}s")
    } else if whole < 3600 {
        format!("{}m{:02}s", whole / 60, whole % 60)
    } else {
        format!("{}h{:02}m", whole / 3600, whole % 3600 / 60)
    }
}
