//! The bench's L7 section (issue 19): kept-alive HTTP requests over three routes to one
//! stock HTTP backend, with stock clients at a fixed concurrency, in interleaved rounds:
//! (a) direct to the backend, (b) to the VIP of a `protocol: http` service from inside a
//! bench cgroup, which the kernel hands to the `sockmesh-proxy` its agent spawned
//! (`--proxy spawn`, found beside the agent's binary), and (c) through Debian's haproxy in
//! `mode http`. HTTP/1.1 with wrk, HTTP/2 (h2c, prior knowledge) with h2load; per route
//! req/s, p50 and p99; for (b) and (c) the CPU their process used per 1,000 requests, and
//! the proxy's RSS.
//!
//! The backend is haproxy as well, answering every request itself (`http-request return`):
//! it speaks HTTP/1.1 and, on the same port, h2c (haproxy takes the HTTP/2 preface), which
//! the proxy needs because it forwards HTTP/2 as h2c and HTTP/1.1 as HTTP/1.1; and at about
//! 100k req/s on this machine it is not what limits any route.
//!
//! Its own agent, cgroup, pins and scratch directory (`sockmesh-bench-<pid>-l7`), started
//! after the TCP section is over and stopped before the bench returns, so the TCP rows run
//! as before, without a proxy or a third agent on the machine.

mod clients;
mod parse;
mod report;

use std::net::SocketAddr;
use std::time::Duration;
use std::{fs, process};

use anyhow::{bail, Context, Result};
use sockmesh_bpf_tests::{http_get_tcp, l7::wait_proxy, sum_metric, Agent};

use super::haproxy::{free_port, Haproxy};
use super::{proc_stats, BenchArgs};
use crate::attached_agent::{self, PinDir};
use crate::cgroup::ChildCgroup;
use crate::interrupt;
use crate::scratch::ScratchDir;
use clients::Protocol;
use parse::ClientRun;
use report::{L7Results, L7Sample, ProxyMemory};

/// The backend's address (port picked at start) and the http service's VIP: loopback only,
/// apart from the TCP section's .21-.23 and from every test's and demo's addresses.
const BACKEND_IP: &str = "127.0.0.24";
const VIP: &str = "127.100.0.24:9024";
const SERVICE: &str = "bench-http";
/// Agent ready, proxy linked, targets applied.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// Each route and protocol once before the rounds, not counted: pools, caches, page-ins.
const WARMUP_SECS: u64 = 1;

/// The L7 routes, in table order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum L7Route {
    Direct = 0,
    Proxy = 1,
    Haproxy = 2,
}

impl L7Route {
    pub const COUNT: usize = 3;
    pub const ALL: [L7Route; L7Route::COUNT] = [L7Route::Direct, L7Route::Proxy, L7Route::Haproxy];

    pub fn label(self) -> &'static str {
        match self {
            L7Route::Direct => "(a) direct",
            L7Route::Proxy => "(b) sockmesh-proxy (VIP)",
            L7Route::Haproxy => "(c) haproxy mode http",
        }
    }
}

/// Everything a run needs, held in cleanup order (fields drop in declaration order): the
/// agent stops its proxy and detaches first, then its pins and cgroup go, then the
/// haproxies, then the scratch directory with their configs and logs.
struct Bed {
    agent: Agent,
    _pins: PinDir,
    cgroup: ChildCgroup,
    haproxy: Haproxy,
    /// (c)'s HTTP/2 frontend (`proto h2`); its HTTP/1.1 one is `haproxy.frontend()`.
    haproxy_h2: SocketAddr,
    backend: Haproxy,
    proxy_metrics: SocketAddr,
    proxy_pid: u32,
    scratch: ScratchDir,
}

pub fn run(args: &BenchArgs) -> Result<()> {
    let secs = args.duration_ms.div_ceil(1000).max(1);
    let bed = Bed::start()?;
    println!(
        "L7: backend {} (haproxy http-request return) | (b) VIP {VIP} -> sockmesh-proxy pid {} \
         (metrics {}) | (c) haproxy mode http {} (HTTP/1.1), {} (h2c)",
        bed.backend.frontend(),
        bed.proxy_pid,
        bed.proxy_metrics,
        bed.haproxy.frontend(),
        bed.haproxy_h2
    );
    let idle = proc_stats::memory(bed.proxy_pid)?;
    for protocol in Protocol::ALL {
        for route in L7Route::ALL {
            interrupt::check()?;
            bed.client(protocol, route, WARMUP_SECS)
                .with_context(|| format!("warm-up {} {}", protocol.label(), route.label()))?;
        }
    }
    let mut results = L7Results::default();
    for round in 0..args.rounds {
        for protocol in Protocol::ALL {
            for i in 0..L7Route::COUNT {
                // Rotate the order each round so no route always runs first.
                let route = L7Route::ALL[(round + i) % L7Route::COUNT];
                interrupt::check()?;
                let sample = bed
                    .measure(protocol, route, secs)
                    .with_context(|| format!("{} {}", protocol.label(), route.label()))?;
                print_sample(round, protocol, route, &sample);
                results.add(protocol, route, sample);
            }
        }
    }
    let after = proc_stats::memory(bed.proxy_pid)?;
    if proxy_pid(bed.agent.pid().context("the L7 agent stopped")?)? != bed.proxy_pid {
        bail!("the proxy restarted during the L7 rounds (see the agent's log); numbers void");
    }
    let memory = ProxyMemory {
        pid: bed.proxy_pid,
        idle,
        after,
    };
    println!();
    print!("{}", results.table(args.rounds, secs, &memory));
    if results.total_errors() > 0 {
        bail!("some L7 requests failed (see the errors column); the numbers above are suspect");
    }
    Ok(())
}

impl Bed {
    fn start() -> Result<Self> {
        let name = format!("sockmesh-bench-{}-l7", process::id());
        let scratch = ScratchDir::create(&name)?;
        let backend_addr = free_port(BACKEND_IP)?;
        let backend = Haproxy::start_with(
            scratch.path(),
            "http-backend",
            backend_addr,
            &backend_config(backend_addr),
        )?;
        let (h1, h2) = (free_port("127.0.0.1")?, free_port("127.0.0.1")?);
        let haproxy = Haproxy::start_with(
            scratch.path(),
            "haproxy-http",
            h1,
            &haproxy_config(h1, h2, backend_addr),
        )?;
        let config = scratch.path().join("mesh-l7.yaml");
        let yaml = mesh_config(backend_addr)?;
        fs::write(&config, yaml).with_context(|| format!("write {}", config.display()))?;
        let cgroup = ChildCgroup::create(&name)?;
        let pins = PinDir::reserve(&name)?;
        let proxy_metrics = free_port("127.0.0.1")?;
        // The proxy's listener on a port the kernel picks, IPv4 only: the default is a fixed
        // port (15001) that another agent on this machine may hold.
        let mut agent = attached_agent::start_with(
            Some(config),
            cgroup.path(),
            &pins,
            scratch.path(),
            "l7",
            [
                "--proxy-listen".to_owned(),
                "127.0.0.1:0".to_owned(),
                "--proxy-metrics-addr".to_owned(),
                proxy_metrics.to_string(),
            ],
        )?;
        agent.wait_metrics("the proxy linked", START_TIMEOUT, |t| {
            sum_metric(t, "sockmesh_proxy_connected", &[]) >= 1.0
        })?;
        wait_proxy(proxy_metrics, "targets applied", START_TIMEOUT, |t| {
            sum_metric(t, "sockmesh_proxy_targets_generation", &[]) >= 1.0
        })?;
        let proxy_pid = proxy_pid(agent.pid().context("the L7 agent has no pid")?)?;
        Ok(Self {
            agent,
            _pins: pins,
            cgroup,
            haproxy,
            haproxy_h2: h2,
            backend,
            proxy_metrics,
            proxy_pid,
            scratch,
        })
    }

    fn client(&self, protocol: Protocol, route: L7Route, secs: u64) -> Result<ClientRun> {
        let (target, cgroup) = match route {
            L7Route::Direct => (self.backend.frontend(), None),
            L7Route::Proxy => (VIP.parse()?, Some(&self.cgroup)),
            L7Route::Haproxy => match protocol {
                Protocol::Http1 => (self.haproxy.frontend(), None),
                Protocol::H2c => (self.haproxy_h2, None),
            },
        };
        clients::run(protocol, target, secs, cgroup, self.scratch.path())
    }

    /// One client run; for (b) and (c) also the CPU of the hop's process around it, per
    /// 1,000 of the requests it served (the proxy's own count for (b), which also proves
    /// the requests went through it; the client's for (c)).
    fn measure(&self, protocol: Protocol, route: L7Route, secs: u64) -> Result<L7Sample> {
        let hop = match route {
            L7Route::Direct => None,
            L7Route::Proxy => Some(self.proxy_pid),
            L7Route::Haproxy => Some(self.haproxy.pid()),
        };
        let before = match hop {
            Some(pid) => Some((
                proc_stats::cpu_seconds(pid)?,
                if route == L7Route::Proxy {
                    self.proxy_requests()?
                } else {
                    0.0
                },
            )),
            None => None,
        };
        let run = self.client(protocol, route, secs)?;
        let cpu_per_1k = match (hop, before) {
            (Some(pid), Some((cpu, proxied))) => {
                let cpu = proc_stats::cpu_seconds(pid)? - cpu;
                let served = if route == L7Route::Proxy {
                    let n = self.proxy_requests()? - proxied;
                    if n <= 0.0 {
                        bail!("the proxy counted no request: the VIP was not routed to it");
                    }
                    n
                } else {
                    run.requests as f64
                };
                Some(cpu * 1000.0 / served)
            }
            _ => None,
        };
        Ok(L7Sample { run, cpu_per_1k })
    }

    /// `sockmesh_requests_total` of the bench service on the proxy's `/metrics`.
    fn proxy_requests(&self) -> Result<f64> {
        let reply = http_get_tcp(self.proxy_metrics, "/metrics", Duration::from_secs(5))
            .context("scrape the proxy's /metrics")?;
        Ok(sum_metric(
            &reply.body,
            "sockmesh_requests_total",
            &[("service", SERVICE)],
        ))
    }
}

/// The one `sockmesh-proxy` child of the agent (it spawns it, `--proxy spawn`).
fn proxy_pid(agent: u32) -> Result<u32> {
    let mut found = Vec::new();
    for entry in fs::read_dir("/proc")? {
        let Ok(pid) = entry?.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        // A process may exit between read_dir and the read: not ours then.
        let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        if parent_pid(&stat) == Some(agent) && command_name(&stat) == Some("sockmesh-proxy") {
            found.push(pid);
        }
    }
    match found[..] {
        [pid] => Ok(pid),
        _ => bail!("expected one sockmesh-proxy child of agent {agent}, found {found:?}"),
    }
}

/// Field 2 of a `/proc/<pid>/stat` line: the command name, in parentheses.
fn command_name(stat: &str) -> Option<&str> {
    let start = stat.find('(')?;
    let end = stat.rfind(')')?;
    stat.get(start + 1..end)
}

/// Field 4 (ppid), counted after the command name's last `)` as it may hold spaces.
fn parent_pid(stat: &str) -> Option<u32> {
    let (_, rest) = stat.rsplit_once(')')?;
    rest.split_whitespace().nth(1)?.parse().ok()
}

fn print_sample(round: usize, protocol: Protocol, route: L7Route, s: &L7Sample) {
    let cpu = s
        .cpu_per_1k
        .map_or_else(String::new, |c| format!("  CPU {c:.4} s/1k req"));
    println!(
        "l7 round {} {:<8} {:<26} {:>9.0} req/s  p50 {:>8.1} us  p99 {:>8.1} us  errors {}{cpu}",
        round + 1,
        protocol.label(),
        route.label(),
        s.run.req_per_s,
        s.run.p50_us,
        s.run.p99_us,
        s.run.errors
    );
}

/// The http service, one backend, the defaults otherwise (retries only on what never
/// reached the backend, 15 s timeout).
fn mesh_config(backend: SocketAddr) -> Result<String> {
    let vip: SocketAddr = VIP.parse()?;
    let yaml = format!(
        "version: 1\nservices:\n  - name: {SERVICE}\n    vip: {}\n    port: {}\n    \
         protocol: http\n    backends:\n      - addr: {backend}\n",
        vip.ip(),
        vip.port()
    );
    sockmesh_model::parse_config(&yaml).context("L7 bench config")?;
    Ok(yaml)
}

/// The backend: every request answered by haproxy itself with a 3-byte 200. No logging.
fn backend_config(addr: SocketAddr) -> String {
    format!(
        "global
    maxconn 4000

defaults
    mode http
    timeout connect 2s
    timeout client 10s
    timeout server 10s

frontend backend
    bind {addr}
    http-request return status 200 content-type text/plain string \"ok\\n\"
"
    )
}

/// (c): HTTP/1.1 in and out on one frontend, h2c in and out on the other, as the proxy
/// forwards; `option forwardfor` because the proxy appends `x-forwarded-for` too.
fn haproxy_config(h1: SocketAddr, h2: SocketAddr, backend: SocketAddr) -> String {
    format!(
        "global
    maxconn 4000

defaults
    mode http
    option forwardfor
    timeout connect 2s
    timeout client 10s
    timeout server 10s

frontend http1
    bind {h1}
    default_backend app_http1

frontend h2c
    bind {h2} proto h2
    default_backend app_h2c

backend app_http1
    server app {backend}

backend app_h2c
    server app {backend} proto h2
"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_after_a_name_with_spaces() {
        let stat = "4242 (sockmesh-proxy) S 4100 4242 4242 0 -1 4194560 12 0 0 0 3 1";
        assert_eq!(parent_pid(stat), Some(4100));
        assert_eq!(command_name(stat), Some("sockmesh-proxy"));
        let odd = "7 (a) b (c)) R 1 7 7";
        assert_eq!(parent_pid(odd), Some(1));
        assert_eq!(command_name(odd), Some("a) b (c)"));
    }

    #[test]
    fn the_service_config_parses() {
        let yaml = mesh_config("127.0.0.24:8080".parse().unwrap()).unwrap();
        assert!(yaml.contains("protocol: http"), "{yaml}");
    }
}
