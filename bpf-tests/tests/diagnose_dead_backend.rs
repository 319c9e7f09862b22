//! Diagnosis of a dead backend: one of three backends has no listener, so the kernel
//! refuses every connect routed to it. `/v1/diagnose` ranks `backends_failing` first with
//! evidence naming that backend, whether the health engine may not ban it
//! (`max_banned_percent: 0`: it keeps getting a third of the connects) or bans it after five
//! failures (the default policy). `/v1/lines` counts the caller's connects exactly, `/v1/top`
//! ranks the burning service above a calm one, and the CLI shows the same.

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::Value;
use sockmesh_bpf_tests::diag_admin::{evidence, ranked, wait_clear_diagnosis, wait_line};
use sockmesh_bpf_tests::diag_yaml::{diag_mesh, DiagService};
use sockmesh_bpf_tests::{
    loopback_addrs, sockmesh_cli, sockmesh_cli_json, BackendMode, ConnectClient, ServiceYaml,
    TcpBackendSet, TestBed,
};

/// Connects through the VIP: a third go to the dead backend under round robin.
const CONNECTS: usize = 300;
const DIAGNOSIS_TIMEOUT: Duration = Duration::from_secs(20);

/// Starts backends on every address but `dead`, runs the clients, and returns the bed, the
/// live backends (kept alive for the caller) and the web client's report.
fn run(
    name: &str,
    backends: &[SocketAddr],
    dead: SocketAddr,
    vip: SocketAddr,
    web: DiagService,
    calm_vip: Option<SocketAddr>,
) -> (TestBed, TcpBackendSet, sockmesh_bpf_tests::ClientReport) {
    let live: Vec<SocketAddr> = backends.iter().copied().filter(|b| *b != dead).collect();
    let set = TcpBackendSet::start(&live, BackendMode::Identify).unwrap();
    let mut services = vec![web];
    if let Some(calm_vip) = calm_vip {
        let calm = ServiceYaml::new("calm", calm_vip, "round_robin").backend(live[0], 1);
        services.push(DiagService::new(calm));
    }
    let bed = TestBed::start(name, &diag_mesh(&services, &[])).unwrap();
    let report = ConnectClient::new(vip, CONNECTS)
        .interval(Duration::from_millis(5))
        .timeout(Duration::from_secs(2))
        .run(Some(bed.cgroup()), None)
        .unwrap();
    if let Some(calm_vip) = calm_vip {
        ConnectClient::new(calm_vip, 20)
            .run(Some(bed.cgroup()), None)
            .unwrap()
            .assert_all_ok("calm");
    }
    (bed, set, report)
}

fn show(d: &Value) {
    eprintln!("diagnosis: {d:#}");
}

#[test]
fn a_dead_backend_that_keeps_traffic_ranks_backends_failing_first() {
    let backends = loopback_addrs(2, 3, 18500);
    let dead = backends[1];
    let vip: SocketAddr = "127.100.50.1:18501".parse().unwrap();
    let calm_vip: SocketAddr = "127.100.50.2:18502".parse().unwrap();
    let web = DiagService::new(
        ServiceYaml::new("web", vip, "round_robin").backends(&backends, &[1, 1, 1]),
    )
    .with("outlier", "{max_banned_percent: 0}");
    let (mut bed, _set, report) = run("diag-dead", &backends, dead, vip, web, Some(calm_vip));
    let refused = report.failures().len() as u64;
    let ok = report.results.len() as u64 - refused;
    eprintln!(
        "client: {ok} ok, {refused} failed of {}",
        report.results.len()
    );
    assert_eq!(
        refused,
        CONNECTS as u64 / 3,
        "round robin: every third connect is refused"
    );

    let agent = bed.agent();
    let d = wait_clear_diagnosis(agent, "web", DIAGNOSIS_TIMEOUT, || true).unwrap();
    show(&d);
    let causes = ranked(&d);
    assert_eq!(causes[0].0, "backends_failing", "{causes:?}");
    assert!(causes[0].1 >= 0.9, "{causes:?}");
    assert!(
        causes[1..].iter().all(|(_, s)| *s < 0.2),
        "nothing else is wrong: {causes:?}"
    );
    let why = evidence(&d, "backends_failing");
    assert!(
        why[0].starts_with(&format!("{dead}: {refused} of {refused} connects failed")),
        "{why:?}"
    );
    assert!(d["summary"].as_str().unwrap().contains(&dead.to_string()));
    assert!(
        d["slos"][0]["5m"].as_f64().unwrap() > 14.4,
        "availability burns"
    );

    // The line view counts the caller's connects exactly (the test cgroup is no configured
    // workload, so the caller is `unknown`).
    let line = wait_line(
        agent,
        "web",
        "unknown",
        ok,
        refused,
        Duration::from_secs(10),
    )
    .unwrap();
    assert_eq!(line["previous"]["ok"], 0, "{line}");
    assert!(line["last"]["handshake_mean_ms"].as_f64().unwrap() > 0.0);

    // top: the burning service above the calm one.
    let top = agent.get_json("/v1/top").unwrap();
    eprintln!("top: {top:#}");
    assert_eq!(top[0]["service"], "web");
    assert_eq!(top[0]["rank"], 1);
    assert_eq!(top[0]["failed"]["last"], refused);
    assert_eq!(top[0]["failure_growth"], refused);
    assert!(top[0]["burn_1h"].as_f64().unwrap() > 1.0);
    assert_eq!(top[1]["service"], "calm");
    assert_eq!(top[1]["burn_1h"], 0.0);

    // The CLI: ranked causes in text, the agent's document with -o json.
    let out = sockmesh_cli(agent, &["diagnose", "web"]).unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    eprintln!("sockmesh diagnose web:\n{text}");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.starts_with("web: most likely backends_failing"),
        "{text}"
    );
    assert!(text.contains("\n1. backends_failing   score "), "{text}");
    assert!(text.contains(&format!("   - {dead}: ")), "{text}");
    let json = sockmesh_cli_json(agent, &["diagnose", "web"]).unwrap();
    assert_eq!(json["causes"][0]["cause"], "backends_failing");
    let top_text = sockmesh_cli(agent, &["top"]).unwrap();
    let top_text = String::from_utf8_lossy(&top_text.stdout).into_owned();
    eprintln!("sockmesh top:\n{top_text}");
    assert!(
        top_text.lines().nth(1).unwrap().starts_with("1      web "),
        "{top_text}"
    );
    let lines = sockmesh_cli(agent, &["lines"]).unwrap();
    let lines = String::from_utf8_lossy(&lines.stdout).into_owned();
    eprintln!("sockmesh lines:\n{lines}");
    assert!(lines.contains("\nweb       unknown   "), "{lines}");
    let unknown = sockmesh_cli(agent, &["diagnose", "nope"]).unwrap();
    assert_eq!(unknown.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&unknown.stderr),
        "sockmesh: unknown service nope\n"
    );
}

#[test]
fn a_banned_dead_backend_ranks_backends_failing_first() {
    let backends = loopback_addrs(2, 3, 18505);
    let dead = backends[2];
    let vip: SocketAddr = "127.100.50.3:18506".parse().unwrap();
    let web = DiagService::new(
        ServiceYaml::new("web", vip, "round_robin").backends(&backends, &[1, 1, 1]),
    );
    let (mut bed, _set, report) = run("diag-banned", &backends, dead, vip, web, None);
    let failed = report.failures().len();
    eprintln!("client: {failed} of {} failed", report.results.len());
    assert!(
        (5..CONNECTS / 3).contains(&failed),
        "banned after 5 failures, then out of the table (probes fail): {failed}"
    );

    let agent = bed.agent();
    let d = wait_clear_diagnosis(agent, "web", DIAGNOSIS_TIMEOUT, || true).unwrap();
    show(&d);
    let causes = ranked(&d);
    assert_eq!(causes[0].0, "backends_failing", "{causes:?}");
    let why = evidence(&d, "backends_failing");
    assert!(why[0].starts_with(&format!("{dead}: ")), "{why:?}");
    assert!(
        why[0].contains("banned (consecutive_failures)")
            || why[0].contains("probing (consecutive_failures)"),
        "{why:?}"
    );
    assert!(causes[1..].iter().all(|(_, s)| *s < 0.2), "{causes:?}");
}
