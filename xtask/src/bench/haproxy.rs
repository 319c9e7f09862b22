//! Mode (c)'s proxy hop: Debian's haproxy in `mode tcp` in front of the bench backend,
//! started in the foreground by us and stopped by pid. The L7 section (`l7/`) starts more
//! haproxy processes the same way with configs of its own ([`Haproxy::start_with`]).

use std::fs;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::command;

pub struct Haproxy {
    child: Child,
    frontend: SocketAddr,
}

impl Haproxy {
    /// Writes a config for `backend` into `dir` and starts haproxy on 127.0.0.1.
    pub fn start(dir: &Path, backend: SocketAddr) -> Result<Self> {
        let frontend = free_port("127.0.0.1")?;
        Self::start_with(dir, "haproxy", frontend, &config_text(frontend, backend))
    }

    /// Writes `config` to `<dir>/<name>.cfg` and starts haproxy on it (stderr to
    /// `<dir>/<name>.log`); ready once `frontend` accepts connections.
    pub fn start_with(dir: &Path, name: &str, frontend: SocketAddr, text: &str) -> Result<Self> {
        let config = dir.join(format!("{name}.cfg"));
        fs::write(&config, text)?;
        let log_path = dir.join(format!("{name}.log"));
        let log = fs::File::create(&log_path)?;
        let mut cmd = Command::new("haproxy");
        // -db: stay in the foreground, so the pid we hold is haproxy's own.
        cmd.arg("-db")
            .arg("-f")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .process_group(0);
        eprintln!("xtask: $ {}", command::describe(&cmd));
        let child = cmd
            .spawn()
            .context("start haproxy (cargo xtask setup installs it)")?;
        let mut proxy = Self { child, frontend };
        proxy.wait_listening(&log_path)?;
        Ok(proxy)
    }

    pub fn frontend(&self) -> SocketAddr {
        self.frontend
    }

    /// haproxy's own pid (`-db`: no fork), for its CPU time.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    fn wait_listening(&mut self, log: &Path) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait()? {
                let err = fs::read_to_string(log).unwrap_or_default();
                bail!("haproxy exited at start ({status}): {}", err.trim());
            }
            if TcpStream::connect_timeout(&self.frontend, Duration::from_millis(100)).is_ok() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!("haproxy is not listening on {} after 5 s", self.frontend)
    }
}

/// A port on `ip` that was free a moment ago: the kernel picks it, then we hand it to
/// haproxy; the gap is a few µs and a collision would show up as a clear bind error.
pub fn free_port(ip: &str) -> Result<SocketAddr> {
    Ok(TcpListener::bind((ip, 0))
        .with_context(|| format!("bind {ip}:0"))?
        .local_addr()?)
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        // SIGTERM is haproxy's immediate stop; SIGKILL only if it hangs.
        // SAFETY: kill(2) on our own child, not yet reaped, so the pid is still ours.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn config_text(frontend: SocketAddr, backend: SocketAddr) -> String {
    // One plain TCP hop: no logging, no health checks, timeouts only so haproxy does not warn.
    format!(
        "global
    maxconn 4000

defaults
    mode tcp
    timeout connect 2s
    timeout client 10s
    timeout server 10s

frontend bench
    bind {frontend}
    default_backend echo

backend echo
    server echo1 {backend}
"
    )
}
