//! Waiting for a port: `llmlb_lock_acquire_timeout` and its dir-handle twin,
//! thin shells over [`llmlb::lock::acquire_timeout`].

use std::ffi::c_char;
use std::time::Duration;

use crate::dir::{acquire_waiting, DirArg};
use crate::{LlmlbLock, LlmlbLockDir, LlmlbLockInfo, LlmlbStatus};

/// `timeout_ms` that never gives up: `UINT32_MAX` (C spells it so; no
/// constant of ours is needed).
const WAIT_FOREVER: u32 = u32::MAX;

pub(crate) fn wait_for(timeout_ms: u32) -> Duration {
    if timeout_ms == WAIT_FOREVER {
        Duration::MAX
    } else {
        Duration::from_millis(timeout_ms.into())
    }
}

/// `llmlb_lock_acquire`, waiting up to `timeout_ms` milliseconds for the
/// port's holder to release it (or die): returns as soon as the lock is
/// taken. `0` tries once (exactly `llmlb_lock_acquire`);
/// `UINT32_MAX` never gives up.
///
/// The same statuses and out parameters as `llmlb_lock_acquire`:
/// `LLMLB_STATUS_ALREADY_RUNNING` only once the timeout has passed, with
/// `*out_other` holding the holder's info as last seen. Other errors (unsafe
/// path, I/O) return at once.
///
/// The calling thread sleeps while it waits (on a watch of the lock dir:
/// inotify on Linux, kqueue on macOS, a change notification on Windows; and
/// a poll of at most 20 ms, 50 ms with inotify), holding nothing: no lock, no
/// descriptor on the lock file. It cannot be interrupted: a caller that must
/// react to signals waits in slices (the Python wrapper uses 200 ms).
///
/// Threads: safe to call from any thread.
///
/// # Safety
/// As `llmlb_lock_acquire`: `lock_dir` is NULL or a NUL-terminated string;
/// `out_lock` is NULL or valid for writing a pointer; `out_other` is NULL or
/// valid for writing an `LlmlbLockInfo`.
#[no_mangle]
pub unsafe extern "C" fn llmlb_lock_acquire_timeout(
    lock_dir: *const c_char,
    port: u16,
    timeout_ms: u32,
    out_lock: *mut *mut LlmlbLock,
    out_other: *mut LlmlbLockInfo,
) -> LlmlbStatus {
    // SAFETY: the caller's contract above is the one acquire needs.
    unsafe {
        acquire_waiting(
            "llmlb_lock_acquire_timeout",
            DirArg::Path(lock_dir),
            port,
            wait_for(timeout_ms),
            None,
            out_lock,
            out_other,
        )
    }
}

/// `llmlb_lock_acquire_timeout` in an open lock dir (see
/// `llmlb_lock_dir_acquire`): the same statuses, out parameters and
/// `timeout_ms` meaning. A NULL or misaligned `dir` gives
/// `LLMLB_STATUS_INVALID_ARGUMENT`.
///
/// Threads: safe to call from any thread, also on a handle other threads
/// are using; the handle must not be closed while a call waits on it.
///
/// # Safety
/// `dir` is NULL or a live handle from `llmlb_lock_dir_open`; `out_lock` is
/// NULL or valid for writing a pointer; `out_other` is NULL or valid for
/// writing an `LlmlbLockInfo`.
#[no_mangle]
pub unsafe extern "C" fn llmlb_lock_dir_acquire_timeout(
    dir: *const LlmlbLockDir,
    port: u16,
    timeout_ms: u32,
    out_lock: *mut *mut LlmlbLock,
    out_other: *mut LlmlbLockInfo,
) -> LlmlbStatus {
    // SAFETY: the caller's contract above is the one acquire needs.
    unsafe {
        acquire_waiting(
            "llmlb_lock_dir_acquire_timeout",
            DirArg::Handle(dir),
            port,
            wait_for(timeout_ms),
            None,
            out_lock,
            out_other,
        )
    }
}
