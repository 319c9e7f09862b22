//! Diagnosis of a CPU-starved caller: the caller workload `client` runs two busy
//! loops under a CFS quota of 10 ms per 100 ms while it keeps connecting through the VIP.
//! Its threads wait in the run queue for most of every period and the cgroup is throttled;
//! the backends (in the test process, unthrottled) are fine and no connect fails. So
//! `/v1/diagnose` ranks `cpu_starvation` first, naming the caller workload.

use std::fs;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use sockmesh_bpf_tests::diag_admin::{evidence, line, ranked, wait_clear_diagnosis};
use sockmesh_bpf_tests::diag_yaml::{diag_mesh, DiagService};
use sockmesh_bpf_tests::{
    loopback_addrs, sockmesh_cli, wait_workloads, BackendMode, ClientReport, ConnectClient,
    CpuQuota, ServiceYaml, TcpBackendSet, TestBed, WorkloadYaml, SIGNAL_TIMEOUT,
};

const QUOTA_US: u64 = 10_000;
const PERIOD_US: u64 = 100_000;
/// A busy loop's own bound, in case the test dies before killing it.
const BUSY_LOOP: &str =
    "import time\nend = time.monotonic() + 90\nwhile time.monotonic() < end:\n    pass\n";
const DIAGNOSIS_TIMEOUT: Duration = Duration::from_secs(30);
/// Connects the starved caller makes before the test asks for a diagnosis.
const MIN_CONNECTS: u64 = 30;

#[test]
fn a_throttled_busy_caller_ranks_cpu_starvation_first() {
    let backends = loopback_addrs(2, 2, 18520);
    let vip: SocketAddr = "127.100.50.20:18521".parse().unwrap();
    let web =
        DiagService::new(ServiceYaml::new("web", vip, "round_robin").backends(&backends, &[1, 1]));
    let _set = TcpBackendSet::start(&backends, BackendMode::Identify).unwrap();
    let mut bed = TestBed::new("diag-cpu", &diag_mesh(std::slice::from_ref(&web), &[])).unwrap();
    let client = bed.cgroup().child("client").unwrap();
    let quota = CpuQuota::limit(bed.cgroup(), &client, "diag-client", QUOTA_US, PERIOD_US).unwrap();
    let workloads = [WorkloadYaml::new(
        "client",
        &client.relative_path().unwrap(),
    )];
    bed.write_config(&diag_mesh(&[web], &workloads)).unwrap();
    bed.start_agent().unwrap();
    wait_workloads(bed.agent(), &["client"], SIGNAL_TIMEOUT).unwrap();

    let mut procs = Processes(Vec::new());
    for _ in 0..2 {
        let mut cmd = Command::new("python3");
        cmd.args(["-c", BUSY_LOOP]);
        quota.enter(client.enter(&mut cmd));
        procs.0.push(spawn(&mut cmd));
    }
    // The caller keeps connecting, starved, until the test has its diagnosis.
    let stop = bed.dir().join("stop-client");
    let mut cmd = ConnectClient::new(vip, 100_000)
        .interval(Duration::from_millis(20))
        .until_file(&stop)
        .max_time(Duration::from_secs(80))
        .command(Some(&client), None);
    quota.enter(&mut cmd);
    let mut caller = Some(cmd.spawn().expect("spawning the caller"));
    let started = Instant::now();

    // Starved, it still connects: wait until it has done so a number of times, so the
    // diagnosis covers a caller that keeps connecting, not one that is just starting.
    let agent = bed.agent();
    let deadline = Instant::now() + DIAGNOSIS_TIMEOUT;
    let connected = |row: &Option<serde_json::Value>| {
        row.as_ref()
            .and_then(|r| r["last"]["ok"].as_u64())
            .unwrap_or(0)
    };
    while connected(&line(agent, "web", "client").unwrap()) < MIN_CONNECTS {
        assert!(
            Instant::now() < deadline,
            "the starved caller made fewer than {MIN_CONNECTS} connects in {DIAGNOSIS_TIMEOUT:?}"
        );
        thread::sleep(Duration::from_millis(200));
    }
    eprintln!("{MIN_CONNECTS} connects after {:?}", started.elapsed());
    let running = || started.elapsed() < Duration::from_secs(70);
    let d = wait_clear_diagnosis(agent, "web", DIAGNOSIS_TIMEOUT, running)
        .unwrap_or_else(|e| panic!("{e:#}\nquota cpu.stat:\n{}", quota.cpu_stat()));
    eprintln!("diagnosis after {:?}: {d:#}", started.elapsed());
    let row = line(agent, "web", "client").unwrap();
    let out = sockmesh_cli(agent, &["diagnose", "web"]).unwrap();
    fs::write(&stop, b"").unwrap();
    let report = collect(caller.take().unwrap());
    drop(procs);
    eprintln!("quota cpu.stat:\n{}", quota.cpu_stat());

    let causes = ranked(&d);
    assert_eq!(causes[0].0, "cpu_starvation", "{causes:?}");
    let why = evidence(&d, "cpu_starvation");
    assert!(why[0].starts_with("caller workload client: "), "{why:?}");
    assert!(causes[1..].iter().all(|(_, s)| *s < 0.2), "{causes:?}");

    // The starved caller still connected, and the line view attributes it by name.
    let ok = report.results.iter().filter(|r| r.ok()).count();
    eprintln!(
        "caller: {ok} of {} connects ok in {:.0} ms; line {row:?}",
        report.results.len(),
        report.elapsed_ms
    );
    report.assert_all_ok("starved caller");
    let row = row.expect("a web <- client line");
    assert!(row["last"]["ok"].as_u64().unwrap() >= MIN_CONNECTS, "{row}");
    assert_eq!(row["last"]["failed"], 0, "{row}");

    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    eprintln!("sockmesh diagnose web:\n{text}");
    assert!(text.contains("\n1. cpu_starvation   score "), "{text}");
    assert!(text.contains("   - caller workload client: "), "{text}");
}

fn spawn(cmd: &mut Command) -> Child {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .expect("spawning a busy loop")
}

/// Waits for the caller to stop (it watches the stop file, and `max_time` bounds it) and
/// parses its report; the output is read while waiting, so a long report cannot block it.
fn collect(child: Child) -> ClientReport {
    let out = child.wait_with_output().expect("the caller's output");
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "caller report: {e}: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// The busy loops: killed (by pid, our own children) and reaped on drop, also when an
/// assertion fails; the cgroup guards would kill them too, but only later.
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
