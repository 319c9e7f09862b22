//! The stock HTTP load generators the L7 section runs, one process per measurement, at a
//! fixed concurrency and for a fixed time: wrk for HTTP/1.1 and h2load (nghttp2) for HTTP/2
//! over cleartext with prior knowledge (h2c). Both keep their connections alive for the whole
//! run, so what is measured is requests, not connects.

use std::io::Read;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use super::parse::{self, ClientRun};
use crate::cgroup::ChildCgroup;
use crate::{command, interrupt};

/// wrk's threads and connections: 16 requests in flight, 8 per thread.
pub const WRK_THREADS: u32 = 2;
pub const WRK_CONNECTIONS: u32 = 16;
/// h2load's connections and streams per connection: 64 requests in flight on 4 connections.
pub const H2_CONNECTIONS: u32 = 4;
pub const H2_STREAMS: u32 = 16;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    Http1 = 0,
    H2c = 1,
}

impl Protocol {
    pub const ALL: [Protocol; 2] = [Protocol::Http1, Protocol::H2c];

    pub fn label(self) -> &'static str {
        match self {
            Protocol::Http1 => "HTTP/1.1",
            Protocol::H2c => "HTTP/2",
        }
    }

    /// The client and its load, as the table's header names them.
    pub fn client(self) -> String {
        match self {
            Protocol::Http1 => format!("wrk -t {WRK_THREADS} -c {WRK_CONNECTIONS}"),
            Protocol::H2c => format!("h2load -c {H2_CONNECTIONS} -m {H2_STREAMS} (h2c)"),
        }
    }
}

/// Runs the client for `protocol` against `http://<target>/` for `secs` seconds, inside
/// `cgroup` when given (so its connects go through the programs attached there). `dir`
/// holds h2load's per-request log while it is read.
pub fn run(
    protocol: Protocol,
    target: SocketAddr,
    secs: u64,
    cgroup: Option<&ChildCgroup>,
    dir: &Path,
) -> Result<ClientRun> {
    if !target.ip().is_loopback() {
        bail!("the L7 bench only targets 127.0.0.0/8, not {target}");
    }
    let url = format!("http://{target}/");
    let log = dir.join("h2load-requests.log");
    let mut cmd = match protocol {
        Protocol::Http1 => {
            let mut cmd = Command::new("wrk");
            cmd.args(["-t", &WRK_THREADS.to_string()])
                .args(["-c", &WRK_CONNECTIONS.to_string()])
                .args(["-d", &format!("{secs}s"), "--timeout", "2s", "--latency"])
                .arg(&url);
            cmd
        }
        Protocol::H2c => {
            // No --warm-up-time: then every request the client made is in its counts, as
            // with wrk, and a proxy's CPU time over the run divides by all of them.
            let mut cmd = Command::new("h2load");
            cmd.args(["-t", "1", "-c", &H2_CONNECTIONS.to_string()])
                .args(["-m", &H2_STREAMS.to_string(), "-D", &format!("{secs}s")])
                .arg(format!("--log-file={}", log.display()))
                .arg(&url);
            cmd
        }
    };
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(cgroup) = cgroup {
        cgroup.spawn_into(&mut cmd)?;
    }
    let shown = command::describe(&cmd);
    let out = wait_bounded(&mut cmd, Duration::from_secs(secs + 10))
        .with_context(|| format!("`{shown}`"))?;
    match protocol {
        Protocol::Http1 => parse::wrk(&out),
        Protocol::H2c => {
            let mut run = parse::h2load(&out)?;
            let text =
                std::fs::read_to_string(&log).with_context(|| format!("read {}", log.display()))?;
            (run.p50_us, run.p99_us) = parse::percentiles_us(&text)?;
            let _ = std::fs::remove_file(&log);
            Ok(run)
        }
    }
    .with_context(|| format!("`{shown}`"))
}

/// Spawns `cmd`, kills it (by its pid, which is ours) if it outlives `bound` or the user
/// interrupts, and returns its stdout; stderr joins an error.
fn wait_bounded(cmd: &mut Command, bound: Duration) -> Result<String> {
    let mut child = cmd
        .spawn()
        .context("start (cargo xtask setup installs it)")?;
    let deadline = Instant::now() + bound;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if Instant::now() > deadline || interrupt::check().is_err() {
            let _ = child.kill();
            let _ = child.wait();
            interrupt::check()?;
            bail!("did not finish within {bound:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    // Both tools print a few KiB at most, well within a pipe's buffer, so reading after the
    // exit cannot have blocked them.
    let (mut out, mut err) = (String::new(), String::new());
    if let Some(mut stdout) = child.stdout.take() {
        stdout.read_to_string(&mut out)?;
    }
    if let Some(mut stderr) = child.stderr.take() {
        stderr.read_to_string(&mut err)?;
    }
    if !status.success() {
        bail!("failed ({status}): {}{}", err.trim(), out.trim());
    }
    if !err.trim().is_empty() {
        // wrk prints "unable to connect" on stdout but other complaints on stderr.
        out.push('\n');
        out.push_str(&err);
    }
    Ok(out)
}
