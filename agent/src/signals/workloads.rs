//! Workloads: configured cgroups, resolved to cgroup ids (caller attribution), their threads
//! (run-queue tracking in the kernel) and their CPU throttling (cpu.stat, v2 or v1).

use std::{
    collections::{BTreeMap, BTreeSet},
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

use sockmesh_model::WorkloadSpec;

/// One workload as found on this node.
#[derive(Clone, Debug)]
pub(crate) struct ResolvedWorkload {
    pub index: u32,
    pub name: String,
    pub cgroup: PathBuf,
    pub labels: BTreeMap<String, String>,
    /// Priority level the kernel compares when shedding.
    pub priority: u32,
    /// Ids of the cgroup and every descendant (a caller in a sub-cgroup is still the workload).
    pub cgroup_ids: Vec<u64>,
    pub tids: BTreeSet<u32>,
}

/// Resolves the workloads that exist now; missing cgroups are skipped (and retried later).
pub(crate) fn resolve(specs: &[WorkloadSpec], cgroup2: &Path) -> Vec<ResolvedWorkload> {
    specs
        .iter()
        .enumerate()
        .filter_map(|(i, spec)| {
            let path = cgroup_path(cgroup2, &spec.cgroup);
            let mut ids = Vec::new();
            let mut tids = BTreeSet::new();
            walk(&path, &mut |dir| {
                if let Ok(md) = std::fs::metadata(dir) {
                    // cgroup v2: the cgroup id bpf_get_current_cgroup_id() returns is the
                    // kernfs inode number of the cgroup directory.
                    ids.push(md.ino());
                }
                if let Ok(text) = std::fs::read_to_string(dir.join("cgroup.threads")) {
                    tids.extend(text.lines().filter_map(|l| l.trim().parse::<u32>().ok()));
                }
            });
            (!ids.is_empty()).then(|| ResolvedWorkload {
                index: i as u32,
                name: spec.name.clone(),
                cgroup: path,
                labels: spec.labels.clone(),
                priority: spec.priority.level(),
                cgroup_ids: ids,
                tids,
            })
        })
        .collect()
}

pub(crate) fn cgroup_path(cgroup2: &Path, configured: &str) -> PathBuf {
    let p = Path::new(configured);
    if p.is_absolute() {
        p.to_owned()
    } else {
        cgroup2.join(p)
    }
}

/// Calls `f` for `dir` and every cgroup below it (nothing if `dir` is gone).
pub(crate) fn walk(dir: &Path, f: &mut dyn FnMut(&Path)) {
    if !dir.is_dir() {
        return;
    }
    f(dir);
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                walk(&e.path(), f);
            }
        }
    }
}

/// CPU throttling of a workload: (nr_throttled, throttled seconds). cgroup v2 reports it in
/// the cgroup's own cpu.stat when the cpu controller is enabled there; on hybrid hosts (the cpu
/// controller on v1) we follow a member process to its v1 cpu cgroup.
pub(crate) fn throttling(cgroup: &Path) -> Option<(u64, f64)> {
    if let Ok(text) = std::fs::read_to_string(cgroup.join("cpu.stat")) {
        if let Some(t) = parse_cpu_stat(&text) {
            return Some(t);
        }
    }
    let procs = std::fs::read_to_string(cgroup.join("cgroup.procs")).ok()?;
    let pid = procs.lines().next()?.trim().to_owned();
    let own = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    let rel = v1_cpu_path(&own)?;
    let mounts = std::fs::read_to_string("/proc/mounts").ok()?;
    let root = v1_cpu_mount(&mounts)?;
    let text =
        std::fs::read_to_string(root.join(rel.trim_start_matches('/')).join("cpu.stat")).ok()?;
    parse_cpu_stat(&text)
}

/// v2: `nr_throttled` + `throttled_usec`; v1: `nr_throttled` + `throttled_time` (ns).
pub(crate) fn parse_cpu_stat(text: &str) -> Option<(u64, f64)> {
    let get = |key: &str| {
        text.lines().find_map(|l| {
            let (k, v) = l.split_once(' ')?;
            (k == key).then(|| v.trim().parse::<u64>().ok()).flatten()
        })
    };
    let nr = get("nr_throttled")?;
    if let Some(us) = get("throttled_usec") {
        return Some((nr, us as f64 / 1e6));
    }
    get("throttled_time").map(|ns| (nr, ns as f64 / 1e9))
}

/// The cpu controller's path in a v1 `/proc/<pid>/cgroup` (`4:cpu,cpuacct:/a/b`).
fn v1_cpu_path(proc_cgroup: &str) -> Option<String> {
    proc_cgroup.lines().find_map(|l| {
        let mut parts = l.splitn(3, ':');
        let (_id, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        controllers
            .split(',')
            .any(|c| c == "cpu")
            .then(|| path.to_owned())
    })
}

fn v1_cpu_mount(mounts: &str) -> Option<PathBuf> {
    mounts.lines().find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        (f.len() > 3 && f[2] == "cgroup" && f[3].split(',').any(|o| o == "cpu"))
            .then(|| PathBuf::from(f[1]))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_v1_and_v2_cpu_stat() {
        let v2 =
            "usage_usec 100\nuser_usec 50\nnr_periods 10\nnr_throttled 3\nthrottled_usec 2500000\n";
        assert_eq!(parse_cpu_stat(v2), Some((3, 2.5)));
        let v1 = "nr_periods 10\nnr_throttled 4\nthrottled_time 1500000000\n";
        assert_eq!(parse_cpu_stat(v1), Some((4, 1.5)));
        assert_eq!(
            parse_cpu_stat("usage_usec 1\n"),
            None,
            "no cpu controller here"
        );
    }

    #[test]
    fn finds_the_v1_cpu_cgroup() {
        let proc = "12:pids:/x\n4:cpu,cpuacct:/sockmesh-test/busy\n0::/sockmesh-test/busy\n";
        assert_eq!(v1_cpu_path(proc).as_deref(), Some("/sockmesh-test/busy"));
        let mounts = "cgroup /sys/fs/cgroup/cpu cgroup rw,relatime,cpu 0 0\ncgroup /sys/fs/cgroup/cpuacct cgroup rw,cpuacct 0 0\n";
        assert_eq!(
            v1_cpu_mount(mounts),
            Some(PathBuf::from("/sys/fs/cgroup/cpu"))
        );
    }

    #[test]
    fn resolves_relative_and_absolute_paths() {
        assert_eq!(
            cgroup_path(Path::new("/cg"), "a/b"),
            PathBuf::from("/cg/a/b")
        );
        assert_eq!(cgroup_path(Path::new("/cg"), "/x/y"), PathBuf::from("/x/y"));
    }
}
