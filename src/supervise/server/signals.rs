//! The signals `serve` listens for, as an async stream, installed before
//! the lock is taken so a signal racing our start-up is handled (not
//! default-killed into a stale file). Unix: SIGINT/SIGTERM ask for a stop;
//! SIGHUP, SIGUSR1, SIGQUIT and SIGWINCH are exec mode's to forward to its
//! command (HTTP mode ignores all but SIGQUIT, a graceful stop there, as in
//! nginx); SIGUSR2 asks the server to reload (start its successor). Windows:
//! Ctrl-C, Ctrl-Break and the lock's stop channel (what `llmlb stop` sets).

#[cfg(windows)]
use crate::lock::StopRequest;
use crate::supervise::exec::ForwardSignal;
use crate::supervise::succession::Handovers;

/// What a signal asks of `serve`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(windows, allow(dead_code, reason = "Windows has only stop requests"))]
pub(crate) enum Received {
    /// Stop: SIGINT or SIGTERM (Windows: Ctrl-C, Ctrl-Break, a stop request).
    Stop(ForwardSignal),
    /// SIGHUP, SIGUSR1, SIGQUIT or SIGWINCH: exec mode's command decides what
    /// it means (reload, reopen logs…), so exec mode forwards it.
    Pass(ForwardSignal),
    /// SIGUSR2: llmlb's own reload (see [`Signals::on_reload`]).
    Reload,
}

/// The signals this process listens for.
pub(crate) struct Signals {
    #[cfg(unix)]
    int: tokio::signal::unix::Signal,
    #[cfg(unix)]
    term: tokio::signal::unix::Signal,
    #[cfg(unix)]
    hup: tokio::signal::unix::Signal,
    #[cfg(unix)]
    usr1: tokio::signal::unix::Signal,
    #[cfg(unix)]
    usr2: tokio::signal::unix::Signal,
    #[cfg(unix)]
    quit: tokio::signal::unix::Signal,
    #[cfg(unix)]
    winch: tokio::signal::unix::Signal,
    #[cfg(windows)]
    ctrl_c: tokio::signal::windows::CtrlC,
    #[cfg(windows)]
    ctrl_break: tokio::signal::windows::CtrlBreak,
    /// Fires once when the stop channel is set; `None` before
    /// [`watch`](Self::watch) and after it fired.
    #[cfg(windows)]
    stop: Option<tokio::sync::oneshot::Receiver<()>>,
    /// What SIGUSR2 reloads, once the server serves.
    reload: Option<std::sync::Arc<Handovers>>,
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
                hup: signal(SignalKind::hangup())?,
                usr1: signal(SignalKind::user_defined1())?,
                usr2: signal(SignalKind::user_defined2())?,
                quit: signal(SignalKind::quit())?,
                winch: signal(SignalKind::window_change())?,
                reload: None,
            })
        }
        #[cfg(windows)]
        {
            Ok(Signals {
                ctrl_c: tokio::signal::windows::ctrl_c()?,
                ctrl_break: tokio::signal::windows::ctrl_break()?,
                stop: None,
                reload: None,
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

    /// From now on SIGUSR2 reloads the server of `handovers` (in the
    /// background); before, it is logged and ignored.
    pub(crate) fn on_reload(&mut self, handovers: &std::sync::Arc<Handovers>) {
        self.reload = Some(std::sync::Arc::clone(handovers));
    }

    /// Acts on SIGUSR2: a reload in the background, or a log line if
    /// there is nothing to reload yet.
    pub(crate) fn reload(&self) {
        match &self.reload {
            Some(handovers) => {
                tracing::info!(
                    "received SIGUSR2; reloading: starting a successor to take the port over"
                );
                handovers.reload_in_background();
            }
            None => tracing::info!(
                "received SIGUSR2; ignored: there is no running server to reload yet"
            ),
        }
    }

    /// Waits for the next stop request, for everything but exec mode's
    /// running command: SIGINT, SIGTERM, and SIGQUIT (a graceful stop, as
    /// nginx takes it); on Windows Ctrl-C (as SIGINT), Ctrl-Break or a stop
    /// request (as SIGTERM). SIGUSR2 reloads (see
    /// [`on_reload`](Self::on_reload)); SIGHUP, SIGUSR1 and SIGWINCH are
    /// logged and ignored: there is nothing here to reopen.
    pub(crate) async fn recv(&mut self) -> ForwardSignal {
        loop {
            match self.next().await {
                Received::Stop(sig) | Received::Pass(sig @ ForwardSignal::Quit) => return sig,
                Received::Pass(ForwardSignal::WindowChange) => {} // every resize: not worth a line
                Received::Pass(sig) => tracing::info!(
                    "received {}; ignored (only exec mode forwards it, to its command)",
                    name(sig)
                ),
                Received::Reload => self.reload(),
            }
        }
    }

    /// Waits for the next signal of any kind (see [`Received`]).
    pub(crate) async fn next(&mut self) -> Received {
        #[cfg(unix)]
        {
            tokio::select! {
                _ = self.int.recv() => Received::Stop(ForwardSignal::Interrupt),
                _ = self.term.recv() => Received::Stop(ForwardSignal::Terminate),
                _ = self.hup.recv() => Received::Pass(ForwardSignal::Hangup),
                _ = self.usr1.recv() => Received::Pass(ForwardSignal::User1),
                _ = self.quit.recv() => Received::Pass(ForwardSignal::Quit),
                _ = self.winch.recv() => Received::Pass(ForwardSignal::WindowChange),
                _ = self.usr2.recv() => Received::Reload,
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
                _ = self.ctrl_c.recv() => Received::Stop(ForwardSignal::Interrupt),
                _ = self.ctrl_break.recv() => Received::Stop(ForwardSignal::Terminate),
                () = stop => Received::Stop(ForwardSignal::Terminate),
            }
        }
    }
}

/// The signal's name for logs: `SIGINT`, `SIGHUP`…; on Windows `Ctrl-C`
/// and "a stop request".
pub(crate) fn name(sig: ForwardSignal) -> &'static str {
    match sig {
        ForwardSignal::Interrupt if cfg!(windows) => "Ctrl-C",
        ForwardSignal::Interrupt => "SIGINT",
        ForwardSignal::Kill => "SIGKILL",
        ForwardSignal::Hangup => "SIGHUP",
        ForwardSignal::User1 => "SIGUSR1",
        ForwardSignal::Quit => "SIGQUIT",
        ForwardSignal::WindowChange => "SIGWINCH",
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
        ForwardSignal::Hangup => 129,
        ForwardSignal::Quit => 131,
        ForwardSignal::User1 => 138,
        ForwardSignal::WindowChange => 156,
        _ => 143,
    }
}
