//! Mode (c)'s proxy hop: Debian's haproxy in `mode tcp` in front of the bench backend,
//! started in the foreground by us and stopped by pid.

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
        // Let the kernel pick a free port, then hand it to haproxy; the gap is a few µs and
        // a collision would show up as a clear bind error below.
        let frontend = TcpListener::bind("127.0.0.1:0")?.local_addr()?;
        let config = dir.join("haproxy.cfg");
        fs::write(&config, config_text(frontend, backend))?;
        let log_path = dir.join("haproxy.log");
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
