//! A caller a health test can steer: one stock python3 process, started inside a
//! cgroup (a workload), that takes JSON commands on stdin and answers each with one JSON line.
//! Unlike the one-shot [`crate::ConnectClient`] it keeps state between commands, so a test can
//! hold connections open, try more, close some, and ask which are still alive.
//!
//! Commands:
//! - `connect`: `count` connects to the target, paced at `rate` per second (0: back to back),
//!   each with `timeout`; `proto: echo` reads the backend's `ip:port` line after connecting
//!   ([`crate::SwitchBackends`] and [`crate::BackendMode::Echo`] send it); `hold: true` keeps
//!   the successful ones open. Every connect reports when it started (seconds since the epoch),
//!   how long `connect()` itself took (µs), and errno/error/stage on failure.
//! - `echo`: `count` connections, each echoing `bytes` in `chunk`s (request/response, so lost
//!   segments make the caller retransmit), until done, `until_file` exists or `max_seconds`.
//! - `close`: closes the `count` oldest held connections.
//! - `status`: for every held connection, whether it is still open (a non-blocking peek) and,
//!   if so, whether a ping is echoed.
//!
//! The script is passed with `python3 -c`, so there is no file to clean up; the process is
//! told to exit on drop and killed if it does not.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::cgroup::Cgroup2;
use crate::netns::Netns;

/// Concurrent connection loops in [`Caller::echo`]: a connection stalled by injected loss
/// (RTO backoff) holds back one loop, not all traffic.
pub const ECHO_WORKERS: usize = 4;
/// Per-operation socket timeout of an `echo` loop. Tests inject segment loss while echoing,
/// and one segment's retransmit backoff can pass 10 s (a 10 s limit once failed 1 of 7,767
/// connections), so only a real hang should reach it.
const ECHO_OP_TIMEOUT: Duration = Duration::from_secs(60);

const CALLER_PY: &str = r#"
import json, os, socket, sys, threading, time
target = (sys.argv[1], int(sys.argv[2]))
fam = socket.AF_INET6 if ":" in target[0] else socket.AF_INET
held = []

def describe(e):
    if isinstance(e, socket.timeout):
        return None, 'timed out'
    return e.errno, ('%s %s' % (os.strerror(e.errno) if e.errno else type(e).__name__, e)).strip()

def read_line(s):
    line = b''
    while not line.endswith(b'\n'):
        c = s.recv(256 - len(line))
        if not c:
            raise OSError('closed before naming itself')
        line += c
        if len(line) >= 256:
            break
    return line.decode('utf-8', 'replace').strip()

def one(timeout, proto, hold):
    r = {'t': time.time(), 'connect_us': None, 'errno': None, 'error': None,
         'stage': None, 'backend': None}
    s = socket.socket(fam, socket.SOCK_STREAM)
    s.settimeout(timeout)
    stage = 'connect'
    keep = False
    try:
        t0 = time.perf_counter()
        try:
            s.connect(target)
        finally:
            r['connect_us'] = (time.perf_counter() - t0) * 1e6
        stage = 'read'
        if proto == 'echo':
            r['backend'] = read_line(s)
        if hold:
            held.append({'sock': s, 'backend': r['backend']})
            keep = True
    except OSError as e:
        r['errno'], r['error'] = describe(e)
        r['stage'] = stage
    finally:
        if not keep:
            s.close()
    return r

def paced(c, body):
    start = time.monotonic()
    out = []
    rate = float(c.get('rate', 0))
    until = c.get('until_file')
    for i in range(int(c['count'])):
        now = time.monotonic()
        if until and os.path.exists(until):
            break
        if now - start > float(c.get('max_seconds', 60)):
            break
        if rate > 0:
            d = start + i / rate - now
            if d > 0:
                time.sleep(d)
        out.append(body())
    return out, (time.monotonic() - start) * 1000.0

def op_connect(c):
    timeout = float(c.get('timeout', 3.0))
    proto = c.get('proto', 'echo')
    hold = bool(c.get('hold', False))
    out, ms = paced(c, lambda: one(timeout, proto, hold))
    return {'results': out, 'held': len(held), 'elapsed_ms': ms}

def echo_one(c):
    n_bytes, chunk = int(c['bytes']), int(c.get('chunk', 1024))
    pattern = bytes(range(256)) * (chunk // 256 + 1)
    r = {'t': time.time(), 'backend': None, 'echoed': 0, 'error': None}
    s = socket.socket(fam, socket.SOCK_STREAM)
    s.settimeout(float(c.get('timeout', 10.0)))
    try:
        s.connect(target)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        r['backend'] = read_line(s)
        while r['echoed'] < n_bytes:
            n = min(chunk, n_bytes - r['echoed'])
            s.sendall(pattern[:n])
            got = b''
            while len(got) < n:
                part = s.recv(n - len(got))
                if not part:
                    raise OSError('closed mid-echo')
                got += part
            if got != pattern[:n]:
                raise OSError('echo differs from what was sent')
            r['echoed'] += n
    except OSError as e:
        r['error'] = describe(e)[1]
    finally:
        s.close()
    return r

def op_echo(c):
    # Several workers, so one connection stalled by loss does not hold all traffic back.
    workers = max(1, int(c.get('workers', 1)))
    parts = [None] * workers
    def work(i):
        parts[i] = paced(c, lambda: echo_one(c))
    threads = [threading.Thread(target=work, args=(i,)) for i in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    out = sorted((r for p in parts for r in p[0]), key=lambda r: r['t'])
    return {'results': out, 'elapsed_ms': max(p[1] for p in parts)}

def op_close(c):
    n = min(int(c.get('count', 1)), len(held))
    for h in held[:n]:
        h['sock'].close()
    del held[:n]
    return {'held': len(held)}

def op_status(c):
    rows = []
    for h in held:
        s = h['sock']
        row = {'backend': h['backend'], 'alive': True, 'errno': None, 'error': None}
        try:
            s.setblocking(False)
            try:
                if s.recv(1, socket.MSG_PEEK) == b'':
                    row['alive'], row['error'] = False, 'closed by peer (EOF)'
            except BlockingIOError:
                pass
            s.settimeout(2.0)
            if row['alive'] and c.get('ping', True):
                s.sendall(b'ping\n')
                got = b''
                while len(got) < 5:
                    part = s.recv(5 - len(got))
                    if not part:
                        raise OSError('closed during ping')
                    got += part
                if got != b'ping\n':
                    raise OSError('ping echoed as %r' % got)
        except OSError as e:
            row['alive'] = False
            row['errno'], row['error'] = describe(e)
        rows.append(row)
    return {'held': rows}

ops = {'connect': op_connect, 'echo': op_echo, 'close': op_close, 'status': op_status}
for line in sys.stdin:
    line = line.strip()
    if not line:
        continue
    c = json.loads(line)
    if c.get('op') == 'exit':
        break
    try:
        reply = ops[c['op']](c)
    except Exception as e:
        reply = {'fatal': '%s: %s' % (type(e).__name__, e)}
    sys.stdout.write(json.dumps(reply) + '\n')
    sys.stdout.flush()
"#;

/// One connect as the caller saw it.
#[derive(Debug, Clone, Deserialize)]
pub struct Attempt {
    /// When it started, seconds since the epoch (compare with [`crate::health_admin::unix_now`]).
    pub t: f64,
    /// How long the `connect()` call took, µs.
    pub connect_us: Option<f64>,
    pub errno: Option<i32>,
    /// `"timed out"`, `"Connection refused [Errno 111] ..."`, ...; `None` on success.
    pub error: Option<String>,
    /// Where it failed: `"connect"` or `"read"` (reading the backend's name); `None` on success.
    pub stage: Option<String>,
    /// The backend that answered (with `proto: echo`).
    pub backend: Option<String>,
}

impl Attempt {
    pub fn ok(&self) -> bool {
        self.error.is_none()
    }

    /// `connect()` itself failed (refused, timed out, ...).
    pub fn connect_failed(&self) -> bool {
        self.stage.as_deref() == Some("connect")
    }

    /// `connect()` failed with ECONNREFUSED.
    pub fn refused(&self) -> bool {
        self.connect_failed() && self.errno == Some(libc::ECONNREFUSED)
    }

    /// `connect()` gave up after the caller's timeout.
    pub fn timed_out(&self) -> bool {
        self.connect_failed() && self.error.as_deref() == Some("timed out")
    }
}

/// The answer to one `connect` command.
#[derive(Debug, Clone, Deserialize)]
pub struct Batch {
    pub results: Vec<Attempt>,
    /// Connections the caller holds after the command.
    pub held: usize,
    pub elapsed_ms: f64,
}

impl Batch {
    pub fn ok_count(&self) -> usize {
        self.results.iter().filter(|a| a.ok()).count()
    }

    pub fn refused_count(&self) -> usize {
        self.results.iter().filter(|a| a.refused()).count()
    }

    /// Successful connects per answering backend.
    pub fn by_backend(&self) -> BTreeMap<String, usize> {
        let mut out = BTreeMap::new();
        for b in self.results.iter().filter_map(|a| a.backend.clone()) {
            *out.entry(b).or_insert(0) += 1;
        }
        out
    }

    /// The failures, for messages.
    pub fn failures(&self) -> Vec<&Attempt> {
        self.results.iter().filter(|a| !a.ok()).collect()
    }
}

/// One connection of an `echo` command.
#[derive(Debug, Clone, Deserialize)]
pub struct EchoConn {
    pub t: f64,
    pub backend: Option<String>,
    pub echoed: u64,
    pub error: Option<String>,
}

/// One held connection as `status` found it.
#[derive(Debug, Clone, Deserialize)]
pub struct HeldConn {
    pub backend: Option<String>,
    pub alive: bool,
    pub errno: Option<i32>,
    pub error: Option<String>,
}

/// What a `connect` command does; see the module docs.
#[derive(Debug, Clone)]
pub struct Connects {
    pub count: usize,
    /// Per second; 0 for back to back.
    pub rate: f64,
    pub timeout: Duration,
    pub hold: bool,
    /// Read the backend's name line after connecting.
    pub identify: bool,
    pub until_file: Option<PathBuf>,
    pub max_time: Duration,
}

impl Connects {
    /// `count` back-to-back connects, 2 s timeout, each identified and closed.
    pub fn new(count: usize) -> Self {
        Connects {
            count,
            rate: 0.0,
            timeout: Duration::from_secs(2),
            hold: false,
            identify: true,
            until_file: None,
            max_time: Duration::from_secs(60),
        }
    }

    pub fn rate(mut self, per_sec: f64) -> Self {
        self.rate = per_sec;
        self
    }

    pub fn timeout(mut self, t: Duration) -> Self {
        self.timeout = t;
        self
    }

    pub fn hold(mut self) -> Self {
        self.hold = true;
        self
    }

    /// Only connect (and close): for backends that send nothing.
    pub fn no_identify(mut self) -> Self {
        self.identify = false;
        self
    }

    pub fn until_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.until_file = Some(path.into());
        self
    }

    pub fn max_time(mut self, t: Duration) -> Self {
        self.max_time = t;
        self
    }

    /// A bound on how long the command may take, for the reply wait.
    fn bound(&self) -> Duration {
        let per = self.timeout.as_secs_f64()
            + if self.rate > 0.0 {
                1.0 / self.rate
            } else {
                0.0
            };
        let all = (per * self.count as f64).min(self.max_time.as_secs_f64() + per);
        Duration::from_secs_f64(all + 15.0)
    }
}

/// A running python3 caller; see the module docs.
#[derive(Debug)]
pub struct Caller {
    name: String,
    child: Child,
    stdin: Option<ChildStdin>,
    replies: mpsc::Receiver<String>,
    stderr: Arc<Mutex<String>>,
}

impl Caller {
    /// Starts a caller of `target` inside `cgroup`; `name` labels its errors.
    pub fn spawn(name: &str, cgroup: &Cgroup2, target: SocketAddr) -> Result<Self> {
        Self::spawn_in(name, cgroup, None, target)
    }

    /// [`Caller::spawn`], inside `netns` if given (for addresses that exist only there).
    pub fn spawn_in(
        name: &str,
        cgroup: &Cgroup2,
        netns: Option<&Netns>,
        target: SocketAddr,
    ) -> Result<Self> {
        let mut cmd = match netns {
            Some(ns) => ns.command("python3"),
            None => Command::new("python3"),
        };
        cmd.arg("-c")
            .arg(CALLER_PY)
            .arg(target.ip().to_string())
            .arg(target.port().to_string());
        cgroup.enter(&mut cmd);
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("spawning python3 caller {name}"))?;
        let stdout = child.stdout.take().expect("stdout is piped");
        let mut stderr_pipe = child.stderr.take().expect("stderr is piped");
        let (tx, replies) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stderr = Arc::new(Mutex::new(String::new()));
        let sink = stderr.clone();
        thread::spawn(move || {
            let mut text = String::new();
            let _ = stderr_pipe.read_to_string(&mut text);
            sink.lock().expect("stderr").push_str(&text);
        });
        Ok(Caller {
            name: name.to_string(),
            stdin: child.stdin.take(),
            child,
            replies,
            stderr,
        })
    }

    fn call(&mut self, cmd: Value, timeout: Duration) -> Result<Value> {
        let stdin = self.stdin.as_mut().context("caller stdin closed")?;
        writeln!(stdin, "{cmd}")
            .and_then(|()| stdin.flush())
            .with_context(|| format!("caller {}: sending {cmd}", self.name))?;
        let line = match self.replies.recv_timeout(timeout) {
            Ok(line) => line,
            Err(e) => {
                thread::sleep(Duration::from_millis(100));
                bail!(
                    "caller {}: no answer to {cmd} within {timeout:?} ({e}); stderr: {}",
                    self.name,
                    self.stderr.lock().expect("stderr").trim()
                )
            }
        };
        let reply: Value = serde_json::from_str(&line)
            .with_context(|| format!("caller {}: answer is not JSON: {line}", self.name))?;
        if let Some(fatal) = reply.get("fatal") {
            bail!("caller {}: {cmd} failed: {fatal}", self.name);
        }
        Ok(reply)
    }

    /// Runs a `connect` command.
    pub fn connect(&mut self, c: &Connects) -> Result<Batch> {
        let mut cmd = json!({
            "op": "connect",
            "count": c.count,
            "rate": c.rate,
            "timeout": c.timeout.as_secs_f64(),
            "hold": c.hold,
            "proto": if c.identify { "echo" } else { "none" },
            "max_seconds": c.max_time.as_secs_f64(),
        });
        if let Some(f) = &c.until_file {
            cmd["until_file"] = json!(f.display().to_string());
        }
        let reply = self.call(cmd, c.bound())?;
        serde_json::from_value(reply).context("connect answer")
    }

    /// Runs an `echo` command: [`ECHO_WORKERS`] concurrent loops of up to `count` connections
    /// each, `bytes` in `chunk`s per connection, until `until_file` exists or `max_time` passed.
    /// The results come back ordered by start time.
    pub fn echo(
        &mut self,
        count: usize,
        bytes: u64,
        chunk: u64,
        until_file: &std::path::Path,
        max_time: Duration,
    ) -> Result<Vec<EchoConn>> {
        let cmd = json!({
            "op": "echo", "count": count, "bytes": bytes, "chunk": chunk, "timeout": ECHO_OP_TIMEOUT.as_secs_f64(),
            "workers": ECHO_WORKERS,
            "until_file": until_file.display().to_string(),
            "max_seconds": max_time.as_secs_f64(),
        });
        let reply = self.call(cmd, max_time + ECHO_OP_TIMEOUT + Duration::from_secs(30))?;
        serde_json::from_value(reply["results"].clone()).context("echo answer")
    }

    /// Closes the `count` oldest held connections; returns how many are still held.
    pub fn close(&mut self, count: usize) -> Result<usize> {
        let reply = self.call(
            json!({"op": "close", "count": count}),
            Duration::from_secs(10),
        )?;
        reply["held"]
            .as_u64()
            .map(|n| n as usize)
            .context("close answer")
    }

    /// Which held connections are still open (and echo a ping).
    pub fn status(&mut self) -> Result<Vec<HeldConn>> {
        let reply = self.call(json!({"op": "status"}), Duration::from_secs(30))?;
        serde_json::from_value(reply["held"].clone()).context("status answer")
    }
}

impl Drop for Caller {
    fn drop(&mut self) {
        if let Some(mut stdin) = self.stdin.take() {
            let _ = writeln!(stdin, "{}", json!({"op": "exit"}));
        }
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The median of `values` (0 when empty).
pub fn median(values: &[f64]) -> f64 {
    percentile(values, 50.0)
}

/// The `p`-th percentile of `values` (nearest rank; 0 when empty).
pub fn percentile(values: &[f64], p: f64) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * v.len() as f64).ceil() as usize;
    v[rank.clamp(1, v.len()) - 1]
}
