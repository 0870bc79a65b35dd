//! The holder's end of `llmlb stop`'s graceful request. Part of the lock:
//! the stop channel is made when the lock is taken, with the holding.

use std::time::Duration;

use super::sys;

/// A holder's end of `llmlb stop`'s graceful request, from
/// [`PortGuard::stop_request`](super::PortGuard::stop_request).
///
/// On Windows, which has no `SIGTERM`, every holder has a stop channel (a
/// named manual-reset event, made when the lock is taken and reachable only
/// by the same user): `stop` sets it, and the holder is expected to shut down
/// and release. On Unix `stop` sends `SIGTERM` instead; this handle then never
/// reports a request (handle `SIGTERM` as usual).
#[derive(Debug, Clone)]
pub struct StopRequest {
    channel: std::sync::Arc<sys::StopChannel>,
}

impl StopRequest {
    pub(crate) fn new(channel: std::sync::Arc<sys::StopChannel>) -> StopRequest {
        StopRequest { channel }
    }

    /// Waits up to `timeout` for a stop request: true once one was made (it
    /// stays made). `Duration::MAX` waits forever. On Unix always false after
    /// sleeping for `timeout`, cut short by any signal handler that runs.
    pub fn wait(&self, timeout: Duration) -> bool {
        self.channel.wait(timeout)
    }

    /// Whether a stop request was made, without waiting.
    pub fn is_requested(&self) -> bool {
        self.channel.wait(Duration::ZERO)
    }
}
