//! When a command run under the lock is *ready* (exec mode's `--ready`):
//! the moment its launcher records `ready` in the lock record (and tells its
//! own supervisor), so `llmlb wait` and `status` mean "serving", not just
//! "locked".
//!
//! The launcher [`prepare`](Readiness::prepare)s the command before spawning
//! it, then [`start`](Readiness::start)s watching once it has its PID, and
//! gets [`ReadyEvent`]s through a callback (from a thread of its own: hand
//! them to the main loop through a channel). Dropping the [`ReadyWatch`]
//! stops the watching.
//!
//! - [`ReadyPolicy::Immediate`]: ready as soon as the command is started.
//! - [`ReadyPolicy::Listen`] (the default): ready once the port listens. On
//!   Linux, once a process of the command's tree has a listening socket on
//!   the port (`/proc/net/tcp{,6}` inodes mapped to the tree's descriptors),
//!   so a squatter cannot make it ready; elsewhere once a TCP connect to the
//!   host and port succeeds. Checked with a backoff from 1 ms doubling to
//!   50 ms: quick for a fast server, cheap for a slow one.
//! - [`ReadyPolicy::Notify`]: ready when the command's tree sends `READY=1`
//!   over the sd_notify protocol (see [`super::notify_socket`]); its
//!   `STATUS=` and `STOPPING=1` are reported too.
//! - [`ReadyPolicy::Http`]: ready once `GET PATH` (default `/health`) on
//!   the host and port answers 2xx or 3xx (see [`http_probe`]), checked with
//!   the same backoff as `listen`: for servers whose port opens before they
//!   can serve (an LLM server answers 503 while it loads its model).
//!
//! The path of `http` is not in the [`ReadyPolicy`] (which stays `Copy`, a
//! word for the CLI, the C ABI and Python): a [`ReadySpec`] carries the
//! policy with its path, and every `ReadyPolicy` converts into one.
//!
//! A watch may go on after ready ([`Readiness::keep_watching`]): `listen`
//! and `http` then check every [`WATCH_AFTER_READY`] and report
//! [`ReadyEvent::Lost`] after [`LOST_AFTER`] failed checks in a row.

use std::fmt;
use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream, ToSocketAddrs};
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::notify_socket::{NotifyMessage, NotifyReceiver, NotifySocket, NOTIFY_SOCKET_ENV};

/// The first pause between two `listen` checks; doubled after each miss.
pub const LISTEN_FIRST_DELAY: Duration = Duration::from_millis(1);
/// The longest pause between two `listen` checks.
pub const LISTEN_MAX_DELAY: Duration = Duration::from_millis(50);
/// How long one connect probe may take (elsewhere than Linux): a local
/// listener answers at once; a remote host that drops SYNs must not stall
/// the checks.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);
/// How long one `http` probe may take, connect to status line: a server
/// slower than this to say its status is not ready yet.
pub const HTTP_PROBE_TIMEOUT: Duration = Duration::from_secs(1);
/// The path `--ready http` asks for when none is given.
pub const DEFAULT_HTTP_PATH: &str = "/health";
/// The longest `http` path accepted: a request line of bounded size.
pub const MAX_HTTP_PATH: usize = 1024;
/// The most bytes an `http` probe reads for the status line: a longer line
/// is not an answer (no reply costs more memory than this).
const MAX_STATUS_LINE: usize = 512;
/// The pause between two checks once ready ([`Readiness::keep_watching`]).
pub const WATCH_AFTER_READY: Duration = Duration::from_millis(250);
/// How many failed checks in a row after ready make readiness lost.
pub const LOST_AFTER: u32 = 3;

/// How the launcher decides that its command is ready.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum ReadyPolicy {
    /// Once the command's tree listens on the port (the default).
    #[default]
    Listen,
    /// Once the command's tree sends `READY=1` to `NOTIFY_SOCKET`.
    Notify,
    /// As soon as the command is started.
    Immediate,
    /// Once `GET PATH` answers 2xx or 3xx (the path is the [`ReadySpec`]'s).
    Http,
}

impl ReadyPolicy {
    /// Every policy, in the order the CLI lists them.
    pub const ALL: [ReadyPolicy; 4] = [
        ReadyPolicy::Listen,
        ReadyPolicy::Notify,
        ReadyPolicy::Immediate,
        ReadyPolicy::Http,
    ];

    /// The word the CLI, the C ABI and Python use: `listen`, `notify`,
    /// `immediate`, `http`.
    pub fn name(self) -> &'static str {
        match self {
            ReadyPolicy::Listen => "listen",
            ReadyPolicy::Notify => "notify",
            ReadyPolicy::Immediate => "immediate",
            ReadyPolicy::Http => "http",
        }
    }

    /// The policy [`name`](ReadyPolicy::name)d `name`, if any.
    pub fn from_name(name: &str) -> Option<ReadyPolicy> {
        ReadyPolicy::ALL.into_iter().find(|p| p.name() == name)
    }

    /// What a command not ready yet by this policy has still to do, as
    /// "{command} did not …" / "waiting for {command} to …" completes it:
    /// `listen on port 8000`, `send READY=1 (--ready notify)`, `start`,
    /// `answer GET /health with 2xx or 3xx` (the default path: a
    /// [`ReadySpec`] names its own).
    pub fn awaited(self, port: u16) -> String {
        match self {
            ReadyPolicy::Listen => format!("listen on port {port}"),
            ReadyPolicy::Notify => "send READY=1 (--ready notify)".to_owned(),
            ReadyPolicy::Immediate => "start".to_owned(),
            ReadyPolicy::Http => http_awaited(DEFAULT_HTTP_PATH),
        }
    }

    /// Whether this platform can watch for this policy: `notify` needs Unix
    /// (there is no sd_notify on Windows).
    pub fn is_supported(self) -> bool {
        cfg!(unix) || self != ReadyPolicy::Notify
    }
}

/// `answer GET PATH with 2xx or 3xx`.
fn http_awaited(path: &str) -> String {
    format!("answer GET {path} with 2xx or 3xx")
}

/// A readiness policy with what it needs beyond its word: the path of
/// `http`. Written and parsed as the CLI takes it: `listen`, `notify`,
/// `immediate`, `http` (path `/health`) or `http:/PATH`.
///
/// # Examples
/// ```
/// use llmlb::supervise::ready::{ReadyPolicy, ReadySpec};
///
/// let spec: ReadySpec = "http:/v1/models".parse().unwrap();
/// assert_eq!(spec.policy(), ReadyPolicy::Http);
/// assert_eq!(spec.http_path(), Some("/v1/models"));
/// assert_eq!(ReadySpec::from(ReadyPolicy::Http).to_string(), "http:/health");
/// assert!("http:health".parse::<ReadySpec>().is_err());
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ReadySpec {
    policy: ReadyPolicy,
    /// `Some` exactly for `http`: a path checked by [`check_http_path`].
    http_path: Option<String>,
}

impl ReadySpec {
    /// `http` probing `path`.
    ///
    /// # Errors
    /// Why `path` cannot be sent (see [`check_http_path`]).
    pub fn http(path: &str) -> Result<ReadySpec, String> {
        check_http_path(path)?;
        Ok(ReadySpec {
            policy: ReadyPolicy::Http,
            http_path: Some(path.to_owned()),
        })
    }

    /// The policy.
    pub fn policy(&self) -> ReadyPolicy {
        self.policy
    }

    /// The path `http` probes; `None` for the other policies.
    pub fn http_path(&self) -> Option<&str> {
        self.http_path.as_deref()
    }

    /// As [`ReadyPolicy::awaited`], with this spec's path for `http`.
    pub fn awaited(&self, port: u16) -> String {
        match self.http_path() {
            Some(path) => http_awaited(path),
            None => self.policy.awaited(port),
        }
    }
}

impl From<ReadyPolicy> for ReadySpec {
    /// The policy with its defaults (`http`: [`DEFAULT_HTTP_PATH`]).
    fn from(policy: ReadyPolicy) -> ReadySpec {
        ReadySpec {
            policy,
            http_path: (policy == ReadyPolicy::Http).then(|| DEFAULT_HTTP_PATH.to_owned()),
        }
    }
}

impl fmt::Display for ReadySpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.http_path() {
            Some(path) => write!(f, "http:{path}"),
            None => f.write_str(self.policy.name()),
        }
    }
}

impl std::str::FromStr for ReadySpec {
    type Err = String;

    /// `listen`, `notify`, `immediate`, `http` or `http:/PATH`; the error
    /// says what is wrong and what is accepted (printable: the text is
    /// escaped).
    fn from_str(text: &str) -> Result<ReadySpec, String> {
        if let Some(path) = text.strip_prefix("http:") {
            return ReadySpec::http(path);
        }
        ReadyPolicy::from_name(text)
            .map(ReadySpec::from)
            .ok_or_else(|| {
                format!(
                    "`{}` is not a readiness policy: use listen, notify, immediate, http or http:/PATH",
                    crate::lock::printable(text)
                )
            })
    }
}

/// Checks that `path` can be the target of `GET PATH HTTP/1.1`: it starts
/// with `/`, is at most [`MAX_HTTP_PATH`] bytes, and has only printable
/// ASCII other than space (a space or a line break would change the
/// request; other bytes must be percent-encoded).
///
/// # Errors
/// One printable line saying what is wrong.
pub fn check_http_path(path: &str) -> Result<(), String> {
    let shown = crate::lock::printable(path);
    if !path.starts_with('/') {
        return Err(format!(
            "the http path `{shown}` must start with `/` (e.g. http:/health)"
        ));
    }
    if path.len() > MAX_HTTP_PATH {
        return Err(format!(
            "the http path is {} bytes long; at most {MAX_HTTP_PATH} are allowed",
            path.len()
        ));
    }
    if let Some(c) = path.chars().find(|c| !c.is_ascii_graphic()) {
        return Err(format!(
            "the http path `{shown}` contains {}; use printable ASCII without spaces (percent-encode the rest)",
            match c {
                ' ' => "a space".to_owned(),
                c if c.is_control() => "a control character".to_owned(),
                c if c.is_whitespace() => "white space".to_owned(),
                c => format!("`{c}`"),
            }
        ));
    }
    Ok(())
}

/// What the watch reports about the command.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ReadyEvent {
    /// The command is ready by the policy. Reported at most once.
    Ready,
    /// `notify`: the command's `STATUS=` text, printable, one line (already
    /// logged at info); for the launcher's own supervisor.
    Status(String),
    /// `notify`: the command sent `STOPPING=1` (already logged at info).
    Stopping,
    /// Only with [`Readiness::keep_watching`], after `Ready`: `listen` or
    /// `http` failed [`LOST_AFTER`] checks in a row; the text says how
    /// (`GET /health: 503 three times in a row`, `no longer listens on port
    /// 8000`). Reported at most once; the watch checks no more.
    Lost(String),
}

/// A readiness policy prepared for a command about to be spawned.
///
/// # Examples
/// ```
/// use std::process::Command;
/// use llmlb::supervise::ready::{Readiness, ReadyEvent, ReadyPolicy};
///
/// let policy = ReadyPolicy::from_name("immediate").unwrap();
/// let mut cmd = Command::new("my-server");
/// let readiness = Readiness::prepare(policy, &mut cmd, std::path::Path::new("/tmp"), 8000)?;
/// // … spawn `cmd`, then watch its PID (here: this process):
/// let (tx, rx) = std::sync::mpsc::channel();
/// let watch = readiness.start(std::process::id(), "127.0.0.1", 8000, move |event| {
///     let _ = tx.send(event);
/// })?;
/// assert_eq!(rx.recv().unwrap(), ReadyEvent::Ready);
/// drop(watch); // no event after this
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Debug)]
pub struct Readiness {
    spec: ReadySpec,
    notify: Option<NotifySocket>,
    keep_watching: bool,
}

impl Readiness {
    /// Prepares `cmd` for `spec` (a [`ReadySpec`], or a [`ReadyPolicy`]
    /// with its defaults). The command never inherits this process's own
    /// `NOTIFY_SOCKET` (the launcher reports to its own supervisor itself);
    /// with `notify` it gets a fresh one instead, bound now (see
    /// [`NotifySocket::bind`]; `lock_dir` is where the socket file goes on
    /// Unix other than Linux).
    ///
    /// # Errors
    /// The socket's OS error for `notify`; `Unsupported` for `notify` on
    /// Windows.
    pub fn prepare(
        spec: impl Into<ReadySpec>,
        cmd: &mut Command,
        lock_dir: &Path,
        port: u16,
    ) -> io::Result<Readiness> {
        let spec = spec.into();
        cmd.env_remove(NOTIFY_SOCKET_ENV);
        let notify = match spec.policy {
            ReadyPolicy::Notify => {
                let socket = NotifySocket::bind(lock_dir, port)?;
                cmd.env(NOTIFY_SOCKET_ENV, socket.env_value());
                Some(socket)
            }
            ReadyPolicy::Listen | ReadyPolicy::Immediate | ReadyPolicy::Http => None,
        };
        Ok(Readiness {
            spec,
            notify,
            keep_watching: false,
        })
    }

    /// The policy this was prepared for.
    pub fn policy(&self) -> ReadyPolicy {
        self.spec.policy
    }

    /// The policy with its path, as prepared.
    pub fn spec(&self) -> &ReadySpec {
        &self.spec
    }

    /// Makes the watch go on after [`ReadyEvent::Ready`]: `listen` and
    /// `http` check again every [`WATCH_AFTER_READY`] and report
    /// [`ReadyEvent::Lost`] once [`LOST_AFTER`] checks in a row fail (one
    /// success resets the count); `notify` reports `STOPPING=1` as before,
    /// and `immediate` has nothing to watch. Off by default: `listen` ends
    /// its checks once ready.
    #[must_use]
    pub fn keep_watching(mut self) -> Readiness {
        self.keep_watching = true;
        self
    }

    /// Starts watching the command `root` (its PID) that serves `host`:`port`
    /// (`http` probes there; a wildcard host is probed on its loopback);
    /// `on_event` gets what the watch sees. With `immediate`,
    /// [`ReadyEvent::Ready`] is reported before this returns; otherwise from
    /// a thread of the watch's own, until the returned [`ReadyWatch`] is
    /// dropped (`listen` and `http` end by themselves once ready, unless
    /// [`keep_watching`](Readiness::keep_watching); `notify` keeps reporting
    /// `STATUS=`).
    ///
    /// # Errors
    /// The OS error if the watch's thread cannot be started.
    pub fn start(
        self,
        root: u32,
        host: &str,
        port: u16,
        mut on_event: impl FnMut(ReadyEvent) + Send + 'static,
    ) -> io::Result<ReadyWatch> {
        let last = Arc::new(Mutex::new(None));
        let probe = match (self.spec.policy, self.notify) {
            (ReadyPolicy::Notify, Some(socket)) => {
                let mut ready = false;
                let receiver = socket.listen(root, move |message| match message {
                    NotifyMessage::Ready if !ready => {
                        ready = true;
                        on_event(ReadyEvent::Ready);
                    }
                    NotifyMessage::Ready => {}
                    NotifyMessage::Status(text) => on_event(ReadyEvent::Status(text)),
                    NotifyMessage::Stopping => on_event(ReadyEvent::Stopping),
                })?;
                return Ok(ReadyWatch {
                    inner: Watch::Notify(receiver),
                    last,
                });
            }
            (ReadyPolicy::Listen, _) => Probe::Listen(ListenProbe::new(root, host, port)),
            (ReadyPolicy::Http, _) => Probe::Http {
                host: host.to_owned(),
                port,
                path: self
                    .spec
                    .http_path
                    .unwrap_or_else(|| DEFAULT_HTTP_PATH.to_owned()),
            },
            _ => {
                on_event(ReadyEvent::Ready);
                return Ok(ReadyWatch {
                    inner: Watch::Done,
                    last,
                });
            }
        };
        let stop = Arc::new(AtomicBool::new(false));
        let keep = self.keep_watching;
        let thread = {
            let stop = Arc::clone(&stop);
            let last = Arc::clone(&last);
            std::thread::Builder::new()
                .name("llmlb-ready".to_owned())
                .spawn(move || watch_probe(&probe, &stop, &last, keep, &mut on_event))?
        };
        Ok(ReadyWatch {
            inner: Watch::Probing {
                stop,
                thread: Some(thread),
            },
            last,
        })
    }
}

/// A running watch (see [`Readiness::start`]). Dropping it stops the
/// watching and waits for its thread (at most one probe: under
/// [`HTTP_PROBE_TIMEOUT`] for `http`): no event is reported after the drop.
#[derive(Debug)]
pub struct ReadyWatch {
    inner: Watch,
    last: Arc<Mutex<Option<String>>>,
}

impl ReadyWatch {
    /// What the last `http` probe got, printable, one line: `GET /health:
    /// 503`, `GET /health: connection refused`, `GET /health: no status line
    /// within 1s`; `None` before the first probe and for other policies
    /// (their lines say what they wait for).
    pub fn last_probe(&self) -> Option<String> {
        self.last.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

#[derive(Debug)]
enum Watch {
    Done,
    Notify(#[allow(dead_code)] NotifyReceiver), // stops on drop
    Probing {
        stop: Arc<AtomicBool>,
        thread: Option<JoinHandle<()>>,
    },
}

impl Drop for ReadyWatch {
    fn drop(&mut self) {
        if let Watch::Probing { stop, thread } = &mut self.inner {
            stop.store(true, Ordering::SeqCst);
            if let Some(thread) = thread.take() {
                thread.thread().unpark();
                let _ = thread.join();
            }
        }
    }
}

/// What the watch checks: `listen`'s or `http`'s probe.
#[derive(Debug)]
enum Probe {
    Listen(ListenProbe),
    Http {
        host: String,
        port: u16,
        path: String,
    },
}

impl Probe {
    /// One check: whether it passed, and for `http` what it got.
    fn check(&self, warned: &mut bool) -> (bool, Option<String>) {
        match self {
            Probe::Listen(probe) => match probe.listens() {
                Ok(listens) => {
                    *warned = false;
                    (listens, None)
                }
                Err(e) => {
                    // Said once, not every 50 ms; the check goes on (the
                    // next may succeed: a process that vanished mid-read).
                    if !*warned {
                        tracing::warn!(
                            "cannot check whether the command listens on its port yet: {e}"
                        );
                    }
                    *warned = true;
                    (false, None)
                }
            },
            Probe::Http { host, port, path } => {
                let probed = http_probe(host, *port, path);
                (probed.ready, Some(probed.text))
            }
        }
    }

    /// Why readiness is lost after [`LOST_AFTER`] failed checks whose last
    /// got `last`.
    fn lost(&self, last: Option<&str>) -> String {
        match (self, last) {
            (Probe::Http { .. }, Some(last)) => format!("{last} {LOST_AFTER} times in a row"),
            (Probe::Http { path, .. }, None) => {
                format!("GET {path} failed {LOST_AFTER} times in a row")
            }
            (Probe::Listen(probe), _) => format!("no longer listens on port {}", probe.port),
        }
    }
}

/// Checks until the probe passes (reports `Ready`) or `stop` is set,
/// pausing [`LISTEN_FIRST_DELAY`], doubling up to [`LISTEN_MAX_DELAY`]; then,
/// with `keep`, every [`WATCH_AFTER_READY`] until [`LOST_AFTER`] checks in a
/// row fail (reports `Lost`) or `stop` is set. Each check's result is kept in
/// `last`.
fn watch_probe(
    probe: &Probe,
    stop: &AtomicBool,
    last: &Mutex<Option<String>>,
    keep: bool,
    on_event: &mut dyn FnMut(ReadyEvent),
) {
    let mut warned = false;
    let mut check = || {
        let (passed, got) = probe.check(&mut warned);
        if got.is_some() {
            *last.lock().unwrap_or_else(|e| e.into_inner()) = got.clone();
        }
        (passed, got)
    };
    let mut delay = LISTEN_FIRST_DELAY;
    // What the probe gets is logged when it differs from what was logged
    // last, at most once a second (a server alternating between two answers
    // is not a line per probe; the latest still shows within a second).
    let mut logged: Option<(Instant, String)> = None;
    loop {
        if stop.load(Ordering::SeqCst) {
            return;
        }
        let (passed, got) = check();
        if passed {
            break;
        }
        if let Some(got) = got {
            let due = match &logged {
                None => true,
                Some((at, text)) => *text != got && at.elapsed() >= Duration::from_secs(1),
            };
            if due {
                tracing::info!("not ready yet: {got}");
                logged = Some((Instant::now(), got));
            }
        }
        if !pause(stop, delay) {
            return;
        }
        delay = (delay * 2).min(LISTEN_MAX_DELAY);
    }
    on_event(ReadyEvent::Ready);
    if !keep {
        return;
    }
    let mut failed = 0;
    while pause(stop, WATCH_AFTER_READY) {
        if check().0 {
            failed = 0;
            continue;
        }
        failed += 1;
        if failed >= LOST_AFTER {
            let last = last.lock().unwrap_or_else(|e| e.into_inner()).clone();
            on_event(ReadyEvent::Lost(probe.lost(last.as_deref())));
            return;
        }
    }
}

/// Sleeps `delay` (never less: `park_timeout` may wake early) unless
/// `stop` is set, which the watch's drop does with an `unpark` to end the
/// pause at once. False if stopped.
fn pause(stop: &AtomicBool, delay: Duration) -> bool {
    let until = Instant::now() + delay;
    loop {
        if stop.load(Ordering::SeqCst) {
            return false;
        }
        let now = Instant::now();
        if now >= until {
            return true;
        }
        std::thread::park_timeout(until - now);
    }
}

/// What one `http` probe got (see [`http_probe`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpProbe {
    /// The status was 2xx or 3xx.
    pub ready: bool,
    /// What it got, printable, one line, naming the request: `GET /health:
    /// 200`, `GET /health: 503`, `GET /health: connection refused`, `GET
    /// /health: no status line within 1s`, `GET /health: not an HTTP answer
    /// ("SSH-2.0-…")`.
    pub text: String,
}

/// Sends `GET path HTTP/1.1` to `host`:`port` (a wildcard host on its
/// loopback; a name resolved, its addresses tried in turn) and reads the
/// status line: ready on 2xx or 3xx. Anything else is not ready: another
/// status, a connect failure, no complete status line within
/// [`HTTP_PROBE_TIMEOUT`] (the whole probe's budget), or a reply that is
/// not HTTP/1 (HTTP/0.9, garbage, a status line over 512 bytes). At most 512
/// bytes are read; the connection is closed after the status line.
/// `path` is sent as given: check it with [`check_http_path`] first (a
/// path that would change the request is refused here, not sent).
pub fn http_probe(host: &str, port: u16, path: &str) -> HttpProbe {
    let not_yet = |what: String| HttpProbe {
        ready: false,
        text: format!("GET {path}: {what}"),
    };
    if let Err(why) = check_http_path(path) {
        return HttpProbe {
            ready: false,
            text: why,
        };
    }
    let deadline = Instant::now() + HTTP_PROBE_TIMEOUT;
    let targets: Vec<(SocketAddr, String)> = match probe_addrs(host, port) {
        Ok(addrs) => addrs
            .into_iter()
            .map(|addr| {
                // The name as given when there is one (virtual hosts), the
                // address probed otherwise (never a wildcard).
                let shown = if host.parse::<IpAddr>().is_ok() {
                    addr.to_string()
                } else {
                    format!("{host}:{port}")
                };
                (addr, shown)
            })
            .collect(),
        Err(e) => {
            return not_yet(format!(
                "cannot resolve {}: {}",
                crate::lock::printable(host),
                crate::lock::printable(&e.to_string())
            ))
        }
    };
    let mut failure = String::from("no address to connect to");
    let mut tried = false;
    for (addr, host_header) in targets {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            // What the last address got stands; with none tried, the time.
            if !tried {
                failure = no_answer();
            }
            break;
        }
        tried = true;
        let stream = match TcpStream::connect_timeout(&addr, left) {
            Ok(stream) => stream,
            // Windows retries a refused loopback connect for about 2 s:
            // there a closed port reads as this timeout, not a refusal.
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock
                ) =>
            {
                failure = format!("no connection within {}s", HTTP_PROBE_TIMEOUT.as_secs());
                continue;
            }
            Err(e) => {
                failure = describe_io(&e);
                continue;
            }
        };
        return match get_status(stream, path, &host_header, deadline) {
            Ok(status) => HttpProbe {
                ready: (200..400).contains(&status),
                text: format!("GET {path}: {status}"),
            },
            Err(what) => not_yet(what),
        };
    }
    not_yet(failure)
}

/// `no status line within 1s`.
fn no_answer() -> String {
    format!("no status line within {}s", HTTP_PROBE_TIMEOUT.as_secs())
}

/// An I/O error of a probe, short and printable.
fn describe_io(e: &io::Error) -> String {
    match e.kind() {
        io::ErrorKind::ConnectionRefused => "connection refused".to_owned(),
        io::ErrorKind::ConnectionReset => "connection reset".to_owned(),
        io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => no_answer(),
        _ => crate::lock::printable(&e.to_string()).to_string(),
    }
}

/// Sends the request on `stream` and reads its status line by `deadline`:
/// the status code, or what went wrong.
fn get_status(
    mut stream: TcpStream,
    path: &str,
    host: &str,
    deadline: Instant,
) -> Result<u16, String> {
    let _ = stream.set_nodelay(true);
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nUser-Agent: llmlb\r\nAccept: */*\r\n\r\n"
    );
    let left = deadline.saturating_duration_since(Instant::now());
    // A zero timeout would mean none at all.
    let left = left.max(Duration::from_millis(1));
    stream
        .set_write_timeout(Some(left))
        .and_then(|()| stream.write_all(request.as_bytes()))
        .map_err(|e| describe_io(&e))?;
    let mut buf = [0u8; MAX_STATUS_LINE];
    let mut len = 0;
    loop {
        match parse_status_line(&buf[..len]) {
            StatusLine::Complete(code) => return Ok(code),
            StatusLine::NotHttp(what) => return Err(what),
            StatusLine::Partial if len == buf.len() => {
                return Err(format!(
                    "not an HTTP answer (no status line in the first {MAX_STATUS_LINE} bytes)"
                ))
            }
            StatusLine::Partial => {}
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(no_answer());
        }
        stream
            .set_read_timeout(Some(left))
            .map_err(|e| describe_io(&e))?;
        match stream.read(&mut buf[len..]) {
            Ok(0) if len == 0 => return Err("connection closed without an answer".to_owned()),
            Ok(0) => {
                return Err(format!(
                    "connection closed within the status line ({})",
                    preview(&buf[..len])
                ))
            }
            Ok(n) => len += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(describe_io(&e)),
        }
    }
}

/// What the bytes read so far make of a status line.
#[derive(Debug, PartialEq, Eq)]
enum StatusLine {
    /// `HTTP/x.y NNN …` up to its line end: the code (100..=599).
    Complete(u16),
    /// Could still become one: more bytes are needed.
    Partial,
    /// Cannot be one: why, printable, with a short preview.
    NotHttp(String),
}

/// Parses the status line at the start of `bytes` (RFC 9112 §4:
/// `HTTP/DIGIT.DIGIT SP 3DIGIT SP [reason] CRLF`, leniently: a bare LF and a
/// missing reason are accepted). A reply that cannot begin with `HTTP/` is
/// refused from its first bytes, so garbage costs no wait.
fn parse_status_line(bytes: &[u8]) -> StatusLine {
    const PREFIX: &[u8] = b"HTTP/";
    let Some(end) = bytes.iter().position(|&b| b == b'\n') else {
        let n = bytes.len().min(PREFIX.len());
        if bytes[..n] != PREFIX[..n] {
            return not_http(bytes);
        }
        return StatusLine::Partial;
    };
    let line = &bytes[..end];
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let Some(rest) = line.strip_prefix(PREFIX) else {
        return not_http(bytes);
    };
    // DIGIT "." DIGIT SP 3DIGIT, then the end or SP and a reason.
    let ok = rest.len() >= 7
        && rest[0].is_ascii_digit()
        && rest[1] == b'.'
        && rest[2].is_ascii_digit()
        && rest[3] == b' '
        && rest[4..7].iter().all(u8::is_ascii_digit)
        && (rest.len() == 7 || rest[7] == b' ');
    if !ok {
        return not_http(bytes);
    }
    let code = rest[4..7]
        .iter()
        .fold(0u16, |code, d| code * 10 + u16::from(d - b'0'));
    if !(100..=599).contains(&code) {
        return not_http(bytes);
    }
    StatusLine::Complete(code)
}

fn not_http(bytes: &[u8]) -> StatusLine {
    StatusLine::NotHttp(format!("not an HTTP answer ({})", preview(bytes)))
}

/// The first line of `bytes`, quoted and printable (control characters
/// escaped), at most [`PREVIEW`] characters once escaped, then `…`.
fn preview(bytes: &[u8]) -> String {
    let line = bytes.split(|&b| b == b'\n').next().unwrap_or_default();
    let text = String::from_utf8_lossy(line);
    let mut shown = String::new();
    for c in text.chars() {
        let mut buf = [0u8; 4];
        let escaped = crate::lock::printable(c.encode_utf8(&mut buf)).to_string();
        if shown.chars().count() + escaped.chars().count() > PREVIEW {
            shown.push('…');
            break;
        }
        shown.push_str(&escaped);
    }
    format!("\"{shown}\"")
}

/// How much of a reply that is not HTTP is shown.
const PREVIEW: usize = 32;

/// The `listen` check for one command: its tree's sockets on Linux, a
/// connect probe elsewhere.
#[derive(Debug)]
struct ListenProbe {
    root: u32,
    host: String,
    port: u16,
}

impl ListenProbe {
    fn new(root: u32, host: &str, port: u16) -> ListenProbe {
        ListenProbe {
            root,
            host: host.to_owned(),
            port,
        }
    }

    #[cfg(target_os = "linux")]
    fn listens(&self) -> io::Result<bool> {
        let _ = &self.host; // the tree's sockets are found on any address
        super::listener::tree_listens(self.port, self.root)
    }

    /// The host's own address, not only loopback (where
    /// `listener::tree_listens` probes): `--host 192.0.2.7` listens there.
    #[cfg(not(target_os = "linux"))]
    fn listens(&self) -> io::Result<bool> {
        let _ = self.root; // no portable way to map sockets to processes
        Ok(connect_probe(&self.host, self.port))
    }
}

/// `python3 (PID 123) listens on 8001, not 8000` when the tree of `root`
/// listens on other ports than `port` and not on `port` (a mistyped port, the
/// commonest reason a command never becomes ready by `listen`); `None` if it
/// listens on none, on `port`, or the platform cannot tell whose a socket is
/// (only Linux can; see [`tree_listening`](super::listener::tree_listening)).
/// The process name is escaped for a terminal.
pub fn listening_instead(root: u32, port: u16) -> Option<String> {
    let sockets = super::listener::tree_listening(root).ok()?;
    if sockets.is_empty() || sockets.iter().any(|s| s.port == port) {
        return None;
    }
    // One clause per process, in the order found (by port, then PID).
    let mut clauses: Vec<(u32, String, Vec<u16>)> = Vec::new();
    for socket in &sockets {
        match clauses.iter_mut().find(|(pid, _, _)| *pid == socket.pid) {
            Some((_, _, ports)) if !ports.contains(&socket.port) => ports.push(socket.port),
            Some(_) => {}
            None => clauses.push((
                socket.pid,
                socket.name.as_deref().unwrap_or("a process").to_owned(),
                vec![socket.port],
            )),
        }
    }
    let clauses: Vec<String> = clauses
        .iter()
        .map(|(pid, name, ports)| {
            let ports: Vec<String> = ports.iter().map(u16::to_string).collect();
            format!(
                "{} (PID {pid}) listens on {}",
                crate::lock::printable(name),
                ports.join(", ")
            )
        })
        .collect();
    let line = format!("{}, not {port}", clauses.join("; "));
    Some(line)
}

/// Whether a TCP connect to `host`:`port` succeeds (the connection is closed
/// at once). A wildcard host (`0.0.0.0`, `::`) is probed on its loopback.
#[cfg_attr(target_os = "linux", allow(dead_code))]
pub(crate) fn connect_probe(host: &str, port: u16) -> bool {
    let Ok(addrs) = probe_addrs(host, port) else {
        return false;
    };
    addrs
        .iter()
        .any(|addr| TcpStream::connect_timeout(addr, CONNECT_TIMEOUT).is_ok())
}

/// The addresses a probe of `host`:`port` connects to: a wildcard host
/// (`0.0.0.0`, `::`) is its loopback, an address itself, a name its
/// resolved addresses.
fn probe_addrs(host: &str, port: u16) -> io::Result<Vec<SocketAddr>> {
    Ok(match host.parse::<IpAddr>() {
        Ok(IpAddr::V4(ip)) if ip.is_unspecified() => {
            vec![SocketAddr::from((Ipv4Addr::LOCALHOST, port))]
        }
        Ok(IpAddr::V6(ip)) if ip.is_unspecified() => {
            vec![SocketAddr::from((Ipv6Addr::LOCALHOST, port))]
        }
        Ok(ip) => vec![SocketAddr::from((ip, port))],
        Err(_) => (host, port).to_socket_addrs()?.collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_names_round_trip() {
        for policy in ReadyPolicy::ALL {
            assert_eq!(ReadyPolicy::from_name(policy.name()), Some(policy));
        }
        assert_eq!(ReadyPolicy::from_name("ready"), None);
        assert_eq!(ReadyPolicy::default(), ReadyPolicy::Listen);
    }

    #[test]
    fn ready_specs_parse_and_print_as_the_cli_takes_them() {
        let spec: ReadySpec = "http".parse().unwrap();
        assert_eq!(spec.policy(), ReadyPolicy::Http);
        assert_eq!(spec.http_path(), Some("/health"));
        assert_eq!(spec.to_string(), "http:/health");
        assert_eq!(spec.awaited(8000), "answer GET /health with 2xx or 3xx");
        let spec: ReadySpec = "http:/v1/models?x=1%20".parse().unwrap();
        assert_eq!(spec.http_path(), Some("/v1/models?x=1%20"));
        assert_eq!(spec.to_string().parse::<ReadySpec>(), Ok(spec));
        for policy in ReadyPolicy::ALL {
            let spec: ReadySpec = policy.name().parse().unwrap();
            assert_eq!(spec.policy(), policy);
            assert_eq!(spec, ReadySpec::from(policy));
            assert_eq!(spec.awaited(8000), policy.awaited(8000));
        }
        assert_eq!(ReadySpec::from(ReadyPolicy::Listen).http_path(), None);
        let long = format!("http:/{}", "a".repeat(MAX_HTTP_PATH));
        for (bad, says) in [
            ("http:", "must start with `/`"),
            ("http:health", "`health` must start with `/`"),
            ("http:/a b", "contains a space"),
            ("http:/a\r\nHost: evil", "contains a control character"),
            ("http:/\u{7f}", "contains a control character"),
            ("http:/caf\u{e9}", "contains `\u{e9}`"),
            (long.as_str(), "at most 1024"),
            ("soon", "`soon` is not a readiness policy: use listen, notify, immediate, http or http:/PATH"),
            ("\x1b[31m", "`\\u{1b}[31m` is not"),
        ] {
            let err = bad.parse::<ReadySpec>().unwrap_err();
            assert!(err.contains(says), "{bad:?}: {err}");
            assert!(!err.chars().any(char::is_control), "{err:?}");
        }
    }

    #[test]
    fn status_lines_are_parsed_from_their_first_bytes() {
        use StatusLine::*;
        assert_eq!(parse_status_line(b""), Partial);
        assert_eq!(parse_status_line(b"HT"), Partial);
        assert_eq!(parse_status_line(b"HTTP/1.1 20"), Partial);
        assert_eq!(parse_status_line(b"HTTP/1.1 200 OK"), Partial);
        assert_eq!(parse_status_line(b"HTTP/1.1 200 OK\r\n"), Complete(200));
        assert_eq!(
            parse_status_line(b"HTTP/1.0 503\nRetry-After: 1"),
            Complete(503)
        );
        assert_eq!(parse_status_line(b"HTTP/1.1 302 \r\n"), Complete(302));
        for garbage in [
            &b"SSH-2.0-OpenSSH_9.2\r\n"[..],
            b"<html>loading</html>\n", // HTTP/0.9: a body, no status line
            b"h",
            b"\0\0\0\0",
            b"\x16\x03\x01\x02\x00", // a TLS server hello
            b"HTTP/1.1 099 Low\r\n",
            b"HTTP/1.1 600 High\r\n",
            b"HTTP/1.1 2000 OK\r\n",
            b"HTTP/1.1  200 OK\r\n",
            b"HTTP/11 200 OK\r\n",
            b"HTTP/1.1 2x0 OK\r\n",
            b"HTTP/1.1\r\n",
            b"HTTP/\n",
            b"\n",
        ] {
            match parse_status_line(garbage) {
                NotHttp(why) => {
                    assert!(why.starts_with("not an HTTP answer (\""), "{why}");
                    assert!(!why.chars().any(char::is_control), "{why:?}");
                    assert!(why.chars().count() < 60, "{why}");
                }
                other => panic!("{:?}: {other:?}", String::from_utf8_lossy(garbage)),
            }
        }
    }

    /// Status lines with a prefix of HTTP/1 grammar now and then, so that
    /// the parser's every branch gets its share, else arbitrary bytes.
    fn any_answer() -> impl proptest::strategy::Strategy<Value = Vec<u8>> {
        use proptest::prelude::*;
        prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..600),
            (
                "[0-9]",
                "[0-9]",
                0u16..1000,
                "[ -~\\r]{0,20}",
                proptest::collection::vec(any::<u8>(), 0..40)
            )
                .prop_map(|(major, minor, code, reason, tail)| {
                    let mut bytes = format!("HTTP/{major}.{minor} {code:03}{reason}").into_bytes();
                    bytes.extend(tail);
                    bytes
                }),
        ]
    }

    proptest::proptest! {
        /// Whatever a server sends: a decision is final (more bytes never
        /// change it, so deciding early is sound), a code is 100..=599 and
        /// only from a line that starts `HTTP/`, and a refusal is one short
        /// printable line.
        #[test]
        fn any_answer_is_judged_once_and_printably(bytes in any_answer(), cut in 0usize..700) {
            let whole = parse_status_line(&bytes);
            let prefix = parse_status_line(&bytes[..cut.min(bytes.len())]);
            let kind = |line: &StatusLine| match line {
                StatusLine::Complete(code) => Some(Some(*code)),
                StatusLine::NotHttp(_) => Some(None),
                StatusLine::Partial => None,
            };
            if prefix != StatusLine::Partial {
                proptest::prop_assert_eq!(kind(&prefix), kind(&whole));
            }
            match whole {
                StatusLine::Complete(code) => {
                    proptest::prop_assert!((100..=599).contains(&code));
                    proptest::prop_assert!(bytes.starts_with(b"HTTP/"));
                }
                StatusLine::NotHttp(why) => {
                    proptest::prop_assert!(!why.chars().any(char::is_control), "{:?}", why);
                    proptest::prop_assert!(why.chars().count() <= 60, "{}", why);
                }
                StatusLine::Partial => {
                    proptest::prop_assert!(!bytes.contains(&b'\n'));
                }
            }
        }
    }

    /// A server on 127.0.0.1 answering each connection with `reply(request
    /// head)` (None: accept, then say nothing until the client goes); runs
    /// until the test process ends.
    fn server(reply: impl Fn(&str) -> Option<Vec<u8>> + Send + 'static) -> u16 {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { continue };
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") && head.len() < 4096 {
                    match conn.read(&mut byte) {
                        Ok(1) => head.push(byte[0]),
                        _ => break,
                    }
                }
                match reply(&String::from_utf8_lossy(&head)) {
                    Some(answer) => {
                        let _ = conn.write_all(&answer);
                    }
                    None => {
                        let _ = conn.read(&mut byte); // until the client closes
                    }
                }
            }
        });
        port
    }

    fn status(code: u16) -> Option<Vec<u8>> {
        Some(format!("HTTP/1.1 {code} Whatever\r\nContent-Length: 0\r\n\r\n").into_bytes())
    }

    #[test]
    fn the_http_probe_counts_2xx_and_3xx_only() {
        let (tx, rx) = std::sync::mpsc::channel();
        let tx = Mutex::new(tx);
        let port = server(move |head| {
            let _ = tx.lock().unwrap().send(head.to_owned());
            let code = head.split(' ').nth(1).unwrap()[1..].parse().unwrap();
            status(code)
        });
        for (code, ready) in [
            (200, true),
            (204, true),
            (301, true),
            (399, true),
            (404, false),
            (503, false),
            (199, false),
        ] {
            let got = http_probe("0.0.0.0", port, &format!("/{code}"));
            assert_eq!(
                got,
                HttpProbe {
                    ready,
                    text: format!("GET /{code}: {code}")
                }
            );
            let head = rx.recv().unwrap();
            assert_eq!(
                head,
                format!("GET /{code} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\nUser-Agent: llmlb\r\nAccept: */*\r\n\r\n")
            );
        }
        // Never sent: a path that would change the request.
        let got = http_probe("127.0.0.1", port, "/x HTTP/1.0\r\n\r\n");
        assert!(
            !got.ready && got.text.contains("contains a space"),
            "{got:?}"
        );
        assert!(rx.try_recv().is_err());
    }

    #[test]
    fn the_http_probe_says_what_went_wrong_and_reads_a_bounded_amount() {
        let free = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            listener.local_addr().unwrap().port()
        };
        let got = http_probe("127.0.0.1", free, "/health");
        assert_eq!(
            got,
            HttpProbe {
                ready: false,
                text: "GET /health: connection refused".to_owned()
            }
        );

        let silent = server(|_| None);
        let got = http_probe("127.0.0.1", silent, "/health");
        assert_eq!(got.text, "GET /health: no status line within 1s");

        let closes = server(|_| Some(Vec::new()));
        let got = http_probe("127.0.0.1", closes, "/health");
        assert_eq!(got.text, "GET /health: connection closed without an answer");

        let partial = server(|_| Some(b"HTTP/1.1 200".to_vec()));
        let got = http_probe("127.0.0.1", partial, "/health");
        assert_eq!(
            got.text,
            "GET /health: connection closed within the status line (\"HTTP/1.1 200\")"
        );
        assert!(!got.ready);

        // A megabyte of status line: refused after the first 512 bytes.
        let huge = server(|_| {
            let mut line = b"HTTP/1.1 200 ".to_vec();
            line.resize(1 << 20, b'x');
            Some(line)
        });
        let got = http_probe("127.0.0.1", huge, "/health");
        assert_eq!(
            got.text,
            "GET /health: not an HTTP answer (no status line in the first 512 bytes)"
        );

        let nine = server(|_| Some(b"<html>\x1b[2J hello</html>".to_vec()));
        let got = http_probe("127.0.0.1", nine, "/health");
        assert_eq!(
            got.text,
            "GET /health: not an HTTP answer (\"<html>\\u{1b}[2J hello</html>\")"
        );
    }

    /// Waits (bounded) for `rx`'s next event.
    fn next(rx: &std::sync::mpsc::Receiver<ReadyEvent>) -> ReadyEvent {
        rx.recv_timeout(Duration::from_secs(30))
            .expect("an event within 30 s")
    }

    #[test]
    fn an_http_watch_says_what_it_got_then_ready_then_lost() {
        use std::sync::atomic::AtomicU16;
        let code = Arc::new(AtomicU16::new(503));
        let port = {
            let code = Arc::clone(&code);
            server(move |_| status(code.load(Ordering::SeqCst)))
        };
        let mut cmd = Command::new("true");
        let spec = ReadySpec::http("/ok").unwrap();
        let readiness = Readiness::prepare(spec, &mut cmd, Path::new("."), port)
            .unwrap()
            .keep_watching();
        let (tx, rx) = std::sync::mpsc::channel();
        let watch = readiness
            .start(std::process::id(), "127.0.0.1", port, move |e| {
                tx.send(e).unwrap()
            })
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        while watch.last_probe().as_deref() != Some("GET /ok: 503") {
            assert!(Instant::now() < deadline, "{:?}", watch.last_probe());
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(rx.try_recv().is_err(), "not ready on 503");
        code.store(200, Ordering::SeqCst);
        assert_eq!(next(&rx), ReadyEvent::Ready);
        assert_eq!(watch.last_probe().as_deref(), Some("GET /ok: 200"));
        code.store(503, Ordering::SeqCst);
        assert_eq!(
            next(&rx),
            ReadyEvent::Lost("GET /ok: 503 3 times in a row".to_owned())
        );
        drop(watch);
        assert!(
            rx.recv().is_err(),
            "nothing after Lost, and the sender is gone"
        );
    }

    #[test]
    fn a_listen_watch_kept_on_reports_the_port_lost() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let mut cmd = Command::new("true");
        let readiness = Readiness::prepare(ReadyPolicy::Listen, &mut cmd, Path::new("."), port)
            .unwrap()
            .keep_watching();
        let (tx, rx) = std::sync::mpsc::channel();
        let watch = readiness
            .start(std::process::id(), "127.0.0.1", port, move |e| {
                tx.send(e).unwrap()
            })
            .unwrap();
        assert_eq!(next(&rx), ReadyEvent::Ready);
        assert_eq!(watch.last_probe(), None);
        drop(listener);
        assert_eq!(
            next(&rx),
            ReadyEvent::Lost(format!("no longer listens on port {port}"))
        );
    }

    #[test]
    fn without_keep_watching_a_watch_ends_at_ready() {
        let port = server(|_| status(200));
        let mut cmd = Command::new("true");
        let readiness =
            Readiness::prepare(ReadyPolicy::Http, &mut cmd, Path::new("."), port).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let _watch = readiness
            .start(1, "127.0.0.1", port, move |e| tx.send(e).unwrap())
            .unwrap();
        assert_eq!(next(&rx), ReadyEvent::Ready);
        // The thread ended and dropped its sender: no Lost can follow.
        assert!(rx.recv_timeout(Duration::from_secs(30)).is_err());
    }

    #[test]
    fn the_connect_probe_sees_a_listener_on_the_wildcard_host() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        assert!(connect_probe("0.0.0.0", port));
        assert!(connect_probe("127.0.0.1", port));
        drop(listener);
        assert!(!connect_probe("127.0.0.1", port));
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn a_tree_listening_on_another_port_is_named_with_that_port() {
        let me = std::process::id();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let there = listener.local_addr().unwrap().port();
        let wanted = if there == 1 { 2 } else { there - 1 };
        // Other tests of this process may listen too: their ports may be
        // listed beside ours.
        let line = listening_instead(me, wanted).expect("our own listener is seen");
        assert!(line.contains(&format!("(PID {me}) listens on ")), "{line}");
        assert!(line.contains(&there.to_string()), "{line}");
        assert!(line.ends_with(&format!(", not {wanted}")), "{line}");
        // Listening on the awaited port (too): nothing to say.
        assert_eq!(listening_instead(me, there), None);
        drop(listener);
    }

    #[test]
    fn immediate_is_ready_before_start_returns() {
        let mut cmd = Command::new("true");
        cmd.env(NOTIFY_SOCKET_ENV, "/run/systemd/notify");
        let readiness =
            Readiness::prepare(ReadyPolicy::Immediate, &mut cmd, Path::new("."), 1).unwrap();
        // Our own supervisor's socket is not the command's.
        assert!(cmd
            .get_envs()
            .any(|(k, v)| k == NOTIFY_SOCKET_ENV && v.is_none()));
        let (tx, rx) = std::sync::mpsc::channel();
        let _watch = readiness
            .start(1, "127.0.0.1", 1, move |e| tx.send(e).unwrap())
            .unwrap();
        assert_eq!(rx.try_recv(), Ok(ReadyEvent::Ready));
    }
}
