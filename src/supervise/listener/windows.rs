//! Windows: the TCP listener tables with their owning PIDs
//! (`GetExtendedTcpTable`, `TCP_TABLE_OWNER_PID_LISTENER`, IPv4 and IPv6),
//! names and parents from a process snapshot (ToolHelp).

use super::Listener;
use std::collections::{HashMap, HashSet};
use std::io;
use std::os::windows::io::{AsHandle, AsRawHandle, FromRawHandle, OwnedHandle};

use windows_sys::Win32::Foundation::{
    ERROR_INSUFFICIENT_BUFFER, HANDLE, INVALID_HANDLE_VALUE, NO_ERROR,
};
use windows_sys::Win32::NetworkManagement::IpHelper::{
    GetExtendedTcpTable, MIB_TCP6ROW_OWNER_PID, MIB_TCPROW_OWNER_PID, TCP_TABLE_OWNER_PID_LISTENER,
};
use windows_sys::Win32::System::Diagnostics::ToolHelp::{
    CreateToolhelp32Snapshot, Process32FirstW, Process32NextW, PROCESSENTRY32W, TH32CS_SNAPPROCESS,
};

/// Winsock's address families (`AF_INET`, `AF_INET6`), spelled here rather
/// than pulling in the whole WinSock binding for two numbers.
const AF_INET: u32 = 2;
const AF_INET6: u32 = 23;

/// What a table row gives as the owner when it names none: PID 0 is the
/// idle process, never a listener (Wine leaves every owner 0).
const UNKNOWN_OWNER: u32 = 0;

pub(crate) fn port_listener(port: u16) -> io::Result<Option<Listener>> {
    let pids = listening_pids(port)?;
    let Some(&pid) = pids.iter().filter(|&&p| p != UNKNOWN_OWNER).min() else {
        return Ok((!pids.is_empty()).then_some(Listener {
            pid: None,
            name: None,
        }));
    };
    let name = processes()
        .ok()
        .and_then(|mut all| all.remove(&pid))
        .map(|p| p.name);
    Ok(Some(Listener {
        pid: Some(pid),
        name,
    }))
}

pub(crate) fn tree_listens(port: u16, root: u32) -> io::Result<bool> {
    let pids = listening_pids(port)?;
    if pids.is_empty() {
        return Ok(false);
    }
    if pids.contains(&root) {
        return Ok(true);
    }
    // Owners not named at all (Wine): like the connect probe, a listener
    // on the port is taken for the caller's, who holds the port's lock.
    if pids.iter().all(|&p| p == UNKNOWN_OWNER) {
        return Ok(true);
    }
    let all = processes()?;
    // Walk up from each listener to the root. Windows keeps a process's
    // parent PID after the parent exits, and may give that PID to a new
    // process: an orphan whose dead parent's PID is now the root's would be
    // counted in the tree. Rare, and the loop guard stops any cycle.
    Ok(pids.iter().any(|&pid| {
        let mut seen = HashSet::new();
        let mut at = pid;
        while seen.insert(at) {
            let Some(entry) = all.get(&at) else {
                return false;
            };
            if entry.parent == root {
                return all.contains_key(&root);
            }
            at = entry.parent;
        }
        false
    }))
}

/// The PIDs owning a socket listening on `port`, IPv4 and IPv6.
fn listening_pids(port: u16) -> io::Result<HashSet<u32>> {
    let mut pids = HashSet::new();
    let v4 = tcp_table(AF_INET)?;
    for row in rows::<MIB_TCPROW_OWNER_PID>(&v4) {
        if local_port(row.dwLocalPort) == port {
            pids.insert(row.dwOwningPid);
        }
    }
    // No IPv6 stack: no IPv6 listeners.
    if let Ok(v6) = tcp_table(AF_INET6) {
        for row in rows::<MIB_TCP6ROW_OWNER_PID>(&v6) {
            if local_port(row.dwLocalPort) == port {
                pids.insert(row.dwOwningPid);
            }
        }
    }
    Ok(pids)
}

/// The port in a table row: network byte order in the low 16 bits.
fn local_port(raw: u32) -> u16 {
    u16::from_be(raw as u16)
}

/// One listener table of address family `af`, in 8-byte words (aligned for
/// any row type).
fn tcp_table(af: u32) -> io::Result<Vec<u64>> {
    let mut size: u32 = 4096;
    // The table may grow between the sizing answer and the next call: ask
    // again with the size it then gives.
    for _ in 0..8 {
        let mut buf = vec![0u64; (size as usize).div_ceil(8)];
        size = (buf.len() * 8) as u32;
        // SAFETY: `buf` is writable for `size` bytes; the other arguments are
        // plain values.
        let rc = unsafe {
            GetExtendedTcpTable(
                buf.as_mut_ptr().cast(),
                &mut size,
                0,
                af,
                TCP_TABLE_OWNER_PID_LISTENER,
                0,
            )
        };
        match rc {
            NO_ERROR => return Ok(buf),
            ERROR_INSUFFICIENT_BUFFER => continue,
            rc => return Err(io::Error::from_raw_os_error(rc as i32)),
        }
    }
    Err(io::Error::other(
        "the TCP listener table kept growing while it was read",
    ))
}

/// The rows of a `MIB_TCP(6)TABLE_OWNER_PID`: a `u32` count, then the rows
/// (all of whose fields are 4-byte aligned, so they start at offset 4).
fn rows<Row: Copy>(table: &[u64]) -> Vec<Row> {
    let bytes = table.len() * 8;
    let base = table.as_ptr().cast::<u8>();
    // SAFETY: the table is at least 4 bytes (one u64) and starts with the count.
    let count = unsafe { base.cast::<u32>().read() } as usize;
    let fits = (bytes - 4) / std::mem::size_of::<Row>();
    (0..count.min(fits))
        .map(|i| {
            // SAFETY: row i lies within `table` (count clamped to what fits);
            // read unaligned, as the buffer's alignment is not the row's.
            unsafe {
                base.add(4 + i * std::mem::size_of::<Row>())
                    .cast::<Row>()
                    .read_unaligned()
            }
        })
        .collect()
}

/// A process in the snapshot.
struct Process {
    parent: u32,
    name: String,
}

/// Every process now: PID → parent and image name.
fn processes() -> io::Result<HashMap<u32, Process>> {
    // SAFETY: plain values in; a new handle or INVALID_HANDLE_VALUE out.
    let raw = unsafe { CreateToolhelp32Snapshot(TH32CS_SNAPPROCESS, 0) };
    if raw == INVALID_HANDLE_VALUE {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh handle that nothing else owns.
    let snapshot = unsafe { OwnedHandle::from_raw_handle(raw as _) };
    let snap = snapshot.as_handle().as_raw_handle() as HANDLE;
    // SAFETY: all-zero is a valid PROCESSENTRY32W; dwSize is set as required.
    let mut entry: PROCESSENTRY32W = unsafe { std::mem::zeroed() };
    entry.dwSize = std::mem::size_of::<PROCESSENTRY32W>() as u32;
    let mut all = HashMap::new();
    // SAFETY: the snapshot is open and `entry` is writable with its size set.
    let mut more = unsafe { Process32FirstW(snap, &mut entry) } != 0;
    while more {
        let len = entry
            .szExeFile
            .iter()
            .position(|&c| c == 0)
            .unwrap_or(entry.szExeFile.len());
        all.insert(
            entry.th32ProcessID,
            Process {
                parent: entry.th32ParentProcessID,
                name: String::from_utf16_lossy(&entry.szExeFile[..len]),
            },
        );
        // SAFETY: as for Process32FirstW.
        more = unsafe { Process32NextW(snap, &mut entry) } != 0;
    }
    Ok(all)
}
