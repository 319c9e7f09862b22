//! The agent as demo and bench run it: attached to a cgroup of their own, pinning under a
//! bpffs directory of their own, with its state and log in their scratch directory.
//!
//! The process guard is the bpf-tests harness's [`Agent`] (stop, then `sockmesh-agent
//! cleanup` on drop); this module adds what is xtask's: the `sockmesh-<purpose>-<pid>`
//! names and the removal of the pin directory itself.

use std::ffi::OsStr;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Result};
use sockmesh_bpf_tests::{Agent, AgentOptions, BPFFS_ROOT};

/// How long the agent may take to load, attach and apply its first config.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// Makes `bin` the agent the harness starts. Call before any thread is spawned: the harness
/// reads it from the environment (`SOCKMESH_AGENT_BIN`), like the bpf-tests do.
pub fn use_agent_bin(bin: &Path) {
    std::env::set_var("SOCKMESH_AGENT_BIN", bin);
    set_isolated_agent_env();
}

/// Environment defaults for every agent xtask starts (demo, bench, and the bpf-tests'): the
/// metrics endpoint on a port the kernel picks. The agent's default is a fixed port, and
/// other agents (tests, demos, other people's runs) on the same machine would make it fail
/// to start. A flag the harness passes still wins over this.
fn set_isolated_agent_env() {
    std::env::set_var("SOCKMESH_METRICS_ADDR", "127.0.0.1:0");
}

/// `/sys/fs/bpf/<name>`, removed on drop. Declare it before the [`Agent`] so the agent's
/// own cleanup (which detaches from the cgroup) runs first.
pub struct PinDir {
    path: PathBuf,
}

impl PinDir {
    pub fn reserve(name: &str) -> Result<Self> {
        let path = Path::new(BPFFS_ROOT).join(name);
        if path.exists() {
            // Adopting pins we did not make would attach someone else's programs to us.
            bail!(
                "{} already exists (a leftover of a crashed run?)",
                path.display()
            );
        }
        Ok(Self { path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for PinDir {
    fn drop(&mut self) {
        // Empty after `cleanup`; if not, unlinking the last pin of a link still detaches it.
        if self.path.exists() {
            if let Err(e) = fs::remove_dir_all(&self.path) {
                eprintln!("xtask: cleanup: remove {}: {e}", self.path.display());
            }
        }
    }
}

/// Starts the agent (embedded default config when `config` is `None`) and waits until ready.
pub fn start(
    config: Option<PathBuf>,
    cgroup: &Path,
    pins: &PinDir,
    scratch: &Path,
) -> Result<Agent> {
    start_with(
        config,
        cgroup,
        pins,
        scratch,
        "",
        std::iter::empty::<&str>(),
    )
}

/// [`start`] for a second agent in the same scratch directory, with run flags of its own
/// (the bench's routing-only agent: `--observe false`). `name` keeps its state directory
/// (`state-<name>`, with the admin socket) and log (`agent-<name>.log`) apart from the
/// first agent's; an empty name gives [`start`]'s `state` and `agent.log`.
pub fn start_with<I, S>(
    config: Option<PathBuf>,
    cgroup: &Path,
    pins: &PinDir,
    scratch: &Path,
    name: &str,
    extra_args: I,
) -> Result<Agent>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let suffix = |base: &str, ext: &str| {
        if name.is_empty() {
            format!("{base}{ext}")
        } else {
            format!("{base}-{name}{ext}")
        }
    };
    let opts = AgentOptions {
        config,
        cgroup: cgroup.to_path_buf(),
        bpffs: pins.path().to_path_buf(),
        state_dir: scratch.join(suffix("state", "")),
        watch_interval_ms: None,
        log_file: scratch.join(suffix("agent", ".log")),
    };
    let extra_args: Vec<_> = extra_args
        .into_iter()
        .map(|a| a.as_ref().to_os_string())
        .collect();
    let mut agent = Agent::spawn_with(opts, extra_args)?;
    agent.wait_ready(READY_TIMEOUT)?;
    Ok(agent)
}
