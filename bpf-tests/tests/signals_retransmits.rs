//! Retransmits per backend: echo traffic through a round-robin VIP to three backends
//! while `sockmesh-agent netfault` drops 20% of the segments one of them sends to the test
//! cgroup. The kernel's retransmit counter for that backend rises; for the two lossless ones
//! it stays exactly zero.
//!
//! Two kinds of traffic, three connections per backend each: bulk (a few MB in 64 KiB
//! chunks), and 1 KiB request/response exchanges. Bulk alone makes the caller retransmit
//! rarely: each chunk's echo comes back in many segments, each carrying a cumulative ACK, so
//! losing some of them loses no ACK. In an exchange the one echo segment is the only ACK; when
//! it is lost the caller's loss probe often fires before the backend's own retransmission
//! arrives, so the caller retransmits (its `BPF_SOCK_OPS_RETRANS_CB`).

use std::net::SocketAddr;

use sockmesh_bpf_tests::{
    loopback_addrs, metric_value, BackendMode, EchoClient, Faults, Netfault, ServiceYaml,
    TcpBackendSet, TestBed, SIGNAL_TIMEOUT,
};

const RETRANSMITS: &str = "sockmesh_tcp_retransmits_total";
/// Per phase: three connections per backend.
const CONNECTIONS: usize = 9;
/// Bulk: 512 KiB per connection in 64 KiB chunks, 4.5 MiB through the mesh.
const BULK_BYTES: u64 = 512 << 10;
/// Exchanges: 64 round trips of 1 KiB per connection.
const EXCHANGE_BYTES: u64 = 64 << 10;
const EXCHANGE_CHUNK: u64 = 1 << 10;

#[test]
fn retransmits_rise_for_the_lossy_backend_only() {
    let backends = loopback_addrs(2, 3, 18320);
    let lossy = backends[1];
    let vip: SocketAddr = "127.100.32.1:18321".parse().unwrap();
    let yaml = ServiceYaml::mesh(&[
        ServiceYaml::new("bulk", vip, "round_robin").backends(&backends, &[1, 1, 1])
    ]);
    let set = TcpBackendSet::start(&backends, BackendMode::Echo).unwrap();
    let mut bed = TestBed::start("signals-retrans", &yaml).unwrap();
    let faults = Faults {
        drop_data: 20.0,
        ..Faults::default()
    };
    let netfault = Netfault::start(bed.cgroup(), &[lossy], faults).unwrap();

    let bulk = EchoClient::new(vip, CONNECTIONS, BULK_BYTES)
        .run(bed.cgroup())
        .unwrap();
    let exchanges = EchoClient::new(vip, CONNECTIONS, EXCHANGE_BYTES)
        .chunk(EXCHANGE_CHUNK)
        .run(bed.cgroup())
        .unwrap();
    let dropped = netfault.stop().unwrap();
    for (what, report, bytes) in [
        ("bulk", &bulk, BULK_BYTES),
        ("exchanges", &exchanges, EXCHANGE_BYTES),
    ] {
        eprintln!(
            "{what}: echoed {:?} in {:.0} ms",
            report.echoed_by_backend(),
            report.elapsed_ms
        );
        report.assert_all_echoed(what, bytes);
        for b in &backends {
            assert_eq!(
                report.connections_by_backend().get(&b.to_string()),
                Some(&3),
                "{what}: round robin gives each backend 3 connections"
            );
        }
    }
    eprintln!("{dropped}");
    assert_eq!(set.total_accepts(), 2 * CONNECTIONS as u64);

    // Kernel counters reach the metrics on the agent's next 1 s refresh; wait for the lossy
    // backend's, then one more refresh so a late retransmit elsewhere would show as well.
    let retrans = |text: &str, b: SocketAddr| {
        let addr = b.to_string();
        metric_value(
            text,
            RETRANSMITS,
            &[("service", "bulk"), ("backend", &addr)],
        )
    };
    bed.agent()
        .wait_metrics("retransmits of the lossy backend", SIGNAL_TIMEOUT, |t| {
            retrans(t, lossy).is_some_and(|n| n > 0.0)
        })
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1200));
    let text = bed.agent().metrics_text().unwrap();
    for b in &backends {
        eprintln!("{b}: retransmits {:?}", retrans(&text, *b));
    }
    let lossy_count = retrans(&text, lossy).unwrap();
    assert!(lossy_count > 0.0, "no retransmits counted for {lossy}");
    for b in backends.iter().filter(|b| **b != lossy) {
        assert_eq!(retrans(&text, *b), Some(0.0), "retransmits of lossless {b}");
    }

    // The admin API reads the same kernel counters.
    let rows = bed.agent().get_json("/v1/backends?service=bulk").unwrap();
    for row in rows.as_array().unwrap() {
        let addr: SocketAddr = row["addr"].as_str().unwrap().parse().unwrap();
        let n = row["retransmits"].as_f64().unwrap();
        assert_eq!(
            n,
            retrans(&text, addr).unwrap(),
            "/v1/backends vs metrics: {row}"
        );
        eprintln!("{addr}: srtt_mean_us {}", row["srtt_mean_us"]);
    }
}
