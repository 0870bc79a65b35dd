//! The default lock dir is a function of the user alone (issue 17 §5): two
//! sessions of one user with different `TMPDIR` and `XDG_RUNTIME_DIR` (ssh,
//! tmux, cron, `pam_tmpdir`) meet in one dir, so the second `serve` of a port
//! is refused and `status`/`stop` of either session see the holder; a
//! default dir squatted by another user is refused with the fix that works;
//! and the user's own default dir, loosened by hand, gets a `chmod` that
//! works when pasted.
//!
//! The default dir is a real system path (`/run/llmlb` for root,
//! `/tmp/llmlb-<uid>` for others), so every scenario runs as a shell script
//! inside a private mount namespace (`unshare -m`) with fresh tmpfs mounted
//! on `/run` and `/tmp`: nothing of the machine's own dirs is read or
//! written (the binary under test is bind-mounted into the new `/run`, so
//! the scenarios run wherever the target dir is, `/tmp` included). That
//! needs root (CI runs as root); elsewhere the test says it was skipped, and
//! under CI it fails.
#![cfg(target_os = "linux")]

mod cli_support;
#[path = "support/prereq.rs"]
mod prereq;

use std::process::{Command, Stdio};

use cli_support::free_port;

/// An unprivileged uid to play a user (no passwd entry needed).
const USER: u32 = 1000;
/// Another user, the squatter.
const OTHER: u32 = 65534;

/// Why the namespace cannot be had here, if it cannot.
fn namespace_unavailable() -> Option<String> {
    let probe = Command::new("unshare")
        .args([
            "-m",
            "sh",
            "-c",
            "mount -t tmpfs tmpfs /run && mount -t tmpfs tmpfs /tmp && command -v setpriv",
        ])
        .stdin(Stdio::null())
        .output();
    match probe {
        Ok(out) if out.status.success() => None,
        Ok(out) => Some(format!(
            "`unshare -m` with tmpfs on /run and /tmp, and setpriv: {}{}",
            String::from_utf8_lossy(&out.stdout).trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        )),
        Err(e) => Some(format!("cannot run unshare: {e}")),
    }
}

/// The start of every scenario: fresh tmpfs on `/run` and `/tmp`, and `$B`
/// made to name the binary under test where the namespace still sees it.
/// The build's target dir may itself be under `/tmp` (a clone into `/tmp`,
/// `CARGO_TARGET_DIR=/tmp/...`), which the fresh tmpfs hides: so the binary
/// is opened before the mounts and bind-mounted, through the open
/// descriptor, onto a file in the new `/run` (`/proc/PID/fd/N` leads to the
/// opened file itself, whatever now covers its path). Exec'ing it through
/// `/proc/self/fd/N` instead would leave the descriptor open in every
/// process of the scenario and make the binary's own path unreachable.
const BINARY_IN_VIEW: &str = r#"exec 9<"$B" || exit 96
mount -t tmpfs tmpfs /run && mount -t tmpfs tmpfs /tmp || exit 97
mkdir /run/llmlb-test-bin && : >/run/llmlb-test-bin/llmlb || exit 98
mount --bind "/proc/$$/fd/9" /run/llmlb-test-bin/llmlb || exit 98
exec 9<&-
B=/run/llmlb-test-bin/llmlb
"#;

/// Runs `script` (sh, with `$B` the llmlb binary and `$P` a free port) in a
/// private mount namespace with fresh tmpfs on `/run` and `/tmp`, without
/// `LLMLB_LOCK_DIR`. `None` (after saying so, or failing under CI) where no
/// such namespace can be had.
///
/// The script must exit 0; what it printed comes back as its stdout and, for
/// assertion messages, a report of both streams.
fn in_namespace(script: &str) -> Option<(Ran, u16)> {
    if let Some(why) = namespace_unavailable() {
        prereq::skip_unless_ci(
            &why,
            "run as root where `unshare -m` may mount tmpfs (CAP_SYS_ADMIN) and util-linux's setpriv exists",
            "the default lock dir scenario",
        );
        return None;
    }
    let port = free_port();
    let full = format!("set -u\n{BINARY_IN_VIEW}{script}");
    let out = Command::new("unshare")
        .args(["-m", "sh", "-c", &full])
        .env("B", env!("CARGO_BIN_EXE_llmlb"))
        .env("P", port.to_string())
        .env_remove("LLMLB_LOCK_DIR")
        .env_remove("LLMLB_PORT")
        .env_remove("RUST_LOG")
        .env("LLMLB_LOG_LEVEL", "info")
        .stdin(Stdio::null())
        .output()
        .expect("spawn unshare");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let report = format!(
        "{stdout}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{report}");
    Some((Ran { stdout, report }, port))
}

/// What a script run by [`in_namespace`] printed.
struct Ran {
    stdout: String,
    report: String,
}

/// The value of the `key=` line the script printed.
fn field<'a>(out: &'a str, key: &str) -> &'a str {
    out.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
        .unwrap_or_else(|| panic!("no {key}= line in:\n{out}"))
}

/// Two sessions of one user, `run_as` (a prefix command, empty for root):
/// session A serves, session B (another `TMPDIR`, `XDG_RUNTIME_DIR`) is
/// refused, sees it in `status` and stops it. `dir` is where the lock must be.
fn two_sessions_meet(run_as: &str, dir: &str) {
    let script = format!(
        r#"
A="env TMPDIR=/tmp/a XDG_RUNTIME_DIR=/tmp/a {run_as}"
S="env TMPDIR=/tmp/b XDG_RUNTIME_DIR=/tmp/b {run_as}"
mkdir -m 1777 /tmp/a /tmp/b
$A "$B" serve -p "$P" -- sleep 60 >/tmp/a/serve.out 2>&1 &
SERVER=$!
i=0
until $A "$B" status -p "$P" >/dev/null 2>&1; do
  i=$((i + 1)); [ "$i" -lt 1500 ] || break; sleep 0.01
done
$S "$B" status -p "$P" >/tmp/b/status.out 2>&1; echo "status_b=$?"
ls {dir}/serve_"$P".lock >/dev/null 2>&1; echo "lock_file=$?"
$S "$B" serve -p "$P" -- sh -c 'echo SECOND-SERVER-RAN' >/tmp/b/serve.out 2>&1; echo "serve_b=$?"
$S "$B" stop -p "$P" >/tmp/b/stop.out 2>&1; echo "stop_b=$?"
kill "$SERVER" 2>/dev/null; wait "$SERVER"
echo "--- serve_b"; cat /tmp/b/serve.out; echo "--- stop_b"; cat /tmp/b/stop.out
echo "--- status_b"; cat /tmp/b/status.out; echo "--- serve_a"; cat /tmp/a/serve.out
"#
    );
    let Some((Ran { stdout, report }, port)) = in_namespace(&script) else {
        return;
    };
    assert_eq!(
        field(&stdout, "lock_file"),
        "0",
        "no lock in {dir}: {report}"
    );
    assert_eq!(
        field(&stdout, "status_b"),
        "0",
        "the other session's status must see the holder: {report}"
    );
    assert_eq!(
        field(&stdout, "serve_b"),
        "1",
        "a second serve must be refused: {report}"
    );
    assert!(!stdout.contains("SECOND-SERVER-RAN"), "{report}");
    assert!(
        stdout.contains(&format!("Server already running on port {port}")),
        "{report}"
    );
    assert_eq!(
        field(&stdout, "stop_b"),
        "0",
        "the other session's stop must stop it: {report}"
    );
    assert!(stdout.contains("Server stopped"), "{report}");
}

#[test]
fn root_sessions_with_different_tmpdirs_share_run_llmlb() {
    two_sessions_meet("", "/run/llmlb");
}

#[test]
fn user_sessions_with_different_tmpdirs_share_tmp_llmlb_uid() {
    let run_as = format!("setpriv --reuid={USER} --regid={USER} --clear-groups");
    two_sessions_meet(&run_as, &format!("/tmp/llmlb-{USER}"));
}

/// Anyone can create `/tmp/llmlb-<uid>` before its user does. Whether the
/// squatter left it readable or not, the user's `serve` refuses it in one
/// line naming the fix that works (`LLMLB_LOCK_DIR`/`--lock-dir` to a dir of
/// their own, never `chmod` on a dir they do not own), writes nothing into
/// it, and the fix as given works.
#[test]
fn squatted_default_dir_is_refused_with_the_working_fix() {
    let script = format!(
        r#"
AS="setpriv --reuid={USER} --regid={USER} --clear-groups"
for mode in 700 755; do
  mkdir -m "$mode" /tmp/llmlb-{USER} && chown {OTHER}:{OTHER} /tmp/llmlb-{USER}
  $AS "$B" serve -p "$P" -- true >/tmp/serve.out 2>&1; echo "serve_$mode=$?"
  echo "--- serve_$mode"; cat /tmp/serve.out; echo "--- end"
  echo "entries_$mode=$(ls -A /tmp/llmlb-{USER} | wc -l)"
  rm -rf /tmp/llmlb-{USER}
done
mkdir -m 700 /tmp/llmlb-{USER} && chown {OTHER}:{OTHER} /tmp/llmlb-{USER}
mkdir -m 1777 /tmp/home
$AS env LLMLB_LOCK_DIR=/tmp/home/mine "$B" serve -p "$P" -- true; echo "with_fix=$?"
"#
    );
    let Some((Ran { stdout, report }, _)) = in_namespace(&script) else {
        return;
    };
    for mode in ["700", "755"] {
        assert_eq!(field(&stdout, &format!("serve_{mode}")), "1", "{report}");
        assert_eq!(field(&stdout, &format!("entries_{mode}")), "0", "{report}");
        let said = stdout
            .split(&format!("--- serve_{mode}\n"))
            .nth(1)
            .and_then(|rest| rest.split("--- end").next())
            .unwrap_or_else(|| panic!("{report}"));
        assert_eq!(said.lines().count(), 1, "one line: {report}");
        let line = said.trim_end();
        assert!(
            line.starts_with(&format!(
                "Error: unsafe lock dir /tmp/llmlb-{USER}: it is owned by another user"
            )),
            "{line}"
        );
        assert!(line.contains("LLMLB_LOCK_DIR (or --lock-dir)"), "{line}");
        assert!(line.contains("a directory you own"), "{line}");
        for bad in ["chmod", "permissions", "os error"] {
            assert!(!line.contains(bad), "{bad:?} in {line}");
        }
    }
    assert_eq!(field(&stdout, "with_fix"), "0", "{report}");
}

/// The user's own default dir, loosened by hand (mode 0777), is the one dir
/// whose hint is `chmod 700`: pasted into `sh` as printed, it makes the next
/// `serve` work.
#[test]
fn own_default_dir_made_world_writable_gets_a_chmod_that_works() {
    let script = format!(
        r#"
AS="setpriv --reuid={USER} --regid={USER} --clear-groups"
mkdir -m 777 /tmp/llmlb-{USER} && chown {USER}:{USER} /tmp/llmlb-{USER} && chmod 777 /tmp/llmlb-{USER}
$AS "$B" serve -p "$P" -- true >/tmp/serve.out 2>&1; echo "refused=$?"
echo "--- said"; cat /tmp/serve.out; echo "--- end"
hint=$(sed -n 's/.*`\(chmod [^`]*\)`.*/\1/p' /tmp/serve.out)
echo "hint=$hint"
$AS sh -c "$hint"; echo "pasted=$?"
$AS "$B" serve -p "$P" -- true; echo "after=$?"
"#
    );
    let Some((Ran { stdout, report }, _)) = in_namespace(&script) else {
        return;
    };
    assert_eq!(field(&stdout, "refused"), "1", "{report}");
    assert_eq!(
        field(&stdout, "hint"),
        format!("chmod 700 /tmp/llmlb-{USER}"),
        "{report}"
    );
    assert_eq!(field(&stdout, "pasted"), "0", "{report}");
    assert_eq!(field(&stdout, "after"), "0", "{report}");
}
