//! The advice messages give about a port's holder: how to stop it, or how to
//! find it when the recorded PID is not the holder.
//!
//! They live with the protocol, not with `stop` above it, because what they
//! decide is the holder's identity (the lock info, checked against this host
//! and PID namespace), and because [`LockError::AlreadyRunning`]'s own message
//! carries the advice: the lock must not reach up to `crate::supervise` for a
//! sentence. `stop`'s errors use [`find_holder`] from here.
//!
//! [`LockError::AlreadyRunning`]: super::LockError::AlreadyRunning

use std::path::Path;

use super::info::{IdentityCheck, LockInfo};
use super::text::{printable, shell_quoted};

/// How to find the process that has `path` open, for messages: `fuser` on
/// Unix; Windows has no such command, so the tool that shows it.
pub(crate) fn find_holder(path: &Path) -> String {
    if cfg!(windows) {
        format!(
            "Resource Monitor (CPU tab, Associated Handles, search for {})",
            printable(path)
        )
    } else {
        format!("`fuser {}`", shell_quoted(path))
    }
}

/// How a user can stop the holder of `port`, as a sentence for messages:
/// only a fix that works for this holder. `llmlb stop` (with `stop_args`
/// appended, e.g. ` --lock-dir DIR`, its paths already quoted with
/// [`shell_quoted`]) where it would verify and signal the
/// holder; "stop it there" for a holder on another host; the way to find an
/// inheritor for a holder whose recorded PID is gone or reused; and no
/// command at all where nothing here can verify the holder. CLI wording
/// (`llmlb stop`), so not public API.
pub(crate) fn how_to_stop(
    port: u16,
    holder: Option<&LockInfo>,
    lock_path: &Path,
    stop_args: &str,
) -> String {
    let Some(info) = holder else {
        return format!("to stop it: llmlb stop --port {port}{stop_args}");
    };
    match info.check_identity() {
        IdentityCheck::Same => format!("to stop it: llmlb stop --port {port}{stop_args}"),
        IdentityCheck::Released => format!(
            "PID {} released it, and a process that inherited the lock holds it: find it with {}",
            info.pid,
            find_holder(lock_path)
        ),
        IdentityCheck::OtherHost(host) => {
            format!("it runs on host {}: stop it there", printable(&host))
        }
        IdentityCheck::OtherPidNamespace => {
            "it runs in another PID namespace (a container): stop it there".to_owned()
        }
        IdentityCheck::Gone | IdentityCheck::Reused => format!(
            "its recorded PID {} has exited and a process that inherited the lock holds it: find it with {}",
            info.pid,
            find_holder(lock_path)
        ),
        _ => format!(
            "its identity cannot be verified here, so `llmlb stop` will not signal it: check what PID {} is and stop it by its own means",
            info.pid
        ),
    }
}
