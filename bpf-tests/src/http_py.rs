//! Stock python3 HTTP servers and clients for the L7 tests (`tests/l7_*.rs`): the standard
//! library's `http.server` and `http.client`, no knowledge of sockmesh.
//!
//! - [`HttpBackends`]: one process serving several addresses, each in a mode: `ok` (200,
//!   body = its own address), `503`, `500`, `hang` (answers nothing for 120 s). Each counts
//!   the requests it got per method; `GET /__count` (not counted) answers them as JSON.
//! - [`HttpClient`]: `count` requests over one kept-alive connection (a new one after the
//!   server closes it), run in a cgroup, to completion or in the background (paced, bounded
//!   in time, stopped by a file); reports statuses, bodies, errors and each request's time.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde::Deserialize;

use crate::Cgroup2;

const SERVER_PY: &str = r#"
import json, sys, threading, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body are written separately: without TCP_NODELAY each kept-alive
    # response waits on Nagle and the client's delayed ACK (about 40 ms).
    disable_nagle_algorithm = True
    def log_message(self, *a):
        pass
    def handle_any(self):
        n = int(self.headers.get("Content-Length") or 0)
        if n:
            self.rfile.read(n)
        srv = self.server
        if self.path == "/__count":
            body = json.dumps(srv.counts).encode()
            self.send_response(200)
        else:
            with srv.lock:
                srv.counts[self.command] = srv.counts.get(self.command, 0) + 1
                seen = srv.seen
                for h in ("grpc-timeout", "x-sockmesh-timeout"):
                    if self.headers.get(h):
                        seen[h] = self.headers.get(h)
            if srv.mode == "hang":
                time.sleep(120)
                return
            code = {"ok": 200, "503": 503, "500": 500}[srv.mode]
            body = srv.name.encode()
            self.send_response(code)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    do_GET = do_POST = do_PUT = handle_any

servers = []
for spec in sys.argv[1:]:
    addr, mode = spec.rsplit("=", 1)
    host, port = addr.rsplit(":", 1)
    s = ThreadingHTTPServer((host, int(port)), Handler)
    s.daemon_threads = True
    s.mode, s.name, s.counts, s.seen, s.lock = mode, addr, {}, {}, threading.Lock()
    servers.append(s)
    threading.Thread(target=s.serve_forever, daemon=True).start()
print("ready", flush=True)
sys.stdin.read()
"#;

const CLIENT_PY: &str = r#"
import http.client, json, os, sys, time
host, port = sys.argv[1].rsplit(":", 1)
count, method, path = int(sys.argv[2]), sys.argv[3], sys.argv[4]
headers = json.loads(sys.argv[5])
timeout = float(sys.argv[6])
interval, max_seconds, until_file = float(sys.argv[7]), float(sys.argv[8]), sys.argv[9]
codes, bodies, errors, conns, timings = {}, {}, [], 0, []
conn = None
start = time.monotonic()
for i in range(count):
    if until_file and os.path.exists(until_file):
        break
    if time.monotonic() - start > max_seconds:
        break
    if i and interval:
        time.sleep(interval)
    t0 = time.monotonic()
    try:
        if conn is None:
            conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
            conns += 1
        body = b"x" * 100 if method in ("POST", "PUT") else None
        conn.request(method, path, body=body, headers=headers)
        r = conn.getresponse()
        data = r.read().decode(errors="replace")
        codes[str(r.status)] = codes.get(str(r.status), 0) + 1
        bodies[data] = bodies.get(data, 0) + 1
        timings.append([r.status, (time.monotonic() - t0) * 1000.0])
        if r.will_close:
            conn.close(); conn = None
    except Exception as e:
        errors.append(repr(e)[:200])
        timings.append([0, (time.monotonic() - t0) * 1000.0])
        if conn is not None:
            conn.close()
        conn = None
print(json.dumps({"codes": codes, "bodies": bodies, "errors": errors, "connections": conns,
                  "timings": timings}))
"#;

/// Python HTTP backends (module docs). Stopped on drop.
pub struct HttpBackends {
    child: Child,
    addrs: Vec<SocketAddr>,
    /// The network namespace they serve in (`None`: the test's own).
    netns: Option<PathBuf>,
}

impl HttpBackends {
    /// Serves each `(address, mode)`; returns once all listen.
    pub fn start(specs: &[(SocketAddr, &str)]) -> Result<Self> {
        Self::start_with(None, specs)
    }

    /// [`HttpBackends::start`] inside the network namespace at `netns` (a pod's).
    pub fn start_in(netns: &Path, specs: &[(SocketAddr, &str)]) -> Result<Self> {
        Self::start_with(Some(netns), specs)
    }

    fn start_with(netns: Option<&Path>, specs: &[(SocketAddr, &str)]) -> Result<Self> {
        let mut cmd = Command::new("python3");
        if let Some(path) = netns {
            crate::netns::enter_path(path, &mut cmd)?;
        }
        cmd.arg("-c").arg(SERVER_PY);
        for (addr, mode) in specs {
            cmd.arg(format!("{addr}={mode}"));
        }
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("starting python3 http backends")?;
        let mut line = String::new();
        BufReader::new(child.stdout.as_mut().expect("piped"))
            .read_line(&mut line)
            .context("reading the backends' ready line")?;
        if line.trim() != "ready" {
            let _ = child.kill();
            bail!("python http backends did not start: {line:?}");
        }
        Ok(Self {
            child,
            addrs: specs.iter().map(|(a, _)| *a).collect(),
            netns: netns.map(Path::to_path_buf),
        })
    }

    /// Requests each backend got, per method (asked directly, outside any cgroup, from
    /// their network namespace).
    pub fn counts(&self) -> Result<Vec<BTreeMap<String, u64>>> {
        let addrs = self.addrs.clone();
        let ask = move || -> Result<Vec<BTreeMap<String, u64>>> {
            addrs
                .iter()
                .map(|a| {
                    let resp = crate::http_get_tcp(*a, "/__count", Duration::from_secs(10))?;
                    serde_json::from_str(&resp.body)
                        .with_context(|| format!("counts of {a}: {:?}", resp.body))
                })
                .collect()
        };
        match &self.netns {
            Some(path) => crate::netns::run_in(path, ask),
            None => ask(),
        }
    }

    /// Requests of any method each backend got.
    pub fn totals(&self) -> Result<Vec<u64>> {
        Ok(self.counts()?.iter().map(|c| c.values().sum()).collect())
    }
}

impl Drop for HttpBackends {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What [`HttpClient::run`] saw.
#[derive(Debug, Deserialize)]
pub struct HttpReport {
    /// Status code -> responses.
    pub codes: BTreeMap<String, u64>,
    /// Body -> responses (the `ok` backends answer their address).
    pub bodies: BTreeMap<String, u64>,
    /// Requests that got no response at all.
    pub errors: Vec<String>,
    /// Connections opened.
    pub connections: u64,
    /// Each request in order: (status, or 0 for no response; milliseconds from sending it,
    /// connect included, to the end of the response body or the error).
    pub timings: Vec<(u16, f64)>,
}

impl HttpReport {
    pub fn code(&self, code: u16) -> u64 {
        self.codes.get(&code.to_string()).copied().unwrap_or(0)
    }
}

/// A python `http.client` run (module docs).
pub struct HttpClient {
    pub target: SocketAddr,
    pub count: usize,
    pub method: &'static str,
    pub path: String,
    pub headers: BTreeMap<String, String>,
    /// Per-request socket timeout.
    pub timeout: Duration,
    /// Pause between requests.
    pub interval: Duration,
    /// Hard bound on the run, whatever `count` says.
    pub max_time: Duration,
    /// Stop before the next request once this file exists.
    pub until_file: Option<PathBuf>,
    /// Run in this network namespace (a pod's) besides the cgroup.
    pub netns: Option<PathBuf>,
}

impl HttpClient {
    pub fn get(target: SocketAddr, count: usize) -> Self {
        Self {
            target,
            count,
            method: "GET",
            path: "/".into(),
            headers: BTreeMap::new(),
            timeout: Duration::from_secs(30),
            interval: Duration::ZERO,
            max_time: Duration::from_secs(600),
            until_file: None,
            netns: None,
        }
    }

    /// Runs the client in the network namespace at `path` too (a pod's).
    pub fn netns(mut self, path: impl Into<PathBuf>) -> Self {
        self.netns = Some(path.into());
        self
    }

    /// Each request's socket timeout.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Pauses `interval` between requests.
    pub fn interval(mut self, interval: Duration) -> Self {
        self.interval = interval;
        self
    }

    /// Stops after `max` whatever `count` says.
    pub fn max_time(mut self, max: Duration) -> Self {
        self.max_time = max;
        self
    }

    /// Stops before the next request once `path` exists.
    pub fn until_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.until_file = Some(path.into());
        self
    }

    pub fn method(mut self, method: &'static str) -> Self {
        self.method = method;
        self
    }

    pub fn path(mut self, path: &str) -> Self {
        self.path = path.into();
        self
    }

    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.insert(name.into(), value.into());
        self
    }

    /// Runs the requests from inside `cgroup`.
    pub fn run(&self, cgroup: &Cgroup2) -> Result<HttpReport> {
        self.spawn(cgroup)?.wait()
    }

    /// Starts the requests from inside `cgroup` in the background.
    pub fn spawn(&self, cgroup: &Cgroup2) -> Result<RunningHttpClient> {
        let until_file = self
            .until_file
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        let mut cmd = cgroup.command("python3");
        if let Some(path) = &self.netns {
            crate::netns::enter_path(path, &mut cmd)?;
        }
        let child = cmd
            .arg("-c")
            .arg(CLIENT_PY)
            .arg(self.target.to_string())
            .arg(self.count.to_string())
            .arg(self.method)
            .arg(&self.path)
            .arg(serde_json::to_string(&self.headers)?)
            .arg(self.timeout.as_secs_f64().to_string())
            .arg(self.interval.as_secs_f64().to_string())
            .arg(self.max_time.as_secs_f64().to_string())
            .arg(until_file)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("running the python http client")?;
        Ok(RunningHttpClient { child: Some(child) })
    }
}

/// A client started with [`HttpClient::spawn`]; killed by pid if dropped unwaited.
pub struct RunningHttpClient {
    child: Option<Child>,
}

impl RunningHttpClient {
    /// Waits for the client to finish and parses its report.
    pub fn wait(mut self) -> Result<HttpReport> {
        let out = self.child.take().expect("waited once").wait_with_output()?;
        if !out.status.success() {
            bail!(
                "python http client failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        serde_json::from_slice(&out.stdout)
            .with_context(|| format!("client output: {}", String::from_utf8_lossy(&out.stdout)))
    }
}

impl Drop for RunningHttpClient {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
