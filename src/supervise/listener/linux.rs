//! Linux: the kernel's socket tables and each process's descriptors in
//! `/proc`. The tables are this process's network namespace's
//! (`/proc/net` is `/proc/self/net`), the namespace a server it launched binds in.

use super::{Listener, TreeSocket};
use std::collections::{HashMap, HashSet};
use std::fs;
use std::io;

/// `st` of a socket in state LISTEN in `/proc/net/tcp{,6}` (TCP_LISTEN = 10).
const TCP_LISTEN: &str = "0A";

pub(crate) fn port_listener(port: u16) -> io::Result<Option<Listener>> {
    let inodes = listening_inodes(port)?;
    if inodes.is_empty() {
        return Ok(None);
    }
    let mut pids = all_pids()?;
    // Lowest PID first: among processes sharing a socket (fork after
    // listen), usually the one that opened it.
    pids.sort_unstable();
    for pid in pids {
        if owns_any(pid, &inodes) {
            return Ok(Some(Listener {
                pid: Some(pid),
                name: comm(pid),
            }));
        }
    }
    // The socket exists but no process we can look into owns it: another
    // user's (we may not read its fd links) or one in a PID namespace whose
    // processes our /proc does not show.
    Ok(Some(Listener {
        pid: None,
        name: None,
    }))
}

pub(crate) fn tree_listens(port: u16, root: u32) -> io::Result<bool> {
    let inodes = listening_inodes(port)?;
    if inodes.is_empty() {
        return Ok(false);
    }
    Ok(walk_tree(root, |pid| owns_any(pid, &inodes)))
}

/// Visits `root` and its descendants (each once) until `visit` says stop
/// (`true`); returns whether it did. The tree from `/proc/<pid>/task/*/children`:
/// a handful of processes, not every one on the machine.
fn walk_tree(root: u32, mut visit: impl FnMut(u32) -> bool) -> bool {
    let mut by_parent: Option<HashMap<u32, Vec<u32>>> = None;
    let mut seen = HashSet::new();
    let mut todo = vec![root];
    while let Some(pid) = todo.pop() {
        if !seen.insert(pid) {
            continue;
        }
        if visit(pid) {
            return true;
        }
        match children(pid) {
            Some(kids) => todo.extend(kids),
            // No `children` files (a kernel without CONFIG_PROC_CHILDREN):
            // one pass over every process's parent instead.
            None => {
                let map = by_parent.get_or_insert_with(parent_map);
                todo.extend(map.get(&pid).into_iter().flatten().copied());
            }
        }
    }
    false
}

pub(crate) fn tree_listening(root: u32) -> io::Result<Vec<TreeSocket>> {
    // Every listening socket's inode → its port, then the tree's descriptors.
    let mut ports = HashMap::new();
    let v4 = fs::read_to_string("/proc/net/tcp")?;
    collect_listening_ports(&v4, &mut ports);
    if let Ok(v6) = fs::read_to_string("/proc/net/tcp6") {
        collect_listening_ports(&v6, &mut ports);
    }
    let mut found = Vec::new();
    if ports.is_empty() {
        return Ok(found);
    }
    walk_tree(root, |pid| {
        for port in socket_inodes(pid)
            .iter()
            .filter_map(|inode| ports.get(inode))
        {
            let socket = TreeSocket {
                pid,
                name: comm(pid),
                port: *port,
            };
            if !found.contains(&socket) {
                found.push(socket);
            }
        }
        false
    });
    found.sort_by_key(|s| (s.port, s.pid));
    Ok(found)
}

pub(crate) fn pid_from_namespace(pid_ns: &str, inner: u32) -> Option<u32> {
    use std::os::unix::fs::MetadataExt;
    all_pids().ok()?.into_iter().find(|&pid| {
        let in_ns = fs::metadata(format!("/proc/{pid}/ns/pid"))
            .is_ok_and(|ns| format!("{}:{}", ns.dev(), ns.ino()) == pid_ns);
        // `NSpid:` lists the process's PID in each namespace it is in,
        // outermost first: the last is its own namespace's number.
        in_ns
            && fs::read_to_string(format!("/proc/{pid}/status")).is_ok_and(|status| {
                status
                    .lines()
                    .find_map(|line| line.strip_prefix("NSpid:"))
                    .and_then(|pids| pids.split_whitespace().last()?.parse::<u32>().ok())
                    == Some(inner)
            })
    })
}

/// Inodes of the sockets listening on `port` on any local address, IPv4 or
/// IPv6. An absent table (IPv6 disabled) counts as empty; an unreadable
/// IPv4 table (no `/proc`) is the error.
fn listening_inodes(port: u16) -> io::Result<HashSet<u64>> {
    let mut inodes = HashSet::new();
    let v4 = fs::read_to_string("/proc/net/tcp").map_err(|err| {
        io::Error::new(
            err.kind(),
            format!("cannot read /proc/net/tcp ({err}): is /proc mounted?"),
        )
    })?;
    collect_listening(&v4, port, &mut inodes);
    if let Ok(v6) = fs::read_to_string("/proc/net/tcp6") {
        collect_listening(&v6, port, &mut inodes);
    }
    Ok(inodes)
}

/// Adds the inodes of `table`'s LISTEN rows whose local port is `port`.
/// Rows: `sl local_address rem_address st ... uid timeout inode ...`, the
/// address as `HEXADDR:HEXPORT`. Malformed rows are skipped.
fn collect_listening(table: &str, port: u16, inodes: &mut HashSet<u64>) {
    for line in table.lines().skip(1) {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (Some(local), Some(state), Some(inode)) = (fields.get(1), fields.get(3), fields.get(9))
        else {
            continue;
        };
        let Some((_, local_port)) = local.rsplit_once(':') else {
            continue;
        };
        if *state != TCP_LISTEN || u16::from_str_radix(local_port, 16) != Ok(port) {
            continue;
        }
        // Inode 0: a socket being torn down, owned by nobody.
        if let Ok(inode @ 1..) = inode.parse::<u64>() {
            inodes.insert(inode);
        }
    }
}

/// Adds `table`'s LISTEN rows as inode → local port. Malformed rows are
/// skipped.
fn collect_listening_ports(table: &str, ports: &mut HashMap<u64, u16>) {
    for line in table.lines().skip(1) {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (Some(local), Some(state), Some(inode)) = (fields.get(1), fields.get(3), fields.get(9))
        else {
            continue;
        };
        let Some((_, local_port)) = local.rsplit_once(':') else {
            continue;
        };
        let (Ok(port), Ok(inode @ 1..)) =
            (u16::from_str_radix(local_port, 16), inode.parse::<u64>())
        else {
            continue;
        };
        if *state == TCP_LISTEN {
            ports.insert(inode, port);
        }
    }
}

/// The socket inodes among `pid`'s descriptors (none for a process that has
/// exited or whose descriptors we may not read).
fn socket_inodes(pid: u32) -> Vec<u64> {
    let Ok(fds) = fs::read_dir(format!("/proc/{pid}/fd")) else {
        return Vec::new();
    };
    fds.flatten()
        .filter_map(|fd| socket_inode(fs::read_link(fd.path()).ok()?.as_os_str().to_str()?))
        .collect()
}

/// Whether one of `pid`'s descriptors is one of `inodes`' sockets. A process
/// that has exited or whose descriptors we may not read owns none we can see.
fn owns_any(pid: u32, inodes: &HashSet<u64>) -> bool {
    let Ok(fds) = fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    fds.flatten().any(|fd| {
        fs::read_link(fd.path())
            .ok()
            .and_then(|target| socket_inode(target.as_os_str().to_str()?))
            .is_some_and(|inode| inodes.contains(&inode))
    })
}

/// The inode of an fd link's `socket:[inode]` target.
fn socket_inode(target: &str) -> Option<u64> {
    target
        .strip_prefix("socket:[")?
        .strip_suffix(']')?
        .parse()
        .ok()
}

/// Every PID `/proc` shows.
fn all_pids() -> io::Result<Vec<u32>> {
    Ok(fs::read_dir("/proc")?
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse().ok())
        .collect())
}

/// `/proc/<pid>/comm` without its newline.
fn comm(pid: u32) -> Option<String> {
    let text = fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
    Some(text.trim_end_matches('\n').to_owned())
}

/// `pid`'s children from its threads' `children` files (a child belongs to
/// the thread that forked it). `None` when the kernel has no such files;
/// an exited process has no children.
fn children(pid: u32) -> Option<Vec<u32>> {
    let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else {
        return Some(Vec::new());
    };
    let mut kids = Vec::new();
    for task in tasks.flatten() {
        match fs::read_to_string(task.path().join("children")) {
            Ok(text) => kids.extend(
                text.split_whitespace()
                    .filter_map(|p| p.parse::<u32>().ok()),
            ),
            Err(err) if err.kind() == io::ErrorKind::NotFound && task.path().exists() => {
                return None
            }
            // The thread ended between the listing and the read.
            Err(_) => {}
        }
    }
    Some(kids)
}

/// Parent PID → children, from every process's `/proc/<pid>/stat`.
fn parent_map() -> HashMap<u32, Vec<u32>> {
    let mut map: HashMap<u32, Vec<u32>> = HashMap::new();
    for pid in all_pids().unwrap_or_default() {
        if let Some(ppid) = crate::lock::sys::parent_pid(pid) {
            map.entry(ppid).or_default().push(pid);
        }
    }
    map
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_listen_rows_for_the_port_only() {
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 111 1 0 100 0 0 10 0\n\
   1: 0100007F:1F90 0100007F:C350 01 00000000:00000000 00:00000000 00000000     0        0 222 1 0 100 0 0 10 0\n\
   2: 00000000:1F91 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 333 1 0 100 0 0 10 0\n\
   3: 00000000:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 0 1 0 100 0 0 10 0\n\
   garbage\n";
        let mut inodes = HashSet::new();
        collect_listening(table, 8080, &mut inodes);
        assert_eq!(inodes, HashSet::from([111]));
        let v6 = "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
   0: 00000000000000000000000000000000:1F90 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 444 1 0 100 0 0 10 0\n";
        collect_listening(v6, 8080, &mut inodes);
        assert_eq!(inodes, HashSet::from([111, 444]));
    }

    #[test]
    fn parses_socket_links_and_stat_parents() {
        assert_eq!(socket_inode("socket:[1117178]"), Some(1117178));
        assert_eq!(socket_inode("pipe:[1117178]"), None);
        assert_eq!(socket_inode("/dev/null"), None);
        let stat_field = crate::lock::sys::stat_field::<u32>;
        assert_eq!(stat_field(b"42 (a) b (c)) S 7 42 42 0", 4), Some(7));
        assert_eq!(stat_field(b"garbage", 4), None);
    }
}
