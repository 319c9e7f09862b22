//! Priority shedding: two workloads call one service, `online` (priority online) and
//! `batch` (priority offline). While the service is healthy both connect. Once it is overloaded
//! (a connect was refused by its `max_connections` limit in the last 5 s), the offline caller
//! is refused at connect() with `result="shed"`, while the online caller still connects
//! whenever there is capacity. When the overload has been gone for 5 s, the offline caller is
//! admitted again.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde_json::json;
use sockmesh_bpf_tests::health_admin::{circuit, wait_circuit_field};
use sockmesh_bpf_tests::health_backend::SwitchBackends;
use sockmesh_bpf_tests::health_client::{Caller, Connects};
use sockmesh_bpf_tests::health_yaml::{health_mesh, HealthService, HealthWorkload};
use sockmesh_bpf_tests::kernel_tables::{wait_active_connections, wait_service_entry, KERNEL_WAIT};
use sockmesh_bpf_tests::{
    loopback_addrs, sum_metric, wait_counter_settled, wait_workloads, ServiceYaml, TestBed,
    SIGNAL_TIMEOUT,
};

const SERVICE: &str = "busy";
const CONNECTIONS: &str = "sockmesh_connections_total";
/// `min_priority` while shedding: the online level (offline is 1).
const ONLINE_LEVEL: u64 = 2;

#[test]
fn overload_sheds_the_offline_caller_first_and_keeps_the_online_one() {
    let backends = loopback_addrs(2, 3, 18450);
    let vip: SocketAddr = "127.100.45.1:18451".parse().unwrap();
    let _set = SwitchBackends::start(&backends).unwrap();
    let mut bed = TestBed::new("health-shed", "version: 1\nservices: []\n").unwrap();
    let online = bed.cgroup().child("online").unwrap();
    let batch = bed.cgroup().child("batch").unwrap();
    let service = HealthService::new(
        ServiceYaml::new(SERVICE, vip, "round_robin").backends(&backends, &[1; 3]),
    )
    .with("limits", "{max_connections: 3}");
    let workloads = [
        HealthWorkload::new("online", &online.relative_path().unwrap(), Some("online")),
        HealthWorkload::new("batch", &batch.relative_path().unwrap(), Some("offline")),
    ];
    bed.write_config(&health_mesh(&[service], &workloads))
        .unwrap();
    bed.start_agent().unwrap();
    wait_workloads(bed.agent(), &["online", "batch"], SIGNAL_TIMEOUT).unwrap();
    let mut front = Caller::spawn("online", &online, vip).unwrap();
    let mut offline = Caller::spawn("batch", &batch, vip).unwrap();
    let pins = bed.bpffs().path().to_path_buf();

    // Healthy: both get through.
    let calm = offline.connect(&Connects::new(5)).unwrap();
    assert_eq!(
        calm.ok_count(),
        5,
        "offline while healthy: {:#?}",
        calm.failures()
    );
    assert_eq!(circuit(bed.agent(), SERVICE).unwrap()["min_priority"], 0);

    // Overload: the online caller fills the service and one more connect hits the limit.
    let fill = front.connect(&Connects::new(3).hold()).unwrap();
    assert_eq!(fill.ok_count(), 3, "{:#?}", fill.failures());
    let over = front.connect(&Connects::new(1).hold()).unwrap();
    assert!(
        over.results[0].refused(),
        "4th connect: {:#?}",
        over.results
    );
    let overloaded_at = Instant::now();
    let row = wait_circuit_field(
        bed.agent(),
        SERVICE,
        "min_priority",
        &json!(ONLINE_LEVEL),
        KERNEL_WAIT,
    )
    .unwrap();
    eprintln!("overloaded: {row}");
    // The engine has decided; the agent's main loop writes it into the kernel a moment later.
    wait_service_entry(&pins, vip, "shedding", |e| {
        u64::from(e.min_priority) == ONLINE_LEVEL
    })
    .unwrap();

    // The offline caller is shed (not merely limited: shedding is checked first).
    let shed = offline.connect(&Connects::new(5)).unwrap();
    assert_eq!(
        shed.refused_count(),
        5,
        "offline while overloaded: {:#?}",
        shed.results
    );

    // The online caller gets through as soon as there is room.
    assert_eq!(front.close(1).unwrap(), 2);
    wait_active_connections(&pins, vip, 2).unwrap();
    let room = front.connect(&Connects::new(1).hold()).unwrap();
    assert!(
        room.results[0].ok(),
        "online with room: {:#?}",
        room.results
    );
    // ... while the offline caller, even with room, is still shed.
    assert_eq!(front.close(1).unwrap(), 2);
    wait_active_connections(&pins, vip, 2).unwrap();
    let still = offline.connect(&Connects::new(1)).unwrap();
    assert!(
        still.results[0].refused(),
        "offline with room: {:#?}",
        still.results
    );
    let shed_phase = overloaded_at.elapsed();
    assert!(
        shed_phase < Duration::from_secs(5),
        "the shedding checks took {shed_phase:?}, longer than the agent's 5 s overload hold: \
         the checks above no longer saw an overloaded service"
    );

    // Overload over (no limit refusal for 5 s): everyone is admitted again.
    assert_eq!(front.close(2).unwrap(), 0);
    let row =
        wait_circuit_field(bed.agent(), SERVICE, "min_priority", &json!(0), KERNEL_WAIT).unwrap();
    eprintln!(
        "overload ended {:.1} s after the last limit refusal: {row}",
        overloaded_at.elapsed().as_secs_f64()
    );
    wait_service_entry(&pins, vip, "admitting everyone", |e| e.min_priority == 0).unwrap();
    let recovered = offline.connect(&Connects::new(5)).unwrap();
    assert_eq!(recovered.ok_count(), 5, "{:#?}", recovered.failures());

    let text = wait_counter_settled(bed.agent(), "shed connects", 6.0, |t| {
        sum_metric(t, CONNECTIONS, &[("service", SERVICE), ("result", "shed")])
    })
    .unwrap();
    let count = |caller: &str, result: &str| {
        sum_metric(
            &text,
            CONNECTIONS,
            &[("service", SERVICE), ("caller", caller), ("result", result)],
        ) + 0.0
    };
    eprintln!(
        "metrics: batch shed {}, batch ok {}, online limited {}, online ok {}, online shed {}",
        count("batch", "shed"),
        count("batch", "ok"),
        count("online", "limited"),
        count("online", "ok"),
        count("online", "shed")
    );
    assert_eq!(count("batch", "shed"), 6.0);
    assert_eq!(count("batch", "ok"), 10.0);
    assert_eq!(count("batch", "limited"), 0.0);
    assert_eq!(count("online", "limited"), 1.0);
    assert_eq!(count("online", "ok"), 4.0);
    assert_eq!(count("online", "shed"), 0.0);
}
