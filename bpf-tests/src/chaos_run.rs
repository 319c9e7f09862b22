//! Restart under load: a steady client load through VIPs plus long-lived
//! connections, while the agent is SIGKILLed at random moments and restarted on the same
//! pins. Shared by `tests/chaos_restart.rs` (a short run) and `cargo xtask chaos` (100 kills).
//!
//! What a run measures ([`ChaosReport`]):
//! - every connect of the load clients succeeded (and reached a backend);
//! - every long-lived connection opened before the first kill still echoes at the end;
//! - each restarted agent answered `GET /ready` 200 on its admin socket (a restart that
//!   hangs for [`READY_GIVE_UP`] fails the run); how long each took is kept and printed
//!   (median, p90, max, against [`READY_TARGET`]), never asserted: it is a timing on a
//!   shared machine, not a promise a test can keep;
//! - the sockmesh programs, maps and links are the very same objects before and after
//!   (same kernel ids: adoption loads nothing), nothing unpinned was left behind, and after
//!   the final cleanup none of them exist any more ([`crate::chaos_objects`]).
//!
//! Kill moments: most kills come a random time (up to `max_uptime`) after the agent is ready
//! (while it drains events, refreshes maps, answers a scrape or applies a reloaded config);
//! every `early_kill_every`-th kill comes a random time after spawning, before the agent can
//! be ready (during adoption itself). Every `reload_every`-th round rewrites the config
//! (a weight change) just before the kill, so some kills land while a config is applied.
//!
//! Addresses (the chaos rows of the table in lib.rs): VIPs 127.100.70.1-3 port 18700, backends 127.0.0.2-4:18701
//! (load) and 127.0.0.5-6:18702 (echo).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use serde::Deserialize;

use crate::chaos_objects::{LeakCheck, Snapshot};
use crate::health_yaml::{health_mesh, HealthService};
use crate::{
    loopback_addrs, Agent, BackendMode, ClientReport, ConnectClient, ServiceYaml, TcpBackendSet,
    TestBed,
};

/// What a restart to `/ready` should take; printed beside the measured times (and counted
/// in the summary when exceeded), not enforced.
pub const READY_TARGET: Duration = Duration::from_secs(1);
/// How long a restart may take before the run gives up on it (a hang, not a slow start).
pub const READY_GIVE_UP: Duration = Duration::from_secs(30);

/// How a run is shaped; see the module docs.
#[derive(Debug, Clone)]
pub struct ChaosOptions {
    /// Resource name (cgroup and pin directory `sockmesh-test-<pid>-<name>`).
    pub name: String,
    pub kills: usize,
    pub seed: u64,
    /// Long-lived echo connections held across all kills.
    pub long_lived: usize,
    /// Most time an agent runs after it is ready before it is killed.
    pub max_uptime: Duration,
    /// Every n-th kill comes before the agent is ready (0: never).
    pub early_kill_every: usize,
    /// Every n-th round rewrites the config just before the kill (0: never).
    pub reload_every: usize,
}

impl ChaosOptions {
    pub fn new(name: &str, kills: usize, seed: u64) -> Self {
        ChaosOptions {
            name: name.to_string(),
            kills,
            seed,
            long_lived: 16,
            max_uptime: Duration::from_millis(300),
            early_kill_every: 4,
            reload_every: 5,
        }
    }
}

/// What a run saw.
#[derive(Debug, Clone)]
pub struct ChaosReport {
    pub seed: u64,
    pub kills: usize,
    pub early_kills: usize,
    pub reloads: usize,
    /// Spawn to `/ready` 200, for every start that was not killed early (restarts only).
    pub ready_times: Vec<Duration>,
    pub connects: usize,
    pub failed_connects: Vec<String>,
    pub long_lived: usize,
    pub pings: u64,
    pub broken: Vec<String>,
    pub leaks: LeakCheck,
    /// Owned objects still present after the final `cleanup` (must be none).
    pub left_after_cleanup: Snapshot,
    pub elapsed: Duration,
}

impl ChaosReport {
    pub fn ready_median(&self) -> Duration {
        percentile(&self.ready_times, 0.5)
    }

    pub fn ready_max(&self) -> Duration {
        self.ready_times.iter().copied().max().unwrap_or_default()
    }

    /// Restarts that took longer than [`READY_TARGET`] (reported, not a violation).
    pub fn ready_over_target(&self) -> usize {
        self.ready_times
            .iter()
            .filter(|t| **t > READY_TARGET)
            .count()
    }

    /// Everything that breaks the promise; empty for a good run.
    pub fn violations(&self) -> Vec<String> {
        let mut v = Vec::new();
        if !self.failed_connects.is_empty() {
            v.push(format!(
                "{} of {} connects failed; first: {:?}",
                self.failed_connects.len(),
                self.connects,
                &self.failed_connects[..self.failed_connects.len().min(5)]
            ));
        }
        if !self.broken.is_empty() {
            v.push(format!(
                "{} of {} long-lived connections broke: {:?}",
                self.broken.len(),
                self.long_lived,
                self.broken
            ));
        }
        if !self.leaks.is_clean() {
            v.push(format!(
                "kernel objects leaked or changed: {}",
                self.leaks.summary()
            ));
        }
        if !self.left_after_cleanup.is_empty() {
            v.push(format!(
                "objects left after cleanup:\n{}",
                self.left_after_cleanup.describe()
            ));
        }
        v
    }

    /// The human summary `cargo xtask chaos` and the test print.
    pub fn summary(&self) -> String {
        let ms = |d: Duration| format!("{:.1} ms", d.as_secs_f64() * 1e3);
        format!(
            "chaos: {} SIGKILLs ({} before ready, {} during config reloads) in {:.1} s, seed {}\n\
             chaos: restart to /ready 200: median {}, p90 {}, max {} over {} restarts ({} over the {} target)\n\
             chaos: connects through VIPs: {} ok, {} failed\n\
             chaos: long-lived connections: {} held, {} echo round trips, {} broken\n\
             chaos: {}\n\
             chaos: after cleanup: {} of the run's objects left",
            self.kills,
            self.early_kills,
            self.reloads,
            self.elapsed.as_secs_f64(),
            self.seed,
            ms(self.ready_median()),
            ms(percentile(&self.ready_times, 0.9)),
            ms(self.ready_max()),
            self.ready_times.len(),
            self.ready_over_target(),
            ms(READY_TARGET),
            self.connects - self.failed_connects.len(),
            self.failed_connects.len(),
            self.long_lived,
            self.pings,
            self.broken.len(),
            self.leaks.summary(),
            self.left_after_cleanup.counts().0
                + self.left_after_cleanup.counts().1
                + self.left_after_cleanup.counts().2,
        )
    }
}

fn percentile(times: &[Duration], q: f64) -> Duration {
    if times.is_empty() {
        return Duration::ZERO;
    }
    let mut sorted = times.to_vec();
    sorted.sort();
    let i = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted[i]
}

/// splitmix64: reproducible kill moments from a printed seed, without a dependency.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..=max`.
    pub fn duration(&mut self, max: Duration) -> Duration {
        let nanos = max.as_nanos() as u64;
        if nanos == 0 {
            return Duration::ZERO;
        }
        Duration::from_nanos(self.next_u64() % (nanos + 1))
    }
}

/// A seed from the clock, for runs that do not pass one.
pub fn clock_seed() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(7)
}

/// Polls `GET /ready` every millisecond until 200; returns the time since `since`.
pub fn wait_ready_since(agent: &mut Agent, since: Instant, give_up: Duration) -> Result<Duration> {
    let deadline = since + give_up;
    loop {
        if let Ok(r) = agent.get("/ready") {
            if r.status == 200 {
                return Ok(since.elapsed());
            }
        }
        if Instant::now() >= deadline {
            // wait_ready carries the log tail and notices an agent that exited.
            agent.wait_ready(Duration::from_millis(1))?;
            bail!("agent not ready {give_up:?} after spawn");
        }
        thread::sleep(Duration::from_millis(1));
    }
}

/// SIGKILL, as an OOM killer or a node problem would end the agent: no handler runs.
pub fn sigkill(agent: &Agent) -> Result<()> {
    let pid = agent.pid().context("agent is not running")?;
    // SAFETY: signalling our own unreaped child by pid; Agent::restart reaps it.
    let rc = unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    ensure!(
        rc == 0,
        "kill -9 {pid}: {}",
        std::io::Error::last_os_error()
    );
    Ok(())
}

/// A long-lived connection's life, as the holder reports it.
#[derive(Debug, Clone, Deserialize)]
pub struct HeldConnection {
    pub backend: Option<String>,
    pub peer: Option<String>,
    pub pings: u64,
    /// Set when the final echo round succeeded.
    pub last_ok: bool,
    pub error: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
struct HolderReport {
    results: Vec<HeldConnection>,
}

/// Opens N connections through a VIP, writes the ready file once all are open (or failed),
/// then sends a numbered line on each every `interval` and checks its echo until the stop
/// file appears; one last round decides `last_ok`. A stock python3 program.
const HOLDER_PY: &str = r#"
import argparse, json, os, socket, sys, time
p = argparse.ArgumentParser()
p.add_argument('--target', required=True)
p.add_argument('--port', type=int, required=True)
p.add_argument('--connections', type=int, required=True)
p.add_argument('--interval-ms', type=float, default=100.0)
p.add_argument('--ready-file', required=True)
p.add_argument('--until-file', required=True)
p.add_argument('--max-seconds', type=float, default=120.0)
p.add_argument('--timeout', type=float, default=5.0)
a = p.parse_args()
conns = []
for i in range(a.connections):
    r = {'backend': None, 'peer': None, 'pings': 0, 'last_ok': False, 'error': None}
    s = None
    try:
        s = socket.create_connection((a.target, a.port), timeout=a.timeout)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        r['peer'] = '%s:%d' % s.getpeername()[:2]
        line = b''
        while not line.endswith(b'\n'):
            c = s.recv(256)
            if not c:
                raise OSError('closed before naming itself')
            line += c
        r['backend'] = line.decode().strip()
    except OSError as e:
        r['error'] = 'open: %s' % (e,)
        s = None
    conns.append([s, r])
open(a.ready_file, 'w').close()
def ping(s, r, i, seq):
    msg = b'%d %d\n' % (i, seq)
    s.sendall(msg)
    got = b''
    while len(got) < len(msg):
        c = s.recv(len(msg) - len(got))
        if not c:
            raise OSError('closed by the peer')
        got += c
    if got != msg:
        raise OSError('echo %r differs from %r' % (got, msg))
    r['pings'] += 1
start = time.monotonic()
seq = 0
while not os.path.exists(a.until_file) and time.monotonic() - start < a.max_seconds:
    for i, (s, r) in enumerate(conns):
        if s is not None and r['error'] is None:
            try:
                ping(s, r, i, seq)
            except OSError as e:
                r['error'] = 'round %d: %s' % (seq, e)
    seq += 1
    time.sleep(a.interval_ms / 1000.0)
for i, (s, r) in enumerate(conns):
    if s is not None and r['error'] is None:
        try:
            ping(s, r, i, seq)
            r['last_ok'] = True
        except OSError as e:
            r['error'] = 'final round: %s' % (e,)
    if s is not None:
        s.close()
json.dump({'results': [r for _, r in conns]}, sys.stdout)
"#;

/// The holder process.
pub struct Holder {
    child: Option<Child>,
    stop: PathBuf,
}

impl Holder {
    /// Starts the holder in `bed`'s cgroup and waits until its connections are open.
    pub fn start(bed: &TestBed, vip: SocketAddr, n: usize, max_time: Duration) -> Result<Holder> {
        let ready = bed.dir().join("holder-ready");
        let stop = bed.dir().join("holder-stop");
        let mut cmd = bed.cgroup().command("python3");
        cmd.arg("-c").arg(HOLDER_PY);
        cmd.args(["--target", &vip.ip().to_string()]);
        cmd.args(["--port", &vip.port().to_string()]);
        cmd.args(["--connections", &n.to_string()]);
        cmd.arg("--ready-file").arg(&ready);
        cmd.arg("--until-file").arg(&stop);
        cmd.args(["--max-seconds", &format!("{}", max_time.as_secs_f64())]);
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let child = cmd.spawn().context("spawning the python3 holder")?;
        let mut holder = Holder {
            child: Some(child),
            stop,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !ready.exists() {
            if Instant::now() > deadline {
                bail!("the holder did not open its {n} connections within 20 s");
            }
            if let Some(c) = holder.child.as_mut() {
                if let Some(status) = c.try_wait()? {
                    bail!("the holder exited early ({status})");
                }
            }
            thread::sleep(Duration::from_millis(20));
        }
        Ok(holder)
    }

    /// Ends the holder (after one last echo round) and returns its report.
    pub fn finish(mut self) -> Result<Vec<HeldConnection>> {
        std::fs::write(&self.stop, "")?;
        let child = self.child.take().context("holder already finished")?;
        let out = child.wait_with_output()?;
        ensure!(
            out.status.success(),
            "holder failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
        let report: HolderReport = serde_json::from_slice(&out.stdout).with_context(|| {
            format!(
                "holder output is not a report: {}",
                String::from_utf8_lossy(&out.stdout)
            )
        })?;
        Ok(report.results)
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = std::fs::write(&self.stop, "");
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

mod plan;
pub use plan::*;
