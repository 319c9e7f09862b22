//! Draining where the workloads' sockets live. The connect hook routes every process of the
//! attached cgroup whatever network namespace it connects from, but a sock_diag socket sees
//! only its own namespace: in Kubernetes each pod has one, so a drain from the agent's alone
//! never reaches the connections pods hold.
//!
//! So a drain looks at every process of the cgroups the agent serves (its `--cgroup` and the
//! workloads' cgroups, with their descendants: `cgroup.procs`), tells their namespaces apart
//! by the inode of `/proc/<pid>/ns/net` (fifty processes of one pod cost one dump), and for
//! each namespace other than its own opens `/proc/<pid>/ns/net`, joins it on a short-lived
//! thread of its own (never a tokio worker) just long enough to create a NETLINK_SOCK_DIAG
//! socket there, and runs the dump and SOCK_DESTROY through that socket.
//!
//! Entering needs privileges the agent may lack: reading another process's namespace link
//! needs ptrace read access (`CAP_SYS_PTRACE` when the process has other credentials or
//! capabilities the agent lacks) and `setns(2)` needs `CAP_SYS_ADMIN`. Without them the
//! drain still runs in the agent's own namespace and reports what it could not enter.
//! Processes that exit mid-walk and namespaces that die are skipped silently.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs::File,
    io,
    net::SocketAddr,
    os::{fd::AsRawFd, unix::fs::MetadataExt},
    path::{Path, PathBuf},
};

use super::{destroy, Netlink};
use crate::signals::workloads::walk;

/// What one drain did, per path.
#[derive(Debug, Default)]
pub(crate) struct DrainReport {
    /// Connections closed in the agent's own network namespace.
    pub agent: usize,
    /// Connections closed in workload network namespaces.
    pub workloads: usize,
    /// Workload network namespaces the drain entered.
    pub entered: usize,
    /// Workload namespaces it could not enter (or, where even the namespace of a process
    /// could not be read, the cgroups holding such processes), with one of the errors.
    pub denied: usize,
    pub denied_error: Option<io::Error>,
    /// Namespaces entered whose dump or destroy failed, with the error (logged by the caller).
    pub failed: Vec<(u64, io::Error)>,
}

/// Closes the stamped connections to `dst` (cookies in `cookies`) in the agent's network
/// namespace and in every namespace of a process under `roots`. Only the agent's own
/// namespace failing is an error; the others are reported.
pub(crate) fn destroy_everywhere(
    roots: &[PathBuf],
    dst: SocketAddr,
    cookies: &BTreeSet<u64>,
) -> io::Result<DrainReport> {
    let mut report = DrainReport::default();
    if cookies.is_empty() {
        return Ok(report);
    }
    report.agent = destroy(&Netlink::open()?, dst, cookies)?;
    let own = std::fs::metadata("/proc/self/ns/net")?.ino();
    let plan = plan(own, observe(roots));
    report.denied = plan.unreadable.len();
    report.denied_error = plan.unreadable.into_values().next();
    for (ino, pids) in plan.enter {
        match netlink_in(ino, &pids) {
            Ok(Some(nl)) => {
                report.entered += 1;
                match destroy(&nl, dst, cookies) {
                    Ok(n) => report.workloads += n,
                    Err(e) => report.failed.push((ino, e)),
                }
            }
            // Every process holding it exited: the namespace is gone, or no longer ours.
            Ok(None) => {}
            Err(e) => {
                report.denied += 1;
                report.denied_error.get_or_insert(e);
            }
        }
    }
    Ok(report)
}

/// The cgroup trees to walk: the attached cgroup and the workloads' (usually below it), each
/// tree once.
pub(crate) fn roots(attached: &Path, workloads: &[PathBuf]) -> Vec<PathBuf> {
    let all: BTreeSet<&Path> = std::iter::once(attached)
        .chain(workloads.iter().map(PathBuf::as_path))
        .collect();
    all.iter()
        .filter(|p| !all.iter().any(|a| a != *p && p.starts_with(a)))
        .map(|p| p.to_path_buf())
        .collect()
}

/// One process of a served cgroup: the cgroup it was found in, its pid, and the inode of its
/// network namespace (or why that could not be read).
type Seen = (PathBuf, u32, io::Result<u64>);

/// Which namespaces a drain enters, decided from what [`observe`] saw.
#[derive(Debug, Default)]
struct Plan {
    /// Namespaces other than the agent's, by inode, with the pids holding them (tried in
    /// order: the first may exit before it is opened).
    enter: BTreeMap<u64, Vec<u32>>,
    /// Cgroups with a process whose namespace could not even be identified (no ptrace read
    /// access), with one error each: a pod's processes usually share a cgroup, so this is
    /// the best count of what could not be entered.
    unreadable: BTreeMap<PathBuf, io::Error>,
}

fn plan(own: u64, seen: impl IntoIterator<Item = Seen>) -> Plan {
    let mut plan = Plan::default();
    for (cgroup, pid, ns) in seen {
        match ns {
            Ok(ino) if ino == own => {}
            Ok(ino) => plan.enter.entry(ino).or_default().push(pid),
            Err(e) => {
                plan.unreadable.entry(cgroup).or_insert(e);
            }
        }
    }
    plan
}

/// A process that exited (or a namespace that died) between two looks.
fn vanished(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOENT | libc::ESRCH))
}

/// Every process under `roots` and its network namespace; processes that exit meanwhile are
/// left out.
fn observe(roots: &[PathBuf]) -> Vec<Seen> {
    let mut seen = Vec::new();
    let mut pids = BTreeSet::new();
    for root in roots {
        walk(root, &mut |dir| {
            let Ok(text) = std::fs::read_to_string(dir.join("cgroup.procs")) else {
                return;
            };
            for pid in text.lines().filter_map(|l| l.trim().parse::<u32>().ok()) {
                if !pids.insert(pid) {
                    continue;
                }
                let ns = std::fs::metadata(format!("/proc/{pid}/ns/net")).map(|m| m.ino());
                if ns.as_ref().is_err_and(vanished) {
                    continue;
                }
                seen.push((dir.to_path_buf(), pid, ns));
            }
        });
    }
    seen
}

/// A sock_diag socket in namespace `ino`, entered through the first of `pids` still in it;
/// `None` when none is.
fn netlink_in(ino: u64, pids: &[u32]) -> io::Result<Option<Netlink>> {
    for pid in pids {
        let ns = match File::open(format!("/proc/{pid}/ns/net")) {
            Ok(f) => f,
            Err(e) if vanished(&e) => continue,
            Err(e) => return Err(e),
        };
        // The pid may have been reused by a process of another namespace since the walk.
        if ns.metadata()?.ino() != ino {
            continue;
        }
        return socket_in(ns).map(Some);
    }
    Ok(None)
}

/// Creates the socket on a thread that joins `ns` and ends: the namespace a thread is in is
/// the namespace its sockets are in, and the caller's own thread (a tokio blocking-pool
/// thread, reused for other work) must never change namespace.
fn socket_in(ns: File) -> io::Result<Netlink> {
    std::thread::Builder::new()
        .name("sockmesh-netns".into())
        .spawn(move || {
            // SAFETY: setns(2) on a valid namespace fd; it changes only this thread, which
            // ends right after creating the socket.
            if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(io::Error::last_os_error());
            }
            Netlink::open()
        })?
        .join()
        .map_err(|_| io::Error::other("the thread entering a network namespace panicked"))?
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen(cgroup: &str, pid: u32, ns: Result<u64, i32>) -> Seen {
        (
            PathBuf::from(cgroup),
            pid,
            ns.map_err(io::Error::from_raw_os_error),
        )
    }

    #[test]
    fn one_entry_per_namespace_and_never_the_agents_own() {
        let p = plan(
            1,
            [
                seen("/cg/pod-a", 10, Ok(100)),
                seen("/cg/pod-a", 11, Ok(100)),
                seen("/cg/pod-b", 20, Ok(200)),
                seen("/cg/host", 30, Ok(1)),
                seen("/cg/pod-a/sidecar", 12, Ok(100)),
            ],
        );
        assert_eq!(
            p.enter,
            BTreeMap::from([(100, vec![10, 11, 12]), (200, vec![20])])
        );
        assert!(p.unreadable.is_empty());
    }

    #[test]
    fn unreadable_namespaces_count_once_per_cgroup() {
        let p = plan(
            1,
            [
                seen("/cg/pod-a", 10, Err(libc::EACCES)),
                seen("/cg/pod-a", 11, Err(libc::EACCES)),
                seen("/cg/pod-b", 20, Err(libc::EACCES)),
                seen("/cg/pod-c", 30, Ok(300)),
            ],
        );
        assert_eq!(p.unreadable.len(), 2);
        assert_eq!(p.enter, BTreeMap::from([(300, vec![30])]));
    }

    #[test]
    fn nested_roots_are_walked_once() {
        let r = roots(
            Path::new("/cg/kubepods"),
            &[
                PathBuf::from("/cg/kubepods/pod-a"),
                PathBuf::from("/cg/elsewhere/job"),
                PathBuf::from("/cg/kubepods"),
                // A sibling whose name merely starts like the root is not below it.
                PathBuf::from("/cg/kubepods-besteffort"),
            ],
        );
        assert_eq!(
            r,
            vec![
                PathBuf::from("/cg/elsewhere/job"),
                PathBuf::from("/cg/kubepods"),
                PathBuf::from("/cg/kubepods-besteffort"),
            ]
        );
    }

    #[test]
    fn exited_processes_are_not_errors() {
        assert!(vanished(&io::Error::from_raw_os_error(libc::ENOENT)));
        assert!(vanished(&io::Error::from_raw_os_error(libc::ESRCH)));
        assert!(!vanished(&io::Error::from_raw_os_error(libc::EACCES)));
        assert!(!vanished(&io::Error::from_raw_os_error(libc::EPERM)));
    }

    /// A cgroup removed before the walk (a pod deleted meanwhile) yields nothing, no error.
    #[test]
    fn a_missing_cgroup_tree_is_empty() {
        assert!(observe(&[PathBuf::from("/nonexistent/sockmesh-cgroup")]).is_empty());
    }
}
