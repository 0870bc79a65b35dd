//! Linux: whether a process of a command's tree listens on a TCP port, from
//! `/proc/net/tcp{,6}` (the listening sockets' inodes) and `/proc/<pid>/fd`
//! (which of them the tree's processes hold).

use std::collections::{HashMap, HashSet};
use std::io;

/// `st` of a listening socket in `/proc/net/tcp` (`TCP_LISTEN`).
const TCP_LISTEN: &str = "0A";

/// Whether `root` or one of its descendants holds a socket listening on
/// `port` (any address, IPv4 or IPv6).
///
/// # Errors
/// The OS error if neither `/proc/net/tcp` nor `/proc/net/tcp6` can be read.
pub(crate) fn tree_listens(port: u16, root: u32) -> io::Result<bool> {
    let inodes = listening_inodes(port)?;
    if inodes.is_empty() {
        return Ok(false);
    }
    Ok(tree(root).into_iter().any(|pid| holds_any(pid, &inodes)))
}

/// The inodes of the sockets listening on `port`.
fn listening_inodes(port: u16) -> io::Result<HashSet<u64>> {
    let mut inodes = HashSet::new();
    let mut read_any = None;
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let text = match std::fs::read_to_string(table) {
            Ok(text) => text,
            Err(e) => {
                read_any.get_or_insert(Err(e));
                continue;
            }
        };
        read_any = Some(Ok(()));
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (Some(local), Some(st), Some(inode)) =
                (fields.get(1), fields.get(3), fields.get(9))
            else {
                continue;
            };
            let local_port = local
                .rsplit_once(':')
                .and_then(|(_, p)| u16::from_str_radix(p, 16).ok());
            if *st == TCP_LISTEN && local_port == Some(port) {
                if let Ok(inode) = inode.parse() {
                    inodes.insert(inode);
                }
            }
        }
    }
    match read_any {
        Some(Err(e)) => Err(e),
        _ => Ok(inodes),
    }
}

/// `root` and every live descendant, from the `ppid` of each `/proc/<pid>/stat`.
fn tree(root: u32) -> Vec<u32> {
    let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for entry in dir.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<u32>().ok())
            else {
                continue;
            };
            if let Some(ppid) = ppid(pid) {
                children.entry(ppid).or_default().push(pid);
            }
        }
    }
    let mut found = vec![root];
    let mut seen = HashSet::from([root]);
    let mut i = 0;
    while i < found.len() {
        for &kid in children.get(&found[i]).into_iter().flatten() {
            if seen.insert(kid) {
                found.push(kid);
            }
        }
        i += 1;
    }
    found
}

/// Field 4 (ppid) of `/proc/<pid>/stat`, counted after the last `)`.
fn ppid(pid: u32) -> Option<u32> {
    let stat = std::fs::read(format!("/proc/{pid}/stat")).ok()?;
    let close = stat.iter().rposition(|&b| b == b')')?;
    let field = stat[close + 1..]
        .split(|b| b.is_ascii_whitespace())
        .filter(|f| !f.is_empty())
        .nth(1)?;
    std::str::from_utf8(field).ok()?.parse().ok()
}

/// Whether `pid` has a descriptor on one of `inodes` (`socket:[N]` links).
fn holds_any(pid: u32, inodes: &HashSet<u64>) -> bool {
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    fds.flatten().any(|fd| {
        std::fs::read_link(fd.path()).ok().is_some_and(|target| {
            target
                .to_str()
                .and_then(|t| t.strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok())
                .is_some_and(|inode| inodes.contains(&inode))
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_listener_of_this_process_is_found_and_a_closed_one_is_not() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let me = std::process::id();
        assert!(tree_listens(port, me).unwrap());
        // Not in the tree of an unrelated process (pid 1 is init, our ancestor,
        // so take a child-free root that is not ours: a fresh `sleep`).
        let mut other = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        assert!(!tree_listens(port, other.id()).unwrap());
        let _ = other.kill();
        let _ = other.wait();
        drop(listener);
        assert!(!tree_listens(port, me).unwrap());
    }
}
