//! Exec mode, `llmlb serve --port P -- CMD ARGS…`: run CMD under the held
//! lock, forward SIGINT/SIGTERM to its process group, exit with its code.

use std::ffi::OsString;
use std::io;

use llmlb::lock::process::{self, configure_exec_child};
use llmlb::lock::{PortGuard, SharedLock};

use super::fail;
use super::serve::LockLost;
use super::signals::{self, Signals};

/// `env`/`nohup` convention: the command could not be found.
const EXIT_NOT_FOUND: i32 = 127;
/// `env`/`nohup` convention: the command was found but could not be run.
const EXIT_CANNOT_RUN: i32 = 126;

/// Runs the command to completion; the caller releases the lock afterwards.
pub(crate) async fn run(
    lock: &SharedLock<PortGuard>,
    mut signals: Signals,
    lock_lost: &mut LockLost,
    host: &str,
    port: u16,
    command: &[OsString],
) -> i32 {
    let Some((program, args)) = command.split_first() else {
        return fail("exec mode needs a command after `--`");
    };
    let shown = program.to_string_lossy().into_owned();
    let mut cmd = std::process::Command::new(program);
    cmd.args(args)
        .env("LLMLB_PORT", port.to_string())
        .env("LLMLB_HOST", host);
    configure_exec_child(&mut cmd);
    // Spawned on the main thread (see serve::run): the parent-death signal
    // fires when the spawning thread exits.
    let mut child = match tokio::process::Command::from(cmd).spawn() {
        Ok(child) => child,
        Err(e) => {
            fail(format!("cannot run {shown}: {e}"));
            return match e.kind() {
                io::ErrorKind::NotFound => EXIT_NOT_FOUND,
                _ => EXIT_CANNOT_RUN,
            };
        }
    };
    let pgid = child.id().and_then(process::child_pgid);
    if let Some(pgid) = pgid {
        if let Some(Err(e)) = lock.with(|g| g.set_child_pgid(Some(pgid))) {
            tracing::warn!("cannot record the command's process group (stop --force will only kill llmlb): {e}");
        }
    }
    tracing::info!(
        "running {shown} (PID {}) under the lock for port {port}",
        child.id().unwrap_or(0)
    );
    let mut watching = true;
    let mut lost = false;
    let status = loop {
        tokio::select! {
            status = child.wait() => break status,
            why = lock_lost.recv(), if watching => {
                // Someone else holds the port now: stop the command as a
                // `stop` would, and exit with an error once it is gone.
                fail(why);
                watching = false;
                lost = true;
                if let Some(pgid) = pgid {
                    let _ = process::signal_process_group(pgid, process::ForwardSignal::Terminate);
                }
            }
            sig = signals.recv() => {
                tracing::info!("received {}, forwarding it to {shown}", signals::name(sig));
                if let Some(pgid) = pgid {
                    if let Err(e) = process::signal_process_group(pgid, sig) {
                        tracing::warn!("cannot forward {} to process group {pgid}: {e}", signals::name(sig));
                    }
                }
            }
        }
    };
    match status {
        Ok(status) => {
            let code = process::exit_code(status);
            tracing::info!("{shown} exited ({status}); releasing port {port}");
            if lost {
                super::EXIT_FAILURE
            } else {
                code
            }
        }
        Err(e) => fail(format!("cannot wait for {shown}: {e}")),
    }
}
