//! Tests of the deploy checks, against the shipped files and small broken copies.
use super::*;

fn set(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|s| s.to_string()).collect()
}

#[test]
fn finds_metric_names_but_not_label_values() {
    let q = r#"sum by (service) (rate(sockmesh_connections_total{job="sockmesh_agent", result!="reset"}[5m]))
        / on (service) sockmesh:slo_burn_rate:5m + xsockmesh_nope + sockmesh"#;
    assert_eq!(
        metric_names(q),
        vec!["sockmesh_connections_total", "sockmesh:slo_burn_rate:5m"]
    );
    assert_eq!(
        metric_names("histogram_quantile(0.99, rate(sockmesh_tcp_srtt_seconds_bucket[5m]))"),
        vec!["sockmesh_tcp_srtt_seconds_bucket"]
    );
}

#[test]
fn histogram_series_resolve_to_their_family_only() {
    let families = set(&["sockmesh_tcp_srtt_seconds", "sockmesh_events_lost_total"]);
    let records = set(&["sockmesh:slo_burn_rate:5m"]);
    let known = Known {
        families: &families,
        records: &records,
    };
    for (name, family) in [
        (
            "sockmesh_tcp_srtt_seconds_bucket",
            "sockmesh_tcp_srtt_seconds",
        ),
        (
            "sockmesh_tcp_srtt_seconds_count",
            "sockmesh_tcp_srtt_seconds",
        ),
        ("sockmesh_tcp_srtt_seconds_sum", "sockmesh_tcp_srtt_seconds"),
        ("sockmesh_events_lost_total", "sockmesh_events_lost_total"),
        ("sockmesh:slo_burn_rate:5m", "sockmesh:slo_burn_rate:5m"),
    ] {
        assert_eq!(known.resolve(name).as_deref(), Some(family), "{name}");
    }
    for name in [
        "sockmesh_events_lost_total_count",
        "sockmesh:slo_burn_rate:5m_sum",
        "sockmesh_tcp_srtt",
        "sockmesh_events_lost",
    ] {
        assert_eq!(known.resolve(name), None, "{name}");
    }
}

#[test]
fn unknown_metrics_are_named_with_their_place() {
    let families = set(&["sockmesh_connections_total"]);
    let records = BTreeSet::new();
    let known = Known {
        families: &families,
        records: &records,
    };
    let dashboard = serde_json::json!({
        "panels": [{"title": "Typo", "targets": [
            {"refId": "A", "expr": "rate(sockmesh_connection_total[5m])"},
            {"refId": "B", "expr": "rate(sockmesh_connections_total[5m])"}
        ]}]
    });
    let err = known
        .check(&dashboard_queries(&dashboard).unwrap())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("sockmesh_connection_total (in \"Typo\" A)"),
        "{err}"
    );
    assert!(!err.contains("sockmesh_connections_total"), "{err}");
}

#[test]
fn readme_table_and_list_must_agree() {
    let readme = "# x\n\n## Metrics\n\n| metric | labels |\n|---|---|\n\
        | `sockmesh_a_total`, `sockmesh_b` | service |\n\nText `sockmesh_c` outside.\n\n\
        ## Next\n| `sockmesh_d` | |\n";
    let found = readme_metrics(readme).unwrap();
    assert_eq!(found, set(&["sockmesh_a_total", "sockmesh_b"]));
    assert!(compare_readme(&set(&["sockmesh_a_total", "sockmesh_b"]), &found).is_ok());
    let err = compare_readme(
        &set(&["sockmesh_a_total", "sockmesh_b", "sockmesh_e"]),
        &found,
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("does not mention sockmesh_e"), "{err}");
    let err = compare_readme(&set(&["sockmesh_a_total"]), &found)
        .unwrap_err()
        .to_string();
    assert!(err.contains("names sockmesh_b"), "{err}");
}

#[test]
fn metrics_list_rejects_junk_and_duplicates() {
    assert_eq!(
        parse_metrics_list("# c\nsockmesh_a_total\n\nsockmesh_b # gauge\n").unwrap(),
        set(&["sockmesh_a_total", "sockmesh_b"])
    );
    assert!(parse_metrics_list("sockmesh_a\nsockmesh_a\n").is_err());
    assert!(parse_metrics_list("connections_total\n").is_err());
    assert!(parse_metrics_list("sockmesh:rule\n").is_err());
}

#[test]
fn missing_promtool_says_how_to_install_it() {
    let err = find_promtool(
        Some("/nonexistent".into()),
        Path::new("/nonexistent/promtool"),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("promtool not found"), "{err}");
    assert!(err.contains("apt-get install prometheus"), "{err}");
}

#[test]
fn grafana_variables_become_promql() {
    assert_eq!(
        substitute_grafana_vars(
            r#"rate(x{service=~"$service",b="${backend}"}[$__rate_interval]) + increase(y[${__range}])"#
        ),
        r#"rate(x{service=~"x",b="x"}[5m]) + increase(y[5m])"#
    );
}

#[test]
fn rules_file_names_are_collected() {
    let rules = parse_rules(
        "groups:\n- name: g\n  rules:\n  - record: sockmesh:a:5m\n    expr: sum(sockmesh_x_total)\n\
         \x20 - alert: A\n    expr: sockmesh:a:5m > 1\n",
    )
    .unwrap();
    assert_eq!(rules.records, set(&["sockmesh:a:5m"]));
    assert_eq!(rules.alerts, set(&["A"]));
    assert!(parse_rules(
        "groups:\n- name: g\n  rules:\n  - record: r\n    expr: x\n  - record: r\n    expr: y\n"
    )
    .is_err());
}

/// The shipped deploy/ files: names, README table, dashboard shape (no promtool needed).
#[test]
fn shipped_deploy_files_reference_only_exported_metrics() {
    let dashboard_metrics = check_static(&workspace::root()).unwrap();
    assert!(dashboard_metrics > 20, "{dashboard_metrics}");
}

/// Everything `cargo xtask test` runs, promtool included (skipped without promtool;
/// `cargo xtask test` itself fails then).
#[test]
fn shipped_deploy_files_pass_promtool() {
    if promtool().is_err() {
        eprintln!("skipped: no promtool (cargo xtask setup installs it)");
        return;
    }
    let summary = check(&workspace::root()).unwrap();
    println!("{summary}");
    assert!(summary.rule_tests >= 6, "{summary:?}");
}
