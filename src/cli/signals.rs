//! SIGINT/SIGTERM as an async stream, installed before the lock is taken so a
//! `stop` racing our start-up is handled (not default-killed into a stale file).

use llmlb::lock::process::ForwardSignal;

/// The stop signals this process listens for.
pub(crate) struct Signals {
    #[cfg(unix)]
    int: tokio::signal::unix::Signal,
    #[cfg(unix)]
    term: tokio::signal::unix::Signal,
}

impl Signals {
    /// Installs the handlers. Must run inside the tokio runtime.
    pub(crate) fn install() -> std::io::Result<Signals> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            Ok(Signals {
                int: signal(SignalKind::interrupt())?,
                term: signal(SignalKind::terminate())?,
            })
        }
        #[cfg(not(unix))]
        {
            Ok(Signals {})
        }
    }

    /// Waits for the next SIGINT or SIGTERM (Ctrl-C on Windows).
    pub(crate) async fn recv(&mut self) -> ForwardSignal {
        #[cfg(unix)]
        {
            tokio::select! {
                _ = self.int.recv() => ForwardSignal::Interrupt,
                _ = self.term.recv() => ForwardSignal::Terminate,
            }
        }
        #[cfg(not(unix))]
        {
            if tokio::signal::ctrl_c().await.is_err() {
                std::future::pending::<()>().await;
            }
            ForwardSignal::Interrupt
        }
    }
}

/// `SIGINT` / `SIGTERM`, for logs.
pub(crate) fn name(sig: ForwardSignal) -> &'static str {
    match sig {
        ForwardSignal::Interrupt => "SIGINT",
        ForwardSignal::Kill => "SIGKILL",
        _ => "SIGTERM",
    }
}

/// The exit code of a process that gave up because of `sig`: 128 + the
/// signal's number, as shells report it (130 for Ctrl-C).
pub(crate) fn exit_code(sig: ForwardSignal) -> i32 {
    match sig {
        ForwardSignal::Interrupt => 130,
        ForwardSignal::Kill => 137,
        _ => 143,
    }
}
