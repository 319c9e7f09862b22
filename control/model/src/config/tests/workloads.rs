//! The `workloads:` section: what parses, and one test per rule it must follow.

use super::*;
use crate::{CallerSelector, CallerSpec, Enrollment, MAX_LABEL_VALUE_LEN, MAX_WORKLOADS};

const WITH_WORKLOADS: &str = "\
services: []
workloads:
  - name: frontend
    cgroup: sockmesh-test-42/frontend
    labels:
      team: web
      app.kubernetes.io/name: shop
  - name: batch
    cgroup: /sys/fs/cgroup/batch
";

fn two() -> MeshConfig {
    let mut cfg = mesh(vec![]);
    cfg.workloads = vec![
        workload("frontend", "demo/frontend", &[("team", "web")]),
        workload("batch", "demo/batch", &[]),
    ];
    cfg
}

#[test]
fn workloads_parse_with_labels_and_default_to_none() {
    let cfg = parse_config(WITH_WORKLOADS).unwrap();
    assert_eq!(
        cfg.workloads,
        [
            workload(
                "frontend",
                "sockmesh-test-42/frontend",
                &[("team", "web"), ("app.kubernetes.io/name", "shop")],
            ),
            workload("batch", "/sys/fs/cgroup/batch", &[]),
        ]
    );
    assert!(parse_config(ONE_SERVICE).unwrap().workloads.is_empty());
}

#[test]
fn enrollment_defaults_to_all_and_stays_out_of_the_fingerprint() {
    let plain = parse_config(WITH_WORKLOADS).unwrap();
    assert_eq!(plain.enrollment, Enrollment::All);
    let explicit = parse_config(&format!("{WITH_WORKLOADS}enrollment: all\n")).unwrap();
    assert_eq!(explicit.fingerprint(), plain.fingerprint());
    let enrolled = parse_config(&format!("{WITH_WORKLOADS}enrollment: workloads\n")).unwrap();
    assert_eq!(enrolled.enrollment, Enrollment::Workloads);
    assert_ne!(enrolled.fingerprint(), plain.fingerprint());
    assert_rejected(
        &format!("{WITH_WORKLOADS}enrollment: pods\n"),
        "enrollment",
        "unknown variant `pods`",
    );
}

#[test]
fn label_values_that_look_like_numbers_or_booleans_are_strings() {
    let yaml = WITH_WORKLOADS.replace("team: web", "tier: 1\n      canary: true");
    let cfg = parse_config(&yaml).unwrap();
    assert_eq!(cfg.workloads[0].labels["tier"], "1");
    assert_eq!(cfg.workloads[0].labels["canary"], "true");
}

#[test]
fn unknown_workload_field_is_rejected_by_name() {
    let yaml = WITH_WORKLOADS.replace("    cgroup: /sys", "    cgroups: /sys");
    assert_rejected(&yaml, "workloads[1].cgroups", "unknown field `cgroups`");
    let no_cgroup = "services: []\nworkloads:\n  - name: batch\n";
    assert_rejected(no_cgroup, "workloads[0]", "missing field `cgroup`");
}

#[test]
fn empty_workloads_keep_the_fingerprint_of_a_config_without_them() {
    let without = parse_config(ONE_SERVICE).unwrap();
    let with_empty = parse_config(&format!("{ONE_SERVICE}workloads: []\n")).unwrap();
    assert_eq!(without, with_empty);
    assert_eq!(without.fingerprint(), with_empty.fingerprint());
    let json = serde_json::to_string(&without).unwrap();
    assert!(!json.contains("workloads"), "{json}");
}

#[test]
fn workloads_change_the_fingerprint_but_label_order_does_not() {
    let base = two();
    let mut relabeled = base.clone();
    relabeled.workloads[0]
        .labels
        .insert("team".into(), "api".into());
    let mut reordered = base.clone();
    reordered.workloads.reverse();
    for changed in [relabeled, reordered, mesh(vec![])] {
        assert_ne!(base.fingerprint(), changed.fingerprint(), "{changed:?}");
    }
    let a = parse_config(
        "services: []\nworkloads:\n- {name: w, cgroup: x, labels: {a: '1', b: '2'}}\n",
    );
    let b = parse_config(
        "services: []\nworkloads:\n- {name: w, cgroup: x, labels: {b: '2', a: '1'}}\n",
    );
    assert_eq!(a.unwrap().fingerprint(), b.unwrap().fingerprint());
}

#[test]
fn duplicate_workload_name() {
    let mut cfg = two();
    cfg.workloads[1].name = "frontend".into();
    assert_invalid(
        &cfg,
        "workloads[1].name",
        "duplicate workload name \"frontend\", already used by workloads[0]",
    );
}

#[test]
fn workload_may_share_a_name_with_a_service() {
    let mut cfg = two();
    cfg.services = vec![service(
        "frontend",
        "127.100.0.1",
        80,
        &[("127.0.0.2:8081", 1)],
    )];
    cfg.validate().unwrap();
}

#[test]
fn bad_workload_names() {
    for (bad, reason) in [
        ("", "workload name must not be empty"),
        ("Frontend", "invalid workload name \"Frontend\""),
        ("front end", "invalid workload name \"front end\""),
        ("-frontend", "invalid workload name \"-frontend\""),
    ] {
        let mut cfg = two();
        cfg.workloads[0].name = bad.into();
        assert_invalid(&cfg, "workloads[0].name", reason);
    }
    let mut cfg = two();
    cfg.workloads[1].name = "a".repeat(64);
    assert_invalid(
        &cfg,
        "workloads[1].name",
        "is 64 characters, more than the limit of 63",
    );
}

#[test]
fn empty_cgroup() {
    let mut cfg = two();
    cfg.workloads[1].cgroup.clear();
    assert_invalid(&cfg, "workloads[1].cgroup", "cgroup path must not be empty");
}

#[test]
fn cgroup_with_a_dotdot_component() {
    for bad in [
        "..",
        "../host",
        "demo/../../etc",
        "/sys/fs/cgroup/..",
        "demo/..",
    ] {
        let mut cfg = two();
        cfg.workloads[1].cgroup = bad.into();
        assert_invalid(&cfg, "workloads[1].cgroup", "has a '..' component");
    }
    // Only a whole component climbs; dots inside a name are just a name.
    for good in ["demo/..hidden", "demo/a..b", "demo/...", "./demo/batch"] {
        let mut cfg = two();
        cfg.workloads[1].cgroup = good.into();
        cfg.validate()
            .unwrap_or_else(|e| panic!("{good:?} rejected: {e}"));
    }
}

#[test]
fn cgroup_with_a_nul_byte() {
    let mut cfg = two();
    cfg.workloads[0].cgroup = "demo/front\0end".into();
    assert_invalid(&cfg, "workloads[0].cgroup", "contains a NUL byte");
}

#[test]
fn two_workloads_on_one_cgroup() {
    for same in ["demo/frontend", "./demo//frontend/", "demo/frontend/."] {
        let mut cfg = two();
        cfg.workloads[1].cgroup = same.into();
        assert_invalid(
            &cfg,
            "workloads[1].cgroup",
            &format!("duplicate cgroup {same:?}, already used by workloads[0] (frontend)"),
        );
    }
    // Where the mount is only the node knows, so absolute and relative never collide here.
    let mut cfg = two();
    cfg.workloads[1].cgroup = "/demo/frontend".into();
    cfg.validate().unwrap();
}

#[test]
fn bad_label_keys() {
    for (bad, reason) in [
        ("", "label key must not be empty"),
        ("team name", "invalid label key \"team name\""),
        ("tëam", "invalid label key \"tëam\""),
        ("team=x", "invalid label key \"team=x\""),
    ] {
        let mut cfg = two();
        cfg.workloads[1].labels.insert(bad.into(), "x".into());
        assert_invalid(&cfg, "workloads[1].labels", reason);
    }
    let mut cfg = two();
    cfg.workloads[1].labels.insert("k".repeat(63), "x".into());
    cfg.validate().unwrap();
    cfg.workloads[1].labels.insert("k".repeat(64), "x".into());
    assert_invalid(
        &cfg,
        "workloads[1].labels",
        "is 64 characters, more than the limit of 63",
    );
}

#[test]
fn label_value_too_long() {
    let mut cfg = two();
    // Characters, not bytes: 63 two-byte characters fit.
    cfg.workloads[0]
        .labels
        .insert("team".into(), "é".repeat(MAX_LABEL_VALUE_LEN));
    cfg.validate().unwrap();
    cfg.workloads[0]
        .labels
        .insert("team".into(), "w".repeat(MAX_LABEL_VALUE_LEN + 1));
    assert_invalid(
        &cfg,
        "workloads[0].labels.team",
        "label value is 64 characters, more than the limit of 63",
    );
}

#[test]
fn workload_count_limit() {
    let mut cfg = mesh(vec![]);
    cfg.workloads = (0..MAX_WORKLOADS)
        .map(|i| workload(&format!("w{i}"), &format!("demo/w{i}"), &[]))
        .collect();
    cfg.validate().unwrap();
    cfg.workloads.push(workload("extra", "demo/extra", &[]));
    assert_invalid(
        &cfg,
        "workloads",
        "1025 workloads without a node (every node acts on all of them), more than the limit \
         of 1024 per node",
    );
}

fn on_node(name: &str, node: &str) -> WorkloadSpec {
    let mut w = workload(name, &format!("kubepods/{name}"), &[]);
    w.node = Some(node.to_owned());
    w
}

#[test]
fn the_workload_limit_counts_per_node() {
    let mut cfg = mesh(vec![]);
    // 1,024 on each of two nodes: 2,048 in the mesh, 1,024 for either agent.
    cfg.workloads = (0..2 * MAX_WORKLOADS)
        .map(|i| {
            on_node(
                &format!("w{i}"),
                if i % 2 == 0 { "node-a" } else { "node-b" },
            )
        })
        .collect();
    cfg.validate().unwrap();
    // One without a node is on every node: node-a (first by name on a tie) now has 1,025.
    cfg.workloads
        .push(workload("everywhere", "demo/everywhere", &[]));
    assert_invalid(
        &cfg,
        "workloads",
        "1024 workloads on node \"node-a\" and 1 without a node: 1025 for that node, more \
         than the limit of 1024 per node",
    );
}

#[test]
fn node_names_follow_kubernetes() {
    let mut cfg = two();
    cfg.workloads[1].node = Some("Node_1".to_owned());
    assert_invalid(
        &cfg,
        "workloads[1].node",
        "invalid node name \"Node_1\": use lower-case letters, digits, '-' and '.'",
    );
    cfg.workloads[1].node = Some("ip-10-0-0-1.eu-west-1.compute.internal".to_owned());
    cfg.validate().unwrap();
}

#[test]
fn an_agent_acts_on_its_node_and_the_shared_workloads_only() {
    let mut cfg = mesh(vec![service(
        "web",
        "127.100.0.1",
        80,
        &[("127.0.0.2:8081", 1)],
    )]);
    cfg.workloads = vec![
        on_node("a1", "node-a"),
        workload("shared", "demo/shared", &[]),
        on_node("b1", "node-b"),
    ];
    let team = CallerSpec::Selector(CallerSelector {
        labels: [("team".to_owned(), "web".to_owned())].into(),
        ..Default::default()
    });
    cfg.workloads[1].labels.insert("team".into(), "web".into());
    cfg.workloads[2].labels.insert("team".into(), "web".into());
    cfg.services[0].allowed_callers = Some(vec![
        "a1".into(),
        "b1".into(),
        "shared".into(),
        team.clone(),
    ]);
    cfg.validate().unwrap();
    let a = cfg.clone().into_node("node-a");
    let names: Vec<&str> = a.workloads.iter().map(|w| w.name.as_str()).collect();
    assert_eq!(names, ["a1", "shared"]);
    // Names of other nodes' workloads go; the selector stays and matches what is here.
    assert_eq!(
        a.services[0].allowed_callers.as_deref(),
        Some(&["a1".into(), "shared".into(), team.clone()][..])
    );
    assert_eq!(
        a.services[0].admitted_workloads(&a.workloads),
        Some(vec![0, 1])
    );
    a.validate().unwrap();
    // A node with none of its own keeps the shared ones; the ACL stays on (not opened up).
    cfg.services[0].allowed_callers = Some(vec!["b1".into()]);
    let c = cfg.clone().into_node("node-c");
    assert_eq!(c.workloads.len(), 1);
    assert_eq!(c.services[0].allowed_callers, Some(vec![]));
    assert_eq!(c.services[0].admitted_workloads(&c.workloads), Some(vec![]));
    // On node-b the selector matches b1 and the shared workload, b1 also by name.
    cfg.services[0].allowed_callers = Some(vec!["b1".into(), team]);
    let b = cfg.clone().into_node("node-b");
    assert_eq!(
        b.services[0].allowed_callers.as_ref().map(Vec::len),
        Some(2)
    );
    assert_eq!(
        b.services[0].admitted_workloads(&b.workloads),
        Some(vec![0, 1])
    );
    // Without any `node:` the config is returned unchanged.
    let plain = two();
    assert_eq!(plain.clone().into_node("node-a"), plain);
}

#[test]
fn services_are_checked_before_workloads() {
    let mut cfg = two();
    cfg.workloads[1].cgroup.clear();
    cfg.services = vec![service("web", "127.100.0.1", 0, &[("127.0.0.2:8081", 1)])];
    assert_invalid(&cfg, "services[0].port", "port 0");
}

#[test]
fn duplicate_label_key_in_yaml_is_rejected() {
    let yaml = WITH_WORKLOADS.replace("team: web", "team: web\n      team: api");
    let err = assert_rejected(&yaml, "workloads[0].labels", "duplicate label key \"team\"");
    // serde_yaml marks the start of the labels map, where the first `team:` is.
    assert_eq!(err.location().map(|l| l.line), Some(6));
}
