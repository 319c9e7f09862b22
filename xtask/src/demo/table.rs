//! The demo's table: per service and backend, connections counted at the backend, their share
//! of the service's connections, and the share the weights ask for.

use std::fmt::Write as _;

use sockmesh_model::MeshConfig;

/// Renders the table for `config` from `accepts`: connections each backend accepted, one entry
/// per backend of the config, in config order.
pub fn render(config: &MeshConfig, accepts: &[u64], header: &str) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{header}");
    let mut counters = accepts.iter().copied();
    for service in &config.services {
        let total_weight: u64 = service.backends.iter().map(|b| u64::from(b.weight)).sum();
        let rows: Vec<(&sockmesh_model::BackendSpec, u64)> = service
            .backends
            .iter()
            .map(|spec| (spec, counters.next().unwrap_or(0)))
            .collect();
        let total_conns: u64 = rows.iter().map(|(_, n)| n).sum();
        let _ = writeln!(
            out,
            "  service {} via VIP {}:{} ({}): {total_conns} connections",
            service.name,
            service.vip,
            service.port,
            service.lb.as_str()
        );
        let _ = writeln!(
            out,
            "    {:<22} {:>6} {:>9} {:>7} {:>7}",
            "backend", "weight", "expected", "conns", "share"
        );
        for (spec, conns) in rows {
            let _ = writeln!(
                out,
                "    {:<22} {:>6} {:>8.1}% {:>7} {:>6.1}%",
                spec.addr.to_string(),
                spec.weight,
                percent(u64::from(spec.weight), total_weight),
                conns,
                percent(conns, total_conns),
            );
        }
    }
    out
}

/// Largest deviation, in percentage points, of any backend's share from its weight share;
/// `None` while some service has seen no connection yet.
pub fn worst_deviation(config: &MeshConfig, accepts: &[u64]) -> Option<f64> {
    let mut counters = accepts.iter().copied();
    let mut worst: f64 = 0.0;
    for service in &config.services {
        let total_weight: u64 = service.backends.iter().map(|b| u64::from(b.weight)).sum();
        let counts: Vec<u64> = service
            .backends
            .iter()
            .map(|_| counters.next().unwrap_or(0))
            .collect();
        let total: u64 = counts.iter().sum();
        if total == 0 {
            return None;
        }
        for (spec, conns) in service.backends.iter().zip(counts) {
            let diff = percent(conns, total) - percent(u64::from(spec.weight), total_weight);
            worst = worst.max(diff.abs());
        }
    }
    Some(worst)
}

fn percent(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        100.0 * part as f64 / whole as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_and_deviation_follow_config_order() {
        let config = sockmesh_model::default_config();
        // web: 1/1/2 weights; api: 1/1.
        let accepts = [250, 250, 500, 300, 700];
        let table = render(&config, &accepts, "t");
        assert!(table.contains("1000 connections"), "{table}");
        assert!(table.contains("50.0%"), "{table}");
        let worst = worst_deviation(&config, &accepts).unwrap();
        assert!((worst - 20.0).abs() < 1e-9, "{worst}");
        assert_eq!(worst_deviation(&config, &[1, 1, 2, 0, 0]), None);
    }
}
