//! The serving state a holder records (`llmlb_lock_set_state`) and who
//! listens on a port (`llmlb_port_listener`): what `llmlb status` shows
//! beside the lock, for C and Python launchers.

use std::ffi::c_int;

use llmlb::lock::{check_port, ServeState};
use llmlb::supervise::listener::port_listener;

use crate::boundary::{self, FfiError, Out};
use crate::{LlmlbLock, LlmlbStatus};

/// The serving state in a lock's record (`llmlb status` shows it; `llmlb
/// wait` waits for `READY`). Values are explicit and never reused.
///
/// `LLMLB_SERVE_STATE_READY` is 0 so that a record without a state (written
/// by an older library, or by a holder that never called
/// `llmlb_lock_set_state`) and a zeroed `LlmlbLockInfo` both read as ready,
/// as the lock record's rule has it.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum LlmlbServeState {
    /// Accepting connections (also: no state recorded).
    #[default]
    LLMLB_SERVE_STATE_READY = 0,
    /// The port is taken; the server is not accepting connections yet.
    LLMLB_SERVE_STATE_STARTING = 1,
    /// Shutdown has begun; send no new requests here.
    LLMLB_SERVE_STATE_STOPPING = 2,
}

impl From<ServeState> for LlmlbServeState {
    fn from(state: ServeState) -> Self {
        match state {
            ServeState::Starting => LlmlbServeState::LLMLB_SERVE_STATE_STARTING,
            ServeState::Ready => LlmlbServeState::LLMLB_SERVE_STATE_READY,
            ServeState::Stopping => LlmlbServeState::LLMLB_SERVE_STATE_STOPPING,
        }
    }
}

/// Records `state` (one of `LLMLB_SERVE_STATE_*`) and the time it was set
/// in the lock file of `lock`, rewritten in place under the lock, as `llmlb
/// serve` does: `STARTING` after the acquire, `READY` once the server
/// accepts connections, `STOPPING` when shutdown begins. Until the first
/// call the record has no state, which reads as ready.
///
/// `state` is an `int` so that any value a caller passes is checked: one
/// that is not an `LLMLB_SERVE_STATE_*` value, or a NULL `lock`, gives
/// `LLMLB_STATUS_INVALID_ARGUMENT`. On `LLMLB_STATUS_IO_ERROR` the file
/// keeps its previous record.
///
/// Threads: do not use the handle concurrently with any other call on it.
///
/// # Safety
/// `lock` is NULL or a live handle.
#[no_mangle]
pub unsafe extern "C" fn llmlb_lock_set_state(lock: *mut LlmlbLock, state: c_int) -> LlmlbStatus {
    boundary::status("llmlb_lock_set_state", || {
        // SAFETY: the caller's contract above.
        let lock = unsafe { boundary::handle_mut(lock, "lock") }?;
        let state = match state {
            0 => ServeState::Ready,
            1 => ServeState::Starting,
            2 => ServeState::Stopping,
            other => {
                return Err(FfiError::invalid(format!(
                    "state {other} is not a serving state; pass LLMLB_SERVE_STATE_STARTING, _READY or _STOPPING"
                )))
            }
        };
        lock.guard.set_state(state)?;
        Ok(())
    })
}

/// Who listens on TCP `port` now (any local address, IPv4 or IPv6), for a
/// launcher that waits for its command to bind or asks "port in use, by
/// whom?". Takes no lock and needs none.
///
/// `LLMLB_STATUS_OK`: something listens; `*out_pid` (when `out_pid` is not
/// NULL) is its PID, or 0 when it cannot be seen: another user's process
/// (Linux, without root), or a platform where only a loopback connect probe
/// answers (macOS). `LLMLB_STATUS_NOT_LISTENING`: nothing listens;
/// `*out_pid` is 0. Port 0 gives `LLMLB_STATUS_INVALID_ARGUMENT`; a socket
/// table that cannot be read (no `/proc`) `LLMLB_STATUS_IO_ERROR`; `*out_pid`
/// is 0 on every status but OK.
///
/// Threads: safe to call from any thread.
///
/// # Safety
/// `out_pid` is NULL or valid for writing a `uint32_t`.
#[no_mangle]
pub unsafe extern "C" fn llmlb_port_listener(port: u16, out_pid: *mut u32) -> LlmlbStatus {
    boundary::status("llmlb_port_listener", || {
        // SAFETY: the caller's contract above.
        let mut out = unsafe { Out::optional(out_pid, "out_pid") }?;
        if let Some(out) = out.as_mut() {
            out.write(0);
        }
        let port = check_port(port)?;
        let found = port_listener(port).map_err(|err| FfiError {
            status: LlmlbStatus::LLMLB_STATUS_IO_ERROR,
            message: format!("cannot tell who listens on port {port}: {err}"),
        })?;
        let Some(found) = found else {
            return Err(FfiError {
                status: LlmlbStatus::LLMLB_STATUS_NOT_LISTENING,
                message: format!("nothing listens on TCP port {port}"),
            });
        };
        if let Some(out) = out.as_mut() {
            out.write(found.pid.unwrap_or(0));
        }
        Ok(())
    })
}
