//! Packet loss on demand: `sockmesh-agent netfault`, the agent binary's fault injector (this
//! kernel has no netem), attached to a test's own cgroup for the life of a guard.
//!
//! `drop_syn` drops that share of the SYNs the cgroup sends to the targets (connects time
//! out); `drop_data` drops that share of the segments the cgroup receives from them (real
//! losses: the cgroup's side retransmits). The attachment is not pinned, so it ends with the
//! process: SIGTERM on drop, and `--duration-secs` bounds it even if the test is killed.

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::agent_bin;
use crate::cgroup::Cgroup2;

/// How long attaching may take before the injector counts as broken.
const ACTIVE_TIMEOUT: Duration = Duration::from_secs(15);
/// The injector's own bound, in case a test dies without dropping the guard.
const MAX_DURATION_SECS: u64 = 300;

/// What to drop, in percent.
#[derive(Debug, Clone, Copy, Default)]
pub struct Faults {
    pub drop_syn: f64,
    pub drop_data: f64,
}

/// A running `sockmesh-agent netfault`; stopped (SIGTERM, then wait) on drop.
#[derive(Debug)]
pub struct Netfault {
    child: Option<Child>,
    /// Lines the injector printed after "netfault active", collected by a reader thread.
    rest: Option<mpsc::Receiver<String>>,
}

impl Netfault {
    /// Attaches to `cgroup` for `targets` and waits until the injector says it is active.
    pub fn start(cgroup: &Cgroup2, targets: &[SocketAddr], faults: Faults) -> Result<Self> {
        let mut cmd = Command::new(agent_bin());
        cmd.arg("netfault").arg("--cgroup").arg(cgroup.path());
        for t in targets {
            cmd.arg("--target").arg(t.to_string());
        }
        cmd.arg("--drop-syn").arg(faults.drop_syn.to_string());
        cmd.arg("--drop-data").arg(faults.drop_data.to_string());
        cmd.arg("--duration-secs")
            .arg(MAX_DURATION_SECS.to_string());
        let mut child = cmd
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("spawning sockmesh-agent netfault")?;
        let stdout = child.stdout.take().expect("stdout is piped");
        let mut guard = Netfault {
            child: Some(child),
            rest: None,
        };
        let (lines, rest) = read_lines(stdout);
        let deadline = Instant::now() + ACTIVE_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match lines.recv_timeout(left) {
                Ok(line) if line.starts_with("netfault active") => break,
                Ok(_) => continue,
                Err(_) => {
                    let stderr = guard.stop_and_stderr();
                    bail!("netfault did not become active within {ACTIVE_TIMEOUT:?}: {stderr}");
                }
            }
        }
        guard.rest = Some(rest);
        Ok(guard)
    }

    /// Stops the injector and returns what it printed at the end ("netfault done: dropped N
    /// SYNs, M segments from targets").
    pub fn stop(mut self) -> Result<String> {
        let child = self.child.as_mut().context("netfault already stopped")?;
        let status = terminate(child)?;
        self.child = None;
        let summary: Vec<String> = self
            .rest
            .take()
            .map(|r| r.iter().collect())
            .unwrap_or_default();
        if !status.success() {
            bail!("netfault exited with {status}: {}", summary.join("\n"));
        }
        Ok(summary.join("\n"))
    }

    fn stop_and_stderr(&mut self) -> String {
        let Some(mut child) = self.child.take() else {
            return String::new();
        };
        let _ = terminate(&mut child);
        let mut err = String::new();
        if let Some(mut stderr) = child.stderr.take() {
            let _ = stderr.read_to_string(&mut err);
        }
        err.trim().to_string()
    }
}

/// Forwards stdout lines: until "netfault active" to the first channel, after it to the
/// second (so the final summary is kept for [`Netfault::stop`]).
fn read_lines(stdout: ChildStdout) -> (mpsc::Receiver<String>, mpsc::Receiver<String>) {
    let (first_tx, first_rx) = mpsc::channel();
    let (rest_tx, rest_rx) = mpsc::channel();
    thread::spawn(move || {
        let mut active = false;
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let tx = if active { &rest_tx } else { &first_tx };
            active |= line.starts_with("netfault active");
            let _ = tx.send(line);
        }
    });
    (first_rx, rest_rx)
}

/// SIGTERM to our own child, bounded wait, then SIGKILL.
fn terminate(child: &mut Child) -> Result<std::process::ExitStatus> {
    // SAFETY: signalling our own unreaped child by pid.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Some(status) = child.try_wait()? {
            return Ok(status);
        }
        thread::sleep(Duration::from_millis(20));
    }
    child.kill()?;
    Ok(child.wait()?)
}

impl Drop for Netfault {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            if let Err(e) = terminate(&mut child) {
                eprintln!("bpf-tests: stopping netfault: {e:#}");
            }
        }
    }
}
