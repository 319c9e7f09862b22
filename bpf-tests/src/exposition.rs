//! Reading the Prometheus text exposition the agent serves at `/metrics`: just enough of the
//! format (samples, labels with escapes, `+Inf`) to assert on counter values and histogram
//! buckets without a Prometheus client crate.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::{bail, Context, Result};

/// One sample line: `name{label="value",...} value [timestamp]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

impl Sample {
    /// Whether every `(label, value)` pair of `wanted` is among this sample's labels.
    pub fn has_labels(&self, wanted: &[(&str, &str)]) -> bool {
        wanted
            .iter()
            .all(|(k, v)| self.labels.get(*k).map(String::as_str) == Some(*v))
    }
}

/// Parses every sample of an exposition; comments (`# HELP`, `# TYPE`, `# EOF`) and blank
/// lines are skipped.
pub fn parse_exposition(text: &str) -> Result<Vec<Sample>> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| parse_sample(l).with_context(|| format!("exposition line {l:?}")))
        .collect()
}

fn parse_sample(line: &str) -> Result<Sample> {
    let name_end = line
        .find(|c: char| c == '{' || c.is_whitespace())
        .context("no value")?;
    let name = line[..name_end].to_string();
    let mut rest = &line[name_end..];
    let mut labels = BTreeMap::new();
    if let Some(body) = rest.strip_prefix('{') {
        let (parsed, after) = parse_labels(body)?;
        labels = parsed;
        rest = after;
    }
    let value_text = rest.split_whitespace().next().context("no value")?;
    Ok(Sample {
        name,
        labels,
        value: parse_value(value_text)?,
    })
}

/// Parses `k="v",k2="v2"}` (the opening brace already consumed); returns the labels and the
/// text after the closing brace.
fn parse_labels(mut s: &str) -> Result<(BTreeMap<String, String>, &str)> {
    let mut labels = BTreeMap::new();
    loop {
        s = s.trim_start_matches([',', ' ']);
        if let Some(after) = s.strip_prefix('}') {
            return Ok((labels, after));
        }
        let eq = s.find('=').context("label without '='")?;
        let key = s[..eq].trim().to_string();
        s = s[eq + 1..]
            .strip_prefix('"')
            .context("label value not quoted")?;
        let mut value = String::new();
        let mut chars = s.char_indices();
        let end = loop {
            match chars.next() {
                Some((i, '"')) => break i,
                Some((_, '\\')) => match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, c)) => value.push(c),
                    None => bail!("escape at end of line"),
                },
                Some((_, c)) => value.push(c),
                None => bail!("unterminated label value"),
            }
        };
        labels.insert(key, value);
        s = &s[end + 1..];
    }
}

fn parse_value(text: &str) -> Result<f64> {
    match text {
        "+Inf" | "Inf" => Ok(f64::INFINITY),
        "-Inf" => Ok(f64::NEG_INFINITY),
        "NaN" => Ok(f64::NAN),
        t => t.parse().with_context(|| format!("bad sample value {t:?}")),
    }
}

fn samples(text: &str) -> Vec<Sample> {
    parse_exposition(text).unwrap_or_else(|e| panic!("the exposition does not parse: {e:#}"))
}

/// The value of the one sample named `name` whose labels include all of `labels`; `None`
/// when there is none (a counter never incremented is absent, not zero).
///
/// # Panics
/// When several samples match: the filter is ambiguous and a test should say which it
/// means (or use [`sum_metric`]). Also when the text is not a valid exposition.
pub fn metric_value(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let matching: Vec<Sample> = samples(text)
        .into_iter()
        .filter(|s| s.name == name && s.has_labels(labels))
        .collect();
    assert!(
        matching.len() <= 1,
        "{name} with {labels:?} matches {} samples: {matching:#?}",
        matching.len()
    );
    matching.first().map(|s| s.value)
}

/// The sum over every sample named `name` whose labels include all of `labels` (0 if none).
pub fn sum_metric(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    samples(text)
        .iter()
        .filter(|s| s.name == name && s.has_labels(labels))
        .map(|s| s.value)
        .sum()
}

/// The distinct values `label` takes among samples named `name`.
pub fn label_values(text: &str, name: &str, label: &str) -> BTreeSet<String> {
    samples(text)
        .into_iter()
        .filter(|s| s.name == name)
        .filter_map(|s| s.labels.get(label).cloned())
        .collect()
}

/// How many observations of histogram `name` (labels must select one series) lie above the
/// first bucket bound `>= threshold` seconds: `_count` minus that bucket's cumulative count.
/// Returns `(mass above, the bound used, total count)`, or `None` when the series is absent.
pub fn histogram_mass_above(
    text: &str,
    name: &str,
    labels: &[(&str, &str)],
    threshold: f64,
) -> Option<(f64, f64, f64)> {
    let count = metric_value(text, &format!("{name}_count"), labels)?;
    let bucket_name = format!("{name}_bucket");
    let all = samples(text);
    let (bound, cumulative) = all
        .iter()
        .filter(|s| s.name == bucket_name && s.has_labels(labels))
        .filter_map(|s| Some((parse_value(s.labels.get("le")?).ok()?, s.value)))
        .filter(|(le, _)| *le >= threshold)
        .min_by(|a, b| a.0.total_cmp(&b.0))
        .unwrap_or_else(|| panic!("{name} with {labels:?} has no bucket bound >= {threshold}"));
    Some((count - cumulative, bound, count))
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = r#"# HELP sockmesh_connections Connects.
# TYPE sockmesh_connections counter
sockmesh_connections_total{service="web",backend="127.0.0.2:1",caller="a",result="ok"} 3
sockmesh_connections_total{service="web",backend="127.0.0.3:1",caller="a",result="ok"} 4
sockmesh_connections_total{service="web",backend="127.0.0.3:1",caller="we\"ird\\",result="refused"} 1
sockmesh_events_lost_total 0
h_sum 0.5
h_count 10
h_bucket{le="0.000512"} 2
h_bucket{le="0.001024"} 6
h_bucket{le="0.002048"} 9
h_bucket{le="+Inf"} 10
# EOF
"#;

    #[test]
    fn finds_one_sample_and_sums_many() {
        let name = "sockmesh_connections_total";
        let one = [("backend", "127.0.0.3:1"), ("result", "ok")];
        assert_eq!(metric_value(TEXT, name, &one), Some(4.0));
        assert_eq!(sum_metric(TEXT, name, &[("result", "ok")]), 7.0);
        assert_eq!(metric_value(TEXT, name, &[("result", "timeout")]), None);
        assert_eq!(
            metric_value(TEXT, "sockmesh_events_lost_total", &[]),
            Some(0.0)
        );
    }

    #[test]
    fn unescapes_label_values() {
        let callers = label_values(TEXT, "sockmesh_connections_total", "caller");
        assert!(callers.contains("we\"ird\\"), "{callers:?}");
        assert_eq!(callers.len(), 2);
    }

    #[test]
    #[should_panic(expected = "matches 2 samples")]
    fn ambiguous_filter_panics() {
        metric_value(TEXT, "sockmesh_connections_total", &[("result", "ok")]);
    }

    #[test]
    fn histogram_mass_above_first_bound_at_or_over_threshold() {
        assert_eq!(
            histogram_mass_above(TEXT, "h", &[], 0.001),
            Some((4.0, 0.001024, 10.0))
        );
        assert_eq!(histogram_mass_above(TEXT, "absent", &[], 0.001), None);
    }
}
