//! The private side of `serve --proxy`: the loopback port its command
//! serves on, and the command line that tells the command which it is.

use std::ffi::OsString;
use std::io;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};

/// What every `{port}` in the command's arguments becomes.
pub const PORT_PLACEHOLDER: &str = "{port}";

/// The environment variable naming the backend port (besides `PORT`, which
/// many servers read, and `LLMLB_PORT`, which stays the public port).
pub const BACKEND_PORT_ENV: &str = "LLMLB_BACKEND_PORT";

/// The address the proxy forwards to: 127.0.0.1, never a public address,
/// so only this machine reaches the command behind the proxy.
pub fn address(port: u16) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, port))
}

/// Picks the backend port: `wanted` (`--backend-port`) if it can be bound
/// on 127.0.0.1 now, else (or without one) a port the kernel picks from
/// its ephemeral range. Returns the port and whether it is `wanted`. A
/// replace's successor meets its predecessor's command on a fixed port:
/// it takes another one then, so both can serve until the handover
/// commits.
///
/// The port is free when picked, not reserved: the command binds it a
/// moment later, and readiness (`listen` on Linux checks the command's own
/// tree) tells whether it did.
///
/// # Errors
/// The OS error when not even an ephemeral port can be bound on 127.0.0.1.
pub fn pick_port(wanted: Option<u16>) -> io::Result<(u16, bool)> {
    if let Some(port) = wanted {
        if TcpListener::bind(address(port)).is_ok() {
            return Ok((port, true));
        }
    }
    let listener = TcpListener::bind(address(0))?;
    Ok((listener.local_addr()?.port(), false))
}

/// `args` with every `{port}` replaced by `port`. An argument that is not
/// valid Unicode is kept as it is (it cannot hold the placeholder as text
/// the user typed).
pub fn substitute(args: &[OsString], port: u16) -> Vec<OsString> {
    let text = port.to_string();
    args.iter()
        .map(|arg| match arg.to_str() {
            Some(s) if s.contains(PORT_PLACEHOLDER) => {
                OsString::from(s.replace(PORT_PLACEHOLDER, &text))
            }
            _ => arg.clone(),
        })
        .collect()
}

/// How many connections wait in the accept queue of the listener on
/// 127.0.0.1:`port` (made, not yet accepted by the command); `None` where
/// this cannot be known (not Linux, or no such listener).
///
/// A proxy that stops accepting waits for this to reach zero before it
/// stops its command: a server shutting down closes its listening socket,
/// and the kernel resets the connections still queued there, each one a
/// client's request the proxy had accepted.
pub fn accept_queue(port: u16) -> Option<u32> {
    #[cfg(target_os = "linux")]
    {
        // For a listening socket, /proc/net/tcp{,6}'s rx_queue is the length
        // of its accept queue. Connections to 127.0.0.1 land on a listener
        // bound there or to a wildcard (0.0.0.0, or :: with IPv4 mapped).
        let addresses = [
            ("/proc/net/tcp", "0100007F"),
            ("/proc/net/tcp", "00000000"),
            ("/proc/net/tcp6", "00000000000000000000000000000000"),
            ("/proc/net/tcp6", "0000000000000000FFFF00000100007F"),
        ];
        let mut found = None;
        for (table, address) in addresses {
            let Ok(text) = std::fs::read_to_string(table) else {
                continue;
            };
            let local = format!("{address}:{port:04X}");
            for line in text.lines().skip(1) {
                let fields: Vec<&str> = line.split_whitespace().collect();
                if fields.get(1) != Some(&local.as_str()) || fields.get(3) != Some(&"0A") {
                    continue;
                }
                let queued = fields
                    .get(4)
                    .and_then(|queues| queues.split_once(':'))
                    .and_then(|(_tx, rx)| u32::from_str_radix(rx, 16).ok());
                if let Some(queued) = queued {
                    found = Some(found.unwrap_or(0) + queued);
                }
            }
        }
        found
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = port;
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_placeholder_is_replaced_and_nothing_else() {
        let args: Vec<OsString> = [
            "--port",
            "{port}",
            "--url=http://x:{port}/{port}",
            "{ port}",
        ]
        .iter()
        .map(OsString::from)
        .collect();
        let out = substitute(&args, 43127);
        assert_eq!(
            out,
            ["--port", "43127", "--url=http://x:43127/43127", "{ port}"]
                .iter()
                .map(OsString::from)
                .collect::<Vec<_>>()
        );
    }

    #[test]
    fn a_wanted_port_in_use_gives_another() {
        let taken = TcpListener::bind(address(0)).unwrap();
        let port = taken.local_addr().unwrap().port();
        let (picked, is_wanted) = pick_port(Some(port)).unwrap();
        assert!(!is_wanted);
        assert_ne!(picked, port);
        drop(taken);
        assert_eq!(pick_port(Some(port)).unwrap(), (port, true));
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn the_accept_queue_counts_connections_not_yet_accepted() {
        let listener = TcpListener::bind(address(0)).unwrap();
        let port = listener.local_addr().unwrap().port();
        assert_eq!(accept_queue(port), Some(0));
        let clients: Vec<_> = (0..3)
            .map(|_| std::net::TcpStream::connect(address(port)).unwrap())
            .collect();
        assert_eq!(accept_queue(port), Some(3));
        let _accepted = listener.accept().unwrap();
        assert_eq!(accept_queue(port), Some(2));
        drop(clients);
        drop(listener);
        assert_eq!(accept_queue(port), None);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn a_wildcard_listener_s_queue_counts_too() {
        let listener = TcpListener::bind(("0.0.0.0", 0)).unwrap();
        let port = listener.local_addr().unwrap().port();
        let _clients: Vec<_> = (0..2)
            .map(|_| std::net::TcpStream::connect(address(port)).unwrap())
            .collect();
        assert_eq!(accept_queue(port), Some(2));
    }
}
