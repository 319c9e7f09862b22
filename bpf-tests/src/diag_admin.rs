//! Asking the agent what is wrong: `GET /v1/diagnose?service=`, `/v1/lines` and
//! `/v1/top`, and waiting until a diagnosis is clear, i.e. its top cause scores at least
//! [`CLEAR`] (the agent's own threshold for naming a cause). The wait does not look at WHICH
//! cause is on top: a test asserts that on the first clear diagnosis, so a wrong cause that
//! clears first fails it.

use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use serde_json::Value;

use crate::admin::percent_encode;
use crate::agent::Agent;

/// The score from which the agent's summary names a cause.
pub const CLEAR: f64 = 0.2;

/// `GET /v1/diagnose?service=NAME`, parsed.
pub fn diagnosis(agent: &Agent, service: &str) -> Result<Value> {
    agent.get_json(&format!("/v1/diagnose?service={}", percent_encode(service)))
}

/// (cause, score) in the agent's rank order.
pub fn ranked(diagnosis: &Value) -> Vec<(String, f64)> {
    diagnosis["causes"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| {
            (
                c["cause"].as_str().unwrap_or("?").to_owned(),
                c["score"].as_f64().unwrap_or(f64::NAN),
            )
        })
        .collect()
}

/// The evidence lines of `cause`.
pub fn evidence(diagnosis: &Value, cause: &str) -> Vec<String> {
    diagnosis["causes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|c| c["cause"] == cause)
        .flat_map(|c| c["evidence"].as_array().cloned().unwrap_or_default())
        .filter_map(|e| e.as_str().map(str::to_owned))
        .collect()
}

/// Polls the diagnosis until its top cause scores at least [`CLEAR`]; returns it. `still`
/// is checked between polls (e.g. "the client is still running"), so a wait never outlives
/// the traffic it waits on. The error carries the last diagnosis.
pub fn wait_clear_diagnosis(
    agent: &Agent,
    service: &str,
    timeout: Duration,
    still: impl Fn() -> bool,
) -> Result<Value> {
    let deadline = Instant::now() + timeout;
    let mut last = Value::Null;
    while Instant::now() < deadline {
        if let Ok(d) = diagnosis(agent, service) {
            if ranked(&d).first().is_some_and(|(_, score)| *score >= CLEAR) {
                return Ok(d);
            }
            last = d;
        }
        if !still() {
            break;
        }
        thread::sleep(Duration::from_millis(500));
    }
    bail!("no clear diagnosis of {service} within {timeout:?}; last: {last:#}")
}

/// The `/v1/lines` row of (service, caller), if any.
pub fn line(agent: &Agent, service: &str, caller: &str) -> Result<Option<Value>> {
    let rows = agent.get_json("/v1/lines")?;
    Ok(rows.as_array().and_then(|rows| {
        rows.iter()
            .find(|r| r["service"] == service && r["caller"] == caller)
            .cloned()
    }))
}

/// Polls `/v1/lines` until the (service, caller) row's last period shows exactly `ok` and
/// `failed` connects (events are folded on the agent's 20 ms drain); returns the row.
pub fn wait_line(
    agent: &Agent,
    service: &str,
    caller: &str,
    ok: u64,
    failed: u64,
    timeout: Duration,
) -> Result<Value> {
    let deadline = Instant::now() + timeout;
    let mut last = None;
    while Instant::now() < deadline {
        let row = line(agent, service, caller)?;
        if let Some(r) = &row {
            if r["last"]["ok"] == ok && r["last"]["failed"] == failed {
                return Ok(r.clone());
            }
        }
        last = row;
        thread::sleep(Duration::from_millis(100));
    }
    bail!("line {service} <- {caller} never showed ok {ok}, failed {failed}; last: {last:?}")
}
