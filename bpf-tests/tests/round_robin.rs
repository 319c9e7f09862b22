//! Round robin cycles exactly: a sequential client walks the slot table in order,
//! so the backend sequence is periodic with the table's length and each period holds every
//! backend exactly as often as its weight says.

use serde_json::Value;
use sockmesh_bpf_tests::{
    counts_by_backend, loopback_addrs, BackendMode, ConnectClient, ServiceYaml, TcpBackendSet,
    TestBed,
};

#[test]
fn round_robin_1_1_1_every_window_of_three_hits_all_backends() {
    let backends = loopback_addrs(2, 3, 18140);
    let vip = "127.100.4.1:18141".parse().unwrap();
    let yaml = ServiceYaml::mesh(&[
        ServiceYaml::new("rr", vip, "round_robin").backends(&backends, &[1, 1, 1])
    ]);
    let set = TcpBackendSet::start(&backends, BackendMode::Identify).unwrap();
    let bed = TestBed::start("rr-equal", &yaml).unwrap();

    let report = ConnectClient::new(vip, 300)
        .run(Some(bed.cgroup()), None)
        .unwrap();
    report.assert_all_ok("round robin connects");
    let seq = report.backend_sequence();
    for (i, window) in seq.windows(3).enumerate() {
        let distinct: std::collections::BTreeSet<_> = window.iter().collect();
        assert_eq!(
            distinct.len(),
            3,
            "connects {i}..{} hit {window:?}, not all 3 backends",
            i + 3
        );
    }
    let seen = counts_by_backend(&report.backend_counts(), &backends);
    assert_eq!(seen, vec![100, 100, 100]);
    assert_eq!(set.accepts(), seen, "accept counters vs client view");
}

#[test]
fn round_robin_1_2_counts_exactly_proportional_over_whole_cycles() {
    let backends = loopback_addrs(2, 2, 18150);
    let vip = "127.100.5.1:18151".parse().unwrap();
    let yaml = ServiceYaml::mesh(&[
        ServiceYaml::new("rr", vip, "round_robin").backends(&backends, &[1, 2])
    ]);
    let set = TcpBackendSet::start(&backends, BackendMode::Identify).unwrap();
    let mut bed = TestBed::start("rr-weighted", &yaml).unwrap();

    // One cycle is one pass over the slot table, whose length the agent chose.
    let status = bed.agent().status().unwrap();
    let svc = &status["services"][0];
    let cycle = svc["slot_table_len"].as_u64().expect("slot_table_len") as usize;
    let slots: Vec<u64> = svc["backends"]
        .as_array()
        .expect("backends")
        .iter()
        .map(|b: &Value| b["slots"].as_u64().expect("slots"))
        .collect();
    assert!(cycle > 0, "{status:#}");
    assert_eq!(slots.iter().sum::<u64>() as usize, cycle, "{status:#}");
    assert_eq!(
        slots[0] * 2,
        slots[1],
        "slots must follow weights 1:2: {status:#}"
    );

    let cycles = (600 / cycle).max(2);
    let report = ConnectClient::new(vip, cycles * cycle)
        .run(Some(bed.cgroup()), None)
        .unwrap();
    report.assert_all_ok("round robin connects");
    let seq = report.backend_sequence();
    for i in 0..seq.len() - cycle {
        assert_eq!(
            seq[i],
            seq[i + cycle],
            "connect {i} and {} differ: not periodic with cycle {cycle}",
            i + cycle
        );
    }
    let seen = counts_by_backend(&report.backend_counts(), &backends);
    let want: Vec<u64> = slots.iter().map(|s| s * cycles as u64).collect();
    assert_eq!(seen, want, "over {cycles} whole cycles of {cycle}");
    assert_eq!(seen[0] * 2, seen[1], "counts not exactly 1:2");
    assert_eq!(set.accepts(), seen, "accept counters vs client view");
}
