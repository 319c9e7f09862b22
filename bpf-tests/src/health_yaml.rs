//! Config files for the health tests: services with a health policy (`outlier:`,
//! `circuit:`, `limits:`, `allowed_callers:`, `drain_grace:`) and workloads with a `priority:`,
//! written as YAML text the way an operator would.
//!
//! Policy blocks are given as YAML flow values (`{consecutive_failures: 5, base_ban: 1s}`,
//! `[front]`, `1s`), so a test states exactly the fields it depends on and leaves the rest at
//! their documented defaults.

use std::fmt::Write;

use crate::mesh_yaml::{ServiceYaml, WorkloadYaml};

/// A service plus its health policy lines.
#[derive(Debug, Clone)]
pub struct HealthService {
    pub service: ServiceYaml,
    /// `(key, flow value)`, written as `key: value` under the service, in order.
    pub policy: Vec<(String, String)>,
}

impl HealthService {
    /// A service with no policy (every default).
    pub fn new(service: ServiceYaml) -> Self {
        HealthService {
            service,
            policy: Vec::new(),
        }
    }

    /// Adds `key: value` (`value` is YAML: a flow mapping, a flow list or a scalar).
    pub fn with(mut self, key: &str, value: &str) -> Self {
        self.policy.push((key.to_string(), value.to_string()));
        self
    }
}

/// A workload plus its priority (`online`, `offline`; `None` leaves the default).
#[derive(Debug, Clone)]
pub struct HealthWorkload {
    pub workload: WorkloadYaml,
    pub priority: Option<String>,
}

impl HealthWorkload {
    pub fn new(name: &str, cgroup: &str, priority: Option<&str>) -> Self {
        HealthWorkload {
            workload: WorkloadYaml::new(name, cgroup),
            priority: priority.map(str::to_string),
        }
    }
}

/// The config file text for `services` and `workloads`.
pub fn health_mesh(services: &[HealthService], workloads: &[HealthWorkload]) -> String {
    let mut y = String::from("# written by sockmesh-bpf-tests (health)\nversion: 1\nservices:\n");
    for hs in services {
        let s = &hs.service;
        let _ = writeln!(y, "  - name: {}", s.name);
        let _ = writeln!(y, "    vip: \"{}\"", s.vip.ip());
        let _ = writeln!(y, "    port: {}", s.vip.port());
        let _ = writeln!(y, "    lb: {}", s.lb);
        let _ = writeln!(y, "    backends:");
        for b in &s.backends {
            let _ = writeln!(y, "      - addr: \"{}\"", b.addr);
            let _ = writeln!(y, "        weight: {}", b.weight);
        }
        for (key, value) in &hs.policy {
            let _ = writeln!(y, "    {key}: {value}");
        }
    }
    if !workloads.is_empty() {
        y.push_str("workloads:\n");
        for hw in workloads {
            let w = &hw.workload;
            let _ = writeln!(y, "  - name: {}", w.name);
            let _ = writeln!(y, "    cgroup: \"{}\"", w.cgroup);
            if let Some(p) = &hw.priority {
                let _ = writeln!(y, "    priority: {p}");
            }
        }
    }
    y
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_and_priorities_parse_back() {
        let svc = ServiceYaml::new("web", "127.100.40.1:80".parse().unwrap(), "round_robin")
            .backend("127.0.0.2:8081".parse().unwrap(), 1);
        let yaml = health_mesh(
            &[HealthService::new(svc)
                .with("outlier", "{consecutive_failures: 7, base_ban: 1s}")
                .with("circuit", "{min_success_ratio: 0}")
                .with(
                    "limits",
                    "{max_connections: 5, connect_rate: 20, connect_burst: 5}",
                )
                .with("allowed_callers", "[front]")
                .with("drain_grace", "1s")],
            &[
                HealthWorkload::new("front", "x/front", Some("online")),
                HealthWorkload::new("batch", "x/batch", Some("offline")),
            ],
        );
        let cfg = sockmesh_model::parse_config(&yaml).unwrap();
        let s = &cfg.services[0];
        assert_eq!(s.outlier.consecutive_failures, 7);
        assert_eq!(s.outlier.base_ban.0, std::time::Duration::from_secs(1));
        assert_eq!(s.circuit.min_success_ratio, 0.0);
        assert_eq!(s.limits.max_connections, Some(5));
        assert_eq!(s.allowed_callers.as_deref(), Some(&["front".into()][..]));
        assert_eq!(s.drain_grace.0, std::time::Duration::from_secs(1));
        assert_eq!(cfg.workloads[1].priority, sockmesh_model::Priority::Offline);
    }
}
