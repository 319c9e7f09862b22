//! Failures a cluster meets, on the testbed (src/cluster):
//!
//! - **Node failure.** Every pod of node 3 disappears at once (namespaces, veths, processes
//!   gone; the API still lists them, as it does until the node controller notices). Nodes 1
//!   and 2 ban those backends after at most `consecutive_failures` failed connects each
//!   (timed out or unreachable), and their clients, each connecting once every 10 ms (one
//!   connect at a time, each bounded by 1 s: about 60 connects/s each here) for the next
//!   minute, succeed >= 99.5 % of the time.
//! - **Control plane down for 30 s.** No connect fails on any node meanwhile; an
//!   EndpointSlice change made while it was down reaches every agent after it returns.
//!
//! VIPs 127.100.102.x; backends on their pods' addresses.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

use sockmesh_bpf_tests::cluster::{service_backends, Cluster, ClusterOptions, PodSpec};
use sockmesh_bpf_tests::health_admin::bans_of;
use sockmesh_bpf_tests::{wait_workloads, BackendMode, ConnectClient, RunningClient};

const PORT: u16 = 80;
const TARGET: u16 = 8080;
const SERVICE: &str = "shop-web-80";

/// A client in `pod` connecting to `vip` every `interval` for at most `max_time` (or until
/// `until` exists), each connect bounded by 1 s.
fn steady(
    bed: &Cluster,
    pod: &str,
    vip: Ipv4Addr,
    interval: Duration,
    max_time: Duration,
    until: &Path,
) -> RunningClient {
    let pod = bed.pod(pod);
    ConnectClient::new(SocketAddr::from((vip, PORT)), 1_000_000)
        .interval(interval)
        .timeout(Duration::from_secs(1))
        .max_time(max_time)
        .until_file(until)
        .spawn(Some(pod.cgroup()), Some(pod.netns()))
        .unwrap()
}

/// A bed with `shop/web` on `backends` (name, node) and clients `client-<n>` on `clients`.
fn shop(
    name: &str,
    vip: Ipv4Addr,
    backends: &[(&str, usize)],
    clients: &[usize],
) -> (Cluster, Vec<String>, Vec<String>) {
    let mut bed = Cluster::start(ClusterOptions::new(name)).expect("testbed");
    bed.add_namespace("shop", true);
    let clients: Vec<String> = clients
        .iter()
        .map(|n| {
            bed.add_pod(PodSpec::new(
                "shop",
                &format!("client-{}", n + 1),
                *n,
                &[("app", "client")],
            ))
            .unwrap()
        })
        .collect();
    let web: Vec<String> = backends
        .iter()
        .map(|(name, node)| {
            let key = bed
                .add_pod(PodSpec::new("shop", name, *node, &[("app", "web")]))
                .unwrap();
            bed.serve(&key, TARGET, BackendMode::Identify).unwrap();
            key
        })
        .collect();
    let refs: Vec<&str> = web.iter().map(String::as_str).collect();
    bed.apply_service("shop", "web", vip, PORT, TARGET, &refs)
        .unwrap();
    let want = web.len();
    bed.sync("shop-web-80 and its clients", |c| {
        service_backends(c, SERVICE).len() == want
    })
    .unwrap();
    for key in &clients {
        let workload = key.replace('/', "-");
        let node = bed.pod(key).node;
        wait_workloads(bed.agent(node), &[&workload], Duration::from_secs(20)).unwrap();
    }
    (bed, clients, web)
}

#[test]
fn a_dead_node_is_banned_after_consecutive_failures_and_clients_keep_succeeding() {
    let vip = Ipv4Addr::new(127, 100, 102, 1);
    let (mut bed, clients, web) = shop(
        "nodefail",
        vip,
        &[
            ("web-1", 0),
            ("web-2a", 1),
            ("web-2b", 1),
            ("web-3a", 2),
            ("web-3b", 2),
        ],
        &[0, 1],
    );
    let dead: Vec<String> = web
        .iter()
        .filter(|k| bed.pod(k).node == 2)
        .cloned()
        .collect();
    let dead_addrs: Vec<String> = dead
        .iter()
        .map(|k| SocketAddr::from((bed.pod(k).ip, TARGET)).to_string())
        .collect();

    // Node 3 loses every pod at once; the clients start right after, for one minute.
    bed.kill_pods(&dead);
    let stop = bed.dir().join("stop-clients");
    let interval = Duration::from_millis(10);
    let running: Vec<RunningClient> = clients
        .iter()
        .map(|c| steady(&bed, c, vip, interval, Duration::from_secs(60), &stop))
        .collect();
    let reports: Vec<_> = running.into_iter().map(|r| r.wait().unwrap()).collect();

    for (i, (client, report)) in clients.iter().zip(&reports).enumerate() {
        let total = report.results.len();
        let failed = report.failures().len();
        let rate = 100.0 * (total - failed) as f64 / total as f64;
        println!(
            "{client} (node {}): {total} connects in {:.1} s, {failed} failed, {rate:.2} % ok; \
             first failures: {:?}",
            i + 1,
            report.elapsed_ms / 1000.0,
            report
                .failures()
                .iter()
                .take(3)
                .map(|f| f.error.clone())
                .collect::<Vec<_>>()
        );
        assert!(
            failed <= dead.len() * 5,
            "{client}: {failed} failed connects; two dead backends with consecutive_failures 5 \
             allow at most {}",
            dead.len() * 5
        );
        assert!(rate >= 99.5, "{client}: {rate:.2} % of connects succeeded");
        assert!(
            total >= 1_000,
            "{client}: only {total} connects in a minute"
        );
        // No connect after the bans went to node 3.
        let node = bed.pod(client).node;
        let banned: Vec<String> = bans_of(bed.agent(node), SERVICE)
            .unwrap()
            .iter()
            .filter_map(|b| b["backend"].as_str().map(str::to_owned))
            .collect();
        for addr in &dead_addrs {
            assert!(
                banned.contains(addr),
                "node {}: {addr} not banned: {banned:?}",
                node + 1
            );
        }
    }
}

#[test]
fn control_plane_down_for_30_s_breaks_nothing_and_changes_arrive_after() {
    let vip = Ipv4Addr::new(127, 100, 102, 2);
    let (mut bed, clients, _web) = shop("ctldown", vip, &[("web-2", 1), ("web-3", 2)], &[0, 2]);
    let stop = bed.dir().join("stop-clients");
    let interval = Duration::from_millis(50);
    let running: Vec<RunningClient> = clients
        .iter()
        .map(|c| steady(&bed, c, vip, interval, Duration::from_secs(90), &stop))
        .collect();
    thread::sleep(Duration::from_secs(2));

    bed.control().kill().unwrap();
    let down_at = Instant::now();
    thread::sleep(Duration::from_secs(5));
    // While it is down: a new endpoint on node 2.
    let new = bed
        .add_pod(PodSpec::new("shop", "web-2b", 1, &[("app", "web")]))
        .unwrap();
    let new_addr = bed.serve(&new, TARGET, BackendMode::Identify).unwrap();
    bed.set_endpoints("shop", "web", TARGET, &["shop/web-2", "shop/web-3", &new])
        .unwrap();
    thread::sleep(Duration::from_secs(30).saturating_sub(down_at.elapsed()));
    // Every agent still runs the old version meanwhile (two backends).
    for node in 0..bed.node_count() {
        let services = bed.agent(node).get_json("/v1/services").unwrap();
        let backends = services[0]["backends"].as_array().map_or(0, Vec::len);
        assert_eq!(backends, 2, "node {}: {services:#}", node + 1);
    }

    bed.control().start().unwrap();
    let back_at = Instant::now();
    bed.sync("the endpoint added while the control plane was down", |c| {
        service_backends(c, SERVICE).contains(&new_addr.to_string())
    })
    .unwrap();
    println!(
        "control plane down {:.1} s; the change made meanwhile reached all {} agents {:.2} s \
         after it returned",
        back_at.duration_since(down_at).as_secs_f64(),
        bed.node_count(),
        back_at.elapsed().as_secs_f64()
    );
    std::fs::write(&stop, b"").unwrap();
    for (client, r) in clients.iter().zip(running) {
        let report = r.wait().unwrap();
        println!(
            "{client}: {} connects across the outage, {} failed",
            report.results.len(),
            report.failures().len()
        );
        report.assert_all_ok(&format!("{client} across the control plane outage"));
        assert!(report.results.len() >= 300, "{client}: too few connects");
    }
    // New connects reach the new endpoint from every client node.
    for client in &clients {
        let pod = bed.pod(client);
        let report = ConnectClient::new(SocketAddr::from((vip, PORT)), 120)
            .run(Some(pod.cgroup()), Some(pod.netns()))
            .unwrap();
        report.assert_all_ok("after the control plane returned");
        assert!(
            report.backend_counts().contains_key(&new_addr.to_string()),
            "{client} never reached {new_addr}: {:?}",
            report.backend_counts()
        );
    }
}
