//! Hostile HTTP callers for the L7 bad-input test (`tests/l7_bad_input.rs`): one python3
//! process per attack, run in a workload's cgroup so its connections go through the VIP and
//! the kernel's redirect like any caller's. Every attack is bounded in connections and in
//! time, and reports what each connection got:
//!
//! - [`Attack::Garbage`]: bytes that are not HTTP (a TLS hello, NULs, binary), then read
//!   until the server closes;
//! - [`Attack::HugeHeader`]: one request whose header is `size` bytes, written while reading
//!   (the server answers and closes long before the end);
//! - [`Attack::Slowloris`]: connections that send a request line and then one header byte
//!   per `interval`, never finishing the head, until the server closes them;
//! - [`Attack::StalledPreface`]: connections that send the first 16 bytes of the HTTP/2
//!   preface (`PRI * HTTP/2.0\r\n`) and nothing more, until the server closes them;
//! - [`Attack::RapidReset`]: HTTP/2 with prior knowledge, in raw frames: the preface,
//!   SETTINGS, then `pairs` streams each opened (HEADERS with a literal HPACK block: `:method
//!   GET`, `:scheme http`, `:path /`, `:authority x`, no Huffman) and reset at once
//!   (RST_STREAM CANCEL), in one write; then the server's frames until it closes.
//!
//! Each connection's outcome is its answer's first line (`HTTP/1.1 400 Bad Request`),
//! `goaway N` (the error code of the server's GOAWAY), `closed` (end of stream with no
//! answer), `reset`, or `timeout` (the server held it past the attack's bound: a hang).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::process::{Child, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde::Deserialize;

use crate::Cgroup2;

const ABUSE_PY: &str = r#"
import json, select, socket, struct, sys, threading, time
kind, host, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
count, size, interval, bound = int(sys.argv[4]), int(sys.argv[5]), float(sys.argv[6]), float(sys.argv[7])
outcomes = []

def connect():
    s = socket.create_connection((host, port), timeout=bound)
    return s, time.monotonic()

def read_answer(s, start, deadline):
    # Reads until the server closes (or the deadline); returns (bytes, how it ended).
    data = b""
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return data, "timeout"
        s.settimeout(left)
        try:
            chunk = s.recv(65536)
        except socket.timeout:
            return data, "timeout"
        except OSError:
            return data, "reset"
        if not chunk:
            return data, "closed"
        data += chunk

def first_line(data, ended):
    if ended == "timeout":
        return "timeout"
    if data.startswith(b"HTTP/"):
        return data.split(b"\r\n", 1)[0].decode(errors="replace")
    return ended

def record(answer, start):
    outcomes.append([answer, (time.monotonic() - start) * 1000.0])

def garbage(i):
    payloads = [b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(range(64)),
                b"\x00" * 4096, bytes((i * 7 + j) % 256 for j in range(1, 2048)),
                b"\x01GET / HTTP/1.1\r\n\r\n", b"\xff\xfe\r\n\r\n"]
    s, start = connect()
    try:
        s.sendall(payloads[i % len(payloads)])
    except OSError:
        pass
    data, ended = read_answer(s, start, start + bound)
    record(first_line(data, ended), start)
    s.close()

def huge_header(i):
    s, start = connect()
    head = b"GET / HTTP/1.1\r\nhost: x\r\nx-big: " + b"a" * size + b"\r\n\r\n"
    def send():
        try:
            s.sendall(head)
        except OSError:
            pass
    t = threading.Thread(target=send, daemon=True)
    t.start()
    data, ended = read_answer(s, start, start + bound)
    record(first_line(data, ended), start)
    s.close()

def frame(kind, flags, stream, payload):
    return struct.pack(">I", len(payload))[1:] + bytes([kind, flags]) + struct.pack(">I", stream) + payload

def rapid_reset(i):
    s, start = connect()
    burst = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + frame(4, 0, 0, b"")
    block = bytes([0x82, 0x86, 0x84, 0x01, 0x01]) + b"x"
    for n in range(size):
        sid = 2 * n + 1
        burst += frame(1, 0x5, sid, block) + frame(3, 0, sid, struct.pack(">I", 8))
    try:
        s.sendall(burst)
    except OSError:
        pass
    data, ended = read_answer(s, start, start + bound)
    answer = ended if ended == "timeout" else None
    rest = data
    while answer is None and len(rest) >= 9:
        length = struct.unpack(">I", b"\0" + rest[:3])[0]
        if rest[3] == 7 and length >= 8 and len(rest) >= 9 + length:
            answer = "goaway %d" % struct.unpack(">I", rest[13:17])[0]
        rest = rest[9 + length:]
    record(answer or ended, start)
    s.close()

def held(opening):
    conns = []
    for _ in range(count):
        s, start = connect()
        s.sendall(opening)
        s.setblocking(False)
        conns.append([s, start, b""])
    trickle = b"x-slow: " + b"a" * 4096
    sent = 0
    end = time.monotonic() + bound
    next_byte = time.monotonic() + interval
    while conns and time.monotonic() < end:
        ready, _, _ = select.select([c[0] for c in conns], [], [], 0.05)
        for c in [c for c in conns if c[0] in ready]:
            try:
                chunk = c[0].recv(65536)
            except BlockingIOError:
                continue
            except OSError:
                chunk = None
            if chunk:
                c[2] += chunk
                continue
            record("reset" if chunk is None else first_line(c[2], "closed"), c[1])
            c[0].close()
            conns.remove(c)
        if interval and time.monotonic() >= next_byte:
            byte = trickle[sent % len(trickle):][:1]
            sent += 1
            for c in conns:
                try:
                    c[0].send(byte)
                except OSError:
                    pass
            next_byte += interval
    for c in conns:
        record("timeout", c[1])
        c[0].close()

attacks = {"garbage": garbage, "huge_header": huge_header, "rapid_reset": rapid_reset}
if kind == "slowloris":
    held(b"GET / HTTP/1.1\r\n")
elif kind == "stalled_preface":
    held(b"PRI * HTTP/2.0\r\n")
else:
    for i in range(count):
        try:
            attacks[kind](i)
        except OSError as e:
            outcomes.append(["connect failed: " + repr(e)[:100], 0.0])
print(json.dumps({"outcomes": outcomes}))
"#;

/// One bounded attack (module docs).
#[derive(Debug, Clone, Copy)]
pub enum Attack {
    /// `connections` connections, one after the other, each writing non-HTTP bytes.
    Garbage { connections: usize },
    /// `connections` connections, one after the other, each a request with a `size`-byte
    /// header.
    HugeHeader { connections: usize, size: usize },
    /// `connections` held at once, each sent a header byte every `interval`.
    Slowloris {
        connections: usize,
        interval: Duration,
    },
    /// `connections` held at once, each sent the start of the HTTP/2 preface only.
    StalledPreface { connections: usize },
    /// `connections` HTTP/2 connections, one after the other, each `pairs` streams opened
    /// and reset.
    RapidReset { connections: usize, pairs: usize },
}

impl Attack {
    fn args(&self) -> (&'static str, usize, usize, Duration) {
        match *self {
            Attack::Garbage { connections } => ("garbage", connections, 0, Duration::ZERO),
            Attack::HugeHeader { connections, size } => {
                ("huge_header", connections, size, Duration::ZERO)
            }
            Attack::Slowloris {
                connections,
                interval,
            } => ("slowloris", connections, 0, interval),
            Attack::StalledPreface { connections } => {
                ("stalled_preface", connections, 0, Duration::ZERO)
            }
            Attack::RapidReset { connections, pairs } => {
                ("rapid_reset", connections, pairs, Duration::ZERO)
            }
        }
    }

    /// Starts the attack on `target` from inside `cgroup`; `bound` caps each connection's
    /// wait for the server (for the held connections: the whole attack).
    pub fn spawn(
        &self,
        cgroup: &Cgroup2,
        target: SocketAddr,
        bound: Duration,
    ) -> Result<RunningAttack> {
        let (kind, count, size, interval) = self.args();
        let child = cgroup
            .command("python3")
            .arg("-c")
            .arg(ABUSE_PY)
            .arg(kind)
            .arg(target.ip().to_string())
            .arg(target.port().to_string())
            .arg(count.to_string())
            .arg(size.to_string())
            .arg(interval.as_secs_f64().to_string())
            .arg(bound.as_secs_f64().to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting the {kind} attack"))?;
        Ok(RunningAttack {
            kind,
            child: Some(child),
        })
    }

    /// Runs the attack to its end.
    pub fn run(&self, cgroup: &Cgroup2, target: SocketAddr, bound: Duration) -> Result<Attacked> {
        self.spawn(cgroup, target, bound)?.wait()
    }
}

/// An attack under way; killed by pid if dropped unwaited.
pub struct RunningAttack {
    kind: &'static str,
    child: Option<Child>,
}

impl RunningAttack {
    /// Waits for the attack's end and parses what its connections got.
    pub fn wait(mut self) -> Result<Attacked> {
        let out = self.child.take().expect("waited once").wait_with_output()?;
        if !out.status.success() {
            bail!(
                "the {} attack failed: {}",
                self.kind,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        serde_json::from_slice(&out.stdout).with_context(|| {
            format!(
                "{} attack output: {}",
                self.kind,
                String::from_utf8_lossy(&out.stdout)
            )
        })
    }
}

impl Drop for RunningAttack {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// What an attack's connections got: per connection, its outcome (module docs) and the
/// milliseconds from its connect to that outcome.
#[derive(Debug, Deserialize)]
pub struct Attacked {
    pub outcomes: Vec<(String, f64)>,
}

impl Attacked {
    /// Outcome -> connections.
    pub fn summary(&self) -> BTreeMap<String, usize> {
        let mut summary = BTreeMap::new();
        for (outcome, _) in &self.outcomes {
            *summary.entry(outcome.clone()).or_default() += 1;
        }
        summary
    }

    /// Connections whose outcome satisfies `pred`.
    pub fn count(&self, pred: impl Fn(&str) -> bool) -> usize {
        self.outcomes.iter().filter(|(o, _)| pred(o)).count()
    }

    /// The shortest and longest time to an outcome, in milliseconds.
    pub fn range_ms(&self) -> (f64, f64) {
        self.outcomes
            .iter()
            .fold((f64::INFINITY, 0.0f64), |(lo, hi), (_, ms)| {
                (lo.min(*ms), hi.max(*ms))
            })
    }
}
