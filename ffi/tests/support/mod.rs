//! Shared by the C, Python and interop tests (the root package's
//! `tests/interop_ffi.rs` includes this file by path): find the built
//! library, find a C compiler and Python, compile C against the header.

#![allow(dead_code)] // each test binary uses a different subset

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

/// The repository root.
pub fn repo_root() -> PathBuf {
    // CARGO_MANIFEST_DIR is `ffi/` for the ffi tests and the root for the
    // root package's tests; the header is the landmark for both.
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    for dir in manifest.ancestors() {
        if dir.join("include/llmlb_lock.h").is_file() && dir.join("ffi").is_dir() {
            return dir.to_path_buf();
        }
    }
    panic!(
        "cannot find the repository root above {}",
        manifest.display()
    );
}

/// `include/`.
pub fn include_dir() -> PathBuf {
    repo_root().join("include")
}

#[cfg(target_os = "macos")]
const SHARED_LIB: &str = "libllmlb_lock.dylib";
#[cfg(not(target_os = "macos"))]
const SHARED_LIB: &str = "libllmlb_lock.so";
const STATIC_LIB: &str = "libllmlb_lock.a";

/// The directory holding `libllmlb_lock.so` and `libllmlb_lock.a` built by
/// this very `cargo test` run (cargo puts them in `target/<profile>/deps`
/// beside the test executable), else `target/<profile>`, else built now with
/// `cargo build -p llmlb-lock-ffi` into a target dir of its own (the test's
/// own target dir is locked by the running `cargo test`).
pub fn lib_dir() -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let exe = std::env::current_exe().expect("current_exe");
        let deps = exe.parent().expect("exe dir").to_path_buf();
        let profile_dir = deps.parent().expect("profile dir").to_path_buf();
        for dir in [&deps, &profile_dir] {
            if dir.join(SHARED_LIB).is_file() && dir.join(STATIC_LIB).is_file() {
                return dir.clone();
            }
        }
        let profile = profile_dir
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("debug")
            .to_owned();
        let target_dir = profile_dir
            .parent()
            .expect("target dir")
            .join("llmlb-ffi-for-tests");
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
        let mut cmd = Command::new(cargo);
        cmd.args(["build", "-p", "llmlb-lock-ffi", "--target-dir"])
            .arg(&target_dir)
            .current_dir(repo_root());
        if profile == "release" {
            cmd.arg("--release");
        }
        let status = cmd.status().expect("run cargo build -p llmlb-lock-ffi");
        assert!(status.success(), "cargo build -p llmlb-lock-ffi failed");
        let built = target_dir.join(if profile == "release" {
            "release"
        } else {
            "debug"
        });
        assert!(
            built.join(SHARED_LIB).is_file(),
            "{} missing",
            built.display()
        );
        built
    })
    .clone()
}

/// The shared library path (what Python's ctypes loads).
pub fn shared_lib() -> PathBuf {
    lib_dir().join(SHARED_LIB)
}

/// `$CC`, else `cc`, if it runs.
pub fn c_compiler() -> Option<String> {
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".to_owned());
    Command::new(&cc)
        .arg("--version")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|_| cc)
}

/// `python3` if present.
pub fn python3() -> Option<String> {
    Command::new("python3")
        .arg("--version")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|_| "python3".to_owned())
}

/// Whether `cc -fsanitize=address,undefined` builds and runs a program here
/// (it does not under some containers' ptrace/personality limits).
pub fn sanitizers_work(cc: &str) -> bool {
    static WORKS: OnceLock<bool> = OnceLock::new();
    *WORKS.get_or_init(|| {
        let Ok(tmp) = tempfile::tempdir() else {
            return false;
        };
        let src = tmp.path().join("probe.c");
        let exe = tmp.path().join("probe");
        if std::fs::write(&src, "int main(void) { return 0; }\n").is_err() {
            return false;
        }
        let built = Command::new(cc)
            .args(["-fsanitize=address,undefined", "-o"])
            .arg(&exe)
            .arg(&src)
            .output()
            .is_ok_and(|o| o.status.success());
        built && Command::new(&exe).status().is_ok_and(|s| s.success())
    })
}

/// How to link against the library.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Link {
    /// `-lllmlb_lock` with an rpath to the shared library.
    Shared,
    /// The static archive and its native dependencies: a self-contained binary.
    Static,
}

/// Compiles `sources` into `out` with `-Wall -Wextra -Werror -pedantic`
/// against the header and the library, adding ASan/UBSan when `sanitize`
/// and available. Panics with the compiler's output on failure.
pub fn compile_c(cc: &str, sources: &[PathBuf], out: &Path, link: Link, sanitize: bool) {
    let lib = lib_dir();
    let mut cmd = Command::new(cc);
    cmd.args(["-std=c11", "-Wall", "-Wextra", "-Werror", "-pedantic", "-g"])
        .arg("-I")
        .arg(include_dir())
        .args(sources)
        .arg("-o")
        .arg(out);
    if sanitize && sanitizers_work(cc) {
        cmd.args([
            "-fsanitize=address,undefined",
            "-fno-sanitize-recover=undefined",
        ]);
    }
    match link {
        Link::Shared => {
            cmd.arg("-L")
                .arg(&lib)
                .arg("-lllmlb_lock")
                .arg(format!("-Wl,-rpath,{}", lib.display()));
        }
        Link::Static => {
            cmd.arg(lib.join(STATIC_LIB));
        }
    }
    // What `rustc --print native-static-libs` lists for this crate on Linux;
    // harmless for the shared link.
    cmd.args(["-lpthread", "-ldl", "-lm"]);
    #[cfg(target_os = "linux")]
    cmd.args(["-lrt", "-lutil"]);
    let output = cmd.output().expect("run the C compiler");
    assert!(
        output.status.success(),
        "compiling {sources:?} failed:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Builds the C launcher (`ffi/examples/launcher.c`, statically linked) into
/// `dir` and returns its path.
pub fn build_launcher(cc: &str, dir: &Path) -> PathBuf {
    let out = dir.join("launcher");
    compile_c(
        cc,
        &[repo_root().join("ffi/examples/launcher.c")],
        &out,
        Link::Static,
        false,
    );
    out
}

/// A private lock dir (mode 0700, as the library requires) inside `tmp`.
pub fn private_dir(tmp: &Path, name: &str) -> PathBuf {
    let dir = tmp.join(name);
    std::fs::create_dir(&dir).expect("create lock dir");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
    }
    dir
}

/// Output bytes as text for assertion messages.
pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A process's status, stdout and stderr, for assertion messages.
pub fn describe(out: &Output) -> String {
    format!(
        "status {:?}\n--- stdout\n{}--- stderr\n{}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    )
}
