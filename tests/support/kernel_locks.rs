//! What the kernel says about a lock file, read from `/proc/locks` (Linux),
//! for tests that must check the lock without taking it.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// Whether an exclusive FLOCK is held on the inode `path` names. Only the
/// inode is compared: the PID in `/proc/locks` is whoever took the lock,
/// which after a handover is the predecessor even when only the successor
/// still holds the description.
pub fn flock_held(path: &Path) -> bool {
    let Ok(meta) = std::fs::metadata(path) else {
        return false;
    };
    let ino = meta.ino().to_string();
    let locks = std::fs::read_to_string("/proc/locks").expect("read /proc/locks");
    locks.lines().any(|line| {
        // "1: FLOCK  ADVISORY  WRITE 1234 fe:00:5678 0 EOF"; a waiter's line
        // has "->" after the number.
        let fields: Vec<&str> = line.split_whitespace().collect();
        fields.get(1) == Some(&"FLOCK")
            && fields.get(3) == Some(&"WRITE")
            && fields.get(5).and_then(|dev_ino| dev_ino.rsplit(':').next()) == Some(ino.as_str())
    })
}
