//! IPv6 VIP `fd00::100` and backends `[fd00::2]:8081`, `[fd00::3]:8081`, all inside
//! a network namespace the test creates (addresses on its `lo`), the client in that netns and
//! in the test cgroup. No fd00:: address ever exists on the host.

use std::net::SocketAddr;
use std::time::Duration;

use sockmesh_bpf_tests::{
    assert_shares, counts_by_backend, BackendMode, ConnectClient, Netns, ServiceYaml,
    TcpBackendSet, TestBed,
};

#[test]
fn ipv6_vip_routes_inside_test_netns() {
    let ns = Netns::create("ipv6").unwrap();
    ns.add_addr("lo", "fd00::2/64").unwrap();
    ns.add_addr("lo", "fd00::3/64").unwrap();
    let backends: Vec<SocketAddr> = vec![
        "[fd00::2]:8081".parse().unwrap(),
        "[fd00::3]:8081".parse().unwrap(),
    ];
    let vip: SocketAddr = "[fd00::100]:80".parse().unwrap();
    let sticky: SocketAddr = "[fd00::100]:81".parse().unwrap();
    let yaml = ServiceYaml::mesh(&[
        ServiceYaml::new("web6", vip, "weighted_random").backends(&backends, &[1, 1]),
        ServiceYaml::new("web6-maglev", sticky, "maglev").backends(&backends, &[1, 1]),
    ]);
    let set = TcpBackendSet::start_in_netns(&ns, &backends, BackendMode::Identify).unwrap();
    let mut bed = TestBed::start("ipv6", &yaml).unwrap();
    let status = bed.agent().status().unwrap();
    assert_eq!(status["services"][0]["vip"], "fd00::100", "{status:#}");

    let report = ConnectClient::new(vip, 400)
        .run(Some(bed.cgroup()), Some(&ns))
        .unwrap();
    report.assert_all_ok("IPv6 VIP connects");
    for r in &report.results {
        assert_eq!(r.peer.as_deref(), Some("[fd00::100]:80"), "{r:?}");
    }
    let seen = counts_by_backend(&report.backend_counts(), &backends);
    assert_eq!(
        seen.iter().sum::<u64>(),
        400,
        "{:?}",
        report.backend_counts()
    );
    assert_eq!(set.accepts(), seen, "accept counters vs client view");
    // 1:1 over 400 connects: one standard deviation is 2.5 points.
    assert_shares("IPv6 weighted_random", &seen, &[1, 1], 0.10);

    let report = ConnectClient::new(sticky, 200)
        .run(Some(bed.cgroup()), Some(&ns))
        .unwrap();
    report.assert_all_ok("IPv6 maglev connects");
    assert_eq!(
        report.backend_counts().len(),
        1,
        "{:?}",
        report.backend_counts()
    );
    assert!(report
        .results
        .iter()
        .all(|r| r.peer.as_deref() == Some("[fd00::100]:81")));

    // Same netns, outside the cgroup: not routed, so the VIP does not answer.
    let before = set.total_accepts();
    let outside = ConnectClient::new(vip, 2)
        .timeout(Duration::from_secs(1))
        .run(None, Some(&ns))
        .unwrap();
    assert_eq!(outside.failures().len(), 2, "{:?}", outside.results);
    assert_eq!(set.total_accepts(), before);
}
