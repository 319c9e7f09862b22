//! The control plane with real processes on 127.0.0.1 and the real kernel: an
//! agent follows `sockmesh-control` (`--control`), and what the control plane serves is
//! what a client in the test cgroup gets routed by.
//!
//! Each test owns ports 188N0-188N9 (the control plane's API on 188N0, backends on 188N2)
//! and VIP 127.100.8N.1:188N1. Every routing check flips a two-backend service between
//! weights 1:0 and 0:1, so "the change reached the kernel" is exact: every connect lands
//! on the one backend with weight.

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use sockmesh_bpf_tests::control_bed::{ControlBed, CONTROL_APPLY_TIMEOUT, NODE_NAME};
use sockmesh_bpf_tests::control_server::CONTROL_TOKEN;
use sockmesh_bpf_tests::{
    cli_bin, fingerprint_of, http_get_tcp, loopback_addrs, BackendMode, ConnectClient, ServiceYaml,
    TcpBackendSet,
};

const WAIT: Duration = Duration::from_secs(15);
const CONNECTS: usize = 40;

/// Test N's VIP and two backends.
fn addrs(n: u8) -> (SocketAddr, Vec<SocketAddr>) {
    let base = 18800 + u16::from(n) * 10;
    let vip = SocketAddr::from(([127, 100, 80 + n, 1], base + 1));
    (vip, loopback_addrs(2, 2, base + 2))
}

fn mesh(vip: SocketAddr, backends: &[SocketAddr], weights: [u32; 2]) -> String {
    ServiceYaml::mesh(&[
        ServiceYaml::new("ctl", vip, "weighted_random").backends(backends, &weights)
    ])
}

/// Connects from the test cgroup; asserts every connect reached `expected` (and saw the VIP
/// as its peer).
fn assert_routed_to(bed: &ControlBed, vip: SocketAddr, expected: SocketAddr, what: &str) {
    let report = ConnectClient::new(vip, CONNECTS)
        .run(Some(bed.cgroup()), None)
        .unwrap();
    report.assert_all_ok(what);
    let counts = report.backend_counts();
    assert_eq!(
        counts.get(&expected.to_string()).copied(),
        Some(CONNECTS as u64),
        "{what}: expected every connect on {expected}, got {counts:?}"
    );
    assert!(report
        .results
        .iter()
        .all(|r| r.peer.as_deref() == Some(vip.to_string().as_str())));
}

#[test]
fn control_file_edit_reaches_the_agents_kernel_tables() {
    let (vip, backends) = addrs(0);
    let _set = TcpBackendSet::start(&backends, BackendMode::Identify).unwrap();
    let v1 = mesh(vip, &backends, [1, 0]);
    let mut bed = ControlBed::new("ctl-edit", 18800, &v1).unwrap();
    let status = bed
        .start_agent(Some(&fingerprint_of(&v1).unwrap()))
        .unwrap()
        .status()
        .unwrap();
    assert_eq!(
        status["config"]["source"],
        "control https://127.0.0.1:18800"
    );
    assert_routed_to(&bed, vip, backends[0], "version 1");
    let agent = bed
        .control()
        .wait_agent(NODE_NAME, "applied version 1", WAIT, |a| {
            a["applied_version"] == 1
        })
        .unwrap();
    assert_eq!(agent["in_sync"], true, "{agent:#}");

    let v2 = mesh(vip, &backends, [0, 1]);
    let (version, status) = bed.apply(&v2).unwrap();
    assert_eq!(version, 2);
    let weights: Vec<u64> = status["services"][0]["backends"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["weight"].as_u64().unwrap())
        .collect();
    assert_eq!(weights, [0, 1], "{status:#}");
    assert_routed_to(&bed, vip, backends[1], "version 2");
    bed.control()
        .wait_agent(NODE_NAME, "applied version 2", WAIT, |a| {
            a["applied_version"] == 2 && a["in_sync"] == true && a["ok"] == true
        })
        .unwrap();

    // The control plane's metrics say the same.
    let metrics_addr: SocketAddr = bed.control().status().unwrap()["metrics_addr"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let metrics = http_get_tcp(metrics_addr, "/metrics", WAIT).unwrap().body;
    for line in [
        "sockmesh_control_config_version 2".to_owned(),
        format!("sockmesh_control_agent_version{{agent=\"{NODE_NAME}\"}} 2"),
        format!("sockmesh_control_agent_sync_age_seconds{{agent=\"{NODE_NAME}\"}} 0.0"),
    ] {
        assert!(
            metrics.lines().any(|l| l == line),
            "{line:?} missing:\n{metrics}"
        );
    }
    // And the agent keeps what it applied for a start without the control plane.
    let saved = std::fs::read_to_string(bed.last_applied()).unwrap();
    assert!(saved.contains("# control-version: 2\n"), "{saved}");
    assert_eq!(
        sockmesh_model::parse_config(&saved).unwrap().fingerprint(),
        fingerprint_of(&v2).unwrap()
    );
}

#[test]
fn control_rejects_an_invalid_edit_and_it_never_reaches_the_agent() {
    let (vip, backends) = addrs(1);
    let _set = TcpBackendSet::start(&backends, BackendMode::Identify).unwrap();
    let v1 = mesh(vip, &backends, [1, 0]);
    let mut bed = ControlBed::new("ctl-invalid", 18810, &v1).unwrap();
    let before = bed.start_agent(None).unwrap().status().unwrap();

    let bad = v1.replace("lb: weighted_random", "lb: fastest");
    let err = sockmesh_model::parse_config(&bad).unwrap_err();
    assert_eq!(err.path(), Some("services[0].lb"), "test premise: {err}");
    bed.control().write_config(&bad).unwrap();
    let status = bed
        .control()
        .wait_status("to reject the edit", WAIT, |s| s["rejected"] == 1)
        .unwrap();
    assert_eq!(status["version"], 1, "{status:#}");
    assert_eq!(status["last_rejection"]["path"], "services[0].lb");
    assert!(
        bed.control().log().contains("services[0].lb"),
        "control log lacks the path"
    );

    // Well past a watch's wake-up: the agent still runs version 1 and saw nothing.
    std::thread::sleep(Duration::from_secs(1));
    let after = bed.agent().status().unwrap();
    assert_eq!(
        after["config"]["fingerprint"],
        before["config"]["fingerprint"]
    );
    assert_eq!(after["config"]["applies"], before["config"]["applies"]);
    assert_eq!(after["config"]["rejected"], 0, "{after:#}");
    assert!(!bed.agent().log().contains("services[0].lb"));
    let agent = bed.control().get_json("/v1/agents").unwrap();
    assert_eq!(agent[0]["version"], 1, "{agent:#}");
    assert_eq!(agent[0]["ok"], true);
    let history = bed.control().get_json("/v1/history").unwrap();
    let versions: Vec<u64> = history["versions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["version"].as_u64().unwrap())
        .collect();
    assert_eq!(
        versions,
        [1],
        "the rejected edit has no version: {history:#}"
    );
    assert_routed_to(&bed, vip, backends[0], "after the rejected edit");

    // The next good edit is version 2 and goes through.
    let (version, _) = bed.apply(&mesh(vip, &backends, [0, 1])).unwrap();
    assert_eq!(version, 2);
    assert_routed_to(&bed, vip, backends[1], "after the fix");
}

#[test]
fn control_down_agent_restart_comes_up_from_its_persisted_snapshot() {
    let (vip, backends) = addrs(2);
    let _set = TcpBackendSet::start(&backends, BackendMode::Identify).unwrap();
    let mut bed = ControlBed::new("ctl-persist", 18820, &mesh(vip, &backends, [1, 0])).unwrap();
    bed.start_agent(None).unwrap();
    let v2 = mesh(vip, &backends, [0, 1]);
    bed.apply(&v2).unwrap();
    let v2_fingerprint = fingerprint_of(&v2).unwrap();

    bed.control().stop().unwrap();
    // Stop the agent and detach everything (cleanup), so what routes next can only come
    // from the snapshot the agent persisted, not from pins an earlier agent left.
    bed.drop_agent();
    let left = bed.cgroup().wait_detached(Duration::from_secs(10)).unwrap();
    assert!(left.is_empty(), "still attached after cleanup: {left:?}");
    let unrouted = ConnectClient::new(vip, 1)
        .timeout(Duration::from_secs(1))
        .run(Some(bed.cgroup()), None)
        .unwrap();
    assert_eq!(
        unrouted.failures().len(),
        1,
        "nothing should route the VIP now: {unrouted:?}"
    );

    let status = bed
        .start_agent(Some(&v2_fingerprint))
        .unwrap()
        .status()
        .unwrap();
    assert_eq!(status["adopted"], false, "{status:#}");
    assert!(
        bed.agent()
            .log()
            .contains("starting from the persisted snapshot"),
        "{}",
        bed.agent().log_tail(30)
    );
    assert_routed_to(&bed, vip, backends[1], "from the persisted snapshot");

    // The control plane returns: the agent reconnects and acks what it runs.
    bed.control().start().unwrap();
    let agent = bed
        .control()
        .wait_agent(NODE_NAME, "back in sync", WAIT, |a| a["in_sync"] == true)
        .unwrap();
    assert_eq!(agent["applied_version"], 2, "{agent:#}");
    assert_eq!(
        bed.agent().status().unwrap()["config"]["fingerprint"],
        v2_fingerprint.as_str()
    );
}

#[test]
fn control_restart_the_watch_reconnects_and_gets_the_next_change() {
    let (vip, backends) = addrs(3);
    let _set = TcpBackendSet::start(&backends, BackendMode::Identify).unwrap();
    let mut bed = ControlBed::new("ctl-restart", 18830, &mesh(vip, &backends, [1, 0])).unwrap();
    bed.start_agent(None).unwrap();

    bed.control().stop().unwrap();
    std::thread::sleep(Duration::from_millis(700));
    assert_routed_to(&bed, vip, backends[0], "while the control plane is down");
    assert_eq!(bed.agent().get("/ready").unwrap().status, 200);

    bed.control().start().unwrap();
    let (version, _) = bed.apply(&mesh(vip, &backends, [0, 1])).unwrap();
    assert_eq!(
        version, 2,
        "the state dir keeps the numbering across the restart"
    );
    assert_routed_to(&bed, vip, backends[1], "after the control plane's restart");
    let log = bed.agent().log();
    assert!(
        log.contains("lost the control plane"),
        "{}",
        bed.agent().log_tail(30)
    );
    assert!(
        log.contains("control plane reachable again"),
        "{}",
        bed.agent().log_tail(30)
    );
    bed.control()
        .wait_agent(NODE_NAME, "applied version 2", WAIT, |a| {
            a["applied_version"] == 2
        })
        .unwrap();
}

#[test]
fn control_unauthenticated_requests_get_401() {
    let (vip, backends) = addrs(4);
    let mut bed = ControlBed::new("ctl-auth", 18840, &mesh(vip, &backends, [1, 0])).unwrap();
    let requests = [
        ("GET", "/v1/snapshot"),
        ("GET", "/v1/watch?after=0&timeout=1s"),
        ("GET", "/v1/agents"),
        ("GET", "/v1/history"),
        ("GET", "/v1/status"),
        ("POST", "/v1/rollback"),
        ("POST", "/v1/ack"),
    ];
    for (method, path) in requests {
        for auth in [None, Some("Bearer wrong-token"), Some(CONTROL_TOKEN)] {
            let status = bed.control().tcp_status(method, path, auth).unwrap();
            assert_eq!(status, 401, "{method} {path} with {auth:?}");
        }
        let right = format!("Bearer {CONTROL_TOKEN}");
        let status = bed
            .control()
            .tcp_status(method, path, Some(&right))
            .unwrap();
        assert_ne!(status, 401, "{method} {path} with the token");
    }

    // An agent with the wrong token gets nothing: it never becomes ready or attaches.
    let bad = bed.dir().join("bad-token");
    std::fs::write(&bad, "not-the-token\n").unwrap();
    bed.spawn_agent_with_token(&bad).unwrap();
    std::thread::sleep(Duration::from_secs(3));
    assert!(bed.agent().get("/ready").map_or(true, |r| r.status != 200));
    assert!(
        bed.agent().log().contains("401"),
        "{}",
        bed.agent().log_tail(20)
    );
    assert!(bed.cgroup().attached_programs().unwrap().is_empty());
    assert_eq!(
        bed.control().get_json("/v1/agents").unwrap(),
        serde_json::json!([])
    );
    bed.drop_agent();
    // With the right token it follows.
    bed.start_agent(None).unwrap();
}

#[test]
fn control_rollback_reaches_the_agent() {
    let (vip, backends) = addrs(5);
    let _set = TcpBackendSet::start(&backends, BackendMode::Identify).unwrap();
    let v1 = mesh(vip, &backends, [1, 0]);
    let mut bed = ControlBed::new("ctl-rollback", 18850, &v1).unwrap();
    bed.start_agent(None).unwrap();
    bed.apply(&mesh(vip, &backends, [0, 1])).unwrap();
    assert_routed_to(&bed, vip, backends[1], "version 2");

    let token = bed.dir().join("control-token");
    let (url, trust) = (bed.control().url(), bed.control().trust_args());
    let cli = |args: &[&str]| {
        let out = Command::new(cli_bin())
            .args(args)
            .arg("--control-url")
            .arg(&url)
            .args(&trust)
            .arg("--token-file")
            .arg(&token)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let said = cli(&["config", "rollback", "1"]);
    assert!(
        said.starts_with("rolled back to version 1: agents are now served version 3"),
        "{said}"
    );
    bed.agent()
        .wait_fingerprint(&fingerprint_of(&v1).unwrap(), CONTROL_APPLY_TIMEOUT)
        .unwrap();
    assert_routed_to(&bed, vip, backends[0], "after the rollback");
    bed.control()
        .wait_agent(NODE_NAME, "applied version 3", WAIT, |a| {
            a["applied_version"] == 3 && a["in_sync"] == true
        })
        .unwrap();
    let history = cli(&["config", "history"]);
    let head = history.lines().nth(1).unwrap();
    assert!(
        head.starts_with("3 ") && head.contains("rollback of 1"),
        "{history}"
    );
}
