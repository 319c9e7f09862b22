//! Config apply time at scale: the observing agent's config file is replaced by one with
//! [`SERVICES`] services (each with three backends, none ever dialed), then the bench's
//! own one-service config is put back. For each change: the agent's own `apply_ms` (reading
//! and parsing the file, planning the kernel tables, writing them), the end-to-end time from
//! the file's rename to the agent's `applied_at` (which adds the file poll interval, 250 ms
//! by default), and the agent's memory after it.

use std::fmt::Write as _;
use std::fs;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use sockmesh_bpf_tests::Agent;

use super::proc_stats::{self, Memory};

/// The scale the issue asks for.
pub const SERVICES: usize = 10_000;
const BACKENDS_PER_SERVICE: usize = 3;
/// 10,000 services are planned and written within a few seconds even on a loaded machine.
const APPLY_TIMEOUT: Duration = Duration::from_secs(60);

/// One measured config change.
pub struct ApplyRun {
    pub what: String,
    pub yaml_bytes: usize,
    /// The agent's `config.apply_ms`.
    pub agent_ms: f64,
    /// Rename of the file to `config.applied_at_unix_ms`.
    pub end_to_end_ms: f64,
    pub memory: Memory,
}

/// `n` services, VIPs 127.100.100.1 .. 127.100.139.250 (port 9100), apart from the bench's
/// VIPs; backends on 127.0.0.31-33, which nothing connects to.
pub fn many_services_yaml(n: usize) -> String {
    let mut y = String::from(
        "# written by cargo xtask bench (config apply at scale)\nversion: 1\nservices:\n",
    );
    for i in 0..n {
        let (hi, lo) = (100 + i / 250, i % 250 + 1);
        let _ = writeln!(
            y,
            "  - name: scale-{i}\n    vip: 127.100.{hi}.{lo}\n    port: 9100\n    lb: round_robin\n    backends:"
        );
        for b in 0..BACKENDS_PER_SERVICE {
            let _ = writeln!(
                y,
                "      - addr: 127.0.0.{}:{}\n        weight: 1",
                31 + b,
                10_000 + i % 50_000
            );
        }
    }
    y
}

/// Applies `yaml` through `config_path` (atomic rename) and waits for the agent to report it.
fn apply(
    agent: &mut Agent,
    pid: u32,
    config_path: &Path,
    yaml: &str,
    what: &str,
) -> Result<ApplyRun> {
    let fingerprint = sockmesh_control::parse_config(yaml)
        .with_context(|| format!("{what}: the bench's own config does not parse"))?
        .fingerprint();
    let tmp = config_path.with_extension("yaml.tmp");
    fs::write(&tmp, yaml).with_context(|| format!("write {}", tmp.display()))?;
    let renamed_ms = unix_ms();
    fs::rename(&tmp, config_path)
        .with_context(|| format!("rename to {}", config_path.display()))?;
    let status = agent.wait_fingerprint(&fingerprint, APPLY_TIMEOUT)?;
    let config = &status["config"];
    let applied_at = config["applied_at_unix_ms"]
        .as_f64()
        .context("status has no config.applied_at_unix_ms")?;
    Ok(ApplyRun {
        what: what.to_string(),
        yaml_bytes: yaml.len(),
        agent_ms: config["apply_ms"]
            .as_f64()
            .context("status has no config.apply_ms")?,
        end_to_end_ms: applied_at - renamed_ms,
        memory: proc_stats::memory(pid)?,
    })
}

fn unix_ms() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_millis() as f64)
}

/// Up to [`SERVICES`] and back to `restore` (the bench config the agent ran before).
pub fn measure(
    agent: &mut Agent,
    pid: u32,
    config_path: &Path,
    restore: &str,
) -> Result<Vec<ApplyRun>> {
    let big = many_services_yaml(SERVICES);
    Ok(vec![
        apply(
            agent,
            pid,
            config_path,
            &big,
            &format!("1 -> {SERVICES} services"),
        )?,
        apply(
            agent,
            pid,
            config_path,
            restore,
            &format!("{SERVICES} -> 1 services"),
        )?,
    ])
}

pub fn table(runs: &[ApplyRun], memory_start: Memory) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "config apply at scale (the observing agent; {BACKENDS_PER_SERVICE} backends per service; agent RSS {:.1} MiB before, peak so far {:.1} MiB):",
        mib(memory_start.rss_kib),
        mib(memory_start.peak_kib)
    );
    let _ = writeln!(
        out,
        "{:<22} {:>10} {:>16} {:>20} {:>12} {:>13}",
        "change", "yaml KiB", "agent apply ms", "file to applied ms", "RSS MiB", "peak RSS MiB"
    );
    for r in runs {
        let _ = writeln!(
            out,
            "{:<22} {:>10.0} {:>16.1} {:>20.0} {:>12.1} {:>13.1}",
            r.what,
            r.yaml_bytes as f64 / 1024.0,
            r.agent_ms,
            r.end_to_end_ms,
            mib(r.memory.rss_kib),
            mib(r.memory.peak_kib)
        );
    }
    let _ = writeln!(
        out,
        "agent apply = read + parse + validate + plan + kernel map writes; file to applied adds \
         the file poll (every 250 ms) and the 1 ms resolution of both clocks"
    );
    out
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_scale_config_is_valid_and_has_distinct_vips_in_the_bench_range() {
        let cfg = sockmesh_control::parse_config(&many_services_yaml(SERVICES)).unwrap();
        assert_eq!(cfg.services.len(), SERVICES);
        let vips: std::collections::BTreeSet<_> =
            cfg.services.iter().map(|s| (s.vip, s.port)).collect();
        assert_eq!(vips.len(), SERVICES);
        for s in &cfg.services {
            let std::net::IpAddr::V4(v4) = s.vip else {
                panic!("{}", s.vip)
            };
            let [a, b, c, _] = v4.octets();
            assert!((a, b) == (127, 100) && (100..140).contains(&c), "{v4}");
            assert!(s.backends.iter().all(|b| b.addr.ip().is_loopback()));
        }
    }
}
