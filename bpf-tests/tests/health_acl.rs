//! Access control: a service that lists `allowed_callers: [front]` is reachable from
//! the `front` workload's cgroup only. A process in another workload's cgroup (`back`), and one
//! in no workload at all, get ECONNREFUSED from connect() at once, counted `result="denied"`
//! under their caller label; no backend ever sees them. Another service without a list stays
//! open to everyone.

use std::net::SocketAddr;

use sockmesh_bpf_tests::health_backend::SwitchBackends;
use sockmesh_bpf_tests::health_client::{percentile, Caller, Connects};
use sockmesh_bpf_tests::health_yaml::{health_mesh, HealthService, HealthWorkload};
use sockmesh_bpf_tests::{
    loopback_addrs, sum_metric, wait_counter_settled, wait_workloads, ServiceYaml, TestBed,
    SIGNAL_TIMEOUT,
};

const CONNECTIONS: &str = "sockmesh_connections_total";
const TRIES: usize = 20;

#[test]
fn only_allowed_callers_connect_and_the_rest_are_denied_at_connect() {
    let backends = loopback_addrs(2, 3, 18460);
    let open_backend = loopback_addrs(5, 1, 18460);
    let vip: SocketAddr = "127.100.46.1:18461".parse().unwrap();
    let open_vip: SocketAddr = "127.100.46.2:18461".parse().unwrap();
    let set = SwitchBackends::start(&[backends.clone(), open_backend.clone()].concat()).unwrap();
    let mut bed = TestBed::new("health-acl", "version: 1\nservices: []\n").unwrap();
    let front = bed.cgroup().child("front").unwrap();
    let back = bed.cgroup().child("back").unwrap();
    let guarded = HealthService::new(
        ServiceYaml::new("guarded", vip, "round_robin").backends(&backends, &[1; 3]),
    )
    .with("allowed_callers", "[front]");
    let open = HealthService::new(
        ServiceYaml::new("open", open_vip, "round_robin").backends(&open_backend, &[1]),
    );
    let workloads = [
        HealthWorkload::new("front", &front.relative_path().unwrap(), None),
        HealthWorkload::new("back", &back.relative_path().unwrap(), None),
    ];
    bed.write_config(&health_mesh(&[guarded, open], &workloads))
        .unwrap();
    bed.start_agent().unwrap();
    // The caller map (cgroup id -> workload) is written in the same refresh that resolves them.
    wait_workloads(bed.agent(), &["front", "back"], SIGNAL_TIMEOUT).unwrap();

    let mut from_front = Caller::spawn("front", &front, vip).unwrap();
    let mut from_back = Caller::spawn("back", &back, vip).unwrap();
    let mut from_nowhere = Caller::spawn("unknown", bed.cgroup(), vip).unwrap();
    let mut back_to_open = Caller::spawn("back-open", &back, open_vip).unwrap();

    let allowed = from_front.connect(&Connects::new(TRIES)).unwrap();
    let denied = from_back.connect(&Connects::new(TRIES)).unwrap();
    let stranger = from_nowhere.connect(&Connects::new(TRIES)).unwrap();
    let elsewhere = back_to_open.connect(&Connects::new(TRIES)).unwrap();
    let slow = |b: &sockmesh_bpf_tests::health_client::Batch| {
        let us: Vec<f64> = b.results.iter().filter_map(|a| a.connect_us).collect();
        percentile(&us, 100.0)
    };
    eprintln!(
        "front: {} ok; back: {} refused (slowest {:.0} us); unknown: {} refused; back -> open: {} ok",
        allowed.ok_count(),
        denied.refused_count(),
        slow(&denied),
        stranger.refused_count(),
        elsewhere.ok_count()
    );
    assert_eq!(allowed.ok_count(), TRIES, "{:#?}", allowed.failures());
    assert_eq!(denied.refused_count(), TRIES, "{:#?}", denied.results);
    assert_eq!(stranger.refused_count(), TRIES, "{:#?}", stranger.results);
    assert_eq!(elsewhere.ok_count(), TRIES, "{:#?}", elsewhere.failures());
    // Ground truth: the guarded backends accepted the front's connects and nothing else.
    let guarded_accepts: usize = (0..3).map(|i| set.accepts(i)).sum();
    assert_eq!(
        guarded_accepts,
        TRIES,
        "accepts {:?}",
        (0..3).map(|i| set.accepts(i))
    );
    assert_eq!(set.accepts(3), TRIES);

    let text = wait_counter_settled(bed.agent(), "denied connects", (2 * TRIES) as f64, |t| {
        sum_metric(
            t,
            CONNECTIONS,
            &[("service", "guarded"), ("result", "denied")],
        )
    })
    .unwrap();
    let count = |caller: &str, result: &str| {
        // Summed over the backend label (refusals carry none; successes one per backend).
        sum_metric(
            &text,
            CONNECTIONS,
            &[
                ("service", "guarded"),
                ("caller", caller),
                ("result", result),
            ],
        ) + 0.0
    };
    eprintln!(
        "metrics: front ok {}, back denied {}, unknown denied {}",
        count("front", "ok"),
        count("back", "denied"),
        count("unknown", "denied")
    );
    assert_eq!(count("front", "ok"), TRIES as f64);
    assert_eq!(count("front", "denied"), 0.0);
    assert_eq!(count("back", "denied"), TRIES as f64);
    assert_eq!(count("unknown", "denied"), TRIES as f64);
    assert_eq!(
        sum_metric(
            &text,
            CONNECTIONS,
            &[("service", "open"), ("result", "denied")]
        ),
        0.0
    );
    // Denials are not backend failures.
    assert_eq!(sum_metric(&text, "sockmesh_backend_bans_total", &[]), 0.0);
}
