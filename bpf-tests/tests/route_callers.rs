//! Caller-based routes in the kernel: one weighted-random service with two stable
//! backends and one canary, and callers in four places:
//!
//! - workload `canary` (labels `lane: canary`): rule 1 sends it to the canary subset only;
//! - workload `beta` (`lane: beta`): rule 2 splits it 90/10 between stable and canary, and
//!   4,000 connects land within 3 points of that (45/45/10);
//! - workload `plain` (no labels) and a process in no workload at all: the catch-all rule 3,
//!   stable only (`plain` has no table of its own: the kernel falls back to class 0).
//!
//! Then the fallback, live: the canary drained (weight 0) leaves rule 1 without a usable
//! backend; with `fallback: all` the canary callers reach the stable backends, with
//! `fallback: none` their connects are refused at once (ECONNREFUSED), while the others keep
//! routing as before.

use std::net::SocketAddr;

use sockmesh_bpf_tests::route_mesh::{
    route_mesh, wait_class_tables, RouteBackend, RouteService, RouteWorkload,
};
use sockmesh_bpf_tests::{
    assert_shares, counts_by_backend, loopback_addrs, wait_workloads, BackendMode, Cgroup2,
    ClientReport, ConnectClient, TcpBackendSet, TestBed, SIGNAL_TIMEOUT,
};

const SERVICE: &str = "shop";
const ROUTES: &str = "[{match: {lane: canary}, to: {track: canary}, fallback: FALLBACK}, \
     {match: {lane: beta}, weight_split: [{to: {track: stable}, percent: 90}, \
     {to: {track: canary}, percent: 10}]}, {to: {track: stable}}]";
const SPLIT_CONNECTS: usize = 4000;
const FEW: usize = 200;

fn mesh(
    vip: SocketAddr,
    addrs: &[SocketAddr],
    canary_weight: u32,
    fallback: &str,
    w: &[RouteWorkload],
) -> String {
    let backends = vec![
        RouteBackend::new(addrs[0]).label("track", "stable"),
        RouteBackend::new(addrs[1]).label("track", "stable"),
        RouteBackend::new(addrs[2])
            .label("track", "canary")
            .weight(canary_weight),
    ];
    let service = RouteService::new(SERVICE, vip, "weighted_random", backends)
        .with("routes", &ROUTES.replace("FALLBACK", fallback));
    route_mesh(&[service], w)
}

fn run(vip: SocketAddr, count: usize, cgroup: &Cgroup2) -> ClientReport {
    ConnectClient::new(vip, count)
        .run(Some(cgroup), None)
        .unwrap()
}

#[test]
fn callers_reach_the_subset_their_labels_route_them_to() {
    let addrs = loopback_addrs(2, 3, 18900);
    let vip: SocketAddr = "127.100.90.1:18901".parse().unwrap();
    let set = TcpBackendSet::start(&addrs, BackendMode::Identify).unwrap();
    let mut bed = TestBed::new("route-callers", "version: 1\nservices: []\n").unwrap();
    let canary = bed.cgroup().child("canary").unwrap();
    let beta = bed.cgroup().child("beta").unwrap();
    let plain = bed.cgroup().child("plain").unwrap();
    let workloads = [
        RouteWorkload::new("canary", &canary.relative_path().unwrap()).label("lane", "canary"),
        RouteWorkload::new("beta", &beta.relative_path().unwrap()).label("lane", "beta"),
        RouteWorkload::new("plain", &plain.relative_path().unwrap()),
    ];
    bed.write_config(&mesh(vip, &addrs, 1, "all", &workloads))
        .unwrap();
    bed.start_agent().unwrap();
    let classes =
        wait_class_tables(bed.agent(), SERVICE, &["canary", "beta"], SIGNAL_TIMEOUT).unwrap();
    eprintln!("class tables: {}", serde_json::to_string(&classes).unwrap());
    // The caller map (cgroup -> workload and class) is written when the workloads resolve.
    wait_workloads(bed.agent(), &["canary", "beta", "plain"], SIGNAL_TIMEOUT).unwrap();

    let counts = |r: &ClientReport| counts_by_backend(&r.backend_counts(), &addrs);
    let from_canary = run(vip, FEW, &canary);
    let from_plain = run(vip, FEW, &plain);
    let from_nowhere = run(vip, FEW, bed.cgroup());
    for (who, r) in [
        ("canary", &from_canary),
        ("plain", &from_plain),
        ("unknown", &from_nowhere),
    ] {
        r.assert_all_ok(who);
        assert!(
            r.results
                .iter()
                .all(|c| c.peer.as_deref() == Some("127.100.90.1:18901")),
            "{who}: getpeername answers the VIP"
        );
    }
    eprintln!(
        "canary {:?}, plain {:?}, unknown {:?} (stable, stable, canary)",
        counts(&from_canary),
        counts(&from_plain),
        counts(&from_nowhere)
    );
    assert_eq!(
        counts(&from_canary),
        [0, 0, FEW as u64],
        "canary callers reach the canary only"
    );
    for (who, r) in [("plain", &from_plain), ("unknown", &from_nowhere)] {
        let c = counts(r);
        assert_eq!(c[2], 0, "{who} callers never reach the canary: {c:?}");
        assert!(
            c[0] > 0 && c[1] > 0,
            "{who} callers use both stable backends: {c:?}"
        );
    }

    let before = set.accepts();
    let from_beta = run(vip, SPLIT_CONNECTS, &beta);
    from_beta.assert_all_ok("beta");
    let split = counts(&from_beta);
    let accepted: Vec<u64> = set
        .accepts()
        .iter()
        .zip(&before)
        .map(|(a, b)| a - b)
        .collect();
    let pct = |c: u64| c as f64 * 100.0 / SPLIT_CONNECTS as f64;
    eprintln!(
        "beta 90/10 split over {SPLIT_CONNECTS} connects: stable {:.1}% + {:.1}%, canary {:.1}% \
         (want 45/45/10); backend accept counters {accepted:?}",
        pct(split[0]),
        pct(split[1]),
        pct(split[2])
    );
    assert_eq!(accepted, split, "backend accept counters vs client view");
    assert_shares("beta split", &split, &[45, 45, 10], 0.03);
    assert!(
        (pct(split[0] + split[1]) - 90.0).abs() <= 3.0,
        "stable subset share {:.1}%",
        pct(split[0] + split[1])
    );

    // Fallback, live: the canary drained leaves rule 1 with no usable backend.
    bed.apply_config(&mesh(vip, &addrs, 0, "all", &workloads))
        .unwrap();
    let fell_back = run(vip, FEW, &canary);
    fell_back.assert_all_ok("canary, fallback all");
    let c = counts(&fell_back);
    eprintln!("canary drained, fallback all: canary callers {c:?}");
    assert_eq!(c[2], 0, "{c:?}");
    assert!(
        c[0] > 0 && c[1] > 0,
        "fallback: all uses the whole service: {c:?}"
    );

    bed.apply_config(&mesh(vip, &addrs, 0, "none", &workloads))
        .unwrap();
    let refused = run(vip, 50, &canary);
    let still = run(vip, 50, &plain);
    let refused_n = refused
        .results
        .iter()
        .filter(|r| r.errno == Some(libc::ECONNREFUSED) && r.peer.is_none())
        .count();
    eprintln!(
        "canary drained, fallback none: {refused_n}/50 canary connects refused at connect; \
         plain {:?}",
        counts(&still)
    );
    assert_eq!(
        refused_n,
        50,
        "{:#?}",
        &refused.results[..3.min(refused.results.len())]
    );
    still.assert_all_ok("plain, fallback none elsewhere");
    assert_eq!(counts(&still)[2], 0);
    assert_eq!(
        set.accepts()[2],
        before[2] + split[2],
        "nothing reached the drained canary"
    );
}
