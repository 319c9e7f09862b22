//! The scene's screen: header, table rendering and the agent views it reads.

use super::*;

pub(super) fn header(t: &Timeline, started: Instant) -> String {
    let secs = |i: Instant| i.elapsed().as_secs_f64().round();
    let step = match (t.killed, t.restarted, t.back) {
        (None, _, _) => "steady load".to_string(),
        (Some(k), None, _) => format!("{VICTIM} down for {} s", secs(k)),
        (Some(_), Some(r), None) => format!("{VICTIM} listening again for {} s", secs(r)),
        (Some(_), Some(_), Some(b)) => format!("{VICTIM} back for {} s", secs(b)),
    };
    format!(
        "scene: {:>2.0} s (at most {} s), {step}",
        started.elapsed().as_secs_f64().round(),
        SCENE_LIMIT.as_secs()
    )
}

/// The table: per backend, requests answered in the last second and their share, weight,
/// the agent's slots and failed connects (since the scene started), whether the backend
/// listens, and its state in the agent; then the service's circuit.
pub(super) fn render(
    stage: &Stage,
    header: &str,
    per_second: &[u64],
    view: &AgentView,
    failed_at_start: &BTreeMap<SocketAddr, u64>,
    victim_up: bool,
) -> String {
    let mut out = String::new();
    let total: u64 = per_second.iter().sum();
    let _ = writeln!(out, "{header}");
    let _ = writeln!(
        out,
        "    {:<18} {:>6} {:>6} {:>6} {:>6} {:>7} {:>8}  STATE",
        "backend", "conn/s", "share", "weight", "slots", "failed", "listener"
    );
    for (spec, conns) in stage.service.backends.iter().zip(per_second) {
        let agent = view.backends.get(&spec.addr).copied().unwrap_or_default();
        let failed = agent
            .failed
            .saturating_sub(failed_at_start.get(&spec.addr).copied().unwrap_or(0));
        let up = spec.addr != stage.victim || victim_up;
        let state = view
            .bans
            .get(&spec.addr)
            .map_or_else(|| "routed".to_string(), Ban::label);
        let _ = writeln!(
            out,
            "    {:<18} {:>6} {:>5.1}% {:>6} {:>6} {:>7} {:>8}  {state}",
            spec.addr.to_string(),
            conns,
            percent(*conns, total),
            spec.weight,
            agent.slots,
            failed,
            if up { "up" } else { "down" },
        );
    }
    let _ = writeln!(out, "    {}", view.circuit);
    out
}

/// `GET path` on the agent's admin socket, expecting 200 and JSON.
pub(super) fn get_json(agent: &Agent, path: &str) -> Result<Value> {
    let r = agent.get(path)?;
    if r.status != 200 {
        bail!("GET {path} answered {}: {}", r.status, r.body);
    }
    serde_json::from_str(&r.body).with_context(|| format!("{path} is not JSON: {}", r.body))
}

/// `/v1/bans`, the scene's service only, keyed by backend.
pub(super) fn bans(agent: &Agent) -> Result<BTreeMap<SocketAddr, Ban>> {
    let reply = get_json(agent, "/v1/bans")?;
    let mut bans = BTreeMap::new();
    for row in reply.as_array().into_iter().flatten() {
        if row["service"].as_str() != Some(SERVICE) {
            continue;
        }
        let Some(addr) = row["backend"].as_str().and_then(|a| a.parse().ok()) else {
            continue;
        };
        bans.insert(
            addr,
            Ban {
                state: row["state"].as_str().unwrap_or("?").to_string(),
                reason: row["reason"].as_str().unwrap_or("?").to_string(),
                streak: row["streak"].as_u64().unwrap_or(0),
                remaining_s: row["remaining_seconds"].as_f64().unwrap_or(0.0),
            },
        );
    }
    Ok(bans)
}

/// `/v1/bans`, `/v1/backends?service=` and `/v1/circuits` for the scene's service.
pub(super) fn agent_view(agent: &Agent) -> Result<AgentView> {
    let mut backends = BTreeMap::new();
    let reply = get_json(agent, &format!("/v1/backends?service={SERVICE}"))?;
    for row in reply.as_array().into_iter().flatten() {
        let Some(addr) = row["addr"].as_str().and_then(|a| a.parse().ok()) else {
            continue;
        };
        let connects = &row["connects"];
        let count = |k: &str| connects[k].as_u64().unwrap_or(0);
        backends.insert(
            addr,
            AgentBackend {
                slots: row["slots"].as_u64().unwrap_or(0),
                failed: count("refused") + count("timeout") + count("unreachable"),
            },
        );
    }
    let circuits = get_json(agent, "/v1/circuits")?;
    let circuit = circuits
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["service"].as_str() == Some(SERVICE))
        .map_or_else(
            || format!("circuit {SERVICE}: not reported"),
            |c| {
                let state = c["state"].as_str().unwrap_or("?");
                let mut line = format!("circuit {SERVICE}: {state}");
                if state != "closed" {
                    if let Some(p) = c["admit_percent"].as_f64() {
                        let _ = write!(line, ", admitting {p:.0}%");
                    }
                }
                let panic = c["panic_mode"].as_bool().unwrap_or(false);
                let _ = write!(line, ", panic mode {}", if panic { "ON" } else { "off" });
                line
            },
        );
    Ok(AgentView {
        bans: bans(agent)?,
        backends,
        circuit,
    })
}

/// What the scene was still waiting for when it ran out of time.
pub(super) fn missing_step(t: &Timeline) -> String {
    match (t.killed, t.banned, t.restarted, t.back) {
        (None, ..) => "the backend was never killed".to_string(),
        (_, None, ..) => format!("{VICTIM} was never banned"),
        (_, _, None, _) => format!("{VICTIM} was never restarted"),
        _ => format!("{VICTIM} was restarted but never let back in"),
    }
}

/// `now - before`, element-wise (empty `before` counts as zeros).
pub(super) fn delta(now: &[u64], before: &[u64]) -> Vec<u64> {
    now.iter()
        .enumerate()
        .map(|(i, n)| n.saturating_sub(before.get(i).copied().unwrap_or(0)))
        .collect()
}

pub(super) fn percent(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        100.0 * part as f64 / whole as f64
    }
}
