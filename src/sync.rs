//! In-process synchronisation primitives, swapped for loom's under
//! `--cfg loom` so the model checker runs the project's real code
//! (tokio-util's pattern).

#[cfg(loom)]
pub(crate) use loom::sync::{Arc, Condvar, Mutex, MutexGuard};

#[cfg(not(loom))]
pub(crate) use std::sync::{Arc, Condvar, Mutex, MutexGuard};
