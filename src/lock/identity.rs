//! [`ProcessIdentity`]: a process named so that PID reuse cannot fool a
//! reader. A type of its own below both the lock info that records it and
//! the platform code (`sys`) that reads it, so neither reaches into the other.

use serde::{Deserialize, Serialize};

/// Identity of a process that survives PID reuse: on Linux, its start time in
/// clock ticks since boot (`/proc/<pid>/stat` field 22) plus the boot id,
/// and, for a lock's holder, its PID namespace.
///
/// Two identities with both parts present and equal name the same process; a
/// reused PID has a different start time, and a reboot a different boot id.
/// A PID means something only in its own PID namespace: a holder that
/// recorded another namespace than the reader's is never matched by number
/// ([`IdentityCheck::OtherPidNamespace`](super::IdentityCheck::OtherPidNamespace)).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ProcessIdentity {
    /// `/proc/sys/kernel/random/boot_id` on Linux, `kern.boottime` on macOS;
    /// none on Windows, whose start time is absolute.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_id: Option<String>,
    /// Start time: clock ticks after boot on Linux, microseconds since the
    /// epoch on macOS, the creation `FILETIME` (100 ns units since 1601) on
    /// Windows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_ticks: Option<u64>,
    /// The PID namespace the PID is numbered in, as `"<st_dev>:<st_ino>"` of
    /// `/proc/self/ns/pid` (Linux; recorded by a lock's holder for itself).
    /// Absent in files written before it existed: those are judged as before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid_ns: Option<String>,
}

impl ProcessIdentity {
    /// Whether `self` and `other` name the same process: boot marker and
    /// start time equal (the namespace is judged separately, before any
    /// number is looked up).
    pub(crate) fn same_process(&self, other: &ProcessIdentity) -> bool {
        self.boot_id == other.boot_id && self.start_ticks == other.start_ticks
    }

    /// Both parts present, where the platform has both: Windows' creation
    /// time is absolute, so it needs no boot marker.
    pub(crate) fn is_complete(&self) -> bool {
        self.start_ticks.is_some() && (self.boot_id.is_some() || cfg!(windows))
    }
}
