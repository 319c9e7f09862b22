//! Map pressure: full maps never take the agent or existing flows down.
//!
//! One agent, three small services (routing, echo, a per-caller limit) and a caller
//! workload, then:
//! 1. the gauges: `sockmesh_map_entries{map}` equals what the config and the workloads put
//!    in each map, `sockmesh_map_capacity{map}` equals the pinned map's `max_entries`
//!    (bpftool), and the kernel-filled maps are LRU (bpftool `lru_hash`);
//! 2. a flood of caller cgroups (200 under the workload) fills `SM_CALLERS` accordingly;
//! 3. a config needing more than a kernel table holds (MAX_BACKEND_STATS / 256 + 1 services x
//!    256 backends plus the 6 pairs of the services above: more (service, backend) pairs than
//!    the stats table's 131,072): rejected whole by the model's `MAX_BACKEND_PAIRS` rule (the
//!    same rule that keeps the control plane from serving it), naming the first service that
//!    does not fit, in `/status` `config.last_error` (and by `sockmesh-agent check`); the
//!    previous config stays, routing through the existing VIPs still works; the time from
//!    writing it to the rejection is printed;
//! 4. `SM_SOCK_STAMPS` (262,144) and `SM_CALLER_CONNS` (65,536) filled beyond capacity from
//!    user space (what 262,144 open sockets or 65,536 (service, caller) pairs would do): the
//!    gauges show them full and capped, one warning line each (not one per second),
//!    connects through the VIPs and the per-caller-limited VIP still succeed, getpeername
//!    still answers the VIP, and long-lived connections opened before still echo. The
//!    held connections are to a `same_node` service whose backends are outside the cgroup:
//!    first the three same-node gauges count exactly their 100 sockets (the socket hash
//!    key by key), then the two same-node LRU notes are filled beyond capacity too and the
//!    held connections keep echoing over TCP.
//!
//! Ports 18720-18729, VIPs 127.100.71.x (services) and 127.100.72-73.x (the rejected config).

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use sockmesh_bpf_tests::chaos_run::Holder;
use sockmesh_bpf_tests::health_yaml::{health_mesh, HealthService, HealthWorkload};
use sockmesh_bpf_tests::pressure_fill::{
    fill, map_gauges, map_info, map_pin, FAKE_COOKIE_BASE, FAKE_SERVICE_BASE,
};
use sockmesh_bpf_tests::{
    loopback_addrs, Agent, BackendMode, ConnectClient, ServiceYaml, TcpBackendSet, TestBed,
};

const WATCHED: [&str; 13] = [
    "SM_SERVICES",
    "SM_SLOT_TABLES",
    "SM_BACKENDS",
    "SM_BACKEND_TCP",
    "SM_ACL",
    "SM_CALLERS",
    "SM_WL_TIDS",
    "SM_SOCK_STAMPS",
    "SM_CALLER_CONNS",
    "SM_SAME_NODE_WAIT",
    "SM_SAME_NODE_TCP",
    "SM_SAME_NODE",
    "SM_PROXY_ORIGINS",
];

/// The kernel-filled maps that must evict rather than fail.
const LRU: [&str; 4] = [
    "SM_SOCK_STAMPS",
    "SM_CALLER_CONNS",
    "SM_SAME_NODE_WAIT",
    "SM_SAME_NODE_TCP",
];

/// A same-node note key no socket has (family 0).
fn fake_pair(i: u64) -> Vec<u8> {
    let mut k = vec![0u8; 40];
    k[..8].copy_from_slice(&(FAKE_COOKIE_BASE + i).to_ne_bytes());
    k
}

fn services(web: &[SocketAddr], echo: &[SocketAddr]) -> Vec<HealthService> {
    vec![
        HealthService::new(
            ServiceYaml::new("p-web", vip(1), "weighted_random").backends(web, &[1, 1]),
        ),
        // Same-node, but its backends (this process) are not under the cgroup: the held
        // clients join the socket hash, leave a note for a server end that never comes, and
        // fall back to TCP on their first write, one entry each in the three same-node maps.
        HealthService::new(
            ServiceYaml::new("p-echo", vip(2), "round_robin").backends(echo, &[1, 1]),
        )
        .with("same_node", "true"),
        HealthService::new(
            ServiceYaml::new("p-limited", vip(3), "round_robin").backends(web, &[1, 1]),
        )
        .with("limits", "{max_connections_per_caller: 1000}"),
    ]
}

fn vip(i: u8) -> SocketAddr {
    SocketAddr::from(([127, 100, 71, i], 18720))
}

/// Services naming the same 256 backend addresses: one more than the stats table holds.
const BIG_SERVICES: u32 = sockmesh_common::MAX_BACKEND_STATS / 256 + 1;

/// The services above plus [`BIG_SERVICES`] services each naming the same 256 backends.
fn over_capacity(base: &[HealthService], workloads: &[HealthWorkload]) -> String {
    let mut yaml = health_mesh(base, workloads);
    let at = yaml.find("workloads:").unwrap_or(yaml.len());
    let mut extra = String::new();
    for s in 0..BIG_SERVICES {
        let (c, d) = (72 + s / 255, 1 + s % 255);
        let _ = writeln!(extra, "  - name: p-big-{s}");
        let _ = writeln!(extra, "    vip: \"127.100.{c}.{d}\"");
        let _ = writeln!(extra, "    port: 18720");
        extra.push_str("    backends:\n");
        for b in 0..256u32 {
            let _ = writeln!(
                extra,
                "      - addr: \"127.0.{}.{}:18724\"",
                2 + b / 255,
                1 + b % 255
            );
        }
    }
    yaml.insert_str(at, &extra);
    yaml
}

#[test]
fn full_maps_reject_or_evict_and_existing_flows_keep_working() {
    let web = loopback_addrs(2, 2, 18721);
    let echo = loopback_addrs(4, 2, 18722);
    let _web = TcpBackendSet::start(&web, BackendMode::Identify).unwrap();
    let _echo = TcpBackendSet::start(&echo, BackendMode::Echo).unwrap();
    let base = services(&web, &echo);
    let mut bed = TestBed::new("pressure", &health_mesh(&base, &[])).unwrap();
    let flood = bed.cgroup().child("flood").unwrap();
    let workloads = [HealthWorkload::new(
        "flood",
        &flood.relative_path().unwrap(),
        None,
    )];
    let yaml = health_mesh(&base, &workloads);
    bed.write_config(&yaml).unwrap();
    bed.start_agent().unwrap();
    let pins = bed.bpffs().path().to_path_buf();

    // 1. Gauges at rest, capacities as pinned, LRU where the kernel fills.
    let text = bed
        .agent()
        .wait_metrics("map gauges for the config", Duration::from_secs(10), |t| {
            map_gauges(t).is_ok_and(|g| g.get("SM_CALLERS").is_some_and(|c| c.0 == 1))
        })
        .unwrap();
    let gauges = map_gauges(&text).unwrap();
    for name in WATCHED {
        let info = map_info(&map_pin(&pins, name).unwrap()).unwrap();
        let (_, capacity) = gauges[name];
        assert_eq!(capacity, info.max_entries, "{name}: {gauges:?}");
    }
    let entries = |name: &str| gauges[name].0;
    assert_eq!(entries("SM_SERVICES"), 3, "{gauges:?}");
    assert_eq!(entries("SM_SLOT_TABLES"), 3, "{gauges:?}");
    assert_eq!(entries("SM_BACKENDS"), 4, "{gauges:?}");
    assert_eq!(entries("SM_BACKEND_TCP"), 6, "{gauges:?}");
    assert_eq!(entries("SM_ACL"), 0, "{gauges:?}");
    for lru in LRU {
        let info = map_info(&map_pin(&pins, lru).unwrap()).unwrap();
        assert_eq!(
            info.kind, "lru_hash",
            "{lru} must evict, not fail, when full"
        );
    }

    // 2. A flood of caller cgroups.
    let children: Vec<_> = (0..200)
        .map(|i| flood.child(&format!("c{i}")).unwrap())
        .collect();
    bed.agent()
        .wait_metrics("SM_CALLERS = 201", Duration::from_secs(10), |t| {
            map_gauges(t).is_ok_and(|g| g["SM_CALLERS"].0 == 201)
        })
        .unwrap();
    ConnectClient::new(vip(3), 50)
        .run(Some(&children[199]), None)
        .unwrap()
        .assert_all_ok("from the 200th caller cgroup, per-caller limited");

    // 3. More than the backend stats table holds: rejected whole, previous config stays.
    let big = over_capacity(&base, &workloads);
    let before = bed.agent().status().unwrap();
    let written = Instant::now();
    bed.write_config(&big).unwrap();
    let status = bed
        .agent()
        .wait_rejected(1, Duration::from_secs(60))
        .unwrap();
    let reject_time = written.elapsed();
    let last_error = status["config"]["last_error"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    // The base services' 6 pairs come first; the first big service that does not fit is
    // the one the model names.
    let limit = sockmesh_model::MAX_BACKEND_PAIRS as u32;
    assert_eq!(limit, sockmesh_common::MAX_BACKEND_STATS);
    let first_over = (limit - 6) / 256;
    let index = 3 + first_over;
    let needed = 6 + (first_over + 1) * 256;
    let expected = format!(
        "services[{index}].backends: services[0..={index}] list {needed} backends together, \
         more than the {limit} (service, backend) pairs the kernel's tables hold"
    );
    assert!(last_error.contains(&expected), "{expected}\n{status:#}");
    assert_eq!(
        status["config"]["fingerprint"],
        before["config"]["fingerprint"]
    );
    assert_eq!(status["services"], before["services"]);
    assert_eq!(bed.agent().get("/ready").unwrap().status, 200);
    let check = Agent::run_check(bed.config_path()).unwrap();
    assert_eq!(check.status.code(), Some(1), "{check:?}");
    assert!(
        String::from_utf8_lossy(&check.stderr).contains(&expected),
        "{check:?}"
    );
    let report = ConnectClient::new(vip(1), 300)
        .run(Some(bed.cgroup()), None)
        .unwrap();
    report.assert_all_ok("after the rejected config");
    assert!(report
        .results
        .iter()
        .all(|r| r.peer.as_deref() == Some(&vip(1).to_string()[..])));
    let gauges = map_gauges(&bed.agent().metrics_text().unwrap()).unwrap();
    assert_eq!(gauges["SM_SERVICES"].0, 3, "{gauges:?}");
    assert_eq!(gauges["SM_BACKEND_TCP"].0, 6, "{gauges:?}");
    println!(
        "pressure: a config of {} services / {} KiB rejected {reject_time:?} after it was written: {last_error}",
        BIG_SERVICES + 3,
        big.len() / 1024
    );
    bed.write_config(&yaml).unwrap();

    // 4. The LRU maps the kernel fills, beyond capacity.
    let holder = Holder::start(&bed, vip(2), 100, Duration::from_secs(120)).unwrap();
    bed.agent()
        .wait_metrics(
            "stamps of the 100 held sockets",
            Duration::from_secs(10),
            |t| map_gauges(t).is_ok_and(|g| g["SM_SOCK_STAMPS"].0 >= 100),
        )
        .unwrap();
    let text = bed
        .agent()
        .wait_metrics(
            "one entry per held socket in each same-node map",
            Duration::from_secs(10),
            |t| {
                map_gauges(t).is_ok_and(|g| {
                    ["SM_SAME_NODE", "SM_SAME_NODE_WAIT", "SM_SAME_NODE_TCP"]
                        .iter()
                        .all(|m| g[*m].0 == 100)
                })
            },
        )
        .unwrap();
    println!(
        "pressure: 100 held same-node sockets without a peer: {:?}",
        map_gauges(&text).unwrap()
    );
    let stamps = map_pin(&pins, "SM_SOCK_STAMPS").unwrap();
    let cap = map_info(&stamps).unwrap().max_entries;
    let started = Instant::now();
    let n = fill(&stamps, cap + cap / 10, |i| {
        (FAKE_COOKIE_BASE + i).to_ne_bytes().to_vec()
    })
    .unwrap();
    let fill_time = started.elapsed();
    let conns = map_pin(&pins, "SM_CALLER_CONNS").unwrap();
    let conns_cap = map_info(&conns).unwrap().max_entries;
    let m = fill(&conns, conns_cap + conns_cap / 10, |i| {
        let mut k = FAKE_SERVICE_BASE.to_ne_bytes().to_vec();
        k.extend_from_slice(&(i as u32).to_ne_bytes());
        k
    })
    .unwrap();
    let mut same_node_caps = Vec::new();
    for name in ["SM_SAME_NODE_WAIT", "SM_SAME_NODE_TCP"] {
        let pin = map_pin(&pins, name).unwrap();
        let cap = map_info(&pin).unwrap().max_entries;
        fill(&pin, cap + cap / 10, fake_pair).unwrap();
        same_node_caps.push((name, cap));
    }
    let text = bed
        .agent()
        .wait_metrics("the LRU maps over 90%", Duration::from_secs(30), |t| {
            map_gauges(t).is_ok_and(|g| {
                g["SM_SOCK_STAMPS"].0 * 10 >= cap * 9
                    && g["SM_CALLER_CONNS"].0 * 10 >= conns_cap * 9
                    && same_node_caps.iter().all(|(m, c)| g[*m].0 * 10 >= c * 9)
            })
        })
        .unwrap();
    let gauges = map_gauges(&text).unwrap();
    assert!(gauges["SM_SOCK_STAMPS"].0 <= cap, "{gauges:?}");
    assert!(gauges["SM_CALLER_CONNS"].0 <= conns_cap, "{gauges:?}");
    for (m, c) in &same_node_caps {
        assert!(gauges[*m].0 <= *c, "{gauges:?}");
    }
    assert_eq!(gauges["SM_SAME_NODE"].0, 100, "{gauges:?}");
    println!(
        "pressure: wrote {n} socket stamps in {fill_time:?} and {m} caller counters; gauges \
         SM_SOCK_STAMPS {} / {cap}, SM_CALLER_CONNS {} / {conns_cap}",
        gauges["SM_SOCK_STAMPS"].0, gauges["SM_CALLER_CONNS"].0
    );

    // Existing and new flows: connects route (getpeername = VIP, a fresh stamp evicts an old
    // one), the per-caller limit admits, the held connections echo.
    let report = ConnectClient::new(vip(1), 300)
        .run(Some(bed.cgroup()), None)
        .unwrap();
    report.assert_all_ok("with SM_SOCK_STAMPS full");
    assert!(report
        .results
        .iter()
        .all(|r| r.peer.as_deref() == Some(&vip(1).to_string()[..])));
    ConnectClient::new(vip(3), 100)
        .run(Some(&children[7]), None)
        .unwrap()
        .assert_all_ok("per-caller limited, with SM_CALLER_CONNS full");
    let held = holder.finish().unwrap();
    let broken: Vec<_> = held.iter().filter(|h| !h.last_ok).collect();
    assert!(broken.is_empty(), "{broken:#?}");

    // One warning per map that crossed 90%, however many refreshes saw it full.
    std::thread::sleep(Duration::from_secs(3));
    let log = bed.agent().log();
    for map in LRU {
        let lines: Vec<&str> = log
            .lines()
            .filter(|l| l.contains(&format!("map {map} is ")) && l.contains("% full"))
            .collect();
        assert_eq!(lines.len(), 1, "{map}: {lines:#?}");
        assert!(
            lines[0].contains("WARN") && lines[0].contains("when full: LRU"),
            "{}",
            lines[0]
        );
        println!("pressure: {}", lines[0]);
    }
    // What counting the full maps costs (info once when it is slow; every count at debug,
    // with RUST_LOG=info,sockmesh_agent::signals::pressure=debug).
    for line in log
        .lines()
        .filter(|l| l.contains("kernel-written maps"))
        .take(12)
    {
        println!("pressure: {line}");
    }
    assert!(!log.contains("panicked"), "{}", bed.agent().log_tail(40));
    assert_eq!(bed.agent().get("/ready").unwrap().status, 200);
    drop(children);
}
