//! Caller identity in the Kubernetes source: the namespace and ServiceAccount labels every
//! pod's workload carries, `allowed_callers` selectors in MeshPolicies, and the shipped
//! example policy admitting exactly the pods its comment names.

use std::sync::Arc;

use serde_json::{json, Value};

use super::map::*;
use super::map_tests::{
    build_ok, by_name, names, namespace, node, obj, policy, service, shop, slice,
};
use sockmesh_model::MeshConfig;

/// A UID unique to the pod (hex digits and dashes, as the kubelet names cgroups by).
fn uid_of(ns: &str, name: &str) -> String {
    let h = format!("{ns}/{name}")
        .bytes()
        .fold(0xcbf2_9ce4_u32, |h, b| {
            (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
        });
    format!("{h:08x}-0000-4000-8000-000000000000")
}

/// A pod of `ns` running as `account` (`None`: no `serviceAccountName`).
fn pod_as(
    ns: &str,
    name: &str,
    labels: Value,
    account: Option<&str>,
) -> Arc<k8s_openapi::api::core::v1::Pod> {
    let mut spec = json!({"nodeName": "node-a", "containers": []});
    if let Some(a) = account {
        spec["serviceAccountName"] = json!(a);
    }
    obj(json!({
        "metadata": {"name": name, "namespace": ns, "uid": uid_of(ns, name), "labels": labels},
        "spec": spec,
        "status": {"phase": "Running", "qosClass": "BestEffort"}
    }))
}

/// The names of the workloads `service` admits (`None`: everyone).
fn admitted<'a>(cfg: &'a MeshConfig, service: &str) -> Option<Vec<&'a str>> {
    let admitted = by_name(cfg, service).admitted_workloads(&cfg.workloads)?;
    Some(
        admitted
            .iter()
            .map(|&i| cfg.workloads[i].name.as_str())
            .collect(),
    )
}

/// The shipped example, applied by a cluster: its comment says it admits shop's pods
/// labelled `app: frontend` and the pods of namespace `jobs` running as ServiceAccount
/// `batch`, and nobody else. Built from a snapshot with pods on both sides of every field.
#[test]
fn the_example_policy_admits_exactly_the_pods_its_comment_names() {
    let text = include_str!("../../../deploy/examples/meshpolicy.yaml");
    assert!(
        text.contains("shop's pods labelled app=frontend")
            && text.contains("pods of namespace jobs running as ServiceAccount batch"),
        "the example's comment changed: update this test with it"
    );
    let object: Value = serde_yaml::from_str(text).unwrap();
    assert_eq!(object["metadata"]["namespace"], "shop");
    let mut snap = Snapshot {
        namespaces: vec![
            namespace("shop", Some(ENABLED)),
            namespace("jobs", Some(ENABLED)),
            namespace("staging", Some(ENABLED)),
        ],
        nodes: vec![node("node-a", Some("zone-a"))],
        services: vec![service(
            "shop",
            "checkout",
            "127.100.200.30",
            json!([{"name": "http", "port": 80, "targetPort": 8080}]),
        )],
        slices: vec![slice(
            "shop",
            "checkout-1",
            "checkout",
            json!([{"name": "http", "port": 8080}]),
            &[("127.0.12.1", Some(true), Some("checkout-0"), Some("zone-a"))],
        )],
        pods: vec![
            pod_as(
                "shop",
                "checkout-0",
                json!({"app": "checkout", "track": "stable"}),
                None,
            ),
            // Admitted: shop, app=frontend (whatever their account).
            pod_as("shop", "frontend-1", json!({"app": "frontend"}), None),
            pod_as(
                "shop",
                "frontend-2",
                json!({"app": "frontend", "lane": "canary"}),
                Some("web"),
            ),
            // Not: another app in shop, app=frontend in another namespace.
            pod_as("shop", "web-1", json!({"app": "web"}), None),
            pod_as("staging", "frontend-1", json!({"app": "frontend"}), None),
            // Admitted: jobs, running as batch.
            pod_as("jobs", "nightly-1", json!({"app": "report"}), Some("batch")),
            // Not: jobs as another account, batch in another namespace, a pod that only
            // labels itself with the account (identity comes from its spec).
            pod_as("jobs", "adhoc-1", json!({"app": "report"}), Some("default")),
            pod_as("shop", "batch-1", json!({}), Some("batch")),
            pod_as(
                "jobs",
                "spoof-1",
                json!({SERVICE_ACCOUNT_LABEL: "batch"}),
                None,
            ),
        ],
        policies: vec![obj(object)],
    };
    let (cfg, rejected) = build_ok(&snap);
    assert!(rejected.is_empty(), "{rejected:?}");
    assert_eq!(names(&cfg), ["shop-checkout-80"]);
    assert_eq!(
        admitted(&cfg, "shop-checkout-80").unwrap(),
        ["jobs-nightly-1", "shop-frontend-1", "shop-frontend-2"]
    );

    // New pods are matched as they come, with no edit of the policy; gone ones are gone.
    snap.pods.push(pod_as(
        "shop",
        "frontend-3",
        json!({"app": "frontend"}),
        None,
    ));
    snap.pods
        .retain(|p| p.metadata.name.as_deref() != Some("nightly-1"));
    let (cfg, _) = build_ok(&snap);
    assert_eq!(
        admitted(&cfg, "shop-checkout-80").unwrap(),
        ["shop-frontend-1", "shop-frontend-2", "shop-frontend-3"]
    );
}

#[test]
fn workloads_carry_their_namespace_and_service_account() {
    let mut snap = shop();
    snap.pods = vec![
        pod_as("shop", "a", json!({}), None),
        pod_as("shop", "b", json!({}), Some("checkout")),
        // Labels a pod sets on itself do not pass for its identity.
        pod_as(
            "shop",
            "c",
            json!({NAMESPACE_LABEL: "kube-system", SERVICE_ACCOUNT_LABEL: "admin"}),
            Some("web"),
        ),
        // An account name the model cannot carry as a label value: no account label.
        pod_as(
            "shop",
            "d",
            json!({SERVICE_ACCOUNT_LABEL: "admin"}),
            Some(&"x".repeat(64)),
        ),
    ];
    let (cfg, _) = build_ok(&snap);
    let identity: Vec<(&str, Option<&str>, Option<&str>)> = cfg
        .workloads
        .iter()
        .map(|w| {
            (
                w.name.as_str(),
                w.labels.get(NAMESPACE_LABEL).map(String::as_str),
                w.labels.get(SERVICE_ACCOUNT_LABEL).map(String::as_str),
            )
        })
        .collect();
    assert_eq!(
        identity,
        [
            ("shop-a", Some("shop"), Some("default")),
            ("shop-b", Some("shop"), Some("checkout")),
            ("shop-c", Some("shop"), Some("web")),
            ("shop-d", Some("shop"), None),
        ]
    );
}

#[test]
fn selectors_survive_the_mapping_and_are_checked_with_the_policy() {
    let mut snap = shop();
    snap.policies = vec![policy(
        "shop",
        "web",
        json!({"service": "web", "allowed_callers": [
            "shop-gone-0",
            {"namespace": "shop", "labels": {"track": "canary"}},
            {"service_account": "nobody"}
        ]}),
    )];
    let (cfg, rejected) = build_ok(&snap);
    assert!(rejected.is_empty(), "{rejected:?}");
    // The gone pod's name is dropped; both selectors stay, one matching web-2, one nobody.
    assert_eq!(
        by_name(&cfg, "shop-web-80")
            .allowed_callers
            .as_ref()
            .map(Vec::len),
        Some(2)
    );
    assert_eq!(admitted(&cfg, "shop-web-80").unwrap(), ["shop-web-2"]);
    // A route can match the same identity labels.
    snap.policies = vec![policy(
        "shop",
        "web",
        json!({"service": "web", "routes": [
            {"match": {NAMESPACE_LABEL: "shop", SERVICE_ACCOUNT_LABEL: "default"}, "to": {"track": "stable"}}
        ]}),
    )];
    let (cfg, rejected) = build_ok(&snap);
    assert!(rejected.is_empty(), "{rejected:?}");
    let route = &by_name(&cfg, "shop-web-80").routes[0];
    assert!(cfg
        .workloads
        .iter()
        .all(|w| route.matches_caller(&w.labels)));

    // A bad selector is the policy's rejection, with the path inside the policy.
    for (callers, path) in [
        (
            json!([{"namespace": "Shop"}]),
            "spec.allowed_callers[0].namespace",
        ),
        (json!(["shop-web-1", {}]), "spec.allowed_callers[1]"),
        (
            json!([{"labels": {"a b": "c"}}]),
            "spec.allowed_callers[0].labels",
        ),
        (
            json!([{"service_acount": "x"}]),
            "spec.allowed_callers[0].service_acount",
        ),
    ] {
        let spec = json!({"service": "web", "allowed_callers": callers});
        let (got, _) = check_policy(&spec).expect_err("refused");
        assert_eq!(got, path, "{spec}");
    }
}
