//! The usage mistakes people make without reading anything (issue 26 §9),
//! answered with the fix: a bad `LLMLB_PORT` named as the variable, a port
//! typed without `-p`, a COMMAND without the `--` before it, and an
//! `LLMLB_*` variable llmlb does not read.

use std::ffi::{OsStr, OsString};

use clap::error::{ContextKind, ContextValue, ErrorKind};
use clap::CommandFactory as _;

use super::{Cli, PORT_ENV};

/// The `LLMLB_*` variables llmlb reads, or sets for COMMAND (`LLMLB_LOCK_FD`,
/// which a nested `llmlb` then sees), or the Python package reads
/// (`LLMLB_LOCK_LIB`, which a user may export beside the others).
const KNOWN_ENV: [&str; 6] = [
    "LLMLB_LOCK_DIR",
    "LLMLB_PORT",
    "LLMLB_HOST",
    "LLMLB_LOG_LEVEL",
    "LLMLB_LOCK_FD",
    "LLMLB_LOCK_LIB",
];

/// Takes `LLMLB_PORT` out of clap's hands when it cannot be a port, so that
/// clap never reports it as a bad `--port`: an empty value counts as unset
/// (as for most variables of most tools) and is removed; any other value
/// that is not a port is removed too and returned, for
/// [`bad_port_env`] once the command is known to use it (plain `status`
/// does not). Runs first thing, while the process has one thread.
pub(super) fn take_bad_port_env() -> Option<OsString> {
    let value = std::env::var_os(PORT_ENV)?;
    let valid = value
        .to_str()
        .and_then(|v| v.parse::<u16>().ok())
        .is_some_and(|p| p != 0);
    if valid {
        return None;
    }
    // Single-threaded still (nothing has been spawned), so nothing reads
    // the environment while it changes.
    std::env::remove_var(PORT_ENV);
    (!value.is_empty()).then_some(value)
}

/// The usage error (exit 2) for a bad `LLMLB_PORT` that `command` would
/// have taken its port from.
pub(super) fn bad_port_env(command: &str, value: &OsStr) -> clap::Error {
    let mut cli = Cli::command();
    cli.build();
    let sub = cli
        .find_subcommand_mut(command)
        .expect("a command of the CLI");
    sub.error(
        ErrorKind::InvalidValue,
        format!(
            "invalid {PORT_ENV}={}: not a port (1..=65535); set it to a port, unset it, or give --port",
            llmlb::lock::shell_quoted(value)
        ),
    )
}

/// The subcommand in `args` (the process's arguments without the program)
/// and where it is: the first word that is not an option or `--lock-dir`'s
/// value.
fn subcommand(args: &[OsString]) -> Option<(usize, &str)> {
    let mut words = args.iter().enumerate();
    while let Some((at, word)) = words.next() {
        let word = word.to_str()?;
        if word == "--lock-dir" {
            words.next();
        } else if !word.starts_with('-') {
            return Some((at, word));
        }
    }
    None
}

/// Adds the fix to clap's "unexpected argument" error where the mistake is
/// plain: `status 8000` (a port without `-p`: "did you mean `--port
/// 8000`?"), `serve -p 8000 python3 …` (a COMMAND without the `--` before
/// it: the command line with `--` in place, quoted for the shell). Any other
/// error is returned as it is.
pub(super) fn with_fix(mut err: clap::Error, args: &[OsString]) -> clap::Error {
    if err.kind() != ErrorKind::UnknownArgument {
        return err;
    }
    let Some(ContextValue::String(unexpected)) = err.get(ContextKind::InvalidArg) else {
        return err;
    };
    let unexpected = unexpected.clone();
    let Some((command_at, command)) = subcommand(args) else {
        return err;
    };
    let takes_port = ["serve", "stop", "status", "wait"].contains(&command);
    let tip = if takes_port && unexpected.parse::<u16>().is_ok_and(|p| p != 0) {
        format!("did you mean `--port {unexpected}`?")
    } else if command == "serve" && !unexpected.starts_with('-') {
        let Some(at) = args
            .iter()
            .skip(command_at + 1)
            .position(|a| a == unexpected.as_str())
            .map(|i| i + command_at + 1)
        else {
            return err;
        };
        let mut line = String::from("llmlb");
        for (i, arg) in args.iter().enumerate() {
            if i == at {
                line.push_str(" --");
            }
            line.push(' ');
            line.push_str(&llmlb::lock::shell_quoted(arg).to_string());
        }
        format!("put `--` before COMMAND: {line}")
    } else {
        return err;
    };
    err.insert(
        ContextKind::Suggested,
        ContextValue::StyledStrs(vec![tip.into()]),
    );
    err
}

/// Logs one warning naming every `LLMLB_*` variable in the environment that
/// llmlb does not know (a typo such as `LLMLB_PROT` otherwise goes
/// unnoticed), with the closest known name where one is a typo away.
pub(super) fn warn_unknown_env() {
    let unknown: Vec<String> = std::env::vars_os()
        .filter_map(|(name, _)| name.into_string().ok())
        .filter(|name| name.starts_with("LLMLB_") && !KNOWN_ENV.contains(&name.as_str()))
        .map(|name| match closest_known(&name) {
            Some(known) => format!("{name} (did you mean {known}?)"),
            None => name,
        })
        .collect();
    if unknown.is_empty() {
        return;
    }
    tracing::warn!(
        "ignoring unknown environment variable{} {}: llmlb reads LLMLB_LOCK_DIR, LLMLB_PORT, LLMLB_HOST and LLMLB_LOG_LEVEL",
        if unknown.len() == 1 { "" } else { "s" },
        unknown.join(", ")
    );
}

/// The known variable `name` is at most two edits from, if any.
fn closest_known(name: &str) -> Option<&'static str> {
    KNOWN_ENV
        .iter()
        .map(|known| (edit_distance(name, known), *known))
        .filter(|(d, _)| *d <= 2)
        .min()
        .map(|(_, known)| known)
}

/// Levenshtein distance (the names are short ASCII words).
fn edit_distance(a: &str, b: &str) -> usize {
    let b = b.as_bytes();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.bytes().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, &cb) in b.iter().enumerate() {
            let substitute = prev + usize::from(ca != cb);
            prev = row[j + 1];
            row[j + 1] = substitute.min(prev + 1).min(row[j] + 1);
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typos_find_their_variable_and_strangers_find_none() {
        assert_eq!(closest_known("LLMLB_PROT"), Some("LLMLB_PORT"));
        assert_eq!(closest_known("LLMLB_LOCKDIR"), Some("LLMLB_LOCK_DIR"));
        assert_eq!(closest_known("LLMLB_HOSTNAME"), None);
        assert_eq!(edit_distance("", "ab"), 2);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
    }

    #[test]
    fn the_subcommand_is_found_past_the_lock_dir_option() {
        let args = |words: &[&str]| words.iter().map(OsString::from).collect::<Vec<_>>();
        assert_eq!(
            subcommand(&args(&["--lock-dir", "serve", "status", "8000"])),
            Some((2, "status"))
        );
        assert_eq!(subcommand(&args(&["--lock-dir"])), None);
    }
}
