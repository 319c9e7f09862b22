//! Prometheus exposition formats, shared by the agent's and the control plane's `/metrics`.
//! prometheus-client writes OpenMetrics; Prometheus also accepts it when it asks for it,
//! but tools that read the classic text format (promtool, older scrapers) expect a
//! counter's HELP/TYPE to name the `_total` series and no `# EOF`. Both servers send
//! OpenMetrics to clients that ask for it and the classic form to everyone else.

pub const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
pub const CLASSIC: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Whether the scraper's Accept header asks for OpenMetrics.
pub fn wants_openmetrics(accept: Option<&str>) -> bool {
    accept.is_some_and(|a| a.contains("application/openmetrics-text"))
}

/// The content type and body to answer a scrape with, from the OpenMetrics text.
pub fn negotiate(accept: Option<&str>, openmetrics: String) -> (&'static str, String) {
    if wants_openmetrics(accept) {
        (OPENMETRICS, openmetrics)
    } else {
        (CLASSIC, to_classic(&openmetrics))
    }
}

/// OpenMetrics text -> classic text format.
pub fn to_classic(openmetrics: &str) -> String {
    let counters: std::collections::HashSet<&str> = openmetrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|rest| rest.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let renamed = ["# HELP ", "# TYPE "].iter().find_map(|prefix| {
            let rest = line.strip_prefix(prefix)?;
            let (name, tail) = rest.split_once(' ')?;
            counters
                .contains(name)
                .then(|| format!("{prefix}{name}_total {tail}"))
        });
        out.push_str(renamed.as_deref().unwrap_or(line));
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_get_total_names_and_eof_goes() {
        let om = "# HELP sockmesh_connections Connect attempts.\n# TYPE sockmesh_connections counter\nsockmesh_connections_total{result=\"ok\"} 3\n# HELP sockmesh_active Open now.\n# TYPE sockmesh_active gauge\nsockmesh_active 1\n# EOF\n";
        let classic = to_classic(om);
        assert!(classic.contains("# HELP sockmesh_connections_total Connect attempts.\n"));
        assert!(classic.contains("# TYPE sockmesh_connections_total counter\n"));
        assert!(classic.contains("# TYPE sockmesh_active gauge\n"));
        assert!(classic.contains("sockmesh_connections_total{result=\"ok\"} 3\n"));
        assert!(!classic.contains("# EOF"));
    }

    #[test]
    fn negotiation() {
        assert!(wants_openmetrics(Some(
            "application/openmetrics-text;version=1.0.0,text/plain;q=0.5"
        )));
        assert!(!wants_openmetrics(Some("text/plain")));
        assert!(!wants_openmetrics(None));
        assert_eq!(negotiate(None, "# EOF\n".into()), (CLASSIC, String::new()));
    }
}
