//! CPU starvation of workloads: `busy`, two busy loops under a CFS quota of 10 ms
//! per 100 ms, is throttled and waits in the run queue for most of every period; `idle`, one
//! sleeping process in an unthrottled cpu cgroup, shows neither. Measured by the agent from
//! the sched tracepoints (run-queue histogram) and cpu.stat (v2, or the v1 cpu controller on
//! hybrid hosts like these), and read here from `/metrics` and `/v1/workloads`.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;
use sockmesh_bpf_tests::{
    histogram_mass_above, metric_value, wait_workloads, CpuQuota, ServiceYaml, TestBed,
    WorkloadYaml, SIGNAL_TIMEOUT,
};

const THROTTLED: &str = "sockmesh_workload_cpu_throttled_seconds_total";
const RUNQ: &str = "sockmesh_workload_runqueue_latency_seconds";
/// 10 ms of CPU per 100 ms period, shared by both busy loops.
const QUOTA_US: u64 = 10_000;
const PERIOD_US: u64 = 100_000;
/// How long the busy loops run before the test looks; they run on (bounded) until it has.
const BUSY_FOR: Duration = Duration::from_secs(3);
/// A busy loop's own bound, in case the test dies before killing it.
const BUSY_LOOP: &str =
    "import time\nend = time.monotonic() + 60\nwhile time.monotonic() < end:\n    pass\n";

#[test]
fn throttled_busy_workload_shows_throttling_and_runqueue_waits_idle_shows_none() {
    let vip: SocketAddr = "127.100.33.1:18331".parse().unwrap();
    // The config needs a service; nothing connects to it here.
    let service =
        ServiceYaml::new("cpu", vip, "round_robin").backend("127.0.0.2:18330".parse().unwrap(), 1);
    let mut bed = TestBed::new(
        "signals-cpu",
        &ServiceYaml::mesh(std::slice::from_ref(&service)),
    )
    .unwrap();
    let busy = bed.cgroup().child("busy").unwrap();
    let idle = bed.cgroup().child("idle").unwrap();
    let busy_quota = CpuQuota::limit(bed.cgroup(), &busy, "busy", QUOTA_US, PERIOD_US).unwrap();
    let idle_cpu = CpuQuota::unlimited(bed.cgroup(), &idle, "idle").unwrap();
    eprintln!(
        "quota on {} (v1: {})",
        busy_quota.cgroup().display(),
        busy_quota.is_v1()
    );
    let workloads = [
        WorkloadYaml::new("busy", &busy.relative_path().unwrap()),
        WorkloadYaml::new("idle", &idle.relative_path().unwrap()),
    ];
    bed.write_config(&ServiceYaml::mesh_with_workloads(&[service], &workloads))
        .unwrap();
    bed.start_agent().unwrap();
    wait_workloads(bed.agent(), &["busy", "idle"], SIGNAL_TIMEOUT).unwrap();

    let mut idle_cmd = Command::new("sleep");
    idle_cmd.arg("120");
    idle_cpu.enter(idle.enter(&mut idle_cmd));
    let mut procs = Processes(vec![spawn(&mut idle_cmd)]);
    for _ in 0..2 {
        let mut cmd = Command::new("python3");
        cmd.args(["-c", BUSY_LOOP]);
        busy_quota.enter(busy.enter(&mut cmd));
        procs.0.push(spawn(&mut cmd));
    }
    thread::sleep(BUSY_FOR);

    // Throttling is read from cpu.stat on the agent's 1 s refresh; the histogram from the
    // kernel's per-CPU map at the same time. Wait for both while the loops still run.
    let above_1ms = |text: &str, workload: &str| {
        histogram_mass_above(text, RUNQ, &[("workload", workload)], 0.001)
            .map_or(0.0, |(mass, _, _)| mass)
    };
    let text = bed
        .agent()
        .wait_metrics(
            "busy throttled with run-queue waits > 1 ms",
            SIGNAL_TIMEOUT,
            |t| {
                metric_value(t, THROTTLED, &[("workload", "busy")]).is_some_and(|s| s > 0.0)
                    && above_1ms(t, "busy") > 0.0
            },
        )
        .unwrap_or_else(|e| panic!("{e:#}\nquota cpu.stat:\n{}", busy_quota.cpu_stat()));
    let rows = bed.agent().get_json("/v1/workloads").unwrap();
    eprintln!("quota cpu.stat:\n{}", busy_quota.cpu_stat());
    drop(procs);

    for workload in ["busy", "idle"] {
        let throttled = metric_value(&text, THROTTLED, &[("workload", workload)]);
        let hist = histogram_mass_above(&text, RUNQ, &[("workload", workload)], 0.001);
        eprintln!(
            "{workload}: throttled {throttled:?} s; run queue (above, bound, count) {hist:?}; \
             /v1/workloads {}",
            row(&rows, workload)
        );
    }
    let (busy_above, bound, busy_count) =
        histogram_mass_above(&text, RUNQ, &[("workload", "busy")], 0.001).unwrap();
    assert_eq!(
        bound, 0.001024,
        "first log2 bound at or above 1 ms is 2^10 µs"
    );
    assert!(
        busy_above > 0.0 && busy_count >= busy_above,
        "busy run queue"
    );
    assert!(metric_value(&text, THROTTLED, &[("workload", "busy")]).unwrap() > 0.0);
    assert_eq!(
        metric_value(&text, THROTTLED, &[("workload", "idle")]),
        Some(0.0),
        "idle throttled seconds"
    );
    let (idle_above, _, idle_count) =
        histogram_mass_above(&text, RUNQ, &[("workload", "idle")], 0.001)
            .expect("idle's run-queue histogram is exported");
    assert_eq!(
        idle_above, 0.0,
        "idle run-queue waits over 1 ms (of {idle_count})"
    );

    let busy_row = row(&rows, "busy");
    assert!(busy_row["nr_throttled"].as_u64().unwrap() > 0, "{busy_row}");
    assert!(
        busy_row["throttled_seconds"].as_f64().unwrap() > 0.0,
        "{busy_row}"
    );
    assert!(
        busy_row["runqueue"]["over_1ms"].as_u64().unwrap() > 0,
        "{busy_row}"
    );
    assert!(busy_row["threads"].as_u64().unwrap() >= 2, "{busy_row}");
    let idle_row = row(&rows, "idle");
    assert_eq!(idle_row["nr_throttled"], 0, "{idle_row}");
    assert_eq!(idle_row["runqueue"]["over_1ms"], 0, "{idle_row}");
    assert_eq!(idle_row["threads"], 1, "{idle_row}");
}

fn spawn(cmd: &mut Command) -> Child {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .expect("spawning a workload process")
}

fn row<'a>(rows: &'a Value, name: &str) -> &'a Value {
    rows.as_array()
        .and_then(|r| r.iter().find(|w| w["name"] == name))
        .unwrap_or_else(|| panic!("no workload {name} in {rows:#}"))
}

/// The workload processes: killed (by pid, our own children) and reaped on drop, also when
/// an assertion fails; the cgroup guards would kill them too, but only later.
struct Processes(Vec<Child>);

impl Drop for Processes {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        for child in &mut self.0 {
            while Instant::now() < deadline && child.try_wait().ok().flatten().is_none() {
                thread::sleep(Duration::from_millis(20));
            }
        }
    }
}
