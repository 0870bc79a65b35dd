//! Who listens on a TCP port: the lock says who *holds* a port, this says
//! whether anything actually *accepts* connections on it, and whether that is
//! the holder's process tree or another program squatting the port.
//!
//! Read-only and unprivileged: it never connects on Linux (it reads the
//! kernel's socket tables), and elsewhere it connects only to the loopback
//! addresses with a short timeout, closing at once.
//!
//! One submodule per platform, each with the same two functions:
//! - Linux: `/proc/net/tcp{,6}` (sockets in state LISTEN on the port) matched
//!   to processes through their `/proc/<pid>/fd` links (`socket:[inode]`);
//! - Windows: the owning PIDs from the TCP listener tables
//!   (`GetExtendedTcpTable`), names and the tree from a process snapshot;
//! - elsewhere (macOS): a connect probe, which tells whether something
//!   accepts but not who.

use std::io;

#[cfg(target_os = "linux")]
mod linux;
#[cfg(target_os = "linux")]
use linux as imp;
#[cfg(windows)]
mod windows;
#[cfg(windows)]
use windows as imp;
// The connect probe: the whole answer where no socket table names owners.
#[cfg(not(any(target_os = "linux", windows)))]
mod probe;
#[cfg(not(any(target_os = "linux", windows)))]
use probe as imp;
// The words serve, stop, reload and status print for a listener.
#[cfg_attr(any(not(feature = "server"), loom), allow(dead_code))]
pub(crate) mod words;

/// A process found listening on a TCP port.
///
/// `pid` and `name` are `None` when the socket is there but its owner cannot
/// be seen: another user's process without root on Linux, or a platform where
/// only a connect probe is available (macOS), or a Windows listener table
/// that names no owner (Wine's).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listener {
    /// The listening process's PID, where it is visible.
    pub pid: Option<u32>,
    /// Its short command name (`/proc/<pid>/comm` on Linux, the image name on
    /// Windows), where it is visible. Text from another process: escape it
    /// before printing it to a terminal.
    pub name: Option<String>,
}

/// Who listens on TCP `port` (any local address, IPv4 or IPv6) now;
/// `Ok(None)` if nobody.
///
/// When several processes share the listening socket (a pre-fork server's
/// master and workers), the lowest PID is reported, which is usually the one
/// that opened it.
///
/// # Errors
///
/// The socket tables cannot be read (no `/proc` on Linux; the IP helper
/// failing on Windows). A process vanishing or refusing to show its
/// descriptors during the scan is not an error.
pub fn port_listener(port: u16) -> io::Result<Option<Listener>> {
    imp::port_listener(port)
}

/// The PID, as this process numbers it, of the process numbered `pid` in
/// the PID namespace `pid_ns` (a lock record's `identity.pid_ns`,
/// `"<st_dev>:<st_ino>"` of its `/proc/<pid>/ns/pid`): how a holder in a
/// container (whose recorded PID is the container's) is found from the
/// host, for [`tree_listens`].
///
/// Linux only, and only when `pid_ns` is a namespace this process can see
/// into (its own or one nested in it); `None` otherwise, and on other
/// platforms, which have no PID namespaces.
pub fn pid_from_namespace(pid_ns: &str, pid: u32) -> Option<u32> {
    #[cfg(target_os = "linux")]
    return linux::pid_from_namespace(pid_ns, pid);
    #[cfg(not(target_os = "linux"))]
    {
        let _ = (pid_ns, pid);
        None
    }
}

/// Whether `root` or one of its descendants listens on TCP `port` now.
///
/// `false` when `root` is gone. On platforms with only a connect probe
/// (macOS) the tree cannot be told apart from another program: there this is
/// "something accepts on the port" (its caller holds the port's lock, so a
/// listener is most likely its own).
///
/// # Errors
///
/// As [`port_listener`].
pub fn tree_listens(port: u16, root: u32) -> io::Result<bool> {
    imp::tree_listens(port, root)
}

/// A listening TCP socket of a process tree (see [`tree_listening`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TreeSocket {
    /// The process that has it open.
    pub pid: u32,
    /// Its short command name (`/proc/<pid>/comm`). Text from another
    /// process: escape it before printing it to a terminal.
    pub name: Option<String>,
    /// The local port it listens on.
    pub port: u16,
}

/// Every TCP port `root` or one of its descendants listens on now, by port
/// then PID (a socket shared by several processes of the tree is listed once
/// per process); empty when `root` is gone. Linux only: elsewhere always
/// empty (the connect probe cannot tell whose a port is).
///
/// # Errors
///
/// As [`port_listener`].
pub fn tree_listening(root: u32) -> io::Result<Vec<TreeSocket>> {
    #[cfg(target_os = "linux")]
    return linux::tree_listening(root);
    #[cfg(not(target_os = "linux"))]
    {
        let _ = root;
        Ok(Vec::new())
    }
}
