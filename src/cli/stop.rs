//! `llmlb stop`: the library's stop, with its progress printed (see
//! `supervise::server::stop_report`, which `serve --replace` prints too).

use std::time::Duration;

use super::LockDirChoice;
use crate::supervise::server::stop_report;

/// Runs `stop`; 0 when the port is no longer held by the server that was
/// there, nor by one that held it before (a pending replace's predecessor,
/// which the port goes back to: stopped too), including "nothing was
/// running" (held by nobody, and nobody listens on it); and with a zero
/// timeout also when the server was signalled and has not stopped yet (as
/// `pg_ctl stop --no-wait` and `systemctl stop --no-block` succeed once the
/// request is made); 1 otherwise.
pub(crate) fn run(dir: &LockDirChoice, port: u16, timeout: Duration, force: bool) -> i32 {
    stop_report::stop(&dir.to_where(), port, timeout, force)
}
