//! `llmlb stop`: prints the progress of [`llmlb::supervise::stop_server`].

use std::time::Duration;

use llmlb::supervise::{stop_server, StopEvent, StopOptions, StopOutcome};

use super::{fail, LockDirChoice};

/// Runs `stop`; 0 when the port is no longer held by the server that was
/// there (including "nothing was running"), 1 otherwise.
pub(crate) fn run(dir: &LockDirChoice, port: u16, timeout_secs: u64, force: bool) -> i32 {
    let options = StopOptions {
        timeout: Duration::from_secs(timeout_secs),
        force,
    };
    let outcome = stop_server(&dir.path, port, &options, |event| match event {
        StopEvent::Stopping { port, info } => {
            println!("Stopping server on port {port} (PID: {})...", info.pid);
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
                (false, _) if cfg!(windows) => format!("did not stop within {}s; terminating it and its command", timeout.as_secs()),
                (false, Some(pgid)) => format!("did not stop within {}s; sending SIGKILL to it and process group {pgid}", timeout.as_secs()),
                (false, None) => format!("did not stop within {}s; sending SIGKILL to it", timeout.as_secs()),
                (true, Some(pgid)) => format!("exited, but its command's process group {pgid} still holds the lock; sending SIGKILL to the group"),
                (true, None) => "exited, but a process that inherited its lock still holds it".to_owned(),
            };
            eprintln!("Warning: server on port {port} (PID: {pid}) {line}");
        }
    });
    match outcome {
        Ok(StopOutcome::NotRunning) => {
            println!("No server running on port {port}");
            0
        }
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
            println!("No server running on port {port}");
            0
        }
        Ok(StopOutcome::Stopped { .. }) => {
            println!("Server stopped");
            0
        }
        Ok(StopOutcome::Killed { .. }) => {
            println!("Server stopped (killed)");
            0
        }
        Err(e) => fail(e),
    }
}
