//! `llmlb serve` end to end: lifecycle, refusal, signals, crash recovery,
//! bind failure and a start-up race, each with its own lock dir and port.
//! Linux and Windows (under Wine in CI); macOS is compile-checked only.
#![cfg(any(target_os = "linux", windows))]

mod cli_support;
#[path = "support/prereq.rs"]
mod prereq;

#[cfg(unix)]
use std::os::unix::process::ExitStatusExt;

use cli_support::*;

#[test]
fn serve_then_status_then_stop() {
    let env = Env::new();
    let port = free_port();
    let mut server = env.serve(port);
    let pid = server.pid();

    let health: serde_json::Value = serde_json::from_str(&server.wait_health(port)).unwrap();
    assert_eq!(health["pid"], pid);
    assert_eq!(health["port"], port);
    assert!(health["started_at"].as_str().unwrap().ends_with('Z'));
    assert_eq!(http_get(port, "/nope").unwrap().0, 404);

    let table = env.run(&["status"]);
    assert_eq!(table.code(), Some(0), "{table:?}");
    let lines: Vec<&str> = table.stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{}", table.stdout);
    let header: Vec<&str> = lines[0].split_whitespace().collect();
    assert_eq!(
        header,
        ["PORT", "PID", "STARTED", "UPTIME", "STATE", "COMMAND"]
    );
    let row: Vec<&str> = lines[1].split_whitespace().collect();
    assert_eq!(row[0], port.to_string());
    assert_eq!(row[1], pid.to_string());
    assert_eq!(row[2], health["started_at"].as_str().unwrap());
    // The STATE cell: the serving state serve recorded and how long it has
    // been in it ("Ready for 1s", "Ready for 1m 2s").
    let ready = row.iter().position(|w| *w == "Ready").expect(lines[1]);
    assert_eq!(row[ready + 1], "for", "{}", lines[1]);
    assert!(row[ready + 2].ends_with('s') || row[ready + 2].ends_with('m'));
    // COMMAND: how it was started (the program's file name, the arguments),
    // cut at 40 characters.
    let p = port.to_string();
    let program = if cfg!(windows) { "llmlb.exe" } else { "llmlb" };
    let command = format!("{program} serve --port {p} --host 127.0.0.1");
    let shown = match command.chars().count() {
        n if n <= 40 => command.clone(),
        _ => command.chars().take(39).chain(['…']).collect(),
    };
    let cell = lines[1].rsplit("  ").next().unwrap();
    assert_eq!(cell, shown, "{}", table.stdout);

    let (code, json) = status_json(&env, Some(port));
    assert_eq!(code, Some(0));
    let entry = &json.as_array().unwrap()[0];
    assert_eq!(entry["port"], port);
    assert_eq!(entry["pid"], pid);
    assert_eq!(entry["state"], "running");
    assert_eq!(entry["started_at"], health["started_at"]);
    // Whole in JSON, with the working directory it was started in.
    assert_eq!(
        entry["argv"],
        serde_json::json!([
            env!("CARGO_BIN_EXE_llmlb"),
            "serve",
            "--port",
            p,
            "--host",
            "127.0.0.1"
        ])
    );
    let cwd = std::path::PathBuf::from(entry["cwd"].as_str().expect("a cwd"));
    #[cfg(unix)]
    assert_eq!(cwd, env.tmp.path().canonicalize().unwrap());
    #[cfg(windows)]
    assert_eq!(cwd.file_name(), env.tmp.path().file_name());
    let record: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(env.lock_file(port)).unwrap()).unwrap();
    assert_eq!(record["argv"], entry["argv"]);
    assert_eq!(record["cwd"], entry["cwd"]);

    let stop = env.run(&["stop", "--port", &port.to_string()]);
    assert_eq!(stop.code(), Some(0), "{stop:?}");
    assert_eq!(
        stop.stdout,
        format!("Stopping server on port {port} (PID: {pid})...\nServer stopped\n")
    );
    // `stop` waited for the lock, so the file is gone by now.
    assert!(!env.lock_file(port).exists());
    assert_eq!(server.wait().code(), Some(0), "{}", server.stderr());

    let after = env.run(&["status", "--port", &port.to_string()]);
    assert_eq!(after.code(), Some(3));
    assert_eq!(after.stdout, format!("No server running on port {port}\n"));
    let all = env.run(&["status"]);
    assert_eq!(
        (all.code(), all.stdout.as_str()),
        (Some(0), "No servers running\n")
    );
    let (code, json) = status_json(&env, None);
    assert_eq!((code, json), (Some(0), serde_json::json!([])));

    // Idempotent.
    let again = env.run(&["stop", "--port", &port.to_string()]);
    assert_eq!(again.code(), Some(0));
    assert_eq!(again.stdout, format!("No server running on port {port}\n"));
}

#[test]
fn duplicate_is_refused_and_the_holder_file_untouched() {
    let env = Env::new();
    let port = free_port();
    let mut server = env.serve(port);
    let pid = server.pid();
    let before = std::fs::read(env.lock_file(port)).unwrap();
    let info = llmlb::lock::LockInfo::parse(&before).expect("holder info");
    assert_eq!(info.pid, pid);
    let started = info.started_at_display();

    let dup = env.run(&["serve", "--port", &port.to_string(), "--host", "127.0.0.1"]);
    assert_eq!(dup.code(), Some(1), "{dup:?}");
    // The platform's own command: Windows has no `kill`.
    let kill = if cfg!(windows) {
        format!("taskkill /F /PID {pid}")
    } else {
        format!("kill -TERM {pid}")
    };
    assert_eq!(
        dup.stderr,
        format!(
            "Error: Server already running on port {port} (PID: {pid}, started: {started})\n\
             \n\
             To stop: llmlb stop --port {port}\n\
             Or:      {kill}\n"
        )
    );
    assert_eq!(std::fs::read(env.lock_file(port)).unwrap(), before);

    // Named with --lock-dir, the hint repeats it so it works as printed.
    let mut cmd = env.cmd(&["serve", "--port", &port.to_string()]);
    cmd.env_remove("LLMLB_LOCK_DIR")
        .arg("--lock-dir")
        .arg(&env.locks);
    let dup2 = env.spawn_cmd(cmd).finish();
    assert_eq!(dup2.code(), Some(1));
    assert!(
        dup2.stderr.contains(&format!(
            "To stop: llmlb stop --port {port} --lock-dir {}\n",
            env.locks.display()
        )),
        "{}",
        dup2.stderr
    );
    assert_eq!(std::fs::read(env.lock_file(port)).unwrap(), before);
    assert!(server.try_wait().is_none());
    server.wait_health(port);
}

#[test]
fn unreadable_holder_details_are_reported_as_such() {
    let env = Env::new();
    let port = free_port();
    // This test process holds the lock, then garbles its own file.
    let dir = llmlb::lock::LockDir::create(&env.locks).unwrap();
    let guard = llmlb::lock::acquire_or_reclaim(&dir, port).unwrap();
    std::fs::write(env.lock_file(port), b"garbage, not JSON").unwrap();

    let dup = env.run(&["serve", "--port", &port.to_string()]);
    assert_eq!(dup.code(), Some(1));
    assert_eq!(
        dup.stderr,
        format!(
            "Error: Server already running on port {port} (holder details unreadable)\n\
             \n\
             To stop: llmlb stop --port {port}\n"
        )
    );
    // stop has no PID it could verify: it refuses, and signals nothing (this
    // process would die otherwise).
    let stop = env.run(&["stop", "--port", &port.to_string()]);
    assert_eq!(stop.code(), Some(1), "{stop:?}");
    assert!(
        stop.stderr.starts_with("Error: ") && stop.stderr.contains("unreadable"),
        "{}",
        stop.stderr
    );
    assert_eq!(stop.stderr.lines().count(), 1);
    drop(guard);
}

#[cfg(unix)] // signals
#[test]
fn sigterm_and_sigint_stop_gracefully() {
    for sig in [libc::SIGTERM, libc::SIGINT] {
        let env = Env::new();
        let port = free_port();
        let mut server = env.serve(port);
        assert!(env.lock_file(port).exists());
        signal(server.pid(), sig);
        let status = server.wait();
        assert_eq!(status.code(), Some(0), "signal {sig}: {}", server.stderr());
        assert!(!env.lock_file(port).exists(), "signal {sig}");
    }
}

#[cfg(unix)] // signals
#[test]
fn kill_9_leaves_a_stale_lock_that_the_next_serve_reclaims() {
    let env = Env::new();
    let port = free_port();
    let mut first = env.serve(port);
    let dead = first.pid();
    signal(dead, libc::SIGKILL);
    assert_eq!(first.wait().signal(), Some(libc::SIGKILL));
    assert!(env.lock_file(port).exists());

    let status = env.run(&["status", "--port", &port.to_string()]);
    assert_eq!(status.code(), Some(1), "{status:?}");
    let row: Vec<&str> = status
        .stdout
        .lines()
        .nth(1)
        .unwrap()
        .split_whitespace()
        .collect();
    assert_eq!(row[1], dead.to_string());
    // With --port, the LISTENER column follows STATE: the dead server's
    // socket went with it. (COMMAND, last, is the dead one's.)
    let stale = row.iter().position(|w| *w == "Stale").expect("a Stale row");
    assert_eq!(row[stale..stale + 3], ["Stale", "Not", "listening"]);
    assert_eq!(row[stale + 3], "llmlb", "{row:?}");
    let (_, json) = status_json(&env, Some(port));
    assert_eq!(json[0]["state"], "stale");
    assert_eq!(json[0]["listener"], serde_json::Value::Null);
    assert_eq!(json[0]["pid"], dead);

    let mut second = env.serve(port);
    let health: serde_json::Value = serde_json::from_str(&second.wait_health(port)).unwrap();
    assert_eq!(health["pid"], second.pid());
    assert!(
        second.stderr().contains(&format!(
            "Stale lock file detected (previous holder PID {dead} exited without releasing it), reclaiming"
        )),
        "{}",
        second.stderr()
    );
    signal(second.pid(), libc::SIGTERM);
    assert_eq!(second.wait().code(), Some(0));
    assert!(!env.lock_file(port).exists());
}

#[test]
fn bind_failure_exits_1_and_releases_the_lock() {
    let env = Env::new();
    let squatter = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = squatter.local_addr().unwrap().port();
    let out = env.run(&["serve", "--port", &port.to_string(), "--host", "127.0.0.1"]);
    assert_eq!(out.code(), Some(1), "{out:?}");
    // Who listens is named where the platform shows it: this test.
    let named = if cfg!(target_os = "linux") {
        format!(": {}", this_process())
    } else {
        String::new()
    };
    assert!(
        out.stderr.lines().any(|l| l.starts_with(&format!(
            "Error: port {port} is already in use by another program{named}"
        ))),
        "{}",
        out.stderr
    );
    assert!(!env.lock_file(port).exists());
}

#[test]
fn ten_concurrent_serves_leave_exactly_one_running() {
    let env = Env::new();
    let port = free_port();
    let mut procs: Vec<Proc> = (0..10)
        .map(|_| env.spawn(&["serve", "--port", &port.to_string(), "--host", "127.0.0.1"]))
        .collect();
    // The nine losers exit on their own; wait for that.
    wait_until("nine losers to exit", || {
        procs
            .iter_mut()
            .map(|p| p.try_wait())
            .filter(Option::is_some)
            .count()
            >= 9
    });
    let mut running = Vec::new();
    let mut exited = Vec::new();
    for p in procs.iter_mut() {
        if p.try_wait().is_none() {
            running.push(p);
        } else {
            exited.push(p);
        }
    }
    assert_eq!(running.len(), 1);
    for loser in exited {
        assert_eq!(
            loser.try_wait().unwrap().code(),
            Some(1),
            "{}",
            loser.stderr()
        );
        assert!(
            loser
                .stderr()
                .starts_with(&format!("Error: Server already running on port {port} (")),
            "{}",
            loser.stderr()
        );
    }
    let winner = running.into_iter().next().unwrap();
    let health: serde_json::Value = serde_json::from_str(&winner.wait_health(port)).unwrap();
    assert_eq!(health["pid"], winner.pid());
    let stop = env.run(&["stop", "--port", &port.to_string()]);
    assert_eq!(stop.code(), Some(0));
    assert_eq!(winner.wait().code(), Some(0));
}

#[cfg(unix)] // signals
#[test]
fn a_slow_client_blocks_neither_other_clients_nor_shutdown() {
    use std::io::Write as _;
    let env = Env::new();
    let port = free_port();
    let mut server = env.serve(port);
    // Half a request, never finished.
    let mut slow = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    slow.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    assert_eq!(http_get(port, "/health").unwrap().0, 200);
    signal(server.pid(), libc::SIGTERM);
    // The drain deadline (3 s) cuts the slow client off; PATIENCE is 15 s.
    assert_eq!(server.wait().code(), Some(0), "{}", server.stderr());
    assert!(!env.lock_file(port).exists());
    drop(slow);
}

#[test]
#[cfg_attr(
    windows,
    ignore = "formatting is platform-independent and tested on Linux; IPv6 under Wine depends on the host, not on llmlb"
)]
fn ipv6_listen_addresses_are_printed_in_brackets() {
    let env = Env::new();
    // An address no host has (RFC 3849 documentation prefix): the bind
    // fails on any machine, IPv6 enabled or not, and the message must name
    // the address so that its port is not read as part of it.
    let port = free_port();
    let out = env.run(&[
        "serve",
        "--port",
        &port.to_string(),
        "--host",
        "2001:db8::1",
    ]);
    assert_eq!(out.code(), Some(1), "{out:?}");
    assert!(
        out.stderr
            .contains(&format!("Error: cannot listen on [2001:db8::1]:{port}: ")),
        "{}",
        out.stderr
    );
    assert!(!env.lock_file(port).exists());

    if std::net::TcpListener::bind("[::1]:0").is_err() {
        prereq::skip_unless_ci(
            "IPv6 loopback (::1)",
            "enable IPv6 on lo",
            "the listening-line check",
        );
        return;
    }
    // Both spellings of the address, bare and as in a URL.
    for host in ["::1", "[::1]"] {
        let port = free_port();
        let mut server = env.spawn(&["serve", "--port", &port.to_string(), "--host", host]);
        let line = format!("listening on http://[::1]:{port} (PID {})", server.pid());
        wait_until(&format!("`{line}` in the log"), || {
            server.stderr().contains(&line) || server.try_wait().is_some()
        });
        assert!(
            server.stderr().contains(&line),
            "{host}: {}",
            server.stderr()
        );
        let connected = std::net::TcpStream::connect(("::1", port));
        assert!(connected.is_ok(), "{host}: {connected:?}");
    }
}

/// An invalid `LLMLB_LOG_LEVEL`/`RUST_LOG` word (`verbose`, `warnings`) used
/// to be read as a target name and silence every line, the stale-reclaim
/// warning included. It now gets one warning line, and info is used (issue
/// 18 §6); a valid level still applies, without that warning.
#[test]
fn an_invalid_log_level_is_reported_once_and_info_is_used() {
    let env = Env::new();
    llmlb::lock::LockDir::create(&env.locks).unwrap();
    for (var, value, valid) in [
        ("LLMLB_LOG_LEVEL", "verbose", false),
        ("RUST_LOG", "warnings", false),
        ("LLMLB_LOG_LEVEL", "WARN", true),
    ] {
        let port = free_port();
        let p = port.to_string();
        // A holder that died without releasing: serve reclaims its file
        // with a warning.
        std::fs::write(env.lock_file(port), b"not json").unwrap();
        let mut cmd = env.cmd(&["serve", "-p", &p, "-H", "127.0.0.1"]);
        cmd.env_remove("LLMLB_LOG_LEVEL").env(var, value);
        let mut server = env.spawn_cmd(cmd);
        server.wait_health(port);
        let stop = env.run(&["stop", "-p", &p]);
        assert_eq!(stop.code(), Some(0), "{stop:?}");
        assert_eq!(server.wait().code(), Some(0));
        let stderr = server.stderr();
        let warned: Vec<&str> = stderr
            .lines()
            .filter(|l| l.contains("ignoring invalid"))
            .collect();
        if valid {
            assert!(warned.is_empty(), "{var}={value}: {stderr}");
        } else {
            assert_eq!(warned.len(), 1, "{var}={value}: {stderr}");
            assert!(
                warned[0].contains(&format!("{var} \"{value}\""))
                    && warned[0].ends_with("using info"),
                "{stderr}"
            );
        }
        assert!(
            stderr.contains("Stale lock file detected"),
            "{var}={value}: {stderr}"
        );
        // Info lines show at info, not at warn.
        assert_eq!(
            stderr.contains("listening on"),
            !valid,
            "{var}={value}: {stderr}"
        );
    }
}

#[test]
fn the_record_says_ready_once_the_server_listens() {
    let env = Env::new();
    let port = free_port();
    let mut server = env.serve(port);
    server.wait_health(port);
    let info = llmlb::lock::LockInfo::parse(&std::fs::read(env.lock_file(port)).unwrap())
        .expect("holder info");
    assert_eq!(info.state, Some(llmlb::lock::ServeState::Ready));
    // Ready since after the lock was taken (starting was written first).
    assert!(info.state_since.expect("state_since") >= info.started_at);
}
