//! The `llmlb` command line (feature `cli`, on by default): what the binary's
//! `main` runs. Its only public item is [`run`]; the commands themselves are
//! docs/cli.md's contract, not a Rust API.
//!
//! Exit codes: 0 success, 1 runtime error (one `Error: …` line on stderr),
//! 2 usage error (clap), and the LSB codes of `status --port`; exec mode
//! passes its command's code through.

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use clap::builder::{RangedI64ValueParser, TypedValueParser as _};
use clap::parser::ValueSource;
use clap::{CommandFactory, FromArgMatches as _, Parser, Subcommand, ValueEnum};
use llmlb::supervise::ready::ReadySpec;

mod reload;
mod serve;
mod status;
mod stop;
mod usage;
mod wait;

/// Runtime failure: printed as one `Error: …` line.
pub(crate) use crate::supervise::server::EXIT_FAILURE;

/// The port of `serve` and `stop` (and of `status -p` without a value) when
/// neither `-p` nor [`PORT_ENV`] names one.
const DEFAULT_PORT: u16 = 32768;

/// The environment variable that names the port, as `-p` would.
const PORT_ENV: &str = "LLMLB_PORT";

/// ENVIRONMENT and FILES, in every command's `--help` (the man page has them
/// as sections of their own): a macro so that `concat!` can join it.
macro_rules! env_and_files {
    () => {
        "
Environment:
  LLMLB_LOCK_DIR   the lock dir (absolute); --lock-dir overrides it
  LLMLB_PORT       port of serve, stop, reload and wait, and of status -p without a value
                   (default 32768; empty: unset)
  LLMLB_HOST       serve's --host (default 0.0.0.0)
  LLMLB_LOG_LEVEL  log level on stderr (error, warn, info, debug, trace, off; default info);
                   RUST_LOG if unset

Files:
  /tmp/llmlb-<uid>/             the default lock dir (root: /run/llmlb), mode 0700
  <lock dir>/serve_<port>.lock  one per held or stale port: the kernel lock, and a JSON
                                record of its holder (PID, start, host); mode 0600"
    };
}

/// Each command's exit codes and examples: its `-h` text, and with
/// [`env_and_files`] its `--help`; the man page shows them in its section.
macro_rules! serve_after {
    () => {
        "Exit codes:
  0    stopped by SIGINT/SIGTERM (HTTP mode: also SIGQUIT), lock released
  0    also: handed over to a successor (serve --replace), which serves on
  1    already running on the port (with --wait: still, at the deadline), port used by
       another program, unusable lock dir; --replace: the holder could not be stopped
       (or stop refused it), or another replace of the port is under way; exec mode:
       COMMAND not ready within --ready-timeout (stopped, port released)
  2    usage error
  130  SIGINT while waiting (--wait) or taking over (--replace); 143 SIGTERM; nothing
       was taken (--replace: the running server keeps the port)
  exec mode: COMMAND's code (128 + N if killed by signal N; 126 not executable, 127 not found);
       asked to stop and COMMAND died of the forwarded SIGTERM/SIGINT: serve dies of it too,
       after releasing (a clean stop for systemd; 143/130 in a shell)

Signals: exec mode forwards SIGHUP, SIGUSR1, SIGQUIT and SIGWINCH to COMMAND's group; HTTP
  mode ignores SIGHUP, SIGUSR1 and SIGWINCH; SIGUSR2 reloads (as `llmlb reload`, in the
  background, 60 s for the successor).

Examples:
  llmlb serve --port 8000                       # HTTP on 0.0.0.0:8000, GET /health
  llmlb serve -p 8000 -- python3 -m http.server 8000   # any server under the lock
  llmlb serve -p 8000 --wait 10 -- ./server     # wait up to 10 s for the old one
  llmlb serve -p 8000 --ready-timeout 30 -- ./server   # stop it if not listening in 30 s
  llmlb serve -p 8000 --ready http -- ./server  # ready once GET /health answers 2xx/3xx
  llmlb serve -p 8000 --replace                 # take over from the running one
"
    };
}
const SERVE_AFTER: &str = serve_after!();
macro_rules! stop_after {
    () => {
        "Exit codes:
  0  stopped, killed with --force, stale file removed, or nothing was running
     (with -t 0: also signalled, not yet stopped)
  1  not stopped within the timeout; holder not verifiable (other host, other PID
     namespace, PID reused); an inheritor still holds the lock
  2  usage error

Examples:
  llmlb stop --port 8000                  # SIGTERM, wait up to 5 s
  llmlb stop -p 8000 --timeout 30 --force # then SIGKILL it and its command's group
  llmlb stop -p 8000 -t 0                 # signal, do not wait
"
    };
}
const STOP_AFTER: &str = stop_after!();
macro_rules! reload_after {
    () => {
        "Exit codes:
  0  the successor serves the port; the old server drains and exits 0 (one line
     naming the new PID)
  1  nothing reloaded, the old server serves on: the successor exited or was not
     ready within --timeout (it is stopped then; its log is the server's stderr);
     busy (a reload or replace is under way); the holder offers no handover (exec
     mode without a passed socket, a launcher) or is an llmlb that cannot reload;
     nobody holds the port
  2  usage error

The server starts its successor itself: its own command line (the executable found
again by the path it was started by, so a new binary on disk is used) with --replace,
in its working directory and environment, as its child (same cgroup, same log).
SIGUSR2 to the server does the same in the background.

Examples:
  llmlb reload --port 8000            # in a deploy script, after installing the new binary
  llmlb reload -p 8000 -t 600         # a model that loads for minutes
  ExecReload=/usr/bin/llmlb reload -p 8000   # systemd
"
    };
}
const RELOAD_AFTER: &str = reload_after!();
macro_rules! status_after {
    () => {
        "Exit codes:
  0  without --port: always; with --port: running
  1  --port: stale (its holder died; the next serve reclaims it)
  3  --port: not running
  4  the lock dir (or the port's lock file) is unreadable or unsafe
  2  usage error

Examples:
  llmlb status                     # every held and stale lock
  llmlb status --port 8000         # one port; exit code as above
  llmlb status --format json       # for scripts
"
    };
}
const STATUS_AFTER: &str = status_after!();
macro_rules! wait_after {
    () => {
        "Exit codes:
  0    the state holds (one line on stdout)
  1    the timeout passed (one line on stderr: the state last seen and who holds the
       port), or an error
  3    --for ready: a holder seen starting (or stopping) released the port or died
       before it was ready, even if another holder took the port since
  2    usage error
  130  SIGINT (Ctrl-C); 143 SIGTERM

Examples:
  llmlb wait --port 8000 --timeout 30      # until the server on 8000 says it serves
  llmlb wait -p 8000 --for free -t 10s     # until nothing holds port 8000
  llmlb serve -p 8000 -- ./server & llmlb wait -p 8000 && curl localhost:8000
"
    };
}
const WAIT_AFTER: &str = wait_after!();

/// Per-port single-instance server lock: start a server (or any command) only
/// if no other holds its port; stop and list them safely.
#[derive(Debug, Parser)]
#[command(name = "llmlb", version, propagate_version = true,
          after_help = concat!("Exit codes:
  0  success
  1  failure, one `Error: ...` line on stderr (e.g. the port is already held)
  2  usage error
  3  status --port: no server running (1 stale, 4 unknown: LSB)
  serve -- COMMAND exits with COMMAND's code

Examples:
  llmlb serve --port 8000 -- python3 -m http.server 8000
  llmlb status
  llmlb stop --port 8000
", env_and_files!(), "

The manual page: `llmlb man`; the guide: docs/cli.md."))]
pub(crate) struct Cli {
    /// Directory of the lock files; a relative path is taken from the current
    /// directory. Default: $LLMLB_LOCK_DIR if set (must be absolute), else a
    /// per-user dir that no other variable moves: /tmp/llmlb-<uid> (root:
    /// /run/llmlb; macOS: in the per-user temp dir; Windows:
    /// %LOCALAPPDATA%\llmlb\locks).
    #[arg(long, global = true, value_name = "DIR")]
    lock_dir: Option<PathBuf>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Take the port's lock, then serve HTTP (GET /health) or run COMMAND
    /// under the lock until told to stop.
    #[command(after_help = SERVE_AFTER, after_long_help = concat!(serve_after!(), env_and_files!()))]
    Serve(ServeArgs),
    /// Stop the server holding a port (the one serve would take by default):
    /// SIGTERM, wait for its lock, optionally SIGKILL.
    #[command(after_help = STOP_AFTER, after_long_help = concat!(stop_after!(), env_and_files!()))]
    Stop(StopArgs),
    /// Replace the server holding a port by a new one started from its own
    /// command line (a new binary on disk is picked up), without refusing a
    /// connection; waits until the new one serves.
    #[command(after_help = RELOAD_AFTER, after_long_help = concat!(reload_after!(), env_and_files!()))]
    Reload(ReloadArgs),
    /// List held and stale locks (LSB exit codes with --port: 0 running,
    /// 1 stale, 3 not running, 4 unknown).
    #[command(after_help = STATUS_AFTER, after_long_help = concat!(status_after!(), env_and_files!()))]
    Status(StatusArgs),
    /// Wait until a port's server is ready, or the port is held or free
    /// (exit 0; 1 at the timeout; 3 if the server waited on for ready went
    /// away first).
    ///
    /// Takes nothing and creates nothing; may be started before `serve`
    /// (a missing lock dir is a port nothing holds yet). Prints one line on
    /// stdout when the state holds (`Port 8000 is ready (PID 1234)`).
    #[command(after_help = WAIT_AFTER, after_long_help = concat!(wait_after!(), env_and_files!()))]
    Wait(WaitArgs),
    /// Print shell completions to stdout.
    Completions {
        /// The shell to generate completions for.
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff) to stdout: `llmlb man > llmlb.1`.
    Man,
}

#[derive(Debug, clap::Args)]
struct ServeArgs {
    /// Port to lock (and listen on).
    #[arg(short, long, env = PORT_ENV, default_value_t = DEFAULT_PORT, value_parser = port_parser(),
          allow_negative_numbers = true)]
    port: u16,
    /// Address to listen on (exec mode: passed as LLMLB_HOST, bound only with
    /// --pass-socket; ignored under socket activation).
    #[arg(short = 'H', long, env = "LLMLB_HOST", default_value = "0.0.0.0")]
    host: String,
    /// If the port is held, wait up to SECS seconds (decimals allowed) for it
    /// to be released instead of failing; 0 fails at once.
    #[arg(short, long, value_name = "SECS", default_value = "0", value_parser = parse_secs,
          allow_hyphen_values = true)]
    wait: Duration,
    /// If the port is held by a verified `llmlb serve` that offers a
    /// handover, take over its lock and listening socket without refusing a
    /// connection: it drains and exits once this server is ready. A holder
    /// that offers none is stopped as `llmlb stop` would (connections are
    /// refused until this server listens). Exec mode: implies --pass-socket.
    #[arg(long)]
    replace: bool,
    /// With --replace (also a later `llmlb reload`, which runs this command
    /// line again with --replace): seconds (decimals allowed) the holder has to answer
    /// the handover, or, offering none, to stop.
    #[arg(long, value_name = "SECS", default_value = "5", value_parser = parse_secs,
          allow_hyphen_values = true)]
    replace_timeout: Duration,
    /// With --replace (also a later `llmlb reload`, which runs this command
    /// line again with --replace): seconds (decimals allowed; 0 commits at once) this
    /// server must stay up after it is ready before the running server is
    /// told to drain. Until then the running server keeps serving on the
    /// same socket; if this server's command exits meanwhile (or, with
    /// --ready http or listen, stops answering), the port stays with the
    /// running server and this one exits 1.
    #[arg(long, value_name = "SECS", default_value = "2", value_parser = parse_secs,
          allow_hyphen_values = true)]
    replace_grace: Duration,
    /// Seconds (decimals allowed) a server that stops serving gives what it
    /// accepted to finish (HTTP mode: in-flight requests; exec mode:
    /// COMMAND, before SIGKILL), then cuts the rest. [default: 30 after
    /// handing the port over; 3 after a stop request]
    #[arg(long, value_name = "SECS", value_parser = parse_secs, allow_hyphen_values = true)]
    drain_timeout: Option<Duration>,
    /// Exec mode: seconds (decimals allowed) COMMAND has to become ready
    /// (--ready); not ready by then, it is stopped (SIGTERM, SIGKILL 3 s
    /// later), the port released (--replace: given back to the running
    /// server, which serves on) and serve exits 1 naming what it waited
    /// for. 0 waits for ever. [default: none; 60 with --replace]
    #[arg(long, value_name = "SECS", value_parser = parse_secs,
          requires = "command", allow_negative_numbers = true)]
    ready_timeout: Option<Duration>,
    /// Exec mode: after taking the lock, bind --host:--port and pass the
    /// listening socket to COMMAND as descriptor 3 with LISTEN_FDS=1,
    /// LISTEN_PID and LISTEN_FDNAMES=llmlb (gunicorn finds it itself, uvicorn
    /// --fd 3). Started by socket activation, the received socket is passed
    /// with or without this flag. Not on Windows.
    #[arg(long, requires = "command")]
    pass_socket: bool,
    /// Exec mode: llmlb binds --host:--port itself and forwards each
    /// connection (TCP: any protocol) to COMMAND, which serves on a private
    /// port on 127.0.0.1: every `{port}` in COMMAND's arguments becomes that
    /// port, and PORT and LLMLB_BACKEND_PORT name it (LLMLB_PORT stays the
    /// public port). --ready is probed there, and llmlb accepts once COMMAND
    /// is ready (until then connections wait in the queue). With --replace,
    /// the new COMMAND loads on a port of its own while the running server
    /// serves: no connection refused, for servers that bind their own port.
    #[arg(long, requires = "command", conflicts_with = "pass_socket")]
    proxy: bool,
    /// With --proxy: the private port for COMMAND. [default: one the kernel
    /// picks; a replace whose predecessor's COMMAND still has it takes
    /// another]
    #[arg(long, value_name = "PORT", requires = "proxy", value_parser = port_parser())]
    backend_port: Option<u16>,
    /// With --proxy: connections forwarded at once; beyond it new ones wait
    /// in the listen queue, never refused. [default: 4096]
    #[arg(long, value_name = "N", requires = "proxy", value_parser = clap::value_parser!(u32).range(1..))]
    max_connections: Option<u32>,
    /// Exec mode only: when COMMAND counts as ready, i.e. when the lock
    /// record's state goes from starting to ready. http[:PATH]: once GET PATH
    /// (default /health) on the port answers 2xx or 3xx within 1 s, probed
    /// from 1 ms doubling to every 50 ms; refused with --replace (the old
    /// command may answer on the passed socket). [default: listen]
    #[arg(long, value_name = "WHEN", value_parser = ReadyParser)]
    ready: Option<ReadySpec>,
    /// Write llmlb's PID (the lock holder's, which `stop` signals) to PATH
    /// once the lock is taken, for PIDFile=, start-stop-daemon, monit and
    /// logrotate; removed at exit if it still holds that PID. PATH's
    /// directory must not be writable by other users without the sticky
    /// bit, and PATH must not be a symlink. Unix only.
    #[arg(long, value_name = "PATH")]
    pidfile: Option<PathBuf>,
    /// Exec mode: run COMMAND with LLMLB_PORT set instead of the built-in
    /// server, holding the lock until it exits; exit with its code.
    #[arg(last = true, value_name = "COMMAND")]
    command: Vec<OsString>,
}

/// `--ready`'s values (see [`ReadySpec`]): a policy's word, or `http:/PATH`,
/// which no `ValueEnum` can take; the words are still listed for `--help`,
/// the man page and completions.
#[derive(Debug, Clone, Copy)]
struct ReadyParser;

impl clap::builder::TypedValueParser for ReadyParser {
    type Value = ReadySpec;

    fn parse_ref(
        &self,
        cmd: &clap::Command,
        arg: Option<&clap::Arg>,
        value: &std::ffi::OsStr,
    ) -> Result<ReadySpec, clap::Error> {
        // A plain function parser formats the error as every other option's
        // ("invalid value 'X' for '--ready <WHEN>': …").
        let parse = |text: &str| text.parse::<ReadySpec>();
        parse.parse_ref(cmd, arg, value)
    }

    fn possible_values(
        &self,
    ) -> Option<Box<dyn Iterator<Item = clap::builder::PossibleValue> + '_>> {
        use clap::builder::PossibleValue;
        Some(Box::new(
            [
                PossibleValue::new("listen").help(
                    "Once COMMAND's process tree listens on the port (elsewhere than Linux: \
                     once the port accepts a connection)",
                ),
                PossibleValue::new("notify").help(
                    "Once COMMAND's tree sends READY=1 to $NOTIFY_SOCKET (sd_notify; not on Windows)",
                ),
                PossibleValue::new("immediate").help("Once COMMAND is started"),
                PossibleValue::new("http").help(
                    "Once GET /health on the port answers 2xx or 3xx; http:/PATH for another path",
                ),
            ]
            .into_iter(),
        ))
    }
}

impl ServeArgs {
    /// The readiness policy of exec mode, or the usage error (exit 2) for a
    /// `--ready` that cannot apply: without a COMMAND (the built-in server is
    /// ready once it listens, always), or `notify` on Windows.
    fn ready_policy(&self) -> Result<ReadySpec, clap::Error> {
        let usage = |msg: &str| serve_usage(msg.to_owned());
        let Some(spec) = &self.ready else {
            return Ok(ReadySpec::default());
        };
        if self.command.is_empty() {
            return Err(usage(
                "--ready applies to exec mode only (the built-in server is ready once it listens): \
                 add `-- COMMAND` or drop --ready",
            ));
        }
        if !spec.policy().is_supported() {
            return Err(usage(
                "--ready notify is not supported on Windows (there is no sd_notify): use --ready listen, http or immediate",
            ));
        }
        Ok(spec.clone())
    }
}

/// Every port option and `LLMLB_PORT`: 1..=65535. The options allow a
/// leading `-`, so `-p -1` reaches this parser ("-1 is not in 1..=65535")
/// instead of clap's tip to write `-- -1`, which would make it COMMAND.
fn port_parser() -> RangedI64ValueParser<u16> {
    clap::value_parser!(u16).range(1..)
}

/// Every `SECS` option (`serve --wait`, `--replace-timeout`, `stop
/// --timeout`, `wait --timeout`), one parser so they take the same forms:
/// decimal seconds, 0 or more (`5`, `0.5`, `1.5`), optionally with a unit,
/// as `timeout(1)` and systemd take them (`10s`, `500ms`, `2m`); absurdly
/// large means no limit. Anything else, a negative number included (the
/// options take values with a leading `-`, so `-1` and `-1s` reach this
/// parser instead of clap's "use `-- -1`" tip), is one usage error naming
/// the value.
fn parse_secs(text: &str) -> Result<Duration, String> {
    let trimmed = text.trim();
    let (number, unit) = [("ms", 0.001), ("s", 1.0), ("m", 60.0)]
        .iter()
        .find_map(|&(suffix, unit)| Some((trimmed.strip_suffix(suffix)?.trim_end(), unit)))
        .unwrap_or((trimmed, 1.0));
    let secs: f64 = number
        .parse::<f64>()
        .map_err(|_| format!("`{text}` is not a number of seconds (e.g. 10, 0.5, 500ms or 2m)"))?
        * unit;
    if !secs.is_finite() || secs < 0.0 {
        return Err(format!(
            "`{text}` is not a number of seconds: give 0 or more (e.g. 10, 0.5, 500ms or 2m)"
        ));
    }
    Ok(Duration::try_from_secs_f64(secs).unwrap_or(Duration::MAX))
}

#[derive(Debug, clap::Args)]
struct StopArgs {
    /// Port whose server to stop, taken as serve takes it: so `llmlb serve`
    /// then `llmlb stop` stop the same server.
    #[arg(short, long, env = PORT_ENV, default_value_t = DEFAULT_PORT, value_parser = port_parser(),
          allow_negative_numbers = true)]
    port: u16,
    /// Seconds (decimals allowed) to wait for the lock to be released after
    /// SIGTERM. 0 does not wait (like `pg_ctl stop --no-wait`): the server is
    /// signalled and, if it still holds the port, stop prints "signalled, not
    /// yet stopped" and exits 0; with --force, 0 kills it at once.
    #[arg(short, long, value_name = "SECS", default_value = "5", value_parser = parse_secs,
          allow_hyphen_values = true)]
    timeout: Duration,
    /// After the timeout, SIGKILL the server and its command's process group.
    #[arg(long)]
    force: bool,
}

#[derive(Debug, clap::Args)]
struct ReloadArgs {
    /// Port whose server to reload, taken as serve takes it.
    #[arg(short, long, env = PORT_ENV, default_value_t = DEFAULT_PORT, value_parser = port_parser(),
          allow_negative_numbers = true)]
    port: u16,
    /// Seconds (decimals allowed) the successor has to take the port over;
    /// not by then, the server stops it and serves on (exit 1).
    #[arg(short, long, value_name = "SECS", default_value = "60", value_parser = parse_secs,
          allow_hyphen_values = true)]
    timeout: Duration,
}

#[derive(Debug, clap::Args)]
struct WaitArgs {
    /// Port to wait for, taken as serve takes it.
    #[arg(short, long, env = PORT_ENV, default_value_t = DEFAULT_PORT, value_parser = port_parser(),
          allow_negative_numbers = true)]
    port: u16,
    /// The state to wait for: ready (held by a server that says it serves),
    /// held (in any state), free (not held; a stale lock file is free).
    #[arg(long = "for", value_enum, value_name = "STATE", default_value_t = WaitFor::Ready)]
    until: WaitFor,
    /// Give up after SECS seconds (decimals allowed); without it, wait
    /// forever.
    #[arg(short, long, value_name = "SECS", value_parser = parse_secs,
          allow_hyphen_values = true)]
    timeout: Option<Duration>,
}

/// `wait --for`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum WaitFor {
    Ready,
    Held,
    Free,
}

impl From<WaitFor> for llmlb::supervise::wait::Until {
    fn from(w: WaitFor) -> Self {
        use llmlb::supervise::wait::Until;
        match w {
            WaitFor::Ready => Until::Ready,
            WaitFor::Held => Until::Held,
            WaitFor::Free => Until::Free,
        }
    }
}

#[derive(Debug, clap::Args)]
struct StatusArgs {
    /// Only this port (sets the LSB exit code). `-p` without a value: the
    /// port serve takes by default ($LLMLB_PORT, else 32768). Without -p,
    /// every lock is listed whatever LLMLB_PORT says.
    #[arg(short, long, value_name = "PORT", num_args = 0..=1, value_parser = port_parser(),
          allow_negative_numbers = true)]
    port: Option<Option<u16>>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    format: Format,
    /// Also show who listens on each port: the holder's process tree,
    /// nobody, or another program (always done with --port).
    #[arg(long)]
    check: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Format {
    Table,
    Json,
}

/// Where the lock files are, and whether the user named the dir on the
/// command line (then hints repeat `--lock-dir`).
#[derive(Clone)]
pub(crate) struct LockDirChoice {
    pub(crate) path: PathBuf,
    pub(crate) from_flag: bool,
}

impl LockDirChoice {
    /// The dir and its hint as the library's server takes them.
    pub(crate) fn to_where(&self) -> crate::supervise::server::Where {
        crate::supervise::server::Where {
            path: self.path.clone(),
            hint: self.hint_suffix(),
        }
    }

    /// ` --lock-dir DIR` when the dir came from the flag, else empty: appended
    /// to the `llmlb stop` hints so they work as printed (the path quoted for
    /// the shell, see [`llmlb::lock::shell_quoted`]).
    pub(crate) fn hint_suffix(&self) -> String {
        if self.from_flag {
            crate::supervise::server::explicit_lock_dir_hint(&self.path)
        } else {
            String::new()
        }
    }
}

/// The library refuses `..` in a lock dir (it could climb out through a
/// symlink). A typed `--lock-dir ../locks` is still a normal thing to ask:
/// resolve everything but the last component with the kernel (`realpath` of
/// the parent), so the last component is still judged as itself, never
/// followed. A path that cannot be resolved is left for the library to refuse.
fn resolve_parent_dirs(path: PathBuf) -> PathBuf {
    use std::path::Component;
    if !path.components().any(|c| c == Component::ParentDir) {
        return path;
    }
    let normalized: PathBuf = path.components().collect();
    let resolved = match normalized.components().next_back() {
        Some(Component::ParentDir) => std::fs::canonicalize(&normalized).ok(),
        Some(Component::Normal(last)) => normalized
            .parent()
            .and_then(|parent| std::fs::canonicalize(parent).ok())
            .map(|parent| parent.join(last)),
        _ => None,
    };
    resolved.unwrap_or(path)
}

fn lock_dir(flag: Option<PathBuf>) -> LockDirChoice {
    match flag {
        // A path typed on the command line means "from here", as for any
        // other CLI path argument. LLMLB_LOCK_DIR stays absolute-only (the
        // library refuses it): it applies to every invocation from any
        // directory, where a relative path would silently split the locks.
        Some(path) => {
            let path = if path.is_relative() {
                std::env::current_dir()
                    .map(|cwd| cwd.join(&path))
                    .unwrap_or(path)
            } else {
                path
            };
            let path = resolve_parent_dirs(path);
            LockDirChoice {
                path,
                from_flag: true,
            }
        }
        None => LockDirChoice {
            path: llmlb::lock::resolve_lock_dir(None),
            from_flag: false,
        },
    }
}

/// `status -p` without a value: the port `serve` takes by default, from
/// [`PORT_ENV`] (checked as `-p`'s value is: a usage error, exit 2,
/// otherwise, an empty value included, as clap's `env` for `serve -p`)
/// or [`DEFAULT_PORT`].
fn default_port() -> u16 {
    let Some(value) = std::env::var_os(PORT_ENV) else {
        return DEFAULT_PORT;
    };
    let mut cli = Cli::command();
    cli.build();
    let status = cli
        .find_subcommand("status")
        .expect("the status command is defined above");
    let arg = status.get_arguments().find(|a| a.get_id() == "port");
    port_parser()
        .parse_ref(status, arg, &value)
        .unwrap_or_else(|e| e.exit())
}

pub(crate) use crate::supervise::server::report::fail;

/// Runs the `llmlb` command line on this process's arguments: parses them
/// (printing help, version or a usage error and exiting 0 or 2 itself, as
/// clap does), runs the command and returns the process exit code.
/// Everything the command held, its lock first, is dropped by the time this
/// returns, so the caller can `std::process::exit` with the code.
pub fn run() -> i32 {
    let bad_port_env = usage::take_bad_port_env();
    let args: Vec<OsString> = std::env::args_os().skip(1).collect();
    // The matches too: `serve` must tell a port given from the default.
    let matches = Cli::command()
        .try_get_matches_from(std::iter::once(OsString::from("llmlb")).chain(args.iter().cloned()))
        .unwrap_or_else(|e| usage::with_fix(e, &args).exit());
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    if let (Some(value), Some((name, sub))) = (&bad_port_env, matches.subcommand()) {
        // The commands that would have taken their port from LLMLB_PORT.
        let from_env = match &cli.command {
            Command::Serve(_) | Command::Stop(_) | Command::Reload(_) | Command::Wait(_) => {
                sub.value_source("port") == Some(ValueSource::DefaultValue)
            }
            Command::Status(args) => args.port == Some(None),
            _ => false,
        };
        if from_env {
            usage::bad_port_env(name, value).exit();
        }
    }
    crate::supervise::server::init_logging();
    usage::warn_unknown_env();
    let dir = lock_dir(cli.lock_dir);
    match cli.command {
        Command::Serve(args) => {
            let sub = matches.subcommand_matches("serve");
            serve::run(&dir, args, sub.and_then(|m| m.value_source("port")))
        }
        Command::Stop(args) => stop::run(&dir, args.port, args.timeout, args.force),
        Command::Reload(args) => reload::run(&dir, args.port, args.timeout),
        Command::Wait(args) => wait::run(&dir, args.port, args.until.into(), args.timeout),
        Command::Status(args) => {
            let port = args.port.map(|port| port.unwrap_or_else(default_port));
            status::run(&dir, port, args.format == Format::Json, args.check)
        }
        Command::Completions { shell } => {
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "llmlb", &mut script);
            print_document(&script, "completions")
        }
        Command::Man => match man_page() {
            Ok(page) => print_document(&page, "the man page"),
            Err(e) => fail(format!("cannot render the man page: {e}")),
        },
    }
}

/// A usage error of `serve` (clap's format, exit 2).
fn serve_usage(message: String) -> clap::Error {
    let mut cli = Cli::command();
    cli.build();
    let serve = cli
        .find_subcommand_mut("serve")
        .expect("the serve command is defined above");
    serve.error(clap::error::ErrorKind::ArgumentConflict, message)
}

/// [`serve_usage`], exiting 2.
fn serve_usage_error(message: String) -> ! {
    serve_usage(message).exit()
}

/// Writes a generated document to stdout. A reader that stopped reading
/// (`llmlb completions bash | grep -q …`, `| head`) is not an error: it got
/// what it wanted, so this exits 0 quietly, as a pipeline expects of a
/// producer (clap_complete writing straight to stdout panicked there).
fn print_document(bytes: &[u8], what: &str) -> i32 {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    match out.write_all(bytes).and_then(|()| out.flush()) {
        Ok(()) => 0,
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => 0,
        Err(e) => fail(format!("cannot write {what} to stdout: {e}")),
    }
}

/// One section rendered by clap_mangen, without the preamble every render
/// repeats, with its `.SH` heading demoted to a subheading (`.SS`) or, for
/// `keep_heading = false`, dropped: the body goes under a command's heading.
fn subsection(rendered: &[u8], keep_heading: bool) -> Vec<u8> {
    let text = String::from_utf8_lossy(rendered);
    let mut out = String::new();
    let mut in_body = false;
    for line in text.lines() {
        if !in_body {
            if let Some(heading) = line.strip_prefix(".SH") {
                in_body = true;
                if keep_heading {
                    out.push_str(&format!(".SS{heading}\n"));
                }
            }
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    out.into_bytes()
}

/// `llmlb.1`, from the same clap definition as `--help` and the completions,
/// so it cannot drift: name, synopsis, description and global options as
/// clap_mangen renders them, then one section per command (its description,
/// synopsis and options) where clap_mangen would point to a page per command
/// (one page to install), then the environment variables.
fn man_page() -> std::io::Result<Vec<u8>> {
    let mut cmd = Cli::command();
    cmd.build();
    let top = clap_mangen::Man::new(cmd.clone());
    let mut page = Vec::new();
    top.render_title(&mut page)?;
    top.render_name_section(&mut page)?;
    top.render_synopsis_section(&mut page)?;
    top.render_description_section(&mut page)?;
    top.render_options_section(&mut page)?;
    let commands = cmd
        .get_subcommands()
        .filter(|s| !s.is_hide_set() && !["help", "man"].contains(&s.get_name()));
    for sub in commands {
        let name = sub.get_name().to_uppercase();
        page.extend_from_slice(format!(".SH \"LLMLB {name}\"\n").as_bytes());
        let man = clap_mangen::Man::new(sub.clone());
        let mut part = Vec::new();
        man.render_description_section(&mut part)?;
        page.extend(subsection(&part, false));
        let mut part = Vec::new();
        man.render_synopsis_section(&mut part)?;
        page.extend(subsection(&part, true));
        let mut part = Vec::new();
        man.render_options_section(&mut part)?;
        page.extend(subsection(&part, true));
        // Its exit codes and examples (-h's text), without the environment
        // and files that --help repeats: the page has them once, below.
        let short = clap_mangen::Man::new(sub.clone().after_long_help(None::<&str>));
        let mut part = Vec::new();
        short.render_extra_section(&mut part)?;
        page.extend_from_slice(b".SS \"EXIT STATUS AND EXAMPLES\"\n.nf\n");
        page.extend(subsection(&part, false));
        page.extend_from_slice(b".fi\n");
    }
    page.extend_from_slice(
        concat!(
            ".SH ENVIRONMENT\n",
            ".TP\nLLMLB_LOCK_DIR\nDirectory of the lock files (absolute); \\-\\-lock\\-dir overrides it. ",
            "Unset, a per\\-user dir that no other variable (not TMPDIR, not XDG_RUNTIME_DIR) moves, so every ",
            "session of a user (ssh, tmux, cron) finds the same locks: /tmp/llmlb\\-<uid>, for root ",
            "/run/llmlb. Set it to one directory (yours alone) everywhere to share locks between the ",
            "sessions and services of one account on purpose.\n",
            ".TP\nLLMLB_PORT\nThe port of serve and stop when \\-\\-port is not given, and of status \\-\\-port ",
            "without a value (default 32768); plain status lists every lock whatever it says. Set for ",
            "COMMAND in exec mode.\n",
            ".TP\nLLMLB_HOST\nDefault for serve's \\-\\-host; set for COMMAND in exec mode.\n",
            ".TP\nNOTIFY_SOCKET, WATCHDOG_USEC, WATCHDOG_PID\nSet by a service manager (systemd's Type=notify): serve ",
            "sends it MAINPID and READY=1 once it serves, a STATUS line at each step and STOPPING=1 when it stops; with ",
            "WATCHDOG_USEC (and WATCHDOG_PID unset or serve's own), WATCHDOG=1 at half that interval for as long as ",
            "the port's lock is still its own. Not passed on to COMMAND in exec mode: serve is the one that reports.\n",
            ".TP\nLLMLB_LOG_LEVEL, RUST_LOG\nLog level of the messages on stderr (default info). A value that ",
            "is not a level (error, warn, info, debug, trace, off) or TARGET=LEVEL is reported in one warning ",
            "and info is used.\n",
            ".SH FILES\n",
            ".TP\n/tmp/llmlb\\-<uid>/\nThe default lock dir (root: /run/llmlb; macOS: llmlb\\-<uid> in the per\\-user ",
            "temp dir; Windows: %LOCALAPPDATA%\\ellmlb\\elocks), created mode 0700; refused if another user owns it or ",
            "others can write it.\n",
            ".TP\n<lock dir>/serve_<port>.lock\nOne per held or stale port, mode 0600: the kernel lock (flock) on it ",
            "says who holds the port; its JSON record (PID, start, host, process identity) is for status and stop. ",
            "Removed when its holder releases; a file left by a crashed holder is stale and the next serve reclaims it.\n",
            ".SH \"EXIT STATUS\"\n",
            "0 success; 1 failure, one Error: line on stderr (the port already held, an unusable lock dir, ",
            "a holder that cannot be verified); 2 usage error; status \\-\\-port: 0 running, 1 stale, 3 not ",
            "running, 4 unknown (LSB); serve \\-\\- COMMAND: COMMAND's code. Each command's section lists its own.\n",
            ".SH EXAMPLES\n",
            ".nf\nllmlb serve \\-\\-port 8000 \\-\\- python3 \\-m http.server 8000\nllmlb status\n",
            "llmlb stop \\-\\-port 8000\n.fi\n",
            ".SH \"SEE ALSO\"\nflock(1); the guides in the source tree: docs/cli.md, docs/protocol.md.\n",
        )
        .as_bytes(),
    );
    Ok(page)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clap_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn man_page_documents_every_command_and_its_options() {
        let page = String::from_utf8(man_page().unwrap()).unwrap();
        assert!(page.contains("\n.TH llmlb 1 "), "{page}");
        let cmd = Cli::command();
        let visible: Vec<_> = cmd
            .get_subcommands()
            .filter(|s| !s.is_hide_set() && s.get_name() != "man")
            .collect();
        assert!(visible.len() >= 4, "serve, stop, status, completions");
        for sub in visible {
            let name = sub.get_name();
            assert!(
                page.contains(&format!(".SH \"LLMLB {}\"", name.to_uppercase())),
                "no section for {name}: {page}"
            );
            for long in sub.get_arguments().filter_map(|a| a.get_long()) {
                // roff escapes every '-' in option names.
                let flag = format!("\\-\\-{}", long.replace('-', "\\-"));
                assert!(page.contains(&flag), "{name} {flag} missing: {page}");
            }
        }
        assert!(
            !page.contains("LLMLB MAN"),
            "the man command has no section of its own"
        );
    }
}
