//! Harness for tests that load sockmesh's eBPF programs into the running kernel.
//!
//! Everything a privileged test touches is its own and is removed again by a guard's `Drop`,
//! also when the test panics, because these tests run on shared machines:
//!
//! - [`Cgroup2`]: a child cgroup `<cgroup2>/sockmesh-test-<pid>-<name>` the agent attaches to
//!   and the clients run in (never the cgroup v2 root).
//! - [`Bpffs`]: the pin directory `/sys/fs/bpf/sockmesh-test-<pid>-<name>`.
//! - [`Netns`]: a network namespace for addresses outside 127.0.0.0/8 (IPv6 `fd00::/64`).
//! - [`Agent`]: a `sockmesh-agent` process with its log, admin API client and shutdown.
//! - [`TestBed`]: all of the above wired together, plus the config file the agent watches.
//! - [`TcpBackendSet`]: backends that count their accepts and tell a client who they are.
//! - [`ConnectClient`]: a stock python3 client that connects through a VIP and reports, per
//!   connect, which backend answered, what `getpeername()` said and any errno.
//! - [`EchoClient`]: a python3 client pushing bulk echo traffic through a VIP.
//! - [`Netfault`]: `sockmesh-agent netfault` dropping SYNs or segments for one cgroup.
//! - [`CpuQuota`]: a CFS quota on a workload cgroup (v2 `cpu.max`, or a v1 cpu cgroup).
//! - [`BpfStats`]: `kernel.bpf_stats_enabled` for a test, and a program's run count.
//! - [`Prometheus`]: a real Prometheus server scraping the agent; [`promtool_check_metrics`].
//! - [`metric_value`], [`sum_metric`], [`histogram_mass_above`]: reading the agent's
//!   `/metrics` ([`Agent::metrics_text`]).
//!
//! Tests fail loudly when they cannot run: no root, no bpffs, no agent binary
//! ([`agent_bin`]), no CLI binary ([`cli_bin`]), no Prometheus all panic with a message
//! saying what is missing. Nothing returns early.
//!
//! # The tests (`tests/*.rs`), and the addresses each one owns
//!
//! Run as root, one at a time: `cargo xtask test`, or by hand
//! `SOCKMESH_AGENT_BIN=target/release/sockmesh-agent cargo test -p sockmesh-bpf-tests --
//! --test-threads=1`. Each test has its own VIP (127.100.N.x) and backend port range, so a
//! leftover from one can never answer for another; a new test takes the next free row.
//!
//! | file | what it shows | ports | VIPs |
//! | --- | --- | --- | --- |
//! | **routing** | | | |
//! | `harness.rs` | the harness itself (no agent): cgroup guard, backends, python client, netns, admin HTTP | 18100-18109 | 127.100.99.1 |
//! | `routing.rs` | getpeername = VIP, outside cgroup not routed, non-VIP untouched | 18120-18128 | 127.100.2.1-3 |
//! | `weighted.rs` | weights 1:1:2 over 4,000 connects | 18130-18131 | 127.100.3.1 |
//! | `round_robin.rs` | exact cycles, 1:1:1 and 1:2 | 18140-18151 | 127.100.4.1, 127.100.5.1 |
//! | `maglev.rs` | sticky callers, minimal disruption on removal | 18160-18171 | 127.100.6.1, 127.100.7.1 |
//! | `reload.rs` | weight change, backend removal, broken file | 18180-18201 | 127.100.8-10.1 |
//! | `restart.rs` | SIGTERM, routing while down, adoption | 18210-18211 | 127.100.11.1 |
//! | `cli.rs` | `check`, `cleanup` | 18220-18221 | 127.100.12.1 |
//! | `ipv6.rs` | `fd00::100` in a netns of its own | 80-81, 8081 in the netns | `fd00::100` in the netns |
//! | `least_conn.rs` | busy backend avoided, 1:3 split at equal load (v4, v6), two choices over 20 backends, unknown policy code refused and counted | 18230-18239; 80-81, 8081 in its netns | 127.100.14.x; `fd00::` VIPs in its netns |
//! | `l7_redirect.rs` | http VIPs (IPv4, v4-mapped, `::1`) land on the test's own proxy listener (`SM_PROXY`); origins read with `sockmesh_proxy::origin` (VIP, service id, caller), gone at close; getpeername = VIP; tcp service beside them direct; no listener: refused at once | 18260-18266, the listener's ephemeral port | 127.100.17.1-2, `[::1]:18265` |
//! | `l7_restart.rs` | 3 proxy restarts (`POST /v1/proxy/restart`) under load: 4 python HTTP/1.1 keep-alive clients x 10,000 requests and h2load runs (2 h2c connections x 10 streams), every request sent answered 200; 3 pid changes, 4 starts | 18984-18987; backends 127.0.0.2-5 | 127.100.97.10-11 |
//! | `l7_caller_routes.rs` | per request: caller routes by the workload's labels and locality by its zone, exact counts per backend and per caller in the proxy's metrics | 18944-18945; backends 127.0.0.40-43 | 127.100.94.20-21 |
//! | `identity.rs` | `allowed_callers` selectors (namespace, service account, labels): admitted callers connect, the rest `denied` at connect; routes match the same identity labels | 18240-18243 | 127.100.15.1-2 |
//! | **kernel signals** | | | |
//! | `signals_connect.rs` | ok counts exact, handshake count, caller = workload or `unknown`, CLI | 18300-18301 | 127.100.30.1 |
//! | `signals_failures.rs` | refused and timeout counted per backend, `/v1/failures`, CLI | 18310-18311 | 127.100.31.1 |
//! | `signals_retransmits.rs` | loss on one backend: its retransmits > 0, the others 0 | 18320-18321 | 127.100.32.1 |
//! | `signals_cpu.rs` | throttled seconds and run-queue mass > 1 ms: busy yes, idle no | 18330-18331 | 127.100.33.1 |
//! | `signals_prometheus.rs` | PromQL over scraped series = agent's counts; promtool clean | 18340-18341 | 127.100.34.1 |
//! | `signals_cardinality.rs` | 12 callers, `--max-callers 4`: bounded `caller` values | 18350-18351 | 127.100.35.1 |
//! | `signals_rtt_sampling.rs` | kept-alive exchanges: exactly `RTT_SAMPLES_PER_CONN` RTT samples plus one srtt at close per connection, sock_ops runs stop growing with the exchanges | 18360-18361 | 127.100.36.1 |
//! | **health** | | | |
//! | `health_ban.rs` | 5 refused connects ban a dead backend; failed probe doubles the ban; a passing probe lets it back | 18400-18401 | 127.100.40.1 |
//! | `health_deviation.rs` | one lossy backend's retransmits stand out from the others': `deviation_*` ban, only it | 18410-18411 | 127.100.41.1 |
//! | `health_cap.rs` | `max_banned_percent`: one of two dead backends banned, panic mode | 18420-18421 | 127.100.42.1 |
//! | `health_circuit.rs` | all backends time out: circuit opens (fast `circuit_open` refusals), half-open, closes | 18430-18431 | 127.100.43.1 |
//! | `health_limits.rs` | `max_connections` and GCRA `connect_rate`/`connect_burst` in the kernel | 18440-18443 | 127.100.44.1-2 |
//! | `health_shedding.rs` | overload sheds the offline caller (`result="shed"`), online still connects; recovery | 18450-18451 | 127.100.45.1 |
//! | `health_acl.rs` | `allowed_callers`: other workloads and unknown callers `denied`, open service unaffected | 18460-18461 | 127.100.46.1-2 |
//! | `health_fault.rs` | `POST /v1/fault` 100/50/0 %: `result="fault"`, no ban, circuit closed | 18470-18471 | 127.100.47.1 |
//! | `health_drain.rs` | a banned backend's long-lived connection destroyed after `drain_grace`, not before | 18480-18481 | 127.100.48.1 |
//! | `connect_storm.rs` | 60,000 refused connects from 4 workers against dead backends: agent RSS (sampled) under baseline + 64 MiB; connects counted + events lost = connects made; engine queue drops nothing, a `consecutive_failures` ban, panic mode | 18990-18999 | 127.100.99.10 |
//! | `drain_netns.rs` | drain reaches a pod (netns + child cgroup, backends behind a veth in 198.18.0.0/24): its VIP connection destroyed, an unrouted one kept, reconnect to the new backend; own-netns drain too; without `SYS_ADMIN`/`SYS_PTRACE` only the agent's namespace, counted, warned once | 18250-18257; 198.18.0.10-11 in its netns | 127.100.16.1-4 |
//! | **diagnosis** | | | |
//! | `diagnose_dead_backend.rs` | `/v1/diagnose` ranks `backends_failing`; `/v1/lines`, `/v1/top`, CLI | 18500-18509 | 127.100.50.1-3 |
//! | `diagnose_backend_errors.rs` | an http backend answering 500: `/v1/diagnose` ranks `backend_errors` naming it; `/v1/top` request counts = the client's; CLI | 18946-18947; backends 127.0.0.44-46 | 127.100.94.30 |
//! | `diagnose_network.rs` | 20 % segment loss on all backends: `network` ranked first | 18510-18519 | 127.100.50.10 |
//! | `diagnose_cpu.rs` | CFS-throttled caller: `cpu_starvation` ranked first, naming it | 18520-18529 | 127.100.50.20 |
//! | **SLOs** | | | |
//! | `slo_prometheus.rs` | shipped rules' burn rates = agent's; page alert fires, ticket does not; metric families = `deploy/metrics.txt` | 18600-18699 | 127.100.60.x |
//! | **restart under load, map pressure, upgrade, same node** | | | |
//! | `chaos_restart.rs` | SIGKILLs under load: no failed connect, no broken connection, same kernel objects; interrupted first starts leave one consistent set | 18700-18709 | 127.100.70.1-9 |
//! | `pressure_maps.rs` | map gauges exact, over-capacity config rejected whole, full LRU maps never stop routing | 18720-18729 | 127.100.71.x (127.100.72-73.x in the rejected config) |
//! | `upgrade.rs` | an old layout's pins are not adopted; new set attached beside it, old retired, no failed connect | 18760-18769 | 127.100.76.1 |
//! | `enrollment.rs` | `enrollment: workloads`: only workload cgroups routed, others dial the VIP itself; `all` live | 18770-18771 | 127.100.77.1 |
//! | `series_lifecycle.rs` | 1,000 backend replacements (100 edits of 10, `drain_grace: 1s`), each new address routed to: replaced backends' series removed, `/metrics` ends with as many backend series as after the first; `--max-series 3` over 6 backends folds into `other`, counted | 18980-18983; backends 127.0.10.1-127.0.15.10, 127.0.16.1-6 | 127.100.98.1-2 |
//! | `l7_slo_prometheus.rs` | one of two http backends answers 500: the proxy's `sockmesh_requests_total` per code and the agent's `request_success` SLO counters = the client's own counts; a real Prometheus scraping agent and proxy records burn rate > 14.4, the page alert fires | 18950-18954 | 127.100.95.1 |
//! | `l7_grpc.rs` | a grpcio client through an http service's VIP to grpcio servers: the client's count per status (OK, NOT_FOUND, UNAVAILABLE, INTERNAL) = the proxy's `sockmesh_requests_total{code="grpc_*"}`; the server's `time_remaining()` bounded by the service's `timeout` and by the client's deadline; a deadline run out at a slow server: DEADLINE_EXCEEDED, counted | 18930-18931; backends 127.0.0.30-31 | 127.100.93.1-2 |
//! | `l7_bad_input.rs` | through the VIP, while a kept-alive client gets only 200s: garbage bytes 400, a 1 MiB header 431, 200 slowloris connections and 20 stalled HTTP/2 prefaces closed after the 10 s head timeout, HTTP/2 rapid-reset bursts GOAWAY `ENHANCE_YOUR_CALM`; each counted in `sockmesh_proxy_refused_total{reason}`; the proxy's sampled RSS peak under 128 MiB | 18964-18969 | 127.100.93.5 |
//! | `l7_timeouts.rs` | a hung backend's tries move on after `per_try_timeout` (all 200, retries = its requests); all backends hung: 504 within `timeout` + 5 s | 18955-18959 | 127.100.96.10-11 |
//! | `same_node.rs` | sk_msg redirect byte-exact both ways, close and reset; fallback to TCP once for an outside server | 18960-18963 | 127.100.96.1-2 |
//! | **control plane, caller routes, locality** | | | |
//! | `slowloris.rs`, `slowloris_control.rs` | 2,000 held half-requests against the agent's `/metrics` (cap 512: the longest-idle make room) and, in a process of its own, opened in batches of 250, the control plane's API: scrapes, admin socket, routing and a ban keep working, a config change reaches the agent; descriptors bounded; every held connection closed by the server (evicted or header timeout) | 18970-18979 | 127.100.97.1-2 |
//! | `control_follow.rs` | an agent follows `sockmesh-control`: edits, invalid edits, persisted snapshot, watch reconnect, 401, rollback | test N: 188N0-188N9 | 127.100.8N.1 |
//! | `route_callers.rs` | label rules: canary-only, 90/10 split, catch-all; `fallback: all` / `none` live | 18900-18909 | 127.100.90.1 |
//! | `locality_failover.rs` | callers stay in their zone while >= `min_healthy_percent` of it is healthy, fail over below, return | 18910-18919 | 127.100.91.1 |
//! | **cluster testbed** ([`cluster`]: nodes and pods in network namespaces of their own; backends listen on pod addresses in 198.18.0.0/15, so no host port is used) | | | |
//! | `cluster_routing.rs` | a pod on node 1 reaches endpoints on nodes 2 and 3 through the VIP, spread by weight, `getpeername` = VIP; IPv4 and IPv6 (dual-stack Service) | pod ports 8080 | 127.100.100.x, `fd00:100::1` |
//! | `cluster_l7.rs` | a MeshPolicy's http service: a pod's requests through its node's proxy (on the node's address) to pods on nodes 2 and 3, a header route exact; the route's pods leave the endpoints: the route is left out, its requests go to the rest | pod ports 8080 | 127.100.100.40 |
//! | `cluster_locality.rs` | zones from Node labels: callers stay in their node's zone, fail over when it is banned, return | pod ports 8080 | 127.100.101.x |
//! | `cluster_failures.rs` | node 3's pods all gone: banned after `consecutive_failures`, >= 99.5 % success; control plane down 30 s: nothing fails, a change made meanwhile arrives | pod ports 8080 | 127.100.102.x |
//! | `cluster_upgrade.rs` | agents upgraded node by node across a layout change: held cross-node connections unbroken, new connects all succeed | pod ports 8080 | 127.100.103.x |
//! | `cluster_drain.rs` | connections a pod holds (its own network namespace) to a backend on another node are closed after the grace when it is banned and when it leaves its EndpointSlice; the pod reconnects to a healthy one | pod ports 8080 | 127.100.106.x |
//! | `cluster_identity.rs` | the shipped example MeshPolicy and a namespace/label policy admit exactly the pods they select (namespace, labels, ServiceAccount), refuse the rest at connect (`denied` on the caller's node); identity labels a pod sets on itself do not count | pod ports 8080 | 127.100.107.x |
//! | `cluster_convergence.rs` | EndpointSlice write to every node's kernel tables (p50/p99 over 50 changes), agents' RSS and CPU | pod ports 8080 | 127.100.104.x |
//!
//! Errors are `anyhow` with context: this crate is a test edge, where a readable chain of
//! "what was being done" matters more than matching on error kinds.

mod admin;
mod agent;
mod backend;
mod bpffs;
mod cgroup;
mod client;
pub mod cluster;
mod cpu_quota;
mod distribution;
mod echo_client;
mod exposition;
mod mesh_yaml;
mod netfault;
mod netns;
mod operator;
mod prog_stats;
mod prometheus;
mod testbed;

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;

pub use admin::{http_get, http_get_tcp, percent_encode, HttpResponse};
pub use agent::{Agent, AgentOptions, NodeSandbox};
pub use backend::{Backend, BackendMode, TcpBackendSet};
pub use bpffs::{ensure_bpffs_mounted, wait_gone, Bpffs, BPFFS_ROOT};
pub use cgroup::{cgroup2_mount, AttachedProgram, Cgroup2};
pub use client::{ClientReport, ConnectClient, ConnectResult, RunningClient};
pub use cpu_quota::{v1_cpu_mount, CpuQuota};
pub use distribution::{assert_shares, binomial_tolerance, counts_by_backend, shares};
pub use echo_client::{EchoClient, EchoReport, EchoResult};
pub use exposition::{
    histogram_mass_above, label_values, metric_value, parse_exposition, sum_metric, Sample,
};
pub use mesh_yaml::{fingerprint_of, BackendYaml, ServiceYaml, WorkloadYaml};
pub use netfault::{Faults, Netfault};
pub use netns::Netns;
pub use operator::{
    sockmesh_cli, sockmesh_cli_json, wait_counter_settled, wait_workloads, SIGNAL_TIMEOUT,
};
pub use prog_stats::BpfStats;
pub use prometheus::{promtool_check_metrics, Prometheus, PROMETHEUS_BIN, PROMTOOL_BIN};
pub use testbed::TestBed;

/// Prefix of every cgroup, bpffs directory and netns the harness creates. Followed by the
/// test process's pid, so parallel runs (and other engineers' runs) never collide, and so
/// [`sweep_stale`] can tell leftovers of dead runs from live ones.
pub const RESOURCE_PREFIX: &str = "sockmesh-test-";

/// The name of a per-test resource: `sockmesh-test-<pid>-<name>`.
pub fn resource_name(name: &str) -> String {
    format!("{RESOURCE_PREFIX}{}-{name}", std::process::id())
}

/// `count` loopback addresses `127.0.0.<first>`, `127.0.0.<first+1>`, ... all on `port`: the
/// usual backend set of a test.
pub fn loopback_addrs(first: u8, count: u8, port: u16) -> Vec<SocketAddr> {
    (0..count)
        .map(|i| SocketAddr::from((Ipv4Addr::new(127, 0, 0, first + i), port)))
        .collect()
}

/// Path of the agent binary under test, from `SOCKMESH_AGENT_BIN`.
///
/// # Panics
/// When the variable is unset or names no file: the bpf-tests are meant to run through
/// `cargo xtask test`, which builds the release agent and sets it.
pub fn agent_bin() -> PathBuf {
    const HOW: &str = "SOCKMESH_AGENT_BIN not set: run the bpf-tests through `cargo xtask test`";
    let path = std::env::var_os("SOCKMESH_AGENT_BIN").map(PathBuf::from);
    match path {
        Some(p) if p.is_file() => p,
        Some(p) => panic!("{HOW} (it names {}, which is not a file)", p.display()),
        None => panic!("{HOW}"),
    }
}

/// Path of the `sockmesh` CLI under test, from `SOCKMESH_CLI_BIN`.
///
/// # Panics
/// When the variable is unset or names no file (`cargo xtask test` sets it beside the agent;
/// by hand: `cargo build --release -p sockmesh-control --bin sockmesh`).
pub fn cli_bin() -> PathBuf {
    const HOW: &str = "SOCKMESH_CLI_BIN not set: run the bpf-tests through `cargo xtask test`,                        or build it with `cargo build --release -p sockmesh-control --bin sockmesh`                        and point SOCKMESH_CLI_BIN at it";
    match std::env::var_os("SOCKMESH_CLI_BIN").map(PathBuf::from) {
        Some(p) if p.is_file() => p,
        Some(p) => panic!("{HOW} (it names {}, which is not a file)", p.display()),
        None => panic!("{HOW}"),
    }
}

/// Panics unless the process runs as root: loading eBPF, creating cgroups and network
/// namespaces all need it, and a test that cannot do its job must fail, not pass.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    assert!(
        euid == 0,
        "bpf-tests need root (euid is {euid}): they load eBPF programs and create cgroups \
         and network namespaces; run them through `cargo xtask test` as root"
    );
}

/// Removes what crashed runs of this harness left behind: cgroups (only if empty), network
/// namespaces and pin directories named `sockmesh-test-<pid>-*` whose `<pid>` is no longer
/// alive. Resources of live processes, including other concurrent runs, are never touched.
/// Best effort: failures are printed, not returned.
pub fn sweep_stale() {
    let is_stale = |name: &str| -> bool {
        let Some(rest) = name.strip_prefix(RESOURCE_PREFIX) else {
            return false;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            return false;
        };
        pid != std::process::id() && !std::path::Path::new(&format!("/proc/{pid}")).exists()
    };
    // Pins first: their cgroup links are what keeps programs attached to the old cgroups.
    bpffs::sweep_stale(&is_stale);
    netns::sweep_stale(&is_stale);
    cgroup::sweep_stale(&is_stale);
    cpu_quota::sweep_stale(&is_stale);
}

// Health (bans, circuit, shedding, limits, ACL, faults, drain) harness pieces; used by tests/health_*.rs (ports 18400-18499, VIPs
// 127.100.40-48.x).
pub mod health_admin;
pub mod health_backend;
pub mod health_client;
pub mod health_yaml;
/// What the connect hook reads (service entry, admitted connections), for waits on the kernel.
pub mod kernel_tables;

// SLO harness pieces; used by tests/slo_prometheus.rs (ports 18600-18699, VIPs
// 127.100.60.x).
pub mod slo_prometheus;

// Diagnosis harness pieces; used by tests/diagnose_*.rs (ports 18500-18599, VIPs
// 127.100.50.x): dead backend 18500-18509, packet loss 18510-18519, CPU-starved caller
// 18520-18529.
pub mod diag_admin;
pub mod diag_yaml;

// Restart-under-load, map-pressure and upgrade harness pieces; used by tests/chaos_*.rs, tests/pressure_*.rs and
// `cargo xtask chaos` (ports 18700-18799, VIPs 127.100.70-79.x); tests/upgrade.rs owns
// 18760-18769 and 127.100.76.x.
pub mod chaos_objects;
pub mod chaos_run;
pub mod map_attach;
pub mod pressure_fill;

// Caller-route and locality harness pieces; used by tests/route_*.rs and
// tests/locality_*.rs (ports 18900-18999, VIPs 127.100.90-99.x): route_callers 18900-18909
// (127.100.90.x), locality_failover 18910-18919 (127.100.91.x). connect_storm.rs takes
// 18990-18999 and 127.100.99.10+ from the end of that range (harness.rs has 127.100.99.1).
/// The L7 gRPC test's grpcio servers and client (tests/l7_grpc.rs: ports 18930-18931,
/// VIPs 127.100.93.1-2, backends 127.0.0.30-31).
pub mod grpc_py;
/// Hostile HTTP callers (garbage, huge header, slowloris, HTTP/2 rapid reset); used by
/// tests/l7_bad_input.rs (ports 18964-18969, VIP 127.100.93.5).
pub mod http_abuse;
/// The L7 tests' python HTTP servers and clients.
pub mod http_py;
/// The L7 tests' common steps (agent with its proxy, the proxy's /metrics).
pub mod l7;
/// A process's sampled `VmRSS` (the spawned proxy's, in tests/l7_bad_input.rs).
pub mod proc_rss;
pub mod route_mesh;
/// The same-node fast path's stock python3 peers.
pub mod same_node_py;

// Control-plane harness pieces; used by tests/control_*.rs (ports 18800-18899,
// VIPs 127.100.80-89.x): test N of control_follow.rs owns ports 188N0-188N9 (the control
// plane's API on 188N0) and VIP 127.100.8N.1.
pub mod control_bed;
pub mod control_server;

// Held connections against HTTP endpoints; used by tests/slowloris.rs (ports 18970-18979,
// VIPs 127.100.97.1-2; tests/l7_restart.rs has 18984-18987 and 127.100.97.10-11).
pub mod slowloris;
