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
