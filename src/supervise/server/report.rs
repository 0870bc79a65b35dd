//! How a server says what went wrong: one `Error: …` line on stderr, the
//! exit code, and the words its messages share (an address, who is in the
//! way of a bind).

use std::io;

use crate::supervise::listener::words::who_listens;

/// Prints `Error: {message}` and returns the runtime-failure exit code.
pub(crate) fn fail(message: impl std::fmt::Display) -> i32 {
    eprintln!("Error: {message}");
    super::EXIT_FAILURE
}

/// The one line for a failed bind, and the exit code: a port in use names
/// who listens on it, where that can be seen.
pub(crate) fn bind_failed(e: &io::Error, host: &str, port: u16) -> i32 {
    if e.kind() == io::ErrorKind::AddrInUse {
        fail(in_use(port, who_listens(port)))
    } else {
        fail(format!(
            "cannot listen on {}: {e} (check --host / LLMLB_HOST)",
            host_port(host, port)
        ))
    }
}

/// `port P is already in use by another program[: PID N (name)]`, naming
/// `who` listens there if it is known.
pub(crate) fn in_use(port: u16, who: Option<String>) -> String {
    match who {
        Some(who) => format!("port {port} is already in use by another program: {who}"),
        None => format!("port {port} is already in use by another program"),
    }
}

/// `host:port` as a URL or `ss` shows it: an IPv6 address in brackets
/// (`[::1]:8080`), so the port cannot be read as part of the address.
pub(crate) fn host_port(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// `--host` as the socket API takes it: `[::1]` (the URL form of an IPv6
/// address, which users copy from URLs) without its brackets.
pub(crate) fn bare_host(host: String) -> String {
    match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        Some(inner) if inner.contains(':') => inner.to_owned(),
        _ => host,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_addresses_are_bracketed_and_brackets_are_accepted() {
        assert_eq!(host_port("::1", 8080), "[::1]:8080");
        assert_eq!(host_port("fe80::1%eth0", 80), "[fe80::1%eth0]:80");
        assert_eq!(host_port("0.0.0.0", 8080), "0.0.0.0:8080");
        assert_eq!(host_port("localhost", 1), "localhost:1");
        assert_eq!(bare_host("[::1]".into()), "::1");
        assert_eq!(bare_host("::".into()), "::");
        assert_eq!(bare_host("127.0.0.1".into()), "127.0.0.1");
        assert_eq!(bare_host("[not-an-address]".into()), "[not-an-address]");
    }
}
