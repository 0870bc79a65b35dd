//! `llmlb serve`: its flags as [`ServeOptions`], then the library's
//! [`serve`](crate::supervise::server::serve) (the server's life is written
//! there once, for the CLI and the C and Python launchers alike).

use clap::parser::ValueSource;

use crate::supervise::activation::{activated_listener, Activated};
use crate::supervise::server::{self, Mode, ServeOptions};

use super::{fail, serve_usage_error, LockDirChoice, ServeArgs, PORT_ENV};

/// Runs `llmlb serve`: reads socket activation while this process still has
/// one thread (it edits the environment), settles the port (the received
/// socket's, which a port given with `-p` or `LLMLB_PORT` must match), then
/// serves; returns the exit code, or dies of the stop signal the command
/// died of (as a service manager must see it).
pub(crate) fn run(dir: &LockDirChoice, args: ServeArgs, port_source: Option<ValueSource>) -> i32 {
    let ready = args.ready_policy().unwrap_or_else(|e| e.exit());
    if cfg!(windows) && args.pass_socket {
        serve_usage_error(
            "--pass-socket is not supported on Windows (it has no LISTEN_FDS protocol); let COMMAND bind LLMLB_PORT itself".to_owned(),
        );
    }
    let activated = match activated_listener() {
        Ok(activated) => activated,
        Err(e) => return fail(e),
    };
    let port = match &activated {
        // The socket's port, unless one given (not the default) disagrees.
        Some(socket) if socket.port() != args.port => {
            let (given, fix) = match port_source {
                Some(ValueSource::CommandLine) => (format!("--port {}", args.port), "drop --port"),
                Some(ValueSource::EnvVariable) => {
                    (format!("{PORT_ENV}={}", args.port), "unset LLMLB_PORT")
                }
                _ => (String::new(), ""),
            };
            if !given.is_empty() {
                serve_usage_error(format!(
                    "{given} disagrees with the socket passed by socket activation (LISTEN_FDS), which listens on port {}: {fix}, or make them agree",
                    socket.port(),
                ));
            }
            socket.port()
        }
        _ => args.port,
    };
    let options = options(dir, port, args, ready, activated);
    // What the library would refuse, refused in clap's words (exit 2).
    if let Some(problem) = server::usage_problem(&options) {
        serve_usage_error(problem);
    }
    server::serve(options).die_or_code()
}

/// The flags as the library takes them.
fn options(
    dir: &LockDirChoice,
    port: u16,
    args: ServeArgs,
    ready: crate::supervise::ready::ReadySpec,
    activated: Option<Activated>,
) -> ServeOptions {
    let mode = if args.command.is_empty() {
        Mode::Http
    } else if args.proxy {
        Mode::Proxy {
            command: args.command,
            backend_port: args.backend_port,
            max_connections: args
                .max_connections
                .map_or(crate::supervise::proxy::DEFAULT_MAX_CONNECTIONS, |n| {
                    n as usize
                }),
        }
    } else {
        Mode::Exec(args.command)
    };
    ServeOptions {
        lock_dir: dir.path.clone(),
        lock_dir_hint: dir.hint_suffix(),
        port,
        host: args.host,
        mode,
        ready,
        ready_timeout: args.ready_timeout,
        wait: args.wait,
        pidfile: args.pidfile,
        pass_socket: args.pass_socket,
        activated,
        replace: args.replace,
        replace_timeout: args.replace_timeout,
        replace_grace: args.replace_grace,
        drain_timeout: args.drain_timeout,
    }
}
