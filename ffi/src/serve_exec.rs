//! `llmlb_serve_exec`: `llmlb serve [options] -- argv` as one C call. The
//! server's life (lock, readiness, signals, pidfile, handover, reload, proxy,
//! drain) is `llmlb::supervise::server::serve`; this file only turns the C
//! struct into its options, as the CLI turns flags into them.

use std::ffi::{c_char, c_int, CStr, OsString};
use std::mem::{offset_of, size_of};
use std::path::PathBuf;
use std::time::Duration;

use llmlb::supervise::server::{self, Mode, ServeOptions, EXIT_FAILURE, EXIT_USAGE};

use crate::boundary::{self, FfiError};
use crate::LLMLB_WAIT_FOREVER;

/// A duration field's value for zero seconds, where 0 itself means
/// `llmlb serve`'s default: what the flag's `0` means (`replace_grace_ms`:
/// commit at once; `drain_timeout_ms`: cut at once; `wait_ms`: fail at once,
/// the default anyway; `ready_timeout_ms`: no limit, as `--ready-timeout 0`).
pub const LLMLB_SERVE_ZERO_MS: u32 = u32::MAX - 1;

/// The largest `size` accepted: a bigger one is not a struct of any version
/// (a garbage `size` must not make the library scan the caller's memory).
const MAX_SIZE: usize = 4096;

/// What `llmlb serve` is told, for `llmlb_serve_exec`. Versioned by its
/// size, as `openat2`'s and `clone3`'s: set `size` to
/// `sizeof(struct LlmlbServeOptions)` and zero everything else first
/// (`LlmlbServeOptions o = {0}; o.size = sizeof o;`, `{}` in C++, or
/// `memset`); a zero
/// field is `llmlb serve`'s default for it. Fields are only ever appended
/// (into `reserved` first): a program built against an older, shorter
/// struct passes its smaller `size` and gets the defaults for the fields it
/// does not know; a newer, longer struct is accepted by an older library
/// only if every byte it does not know is zero.
///
/// Durations are milliseconds: 0 is the default, `LLMLB_SERVE_ZERO_MS` is
/// zero seconds (the flag's `0`), `LLMLB_WAIT_FOREVER` is no limit.
/// Booleans are 0 or 1 (anything else is refused, so they can grow into
/// choices).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct LlmlbServeOptions {
    /// `sizeof(struct LlmlbServeOptions)` as the caller was compiled; at
    /// least `offsetof(port) + sizeof(port)`, at most 4096.
    pub size: usize,
    /// `--port`: the port to lock and serve, 1..65535 (required).
    pub port: u16,
    /// `--backend-port` (needs `proxy`): the command's private port; 0: one
    /// the kernel picks.
    pub backend_port: u16,
    /// `--max-connections` (needs `proxy`): connections forwarded at once;
    /// 0: 4096.
    pub max_connections: u32,
    /// `--lock-dir`: an absolute UTF-8 path; NULL: `LLMLB_LOCK_DIR`, else
    /// the per-user default, as the CLI resolves it. A dir given here is
    /// repeated in the commands messages suggest (`llmlb stop --port P
    /// --lock-dir DIR`).
    pub lock_dir: *const c_char,
    /// `--host` (UTF-8): the address to bind (with `pass_socket`, `proxy`,
    /// `replace`) and the command's `LLMLB_HOST`; NULL: `0.0.0.0`.
    pub host: *const c_char,
    /// `--ready`: `"listen"`, `"notify"` (not on Windows), `"immediate"`,
    /// `"http"` or `"http:/PATH"`; NULL: `"listen"`.
    pub ready: *const c_char,
    /// `--pidfile` (Unix): written once the lock is taken, removed at exit;
    /// NULL: none.
    pub pidfile: *const c_char,
    /// `--ready-timeout`: 0: none (60 s with `replace`).
    pub ready_timeout_ms: u32,
    /// `--wait`: how long to wait for a held port; 0: fail at once.
    pub wait_ms: u32,
    /// `--replace-timeout`: 0: 5 s.
    pub replace_timeout_ms: u32,
    /// `--replace-grace`: 0: 2 s.
    pub replace_grace_ms: u32,
    /// `--drain-timeout`: 0: 30 s after a handover and for a stop in proxy
    /// mode, 3 s for a stop otherwise.
    pub drain_timeout_ms: u32,
    /// `--pass-socket` (Unix): bind the port and pass the socket to the
    /// command as descriptor 3 (`LISTEN_FDS`).
    pub pass_socket: u8,
    /// `--proxy`: the command serves on a private port (`{port}` in its
    /// arguments), behind llmlb's proxy on the public one.
    pub proxy: u8,
    /// `--replace`: take the port over from its running holder.
    pub replace: u8,
    /// Read socket activation (`LISTEN_PID`, `LISTEN_FDS`) as `llmlb serve`
    /// does: a socket passed to this process is served (its port must be
    /// `port`), and the variables are removed from the environment either
    /// way. Edits the environment: set it only while no other thread runs.
    pub socket_activation: u8,
    /// After the release, die of the SIGTERM or SIGINT the command died of
    /// (forwarded by the server), as `llmlb serve` does, instead of
    /// returning 128+N: for a launcher's `main`, so its service manager sees
    /// a clean stop. Flushes nothing of the caller's (C stdio, Python).
    pub die_of_stop_signal: u8,
    /// Install `llmlb serve`'s log lines on stderr (`LLMLB_LOG_LEVEL`); a
    /// no-op if the process has a Rust tracing subscriber already.
    pub log: u8,
    /// Must be zero: room for the next fields, so that appending them never
    /// lands in padding a caller left uninitialised.
    pub reserved: [u8; 6],
}

/// The smallest `size`: through `port`, the one field without a default.
const MIN_SIZE: usize = offset_of!(LlmlbServeOptions, port) + size_of::<u16>();

/// Each field's (offset, length): a `size` must not end inside one (half a
/// pointer is no pointer).
const FIELDS: [(usize, usize); 19] = {
    use LlmlbServeOptions as O;
    let ptr = size_of::<*const c_char>();
    [
        (offset_of!(O, size), size_of::<usize>()),
        (offset_of!(O, port), 2),
        (offset_of!(O, backend_port), 2),
        (offset_of!(O, max_connections), 4),
        (offset_of!(O, lock_dir), ptr),
        (offset_of!(O, host), ptr),
        (offset_of!(O, ready), ptr),
        (offset_of!(O, pidfile), ptr),
        (offset_of!(O, ready_timeout_ms), 4),
        (offset_of!(O, wait_ms), 4),
        (offset_of!(O, replace_timeout_ms), 4),
        (offset_of!(O, replace_grace_ms), 4),
        (offset_of!(O, drain_timeout_ms), 4),
        (offset_of!(O, pass_socket), 1),
        (offset_of!(O, proxy), 1),
        (offset_of!(O, replace), 1),
        (offset_of!(O, socket_activation), 1),
        (offset_of!(O, die_of_stop_signal), 1),
        (offset_of!(O, log), 1),
    ]
};

impl LlmlbServeOptions {
    /// Every field zero (every default), `size` this struct's own.
    fn zeroed() -> LlmlbServeOptions {
        LlmlbServeOptions {
            size: size_of::<LlmlbServeOptions>(),
            port: 0,
            backend_port: 0,
            max_connections: 0,
            lock_dir: std::ptr::null(),
            host: std::ptr::null(),
            ready: std::ptr::null(),
            pidfile: std::ptr::null(),
            ready_timeout_ms: 0,
            wait_ms: 0,
            replace_timeout_ms: 0,
            replace_grace_ms: 0,
            drain_timeout_ms: 0,
            pass_socket: 0,
            proxy: 0,
            replace: 0,
            socket_activation: 0,
            die_of_stop_signal: 0,
            log: 0,
            reserved: [0; 6],
        }
    }
}

/// Runs `argv` (NULL-terminated: the program, then its arguments) under the
/// lock of `opts->port`, exactly as `llmlb serve [options] -- argv` does,
/// every policy included: readiness, pidfile, pass-socket, proxy, replace,
/// handovers and reloads asked of it, the service manager's notifications,
/// timeouts, drain. Blocks until the server ends and returns the exit status
/// `llmlb serve` would exit with: the command's code, 128+N where serve
/// would die of signal N (unless `die_of_stop_signal`), 1 after an `Error:`
/// line (a held port, a failed bind), 2 for bad options.
///
/// Signals are handled as `serve` handles them, for the whole process:
/// SIGTERM and SIGINT stop, SIGUSR2 reloads, SIGHUP, SIGUSR1, SIGQUIT and
/// SIGWINCH go to the command's process group. Handlers installed before
/// the call are chained to (so reset to `SIG_DFL` any that must not run,
/// e.g. Python's SIGINT), and stay installed after it returns.
///
/// A reload (`llmlb reload`, SIGUSR2) starts this process's own command line
/// again with `--replace` inserted before its `--` (or at its end), in the
/// same working directory: a launcher's `main` must accept `--replace` there
/// and map it onto `replace`.
///
/// Bad input (NULL `opts` or `argv`, an empty `argv`, port 0, a `size` that
/// is too small, too large, cuts a field, or brings unknown non-zero bytes,
/// non-zero `reserved`, a boolean other than 0/1, a non-UTF-8 or empty
/// string, an unknown `ready`, `backend_port` or `max_connections` without
/// `proxy`) returns 2 after one `Error: ...` line on stderr, also kept for
/// `llmlb_last_error`, touching nothing; so do the combinations
/// `llmlb serve` refuses. Never unwinds into C: an internal panic returns 1
/// with `llmlb_last_error` saying so.
///
/// Threads: call it from one thread at a time (one server per process);
/// other threads may run meanwhile (not with `socket_activation`). Fork:
/// the server's threads do not survive a fork; do not fork while it runs.
///
/// # Safety
/// `opts` is NULL or points to at least `opts->size` readable bytes that
/// begin with a `size_t`; its strings are NULL or NUL-terminated; `argv` is
/// NULL or a NULL-terminated array of NUL-terminated strings. All are
/// borrowed for the call.
#[no_mangle]
pub unsafe extern "C" fn llmlb_serve_exec(
    opts: *const LlmlbServeOptions,
    argv: *const *const c_char,
) -> c_int {
    const NAME: &str = "llmlb_serve_exec";
    boundary::guard(NAME, EXIT_FAILURE, || {
        // SAFETY: the caller's contract above.
        let parsed = unsafe { options(opts, argv) };
        let (options, flags) = match parsed {
            Ok(parsed) => parsed,
            Err(err) => {
                eprintln!("Error: {}", err.message);
                boundary::set_last_error(&format!("{NAME}: {}", err.message));
                return match err.status {
                    crate::LlmlbStatus::LLMLB_STATUS_INVALID_ARGUMENT => EXIT_USAGE,
                    _ => EXIT_FAILURE,
                };
            }
        };
        if flags.log {
            server::init_logging();
        }
        let exit = server::serve(options);
        if flags.die_of_stop_signal {
            exit.die_or_code()
        } else {
            exit.code()
        }
    })
}

/// The two options that are not `serve`'s but the caller's process's.
struct ProcessFlags {
    log: bool,
    die_of_stop_signal: bool,
}

/// `ServeOptions` from the C arguments, or why not (a usage error).
///
/// # Safety
/// As [`llmlb_serve_exec`].
unsafe fn options(
    opts: *const LlmlbServeOptions,
    argv: *const *const c_char,
) -> Result<(ServeOptions, ProcessFlags), FfiError> {
    // SAFETY: the caller's contract.
    let o = unsafe { read_versioned(opts) }?;
    // SAFETY: the caller's contract.
    let command = unsafe { command(argv) }?;
    if o.port == 0 {
        return Err(FfiError::invalid(
            "port 0 cannot be served: give a port in 1..65535",
        ));
    }
    if o.reserved.iter().any(|&b| b != 0) {
        return Err(FfiError::invalid(
            "reserved bytes are not zero: zero the whole struct before setting its fields",
        ));
    }
    let flag = |value: u8, name: &str| match value {
        0 => Ok(false),
        1 => Ok(true),
        other => Err(FfiError::invalid(format!("{name} is {other}: give 0 or 1"))),
    };
    let proxy = flag(o.proxy, "proxy")?;
    let pass_socket = flag(o.pass_socket, "pass_socket")?;
    let replace = flag(o.replace, "replace")?;
    let socket_activation = flag(o.socket_activation, "socket_activation")?;
    let flags = ProcessFlags {
        log: flag(o.log, "log")?,
        die_of_stop_signal: flag(o.die_of_stop_signal, "die_of_stop_signal")?,
    };
    if !proxy && (o.backend_port != 0 || o.max_connections != 0) {
        return Err(FfiError::invalid(
            "backend_port and max_connections apply to proxy mode only: set proxy, or zero them",
        ));
    }
    // SAFETY: the caller's contract.
    let lock_dir = unsafe { boundary::lock_dir(o.lock_dir) }?;
    // SAFETY: the caller's contract (each string NULL or NUL-terminated).
    let (host, ready, pidfile) = unsafe {
        (
            text(o.host, "host")?,
            text(o.ready, "ready")?,
            path(o.pidfile, "pidfile")?,
        )
    };
    let ready = match ready {
        None => Default::default(),
        Some(text) => text
            .parse()
            .map_err(|why| FfiError::invalid(format!("ready: {why}")))?,
    };

    let mut options = ServeOptions::new(lock_dir, o.port);
    if !o.lock_dir.is_null() {
        options.lock_dir_hint = server::explicit_lock_dir_hint(&options.lock_dir);
    }
    if let Some(host) = host {
        options.host = host;
    }
    options.mode = if proxy {
        Mode::Proxy {
            command,
            backend_port: (o.backend_port != 0).then_some(o.backend_port),
            max_connections: match o.max_connections {
                0 => llmlb::supervise::proxy::DEFAULT_MAX_CONNECTIONS,
                n => usize::try_from(n).unwrap_or(usize::MAX),
            },
        }
    } else {
        Mode::Exec(command)
    };
    options.ready = ready;
    options.ready_timeout = match o.ready_timeout_ms {
        0 => None,
        // serve's own spelling of "no limit", as `--ready-timeout 0`.
        LLMLB_SERVE_ZERO_MS | LLMLB_WAIT_FOREVER => Some(Duration::ZERO),
        ms => Some(millis(ms)),
    };
    if let Some(wait) = duration(o.wait_ms) {
        options.wait = wait;
    }
    options.pidfile = pidfile;
    options.pass_socket = pass_socket;
    options.replace = replace;
    if let Some(timeout) = duration(o.replace_timeout_ms) {
        options.replace_timeout = timeout;
    }
    if let Some(grace) = duration(o.replace_grace_ms) {
        options.replace_grace = grace;
    }
    options.drain_timeout = duration(o.drain_timeout_ms);
    if socket_activation {
        options.activated = activated()?;
    }
    // serve would refuse these too, but only the caller's thread here can
    // keep the message for llmlb_last_error.
    if let Some(problem) = server::usage_problem(&options) {
        return Err(FfiError::invalid(problem));
    }
    Ok((options, flags))
}

/// A duration field: `None` for the default (0).
fn duration(ms: u32) -> Option<Duration> {
    match ms {
        0 => None,
        LLMLB_SERVE_ZERO_MS => Some(Duration::ZERO),
        LLMLB_WAIT_FOREVER => Some(Duration::MAX),
        ms => Some(millis(ms)),
    }
}

fn millis(ms: u32) -> Duration {
    Duration::from_millis(u64::from(ms))
}

/// Copies the caller's struct of `opts->size` bytes into one of ours: the
/// fields it lacks stay zero (their defaults), and bytes beyond ours must be
/// zero.
///
/// # Safety
/// As [`llmlb_serve_exec`]'s `opts`.
unsafe fn read_versioned(opts: *const LlmlbServeOptions) -> Result<LlmlbServeOptions, FfiError> {
    let opts = boundary::require_ptr(opts, "opts")?;
    // SAFETY: a non-NULL, aligned pointer to a struct that begins with its
    // size_t `size` (the caller's contract); nothing else is read before
    // `size` says how much there is.
    let size = unsafe { opts.cast::<usize>().read() };
    let ours = size_of::<LlmlbServeOptions>();
    if !(MIN_SIZE..=MAX_SIZE).contains(&size) {
        return Err(FfiError::invalid(format!(
            "opts->size {size} is not the size of a struct LlmlbServeOptions (this library's is {ours}): set it to sizeof(struct LlmlbServeOptions)"
        )));
    }
    if let Some((offset, len)) = FIELDS
        .iter()
        .find(|&&(offset, len)| offset < size && size < offset + len)
    {
        return Err(FfiError::invalid(format!(
            "opts->size {size} ends inside the field at bytes {offset}..{} (this library's struct is {ours} bytes): set it to sizeof(struct LlmlbServeOptions)",
            offset + len
        )));
    }
    let bytes = opts.cast::<u8>();
    if size > ours {
        // SAFETY: the caller's `size` bytes are readable (its contract);
        // read as bytes, which any memory is.
        let tail = unsafe { std::slice::from_raw_parts(bytes.add(ours), size - ours) };
        if let Some(at) = tail.iter().position(|&b| b != 0) {
            return Err(FfiError::invalid(format!(
                "opts->size {size} brings fields this library does not know (its struct is {ours} bytes) and byte {} of them is not zero: link against a newer libllmlb_lock, or leave the newer fields zero",
                ours + at
            )));
        }
    }
    let mut out = LlmlbServeOptions::zeroed();
    // SAFETY: min(size, ours) bytes are readable from the caller (its
    // contract) and writable in `out`; every field's bytes are either wholly
    // copied or left at their zero, which is a valid value for each field
    // type (integers, NULL pointers, bytes); the two do not overlap.
    unsafe {
        std::ptr::copy_nonoverlapping(
            bytes,
            (&mut out as *mut LlmlbServeOptions).cast::<u8>(),
            size.min(ours),
        );
    }
    Ok(out)
}

/// The command: `argv` up to its NULL, at least the program.
///
/// # Safety
/// As [`llmlb_serve_exec`]'s `argv`.
unsafe fn command(argv: *const *const c_char) -> Result<Vec<OsString>, FfiError> {
    let argv = boundary::require_ptr(argv, "argv")?;
    let mut command = Vec::new();
    for i in 0.. {
        // SAFETY: entries up to and including the NULL one are readable
        // (the caller's contract).
        let arg = unsafe { argv.add(i).read() };
        if arg.is_null() {
            break;
        }
        // SAFETY: a NUL-terminated string (the caller's contract).
        let arg = unsafe { CStr::from_ptr(arg) };
        command.push(os_string(arg, &format!("argv[{i}]"))?);
    }
    match command.first() {
        None => Err(FfiError::invalid(
            "argv is empty: give the command to run, then NULL",
        )),
        Some(program) if program.is_empty() => Err(FfiError::invalid(
            "argv[0] is empty: give the program to run",
        )),
        Some(_) => Ok(command),
    }
}

/// A command-line argument: any bytes on Unix, UTF-8 on Windows (where the
/// command line is UTF-16).
fn os_string(arg: &CStr, what: &str) -> Result<OsString, FfiError> {
    #[cfg(unix)]
    {
        let _ = what;
        use std::os::unix::ffi::OsStrExt as _;
        Ok(std::ffi::OsStr::from_bytes(arg.to_bytes()).to_owned())
    }
    #[cfg(not(unix))]
    {
        arg.to_str().map(OsString::from).map_err(|_| {
            FfiError::invalid(format!(
                "{what} {:?} is not valid UTF-8",
                arg.to_string_lossy()
            ))
        })
    }
}

/// An optional UTF-8 string field: `None` for NULL; empty is refused (NULL
/// is the way to say "the default").
///
/// # Safety
/// `ptr` is NULL or NUL-terminated.
unsafe fn text(ptr: *const c_char, what: &str) -> Result<Option<String>, FfiError> {
    let Some(ptr) = boundary::check_ptr(ptr, what)? else {
        return Ok(None);
    };
    // SAFETY: non-NULL and NUL-terminated (the caller's contract).
    let raw = unsafe { CStr::from_ptr(ptr) };
    let text = raw.to_str().map_err(|_| {
        FfiError::invalid(format!(
            "{what} {:?} is not valid UTF-8",
            raw.to_string_lossy()
        ))
    })?;
    if text.is_empty() {
        return Err(FfiError::invalid(format!(
            "{what} is empty: give a value, or NULL for the default"
        )));
    }
    Ok(Some(text.to_owned()))
}

/// An optional path field: any bytes on Unix, UTF-8 elsewhere.
///
/// # Safety
/// `ptr` is NULL or NUL-terminated.
unsafe fn path(ptr: *const c_char, what: &str) -> Result<Option<PathBuf>, FfiError> {
    let Some(ptr) = boundary::check_ptr(ptr, what)? else {
        return Ok(None);
    };
    // SAFETY: non-NULL and NUL-terminated (the caller's contract).
    let raw = unsafe { CStr::from_ptr(ptr) };
    if raw.is_empty() {
        return Err(FfiError::invalid(format!(
            "{what} is empty: give a path, or NULL for none"
        )));
    }
    Ok(Some(PathBuf::from(os_string(raw, what)?)))
}

/// The socket passed by socket activation, if any (its port is checked
/// with serve's other usage problems).
fn activated() -> Result<Option<llmlb::supervise::activation::Activated>, FfiError> {
    // What the service manager passed is wrong, not the caller's
    // arguments: `llmlb serve` fails with 1 on it.
    llmlb::supervise::activation::activated_listener().map_err(|e| FfiError {
        status: crate::LlmlbStatus::LLMLB_STATUS_IO_ERROR,
        message: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_layout_has_no_padding_for_an_appended_field_to_land_in() {
        let (last, len) = FIELDS[FIELDS.len() - 1];
        let reserved = offset_of!(LlmlbServeOptions, reserved);
        assert_eq!(last + len, reserved);
        assert_eq!(reserved + 6, size_of::<LlmlbServeOptions>());
        let covered: usize = FIELDS.iter().map(|&(_, len)| len).sum::<usize>() + 6;
        assert_eq!(covered, size_of::<LlmlbServeOptions>());
    }

    #[test]
    fn durations_map_zero_to_the_default_and_the_two_specials() {
        assert_eq!(duration(0), None);
        assert_eq!(duration(1500), Some(Duration::from_millis(1500)));
        assert_eq!(duration(LLMLB_SERVE_ZERO_MS), Some(Duration::ZERO));
        assert_eq!(duration(LLMLB_WAIT_FOREVER), Some(Duration::MAX));
    }
}
