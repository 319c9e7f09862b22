//! The L7 section's results: one sample per (protocol, route, round), summarised as medians
//! over rounds, with the latency each hop adds over the direct route, the hops' CPU per
//! 1,000 requests, the proxy's memory, and the goals.

use std::fmt::Write as _;

use super::clients::Protocol;
use super::parse::ClientRun;
use super::L7Route;
use crate::bench::proc_stats::Memory;
use crate::bench::report::median;

/// The CPU goal: at most this many CPU seconds per 1,000 requests, i.e. this share
/// of one CPU per 1,000 requests/s.
pub const CPU_GOAL: f64 = 0.05;

/// One client run and, for a hop (b, c), the CPU that hop's process used per 1,000 of the
/// requests it served in that run.
#[derive(Clone, Debug)]
pub struct L7Sample {
    pub run: ClientRun,
    pub cpu_per_1k: Option<f64>,
}

/// Medians of one (protocol, route).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct L7Summary {
    pub req_per_s: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub cpu_per_1k: f64,
    pub errors: u64,
}

#[derive(Default)]
pub struct L7Results {
    /// `[Protocol as usize][L7Route as usize]`.
    samples: [[Vec<L7Sample>; L7Route::COUNT]; 2],
}

impl L7Results {
    pub fn add(&mut self, protocol: Protocol, route: L7Route, sample: L7Sample) {
        self.samples[protocol as usize][route as usize].push(sample);
    }

    pub fn total_errors(&self) -> u64 {
        self.samples
            .iter()
            .flatten()
            .flatten()
            .map(|s| s.run.errors)
            .sum()
    }

    pub fn summary(&self, protocol: Protocol, route: L7Route) -> L7Summary {
        let v = &self.samples[protocol as usize][route as usize];
        L7Summary {
            req_per_s: median(v.iter().map(|s| s.run.req_per_s)),
            p50_us: median(v.iter().map(|s| s.run.p50_us)),
            p99_us: median(v.iter().map(|s| s.run.p99_us)),
            cpu_per_1k: median(v.iter().filter_map(|s| s.cpu_per_1k)),
            errors: v.iter().map(|s| s.run.errors).sum(),
        }
    }

    /// The table, then per protocol the latency the proxy adds against haproxy's, then the
    /// proxy's CPU against the goal and its memory.
    pub fn table(&self, rounds: usize, secs: u64, memory: &ProxyMemory) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "L7: kept-alive GET / (3-byte body) at fixed concurrency, medians over {rounds} \
             interleaved rounds of {secs} s; added = the route's median minus (a)'s; CPU = \
             the hop's own process, CPU seconds per 1,000 requests (= share of one CPU per \
             1,000 req/s)"
        );
        let _ = writeln!(
            out,
            "{:<9} {:<28} {:>9} {:>9} {:>9} {:>10} {:>10} {:>10} {:>7}",
            "protocol",
            "route",
            "req/s",
            "p50 us",
            "p99 us",
            "+p50 us",
            "+p99 us",
            "CPU s/1k",
            "errors"
        );
        for protocol in Protocol::ALL {
            let direct = self.summary(protocol, L7Route::Direct);
            for route in L7Route::ALL {
                let s = self.summary(protocol, route);
                let added = |v: f64, base: f64| match route {
                    L7Route::Direct => "-".to_string(),
                    _ => format!("{:+.1}", v - base),
                };
                let cpu = if s.cpu_per_1k.is_finite() {
                    format!("{:.4}", s.cpu_per_1k)
                } else {
                    "-".to_string()
                };
                let _ = writeln!(
                    out,
                    "{:<9} {:<28} {:>9.0} {:>9.1} {:>9.1} {:>10} {:>10} {:>10} {:>7}",
                    protocol.label(),
                    route.label(),
                    s.req_per_s,
                    s.p50_us,
                    s.p99_us,
                    added(s.p50_us, direct.p50_us),
                    added(s.p99_us, direct.p99_us),
                    cpu,
                    s.errors
                );
            }
        }
        let _ = writeln!(
            out,
            "clients: HTTP/1.1 {}; HTTP/2 {}",
            Protocol::Http1.client(),
            Protocol::H2c.client()
        );
        for protocol in Protocol::ALL {
            let _ = writeln!(out, "{}", self.latency_goal(protocol));
        }
        let _ = writeln!(out, "{}", self.cpu_goal());
        let _ = writeln!(out, "{memory}");
        out
    }

    /// "the proxy adds no more latency than haproxy does at p50 and p99".
    fn latency_goal(&self, protocol: Protocol) -> String {
        let [a, b, c] = L7Route::ALL.map(|r| self.summary(protocol, r));
        let (b50, b99) = (b.p50_us - a.p50_us, b.p99_us - a.p99_us);
        let (c50, c99) = (c.p50_us - a.p50_us, c.p99_us - a.p99_us);
        let met = b50 <= c50 && b99 <= c99;
        format!(
            "{} latency goal (proxy adds no more than haproxy): proxy {b50:+.1} / {b99:+.1} us, \
             haproxy {c50:+.1} / {c99:+.1} us at p50 / p99: {}",
            protocol.label(),
            verdict(met)
        )
    }

    /// "costs <= 0.05 CPU per 1,000 req/s": the proxy's CPU over both protocols' runs.
    fn cpu_goal(&self) -> String {
        let per = |p: Protocol| self.summary(p, L7Route::Proxy).cpu_per_1k;
        let worst = per(Protocol::Http1).max(per(Protocol::H2c));
        format!(
            "proxy CPU goal (<= {CPU_GOAL} CPU per 1,000 req/s): HTTP/1.1 {:.4}, HTTP/2 {:.4} \
             ({:.1}% / {:.1}% of one CPU per 1,000 req/s): {}",
            per(Protocol::Http1),
            per(Protocol::H2c),
            per(Protocol::Http1) * 100.0,
            per(Protocol::H2c) * 100.0,
            verdict(worst <= CPU_GOAL)
        )
    }
}

fn verdict(met: bool) -> &'static str {
    if met {
        "met"
    } else {
        "NOT met"
    }
}

/// The proxy's memory: once linked and idle, and after the rounds (now and at peak).
pub struct ProxyMemory {
    pub pid: u32,
    pub idle: Memory,
    pub after: Memory,
}

impl std::fmt::Display for ProxyMemory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mib = |kib: u64| kib as f64 / 1024.0;
        write!(
            f,
            "proxy memory (pid {}): RSS {:.1} MiB idle, {:.1} MiB after the rounds, peak \
             (VmHWM) {:.1} MiB",
            self.pid,
            mib(self.idle.rss_kib),
            mib(self.after.rss_kib),
            mib(self.after.peak_kib)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(req_per_s: f64, p50_us: f64, p99_us: f64, cpu: Option<f64>) -> L7Sample {
        L7Sample {
            run: ClientRun {
                requests: (req_per_s * 2.0) as u64,
                req_per_s,
                p50_us,
                p99_us,
                errors: 0,
            },
            cpu_per_1k: cpu,
        }
    }

    #[test]
    fn added_latency_and_goals() {
        let mut r = L7Results::default();
        for p in Protocol::ALL {
            r.add(p, L7Route::Direct, sample(50_000.0, 100.0, 400.0, None));
            r.add(
                p,
                L7Route::Proxy,
                sample(20_000.0, 300.0, 900.0, Some(0.04)),
            );
            r.add(
                p,
                L7Route::Haproxy,
                sample(25_000.0, 250.0, 1000.0, Some(0.03)),
            );
        }
        let memory = ProxyMemory {
            pid: 7,
            idle: Memory {
                rss_kib: 10240,
                peak_kib: 10240,
            },
            after: Memory {
                rss_kib: 20480,
                peak_kib: 30720,
            },
        };
        let text = r.table(1, 2, &memory);
        assert!(
            text.contains(
                "proxy +200.0 / +500.0 us, haproxy +150.0 / +600.0 us at p50 / p99: NOT met"
            ),
            "{text}"
        );
        assert!(text.contains("HTTP/1.1 0.0400, HTTP/2 0.0400"), "{text}");
        assert!(
            text.contains("(4.0% / 4.0% of one CPU per 1,000 req/s): met"),
            "{text}"
        );
        assert!(
            text.contains("RSS 10.0 MiB idle, 20.0 MiB after the rounds, peak (VmHWM) 30.0 MiB")
        );
        assert!(r
            .summary(Protocol::H2c, L7Route::Direct)
            .cpu_per_1k
            .is_nan());
        assert_eq!(r.total_errors(), 0);
    }
}
