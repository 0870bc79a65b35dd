//! Fuzz entry `ffi`: arbitrary call sequences on the exported C functions,
//! with NULLs, misaligned out pointers, port 0, empty / relative / non-UTF-8 /
//! overlong / unsafe lock dirs, too-small path buffers and repeated probes,
//! on live handles too. Nothing may crash or return `LLMLB_STATUS_PANIC`;
//! every status and every out parameter must be the documented one, and the
//! lock must stay exclusive (a live handle's port is `ALREADY_RUNNING` for
//! the next acquire and `HELD` for a probe; a released one is free).
//! A handle is never released twice: that is undefined behaviour by contract.
//!
//! Shared by the libFuzzer target and the stable corpus replay
//! (`ffi/tests/fuzz_replay.rs`).
//!
//! Byte format: one op byte (`% 8`: 0 acquire, 1 release, 2 adopt, 3 info,
//! 4 probe, 5 path, 6 probe twice, 7 last_error/version), then argument bytes
//! read as needed (0 once the input is exhausted): a dir selector (`% 12`, see
//! [`Fixture::dir`]; 10 takes a length byte and a name), a port selector (`% 6`: 0,
//! 1, 41001, 41002, 65535, or two more bytes), pointer flags, a handle index.

use std::ffi::{c_char, CStr, CString};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::ptr;
use std::sync::OnceLock;

use llmlb_lock::{
    llmlb_last_error, llmlb_lock_acquire, llmlb_lock_adopt, llmlb_lock_info, llmlb_lock_path,
    llmlb_lock_probe, llmlb_lock_release, llmlb_lock_version, LlmlbLock, LlmlbLockInfo,
    LlmlbLockState, LlmlbStatus,
};

use LlmlbStatus::*;

/// How a call must turn out for a dir, given valid other arguments.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    /// A usable dir: the call succeeds (or reports contention).
    Good,
    /// Refused before touching anything: `INVALID_ARGUMENT`.
    Invalid,
    /// The lock dir fails the safety checks: `UNSAFE_PATH`.
    Unsafe,
    /// The OS refuses the path (name too long): `IO_ERROR`, except for
    /// `llmlb_lock_path`, which touches no file.
    Io,
    /// Fuzzed: any documented status.
    Any,
}

struct Dir {
    arg: Option<CString>,
    /// The lock file directory as exclusivity key (aliases share it).
    key: Option<PathBuf>,
    kind: Kind,
    /// Bytes of the computed `<dir>/serve_<port>.lock` prefix (when computable).
    path: Option<Vec<u8>>,
}

struct Input<'a>(&'a [u8]);

impl Input<'_> {
    fn byte(&mut self) -> u8 {
        match self.0.split_first() {
            Some((&b, rest)) => {
                self.0 = rest;
                b
            }
            None => 0,
        }
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        let n = n.min(self.0.len());
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        head.to_vec()
    }
}

/// The lock dir a NULL `lock_dir` resolves to in this process. Each [`run`]
/// removes it when it ends ([`RemoveDefaultDir`]); the library re-creates it
/// on the next NULL acquire.
fn default_dir() -> &'static Path {
    static DEFAULT: OnceLock<PathBuf> = OnceLock::new();
    DEFAULT.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("llmlb-fuzz-ffi-{}", std::process::id()));
        // Set once, before any call that reads it: a NULL lock_dir must never
        // touch the user's real default lock dir.
        std::env::set_var("LLMLB_LOCK_DIR", &dir);
        dir
    })
}

/// Removes the default lock dir when dropped, also while a failing run
/// unwinds: every run (and so every `cargo test`) leaves no
/// `<tmp>/llmlb-fuzz-ffi-<pid>` behind.
struct RemoveDefaultDir;

impl Drop for RemoveDefaultDir {
    fn drop(&mut self) {
        match std::fs::remove_dir_all(default_dir()) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound && !std::thread::panicking() => {
                panic!("cannot remove {}: {e}", default_dir().display())
            }
            _ => {}
        }
    }
}

struct Fixture {
    tmp: tempfile::TempDir,
}

impl Fixture {
    fn new() -> Fixture {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().expect("temp dir");
        std::fs::write(tmp.path().join("file"), b"not a dir").unwrap();
        let open = tmp.path().join("open");
        std::fs::create_dir(&open).unwrap();
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
        std::os::unix::fs::symlink(tmp.path().join("locks"), tmp.path().join("link")).unwrap();
        Fixture { tmp }
    }

    /// The `lock_dir` argument for selector `% 12`: 0 NULL (the default dir:
    /// `LLMLB_LOCK_DIR`, set per fuzz process), 1 `<tmp>/locks`, 2
    /// `<tmp>/a/b/c` (missing parents), 3 `""`, 4 `relative/locks`, 5
    /// `<tmp>/\xff\xfe` (not UTF-8), 6 a 5000-byte name, 7 a regular file,
    /// 8 a mode-0777 dir, 9 a symlink to `<tmp>/locks`, 10 `<tmp>/f<fuzzed
    /// name>`, 11 `<tmp>//locks/.` (an alias of 1).
    fn dir(&self, input: &mut Input<'_>) -> Dir {
        let tmp = self.tmp.path();
        let abs = |p: PathBuf, kind: Kind| Dir {
            arg: Some(CString::new(p.as_os_str().as_bytes()).unwrap()),
            key: (kind == Kind::Good).then(|| p.clone()),
            path: Some(p.as_os_str().as_bytes().to_vec()),
            kind,
        };
        match input.byte() % 12 {
            0 => Dir {
                arg: None,
                key: Some(default_dir().to_path_buf()),
                kind: Kind::Good,
                path: Some(default_dir().as_os_str().as_bytes().to_vec()),
            },
            1 => abs(tmp.join("locks"), Kind::Good),
            2 => abs(tmp.join("a/b/c"), Kind::Good),
            3 => Dir {
                arg: Some(CString::default()),
                key: None,
                kind: Kind::Invalid,
                path: None,
            },
            4 => Dir {
                arg: Some(CString::new("relative/locks").unwrap()),
                key: None,
                kind: Kind::Invalid,
                path: None,
            },
            5 => {
                let mut bytes = tmp.as_os_str().as_bytes().to_vec();
                bytes.extend_from_slice(b"/\xff\xfe");
                Dir {
                    arg: Some(CString::new(bytes).unwrap()),
                    key: None,
                    kind: Kind::Invalid,
                    path: None,
                }
            }
            6 => abs(tmp.join("x".repeat(5000)), Kind::Io),
            7 => abs(tmp.join("file"), Kind::Unsafe),
            8 => abs(tmp.join("open"), Kind::Unsafe),
            9 => abs(tmp.join("link"), Kind::Unsafe),
            10 => {
                let len = usize::from(input.byte());
                // One component under tmp: no '/', no NUL, never "." or "..".
                let mut name = b"f".to_vec();
                name.extend(
                    input
                        .bytes(len)
                        .into_iter()
                        .filter(|&b| b != b'/' && b != 0),
                );
                let mut bytes = tmp.as_os_str().as_bytes().to_vec();
                bytes.push(b'/');
                bytes.extend_from_slice(&name);
                let utf8 = std::str::from_utf8(&bytes).is_ok();
                Dir {
                    key: utf8.then(|| PathBuf::from(std::ffi::OsStr::from_bytes(&bytes))),
                    path: utf8.then(|| bytes.clone()),
                    arg: Some(CString::new(bytes).unwrap()),
                    kind: if utf8 { Kind::Any } else { Kind::Invalid },
                }
            }
            _ => {
                let mut bytes = tmp.as_os_str().as_bytes().to_vec();
                bytes.extend_from_slice(b"//locks/.");
                Dir {
                    arg: Some(CString::new(bytes.clone()).unwrap()),
                    key: Some(tmp.join("locks")),
                    kind: Kind::Good,
                    path: Some(bytes),
                }
            }
        }
    }
}

fn port(input: &mut Input<'_>) -> u16 {
    match input.byte() % 6 {
        0 => 0,
        1 => 1,
        2 => 41001,
        3 => 41002,
        4 => 65535,
        _ => u16::from_le_bytes([input.byte(), input.byte()]),
    }
}

/// An out pointer as the fuzzer chose it: NULL, valid, or misaligned.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Ptr {
    Null,
    Valid,
    Misaligned,
}

fn ptr_choice(flags: u8, shift: u8) -> Ptr {
    match (flags >> shift) & 3 {
        0 => Ptr::Null,
        3 => Ptr::Misaligned,
        _ => Ptr::Valid,
    }
}

/// Backing store for an out parameter of type `T`: a valid, a misaligned or
/// a NULL pointer into it, and whether any byte changed.
struct OutSlot<T> {
    buf: Vec<u64>,
    _t: std::marker::PhantomData<T>,
}

const POISON: u64 = 0xA5A5_A5A5_A5A5_A5A5;

impl<T> OutSlot<T> {
    fn new() -> Self {
        let words = std::mem::size_of::<T>().div_ceil(8) + 1;
        OutSlot {
            buf: vec![POISON; words],
            _t: std::marker::PhantomData,
        }
    }

    fn ptr(&mut self, choice: Ptr) -> *mut T {
        match choice {
            Ptr::Null => ptr::null_mut(),
            Ptr::Valid => self.buf.as_mut_ptr().cast(),
            // One byte in: misaligned for every T with align > 1, and the
            // extra word keeps it in bounds.
            Ptr::Misaligned => self.buf.as_mut_ptr().cast::<u8>().wrapping_add(1).cast(),
        }
    }

    fn untouched(&self) -> bool {
        self.buf.iter().all(|&w| w == POISON)
    }

    /// The value written through a valid pointer.
    ///
    /// # Safety
    /// The library wrote a valid `T` there.
    unsafe fn read(&self) -> T {
        // SAFETY: aligned (u64 storage, T's align <= 8) and written (caller).
        unsafe { self.buf.as_ptr().cast::<T>().read() }
    }
}

fn last_error() -> String {
    let p = llmlb_last_error();
    assert!(!p.is_null(), "llmlb_last_error returned NULL");
    // SAFETY: as above.
    let s = unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned();
    assert!(!s.contains('\n'), "multi-line error: {s:?}");
    s
}

fn assert_documented(status: LlmlbStatus, call: &str) {
    assert_ne!(
        status,
        LLMLB_STATUS_PANIC,
        "{call} panicked: {}",
        last_error()
    );
    if status != LLMLB_STATUS_OK {
        assert!(!last_error().is_empty(), "{call} failed without a message");
    }
}

/// The status a call must return for `kind` when its other arguments are
/// valid; `None` when several are documented.
fn expected(kind: Kind) -> Option<LlmlbStatus> {
    match kind {
        Kind::Good | Kind::Any => None,
        Kind::Invalid => Some(LLMLB_STATUS_INVALID_ARGUMENT),
        Kind::Unsafe => Some(LLMLB_STATUS_UNSAFE_PATH),
        Kind::Io => Some(LLMLB_STATUS_IO_ERROR),
    }
}

struct Live {
    handle: *mut LlmlbLock,
    key: (PathBuf, u16),
}

struct Session {
    fixture: Fixture,
    live: Vec<Live>,
}

impl Session {
    fn held(&self, key: &(PathBuf, u16)) -> bool {
        self.live.iter().any(|l| &l.key == key)
    }

    fn pick(&self, input: &mut Input<'_>) -> Option<usize> {
        let i = usize::from(input.byte());
        // One slot past the end means NULL.
        (!self.live.is_empty())
            .then(|| i % (self.live.len() + 1))
            .filter(|&i| i < self.live.len())
    }

    fn acquire(&mut self, input: &mut Input<'_>) {
        let dir = self.fixture.dir(input);
        let port = port(input);
        let flags = input.byte();
        let (lock_choice, other_choice) = (ptr_choice(flags, 0), ptr_choice(flags, 2));
        let mut lock_slot = OutSlot::<*mut LlmlbLock>::new();
        let mut other = OutSlot::<LlmlbLockInfo>::new();
        let dir_ptr = dir.arg.as_ref().map_or(ptr::null(), |c| c.as_ptr());
        // SAFETY: every pointer is NULL, or points into a live buffer big
        // enough for its type (misaligned ones are refused before any write).
        let status = unsafe {
            llmlb_lock_acquire(
                dir_ptr,
                port,
                lock_slot.ptr(lock_choice),
                other.ptr(other_choice),
            )
        };
        assert_documented(status, "llmlb_lock_acquire");
        let key = dir.key.clone().map(|k| (k, port));
        let bad_ptrs = lock_choice != Ptr::Valid || other_choice == Ptr::Misaligned;
        if bad_ptrs || port == 0 {
            assert_eq!(
                status, LLMLB_STATUS_INVALID_ARGUMENT,
                "acquire {:?}",
                dir.arg
            );
        } else if let Some(want) = expected(dir.kind) {
            assert_eq!(status, want, "acquire in {:?}: {}", dir.arg, last_error());
        } else if dir.kind == Kind::Good {
            let key = key.as_ref().unwrap();
            let want = if self.held(key) {
                LLMLB_STATUS_ALREADY_RUNNING
            } else {
                LLMLB_STATUS_OK
            };
            assert_eq!(status, want, "acquire {key:?}: {}", last_error());
        }
        if other_choice == Ptr::Misaligned {
            assert!(other.untouched(), "misaligned out_other was written");
        }
        if lock_choice == Ptr::Misaligned {
            assert!(lock_slot.untouched(), "misaligned out_lock was written");
        }
        if lock_choice == Ptr::Valid {
            // SAFETY: a valid out_lock is written on every status, even when
            // out_other is refused.
            let handle = unsafe { lock_slot.read() };
            assert_eq!(handle.is_null(), status != LLMLB_STATUS_OK);
        }
        if other_choice == Ptr::Valid && lock_choice == Ptr::Valid {
            // SAFETY: out_other is written (zeros at least) on every status.
            let info = unsafe { other.read() };
            match status {
                LLMLB_STATUS_ALREADY_RUNNING => {
                    // Our own live handle holds it: its file is readable.
                    assert_eq!((info.pid, info.port), (std::process::id(), port));
                }
                // Nobody ever crashed in these dirs: nothing was reclaimed.
                _ => assert_eq!(info, LlmlbLockInfo::default(), "status {status:?}"),
            }
        }
        match status {
            LLMLB_STATUS_OK => {
                let key = key.expect("only usable dirs can be acquired");
                assert!(!self.held(&key), "double-held {key:?}");
                // SAFETY: OK with a valid out_lock wrote a live handle.
                let handle = unsafe { lock_slot.read() };
                self.live.push(Live { handle, key });
                self.check_info(self.live.len() - 1);
            }
            LLMLB_STATUS_ALREADY_RUNNING => {
                let key = key.expect("only usable dirs can be contended");
                assert!(self.held(&key), "ALREADY_RUNNING but nobody holds {key:?}");
            }
            _ => {}
        }
    }

    fn check_info(&self, i: usize) {
        let live = &self.live[i];
        let mut info = LlmlbLockInfo::default();
        // SAFETY: a live handle and a valid out pointer.
        let status = unsafe { llmlb_lock_info(live.handle, &mut info) };
        assert_eq!(status, LLMLB_STATUS_OK, "info: {}", last_error());
        assert_eq!((info.pid, info.port), (std::process::id(), live.key.1));
        assert!(info.started_at_unix_ms > 0);
    }

    fn release(&mut self, input: &mut Input<'_>) {
        match self.pick(input) {
            None => {
                // SAFETY: NULL is documented to be refused.
                let status = unsafe { llmlb_lock_release(ptr::null_mut()) };
                assert_documented(status, "llmlb_lock_release");
                assert_eq!(status, LLMLB_STATUS_INVALID_ARGUMENT);
            }
            Some(i) => {
                // Removed from the live set first: never released twice.
                let live = self.live.swap_remove(i);
                // SAFETY: a live handle, released exactly once.
                let status = unsafe { llmlb_lock_release(live.handle) };
                assert_documented(status, "llmlb_lock_release");
                assert_eq!(status, LLMLB_STATUS_OK, "release: {}", last_error());
                self.check_probe(&live.key, LlmlbLockState::LLMLB_STATE_FREE);
            }
        }
    }

    fn check_probe(&self, key: &(PathBuf, u16), want: LlmlbLockState) {
        let dir = CString::new(key.0.as_os_str().as_bytes()).unwrap();
        let mut state = LlmlbLockState::LLMLB_STATE_STALE;
        let mut info = LlmlbLockInfo::default();
        // SAFETY: valid string and out pointers.
        let status = unsafe { llmlb_lock_probe(dir.as_ptr(), key.1, &mut state, &mut info) };
        assert_eq!(status, LLMLB_STATUS_OK, "probe {key:?}: {}", last_error());
        assert_eq!(state, want, "probe {key:?}");
    }

    fn adopt(&mut self, input: &mut Input<'_>) {
        let handle = self
            .pick(input)
            .map_or(ptr::null_mut(), |i| self.live[i].handle);
        // SAFETY: NULL or a live handle.
        let status = unsafe { llmlb_lock_adopt(handle) };
        assert_documented(status, "llmlb_lock_adopt");
        let want = if handle.is_null() {
            LLMLB_STATUS_INVALID_ARGUMENT
        } else {
            // The owner adopting its own lock: a no-op.
            LLMLB_STATUS_OK
        };
        assert_eq!(status, want, "adopt: {}", last_error());
    }

    fn info(&mut self, input: &mut Input<'_>) {
        let pick = self.pick(input);
        let handle = pick.map_or(ptr::null(), |i| self.live[i].handle.cast_const());
        let choice = ptr_choice(input.byte(), 0);
        let mut out = OutSlot::<LlmlbLockInfo>::new();
        // SAFETY: NULL or a live handle; out is NULL or in bounds.
        let status = unsafe { llmlb_lock_info(handle, out.ptr(choice)) };
        assert_documented(status, "llmlb_lock_info");
        match (pick, choice) {
            (Some(i), Ptr::Valid) => {
                assert_eq!(status, LLMLB_STATUS_OK, "info: {}", last_error());
                // SAFETY: written on OK.
                let info = unsafe { out.read() };
                assert_eq!(
                    (info.pid, info.port),
                    (std::process::id(), self.live[i].key.1)
                );
            }
            _ => {
                assert_eq!(status, LLMLB_STATUS_INVALID_ARGUMENT);
                assert!(out.untouched(), "out_info written on failure");
            }
        }
    }

    /// One probe; returns what it saw (status, state, info) for comparisons.
    fn probe(
        &mut self,
        dir: &Dir,
        port: u16,
        flags: u8,
    ) -> (LlmlbStatus, Option<u32>, LlmlbLockInfo) {
        let (state_choice, info_choice) = (ptr_choice(flags, 0), ptr_choice(flags, 2));
        let mut state = OutSlot::<LlmlbLockState>::new();
        let mut info = OutSlot::<LlmlbLockInfo>::new();
        let dir_ptr = dir.arg.as_ref().map_or(ptr::null(), |c| c.as_ptr());
        // SAFETY: NULL or in-bounds pointers; a NUL-terminated dir or NULL.
        let status = unsafe {
            llmlb_lock_probe(
                dir_ptr,
                port,
                state.ptr(state_choice).cast(),
                info.ptr(info_choice),
            )
        };
        assert_documented(status, "llmlb_lock_probe");
        let bad_ptrs = state_choice != Ptr::Valid || info_choice == Ptr::Misaligned;
        if bad_ptrs || port == 0 {
            assert_eq!(status, LLMLB_STATUS_INVALID_ARGUMENT, "probe {:?}", dir.arg);
        } else if let Some(want) = expected(dir.kind) {
            assert_eq!(status, want, "probe {:?}: {}", dir.arg, last_error());
        } else {
            assert!(
                matches!(status, LLMLB_STATUS_OK | LLMLB_STATUS_IO_ERROR),
                "probe {:?}: {status:?}",
                dir.arg
            );
            if dir.kind == Kind::Good {
                assert_eq!(status, LLMLB_STATUS_OK, "probe: {}", last_error());
            }
        }
        if info_choice == Ptr::Misaligned {
            assert!(info.untouched());
        }
        if state_choice == Ptr::Misaligned {
            assert!(state.untouched());
        }
        // The state is written only on OK; read it as its raw integer.
        let raw_state = (status == LLMLB_STATUS_OK).then(|| {
            // SAFETY: the enum is C-int sized and was written on OK.
            let raw = unsafe { state.buf.as_ptr().cast::<u32>().read() };
            assert!(raw <= 2, "probe wrote state {raw}");
            raw
        });
        if status != LLMLB_STATUS_OK && state_choice == Ptr::Valid {
            assert!(state.untouched(), "out_state written on {status:?}");
        }
        let info = if info_choice == Ptr::Valid && !bad_ptrs {
            // SAFETY: written (zeros at least) once the pointers are checked.
            unsafe { info.read() }
        } else {
            LlmlbLockInfo::default()
        };
        if let (Some(raw), Some(k)) = (raw_state, dir.key.as_ref()) {
            let held = self.held(&(k.clone(), port));
            let want = if held {
                LlmlbLockState::LLMLB_STATE_HELD
            } else {
                LlmlbLockState::LLMLB_STATE_FREE
            };
            assert_eq!(raw, want as u32, "probe of {k:?} port {port}");
            if info_choice == Ptr::Valid {
                if held {
                    assert_eq!((info.pid, info.port), (std::process::id(), port));
                } else {
                    assert_eq!(info, LlmlbLockInfo::default());
                }
            }
        }
        (status, raw_state, info)
    }

    fn path(&mut self, input: &mut Input<'_>) {
        let dir = self.fixture.dir(input);
        let port = port(input);
        let flags = input.byte();
        let computable = port != 0 && dir.path.is_some();
        let want_path = dir.path.clone().map(|mut p| {
            p.push(b'/');
            p.extend_from_slice(format!("serve_{port}.lock").as_bytes());
            p
        });
        let len = want_path.as_ref().map_or(0, Vec::len);
        let buf_len = match flags % 8 {
            0 => 0,
            1 => 1,
            2 => 16,
            3 => 4096,
            4 => 8192,
            5 => len + 1,
            6 => len,
            _ => len + 2,
        };
        let null_buf = flags & 0x10 != 0;
        let len_choice = ptr_choice(flags, 5);
        let mut buf = vec![0xAAu8; buf_len.max(1)];
        let mut out_len = OutSlot::<usize>::new();
        let buf_ptr = if null_buf {
            ptr::null_mut()
        } else {
            buf.as_mut_ptr().cast::<c_char>()
        };
        let dir_ptr = dir.arg.as_ref().map_or(ptr::null(), |c| c.as_ptr());
        // SAFETY: buf is NULL or valid for buf_len bytes; out_len NULL or in
        // bounds; dir NULL or NUL-terminated.
        let status =
            unsafe { llmlb_lock_path(dir_ptr, port, buf_ptr, buf_len, out_len.ptr(len_choice)) };
        assert_documented(status, "llmlb_lock_path");
        let fits = !null_buf && buf_len > len;
        // A NULL buf with an out_len is the sizing call: OK, only out_len set.
        let sizing = null_buf && len_choice == Ptr::Valid;
        let want = if len_choice == Ptr::Misaligned || !computable || !(fits || sizing) {
            LLMLB_STATUS_INVALID_ARGUMENT
        } else {
            LLMLB_STATUS_OK
        };
        // A non-UTF-8 fuzzed name is refused (Kind::Invalid, no path).
        assert_eq!(
            status,
            want,
            "path {:?} port {port}: {}",
            dir.arg,
            last_error()
        );
        if len_choice == Ptr::Valid {
            // SAFETY: written (0 at least) once checked.
            let got = unsafe { out_len.read() };
            assert_eq!(got, if computable { len } else { 0 });
        } else if len_choice == Ptr::Misaligned {
            assert!(out_len.untouched());
        }
        if status == LLMLB_STATUS_OK && !null_buf {
            let want_path = want_path.unwrap();
            assert_eq!(&buf[..len], &want_path[..]);
            assert_eq!(buf[len], 0);
            assert!(
                buf[len + 1..].iter().all(|&b| b == 0xAA),
                "wrote past the NUL"
            );
        } else {
            assert!(buf.iter().all(|&b| b == 0xAA), "buf written on {status:?}");
        }
    }

    fn step(&mut self, input: &mut Input<'_>) {
        match input.byte() % 8 {
            0 => self.acquire(input),
            1 => self.release(input),
            2 => self.adopt(input),
            3 => self.info(input),
            op @ (4 | 6) => {
                let twice = op == 6;
                let dir = self.fixture.dir(input);
                let port = port(input);
                let flags = input.byte();
                let first = self.probe(&dir, port, flags);
                if twice {
                    // Probing never changes anything: the same answer again.
                    assert_eq!(self.probe(&dir, port, flags), first, "double probe");
                }
            }
            5 => self.path(input),
            _ => {
                let _ = last_error();
                // SAFETY: a static NUL-terminated string.
                let v = unsafe { CStr::from_ptr(llmlb_lock_version()) };
                assert!(!v.to_bytes().is_empty());
            }
        }
    }
}

/// Longest call sequence run; longer inputs are cut.
const MAX_CALLS: usize = 64;

/// Runs the call sequence encoded in `data`; panics on any undocumented
/// status, out parameter or broken exclusivity. Releases every live handle
/// at the end.
pub fn run(data: &[u8]) {
    default_dir();
    let _cleanup = RemoveDefaultDir;
    let mut session = Session {
        fixture: Fixture::new(),
        live: Vec::new(),
    };
    let mut input = Input(data);
    let mut calls = 0;
    while !input.0.is_empty() && calls < MAX_CALLS {
        session.step(&mut input);
        calls += 1;
    }
    for live in std::mem::take(&mut session.live) {
        // SAFETY: each live handle released exactly once.
        let status = unsafe { llmlb_lock_release(live.handle) };
        assert_eq!(status, LLMLB_STATUS_OK, "final release: {}", last_error());
    }
}
