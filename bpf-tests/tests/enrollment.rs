//! Enrollment, "non-enrolled pods are never routed; the connect hook checks enrollment in the
//! kernel": with `enrollment: workloads`, a caller in a workload's cgroup (or a cgroup below
//! it, as a container's cgroup is below its pod's) is routed to the backends, and a caller
//! elsewhere under the agent's cgroup dials the VIP address itself. Here a stand-in listener
//! bound on the VIP (127.100.77.1, a loopback address) answers those connects, so the test
//! sees both sides: the backends' and the stand-in's accept counters, the clients' view, and
//! the kernel's count of untouched connects (`sockmesh_unenrolled_connects_total`). Then
//! `enrollment: all` (the default), applied live, routes the same caller.

use std::net::SocketAddr;

use sockmesh_bpf_tests::route_mesh::{route_mesh, RouteBackend, RouteService, RouteWorkload};
use sockmesh_bpf_tests::{
    counts_by_backend, loopback_addrs, sum_metric, wait_workloads, BackendMode, Cgroup2,
    ClientReport, ConnectClient, TcpBackendSet, TestBed, SIGNAL_TIMEOUT,
};

const SERVICE: &str = "pay";
const CONNECTS: usize = 200;
const UNENROLLED: &str = "sockmesh_unenrolled_connects_total";
const CONNECTIONS: &str = "sockmesh_connections_total";

fn mesh(vip: SocketAddr, addrs: &[SocketAddr], app: &Cgroup2, enrollment: &str) -> String {
    let backends = addrs.iter().map(|a| RouteBackend::new(*a)).collect();
    let service = RouteService::new(SERVICE, vip, "round_robin", backends);
    let workload = RouteWorkload::new("app", &app.relative_path().unwrap());
    format!(
        "{}enrollment: {enrollment}\n",
        route_mesh(&[service], &[workload])
    )
}

fn run(vip: SocketAddr, cgroup: &Cgroup2) -> ClientReport {
    ConnectClient::new(vip, CONNECTS)
        .run(Some(cgroup), None)
        .unwrap()
}

#[test]
fn only_enrolled_callers_are_routed() {
    let addrs = loopback_addrs(2, 2, 18770);
    let vip: SocketAddr = "127.100.77.1:18771".parse().unwrap();
    let backends = TcpBackendSet::start(&addrs, BackendMode::Identify).unwrap();
    let stand_in = TcpBackendSet::start(&[vip], BackendMode::Identify).unwrap();
    let mut bed = TestBed::new("enrollment", "version: 1\nservices: []\n").unwrap();
    let app = bed.cgroup().child("app").unwrap();
    let container = app.child("container").unwrap();
    let other = bed.cgroup().child("other").unwrap();
    bed.write_config(&mesh(vip, &addrs, &app, "workloads"))
        .unwrap();
    bed.start_agent().unwrap();
    wait_workloads(bed.agent(), &["app"], SIGNAL_TIMEOUT).unwrap();

    let to_backends = |r: &ClientReport| counts_by_backend(&r.backend_counts(), &addrs);
    let from_app = run(vip, &app);
    let from_container = run(vip, &container);
    let from_other = run(vip, &other);
    for (who, r) in [
        ("app", &from_app),
        ("app/container", &from_container),
        ("other", &from_other),
    ] {
        r.assert_all_ok(who);
        assert!(
            r.results
                .iter()
                .all(|c| c.peer.as_deref() == Some("127.100.77.1:18771")),
            "{who}: the peer is the VIP (getpeername for routed sockets, the stand-in itself \
             for the others)"
        );
    }
    eprintln!(
        "enrollment workloads: app {:?}, app/container {:?} (backends), other {:?} \
         (stand-in on the VIP); backend accepts {:?}, stand-in accepts {}",
        to_backends(&from_app),
        to_backends(&from_container),
        from_other.backend_counts(),
        backends.accepts(),
        stand_in.total_accepts()
    );
    for (who, r) in [("app", &from_app), ("app/container", &from_container)] {
        assert_eq!(
            to_backends(r),
            [CONNECTS as u64 / 2, CONNECTS as u64 / 2],
            "{who}: an enrolled caller is routed round robin over the backends"
        );
    }
    assert_eq!(
        from_other.backend_counts().get(&vip.to_string()).copied(),
        Some(CONNECTS as u64),
        "a caller in no workload reaches the VIP address untouched"
    );
    assert_eq!(backends.total_accepts(), 2 * CONNECTS as u64);
    assert_eq!(stand_in.total_accepts(), CONNECTS as u64);

    let text = bed
        .agent()
        .wait_metrics(
            "unenrolled connects counted, routed ones observed",
            SIGNAL_TIMEOUT,
            |t| {
                sum_metric(t, UNENROLLED, &[]) >= CONNECTS as f64
                    && sum_metric(t, CONNECTIONS, &[("service", SERVICE)]) >= 2.0 * CONNECTS as f64
            },
        )
        .unwrap();
    assert_eq!(sum_metric(&text, UNENROLLED, &[]), CONNECTS as f64);
    assert_eq!(
        sum_metric(
            &text,
            CONNECTIONS,
            &[("service", SERVICE), ("result", "ok")]
        ),
        2.0 * CONNECTS as f64,
        "only the routed connects are the service's"
    );
    assert_eq!(
        sum_metric(&text, CONNECTIONS, &[("service", SERVICE)]),
        2.0 * CONNECTS as f64
    );

    // The default, live: every caller under the agent's cgroup is routed.
    bed.apply_config(&mesh(vip, &addrs, &app, "all")).unwrap();
    let routed = run(vip, &other);
    routed.assert_all_ok("other, enrollment all");
    eprintln!(
        "enrollment all: other {:?} (backends); stand-in accepts {}",
        to_backends(&routed),
        stand_in.total_accepts()
    );
    assert_eq!(
        to_backends(&routed).iter().sum::<u64>(),
        CONNECTS as u64,
        "with enrollment all the same caller is routed"
    );
    assert_eq!(stand_in.total_accepts(), CONNECTS as u64);
    let text = bed.agent().metrics_text().unwrap();
    assert_eq!(
        sum_metric(&text, UNENROLLED, &[]),
        CONNECTS as f64,
        "nothing more left untouched"
    );
}
