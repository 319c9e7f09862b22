//! RTT sampling: sock_ops takes a routed connection's first `RTT_SAMPLES_PER_CONN` RTT
//! callbacks (one per ACK that carries an RTT measurement), then asks the kernel to stop
//! calling it for RTTs, and records the kernel's smoothed RTT once more when the connection
//! closes. Observation thus costs a bounded number of program runs per connection, however
//! long the connection lives and however many requests it carries.
//!
//! Kept-alive echo exchanges through a VIP, first 64 then 512 per connection (each one an ACK
//! the caller takes an RTT sample from): the backend's `sockmesh_tcp_srtt_seconds` counts
//! exactly `RTT_SAMPLES_PER_CONN + 1` samples per connection after both, with a positive sum
//! (the kernel's srtt, read at close), and the sock_ops program ran no more often per
//! connection for 512 exchanges than for 64 (`kernel.bpf_stats_enabled` run counts), and far
//! fewer times than there were exchanges. Without the sampling both would grow with the
//! exchanges.

use std::net::SocketAddr;
use std::time::Duration;

use sockmesh_bpf_tests::{
    loopback_addrs, metric_value, BackendMode, BpfStats, EchoClient, ServiceYaml, TcpBackendSet,
    TestBed, SIGNAL_TIMEOUT,
};
use sockmesh_common::RTT_SAMPLES_PER_CONN;

const SERVICE: &str = "rtt";
const CONNECTIONS: u64 = 4;
/// Bytes per exchange: sent, then read back before the next is sent.
const CHUNK: u64 = 256;
/// Exchanges per connection, one run each.
const EXCHANGES: [u64; 2] = [64, 512];
/// Program runs per connection the longer run may add over the shorter one: a stray
/// retransmit or loss probe (each a callback) on a busy machine, not the exchanges.
const RUNS_SLACK_PER_CONN: u64 = 4;

#[test]
fn rtt_callbacks_stop_after_the_samples_and_srtt_is_recorded_at_close() {
    let backends = loopback_addrs(2, 1, 18360);
    let backend = backends[0].to_string();
    let vip: SocketAddr = "127.100.36.1:18361".parse().unwrap();
    let yaml = ServiceYaml::mesh(&[
        ServiceYaml::new(SERVICE, vip, "round_robin").backends(&backends, &[1])
    ]);
    let _set = TcpBackendSet::start(&backends, BackendMode::Echo).unwrap();
    let mut bed = TestBed::start("signals-rtt", &yaml).unwrap();
    let sock_ops = bed
        .cgroup()
        .attached_programs()
        .unwrap()
        .into_iter()
        .find(|p| p.attach_type == "sock_ops" || p.attach_type == "cgroup_sock_ops")
        .expect("the agent attached a sock_ops program to the test cgroup");
    let stats = BpfStats::enable().unwrap();

    let labels = [("service", SERVICE), ("backend", backend.as_str())];
    let per_conn = u64::from(RTT_SAMPLES_PER_CONN) + 1;
    let mut samples_expected = 0;
    let mut runs_per_conn = Vec::new();
    for exchanges in EXCHANGES {
        let before = stats.run_count(sock_ops.id).unwrap();
        let report = EchoClient::new(vip, CONNECTIONS as usize, exchanges * CHUNK)
            .chunk(CHUNK)
            .run(bed.cgroup())
            .unwrap();
        let runs = stats.run_count(sock_ops.id).unwrap() - before;
        report.assert_all_echoed(&format!("{exchanges} exchanges"), exchanges * CHUNK);
        samples_expected += CONNECTIONS * per_conn;

        // The closed connections' last samples reach the metrics on the agent's next 1 s
        // refresh; wait for them, then one more refresh so a late sample would show too.
        bed.agent()
            .wait_metrics(
                "the srtt samples of the closed connections",
                SIGNAL_TIMEOUT,
                |t| {
                    metric_value(t, "sockmesh_tcp_srtt_seconds_count", &labels)
                        .is_some_and(|n| n >= samples_expected as f64)
                },
            )
            .unwrap();
        std::thread::sleep(Duration::from_millis(1200));
        let text = bed.agent().metrics_text().unwrap();
        let count = metric_value(&text, "sockmesh_tcp_srtt_seconds_count", &labels).unwrap();
        let sum = metric_value(&text, "sockmesh_tcp_srtt_seconds_sum", &labels).unwrap();
        eprintln!(
            "{exchanges} exchanges x {CONNECTIONS} connections: sock_ops ran {runs} times \
             ({} per connection); srtt samples {count} (sum {sum:.6} s)",
            runs / CONNECTIONS
        );
        assert_eq!(
            count, samples_expected as f64,
            "{RTT_SAMPLES_PER_CONN} RTT samples plus one at close per connection"
        );
        assert!(sum > 0.0, "the samples carry the kernel's srtt: sum {sum}");
        assert!(
            runs / CONNECTIONS < exchanges,
            "sock_ops ran {runs} times for {CONNECTIONS} connections of {exchanges} exchanges: \
             RTT callbacks did not stop"
        );
        runs_per_conn.push(runs / CONNECTIONS);
    }
    assert!(
        runs_per_conn[1] <= runs_per_conn[0] + RUNS_SLACK_PER_CONN,
        "sock_ops runs per connection grew with the exchanges: {runs_per_conn:?} for {EXCHANGES:?}"
    );

    // The admin API's mean is over the same samples.
    let rows = bed
        .agent()
        .get_json(&format!("/v1/backends?service={SERVICE}"))
        .unwrap();
    let mean = rows[0]["srtt_mean_us"].as_f64().unwrap();
    eprintln!("{backend}: srtt_mean_us {mean}");
    assert!(mean > 0.0, "/v1/backends srtt_mean_us {mean}");
}
