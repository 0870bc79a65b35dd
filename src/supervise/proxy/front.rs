//! The proxy in front of a command (`serve --proxy`) over the server's
//! life: started once the command is ready (a successor's once its
//! replace commits), stopped when the server stops serving, drained once
//! the command has ended.

use std::io;
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use super::{backend, DrainReport, Proxy, ProxyOptions};

/// How long stopping waits, at most, for what the proxy accepted to reach
/// the command (see [`Front::stop_accepting`]).
const SETTLE: Duration = Duration::from_secs(1);

/// The proxy while it accepts, and whether it may (still) start.
#[derive(Default)]
struct Accepting {
    proxy: Option<Proxy>,
    /// Stopped: no starter starts it (again).
    stopped: bool,
}

/// A command's proxy: llmlb's listening socket on the public port, the
/// command's private port, and the [`Proxy`] once it accepts.
pub struct Front {
    /// Our copy of the public listening socket (the server keeps others
    /// for a successor).
    listener: TcpListener,
    backend_port: u16,
    options: ProxyOptions,
    runtime: tokio::runtime::Handle,
    /// The proxy while it accepts; shared with a starter run on another
    /// thread (a replace's commit).
    accepting: Arc<Mutex<Accepting>>,
    /// The proxy once it stopped accepting, until its drain.
    stopped: Option<Proxy>,
}

impl Front {
    /// A front for `listener` (copied) and the command on 127.0.0.1:
    /// `backend_port`; it accepts nothing until [`start`](Self::start).
    /// Must be called inside a tokio runtime, whose tasks forward.
    ///
    /// # Errors
    /// No runtime is current, or the socket cannot be copied.
    pub fn new(
        listener: &TcpListener,
        backend_port: u16,
        options: ProxyOptions,
    ) -> io::Result<Front> {
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|_| io::Error::other("the proxy must be made inside a tokio runtime"))?;
        Ok(Front {
            listener: listener.try_clone()?,
            backend_port,
            options,
            runtime,
            accepting: Arc::new(Mutex::new(Accepting::default())),
            stopped: None,
        })
    }

    /// Starts accepting now.
    ///
    /// # Errors
    /// The socket cannot be copied or registered with the runtime.
    pub fn start(&self) -> io::Result<()> {
        self.starter()?()
    }

    /// What starts accepting, to run later from any thread (a replace's
    /// commit: `Commit::before_drain`); a front stopped meanwhile never
    /// starts.
    ///
    /// # Errors
    /// The socket cannot be copied.
    pub fn starter(&self) -> io::Result<impl FnOnce() -> io::Result<()> + Send + 'static> {
        let listener = self.listener.try_clone()?;
        let (runtime, accepting) = (self.runtime.clone(), Arc::clone(&self.accepting));
        let (to, options) = (backend::address(self.backend_port), self.options.clone());
        Ok(move || {
            let mut slot = accepting.lock().unwrap_or_else(|p| p.into_inner());
            if slot.stopped || slot.proxy.is_some() {
                return Ok(());
            }
            let _entered = runtime.enter();
            slot.proxy = Some(Proxy::start(listener, to, options)?);
            tracing::info!("accepting, forwarding to {to}");
            Ok(())
        })
    }

    /// Stops accepting (what was accepted is still forwarded) and returns
    /// once the command has accepted every connection the proxy made to it,
    /// bounded: a command told to stop closes its listener, and the kernel
    /// resets what is still queued there, each a client's request. Nothing
    /// to do if it never accepted or already stopped; a starter run after
    /// this does not start it again.
    pub async fn stop_accepting(&mut self) {
        let taken = {
            let mut slot = self.accepting.lock().unwrap_or_else(|p| p.into_inner());
            slot.stopped = true;
            slot.proxy.take()
        };
        let Some(mut proxy) = taken else { return };
        let deadline = Instant::now() + SETTLE;
        proxy.stop_accepting_and_settle(SETTLE).await;
        while backend::accept_queue(self.backend_port).is_some_and(|queued| queued > 0)
            && Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        self.stopped = Some(proxy);
    }

    /// Once the command has ended: waits for what the proxy still forwards
    /// to close, up to `timeout`, then cuts the rest. `None` if it never
    /// accepted.
    pub async fn drain(&mut self, timeout: Duration) -> Option<DrainReport> {
        self.stop_accepting().await;
        let proxy = self.stopped.take()?;
        Some(proxy.drain(timeout).await)
    }
}
