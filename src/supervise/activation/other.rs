//! Platforms without the `LISTEN_FDS` protocol (Windows): nothing is ever
//! received.

use std::net::TcpListener;

use super::ActivationError;

/// Whether the platform has the protocol at all.
pub(super) const SUPPORTED: bool = false;

/// Never called where [`SUPPORTED`] is false.
pub(super) fn take_listener(_fd: i32) -> Result<(TcpListener, u16), ActivationError> {
    Err(ActivationError::NotTcpListener(
        "not supported on this platform",
    ))
}

/// Never a listener here: the C ABI's handover, its only caller, is Unix
/// only.
pub(super) fn copy_listener(_fd: i32) -> Result<(TcpListener, u16), ActivationError> {
    Err(ActivationError::NotTcpListener(
        "not supported on this platform",
    ))
}
