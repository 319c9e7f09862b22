//! Writing mesh config files the way an operator would (YAML text, not the model), and the
//! fingerprint the agent reports once a file is live.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::net::{IpAddr, SocketAddr};

use anyhow::{Context, Result};

/// One backend line of a service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendYaml {
    pub addr: SocketAddr,
    pub weight: u32,
}

/// One entry of a config's `workloads:` (a cgroup the agent names callers and CPU signals by).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkloadYaml {
    pub name: String,
    /// Relative to the cgroup2 mount (see [`crate::Cgroup2::relative_path`]).
    pub cgroup: String,
    pub labels: BTreeMap<String, String>,
}

impl WorkloadYaml {
    /// A workload with no labels.
    pub fn new(name: &str, cgroup: &str) -> Self {
        WorkloadYaml {
            name: name.to_string(),
            cgroup: cgroup.to_string(),
            labels: BTreeMap::new(),
        }
    }

    /// Adds a label.
    pub fn label(mut self, key: &str, value: &str) -> Self {
        self.labels.insert(key.to_string(), value.to_string());
        self
    }
}

/// One service of a config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceYaml {
    pub name: String,
    pub vip: SocketAddr,
    /// `weighted_random`, `round_robin` or `maglev` (any text, so tests can write bad ones).
    pub lb: String,
    pub backends: Vec<BackendYaml>,
}

impl ServiceYaml {
    /// A service with no backends yet.
    pub fn new(name: &str, vip: SocketAddr, lb: &str) -> Self {
        ServiceYaml {
            name: name.to_string(),
            vip,
            lb: lb.to_string(),
            backends: Vec::new(),
        }
    }

    /// Adds a backend.
    pub fn backend(mut self, addr: SocketAddr, weight: u32) -> Self {
        self.backends.push(BackendYaml { addr, weight });
        self
    }

    /// Adds backends `addrs` with `weights`, pairwise.
    pub fn backends(mut self, addrs: &[SocketAddr], weights: &[u32]) -> Self {
        assert_eq!(addrs.len(), weights.len(), "one weight per backend");
        for (&addr, &weight) in addrs.iter().zip(weights) {
            self.backends.push(BackendYaml { addr, weight });
        }
        self
    }

    /// The config file text for a mesh of `services`.
    pub fn mesh(services: &[ServiceYaml]) -> String {
        let mut y = String::from("# written by sockmesh-bpf-tests\nversion: 1\nservices:\n");
        for s in services {
            let vip: IpAddr = s.vip.ip();
            // Addresses are quoted: IPv6 literals would otherwise not parse as YAML strings.
            let _ = writeln!(y, "  - name: {}", s.name);
            let _ = writeln!(y, "    vip: \"{vip}\"");
            let _ = writeln!(y, "    port: {}", s.vip.port());
            let _ = writeln!(y, "    lb: {}", s.lb);
            let _ = writeln!(y, "    backends:");
            for b in &s.backends {
                let _ = writeln!(y, "      - addr: \"{}\"", b.addr);
                let _ = writeln!(y, "        weight: {}", b.weight);
            }
        }
        y
    }

    /// The config file text for a mesh of `services` observing `workloads`.
    pub fn mesh_with_workloads(services: &[ServiceYaml], workloads: &[WorkloadYaml]) -> String {
        let mut y = Self::mesh(services);
        if workloads.is_empty() {
            return y;
        }
        y.push_str("workloads:\n");
        for w in workloads {
            let _ = writeln!(y, "  - name: {}", w.name);
            let _ = writeln!(y, "    cgroup: \"{}\"", w.cgroup);
            if !w.labels.is_empty() {
                let _ = writeln!(y, "    labels:");
                for (k, v) in &w.labels {
                    let _ = writeln!(y, "      \"{k}\": \"{v}\"");
                }
            }
        }
        y
    }
}

/// `MeshConfig::fingerprint()` of a config text: what `/status` reports once it is applied.
pub fn fingerprint_of(yaml: &str) -> Result<String> {
    let cfg = sockmesh_model::parse_config(yaml).context("test config does not parse")?;
    Ok(cfg.fingerprint())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_config_parses_back() {
        let v4 = ServiceYaml::new("web", "127.100.0.1:80".parse().unwrap(), "maglev")
            .backend("127.0.0.2:8081".parse().unwrap(), 3);
        let v6 = ServiceYaml::new("web6", "[fd00::100]:80".parse().unwrap(), "round_robin")
            .backends(&["[fd00::2]:8081".parse().unwrap()], &[1]);
        let yaml = ServiceYaml::mesh(&[v4, v6]);
        let cfg = sockmesh_model::parse_config(&yaml).unwrap();
        assert_eq!(cfg.services.len(), 2);
        assert_eq!(cfg.services[0].backends[0].weight, 3);
        assert_eq!(cfg.services[1].vip.to_string(), "fd00::100");
        assert_eq!(fingerprint_of(&yaml).unwrap().len(), 16);
    }

    #[test]
    fn written_workloads_parse_back() {
        let svc = ServiceYaml::new("web", "127.100.0.1:80".parse().unwrap(), "round_robin")
            .backend("127.0.0.2:8081".parse().unwrap(), 1);
        let wl = [
            WorkloadYaml::new("frontend", "sockmesh-test-1-x/frontend").label("team", "web"),
            WorkloadYaml::new("idle", "sockmesh-test-1-x/idle"),
        ];
        let cfg =
            sockmesh_model::parse_config(&ServiceYaml::mesh_with_workloads(&[svc], &wl)).unwrap();
        assert_eq!(cfg.workloads.len(), 2);
        assert_eq!(cfg.workloads[0].cgroup, "sockmesh-test-1-x/frontend");
        assert_eq!(cfg.workloads[0].labels["team"], "web");
    }
}
