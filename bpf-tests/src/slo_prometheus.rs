//! A real Prometheus that loads rule files, for the SLO tests.
//!
//! The harness's [`crate::Prometheus`] guard, started with rule files
//! ([`crate::Prometheus::start_with_rules`]), gains here the queries rule tests need: every
//! series of an answer, and the alert and rule state the HTTP API reports (`/api/v1/alerts`,
//! `/api/v1/rules`).
//!
//! [`shipped_rules`] reads `deploy/prometheus/sockmesh-rules.yaml`; [`with_alert_for`]
//! changes one alert's `for:` in a copy of it, and [`promtool_check_rules`] checks a rule
//! file the way CI does.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde_json::Value;

use crate::admin::{http_get_tcp, percent_encode};
use crate::prometheus::{Prometheus, PROMTOOL_BIN};

const HOW: &str = "Debian's `prometheus` package provides it: `apt-get install prometheus`, \
                   or `cargo xtask setup`";
const HTTP_TIMEOUT: Duration = Duration::from_secs(5);

fn require(bin: &str) {
    assert!(Path::new(bin).is_file(), "{bin} is missing: {HOW}");
}

/// A file of the repository, relative to its root (`deploy/metrics.txt`).
pub fn repo_path(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("bpf-tests lives in the workspace root")
        .join(relative)
}

/// The shipped rule file, `deploy/prometheus/sockmesh-rules.yaml`, as text.
pub fn shipped_rules() -> Result<String> {
    let path = repo_path("deploy/prometheus/sockmesh-rules.yaml");
    std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))
}

/// `rules` with the `for:` of alert `alert` replaced by `new_for` (e.g. `5s`), every other
/// line unchanged. Fails unless the alert exists and has exactly one `for:` line in its own
/// rule (up to the next `- alert:`/`- record:` or group).
pub fn with_alert_for(rules: &str, alert: &str, new_for: &str) -> Result<String> {
    let header = format!("- alert: {alert}");
    let mut out = String::with_capacity(rules.len());
    let mut in_rule = false;
    let mut seen_rule = false;
    let mut replaced = 0;
    for line in rules.lines() {
        let trimmed = line.trim_start();
        if trimmed.starts_with("- alert:")
            || trimmed.starts_with("- record:")
            || trimmed.starts_with("- name:")
        {
            in_rule = trimmed == header;
            seen_rule |= in_rule;
        }
        if in_rule && trimmed.starts_with("for:") {
            let indent = &line[..line.len() - trimmed.len()];
            out.push_str(&format!("{indent}for: {new_for}"));
            replaced += 1;
        } else {
            out.push_str(line);
        }
        out.push('\n');
    }
    if !seen_rule {
        bail!("no alert {alert} in the rules");
    }
    if replaced != 1 {
        bail!("alert {alert} has {replaced} `for:` lines, expected one");
    }
    Ok(out)
}

/// `promtool check rules FILE`.
///
/// # Panics
/// When `/usr/bin/promtool` is missing.
pub fn promtool_check_rules(file: &Path) -> Result<Output> {
    require(PROMTOOL_BIN);
    Command::new(PROMTOOL_BIN)
        .args(["check", "rules"])
        .arg(file)
        .output()
        .with_context(|| format!("running {PROMTOOL_BIN} check rules"))
}

/// One alert as `/api/v1/alerts` reports it.
#[derive(Debug, Clone, PartialEq)]
pub struct AlertState {
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    /// `pending` or `firing`.
    pub state: String,
    /// When the expression first held (RFC 3339), as Prometheus reports it.
    pub active_at: String,
    pub value: String,
}

impl AlertState {
    /// The value of label `name`, if any.
    pub fn label(&self, name: &str) -> Option<&str> {
        self.labels.get(name).map(String::as_str)
    }

    fn from_json(v: &Value) -> Result<Self> {
        let map = |key: &str| -> BTreeMap<String, String> {
            v[key]
                .as_object()
                .map(|o| {
                    o.iter()
                        .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                        .collect()
                })
                .unwrap_or_default()
        };
        let text = |key: &str| v[key].as_str().unwrap_or_default().to_string();
        let state = text("state");
        if state.is_empty() {
            bail!("alert without a state: {v}");
        }
        Ok(AlertState {
            labels: map("labels"),
            annotations: map("annotations"),
            state,
            active_at: text("activeAt"),
            value: text("value"),
        })
    }
}

/// One rule as `/api/v1/rules` reports it: `health` is `ok`, `err` or `unknown` (not
/// evaluated yet).
#[derive(Debug, Clone, PartialEq)]
pub struct RuleHealth {
    pub group: String,
    pub name: String,
    pub health: String,
    pub last_error: String,
}

/// Rule and alert queries on the harness's Prometheus guard (started with
/// [`Prometheus::start_with_rules`]).
impl Prometheus {
    /// `GET path` on the HTTP API, expecting 200 and `"status": "success"`; the `data`.
    pub fn get_data(&self, path: &str) -> Result<Value> {
        let r = http_get_tcp(self.addr(), path, HTTP_TIMEOUT)?;
        let body: Value = serde_json::from_str(&r.body)
            .with_context(|| format!("GET {path}: answer is not JSON: {}", r.body))?;
        if r.status != 200 || body["status"] != "success" {
            bail!("GET {path}: {} {}", r.status, r.body);
        }
        Ok(body["data"].clone())
    }

    /// An instant PromQL query: every series of the answer as (labels, value).
    pub fn query(&self, promql: &str) -> Result<Vec<(BTreeMap<String, String>, f64)>> {
        let data = self.get_data(&format!("/api/v1/query?query={}", percent_encode(promql)))?;
        let result = data["result"]
            .as_array()
            .with_context(|| format!("query {promql}: no result vector: {data}"))?;
        result
            .iter()
            .map(|series| {
                let labels = series["metric"]
                    .as_object()
                    .map(|o| {
                        o.iter()
                            .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                            .collect()
                    })
                    .unwrap_or_default();
                let text = series["value"][1]
                    .as_str()
                    .with_context(|| format!("query {promql}: no value in {series}"))?;
                let value = match text {
                    "+Inf" => f64::INFINITY,
                    "-Inf" => f64::NEG_INFINITY,
                    t => t.parse().with_context(|| format!("value {t:?}"))?,
                };
                Ok((labels, value))
            })
            .collect()
    }

    /// The value of a single-series answer (`None` for an empty one; an error for several).
    pub fn query_one(&self, promql: &str) -> Result<Option<f64>> {
        let series = self.query(promql)?;
        match series.as_slice() {
            [] => Ok(None),
            [(_, v)] => Ok(Some(*v)),
            many => bail!(
                "query {promql}: {} series, expected one: {many:?}",
                many.len()
            ),
        }
    }

    /// Every pending or firing alert (`/api/v1/alerts`).
    pub fn alerts(&self) -> Result<Vec<AlertState>> {
        let data = self.get_data("/api/v1/alerts")?;
        data["alerts"]
            .as_array()
            .with_context(|| format!("/api/v1/alerts: no alerts list: {data}"))?
            .iter()
            .map(AlertState::from_json)
            .collect()
    }

    /// Every loaded rule with its evaluation health (`/api/v1/rules`).
    pub fn rule_health(&self) -> Result<Vec<RuleHealth>> {
        let data = self.get_data("/api/v1/rules")?;
        let mut out = Vec::new();
        for group in data["groups"].as_array().into_iter().flatten() {
            let group_name = group["name"].as_str().unwrap_or_default();
            for rule in group["rules"].as_array().into_iter().flatten() {
                out.push(RuleHealth {
                    group: group_name.to_string(),
                    name: rule["name"].as_str().unwrap_or_default().to_string(),
                    health: rule["health"].as_str().unwrap_or_default().to_string(),
                    last_error: rule["lastError"].as_str().unwrap_or_default().to_string(),
                });
            }
        }
        Ok(out)
    }
}

/// The metric family names a classic-format exposition declares in its `# TYPE` lines, with
/// their types (`counter` families are named with `_total` there, histograms by their base
/// name).
pub fn exposition_families(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|rest| {
            let (name, kind) = rest.split_once(' ')?;
            Some((name.to_string(), kind.trim().to_string()))
        })
        .collect()
}

/// The families `deploy/metrics.txt` lists (comments and blank lines skipped).
pub fn listed_families(metrics_txt: &str) -> Vec<String> {
    metrics_txt
        .lines()
        .map(|l| l.split('#').next().unwrap_or_default().trim())
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const RULES: &str = "groups:\n  - name: a\n    rules:\n      - alert: Page\n        expr: x > 1\n        for: 2m\n        labels:\n          severity: page\n      - alert: Ticket\n        expr: x > 0\n        for: 15m\n";

    #[test]
    fn changes_only_the_named_alerts_for() {
        let out = with_alert_for(RULES, "Page", "5s").unwrap();
        assert!(out.contains("      - alert: Page\n        expr: x > 1\n        for: 5s\n"));
        assert!(out.contains("        for: 15m\n"));
        assert_eq!(out.lines().count(), RULES.lines().count());
        assert!(with_alert_for(RULES, "Missing", "5s").is_err());
        assert!(with_alert_for(
            "groups:\n  - name: a\n    rules:\n      - alert: P\n        expr: x\n",
            "P",
            "5s"
        )
        .is_err());
    }

    #[test]
    fn the_shipped_page_alert_has_one_for() {
        let rules = shipped_rules().unwrap();
        let out = with_alert_for(&rules, "SockmeshSLOBurnRatePage", "5s").unwrap();
        assert!(rules.contains("for: 2m"));
        assert!(!out.contains("for: 2m"));
        assert!(out.contains("for: 15m"));
    }

    #[test]
    fn families_from_type_lines_and_the_list() {
        let text =
            "# HELP a_total A.\n# TYPE a_total counter\na_total 1\n# TYPE h histogram\nh_count 0\n";
        let f = exposition_families(text);
        assert_eq!(f.get("a_total").map(String::as_str), Some("counter"));
        assert_eq!(f.get("h").map(String::as_str), Some("histogram"));
        assert_eq!(
            listed_families("# c\n\nsockmesh_x_total\n  sockmesh_y # trailing\n"),
            vec!["sockmesh_x_total", "sockmesh_y"]
        );
    }
}
