//! What the proxy is told: every `protocol: http` service of the node's config with its
//! kernel service id, its `http:` block and its backends, each marked eligible or not as
//! the kernel's tables hold it (a backend with no slot in the service's default table is
//! banned, draining or weighted out: the proxy does not pick it either).
//!
//! Pure: the config and the applied views in, the [`Targets`] out.

use std::collections::HashMap;

use sockmesh_common::CALLER_CLASS_DEFAULT;
use sockmesh_model::{MeshConfig, Protocol, SliKind};
use sockmesh_proxy::link::{TargetBackend, TargetClass, TargetService, Targets};

use crate::tables::ServiceView;

/// The proxy's view of `config` as applied (`views`, from the same apply).
pub(crate) fn targets(config: &MeshConfig, views: &[ServiceView], generation: u64) -> Targets {
    let by_name: HashMap<&str, &ServiceView> = views.iter().map(|v| (v.name.as_str(), v)).collect();
    let services = config
        .services
        .iter()
        .filter(|s| s.protocol == Protocol::Http)
        .filter_map(|s| {
            // A service the tables did not take (none today) is not served: no id.
            let view = by_name.get(s.name.as_str())?;
            let slots: HashMap<&str, usize> = view
                .backends
                .iter()
                .map(|b| (b.addr.as_str(), b.slots))
                .collect();
            // Routes and locality: each caller class's weights, the ones its kernel table
            // was built from (class 0 first); a backend is eligible when some class may use
            // it (a canary for its callers only), and none may use a banned one.
            let classes: Vec<TargetClass> = match &view.class0_weights {
                Some(default) => std::iter::once(TargetClass {
                    workload: CALLER_CLASS_DEFAULT,
                    weights: default.to_vec(),
                })
                .chain(view.classes.iter().map(|c| TargetClass {
                    workload: c.class,
                    weights: c.weights.clone(),
                }))
                .collect(),
                None => Vec::new(),
            };
            let backends = s
                .backends
                .iter()
                .enumerate()
                .map(|(i, b)| TargetBackend {
                    addr: b.addr,
                    weight: b.weight,
                    labels: b.labels.clone(),
                    eligible: if classes.is_empty() {
                        slots.get(b.addr.to_string().as_str()).copied().unwrap_or(0) > 0
                    } else {
                        classes
                            .iter()
                            .any(|c| c.weights.get(i).is_some_and(|w| *w > 0))
                    },
                })
                .collect();
            let mut latency_thresholds_us: Vec<u64> = s
                .slos
                .iter()
                .filter(|slo| slo.sli == SliKind::RequestLatency)
                .filter_map(|slo| slo.threshold)
                .map(|t| u64::try_from(t.0.as_micros()).unwrap_or(u64::MAX))
                .collect();
            latency_thresholds_us.sort_unstable();
            latency_thresholds_us.dedup();
            Some(TargetService {
                id: view.id,
                name: s.name.clone(),
                http: s.http.clone().unwrap_or_default(),
                backends,
                latency_thresholds_us,
                consecutive_5xx: s.outlier.consecutive_5xx,
                classes,
            })
        })
        .collect();
    Targets {
        generation,
        services,
        workloads: config.workloads.iter().map(|w| w.name.clone()).collect(),
    }
}

/// Whether `config` has a service the proxy must serve.
pub(crate) fn has_http(config: &MeshConfig) -> bool {
    config.services.iter().any(|s| s.protocol == Protocol::Http)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tables::{plan, KernelState, Overlay};

    const CONFIG: &str = "
workloads:
  - {name: web, cgroup: t/web}
  - {name: batch, cgroup: t/batch}
services:
  - name: plain
    vip: 127.100.0.1
    port: 80
    backends: [{addr: 127.0.0.2:8081}]
  - name: shop
    vip: 127.100.0.2
    port: 80
    protocol: http
    http:
      timeout: 2s
      routes:
        - match: {path_prefix: /v2}
          to: {track: canary}
    backends:
      - {addr: 127.0.0.3:8081, weight: 3, labels: {track: stable}}
      - {addr: 127.0.0.4:8081, labels: {track: canary}}
    slos:
      - {name: fast, sli: request_latency, objective: 0.99, window: 1d, threshold: 250ms}
      - {name: ok, sli: request_success, objective: 0.999, window: 1d}
      - {name: snappy, sli: request_latency, objective: 0.9, window: 1d, threshold: 50ms}
      - {name: same, sli: request_latency, objective: 0.5, window: 1d, threshold: 250ms}
";

    fn applied(config: &MeshConfig) -> Vec<ServiceView> {
        plan(config, &Overlay::new(), &KernelState::default())
            .expect("plans")
            .views
    }

    #[test]
    fn only_http_services_with_their_kernel_ids_labels_and_workloads() {
        let cfg = sockmesh_model::parse_config(CONFIG).unwrap();
        let views = applied(&cfg);
        let t = targets(&cfg, &views, 7);
        assert_eq!(t.generation, 7);
        assert_eq!(t.workloads, ["web", "batch"]);
        assert_eq!(t.services.len(), 1);
        let shop = &t.services[0];
        let view = views.iter().find(|v| v.name == "shop").unwrap();
        assert_eq!((shop.name.as_str(), shop.id), ("shop", view.id));
        assert_eq!(shop.http, cfg.services[1].http.clone().unwrap());
        assert_eq!(shop.backends.len(), 2);
        assert_eq!(shop.backends[0].weight, 3);
        assert_eq!(shop.backends[1].labels["track"], "canary");
        assert!(shop.backends.iter().all(|b| b.eligible));
        assert_eq!(shop.latency_thresholds_us, [50_000, 250_000]);
        assert!(has_http(&cfg));
    }

    #[test]
    fn a_backend_without_slots_is_not_eligible() {
        let cfg = sockmesh_model::parse_config(CONFIG).unwrap();
        let mut views = applied(&cfg);
        let shop = views.iter_mut().find(|v| v.name == "shop").unwrap();
        let mut backends = shop.backends.to_vec();
        backends[1].slots = 0;
        shop.backends = backends.into();
        let t = targets(&cfg, &views, 1);
        let eligible: Vec<bool> = t.services[0].backends.iter().map(|b| b.eligible).collect();
        assert_eq!(eligible, [true, false]);
    }

    #[test]
    fn caller_routes_give_each_class_its_kernel_weights() {
        let cfg = sockmesh_model::parse_config(
            "
workloads:
  - {name: web, cgroup: t/web, labels: {lane: canary}}
  - {name: batch, cgroup: t/batch}
services:
  - name: shop
    vip: 127.100.0.2
    port: 80
    protocol: http
    routes:
      - match: {lane: canary}
        to: {track: canary}
      - to: {track: stable}
    backends:
      - {addr: 127.0.0.3:8081, labels: {track: stable}}
      - {addr: 127.0.0.4:8081, labels: {track: canary}}
",
        )
        .unwrap();
        let t = targets(&cfg, &applied(&cfg), 1);
        let shop = &t.services[0];
        let classes: Vec<(u32, bool, bool)> = shop
            .classes
            .iter()
            .map(|c| (c.workload, c.weights[0] > 0, c.weights[1] > 0))
            .collect();
        // Class 0 (batch, and callers that are not workloads): stable only; web (1): canary.
        assert_eq!(classes, [(0, true, false), (1, false, true)]);
        // The canary is eligible: a class may use it.
        assert!(shop.backends.iter().all(|b| b.eligible));
    }

    #[test]
    fn a_split_keeps_its_proportions_under_least_conn() {
        // least_conn's kernel table holds each usable backend once: the proxy must get the
        // split's weights, not those slot counts.
        let cfg = sockmesh_model::parse_config(
            "
services:
  - name: shop
    vip: 127.100.0.2
    port: 80
    protocol: http
    lb: least_conn
    routes:
      - weight_split:
          - {to: {track: stable}, percent: 90}
          - {to: {track: canary}, percent: 10}
    backends:
      - {addr: 127.0.0.3:8081, labels: {track: stable}}
      - {addr: 127.0.0.4:8081, labels: {track: canary}}
",
        )
        .unwrap();
        let t = targets(&cfg, &applied(&cfg), 1);
        let class0 = &t.services[0].classes[0];
        assert_eq!(class0.workload, 0);
        assert_eq!(
            class0.weights[0],
            9 * class0.weights[1],
            "{:?}",
            class0.weights
        );
    }

    #[test]
    fn tcp_only_configs_have_no_targets() {
        let cfg = sockmesh_model::parse_config(
            "services: [{name: a, vip: 127.100.0.1, port: 80, backends: [{addr: 127.0.0.2:1}]}]",
        )
        .unwrap();
        assert!(targets(&cfg, &applied(&cfg), 1).services.is_empty());
        assert!(!has_http(&cfg));
    }
}
