//! One `sockmesh-agent` process under test: spawn, readiness, admin API, SIGTERM, restart,
//! and on drop a stop plus `cleanup`, so no test leaves programs attached.
//!
//! The process contract is docs/agent-interface.md.

use std::ffi::OsString;
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::Value;

use crate::admin::{http_get, http_get_tcp, HttpResponse};
use crate::agent_bin;

/// How long one admin API request may take before the agent counts as hung.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(5);
/// How long SIGTERM may take before the harness escalates to SIGKILL.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// Lines of agent log printed when a test fails.
const LOG_TAIL_LINES: usize = 80;
/// The metrics endpoint unless a test passes its own `--metrics-addr`: a port the kernel
/// picks (reported in `/status`), since the agent's default port is one per machine and
/// concurrent runs would fight over it.
const METRICS_ADDR: &str = "127.0.0.1:0";

/// The agent's command line, one field per run flag.
#[derive(Debug, Clone)]
pub struct AgentOptions {
    /// `--config`; `None` runs the embedded default config.
    pub config: Option<PathBuf>,
    /// `--cgroup`: always a child cgroup in tests.
    pub cgroup: PathBuf,
    /// `--bpffs`: the test's own pin directory.
    pub bpffs: PathBuf,
    /// `--state-dir`; the admin socket is `<state_dir>/admin.sock`.
    pub state_dir: PathBuf,
    /// `--watch-interval-ms`, when not the agent's default.
    pub watch_interval_ms: Option<u64>,
    /// Where the agent's stdout and stderr go (appended across restarts).
    pub log_file: PathBuf,
}

impl AgentOptions {
    /// The admin socket path the harness passes as `--admin-socket`.
    pub fn admin_socket(&self) -> PathBuf {
        self.state_dir.join("admin.sock")
    }
}

/// Where a testbed node's agent runs (crate::cluster): its own network namespace, and a
/// mount namespace where the node's cgroup subtree is bind-mounted over the cgroup2 mount,
/// so the agent sees the node's cgroups as a DaemonSet pod sees its host's (`--cgroup
/// /sys/fs/cgroup`, pod cgroups `kubepods.slice/...` relative to it).
#[derive(Debug, Clone)]
pub struct NodeSandbox {
    /// The node's network namespace handle (`/run/netns/<name>`).
    pub netns: PathBuf,
    /// The node's cgroup root on the host (`<cgroup2>/sockmesh-test-<pid>-<bed>/<node>`).
    pub cgroup_root: PathBuf,
    /// The host's cgroup2 mount point, which the node's root is mounted over.
    pub cgroup2_mount: PathBuf,
}

impl NodeSandbox {
    /// Makes `cmd`'s child enter the sandbox between fork and exec: a private mount
    /// namespace, the node's cgroup root bind-mounted over the cgroup2 mount point, then the
    /// node's network namespace. Any step failing fails the spawn, so an agent can never
    /// start with the host's cgroup root as its own.
    fn enter(&self, cmd: &mut Command) -> Result<()> {
        use std::ffi::CString;
        use std::os::fd::AsRawFd;
        use std::os::unix::ffi::OsStrExt;
        use std::os::unix::process::CommandExt;
        let netns = fs::File::open(&self.netns)
            .with_context(|| format!("opening {}", self.netns.display()))?;
        let src = CString::new(self.cgroup_root.as_os_str().as_bytes())?;
        let target = CString::new(self.cgroup2_mount.as_os_str().as_bytes())?;
        // SAFETY: runs in the forked child before exec; only system calls on memory and an fd
        // prepared before fork.
        unsafe {
            cmd.pre_exec(move || {
                let fail = || Err(std::io::Error::last_os_error());
                if libc::unshare(libc::CLONE_NEWNS) != 0 {
                    return fail();
                }
                // Private: the bind mount below must not propagate back to the host.
                if libc::mount(
                    std::ptr::null(),
                    c"/".as_ptr(),
                    std::ptr::null(),
                    libc::MS_REC | libc::MS_PRIVATE,
                    std::ptr::null(),
                ) != 0
                {
                    return fail();
                }
                if libc::mount(
                    src.as_ptr(),
                    target.as_ptr(),
                    std::ptr::null(),
                    libc::MS_BIND,
                    std::ptr::null(),
                ) != 0
                {
                    return fail();
                }
                if libc::setns(netns.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                    return fail();
                }
                Ok(())
            })
        };
        Ok(())
    }
}

/// A running (or stopped, between [`Agent::sigterm`] and [`Agent::restart`]) agent.
#[derive(Debug)]
pub struct Agent {
    bin: PathBuf,
    opts: AgentOptions,
    extra_args: Vec<OsString>,
    sandbox: Option<NodeSandbox>,
    /// A program (and its arguments) the agent runs under, e.g. `setpriv` cutting its
    /// capabilities; it must exec the agent, so the pid stays the agent's.
    wrapper: Vec<OsString>,
    child: Option<Child>,
    starts: u32,
}

impl Agent {
    /// Starts the agent binary from [`agent_bin`] with `opts`.
    pub fn spawn(opts: AgentOptions) -> Result<Self> {
        Self::spawn_with(opts, Vec::<OsString>::new())
    }

    /// [`Agent::spawn`] with run flags `AgentOptions` has no field for (`--max-callers 4`),
    /// appended after the harness's own; they are kept across restarts. Without a
    /// `--metrics-addr` among them the agent gets `--metrics-addr 127.0.0.1:0`.
    pub fn spawn_with(
        opts: AgentOptions,
        extra_args: impl IntoIterator<Item = impl Into<OsString>>,
    ) -> Result<Self> {
        Self::spawn_wrapped(opts, Vec::<OsString>::new(), extra_args)
    }

    /// [`Agent::spawn_with`] inside a testbed node's namespaces (see [`NodeSandbox`]); kept
    /// across restarts. `opts.cgroup` is then a path as the agent sees it.
    pub fn spawn_sandboxed(
        opts: AgentOptions,
        extra_args: impl IntoIterator<Item = impl Into<OsString>>,
        sandbox: NodeSandbox,
    ) -> Result<Self> {
        Self::spawn_all(opts, Vec::<OsString>::new(), extra_args, Some(sandbox))
    }

    /// [`Agent::spawn_with`], run as `<wrapper...> sockmesh-agent <args>` (kept across
    /// restarts). The wrapper must exec the agent (as `setpriv` does), so stopping the
    /// process stops the agent.
    pub fn spawn_wrapped(
        opts: AgentOptions,
        wrapper: impl IntoIterator<Item = impl Into<OsString>>,
        extra_args: impl IntoIterator<Item = impl Into<OsString>>,
    ) -> Result<Self> {
        Self::spawn_all(opts, wrapper, extra_args, None)
    }

    fn spawn_all(
        opts: AgentOptions,
        wrapper: impl IntoIterator<Item = impl Into<OsString>>,
        extra_args: impl IntoIterator<Item = impl Into<OsString>>,
        sandbox: Option<NodeSandbox>,
    ) -> Result<Self> {
        let mut agent = Agent {
            bin: agent_bin(),
            opts,
            extra_args: extra_args.into_iter().map(Into::into).collect(),
            sandbox,
            wrapper: wrapper.into_iter().map(Into::into).collect(),
            child: None,
            starts: 0,
        };
        agent.start()?;
        Ok(agent)
    }

    fn start(&mut self) -> Result<()> {
        fs::create_dir_all(&self.opts.state_dir)?;
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.opts.log_file)
            .with_context(|| format!("opening {}", self.opts.log_file.display()))?;
        self.starts += 1;
        writeln!(log, "===== bpf-tests: agent start #{} =====", self.starts)?;
        let mut cmd = match self.wrapper.split_first() {
            Some((program, args)) => {
                let mut cmd = Command::new(program);
                cmd.args(args).arg(&self.bin);
                cmd
            }
            None => Command::new(&self.bin),
        };
        if let Some(config) = &self.opts.config {
            cmd.arg("--config").arg(config);
        }
        cmd.arg("--cgroup").arg(&self.opts.cgroup);
        cmd.arg("--bpffs").arg(&self.opts.bpffs);
        cmd.arg("--state-dir").arg(&self.opts.state_dir);
        cmd.arg("--admin-socket").arg(self.opts.admin_socket());
        if let Some(ms) = self.opts.watch_interval_ms {
            cmd.arg("--watch-interval-ms").arg(ms.to_string());
        }
        if !self.extra_args.iter().any(|a| a == "--metrics-addr") {
            cmd.arg("--metrics-addr").arg(METRICS_ADDR);
        }
        cmd.args(&self.extra_args);
        // Plain text logs: tests grep them, and humans read them in a failure's output.
        cmd.env("NO_COLOR", "1");
        if let Some(sandbox) = &self.sandbox {
            sandbox.enter(&mut cmd)?;
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("spawning {}", self.bin.display()))?;
        self.child = Some(child);
        Ok(())
    }

    /// The options the agent was started with.
    pub fn options(&self) -> &AgentOptions {
        &self.opts
    }

    /// The running agent's pid, `None` while it is stopped.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Polls `GET /ready` until it answers 200. Fails early, with the log tail, when the
    /// agent exits instead.
    pub fn wait_ready(&mut self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        let mut last = String::from("no answer yet");
        while Instant::now() < deadline {
            self.ensure_running()?;
            match self.get("/ready") {
                Ok(r) if r.status == 200 => return Ok(()),
                Ok(r) => last = format!("{} {}", r.status, r.body.trim()),
                Err(e) => last = format!("{e:#}"),
            }
            thread::sleep(Duration::from_millis(50));
        }
        bail!(
            "agent not ready after {timeout:?} (last: {last})\n{}",
            self.log_tail(LOG_TAIL_LINES)
        )
    }

    fn ensure_running(&mut self) -> Result<()> {
        let child = self.child.as_mut().context("agent is not running")?;
        if let Some(status) = child.try_wait()? {
            self.child = None;
            bail!(
                "agent exited with {status}\n{}",
                self.log_tail(LOG_TAIL_LINES)
            );
        }
        Ok(())
    }

    /// `GET path` on the admin socket.
    pub fn get(&self, path: &str) -> Result<HttpResponse> {
        http_get(&self.opts.admin_socket(), path, ADMIN_TIMEOUT)
    }

    /// `GET /status`, parsed.
    pub fn status(&self) -> Result<Value> {
        let r = self.get("/status")?;
        if r.status != 200 {
            bail!("GET /status answered {}: {}", r.status, r.body);
        }
        serde_json::from_str(&r.body).with_context(|| format!("/status is not JSON: {}", r.body))
    }

    /// The address the metrics endpoint is bound to, from `/status` (`metrics_addr`).
    pub fn metrics_addr(&self) -> Result<SocketAddr> {
        let status = self.status()?;
        let addr = status["metrics_addr"]
            .as_str()
            .with_context(|| format!("/status has no metrics_addr: {status:#}"))?;
        addr.parse()
            .with_context(|| format!("/status metrics_addr {addr:?} is not an address"))
    }

    /// `GET /metrics`: the Prometheus text exposition, as a scraper would read it (from
    /// inside the agent's network namespace when it runs in a [`NodeSandbox`]).
    pub fn metrics_text(&self) -> Result<String> {
        let addr = self.metrics_addr()?;
        let r = match &self.sandbox {
            Some(sb) => crate::netns::run_in(&sb.netns, move || {
                http_get_tcp(addr, "/metrics", ADMIN_TIMEOUT)
            })?,
            None => http_get_tcp(addr, "/metrics", ADMIN_TIMEOUT)?,
        };
        if r.status != 200 {
            bail!(
                "GET http://{addr}/metrics answered {}: {}",
                r.status,
                r.body
            );
        }
        Ok(r.body)
    }

    /// Scrapes `/metrics` until `pred` holds on the text (kernel events reach the metrics
    /// only after the agent's next ring drain, per-CPU maps after its next 1 s refresh);
    /// returns that text. The error carries the last scrape and the log tail.
    pub fn wait_metrics(
        &mut self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&str) -> bool,
    ) -> Result<String> {
        let deadline = Instant::now() + timeout;
        let mut last = String::new();
        while Instant::now() < deadline {
            self.ensure_running()?;
            if let Ok(text) = self.metrics_text() {
                if pred(&text) {
                    return Ok(text);
                }
                last = text;
            }
            thread::sleep(Duration::from_millis(50));
        }
        bail!(
            "timed out after {timeout:?} waiting for metrics: {what}; last scrape:\n{last}\n{}",
            self.log_tail(LOG_TAIL_LINES)
        )
    }

    /// `GET path` on the admin socket, expecting 200 and JSON (`/v1/workloads`, ...).
    pub fn get_json(&self, path: &str) -> Result<Value> {
        let r = self.get(path)?;
        if r.status != 200 {
            bail!("GET {path} answered {}: {}", r.status, r.body);
        }
        serde_json::from_str(&r.body).with_context(|| format!("{path} is not JSON: {}", r.body))
    }

    /// Polls `/status` until `pred` holds; returns that status. `what` names the wait in
    /// the error, which also carries the last status seen and the log tail.
    pub fn wait_status(
        &mut self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> Result<Value> {
        let deadline = Instant::now() + timeout;
        let mut last = Value::Null;
        while Instant::now() < deadline {
            self.ensure_running()?;
            if let Ok(status) = self.status() {
                if pred(&status) {
                    return Ok(status);
                }
                last = status;
            }
            thread::sleep(Duration::from_millis(50));
        }
        bail!(
            "timed out after {timeout:?} waiting for {what}; last status: {last:#}\n{}",
            self.log_tail(LOG_TAIL_LINES)
        )
    }

    /// Waits until the applied config's fingerprint is `fingerprint` (see
    /// [`crate::fingerprint_of`]): the config is then live in the kernel.
    pub fn wait_fingerprint(&mut self, fingerprint: &str, timeout: Duration) -> Result<Value> {
        self.wait_status(&format!("config fingerprint {fingerprint}"), timeout, |s| {
            s["config"]["fingerprint"].as_str() == Some(fingerprint)
        })
    }

    /// Waits until `config.rejected` reaches at least `count`.
    pub fn wait_rejected(&mut self, count: u64, timeout: Duration) -> Result<Value> {
        self.wait_status(&format!("config.rejected >= {count}"), timeout, |s| {
            s["config"]["rejected"].as_u64().is_some_and(|r| r >= count)
        })
    }

    /// Sends SIGTERM and waits for the agent to exit (SIGKILL after a bound, reported as an
    /// error). The pins stay: that is the agent's contract.
    pub fn sigterm(&mut self) -> Result<ExitStatus> {
        let mut child = self.child.take().context("agent is not running")?;
        let (status, clean) = stop(&mut child)?;
        if !clean {
            bail!("agent ignored SIGTERM for {STOP_TIMEOUT:?}; killed it ({status})");
        }
        Ok(status)
    }

    /// Starts the agent again with the same options (stopping it first if it runs). It
    /// should adopt the pins the previous process left.
    pub fn restart(&mut self) -> Result<()> {
        if self.child.is_some() {
            self.sigterm()?;
        }
        self.start()
    }

    /// Everything the agent has logged, across restarts.
    pub fn log(&self) -> String {
        fs::read_to_string(&self.opts.log_file).unwrap_or_default()
    }

    /// The last `lines` lines of the log, framed for printing.
    pub fn log_tail(&self, lines: usize) -> String {
        let log = self.log();
        let all: Vec<&str> = log.lines().collect();
        let tail = all[all.len().saturating_sub(lines)..].join("\n");
        format!(
            "----- agent log tail ({}) -----\n{tail}\n-----",
            self.opts.log_file.display()
        )
    }

    /// `sockmesh-agent check --config FILE`.
    pub fn run_check(config: &Path) -> Result<Output> {
        Command::new(agent_bin())
            .arg("check")
            .arg("--config")
            .arg(config)
            .output()
            .context("running sockmesh-agent check")
    }

    /// `sockmesh-agent cleanup --bpffs DIR`.
    pub fn run_cleanup(bpffs: &Path) -> Result<Output> {
        cleanup_with(&agent_bin(), bpffs)
    }
}

fn cleanup_with(bin: &Path, bpffs: &Path) -> Result<Output> {
    Command::new(bin)
        .arg("cleanup")
        .arg("--bpffs")
        .arg(bpffs)
        .output()
        .context("running sockmesh-agent cleanup")
}

/// SIGTERM, bounded wait, then SIGKILL. Returns the exit status and whether SIGTERM sufficed.
fn stop(child: &mut Child) -> Result<(ExitStatus, bool)> {
    // SAFETY: signalling our own child by pid; it has not been reaped, so the pid is ours.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let deadline = Instant::now() + STOP_TIMEOUT;
    while Instant::now() < deadline {
        if let Some(status) = child.try_wait()? {
            return Ok((status, true));
        }
        thread::sleep(Duration::from_millis(20));
    }
    child.kill()?;
    Ok((child.wait()?, false))
}

impl Drop for Agent {
    fn drop(&mut self) {
        if thread::panicking() {
            eprintln!("{}", self.log_tail(LOG_TAIL_LINES));
        }
        if let Some(mut child) = self.child.take() {
            if let Err(e) = stop(&mut child) {
                eprintln!("bpf-tests: stopping agent: {e:#}");
            }
        }
        match cleanup_with(&self.bin, &self.opts.bpffs) {
            Ok(out) if !out.status.success() => eprintln!(
                "bpf-tests: agent cleanup failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ),
            Err(e) => eprintln!("bpf-tests: {e:#}"),
            Ok(_) => {}
        }
    }
}
