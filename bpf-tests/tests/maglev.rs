//! Maglev: one caller keeps its backend; removing one of 5 backends moves only the
//! callers that were on it. A caller is the cgroup plus the source address it bound.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};

use sockmesh_bpf_tests::{
    counts_by_backend, loopback_addrs, BackendMode, ClientReport, ConnectClient, ServiceYaml,
    TcpBackendSet, TestBed,
};

#[test]
fn maglev_same_caller_same_backend_across_1000_connects() {
    let backends = loopback_addrs(2, 3, 18160);
    let vip = "127.100.6.1:18161".parse().unwrap();
    let yaml =
        ServiceYaml::mesh(&[ServiceYaml::new("mg", vip, "maglev").backends(&backends, &[1, 1, 1])]);
    let set = TcpBackendSet::start(&backends, BackendMode::Identify).unwrap();
    let bed = TestBed::start("maglev-sticky", &yaml).unwrap();

    // Unbound sockets: the caller is the cgroup alone, so a second process in it is the
    // same caller too.
    let first = ConnectClient::new(vip, 1000)
        .run(Some(bed.cgroup()), None)
        .unwrap();
    let chosen = only_backend(&first, "unbound caller");
    let again = ConnectClient::new(vip, 50)
        .run(Some(bed.cgroup()), None)
        .unwrap();
    assert_eq!(only_backend(&again, "same cgroup, new process"), chosen);
    let accepts = set.accepts();
    assert_eq!(accepts.iter().sum::<u64>(), 1050);
    assert_eq!(accepts.iter().filter(|&&a| a > 0).count(), 1, "{accepts:?}");

    // A bound source address is a caller of its own, just as sticky.
    let bound = ConnectClient::new(vip, 1000)
        .sources([IpAddr::V4(Ipv4Addr::new(127, 0, 1, 9))])
        .run(Some(bed.cgroup()), None)
        .unwrap();
    only_backend(&bound, "caller bound to 127.0.1.9");
}

#[test]
fn maglev_removing_one_of_5_backends_moves_only_its_callers() {
    let backends = loopback_addrs(2, 5, 18170);
    let vip = "127.100.7.1:18171".parse().unwrap();
    let all = ServiceYaml::new("mg", vip, "maglev").backends(&backends, &[1; 5]);
    let set = TcpBackendSet::start(&backends, BackendMode::Identify).unwrap();
    let mut bed = TestBed::start("maglev-remove", &ServiceYaml::mesh(&[all])).unwrap();

    // 250 callers: 127.0.1.1-125 and 127.0.2.1-125, each connecting twice per round.
    let callers: Vec<IpAddr> = (1..=125)
        .flat_map(|h| [Ipv4Addr::new(127, 0, 1, h), Ipv4Addr::new(127, 0, 2, h)])
        .map(IpAddr::V4)
        .collect();
    let round = |bed: &TestBed| {
        let report = ConnectClient::new(vip, callers.len() * 2)
            .sources(callers.iter().copied())
            .run(Some(bed.cgroup()), None)
            .unwrap();
        report.assert_all_ok("maglev round");
        caller_map(&report)
    };

    let before = round(&bed);
    assert_eq!(before.len(), 250);
    let per_backend = counts_by_backend(&tally(&before), &backends);
    // 50 callers per backend expected; fewer than 20 would mean the hash does not spread.
    assert!(
        per_backend.iter().all(|&n| n >= 20),
        "callers per backend: {per_backend:?}"
    );

    let removed = backends[2].to_string();
    let mut kept = backends.clone();
    kept.remove(2);
    let fewer = ServiceYaml::new("mg", vip, "maglev").backends(&kept, &[1; 4]);
    bed.apply_config(&ServiceYaml::mesh(&[fewer])).unwrap();
    let removed_accepts = set.backends()[2].accepts();

    let after = round(&bed);
    assert_eq!(
        set.backends()[2].accepts(),
        removed_accepts,
        "removed backend got connects"
    );
    let on_removed: Vec<_> = before.iter().filter(|(_, b)| **b == removed).collect();
    let others = before.len() - on_removed.len();
    let mut moved_others = Vec::new();
    for (caller, old) in &before {
        let new = &after[caller];
        assert_ne!(
            new, &removed,
            "caller {caller} still routed to the removed backend"
        );
        if *old != removed && new != old {
            moved_others.push(format!("{caller}: {old} -> {new}"));
        }
    }
    let allowed = (others * 3).div_ceil(100);
    eprintln!(
        "maglev: {} callers were on the removed backend, {} of the other {others} moved",
        on_removed.len(),
        moved_others.len()
    );
    assert!(
        moved_others.len() <= allowed,
        "{} of {others} callers not on the removed backend moved (allowed {allowed}): {:?}",
        moved_others.len(),
        moved_others
    );
}

/// The single backend every connect of `report` reached; panics if there were more.
fn only_backend(report: &ClientReport, what: &str) -> String {
    report.assert_all_ok(what);
    let counts = report.backend_counts();
    assert_eq!(counts.len(), 1, "{what}: connects spread over {counts:?}");
    counts.into_keys().next().unwrap()
}

/// Caller (source address) -> backend, checking each caller stayed on one backend.
fn caller_map(report: &ClientReport) -> BTreeMap<String, String> {
    let mut map = BTreeMap::new();
    for r in &report.results {
        let (src, backend) = (r.src.clone().unwrap(), r.backend.clone().unwrap());
        if let Some(prev) = map.insert(src.clone(), backend.clone()) {
            assert_eq!(
                prev, backend,
                "caller {src} switched backends within one round"
            );
        }
    }
    map
}

fn tally(map: &BTreeMap<String, String>) -> BTreeMap<String, u64> {
    let mut counts = BTreeMap::new();
    for b in map.values() {
        *counts.entry(b.clone()).or_insert(0) += 1;
    }
    counts
}
