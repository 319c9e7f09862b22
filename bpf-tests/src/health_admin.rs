//! The health side of the agent's admin API: `GET /v1/bans`, `GET /v1/circuits`,
//! `POST /v1/fault`, and polling them until a state shows up.
//!
//! The harness's [`crate::http_get`] only GETs; fault injection is the one POST, so it gets a
//! small client of its own here (same unix socket, `Connection: close`, body to EOF).

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use crate::admin::HttpResponse;
use crate::agent::Agent;

/// How long one admin request may take.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(5);
/// How often the waits below poll.
const POLL: Duration = Duration::from_millis(20);

/// Seconds since the epoch, as a float: the clock the python caller stamps its connects with,
/// so both sides of a test can be put on one time line.
pub fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// `POST path` with a JSON `body` on the unix socket `socket`.
pub fn http_post_unix(socket: &Path, path: &str, body: &str) -> Result<HttpResponse> {
    let mut stream = UnixStream::connect(socket)
        .with_context(|| format!("connecting to admin socket {}", socket.display()))?;
    stream.set_read_timeout(Some(ADMIN_TIMEOUT))?;
    stream.set_write_timeout(Some(ADMIN_TIMEOUT))?;
    write!(
        stream,
        "POST {path} HTTP/1.1\r\nHost: sockmesh-agent\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    let mut raw = Vec::new();
    stream
        .read_to_end(&mut raw)
        .with_context(|| format!("reading the answer to POST {path}"))?;
    let text = String::from_utf8_lossy(&raw);
    let (head, rest) = text
        .split_once("\r\n\r\n")
        .with_context(|| format!("answer to POST {path} has no end of headers: {text:?}"))?;
    let status = head
        .lines()
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("bad status line in {head:?}"))?;
    let chunked = head.lines().any(|l| {
        let l = l.to_ascii_lowercase();
        l.starts_with("transfer-encoding:") && l.contains("chunked")
    });
    let body = if chunked {
        dechunk(rest)
    } else {
        rest.to_string()
    };
    Ok(HttpResponse { status, body })
}

fn dechunk(mut data: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = data.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.split(';').next().unwrap_or("").trim(), 16) else {
            break;
        };
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        data = rest[n..].strip_prefix("\r\n").unwrap_or(&rest[n..]);
    }
    out
}

/// `POST /v1/fault {"service", "refuse_percent"}`; the raw answer (tests also check refusals).
pub fn post_fault(agent: &Agent, service: &str, refuse_percent: f64) -> Result<HttpResponse> {
    let body = json!({"service": service, "refuse_percent": refuse_percent}).to_string();
    http_post_unix(&agent.options().admin_socket(), "/v1/fault", &body)
}

/// `GET /v1/bans`: every excluded backend (`service`, `backend`, `state` banned|probing,
/// `reason`, `streak`, `remaining_seconds`).
pub fn bans(agent: &Agent) -> Result<Vec<Value>> {
    let v = agent.get_json("/v1/bans")?;
    v.as_array()
        .cloned()
        .with_context(|| format!("/v1/bans is not a list: {v}"))
}

/// The `/v1/bans` rows of `service`.
pub fn bans_of(agent: &Agent, service: &str) -> Result<Vec<Value>> {
    Ok(bans(agent)?
        .into_iter()
        .filter(|b| b["service"] == service)
        .collect())
}

/// The `/v1/circuits` row of `service` (`state`, `admit_percent`, `panic_mode`,
/// `min_priority`, `fault_refuse_percent`, ...).
pub fn circuit(agent: &Agent, service: &str) -> Result<Value> {
    let v = agent.get_json("/v1/circuits")?;
    v.as_array()
        .and_then(|rows| rows.iter().find(|r| r["service"] == service))
        .cloned()
        .with_context(|| format!("no circuit for {service} in /v1/circuits: {v}"))
}

/// Polls `probe` until it returns `Some`, at most `timeout`; the error names `what`, the last
/// error `probe` returned and the agent's log tail.
pub fn wait_until<T>(
    agent: &Agent,
    what: &str,
    timeout: Duration,
    mut probe: impl FnMut(&Agent) -> Result<Option<T>>,
) -> Result<T> {
    let deadline = Instant::now() + timeout;
    loop {
        let last = match probe(agent) {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => "condition not met".to_string(),
            Err(e) => format!("{e:#}"),
        };
        if Instant::now() >= deadline {
            bail!(
                "timed out after {timeout:?} waiting for {what} (last: {last})\n{}",
                agent.log_tail(60)
            );
        }
        thread::sleep(POLL);
    }
}

/// Waits until `/v1/circuits` shows `service` with `field == want`; returns that row.
pub fn wait_circuit_field(
    agent: &Agent,
    service: &str,
    field: &str,
    want: &Value,
    timeout: Duration,
) -> Result<Value> {
    let mut last = Value::Null;
    let got = wait_until(
        agent,
        &format!("{service} circuit {field} == {want}"),
        timeout,
        |a| {
            let row = circuit(a, service)?;
            let hit = row[field] == *want;
            last = row.clone();
            Ok(hit.then_some(row))
        },
    );
    got.with_context(|| format!("last /v1/circuits row: {last}"))
}

/// The time of an agent log line (`2026-11-22T12:05:47.131322Z  WARN ...`, UTC), seconds since
/// the epoch: when the agent decided something, on the same clock as [`unix_now`].
pub fn log_line_time(line: &str) -> Option<f64> {
    let stamp = line.split_whitespace().next()?.strip_suffix('Z')?;
    let (date, time) = stamp.split_once('T')?;
    let mut d = date.split('-').map(|p| p.parse::<i64>().ok());
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    let mut t = time.split(':');
    let (h, min) = (
        t.next()?.parse::<i64>().ok()?,
        t.next()?.parse::<i64>().ok()?,
    );
    let sec: f64 = t.next()?.parse().ok()?;
    // Days from civil (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some((days * 86_400 + h * 3_600 + min * 60) as f64 + sec)
}

/// The times of the agent's log lines that contain every one of `needles`, in order.
pub fn log_times(agent: &Agent, needles: &[&str]) -> Vec<f64> {
    agent
        .log()
        .lines()
        .filter(|l| needles.iter().all(|n| l.contains(n)))
        .filter_map(log_line_time)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_log_times() {
        let t = log_line_time("2026-11-22T12:05:47.131322Z  WARN x: backend banned").unwrap();
        assert!((t - 1_795_349_147.131_322).abs() < 1e-5, "{t}");
        assert_eq!(log_line_time("1970-01-01T00:00:01.5Z INFO"), Some(1.5));
        assert_eq!(log_line_time("===== bpf-tests: agent start #1 ====="), None);
    }

    #[test]
    fn dechunks() {
        assert_eq!(dechunk("3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"), "abcde");
        assert_eq!(dechunk("0\r\n\r\n"), "");
    }
}
