//! How often the kernel ran one eBPF program (`kernel.bpf_stats_enabled`), for tests that
//! must show a hook stopped running, not only that it stopped recording.

use std::fs;
use std::process::Command;

use anyhow::{bail, Context, Result};

const SYSCTL: &str = "/proc/sys/kernel/bpf_stats_enabled";

/// `kernel.bpf_stats_enabled=1` while alive; the previous value is written back on drop.
/// Machine-wide: the kernel then counts runs (and adds two clock reads per run) for every
/// program, which changes no behaviour.
#[derive(Debug)]
pub struct BpfStats {
    previous: String,
}

impl BpfStats {
    pub fn enable() -> Result<Self> {
        let previous = fs::read_to_string(SYSCTL).with_context(|| format!("reading {SYSCTL}"))?;
        fs::write(SYSCTL, "1").with_context(|| format!("writing 1 to {SYSCTL}"))?;
        Ok(BpfStats {
            previous: previous.trim().to_string(),
        })
    }

    /// Runs of program `id` counted while stats were enabled (`run_cnt`).
    pub fn run_count(&self, id: u64) -> Result<u64> {
        let out = Command::new("bpftool")
            .args(["-j", "prog", "show", "id", &id.to_string()])
            .output()
            .context("running bpftool")?;
        if !out.status.success() {
            bail!(
                "bpftool prog show id {id}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        let prog: serde_json::Value = serde_json::from_slice(&out.stdout)
            .with_context(|| format!("bpftool output: {}", String::from_utf8_lossy(&out.stdout)))?;
        // Absent until the program has run with stats enabled.
        Ok(prog["run_cnt"].as_u64().unwrap_or(0))
    }
}

impl Drop for BpfStats {
    fn drop(&mut self) {
        if let Err(e) = fs::write(SYSCTL, &self.previous) {
            eprintln!("bpf-tests: restoring {SYSCTL}={}: {e}", self.previous);
        }
    }
}
