//! Live reload: the agent re-applies an edited config file; a broken edit is
//! rejected with the field path, and routing carries on untouched while it happens.

use std::net::SocketAddr;
use std::time::Duration;

use sockmesh_bpf_tests::{
    assert_shares, binomial_tolerance, counts_by_backend, loopback_addrs, BackendMode,
    ConnectClient, ServiceYaml, TcpBackendSet, TestBed,
};

#[test]
fn reload_weight_change_gives_new_distribution() {
    let backends = loopback_addrs(2, 3, 18180);
    let vip: SocketAddr = "127.100.8.1:18181".parse().unwrap();
    let mesh = |w: &[u32]| {
        ServiceYaml::mesh(&[
            ServiceYaml::new("reweigh", vip, "weighted_random").backends(&backends, w)
        ])
    };
    let set = TcpBackendSet::start(&backends, BackendMode::Identify).unwrap();
    let mut bed = TestBed::start("reload-weights", &mesh(&[1, 1, 2])).unwrap();

    let report = ConnectClient::new(vip, 4000)
        .run(Some(bed.cgroup()), None)
        .unwrap();
    report.assert_all_ok("before the edit");
    assert_shares("weights 1:1:2", &set.accepts(), &[1, 1, 2], 0.03);

    let status = bed.apply_config(&mesh(&[4, 1, 1])).unwrap();
    let weights: Vec<u64> = status["services"][0]["backends"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["weight"].as_u64().unwrap())
        .collect();
    assert_eq!(weights, vec![4, 1, 1], "{status:#}");

    let before = set.accepts();
    let report = ConnectClient::new(vip, 4000)
        .run(Some(bed.cgroup()), None)
        .unwrap();
    report.assert_all_ok("after the edit");
    let delta: Vec<u64> = set
        .accepts()
        .iter()
        .zip(&before)
        .map(|(a, b)| a - b)
        .collect();
    assert_eq!(
        delta,
        counts_by_backend(&report.backend_counts(), &backends)
    );
    assert_shares("weights 4:1:1 after reload", &delta, &[4, 1, 1], 0.03);
}

#[test]
fn reload_removed_backend_gets_zero_new_connects() {
    let backends = loopback_addrs(2, 3, 18190);
    let vip: SocketAddr = "127.100.9.1:18191".parse().unwrap();
    let set = TcpBackendSet::start(&backends, BackendMode::Identify).unwrap();
    let all = ServiceYaml::new("shrink", vip, "weighted_random").backends(&backends, &[1, 1, 1]);
    let mut bed = TestBed::start("reload-remove", &ServiceYaml::mesh(&[all])).unwrap();

    ConnectClient::new(vip, 300)
        .run(Some(bed.cgroup()), None)
        .unwrap()
        .assert_all_ok("before removal");
    assert!(set.accepts().iter().all(|&a| a > 0), "{:?}", set.accepts());

    let two = ServiceYaml::new("shrink", vip, "weighted_random").backends(&backends[..2], &[1, 1]);
    bed.apply_config(&ServiceYaml::mesh(&[two])).unwrap();
    let before = set.accepts();
    let report = ConnectClient::new(vip, 1000)
        .run(Some(bed.cgroup()), None)
        .unwrap();
    report.assert_all_ok("after removal");
    let delta: Vec<u64> = set
        .accepts()
        .iter()
        .zip(&before)
        .map(|(a, b)| a - b)
        .collect();
    assert_eq!(delta[2], 0, "removed backend got {} new connects", delta[2]);
    assert!(!report
        .backend_counts()
        .contains_key(&backends[2].to_string()));
    assert_shares("remaining 1:1", &delta[..2], &[1, 1], 0.06);
}

#[test]
fn reload_broken_file_is_rejected_and_old_routing_continues() {
    let backends = loopback_addrs(2, 2, 18200);
    let vip: SocketAddr = "127.100.10.1:18201".parse().unwrap();
    let good = ServiceYaml::mesh(&[
        ServiceYaml::new("steady", vip, "weighted_random").backends(&backends, &[1, 3])
    ]);
    let set = TcpBackendSet::start(&backends, BackendMode::Identify).unwrap();
    let mut bed = TestBed::start("reload-broken", &good).unwrap();
    let status = bed.agent().status().unwrap();
    let fingerprint = status["config"]["fingerprint"]
        .as_str()
        .unwrap()
        .to_string();
    let applies = status["config"]["applies"].as_u64().unwrap();
    let rejected = status["config"]["rejected"].as_u64().unwrap();

    // A client connecting every 2 ms for the whole edit, stopped by a marker file.
    let stop = bed.dir().join("stop-client");
    let client = ConnectClient::new(vip, 100_000)
        .interval(Duration::from_millis(2))
        .until_file(&stop)
        .max_time(Duration::from_secs(60))
        .spawn(Some(bed.cgroup()), None)
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));

    // Two broken edits, each must be rejected naming its field.
    let bad_addr = good.replace("127.0.0.3:18200", "127.0.0.300:18200");
    let bad_lb = good.replace("lb: weighted_random", "lb: fastest");
    for (n, (yaml, field)) in [
        (bad_addr, "services[0].backends[1].addr"),
        (bad_lb, "services[0].lb"),
    ]
    .into_iter()
    .enumerate()
    {
        let err = sockmesh_model::parse_config(&yaml).unwrap_err();
        assert_eq!(err.path(), Some(field), "test premise: {err}");
        bed.write_config(&yaml).unwrap();
        let want = rejected + n as u64 + 1;
        let status = bed
            .agent()
            .wait_rejected(want, Duration::from_secs(10))
            .unwrap();
        let last_error = status["config"]["last_error"].as_str().unwrap_or("");
        assert!(
            last_error.contains(field),
            "last_error {last_error:?} lacks {field}"
        );
        assert_eq!(status["config"]["fingerprint"], fingerprint.as_str());
        assert_eq!(status["config"]["applies"], applies);
        // Several watch intervals later it is still one rejection, not one per poll.
        std::thread::sleep(Duration::from_millis(600));
        let status = bed.agent().status().unwrap();
        assert_eq!(status["config"]["rejected"], want, "{status:#}");
        assert!(bed.agent().log().contains(field), "agent log lacks {field}");
    }

    std::fs::write(&stop, "").unwrap();
    let report = client.wait().unwrap();
    assert!(
        report.results.len() >= 100,
        "client made only {}",
        report.results.len()
    );
    report.assert_all_ok("during the broken edits");
    assert!(report
        .results
        .iter()
        .all(|r| r.peer.as_deref() == Some("127.100.10.1:18201")));
    let seen = counts_by_backend(&report.backend_counts(), &backends);
    assert_eq!(seen.iter().sum::<u64>() as usize, report.results.len());
    // Old weights 1:3 still rule; the run's length depends on timing, so the bound does too.
    let tolerance = binomial_tolerance(report.results.len(), 4.5);
    assert_shares("old routing during bad edits", &seen, &[1, 3], tolerance);

    // A good edit after the broken ones applies as usual.
    let fixed = ServiceYaml::mesh(&[
        ServiceYaml::new("steady", vip, "weighted_random").backends(&backends[..1], &[1])
    ]);
    bed.apply_config(&fixed).unwrap();
    let status = bed.agent().status().unwrap();
    assert!(
        status["config"]["applies"].as_u64().unwrap() > applies,
        "{status:#}"
    );
    let before = set.accepts();
    ConnectClient::new(vip, 50)
        .run(Some(bed.cgroup()), None)
        .unwrap()
        .assert_all_ok("after the fix");
    assert_eq!(set.accepts()[0] - before[0], 50);
    assert_eq!(set.accepts()[1], before[1]);
}
