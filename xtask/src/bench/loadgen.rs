//! The bench's load generator (`cargo xtask loadgen`, hidden). Bench starts it as a separate
//! process so that it can be placed into the bench cgroup before exec: only then do its
//! connects run through the sockmesh programs attached there.
//!
//! It prints exactly one JSON line on stdout with the result.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use hdrhistogram::Histogram;

use super::backend::{Backend, BULK, CLOSE, KEEP, MSG_LEN};

#[derive(Args, Debug)]
pub struct LoadgenArgs {
    /// Where to connect (a backend, a VIP or the haproxy frontend); 127.0.0.0/8 only.
    #[arg(long)]
    pub target: SocketAddr,
    #[arg(long, value_enum)]
    pub mode: Mode,
    /// Measuring time, after a short warm-up that is not counted.
    #[arg(long, default_value_t = 2000)]
    pub duration_ms: u64,
    /// Client threads, each with its own connection.
    #[arg(long, default_value_t = 1)]
    pub concurrency: usize,
    /// Also run the bench backend in this process, on this address (127.0.0.0/8): the
    /// same-node comparison needs both ends under the agent's cgroup.
    #[arg(long)]
    pub serve: Option<SocketAddr>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Mode {
    /// connect + one request + close, as fast as possible: connections per second.
    ConnRate,
    /// Requests back to back on one kept-alive connection per thread: latency percentiles.
    Latency,
    /// One-way bulk transfer on one connection per thread: bytes per second, counted by the
    /// server (`ops` are bytes).
    Throughput,
    /// connect() to a VIP whose connects the mesh refuses: how long a refusal takes. A
    /// refusal (ECONNREFUSED) is an op; a connect that succeeds is an error.
    Refused,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::ConnRate => "conn-rate",
            Mode::Latency => "latency",
            Mode::Throughput => "throughput",
            Mode::Refused => "refused",
        }
    }

    /// Position among the measurements every round runs (conn-rate, latency, throughput);
    /// `None` for the refusal measurement, which runs once after the rounds.
    pub fn round_index(self) -> Option<usize> {
        match self {
            Mode::ConnRate => Some(0),
            Mode::Latency => Some(1),
            Mode::Throughput => Some(2),
            Mode::Refused => None,
        }
    }
}

const WARMUP: Duration = Duration::from_millis(300);
const IO_TIMEOUT: Duration = Duration::from_secs(2);

/// What one thread measured.
struct Tally {
    ops: u64,
    errors: u64,
    first_error: Option<String>,
    latency_ns: Histogram<u64>,
}

pub fn run(args: &LoadgenArgs) -> Result<()> {
    if !args.target.ip().is_loopback() {
        bail!("loadgen only targets 127.0.0.0/8, not {}", args.target);
    }
    if let Some(serve) = args.serve.filter(|a| !a.ip().is_loopback()) {
        bail!("loadgen only serves on 127.0.0.0/8, not {serve}");
    }
    let _backend = args.serve.map(Backend::start_at).transpose()?;
    let start = Instant::now();
    let measure_from = start + WARMUP;
    let until = measure_from + Duration::from_millis(args.duration_ms);
    let threads: Vec<_> = (0..args.concurrency.max(1))
        .map(|_| {
            let (target, mode) = (args.target, args.mode);
            std::thread::spawn(move || match mode {
                Mode::ConnRate => conn_rate(target, measure_from, until),
                Mode::Latency => latency(target, measure_from, until),
                Mode::Throughput => throughput(target, measure_from, until),
                Mode::Refused => refused(target, measure_from, until),
            })
        })
        .collect();

    let mut total = new_tally()?;
    for thread in threads {
        let tally = thread
            .join()
            .map_err(|_| anyhow::anyhow!("loadgen thread panicked"))??;
        total.ops += tally.ops;
        total.errors += tally.errors;
        total.first_error = total.first_error.or(tally.first_error);
        total.latency_ns.add(&tally.latency_ns)?;
    }
    let elapsed = Instant::now().saturating_duration_since(measure_from);
    let us = |q: f64| total.latency_ns.value_at_quantile(q) as f64 / 1000.0;
    let result = serde_json::json!({
        "mode": args.mode.as_str(),
        "target": args.target.to_string(),
        "ops": total.ops,
        "errors": total.errors,
        "first_error": total.first_error,
        "elapsed_s": elapsed.as_secs_f64(),
        "ops_per_s": total.ops as f64 / elapsed.as_secs_f64(),
        "p50_us": us(0.5),
        "p99_us": us(0.99),
        "p999_us": us(0.999),
    });
    println!("{result}");
    Ok(())
}

fn new_tally() -> Result<Tally> {
    Ok(Tally {
        ops: 0,
        errors: 0,
        first_error: None,
        // 1 ns .. 60 s at 3 significant digits: exact enough for p999 of a loopback RTT.
        latency_ns: Histogram::new_with_bounds(1, 60_000_000_000, 3)?,
    })
}

impl Tally {
    fn error(&mut self, what: &str, e: std::io::Error) {
        self.errors += 1;
        self.first_error
            .get_or_insert_with(|| format!("{what}: {e}"));
    }
}

fn conn_rate(target: SocketAddr, measure_from: Instant, until: Instant) -> Result<Tally> {
    let mut tally = new_tally()?;
    let request = message(CLOSE);
    loop {
        let begin = Instant::now();
        if begin >= until {
            return Ok(tally);
        }
        let result = one_connection(target, &request);
        if begin < measure_from {
            continue;
        }
        match result {
            Ok(()) => {
                tally.ops += 1;
                let ns = begin.elapsed().as_nanos() as u64;
                tally.latency_ns.saturating_record(ns);
            }
            Err(e) => {
                tally.error("connect+request", e);
                // Do not spin on a refused target: that would count errors, not measure.
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
}

/// connect, one request, read the answer, then wait for the server's close (it closes first).
fn refused(target: SocketAddr, measure_from: Instant, until: Instant) -> Result<Tally> {
    let mut tally = new_tally()?;
    loop {
        let started = Instant::now();
        if started >= until {
            return Ok(tally);
        }
        let outcome = TcpStream::connect_timeout(&target, IO_TIMEOUT);
        let took = started.elapsed();
        if started < measure_from {
            continue;
        }
        match outcome {
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                tally.ops += 1;
                tally.latency_ns.record(took.as_nanos() as u64)?;
            }
            Err(e) => tally.error("connect", e),
            Ok(_) => tally.error(
                "connect",
                std::io::Error::other("connected: the mesh did not refuse"),
            ),
        }
    }
}

fn one_connection(target: SocketAddr, request: &[u8; MSG_LEN]) -> std::io::Result<()> {
    let mut conn = TcpStream::connect_timeout(&target, IO_TIMEOUT)?;
    conn.set_nodelay(true)?;
    conn.set_read_timeout(Some(IO_TIMEOUT))?;
    conn.write_all(request)?;
    let mut answer = [0u8; MSG_LEN];
    conn.read_exact(&mut answer)?;
    let mut rest = [0u8; 1];
    if conn.read(&mut rest)? != 0 {
        return Err(std::io::Error::other("server sent more than one answer"));
    }
    Ok(())
}

fn latency(target: SocketAddr, measure_from: Instant, until: Instant) -> Result<Tally> {
    let mut tally = new_tally()?;
    let mut conn = TcpStream::connect_timeout(&target, IO_TIMEOUT)
        .with_context(|| format!("connect {target}"))?;
    conn.set_nodelay(true)?;
    conn.set_read_timeout(Some(IO_TIMEOUT))?;
    let request = message(KEEP);
    let mut answer = [0u8; MSG_LEN];
    loop {
        let begin = Instant::now();
        if begin >= until {
            return Ok(tally);
        }
        let result = conn
            .write_all(&request)
            .and_then(|()| conn.read_exact(&mut answer));
        if let Err(e) = result {
            // The connection is unusable after a failed exchange; stop this thread honestly.
            tally.error("request", e);
            return Ok(tally);
        }
        if begin >= measure_from {
            tally.ops += 1;
            tally
                .latency_ns
                .saturating_record(begin.elapsed().as_nanos() as u64);
        }
    }
}

/// Size of one write of the bulk transfer.
const BULK_CHUNK: usize = 256 * 1024;

/// Writes [`BULK_CHUNK`]s until `until`, shuts the write side down and reads the server's
/// count of what arrived. `ops` are the bytes written after `measure_from`, and the caller's
/// clock stops after the count came back, so bytes still in flight at the end are waited
/// for; a count that differs from what was written is an error (bytes lost or invented).
fn throughput(target: SocketAddr, measure_from: Instant, until: Instant) -> Result<Tally> {
    let mut tally = new_tally()?;
    let mut conn = TcpStream::connect_timeout(&target, IO_TIMEOUT)
        .with_context(|| format!("connect {target}"))?;
    conn.set_read_timeout(Some(IO_TIMEOUT))?;
    conn.write_all(&message(BULK))?;
    // Not all zeros, so nothing on the way could get away with compressing or skipping it.
    let chunk: Vec<u8> = (0..BULK_CHUNK).map(|i| (i % 251) as u8).collect();
    let mut written = 0u64;
    loop {
        let now = Instant::now();
        if now >= until {
            break;
        }
        if let Err(e) = conn.write_all(&chunk) {
            tally.error("bulk write", e);
            return Ok(tally);
        }
        written += BULK_CHUNK as u64;
        if now >= measure_from {
            tally.ops += BULK_CHUNK as u64;
        }
    }
    conn.shutdown(std::net::Shutdown::Write)?;
    let mut count = [0u8; 8];
    match conn.read_exact(&mut count) {
        Ok(()) if u64::from_le_bytes(count) == written => {}
        Ok(()) => tally.error(
            "bulk count",
            std::io::Error::other(format!(
                "the server read {} bytes, {written} were written",
                u64::from_le_bytes(count)
            )),
        ),
        Err(e) => tally.error("bulk count", e),
    }
    Ok(tally)
}

fn message(kind: u8) -> [u8; MSG_LEN] {
    let mut msg = *b"_sockmsh";
    msg[0] = kind;
    msg
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::backend::Backend;

    #[test]
    fn measures_both_modes_against_the_bench_backend() {
        let backend = Backend::start("127.0.0.1").unwrap();
        let from = Instant::now();
        let until = from + Duration::from_millis(200);
        let rate = conn_rate(backend.addr(), from, until).unwrap();
        assert!(rate.ops > 0 && rate.errors == 0, "{:?}", rate.first_error);
        let lat = latency(
            backend.addr(),
            from,
            Instant::now() + Duration::from_millis(200),
        );
        let lat = lat.unwrap();
        assert!(lat.ops > 0 && lat.errors == 0, "{:?}", lat.first_error);
        assert!(lat.latency_ns.value_at_quantile(0.5) > 0);
        let from = Instant::now();
        let bulk = throughput(backend.addr(), from, from + Duration::from_millis(200)).unwrap();
        assert!(bulk.errors == 0, "{:?}", bulk.first_error);
        assert!(bulk.ops >= BULK_CHUNK as u64, "{} bytes", bulk.ops);
    }

    #[test]
    fn refused_mode_counts_refusals_and_calls_a_connect_an_error() {
        // A loopback port nothing listens on answers with RST: ECONNREFUSED, as the mesh's
        // refusals look to the caller.
        let closed = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let from = Instant::now();
        let refusals = refused(closed, from, from + Duration::from_millis(100)).unwrap();
        assert!(
            refusals.ops > 0 && refusals.errors == 0,
            "{:?}",
            refusals.first_error
        );
        assert_eq!(refusals.latency_ns.len(), refusals.ops);
        let backend = Backend::start("127.0.0.1").unwrap();
        let from = Instant::now();
        let open = refused(backend.addr(), from, from + Duration::from_millis(100)).unwrap();
        assert_eq!(open.ops, 0);
        assert!(open.errors > 0, "a connect that succeeds is an error");
    }
}
