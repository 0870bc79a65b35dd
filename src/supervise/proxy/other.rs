//! Other platforms (macOS, Windows): a buffered copy in each direction.

use std::io;

use tokio::io::AsyncWriteExt as _;
use tokio::net::TcpStream;
use tokio::sync::watch;

/// Forwards both directions until both have ended (each EOF passed on as a
/// shutdown of the other side's write half) or either fails (returned at
/// once; the caller closes both sockets); see [`super::both_ways`] for a
/// proxy that stopped accepting.
pub(super) async fn forward(
    client: &mut TcpStream,
    backend: &mut TcpStream,
    stopped: &mut watch::Receiver<bool>,
) -> io::Result<()> {
    // A copy allocates its buffer (8 KiB) up front: a connection that
    // sends nothing must not cost one. A peek, not `readable()`, which can
    // wake without data (and does, on a socket just accepted).
    let (mut one, mut other) = ([0u8; 1], [0u8; 1]);
    tokio::select! {
        peeked = client.peek(&mut one) => peeked?,
        peeked = backend.peek(&mut other) => peeked?,
    };
    let (mut client_read, mut client_write) = client.split();
    let (mut backend_read, mut backend_write) = backend.split();
    let up = async {
        tokio::io::copy(&mut client_read, &mut backend_write).await?;
        shutdown_write(backend_write.shutdown().await)
    };
    let down = async {
        tokio::io::copy(&mut backend_read, &mut client_write).await?;
        shutdown_write(client_write.shutdown().await)
    };
    super::both_ways(up, down, stopped).await
}

/// A shutdown of a peer already gone is no error: the other direction
/// reports how it went.
fn shutdown_write(done: io::Result<()>) -> io::Result<()> {
    match done {
        Err(e) if e.kind() == io::ErrorKind::NotConnected => Ok(()),
        done => done,
    }
}

/// Raises the soft descriptor limit to the hard one.
#[cfg(unix)]
pub(super) fn raise_nofile_limit() -> io::Result<Option<(u64, u64)>> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `limit` is a writable rlimit.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(io::Error::last_os_error());
    }
    if limit.rlim_cur >= limit.rlim_max {
        return Ok(None);
    }
    let old = limit.rlim_cur;
    limit.rlim_cur = limit.rlim_max;
    // SAFETY: `limit` is a valid rlimit.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } != 0 {
        let e = io::Error::last_os_error();
        // macOS refuses a soft limit above OPEN_MAX (setrlimit(2), COMPATIBILITY),
        // which an unlimited hard limit is.
        // OPEN_MAX of macOS's <sys/syslimits.h>.
        let open_max: libc::rlim_t = 10240;
        if e.raw_os_error() != Some(libc::EINVAL) {
            return Err(e);
        }
        if old >= open_max {
            return Ok(None);
        }
        limit.rlim_cur = open_max;
        // SAFETY: as above.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    #[allow(clippy::useless_conversion)] // rlim_t is u64 on most, not all, Unix targets.
    Ok(Some((u64::from(old), u64::from(limit.rlim_cur))))
}

/// Windows has no descriptor limit to raise (sockets are handles, limited
/// by memory).
#[cfg(not(unix))]
pub(super) fn raise_nofile_limit() -> io::Result<Option<(u64, u64)>> {
    Ok(None)
}
