//! The kernel's own accounting of the agents' programs (connect4, sock_ops, the sched
//! tracepoints): run count and run time, which the kernel only keeps while
//! `kernel.bpf_stats_enabled` is 1.

use std::fs;
use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context, Result};
use serde_json::Value;

use crate::command;

const SYSCTL: &str = "/proc/sys/kernel/bpf_stats_enabled";

/// Turns BPF run-time stats on and restores the previous value on drop.
pub struct StatsEnabled {
    previous: String,
}

impl StatsEnabled {
    pub fn enable() -> Result<Self> {
        let previous = fs::read_to_string(SYSCTL).with_context(|| format!("read {SYSCTL}"))?;
        fs::write(SYSCTL, "1").with_context(|| format!("write {SYSCTL}"))?;
        Ok(Self {
            previous: previous.trim().to_string(),
        })
    }
}

impl Drop for StatsEnabled {
    fn drop(&mut self) {
        if let Err(e) = fs::write(SYSCTL, &self.previous) {
            eprintln!("xtask: cleanup: restore {SYSCTL}={}: {e}", self.previous);
        }
    }
}

/// Counters of one program at one moment.
#[derive(Clone, Copy, Debug, Default)]
pub struct ProgStats {
    pub run_cnt: u64,
    pub run_time_ns: u64,
}

impl ProgStats {
    /// Mean run time per run, `None` when it never ran.
    pub fn mean_ns(self) -> Option<f64> {
        (self.run_cnt > 0).then(|| self.run_time_ns as f64 / self.run_cnt as f64)
    }

    pub fn add(&mut self, delta: ProgStats) {
        self.run_cnt += delta.run_cnt;
        self.run_time_ns += delta.run_time_ns;
    }

    pub fn since(self, earlier: ProgStats) -> ProgStats {
        ProgStats {
            run_cnt: self.run_cnt.saturating_sub(earlier.run_cnt),
            run_time_ns: self.run_time_ns.saturating_sub(earlier.run_time_ns),
        }
    }
}

/// One program of an agent the bench started, by kernel id. Found through the agent's own
/// cgroup or pin directory, never by name alone, so another agent's program of the same name
/// on this machine (tests, demos, other people's runs) is never counted.
pub struct Prog {
    pub id: u64,
    /// The name bpftool reports (the kernel keeps only 15 characters, e.g. sockmesh_connec).
    pub name: String,
}

impl Prog {
    /// The connect4 program attached to `cgroup`.
    pub fn connect4(cgroup: &Path) -> Result<Self> {
        // bpftool names the attach type "connect4" or "cgroup_inet4_connect" by version.
        Self::attached(cgroup, "connect4", &["connect4", "cgroup_inet4_connect"])
    }

    /// The sock_ops program attached to `cgroup`.
    pub fn sock_ops(cgroup: &Path) -> Result<Self> {
        Self::attached(cgroup, "sock_ops", &["sock_ops", "cgroup_sock_ops"])
    }

    fn attached(cgroup: &Path, what: &str, attach_types: &[&str]) -> Result<Self> {
        let out = command::stdout(
            Command::new("bpftool")
                .args(["-j", "cgroup", "show"])
                .arg(cgroup),
        )?;
        let progs: Value = serde_json::from_str(&out).context("bpftool cgroup show: not JSON")?;
        let progs = progs.as_array().cloned().unwrap_or_default();
        let prog = progs
            .iter()
            .find(|p| attach_types.contains(&p["attach_type"].as_str().unwrap_or_default()))
            .with_context(|| {
                format!("no {what} program attached to {}: {out}", cgroup.display())
            })?;
        let id = prog["id"].as_u64().context("bpftool cgroup show: no id")?;
        let name = prog["name"].as_str().unwrap_or("?").to_string();
        Ok(Self { id, name })
    }

    /// The program pinned at `pin` (the agent pins `<bpffs>/v<LAYOUT_VERSION>/progs/<name>`), checked to be
    /// the program called `name`: the pin says whose it is, the name what it is.
    pub fn pinned(pin: &Path, name: &str) -> Result<Self> {
        let out = command::stdout(
            Command::new("bpftool")
                .args(["-j", "prog", "show", "pinned"])
                .arg(pin),
        )?;
        let prog: Value = serde_json::from_str(&out).context("bpftool prog show: not JSON")?;
        let id = prog["id"].as_u64().context("bpftool prog show: no id")?;
        let shown = prog["name"].as_str().unwrap_or_default().to_string();
        // Newer bpftool prints the full name from BTF, older ones the kernel's 15 characters.
        let matches = shown == name || (shown.len() == 15 && name.starts_with(&shown));
        if !matches {
            bail!(
                "{} is program {id} named {shown:?}, not {name}",
                pin.display()
            );
        }
        Ok(Self { id, name: shown })
    }

    pub fn stats(&self) -> Result<ProgStats> {
        let prog = show(self.id)?;
        // Both fields are absent until the program has run with stats enabled.
        Ok(ProgStats {
            run_cnt: prog["run_cnt"].as_u64().unwrap_or(0),
            run_time_ns: prog["run_time_ns"].as_u64().unwrap_or(0),
        })
    }
}

fn show(id: u64) -> Result<Value> {
    let out = command::stdout(Command::new("bpftool").args([
        "-j",
        "prog",
        "show",
        "id",
        &id.to_string(),
    ]))?;
    serde_json::from_str(&out).context("bpftool prog show: not JSON")
}
