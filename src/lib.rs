//! llmlb: a per-port single-instance lock for servers.
//!
//! [`lock`] is the product: the protocol, its typestate, the lock info and
//! errors. The `llmlb` binary and the C ABI (`ffi/`) are thin shells over it,
//! so every launcher speaks exactly the same protocol.

pub mod lock;
mod sync;
