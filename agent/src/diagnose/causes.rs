//! The four kernel-signal cause scorers of [`super::score::diagnose`] (the fifth, from the
//! L7 proxy's requests, is [`super::backend_errors`]). Each returns its score in [0, 1] and
//! the evidence an operator can check, strongest first (the summary quotes the first line).

use super::score::{
    BackendSignals, BackendWindow, Cause, DiagnoseInput, Role, CHRONIC, FAILING_RATIO,
    FULL_FAILURE_SHARE, FULL_REFUSAL_SHARE, MIN_FAILURES, MIN_REFUSALS, RETRANSMIT_FLOOR,
};

pub(super) fn pct(part: u64, whole: u64) -> f64 {
    100.0 * part as f64 / whole.max(1) as f64
}

/// How few of `n` backends `k` is: 1 for one backend, 0.5 when all of them (or when the
/// service has only one: then "this backend" and "the service" cannot be told apart).
pub(super) fn fewness(k: usize, n: usize) -> f64 {
    if n <= 1 {
        0.5
    } else {
        1.0 - 0.5 * k.saturating_sub(1) as f64 / (n - 1) as f64
    }
}

/// "a few backends fail": what share of the service's failures the failing backends carry,
/// times how few they are (1 of n: 1.0, all n: 0.5), times severity (the service's failure
/// share, full at 5 %). A ban for failures alone scores 0.8 times the fewness; a ban for
/// latency, srtt or retransmits 0.5.
pub(super) fn backends_failing(input: &DiagnoseInput) -> Cause {
    let window = input.recent_secs;
    let n = input.backends.len();
    let total_failed: u64 = input.backends.iter().map(|b| b.recent.failed()).sum();
    let total_attempts: u64 = input.backends.iter().map(|b| b.recent.attempts()).sum();
    let is_failing = |b: &BackendWindow| {
        b.failed() >= 3 && b.failed() as f64 >= FAILING_RATIO * b.attempts() as f64
    };
    let mut failing: Vec<&BackendSignals> = input
        .backends
        .iter()
        .filter(|b| is_failing(&b.recent) || b.ban.as_ref().is_some_and(|x| x.for_failures()))
        .collect();
    failing.sort_by_key(|b| std::cmp::Reverse(b.recent.failed()));
    let other_bans: Vec<&BackendSignals> = input
        .backends
        .iter()
        .filter(|b| {
            b.ban
                .as_ref()
                .is_some_and(|x| !x.for_failures() && !x.for_request_errors())
        })
        .collect();
    let fewness = |k: usize| fewness(k, n);

    let mut evidence = Vec::new();
    for b in &failing {
        let r = &b.recent;
        let mut line = if r.attempts() > 0 {
            format!(
                "{}: {} of {} connects failed in the last {window:.0} s{}",
                b.addr,
                r.failed(),
                r.attempts(),
                kinds(r)
            )
        } else {
            format!("{}: no connects in the last {window:.0} s", b.addr)
        };
        if let Some(ban) = &b.ban {
            line.push_str(&format!("; {} ({})", ban.state, ban.reason));
        }
        let before = &b.baseline;
        if before.attempts() > 0 {
            line.push_str(&format!(
                "; before: {} of {}",
                before.failed(),
                before.attempts()
            ));
        }
        evidence.push(line);
    }
    let on_failing: u64 = failing.iter().map(|b| b.recent.failed()).sum();
    let mut score: f64 = 0.0;
    if total_failed >= MIN_FAILURES && !failing.is_empty() {
        let concentration = on_failing as f64 / total_failed as f64;
        let severity =
            (total_failed as f64 / total_attempts.max(1) as f64 / FULL_FAILURE_SHARE).min(1.0);
        score = concentration * fewness(failing.len()) * severity;
        evidence.push(format!(
            "{} of {n} backends carry {:.0}% of the service's {total_failed} failed connects \
             ({:.1}% of {total_attempts})",
            failing.len(),
            pct(on_failing, total_failed),
            pct(total_failed, total_attempts)
        ));
    } else if total_failed > 0 && failing.is_empty() {
        evidence.push(format!(
            "{total_failed} of {total_attempts} connects failed in the last {window:.0} s, \
             spread thinly: no backend fails most of its connects"
        ));
    }
    if failing
        .iter()
        .any(|b| b.ban.as_ref().is_some_and(|x| x.for_failures()))
    {
        score = score.max(0.8 * fewness(failing.len()));
    }
    for b in &other_bans {
        let ban = b.ban.as_ref().expect("filtered on bans");
        evidence.push(format!(
            "{}: {} ({}): worse than the service's other backends",
            b.addr, ban.state, ban.reason
        ));
        score = score.max(0.5 * fewness(other_bans.len()));
    }
    if input.circuit.as_ref().is_some_and(|c| c.panic_mode) {
        evidence.push(
            "panic mode: more backends fail than max_banned_percent allows banning".to_owned(),
        );
    }
    // Failing as much before as now: a standing problem, not what changed.
    let chronic = !failing.is_empty()
        && failing
            .iter()
            .all(|b| b.baseline.attempts() > 0 && is_failing(&b.baseline));
    if chronic {
        score *= CHRONIC;
        evidence.push("the same backends were failing in the 5 min before".to_owned());
    }
    Cause {
        cause: "backends_failing",
        score,
        evidence,
    }
}

fn kinds(w: &BackendWindow) -> String {
    let parts: Vec<String> = [
        ("refused", w.refused),
        ("timeout", w.timeout),
        ("unreachable", w.unreachable),
    ]
    .iter()
    .filter(|(_, n)| *n > 0)
    .map(|(k, n)| format!("{k} {n}"))
    .collect();
    if parts.is_empty() {
        return String::new();
    }
    format!(" ({})", parts.join(", "))
}

/// "the network loses packets": the share of the backends with traffic whose retransmits
/// per connection are above the floor (or whose SYNs time out), in full only when that is at
/// least two backends and half of them; one lossy backend alone scores 0.4 times its share.
pub(super) fn network(input: &DiagnoseInput) -> Cause {
    let window = input.recent_secs;
    let considered: Vec<&BackendSignals> = input
        .backends
        .iter()
        .filter(|b| b.recent.attempts() > 0 || b.recent.connections > 0)
        .collect();
    let mut lossy: Vec<&BackendSignals> = considered
        .iter()
        .copied()
        .filter(|b| b.recent.lossy() || b.recent.syn_trouble())
        .collect();
    lossy.sort_by(|a, b| {
        b.recent
            .retransmits_per_connection()
            .total_cmp(&a.recent.retransmits_per_connection())
    });
    let (c, m) = (considered.len(), lossy.len());
    let mut evidence = Vec::new();
    if m == 0 {
        if c > 0 {
            evidence.push(format!(
                "no backend retransmitted more than {RETRANSMIT_FLOOR} per connection in the \
                 last {window:.0} s ({} retransmits, {c} {} with traffic)",
                considered.iter().map(|b| b.recent.retransmits).sum::<u64>(),
                if c == 1 { "backend" } else { "backends" }
            ));
        }
        return Cause {
            cause: "network",
            score: 0.0,
            evidence,
        };
    }
    let share = m as f64 / c as f64;
    let many = if m >= 2 && share >= 0.5 { 1.0 } else { 0.4 };
    evidence.push(format!(
        "packet loss on {m} of {c} backends with traffic in the last {window:.0} s"
    ));
    for b in &lossy {
        let (r, before) = (&b.recent, &b.baseline);
        let mut line = format!(
            "{}: {} retransmits ({} RTOs) over {} connections, {:.1} per connection",
            b.addr,
            r.retransmits,
            r.rtos,
            r.connections,
            r.retransmits_per_connection()
        );
        if r.syn_trouble() {
            line.push_str(&format!(
                "; {} of {} connects timed out or unreachable",
                r.timeout + r.unreachable,
                r.attempts()
            ));
        }
        if before.connections > 0 || before.attempts() > 0 {
            line.push_str(&format!(
                "; before: {:.1} per connection",
                before.retransmits_per_connection()
            ));
        }
        evidence.push(line);
    }
    let new = lossy
        .iter()
        .any(|b| !(b.baseline.lossy() || b.baseline.syn_trouble()));
    let mut score = share * many;
    if !new {
        score *= CHRONIC;
        evidence.push("as lossy in the 5 min before: not new".to_owned());
    }
    if many < 1.0 {
        evidence.push("loss on a single backend points at that backend, not the network".into());
    }
    Cause {
        cause: "network",
        score,
        evidence,
    }
}

/// "callers or backends are starved of CPU": the worst workload's starvation
/// ([`super::score::CpuWindow::starvation`]).
pub(super) fn cpu_starvation(input: &DiagnoseInput) -> Cause {
    let window = input.recent_secs;
    let mut rated: Vec<(f64, &super::score::WorkloadSignals)> = input
        .workloads
        .iter()
        .map(|w| (w.recent.starvation(), w))
        .collect();
    rated.sort_by(|a, b| b.0.total_cmp(&a.0));
    let mut evidence = Vec::new();
    if rated.is_empty() {
        evidence.push(format!(
            "no configured workload calls {} or serves its backends: no CPU signals to judge",
            input.service
        ));
    }
    for (s, w) in &rated {
        let role = match w.role {
            Role::Caller => "caller",
            Role::Backend => "backend",
        };
        let r = &w.recent;
        let mut line = format!(
            "{role} workload {}: {:.0}% of {} run-queue waits over 1 ms (mean {:.2} ms)",
            w.name,
            100.0 * r.over_1ms_share(),
            r.waits,
            r.mean_wait_ms()
        );
        if r.nr_throttled > 0 {
            // cpu.stat sums throttled time over the CPUs the cgroup was throttled on, so it
            // may exceed the wall time observed.
            line.push_str(&format!(
                ", throttled {} times in {:.0} s observed ({:.1} s summed over CPUs)",
                r.nr_throttled,
                r.seconds.min(window),
                r.throttled_seconds
            ));
        } else {
            line.push_str(", not throttled");
        }
        let b = &w.baseline;
        if b.seconds > 0.0 {
            line.push_str(&format!(
                "; before: {:.0}% over 1 ms, throttled {} times in {:.0} s",
                100.0 * b.over_1ms_share(),
                b.nr_throttled,
                b.seconds
            ));
        }
        if *s == 0.0 {
            line.push_str(": not starved");
        }
        evidence.push(line);
    }
    let mut score = rated.first().map_or(0.0, |(s, _)| *s);
    if let Some((s, w)) = rated.first() {
        if *s > 0.0 && w.baseline.seconds > 0.0 && w.baseline.starvation() >= 0.75 * s {
            score *= CHRONIC;
            evidence.push(format!("{} was as starved in the 5 min before", w.name));
        }
    }
    Cause {
        cause: "cpu_starvation",
        score,
        evidence,
    }
}

/// "the service is overloaded": the share of connects refused by limits or shedding (full at
/// 10 %). An open circuit's refusals count at most 0.5: circuits open because connects fail,
/// so they are more often a consequence than the cause.
pub(super) fn overload(input: &DiagnoseInput) -> Cause {
    let window = input.recent_secs;
    let r = &input.refusals;
    let share = |n: u64| (n as f64 / r.attempts.max(1) as f64 / FULL_REFUSAL_SHARE).min(1.0);
    let limits = r.limited + r.shed;
    let mut score: f64 = 0.0;
    let mut evidence = Vec::new();
    if limits >= MIN_REFUSALS {
        score = score.max(share(limits));
        evidence.push(format!(
            "limits refused {} and shedding {} of {} connects ({:.1}%) in the last {window:.0} s",
            r.limited,
            r.shed,
            r.attempts,
            pct(limits, r.attempts)
        ));
    }
    if r.circuit_open >= MIN_REFUSALS {
        score = score.max(0.5 * share(r.circuit_open));
        evidence.push(format!(
            "the circuit refused {} of {} connects ({:.1}%): it opens when connects fail, so \
             check the other causes too",
            r.circuit_open,
            r.attempts,
            pct(r.circuit_open, r.attempts)
        ));
    }
    if let Some(c) = input.circuit.as_ref().filter(|c| c.state != "closed") {
        evidence.push(format!("circuit {} now", c.state));
    }
    if evidence.is_empty() {
        evidence.push(format!(
            "no connects refused by limits, shedding or the circuit in the last {window:.0} s"
        ));
    }
    Cause {
        cause: "overload",
        score,
        evidence,
    }
}
