//! The testbed's `sockmesh-control`: the Kubernetes source against the fake API server,
//! serving agents on the fabric (`198.18.0.100:9476`, bearer token) and the harness on a
//! unix socket, as the Deployment runs it (`--source kubernetes`).

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::Value;

use super::net::CONTROL_IP;
use crate::admin::http_get;
use crate::control_server::{control_bin, CONTROL_TOKEN};
use crate::netns::Netns;

/// The control API port on the fabric (the Deployment's).
pub const CONTROL_PORT: u16 = 9476;
const UP_TIMEOUT: Duration = Duration::from_secs(30);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
const LOG_TAIL_LINES: usize = 60;

/// See the module docs.
#[derive(Debug)]
pub struct ClusterControl {
    dir: PathBuf,
    netns: PathBuf,
    kubeconfig: PathBuf,
    child: Option<Child>,
    starts: u32,
}

impl ClusterControl {
    /// Writes the token file and starts the control plane inside `fabric`.
    pub fn spawn(dir: &Path, fabric: &Netns, kubeconfig: &Path) -> Result<Self> {
        fs::write(dir.join("control-token"), format!("{CONTROL_TOKEN}\n"))?;
        let mut control = ClusterControl {
            dir: dir.to_owned(),
            netns: fabric.path(),
            kubeconfig: kubeconfig.to_owned(),
            child: None,
            starts: 0,
        };
        control.start()?;
        Ok(control)
    }

    /// Starts the process (again, after [`ClusterControl::stop`]) and waits until it
    /// answers on its unix socket.
    pub fn start(&mut self) -> Result<()> {
        if self.child.is_some() {
            bail!("the control plane is already running");
        }
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())?;
        self.starts += 1;
        writeln!(log, "===== bpf-tests: control start #{} =====", self.starts)?;
        let _ = fs::remove_file(self.socket());
        let mut cmd = Command::new(control_bin());
        cmd.args(["--source", "kubernetes", "--kube-debounce-ms", "50"])
            .arg("--listen")
            .arg(format!("{CONTROL_IP}:{CONTROL_PORT}"))
            .arg("--listen-unix")
            .arg(self.socket())
            .arg("--token-file")
            .arg(self.token_path())
            .arg("--metrics-addr")
            .arg("127.0.0.1:0")
            .arg("--state-dir")
            .arg(self.dir.join("control-state"))
            .env("KUBECONFIG", &self.kubeconfig)
            .env("NO_COLOR", "1")
            .env_remove("SOCKMESH_CONTROL_CONFIG")
            .env_remove("SOCKMESH_CONTROL_SOURCE")
            .env_remove("SOCKMESH_CONTROL_TOKEN")
            .env_remove("KUBERNETES_SERVICE_HOST")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        crate::netns::enter_path(&self.netns, &mut cmd)?;
        self.child = Some(cmd.spawn().context("spawning sockmesh-control")?);
        let deadline = Instant::now() + UP_TIMEOUT;
        let mut last = String::new();
        while Instant::now() < deadline {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                self.child = None;
                bail!("sockmesh-control exited with {status}\n{}", self.log_tail());
            }
            match self.status() {
                Ok(_) => return Ok(()),
                Err(e) => last = format!("{e:#}"),
            }
            thread::sleep(Duration::from_millis(50));
        }
        bail!(
            "sockmesh-control not serving after {UP_TIMEOUT:?} ({last})\n{}",
            self.log_tail()
        )
    }

    /// SIGKILL and reap: the control plane gone at once, as when its node dies.
    pub fn kill(&mut self) -> Result<()> {
        let mut child = self
            .child
            .take()
            .context("the control plane is not running")?;
        child.kill()?;
        child.wait()?;
        Ok(())
    }

    /// `http://198.18.0.100:9476`, for the agents' `--control`.
    pub fn url(&self) -> String {
        format!("http://{CONTROL_IP}:{CONTROL_PORT}")
    }

    pub fn token_path(&self) -> PathBuf {
        self.dir.join("control-token")
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.join("control.sock")
    }

    fn log_path(&self) -> PathBuf {
        self.dir.join("control.log")
    }

    /// `GET path` on the unix socket, expecting 200 and JSON.
    pub fn get_json(&self, path: &str) -> Result<Value> {
        let r = http_get(&self.socket(), path, REQUEST_TIMEOUT)?;
        if r.status != 200 {
            bail!("GET {path} answered {}: {}", r.status, r.body);
        }
        serde_json::from_str(&r.body).with_context(|| format!("{path} is not JSON: {}", r.body))
    }

    pub fn status(&self) -> Result<Value> {
        self.get_json("/v1/status")
    }

    /// The head version's snapshot (`version`, `fingerprint`, `config`).
    pub fn snapshot(&self) -> Result<Value> {
        self.get_json("/v1/snapshot")
    }

    /// Polls the head snapshot until `pred` holds on it; returns it.
    pub fn wait_snapshot(
        &self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> Result<Value> {
        let deadline = Instant::now() + timeout;
        let mut last = Value::Null;
        while Instant::now() < deadline {
            if let Ok(s) = self.snapshot() {
                if pred(&s) {
                    return Ok(s);
                }
                last = s;
            }
            thread::sleep(Duration::from_millis(25));
        }
        bail!(
            "timed out after {timeout:?} waiting for the control plane to serve {what}; last \
             snapshot {last:#}\n{}",
            self.log_tail()
        )
    }

    pub fn log(&self) -> String {
        fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    pub fn log_tail(&self) -> String {
        let log = self.log();
        let lines: Vec<&str> = log.lines().collect();
        format!(
            "----- control log tail ({}) -----\n{}\n-----",
            self.log_path().display(),
            lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n")
        )
    }
}

impl Drop for ClusterControl {
    fn drop(&mut self) {
        if thread::panicking() {
            eprintln!("{}", self.log_tail());
        }
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
