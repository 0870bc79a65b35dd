//! The serving state in the lock record: written by the holder, in place,
//! under the lock; read by every reader (probe, status, wait) as the holder
//! last said it, and as `ready` when a record has none.

use std::fs;

use llmlb::lock::{acquire_or_reclaim, LockDir, LockInfo, LockState, ServeState};

fn dir() -> (tempfile::TempDir, LockDir) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = LockDir::create(tmp.path().join("locks")).unwrap();
    (tmp, dir)
}

fn recorded(dir: &LockDir, port: u16) -> LockInfo {
    match dir.probe(port).unwrap() {
        LockState::Held(Some(info)) => info,
        other => panic!("expected a held, readable record, got {other:?}"),
    }
}

#[test]
fn a_lock_taken_through_an_announcing_dir_starts_in_that_state() {
    let (_tmp, dir) = dir();
    let guard = acquire_or_reclaim(&dir.clone().announcing(ServeState::Starting), 8101).unwrap();
    let info = recorded(&dir, 8101);
    assert_eq!(info.state, Some(ServeState::Starting));
    assert_eq!(info.serve_state(), ServeState::Starting);
    // Written with the record itself: the same instant as started_at.
    assert_eq!(info.state_since, Some(info.started_at));
    assert_eq!(guard.info().state, Some(ServeState::Starting));
    let raw = fs::read_to_string(dir.lock_path(8101)).unwrap();
    assert!(raw.contains(r#""state":"starting""#), "{raw}");
}

#[test]
fn set_state_rewrites_the_record_in_place_and_readers_see_it() {
    let (_tmp, dir) = dir();
    let mut guard =
        acquire_or_reclaim(&dir.clone().announcing(ServeState::Starting), 8102).unwrap();
    let first = recorded(&dir, 8102);
    for state in [ServeState::Ready, ServeState::Stopping] {
        guard.set_state(state).unwrap();
        let now = recorded(&dir, 8102);
        assert_eq!(now.state, Some(state));
        assert!(now.state_since >= first.state_since);
        // Everything else is the holder's, unchanged.
        assert_eq!(
            (now.pid, now.started_at, now.identity.clone()),
            (first.pid, first.started_at, first.identity.clone())
        );
        assert_eq!(guard.info().state, Some(state));
    }
    // "stopping" is shorter than "starting"/"ready" written before: the
    // file was cut to the new length, no old tail is left to parse.
    let raw = fs::read(dir.lock_path(8102)).unwrap();
    assert_eq!(LockInfo::parse(&raw).unwrap().to_bytes(), raw);
    guard.release().unwrap();
    assert_eq!(dir.probe(8102).unwrap(), LockState::Free);
}

#[test]
fn a_plain_acquire_writes_no_state_and_reads_as_ready() {
    let (_tmp, dir) = dir();
    let _guard = acquire_or_reclaim(&dir, 8103).unwrap();
    let raw = fs::read_to_string(dir.lock_path(8103)).unwrap();
    // The key, not the word: the record's argv names this test binary,
    // `serve_state-…`.
    assert!(
        !raw.contains("\"state\"") && !raw.contains("\"state_since\""),
        "a library user's record: {raw}"
    );
    let info = recorded(&dir, 8103);
    assert_eq!(info.state, None);
    assert_eq!(info.serve_state(), ServeState::Ready);
}

#[test]
fn an_older_writers_record_without_state_reads_as_ready() {
    let info =
        LockInfo::parse(br#"{"pid":7,"started_at":"2026-01-30T12:00:00Z","port":8000}"#).unwrap();
    assert_eq!(info.serve_state(), ServeState::Ready);
    let info = LockInfo::parse(
        br#"{"pid":7,"started_at":"2026-01-30T12:00:00Z","port":8000,"state":"stopping","state_since":"2026-01-30T12:00:05Z"}"#,
    )
    .unwrap();
    assert_eq!(info.serve_state(), ServeState::Stopping);
    assert_eq!(
        info.state_since.unwrap().to_rfc3339(),
        "2026-01-30T12:00:05+00:00"
    );
    // An unknown state word from a newer writer (or a non-string): the
    // record still parses (its holder is still named) with no state.
    for state in [r#""draining""#, "7", "null", r#""READY""#] {
        let text = format!(
            r#"{{"pid":7,"started_at":"2026-01-30T12:00:00Z","port":8000,"state":{state}}}"#
        );
        let newer = LockInfo::parse(text.as_bytes()).expect("the record stays readable");
        assert_eq!((newer.pid, newer.state), (7, None), "{text}");
    }
}

#[test]
fn a_reclaim_through_an_announcing_dir_records_the_state_too() {
    let (_tmp, dir) = dir();
    let dead = LockInfo::new(999_999, 8104, chrono::Utc::now());
    fs::write(dir.lock_path(8104), dead.to_bytes()).unwrap();
    let guard = acquire_or_reclaim(&dir.clone().announcing(ServeState::Starting), 8104).unwrap();
    assert!(guard.was_reclaimed());
    assert_eq!(recorded(&dir, 8104).state, Some(ServeState::Starting));
}

// Not on Windows: a held lock file cannot be removed there (no
// FILE_SHARE_DELETE), so there is nothing to restore; tests/verify.rs proves
// the refusal.
#[cfg(not(windows))]
#[test]
fn the_watchdogs_restore_keeps_the_state() {
    use llmlb::lock::Integrity;
    let (_tmp, dir) = dir();
    let mut guard =
        acquire_or_reclaim(&dir.clone().announcing(ServeState::Starting), 8105).unwrap();
    guard.set_state(ServeState::Ready).unwrap();
    let before = recorded(&dir, 8105);
    fs::remove_file(dir.lock_path(8105)).unwrap();
    assert_eq!(guard.verify().unwrap(), Integrity::Restored);
    let after = recorded(&dir, 8105);
    assert_eq!(
        (after.state, after.state_since),
        (before.state, before.state_since)
    );
}
