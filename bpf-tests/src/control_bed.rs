//! One control-plane test's world: its cgroup, pin directory and temp dir, a
//! `sockmesh-control` serving the temp dir's `mesh.yaml` on a fixed 127.0.0.1 port, and an
//! agent attached to the cgroup that follows it (`--control`). Dropping it stops the agent
//! (and runs `cleanup`), then the control plane, then removes the pins, the cgroup and the
//! temp dir, in that order.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use serde_json::Value;
use tempfile::TempDir;

use crate::agent::{Agent, AgentOptions};
use crate::bpffs::Bpffs;
use crate::cgroup::Cgroup2;
use crate::control_server::{control_bin, ControlServer};
use crate::mesh_yaml::fingerprint_of;
use crate::{agent_bin, require_root, resource_name, sweep_stale};

/// How long the agent may take to load, attach and apply its first config.
pub const CONTROL_READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a control-plane edit may take to reach the agent's kernel tables: the control
/// plane polls its file every 50 ms here, the agent's long-poll answers at once.
pub const CONTROL_APPLY_TIMEOUT: Duration = Duration::from_secs(10);
/// The agent's name at the control plane in these tests.
pub const NODE_NAME: &str = "bpf-tests-node";

/// See the module docs.
#[derive(Debug)]
pub struct ControlBed {
    // Field order is drop order: the agent detaches before the control plane goes (its
    // last requests fail harmlessly), and both before the pins, the cgroup and the dir.
    agent: Option<Agent>,
    control: ControlServer,
    bpffs: Bpffs,
    cgroup: Cgroup2,
    dir: TempDir,
}

impl ControlBed {
    /// Creates the test's cgroup, pin directory name and temp dir, writes `yaml` as the
    /// control plane's config and starts the control plane on `127.0.0.1:<port>`. The agent
    /// is not started yet ([`ControlBed::start_agent`]).
    ///
    /// # Panics
    /// Without root, `SOCKMESH_AGENT_BIN` or `SOCKMESH_CONTROL_BIN`: the test cannot run.
    pub fn new(name: &str, port: u16, yaml: &str) -> Result<Self> {
        Self::new_with(name, port, yaml, true)
    }

    /// [`ControlBed::new`] with the control plane's API in plain http
    /// (`--insecure-plaintext`), for tests that write raw HTTP to it.
    pub fn new_plaintext(name: &str, port: u16, yaml: &str) -> Result<Self> {
        Self::new_with(name, port, yaml, false)
    }

    fn new_with(name: &str, port: u16, yaml: &str, tls: bool) -> Result<Self> {
        require_root();
        agent_bin();
        control_bin();
        sweep_stale();
        let dir = tempfile::Builder::new()
            .prefix(&format!("{}-", resource_name(name)))
            .tempdir()
            .context("creating the test's temp dir")?;
        std::fs::write(dir.path().join("mesh.yaml"), yaml)?;
        let control = match tls {
            true => ControlServer::spawn(dir.path(), port)?,
            false => ControlServer::spawn_plaintext(dir.path(), port)?,
        };
        Ok(ControlBed {
            agent: None,
            control,
            bpffs: Bpffs::new(name)?,
            cgroup: Cgroup2::create(name)?,
            dir,
        })
    }

    /// The agent's command line for this bed (`--control` with the token and node name).
    pub fn agent_options(&self) -> AgentOptions {
        AgentOptions {
            config: None,
            cgroup: self.cgroup.path().to_path_buf(),
            bpffs: self.bpffs.path().to_path_buf(),
            state_dir: self.dir.path().join("agent-state"),
            watch_interval_ms: None,
            log_file: self.dir.path().join("agent.log"),
        }
    }

    fn follow_args(&self, token_file: &Path) -> Vec<OsString> {
        let mut args: Vec<OsString> = vec![
            "--control".into(),
            self.control.url().into(),
            "--control-token-file".into(),
            token_file.into(),
            "--node-name".into(),
            NODE_NAME.into(),
        ];
        args.extend(self.control.trust_args());
        args
    }

    /// Starts the agent following the control plane; waits until it is ready and runs
    /// `expect_fingerprint` (the control plane's head when `None`).
    pub fn start_agent(&mut self, expect_fingerprint: Option<&str>) -> Result<&mut Agent> {
        let fingerprint = match expect_fingerprint {
            Some(f) => f.to_owned(),
            None => self.head_fingerprint()?,
        };
        let args = self.follow_args(&self.control.token_path());
        let agent = self
            .agent
            .insert(Agent::spawn_with(self.agent_options(), args)?);
        agent.wait_ready(CONTROL_READY_TIMEOUT)?;
        agent.wait_fingerprint(&fingerprint, CONTROL_APPLY_TIMEOUT)?;
        Ok(agent)
    }

    /// An agent of this bed's cgroup and pins presenting `token_file` instead of the right
    /// token; not waited for (it is expected never to become ready).
    pub fn spawn_agent_with_token(&mut self, token_file: &Path) -> Result<&mut Agent> {
        let args = self.follow_args(token_file);
        Ok(self
            .agent
            .insert(Agent::spawn_with(self.agent_options(), args)?))
    }

    pub fn agent(&mut self) -> &mut Agent {
        self.agent.as_mut().expect("agent not started")
    }

    /// Stops the agent and runs `cleanup` (detaching everything) now.
    pub fn drop_agent(&mut self) {
        self.agent = None;
    }

    pub fn control(&mut self) -> &mut ControlServer {
        &mut self.control
    }

    pub fn cgroup(&self) -> &Cgroup2 {
        &self.cgroup
    }

    pub fn bpffs(&self) -> &Bpffs {
        &self.bpffs
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The agent's persisted snapshot.
    pub fn last_applied(&self) -> PathBuf {
        self.dir
            .path()
            .join("agent-state")
            .join("last-applied.yaml")
    }

    /// The fingerprint of the version the control plane serves.
    pub fn head_fingerprint(&self) -> Result<String> {
        let status = self.control.status()?;
        status["fingerprint"]
            .as_str()
            .map(str::to_owned)
            .with_context(|| format!("control status without a fingerprint: {status:#}"))
    }

    /// Writes `yaml` to the control plane's file and waits until the control plane serves
    /// it and the agent runs it; returns the new version and the agent's status.
    pub fn apply(&mut self, yaml: &str) -> Result<(u64, Value)> {
        let fingerprint = fingerprint_of(yaml)?;
        self.control.write_config(yaml)?;
        let status = self.control.wait_status(
            &format!("to serve {fingerprint}"),
            CONTROL_APPLY_TIMEOUT,
            |s| s["fingerprint"] == fingerprint.as_str(),
        )?;
        let version = status["version"].as_u64().context("control version")?;
        let agent_status = self
            .agent()
            .wait_fingerprint(&fingerprint, CONTROL_APPLY_TIMEOUT)?;
        Ok((version, agent_status))
    }
}
