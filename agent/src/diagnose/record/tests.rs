use std::time::Duration;

use sockmesh_common::{
    BackendTcpStats, ConnEvent, RunqHist, EVENT_CLOSED, EVENT_ESTABLISHED, EVENT_FAILED,
    HIST_BUCKETS, RESULT_CIRCUIT_OPEN, RESULT_DENIED, RESULT_LIMITED, RESULT_OK, RESULT_REFUSED,
    RESULT_TIMEOUT,
};
use tokio::time::Instant;

use super::*;
use crate::{metrics::BackendLabels, signals::kernel_metrics::WorkloadSample};

fn ev(kind: u32, result: u32, duration_ns: u64) -> ConnEvent {
    ConnEvent {
        kind,
        result,
        duration_ns,
        ..ConnEvent::ZERO
    }
}

const B1: &str = "127.0.0.2:80";

#[test]
fn folds_connects_into_lines_backends_and_refusals() {
    let t0 = Instant::now();
    let mut r = Recorder::new(t0);
    let now = t0 + Duration::from_secs(1);
    r.on_connect(
        now,
        "web",
        B1,
        "front",
        &ev(EVENT_ESTABLISHED, RESULT_OK, 2_000_000),
    );
    r.on_connect(
        now,
        "web",
        B1,
        "front",
        &ev(EVENT_ESTABLISHED, RESULT_OK, 4_000_000),
    );
    r.on_connect(
        now,
        "web",
        B1,
        "front",
        &ev(EVENT_FAILED, RESULT_REFUSED, 0),
    );
    r.on_connect(
        now,
        "web",
        B1,
        "batch",
        &ev(EVENT_FAILED, RESULT_TIMEOUT, 0),
    );
    r.on_connect(
        now,
        "web",
        "none",
        "batch",
        &ev(EVENT_FAILED, RESULT_LIMITED, 0),
    );
    r.on_connect(
        now,
        "web",
        "none",
        "batch",
        &ev(EVENT_FAILED, RESULT_CIRCUIT_OPEN, 0),
    );
    r.on_connect(
        now,
        "web",
        "none",
        "batch",
        &ev(EVENT_FAILED, RESULT_DENIED, 0),
    );
    r.on_connect(now, "web", B1, "front", &ev(EVENT_CLOSED, RESULT_OK, 0));

    let front = r.line(now, "web", "front", LAST);
    assert_eq!((front.ok, front.failed, front.mesh_refused), (2, 1, 0));
    assert_eq!(front.handshake_mean_ms(), Some(3.0));
    let batch = r.line(now, "web", "batch", LAST);
    assert_eq!((batch.ok, batch.failed, batch.mesh_refused), (0, 4, 3));
    assert_eq!(batch.handshake_mean_ms(), None);
    let all = r.service(now, "web", LAST);
    assert_eq!((all.ok, all.failed), (2, 5));
    let b = r.backend(now, "web", B1, LAST);
    assert_eq!((b.ok, b.refused, b.timeout), (2, 1, 1));
    assert_eq!(
        r.backend(now, "web", "none", LAST),
        BackendTally::default(),
        "refusals have no backend"
    );
    let refusals = r.refusals(now, "web", RECENT);
    assert_eq!(
        (refusals.limited, refusals.circuit_open, refusals.shed),
        (1, 1, 0)
    );
    let lines: Vec<_> = r.lines(now, LAST).collect();
    assert_eq!(lines, vec![("web", "batch"), ("web", "front")]);
    assert_eq!(r.lines(now, PREVIOUS).count(), 0);
}

#[test]
fn last_and_previous_periods_and_forgetting() {
    let t0 = Instant::now();
    let mut r = Recorder::new(t0);
    r.on_connect(t0, "web", B1, "front", &ev(EVENT_ESTABLISHED, RESULT_OK, 1));
    let later = t0 + Duration::from_secs(300);
    r.on_connect(
        later,
        "web",
        B1,
        "front",
        &ev(EVENT_FAILED, RESULT_REFUSED, 0),
    );
    assert_eq!(r.line(later, "web", "front", LAST).failed, 1);
    assert_eq!(r.line(later, "web", "front", PREVIOUS).ok, 1);
    // Ten minutes after the last connect, the line is gone.
    let gone = later + Duration::from_secs(600);
    r.on_kernel(gone, &KernelSnapshot::default());
    assert_eq!(r.lines(gone, LAST).count(), 0);
    assert!(r.lines.is_empty());
}

fn tcp(established: u64, closed: u64, retransmits: u64) -> BackendTcpStats {
    BackendTcpStats {
        established,
        closed,
        retransmits,
        rtos: retransmits / 2,
        ..BackendTcpStats::ZERO
    }
}

fn snapshot(
    stats: BackendTcpStats,
    runq: Option<(u64, u64, u64)>,
    throttled: f64,
) -> KernelSnapshot {
    let labels = BackendLabels {
        service: "web".into(),
        backend: B1.into(),
    };
    let runq = runq.map(|(count, sum_us, over)| {
        let mut buckets = [0; HIST_BUCKETS];
        buckets[3] = count - over;
        buckets[12] = over;
        RunqHist {
            count,
            sum_us,
            buckets,
        }
    });
    KernelSnapshot {
        backends: [(labels, stats)].into(),
        workloads: vec![WorkloadSample {
            name: "front".into(),
            runq,
            throttled_seconds: throttled,
            nr_throttled: (throttled * 10.0) as u64,
        }],
        events_lost: 0,
        unenrolled_connects: 0,
        unknown_policy_connects: 0,
        same_node: Default::default(),
    }
}

#[test]
fn kernel_counters_become_increments_from_the_second_read_on() {
    let t0 = Instant::now();
    let mut r = Recorder::new(t0);
    // Hours of history before the agent looked: not this window's.
    r.on_kernel(
        t0,
        &snapshot(tcp(1000, 990, 500), Some((5000, 9_000_000, 100)), 100.0),
    );
    assert_eq!(r.backend(t0, "web", B1, RECENT), BackendTally::default());
    assert_eq!(r.workload(t0, "front", RECENT), None);
    assert_eq!(r.open_now("web", B1), 10);

    let t1 = t0 + Duration::from_secs(2);
    r.on_kernel(
        t1,
        &snapshot(tcp(1004, 992, 520), Some((5100, 9_500_000, 160)), 101.5),
    );
    let b = r.backend(t1, "web", B1, RECENT);
    assert_eq!(
        (b.established, b.closed, b.retransmits, b.rtos),
        (4, 2, 20, 10)
    );
    assert_eq!(r.open_now("web", B1), 12);
    let w = r.workload(t1, "front", RECENT).unwrap();
    assert_eq!(
        (w.waits, w.wait_sum_us, w.waits_over_1ms),
        (100, 500_000, 60)
    );
    assert!((w.seconds - 2.0).abs() < 1e-9 && (w.throttled_seconds - 1.5).abs() < 1e-9);
    assert_eq!(w.nr_throttled, 15);

    // A missing run-queue reading keeps the last point; a counter reset counts as zero.
    let t2 = t1 + Duration::from_secs(1);
    r.on_kernel(t2, &snapshot(tcp(3, 1, 0), None, 101.5));
    let t3 = t2 + Duration::from_secs(1);
    r.on_kernel(
        t3,
        &snapshot(tcp(5, 1, 1), Some((5200, 9_600_000, 160)), 101.5),
    );
    let b = r.backend(t3, "web", B1, RECENT);
    assert_eq!((b.established, b.retransmits), (6, 21));
    let w = r.workload(t3, "front", RECENT).unwrap();
    assert_eq!(w.waits, 200);
    assert!((w.seconds - 4.0).abs() < 1e-9, "{}", w.seconds);
}

#[test]
fn a_backend_gone_from_the_kernel_starts_over_when_it_returns() {
    let t0 = Instant::now();
    let mut r = Recorder::new(t0);
    r.on_kernel(t0, &snapshot(tcp(10, 0, 0), None, 0.0));
    r.on_kernel(t0, &KernelSnapshot::default());
    assert_eq!(r.open_now("web", B1), 0);
    r.on_kernel(t0, &snapshot(tcp(50, 0, 9), None, 0.0));
    assert_eq!(
        r.backend(t0, "web", B1, RECENT),
        BackendTally::default(),
        "its first read again only sets the starting point"
    );
}
