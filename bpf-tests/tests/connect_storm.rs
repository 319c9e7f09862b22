//! A connect storm against dead backends: the agent's memory stays bounded, and every
//! connect is accounted for.
//!
//! One agent on a file config; a service whose four backends are dead (nothing listens:
//! every connect is refused at once), with `max_banned_percent: 25` so that at most one of
//! them is banned (panic mode) and the other three keep failing, and the circuit disabled
//! (`min_success_ratio: 0`) so that the mesh never refuses for them. Four python3 workers in
//! the test's cgroup make refused connects back to back, bounded in count and in time.
//!
//! - The agent's RSS (`VmRSS`), sampled every 10 ms during the storm, stays under its
//!   baseline plus [`RSS_GROWTH_BOUND`].
//! - Every connect the workers made is either counted in `sockmesh_connections_total` or
//!   was lost by the kernel (`sockmesh_events_lost_total`, a full ring).
//! - The health engine saw the failures (a `consecutive_failures` ban, panic mode), its
//!   event queue dropped nothing (four backends make at most four runs per wake-up) and
//!   coalesced no more outcomes than there were.

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use sockmesh_bpf_tests::health_yaml::{health_mesh, HealthService};
use sockmesh_bpf_tests::{loopback_addrs, metric_value, sum_metric, ServiceYaml, TestBed};

const SERVICE: &str = "storm";
const WORKERS: usize = 4;
/// Connects per worker at most (the storm: 4 x 15,000 = 60,000).
const PER_WORKER: usize = 15_000;
/// Seconds a worker runs at most, however many connects it made by then.
const MAX_SECONDS: f64 = 20.0;
/// How much the agent's RSS may grow over its baseline during the storm: generous (the
/// engine's queue is about 1 MiB at its bound), but far below what one queued message per
/// connect would reach in a long storm.
const RSS_GROWTH_BOUND: u64 = 64 * 1024 * 1024;

/// Each worker: refused connects back to back to the VIP until its count or time is up;
/// prints `refused other` (other: any other outcome, which the test rejects).
const STORM_PY: &str = r#"
import errno, os, socket, sys, time
host, port, workers, count, max_s = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5])
r, w = os.pipe()
pids = []
for _ in range(workers):
    pid = os.fork()
    if pid == 0:
        os.close(r)
        refused = other = 0
        deadline = time.monotonic() + max_s
        for _ in range(count):
            if time.monotonic() > deadline:
                break
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.settimeout(1.0)
            rc = s.connect_ex((host, port))
            s.close()
            if rc == errno.ECONNREFUSED:
                refused += 1
            else:
                other += 1
        os.write(w, ('%d %d\n' % (refused, other)).encode())
        os._exit(0)
    pids.append(pid)
os.close(w)
for pid in pids:
    os.waitpid(pid, 0)
out = b''
while True:
    c = os.read(r, 4096)
    if not c:
        break
    out += c
refused = other = 0
for line in out.decode().split('\n'):
    if line.strip():
        a, b = line.split()
        refused += int(a)
        other += int(b)
print(refused, other)
"#;

fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|e| panic!("reading /proc/{pid}/status: {e}"));
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("VmRSS in /proc/<pid>/status");
    kib * 1024
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

fn counter(text: &str, name: &str) -> f64 {
    metric_value(text, name, &[]).unwrap_or(0.0)
}

#[test]
fn connect_storm_against_dead_backends_keeps_the_agent_bounded_and_accounted() {
    // Dead: nothing listens on 127.0.0.2-5:18991 (the test's own port), so each connect is
    // refused by the kernel at once.
    let backends = loopback_addrs(2, 4, 18991);
    let vip: SocketAddr = "127.100.99.10:18990".parse().unwrap();
    let service = HealthService::new(
        ServiceYaml::new(SERVICE, vip, "round_robin").backends(&backends, &[1; 4]),
    )
    .with(
        "outlier",
        "{consecutive_failures: 5, base_ban: 30s, max_ban: 60s, probe_timeout: 200ms, \
         max_banned_percent: 25}",
    )
    .with("circuit", "{min_success_ratio: 0}");
    let mut bed = TestBed::start("connect-storm", &health_mesh(&[service], &[])).unwrap();
    let pid = bed.agent().pid().expect("the agent runs");
    // The agent settles after its start (first refresh, first scrape): the baseline is the
    // largest of a few samples over a second, so start-up growth is not charged to the storm.
    let mut baseline = 0;
    for _ in 0..10 {
        let _ = bed.agent().metrics_text();
        baseline = baseline.max(rss_bytes(pid));
        thread::sleep(Duration::from_millis(100));
    }

    let mut cmd = Command::new("python3");
    cmd.arg("-c")
        .arg(STORM_PY)
        .arg(vip.ip().to_string())
        .arg(vip.port().to_string())
        .arg(WORKERS.to_string())
        .arg(PER_WORKER.to_string())
        .arg(MAX_SECONDS.to_string());
    bed.cgroup().enter(&mut cmd);
    let started = Instant::now();
    let child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawning the python3 storm");
    let mut peak = baseline;
    let mut samples = 0u32;
    let output = thread::scope(|s| {
        let storm = s.spawn(|| child.wait_with_output());
        while !storm.is_finished() {
            peak = peak.max(rss_bytes(pid));
            samples += 1;
            thread::sleep(Duration::from_millis(10));
        }
        storm.join().expect("storm thread")
    })
    .expect("the storm ran");
    let storm_secs = started.elapsed().as_secs_f64();
    assert!(
        output.status.success(),
        "storm failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    let mut counts = stdout.split_whitespace().map(|v| v.parse::<u64>().unwrap());
    let (refused, other) = (counts.next().unwrap(), counts.next().unwrap());
    let made = refused + other;

    // Every connect reaches the metrics (next ring drain) or was lost in the kernel (next
    // 1 s refresh); allow for both.
    let text = bed
        .agent()
        .wait_metrics(
            "every connect of the storm counted or lost",
            Duration::from_secs(30),
            |t| {
                let counted = sum_metric(t, "sockmesh_connections_total", &[("service", SERVICE)]);
                let lost = counter(t, "sockmesh_events_lost_total");
                counted + lost >= made as f64
            },
        )
        .unwrap();
    // Settled: the RSS after, once the agent has folded everything.
    thread::sleep(Duration::from_secs(1));
    let after = rss_bytes(pid);
    let text = bed.agent().metrics_text().unwrap_or(text);
    let counted = sum_metric(&text, "sockmesh_connections_total", &[("service", SERVICE)]);
    let counted_refused = sum_metric(
        &text,
        "sockmesh_connections_total",
        &[("service", SERVICE), ("result", "refused")],
    );
    let lost = counter(&text, "sockmesh_events_lost_total");
    let dropped = counter(&text, "sockmesh_engine_events_dropped_total");
    let coalesced = counter(&text, "sockmesh_engine_events_coalesced_total");
    let bans = sum_metric(
        &text,
        "sockmesh_backend_bans_total",
        &[("reason", "consecutive_failures")],
    );
    let panic = metric_value(&text, "sockmesh_panic_mode", &[("service", SERVICE)]);

    eprintln!(
        "storm: {made} connects ({refused} refused, {other} other) from {WORKERS} workers in \
         {storm_secs:.1} s ({:.0}/s)",
        made as f64 / storm_secs
    );
    eprintln!(
        "agent: connects counted {counted} ({counted_refused} refused), events lost in the \
         kernel {lost}; engine queue: coalesced {coalesced}, dropped {dropped}; \
         consecutive_failures bans {bans}, panic mode {panic:?}"
    );
    eprintln!(
        "agent RSS: baseline {:.1} MiB, peak {:.1} MiB during the storm ({samples} samples, \
         +{:.1} MiB), after {:.1} MiB; bound baseline + {:.0} MiB",
        mib(baseline),
        mib(peak),
        mib(peak.saturating_sub(baseline)),
        mib(after),
        mib(RSS_GROWTH_BOUND)
    );

    assert_eq!(other, 0, "every connect to a dead backend is refused");
    assert!(
        made >= 20_000,
        "a storm is tens of thousands of connects (made {made} in {storm_secs:.1} s)"
    );
    assert!(
        peak <= baseline + RSS_GROWTH_BOUND,
        "RSS peaked at {:.1} MiB, over baseline {:.1} MiB + {:.0} MiB",
        mib(peak),
        mib(baseline),
        mib(RSS_GROWTH_BOUND)
    );
    assert!(
        after <= baseline + RSS_GROWTH_BOUND,
        "RSS after the storm {:.1} MiB, over baseline {:.1} MiB + {:.0} MiB",
        mib(after),
        mib(baseline),
        mib(RSS_GROWTH_BOUND)
    );
    // The storm is accounted for exactly: counted by the agent or lost in the kernel.
    assert_eq!(
        counted + lost,
        made as f64,
        "connects counted ({counted}) + events lost ({lost}) = connects made ({made})"
    );
    assert_eq!(
        counted_refused, counted,
        "the agent counted them all as refused"
    );
    // The engine saw them: a dead backend banned, the rest kept by the cap (panic mode).
    assert!(
        bans >= 1.0,
        "a dead backend is banned for consecutive failures"
    );
    assert_eq!(panic, Some(1.0), "the cap keeps the others in: panic mode");
    // Four backends make at most a few runs per wake-up: nothing dropped, and what was
    // coalesced is part of what was counted.
    assert_eq!(dropped, 0.0, "the engine's queue dropped outcomes");
    assert!(
        coalesced <= counted,
        "coalesced {coalesced} outcomes of {counted} counted"
    );
}
