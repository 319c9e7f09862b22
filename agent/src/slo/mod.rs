//! SLOs from kernel signals: every configured objective's good/total history, its error
//! budget and its burn rates (docs/slo.md is the contract).
//!
//! Pure and clocked from outside, like the health engine: [`classify`] decides what one
//! lifecycle event means for an SLI, [`history::History`] keeps bucketed counts in bounded
//! memory, and [`SloTracker`] routes events to the SLOs of their service and takes the
//! [`SloSample`]s the metrics collector ([`metrics`]) and the admin API serve. Burn rates are also
//! computable by Prometheus from the raw `_total` counters; the agent's own are for the CLI
//! and for setups without recording rules.

mod classify;
pub(crate) mod history;
pub(crate) mod metrics;

use std::{collections::HashMap, time::Duration};

use serde::{ser::SerializeMap, Serialize, Serializer};
use sockmesh_common::ConnEvent;
use sockmesh_model::{MeshConfig, SliKind, SloSpec};
use tokio::time::Instant;

pub(crate) use classify::classify;
use history::History;

use crate::tables::ServiceView;

/// The burn-rate windows of the SRE workbook's multiwindow, multi-burn-rate alerts (page on
/// 1h and 5m, ticket on 6h and 30m).
pub(crate) const BURN_WINDOWS: [(BurnWindow, Duration); 4] = [
    (BurnWindow::FiveMinutes, Duration::from_secs(300)),
    (BurnWindow::ThirtyMinutes, Duration::from_secs(1800)),
    (BurnWindow::OneHour, Duration::from_secs(3600)),
    (BurnWindow::SixHours, Duration::from_secs(6 * 3600)),
];

/// A burn-rate window: the `window` label of `sockmesh_slo_burn_rate` and the key of the
/// admin API's `burn` object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum BurnWindow {
    FiveMinutes,
    ThirtyMinutes,
    OneHour,
    SixHours,
}

impl BurnWindow {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::FiveMinutes => "5m",
            Self::ThirtyMinutes => "30m",
            Self::OneHour => "1h",
            Self::SixHours => "6h",
        }
    }
}

/// One SLO's numbers at one instant.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct SloSample {
    pub service: String,
    pub slo: String,
    pub sli: &'static str,
    pub objective: f64,
    pub window_secs: f64,
    /// Good and total events since the agent started tracking this SLO (Prometheus counters).
    pub good_total: u64,
    pub total: u64,
    /// Over the SLO window, or since tracking began if that is shorter.
    pub budget_remaining: f64,
    /// Burn rate per [`BURN_WINDOWS`] label; a JSON object `{"5m": F, ...}`.
    #[serde(serialize_with = "burn_map")]
    pub burn: [(BurnWindow, f64); 4],
}

fn burn_map<S: Serializer>(burn: &[(BurnWindow, f64); 4], s: S) -> Result<S::Ok, S::Error> {
    let mut map = s.serialize_map(Some(burn.len()))?;
    for (window, rate) in burn {
        map.serialize_entry(window.as_str(), rate)?;
    }
    map.end()
}

#[derive(Debug)]
struct TrackedSlo {
    spec: SloSpec,
    threshold: Option<Duration>,
    history: History,
}

#[derive(Debug)]
struct ServiceSlos {
    name: String,
    slos: Vec<TrackedSlo>,
}

/// The SLOs of every service, in config order, found by the kernel's service id.
#[derive(Debug, Default)]
pub(crate) struct SloTracker {
    services: Vec<ServiceSlos>,
    by_id: HashMap<u32, usize>,
    /// The same index by service name: the L7 proxy reports by name.
    by_name: HashMap<String, usize>,
}

/// What the L7 proxy reports about one service's requests since its last report
/// (`sockmesh_proxy::link::ServiceTally`, without the name).
#[derive(Debug, Clone, Copy)]
pub(crate) struct RequestTally<'a> {
    pub requests: u64,
    pub failed: u64,
    /// (threshold in µs, requests within it).
    pub within: &'a [(u64, u64)],
}

impl SloTracker {
    /// A tracker for `config`, whose services got the ids in `views`. The agent starts from
    /// `default()` and reconfigures on its first config; tests do both at once.
    #[cfg(test)]
    pub(crate) fn new(now: Instant, config: &MeshConfig, views: &[ServiceView]) -> Self {
        let mut tracker = Self::default();
        tracker.reconfigure(now, config, views);
        tracker
    }

    /// A new config was applied. An SLO that keeps its service, name, SLI and threshold keeps
    /// its history and counters (a new objective or window re-reads the same events); any
    /// other SLO starts empty, as its events would mean something else.
    pub(crate) fn reconfigure(&mut self, now: Instant, config: &MeshConfig, views: &[ServiceView]) {
        let mut previous: HashMap<(String, String), TrackedSlo> = HashMap::new();
        for service in std::mem::take(&mut self.services) {
            for slo in service.slos {
                previous.insert((service.name.clone(), slo.spec.name.clone()), slo);
            }
        }
        self.by_id.clear();
        self.by_name.clear();
        let ids: HashMap<&str, u32> = views.iter().map(|v| (v.name.as_str(), v.id)).collect();
        for service in config.services.iter().filter(|s| !s.slos.is_empty()) {
            // Every applied service has a view; one without could receive no events anyway.
            let Some(&id) = ids.get(service.name.as_str()) else {
                continue;
            };
            let slos = service
                .slos
                .iter()
                .map(|spec| {
                    let threshold = spec.threshold.map(|t| t.0);
                    let key = (service.name.clone(), spec.name.clone());
                    match previous.remove(&key) {
                        Some(mut kept)
                            if kept.spec.sli == spec.sli && kept.threshold == threshold =>
                        {
                            kept.history.set_slo_window(spec.window.0);
                            kept.spec = spec.clone();
                            kept
                        }
                        _ => TrackedSlo {
                            spec: spec.clone(),
                            threshold,
                            history: History::new(now, spec.window.0),
                        },
                    }
                })
                .collect();
            self.by_id.insert(id, self.services.len());
            self.by_name
                .insert(service.name.clone(), self.services.len());
            self.services.push(ServiceSlos {
                name: service.name.clone(),
                slos,
            });
        }
    }

    /// Counts one lifecycle event for every SLO of its service that judges it.
    pub(crate) fn on_event(&mut self, now: Instant, ev: &ConnEvent) {
        let Some(&index) = self.by_id.get(&ev.service_id) else {
            return;
        };
        for slo in &mut self.services[index].slos {
            if let Some(good) = classify(slo.spec.sli, slo.threshold, ev) {
                slo.history.record(now, u64::from(good), 1);
            }
        }
    }

    /// Counts a service's requests (the L7 proxy's report) for its request SLIs: every
    /// request is in `request_success`'s total and good unless it failed, and in the
    /// total of each `request_latency` SLO, good when within its threshold. A latency SLO
    /// whose threshold the proxy did not count yet (a config change in between) skips
    /// the report rather than guess.
    pub(crate) fn on_requests(&mut self, now: Instant, service: &str, tally: RequestTally<'_>) {
        let Some(&index) = self.by_name.get(service) else {
            return;
        };
        for slo in &mut self.services[index].slos {
            match slo.spec.sli {
                SliKind::RequestSuccess => {
                    let good = tally.requests.saturating_sub(tally.failed);
                    slo.history.record(now, good, tally.requests);
                }
                SliKind::RequestLatency => {
                    let Some(us) = slo.threshold.map(|t| t.as_micros()) else {
                        continue;
                    };
                    if let Some(&(_, within)) =
                        tally.within.iter().find(|(t, _)| u128::from(*t) == us)
                    {
                        slo.history
                            .record(now, within.min(tally.requests), tally.requests);
                    }
                }
                _ => {}
            }
        }
    }

    /// Every SLO's numbers as of `now`, services and SLOs in config order.
    pub(crate) fn snapshot(&self, now: Instant) -> Vec<SloSample> {
        let mut out = Vec::new();
        for service in &self.services {
            for slo in &service.slos {
                let spec = &slo.spec;
                let h = &slo.history;
                let cumulative = h.cumulative();
                out.push(SloSample {
                    service: service.name.clone(),
                    slo: spec.name.clone(),
                    sli: spec.sli.as_str(),
                    objective: spec.objective,
                    window_secs: spec.window.0.as_secs_f64(),
                    good_total: cumulative.good,
                    total: cumulative.total,
                    budget_remaining: h.budget_remaining(now, spec.objective, spec.window.0),
                    burn: BURN_WINDOWS
                        .map(|(label, window)| (label, h.burn_rate(now, window, spec.objective))),
                });
            }
        }
        out
    }
}

#[cfg(test)]
mod tests;
