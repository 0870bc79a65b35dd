//! The programs that run `llmlb serve [ARGS] -- CMD`'s life, for suites that
//! run each exec-mode case against all of them with the same expectations:
//! the CLI, and the C and Python launchers, thin shells over the C ABI's
//! `llmlb_serve_exec` (issue 29 §4). Include with
//! `#[path = "support/servers.rs"] mod servers;` beside `mod cli_support;`
//! and `#[path = "../ffi/tests/support/mod.rs"] mod ffi_support;`.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

use crate::cli_support::Env;
use crate::ffi_support;

/// Who runs `serve ARGS -- CMD`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Server {
    /// `llmlb serve ARGS -- CMD`.
    Cli,
    /// `ffi/examples/launcher.c ARGS -- CMD`, built against the static
    /// library this `cargo test` built.
    C,
    /// `python3 ffi/python/llmlb_lock/launcher.py ARGS -- CMD`, loading the
    /// shared library this `cargo test` built.
    Python,
}

impl Server {
    /// Every server, the CLI first.
    pub const ALL: [Server; 3] = [Server::Cli, Server::C, Server::Python];

    /// The command line of `serve ARGS` (`ARGS` as `llmlb serve` takes them,
    /// ending with `-- CMD...`) for this server, with `env`'s settings.
    pub fn cmd(self, env: &Env, args: &[&str]) -> Command {
        match self {
            Server::Cli => {
                let mut all = vec!["serve"];
                all.extend_from_slice(args);
                env.cmd(&all)
            }
            Server::C => {
                let mut cmd = env.program_cmd(c_launcher().as_os_str(), args);
                cmd.env("LLMLB_LOCK_LIB", ffi_support::shared_lib());
                cmd
            }
            Server::Python => {
                let script = ffi_support::repo_root().join("ffi/python/llmlb_lock/launcher.py");
                let mut cmd = env.program_cmd(&OsString::from(ffi_support::python3()), &[]);
                cmd.arg(script)
                    .args(args)
                    .env("LLMLB_LOCK_LIB", ffi_support::shared_lib());
                cmd
            }
        }
    }
}

/// The C launcher, built once per test binary from the current source into
/// cargo's target dir beside the library (no temp dir left behind; a
/// concurrent test binary's build is renamed over it, the same program).
fn c_launcher() -> &'static PathBuf {
    static EXE: OnceLock<PathBuf> = OnceLock::new();
    EXE.get_or_init(|| {
        let dir = ffi_support::lib_dir();
        let building = dir.join(format!("test-launcher.{}", std::process::id()));
        let cc = ffi_support::c_compiler();
        ffi_support::compile_c(
            &cc,
            &[ffi_support::repo_root().join("ffi/examples/launcher.c")],
            &building,
            ffi_support::Link::Static,
            false,
        );
        let exe = dir.join("test-launcher");
        std::fs::rename(&building, &exe).expect("rename the built launcher");
        exe
    })
}
