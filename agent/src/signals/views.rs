//! JSON views of the signals for the admin API (shapes in docs/agent-interface.md).

use serde_json::{json, Value};
use sockmesh_common::BackendKey;

use super::Signals;

impl Signals {
    pub(crate) fn services_json(&self) -> Value {
        let inner = self.inner.lock().expect("signals lock");
        Value::Array(
            inner
                .views
                .iter()
                .map(|v| serde_json::to_value(v).unwrap_or(Value::Null))
                .collect(),
        )
    }

    /// `None` when the service is unknown.
    pub(crate) fn backends_json(&self, service: &str) -> Option<Value> {
        let inner = self.inner.lock().expect("signals lock");
        let view = inner.views.iter().find(|v| v.name == service)?;
        let rows = view
            .backends
            .iter()
            .map(|b| {
                let key = BackendKey { service_id: view.id, backend_id: b.id };
                let tally = inner.aggregates.backends.get(&(view.id, b.id)).cloned().unwrap_or_default();
                let tcp = inner.tcp.get(&key);
                json!({
                    "addr": b.addr, "id": b.id, "weight": b.weight, "slots": b.slots,
                    "connects": tally.connects,
                    "active": tcp.map_or(0, |t| t.established.saturating_sub(t.closed)),
                    "handshake_mean_ms": tally.handshake_mean_ms(),
                    "srtt_mean_us": tcp.filter(|t| t.srtt_count > 0).map(|t| t.srtt_sum_us as f64 / t.srtt_count as f64),
                    "retransmits": tcp.map_or(0, |t| t.retransmits),
                    "rtos": tcp.map_or(0, |t| t.rtos),
                    "bytes_sent": tally.bytes_sent,
                    "bytes_received": tally.bytes_received,
                })
            })
            .collect();
        Some(Value::Array(rows))
    }

    pub(crate) fn workloads_json(&self) -> Value {
        let inner = self.inner.lock().expect("signals lock");
        let snap = self.snapshot.lock().expect("snapshot lock");
        let rows = inner
            .workloads
            .iter()
            .map(|w| {
                let sample = snap.workloads.iter().find(|s| s.name == w.name);
                let runq = sample.and_then(|s| s.runq.as_ref());
                json!({
                    "name": w.name,
                    "cgroup": w.cgroup.display().to_string(),
                    "cgroup_id": w.cgroup_ids.first(),
                    "labels": w.labels,
                    "threads": w.tids.len(),
                    "runqueue": {
                        "count": runq.map_or(0, |h| h.count),
                        "mean_us": runq.filter(|h| h.count > 0).map(|h| h.sum_us as f64 / h.count as f64),
                        // Buckets 11.. hold waits >= 1024 µs.
                        "over_1ms": runq.map_or(0, |h| h.buckets[11..].iter().sum::<u64>()),
                    },
                    "throttled_seconds": sample.map_or(0.0, |s| s.throttled_seconds),
                    "nr_throttled": sample.map_or(0, |s| s.nr_throttled),
                })
            })
            .collect();
        Value::Array(rows)
    }

    pub(crate) fn failures_json(&self) -> Value {
        let inner = self.inner.lock().expect("signals lock");
        serde_json::to_value(&inner.aggregates.recent_failures).unwrap_or(Value::Null)
    }
}
