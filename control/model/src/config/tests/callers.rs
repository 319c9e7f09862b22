//! `allowed_callers`: names and identity selectors, how they decode, the rules they follow,
//! and which workloads a service admits.

use std::collections::BTreeMap;

use proptest::prelude::*;

use super::*;
use crate::{
    admitted_workloads, CallerSelector, CallerSpec, MAX_CALLER_SELECTORS, MAX_SELECTOR_LABELS,
    NAMESPACE_LABEL, SERVICE_ACCOUNT_LABEL,
};

const WITH_CALLERS: &str = "
services:
  - name: web
    vip: 127.100.0.1
    port: 80
    backends:
      - addr: 127.0.0.2:8081
    allowed_callers:
      - frontend
      - {namespace: shop, labels: {app: checkout}}
      - service_account: batch
workloads:
  - name: frontend
    cgroup: a/frontend
  - name: shop-checkout-1
    cgroup: a/checkout
    labels: {sockmesh.io/namespace: shop, sockmesh.io/service-account: default, app: checkout}
  - name: ops-checkout-1
    cgroup: a/ops-checkout
    labels: {sockmesh.io/namespace: ops, app: checkout}
  - name: shop-batch-1
    cgroup: a/batch
    labels: {sockmesh.io/namespace: shop, sockmesh.io/service-account: batch}
  - name: shop-web-1
    cgroup: a/web
    labels: {sockmesh.io/namespace: shop, sockmesh.io/service-account: default, app: web}
";

fn selector(ns: Option<&str>, sa: Option<&str>, labels: &[(&str, &str)]) -> CallerSpec {
    CallerSpec::Selector(CallerSelector {
        namespace: ns.map(str::to_owned),
        service_account: sa.map(str::to_owned),
        labels: labels
            .iter()
            .map(|&(k, v)| (k.to_owned(), v.to_owned()))
            .collect(),
    })
}

#[test]
fn names_and_selectors_decode_side_by_side() {
    let cfg = parse_config(WITH_CALLERS).unwrap();
    assert_eq!(
        cfg.services[0].allowed_callers,
        Some(vec![
            "frontend".into(),
            selector(Some("shop"), None, &[("app", "checkout")]),
            selector(None, Some("batch"), &[]),
        ])
    );
    // frontend by name, shop's checkout (not ops' one) by namespace and label, the batch
    // service account; the web pod of shop matches nothing.
    let admitted = cfg.services[0].admitted_workloads(&cfg.workloads).unwrap();
    let names: Vec<&str> = admitted
        .iter()
        .map(|&i| cfg.workloads[i].name.as_str())
        .collect();
    assert_eq!(names, ["frontend", "shop-checkout-1", "shop-batch-1"]);
    // Round trips as written, through YAML and JSON.
    let yaml = serde_yaml::to_string(&cfg).unwrap();
    assert_eq!(parse_config(&yaml).unwrap(), cfg);
    let json = serde_json::to_string(&cfg).unwrap();
    assert!(
        json.contains(r#""allowed_callers":["frontend",{"namespace":"shop","labels":{"app":"checkout"}},{"service_account":"batch"}]"#),
        "{json}"
    );
    assert_eq!(serde_json::from_str::<MeshConfig>(&json).unwrap(), cfg);
}

#[test]
fn a_names_only_list_keeps_its_fingerprint() {
    // Serialized exactly as the `Vec<String>` it used to be: the JSON, so the fingerprint,
    // of every config written before selectors is unchanged.
    let mut web = service("web", "127.100.0.1", 80, &[("127.0.0.2:8081", 1)]);
    web.allowed_callers = Some(vec!["frontend".into(), "batch".into()]);
    let json = serde_json::to_string(&web).unwrap();
    assert!(
        json.contains(r#""allowed_callers":["frontend","batch"]"#),
        "{json}"
    );
    let mut cfg = mesh(vec![web]);
    cfg.workloads = vec![
        workload("frontend", "a/f", &[]),
        workload("batch", "a/b", &[]),
    ];
    // Pinned (under the per-service fingerprint): the JSON above is what it hashes.
    assert_eq!(cfg.fingerprint(), "942f4ba27fc0c3f1");
}

#[test]
fn no_list_admits_everyone_and_an_empty_one_nobody() {
    let w = [workload("a", "x/a", &[("app", "a")])];
    assert_eq!(admitted_workloads(None, &w), None);
    assert_eq!(admitted_workloads(Some(&[]), &w), Some(vec![]));
    // A selector matching nothing is valid and admits nobody from it.
    let mut web = service("web", "127.100.0.1", 80, &[("127.0.0.2:8081", 1)]);
    web.allowed_callers = Some(vec![selector(Some("nowhere"), None, &[])]);
    let mut cfg = mesh(vec![web]);
    cfg.workloads = w.to_vec();
    cfg.validate().unwrap();
    assert_eq!(
        cfg.services[0].admitted_workloads(&cfg.workloads),
        Some(vec![])
    );
}

#[test]
fn namespace_and_service_account_are_the_well_known_labels() {
    let s = CallerSelector {
        namespace: Some("shop".into()),
        service_account: Some("web".into()),
        labels: BTreeMap::new(),
    };
    let labels = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|&(k, v)| (k.to_owned(), v.to_owned()))
            .collect()
    };
    assert!(s.matches(&labels(&[
        (NAMESPACE_LABEL, "shop"),
        (SERVICE_ACCOUNT_LABEL, "web"),
        ("app", "x")
    ])));
    // Every given field must match; a missing label is no match.
    assert!(!s.matches(&labels(&[(NAMESPACE_LABEL, "shop")])));
    assert!(!s.matches(&labels(&[
        (NAMESPACE_LABEL, "shop"),
        (SERVICE_ACCOUNT_LABEL, "default")
    ])));
    assert!(!s.matches(&labels(&[
        (NAMESPACE_LABEL, "shop2"),
        (SERVICE_ACCOUNT_LABEL, "web")
    ])));
    // Keys are not prefixes or case-folded.
    assert!(!s.matches(&labels(&[
        ("namespace", "shop"),
        ("service_account", "web")
    ])));
}

#[test]
fn selector_rules_name_the_field() {
    let cases: Vec<(CallerSpec, &str, &str)> = vec![
        (
            selector(None, None, &[]),
            "services[0].allowed_callers[1]",
            "at least one of namespace, service_account or labels",
        ),
        (
            selector(Some("Shop"), None, &[]),
            "services[0].allowed_callers[1].namespace",
            "not a Kubernetes name",
        ),
        (
            selector(Some("a.b"), None, &[]),
            "services[0].allowed_callers[1].namespace",
            "not a Kubernetes name",
        ),
        (
            selector(Some(""), None, &[]),
            "services[0].allowed_callers[1].namespace",
            "must not be empty",
        ),
        (
            selector(None, Some(&"s".repeat(64)), &[]),
            "services[0].allowed_callers[1].service_account",
            "more than the limit of 63",
        ),
        (
            selector(None, Some("batch_jobs"), &[]),
            "services[0].allowed_callers[1].service_account",
            "not a Kubernetes name",
        ),
        (
            selector(None, None, &[("te am", "x")]),
            "services[0].allowed_callers[1].labels",
            "invalid label key",
        ),
        (
            selector(None, None, &[("team", &"v".repeat(64))]),
            "services[0].allowed_callers[1].labels.team",
            "more than the limit of 63",
        ),
    ];
    for (entry, path, fragment) in cases {
        let mut web = service("web", "127.100.0.1", 80, &[("127.0.0.2:8081", 1)]);
        web.allowed_callers = Some(vec!["a".into(), entry]);
        let mut cfg = mesh(vec![web]);
        cfg.workloads = vec![workload("a", "x/a", &[])];
        assert_invalid(&cfg, path, fragment);
    }
    // Service account names may have dots (a DNS subdomain).
    let mut web = service("web", "127.100.0.1", 80, &[("127.0.0.2:8081", 1)]);
    web.allowed_callers = Some(vec![selector(None, Some("ci.runner-1"), &[])]);
    mesh(vec![web]).validate().unwrap();
}

#[test]
fn selector_sizes_are_bounded() {
    let many_labels: Vec<(String, String)> = (0..=MAX_SELECTOR_LABELS)
        .map(|i| (format!("k{i}"), "v".to_owned()))
        .collect();
    let mut web = service("web", "127.100.0.1", 80, &[("127.0.0.2:8081", 1)]);
    web.allowed_callers = Some(vec![CallerSpec::Selector(CallerSelector {
        labels: many_labels.into_iter().collect(),
        ..Default::default()
    })]);
    assert_invalid(
        &mesh(vec![web]),
        "services[0].allowed_callers[0].labels",
        "17 labels, more than the limit of 16",
    );

    let mut web = service("web", "127.100.0.1", 80, &[("127.0.0.2:8081", 1)]);
    web.allowed_callers = Some(
        (0..=MAX_CALLER_SELECTORS)
            .map(|i| selector(Some(&format!("ns{i}")), None, &[]))
            .collect(),
    );
    assert_invalid(
        &mesh(vec![web.clone()]),
        "services[0].allowed_callers",
        "more than 32 selectors",
    );
    web.allowed_callers
        .as_mut()
        .unwrap()
        .truncate(MAX_CALLER_SELECTORS);
    mesh(vec![web.clone()]).validate().unwrap();

    // Names (here one name many times) are bounded by the mesh's workload limit.
    let mut cfg = mesh(vec![web]);
    cfg.workloads = vec![workload("a", "x/a", &[])];
    cfg.services[0].allowed_callers = Some(vec!["a".into(); crate::MAX_MESH_WORKLOADS]);
    cfg.validate().unwrap();
    cfg.services[0].allowed_callers = Some(vec!["a".into(); crate::MAX_MESH_WORKLOADS + 1]);
    assert_invalid(
        &cfg,
        "services[0].allowed_callers",
        "65537 entries, more than the limit of 65536",
    );
}

#[test]
fn decoding_errors_name_the_selector_field() {
    let typo = WITH_CALLERS.replace("service_account: batch", "serviceAccount: batch");
    let err = assert_rejected(
        &typo,
        "services[0].allowed_callers[2].serviceAccount",
        "unknown field `serviceAccount`, expected one of `namespace`, `service_account`, `labels`",
    );
    assert!(err.location().is_some(), "{err:?}");
    let dup = WITH_CALLERS.replace(
        "labels: {app: checkout}}",
        "labels: {app: checkout, app: web}}",
    );
    assert_rejected(
        &dup,
        "services[0].allowed_callers[1].labels",
        "duplicate label key \"app\"",
    );
    let list = WITH_CALLERS.replace("      - frontend\n", "      - [frontend]\n");
    assert_rejected(
        &list,
        "services[0].allowed_callers[0]",
        "expected a workload name or a selector",
    );
    // A name still has to be a workload; numbers and booleans are names as text.
    let ghost = WITH_CALLERS.replace("      - frontend\n", "      - 2024\n");
    assert_rejected(
        &ghost,
        "services[0].allowed_callers[0]",
        "\"2024\" is not a workload",
    );
}

#[test]
fn routes_match_the_identity_labels_too() {
    // One matching language: a route's `match` reads the same workload labels.
    let yaml = WITH_CALLERS.replace(
        "    allowed_callers:",
        "    routes:\n      - match: {sockmesh.io/namespace: shop, sockmesh.io/service-account: batch}\n        to: {}\n    allowed_callers:",
    );
    let cfg = parse_config(&yaml).unwrap();
    let route = &cfg.services[0].routes[0];
    let matched: Vec<&str> = cfg
        .workloads
        .iter()
        .filter(|w| route.matches_caller(&w.labels))
        .map(|w| w.name.as_str())
        .collect();
    assert_eq!(matched, ["shop-batch-1"]);
}

/// A workload with some of the identity labels and an `app` label.
fn arb_workload() -> impl Strategy<Value = (Option<String>, Option<String>, Option<String>)> {
    let v =
        || proptest::option::of(prop::sample::select(vec!["a", "b", "c"]).prop_map(String::from));
    (v(), v(), v())
}

fn arb_selector() -> impl Strategy<Value = CallerSelector> {
    let v =
        || proptest::option::of(prop::sample::select(vec!["a", "b", "c"]).prop_map(String::from));
    (v(), v(), v()).prop_map(|(namespace, service_account, app)| CallerSelector {
        namespace,
        service_account,
        labels: app.into_iter().map(|a| ("app".to_owned(), a)).collect(),
    })
}

proptest! {
    /// The admitted set is exactly the workloads named or matched by some entry, in order;
    /// matching is "every given field equals the workload's label" (checked field by field
    /// against an independent statement of it); and adding an entry never admits fewer.
    #[test]
    fn admitted_is_the_union_of_names_and_matches(
        ws in proptest::collection::vec(arb_workload(), 0..8),
        sels in proptest::collection::vec(arb_selector(), 0..4),
        named in proptest::collection::vec(any::<bool>(), 8),
        extra in arb_selector(),
    ) {
        let workloads: Vec<WorkloadSpec> = ws
            .iter()
            .enumerate()
            .map(|(i, (ns, sa, app))| {
                let mut labels = Vec::new();
                if let Some(ns) = ns { labels.push((NAMESPACE_LABEL, ns.as_str())); }
                if let Some(sa) = sa { labels.push((SERVICE_ACCOUNT_LABEL, sa.as_str())); }
                if let Some(app) = app { labels.push(("app", app.as_str())); }
                workload(&format!("w{i}"), &format!("x/w{i}"), &labels)
            })
            .collect();
        let mut entries: Vec<CallerSpec> = sels.iter().cloned().map(CallerSpec::from).collect();
        for (i, _) in workloads.iter().enumerate().filter(|(i, _)| named[*i]) {
            entries.push(format!("w{i}").into());
        }
        let got = admitted_workloads(Some(&entries), &workloads).unwrap();
        let expected: Vec<usize> = ws
            .iter()
            .enumerate()
            .filter(|(i, (ns, sa, app))| {
                named[*i]
                    || sels.iter().any(|s| {
                        (s.namespace.is_none() || s.namespace == *ns)
                            && (s.service_account.is_none() || s.service_account == *sa)
                            && s.labels.get("app").is_none_or(|v| Some(v) == app.as_ref())
                    })
            })
            .map(|(i, _)| i)
            .collect();
        prop_assert_eq!(&got, &expected);

        entries.push(extra.into());
        let more = admitted_workloads(Some(&entries), &workloads).unwrap();
        prop_assert!(got.iter().all(|i| more.contains(i)));
    }
}
