//! The agent's offline commands: `check` validates a file and names the bad field;
//! `cleanup` detaches from the cgroup and leaves no pins.

use std::net::SocketAddr;

use sockmesh_bpf_tests::{
    agent_bin, loopback_addrs, Agent, BackendMode, ConnectClient, ServiceYaml, TcpBackendSet,
    TestBed,
};

const GOOD: &str = "services:
  - name: web
    vip: 127.100.0.1
    port: 80
    lb: round_robin
    backends:
      - addr: 127.0.0.2:8081
        weight: 1
      - addr: 127.0.0.3:8081
        weight: 3
  - name: web6
    vip: \"fd00::100\"
    port: 80
    lb: maglev
    backends:
      - addr: \"[fd00::2]:8081\"
";

#[test]
fn check_exits_zero_on_good_file_and_names_field_of_bad_one() {
    agent_bin();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mesh.yaml");
    std::fs::write(&path, GOOD).unwrap();
    let out = Agent::run_check(&path).unwrap();
    assert!(
        out.status.success(),
        "check on a good file: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    let bad_cases = [
        (
            "bad address",
            GOOD.replace("127.0.0.3:8081", "127.0.0.3:http"),
            Some("services[0].backends[1].addr"),
        ),
        (
            "unknown lb",
            GOOD.replace("lb: round_robin", "lb: fastest"),
            Some("services[0].lb"),
        ),
        (
            "family mismatch",
            GOOD.replace("\"[fd00::2]:8081\"", "127.0.0.9:8081"),
            None,
        ),
        (
            "empty backends",
            GOOD.replace(
                "    backends:\n      - addr: \"[fd00::2]:8081\"\n",
                "    backends: []\n",
            ),
            None,
        ),
        (
            "zero total weight",
            GOOD.replace("weight: 1\n", "weight: 0\n")
                .replace("weight: 3\n", "weight: 0\n"),
            None,
        ),
        (
            "duplicate VIP:port",
            GOOD.replace("fd00::100", "127.100.0.1")
                .replace("\"[fd00::2]:8081\"", "127.0.0.9:8081"),
            None,
        ),
        ("not YAML", "services: [\n".to_string(), None),
    ];
    for (what, yaml, field) in bad_cases {
        let model = sockmesh_model::parse_config(&yaml).expect_err(what);
        // The field path is the model's own; the CLI must report it (and at least the
        // fields the brief names literally).
        let expected = field
            .map(str::to_string)
            .or(model.path().map(str::to_string));
        std::fs::write(&path, &yaml).unwrap();
        let out = Agent::run_check(&path).unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(1),
            "{what}: exit {} stderr {stderr}",
            out.status
        );
        assert!(!stderr.trim().is_empty(), "{what}: no message");
        if let Some(field) = expected {
            assert!(
                stderr.contains(&field),
                "{what}: stderr {stderr:?} lacks {field}"
            );
        }
    }

    let missing = Agent::run_check(&dir.path().join("absent.yaml")).unwrap();
    assert!(
        !missing.status.success(),
        "check on a missing file succeeded"
    );
}

#[test]
fn cleanup_detaches_programs_and_removes_pins() {
    let backends = loopback_addrs(2, 1, 18220);
    let vip: SocketAddr = "127.100.12.1:18221".parse().unwrap();
    let yaml = ServiceYaml::mesh(&[
        ServiceYaml::new("gone", vip, "weighted_random").backends(&backends, &[1])
    ]);
    let set = TcpBackendSet::start(&backends, BackendMode::Identify).unwrap();
    let mut bed = TestBed::start("cleanup", &yaml).unwrap();
    let attached = bed.cgroup().attached_programs().unwrap();
    assert!(!attached.is_empty(), "nothing attached to the test cgroup");
    ConnectClient::new(vip, 5)
        .run(Some(bed.cgroup()), None)
        .unwrap()
        .assert_all_ok("before cleanup");
    assert_eq!(set.total_accepts(), 5);

    // Stop first: the pins survive SIGTERM by contract, so cleanup has real work to do.
    bed.agent().sigterm().unwrap();
    assert!(!bed.bpffs().pins().is_empty());
    let out = Agent::run_cleanup(bed.bpffs().path()).unwrap();
    assert!(
        out.status.success(),
        "cleanup: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !bed.bpffs().path().exists(),
        "pin dir left: {:?}",
        bed.bpffs().pins()
    );
    let left = bed
        .cgroup()
        .wait_detached(std::time::Duration::from_secs(10))
        .unwrap();
    assert!(
        left.is_empty(),
        "programs still attached after cleanup: {left:?}"
    );

    // Not routed any more: nothing listens on the VIP.
    let report = ConnectClient::new(vip, 3)
        .run(Some(bed.cgroup()), None)
        .unwrap();
    for r in &report.results {
        assert_eq!(r.errno, Some(libc::ECONNREFUSED), "{r:?}");
    }
    assert_eq!(set.total_accepts(), 5);

    // Idempotent: a second cleanup of nothing succeeds.
    let again = Agent::run_cleanup(bed.bpffs().path()).unwrap();
    assert!(
        again.status.success(),
        "second cleanup: {}",
        String::from_utf8_lossy(&again.stderr)
    );
}
