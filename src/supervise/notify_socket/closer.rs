//! Closing descriptors that someone else sent us, where nothing waits.
//!
//! Closing the last copy of a file can block for as long as its sender
//! chose: a TCP socket with `SO_LINGER {1, 3600}` and unacknowledged data
//! waits up to an hour in `close()` (Linux releases it in the closing
//! thread, as task work on the way back to user space). So a received
//! descriptor is never closed on a thread that matters (the notify
//! receiver, a shutdown): it goes to a detached closer thread.
//!
//! One closer thread at a time takes the work, fed by a channel. A batch is
//! only ever queued to a closer that has finished everything it was given;
//! if the current one is still busy (possibly stuck in a close for an
//! hour), a fresh closer is started for the batch and the old one is let go:
//! it ends by itself once its close returns and its queue is empty. So a
//! stuck close delays nothing but itself, and a quiet process keeps one idle
//! thread. If no thread can be started, the batch is queued behind the busy
//! closer, or, with no closer at all, kept open for good (a leak of a few
//! descriptors, never a blocked caller).

use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
// Not `crate::sync`: a process-wide static needs std's const `Mutex::new`,
// and loom does not model this module (it has no in-process protocol).
use std::sync::{Arc, Mutex, PoisonError};

/// Stack size of a closer thread: it only calls `close`.
const STACK: usize = 64 * 1024;

/// The closer that takes new work, if one was started.
static CURRENT: Mutex<Option<Closer>> = Mutex::new(None);

struct Closer {
    queue: mpsc::Sender<Vec<OwnedFd>>,
    /// Batches sent and not yet closed.
    pending: Arc<AtomicUsize>,
}

impl Closer {
    fn start() -> std::io::Result<Closer> {
        let (queue, batches) = mpsc::channel::<Vec<OwnedFd>>();
        let pending = Arc::new(AtomicUsize::new(0));
        let done = Arc::clone(&pending);
        std::thread::Builder::new()
            .name("llmlb-fd-closer".to_owned())
            .stack_size(STACK)
            .spawn(move || {
                for batch in batches {
                    drop(batch);
                    done.fetch_sub(1, Ordering::SeqCst);
                }
            })?;
        Ok(Closer { queue, pending })
    }

    /// Queues `fds`; gives them back if the thread is gone.
    fn send(&self, fds: Vec<OwnedFd>) -> Result<(), Vec<OwnedFd>> {
        self.pending.fetch_add(1, Ordering::SeqCst);
        self.queue.send(fds).map_err(|mpsc::SendError(fds)| {
            self.pending.fetch_sub(1, Ordering::SeqCst);
            fds
        })
    }
}

/// Closes `fds` on a closer thread (see the module docs); returns at once.
pub(crate) fn close_later(fds: Vec<OwnedFd>) {
    if fds.is_empty() {
        return;
    }
    let mut current = CURRENT.lock().unwrap_or_else(PoisonError::into_inner);
    let mut fds = fds;
    if let Some(closer) = current.as_ref() {
        if closer.pending.load(Ordering::SeqCst) == 0 {
            match closer.send(fds) {
                Ok(()) => return,
                Err(back) => fds = back,
            }
        }
    }
    match Closer::start() {
        Ok(fresh) => match fresh.send(fds) {
            // The old closer (if any) drops its queue here: it finishes
            // what it holds and ends.
            Ok(()) => *current = Some(fresh),
            Err(back) => keep_open(back),
        },
        Err(e) => {
            let fds = match current.as_ref() {
                Some(busy) => match busy.send(fds) {
                    Ok(()) => return,
                    Err(back) => back,
                },
                None => fds,
            };
            tracing::warn!(
                "cannot start a thread to close {} received descriptor(s) ({e}); they stay open",
                fds.len()
            );
            keep_open(fds);
        }
    }
}

/// Leaves `fds` open for good: closing them here could block the caller.
fn keep_open(fds: Vec<OwnedFd>) {
    for fd in fds {
        std::mem::forget(fd);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};
    use std::os::fd::{AsRawFd, FromRawFd};
    use std::time::Duration;

    /// A pipe: (read end, write end).
    fn pipe() -> (std::fs::File, OwnedFd) {
        let mut fds = [0 as libc::c_int; 2];
        // SAFETY: fds has room for the two descriptors pipe writes.
        assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
        // SAFETY: both are new descriptors that nothing else owns.
        unsafe {
            (
                std::fs::File::from_raw_fd(fds[0]),
                OwnedFd::from_raw_fd(fds[1]),
            )
        }
    }

    /// Waits (bounded) until `reader` sees end of file: every write end
    /// closed.
    fn closed_within(mut reader: std::fs::File, patience: Duration) -> bool {
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut rest = Vec::new();
            let _ = tx.send(reader.read_to_end(&mut rest).is_ok() && rest.is_empty());
        });
        rx.recv_timeout(patience).unwrap_or(false)
    }

    /// A TCP socket whose last close blocks for an hour (`SO_LINGER {1,
    /// 3600}`, its data unacknowledged by a peer that never reads), and
    /// that peer, which must stay open for the close to keep blocking.
    fn lingering_socket() -> (OwnedFd, (TcpListener, TcpStream)) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut conn = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (peer, _) = listener.accept().unwrap();
        conn.set_nonblocking(true).unwrap();
        let chunk = vec![0u8; 1 << 16];
        while conn.write(&chunk).is_ok() {}
        conn.set_nonblocking(false).unwrap();
        let linger = libc::linger {
            l_onoff: 1,
            l_linger: 3600,
        };
        // SAFETY: the option value is a live linger of the size given.
        let rc = unsafe {
            libc::setsockopt(
                conn.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_LINGER,
                (&linger as *const libc::linger).cast(),
                std::mem::size_of::<libc::linger>() as libc::socklen_t,
            )
        };
        assert_eq!(rc, 0);
        (OwnedFd::from(conn), (listener, peer))
    }

    #[test]
    fn a_batch_is_closed_by_a_closer_thread() {
        for _ in 0..3 {
            let (reader, writer) = pipe();
            close_later(vec![writer]);
            assert!(closed_within(reader, Duration::from_secs(15)));
        }
    }

    /// A close that blocks holds up neither the caller nor later batches.
    #[test]
    fn a_stuck_close_delays_no_later_batch() {
        let (stuck, peer) = lingering_socket();
        close_later(vec![stuck]);
        let (reader, writer) = pipe();
        close_later(vec![writer]);
        assert!(
            closed_within(reader, Duration::from_secs(15)),
            "a later batch waited behind a blocked close"
        );
        // The peer's close resets the connection: the stuck closer ends.
        drop(peer);
    }
}
