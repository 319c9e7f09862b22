//! One test's whole world: its cgroup, pin directory, temp dir with the config file, and the
//! agent attached to that cgroup. Dropping it stops the agent, runs `cleanup`, kills what
//! is left in the cgroup and removes everything, in that order.

use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use serde_json::Value;
use tempfile::TempDir;

use crate::agent::{Agent, AgentOptions};
use crate::bpffs::Bpffs;
use crate::cgroup::Cgroup2;
use crate::mesh_yaml::fingerprint_of;
use crate::{agent_bin, require_root, resource_name, sweep_stale};

/// How long the agent may take to load, attach and apply its first config.
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a config edit may take to become live (the agent polls every 100 ms here).
pub const APPLY_TIMEOUT: Duration = Duration::from_secs(10);
/// The agent's file watch interval in tests: short, so reload tests stay quick.
pub const WATCH_INTERVAL_MS: u64 = 100;

/// See the module docs.
#[derive(Debug)]
pub struct TestBed {
    // Field order is drop order: the agent must stop and detach before the pin dir and the
    // cgroup go, and its log (in `dir`) must outlive it.
    agent: Option<Agent>,
    bpffs: Bpffs,
    cgroup: Cgroup2,
    dir: TempDir,
    config_path: PathBuf,
}

impl TestBed {
    /// Creates the cgroup, pin directory name and temp dir for test `name`, and writes
    /// `yaml` as the config file. The agent is not started yet (see [`TestBed::start_agent`]).
    ///
    /// # Panics
    /// Without root or without `SOCKMESH_AGENT_BIN`: such a test cannot run, so it fails.
    pub fn new(name: &str, yaml: &str) -> Result<Self> {
        require_root();
        agent_bin();
        sweep_stale();
        let dir = tempfile::Builder::new()
            .prefix(&format!("{}-", resource_name(name)))
            .tempdir()
            .context("creating the test's temp dir")?;
        let config_path = dir.path().join("mesh.yaml");
        let bed = TestBed {
            agent: None,
            bpffs: Bpffs::new(name)?,
            cgroup: Cgroup2::create(name)?,
            dir,
            config_path,
        };
        bed.write_config(yaml)?;
        Ok(bed)
    }

    /// [`TestBed::new`], then [`TestBed::start_agent`].
    pub fn start(name: &str, yaml: &str) -> Result<Self> {
        let mut bed = Self::new(name, yaml)?;
        bed.start_agent()?;
        Ok(bed)
    }

    /// Starts the agent on this bed's cgroup, pins and config file, and waits until it is
    /// ready with the config file's content applied.
    pub fn start_agent(&mut self) -> Result<&mut Agent> {
        self.start_agent_with(Vec::<OsString>::new())
    }

    /// [`TestBed::start_agent`] with extra run flags (see [`Agent::spawn_with`]).
    pub fn start_agent_with(
        &mut self,
        extra_args: impl IntoIterator<Item = impl Into<OsString>>,
    ) -> Result<&mut Agent> {
        self.start_agent_wrapped(Vec::<OsString>::new(), extra_args)
    }

    /// [`TestBed::start_agent_with`], the agent run under `wrapper` (see
    /// [`Agent::spawn_wrapped`]).
    pub fn start_agent_wrapped(
        &mut self,
        wrapper: impl IntoIterator<Item = impl Into<OsString>>,
        extra_args: impl IntoIterator<Item = impl Into<OsString>>,
    ) -> Result<&mut Agent> {
        let opts = AgentOptions {
            config: Some(self.config_path.clone()),
            cgroup: self.cgroup.path().to_path_buf(),
            bpffs: self.bpffs.path().to_path_buf(),
            state_dir: self.dir.path().join("state"),
            watch_interval_ms: Some(WATCH_INTERVAL_MS),
            log_file: self.dir.path().join("agent.log"),
        };
        let fingerprint = fingerprint_of(&fs::read_to_string(&self.config_path)?)?;
        let agent = self
            .agent
            .insert(Agent::spawn_wrapped(opts, wrapper, extra_args)?);
        agent.wait_ready(READY_TIMEOUT)?;
        agent.wait_fingerprint(&fingerprint, APPLY_TIMEOUT)?;
        Ok(agent)
    }

    /// The agent. Panics if [`TestBed::start_agent`] was not called.
    pub fn agent(&mut self) -> &mut Agent {
        self.agent.as_mut().expect("agent not started")
    }

    /// Stops the agent (if running) and runs `cleanup` now rather than at drop.
    pub fn drop_agent(&mut self) {
        self.agent = None;
    }

    /// The test's cgroup, where clients run.
    pub fn cgroup(&self) -> &Cgroup2 {
        &self.cgroup
    }

    /// The test's pin directory.
    pub fn bpffs(&self) -> &Bpffs {
        &self.bpffs
    }

    /// The test's temp dir (config file, agent log, state dir, marker files).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The config file the agent watches.
    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    /// Replaces the config file atomically (write beside it, then rename), so the agent's
    /// watcher never reads a half-written file and rejects it for the wrong reason.
    pub fn write_config(&self, yaml: &str) -> Result<()> {
        let tmp = self.config_path.with_extension("yaml.tmp");
        fs::write(&tmp, yaml).with_context(|| format!("writing {}", tmp.display()))?;
        fs::rename(&tmp, &self.config_path).context("replacing the config file")
    }

    /// Writes `yaml` and waits until the agent reports it applied; returns that status.
    pub fn apply_config(&mut self, yaml: &str) -> Result<Value> {
        let fingerprint = fingerprint_of(yaml)?;
        self.write_config(yaml)?;
        self.agent().wait_fingerprint(&fingerprint, APPLY_TIMEOUT)
    }
}
