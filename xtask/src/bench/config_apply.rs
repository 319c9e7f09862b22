//! Config apply time at scale: the observing agent's config file is replaced by one with
//! [`SERVICES`] services (each with [`BACKENDS_PER_SERVICE`] backends, none ever dialed); then
//! [`ONE_SERVICE_CHANGES`] times one service's backend weight changes at that size; then the
//! bench's own one-service config is put back. For each change: the agent's own `apply_ms`
//! (reading and parsing the file, planning the kernel tables, writing them), the end-to-end
//! time from the file's rename to the agent's `applied_at` (which adds the file poll
//! interval, 250 ms by default), and the agent's memory after it.

use std::fmt::Write as _;
use std::fs;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use sockmesh_bpf_tests::Agent;

use super::proc_stats::{self, Memory};

/// The scale the issue asks for.
pub const SERVICES: usize = 10_000;
pub const BACKENDS_PER_SERVICE: usize = 10;
/// One-service changes measured at [`SERVICES`] services, for the p50/p99 of such a change.
pub const ONE_SERVICE_CHANGES: usize = 100;
/// The service whose first backend's weight the one-service changes step through.
const CHANGED_SERVICE: usize = SERVICES / 2;
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

/// The measured changes: the bulk ones (up to [`SERVICES`] and back) and the one-service ones.
pub struct Applies {
    pub bulk: Vec<ApplyRun>,
    pub one_service: Vec<ApplyRun>,
}

/// `n` services, VIPs 127.100.100.1 .. 127.100.139.250 (port 9100), apart from the bench's
/// VIPs; backends on 127.0.0.31-40, which nothing connects to. With `reweighted: Some((i,
/// w))` service `i`'s first backend has weight `w` instead of 1; nothing else differs.
pub fn many_services_yaml(n: usize, reweighted: Option<(usize, u32)>) -> String {
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
            let weight = match reweighted {
                Some((r, w)) if r == i && b == 0 => w,
                _ => 1,
            };
            let _ = writeln!(
                y,
                "      - addr: 127.0.0.{}:{}\n        weight: {weight}",
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
    let fingerprint = sockmesh_model::parse_config(yaml)
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

/// The weight of [`CHANGED_SERVICE`]'s first backend in one-service change `k` (0-based):
/// 2, 3, 4, ..., so every change differs from the one before.
fn step_weight(k: usize) -> u32 {
    2 + k as u32
}

/// Up to [`SERVICES`], [`ONE_SERVICE_CHANGES`] one-service changes, and back to `restore`
/// (the bench config the agent ran before).
pub fn measure(agent: &mut Agent, pid: u32, config_path: &Path, restore: &str) -> Result<Applies> {
    let big = many_services_yaml(SERVICES, None);
    let mut bulk = vec![apply(
        agent,
        pid,
        config_path,
        &big,
        &format!("1 -> {SERVICES} services"),
    )?];
    drop(big);
    let mut one_service = Vec::with_capacity(ONE_SERVICE_CHANGES);
    for k in 0..ONE_SERVICE_CHANGES {
        crate::interrupt::check()?;
        let yaml = many_services_yaml(SERVICES, Some((CHANGED_SERVICE, step_weight(k))));
        one_service.push(apply(
            agent,
            pid,
            config_path,
            &yaml,
            &format!("one service, {k}"),
        )?);
    }
    bulk.push(apply(
        agent,
        pid,
        config_path,
        restore,
        &format!("{SERVICES} -> 1 services"),
    )?);
    Ok(Applies { bulk, one_service })
}

/// Nearest-rank quantile (`q` in 0..=1) of `values`; None when empty.
fn quantile(values: &[f64], q: f64) -> Option<f64> {
    let mut v: Vec<f64> = values.to_vec();
    v.sort_by(f64::total_cmp);
    let rank = (q * v.len() as f64).ceil().max(1.0) as usize;
    v.get(rank.min(v.len()).checked_sub(1)?).copied()
}

pub fn table(applies: &Applies, memory_start: Memory) -> String {
    let runs = &applies.bulk;
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
    let one = &applies.one_service;
    if !one.is_empty() {
        let agent_ms: Vec<f64> = one.iter().map(|r| r.agent_ms).collect();
        let e2e_ms: Vec<f64> = one.iter().map(|r| r.end_to_end_ms).collect();
        let peak = one.iter().map(|r| r.memory.peak_kib).max().unwrap_or(0);
        let _ = writeln!(
            out,
            "one-service change at {SERVICES} services ({} changes of one backend weight; \
             nearest-rank quantiles):",
            one.len()
        );
        let _ = writeln!(
            out,
            "{:<22} {:>10} {:>10} {:>10} {:>10}",
            "", "p50 ms", "p99 ms", "max ms", "mean ms"
        );
        for (name, v) in [("agent apply", &agent_ms), ("file to applied", &e2e_ms)] {
            let q = |p| quantile(v, p).unwrap_or(f64::NAN);
            let _ = writeln!(
                out,
                "{:<22} {:>10.1} {:>10.1} {:>10.1} {:>10.1}",
                name,
                q(0.5),
                q(0.99),
                q(1.0),
                v.iter().sum::<f64>() / v.len() as f64
            );
        }
        let _ = writeln!(
            out,
            "agent peak RSS during the one-service changes: {:.1} MiB",
            mib(peak)
        );
    }
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
        let cfg = sockmesh_model::parse_config(&many_services_yaml(SERVICES, None)).unwrap();
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
            assert_eq!(s.backends.len(), BACKENDS_PER_SERVICE);
        }
    }

    #[test]
    fn each_one_service_step_changes_exactly_that_service() {
        let parse = |r| sockmesh_model::parse_config(&many_services_yaml(SERVICES, r)).unwrap();
        let mut before = parse(None);
        for k in 0..3 {
            let after = parse(Some((CHANGED_SERVICE, step_weight(k))));
            let changed: Vec<usize> = (0..SERVICES)
                .filter(|&i| before.services[i] != after.services[i])
                .collect();
            assert_eq!(changed, vec![CHANGED_SERVICE], "step {k}");
            assert_ne!(before.fingerprint(), after.fingerprint());
            before = after;
        }
    }

    #[test]
    fn quantiles_by_nearest_rank() {
        let v: Vec<f64> = (1..=100).rev().map(f64::from).collect();
        assert_eq!(quantile(&v, 0.5), Some(50.0));
        assert_eq!(quantile(&v, 0.99), Some(99.0));
        assert_eq!(quantile(&v, 1.0), Some(100.0));
        assert_eq!(quantile(&v, 0.0), Some(1.0));
        assert_eq!(quantile(&[7.0], 0.99), Some(7.0));
        assert_eq!(quantile(&[], 0.5), None);
    }
}
