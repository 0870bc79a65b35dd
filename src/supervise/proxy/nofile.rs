//! The descriptor limit a proxy needs (several descriptors per
//! connection): one implementation for every Unix, a no-op elsewhere.

use std::io;

/// Raises the soft descriptor limit to the hard one.
#[cfg(unix)]
pub(super) fn raise() -> io::Result<Option<(u64, u64)>> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `limit` is a writable rlimit.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(io::Error::last_os_error());
    }
    if limit.rlim_cur >= limit.rlim_max {
        return Ok(None);
    }
    let old = limit.rlim_cur;
    limit.rlim_cur = limit.rlim_max;
    // SAFETY: `limit` is a valid rlimit.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } != 0 {
        let e = io::Error::last_os_error();
        // macOS refuses a soft limit above OPEN_MAX (setrlimit(2), COMPATIBILITY),
        // which an unlimited hard limit is.
        // OPEN_MAX of macOS's <sys/syslimits.h>.
        let open_max: libc::rlim_t = 10240;
        if e.raw_os_error() != Some(libc::EINVAL) {
            return Err(e);
        }
        if old >= open_max {
            return Ok(None);
        }
        limit.rlim_cur = open_max;
        // SAFETY: as above.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    #[allow(clippy::useless_conversion)] // rlim_t is u64 on most, not all, Unix targets.
    Ok(Some((u64::from(old), u64::from(limit.rlim_cur))))
}

/// Windows has no descriptor limit to raise (sockets are handles, limited
/// by memory).
#[cfg(not(unix))]
pub(super) fn raise() -> io::Result<Option<(u64, u64)>> {
    Ok(None)
}
