//! Config files for the diagnosis tests: services with extra policy lines
//! (`outlier:`, `circuit:`, `slos:` as YAML flow values) and plain workloads, written as YAML
//! text the way an operator would.

use std::fmt::Write;

use crate::mesh_yaml::{ServiceYaml, WorkloadYaml};

/// The availability SLO every diagnosis test gives its services, so `/v1/diagnose` and
/// `/v1/top` have a burn rate to show.
pub const AVAILABILITY_SLO: &str =
    "[{name: availability, sli: connect_success, objective: 0.999, window: 30d}]";

/// A service plus `key: value` lines written under it, in order.
#[derive(Debug, Clone)]
pub struct DiagService {
    pub service: ServiceYaml,
    pub extra: Vec<(String, String)>,
}

impl DiagService {
    /// A service with the availability SLO and otherwise every default.
    pub fn new(service: ServiceYaml) -> Self {
        DiagService {
            service,
            extra: vec![("slos".to_owned(), AVAILABILITY_SLO.to_owned())],
        }
    }

    /// Adds `key: value` (`value` is YAML: a flow mapping, a flow list or a scalar).
    pub fn with(mut self, key: &str, value: &str) -> Self {
        self.extra.push((key.to_owned(), value.to_owned()));
        self
    }
}

/// The config file text for `services` and `workloads`.
pub fn diag_mesh(services: &[DiagService], workloads: &[WorkloadYaml]) -> String {
    let mut y = String::from("# written by sockmesh-bpf-tests (diagnose)\nversion: 1\nservices:\n");
    for ds in services {
        let s = &ds.service;
        let _ = writeln!(y, "  - name: {}", s.name);
        let _ = writeln!(y, "    vip: \"{}\"", s.vip.ip());
        let _ = writeln!(y, "    port: {}", s.vip.port());
        let _ = writeln!(y, "    lb: {}", s.lb);
        let _ = writeln!(y, "    backends:");
        for b in &s.backends {
            let _ = writeln!(y, "      - addr: \"{}\"", b.addr);
            let _ = writeln!(y, "        weight: {}", b.weight);
        }
        for (key, value) in &ds.extra {
            let _ = writeln!(y, "    {key}: {value}");
        }
    }
    if !workloads.is_empty() {
        y.push_str("workloads:\n");
        for w in workloads {
            let _ = writeln!(y, "  - name: {}", w.name);
            let _ = writeln!(y, "    cgroup: \"{}\"", w.cgroup);
        }
    }
    y
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slos_policy_and_workloads_parse_back() {
        let svc = ServiceYaml::new("web", "127.100.50.1:18501".parse().unwrap(), "round_robin")
            .backend("127.0.0.2:18500".parse().unwrap(), 1);
        let yaml = diag_mesh(
            &[DiagService::new(svc).with("outlier", "{max_banned_percent: 0}")],
            &[WorkloadYaml::new("client", "sockmesh-test-1-x/client")],
        );
        let cfg = sockmesh_model::parse_config(&yaml).unwrap();
        let s = &cfg.services[0];
        assert_eq!(s.outlier.max_banned_percent, 0);
        assert_eq!(s.slos.len(), 1);
        assert_eq!(s.slos[0].objective, 0.999);
        assert_eq!(cfg.workloads[0].name, "client");
    }
}
