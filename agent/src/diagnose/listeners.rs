//! Which workload serves a backend: the one whose process holds the socket listening on the
//! backend's address. The kernel's connect events name the caller's cgroup but not the
//! server's, so diagnosis finds backends' workloads from /proc: each workload process's
//! view of its network namespace's TCP tables (`/proc/<pid>/net/tcp{,6}`, so backends in
//! containers are found too) and its open files (`/proc/<pid>/fd`, `socket:[inode]`).
//!
//! Run every [`SCAN_EVERY`] and bounded to [`MAX_PIDS`] processes per workload, so a workload
//! of thousands of processes costs a bounded amount of reading.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    path::Path,
    time::Duration,
};

pub(crate) const SCAN_EVERY: Duration = Duration::from_secs(10);
pub(crate) const MAX_PIDS: usize = 256;
/// `st` of a listening socket in /proc/net/tcp.
const TCP_LISTEN: &str = "0A";

/// Backend address -> the first workload (in `workloads` order) with a process listening on
/// it. `workloads` are (name, cgroup directory).
pub(crate) fn find(
    backends: &BTreeSet<SocketAddr>,
    workloads: &[(String, &Path)],
) -> BTreeMap<String, String> {
    let mut found = BTreeMap::new();
    if backends.is_empty() {
        return found;
    }
    // Processes of one network namespace share its tables: read them once per namespace.
    let mut by_netns: BTreeMap<String, BTreeMap<u64, SocketAddr>> = BTreeMap::new();
    for (name, cgroup) in workloads {
        for pid in pids(cgroup) {
            let Ok(netns) = std::fs::read_link(format!("/proc/{pid}/ns/net")) else {
                continue;
            };
            let listening = by_netns
                .entry(netns.to_string_lossy().into_owned())
                .or_insert_with(|| serving(pid, backends));
            if listening.is_empty() {
                continue;
            }
            for inode in socket_inodes(pid) {
                let Some(addr) = listening.get(&inode) else {
                    continue;
                };
                for b in backends.iter().filter(|b| serves(*addr, **b)) {
                    found.entry(b.to_string()).or_insert_with(|| name.clone());
                }
            }
        }
    }
    found
}

/// The sockets listening on a backend address in `pid`'s network namespace, by inode.
fn serving(pid: u32, backends: &BTreeSet<SocketAddr>) -> BTreeMap<u64, SocketAddr> {
    let mut listening = BTreeMap::new();
    for table in ["tcp", "tcp6"] {
        let text = std::fs::read_to_string(format!("/proc/{pid}/net/{table}"));
        for (addr, inode) in text.iter().flat_map(|t| listeners(t)) {
            if backends.iter().any(|b| serves(addr, *b)) {
                listening.insert(inode, addr);
            }
        }
    }
    listening
}

/// A socket listening on `listen` accepts connects to `backend`: same port, and the same
/// address or a wildcard one.
fn serves(listen: SocketAddr, backend: SocketAddr) -> bool {
    listen.port() == backend.port() && (listen.ip() == backend.ip() || listen.ip().is_unspecified())
}

/// The processes of a cgroup and its descendants, at most [`MAX_PIDS`].
fn pids(cgroup: &Path) -> Vec<u32> {
    let mut out = Vec::new();
    let mut dirs = vec![cgroup.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        if let Ok(text) = std::fs::read_to_string(dir.join("cgroup.procs")) {
            out.extend(text.lines().filter_map(|l| l.trim().parse::<u32>().ok()));
        }
        if out.len() >= MAX_PIDS {
            out.truncate(MAX_PIDS);
            break;
        }
        if let Ok(entries) = std::fs::read_dir(&dir) {
            dirs.extend(
                entries
                    .flatten()
                    .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                    .map(|e| e.path()),
            );
        }
    }
    out
}

fn socket_inodes(pid: u32) -> Vec<u64> {
    let Ok(entries) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| {
            let target = std::fs::read_link(e.path()).ok()?;
            let text = target.to_str()?;
            text.strip_prefix("socket:[")?
                .strip_suffix(']')?
                .parse()
                .ok()
        })
        .collect()
}

/// The listening sockets of a /proc/net/tcp or tcp6 table: (local address, inode).
pub(crate) fn listeners(table: &str) -> Vec<(SocketAddr, u64)> {
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 10 || f[3] != TCP_LISTEN {
                return None;
            }
            let (ip, port) = f[1].split_once(':')?;
            let port = u16::from_str_radix(port, 16).ok()?;
            let inode = f[9].parse().ok()?;
            Some((SocketAddr::new(parse_ip(ip)?, port), inode))
        })
        .collect()
}

/// The kernel prints addresses as native-endian 32-bit words in hex (`%08X` each).
fn parse_ip(hex: &str) -> Option<IpAddr> {
    let word = |i: usize| -> Option<[u8; 4]> {
        let w = u32::from_str_radix(hex.get(i * 8..i * 8 + 8)?, 16).ok()?;
        Some(w.to_ne_bytes())
    };
    match hex.len() {
        8 => Some(IpAddr::V4(Ipv4Addr::from(word(0)?))),
        32 => {
            let mut bytes = [0u8; 16];
            for i in 0..4 {
                bytes[i * 4..i * 4 + 4].copy_from_slice(&word(i)?);
            }
            Some(IpAddr::V6(Ipv6Addr::from(bytes)))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TCP: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0200007F:1F91 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4242 1 0000000000000000 100 0 0 10 0
   1: 00000000:0050 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4343 1 0000000000000000 100 0 0 10 0
   2: 0200007F:1F91 0100007F:9C40 01 00000000:00000000 00:00000000 00000000     0        0 4444 1 0000000000000000 20 4 30 10 -1
";
    const TCP6: &str = "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0000000000000000FFFF00000200007F:1F91 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 77 1 0000000000000000 100 0 0 10 0
   1: 000000FD000000000000000002000000:0050 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 78 1 0000000000000000 100 0 0 10 0
";

    #[test]
    #[cfg(target_endian = "little")]
    fn parses_listening_sockets_only() {
        assert_eq!(
            listeners(TCP),
            vec![
                ("127.0.0.2:8081".parse().unwrap(), 4242),
                ("0.0.0.0:80".parse().unwrap(), 4343)
            ]
        );
        assert_eq!(
            listeners(TCP6),
            vec![
                ("[::ffff:127.0.0.2]:8081".parse().unwrap(), 77),
                ("[fd00::2]:80".parse().unwrap(), 78)
            ]
        );
        assert!(listeners("header only\n").is_empty());
    }

    #[test]
    fn a_wildcard_listener_serves_every_address_on_its_port() {
        let b: SocketAddr = "127.0.0.2:8081".parse().unwrap();
        assert!(serves("127.0.0.2:8081".parse().unwrap(), b));
        assert!(serves("0.0.0.0:8081".parse().unwrap(), b));
        assert!(!serves("127.0.0.3:8081".parse().unwrap(), b));
        assert!(!serves("0.0.0.0:8082".parse().unwrap(), b));
    }

    #[test]
    fn finds_this_process_listening() {
        // This test process, in whatever cgroup it runs, listens on a port: a fake cgroup
        // directory whose cgroup.procs names it stands in for the workload.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let dir = std::env::temp_dir().join(format!("sockmesh-listeners-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("cgroup.procs"),
            format!("{}\n", std::process::id()),
        )
        .unwrap();
        let other: SocketAddr = "127.0.0.9:9".parse().unwrap();
        let found = find(
            &[addr, other].into(),
            &[("server".to_owned(), dir.as_path())],
        );
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(found, [(addr.to_string(), "server".to_owned())].into());
    }
}
