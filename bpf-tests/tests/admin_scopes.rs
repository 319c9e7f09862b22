//! The agent's admin API on TCP has two scopes: `--admin-token-file` reads,
//! `--admin-fault-token-file` also injects faults. Against the real agent and the real
//! `sockmesh` CLI on 127.0.0.1: the read token gets the status but `sockmesh fault set` is
//! refused with the agent's 403 reason, the fault token sets the drill, and each refusal is
//! counted in `sockmesh_admin_requests_refused_total{reason}`.

use std::net::{SocketAddr, TcpListener};
use std::process::{Command, Output};

use sockmesh_bpf_tests::health_admin::circuit;
use sockmesh_bpf_tests::health_yaml::{health_mesh, HealthService};
use sockmesh_bpf_tests::{
    cli_bin, http_get_tcp, loopback_addrs, require_root, ServiceYaml, TestBed,
};

const SERVICE: &str = "scoped";
const READ: &str = "admin-read-token-0123456789";
const FAULT: &str = "admin-fault-token-0123456789";

fn free_port() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

fn sockmesh(admin: SocketAddr, token_file: &std::path::Path, args: &[&str]) -> Output {
    Command::new(cli_bin())
        .args(args)
        .arg("--admin-url")
        .arg(format!("http://{admin}"))
        .arg("--token-file")
        .arg(token_file)
        .env_remove("SOCKMESH_ADMIN_URL")
        .env_remove("SOCKMESH_TOKEN_FILE")
        .env("NO_COLOR", "1")
        .output()
        .unwrap()
}

fn refused(metrics: &str, reason: &str) -> u64 {
    let prefix = format!("sockmesh_admin_requests_refused_total{{reason=\"{reason}\"}} ");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .unwrap_or_else(|| panic!("no {prefix} in\n{metrics}"))
        .trim()
        .parse()
        .unwrap()
}

#[test]
fn the_read_token_cannot_inject_faults_and_the_fault_token_can() {
    require_root();
    let backends = loopback_addrs(2, 2, 18490);
    let vip: SocketAddr = "127.100.49.1:18491".parse().unwrap();
    let service = ServiceYaml::new(SERVICE, vip, "round_robin").backends(&backends, &[1; 2]);
    let mut bed = TestBed::new(
        "admin-scopes",
        &health_mesh(&[HealthService::new(service)], &[]),
    )
    .unwrap();
    let keys = tempfile::tempdir().unwrap();
    let read_file = keys.path().join("read.token");
    let fault_file = keys.path().join("fault.token");
    std::fs::write(&read_file, format!("{READ}\n")).unwrap();
    std::fs::write(&fault_file, format!("{FAULT}\n")).unwrap();
    let admin = free_port();
    let agent = bed
        .start_agent_with([
            "--admin-addr".to_owned(),
            admin.to_string(),
            "--admin-token-file".to_owned(),
            read_file.display().to_string(),
            "--admin-fault-token-file".to_owned(),
            fault_file.display().to_string(),
        ])
        .unwrap();

    // The read token reads.
    let out = sockmesh(admin, &read_file, &["status", "-o", "json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // ... and cannot inject a fault: the agent's reason, exit 1, nothing changed.
    let out = sockmesh(
        admin,
        &read_file,
        &["fault", "set", SERVICE, "--refuse-percent", "50"],
    );
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "sockmesh: the agent answered 403: fault injection needs the fault credential \
         (--admin-fault-token-file), or the admin unix socket\n"
    );
    assert_eq!(
        circuit(agent, SERVICE).unwrap()["fault_refuse_percent"],
        0.0
    );
    let metrics = agent.metrics_text().unwrap();
    assert_eq!(refused(&metrics, "scope"), 1);

    // No token or a wrong one: 401, counted.
    let reply = http_get_tcp(admin, "/status", std::time::Duration::from_secs(5)).unwrap();
    assert_eq!(reply.status, 401);
    let metrics = agent.metrics_text().unwrap();
    assert_eq!(refused(&metrics, "unauthenticated"), 1);

    // The fault token injects the fault, and reads.
    let out = sockmesh(
        admin,
        &fault_file,
        &["fault", "set", SERVICE, "--refuse-percent", "50"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        circuit(agent, SERVICE).unwrap()["fault_refuse_percent"],
        50.0
    );
    let out = sockmesh(admin, &fault_file, &["fault", "clear", SERVICE]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let metrics = agent.metrics_text().unwrap();
    assert_eq!(refused(&metrics, "scope"), 1);

    // No token in the agent's log.
    let log = agent.log();
    assert!(
        !log.contains(READ) && !log.contains(FAULT),
        "a token in the log:\n{log}"
    );
}
