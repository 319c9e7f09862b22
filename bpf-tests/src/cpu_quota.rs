//! A CFS quota on one workload, wherever this machine's cpu controller lives.
//!
//! With the cpu controller on cgroup v2, the workload's own `cpu.max` is set (after enabling
//! `+cpu` in the test cgroup's `cgroup.subtree_control`, never anywhere above it). On hybrid
//! hosts, where the cpu controller is mounted on cgroup v1 (e.g. `/sys/fs/cgroup/cpu`), a v1
//! cpu cgroup `sockmesh-test-<pid>-<name>` gets `cpu.cfs_quota_us`, and the workload's
//! processes join it as well as their v2 cgroup ([`CpuQuota::enter`]): the v2 cgroup is what
//! the agent knows the workload by, the v1 one is what throttles it.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::cgroup::{self, cgroup2_mount, join_before_exec, Cgroup2};
use crate::resource_name;

/// Where the quota is enforced.
#[derive(Debug)]
enum Place {
    /// `cpu.max` of the workload's v2 cgroup.
    V2 { cgroup: PathBuf },
    /// A v1 cpu cgroup of our own, removed on drop.
    V1 { cgroup: PathBuf },
}

/// See the module docs. Drop removes the v1 cgroup (killing what is left in it: only
/// processes this test put there).
#[derive(Debug)]
pub struct CpuQuota {
    place: Place,
}

impl CpuQuota {
    /// Limits `workload`, a child of the test cgroup `parent`, to `quota_us` of CPU time per
    /// `period_us`. `name` names the v1 cgroup if one is needed.
    pub fn limit(
        parent: &Cgroup2,
        workload: &Cgroup2,
        name: &str,
        quota_us: u64,
        period_us: u64,
    ) -> Result<Self> {
        Self::create(parent, workload, name, Some((quota_us, period_us)))
    }

    /// A cpu cgroup of the test's own with no quota: a control workload is then measured in
    /// a cgroup known to be unthrottled, not in whatever cpu cgroup the test runner is in
    /// (which may have a quota of its own, in a container).
    pub fn unlimited(parent: &Cgroup2, workload: &Cgroup2, name: &str) -> Result<Self> {
        Self::create(parent, workload, name, None)
    }

    fn create(
        parent: &Cgroup2,
        workload: &Cgroup2,
        name: &str,
        limit: Option<(u64, u64)>,
    ) -> Result<Self> {
        assert!(
            workload.path().parent() == Some(parent.path()),
            "the workload must be a child of the test cgroup"
        );
        let root = cgroup2_mount()?;
        let controllers = fs::read_to_string(root.join("cgroup.controllers"))
            .context("reading the cgroup2 root's cgroup.controllers")?;
        if controllers.split_whitespace().any(|c| c == "cpu") {
            let own = fs::read_to_string(parent.path().join("cgroup.controllers"))?;
            if !own.split_whitespace().any(|c| c == "cpu") {
                bail!(
                    "the cpu controller is on cgroup v2 but not delegated to {} (the cgroup2 \
                     root's cgroup.subtree_control lacks +cpu); the harness never changes the \
                     root, so enable it there first",
                    parent.path().display()
                );
            }
            write(&parent.path().join("cgroup.subtree_control"), "+cpu")?;
            let max = match limit {
                Some((quota_us, period_us)) => format!("{quota_us} {period_us}"),
                None => "max".to_string(),
            };
            write(&workload.path().join("cpu.max"), &max)?;
            return Ok(CpuQuota {
                place: Place::V2 {
                    cgroup: workload.path().to_path_buf(),
                },
            });
        }
        let mount = v1_cpu_mount()?.with_context(|| {
            format!(
                "no cpu controller: neither in {}/cgroup.controllers nor as a cgroup v1 mount \
                 with option cpu in /proc/mounts",
                root.display()
            )
        })?;
        let path = mount.join(resource_name(name));
        fs::create_dir(&path).with_context(|| format!("creating v1 cgroup {}", path.display()))?;
        let quota = CpuQuota {
            place: Place::V1 { cgroup: path },
        };
        if let Some((quota_us, period_us)) = limit {
            let dir = quota.cgroup();
            // Period first: the kernel checks the quota against the period in force.
            write(&dir.join("cpu.cfs_period_us"), &period_us.to_string())?;
            write(&dir.join("cpu.cfs_quota_us"), &quota_us.to_string())?;
        }
        Ok(quota)
    }

    /// The cgroup whose `cpu.stat` tells the throttling (v2 workload or v1 cpu cgroup).
    pub fn cgroup(&self) -> &Path {
        match &self.place {
            Place::V2 { cgroup } | Place::V1 { cgroup } => cgroup,
        }
    }

    /// Whether the quota lives on a v1 cpu cgroup.
    pub fn is_v1(&self) -> bool {
        matches!(self.place, Place::V1 { .. })
    }

    /// Makes `cmd` start under the quota: on v1 its child joins the v1 cpu cgroup before
    /// exec; on v2 joining the workload's cgroup ([`Cgroup2::enter`]) is all it takes.
    pub fn enter<'a>(&self, cmd: &'a mut Command) -> &'a mut Command {
        match &self.place {
            Place::V2 { .. } => cmd,
            Place::V1 { cgroup } => join_before_exec(cmd, &cgroup.join("cgroup.procs")),
        }
    }

    /// The quota cgroup's `cpu.stat`, for messages.
    pub fn cpu_stat(&self) -> String {
        fs::read_to_string(self.cgroup().join("cpu.stat")).unwrap_or_default()
    }
}

impl Drop for CpuQuota {
    fn drop(&mut self) {
        if let Place::V1 { cgroup } = &self.place {
            if let Err(e) = cgroup::remove(cgroup) {
                eprintln!("bpf-tests: {e:#}");
            }
        }
    }
}

fn write(path: &Path, value: &str) -> Result<()> {
    fs::write(path, value).with_context(|| format!("writing {value:?} to {}", path.display()))
}

/// The mount point of the cgroup v1 hierarchy that carries the cpu controller, if any.
pub fn v1_cpu_mount() -> Result<Option<PathBuf>> {
    let mounts = fs::read_to_string("/proc/mounts").context("reading /proc/mounts")?;
    Ok(mounts.lines().find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        (f.len() > 3 && f[2] == "cgroup" && f[3].split(',').any(|o| o == "cpu"))
            .then(|| PathBuf::from(f[1]))
    }))
}

/// Removes stale v1 cpu cgroups of dead runs (see [`crate::sweep_stale`]), only if empty.
pub(crate) fn sweep_stale(is_stale: &dyn Fn(&str) -> bool) {
    let Ok(Some(mount)) = v1_cpu_mount() else {
        return;
    };
    let Ok(entries) = fs::read_dir(&mount) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if is_stale(&name) && entry.path().is_dir() {
            if let Err(e) = cgroup::remove_if_empty(&entry.path()) {
                eprintln!("bpf-tests: stale v1 cpu cgroup {name}: {e:#}");
            }
        }
    }
}
