//! The admin API's topology and diagnosis views (shapes in docs/agent-interface.md):
//! `GET /v1/lines`, `GET /v1/top` and `GET /v1/diagnose?service=NAME`.
//!
//! Locks are taken one after another, never together: the SLO tracker's, the engine's
//! views, then the signals' (which holds the recorder).

use serde_json::Value;
use tokio::time::Instant;

use super::{input, lines, score};
use crate::{engine::task::EngineViews, signals::Signals};

pub(crate) fn lines_json(signals: &Signals) -> Value {
    let now = Instant::now();
    let rows = signals.with_recorder(|rec, views, _| {
        let services: Vec<String> = views.iter().map(|v| v.name.clone()).collect();
        lines::lines(rec, now, &services)
    });
    serde_json::to_value(rows).unwrap_or(Value::Null)
}

pub(crate) fn top_json(signals: &Signals) -> Value {
    let slos = signals.slos();
    let now = Instant::now();
    let rows = signals.with_recorder(|rec, views, _| {
        let services: Vec<String> = views.iter().map(|v| v.name.clone()).collect();
        lines::top(rec, now, &services, &slos)
    });
    serde_json::to_value(rows).unwrap_or(Value::Null)
}

/// `None` for a service the applied config does not have.
pub(crate) fn diagnose_json(
    signals: &Signals,
    engine: &EngineViews,
    service: &str,
) -> Option<Value> {
    let slos = signals.slos();
    let (bans, circuits) = (&engine.bans, &engine.circuits);
    let now = Instant::now();
    let diagnosis = signals.with_recorder(|rec, views, workloads| {
        let view = views.iter().find(|v| v.name == service)?;
        let ctx = input::Context {
            workloads,
            backend_workloads: rec.backend_workloads(),
            bans,
            circuits,
            slos: &slos,
        };
        Some(score::diagnose(&input::gather(rec, now, view, &ctx)))
    })?;
    Some(serde_json::to_value(diagnosis).unwrap_or(Value::Null))
}
