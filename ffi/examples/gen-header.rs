//! Regenerates `include/llmlb_lock.h` from `ffi/src/lib.rs` with cbindgen:
//!
//! ```text
//! cargo run -p llmlb-lock-ffi --example gen-header
//! ```
//!
//! `ffi/tests/header.rs` includes this file to check the committed header.

use std::path::PathBuf;

/// `ffi/`.
pub fn crate_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The committed header.
pub fn header_path() -> PathBuf {
    crate_dir().join("../include/llmlb_lock.h")
}

/// The header as cbindgen generates it now.
pub fn generate_header() -> String {
    let dir = crate_dir();
    let config =
        cbindgen::Config::from_file(dir.join("cbindgen.toml")).expect("ffi/cbindgen.toml parses");
    let bindings = cbindgen::Builder::new()
        .with_config(config)
        .with_src(dir.join("src/lib.rs"))
        .generate()
        .expect("cbindgen generates the header");
    let mut out = Vec::new();
    bindings.write(&mut out);
    String::from_utf8(out).expect("the header is UTF-8")
}

#[allow(dead_code)] // unused when included by the header test
fn main() {
    let path = header_path();
    std::fs::write(&path, generate_header()).expect("write include/llmlb_lock.h");
    println!("wrote {}", path.display());
}
