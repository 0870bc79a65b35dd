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
        let state = serve_state_arg(state)?;
        lock.held.with_mut(|g| g.set_state(state))??;
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

/// What `--ready http` asks of a server, once: sends `GET path HTTP/1.1`
/// to `host`:`port` and reads the status line, exactly as `llmlb serve
/// --ready http` probes (one implementation for the CLI, C and Python).
/// Returns 1 when the status is 2xx or 3xx (ready), 0 for anything else (not
/// yet: another status, a refused connection, no complete status line within
/// 1 s, a reply that is not HTTP/1), or a negated `LLMLB_STATUS_*` with
/// `llmlb_last_error` set: `-LLMLB_STATUS_INVALID_ARGUMENT` for port 0, a
/// non-UTF-8 `host` or `path`, a `path` that does not start with `/` or has
/// spaces, control characters or non-ASCII bytes (percent-encode them), or
/// more than 1024 bytes, or `out` non-NULL with `out_len` 0;
/// `-LLMLB_STATUS_PANIC` on a bug. Blocks for at most about a second
/// (plus a name lookup when `host` is a name).
///
/// `host` NULL means `127.0.0.1`; a wildcard (`0.0.0.0`, `::`) is probed on
/// its loopback. `path` NULL means `/health`. When `out` is not NULL, it
/// gets what the probe got as printable text, NUL-terminated, cut to
/// `out_len - 1` bytes (at a character boundary): `GET /health: 503`, `GET
/// /health: connection refused`, or on a negative return the error message
/// (empty on `-LLMLB_STATUS_PANIC`);
/// a launcher logs it while waiting ("still waiting … (last: GET /health:
/// 503)").
///
/// Threads: safe to call from any thread.
///
/// # Safety
/// `host` and `path` are NULL or NUL-terminated strings; `out` is NULL or
/// valid for writing `out_len` bytes.
#[no_mangle]
pub unsafe extern "C" fn llmlb_ready_http_probe(
    host: *const c_char,
    port: u16,
    path: *const c_char,
    out: *mut c_char,
    out_len: usize,
) -> c_int {
    const NAME: &str = "llmlb_ready_http_probe";
    let panicked = -(LlmlbStatus::LLMLB_STATUS_PANIC as c_int);
    if !out.is_null() && out_len > 0 {
        // SAFETY: `out` is valid for `out_len` > 0 bytes (the caller's
        // contract): an empty string from the start, so even a caught
        // panic leaves text the caller can read.
        unsafe { out.write(0) };
    }
    boundary::guard(NAME, panicked, || {
        if !out.is_null() && out_len == 0 {
            let message = format!("{NAME}: out_len is 0; pass room for the text and its NUL");
            boundary::set_last_error(&message);
            return -(LlmlbStatus::LLMLB_STATUS_INVALID_ARGUMENT as c_int);
        }
        // SAFETY: the caller's contract above.
        let result = unsafe { probe_args(host, port, path) }
            .map(|(host, path)| llmlb::supervise::ready::http_probe(&host, port, &path));
        let (code, text) = match result {
            Ok(probed) => (c_int::from(probed.ready), probed.text),
            Err(err) => {
                let message = format!("{NAME}: {}", err.message);
                boundary::set_last_error(&message);
                (-(err.status as c_int), message)
            }
        };
        if !out.is_null() {
            let mut end = text.len().min(out_len - 1);
            while !text.is_char_boundary(end) {
                end -= 1;
            }
            // SAFETY: `out` is non-NULL and valid for `out_len` > `end`
            // bytes (the caller's contract); a byte pointer needs no
            // alignment, and `text` is our own memory, not overlapping.
            unsafe {
                std::ptr::copy_nonoverlapping(text.as_ptr(), out.cast::<u8>(), end);
                out.add(end).write(0);
            }
        }
        code
    })
}

/// `llmlb_ready_http_probe`'s strings, checked: the host (NULL: loopback)
/// and the path (NULL: `/health`).
///
/// # Safety
/// `host` and `path` are NULL or NUL-terminated strings.
unsafe fn probe_args(
    host: *const c_char,
    port: u16,
    path: *const c_char,
) -> Result<(String, String), FfiError> {
    check_port(port)?;
    // SAFETY: the caller's contract.
    let text = |ptr: *const c_char, what: &str, default: &str| match unsafe {
        ptr.as_ref().map(|p| std::ffi::CStr::from_ptr(p))
    } {
        None => Ok(default.to_owned()),
        Some(raw) => raw.to_str().map(str::to_owned).map_err(|_| {
            FfiError::invalid(format!(
                "{what} {:?} is not valid UTF-8",
                raw.to_string_lossy()
            ))
        }),
    };
    let host = text(host, "host", "127.0.0.1")?;
    let path = text(path, "path", llmlb::supervise::ready::DEFAULT_HTTP_PATH)?;
    llmlb::supervise::ready::check_http_path(&path).map_err(FfiError::invalid)?;
    Ok((host, path))
}

/// Checks `path` as `llmlb_ready_http_probe` (and `llmlb serve --ready
/// http:PATH`) would, without probing: `LLMLB_STATUS_OK` if it can be sent,
/// else `LLMLB_STATUS_INVALID_ARGUMENT` with `llmlb_last_error` saying why
/// (NULL, not UTF-8, not starting with `/`, spaces, control characters or
/// non-ASCII bytes, more than 1024 bytes). For a launcher that parses
/// `--ready http:PATH` before it takes the lock.
///
/// Threads: safe to call from any thread.
///
/// # Safety
/// `path` is NULL or a NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn llmlb_ready_http_path_check(path: *const c_char) -> LlmlbStatus {
    boundary::status("llmlb_ready_http_path_check", || {
        let path = boundary::require_ptr(path, "path")?;
        // SAFETY: non-NULL; NUL termination is the caller's contract.
        let raw = unsafe { std::ffi::CStr::from_ptr(path) };
        let path = raw.to_str().map_err(|_| {
            FfiError::invalid(format!(
                "path {:?} is not valid UTF-8",
                raw.to_string_lossy()
            ))
        })?;
        llmlb::supervise::ready::check_http_path(path).map_err(FfiError::invalid)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::CStr;

    fn probe(host: Option<&CStr>, port: u16, path: Option<&CStr>, len: usize) -> (c_int, String) {
        let mut out = vec![0x55u8 as c_char; len.max(1)];
        let ptr = if len == 0 {
            std::ptr::null_mut()
        } else {
            out.as_mut_ptr()
        };
        // SAFETY: valid strings or NULL; `out` has `len` bytes.
        let code = unsafe {
            llmlb_ready_http_probe(
                host.map_or(std::ptr::null(), CStr::as_ptr),
                port,
                path.map_or(std::ptr::null(), CStr::as_ptr),
                ptr,
                len,
            )
        };
        let text = if len == 0 {
            String::new()
        } else {
            // SAFETY: always NUL-terminated within `len` bytes when written.
            unsafe { CStr::from_ptr(out.as_ptr()) }
                .to_string_lossy()
                .into_owned()
        };
        (code, text)
    }

    #[test]
    fn the_probe_says_what_it_got_and_checks_its_arguments() {
        let free = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        assert_eq!(
            probe(None, free, None, 64),
            (0, "GET /health: connection refused".to_owned())
        );
        // Cut to fit, NUL-terminated; NULL `out` is fine.
        assert_eq!(
            probe(Some(c"0.0.0.0"), free, Some(c"/x"), 6),
            (0, "GET /".to_owned())
        );
        assert_eq!(probe(None, free, None, 0).0, 0);

        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        std::thread::spawn(move || {
            use std::io::{Read, Write};
            let (mut conn, _) = listener.accept().unwrap();
            let mut buf = [0u8; 1024];
            let _ = conn.read(&mut buf);
            let _ = conn.write_all(b"HTTP/1.1 204 No Content\r\n\r\n");
        });
        assert_eq!(
            probe(Some(c"127.0.0.1"), port, Some(c"/ok"), 64),
            (1, "GET /ok: 204".to_owned())
        );

        let invalid = -(LlmlbStatus::LLMLB_STATUS_INVALID_ARGUMENT as c_int);
        let (code, text) = probe(None, 0, None, 128);
        assert_eq!(code, invalid);
        assert!(text.starts_with("llmlb_ready_http_probe: "), "{text}");
        let (code, text) = probe(None, 80, Some(c"health"), 128);
        assert_eq!(code, invalid);
        assert!(text.contains("must start with `/`"), "{text}");
        let (code, _) = probe(None, 80, Some(c"/a\x1b"), 128);
        assert_eq!(code, invalid);
        // SAFETY: a valid pointer with out_len 0.
        let mut byte: c_char = 7;
        let code =
            unsafe { llmlb_ready_http_probe(std::ptr::null(), 80, std::ptr::null(), &mut byte, 0) };
        assert_eq!((code, byte), (invalid, 7));
    }

    #[test]
    fn paths_are_checked_without_a_probe() {
        // SAFETY: valid strings or NULL.
        unsafe {
            assert_eq!(
                llmlb_ready_http_path_check(c"/v1/models".as_ptr()),
                LlmlbStatus::LLMLB_STATUS_OK
            );
            for bad in [c"", c"v1", c"/a b", c"/\t"] {
                assert_eq!(
                    llmlb_ready_http_path_check(bad.as_ptr()),
                    LlmlbStatus::LLMLB_STATUS_INVALID_ARGUMENT,
                    "{bad:?}"
                );
            }
            assert_eq!(
                llmlb_ready_http_path_check(std::ptr::null()),
                LlmlbStatus::LLMLB_STATUS_INVALID_ARGUMENT
            );
        }
    }
}
