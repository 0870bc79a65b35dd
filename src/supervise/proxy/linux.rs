//! Linux: zero-copy forwarding with `splice(2)`, socket → pipe → socket, one
//! pipe per direction; the bytes never enter user space.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use tokio::io::Interest;
use tokio::net::TcpStream;
use tokio::sync::watch;

/// The most one `splice` moves into a pipe: the default pipe's capacity (a
/// pipe shrunk by the per-user pipe limit takes less, and `splice` moves
/// what fits).
const CHUNK: usize = 1 << 16;

/// What a pipe grows to once a transfer filled it: a bulk transfer (a big
/// response, a model download) then moves 1 MiB per pair of syscalls
/// instead of 64 KiB (+60% throughput on loopback). Only then: the
/// kernel's pages for pipes count against the user's pipe limit
/// (`pipe-user-pages-soft`), and thousands of small exchanges must not
/// spend it. Above the limits (`pipe-max-size`), the pipe keeps its size.
const BULK_CHUNK: usize = 1 << 20;

/// Forwards both directions until both have ended (each EOF passed on as a
/// shutdown of the other side's write half) or either fails (returned at
/// once; the caller closes both sockets).
pub(super) async fn forward(
    client: &mut TcpStream,
    backend: &mut TcpStream,
    stopped: &mut watch::Receiver<bool>,
) -> io::Result<()> {
    let (client, backend) = (&*client, &*backend);
    super::both_ways(one_way(client, backend), one_way(backend, client), stopped).await
}

/// A pipe with both ends non-blocking: its readiness is never waited on, only
/// the sockets'.
struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
    /// What one `splice` may move into it.
    capacity: usize,
    /// Grown once already (or refused): never asked again.
    grown: bool,
}

impl Pipe {
    /// A transfer filled the pipe: make it a bulk one (once).
    fn grow(&mut self) {
        if std::mem::replace(&mut self.grown, true) {
            return;
        }
        // SAFETY: plain fcntl on a pipe we own.
        let size = unsafe {
            libc::fcntl(
                self.write.as_raw_fd(),
                libc::F_SETPIPE_SZ,
                BULK_CHUNK as libc::c_int,
            )
        };
        if let Ok(size) = usize::try_from(size) {
            self.capacity = self.capacity.max(size);
        }
    }

    fn new() -> io::Result<Pipe> {
        let mut fds = [-1; 2];
        // SAFETY: `fds` is a writable array of two descriptors.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) } != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: pipe2 succeeded: both are open descriptors owned by nobody else.
        Ok(unsafe {
            Pipe {
                read: OwnedFd::from_raw_fd(fds[0]),
                write: OwnedFd::from_raw_fd(fds[1]),
                capacity: CHUNK,
                grown: false,
            }
        })
    }
}

fn splice(from: RawFd, to: RawFd, len: usize) -> io::Result<usize> {
    // SAFETY: plain syscall on descriptors the caller keeps open for the
    // call; null offsets, as sockets and pipes have none.
    let moved = unsafe {
        libc::splice(
            from,
            std::ptr::null_mut(),
            to,
            std::ptr::null_mut(),
            len,
            libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK,
        )
    };
    if moved < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(moved as usize)
    }
}

/// `from` → `to` until `from`'s EOF, then `to`'s write half shut down.
async fn one_way(from: &TcpStream, to: &TcpStream) -> io::Result<()> {
    // Made at the first byte: an idle connection holds no pipe (its buffer
    // pages count against the user's pipe limit from creation).
    let mut pipe: Option<Pipe> = None;
    loop {
        let pipe = match &mut pipe {
            Some(pipe) => {
                from.readable().await?;
                pipe
            }
            None => {
                // Readiness can be spurious (and is, on a socket just
                // accepted): a byte (or the EOF) must be there first.
                if from.peek(&mut [0u8; 1]).await? == 0 {
                    break;
                }
                pipe.insert(Pipe::new()?)
            }
        };
        // The pipe is empty here (drained below before reading more), so a
        // WouldBlock means the socket has nothing, and clearing the
        // socket's readiness is right.
        let filled = match from.try_io(Interest::READABLE, || {
            splice(from.as_raw_fd(), pipe.write.as_raw_fd(), pipe.capacity)
        }) {
            Ok(0) => break,
            Ok(filled) => filled,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                ) =>
            {
                continue
            }
            Err(e) => return Err(e),
        };
        if filled >= pipe.capacity {
            pipe.grow();
        }
        let pipe = &*pipe;
        let mut left = filled;
        while left > 0 {
            to.writable().await?;
            // The pipe holds `left` bytes, so a WouldBlock is the socket's.
            match to.try_io(Interest::WRITABLE, || {
                splice(pipe.read.as_raw_fd(), to.as_raw_fd(), left)
            }) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(moved) => left -= moved,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                    ) => {}
                Err(e) => return Err(e),
            }
        }
    }
    shutdown_write(to)
}

/// Passes an EOF on: the peer of `to` reads EOF, and can still send.
fn shutdown_write(to: &TcpStream) -> io::Result<()> {
    // SAFETY: plain syscall on an open socket.
    if unsafe { libc::shutdown(to.as_raw_fd(), libc::SHUT_WR) } == 0 {
        return Ok(());
    }
    let e = io::Error::last_os_error();
    // The peer is gone already: the other direction reports how.
    if e.kind() == io::ErrorKind::NotConnected {
        Ok(())
    } else {
        Err(e)
    }
}
