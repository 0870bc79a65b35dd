//! `llmlb_lock_wait_stop`: how a launcher learns that `llmlb stop` asked it to
//! shut down, on every platform with the same loop.

use std::ffi::c_int;
use std::time::Duration;

use crate::boundary::{self, Out};
use crate::{LlmlbLock, LlmlbStatus};

/// `timeout_ms` for `llmlb_lock_wait_stop`: wait without a time limit.
pub const LLMLB_WAIT_FOREVER: u32 = u32::MAX;

/// Waits up to `timeout_ms` milliseconds for `llmlb stop` to ask the holder
/// of `lock` to shut down; `*out_requested` is then 1 if it did, else 0.
///
/// - Windows (no SIGTERM): every lock has a stop channel, which `llmlb stop`
///   sets. Once set, every later call reports 1 at once. A launcher that
///   sees 1 stops its child (CTRL_BREAK_EVENT to the child's own process
///   group, then `TerminateProcess` after a deadline), then calls
///   `llmlb_lock_release` and exits; `llmlb stop` waits for the lock to be
///   released and, after its `--timeout`, with `--force` terminates the
///   launcher.
/// - Unix: `llmlb stop` sends SIGTERM to the holder's process instead, so
///   this call never reports a request (`*out_requested` is 0): it sleeps up
///   to `timeout_ms`, returning early when a signal handler runs, so a loop
///   that checks its own SIGTERM flag after each call sees SIGTERM at once.
///
/// So one loop serves both: `for (;;) { llmlb_lock_wait_stop(lock, 100,
/// &requested); if (requested || got_sigterm) break; ...check the child... }`.
/// `timeout_ms` 0 only polls; `LLMLB_WAIT_FOREVER` waits without a limit (on
/// Unix: until a signal handler runs).
///
/// NULL `lock` or `out_requested` gives `LLMLB_STATUS_INVALID_ARGUMENT`
/// (`*out_requested` is 0 then, if it is writable); `*out_requested` is
/// written on every status when non-NULL and aligned.
///
/// Threads: may run concurrently with `llmlb_lock_info` and other
/// `llmlb_lock_wait_stop` calls on the same handle (e.g. a thread that only
/// waits for the request), not with `llmlb_lock_release` or
/// `llmlb_lock_adopt`.
///
/// # Safety
/// `lock` is NULL or a live handle; `out_requested` is NULL or valid for
/// writing an `int`.
#[no_mangle]
pub unsafe extern "C" fn llmlb_lock_wait_stop(
    lock: *const LlmlbLock,
    timeout_ms: u32,
    out_requested: *mut c_int,
) -> LlmlbStatus {
    boundary::status("llmlb_lock_wait_stop", || {
        // SAFETY: the caller's contract above.
        let out = unsafe { Out::optional(out_requested, "out_requested") }?;
        let mut out = out.ok_or_else(|| boundary::FfiError::invalid("out_requested is NULL"))?;
        out.write(0);
        // SAFETY: the caller's contract above.
        let lock = unsafe { boundary::required_ref(lock, "lock") }?;
        let timeout = match timeout_ms {
            LLMLB_WAIT_FOREVER => Duration::MAX,
            ms => Duration::from_millis(ms.into()),
        };
        // Taken out first: the wait must not hold the guard's mutex.
        let request = lock.held.with(llmlb::lock::PortGuard::stop_request)?;
        if request.wait(timeout) {
            out.write(1);
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// NULL arguments are refused without blocking; a fresh lock reports no
    /// request after a poll (on every platform, nobody asked).
    #[test]
    fn null_arguments_are_refused_and_a_fresh_lock_has_no_request() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = std::ffi::CString::new(tmp.path().to_str().unwrap()).unwrap();
        let mut lock: *mut LlmlbLock = std::ptr::null_mut();
        // SAFETY: valid pointers for the calls below.
        unsafe {
            let st = crate::llmlb_lock_acquire(dir.as_ptr(), 4321, &mut lock, std::ptr::null_mut());
            assert_eq!(st, LlmlbStatus::LLMLB_STATUS_OK);
            let mut requested: c_int = 7;
            let st = llmlb_lock_wait_stop(std::ptr::null(), 0, &mut requested);
            assert_eq!(st, LlmlbStatus::LLMLB_STATUS_INVALID_ARGUMENT);
            assert_eq!(requested, 0);
            let st = llmlb_lock_wait_stop(lock, 0, std::ptr::null_mut());
            assert_eq!(st, LlmlbStatus::LLMLB_STATUS_INVALID_ARGUMENT);
            requested = 7;
            assert_eq!(
                llmlb_lock_wait_stop(lock, 0, &mut requested),
                LlmlbStatus::LLMLB_STATUS_OK
            );
            assert_eq!(requested, 0);
            assert_eq!(
                crate::llmlb_lock_release(lock),
                LlmlbStatus::LLMLB_STATUS_OK
            );
        }
    }
}
