//! `llmlb reload`: asks the port's server to replace itself (see
//! [`llmlb::supervise::reload`]) and prints the outcome.

use std::time::Duration;

use llmlb::lock::LockDir;
use llmlb::supervise::handover::{request_reload, ReloadError};

use super::{fail, LockDirChoice};
use crate::supervise::listener::words::{elsewhere_hint, who_listens};

/// Runs `reload`: 0 once the successor serves and the old server drains
/// (one line on stdout naming the new PID); 1 otherwise, the old server
/// serving on, with one line saying why.
pub(crate) fn run(dir: &LockDirChoice, port: u16, timeout: Duration) -> i32 {
    let locks = match LockDir::existing(&dir.path) {
        Ok(Some(locks)) => locks,
        Ok(None) => return not_running(dir, port),
        Err(e) => return fail(e),
    };
    match request_reload(&locks, port, timeout) {
        Ok(pid) => {
            println!("Reloaded port {port}: PID {pid} serves it; the old server is draining");
            0
        }
        Err(ReloadError::NotRunning { .. }) => not_running(dir, port),
        Err(e) => fail(e),
    }
}

/// Nobody in this lock dir holds `port`: nothing to reload (exit 1), naming
/// who listens on it if someone does (an llmlb of another user or lock dir).
fn not_running(dir: &LockDirChoice, port: u16) -> i32 {
    let quoted = llmlb::lock::shell_quoted(&dir.path);
    match who_listens(port) {
        None => fail(format!(
            "no server in lock dir {quoted} holds port {port}; nothing was reloaded (start one with: llmlb serve --port {port})"
        )),
        Some(who) => fail(format!(
            "no server in lock dir {quoted} holds port {port}, but {who} listens on it; nothing was reloaded: {}",
            elsewhere_hint(port)
        )),
    }
}
