//! `llmlb status`: probes only (never takes or breaks a lock), prints a table
//! or JSON, and with `--port` exits with the LSB status code.
//!
//! With `--check`, and always with `--port`, it also says who listens on the
//! port: the holder's process tree, nobody, or another program. Plain
//! `status` never looks (a listener lookup reads every process's
//! descriptors; a listing of many locks must stay a directory scan).

use chrono::Utc;
use llmlb::lock::{IdentityCheck, LockDir, LockError, LockInfo, LockState, PortReport};
use llmlb::supervise::listener::{pid_from_namespace, port_listener, tree_listens};
use serde_json::{json, Value};

use super::LockDirChoice;

/// LSB: program is running.
const RUNNING: i32 = 0;
/// LSB: program is dead and the lock file exists.
const DEAD_LOCK_EXISTS: i32 = 1;
/// LSB: program is not running.
const NOT_RUNNING: i32 = 3;
/// LSB: program or service status is unknown.
const UNKNOWN: i32 = 4;

/// One line of output.
struct Row {
    port: u16,
    /// The lock file; `None` when the lock dir does not exist.
    path: Option<String>,
    state: Result<LockState, LockError>,
    /// Who listens on the port: `None` when not looked up (no `--check`).
    listener: Option<Result<Option<Seen>, String>>,
    /// `serve --proxy`: who listens on the holder's backend port, looked up
    /// with `listener`; `None` otherwise.
    backend: Option<Result<Option<Seen>, String>>,
}

impl From<PortReport> for Row {
    fn from(r: PortReport) -> Row {
        Row {
            port: r.port,
            path: Some(r.path.display().to_string()),
            state: r.state,
            listener: None,
            backend: None,
        }
    }
}

/// A process listening on a row's port, and whether it is the holder's.
struct Seen {
    pid: Option<u32>,
    /// Its command name as the process set it (JSON carries it as is; text
    /// output escapes it).
    name: Option<String>,
    /// The listener is the recorded holder or in its process tree.
    holder: bool,
}

impl Seen {
    /// `PID 123 (python3)`, `PID 123`, or `PID not visible`.
    fn who(&self) -> String {
        match (self.pid, &self.name) {
            // Text another process chose: control characters escaped.
            (Some(pid), Some(name)) => format!(
                "PID {pid} ({})",
                llmlb::lock::printable(std::path::Path::new(name))
            ),
            (Some(pid), None) => format!("PID {pid}"),
            (None, _) => "PID not visible".into(),
        }
    }

    /// The LISTENER cell.
    fn cell(&self) -> String {
        match (self.holder, self.pid) {
            (true, None) => "Holder".into(),
            (true, Some(_)) => format!("Holder: {}", self.who()),
            (false, _) => format!("Other: {}", self.who()),
        }
    }

    fn json(&self) -> Value {
        json!({"pid": self.pid, "name": self.name, "holder": self.holder})
    }
}

impl Row {
    fn info(&self) -> Option<&LockInfo> {
        self.state.as_ref().ok().and_then(LockState::info)
    }

    /// Looks up who listens on the port, and whether that is the holder's
    /// tree: the recorded PID's or the exec command's process group leader's
    /// (`child_pgid`, which outlives a killed launcher). A holder in another
    /// PID namespace (a container) is matched through its namespace's
    /// numbering where this process can see into it; one on another host
    /// never is, and a stale record's PID may be anybody's now.
    fn look(&mut self) {
        let roots: Vec<u32> = match (&self.state, self.holder_kind()) {
            // A draining predecessor still serves the port it handed over.
            (Ok(LockState::Held(Some(info))), Some("local" | "inherited")) => {
                std::iter::once(info.pid)
                    .chain(info.child_pgid)
                    .chain(info.draining.iter().copied())
                    .collect()
            }
            (Ok(LockState::Held(Some(info))), Some("other_pid_namespace")) => {
                let ns = info.identity.as_ref().and_then(|id| id.pid_ns.as_deref());
                std::iter::once(info.pid)
                    .chain(info.child_pgid)
                    .filter_map(|pid| pid_from_namespace(ns?, pid))
                    .collect()
            }
            _ => Vec::new(),
        };
        let port = self.port;
        self.listener = Some(seen_on(port, &roots));
        // A proxy's command serves on its private port: the holder's tree
        // (its command) should be who listens there.
        if let Some(backend) = self.live_info().and_then(|i| i.backend_port) {
            self.backend = Some(seen_on(backend, &roots));
        }
    }

    /// The record of a live holder (a stale record's backend port is
    /// nobody's).
    fn live_info(&self) -> Option<&LockInfo> {
        match &self.state {
            Ok(LockState::Held(Some(info))) => Some(info),
            _ => None,
        }
    }

    /// The BACKEND cell: `43127`, with who listens there once looked up
    /// (`43127: Holder: PID 9 (python3)`); `-` for a holder without one.
    fn backend_cell(&self) -> String {
        let Some(port) = self.live_info().and_then(|i| i.backend_port) else {
            return "-".into();
        };
        match &self.backend {
            None => port.to_string(),
            Some(Ok(None)) => format!("{port}: Not listening"),
            Some(Ok(Some(seen))) => format!("{port}: {}", seen.cell()),
            Some(Err(_)) => format!("{port}: Unknown"),
        }
    }

    /// The LISTENER cell: `Holder: PID 1 (llmlb)`, `Not listening`,
    /// `Other: PID 2 (python3)`, `Unknown`.
    fn listener_cell(&self) -> String {
        match &self.listener {
            None => "-".into(),
            Some(Ok(None)) => "Not listening".into(),
            Some(Ok(Some(seen))) => seen.cell(),
            Some(Err(_)) => "Unknown".into(),
        }
    }

    /// The STATE cell: the record's serving state and how long it has been
    /// in it (`Ready for 5m 3s`), `Running` for a record without one, and
    /// what makes the holder's PID unusable here.
    fn state_cell(&self) -> String {
        let held = match &self.state {
            Ok(LockState::Held(info)) => info.as_ref(),
            Ok(LockState::Stale(_)) => return "Stale".into(),
            Ok(LockState::Free) => return "Free".into(),
            Err(_) => return "Unknown".into(),
        };
        let base = match held.and_then(|i| i.state.map(|s| (s, i.state_since))) {
            None => "Running".to_owned(),
            Some((state, None)) => state.title().to_owned(),
            Some((state, Some(since))) => format!(
                "{} for {}",
                state.title(),
                human_duration((Utc::now() - since).num_seconds().max(0))
            ),
        };
        // The predecessor a `serve --replace` took over from, finishing
        // its requests: it no longer accepts, but is still there.
        let base = match held.map(|i| i.draining.as_slice()) {
            Some([]) | None => base,
            Some(pids) => {
                let pids: Vec<String> = pids.iter().map(u32::to_string).collect();
                format!("{base}; PID {} draining", pids.join(", "))
            }
        };
        match self.holder_kind() {
            Some("other_pid_namespace") => format!("{base} (in another PID namespace)"),
            Some("inherited") => format!("{base} (inherited; PID released it)"),
            _ => base,
        }
    }

    fn state_word(&self) -> &'static str {
        match &self.state {
            Ok(LockState::Held(_)) => "running",
            Ok(LockState::Stale(_)) => "stale",
            Ok(LockState::Free) => "free",
            Err(_) => "unknown",
        }
    }

    /// Where the holder of a held port is, as far as this process can tell:
    /// `"local"` (a process here, whose PID `stop` can verify),
    /// `"other_host"`, `"other_pid_namespace"` (a container: its PID means
    /// nothing here), or `"inherited"` (the recorded PID released the lock
    /// while processes that inherited its descriptor still hold it). `None`
    /// unless held with readable info.
    fn holder_kind(&self) -> Option<&'static str> {
        let Ok(LockState::Held(Some(info))) = &self.state else {
            return None;
        };
        Some(match info.check_identity() {
            IdentityCheck::Released => "inherited",
            IdentityCheck::OtherHost(_) => "other_host",
            IdentityCheck::OtherPidNamespace => "other_pid_namespace",
            _ => "local",
        })
    }

    fn uptime_secs(&self) -> Option<i64> {
        match &self.state {
            Ok(LockState::Held(Some(info))) => {
                Some((Utc::now() - info.started_at).num_seconds().max(0))
            }
            _ => None,
        }
    }

    fn json(&self) -> Value {
        let info = self.info();
        // A serving state is a live holder's claim: a stale record's
        // "ready" was its dead writer's last word, not the port's state.
        let live = info.filter(|_| matches!(self.state, Ok(LockState::Held(_))));
        let mut obj = json!({
            "port": self.port,
            "pid": info.map(|i| i.pid),
            "started_at": info.map(LockInfo::started_at_display),
            "state": self.state_word(),
            "holder": self.holder_kind(),
            "uptime_secs": self.uptime_secs(),
            "host": info.and_then(|i| i.host.clone()),
            "child_pgid": info.and_then(|i| i.child_pgid),
            "serve_state": live.and_then(|i| i.state).map(|s| s.name()),
            "serve_state_since": live.and_then(|i| i.state_since).map(|t| {
                t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
            }),
            "draining": info.map(|i| i.draining.clone()).unwrap_or_default(),
            "backend_port": live.and_then(|i| i.backend_port),
            "argv": info.map(|i| i.argv.clone()).unwrap_or_default(),
            "cwd": info.and_then(|i| i.cwd.clone()),
            "lock_file": self.path,
        });
        if let Err(e) = &self.state {
            obj["error"] = Value::String(e.to_string());
        }
        // The listener keys are in every entry, so a script never meets a
        // missing one: `listener` is null when nothing listens and also when
        // nobody looked (a listing without --check), which
        // `listener_checked` tells apart (an absent key, as before, reads as
        // null in most JSON tools: "nobody listens", which was not known).
        obj["listener_checked"] = Value::Bool(self.listener.is_some());
        obj["listener"] = match &self.listener {
            Some(Ok(Some(seen))) => seen.json(),
            _ => Value::Null,
        };
        obj["listener_error"] = match &self.listener {
            Some(Err(e)) => Value::String(e.clone()),
            _ => Value::Null,
        };
        obj["backend_listener"] = match &self.backend {
            Some(Ok(Some(seen))) => seen.json(),
            _ => Value::Null,
        };
        obj
    }
}

/// Who listens on `port`, and whether it is in the tree of one of `roots`.
fn seen_on(port: u16, roots: &[u32]) -> Result<Option<Seen>, String> {
    let found = port_listener(port).and_then(|found| {
        let Some(found) = found else {
            return Ok(None);
        };
        let mut holder = false;
        for &root in roots {
            if tree_listens(port, root)? {
                holder = true;
                break;
            }
        }
        Ok(Some(Seen {
            pid: found.pid,
            name: found.name,
            holder,
        }))
    });
    found.map_err(|e| format!("cannot tell who listens on port {port}: {e}"))
}

/// `1d 2h`, `2h 5m`, `5m 3s`, `42s`.
fn human_duration(secs: i64) -> String {
    let (d, h, m, s) = (secs / 86_400, secs / 3_600 % 24, secs / 60 % 60, secs % 60);
    if d > 0 {
        format!("{d}d {h}h")
    } else if h > 0 {
        format!("{h}h {m}m")
    } else if m > 0 {
        format!("{m}m {s}s")
    } else {
        format!("{s}s")
    }
}

/// Widest COMMAND cell, in characters: `…` ends a longer one (`status
/// --json` has it whole).
const COMMAND_WIDTH: usize = 40;

/// The COMMAND cell: the program's file name (its directory would fill
/// the cell; JSON has it) and the arguments, joined by spaces as `ps`
/// shows them, control characters escaped (the record is file content), cut
/// at [`COMMAND_WIDTH`]; `-` for a record without one.
fn command_cell(argv: &[String]) -> String {
    let Some((program, args)) = argv.split_first() else {
        return "-".into();
    };
    // Either separator: the record may come from another platform.
    let name = program.rsplit(['/', '\\']).next().unwrap_or(program);
    let words: Vec<&str> = std::iter::once(name)
        .chain(args.iter().map(String::as_str))
        .collect();
    let shown = llmlb::lock::printable(&words.join(" ")).to_string();
    if shown.chars().count() <= COMMAND_WIDTH {
        return shown;
    }
    let mut cut: String = shown.chars().take(COMMAND_WIDTH - 1).collect();
    cut.push('…');
    cut
}

/// Whether `info` was recorded on another host (its PID means nothing here).
fn on_other_host(info: &LockInfo) -> bool {
    matches!(info.check_identity(), IdentityCheck::OtherHost(_))
}

fn table(rows: &[Row]) -> String {
    // A HOST column only when it tells something: a lock dir on a shared
    // file system may list holders on other machines, whose PIDs are theirs.
    let show_host = rows.iter().filter_map(Row::info).any(on_other_host);
    let mut header = vec!["PORT", "PID"];
    if show_host {
        header.push("HOST");
    }
    header.extend(["STARTED", "UPTIME", "STATE"]);
    let show_listener = rows.iter().any(|r| r.listener.is_some());
    if show_listener {
        header.push("LISTENER");
    }
    let show_backend = rows
        .iter()
        .any(|r| r.live_info().is_some_and(|i| i.backend_port.is_some()));
    if show_backend {
        header.push("BACKEND");
    }
    // Last: its width varies most, and a cut command reads best at the end.
    let show_command = rows
        .iter()
        .any(|r| r.info().is_some_and(|i| !i.argv.is_empty()));
    if show_command {
        header.push("COMMAND");
    }
    let mut lines: Vec<Vec<String>> = vec![header.into_iter().map(String::from).collect()];
    for row in rows {
        let info = row.info();
        let mut line = vec![
            row.port.to_string(),
            info.map_or("-".into(), |i| i.pid.to_string()),
        ];
        if show_host {
            line.push(
                info.and_then(|i| i.host.as_deref())
                    .filter(|h| !h.is_empty())
                    // Untrusted file content: control characters escaped.
                    .map_or("-".into(), |h| {
                        llmlb::lock::printable(std::path::Path::new(h)).to_string()
                    }),
            );
        }
        line.extend([
            info.map_or("-".into(), LockInfo::started_at_display),
            row.uptime_secs().map_or("-".into(), human_duration),
            row.state_cell(),
        ]);
        if show_listener {
            line.push(row.listener_cell());
        }
        if show_backend {
            line.push(row.backend_cell());
        }
        if show_command {
            line.push(info.map_or("-".into(), |i| command_cell(&i.argv)));
        }
        lines.push(line);
    }
    let mut widths = vec![0usize; lines[0].len()];
    for line in &lines {
        for (w, cell) in widths.iter_mut().zip(line) {
            *w = (*w).max(cell.len());
        }
    }
    let mut out = String::new();
    for line in &lines {
        let mut text = String::new();
        for (i, cell) in line.iter().enumerate() {
            if i + 1 == line.len() {
                text.push_str(cell);
            } else {
                text.push_str(&format!("{cell:<w$}  ", w = widths[i]));
            }
        }
        out.push_str(text.trim_end());
        out.push('\n');
    }
    out
}

/// Runs `status`; returns the exit code (see the module docs). `check`:
/// look up who listens on each listed port (always done with `port`).
pub(crate) fn run(dir: &LockDirChoice, port: Option<u16>, json_out: bool, check: bool) -> i32 {
    let locks = match LockDir::existing(&dir.path) {
        Ok(locks) => locks,
        Err(e) => {
            eprintln!("Error: {e}");
            return UNKNOWN;
        }
    };
    let mut rows: Vec<Row> = match (port, &locks) {
        (Some(port), None) => vec![Row {
            port,
            path: None,
            state: Ok(LockState::Free),
            listener: None,
            backend: None,
        }],
        (None, None) => Vec::new(),
        (Some(port), Some(locks)) => match locks.probe(port) {
            Ok(state) => vec![Row {
                port,
                path: Some(locks.lock_path(port).display().to_string()),
                state: Ok(state),
                listener: None,
                backend: None,
            }],
            Err(e) => {
                eprintln!("Error: {e}");
                return UNKNOWN;
            }
        },
        (None, Some(locks)) => match locks.scan() {
            Ok(reports) => reports.into_iter().map(Row::from).collect(),
            Err(e) => {
                eprintln!("Error: {e}");
                return UNKNOWN;
            }
        },
    };
    if check || port.is_some() {
        rows.iter_mut().for_each(Row::look);
    }
    for row in &rows {
        if let Some(Err(e)) = &row.listener {
            eprintln!("Error: {e}");
        }
    }
    // A free port is listed only when something listens on it anyway.
    rows.retain(|r| {
        !matches!(r.state, Ok(LockState::Free)) || matches!(r.listener, Some(Ok(Some(_))))
    });
    if json_out {
        let list: Vec<Value> = rows.iter().map(Row::json).collect();
        println!(
            "{}",
            serde_json::to_string_pretty(&list).unwrap_or_else(|_| "[]".into())
        );
    } else {
        match (port, rows.first()) {
            (Some(port), None) => println!("No server running on port {port}"),
            (None, None) => println!("No servers running"),
            (
                Some(port),
                Some(Row {
                    state: Ok(LockState::Free),
                    listener: Some(Ok(Some(seen))),
                    ..
                }),
            ) => {
                println!(
                    "No server in lock dir {} holds port {port}, but {} listens on it: {}",
                    llmlb::lock::shell_quoted(&dir.path),
                    crate::supervise::listener::words::listener_words(
                        seen.pid,
                        seen.name.as_deref()
                    ),
                    crate::supervise::listener::words::elsewhere_hint(port)
                )
            }
            _ => print!("{}", table(&rows)),
        }
        for row in &rows {
            if let Err(e) = &row.state {
                eprintln!("Error: {e}");
            }
        }
    }
    match (port, rows.first().map(|r| &r.state)) {
        (None, _) => 0,
        (Some(_), None) => NOT_RUNNING,
        (Some(_), Some(Ok(LockState::Held(_)))) => RUNNING,
        (Some(_), Some(Ok(LockState::Stale(_)))) => DEAD_LOCK_EXISTS,
        (Some(_), Some(Ok(LockState::Free))) => NOT_RUNNING,
        (Some(_), Some(Err(_))) => UNKNOWN,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_cell_is_escaped_and_cut() {
        let argv = |a: &[&str]| a.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        assert_eq!(command_cell(&[]), "-");
        assert_eq!(
            command_cell(&argv(&["llmlb", "serve", "-p", "8000"])),
            "llmlb serve -p 8000"
        );
        assert_eq!(
            command_cell(&argv(&["evil\n\u{1b}[31m"])),
            "evil\\n\\u{1b}[31m"
        );
        let long = command_cell(&argv(&[
            "/usr/local/bin/llmlb",
            "serve",
            "--port",
            "8000",
            "--",
            "python3",
            "-m",
            "http.server",
            "8000",
        ]));
        assert_eq!(long.chars().count(), COMMAND_WIDTH);
        assert_eq!(long, "llmlb serve --port 8000 -- python3 -m h…");
        assert_eq!(
            command_cell(&argv(&["C:\\bin\\llmlb.exe", "serve"])),
            "llmlb.exe serve"
        );
    }

    #[test]
    fn durations_are_short_and_human() {
        assert_eq!(human_duration(42), "42s");
        assert_eq!(human_duration(5 * 60 + 3), "5m 3s");
        assert_eq!(human_duration(2 * 3600 + 5 * 60), "2h 5m");
        assert_eq!(human_duration(86_400 + 2 * 3600), "1d 2h");
    }
}
