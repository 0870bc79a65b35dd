//! The `llmlb` command line: `serve`, `stop`, `status`, `completions`.
//!
//! A thin shell over [`llmlb::lock`]: it parses, calls the library and prints
//! (the code is [`llmlb::cli`], built with the default `cli` feature).
//! Every path out of `main` drops the lock guard first (no `process::exit`
//! while a lock is held), so a failing command never leaves a stale file.

#[cfg(not(loom))]
fn main() {
    let code = llmlb::cli::run();
    // stdout is line-buffered; flush what a command printed without a newline.
    use std::io::Write as _;
    let _ = std::io::stdout().flush();
    std::process::exit(code);
}

/// Under `--cfg loom` only the library is model-checked; the server's tokio
/// has no networking in that configuration, so the CLI is not built.
#[cfg(loom)]
fn main() {
    eprintln!("Error: this llmlb was built with --cfg loom for model checking; rebuild without it");
    std::process::exit(2);
}
