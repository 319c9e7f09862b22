//! `sockmesh lines`, `sockmesh top` and `sockmesh diagnose`: the topology and diagnosis
//! replies (`/v1/lines`, `/v1/top`, `/v1/diagnose`) for people.

use std::fmt::Write as _;

use serde_json::Value;

use super::super::table::{decimal, text, Table};
use super::{array, RenderError};

/// `GET /v1/lines`: one row per (service, caller), the last 5 min then the 5 min before.
pub fn lines(reply: &Value) -> Result<String, RenderError> {
    let mut table = Table::new(&[
        "SERVICE",
        "CALLER",
        "OK",
        "FAILED",
        "MESH-REFUSED",
        "HANDSHAKE(ms)",
        "PREV-OK",
        "PREV-FAILED",
        "PREV-HANDSHAKE(ms)",
    ]);
    for line in array(reply, "a JSON array of lines")? {
        let last = |field: &str| line.get("last").and_then(|p| p.get(field));
        let previous = |field: &str| line.get("previous").and_then(|p| p.get(field));
        table.row(vec![
            text(line.get("service")),
            text(line.get("caller")),
            text(last("ok")),
            text(last("failed")),
            text(last("refused_by_mesh")),
            decimal(last("handshake_mean_ms"), 2),
            text(previous("ok")),
            text(previous("failed")),
            decimal(previous("handshake_mean_ms"), 2),
        ]);
    }
    Ok(table.render())
}

/// `GET /v1/top`: services worst first, with what ranked them; an http service also shows
/// its requests through the node's L7 proxy (rate, success, share within the tightest
/// `request_latency` threshold), a tcp service `-` there.
pub fn top(reply: &Value) -> Result<String, RenderError> {
    let mut table = Table::new(&[
        "RANK",
        "SERVICE",
        "WORST-SLO",
        "BURN-1H",
        "CONNECTS",
        "FAILED",
        "PREV-FAILED",
        "FAILED+",
        "HANDSHAKE(ms)",
        "PREV-HANDSHAKE(ms)",
        "LATENCY-GROWTH",
        "REQ/S",
        "REQ-FAILED",
        "SUCCESS",
        "WITHIN-LATENCY",
    ]);
    for row in array(reply, "a JSON array of services")? {
        let pair = |field: &str, which: &str| row.get(field).and_then(|p| p.get(which));
        let requests = row.get("requests").filter(|r| !r.is_null());
        let request = |field: &str| requests.and_then(|r| r.get(field));
        table.row(vec![
            text(row.get("rank")),
            text(row.get("service")),
            text(row.get("worst_slo")),
            times(row.get("burn_1h")),
            text(pair("connects", "last")),
            text(pair("failed", "last")),
            text(pair("failed", "previous")),
            signed(row.get("failure_growth")),
            decimal(pair("handshake_mean_ms", "last"), 2),
            decimal(pair("handshake_mean_ms", "previous"), 2),
            times(row.get("latency_growth")),
            decimal(request("rate_per_second"), 1),
            text(request("failed").and_then(|f| f.get("last"))),
            share(request("success")),
            within_latency(request("latency")),
        ]);
    }
    Ok(table.render())
}

/// A share in [0, 1] as `99.50%`; `-` when absent.
fn share(value: Option<&Value>) -> String {
    match value.and_then(Value::as_f64) {
        Some(x) => format!("{:.2}%", 100.0 * x),
        None => text(value),
    }
}

/// `{"threshold_ms": 100.0, "within": 0.9}` as `90.00% <=100ms`; `-` when absent.
fn within_latency(value: Option<&Value>) -> String {
    let Some(latency) = value.filter(|v| !v.is_null()) else {
        return "-".to_owned();
    };
    let threshold = latency.get("threshold_ms").and_then(Value::as_f64);
    match threshold {
        Some(ms) => format!("{} <={ms}ms", share(latency.get("within"))),
        None => "-".to_owned(),
    }
}

/// A factor as `2.50x`; `-` when absent.
fn times(value: Option<&Value>) -> String {
    match value.and_then(Value::as_f64) {
        Some(x) => format!("{x:.2}x"),
        None => text(value),
    }
}

/// A change with its sign: `+12`, `-3`, `0`.
fn signed(value: Option<&Value>) -> String {
    match value.and_then(Value::as_i64) {
        Some(n) if n > 0 => format!("+{n}"),
        Some(n) => n.to_string(),
        None => text(value),
    }
}

/// `GET /v1/diagnose?service=NAME`: the summary, the SLOs' burn, then every cause ranked,
/// each with its evidence.
pub fn diagnose(reply: &Value) -> Result<String, RenderError> {
    let expected = "a JSON object with the service's ranked causes";
    let causes = reply
        .get("causes")
        .and_then(Value::as_array)
        .ok_or(RenderError { expected })?;
    let mut out = String::new();
    let _ = writeln!(out, "{}", text(reply.get("summary")));
    let _ = writeln!(
        out,
        "window: the last {} s, against the {} s before",
        decimal(reply.get("window_secs"), 0),
        decimal(reply.get("baseline_secs"), 0)
    );
    for slo in reply
        .get("slos")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let _ = writeln!(
            out,
            "SLO {}: burning {} over 1h, {} over 5m",
            text(slo.get("slo")),
            times(slo.get("1h")),
            times(slo.get("5m"))
        );
    }
    for (i, cause) in causes.iter().enumerate() {
        let _ = writeln!(
            out,
            "\n{}. {}   score {}",
            i + 1,
            text(cause.get("cause")),
            decimal(cause.get("score"), 2)
        );
        for line in cause
            .get("evidence")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let _ = writeln!(out, "   - {}", text(Some(line)));
        }
    }
    Ok(out)
}

#[cfg(test)]
#[path = "topology_tests.rs"]
mod tests;
