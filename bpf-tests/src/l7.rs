//! The L7 tests' common steps (`tests/l7_*.rs`): start the agent with its proxy's
//! `/metrics` on a port the test knows, wait until the proxy is linked and serves targets,
//! and read or wait on that `/metrics`.

use std::net::{SocketAddr, TcpListener};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};

use crate::{http_get_tcp, sum_metric, wait_workloads, TestBed};

/// The proxy's `/metrics` now (empty if it does not answer).
pub fn proxy_metrics(addr: SocketAddr) -> String {
    http_get_tcp(addr, "/metrics", Duration::from_secs(10))
        .map(|r| r.body)
        .unwrap_or_default()
}

/// Waits until the proxy's `/metrics` satisfies `pred`; returns that text.
pub fn wait_proxy(
    addr: SocketAddr,
    what: &str,
    timeout: Duration,
    pred: impl Fn(&str) -> bool,
) -> Result<String> {
    let deadline = Instant::now() + timeout;
    loop {
        let text = proxy_metrics(addr);
        if pred(&text) {
            return Ok(text);
        }
        if Instant::now() >= deadline {
            bail!("timed out after {timeout:?} waiting for the proxy: {what}\n{text}");
        }
        thread::sleep(Duration::from_millis(100));
    }
}

/// Starts `bed`'s agent (`--proxy spawn`, the default) with its proxy listening on a port
/// the kernel picks and its `/metrics` on a free port; waits for `workloads` to resolve,
/// the proxy to link and its first targets. Returns the proxy's metrics address.
pub fn start_agent_with_proxy(
    bed: &mut TestBed,
    workloads: &[&str],
    timeout: Duration,
) -> Result<SocketAddr> {
    let metrics: SocketAddr = {
        let probe = TcpListener::bind("127.0.0.1:0")?;
        probe.local_addr()?
    };
    bed.start_agent_with([
        "--proxy-listen".to_owned(),
        "127.0.0.1:0".to_owned(),
        "--proxy-metrics-addr".to_owned(),
        metrics.to_string(),
    ])?;
    wait_workloads(bed.agent(), workloads, timeout)?;
    bed.agent()
        .wait_metrics("the proxy connected", timeout, |t| {
            sum_metric(t, "sockmesh_proxy_connected", &[]) >= 1.0
        })?;
    wait_proxy(metrics, "targets applied", timeout, |t| {
        sum_metric(t, "sockmesh_proxy_targets_generation", &[]) >= 1.0
    })?;
    Ok(metrics)
}
