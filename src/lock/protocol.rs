//! The protocol: open → lock → re-check → write → release, and the probe.
//!
//! Each numbered step names the bug it prevents (see docs/protocol.md). Only this
//! module sequences lock calls; the typestate in `state.rs` decides which of
//! these functions a caller may reach.

// Failed transitions hand the state (an open, locked file) back by value, as
// tempfile's `PersistError` does; they are cold paths, so size does not matter.
#![allow(clippy::result_large_err)]

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use super::error::LockError;
use super::info::{self, IdentityCheck, LockInfo, MAX_INFO_LEN};
use super::sys::{self, FileId, TryLock};
use super::{LockDir, LockState, ServeState};

/// How often acquire reopens when the path keeps naming a different inode
/// than the one it locked (each retry means a holder released meanwhile).
const INODE_RETRIES: usize = 64;
/// How long an acquirer waits out short-lived obstacles before reporting
/// [`LockError::Busy`]: readers' shared locks (probes, `status`) and, on
/// Windows, a releasing holder that is deleting the file (which makes opens
/// fail for that instant, see [`sys::is_transient_open_error`]).
const READER_WINDOW: Duration = Duration::from_millis(100);
/// Backoff between reads of a holder's info that is empty or partial because
/// the holder is between `flock` and `pwrite`: about 1.5 ms in all.
const INFO_RETRY_SLEEPS_US: [u64; 4] = [100, 200, 400, 800];

/// Which lock: the port, its file's name in the open lock dir, and the full
/// path for messages. Made on every acquire, so nothing in it is allocated
/// then: the dir's path is shared, the name inline, the full path joined
/// only when something asks for it (messages, `PortLock::path`).
#[derive(Debug, Clone)]
pub struct Target {
    pub(crate) port: u16,
    pub(crate) dir: Arc<sys::DirHandle>,
    /// The lock dir's path, kept to re-open it if it is removed or replaced.
    pub(crate) dir_path: Arc<Path>,
    pub(crate) name: sys::LockName,
    /// The serving state our first write records ([`LockDir::announcing`]).
    initial_state: Option<ServeState>,
    path: OnceLock<PathBuf>,
}

impl Target {
    pub(crate) fn new(dir: &LockDir, port: u16) -> Target {
        Target {
            port,
            dir: Arc::clone(dir.handle()),
            dir_path: Arc::clone(dir.shared_path()),
            name: sys::LockName::for_port(port),
            initial_state: dir.initial_state(),
            path: OnceLock::new(),
        }
    }

    /// The info this process records when it takes the port: its own, in
    /// the dir's initial serving state if it announces one.
    fn our_info(&self) -> LockInfo {
        let mut info = LockInfo::for_current_process(self.port);
        if let Some(state) = self.initial_state {
            info.state = Some(state);
            info.state_since = Some(info.started_at);
        }
        info
    }

    /// `<dir>/serve_<port>.lock`.
    pub(crate) fn path(&self) -> &Path {
        self.path.get_or_init(|| self.joined_path())
    }

    /// [`path`](Self::path), owned: for an error that consumes the target
    /// (a refused acquire, which a waiter meets on every attempt), without
    /// joining and then copying.
    fn into_path(mut self) -> PathBuf {
        self.path.take().unwrap_or_else(|| self.joined_path())
    }

    fn joined_path(&self) -> PathBuf {
        self.dir_path.join(self.name.as_str())
    }

    /// What the name is now (`None`: gone).
    fn current_id(&self) -> Result<Option<FileId>, LockError> {
        sys::name_id(&self.dir, &self.name)
            .map_err(|e| LockError::io("cannot inspect lock file", self.path(), e))
    }
}

/// How often a holder's check looks again at a record it could not parse
/// before writing its own back, and how long it waits between looks: a
/// record is written in one `pwrite` and cut to length at once, so a torn
/// read lasts microseconds, while `echo x > file` stays.
const TORN_READ_RETRIES: usize = 3;
const TORN_READ_PAUSE: Duration = Duration::from_millis(2);

/// An exclusively locked lock file that records (or recorded) us: the data of
/// the `Held` and `Reclaimed` states. Dropping it releases.
pub struct Holding {
    pub(crate) target: Target,
    /// `None` once released or abandoned; Drop then has nothing to do.
    file: Option<File>,
    id: FileId,
    pub(crate) info: LockInfo,
    /// How far the next write must cut the file (what we wrote, or more if
    /// `verify` found the file overwritten by something longer).
    written_len: u64,
    /// The bytes we last wrote: release compares the file with them instead
    /// of parsing it (they record `info.pid`).
    written: Vec<u8>,
    /// The process that took (or adopted) the lock. A forked child that
    /// inherits this value is not the owner: it only closes its descriptor.
    owner_pid: u32,
    /// Where `stop` asks this holder to shut down (Windows; nothing on Unix,
    /// where it sends `SIGTERM`). Made before the info is written, so a
    /// `stop` that reads the info always finds it.
    pub(crate) stop: Arc<sys::StopChannel>,
    /// Whether the descriptor was handed out for a child to inherit (exec
    /// mode, `lock_fd`): other processes may share the lock's description.
    shared: bool,
    /// Handed to a successor (`serve --replace`) that has not given it back:
    /// the record is the successor's, so this process neither writes it nor
    /// removes the file until [`Holding::restore_record`] takes it back.
    handed_on: bool,
    /// [`sys::fork_count`] when this process took (or adopted) the lock: a
    /// fork since then (or forks that cannot be counted, `None`) means a
    /// child may share the description.
    forks_seen: Option<u64>,
    /// Keeps tmp cleaners out of the lock dir while we hold (see
    /// [`sys::DirPin`]); it goes with the Holding, so with the release.
    dir_pin: sys::DirPin,
}

/// The exclusively locked file of a crashed holder, not yet overwritten.
pub(crate) struct StaleFile {
    pub(crate) target: Target,
    file: File,
    id: FileId,
    len: u64,
    pub(crate) previous: Option<LockInfo>,
}

/// What a holder's `verify` found.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Integrity {
    /// The path still names the file we hold.
    Intact,
    /// The file had been removed or replaced by hand; it has been re-created
    /// (locked, with our info).
    Restored,
    /// The file had been removed or replaced, and another process has since
    /// taken the port's lock (its info if readable): we no longer hold the port.
    Lost(Option<Box<LockInfo>>),
    /// The file had been removed or replaced while other processes share this
    /// lock's open file description (an exec-mode command's tree, forked
    /// workers). The name has been re-taken and is held here, but they still
    /// hold only the old, nameless file: once this process is gone, nothing
    /// would keep the port from a new server while they still serve it. The
    /// port counts as lost: end what shares the lock (as for
    /// [`Lost`](Self::Lost)), then release.
    Detached,
}

/// What [`acquire`] found once it held the lock.
pub(crate) enum Acquisition {
    /// Boxed from the start: the typestate and the C ABI move it several
    /// times on the way to the caller, and it is a few hundred bytes.
    Fresh(Box<Holding>),
    /// Boxed like `Fresh`.
    Stale(Box<StaleFile>),
}

fn open_error(path: &Path, e: io::Error, action: &'static str) -> LockError {
    if sys::is_symlink_error(&e) {
        LockError::UnsafeLockFile {
            path: path.to_path_buf(),
            reason: "is a symlink",
        }
    } else {
        LockError::io(action, path, e)
    }
}

/// Refuses what we must not read or write even if we could lock it.
fn check_file(target: &Target, file: &File) -> Result<sys::OpenFileStat, LockError> {
    let st = sys::stat_open(&target.dir, file)
        .map_err(|e| LockError::io("cannot inspect lock file", target.path(), e))?;
    let unsafe_file = |reason| LockError::UnsafeLockFile {
        path: target.path().to_path_buf(),
        reason,
    };
    if !st.is_regular {
        return Err(unsafe_file("is not a regular file"));
    }
    if !st.owned_by_us {
        return Err(unsafe_file("is owned by another user"));
    }
    Ok(st)
}

/// Reads the whole content (at most `MAX_INFO_LEN + 1` bytes: enough to tell
/// "too big" from "fits").
fn read_content(path: &Path, file: &File) -> Result<Vec<u8>, LockError> {
    read_bounded(file).map_err(|e| LockError::io("cannot read lock file", path, e))
}

/// Real info is a few hundred bytes: read into a small stack buffer first and
/// only allocate the full `MAX_INFO_LEN + 1` for a file that fills it.
fn read_bounded(file: &File) -> io::Result<Vec<u8>> {
    let mut small = [0u8; 1024];
    let n = sys::read_at(file, &mut small, 0)?;
    if n < small.len() {
        return Ok(small[..n].to_vec());
    }
    let mut buf = vec![0u8; MAX_INFO_LEN + 1];
    let n = sys::read_at(file, &mut buf, 0)?;
    buf.truncate(n);
    Ok(buf)
}

/// Reads the info of a process that holds the lock right now. It may be
/// between `flock` and `pwrite` (empty) or mid-write (partial), so retry
/// briefly before calling it unreadable. Read errors are "unreadable" too
/// (Windows locks are mandatory for reads): contention is the answer either way.
fn read_holder(file: &File, port: u16) -> Option<LockInfo> {
    let attempt = || LockInfo::parse_for_port(&read_bounded(file).ok()?, port);
    if let Some(info) = attempt() {
        return Some(info);
    }
    for us in INFO_RETRY_SLEEPS_US {
        std::thread::sleep(Duration::from_micros(us));
        if let Some(info) = attempt() {
            return Some(info);
        }
    }
    None
}

/// Backoff (50 µs doubling to 2 ms) within one [`READER_WINDOW`], shared by
/// every short-lived obstacle an acquire or probe meets.
struct ShortWait {
    deadline: Option<Instant>,
    backoff: Duration,
}

impl ShortWait {
    fn new() -> ShortWait {
        ShortWait {
            deadline: None,
            backoff: Duration::from_micros(50),
        }
    }

    /// Sleeps and returns true while the window (opened by the first call)
    /// lasts; false once it has passed.
    fn again(&mut self) -> bool {
        let deadline = *self
            .deadline
            .get_or_insert_with(|| Instant::now() + READER_WINDOW);
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(self.backoff);
        self.backoff = (self.backoff * 2).min(Duration::from_millis(2));
        true
    }
}

/// Steps 2–5: open without truncating or following links, try the exclusive
/// lock, re-check the inode, and classify the content.
pub(crate) fn acquire(target: Target) -> Result<Acquisition, LockError> {
    acquire_as(target, None)
}

/// [`acquire`], writing `info` into a fresh file instead of new info for this
/// process: the watchdog re-establishing a holder's file writes the holder's
/// own info at once, so no reader ever sees another start time in between.
fn acquire_as(target: Target, info: Option<&LockInfo>) -> Result<Acquisition, LockError> {
    let (target, file, st) = lock_name(target)?;
    // Step 5: content means the previous holder died without releasing.
    if st.len == 0 {
        let info = info.cloned().unwrap_or_else(|| target.our_info());
        return Holding::establish(target, file, st.id, info, 0).map(Acquisition::Fresh);
    }
    stale_file(target, file, &st).map(Acquisition::Stale)
}

/// `stop`'s way to a stale file: [`acquire`] without ever writing. `stop`
/// only removes what a dead holder left; it never records itself, so a
/// `serve` racing it never meets a live process named in the file. `None`
/// when the name held no content: the empty file (ours, if the open created
/// it) has been removed again under the lock.
pub(crate) fn acquire_to_discard(target: Target) -> Result<Option<Box<StaleFile>>, LockError> {
    let (target, file, st) = lock_name(target)?;
    if st.len == 0 {
        return match sys::remove_held(&target.dir, &target.name, file) {
            Ok(()) => Ok(None),
            Err((_, e)) => Err(LockError::io(
                "cannot remove empty lock file",
                target.path(),
                e,
            )),
        };
    }
    stale_file(target, file, &st).map(Some)
}

fn stale_file(
    target: Target,
    file: File,
    st: &sys::OpenFileStat,
) -> Result<Box<StaleFile>, LockError> {
    let content = read_content(target.path(), &file)?;
    let previous = LockInfo::parse_for_port(&content, target.port);
    Ok(Box::new(StaleFile {
        target,
        file,
        id: st.id,
        len: content.len() as u64,
        previous,
    }))
}

/// What keeps a lock file from an acquirer's exclusive lock.
enum InTheWay {
    /// Only readers' shared locks (probes, `status`; step 8): they go in
    /// microseconds.
    Readers,
    /// An exclusive lock on a file whose recorded process provably no longer
    /// exists on this host and in this PID namespace: most likely `stop` (or
    /// another acquirer) judging or removing a dead holder's file for a
    /// moment, or else an inheritor of that holder. Its info.
    DeadHolder(Option<Box<LockInfo>>),
    /// A holder: its info if readable. A file that says its holder released
    /// it to inheritors is really held.
    Holder(Option<Box<LockInfo>>),
}

fn in_the_way(file: &File, port: u16) -> io::Result<InTheWay> {
    // Step 8: a shared lock succeeds iff only readers are in the way.
    if sys::try_lock_shared(file)? == TryLock::Acquired {
        sys::unlock_before_close(file);
        return Ok(InTheWay::Readers);
    }
    let holder = read_holder(file, port).map(Box::new);
    let dead = holder
        .as_ref()
        .is_some_and(|holder| holder.check_identity() == IdentityCheck::Gone);
    Ok(if dead {
        InTheWay::DeadHolder(holder)
    } else {
        InTheWay::Holder(holder)
    })
}

/// Steps 2-4: open without truncating or following links, try the exclusive
/// lock, and re-check that the name still leads to the inode we locked.
/// Returns the locked file with its stat.
fn lock_name(target: Target) -> Result<(Target, File, sys::OpenFileStat), LockError> {
    let mut wait = ShortWait::new();
    for _ in 0..INODE_RETRIES {
        // Step 2. No O_TRUNC: the loser of a race must not touch the winner's file.
        let file = match sys::open_for_lock(&target.dir, &target.name) {
            Ok(file) => file,
            // Windows: a releasing holder is deleting the file right now.
            // Once it is gone, the next open creates a fresh one.
            Err(e) if sys::is_transient_open_error(&e) => {
                if wait.again() {
                    continue;
                }
                return Err(LockError::Busy {
                    path: target.into_path(),
                });
            }
            Err(e) => return Err(open_error(target.path(), e, "cannot open lock file")),
        };
        // Step 3.
        let locked = sys::try_lock_exclusive(&file)
            .map_err(|e| LockError::io("cannot lock", target.path(), e))?;
        let st = check_file(&target, &file)?;
        if locked == TryLock::Contended {
            let holder = match in_the_way(&file, target.port)
                .map_err(|e| LockError::io("cannot lock", target.path(), e))?
            {
                InTheWay::Readers => {
                    drop(file); // releases our shared lock
                    if wait.again() {
                        continue;
                    }
                    return Err(LockError::Busy {
                        path: target.into_path(),
                    });
                }
                // `stop` never makes a concurrent start fail: its moment
                // on a dead holder's file is waited out. Still there after
                // the window: an inheritor holds the port.
                InTheWay::DeadHolder(holder) => {
                    drop(file);
                    if wait.again() {
                        continue;
                    }
                    holder
                }
                InTheWay::Holder(holder) => holder,
            };
            return Err(LockError::AlreadyRunning {
                port: target.port,
                holder,
                path: target.into_path(),
            });
        }
        // Step 4: a holder unlinks on release while still holding, so the
        // inode we opened may be dead; then only the new file counts.
        if target.current_id()? != Some(st.id) {
            continue;
        }
        return Ok((target, file, st));
    }
    Err(LockError::io(
        "lock file keeps being replaced while we lock it",
        target.path(),
        io::Error::other("gave up after repeated inode changes; retry"),
    ))
}

/// Step 6: write in place at offset 0, then shrink to the written length.
/// Never truncate to zero first: that makes ext4 flush on close (137 µs vs
/// 2 µs measured) and opens a window where readers see an empty file.
/// Returns the bytes written.
fn write_info(
    target: &Target,
    file: &File,
    info: &LockInfo,
    old_len: u64,
) -> Result<Vec<u8>, LockError> {
    let bytes = info.to_bytes();
    sys::write_all_at(file, &bytes, 0)
        .map_err(|e| LockError::io("cannot write lock file", target.path(), e))?;
    let new_len = bytes.len() as u64;
    // Over an existing file, always cut to our length: the file may have grown
    // since we measured it (a writer that ignores the lock), and a reader must
    // never see our info followed by someone else's tail.
    if old_len != 0 {
        file.set_len(new_len)
            .map_err(|e| LockError::io("cannot write lock file", target.path(), e))?;
    }
    Ok(bytes)
}

/// This holder's stop channel (see [`Holding::stop`]).
fn stop_channel(target: &Target) -> Result<Arc<sys::StopChannel>, LockError> {
    sys::create_stop_channel(&target.dir, target.port)
        .map(Arc::new)
        .map_err(|e| {
            LockError::io(
                "cannot create the stop channel for lock file",
                target.path(),
                e,
            )
        })
}

impl StaleFile {
    /// Stale → Reclaimed: overwrite the dead holder's info with ours.
    pub(crate) fn reclaim(
        self,
    ) -> Result<(Box<Holding>, Option<LockInfo>), (StaleFile, LockError)> {
        let info = self.target.our_info();
        self.reclaim_as(info)
    }

    /// [`reclaim`](Self::reclaim) writing `info` (see [`acquire_as`]).
    fn reclaim_as(
        self,
        info: LockInfo,
    ) -> Result<(Box<Holding>, Option<LockInfo>), (StaleFile, LockError)> {
        let stop = match stop_channel(&self.target) {
            Ok(stop) => stop,
            Err(e) => return Err((self, e)),
        };
        match write_info(&self.target, &self.file, &info, self.len) {
            Ok(written) => Ok((
                Box::new(Holding {
                    dir_pin: sys::pin_dir(&self.target.dir),
                    stop,
                    target: self.target,
                    file: Some(self.file),
                    id: self.id,
                    // Our info was made for this PID just above: no second getpid.
                    owner_pid: info.pid,
                    info,
                    written_len: written.len() as u64,
                    written,
                    shared: false,
                    handed_on: false,
                    forks_seen: sys::fork_count(),
                }),
                self.previous,
            )),
            Err(e) => Err((self, e)),
        }
    }

    /// Removes the stale file without taking the port (`llmlb stop` on a stale
    /// lock): unlink while holding the lock, then close.
    pub(crate) fn discard(self) -> Result<Target, (StaleFile, LockError)> {
        let StaleFile {
            target,
            file,
            id,
            len,
            previous,
        } = self;
        match sys::remove_held(&target.dir, &target.name, file) {
            Ok(()) => Ok(target),
            Err((file, e)) => {
                let err = LockError::io("cannot remove stale lock file", target.path(), e);
                Err((
                    StaleFile {
                        target,
                        file,
                        id,
                        len,
                        previous,
                    },
                    err,
                ))
            }
        }
    }
}

impl Holding {
    fn establish(
        target: Target,
        file: File,
        id: FileId,
        info: LockInfo,
        old_len: u64,
    ) -> Result<Box<Holding>, LockError> {
        let stop = stop_channel(&target)?;
        let written = write_info(&target, &file, &info, old_len)?;
        let dir_pin = sys::pin_dir(&target.dir);
        Ok(Box::new(Holding {
            stop,
            target,
            file: Some(file),
            id,
            // `info` is `LockInfo::for_current_process`, made for this PID in
            // this call: reusing its pid spares a getpid syscall.
            owner_pid: info.pid,
            info,
            written_len: written.len() as u64,
            written,
            shared: false,
            handed_on: false,
            forks_seen: sys::fork_count(),
            dir_pin,
        }))
    }

    pub(crate) fn file(&self) -> &File {
        // Invariant: `file` is only taken by `release`/`abandon`, which consume
        // the Holding; every other method sees it present.
        self.file.as_ref().expect("lock file present until release")
    }

    /// Replaces the recorded info (e.g. to add the exec-mode child's pgid,
    /// a serving state), if the record is still ours to write: the one rule
    /// every update of a held record goes through. Two processes may share
    /// this lock's description (a successor it was handed to, a forked
    /// child that adopted it); only the one the file names writes, and never
    /// one that has handed its descriptor on. Otherwise `info` is kept here
    /// (a record taken back later writes it) and the file is left alone:
    /// `Ok`, since the record then says what its real holder says.
    pub(crate) fn rewrite(&mut self, info: LockInfo) -> Result<(), LockError> {
        if self.handed_on || !self.file_records(self.file(), self.info.pid)? {
            tracing::debug!(
                port = self.target.port,
                "not writing the lock record: it is another holder's now"
            );
            self.info = info;
            return Ok(());
        }
        self.write_record(info)
    }

    /// Writes `info` over whatever the file holds, unconditionally: for the
    /// few steps that take the record (adopting it, taking it back after an
    /// abandoned handover, restoring one overwritten by hand).
    fn write_record(&mut self, info: LockInfo) -> Result<(), LockError> {
        let written = write_info(&self.target, self.file(), &info, self.written_len)?;
        self.written_len = written.len() as u64;
        self.written = written;
        self.info = info;
        Ok(())
    }

    /// Marks the descriptor as handed to a successor (`true`, just before
    /// it is sent) or as not received after all (`false`, the send failed):
    /// see [`Holding::rewrite`]. Taking the record back is
    /// [`Holding::restore_record`].
    // Windows has no descriptor passing: no handover reaches these.
    #[cfg_attr(not(unix), allow(dead_code))]
    pub(crate) fn set_handed_on(&mut self, handed_on: bool) {
        self.handed_on = handed_on;
    }

    /// Whether the lock is handed to a successor (see
    /// [`Holding::set_handed_on`]).
    pub(crate) fn is_handed_on(&self) -> bool {
        self.handed_on
    }

    /// Makes the calling process (a forked child holding the inherited
    /// descriptor) the owner: the file records it, its release removes the file.
    pub(crate) fn adopt(&mut self) -> Result<(), LockError> {
        let pid = sys::current_pid();
        if pid == self.owner_pid {
            return Ok(());
        }
        let mut info = LockInfo::for_current_process(self.target.port);
        info.started_at = self.info.started_at;
        info.child_pgid = self.info.child_pgid;
        info.child_identity = self.info.child_identity.clone();
        info.backend_port = self.info.backend_port;
        // The server's command line, not the worker's (a forked child's
        // is its parent's anyway; one that exec'd runs what the server ran).
        info.argv = self.info.argv.clone();
        info.cwd = self.info.cwd.clone();
        info.state = self.info.state;
        info.state_since = self.info.state_since;
        self.write_record(info)?;
        self.owner_pid = pid;
        // Forks before the adoption made no child of ours share it.
        self.forks_seen = sys::fork_count();
        Ok(())
    }

    /// A lock received from its holder (`serve --replace`): `file` is a
    /// descriptor of the holder's open file description, passed over a Unix
    /// socket, so this process now shares the holder's kernel lock. Checked
    /// before anything is written: it must be a regular file of ours, the
    /// inode `target` names now, and its description must hold the exclusive
    /// lock (re-locking a description that holds it is a no-op; one that
    /// does not would be refused while another holds the port). Then the
    /// record names this process, as [`Holding::adopt`] does, with `state`.
    ///
    /// The result counts as shared: the giver still holds the description
    /// until it has drained, so a release here never unlinks under it.
    // Windows has no descriptor passing: no handover reaches these.
    #[cfg_attr(not(unix), allow(dead_code))]
    pub(crate) fn from_handover(
        target: Target,
        file: File,
        state: ServeState,
        from: u32,
    ) -> Result<Box<Holding>, LockError> {
        let path = target.path().to_owned();
        let stat = sys::stat_open(&target.dir, &file)
            .map_err(|e| LockError::io("cannot inspect the handed-over lock file", &path, e))?;
        if !stat.is_regular || !stat.owned_by_us {
            return Err(LockError::io(
                "refusing the handed-over lock file",
                &path,
                io::Error::new(
                    io::ErrorKind::PermissionDenied,
                    "the descriptor received is not a regular file owned by this user",
                ),
            ));
        }
        if target.current_id()? != Some(stat.id) {
            return Err(LockError::io(
                "refusing the handed-over lock file",
                &path,
                io::Error::new(
                    io::ErrorKind::NotFound,
                    "the descriptor received is not the file this path names",
                ),
            ));
        }
        match sys::try_lock_exclusive(&file) {
            Ok(TryLock::Acquired) => {}
            Ok(TryLock::Contended) => {
                return Err(LockError::io(
                    "refusing the handed-over lock file",
                    &path,
                    io::Error::new(
                        io::ErrorKind::WouldBlock,
                        "the descriptor received does not hold the lock",
                    ),
                ))
            }
            Err(e) => return Err(LockError::io("cannot lock lock file", &path, e)),
        }
        let mut info = LockInfo::for_current_process(target.port);
        info.set_serve_state(state);
        info.took_over_from = Some(from);
        let stop = stop_channel(&target)?;
        // Over the giver's record, cut to ours (a non-zero old length).
        let written = write_info(&target, &file, &info, stat.len.max(1))?;
        let dir_pin = sys::pin_dir(&target.dir);
        Ok(Box::new(Holding {
            stop,
            target,
            file: Some(file),
            id: stat.id,
            owner_pid: info.pid,
            info,
            written_len: written.len() as u64,
            written,
            shared: true,
            handed_on: false,
            forks_seen: sys::fork_count(),
            dir_pin,
        }))
    }

    /// Writes our own record back over whatever is there (a successor that
    /// received the lock by handover, then gave up or died, had written its
    /// own): the description we share is ours alone again.
    // Windows has no descriptor passing: no handover reaches these.
    #[cfg_attr(not(unix), allow(dead_code))]
    pub(crate) fn restore_record(&mut self) -> Result<(), LockError> {
        self.handed_on = false;
        // Cut to our length: the successor's record may have been longer.
        let info = self.info.clone();
        self.write_record(info)
    }

    /// Records that the descriptor is handed to a child (exec mode,
    /// `lock_fd`): release then accounts for processes sharing it.
    pub(crate) fn mark_shared(&mut self) {
        self.shared = true;
    }

    /// Whether another process may share this lock's open file description:
    /// the descriptor was handed out, or this process forked since it took
    /// the lock (a forked child holds the same lock until it exits).
    fn may_be_shared(&self) -> bool {
        self.shared || self.forks_seen.is_none() || sys::fork_count() != self.forks_seen
    }

    /// Step 7 and 9: remove the file only if we own it *and* the file (still
    /// the inode we locked) records us; otherwise only close our descriptor,
    /// never unlock: a forked child shares the lock with its parent.
    pub(crate) fn release(mut self: Box<Self>) -> Result<Target, (Box<Holding>, LockError)> {
        if let Err(e) = self.release_in_place() {
            return Err((self, e));
        }
        Ok(self.take_target())
    }

    /// [`Holding::release`] for a caller that drops the lock whatever the
    /// outcome (`PortGuard`): nothing is handed back, so nothing is cloned.
    /// On error the descriptor is still held here, and dropping `self`
    /// retries once and then closes it (what dropping the handed-back lock
    /// would do).
    pub(crate) fn release_dropping(mut self: Box<Self>) -> Result<(), LockError> {
        self.release_in_place()
    }

    fn take_target(&mut self) -> Target {
        self.target.clone()
    }

    /// Releases; leaves `file` in place (still locked) on error.
    fn release_in_place(&mut self) -> Result<(), LockError> {
        let Some(file) = self.file.take() else {
            return Ok(());
        };
        let pid = sys::current_pid();
        // A forked non-owner, or a holder whose description a successor
        // holds too: the file and the record are not ours to touch.
        if pid != self.owner_pid || self.handed_on {
            drop(file);
            return Ok(());
        }
        match self.file_records(&file, pid) {
            Ok(true) => {}
            Ok(false) => {
                sys::unlock_before_close(&file);
                drop(file);
                return Ok(());
            }
            // Still locked: hand the descriptor back with the error, so a
            // failed release returns a lock that is still held.
            Err(e) => {
                self.file = Some(file);
                return Err(e);
            }
        }
        match sys::name_id(&self.target.dir, &self.target.name) {
            Ok(Some(id)) if id == self.id => {}
            // Someone removed or replaced our file by hand: not ours to delete.
            Ok(_) => {
                sys::unlock_before_close(&file);
                drop(file);
                return Ok(());
            }
            Err(e) => {
                self.file = Some(file);
                let path = self.target.path();
                return Err(LockError::io("cannot inspect lock file", path, e));
            }
        }
        if self.may_be_shared() {
            return self.release_shared(file);
        }
        match sys::remove_held(&self.target.dir, &self.target.name, file) {
            Ok(()) => Ok(()),
            Err((file, e)) => {
                self.file = Some(file);
                Err(LockError::io(
                    "cannot remove lock file",
                    self.target.path(),
                    e,
                ))
            }
        }
    }

    /// The owner's release when other processes may share the lock's open
    /// file description (a forked worker, an exec-mode command's tree).
    /// Unlinking now would leave them locking a nameless inode while the next
    /// acquirer creates a new file: two holders. Instead:
    ///
    /// 1. mark the record released (`released_by`), while still holding it,
    ///    so the file never names us as a holder once we let go: `stop`
    ///    must not signal a process that no longer holds the port;
    /// 2. close our descriptor without unlocking (an unlock would drop the
    ///    sharers' lock too);
    /// 3. take the port again like any acquirer: if we get it, nobody shares
    ///    it any more and the file is removed through the protocol; if it is
    ///    held, the sharers hold the port on the file that says they
    ///    inherited it, and it becomes stale when the last one exits.
    ///
    /// Between 2 and 3 a contender may find the file stale and reclaim it: it
    /// then rightly owns the port. Errors before step 2 hand the descriptor
    /// back (still held); after it the lock is no longer ours to return, so a
    /// failed re-take is logged and leaves at worst a stale file, which the
    /// next acquirer reclaims.
    fn release_shared(&mut self, file: File) -> Result<(), LockError> {
        let mut released = self.info.clone();
        released.released_by = Some(self.info.pid);
        if let Err(e) = write_info(&self.target, &file, &released, self.written_len) {
            self.file = Some(file);
            return Err(e);
        }
        drop(file);
        let me = self.info.pid;
        let mut wait = ShortWait::new();
        let outcome = loop {
            break match acquire(self.target.clone()) {
                // The file vanished meanwhile and we made a fresh one: remove it.
                Ok(Acquisition::Fresh(held)) => held.release_dropping(),
                Ok(Acquisition::Stale(stale))
                    if stale.previous.as_ref().map(|i| i.pid) == Some(me) =>
                {
                    stale.discard().map(drop).map_err(|(_, e)| e)
                }
                // Someone else's stale file (a sharer adopted, then died):
                // dropping leaves it exactly as found, for the next acquirer.
                Ok(Acquisition::Stale(_)) => Ok(()),
                Err(LockError::AlreadyRunning { holder, .. })
                    if holder.as_ref().is_some_and(|h| h.pid == me) =>
                {
                    // A process that another thread is spawning holds every
                    // descriptor of ours between its fork and its exec (which
                    // closes them): wait such a moment out before leaving the
                    // port to inheritors.
                    if wait.again() {
                        continue;
                    }
                    tracing::warn!(
                        port = self.target.port,
                        "released, but a process that inherited the lock (forked, or started under it outside the command's process group) still holds it; port {} stays locked until it exits",
                        self.target.port
                    );
                    Ok(())
                }
                // Someone else took the port after we let go.
                Err(LockError::AlreadyRunning { .. }) => Ok(()),
                Err(e) => Err(e),
            };
        };
        if let Err(e) = outcome {
            tracing::warn!(
                port = self.target.port,
                "released, but the lock file could not be tidied: {e} (the next start reclaims it)"
            );
        }
        Ok(())
    }

    /// The release rule's question: does the file's first JSON value record
    /// `pid`? One short pread for anything we wrote; when the file holds
    /// exactly the bytes we wrote (the common case) they answer without a
    /// parse, since they record `info.pid`.
    fn file_records(&self, file: &File, pid: u32) -> Result<bool, LockError> {
        let mut buf = [0u8; 1024];
        // One byte more than ours: a longer file is not "exactly ours".
        if let Some(window) = buf.get_mut(..self.written.len() + 1) {
            let n = sys::read_at(file, window, 0)
                .map_err(|e| LockError::io("cannot read lock file", self.target.path(), e))?;
            if window[..n] == self.written[..] {
                return Ok(self.info.pid == pid);
            }
        }
        let content = read_content(self.target.path(), file)?;
        Ok(info::recorded_pid(&content) == Some(pid))
    }

    /// Checks that the path still names the inode we hold and, if someone
    /// removed or replaced the file by hand, re-takes the path with the same
    /// protocol as a new acquirer (re-creating a removed lock dir), keeping our
    /// recorded info. A forked non-owner has nothing to check.
    pub(crate) fn verify(&mut self) -> Result<Integrity, LockError> {
        // A forked non-owner has nothing to check; neither has a holder
        // whose lock is in a successor's hands (the successor checks it).
        if self.owner_pid != sys::current_pid() || self.handed_on {
            return Ok(Integrity::Intact);
        }
        let target = &self.target;
        // The dir's name must still lead to the dir we hold open (it may have
        // been removed, moved or replaced), and the file's name to our inode.
        let dir_named = sys::path_id(&target.dir_path)
            .map_err(|e| LockError::io("cannot inspect lock dir", &*target.dir_path, e))?
            == Some(target.dir.id());
        if dir_named && target.current_id()? == Some(self.id) {
            // Same inode, but overwritten in place (`echo x > file`)? Then
            // `status` and `stop` could no longer name us: write our info
            // back. Valid info naming another process is left alone: that
            // is a forked child that adopted the lock.
            let mut content = read_content(target.path(), self.file())?;
            // Another writer of this description (a successor that received
            // it by handover) may be mid-write: a torn read is looked at
            // again before it counts as overwritten.
            for _ in 0..TORN_READ_RETRIES {
                if LockInfo::parse_for_port(&content, target.port).is_some() {
                    return Ok(Integrity::Intact);
                }
                std::thread::sleep(TORN_READ_PAUSE);
                content = read_content(target.path(), self.file())?;
            }
            if LockInfo::parse_for_port(&content, target.port).is_some() {
                return Ok(Integrity::Intact);
            }
            let info = self.info.clone();
            self.written_len = content.len() as u64; // what the shrink must cover
            self.write_record(info)?;
            return Ok(Integrity::Restored);
        }
        // Our inode lost its name: its lock now protects nothing, because new
        // acquirers open the new name (in whatever dir the path names now,
        // re-created if it was removed). Take that name like anyone else would.
        let dir = LockDir::create(&*target.dir_path)?;
        // Our own info from the first write: readers never see another start
        // time, whatever moment they look.
        let mut replacement = match acquire_as(Target::new(&dir, target.port), Some(&self.info)) {
            Ok(Acquisition::Fresh(holding)) => holding,
            Ok(Acquisition::Stale(stale)) => {
                stale.reclaim_as(self.info.clone()).map_err(|(_, e)| e)?.0
            }
            Err(LockError::AlreadyRunning { holder, .. }) => return Ok(Integrity::Lost(holder)),
            Err(e) => return Err(e),
        };
        // Swap the descriptors: we keep the new file; the old, nameless one is
        // closed without touching any name.
        std::mem::swap(&mut self.file, &mut replacement.file);
        std::mem::swap(&mut self.id, &mut replacement.id);
        std::mem::swap(&mut self.written_len, &mut replacement.written_len);
        std::mem::swap(&mut self.written, &mut replacement.written);
        std::mem::swap(&mut self.target, &mut replacement.target);
        std::mem::swap(&mut self.dir_pin, &mut replacement.dir_pin);
        drop(replacement.file.take());
        if self.may_be_shared() {
            return Ok(Integrity::Detached);
        }
        Ok(Integrity::Restored)
    }

    /// Keeps tmp cleaners away from what this holder depends on, for as long
    /// as it holds: sets the times of the lock file, of the lock dir and of
    /// each of `companions` (names in the lock dir, e.g. the control socket;
    /// a missing one is skipped) to now, for cleaners that judge by age alone
    /// (tmpreaper, `find -mtime`), and re-takes the dir's shared lock if it
    /// could not be had at acquire (see [`sys::DirPin`]). Changes no content.
    pub(crate) fn refresh(&mut self, companions: &[&str]) -> Result<(), LockError> {
        let target = &self.target;
        sys::repin_dir(&mut self.dir_pin);
        sys::touch_file(self.file())
            .map_err(|e| LockError::io("cannot refresh the times of", target.path(), e))?;
        for name in companions {
            sys::touch_name(&target.dir, name).map_err(|e| {
                LockError::io("cannot refresh the times of", target.dir_path.join(name), e)
            })?;
        }
        sys::touch_dir(&target.dir)
            .map_err(|e| LockError::io("cannot refresh the times of", &*target.dir_path, e))
    }

    /// Whether the lock dir is share-locked for this holder (see
    /// [`sys::DirPin`]).
    #[cfg(all(test, unix))]
    pub(crate) fn dir_pinned(&self) -> bool {
        sys::is_pinned(&self.dir_pin)
    }

    /// Closes the descriptor without removing the file, exactly as if the
    /// process had been killed: the next acquirer finds a stale lock.
    pub(crate) fn abandon(mut self) {
        drop(self.file.take());
    }

    /// Whether this process is the owner: it took or adopted the lock, and
    /// the file still records it (after a forked child adopts, the parent's
    /// handle is no longer the owner).
    pub(crate) fn is_owner(&self) -> bool {
        let pid = sys::current_pid();
        pid == self.owner_pid && self.file_records(self.file(), pid).unwrap_or(false)
    }
}

impl Drop for Holding {
    fn drop(&mut self) {
        if let Err(e) = self.release_in_place() {
            tracing::warn!(
                port = self.target.port,
                "releasing the lock on drop failed: {e}"
            );
            if let Some(file) = self.file.take() {
                sys::unlock_before_close(&file);
                drop(file); // the kernel lock goes with the descriptor
            }
        }
    }
}

/// Step 8: observe a port without taking it. Never creates anything; holds at
/// most a shared lock for the duration of one read, which acquirers wait out.
pub(crate) fn probe(target: &Target) -> Result<LockState, LockError> {
    let port = target.port;
    let mut wait = ShortWait::new();
    for _ in 0..INODE_RETRIES {
        let file = match sys::open_for_probe(&target.dir, &target.name) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(LockState::Free),
            // Windows: a releasing holder is deleting the file; look again.
            Err(e) if sys::is_transient_open_error(&e) && wait.again() => continue,
            Err(e) => return Err(open_error(target.path(), e, "cannot open lock file")),
        };
        let st = check_file(target, &file)?;
        match sys::try_lock_shared(&file)
            .map_err(|e| LockError::io("cannot lock", target.path(), e))?
        {
            TryLock::Contended => return Ok(LockState::Held(read_holder(&file, port))),
            TryLock::Acquired => {
                // Nobody holds it. Released between our open and lock? Then
                // the name is gone or new: look again.
                if target.current_id()? != Some(st.id) {
                    continue;
                }
                // Stable while we hold the shared lock: writers need exclusive.
                let content = read_content(target.path(), &file)?;
                sys::unlock_before_close(&file);
                drop(file);
                return Ok(if content.is_empty() {
                    // Created but never written (an acquirer between open and
                    // lock, or one that died there): nothing to report.
                    LockState::Free
                } else {
                    LockState::Stale(LockInfo::parse_for_port(&content, port))
                });
            }
        }
    }
    Err(LockError::io(
        "lock file keeps being replaced while we probe it",
        target.path(),
        io::Error::other("gave up after repeated inode changes; retry"),
    ))
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;

    /// A release whose read fails (here: the locked descriptor is write-only,
    /// so `pread` gives EBADF) must hand back a lock that is still held and
    /// usable, not one whose descriptor is gone (which used to panic on the
    /// next use and silently drop the lock).
    #[test]
    fn a_failed_release_hands_back_a_lock_that_is_still_held() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = LockDir::create(tmp.path().join("locks")).unwrap();
        let target = Target::new(&dir, 4242);
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(target.path())
            .unwrap();
        assert_eq!(sys::try_lock_exclusive(&file).unwrap(), TryLock::Acquired);
        let info = LockInfo::for_current_process(target.port);
        let id = sys::stat_open(&target.dir, &file).unwrap().id;
        let holding = Holding::establish(target.clone(), file, id, info, 0).unwrap();

        let (holding, err) = holding.release().map(|_| ()).unwrap_err();
        assert!(matches!(err, LockError::Io { .. }), "{err}");
        assert!(matches!(probe(&target).unwrap(), LockState::Held(Some(_))));
        // Usable without a panic: the read fails, so it cannot claim ownership.
        assert!(!holding.is_owner());
        drop(holding); // Drop's release fails the same way and closes the descriptor
        assert!(!matches!(probe(&target).unwrap(), LockState::Held(_)));
    }

    fn fresh(dir: &LockDir, port: u16) -> Box<Holding> {
        match acquire(Target::new(dir, port)).unwrap() {
            Acquisition::Fresh(holding) => holding,
            Acquisition::Stale(_) => panic!("port {port} was stale"),
        }
    }

    /// What a cleaner that honours locks (systemd-tmpfiles) gets when it
    /// tries to lock the dir exclusively, through its own open of the dir.
    fn cleaner_may_lock(dir: &LockDir) -> bool {
        let file = File::open(dir.path()).unwrap();
        sys::try_lock_exclusive(&file).unwrap() == TryLock::Acquired
    }

    /// Every holder share-locks the dir from acquire to release, each on its
    /// own description (two holders of one `LockDir`: the first release
    /// leaves the second's), shared locks of others still coexist, and the
    /// last release frees the dir while the `LockDir` is still open.
    #[test]
    fn holders_share_lock_their_dir_until_their_release() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = LockDir::create(tmp.path().join("locks")).unwrap();
        assert!(cleaner_may_lock(&dir), "locked before anyone holds");
        let a = fresh(&dir, 4242);
        let b = fresh(&dir, 4243);
        assert!(a.dir_pinned() && b.dir_pinned());
        assert!(!cleaner_may_lock(&dir), "not locked while two hold");
        let other = File::open(dir.path()).unwrap();
        assert_eq!(sys::try_lock_shared(&other).unwrap(), TryLock::Acquired);
        drop(other);
        a.release().map_err(|(_, e)| e).unwrap();
        assert!(!cleaner_may_lock(&dir), "one release unlocked the other's");
        b.release().map_err(|(_, e)| e).unwrap();
        assert!(cleaner_may_lock(&dir), "still locked after the releases");
    }

    /// The times of `path` (not following a symlink), `(atime, mtime)` in
    /// seconds.
    fn times(path: &Path) -> (i64, i64) {
        use std::os::unix::fs::MetadataExt;
        let meta = std::fs::symlink_metadata(path).unwrap();
        (meta.atime(), meta.mtime())
    }

    /// Sets both times of `path` (not following a symlink) to `secs`.
    fn set_times(path: &Path, secs: i64) {
        use std::os::unix::ffi::OsStrExt;
        let c = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
        let t = libc::timespec {
            tv_sec: secs as libc::time_t,
            tv_nsec: 0,
        };
        // SAFETY: a NUL-terminated path and two timespecs.
        let rc = unsafe {
            libc::utimensat(
                libc::AT_FDCWD,
                c.as_ptr(),
                [t, t].as_ptr(),
                libc::AT_SYMLINK_NOFOLLOW,
            )
        };
        assert_eq!(rc, 0, "{}", io::Error::last_os_error());
    }

    /// `refresh` makes the lock file, the companion (a socket, like the
    /// control socket) and the dir look new to a cleaner that judges by age
    /// alone, without changing the record; a missing companion is skipped.
    #[test]
    fn refresh_sets_the_times_of_the_file_companions_and_dir_to_now() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = LockDir::create(tmp.path().join("locks")).unwrap();
        let mut held = fresh(&dir, 4242);
        let ctl = dir.path().join("serve_4242.ctl");
        let _listener = std::os::unix::net::UnixListener::bind(&ctl).unwrap();
        let record = std::fs::read(held.target.path()).unwrap();
        let aged = [
            held.target.path().to_owned(),
            ctl.clone(),
            dir.path().to_owned(),
        ];
        let two_days_ago = chrono::Utc::now().timestamp() - 2 * 86_400;
        for path in &aged {
            set_times(path, two_days_ago);
        }
        let before = chrono::Utc::now().timestamp();
        held.refresh(&["serve_4242.ctl", "serve_4242.missing"])
            .unwrap();
        for path in &aged {
            let (atime, mtime) = times(path);
            assert!(
                atime >= before && mtime >= before,
                "{} not refreshed: {atime} {mtime} < {before}",
                path.display()
            );
        }
        assert_eq!(std::fs::read(held.target.path()).unwrap(), record);
        held.release().map_err(|(_, e)| e).unwrap();
    }

    /// A lock dir removed by hand (a cleaner that ignores locks) is
    /// re-created by `verify`, and the holder's shared lock moves to it.
    #[test]
    fn a_recreated_dir_is_share_locked_again() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("locks");
        let dir = LockDir::create(&path).unwrap();
        let mut held = fresh(&dir, 4242);
        std::fs::remove_dir_all(&path).unwrap();
        assert_eq!(held.verify().unwrap(), Integrity::Restored);
        let recreated = LockDir::create(&path).unwrap();
        assert!(held.dir_pinned());
        assert!(!cleaner_may_lock(&recreated), "the new dir is not locked");
        held.release().map_err(|(_, e)| e).unwrap();
        assert!(cleaner_may_lock(&recreated));
    }
}
