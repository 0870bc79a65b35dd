//! `llmlb status`: probes only (never takes or breaks a lock), prints a table
//! or JSON, and with `--port` exits with the LSB status code.

use chrono::Utc;
use llmlb::lock::{IdentityCheck, LockDir, LockError, LockInfo, LockState, PortReport};
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
    path: String,
    state: Result<LockState, LockError>,
}

impl From<PortReport> for Row {
    fn from(r: PortReport) -> Row {
        Row {
            port: r.port,
            path: r.path.display().to_string(),
            state: r.state,
        }
    }
}

impl Row {
    fn info(&self) -> Option<&LockInfo> {
        self.state.as_ref().ok().and_then(LockState::info)
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
        let mut obj = json!({
            "port": self.port,
            "pid": info.map(|i| i.pid),
            "started_at": info.map(LockInfo::started_at_display),
            "state": self.state_word(),
            "holder": self.holder_kind(),
            "uptime_secs": self.uptime_secs(),
            "host": info.and_then(|i| i.host.clone()),
            "child_pgid": info.and_then(|i| i.child_pgid),
            "lock_file": self.path,
        });
        if let Err(e) = &self.state {
            obj["error"] = Value::String(e.to_string());
        }
        obj
    }
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
    let mut lines: Vec<Vec<String>> = vec![header.into_iter().map(String::from).collect()];
    for row in rows {
        let info = row.info();
        let state = match (&row.state, row.holder_kind()) {
            (Ok(LockState::Held(_)), Some("other_pid_namespace")) => {
                "Running (in another PID namespace)"
            }
            (Ok(LockState::Held(_)), Some("inherited")) => "Running (inherited; PID released it)",
            (Ok(LockState::Held(_)), _) => "Running",
            (Ok(LockState::Stale(_)), _) => "Stale",
            (Ok(LockState::Free), _) => "Free",
            (Err(_), _) => "Unknown",
        };
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
            state.into(),
        ]);
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

/// Runs `status`; returns the exit code (see the module docs).
pub(crate) fn run(dir: &LockDirChoice, port: Option<u16>, json_out: bool) -> i32 {
    let locks = match LockDir::existing(&dir.path) {
        Ok(locks) => locks,
        Err(e) => {
            eprintln!("Error: {e}");
            return UNKNOWN;
        }
    };
    let rows: Vec<Row> = match (port, locks) {
        (_, None) => Vec::new(),
        (Some(port), Some(locks)) => match locks.probe(port) {
            Ok(LockState::Free) => Vec::new(),
            Ok(state) => vec![Row {
                port,
                path: locks.lock_path(port).display().to_string(),
                state: Ok(state),
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
    if json_out {
        let list: Vec<Value> = rows.iter().map(Row::json).collect();
        println!(
            "{}",
            serde_json::to_string_pretty(&list).unwrap_or_else(|_| "[]".into())
        );
    } else if rows.is_empty() {
        match port {
            Some(port) => println!("No server running on port {port}"),
            None => println!("No servers running"),
        }
    } else {
        print!("{}", table(&rows));
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
    fn durations_are_short_and_human() {
        assert_eq!(human_duration(42), "42s");
        assert_eq!(human_duration(5 * 60 + 3), "5m 3s");
        assert_eq!(human_duration(2 * 3600 + 5 * 60), "2h 5m");
        assert_eq!(human_duration(86_400 + 2 * 3600), "1d 2h");
    }
}
