//! A real Prometheus: Debian's server, started on 127.0.0.1 with a 1 s scrape
//! interval against the agent's `/metrics`, stores series whose PromQL sums equal the agent's
//! own counts after traffic; and `promtool check metrics` finds nothing to report in the
//! agent's exposition.

use std::net::SocketAddr;
use std::time::Duration;

use sockmesh_bpf_tests::{
    loopback_addrs, metric_value, promtool_check_metrics, sum_metric, wait_counter_settled,
    BackendMode, ConnectClient, Prometheus, ServiceYaml, TcpBackendSet, TestBed,
};

const CONNECTS: usize = 60;
/// How long Prometheus may take to scrape the settled counters (1 s interval, plus start).
const SCRAPED_TIMEOUT: Duration = Duration::from_secs(20);

#[test]
fn promql_over_scraped_series_equals_agent_counts_and_promtool_is_clean() {
    let backends = loopback_addrs(2, 2, 18340);
    let vip: SocketAddr = "127.100.34.1:18341".parse().unwrap();
    let yaml = ServiceYaml::mesh(&[
        ServiceYaml::new("prom", vip, "round_robin").backends(&backends, &[1, 1])
    ]);
    let set = TcpBackendSet::start(&backends, BackendMode::Identify).unwrap();
    let mut bed = TestBed::start("signals-prom", &yaml).unwrap();
    let prometheus = Prometheus::start(bed.agent().metrics_addr().unwrap()).unwrap();

    ConnectClient::new(vip, CONNECTS)
        .run(Some(bed.cgroup()), None)
        .unwrap()
        .assert_all_ok("connects through the VIP");
    assert_eq!(set.total_accepts(), CONNECTS as u64);
    let ok_total = |t: &str| sum_metric(t, "sockmesh_connections_total", &[("result", "ok")]);
    let text = wait_counter_settled(bed.agent(), "ok connects", CONNECTS as f64, ok_total).unwrap();
    assert_eq!(ok_total(&text), CONNECTS as f64, "agent's own ok count");

    // Prometheus has scraped the settled counters once its sum equals the agent's.
    let promql = r#"sum(sockmesh_connections_total{result="ok"})"#;
    let scraped = prometheus.wait_for_value(promql, ok_total(&text), SCRAPED_TIMEOUT);
    assert_eq!(
        scraped,
        Some(ok_total(&text)),
        "{promql} never equalled the agent's count\n{}",
        prometheus.log()
    );
    let handshakes = sum_metric(&text, "sockmesh_connect_duration_seconds_count", &[]);
    let scraped_handshakes = prometheus
        .query_scalar("sum(sockmesh_connect_duration_seconds_count)")
        .unwrap();
    assert_eq!(scraped_handshakes, Some(handshakes), "handshake count");
    assert_eq!(handshakes, CONNECTS as f64);
    let backend = backends[0].to_string();
    let labels = [
        ("service", "prom"),
        ("backend", backend.as_str()),
        ("caller", "unknown"),
        ("result", "ok"),
    ];
    let agent_series = metric_value(&text, "sockmesh_connections_total", &labels).unwrap();
    let series_promql = format!(
        r#"sockmesh_connections_total{{service="prom",backend="{backend}",caller="unknown",result="ok"}}"#
    );
    let scraped_series = prometheus.query_scalar(&series_promql).unwrap();
    eprintln!(
        "agent: ok {}, handshakes {handshakes}, {backend} {agent_series}; \
         prometheus: {scraped:?}, {scraped_handshakes:?}, {scraped_series:?}",
        ok_total(&text)
    );
    assert_eq!(scraped_series, Some(agent_series), "{series_promql}");
    assert_eq!(agent_series, set.backends()[0].accepts() as f64);
    let up = prometheus.query_scalar(r#"up{job="sockmesh"}"#).unwrap();
    assert_eq!(up, Some(1.0), "the agent target is up");

    // What Prometheus learnt about the counters' types from the exposition (diagnostic: the
    // promtool check below is the assertion).
    let metadata = prometheus
        .get_json("/api/v1/metadata?metric=sockmesh_connections_total")
        .unwrap();
    eprintln!("prometheus metadata for sockmesh_connections_total: {metadata}");

    // The exposition as Prometheus's own linter sees it.
    let exposition = bed.agent().metrics_text().unwrap();
    let lint = promtool_check_metrics(&exposition).unwrap();
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&lint.stdout),
        String::from_utf8_lossy(&lint.stderr)
    );
    eprintln!(
        "promtool check metrics: {} {:?}",
        lint.status,
        report.trim()
    );
    assert!(
        lint.status.success() && report.trim().is_empty(),
        "promtool check metrics ({}) reported:\n{report}\non:\n{exposition}",
        lint.status
    );
}
