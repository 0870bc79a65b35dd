//! Hostile things at the lock file's path: refused with a clear error, never
//! followed, never written, never hung on. Most are made with Unix
//! mechanisms (symlinks, FIFOs, modes) and are Unix-only; the rest run on
//! Windows too.

#[cfg(unix)]
use std::os::unix::fs::{symlink, PermissionsExt};

use llmlb::lock::{acquire_or_reclaim, LockDir, LockError};

const PORT: u16 = 44321;

#[cfg(unix)]
#[test]
fn symlinked_lock_file_is_refused_and_its_target_never_written() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = LockDir::create(tmp.path().join("locks")).unwrap();
    let victim = tmp.path().join("victim");
    std::fs::write(&victim, b"precious").unwrap();
    symlink(&victim, dir.lock_path(PORT)).unwrap();

    let err = acquire_or_reclaim(&dir, PORT).unwrap_err();
    assert!(
        matches!(
            err,
            LockError::UnsafeLockFile {
                reason: "is a symlink",
                ..
            }
        ),
        "{err}"
    );
    let msg = err.to_string();
    assert!(
        msg.contains(&dir.lock_path(PORT).display().to_string()),
        "{msg}"
    );
    assert!(matches!(
        dir.probe(PORT),
        Err(LockError::UnsafeLockFile { .. })
    ));
    assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
}

#[cfg(unix)]
#[test]
fn dangling_symlink_is_refused_and_nothing_is_created() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = LockDir::create(tmp.path().join("locks")).unwrap();
    let target = tmp.path().join("would-be-created");
    symlink(&target, dir.lock_path(PORT)).unwrap();
    assert!(matches!(
        acquire_or_reclaim(&dir, PORT),
        Err(LockError::UnsafeLockFile { .. })
    ));
    assert!(!target.exists(), "O_CREAT must not follow the link");
}

#[cfg(unix)]
#[test]
fn fifo_at_the_lock_path_is_refused_without_hanging() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = LockDir::create(tmp.path().join("locks")).unwrap();
    let path = std::ffi::CString::new(dir.lock_path(PORT).to_str().unwrap()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(path.as_ptr(), 0o600) }, 0);
    for result in [
        acquire_or_reclaim(&dir, PORT).map(drop),
        dir.probe(PORT).map(drop),
    ] {
        match result {
            Err(LockError::UnsafeLockFile { reason, .. }) => {
                assert_eq!(reason, "is not a regular file")
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
    }
}

#[cfg(unix)]
#[test]
fn lock_file_is_created_owner_only() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = LockDir::create(tmp.path().join("locks")).unwrap();
    let guard = acquire_or_reclaim(&dir, PORT).unwrap();
    let mode = std::fs::metadata(guard.path())
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600);
}

#[test]
fn error_messages_are_one_line_and_name_the_thing() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = LockDir::create(tmp.path().join("locks")).unwrap();
    let _holder = acquire_or_reclaim(&dir, PORT).unwrap();
    let errors = [
        acquire_or_reclaim(&dir, PORT).unwrap_err(),
        dir.port(0).map(drop).unwrap_err(),
        LockDir::create("relative").unwrap_err(),
    ];
    for err in errors {
        let msg = err.to_string();
        assert!(!msg.contains('\n'), "one line: {msg}");
        assert!(!msg.contains("Os {"), "no Debug dump: {msg}");
    }
    let running = acquire_or_reclaim(&dir, PORT).unwrap_err().to_string();
    assert!(
        running.contains("port 44321") && running.contains("llmlb stop --port 44321"),
        "{running}"
    );
}

/// A symlinked lock dir spelled with a trailing `/` or `/.` makes `lstat`
/// follow the link; the dir is opened `O_NOFOLLOW` after normalising the
/// spelling, so every spelling is refused.
#[cfg(unix)]
#[test]
fn symlinked_dir_is_refused_however_it_is_spelled() {
    let tmp = tempfile::tempdir().unwrap();
    let real = tmp.path().join("real");
    std::fs::create_dir(&real).unwrap();
    std::fs::set_permissions(&real, std::fs::Permissions::from_mode(0o700)).unwrap();
    let link = tmp.path().join("link");
    symlink(&real, &link).unwrap();
    let link = link.to_str().unwrap();
    for spelling in [
        link.to_owned(),
        format!("{link}/"),
        format!("{link}/."),
        format!("{link}//./"),
    ] {
        for result in [
            LockDir::create(&spelling),
            LockDir::existing(&spelling).map(|d| d.expect("exists")),
        ] {
            let err = result.expect_err(&spelling);
            assert!(
                matches!(
                    err,
                    LockError::UnsafeLockDir {
                        reason: "is a symlink",
                        ..
                    }
                ),
                "{spelling}: {err}"
            );
        }
    }
    assert_eq!(std::fs::read_dir(&real).unwrap().count(), 0);
}

#[test]
fn dot_dot_in_a_lock_dir_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let spelled = tmp.path().join("a/../locks");
    let err = LockDir::create(&spelled).unwrap_err();
    assert!(
        matches!(err, LockError::UnsafeLockDir { .. }) && err.to_string().contains("`..`"),
        "{err}"
    );
    assert!(!tmp.path().join("locks").exists());
}

/// The hint for a dir someone else owns cannot be `chmod` (only its owner
/// can); a group-writable dir of our own that is not our default dir (it
/// may be shared: `/tmp`, a team's dir) gets a private subdirectory instead.
#[cfg(unix)]
#[test]
fn dir_hints_name_a_fix_that_works() {
    let tmp = tempfile::tempdir().unwrap();
    let open = tmp.path().join("open");
    std::fs::create_dir(&open).unwrap();
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o770)).unwrap();
    let msg = LockDir::create(&open).unwrap_err().to_string();
    assert!(!msg.contains("chmod 7"), "{msg}");
    assert!(msg.contains("a private subdirectory"), "{msg}");

    let link = tmp.path().join("link");
    symlink(&open, &link).unwrap();
    let msg = LockDir::create(&link).unwrap_err().to_string();
    assert!(!msg.contains("chmod"), "{msg}");
    assert!(msg.contains("LLMLB_LOCK_DIR"), "{msg}");

    let file = tmp.path().join("file");
    std::fs::write(&file, b"").unwrap();
    let msg = LockDir::create(&file).unwrap_err().to_string();
    assert!(
        !msg.contains("chmod") && msg.contains("is not a directory"),
        "{msg}"
    );
}

/// A lock dir path holding a newline or another control character still
/// yields a one-line error (found by the `ffi` fuzz target).
#[cfg(unix)] // Windows forbids control characters in file names
#[test]
fn control_characters_in_paths_stay_on_one_line() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("x\u{6}\nhello\u{1b}[31m");
    std::fs::write(&file, b"").unwrap();
    for err in [
        LockDir::create(&file).unwrap_err(),
        LockDir::create(file.join("sub")).unwrap_err(),
        LockDir::create(tmp.path().join(format!("{}\n/z", "a".repeat(300)))).unwrap_err(),
    ] {
        let msg = err.to_string();
        assert!(!msg.chars().any(char::is_control), "{msg:?}");
        assert!(msg.contains("\\n"), "{msg:?}");
    }
}
