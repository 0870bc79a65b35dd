//! Forwarding TCP connections from a listening socket to a backend address:
//! the forwarding core of `serve --proxy`.
//!
//! A [`Proxy`] accepts on the listening socket it is given and forwards each
//! connection, byte for byte and in both directions, to one backend address.
//! It knows nothing of the protocol above TCP (HTTP/1.1, HTTP/2, WebSocket,
//! SSE streams all pass), and it respects half-close: a side that shuts its
//! write half has the other side see EOF, and what comes back still reaches
//! it. A connection ends when both directions have ended, or at once when
//! either side resets (then both are closed, the other with a reset too, so
//! neither side takes a cut connection for a complete one).
//!
//! Linux moves the bytes with `splice(2)` through a pipe per direction, so
//! they never enter user space; other platforms copy through a small buffer.
//! Either way every connection is a task on the caller's tokio runtime, never
//! a thread, and an idle one holds no buffer and no pipe.

use std::future::poll_fn;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::Poll;
use std::time::{Duration, Instant};

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio::task::{JoinHandle, JoinSet};

pub mod backend;
mod front;
mod nofile;

pub use front::Front;

#[cfg_attr(not(target_os = "linux"), path = "proxy/other.rs")]
#[cfg_attr(target_os = "linux", path = "proxy/linux.rs")]
mod sys;

// The buffered path, compiled on Linux too in tests, so the suite runs it
// here and not only under Wine.
#[cfg(all(test, target_os = "linux"))]
#[path = "proxy/other.rs"]
#[allow(dead_code)]
mod other;

#[cfg(test)]
mod tests;

/// The default of [`ProxyOptions::max_connections`].
///
/// 4096 is far above what one server behind the proxy answers at once (an
/// LLM server serves a few dozen streams), and at up to 6 descriptors per
/// connection (two sockets, two pipes) it stays within the descriptor limit
/// [`raise_nofile_limit`] gives on common systems (hard limits of 2^19 or
/// 2^20), and within the kernel's default listen queue (`somaxconn` is 4096
/// since Linux 5.4), where the connections beyond it wait.
pub const DEFAULT_MAX_CONNECTIONS: usize = 4096;

/// The accept loop's back-off after an accept failed (out of descriptors:
/// `EMFILE`, `ENFILE`; or kernel memory: `ENOBUFS`, `ENOMEM`): from the
/// first to the last, doubling, as the handover's accept loop does. The
/// connection stays queued, so accepting again at once would spin. No
/// reserve descriptor (the handover's way to answer "busy"): it would take
/// the connection only to close it, and a proxied client waits, never
/// refused.
const ACCEPT_BACKOFF: (Duration, Duration) = (Duration::from_millis(10), Duration::from_secs(1));

/// How often a failing backend, or a failing accept, is reported at `warn`
/// level; the failures in between are logged at `debug` (a backend's are
/// counted in its next warning).
const WARN_INTERVAL: Duration = Duration::from_secs(10);

/// How a [`Proxy`] accepts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyOptions {
    /// Connections forwarded at once. Beyond it the proxy stops calling
    /// `accept`: new connections wait in the kernel's listen queue (never
    /// refused by the proxy) until one of the forwarded ones closes. 0 is
    /// taken as 1.
    pub max_connections: usize,
}

impl Default for ProxyOptions {
    /// [`DEFAULT_MAX_CONNECTIONS`].
    fn default() -> Self {
        ProxyOptions {
            max_connections: DEFAULT_MAX_CONNECTIONS,
        }
    }
}

/// What [`Proxy::drain`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DrainReport {
    /// Connections the proxy accepted in its whole life (each one was
    /// forwarded, or closed because the backend could not be reached).
    pub forwarded: u64,
    /// Connections still open when the drain's timeout passed, closed by
    /// the proxy (with a reset on both sides).
    pub cut: usize,
    /// Accepted connections closed because connecting to the backend failed
    /// (refused, reset, out of descriptors), in the proxy's whole life.
    pub backend_failures: u64,
}

/// A running TCP forwarder: accepts on a listening socket and forwards each
/// connection to a backend address, as tasks of the tokio runtime it was
/// started in.
///
/// Dropping it without [`Proxy::drain`] stops accepting and closes every
/// connection it forwards.
///
/// # Examples
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> std::io::Result<()> {
/// use std::time::Duration;
/// use llmlb::supervise::proxy::{Proxy, ProxyOptions};
///
/// let backend = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
/// let public = std::net::TcpListener::bind("127.0.0.1:0")?;
/// let address = public.local_addr()?;
/// let proxy = Proxy::start(public, backend.local_addr()?, ProxyOptions::default())?;
///
/// let _client = tokio::net::TcpStream::connect(address).await?;
/// let (_served, _) = backend.accept().await?; // forwarded to the backend
/// assert_eq!(proxy.active(), 1);
///
/// // The connection stays open: the drain cuts it at its timeout.
/// let report = proxy.drain(Duration::from_millis(10)).await;
/// assert_eq!((report.forwarded, report.cut), (1, 1));
/// # Ok(())
/// # }
/// ```
#[must_use = "dropping the proxy stops it and closes its connections"]
pub struct Proxy {
    shared: Arc<Shared>,
    accept_task: Option<JoinHandle<()>>,
}

/// What the accept loop, the handle and the connections share.
struct Shared {
    /// The proxy's copy of the listening socket; `None` once it stopped
    /// accepting. Behind a mutex so that [`Proxy::stop_accepting`] closes it
    /// at once, not when the accept task next runs.
    listener: Mutex<Option<TcpListener>>,
    stop: watch::Sender<bool>,
    copier: Copier,
    /// The forwarding tasks, each ending with whether it was cut; `None`
    /// once the proxy is dropped. Dropping the set aborts every task, which
    /// closes both of its sockets.
    connections: Mutex<Option<JoinSet<bool>>>,
    /// Tells every connection to close at once, with a reset (the drain's
    /// timeout).
    cut: watch::Sender<bool>,
    stats: Arc<Stats>,
}

/// What each connection task reports into. Tasks hold this, not [`Shared`]
/// (which owns them): no reference cycle.
struct Stats {
    backend: SocketAddr,
    active: AtomicUsize,
    /// Accepted, and the backend connection not yet made (or failed).
    connecting: AtomicUsize,
    forwarded: AtomicU64,
    backend_failures: AtomicU64,
    /// When the last backend failure was logged at `warn`, and how many
    /// failures were logged at `debug` only since.
    last_warned: Mutex<(Option<Instant>, u64)>,
}

/// Which copy moves the bytes.
#[derive(Debug, Clone, Copy)]
enum Copier {
    /// The platform's own: `splice` on Linux, the buffered copy elsewhere.
    Native,
    /// The buffered copy where it is not native (tests of it on Linux).
    #[cfg(all(test, target_os = "linux"))]
    Buffered,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Proxy {
    /// Starts accepting on `listener` and forwarding each connection to
    /// `backend`.
    ///
    /// Must be called inside a tokio runtime (with I/O and time enabled);
    /// the forwarding runs as its tasks. Takes ownership of `listener`: the
    /// caller may keep other copies of the same socket (for a handover); the
    /// proxy closes only its own. The socket is set non-blocking, which, as
    /// a property of the socket, every copy shares.
    ///
    /// # Errors
    /// No tokio runtime is current, or the socket cannot be registered with
    /// it (not a listening socket, out of memory).
    pub fn start(
        listener: std::net::TcpListener,
        backend: SocketAddr,
        options: ProxyOptions,
    ) -> io::Result<Proxy> {
        Proxy::start_with(listener, backend, options, Copier::Native)
    }

    fn start_with(
        listener: std::net::TcpListener,
        backend: SocketAddr,
        options: ProxyOptions,
        copier: Copier,
    ) -> io::Result<Proxy> {
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|_| io::Error::other("the proxy must be started inside a tokio runtime"))?;
        listener.set_nonblocking(true)?;
        let listener = {
            let _entered = runtime.enter();
            TcpListener::from_std(listener)?
        };
        let shared = Arc::new(Shared {
            listener: Mutex::new(Some(listener)),
            stop: watch::channel(false).0,
            cut: watch::channel(false).0,
            copier,
            connections: Mutex::new(Some(JoinSet::new())),
            stats: Arc::new(Stats {
                backend,
                active: AtomicUsize::new(0),
                connecting: AtomicUsize::new(0),
                forwarded: AtomicU64::new(0),
                backend_failures: AtomicU64::new(0),
                last_warned: Mutex::new((None, 0)),
            }),
        });
        let limit = Arc::new(Semaphore::new(
            options.max_connections.clamp(1, Semaphore::MAX_PERMITS),
        ));
        let accept_task = runtime.spawn(accept_loop(Arc::clone(&shared), limit));
        Ok(Proxy {
            shared,
            accept_task: Some(accept_task),
        })
    }

    /// Stops accepting at once: the proxy's copy of the listening socket is
    /// closed before this returns. Connections already accepted go on being
    /// forwarded. Connections still queued stay with the socket's other
    /// copies (a successor's); with no other copy the kernel resets them.
    pub fn stop_accepting(&self) {
        drop(lock(&self.shared.listener).take());
        self.shared.stop.send_replace(true);
    }

    /// Connections being forwarded now (accepted and not yet closed,
    /// including one whose backend connection is still being made).
    pub fn active(&self) -> usize {
        self.shared.stats.active.load(Ordering::SeqCst)
    }

    /// Connections accepted whose backend connection is still being made.
    pub fn connecting(&self) -> usize {
        self.shared.stats.connecting.load(Ordering::SeqCst)
    }

    /// Stops accepting, then waits (up to `bound`) until every connection
    /// it accepted has its backend connection made or failed: from then on
    /// the backend may stop listening (a graceful shutdown) without a
    /// connection the proxy accepted being refused by it.
    pub async fn stop_accepting_and_settle(&mut self, bound: Duration) {
        self.stop_accepting();
        let deadline = tokio::time::Instant::now() + bound;
        if let Some(task) = self.accept_task.take() {
            // A connection it accepted just before the stop is counted
            // once it returns (it returns as soon as it sees the stop).
            let _ = tokio::time::timeout_at(deadline, task).await;
        }
        while self.connecting() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    /// Stops accepting, then waits until every forwarded connection has
    /// closed or `timeout` has passed, then cuts the rest (closes both of
    /// their sockets with a reset, so that neither side takes the cut for
    /// a complete exchange). Returns once every connection is closed.
    pub async fn drain(mut self, timeout: Duration) -> DrainReport {
        self.stop_accepting();
        if let Some(task) = self.accept_task.take() {
            // It returns as soon as it sees the stop; after it, nothing is
            // added to the set.
            let _ = task.await;
        }
        let taken = lock(&self.shared.connections).take();
        let mut cut = 0;
        if let Some(mut connections) = taken {
            let all_closed = tokio::time::timeout(timeout, async {
                while connections.join_next().await.is_some() {}
            })
            .await
            .is_ok();
            if !all_closed {
                // Each task resets its sockets and ends at its next poll.
                self.shared.cut.send_replace(true);
                while let Some(end) = connections.join_next().await {
                    if end.unwrap_or(false) {
                        cut += 1;
                    }
                }
            }
        }
        let stats = &self.shared.stats;
        DrainReport {
            forwarded: stats.forwarded.load(Ordering::SeqCst),
            cut,
            backend_failures: stats.backend_failures.load(Ordering::SeqCst),
        }
    }
}

impl std::fmt::Debug for Proxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proxy")
            .field("backend", &self.shared.stats.backend)
            .field("active", &self.active())
            .finish_non_exhaustive()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop_accepting();
        if let Some(task) = self.accept_task.take() {
            task.abort();
        }
        // Dropping the set aborts every forwarding task.
        drop(lock(&self.shared.connections).take());
    }
}

impl Shared {
    fn poll_accept(&self, cx: &mut std::task::Context<'_>) -> Poll<io::Result<TcpStream>> {
        match &*lock(&self.listener) {
            Some(listener) => listener.poll_accept(cx).map_ok(|(stream, _)| stream),
            // Stopped: the stop signal ends the loop.
            None => Poll::Pending,
        }
    }
}

async fn accept_loop(shared: Arc<Shared>, limit: Arc<Semaphore>) {
    let mut stop = shared.stop.subscribe();
    let mut backoff = Duration::ZERO;
    // A warning per streak of failures, at most one per interval.
    let mut last_warned: Option<Instant> = None;
    loop {
        // Beyond the limit, no accept: the connections wait in the kernel's
        // queue instead of being refused.
        let permit = tokio::select! {
            biased;
            _ = stop.wait_for(|stopped| *stopped) => return,
            permit = Arc::clone(&limit).acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => return,
            },
        };
        let accepted = tokio::select! {
            biased;
            _ = stop.wait_for(|stopped| *stopped) => return,
            accepted = poll_fn(|cx| shared.poll_accept(cx)) => accepted,
        };
        match accepted {
            Ok(client) => {
                backoff = Duration::ZERO;
                let guard = Active::new(&shared.stats, permit);
                let mut connections = lock(&shared.connections);
                let Some(connections) = connections.as_mut() else {
                    // The proxy was dropped while this was accepted.
                    return;
                };
                // Finished ones are collected as we go.
                while connections.try_join_next().is_some() {}
                connections.spawn(forward_connection(
                    client,
                    guard,
                    shared.copier,
                    shared.cut.subscribe(),
                    shared.stop.subscribe(),
                ));
            }
            // The peer gave up before we accepted: nothing to forward.
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::ConnectionAborted | io::ErrorKind::ConnectionReset
                ) => {}
            Err(e) => {
                let now = Instant::now();
                let warn = backoff.is_zero()
                    && last_warned.is_none_or(|at| now.duration_since(at) >= WARN_INTERVAL);
                backoff = (backoff * 2).clamp(ACCEPT_BACKOFF.0, ACCEPT_BACKOFF.1);
                if warn {
                    last_warned = Some(now);
                    tracing::warn!(
                        "proxy to {}: cannot accept a connection: {e}; the connections wait in the queue, accepting again in {} ms",
                        shared.stats.backend,
                        backoff.as_millis()
                    );
                } else {
                    tracing::debug!(
                        "proxy to {}: cannot accept a connection: {e}; accepting again in {} ms",
                        shared.stats.backend,
                        backoff.as_millis()
                    );
                }
                drop(permit);
                tokio::select! {
                    biased;
                    _ = stop.wait_for(|stopped| *stopped) => return,
                    () = tokio::time::sleep(backoff) => {}
                }
            }
        }
    }
}

/// One forwarded connection, counted in [`Proxy::active`] and in the limit
/// for as long as it lives (its task, aborted or not).
struct Active {
    stats: Arc<Stats>,
    _permit: OwnedSemaphorePermit,
    /// Still counted in [`Stats::connecting`].
    connecting: bool,
}

impl Active {
    fn new(stats: &Arc<Stats>, permit: OwnedSemaphorePermit) -> Active {
        stats.active.fetch_add(1, Ordering::SeqCst);
        stats.connecting.fetch_add(1, Ordering::SeqCst);
        stats.forwarded.fetch_add(1, Ordering::SeqCst);
        Active {
            stats: Arc::clone(stats),
            _permit: permit,
            connecting: true,
        }
    }

    /// The backend connection is made, or failed.
    fn connected(&mut self) {
        if std::mem::take(&mut self.connecting) {
            self.stats.connecting.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

impl Drop for Active {
    fn drop(&mut self) {
        self.connected();
        self.stats.active.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Runs a connection's two directions, `up` (client to backend) and `down`
/// (backend to client), until both have ended or either fails. Once the
/// proxy has stopped accepting (`stopped`: a stop or a handover, whose
/// command is told to stop), a connection whose backend has said all it
/// will (`down` ended: its command closed it, as a graceful shutdown does
/// with an idle keep-alive connection) ends too, without waiting for the
/// client's side: the command behind it is going away, and a client that
/// keeps an idle connection open must not hold the drain until its timeout.
async fn both_ways(
    up: impl std::future::Future<Output = io::Result<()>>,
    down: impl std::future::Future<Output = io::Result<()>>,
    stopped: &mut watch::Receiver<bool>,
) -> io::Result<()> {
    tokio::pin!(up, down);
    let (mut up_done, mut down_done) = (false, false);
    while !(up_done && down_done) {
        tokio::select! {
            ended = &mut up, if !up_done => {
                ended?;
                up_done = true;
            }
            ended = &mut down, if !down_done => {
                ended?;
                down_done = true;
            }
            Ok(_) = stopped.wait_for(|stopped| *stopped), if down_done => return Ok(()),
        }
    }
    Ok(())
}

/// One connection's whole life; returns whether it was cut.
async fn forward_connection(
    mut client: TcpStream,
    mut active: Active,
    copier: Copier,
    mut cut: watch::Receiver<bool>,
    mut stopped: watch::Receiver<bool>,
) -> bool {
    let mut backend = None;
    let was_cut = tokio::select! {
        biased;
        _ = cut.wait_for(|cut| *cut) => true,
        () = connect_and_forward(&mut client, &mut backend, &mut active, copier, &mut stopped) => false,
    };
    if was_cut {
        // A reset, not an EOF, which either side could take for the end
        // of a complete exchange.
        let _ = client.set_zero_linger();
        if let Some(backend) = &backend {
            let _ = backend.set_zero_linger();
        }
    }
    was_cut
}

async fn connect_and_forward(
    client: &mut TcpStream,
    backend: &mut Option<TcpStream>,
    active: &mut Active,
    copier: Copier,
    stopped: &mut watch::Receiver<bool>,
) {
    // Small responses must not wait for Nagle's algorithm at either hop.
    let _ = client.set_nodelay(true);
    let connected = TcpStream::connect(active.stats.backend).await;
    active.connected();
    let stats = &active.stats;
    let backend = match connected {
        Ok(connected) => backend.insert(connected),
        Err(e) => {
            stats.backend_failed(&e);
            // A reset, not an EOF, which the client could take for a
            // complete (empty) answer.
            let _ = client.set_zero_linger();
            return;
        }
    };
    let _ = backend.set_nodelay(true);
    let forwarded = match copier {
        Copier::Native => sys::forward(client, backend, stopped).await,
        #[cfg(all(test, target_os = "linux"))]
        Copier::Buffered => other::forward(client, backend, stopped).await,
    };
    if let Err(e) = forwarded {
        tracing::debug!("proxy to {}: connection ended: {e}", stats.backend);
        // One side reset or failed: the other learns it the same way.
        let _ = client.set_zero_linger();
        let _ = backend.set_zero_linger();
    }
}

impl Stats {
    fn backend_failed(&self, e: &io::Error) {
        self.backend_failures.fetch_add(1, Ordering::SeqCst);
        let now = Instant::now();
        let mut last = lock(&self.last_warned);
        let due = last
            .0
            .is_none_or(|at| now.duration_since(at) >= WARN_INTERVAL);
        if due {
            let unreported = std::mem::take(&mut last.1);
            last.0 = Some(now);
            drop(last);
            if unreported == 0 {
                tracing::warn!(
                    "proxy: cannot connect to the backend {}: {e}; closed the client's connection",
                    self.backend
                );
            } else {
                tracing::warn!(
                    "proxy: cannot connect to the backend {}: {e}; closed the client's connection ({unreported} more such failures since the last warning)",
                    self.backend
                );
            }
        } else {
            last.1 += 1;
            drop(last);
            tracing::debug!(
                "proxy: cannot connect to the backend {}: {e}; closed the client's connection",
                self.backend
            );
        }
    }
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit: a proxy holds several
/// descriptors per connection (two sockets, and on Linux up to two pipes).
///
/// Returns `(old, new)` soft limits when it raised it, `None` when there is
/// nothing to do (already at the hard limit, or not Unix). On macOS, where
/// the kernel refuses a soft limit above `OPEN_MAX` when the hard limit is
/// unlimited, it raises to `OPEN_MAX` instead. The caller logs it (at debug
/// level: it is routine).
///
/// # Errors
/// `getrlimit` or `setrlimit` failed.
pub fn raise_nofile_limit() -> io::Result<Option<(u64, u64)>> {
    nofile::raise()
}
