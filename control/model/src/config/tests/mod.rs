//! Tests of the schema: what parses, what each rule rejects, and properties of valid configs.

mod accept;
mod callers;
mod decode;
mod http;
mod limits;
mod policy;
mod props;
mod routes;
mod rules;
mod slos;
mod workloads;

use crate::{
    parse_config, BackendSpec, ConfigError, LbPolicy, MeshConfig, ServiceSpec, WorkloadSpec,
};

/// A one-service config in YAML; tests edit it with `str::replace` so each shows only the
/// line it is about.
const ONE_SERVICE: &str = "\
services:
  - name: web
    vip: 127.100.0.1
    port: 80
    backends:
      - addr: 127.0.0.2:8081
      - addr: 127.0.0.3:8081
";

pub(crate) fn service(name: &str, vip: &str, port: u16, backends: &[(&str, u32)]) -> ServiceSpec {
    ServiceSpec::new(
        name,
        vip.parse().unwrap(),
        port,
        LbPolicy::WeightedRandom,
        backends
            .iter()
            .map(|&(addr, weight)| BackendSpec {
                addr: addr.parse().unwrap(),
                weight,
                labels: Default::default(),
                zone: None,
            })
            .collect(),
    )
}

pub(crate) fn mesh(services: Vec<ServiceSpec>) -> MeshConfig {
    MeshConfig {
        version: 1,
        services,
        workloads: Vec::new(),
        enrollment: Default::default(),
    }
}

pub(crate) fn workload(name: &str, cgroup: &str, labels: &[(&str, &str)]) -> WorkloadSpec {
    WorkloadSpec {
        name: name.to_owned(),
        cgroup: cgroup.to_owned(),
        labels: labels
            .iter()
            .map(|&(k, v)| (k.to_owned(), v.to_owned()))
            .collect(),
        priority: Default::default(),
        zone: None,
        node: None,
    }
}

/// Asserts `cfg` breaks a rule at `path` with a reason containing `fragment`.
#[track_caller]
fn assert_invalid(cfg: &MeshConfig, path: &str, fragment: &str) {
    let err = cfg.validate().expect_err("config should be rejected");
    assert_error(&err, path, fragment);
    assert!(matches!(err, ConfigError::Invalid { .. }), "{err:?}");
}

/// Asserts the YAML is rejected (by decoding or by a rule) at `path`, reason containing
/// `fragment`, and returns the error for further checks.
#[track_caller]
fn assert_rejected(yaml: &str, path: &str, fragment: &str) -> ConfigError {
    let err = parse_config(yaml).expect_err("config should be rejected");
    assert_error(&err, path, fragment);
    err
}

#[track_caller]
fn assert_error(err: &ConfigError, path: &str, fragment: &str) {
    assert_eq!(err.path(), Some(path), "{err}");
    assert!(
        err.reason().contains(fragment),
        "reason {:?} lacks {fragment:?}",
        err.reason()
    );
    let shown = err.to_string();
    assert!(
        shown.starts_with(&format!("{path}: ")),
        "display {shown:?} should start with the path"
    );
}
