//! The signals an operator sends without reading anything (logrotate's
//! `postrotate`, `ExecReload=/bin/kill -HUP $MAINPID`, a closed terminal):
//! none kills `serve` without releasing. Exec mode forwards SIGHUP, SIGUSR1,
//! SIGQUIT and SIGWINCH to its command; HTTP mode ignores SIGHUP, SIGUSR1 and
//! SIGWINCH and stops gracefully on SIGQUIT; SIGUSR2 is llmlb's reload
//! (tests/reload.rs), never forwarded, and a no-op where there is no
//! handover to reload with. A
//! requested stop whose command dies of the forwarded signal ends `serve`
//! by that signal; `--ready-timeout` stops a command that never becomes
//! ready and says what it waited for.
#![cfg(target_os = "linux")]

mod cli_support;

use std::os::unix::process::ExitStatusExt;
use std::path::Path;

use cli_support::*;

/// A Python command that appends the name of each signal it receives
/// (HUP, USR1, USR2, QUIT, WINCH) to `log`, and creates `log.ready` once its
/// handlers are in place.
fn trapping_command(log: &Path) -> Vec<String> {
    let script = "import signal, sys, time\n\
                  log = sys.argv[1]\n\
                  def note(n, _):\n    \
                      with open(log, 'a') as f: f.write(signal.Signals(n).name + '\\n')\n\
                  for s in (signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2, signal.SIGQUIT, signal.SIGWINCH):\n    \
                      signal.signal(s, note)\n\
                  open(log + '.ready', 'w').close()\n\
                  while True: time.sleep(0.05)\n";
    vec![
        "python3".to_owned(),
        "-c".to_owned(),
        script.to_owned(),
        log.display().to_string(),
    ]
}

fn received(log: &Path) -> Vec<String> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

/// `serve` is running and `status --port` shows it as the holder.
fn assert_serving(env: &Env, port: u16, server: &mut Proc) {
    assert!(
        server.try_wait().is_none(),
        "serve died: {}",
        server.stderr()
    );
    let (code, json) = status_json(env, Some(port));
    assert_eq!(code, Some(0), "{json}");
    assert_eq!(json[0]["pid"], server.pid(), "{json}");
}

#[test]
fn exec_mode_forwards_hup_usr1_quit_winch_ignores_usr2_and_dies_of_the_stop_signal() {
    let env = Env::new();
    let port = free_port();
    let log = env.tmp.path().join("signals.log");
    let mut args = vec![
        "serve".to_owned(),
        "-p".to_owned(),
        port.to_string(),
        "--ready".to_owned(),
        "immediate".to_owned(),
        "--".to_owned(),
    ];
    args.extend(trapping_command(&log));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut server = env.spawn(&args);
    let ready = log.with_extension("log.ready");
    wait_until("the command's handlers are set", || ready.exists());

    for (sig, name) in [
        (libc::SIGHUP, "SIGHUP"),
        (libc::SIGUSR1, "SIGUSR1"),
        (libc::SIGQUIT, "SIGQUIT"),
        (libc::SIGWINCH, "SIGWINCH"),
    ] {
        signal(server.pid(), sig);
        wait_until(&format!("the command received {name}"), || {
            received(&log).iter().any(|l| l == name)
        });
        assert_serving(&env, port, &mut server);
    }

    // USR2 is llmlb's reload, never forwarded; without a passed socket
    // there is no handover to reload with, and the log says so. Once it
    // has, a HUP sent after it arrives alone.
    signal(server.pid(), libc::SIGUSR2);
    wait_until("SIGUSR2's reload logged as impossible", || {
        server.stderr().contains("offers no handover")
    });
    signal(server.pid(), libc::SIGHUP);
    wait_until("the second SIGHUP", || {
        received(&log).iter().filter(|l| *l == "SIGHUP").count() == 2
    });
    assert!(
        !received(&log).iter().any(|l| l == "SIGUSR2"),
        "SIGUSR2 reached the command: {:?}",
        received(&log)
    );
    assert_serving(&env, port, &mut server);

    // A requested stop: the command dies of the forwarded SIGTERM, and so
    // does serve, after releasing (systemd's clean stop; a shell sees 143).
    let out = env.run(&["stop", "-p", &port.to_string()]);
    assert_eq!(out.code(), Some(0), "{out:?}");
    let status = server.wait();
    assert_eq!(
        status.signal(),
        Some(libc::SIGTERM),
        "{status}; {}",
        server.stderr()
    );
    assert!(!env.lock_file(port).exists());
}

#[test]
fn a_command_that_exits_by_itself_on_a_stop_keeps_its_code() {
    let env = Env::new();
    let port = free_port();
    let ready = env.tmp.path().join("ready");
    let script = format!(
        "trap 'exit 3' TERM; touch {}; while :; do sleep 0.05; done",
        ready.display()
    );
    let mut server = env.spawn(&["serve", "-p", &port.to_string(), "--", "sh", "-c", &script]);
    wait_until("the trap is set", || ready.exists());
    let out = env.run(&["stop", "-p", &port.to_string()]);
    assert_eq!(out.code(), Some(0), "{out:?}");
    let status = server.wait();
    assert_eq!(status.code(), Some(3), "{status}; {}", server.stderr());
    assert!(!env.lock_file(port).exists());
}

#[test]
fn http_mode_ignores_hup_usr1_winch_and_stops_gracefully_on_quit() {
    let env = Env::new();
    let port = free_port();
    let mut server = env.serve(port);
    signal(server.pid(), libc::SIGWINCH);
    for (sig, line) in [
        (libc::SIGHUP, "received SIGHUP; ignored"),
        (libc::SIGUSR1, "received SIGUSR1; ignored"),
    ] {
        signal(server.pid(), sig);
        wait_until(line, || server.stderr().contains(line));
        assert_serving(&env, port, &mut server);
        let (code, body) = http_get(port, "/health").expect("/health answers");
        assert_eq!(code, 200, "{body}");
        assert!(
            body.contains(&format!("\"pid\":{}", server.pid())),
            "{body}"
        );
    }

    signal(server.pid(), libc::SIGQUIT);
    let status = server.wait();
    assert_eq!(status.code(), Some(0), "{status}; {}", server.stderr());
    assert!(!env.lock_file(port).exists());
    let (code, _) = status_json(&env, Some(port));
    assert_eq!(code, Some(3), "status after the stop");
}

/// `python3 -m http.server OTHER` under `serve -p PORT --ready-timeout`:
/// exit 1 with one line naming the wait, the command stopped, both ports
/// free.
#[test]
fn a_command_not_ready_in_time_is_stopped_and_named_with_where_it_listens() {
    let env = Env::new();
    let port = free_port();
    let other = free_port();
    let out = env.run(&[
        "serve",
        "-p",
        &port.to_string(),
        "--host",
        "127.0.0.1",
        "--ready-timeout",
        "2",
        "--",
        "python3",
        "-m",
        "http.server",
        "--bind",
        "127.0.0.1",
        &other.to_string(),
    ]);
    assert_eq!(out.code(), Some(1), "{out:?}");
    let errors: Vec<&str> = out
        .stderr
        .lines()
        .filter(|l| l.starts_with("Error: "))
        .collect();
    assert_eq!(errors.len(), 1, "{}", out.stderr);
    let error = errors[0];
    assert!(
        error.contains(&format!(
            "did not listen on port {port} within 2s (--ready-timeout)"
        )),
        "{error}"
    );
    // Where it listens instead is named only if Python got as far as
    // listening within the 2 s (not under heavy load): the report test
    // below checks that part.
    assert!(!env.lock_file(port).exists());
    // The command was stopped: its port is free again.
    std::net::TcpListener::bind(("127.0.0.1", other)).expect("the command's port is free");
    std::net::TcpListener::bind(("127.0.0.1", port)).expect("the port is free");
}

/// While starting, a line every 10 s says what `serve` still waits for and
/// where the command listens instead (one real 10 s wait: the interval is
/// not a setting; a Python slow to listen is named by a later line).
#[test]
fn a_starting_command_is_reported_every_ten_seconds_with_where_it_listens() {
    let env = Env::new();
    let port = free_port();
    let other = free_port();
    let mut server = env.spawn(&[
        "serve",
        "-p",
        &port.to_string(),
        "--",
        "python3",
        "-m",
        "http.server",
        "--bind",
        "127.0.0.1",
        &other.to_string(),
    ]);
    let line = format!("listens on {other}, not {port}");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10) + PATIENCE;
    while !server.stderr().contains(&line) {
        assert!(
            std::time::Instant::now() < deadline,
            "no report naming {other}: {}",
            server.stderr()
        );
        assert!(server.try_wait().is_none(), "{}", server.stderr());
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let report = server
        .stderr()
        .lines()
        .find(|l| l.contains(&line))
        .unwrap()
        .to_owned();
    assert!(
        report.contains("still waiting for python3 (PID ")
            && report.contains(&format!("to listen on port {port}")),
        "{report}"
    );
    assert_serving(&env, port, &mut server);
    signal(server.pid(), libc::SIGTERM);
    assert_eq!(
        server.wait().signal(),
        Some(libc::SIGTERM),
        "{}",
        server.stderr()
    );
}
