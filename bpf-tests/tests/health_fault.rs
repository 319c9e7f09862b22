//! Fault injection: `POST /v1/fault` switches a share of a service's connects to an
//! immediate refusal at runtime. 100% refuses every connect (ECONNREFUSED, counted
//! `result="fault"`), 50% about half, 0% none again. Injected faults are the mesh's own
//! refusals: no backend gets banned and the circuit stays closed, however many there are.

use std::net::SocketAddr;

use serde_json::json;
use sockmesh_bpf_tests::health_admin::{bans, circuit, post_fault, wait_circuit_field};
use sockmesh_bpf_tests::health_backend::SwitchBackends;
use sockmesh_bpf_tests::health_client::{Caller, Connects};
use sockmesh_bpf_tests::health_yaml::{health_mesh, HealthService};
use sockmesh_bpf_tests::kernel_tables::{wait_service_entry, KERNEL_WAIT};
use sockmesh_bpf_tests::{loopback_addrs, sum_metric, wait_counter_settled, ServiceYaml, TestBed};

const SERVICE: &str = "chaos";
const CONNECTIONS: &str = "sockmesh_connections_total";
/// `fault_refuse_ppm` of a share in percent.
fn ppm(percent: u32) -> u32 {
    percent * 10_000
}

#[test]
fn injected_faults_refuse_the_configured_share_and_are_never_backend_failures() {
    let backends = loopback_addrs(2, 3, 18470);
    let vip: SocketAddr = "127.100.47.1:18471".parse().unwrap();
    let service = ServiceYaml::new(SERVICE, vip, "round_robin").backends(&backends, &[1; 3]);
    let set = SwitchBackends::start(&backends).unwrap();
    let mut bed = TestBed::start(
        "health-fault",
        &health_mesh(&[HealthService::new(service)], &[]),
    )
    .unwrap();
    let mut caller = Caller::spawn("caller", bed.cgroup(), vip).unwrap();
    let pins = bed.bpffs().path().to_path_buf();

    let before = caller.connect(&Connects::new(30)).unwrap();
    assert_eq!(before.ok_count(), 30, "{:#?}", before.failures());

    // Bad requests are refused and change nothing.
    let agent = bed.agent();
    let unknown = post_fault(agent, "no-such-service", 100.0).unwrap();
    assert_eq!(unknown.status, 404, "{}", unknown.body);
    let out_of_range = post_fault(agent, SERVICE, 150.0).unwrap();
    assert_eq!(out_of_range.status, 400, "{}", out_of_range.body);

    // 100%: every connect refused at once.
    let set_all = post_fault(agent, SERVICE, 100.0).unwrap();
    assert_eq!(set_all.status, 200, "{}", set_all.body);
    wait_circuit_field(
        agent,
        SERVICE,
        "fault_refuse_percent",
        &json!(100.0),
        KERNEL_WAIT,
    )
    .unwrap();
    // The engine has decided; the agent's main loop writes it into the kernel a moment later.
    wait_service_entry(&pins, vip, "fault 100%", |e| e.fault_refuse_ppm == ppm(100)).unwrap();
    let accepts_before = set.accepts(0) + set.accepts(1) + set.accepts(2);
    let all = caller.connect(&Connects::new(50)).unwrap();
    let accepts_after = set.accepts(0) + set.accepts(1) + set.accepts(2);
    let slowest = all
        .results
        .iter()
        .filter_map(|a| a.connect_us)
        .fold(0.0, f64::max);
    eprintln!(
        "fault 100%: {} of 50 refused, slowest refusal {slowest:.0} us",
        all.refused_count()
    );
    assert_eq!(all.refused_count(), 50, "{:#?}", all.results);
    assert_eq!(
        accepts_after, accepts_before,
        "no connect reached a backend"
    );

    // 50%: about half (binomial, n = 400: sd 10; the bounds are 6 sd wide).
    let set_half = post_fault(agent, SERVICE, 50.0).unwrap();
    assert_eq!(set_half.status, 200, "{}", set_half.body);
    wait_circuit_field(
        agent,
        SERVICE,
        "fault_refuse_percent",
        &json!(50.0),
        KERNEL_WAIT,
    )
    .unwrap();
    // The engine has decided; the agent's main loop writes it into the kernel a moment later.
    wait_service_entry(&pins, vip, "fault 50%", |e| e.fault_refuse_ppm == ppm(50)).unwrap();
    let half = caller.connect(&Connects::new(400)).unwrap();
    eprintln!(
        "fault 50%: {} of 400 refused, {} ok",
        half.refused_count(),
        half.ok_count()
    );
    assert_eq!(
        half.refused_count() + half.ok_count(),
        400,
        "{:#?}",
        half.failures()
    );
    assert!(
        (140..=260).contains(&half.refused_count()),
        "50% fault refused {} of 400",
        half.refused_count()
    );

    // Faults are not backend failures: nothing banned, circuit closed.
    let agent = bed.agent();
    assert_eq!(bans(agent).unwrap(), Vec::<serde_json::Value>::new());
    let row = circuit(agent, SERVICE).unwrap();
    assert_eq!(row["state"], "closed", "{row}");

    // 0%: back to normal.
    let set_none = post_fault(agent, SERVICE, 0.0).unwrap();
    assert_eq!(set_none.status, 200, "{}", set_none.body);
    wait_circuit_field(
        agent,
        SERVICE,
        "fault_refuse_percent",
        &json!(0.0),
        KERNEL_WAIT,
    )
    .unwrap();
    // The engine has decided; the agent's main loop writes it into the kernel a moment later.
    wait_service_entry(&pins, vip, "fault 0%", |e| e.fault_refuse_ppm == ppm(0)).unwrap();
    let after = caller.connect(&Connects::new(50)).unwrap();
    assert_eq!(after.ok_count(), 50, "{:#?}", after.failures());

    // The agent counted each refusal as `fault`, and no backend failure at all.
    let refused = (all.refused_count() + half.refused_count()) as f64;
    let text = wait_counter_settled(bed.agent(), "fault refusals", refused, |t| {
        sum_metric(t, CONNECTIONS, &[("service", SERVICE), ("result", "fault")])
    })
    .unwrap();
    let count = |result: &str| {
        // `+ 0.0`: an empty sum is -0.0, which prints oddly.
        sum_metric(
            &text,
            CONNECTIONS,
            &[("service", SERVICE), ("result", result)],
        ) + 0.0
    };
    eprintln!(
        "metrics: fault {}, ok {}, refused {}, timeout {}",
        count("fault"),
        count("ok"),
        count("refused"),
        count("timeout")
    );
    assert_eq!(count("fault"), refused);
    let oks = (before.ok_count() + half.ok_count() + after.ok_count()) as f64;
    assert_eq!(count("ok"), oks);
    for result in [
        "refused",
        "timeout",
        "unreachable",
        "circuit_open",
        "limited",
    ] {
        assert_eq!(count(result), 0.0, "result={result}");
    }
    assert_eq!(
        sum_metric(&text, "sockmesh_backend_bans_total", &[]),
        0.0,
        "no bans"
    );
}
