//! `llmlb stop` never signals a process that is not the holder it verified,
//! with real processes: a holder that dies while a forked worker keeps its
//! lock and whose PID is then reused (steered inside a private PID namespace
//! through `ns_last_pid`), and an exec group whose leader is gone.
//!
//! A custom harness (`harness = false`): the same binary also plays the lock
//! holders (`LLMLB_TRUST_ROLE`), which libtest cannot do without a test that
//! passes by doing nothing. It ends with the plain "N passed, N failed" line.

/// This harness's tests, by name.
const TESTS: [&str; 2] = [
    "stop_force_never_kills_a_process_that_reused_the_holders_pid",
    "stop_force_never_kills_a_group_whose_leader_is_gone",
];

#[cfg(not(target_os = "linux"))]
fn main() {
    // pidfds and `ns_last_pid` are Linux's; stop's fallback elsewhere is the
    // identity re-check, covered by the CLI tests. Said in libtest's words
    // for an ignored test, so summaries that list ignored tests with their
    // reasons (.ci/run's Windows one) list these too.
    for name in TESTS {
        println!("test {name} ... ignored, needs Linux (pidfd, PID namespaces)");
    }
    println!("0 passed, 0 failed, {} skipped", TESTS.len());
}

#[cfg(target_os = "linux")]
fn main() {
    linux::main();
}

/// What counts as CI, from the one place the other tests read it too.
#[cfg(target_os = "linux")]
#[path = "support/prereq.rs"]
mod prereq;

#[cfg(target_os = "linux")]
mod linux {
    use std::io::{BufRead, BufReader, Read};
    use std::path::{Path, PathBuf};
    use std::process::{Child, Command, Stdio};
    use std::time::{Duration, Instant};

    use llmlb::lock::{acquire_or_reclaim, LockDir};

    use crate::prereq;

    const ROLE: &str = "LLMLB_TRUST_ROLE";
    const SCENARIO: &str = "LLMLB_TRUST_SCENARIO";
    const PORT: u16 = 47001;
    /// Against hangs only: every wait here normally ends in milliseconds.
    const HANG_GUARD: Duration = Duration::from_secs(60);

    pub(crate) fn main() {
        if let Ok(role) = std::env::var(ROLE) {
            return play(&role);
        }
        if let Ok(scenario) = std::env::var(SCENARIO) {
            // Inside the PID namespace: run one scenario as its init, exit 0/1.
            let result = std::panic::catch_unwind(|| run_scenario(&scenario));
            std::process::exit(if result.is_ok() { 0 } else { 1 });
        }
        let tests: [(&str, Test); 2] = [
            (super::TESTS[0], pid_reuse),
            (super::TESTS[1], unverified_group),
        ];
        let filter: Vec<String> = std::env::args()
            .skip(1)
            .filter(|a| !a.starts_with('-'))
            .collect();
        let (mut passed, mut failed, mut skipped) = (0, 0, 0);
        for (name, test) in tests {
            if !filter.is_empty() && !filter.iter().any(|f| name.contains(f.as_str())) {
                continue;
            }
            match std::panic::catch_unwind(test) {
                Ok(Ran::Yes) => {
                    println!("test {name} ... ok");
                    passed += 1;
                }
                Ok(Ran::Skipped(why)) => {
                    println!("test {name} ... SKIPPED: {why} (set CI=1 to make this a failure)");
                    skipped += 1;
                }
                Err(_) => {
                    println!("test {name} ... FAILED");
                    failed += 1;
                }
            }
        }
        println!("{passed} passed, {failed} failed, {skipped} skipped");
        if failed > 0 {
            std::process::exit(1);
        }
    }

    /// A test of this harness.
    type Test = fn() -> Ran;

    /// Whether a test ran, or could not here (never under CI).
    enum Ran {
        Yes,
        Skipped(String),
    }

    fn run_scenario(name: &str) {
        match name {
            "pid_reuse" => pid_reuse_in_namespace(),
            other => panic!("unknown scenario {other}"),
        }
    }

    /// The lock holders this binary plays, in their own processes.
    fn play(role: &str) {
        let dir =
            LockDir::create(PathBuf::from(std::env::var("LLMLB_TRUST_DIR").unwrap())).unwrap();
        let guard = acquire_or_reclaim(&dir, PORT).unwrap();
        match role {
            // Takes the lock, forks a worker that inherits it (and never
            // releases), then waits; SIGTERM's default action kills it.
            "forking-holder" => {
                // SAFETY: the child only sleeps (async-signal-safe) until killed.
                let worker = unsafe { libc::fork() };
                assert!(worker >= 0, "fork failed");
                if worker == 0 {
                    loop {
                        // SAFETY: pause is async-signal-safe.
                        unsafe { libc::pause() };
                    }
                }
                println!("ready {} {worker}", std::process::id());
            }
            // Records the process group given in LLMLB_TRUST_PGID as its exec
            // child's and ignores SIGTERM.
            "group-holder" => {
                let mut guard = guard;
                let pgid: u32 = std::env::var("LLMLB_TRUST_PGID").unwrap().parse().unwrap();
                guard.set_child_pgid(Some(pgid)).unwrap();
                // SAFETY: installing SIG_IGN has no preconditions.
                unsafe { libc::signal(libc::SIGTERM, libc::SIG_IGN) };
                println!("ready {}", std::process::id());
                std::mem::forget(guard);
            }
            other => panic!("unknown role {other}"),
        }
        loop {
            std::thread::sleep(Duration::from_secs(3600));
        }
    }

    fn spawn_role(role: &str, dir: &Path, extra: &[(&str, String)]) -> (Child, Vec<u32>) {
        let mut cmd = Command::new(std::env::current_exe().unwrap());
        cmd.env(ROLE, role)
            .env("LLMLB_TRUST_DIR", dir)
            .env_remove(SCENARIO)
            .stdout(Stdio::piped());
        for (k, v) in extra {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let pids = line
            .strip_prefix("ready ")
            .unwrap_or_else(|| panic!("role {role} did not start: {line:?}"))
            .split_whitespace()
            .map(|p| p.parse().unwrap())
            .collect();
        (child, pids)
    }

    fn llmlb_stop(dir: &Path, args: &[&str]) -> Child {
        Command::new(env!("CARGO_BIN_EXE_llmlb"))
            .args(["stop", "--port", &PORT.to_string(), "--lock-dir"])
            .arg(dir)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    }

    /// Waits for `child` (bounded by [`HANG_GUARD`]); its code and both outputs.
    fn finish(mut child: Child) -> (i32, String) {
        let deadline = Instant::now() + HANG_GUARD;
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                let mut out = String::new();
                child
                    .stdout
                    .take()
                    .unwrap()
                    .read_to_string(&mut out)
                    .unwrap();
                child
                    .stderr
                    .take()
                    .unwrap()
                    .read_to_string(&mut out)
                    .unwrap();
                return (status.code().unwrap_or(-1), out);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("llmlb stop hung");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn alive(child: &mut Child) -> bool {
        child.try_wait().unwrap().is_none()
    }

    fn kill(child: &mut Child) {
        let _ = child.kill();
        let _ = child.wait();
    }

    /// The defect: the verified holder dies on SIGTERM, a worker it forked keeps
    /// the lock, the holder's PID is reused by an unrelated process before the
    /// timeout ends, and `stop --force` SIGKILLed that process. Needs a private
    /// PID namespace to steer the reuse: run inside `unshare` as its init.
    fn pid_reuse() -> Ran {
        const UNSHARE: [&str; 5] = [
            "--user",
            "--map-root-user",
            "--pid",
            "--fork",
            "--mount-proc",
        ];
        let usable = Command::new("unshare")
            .args(UNSHARE)
            .arg("true")
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !usable {
            let why = "needs `unshare` (util-linux) with user and PID namespaces";
            assert!(!prereq::in_ci(), "prerequisite missing in CI: {why}");
            return Ran::Skipped(why.to_owned());
        }
        let status = Command::new("unshare")
            .args(UNSHARE)
            .arg(std::env::current_exe().unwrap())
            .env(SCENARIO, "pid_reuse")
            .status()
            .unwrap();
        assert!(
            status.success(),
            "the scenario failed inside the namespace (see above)"
        );
        Ran::Yes
    }

    fn pid_reuse_in_namespace() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("locks");
        let (mut holder, pids) = spawn_role("forking-holder", &dir, &[]);
        let holder_pid = pids[0];
        let stop = llmlb_stop(&dir, &["--force", "--timeout", "3"]);
        // SIGTERM kills the holder; we are its parent, so reaping it frees its PID.
        holder.wait().unwrap();
        // Steer the next PID onto the dead holder's number.
        std::fs::write("/proc/sys/kernel/ns_last_pid", (holder_pid - 1).to_string()).unwrap();
        let mut bystander = Command::new("sleep").arg("1000").spawn().unwrap();
        assert_eq!(bystander.id(), holder_pid, "could not steer the PID");

        let (code, out) = finish(stop);
        assert!(
            alive(&mut bystander),
            "stop killed the process that reused PID {holder_pid}:\n{out}"
        );
        assert_eq!(code, 1, "{out}");
        assert!(out.contains("inherited"), "{out}");
        kill(&mut bystander);
    }

    /// The recorded exec group's leader is gone (the group lives on in a member):
    /// a group is killed only while its leader is verified, never by its number.
    fn unverified_group() -> Ran {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("locks");
        // A group whose leader (the shell) exits at once, leaving `sleep` in it.
        let mut group = Command::new("sh")
            .args(["-c", "sleep 1000 & echo $!; read _"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .process_group(0)
            .spawn()
            .unwrap();
        let pgid = group.id();
        let mut line = String::new();
        BufReader::new(group.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let member: i32 = line.trim().parse().unwrap();
        // The holder records the group while its leader still runs…
        let (mut holder, _) = spawn_role(
            "group-holder",
            &dir,
            &[("LLMLB_TRUST_PGID", pgid.to_string())],
        );
        // …then the leader exits and is reaped.
        drop(group.stdin.take());
        group.wait().unwrap();

        let (code, out) = finish(llmlb_stop(&dir, &["--force", "--timeout", "1"]));
        // SAFETY: signal 0 only asks whether the process exists.
        let member_alive = unsafe { libc::kill(member, 0) } == 0;
        // SAFETY: as above; cleanup.
        unsafe { libc::kill(member, libc::SIGKILL) };
        kill(&mut holder);
        assert!(
            member_alive,
            "stop killed group {pgid} although its leader was gone:\n{out}"
        );
        assert_eq!(code, 0, "the holder itself is verified and killed:\n{out}");
        assert!(!out.contains("process group"), "{out}");
        Ran::Yes
    }

    use std::os::unix::process::CommandExt as _;
}
