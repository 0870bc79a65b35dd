//! The portable answer: connect to the port on both loopback addresses. It
//! tells that something accepts, never who.

use super::Listener;
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::time::Duration;

/// Long enough for a loaded local kernel to answer a SYN, short enough for
/// `status --check` to stay interactive: a loopback connect is refused or
/// accepted at once, the timeout only bounds a firewall that drops.
const PROBE_TIMEOUT: Duration = Duration::from_millis(200);

/// Whether something accepts TCP connections on `port` on 127.0.0.1 or ::1.
fn accepts(port: u16) -> bool {
    let addrs = [
        SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
        SocketAddr::from((Ipv6Addr::LOCALHOST, port)),
    ];
    addrs
        .iter()
        .any(|addr| TcpStream::connect_timeout(addr, PROBE_TIMEOUT).is_ok())
}

pub(crate) fn port_listener(port: u16) -> io::Result<Option<Listener>> {
    Ok(accepts(port).then_some(Listener {
        pid: None,
        name: None,
    }))
}

pub(crate) fn tree_listens(port: u16, _root: u32) -> io::Result<bool> {
    Ok(accepts(port))
}
