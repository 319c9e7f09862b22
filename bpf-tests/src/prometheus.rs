//! A real Prometheus server (Debian's `prometheus` package: `/usr/bin/prometheus`) scraping
//! its targets (the agent, for the L7 tests the proxy too) every second, on 127.0.0.1 with
//! its TSDB in a temp dir; killed by pid on drop.
//! And `promtool check metrics`, the linter operators run on an exporter's output.

use std::io::Write;
use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::Value;
use tempfile::TempDir;

use crate::admin::{http_get_tcp, percent_encode};

pub const PROMETHEUS_BIN: &str = "/usr/bin/prometheus";
pub const PROMTOOL_BIN: &str = "/usr/bin/promtool";
const HOW: &str = "Debian's `prometheus` package provides it: `apt-get install prometheus`, \
                   or `cargo xtask setup`";
const READY_TIMEOUT: Duration = Duration::from_secs(30);
const HTTP_TIMEOUT: Duration = Duration::from_secs(5);

fn require(bin: &str) {
    assert!(Path::new(bin).is_file(), "{bin} is missing: {HOW}");
}

/// See the module docs.
#[derive(Debug)]
pub struct Prometheus {
    child: Option<Child>,
    addr: SocketAddr,
    // Dropped after the process is gone: config, TSDB and log live here.
    dir: TempDir,
}

impl Prometheus {
    /// Starts Prometheus scraping `http://<target>/metrics` every second and waits until it
    /// is ready.
    ///
    /// # Panics
    /// When `/usr/bin/prometheus` is missing: the test cannot show what it must.
    pub fn start(target: SocketAddr) -> Result<Self> {
        Self::start_with_rules(target, &[])
    }

    /// Like [`Prometheus::start`], also evaluating every second the rule files `rules`
    /// (`(file name, content)`, written into its temp dir; each must pass `promtool check
    /// rules` first, so the file Prometheus loads is one CI would accept).
    pub fn start_with_rules(target: SocketAddr, rules: &[(&str, &str)]) -> Result<Self> {
        Self::start_scraping(&[target], rules)
    }

    /// Like [`Prometheus::start_with_rules`], scraping every one of `targets` (one job,
    /// told apart by their `instance` label).
    pub fn start_scraping(targets: &[SocketAddr], rules: &[(&str, &str)]) -> Result<Self> {
        require(PROMETHEUS_BIN);
        let dir = tempfile::Builder::new()
            .prefix(&format!("{}-", crate::resource_name("prometheus")))
            .tempdir()?;
        let mut rule_files = String::new();
        for (name, content) in rules {
            let path = dir.path().join(name);
            std::fs::write(&path, content)
                .with_context(|| format!("writing {}", path.display()))?;
            let check = crate::slo_prometheus::promtool_check_rules(&path)?;
            if !check.status.success() {
                bail!(
                    "promtool check rules {name}: {}{}",
                    String::from_utf8_lossy(&check.stdout),
                    String::from_utf8_lossy(&check.stderr)
                );
            }
            rule_files.push_str(&format!("  - '{}'\n", path.display()));
        }
        let rule_files = if rule_files.is_empty() {
            String::new()
        } else {
            format!("rule_files:\n{rule_files}")
        };
        let targets = targets
            .iter()
            .map(|t| format!("'{t}'"))
            .collect::<Vec<_>>()
            .join(", ");
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
                 {rule_files}\
                 scrape_configs:\n  - job_name: sockmesh\n    static_configs:\n      \
                 - targets: [{targets}]\n"
            ),
        )?;
        let addr = free_local_port()?;
        let log = std::fs::File::create(dir.path().join("prometheus.log"))?;
        let child = Command::new(PROMETHEUS_BIN)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("tsdb").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("spawning {PROMETHEUS_BIN}"))?;
        let mut prom = Prometheus {
            child: Some(child),
            addr,
            dir,
        };
        prom.wait_ready()?;
        Ok(prom)
    }

    /// Where its HTTP API listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    fn wait_ready(&mut self) -> Result<()> {
        let deadline = Instant::now() + READY_TIMEOUT;
        while Instant::now() < deadline {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                bail!("prometheus exited with {status}:\n{}", self.log());
            }
            if http_get_tcp(self.addr, "/-/ready", HTTP_TIMEOUT).is_ok_and(|r| r.status == 200) {
                return Ok(());
            }
            thread::sleep(Duration::from_millis(100));
        }
        bail!(
            "prometheus not ready after {READY_TIMEOUT:?}:\n{}",
            self.log()
        )
    }

    /// Prometheus's own log, for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default()
    }

    /// `GET path` on the HTTP API (e.g. `/api/v1/metadata?metric=...`), parsed.
    pub fn get_json(&self, path: &str) -> Result<Value> {
        let r = http_get_tcp(self.addr, path, HTTP_TIMEOUT)?;
        if r.status != 200 {
            bail!("GET {path}: {} {}", r.status, r.body);
        }
        serde_json::from_str(&r.body).with_context(|| format!("GET {path}: {}", r.body))
    }

    /// An instant PromQL query through `/api/v1/query`: the value of a single-series answer
    /// (`None` for an empty one).
    pub fn query_scalar(&self, promql: &str) -> Result<Option<f64>> {
        let path = format!("/api/v1/query?query={}", percent_encode(promql));
        let r = http_get_tcp(self.addr, &path, HTTP_TIMEOUT)?;
        let body: Value = serde_json::from_str(&r.body)
            .with_context(|| format!("query {promql}: answer is not JSON: {}", r.body))?;
        if r.status != 200 || body["status"] != "success" {
            bail!("query {promql}: {} {}", r.status, r.body);
        }
        let result = body["data"]["result"]
            .as_array()
            .with_context(|| format!("query {promql}: no result vector: {body}"))?;
        match result.as_slice() {
            [] => Ok(None),
            [one] => {
                let text = one["value"][1]
                    .as_str()
                    .with_context(|| format!("query {promql}: no value in {one}"))?;
                Ok(Some(
                    text.parse().with_context(|| format!("value {text:?}"))?,
                ))
            }
            many => bail!(
                "query {promql}: {} series, expected one: {body}",
                many.len()
            ),
        }
    }

    /// Polls `promql` until it equals `want`; returns the last answer (which equals `want`
    /// unless `timeout` passed).
    pub fn wait_for_value(&self, promql: &str, want: f64, timeout: Duration) -> Option<f64> {
        let deadline = Instant::now() + timeout;
        let mut last = None;
        while Instant::now() < deadline {
            last = self.query_scalar(promql).ok().flatten();
            if last == Some(want) {
                break;
            }
            thread::sleep(Duration::from_millis(250));
        }
        last
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // Our own child, by pid: SIGKILL is fine, its TSDB is thrown away anyway.
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A 127.0.0.1 port nothing listens on right now (bound and released at once; the short
/// window until Prometheus binds it is acceptable for tests).
fn free_local_port() -> Result<SocketAddr> {
    let l = TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    Ok(l.local_addr()?)
}

/// `promtool check metrics` with `exposition` on stdin.
///
/// # Panics
/// When `/usr/bin/promtool` is missing.
pub fn promtool_check_metrics(exposition: &str) -> Result<Output> {
    require(PROMTOOL_BIN);
    let mut child = Command::new(PROMTOOL_BIN)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("spawning {PROMTOOL_BIN}"))?;
    let mut stdin = child.stdin.take().expect("stdin is piped");
    stdin.write_all(exposition.as_bytes())?;
    drop(stdin);
    Ok(child.wait_with_output()?)
}
