//! The same-node fast path against plain loopback TCP: kept-alive request latency
//! with both ends under the observing agent's cgroup, the backend running inside the load
//! generator's process (`loadgen --serve`) for both routes so only the path differs:
//! (n1) the client dials the backend address itself (loopback TCP, sockmesh not involved);
//! (n2) the client dials a `same_node: true` VIP and sockmesh hands each write socket to
//! socket. The agent's `sockmesh_same_node_bytes_total` proves (n2) took the fast path.

use std::fmt::Write as _;
use std::net::SocketAddr;

use anyhow::{bail, Result};
use sockmesh_bpf_tests::Agent;

use super::report::{median, Sample};
use super::{agent_metrics, loadgen, BenchArgs, Mode};
use crate::{cgroup::ChildCgroup, interrupt};

/// The in-process backend and the `same_node` VIP in front of it (loopback only, apart from
/// the other bench and default-config addresses).
const BACKEND: &str = "127.0.0.23:9023";
const VIP: &str = "127.100.0.23:9023";

/// The service appended to the observing agent's bench config.
pub fn service_yaml() -> String {
    let vip: SocketAddr = VIP.parse().expect("constant");
    format!(
        "  - name: bench-same-node\n    vip: {}\n    port: {}\n    same_node: true\n    backends:\n      - addr: {BACKEND}\n",
        vip.ip(),
        vip.port()
    )
}

/// The medians and what they say.
pub struct SameNode {
    loopback: Vec<Sample>,
    fast: Vec<Sample>,
    redirected_bytes: f64,
    requests: f64,
}

pub fn measure(args: &BenchArgs, agent: &Agent, cgroup: &ChildCgroup) -> Result<SameNode> {
    let backend: SocketAddr = BACKEND.parse()?;
    let vip: SocketAddr = VIP.parse()?;
    let before = agent_metrics::scrape(agent)?;
    let (mut loopback, mut fast) = (Vec::new(), Vec::new());
    for round in 0..args.rounds {
        // Alternate which route runs first.
        let order = if round % 2 == 0 {
            [false, true]
        } else {
            [true, false]
        };
        for through_vip in order {
            interrupt::check()?;
            let target = if through_vip { vip } else { backend };
            let s = loadgen(
                target,
                Mode::Latency,
                args.duration_ms,
                1,
                Some(cgroup),
                Some(backend),
            )?;
            println!(
                "round {round} {:<30} latency   p50 {:>7.1} us  p99 {:>7.1} us  p999 {:>7.1} us  errors {}",
                label(through_vip),
                s.p50_us,
                s.p99_us,
                s.p999_us,
                s.errors
            );
            if through_vip {
                &mut fast
            } else {
                &mut loopback
            }
            .push(s);
        }
    }
    // The agent re-reads the kernel counters once a second.
    interrupt::sleep(std::time::Duration::from_millis(1200))?;
    let redirected_bytes = agent_metrics::scrape(agent)?.since(before).same_node_bytes;
    let requests: f64 = fast
        .iter()
        .map(|s| s.ops_per_s * args.duration_ms as f64 / 1000.0)
        .sum();
    if redirected_bytes <= 0.0 {
        bail!("the same_node VIP moved no bytes socket to socket: the fast path was not taken");
    }
    Ok(SameNode {
        loopback,
        fast,
        redirected_bytes,
        requests,
    })
}

fn label(through_vip: bool) -> &'static str {
    if through_vip {
        "(n2) same_node VIP, sk_msg"
    } else {
        "(n1) loopback TCP, same process"
    }
}

impl std::fmt::Display for SameNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let q = |v: &[Sample], pick: fn(&Sample) -> f64| median(v.iter().map(pick));
        let mut out = String::new();
        let _ = writeln!(
            out,
            "same-node fast path (kept-alive {}-byte request/answer, both ends under the \
             agent's cgroup, medians over rounds):",
            super::backend::MSG_LEN
        );
        let _ = writeln!(
            out,
            "{:<34} {:>9} {:>9} {:>9}",
            "route", "p50 us", "p99 us", "p999 us"
        );
        let mut ratios = [0.0; 3];
        let picks: [fn(&Sample) -> f64; 3] = [|s| s.p50_us, |s| s.p99_us, |s| s.p999_us];
        for (through_vip, v) in [(false, &self.loopback), (true, &self.fast)] {
            let vals = picks.map(|p| q(v, p));
            let _ = writeln!(
                out,
                "{:<34} {:>9.1} {:>9.1} {:>9.1}",
                label(through_vip),
                vals[0],
                vals[1],
                vals[2]
            );
            if through_vip {
                for (i, p) in picks.iter().enumerate() {
                    ratios[i] = vals[i] / q(&self.loopback, *p);
                }
            }
        }
        let _ = writeln!(
            out,
            "{:<34} {:>9.2} {:>9.2} {:>9.2}",
            "n2/n1", ratios[0], ratios[1], ratios[2]
        );
        let beats = ratios[0] < 1.0 && ratios[1] < 1.0;
        let _ = writeln!(
            out,
            "fast path: {:.0} bytes handed socket to socket over ~{:.0} requests; it {} \
             loopback TCP on p50 and p99{}",
            self.redirected_bytes,
            self.requests,
            if beats { "beats" } else { "does not beat" },
            if beats {
                ""
            } else {
                " (so it stays off by default: `same_node` is opt-in per service)"
            }
        );
        f.write_str(&out)
    }
}
