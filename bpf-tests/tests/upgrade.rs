//! Upgrade across a map-layout change: an agent of another layout version left its
//! pins (here: this build's pins moved to `v<LAYOUT_VERSION - 1>`, which is what a previous
//! build leaves behind: a complete, attached set the new agent must not adopt). The new agent
//! attaches its own set beside it, routes from its own tables, then retires the old set:
//! no connect fails at any point, and afterwards exactly one set is attached.
//!
//! Ports 18760-18769, VIP 127.100.76.1 (inside the restart/pressure/upgrade block: 18700-18799,
//! 127.100.70-79.x).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use sockmesh_bpf_tests::{
    assert_shares, counts_by_backend, loopback_addrs, wait_gone, BackendMode, ConnectClient,
    ServiceYaml, TcpBackendSet, TestBed,
};
use sockmesh_common::LAYOUT_VERSION;

#[test]
fn new_layout_attaches_beside_the_old_then_retires_it_without_a_failed_connect() {
    let backends = loopback_addrs(2, 3, 18760);
    let vip: SocketAddr = "127.100.76.1:18761".parse().unwrap();
    let yaml = ServiceYaml::mesh(&[
        ServiceYaml::new("upgraded", vip, "weighted_random").backends(&backends, &[1, 1, 2])
    ]);
    let set = TcpBackendSet::start(&backends, BackendMode::Identify).unwrap();
    let mut bed = TestBed::start("upgrade", &yaml).unwrap();
    let attached = bed.cgroup().attached_programs().unwrap();
    assert!(!attached.is_empty(), "nothing attached");

    let stop = bed.dir().join("stop-client");
    let background = ConnectClient::new(vip, 100_000)
        .interval(Duration::from_millis(2))
        .until_file(&stop)
        .max_time(Duration::from_secs(90))
        .spawn(Some(bed.cgroup()), None)
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));

    // The "old build": stop the agent (pins stay), then its set becomes another version's.
    let exit = bed.agent().sigterm().unwrap();
    assert!(exit.success(), "agent exited with {exit} on SIGTERM");
    let root = bed.bpffs().path().to_path_buf();
    let current = root.join(format!("v{LAYOUT_VERSION}"));
    let old = root.join(format!("v{}", LAYOUT_VERSION - 1));
    std::fs::rename(&current, &old).expect("renaming a pin directory on bpffs");
    let down = ConnectClient::new(vip, 500)
        .run(Some(bed.cgroup()), None)
        .unwrap();
    down.assert_all_ok("routed by the old layout's pins alone");

    // The new build: loads its own set (nothing to adopt), then retires the old one.
    bed.agent().restart().unwrap();
    bed.agent().wait_ready(Duration::from_secs(30)).unwrap();
    let status = bed.agent().status().unwrap();
    assert_eq!(
        status["adopted"], false,
        "adopted another version's pins: {status:#}"
    );
    wait_gone(&old, Duration::from_secs(10));
    assert!(current.is_dir(), "the new layout pinned nothing");
    assert!(
        bed.agent()
            .log()
            .contains("retired pins of another layout version"),
        "no retirement logged:\n{}",
        bed.agent().log_tail(30)
    );
    // A removed pin releases its link once the inode is freed (after an RCU grace period).
    let start = Instant::now();
    loop {
        let after = bed.cgroup().attached_programs().unwrap();
        if after.len() == attached.len() {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "{} programs attached 5 s after retirement, not {}: {after:?}",
            after.len(),
            attached.len()
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    std::fs::write(&stop, "").unwrap();
    let report = background.wait().unwrap();
    assert!(
        report.results.len() >= 100,
        "client made only {}",
        report.results.len()
    );
    report.assert_all_ok("across stop, both layouts attached, and retirement");

    // Routing after the upgrade is the new set's, from its own tables.
    let run = ConnectClient::new(vip, 2000)
        .run(Some(bed.cgroup()), None)
        .unwrap();
    run.assert_all_ok("after the upgrade");
    let seen = counts_by_backend(&run.backend_counts(), &backends);
    assert_eq!(seen.iter().sum::<u64>(), 2000);
    assert_shares("after the upgrade", &seen, &[1, 1, 2], 0.05);
    let two = ServiceYaml::mesh(&[
        ServiceYaml::new("upgraded", vip, "weighted_random").backends(&backends[..2], &[1, 1])
    ]);
    bed.apply_config(&two).unwrap();
    let before = set.accepts();
    ConnectClient::new(vip, 500)
        .run(Some(bed.cgroup()), None)
        .unwrap()
        .assert_all_ok("after an edit on the new layout");
    assert_eq!(
        set.accepts()[2],
        before[2],
        "a removed backend still gets connects: an old-layout program still routes"
    );
}
