//! A client for [`crate::BackendMode::Echo`] backends: an unmodified python3 program, run in
//! the test cgroup, that opens connections one after another through a VIP, sends a payload
//! in chunks, reads each chunk's echo back before sending the next (so neither side ever
//! blocks on a full buffer), checks it, and reports per connection as JSON. Large chunks make
//! bulk transfers; small ones make request/response exchanges (TCP_NODELAY is set, as
//! request/response applications do).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde::Deserialize;

use crate::cgroup::Cgroup2;

const ECHO_PY: &str = r#"
import argparse, json, socket, sys, time
p = argparse.ArgumentParser()
p.add_argument('--target', required=True)
p.add_argument('--port', type=int, required=True)
p.add_argument('--connections', type=int, required=True)
p.add_argument('--bytes', type=int, required=True)
p.add_argument('--chunk', type=int, default=65536)
p.add_argument('--timeout', type=float, default=20.0)
p.add_argument('--max-seconds', type=float, default=120.0)
a = p.parse_args()
pattern = bytes(range(256)) * (a.chunk // 256 + 1)
results = []
start = time.monotonic()
for i in range(a.connections):
    if time.monotonic() - start > a.max_seconds:
        break
    r = {'backend': None, 'echoed': 0, 'error': None}
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(a.timeout)
    try:
        s.connect((a.target, a.port))
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        line = b''
        while not line.endswith(b'\n'):
            c = s.recv(256 - len(line))
            if not c:
                raise OSError('closed before naming itself')
            line += c
        r['backend'] = line.decode().strip()
        while r['echoed'] < a.bytes:
            n = min(a.chunk, a.bytes - r['echoed'])
            s.sendall(pattern[:n])
            got = b''
            while len(got) < n:
                c = s.recv(n - len(got))
                if not c:
                    raise OSError('closed mid-echo')
                got += c
            if got != pattern[:n]:
                raise OSError('echo differs from what was sent')
            r['echoed'] += n
    except OSError as e:
        r['error'] = str(e) or type(e).__name__
    finally:
        s.close()
    results.append(r)
json.dump({'results': results, 'elapsed_ms': (time.monotonic() - start) * 1000.0}, sys.stdout)
"#;

/// One connection's outcome.
#[derive(Debug, Clone, Deserialize)]
pub struct EchoResult {
    /// The backend, as it named itself.
    pub backend: Option<String>,
    /// Bytes sent and echoed back intact.
    pub echoed: u64,
    pub error: Option<String>,
}

/// Everything one run saw, in connection order.
#[derive(Debug, Clone, Deserialize)]
pub struct EchoReport {
    pub results: Vec<EchoResult>,
    pub elapsed_ms: f64,
}

impl EchoReport {
    /// Bytes echoed per backend.
    pub fn echoed_by_backend(&self) -> BTreeMap<String, u64> {
        let mut out = BTreeMap::new();
        for r in &self.results {
            if let Some(b) = &r.backend {
                *out.entry(b.clone()).or_insert(0) += r.echoed;
            }
        }
        out
    }

    /// Connections per backend.
    pub fn connections_by_backend(&self) -> BTreeMap<String, u64> {
        let mut out = BTreeMap::new();
        for b in self.results.iter().filter_map(|r| r.backend.clone()) {
            *out.entry(b).or_insert(0) += 1;
        }
        out
    }

    /// Panics unless every connection echoed all its bytes.
    pub fn assert_all_echoed(&self, what: &str, bytes: u64) {
        let bad: Vec<&EchoResult> = self
            .results
            .iter()
            .filter(|r| r.error.is_some() || r.echoed != bytes)
            .collect();
        assert!(
            bad.is_empty(),
            "{what}: {} of {} connections did not echo {bytes} bytes: {bad:#?}",
            bad.len(),
            self.results.len()
        );
    }
}

/// A configured run; see [`EchoClient::run`].
#[derive(Debug, Clone)]
pub struct EchoClient {
    target: SocketAddr,
    connections: usize,
    bytes: u64,
    chunk: u64,
    timeout: Duration,
    max_time: Duration,
}

impl EchoClient {
    /// `connections` sequential connections to `target`, `bytes` echoed over each.
    pub fn new(target: SocketAddr, connections: usize, bytes: u64) -> Self {
        EchoClient {
            target,
            connections,
            bytes,
            chunk: 64 * 1024,
            timeout: Duration::from_secs(20),
            max_time: Duration::from_secs(120),
        }
    }

    /// Bytes sent before waiting for their echo.
    pub fn chunk(mut self, chunk: u64) -> Self {
        self.chunk = chunk;
        self
    }

    /// Per-socket-operation timeout.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Runs the client inside `cgroup` to completion and parses its report.
    pub fn run(&self, cgroup: &Cgroup2) -> Result<EchoReport> {
        let mut cmd = Command::new("python3");
        cmd.arg("-c").arg(ECHO_PY);
        cmd.arg("--target").arg(self.target.ip().to_string());
        cmd.arg("--port").arg(self.target.port().to_string());
        cmd.arg("--connections").arg(self.connections.to_string());
        cmd.arg("--bytes").arg(self.bytes.to_string());
        cmd.arg("--chunk").arg(self.chunk.to_string());
        cmd.arg("--timeout")
            .arg(self.timeout.as_secs_f64().to_string());
        cmd.arg("--max-seconds")
            .arg(self.max_time.as_secs_f64().to_string());
        cgroup.enter(&mut cmd);
        let out = cmd
            .stdin(Stdio::null())
            .output()
            .context("running the python3 echo client")?;
        if !out.status.success() {
            bail!(
                "python3 echo client failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        serde_json::from_slice(&out.stdout).with_context(|| {
            format!(
                "echo client output is not a report: {}",
                String::from_utf8_lossy(&out.stdout)
            )
        })
    }
}
