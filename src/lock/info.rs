//! What a lock file says about its holder, and how much of it to believe.
//!
//! The info is for humans and for `stop`; it never decides liveness (only the
//! kernel lock does). Parsing is tolerant: unknown fields are ignored, and
//! anything unreadable is simply "no info", never an error.

use std::sync::OnceLock;

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};

pub use super::identity::ProcessIdentity;
use super::sys;

mod json;

/// Largest lock file content we read. Real info is a few hundred bytes (a
/// long command line: up to [`MAX_ARGV_JSON_LEN`] and [`MAX_CWD_JSON_LEN`]
/// more); a bigger file is garbage and is classified unreadable without
/// allocating it.
pub const MAX_INFO_LEN: usize = 16 * 1024;

/// Most bytes [`LockInfo::argv`] takes in the record as JSON (quotes, commas
/// and escapes counted). A longer command line is cut there and ends with
/// [`ARGV_TRUNCATED`]: the record stays well under [`MAX_INFO_LEN`] however
/// the command was started, since readers refuse anything bigger.
pub const MAX_ARGV_JSON_LEN: usize = 4096;

/// Most bytes [`LockInfo::cwd`] takes in the record as JSON; a longer
/// working directory is not recorded (a path cut short names another
/// directory).
pub const MAX_CWD_JSON_LEN: usize = 4096;

/// The last element of a [`LockInfo::argv`] cut at [`MAX_ARGV_JSON_LEN`]
/// (the element before it may be cut too): the recorded command is for
/// people, and this one cannot be run as recorded.
pub const ARGV_TRUNCATED: &str = "\u{2026}[command line truncated]";

impl ProcessIdentity {
    /// The identity of process `pid` now, where the platform offers one
    /// (Linux, macOS, Windows); `None` if the process does not exist or the platform has none.
    pub fn of_pid(pid: u32) -> Option<ProcessIdentity> {
        sys::process_identity(pid)
    }

    /// The calling process's own identity, read through `/proc/self` on
    /// Linux (never `/proc/<getpid()>`, which in a PID namespace without its
    /// own `/proc` describes another process), with its PID namespace.
    pub fn of_current_process() -> Option<ProcessIdentity> {
        sys::own_identity()
    }
}

/// The JSON content of a lock file: who holds (or held) the port.
///
/// Written by the holder right after it locks; `pid`, `started_at` and `port`
/// are always present, the rest where the platform offers it. Readers ignore
/// fields they do not know, so newer writers stay readable.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct LockInfo {
    /// Process id of the holder (the process that will answer `SIGTERM`).
    pub pid: u32,
    /// When the holder took the lock, RFC 3339 UTC.
    #[serde(serialize_with = "json::serialize_started_at")]
    pub started_at: DateTime<Utc>,
    /// The port this lock guards (always equal to the port in the file name).
    pub port: u16,
    /// Host name of the holder; `stop` refuses to signal for another host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// PID-reuse-proof identity of the holder, checked by `stop` before signalling.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<ProcessIdentity>,
    /// Process group of the command run in exec mode (`llmlb serve -- CMD`),
    /// which `stop --force` kills as a whole.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub child_pgid: Option<u32>,
    /// Identity of that process group's leader (the exec-mode command itself),
    /// recorded with `child_pgid`: `stop` signals the group only while its
    /// leader is still this process, never on the bare number.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub child_identity: Option<ProcessIdentity>,
    /// Version of the llmlb library that wrote the file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// Set (to `pid`) when the recorded holder released the lock while
    /// processes that inherited its descriptor (forked workers, an exec-mode
    /// command's descendants) still hold it: `pid` then names a process that
    /// no longer holds the port, and `stop` signals nothing on its strength.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub released_by: Option<u32>,
    /// Whether the holder serves yet ([`ServeState`]), as the holder last
    /// said; absent (older writers, library users that never set one) reads
    /// as [`ServeState::Ready`]: see [`LockInfo::serve_state`]. A word this
    /// version does not know (a newer writer's) reads as absent, and the
    /// rest of the record stays readable.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "json::deserialize_state"
    )]
    pub state: Option<ServeState>,
    /// When `state` was last set, RFC 3339 UTC (whole seconds written as
    /// `started_at` is).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        serialize_with = "json::serialize_state_since"
    )]
    pub state_since: Option<DateTime<Utc>>,
    /// Processes that handed the port over to `pid` (`serve --replace`) and
    /// are still finishing the requests they had accepted: they no longer
    /// accept, and no longer hold the record. Written by the holder when the
    /// predecessor starts draining, and emptied when it has exited; absent
    /// when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub draining: Vec<u32>,
    /// The holder that handed the port over to `pid` (`serve --replace`),
    /// kept for `pid`'s life: the port's lineage, which `stop` follows (a
    /// stop that signalled the predecessor while it was handing over stops
    /// the successor too, rather than taking it for a new server). Absent
    /// for a port taken the usual way.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub took_over_from: Option<u32>,
    /// `serve --proxy`: the private port on 127.0.0.1 where the holder's
    /// command serves, behind the holder's own listener on `port`. Absent
    /// for every other holder.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend_port: Option<u16>,
    /// The holder's command line (`std::env::args_os()`, each argument as
    /// lossy UTF-8: bytes that are not UTF-8 become U+FFFD), at most
    /// [`MAX_ARGV_JSON_LEN`] bytes of it, ending in [`ARGV_TRUNCATED`] if
    /// cut. For `status` and people: a launcher through the C ABI records its
    /// own process's command line (`python3 app.py …`). Absent when empty
    /// (older writers, a platform that offers none).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub argv: Vec<String>,
    /// The holder's working directory when it took the port (lossy UTF-8 as
    /// `argv`); absent if unreadable or longer than [`MAX_CWD_JSON_LEN`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cwd: Option<String>,
}

/// What the holder of a port says it is doing with it: the serving state in
/// the lock record, rewritten in place by the holder under the lock.
///
/// Only the holder writes it, so it is as true as the holder is honest; the
/// kernel lock still alone decides whether anybody holds the port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ServeState {
    /// The port is taken; the server is not accepting connections yet.
    Starting,
    /// The server accepts connections on the port.
    Ready,
    /// Shutdown has begun: the server may still finish requests, but a new
    /// one should not be sent here.
    Stopping,
}

impl ServeState {
    /// `"starting"`, `"ready"` or `"stopping"`: the record's and JSON's word.
    pub fn name(self) -> &'static str {
        match self {
            ServeState::Starting => "starting",
            ServeState::Ready => "ready",
            ServeState::Stopping => "stopping",
        }
    }

    /// `"Starting"`, `"Ready"` or `"Stopping"`: the word `status` shows.
    pub fn title(self) -> &'static str {
        match self {
            ServeState::Starting => "Starting",
            ServeState::Ready => "Ready",
            ServeState::Stopping => "Stopping",
        }
    }

    /// Parses [`name`](Self::name) (exactly, lowercase); `None` otherwise.
    pub fn from_name(name: &str) -> Option<ServeState> {
        match name {
            "starting" => Some(ServeState::Starting),
            "ready" => Some(ServeState::Ready),
            "stopping" => Some(ServeState::Stopping),
            _ => None,
        }
    }
}

impl std::fmt::Display for ServeState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Per-process facts computed once, not per acquire (the host name and the
/// /proc read cost more than the whole lock protocol). Keyed by PID so a
/// forked child recomputes its own.
struct ProcessFacts {
    pid: u32,
    host: String,
    identity: Option<ProcessIdentity>,
    /// How the process was started: read once, as the first lock is taken
    /// (a server takes its port at start, before anything changes dir).
    argv: Vec<String>,
    cwd: Option<String>,
}

/// Runs `f` with this process's facts: cached for the process that first asked,
/// recomputed (rarely: a forked child that adopts) for any other PID.
fn with_process_facts<R>(f: impl FnOnce(&ProcessFacts) -> R) -> R {
    static FIRST: OnceLock<ProcessFacts> = OnceLock::new();
    let pid = sys::current_pid();
    let compute = || ProcessFacts {
        pid,
        host: sys::hostname(),
        identity: sys::own_identity(),
        argv: capped_argv(std::env::args_os().map(|a| a.to_string_lossy().into_owned())),
        cwd: std::env::current_dir()
            .ok()
            .map(|dir| dir.to_string_lossy().into_owned())
            .filter(|dir| json_string_len(dir) <= MAX_CWD_JSON_LEN),
    };
    let cached = FIRST.get_or_init(compute);
    if cached.pid == pid {
        f(cached)
    } else {
        f(&compute())
    }
}

impl LockInfo {
    /// Info describing the calling process as holder of `port`, started now.
    pub fn for_current_process(port: u16) -> LockInfo {
        with_process_facts(|facts| LockInfo {
            pid: facts.pid,
            started_at: Utc::now(),
            port,
            host: Some(facts.host.clone()).filter(|h| !h.is_empty()),
            identity: facts.identity.clone(),
            child_pgid: None,
            child_identity: None,
            version: Some(env!("CARGO_PKG_VERSION").to_owned()),
            released_by: None,
            state: None,
            state_since: None,
            draining: Vec::new(),
            took_over_from: None,
            backend_port: None,
            argv: facts.argv.clone(),
            cwd: facts.cwd.clone(),
        })
    }

    /// Minimal info with only the required fields, e.g. for tests and tools.
    pub fn new(pid: u32, port: u16, started_at: DateTime<Utc>) -> LockInfo {
        LockInfo {
            pid,
            started_at,
            port,
            host: None,
            identity: None,
            child_pgid: None,
            child_identity: None,
            version: None,
            released_by: None,
            state: None,
            state_since: None,
            draining: Vec::new(),
            took_over_from: None,
            backend_port: None,
            argv: Vec::new(),
            cwd: None,
        }
    }

    /// The serving state the holder recorded; a record without one (written
    /// by an older llmlb, or by a library user that never set a state) is
    /// [`ServeState::Ready`]: such a holder serves once it holds.
    pub fn serve_state(&self) -> ServeState {
        self.state.unwrap_or(ServeState::Ready)
    }

    /// Sets [`state`](Self::state) to `state` since now.
    pub fn set_serve_state(&mut self, state: ServeState) {
        self.state = Some(state);
        self.state_since = Some(Utc::now());
    }

    /// `started_at` as shown to users: RFC 3339, whole seconds, `Z`.
    pub fn started_at_display(&self) -> String {
        self.started_at.to_rfc3339_opts(SecondsFormat::Secs, true)
    }

    /// The bytes written to the lock file: compact JSON (exactly what
    /// `serde_json` makes of this struct) and a newline.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(256);
        json::write(self, &mut out);
        out.push(b'\n');
        out
    }

    /// Tolerant parse of lock file content: the first JSON object in `bytes`
    /// if it has a valid `pid`, `started_at` and `port`. Trailing bytes are
    /// ignored (a reader racing the holder's shrink may see an old tail).
    /// Returns `None` for empty, partial, oversized or garbage content.
    pub fn parse(bytes: &[u8]) -> Option<LockInfo> {
        if bytes.len() > MAX_INFO_LEN {
            return None;
        }
        let mut stream = serde_json::Deserializer::from_slice(bytes).into_iter::<LockInfo>();
        stream.next()?.ok()
    }

    /// [`LockInfo::parse`], also requiring that the info names `port` (a file
    /// whose content names another port is not trusted).
    pub fn parse_for_port(bytes: &[u8], port: u16) -> Option<LockInfo> {
        LockInfo::parse(bytes).filter(|info| info.port == port)
    }

    /// Whether the process recorded here is, provably, still the same process
    /// on this host; `stop` signals only on [`IdentityCheck::Same`].
    pub fn check_identity(&self) -> IdentityCheck {
        // The host, then the namespace: elsewhere the number names some
        // unrelated process here, whatever it looks like. One look at this
        // process's facts, nothing copied.
        let elsewhere = with_process_facts(|facts| {
            if matches!(&self.host, Some(host) if !facts.host.is_empty() && *host != facts.host) {
                return Some(IdentityCheck::OtherHost(
                    self.host.clone().unwrap_or_default(),
                ));
            }
            let theirs = self.identity.as_ref().and_then(|i| i.pid_ns.as_ref())?;
            let ours = facts.identity.as_ref().and_then(|i| i.pid_ns.as_ref());
            (ours != Some(theirs)).then_some(IdentityCheck::OtherPidNamespace)
        });
        if let Some(check) = elsewhere {
            return check;
        }
        if self.holder_released() {
            return IdentityCheck::Released;
        }
        let Some(recorded) = self.identity.as_ref().filter(|i| i.is_complete()) else {
            return IdentityCheck::Unknown;
        };
        match sys::process_identity(self.pid) {
            None => IdentityCheck::Gone,
            Some(now) if now.same_process(recorded) => IdentityCheck::Same,
            Some(_) => IdentityCheck::Reused,
        }
    }

    /// Whether `self` and `other` record the same holder (PID, start and
    /// host): two reads of one port's record taken at different times.
    pub fn same_holder(&self, other: &LockInfo) -> bool {
        self.pid == other.pid && self.started_at == other.started_at && self.host == other.host
    }

    /// Whether the recorded holder has released the lock while processes that
    /// inherited its descriptor still hold it ([`LockInfo::released_by`]):
    /// its PID no longer names a holder.
    pub fn holder_released(&self) -> bool {
        self.released_by.is_some()
    }
}

/// Bytes `text` takes as a JSON string, quotes included: serde_json writes
/// `"`, `\` and the five short escapes in two bytes, other control
/// characters as `\u00XX`.
fn json_string_len(text: &str) -> usize {
    2 + text
        .bytes()
        .map(|b| match b {
            b'"' | b'\\' | b'\n' | b'\r' | b'\t' | 0x08 | 0x0c => 2,
            0..=0x1f => 6,
            _ => 1,
        })
        .sum::<usize>()
}

/// `args` as recorded: whole while they fit in [`MAX_ARGV_JSON_LEN`] (as
/// JSON, with the commas), else the argument that crosses it cut at a
/// character boundary and [`ARGV_TRUNCATED`] after it.
fn capped_argv(args: impl IntoIterator<Item = String>) -> Vec<String> {
    // `[` and `]`, and a comma before every element but the first.
    let mut used = 1;
    let marker = json_string_len(ARGV_TRUNCATED) + 1;
    let mut out = Vec::new();
    let mut args = args.into_iter().peekable();
    while let Some(arg) = args.next() {
        let cost = json_string_len(&arg) + 1;
        // Room for the marker after it, unless nothing follows.
        let after = if args.peek().is_some() { marker } else { 0 };
        if used + cost + after <= MAX_ARGV_JSON_LEN {
            used += cost;
            out.push(arg);
            continue;
        }
        let room = MAX_ARGV_JSON_LEN.saturating_sub(used + marker);
        let mut cut = String::new();
        let mut cut_len = 3; // its quotes and comma
        for c in arg.chars() {
            let mut buf = [0u8; 4];
            let len = json_string_len(c.encode_utf8(&mut buf)) - 2;
            if cut_len + len > room {
                break;
            }
            cut_len += len;
            cut.push(c);
        }
        if !cut.is_empty() {
            out.push(cut);
        }
        out.push(ARGV_TRUNCATED.to_owned());
        break;
    }
    out
}

/// Result of [`LockInfo::check_identity`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum IdentityCheck {
    /// Same host, and the PID still belongs to the process that wrote the info.
    Same,
    /// The PID now belongs to a different process (it was reused).
    Reused,
    /// No process has that PID any more.
    Gone,
    /// The info was written on another host (named); PIDs mean nothing here.
    OtherHost(String),
    /// The holder recorded a PID namespace other than this process's (a
    /// container, `unshare --pid`): its PID names an unrelated process here,
    /// or none.
    OtherPidNamespace,
    /// The recorded process released the lock to processes that inherited
    /// its descriptor ([`LockInfo::released_by`]): whatever that PID is now,
    /// it is not the holder.
    Released,
    /// The info carries no identity token, or this platform cannot read one.
    Unknown,
}

/// The smallest reader of a lock file: only the PID, for the release rule
/// ("remove the file only if it records me") on the hot path.
pub(crate) fn recorded_pid(bytes: &[u8]) -> Option<u32> {
    #[derive(Deserialize)]
    struct PidOnly {
        pid: u32,
    }
    let mut stream = serde_json::Deserializer::from_slice(bytes).into_iter::<PidOnly>();
    stream.next()?.ok().map(|p| p.pid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_through_bytes() {
        let info = LockInfo::for_current_process(8000);
        let parsed = LockInfo::parse(&info.to_bytes()).expect("own output parses");
        assert_eq!(parsed, info);
        assert_eq!(parsed.pid, std::process::id());
    }

    #[test]
    fn the_holder_records_its_command_line_and_directory() {
        let info = LockInfo::for_current_process(8000);
        let args: Vec<String> = std::env::args().collect();
        assert!(!info.argv.is_empty());
        assert_eq!(info.argv, capped_argv(args));
        let cwd = std::env::current_dir().unwrap();
        assert_eq!(info.cwd.as_deref(), cwd.to_str());
        let json: serde_json::Value = serde_json::from_slice(&info.to_bytes()).unwrap();
        assert_eq!(
            json["argv"][0].as_str(),
            info.argv.first().map(String::as_str)
        );
    }

    #[test]
    fn a_record_without_argv_or_cwd_parses_and_writes_neither() {
        let old = br#"{"pid":7,"started_at":"2026-01-02T03:04:05Z","port":8000,"state":"ready"}"#;
        let info = LockInfo::parse(old).expect("an older record parses");
        assert!(info.argv.is_empty());
        assert_eq!(info.cwd, None);
        let written = String::from_utf8(info.to_bytes()).unwrap();
        assert!(
            !written.contains("argv") && !written.contains("cwd"),
            "{written}"
        );
    }

    #[test]
    fn a_huge_command_line_is_cut_with_a_marker_and_the_record_stays_readable() {
        // Control characters cost six bytes each as JSON: the cap counts them.
        let huge: Vec<String> = std::iter::once("server".to_owned())
            .chain((0..2000).map(|i| format!("--opt{i}=\u{1}\u{2}é\"")))
            .collect();
        let argv = capped_argv(huge.clone());
        assert_eq!(argv.last().map(String::as_str), Some(ARGV_TRUNCATED));
        assert_eq!(argv[0], "server");
        let kept = argv.len() - 1;
        assert!(kept > 10 && kept < huge.len(), "{kept}");
        // Whole arguments up to the cut, which is a prefix of its own.
        assert_eq!(argv[..kept - 1], huge[..kept - 1]);
        assert!(huge[kept - 1].starts_with(&argv[kept - 1]));
        let as_json = serde_json::to_vec(&argv).unwrap();
        assert!(as_json.len() <= MAX_ARGV_JSON_LEN, "{}", as_json.len());
        assert!(as_json.len() > MAX_ARGV_JSON_LEN - 64, "{}", as_json.len());

        // One argument bigger than the cap: its start, then the marker.
        let one = capped_argv(["x".repeat(100_000)]);
        assert_eq!(one.len(), 2);
        assert!(serde_json::to_vec(&one).unwrap().len() <= MAX_ARGV_JSON_LEN);

        // With the longest cwd recorded, the record fits every reader.
        let mut info = LockInfo::for_current_process(8000);
        info.argv = argv;
        info.cwd = Some("\u{1}".repeat((MAX_CWD_JSON_LEN - 2) / 6));
        assert!(json_string_len(info.cwd.as_ref().unwrap()) <= MAX_CWD_JSON_LEN);
        let bytes = info.to_bytes();
        assert!(bytes.len() < MAX_INFO_LEN, "{}", bytes.len());
        assert_eq!(LockInfo::parse(&bytes), Some(info));

        // A short command line is kept as it is.
        let short = vec!["a".to_owned(), String::new(), "\n".to_owned()];
        assert_eq!(capped_argv(short.clone()), short);
    }

    #[test]
    fn json_string_len_is_what_serde_json_writes() {
        for text in [
            "",
            "plain",
            "\"\\\n\r\t\u{8}\u{c}",
            "\u{0}\u{1f}\u{7f}",
            "é漢",
        ] {
            assert_eq!(
                json_string_len(text),
                serde_json::to_vec(text).unwrap().len(),
                "{text:?}"
            );
        }
    }

    #[test]
    fn ignores_unknown_fields_and_trailing_bytes() {
        let text = br#"{"pid":7,"started_at":"2026-01-30T12:00:00Z","port":8000,"future":[1,2]}XX"#;
        let info = LockInfo::parse(text).expect("tolerant");
        assert_eq!((info.pid, info.port), (7, 8000));
        assert_eq!(info.started_at_display(), "2026-01-30T12:00:00Z");
    }

    #[test]
    fn unreadable_content_is_none() {
        for bad in [
            &b""[..],
            b"{",
            b"garbage",
            br#"{"pid":7,"port":8000}"#,
            br#"{"pid":-1,"started_at":"2026-01-30T12:00:00Z","port":8000}"#,
            br#"{"pid":7,"started_at":"yesterday","port":8000}"#,
            br#"{"pid":7,"started_at":"2026-01-30T12:00:00Z","port":70000}"#,
        ] {
            assert_eq!(
                LockInfo::parse(bad),
                None,
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        let huge = vec![b' '; MAX_INFO_LEN + 1];
        assert_eq!(LockInfo::parse(&huge), None);
    }

    #[test]
    fn port_must_match_the_file_name() {
        let info = LockInfo::new(1, 9000, Utc::now());
        assert!(LockInfo::parse_for_port(&info.to_bytes(), 8000).is_none());
        assert!(LockInfo::parse_for_port(&info.to_bytes(), 9000).is_some());
    }

    #[test]
    fn recorded_pid_reads_only_the_pid() {
        assert_eq!(recorded_pid(br#"{"x":1,"pid":42}"#), Some(42));
        assert_eq!(recorded_pid(b"nope"), None);
    }

    #[cfg(any(target_os = "linux", target_os = "macos", windows))]
    #[test]
    fn identity_of_self_is_same_and_of_a_reused_pid_differs() {
        let me = LockInfo::for_current_process(1);
        assert_eq!(me.check_identity(), IdentityCheck::Same);
        let mut reused = me.clone();
        if let Some(id) = reused.identity.as_mut() {
            id.start_ticks = id.start_ticks.map(|t| t + 1);
        }
        assert_eq!(reused.check_identity(), IdentityCheck::Reused);
        let mut foreign = me.clone();
        foreign.host = Some("some-other-host.invalid".into());
        assert!(matches!(
            foreign.check_identity(),
            IdentityCheck::OtherHost(_)
        ));
        // A live process that released the lock to inheritors is not its
        // holder, however well its identity matches.
        let mut released = me.clone();
        released.released_by = Some(released.pid);
        assert_eq!(released.check_identity(), IdentityCheck::Released);
        let mut bare = me;
        bare.identity = None;
        assert_eq!(bare.check_identity(), IdentityCheck::Unknown);
    }
}
