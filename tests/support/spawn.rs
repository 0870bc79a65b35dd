//! Starting a child process in a test, with one allowance for Wine.
//!
//! Under Wine, `CreateProcess` now and then fails with `ERROR_INTERNAL_ERROR`
//! (1359): Wine reports that when the new process dies while starting, before
//! it ran any of its own code (its preloader could not reserve the address
//! range it needs, or lost the race with a busy wineserver). Windows itself
//! does not fail a valid start that way, and nothing of the program under
//! test has run, so starting again tests the same thing. Any other error, and
//! a fourth 1359 in a row, is returned as it is.
#![allow(dead_code)] // each test binary uses a different subset

use std::io;
use std::process::{Child, Command};
use std::time::Duration;

/// `cmd.spawn()`, started again (up to 3 more times) after Wine's transient
/// `ERROR_INTERNAL_ERROR`; everywhere else exactly `cmd.spawn()`.
pub fn spawn(cmd: &mut Command) -> io::Result<Child> {
    const ERROR_INTERNAL_ERROR: i32 = 1359;
    let mut retries = 3;
    loop {
        match cmd.spawn() {
            Err(e)
                if cfg!(windows)
                    && e.raw_os_error() == Some(ERROR_INTERNAL_ERROR)
                    && retries > 0 =>
            {
                retries -= 1;
                eprintln!(
                    "spawn {:?}: {e}; starting it again (a Wine start-up flake)",
                    cmd.get_program()
                );
                std::thread::sleep(Duration::from_millis(100));
            }
            other => return other,
        }
    }
}
