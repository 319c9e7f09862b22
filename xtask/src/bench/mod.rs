//! `cargo xtask bench`: what sockmesh costs, side by side in one run.
//!
//! Four routes to the same backend, measured in interleaved rounds so that drift of the
//! machine (other load, frequency, caches) spreads over all of them instead of skewing one:
//! (a) direct connect to the backend, (b) connect to a VIP that sockmesh rewrites in the
//! kernel and observes, (b') the same through a second, routing-only agent (`--observe
//! false`), (c) through one haproxy hop. Per route: connect+request+close rate, the latency
//! of requests on one kept-alive connection, and one-way bulk throughput on one connection. The load generator is this binary's hidden
//! `loadgen` subcommand, started inside the (b) or (b') bench cgroup (each agent is attached
//! to its own cgroup only) and outside both for (a) and (c).
//!
//! Besides the table: the kernel's run count and run time of the agents' programs
//! (connect4, sock_ops, the global sched tracepoints), and, around each (b) connect-rate run,
//! how many ring-buffer events the observing agent drained and lost and how much
//! CPU the agent process used; after the rounds, the time the agent takes to apply a config
//! of 10,000 services and to go back, and its memory; and how long a connect() the mesh
//! refuses takes (fault injection at 100 %, the kernel path of an open circuit, shedding
//! and limits; the circuit test only checks that such connects are refusals).
//!
//! Then the L7 section (`l7/`, issue 19): kept-alive HTTP/1.1 (wrk) and h2c (h2load)
//! direct, through the agent-spawned sockmesh-proxy and through haproxy `mode http`, with
//! the hops' CPU per 1,000 requests and the proxy's RSS; its own agent and cgroup, started
//! once the TCP section's are gone. `--only tcp` or `--only l7` runs one section.
//!
//! Numbers are printed, never asserted: a benchmark on a shared 2-core machine is a
//! comparison, not a test.

mod agent_metrics;
mod backend;
mod bpf_stats;
mod config_apply;
mod haproxy;
mod l7;
pub mod loadgen;
pub(crate) mod proc_stats;
mod refusal;
mod report;
mod same_node;
mod scale;

use std::fs;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};

use crate::attached_agent::{self, PinDir};
use crate::cgroup::ChildCgroup;
use crate::scratch::ScratchDir;
use crate::{agent_build, interrupt, setup};
use backend::Backend;
use bpf_stats::{Prog, ProgStats, StatsEnabled};
use haproxy::Haproxy;
use loadgen::Mode;
use report::{print_sample, DrainSample, ProgRow, Results, Sample};

/// Backend and VIPs of the bench service (default policy, one backend); loopback only and
/// apart from the default config's addresses, so a demo can run at the same time.
const BACKEND_IP: &str = "127.0.0.21";
/// (b): the observing agent's VIP.
const VIP: &str = "127.100.0.21";
const VIP_PORT: u16 = 9021;
/// (b'): the routing-only agent's VIP, to the same backend.
const VIP_UNOBSERVED: &str = "127.100.0.22";
const VIP_UNOBSERVED_PORT: u16 = 9022;

/// The observing agent's sched tracepoint programs, pinned as `<bpffs>/v<LAYOUT_VERSION>/progs/<name>`
/// (ARCHITECTURE.md, "Pins"); they run on every context switch and wake-up of the machine.
const SCHED_PROGS: [&str; 3] = [
    "sockmesh_sched_switch",
    "sockmesh_sched_wakeup",
    "sockmesh_sched_wakeup_new",
];
/// `v<LAYOUT_VERSION>` of sockmesh-common (2 since caller classes).
/// Relative to the pin dir: `v<LAYOUT_VERSION>/progs`.
fn prog_pin_dir() -> String {
    format!("v{}/progs", sockmesh_common::LAYOUT_VERSION)
}

/// After a (b) conn-rate run: long enough for the agent to drain the last events (20 ms
/// tick) and to re-read the kernel's lost-event counter (every 1 s).
const DRAIN_SETTLE: Duration = Duration::from_millis(1200);

#[derive(Args, Debug)]
pub struct BenchArgs {
    /// Rounds per route and measurement.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Measuring time of one load generator run.
    #[arg(long, default_value_t = 2000)]
    duration_ms: u64,
    /// Client threads for the connect-rate measurement.
    #[arg(long, default_value_t = 4)]
    concurrency: usize,
    /// Only the route rounds and their kernel stats: skip the refusal, same-node and
    /// config-apply measurements (minutes, with the 10,000-service apply) while iterating.
    #[arg(long)]
    routes_only: bool,
    /// Run one section only: `tcp` (the routes above and what follows them) or `l7`
    /// (kept-alive HTTP through sockmesh-proxy and haproxy mode http, `l7/`).
    #[arg(long, value_enum)]
    only: Option<Section>,
    /// Instead of the above: the control plane on the Kubernetes source and `--agents`
    /// agents at `--services` x `--backends` (docs/bench.md, "Scale").
    #[arg(long)]
    scale: bool,
    /// `--scale`: Services in the fake API server.
    #[arg(long, default_value_t = 10_000)]
    services: usize,
    /// `--scale`: endpoints per Service.
    #[arg(long, default_value_t = 10)]
    backends: usize,
    /// `--scale`: agents, each a node of the cluster testbed.
    #[arg(long, default_value_t = 8)]
    agents: usize,
    /// `--scale`: one-endpoint changes measured.
    #[arg(long, default_value_t = 100)]
    changes: usize,
    /// `--scale`: seconds to wait after the initial sync before the 10 s idle measurement
    /// (0: right after it, while the agents may still be creating stats entries).
    #[arg(long, default_value_t = 0)]
    idle_wait: u64,
}

/// The bench's sections; both run unless `--only` names one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Section {
    Tcp,
    L7,
}

/// The routes, in table order: the issues' (a)/(b)/(c) with (b') after (b).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    Direct = 0,
    Sockmesh = 1,
    Unobserved = 2,
    Haproxy = 3,
}

impl Route {
    pub const COUNT: usize = 4;
    pub const ALL: [Route; Route::COUNT] = [
        Route::Direct,
        Route::Sockmesh,
        Route::Unobserved,
        Route::Haproxy,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Route::Direct => "(a) direct",
            Route::Sockmesh => "(b) sockmesh VIP",
            Route::Unobserved => "(b') sockmesh, observation off",
            Route::Haproxy => "(c) haproxy tcp hop",
        }
    }
}

/// The kernel counters read around every load generator run.
struct Programs {
    connect4: Prog,
    sock_ops: Prog,
    connect4_unobserved: Prog,
    sched: Vec<(&'static str, Prog)>,
}

pub fn run(args: &BenchArgs) -> Result<()> {
    if args.scale {
        return scale::run(scale::ScaleArgs {
            services: args.services,
            backends: args.backends,
            agents: args.agents,
            changes: args.changes,
            idle_wait: args.idle_wait,
        });
    }
    if args.rounds == 0 || args.duration_ms > 10_000 || args.rounds > 10 {
        bail!("bench keeps to 1..=10 rounds of at most 10 s each");
    }
    interrupt::install();
    setup::run()?;
    let agent_bin = fs::canonicalize(agent_build::run()?)?;
    attached_agent::use_agent_bin(&agent_bin);
    let cpus = print_machine();
    if args.only != Some(Section::L7) {
        tcp(args, cpus)?;
    }
    if args.only != Some(Section::Tcp) {
        // After the TCP section's agents, proxy and backend are gone: its rows run without
        // the L7 agent and its proxy, and the L7 rows without the TCP agents.
        interrupt::check()?;
        println!();
        l7::run(args)?;
    }
    Ok(())
}

/// The TCP section: the routes (a), (b), (b'), (c) and what follows them.
fn tcp(args: &BenchArgs, cpus: usize) -> Result<()> {
    let pid = std::process::id();
    let scratch = ScratchDir::create(&format!("sockmesh-bench-{pid}"))?;
    let backend = Backend::start(BACKEND_IP)?;
    let vip = SocketAddr::new(VIP.parse()?, VIP_PORT);
    let vip_off = SocketAddr::new(VIP_UNOBSERVED.parse()?, VIP_UNOBSERVED_PORT);
    let config = scratch.path().join("mesh.yaml");
    write_config(&config, vip, backend.addr())?;
    let config_off = scratch.path().join("mesh-unobserved.yaml");
    write_config(&config_off, vip_off, backend.addr())?;

    // Declaration order is cleanup order, reversed: stats sysctl, haproxy, each agent (stop
    // + cleanup, which detaches), its pins, its cgroup, then backend, scratch.
    let cgroup = ChildCgroup::create(&format!("sockmesh-bench-{pid}"))?;
    let pins = PinDir::reserve(&format!("sockmesh-bench-{pid}"))?;
    let mut agent =
        attached_agent::start(Some(config.clone()), cgroup.path(), &pins, scratch.path())?;
    let cgroup_off = ChildCgroup::create(&format!("sockmesh-bench-{pid}-unobserved"))?;
    let pins_off = PinDir::reserve(&format!("sockmesh-bench-{pid}-unobserved"))?;
    // Routing only: connect/getpeername programs, no sock_ops, no tracepoints.
    let _agent_off = attached_agent::start_with(
        Some(config_off),
        cgroup_off.path(),
        &pins_off,
        scratch.path(),
        "unobserved",
        ["--observe", "false", "--metrics-addr", "127.0.0.1:0"],
    )?;
    let proxy = Haproxy::start(scratch.path(), backend.addr())?;
    let _stats_on = StatsEnabled::enable()?;
    let progs = find_programs(cgroup.path(), pins.path(), cgroup_off.path())?;
    let metrics = agent.metrics_addr()?;
    let agent_pid = agent.pid().context("the observing agent has no pid")?;
    let memory_start = proc_stats::memory(agent_pid)?;

    println!(
        "backend {} | (b) VIP {vip} (agent pins {}, metrics {metrics}) | (b') VIP {vip_off} \
         (agent --observe false, pins {}) | (c) haproxy {}",
        backend.addr(),
        pins.path().display(),
        pins_off.path().display(),
        proxy.frontend()
    );
    let target = |route: Route| match route {
        Route::Direct => backend.addr(),
        Route::Sockmesh => vip,
        Route::Unobserved => vip_off,
        Route::Haproxy => proxy.frontend(),
    };
    let cgroup_for = |route: Route| match route {
        Route::Sockmesh => Some(&cgroup),
        Route::Unobserved => Some(&cgroup_off),
        Route::Direct | Route::Haproxy => None,
    };

    let mut results = Results::default();
    let mut connect4_total = ProgStats::default();
    let mut sock_ops_total = ProgStats::default();
    let mut connect4_off_total = ProgStats::default();
    // (b)'s sock_ops runs per measurement (conn-rate, latency, throughput): where the
    // per-packet callbacks land.
    let mut sock_ops_by_mode = [ProgStats::default(); 3];
    let mut drains = Vec::new();
    let sched_before = sched_stats(&progs)?;
    let rounds_started = Instant::now();
    for round in 0..args.rounds {
        // Rotate the order each round so no route always runs first (or right after another).
        let order: Vec<Route> = (0..Route::COUNT)
            .map(|i| Route::ALL[(round + i) % Route::COUNT])
            .collect();
        for mode in [Mode::ConnRate, Mode::Latency, Mode::Throughput] {
            for &route in &order {
                interrupt::check()?;
                let concurrency = match mode {
                    Mode::ConnRate => args.concurrency,
                    Mode::Latency | Mode::Throughput | Mode::Refused => 1,
                };
                let drain_run = route == Route::Sockmesh && mode == Mode::ConnRate;
                let counters_before = if drain_run {
                    Some((
                        agent_metrics::scrape(&agent)?,
                        proc_stats::cpu_seconds(agent_pid)?,
                    ))
                } else {
                    None
                };
                let (c4, so, c4_off) = (
                    progs.connect4.stats()?,
                    progs.sock_ops.stats()?,
                    progs.connect4_unobserved.stats()?,
                );
                let started = Instant::now();
                let sample = loadgen(
                    target(route),
                    mode,
                    args.duration_ms,
                    concurrency,
                    cgroup_for(route),
                    None,
                )
                .with_context(|| format!("{} {}", route.label(), mode.as_str()))?;
                let wall_s = started.elapsed().as_secs_f64();
                let c4_delta = progs.connect4.stats()?.since(c4);
                let mut sock_ops_delta = None;
                let connect4_mean = match route {
                    Route::Sockmesh => {
                        connect4_total.add(c4_delta);
                        let delta = progs.sock_ops.stats()?.since(so);
                        sock_ops_total.add(delta);
                        if let Some(i) = mode.round_index() {
                            sock_ops_by_mode[i].add(delta);
                        }
                        sock_ops_delta = Some(delta);
                        c4_delta.mean_ns()
                    }
                    Route::Unobserved => {
                        let delta = progs.connect4_unobserved.stats()?.since(c4_off);
                        connect4_off_total.add(delta);
                        delta.mean_ns()
                    }
                    Route::Direct | Route::Haproxy => None,
                };
                print_sample(round, route, mode, &sample, connect4_mean, sock_ops_delta);
                if let Some((before, cpu_before)) = counters_before {
                    interrupt::sleep(DRAIN_SETTLE)?;
                    let counters = agent_metrics::scrape(&agent)?.since(before);
                    drains.push(DrainSample {
                        round,
                        conns_per_s: sample.ops_per_s,
                        wall_s,
                        counters,
                        connect4_runs: c4_delta.run_cnt,
                        agent_cpu_s: proc_stats::cpu_seconds(agent_pid)? - cpu_before,
                    });
                }
                match mode {
                    Mode::ConnRate => results.add_conn_rate(route, sample),
                    Mode::Latency => results.add_latency(route, sample),
                    Mode::Throughput => results.add_throughput(route, sample),
                    // Not a round mode: measured once after the rounds (refusal.rs).
                    Mode::Refused => {}
                }
            }
        }
    }
    let rounds_wall_s = rounds_started.elapsed().as_secs_f64();
    let sched_after = sched_stats(&progs)?;
    let extras = if args.routes_only {
        None
    } else {
        interrupt::check()?;
        let refusal = refusal::measure(args, &agent, &cgroup, pins.path(), vip)?;
        interrupt::check()?;
        let same_node = same_node::measure(args, &agent, &cgroup)?;
        let bench_yaml = fs::read_to_string(&config)?;
        let applies = config_apply::measure(&mut agent, agent_pid, &config, &bench_yaml)?;
        Some((refusal, same_node, applies))
    };

    let mut rows = vec![
        ProgRow {
            program: "connect4",
            agent: "(b)",
            prog: &progs.connect4,
            window: "(b) runs",
            stats: connect4_total,
            wall_s: None,
        },
        ProgRow {
            program: "sock_ops",
            agent: "(b)",
            prog: &progs.sock_ops,
            window: "(b) runs",
            stats: sock_ops_total,
            wall_s: None,
        },
        ProgRow {
            program: "connect4",
            agent: "(b')",
            prog: &progs.connect4_unobserved,
            window: "(b') runs",
            stats: connect4_off_total,
            wall_s: None,
        },
    ];
    for (((name, prog), after), before) in progs.sched.iter().zip(&sched_after).zip(&sched_before) {
        rows.push(ProgRow {
            program: name.trim_start_matches("sockmesh_"),
            agent: "(b)",
            prog,
            window: "all rounds",
            stats: after.since(*before),
            wall_s: Some(rounds_wall_s),
        });
    }

    println!();
    print!("{}", results.table(args.rounds));
    println!();
    print!("{}", report::prog_table(&rows, cpus));
    if connect4_total.run_cnt > 0 {
        let conns = connect4_total.run_cnt as f64;
        println!(
            "sock_ops per (b) connection: {:.1} runs, {:.0} ns (sock_ops run_cnt and \
             run_time_ns / connect4 run_cnt)",
            sock_ops_total.run_cnt as f64 / conns,
            sock_ops_total.run_time_ns as f64 / conns
        );
    }
    println!(
        "sock_ops over the (b) runs by measurement: {}",
        [Mode::ConnRate, Mode::Latency, Mode::Throughput]
            .iter()
            .zip(&sock_ops_by_mode)
            .map(|(m, s)| format!(
                "{} {} runs, {:.1} ms",
                m.as_str(),
                s.run_cnt,
                s.run_time_ns as f64 / 1e6
            ))
            .collect::<Vec<_>>()
            .join("; ")
    );
    println!();
    print!("{}", report::drain_table(&drains, metrics));
    if let Some((refusal, same_node, applies)) = extras {
        println!();
        print!("{refusal}");
        println!();
        print!("{same_node}");
        println!();
        print!("{}", config_apply::table(&applies, memory_start));
    }
    if connect4_total.run_cnt == 0 {
        bail!("the connect4 program never ran during (b): the VIP was not routed by sockmesh");
    }
    if connect4_off_total.run_cnt == 0 {
        bail!("the connect4 program never ran during (b'): the VIP was not routed by sockmesh");
    }
    if sock_ops_total.run_cnt == 0 {
        bail!("the sock_ops program never ran during (b): connections were not observed");
    }
    if results.total_errors() > 0 {
        bail!("some requests failed (see the errors column); the numbers above are suspect");
    }
    Ok(())
}

/// The programs whose kernel stats the bench reads, each found through the agent that owns
/// it: its cgroup (connect4, sock_ops) or its pin directory (the tracepoints).
fn find_programs(cgroup: &Path, pins: &Path, cgroup_off: &Path) -> Result<Programs> {
    if let Ok(prog) = Prog::sock_ops(cgroup_off) {
        bail!(
            "the --observe false agent attached a sock_ops program (id {}) to {}",
            prog.id,
            cgroup_off.display()
        );
    }
    let sched = SCHED_PROGS
        .iter()
        .map(|name| {
            Ok((
                *name,
                Prog::pinned(&pins.join(prog_pin_dir()).join(name), name)?,
            ))
        })
        .collect::<Result<_>>()?;
    Ok(Programs {
        connect4: Prog::connect4(cgroup)?,
        sock_ops: Prog::sock_ops(cgroup)?,
        connect4_unobserved: Prog::connect4(cgroup_off)?,
        sched,
    })
}

fn sched_stats(progs: &Programs) -> Result<Vec<ProgStats>> {
    progs.sched.iter().map(|(_, p)| p.stats()).collect()
}

fn write_config(path: &std::path::Path, vip: SocketAddr, backend: SocketAddr) -> Result<()> {
    let mut yaml = format!(
        "version: 1\nservices:\n  - name: bench\n    vip: {}\n    port: {}\n    lb: weighted_random\n    backends:\n      - addr: {backend}\n        weight: 1\n",
        vip.ip(),
        vip.port()
    );
    yaml.push_str(&same_node::service_yaml());
    // Checked here so a mistake shows as a config error, not as an agent that never gets ready.
    sockmesh_model::parse_config(&yaml).context("bench config")?;
    fs::write(path, yaml).with_context(|| format!("write {}", path.display()))
}

/// Runs one load generator process and returns what it measured.
fn loadgen(
    target: SocketAddr,
    mode: Mode,
    duration_ms: u64,
    concurrency: usize,
    cgroup: Option<&ChildCgroup>,
    serve: Option<SocketAddr>,
) -> Result<Sample> {
    let mut cmd = Command::new(std::env::current_exe()?);
    if let Some(serve) = serve {
        cmd.args(["loadgen", "--serve", &serve.to_string()]);
    } else {
        cmd.arg("loadgen");
    }
    cmd.args(["--target", &target.to_string(), "--mode", mode.as_str()])
        .args(["--duration-ms", &duration_ms.to_string()])
        .args(["--concurrency", &concurrency.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::piped());
    if let Some(cgroup) = cgroup {
        cgroup.spawn_into(&mut cmd)?;
    }
    let mut child = cmd.spawn().context("start loadgen")?;
    // Bounded: warm-up plus measuring time plus generous slack for the process itself.
    let deadline = Instant::now() + Duration::from_millis(duration_ms) + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if Instant::now() > deadline || interrupt::check().is_err() {
            let _ = child.kill();
            let _ = child.wait();
            interrupt::check()?;
            bail!("loadgen did not finish in time");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut out = String::new();
    if let Some(mut stdout) = child.stdout.take() {
        use std::io::Read;
        stdout.read_to_string(&mut out)?;
    }
    if !status.success() {
        bail!("loadgen failed ({status})");
    }
    let v: serde_json::Value =
        serde_json::from_str(out.trim()).with_context(|| format!("loadgen output: {out}"))?;
    if let Some(err) = v["first_error"].as_str() {
        eprintln!(
            "xtask: loadgen to {target}: {} errors, first: {err}",
            v["errors"]
        );
    }
    let num = |k: &str| v[k].as_f64().unwrap_or(f64::NAN);
    Ok(Sample {
        ops_per_s: num("ops_per_s"),
        p50_us: num("p50_us"),
        p99_us: num("p99_us"),
        p999_us: num("p999_us"),
        errors: v["errors"].as_u64().unwrap_or(0),
    })
}

/// Prints the machine line and returns the number of CPUs.
fn print_machine() -> usize {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .and_then(|l| l.split_once(':'))
        .map_or("unknown", |(_, m)| m.trim());
    let load = fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let load: Vec<&str> = load.split_whitespace().take(3).collect();
    println!(
        "machine: {cpus} CPUs ({model}), kernel {}, load average {} at start",
        kernel.trim(),
        load.join(" ")
    );
    cpus
}
