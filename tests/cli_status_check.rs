//! `llmlb status --check` (and `status --port`): who listens on the port —
//! the holder's tree, nobody, or another program — beside the serving state
//! the holder recorded. Real processes: a python3 squatter with no lock, a
//! holder that has not bound yet (this test, through the library), an HTTP
//! `serve` and an exec-mode command. Linux: the listener's PID is read from
//! `/proc` (elsewhere only a connect probe answers, without a PID).
#![cfg(target_os = "linux")]

mod cli_support;
#[path = "support/prereq.rs"]
mod prereq;

use cli_support::*;
use llmlb::lock::{acquire_or_reclaim, LockDir, ServeState};
use serde_json::Value;
use std::net::TcpStream;
use std::process::Command;

/// A python3 process listening on 127.0.0.1:`port`, with no lock: a squatter.
fn squatter(env: &Env, port: u16) -> Proc {
    let script = format!(
        "import socket,time\ns=socket.socket()\ns.bind(('127.0.0.1',{port}))\ns.listen()\ntime.sleep(600)\n"
    );
    let mut cmd = Command::new("python3");
    cmd.args(["-c", &script]);
    if Command::new("python3").arg("-V").output().is_err() {
        prereq::fail("python3", "install python3 (apt-get install python3)");
    }
    let proc = env.spawn_cmd(cmd);
    wait_until("the squatter to listen", || {
        TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    proc
}

/// A squatter that is not this test's descendant (`setsid -f`: its parent
/// exits at once); returns its PID once it listens.
fn detached_squatter(env: &Env, port: u16) -> u32 {
    let pidfile = env.tmp.path().join(format!("squatter-{port}.pid"));
    let script = format!(
        "import os,socket,time\ns=socket.socket()\ns.bind(('127.0.0.1',{port}))\ns.listen()\n\
         open({path:?}+'.tmp','w').write(str(os.getpid())+'\\n')\nos.rename({path:?}+'.tmp',{path:?})\n\
         time.sleep(600)\n",
        path = pidfile.to_str().unwrap()
    );
    let started = Command::new("setsid")
        .args(["-f", "python3", "-c", &script])
        .status();
    if !started.is_ok_and(|s| s.success()) {
        prereq::fail("setsid and python3", "install util-linux and python3");
    }
    read_when_written(&pidfile).trim().parse().unwrap()
}

/// Kills a process that is not our child on drop.
struct KillPid(u32);

impl Drop for KillPid {
    fn drop(&mut self) {
        // SAFETY: kill(2) on a PID this test started; no memory involved.
        unsafe { libc::kill(self.0 as i32, libc::SIGKILL) };
    }
}

/// `/proc/<pid>/comm`: what status names a process by.
fn comm(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .unwrap()
        .trim_end()
        .to_owned()
}

fn json_of(out: &Output) -> Value {
    serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("status json {e}: {out:?}"))
}

#[test]
fn a_squatter_on_a_free_port_is_named_and_the_port_stays_not_running() {
    let env = Env::new();
    let port = free_port();
    let p = port.to_string();
    // Nothing yet: the lock dir does not even exist.
    let out = env.run(&["status", "--port", &p, "--format", "json"]);
    assert_eq!((out.code(), json_of(&out)), (Some(3), Value::Array(vec![])));

    let squat = squatter(&env, port);
    let pid = squat.pid();
    let out = env.run(&["status", "--port", &p]);
    assert_eq!(out.code(), Some(3), "{out:?}");
    assert_eq!(
        out.stdout,
        format!(
            "No server in lock dir {} holds port {port}, but PID {pid} ({}) listens on it: an llmlb \
             of another user or another lock dir? try `sudo llmlb status -p {port}` or `--lock-dir`\n",
            env.locks.display(),
            comm(pid)
        )
    );
    assert!(comm(pid).starts_with("python3"));

    let out = env.run(&["status", "--port", &p, "--format", "json"]);
    assert_eq!(out.code(), Some(3), "{out:?}");
    let list = json_of(&out);
    assert_eq!(list.as_array().unwrap().len(), 1, "{list}");
    let entry = &list[0];
    assert_eq!(entry["state"], "free");
    assert_eq!(entry["pid"], Value::Null);
    assert_eq!(entry["serve_state"], Value::Null);
    assert_eq!(
        entry["listener"],
        serde_json::json!({"pid": pid, "name": comm(pid), "holder": false})
    );

    // Listing every lock: a port without a lock file is not a server.
    let out = env.run(&["status", "--check"]);
    assert_eq!(
        (out.code(), out.stdout.as_str()),
        (Some(0), "No servers running\n")
    );
}

#[test]
fn a_holder_not_yet_listening_is_not_listening_and_a_squatter_beside_it_is_other() {
    let env = Env::new();
    let port = free_port();
    let p = port.to_string();
    let dir = LockDir::create(&env.locks).unwrap();
    let mut guard = acquire_or_reclaim(&dir, port).unwrap();
    guard.set_state(ServeState::Starting).unwrap();

    let out = env.run(&["status", "--check"]);
    assert_eq!(out.code(), Some(0), "{out:?}");
    let lines: Vec<&str> = out.stdout.lines().collect();
    let header: Vec<&str> = lines[0].split_whitespace().collect();
    assert_eq!(
        header,
        ["PORT", "PID", "STARTED", "UPTIME", "STATE", "LISTENER", "COMMAND"]
    );
    let row = lines[1];
    assert!(
        row.starts_with(&format!("{port}  {}", std::process::id())),
        "{row}"
    );
    assert!(row.contains("  Starting for "), "{row}");
    // LISTENER, then COMMAND (this test's own command line: it holds).
    assert!(row.contains("  Not listening  "), "{row}");

    let out = env.run(&["status", "--port", &p, "--format", "json"]);
    assert_eq!(out.code(), Some(0), "{out:?}");
    let entry = &json_of(&out)[0];
    assert_eq!(entry["state"], "running");
    assert_eq!(entry["serve_state"], "starting");
    assert!(entry["serve_state_since"].as_str().unwrap().ends_with('Z'));
    assert_eq!(entry["listener"], Value::Null);
    assert_eq!(entry["listener_checked"], true);

    // Another program, outside the holder's tree (a child of this test
    // would be in it), takes the port the holder meant to bind.
    let pid = detached_squatter(&env, port);
    let _kill = KillPid(pid);
    let out = env.run(&["status", "--port", &p]);
    assert_eq!(out.code(), Some(0), "{out:?}");
    assert!(
        out.stdout
            .lines()
            .nth(1)
            .unwrap()
            .contains(&format!("  Other: PID {pid} ({})  ", comm(pid))),
        "{out:?}"
    );
    let out = env.run(&["status", "--check", "--format", "json"]);
    assert_eq!(
        json_of(&out)[0]["listener"],
        serde_json::json!({"pid": pid, "name": comm(pid), "holder": false})
    );
    drop(guard);
}

#[test]
fn an_http_serve_is_ready_and_its_own_listener() {
    let env = Env::new();
    let port = free_port();
    let p = port.to_string();
    let server = env.serve(port);
    let pid = server.pid();

    let out = env.run(&["status", "--port", &p]);
    assert_eq!(out.code(), Some(0), "{out:?}");
    let row = out.stdout.lines().nth(1).unwrap().to_owned();
    assert!(row.contains("  Ready for "), "{row}");
    // Then COMMAND, cut at 40 characters (ASCII here).
    let command = format!("llmlb serve --port {p} --host 127.0.0.1");
    let shown = if command.len() <= 40 {
        command
    } else {
        format!("{}…", &command[..39])
    };
    assert!(
        row.ends_with(&format!("  Holder: PID {pid} (llmlb)  {shown}")),
        "{row}"
    );

    let out = env.run(&["status", "--check", "--format", "json"]);
    let entry = &json_of(&out)[0];
    assert_eq!(entry["state"], "running");
    assert_eq!(entry["serve_state"], "ready");
    assert!(entry["serve_state_since"].as_str().unwrap().ends_with('Z'));
    assert_eq!(
        entry["listener"],
        serde_json::json!({"pid": pid, "name": "llmlb", "holder": true})
    );

    // Without --check nothing is looked up: no column; in JSON the same
    // keys, saying it was not looked up (issue 26 §9: one shape, not an
    // absent key that reads as "nobody listens").
    let out = env.run(&["status"]);
    assert!(!out.stdout.contains("LISTENER"), "{out:?}");
    assert!(out.stdout.lines().nth(1).unwrap().contains("  Ready for "));
    let out = env.run(&["status", "--format", "json"]);
    let entry = &json_of(&out)[0];
    assert_eq!(entry["serve_state"], "ready");
    let keys = |e: &Value| {
        let mut keys: Vec<String> = e.as_object().unwrap().keys().cloned().collect();
        keys.sort();
        keys
    };
    let checked = env.run(&["status", "--check", "--format", "json"]);
    assert_eq!(keys(entry), keys(&json_of(&checked)[0]), "{entry}");
    assert_eq!(entry["listener_checked"], false, "{entry}");
    assert_eq!(entry["listener"], Value::Null, "{entry}");
    assert_eq!(json_of(&checked)[0]["listener_checked"], true);
}

#[test]
fn an_exec_mode_command_listening_is_the_holders_tree() {
    let env = Env::new();
    let port = free_port();
    let p = port.to_string();
    if Command::new("python3").arg("-V").output().is_err() {
        prereq::fail("python3", "install python3 (apt-get install python3)");
    }
    let script = format!(
        "import socket,time\ns=socket.socket()\ns.bind(('127.0.0.1',{port}))\ns.listen()\ntime.sleep(600)\n"
    );
    let server = env.spawn(&["serve", "--port", &p, "--", "python3", "-c", &script]);
    wait_until("the command to listen", || {
        TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    let out = env.run(&["status", "--port", &p, "--format", "json"]);
    assert_eq!(out.code(), Some(0), "{out:?}");
    let entry = &json_of(&out)[0];
    assert_eq!(entry["pid"], server.pid(), "{entry}");
    let listener = &entry["listener"];
    assert_eq!(listener["holder"], true, "{entry}");
    let child = listener["pid"].as_u64().expect("a visible PID") as u32;
    assert_ne!(child, server.pid(), "the command listens, not llmlb");
    assert_eq!(listener["name"], comm(child));
}

#[test]
fn a_listeners_name_is_escaped_in_text_and_kept_in_json() {
    let env = Env::new();
    let port = free_port();
    let p = port.to_string();
    if Command::new("python3").arg("-V").output().is_err() {
        prereq::fail("python3", "install python3 (apt-get install python3)");
    }
    // A process names itself (prctl PR_SET_NAME = 15) with an escape in it,
    // then listens: its name is text another program chose.
    let script = format!(
        "import ctypes,socket,time\n\
         ctypes.CDLL(None).prctl(15,b'ev\\x1b[31mil',0,0,0)\n\
         s=socket.socket()\ns.bind(('127.0.0.1',{port}))\ns.listen()\ntime.sleep(600)\n"
    );
    let mut cmd = Command::new("python3");
    cmd.args(["-c", &script]);
    let squat = env.spawn_cmd(cmd);
    wait_until("the squatter to listen", || {
        TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    assert_eq!(comm(squat.pid()), "ev\x1b[31mil");

    let out = env.run(&["status", "--port", &p]);
    assert_eq!(out.code(), Some(3), "{out:?}");
    assert!(!out.stdout.contains('\x1b'), "{out:?}");
    assert!(
        out.stdout
            .contains(&format!("PID {} (ev\\u{{1b}}[31mil) listens", squat.pid())),
        "{out:?}"
    );
    let out = env.run(&["status", "--port", &p, "--format", "json"]);
    assert_eq!(json_of(&out)[0]["listener"]["name"], "ev\x1b[31mil");
}
