//! Windows targets only: builds the C API tests (`tests/api.c`) and the C
//! launcher (`examples/launcher.c`) for `tests/c_api.rs` with the host's
//! mingw-w64 compiler, because the test itself runs where no host compiler
//! can be started (under Wine, which runs a Linux program only blindly: no
//! exit code, no output).
//!
//! The library is not built yet when this runs, so each exe links against
//! an import library made with `dlltool` from the function names of the
//! committed header (`include/llmlb_lock.h`, which `tests/header.rs` keeps
//! equal to the library); at run time the test puts `api.exe` beside the
//! `llmlb_lock.dll` that the same `cargo test` built, so the DLL tested is
//! always the current one.
//!
//! Never fails the build (a Windows user of the library needs no C
//! compiler): the outcome for each exe goes to `$OUT_DIR/c-<name>.txt`
//! (`c-api.txt`, `c-launcher.txt`), one line `ok <exe>`, `missing <why>` or
//! `failed <compiler output>`, which the test reports. Other targets: nothing
//! to do.

use std::env;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=tests/api.c");
    println!("cargo:rerun-if-changed=examples/launcher.c");
    println!("cargo:rerun-if-changed=../include/llmlb_lock.h");
    println!("cargo:rerun-if-env-changed=LLMLB_MINGW_CC");
    if env::var("CARGO_CFG_TARGET_OS").as_deref() != Ok("windows") {
        return;
    }
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let built = import_library(&out);
    for (name, source) in [("api", "tests/api.c"), ("launcher", "examples/launcher.c")] {
        let report = match built
            .as_ref()
            .map_err(Outcome::clone)
            .and_then(|(cc, lib)| build_exe(cc, lib, source, &out.join(format!("{name}.exe"))))
        {
            Ok(exe) => format!("ok {}", exe.display()),
            Err(Outcome::Missing(why)) => format!("missing {why}"),
            Err(Outcome::Failed(output)) => format!("failed {output}"),
        };
        let path = out.join(format!("c-{name}.txt"));
        fs::write(&path, report).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    }
}

#[derive(Clone)]
enum Outcome {
    /// No compiler for the target on this host.
    Missing(String),
    /// A tool ran and failed: its output.
    Failed(String),
}

fn manifest_dir() -> PathBuf {
    PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets it"))
}

/// The mingw-w64 compiler and an import library for `llmlb_lock.dll`.
fn import_library(out: &Path) -> Result<(String, PathBuf), Outcome> {
    let header = manifest_dir().join("../include/llmlb_lock.h");
    let arch = match env::var("CARGO_CFG_TARGET_ARCH").as_deref() {
        Ok("x86") => "i686".to_owned(),
        Ok(arch) => arch.to_owned(),
        Err(_) => "x86_64".to_owned(),
    };
    let cc = env::var("LLMLB_MINGW_CC").unwrap_or_else(|_| format!("{arch}-w64-mingw32-gcc"));
    rerun_when_compiler_changes(&cc);
    match Command::new(&cc).arg("--version").output() {
        Ok(o) if o.status.success() => {}
        _ => {
            return Err(Outcome::Missing(format!(
                "no mingw-w64 C compiler `{cc}` on this host; install it \
                 (Debian: apt-get install gcc-mingw-w64-x86-64) or set LLMLB_MINGW_CC"
            )))
        }
    }
    // x86_64-w64-mingw32-gcc → x86_64-w64-mingw32-dlltool
    let dlltool = match cc.strip_suffix("gcc") {
        Some(prefix) => format!("{prefix}dlltool"),
        None => "dlltool".to_owned(),
    };

    let text = fs::read_to_string(&header)
        .map_err(|e| Outcome::Failed(format!("read {}: {e}", header.display())))?;
    let mut def = String::from("LIBRARY llmlb_lock.dll\nEXPORTS\n");
    for name in exported_functions(&text) {
        def.push_str(&name);
        def.push('\n');
    }
    let def_path = out.join("llmlb_lock.def");
    let import_lib = out.join("llmlb_lock.dll.a");
    fs::write(&def_path, def).map_err(|e| Outcome::Failed(format!("write .def: {e}")))?;
    run(Command::new(&dlltool)
        .arg("-d")
        .arg(&def_path)
        .args(["-D", "llmlb_lock.dll", "-l"])
        .arg(&import_lib))?;
    Ok((cc, import_lib))
}

/// Makes cargo run this script again when the compiler appears, moves or
/// is upgraded. Without it, a build that found no compiler records "missing"
/// for good: cargo would never re-run the script after the compiler is
/// installed (as CI does, between the cross-check and the Windows suite).
/// A path that does not exist counts as changed on every build, so while the
/// compiler is missing the probe repeats; once found, its resolved path pins
/// it.
fn rerun_when_compiler_changes(cc: &str) {
    let named = Path::new(cc);
    let resolved = if named.components().count() > 1 {
        Some(named.to_path_buf())
    } else {
        env::var_os("PATH").and_then(|path| {
            env::split_paths(&path)
                .map(|dir| dir.join(named))
                .find(|candidate| candidate.is_file())
        })
    };
    match resolved.and_then(|path| fs::canonicalize(&path).ok().or(Some(path))) {
        Some(path) => println!("cargo:rerun-if-changed={}", path.display()),
        // Missing: name a path that cannot exist, so cargo re-runs the probe.
        None => println!("cargo:rerun-if-changed=/nonexistent/llmlb-mingw-probe/{cc}"),
    }
}

/// Compiles `source` (relative to this package) into `exe`. As the Unix
/// build in tests/support: strict warnings. -static links libgcc and
/// winpthreads in, so the exe needs nothing but the DLL.
fn build_exe(cc: &str, import_lib: &Path, source: &str, exe: &Path) -> Result<PathBuf, Outcome> {
    let manifest = manifest_dir();
    run(Command::new(cc)
        .args(["-std=c11", "-Wall", "-Wextra", "-Werror", "-pedantic", "-g"])
        .args(["-static", "-pthread"])
        .arg("-I")
        .arg(manifest.join("../include"))
        .arg(manifest.join(source))
        .arg(import_lib)
        .arg("-o")
        .arg(exe))?;
    Ok(exe.to_path_buf())
}

/// The `llmlb_*` functions the header declares (cbindgen puts each
/// declaration's name right before its `(`).
fn exported_functions(header: &str) -> Vec<String> {
    let mut names: Vec<String> = header
        .lines()
        .filter(|line| !line.trim_start().starts_with('*') && !line.contains("//"))
        .filter_map(|line| {
            let open = line.find('(')?;
            let start = line[..open].rfind(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))?;
            let name = &line[start + 1..open];
            name.starts_with("llmlb_").then(|| name.to_owned())
        })
        .collect();
    names.sort();
    names.dedup();
    names
}

fn run(cmd: &mut Command) -> Result<(), Outcome> {
    let output = cmd
        .output()
        .map_err(|e| Outcome::Failed(format!("{cmd:?}: {e}")))?;
    if output.status.success() {
        return Ok(());
    }
    Err(Outcome::Failed(format!(
        "{cmd:?} failed ({}): {}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )))
}
