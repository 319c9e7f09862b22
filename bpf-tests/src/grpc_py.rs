//! Stock grpcio servers and clients for the L7 gRPC test (`tests/l7_grpc.rs`): python's
//! grpcio with its generic API on raw bytes (no protoc, no generated code), no knowledge of
//! sockmesh.
//!
//! - [`GrpcBackends`]: one process serving several addresses, each a `grpc.server` with the
//!   methods of `sockmesh.test.Probe`: `Status` (the request names a status: `OK` answers
//!   the server's own address, any other name aborts with that status), `Deadline` (answers
//!   `context.time_remaining()` as the server saw it on arrival) and `Slow` (holds the call
//!   for the seconds the request names, at most 60, or until the call is no longer active).
//!   Each server records what it got; [`GrpcBackends::seen`] asks the process on its stdin.
//! - [`GrpcClient`]: one `grpc.insecure_channel` (HTTP/2 with prior knowledge, as grpcio
//!   does without TLS) making the planned calls in order, run in a cgroup; reports the
//!   status of every call as the client read it, and the replies.
//!
//! The python is `SOCKMESH_GRPC_PYTHON` ([`grpc_python`]), the venv `cargo xtask setup`
//! installs grpcio into: unset, or a python without grpcio, fails the test.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::Cgroup2;

/// The environment variable naming the python with grpcio (`cargo xtask test` sets it).
pub const GRPC_PYTHON_ENV: &str = "SOCKMESH_GRPC_PYTHON";

/// The gRPC service every backend serves.
pub const PROBE_SERVICE: &str = "sockmesh.test.Probe";

const SERVER_PY: &str = r#"
import json, sys, threading, time
from concurrent import futures
import grpc

class Probe:
    def __init__(self, name):
        self.name, self.lock = name, threading.Lock()
        self.calls, self.time_remaining, self.slow_cancelled = {}, [], 0

    def count(self, key):
        with self.lock:
            self.calls[key] = self.calls.get(key, 0) + 1

    def status(self, request, context):
        code = request.decode()
        self.count(code)
        if code == "OK":
            return self.name.encode()
        context.abort(getattr(grpc.StatusCode, code), "probe asked for " + code)

    def deadline(self, request, context):
        left = context.time_remaining()
        self.count("Deadline")
        with self.lock:
            self.time_remaining.append(left)
        return json.dumps({"backend": self.name, "time_remaining": left}).encode()

    def slow(self, request, context):
        self.count("Slow")
        end = time.monotonic() + min(float(request.decode()), 60.0)
        while time.monotonic() < end:
            if not context.is_active():
                with self.lock:
                    self.slow_cancelled += 1
                break
            time.sleep(0.01)
        return self.name.encode()

    def seen(self):
        with self.lock:
            return {"calls": dict(self.calls), "time_remaining": list(self.time_remaining),
                    "slow_cancelled": self.slow_cancelled}

probes, servers = [], []
for addr in sys.argv[2:]:
    probe = Probe(addr)
    handler = grpc.method_handlers_generic_handler(sys.argv[1], {
        "Status": grpc.unary_unary_rpc_method_handler(probe.status),
        "Deadline": grpc.unary_unary_rpc_method_handler(probe.deadline),
        "Slow": grpc.unary_unary_rpc_method_handler(probe.slow),
    })
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=16),
                         options=[("grpc.so_reuseport", 0)])
    server.add_generic_rpc_handlers((handler,))
    if server.add_insecure_port(addr) == 0:
        print("cannot listen on " + addr, flush=True)
        sys.exit(1)
    server.start()
    probes.append(probe)
    servers.append(server)
print("ready", flush=True)
for line in sys.stdin:
    if line.strip() == "seen":
        print(json.dumps({p.name: p.seen() for p in probes}), flush=True)
for server in servers:
    server.stop(0)
"#;

const CLIENT_PY: &str = r#"
import json, sys, grpc
target, service, plan = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
# One connection for every call; no proxy from the environment; no client-side retries,
# so each call is exactly one request on the wire.
options = [("grpc.enable_http_proxy", 0), ("grpc.enable_retries", 0)]
report = []
with grpc.insecure_channel(target, options=options) as channel:
    grpc.channel_ready_future(channel).result(timeout=30)
    for call in plan:
        method = channel.unary_unary("/" + service + "/" + call["method"])
        codes, details, replies = {}, {}, []
        for _ in range(call["count"]):
            try:
                replies.append(method(call["payload"].encode(), timeout=call["timeout"]).decode())
                code = "OK"
            except grpc.RpcError as e:
                code = e.code().name
                details[code] = (e.details() or "")[:200]
            codes[code] = codes.get(code, 0) + 1
        report.append({"codes": codes, "details": details, "replies": replies})
print(json.dumps(report))
"#;

/// The python with grpcio, from [`GRPC_PYTHON_ENV`].
///
/// # Panics
/// When the variable is unset, names no file, or names a python that cannot import grpc:
/// the test must fail, not skip (`cargo xtask setup` installs it, `cargo xtask test` sets it).
pub fn grpc_python() -> PathBuf {
    const HOW: &str = "run the bpf-tests through `cargo xtask test` (after `cargo xtask setup`, \
                       which installs grpcio into /opt/sockmesh-xtask/grpc), or set \
                       SOCKMESH_GRPC_PYTHON to a python that has grpcio";
    let python = match std::env::var_os(GRPC_PYTHON_ENV).map(PathBuf::from) {
        Some(p) if p.is_file() => p,
        Some(p) => panic!("{GRPC_PYTHON_ENV} names {}, not a file: {HOW}", p.display()),
        None => panic!("{GRPC_PYTHON_ENV} is not set: {HOW}"),
    };
    let out = Command::new(&python)
        .args(["-c", "import grpc; print(grpc.__version__)"])
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}: {HOW}", python.display()));
    assert!(
        out.status.success(),
        "{} cannot import grpc ({}): {HOW}",
        python.display(),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    python
}

/// What one backend recorded.
#[derive(Debug, Clone, Deserialize)]
pub struct BackendSeen {
    /// Calls per `Status` name asked for, and `Deadline`, `Slow`.
    pub calls: BTreeMap<String, u64>,
    /// `context.time_remaining()` of each `Deadline` call, in seconds (`None`: no deadline).
    pub time_remaining: Vec<Option<f64>>,
    /// `Slow` calls that ended because the call was no longer active (its deadline passed,
    /// or the caller cancelled), before their time.
    pub slow_cancelled: u64,
}

/// grpcio backends (module docs). Stopped on drop.
pub struct GrpcBackends {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
}

impl GrpcBackends {
    /// Serves [`PROBE_SERVICE`] on each address; returns once all listen.
    pub fn start(python: &std::path::Path, addrs: &[SocketAddr]) -> Result<Self> {
        let mut child = Command::new(python)
            .arg("-c")
            .arg(SERVER_PY)
            .arg(PROBE_SERVICE)
            .args(addrs.iter().map(SocketAddr::to_string))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("starting the grpcio backends")?;
        let stdin = child.stdin.take();
        let stdout = BufReader::new(child.stdout.take().expect("piped"));
        // Built first, so a failed start is killed by Drop.
        let mut backends = Self {
            child,
            stdin,
            stdout,
        };
        let mut line = String::new();
        backends
            .stdout
            .read_line(&mut line)
            .context("reading the grpcio backends' ready line")?;
        if line.trim() != "ready" {
            bail!("grpcio backends did not start: {line:?}");
        }
        Ok(backends)
    }

    /// What each backend recorded so far, by address.
    pub fn seen(&mut self) -> Result<BTreeMap<SocketAddr, BackendSeen>> {
        let stdin = self.stdin.as_mut().context("backends stopped")?;
        stdin.write_all(b"seen\n")?;
        stdin.flush()?;
        let mut line = String::new();
        self.stdout.read_line(&mut line)?;
        let by_name: BTreeMap<String, BackendSeen> = serde_json::from_str(&line)
            .with_context(|| format!("the grpcio backends answered {line:?}"))?;
        by_name
            .into_iter()
            .map(|(name, seen)| Ok((name.parse()?, seen)))
            .collect()
    }
}

impl Drop for GrpcBackends {
    fn drop(&mut self) {
        drop(self.stdin.take());
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One step of a [`GrpcClient`]'s plan: `count` calls of one method, one after another.
#[derive(Debug, Clone, Serialize)]
pub struct GrpcCall {
    /// A method of [`PROBE_SERVICE`]: `Status`, `Deadline` or `Slow`.
    pub method: &'static str,
    /// The request bytes, as text: a status name for `Status`, seconds for `Slow`.
    pub payload: String,
    /// The client's deadline for each call, in seconds (grpcio's `timeout=`).
    pub timeout: f64,
    pub count: usize,
}

impl GrpcCall {
    /// `count` calls of `method` with `payload`, each with the deadline `timeout`.
    pub fn new(method: &'static str, payload: &str, timeout: Duration, count: usize) -> Self {
        Self {
            method,
            payload: payload.to_owned(),
            timeout: timeout.as_secs_f64(),
            count,
        }
    }
}

/// What the client saw for one [`GrpcCall`].
#[derive(Debug, Clone, Deserialize)]
pub struct CallReport {
    /// gRPC status name as grpcio read it (`OK`, `NOT_FOUND`, ...) -> calls.
    pub codes: BTreeMap<String, u64>,
    /// The last details string the client got for each status other than OK.
    pub details: BTreeMap<String, String>,
    /// The reply of each OK call, as text.
    pub replies: Vec<String>,
}

impl CallReport {
    /// Calls that ended with the status `name` (`OK`, `NOT_FOUND`).
    pub fn code(&self, name: &str) -> u64 {
        self.codes.get(name).copied().unwrap_or(0)
    }
}

/// A grpcio client (module docs): the calls of `plan`, in order, on one channel to `target`.
pub struct GrpcClient {
    pub target: SocketAddr,
    pub plan: Vec<GrpcCall>,
}

impl GrpcClient {
    pub fn new(target: SocketAddr, plan: Vec<GrpcCall>) -> Self {
        Self { target, plan }
    }

    /// Makes the calls from inside `cgroup` with `python`; one report per step of the plan.
    /// Bounded: each call has its deadline, the channel 30 s to connect.
    pub fn run(&self, python: &std::path::Path, cgroup: &Cgroup2) -> Result<Vec<CallReport>> {
        let out = cgroup
            .command(python)
            .arg("-c")
            .arg(CLIENT_PY)
            .arg(self.target.to_string())
            .arg(PROBE_SERVICE)
            .arg(serde_json::to_string(&self.plan)?)
            .stdin(Stdio::null())
            .output()
            .context("running the grpcio client")?;
        if !out.status.success() {
            bail!(
                "grpcio client failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let reports: Vec<CallReport> = serde_json::from_slice(&out.stdout).with_context(|| {
            format!(
                "grpcio client output: {}\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )
        })?;
        if reports.len() != self.plan.len() {
            bail!("{} reports for {} steps", reports.len(), self.plan.len());
        }
        Ok(reports)
    }
}
