//! The bench's results: one sample per (route, measurement, round), summarised as the median
//! over rounds and printed as a table with the ratios the issues ask for (b/a, b/c, b/b'),
//! plus the kernel's cost of each program and the observing agent's event drain.

use std::fmt::Write as _;

use super::agent_metrics::Counters;
use super::bpf_stats::{Prog, ProgStats};
use super::loadgen::Mode;
use super::Route;

/// What one load generator run reported.
#[derive(Clone, Debug, Default)]
pub struct Sample {
    pub ops_per_s: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub errors: u64,
}

#[derive(Default)]
pub struct Results {
    /// Indexed by `Route as usize`.
    conn_rate: [Vec<Sample>; Route::COUNT],
    latency: [Vec<Sample>; Route::COUNT],
    throughput: [Vec<Sample>; Route::COUNT],
}

/// The medians of one route.
struct Summary {
    conns_per_s: f64,
    mib_per_s: f64,
    p50_us: f64,
    p99_us: f64,
    p999_us: f64,
    errors: u64,
}

impl Results {
    pub fn add_conn_rate(&mut self, route: Route, sample: Sample) {
        self.conn_rate[route as usize].push(sample);
    }

    pub fn add_latency(&mut self, route: Route, sample: Sample) {
        self.latency[route as usize].push(sample);
    }

    pub fn add_throughput(&mut self, route: Route, sample: Sample) {
        self.throughput[route as usize].push(sample);
    }

    pub fn total_errors(&self) -> u64 {
        self.conn_rate
            .iter()
            .chain(&self.latency)
            .chain(&self.throughput)
            .flatten()
            .map(|s| s.errors)
            .sum()
    }

    fn summary(&self, route: Route) -> Summary {
        let rates = &self.conn_rate[route as usize];
        let lat = &self.latency[route as usize];
        let bulk = &self.throughput[route as usize];
        Summary {
            conns_per_s: median(rates.iter().map(|s| s.ops_per_s)),
            mib_per_s: median(bulk.iter().map(|s| s.ops_per_s / MIB)),
            p50_us: median(lat.iter().map(|s| s.p50_us)),
            p99_us: median(lat.iter().map(|s| s.p99_us)),
            p999_us: median(lat.iter().map(|s| s.p999_us)),
            errors: rates.iter().chain(lat).chain(bulk).map(|s| s.errors).sum(),
        }
    }

    /// The table: absolute medians per route, then b/a, b/c, b/b' and b'/a.
    pub fn table(&self, rounds: usize) -> String {
        let [a, b, b_off, c] = Route::ALL.map(|p| self.summary(p));
        let mut out = String::new();
        let _ = writeln!(
            out,
            "medians over {rounds} interleaved rounds; conn/s = connect + 8-byte request + \
             answer + close; latency = 8-byte request/answer on one kept-alive connection; \
             MiB/s = one connection, client to server, bytes counted by the server"
        );
        let _ = writeln!(
            out,
            "{:<32} {:>10} {:>9} {:>9} {:>9} {:>9} {:>7}",
            "route", "conn/s", "p50 us", "p99 us", "p999 us", "MiB/s", "errors"
        );
        for (route, s) in Route::ALL.iter().zip([&a, &b, &b_off, &c]) {
            let _ = writeln!(
                out,
                "{:<32} {:>10.0} {:>9.1} {:>9.1} {:>9.1} {:>9.0} {:>7}",
                route.label(),
                s.conns_per_s,
                s.p50_us,
                s.p99_us,
                s.p999_us,
                s.mib_per_s,
                s.errors
            );
        }
        let _ = writeln!(
            out,
            "ratios: conn/s and MiB/s above 1 mean the first is faster; latency below 1 means it \
             is quicker"
        );
        for (label, num, base) in [
            ("b/a (sockmesh / direct)", &b, &a),
            ("b/c (sockmesh / haproxy)", &b, &c),
            ("b/b' (observation on / off)", &b, &b_off),
            ("b'/a (routing only / direct)", &b_off, &a),
        ] {
            let _ = writeln!(
                out,
                "{:<32} {:>9.2}x {:>8.2}x {:>8.2}x {:>8.2}x {:>8.2}x",
                label,
                num.conns_per_s / base.conns_per_s,
                num.p50_us / base.p50_us,
                num.p99_us / base.p99_us,
                num.p999_us / base.p999_us,
                num.mib_per_s / base.mib_per_s
            );
        }
        let _ = writeln!(
            out,
            "note: the observing agent's sched tracepoints are global (they run on every \
             context switch and wake-up of the machine),\n      so they weigh on every row \
             alike; b/b' isolates the per-connection cost of observation (sock_ops \
             callbacks,\n      stamp updates, ring-buffer events and the agent draining them)"
        );
        out
    }
}

const MIB: f64 = 1024.0 * 1024.0;

/// One row of the program cost table: a program's counters over a window.
pub struct ProgRow<'a> {
    pub program: &'static str,
    /// Which agent's program: "(b)" or "(b')".
    pub agent: &'static str,
    pub prog: &'a Prog,
    /// What the counters cover, e.g. "(b) runs" or "all rounds".
    pub window: &'static str,
    pub stats: ProgStats,
    /// Wall time of the window, for a CPU share; `None` when the window is a set of runs.
    pub wall_s: Option<f64>,
}

/// The kernel's accounting of each program (kernel.bpf_stats_enabled during the rounds).
pub fn prog_table(rows: &[ProgRow], cpus: usize) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "kernel BPF stats (kernel.bpf_stats_enabled=1), per program:"
    );
    let _ = writeln!(
        out,
        "{:<18} {:<5} {:>6} {:<22} {:<11} {:>10} {:>13} {:>8}  CPU share",
        "program", "agent", "id", "kernel name", "counted", "run_cnt", "run_time_ns", "mean ns"
    );
    for r in rows {
        let mean = r
            .stats
            .mean_ns()
            .map_or_else(|| "n/a".to_string(), |m| format!("{m:.0}"));
        let share = r.wall_s.map_or_else(String::new, |wall| {
            let one_cpu = r.stats.run_time_ns as f64 / (wall * 1e9);
            format!(
                "{:.3}% of one CPU ({:.3}% of {cpus} CPUs) over {wall:.1} s",
                one_cpu * 100.0,
                one_cpu * 100.0 / cpus.max(1) as f64
            )
        });
        let line = format!(
            "{:<18} {:<5} {:>6} {:<22} {:<11} {:>10} {:>13} {:>8}  {share}",
            r.program,
            r.agent,
            r.prog.id,
            r.prog.name,
            r.window,
            r.stats.run_cnt,
            r.stats.run_time_ns,
            mean
        );
        let _ = writeln!(out, "{}", line.trim_end());
    }
    out
}

/// What the observing agent drained around one (b) conn-rate run.
pub struct DrainSample {
    pub round: usize,
    /// The load generator's measured connect rate.
    pub conns_per_s: f64,
    /// Wall time from the scrape before the run to the load generator's exit (the warm-up
    /// connects are in it too, so this is the window all counted events were made in).
    pub wall_s: f64,
    pub counters: Counters,
    /// connect4 runs in the same window: every connect() the cgroup made.
    pub connect4_runs: u64,
    /// CPU time the agent process used from the scrape before the run to the scrape after
    /// the drain settled (so the events of the run's last connections are in it).
    pub agent_cpu_s: f64,
}

impl DrainSample {
    fn ratio(&self) -> f64 {
        self.counters.drained / (2.0 * self.counters.connects)
    }

    /// Agent CPU seconds per 1,000 connects: the share of one CPU the agent needs per
    /// 1,000 connects/s (0.05 = 5 % of a CPU at 1,000 conn/s).
    fn cpu_per_1k(&self) -> f64 {
        self.agent_cpu_s * 1000.0 / self.counters.connects
    }
}

/// The drain table over the (b) conn-rate runs and the line for the fastest of them.
pub fn drain_table(samples: &[DrainSample], metrics: std::net::SocketAddr) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "event drain of the observing agent (its /metrics at {metrics}), around each (b) \
         conn-rate run:"
    );
    let _ = writeln!(
        out,
        "{:<6} {:>9} {:>7} {:>9} {:>9} {:>9} {:>10} {:>5} {:>16} {:>11} {:>14}",
        "round",
        "conn/s",
        "wall s",
        "connects",
        "connect4",
        "drained",
        "drained/s",
        "lost",
        "drained/(2*conn)",
        "agent CPU s",
        "CPU s/1k conn"
    );
    for s in samples {
        let _ = writeln!(
            out,
            "{:<6} {:>9.0} {:>7.2} {:>9.0} {:>9} {:>9.0} {:>10.0} {:>5.0} {:>16.3} {:>11.3} {:>14.4}",
            s.round + 1,
            s.conns_per_s,
            s.wall_s,
            s.counters.connects,
            s.connect4_runs,
            s.counters.drained,
            s.counters.drained / s.wall_s,
            s.counters.lost,
            s.ratio(),
            s.agent_cpu_s,
            s.cpu_per_1k()
        );
    }
    if let Some(top) = samples
        .iter()
        .max_by(|x, y| x.conns_per_s.total_cmp(&y.conns_per_s))
    {
        let lost: f64 = samples.iter().map(|s| s.counters.lost).sum();
        let _ = writeln!(
            out,
            "at the highest connect rate reached (round {}, {:.0} conn/s): {:.0} events/s \
             drained, {:.0} lost ({lost:.0} lost over all runs), drained / (2 x connects) = \
             {:.3} (1 = one established + one closed event per connection)",
            top.round + 1,
            top.conns_per_s,
            top.counters.drained / top.wall_s,
            top.counters.lost,
            top.ratio()
        );
        let per_1k = median(samples.iter().map(DrainSample::cpu_per_1k));
        let _ = writeln!(
            out,
            "agent CPU: {per_1k:.4} CPU seconds per 1,000 connects (median over rounds), i.e. \
             {:.1}% of one CPU per 1,000 connects/s (ring drain, aggregation, metrics, health \
             engine; the kernel programs' own time is in the BPF stats above)",
            per_1k * 100.0
        );
    }
    out
}

/// One line per load generator run; for (b) and (b') conn-rate runs also the mean run time of
/// that agent's connect4 program over the run, and for every (b) run its sock_ops runs.
pub fn print_sample(
    round: usize,
    route: Route,
    mode: Mode,
    s: &Sample,
    connect4_mean: Option<f64>,
    sock_ops: Option<ProgStats>,
) {
    let sock_ops = sock_ops.map_or_else(String::new, |d| {
        format!(
            "  sock_ops {} runs, mean {:.0} ns",
            d.run_cnt,
            d.mean_ns().unwrap_or(0.0)
        )
    });
    match mode {
        Mode::ConnRate => println!(
            "round {} {:<30} conn-rate {:>9.0} conn/s  errors {}{}{sock_ops}",
            round + 1,
            route.label(),
            s.ops_per_s,
            s.errors,
            connect4_mean.map_or_else(String::new, |ns| format!("  connect4 mean {ns:.0} ns"))
        ),
        Mode::Latency => println!(
            "round {} {:<30} latency   p50 {:>7.1} us  p99 {:>7.1} us  p999 {:>7.1} us  errors {}{sock_ops}",
            round + 1,
            route.label(),
            s.p50_us,
            s.p99_us,
            s.p999_us,
            s.errors
        ),
        Mode::Throughput => println!(
            "round {} {:<30} throughput {:>8.0} MiB/s  errors {}{sock_ops}",
            round + 1,
            route.label(),
            s.ops_per_s / (1024.0 * 1024.0),
            s.errors
        ),
        // Not a round mode; refusal.rs prints its own table.
        Mode::Refused => {}
    }
}

pub fn median(values: impl Iterator<Item = f64>) -> f64 {
    let mut v: Vec<f64> = values.filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    if v.len() % 2 == 1 {
        v[mid]
    } else {
        (v[mid - 1] + v[mid]) / 2.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median([3.0, 1.0, 2.0].into_iter()), 2.0);
        assert_eq!(median([4.0, 1.0, 3.0, 2.0].into_iter()), 2.5);
        assert!(median(std::iter::empty()).is_nan());
    }
}
