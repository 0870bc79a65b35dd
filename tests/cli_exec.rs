//! Exec mode, `llmlb serve --port P -- CMD`: exit codes, environment, the
//! child's process group and descriptors, signal forwarding, parent death.
#![cfg(target_os = "linux")]

mod cli_support;

use std::os::unix::process::ExitStatusExt;

use cli_support::*;

#[test]
fn exit_code_and_environment_pass_through() {
    let env = Env::new();
    let port = free_port();
    let out_file = env.tmp.path().join("port.txt");
    let script = format!("echo \"$LLMLB_PORT\" > {}; exit 7", out_file.display());
    let out = env.run(&["serve", "-p", &port.to_string(), "--", "sh", "-c", &script]);
    assert_eq!(out.code(), Some(7), "{out:?}");
    assert_eq!(
        std::fs::read_to_string(&out_file).unwrap().trim(),
        port.to_string()
    );
    assert!(!env.lock_file(port).exists());

    let out = env.run(&[
        "serve",
        "-p",
        &port.to_string(),
        "--",
        "sh",
        "-c",
        "kill -KILL $$",
    ]);
    assert_eq!(out.code(), Some(128 + libc::SIGKILL), "{out:?}");
    assert!(!env.lock_file(port).exists());
}

#[test]
fn a_missing_command_exits_127_and_releases() {
    let env = Env::new();
    let port = free_port();
    let out = env.run(&[
        "serve",
        "-p",
        &port.to_string(),
        "--",
        "llmlb-no-such-command",
    ]);
    assert_eq!(out.code(), Some(127), "{out:?}");
    assert!(
        out.stderr
            .lines()
            .any(|l| l.starts_with("Error: cannot run llmlb-no-such-command: ")),
        "{}",
        out.stderr
    );
    assert!(!env.lock_file(port).exists());
}

#[test]
fn the_child_runs_in_its_own_recorded_group_without_the_lock_fd() {
    for (sig, code) in [(libc::SIGTERM, 143), (libc::SIGINT, 130)] {
        let env = Env::new();
        let port = free_port();
        let pid_file = env.tmp.path().join("child.pid");
        let fds_file = env.tmp.path().join("fds.txt");
        let script = format!(
            "ls -l /proc/$$/fd > {fds}; echo $$ > {pid}; exec sleep 60",
            fds = fds_file.display(),
            pid = pid_file.display()
        );
        let mut server = env.spawn(&["serve", "-p", &port.to_string(), "--", "sh", "-c", &script]);
        let child: u32 = read_when_written(&pid_file).parse().unwrap();
        let _group = GroupGuard(Some(child));
        assert_eq!(pgid_of(child), Some(child), "child leads its own group");
        assert_ne!(pgid_of(server.pid()), Some(child));
        let fds = std::fs::read_to_string(&fds_file).unwrap();
        assert!(
            !fds.contains("serve_"),
            "lock fd leaked into the child:\n{fds}"
        );
        wait_until("child_pgid recorded", || {
            let (code, json) = status_json(&env, Some(port));
            code == Some(0) && json[0]["child_pgid"] == child && json[0]["pid"] == server.pid()
        });

        // The signal goes to llmlb, which forwards it to the group.
        signal(server.pid(), sig);
        assert_eq!(server.wait().code(), Some(code), "{}", server.stderr());
        assert!(!alive(child));
        assert!(!env.lock_file(port).exists());
    }
}

#[test]
fn the_child_dies_with_a_killed_launcher() {
    let env = Env::new();
    let port = free_port();
    let pid_file = env.tmp.path().join("child.pid");
    let script = format!("echo $$ > {}; exec sleep 60", pid_file.display());
    let mut server = env.spawn(&["serve", "-p", &port.to_string(), "--", "sh", "-c", &script]);
    let child: u32 = read_when_written(&pid_file).parse().unwrap();
    let _group = GroupGuard(Some(child));
    signal(server.pid(), libc::SIGKILL);
    assert_eq!(server.wait().signal(), Some(libc::SIGKILL));
    wait_until("the orphaned child to die", || !alive(child));
    // The launcher died without releasing: a stale file, reclaimable.
    assert_eq!(
        env.run(&["status", "--port", &port.to_string()]).code(),
        Some(1)
    );
}
