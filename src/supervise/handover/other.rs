//! Platforms without descriptor passing (Windows): nothing is offered, and a
//! request always finds no offer, so `serve --replace` takes its fallback.

use std::io;
use std::path::Path;
use std::time::Duration;

use super::{HandedSocket, HandoverError, OnReload, ReloadError, Requested, Successor};
use crate::lock::{LockDir, LockState, PortGuard};
use crate::supervise::LockHandle;

pub(super) struct Offer {
    never: std::convert::Infallible,
}

impl Offer {
    pub(super) fn start(
        _lock: &LockHandle<PortGuard>,
        _sockets: Vec<HandedSocket>,
        _on_drain: Box<dyn FnOnce(Successor) + Send>,
        _taking_over_from: Option<u32>,
    ) -> io::Result<Offer> {
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "handing a port over needs descriptor passing (SCM_RIGHTS), which Windows lacks",
        ))
    }

    pub(super) fn publish(&self) -> io::Result<()> {
        match self.never {}
    }

    pub(super) fn open(&self) {
        match self.never {}
    }

    pub(super) fn on_taken_back(&self, _f: Box<dyn Fn() + Send>) {
        match self.never {}
    }

    pub(super) fn path(&self) -> &Path {
        match self.never {}
    }

    pub(super) fn on_reload(&self, _f: OnReload) {
        match self.never {}
    }

    pub(super) fn under_way(&self) -> Option<u32> {
        match self.never {}
    }

    pub(super) fn cancel(&self, _successor: u32) -> bool {
        match self.never {}
    }

    pub(super) fn uncancel(&self) {
        match self.never {}
    }
}

#[derive(Debug)]
pub(super) struct Predecessor {
    never: std::convert::Infallible,
}

impl Predecessor {
    pub(super) fn pid(&self) -> u32 {
        match self.never {}
    }

    pub(super) fn drain(self, _timeout: Duration) -> io::Result<Draining> {
        match self.never {}
    }

    pub(super) fn is_gone(&self) -> bool {
        match self.never {}
    }
}

#[derive(Debug)]
pub(super) struct Draining {
    never: std::convert::Infallible,
}

impl Draining {
    pub(super) fn pid(&self) -> u32 {
        match self.never {}
    }

    pub(super) fn wait_exited(self) {
        match self.never {}
    }
}

pub(super) fn request(
    dir: &LockDir,
    port: u16,
    _timeout: Duration,
) -> Result<Requested, HandoverError> {
    Ok(match dir.probe(port)? {
        LockState::Free | LockState::Stale(_) => Requested::NotHeld,
        LockState::Held(holder) => Requested::NotOffered {
            holder: holder.map(Box::new),
            why: "cannot hand a port over on Windows (no descriptor passing)".to_owned(),
        },
    })
}

pub(super) fn request_reload(
    dir: &LockDir,
    port: u16,
    _timeout: Duration,
) -> Result<u32, ReloadError> {
    match dir.probe(port)? {
        LockState::Free | LockState::Stale(_) => Err(ReloadError::NotRunning {
            port,
            dir: crate::lock::shell_quoted(dir.path()).to_string(),
        }),
        LockState::Held(holder) => Err(ReloadError::NotOffered {
            port,
            holder: holder.map(|h| h.pid),
            why: "cannot reload on Windows (no descriptor passing to hand the port over)"
                .to_owned(),
        }),
    }
}
