//! The C boundary itself: the one panic boundary, the one pointer checker,
//! the thread-local last error, and the `lock_dir` argument. Nothing here
//! knows about the lock protocol; `lib.rs` maps each call onto `llmlb::lock`.

use std::cell::RefCell;
use std::ffi::{c_char, CStr, CString};
use std::marker::PhantomData;
use std::mem::MaybeUninit;
use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};

use llmlb::lock::{resolve_lock_dir, LockError, LOCK_DIR_ENV};

use crate::LlmlbStatus;

/// Why a call failed: the status the caller sees and the one-line message
/// `llmlb_last_error` returns.
#[derive(Debug)]
pub(crate) struct FfiError {
    pub(crate) status: LlmlbStatus,
    pub(crate) message: String,
}

impl FfiError {
    /// A bad argument (NULL, port 0, a relative or non-UTF-8 `lock_dir`, a
    /// buffer too small).
    pub(crate) fn invalid(message: impl Into<String>) -> FfiError {
        FfiError {
            status: LlmlbStatus::LLMLB_STATUS_INVALID_ARGUMENT,
            message: message.into(),
        }
    }
}

impl From<LockError> for FfiError {
    /// The status table of the C contract; the message is the library's own
    /// Display (one line naming the port/path and the fix), so C, Python and
    /// the CLI say the same thing.
    fn from(err: LockError) -> FfiError {
        let status = match &err {
            LockError::AlreadyRunning { .. } => LlmlbStatus::LLMLB_STATUS_ALREADY_RUNNING,
            LockError::InvalidPort { .. } => LlmlbStatus::LLMLB_STATUS_INVALID_ARGUMENT,
            LockError::UnsafeLockDir { .. } | LockError::UnsafeLockFile { .. } => {
                LlmlbStatus::LLMLB_STATUS_UNSAFE_PATH
            }
            // Io, Busy, and any variant added later: an operational failure.
            _ => LlmlbStatus::LLMLB_STATUS_IO_ERROR,
        };
        FfiError {
            status,
            message: err.to_string(),
        }
    }
}

thread_local! {
    /// Per thread, like errno: one thread's failure never overwrites the
    /// message another thread is about to read.
    static LAST_ERROR: RefCell<Option<CString>> = const { RefCell::new(None) };
}

pub(crate) fn set_last_error(message: &str) {
    // A message cannot carry an interior NUL through a C string; paths from C
    // never contain one, but an OS message could in theory.
    let c = CString::new(message.replace('\0', "\\0")).unwrap_or_default();
    // try_with: during thread teardown the slot may be gone; losing the
    // message then is better than aborting.
    let _ = LAST_ERROR.try_with(|slot| *slot.borrow_mut() = Some(c));
}

/// The current thread's last error message, or `""` before the first failure.
/// The pointer stays valid until the next failing call on this thread.
pub(crate) fn last_error() -> *const c_char {
    LAST_ERROR
        .try_with(|slot| slot.borrow().as_ref().map(|c| c.as_ptr()))
        .ok()
        .flatten()
        .unwrap_or(c"".as_ptr())
}

/// Runs `f` inside the panic boundary, returning `on_panic` if it unwinds.
/// Every exported function goes through here (directly or via [`status`]):
/// unwinding into C is undefined behaviour.
pub(crate) fn guard<T>(name: &'static str, on_panic: T, f: impl FnOnce() -> T) -> T {
    match panic::catch_unwind(AssertUnwindSafe(f)) {
        Ok(value) => value,
        Err(payload) => {
            let detail = payload
                .downcast_ref::<&str>()
                .copied()
                .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
                .unwrap_or("non-string panic payload");
            set_last_error(&format!(
                "{name}: internal panic ({detail}); this is a bug in llmlb, please report it"
            ));
            on_panic
        }
    }
}

/// [`guard`] for functions returning a status: `Ok` → `LLMLB_STATUS_OK`, an
/// error → its status with its message stored for `llmlb_last_error`, a panic
/// → `LLMLB_STATUS_PANIC`.
pub(crate) fn status(name: &'static str, f: impl FnOnce() -> Result<(), FfiError>) -> LlmlbStatus {
    guard(name, LlmlbStatus::LLMLB_STATUS_PANIC, || match f() {
        Ok(()) => LlmlbStatus::LLMLB_STATUS_OK,
        Err(err) => {
            let message = if err.status == LlmlbStatus::LLMLB_STATUS_INVALID_ARGUMENT {
                // Argument errors name the function: "out_lock is NULL" alone
                // does not say which call was wrong.
                format!("{name}: {}", err.message)
            } else {
                err.message
            };
            set_last_error(&message);
            err.status
        }
    })
}

/// The one pointer check: `Ok(None)` for NULL, `Ok(Some(ptr))` for a non-NULL
/// pointer that is suitably aligned for `T`, an `INVALID_ARGUMENT` otherwise.
/// Callers turn `Some` into a reference in one `unsafe` line whose remaining
/// obligation (the pointee is valid for the documented lifetime) is the C
/// caller's, as the header says.
pub(crate) fn check_ptr<T>(ptr: *const T, what: &str) -> Result<Option<*const T>, FfiError> {
    if ptr.is_null() {
        Ok(None)
    } else if !ptr.is_aligned() {
        Err(FfiError::invalid(format!("{what} is not aligned")))
    } else {
        Ok(Some(ptr))
    }
}

/// [`check_ptr`] for a pointer that must not be NULL.
pub(crate) fn require_ptr<T>(ptr: *const T, what: &str) -> Result<*const T, FfiError> {
    check_ptr(ptr, what)?.ok_or_else(|| FfiError::invalid(format!("{what} is NULL")))
}

/// A C out parameter: a non-NULL, aligned pointer into the caller's memory,
/// only ever written with [`pointer::write`], never read and never turned into
/// a `&mut T`. The caller's memory may hold any bytes before the call (an
/// out-of-range enum value, uninitialised stack), and a `&mut T` over it would
/// claim it already holds a valid `T`; `write` also never drops the old bytes.
pub(crate) struct Out<'a, T> {
    ptr: *mut T,
    _caller: PhantomData<&'a mut MaybeUninit<T>>,
}

impl<'a, T> Out<'a, T> {
    /// An optional out parameter: `None` for NULL, `INVALID_ARGUMENT` when
    /// misaligned.
    ///
    /// # Safety
    /// If non-NULL, `ptr` must be valid for writes of a `T` for `'a`.
    pub(crate) unsafe fn optional(ptr: *mut T, what: &str) -> Result<Option<Out<'a, T>>, FfiError> {
        Ok(check_ptr(ptr.cast_const(), what)?.map(|p| Out {
            ptr: p.cast_mut(),
            _caller: PhantomData,
        }))
    }

    /// A required out parameter: NULL or misaligned is `INVALID_ARGUMENT`.
    ///
    /// # Safety
    /// If non-NULL, `ptr` must be valid for writes of a `T` for `'a`.
    pub(crate) unsafe fn required(ptr: *mut T, what: &str) -> Result<Out<'a, T>, FfiError> {
        let ptr = require_ptr(ptr.cast_const(), what)?.cast_mut();
        Ok(Out {
            ptr,
            _caller: PhantomData,
        })
    }

    /// Stores `value`, overwriting whatever bytes were there.
    pub(crate) fn write(&mut self, value: T) {
        // SAFETY: non-NULL and aligned (checked at construction) and valid for
        // writes of a T for 'a (the constructor's contract).
        unsafe { self.ptr.write(value) }
    }
}

/// A library-owned handle (`LlmlbLock`) the caller passes back for a call that
/// changes it. Its memory is ours (a `Box` we handed out), so a `&mut` is
/// sound; only exclusive use during the call is the caller's promise.
///
/// # Safety
/// If non-NULL, `ptr` must be a live handle from this library, not used by
/// any other call for `'a`.
pub(crate) unsafe fn handle_mut<'a, T>(ptr: *mut T, what: &str) -> Result<&'a mut T, FfiError> {
    let ptr = require_ptr(ptr.cast_const(), what)?.cast_mut();
    // SAFETY: non-NULL and aligned (checked); liveness and exclusivity are
    // the caller's contract.
    Ok(unsafe { &mut *ptr })
}

/// A required `const` in parameter.
///
/// # Safety
/// If non-NULL, `ptr` must be valid for reads of a `T` for `'a`.
pub(crate) unsafe fn required_ref<'a, T>(ptr: *const T, what: &str) -> Result<&'a T, FfiError> {
    let ptr = require_ptr(ptr, what)?;
    // SAFETY: non-NULL and aligned (checked); validity is the caller's contract.
    Ok(unsafe { &*ptr })
}

/// The lock dir a call uses: NULL → the default (`LLMLB_LOCK_DIR`, else the
/// per-user dir), exactly as the CLI resolves it. The result must be an
/// absolute path; a relative, empty or non-UTF-8 `lock_dir` is refused here
/// with `INVALID_ARGUMENT` rather than interpreted.
///
/// # Safety
/// If non-NULL, `lock_dir` must point to a NUL-terminated string.
pub(crate) unsafe fn lock_dir(lock_dir: *const c_char) -> Result<PathBuf, FfiError> {
    let explicit = match check_ptr(lock_dir, "lock_dir")? {
        None => None,
        Some(ptr) => {
            // SAFETY: non-NULL; NUL termination is the caller's contract.
            let raw = unsafe { CStr::from_ptr(ptr) };
            let text = raw.to_str().map_err(|_| {
                FfiError::invalid(format!(
                    "lock_dir {:?} is not valid UTF-8; pass a UTF-8 path or NULL for the default",
                    raw.to_string_lossy()
                ))
            })?;
            if text.is_empty() {
                return Err(FfiError::invalid(
                    "lock_dir is empty; pass an absolute path or NULL for the default",
                ));
            }
            Some(PathBuf::from(text))
        }
    };
    let source = if explicit.is_some() {
        "lock_dir"
    } else {
        LOCK_DIR_ENV
    };
    let dir = resolve_lock_dir(explicit.as_deref());
    if !dir.is_absolute() {
        return Err(FfiError::invalid(format!(
            "{source} {} is a relative path (its meaning would depend on the working directory); give an absolute path",
            dir.display()
        )));
    }
    Ok(dir)
}

/// The bytes of `path` for a C caller: raw on Unix (any path the OS accepts),
/// UTF-8 on Windows.
pub(crate) fn path_bytes(path: &Path) -> Result<Vec<u8>, FfiError> {
    #[cfg(unix)]
    {
        use std::os::unix::ffi::OsStrExt;
        Ok(path.as_os_str().as_bytes().to_vec())
    }
    #[cfg(not(unix))]
    {
        path.to_str().map(|s| s.as_bytes().to_vec()).ok_or_else(|| {
            FfiError::invalid(format!("lock path {} is not valid UTF-8", path.display()))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn last() -> String {
        // SAFETY: last_error always returns a valid NUL-terminated string.
        unsafe { CStr::from_ptr(last_error()) }
            .to_string_lossy()
            .into_owned()
    }

    #[test]
    fn a_panic_becomes_the_panic_status_with_a_message() {
        let status = status("llmlb_test", || panic!("boom {}", 42));
        assert_eq!(status, LlmlbStatus::LLMLB_STATUS_PANIC);
        let msg = last();
        assert!(
            msg.contains("llmlb_test") && msg.contains("boom 42"),
            "{msg}"
        );
        assert_eq!(guard("llmlb_test", 7, || panic!("static")), 7);
        assert!(last().contains("static"));
    }

    #[test]
    fn last_error_starts_empty_and_is_per_thread() {
        std::thread::spawn(|| {
            assert_eq!(last(), "");
            let s = status("llmlb_x", || Err(FfiError::invalid("out_x is NULL")));
            assert_eq!(s, LlmlbStatus::LLMLB_STATUS_INVALID_ARGUMENT);
            assert_eq!(last(), "llmlb_x: out_x is NULL");
            // OK does not clear it (errno-like).
            assert_eq!(status("llmlb_x", || Ok(())), LlmlbStatus::LLMLB_STATUS_OK);
            assert_eq!(last(), "llmlb_x: out_x is NULL");
        })
        .join()
        .unwrap();
        std::thread::spawn(|| assert_eq!(last(), ""))
            .join()
            .unwrap();
    }

    #[test]
    fn statuses_follow_the_contract_table() {
        let cases = [
            (
                LockError::InvalidPort { port: 0 },
                LlmlbStatus::LLMLB_STATUS_INVALID_ARGUMENT,
            ),
            (
                LockError::Busy { path: "/x".into() },
                LlmlbStatus::LLMLB_STATUS_IO_ERROR,
            ),
            (
                LockError::UnsafeLockFile {
                    path: "/x".into(),
                    reason: "is a symlink",
                },
                LlmlbStatus::LLMLB_STATUS_UNSAFE_PATH,
            ),
            (
                LockError::AlreadyRunning {
                    port: 1,
                    path: "/x".into(),
                    holder: None,
                },
                LlmlbStatus::LLMLB_STATUS_ALREADY_RUNNING,
            ),
        ];
        for (err, want) in cases {
            let text = err.to_string();
            let got = FfiError::from(err);
            assert_eq!(got.status, want);
            assert_eq!(got.message, text);
        }
    }

    #[test]
    fn pointers_are_checked_for_null_and_alignment() {
        let value = 0u32;
        assert!(check_ptr(std::ptr::null::<u32>(), "p").unwrap().is_none());
        assert!(check_ptr(&value as *const u32, "p").unwrap().is_some());
        let misaligned = (&value as *const u32 as *const u8).wrapping_add(1) as *const u32;
        let err = check_ptr(misaligned, "out_info").unwrap_err();
        assert_eq!(err.status, LlmlbStatus::LLMLB_STATUS_INVALID_ARGUMENT);
        assert!(err.message.contains("out_info"));
    }
}
