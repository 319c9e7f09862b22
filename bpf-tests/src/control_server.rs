//! One `sockmesh-control` process under test: spawn on a fixed address with a token, TLS
//! (a CA and a pair from `sockmesh-control tls init`, or plain http when a test says so)
//! and a unix socket, following a config file (127.0.0.1) or the Kubernetes source against a fake
//! API server (inside the cluster testbed's fabric namespace), stop and start again on the
//! same address and state dir, read its API, and kill it on drop.
//!
//! The process contract is docs/control-plane.md.

use std::ffi::OsString;
use std::fs::{self, OpenOptions};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::Value;

use crate::admin::http_get;

/// How long the control plane may take to serve after start.
pub const CONTROL_UP_TIMEOUT: Duration = Duration::from_secs(15);
/// The token every TCP client of the control plane under test presents.
pub const CONTROL_TOKEN: &str = "bpf-tests-control-token";
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
const LOG_TAIL_LINES: usize = 60;

/// Path of the control plane binary under test, from `SOCKMESH_CONTROL_BIN`.
///
/// # Panics
/// When the variable is unset or names no file (`cargo xtask test` builds it beside the
/// agent and sets it; by hand: `cargo build --release -p sockmesh-control --bins`).
pub fn control_bin() -> PathBuf {
    const HOW: &str = "SOCKMESH_CONTROL_BIN not set: run the bpf-tests through `cargo xtask \
                       test`, or build it with `cargo build --release -p sockmesh-control \
                       --bins` and point SOCKMESH_CONTROL_BIN at it";
    match std::env::var_os("SOCKMESH_CONTROL_BIN").map(PathBuf::from) {
        Some(p) if p.is_file() => p,
        Some(p) => panic!("{HOW} (it names {}, which is not a file)", p.display()),
        None => panic!("{HOW}"),
    }
}

/// A plain or TLS stream.
trait ReadWrite: Read + Write {}
impl<T: Read + Write> ReadWrite for T {}

/// Where a control plane under test takes its desired state from.
#[derive(Debug, Clone)]
enum Source {
    /// `<dir>/mesh.yaml`, re-read every 50 ms.
    File,
    /// The Kubernetes source (`KUBECONFIG`), run inside the network namespace `netns`.
    Kubernetes { kubeconfig: PathBuf, netns: PathBuf },
}

/// A control plane serving on `addr` (bearer token; TLS with `<dir>/control-tls/` unless
/// plain) and `<dir>/control.sock`, storing revisions in `<dir>/control-state`, logging to
/// `<dir>/control.log`.
#[derive(Debug)]
pub struct ControlServer {
    dir: PathBuf,
    addr: SocketAddr,
    source: Source,
    /// Serves https (the default) or, for tests of the HTTP layer itself, plain http with
    /// `--insecure-plaintext`.
    tls: bool,
    child: Option<Child>,
    starts: u32,
}

impl ControlServer {
    /// Writes the token file and starts the process on `127.0.0.1:<port>`, serving
    /// `<dir>/mesh.yaml` (which must exist).
    pub fn spawn(dir: &Path, port: u16) -> Result<Self> {
        Self::spawn_with(
            dir,
            SocketAddr::from(([127, 0, 0, 1], port)),
            Source::File,
            true,
        )
    }

    /// [`ControlServer::spawn`] serving plain http (`--insecure-plaintext`): for tests that
    /// write raw HTTP to the API socket.
    pub fn spawn_plaintext(dir: &Path, port: u16) -> Result<Self> {
        Self::spawn_with(
            dir,
            SocketAddr::from(([127, 0, 0, 1], port)),
            Source::File,
            false,
        )
    }

    /// Writes the token file and starts `--source kubernetes` with `kubeconfig`, inside the
    /// network namespace `netns` (a handle path), serving agents on `addr` there.
    pub fn spawn_kubernetes(
        dir: &Path,
        addr: SocketAddr,
        kubeconfig: &Path,
        netns: &Path,
    ) -> Result<Self> {
        let source = Source::Kubernetes {
            kubeconfig: kubeconfig.to_owned(),
            netns: netns.to_owned(),
        };
        Self::spawn_with(dir, addr, source, true)
    }

    fn spawn_with(dir: &Path, addr: SocketAddr, source: Source, tls: bool) -> Result<Self> {
        fs::write(dir.join("control-token"), format!("{CONTROL_TOKEN}\n"))?;
        let mut server = ControlServer {
            dir: dir.to_owned(),
            addr,
            source,
            tls,
            child: None,
            starts: 0,
        };
        if tls {
            server.tls_init()?;
        }
        server.start()?;
        Ok(server)
    }

    /// Starts the process again after [`ControlServer::stop`]: same port, config, state.
    pub fn start(&mut self) -> Result<()> {
        if self.child.is_some() {
            bail!("the control plane is already running");
        }
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())?;
        self.starts += 1;
        writeln!(log, "===== bpf-tests: control start #{} =====", self.starts)?;
        let _ = fs::remove_file(self.socket());
        let mut cmd = Command::new(control_bin());
        match &self.source {
            Source::File => {
                cmd.arg("--config")
                    .arg(self.config_path())
                    .args(["--watch-interval-ms", "50"]);
            }
            Source::Kubernetes { kubeconfig, netns } => {
                // As deploy/ runs it: agents authenticate with their ServiceAccount tokens,
                // which the (fake) API server binds to their nodes.
                cmd.args(["--source", "kubernetes", "--kube-debounce-ms", "50"])
                    .arg("--kube-token-review")
                    .env("KUBECONFIG", kubeconfig)
                    .env_remove("KUBERNETES_SERVICE_HOST");
                crate::netns::enter_path(netns, &mut cmd)?;
            }
        }
        if self.tls {
            cmd.arg("--tls-cert")
                .arg(self.tls_dir().join("server.pem"))
                .arg("--tls-key")
                .arg(self.tls_dir().join("server-key.pem"));
        } else {
            cmd.arg("--insecure-plaintext");
        }
        let child = cmd
            .arg("--listen")
            .arg(self.addr.to_string())
            .arg("--listen-unix")
            .arg(self.socket())
            .arg("--token-file")
            .arg(self.token_path())
            .arg("--metrics-addr")
            .arg("127.0.0.1:0")
            .arg("--state-dir")
            .arg(self.dir.join("control-state"))
            .env("NO_COLOR", "1")
            .env_remove("SOCKMESH_CONTROL_TOKEN")
            .env_remove("SOCKMESH_CONTROL_CONFIG")
            .env_remove("SOCKMESH_CONTROL_SOURCE")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("spawning sockmesh-control")?;
        self.child = Some(child);
        let deadline = Instant::now() + CONTROL_UP_TIMEOUT;
        let mut last = String::new();
        while Instant::now() < deadline {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                self.child = None;
                bail!("sockmesh-control exited with {status}\n{}", self.log_tail());
            }
            match self.status() {
                Ok(_) => return Ok(()),
                Err(e) => last = format!("{e:#}"),
            }
            thread::sleep(Duration::from_millis(50));
        }
        bail!(
            "sockmesh-control not serving after {CONTROL_UP_TIMEOUT:?} ({last})\n{}",
            self.log_tail()
        )
    }

    /// SIGTERM and wait (SIGKILL after a bound, reported as an error).
    pub fn stop(&mut self) -> Result<()> {
        let mut child = self
            .child
            .take()
            .context("the control plane is not running")?;
        // SAFETY: signalling our own child, not yet reaped.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + STOP_TIMEOUT;
        while Instant::now() < deadline {
            if child.try_wait()?.is_some() {
                return Ok(());
            }
            thread::sleep(Duration::from_millis(20));
        }
        child.kill()?;
        child.wait()?;
        bail!("sockmesh-control ignored SIGTERM; killed it")
    }

    /// The running process's pid.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// SIGKILL and reap: the control plane gone at once, as when its node dies.
    pub fn kill(&mut self) -> Result<()> {
        let mut child = self
            .child
            .take()
            .context("the control plane is not running")?;
        child.kill()?;
        child.wait()?;
        Ok(())
    }

    /// `https://<addr>` (`http://` when plain), for the agent's `--control` and the CLI's
    /// `--control-url`.
    pub fn url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }

    /// What the agent and the CLI add to [`ControlServer::url`] to trust it: `--control-ca`
    /// with the CA, or `--insecure-plaintext`.
    pub fn trust_args(&self) -> Vec<OsString> {
        if self.tls {
            vec!["--control-ca".into(), self.ca_path().into()]
        } else {
            vec!["--insecure-plaintext".into()]
        }
    }

    /// The CA that signed the control plane's certificate.
    pub fn ca_path(&self) -> PathBuf {
        self.tls_dir().join("ca.pem")
    }

    fn tls_dir(&self) -> PathBuf {
        self.dir.join("control-tls")
    }

    /// `sockmesh-control tls init` for this address: what an operator runs.
    fn tls_init(&self) -> Result<()> {
        let out = Command::new(control_bin())
            .args([
                "tls",
                "init",
                "--name",
                &self.addr.ip().to_string(),
                "--dir",
            ])
            .arg(self.tls_dir())
            .output()
            .context("running sockmesh-control tls init")?;
        if !out.status.success() {
            bail!(
                "sockmesh-control tls init failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.join("mesh.yaml")
    }

    pub fn token_path(&self) -> PathBuf {
        self.dir.join("control-token")
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.join("control.sock")
    }

    fn log_path(&self) -> PathBuf {
        self.dir.join("control.log")
    }

    /// Replaces the config file atomically, as an editor would.
    pub fn write_config(&self, yaml: &str) -> Result<()> {
        let tmp = self.config_path().with_extension("yaml.tmp");
        fs::write(&tmp, yaml)?;
        fs::rename(&tmp, self.config_path()).context("replacing the control's config")
    }

    /// `GET path` on the unix socket (no token), expecting 200 and JSON.
    pub fn get_json(&self, path: &str) -> Result<Value> {
        let r = http_get(&self.socket(), path, REQUEST_TIMEOUT)?;
        if r.status != 200 {
            bail!("GET {path} answered {}: {}", r.status, r.body);
        }
        serde_json::from_str(&r.body).with_context(|| format!("{path} is not JSON: {}", r.body))
    }

    pub fn status(&self) -> Result<Value> {
        self.get_json("/v1/status")
    }

    /// The head version's snapshot (`version`, `fingerprint`, `config`).
    pub fn snapshot(&self) -> Result<Value> {
        self.get_json("/v1/snapshot")
    }

    /// Polls the head snapshot until `pred` holds on it; returns it.
    pub fn wait_snapshot(
        &self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> Result<Value> {
        self.wait_json("/v1/snapshot", what, timeout, pred)
    }

    /// `method path` on TCP (in TLS verified with [`ControlServer::ca_path`] unless plain)
    /// with the given `Authorization` header value (or none); the status code of the reply.
    pub fn tcp_status(&self, method: &str, path: &str, authorization: Option<&str>) -> Result<u16> {
        let tcp = TcpStream::connect_timeout(&self.addr, REQUEST_TIMEOUT)?;
        tcp.set_read_timeout(Some(REQUEST_TIMEOUT))?;
        let mut stream: Box<dyn ReadWrite> = if self.tls {
            let tls = sockmesh_tls::ClientTls::from_ca_file(&self.ca_path())?;
            let name = sockmesh_tls::client::server_name(&self.addr.to_string())?;
            let conn = rustls::ClientConnection::new(tls.config(), name)?;
            Box::new(rustls::StreamOwned::new(conn, tcp))
        } else {
            Box::new(tcp)
        };
        let mut req = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n",
            self.addr
        );
        if let Some(a) = authorization {
            req.push_str(&format!("Authorization: {a}\r\n"));
        }
        // A POST carries a rollback a 401 must never act on.
        let body = if method == "POST" {
            r#"{"version": 1}"#
        } else {
            ""
        };
        if !body.is_empty() {
            req.push_str(&format!(
                "Content-Type: application/json\r\nContent-Length: {}\r\n",
                body.len()
            ));
        }
        req.push_str("\r\n");
        req.push_str(body);
        stream.write_all(req.as_bytes())?;
        let mut raw = Vec::new();
        match stream.read_to_end(&mut raw) {
            // The server closes after `Connection: close` without a TLS close_notify.
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !raw.is_empty() => {}
            other => {
                other?;
            }
        }
        let head = String::from_utf8_lossy(&raw);
        head.split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .with_context(|| format!("no status in {head:?}"))
    }

    /// Polls `/v1/status` until `pred` holds; the error carries the last status and log.
    pub fn wait_status(
        &self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> Result<Value> {
        self.wait_json("/v1/status", what, timeout, pred)
    }

    fn wait_json(
        &self,
        path: &str,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> Result<Value> {
        let deadline = Instant::now() + timeout;
        let mut last = Value::Null;
        while Instant::now() < deadline {
            if let Ok(s) = self.get_json(path) {
                if pred(&s) {
                    return Ok(s);
                }
                last = s;
            }
            thread::sleep(Duration::from_millis(25));
        }
        bail!(
            "timed out after {timeout:?} waiting for control {what}; last {path}: {last:#}\n{}",
            self.log_tail()
        )
    }

    /// Polls `/v1/agents` until agent `node` matches `pred`; returns its entry.
    pub fn wait_agent(
        &self,
        node: &str,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> Result<Value> {
        let deadline = Instant::now() + timeout;
        let mut last = Value::Null;
        while Instant::now() < deadline {
            if let Ok(agents) = self.get_json("/v1/agents") {
                let entry = agents
                    .as_array()
                    .and_then(|a| a.iter().find(|e| e["agent"] == node).cloned());
                if let Some(e) = entry {
                    if pred(&e) {
                        return Ok(e);
                    }
                    last = e;
                }
            }
            thread::sleep(Duration::from_millis(50));
        }
        bail!(
            "timed out after {timeout:?} waiting for agent {node} {what}; last {last:#}\n{}",
            self.log_tail()
        )
    }

    pub fn log(&self) -> String {
        fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    pub fn log_tail(&self) -> String {
        let log = self.log();
        let lines: Vec<&str> = log.lines().collect();
        format!(
            "----- control log tail ({}) -----\n{}\n-----",
            self.log_path().display(),
            lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n")
        )
    }
}

impl Drop for ControlServer {
    fn drop(&mut self) {
        if thread::panicking() {
            eprintln!("{}", self.log_tail());
        }
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
