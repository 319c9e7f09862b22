//! The demo's callers: the bpf-tests harness's stock python3 client (plain `socket` calls,
//! as any unmodified app makes them), started inside the demo cgroup.
//!
//! Its report (one JSON document, at exit) can be larger than a pipe holds, so a thread
//! drains stdout while the demo keeps refreshing its table.

use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Output;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use sockmesh_bpf_tests::{ClientReport, ConnectClient};

use crate::cgroup::ChildCgroup;
use crate::interrupt;

/// Per-socket-operation timeout of the clients: a connect the kernel refuses fails at once;
/// this only bounds a backend that accepts and never answers.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Connect count of a client that runs until told to stop (its time limit still holds).
const UNBOUNDED_COUNT: usize = 1_000_000;

pub struct Caller {
    pub service: String,
    pub vip: SocketAddr,
    pid: i32,
    waiter: Option<JoinHandle<std::io::Result<Output>>>,
    report: Option<Result<ClientReport>>,
}

impl Caller {
    /// `count` connects to `vip`, one every `interval`, for at most `limit`.
    pub fn start(
        cgroup: &ChildCgroup,
        service: &str,
        vip: SocketAddr,
        count: usize,
        interval: Duration,
        limit: Duration,
    ) -> Result<Self> {
        let client = ConnectClient::new(vip, count)
            .interval(interval)
            .timeout(CONNECT_TIMEOUT)
            .max_time(limit);
        Self::spawn(cgroup, service, vip, &client)
    }

    /// Connects to `vip`, one every `interval`, until `until_file` exists (checked before
    /// each connect) or `limit` has passed: for a scene of a length decided as it plays.
    pub fn start_until(
        cgroup: &ChildCgroup,
        service: &str,
        vip: SocketAddr,
        interval: Duration,
        limit: Duration,
        until_file: &Path,
    ) -> Result<Self> {
        let client = ConnectClient::new(vip, UNBOUNDED_COUNT)
            .interval(interval)
            .timeout(CONNECT_TIMEOUT)
            .max_time(limit)
            .until_file(until_file);
        Self::spawn(cgroup, service, vip, &client)
    }

    fn spawn(
        cgroup: &ChildCgroup,
        service: &str,
        vip: SocketAddr,
        client: &ConnectClient,
    ) -> Result<Self> {
        let mut cmd = client.command(None, None);
        cgroup.spawn_into(&mut cmd)?;
        // A process group of its own: `python3` may be a wrapper (pyenv shims are a bash
        // script) whose real interpreter holds the stdout pipe, so stopping means the group.
        cmd.process_group(0);
        let child = cmd.spawn().context("start the python3 client")?;
        let pid = i32::try_from(child.id())?;
        let waiter = std::thread::spawn(move || child.wait_with_output());
        Ok(Self {
            service: service.to_string(),
            vip,
            pid,
            waiter: Some(waiter),
            report: None,
        })
    }

    /// Whether the client has exited; its report is collected then.
    pub fn poll_done(&mut self) -> bool {
        if self.waiter.as_ref().is_some_and(|w| w.is_finished()) {
            let waiter = self.waiter.take().expect("checked above");
            self.report = Some(collect(waiter));
        }
        self.waiter.is_none()
    }

    /// Stops a client still running at the demo's deadline and collects what it reported.
    pub fn stop(&mut self) {
        if let Some(waiter) = self.waiter.take() {
            if !waiter.is_finished() {
                // SAFETY: kill(2) on the process group our child leads; the waiter thread
                // has not returned, so it has (all but certainly) not reaped the child yet
                // and the id is still ours.
                unsafe { libc::kill(-self.pid, libc::SIGKILL) };
            }
            self.report = Some(collect(waiter));
        }
    }

    /// Waits up to `grace` for a client told to stop (its until-file exists) to exit on its
    /// own, so its report is complete; stops it after that.
    pub fn finish(&mut self, grace: Duration) -> Result<()> {
        let deadline = Instant::now() + grace;
        while !self.poll_done() && Instant::now() < deadline {
            interrupt::sleep(Duration::from_millis(20))?;
        }
        self.stop();
        Ok(())
    }

    pub fn report(&self) -> Option<&Result<ClientReport>> {
        self.report.as_ref()
    }
}

impl Drop for Caller {
    fn drop(&mut self) {
        self.stop();
    }
}

fn collect(waiter: JoinHandle<std::io::Result<Output>>) -> Result<ClientReport> {
    let out = waiter
        .join()
        .map_err(|_| anyhow::anyhow!("client waiter panicked"))??;
    if !out.status.success() {
        anyhow::bail!(
            "python3 client exited with {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    serde_json::from_slice(&out.stdout).context("python3 client report")
}
