//! `cargo xtask test`'s check of the monitoring artifacts in deploy/ (SLO rules,
//! alerts, dashboard):
//!
//! - `promtool check rules` on the Prometheus rules and `promtool test rules` on their unit
//!   tests (deploy/prometheus/tests/*.yaml);
//! - the rules define the recording rules and alerts docs/slo.md promises;
//! - every `sockmesh…` metric the rules and the Grafana dashboard query is a family the agent
//!   exports (deploy/metrics.txt, the one list of them; a histogram's `_bucket`, `_sum` and
//!   `_count` series count as its family) or a rule the rules file records; the dashboard
//!   may also query the L7 proxy's request families (deploy/proxy-metrics.txt, scraped from
//!   the proxy);
//! - every dashboard query is valid PromQL (promtool parses it, Grafana's `$variables`
//!   substituted);
//! - README.md's "Metrics" table and deploy/metrics.txt name the same families.
//!
//! It prints one summary line (`deploy: rules ok, …`) and fails with the offending names.

use std::collections::BTreeSet;
use std::env;
use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};

use anyhow::{bail, ensure, Context, Result};
use serde_json::Value as Json;
use serde_yaml::Value as Yaml;

use crate::{command, scratch::ScratchDir, workspace};

pub const RULES: &str = "deploy/prometheus/sockmesh-rules.yaml";
pub const RULE_TESTS: &str = "deploy/prometheus/tests";
pub const DASHBOARD: &str = "deploy/grafana/sockmesh-dashboard.json";
pub const METRICS_LIST: &str = "deploy/metrics.txt";
pub const PROXY_METRICS_LIST: &str = "deploy/proxy-metrics.txt";
pub const README: &str = "README.md";

/// Rules docs/slo.md promises the rules file ships.
const REQUIRED_RECORDS: &[&str] = &[
    "sockmesh:slo_burn_rate:5m",
    "sockmesh:slo_burn_rate:30m",
    "sockmesh:slo_burn_rate:1h",
    "sockmesh:slo_burn_rate:6h",
];
const REQUIRED_ALERTS: &[&str] = &["SockmeshSLOBurnRatePage", "SockmeshSLOBurnRateTicket"];

/// Where Debian's `prometheus` package puts promtool, for when it is not on PATH (sudo's
/// secure_path, a minimal CI environment).
const PROMTOOL_FALLBACK: &str = "/usr/bin/promtool";

/// The histogram series suffixes a query may use on a histogram family.
const HISTOGRAM_SUFFIXES: &[&str] = &["_bucket", "_sum", "_count"];

/// What the check found, printed as the summary line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    pub rule_tests: usize,
    pub dashboard_metrics: usize,
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "deploy: rules ok, {} rule tests ok, dashboard references {} metrics, all exported",
            self.rule_tests, self.dashboard_metrics
        )
    }
}

/// Runs every check on the workspace's deploy/ and prints the summary line.
pub fn run() -> Result<()> {
    let summary = check(&workspace::root())?;
    println!("{summary}");
    Ok(())
}

/// Every check, on the workspace rooted at `root`.
pub fn check(root: &Path) -> Result<Summary> {
    let promtool = promtool()?;
    let dashboard_metrics = check_static(root)?;

    promtool_run(&promtool, &["check", "rules"], &[root.join(RULES)])?;

    let tests = rule_test_files(&root.join(RULE_TESTS))?;
    let mut rule_tests = 0;
    for file in &tests {
        rule_tests += count_rule_tests(&read(file)?).with_context(|| file.display().to_string())?;
        // One file at a time, so a failure shows only that file's report. promtool resolves
        // the file's `rule_files:` relative to the file.
        promtool_run(&promtool, &["test", "rules"], std::slice::from_ref(file))?;
    }

    let dashboard: Json = serde_json::from_str(&read(&root.join(DASHBOARD))?)
        .with_context(|| format!("{DASHBOARD} is not valid JSON"))?;
    check_promql_syntax(&promtool, &dashboard_queries(&dashboard)?)?;

    Ok(Summary {
        rule_tests,
        dashboard_metrics,
    })
}

/// The checks that need no promtool: metric names in the rules and the dashboard, the
/// contract's rules, the README table. Returns how many families and recorded rules the
/// dashboard references.
fn check_static(root: &Path) -> Result<usize> {
    let families = parse_metrics_list(&read(&root.join(METRICS_LIST))?).context(METRICS_LIST)?;

    let readme_families = readme_metrics(&read(&root.join(README))?).context(README)?;
    compare_readme(&families, &readme_families)?;

    let rules = parse_rules(&read(&root.join(RULES))?).context(RULES)?;
    for name in REQUIRED_RECORDS {
        ensure!(
            rules.records.contains(*name),
            "{RULES} does not record `{name}` (docs/slo.md promises it)"
        );
    }
    for name in REQUIRED_ALERTS {
        ensure!(
            rules.alerts.contains(*name),
            "{RULES} has no alert `{name}` (docs/slo.md promises it)"
        );
    }

    let known = Known {
        families: &families,
        records: &rules.records,
    };
    known
        .check(&rules.queries)
        .with_context(|| format!("{RULES} queries metrics the agent does not export"))?;

    let proxy_families =
        parse_metrics_list(&read(&root.join(PROXY_METRICS_LIST))?).context(PROXY_METRICS_LIST)?;
    if let Some(both) = proxy_families.intersection(&families).next() {
        bail!("`{both}` is in both {METRICS_LIST} and {PROXY_METRICS_LIST}");
    }
    let scraped: BTreeSet<String> = families.union(&proxy_families).cloned().collect();
    let known = Known {
        families: &scraped,
        records: &rules.records,
    };
    let dashboard: Json = serde_json::from_str(&read(&root.join(DASHBOARD))?)
        .with_context(|| format!("{DASHBOARD} is not valid JSON"))?;
    check_dashboard_shape(&dashboard).context(DASHBOARD)?;
    let referenced = known
        .check(&dashboard_queries(&dashboard)?)
        .with_context(|| format!("{DASHBOARD} queries metrics the agent does not export"))?;

    Ok(referenced.len())
}

fn read(path: &Path) -> Result<String> {
    fs::read_to_string(path).with_context(|| format!("read {}", path.display()))
}

// ---- promtool ------------------------------------------------------------------------------

/// promtool from PATH, else Debian's; a clear error when neither exists.
fn promtool() -> Result<PathBuf> {
    find_promtool(env::var_os("PATH"), Path::new(PROMTOOL_FALLBACK))
}

fn find_promtool(path_var: Option<std::ffi::OsString>, fallback: &Path) -> Result<PathBuf> {
    let on_path = path_var.and_then(|paths| {
        env::split_paths(&paths)
            .map(|dir| dir.join("promtool"))
            .find(|p| p.is_file())
    });
    match on_path {
        Some(p) => Ok(p),
        None if fallback.is_file() => Ok(fallback.into()),
        None => bail!(
            "promtool not found (not on PATH, no {}): the deploy/prometheus checks need it. \
             Debian's `prometheus` package provides it: run `cargo xtask setup` or \
             `apt-get install prometheus`",
            fallback.display()
        ),
    }
}

/// Runs promtool quietly; on failure, its whole output (test failures go to stdout).
fn promtool_run(promtool: &Path, args: &[&str], files: &[PathBuf]) -> Result<String> {
    let mut cmd = Command::new(promtool);
    cmd.args(args).args(files);
    let shown = command::describe(&cmd);
    let out = cmd
        .output()
        .with_context(|| format!("failed to start `{shown}`"))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let output: Vec<&str> = [stdout.trim_end(), stderr.trim_end()]
            .into_iter()
            .filter(|s| !s.is_empty())
            .collect();
        bail!("`{shown}` failed ({}):\n{}", out.status, output.join("\n"));
    }
    Ok(stdout.into_owned())
}

fn rule_test_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for entry in fs::read_dir(dir).with_context(|| format!("read {}", dir.display()))? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
            files.push(path);
        }
    }
    files.sort();
    ensure!(
        !files.is_empty(),
        "no rule tests (*.yaml) in {}",
        dir.display()
    );
    Ok(files)
}

/// Number of test groups (`tests:` entries) in a promtool rule test file.
fn count_rule_tests(text: &str) -> Result<usize> {
    let doc: Yaml = serde_yaml::from_str(text).context("not YAML")?;
    let tests = doc
        .get("tests")
        .and_then(Yaml::as_sequence)
        .context("no `tests:` list")?;
    ensure!(!tests.is_empty(), "`tests:` is empty");
    Ok(tests.len())
}

static SCRATCH_SEQ: AtomicUsize = AtomicUsize::new(0);

/// Has promtool parse every PromQL query of the dashboard (as recording rules in a scratch
/// file), with Grafana's variables replaced by values of the right kind.
fn check_promql_syntax(promtool: &Path, queries: &[Query]) -> Result<()> {
    let mut rules = Vec::new();
    let mut index = Vec::new();
    for q in queries.iter().filter(|q| q.promql) {
        let mut rule = serde_yaml::Mapping::new();
        rule.insert(
            "record".into(),
            format!("dashboard_query_{}", rules.len()).into(),
        );
        rule.insert("expr".into(), substitute_grafana_vars(&q.text).into());
        rules.push(Yaml::Mapping(rule));
        index.push((format!("dashboard_query_{}", index.len()), q.place.clone()));
    }
    let mut group = serde_yaml::Mapping::new();
    group.insert("name".into(), "dashboard".into());
    group.insert("rules".into(), Yaml::Sequence(rules));
    let mut doc = serde_yaml::Mapping::new();
    doc.insert("groups".into(), Yaml::Sequence(vec![Yaml::Mapping(group)]));

    let seq = SCRATCH_SEQ.fetch_add(1, Ordering::Relaxed);
    let dir = ScratchDir::create(&format!(
        "sockmesh-deploy-check-{}-{seq}",
        std::process::id()
    ))?;
    let file = dir.path().join("dashboard-queries.yaml");
    fs::write(&file, serde_yaml::to_string(&Yaml::Mapping(doc))?)
        .with_context(|| format!("write {}", file.display()))?;
    if let Err(e) = promtool_run(promtool, &["check", "rules"], &[file]) {
        let output = format!("{e:#}");
        // promtool names the failing rule: `..., "dashboard_query_3": could not parse ...`.
        let failing: Vec<&str> = index
            .iter()
            .filter(|(record, _)| output.contains(&format!("\"{record}\"")))
            .map(|(_, place)| place.as_str())
            .collect();
        bail!(
            "{DASHBOARD}: not valid PromQL in {}:\n{output}",
            if failing.is_empty() {
                "a query".to_string()
            } else {
                failing.join(", ")
            }
        );
    }
    Ok(())
}

/// Grafana's `$__rate_interval`, `$__interval`, `$__range` (and `${...}` forms) become `5m`;
/// any other `$var` (template variables sit in label matchers) becomes `x`.
fn substitute_grafana_vars(expr: &str) -> String {
    let mut out = String::with_capacity(expr.len());
    let mut rest = expr;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        let (name, len) = if let Some(braced) = after.strip_prefix('{') {
            match braced.find('}') {
                Some(end) => (&braced[..end], end + 2),
                None => (braced, braced.len() + 1),
            }
        } else {
            let end = after
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(after.len());
            (&after[..end], end)
        };
        let name = name.split(':').next().unwrap_or(name);
        out.push_str(match name {
            "__rate_interval" | "__interval" | "__range" => "5m",
            "" => "$",
            _ => "x",
        });
        rest = &after[len..];
    }
    out.push_str(rest);
    out
}

// ---- metric names ---------------------------------------------------------------------------

/// deploy/metrics.txt: one family per line, `#` comments.
fn parse_metrics_list(text: &str) -> Result<BTreeSet<String>> {
    let mut families = BTreeSet::new();
    for (n, line) in text.lines().enumerate() {
        let name = line.split('#').next().unwrap_or("").trim();
        if name.is_empty() {
            continue;
        }
        ensure!(
            name.starts_with("sockmesh_")
                && name
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'),
            "line {}: `{name}` is not a sockmesh_ metric family name",
            n + 1
        );
        ensure!(
            families.insert(name.to_string()),
            "line {}: `{name}` is listed twice",
            n + 1
        );
    }
    ensure!(!families.is_empty(), "lists no metric families");
    Ok(families)
}

/// The `sockmesh_…` names in README.md's "Metrics" table (the `|` lines of the section).
fn readme_metrics(readme: &str) -> Result<BTreeSet<String>> {
    let mut in_section = false;
    let mut found = BTreeSet::new();
    for line in readme.lines() {
        if line.starts_with("## ") {
            in_section = line.trim_end() == "## Metrics";
            continue;
        }
        if !in_section || !line.trim_start().starts_with('|') {
            continue;
        }
        // Code spans: every other piece between backticks.
        for span in line.split('`').skip(1).step_by(2) {
            if span.starts_with("sockmesh_") {
                found.insert(span.to_string());
            }
        }
    }
    ensure!(
        !found.is_empty(),
        "no `## Metrics` table naming sockmesh_ metrics"
    );
    Ok(found)
}

fn compare_readme(list: &BTreeSet<String>, readme: &BTreeSet<String>) -> Result<()> {
    let undocumented: Vec<&str> = list.difference(readme).map(String::as_str).collect();
    let unlisted: Vec<&str> = readme.difference(list).map(String::as_str).collect();
    ensure!(
        undocumented.is_empty(),
        "{README}'s Metrics table does not mention {} (listed in {METRICS_LIST})",
        undocumented.join(", ")
    );
    ensure!(
        unlisted.is_empty(),
        "{README}'s Metrics table names {}, which {METRICS_LIST} does not list",
        unlisted.join(", ")
    );
    Ok(())
}

mod artifacts;
use artifacts::*;

#[cfg(test)]
mod tests;
