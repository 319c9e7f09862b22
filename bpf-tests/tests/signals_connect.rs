//! Successful connects as Prometheus counts: N connects through a VIP move
//! `sockmesh_connections_total{result="ok"}` (summed over backends) and the handshake
//! histogram's `_count` by exactly N; per backend they match what the backends accepted; the
//! `caller` label is the workload whose cgroup connected, or `unknown` for a cgroup no
//! workload names; the `sockmesh` CLI shows the same counts.

use std::net::SocketAddr;

use serde_json::Value;
use sockmesh_bpf_tests::{
    label_values, loopback_addrs, sockmesh_cli, sockmesh_cli_json, sum_metric,
    wait_counter_settled, wait_workloads, BackendMode, ConnectClient, ServiceYaml, TcpBackendSet,
    TestBed, WorkloadYaml, SIGNAL_TIMEOUT,
};

const CONNECTIONS: &str = "sockmesh_connections_total";
const HANDSHAKES: &str = "sockmesh_connect_duration_seconds_count";
/// Connects from the `frontend` workload's cgroup, and from the test cgroup (no workload).
const FROM_WORKLOAD: usize = 200;
const FROM_UNKNOWN: usize = 20;

#[test]
fn ok_connects_count_exactly_per_caller_and_backend_and_cli_agrees() {
    let backends = loopback_addrs(2, 2, 18300);
    let vip: SocketAddr = "127.100.30.1:18301".parse().unwrap();
    let service = ServiceYaml::new("web", vip, "round_robin").backends(&backends, &[1, 1]);
    let set = TcpBackendSet::start(&backends, BackendMode::Identify).unwrap();
    let mut bed = TestBed::new(
        "signals-connect",
        &ServiceYaml::mesh(std::slice::from_ref(&service)),
    )
    .unwrap();
    // Created before the agent starts, so its first look at workloads finds the cgroup.
    let frontend = bed.cgroup().child("frontend").unwrap();
    let workload = WorkloadYaml::new("frontend", &frontend.relative_path().unwrap());
    bed.write_config(&ServiceYaml::mesh_with_workloads(&[service], &[workload]))
        .unwrap();
    bed.start_agent().unwrap();
    wait_workloads(bed.agent(), &["frontend"], SIGNAL_TIMEOUT).unwrap();

    let ok = |caller: &'static str| {
        move |t: &str| {
            sum_metric(
                t,
                CONNECTIONS,
                &[("service", "web"), ("caller", caller), ("result", "ok")],
            )
        }
    };
    let before = bed.agent().metrics_text().unwrap();
    let (ok_workload_0, ok_unknown_0) = (ok("frontend")(&before), ok("unknown")(&before));
    let handshakes_0 = sum_metric(&before, HANDSHAKES, &[("service", "web")]);
    let ok_web = |t: &str| sum_metric(t, CONNECTIONS, &[("service", "web"), ("result", "ok")]);
    let ok_web_0 = ok_web(&before);

    ConnectClient::new(vip, FROM_WORKLOAD)
        .run(Some(&frontend), None)
        .unwrap()
        .assert_all_ok("connects from the frontend workload");
    ConnectClient::new(vip, FROM_UNKNOWN)
        .run(Some(bed.cgroup()), None)
        .unwrap()
        .assert_all_ok("connects from the test cgroup");
    let total = (FROM_WORKLOAD + FROM_UNKNOWN) as f64;
    assert_eq!(
        set.total_accepts() as f64,
        total,
        "backends' accept counters"
    );

    let after =
        wait_counter_settled(bed.agent(), "ok connects to web", ok_web_0 + total, ok_web).unwrap();
    let moved_workload = ok("frontend")(&after) - ok_workload_0;
    let moved_unknown = ok("unknown")(&after) - ok_unknown_0;
    let moved_handshakes = sum_metric(&after, HANDSHAKES, &[("service", "web")]) - handshakes_0;
    eprintln!(
        "ok: frontend +{moved_workload}, unknown +{moved_unknown}; handshakes +{moved_handshakes}"
    );
    assert_eq!(moved_workload, FROM_WORKLOAD as f64, "ok, caller=frontend");
    assert_eq!(moved_unknown, FROM_UNKNOWN as f64, "ok, caller=unknown");
    assert_eq!(moved_handshakes, total, "handshake histogram _count");
    let callers = label_values(&after, CONNECTIONS, "caller");
    assert_eq!(
        callers.into_iter().collect::<Vec<_>>(),
        ["frontend", "unknown"],
        "caller label values"
    );
    for result in ["refused", "timeout", "unreachable", "reset", "no_backend"] {
        let n = sum_metric(&after, CONNECTIONS, &[("result", result)]);
        assert_eq!(n, 0.0, "result={result} after only successful connects");
    }

    // Per backend: the agent's counts are what each backend really accepted.
    let mut per_backend = Vec::new();
    for b in set.backends() {
        let addr = b.addr().to_string();
        let labels = [("service", "web"), ("backend", addr.as_str())];
        let oks = sum_metric(
            &after,
            CONNECTIONS,
            &[labels[0], labels[1], ("result", "ok")],
        );
        let handshakes = sum_metric(&after, HANDSHAKES, &labels);
        eprintln!(
            "{addr}: accepted {}, ok {oks}, handshakes {handshakes}",
            b.accepts()
        );
        assert_eq!(oks, b.accepts() as f64, "ok on {addr}");
        assert_eq!(handshakes, b.accepts() as f64, "handshakes on {addr}");
        per_backend.push((addr, b.accepts()));
    }

    // The CLI, reading the admin API, shows the same counts.
    let rows = sockmesh_cli_json(bed.agent(), &["backends", "web"]).unwrap();
    for (addr, accepted) in &per_backend {
        let row = backend_row(&rows, addr);
        assert_eq!(row["connects"]["ok"], *accepted, "CLI ok for {addr}: {row}");
        assert_eq!(row["connects"]["refused"], 0, "{row}");
        assert!(
            row["handshake_mean_ms"].as_f64().is_some_and(|ms| ms > 0.0),
            "{row}"
        );
    }
    let services = sockmesh_cli_json(bed.agent(), &["services"]).unwrap();
    let web = services
        .as_array()
        .and_then(|s| s.iter().find(|s| s["name"] == "web"))
        .unwrap_or_else(|| panic!("`sockmesh services` lacks web: {services:#}"));
    assert_eq!(web["vip"], "127.100.30.1", "{web}");
    assert_eq!(web["port"], 18301, "{web}");
    assert_eq!(web["backends"].as_array().map(Vec::len), Some(2), "{web}");
    let table = sockmesh_cli(bed.agent(), &["backends", "web"]).unwrap();
    let table = String::from_utf8_lossy(&table.stdout).into_owned();
    eprintln!("sockmesh backends web:\n{table}");
    for (addr, accepted) in &per_backend {
        let line = table
            .lines()
            .find(|l| l.starts_with(addr.as_str()))
            .unwrap_or_else(|| panic!("no row for {addr} in:\n{table}"));
        let ok_column = line.split_whitespace().nth(3);
        assert_eq!(
            ok_column,
            Some(accepted.to_string().as_str()),
            "OK column: {line}"
        );
    }
}

fn backend_row<'a>(rows: &'a Value, addr: &str) -> &'a Value {
    rows.as_array()
        .and_then(|r| r.iter().find(|b| b["addr"] == addr))
        .unwrap_or_else(|| panic!("no backend {addr} in {rows:#}"))
}
