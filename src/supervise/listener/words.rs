//! Who listens on a port, as messages name it: the words for a listener
//! [`port_listener`] found, and the hint for a port that is served while
//! nobody in this lock dir holds it.

use super::port_listener;
use crate::lock::printable;

/// Who listens on TCP `port` now, for a message: `PID 4242 (python3)`, or
/// what can be said when its owner is hidden. `None` when nobody listens,
/// and when the socket tables cannot be read (the message then says what
/// it said before: a lookup that failed proves nothing).
pub(crate) fn who_listens(port: u16) -> Option<String> {
    let found = port_listener(port).ok()??;
    Some(listener_words(found.pid, found.name.as_deref()))
}

/// `PID 4242 (python3)` (the name escaped: another process chose it),
/// `PID 4242`, or, with no PID: on Linux the socket table shows every
/// socket but `/proc` hides other users' descriptors, so it is another
/// user's; elsewhere (a connect probe) nothing more is known.
pub(crate) fn listener_words(pid: Option<u32>, name: Option<&str>) -> String {
    match (pid, name) {
        (Some(pid), Some(name)) => {
            format!("PID {pid} ({})", printable(name))
        }
        (Some(pid), None) => format!("PID {pid}"),
        (None, _) if cfg!(target_os = "linux") => {
            "a process of another user (PID not visible)".to_owned()
        }
        (None, _) => "a process whose PID is not visible here".to_owned(),
    }
}

/// What to try when a port is served but nobody in this lock dir holds it.
pub(crate) fn elsewhere_hint(port: u16) -> String {
    format!(
        "an llmlb of another user or another lock dir? try `sudo llmlb status -p {port}` or `--lock-dir`"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_listener_is_named_by_pid_and_escaped_name_or_as_hidden() {
        assert_eq!(
            listener_words(Some(7), Some("py\x1b[2Jthon")),
            "PID 7 (py\\u{1b}[2Jthon)"
        );
        assert_eq!(listener_words(Some(7), None), "PID 7");
        let hidden = listener_words(None, None);
        assert!(
            !hidden.contains("PID 0") && hidden.contains("not visible"),
            "{hidden}"
        );
    }
}
