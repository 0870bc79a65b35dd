//! The cost of the C boundary: the same acquire + release cycle through the
//! exported functions (called from Rust, as C would call them) beside the Rust
//! API, in the same group and run, on tmpfs (`/dev/shm`) when present.
//!
//! `c_abi` is what a C launcher pays with the path-taking call: the
//! `lock_dir` string is parsed and the dir checked on every acquire, the
//! result crosses `catch_unwind`, and the handle is boxed. `c_abi_dir` is the
//! same cycle through a dir handle (`llmlb_lock_dir_open` once, then
//! `llmlb_lock_dir_acquire`): no per-call dir work, the Rust API's shape.
//!
//! `floor_unlink` (open O_CREAT + flock + unlink + close: our release removes
//! the file, so every cycle creates an inode) and `floor` (open + flock +
//! close of a file that stays) run in the same group, so the ratio the README
//! quotes comes from one run on one file system.

// The floors deliberately bypass the library (flock through fs2 directly):
// clippy.toml bans lock calls outside src/lock/sys so that the product cannot
// sidestep the protocol, which is exactly what a floor measurement must do.
#![allow(clippy::disallowed_methods)]
// criterion_group! generates an undocumented `pub fn`.
#![allow(missing_docs)]

use std::ffi::CString;
use std::fs::{File, OpenOptions};
use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::ptr;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use fs2::FileExt;
use llmlb::lock::{acquire_or_reclaim, LockDir};
use llmlb_lock::{
    llmlb_lock_acquire, llmlb_lock_dir_acquire, llmlb_lock_dir_close, llmlb_lock_dir_open,
    llmlb_lock_release, LlmlbLock, LlmlbLockDir, LlmlbLockInfo, LlmlbStatus,
};

const PORT: u16 = 8000;

/// tmpfs when present (where absolute figures are taken), else the temp dir.
fn primary_fs() -> (&'static str, PathBuf) {
    let shm = Path::new("/dev/shm");
    if shm.is_dir() && tempfile::tempdir_in(shm).is_ok() {
        ("tmpfs", shm.to_path_buf())
    } else {
        ("tmp", std::env::temp_dir())
    }
}

fn open_rw_create(path: &Path) -> File {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .expect("open")
}

fn ffi_cycle(c: &mut Criterion) {
    let (fs, base) = primary_fs();
    let tmp = tempfile::Builder::new()
        .prefix("llmlb-bench-")
        .tempdir_in(&base)
        .expect("create a private bench dir");
    let mut group = c.benchmark_group("ffi_cycle");

    let rust_dir = LockDir::create(tmp.path().join("rust")).expect("lock dir");
    group.bench_function(BenchmarkId::new(fs, "rust"), |b| {
        b.iter(|| {
            let guard = acquire_or_reclaim(&rust_dir, PORT).expect("uncontended");
            guard.release().expect("release");
        });
    });

    let c_dir = tmp.path().join("c");
    LockDir::create(&c_dir).expect("lock dir");
    let c_dir = CString::new(c_dir.to_str().expect("UTF-8 temp path")).expect("no NUL");
    group.bench_function(BenchmarkId::new(fs, "c_abi"), |b| {
        b.iter(|| {
            let mut lock: *mut LlmlbLock = ptr::null_mut();
            let mut other = LlmlbLockInfo::default();
            // SAFETY: a NUL-terminated dir string and valid out pointers, as
            // the C contract requires; the handle is released right below.
            let status = unsafe { llmlb_lock_acquire(c_dir.as_ptr(), PORT, &mut lock, &mut other) };
            assert_eq!(status, LlmlbStatus::LLMLB_STATUS_OK);
            // SAFETY: a live handle from llmlb_lock_acquire, released once.
            let status = unsafe { llmlb_lock_release(lock) };
            assert_eq!(status, LlmlbStatus::LLMLB_STATUS_OK);
        });
    });

    let handle_dir = tmp.path().join("c_dir");
    let handle_dir = CString::new(handle_dir.to_str().expect("UTF-8 temp path")).expect("no NUL");
    let mut dir: *mut LlmlbLockDir = ptr::null_mut();
    // SAFETY: a NUL-terminated dir string and a valid out pointer.
    let status = unsafe { llmlb_lock_dir_open(handle_dir.as_ptr(), &mut dir) };
    assert_eq!(status, LlmlbStatus::LLMLB_STATUS_OK);
    group.bench_function(BenchmarkId::new(fs, "c_abi_dir"), |b| {
        b.iter(|| {
            let mut lock: *mut LlmlbLock = ptr::null_mut();
            let mut other = LlmlbLockInfo::default();
            // SAFETY: a live dir handle and valid out pointers; the lock is
            // released right below.
            let status = unsafe { llmlb_lock_dir_acquire(dir, PORT, &mut lock, &mut other) };
            assert_eq!(status, LlmlbStatus::LLMLB_STATUS_OK);
            // SAFETY: a live handle from llmlb_lock_dir_acquire, released once.
            let status = unsafe { llmlb_lock_release(lock) };
            assert_eq!(status, LlmlbStatus::LLMLB_STATUS_OK);
        });
    });
    // SAFETY: the live dir handle, closed once after its last use.
    unsafe { llmlb_lock_dir_close(dir) };

    let floor_dir = tmp.path().join("floor_unlink");
    LockDir::create(&floor_dir).expect("lock dir");
    let path = floor_dir.join("serve_8000.lock");
    group.bench_function(BenchmarkId::new(fs, "floor_unlink"), |b| {
        b.iter(|| {
            let file = open_rw_create(black_box(&path));
            file.try_lock_exclusive().expect("uncontended");
            std::fs::remove_file(&path).expect("unlink");
            drop(file);
        });
    });

    let floor_dir = tmp.path().join("floor");
    LockDir::create(&floor_dir).expect("lock dir");
    let path = floor_dir.join("serve_8000.lock");
    std::fs::write(&path, b"").expect("the floor's file stays");
    group.bench_function(BenchmarkId::new(fs, "floor"), |b| {
        b.iter(|| {
            let file = open_rw_create(black_box(&path));
            file.try_lock_exclusive().expect("uncontended");
            drop(file);
        });
    });
    group.finish();
}

criterion_group!(benches, ffi_cycle);
criterion_main!(benches);
