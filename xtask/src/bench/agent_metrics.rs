//! The observing agent's own counters, read from its Prometheus endpoint, to measure how fast
//! it drains the kernel's ring buffer and whether events were lost.

use anyhow::{Context, Result};
use sockmesh_bpf_tests::{parse_exposition, Agent};

/// The counters the drain measurement needs, at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Counters {
    /// `sockmesh_events_drained_total`: lifecycle events read from the ring buffer.
    pub drained: f64,
    /// `sockmesh_events_lost_total`: reservations the kernel could not make (ring full).
    /// The agent reads it from a per-CPU map once a second, so it lags by up to 1 s.
    pub lost: f64,
    /// Sum of `sockmesh_connections_total` over every result but `reset` (a reset connection
    /// was already counted `ok`): connect attempts the agent saw.
    pub connects: f64,
    /// `sockmesh_same_node_bytes_total`: bytes the same-node fast path handed socket to
    /// socket (read once a second, like `lost`).
    pub same_node_bytes: f64,
}

impl Counters {
    pub fn since(self, earlier: Counters) -> Counters {
        Counters {
            drained: self.drained - earlier.drained,
            lost: self.lost - earlier.lost,
            connects: self.connects - earlier.connects,
            same_node_bytes: self.same_node_bytes - earlier.same_node_bytes,
        }
    }
}

/// `GET /metrics` of `agent` (its bound address is `metrics_addr` in `/status`) and the
/// counters in it.
pub fn scrape(agent: &Agent) -> Result<Counters> {
    parse(&agent.metrics_text()?)
}

fn parse(text: &str) -> Result<Counters> {
    let mut c = Counters::default();
    for sample in parse_exposition(text).context("the agent's /metrics")? {
        match sample.name.as_str() {
            "sockmesh_events_drained_total" => c.drained += sample.value,
            "sockmesh_events_lost_total" => c.lost += sample.value,
            "sockmesh_same_node_bytes_total" => c.same_node_bytes += sample.value,
            "sockmesh_connections_total"
                if sample.labels.get("result").map(String::as_str) != Some("reset") =>
            {
                c.connects += sample.value
            }
            _ => {}
        }
    }
    Ok(c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_the_counters_it_needs() {
        let text = "# HELP sockmesh_events_drained_total x\n\
            # TYPE sockmesh_events_drained_total counter\n\
            sockmesh_events_drained_total 120\n\
            sockmesh_events_lost_total 3\n\
            sockmesh_connections_total{service=\"b\",backend=\"x\",caller=\"c\",result=\"ok\"} 50\n\
            sockmesh_connections_total{service=\"b\",backend=\"x\",caller=\"d\",result=\"ok\"} 9\n\
            sockmesh_connections_total{service=\"b\",backend=\"x\",caller=\"c\",result=\"reset\"} 4\n\
            sockmesh_connections_total{service=\"b\",backend=\"x\",caller=\"c\",result=\"refused\"} 1\n\
            sockmesh_connections_total_created 1\n\
            sockmesh_same_node_bytes_total 4096\n";
        assert_eq!(
            parse(text).unwrap(),
            Counters {
                drained: 120.0,
                lost: 3.0,
                connects: 60.0,
                same_node_bytes: 4096.0,
            }
        );
    }
}
