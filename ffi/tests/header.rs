//! The committed `include/llmlb_lock.h` is exactly what cbindgen generates
//! from `ffi/src/lib.rs`, and it compiles cleanly as C99, C11 and C++11.

#[path = "../examples/gen-header.rs"]
#[allow(dead_code)]
mod gen_header;

const UPDATE: &str = "cargo run -p llmlb-lock-ffi --example gen-header";

#[test]
fn committed_header_is_current() {
    let path = gen_header::header_path();
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    let generated = gen_header::generate_header();
    if committed != generated {
        let first_diff = committed
            .lines()
            .zip(generated.lines())
            .position(|(a, b)| a != b)
            .map_or_else(
                || "one file is a prefix of the other".to_owned(),
                |i| format!("first difference at line {}", i + 1),
            );
        panic!(
            "include/llmlb_lock.h is out of date ({first_diff}).\nUpdate it with:\n    {UPDATE}\nand commit the result."
        );
    }
}

#[cfg(unix)]
mod support;

#[cfg(unix)]
#[test]
fn header_compiles_as_c99_c11_and_cxx11_without_warnings() {
    let include = gen_header::crate_dir().join("../include");
    let tmp = tempfile::tempdir().unwrap();
    let src = "#include \"llmlb_lock.h\"\n\
               int main(void) {\n\
                 LlmlbLockInfo info = {0, 0, 0, 0, LLMLB_SERVE_STATE_READY};\n\
                 LlmlbStatus (*acquire)(const char *, uint16_t, LlmlbLock **, LlmlbLockInfo *) = llmlb_lock_acquire;\n\
                 LlmlbStatus (*set_state)(LlmlbLock *, int) = llmlb_lock_set_state;\n\
                 LlmlbStatus (*listener)(uint16_t, uint32_t *) = llmlb_port_listener;\n\
                 LlmlbStatus (*take)(const char *, uint16_t, uint32_t, LlmlbLock **, int *, LlmlbLockInfo *) = llmlb_handover_take;\n\
                 LlmlbStatus (*offer)(LlmlbLock *, int, uint32_t, LlmlbOffer **) = llmlb_handover_offer;\n\
                 LlmlbStatus (*poll)(const LlmlbOffer *, uint32_t, uint32_t *) = llmlb_offer_poll;\n\
                 LlmlbLockState state = LLMLB_STATE_FREE;\n\
                 int (*serve)(const LlmlbServeOptions *, const char *const *) = llmlb_serve_exec;\n\
                 uint32_t forever = LLMLB_WAIT_FOREVER, zero = LLMLB_SERVE_ZERO_MS;\n\
                 (void)acquire; (void)set_state; (void)listener; (void)info; (void)state;\n\
                 (void)take; (void)offer; (void)poll;\n\
                 (void)serve; (void)forever; (void)zero; (void)sizeof(LlmlbServeOptions);\n\
                 return LLMLB_STATUS_OK;\n\
               }\n";
    let c_file = tmp.path().join("use_header.c");
    std::fs::write(&c_file, src).unwrap();
    use std::process::Command;
    let (c, cxx) = (support::c_compiler(), support::cxx_compiler());
    let cases = [
        (&c, ["-x", "c", "-std=c99"]),
        (&c, ["-x", "c", "-std=c11"]),
        (&cxx, ["-x", "c++", "-std=c++11"]),
    ];
    for (cc, lang) in cases {
        let out = Command::new(cc)
            .args(lang)
            .args(["-Wall", "-Wextra", "-Werror", "-pedantic", "-fsyntax-only"])
            .arg("-I")
            .arg(&include)
            .arg(&c_file)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{cc} {lang:?} rejected the header:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
