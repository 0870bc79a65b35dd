//! Text from outside shown safely: [`printable`] for messages and
//! terminals, [`shell_quoted`] for a path in a command the user pastes.
//!
//! Its own module, below both [`LockError`](super::LockError)'s messages and
//! the hints they carry (`hint.rs`), so neither has to reach into the other.

use std::ffi::OsStr;
use std::fmt;

/// A path (or any text read from a file or another process: a host name, a
/// command line) as messages print it: on one line whatever it contains.
/// Control characters (a newline, an escape) are shown escaped (`\n`,
/// `\u{1b}`), so one error stays one line for the CLI's `Error:` line and for
/// `llmlb_last_error`, and cannot forge output or colours on a terminal.
///
/// # Examples
/// ```
/// use llmlb::lock::printable;
/// assert_eq!(printable("evil\n\x1b[31mhost").to_string(), "evil\\n\\u{1b}[31mhost");
/// ```
pub fn printable<S: AsRef<OsStr> + ?Sized>(text: &S) -> Printable<'_> {
    Printable(text.as_ref())
}

/// See [`printable`].
#[derive(Debug, Clone, Copy)]
pub struct Printable<'a>(&'a OsStr);

impl fmt::Display for Printable<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use fmt::Write as _;
        for c in self.0.to_string_lossy().chars() {
            if c.is_control() {
                write!(f, "{}", c.escape_debug())?;
            } else {
                f.write_char(c)?;
            }
        }
        Ok(())
    }
}

/// A path as one word of a command printed for the user to paste (`llmlb
/// stop --port 8000 --lock-dir DIR`, `chmod 700 DIR`, `fuser FILE`): quoted
/// for the shell of the platform, so the pasted command names exactly this
/// path, and never holding a raw control character.
///
/// - Unix, for a POSIX shell: a word of only `A-Z a-z 0-9 _ - . / , : @ % + =`
///   stays as it is; anything else goes in single quotes, an embedded `'`
///   written `'\''`. A path with a control character or bytes that are not
///   UTF-8 is written in `$'…'` quoting (every such byte as a 3-digit octal
///   escape, `\\` and `\'` escaped): exact in bash, zsh, ksh, busybox sh and
///   any POSIX.1-2024 shell, and still one line on a terminal; `dash`
///   (Debian's `/bin/sh`) lacks `$'…'`. No quoting is exact in every shell
///   and keeps raw control characters off the terminal; such paths are rare
///   enough that exactness in the common shells won.
/// - Windows, for cmd and PowerShell: a word with anything but letters,
///   digits and `\ : . _ - /` goes in double quotes (`"` cannot occur in a
///   Windows path). `%VAR%` (cmd) and `$var` or a backtick (PowerShell) in a
///   path still expand inside double quotes: no one quoting is literal in
///   both shells. Control characters, which Windows file names cannot hold,
///   are escaped as [`printable`] shows them.
///
/// # Examples
/// ```
/// use llmlb::lock::shell_quoted;
/// assert_eq!(shell_quoted("/tmp/llmlb-1000").to_string(), "/tmp/llmlb-1000");
/// # #[cfg(unix)]
/// assert_eq!(shell_quoted("/tmp/it's a $dir").to_string(), r"'/tmp/it'\''s a $dir'");
/// # #[cfg(unix)]
/// assert_eq!(shell_quoted("/tmp/a\nb").to_string(), r"$'/tmp/a\012b'");
/// ```
pub fn shell_quoted<S: AsRef<OsStr> + ?Sized>(word: &S) -> ShellQuoted<'_> {
    ShellQuoted(word.as_ref())
}

/// See [`shell_quoted`].
#[derive(Debug, Clone, Copy)]
pub struct ShellQuoted<'a>(&'a OsStr);

impl fmt::Display for ShellQuoted<'_> {
    #[cfg(unix)]
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use fmt::Write as _;
        use std::os::unix::ffi::OsStrExt as _;
        let bytes = self.0.as_bytes();
        let safe = |b: u8| b.is_ascii_alphanumeric() || b"_-./,:@%+=".contains(&b);
        if !bytes.is_empty() && bytes.iter().all(|&b| safe(b)) {
            return f.write_str(&String::from_utf8_lossy(bytes));
        }
        let exact_needs_escapes = bytes.utf8_chunks().any(|chunk| {
            !chunk.invalid().is_empty() || chunk.valid().chars().any(char::is_control)
        });
        if !exact_needs_escapes {
            f.write_char('\'')?;
            for c in String::from_utf8_lossy(bytes).chars() {
                match c {
                    '\'' => f.write_str("'\\''")?,
                    c => f.write_char(c)?,
                }
            }
            return f.write_char('\'');
        }
        // `$'…'`: every control character and every byte that is not UTF-8
        // as `\ooo` (always three digits, so a following digit cannot be
        // read as part of the escape).
        let octal = |f: &mut fmt::Formatter<'_>, b: u8| write!(f, "\\{b:03o}");
        f.write_str("$'")?;
        for chunk in bytes.utf8_chunks() {
            for c in chunk.valid().chars() {
                match c {
                    '\'' => f.write_str("\\'")?,
                    '\\' => f.write_str("\\\\")?,
                    c if c.is_control() => {
                        let mut buf = [0u8; 4];
                        for &b in c.encode_utf8(&mut buf).as_bytes() {
                            octal(f, b)?;
                        }
                    }
                    c => f.write_char(c)?,
                }
            }
            for &b in chunk.invalid() {
                octal(f, b)?;
            }
        }
        f.write_char('\'')
    }

    #[cfg(windows)]
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = self.0.to_string_lossy();
        let safe = |c: char| c.is_ascii_alphanumeric() || "\\:._-/".contains(c);
        if !text.is_empty() && text.chars().all(safe) {
            return f.write_str(&text);
        }
        write!(f, "\"{}\"", printable(self.0))
    }
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;
    use std::ffi::OsString;
    use std::os::unix::ffi::{OsStrExt as _, OsStringExt as _};
    use std::path::Path;
    use std::process::Command;

    /// What `shell` makes of the word `quoted`: the bytes its `printf`
    /// prints for it.
    fn through(shell: &str, quoted: &str) -> Vec<u8> {
        let out = Command::new(shell)
            .args(["-c", &format!("printf '%s' {quoted}")])
            .output()
            .unwrap_or_else(|e| panic!("cannot run {shell} (every build machine has it): {e}"));
        assert!(out.status.success(), "{shell}: {quoted}: {out:?}");
        out.stdout
    }

    /// Every quoted path reads back, through a real shell, as exactly the
    /// path, and none holds a raw control character.
    #[test]
    fn shell_quoted_paths_survive_a_real_shell() {
        let plain = ["/tmp/llmlb-1000", "/a/b_c-d.e,f:g@h%i+j=k", "relative/x"];
        let quoted = [
            "/tmp/x/it's a $dir",
            "/tmp/`date` \"$(id)\" *?[a] ~ {a,b} !x #y ;|&<>()\\",
            "/tmp/'",
            "''",
            "",
            "/tmp/höst-漢字",
        ];
        for path in plain {
            assert_eq!(shell_quoted(path).to_string(), path);
        }
        for path in plain.into_iter().chain(quoted) {
            let word = shell_quoted(path).to_string();
            assert_eq!(through("sh", &word), path.as_bytes(), "{word}");
        }
        // Control characters and bytes that are not UTF-8: `$'…'`, which
        // sh on Debian (dash) lacks; bash reads it exactly.
        let special = [
            OsString::from("/tmp/a\nb"),
            OsString::from("/tmp/\x1b[31mred\x1b[0m 'q' \\ $x"),
            OsString::from("/tmp/\u{9b}c1 control"),
            OsString::from("/tmp/\x01\x7f9"),
            OsString::from_vec(b"/tmp/\xff\xfe not utf-8".to_vec()),
        ];
        for path in &special {
            let word = shell_quoted(path).to_string();
            assert!(!word.chars().any(char::is_control), "{word:?}");
            assert!(word.starts_with("$'"), "{word}");
            assert_eq!(through("bash", &word), path.as_bytes(), "{word}");
        }
    }

    /// Text from a lock file (a host name) is shown with its control
    /// characters escaped: no forged line, no colours.
    #[test]
    fn printable_escapes_control_characters() {
        let host = "evil\n\x1b[31mError: fake\x1b[0m\r";
        let shown = printable(host).to_string();
        assert!(!shown.chars().any(char::is_control), "{shown:?}");
        assert_eq!(shown, "evil\\n\\u{1b}[31mError: fake\\u{1b}[0m\\r");
        let path = Path::new("/tmp/a\u{9b}b");
        assert_eq!(printable(path).to_string(), "/tmp/a\\u{9b}b");
        let bytes = std::ffi::OsStr::from_bytes(b"/tmp/\xffx");
        assert_eq!(printable(bytes).to_string(), "/tmp/\u{fffd}x");
    }
}

#[cfg(all(test, windows))]
mod windows_tests {
    use super::*;

    /// cmd and PowerShell: plain paths bare, anything else in double
    /// quotes, and never a raw control character.
    #[test]
    fn shell_quoted_paths_for_cmd_and_powershell() {
        assert_eq!(
            shell_quoted(r"C:\llmlb\locks").to_string(),
            r"C:\llmlb\locks"
        );
        assert_eq!(
            shell_quoted(r"C:\Users\it's a dir\x").to_string(),
            r#""C:\Users\it's a dir\x""#
        );
        assert_eq!(shell_quoted("").to_string(), r#""""#);
        let word = shell_quoted("C:\\a\nb").to_string();
        assert!(!word.chars().any(char::is_control), "{word:?}");
    }
}
