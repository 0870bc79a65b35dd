//! What the kernel says about a lock file, read from `/proc/locks` (Linux),
//! for tests that must check the lock without taking it.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// Whether an exclusive FLOCK is held on the inode `path` names. Only the
/// inode is compared: the PID in `/proc/locks` is whoever took the lock,
/// which after a handover is the predecessor even when only the successor
/// still holds the description.
///
/// `/proc/locks` is a seq_file that the kernel walks afresh, by line
/// number, at every `read`: a lock released between two reads shifts the
/// walk, and a held lock can be skipped (seen under load with parallel
/// tests; `read_to_string` starts with a 32-byte probe read, so even a
/// short file took two). So it is read with a large buffer (one walk, up
/// to a page of lines), and, as a skip can only hide a line, never invent
/// one, up to three times: any read that shows the lock counts.
pub fn flock_held(path: &Path) -> bool {
    let Ok(meta) = std::fs::metadata(path) else {
        return false;
    };
    let ino = meta.ino().to_string();
    (0..3).any(|_| listed(&ino))
}

fn listed(ino: &str) -> bool {
    let mut file = std::fs::File::open("/proc/locks").expect("open /proc/locks");
    let mut bytes = Vec::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = std::io::Read::read(&mut file, &mut buf).expect("read /proc/locks");
        if n == 0 {
            break;
        }
        bytes.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&bytes).lines().any(|line| {
        // "1: FLOCK  ADVISORY  WRITE 1234 fe:00:5678 0 EOF"; a waiter's line
        // has "->" after the number.
        let fields: Vec<&str> = line.split_whitespace().collect();
        fields.get(1) == Some(&"FLOCK")
            && fields.get(3) == Some(&"WRITE")
            && fields.get(5).and_then(|dev_ino| dev_ino.rsplit(':').next()) == Some(ino)
    })
}
