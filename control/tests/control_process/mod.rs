//! A `sockmesh-control` process under test: its temp dir (config file, token, state dir,
//! socket, log), its API over the unix socket and over TCP, and a stop on drop.

#![allow(dead_code)] // Each test crate uses a different part of it.

use std::fs;
use std::io::Write;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use sockmesh_cli::control::{ControlClient, ControlError};
use sockmesh_cli::http::{self, HttpResponse};
use sockmesh_model::{ControlAddress, Token};

pub const TOKEN: &str = "test-token-0123456789";
pub const WAIT: Duration = Duration::from_secs(10);

pub struct Control {
    pub dir: tempfile::TempDir,
    child: Option<Child>,
    /// The TCP API address, once known (from `/v1/status`).
    pub tcp: Option<String>,
    pub metrics: Option<String>,
    extra: Vec<String>,
    env: Vec<(String, String)>,
}

impl Control {
    /// Writes `yaml` as the config and starts the control plane on it, with a unix
    /// socket, a TCP listener on a free port, a token and a state dir.
    pub fn start(yaml: &str) -> Self {
        Self::start_with(yaml, &[])
    }

    pub fn start_with(yaml: &str, extra: &[&str]) -> Self {
        Self::start_with_env(yaml, extra, &[])
    }

    /// [`Control::start_with`], with environment variables set for the process.
    pub fn start_with_env(yaml: &str, extra: &[&str], env: &[(&str, &str)]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("token"), format!("{TOKEN}\n")).unwrap();
        let mut control = Control {
            dir,
            child: None,
            tcp: None,
            metrics: None,
            extra: extra.iter().map(|s| (*s).to_owned()).collect(),
            env: env
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        };
        control.write_config(yaml);
        control.spawn("127.0.0.1:0");
        control
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn socket(&self) -> PathBuf {
        self.path("control.sock")
    }

    /// Replaces the config file atomically, as an operator's editor would.
    pub fn write_config(&self, yaml: &str) {
        let tmp = self.path("mesh.yaml.tmp");
        fs::write(&tmp, yaml).unwrap();
        fs::rename(&tmp, self.path("mesh.yaml")).unwrap();
    }

    /// The command line, without spawning (tests of start-up failures run it themselves).
    pub fn command(&self, listen: &str) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_sockmesh-control"));
        cmd.arg("--config")
            .arg(self.path("mesh.yaml"))
            .arg("--listen")
            .arg(listen)
            .arg("--listen-unix")
            .arg(self.socket())
            .arg("--token-file")
            .arg(self.path("token"))
            .arg("--metrics-addr")
            .arg("127.0.0.1:0")
            .arg("--state-dir")
            .arg(self.path("state"))
            .arg("--watch-interval-ms")
            .arg("20")
            .args(&self.extra)
            // Plain http unless the test serves TLS itself: these tests are about the
            // API, control_tls.rs about the channel.
            .args((!self.extra.iter().any(|a| a == "--tls-cert")).then_some("--insecure-plaintext"))
            .env("NO_COLOR", "1")
            .env_remove("SOCKMESH_CONTROL_TOKEN")
            .envs(self.env.iter().map(|(k, v)| (k, v)));
        cmd
    }

    fn spawn(&mut self, listen: &str) {
        let _ = fs::remove_file(self.socket());
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.path("control.log"))
            .unwrap();
        let child = self
            .command(listen)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        let deadline = Instant::now() + WAIT;
        loop {
            if let Ok(status) = self.unix().get_json("/v1/status") {
                self.tcp = status.value["listen"][0].as_str().map(str::to_owned);
                self.metrics = status.value["metrics_addr"].as_str().map(str::to_owned);
                return;
            }
            if let Some(code) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("sockmesh-control exited with {code}:\n{}", self.log());
            }
            assert!(Instant::now() < deadline, "control not up:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM, wait, start again on the same TCP port and state dir.
    pub fn restart(&mut self) {
        self.stop();
        let listen = self.tcp.clone().unwrap();
        self.spawn(&listen);
    }

    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: our own unreaped child.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let deadline = Instant::now() + WAIT;
            while child.try_wait().unwrap().is_none() {
                if Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!("control ignored SIGTERM");
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }

    pub fn log(&self) -> String {
        fs::read_to_string(self.path("control.log")).unwrap_or_default()
    }

    pub fn unix(&self) -> ControlClient {
        ControlClient::new(ControlAddress::Unix(self.socket()))
    }

    pub fn tcp(&self) -> ControlClient {
        ControlClient::new(ControlAddress::Tcp {
            authority: self.tcp.clone().unwrap(),
            tls: false,
        })
        .with_token(Token::new(TOKEN, "test").unwrap())
    }

    pub fn get(&self, path: &str) -> Value {
        self.tcp()
            .get_json(path)
            .unwrap_or_else(|e| panic!("GET {path}: {e}\n{}", self.log()))
            .value
    }

    pub fn post(&self, path: &str, body: &Value) -> Result<Value, ControlError> {
        self.tcp().post_json(path, body).map(|r| r.value)
    }

    /// A raw GET on TCP with an optional `Authorization` value, whatever the status.
    pub fn raw_get(&self, path: &str, authorization: Option<&str>) -> HttpResponse {
        let mut stream = TcpStream::connect(self.tcp.as_deref().unwrap()).unwrap();
        stream.set_read_timeout(Some(WAIT)).unwrap();
        let mut req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n");
        if let Some(a) = authorization {
            req.push_str(&format!("Authorization: {a}\r\n"));
        }
        req.push_str("\r\n");
        stream.write_all(req.as_bytes()).unwrap();
        http::read_response(std::io::BufReader::new(stream)).unwrap()
    }

    /// A client of the TCP API presenting `token`.
    pub fn client_with(&self, token: &str) -> ControlClient {
        ControlClient::new(ControlAddress::Tcp {
            authority: self.tcp.clone().unwrap(),
            tls: false,
        })
        .with_token(Token::new(token, "test").unwrap())
    }

    /// The value of the series `series` (name and labels, as exposed) in /metrics.
    pub fn metric(&self, series: &str) -> u64 {
        let text = self.metrics_text();
        let prefix = format!("{series} ");
        text.lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .unwrap_or_else(|| panic!("no {series} in\n{text}"))
            .parse()
            .unwrap()
    }

    /// `GET /metrics` (classic text).
    pub fn metrics_text(&self) -> String {
        let stream = TcpStream::connect(self.metrics.as_deref().unwrap()).unwrap();
        stream.set_read_timeout(Some(WAIT)).unwrap();
        let reply = http::get(stream, "x", "/metrics", None).unwrap();
        assert_eq!(reply.status, 200);
        String::from_utf8(reply.body).unwrap()
    }

    /// Polls `path` until `pred` holds on its JSON; returns that JSON.
    pub fn wait_json(&self, path: &str, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + WAIT;
        loop {
            let v = self.get(path);
            if pred(&v) {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; last {path}: {v:#}\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits for the head to become `version`.
    pub fn wait_version(&self, version: u64) -> Value {
        self.wait_json("/v1/status", &format!("version {version}"), |s| {
            s["version"] == version
        })
    }
}

impl Drop for Control {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("----- control log -----\n{}\n-----", self.log());
        }
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A mesh of services `(name, vip last octet, weight)`, all on port 80 with one backend.
pub fn mesh(services: &[(&str, u8, u32)]) -> String {
    let mut y = String::from("services:\n");
    for (name, vip, weight) in services {
        y.push_str(&format!(
            "  - name: {name}\n    vip: 127.100.80.{vip}\n    port: 80\n    backends:\n      - addr: 127.0.0.2:18800\n        weight: {weight}\n"
        ));
    }
    y
}

pub fn fingerprint(yaml: &str) -> String {
    sockmesh_model::parse_config(yaml).unwrap().fingerprint()
}

pub fn file_exists(path: &Path) -> bool {
    path.exists()
}

/// The `sockmesh` CLI binary (crate `sockmesh-cli`): `SOCKMESH_CLI_BIN`, or the one cargo
/// built beside this test binary (`target/<profile>/deps/<test>` -> `target/<profile>/sockmesh`;
/// `cargo test --workspace` builds it). Missing, the test fails saying how to get it.
pub fn cli_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os("SOCKMESH_CLI_BIN") {
        return bin.into();
    }
    let exe = std::env::current_exe().unwrap();
    let bin = exe
        .parent()
        .and_then(Path::parent)
        .map(|profile| profile.join("sockmesh"))
        .unwrap();
    assert!(
        bin.exists(),
        "{} is missing: build the CLI first (`cargo build -p sockmesh-cli`, or run \
         `cargo test --workspace`) or set SOCKMESH_CLI_BIN",
        bin.display()
    );
    bin
}
