//! Reading what wrk and h2load print: pure functions over their text, tested on output
//! captured from the real tools (Debian's wrk 4.1.0 and h2load from nghttp2 1.52.0, in
//! `testdata/`).

use anyhow::{bail, Context, Result};

/// What one client run measured.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ClientRun {
    /// Responses the client completed in its measuring window, any status.
    pub requests: u64,
    pub req_per_s: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    /// Responses other than 2xx/3xx, plus socket errors, stream errors and timeouts.
    pub errors: u64,
}

/// wrk's summary with `--latency`: `N requests in ...`, `Requests/sec:`, the
/// `Latency Distribution` percentiles (`50%  216.00us`, `99%    9.82ms`), and the error
/// lines it prints only when there were any (`Socket errors: ...`, `Non-2xx or 3xx
/// responses: N`).
pub fn wrk(out: &str) -> Result<ClientRun> {
    let mut run = ClientRun::default();
    let (mut requests, mut rate, mut p50, mut p99) = (None, None, None, None);
    for line in out.lines().map(str::trim) {
        if let Some(rest) = line.strip_prefix("Requests/sec:") {
            rate = Some(number(rest)?);
        } else if let Some((n, _)) = line.split_once(" requests in ") {
            requests = Some(n.trim().parse().with_context(|| format!("`{line}`"))?);
        } else if let Some(v) = line.strip_prefix("50%") {
            p50 = Some(duration_us(v)?);
        } else if let Some(v) = line.strip_prefix("99%") {
            p99 = Some(duration_us(v)?);
        } else if let Some(rest) = line.strip_prefix("Socket errors:") {
            // `connect 0, read 32, write 13453, timeout 0`
            for part in rest.split(',') {
                let count = part
                    .split_whitespace()
                    .last()
                    .context("empty error count")?;
                run.errors += count.parse::<u64>().with_context(|| format!("`{line}`"))?;
            }
        } else if let Some(rest) = line.strip_prefix("Non-2xx or 3xx responses:") {
            run.errors += rest
                .trim()
                .parse::<u64>()
                .with_context(|| format!("`{line}`"))?;
        }
    }
    match (requests, rate, p50, p99) {
        (Some(n), Some(r), Some(p50), Some(p99)) => {
            run.requests = n;
            run.req_per_s = r;
            run.p50_us = p50;
            run.p99_us = p99;
            Ok(run)
        }
        _ => bail!("not a wrk --latency summary:\n{}", out.trim()),
    }
}

/// h2load's summary: `finished in 1.26s, 71472.00 req/s, 2.52MB/s` and `requests: T total,
/// S started, D done, OK succeeded, F failed, E errored, X timeout`. It has no percentiles
/// (those come from its `--log-file`, [`percentiles_us`]). A run that completes nothing
/// (e.g. every connect refused) still exits 0 with all zeros: that is an error here.
pub fn h2load(out: &str) -> Result<ClientRun> {
    let mut run = ClientRun::default();
    let (mut rate, mut done) = (None, None);
    for line in out.lines().map(str::trim) {
        if let Some(rest) = line.strip_prefix("finished in ") {
            let field = rest
                .split(',')
                .nth(1)
                .context("no req/s after `finished in`")?;
            rate = Some(number(field.trim().trim_end_matches("req/s"))?);
        } else if let Some(rest) = line.strip_prefix("requests:") {
            let count = |name: &str| -> Result<u64> {
                rest.split(',')
                    .find_map(|p| p.trim().strip_suffix(name))
                    .with_context(|| format!("no `{name}` in `{line}`"))?
                    .trim()
                    .parse()
                    .with_context(|| format!("`{line}`"))
            };
            done = Some(count(" done")?);
            run.errors = count(" failed")? + count(" errored")? + count(" timeout")?;
        }
    }
    match (rate, done) {
        (Some(_), Some(0)) => bail!("h2load completed no request:\n{}", out.trim()),
        (Some(r), Some(n)) => {
            run.requests = n;
            run.req_per_s = r;
            Ok(run)
        }
        _ => bail!("not an h2load summary:\n{}", out.trim()),
    }
}

/// p50 and p99 (nearest rank) of an h2load `--log-file`: one request per line, tab-separated
/// start time (µs since the epoch), status, and µs until the end of the response.
pub fn percentiles_us(log: &str) -> Result<(f64, f64)> {
    let mut times: Vec<u64> = log
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            l.split('\t')
                .nth(2)
                .and_then(|t| t.trim().parse().ok())
                .with_context(|| format!("h2load log line `{l}`"))
        })
        .collect::<Result<_>>()?;
    if times.is_empty() {
        bail!("the h2load log has no requests");
    }
    times.sort_unstable();
    let rank = |q: f64| times[((q * times.len() as f64).ceil() as usize).clamp(1, times.len()) - 1];
    Ok((rank(0.50) as f64, rank(0.99) as f64))
}

fn number(text: &str) -> Result<f64> {
    let text = text.trim();
    text.parse()
        .with_context(|| format!("not a number: `{text}`"))
}

/// wrk's durations: `216.00us`, `9.82ms`, `1.02s` (its format_time units up to seconds;
/// minutes would mean the run measured nothing useful).
fn duration_us(text: &str) -> Result<f64> {
    let text = text.trim();
    for (unit, scale) in [("us", 1.0), ("ms", 1e3), ("s", 1e6)] {
        if let Some(v) = text.strip_suffix(unit) {
            return Ok(number(v)? * scale);
        }
    }
    bail!("not a wrk duration: `{text}`")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrk_summary_without_errors() {
        let run = wrk(include_str!("testdata/wrk_ok.txt")).unwrap();
        assert_eq!(
            run,
            ClientRun {
                requests: 65718,
                req_per_s: 57501.90,
                p50_us: 206.0,
                p99_us: 25470.0,
                errors: 0,
            }
        );
    }

    #[test]
    fn wrk_counts_socket_errors_and_bad_statuses() {
        let run = wrk(include_str!("testdata/wrk_sockerr.txt")).unwrap();
        assert_eq!(run.requests, 32064);
        assert_eq!(run.errors, 32 + 13453 + 16113);
        assert_eq!((run.p50_us, run.p99_us), (216.0, 9820.0));
    }

    #[test]
    fn wrk_that_could_not_connect_is_an_error() {
        let err = wrk("unable to connect to 127.0.0.31:18939 Connection refused\n").unwrap_err();
        assert!(err.to_string().contains("Connection refused"), "{err}");
        assert_eq!(duration_us(" 1.50s").unwrap(), 1.5e6);
        assert!(duration_us("2.00m").is_err());
    }

    #[test]
    fn h2load_summary() {
        let run = h2load(include_str!("testdata/h2load_ok.txt")).unwrap();
        assert_eq!(
            (run.requests, run.req_per_s, run.errors),
            (71472, 71472.0, 0)
        );
        let bad = h2load(include_str!("testdata/h2load_503.txt")).unwrap();
        assert_eq!((bad.requests, bad.errors), (142544, 71208));
    }

    #[test]
    fn h2load_that_completed_nothing_is_an_error() {
        let err = h2load(include_str!("testdata/h2load_refused.txt")).unwrap_err();
        assert!(err.to_string().contains("no request"), "{err}");
        assert!(h2load("starting benchmark...\n").is_err());
    }

    #[test]
    fn percentiles_of_the_h2load_log() {
        // 12 requests, 260..329 µs: p50 is the 6th smallest, p99 the largest.
        let (p50, p99) = percentiles_us(include_str!("testdata/h2load_requests.log")).unwrap();
        assert_eq!((p50, p99), (319.0, 329.0));
        let many: String = (1..=1000).map(|i| format!("1\t200\t{i}\n")).collect();
        assert_eq!(percentiles_us(&many).unwrap(), (500.0, 990.0));
        assert!(percentiles_us("").is_err());
        assert!(percentiles_us("1\t200\n").is_err());
    }
}
