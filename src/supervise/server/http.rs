//! HTTP mode, `llmlb serve` without a command: `/health` served on the
//! port's socket, and the accept loop under it: HTTP/1 over hyper, with a
//! graceful end that answers every connection it accepted.
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

use std::sync::Arc;

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::lock::{PortGuard, ServeState};
use crate::supervise::activation::Activated;
use crate::supervise::reload::Relaunch;
use crate::supervise::socket_pass::DEFAULT_NAME;
use crate::supervise::SharedLock;

use super::manager::{announce, tell_handed_over, tell_status, LockLost};
use super::options::Drains;
use super::report::{bind_failed, fail, host_port};
use super::signals::{self, Signals};
use super::take::{handovers, Commit, DrainRequested, Handovers, PortPidfile, TakenOver};

/// How long an accept loop that hit a resource limit (`EMFILE`, `ENFILE`,
/// `ENOBUFS`) waits before it accepts again, as `axum::serve` does: the
/// connections wait in the kernel's queue meanwhile.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Serves `app` on `listener` until `stop` resolves (or its sender is
/// dropped), then stops accepting, closes the listener, and returns once
/// every connection accepted so far has been answered and closed. Dropping
/// the future (the caller's drain deadline) ends every connection.
async fn accept_loop(
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

/// What `/health` reports about this server.
struct Health {
    pid: u32,
    port: u16,
    started_at: DateTime<Utc>,
    started_at_text: String,
    host: Option<String>,
}

async fn health(State(h): State<Arc<Health>>) -> Json<serde_json::Value> {
    let uptime = (Utc::now() - h.started_at).num_seconds().max(0);
    Json(serde_json::json!({
        "status": "ok",
        "pid": h.pid,
        "port": h.port,
        "started_at": h.started_at_text,
        "uptime_secs": uptime,
        "host": h.host,
        "version": env!("CARGO_PKG_VERSION"),
    }))
}

/// HTTP mode: serves `/health` on the port's socket (bound here, received
/// by socket activation, or handed over by a predecessor) until a stop, a
/// handover or the port's loss; returns the exit code.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn serve_http(
    lock: &SharedLock<PortGuard>,
    mut signals: Signals,
    lost: &mut LockLost,
    (host, port): (&str, u16),
    activated: Option<Activated>,
    taken: Option<TakenOver>,
    pidfile: &Arc<PortPidfile>,
    relaunch: Option<&Relaunch>,
    times: (Duration, Drains),
) -> i32 {
    let (bound, predecessor) = match taken {
        Some(taken) => match taken.sockets.into_iter().next() {
            Some(socket) => (Ok((socket.listener, socket.name)), Some(taken.predecessor)),
            None => {
                // Nothing to serve on: give the port back at once.
                let (handovers, _) =
                    handovers(lock, port, &[], Some(taken.predecessor), pidfile, None);
                handovers.abort();
                return fail(format!(
                    "the server that held port {port} handed over no listening socket; it keeps serving"
                ));
            }
        },
        None => (
            match activated {
                Some(socket) => {
                    let name = socket.name().unwrap_or(DEFAULT_NAME).to_owned();
                    Ok((socket.into_listener(), name))
                }
                None => std::net::TcpListener::bind((host, port))
                    .map(|l| (l, DEFAULT_NAME.to_owned()))
                    .map_err(|e| bind_failed(&e, host, port)),
            },
            None,
        ),
    };
    let (listener, name) = match bound {
        Ok(bound) => bound,
        Err(code) => return code,
    };
    let (handovers, mut drain) = handovers(
        lock,
        port,
        &[(&listener, name.as_str())],
        predecessor,
        pidfile,
        relaunch,
    );
    signals.on_reload(&handovers);
    let code = serve_http_on(
        lock,
        &mut signals,
        lost,
        host,
        port,
        listener,
        &handovers,
        &mut drain,
        times,
    )
    .await;
    handovers.withdraw();
    code
}

#[allow(clippy::too_many_arguments)]
async fn serve_http_on(
    lock: &SharedLock<PortGuard>,
    signals: &mut Signals,
    lost: &mut LockLost,
    host: &str,
    port: u16,
    listener: std::net::TcpListener,
    handovers: &Arc<Handovers>,
    drain: &mut DrainRequested,
    (grace, drains): (Duration, Drains),
) -> i32 {
    let listener = match listener
        .set_nonblocking(true)
        .and_then(|()| tokio::net::TcpListener::from_std(listener))
    {
        Ok(l) => l,
        Err(e) => {
            handovers.abort();
            return fail(format!("cannot serve on the socket of port {port}: {e}"));
        }
    };
    let address = listener
        .local_addr()
        .map_or_else(|_| host_port(host, port), |a| a.to_string());
    let Some(health_info) = lock.with(|g| {
        let info = g.info();
        Health {
            pid: info.pid,
            port,
            started_at: info.started_at,
            started_at_text: info.started_at_display(),
            host: info.host.clone(),
        }
    }) else {
        return fail("the lock was released before the server started");
    };
    let app = Router::new()
        .route("/health", get(health))
        .with_state(Arc::new(health_info));
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let mut server = tokio::spawn(accept_loop(listener, app, stop_rx));
    // Bound and accepting (the kernel queues connections from the bind on).
    announce(lock, ServeState::Ready);
    // Only now may a predecessor stop accepting: this server accepts on the
    // same socket.
    handovers.ready(Commit {
        grace,
        ..Commit::default()
    });
    tell_status(&format!("serving on {address}"));
    tracing::info!("listening on http://{address} (PID {})", std::process::id());

    let (code, deadline) = tokio::select! {
        result = &mut server => {
            // The server ended on its own: only an accept-loop failure does that.
            return match result {
                Ok(Ok(())) => 0,
                Ok(Err(e)) => fail(format!("server on port {port} failed: {e}")),
                Err(e) => fail(format!("server on port {port} failed: {e}")),
            };
        }
        sig = signals.recv() => {
            if let Some(pid) = handovers.abort() {
                eprintln!(
                    "Interrupted ({}) while taking over port {port}; PID {pid} keeps serving it",
                    signals::name(sig)
                );
                server.abort();
                return signals::exit_code(sig);
            }
            tracing::info!(
                "received {}, shutting down (draining for up to {}s)",
                signals::name(sig),
                drains.stopped.as_secs_f64()
            );
            announce(lock, ServeState::Stopping);
            (0, drains.stopped)
        }
        // A successor serves on our socket now, and holds the record: stop
        // accepting, finish what was accepted, and exit.
        Ok(pid) = &mut *drain => {
            tracing::info!(
                "handed port {port} over to PID {pid}; finishing in-flight requests (up to {}s)",
                drains.handed_over.as_secs_f64()
            );
            tell_handed_over(port, pid);
            (0, drains.handed_over)
        }
        // The record is another holder's now: nothing of ours to write.
        why = lost.recv() => (fail(why), drains.stopped),
    };
    let _ = stop_tx.send(());
    let cut = tokio::select! {
        _ = &mut server => false,
        _ = tokio::time::sleep(deadline) => {
            tracing::warn!("in-flight requests did not finish within {}s (--drain-timeout); closing them", deadline.as_secs_f64());
            true
        }
        sig = signals.recv() => {
            tracing::warn!("received {} again; closing connections now", signals::name(sig));
            true
        }
    };
    if cut {
        // Wait for the cancelled task to be dropped (its listener with
        // it): the release that follows must find no copy of our listening
        // socket open, or the next server could not bind the port.
        server.abort();
        let _ = (&mut server).await;
    }
    code
}
