//! In-process synchronisation primitives, swapped for loom's under
//! `--cfg loom` so the model checker runs the project's real code
//! (tokio-util's pattern).

#[cfg(loom)]
pub(crate) use loom::sync::{
    atomic::{AtomicBool, Ordering},
    Arc, Mutex, MutexGuard,
};

#[cfg(not(loom))]
pub(crate) use std::sync::{
    atomic::{AtomicBool, Ordering},
    Arc, Mutex, MutexGuard,
};
