//! `llmlb serve --proxy` against no proxy at all and against systemd's own
//! splice proxy, in one run: what a connection pays for going through llmlb.
//!
//! Three contenders serve the same backend (a small Rust HTTP/1.1 server,
//! this very binary run as `proxy __backend PORT`: a thread per connection,
//! keep-alive, a fixed 1 KiB body, and `/big?n=N` written from one reusable
//! buffer, so the backend is never the bottleneck), each its own process:
//!
//! - **direct**: the client talks to the backend;
//! - **llmlb --proxy**: `llmlb serve -p PORT --proxy --ready listen --
//!   proxy __backend {port}` (the backend on llmlb's private port);
//! - **systemd-socket-proxyd**: `systemd-socket-activate -l PORT
//!   systemd-socket-proxyd 127.0.0.1:BACKEND` (`SKIPPED`, with the reason,
//!   where it is not installed: Debian package `systemd`).
//!
//! The figures, for each:
//!
//! - latency of a 1 KiB response on one keep-alive connection: p50 and p99
//!   over 20,000 requests, measured in rounds that take turns between the
//!   contenders, so a noisy moment of a shared machine hits them all;
//! - throughput of one 1 GiB response (MB/s, 10^6 bytes a second);
//! - RSS of the proxy process per idle proxied connection: `VmRSS` with
//!   1,000 connections open (each has carried one request, then sits idle)
//!   minus `VmRSS` before, divided by 1,000.
//!
//! Then the goals of issue 27 beside the figures, each PASS or MISS: proxied
//! p50 ≤ 1.25× direct and ≤ systemd-socket-proxyd's, throughput ≥ 90% of
//! direct, ≤ 64 KiB RSS per idle connection. A miss is reported, not a
//! failure; a broken run (a failed request, a wrong byte count) exits 1.
//!
//! `-- --quick`: 2,000 requests, 128 MiB; `-- --test` (the smoke run): 200
//! requests, 8 MiB, 100 idle connections. Linux only (`/proc` for RSS).

#[cfg(target_os = "linux")]
mod linux {
    use std::io::{BufRead, BufReader, Read, Write};
    use std::net::{TcpListener, TcpStream};
    use std::path::{Path, PathBuf};
    use std::process::{Child, Command, Stdio};
    use std::thread;
    use std::time::{Duration, Instant};

    /// Against hangs only.
    const GENEROUS: Duration = Duration::from_secs(30);
    /// The small response's body.
    const SMALL: usize = 1024;
    /// The reusable buffer `/big` writes from and the client reads into.
    const BUF: usize = 256 * 1024;
    /// Latency rounds: each contender's requests are split over this many
    /// turns.
    const ROUNDS: usize = 10;

    type Result<T> = std::result::Result<T, String>;

    // ----------------------------------------------------------- the backend

    /// The backend: serves 127.0.0.1:`port` until killed.
    pub fn backend(port: &str) {
        raise_nofile();
        let listener = TcpListener::bind(("127.0.0.1", port.parse::<u16>().unwrap_or(0)))
            .unwrap_or_else(|e| {
                eprintln!("proxy bench backend: cannot listen on 127.0.0.1:{port}: {e}");
                std::process::exit(1);
            });
        let mut small = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {SMALL}\r\n\r\n"
        )
        .into_bytes();
        small.resize(small.len() + SMALL, b'x');
        let small: &'static [u8] = small.leak();
        let big: &'static [u8] = vec![b'y'; BUF].leak();
        for conn in listener.incoming() {
            let Ok(conn) = conn else {
                // Out of descriptors or an aborted connection: keep serving.
                thread::sleep(Duration::from_millis(1));
                continue;
            };
            // A small stack: 1,000 idle connections cost the backend little.
            let _ = thread::Builder::new().stack_size(64 * 1024).spawn(move || {
                let _ = serve_conn(conn, small, big);
            });
        }
    }

    fn serve_conn(conn: TcpStream, small: &[u8], big: &[u8]) -> std::io::Result<()> {
        conn.set_nodelay(true)?;
        let mut out = conn.try_clone()?;
        let mut reader = BufReader::with_capacity(4096, conn);
        let mut line = String::new();
        loop {
            line.clear();
            if reader.read_line(&mut line)? == 0 {
                return Ok(());
            }
            let target = line.split_whitespace().nth(1).unwrap_or("/").to_owned();
            // The headers: nothing in them matters here (no request bodies).
            loop {
                line.clear();
                if reader.read_line(&mut line)? == 0 {
                    return Ok(());
                }
                if line == "\r\n" || line == "\n" {
                    break;
                }
            }
            match target
                .strip_prefix("/big?n=")
                .and_then(|n| n.parse::<u64>().ok())
            {
                Some(mut n) => {
                    // One write for the head (write! would send each piece:
                    // small segments a proxy without TCP_NODELAY holds back).
                    let head = format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: {n}\r\n\r\n"
                    );
                    out.write_all(head.as_bytes())?;
                    while n > 0 {
                        let step = n.min(big.len() as u64) as usize;
                        out.write_all(&big[..step])?;
                        n -= step as u64;
                    }
                }
                None => out.write_all(small)?,
            }
        }
    }

    // ------------------------------------------------------------ the client

    /// Raises this process's soft RLIMIT_NOFILE to its hard limit: 1,000
    /// idle connections need more descriptors than the usual soft 1,024
    /// leaves (children inherit it).
    fn raise_nofile() {
        // SAFETY: getrlimit/setrlimit on a local struct.
        unsafe {
            let mut lim: libc::rlimit = std::mem::zeroed();
            if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
                lim.rlim_cur = lim.rlim_max;
                libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
            }
        }
    }

    fn free_port() -> u16 {
        TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port()
    }

    fn connect(port: u16) -> Result<BufReader<TcpStream>> {
        let s = TcpStream::connect(("127.0.0.1", port))
            .map_err(|e| format!("connect to 127.0.0.1:{port}: {e}"))?;
        s.set_nodelay(true).ok();
        s.set_read_timeout(Some(GENEROUS)).ok();
        Ok(BufReader::with_capacity(BUF, s))
    }

    /// Sends `GET target` on `conn` and reads the whole response into
    /// `body` (Content-Length bytes); the body's length.
    fn exchange(conn: &mut BufReader<TcpStream>, target: &str, body: &mut Vec<u8>) -> Result<u64> {
        let io = |e: std::io::Error| format!("GET {target}: {e}");
        // One write, as HTTP clients send a request: write! would send each
        // formatted piece as a segment of its own, and a proxy that does not
        // set TCP_NODELAY would hold the later ones back (Nagle) until the
        // backend's delayed ACK, some 40 ms.
        let request = format!("GET {target} HTTP/1.1\r\nHost: bench\r\n\r\n");
        conn.get_mut().write_all(request.as_bytes()).map_err(io)?;
        let mut line = String::new();
        if conn.read_line(&mut line).map_err(io)? == 0 {
            return Err(format!(
                "GET {target}: the connection closed before a response"
            ));
        }
        if line.split_whitespace().nth(1) != Some("200") {
            return Err(format!("GET {target}: {}", line.trim_end()));
        }
        let mut length = None;
        loop {
            line.clear();
            if conn.read_line(&mut line).map_err(io)? == 0 {
                return Err(format!("GET {target}: closed in the headers"));
            }
            if line == "\r\n" {
                break;
            }
            if let Some((name, value)) = line.split_once(':') {
                if name.eq_ignore_ascii_case("content-length") {
                    length = value.trim().parse::<u64>().ok();
                }
            }
        }
        let length = length.ok_or_else(|| format!("GET {target}: no Content-Length"))?;
        let mut left = length;
        body.resize(BUF, 0);
        while left > 0 {
            let want = left.min(BUF as u64) as usize;
            let n = conn.read(&mut body[..want]).map_err(io)?;
            if n == 0 {
                return Err(format!(
                    "GET {target}: closed after {} of {length} body bytes",
                    length - left
                ));
            }
            left -= n as u64;
        }
        Ok(length)
    }

    /// `VmRSS` of `pid`, in KiB.
    fn rss_kib(pid: u32) -> Result<u64> {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
            .map_err(|e| format!("/proc/{pid}/status: {e}"))?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .ok_or_else(|| format!("no VmRSS in /proc/{pid}/status"))
    }

    // ----------------------------------------------------------- contenders

    /// A child process, ended on drop: SIGTERM (llmlb then stops its
    /// command), SIGKILL if it lingers.
    struct Proc(Child);

    impl Drop for Proc {
        fn drop(&mut self) {
            if self.0.try_wait().ok().flatten().is_some() {
                return;
            }
            // SAFETY: kill(2) on our own child, not yet reaped.
            unsafe { libc::kill(self.0.id() as libc::pid_t, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if self.0.try_wait().ok().flatten().is_some() {
                    return;
                }
                thread::sleep(Duration::from_millis(10));
            }
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    /// One way to reach the backend.
    struct Contender {
        name: &'static str,
        /// Where clients connect.
        port: u16,
        /// The proxy's PID (none for direct).
        proxy_pid: Option<u32>,
        /// Why it did not run, if it did not.
        skipped: Option<String>,
        _procs: Vec<Proc>,
        figures: Figures,
    }

    #[derive(Default)]
    struct Figures {
        latencies: Vec<Duration>,
        mb_per_s: Option<f64>,
        rss_per_conn_kib: Option<f64>,
    }

    impl Contender {
        fn skipped(name: &'static str, why: String) -> Contender {
            Contender {
                name,
                port: 0,
                proxy_pid: None,
                skipped: Some(why),
                _procs: Vec::new(),
                figures: Figures::default(),
            }
        }
    }

    fn spawn_backend(me: &Path, port: u16) -> Result<Proc> {
        let child = Command::new(me)
            .args(["__backend", &port.to_string()])
            .stdin(Stdio::null())
            .spawn()
            .map_err(|e| format!("spawn the backend {}: {e}", me.display()))?;
        Ok(Proc(child))
    }

    /// Waits until a `GET /` through `port` answers 200; `Err` if `proc`
    /// exits first (with its stderr if it wrote one to `log`).
    fn wait_serving(port: u16, proc: &mut Proc, log: Option<&Path>) -> Result<()> {
        let deadline = Instant::now() + GENEROUS;
        let mut body = Vec::new();
        loop {
            if let Ok(mut c) = connect(port) {
                if exchange(&mut c, "/", &mut body).is_ok() {
                    return Ok(());
                }
            }
            if let Some(status) = proc.0.try_wait().ok().flatten() {
                let said = log
                    .and_then(|l| std::fs::read_to_string(l).ok())
                    .unwrap_or_default();
                return Err(format!("exited ({status}) before serving: {}", said.trim()));
            }
            if Instant::now() > deadline {
                return Err(format!("nothing served on port {port} within {GENEROUS:?}"));
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    fn direct(me: &Path) -> Result<Contender> {
        let port = free_port();
        let mut backend = spawn_backend(me, port)?;
        wait_serving(port, &mut backend, None).map_err(|e| format!("direct backend: {e}"))?;
        Ok(Contender {
            name: "direct",
            port,
            proxy_pid: None,
            skipped: None,
            _procs: vec![backend],
            figures: Figures::default(),
        })
    }

    fn llmlb(bin: &Path, me: &Path, work: &Path) -> Result<Contender> {
        const NAME: &str = "llmlb --proxy";
        let port = free_port();
        let log = work.join("llmlb.log");
        let help = Command::new(bin)
            .args(["serve", "--help"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        let mut cmd = Command::new(bin);
        cmd.args([
            "serve",
            "-p",
            &port.to_string(),
            "-H",
            "127.0.0.1",
            "--proxy",
        ]);
        // Past its default, connections would wait in the queue: the idle
        // figure needs all 1,000 forwarded.
        if help.contains("--max-connections") {
            cmd.args(["--max-connections", "4096"]);
        }
        cmd.args(["--ready", "listen", "--"])
            .arg(me)
            .args(["__backend", "{port}"])
            .env("LLMLB_LOCK_DIR", work.join("locks"))
            .env("LLMLB_LOG_LEVEL", "warn")
            .env_remove("NOTIFY_SOCKET")
            .env_remove("LISTEN_FDS")
            .env_remove("LISTEN_PID")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).map_err(|e| format!("{}: {e}", log.display()))?);
        let child = cmd
            .spawn()
            .map_err(|e| format!("spawn {}: {e}", bin.display()))?;
        let pid = child.id();
        let mut proc = Proc(child);
        if let Err(e) = wait_serving(port, &mut proc, Some(&log)) {
            if e.contains("unexpected argument '--proxy'") {
                return Ok(Contender::skipped(
                    NAME,
                    "this llmlb has no --proxy".to_owned(),
                ));
            }
            return Err(format!("{NAME}: {e}"));
        }
        Ok(Contender {
            name: NAME,
            port,
            proxy_pid: Some(pid),
            skipped: None,
            _procs: vec![proc],
            figures: Figures::default(),
        })
    }

    fn socket_proxyd(me: &Path, work: &Path) -> Result<Contender> {
        const NAME: &str = "systemd-socket-proxyd";
        let Some(proxyd) = [
            "/lib/systemd/systemd-socket-proxyd",
            "/usr/lib/systemd/systemd-socket-proxyd",
        ]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.exists()) else {
            return Ok(Contender::skipped(
                NAME,
                "no /lib/systemd/systemd-socket-proxyd (Debian package systemd)".to_owned(),
            ));
        };
        let activate = Command::new("systemd-socket-activate")
            .arg("--help")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        if !activate.is_ok_and(|s| s.success()) {
            return Ok(Contender::skipped(
                NAME,
                "no systemd-socket-activate on PATH (Debian package systemd)".to_owned(),
            ));
        }
        let backend_port = free_port();
        let mut backend = spawn_backend(me, backend_port)?;
        wait_serving(backend_port, &mut backend, None)
            .map_err(|e| format!("{NAME}'s backend: {e}"))?;
        let port = free_port();
        let log = work.join("proxyd.log");
        // systemd-socket-activate execs the proxy in its own process (no
        // --accept), so the PID we spawn is the proxy's. -c: its default of
        // 256 connections would leave the rest of the 1,000 in the queue.
        let child = Command::new("systemd-socket-activate")
            .args(["-l", &format!("127.0.0.1:{port}")])
            .arg(&proxyd)
            .args([
                "--connections-max=4096",
                &format!("127.0.0.1:{backend_port}"),
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).map_err(|e| format!("{}: {e}", log.display()))?)
            .spawn()
            .map_err(|e| format!("spawn systemd-socket-activate: {e}"))?;
        let pid = child.id();
        let mut proc = Proc(child);
        wait_serving(port, &mut proc, Some(&log)).map_err(|e| format!("{NAME}: {e}"))?;
        Ok(Contender {
            name: NAME,
            port,
            proxy_pid: Some(pid),
            skipped: None,
            _procs: vec![proc, backend],
            figures: Figures::default(),
        })
    }

    // ------------------------------------------------------------ measuring

    /// RSS per idle connection: `idle` connections, each carrying one
    /// request and then left open.
    fn idle_rss(c: &Contender, idle: usize) -> Result<Option<f64>> {
        let Some(pid) = c.proxy_pid else {
            return Ok(None);
        };
        let mut body = Vec::new();
        // Warm: the first connection's one-time costs are not per connection.
        for _ in 0..10 {
            exchange(&mut connect(c.port)?, "/", &mut body)?;
        }
        thread::sleep(Duration::from_millis(100));
        let before = rss_kib(pid)?;
        let mut open = Vec::with_capacity(idle);
        for i in 0..idle {
            let mut conn = connect(c.port)?;
            exchange(&mut conn, "/", &mut body)
                .map_err(|e| format!("idle connection {} of {idle}: {e}", i + 1))?;
            open.push(conn);
        }
        thread::sleep(Duration::from_millis(200));
        let after = rss_kib(pid)?;
        drop(open);
        Ok(Some(after.saturating_sub(before) as f64 / idle as f64))
    }

    fn throughput(c: &Contender, bytes: u64) -> Result<f64> {
        let mut conn = connect(c.port)?;
        let mut body = Vec::new();
        let target = format!("/big?n={bytes}");
        let started = Instant::now();
        let got = exchange(&mut conn, &target, &mut body)?;
        let took = started.elapsed();
        if got != bytes {
            return Err(format!("GET {target}: {got} bytes, not {bytes}"));
        }
        Ok(bytes as f64 / took.as_secs_f64() / 1e6)
    }

    fn percentile(sorted: &[Duration], p: f64) -> Option<Duration> {
        if sorted.is_empty() {
            return None;
        }
        Some(sorted[((sorted.len() as f64 - 1.0) * p).round() as usize])
    }

    fn measure(contenders: &mut [Contender], requests: usize, big: u64, idle: usize) -> Result<()> {
        let running = |c: &&mut Contender| c.skipped.is_none();
        println!("proxy: RSS with {idle} idle connections ...");
        for c in contenders.iter_mut().filter(running) {
            c.figures.rss_per_conn_kib =
                idle_rss(c, idle).map_err(|e| format!("{}: {e}", c.name))?;
        }
        println!("proxy: latency, {requests} requests each, in {ROUNDS} alternating rounds ...");
        let mut conns = Vec::new();
        for c in contenders.iter_mut().filter(running) {
            let mut conn = connect(c.port).map_err(|e| format!("{}: {e}", c.name))?;
            let mut body = Vec::new();
            for _ in 0..requests.min(200) {
                exchange(&mut conn, "/", &mut body).map_err(|e| format!("{}: {e}", c.name))?;
            }
            conns.push((c, conn, body));
        }
        for _ in 0..ROUNDS {
            for (c, conn, body) in conns.iter_mut() {
                for _ in 0..requests / ROUNDS {
                    let started = Instant::now();
                    let n = exchange(conn, "/", body).map_err(|e| format!("{}: {e}", c.name))?;
                    c.figures.latencies.push(started.elapsed());
                    if n != SMALL as u64 {
                        return Err(format!("{}: a {n}-byte body, not {SMALL}", c.name));
                    }
                }
            }
        }
        drop(conns);
        println!("proxy: throughput of one {} MiB response ...", big >> 20);
        for c in contenders.iter_mut().filter(running) {
            c.figures.mb_per_s = Some(throughput(c, big).map_err(|e| format!("{}: {e}", c.name))?);
        }
        for c in contenders.iter_mut() {
            c.figures.latencies.sort();
        }
        Ok(())
    }

    // ------------------------------------------------------------ reporting

    fn us(d: Option<Duration>) -> String {
        d.map_or("-".to_owned(), |d| format!("{:.1}", d.as_secs_f64() * 1e6))
    }

    fn report(contenders: &[Contender], requests: usize, big: u64, idle: usize) {
        println!();
        // One line per figure: its name, then each contender's cell.
        let line = |name: String, f: &dyn Fn(&Figures) -> String| {
            std::iter::once(name)
                .chain(contenders.iter().map(|c| match &c.skipped {
                    Some(_) => "SKIPPED".to_owned(),
                    None => f(&c.figures),
                }))
                .collect::<Vec<_>>()
        };
        let lines = [
            std::iter::once("figure".to_owned())
                .chain(contenders.iter().map(|c| c.name.to_owned()))
                .collect::<Vec<_>>(),
            line(
                format!("p50 µs, 1 KiB, keep-alive ({requests} requests)"),
                &|f| us(percentile(&f.latencies, 0.5)),
            ),
            line("p99 µs".to_owned(), &|f| {
                us(percentile(&f.latencies, 0.99))
            }),
            line(
                format!("throughput MB/s, one {} MiB response", big >> 20),
                &|f| f.mb_per_s.map_or("-".to_owned(), |v| format!("{v:.0}")),
            ),
            line(format!("RSS KiB per idle connection ({idle} open)"), &|f| {
                f.rss_per_conn_kib
                    .map_or("n/a".to_owned(), |v| format!("{v:.1}"))
            }),
        ];
        let widths: Vec<usize> = (0..lines[0].len())
            .map(|i| {
                lines
                    .iter()
                    .map(|l| l[i].chars().count())
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        for (i, line) in lines.iter().enumerate() {
            let cells: Vec<String> = line
                .iter()
                .zip(&widths)
                .map(|(c, w)| format!("{c:<w$}"))
                .collect();
            println!("| {} |", cells.join(" | "));
            if i == 0 {
                let rule: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
                println!("|-{}-|", rule.join("-|-"));
            }
        }
        for c in contenders {
            if let Some(why) = &c.skipped {
                println!("SKIPPED {}: {why}", c.name);
            }
        }

        println!();
        let by = |name: &str| {
            contenders
                .iter()
                .find(|c| c.name == name && c.skipped.is_none())
        };
        let (direct, ours, theirs) = (
            by("direct"),
            by("llmlb --proxy"),
            by("systemd-socket-proxyd"),
        );
        let p50 = |c: &Contender| percentile(&c.figures.latencies, 0.5).map(|d| d.as_secs_f64());
        let goal = |what: &str, verdict: Option<(bool, String)>| match verdict {
            Some((met, figures)) => {
                println!("{} {what}: {figures}", if met { "PASS" } else { "MISS" })
            }
            None => println!("SKIPPED {what}: a figure it needs was not measured"),
        };
        goal(
            "proxied p50 <= 1.25x direct",
            (|| {
                let (o, d) = (p50(ours?)?, p50(direct?)?);
                Some((o <= 1.25 * d, format!("{:.2}x", o / d)))
            })(),
        );
        goal(
            "proxied p50 <= systemd-socket-proxyd's",
            (|| {
                let (o, t) = (p50(ours?)?, p50(theirs?)?);
                Some((o <= t, format!("{:.2}x", o / t)))
            })(),
        );
        goal(
            "proxied throughput >= 90% of direct",
            (|| {
                let (o, d) = (ours?.figures.mb_per_s?, direct?.figures.mb_per_s?);
                Some((o >= 0.9 * d, format!("{:.0}%", 100.0 * o / d)))
            })(),
        );
        goal(
            "proxied RSS <= 64 KiB per idle connection",
            (|| {
                let o = ours?.figures.rss_per_conn_kib?;
                Some((o <= 64.0, format!("{o:.1} KiB")))
            })(),
        );
    }

    pub fn main() -> Result<()> {
        let args: Vec<String> = std::env::args().collect();
        let (requests, big, idle) = if args.iter().any(|a| a == "--test") {
            (200, 8 << 20, 100)
        } else if args.iter().any(|a| a == "--quick") {
            (2_000, 128 << 20, 1_000)
        } else {
            (20_000, 1 << 30, 1_000)
        };
        raise_nofile();
        let me = std::env::current_exe().map_err(|e| format!("this bench's own path: {e}"))?;
        let work = tempfile::Builder::new()
            .prefix("llmlb-bench-proxy-")
            .tempdir()
            .map_err(|e| format!("a temp dir: {e}"))?;
        let mut contenders = vec![direct(&me)?];
        match option_env!("CARGO_BIN_EXE_llmlb") {
            Some(bin) => contenders.push(llmlb(Path::new(bin), &me, work.path())?),
            None => contenders.push(Contender::skipped(
                "llmlb --proxy",
                "built without the cli feature: no llmlb binary".to_owned(),
            )),
        }
        contenders.push(socket_proxyd(&me, work.path())?);
        measure(&mut contenders, requests, big, idle)?;
        report(&contenders, requests, big, idle);
        Ok(())
    }
}

fn main() {
    #[cfg(target_os = "linux")]
    {
        let args: Vec<String> = std::env::args().collect();
        if args.get(1).map(String::as_str) == Some("__backend") {
            linux::backend(args.get(2).map_or("0", String::as_str));
            return;
        }
        if let Err(e) = linux::main() {
            // Every process is ended (dropped) by now.
            eprintln!("proxy: BROKEN RUN: {e}");
            std::process::exit(1);
        }
    }
    #[cfg(not(target_os = "linux"))]
    println!("proxy: skipped (Linux only: RSS is read from /proc)");
}
