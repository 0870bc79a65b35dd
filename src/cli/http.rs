//! The built-in server's accept loop: HTTP/1 over hyper, with a graceful
//! end that answers every connection it accepted.
//!
//! Neither `axum::serve` nor hyper's graceful shutdown alone does that: a
//! connection accepted whose first bytes have not arrived yet is closed
//! unanswered at the shutdown (hyper-util's protocol detection is cut off,
//! and hyper's HTTP/1 closes a connection that has seen no data). A
//! draining server, the predecessor of `serve --replace`, would so fail a
//! client whose request was on its way. Here a connection is handed to
//! hyper only once it is readable, and hyper has read from it before it can
//! be told to shut down: at the shutdown every accepted connection gets the
//! answer to the request it sent (or is sending), then closes; only
//! connections idle between keep-alive requests are closed at once. The
//! caller bounds the whole by its drain deadline.

use std::future::Future;
use std::io;
use std::task::Poll;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::sync::watch;
use tokio::task::JoinSet;

/// How long an accept loop that hit a resource limit (`EMFILE`, `ENFILE`,
/// `ENOBUFS`) waits before it accepts again, as `axum::serve` does: the
/// connections wait in the kernel's queue meanwhile.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Serves `app` on `listener` until `stop` resolves (or its sender is
/// dropped), then stops accepting, closes the listener, and returns once
/// every connection accepted so far has been answered and closed. Dropping
/// the future (the caller's drain deadline) ends every connection.
pub(crate) async fn serve(
    listener: tokio::net::TcpListener,
    app: Router,
    stop: tokio::sync::oneshot::Receiver<()>,
) -> io::Result<()> {
    let service = TowerToHyperService::new(app);
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder.timer(TokioTimer::new());
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let mut connections = JoinSet::new();
    tokio::pin!(stop);
    loop {
        // Finished connections are collected as we go.
        while connections.try_join_next().is_some() {}
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                // The peer gave up before we accepted: nothing to answer.
                Err(e) if matches!(
                    e.kind(),
                    io::ErrorKind::ConnectionAborted | io::ErrorKind::ConnectionReset
                ) => continue,
                Err(e) => {
                    tracing::warn!("cannot accept a connection: {e}; accepting again shortly");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            },
            _ = &mut stop => break,
        };
        connections.spawn(serve_connection(
            stream,
            builder.clone(),
            service.clone(),
            shutdown_rx.clone(),
        ));
    }
    // The socket may live on in a successor (serve --replace): only our
    // descriptor closes; connections queued in it are the successor's.
    drop(listener);
    let _ = shutdown_tx.send(true);
    while connections.join_next().await.is_some() {}
    Ok(())
}

/// One connection: waits for its first bytes, lets hyper read them, then
/// serves it, shutting it down gracefully (answer what is being asked, then
/// close) once `shutdown` says so.
async fn serve_connection(
    stream: tokio::net::TcpStream,
    builder: hyper::server::conn::http1::Builder,
    service: TowerToHyperService<Router>,
    mut shutdown: watch::Receiver<bool>,
) {
    let _ = stream.set_nodelay(true);
    // Data, or the peer's end (then hyper reads nothing and closes). A peek,
    // not `readable()`, which may wake without data.
    if stream.peek(&mut [0u8; 1]).await.is_err() {
        return;
    }
    let connection = builder.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(connection);
    // One poll reads what has arrived into hyper's buffer: from then on a
    // graceful shutdown answers this request instead of dropping it.
    let first = std::future::poll_fn(|cx| Poll::Ready(connection.as_mut().poll(cx))).await;
    if let Poll::Ready(result) = first {
        log_end(result);
        return;
    }
    let mut shutting_down = false;
    loop {
        if !shutting_down && *shutdown.borrow_and_update() {
            shutting_down = true;
            connection.as_mut().graceful_shutdown();
        }
        tokio::select! {
            result = connection.as_mut() => {
                log_end(result);
                return;
            }
            changed = shutdown.changed(), if !shutting_down => {
                if changed.is_err() {
                    // The accept loop is gone without a shutdown: serve on.
                    shutting_down = true;
                }
            }
        }
    }
}

fn log_end(result: Result<(), hyper::Error>) {
    if let Err(e) = result {
        tracing::debug!("connection ended with an error: {e}");
    }
}
