//! Replays the committed `fuzz/corpus/ffi` inputs through the entry function
//! of the `ffi` fuzz target (the same code libFuzzer runs), so stable CI
//! exercises every seed and every crash input ever added.
#![cfg(unix)]

#[path = "../../fuzz/entry/ffi.rs"]
mod ffi_entry;

use std::path::PathBuf;

#[test]
fn ffi_corpus_replays() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/ffi");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "empty corpus {}", dir.display());
    for path in files {
        let bytes = std::fs::read(&path).unwrap();
        let outcome = std::panic::catch_unwind(|| ffi_entry::run(&bytes));
        assert!(
            outcome.is_ok(),
            "fuzz input {} fails; reproduce with `cargo +nightly fuzz run --fuzz-dir fuzz ffi {}`",
            path.display(),
            path.display()
        );
    }
    // The entry points NULL lock dirs at a per-process default dir through
    // LLMLB_LOCK_DIR; every run must remove it again.
    let default = std::env::var_os("LLMLB_LOCK_DIR").expect("the entry sets LLMLB_LOCK_DIR");
    assert!(
        !std::path::Path::new(&default).exists(),
        "the ffi fuzz entry left its default lock dir {} behind",
        default.to_string_lossy()
    );
}
