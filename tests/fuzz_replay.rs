//! Replays the committed fuzz corpus (`fuzz/corpus/lock_info`,
//! `fuzz/corpus/protocol`) through the very entry functions the libFuzzer
//! targets call, so stable CI exercises every seed and every crash input ever
//! added. The FFI corpus is replayed by `ffi/tests/fuzz_replay.rs`.

#[path = "../fuzz/entry/lock_info.rs"]
mod lock_info;
#[path = "../fuzz/entry/protocol.rs"]
mod protocol;

use std::path::PathBuf;

/// Every file of `fuzz/corpus/<target>`, sorted; the corpus must not be empty.
fn corpus(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut files: Vec<(PathBuf, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| {
            let path = entry.unwrap().path();
            let bytes = std::fs::read(&path).unwrap();
            (path, bytes)
        })
        .collect();
    files.sort();
    assert!(!files.is_empty(), "empty corpus {}", dir.display());
    files
}

/// Runs `entry` on each input, naming the file of the first failure.
fn replay(target: &str, entry: fn(&[u8])) {
    for (path, bytes) in corpus(target) {
        let outcome = std::panic::catch_unwind(|| entry(&bytes));
        assert!(
            outcome.is_ok(),
            "fuzz input {} fails; reproduce with `cargo +nightly fuzz run --fuzz-dir fuzz {target} {}`",
            path.display(),
            path.display()
        );
    }
}

#[test]
fn lock_info_corpus_replays() {
    replay("lock_info", lock_info::run);
}

#[test]
fn protocol_corpus_replays() {
    replay("protocol", protocol::run);
}

/// The seeds cover what the issue asks for: a crash, a reclaim and a
/// corruption each occur in some protocol seed.
#[test]
fn protocol_seeds_cover_crash_reclaim_corrupt() {
    use protocol::decode;
    let ops: Vec<String> = corpus("protocol")
        .iter()
        .flat_map(|(_, bytes)| decode(bytes))
        .map(|op| format!("{op:?}"))
        .collect();
    for kind in ["Crash", "Reclaim", "Corrupt", "Acquire", "Release", "Probe"] {
        assert!(
            ops.iter().any(|op| op.starts_with(kind)),
            "no {kind} in the protocol corpus"
        );
    }
}
