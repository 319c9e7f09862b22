//! Stock python3 HTTP servers and clients for the L7 tests (`tests/l7_*.rs`): the standard
//! library's `http.server` and `http.client`, no knowledge of sockmesh.
//!
//! - [`HttpBackends`]: one process serving several addresses, each in a mode: `ok` (200,
//!   body = its own address), `503`, `500`, `hang` (answers nothing for 120 s). Each counts
//!   the requests it got per method; `GET /__count` (not counted) answers them as JSON.
//! - [`HttpClient`]: `count` requests over one kept-alive connection (a new one after the
//!   server closes it), run in a cgroup; reports statuses, bodies and errors.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
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
import http.client, json, sys
host, port = sys.argv[1].rsplit(":", 1)
count, method, path = int(sys.argv[2]), sys.argv[3], sys.argv[4]
headers = json.loads(sys.argv[5])
timeout = float(sys.argv[6])
codes, bodies, errors, conns = {}, {}, [], 0
conn = None
for i in range(count):
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
        if r.will_close:
            conn.close(); conn = None
    except Exception as e:
        errors.append(repr(e)[:200])
        if conn is not None:
            conn.close()
        conn = None
print(json.dumps({"codes": codes, "bodies": bodies, "errors": errors, "connections": conns}))
"#;

/// Python HTTP backends (module docs). Stopped on drop.
pub struct HttpBackends {
    child: Child,
    addrs: Vec<SocketAddr>,
}

impl HttpBackends {
    /// Serves each `(address, mode)`; returns once all listen.
    pub fn start(specs: &[(SocketAddr, &str)]) -> Result<Self> {
        let mut cmd = Command::new("python3");
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
        })
    }

    /// Requests each backend got, per method (asked directly, outside any cgroup).
    pub fn counts(&self) -> Result<Vec<BTreeMap<String, u64>>> {
        self.addrs
            .iter()
            .map(|a| {
                let resp = crate::http_get_tcp(*a, "/__count", Duration::from_secs(10))?;
                serde_json::from_str(&resp.body)
                    .with_context(|| format!("counts of {a}: {:?}", resp.body))
            })
            .collect()
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
        }
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
        let out = cgroup
            .command("python3")
            .arg("-c")
            .arg(CLIENT_PY)
            .arg(self.target.to_string())
            .arg(self.count.to_string())
            .arg(self.method)
            .arg(&self.path)
            .arg(serde_json::to_string(&self.headers)?)
            .arg(self.timeout.as_secs_f64().to_string())
            .output()
            .context("running the python http client")?;
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
