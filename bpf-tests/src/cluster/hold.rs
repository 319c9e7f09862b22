//! Long-lived connections a pod holds: a stock python3 program that opens `n` connections
//! through a VIP to [`crate::BackendMode::Echo`] backends at once, then exchanges a small
//! message on each every `period` until a stop file appears, and reports per connection
//! which backend it reached, how many exchanges succeeded and how it ended. With `reconnect`
//! a connection that ends is opened again (as a client with a pool would), so a test can see
//! both the close and where the new connection went.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde::Deserialize;

use crate::cgroup::Cgroup2;
use crate::netns::Netns;

const HOLD_PY: &str = r#"
import argparse, json, os, socket, sys, time
p = argparse.ArgumentParser()
p.add_argument('--target', required=True)
p.add_argument('--port', type=int, required=True)
p.add_argument('--connections', type=int, required=True)
p.add_argument('--period', type=float, required=True)
p.add_argument('--stop-file', required=True)
p.add_argument('--reconnect', action='store_true')
p.add_argument('--max-seconds', type=float, default=300.0)
a = p.parse_args()
start = time.monotonic()
def now():
    return time.monotonic() - start
def open_one(slot):
    r = {'slot': slot, 'backend': None, 'exchanges': 0, 'error': None,
         'opened_at': now(), 'ended_at': None, 's': None}
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(5.0)
    try:
        s.connect((a.target, a.port))
        line = b''
        while not line.endswith(b'\n'):
            c = s.recv(256 - len(line))
            if not c:
                raise OSError('closed before naming itself')
            line += c
        r['backend'] = line.decode().strip()
        r['s'] = s
    except OSError as e:
        r['error'] = 'connect: ' + (str(e) or type(e).__name__)
        r['ended_at'] = now()
        s.close()
    return r
live = [open_one(i) for i in range(a.connections)]
done = []
while not os.path.exists(a.stop_file) and now() < a.max_seconds:
    time.sleep(a.period)
    for i, r in enumerate(live):
        if r['s'] is None:
            continue
        try:
            r['s'].sendall(b'ping\n')
            got = b''
            while len(got) < 5:
                c = r['s'].recv(5 - len(got))
                if not c:
                    raise OSError('closed by peer')
                got += c
            if got != b'ping\n':
                raise OSError('echo differs')
            r['exchanges'] += 1
        except OSError as e:
            r['error'] = str(e) or type(e).__name__
            r['ended_at'] = now()
            r['s'].close()
            r['s'] = None
            done.append(r)
            if a.reconnect:
                live[i] = open_one(r['slot'])
out = []
for r in done + live:
    if r['s'] is not None:
        r['s'].close()
    r.pop('s', None)
    out.append(r)
json.dump({'connections': out, 'elapsed_s': now()}, sys.stdout)
"#;

/// One connection's life.
#[derive(Debug, Clone, Deserialize)]
pub struct HeldConnection {
    pub slot: usize,
    pub backend: Option<String>,
    pub exchanges: u64,
    /// Why it ended (`closed by peer`, `[Errno 104] Connection reset by peer`, `connect:
    /// ...`), `None` while it was still up at the end.
    pub error: Option<String>,
    /// Seconds since the client started.
    pub opened_at: f64,
    pub ended_at: Option<f64>,
}

/// What the client saw.
#[derive(Debug, Clone, Deserialize)]
pub struct HoldReport {
    pub connections: Vec<HeldConnection>,
    pub elapsed_s: f64,
}

impl HoldReport {
    /// Connections that ended before the stop, or never opened.
    pub fn ended(&self) -> Vec<&HeldConnection> {
        self.connections
            .iter()
            .filter(|c| c.error.is_some())
            .collect()
    }

    /// Connections up at the stop.
    pub fn alive(&self) -> Vec<&HeldConnection> {
        self.connections
            .iter()
            .filter(|c| c.error.is_none())
            .collect()
    }
}

/// A running holder; stop it with [`Holder::stop`].
#[derive(Debug)]
pub struct Holder {
    child: Option<Child>,
    stop_file: PathBuf,
}

impl Holder {
    /// Starts `connections` held connections to `target` from inside `cgroup` and `netns`,
    /// one exchange each per `period`; `reconnect` reopens a connection that ends.
    pub fn start(
        target: SocketAddr,
        connections: usize,
        period: Duration,
        reconnect: bool,
        cgroup: &Cgroup2,
        netns: &Netns,
        stop_file: &Path,
    ) -> Result<Self> {
        let _ = std::fs::remove_file(stop_file);
        let mut cmd: Command = netns.command("python3");
        cmd.arg("-c").arg(HOLD_PY);
        cmd.arg("--target").arg(target.ip().to_string());
        cmd.arg("--port").arg(target.port().to_string());
        cmd.arg("--connections").arg(connections.to_string());
        cmd.arg("--period").arg(period.as_secs_f64().to_string());
        cmd.arg("--stop-file").arg(stop_file);
        if reconnect {
            cmd.arg("--reconnect");
        }
        cgroup.enter(&mut cmd);
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("spawning the python3 holder")?;
        Ok(Holder {
            child: Some(child),
            stop_file: stop_file.to_owned(),
        })
    }

    /// Creates the stop file and collects the report.
    pub fn stop(mut self) -> Result<HoldReport> {
        std::fs::write(&self.stop_file, b"")?;
        let child = self.child.take().context("holder already stopped")?;
        let out = child.wait_with_output()?;
        if !out.status.success() {
            bail!(
                "python3 holder failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        serde_json::from_slice(&out.stdout).with_context(|| {
            format!(
                "holder output is not a report: {}",
                String::from_utf8_lossy(&out.stdout)
            )
        })
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
