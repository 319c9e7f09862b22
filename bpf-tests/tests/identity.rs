//! Caller identity in the kernel: `allowed_callers` written the way Kubernetes users write it
//! (selectors on namespace, service account and labels), compiled by one agent on a file
//! config into the kernel's access list, and checked with real TCP connects from seven
//! places:
//!
//! | caller (cgroup) | `sockmesh.io/namespace` | `sockmesh.io/service-account` | `app` | admitted by |
//! | --- | --- | --- | --- | --- |
//! | `shop-front` | shop | default | frontend | `{namespace: shop, labels: {app: frontend}}` |
//! | `ops-tool` | ops | tooling | cli | `{namespace: ops}` |
//! | `jobs-nightly` | jobs | batch | report | `{service_account: batch}` |
//! | `shop-web` | shop | web | web | nothing: denied |
//! | `staging-front` | staging | default | frontend | nothing (right label, wrong namespace): denied |
//! | `jobs-adhoc` | jobs | default | report | nothing (right namespace for no rule): denied |
//! | the test's cgroup | not a workload | | | nothing: denied |
//!
//! Admitted callers reach the backends (which count their accepts); the others get
//! ECONNREFUSED from connect() at once, counted `result="denied"` under their caller, and no
//! backend ever sees them. A second, open service routes by the same identity labels
//! (`routes: match: {sockmesh.io/service-account: batch}`): the batch caller lands on the
//! batch backend only, the others on the main one.

use std::net::SocketAddr;

use sockmesh_bpf_tests::health_backend::SwitchBackends;
use sockmesh_bpf_tests::health_client::{Caller, Connects};
use sockmesh_bpf_tests::route_mesh::{route_mesh, RouteBackend, RouteService, RouteWorkload};
use sockmesh_bpf_tests::{
    loopback_addrs, sum_metric, wait_counter_settled, wait_workloads, Cgroup2, TestBed,
    SIGNAL_TIMEOUT,
};

const CONNECTIONS: &str = "sockmesh_connections_total";
const TRIES: usize = 20;
const NAMESPACE: &str = "sockmesh.io/namespace";
const ACCOUNT: &str = "sockmesh.io/service-account";
const GUARDED: &str = "identity";
const ROUTED: &str = "identity-routed";

/// (workload, namespace, service account, app, admitted to the guarded service).
const CALLERS: [(&str, &str, &str, &str, bool); 6] = [
    ("shop-front", "shop", "default", "frontend", true),
    ("ops-tool", "ops", "tooling", "cli", true),
    ("jobs-nightly", "jobs", "batch", "report", true),
    ("shop-web", "shop", "web", "web", false),
    ("staging-front", "staging", "default", "frontend", false),
    ("jobs-adhoc", "jobs", "default", "report", false),
];

#[test]
fn selectors_admit_by_namespace_account_and_labels_and_deny_the_rest_at_connect() {
    let guarded_backends = loopback_addrs(2, 2, 18240);
    let routed_backends = loopback_addrs(4, 2, 18242);
    let vip: SocketAddr = "127.100.15.1:18241".parse().unwrap();
    let routed_vip: SocketAddr = "127.100.15.2:18243".parse().unwrap();
    let set = SwitchBackends::start(&[guarded_backends.clone(), routed_backends.clone()].concat())
        .unwrap();
    let mut bed = TestBed::new("identity", "version: 1\nservices: []\n").unwrap();

    let cgroups: Vec<Cgroup2> = CALLERS
        .iter()
        .map(|c| bed.cgroup().child(c.0).unwrap())
        .collect();
    let workloads: Vec<RouteWorkload> = CALLERS
        .iter()
        .zip(&cgroups)
        .map(|((name, ns, sa, app, _), cg)| {
            RouteWorkload::new(name, &cg.relative_path().unwrap())
                .label(NAMESPACE, ns)
                .label(ACCOUNT, sa)
                .label("app", app)
        })
        .collect();
    let guarded = RouteService::new(
        GUARDED,
        vip,
        "round_robin",
        guarded_backends
            .iter()
            .map(|a| RouteBackend::new(*a))
            .collect(),
    )
    .with(
        "allowed_callers",
        "[{namespace: shop, labels: {app: frontend}}, {namespace: ops}, {service_account: batch}]",
    );
    let routed = RouteService::new(
        ROUTED,
        routed_vip,
        "round_robin",
        vec![
            RouteBackend::new(routed_backends[0]).label("pool", "main"),
            RouteBackend::new(routed_backends[1]).label("pool", "batch"),
        ],
    )
    .with(
        "routes",
        &format!("[{{match: {{{ACCOUNT}: batch}}, to: {{pool: batch}}, fallback: none}}, {{to: {{pool: main}}}}]"),
    );
    let yaml = route_mesh(&[guarded, routed], &workloads);
    // The config the agent reads is the model's, and means what this test says it means.
    let cfg = sockmesh_model::parse_config(&yaml).unwrap();
    let admitted: Vec<&str> = cfg.services[0]
        .admitted_workloads(&cfg.workloads)
        .unwrap()
        .iter()
        .map(|&i| cfg.workloads[i].name.as_str())
        .collect();
    let expected: Vec<&str> = CALLERS.iter().filter(|c| c.4).map(|c| c.0).collect();
    assert_eq!(admitted, expected, "{yaml}");
    bed.write_config(&yaml).unwrap();
    bed.start_agent().unwrap();
    let names: Vec<&str> = CALLERS.iter().map(|c| c.0).collect();
    // The caller map (cgroup id -> workload) is written in the refresh that resolves them.
    wait_workloads(bed.agent(), &names, SIGNAL_TIMEOUT).unwrap();

    // Every caller dials the guarded VIP, then the routed one.
    let mut outcomes = Vec::new();
    for ((name, _, _, _, admit), cg) in CALLERS.iter().zip(&cgroups) {
        let mut caller = Caller::spawn(name, cg, vip).unwrap();
        let batch = caller.connect(&Connects::new(TRIES)).unwrap();
        outcomes.push((*name, *admit, batch.ok_count(), batch.refused_count()));
        if *admit {
            assert_eq!(batch.ok_count(), TRIES, "{name}: {:#?}", batch.failures());
        } else {
            assert_eq!(batch.refused_count(), TRIES, "{name}: {:#?}", batch.results);
        }
    }
    let mut stranger = Caller::spawn("unknown", bed.cgroup(), vip).unwrap();
    let strange = stranger.connect(&Connects::new(TRIES)).unwrap();
    eprintln!(
        "guarded: (caller, admitted, ok, refused) {outcomes:?}; not a workload: {} refused",
        strange.refused_count()
    );
    assert_eq!(strange.refused_count(), TRIES, "{:#?}", strange.results);

    // Ground truth: the guarded backends accepted the three admitted callers' connects and
    // nothing else.
    let admitted_count = CALLERS.iter().filter(|c| c.4).count();
    let guarded_accepts: usize = (0..2).map(|i| set.accepts(i)).sum();
    assert_eq!(guarded_accepts, admitted_count * TRIES);

    // Routes read the same identity labels: batch to its pool, everyone else to main.
    let batch_at = CALLERS.iter().position(|c| c.2 == "batch").unwrap();
    for (i, ((name, ..), cg)) in CALLERS.iter().zip(&cgroups).enumerate() {
        let before = (set.accepts(2), set.accepts(3));
        let mut caller = Caller::spawn(name, cg, routed_vip).unwrap();
        let batch = caller.connect(&Connects::new(TRIES)).unwrap();
        assert_eq!(batch.ok_count(), TRIES, "{name}: {:#?}", batch.failures());
        let got = (set.accepts(2) - before.0, set.accepts(3) - before.1);
        let want = if i == batch_at {
            (0, TRIES)
        } else {
            (TRIES, 0)
        };
        assert_eq!(got, want, "{name}: (main, batch) accepts");
    }

    // The agent's count: every refusal is `denied`, under the caller that made it.
    wait_counter_settled(
        bed.agent(),
        "admitted connects",
        (admitted_count * TRIES) as f64,
        |t| sum_metric(t, CONNECTIONS, &[("service", GUARDED), ("result", "ok")]),
    )
    .unwrap();
    let denied_callers = CALLERS.iter().filter(|c| !c.4).count() + 1;
    let text = wait_counter_settled(
        bed.agent(),
        "denied connects",
        (denied_callers * TRIES) as f64,
        |t| {
            sum_metric(
                t,
                CONNECTIONS,
                &[("service", GUARDED), ("result", "denied")],
            )
        },
    )
    .unwrap();
    let count = |caller: &str, result: &str| {
        sum_metric(
            &text,
            CONNECTIONS,
            &[("service", GUARDED), ("caller", caller), ("result", result)],
        )
    };
    for (name, _, _, _, admit) in CALLERS {
        // `+ 0.0`: a sum over no series is -0.0, which prints oddly.
        let (ok, denied) = (count(name, "ok") + 0.0, count(name, "denied") + 0.0);
        eprintln!("metrics: {name} ok {ok}, denied {denied}");
        if admit {
            assert_eq!((ok, denied), (TRIES as f64, 0.0), "{name}");
        } else {
            assert_eq!((ok, denied), (0.0, TRIES as f64), "{name}");
        }
    }
    assert_eq!(count("unknown", "denied"), TRIES as f64);
    assert_eq!(
        sum_metric(
            &text,
            CONNECTIONS,
            &[("service", ROUTED), ("result", "denied")]
        ),
        0.0
    );
    // Denials are not backend failures.
    assert_eq!(sum_metric(&text, "sockmesh_backend_bans_total", &[]), 0.0);
}
