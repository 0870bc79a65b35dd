//! `serve`'s log lines: on stderr, the level from `LLMLB_LOG_LEVEL`, else
//! `RUST_LOG`, else info; the same for the CLI and the C ABI's launchers.

/// The log filter a user meant by `spec` (`LLMLB_LOG_LEVEL`, `RUST_LOG`), or
/// `None`. EnvFilter takes a bare word that is not a level (`verbose`,
/// `warnings`) for a target name and then shows nothing of ours, the
/// stale-reclaim warning included; so a bare word must be a level (`warn`,
/// `DEBUG`, `off`, `0`-`5`) or this crate's target (`llmlb`, `llmlb::…`).
/// `target=level` directives are left to EnvFilter's own parser.
fn log_filter(spec: &str) -> Option<tracing_subscriber::EnvFilter> {
    use tracing::level_filters::LevelFilter;
    let bare_words_mean_something = spec
        .split(',')
        .map(str::trim)
        .filter(|d| !d.is_empty())
        .all(|d| {
            d.contains(['=', '['])
                || d.parse::<LevelFilter>().is_ok()
                || d == "llmlb"
                || d.starts_with("llmlb::")
        });
    if !bare_words_mean_something {
        return None;
    }
    tracing_subscriber::EnvFilter::try_new(spec).ok()
}

/// Logs to stderr from now on, as `llmlb serve` does: level from
/// `LLMLB_LOG_LEVEL`, else `RUST_LOG`, else info; a value that is not a log
/// filter gets one warning line and info. Colour only on a terminal without
/// `NO_COLOR`. A process that already has a global `tracing` subscriber
/// keeps it (this is then a no-op): the application's logging wins.
pub fn init_logging() {
    use tracing_subscriber::EnvFilter;
    let spec = ["LLMLB_LOG_LEVEL", "RUST_LOG"].iter().find_map(|var| {
        let value = std::env::var(var).ok().filter(|v| !v.trim().is_empty())?;
        Some((*var, value))
    });
    let (filter, bad) = match spec {
        Some((var, spec)) => match log_filter(&spec) {
            Some(filter) => (filter, None),
            None => (EnvFilter::new("info"), Some((var, spec))),
        },
        None => (EnvFilter::new("info"), None),
    };
    use std::io::IsTerminal as _;
    let color = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let installed = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(color)
        .with_env_filter(filter)
        .with_target(false)
        .try_init();
    if installed.is_err() {
        return;
    }
    if let Some((var, spec)) = bad {
        tracing::warn!(
            "ignoring invalid {var} {spec:?} (give error, warn, info, debug, trace or off, or TARGET=LEVEL); using info"
        );
    }
}
