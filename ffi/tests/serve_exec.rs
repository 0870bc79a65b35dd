//! `llmlb_serve_exec`'s C contract: the size-versioned options struct (an
//! older, shorter struct works with the defaults; a newer, longer one only
//! with its unknown bytes zero), bad arguments answered with exit 2, one
//! `Error:` line and `llmlb_last_error`, never a panic; and a real command
//! run through it, in a child process (the call blocks and installs serve's
//! signal handlers), from a C program built against the header.

mod support;

use std::ffi::{c_char, CStr, CString};
use std::mem::{offset_of, size_of};
use std::ptr;

use llmlb_lock::{
    llmlb_last_error, llmlb_serve_exec, LlmlbServeOptions, LLMLB_SERVE_ZERO_MS, LLMLB_WAIT_FOREVER,
};

/// The struct as a C caller zeroes it (`= {0}`, then `size`).
fn zeroed() -> LlmlbServeOptions {
    // SAFETY: every field is an integer, a byte array or a raw pointer, for
    // which all-zero bytes are valid (NULL for the pointers).
    let mut o: LlmlbServeOptions = unsafe { std::mem::zeroed() };
    o.size = size_of::<LlmlbServeOptions>();
    o
}

fn last_error() -> String {
    // SAFETY: never NULL, NUL-terminated, valid until the next failing call
    // on this thread; copied at once.
    unsafe { CStr::from_ptr(llmlb_last_error()) }
        .to_string_lossy()
        .into_owned()
}

/// A NULL-terminated argv of C strings.
struct Argv {
    _strings: Vec<CString>,
    ptrs: Vec<*const c_char>,
}

fn argv(args: &[&str]) -> Argv {
    let strings: Vec<CString> = args.iter().map(|a| CString::new(*a).unwrap()).collect();
    let mut ptrs: Vec<*const c_char> = strings.iter().map(|s| s.as_ptr()).collect();
    ptrs.push(ptr::null());
    Argv {
        _strings: strings,
        ptrs,
    }
}

/// Calls it in this process with arguments that must be refused before
/// anything runs: the code and `llmlb_last_error`.
fn refused(opts: *const LlmlbServeOptions, argv: *const *const c_char) -> (i32, String) {
    // SAFETY: each case passes a valid struct (or NULL) and a valid argv (or
    // NULL); the call returns before serving (every case is refused).
    let code = unsafe { llmlb_serve_exec(opts, argv) };
    (code, last_error())
}

#[test]
fn bad_arguments_exit_2_naming_what_is_wrong_and_touch_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let locks = tmp.path().join("locks");
    let dir = CString::new(locks.to_str().unwrap()).unwrap();
    let true_argv = argv(&["true"]);
    let bad_utf8 = CString::new(vec![b'h', 0xff]).unwrap();
    let (empty, relative) = (CString::new("").unwrap(), CString::new("locks").unwrap());
    let (soon, no_slash) = (
        CString::new("soon").unwrap(),
        CString::new("http:nope").unwrap(),
    );
    let base = || {
        let mut o = zeroed();
        o.port = 8170;
        o.lock_dir = dir.as_ptr();
        o
    };
    let with = |f: &dyn Fn(&mut LlmlbServeOptions)| {
        let mut o = base();
        f(&mut o);
        o
    };
    let cases: Vec<(&str, LlmlbServeOptions, &str)> = vec![
        ("port 0", with(&|o| o.port = 0), "port 0"),
        (
            "size 0",
            with(&|o| o.size = 0),
            "opts->size 0 is not the size",
        ),
        ("size 4097", with(&|o| o.size = 4097), "opts->size 4097"),
        (
            "size inside lock_dir",
            with(&|o| o.size = offset_of!(LlmlbServeOptions, lock_dir) + 1),
            "ends inside the field",
        ),
        (
            "reserved",
            with(&|o| o.reserved[5] = 1),
            "reserved bytes are not zero",
        ),
        (
            "boolean 2",
            with(&|o| o.replace = 2),
            "replace is 2: give 0 or 1",
        ),
        (
            "host not UTF-8",
            with(&|o| o.host = bad_utf8.as_ptr()),
            "host",
        ),
        (
            "empty host",
            with(&|o| o.host = empty.as_ptr()),
            "host is empty",
        ),
        (
            "empty pidfile",
            with(&|o| o.pidfile = empty.as_ptr()),
            "pidfile is empty",
        ),
        (
            "relative lock_dir",
            with(&|o| o.lock_dir = relative.as_ptr()),
            "relative path",
        ),
        (
            "unknown ready",
            with(&|o| o.ready = soon.as_ptr()),
            "`soon` is not a readiness policy",
        ),
        (
            "bad http path",
            with(&|o| o.ready = no_slash.as_ptr()),
            "must start with `/`",
        ),
        (
            "backend_port without proxy",
            with(&|o| o.backend_port = 9000),
            "apply to proxy mode only",
        ),
        (
            "serve's own: pass_socket with proxy",
            with(&|o| {
                o.pass_socket = 1;
                o.proxy = 1;
            }),
            "--pass-socket and --proxy cannot go together",
        ),
    ];
    for (what, opts, fragment) in &cases {
        let (code, message) = refused(opts, true_argv.ptrs.as_ptr());
        assert_eq!(code, 2, "{what}: {message}");
        assert!(
            message.starts_with("llmlb_serve_exec: ") && message.contains(fragment),
            "{what}: {message}"
        );
        assert_eq!(message.lines().count(), 1, "{what}: {message}");
    }

    let o = base();
    let (code, message) = refused(ptr::null(), true_argv.ptrs.as_ptr());
    assert_eq!(
        (code, message.as_str()),
        (2, "llmlb_serve_exec: opts is NULL")
    );
    let (code, message) = refused(&o, ptr::null());
    assert_eq!(
        (code, message.as_str()),
        (2, "llmlb_serve_exec: argv is NULL")
    );
    let (code, message) = refused(&o, argv(&[]).ptrs.as_ptr());
    assert_eq!(code, 2);
    assert!(message.contains("argv is empty"), "{message}");
    let (code, message) = refused(&o, argv(&[""]).ptrs.as_ptr());
    assert_eq!(code, 2);
    assert!(message.contains("argv[0] is empty"), "{message}");

    assert!(!locks.exists(), "a refused call touched the lock dir");
}

/// Every `size` from 0 to past the limit is answered (a usage error, here
/// always: port 0), never a crash or a panic; a longer struct whose unknown
/// tail is zero is accepted (the error is about the port, not the size),
/// one with a non-zero byte there is refused naming the size.
#[test]
fn every_size_is_answered_and_only_a_zero_tail_is_accepted() {
    let ours = size_of::<LlmlbServeOptions>();
    // The caller's memory: a struct, then room for any newer fields, as u64
    // so it is aligned for the struct.
    let mut buf = vec![0u64; 1024];
    let true_argv = argv(&["true"]);
    for size in 0..=5000usize {
        buf.fill(0);
        buf[0] = size as u64;
        let (code, message) = refused(buf.as_ptr().cast(), true_argv.ptrs.as_ptr());
        assert_eq!(code, 2, "size {size}: {message}");
        assert!(!message.contains("panic"), "size {size}: {message}");
        let about_the_port = message.contains("port 0");
        let acceptable = size >= offset_of!(LlmlbServeOptions, port) + 2
            && size <= 4096
            && !message.contains("ends inside");
        assert_eq!(about_the_port, acceptable, "size {size}: {message}");
    }
    // A longer struct with one unknown byte set.
    let bytes = buf.as_mut_ptr().cast::<u8>();
    buf.fill(0);
    buf[0] = (ours + 16) as u64;
    // SAFETY: within the buffer (8 KiB).
    unsafe { bytes.add(ours + 9).write(1) };
    let (code, message) = refused(buf.as_ptr().cast(), true_argv.ptrs.as_ptr());
    assert_eq!(code, 2);
    assert!(
        message.contains(&format!("opts->size {}", ours + 16))
            && message.contains(&format!("byte {}", ours + 9)),
        "{message}"
    );
}

#[test]
fn the_duration_constants_are_the_headers() {
    assert_eq!(LLMLB_WAIT_FOREVER, u32::MAX);
    assert_eq!(LLMLB_SERVE_ZERO_MS, u32::MAX - 1);
    let header = std::fs::read_to_string(support::include_dir().join("llmlb_lock.h")).unwrap();
    assert!(header.contains("#define LLMLB_WAIT_FOREVER UINT32_MAX"));
    assert!(header.contains("#define LLMLB_SERVE_ZERO_MS (UINT32_MAX - 1)"));
}

#[cfg(unix)]
mod child {
    use std::os::unix::process::ExitStatusExt;
    use std::path::{Path, PathBuf};
    use std::process::{Command, Output, Stdio};
    use std::sync::OnceLock;
    use std::time::{Duration, Instant};

    use super::support::{self, describe, text};

    /// The C caller, built once per test run (static: nothing to find at
    /// run time).
    fn program() -> &'static Path {
        static EXE: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
        let (_, exe) = EXE.get_or_init(|| {
            let tmp = tempfile::tempdir().unwrap();
            let exe = tmp.path().join("serve_exec");
            let source = support::repo_root().join("ffi/tests/support/serve_exec.c");
            let cc = support::c_compiler();
            support::compile_c(&cc, &[source], &exe, support::Link::Static, false);
            (tmp, exe)
        });
        exe
    }

    /// A port nothing listens on now (exec mode checks that it can be
    /// bound before starting the command).
    fn free_port() -> u16 {
        let listener = std::net::TcpListener::bind(("0.0.0.0", 0)).unwrap();
        listener.local_addr().unwrap().port()
    }

    struct Run {
        tmp: tempfile::TempDir,
        port: u16,
    }

    impl Run {
        fn new() -> Run {
            Run {
                tmp: tempfile::tempdir().unwrap(),
                port: free_port(),
            }
        }

        fn locks(&self) -> PathBuf {
            self.tmp.path().join("locks")
        }

        fn command(&self, layout: &str, cmd: &[&str]) -> Command {
            let mut c = Command::new(program());
            c.arg(layout)
                .arg(self.port.to_string())
                .args(cmd)
                .env("LLMLB_LOCK_DIR", self.locks())
                .env_remove("NOTIFY_SOCKET")
                .env_remove("LISTEN_PID")
                .env_remove("LISTEN_FDS")
                .env_remove("LLMLB_PORT")
                .stdin(Stdio::null());
            c
        }

        fn output(&self, layout: &str, cmd: &[&str]) -> Output {
            self.command(layout, cmd).output().unwrap()
        }
    }

    const PRINT_PORT_EXIT_3: [&str; 3] = ["sh", "-c", "echo \"port=$LLMLB_PORT\"; exit 3"];

    /// The current struct, an older one that ends after `port` (garbage
    /// after it), and a newer one with a zero tail all run the command as
    /// serve does: its code, its port, the lock released.
    #[test]
    fn current_older_and_newer_structs_run_the_command() {
        for layout in ["current", "oldest", "newer-zero"] {
            let run = Run::new();
            let out = run.output(layout, &PRINT_PORT_EXIT_3);
            assert_eq!(out.status.code(), Some(3), "{layout}: {}", describe(&out));
            assert_eq!(
                text(&out.stdout),
                format!("port={}\n", run.port),
                "{layout}"
            );
            assert!(
                !run.locks()
                    .join(format!("serve_{}.lock", run.port))
                    .exists(),
                "{layout}: the lock file is left"
            );
        }
    }

    /// Refused before anything runs: exit 2, exactly one `Error:` line, the
    /// lock dir untouched.
    #[test]
    fn refusals_print_one_error_line_and_touch_nothing() {
        let cases: [(&str, &[&str], &str); 4] = [
            ("newer-set", &PRINT_PORT_EXIT_3, "opts->size"),
            ("null-opts", &PRINT_PORT_EXIT_3, "opts is NULL"),
            ("null-argv", &[], "argv is NULL"),
            ("current", &[], "argv is empty"),
        ];
        for (layout, cmd, fragment) in cases {
            let run = Run::new();
            let out = run.output(layout, cmd);
            assert_eq!(out.status.code(), Some(2), "{layout}: {}", describe(&out));
            let err = text(&out.stderr);
            assert_eq!(err.lines().count(), 1, "{layout}: {err}");
            assert!(
                err.starts_with("Error: ") && err.contains(fragment),
                "{layout}: {err}"
            );
            assert!(text(&out.stdout).is_empty(), "{layout}: the command ran");
            assert!(!run.locks().exists(), "{layout}: the lock dir was touched");
        }
    }

    /// SIGTERM is forwarded to the command; when it dies of it, the call
    /// returns 143 (128 + SIGTERM), or with `die_of_stop_signal` the caller
    /// dies of SIGTERM itself, after the release.
    #[test]
    fn a_stop_returns_128_plus_n_or_dies_of_the_signal_when_asked() {
        for (layout, code, signal) in [("current", Some(143), None), ("die", None, Some(15))] {
            let run = Run::new();
            let mut child = run
                .command(layout, &["sh", "-c", "echo up; exec sleep 600"])
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            let mut line = String::new();
            std::io::BufRead::read_line(
                &mut std::io::BufReader::new(child.stdout.take().unwrap()),
                &mut line,
            )
            .unwrap();
            assert_eq!(line, "up\n", "{layout}");
            let kill = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status()
                .unwrap();
            assert!(kill.success());
            let deadline = Instant::now() + Duration::from_secs(30);
            let status = loop {
                if let Some(status) = child.try_wait().unwrap() {
                    break status;
                }
                if Instant::now() > deadline {
                    let _ = child.kill();
                    panic!("{layout}: not stopped within 30 s of SIGTERM");
                }
                std::thread::sleep(Duration::from_millis(20));
            };
            assert_eq!((status.code(), status.signal()), (code, signal), "{layout}");
            assert!(
                !run.locks()
                    .join(format!("serve_{}.lock", run.port))
                    .exists(),
                "{layout}: not released"
            );
        }
    }
}
