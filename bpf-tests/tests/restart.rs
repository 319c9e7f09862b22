//! Restart: SIGTERM leaves the pins, so connects keep being routed while the agent
//! is down; a new agent on the same --bpffs adopts them (`adopted: true`), routing unchanged,
//! and still applies config changes afterwards.

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::Value;
use sockmesh_bpf_tests::{
    assert_shares, counts_by_backend, loopback_addrs, BackendMode, ConnectClient, ServiceYaml,
    TcpBackendSet, TestBed,
};

#[test]
fn restarted_agent_adopts_pins_and_routing_never_stops() {
    let backends = loopback_addrs(2, 3, 18210);
    let vip: SocketAddr = "127.100.11.1:18211".parse().unwrap();
    let yaml = ServiceYaml::mesh(&[
        ServiceYaml::new("durable", vip, "weighted_random").backends(&backends, &[1, 1, 2])
    ]);
    let set = TcpBackendSet::start(&backends, BackendMode::Identify).unwrap();
    let mut bed = TestBed::start("restart", &yaml).unwrap();
    let first = bed.agent().status().unwrap();
    assert_eq!(first["adopted"], false, "{first:#}");
    let pins = bed.bpffs().pins();
    assert!(
        !pins.is_empty(),
        "agent pinned nothing under {}",
        bed.bpffs().path().display()
    );
    let attached = bed.cgroup().attached_programs().unwrap();
    assert!(
        attached.iter().any(|p| p.attach_type.contains("connect")),
        "{attached:?}"
    );

    // Runs across stop, downtime and restart; must never fail.
    let stop = bed.dir().join("stop-client");
    let background = ConnectClient::new(vip, 100_000)
        .interval(Duration::from_millis(2))
        .until_file(&stop)
        .max_time(Duration::from_secs(90))
        .spawn(Some(bed.cgroup()), None)
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));

    let exit = bed.agent().sigterm().unwrap();
    assert!(exit.success(), "agent exited with {exit} on SIGTERM");
    assert!(bed.agent().pid().is_none());
    assert_eq!(
        bed.bpffs().pins(),
        pins,
        "pins changed when the agent stopped"
    );
    assert_eq!(
        bed.cgroup().attached_programs().unwrap(),
        attached,
        "programs detached on SIGTERM"
    );

    // Down: the kernel keeps routing with the pinned tables.
    let before = set.accepts();
    let down = ConnectClient::new(vip, 2000)
        .run(Some(bed.cgroup()), None)
        .unwrap();
    down.assert_all_ok("while the agent is down");
    assert!(down
        .results
        .iter()
        .all(|r| r.peer.as_deref() == Some("127.100.11.1:18211")));
    let seen = counts_by_backend(&down.backend_counts(), &backends);
    assert_eq!(seen.iter().sum::<u64>(), 2000);
    assert!(set.accepts().iter().zip(&before).all(|(a, b)| a >= b));
    assert_shares("routing while down", &seen, &[1, 1, 2], 0.05);

    bed.agent().restart().unwrap();
    bed.agent().wait_ready(Duration::from_secs(30)).unwrap();
    let second = bed.agent().status().unwrap();
    assert_eq!(second["adopted"], true, "{second:#}");
    assert_eq!(
        second["config"]["fingerprint"],
        first["config"]["fingerprint"]
    );
    assert_eq!(services(&second), services(&first));
    assert_eq!(
        bed.cgroup().attached_programs().unwrap(),
        attached,
        "adoption re-attached"
    );

    std::fs::write(&stop, "").unwrap();
    let report = background.wait().unwrap();
    assert!(
        report.results.len() >= 100,
        "client made only {}",
        report.results.len()
    );
    report.assert_all_ok("across SIGTERM, downtime and restart");

    // The adopted agent still applies edits: drop the weight-2 backend.
    let two = ServiceYaml::mesh(&[
        ServiceYaml::new("durable", vip, "weighted_random").backends(&backends[..2], &[1, 1])
    ]);
    bed.apply_config(&two).unwrap();
    let before = set.accepts();
    let after = ConnectClient::new(vip, 1000)
        .run(Some(bed.cgroup()), None)
        .unwrap();
    after.assert_all_ok("after a post-restart edit");
    let delta: Vec<u64> = set
        .accepts()
        .iter()
        .zip(&before)
        .map(|(a, b)| a - b)
        .collect();
    assert_eq!(
        delta[2], 0,
        "removed backend still gets connects after restart"
    );
    assert_shares("post-restart 1:1", &delta[..2], &[1, 1], 0.07);
}

/// The services section of a status (ids, slot tables, backends) is what "routing
/// unchanged" means: the adopting agent must report exactly what the first one did.
fn services(status: &Value) -> Value {
    status["services"].clone()
}
