//! Hostile things at the lock file's path: refused with a clear error, never
//! followed, never written, never hung on.
#![cfg(unix)]

use std::os::unix::fs::{symlink, PermissionsExt};

use llmlb::lock::{acquire_or_reclaim, LockDir, LockError};

const PORT: u16 = 44321;

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
