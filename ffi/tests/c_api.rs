//! Compiles the C tests (`ffi/tests/*.c`) and the C launcher against the
//! header and the library built by this `cargo test`, with
//! `-Wall -Wextra -Werror -pedantic` (plus ASan/UBSan for the API tests where
//! they work), and runs them.
//!
//! On Windows the API tests (`api.c`) and the launcher (`launcher.c`'s
//! Windows branch) are compiled on the host by `ffi/build.rs` (this test may
//! run under Wine, where no host compiler can be started) and run here
//! against the freshly built `llmlb_lock.dll`.

mod support;

#[cfg(unix)]
use std::io::{BufRead, BufReader};
#[cfg(unix)]
use std::path::Path;
use std::process::Command;
#[cfg(unix)]
use std::process::Stdio;

use llmlb::lock::LockState;
use support::{describe, text};

/// What `ffi/build.rs` left for this test: `ok <exe>`, `missing <why>` or
/// `failed <compiler output>`, for the API tests and for the launcher.
#[cfg(windows)]
const WINDOWS_C_TESTS: &str = include_str!(concat!(env!("OUT_DIR"), "/c-api.txt"));
#[cfg(windows)]
const WINDOWS_LAUNCHER: &str = include_str!(concat!(env!("OUT_DIR"), "/c-launcher.txt"));

/// A path the build script printed on the host, as this process sees it:
/// under Wine the host's `/` is drive `Z:`.
#[cfg(windows)]
fn host_path(path: &str) -> std::path::PathBuf {
    if path.starts_with('/') {
        format!("Z:{}", path.replace('/', "\\")).into()
    } else {
        path.into()
    }
}

/// The exe `ffi/build.rs` built (`report`: its line), copied beside the DLL
/// this cargo test built from the current source (lib_dir() refuses a stale
/// one): Windows looks in the exe's dir first. `None` (after
/// `skip_unless_ci`, which fails under CI) if there is no mingw compiler.
#[cfg(windows)]
fn windows_exe(
    report: &str,
    name: &str,
    what: &str,
    tmp: &std::path::Path,
) -> Option<std::path::PathBuf> {
    let exe = match report.split_once(' ') {
        Some(("ok", exe)) => host_path(exe.trim()),
        Some(("missing", why)) => {
            support::prereq::skip_unless_ci(why, "then rebuild", what);
            return None;
        }
        _ => panic!("ffi/build.rs could not build {what}: {report}"),
    };
    let run_dir = tmp.join("bin");
    std::fs::create_dir_all(&run_dir).unwrap();
    let copy = run_dir.join(format!("{name}.exe"));
    std::fs::copy(&exe, &copy).unwrap_or_else(|e| panic!("copy {}: {e}", exe.display()));
    std::fs::copy(support::shared_lib(), run_dir.join("llmlb_lock.dll")).unwrap();
    Some(copy)
}

#[cfg(windows)]
#[test]
fn c_api_tests_pass() {
    let tmp = tempfile::tempdir().unwrap();
    let Some(exe) = windows_exe(
        WINDOWS_C_TESTS,
        "api",
        "the C API tests (api.c)",
        tmp.path(),
    ) else {
        return;
    };
    let work = support::private_dir(tmp.path(), "api-work");
    let out = Command::new(exe)
        .arg(&work)
        .current_dir(&work)
        .env_remove("LLMLB_LOCK_DIR")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "C test api failed: {}",
        describe(&out)
    );
    assert!(text(&out.stdout).contains("passed"), "{}", describe(&out));
}

/// The command the Windows launcher runs in its test: this test binary
/// again, which writes its PID where `LLMLB_TEST_CHILD_PID_FILE` says and
/// then sleeps until its job is terminated.
#[cfg(windows)]
#[test]
#[ignore = "helper process, not a test: run by windows_launcher_holds_the_port_until_llmlb_stop"]
fn windows_launcher_child() {
    let pid_file = std::env::var_os("LLMLB_TEST_CHILD_PID_FILE")
        .expect("run by windows_launcher_holds_the_port_until_llmlb_stop, which sets it");
    let port = std::env::var("LLMLB_PORT").expect("the launcher sets LLMLB_PORT");
    let partial = std::path::Path::new(&pid_file).with_extension("partial");
    std::fs::write(&partial, format!("{} {port}", std::process::id())).unwrap();
    std::fs::rename(&partial, &pid_file).unwrap();
    std::thread::sleep(std::time::Duration::from_secs(600));
    panic!("the launcher's job never ended this command");
}

/// The launcher's Windows branch end to end: it holds the port (the library
/// sees its PID), refuses a second launcher naming it, and `llmlb stop`
/// (`stop_server`, through the lock's stop channel) ends it and its command
/// (Wine cannot deliver CTRL_BREAK, so the job is terminated after the
/// grace) and leaves the port free.
#[cfg(windows)]
#[test]
fn windows_launcher_holds_the_port_until_llmlb_stop() {
    use llmlb::lock::{probe, ProcessIdentity};
    use llmlb::supervise::{stop_server, StopOptions, StopOutcome};
    use std::time::{Duration, Instant};

    let tmp = tempfile::tempdir().unwrap();
    let Some(exe) = windows_exe(
        WINDOWS_LAUNCHER,
        "launcher",
        "the C launcher (launcher.c)",
        tmp.path(),
    ) else {
        return;
    };
    let lock_dir = support::private_dir(tmp.path(), "locks");
    let pid_file = tmp.path().join("child.pid");
    let me = std::env::current_exe().unwrap();
    let port = 8131u16;
    let launch = |marker: &std::path::Path| {
        let mut cmd = Command::new(&exe);
        cmd.arg(port.to_string())
            .arg("--")
            .arg(&me)
            .args([
                "--exact",
                "windows_launcher_child",
                "--ignored",
                "--nocapture",
            ])
            .env("LLMLB_LOCK_DIR", &lock_dir)
            .env("LLMLB_TEST_CHILD_PID_FILE", marker)
            .stdin(std::process::Stdio::null());
        cmd
    };
    let mut first = launch(&pid_file)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();

    // Generous: Wine starts processes slowly, more so under load.
    let deadline = Instant::now() + Duration::from_secs(120);
    let child_pid = loop {
        if let Ok(text) = std::fs::read_to_string(&pid_file) {
            let (pid, seen_port) = text.split_once(' ').expect("\"PID PORT\"");
            assert_eq!(seen_port, port.to_string(), "LLMLB_PORT");
            break pid.parse::<u32>().unwrap();
        }
        if let Some(status) = first.try_wait().unwrap() {
            panic!("the launcher exited before its command started: {status}");
        }
        assert!(Instant::now() < deadline, "the command never started");
        std::thread::sleep(Duration::from_millis(50));
    };
    match probe(&lock_dir, port).unwrap() {
        LockState::Held(Some(info)) => assert_eq!(info.pid, first.id()),
        other => panic!("expected held by the launcher, got {other:?}"),
    }

    let second_marker = tmp.path().join("second.pid");
    let second = launch(&second_marker).output().unwrap();
    assert_eq!(second.status.code(), Some(1), "{}", describe(&second));
    let err = text(&second.stderr);
    assert!(err.contains(&format!("PID: {}", first.id())), "{err}");
    assert!(
        !second_marker.exists(),
        "the refused launcher ran its command"
    );

    let options = StopOptions {
        timeout: Duration::from_secs(120),
        force: false,
    };
    match stop_server(&lock_dir, port, &options, |_| {}).unwrap() {
        StopOutcome::Stopped { info } => assert_eq!(info.pid, first.id()),
        other => panic!("expected the launcher stopped, got {other:?}"),
    }
    let status = first.wait().unwrap();
    // The command's exit code: 1 from TerminateJobObject after the grace
    // (Wine), or STATUS_CONTROL_C_EXIT where CTRL_BREAK reached it.
    const STATUS_CONTROL_C_EXIT: i32 = 0xC000_013A_u32 as i32;
    assert!(
        matches!(status.code(), Some(1 | STATUS_CONTROL_C_EXIT)),
        "launcher: {status}"
    );
    assert_eq!(probe(&lock_dir, port).unwrap(), LockState::Free);
    assert!(!lock_dir.join(format!("serve_{port}.lock")).exists());
    let gone_by = Instant::now() + Duration::from_secs(60);
    while ProcessIdentity::of_pid(child_pid).is_some() {
        assert!(
            Instant::now() < gone_by,
            "the command outlived its launcher"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[cfg(unix)]
#[test]
fn c_api_tests_pass() {
    let cc = support::c_compiler();
    let tmp = tempfile::tempdir().unwrap();
    let c_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests");
    let mut sources: Vec<_> = std::fs::read_dir(&c_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "c"))
        .collect();
    sources.sort();
    assert!(!sources.is_empty(), "no C tests in {}", c_dir.display());
    for source in sources {
        let stem = source.file_stem().unwrap().to_str().unwrap().to_owned();
        let exe = tmp.path().join(&stem);
        support::compile_c(&cc, &[source], &exe, support::Link::Shared, true);
        let work = support::private_dir(tmp.path(), &format!("{stem}-work"));
        let out = Command::new(&exe)
            .arg(&work)
            .current_dir(&work)
            // cargo test puts target/<profile> on LD_LIBRARY_PATH, which wins
            // over the executable's RUNPATH: a stale libllmlb_lock.so there
            // (from an earlier `cargo build`) would be tested instead of the
            // one built from the current source.
            .env_remove("LD_LIBRARY_PATH")
            .env_remove("LLMLB_LOCK_DIR")
            // Leaks would be the library's: fail on them.
            .env("ASAN_OPTIONS", "detect_leaks=1:abort_on_error=0")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "C test {stem} failed: {}",
            describe(&out)
        );
        assert!(text(&out.stdout).contains("passed"), "{}", describe(&out));
    }
}

/// `benches/c_ab.c`, the harness that times two builds of the library
/// against each other on the C-ABI cycle (docs/performance.md), builds and
/// runs (the library built now against itself, a few cycles: only that it
/// works, not how fast).
#[cfg(unix)]
#[test]
fn ab_bench_harness_runs() {
    let cc = support::c_compiler();
    let tmp = tempfile::tempdir().unwrap();
    let exe = tmp.path().join("c_ab");
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/c_ab.c");
    support::compile_c(&cc, &[source], &exe, support::Link::Shared, false);
    let base = support::private_dir(tmp.path(), "ab");
    let lib = support::shared_lib();
    let out = Command::new(&exe)
        .arg(&base)
        .arg(&lib)
        .arg(&lib)
        .env("C_AB_ROUNDS", "3")
        .env("C_AB_CYCLES", "20")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", describe(&out));
    let stdout = text(&out.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 3, "{stdout}");
    for line in &lines[..2] {
        assert!(line.starts_with(lib.to_str().unwrap()), "{stdout}");
        assert!(line.contains("/ floor_unlink"), "{stdout}");
    }
    assert!(lines[2].starts_with("floor_unlink"), "{stdout}");
    assert!(lines[2].contains("1.00x [1.00-1.00]"), "{stdout}");
    // Each library's lock dir is left empty: every acquire was released.
    for dir in ["lib0", "lib1"] {
        let left: Vec<_> = std::fs::read_dir(base.join(dir)).unwrap().collect();
        assert!(left.is_empty(), "{dir}: {left:?}");
    }
}

#[cfg(unix)]
struct Launcher {
    exe: std::path::PathBuf,
    lock_dir: std::path::PathBuf,
    _tmp: tempfile::TempDir,
}

#[cfg(unix)]
fn launcher() -> Launcher {
    let cc = support::c_compiler();
    let tmp = tempfile::tempdir().unwrap();
    let exe = support::build_launcher(&cc, tmp.path());
    let lock_dir = tmp.path().join("locks");
    Launcher {
        exe,
        lock_dir,
        _tmp: tmp,
    }
}

#[cfg(unix)]
impl Launcher {
    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(&self.exe);
        cmd.args(args).env("LLMLB_LOCK_DIR", &self.lock_dir);
        cmd
    }

    fn probe(&self, port: u16) -> LockState {
        llmlb::lock::probe(&self.lock_dir, port).unwrap()
    }
}

#[cfg(unix)]
#[test]
fn launcher_runs_the_command_with_the_port_and_returns_its_code() {
    let l = launcher();
    let out = l
        .command(&[
            "8101",
            "--",
            "sh",
            "-c",
            "echo \"port=$LLMLB_PORT\"; exit 3",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3), "{}", describe(&out));
    assert_eq!(text(&out.stdout), "port=8101\n");
    assert_eq!(l.probe(8101), LockState::Free);
    assert!(!l.lock_dir.join("serve_8101.lock").exists());
}

#[cfg(unix)]
#[test]
fn launcher_holds_the_port_refuses_a_second_and_forwards_sigterm() {
    let l = launcher();
    // A command that reports readiness, then exits 7 on SIGTERM.
    let script = "trap 'exit 7' TERM; echo ready; while :; do sleep 0.05; done";
    let mut first = l
        .command(&["8102", "--", "sh", "-c", script])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(first.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line, "ready\n");

    match l.probe(8102) {
        LockState::Held(Some(info)) => assert_eq!(info.pid, first.id()),
        other => panic!("expected held by the launcher, got {other:?}"),
    }

    let marker = l._tmp.path().join("second-ran");
    let second = l
        .command(&["8102", "--", "touch", marker.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(second.status.code(), Some(1), "{}", describe(&second));
    let err = text(&second.stderr);
    assert!(err.contains(&format!("PID: {}", first.id())), "{err}");
    assert!(err.contains("llmlb stop --port 8102"), "{err}");
    assert!(!marker.exists(), "the refused launcher ran its command");

    let kill = Command::new("kill")
        .args(["-TERM", &first.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let status = first.wait().unwrap();
    assert_eq!(status.code(), Some(7));
    assert_eq!(l.probe(8102), LockState::Free);
    assert!(!l.lock_dir.join("serve_8102.lock").exists());
}

#[cfg(unix)]
#[test]
fn launcher_usage_errors_exit_2() {
    let l = launcher();
    for args in [
        &[][..],
        &["8103", "true"][..],
        &["0", "--", "true"][..],
        &["65536", "--", "true"][..],
        &["http", "--", "true"][..],
        &["--ready", "soon", "8103", "--", "true"][..],
        &["--ready"][..],
        &["--wait", "-1", "8103", "--", "true"][..],
        &["8103", "--wait", "inf", "--", "true"][..],
        &["8103", "--frobnicate", "--", "true"][..],
        &["8103", "-p", "8104", "--", "true"][..],
        // Refused by the library: --backend-port needs --proxy; serve
        // refuses --pass-socket with --proxy.
        &["8103", "--backend-port", "9000", "--", "true"][..],
        &["--proxy", "8103", "--pass-socket", "--", "true"][..],
    ] {
        let out = l.command(args).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", describe(&out));
    }
    assert!(
        !l.lock_dir.exists(),
        "a usage error must not touch the lock dir"
    );
}

/// The C timing loop behind `ffi/python/bench.py` compiles with the test
/// flags and runs: each contender's line is printed, and its cycles left
/// nothing behind (every lock released, every file removed). Unix's: the
/// loop is POSIX C (`clock_gettime`, `getrusage`), and under Wine no host
/// compiler can be started from the test.
#[cfg(unix)]
#[test]
fn c_cycle_bench_runs() {
    let cc = support::c_compiler();
    let tmp = tempfile::tempdir().unwrap();
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/c_cycle.c");
    let exe = tmp.path().join("c_cycle");
    support::compile_c(&cc, &[source], &exe, support::Link::Shared, false);
    let work = support::private_dir(tmp.path(), "c_cycle-work");
    let out = Command::new(&exe)
        .args([work.as_os_str(), "20".as_ref(), "3".as_ref()])
        .env_remove("LD_LIBRARY_PATH")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", describe(&out));
    let stdout = text(&out.stdout);
    for name in ["floor_unlink", "c_abi", "c_abi_dir"] {
        let line = stdout
            .lines()
            .find(|l| l.split_whitespace().next() == Some(name))
            .unwrap_or_else(|| panic!("no {name} line: {}", describe(&out)));
        let figures: Vec<f64> = line
            .split_whitespace()
            .skip(1)
            .map(|f| f.parse().unwrap())
            .collect();
        assert!(
            figures.len() == 2 && figures.iter().all(|&f| f > 0.0),
            "{line}"
        );
        let dir = work.join(name);
        assert_eq!(
            std::fs::read_dir(&dir).unwrap().count(),
            0,
            "{name} left files"
        );
    }
}

/// The program of docs/c-api.md ("A first program"), taken from the page,
/// compiled as the page says (static archive, `-lpthread -ldl -lm`, plus the
/// strict warnings of every C test) and run: it takes port 8000 in a private
/// lock dir and exits 0, and exits 1 naming the holder while the port is held.
#[cfg(unix)]
#[test]
fn c_guide_program_compiles_and_runs() {
    let page = support::repo_root().join("docs/c-api.md");
    let page = std::fs::read_to_string(&page).unwrap();
    let program = page
        .split("```c\n")
        .skip(1)
        .filter_map(|block| block.split_once("```").map(|(code, _)| code))
        .find(|code| code.contains("int main"))
        .expect("docs/c-api.md has a ```c block with main()");
    let cc = support::c_compiler();
    let tmp = tempfile::tempdir().unwrap();
    let source = tmp.path().join("app.c");
    std::fs::write(&source, program).unwrap();
    let exe = tmp.path().join("app");
    support::compile_c(&cc, &[source], &exe, support::Link::Static, false);
    let locks = support::private_dir(tmp.path(), "locks");
    let run = || {
        Command::new(&exe)
            .env("LLMLB_LOCK_DIR", &locks)
            .output()
            .unwrap()
    };
    let out = run();
    assert!(out.status.success(), "{}", describe(&out));
    assert_eq!(
        llmlb::lock::probe(&locks, 8000).unwrap(),
        LockState::Free,
        "the program released the port"
    );

    let dir = llmlb::lock::LockDir::create(&locks).unwrap();
    let guard = llmlb::lock::acquire_or_reclaim(&dir, 8000).unwrap();
    let out = run();
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    let expected = format!("already running on port 8000 (PID: {})", std::process::id());
    assert!(text(&out.stderr).contains(&expected), "{}", describe(&out));
    guard.release().unwrap();
}
