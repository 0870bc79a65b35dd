//! The forwarding core over real sockets on loopback, for each copy the
//! platform has (on Linux: `splice` and the buffered copy).

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::{Copier, DrainReport, Proxy, ProxyOptions};

/// The bound of every wait for something that must happen.
const DEADLINE: Duration = Duration::from_secs(20);

fn copiers() -> Vec<Copier> {
    #[cfg(target_os = "linux")]
    return vec![Copier::Native, Copier::Buffered];
    #[cfg(not(target_os = "linux"))]
    return vec![Copier::Native];
}

/// Runs `body` once per copier, each on a fresh runtime.
fn each_copier<F, Fut>(body: F)
where
    F: Fn(Copier) -> Fut,
    Fut: Future<Output = ()>,
{
    for copier in copiers() {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("a tokio runtime");
        runtime.block_on(body(copier));
    }
}

async fn within<T>(what: &str, future: impl Future<Output = T>) -> T {
    match tokio::time::timeout(DEADLINE, future).await {
        Ok(value) => value,
        Err(_) => panic!("{what}: not within {DEADLINE:?}"),
    }
}

fn start(backend: SocketAddr, max_connections: usize, copier: Copier) -> (Proxy, SocketAddr) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind the proxy's port");
    let addr = listener.local_addr().expect("its address");
    let proxy = Proxy::start_with(listener, backend, ProxyOptions { max_connections }, copier)
        .expect("start the proxy");
    (proxy, addr)
}

/// A backend that echoes every connection, passing its EOF on; counts the
/// connections it accepted.
async fn echo_backend() -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind a backend");
    let addr = listener.local_addr().expect("its address");
    let accepted = Arc::new(AtomicUsize::new(0));
    tokio::spawn(echo_on(listener, Arc::clone(&accepted)));
    (addr, accepted)
}

async fn echo_on(listener: TcpListener, accepted: Arc<AtomicUsize>) {
    while let Ok((stream, _)) = listener.accept().await {
        accepted.fetch_add(1, Ordering::SeqCst);
        tokio::spawn(async move {
            // No buffer before the first byte: the idle test counts memory.
            let _ = stream.readable().await;
            let (mut read, mut write) = stream.into_split();
            if tokio::io::copy(&mut read, &mut write).await.is_ok() {
                let _ = write.shutdown().await;
            }
        });
    }
}

/// An address nothing listens on (a port just bound and closed again).
fn dead_address() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a port");
    listener.local_addr().expect("its address")
}

/// The byte at `index` of stream `seed`: not periodic at any buffer size.
fn pattern(seed: u64, index: u64) -> u8 {
    let x = index.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ seed.wrapping_mul(0xC2B2_AE3D_27D4_EB4F);
    (x >> 29) as u8 ^ (index >> 12) as u8
}

/// Sends `len` bytes of stream `seed` through `addr` and checks the echo
/// byte for byte, both directions at once; then the EOF must come back.
async fn echo_through(addr: SocketAddr, seed: u64, len: u64) {
    let stream = TcpStream::connect(addr)
        .await
        .expect("connect to the proxy");
    let (mut read, mut write) = stream.into_split();
    let writer = tokio::spawn(async move {
        let mut sent = 0;
        let mut chunk = Vec::with_capacity(50_000);
        while sent < len {
            // Odd chunk sizes, so no write lines up with a pipe or a buffer.
            let size = (len - sent).min(1 + (sent * 7 + seed) % 49_999);
            chunk.clear();
            chunk.extend((sent..sent + size).map(|i| pattern(seed, i)));
            write.write_all(&chunk).await.expect("write to the proxy");
            sent += size;
        }
        write.shutdown().await.expect("shut the write half");
    });
    let mut got = 0u64;
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        let n = read.read(&mut buf).await.expect("read the echo");
        if n == 0 {
            break;
        }
        for (k, byte) in buf[..n].iter().enumerate() {
            let index = got + k as u64;
            assert_eq!(
                *byte,
                pattern(seed, index),
                "stream {seed} of {len} bytes: byte {index} differs"
            );
        }
        got += n as u64;
    }
    assert_eq!(got, len, "stream {seed}: echoed bytes");
    writer.await.expect("the writer");
}

#[test]
fn echoes_every_size_byte_for_byte_in_both_directions_at_once() {
    each_copier(|copier| async move {
        let (backend, _) = echo_backend().await;
        let (proxy, addr) = start(backend, 64, copier);
        let sizes = [
            0,
            1,
            1_000,
            65_535,
            65_536,
            65_537,
            1 << 20,
            (5 << 20) + 3,
            9 << 20,
        ];
        let mut streams = Vec::new();
        for (seed, len) in sizes.into_iter().enumerate() {
            streams.push(tokio::spawn(echo_through(addr, seed as u64, len)));
        }
        within("the echoes", async {
            for stream in streams {
                stream.await.expect("an echo");
            }
        })
        .await;
        let report = within("the drain", proxy.drain(DEADLINE)).await;
        assert_eq!(
            report,
            DrainReport {
                forwarded: sizes.len() as u64,
                cut: 0,
                backend_failures: 0
            }
        );
    });
}

#[test]
fn half_close_from_the_client_reaches_the_backend_and_its_reply_the_client() {
    each_copier(|copier| async move {
        // Answers once the client's EOF arrives, then closes.
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let backend = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            let mut request = Vec::new();
            stream.read_to_end(&mut request).await.unwrap();
            let reply = format!("got {} bytes", request.len());
            stream.write_all(reply.as_bytes()).await.unwrap();
        });
        let (_proxy, addr) = start(backend, 8, copier);
        let mut client = TcpStream::connect(addr).await.unwrap();
        client.write_all(b"hello").await.unwrap();
        client.shutdown().await.unwrap();
        let mut reply = String::new();
        within(
            "the reply after the client's EOF",
            client.read_to_string(&mut reply),
        )
        .await
        .expect("read the reply");
        assert_eq!(reply, "got 5 bytes");
    });
}

#[test]
fn half_close_from_the_backend_reaches_the_client_which_can_still_send() {
    each_copier(|copier| async move {
        // Greets, shuts its write half, then reads to the client's EOF.
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let backend = listener.local_addr().unwrap();
        let (received_tx, received) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            stream.write_all(b"greeting").await.unwrap();
            stream.shutdown().await.unwrap();
            let mut request = Vec::new();
            stream.read_to_end(&mut request).await.unwrap();
            let _ = received_tx.send(request);
        });
        let (_proxy, addr) = start(backend, 8, copier);
        let mut client = TcpStream::connect(addr).await.unwrap();
        let mut greeting = Vec::new();
        within("the backend's EOF", client.read_to_end(&mut greeting))
            .await
            .expect("read the greeting");
        assert_eq!(greeting, b"greeting");
        client.write_all(b"sent after the EOF").await.unwrap();
        client.shutdown().await.unwrap();
        let request = within("the backend reading the client", received)
            .await
            .unwrap();
        assert_eq!(request, b"sent after the EOF");
    });
}

/// Reads until the connection ends (EOF or an error): it must end.
async fn sees_closed(what: &str, stream: &mut TcpStream) {
    let mut buf = [0u8; 1024];
    within(what, async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
}

#[test]
fn a_refusing_backend_closes_the_client_and_the_proxy_serves_on() {
    each_copier(|copier| async move {
        let backend = dead_address();
        let (proxy, addr) = start(backend, 8, copier);
        // The reset may come before the connect has looked at its socket.
        if let Ok(mut client) = TcpStream::connect(addr).await {
            let _ = client.write_all(b"GET / HTTP/1.1\r\n\r\n").await;
            sees_closed("the client of a refusing backend", &mut client).await;
        }
        within("the refused connection ending", async {
            while proxy.active() > 0 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await;
        // The backend comes up (on the port just refused): forwarded now.
        let listener = TcpListener::bind(backend)
            .await
            .expect("bind the backend's port again");
        tokio::spawn(echo_on(listener, Arc::default()));
        within(
            "an echo once the backend is up",
            echo_through(addr, 7, 100_000),
        )
        .await;
        let report = within("the drain", proxy.drain(DEADLINE)).await;
        assert_eq!(report.forwarded, 2);
        assert_eq!(report.backend_failures, 1);
        assert_eq!(report.cut, 0);
    });
}

/// Unix only: Wine, the only Windows this suite runs on, turns an abortive
/// close (`SO_LINGER` 0) into a plain EOF, so the side that should see a
/// reset sees a half-close instead. The buffered path Windows uses is run
/// here on Linux too (`Copier::Buffered`).
#[cfg(unix)]
#[test]
fn a_reset_on_either_side_closes_both() {
    each_copier(|copier| async move {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let backend = listener.local_addr().unwrap();
        let (proxy, addr) = start(backend, 8, copier);

        // The backend resets mid-stream.
        let mut client = TcpStream::connect(addr).await.unwrap();
        let (mut served, _) = within("the backend's accept", listener.accept())
            .await
            .unwrap();
        served.write_all(b"partial").await.unwrap();
        let mut partial = [0u8; 7];
        within("the partial answer", client.read_exact(&mut partial))
            .await
            .unwrap();
        assert_eq!(&partial, b"partial");
        served.set_zero_linger().unwrap();
        drop(served);
        sees_closed("the client after the backend's reset", &mut client).await;
        drop(client);

        // The client resets mid-stream.
        let mut client = TcpStream::connect(addr).await.unwrap();
        let (mut served, _) = within("the backend's accept", listener.accept())
            .await
            .unwrap();
        client.write_all(b"partial").await.unwrap();
        within("the partial request", served.read_exact(&mut partial))
            .await
            .unwrap();
        client.set_zero_linger().unwrap();
        drop(client);
        sees_closed("the backend after the client's reset", &mut served).await;

        within("both forwardings ending", async {
            while proxy.active() > 0 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await;
    });
}

#[test]
fn beyond_max_connections_a_client_waits_in_the_queue_until_one_closes() {
    each_copier(|copier| async move {
        let (backend, accepted) = echo_backend().await;
        let (proxy, addr) = start(backend, 2, copier);
        let mut first = TcpStream::connect(addr).await.unwrap();
        let mut second = TcpStream::connect(addr).await.unwrap();
        for client in [&mut first, &mut second] {
            client.write_all(b"x").await.unwrap();
            within("an echo below the limit", client.read_exact(&mut [0u8; 1]))
                .await
                .unwrap();
        }
        // Connected by the kernel (the queue), not accepted by the proxy.
        let mut third = TcpStream::connect(addr)
            .await
            .expect("the queue takes the third");
        third.write_all(b"y").await.unwrap();
        // A wait that can only miss a defect, never invent one.
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(
            proxy.active(),
            2,
            "a third connection was accepted beyond the limit"
        );
        assert_eq!(
            accepted.load(Ordering::SeqCst),
            2,
            "the backend saw a third connection"
        );
        drop(first);
        let mut echo = [0u8; 1];
        within(
            "the queued client forwarded once one closed",
            third.read_exact(&mut echo),
        )
        .await
        .unwrap();
        assert_eq!(&echo, b"y");
        assert_eq!(accepted.load(Ordering::SeqCst), 3);
    });
}

#[test]
fn a_drain_forwards_open_connections_until_they_close() {
    each_copier(|copier| async move {
        let (backend, _) = echo_backend().await;
        let (proxy, addr) = start(backend, 8, copier);
        let mut client = TcpStream::connect(addr).await.unwrap();
        client.write_all(b"before").await.unwrap();
        within("the echo", client.read_exact(&mut [0u8; 6]))
            .await
            .unwrap();
        let mut drain = Box::pin(proxy.drain(DEADLINE * 3));
        // One poll begins the drain, which closes the listener at once.
        tokio::select! {
            biased;
            _ = &mut drain => panic!("the drain ended before its connection did"),
            () = std::future::ready(()) => {}
        }
        assert!(
            TcpStream::connect(addr).await.is_err(),
            "the draining proxy's port still takes connections"
        );
        let drain = tokio::spawn(drain);
        client.write_all(b"during").await.unwrap();
        let mut echo = [0u8; 6];
        within("an echo while draining", client.read_exact(&mut echo))
            .await
            .unwrap();
        assert_eq!(&echo, b"during");
        assert!(
            !drain.is_finished(),
            "the drain ended before its connection did"
        );
        client.shutdown().await.unwrap();
        sees_closed("the echo's EOF", &mut client).await;
        let report = within("the drain once the connection closed", drain)
            .await
            .unwrap();
        assert_eq!(report.cut, 0);
        assert_eq!(report.forwarded, 1);
    });
}

#[test]
fn a_drain_cuts_a_stuck_connection_at_its_timeout() {
    each_copier(|copier| async move {
        let (backend, _) = echo_backend().await;
        let (proxy, addr) = start(backend, 8, copier);
        let mut client = TcpStream::connect(addr).await.unwrap();
        client.write_all(b"stuck").await.unwrap();
        within("the echo", client.read_exact(&mut [0u8; 5]))
            .await
            .unwrap();
        let report = within("the drain", proxy.drain(Duration::from_millis(100))).await;
        assert_eq!(report.cut, 1);
        assert_eq!(report.forwarded, 1);
        // A reset: an EOF could pass for the end of a complete answer.
        // (Wine, the only Windows this suite runs on, sends a FIN for an
        // abortive close: there the connection only has to end.)
        let read = within("the cut client", client.read(&mut [0u8; 16])).await;
        let reset = read
            .as_ref()
            .is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionReset);
        assert!(
            reset || (cfg!(windows) && matches!(read, Ok(0))),
            "the cut client read {read:?}, not a reset"
        );
    });
}

#[test]
fn after_stop_accepting_new_connections_are_not_forwarded() {
    each_copier(|copier| async move {
        let (backend, accepted) = echo_backend().await;
        // Alone: the port closes.
        let (proxy, addr) = start(backend, 8, copier);
        let mut open = TcpStream::connect(addr).await.unwrap();
        open.write_all(b"a").await.unwrap();
        within("the echo", open.read_exact(&mut [0u8; 1]))
            .await
            .unwrap();
        proxy.stop_accepting();
        match TcpStream::connect(addr).await {
            Err(_) => {}
            Ok(mut late) => {
                let _ = late.write_all(b"late").await;
                sees_closed("a connection to a stopped proxy", &mut late).await;
            }
        }
        open.write_all(b"b").await.unwrap();
        within(
            "the open connection still forwarded",
            open.read_exact(&mut [0u8; 1]),
        )
        .await
        .unwrap();
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
        assert_eq!(proxy.active(), 1);
        drop(proxy);

        // With another copy of the socket (a handover): the copy gets them.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let copy = listener.try_clone().unwrap();
        let proxy = Proxy::start_with(listener, backend, ProxyOptions::default(), copier).unwrap();
        proxy.stop_accepting();
        let copy = TcpListener::from_std(copy).unwrap();
        let mut late = TcpStream::connect(addr).await.unwrap();
        let (mut successor, _) = within("the copy's accept", copy.accept()).await.unwrap();
        late.write_all(b"late").await.unwrap();
        let mut got = [0u8; 4];
        within("the successor reading", successor.read_exact(&mut got))
            .await
            .unwrap();
        assert_eq!(&got, b"late");
        assert_eq!(
            accepted.load(Ordering::SeqCst),
            1,
            "the stopped proxy forwarded it"
        );
        let report = within("the drain", proxy.drain(DEADLINE)).await;
        assert_eq!(report.forwarded, 0);
    });
}

/// Names the one test a child process of [`alone`] runs.
#[cfg(unix)]
const ALONE: &str = "LLMLB_PROXY_TEST_ALONE";

/// Whether this is the child process that runs test `name` alone; in the
/// parent, runs that child, checks it passed, and returns false. For tests
/// that measure or limit the whole process (threads, memory, descriptors),
/// which other tests running beside them would disturb.
#[cfg(unix)]
fn alone(name: &str) -> bool {
    if std::env::var(ALONE).is_ok_and(|running| running == name) {
        return true;
    }
    let output = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            &format!("supervise::proxy::tests::{name}"),
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(ALONE, name)
        .output()
        .expect("run the test binary again");
    let out = String::from_utf8_lossy(&output.stdout);
    let err = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "{name} alone failed:\n{out}\n{err}"
    );
    assert!(out.contains("1 passed"), "{name} alone ran no test:\n{out}");
    println!("{out}");
    false
}

/// Many idle proxied connections cost no thread each, no buffer and no
/// pipe each. Unix only: under Wine (this suite's Windows) closing a
/// thousand emulated sockets takes longer than the test's bounds, and its
/// process memory says nothing about Windows'.
#[cfg(unix)]
#[test]
fn idle_connections_cost_no_thread_and_no_buffer() {
    if !alone("idle_connections_cost_no_thread_and_no_buffer") {
        return;
    }
    if let Err(e) = super::raise_nofile_limit() {
        panic!("raise the descriptor limit: {e}");
    }
    assert_eq!(
        super::raise_nofile_limit().expect("look at the limit again"),
        None,
        "the soft limit is not at the hard one after raising it"
    );
    for copier in copiers() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(hold_idle(copier));
    }
}

/// (threads, resident bytes, open descriptors) of this process; None where
/// /proc is missing.
#[cfg(unix)]
fn threads_rss_fds() -> Option<(usize, u64, usize)> {
    let threads = std::fs::read_dir("/proc/self/task").ok()?.count();
    let fds = std::fs::read_dir("/proc/self/fd").ok()?.count();
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kib: u64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some((threads, kib * 1024, fds))
}

#[cfg(unix)]
async fn hold_idle(copier: Copier) {
    const CONNECTIONS: usize = 500;
    // Held at once by this one process: the client's socket, the proxy's
    // two, the backend's; pipes come with the first byte only.
    let (backend, accepted) = small_echo_backend().await;
    let (proxy, addr) = start(backend, CONNECTIONS, copier);
    // Warm up (allocator arenas, the runtime's structures), then measure.
    echo_through(addr, 1, 10).await;
    let before = threads_rss_fds();
    let mut clients = Vec::with_capacity(CONNECTIONS);
    for _ in 0..CONNECTIONS {
        clients.push(
            TcpStream::connect(addr)
                .await
                .expect("connect an idle client"),
        );
    }
    within("every idle connection forwarded", async {
        while accepted.load(Ordering::SeqCst) < CONNECTIONS + 1 || proxy.active() < CONNECTIONS {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    let after = threads_rss_fds();
    if let (Some((threads_before, rss_before, fds_before)), Some((threads, rss, fds))) =
        (before, after)
    {
        let per_connection = rss.saturating_sub(rss_before) / CONNECTIONS as u64;
        println!(
            "{copier:?}: {CONNECTIONS} idle connections: threads {threads_before} -> {threads}, {per_connection} bytes of RSS each, descriptors {fds_before} -> {fds} (client and backend ends included)"
        );
        // The client's socket, the proxy's two, the backend's: no pipe.
        assert!(
            fds <= fds_before + 4 * CONNECTIONS,
            "{copier:?}: {fds} descriptors for {CONNECTIONS} idle connections (from {fds_before}): pipes made before any byte"
        );
        assert!(
            threads <= threads_before + 4,
            "{copier:?}: {threads} threads for {CONNECTIONS} idle connections (from {threads_before})"
        );
        assert!(
            per_connection < 16 * 1024,
            "{copier:?}: {per_connection} bytes of RSS per idle connection"
        );
    }
    // Idle, not dead: each still forwards.
    for client in &mut clients {
        client.write_all(b"!").await.unwrap();
        within(
            "an idle connection's echo",
            client.read_exact(&mut [0u8; 1]),
        )
        .await
        .unwrap();
    }
    drop(clients);
    let report = within("the drain", proxy.drain(DEADLINE)).await;
    assert_eq!(report.cut, 0);
}

/// An echo backend whose connections cost little memory of their own (no
/// 8 KiB copy buffer each), so that the proxy's cost shows.
#[cfg(unix)]
async fn small_echo_backend() -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind a backend");
    let addr = listener.local_addr().expect("its address");
    let accepted = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&accepted);
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = [0u8; 64];
                while let Ok(n @ 1..) = stream.read(&mut buf).await {
                    if stream.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                }
                let _ = stream.shutdown().await;
            });
        }
    });
    (addr, accepted)
}

/// Out of descriptors, the accept waits (the connection stays queued, and is
/// forwarded once descriptors are free again), and a backend connection that
/// cannot be made closes the client's.
#[cfg(unix)]
#[test]
fn out_of_descriptors_a_connection_waits_or_is_closed_never_lost() {
    if !alone("out_of_descriptors_a_connection_waits_or_is_closed_never_lost") {
        return;
    }
    for copier in copiers() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(out_of_descriptors(copier));
    }
}

/// Opens descriptors until the process has none left.
#[cfg(unix)]
fn exhaust_descriptors() -> Vec<std::fs::File> {
    let mut fillers = Vec::new();
    loop {
        match std::fs::File::open("/dev/null") {
            Ok(file) => fillers.push(file),
            Err(e) if e.raw_os_error() == Some(libc::EMFILE) => return fillers,
            Err(e) => panic!("open /dev/null: {e}"),
        }
    }
}

#[cfg(unix)]
async fn out_of_descriptors(copier: Copier) {
    // A low limit, so that exhausting it is quick.
    let open = std::fs::read_dir("/dev/fd").map_or(64, |fds| fds.count()) as libc::rlim_t;
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `limit` is a writable rlimit, then a valid one.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit), 0);
        limit.rlim_cur = (open + 256).min(limit.rlim_max);
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &limit), 0);
    }
    let (backend, accepted) = echo_backend().await;
    let (proxy, addr) = start(backend, 8, copier);
    echo_through(addr, 1, 10).await;

    // One descriptor left, which the client takes: the proxy cannot accept.
    let mut fillers = exhaust_descriptors();
    drop(fillers.pop());
    let mut client = TcpStream::connect(addr).await.expect("connect (queued)");
    // A wait that can only miss a defect, never invent one.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(proxy.active(), 0, "accepted without a descriptor");
    drop(fillers);
    client.write_all(b"queued").await.unwrap();
    let mut echo = [0u8; 6];
    within(
        "the queued connection forwarded once descriptors are free",
        client.read_exact(&mut echo),
    )
    .await
    .unwrap();
    assert_eq!(&echo, b"queued");
    drop(client);
    assert_eq!(accepted.load(Ordering::SeqCst), 2);
    // Its descriptors are free again before the next count.
    within("the forwarded connection ending", async {
        while proxy.active() > 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;

    // Two left: the client's and the proxy's accept; none for the backend.
    let mut fillers = exhaust_descriptors();
    drop(fillers.pop());
    drop(fillers.pop());
    if let Ok(mut client) = TcpStream::connect(addr).await {
        sees_closed(
            "the client of a backend connect without a descriptor",
            &mut client,
        )
        .await;
    }
    within("the failed connection ending", async {
        while proxy.active() > 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    drop(fillers);
    echo_through(addr, 2, 100_000).await;
    let report = within("the drain", proxy.drain(DEADLINE)).await;
    assert_eq!(report.backend_failures, 1);
    assert_eq!(report.forwarded, 4);
}

/// The CLI moves the proxy between tasks and drains it in a spawned one.
#[test]
fn the_proxy_and_its_drain_can_move_between_threads() {
    fn send_sync<T: Send + Sync>(_: &T) {}
    fn send<T: Send>(_: &T) {}
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let (proxy, _) = start(dead_address(), 1, Copier::Native);
        send_sync(&proxy);
        let drain = proxy.drain(Duration::ZERO);
        send(&drain);
        let report = within("the drain", drain).await;
        assert_eq!(report.forwarded, 0);
    });
}
