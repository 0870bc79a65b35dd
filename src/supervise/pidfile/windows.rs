//! No pidfiles on Windows: its service manager tracks processes itself, and
//! nothing there reads one. Same signatures as `unix.rs`; the first call
//! reports `Unsupported`, which `Pidfile::write` turns into one clear line.

use std::ffi::OsStr;
use std::io;
use std::path::Path;

/// Never constructed: [`open_dir`] always fails.
#[derive(Debug)]
pub(super) enum Dir {}

fn unsupported() -> io::Error {
    io::Error::new(
        io::ErrorKind::Unsupported,
        "pidfiles are not supported on this platform",
    )
}

pub(super) fn open_dir(_: &Path) -> io::Result<Dir> {
    Err(unsupported())
}

pub(super) fn others_can_write(dir: &Dir) -> io::Result<bool> {
    match *dir {}
}

pub(super) fn is_symlink(dir: &Dir, _: &OsStr) -> io::Result<bool> {
    match *dir {}
}

pub(super) fn write_replacing(dir: &Dir, _: &OsStr, _: &[u8], _: u32) -> io::Result<()> {
    match *dir {}
}

pub(super) fn read_small(dir: &Dir, _: &OsStr) -> io::Result<Option<Vec<u8>>> {
    match *dir {}
}

pub(super) fn runs_since_written(dir: &Dir, _: &OsStr, _: u32) -> io::Result<bool> {
    match *dir {}
}

pub(super) fn unlink(dir: &Dir, _: &OsStr) -> io::Result<()> {
    match *dir {}
}
