//! Same-node fast path metrics: pairs joined, senders that fell back to TCP, and bytes handed
//! socket to socket (docs/config.md, "Same-node fast path"). The kernel counts them in a
//! per-CPU map; [`super::Signals::refresh`] reads them into the kernel snapshot once a second
//! and they are encoded from it at scrape time.

use std::sync::{Arc, Mutex};

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric},
    metrics::{counter::ConstCounter, MetricType},
    registry::Registry,
};

use super::kernel_metrics::KernelSnapshot;

/// The same-node fast path's kernel counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct SameNodeCounters {
    /// Connections whose two ends were joined (both sockets under the agent's cgroup).
    pub(crate) pairs: u64,
    /// Senders that found no peer socket and stay on TCP.
    pub(crate) fallbacks: u64,
    /// Bytes handed from a socket straight to its peer.
    pub(crate) bytes: u64,
}

/// Registers the same-node families, encoded from `snapshot`'s counters.
pub(crate) fn register(registry: &mut Registry, snapshot: Arc<Mutex<KernelSnapshot>>) {
    registry.register_collector(Box::new(SameNodeCollector { snapshot }));
}

#[derive(Debug)]
struct SameNodeCollector {
    snapshot: Arc<Mutex<KernelSnapshot>>,
}

impl Collector for SameNodeCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let counters = self.snapshot.lock().expect("snapshot lock").same_node;
        let families: [(&str, &str, u64); 3] = [
            (
                "same_node_pairs",
                "Connections to same_node services whose two ends were joined for the fast path",
                counters.pairs,
            ),
            (
                "same_node_fallbacks",
                "Senders on same_node connections that found no peer socket and stay on TCP",
                counters.fallbacks,
            ),
            (
                "same_node_bytes",
                "Bytes the fast path handed from a socket straight to its peer (not via TCP)",
                counters.bytes,
            ),
        ];
        for (name, help, value) in families {
            let m = enc.encode_descriptor(name, help, None, MetricType::Counter)?;
            ConstCounter::new(value).encode(m)?;
        }
        Ok(())
    }
}
