//! `llmlb stop` as it prints its progress (the command, and `serve
//! --replace` stopping a holder that offers no handover): the lines of
//! [`crate::supervise::stop_server`]'s events and outcome.

use std::time::Duration;

use crate::supervise::listener::words::{elsewhere_hint, who_listens};
use crate::supervise::{stop_server, StopEvent, StopOptions, StopOutcome};

use super::report::fail;
use super::Where;

/// `5s`, `1.5s`: a timeout as the user gave it.
pub(crate) fn seconds(d: Duration) -> String {
    if d.subsec_nanos() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}s", d.as_secs_f64())
    }
}

/// Nobody in this lock dir holds `port`: 0 with "No server running" if
/// nobody listens on it either; 1 naming who listens if someone does (a
/// server that runs is never reported as not running; it may be an llmlb of
/// another user or lock dir, which this one cannot see or stop).
fn not_held(dir: &Where, port: u16) -> i32 {
    match who_listens(port) {
        None => {
            println!("No server running on port {port}");
            0
        }
        Some(who) => fail(format!(
            "no server in lock dir {} holds port {port}, but {who} listens on it; nothing was signalled: {}",
            crate::lock::shell_quoted(&dir.path),
            elsewhere_hint(port)
        )),
    }
}

/// Runs `stop`; 0 when the port is no longer held by the server that was
/// there, nor by one that held it before (a pending replace's predecessor,
/// which the port goes back to: stopped too), including "nothing was
/// running" (held by nobody, and nobody listens on it); and with a zero timeout also
/// when the server was signalled and has not stopped yet (as `pg_ctl stop
/// --no-wait` and `systemctl stop --no-block` succeed once the request is
/// made); 1 otherwise.
pub(crate) fn stop(dir: &Where, port: u16, timeout: Duration, force: bool) -> i32 {
    let options = StopOptions { timeout, force };
    let outcome = stop_server(&dir.path, port, &options, |event| match event {
        StopEvent::Stopping { port, info } => {
            println!("Stopping server on port {port} (PID: {})...", info.pid);
        }
        StopEvent::WentBack { info, stopped, .. } => {
            if info.took_over_from == Some(stopped) {
                println!(
                    "The port went on to PID {}, which took it over from PID {stopped}; stopping it too",
                    info.pid
                );
            } else {
                println!(
                    "The port went back to PID {}, which held it before this stop; stopping it too",
                    info.pid
                );
            }
        }
        StopEvent::Killing {
            port,
            info,
            timeout,
            group,
            holder_exited,
            ..
        } => {
            let pid = info.pid;
            let line = match (holder_exited, group) {
                // No SIGKILL on Windows: its command's job ends with it.
                (false, _) if cfg!(windows) => format!("did not stop within {}; terminating it and its command", seconds(timeout)),
                (false, Some(pgid)) => format!("did not stop within {}; sending SIGKILL to it and process group {pgid}", seconds(timeout)),
                (false, None) => format!("did not stop within {}; sending SIGKILL to it", seconds(timeout)),
                (true, Some(pgid)) => format!("exited, but its command's process group {pgid} still holds the lock; sending SIGKILL to the group"),
                (true, None) => "exited, but a process that inherited its lock still holds it".to_owned(),
            };
            eprintln!("Warning: server on port {port} (PID: {pid}) {line}");
        }
    });
    match outcome {
        Ok(StopOutcome::NotRunning) => not_held(dir, port),
        Ok(StopOutcome::StaleRemoved { previous }) => {
            let who = match previous {
                Some(info) => format!(
                    "previous holder PID {} exited without releasing it",
                    info.pid
                ),
                None => "its content was unreadable".to_owned(),
            };
            eprintln!(
                "Warning: lock file for port {port} was stale ({who}); removed it without signalling anything"
            );
            not_held(dir, port)
        }
        Ok(StopOutcome::Stopped { .. }) => {
            println!("Server stopped");
            0
        }
        Ok(StopOutcome::Killed { .. }) => {
            println!("Server stopped (killed)");
            0
        }
        Ok(StopOutcome::Requested { info }) => {
            // Windows has no SIGTERM: the holder's stop channel was set.
            let how = if cfg!(windows) {
                "asked to stop"
            } else {
                "signalled"
            };
            println!(
                "Server on port {port} (PID: {}) {how}, not yet stopped",
                info.pid
            );
            0
        }
        Err(e) => fail(e),
    }
}
