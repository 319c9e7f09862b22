//! The test's own pin directory on bpffs: where the agent pins programs, maps and cgroup
//! links, and what `sockmesh-agent cleanup` empties.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::resource_name;

/// Where bpffs is mounted on these machines.
pub const BPFFS_ROOT: &str = "/sys/fs/bpf";

/// Mounts bpffs at [`BPFFS_ROOT`] unless it already is (a fresh machine has it unmounted).
pub fn ensure_bpffs_mounted() -> Result<()> {
    let mounts = fs::read_to_string("/proc/mounts").context("reading /proc/mounts")?;
    let mounted = mounts.lines().any(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        f.len() > 2 && f[1] == BPFFS_ROOT && f[2] == "bpf"
    });
    if mounted {
        return Ok(());
    }
    let status = Command::new("mount")
        .args(["-t", "bpf", "bpf", BPFFS_ROOT])
        .status()
        .context("running mount")?;
    if !status.success() {
        bail!("`mount -t bpf bpf {BPFFS_ROOT}` failed ({status}): bpffs is required");
    }
    Ok(())
}

/// `/sys/fs/bpf/sockmesh-test-<pid>-<name>`, emptied on drop by `sockmesh-agent cleanup`
/// (which also detaches from the cgroup), then removed outright if anything is left.
#[derive(Debug)]
pub struct Bpffs {
    path: PathBuf,
}

impl Bpffs {
    /// Reserves the directory name (the agent creates the directory itself). Mounts bpffs
    /// first if needed and refuses a name that already exists, so a test never adopts pins
    /// it did not make.
    pub fn new(name: &str) -> Result<Self> {
        ensure_bpffs_mounted()?;
        let path = Path::new(BPFFS_ROOT).join(resource_name(name));
        if path.exists() {
            bail!("pin directory {} already exists", path.display());
        }
        Ok(Bpffs { path })
    }

    /// The directory, as passed to the agent's `--bpffs`.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Names of everything pinned under the directory (recursively, relative paths).
    pub fn pins(&self) -> Vec<String> {
        let mut out = Vec::new();
        list(&self.path, &self.path, &mut out);
        out.sort();
        out
    }
}

fn list(root: &Path, dir: &Path, out: &mut Vec<String>) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            list(root, &path, out);
        } else if let Ok(rel) = path.strip_prefix(root) {
            out.push(rel.display().to_string());
        }
    }
}

impl Drop for Bpffs {
    fn drop(&mut self) {
        remove(&self.path);
    }
}

/// `sockmesh-agent cleanup --bpffs DIR` when the agent binary is known; then, as a last
/// resort, unlinking the pins: dropping a link's last pin detaches it in the kernel.
fn remove(path: &Path) {
    if !path.exists() {
        return;
    }
    if let Some(bin) = std::env::var_os("SOCKMESH_AGENT_BIN") {
        match Command::new(bin)
            .arg("cleanup")
            .arg("--bpffs")
            .arg(path)
            .output()
        {
            Ok(out) if !out.status.success() => eprintln!(
                "bpf-tests: `sockmesh-agent cleanup --bpffs {}` failed: {}",
                path.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            ),
            Err(e) => eprintln!("bpf-tests: running sockmesh-agent cleanup: {e}"),
            Ok(_) => {}
        }
    }
    if path.exists() {
        if let Err(e) = fs::remove_dir_all(path) {
            eprintln!("bpf-tests: removing {}: {e}", path.display());
        }
    }
}

/// Cleans stale test pin directories (see [`crate::sweep_stale`]).
pub(crate) fn sweep_stale(is_stale: &dyn Fn(&str) -> bool) {
    let Ok(entries) = fs::read_dir(BPFFS_ROOT) else {
        return;
    };
    for entry in entries.flatten() {
        if is_stale(&entry.file_name().to_string_lossy()) {
            remove(&entry.path());
        }
    }
}

/// Waits until `dir` is gone (a retired pin directory), panicking after `timeout`.
pub fn wait_gone(dir: &Path, timeout: std::time::Duration) {
    let start = std::time::Instant::now();
    while dir.exists() {
        assert!(
            start.elapsed() < timeout,
            "{} still there {timeout:?} after the new agent was ready",
            dir.display()
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}
