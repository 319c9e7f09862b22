//! Metric series with a lifecycle (issue 17): a rollout loop replaces the backends of one
//! service 1,000 times, each time with addresses never seen before (127.0.A.B), and routes
//! connects to every new backend. The series of replaced backends are removed after the
//! service's `drain_grace` (1 s here), so `/metrics` ends with exactly as many
//! backend-addressed series as after the first replacement; only the service's reserved rows
//! (`unknown`: closes seen after their backend left the config; `other`, `none`) may be there
//! besides, a constant of at most three label values, printed.

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use sockmesh_bpf_tests::{
    metric_value, sum_metric, wait_counter_settled, BackendMode, ConnectClient, ServiceYaml,
    TcpBackendSet, TestBed,
};

const SERVICE: &str = "lifecycle";
const CONNECTIONS: &str = "sockmesh_connections_total";
const PORT: u16 = 18980;
/// Backends per config: each edit replaces all of them (100 edits = 1,000 replacements).
const PER_EDIT: usize = 10;
const EDITS: usize = 100;
const RESERVED: [&str; 3] = ["other", "unknown", "none"];
/// How long removed backends' series may take to go: 1 s grace + 1 s refresh, generously.
const REMOVAL_TIMEOUT: Duration = Duration::from_secs(30);

/// The `n`th backend address ever used: 127.0.10.1 onwards, never reused.
fn backend(n: usize) -> SocketAddr {
    let n = u16::try_from(n).unwrap();
    let ip = Ipv4Addr::new(127, 0, 10 + (n / 200) as u8, 1 + (n % 200) as u8);
    SocketAddr::from((ip, PORT))
}

fn generation(g: usize) -> Vec<SocketAddr> {
    (g * PER_EDIT..(g + 1) * PER_EDIT).map(backend).collect()
}

fn mesh(vip: SocketAddr, backends: &[SocketAddr]) -> String {
    let svc = ServiceYaml::new(SERVICE, vip, "round_robin").backends(backends, &[1; PER_EDIT]);
    let yaml = ServiceYaml::mesh(&[svc]);
    yaml.replace("    lb: ", "    drain_grace: 1s\n    lb: ")
}

/// The `{...}` labels of a sample line, if it has a `backend` and is of our service.
fn backend_of(line: &str) -> Option<&str> {
    if line.starts_with('#') || !line.contains(&format!("service=\"{SERVICE}\"")) {
        return None;
    }
    let rest = &line[line.find("backend=\"")? + "backend=\"".len()..];
    Some(&rest[..rest.find('"')?])
}

/// (lines per backend label value) of our service's series.
struct Series {
    by_backend: std::collections::BTreeMap<String, usize>,
}

impl Series {
    fn read(text: &str) -> Self {
        let mut by_backend = std::collections::BTreeMap::new();
        for b in text.lines().filter_map(backend_of) {
            *by_backend.entry(b.to_owned()).or_insert(0) += 1;
        }
        Series { by_backend }
    }

    fn addressed(&self) -> usize {
        self.by_backend
            .iter()
            .filter(|(b, _)| !RESERVED.contains(&b.as_str()))
            .map(|(_, n)| n)
            .sum()
    }

    fn reserved(&self) -> usize {
        self.by_backend
            .iter()
            .filter(|(b, _)| RESERVED.contains(&b.as_str()))
            .map(|(_, n)| n)
            .sum()
    }

    fn values(&self) -> BTreeSet<String> {
        self.by_backend.keys().cloned().collect()
    }
}

/// Connects through the VIP until every backend of `set` accepted at least one.
fn reach_all(bed: &TestBed, vip: SocketAddr, set: &TcpBackendSet, what: &str) {
    for _ in 0..20 {
        ConnectClient::new(vip, 2 * PER_EDIT)
            .run(Some(bed.cgroup()), None)
            .unwrap()
            .assert_all_ok(what);
        if set.accepts().iter().all(|&a| a > 0) {
            return;
        }
    }
    panic!(
        "{what}: some backend never reached: {:?}",
        set.accepts_by_addr()
    );
}

/// Waits until our service's backend-addressed series name exactly `current`, each with a
/// connection and a close counted; returns them.
fn settled(bed: &mut TestBed, current: &[SocketAddr], what: &str) -> Series {
    let want: BTreeSet<String> = current.iter().map(ToString::to_string).collect();
    let deadline = Instant::now() + REMOVAL_TIMEOUT;
    loop {
        let text = bed.agent().metrics_text().unwrap();
        let series = Series::read(&text);
        let addressed: BTreeSet<String> = series
            .values()
            .into_iter()
            .filter(|b| !RESERVED.contains(&b.as_str()))
            .collect();
        let counted = want.iter().all(|b| {
            let has = |family: &str| {
                text.lines()
                    .any(|l| l.starts_with(family) && backend_of(l) == Some(b.as_str()))
            };
            has("sockmesh_connections_total{") && has("sockmesh_connection_duration_seconds_count{")
        });
        if addressed == want && counted {
            return series;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: backend values {addressed:?} (want {want:?}, closes counted: {counted}) after {REMOVAL_TIMEOUT:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn replaced_backends_lose_their_series_after_the_drain_grace() {
    let started = Instant::now();
    let vip: SocketAddr = "127.100.98.1:18981".parse().unwrap();
    let mut set = TcpBackendSet::start(&generation(0), BackendMode::Identify).unwrap();
    let mut bed = TestBed::start("series-life", &mesh(vip, &generation(0))).unwrap();
    reach_all(&bed, vip, &set, "generation 0");

    let mut baseline = None;
    for g in 1..=EDITS {
        let backends = generation(g);
        let next = TcpBackendSet::start(&backends, BackendMode::Identify).unwrap();
        bed.apply_config(&mesh(vip, &backends)).unwrap();
        // The old listeners stop only now: no connect raced to them.
        set = next;
        reach_all(&bed, vip, &set, &format!("generation {g}"));
        if g == 1 {
            let series = settled(&mut bed, &backends, "after the first replacement");
            eprintln!(
                "after the first replacement: {} backend-addressed series ({} backends), {} reserved rows {:?}",
                series.addressed(),
                series.by_backend.len(),
                series.reserved(),
                series.values()
            );
            baseline = Some(series);
        }
    }
    let last = generation(EDITS);
    let end = settled(&mut bed, &last, "after the last replacement");
    let baseline = baseline.unwrap();
    let replaced = EDITS * PER_EDIT;
    eprintln!(
        "after {replaced} replacements ({:?}): {} backend-addressed series, {} reserved rows {:?}",
        started.elapsed(),
        end.addressed(),
        end.reserved(),
        end.values()
    );
    assert_eq!(
        end.addressed(),
        baseline.addressed(),
        "backend-addressed series: first replacement {:?}, last {:?}",
        baseline.by_backend,
        end.by_backend
    );
    let reserved: BTreeSet<String> = end
        .values()
        .into_iter()
        .filter(|b| RESERVED.contains(&b.as_str()))
        .collect();
    assert!(
        reserved.len() <= RESERVED.len(),
        "reserved values {reserved:?}"
    );
    // The reserved rows are a constant: at most one backend's worth of lines per value.
    let per_backend = baseline.addressed() / PER_EDIT;
    eprintln!(
        "series of the service: first {}, end {} ({per_backend} per backend)",
        baseline.addressed() + baseline.reserved(),
        end.addressed() + end.reserved()
    );
    assert!(
        end.reserved() <= RESERVED.len() * per_backend,
        "{} reserved rows at the end",
        end.reserved()
    );
    let overflow = bed
        .agent()
        .metrics_text()
        .unwrap()
        .lines()
        .any(|l| l.starts_with("sockmesh_label_overflow_total{label=\"backend\"}"));
    assert!(
        !overflow,
        "no backend label folded under the default --max-series"
    );
}

/// `--max-series 3` with six backends, all connected to: at most three addresses get series
/// of their own, the rest fold into `backend="other"`, every connect is still counted, and
/// the folding is counted in `sockmesh_label_overflow_total{label="backend"}`.
/// (`sockmesh_backend_banned`, one gauge per configured backend, is outside the budget.)
#[test]
fn backends_beyond_max_series_fold_into_other_and_are_counted() {
    const MAX_SERIES: usize = 3;
    const BACKENDS: usize = 6;
    let backends: Vec<SocketAddr> = (1..=BACKENDS as u8)
        .map(|i| SocketAddr::from((Ipv4Addr::new(127, 0, 16, i), 18982)))
        .collect();
    let vip: SocketAddr = "127.100.98.2:18983".parse().unwrap();
    let svc = ServiceYaml::new("budget", vip, "round_robin").backends(&backends, &[1; BACKENDS]);
    let set = TcpBackendSet::start(&backends, BackendMode::Identify).unwrap();
    let mut bed = TestBed::new("series-budget", &ServiceYaml::mesh(&[svc])).unwrap();
    bed.start_agent_with(["--max-series", &MAX_SERIES.to_string()])
        .unwrap();
    let mut connects = 0;
    for _ in 0..20 {
        ConnectClient::new(vip, 2 * BACKENDS)
            .run(Some(bed.cgroup()), None)
            .unwrap()
            .assert_all_ok("budget");
        connects += 2 * BACKENDS;
        if set.accepts().iter().all(|&a| a > 0) {
            break;
        }
    }
    assert!(
        set.accepts().iter().all(|&a| a > 0),
        "{:?}",
        set.accepts_by_addr()
    );
    let ok = |t: &str| sum_metric(t, CONNECTIONS, &[("service", "budget"), ("result", "ok")]);
    let text = wait_counter_settled(bed.agent(), "ok connects", connects as f64, ok).unwrap();
    let values: BTreeSet<String> = text
        .lines()
        // `sockmesh_backend_banned` is written per configured backend, outside the budget
        // (bounded by the config, reset with each config; README "Metrics").
        .filter(|l| !l.starts_with('#') && !l.starts_with("sockmesh_backend_banned{"))
        .filter(|l| l.contains("service=\"budget\""))
        .filter_map(|l| {
            let rest = &l[l.find("backend=\"")? + "backend=\"".len()..];
            Some(rest[..rest.find('"')?].to_owned())
        })
        .collect();
    let overflow = metric_value(
        &text,
        "sockmesh_label_overflow_total",
        &[("label", "backend")],
    );
    let other = sum_metric(
        &text,
        CONNECTIONS,
        &[("service", "budget"), ("backend", "other")],
    );
    eprintln!(
        "backend values {values:?}; {connects} connects, {other} under other; overflow {overflow:?}"
    );
    assert_eq!(ok(&text), connects as f64, "every connect is counted");
    let addressed = values.iter().filter(|b| b.as_str() != "other").count();
    assert!(addressed <= MAX_SERIES, "backend values {values:?}");
    assert!(values.contains("other"), "no `other` backend: {values:?}");
    assert!(other > 0.0, "no connect folded into other");
    assert!(
        overflow.is_some_and(|n| n >= other),
        "sockmesh_label_overflow_total{{label=\"backend\"}} is {overflow:?}, {other} folded connects"
    );
}
