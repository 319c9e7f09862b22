//! Draining reaches pods: connections held from a network namespace other than the agent's
//! are closed too.
//!
//! A "pod" is a network namespace of the test's own plus a child cgroup under the agent's
//! cgroup (also a configured workload). Its backends A and B live in a second namespace,
//! joined to the pod's by a veth pair (198.18.0.0/24 only: no route to or from the host). A
//! "host" caller in the agent's own namespace talks to loopback backends. Each caller holds a
//! connection through its VIP; then the config swaps A for B (and the host's backend for
//! another), and after `drain_grace` the agent destroys both held connections, each in its
//! own namespace, while a connection the pod opened to A directly (not through the VIP, so
//! not stamped) lives on. The callers reconnect through the VIPs to the new backends.
//!
//! Without `CAP_SYS_ADMIN`/`CAP_SYS_PTRACE` (the agent run under `setpriv` with only the
//! three capabilities it needs to run) the agent cannot enter the pod's namespace: it still
//! drains its own, counts the namespace in `sockmesh_drain_netns_denied_total`, and says so
//! in one warning, however many drains follow.

use std::net::SocketAddr;
use std::os::unix::fs::MetadataExt;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use sockmesh_bpf_tests::health_backend::SwitchBackends;
use sockmesh_bpf_tests::health_client::{Caller, Connects, HeldConn};
use sockmesh_bpf_tests::health_yaml::{health_mesh, HealthService, HealthWorkload};
use sockmesh_bpf_tests::{
    metric_value, wait_counter_settled, Cgroup2, Netns, ServiceYaml, TestBed,
};

/// How long the test waits for a drain and its effects: far above the 1 s grace plus the
/// agent's 50 ms tick, so only a drain that never comes fails the wait.
const DRAIN_WAIT: Duration = Duration::from_secs(30);
const DRAINED: &str = "sockmesh_drained_connections_total";
const DENIED: &str = "sockmesh_drain_netns_denied_total";
const WARNING: &str = "cannot enter workload network namespaces";

/// The addresses of one test: VIPs in 127.100.16.x, ports from 18250 up.
struct Plan {
    pod_vip: SocketAddr,
    host_vip: SocketAddr,
    /// A and B, in the backends' namespace.
    pod_backends: [SocketAddr; 2],
    /// Loopback, in the agent's namespace.
    host_backends: [SocketAddr; 2],
}

impl Plan {
    fn new(n: u8, port: u16) -> Self {
        let at = |s: &str| s.parse::<SocketAddr>().unwrap();
        Plan {
            pod_vip: at(&format!("127.100.16.{}:{port}", 2 * n + 1)),
            host_vip: at(&format!("127.100.16.{}:{}", 2 * n + 2, port + 2)),
            pod_backends: [
                at(&format!("198.18.0.10:{}", port + 1)),
                at(&format!("198.18.0.11:{}", port + 1)),
            ],
            host_backends: [
                at(&format!("127.0.0.2:{}", port + 3)),
                at(&format!("127.0.0.3:{}", port + 3)),
            ],
        }
    }

    /// The config with backend `i` of each service (0 first, 1 after the swap).
    fn yaml(&self, i: usize, pod_cgroup: &str) -> String {
        let service = |name: &str, vip, backend| {
            HealthService::new(
                ServiceYaml::new(name, vip, "round_robin").backends(&[backend], &[1]),
            )
            .with("drain_grace", "1s")
        };
        health_mesh(
            &[
                service("pods", self.pod_vip, self.pod_backends[i]),
                service("host", self.host_vip, self.host_backends[i]),
            ],
            &[HealthWorkload::new("pod", pod_cgroup, None)],
        )
    }
}

/// Everything one test runs, in drop order: callers first, then the pod cgroup and the
/// agent's bed, backends, and the namespaces last (deleting them deletes the veth pair).
struct World {
    pod: Caller,
    direct: Caller,
    host: Caller,
    pod_cgroup_rel: String,
    pod_cgroup: Cgroup2,
    bed: TestBed,
    _pod_backends: SwitchBackends,
    _host_backends: SwitchBackends,
    pod_ns: Netns,
    _backend_ns: Netns,
}

impl World {
    /// Builds the namespaces, backends and agent (run under `wrapper`, if any) and has every
    /// caller hold one connection.
    fn start(tag: &str, plan: &Plan, wrapper: &[&str]) -> Result<Self> {
        let pod_ns = Netns::create(&format!("{tag}-pod"))?;
        let backend_ns = Netns::create(&format!("{tag}-be"))?;
        pod_ns.ip(&[
            "link",
            "add",
            "smd-pod",
            "type",
            "veth",
            "peer",
            "name",
            "smd-be",
            "netns",
            backend_ns.name(),
        ])?;
        pod_ns.add_addr("smd-pod", "198.18.0.1/24")?;
        for cidr in ["198.18.0.2/24", "198.18.0.10/24", "198.18.0.11/24"] {
            backend_ns.add_addr("smd-be", cidr)?;
        }
        pod_ns.ip(&["link", "set", "smd-pod", "up"])?;
        backend_ns.ip(&["link", "set", "smd-be", "up"])?;
        let addrs = plan.pod_backends.to_vec();
        // Listeners bound inside keep the namespace for life.
        let pod_backends = backend_ns.run_inside(move || SwitchBackends::start(&addrs))?;
        let host_backends = SwitchBackends::start(&plan.host_backends)?;

        let mut bed = TestBed::new(tag, &plan.yaml(0, "placeholder"))?;
        let pod_cgroup = bed.cgroup().child("pod")?;
        let pod_cgroup_rel = pod_cgroup.relative_path()?;
        bed.write_config(&plan.yaml(0, &pod_cgroup_rel))?;
        bed.start_agent_wrapped(wrapper.iter().copied(), Vec::<String>::new())?;

        let pod = Caller::spawn_in("pod", &pod_cgroup, Some(&pod_ns), plan.pod_vip)?;
        let direct = Caller::spawn_in("direct", &pod_cgroup, Some(&pod_ns), plan.pod_backends[0])?;
        let host = Caller::spawn("host", bed.cgroup(), plan.host_vip)?;
        let mut world = World {
            pod,
            direct,
            host,
            pod_cgroup_rel,
            pod_cgroup,
            bed,
            _pod_backends: pod_backends,
            _host_backends: host_backends,
            pod_ns,
            _backend_ns: backend_ns,
        };
        world.hold(plan)?;
        Ok(world)
    }

    /// One held connection per caller, each to backend 0 (the only one configured yet).
    fn hold(&mut self, plan: &Plan) -> Result<()> {
        let expect = [
            (plan.pod_backends[0], "pod"),
            (plan.pod_backends[0], "direct"),
            (plan.host_backends[0], "host"),
        ];
        for (caller, (backend, name)) in [&mut self.pod, &mut self.direct, &mut self.host]
            .into_iter()
            .zip(expect)
        {
            let held = caller.connect(&Connects::new(1).hold())?;
            assert_eq!(held.ok_count(), 1, "{name}: {:#?}", held.failures());
            assert_eq!(
                held.results[0].backend.as_deref(),
                Some(backend.to_string().as_str()),
                "{name}"
            );
        }
        // The pod's processes really live in another network namespace than the agent.
        let own = std::fs::metadata("/proc/self/ns/net")?.ino();
        let pids = self.pod_cgroup.procs()?;
        assert!(pids.len() >= 2, "pod cgroup holds {pids:?}");
        for pid in pids {
            let ns = std::fs::metadata(format!("/proc/{pid}/ns/net"))?.ino();
            assert_ne!(ns, own, "pod process {pid} is in the agent's namespace");
            let expected = std::fs::metadata(format!("/run/netns/{}", self.pod_ns.name()))?.ino();
            assert_eq!(ns, expected, "pod process {pid} is in the pod namespace");
        }
        Ok(())
    }

    /// Swaps every service's backend for the other one (`to` = 1: A -> B).
    fn swap(&mut self, plan: &Plan, to: usize) -> Result<()> {
        let yaml = plan.yaml(to, &self.pod_cgroup_rel);
        self.bed.apply_config(&yaml).map(|_| ())
    }

    fn metric(&mut self, name: &str, labels: &[(&str, &str)]) -> Result<f64> {
        let text = self.bed.agent().metrics_text()?;
        metric_value(&text, name, labels).with_context(|| format!("no {name} {labels:?}"))
    }
}

/// The held connections of `caller` once none is alive any more (bounded by [`DRAIN_WAIT`]).
fn wait_closed(caller: &mut Caller, what: &str) -> Result<Vec<HeldConn>> {
    let deadline = Instant::now() + DRAIN_WAIT;
    loop {
        let status = caller.status()?;
        if status.iter().all(|h| !h.alive) {
            return Ok(status);
        }
        assert!(
            Instant::now() < deadline,
            "{what}: still open {DRAIN_WAIT:?} after the backend was removed: {status:#?}"
        );
        thread::sleep(Duration::from_millis(50));
    }
}

fn reconnect(caller: &mut Caller, want: SocketAddr, what: &str) -> Result<()> {
    let again = caller.connect(&Connects::new(1).hold())?;
    assert_eq!(again.ok_count(), 1, "{what}: {:#?}", again.failures());
    assert_eq!(
        again.results[0].backend.as_deref(),
        Some(want.to_string().as_str()),
        "{what} reconnects through the VIP to the new backend"
    );
    Ok(())
}

#[test]
fn drain_closes_connections_in_a_pods_network_namespace() {
    let plan = Plan::new(0, 18250);
    let mut w = World::start("drain-netns", &plan, &[]).unwrap();
    w.swap(&plan, 1).unwrap();
    let swapped = Instant::now();

    // The pod's connection to A, destroyed inside the pod's namespace.
    let pod = wait_closed(&mut w.pod, "the pod's connection to A").unwrap();
    eprintln!(
        "pod's connection seen closed {:.2} s after the swap applied (grace 1 s)",
        swapped.elapsed().as_secs_f64()
    );
    assert_eq!(pod[0].errno, Some(libc::ECONNABORTED), "{pod:#?}");
    // The host caller's, in the agent's own namespace.
    let host = wait_closed(&mut w.host, "the host's connection").unwrap();
    assert_eq!(host[0].errno, Some(libc::ECONNABORTED), "{host:#?}");
    // The pod's own connection to A, not made through the VIP, is none of the mesh's.
    let direct = w.direct.status().unwrap();
    assert!(direct[0].alive, "unrouted connection closed: {direct:#?}");

    reconnect(&mut w.pod, plan.pod_backends[1], "the pod").unwrap();
    reconnect(&mut w.host, plan.host_backends[1], "the host caller").unwrap();

    let workload = [("netns", "workload")];
    let text = wait_counter_settled(w.bed.agent(), "drained in pods", 1.0, |t| {
        metric_value(t, DRAINED, &workload).unwrap_or(0.0)
    })
    .unwrap();
    assert_eq!(metric_value(&text, DRAINED, &workload), Some(1.0), "{text}");
    assert_eq!(
        metric_value(&text, DRAINED, &[("netns", "agent")]),
        Some(1.0)
    );
    assert_eq!(metric_value(&text, DENIED, &[]), Some(0.0));
    let log = w.bed.agent().log();
    for line in log.lines().filter(|l| l.contains("drained connections")) {
        eprintln!("{line}");
    }
    let a = format!("backend={}", plan.pod_backends[0]);
    assert!(
        log.lines().any(|l| l.contains("drained connections")
            && l.contains(&a)
            && l.contains("workload_netns=1")),
        "no drain of A in a workload namespace logged:\n{}",
        w.bed.agent().log_tail(40)
    );
    assert!(!log.contains(WARNING), "{}", w.bed.agent().log_tail(40));
}

#[test]
fn without_sys_admin_the_agent_drains_its_own_namespace_and_says_so_once() {
    let plan = Plan::new(1, 18254);
    let wrapper = [
        "setpriv",
        "--bounding-set=-all,+bpf,+net_admin,+perfmon",
        "--inh-caps=-all",
        "--",
    ];
    let mut w = World::start("drain-netns-nocap", &plan, &wrapper).unwrap();
    let pid = w.bed.agent().pid().expect("agent runs");
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let cap_eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .map(|v| u64::from_str_radix(v.trim(), 16).unwrap())
        .unwrap();
    // CAP_SYS_PTRACE is 19, CAP_SYS_ADMIN 21.
    assert_eq!(cap_eff & (1 << 19 | 1 << 21), 0, "agent CapEff {cap_eff:x}");

    w.swap(&plan, 1).unwrap();
    // Its own namespace still drains.
    let host = wait_closed(&mut w.host, "the host's connection").unwrap();
    assert_eq!(host[0].errno, Some(libc::ECONNABORTED), "{host:#?}");
    // Without CAP_SYS_PTRACE not even the namespace of a process can be read (the callers
    // run as root with every capability), so what could not be entered is counted per
    // cgroup holding such processes: the pod's, and the bed's (the host caller, which is in
    // fact in the agent's namespace, but the agent cannot tell). Two drains walked them (A's
    // and the host backend's: either could have found sockets in a pod).
    let per_drain = 2.0;
    let text = wait_counter_settled(w.bed.agent(), "namespaces denied", 2.0 * per_drain, |t| {
        metric_value(t, DENIED, &[]).unwrap_or(0.0)
    })
    .unwrap();
    assert_eq!(
        metric_value(&text, DENIED, &[]),
        Some(2.0 * per_drain),
        "{text}"
    );
    assert_eq!(
        metric_value(&text, DRAINED, &[("netns", "agent")]),
        Some(1.0)
    );
    // The drain of A ran (logged) and could not reach the pod: its connection lives on.
    let a = format!("backend={}", plan.pod_backends[0]);
    let deadline = Instant::now() + DRAIN_WAIT;
    while !w
        .bed
        .agent()
        .log()
        .lines()
        .any(|l| l.contains("drained connections") && l.contains(&a))
    {
        assert!(Instant::now() < deadline, "A's drain never ran");
        thread::sleep(Duration::from_millis(50));
    }
    let pod = w.pod.status().unwrap();
    assert!(pod[0].alive, "drained without the capabilities? {pod:#?}");

    // A third drain (B, after the pod reconnected to it) is denied again, and not said again.
    // (The host caller holds nothing to the backend removed with it: no sockets, no walk.)
    reconnect(&mut w.pod, plan.pod_backends[1], "the pod").unwrap();
    w.swap(&plan, 0).unwrap();
    let text = wait_counter_settled(w.bed.agent(), "namespaces denied", 3.0 * per_drain, |t| {
        metric_value(t, DENIED, &[]).unwrap_or(0.0)
    })
    .unwrap();
    assert_eq!(
        metric_value(&text, DENIED, &[]),
        Some(3.0 * per_drain),
        "{text}"
    );
    assert_eq!(w.metric(DRAINED, &[("netns", "workload")]).unwrap(), 0.0);
    let warnings = w.bed.agent().log().matches(WARNING).count();
    assert_eq!(warnings, 1, "{}", w.bed.agent().log_tail(40));
    let pod = w.pod.status().unwrap();
    assert!(pod.iter().all(|h| h.alive), "{pod:#?}");
}
