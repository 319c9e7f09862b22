//! The mapping rules of `map.rs` for names, workloads (pod cgroups, QoS, labels) and the
//! kernel's backend budget, on hand-written objects (helpers in `map_tests.rs`).

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::{json, Value};
use sockmesh_model::{LbPolicy, MeshConfig, ServiceSpec, MAX_SERVICE_NAME_LEN};

use super::map_tests::*;

use super::map::*;

#[test]
fn pod_cgroups_follow_the_kubelet() {
    let uid = "0a1b2c3d-0000-1111-2222-333344445555";
    let systemd = MapOptions::default();
    let cgroupfs = MapOptions {
        cgroup_driver: CgroupDriver::Cgroupfs,
        cgroup_root: String::new(),
    };
    let cases = [
        (&systemd, QosClass::Guaranteed, "kubepods.slice/kubepods-pod0a1b2c3d_0000_1111_2222_333344445555.slice"),
        (&systemd, QosClass::BestEffort, "kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod0a1b2c3d_0000_1111_2222_333344445555.slice"),
        (&cgroupfs, QosClass::Guaranteed, "kubepods/pod0a1b2c3d-0000-1111-2222-333344445555"),
        (&cgroupfs, QosClass::Burstable, "kubepods/burstable/pod0a1b2c3d-0000-1111-2222-333344445555"),
    ];
    for (opts, qos, want) in cases {
        assert_eq!(pod_cgroup(opts, uid, qos).as_deref(), Some(want));
    }
    let rooted = MapOptions {
        cgroup_driver: CgroupDriver::Cgroupfs,
        cgroup_root: "/custom/".to_owned(),
    };
    assert_eq!(
        pod_cgroup(&rooted, uid, QosClass::BestEffort).as_deref(),
        Some("custom/kubepods/besteffort/pod0a1b2c3d-0000-1111-2222-333344445555")
    );
    assert_eq!(pod_cgroup(&systemd, "../../etc", QosClass::Burstable), None);
    assert_eq!(pod_cgroup(&systemd, "", QosClass::Burstable), None);
    assert_eq!(
        "cgroupfs".parse::<CgroupDriver>(),
        Ok(CgroupDriver::Cgroupfs)
    );
    assert!("cgroupv2".parse::<CgroupDriver>().is_err());
}

#[test]
fn qos_is_read_or_derived() {
    let with = |resources: Value| -> Arc<k8s_openapi::api::core::v1::Pod> {
        obj(json!({"metadata": {"name": "p"},
                   "spec": {"containers": [{"name": "c", "resources": resources}]}}))
    };
    assert_eq!(qos_class(&with(json!({}))), QosClass::BestEffort);
    assert_eq!(
        qos_class(&with(json!({"limits": {"cpu": "1", "memory": "1Gi"}}))),
        QosClass::Guaranteed
    );
    assert_eq!(
        qos_class(&with(json!({"requests": {"cpu": "1"}}))),
        QosClass::Burstable
    );
    assert_eq!(
        qos_class(&with(json!({"requests": {"cpu": "500m", "memory": "1Gi"},
                               "limits": {"cpu": "1", "memory": "1Gi"}}))),
        QosClass::Burstable
    );
    let stated: Arc<k8s_openapi::api::core::v1::Pod> =
        obj(json!({"metadata": {"name": "p"}, "status": {"qosClass": "Guaranteed"}}));
    assert_eq!(qos_class(&stated), QosClass::Guaranteed);
}

#[test]
fn labels_the_model_cannot_carry_are_dropped() {
    let mut labels = BTreeMap::new();
    labels.insert("app".to_owned(), "web".to_owned());
    labels.insert(format!("{}/name", "x".repeat(70)), "v".to_owned());
    labels.insert("note".to_owned(), "v".repeat(64));
    let kept = model_labels(&Some(labels));
    assert_eq!(kept.keys().collect::<Vec<_>>(), ["app"]);
}

#[test]
fn services_past_the_kernels_backend_budget_are_left_out_one_pass() {
    let svc = |name: &str, n: usize| {
        ServiceSpec::new(
            name,
            "127.100.200.1".parse().unwrap(),
            80,
            LbPolicy::default(),
            (0..n)
                .map(|i| {
                    sockmesh_model::BackendSpec::new(
                        std::net::SocketAddr::from(([127, 0, 10, i as u8 + 1], 8080)),
                        1,
                    )
                })
                .collect(),
        )
    };
    let mut services = vec![svc("a", 3), svc("b", 4), svc("c", 2), svc("d", 1)];
    // Budget 6: a (3) fits, b (4) would make 7, c (2) makes 5, d (1) makes 6.
    let left_out = fit_backend_budget(&mut services, 6);
    assert_eq!(left_out, ["b"]);
    let kept: Vec<&str> = services.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(kept, ["a", "c", "d"]);
    // Under the budget nothing changes.
    let mut services = vec![svc("a", 3)];
    assert!(fit_backend_budget(&mut services, sockmesh_model::MAX_BACKEND_PAIRS).is_empty());
    assert_eq!(services.len(), 1);
}

#[test]
fn names_are_valid_unique_and_stable() {
    assert_eq!(mesh_name(&["shop", "web", "80"]), "shop-web-80");
    assert_eq!(mesh_name(&["Shop", "web.v1", "80"]), "shop-web.v1-80");
    let long_ns = "n".repeat(63);
    let long = mesh_name(&[&long_ns, &"s".repeat(63), "8080"]);
    assert_eq!(long.len(), MAX_SERVICE_NAME_LEN);
    assert_eq!(
        long,
        mesh_name(&[&long_ns, &"s".repeat(63), "8080"]),
        "stable"
    );
    assert_ne!(long, mesh_name(&[&long_ns, &"s".repeat(63), "8081"]));
    let cfg = MeshConfig {
        version: 1,
        services: vec![ServiceSpec::new(
            &long,
            "127.0.10.1".parse().unwrap(),
            1,
            LbPolicy::default(),
            vec![sockmesh_model::BackendSpec::new(
                "127.0.10.2:1".parse().unwrap(),
                1,
            )],
        )],
        workloads: Vec::new(),
        enrollment: Default::default(),
    };
    cfg.validate().unwrap();

    // `a-b`/`c` and `a`/`b-c` join to the same name: the second gets a hashed one.
    let mut snap = shop();
    snap.namespaces = vec![
        namespace("a-b", Some(ENABLED)),
        namespace("a", Some(ENABLED)),
    ];
    snap.services = vec![
        service("a-b", "c", "127.100.201.1", json!([{"port": 80}])),
        service("a", "b-c", "127.100.201.2", json!([{"port": 80}])),
    ];
    snap.slices = vec![
        slice(
            "a-b",
            "c-1",
            "c",
            json!([{"port": 80}]),
            &[("127.1.10.1", None, None, None)],
        ),
        slice(
            "a",
            "bc-1",
            "b-c",
            json!([{"port": 80}]),
            &[("127.1.10.2", None, None, None)],
        ),
    ];
    let (cfg, rejected) = build_ok(&snap);
    assert!(rejected.is_empty(), "{rejected:?}");
    assert_eq!(cfg.services.len(), 2);
    // Sorted by namespace/name: `a-b/c` comes first and keeps the plain name.
    assert_eq!(cfg.services[0].name, "a-b-c-80");
    assert_eq!(addrs(&cfg.services[0]), ["127.1.10.1:80"]);
    assert!(
        cfg.services[1].name.starts_with("a-b-c-80-"),
        "{:?}",
        names(&cfg)
    );
}
