//! Kernel-map metrics, encoded at scrape time from the snapshot [`super::Signals::refresh`]
//! takes once a second: per-backend TCP counters, srtt and active connections, per-workload
//! run-queue latency and CPU throttling, and the agent-wide event and enrollment counters.
//! Their truth lives in pinned maps, so they survive agent restarts and cost nothing per
//! event. The same-node fast path's counters, read in the same pass, are
//! [`super::same_node_metrics`]'s.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
};

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric, NoLabelSet},
    metrics::{counter::ConstCounter, gauge::ConstGauge, MetricType},
    registry::Registry,
};
use sockmesh_common::{bucket_upper_us, BackendTcpStats, RunqHist, HIST_BUCKETS};

use crate::metrics::BackendLabels;

#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
struct WorkloadLabels {
    workload: String,
}

#[derive(Clone, Debug, Default)]
pub(crate) struct WorkloadSample {
    pub(crate) name: String,
    pub(crate) runq: Option<RunqHist>,
    pub(crate) throttled_seconds: f64,
    pub(crate) nr_throttled: u64,
}

/// The kernel-side numbers as of the last read (summed over CPUs).
#[derive(Clone, Debug, Default)]
pub(crate) struct KernelSnapshot {
    /// Per-backend rows, updated in place as pairs' counters change.
    pub(crate) backends: BTreeMap<BackendLabels, BackendTcpStats>,
    pub(crate) workloads: Vec<WorkloadSample>,
    pub(crate) events_lost: u64,
    /// Connects to a VIP from callers that are not enrolled (`enrollment: workloads`).
    pub(crate) unenrolled_connects: u64,
    /// Connects refused because the service entry's policy code is unknown to the programs.
    pub(crate) unknown_policy_connects: u64,
    pub(crate) same_node: super::same_node_metrics::SameNodeCounters,
}

/// (name, help, value) of a per-backend counter taken from the kernel's TCP stats.
type CounterSpec = (&'static str, &'static str, fn(&BackendTcpStats) -> u64);

/// Encodes the latest [`KernelSnapshot`] on each scrape.
#[derive(Debug, Clone, Default)]
pub(crate) struct KernelCollector {
    snapshot: Arc<Mutex<KernelSnapshot>>,
}

impl KernelCollector {
    /// Registers the kernel-map families; returns the snapshot they are encoded from.
    pub(crate) fn register(registry: &mut Registry) -> Arc<Mutex<KernelSnapshot>> {
        let collector = Self::default();
        let snapshot = collector.snapshot.clone();
        registry.register_collector(Box::new(collector));
        snapshot
    }
}

/// log2 µs buckets -> Prometheus (upper bound in seconds, count) pairs; the last, open-ended
/// kernel bucket becomes +Inf (prometheus-client writes `+Inf` for `f64::MAX`, and `inf` for
/// a real infinity, which `le="+Inf"` selectors would not match).
fn hist_buckets(buckets: &[u64; HIST_BUCKETS]) -> Vec<(f64, u64)> {
    buckets
        .iter()
        .enumerate()
        .map(|(i, n)| {
            let upper = if i == HIST_BUCKETS - 1 {
                f64::MAX
            } else {
                bucket_upper_us(i) as f64 / 1e6
            };
            (upper, *n)
        })
        .collect()
}

impl Collector for KernelCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let snap = self.snapshot.lock().expect("snapshot lock").clone();
        let counters: [CounterSpec; 2] = [
            (
                "tcp_retransmits",
                "Retransmitted segments on routed connections, per backend",
                |s| s.retransmits,
            ),
            (
                "tcp_rto",
                "Retransmission timeouts on routed connections, per backend",
                |s| s.rtos,
            ),
        ];
        for (name, help, get) in counters {
            let mut m = enc.encode_descriptor(name, help, None, MetricType::Counter)?;
            for (labels, stats) in &snap.backends {
                ConstCounter::new(get(stats)).encode(m.encode_family(labels)?)?;
            }
        }
        let mut m = enc.encode_descriptor(
            "active_connections",
            "Routed connections open now (established minus closed), per backend",
            None,
            MetricType::Gauge,
        )?;
        for (labels, stats) in &snap.backends {
            ConstGauge::new(stats.established.saturating_sub(stats.closed) as i64)
                .encode(m.encode_family(labels)?)?;
        }
        let mut m = enc.encode_descriptor(
            "tcp_srtt_seconds",
            "Smoothed RTT samples, per backend: each connection's first RTT callbacks, then its srtt at close; log2 buckets",
            None,
            MetricType::Histogram,
        )?;
        for (labels, s) in &snap.backends {
            m.encode_family(labels)?.encode_histogram::<NoLabelSet>(
                s.srtt_sum_us as f64 / 1e6,
                s.srtt_count,
                &hist_buckets(&s.srtt_hist),
                None,
            )?;
        }
        let mut m = enc.encode_descriptor(
            "workload_runqueue_latency_seconds",
            "Time threads of a workload waited runnable before getting a CPU; log2 buckets",
            None,
            MetricType::Histogram,
        )?;
        for w in &snap.workloads {
            let Some(h) = &w.runq else { continue };
            let labels = WorkloadLabels {
                workload: w.name.clone(),
            };
            m.encode_family(&labels)?.encode_histogram::<NoLabelSet>(
                h.sum_us as f64 / 1e6,
                h.count,
                &hist_buckets(&h.buckets),
                None,
            )?;
        }
        let mut m = enc.encode_descriptor(
            "workload_cpu_throttled_seconds",
            "Time a workload's cgroup was throttled by its CPU quota (cpu.stat)",
            None,
            MetricType::Counter,
        )?;
        for w in &snap.workloads {
            let labels = WorkloadLabels {
                workload: w.name.clone(),
            };
            ConstCounter::new(w.throttled_seconds).encode(m.encode_family(&labels)?)?;
        }
        let m = enc.encode_descriptor(
            "events_lost",
            "Lifecycle events the kernel could not put in the ring buffer (it was full)",
            None,
            MetricType::Counter,
        )?;
        ConstCounter::new(snap.events_lost).encode(m)?;
        let m = enc.encode_descriptor(
            "unenrolled_connects",
            "Connects to a VIP the kernel left untouched because the caller is not enrolled \
             (enrollment: workloads)",
            None,
            MetricType::Counter,
        )?;
        ConstCounter::new(snap.unenrolled_connects).encode(m)?;
        let m = enc.encode_descriptor(
            "unknown_policy_connects",
            "Connects refused (result no_backend) because the service entry names a \
             load-balancing policy code the kernel programs do not know",
            None,
            MetricType::Counter,
        )?;
        ConstCounter::new(snap.unknown_policy_connects).encode(m)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log2_buckets_become_seconds_with_inf_last() {
        let mut b = [0u64; HIST_BUCKETS];
        b[0] = 1;
        b[11] = 5;
        b[HIST_BUCKETS - 1] = 2;
        let out = hist_buckets(&b);
        assert_eq!(out[0], (1e-6, 1));
        assert_eq!(out[11], (2048e-6, 5));
        assert_eq!(out[HIST_BUCKETS - 1].0, f64::MAX, "encoded as +Inf");
    }
}
