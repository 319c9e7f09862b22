//! Failed connects counted on the backend that failed: one service, round robin
//! over a listening backend, an address nothing listens on (RST: `refused`) and a listening
//! backend whose SYNs `sockmesh-agent netfault` drops (no answer: `timeout` once the client
//! gives up after 1.5 s). Each count equals what the client saw; `/v1/failures` and the CLI
//! list the same failures, attributed to the calling workload.

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::Value;
use sockmesh_bpf_tests::{
    metric_value, sockmesh_cli_json, sum_metric, wait_counter_settled, wait_workloads, BackendMode,
    ConnectClient, Faults, Netfault, ServiceYaml, TcpBackendSet, TestBed, WorkloadYaml,
    SIGNAL_TIMEOUT,
};

const CONNECTIONS: &str = "sockmesh_connections_total";
/// Four round-robin cycles over the three backends.
const CONNECTS: usize = 12;
/// The client's connect timeout: past the kernel's 1 s SYN RTO, well short of its give-up.
const CLIENT_TIMEOUT: Duration = Duration::from_millis(1500);

#[test]
fn refused_and_timed_out_connects_are_counted_on_the_failing_backend() {
    let healthy: SocketAddr = "127.0.0.2:18310".parse().unwrap();
    let closed: SocketAddr = "127.0.0.3:18310".parse().unwrap();
    let silent: SocketAddr = "127.0.0.4:18310".parse().unwrap();
    let vip: SocketAddr = "127.100.31.1:18311".parse().unwrap();
    let service =
        ServiceYaml::new("flaky", vip, "round_robin").backends(&[healthy, closed, silent], &[1; 3]);
    // `closed` gets no listener: the kernel answers its SYNs with RST.
    let _set = TcpBackendSet::start(&[healthy, silent], BackendMode::Identify).unwrap();
    let mut bed = TestBed::new(
        "signals-fail",
        &ServiceYaml::mesh(std::slice::from_ref(&service)),
    )
    .unwrap();
    let frontend = bed.cgroup().child("frontend").unwrap();
    let workload = WorkloadYaml::new("frontend", &frontend.relative_path().unwrap());
    bed.write_config(&ServiceYaml::mesh_with_workloads(&[service], &[workload]))
        .unwrap();
    bed.start_agent().unwrap();
    wait_workloads(bed.agent(), &["frontend"], SIGNAL_TIMEOUT).unwrap();
    // On the test cgroup, so it applies to the workload's child cgroup too.
    let faults = Faults {
        drop_syn: 100.0,
        ..Faults::default()
    };
    let netfault = Netfault::start(bed.cgroup(), &[silent], faults).unwrap();

    let report = ConnectClient::new(vip, CONNECTS)
        .timeout(CLIENT_TIMEOUT)
        .run(Some(&frontend), None)
        .unwrap();
    let dropped = netfault.stop().unwrap();
    let ok = report.results.iter().filter(|r| r.ok()).count();
    let refused = report
        .results
        .iter()
        .filter(|r| r.errno == Some(libc::ECONNREFUSED))
        .count();
    let timed_out = report
        .results
        .iter()
        .filter(|r| r.errno.is_none() && r.error.as_deref() == Some("timed out"))
        .count();
    eprintln!("client: ok {ok}, refused {refused}, timed out {timed_out}; {dropped}");
    assert_eq!(
        ok + refused + timed_out,
        CONNECTS,
        "every connect is ok, refused or timed out: {:#?}",
        report.failures()
    );
    assert!(ok > 0 && refused > 0 && timed_out > 0, "{report:#?}");

    let text = wait_counter_settled(bed.agent(), "connect attempts", CONNECTS as f64, |t| {
        sum_metric(t, CONNECTIONS, &[("service", "flaky")])
    })
    .unwrap();
    let count = |backend: SocketAddr, result: &str| {
        let addr = backend.to_string();
        let labels = [
            ("service", "flaky"),
            ("backend", addr.as_str()),
            ("caller", "frontend"),
            ("result", result),
        ];
        metric_value(&text, CONNECTIONS, &labels).unwrap_or(0.0)
    };
    let seen = [
        (healthy, "ok", ok),
        (closed, "refused", refused),
        (silent, "timeout", timed_out),
    ];
    for (backend, result, want) in seen {
        eprintln!("{backend} result={result}: {}", count(backend, result));
        assert_eq!(
            count(backend, result),
            want as f64,
            "{backend} result={result}"
        );
        let all = sum_metric(&text, CONNECTIONS, &[("backend", &backend.to_string())]);
        assert_eq!(
            all, want as f64,
            "{backend}: only {result} connects expected"
        );
    }
    let handshakes = sum_metric(
        &text,
        "sockmesh_connect_duration_seconds_count",
        &[("service", "flaky")],
    );
    assert_eq!(
        handshakes, ok as f64,
        "handshakes = established connects only"
    );

    // The admin API's recent failures: one entry per failed connect, newest first.
    let failures = bed.agent().get_json("/v1/failures").unwrap();
    let entries = |backend: SocketAddr, result: &str| -> Vec<Value> {
        failures
            .as_array()
            .unwrap()
            .iter()
            .filter(|f| f["backend"] == backend.to_string() && f["result"] == result)
            .cloned()
            .collect()
    };
    let refused_entries = entries(closed, "refused");
    let timeout_entries = entries(silent, "timeout");
    assert_eq!(refused_entries.len(), refused, "{failures:#}");
    assert_eq!(timeout_entries.len(), timed_out, "{failures:#}");
    assert_eq!(
        failures.as_array().unwrap().len(),
        refused + timed_out,
        "{failures:#}"
    );
    for f in refused_entries.iter().chain(&timeout_entries) {
        assert_eq!(f["service"], "flaky", "{f}");
        assert_eq!(f["caller"], "frontend", "{f}");
    }
    for f in &timeout_entries {
        let ms = f["duration_ms"].as_f64().unwrap_or(0.0);
        assert!(ms >= 1000.0, "a timeout lasted only {ms} ms: {f}");
    }

    // The CLI shows the same counts per backend, and the same failures.
    let rows = sockmesh_cli_json(bed.agent(), &["backends", "flaky"]).unwrap();
    for (backend, result, want) in seen {
        let row = rows
            .as_array()
            .and_then(|r| r.iter().find(|b| b["addr"] == backend.to_string()))
            .unwrap_or_else(|| panic!("no {backend} in {rows:#}"));
        assert_eq!(
            row["connects"][result], want,
            "CLI {result} for {backend}: {row}"
        );
    }
    let cli_failures = sockmesh_cli_json(bed.agent(), &["failures"]).unwrap();
    assert_eq!(
        cli_failures, failures,
        "`sockmesh failures` vs /v1/failures"
    );
}
