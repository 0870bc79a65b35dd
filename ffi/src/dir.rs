//! Lock dir handles (`LlmlbLockDir`), and the one body each of acquire and
//! probe shares between the path-taking functions and the handle-taking ones.
//!
//! A handle is an [`LockDir`] opened and checked once: a launcher that takes
//! or probes many ports (or the same one many times) pays for resolving and
//! checking the dir once, not per call, and every call goes to the directory
//! that was checked rather than to whatever the path names by then.

use std::ffi::{c_char, c_int};
use std::ops::Deref;
use std::ptr;

use std::time::Duration;

use llmlb::lock::{acquire_timeout, check_port, LockDir, LockError, LockState, PortGuard};

use crate::boundary::{self, FfiError, Out};
use crate::{info_or_zero, LlmlbLock, LlmlbLockInfo, LlmlbLockState, LlmlbStatus};

/// An open, checked lock dir (opaque). Created by `llmlb_lock_dir_open`,
/// freed by `llmlb_lock_dir_close`.
pub struct LlmlbLockDir {
    dir: LockDir,
}

// The C contract lets threads share one handle for acquire and probe: that
// needs `&LockDir` to be usable from several threads at once.
const _: () = {
    const fn shareable<T: Send + Sync>() {}
    shareable::<LlmlbLockDir>();
};

/// Where a call finds its lock dir: a path resolved and checked by this call,
/// or a handle opened earlier.
#[derive(Clone, Copy)]
pub(crate) enum DirArg {
    /// `lock_dir` of the path-taking functions (NULL: the default dir).
    Path(*const c_char),
    /// `dir` of the `llmlb_lock_dir_*` functions (NULL is refused).
    Handle(*const LlmlbLockDir),
}

/// A lock dir for one call: opened by it, or borrowed from a handle.
enum CallDir<'a> {
    Opened(LockDir),
    Borrowed(&'a LockDir),
}

impl Deref for CallDir<'_> {
    type Target = LockDir;

    fn deref(&self) -> &LockDir {
        match self {
            CallDir::Opened(dir) => dir,
            CallDir::Borrowed(dir) => dir,
        }
    }
}

impl DirArg {
    /// The handle behind a `Handle` argument.
    ///
    /// # Safety
    /// A non-NULL handle is live and not being closed for `'a`.
    unsafe fn handle<'a>(handle: *const LlmlbLockDir) -> Result<&'a LockDir, FfiError> {
        // SAFETY: the caller's contract above.
        Ok(&unsafe { boundary::required_ref(handle, "dir") }?.dir)
    }

    /// The dir to acquire in: a path is created (0700) if missing and checked.
    ///
    /// # Safety
    /// A `Path` is NULL or NUL-terminated; a `Handle` is NULL or live for `'a`.
    unsafe fn for_acquire<'a>(self) -> Result<CallDir<'a>, FfiError> {
        match self {
            // SAFETY: the caller's contract above.
            DirArg::Path(path) => Ok(CallDir::Opened(LockDir::create(unsafe {
                boundary::lock_dir(path)
            }?)?)),
            // SAFETY: the caller's contract above.
            DirArg::Handle(handle) => Ok(CallDir::Borrowed(unsafe { Self::handle(handle) }?)),
        }
    }

    /// What `port` looks like in this dir, creating nothing (a missing dir
    /// behind a path is `Free`).
    ///
    /// # Safety
    /// As [`DirArg::for_acquire`].
    unsafe fn probe(self, port: u16) -> Result<LockState, FfiError> {
        Ok(match self {
            // SAFETY: the caller's contract above.
            DirArg::Path(path) => llmlb::lock::probe(&unsafe { boundary::lock_dir(path) }?, port)?,
            // SAFETY: the caller's contract above.
            DirArg::Handle(handle) => unsafe { Self::handle(handle) }?.probe(port)?,
        })
    }
}

/// The body of `llmlb_lock_acquire` and `llmlb_lock_dir_acquire`.
///
/// # Safety
/// `dir` as in [`DirArg::for_acquire`]; `out_lock`/`out_other` NULL or valid
/// for writes (the exported functions' contracts).
pub(crate) unsafe fn acquire(
    name: &'static str,
    dir: DirArg,
    port: u16,
    out_lock: *mut *mut LlmlbLock,
    out_other: *mut LlmlbLockInfo,
) -> LlmlbStatus {
    // SAFETY: the caller's contract above.
    unsafe { acquire_waiting(name, dir, port, Duration::ZERO, None, out_lock, out_other) }
}

/// [`acquire`] waiting up to `wait` for a holder to release (the
/// `*_acquire_timeout` functions; `Duration::ZERO` tries once), its record
/// carrying `state` (a C `LLMLB_SERVE_STATE_*` value, checked here) from the
/// first write when there is one.
///
/// # Safety
/// As [`acquire`].
pub(crate) unsafe fn acquire_waiting(
    name: &'static str,
    dir: DirArg,
    port: u16,
    wait: Duration,
    state: Option<c_int>,
    out_lock: *mut *mut LlmlbLock,
    out_other: *mut LlmlbLockInfo,
) -> LlmlbStatus {
    boundary::status(name, || {
        // Both outputs are checked, and each usable one cleared, before either
        // check may fail: a misaligned out_other still leaves *out_lock NULL,
        // and a NULL out_lock still leaves *out_other zeroed.
        // SAFETY: the caller's contract above.
        let mut other = unsafe { Out::optional(out_other, "out_other") };
        // SAFETY: the caller's contract above.
        let mut lock = unsafe { Out::required(out_lock, "out_lock") };
        if let Ok(Some(other)) = &mut other {
            other.write(LlmlbLockInfo::default());
        }
        if let Ok(lock) = &mut lock {
            lock.write(ptr::null_mut());
        }
        let (mut other, mut lock) = (other?, lock?);

        let port = check_port(port)?;
        let state = state.map(crate::serve::serve_state_arg).transpose()?;
        // SAFETY: the caller's contract above.
        let dir = unsafe { dir.for_acquire() }?;
        // Announcing on a clone: a shared dir handle stays as it was opened
        // (the clone shares its descriptor).
        let announcing;
        let dir: &LockDir = match state {
            Some(state) => {
                announcing = LockDir::clone(&dir).announcing(state);
                &announcing
            }
            None => &dir,
        };
        hand_out(acquire_timeout(dir, port, wait), &mut lock, &mut other)
    })
}

/// An acquire's outcome as C receives it: the new handle in `*lock` with a
/// reclaimed lock's dead holder (or zeroes) in `*other`; on
/// `AlreadyRunning` the holder's info in `*other`; the error's status
/// otherwise. The one place every acquiring entry point (the waits, the
/// states, a handover's free port) writes its out parameters.
pub(crate) fn hand_out(
    acquired: Result<PortGuard, LockError>,
    lock: &mut Out<'_, *mut LlmlbLock>,
    other: &mut Option<Out<'_, LlmlbLockInfo>>,
) -> Result<(), FfiError> {
    match acquired {
        Ok(guard) => {
            if let Some(other) = other.as_mut() {
                other.write(info_or_zero(guard.reclaimed_from()));
            }
            lock.write(Box::into_raw(Box::new(LlmlbLock::new(guard))));
            Ok(())
        }
        Err(err) => {
            if let (LockError::AlreadyRunning { holder, .. }, Some(other)) = (&err, other.as_mut())
            {
                other.write(info_or_zero(holder.as_deref()));
            }
            Err(err.into())
        }
    }
}

/// The body of `llmlb_lock_probe` and `llmlb_lock_dir_probe`.
///
/// # Safety
/// `dir` as in [`DirArg::for_acquire`]; `out_state`/`out_info` NULL or valid
/// for writes (the exported functions' contracts).
pub(crate) unsafe fn probe(
    name: &'static str,
    dir: DirArg,
    port: u16,
    out_state: *mut LlmlbLockState,
    out_info: *mut LlmlbLockInfo,
) -> LlmlbStatus {
    boundary::status(name, || {
        // SAFETY: the caller's contract above.
        let mut info = unsafe { Out::optional(out_info, "out_info") }?;
        if let Some(info) = info.as_mut() {
            info.write(LlmlbLockInfo::default());
        }
        // SAFETY: the caller's contract above.
        let mut out_state = unsafe { Out::required(out_state, "out_state") }?;
        let port = check_port(port)?;
        // SAFETY: the caller's contract above.
        let state = unsafe { dir.probe(port) }?;
        out_state.write(match state {
            LockState::Free => LlmlbLockState::LLMLB_STATE_FREE,
            LockState::Held(_) => LlmlbLockState::LLMLB_STATE_HELD,
            LockState::Stale(_) => LlmlbLockState::LLMLB_STATE_STALE,
        });
        if let Some(info) = info.as_mut() {
            info.write(info_or_zero(state.info()));
        }
        Ok(())
    })
}

/// Opens the lock dir once for many `llmlb_lock_dir_acquire` and
/// `llmlb_lock_dir_probe` calls: it is resolved, created (mode 0700) if
/// missing and checked exactly as `llmlb_lock_acquire` does, here and only
/// here. `lock_dir` as in `llmlb_lock_acquire` (NULL: the default dir,
/// resolved now). Borrowed for the call.
///
/// On `LLMLB_STATUS_OK`, `*out_dir` is a new handle owned by the caller (free
/// it with `llmlb_lock_dir_close`). On every other status `*out_dir` is NULL:
/// `LLMLB_STATUS_INVALID_ARGUMENT` for a relative, empty or non-UTF-8
/// `lock_dir`, `LLMLB_STATUS_UNSAFE_PATH` and `LLMLB_STATUS_IO_ERROR` as for
/// `llmlb_lock_acquire`. A NULL or misaligned `out_dir` gives
/// `LLMLB_STATUS_INVALID_ARGUMENT`.
///
/// The handle stands for the directory it opened: calls through it keep
/// using that directory, so do not remove or replace the lock dir while
/// handles to it are open (a replacement would not see their locks).
///
/// Threads: the handle may be shared by threads for `llmlb_lock_dir_acquire`
/// and `llmlb_lock_dir_probe` at the same time; only `llmlb_lock_dir_close`
/// needs exclusive use. Fork: a forked child inherits the handle and may use
/// it; each process closes its own copy.
///
/// # Safety
/// `lock_dir` is NULL or a NUL-terminated string; `out_dir` is NULL or valid
/// for writing a pointer.
#[no_mangle]
pub unsafe extern "C" fn llmlb_lock_dir_open(
    lock_dir: *const c_char,
    out_dir: *mut *mut LlmlbLockDir,
) -> LlmlbStatus {
    boundary::status("llmlb_lock_dir_open", || {
        // SAFETY: the caller's contract above.
        let mut out_dir = unsafe { Out::required(out_dir, "out_dir") }?;
        out_dir.write(ptr::null_mut());
        // SAFETY: the caller's contract above.
        let dir = LockDir::create(unsafe { boundary::lock_dir(lock_dir) }?)?;
        out_dir.write(Box::into_raw(Box::new(LlmlbLockDir { dir })));
        Ok(())
    })
}

/// `llmlb_lock_acquire` in an open lock dir: the same statuses and out
/// parameters (`*out_lock` is NULL and `*out_other` zeroed on every status
/// but `OK` and `ALREADY_RUNNING`), without resolving or checking the dir
/// again. A NULL or misaligned `dir` gives `LLMLB_STATUS_INVALID_ARGUMENT`.
///
/// The lock is independent of the handle: it stays held after
/// `llmlb_lock_dir_close`, and `llmlb_lock_release` frees it as any other.
///
/// Threads: safe to call from any thread, also on a handle other threads
/// are using.
///
/// # Safety
/// `dir` is NULL or a live handle from `llmlb_lock_dir_open`; `out_lock` is
/// NULL or valid for writing a pointer; `out_other` is NULL or valid for
/// writing an `LlmlbLockInfo`.
#[no_mangle]
pub unsafe extern "C" fn llmlb_lock_dir_acquire(
    dir: *const LlmlbLockDir,
    port: u16,
    out_lock: *mut *mut LlmlbLock,
    out_other: *mut LlmlbLockInfo,
) -> LlmlbStatus {
    // SAFETY: the caller's contract above is the one acquire needs.
    unsafe {
        acquire(
            "llmlb_lock_dir_acquire",
            DirArg::Handle(dir),
            port,
            out_lock,
            out_other,
        )
    }
}

/// `llmlb_lock_probe` in an open lock dir: the same statuses and out
/// parameters, without resolving or checking the dir again. Never creates
/// a file. A NULL or misaligned `dir` gives `LLMLB_STATUS_INVALID_ARGUMENT`.
///
/// Threads: safe to call from any thread, also on a handle other threads
/// are using.
///
/// # Safety
/// `dir` is NULL or a live handle from `llmlb_lock_dir_open`; `out_state` is
/// NULL or valid for writing an `LlmlbLockState`; `out_info` is NULL or valid
/// for writing an `LlmlbLockInfo`.
#[no_mangle]
pub unsafe extern "C" fn llmlb_lock_dir_probe(
    dir: *const LlmlbLockDir,
    port: u16,
    out_state: *mut LlmlbLockState,
    out_info: *mut LlmlbLockInfo,
) -> LlmlbStatus {
    // SAFETY: the caller's contract above is the one probe needs.
    unsafe {
        probe(
            "llmlb_lock_dir_probe",
            DirArg::Handle(dir),
            port,
            out_state,
            out_info,
        )
    }
}

/// Closes a lock dir handle and frees it. NULL is a no-op (like `free`); a
/// misaligned pointer, which cannot be a handle, is left alone and reported
/// by `llmlb_last_error`. Locks acquired through it stay held. Never use the
/// handle again.
///
/// Threads: no other call may be using the handle.
///
/// # Safety
/// `dir` is NULL or a live handle from `llmlb_lock_dir_open`, not yet closed
/// in this process.
#[no_mangle]
pub unsafe extern "C" fn llmlb_lock_dir_close(dir: *mut LlmlbLockDir) {
    boundary::guard("llmlb_lock_dir_close", (), || {
        match boundary::check_ptr(dir.cast_const(), "dir") {
            Ok(None) => {}
            // SAFETY: a live handle from llmlb_lock_dir_open (the caller's
            // contract), checked non-NULL and aligned; ownership comes back.
            Ok(Some(dir)) => drop(unsafe { Box::from_raw(dir.cast_mut()) }),
            // Not a pointer this library handed out; no status to report it
            // with, so it is left alone rather than freed.
            Err(err) => boundary::set_last_error(&format!("llmlb_lock_dir_close: {}", err.message)),
        }
    })
}

#[cfg(test)]
mod tests {
    use std::ffi::CString;
    use std::mem::MaybeUninit;

    use super::*;
    use crate::{llmlb_lock_acquire, llmlb_lock_probe, llmlb_lock_release};
    use LlmlbStatus::*;

    /// A bogus non-NULL handle value, to see that `*out_lock` is overwritten.
    fn bogus<T>() -> *mut T {
        ptr::NonNull::dangling().as_ptr()
    }

    /// An `LlmlbLockInfo`-sized slot one byte off its alignment, in bounds.
    struct Misaligned([u64; 4]);

    impl Misaligned {
        fn info(&mut self) -> *mut LlmlbLockInfo {
            self.0.as_mut_ptr().cast::<u8>().wrapping_add(1).cast()
        }

        fn untouched(&self) -> bool {
            self.0 == [0; 4]
        }
    }

    fn c_path(path: &std::path::Path) -> CString {
        CString::new(path.to_str().unwrap()).unwrap()
    }

    fn open(path: &std::path::Path) -> *mut LlmlbLockDir {
        let mut dir = bogus();
        // SAFETY: a NUL-terminated path and a valid out pointer.
        let status = unsafe { llmlb_lock_dir_open(c_path(path).as_ptr(), &mut dir) };
        assert_eq!(status, LLMLB_STATUS_OK);
        dir
    }

    #[test]
    fn a_misaligned_out_other_still_leaves_out_lock_null() {
        let tmp = tempfile::tempdir().unwrap();
        let path = c_path(&tmp.path().join("locks"));
        let dir = open(&tmp.path().join("locks"));
        for handle in [false, true] {
            let mut other = Misaligned([0; 4]);
            let mut lock: *mut LlmlbLock = bogus();
            // SAFETY: valid pointers except the misaligned one under test,
            // which points into `other` and must be refused before any write.
            let status = unsafe {
                if handle {
                    llmlb_lock_dir_acquire(dir, 8000, &mut lock, other.info())
                } else {
                    llmlb_lock_acquire(path.as_ptr(), 8000, &mut lock, other.info())
                }
            };
            assert_eq!(status, LLMLB_STATUS_INVALID_ARGUMENT, "handle: {handle}");
            assert!(lock.is_null(), "handle: {handle}: out_lock left as it was");
            assert!(
                other.untouched(),
                "handle: {handle}: misaligned out_other written"
            );
        }
        // SAFETY: a live handle, closed once.
        unsafe { llmlb_lock_dir_close(dir) };
    }

    #[test]
    fn a_misaligned_dir_handle_or_out_dir_is_an_invalid_argument() {
        let tmp = tempfile::tempdir().unwrap();
        let locks = tmp.path().join("locks");
        let misaligned_dir = bogus::<u64>()
            .cast::<u8>()
            .wrapping_add(1)
            .cast::<LlmlbLockDir>();
        let mut lock: *mut LlmlbLock = bogus();
        let mut other = LlmlbLockInfo {
            pid: 7,
            port: 7,
            started_at_unix_ms: 7,
            serve_state: crate::LlmlbServeState::LLMLB_SERVE_STATE_STOPPING,
            serve_state_since_unix_ms: 7,
        };
        // SAFETY: the misaligned handle is refused before it is dereferenced.
        let status = unsafe { llmlb_lock_dir_acquire(misaligned_dir, 8000, &mut lock, &mut other) };
        assert_eq!(status, LLMLB_STATUS_INVALID_ARGUMENT);
        assert!(lock.is_null());
        assert_eq!(other, LlmlbLockInfo::default());

        let mut state = MaybeUninit::<LlmlbLockState>::uninit();
        // SAFETY: as above; out_state is only written on OK.
        let status = unsafe {
            llmlb_lock_dir_probe(misaligned_dir, 8000, state.as_mut_ptr(), ptr::null_mut())
        };
        assert_eq!(status, LLMLB_STATUS_INVALID_ARGUMENT);

        let mut slot = [0u64; 2];
        let out_dir = slot.as_mut_ptr().cast::<u8>().wrapping_add(1).cast();
        let path = c_path(&locks);
        // SAFETY: the misaligned out_dir is refused before any write.
        let status = unsafe { llmlb_lock_dir_open(path.as_ptr(), out_dir) };
        assert_eq!(status, LLMLB_STATUS_INVALID_ARGUMENT);
        assert_eq!(slot, [0; 2]);
        assert!(!locks.exists(), "refused before anything is created");

        // SAFETY: a misaligned pointer is left alone (and reported), never freed.
        unsafe { llmlb_lock_dir_close(misaligned_dir) };
    }

    #[test]
    fn dir_handle_and_path_calls_see_the_same_lock() {
        let tmp = tempfile::tempdir().unwrap();
        let locks = tmp.path().join("locks");
        let path = c_path(&locks);
        let dir = open(&locks);
        let mut lock = ptr::null_mut();
        // SAFETY: a live handle and valid out pointers.
        let status = unsafe { llmlb_lock_dir_acquire(dir, 8001, &mut lock, ptr::null_mut()) };
        assert_eq!(status, LLMLB_STATUS_OK);
        // Written into uninitialised memory: out parameters are never read.
        let mut state = MaybeUninit::<LlmlbLockState>::uninit();
        // SAFETY: valid pointers.
        let status =
            unsafe { llmlb_lock_probe(path.as_ptr(), 8001, state.as_mut_ptr(), ptr::null_mut()) };
        assert_eq!(status, LLMLB_STATUS_OK);
        // SAFETY: written on OK.
        assert_eq!(
            unsafe { state.assume_init() },
            LlmlbLockState::LLMLB_STATE_HELD
        );
        // SAFETY: live handles, each freed once.
        unsafe {
            assert_eq!(llmlb_lock_release(lock), LLMLB_STATUS_OK);
            llmlb_lock_dir_close(dir);
        }
        assert!(!locks.join("serve_8001.lock").exists());
    }
}
