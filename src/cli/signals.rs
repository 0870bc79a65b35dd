//! The stop requests `serve` listens for, as an async stream, installed before
//! the lock is taken so a `stop` racing our start-up is handled (not
//! default-killed into a stale file): SIGINT/SIGTERM on Unix; on Windows
//! Ctrl-C, Ctrl-Break and the lock's stop channel (what `llmlb stop` sets).

#[cfg(windows)]
use llmlb::lock::StopRequest;
use llmlb::supervise::exec::ForwardSignal;

/// The stop signals this process listens for.
pub(crate) struct Signals {
    #[cfg(unix)]
    int: tokio::signal::unix::Signal,
    #[cfg(unix)]
    term: tokio::signal::unix::Signal,
    #[cfg(windows)]
    ctrl_c: tokio::signal::windows::CtrlC,
    #[cfg(windows)]
    ctrl_break: tokio::signal::windows::CtrlBreak,
    /// Fires once when the stop channel is set; `None` before
    /// [`watch`](Self::watch) and after it fired.
    #[cfg(windows)]
    stop: Option<tokio::sync::oneshot::Receiver<()>>,
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
        #[cfg(windows)]
        {
            Ok(Signals {
                ctrl_c: tokio::signal::windows::ctrl_c()?,
                ctrl_break: tokio::signal::windows::ctrl_break()?,
                stop: None,
            })
        }
    }

    /// Also listens to the lock's stop channel (Windows' `llmlb stop`), from
    /// a thread that blocks on it (detached: it ends with the process). A
    /// request made before this call is seen too: the event stays set.
    #[cfg(windows)]
    pub(crate) fn watch(&mut self, request: StopRequest) -> std::io::Result<()> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        std::thread::Builder::new()
            .name("llmlb-stop".to_owned())
            .spawn(move || {
                if request.wait(std::time::Duration::MAX) {
                    let _ = tx.send(());
                }
            })?;
        self.stop = Some(rx);
        Ok(())
    }

    /// Waits for the next SIGINT or SIGTERM; on Windows Ctrl-C (as SIGINT),
    /// Ctrl-Break or a stop request (as SIGTERM).
    pub(crate) async fn recv(&mut self) -> ForwardSignal {
        #[cfg(unix)]
        {
            tokio::select! {
                _ = self.int.recv() => ForwardSignal::Interrupt,
                _ = self.term.recv() => ForwardSignal::Terminate,
            }
        }
        #[cfg(windows)]
        {
            let stop = async {
                match &mut self.stop {
                    Some(rx) => {
                        let fired = rx.await.is_ok();
                        self.stop = None; // a completed receiver must not be polled again
                        if !fired {
                            std::future::pending::<()>().await;
                        }
                    }
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = self.ctrl_c.recv() => ForwardSignal::Interrupt,
                _ = self.ctrl_break.recv() => ForwardSignal::Terminate,
                () = stop => ForwardSignal::Terminate,
            }
        }
    }
}

/// `SIGINT` / `SIGTERM` (on Windows: Ctrl-C / a stop request), for logs.
pub(crate) fn name(sig: ForwardSignal) -> &'static str {
    match sig {
        ForwardSignal::Interrupt if cfg!(windows) => "Ctrl-C",
        ForwardSignal::Interrupt => "SIGINT",
        ForwardSignal::Kill => "SIGKILL",
        _ if cfg!(windows) => "a stop request",
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
