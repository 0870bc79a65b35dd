//! The serving state a holder records (`llmlb_lock_set_state`, or from the
//! first write with `llmlb_lock_acquire_with_state`) and who listens on a
//! port (`llmlb_port_listener`): what `llmlb status` shows beside the lock,
//! for C and Python launchers.

use std::ffi::{c_char, c_int};

use llmlb::lock::{check_port, ServeState};
use llmlb::supervise::listener::port_listener;

use crate::boundary::{self, FfiError, Out};
use crate::dir::{acquire_waiting, DirArg};
use crate::wait::wait_for;
use crate::{LlmlbLock, LlmlbLockDir, LlmlbLockInfo, LlmlbStatus};

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

/// A serving state passed from C as an `int`: any value is checked, so a
/// caller's stray number is an invalid argument, never a state.
pub(crate) fn serve_state_arg(state: c_int) -> Result<ServeState, FfiError> {
    match state {
        0 => Ok(ServeState::Ready),
        1 => Ok(ServeState::Starting),
        2 => Ok(ServeState::Stopping),
        other => Err(FfiError::invalid(format!(
            "state {other} is not a serving state; pass LLMLB_SERVE_STATE_STARTING, _READY or _STOPPING"
        ))),
    }
}

/// `llmlb_lock_acquire_timeout` whose lock file records `state` (one of
/// `LLMLB_SERVE_STATE_*`, normally `STARTING`) from its first write, so no
/// reader ever sees the new holder without a state (which reads as ready):
/// what a launcher calls instead of an acquire followed by
/// `llmlb_lock_set_state`, whose record is briefly stateless. `llmlb serve`
/// takes its port the same way.
///
/// `timeout_ms`: 0 tries once (as `llmlb_lock_acquire`), `UINT32_MAX` never
/// gives up, else the milliseconds to wait for the holder to release.
/// `state` is an `int` so that any value is checked: one that is not an
/// `LLMLB_SERVE_STATE_*` value gives `LLMLB_STATUS_INVALID_ARGUMENT` before
/// anything is created. Otherwise the same statuses and out parameters as
/// `llmlb_lock_acquire_timeout`; a stale lock reclaimed is rewritten with
/// `state` too. The state's time (`serve_state_since_unix_ms`) is the
/// acquire's.
///
/// Threads: safe to call from any thread.
///
/// # Safety
/// As `llmlb_lock_acquire`: `lock_dir` is NULL or a NUL-terminated string;
/// `out_lock` is NULL or valid for writing a pointer; `out_other` is NULL or
/// valid for writing an `LlmlbLockInfo`.
#[no_mangle]
pub unsafe extern "C" fn llmlb_lock_acquire_with_state(
    lock_dir: *const c_char,
    port: u16,
    timeout_ms: u32,
    state: c_int,
    out_lock: *mut *mut LlmlbLock,
    out_other: *mut LlmlbLockInfo,
) -> LlmlbStatus {
    // SAFETY: the caller's contract above is the one acquire needs.
    unsafe {
        acquire_waiting(
            "llmlb_lock_acquire_with_state",
            DirArg::Path(lock_dir),
            port,
            wait_for(timeout_ms),
            Some(state),
            out_lock,
            out_other,
        )
    }
}

/// `llmlb_lock_acquire_with_state` in an open lock dir (see
/// `llmlb_lock_dir_acquire`): the same statuses, out parameters, `timeout_ms`
/// and `state` meaning. A NULL or misaligned `dir` gives
/// `LLMLB_STATUS_INVALID_ARGUMENT`. Other locks taken through `dir` are not
/// affected: the state belongs to this call.
///
/// Threads: safe to call from any thread, also on a handle other threads
/// are using; the handle must not be closed while a call waits on it.
///
/// # Safety
/// `dir` is NULL or a live handle from `llmlb_lock_dir_open`; `out_lock` is
/// NULL or valid for writing a pointer; `out_other` is NULL or valid for
/// writing an `LlmlbLockInfo`.
#[no_mangle]
pub unsafe extern "C" fn llmlb_lock_dir_acquire_with_state(
    dir: *const LlmlbLockDir,
    port: u16,
    timeout_ms: u32,
    state: c_int,
    out_lock: *mut *mut LlmlbLock,
    out_other: *mut LlmlbLockInfo,
) -> LlmlbStatus {
    // SAFETY: the caller's contract above is the one acquire needs.
    unsafe {
        acquire_waiting(
            "llmlb_lock_dir_acquire_with_state",
            DirArg::Handle(dir),
            port,
            wait_for(timeout_ms),
            Some(state),
            out_lock,
            out_other,
        )
    }
}

/// Records `state` (one of `LLMLB_SERVE_STATE_*`) and the time it was set
/// in the lock file of `lock`, rewritten in place under the lock, as `llmlb
/// serve` does: `READY` once the server accepts connections, `STOPPING` when
/// shutdown begins. A lock taken with `llmlb_lock_acquire_with_state` has its
/// first state from the acquire; any other has no state until the first
/// call, which reads as ready.
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
        lock.guard.set_state(serve_state_arg(state)?)?;
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
