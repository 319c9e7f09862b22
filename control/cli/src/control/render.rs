//! The control plane's JSON as the tables `sockmesh config` prints; pure functions of the
//! reply (shapes: docs/control-plane.md).

use serde_json::Value;

use super::super::table::{seconds, text, utc_millis, Table};
use super::ControlError;

/// Names listed in a CHANGES cell before they are only counted: the table must stay
/// readable when a change touches thousands of services.
const NAMES_SHOWN: usize = 3;

fn array<'a>(reply: &'a Value, expected: &'static str) -> Result<&'a [Value], ControlError> {
    reply
        .as_array()
        .map(Vec::as_slice)
        .ok_or(ControlError::Shape { expected })
}

/// `GET /v1/history`: one row per kept version, newest (the head) first.
pub fn history(reply: &Value) -> Result<String, ControlError> {
    let versions = array(
        reply.get("versions").unwrap_or(&Value::Null),
        "a JSON object with a versions list",
    )?;
    let mut table = Table::new(&[
        "VERSION",
        "CREATED",
        "FINGERPRINT",
        "SERVICES",
        "ORIGIN",
        "CHANGES",
    ]);
    for v in versions {
        table.row(vec![
            text(v.get("version")),
            utc_millis(v.get("created_unix_ms")),
            text(v.get("fingerprint")),
            text(v.get("services")),
            origin(v.get("origin")),
            changes(v.get("changes")),
        ]);
    }
    Ok(table.render())
}

fn origin(value: Option<&Value>) -> String {
    let Some(o) = value else { return "-".into() };
    match o.get("kind").and_then(Value::as_str) {
        Some("rollback") => format!("rollback of {}", text(o.get("of"))),
        Some("source") => text(o.get("source")),
        _ => text(Some(o)),
    }
}

/// `+added ~changed -removed`, then `workloads` and `other` when they changed; `-` when
/// nothing did.
fn changes(value: Option<&Value>) -> String {
    let Some(c) = value else { return "-".into() };
    let mut parts = Vec::new();
    for (sign, key) in [("+", "added"), ("~", "changed"), ("-", "removed")] {
        let names: Vec<String> = c
            .get(key)
            .and_then(Value::as_array)
            .map(|a| a.iter().map(|n| text(Some(n))).collect())
            .unwrap_or_default();
        match names.len() {
            0 => {}
            n if n <= NAMES_SHOWN => parts.push(format!("{sign}{}", names.join(","))),
            n => parts.push(format!("{sign}{n} services")),
        }
    }
    for flag in ["workloads", "other"] {
        if c.get(flag).and_then(Value::as_bool) == Some(true) {
            parts.push(flag.to_owned());
        }
    }
    if parts.is_empty() {
        "-".into()
    } else {
        parts.join(" ")
    }
}

/// `POST /v1/rollback`: one sentence.
pub fn rollback(reply: &Value) -> Result<String, ControlError> {
    let (Some(version), Some(to)) = (
        reply.get("version").and_then(Value::as_u64),
        reply.get("rolled_back_to").and_then(Value::as_u64),
    ) else {
        return Err(ControlError::Shape {
            expected: "a JSON object with version and rolled_back_to",
        });
    };
    let fingerprint = text(reply.get("fingerprint"));
    Ok(
        if reply.get("changed").and_then(Value::as_bool) == Some(false) {
            format!("version {to}'s config is already served (version {version}, fingerprint {fingerprint}): nothing changed\n")
        } else {
            format!("rolled back to version {to}: agents are now served version {version} (fingerprint {fingerprint})\n")
        },
    )
}

/// `GET /v1/agents`: one row per agent.
pub fn agents(reply: &Value) -> Result<String, ControlError> {
    let mut table = Table::new(&[
        "AGENT",
        "APPLIED",
        "LAST-ACK",
        "OK",
        "SYNC-AGE",
        "LAST-SEEN",
        "ERROR",
    ]);
    for a in array(reply, "a JSON array of agents")? {
        table.row(vec![
            text(a.get("agent")),
            text(a.get("applied_version")),
            text(a.get("version")),
            text(a.get("ok")),
            seconds(a.get("sync_age_seconds")),
            utc_millis(a.get("last_seen_unix_ms")),
            text(a.get("error")),
        ]);
    }
    Ok(table.render())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn history_table() {
        let reply = json!({"head": 3, "keep": 20, "versions": [
            {"version": 3, "fingerprint": "cc", "created_unix_ms": 1763800000000u64,
             "origin": {"kind": "rollback", "of": 1}, "services": 1,
             "changes": {"added": [], "removed": [], "changed": ["web"], "workloads": false, "other": false}},
            {"version": 2, "fingerprint": "bb", "created_unix_ms": 1763799999000u64,
             "origin": {"kind": "source", "source": "file /m.yaml"}, "services": 5,
             "changes": {"added": ["a", "b", "c", "d"], "removed": ["x"], "changed": [], "workloads": true, "other": false}},
            {"version": 1, "fingerprint": "aa", "created_unix_ms": 1763799998000u64,
             "origin": {"kind": "source", "source": "file /m.yaml"}, "services": 1,
             "changes": {"added": [], "removed": [], "changed": [], "workloads": false, "other": false}}
        ]});
        let out = history(&reply).unwrap();
        let lines: Vec<&str> = out.lines().collect();
        assert!(lines[0].starts_with("VERSION   CREATED"), "{out}");
        assert!(
            lines[1].starts_with("3 ")
                && lines[1].contains("rollback of 1")
                && lines[1].ends_with("~web"),
            "{out}"
        );
        assert!(
            lines[2].contains("2025-11-22T08:26:39.000Z")
                && lines[2].ends_with("+4 services -x workloads"),
            "{out}"
        );
        assert!(lines[3].ends_with("file /m.yaml    -"), "{out}");
    }

    #[test]
    fn rollback_sentences() {
        let done = json!({"version": 9, "rolled_back_to": 4, "fingerprint": "ab", "changed": true});
        assert_eq!(
            rollback(&done).unwrap(),
            "rolled back to version 4: agents are now served version 9 (fingerprint ab)\n"
        );
        let same =
            json!({"version": 9, "rolled_back_to": 8, "fingerprint": "ab", "changed": false});
        assert!(rollback(&same).unwrap().contains("nothing changed"));
        assert!(rollback(&json!([])).is_err());
    }

    #[test]
    fn agents_table() {
        let reply = json!([
            {"agent": "node-a", "version": 5, "ok": false, "error": "services[0]: no room",
             "applied_version": 4, "fingerprint": "f", "last_seen_unix_ms": 1763800000000u64,
             "sync_age_seconds": 75.0, "in_sync": false},
            {"agent": "node-b", "version": 5, "ok": true, "error": null,
             "applied_version": 5, "fingerprint": "g", "last_seen_unix_ms": 1763800000000u64,
             "sync_age_seconds": 0.0, "in_sync": true}
        ]);
        let out = agents(&reply).unwrap();
        assert!(
            out.contains("node-a   4         5          no    1m15s"),
            "{out}"
        );
        assert!(out.lines().nth(2).unwrap().ends_with("-"), "{out}");
        assert!(agents(&json!({})).is_err());
    }
}
