//! Usage errors (exit 2), help/version/completions, lock dir handling, and
//! `status` listing and exit codes. Linux and Windows (under Wine in CI);
//! macOS is compile-checked only.
#![cfg(any(target_os = "linux", windows))]

mod cli_support;

#[cfg(unix)]
use std::os::unix::fs::PermissionsExt;

use cli_support::*;

#[test]
fn bad_ports_and_missing_arguments_are_usage_errors() {
    let env = Env::new();
    for args in [
        &["serve", "--port", "0"][..],
        &["serve", "-p", "65536"],
        &["serve", "-p", "http"],
        &["serve", "-p", "-1"],
        &["stop", "--port"],
        &["stop", "--port", "0"],
        &["stop", "--port", "80", "--timeout", "soon"],
        &["status", "--port", "99999"],
        &["status", "--format", "yaml"],
        &["completions", "tcsh-nope"],
        &["frobnicate"],
        &[],
    ] {
        let out = env.run(args);
        assert_eq!(out.code(), Some(2), "{args:?}: {out:?}");
        assert!(!out.stderr.contains("panicked"), "{args:?}");
    }
    // The environment default is validated the same way.
    let mut cmd = env.cmd(&["serve"]);
    cmd.env("LLMLB_PORT", "0");
    assert_eq!(env.spawn_cmd(cmd).finish().code(), Some(2));
    assert!(
        !env.locks.exists(),
        "usage errors must not touch the lock dir"
    );
}

/// Every `SECS` option (`serve --wait`, `stop --timeout`) takes decimal
/// seconds, and answers anything else, a negative number included, with one
/// usage error naming the value, never clap's "use '-- -1'" tip or "invalid
/// digit found in string" (issue 18 §6).
#[test]
fn every_duration_option_takes_decimal_seconds_and_refuses_the_rest_alike() {
    let env = Env::new();
    let p = free_port().to_string();
    for secs in ["1.5", "0.5", "5", "0"] {
        for flag in ["-t", "--timeout"] {
            let out = env.run(&["stop", "-p", &p, flag, secs]);
            assert_eq!(out.code(), Some(0), "stop {flag} {secs}: {out:?}");
            assert_eq!(out.stdout, format!("No server running on port {p}\n"));
        }
    }
    for args in [
        &["stop", "-p", &p, "-t", "-1"][..],
        &["stop", "-p", &p, "--timeout", "-0.5"],
        &["stop", "-p", &p, "-t", "soon"],
        &["stop", "-p", &p, "-t", "1,5"],
        &["serve", "-p", &p, "--wait", "-1"],
        &["serve", "-p", &p, "-w", "soon"],
    ] {
        let out = env.run(args);
        assert_eq!(out.code(), Some(2), "{args:?}: {out:?}");
        let errors: Vec<&str> = out
            .stderr
            .lines()
            .filter(|l| l.starts_with("error:"))
            .collect();
        assert_eq!(errors.len(), 1, "{args:?}: {}", out.stderr);
        let value = args.last().unwrap();
        assert!(
            errors[0].contains(&format!("`{value}` is not a number of seconds")),
            "{args:?}: {}",
            out.stderr
        );
        for noise in ["tip:", "-- -1", "invalid digit"] {
            assert!(!out.stderr.contains(noise), "{args:?}: {}", out.stderr);
        }
    }
    assert!(
        !env.locks.exists(),
        "usage errors must not touch the lock dir"
    );
}

/// `stop` and `status -p` take the port the way `serve` does: `-p`, else
/// `LLMLB_PORT`, else 32768, so `llmlb serve; llmlb stop` needs no port
/// (issue 18 §6). Plain `status` still lists every lock.
#[test]
fn stop_and_status_take_the_port_as_serve_does() {
    let env = Env::new();
    let port = free_port();
    let with_port_env = |args: &[&str], value: &str| {
        let mut cmd = env.cmd(args);
        cmd.env("LLMLB_PORT", value);
        env.spawn_cmd(cmd)
    };
    let p = port.to_string();
    let mut server = with_port_env(&["serve", "-H", "127.0.0.1"], &p);
    server.wait_health(port);
    let status = with_port_env(&["status", "-p"], &p).finish();
    assert_eq!(status.code(), Some(0), "{status:?}");
    // serve records its serving state: the table shows it (and since when).
    assert!(status.stdout.contains("Ready for "), "{status:?}");
    let stop = with_port_env(&["stop"], &p).finish();
    assert_eq!(stop.code(), Some(0), "{stop:?}");
    assert!(stop.stdout.ends_with("Server stopped\n"), "{stop:?}");
    assert_eq!(server.wait().code(), Some(0));

    // Neither -p nor LLMLB_PORT: 32768. A stale file stands in for a server
    // there (a test binding 32768 could meet a real one).
    let default = 32768;
    std::fs::write(env.lock_file(default), b"not json").unwrap();
    let status = env.run(&["status", "-p"]);
    assert_eq!(status.code(), Some(1), "stale: {status:?}");
    // LLMLB_PORT does not narrow plain `status`: it lists every lock.
    let listing = with_port_env(&["status"], &p).finish();
    assert_eq!(listing.code(), Some(0), "{listing:?}");
    assert!(
        listing
            .stdout
            .lines()
            .any(|l| l.starts_with(&format!("{default} "))),
        "{listing:?}"
    );
    let stop = env.run(&["stop"]);
    assert_eq!(stop.code(), Some(0), "{stop:?}");
    assert_eq!(
        stop.stdout,
        format!("No server running on port {default}\n")
    );
    assert!(
        stop.stderr
            .contains(&format!("lock file for port {default} was stale")),
        "{stop:?}"
    );
    assert!(!env.lock_file(default).exists());

    // LLMLB_PORT is checked as -p is wherever it is used, and only there;
    // the error names the variable (issue 26 §9).
    for args in [&["stop"][..], &["status", "-p"], &["serve"]] {
        let out = with_port_env(args, "0").finish();
        assert_eq!(out.code(), Some(2), "{args:?}: {out:?}");
        assert!(
            out.stderr
                .contains("invalid LLMLB_PORT=0: not a port (1..=65535)"),
            "{out:?}"
        );
    }
    let listing = with_port_env(&["status"], "0").finish();
    assert_eq!(listing.code(), Some(0), "{listing:?}");
}

#[test]
fn help_version_and_completions() {
    let env = Env::new();
    let help = env.run(&["--help"]);
    assert_eq!(help.code(), Some(0));
    for word in ["serve", "stop", "status", "completions", "--lock-dir"] {
        assert!(help.stdout.contains(word), "{word}: {}", help.stdout);
    }
    let version = env.run(&["--version"]);
    assert_eq!(version.code(), Some(0));
    assert_eq!(
        version.stdout,
        format!("llmlb {}\n", env!("CARGO_PKG_VERSION"))
    );
    let serve_help = env.run(&["serve", "--help"]);
    assert!(
        serve_help.stdout.contains("LLMLB_PORT"),
        "{}",
        serve_help.stdout
    );
    for shell in ["bash", "zsh", "fish"] {
        let out = env.run(&["completions", shell]);
        assert_eq!(out.code(), Some(0), "{shell}");
        assert!(
            out.stdout.contains("llmlb") && out.stdout.contains("serve"),
            "{shell}"
        );
    }
    // The man page comes from the same definition, and `man` is listed in
    // --help, whose epilogue has the exit codes, environment and files.
    let man = env.run(&["man"]);
    assert_eq!(man.code(), Some(0), "{man:?}");
    assert!(man.stdout.contains("\n.TH llmlb 1 "), "{}", man.stdout);
    for section in ["SERVE", "STOP", "STATUS", "COMPLETIONS"] {
        let heading = format!(".SH \"LLMLB {section}\"");
        assert!(man.stdout.contains(&heading), "{heading}: {}", man.stdout);
    }
    for section in ["ENVIRONMENT", "FILES", "\"EXIT STATUS\"", "EXAMPLES"] {
        let heading = format!(".SH {section}\n");
        assert!(man.stdout.contains(&heading), "{heading}: {}", man.stdout);
    }
    assert!(
        help.stdout
            .lines()
            .any(|l| l.trim_start().starts_with("man ")),
        "{}",
        help.stdout
    );
    for command in ["serve", "stop", "status"] {
        let long = env.run(&[command, "--help"]);
        for part in [
            "Exit codes:",
            "Examples:",
            "Environment:",
            "Files:",
            "serve_<port>.lock",
        ] {
            assert!(
                long.stdout.contains(part),
                "{command} --help: {part}: {}",
                long.stdout
            );
        }
    }
}

#[test]
fn status_lists_every_lock_sorted_by_port() {
    let env = Env::new();
    let (a, b) = (free_port(), free_port());
    let (low, high) = (a.min(b), a.max(b));
    let _s1 = env.serve(high);
    let _s2 = env.serve(low);
    // A stale file on a third port, and noise that is not a lock file.
    let stale_port = 1;
    std::fs::write(env.lock_file(stale_port), b"not json").unwrap();
    std::fs::write(env.locks.join("serve_0100.lock"), b"x").unwrap();
    std::fs::write(env.locks.join("notes.txt"), b"x").unwrap();

    let out = env.run(&["status"]);
    assert_eq!(out.code(), Some(0), "{out:?}");
    let ports: Vec<String> = out
        .stdout
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().next().unwrap().to_owned())
        .collect();
    assert_eq!(
        ports,
        [stale_port.to_string(), low.to_string(), high.to_string()]
    );
    let stale_row: Vec<&str> = out
        .stdout
        .lines()
        .nth(1)
        .unwrap()
        .split_whitespace()
        .collect();
    // COMMAND last: `-`, as the record of a garbage file has none.
    assert_eq!(stale_row, ["1", "-", "-", "-", "Stale", "-"]);

    let (code, json) = status_json(&env, None);
    assert_eq!(code, Some(0));
    let list = json.as_array().unwrap();
    assert_eq!(list.len(), 3);
    assert_eq!(list[0]["state"], "stale");
    assert!(list[0]["pid"].is_null() && list[0]["started_at"].is_null());
    assert_eq!(list[1]["port"], low);
    assert_eq!(list[1]["state"], "running");
    assert_eq!(list[2]["port"], high);

    let out = env.run(&["status", "--port", &stale_port.to_string()]);
    assert_eq!(out.code(), Some(1));
}

#[cfg(unix)] // Unix modes make the dir unsafe
#[test]
fn status_of_a_missing_dir_is_not_running_and_of_an_unsafe_dir_is_unknown() {
    let env = Env::new();
    let out = env.run(&["status"]);
    assert_eq!(
        (out.code(), out.stdout.as_str()),
        (Some(0), "No servers running\n")
    );
    assert_eq!(env.run(&["status", "-p", "8000"]).code(), Some(3));
    assert!(!env.locks.exists(), "status must not create the lock dir");

    std::fs::create_dir(&env.locks).unwrap();
    std::fs::set_permissions(&env.locks, std::fs::Permissions::from_mode(0o777)).unwrap();
    for args in [&["status"][..], &["status", "--port", "8000"]] {
        let out = env.run(args);
        assert_eq!(out.code(), Some(4), "{out:?}");
        assert!(
            out.stderr.starts_with("Error: unsafe lock dir "),
            "{}",
            out.stderr
        );
        assert_eq!(out.stderr.lines().count(), 1);
    }
    // serve refuses it too, with one line naming the path and the fix.
    let out = env.run(&["serve", "-p", &free_port().to_string()]);
    assert_eq!(out.code(), Some(1));
    let line = out
        .stderr
        .lines()
        .find(|l| l.starts_with("Error: "))
        .unwrap();
    // Not the user's default dir, so maybe shared: a private subdirectory
    // as the fix, never `chmod` (issue 17 §6).
    assert!(
        line.contains(&env.locks.display().to_string())
            && line.contains("export LLMLB_LOCK_DIR=")
            && !line.contains("chmod 7"),
        "{line}"
    );
}

#[test]
fn relative_lock_dirs_flag_is_from_cwd_env_is_refused() {
    let env = Env::new();
    let port = free_port();
    let mut cmd = env.cmd(&[
        "--lock-dir",
        "rel",
        "serve",
        "-p",
        &port.to_string(),
        "-H",
        "127.0.0.1",
    ]);
    cmd.env_remove("LLMLB_LOCK_DIR");
    let mut server = env.spawn_cmd(cmd);
    server.wait_health(port);
    assert!(env
        .tmp
        .path()
        .join("rel")
        .join(format!("serve_{port}.lock"))
        .exists());
    let mut stop = env.cmd(&["stop", "-p", &port.to_string(), "--lock-dir", "rel"]);
    stop.env_remove("LLMLB_LOCK_DIR");
    assert_eq!(env.spawn_cmd(stop).finish().code(), Some(0));
    assert_eq!(server.wait().code(), Some(0));

    let mut cmd = env.cmd(&["serve", "-p", &port.to_string()]);
    cmd.env("LLMLB_LOCK_DIR", "rel");
    let out = env.spawn_cmd(cmd).finish();
    assert_eq!(out.code(), Some(1), "{out:?}");
    assert!(out.stderr.contains("relative path"), "{}", out.stderr);
}

/// `--lock-dir sub/../locks` is resolved up to its last component (the
/// library refuses `..`, which could climb out through a symlink), so it
/// names the same dir as `--lock-dir locks`; `..` in LLMLB_LOCK_DIR is
/// refused with the fix.
#[test]
fn dot_dot_in_the_lock_dir_flag_resolves_and_in_the_env_is_refused() {
    let env = Env::new();
    let port = free_port();
    std::fs::create_dir(env.tmp.path().join("sub")).unwrap();
    let p = port.to_string();
    let mut cmd = env.cmd(&[
        "--lock-dir",
        "sub/../dd",
        "serve",
        "-p",
        &p,
        "-H",
        "127.0.0.1",
    ]);
    cmd.env_remove("LLMLB_LOCK_DIR");
    let mut server = env.spawn_cmd(cmd);
    server.wait_health(port);
    assert!(env
        .tmp
        .path()
        .join("dd")
        .join(format!("serve_{port}.lock"))
        .exists());
    let mut stop = env.cmd(&["stop", "-p", &p, "--lock-dir", "dd"]);
    stop.env_remove("LLMLB_LOCK_DIR");
    assert_eq!(env.spawn_cmd(stop).finish().code(), Some(0));
    assert_eq!(server.wait().code(), Some(0));

    let mut cmd = env.cmd(&["serve", "-p", &p]);
    cmd.env("LLMLB_LOCK_DIR", env.tmp.path().join("sub/../dd"));
    let out = env.spawn_cmd(cmd).finish();
    assert_eq!(out.code(), Some(1), "{out:?}");
    assert!(out.stderr.contains("`..`"), "{}", out.stderr);
    assert_eq!(out.stderr.lines().count(), 1, "{}", out.stderr);
}

/// A lock file as a holder on another machine would write it (a lock dir on
/// a shared file system).
fn foreign_info(port: u16, pid: u32) -> String {
    format!(
        r#"{{"pid":{pid},"started_at":"2026-01-30T12:00:00Z","port":{port},"host":"build-7.example.invalid"}}"#
    )
}

#[test]
fn status_shows_a_host_column_only_when_a_holder_is_on_another_host() {
    let env = Env::new();
    let local = free_port();
    let _server = env.serve(local);
    // Only local holders: no HOST column.
    let out = env.run(&["status"]);
    assert_eq!(out.code(), Some(0), "{out:?}");
    let header: Vec<&str> = out
        .stdout
        .lines()
        .next()
        .unwrap()
        .split_whitespace()
        .collect();
    assert_eq!(
        header,
        ["PORT", "PID", "STARTED", "UPTIME", "STATE", "COMMAND"]
    );

    // A port held (by this test process) whose file names another host, and
    // a stale file from another host.
    let held = free_port();
    let dir = llmlb::lock::LockDir::create(&env.locks).unwrap();
    let guard = llmlb::lock::acquire_or_reclaim(&dir, held).unwrap();
    std::fs::write(env.lock_file(held), foreign_info(held, 4242)).unwrap();
    let stale = 1;
    std::fs::write(env.lock_file(stale), foreign_info(stale, 4343)).unwrap();

    let out = env.run(&["status"]);
    assert_eq!(out.code(), Some(0), "{out:?}");
    let rows: Vec<Vec<&str>> = out
        .stdout
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(
        rows[0],
        ["PORT", "PID", "HOST", "STARTED", "UPTIME", "STATE", "COMMAND"],
        "{}",
        out.stdout
    );
    let row = |port: u16| {
        rows.iter()
            .find(|r| r[0] == port.to_string())
            .unwrap_or_else(|| panic!("no row for {port}: {}", out.stdout))
    };
    assert_eq!(row(stale)[1..3], ["4343", "build-7.example.invalid"]);
    // The last columns: an uptime like "300d 8h" is two words, and
    // COMMAND is `-` for these records, written without one.
    assert_eq!(row(stale)[row(stale).len() - 2..], ["Stale", "-"]);
    assert_eq!(row(held)[1..3], ["4242", "build-7.example.invalid"]);
    assert_eq!(row(held)[row(held).len() - 2..], ["Running", "-"]);
    // This host's own holder shows this host's name, not a dash.
    // This test's serve records its serving state, shown with its age:
    // "Ready for 2s" (or "Ready for 1m 2s").
    let mine = row(local);
    let ready = mine.iter().position(|w| *w == "Ready");
    assert!(
        ready.is_some_and(|i| mine.get(i + 1) == Some(&"for")),
        "{}",
        out.stdout
    );
    assert_ne!(mine[2], "-", "{}", out.stdout);
    assert_ne!(mine[2], "build-7.example.invalid");
    drop(guard);
}

/// A reader that stops reading (`llmlb completions bash | grep -q …`, as
/// `.ci/lean` does, or `| head`) gets a quiet exit 0, never a panic: the
/// read end is closed here before llmlb writes a byte.
#[test]
fn generated_documents_tolerate_a_reader_that_went_away() {
    let env = Env::new();
    for args in [&["completions", "bash"][..], &["man"][..]] {
        let mut cmd = env.cmd(args);
        cmd.stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        let mut child = cmd.spawn().unwrap();
        drop(child.stdout.take()); // the reader is gone
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    }
}

/// Windows has no pidfiles: `--pidfile` is refused in one line, exit 1,
/// and the port is left free (tests/cli_pidfile.rs has the Unix side).
#[cfg(windows)]
#[test]
fn pidfile_is_refused_on_windows_in_one_line() {
    let env = Env::new();
    let port = free_port();
    let pidfile = env.tmp.path().join("llmlb.pid");
    let out = env.run(&[
        "serve",
        "--port",
        &port.to_string(),
        "--host",
        "127.0.0.1",
        "--pidfile",
        pidfile.to_str().unwrap(),
    ]);
    assert_eq!(out.code(), Some(1), "{out:?}");
    let errors: Vec<&str> = out
        .stderr
        .lines()
        .filter(|l| l.starts_with("Error: "))
        .collect();
    assert_eq!(errors.len(), 1, "{out:?}");
    assert!(errors[0].contains("--pidfile is not supported"), "{out:?}");
    assert!(!pidfile.exists());
    assert!(!env.lock_file(port).exists(), "the lock was not released");
}
