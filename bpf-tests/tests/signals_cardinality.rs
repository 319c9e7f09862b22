//! Bounded label cardinality: twelve workloads connect through one VIP to an agent
//! started with `--max-callers 4`. The `caller` label of `sockmesh_connections_total` takes
//! at most four workload names plus `other` (and `unknown`, had a cgroup no workload names
//! connected), every connect is still counted, and the folding is counted in
//! `sockmesh_label_overflow_total{label="caller"}`.

use std::collections::BTreeSet;
use std::net::SocketAddr;

use sockmesh_bpf_tests::{
    label_values, loopback_addrs, metric_value, sum_metric, wait_counter_settled, wait_workloads,
    BackendMode, Cgroup2, ConnectClient, ServiceYaml, TcpBackendSet, TestBed, WorkloadYaml,
    SIGNAL_TIMEOUT,
};

const CONNECTIONS: &str = "sockmesh_connections_total";
const WORKLOADS: usize = 12;
const MAX_CALLERS: usize = 4;

#[test]
fn callers_beyond_the_bound_fold_into_other_and_are_counted() {
    let backends = loopback_addrs(2, 1, 18350);
    let vip: SocketAddr = "127.100.35.1:18351".parse().unwrap();
    let service = ServiceYaml::new("crowd", vip, "round_robin").backends(&backends, &[1]);
    let set = TcpBackendSet::start(&backends, BackendMode::Identify).unwrap();
    let mut bed = TestBed::new(
        "signals-card",
        &ServiceYaml::mesh(std::slice::from_ref(&service)),
    )
    .unwrap();
    let names: Vec<String> = (0..WORKLOADS).map(|i| format!("w{i:02}")).collect();
    let cgroups: Vec<Cgroup2> = names
        .iter()
        .map(|n| bed.cgroup().child(n).unwrap())
        .collect();
    let workloads: Vec<WorkloadYaml> = names
        .iter()
        .zip(&cgroups)
        .map(|(n, cg)| WorkloadYaml::new(n, &cg.relative_path().unwrap()).label("team", "crowd"))
        .collect();
    bed.write_config(&ServiceYaml::mesh_with_workloads(&[service], &workloads))
        .unwrap();
    bed.start_agent_with(["--max-callers", &MAX_CALLERS.to_string()])
        .unwrap();
    let name_refs: Vec<&str> = names.iter().map(String::as_str).collect();
    wait_workloads(bed.agent(), &name_refs, SIGNAL_TIMEOUT).unwrap();

    // One connect from each workload, in order: w00..w03 are admitted, the rest fold.
    for (name, cg) in names.iter().zip(&cgroups) {
        ConnectClient::new(vip, 1)
            .run(Some(cg), None)
            .unwrap()
            .assert_all_ok(name);
    }
    assert_eq!(set.total_accepts(), WORKLOADS as u64);
    let ok = |t: &str| sum_metric(t, CONNECTIONS, &[("service", "crowd"), ("result", "ok")]);
    let text = wait_counter_settled(bed.agent(), "ok connects", WORKLOADS as f64, ok).unwrap();

    let callers = label_values(&text, CONNECTIONS, "caller");
    let overflow = metric_value(
        &text,
        "sockmesh_label_overflow_total",
        &[("label", "caller")],
    );
    let other = sum_metric(&text, CONNECTIONS, &[("caller", "other")]);
    let series = text
        .lines()
        .filter(|l| l.starts_with(&format!("{CONNECTIONS}{{")))
        .count();
    eprintln!(
        "callers {callers:?}; other {other}; overflow {overflow:?}; {series} series; ok {}",
        ok(&text)
    );
    assert_eq!(ok(&text), WORKLOADS as f64, "every connect is counted");
    let named: BTreeSet<&String> = callers.iter().filter(|c| names.contains(c)).collect();
    assert!(
        named.len() <= MAX_CALLERS,
        "workload names as callers: {named:?}"
    );
    let allowed: BTreeSet<&str> = ["other", "unknown"].into();
    for c in &callers {
        assert!(
            names.contains(c) || allowed.contains(c.as_str()),
            "unexpected caller label {c:?}"
        );
    }
    assert!(callers.contains("other"), "no `other` caller: {callers:?}");
    assert_eq!(
        other,
        (WORKLOADS - named.len()) as f64,
        "connects folded into other"
    );
    assert!(
        overflow.is_some_and(|n| n > 0.0),
        "sockmesh_label_overflow_total{{label=\"caller\"}} is {overflow:?}"
    );
    assert_eq!(overflow, Some(other), "each folded connect is one overflow");
    // One service, one backend, one result: one series per caller label value.
    assert!(series <= MAX_CALLERS + 2, "{series} connection series");
}
