//! Fuzz entry `lock_info`: arbitrary bytes as a lock file's content.
//!
//! Whatever the bytes, classification never panics; content that parses is
//! internally consistent, round-trips through `to_bytes()`, and shows up in
//! messages without raw control characters. Shared by the
//! libFuzzer target and the stable corpus replay (`tests/fuzz_replay.rs`).

use llmlb::lock::{LockError, LockInfo, MAX_INFO_LEN};
use llmlb::supervise::StopError;

/// Classifies `data` as a lock file's content and checks what parses.
pub fn run(data: &[u8]) {
    // A port to test `parse_for_port` with even when nothing parses.
    let probe_port = match data {
        [a, b, ..] => u16::from_le_bytes([*a, *b]),
        _ => 8000,
    };
    let for_port = LockInfo::parse_for_port(data, probe_port);
    let Some(info) = LockInfo::parse(data) else {
        assert_eq!(for_port, None, "parse_for_port accepted what parse refused");
        return;
    };
    assert!(
        data.len() <= MAX_INFO_LEN,
        "oversized content ({} bytes) was accepted",
        data.len()
    );
    // The port filter keeps exactly the info naming that port.
    assert_eq!(for_port.is_some(), info.port == probe_port);
    assert_eq!(
        LockInfo::parse_for_port(data, info.port).as_ref(),
        Some(&info)
    );
    assert_eq!(
        LockInfo::parse_for_port(data, info.port.wrapping_add(1)),
        None,
        "info for port {} accepted for another port",
        info.port
    );

    // What we write is one line of compact JSON ending in a newline, and
    // reads back as the same info.
    let bytes = info.to_bytes();
    assert_eq!(bytes.last(), Some(&b'\n'));
    assert_eq!(
        bytes.iter().filter(|&&b| b == b'\n').count(),
        1,
        "to_bytes must be a single line: {:?}",
        String::from_utf8_lossy(&bytes)
    );
    if bytes.len() <= MAX_INFO_LEN {
        assert_eq!(
            LockInfo::parse(&bytes).as_ref(),
            Some(&info),
            "round trip changed the info; written {:?}",
            String::from_utf8_lossy(&bytes)
        );
        // Writing what we read is a fixed point.
        assert_eq!(info.to_bytes(), bytes);
    }
    // Display helpers never panic on anything that parsed.
    let _ = info.started_at_display();

    // Messages that show a holder's info (its host name, read from the
    // file) stay one line without raw control characters: a hostile file
    // cannot forge a line or colours on the reader's terminal.
    let path = std::path::PathBuf::from("/locks/serve_8000.lock");
    let messages = [
        LockError::AlreadyRunning {
            port: info.port,
            path: path.clone(),
            holder: Some(Box::new(info.clone())),
        }
        .to_string(),
        StopError::NotVerified {
            port: info.port,
            pid: info.pid,
            check: info.check_identity(),
            path,
        }
        .to_string(),
    ];
    for message in messages {
        assert!(
            !message.chars().any(char::is_control),
            "control characters from the lock file reach a message: {message:?}"
        );
    }
}
