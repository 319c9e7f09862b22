//! Config files for the caller-route and locality tests (`tests/route_*.rs`,
//! `tests/locality_*.rs`; ports 18900-18999, VIPs 127.100.90-99.x): backends with `labels:`
//! and a `zone:`, services with `routes:`, `locality:` and any other policy block, workloads
//! with labels and a zone, written as YAML text the way an operator would. Plus the waits
//! these tests need: until the agent shows a service's caller-class tables.

use std::fmt::Write;
use std::net::SocketAddr;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use serde_json::Value;

use crate::agent::Agent;

/// One backend line: address, weight, labels and zone.
#[derive(Debug, Clone)]
pub struct RouteBackend {
    pub addr: SocketAddr,
    pub weight: u32,
    pub labels: Vec<(String, String)>,
    pub zone: Option<String>,
}

impl RouteBackend {
    /// Weight 1, no labels, no zone.
    pub fn new(addr: SocketAddr) -> Self {
        RouteBackend {
            addr,
            weight: 1,
            labels: Vec::new(),
            zone: None,
        }
    }

    pub fn weight(mut self, weight: u32) -> Self {
        self.weight = weight;
        self
    }

    pub fn label(mut self, key: &str, value: &str) -> Self {
        self.labels.push((key.to_string(), value.to_string()));
        self
    }

    pub fn zone(mut self, zone: &str) -> Self {
        self.zone = Some(zone.to_string());
        self
    }
}

/// A service with its backends and policy blocks.
#[derive(Debug, Clone)]
pub struct RouteService {
    pub name: String,
    pub vip: SocketAddr,
    pub lb: String,
    pub backends: Vec<RouteBackend>,
    /// `(key, YAML value)` lines under the service, in order: `routes` (a flow list),
    /// `locality`, `outlier`, ...
    pub policy: Vec<(String, String)>,
}

impl RouteService {
    pub fn new(name: &str, vip: SocketAddr, lb: &str, backends: Vec<RouteBackend>) -> Self {
        RouteService {
            name: name.to_string(),
            vip,
            lb: lb.to_string(),
            backends,
            policy: Vec::new(),
        }
    }

    /// Adds `key: value` (`value` is YAML: a flow mapping or list, or a scalar).
    pub fn with(mut self, key: &str, value: &str) -> Self {
        self.policy.push((key.to_string(), value.to_string()));
        self
    }
}

/// A workload (a cgroup relative to the cgroup2 mount) with labels and a zone.
#[derive(Debug, Clone)]
pub struct RouteWorkload {
    pub name: String,
    pub cgroup: String,
    pub labels: Vec<(String, String)>,
    pub zone: Option<String>,
}

impl RouteWorkload {
    pub fn new(name: &str, cgroup: &str) -> Self {
        RouteWorkload {
            name: name.to_string(),
            cgroup: cgroup.to_string(),
            labels: Vec::new(),
            zone: None,
        }
    }

    pub fn label(mut self, key: &str, value: &str) -> Self {
        self.labels.push((key.to_string(), value.to_string()));
        self
    }

    pub fn zone(mut self, zone: &str) -> Self {
        self.zone = Some(zone.to_string());
        self
    }
}

fn flow_map(pairs: &[(String, String)]) -> String {
    let inner: Vec<String> = pairs.iter().map(|(k, v)| format!("{k}: \"{v}\"")).collect();
    format!("{{{}}}", inner.join(", "))
}

/// The config file text for `services` and `workloads`.
pub fn route_mesh(services: &[RouteService], workloads: &[RouteWorkload]) -> String {
    let mut y = String::from("# written by sockmesh-bpf-tests (routes)\nversion: 1\nservices:\n");
    for s in services {
        let _ = writeln!(y, "  - name: {}", s.name);
        let _ = writeln!(y, "    vip: \"{}\"", s.vip.ip());
        let _ = writeln!(y, "    port: {}", s.vip.port());
        let _ = writeln!(y, "    lb: {}", s.lb);
        let _ = writeln!(y, "    backends:");
        for b in &s.backends {
            let _ = writeln!(y, "      - addr: \"{}\"", b.addr);
            let _ = writeln!(y, "        weight: {}", b.weight);
            if !b.labels.is_empty() {
                let _ = writeln!(y, "        labels: {}", flow_map(&b.labels));
            }
            if let Some(zone) = &b.zone {
                let _ = writeln!(y, "        zone: {zone}");
            }
        }
        for (key, value) in &s.policy {
            let _ = writeln!(y, "    {key}: {value}");
        }
    }
    if !workloads.is_empty() {
        y.push_str("workloads:\n");
        for w in workloads {
            let _ = writeln!(y, "  - name: {}", w.name);
            let _ = writeln!(y, "    cgroup: \"{}\"", w.cgroup);
            if !w.labels.is_empty() {
                let _ = writeln!(y, "    labels: {}", flow_map(&w.labels));
            }
            if let Some(zone) = &w.zone {
                let _ = writeln!(y, "    zone: {zone}");
            }
        }
    }
    y
}

/// Polls `/status` until service `name` shows exactly the caller classes `workloads` (by
/// workload name, in class order) with tables of their own; returns those class rows.
pub fn wait_class_tables(
    agent: &Agent,
    name: &str,
    workloads: &[&str],
    timeout: Duration,
) -> Result<Vec<Value>> {
    let deadline = Instant::now() + timeout;
    let mut last = Value::Null;
    while Instant::now() < deadline {
        if let Ok(status) = agent.status() {
            let service = status["services"]
                .as_array()
                .and_then(|s| s.iter().find(|s| s["name"] == name).cloned());
            if let Some(service) = service {
                let classes = service["classes"].as_array().cloned().unwrap_or_default();
                let names: Vec<&str> = classes
                    .iter()
                    .filter_map(|c| c["workload"].as_str())
                    .collect();
                if names == workloads {
                    return Ok(classes);
                }
                last = service;
            }
        }
        thread::sleep(Duration::from_millis(50));
    }
    bail!("service {name} never showed class tables for {workloads:?} within {timeout:?}; last: {last:#}")
}

/// Polls `/status` until the caller class of `workload` in service `name` has a table of its
/// own whose backends (those with slots) are exactly `backends`; returns its row.
pub fn wait_class_slots(
    agent: &Agent,
    name: &str,
    workload: &str,
    backends: &[SocketAddr],
    timeout: Duration,
) -> Result<Value> {
    let mut want: Vec<String> = backends.iter().map(|a| a.to_string()).collect();
    want.sort();
    let deadline = Instant::now() + timeout;
    let mut last = Value::Null;
    while Instant::now() < deadline {
        if let Ok(status) = agent.status() {
            let class = status["services"].as_array().and_then(|s| {
                s.iter()
                    .find(|s| s["name"] == name)
                    .and_then(|s| s["classes"].as_array())
                    .and_then(|c| c.iter().find(|c| c["workload"] == workload).cloned())
            });
            if let Some(class) = class {
                let mut got: Vec<String> = class["slots"]
                    .as_object()
                    .map(|m| m.keys().cloned().collect())
                    .unwrap_or_default();
                got.sort();
                if got == want {
                    return Ok(class);
                }
                last = class;
            }
        }
        thread::sleep(Duration::from_millis(20));
    }
    bail!(
        "{name}: class of {workload} never routed to exactly {want:?} within {timeout:?}; \
         last: {last}"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_zones_and_labels_parse_back() {
        let vip = "127.100.90.1:18901".parse().unwrap();
        let backends = vec![
            RouteBackend::new("127.0.0.2:18900".parse().unwrap())
                .label("track", "stable")
                .zone("a"),
            RouteBackend::new("127.0.0.3:18900".parse().unwrap())
                .label("track", "canary")
                .weight(2),
        ];
        let yaml = route_mesh(
            &[RouteService::new("shop", vip, "weighted_random", backends)
                .with(
                    "routes",
                    "[{match: {lane: canary}, to: {track: canary}, fallback: none}, \
                     {weight_split: [{to: {track: stable}, percent: 90}, \
                     {to: {track: canary}, percent: 10}]}]",
                )
                .with("locality", "{min_healthy_percent: 60}")],
            &[RouteWorkload::new("front", "x/front")
                .label("lane", "canary")
                .zone("a")],
        );
        let cfg = sockmesh_model::parse_config(&yaml).unwrap();
        let s = &cfg.services[0];
        assert_eq!(s.backends[0].labels["track"], "stable");
        assert_eq!(s.backends[0].zone.as_deref(), Some("a"));
        assert_eq!(s.backends[1].weight, 2);
        assert_eq!(s.routes.len(), 2);
        assert_eq!(s.routes[0].fallback, sockmesh_model::Fallback::None);
        assert_eq!(s.routes[1].weight_split[1].percent, 10);
        assert_eq!(s.locality.as_ref().unwrap().min_healthy_percent, 60);
        assert_eq!(cfg.workloads[0].labels["lane"], "canary");
        assert_eq!(cfg.workloads[0].zone.as_deref(), Some("a"));
    }
}
