//! C ABI for the llmlb per-port server lock.
//!
//! A thin shell over [`llmlb::lock`]: every function checks its pointers,
//! calls the library, maps the result onto [`LlmlbStatus`], and writes its
//! out parameters as documented. The header `include/llmlb_lock.h` is
//! generated from this file by cbindgen (`ffi/cbindgen.toml`); the doc
//! comments below are the C documentation.
//!
//! Conventions (ownership, NULL, threads, fork) are in the header preamble and
//! the README's "C API conventions".
//!
//! # What it builds
//!
//! `cargo build --release -p llmlb-lock-ffi` gives `libllmlb_lock.so`
//! (`.dylib`, `.dll`) and `libllmlb_lock.a` in `target/release`, declared by
//! the committed `include/llmlb_lock.h`. It depends on `llmlb` without its
//! `cli` feature, so the library carries the lock and none of the CLI's
//! crates. Ready-made launchers: `ffi/examples/launcher.c` (C) and
//! `ffi/python/` (Python, through ctypes).
//!
//! # Examples
//!
//! In C, take port 8000 in the default lock dir, as `llmlb serve` would:
//!
//! ```c
//! #include <llmlb_lock.h>
//! LlmlbLock *lock;
//! LlmlbLockInfo other;
//! LlmlbStatus s = llmlb_lock_acquire(NULL, 8000, &lock, &other);
//! if (s == LLMLB_STATUS_ALREADY_RUNNING) { /* other.pid holds it */ }
//! else if (s != LLMLB_STATUS_OK) { fprintf(stderr, "%s\n", llmlb_last_error()); }
//! else { /* serve, then: */ llmlb_lock_release(lock); }
//! ```
//!
//! The same calls from Rust (this crate is also an rlib), here in a private
//! lock dir; a second acquire is refused with the holder's PID:
//!
//! ```
//! use llmlb_lock::*;
//! use std::ffi::CString;
//!
//! # let tmp = tempfile::tempdir().unwrap();
//! let dir = CString::new(tmp.path().join("locks").to_str().unwrap()).unwrap();
//! let (mut lock, mut other) = (std::ptr::null_mut(), LlmlbLockInfo::default());
//! // SAFETY: a NUL-terminated path and valid out pointers.
//! let s = unsafe { llmlb_lock_acquire(dir.as_ptr(), 8000, &mut lock, &mut other) };
//! assert_eq!(s, LlmlbStatus::LLMLB_STATUS_OK);
//!
//! let mut second = std::ptr::null_mut();
//! // SAFETY: as above.
//! let s = unsafe { llmlb_lock_acquire(dir.as_ptr(), 8000, &mut second, &mut other) };
//! assert_eq!(s, LlmlbStatus::LLMLB_STATUS_ALREADY_RUNNING);
//! assert_eq!(other.pid, std::process::id());
//! assert!(second.is_null());
//!
//! // SAFETY: the live handle from the first acquire, released once.
//! assert_eq!(unsafe { llmlb_lock_release(lock) }, LlmlbStatus::LLMLB_STATUS_OK);
//! ```

// The enum constants are spelled exactly as in C (the contract fixes them),
// so Rust callers and the header read the same.
#![allow(non_camel_case_types)]

mod boundary;
mod dir;
mod handover;
mod serve;
// serve's life needs tokio's networking, which `--cfg loom` builds (the
// root crate's loom check, which builds this crate as a dev-dependency)
// leave out.
#[cfg(not(loom))]
mod serve_exec;
mod stop;
mod wait;

use std::ffi::{c_char, c_int};
use std::ptr;

use llmlb::lock::{check_port, lock_file_name, LockInfo, PortGuard};

use boundary::{FfiError, Out};
use dir::DirArg;
pub use dir::{
    llmlb_lock_dir_acquire, llmlb_lock_dir_close, llmlb_lock_dir_open, llmlb_lock_dir_probe,
    LlmlbLockDir,
};
pub use handover::{
    llmlb_handover_offer, llmlb_handover_take, llmlb_offer_fd, llmlb_offer_free, llmlb_offer_poll,
    LlmlbOffer,
};
pub use serve::{
    llmlb_lock_acquire_with_state, llmlb_lock_dir_acquire_with_state, llmlb_lock_set_state,
    llmlb_port_listener, LlmlbServeState,
};
#[cfg(not(loom))]
pub use serve_exec::{llmlb_serve_exec, LlmlbServeOptions, LLMLB_SERVE_ZERO_MS};
pub use stop::{llmlb_lock_wait_stop, LLMLB_WAIT_FOREVER};
pub use wait::{llmlb_lock_acquire_timeout, llmlb_lock_dir_acquire_timeout};

/// Result of every `llmlb_lock_*` call. Values are explicit and never reused;
/// new statuses get new numbers.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LlmlbStatus {
    /// Success.
    LLMLB_STATUS_OK = 0,
    /// Another process holds the port's lock (see `out_other`).
    LLMLB_STATUS_ALREADY_RUNNING = 1,
    /// A NULL or misaligned pointer, port 0, a relative, empty or non-UTF-8
    /// `lock_dir`, or a path buffer that is too small.
    LLMLB_STATUS_INVALID_ARGUMENT = 2,
    /// A system call failed (permissions, full disk, a file system without
    /// locks), or readers kept the lock busy; `llmlb_last_error` says which.
    LLMLB_STATUS_IO_ERROR = 3,
    /// The lock dir or lock file is unsafe to use: a symlink, not a
    /// directory/regular file, owned by another user, or group/world
    /// writable. Nothing was written.
    LLMLB_STATUS_UNSAFE_PATH = 4,
    /// A bug inside the library was caught at the boundary (no unwinding
    /// into C). The call had no effect beyond what `llmlb_last_error` says.
    LLMLB_STATUS_PANIC = 5,
    /// `llmlb_port_listener`: nothing listens on the port (an answer, like
    /// `LLMLB_STATUS_ALREADY_RUNNING`, not a failure).
    LLMLB_STATUS_NOT_LISTENING = 6,
    /// `llmlb_handover_take`: another successor is taking the port over, or
    /// its holder did not answer in time; nothing was taken or stopped, try
    /// again later.
    LLMLB_STATUS_BUSY = 7,
    /// The call needs what this platform lacks (`llmlb_handover_offer` on
    /// Windows: no descriptor passing); nothing changed.
    LLMLB_STATUS_UNSUPPORTED = 8,
    /// The lock was handed over to a successor (see `llmlb_handover_offer`):
    /// its record is the successor's, and this process writes nothing to it.
    /// Every call on the lock but `llmlb_lock_release` says so.
    LLMLB_STATUS_HANDED_OVER = 9,
}

/// What `llmlb_lock_probe` observed about a port.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LlmlbLockState {
    /// No lock file (or an empty one nobody holds): the port can be taken.
    LLMLB_STATE_FREE = 0,
    /// A live process holds the lock.
    LLMLB_STATE_HELD = 1,
    /// A lock file with content that nobody holds: its holder died. The next
    /// acquire reclaims it.
    LLMLB_STATE_STALE = 2,
}

/// Who holds (or held) a port, as recorded in its lock file. All zero means
/// "none" or "unreadable".
///
/// Fields are only ever appended (the serving state came after the first
/// three); a caller compiled against this header allocates the whole struct.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LlmlbLockInfo {
    /// Process id of the holder.
    pub pid: u32,
    /// The port the lock guards.
    pub port: u16,
    /// When the holder took the lock: milliseconds since 1970-01-01T00:00:00Z.
    pub started_at_unix_ms: i64,
    /// When `serve_state` was set: milliseconds since 1970-01-01T00:00:00Z;
    /// 0 when no state is recorded. (Before `serve_state`, so the struct
    /// gains no padding.)
    pub serve_state_since_unix_ms: i64,
    /// The serving state the holder recorded (`llmlb_lock_set_state`);
    /// `LLMLB_SERVE_STATE_READY` (0) when it recorded none.
    pub serve_state: LlmlbServeState,
}

impl From<&LockInfo> for LlmlbLockInfo {
    fn from(info: &LockInfo) -> Self {
        LlmlbLockInfo {
            pid: info.pid,
            port: info.port,
            started_at_unix_ms: info.started_at.timestamp_millis(),
            serve_state_since_unix_ms: info
                .state
                .and(info.state_since)
                .map_or(0, |t| t.timestamp_millis()),
            serve_state: info.serve_state().into(),
        }
    }
}

fn info_or_zero(info: Option<&LockInfo>) -> LlmlbLockInfo {
    info.map(LlmlbLockInfo::from).unwrap_or_default()
}

/// A held port lock (opaque). Created by `llmlb_lock_acquire` (or
/// `llmlb_handover_take`), freed by `llmlb_lock_release`.
pub struct LlmlbLock {
    held: handover::Held,
}

impl LlmlbLock {
    fn new(guard: PortGuard) -> LlmlbLock {
        LlmlbLock {
            held: handover::Held::Own(guard),
        }
    }
}

/// Takes the lock for `port`, reclaiming it if its previous holder died.
///
/// `lock_dir`: an absolute UTF-8 path, created (mode 0700) if missing; NULL
/// means the default, exactly as the `llmlb` CLI resolves it
/// (`LLMLB_LOCK_DIR` if set, else the per-user default dir, e.g.
/// `/tmp/llmlb-<uid>`, which no other variable moves). Borrowed for the call.
///
/// On `LLMLB_STATUS_OK`, `*out_lock` is a new handle owned by the caller
/// (free it with `llmlb_lock_release`) and `*out_other`, if `out_other` is not
/// NULL, is zeroed for a clean acquire or holds the dead holder's info when a
/// stale lock was reclaimed (zeroed if it was unreadable).
/// On `LLMLB_STATUS_ALREADY_RUNNING`, `*out_lock` is NULL and `*out_other`
/// holds the current holder's info (zeroed if unreadable); its lock file is
/// left untouched. On any other status `*out_lock` is NULL and `*out_other`
/// is zeroed.
///
/// Port 0, a NULL `out_lock` or a misaligned `out_lock`/`out_other` give
/// `LLMLB_STATUS_INVALID_ARGUMENT`; even then, whichever of the two is
/// usable (non-NULL and aligned) is cleared as above. Never blocks waiting
/// for a holder.
///
/// Threads: safe to call from any thread. Fork: the handle is inherited by a
/// forked child, see `llmlb_lock_release` and `llmlb_lock_adopt`.
///
/// # Safety
/// `lock_dir` is NULL or a NUL-terminated string; `out_lock` is NULL or valid
/// for writing a pointer; `out_other` is NULL or valid for writing an
/// `LlmlbLockInfo`.
#[no_mangle]
pub unsafe extern "C" fn llmlb_lock_acquire(
    lock_dir: *const c_char,
    port: u16,
    out_lock: *mut *mut LlmlbLock,
    out_other: *mut LlmlbLockInfo,
) -> LlmlbStatus {
    // SAFETY: the caller's contract above is the one acquire needs.
    unsafe {
        dir::acquire(
            "llmlb_lock_acquire",
            DirArg::Path(lock_dir),
            port,
            out_lock,
            out_other,
        )
    }
}

/// Releases the lock and frees the handle: removes the lock file (while still
/// locked) and closes the descriptor.
///
/// The handle is consumed whatever the status, except for NULL
/// (`LLMLB_STATUS_INVALID_ARGUMENT`); never use it again. On
/// `LLMLB_STATUS_IO_ERROR` the file could not be removed: the lock is still
/// dropped (descriptor closed) and the leftover file is a stale lock the next
/// acquire reclaims.
///
/// Fork: the file is removed only when it records the calling process. In a
/// forked child that did not `llmlb_lock_adopt`, this only closes the child's
/// descriptor: the parent keeps its lock and its file. Called by the parent
/// after the child adopted, it likewise only closes the parent's descriptor.
/// The lock is never explicitly unlocked, since parent and child share it.
///
/// After `llmlb_lock_fd` handed the descriptor out, the file is removed only
/// if no other process still holds the descriptor (see `llmlb_lock_fd`).
///
/// Handover (see `llmlb_handover_take`, `llmlb_handover_offer`): a lock
/// taken over and not yet committed (not offered, or within its grace) goes
/// back to its predecessor, which serves on, and nothing is removed; a lock
/// a successor has taken is the successor's, and nothing is written or
/// removed; an offered lock is withdrawn first (a successor caught
/// mid-handover is given up to 5 s to take the port or give it back).
///
/// Threads: do not use the handle concurrently with any other call on it.
///
/// # Safety
/// `lock` is NULL or a handle from `llmlb_lock_acquire` not yet released in
/// this process.
#[no_mangle]
pub unsafe extern "C" fn llmlb_lock_release(lock: *mut LlmlbLock) -> LlmlbStatus {
    boundary::status("llmlb_lock_release", || {
        let lock = boundary::require_ptr(lock.cast_const(), "lock")?.cast_mut();
        // SAFETY: a live handle from llmlb_lock_acquire (the caller's
        // contract), checked non-NULL and aligned; ownership comes back here.
        let lock = unsafe { Box::from_raw(lock) };
        lock.held.release()
    })
}

/// Makes the calling process the holder of an inherited lock, for launchers
/// that daemonize (take the lock, fork, let the parent exit): called in the
/// forked child, the lock file then records the child's PID and identity, so
/// `llmlb status`/`llmlb stop` see and signal the child, and the child's
/// `llmlb_lock_release` removes the file. The parent's handle is no longer
/// the owner: its release only closes its descriptor. (pidfile(3) does the
/// same with `pidfile_write` in the child.)
///
/// In the process that already owns the lock this is a no-op returning
/// `LLMLB_STATUS_OK`. NULL, or a lock taken over or offered
/// (`llmlb_handover_take`, `llmlb_handover_offer`: shared with another
/// server), gives `LLMLB_STATUS_INVALID_ARGUMENT`. On
/// `LLMLB_STATUS_IO_ERROR` ownership is unchanged.
///
/// Threads: do not use the handle concurrently with any other call on it.
///
/// # Safety
/// `lock` is NULL or a live handle (possibly inherited through fork).
#[no_mangle]
pub unsafe extern "C" fn llmlb_lock_adopt(lock: *mut LlmlbLock) -> LlmlbStatus {
    boundary::status("llmlb_lock_adopt", || {
        // SAFETY: the caller's contract above.
        let lock = unsafe { boundary::handle_mut(lock, "lock") }?;
        lock.held.own("llmlb_lock_adopt")?.adopt()?;
        Ok(())
    })
}

/// Copies what the lock file records about this handle's holder into
/// `*out_info`: the acquiring process, or the adopting child after
/// `llmlb_lock_adopt`.
///
/// NULL `lock` or `out_info` gives `LLMLB_STATUS_INVALID_ARGUMENT`;
/// `*out_info` is written only on `LLMLB_STATUS_OK`.
///
/// Threads: may run concurrently with other `llmlb_lock_info` calls on the
/// same handle, not with release or adopt.
///
/// # Safety
/// `lock` is NULL or a live handle; `out_info` is NULL or valid for writing an
/// `LlmlbLockInfo`.
#[no_mangle]
pub unsafe extern "C" fn llmlb_lock_info(
    lock: *const LlmlbLock,
    out_info: *mut LlmlbLockInfo,
) -> LlmlbStatus {
    boundary::status("llmlb_lock_info", || {
        // SAFETY: the caller's contract above.
        let lock = unsafe { boundary::required_ref(lock, "lock") }?;
        // SAFETY: the caller's contract above.
        let mut out_info = unsafe { Out::required(out_info, "out_info") }?;
        out_info.write(lock.held.with(|g| LlmlbLockInfo::from(g.info()))?);
        Ok(())
    })
}

/// Observes `port` without taking it: never creates the lock dir or file,
/// never makes a concurrent acquire fail. A missing lock dir is
/// `LLMLB_STATE_FREE`. `lock_dir` as in `llmlb_lock_acquire` (NULL: default).
///
/// On `LLMLB_STATUS_OK`, `*out_state` is the state and `*out_info` (if
/// `out_info` is not NULL) holds the holder's info for `LLMLB_STATE_HELD`, the
/// dead holder's for `LLMLB_STATE_STALE` (zeroed when unreadable), and zeros
/// for `LLMLB_STATE_FREE`. On any other status `*out_state` is not written and
/// `*out_info` is zeroed. NULL `out_state` or port 0 give
/// `LLMLB_STATUS_INVALID_ARGUMENT`.
///
/// Threads: safe to call from any thread.
///
/// # Safety
/// `lock_dir` is NULL or a NUL-terminated string; `out_state` is NULL or valid
/// for writing an `LlmlbLockState`; `out_info` is NULL or valid for writing an
/// `LlmlbLockInfo`.
#[no_mangle]
pub unsafe extern "C" fn llmlb_lock_probe(
    lock_dir: *const c_char,
    port: u16,
    out_state: *mut LlmlbLockState,
    out_info: *mut LlmlbLockInfo,
) -> LlmlbStatus {
    // SAFETY: the caller's contract above is the one probe needs.
    unsafe {
        dir::probe(
            "llmlb_lock_probe",
            DirArg::Path(lock_dir),
            port,
            out_state,
            out_info,
        )
    }
}

/// Writes the lock file path for `port`, `<lock dir>/serve_<port>.lock`,
/// NUL-terminated into `buf`. `lock_dir` as in `llmlb_lock_acquire` (NULL:
/// default). Touches no file.
///
/// `*out_len` (when `out_len` is not NULL) gets the path's length without the
/// NUL whenever the path could be computed, and 0 when it could not (port 0,
/// bad `lock_dir`).
///
/// Sizing call: with `buf = NULL` (any `buf_len`) and a non-NULL `out_len`,
/// only `*out_len` is written and the status is `LLMLB_STATUS_OK`; allocate
/// `*out_len + 1` bytes and call again. A non-NULL `buf` with a `buf_len`
/// below length + 1 gives `LLMLB_STATUS_INVALID_ARGUMENT`, writes nothing to
/// `buf` and still sets `*out_len`. `buf` and `out_len` both NULL give
/// `LLMLB_STATUS_INVALID_ARGUMENT`.
///
/// Threads: safe to call from any thread.
///
/// # Safety
/// `lock_dir` is NULL or a NUL-terminated string; `buf` is NULL or valid for
/// writing `buf_len` bytes; `out_len` is NULL or valid for writing a `size_t`.
#[no_mangle]
pub unsafe extern "C" fn llmlb_lock_path(
    lock_dir: *const c_char,
    port: u16,
    buf: *mut c_char,
    buf_len: usize,
    out_len: *mut usize,
) -> LlmlbStatus {
    boundary::status("llmlb_lock_path", || {
        // SAFETY: the caller's contract above.
        let mut out_len = unsafe { Out::optional(out_len, "out_len") }?;
        if let Some(len) = out_len.as_mut() {
            len.write(0);
        }
        let port = check_port(port)?;
        // SAFETY: the caller's contract above.
        let dir = unsafe { boundary::lock_dir(lock_dir) }?;
        let bytes = boundary::path_bytes(&dir.join(lock_file_name(port)))?;
        if let Some(len) = out_len.as_mut() {
            len.write(bytes.len());
        }
        let Some(buf) = boundary::check_ptr(buf.cast_const(), "buf")? else {
            return match out_len {
                // The sizing call: a normal use, not a failure.
                Some(_) => Ok(()),
                None => Err(FfiError::invalid(
                    "buf and out_len are both NULL; pass out_len to learn the size, or a buffer",
                )),
            };
        };
        if buf_len <= bytes.len() {
            return Err(FfiError::invalid(format!(
                "buf_len {buf_len} is too small for the {}-byte path plus its NUL",
                bytes.len()
            )));
        }
        let buf = buf.cast_mut().cast::<u8>();
        // SAFETY: buf is non-NULL and valid for writing buf_len > bytes.len()
        // bytes (the caller's contract); written through the raw pointer, as
        // the caller's buffer may be uninitialised. u8 and c_char have the
        // same layout; a Vec's buffer never overlaps the caller's.
        unsafe {
            ptr::copy_nonoverlapping(bytes.as_ptr(), buf, bytes.len());
            buf.add(bytes.len()).write(0);
        }
        Ok(())
    })
}

/// The message of the last failing call on this thread: one line naming the
/// port or path and, where there is one, the fix. Never NULL: `""` until the
/// first failure on this thread. Successful calls do not clear it.
///
/// Ownership: the string belongs to the library; it stays valid until the
/// next failing call on the same thread (or the thread's exit). Copy it to
/// keep it. Threads: each thread has its own message.
#[no_mangle]
pub extern "C" fn llmlb_last_error() -> *const c_char {
    boundary::guard("llmlb_last_error", c"".as_ptr(), boundary::last_error)
}

/// The library version, e.g. `"0.1.0"`: a static NUL-terminated string, never
/// freed, safe from any thread.
#[no_mangle]
pub extern "C" fn llmlb_lock_version() -> *const c_char {
    const VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), "\0");
    boundary::guard("llmlb_lock_version", c"".as_ptr(), || {
        VERSION.as_ptr().cast()
    })
}

// --- Exec mode: the launcher's child and its process group (issue 9.4) ---

/// Records `pgid`, the process group of the command this launcher runs,
/// in the lock file, so `llmlb status` shows it and `llmlb stop --force`
/// kills the whole group, grandchildren included, not only the launcher.
/// The identity of the group's leader (the process whose PID is `pgid`) is
/// recorded with it: `stop` signals the group only while that leader is
/// still the same process, never on a bare number. `pgid` 0 clears both.
///
/// Put the child in a group of its own first (`setpgid(child, child)` in
/// both parent and child, or `setsid`), then record `pgid = child`, before
/// the launcher could be stopped. A `pgid` that is not a live process
/// leading its own group (and always 1) gives
/// `LLMLB_STATUS_INVALID_ARGUMENT`; so does any non-zero `pgid` on Windows.
/// On `LLMLB_STATUS_IO_ERROR` the file keeps its previous record.
///
/// Threads: do not use the handle concurrently with any other call on it.
///
/// # Safety
/// `lock` is NULL or a live handle.
#[no_mangle]
pub unsafe extern "C" fn llmlb_lock_set_child_pgid(lock: *mut LlmlbLock, pgid: u32) -> LlmlbStatus {
    boundary::status("llmlb_lock_set_child_pgid", || {
        // SAFETY: the caller's contract above.
        let lock = unsafe { boundary::handle_mut(lock, "lock") }?;
        let pgid = match pgid {
            0 => None,
            pgid if pgid == 1 || !llmlb::supervise::exec::leads_process_group(pgid) => {
                return Err(FfiError::invalid(format!(
                    "pgid {pgid} is not a live process leading its own process group; put the child in its own group (setpgid(child, child)) and pass its PID"
                )))
            }
            pgid => Some(pgid),
        };
        lock.held.with_mut(|g| g.set_child_pgid(pgid))??;
        Ok(())
    })
}

/// Unix only: writes the lock's file descriptor to `*out_fd`, so a launcher
/// can let its child inherit the lock. The lock belongs to the open file
/// description (flock), so every process that keeps this descriptor holds
/// the port's lock: the port then stays locked while any of the command's
/// tree lives, even if the launcher is killed.
///
/// The descriptor stays owned by the handle: never close it in this
/// process; it is valid until `llmlb_lock_release`. It is close-on-exec: to
/// pass it on, clear `FD_CLOEXEC` in the forked child only
/// (`fcntl(fd, F_SETFD, 0)` before `execvp`; Python: `pass_fds`).
///
/// After this call, `llmlb_lock_release` closes the handle's descriptor and
/// takes the lock again before removing the file: if a process still holds
/// the descriptor (a descendant the launcher's clean-up did not reach), the
/// file stays, held, until that process exits (then it is stale). So end
/// the child's process group first (SIGTERM, then SIGKILL after a deadline).
///
/// NULL `lock` or `out_fd`, or a lock taken over or offered (its
/// descriptor is shared with another server's already), gives
/// `LLMLB_STATUS_INVALID_ARGUMENT`; on Windows
/// the call gives `LLMLB_STATUS_IO_ERROR`. `*out_fd` is -1 on any non-OK
/// status (when `out_fd` is not NULL).
///
/// Threads: do not use the handle concurrently with any other call on it.
///
/// # Safety
/// `lock` is NULL or a live handle; `out_fd` is NULL or valid for writing an
/// `int`.
#[no_mangle]
pub unsafe extern "C" fn llmlb_lock_fd(lock: *mut LlmlbLock, out_fd: *mut c_int) -> LlmlbStatus {
    boundary::status("llmlb_lock_fd", || {
        let out_fd =
            boundary::check_ptr(out_fd.cast_const(), "out_fd")?.map(<*const c_int>::cast_mut);
        if let Some(out) = out_fd {
            // SAFETY: non-NULL and aligned (checked); writable per the
            // caller's contract. Written through the raw pointer.
            unsafe { out.write(-1) };
        }
        // SAFETY: the caller's contract above.
        let lock = unsafe { boundary::handle_mut(lock, "lock") }?;
        let out = out_fd.ok_or_else(|| FfiError::invalid("out_fd is NULL"))?;
        if !cfg!(unix) {
            return Err(FfiError {
                status: LlmlbStatus::LLMLB_STATUS_IO_ERROR,
                message:
                    "llmlb_lock_fd: lock descriptors are not passed to children on this platform"
                        .to_owned(),
            });
        }
        let fd = llmlb::supervise::exec::lock_fd(lock.held.own("llmlb_lock_fd")?);
        // SAFETY: as above.
        unsafe { out.write(fd) };
        Ok(())
    })
}
