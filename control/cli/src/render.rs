//! The admin API's JSON, turned into the tables `sockmesh` prints. Pure functions of the
//! reply, so each is tested on JSON shaped like `docs/agent-interface.md`.

use serde_json::Value;

use super::table::{
    count, decimal, labels, percent, record, seconds, text, utc_millis, vip_port, Table,
};
use sockmesh_model::Priority;

mod topology;
pub use topology::{diagnose, lines, top};

/// The reply does not have the shape the contract gives it (say, an object where a list
/// belongs), so no table can be made of it. `-o json` still shows it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the agent's reply is not {expected} (try -o json to see it)")]
pub struct RenderError {
    pub expected: &'static str,
}

fn array<'a>(reply: &'a Value, expected: &'static str) -> Result<&'a [Value], RenderError> {
    reply
        .as_array()
        .map(Vec::as_slice)
        .ok_or(RenderError { expected })
}

/// `GET /status` as one `key: value` line per fact.
pub fn status(reply: &Value) -> Result<String, RenderError> {
    if !reply.is_object() {
        return Err(RenderError {
            expected: "a JSON object with the agent's status",
        });
    }
    let config = reply.get("config");
    let field = |name: &str| config.and_then(|c| c.get(name));
    Ok(record(&[
        ("ready", text(reply.get("ready"))),
        ("adopted", text(reply.get("adopted"))),
        ("cgroup", text(reply.get("cgroup"))),
        ("bpffs", text(reply.get("bpffs"))),
        ("config", text(field("source"))),
        ("fingerprint", text(field("fingerprint"))),
        ("applied at", utc_millis(field("applied_at_unix_ms"))),
        ("applies", text(field("applies"))),
        ("rejected", text(field("rejected"))),
        ("last error", text(field("last_error"))),
        ("services", count(reply.get("services"))),
    ]))
}

/// `GET /v1/services`: one row per service.
pub fn services(reply: &Value) -> Result<String, RenderError> {
    let mut table = Table::new(&["NAME", "VIP:PORT", "LB", "BACKENDS", "SLOTS"]);
    for service in array(reply, "a JSON array of services")? {
        table.row(vec![
            text(service.get("name")),
            vip_port(service.get("vip"), service.get("port")),
            text(service.get("lb")),
            count(service.get("backends")),
            text(service.get("slot_table_len")),
        ]);
    }
    Ok(table.render())
}

/// `GET /v1/backends?service=NAME`: one row per backend with its live connection stats.
pub fn backends(reply: &Value) -> Result<String, RenderError> {
    let mut table = Table::new(&[
        "ADDR",
        "WEIGHT",
        "SLOTS",
        "OK",
        "REFUSED",
        "TIMEOUT",
        "RESET",
        "ACTIVE",
        "HANDSHAKE(ms)",
        "SRTT(us)",
        "RETRANS",
    ]);
    for backend in array(reply, "a JSON array of backends")? {
        let connects = |result: &str| text(backend.get("connects").and_then(|c| c.get(result)));
        table.row(vec![
            text(backend.get("addr")),
            text(backend.get("weight")),
            text(backend.get("slots")),
            connects("ok"),
            connects("refused"),
            connects("timeout"),
            connects("reset"),
            text(backend.get("active")),
            // Loopback handshakes take tens of microseconds: two decimals keep them visible.
            decimal(backend.get("handshake_mean_ms"), 2),
            decimal(backend.get("srtt_mean_us"), 0),
            text(backend.get("retransmits")),
        ]);
    }
    Ok(table.render())
}

/// `GET /v1/workloads`: one row per workload with its CPU starvation figures.
pub fn workloads(reply: &Value) -> Result<String, RenderError> {
    let mut table = Table::new(&[
        "NAME",
        "CGROUP",
        "THREADS",
        "RUNQ-WAITS",
        "RUNQ-MEAN(us)",
        "RUNQ>1ms",
        "THROTTLED(s)",
        "NR-THROTTLED",
        "LABELS",
    ]);
    for workload in array(reply, "a JSON array of workloads")? {
        let runqueue = |field: &str| workload.get("runqueue").and_then(|r| r.get(field));
        table.row(vec![
            text(workload.get("name")),
            text(workload.get("cgroup")),
            text(workload.get("threads")),
            text(runqueue("count")),
            decimal(runqueue("mean_us"), 1),
            text(runqueue("over_1ms")),
            decimal(workload.get("throttled_seconds"), 3),
            text(workload.get("nr_throttled")),
            // Last: the only column of unbounded width.
            labels(workload.get("labels")),
        ]);
    }
    Ok(table.render())
}

/// `GET /v1/failures`: the most recent failed connects, newest first, as the agent sent them.
pub fn failures(reply: &Value) -> Result<String, RenderError> {
    let mut table = Table::new(&[
        "TIME",
        "SERVICE",
        "BACKEND",
        "CALLER",
        "RESULT",
        "DURATION(ms)",
    ]);
    for failure in array(reply, "a JSON array of failed connects")? {
        table.row(vec![
            utc_millis(failure.get("unix_ms")),
            text(failure.get("service")),
            text(failure.get("backend")),
            text(failure.get("caller")),
            text(failure.get("result")),
            decimal(failure.get("duration_ms"), 1),
        ]);
    }
    Ok(table.render())
}

/// `GET /v1/bans`: one row per backend kept out of its service's slot table.
pub fn bans(reply: &Value) -> Result<String, RenderError> {
    let mut table = Table::new(&[
        "SERVICE",
        "BACKEND",
        "STATE",
        "REASON",
        "STREAK",
        "REMAINING",
    ]);
    for ban in array(reply, "a JSON array of bans")? {
        let state = ban.get("state");
        // A probing backend's ban is over; it waits on the probe, not on a clock.
        let remaining = if state.and_then(Value::as_str) == Some("probing") {
            "-".to_owned()
        } else {
            seconds(ban.get("remaining_seconds"))
        };
        table.row(vec![
            text(ban.get("service")),
            text(ban.get("backend")),
            text(state),
            text(ban.get("reason")),
            text(ban.get("streak")),
            remaining,
        ]);
    }
    Ok(table.render())
}

/// `GET /v1/circuits`: one row per service with its circuit and what the kernel refuses.
pub fn circuits(reply: &Value) -> Result<String, RenderError> {
    let mut table = Table::new(&["SERVICE", "STATE", "ADMIT%", "PANIC", "SHED>=", "FAULT%"]);
    for circuit in array(reply, "a JSON array of circuits")? {
        let mut state = text(circuit.get("state"));
        // An open circuit turns half-open after its cool-down: say when.
        if let Some(reopens) = circuit.get("reopens_in_seconds").filter(|v| v.is_number()) {
            state = format!("{state} ({})", seconds(Some(reopens)));
        }
        table.row(vec![
            text(circuit.get("service")),
            state,
            percent(circuit.get("admit_percent")),
            text(circuit.get("panic_mode")),
            min_priority(circuit.get("min_priority")),
            percent(circuit.get("fault_refuse_percent")),
        ]);
    }
    Ok(table.render())
}

/// The lowest caller priority admitted, by its config name: `online` means offline callers
/// are shed. `-` when 0, which admits everyone (nothing is shed).
fn min_priority(value: Option<&Value>) -> String {
    let Some(level) = value.and_then(Value::as_u64) else {
        return text(value);
    };
    if level == 0 {
        return "-".to_owned();
    }
    [Priority::Offline, Priority::Online]
        .into_iter()
        .find(|p| u64::from(p.level()) == level)
        .map_or_else(|| level.to_string(), |p| p.as_str().to_owned())
}

/// `POST /v1/fault`'s reply, `{"service", "refuse_percent"}`, as one sentence.
pub fn fault(reply: &Value) -> Result<String, RenderError> {
    let (Some(service), Some(refuse)) = (
        reply.get("service"),
        reply.get("refuse_percent").and_then(Value::as_f64),
    ) else {
        return Err(RenderError {
            expected: "a JSON object with the service and its refuse_percent",
        });
    };
    let service = text(Some(service));
    Ok(if refuse == 0.0 {
        format!("fault drill on {service} ended: no connects refused\n")
    } else {
        let shown = percent(reply.get("refuse_percent"));
        format!("fault drill on {service}: refusing {shown}% of connects\n")
    })
}

#[cfg(test)]
#[path = "render_tests.rs"]
mod tests;
