//! What an operator looks at on a node: the `sockmesh` CLI against the agent's admin socket,
//! and the waits a signals test needs before its numbers mean anything (workloads resolved,
//! event-driven counters caught up with the traffic).

use std::process::{Command, Output};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::Value;

use crate::agent::Agent;
use crate::cli_bin;

/// How long the agent may take to resolve newly configured workloads (it re-reads them once
/// a second) or to fold a burst of events into its counters (it drains every 20 ms).
pub const SIGNAL_TIMEOUT: Duration = Duration::from_secs(10);
/// Extra wait after a counter first shows the expected value, so a late event that would
/// overshoot it is seen too.
const SETTLE: Duration = Duration::from_millis(300);

/// Runs `sockmesh --admin-socket <agent's socket> <args>` ([`cli_bin`]).
pub fn sockmesh_cli(agent: &Agent, args: &[&str]) -> Result<Output> {
    Command::new(cli_bin())
        .arg("--admin-socket")
        .arg(agent.options().admin_socket())
        .args(args)
        .output()
        .context("running the sockmesh CLI")
}

/// [`sockmesh_cli`] with `-o json`, expecting exit 0 and a JSON document on stdout.
pub fn sockmesh_cli_json(agent: &Agent, args: &[&str]) -> Result<Value> {
    let mut all = args.to_vec();
    all.extend(["-o", "json"]);
    let out = sockmesh_cli(agent, &all)?;
    if !out.status.success() {
        bail!(
            "`sockmesh {}` exited {}: {}",
            all.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    serde_json::from_slice(&out.stdout).with_context(|| {
        format!(
            "`sockmesh {}` printed no JSON: {}",
            all.join(" "),
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

/// Polls `/v1/workloads` until every one of `names` is listed with a cgroup id (the agent
/// found its cgroup, so callers in it are attributed by name); returns that answer.
pub fn wait_workloads(agent: &Agent, names: &[&str], timeout: Duration) -> Result<Value> {
    let deadline = Instant::now() + timeout;
    let mut last = Value::Null;
    while Instant::now() < deadline {
        if let Ok(rows) = agent.get_json("/v1/workloads") {
            let resolved = |name: &str| {
                rows.as_array().is_some_and(|rows| {
                    rows.iter()
                        .any(|w| w["name"] == name && w["cgroup_id"].as_u64().is_some())
                })
            };
            if names.iter().all(|n| resolved(n)) {
                return Ok(rows);
            }
            last = rows;
        }
        thread::sleep(Duration::from_millis(100));
    }
    bail!("workloads {names:?} not resolved after {timeout:?}; /v1/workloads: {last:#}")
}

/// Scrapes until `value(text)` equals `want`, then once more after a short settle, and
/// returns that last scrape: its value equals `want` unless an extra event overshot it
/// (which the caller's assertion then shows). Fails with the last value if `want` is never
/// reached.
pub fn wait_counter_settled(
    agent: &mut Agent,
    what: &str,
    want: f64,
    value: impl Fn(&str) -> f64,
) -> Result<String> {
    agent
        .wait_metrics(&format!("{what} == {want}"), SIGNAL_TIMEOUT, |t| {
            value(t) >= want
        })
        .with_context(|| format!("{what} never reached {want}"))?;
    thread::sleep(SETTLE);
    agent.metrics_text()
}
