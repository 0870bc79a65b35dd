//! Shared by the C, Python and interop tests (the root package's
//! `tests/interop_ffi.rs` includes this file by path): find the built
//! library, find a C compiler and Python, compile C against the header.

#![allow(dead_code)] // each test binary uses a different subset

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

#[path = "../../../tests/support/prereq.rs"]
pub mod prereq;

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
#[cfg(windows)]
const SHARED_LIB: &str = "llmlb_lock.dll";
#[cfg(not(any(target_os = "macos", windows)))]
const SHARED_LIB: &str = "libllmlb_lock.so";
#[cfg(all(windows, target_env = "msvc"))]
const STATIC_LIB: &str = "llmlb_lock.lib";
#[cfg(not(all(windows, target_env = "msvc")))]
const STATIC_LIB: &str = "libllmlb_lock.a";

/// The directory holding the `libllmlb_lock.so` and `libllmlb_lock.a` that
/// this very `cargo test` built from the current source: cargo's `deps/`
/// beside the test executable (so any profile, `--target` and
/// `CARGO_TARGET_DIR` are respected). Cargo builds them there because the
/// test depends on the library: the ffi tests as its own tests, the root
/// package's tests through its dev-dependency on `llmlb-lock-ffi`, and a
/// `cdylib`/`staticlib` crate type is built with every build of the library.
///
/// Nothing else is searched: a library found anywhere else could be older
/// than the source. Panics if the library is missing or older than a file of
/// `src/` or `ffi/src/` (a stale build).
pub fn lib_dir() -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let exe = std::env::current_exe().expect("current_exe");
        let deps = exe.parent().expect("exe dir").to_path_buf();
        for name in [SHARED_LIB, STATIC_LIB] {
            let lib = deps.join(name);
            let built = std::fs::metadata(&lib)
                .and_then(|m| m.modified())
                .unwrap_or_else(|e| {
                    panic!(
                        "{}: {e}; cargo builds it with the tests that depend on \
                         llmlb-lock-ffi (is the dev-dependency missing?)",
                        lib.display()
                    )
                });
            if let Some((source, modified)) = newest_source() {
                if modified > built {
                    let newer = modified.duration_since(built).unwrap_or_default();
                    panic!(
                        "{} is stale: {} was modified {newer:?} after it was built; \
                         it must be built by this cargo test from the current source",
                        lib.display(),
                        source.display()
                    );
                }
            }
        }
        deps
    })
    .clone()
}

/// The most recently modified file under `src/` and `ffi/src/`.
fn newest_source() -> Option<(PathBuf, std::time::SystemTime)> {
    fn walk(dir: &Path, newest: &mut Option<(PathBuf, std::time::SystemTime)>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let Ok(meta) = entry.metadata() else { continue };
            if meta.is_dir() {
                walk(&path, newest);
            } else if let Ok(modified) = meta.modified() {
                if newest.as_ref().is_none_or(|(_, t)| modified > *t) {
                    *newest = Some((path, modified));
                }
            }
        }
    }
    let root = repo_root();
    let mut newest = None;
    walk(&root.join("src"), &mut newest);
    walk(&root.join("ffi/src"), &mut newest);
    newest
}

/// The shared library path (what Python's ctypes loads).
pub fn shared_lib() -> PathBuf {
    lib_dir().join(SHARED_LIB)
}

/// `$env`, else `default`, if `--version` runs; else the test fails
/// naming the compiler (every machine of this project has one).
fn compiler(env: &str, default: &str, package: &str) -> String {
    let cc = std::env::var(env).unwrap_or_else(|_| default.to_owned());
    match Command::new(&cc).arg("--version").output() {
        Ok(o) if o.status.success() => cc,
        Ok(o) => prereq::fail(
            &format!("`{cc} --version` failed ({})", o.status),
            &format!("install {package} or point {env} at a working compiler"),
        ),
        Err(e) => prereq::fail(
            &format!("no C/C++ compiler `{cc}` ({e})"),
            &format!("install {package} (e.g. `apt-get install {package}`) or set {env}"),
        ),
    }
}

/// `$CC`, else `cc`; fails the test if it does not run.
pub fn c_compiler() -> String {
    compiler("CC", "cc", "gcc")
}

/// `$CXX`, else `c++`; fails the test if it does not run.
pub fn cxx_compiler() -> String {
    compiler("CXX", "c++", "g++")
}

/// `python3`; fails the test if it does not run.
pub fn python3() -> String {
    match Command::new("python3").arg("--version").output() {
        Ok(o) if o.status.success() => "python3".to_owned(),
        Ok(o) => prereq::fail(
            &format!("`python3 --version` failed ({})", o.status),
            "install python3 (e.g. `apt-get install python3`)",
        ),
        Err(e) => prereq::fail(
            &format!("python3 not found ({e})"),
            "install python3 (e.g. `apt-get install python3`)",
        ),
    }
}

/// Whether `cc -fsanitize=address,undefined` builds and runs a program here
/// (it does not under some containers' ptrace/personality limits, or without
/// the libasan/libubsan runtimes). When not, CI fails and a local run says
/// loudly that the C tests ran without sanitizers.
pub fn sanitizers_work(cc: &str) -> bool {
    static WORKS: OnceLock<Result<(), String>> = OnceLock::new();
    let works = WORKS.get_or_init(|| {
        let tmp = tempfile::tempdir().map_err(|e| format!("temp dir: {e}"))?;
        let src = tmp.path().join("probe.c");
        let exe = tmp.path().join("probe");
        std::fs::write(&src, "int main(void) { return 0; }\n")
            .map_err(|e| format!("write probe: {e}"))?;
        let built = Command::new(cc)
            .args(["-fsanitize=address,undefined", "-o"])
            .arg(&exe)
            .arg(&src)
            .output()
            .map_err(|e| format!("run {cc}: {e}"))?;
        if !built.status.success() {
            return Err(format!(
                "`{cc} -fsanitize=address,undefined` fails: {}",
                String::from_utf8_lossy(&built.stderr).trim()
            ));
        }
        let ran = Command::new(&exe)
            .output()
            .map_err(|e| format!("run the ASan probe: {e}"))?;
        if !ran.status.success() {
            return Err(format!(
                "an ASan/UBSan program does not run here ({}): {}",
                ran.status,
                String::from_utf8_lossy(&ran.stderr).trim()
            ));
        }
        Ok(())
    });
    match works {
        Ok(()) => true,
        Err(why) => {
            prereq::skip_unless_ci(
                why,
                "install the sanitizer runtimes (libasan, libubsan; `apt-get install gcc`) \
                 and allow ptrace/personality",
                "ASan/UBSan on the C API tests",
            );
            false
        }
    }
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
/// (see [`sanitizers_work`] for when they are missing). Panics with the
/// compiler's output on failure.
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
