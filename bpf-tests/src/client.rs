//! The stock client: an unmodified python3 program (plain `socket` calls, as any app makes
//! them) run inside the test cgroup, and optionally inside a netns, that connects to a VIP N
//! times and reports each connect as JSON.
//!
//! The script is passed with `python3 -c`, so there is no temp file to clean up.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde::Deserialize;

use crate::cgroup::Cgroup2;
use crate::netns::Netns;

/// One connect after another: bind a source address if asked (Maglev keys on it), connect,
/// record getpeername(), send a request, read the answer to EOF. Every failure becomes a
/// record with errno rather than an exception, so one refused connect cannot hide others.
const CLIENT_PY: &str = r#"
import argparse, errno, json, os, socket, sys, time
p = argparse.ArgumentParser()
p.add_argument('--target', required=True)
p.add_argument('--port', type=int, required=True)
p.add_argument('--count', type=int, required=True)
p.add_argument('--source', action='append', default=[])
p.add_argument('--interval-ms', type=float, default=0.0)
p.add_argument('--timeout', type=float, default=3.0)
p.add_argument('--until-file')
p.add_argument('--max-seconds', type=float, default=120.0)
a = p.parse_args()
fam = socket.AF_INET6 if ':' in a.target else socket.AF_INET
def fmt(addr):
    host, port = addr[0], addr[1]
    return '[%s]:%d' % (host, port) if ':' in host else '%s:%d' % (host, port)
results = []
start = time.monotonic()
for i in range(a.count):
    if a.until_file and os.path.exists(a.until_file):
        break
    if time.monotonic() - start > a.max_seconds:
        break
    src = a.source[i % len(a.source)] if a.source else None
    r = {'src': src, 'backend': None, 'peer': None, 'errno': None, 'error': None}
    s = socket.socket(fam, socket.SOCK_STREAM)
    s.settimeout(a.timeout)
    try:
        if src:
            s.bind((src, 0))
        s.connect((a.target, a.port))
        r['peer'] = fmt(s.getpeername())
        s.sendall(b'GET / HTTP/1.0\r\nHost: sockmesh\r\n\r\n')
        data = b''
        while True:
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
        body = data.split(b'\r\n\r\n', 1)[-1].decode('utf-8', 'replace').strip()
        r['backend'] = body.splitlines()[-1] if body else None
        if r['backend'] is None:
            r['error'] = 'empty answer'
    except OSError as e:
        r['errno'] = e.errno
        r['error'] = ('%s %s' % (errno.errorcode.get(e.errno, ''), e)).strip()
    finally:
        s.close()
    results.append(r)
    if a.interval_ms > 0:
        time.sleep(a.interval_ms / 1000.0)
json.dump({'results': results, 'elapsed_ms': (time.monotonic() - start) * 1000.0}, sys.stdout)
"#;

/// What one connect saw.
#[derive(Debug, Clone, Deserialize)]
pub struct ConnectResult {
    /// The source address bound before connecting, if any.
    pub src: Option<String>,
    /// The backend that answered, as it names itself (`ip:port` / `[ip6]:port`).
    pub backend: Option<String>,
    /// What `getpeername()` returned after connect, same format.
    pub peer: Option<String>,
    /// errno of the failure, if the connect or read failed with one.
    pub errno: Option<i32>,
    /// Human-readable failure (`ECONNREFUSED [Errno 111] ...`, `timed out`), if any.
    pub error: Option<String>,
}

impl ConnectResult {
    /// Connected and got a backend's answer.
    pub fn ok(&self) -> bool {
        self.error.is_none() && self.backend.is_some()
    }
}

/// Everything one client run saw, in connect order.
#[derive(Debug, Clone, Deserialize)]
pub struct ClientReport {
    pub results: Vec<ConnectResult>,
    pub elapsed_ms: f64,
}

impl ClientReport {
    /// The connects that failed.
    pub fn failures(&self) -> Vec<&ConnectResult> {
        self.results.iter().filter(|r| !r.ok()).collect()
    }

    /// How many connects each backend answered.
    pub fn backend_counts(&self) -> BTreeMap<String, u64> {
        let mut counts = BTreeMap::new();
        for b in self.results.iter().filter_map(|r| r.backend.clone()) {
            *counts.entry(b).or_insert(0) += 1;
        }
        counts
    }

    /// The answering backend of each connect, in order (`None` for failures).
    pub fn backend_sequence(&self) -> Vec<Option<&str>> {
        self.results.iter().map(|r| r.backend.as_deref()).collect()
    }

    /// Panics with the first few failures unless every connect succeeded.
    pub fn assert_all_ok(&self, what: &str) {
        let failures = self.failures();
        assert!(
            failures.is_empty(),
            "{what}: {} of {} connects failed; first: {:#?}",
            failures.len(),
            self.results.len(),
            &failures[..failures.len().min(5)]
        );
    }
}

/// A configured client run: target, count and options; see [`ConnectClient::run`].
#[derive(Debug, Clone)]
pub struct ConnectClient {
    target: SocketAddr,
    count: usize,
    sources: Vec<IpAddr>,
    interval: Duration,
    timeout: Duration,
    until_file: Option<PathBuf>,
    max_time: Duration,
}

impl ConnectClient {
    /// `count` sequential connects to `target` (a VIP:port, or any address).
    pub fn new(target: SocketAddr, count: usize) -> Self {
        ConnectClient {
            target,
            count,
            sources: Vec::new(),
            interval: Duration::ZERO,
            timeout: Duration::from_secs(3),
            until_file: None,
            max_time: Duration::from_secs(120),
        }
    }

    /// Connect `i` binds `sources[i % len]` first: distinct sources are distinct callers.
    pub fn sources(mut self, sources: impl IntoIterator<Item = IpAddr>) -> Self {
        self.sources = sources.into_iter().collect();
        self
    }

    /// Pause between connects.
    pub fn interval(mut self, interval: Duration) -> Self {
        self.interval = interval;
        self
    }

    /// Per-socket-operation timeout.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Stop early once this file exists: lets a test run a client across an event of
    /// unknown length (a reload, a restart) and end it afterwards.
    pub fn until_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.until_file = Some(path.into());
        self
    }

    /// Hard bound on the run's duration, whatever `count` says.
    pub fn max_time(mut self, max: Duration) -> Self {
        self.max_time = max;
        self
    }

    /// The python3 command line, started inside `netns` (via `ip netns exec`) and `cgroup`
    /// when given.
    pub fn command(&self, cgroup: Option<&Cgroup2>, netns: Option<&Netns>) -> Command {
        let mut cmd = match netns {
            Some(ns) => ns.command("python3"),
            None => Command::new("python3"),
        };
        cmd.arg("-c").arg(CLIENT_PY);
        cmd.arg("--target").arg(self.target.ip().to_string());
        cmd.arg("--port").arg(self.target.port().to_string());
        cmd.arg("--count").arg(self.count.to_string());
        for s in &self.sources {
            cmd.arg("--source").arg(s.to_string());
        }
        cmd.arg("--interval-ms")
            .arg(format!("{}", self.interval.as_secs_f64() * 1000.0));
        cmd.arg("--timeout")
            .arg(format!("{}", self.timeout.as_secs_f64()));
        cmd.arg("--max-seconds")
            .arg(format!("{}", self.max_time.as_secs_f64()));
        if let Some(f) = &self.until_file {
            cmd.arg("--until-file").arg(f);
        }
        if let Some(cg) = cgroup {
            cg.enter(&mut cmd);
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        cmd
    }

    /// Starts the client in the background; [`RunningClient::wait`] collects its report.
    pub fn spawn(&self, cgroup: Option<&Cgroup2>, netns: Option<&Netns>) -> Result<RunningClient> {
        let child = self
            .command(cgroup, netns)
            .spawn()
            .context("spawning the python3 client")?;
        Ok(RunningClient { child })
    }

    /// Runs the client to completion and parses its report.
    pub fn run(&self, cgroup: Option<&Cgroup2>, netns: Option<&Netns>) -> Result<ClientReport> {
        self.spawn(cgroup, netns)?.wait()
    }
}

/// A client started with [`ConnectClient::spawn`].
#[derive(Debug)]
pub struct RunningClient {
    child: Child,
}

impl RunningClient {
    /// The client's pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits for the client to finish and parses its JSON report.
    pub fn wait(self) -> Result<ClientReport> {
        let out = self.child.wait_with_output()?;
        if !out.status.success() {
            bail!(
                "python3 client failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        serde_json::from_slice(&out.stdout).with_context(|| {
            format!(
                "client output is not a report: {}",
                String::from_utf8_lossy(&out.stdout)
            )
        })
    }
}
