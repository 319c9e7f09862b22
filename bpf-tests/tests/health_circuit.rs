//! The circuit breaker: every backend of a service stops answering (`sockmesh-agent
//! netfault` drops all SYNs to them: connects time out after the caller's 150 ms).
//!
//! - Once the window holds `min_requests` attempts with a success share below the minimum,
//!   the circuit opens: connects to the VIP then fail with ECONNREFUSED at once, in the
//!   kernel, counted `result="circuit_open"` (and never as backend failures). Their latency
//!   is printed, not asserted.
//! - The backends come back; after the cooldown the circuit is half-open (`/v1/circuits`,
//!   `sockmesh_circuit_state` 1) and admits a share of connects; enough successes close it,
//!   and every connect succeeds again.
//!
//! Bans are off (`max_banned_percent: 0`) so the circuit alone acts.

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::json;
use sockmesh_bpf_tests::health_admin::{bans_of, circuit, wait_circuit_field};
use sockmesh_bpf_tests::health_backend::SwitchBackends;
use sockmesh_bpf_tests::health_client::{median, percentile, Caller, Connects};
use sockmesh_bpf_tests::health_yaml::{health_mesh, HealthService};
use sockmesh_bpf_tests::kernel_tables::{wait_service_entry, KERNEL_WAIT};
use sockmesh_bpf_tests::{
    loopback_addrs, metric_value, sum_metric, wait_counter_settled, Faults, Netfault, ServiceYaml,
    TestBed,
};
use sockmesh_common::{SERVICE_CIRCUIT_OPEN, SERVICE_HALF_OPEN};

const SERVICE: &str = "fragile";
const CONNECTIONS: &str = "sockmesh_connections_total";
const CLIENT_TIMEOUT: Duration = Duration::from_millis(150);
/// Successful connects before the failures start (they count in the window too).
const HEALTHY: usize = 10;
/// Failures that open it: the success share falls below 0.5 at the 11th failure after 10
/// successes (min_requests 8 is met long before).
const TO_OPEN: usize = HEALTHY + 1;
/// Connects while open: all must be refused fast.
const OPEN_CONNECTS: usize = 300;

fn count(text: &str, result: &str) -> f64 {
    sum_metric(
        text,
        CONNECTIONS,
        &[("service", SERVICE), ("result", result)],
    ) + 0.0
}

fn state_gauge(text: &str) -> Option<f64> {
    metric_value(text, "sockmesh_circuit_state", &[("service", SERVICE)])
}

#[test]
fn all_backends_failing_opens_the_circuit_and_it_recovers_through_half_open() {
    let backends = loopback_addrs(2, 3, 18430);
    let vip: SocketAddr = "127.100.43.1:18431".parse().unwrap();
    let service = HealthService::new(
        ServiceYaml::new(SERVICE, vip, "round_robin").backends(&backends, &[1; 3]),
    )
    .with("outlier", "{max_banned_percent: 0}")
    .with(
        "circuit",
        "{min_success_ratio: 0.5, window: 5s, min_requests: 8, cooldown: 3s, \
         max_cooldown: 6s, half_open_admit_percent: 25, half_open_successes: 5}",
    );
    let _set = SwitchBackends::start(&backends).unwrap();
    let mut bed = TestBed::start("health-circuit", &health_mesh(&[service], &[])).unwrap();
    let mut caller = Caller::spawn("caller", bed.cgroup(), vip).unwrap();
    let pins = bed.bpffs().path().to_path_buf();

    let healthy = caller.connect(&Connects::new(HEALTHY)).unwrap();
    assert_eq!(healthy.ok_count(), HEALTHY, "{:#?}", healthy.failures());

    // Every backend goes silent: connects time out.
    let faults = Faults {
        drop_syn: 100.0,
        ..Faults::default()
    };
    let netfault = Netfault::start(bed.cgroup(), &backends, faults).unwrap();
    let failing = caller
        .connect(&Connects::new(TO_OPEN + 5).timeout(CLIENT_TIMEOUT))
        .unwrap();
    let timeouts = failing.results.iter().filter(|a| a.timed_out()).count();
    eprintln!(
        "failing phase: {} timed out, then {} refused",
        timeouts,
        failing.refused_count()
    );
    assert!(
        failing.results[..TO_OPEN].iter().all(|a| a.timed_out()),
        "the first {TO_OPEN} time out: {:#?}",
        failing.results
    );
    // One more may have been on its way while the decision reached the kernel.
    assert!(
        timeouts <= TO_OPEN + 1,
        "{timeouts} timeouts: {:#?}",
        failing.results
    );
    assert_eq!(timeouts + failing.refused_count(), TO_OPEN + 5);
    let opened =
        wait_circuit_field(bed.agent(), SERVICE, "state", &json!("open"), KERNEL_WAIT).unwrap();
    eprintln!("open: {opened}");
    // The engine has decided; the agent's main loop writes it into the kernel a moment later.
    wait_service_entry(&pins, vip, "circuit open", |e| {
        e.flags & SERVICE_CIRCUIT_OPEN != 0
    })
    .unwrap();
    assert_eq!(state_gauge(&bed.agent().metrics_text().unwrap()), Some(2.0));

    // Open: refused in the kernel, at once (a refusal, not the client's 150 ms timeout).
    // How fast is printed, not asserted: `cargo xtask bench` is where latency is measured.
    let open = caller
        .connect(&Connects::new(OPEN_CONNECTS).timeout(CLIENT_TIMEOUT))
        .unwrap();
    let us: Vec<f64> = open.results.iter().filter_map(|a| a.connect_us).collect();
    let (p50, p99, max) = (median(&us), percentile(&us, 99.0), percentile(&us, 100.0));
    eprintln!(
        "open: {} of {OPEN_CONNECTS} refused in {:.1} ms; connect() p50 {p50:.0} us, p99 \
         {p99:.0} us, max {max:.0} us",
        open.refused_count(),
        open.elapsed_ms
    );
    assert_eq!(
        open.refused_count(),
        OPEN_CONNECTS,
        "{:#?}",
        open.failures()
    );
    assert!(
        circuit(bed.agent(), SERVICE).unwrap()["state"] == "open",
        "still open after the fast refusals (the cooldown is 3 s)"
    );
    let refusals = (failing.refused_count() + OPEN_CONNECTS) as f64;
    let text = wait_counter_settled(bed.agent(), "circuit_open refusals", refusals, |t| {
        count(t, "circuit_open")
    })
    .unwrap();
    eprintln!(
        "metrics: circuit_open {}, timeout {}, refused {}",
        count(&text, "circuit_open"),
        count(&text, "timeout"),
        count(&text, "refused")
    );
    assert_eq!(count(&text, "circuit_open"), refusals);
    assert_eq!(
        count(&text, "timeout"),
        timeouts as f64,
        "refusals are not backend failures"
    );
    assert_eq!(count(&text, "refused"), 0.0);

    // The backends return; after the cooldown the circuit is half-open and stays so until
    // traffic shows the service healthy.
    let dropped = netfault.stop().unwrap();
    eprintln!("{dropped}");
    let half = wait_circuit_field(
        bed.agent(),
        SERVICE,
        "state",
        &json!("half_open"),
        KERNEL_WAIT,
    )
    .unwrap();
    eprintln!("half-open: {half}");
    wait_service_entry(&pins, vip, "half-open", |e| {
        e.flags & SERVICE_HALF_OPEN != 0 && e.flags & SERVICE_CIRCUIT_OPEN == 0
    })
    .unwrap();
    assert_eq!(half["admit_percent"], 25.0, "{half}");
    assert_eq!(state_gauge(&bed.agent().metrics_text().unwrap()), Some(1.0));

    let recovery = caller
        .connect(
            &Connects::new(200)
                .rate(50.0)
                .timeout(Duration::from_secs(1)),
        )
        .unwrap();
    // Enough half-open successes close it (the engine decides, then the kernel follows).
    let closed =
        wait_circuit_field(bed.agent(), SERVICE, "state", &json!("closed"), KERNEL_WAIT).unwrap();
    wait_service_entry(&pins, vip, "closed", |e| {
        e.flags & (SERVICE_CIRCUIT_OPEN | SERVICE_HALF_OPEN) == 0
    })
    .unwrap();
    // Where the refusals stop: everything after the last one succeeded.
    let last_refusal = recovery.results.iter().rposition(|a| !a.ok());
    let admitted_half_open = recovery.results[..last_refusal.map_or(0, |i| i + 1)]
        .iter()
        .filter(|a| a.ok())
        .count();
    eprintln!(
        "recovery: {} ok, {} refused (half-open admitted {admitted_half_open} before the last \
         refusal at #{last_refusal:?}); now {closed}",
        recovery.ok_count(),
        recovery.refused_count(),
    );
    assert_eq!(closed["state"], "closed", "{closed}");
    assert_eq!(
        recovery.ok_count() + recovery.refused_count(),
        200,
        "{:#?}",
        recovery.failures()
    );
    assert!(
        recovery.refused_count() > 0,
        "half-open admits only a share: some connects were refused"
    );
    let after = caller.connect(&Connects::new(50)).unwrap();
    assert_eq!(
        after.ok_count(),
        50,
        "closed again: every connect succeeds: {:#?}",
        after.failures()
    );
    bed.agent()
        .wait_metrics("sockmesh_circuit_state 0", KERNEL_WAIT, |t| {
            state_gauge(t) == Some(0.0)
        })
        .unwrap();
    assert!(
        bans_of(bed.agent(), SERVICE).unwrap().is_empty(),
        "bans are off"
    );
}
