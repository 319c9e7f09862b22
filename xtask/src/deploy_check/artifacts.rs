//! Parsing the deploy artifacts: metric names in PromQL, the rules file's records and alerts,
//! and the dashboard's queries and shape.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::{bail, ensure, Context, Result};
use serde_json::Value as Json;
use serde_yaml::Value as Yaml;

use super::{DASHBOARD, HISTOGRAM_SUFFIXES, METRICS_LIST, PROXY_METRICS_LIST, RULES};

/// A query, where it came from (for messages), and whether it is PromQL (a dashboard's
/// `label_values(...)` variable query is not).
#[derive(Debug, Clone)]
pub(super) struct Query {
    pub(super) place: String,
    pub(super) text: String,
    pub(super) promql: bool,
}

/// The `sockmesh…` metric names in a query (`sockmesh[_:a-zA-Z0-9]+` at a name boundary),
/// outside string literals (label values).
pub(super) fn metric_names(query: &str) -> Vec<String> {
    let is_name = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    let chars: Vec<char> = query.chars().collect();
    let mut names = Vec::new();
    let mut quote: Option<char> = None;
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if let Some(q) = quote {
            if c == '\\' && q != '`' {
                i += 1;
            } else if c == q {
                quote = None;
            }
            i += 1;
            continue;
        }
        if c == '"' || c == '\'' || c == '`' {
            quote = Some(c);
            i += 1;
            continue;
        }
        let starts = (i == 0 || !is_name(chars[i - 1]))
            && chars[i..].iter().take(8).copied().eq("sockmesh".chars());
        if starts {
            let end = (i + 8..chars.len())
                .find(|&j| !is_name(chars[j]))
                .unwrap_or(chars.len());
            if end > i + 8 {
                names.push(chars[i..end].iter().collect());
            }
            i = end.max(i + 1);
            continue;
        }
        i += 1;
    }
    names
}

/// What queries may name: exported families and recorded rules.
pub(super) struct Known<'a> {
    pub(super) families: &'a BTreeSet<String>,
    pub(super) records: &'a BTreeSet<String>,
}

impl Known<'_> {
    /// The family or rule `name` refers to: itself, or for `_bucket`/`_sum`/`_count` the
    /// histogram family it belongs to (never a counter's or a recorded rule's).
    pub(super) fn resolve(&self, name: &str) -> Option<String> {
        if self.families.contains(name) || self.records.contains(name) {
            return Some(name.to_string());
        }
        HISTOGRAM_SUFFIXES.iter().find_map(|suffix| {
            let base = name.strip_suffix(suffix)?;
            (self.families.contains(base) && !base.ends_with("_total")).then(|| base.to_string())
        })
    }

    /// The families and rules the queries name; fails listing every unknown name and where.
    pub(super) fn check(&self, queries: &[Query]) -> Result<BTreeSet<String>> {
        let mut referenced = BTreeSet::new();
        let mut unknown: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for q in queries {
            for name in metric_names(&q.text) {
                match self.resolve(&name) {
                    Some(family) => {
                        referenced.insert(family);
                    }
                    None => {
                        unknown.entry(name).or_default().insert(q.place.clone());
                    }
                }
            }
        }
        if !unknown.is_empty() {
            let lines: Vec<String> = unknown
                .iter()
                .map(|(name, places)| {
                    format!(
                        "  {name} (in {})",
                        places.iter().cloned().collect::<Vec<_>>().join("; ")
                    )
                })
                .collect();
            bail!(
                "not in {METRICS_LIST} (or, for the dashboard, {PROXY_METRICS_LIST}) and not \
                 recorded by {RULES}:\n{}",
                lines.join("\n")
            );
        }
        Ok(referenced)
    }
}

// ---- rules ------------------------------------------------------------------------------------

#[derive(Debug, Default)]
pub(super) struct Rules {
    pub(super) records: BTreeSet<String>,
    pub(super) alerts: BTreeSet<String>,
    pub(super) queries: Vec<Query>,
}

pub(super) fn parse_rules(text: &str) -> Result<Rules> {
    let doc: Yaml = serde_yaml::from_str(text).context("not YAML")?;
    let groups = doc
        .get("groups")
        .and_then(Yaml::as_sequence)
        .context("no `groups:` list")?;
    let mut rules = Rules::default();
    for group in groups {
        let group_name = group.get("name").and_then(Yaml::as_str).unwrap_or("?");
        let list = group
            .get("rules")
            .and_then(Yaml::as_sequence)
            .with_context(|| format!("group {group_name}: no `rules:` list"))?;
        for rule in list {
            let expr = rule
                .get("expr")
                .and_then(Yaml::as_str)
                .with_context(|| format!("group {group_name}: a rule without `expr`"))?;
            let name = if let Some(record) = rule.get("record").and_then(Yaml::as_str) {
                ensure!(
                    rules.records.insert(record.to_string()),
                    "`{record}` is recorded twice"
                );
                record
            } else if let Some(alert) = rule.get("alert").and_then(Yaml::as_str) {
                rules.alerts.insert(alert.to_string());
                alert
            } else {
                bail!("group {group_name}: a rule with neither `record` nor `alert`");
            };
            rules.queries.push(Query {
                place: format!("rule {name}"),
                text: expr.to_string(),
                promql: true,
            });
        }
    }
    Ok(rules)
}

// ---- dashboard --------------------------------------------------------------------------------

/// Every query of the dashboard: panel targets' `expr` (PromQL) and template variables'
/// `query`/`definition` strings (Grafana functions such as `label_values(...)`), wherever
/// they sit (rows nest panels when collapsed).
pub(super) fn dashboard_queries(dashboard: &Json) -> Result<Vec<Query>> {
    pub(super) fn walk(value: &Json, place: &str, key: Option<&str>, out: &mut Vec<Query>) {
        match value {
            Json::Object(map) => {
                // A panel or variable is named by its title or name, a target by its refId.
                let title = map.get("title").or_else(|| map.get("name"));
                let place = match (title.and_then(Json::as_str), map.get("refId")) {
                    (Some(t), _) => format!("\"{t}\""),
                    (None, Some(Json::String(r))) => format!("{place} {r}"),
                    _ => place.to_string(),
                };
                for (k, v) in map {
                    walk(v, &place, Some(k), out);
                }
            }
            Json::Array(items) => {
                for v in items {
                    walk(v, place, key, out);
                }
            }
            Json::String(s) => match key {
                Some("expr") => out.push(Query {
                    place: place.to_string(),
                    text: s.clone(),
                    promql: true,
                }),
                Some("query" | "definition") => out.push(Query {
                    place: place.to_string(),
                    text: s.clone(),
                    promql: false,
                }),
                _ => {}
            },
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(dashboard, "dashboard", None, &mut out);
    ensure!(
        out.iter().any(|q| q.promql),
        "{DASHBOARD} has no `expr` queries"
    );
    Ok(out)
}

/// What provisioning and the issue rely on: the `DS_PROMETHEUS` datasource variable used by
/// every panel and target, a `service` variable, unique panel ids.
pub(super) fn check_dashboard_shape(dashboard: &Json) -> Result<()> {
    let vars = dashboard
        .pointer("/templating/list")
        .and_then(Json::as_array)
        .context("no templating.list")?;
    let var = |name: &str| {
        vars.iter()
            .find(|v| v.get("name").and_then(Json::as_str) == Some(name))
    };
    ensure!(
        var("DS_PROMETHEUS").and_then(|v| v.get("type")) == Some(&Json::from("datasource")),
        "no datasource variable DS_PROMETHEUS"
    );
    ensure!(var("service").is_some(), "no `service` template variable");

    let mut ids = BTreeSet::new();
    let mut stack: Vec<&Json> = dashboard
        .get("panels")
        .and_then(Json::as_array)
        .context("no panels")?
        .iter()
        .collect();
    while let Some(panel) = stack.pop() {
        let title = panel.get("title").and_then(Json::as_str).unwrap_or("?");
        let id = panel.get("id").and_then(Json::as_u64);
        ensure!(
            id.is_some_and(|id| ids.insert(id)),
            "panel \"{title}\": missing or duplicate id"
        );
        if let Some(nested) = panel.get("panels").and_then(Json::as_array) {
            stack.extend(nested);
        }
        if panel.get("type").and_then(Json::as_str) == Some("row") {
            continue;
        }
        let uses_var = |v: Option<&Json>| {
            v.and_then(|d| d.get("uid")).and_then(Json::as_str) == Some("${DS_PROMETHEUS}")
        };
        ensure!(
            uses_var(panel.get("datasource")),
            "panel \"{title}\": datasource is not ${{DS_PROMETHEUS}}"
        );
        let targets = panel
            .get("targets")
            .and_then(Json::as_array)
            .filter(|t| !t.is_empty())
            .with_context(|| format!("panel \"{title}\": no targets"))?;
        for t in targets {
            ensure!(
                uses_var(t.get("datasource")),
                "panel \"{title}\": a target's datasource is not ${{DS_PROMETHEUS}}"
            );
            ensure!(
                t.get("expr")
                    .and_then(Json::as_str)
                    .is_some_and(|e| !e.trim().is_empty()),
                "panel \"{title}\": a target without an expr"
            );
        }
    }
    Ok(())
}
