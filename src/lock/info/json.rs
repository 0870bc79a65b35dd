//! The lock file's JSON, written by hand on the acquire path.
//!
//! Every acquire writes its info, and through serde that cost a third of
//! the cycle's user time: chrono hands serde_json a `Display` that is escaped
//! a character at a time, and every string goes through the escaper. This
//! writer makes the same bytes directly (the tests hold it to `serde_json`'s
//! output for any `LockInfo`), and falls back to serde_json for the rare
//! string that needs escaping or a year chrono writes with a sign.

use chrono::{DateTime, Datelike, Timelike, Utc};
use serde::Serialize;

use super::{LockInfo, ProcessIdentity, ServeState};

/// Appends `info` as compact JSON, byte for byte what
/// `serde_json::to_writer(out, info)` appends (same fields, order and
/// omissions as the derived `Serialize`).
pub(super) fn write(info: &LockInfo, out: &mut Vec<u8>) {
    // Destructured in full: a new field does not compile until written here.
    let LockInfo {
        pid,
        started_at,
        port,
        host,
        identity,
        child_pgid,
        child_identity,
        version,
        released_by,
        state,
        state_since,
        draining,
        took_over_from,
        backend_port,
        argv,
        cwd,
    } = info;
    out.extend_from_slice(b"{\"pid\":");
    number(out, u64::from(*pid));
    out.extend_from_slice(b",\"started_at\":");
    timestamp(out, started_at);
    out.extend_from_slice(b",\"port\":");
    number(out, u64::from(*port));
    optional(out, b",\"host\":", host, |out, host| string(out, host));
    optional(out, b",\"identity\":", identity, process_identity);
    optional(out, b",\"child_pgid\":", child_pgid, |out, pgid| {
        number(out, u64::from(*pgid));
    });
    optional(
        out,
        b",\"child_identity\":",
        child_identity,
        process_identity,
    );
    optional(out, b",\"version\":", version, |out, version| {
        string(out, version)
    });
    optional(out, b",\"released_by\":", released_by, |out, pid| {
        number(out, u64::from(*pid));
    });
    optional(out, b",\"state\":", state, |out, state| {
        out.push(b'"');
        out.extend_from_slice(state.name().as_bytes());
        out.push(b'"');
    });
    optional(out, b",\"state_since\":", state_since, timestamp);
    if let Some((first, rest)) = draining.split_first() {
        out.extend_from_slice(b",\"draining\":[");
        number(out, u64::from(*first));
        for pid in rest {
            out.push(b',');
            number(out, u64::from(*pid));
        }
        out.push(b']');
    }
    optional(out, b",\"took_over_from\":", took_over_from, |out, pid| {
        number(out, u64::from(*pid));
    });
    optional(out, b",\"backend_port\":", backend_port, |out, port| {
        number(out, u64::from(*port));
    });
    if let Some((first, rest)) = argv.split_first() {
        out.extend_from_slice(b",\"argv\":[");
        string(out, first);
        for arg in rest {
            out.push(b',');
            string(out, arg);
        }
        out.push(b']');
    }
    optional(out, b",\"cwd\":", cwd, |out, cwd| string(out, cwd));
    out.push(b'}');
}

/// `key` and the value, if present: the derive's
/// `skip_serializing_if = "Option::is_none"`.
fn optional<T>(out: &mut Vec<u8>, key: &[u8], value: &Option<T>, write: impl Fn(&mut Vec<u8>, &T)) {
    if let Some(value) = value {
        out.extend_from_slice(key);
        write(out, value);
    }
}

fn process_identity(out: &mut Vec<u8>, identity: &ProcessIdentity) {
    let ProcessIdentity {
        boot_id,
        start_ticks,
        pid_ns,
    } = identity;
    out.push(b'{');
    let mut first = true;
    let mut key = |out: &mut Vec<u8>, key: &[u8]| {
        if !std::mem::take(&mut first) {
            out.push(b',');
        }
        out.extend_from_slice(key);
    };
    if let Some(boot_id) = boot_id {
        key(out, b"\"boot_id\":");
        string(out, boot_id);
    }
    if let Some(ticks) = start_ticks {
        key(out, b"\"start_ticks\":");
        number(out, *ticks);
    }
    if let Some(pid_ns) = pid_ns {
        key(out, b"\"pid_ns\":");
        string(out, pid_ns);
    }
    out.push(b'}');
}

fn number(out: &mut Vec<u8>, value: u64) {
    let mut digits = [0u8; 20]; // u64::MAX has 20
    let mut start = digits.len();
    let mut rest = value;
    loop {
        start -= 1;
        digits[start] = b'0' + (rest % 10) as u8;
        rest /= 10;
        if rest == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[start..]);
}

/// A JSON string; serde_json escapes exactly the control characters, `"`
/// and `\`, so anything without them is copied as it is.
fn string(out: &mut Vec<u8>, text: &str) {
    // Without an early exit, so that the compiler checks many bytes at once.
    let needs_escape = text.bytes().fold(false, |any, b| {
        any | (b < 0x20) | (b == b'"') | (b == b'\\')
    });
    if !needs_escape {
        out.push(b'"');
        out.extend_from_slice(text.as_bytes());
        out.push(b'"');
    } else {
        via_serde_json(out, text);
    }
}

fn timestamp(out: &mut Vec<u8>, at: &DateTime<Utc>) {
    let mut buf = [0u8; RFC3339_MAX_LEN];
    match write_rfc3339(at, &mut buf) {
        Some(len) => {
            out.push(b'"');
            out.extend_from_slice(&buf[..len]);
            out.push(b'"');
        }
        None => via_serde_json(out, at),
    }
}

/// serde_json into a Vec fails only for values that cannot be JSON (maps
/// with non-string keys and the like), which strings and timestamps are not.
fn via_serde_json(out: &mut Vec<u8>, value: &(impl Serialize + ?Sized)) {
    let before = out.len();
    if serde_json::to_writer(&mut *out, value).is_err() {
        out.truncate(before);
        out.extend_from_slice(b"null");
    }
}

/// `started_at`'s `Serialize`: what chrono writes, as one string (chrono's
/// own goes through `collect_str`, escaped a character at a time).
pub(super) fn serialize_started_at<S: serde::Serializer>(
    at: &DateTime<Utc>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    let mut buf = [0u8; RFC3339_MAX_LEN];
    match write_rfc3339(at, &mut buf) {
        // Only ASCII digits and separators were written.
        Some(len) => serializer
            .serialize_str(std::str::from_utf8(&buf[..len]).map_err(serde::ser::Error::custom)?),
        None => at.serialize(serializer),
    }
}

/// `state_since` as `started_at` is written (only called when present).
pub(super) fn serialize_state_since<S: serde::Serializer>(
    at: &Option<DateTime<Utc>>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    match at {
        Some(at) => serialize_started_at(at, serializer),
        None => serializer.serialize_none(),
    }
}

/// `state`, tolerantly: a word (or value) this version does not know is no
/// state, so a newer writer's record still names its holder.
pub(super) fn deserialize_state<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<ServeState>, D::Error> {
    use serde::Deserialize;
    let value = serde_json::Value::deserialize(deserializer)?;
    Ok(value.as_str().and_then(ServeState::from_name))
}

/// `YYYY-MM-DDTHH:MM:SS.nnnnnnnnnZ`
const RFC3339_MAX_LEN: usize = 30;

/// chrono's `write_rfc3339(.., SecondsFormat::AutoSi, use_z: true)` (its
/// `Serialize`) for years 0..=9999 into `buf`, returning the length; `None`
/// for other years, which chrono writes with a sign.
fn write_rfc3339(at: &DateTime<Utc>, buf: &mut [u8; RFC3339_MAX_LEN]) -> Option<usize> {
    let utc = at.naive_utc();
    let (date, time) = (utc.date(), utc.time());
    let year = u32::try_from(date.year()).ok().filter(|y| *y <= 9999)?;
    let mut second = time.second();
    let mut nano = time.nanosecond();
    // A leap second is nanosecond >= 1e9 of second 59: written as second 60.
    if nano >= 1_000_000_000 {
        second += 1;
        nano -= 1_000_000_000;
    }
    let (fraction, fraction_digits) = match nano {
        0 => (0, 0),
        n if n % 1_000_000 == 0 => (n / 1_000_000, 3),
        n if n % 1_000 == 0 => (n / 1_000, 6),
        n => (n, 9),
    };
    let fields = [
        (year, 4, b'-'),
        (date.month(), 2, b'-'),
        (date.day(), 2, b'T'),
        (time.hour(), 2, b':'),
        (time.minute(), 2, b':'),
        (second, 2, if fraction_digits == 0 { b'Z' } else { b'.' }),
        (fraction, fraction_digits, b'Z'),
    ];
    let mut len = 0;
    for (value, digits, separator) in fields {
        if digits == 0 {
            continue;
        }
        let mut rest = value;
        for slot in buf[len..len + digits].iter_mut().rev() {
            *slot = b'0' + (rest % 10) as u8;
            rest /= 10;
        }
        buf[len + digits] = separator;
        len += digits + 1;
    }
    Some(len)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{NaiveDate, TimeZone};
    use proptest::prelude::*;

    /// What serde_json makes of `value` with its derived or chrono's
    /// `Serialize`: the format every reader was written against.
    fn serde_bytes(value: &impl Serialize) -> Vec<u8> {
        serde_json::to_vec(value).expect("serializes")
    }

    fn ours(info: &LockInfo) -> Vec<u8> {
        let mut out = Vec::new();
        write(info, &mut out);
        out
    }

    /// `started_at` as our writer puts it, and as chrono's `Serialize` does.
    fn both_timestamps(at: DateTime<Utc>) -> (String, String) {
        let written = String::from_utf8(ours(&LockInfo::new(1, 1, at))).expect("UTF-8");
        let value: serde_json::Value = serde_json::from_str(&written).expect("valid JSON");
        let chrono = String::from_utf8(serde_bytes(&at)).expect("UTF-8");
        (value["started_at"].to_string(), chrono)
    }

    #[test]
    fn timestamps_are_written_as_chrono_writes_them() {
        let day = NaiveDate::from_ymd_opt(2026, 12, 31).expect("valid date");
        let cases = [
            (0, 0, 0, 0),
            (23, 59, 59, 999_999_999),
            (23, 59, 59, 1_000_000_000), // leap second: "23:59:60"
            (23, 59, 59, 1_500_000_000),
            (12, 0, 7, 120_000_000), // millis
            (12, 0, 7, 120_500_000), // micros
            (12, 0, 7, 120_500_001), // nanos
        ];
        for (h, m, s, nano) in cases {
            let at = Utc.from_utc_datetime(&day.and_hms_nano_opt(h, m, s, nano).expect("valid"));
            let (written, chrono) = both_timestamps(at);
            assert_eq!(written, chrono, "{h}:{m}:{s}.{nano}");
        }
        // Outside 0..=9999 chrono writes a sign; the writer defers to it.
        for year in [0, 1, 999, 9999, 10_000, -1, 262_000] {
            let at = Utc
                .with_ymd_and_hms(year, 1, 2, 3, 4, 5)
                .single()
                .expect("valid");
            let (written, chrono) = both_timestamps(at);
            assert_eq!(written, chrono, "year {year}");
        }
    }

    #[test]
    fn strings_needing_escapes_are_escaped_as_serde_json_does() {
        let mut info = LockInfo::new(u32::MAX, u16::MAX, Utc::now());
        info.host = Some("tab\there \"quoted\" back\\slash \u{1} \u{7f} é 漢".to_owned());
        info.version = Some(String::new());
        info.identity = Some(ProcessIdentity {
            boot_id: None,
            start_ticks: Some(u64::MAX),
            pid_ns: Some("4:\u{1b}[31m".to_owned()),
        });
        info.child_identity = Some(ProcessIdentity {
            boot_id: None,
            start_ticks: None,
            pid_ns: None,
        });
        info.released_by = Some(0);
        info.set_serve_state(ServeState::Stopping);
        info.argv = vec!["a\"b".to_owned(), String::new(), "\u{1b}[2J\n".to_owned()];
        info.cwd = Some("C:\\dir\twith tab".to_owned());
        assert_eq!(ours(&info), serde_bytes(&info));
    }

    fn any_identity() -> impl Strategy<Value = Option<ProcessIdentity>> {
        proptest::option::of(
            (
                proptest::option::of(".*"),
                proptest::option::of(any::<u64>()),
                proptest::option::of(".*"),
            )
                .prop_map(|(boot_id, start_ticks, pid_ns)| ProcessIdentity {
                    boot_id,
                    start_ticks,
                    pid_ns,
                }),
        )
    }

    fn any_timestamp() -> impl Strategy<Value = DateTime<Utc>> {
        let seconds = DateTime::<Utc>::MIN_UTC.timestamp()..=DateTime::<Utc>::MAX_UTC.timestamp();
        // Rounded to whole micros and millis now and then, so that every
        // width of the fraction gets its share.
        (seconds, 0u32..1_000_000_000, 0usize..4).prop_map(|(secs, nano, round)| {
            let nano = nano - nano % [1, 1_000, 1_000_000, 1_000_000_000][round];
            DateTime::from_timestamp(secs, nano).unwrap_or(DateTime::<Utc>::MIN_UTC)
        })
    }

    proptest! {
        #[test]
        fn any_timestamp_is_written_as_chrono_writes_it(at in any_timestamp()) {
            let (written, chrono) = both_timestamps(at);
            prop_assert_eq!(written, chrono);
        }

        /// Against the derived `Serialize` (whose `started_at` is the
        /// function above, held to chrono by the test before).
        #[test]
        fn any_info_is_written_as_serde_json_writes_it(
            pid in any::<u32>(),
            started_at in any_timestamp(),
            port in any::<u16>(),
            host in proptest::option::of(".*"),
            identity in any_identity(),
            child_pgid in proptest::option::of(any::<u32>()),
            child_identity in any_identity(),
            version in proptest::option::of("[ -~]{0,12}"),
            released_by in proptest::option::of(any::<u32>()),
            state in proptest::option::of(proptest::sample::select(vec![
                ServeState::Starting,
                ServeState::Ready,
                ServeState::Stopping,
            ])),
            state_since in proptest::option::of(any_timestamp()),
            draining in proptest::collection::vec(any::<u32>(), 0..3),
            took_over_from in proptest::option::of(any::<u32>()),
            backend_port in proptest::option::of(any::<u16>()),
            argv in proptest::collection::vec(".*", 0..4),
            cwd in proptest::option::of(".*"),
        ) {
            let info = LockInfo {
                pid,
                started_at,
                port,
                host,
                identity,
                child_pgid,
                child_identity,
                version,
                released_by,
                state,
                state_since,
                draining,
                took_over_from,
                backend_port,
                argv,
                cwd,
            };
            prop_assert_eq!(
                String::from_utf8(ours(&info)).expect("UTF-8"),
                String::from_utf8(serde_bytes(&info)).expect("UTF-8")
            );
        }
    }
}
