//! Weighted distribution: 3 backends weighted 1:1:2, 4,000 connects through the
//! VIP from a stock client in the test cgroup; each share within 3 points of its weight's.

use sockmesh_bpf_tests::{
    assert_shares, counts_by_backend, loopback_addrs, BackendMode, ConnectClient, ServiceYaml,
    TcpBackendSet, TestBed,
};

#[test]
fn weighted_random_1_1_2_over_4000_connects() {
    let backends = loopback_addrs(2, 3, 18130);
    let vip = "127.100.3.1:18131".parse().unwrap();
    let weights = [1, 1, 2];
    let yaml = ServiceYaml::mesh(&[
        ServiceYaml::new("weighted", vip, "weighted_random").backends(&backends, &weights)
    ]);
    let set = TcpBackendSet::start(&backends, BackendMode::Identify).unwrap();
    let mut bed = TestBed::start("weighted", &yaml).unwrap();

    let status = bed.agent().status().unwrap();
    let svc = &status["services"][0];
    assert_eq!(svc["lb"], "weighted_random", "{status:#}");
    assert_eq!(svc["vip"], "127.100.3.1", "{status:#}");
    assert_eq!(svc["port"], 18131, "{status:#}");

    let report = ConnectClient::new(vip, 4000)
        .run(Some(bed.cgroup()), None)
        .unwrap();
    report.assert_all_ok("weighted connects");
    assert_eq!(report.results.len(), 4000);

    let seen = counts_by_backend(&report.backend_counts(), &backends);
    assert_eq!(
        seen.iter().sum::<u64>(),
        4000,
        "answers from unknown backends: {seen:?}"
    );
    eprintln!(
        "weighted 1:1:2: accepts {:?}, client view {seen:?}",
        set.accepts()
    );
    // The backends' own counters are the ground truth; the client must agree with them.
    assert_eq!(set.accepts(), seen, "accept counters vs client view");
    assert_shares("backend accept counters", &set.accepts(), &weights, 0.03);
    assert_shares("client view", &seen, &weights, 0.03);
}
