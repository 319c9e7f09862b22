//! The L7 proxy on the testbed's nodes, wired as deploy/ wires it: each agent starts its
//! proxy (`--proxy spawn` here, a container of its own in the DaemonSet) listening on the
//! node's address, since pods in network namespaces of their own cannot reach the node's
//! loopback; its `/metrics` is on the node's address too.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};

use super::{net, Cluster};
use crate::http_get_tcp;

/// The proxy's listening port on each node's address (deploy/'s `--proxy-listen`).
pub const PROXY_PORT: u16 = 15001;
/// The proxy's metrics port on each node's address.
pub const PROXY_METRICS_PORT: u16 = 9478;

/// The agent flags that put node `i`'s proxy on the node's address.
pub(super) fn proxy_args(i: usize) -> Vec<OsString> {
    vec![
        "--proxy-listen".into(),
        SocketAddr::from((net::node_ip(i), PROXY_PORT))
            .to_string()
            .into(),
        "--proxy-metrics-addr".into(),
        proxy_metrics_addr(i).to_string().into(),
    ]
}

fn proxy_metrics_addr(i: usize) -> SocketAddr {
    SocketAddr::from((net::node_ip(i), PROXY_METRICS_PORT))
}

impl Cluster {
    /// Node `i`'s proxy `/metrics` now, scraped from inside the node's network namespace
    /// (empty while no proxy answers: it starts with the node's first http service).
    pub fn proxy_metrics(&self, i: usize) -> String {
        let addr = proxy_metrics_addr(i);
        crate::netns::run_in(&self.nodes[i].netns.path(), move || {
            http_get_tcp(addr, "/metrics", Duration::from_secs(10))
        })
        .map(|r| r.body)
        .unwrap_or_default()
    }

    /// Waits until node `i`'s proxy `/metrics` satisfies `pred`; returns that text.
    pub fn wait_proxy(
        &self,
        i: usize,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&str) -> bool,
    ) -> Result<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let text = self.proxy_metrics(i);
            if pred(&text) {
                return Ok(text);
            }
            if Instant::now() >= deadline {
                bail!("timed out after {timeout:?} waiting for node {i}'s proxy: {what}\n{text}");
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}
