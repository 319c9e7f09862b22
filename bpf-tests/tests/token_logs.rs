//! No secret in logs: an agent follows `sockmesh-control` over TCP with a bearer token, both
//! real binaries logging at `RUST_LOG=trace`, through a start, a new version, and an agent
//! started with a wrong token; neither token may appear in the agent's or the control
//! plane's log. (The follower's `Debug` output and logs without a kernel:
//! agent/src/follow/token_tests.rs.)
//!
//! Ports 18860-18869, VIP 127.100.86.1:18861. A file of its own: the test sets `RUST_LOG`
//! for the whole process, which every child inherits.

use std::net::SocketAddr;
use std::time::Duration;

use sockmesh_bpf_tests::control_bed::{ControlBed, NODE_NAME};
use sockmesh_bpf_tests::control_server::CONTROL_TOKEN;
use sockmesh_bpf_tests::{loopback_addrs, ServiceYaml};

const WAIT: Duration = Duration::from_secs(15);
const WRONG_TOKEN: &str = "wrong-token-for-the-log-test-5c1e";

fn mesh(vip: SocketAddr, backends: &[SocketAddr], weights: [u32; 2]) -> String {
    ServiceYaml::mesh(&[
        ServiceYaml::new("tok", vip, "weighted_random").backends(backends, &weights)
    ])
}

fn assert_no_token(what: &str, log: &str) {
    for token in [CONTROL_TOKEN, WRONG_TOKEN] {
        let lines: Vec<&str> = log.lines().filter(|l| l.contains(token)).collect();
        assert!(
            lines.is_empty(),
            "{what} shows a token:\n{}",
            lines.join("\n")
        );
    }
}

#[test]
fn control_token_never_reaches_the_logs() {
    // Before any child starts: the agent and the control plane inherit it.
    std::env::set_var("RUST_LOG", "trace");
    let vip = SocketAddr::from(([127, 100, 86, 1], 18861));
    let backends = loopback_addrs(2, 2, 18862);
    let mut bed = ControlBed::new("tok-logs", 18860, &mesh(vip, &backends, [1, 0])).unwrap();
    bed.start_agent(None).unwrap();
    let (version, _) = bed.apply(&mesh(vip, &backends, [0, 1])).unwrap();
    assert_eq!(version, 2);
    bed.control()
        .wait_agent(NODE_NAME, "applied version 2", WAIT, |a| {
            a["applied_version"] == 2
        })
        .unwrap();
    bed.drop_agent();

    // A wrong token: refused (401) and retried, the refusals logged on both sides.
    let bad = bed.dir().join("wrong-token");
    std::fs::write(&bad, format!("{WRONG_TOKEN}\n")).unwrap();
    bed.spawn_agent_with_token(&bad).unwrap();
    std::thread::sleep(Duration::from_secs(3));
    let agent_log = bed.agent().log();
    bed.drop_agent();
    let control_log = bed.control().log();

    assert!(agent_log.contains("401"), "{agent_log}");
    assert!(
        agent_log.contains("DEBUG") || agent_log.contains("TRACE"),
        "the agent did not log at trace:\n{agent_log}"
    );
    assert!(control_log.contains("agent applied"), "{control_log}");
    assert_no_token("the agent's log", &agent_log);
    assert_no_token("the control plane's log", &control_log);
}
