//! The small usage slips of issue 26 §9, each answered with the fix: a bad
//! `LLMLB_PORT` named as the variable (empty counts as unset), `-p -1`
//! without clap's `-- -1` tip, a port without `-p`, a COMMAND without `--`,
//! unknown `LLMLB_*` variables, seconds with a unit, `wait --help`'s
//! sections, and docs/cli.md's synopses.
#![cfg(any(target_os = "linux", windows))]

mod cli_support;

use cli_support::*;

/// The `error:` lines of a usage error.
fn errors(out: &Output) -> Vec<&str> {
    out.stderr
        .lines()
        .filter(|l| l.starts_with("error:"))
        .collect()
}

#[test]
fn a_bad_llmlb_port_is_named_as_the_variable_and_an_empty_one_is_unset() {
    let env = Env::new();
    let with_port_env = |args: &[&str], value: &str| {
        let mut cmd = env.cmd(args);
        cmd.env("LLMLB_PORT", value);
        env.spawn_cmd(cmd).finish()
    };
    for args in [
        &["serve"][..],
        &["stop"],
        &["wait", "-t", "0"],
        &["status", "-p"],
    ] {
        for value in ["abc", "0", "65536", " 8000"] {
            let out = with_port_env(args, value);
            assert_eq!(out.code(), Some(2), "{args:?} {value:?}: {out:?}");
            let errors = errors(&out);
            assert_eq!(errors.len(), 1, "{args:?}: {}", out.stderr);
            assert!(
                errors[0].contains("invalid LLMLB_PORT=") && errors[0].contains("not a port"),
                "{args:?} {value:?}: {}",
                out.stderr
            );
            assert!(!out.stderr.contains("'--port <PORT>'"), "{}", out.stderr);
        }
        // -p wins over the variable, as for a good one.
        let mut with_flag = args.to_vec();
        if with_flag == ["status", "-p"] {
            with_flag.push("8000");
        } else {
            with_flag.extend(["-p", "8000"]);
        }
        if args[0] != "serve" {
            let out = with_port_env(&with_flag, "abc");
            assert_ne!(out.code(), Some(2), "{with_flag:?}: {out:?}");
        }
    }
    // Plain status does not use it, so does not refuse it.
    let out = with_port_env(&["status"], "abc");
    assert_eq!(out.code(), Some(0), "{out:?}");
    // Empty: unset, so the default port.
    let out = with_port_env(&["stop"], "");
    assert_eq!(out.code(), Some(0), "{out:?}");
    assert_eq!(out.stdout, "No server running on port 32768\n");
    assert!(
        !env.locks.exists(),
        "usage errors must not touch the lock dir"
    );
}

#[test]
fn a_negative_port_is_out_of_range_not_a_tip_to_write_dash_dash() {
    let env = Env::new();
    for args in [
        &["serve", "-p", "-1"][..],
        &["stop", "-p", "-1"],
        &["stop", "--port", "-8000"],
        &["status", "-p", "-1"],
        &["wait", "-p", "-1"],
    ] {
        let out = env.run(args);
        assert_eq!(out.code(), Some(2), "{args:?}: {out:?}");
        let errors = errors(&out);
        assert_eq!(errors.len(), 1, "{args:?}: {}", out.stderr);
        assert!(
            errors[0].contains("is not in 1..=65535"),
            "{args:?}: {}",
            out.stderr
        );
        for noise in ["tip:", "-- -1", "unexpected argument"] {
            assert!(!out.stderr.contains(noise), "{args:?}: {}", out.stderr);
        }
    }
}

#[test]
fn a_port_without_dash_p_gets_did_you_mean_port() {
    let env = Env::new();
    for args in [
        &["status", "8000"][..],
        &["stop", "8000"],
        &["wait", "8000"],
        &["serve", "8000"],
        &["--lock-dir", "status", "stop", "8000"],
    ] {
        let out = env.run(args);
        assert_eq!(out.code(), Some(2), "{args:?}: {out:?}");
        assert!(
            out.stderr.contains("tip: did you mean `--port 8000`?"),
            "{args:?}: {}",
            out.stderr
        );
    }
    // Not a port: no such tip.
    let out = env.run(&["status", "eighty"]);
    assert_eq!(out.code(), Some(2), "{out:?}");
    assert!(!out.stderr.contains("--port"), "{}", out.stderr);
}

/// `serve -p P CMD …` without `--`: the tip is the command line with `--` in
/// place, quoted for the shell, and it works as printed.
#[test]
fn a_command_without_dash_dash_gets_the_line_with_it() {
    let env = Env::new();
    let port = free_port().to_string();
    let out = env.run(&["serve", "-p", &port, "sh", "-c", "exit 0", "it's"]);
    assert_eq!(out.code(), Some(2), "{out:?}");
    let tip = out
        .stderr
        .lines()
        .find_map(|l| l.trim().strip_prefix("tip: put `--` before COMMAND: "))
        .unwrap_or_else(|| panic!("no tip: {}", out.stderr));
    #[cfg(unix)]
    {
        assert_eq!(
            tip,
            format!("llmlb serve -p {port} -- sh -c 'exit 0' 'it'\\''s'")
        );
        // Pasted into a shell, with llmlb on PATH: serve runs the command.
        let bin = std::path::Path::new(env!("CARGO_BIN_EXE_llmlb"))
            .parent()
            .unwrap();
        let path = std::env::join_paths(
            std::iter::once(bin.to_owned())
                .chain(std::env::split_paths(&std::env::var_os("PATH").unwrap())),
        )
        .unwrap();
        let mut cmd = env.cmd(&[]);
        cmd.env("PATH", path);
        let mut sh = std::process::Command::new("sh");
        sh.arg("-c").arg(tip);
        for (k, v) in cmd.get_envs() {
            match v {
                Some(v) => sh.env(k, v),
                None => sh.env_remove(k),
            };
        }
        let ran = sh.output().unwrap();
        assert!(ran.status.success(), "{tip}: {ran:?}");
    }
    #[cfg(windows)]
    assert!(tip.contains(&format!("serve -p {port} -- sh -c")), "{tip}");
    // An option clap does not know is not taken for COMMAND.
    let out = env.run(&["serve", "-p", &port, "--frobnicate"]);
    assert_eq!(out.code(), Some(2), "{out:?}");
    assert!(!out.stderr.contains("before COMMAND"), "{}", out.stderr);
}

#[test]
fn unknown_llmlb_variables_get_one_warning() {
    let env = Env::new();
    let mut cmd = env.cmd(&["status"]);
    cmd.env("LLMLB_PROT", "8000").env("LLMLB_FOO", "1");
    let out = env.spawn_cmd(cmd).finish();
    assert_eq!(out.code(), Some(0), "{out:?}");
    let warnings: Vec<&str> = out.stderr.lines().filter(|l| l.contains("WARN")).collect();
    assert_eq!(warnings.len(), 1, "{}", out.stderr);
    for name in ["LLMLB_PROT (did you mean LLMLB_PORT?)", "LLMLB_FOO"] {
        assert!(warnings[0].contains(name), "{}", out.stderr);
    }
    // What llmlb reads or sets, and the Python package's library path: quiet.
    let mut cmd = env.cmd(&["status"]);
    cmd.env("LLMLB_LOCK_FD", "3")
        .env("LLMLB_LOCK_LIB", "/x.so")
        .env("LLMLB_HOST", "::1");
    let out = env.spawn_cmd(cmd).finish();
    assert_eq!(out.code(), Some(0), "{out:?}");
    assert!(!out.stderr.contains("WARN"), "{}", out.stderr);
}

#[test]
fn seconds_take_a_unit() {
    let env = Env::new();
    let p = free_port().to_string();
    for secs in ["10s", "500ms", "0.01m", "1.5s", "2 s"] {
        let out = env.run(&["stop", "-p", &p, "-t", secs]);
        assert_eq!(out.code(), Some(0), "-t {secs}: {out:?}");
        let out = env.run(&["wait", "-p", &p, "--for", "free", "-t", secs]);
        assert_eq!(out.code(), Some(0), "wait -t {secs}: {out:?}");
    }
    for secs in ["10x", "s", "ms", "1h", "-1m", "1.5.s"] {
        let out = env.run(&["stop", "-p", &p, "--timeout", secs]);
        assert_eq!(out.code(), Some(2), "-t {secs}: {out:?}");
        assert!(
            out.stderr
                .contains(&format!("`{secs}` is not a number of seconds")),
            "{secs}: {}",
            out.stderr
        );
    }
}

#[test]
fn wait_help_has_the_sections_of_the_other_commands() {
    let env = Env::new();
    for command in ["serve", "stop", "status", "wait"] {
        let short = env.run(&[command, "-h"]);
        let long = env.run(&[command, "--help"]);
        for section in ["Exit codes:", "Examples:"] {
            assert!(
                short.stdout.contains(section),
                "{command} -h: {}",
                short.stdout
            );
            assert!(
                long.stdout.contains(section),
                "{command} --help: {}",
                long.stdout
            );
        }
        for section in ["Environment:", "Files:"] {
            assert!(
                long.stdout.contains(section),
                "{command} --help: {}",
                long.stdout
            );
        }
    }
}

/// docs/cli.md's synopsis line of each command names every option its
/// `--help` lists (by its short or its long form). Unix: it reads the
/// checkout, which the Windows run under Wine does not see.
#[cfg(unix)]
#[test]
fn the_guides_synopses_name_every_option() {
    let guide = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/cli.md"),
    )
    .unwrap();
    let env = Env::new();
    for command in ["serve", "stop", "status", "wait"] {
        let start = format!("`llmlb {command} [");
        let at = guide
            .find(&start)
            .unwrap_or_else(|| panic!("docs/cli.md has no synopsis {start}…`"));
        let synopsis = &guide[at + 1..];
        let synopsis = &synopsis[..synopsis.find('`').unwrap()];
        let help = env.run(&[command, "--help"]).stdout;
        for line in help.lines().map(str::trim_start) {
            if !line.starts_with('-') {
                continue;
            }
            let flags = line.split("  ").next().unwrap();
            let long = flags
                .split([',', ' '])
                .find(|w| w.starts_with("--"))
                .unwrap_or_default();
            let short = flags
                .strip_prefix('-')
                .filter(|_| flags.as_bytes().get(2) == Some(&b','));
            if ["--help", "--version", "--lock-dir"].contains(&long) {
                continue;
            }
            let named = synopsis.contains(&format!("{long} "))
                || synopsis.contains(&format!("{long}]"))
                || short.is_some_and(|s| synopsis.contains(&format!("-{} ", &s[..1])));
            assert!(named, "{command}: `{synopsis}` does not name {flags}");
        }
    }
}

/// A stale entry has no serving state: its record's "ready" was the dead
/// holder's last word (issue 26 §9).
#[cfg(unix)]
#[test]
fn a_stale_entry_shows_no_serving_state() {
    let env = Env::new();
    let port = free_port();
    let mut server = env.serve(port);
    let (_, before) = status_json(&env, Some(port));
    assert_eq!(before[0]["serve_state"], "ready", "{before}");
    server.kill();
    let (code, after) = status_json(&env, Some(port));
    assert_eq!(code, Some(1), "stale: {after}");
    assert_eq!(after[0]["state"], "stale", "{after}");
    assert_eq!(after[0]["serve_state"], serde_json::Value::Null, "{after}");
    assert_eq!(
        after[0]["serve_state_since"],
        serde_json::Value::Null,
        "{after}"
    );
    assert_eq!(after[0]["pid"], before[0]["pid"], "{after}");
}
