//! The exposition contract: every family the agent's registry encodes is listed in
//! deploy/metrics.txt (which the Prometheus rules and the Grafana dashboard are checked
//! against), and every listed family is encoded. One series per family is fed so label keys
//! and closed-set label values show; `SOCKMESH_EXPOSITION_DUMP=<file>` writes the normalized
//! exposition (HELP/TYPE lines, series without values) for before/after comparisons.

use std::{
    collections::BTreeSet,
    sync::{Arc, Mutex},
};

use sockmesh_common::{
    BackendTcpStats, ConnEvent, RunqHist, EVENT_CLOSED, EVENT_ESTABLISHED, EVENT_FAILED,
    HIST_BUCKETS, RESULT_OK, RESULT_RESET,
};
use tokio::time::Instant;

use super::*;
use crate::{
    engine::{
        metrics::{HealthExport, HealthMetrics},
        Engine,
    },
    health::outlier::BanReason,
    runtime::ConfigMetrics,
    signals::{
        kernel_metrics::{KernelCollector, KernelSnapshot, WorkloadSample},
        metrics::{BoundedLabel, ConnectionMetrics},
        pressure::gauges::{MapPressure, WATCHED},
        same_node_metrics,
    },
    slo::SloTracker,
    tables::{plan, KernelState, Overlay},
};

const METRICS_TXT: &str = include_str!("../../../deploy/metrics.txt");

const CONFIG: &str = "services:\n  - name: web\n    vip: 127.100.0.1\n    port: 80\n    backends:\n      - addr: 127.0.0.2:8081\n    slos:\n      - {name: availability, sli: connect_success, objective: 0.5, window: 30d}\n";

/// The registry as the agent builds it (`crate::runtime::run`, `Signals::new`,
/// `engine::task::spawn`), one series in every family.
fn exposition() -> String {
    let cfg = sockmesh_model::parse_config(CONFIG).unwrap();
    let views = plan(&cfg, &Overlay::new(), &KernelState::default())
        .unwrap()
        .views;
    let mut registry = registry();

    // Signals: connections, kernel maps, same-node, map pressure, SLOs.
    let m = ConnectionMetrics::new(&mut registry);
    let snapshot = KernelCollector::register(&mut registry);
    same_node_metrics::register(&mut registry, snapshot.clone());
    let pressure = MapPressure::new(&mut registry);
    let mut tracker = SloTracker::new(Instant::now(), &cfg, &views);
    let ev = ConnEvent {
        kind: EVENT_ESTABLISHED,
        service_id: views[0].id,
        ..ConnEvent::ZERO
    };
    tracker.on_event(Instant::now(), &ev);
    crate::slo::metrics::register(&mut registry, Arc::new(Mutex::new(tracker)));
    // Config and health.
    ConfigMetrics::new(&mut registry);
    let health = HealthMetrics::new(&mut registry);
    // The L7 proxy's link and supervision.
    crate::l7::L7Metrics::new(&mut registry);
    // The admin API's refusals (both reasons are created at registration).
    crate::admin::AdminMetrics::new(&mut registry);
    // The endpoints' connection counters (sockmesh-serve), one endpoint's series created.
    let serve = sockmesh_serve::ServeMetrics::new(&mut registry);
    let _ = sockmesh_serve::Server::new(
        sockmesh_serve::Endpoint::Metrics,
        sockmesh_serve::Limits::with_cap(1),
        serve,
    );

    let backend = BackendLabels {
        service: "web".into(),
        backend: "127.0.0.2:8081".into(),
    };
    *snapshot.lock().unwrap() = KernelSnapshot {
        backends: [(backend.clone(), BackendTcpStats::ZERO)].into(),
        workloads: vec![WorkloadSample {
            name: "client".into(),
            runq: Some(RunqHist {
                count: 1,
                sum_us: 1,
                buckets: [0; HIST_BUCKETS],
            }),
            ..WorkloadSample::default()
        }],
        ..KernelSnapshot::default()
    };
    for code in 0..=11 {
        let kind = if code == RESULT_OK {
            EVENT_ESTABLISHED
        } else {
            EVENT_FAILED
        };
        let ev = ConnEvent {
            kind,
            result: code,
            ..ConnEvent::ZERO
        };
        m.connect(&ev, "web", "127.0.0.2:8081", "client");
    }
    let closed = ConnEvent {
        kind: EVENT_CLOSED,
        result: RESULT_RESET,
        ..ConnEvent::ZERO
    };
    m.closed(&closed, "web", "127.0.0.2:8081", Some("client".into()));
    m.inbound("other".into());
    m.labels_folded(BoundedLabel::Caller, 1);
    m.events_drained(1);
    for reason in BanReason::ALL {
        health.banned(reason);
    }
    let mut engine = Engine::default();
    engine.on_config(Instant::now(), &cfg, &views);
    HealthExport::new(health).export(&engine, Instant::now());
    for map in &WATCHED {
        pressure.record(map.map, 1);
    }
    encode(&registry)
}

/// HELP and TYPE lines as they are, series without their values; sorted, so the order
/// families are registered in does not show.
fn normalized(text: &str) -> String {
    let mut lines: BTreeSet<String> = BTreeSet::new();
    for line in text.lines() {
        if line.starts_with('#') {
            lines.insert(line.to_owned());
        } else if let Some((series, _value)) = line.rsplit_once(' ') {
            lines.insert(series.to_owned());
        }
    }
    lines.into_iter().map(|l| l + "\n").collect()
}

/// Family names as deploy/metrics.txt spells them, from the `# TYPE` lines.
fn families(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .map(|l| match l.split_once(' ') {
            Some((name, "counter")) => format!("{name}_total"),
            Some((name, _)) => name.to_owned(),
            None => l.to_owned(),
        })
        .collect()
}

#[tokio::test(start_paused = true)]
async fn exports_exactly_the_families_of_deploy_metrics_txt() {
    let text = exposition();
    if let Ok(path) = std::env::var("SOCKMESH_EXPOSITION_DUMP") {
        std::fs::write(path, normalized(&text)).unwrap();
    }
    let listed: BTreeSet<String> = METRICS_TXT
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_owned)
        .collect();
    let exported = families(&text);
    let missing: Vec<_> = listed.difference(&exported).collect();
    let unlisted: Vec<_> = exported.difference(&listed).collect();
    assert!(
        missing.is_empty() && unlisted.is_empty(),
        "listed in deploy/metrics.txt but not exported: {missing:?}; exported but not listed: {unlisted:?}"
    );
}
