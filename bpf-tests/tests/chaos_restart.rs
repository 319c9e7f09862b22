//! Restart under load: the agent is SIGKILLed at random moments and restarted on
//! the same pins while clients connect through VIPs and long-lived connections echo.
//!
//! - `sigkill_under_load_*`: 20 kills here, to keep CI short (`cargo xtask chaos` runs the
//!   same scenario with 100, see `sockmesh_bpf_tests::chaos_run`): zero failed connects,
//!   zero broken long-lived connections, every restart ready (its time printed, not
//!   asserted: `cargo xtask chaos` reports it), and the very same
//!   programs, maps and links before and after (bpftool), none left after cleanup.
//! - `interrupted_first_starts_*`: kills during the agent's *first* start (loading,
//!   verifying, pinning, attaching), then a start interrupted exactly between pinning a
//!   program and pinning its link: the agent that finally comes up must own exactly one
//!   consistent set (every pinned program is the one attached; no orphan program).
//!
//! Ports 18700-18709, VIPs 127.100.70.1-9.

use std::time::{Duration, Instant};

use sockmesh_bpf_tests::chaos_objects::{check_pins_consistent, LeakCheck, Snapshot};
use sockmesh_bpf_tests::chaos_run::{
    chaos_config, clock_seed, run, sigkill, wait_ready_since, ChaosOptions, Rng,
};
use sockmesh_bpf_tests::{
    loopback_addrs, Agent, AgentOptions, BackendMode, ConnectClient, TcpBackendSet, TestBed,
};

/// Kills in the kernel test (the xtask default is 100).
const KILLS: usize = 20;

#[test]
fn sigkill_under_load_loses_no_connection_and_leaks_nothing() {
    let seed = std::env::var("SOCKMESH_CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(clock_seed);
    let report = run(&ChaosOptions::new("chaos", KILLS, seed), &|| Ok(())).unwrap();
    println!("{}", report.summary());
    assert_eq!(report.kills, KILLS);
    assert!(
        report.early_kills >= 1 && report.reloads >= 1,
        "{report:#?}"
    );
    assert!(
        report.connects >= 1000,
        "too little load to mean anything: {} connects",
        report.connects
    );
    assert!(report.pings > 0);
    let violations = report.violations();
    assert!(
        violations.is_empty(),
        "seed {seed} (rerun with SOCKMESH_CHAOS_SEED={seed}):\n{}",
        violations.join("\n")
    );
}

#[test]
fn interrupted_first_starts_leave_one_consistent_attachment() {
    let load = loopback_addrs(2, 3, 18705);
    let echo = loopback_addrs(5, 2, 18706);
    // The config's VIPs are the chaos test's; no traffic here, the two never run together.
    let bed = TestBed::new("chaos-start", &chaos_config(&load, &echo, &[1, 1, 1])).unwrap();
    let pins = bed.bpffs().path().to_path_buf();
    let before = Snapshot::scan().unwrap();
    let opts = AgentOptions {
        config: Some(bed.config_path().to_path_buf()),
        cgroup: bed.cgroup().path().to_path_buf(),
        bpffs: pins.clone(),
        state_dir: bed.dir().join("state"),
        watch_interval_ms: Some(100),
        log_file: bed.dir().join("agent.log"),
    };
    // One Agent guard for all starts: its drop runs `cleanup` once, at the end.
    let spawned = Instant::now();
    let mut agent = Agent::spawn(opts).unwrap();
    let load_time = wait_ready_since(&mut agent, spawned, Duration::from_secs(30)).unwrap();
    check_pins_consistent(&pins).unwrap();
    // Back to nothing pinned, then starts killed at moments spread over (and beyond) a first
    // start: loading, verifying, pinning maps and programs, attaching, pinning links.
    sigkill(&agent).unwrap();
    let out = Agent::run_cleanup(&pins).unwrap();
    assert!(out.status.success(), "{out:?}");
    let seed = clock_seed();
    let mut rng = Rng::new(seed);
    let window = load_time + load_time / 2;
    let kills = 12u32;
    for k in 0..kills {
        agent.restart().unwrap();
        std::thread::sleep(window * k / kills + rng.duration(window / kills));
        sigkill(&agent).unwrap();
    }
    agent.restart().unwrap();
    agent.wait_ready(Duration::from_secs(30)).unwrap();
    let counts = check_pins_consistent(&pins).unwrap();
    println!(
        "chaos-start: first start took {load_time:?}; {kills} starts killed within {window:?} \
         (seed {seed}); the survivor owns {} programs, {} maps, {} links",
        counts.0, counts.1, counts.2
    );

    // Deterministic: a start killed after pinning a program and before pinning its link
    // leaves the program pin without a link pin. Make exactly that state (the link pin is
    // what keeps the program attached, so getpeername6, unused on this IPv4 test, detaches).
    sigkill(&agent).unwrap();
    let layout = layout_dir(&pins);
    let link = layout.join("links/sockmesh_getpeername6");
    assert!(layout.join("progs/sockmesh_getpeername6").exists());
    std::fs::remove_file(&link).unwrap();
    agent.restart().unwrap();
    agent.wait_ready(Duration::from_secs(30)).unwrap();
    let status = agent.status().unwrap();
    assert_eq!(
        status["adopted"], false,
        "a partial set is completed, not adopted"
    );
    let repaired = check_pins_consistent(&pins).unwrap();
    assert_eq!(
        repaired, counts,
        "completing the interrupted start changed the counts"
    );
    assert!(
        agent
            .log()
            .contains("replacing a program pin left by an interrupted start"),
        "{}",
        agent.log_tail(30)
    );
    // And it routes, getpeername answering the VIP.
    let vip = sockmesh_bpf_tests::chaos_run::VIPS[0];
    let _backends = TcpBackendSet::start(&load, BackendMode::Identify).unwrap();
    let report = ConnectClient::new(vip, 50)
        .run(Some(bed.cgroup()), None)
        .unwrap();
    report.assert_all_ok("after completing an interrupted start");
    assert!(report
        .results
        .iter()
        .all(|r| r.peer.as_deref() == Some(&vip.to_string()[..])));

    drop(agent);
    let leaks = LeakCheck::against(&before, &pins, Duration::from_secs(3)).unwrap();
    println!("chaos-start: {}", leaks.summary());
    assert!(leaks.is_clean(), "{}", leaks.summary());
    assert_eq!(leaks.owned_after, (0, 0, 0), "{}", leaks.summary());
}

/// `<pins>/v<LAYOUT_VERSION>`: the one versioned directory the agent pinned into.
fn layout_dir(pins: &std::path::Path) -> std::path::PathBuf {
    let dirs: Vec<_> = std::fs::read_dir(pins)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.is_dir()
                && p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with('v'))
        })
        .collect();
    assert_eq!(
        dirs.len(),
        1,
        "one layout directory under {}: {dirs:?}",
        pins.display()
    );
    dirs[0].clone()
}
