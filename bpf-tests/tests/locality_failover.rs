//! Locality in the kernel: a round-robin service with three backends in zone `a`
//! and two in zone `b`, `locality: {min_healthy_percent: 60}`, an agent started with
//! `--zone b` (the node's zone), and a caller in workload `near` (zone `a`).
//!
//! - All healthy: `near` reaches zone-a backends only; a caller in no workload (node zone
//!   `b`) reaches zone-b backends only.
//! - a0 killed: refused connects get it banned; 2/3 of zone a (67 %) is still >= 60 %, so
//!   `near` stays in zone a, now on a1 and a2.
//! - a1 killed too: banned; 1/3 (33 %) < 60 %, so `near` fails over to every healthy backend
//!   (a2, b0, b1).
//! - Both restarted: the bans end (probe passes), zone a is whole again, and `near` is back on
//!   zone a only.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use sockmesh_bpf_tests::health_admin::{bans_of, wait_until};
use sockmesh_bpf_tests::health_backend::SwitchBackends;
use sockmesh_bpf_tests::health_client::{Caller, Connects};
use sockmesh_bpf_tests::route_mesh::{
    route_mesh, wait_class_slots, RouteBackend, RouteService, RouteWorkload,
};
use sockmesh_bpf_tests::{loopback_addrs, wait_workloads, TestBed, SIGNAL_TIMEOUT};

const SERVICE: &str = "zoned";
const ROUNDS: usize = 300;
/// Bounded: batches of connects that keep a dead backend failing until it is banned.
const MAX_BATCHES: usize = 100;
const BAN_TIMEOUT: Duration = Duration::from_secs(15);

/// Successful connects per backend, in `addrs` order, and the failures.
fn spread(caller: &mut Caller, n: usize, addrs: &[SocketAddr]) -> (Vec<usize>, usize) {
    let batch = caller.connect(&Connects::new(n)).unwrap();
    let by: BTreeMap<String, usize> = batch.by_backend();
    let counts = addrs
        .iter()
        .map(|a| by.get(&a.to_string()).copied().unwrap_or(0))
        .collect();
    (counts, batch.results.len() - batch.ok_count())
}

/// Keeps `caller` connecting (the dead backend's refusals are what gets it banned) until
/// `/v1/bans` lists `victim`; returns the failed connects seen meanwhile.
fn until_banned(bed: &mut TestBed, caller: &mut Caller, victim: SocketAddr) -> usize {
    let mut failed = 0;
    for _ in 0..MAX_BATCHES {
        let banned = bans_of(bed.agent(), SERVICE)
            .unwrap()
            .iter()
            .any(|b| b["backend"] == victim.to_string());
        if banned {
            return failed;
        }
        let batch = caller
            .connect(
                &Connects::new(10)
                    .rate(500.0)
                    .timeout(Duration::from_secs(1)),
            )
            .unwrap();
        failed += batch.results.len() - batch.ok_count();
    }
    panic!("{victim} was not banned after {MAX_BATCHES} batches of connects");
}

#[test]
fn callers_stay_in_their_zone_while_it_is_healthy_and_fail_over_below_the_threshold() {
    let addrs = loopback_addrs(2, 5, 18910);
    let (a, b) = (&addrs[..3], &addrs[3..]);
    let vip: SocketAddr = "127.100.91.1:18911".parse().unwrap();
    let mut set = SwitchBackends::start(&addrs).unwrap();
    let mut bed = TestBed::new("locality-failover", "version: 1\nservices: []\n").unwrap();
    let near = bed.cgroup().child("near").unwrap();
    let backends = addrs
        .iter()
        .enumerate()
        .map(|(i, addr)| RouteBackend::new(*addr).zone(if i < 3 { "a" } else { "b" }))
        .collect();
    let service = RouteService::new(SERVICE, vip, "round_robin", backends)
        .with("locality", "{prefer_zone: true, min_healthy_percent: 60}")
        // Bans by consecutive refusals only (the deviation rule needs more backends than the
        // service has), short and capped so the dead ones return soon after their restart.
        .with(
            "outlier",
            "{consecutive_failures: 3, deviation_min_backends: 6, base_ban: 1s, max_ban: 2s, \
             probe_timeout: 200ms, max_banned_percent: 50}",
        );
    let workloads = [RouteWorkload::new("near", &near.relative_path().unwrap()).zone("a")];
    bed.write_config(&route_mesh(&[service], &workloads))
        .unwrap();
    bed.start_agent_with(["--zone", "b"]).unwrap();
    wait_workloads(bed.agent(), &["near"], SIGNAL_TIMEOUT).unwrap();
    wait_class_slots(bed.agent(), SERVICE, "near", a, SIGNAL_TIMEOUT).unwrap();
    let mut caller = Caller::spawn("near", &near, vip).unwrap();
    let mut stranger = Caller::spawn("unknown", bed.cgroup(), vip).unwrap();

    // All healthy.
    let (healthy, failed) = spread(&mut caller, ROUNDS, &addrs);
    let (node_zone, failed_unknown) = spread(&mut stranger, 100, &addrs);
    eprintln!("healthy: near (zone a) {healthy:?}; unknown caller (node zone b) {node_zone:?}");
    assert_eq!((failed, failed_unknown), (0, 0));
    assert_eq!(healthy, [100, 100, 100, 0, 0], "zone a only, in turn");
    assert_eq!(
        &node_zone[..3],
        [0, 0, 0],
        "the node's zone is b: {node_zone:?}"
    );
    assert_eq!(node_zone[3] + node_zone[4], 100);

    // a0 dies: banned, and zone a (2 of 3 healthy = 67 %) is still preferred.
    set.stop(0);
    let failed0 = until_banned(&mut bed, &mut caller, a[0]);
    wait_class_slots(bed.agent(), SERVICE, "near", &a[1..], SIGNAL_TIMEOUT).unwrap();
    let (one_down, failed) = spread(&mut caller, ROUNDS, &addrs);
    eprintln!("a0 down ({failed0} refused before its ban): near {one_down:?}");
    assert_eq!(failed, 0);
    assert_eq!(one_down, [0, 150, 150, 0, 0], "still zone a: 67 % >= 60 %");

    // a1 dies too: 1 of 3 healthy = 33 % < 60 %: fail over to every healthy backend.
    set.stop(1);
    let failed1 = until_banned(&mut bed, &mut caller, a[1]);
    let failover = [a[2], b[0], b[1]];
    wait_class_slots(bed.agent(), SERVICE, "near", &failover, SIGNAL_TIMEOUT).unwrap();
    let (two_down, failed) = spread(&mut caller, ROUNDS, &addrs);
    eprintln!("a0, a1 down ({failed1} refused before the ban): near {two_down:?}");
    assert_eq!(failed, 0);
    assert_eq!(&two_down[..2], [0, 0], "nothing to the banned ones");
    assert_eq!(two_down[2] + two_down[3] + two_down[4], ROUNDS);
    assert!(
        two_down[2..].iter().all(|c| *c >= ROUNDS / 3 - 5),
        "failover spreads over a2, b0, b1: {two_down:?}"
    );

    // Both return: bans end after a passing probe, and near is back on zone a alone.
    set.restart(0).unwrap();
    set.restart(1).unwrap();
    wait_until(
        bed.agent(),
        "the zone-a bans to end",
        BAN_TIMEOUT,
        |agent| Ok(bans_of(agent, SERVICE)?.is_empty().then_some(())),
    )
    .unwrap();
    wait_class_slots(bed.agent(), SERVICE, "near", a, SIGNAL_TIMEOUT).unwrap();
    let (back, failed) = spread(&mut caller, ROUNDS, &addrs);
    eprintln!("a0, a1 back: near {back:?}");
    assert_eq!(failed, 0);
    assert_eq!(back, [100, 100, 100, 0, 0], "back in zone a");
    assert!(
        set.accepts(3) + set.accepts(4) >= 100 + 200,
        "zone b served the failover"
    );
}
