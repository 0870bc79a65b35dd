//! The install and build steps of `README.md` and `docs/*.md`, as pasted:
//! every `cargo install` builds with the committed `Cargo.lock`, the files the
//! steps create in the checkout are ignored by git (a build leaves nothing
//! untracked), and the shell steps find cargo's output where
//! `CARGO_TARGET_DIR` puts it.
//!
//! Unix only, like tests/docs_cli.rs: the checks read the checkout and ask
//! git, which the Windows run under Wine has neither of.
#![cfg(unix)]

use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// `(page, text)` of README.md and every page in docs/.
fn pages() -> Vec<(String, String)> {
    let mut paths = vec![repo().join("README.md")];
    for entry in std::fs::read_dir(repo().join("docs")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "md") {
            paths.push(path);
        }
    }
    paths
        .into_iter()
        .map(|p| {
            let text = std::fs::read_to_string(&p).unwrap();
            (p.strip_prefix(repo()).unwrap().display().to_string(), text)
        })
        .collect()
}

/// The lines of every ```sh block of `text`, backslash continuations joined.
fn shell_lines(text: &str) -> Vec<String> {
    let mut lines = Vec::new();
    for block in text.split("```sh\n").skip(1) {
        let body = block.split("```").next().unwrap_or_default();
        let mut joined = String::new();
        for line in body.lines() {
            match line.strip_suffix('\\') {
                Some(head) => joined.push_str(head),
                None => {
                    joined.push_str(line);
                    lines.push(std::mem::take(&mut joined));
                }
            }
        }
    }
    lines
}

/// The command part of a shell line (before a `#` comment).
fn command(line: &str) -> &str {
    line.split(" #").next().unwrap_or(line).trim()
}

#[test]
fn every_documented_cargo_install_is_locked() {
    let mut installs = 0;
    for (page, text) in pages() {
        for line in shell_lines(&text) {
            let cmd = command(&line);
            if cmd.contains("cargo install") || cmd.contains("cargo cinstall") {
                installs += 1;
                assert!(
                    cmd.split_whitespace().any(|w| w == "--locked"),
                    "{page}: `{cmd}` builds without the committed Cargo.lock; add --locked"
                );
            }
        }
    }
    assert!(
        installs >= 3,
        "the README's and c-api.md's installs: found {installs}"
    );
    let pyproject = std::fs::read_to_string(repo().join("ffi/python/pyproject.toml")).unwrap();
    assert!(
        pyproject.contains("cargo_manifest_args = [\"--locked\"]"),
        "pip install ./ffi/python builds the library without --locked"
    );
}

/// What the documented steps write into the checkout (relative to its top):
/// every `-o NAME` of a `cc` line, every `python3 -m venv NAME`, and the
/// file the C guide saves its program as.
fn documented_outputs() -> Vec<PathBuf> {
    let mut outputs = vec![PathBuf::from("app.c")];
    for (_, text) in pages() {
        for line in shell_lines(&text) {
            let words: Vec<&str> = command(&line).split_whitespace().collect();
            for pair in words.windows(2) {
                if pair[0] == "-o" {
                    outputs.push(PathBuf::from(pair[1]));
                }
            }
            for triple in words.windows(3) {
                if triple[..2] == ["-m", "venv"] {
                    outputs.push(PathBuf::from(triple[2]));
                }
            }
        }
    }
    outputs
}

#[test]
fn the_documented_build_steps_leave_nothing_untracked() {
    assert!(
        repo().join("docs/c-api.md").is_file()
            && std::fs::read_to_string(repo().join("docs/c-api.md"))
                .unwrap()
                .contains("Saved as `app.c` at the top of the checkout"),
        "docs/c-api.md no longer saves its program as app.c: update this test"
    );
    let outputs = documented_outputs();
    for name in ["launcher", "launcher-static", "venv", "app"] {
        assert!(
            outputs.iter().any(|o| o == Path::new(name)),
            "the docs no longer build {name}: {outputs:?}"
        );
    }
    // The rules judged by git itself, in a scratch repository holding only
    // the checkout's .gitignore: the suite also runs from a copy of the
    // checkout that is no repository (CI's copy under /tmp).
    let scratch = tempfile::tempdir().unwrap();
    std::fs::copy(repo().join(".gitignore"), scratch.path().join(".gitignore")).unwrap();
    let init = Command::new("git")
        .arg("-C")
        .arg(scratch.path())
        .args(["init", "-q"])
        .output()
        .expect("git (the checkout's own tool)");
    assert!(init.status.success(), "git init: {init:?}");
    for output in outputs {
        // --no-index: ignored by the rules, whether or not a file is there.
        let out = Command::new("git")
            .arg("-C")
            .arg(scratch.path())
            .args(["check-ignore", "-q", "--no-index"])
            .arg(&output)
            .output()
            .expect("git (the checkout's own tool)");
        assert!(
            out.status.code() == Some(0),
            "{} (made by a documented build step) is not ignored by .gitignore: {}",
            output.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn documented_shell_steps_find_cargos_output_through_cargo_target_dir() {
    for (page, text) in pages() {
        for line in shell_lines(&text) {
            let cmd = command(&line);
            let plain = cmd
                .replace("${CARGO_TARGET_DIR:-target}/", "")
                .replace("include/", "");
            assert!(
                !plain.contains("target/"),
                "{page}: `{cmd}` names target/ where CARGO_TARGET_DIR may have put cargo's output; \
                 write \"${{CARGO_TARGET_DIR:-target}}/…\""
            );
        }
    }
}

/// Every paragraph of prose in the docs ends as a sentence or a lead-in
/// does (docs/cli.md's Windows section once stopped at "C and").
#[test]
fn no_paragraph_of_the_docs_stops_mid_sentence() {
    for (page, text) in pages() {
        // Code blocks out: their lines end as code does.
        let mut prose = String::new();
        for (i, part) in text.split("```").enumerate() {
            if i % 2 == 0 {
                prose.push_str(part);
            }
        }
        for paragraph in prose.split("\n\n").map(str::trim) {
            if paragraph.is_empty() || paragraph.starts_with(['#', '|', '<']) {
                continue;
            }
            let last = paragraph.lines().last().unwrap_or_default().trim_end();
            assert!(
                last.ends_with(['.', ':', ')', '`', '!', '?', '|']),
                "{page}: a paragraph stops mid-sentence: …{}",
                &last[last.len().saturating_sub(80)..]
            );
        }
    }
}
