//! Issue 15, `lb: least_conn`: the kernel sends new connects to the backend with the fewest
//! active connections relative to its weight, from the per-backend counts it keeps
//! (`SM_BACKEND_CONNS`); and a service entry with a policy code the programs do not know is
//! refused and counted, never routed.
//!
//! - Busy backend: A holds 50 open routed connections (a caller in the test cgroup connected
//!   through the VIP while A was the only backend), then B joins; 400 short-lived connects go
//!   at least 80% to B. The kernel's count for A reads 50 throughout and every count returns
//!   to 0 once the connections close.
//! - Equal load: nothing held, sequential short-lived connects, weights 1:3: the tie split
//!   follows the weights within 5 points over 2,000 connects (one standard deviation is
//!   ~1 point).
//! - Both on IPv4 (127.0.0.0/8 backends, VIPs 127.100.14.x) and on IPv6 (`fd00::` inside a
//!   network namespace of the test's own, as in ipv6.rs).
//! - Two choices: 20 backends (above `LC_SCAN_MAX`), one holding 30 connections: it never
//!   wins a pair, so it gets none of 400 connects and the 19 idle ones all get some.
//! - Unknown policy: `lb` of a pinned `SM_SERVICES` entry rewritten to 77 (straight through bpf(2)): every
//!   connect fails with ECONNREFUSED, no backend accepts anything, and
//!   `sockmesh_unknown_policy_connects_total` and `result="no_backend"` rise by exactly the
//!   number of attempts.
//!
//! Ports 18230-18239 (host), 80-81 and 8081 in the netns.

use std::net::SocketAddr;
use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;
use sockmesh_bpf_tests::health_client::{Caller, Connects};
use sockmesh_bpf_tests::{
    assert_shares, counts_by_backend, kernel_tables, metric_value, sum_metric, BackendMode,
    ConnectClient, Netns, ServiceYaml, TcpBackendSet, TestBed,
};

const HELD: usize = 50;
const BUSY_CONNECTS: usize = 400;
const SPLIT_CONNECTS: usize = 2000;
const WAIT: Duration = Duration::from_secs(30);
const UNKNOWN: &str = "sockmesh_unknown_policy_connects_total";

/// The addresses of one run: A and B behind the busy VIP, C and D (weights 1:3) behind the
/// split VIP.
struct Addrs {
    a: SocketAddr,
    b: SocketAddr,
    busy_vip: SocketAddr,
    c: SocketAddr,
    d: SocketAddr,
    split_vip: SocketAddr,
}

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

#[test]
fn least_conn_ipv4_avoids_the_busy_backend_and_splits_idle_load_by_weight() {
    let addrs = Addrs {
        a: addr("127.0.0.2:18230"),
        b: addr("127.0.0.3:18230"),
        busy_vip: addr("127.100.14.1:18231"),
        c: addr("127.0.0.4:18232"),
        d: addr("127.0.0.5:18232"),
        split_vip: addr("127.100.14.2:18233"),
    };
    busy_then_split("least-conn-v4", None, &addrs);
}

#[test]
fn least_conn_ipv6_avoids_the_busy_backend_and_splits_idle_load_by_weight() {
    let ns = Netns::create("least-conn-v6").unwrap();
    for host in 2..=5 {
        ns.add_addr("lo", &format!("fd00::{host}/64")).unwrap();
    }
    let addrs = Addrs {
        a: addr("[fd00::2]:8081"),
        b: addr("[fd00::3]:8081"),
        busy_vip: addr("[fd00::100]:80"),
        c: addr("[fd00::4]:8081"),
        d: addr("[fd00::5]:8081"),
        split_vip: addr("[fd00::100]:81"),
    };
    busy_then_split("least-conn-v6", Some(&ns), &addrs);
}

fn mesh(x: &Addrs, busy: &[SocketAddr]) -> String {
    ServiceYaml::mesh(&[
        ServiceYaml::new("busy", x.busy_vip, "least_conn").backends(busy, &vec![1; busy.len()]),
        ServiceYaml::new("split", x.split_vip, "least_conn").backends(&[x.c, x.d], &[1, 3]),
    ])
}

fn busy_then_split(name: &str, ns: Option<&Netns>, x: &Addrs) {
    let all = [x.a, x.b, x.c, x.d];
    let set = match ns {
        Some(ns) => TcpBackendSet::start_in_netns(ns, &all, BackendMode::Identify),
        None => TcpBackendSet::start(&all, BackendMode::Identify),
    }
    .unwrap();
    let mut bed = TestBed::start(name, &mesh(x, &[x.a])).unwrap();
    let status = bed.agent().status().unwrap();
    assert_eq!(status["services"][0]["lb"], "least_conn", "{status:#}");
    let conns = bed.bpffs().path().to_path_buf();

    // A takes 50 connections while it is the only backend, and they stay open.
    let mut holder = Caller::spawn_in("holder", bed.cgroup(), ns, x.busy_vip).unwrap();
    let held = holder
        .connect(&Connects::new(HELD).hold().no_identify())
        .unwrap();
    assert_eq!(held.ok_count(), HELD, "{:?}", held.failures());
    let id_a = backend_id(&status, "busy", x.a);
    wait_count(&conns, id_a, HELD as u64);
    wait_until("A accepted the held connections", || {
        set.backends()[0].accepts() == HELD as u64
    });

    // B joins. New short-lived connects go to the idle backend.
    let status = bed.apply_config(&mesh(x, &[x.a, x.b])).unwrap();
    assert_eq!(backend_id(&status, "busy", x.a), id_a, "ids are stable");
    let id_b = backend_id(&status, "busy", x.b);
    let report = ConnectClient::new(x.busy_vip, BUSY_CONNECTS)
        .run(Some(bed.cgroup()), ns)
        .unwrap();
    report.assert_all_ok("least_conn connects with A busy");
    let seen = counts_by_backend(&report.backend_counts(), &[x.a, x.b]);
    eprintln!(
        "{name}: A holds {HELD}; {BUSY_CONNECTS} new connects went A/B {seen:?}; \
         kernel counts A {} B {}",
        count(&conns, id_a),
        count(&conns, id_b)
    );
    assert_eq!(seen.iter().sum::<u64>(), BUSY_CONNECTS as u64, "{seen:?}");
    assert!(
        seen[1] * 100 >= BUSY_CONNECTS as u64 * 80,
        "{name}: only {} of {BUSY_CONNECTS} connects went to the idle backend B",
        seen[1]
    );
    assert_eq!(count(&conns, id_a), HELD as u64, "A's held connections");

    // Equal (zero) load: the split follows the weights 1:3.
    let report = ConnectClient::new(x.split_vip, SPLIT_CONNECTS)
        .run(Some(bed.cgroup()), ns)
        .unwrap();
    report.assert_all_ok("least_conn connects at equal load");
    let seen = counts_by_backend(&report.backend_counts(), &[x.c, x.d]);
    let accepts: Vec<u64> = set.accepts()[2..].to_vec();
    eprintln!("{name}: weights 1:3 at equal load, {SPLIT_CONNECTS} connects went C/D {seen:?}");
    assert_eq!(accepts, seen, "accept counters vs client view");
    assert_shares("least_conn equal-load split", &seen, &[1, 3], 0.05);

    // Closing releases: every count returns to 0 (nothing leaks).
    drop(holder);
    let id_c = backend_id(&status, "split", x.c);
    let id_d = backend_id(&status, "split", x.d);
    for id in [id_a, id_b, id_c, id_d] {
        wait_count(&conns, id, 0);
    }
}

/// Above `LC_SCAN_MAX` (16) backends the kernel uses two distinct random choices: a busy
/// backend is drawn in some pairs but always loses to an idle partner, so it gets nothing,
/// and the idle ones all get connects.
#[test]
fn least_conn_two_choices_above_the_scan_cutoff_never_pick_the_busy_backend() {
    let backends: Vec<SocketAddr> = (10..30)
        .map(|h| addr(&format!("127.0.0.{h}:18236")))
        .collect();
    let vip = addr("127.100.14.4:18237");
    let busy = backends[0];
    let mesh = |set: &[SocketAddr]| {
        ServiceYaml::mesh(&[
            ServiceYaml::new("wide", vip, "least_conn").backends(set, &vec![1; set.len()])
        ])
    };
    let set = TcpBackendSet::start(&backends, BackendMode::Identify).unwrap();
    let mut bed = TestBed::start("least-conn-p2c", &mesh(&[busy])).unwrap();
    let conns = bed.bpffs().path().to_path_buf();
    let status = bed.agent().status().unwrap();
    let id_busy = backend_id(&status, "wide", busy);
    let mut holder = Caller::spawn("holder", bed.cgroup(), vip).unwrap();
    let held = holder
        .connect(&Connects::new(30).hold().no_identify())
        .unwrap();
    assert_eq!(held.ok_count(), 30, "{:?}", held.failures());
    wait_count(&conns, id_busy, 30);

    bed.apply_config(&mesh(&backends)).unwrap();
    let report = ConnectClient::new(vip, BUSY_CONNECTS)
        .run(Some(bed.cgroup()), None)
        .unwrap();
    report.assert_all_ok("least_conn connects over 20 backends");
    let seen = counts_by_backend(&report.backend_counts(), &backends);
    eprintln!("two choices, 20 backends, #0 holds 30: {BUSY_CONNECTS} connects went {seen:?}");
    assert_eq!(seen.iter().sum::<u64>(), BUSY_CONNECTS as u64, "{seen:?}");
    assert_eq!(seen[0], 0, "the busy backend lost every pair: {seen:?}");
    wait_until("the busy backend accepted the held connections", || {
        set.backends()[0].accepts() == 30
    });
    assert_eq!(
        set.accepts()[1..],
        seen[1..],
        "accept counters vs client view"
    );
    // 400 connects over 19 idle backends: each gets some (an empty one has odds ~1e-8).
    assert!(seen[1..].iter().all(|n| *n > 0), "{seen:?}");
    drop(holder);
    wait_count(&conns, id_busy, 0);
}

#[test]
fn unknown_policy_code_in_the_kernel_is_refused_and_counted_never_routed() {
    let backend = addr("127.0.0.6:18234");
    let vip = addr("127.100.14.3:18235");
    let yaml = ServiceYaml::mesh(&[
        ServiceYaml::new("unknown", vip, "least_conn").backends(&[backend], &[1])
    ]);
    let set = TcpBackendSet::start(&[backend], BackendMode::Identify).unwrap();
    let mut bed = TestBed::start("least-conn-unknown", &yaml).unwrap();
    let report = ConnectClient::new(vip, 10)
        .run(Some(bed.cgroup()), None)
        .unwrap();
    report.assert_all_ok("connects before the rewrite");

    set_policy_code(bed.bpffs().path(), vip, 77);
    let before = set.total_accepts();
    let attempts = 20;
    let report = ConnectClient::new(vip, attempts)
        .timeout(Duration::from_secs(1))
        .run(Some(bed.cgroup()), None)
        .unwrap();
    for r in &report.results {
        assert_eq!(r.errno, Some(libc::ECONNREFUSED), "{r:?}");
    }
    assert_eq!(report.results.len(), attempts);
    let text = bed
        .agent()
        .wait_metrics("unknown-policy connects counted", WAIT, |t| {
            metric_value(t, UNKNOWN, &[]) == Some(attempts as f64)
                && sum_metric(t, "sockmesh_connections_total", &[("result", "no_backend")])
                    == attempts as f64
        })
        .unwrap();
    eprintln!(
        "unknown policy: {attempts} refused, {UNKNOWN} = {:?}",
        metric_value(&text, UNKNOWN, &[])
    );
    // Exactly: a later scrape (after the 1 s kernel refresh) has not grown.
    thread::sleep(Duration::from_millis(1500));
    let text = bed.agent().metrics_text().unwrap();
    assert_eq!(metric_value(&text, UNKNOWN, &[]), Some(attempts as f64));
    assert_eq!(set.total_accepts(), before, "never routed");
}

/// The kernel id of `backend` in service `service`, from the agent's `/status`.
fn backend_id(status: &Value, service: &str, backend: SocketAddr) -> u32 {
    let svc = status["services"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == service)
        .unwrap_or_else(|| panic!("no service {service} in {status:#}"));
    let b = svc["backends"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["addr"] == backend.to_string())
        .unwrap_or_else(|| panic!("no backend {backend} in {svc:#}"));
    b["id"].as_u64().unwrap() as u32
}

fn wait_count(pins: &Path, id: u32, want: u64) {
    wait_until(&format!("kernel count of backend {id} = {want}"), || {
        count(pins, id) == want
    });
}

fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(50));
    }
}

/// The kernel's active-connection count of backend `id` (`SM_BACKEND_CONNS`).
fn count(pins: &Path, id: u32) -> u64 {
    kernel_tables::backend_connections(pins, id).unwrap()
}

/// Rewrites the policy code of `vip`'s kernel entry, as the agent never would.
fn set_policy_code(pins: &Path, vip: SocketAddr, code: u32) {
    let mut entry = kernel_tables::service_entry(pins, vip)
        .unwrap()
        .expect("the service's kernel entry");
    entry.lb = code;
    kernel_tables::set_service_entry(pins, vip, &entry).unwrap();
}
