//! SLO metrics (docs/slo.md, "Metrics"), encoded at scrape time: burn rates and budgets move
//! with the clock even when no event arrives, so they are computed for the scrape's instant
//! rather than stored. The tracker is fed by the signals; [`register`] exports it.

use std::sync::{Arc, Mutex};

use prometheus_client::{
    collector::Collector,
    encoding::{
        DescriptorEncoder, EncodeLabelSet, EncodeLabelValue, EncodeMetric, LabelValueEncoder,
    },
    metrics::{counter::ConstCounter, gauge::ConstGauge, MetricType},
    registry::Registry,
};
use tokio::time::Instant;

use super::{BurnWindow, SloSample, SloTracker};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SloLabels {
    service: String,
    slo: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BurnLabels {
    service: String,
    slo: String,
    window: BurnWindow,
}

// The derive writes a variant's identifier; the label is the window's duration (`5m`).
impl EncodeLabelValue for BurnWindow {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> std::fmt::Result {
        std::fmt::Write::write_str(encoder, self.as_str())
    }
}

/// (name, help, value) of a per-SLO gauge.
type GaugeSpec = (&'static str, &'static str, fn(&SloSample) -> f64);
/// (name, help, value) of a per-SLO counter; the encoder appends `_total`.
type CounterSpec = (&'static str, &'static str, fn(&SloSample) -> u64);

/// Registers the SLO families: `tracker`'s snapshot, taken at each scrape.
pub(crate) fn register(registry: &mut Registry, tracker: Arc<Mutex<SloTracker>>) {
    registry.register_collector(Box::new(SloCollector { tracker }));
}

/// Encodes a [`SloTracker`] snapshot taken at each scrape.
#[derive(Debug, Clone)]
struct SloCollector {
    tracker: Arc<Mutex<SloTracker>>,
}

impl Collector for SloCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let samples = self
            .tracker
            .lock()
            .expect("slo lock")
            .snapshot(Instant::now());
        let labels = |s: &SloSample| SloLabels {
            service: s.service.clone(),
            slo: s.slo.clone(),
        };
        let gauges: [GaugeSpec; 3] = [
            ("slo_objective", "Target share of good events of the SLO", |s| {
                s.objective
            }),
            (
                "slo_window_seconds",
                "Compliance period of the SLO's error budget",
                |s| s.window_secs,
            ),
            (
                "slo_error_budget_remaining",
                "Share of the SLO's error budget left over its window (or since the agent started): 1 unspent, negative overspent",
                |s| s.budget_remaining,
            ),
        ];
        for (name, help, get) in gauges {
            let mut m = enc.encode_descriptor(name, help, None, MetricType::Gauge)?;
            for s in &samples {
                ConstGauge::new(get(s)).encode(m.encode_family(&labels(s))?)?;
            }
        }
        let counters: [CounterSpec; 2] = [
            (
                "slo_good",
                "Good events of the SLO's indicator since the agent started tracking it",
                |s| s.good_total,
            ),
            (
                "slo",
                "Events the SLO's indicator counted (good and bad) since the agent started tracking it",
                |s| s.total,
            ),
        ];
        for (name, help, get) in counters {
            let mut m = enc.encode_descriptor(name, help, None, MetricType::Counter)?;
            for s in &samples {
                ConstCounter::new(get(s)).encode(m.encode_family(&labels(s))?)?;
            }
        }
        let mut m = enc.encode_descriptor(
            "slo_burn_rate",
            "Error budget burn rate over the window: (bad/total)/(1 - objective), 0 without traffic",
            None,
            MetricType::Gauge,
        )?;
        for s in &samples {
            for (window, rate) in s.burn {
                let labels = BurnLabels {
                    service: s.service.clone(),
                    slo: s.slo.clone(),
                    window,
                };
                ConstGauge::new(rate).encode(m.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use sockmesh_common::{ConnEvent, EVENT_ESTABLISHED, EVENT_FAILED, RESULT_REFUSED};

    use super::*;
    use crate::tables::{plan, KernelState, Overlay};

    #[tokio::test(start_paused = true)]
    async fn exports_the_contract_series() {
        let cfg = sockmesh_model::parse_config(
            "services:\n  - name: web\n    vip: 127.100.0.1\n    port: 80\n    backends:\n      - addr: 127.0.0.2:8081\n    slos:\n      - {name: availability, sli: connect_success, objective: 0.5, window: 30d}\n",
        )
        .unwrap();
        let views = plan(&cfg, &Overlay::new(), &KernelState::default())
            .unwrap()
            .views;
        let mut tracker = SloTracker::new(Instant::now(), &cfg, &views);
        let ev = |kind, result| ConnEvent {
            kind,
            result,
            service_id: views[0].id,
            ..ConnEvent::ZERO
        };
        for _ in 0..3 {
            tracker.on_event(Instant::now(), &ev(EVENT_ESTABLISHED, 0));
        }
        tracker.on_event(Instant::now(), &ev(EVENT_FAILED, RESULT_REFUSED));
        let mut registry = Registry::with_prefix("sockmesh");
        register(&mut registry, Arc::new(Mutex::new(tracker)));
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        let l = r#"{service="web",slo="availability"}"#;
        for line in [
            format!("sockmesh_slo_objective{l} 0.5"),
            format!("sockmesh_slo_window_seconds{l} 2592000.0"),
            format!("sockmesh_slo_good_total{l} 3"),
            format!("sockmesh_slo_total{l} 4"),
            // 25 % bad against a 50 % budget (binary fractions: exact in f64).
            format!("sockmesh_slo_error_budget_remaining{l} 0.5"),
            r#"sockmesh_slo_burn_rate{service="web",slo="availability",window="5m"} 0.5"#.into(),
            r#"sockmesh_slo_burn_rate{service="web",slo="availability",window="6h"} 0.5"#.into(),
            "# TYPE sockmesh_slo counter".into(),
        ] {
            assert!(
                text.contains(&format!("{line}\n")),
                "{line:?} missing in\n{text}"
            );
        }
        let classic = crate::metrics::to_classic(&text);
        assert!(classic.contains("# TYPE sockmesh_slo_total counter\n"));
        assert!(classic.contains("# TYPE sockmesh_slo_good_total counter\n"));
    }
}
